# strata — the two commands a newcomer needs are `make demo` and `make test`.
BUILD ?= build
BUILD_TYPE ?= RelWithDebInfo
JOBS ?= $(shell nproc)

.PHONY: all deps build test chaos demo up down bench bench-history bench-overload clean

all: build

deps:
	@bash infra/install-deps.sh

build: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=$(BUILD_TYPE) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

test: build
	cd $(BUILD) && ctest --output-on-failure --timeout 900

chaos: build
	STRATA_BUILD_BIN=$(abspath $(BUILD))/bin /usr/bin/python3 tests/e2e/chaos_e2e.py

demo: build
	@bash infra/demo.sh $(BUILD)/bin

up: build
	@infra/stack.sh up --dir .strata --bin $(BUILD)/bin $(STACK_ARGS)
	@echo "stack running; . .strata/env   (make down to stop)"

down:
	@infra/stack.sh down --dir .strata

bench: build
	@bash bench/run.sh $(BUILD)/bin
	@bash bench/overload.sh $(BUILD)/bin
	@bash bench/history.sh $(BUILD)/bin

bench-history: build
	@bash bench/history.sh $(BUILD)/bin

bench-overload: build
	@bash bench/overload.sh $(BUILD)/bin

clean:
	rm -rf $(BUILD) .strata

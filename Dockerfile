# One image for every strata service. Build stage compiles everything; the runtime stage holds
# only the binaries, the pipeline specs and their shared-library dependencies.
FROM debian:12 AS build
WORKDIR /src
COPY infra/install-deps.sh infra/install-deps.sh
RUN bash infra/install-deps.sh
COPY . .
RUN cmake -S . -B /build -DCMAKE_BUILD_TYPE=Release && cmake --build /build -j"$(nproc)" \
    --target strata-ingest strata-lake-export strata-warehouse-loader strata-quality strata-query \
             strata-controller stratactl strata-source-sim

FROM debian:12-slim
RUN apt-get update && apt-get install -y --no-install-recommends \
      libgrpc++1.51 libprotobuf32 libpqxx-6.4 libhiredis0.14 libcurl4 libprometheus-cpp-pull1.0 \
      libprometheus-cpp-core1.0 libyaml-cpp0.7 libgumbo1 libspdlog1.10 libfmt9 libcpp-httplib0.11 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /build/bin/ /usr/local/bin/
COPY pipelines/ /etc/strata/pipelines/
COPY config/strata.yaml /etc/strata/strata.yaml
ENV STRATA_CONFIG=/etc/strata/strata.yaml STRATA_PIPELINE_SPEC=/etc/strata/pipelines/demo
USER nobody

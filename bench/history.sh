#!/usr/bin/env bash
# History flatness: DAYS consecutive days (default 30) of LINES order lines each (default
# 100,000), the simulator advanced one day and `stratactl run` for that day, one after the
# other on one warehouse, as a daily pipeline lives. Records per day the whole run's wall time
# and the model build's time, and writes the table and the ratios last/first (medians of the
# first three and the last three days) into the "## History" section of bench/RESULTS.md.
#
#   bench/history.sh [BIN_DIR]
#   STRATA_BENCH_HISTORY_DAYS=14 STRATA_BENCH_KEEP=1 bench/history.sh   # shorter, stack left up
set -euo pipefail
BIN=${1:-build/bin}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(cd "$BIN" && pwd)
DAYS=${STRATA_BENCH_HISTORY_DAYS:-30}
LINES=${STRATA_BENCH_HISTORY_LINES:-100000}
ITEMS=4
ORDERS=$(( (LINES + ITEMS - 1) / ITEMS ))
DIR=$ROOT/.strata/bench-history
START=2024-01-01

mkdir -p "$DIR"
# Without CDC, so a day's inserts are not also replicated (the batch path is what is measured).
SPEC=$ROOT/.strata/bench-history-pipeline
rm -rf "$SPEC" && cp -r "$ROOT/pipelines/demo" "$SPEC"
sed -i -e '/^cdc:/,/^$/d' -e '/rate_limit: {rps: 50/d' "$SPEC/pipeline.yaml"
STRATA_PIPELINE_SPEC="$SPEC" STRATA_BATCH_ROWS=${STRATA_BATCH_ROWS:-10000} \
  "$ROOT/infra/stack.sh" up --dir "$DIR" --bin "$BIN" --start "$START" >/dev/null
# STRATA_BENCH_KEEP=1 leaves the stack up afterwards, to look into a slow statement.
[ "${STRATA_BENCH_KEEP:-0}" = 1 ] || trap '"$ROOT/infra/stack.sh" down --dir "$DIR" >/dev/null' EXIT
# shellcheck disable=SC1091
. "$DIR/env"

: >"$DIR/days.jsonl"
for i in $(seq 0 $((DAYS - 1))); do
  ds=$(date -u -d "$START + $i day" +%F)
  "$BIN/strata-source-sim" advance --through "$ds" --orders-per-day "$ORDERS" --items-per-order "$ITEMS" >/dev/null
  t0=$(date +%s.%N)
  "$BIN/stratactl" --json run --date "$ds" --timeout 3600 >"$DIR/run.json"
  t1=$(date +%s.%N)
  python3 - "$DIR/run.json" "$ds" "$t0" "$t1" >>"$DIR/days.jsonl" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
assert run["state"] == "succeeded", run
tasks = {t["task"]: t for t in run["tasks"]}
print(json.dumps({"ds": sys.argv[2], "run": float(sys.argv[4]) - float(sys.argv[3]),
                  "model": tasks["model"]["duration_seconds"], "load": tasks["load.order_items"]["duration_seconds"],
                  "lines": tasks["load.order_items"]["rows"], "publish": tasks["publish"]["duration_seconds"]}))
PY
  tail -n 1 "$DIR/days.jsonl"
done
FACTS=$(psql "$STRATA_PG_DSN" -qAtc "SELECT count(*) FROM dwh.fact_sales")

python3 - "$DIR/days.jsonl" "$ROOT/bench/RESULTS.md" "$FACTS" "$LINES" <<'PY'
import datetime, json, os, statistics, sys
days = [json.loads(l) for l in open(sys.argv[1])]
out, facts, lines = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
first = lambda k: statistics.median(d[k] for d in days[:3])
last = lambda k: statistics.median(d[k] for d in days[-3:])
rows = "\n".join(f"| {i + 1} | {d['ds']} | {d['lines']:,} | {d['load']:.2f} | {d['model']:.2f} | {d['publish']:.2f} | {d['run']:.2f} |"
                 for i, d in enumerate(days))
section = f"""## History

{len(days)} consecutive days of {lines:,} order lines each on one warehouse (demo spec without
CDC): the simulator advanced one day, then `stratactl run` for that day. Written by
`bench/history.sh` ({datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC, {os.cpu_count()} cores); at the end
`dwh.fact_sales` holds {facts:,} rows. This machine is shared and noisy: single days move by
±20%, so the ratios compare the medians of the first three and the last three days. The
first days carry less work than later ones: from the second day on the simulator also moves
~25,000 earlier orders a day to a new status, which `orders_current` must follow.

| day | ds | lines | load s | model s | publish s | whole run s |
|---:|---|---:|---:|---:|---:|---:|
{rows}

- **model build, last / first: {last('model') / first('model'):.2f}** ({first('model'):.2f} s → {last('model'):.2f} s)
- **whole run, last / first: {last('run') / first('run'):.2f}** ({first('run'):.2f} s → {last('run'):.2f} s)
"""
text = open(out).read() if os.path.exists(out) else "# strata benchmark results\n"
start = text.find("## History")
if start >= 0:
    end = text.find("\n## ", start + 1)
    text = text[:start] + section + (text[end + 1:] if end >= 0 else "")
else:
    text = text.rstrip("\n") + "\n\n" + section
open(out, "w").write(text)
print(section)
PY

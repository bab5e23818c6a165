#!/usr/bin/env bash
# make bench: one logical day of N order lines (default 1,000,000) through the real pipeline,
# and in the same run the same rows through raw `psql \copy` into an identical table. Prints
# and writes bench/RESULTS.md: rows/s per stage, the ratio to raw COPY, and peak RSS per service.
set -euo pipefail
BIN=${1:-build/bin}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
BIN=$(cd "$BIN" && pwd)
N=${STRATA_BENCH_ROWS:-1000000}
ITEMS=4
ORDERS=$(( (N + ITEMS - 1) / ITEMS ))
DIR=$ROOT/.strata/bench
DS=2024-01-01

# Without CDC (so the day's million inserts are not also replicated; CDC is measured by
# bench/overload.sh). The reviews API is unpaced here, 1,000 records per page, to measure the
# connector itself.
mkdir -p "$DIR"
NOCDC=$ROOT/.strata/bench-nocdc
rm -rf "$NOCDC" && cp -r "$ROOT/pipelines/demo" "$NOCDC"
sed -i -e '/^cdc:/,/^$/d' -e '/rate_limit: {rps: 50/d' -e 's/limit: 100}/limit: 1000}/' "$NOCDC/pipeline.yaml"
RUNS=${STRATA_BENCH_RUNS:-3}
RUNS_FILE=$ROOT/.strata/bench-runs.jsonl
: >"$RUNS_FILE"
trap '"$ROOT/infra/stack.sh" down --dir "$DIR" >/dev/null' EXIT
rss() { awk '/VmHWM/ {print int($2/1024)}' "/proc/$(cat "$DIR/run/$1.pid")/status" 2>/dev/null || echo "?"; }

# The same day RUNS times, each on a fresh stack and an empty warehouse (the medians are what
# RESULTS.md reports); the last stack stays up for the query, HTTP and CDC parts below.
for i in $(seq 1 "$RUNS"); do
  if [ "$i" -gt 1 ]; then
    "$ROOT/infra/stack.sh" down --dir "$DIR" >/dev/null
    rm -rf "$DIR"
    mkdir -p "$DIR"
  fi
  STRATA_PIPELINE_SPEC="$NOCDC" \
  STRATA_QUERY_RATE_LIMIT_RPS=100000000 STRATA_BATCH_ROWS=${STRATA_BATCH_ROWS:-10000} "$ROOT/infra/stack.sh" up --dir "$DIR" --bin "$BIN" --start "$DS" >/dev/null
  # shellcheck disable=SC1091
  . "$DIR/env"

  echo "bench: run $i of $RUNS: generating $ORDERS orders x $ITEMS lines in the source"
  "$BIN/strata-source-sim" advance --through "$DS" --orders-per-day "$ORDERS" --items-per-order "$ITEMS" >/dev/null
  LINES=$(psql "$STRATA_SOURCE_DSN" -qAtc "SELECT count(*) FROM shop.order_items")

  echo "bench: run $i of $RUNS: pipeline run for $DS"
  t0=$(date +%s.%N)
  "$BIN/stratactl" --json run --date "$DS" --timeout 3600 >"$DIR/run.json"
  t1=$(date +%s.%N)

  # Baseline, same server, same table shape, same bytes: the committed partition's part files
  # (their header lines dropped) concatenated into one file and loaded with raw psql \copy.
  for f in "$STRATA_LAKE_ROOT/bronze/order_items/dt=$DS"/run=*/part-*.csv; do tail -n +2 "$f"; done >"$DIR/order_items.csv"
  psql "$STRATA_PG_DSN" -qc "CREATE TABLE staging.order_items_baseline (LIKE staging.order_items INCLUDING ALL)"
  b0=$(date +%s.%N)
  psql "$STRATA_PG_DSN" -qc "\\copy staging.order_items_baseline (ds, run_id, order_id, line_no, product_id, quantity, unit_price, updated_at) FROM '$DIR/order_items.csv' CSV"
  b1=$(date +%s.%N)
  BASE_ROWS=$(psql "$STRATA_PG_DSN" -qAtc "SELECT count(*) FROM staging.order_items_baseline")
  # Baseline for the model build: a bare INSERT ... SELECT of the day's lines into a fact-shaped
  # table (no dimension lookups, no SCD2, no marts).
  psql "$STRATA_PG_DSN" -qc "CREATE TABLE staging.fact_baseline (LIKE dwh.fact_sales INCLUDING DEFAULTS)"
  m0=$(date +%s.%N)
  psql "$STRATA_PG_DSN" -qc "INSERT INTO staging.fact_baseline (order_id, line_no, date_key, customer_key, product_key, quantity, unit_price, amount, product_id, ordered_at) SELECT i.order_id, i.line_no, to_char(i.updated_at, 'YYYYMMDD')::int, 0, 0, i.quantity, i.unit_price, i.quantity * i.unit_price, i.product_id, i.updated_at FROM staging.order_items i WHERE i.ds = '$DS'"
  m1=$(date +%s.%N)
  psql "$STRATA_PG_DSN" -qc "DROP TABLE staging.order_items_baseline, staging.fact_baseline"
  RSS="ingest $(rss ingest) MiB, lake-export $(rss lake_export) MiB, warehouse-loader $(rss warehouse_loader) MiB, controller $(rss controller) MiB"
  python3 - "$DIR/run.json" "$LINES" "$BASE_ROWS" "$t0" "$t1" "$b0" "$b1" "$m0" "$m1" "$RSS" >>"$RUNS_FILE" <<'PY'
import json, sys
run = json.load(open(sys.argv[1]))
lines, base_rows = int(sys.argv[2]), int(sys.argv[3])
t0, t1, b0, b1, m0, m1 = map(float, sys.argv[4:10])
tasks = {t["task"]: t for t in run["tasks"]}
assert run["state"] == "succeeded", run
assert tasks["load.order_items"]["rows"] == lines == base_rows, (tasks["load.order_items"], lines, base_rows)
print(json.dumps({"lines": lines, "run": t1 - t0, "copy": b1 - b0, "insert_select": m1 - m0, "rss": sys.argv[10],
                  **{f"{s}": tasks[f"{s}.order_items"]["duration_seconds"] for s in ("extract", "export", "load")},
                  "model": tasks["model"]["duration_seconds"], "check": tasks["check"]["duration_seconds"]}))
PY
  tail -n 1 "$RUNS_FILE"
done

python3 - "$RUNS_FILE" "$ROOT/bench/RESULTS.md" <<'PY'
import datetime, json, os, platform, statistics, sys
runs = [json.loads(l) for l in open(sys.argv[1])]
out = sys.argv[2]
med = lambda k: statistics.median(r[k] for r in runs)
each = lambda k: ", ".join(f"{r[k]:.2f}" for r in runs)
lines = runs[0]["lines"]
chain = med("extract") + med("export") + med("load")
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
mem = int(next(l.split()[1] for l in open("/proc/meminfo") if l.startswith("MemTotal"))) // 1024 // 1024
row = lambda label, k, rate=True: f"| {label} | {med(k):.2f} | {lines / med(k):,.0f} | {each(k)} |" if rate else \
    f"| {label} | {med(k):.2f} | – | {each(k)} |"
rows = [row("extract → bus (order_items)", "extract"),
        row("export: commit after the last batch (lake writes overlap the extract)", "export", False),
        row("load: lake → staging COPY (order_items)", "load"),
        f"| extract→export→load chain (order_items) | {chain:.2f} | {lines / chain:,.0f} | – |",
        row("model build (all models, whole day)", "model"),
        row("checks", "check", False),
        row("whole run, 6 datasets (stratactl wall time)", "run"),
        row("**baseline: psql \\copy of the same rows**", "copy"),
        row("**baseline: bare INSERT … SELECT into a fact-shaped table**", "insert_select")]
text = f"""# strata benchmark results

Written by `make bench` (bench/run.sh). Machine: {os.cpu_count()} cores ({cpu}), {mem} GiB RAM,
{platform.platform()}. Date: {datetime.datetime.utcnow():%Y-%m-%d %H:%M} UTC. This machine is
shared and noisy: figures move by ±20% between runs.

One logical day of **{lines:,} order lines** through the real services (private PostgreSQL 15
and Redis 7 on loopback, fsync off in both the pipeline and the baselines), {len(runs)} times, each
on a fresh stack and an empty warehouse; the table gives the median and every run. In the same
runs, the same rows loaded with raw `psql \\copy` into an identical staging table (the committed
bronze partition's part files, concatenated, headers dropped: the bytes the loader streams).

| stage | seconds (median) | rows/s | runs |
|---|---:|---:|---|
""" + "\n".join(rows) + f"""

- **load stage vs raw `psql \\copy`: {med('copy') / med('load'):.2f}×** the baseline's speed
  (lake partition → staging, streamed straight into COPY, checksums verified).
- **end-to-end (source → bus → lake → staging) vs raw `psql \\copy`: {med('copy') / chain:.2f}×**.
- **model build vs a bare INSERT … SELECT** of the day's lines into a fact-shaped table:
  {med('insert_select') / med('model'):.2f}× its speed — the model build also keys every line to the
  customer version valid at order time and the product, rebuilds SCD2/SCD1 dimensions and the
  marts, in one transaction.
- Peak RSS (VmHWM) after each run: {'; '.join(r['rss'] for r in runs)}.
"""
open(out, "w").write(text)
print(text)
PY

# ---- the whole day vs the bare tools it replaces, same source day, same servers ---------------
if ! /usr/bin/python3 -c 'import pandas' 2>/dev/null; then
  ${SUDO:-} apt-get install -y -qq --no-install-recommends python3-pandas >/dev/null
fi
echo "bench: raw floor and pandas pipeline, 3 runs each"
/usr/bin/python3 "$ROOT/bench/baselines.py" "$DS" "$DIR" >"$DIR/baselines.json"
python3 - "$ROOT/bench/RESULTS.md" "$DIR/baselines.json" "$RUNS_FILE" <<'PY'
import json, statistics, sys
out, b = sys.argv[1], json.load(open(sys.argv[2]))
runs = [json.loads(l) for l in open(sys.argv[3])]
strata, lines = statistics.median(r["run"] for r in runs), runs[0]["lines"]
fmt = lambda r: ", ".join(f"{k} {v:.2f}" for k, v in r.items() if k != "total")
text = f"""
## The whole day vs the bare tools

The same source day ({lines:,} order lines), the same servers, after the pipeline run:
- **raw floor** — `psql \\copy (SELECT …) TO STDOUT | zstd` into a lake file, `zstd -dc | psql \\copy` into
  a staging table, one `INSERT … SELECT … ON CONFLICT` into a fact table with a primary key;
- **pandas pipeline** (the seed-style script) — `pandas.read_sql` → gzip CSV lake file →
  psycopg2 `copy_expert` → the same upsert.
Both are `bench/baselines.py`, 3 runs each from empty tables (median). strata's figure is the
median of the pipeline runs above (each from an empty warehouse): 6 datasets, bus, manifests, SCD2/SCD1 dimensions, fact keyed to dimension
versions, marts, checks, publish, silver and gold Parquet. This machine is noisy (±20%).

| pipeline | seconds (median) | runs |
|---|---:|---|
| strata whole run (stratactl wall time) | {strata:.2f} | {', '.join(f"{r['run']:.2f}" for r in runs)} |
| raw floor | {b['floor']['median']:.2f} | {'; '.join(fmt(r) for r in b['floor']['runs'])} |
| pandas pipeline | {b['pandas']['median']:.2f} | {'; '.join(fmt(r) for r in b['pandas']['runs'])} |

- **strata vs the raw floor: {b['floor']['median'] / strata:.2f}×** (target ≥ 1.0×)
- **strata vs the pandas pipeline: {b['pandas']['median'] / strata:.2f}×** (target ≥ 3×)
"""
open(out, "a").write(text)
print(text)
PY

# ---- query service: cached and uncached throughput and latency ------------------------------
echo "bench: query service load"
QSECS=${STRATA_BENCH_QUERY_SECONDS:-5}
"$BIN/query_load" --target "$STRATA_QUERY_GRPC" --token "$STRATA_QUERY_TOKEN" --seconds 1 --mode cached >/dev/null
CACHED16=$("$BIN/query_load" --target "$STRATA_QUERY_GRPC" --token "$STRATA_QUERY_TOKEN" --concurrency 16 --seconds "$QSECS" --mode cached)
CACHED32=$("$BIN/query_load" --target "$STRATA_QUERY_GRPC" --token "$STRATA_QUERY_TOKEN" --concurrency 32 --seconds "$QSECS" --mode cached)
UNCACHED=$("$BIN/query_load" --target "$STRATA_QUERY_GRPC" --token "$STRATA_QUERY_TOKEN" --concurrency 8 --seconds "$QSECS" --mode uncached)
# Baselines in the same run: the same SELECT straight against PostgreSQL (pgbench, 8 clients,
# prepared) for the uncached path, and bare Redis GETs (redis-benchmark, 16 clients) for the
# cached path.
cat >"$DIR/daily.sql" <<'SQL'
\set d random(0, 9999)
SELECT ds::text, orders, units, revenue::float8 FROM serving.daily_sales
WHERE ds BETWEEN '2000-01-01'::date + :d::int AND '2000-01-01'::date + :d::int + 5 ORDER BY ds;
SQL
PG_TPS=$(pgbench -n -M prepared -c 8 -j 2 -T "$QSECS" -f "$DIR/daily.sql" "$STRATA_PG_DSN" 2>/dev/null | awk '/^tps/ {print int($3)}' || true)
REDIS_RPS=$(redis-benchmark -p "$STRATA_REDIS_PORT" -c 16 -n 200000 -t get -d 200 --csv 2>/dev/null | awk -F'"' '/GET/ {print int($4)}')
python3 - "$ROOT/bench/RESULTS.md" "$CACHED16" "$CACHED32" "$UNCACHED" "$PG_TPS" "$REDIS_RPS" <<'PY'
import json, sys
out, c16, c32, un = sys.argv[1], *map(json.loads, sys.argv[2:5])
pg, redis_rps = int(sys.argv[5] or 0), int(sys.argv[6] or 0)
rows = [f"| cached, {r['concurrency']} in flight | {r['rps']:,.0f} | {r['p50_ms']:.3f} | {r['p99_ms']:.3f} | {r['errors']} |"
        for r in (c16, c32)]
rows.append(f"| uncached (every request a miss), {un['concurrency']} in flight | {un['rps']:,.0f} | {un['p50_ms']:.3f} | {un['p99_ms']:.3f} | {un['errors']} |")
text = f"""
## Query service

A C++ gRPC load generator (`bench/query_load.cpp`, callback API, closed loop) against
`Query.Call` of `daily_sales` with an analyst token, on the same 2 cores as the service, Redis and
PostgreSQL.

| load | requests/s | p50 ms | p99 ms | errors |
|---|---:|---:|---:|---:|
""" + "\n".join(rows) + f"""

- Target ≥ 20,000 cached requests/s with p99 < 5 ms: **{max(c16['rps'], c32['rps']):,.0f} requests/s**, p99
  {c16['p99_ms']:.2f} ms at 16 in flight.
- Cached vs bare Redis GETs in the same run (redis-benchmark, 16 clients, {redis_rps:,} GET/s):
  **{(c16['rps'] / redis_rps) if redis_rps else float('nan'):.2f}×** — every strata answer also crosses gRPC, auth, rate limiting and metrics.
- Uncached vs the same SELECT straight on PostgreSQL (pgbench, 8 clients, {pg:,} tps):
  **{(un['rps'] / pg) if pg else float('nan'):.2f}×**.
- For scale: a FastAPI + Redis cache hit is about 0.65 ms median at a few hundred to a few
  thousand requests/s per worker; strata's cached p50 here is {c16['p50_ms']:.2f} ms.
"""
open(out, "a").write(text)
print(text)
PY

# ---- HTTP API extraction: the reviews API through the connector vs a plain Python client ------
echo "bench: HTTP API extraction"
REVIEWS=${STRATA_BENCH_REVIEWS:-200000}
psql "$STRATA_SOURCE_DSN" -qc "INSERT INTO shop.reviews SELECT 10000000 + g, 'b' || lpad((1 + g % 35)::text, 4, '0'), 1 + g % 5, 'bench review ' || g, '2024-01-02'::timestamptz + g * interval '1 millisecond' FROM generate_series(1, $REVIEWS) g"
# A few orders on that day too, so its checks (freshness of the day's orders) pass and the run succeeds.
"$BIN/strata-source-sim" advance --through 2024-01-02 --orders-per-day 1000 --items-per-order "$ITEMS" >/dev/null
"$BIN/stratactl" --json run --date 2024-01-02 --timeout 3600 >"$DIR/run2.json"
PYBASE=$(/usr/bin/python3 - <<'PY'
import json, os, time, urllib.request
base = os.environ["STRATA_SOURCE_HTTP"] + "/reviews?updated_since=2024-01-02T00:00:00Z&limit=1000"
hdr = {"Authorization": "Bearer " + os.environ["STRATA_REVIEWS_TOKEN"]}
t0, n, url = time.time(), 0, base
while url:
    body = json.loads(urllib.request.urlopen(urllib.request.Request(url, headers=hdr)).read())
    n += len(body["reviews"])
    url = base + "&cursor=" + body["next_cursor"] if body.get("next_cursor") else None
print(json.dumps({"records": n, "seconds": time.time() - t0}))
PY
)
python3 - "$DIR/run2.json" "$PYBASE" "$ROOT/bench/RESULTS.md" <<'PY'
import json, sys
run, base, out = json.load(open(sys.argv[1])), json.loads(sys.argv[2]), sys.argv[3]
t = {x["task"]: x for x in run["tasks"]}["extract.reviews"]
rate, brate = t["rows"] / t["duration_seconds"], base["records"] / base["seconds"]
text = f"""
## HTTP API extraction

The simulator's reviews API (`/reviews`, cursor pages of 1,000, bearer token, served from the
source PostgreSQL on the same 2 cores): {t['rows']:,} records through the connector (paging,
type coercion, drift and duplicate checks, batches on the bus) in {t['duration_seconds']:.2f} s —
**{rate:,.0f} records/s**. Baseline in the same run: a plain Python `urllib` + `json` loop over the
same pages (no coercion, no output) read {base['records']:,} records at {brate:,.0f} records/s, so
the connector runs at **{rate / brate:.2f}×** the bare client (the simulator's SQL per page is
shared by both).
"""
open(out, "a").write(text)
print(text)
PY

# ---- Loader memory against partition size: 1M and 10M rows, a fresh loader each ---------------
echo "bench: loader RSS for 1M and 10M-row partitions"
RSS_ROWS=${STRATA_BENCH_RSS_ROWS:-"1000000 10000000"}
# shellcheck disable=SC2086
LOADER_RSS=$(STRATA_PIPELINE_SPEC="$NOCDC" /usr/bin/python3 "$ROOT/bench/loader_rss.py" $RSS_ROWS)
python3 - "$ROOT/bench/RESULTS.md" "$LOADER_RSS" "$b0" "$b1" "$BASE_ROWS" <<'PY'
import json, sys
out = sys.argv[1]
base_rate = int(sys.argv[5]) / (float(sys.argv[4]) - float(sys.argv[3]))
runs = [json.loads(l) for l in sys.argv[2].splitlines() if l.strip()]
rows = [f"| {r['rows']:,} | {r['loaded']:,} | {r['load_seconds']:.2f} | {r['rows'] / r['load_seconds']:,.0f} | {r['idle_rss_mib']} | **{r['rss_mib']}** |"
        for r in runs]
flat = runs[-1]['rss_mib'] / runs[0]['rss_mib'] if len(runs) > 1 and runs[0]['rss_mib'] > 0 else 1.0
text = f"""
## Loader memory against partition size

Bronze partitions of `order_items` (CSV parts of 50,000 rows and a manifest, as lake-export
writes them) loaded by a freshly started warehouse-loader each: parts streamed one after the
other into one COPY, checksums verified, no temporary files.

| partition rows | loaded | load s | rows/s | RSS before, MiB | peak RSS, MiB |
|---:|---:|---:|---:|---:|---:|
""" + "\n".join(rows) + f"""

- Peak RSS at {runs[-1]['rows']:,} rows is **{flat:.2f}×** that at {runs[0]['rows']:,} rows: flat in the partition's size.
- Load speed with the loader alone on the machine: **{runs[0]['rows'] / runs[0]['load_seconds'] / base_rate:.2f}×** (1M rows)
  and **{runs[-1]['rows'] / runs[-1]['load_seconds'] / base_rate:.2f}×** ({runs[-1]['rows']:,} rows) the raw `psql \\copy`
  baseline above ({base_rate:,.0f} rows/s); in the pipeline run the load shares the 2 cores with
  the other datasets' loads and silver exports.
"""
open(out, "a").write(text)
print(text)
PY
# Past capacity (query service, CDC): bench/overload.sh; history: bench/history.sh (both run by make bench).

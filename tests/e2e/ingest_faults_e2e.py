"""The HTTP connector against the simulator's injected faults, through a second ingest process
(pipeline `faults`, tests/e2e/fixtures/ingest_faults.yaml) that shares the stack's bus, lake-export
and lake: every pagination style, 500s, 429 with Retry-After, timeouts, truncated JSON, a page
served twice, rows shifting between pages, a wrong token, schema drift, the rate limit, and
kill -9 mid-extraction. Each extraction is judged by the lake partition it commits."""
import atexit
import csv
import json
import os
import signal
import time
import uuid

import grpc

from strata_e2e import (ENV, check, finish, free_port, gauge, load_pb2, metrics_up, sim_control, src, start, wait_for,
                        wh)

pb = load_pb2()
DIR = ENV["STRATA_STACK_DIR"]
LAKE = ENV["STRATA_LAKE_ROOT"]
SPEC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "ingest_faults.yaml")
GRPC_ADDR = f"127.0.0.1:{free_port()}"
METRICS = f"127.0.0.1:{free_port()}"
LOG = os.path.join(DIR, "logs", "ingest_faults.log")
DS = "2024-02-01"
ENV_EXTRA = {"STRATA_PIPELINE_SPEC": SPEC, "STRATA_INGEST_GRPC": GRPC_ADDR, "STRATA_INGEST_METRICS": METRICS,
             "STRATA_FAULTS_WRONG_TOKEN": "not-the-token", "STRATA_BATCH_ROWS": "20",
             "STRATA_BUS_HIGH_WATER": "10"}


SPAWNED = []


@atexit.register
def _reap():
    """This test's own ingest processes never outlive it, whatever happens."""
    for p in SPAWNED:
        try:
            os.kill(p, signal.SIGKILL)
        except OSError:
            pass


def launch():
    pid = start("ingest", ENV_EXTRA, log_name="ingest_faults.log")
    SPAWNED.append(pid)
    ok = wait_for(lambda: metrics_up(METRICS), 60, "faults ingest up")
    assert ok, "the faults ingest did not start"
    return pid


def log_lines():
    with open(LOG) as f:
        return [json.loads(line) for line in f if line.startswith("{")]


def extract(dataset, wait=True, seconds=60, ds=DS):
    """Extract via gRPC; returns (outcome, message, rows, seconds) from ingest's own log."""
    # Run ids sort by start time (lake-export drops batches of runs older than the committed one).
    run_id = f"r{int(time.time() * 1000)}-{uuid.uuid4().hex[:4]}"
    stub = grpc.insecure_channel(GRPC_ADDR).unary_unary(
        "/strata.v1.Ingest/Extract", request_serializer=pb.TaskRequest.SerializeToString,
        response_deserializer=pb.TaskAccepted.FromString)
    t0 = time.time()
    stub(pb.TaskRequest(pipeline="faults", dataset=dataset, ds=ds, run_id=run_id, task=f"extract.{dataset}",
                        attempt=1), timeout=10)
    if not wait:
        return run_id
    result = {}

    def done():
        for line in log_lines():
            msg = line.get("msg", "")
            if f"run_id={run_id}" in msg and (msg.startswith("extracted ") or msg.startswith("extract failed")):
                result["msg"] = msg
                return True
        return False

    wait_for(done, seconds, f"extraction {dataset} {run_id}")
    return run_id, result.get("msg", "(no outcome)"), time.time() - t0


def partition(dataset, run_id, seconds=60, ds=DS):
    """Rows of the committed lake partition of `run_id` (None if it never commits)."""
    path = os.path.join(LAKE, "bronze", dataset, f"dt={ds}", "_manifest.json")

    def committed():
        try:
            return json.load(open(path))["run_id"] == run_id
        except (OSError, ValueError, KeyError):
            return False

    if not wait_for(committed, seconds, f"partition {dataset} {run_id}"):
        return None
    m = json.load(open(path))
    rows = []
    for f in m["files"]:
        with open(os.path.join(os.path.dirname(path), f["path"])) as fh:
            r = csv.DictReader(fh)
            rows.extend(r)
    return m, rows


def metric(name, labels=None, **kw):
    """A metric of the faults ingest; absent is a failure unless a baseline `default` is given."""
    return gauge(METRICS, name, labels, **kw)


def lake_export_drained():
    """lake-export has read every batch on the bus and acknowledged it: whatever it was going to
    commit is committed."""
    groups = {g["name"].decode() if isinstance(g["name"], bytes) else g["name"]: g
              for g in REDIS.xinfo_groups("strata:batches")}
    g = groups.get("lake-export")
    last = REDIS.xinfo_stream("strata:batches")["last-generated-id"]
    return g is not None and g["pending"] == 0 and g["last-delivered-id"] == last


def never_committed(dataset, run_id, ds=DS):
    """True when, with the bus drained, the partition's manifest is not `run_id`'s."""
    assert wait_for(lake_export_drained, 120, "lake-export to drain the bus"), "lake-export did not drain the bus"
    try:
        return json.load(open(os.path.join(LAKE, "bronze", dataset, f"dt={ds}", "_manifest.json")))["run_id"] != run_id
    except OSError:
        return True


REDIS = __import__("redis").Redis(port=int(ENV["STRATA_REDIS_PORT"]))


# --- the demo's watermark dataset: the warehouse equals the source ---------------------------------
wm = wh("SELECT watermark->>'cursor' FROM ops.watermarks WHERE pipeline = 'demo' AND dataset = 'reviews'")
check(len(wm) == 1, f"the demo's reviews watermark is stored ({wm})")
facts = wh("SELECT count(*), sum(stars) FROM dwh.fact_review")[0]
loaded_src = src("SELECT count(*), sum(stars) FROM shop.reviews WHERE updated_at <= %s", (wm[0][0],))[0] if wm else None
check(facts == loaded_src, f"dwh.fact_review equals the source up to the watermark, overlaps removed by key: {facts} vs {loaded_src}")
check(wh("SELECT count(*) FROM dwh.dim_state WHERE population > 0")[0][0] == 51, "the census API filled dim_state.population")

SOURCE_IDS = sorted(r[0] for r in src("SELECT review_id FROM shop.reviews"))
pid = launch()

# --- every pagination style gets every row once ---------------------------------------------------
for ds in ["rv_offset", "rv_link", "rv_cursor"]:
    run_id, msg, _ = extract(ds)
    got = partition(ds, run_id)
    ids = sorted(int(r["review_id"]) for r in got[1]) if got else []
    check(ids == SOURCE_IDS, f"{ds}: the lake holds each of the {len(SOURCE_IDS)} source reviews exactly once ({msg[:80]})")

# --- a PostgreSQL snapshot through COPY TO STDOUT ------------------------------------------------
run_id, msg, _ = extract("products_snapshot")
got = partition("products_snapshot", run_id)
lake = sorted((int(r["product_id"]), r["name"], float(r["price"])) for r in got[1]) if got else []
check(lake == sorted((p, n, float(pr)) for p, n, pr in src("SELECT product_id, name, price FROM shop.products")),
      f"a snapshot extraction copies every product with its values ({len(lake)} rows)")

# --- PostgreSQL incremental by watermark: rows after the stored (cursor, key), with overlap -----------
wm_row = src("SELECT to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), order_id FROM shop.orders "
             "ORDER BY updated_at, order_id OFFSET (SELECT count(*) / 2 FROM shop.orders) LIMIT 1")[0]
wh_conn = __import__("psycopg2").connect(ENV["STRATA_PG_DSN"])
wh_conn.autocommit = True
wh_conn.cursor().execute(
    "INSERT INTO ops.watermarks (pipeline, dataset, watermark, ds, run_id) VALUES ('faults', 'orders_wm', %s, %s, 'test') "
    "ON CONFLICT (pipeline, dataset) DO UPDATE SET watermark = EXCLUDED.watermark",
    (json.dumps({"cursor": wm_row[0], "key": [str(wm_row[1])]}), DS))
run_id, msg, _ = extract("orders_wm")
got = partition("orders_wm", run_id)
want = src("SELECT order_id FROM shop.orders WHERE updated_at >= %s::timestamptz - interval '60 seconds' ORDER BY 1", (wm_row[0],))
check(got is not None and sorted(int(r["order_id"]) for r in got[1]) == [w[0] for w in want],
      f"a watermark extraction reads exactly the rows from watermark - 60 s on ({len(want)} of the table)")
mx = src("SELECT to_char(updated_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), order_id FROM shop.orders "
         "ORDER BY updated_at DESC, order_id DESC LIMIT 1")[0]
check(got is not None and got[0].get("watermark") == {"cursor": mx[0], "key": [str(mx[1])]},
      f"the new watermark is the largest (updated_at, order_id) extracted: {got[0].get('watermark') if got else None}")

# --- backpressure: a stalled lake-export makes ingest wait at the high-water mark ------------------
os.kill(int(open(os.path.join(DIR, "run", "lake_export.pid")).read()), signal.SIGSTOP)
try:
    run_bp = extract("rv_cursor", wait=False)
    r = __import__("redis").Redis(port=int(ENV["STRATA_REDIS_PORT"]))
    check(wait_for(lambda: metric("strata_ingest_batches_backpressure_active", {"stream": "strata:batches"}) == 1, 60,
                   "backpressure"), "with lake-export stalled, the extraction waits at the high-water mark")
    check(r.xlen("strata:batches") <= 11, f"the batch stream stays at the mark ({r.xlen('strata:batches')} entries, mark 10)")
    check(metric("strata_ingest_batches_backpressure_active", {"stream": "strata:batches"}) == 1 and
          r.xlen("strata:batches") <= 11, "and stays there while lake-export is stalled")
finally:
    os.kill(int(open(os.path.join(DIR, "run", "lake_export.pid")).read()), signal.SIGCONT)
got = partition("rv_cursor", run_bp, seconds=60)
check(got is not None and len(got[1]) == len(SOURCE_IDS), "once lake-export resumes, the extraction completes")
check(metric("strata_ingest_batches_backpressure_active", {"stream": "strata:batches"}) == 0, "and the gauge drops")

# --- 500s, 429 + Retry-After, truncated JSON, a timeout: retried, nothing lost --------------------
retries0 = metric("strata_ingest_http_retries_total", {"dataset": "rv_cursor"}, default=0)
sim_control(fail_next=1, throttle_next=1, truncate_next=1)
run_id, msg, took = extract("rv_cursor")
got = partition("rv_cursor", run_id)
check(got is not None and sorted(int(r["review_id"]) for r in got[1]) == SOURCE_IDS,
      f"after a 500, a 429 and a truncated body every review arrives once ({msg[:80]})")
check(metric("strata_ingest_http_retries_total", {"dataset": "rv_cursor"}) - retries0 == 3, "three requests were retried")
check(took >= 1.0, f"the 429's Retry-After: 1 was honoured ({took:.2f} s)")
sim_control(slow_next=1, slow_ms=2500)
run_id, msg, _ = extract("rv_cursor")
got = partition("rv_cursor", run_id)
check(got is not None and len(got[1]) == len(SOURCE_IDS), f"a request that times out (1 s) is retried ({msg[:80]})")

# --- bounded retries, then a clear failure without secrets ------------------------------------------
sim_control(fail_next=10)
run_id, msg, _ = extract("rv_cursor")
sim_control(fail_next=0)
check("extract failed" in msg and "GET http://" in msg and "/reviews?limit=50: HTTP 500 after 4 attempt(s)" in msg,
      f"persistent 500s fail the task naming the URL, status and attempts: {msg[:200]}")
check(never_committed("rv_cursor", run_id), "a failed extraction commits no partition")
run_id, msg, _ = extract("rv_badauth")
check("HTTP 401 after 1 attempt(s)" in msg, f"a wrong token fails at once with 401: {msg[:160]}")
token = ENV["STRATA_REVIEWS_TOKEN"]
check(token not in open(LOG).read(), "the bearer token never appears in ingest's log")

# --- a page served twice: duplicates dropped, the missing page re-read ---------------------------
dups0 = metric("strata_ingest_duplicate_records_total", {"dataset": "biz"}, default=0)
relists0 = metric("strata_ingest_relists_total", {"dataset": "biz"}, default=0)
sim_control(repeat_page=1)
run_id, msg, _ = extract("biz")
got = partition("biz", run_id)
ids = [r["id"] for r in got[1]] if got else []
check(len(ids) == 35 and len(set(ids)) == 35, f"/businesses with a repeated page: 35 rows, 35 distinct ids (got {len(ids)})")
check(metric("strata_ingest_relists_total", {"dataset": "biz"}) - relists0 == 1, "the listing was read again once")
check(metric("strata_ingest_duplicate_records_total", {"dataset": "biz"}) - dups0 >= 10, "repeated records were dropped")

# --- rows shifting between pages while paginating by offset ----------------------------------------
relists0 = metric("strata_ingest_relists_total", {"dataset": "rv_offset"}, default=0)
sim_control(shift_rows=1)
run_id, msg, _ = extract("rv_offset")
got = partition("rv_offset", run_id)
ids = sorted(set(int(r["review_id"]) for r in got[1])) if got else []
check(ids == SOURCE_IDS, f"a row moving to the end mid-listing loses no other row ({len(ids)} of {len(SOURCE_IDS)})")
check(metric("strata_ingest_relists_total", {"dataset": "rv_offset"}) - relists0 >= 1,
      "the short count was detected and the listing re-read")

# --- the API's rate limit: the client's token bucket stays under it ---------------------------------
sim_control(rate_limit=10)
retries0 = metric("strata_ingest_http_retries_total", {"dataset": "rv_offset"}, default=0)
run_id, msg, took = extract("rv_offset")
pages = len(SOURCE_IDS) // 100 + 1
check(partition("rv_offset", run_id) is not None, "extraction under a 10 req/s server limit succeeds")
# No retry means no series for the dataset; the family itself was shown counting retries above.
check(metric("strata_ingest_http_retries_total", {"dataset": "rv_offset"}, default=0) == retries0,
      "paced at 8 req/s, no request hit the server's 429")
check(took >= (pages - 1) / 8.0 - 0.2, f"{pages} pages at 8 req/s took {took:.2f} s")
run_id, msg, _ = extract("rv_link")
check(partition("rv_link", run_id) is not None, "an unpaced dataset is throttled by 429s and still completes")
sim_control(rate_limit=0)

# --- schema drift ---------------------------------------------------------------------------------
sim_control(extra_field=1)
run_id, msg, _ = extract("rv_drift_fail")
check("schema drift in dataset 'rv_drift_fail': field 'language' appeared at cursor=(first) index=0 (schema_drift: fail)"
      in msg, f"policy fail stops the extraction, naming the field and where: {msg[:200]}")
run_id, msg, _ = extract("rv_drift_add")
got = partition("rv_drift_add", run_id)
check(got is not None and got[0]["columns"][-1] == "language" and {r["language"] for r in got[1]} == {"en"},
      "policy add_column stages the new field as a column")
check(wh("SELECT column_name FROM ops.schema_columns WHERE pipeline = 'faults' AND dataset = 'rv_drift_add'") ==
      [("language",)], "the added column is remembered in ops.schema_columns")
check(metric("strata_ingest_schema_drift_total", {"dataset": "rv_drift_add", "field": "language", "change": "appeared"}) == 1,
      "the drift is counted once")
sim_control(extra_field=0)
run_id, msg, _ = extract("rv_drift_add")
# Never counted means no series; the same family's "appeared" series is asserted just above.
check(metric("strata_ingest_schema_drift_total", {"dataset": "rv_drift_add", "field": "language", "change": "vanished"},
             default=0) == 0,
      "a field added as a column is not reported vanished when it goes")
check(metric("strata_ingest_schema_drift_total", {"dataset": "rv_drift_fail", "field": "language"}) == 1,
      "the fail policy's drift is counted too")

# --- kill -9 mid-extraction, then run again: exactly the source ----------------------------------
# Pages slowed to 300 ms so the kill lands after some batches are on the bus and before the end.
sim_control(slow_next=100000, slow_ms=300)
run_killed = extract("rv_slow", wait=False)
run_dir = os.path.join(LAKE, "bronze", "rv_slow", f"dt={DS}", f"run={run_killed}")
check(wait_for(lambda: os.path.exists(os.path.join(run_dir, "part-00001.csv")), 60, "batches of the killed run"),
      "the extraction to be killed has batches in the lake")
os.kill(pid, signal.SIGKILL)
sim_control(slow_next=0)
check(never_committed("rv_slow", run_killed), "the killed extraction commits no partition")
pid = launch()
run_id, msg, _ = extract("rv_slow")
got = partition("rv_slow", run_id)
ids = [int(r["review_id"]) for r in got[1]] if got else []
check(sorted(ids) == SOURCE_IDS, f"re-run after kill -9: the lake partition is exactly the source ({len(ids)} rows)")

# --- several workers share a sharded extraction; a dead worker's shard is redone by another ----------
SDS = "2024-01-03"
want = sorted(src("SELECT order_id, line_no FROM shop.order_items WHERE updated_at >= %s AND updated_at < %s::date + 1",
                  (SDS, SDS)))
worker_b_metrics = f"127.0.0.1:{free_port()}"
worker_b = start("ingest", dict(ENV_EXTRA, STRATA_INGEST_GRPC=f"127.0.0.1:{free_port()}",
                                STRATA_INGEST_METRICS=worker_b_metrics), log_name="ingest_faults_b.log")
SPAWNED.append(worker_b)
check(wait_for(lambda: metrics_up(worker_b_metrics), 60, "worker b up"), "a second worker is up")
run_id, msg, _ = extract("items_sharded", ds=SDS)
got = partition("items_sharded", run_id, ds=SDS)
keys = sorted((int(r["order_id"]), int(r["line_no"])) for r in got[1]) if got else []
check(keys == want, f"4 shards over 2 workers: the partition is exactly the day's {len(want)} order lines ({len(keys)})")
# A worker that took no shard has no series: 0 for each, the sum must still be 4.
done = metric("strata_ingest_shards_total", {"outcome": "done"}, default=0) + \
    gauge(worker_b_metrics, "strata_ingest_shards_total", {"outcome": "done"}, default=0)
check(done == 4, f"each of the 4 shards was extracted once ({done})")
# Hold the workers on a table lock so worker b is caught holding a shard, kill it, then let go.
import psycopg2  # noqa: E402
locker = psycopg2.connect(ENV["STRATA_SOURCE_DSN"])
lcur = locker.cursor()
lcur.execute("LOCK TABLE shop.order_items IN ACCESS EXCLUSIVE MODE")
run_id = extract("items_sharded", wait=False, ds=SDS)
r = __import__("redis").Redis(port=int(ENV["STRATA_REDIS_PORT"]))


def b_holds_shard():
    def text(v):
        return v.decode() if isinstance(v, bytes) else str(v)

    return any(text(c.get("name", c.get(b"name"))).endswith(f"-{worker_b}") and int(c.get("pending", c.get(b"pending"))) > 0
               for c in r.xinfo_consumers("strata:extract:faults", "ingest"))


check(wait_for(b_holds_shard, 60, "worker b holds a shard"), "worker b has taken a shard")
os.kill(worker_b, signal.SIGKILL)
locker.rollback()
locker.close()
got = partition("items_sharded", run_id, seconds=60, ds=SDS)
keys = sorted((int(r["order_id"]), int(r["line_no"])) for r in got[1]) if got else []
check(keys == want, f"after worker b died holding a shard, another worker redid it: exactly {len(want)} lines ({len(keys)})")

os.kill(pid, signal.SIGTERM)
finish()

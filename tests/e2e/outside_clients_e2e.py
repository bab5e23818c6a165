"""strata seen by clients that are not strata: Python grpcio (health and Query.Call of declared
endpoints), promtool on every /metrics, redis-py playing a consumer that dies holding a batch."""
import os
import subprocess
import time

import grpc
import redis

from call_rows import rows
from strata_e2e import ENV, check, finish, load_pb2, metric, metrics, sim_advance, src, stratactl, wait_for, wh

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVICES = ["ingest", "lake_export", "warehouse_loader", "quality", "query", "controller"]

# Messages generated from the project's proto by the real protoc, imported by grpcio's client.
strata_pb2 = load_pb2()

# A pipeline day so every service has something to report (the pipeline test may not have run).
if wh("SELECT count(*) FROM ops.runs WHERE state = 'succeeded'")[0][0] == 0:
    sim_advance("2024-01-01")
    check(stratactl("run", "--date", "2024-01-01")[0] == 0, "a pipeline day runs")

# --- grpc.health.v1.Health/Check on every service -----------------------------------------------
for svc in SERVICES:
    channel = grpc.insecure_channel(ENV[f"STRATA_{svc.upper()}_GRPC"])
    health = channel.unary_unary("/grpc.health.v1.Health/Check",
                                 request_serializer=lambda b: b, response_deserializer=lambda b: b)
    reply = health(b"", timeout=5)  # HealthCheckRequest{service: ""}
    check(reply == b"\x08\x01", f"{svc}: Health/Check answers SERVING")
    reflection = channel.stream_stream("/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
                                      request_serializer=lambda b: b, response_deserializer=lambda b: b)
    # ServerReflectionRequest{list_services: ""} is field 7, an empty string.
    answers = list(reflection(iter([b"\x3a\x00"]), timeout=5))
    check(len(answers) == 1 and b"strata.v1." in answers[0], f"{svc}: server reflection lists strata services")

# --- Query.Call from grpcio, checked against the warehouse -----------------------------------------
AUTH = [("authorization", "Bearer " + ENV["STRATA_QUERY_TOKEN"])]
q = grpc.insecure_channel(ENV["STRATA_QUERY_GRPC"])
call = q.unary_unary("/strata.v1.Query/Call", request_serializer=strata_pb2.CallRequest.SerializeToString,
                     response_deserializer=strata_pb2.CallReply.FromString)


def daily(params, **kw):
    """The daily_sales endpoint (pipelines/demo/pipeline.yaml) with parameters {"from": ..., "to": ...}."""
    return call(strata_pb2.CallRequest(endpoint="daily_sales", params=params), **kw)


def top(params, **kw):
    """The top_customers endpoint with parameters {"limit": ..., "status": ...} (as text)."""
    return call(strata_pb2.CallRequest(endpoint="top_customers", params=params), **kw)


# Expected answers come from the source (the shop's orders and lines), for the published days.
served = [str(d) for (d,) in wh("SELECT ds FROM serving.daily_sales ORDER BY ds")]
expected = src("""SELECT o.ordered_at::date::text, count(DISTINCT o.order_id), sum(i.quantity),
                         sum(i.quantity * i.unit_price)
                  FROM shop.orders o JOIN shop.order_items i USING (order_id)
                  WHERE o.ordered_at::date = ANY(%s::date[]) GROUP BY 1 ORDER BY 1""", (served,))
reply = daily({"from": "2024-01-01", "to": "2024-12-31"}, timeout=5, metadata=AUTH)
got = [(d["ds"], d["orders"], d["units"], round(float(d["revenue"]), 2)) for d in rows(reply)]
check(len(got) > 0 and got == [(a, b, c, round(float(d), 2)) for a, b, c, d in expected],
      f"daily_sales over gRPC equals the source's orders, units and revenue per published day ({len(got)} days)")
again = daily({"from": "2024-01-01", "to": "2024-12-31"}, timeout=5, metadata=AUTH)
check(again.cached and rows(again) == rows(reply), "the second identical call is served from the cache")
try:
    top({"limit": "-1"}, timeout=5, metadata=AUTH)
    check(False, "a negative limit is refused")
except grpc.RpcError as e:
    check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and "limit" in e.details(),
          f"a negative limit is INVALID_ARGUMENT naming the parameter ({e.code()}, {e.details()})")
try:
    top({"limit": "3", "status": "lost"}, timeout=5, metadata=AUTH)
    check(False, "an unknown status is refused")
except grpc.RpcError as e:
    check(e.code() == grpc.StatusCode.INVALID_ARGUMENT and "status" in e.details(),
          f"an unknown status is INVALID_ARGUMENT ({e.details()})")
three = top({"limit": "3"}, timeout=5, metadata=AUTH)
expected_top = src("""SELECT o.customer_id, sum(i.quantity * i.unit_price), count(DISTINCT o.order_id)
                      FROM shop.orders o JOIN shop.order_items i USING (order_id)
                      WHERE o.ordered_at::date = ANY(%s::date[]) GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 3""", (served,))
check([(c["customer_id"], round(float(c["revenue"]), 2), c["orders"]) for c in rows(three)] ==
      [(a, round(float(b), 2), n) for a, b, n in expected_top],
      f"top_customers with limit=3 equals the source's three best customers {expected_top}")

# --- a consumer dies holding a batch: lake-export reclaims it ---------------------------------------
r = redis.Redis.from_url(ENV["STRATA_REDIS_URL"])
batch = strata_pb2.Batch(batch_id="probe/0", pipeline="demo", dataset="reclaim_probe", ds="2024-02-01",
                         run_id="r9999999999999-0001", seq=0, last=True, total_batches=1, columns=["a"])
for v in ["x", "y"]:
    batch.rows.add().values.add().text = v
pipe = r.pipeline(transaction=True)  # add and take in one step so the live consumer cannot see it first
pipe.xadd("strata:batches", {"batch": batch.SerializeToString(), "dataset": "reclaim_probe"})
pipe.xreadgroup("lake-export", "consumer-that-dies", {"strata:batches": ">"}, count=1)
pipe.execute()
manifest = os.path.join(ENV["STRATA_LAKE_ROOT"], "bronze/reclaim_probe/dt=2024-02-01/_manifest.json")
deadline = time.time() + 60
while time.time() < deadline and not os.path.exists(manifest):
    time.sleep(0.2)
check(os.path.exists(manifest), "the orphaned batch was reclaimed and its partition committed")
pending = r.xpending("strata:batches", "lake-export")["pending"]
check(pending == 0, f"nothing is left pending on the bus ({pending})")
check(metric(metrics("lake_export"), "strata_lake_export_reclaimed_total") >= 1,
      "strata_lake_export_reclaimed_total counted it")

# --- promtool and the golden list of metric names -------------------------------------------------
golden = {}
for line in open(os.path.join(ROOT, "tests/metrics_golden.txt")):
    if line.strip() and not line.startswith("#"):
        svc, name = line.split()
        golden.setdefault(svc, set()).add(name)
for svc in SERVICES:
    text = metrics(svc)
    p = subprocess.run(["promtool", "check", "metrics"], input=text, capture_output=True, text=True)
    check(p.returncode == 0, f"{svc}: promtool check metrics passes {p.stdout.strip()} {p.stderr.strip()}")
    exposed = {l.split()[2] for l in text.splitlines() if l.startswith("# TYPE strata_")}
    check(exposed and exposed <= golden[svc], f"{svc}: every metric is in the golden list (extra: {exposed - golden[svc]})")
# --- Redis down: the query service answers from PostgreSQL, counts it, and recovers ---------------
degraded_before = metric(metrics("query"), "strata_query_degraded_total")
subprocess.run(["redis-cli", "-p", ENV["STRATA_REDIS_PORT"], "shutdown", "nosave"], capture_output=True)
# A range not asked before: the in-process cache may still answer a known question for the moment
# the version watcher needs to notice Redis is gone; a new one has to reach PostgreSQL.
req = {"from": "2023-06-01", "to": "2024-12-31"}
during = daily(req, timeout=10, metadata=AUTH)
check(not during.cached and rows(during) == rows(reply), "with Redis down the answer still arrives, uncached")
check(metric(metrics("query"), "strata_query_degraded_total") > degraded_before,
      "strata_query_degraded_total counted the degraded answer")
subprocess.run(["redis-server", "--port", ENV["STRATA_REDIS_PORT"], "--bind", "127.0.0.1", "--daemonize", "yes",
                "--dir", os.path.join(ENV["STRATA_STACK_DIR"], "redis"), "--save", "", "--appendonly", "no",
                "--pidfile", os.path.join(ENV["STRATA_STACK_DIR"], "run/redis.pid")], check=True)
check(wait_for(lambda: daily(req, timeout=10, metadata=AUTH).cached, 60, "answers cached again"),
      "after Redis returns, answers are cached again")
finish()

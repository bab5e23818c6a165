"""The query API from outside: Python grpcio and curl get the same answers, and those answers
equal what plain SQL over the simulator's shop database (and its review-site API) says; every
error code, paging, single-flight forced with a lock, the per-token rate limit, and load shed at
capacity (warehouse slots held by a lock) while cached answers keep flowing."""
import atexit
import contextlib
import datetime
import decimal
import json
import os
import random
import signal
import subprocess
import threading
import time
import types
import urllib.error
import urllib.request

import grpc
import psycopg2

from call_rows import listing, rows
from strata_e2e import (ENV, check, finish, free_port, gauge, load_pb2, metrics_up, src, start,
                        wait_for, wh)

pb = load_pb2()

ANALYST, VIEWER = ENV["STRATA_QUERY_TOKEN"], ENV["STRATA_QUERY_VIEWER_TOKEN"]
HTTP = "http://" + ENV["STRATA_QUERY_HTTP"]
channel = grpc.insecure_channel(ENV["STRATA_QUERY_GRPC"])
# The published days (what the pipeline test loaded); the expected answers below come from the
# source for exactly these days.
served = [str(d) for (d,) in wh("SELECT ds FROM serving.daily_sales ORDER BY ds")]
first, last = served[0], served[-1]


RESULT = {"orders_by_status": "orders", "top_orders": "orders", "top_customers": "customers",
          "sales_by_product": "products", "daily_sales": "days", "review_changes": "businesses",
          "rating_by_price_level": "levels", "order_live": "orders"}


class Answer:
    """A Call reply with its rows as objects under the endpoint's result key (reply.orders[0].order_id)."""

    def __init__(self, endpoint, reply):
        self.reply = reply
        self.columns = [(c.name, c.type) for c in reply.columns]
        # Decimals as floats: as the HTTP gateway answers them.
        self.rows = [types.SimpleNamespace(**{k: float(v) if isinstance(v, decimal.Decimal) else v for k, v in r.items()})
                     for r in rows(reply)]
        self.result = RESULT[endpoint]
        setattr(self, self.result, self.rows)
        self.next_page_token = reply.next_page_token
        self.cached = reply.cached
        self.paged = endpoint in ("orders_by_status", "sales_by_product")

    def as_dict(self):
        """As the HTTP gateway answers, without `cached`."""
        d = {self.result: [vars(r) for r in self.rows], "version": self.reply.version}
        if self.paged:
            d["next_page_token"] = self.next_page_token
        return d


def stub(chan=None):
    return (chan or channel).unary_unary("/strata.v1.Query/Call", request_serializer=pb.CallRequest.SerializeToString,
                                         response_deserializer=pb.CallReply.FromString)


def call(endpoint, token=ANALYST, timeout=10, chan=None, **params):
    md = [("authorization", f"Bearer {token}")] if token else []
    reply = stub(chan)(pb.CallRequest(endpoint=endpoint, params={k: str(v) for k, v in params.items()}),
                       timeout=timeout, metadata=md)
    return Answer(endpoint, reply)


def code_of(fn):
    try:
        fn()
        return grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        return e.code(), e.details()


def curl(path, token=ANALYST):
    args = ["curl", "-s", "-w", "\n%{http_code}", HTTP + path]
    if token:
        args += ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(args, capture_output=True, text=True).stdout
    body, status = out.rsplit("\n", 1)
    return int(status), json.loads(body)


# --- the gateway and gRPC give the same answers -----------------------------------------------
cases = [
    ("orders_by_status", {"status": "open", "limit": 5},
     "/analytics/orders?status=open&limit=5"),
    ("top_orders", {"limit": 3}, "/analytics/orders/top?limit=3"),
    ("top_customers", {"status": "open", "limit": 3},
     "/analytics/orders/customers?status=open&limit=3"),
    ("sales_by_product", {"from": first, "to": last, "limit": 4},
     f"/analytics/orders/product?from={first}&to={last}&limit=4"),
    ("daily_sales", {"from": first, "to": last},
     f"/analytics/sales/daily?from={first}&to={last}"),
    ("review_changes", {"from": first, "to": last, "limit": 3},
     f"/analytics/businesses/review-changes?from={first}&to={last}&limit=3"),
    ("rating_by_price_level", {"ds": last},
     f"/analytics/businesses/rating-by-price?ds={last}"),
]
for endpoint, fields, path in cases:
    reply = call(endpoint, **fields)
    status, body = curl(path)
    body.pop("cached", None)
    check(status == 200 and body == reply.as_dict() and len(reply.rows) > 0,
          f"{endpoint}: curl {path} equals the gRPC answer ({len(reply.rows)} rows)")
status, body = curl("/health", token=None)
check(status == 200 and body == {"status": "SERVING"}, "GET /health answers without a token")

# --- the API is what the pipeline declares --------------------------------------------------------
endpoint_list = channel.unary_unary("/strata.v1.Query/ListEndpoints",
                                    request_serializer=pb.ListEndpointsRequest.SerializeToString,
                                    response_deserializer=pb.ListEndpointsReply.FromString)(
    pb.ListEndpointsRequest(), timeout=10)
declared = {e.name: e for e in endpoint_list.endpoints}
check(sorted(declared) == sorted(RESULT) and all(e.pipeline == "demo" for e in endpoint_list.endpoints),
      f"ListEndpoints lists the demo's {len(RESULT)} declared endpoints ({sorted(declared)})")
check([(c.name, c.type) for c in declared["daily_sales"].columns] ==
      [("ds", "date"), ("orders", "integer"), ("units", "integer"), ("revenue", "decimal")],
      f"each with its columns typed by the warehouse ({[(c.name, c.type) for c in declared['daily_sales'].columns]})")
params = {p.name: p for p in declared["top_orders"].params}
check(params["limit"].type == "integer" and params["limit"].default_value == "10" and params["limit"].max == "1000" and
      list(params["status"].allowed) == ["open", "shipped", "delivered", "cancelled"],
      "and its parameters typed, bounded, defaulted and enumerated as declared")
check(declared["order_live"].cache == "realtime" and declared["order_live"].staleness_ms == 200 and
      list(declared["order_live"].roles) == ["analyst"], "the realtime endpoint says its staleness bound and roles")
got, details = code_of(lambda: call("no_such_endpoint"))
check(got == grpc.StatusCode.NOT_FOUND and "no_such_endpoint" in details, f"an unknown endpoint is NOT_FOUND ({got}, {details})")
status, body = curl("/analytics/orders/top?limit=2")
first_order = body["orders"][0]
check(status == 200 and type(first_order["order_id"]) is int and type(first_order["customer_id"]) is int and
      type(first_order["amount"]) in (int, float) and first_order["ordered_at"].endswith("Z"),
      f"HTTP answers carry integers and decimals as JSON numbers, timestamps as ISO strings ({first_order})")
# The OpenAPI document, from the declarations and the warehouse's column types, passes a real
# validator (@readme/openapi-parser: the OpenAPI 3 schema and its semantic rules).
status, body = curl("/openapi.json", token=None)
doc_path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"strata-openapi-{os.getpid()}.json")
with open(doc_path, "w") as f:
    json.dump(body, f)
validator = subprocess.run(["node", os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "openapi", "validate.mjs"),
                            doc_path], capture_output=True, text=True)
check(status == 200 and validator.returncode == 0,
      f"/openapi.json is a valid OpenAPI 3 document ({validator.stdout.strip()}{validator.stderr.strip()[:400]})")
daily_op = body["paths"]["/analytics/sales/daily"]["get"]
row_schema = daily_op["responses"]["200"]["content"]["application/json"]["schema"]["properties"]["days"]["items"]
check(daily_op["operationId"] == "daily_sales" and
      [p["name"] for p in daily_op["parameters"] if p["required"]] == ["from", "to"] and
      row_schema["properties"]["ds"]["format"] == "date" and row_schema["properties"]["orders"]["type"] == "integer",
      "it describes each endpoint's parameters and typed rows")
check(set(body["paths"]) == {"/health"} | {e.path for e in endpoint_list.endpoints}, "and every declared path, no other")
# Near real time: order_live reads what change data capture keeps current (marts), not the publish.
oid, status_now = wh("SELECT order_id, status FROM marts.orders_current ORDER BY order_id LIMIT 1")[0]
live = call("order_live", order_id=oid)
check([(o.order_id, o.status) for o in live.orders] == [(oid, status_now)],
      f"order_live answers order {oid} as marts.orders_current holds it ({status_now})")
status, body = curl("/analytics/orders/live")
check(status == 400 and body["error"]["message"].startswith("order_id: required"),
      f"a missing required parameter is refused, named ({body})")
status, body = curl("/analytics/orders/live?order_id=7", token=VIEWER)
check(status == 403, f"a role the endpoint does not list is refused ({status})")

# --- answers equal the source ------------------------------------------------------------------
# Written here from the shop's tables, not from the query service's SQL: an order's amount is the
# sum of its lines' quantity x unit price, its day the UTC date it was placed on.
SRC_ORDERS = """SELECT o.order_id, o.customer_id, o.status, sum(i.quantity * i.unit_price) AS amount
                FROM shop.orders o JOIN shop.order_items i USING (order_id)
                WHERE o.ordered_at::date BETWEEN %s AND %s GROUP BY 1, 2, 3"""


def money(x):
    return round(float(x), 2)


top3 = call("top_orders", limit=3)
want = src(f"SELECT order_id, amount FROM ({SRC_ORDERS}) t ORDER BY amount DESC, order_id LIMIT 3", (first, last))
check([(o.order_id, money(o.amount)) for o in top3.orders] == [(i, money(a)) for i, a in want],
      f"top_orders: the three largest orders and amounts equal the source's {want}")

daily = call("daily_sales", **{"from": first, "to": last})
want = src("""SELECT o.ordered_at::date::text, count(DISTINCT o.order_id), sum(i.quantity), sum(i.quantity * i.unit_price)
              FROM shop.orders o JOIN shop.order_items i USING (order_id)
              WHERE o.ordered_at::date BETWEEN %s AND %s GROUP BY 1 ORDER BY 1""", (first, last))
check(len(want) == len(served) and
      [(d.ds, d.orders, d.units, money(d.revenue)) for d in daily.days] == [(a, b, c, money(r)) for a, b, c, r in want],
      f"daily_sales over {first}..{last} equals the source's orders, units and revenue per day ({len(want)} days)")

# product_daily_sales: every product over the range, against the source's order lines.
prod = call("sales_by_product", **{"from": first, "to": last, "limit": 100})
want = src("""SELECT i.product_id, count(DISTINCT i.order_id), sum(i.quantity), sum(i.quantity * i.unit_price)
              FROM shop.order_items i JOIN shop.orders o USING (order_id)
              WHERE o.ordered_at::date BETWEEN %s AND %s GROUP BY 1 ORDER BY 4 DESC, 1""", (first, last))
got = [(p.product_id, p.orders, p.units, money(p.revenue)) for p in prod.products]
check(len(want) >= 20 and got == [(a, b, c, money(r)) for a, b, c, r in want],
      f"sales_by_product: orders, units and revenue of all {len(want)} products equal the source's order lines")
names = dict(src("SELECT product_id, name FROM shop.products"))
check(all(p.name == names[p.product_id] for p in prod.products if p.product_id in names),
      "sales_by_product names each product as the source's catalogue does")
one_day = call("sales_by_product", **{"from": last, "to": last, "limit": 100})
want = src("""SELECT i.product_id, sum(i.quantity * i.unit_price) FROM shop.order_items i JOIN shop.orders o USING (order_id)
              WHERE o.ordered_at::date = %s GROUP BY 1 ORDER BY 2 DESC, 1""", (last,))
check([(p.product_id, money(p.revenue)) for p in one_day.products] == [(a, money(r)) for a, r in want],
      f"sales_by_product for the single day {last} equals that day's source lines")
# Called without a range, as its users call it: every published day, the top 20.
status, body = curl("/analytics/orders/product")
want = src("""SELECT i.product_id, sum(i.quantity * i.unit_price) FROM shop.order_items i JOIN shop.orders o USING (order_id)
              WHERE o.ordered_at::date BETWEEN %s AND %s GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 20""", (first, last))
got = [(int(p["product_id"]), money(p["revenue"])) for p in body.get("products", [])] if status == 200 else body
check(status == 200 and got == [(a, money(r)) for a, r in want],
      f"GET /analytics/orders/product without parameters: 200, the top 20 products over every published day ({status})")
everything = body.get("products")
status, body = curl(f"/analytics/orders/product?from={first}")
check(status == 200 and body["products"] == everything,
      f"with only one end of the range the other is open: from the first day on is every day ({status})")
status, body = curl(f"/analytics/orders/product?form={first}")
check(status == 400 and body["error"]["message"].startswith("form: unknown parameter of sales_by_product"),
      f"a misspelt parameter is refused, named, not ignored ({status}, {body})")


def businesses(ds):
    """The review-site API's listing for a day, read page by page over plain HTTP."""
    return listing(ENV["STRATA_SOURCE_HTTP"], ds)


api_first, api_last = businesses(first), businesses(last)
check(len(api_first) == len(api_last) == 35, f"the review-site API lists 35 businesses per day ({len(api_last)})")
# business_review_changes: growth of the review count from `first` to `last`.
changes = sorted(((b, api_last[b]["review_count"] - api_first[b]["review_count"]) for b in api_last if b in api_first),
                 key=lambda t: (-t[1], t[0]))
reply = call("review_changes", **{"from": first, "to": last, "limit": 10})
check([(b.business_id, b.name, b.review_count, b.change) for b in reply.businesses] ==
      [(b, api_last[b]["name"], api_last[b]["review_count"], c) for b, c in changes[:10]],
      f"review_changes: the ten largest review-count changes equal the API's ({changes[:3]}...)")
# The day-over-day change of every business on `last`, against the API's listing of the day before.
prev = str(datetime.date.fromisoformat(last) - datetime.timedelta(days=1))
if prev in served:
    api_prev = businesses(prev)
    want = {b: api_last[b]["review_count"] - api_prev[b]["review_count"] for b in api_last if b in api_prev}
    got = dict(wh("SELECT business_id, review_change FROM serving.business_review_changes WHERE ds = %s", (last,)))
    check(len(want) == 35 and got == want,
          f"business_review_changes on {last}: each business's change equals the API's count minus {prev}'s")
# rating_by_price_level: businesses and their mean rating per price level on `last`.
levels = {}
for b in api_last.values():
    levels.setdefault(b["price_level"], []).append(decimal.Decimal(str(b["rating"])))
want = [(lvl, len(r), float((sum(r) / len(r)).quantize(decimal.Decimal("0.01"), decimal.ROUND_HALF_UP)))
        for lvl, r in sorted(levels.items())]
reply = call("rating_by_price_level", ds=last)
check({l.ds for l in reply.levels} == {last} and [(l.price_level, l.businesses, l.avg_rating) for l in reply.levels] == want,
      f"rating_by_price_level on {last} equals the API's listing: {want}")
latest = call("rating_by_price_level")
check({l.ds for l in latest.levels} == {last} and list(latest.levels) == list(reply.levels), "rating_by_price_level without a date answers the latest day")
# business_stars: every review the warehouse has seen (up to the reviews watermark), per business.
wm = wh("SELECT watermark->>'cursor' FROM ops.watermarks WHERE pipeline = 'demo' AND dataset = 'reviews'")[0][0]
want = src("""SELECT business_id, count(*), round(avg(stars), 2) FROM shop.reviews WHERE updated_at <= %s
              GROUP BY 1 ORDER BY 1""", (wm,))
stars = wh("SELECT business_id, reviews, avg_stars FROM marts.business_stars ORDER BY 1")
check(len(want) > 0 and stars == want,
      f"marts.business_stars equals the source's reviews per business up to the watermark {wm} ({len(want)} businesses)")

# --- paging ------------------------------------------------------------------------------------
seen, token, pages = [], "", 0
while True:
    page = call("orders_by_status", limit=50, page_token=token)
    seen += [o.order_id for o in page.orders]
    pages += 1
    token = page.next_page_token
    if not token or pages > 100:
        break
source_ids = sorted(i for i, *_ in src(SRC_ORDERS, (first, last)))
total = len(source_ids)
check(len(seen) == len(set(seen)) and sorted(seen) == source_ids and pages == (total + 49) // 50,
      f"paging through orders_by_status visits each of the source's {total} orders once in {pages} pages ({len(seen)})")

# --- every error code, from grpcio and from curl ----------------------------------------------
errors = [
    ("no token", lambda: call("daily_sales", token=None,
                              **{"from": first, "to": last}),
     grpc.StatusCode.UNAUTHENTICATED, f"/analytics/sales/daily?from={first}&to={last}", None, 401),
    ("unknown token", lambda: call("daily_sales", token="forged",
                                   **{"from": first, "to": last}),
     grpc.StatusCode.UNAUTHENTICATED, f"/analytics/sales/daily?from={first}&to={last}", "forged", 401),
    ("viewer asks for customers", lambda: call("top_customers", token=VIEWER, limit=3),
     grpc.StatusCode.PERMISSION_DENIED, "/analytics/orders/customers?limit=3", VIEWER, 403),
    ("negative limit", lambda: call("top_customers", limit=-1),
     grpc.StatusCode.INVALID_ARGUMENT, "/analytics/orders/customers?limit=-1", ANALYST, 400),
    ("bad date", lambda: call("daily_sales", **{"from": "2024-02-30", "to": last}),
     grpc.StatusCode.INVALID_ARGUMENT, f"/analytics/sales/daily?from=2024-02-30&to={last}", ANALYST, 400),
    ("range backwards", lambda: call("daily_sales", **{"from": last, "to": first}),
     grpc.StatusCode.INVALID_ARGUMENT, f"/analytics/sales/daily?from={last}&to={first}", ANALYST, 400),
    ("unknown status", lambda: call("orders_by_status", status="lost"),
     grpc.StatusCode.INVALID_ARGUMENT, "/analytics/orders?status=lost", ANALYST, 400),
    ("forged page token", lambda: call("orders_by_status", page_token="x1"),
     grpc.StatusCode.INVALID_ARGUMENT, "/analytics/orders?page_token=x1", ANALYST, 400),
]
for what, fn, code, path, token, http_status in errors:
    got, details = code_of(fn)
    check(got == code, f"gRPC {what}: {code.name} ({got}, {details})")
    status, body = curl(path, token=token)
    check(status == http_status and body["error"]["code"] == code.name,
          f"curl {what}: HTTP {http_status} {code.name} ({status}, {body})")
for what, path, param in [("negative limit", "/analytics/orders/customers?limit=-1", "limit"),
                          ("bad date", f"/analytics/sales/daily?from=2024-02-30&to={last}", "from"),
                          ("unknown status", "/analytics/orders?status=lost", "status"),
                          ("limit not a number", "/analytics/orders?limit=ten", "limit")]:
    status, body = curl(path)
    check(status == 400 and body["error"]["message"].startswith(param + ":"),
          f"{what}: the message names the parameter '{param}' ({body['error']['message']})")
status, body = curl(f"/analytics/sales/daily?from={last}&to={first}")
check(status == 400 and body["error"]["message"] == f"from, to: from ({last}) must be <= to ({first})",
      f"a backwards range names both parameters ({body['error']['message']})")
# A query stuck behind a lock is cut off at the call's deadline: the client gets DEADLINE_EXCEEDED
# and the service's statement is cancelled in PostgreSQL while the lock is still held (its
# statement_timeout is the call's remaining time); once the lock is gone the same call succeeds.
unique_to = str(datetime.date(2030, 1, 1) + datetime.timedelta(days=random.randint(0, 30000)))
blocker = psycopg2.connect(ENV["STRATA_PG_DSN"])
blocker.cursor().execute("LOCK TABLE serving.daily_sales IN ACCESS EXCLUSIVE MODE")
blocker_pid = blocker.get_backend_pid()


def blocked_on(table):
    return wh("""SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND pid <> %s
                 AND state = 'active' AND wait_event_type = 'Lock' AND query LIKE %s""",
              (blocker_pid, f"%{table}%"))[0][0]


outcome = {}
caller = threading.Thread(target=lambda: outcome.update(code=code_of(lambda: call(
    "daily_sales", timeout=5, **{"from": first, "to": unique_to}))))
caller.start()
try:
    check(wait_for(lambda: blocked_on("serving.daily_sales") > 0, 5, "the query behind the lock"),
          "the query service's statement waits behind the lock")
    caller.join(timeout=60)
    got, details = outcome.get("code", (None, ""))
    check(got == grpc.StatusCode.DEADLINE_EXCEEDED, f"a query blocked past its deadline is DEADLINE_EXCEEDED ({got}, {details})")
    check(wait_for(lambda: blocked_on("serving.daily_sales") == 0, 30, "statement cancelled"),
          "and its statement is cancelled in PostgreSQL though the lock is still held")
finally:
    blocker.rollback()
    blocker.close()
got, details = code_of(lambda: call("daily_sales", **{"from": first, "to": unique_to}))
check(got == grpc.StatusCode.OK, f"once the lock is gone the same call succeeds ({got}, {details})")


class QueryService:
    """A second query service on this stack's warehouse and Redis, on ports of its own, so its
    metrics count only this test's requests and its settings can differ from the stack's."""

    def __init__(self, **env):
        self.grpc, self.metrics, self.http = (f"127.0.0.1:{free_port()}" for _ in range(3))
        self.pid = start("query", dict(env, STRATA_QUERY_GRPC=self.grpc, STRATA_QUERY_METRICS=self.metrics,
                                       STRATA_QUERY_HTTP=self.http), log_name="query_api_e2e.log")
        atexit.register(self.stop)
        self.channel = grpc.insecure_channel(self.grpc)
        grpc.channel_ready_future(self.channel).result(timeout=60)
        assert wait_for(lambda: metrics_up(self.metrics), 60, "query metrics"), "the second query service did not start"

    def value(self, name, labels, default=0):
        return gauge(self.metrics, name, labels, default=default)

    def stop(self):
        try:
            os.kill(self.pid, signal.SIGTERM)
        except OSError:
            pass


@contextlib.contextmanager
def table_locked(table):
    """Holds an ACCESS EXCLUSIVE lock on `table` (warehouse queries on it wait) for the block;
    blocked_on() leaves the holder out."""
    global blocker_pid
    holder = psycopg2.connect(ENV["STRATA_PG_DSN"])
    holder.cursor().execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
    blocker_pid = holder.get_backend_pid()
    try:
        yield
    finally:
        holder.rollback()
        holder.close()


# --- single-flight: a burst of identical misses queries PostgreSQL once -------------------------
# The service gets a long per-call deadline, the serving table is locked so the first backend
# query is held open, and 20 requests for a question nobody asked before (neither Redis nor any
# process memory has it) are released together by a barrier. Only when every one of them has
# arrived is the lock let go.
svc = QueryService(STRATA_QUERY_TIMEOUT_MS="120000")
burst_to = str(datetime.date(2030, 1, 1) + datetime.timedelta(days=random.randint(0, 30000)))
SF = {"method": "sales_by_product"}
base = {k: svc.value(n, l) for k, n, l in [
    ("backend", "strata_query_backend_queries_total", SF),
    ("miss", "strata_query_cache_total", {"result": "miss"}),
    ("shared", "strata_query_cache_total", {"result": "shared"})]}


def grown(key, name, labels):
    return svc.value(name, labels) - base[key]


blocker = psycopg2.connect(ENV["STRATA_PG_DSN"])
blocker.cursor().execute("LOCK TABLE serving.product_daily_sales IN ACCESS EXCLUSIVE MODE")
blocker_pid = blocker.get_backend_pid()
results, errors = [], []
barrier = threading.Barrier(20)


def burst_call():
    barrier.wait()
    try:
        results.append(call("sales_by_product", chan=svc.channel,
                            timeout=120, **{"from": first, "to": burst_to, "limit": 7}))
    except grpc.RpcError as e:
        errors.append((e.code(), e.details()))


def waiting_on_lock():
    return blocked_on("serving.product_daily_sales")


threads = [threading.Thread(target=burst_call) for _ in range(20)]
for t in threads:
    t.start()
try:
    arrived = wait_for(lambda: grown("miss", "strata_query_cache_total", {"result": "miss"}) == 20 and
                       grown("backend", "strata_query_backend_queries_total", SF) +
                       grown("shared", "strata_query_cache_total", {"result": "shared"}) == 20 and
                       waiting_on_lock() >= 1, 90, "all 20 requests in the service, one query on the lock")
    check(arrived, "all 20 requests missed the cache and are in the service while the first query waits on the lock")
    held = waiting_on_lock()
    check(held == 1, f"while the lock is held exactly one backend query waits on it ({held})")
finally:
    blocker.rollback()
    blocker.close()
for t in threads:
    t.join(timeout=150)
want = src("""SELECT i.product_id, sum(i.quantity * i.unit_price) FROM shop.order_items i JOIN shop.orders o USING (order_id)
              WHERE o.ordered_at::date BETWEEN %s AND %s GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 7""", (first, last))
check(not errors and len(results) == 20 and
      all([(p.product_id, money(p.revenue)) for p in r.products] == [(a, money(b)) for a, b in want] for r in results),
      f"20 identical concurrent requests all get the source's answer ({len(results)} answers, errors {errors[:2]})")
backend = grown("backend", "strata_query_backend_queries_total", SF)
shared = grown("shared", "strata_query_cache_total", {"result": "shared"})
check(backend == 1 and shared == 19, f"PostgreSQL was asked once and 19 requests shared its answer ({backend}, {shared})")
svc.stop()

# --- per-token rate limit ------------------------------------------------------------------------
# A service allowing 1 request/s per token (bursts of 2): whatever the machine's speed, a token
# gets its burst, is then refused, and never gets more than the burst plus the rate over the time
# it spent asking.
rl = QueryService(STRATA_QUERY_RATE_LIMIT_RPS="1")


def limited_run(one_call, limited_code, ok_code, max_calls=100):
    codes, t0 = [], time.monotonic()
    while len(codes) < max_calls and limited_code not in codes:
        codes.append(one_call())
    return codes, time.monotonic() - t0


codes, took = limited_run(lambda: code_of(lambda: call("daily_sales", token=VIEWER, chan=rl.channel,
                                                       **{"from": first, "to": last}))[0],
                          grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.OK)
ok = codes.count(grpc.StatusCode.OK)
check(codes[:2] == [grpc.StatusCode.OK] * 2 and codes[-1] == grpc.StatusCode.RESOURCE_EXHAUSTED and
      set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED},
      f"the viewer token gets its burst of 2, then RESOURCE_EXHAUSTED ({ok} OK of {len(codes)})")
check(ok <= 2 + took * 1 + 1e-6, f"and no more than the burst plus 1/s ({ok} OK in {took:.2f} s)")


def http_once():
    req = urllib.request.Request(f"http://{rl.http}/analytics/sales/daily?from={first}&to={last}",
                                 headers={"Authorization": f"Bearer {VIEWER}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return (r.status, None)
    except urllib.error.HTTPError as e:
        return (e.code, json.loads(e.read())["error"]["code"])


http_codes, _ = limited_run(http_once, (429, "RESOURCE_EXHAUSTED"), (200, None))
check(http_codes[-1] == (429, "RESOURCE_EXHAUSTED") and set(http_codes) <= {(200, None), (429, "RESOURCE_EXHAUSTED")},
      f"over HTTP the same token gets 429 RESOURCE_EXHAUSTED ({http_codes[:5]}...)")
ok_other, _ = code_of(lambda: call("daily_sales", token=ANALYST, chan=rl.channel,
                                   **{"from": first, "to": last}))
check(ok_other == grpc.StatusCode.OK, "another token is not limited by the first one's traffic")
rl.stop()

# --- at capacity: a bounded number of warehouse queries, a bounded queue, the rest shed ---------
# A service allowed 2 warehouse queries and 2 waiters (who may wait a minute). The serving table is
# locked, so the first two distinct questions hold both slots and the next two wait; every further
# question is refused at once with UNAVAILABLE — over HTTP 503 with Retry-After — while a question
# already cached is still answered. When the lock goes, the four admitted ones get the source's
# answers.
cap = QueryService(STRATA_QUERY_TIMEOUT_MS="120000", STRATA_QUERY_MAX_BACKEND="2", STRATA_QUERY_MAX_QUEUE="2",
                   STRATA_QUERY_QUEUE_WAIT_MS="60000")
cached_q = {"from": first, "to": last}
call("daily_sales", chan=cap.channel, **cached_q)  # now cached
cap_to = str(datetime.date(2030, 1, 1) + datetime.timedelta(days=random.randint(0, 30000)))
shed0 = gauge(cap.metrics, "strata_query_shed_total", {"reason": "queue_full"})  # required: raises if absent
check(shed0 == 0, f"the shed counter is exposed (as 0) before any request is shed ({shed0})")
admitted, refused = {}, {}


def sales_code(svc, limit, timeout=120):
    """(code, details) of a sales_by_product call to `svc` for first..cap_to: a question nobody asked
    before for each `limit` (so each is a cache miss)."""
    return code_of(lambda: call("sales_by_product", chan=svc.channel,
                                timeout=timeout, **{"from": first, "to": cap_to, "limit": limit}))


def capacity_call(limit, into):
    into[limit] = sales_code(cap, limit)


held = []
with table_locked("serving.product_daily_sales"):
    for limit in (1, 2):
        held.append(threading.Thread(target=capacity_call, args=(limit, admitted)))
        held[-1].start()
    check(wait_for(lambda: waiting_on_lock() == 2 and cap.value("strata_query_backend_running", {}) == 2, 60,
                   "two warehouse queries on the lock"), "two distinct questions hold both warehouse slots")
    for limit in (3, 4):
        held.append(threading.Thread(target=capacity_call, args=(limit, admitted)))
        held[-1].start()
    check(wait_for(lambda: cap.value("strata_query_backend_waiting", {}) == 2, 60, "two waiters"),
          "the next two wait for a slot")
    for limit in range(5, 11):
        capacity_call(limit, refused)  # one at a time: each answers before the next is asked
    codes = {c for c, _ in refused.values()}
    details = {d for _, d in refused.values()}
    check(codes == {grpc.StatusCode.UNAVAILABLE} and all("at capacity" in d for d in details),
          f"six more distinct questions are shed at once with UNAVAILABLE 'at capacity' ({codes}, {sorted(details)[:1]})")
    check(not admitted, f"while the four admitted ones are still held ({admitted})")
    req = urllib.request.Request(f"http://{cap.http}/analytics/orders/product?from={first}&to={cap_to}&limit=11",
                                 headers={"Authorization": f"Bearer {ANALYST}"})
    try:
        urllib.request.urlopen(req, timeout=30)
        http_shed = (200, None, None)
    except urllib.error.HTTPError as e:
        http_shed = (e.code, e.headers.get("Retry-After"), json.loads(e.read())["error"]["code"])
    check(http_shed == (503, "1", "UNAVAILABLE"), f"over HTTP a shed request is 503 UNAVAILABLE with Retry-After: 1 ({http_shed})")
    got, details = code_of(lambda: call("daily_sales", chan=cap.channel,
                                        **cached_q))
    check(got == grpc.StatusCode.OK, f"a cached question is answered while the warehouse slots are full ({got} {details})")
    shed = cap.value("strata_query_shed_total", {"reason": "queue_full"})
    check(shed == 7, f"strata_query_shed_total{{reason=queue_full}} counts the seven shed requests ({shed})")
    check(waiting_on_lock() == 2, f"and PostgreSQL never saw more than the two admitted queries ({waiting_on_lock()})")
for t in held:
    t.join(timeout=150)
want_all = src("""SELECT i.product_id, sum(i.quantity * i.unit_price) FROM shop.order_items i JOIN shop.orders o USING (order_id)
                  WHERE o.ordered_at::date BETWEEN %s AND %s GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 4""", (first, cap_to))
check(sorted(admitted) == [1, 2, 3, 4] and all(c == grpc.StatusCode.OK for c, _ in admitted.values()),
      f"once the lock is gone the two running and the two waiting questions are answered ({admitted})")
top = call("sales_by_product", chan=cap.channel,
           **{"from": first, "to": cap_to, "limit": 4})
check([(p.product_id, money(p.revenue)) for p in top.products] == [(a, money(b)) for a, b in want_all],
      "and the answers equal the source")
check(cap.value("strata_query_backend_running", {}) == 0 and cap.value("strata_query_backend_waiting", {}) == 0,
      "no slot is left held and nobody waits")
cap.stop()

# Calls in flight are bounded below gRPC's own bound: grpc_max_threads 16 lets 12 calls be in the
# service; with 4 slots held on the lock and 8 waiting, the 13th is refused on arrival.
busy = QueryService(STRATA_QUERY_TIMEOUT_MS="120000", STRATA_GRPC_MAX_THREADS="16", STRATA_QUERY_MAX_BACKEND="4",
                    STRATA_QUERY_MAX_QUEUE="100", STRATA_QUERY_QUEUE_WAIT_MS="60000")
held_calls, in_service = [], {}


def busy_call(limit):
    in_service[limit] = sales_code(busy, limit)


with table_locked("serving.product_daily_sales"):
    for limit in range(31, 43):
        held_calls.append(threading.Thread(target=busy_call, args=(limit,)))
        held_calls[-1].start()
    check(wait_for(lambda: busy.value("strata_query_backend_running", {}) == 4 and
                   busy.value("strata_query_backend_waiting", {}) == 8, 60, "12 calls in the service"),
          "12 calls are in the service: 4 on the lock, 8 waiting for a slot")
    got, details = sales_code(busy, 43, timeout=30)
    check(got == grpc.StatusCode.UNAVAILABLE and "12 calls in flight" in details,
          f"the 13th is refused on arrival, saying why ({got}, {details})")
    n = busy.value("strata_query_shed_total", {"reason": "in_flight"})
    check(n == 1, f"strata_query_shed_total{{reason=in_flight}} = 1 ({n})")
for t in held_calls:
    t.join(timeout=150)
check(len(in_service) == 12 and all(c == grpc.StatusCode.OK for c, _ in in_service.values()),
      f"the 12 calls in the service are answered once the lock goes ({sorted(set(c for c, _ in in_service.values()))})")
busy.stop()

# A waiter gives up after query_queue_wait_ms: one slot, one waiter allowed for 300 ms.
short = QueryService(STRATA_QUERY_TIMEOUT_MS="120000", STRATA_QUERY_MAX_BACKEND="1", STRATA_QUERY_MAX_QUEUE="1",
                     STRATA_QUERY_QUEUE_WAIT_MS="300")
first_call = {}
with table_locked("serving.product_daily_sales"):
    holder = threading.Thread(target=lambda: first_call.update(r=sales_code(short, 21)))
    holder.start()
    check(wait_for(lambda: waiting_on_lock() == 1, 60, "the slot held on the lock"), "the only slot is held on the lock")
    got, details = sales_code(short, 22)
    check(got == grpc.StatusCode.UNAVAILABLE and "within 300 ms" in details,
          f"a waiter is shed after query_queue_wait_ms, saying so ({got}, {details})")
    waited = short.value("strata_query_shed_total", {"reason": "wait"})
    check(waited == 1, f"strata_query_shed_total{{reason=wait}} = 1 ({waited})")
holder.join(timeout=150)
check(first_call.get("r", (None,))[0] == grpc.StatusCode.OK, f"the held query is answered once the lock goes ({first_call})")
short.stop()
finish()

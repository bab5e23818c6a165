"""The query API from outside: Python grpcio and curl get the same answers, every error code,
paging, single-flight, and the per-token rate limit."""
import json
import subprocess
import threading

import grpc
from google.protobuf import json_format

from strata_e2e import ENV, check, finish, load_pb2, metric_value, metrics, wh

pb = load_pb2()

ANALYST, VIEWER = ENV["STRATA_QUERY_TOKEN"], ENV["STRATA_QUERY_VIEWER_TOKEN"]
HTTP = "http://" + ENV["STRATA_QUERY_HTTP"]
channel = grpc.insecure_channel(ENV["STRATA_QUERY_GRPC"])
first, last = [str(d) for d in wh("SELECT min(ds), max(ds) FROM serving.daily_sales")[0]]


def rpc(method, req_cls, reply_cls):
    return channel.unary_unary(f"/strata.v1.Query/{method}", request_serializer=req_cls.SerializeToString,
                               response_deserializer=reply_cls.FromString)


def call(method, req_cls, reply_cls, token=ANALYST, timeout=10, **fields):
    md = [("authorization", f"Bearer {token}")] if token else []
    return rpc(method, req_cls, reply_cls)(req_cls(**fields), timeout=timeout, metadata=md)


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


def as_dict(msg):
    d = json_format.MessageToDict(msg, preserving_proto_field_name=True, including_default_value_fields=True)
    d.pop("cached", None)
    return d


# --- the gateway and gRPC give the same answers -----------------------------------------------
cases = [
    ("OrdersByStatus", pb.OrdersByStatusRequest, pb.OrdersReply, {"status": "open", "limit": 5},
     "/analytics/orders?status=open&limit=5"),
    ("TopOrders", pb.TopOrdersRequest, pb.OrdersReply, {"limit": 3}, "/analytics/orders/top?limit=3"),
    ("TopCustomers", pb.TopCustomersRequest, pb.TopCustomersReply, {"status": "open", "limit": 3},
     "/analytics/orders/customers?status=open&limit=3"),
    ("SalesByProduct", pb.SalesByProductRequest, pb.SalesByProductReply, {"from": first, "to": last, "limit": 4},
     f"/analytics/orders/product?from={first}&to={last}&limit=4"),
    ("DailySales", pb.DailySalesRequest, pb.DailySalesReply, {"from": first, "to": last},
     f"/analytics/sales/daily?from={first}&to={last}"),
    ("ReviewChanges", pb.ReviewChangesRequest, pb.ReviewChangesReply, {"from": first, "to": last, "limit": 3},
     f"/analytics/businesses/review-changes?from={first}&to={last}&limit=3"),
    ("RatingByPriceLevel", pb.RatingByPriceLevelRequest, pb.RatingByPriceLevelReply, {"ds": last},
     f"/analytics/businesses/rating-by-price?ds={last}"),
]
for method, req_cls, reply_cls, fields, path in cases:
    reply = call(method, req_cls, reply_cls, **fields)
    status, body = curl(path)
    body.pop("cached", None)
    check(status == 200 and body == as_dict(reply), f"{method}: curl {path} equals the gRPC answer")
status, body = curl("/health", token=None)
check(status == 200 and body == {"status": "SERVING"}, "GET /health answers without a token")

# Answers are the warehouse's.
top3 = call("TopOrders", pb.TopOrdersRequest, pb.OrdersReply, limit=3)
expected = wh("SELECT order_id FROM serving.orders_current WHERE amount IS NOT NULL ORDER BY amount DESC, order_id LIMIT 3")
check([o.order_id for o in top3.orders] == [r[0] for r in expected], "TopOrders returns the three largest orders")
prod = call("SalesByProduct", pb.SalesByProductRequest, pb.SalesByProductReply, **{"from": first, "to": last, "limit": 1})
best = wh("SELECT product_id, sum(revenue) FROM serving.product_daily_sales GROUP BY 1 ORDER BY 2 DESC, 1 LIMIT 1")[0]
check(prod.products[0].product_id == best[0] and abs(prod.products[0].revenue - float(best[1])) < 0.005,
      "SalesByProduct's best seller and revenue match the mart")
change = call("ReviewChanges", pb.ReviewChangesRequest, pb.ReviewChangesReply, **{"from": first, "to": last, "limit": 1})
exp = wh("""SELECT t.business_id, t.review_count - f.review_count FROM serving.business_review_changes t
            JOIN serving.business_review_changes f ON f.business_id = t.business_id AND f.ds = %s
            WHERE t.ds = %s ORDER BY 2 DESC, 1 LIMIT 1""", (first, last))[0]
check((change.businesses[0].business_id, change.businesses[0].change) == exp,
      f"ReviewChanges: the largest review-count change is {exp}")

# --- paging ------------------------------------------------------------------------------------
seen, token, pages = [], "", 0
while True:
    page = call("OrdersByStatus", pb.OrdersByStatusRequest, pb.OrdersReply, limit=50, page_token=token)
    seen += [o.order_id for o in page.orders]
    pages += 1
    token = page.next_page_token
    if not token or pages > 100:
        break
total = wh("SELECT count(*) FROM serving.orders_current")[0][0]
check(len(seen) == total == len(set(seen)) and pages == (total + 49) // 50,
      f"paging through OrdersByStatus visits all {total} orders once in {pages} pages")

# --- every error code, from grpcio and from curl ----------------------------------------------
errors = [
    ("no token", lambda: call("DailySales", pb.DailySalesRequest, pb.DailySalesReply, token=None,
                              **{"from": first, "to": last}),
     grpc.StatusCode.UNAUTHENTICATED, f"/analytics/sales/daily?from={first}&to={last}", None, 401),
    ("unknown token", lambda: call("DailySales", pb.DailySalesRequest, pb.DailySalesReply, token="forged",
                                   **{"from": first, "to": last}),
     grpc.StatusCode.UNAUTHENTICATED, f"/analytics/sales/daily?from={first}&to={last}", "forged", 401),
    ("viewer asks for customers", lambda: call("TopCustomers", pb.TopCustomersRequest, pb.TopCustomersReply,
                                               token=VIEWER, limit=3),
     grpc.StatusCode.PERMISSION_DENIED, "/analytics/orders/customers?limit=3", VIEWER, 403),
    ("negative limit", lambda: call("TopCustomers", pb.TopCustomersRequest, pb.TopCustomersReply, limit=-1),
     grpc.StatusCode.INVALID_ARGUMENT, "/analytics/orders/customers?limit=-1", ANALYST, 400),
    ("bad date", lambda: call("DailySales", pb.DailySalesRequest, pb.DailySalesReply,
                              **{"from": "2024-02-30", "to": last}),
     grpc.StatusCode.INVALID_ARGUMENT, f"/analytics/sales/daily?from=2024-02-30&to={last}", ANALYST, 400),
    ("unknown status", lambda: call("OrdersByStatus", pb.OrdersByStatusRequest, pb.OrdersReply, status="lost"),
     grpc.StatusCode.INVALID_ARGUMENT, "/analytics/orders?status=lost", ANALYST, 400),
    ("forged page token", lambda: call("OrdersByStatus", pb.OrdersByStatusRequest, pb.OrdersReply, page_token="x1"),
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
# A query stuck behind a lock is cut off at the call's deadline, and the service stays healthy.
import datetime  # noqa: E402
import random  # noqa: E402
import time  # noqa: E402

import psycopg2  # noqa: E402

unique_to = str(datetime.date(2030, 1, 1) + datetime.timedelta(days=random.randint(0, 30000)))
blocker = psycopg2.connect(ENV["STRATA_PG_DSN"])
blocker.cursor().execute("LOCK TABLE serving.daily_sales IN ACCESS EXCLUSIVE MODE")
t0 = time.time()
got, details = code_of(lambda: call("DailySales", pb.DailySalesRequest, pb.DailySalesReply, timeout=0.5,
                                    **{"from": first, "to": unique_to}))
waited = time.time() - t0
blocker.rollback()
blocker.close()
check(got == grpc.StatusCode.DEADLINE_EXCEEDED and waited < 2,
      f"a query blocked past its deadline is DEADLINE_EXCEEDED after ~0.5 s ({got}, {waited:.2f} s)")
got, _ = code_of(lambda: call("DailySales", pb.DailySalesRequest, pb.DailySalesReply, **{"from": first, "to": unique_to}))
check(got == grpc.StatusCode.OK, "once the lock is gone the same call succeeds")

# --- single-flight: a burst of identical misses queries PostgreSQL once -------------------------
# A range no earlier run asked for, so neither Redis nor the service's memory has the answer.
burst_to = str(datetime.date(2030, 1, 1) + datetime.timedelta(days=random.randint(0, 30000)))
before = metric_value(metrics("query"), "strata_query_backend_queries_total", {"method": "SalesByProduct"})
results = []


def burst_call():
    results.append(call("SalesByProduct", pb.SalesByProductRequest, pb.SalesByProductReply,
                        **{"from": first, "to": burst_to, "limit": 7}))


threads = [threading.Thread(target=burst_call) for _ in range(20)]
for t in threads:
    t.start()
for t in threads:
    t.join()
after = metric_value(metrics("query"), "strata_query_backend_queries_total", {"method": "SalesByProduct"})
check(len(results) == 20 and all(r.products == results[0].products for r in results),
      "20 identical concurrent requests all get the same answer")
check(after - before == 1, f"and PostgreSQL was asked once ({after - before})")

# --- per-token rate limit (the test stack allows 200 requests/s, bursts of 400) ------------------
codes = []


def hammer():
    for _ in range(150):
        codes.append(code_of(lambda: call("DailySales", pb.DailySalesRequest, pb.DailySalesReply, token=VIEWER,
                                          **{"from": first, "to": last}))[0])


threads = [threading.Thread(target=hammer) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
limited = codes.count(grpc.StatusCode.RESOURCE_EXHAUSTED)
check(limited > 0 and codes.count(grpc.StatusCode.OK) > 0 and set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED},
      f"past the burst the viewer token is RESOURCE_EXHAUSTED ({limited} of {len(codes)} limited)")
import urllib.error
import urllib.request

http_codes = []


def hammer_http():
    for _ in range(150):
        req = urllib.request.Request(f"{HTTP}/analytics/sales/daily?from={first}&to={last}",
                                     headers={"Authorization": f"Bearer {VIEWER}"})
        try:
            with urllib.request.urlopen(req, timeout=10) as r:
                http_codes.append((r.status, None))
        except urllib.error.HTTPError as e:
            http_codes.append((e.code, json.loads(e.read())["error"]["code"]))


threads = [threading.Thread(target=hammer_http) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
check((429, "RESOURCE_EXHAUSTED") in http_codes,
      f"over HTTP the token gets 429 RESOURCE_EXHAUSTED ({sum(1 for c in http_codes if c[0] == 429)} of {len(http_codes)})")
ok_other, _ = code_of(lambda: call("DailySales", pb.DailySalesRequest, pb.DailySalesReply, token=ANALYST,
                                   **{"from": first, "to": last}))
check(ok_other == grpc.StatusCode.OK, "another token is not limited by the first one's traffic")
finish()

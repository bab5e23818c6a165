"""A second business on the same binaries: tests/pipelines/listings (a review site's listings from
its API and a web page; an incremental_by_ds and a full SQL model; two endpoints) run end to end
on a stack of its own, with none of the demo's tables created.

  - `stratactl validate`, `models` and `endpoints` describe the folder;
  - two days run; the warehouse holds exactly the tables the folder declares (no demo table);
  - marts.category_day equals the listing API's own answer per day and category, computed here
    from the API's pages; marts.state_listing (full) the latest day's per state;
  - the two declared endpoints answer on their HTTP paths and through Query.Call, equal to the
    API; /openapi.json lists exactly them and passes the validator; roles apply;
  - re-running the first day rewrites none of the second day's rows (same row versions).

Environment: STRATA_BUILD_BIN (default <repo>/build/bin). Run with /usr/bin/python3.
"""
import decimal
import json
import os
import subprocess
import urllib.error
import urllib.request
from collections import defaultdict

import grpc

from call_rows import listing
from own_stack import FAILURES, check, clean_env, load_pb2, query, run_on_own_stack, step

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.abspath(os.environ.get("STRATA_BUILD_BIN") or os.path.join(ROOT, "build", "bin"))
SPEC = os.path.join(ROOT, "tests", "pipelines", "listings")
D1, D2 = "2024-03-01", "2024-03-02"
# Every table the folder declares, and nothing else, in the schemas strata builds.
EXPECTED_TABLES = {"staging.listings", "staging.us_states", "dwh.dim_date", "marts.category_day",
                   "marts.state_listing", "serving.category_day", "serving.state_listing", "serving.publications"}
DEMO_TABLES = ["dwh.dim_state", "dwh.fact_review", "marts.business_stars", "marts.orders_current",
               "dwh.fact_business_daily", "marts.business_review_changes", "marts.daily_sales",
               "marts.product_daily_sales", "marts.rating_by_price_level", "dwh.fact_sales", "dwh.dim_customer",
               "dwh.dim_product", "serving.orders_current", "serving.business_review_changes"]


def run(*args, timeout=900):
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=ENV)
    return p.returncode, p.stdout, p.stderr


def stratactl(*args):
    return run(f"{BIN}/stratactl", *args)


def api_listing(day):
    """The API's businesses for `day` ({id: record})."""
    return listing(ENV["STRATA_SOURCE_HTTP"], day)


def per_category(day):
    """(category, businesses, mean rating to 2 decimals, reviews) from the API, in category order."""
    groups = defaultdict(list)
    for b in api_listing(day).values():
        groups[b["category"]].append(b)
    two = decimal.Decimal("0.01")
    return [(c, len(bs), (sum(decimal.Decimal(str(b["rating"])) for b in bs) / len(bs)).quantize(two, decimal.ROUND_HALF_UP),
             sum(b["review_count"] for b in bs)) for c, bs in sorted(groups.items())]


def http(path, token=None):
    req = urllib.request.Request(f"http://{ENV['STRATA_QUERY_HTTP']}{path}",
                                 headers={"Authorization": f"Bearer {token or ENV['STRATA_QUERY_TOKEN']}"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def scenario():
    step("the folder, offline")
    rc, out, err = stratactl("validate", SPEC)
    check(rc == 0 and "pipeline listings is valid: 2 datasets, 0 dimensions, 0 facts, 2 SQL models, 4 checks, 2 endpoints" in out,
          f"stratactl validate accepts the folder ({out.strip()}{err.strip()})")
    rc, out, _ = stratactl("--json", "endpoints", SPEC)
    check(rc == 0 and [(e["name"], e["path"]) for e in json.loads(out)] ==
          [("categories", "/listings/categories"), ("states", "/listings/states")],
          "stratactl endpoints lists its two endpoints")

    step("two days")
    for day in (D1, D2):
        rc, out, err = stratactl("--json", "run", "--date", day, "--timeout", "600")
        state = json.loads(out)["state"] if rc in (0, 1) and out.strip() else err
        check(rc == 0 and state == "succeeded", f"the run of {day} succeeds ({state})")

    step("the warehouse holds what the folder declares, and no demo table")
    tables = {f"{s}.{t}" for s, t in query(ENV["STRATA_PG_DSN"], """
        SELECT table_schema, table_name FROM information_schema.tables
        WHERE table_schema IN ('staging', 'dwh', 'marts', 'serving', 'raw')""")}
    check(tables == EXPECTED_TABLES, f"exactly the declared tables ({sorted(tables ^ EXPECTED_TABLES)} differ)")
    present = [t for t in DEMO_TABLES if query(ENV["STRATA_PG_DSN"], "SELECT to_regclass(%s) IS NOT NULL", (t,))[0][0]]
    check(not present, f"none of the demo's tables exists ({present})")

    step("the models equal the API")
    for day in (D1, D2):
        got = query(ENV["STRATA_PG_DSN"], """SELECT category, businesses, avg_rating, reviews FROM marts.category_day
                                              WHERE ds = %s ORDER BY category""", (day,))
        want = per_category(day)
        check(got == want and len(want) >= 5, f"marts.category_day on {day} equals the API's listing per category ({len(want)})")
    latest = api_listing(D2)
    by_state = defaultdict(lambda: [0, 0])
    for b in latest.values():
        by_state[b["state"]][0] += 1
        by_state[b["state"]][1] += b["review_count"]
    got = {a: (n, r) for a, n, r in query(ENV["STRATA_PG_DSN"],
                                          "SELECT abbreviation, businesses, reviews FROM marts.state_listing")}
    check(len(got) == 51 and all(got[s] == tuple(v) for s, v in by_state.items()) and
          sum(n for n, _ in got.values()) == len(latest),
          "marts.state_listing (full) holds the 51 states with the latest day's businesses and reviews")

    step("the endpoints")
    status, body = http(f"/listings/categories?ds={D1}")
    want = per_category(D1)
    check(status == 200 and [(c["category"], c["businesses"], decimal.Decimal(str(c["avg_rating"])), c["reviews"])
                             for c in body["categories"]] == want,
          f"GET /listings/categories?ds={D1} answers the API's per-category listing ({status})")
    status, body = http("/listings/categories")
    check(status == 200 and {c["ds"] for c in body["categories"]} == {D2}, "without a day: the latest published one")
    status, body = http("/listings/categories?min_businesses=0")
    check(status == 400 and body["error"]["message"].startswith("min_businesses: at least 1"),
          f"a parameter out of its declared bounds is refused, named ({body})")
    pages, token, seen = 0, "", []
    while pages < 20:
        status, body = http("/listings/states?limit=20" + (f"&page_token={token}" if token else ""))
        seen += [(s["abbreviation"], s["reviews"]) for s in body["states"]]
        pages, token = pages + 1, body.get("next_page_token", "")
        if not token:
            break
    want_states = sorted(((a, r) for a, (n, r) in got.items()), key=lambda t: (-t[1], t[0]))
    check(seen == want_states and pages == 3, f"GET /listings/states pages through all 51 states, most reviews first ({pages} pages)")
    status, _ = http("/listings/states", token=ENV["STRATA_QUERY_VIEWER_TOKEN"])
    check(status == 403, f"a role the endpoint does not list is refused ({status})")
    status, _ = http("/analytics/sales/daily?from=2024-03-01&to=2024-03-02")
    check(status == 404, f"the demo's endpoints are not served ({status})")
    pb = load_pb2(ROOT)
    channel = grpc.insecure_channel(ENV["STRATA_QUERY_GRPC"])
    reply = channel.unary_unary("/strata.v1.Query/Call", request_serializer=pb.CallRequest.SerializeToString,
                                response_deserializer=pb.CallReply.FromString)(
        pb.CallRequest(endpoint="categories", params={"ds": D1}), timeout=10,
        metadata=[("authorization", f"Bearer {ENV['STRATA_QUERY_TOKEN']}")])
    check([(c.name, c.type) for c in reply.columns] ==
          [("ds", "date"), ("category", "text"), ("businesses", "integer"), ("avg_rating", "decimal"), ("reviews", "integer")] and
          [(r.cells[1].text_value, r.cells[2].int_value, decimal.Decimal(r.cells[3].decimal_value), r.cells[4].int_value)
           for r in reply.rows] == want,
          "Query.Call answers the same rows with typed columns")
    status, doc = http("/openapi.json")
    path = os.path.join(ENV["STRATA_STACK_DIR"], "openapi.json")
    with open(path, "w") as f:
        json.dump(doc, f)
    v = subprocess.run(["node", os.path.join(ROOT, "tests", "openapi", "validate.mjs"), path], capture_output=True, text=True)
    check(v.returncode == 0 and set(doc["paths"]) == {"/health", "/listings/categories", "/listings/states"},
          f"/openapi.json describes exactly its endpoints and is valid ({v.stdout.strip()}{v.stderr.strip()[:300]})")

    step("re-running a day rewrites no other day")
    before = query(ENV["STRATA_PG_DSN"], "SELECT category, xmin::text, ctid::text FROM marts.category_day WHERE ds = %s ORDER BY 1", (D2,))
    d1_before = query(ENV["STRATA_PG_DSN"], "SELECT category, businesses, avg_rating, reviews FROM marts.category_day WHERE ds = %s ORDER BY 1", (D1,))
    rc, out, err = stratactl("--json", "run", "--date", D1, "--timeout", "600")
    check(rc == 0, f"the first day runs again ({err.strip()[:200]})")
    after = query(ENV["STRATA_PG_DSN"], "SELECT category, xmin::text, ctid::text FROM marts.category_day WHERE ds = %s ORDER BY 1", (D2,))
    d1_after = query(ENV["STRATA_PG_DSN"], "SELECT category, businesses, avg_rating, reviews FROM marts.category_day WHERE ds = %s ORDER BY 1", (D1,))
    check(before == after and len(after) >= 5, f"the second day's {len(after)} rows are the same row versions (xmin, ctid)")
    check(d1_after == d1_before, "and the first day's rows the same values")


ENV = {}


def main():
    def prepare(stack_dir):
        return {"STRATA_PIPELINE_SPEC": SPEC}

    def with_stack(env, webhook):
        global ENV
        ENV = env
        scenario()

    run_on_own_stack(ROOT, BIN, "strata-second-", clean_env(), [], with_stack, FAILURES, prepare)


if __name__ == "__main__":
    main()

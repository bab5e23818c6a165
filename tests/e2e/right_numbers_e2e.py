"""Right numbers after any backfill (issue 10): an independent checker that compares the warehouse
with the source database using its own plain SQL, never strata's.

It starts its own stack (infra/stack.sh, local lake) and follows the README's flow:
  1. the simulator generates a week; the source is then changed with SQL the way later days would
     change it (order headers changed on a later day, lines and a whole order deleted, a customer
     who moves, a new price); the simulator generates two more days;
  2. the nine days are backfilled: first the README's week (D1..D7, while the source already holds
     D8 and D9), then the two remaining days;
  3. two more days run one at a time, each after further changes and deletes in the source
     (including lines of orders placed on days already loaded) and a simulated day;
  4. after the backfill and after every later day, for every loaded day: lines and revenue in
     dwh.fact_sales, marts/serving.daily_sales and the query API equal the source; every fact
     points to its own customer (the version valid when the order was placed) and product, never
     to the unknown member; first versions are valid from -infinity; deleted lines and orders are
     gone from facts and from marts/serving.orders_current; revenue per product (facts, mart,
     API) equals the source;
  5. a forced mismatch (a fact row removed behind strata's back, with marts adjusted so that only
     a reconciliation against the source can see it) makes the day's checks fail and keeps the
     publication unchanged.

Every mismatch is printed (day, expected, got) and collected; the test fails at the end.

Environment: STRATA_BUILD_BIN (default <repo>/build/bin); STRATA_RIGHT_NUMBERS_START (the first
simulated day, default 2024-01-01); STRATA_PIPELINE_SPEC (default the repo's pipelines/demo,
via infra/stack.sh). Run with /usr/bin/python3.
"""
import datetime as dt
import json
import os
import subprocess
import time
import urllib.parse
import urllib.request
from decimal import Decimal

from own_stack import FAILURES, check, clean_env, execute, query, run_on_own_stack, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.abspath(os.environ.get("STRATA_BUILD_BIN") or os.path.join(ROOT, "build", "bin"))
START = dt.date.fromisoformat(os.environ.get("STRATA_RIGHT_NUMBERS_START", "2024-01-01"))
SEED = "42"
DAY = [None] + [START + dt.timedelta(days=i) for i in range(11)]  # DAY[1] .. DAY[11]
CHECK_TASK = "check"  # the DAG task that runs the spec's checks (re-run in part 5)

ENV = {}


# --- reporting -------------------------------------------------------------------------------------
def compare(what, mismatches, limit=40):
    """mismatches: list of strings; none means the assertion holds."""
    shown = list(mismatches[:limit])
    if len(mismatches) > limit:
        shown.append(f"... and {len(mismatches) - limit} more")
    return check(not mismatches, f"{what}" + (f" ({len(mismatches)} mismatch(es))" if mismatches else ""), shown)


def step(title):
    print(f"\n=== {title} ({time.strftime('%H:%M:%S')})", flush=True)


# --- the stack ---------------------------------------------------------------------------------------
def run(*args, timeout=1800):
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=ENV)
    return p.returncode, p.stdout, p.stderr


def stratactl(*args, timeout=1800):
    return run(f"{BIN}/stratactl", *args, timeout=timeout)


def sim_advance(day):
    rc, out, err = run(f"{BIN}/strata-source-sim", "advance", "--through", day.isoformat(), timeout=300)
    if rc != 0:
        raise RuntimeError(f"strata-source-sim advance --through {day}: {err.strip()}")


def wh(sql, params=None):
    return query(ENV["STRATA_PG_DSN"], sql, params)


def src(sql, params=None):
    return query(ENV["STRATA_SOURCE_DSN"], sql, params)


def cdc_caught_up(seconds=180):
    """Waits until the source's replication slot has confirmed every change made so far: strata's
    slot never confirms more than the warehouse committed, so the warehouse has applied them."""
    lsn = src("SELECT pg_current_wal_lsn()::text")[0][0]
    ok = wait_until(lambda: src("""SELECT count(*) > 0 AND bool_and(confirmed_flush_lsn >= %s::pg_lsn)
                                   FROM pg_replication_slots WHERE slot_type = 'logical'""", (lsn,))[0][0],
                    seconds, f"the replication slot to confirm {lsn}")
    check(ok, f"CDC has applied every source change up to {lsn}")


def run_day(day):
    rc, out, err = stratactl("--json", "run", "--date", day.isoformat())
    info = json.loads(out) if out.strip().startswith("{") else {}
    failed = [f"{t['task']}: {t['state']} {t.get('message', '')}" for t in info.get("tasks", [])
              if t["state"] not in ("succeeded",)]
    check(rc == 0 and info.get("state") == "succeeded",
          f"run {day} succeeded (exit {rc}, state {info.get('state')}: {info.get('message', '')})",
          failed + ([err.strip()[:300]] if err.strip() else []))
    return info


def backfill(first, last):
    rc, out, err = stratactl("--json", "backfill", "--from", first.isoformat(), "--to", last.isoformat(),
                             "--timeout", "3000", timeout=3100)
    runs = json.loads(out) if out.strip().startswith("[") else []
    bad = [f"{r['ds']} {r['run_id']}: {r['state']} {r.get('message', '')}" for r in runs if r["state"] != "succeeded"]
    n = (last - first).days + 1
    check(rc == 0 and len(runs) == n and not bad,
          f"backfill {first}..{last}: {len(runs)} of {n} runs, all succeeded (exit {rc})",
          bad + ([err.strip()[:300]] if err.strip() else []))
    return runs


# --- the source: expectations computed with the checker's own SQL ---------------------------------
def dkey(day):
    return int(day.strftime("%Y%m%d"))


def source_lines(days):
    """Every current order line of an order placed on one of the days (UTC), with its amount."""
    rows = src("""SELECT i.order_id, i.line_no, o.customer_id, i.product_id, i.quantity,
                         round(i.quantity * i.unit_price, 2), extract(epoch FROM o.ordered_at),
                         (o.ordered_at AT TIME ZONE 'UTC')::date, o.ordered_at::text
                  FROM shop.order_items i JOIN shop.orders o ON o.order_id = i.order_id
                  WHERE (o.ordered_at AT TIME ZONE 'UTC')::date = ANY(%s::date[])""", ([d.isoformat() for d in days],))
    return {(r[0], r[1]): {"customer_id": r[2], "product_id": r[3], "quantity": r[4], "amount": r[5],
                           "ordered_epoch": r[6], "day": r[7], "ordered_at": r[8]} for r in rows}


def source_orders(days):
    rows = src("""SELECT o.order_id, o.customer_id, o.status, (o.ordered_at AT TIME ZONE 'UTC')::date,
                         (SELECT sum(round(i.quantity * i.unit_price, 2)) FROM shop.order_items i
                          WHERE i.order_id = o.order_id)
                  FROM shop.orders o WHERE (o.ordered_at AT TIME ZONE 'UTC')::date = ANY(%s::date[])""",
               ([d.isoformat() for d in days],))
    return {r[0]: {"customer_id": r[1], "status": r[2], "day": r[3], "amount": r[4]} for r in rows}


def per_day(lines):
    """day -> (orders, lines, units, revenue) from line dicts."""
    out = {}
    for (order_id, _), l in lines.items():
        o, n, u, rev = out.get(l["day"], (set(), 0, 0, Decimal(0)))
        o.add(order_id)
        out[l["day"]] = (o, n + 1, u + l["quantity"], rev + l["amount"])
    return {d: (len(o), n, u, rev) for d, (o, n, u, rev) in out.items()}


# --- the warehouse ---------------------------------------------------------------------------------
def warehouse_facts(days):
    rows = wh("""SELECT f.order_id, f.line_no, f.date_key, f.quantity, f.amount, f.customer_key, f.product_key,
                        c.customer_id, extract(epoch FROM c.valid_from), extract(epoch FROM c.valid_to),
                        c.valid_from::text, c.valid_to::text, p.product_id
                 FROM dwh.fact_sales f
                 LEFT JOIN dwh.dim_customer c ON c.customer_key = f.customer_key
                 LEFT JOIN dwh.dim_product p ON p.product_key = f.product_key
                 WHERE f.date_key = ANY(%s)""", ([dkey(d) for d in days],))
    return {(r[0], r[1]): {"date_key": r[2], "quantity": r[3], "amount": r[4], "customer_key": r[5],
                           "product_key": r[6], "customer_id": r[7], "valid_from_epoch": r[8],
                           "valid_to_epoch": r[9], "valid_from": r[10], "valid_to": r[11], "product_id": r[12]}
            for r in rows}


def daily_table(table, days):
    rows = wh(f"SELECT ds, orders, units, revenue FROM {table} WHERE ds = ANY(%s::date[])",
              ([d.isoformat() for d in days],))
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def api_get(path, params):
    url = f"http://{ENV['STRATA_QUERY_HTTP']}{path}?{urllib.parse.urlencode(params)}"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {ENV['STRATA_QUERY_TOKEN']}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())


def api_daily(days):
    body = api_get("/analytics/sales/daily", {"from": min(days).isoformat(), "to": max(days).isoformat()})
    return {dt.date.fromisoformat(d["ds"]): (int(d["orders"]), int(d["units"]), Decimal(str(d["revenue"])))
            for d in body.get("days", [])}


def api_products(days):
    out, token = {}, ""
    for _ in range(100):
        params = {"from": min(days).isoformat(), "to": max(days).isoformat(), "limit": 1000}
        if token:
            params["page_token"] = token
        body = api_get("/analytics/orders/product", params)
        for p in body.get("products", []):
            out[int(p["product_id"])] = (p.get("name", ""), int(p["orders"]), int(p["units"]),
                                         Decimal(str(p["revenue"])))
        token = body.get("next_page_token", "")
        if not token:
            break
    return out


def duck(sql):
    """Rows of one DuckDB query (tests/parquet/duck.mjs): an independent reader of the lake."""
    p = subprocess.run(["node", os.path.join(ROOT, "tests", "parquet", "duck.mjs"), sql],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


def gold_manifest(mart, day):
    path = os.path.join(ENV["STRATA_LAKE_ROOT"], "gold", mart, f"dt={day.isoformat()}", "_manifest.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def money(x):
    return "-" if x is None else f"{Decimal(x):.2f}"


def close(a, b):
    return a is not None and b is not None and abs(Decimal(a) - Decimal(b)) < Decimal("0.005")


# --- the assertions, for every loaded day ----------------------------------------------------------
def verify(label, days, deleted_lines, deleted_orders):
    step(f"verify after {label}: days {days[0]}..{days[-1]}")
    want = source_lines(days)
    got = warehouse_facts(days)
    want_day = per_day(want)
    print("     source per day (orders, lines, units, revenue): " +
          "; ".join(f"{d}: {v[0]}, {v[1]}, {v[2]}, {v[3]}" for d, v in sorted(want_day.items())), flush=True)

    # 1. dwh.fact_sales: lines and revenue per day equal the source's current lines.
    got_day = {}
    for f in got.values():
        n, rev = got_day.get(f["date_key"], (0, Decimal(0)))
        got_day[f["date_key"]] = (n + 1, rev + (f["amount"] or 0))
    mism = []
    for d in days:
        w = want_day.get(d, (0, 0, 0, Decimal(0)))
        g = got_day.get(dkey(d), (0, Decimal(0)))
        if w[1] != g[0] or w[3] != g[1]:
            mism.append(f"{d}: lines expected {w[1]} got {g[0]}; revenue expected {money(w[3])} got {money(g[1])} "
                        f"(gap {money(w[3] - g[1])})")
    compare(f"[{label}] dwh.fact_sales lines and revenue per day equal the source", mism)

    missing = sorted(set(want) - set(got))
    extra = sorted(set(got) - set(want))
    by_day = {}
    for k in missing:
        by_day.setdefault(want[k]["day"], []).append(k)
    compare(f"[{label}] every source line of the loaded days is a fact (none dropped)",
            [f"{d}: {len(ks)} line(s) missing, {money(sum(want[k]['amount'] for k in ks))} of revenue, e.g. "
             f"{ks[:5]}" for d, ks in sorted(by_day.items())])
    compare(f"[{label}] no fact without a current source line (deleted lines gone, nothing resurrected)",
            [f"{k}: fact on date_key {got[k]['date_key']} amount {money(got[k]['amount'])} has no line in the source"
             + (" (deleted in the source)" if k in deleted_lines or k[0] in deleted_orders else "")
             for k in extra])
    compare(f"[{label}] each fact's quantity and amount equal its source line",
            [f"{k}: quantity/amount expected {want[k]['quantity']}/{money(want[k]['amount'])} got "
             f"{got[k]['quantity']}/{money(got[k]['amount'])}; date_key expected {dkey(want[k]['day'])} got "
             f"{got[k]['date_key']}"
             for k in sorted(set(want) & set(got))
             if want[k]["quantity"] != got[k]["quantity"] or want[k]["amount"] != got[k]["amount"]
             or dkey(want[k]["day"]) != got[k]["date_key"]])

    # 2. Attribution: own customer (the version valid at ordered_at) and own product, never key 0.
    cust_unknown, cust_wrong, version_wrong, prod_unknown, prod_wrong = [], [], [], [], []
    for k in sorted(set(want) & set(got)):
        w, g = want[k], got[k]
        if g["customer_key"] == 0:
            cust_unknown.append(k)
        elif g["customer_id"] != w["customer_id"]:
            cust_wrong.append(f"{k}: customer_key {g['customer_key']} is customer {g['customer_id']}, "
                              f"the order's customer is {w['customer_id']}")
        elif not (g["valid_from_epoch"] <= w["ordered_epoch"] < g["valid_to_epoch"]):
            version_wrong.append(f"{k}: ordered {w['ordered_at']}, points to customer {g['customer_id']}'s version "
                                 f"[{g['valid_from']}, {g['valid_to']})")
        if g["product_key"] == 0:
            prod_unknown.append(k)
        elif g["product_id"] != w["product_id"]:
            prod_wrong.append(f"{k}: product_key {g['product_key']} is product {g['product_id']}, "
                              f"the line's product is {w['product_id']}")

    def unknown_summary(keys, what):
        per = {}
        for k in keys:
            per.setdefault(want[k]["day"], []).append(k)
        return [f"{d}: {len(ks)} fact(s) on the unknown {what} (key 0), {money(sum(want[k]['amount'] for k in ks))} "
                f"of revenue, e.g. {ks[:4]}" for d, ks in sorted(per.items())]

    compare(f"[{label}] no fact on the unknown customer (key 0)", unknown_summary(cust_unknown, "customer"))
    compare(f"[{label}] every fact's customer_key is a dim_customer row of the order's own customer", cust_wrong)
    compare(f"[{label}] every fact points to the customer version valid at ordered_at", version_wrong)
    compare(f"[{label}] no fact on the unknown product (key 0)", unknown_summary(prod_unknown, "product"))
    compare(f"[{label}] every fact's product_key is a dim_product row of the line's own product", prod_wrong)

    # First versions cover the time before the first observation.
    for dim, key, sk in (("dim_customer", "customer_id", "customer_key"), ("dim_product", "product_id", "product_key")):
        late = wh(f"""SELECT {key}, min(valid_from)::text FROM dwh.{dim} WHERE {sk} <> 0
                      GROUP BY {key} HAVING min(valid_from) <> '-infinity' ORDER BY {key}""")
        compare(f"[{label}] the first version of every {key} in dwh.{dim} is valid from -infinity",
                [f"{key} {k}: first version valid from {v}" for k, v in late])

    # 3. marts.daily_sales, serving.daily_sales and the query API per day.
    def daily_mismatches(got_rows):
        out = []
        for d in days:
            w = want_day.get(d)
            g = got_rows.get(d)
            wt = (w[0], w[2], w[3]) if w else None
            if (wt is None) != (g is None) or (wt and not (wt[0] == g[0] and wt[1] == g[1] and close(wt[2], g[2]))):
                out.append(f"{d}: (orders, units, revenue) expected "
                           f"{(wt[0], wt[1], money(wt[2])) if wt else 'no row'} got "
                           f"{(g[0], g[1], money(g[2])) if g else 'no row'}")
        return out

    compare(f"[{label}] marts.daily_sales per day equals the source", daily_mismatches(daily_table("marts.daily_sales", days)))
    serving = daily_table("serving.daily_sales", days)
    compare(f"[{label}] serving.daily_sales per day equals the source", daily_mismatches(serving))
    # The API answers from serving under the published version: wait for it to show the
    # publication (cache propagation), then hold it to the source.
    api = {}

    def api_shows_serving():
        nonlocal api
        try:
            api = api_daily(days)
        except (OSError, ValueError) as e:
            print(f"     query API: {e}", flush=True)
            return False
        return set(api) == set(serving) and all(
            api[d][0] == serving[d][0] and api[d][1] == serving[d][1] and close(api[d][2], serving[d][2]) for d in api)

    wait_until(api_shows_serving, 30, "the query API to answer with the published serving.daily_sales")
    compare(f"[{label}] the query API's daily sales (HTTP /analytics/sales/daily) equal the source",
            daily_mismatches(api))

    # 3b. The lake's gold layer, read by DuckDB as a consumer of the lake would: every day's
    #     partition equals the source, even days whose marts a later run changed.
    lake = ENV["STRATA_LAKE_ROOT"]
    gold = {}
    for r in duck(f"""SELECT ds::VARCHAR AS ds, orders::BIGINT AS orders, units::BIGINT AS units,
                             round(revenue, 2)::VARCHAR AS revenue, filename
                      FROM read_parquet('{lake}/gold/daily_sales/*/*/*.parquet', filename = true)"""):
        day = dt.date.fromisoformat(r["ds"])
        if day in days:
            check(day not in gold, f"[{label}] one gold/daily_sales file holds {day} ({r['filename']})")
            gold[day] = (int(r["orders"]), int(r["units"]), Decimal(r["revenue"]))
    compare(f"[{label}] gold/daily_sales (DuckDB over the lake) per day equals the source", daily_mismatches(gold))
    versions = {d: v for d, v in wh("SELECT ds, version FROM ops.gold_partitions WHERE mart = 'daily_sales'")}
    compare(f"[{label}] each gold/daily_sales manifest names the publication recorded for its day",
            [f"{d}: manifest publish_version {m.get('publish_version')} vs ops.gold_partitions {versions.get(d)}"
             for d in days for m in [gold_manifest("daily_sales", d)] if m and m.get("publish_version") != versions.get(d)])

    # 4. Revenue per product: facts, the product_daily_sales mart, serving and the API.
    want_prod, want_prod_day = {}, {}
    for (order_id, _), l in want.items():
        want_prod[l["product_id"]] = want_prod.get(l["product_id"], Decimal(0)) + l["amount"]
        o, u, r = want_prod_day.get((l["day"], l["product_id"]), (set(), 0, Decimal(0)))
        o.add(order_id)
        want_prod_day[(l["day"], l["product_id"])] = (o, u + l["quantity"], r + l["amount"])
    want_prod_day = {k: (len(o), u, r) for k, (o, u, r) in want_prod_day.items()}
    fact_prod = {}
    for f in got.values():
        pid = f["product_id"] if f["product_key"] != 0 else "unknown(key 0)"
        fact_prod[pid] = fact_prod.get(pid, Decimal(0)) + (f["amount"] or 0)

    def prod_mismatches(got_map):
        out = []
        for p in sorted(set(want_prod) | set(got_map), key=str):
            w, g = want_prod.get(p), got_map.get(p)
            if not close(w if w is not None else 0, g if g is not None else 0):
                out.append(f"product {p}: revenue expected {money(w)} got {money(g)}")
        return out

    compare(f"[{label}] per product, sum(dwh.fact_sales.amount) equals the source", prod_mismatches(fact_prod))
    for table in ("marts.product_daily_sales", "serving.product_daily_sales"):
        rows = wh(f"SELECT ds, product_id, orders, units, revenue FROM {table} WHERE ds = ANY(%s::date[])",
                  ([d.isoformat() for d in days],))
        got_pd = {(r[0], r[1]): (r[2], r[3], r[4]) for r in rows}
        mism = []
        for k in sorted(set(want_prod_day) | set(got_pd), key=lambda x: (x[0], str(x[1]))):
            w, g = want_prod_day.get(k), got_pd.get(k)
            if w is None or g is None or not (w[0] == g[0] and w[1] == g[1] and close(w[2], g[2])):
                mism.append(f"{k[0]} product {k[1]}: (orders, units, revenue) expected "
                            f"{(w[0], w[1], money(w[2])) if w else 'no row'} got "
                            f"{(g[0], g[1], money(g[2])) if g else 'no row'}")
        compare(f"[{label}] {table} per (day, product) equals the source", mism)
    api_p = api_products(days)
    compare(f"[{label}] the query API's revenue per product (HTTP /analytics/orders/product) equals the source",
            prod_mismatches({p: v[3] for p, v in api_p.items()}))

    # 5. Deleted rows are gone; orders_current holds the source's orders of the loaded days.
    want_orders = source_orders(days)
    for table in ("marts.orders_current", "serving.orders_current"):
        rows = {r[0]: r[1:] for r in wh(f"SELECT order_id, customer_id, status, amount FROM {table}")}
        compare(f"[{label}] orders deleted in the source are absent from {table}",
                [f"order {o} (deleted in the source) is in {table}: status {rows[o][1]}, amount {money(rows[o][2])}"
                 for o in sorted(deleted_orders) if o in rows])
        mism = []
        for o, w in sorted(want_orders.items()):
            g = rows.get(o)
            if g is None:
                mism.append(f"order {o} ({w['day']}): missing, expected status {w['status']} amount {money(w['amount'])}")
            elif g[0] != w["customer_id"] or g[1] != w["status"] or not close(g[2], w["amount"]):
                mism.append(f"order {o} ({w['day']}): (customer, status, amount) expected "
                            f"({w['customer_id']}, {w['status']}, {money(w['amount'])}) got ({g[0]}, {g[1]}, {money(g[2])})")
        compare(f"[{label}] {table} has every order of the loaded days with the source's customer, status and amount",
                mism)
    compare(f"[{label}] lines deleted in the source are absent from dwh.fact_sales",
            [f"line {k} (deleted in the source) is still a fact" for k in sorted(deleted_lines)
             if wh("SELECT 1 FROM dwh.fact_sales WHERE order_id = %s AND line_no = %s", k)])
    compare(f"[{label}] orders deleted in the source have no fact left",
            [f"order {o}: {n} fact line(s) remain" for o in sorted(deleted_orders)
             for (n,) in wh("SELECT count(*) FROM dwh.fact_sales WHERE order_id = %s", (o,)) if n])
    return want_day


# --- source changes, made with SQL the way an application makes them ------------------------------
def ts(day, hhmm):
    return f"{day.isoformat()} {hhmm}:00+00"


def pick_orders(days, n, exclude, min_lines=1, statuses=None):
    """n orders placed on `days` (in order_id order, spread over the days) with at least min_lines lines."""
    rows = src("""SELECT o.order_id, (o.ordered_at AT TIME ZONE 'UTC')::date
                  FROM shop.orders o
                  WHERE (o.ordered_at AT TIME ZONE 'UTC')::date = ANY(%s::date[])
                    AND (SELECT count(*) FROM shop.order_items i WHERE i.order_id = o.order_id) >= %s
                    AND (%s::text[] IS NULL OR o.status = ANY(%s::text[]))
                  ORDER BY (o.ordered_at AT TIME ZONE 'UTC')::date, o.order_id""",
               ([d.isoformat() for d in days], min_lines, statuses, statuses))
    out, used_days = [], set()
    for order_id, day in rows:  # one per day first, then more
        if order_id not in exclude and day not in used_days and len(out) < n:
            out.append(order_id)
            used_days.add(day)
    for order_id, _ in rows:
        if order_id not in exclude and order_id not in out and len(out) < n:
            out.append(order_id)
    if len(out) < n:
        raise RuntimeError(f"the source has too few orders on {days} to pick {n}")
    return out


def delete_last_lines(order_ids):
    keys = []
    for o in order_ids:
        keys.append(src("SELECT order_id, max(line_no) FROM shop.order_items WHERE order_id = %s GROUP BY 1", (o,))[0])
    execute(ENV["STRATA_SOURCE_DSN"],
            [("DELETE FROM shop.order_items WHERE order_id = %s AND line_no = %s", k) for k in keys])
    return set(keys)


def delete_orders(order_ids):
    stmts = []
    for o in order_ids:
        stmts += [("DELETE FROM shop.order_items WHERE order_id = %s", (o,)),
                  ("DELETE FROM shop.orders WHERE order_id = %s", (o,))]
    execute(ENV["STRATA_SOURCE_DSN"], stmts)
    return set(order_ids)


def change_headers(order_ids, status, at):
    execute(ENV["STRATA_SOURCE_DSN"],
            [("UPDATE shop.orders SET status = %s, updated_at = %s::timestamptz + (%s * interval '1 minute') "
              "WHERE order_id = %s", (status, at, i, o)) for i, o in enumerate(order_ids)])


def busiest_customer(days, exclude=()):
    return src("""SELECT o.customer_id FROM shop.orders o
                  WHERE (o.ordered_at AT TIME ZONE 'UTC')::date = ANY(%s::date[]) AND NOT (o.customer_id = ANY(%s))
                  GROUP BY 1 ORDER BY count(DISTINCT (o.ordered_at AT TIME ZONE 'UTC')::date) DESC, count(*) DESC,
                           o.customer_id LIMIT 1""", ([d.isoformat() for d in days], list(exclude)))[0][0]


def move_customer(customer_id, address, city, state, at):
    execute(ENV["STRATA_SOURCE_DSN"], [(
        "UPDATE shop.customers SET address = %s, city = %s, state = %s, updated_at = %s WHERE customer_id = %s",
        (address, city, state, at, customer_id))])


def reprice_busiest_product(days, factor, at, exclude=()):
    pid = src("""SELECT i.product_id FROM shop.order_items i JOIN shop.orders o USING (order_id)
                 JOIN shop.products p USING (product_id)
                 WHERE (o.ordered_at AT TIME ZONE 'UTC')::date = ANY(%s::date[]) AND NOT (i.product_id = ANY(%s))
                 GROUP BY 1 ORDER BY count(*) DESC, 1 LIMIT 1""", ([d.isoformat() for d in days], list(exclude)))[0][0]
    execute(ENV["STRATA_SOURCE_DSN"], [(
        "UPDATE shop.products SET price = round(price * %s, 2), updated_at = %s WHERE product_id = %s",
        (Decimal(factor), at, pid))])
    return pid


# --- the scenario ---------------------------------------------------------------------------------
def scenario():
    deleted_lines, deleted_orders, touched = set(), set(), set()
    D = DAY

    step("stack up; CDC slot ready")
    check(wait_until(lambda: src("SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'")[0][0] > 0,
                     120, "ingest to create the replication slot"), "ingest created the CDC replication slot")

    # 1. A week of activity, changes the following days would make, then two more days.
    step(f"1. simulate {D[1]}..{D[7]}, change the source as {D[8]}/{D[9]} would, simulate {D[8]}..{D[9]}")
    sim_advance(D[7])
    week = D[1:8]
    lines_gone = pick_orders([D[3], D[5], D[7]], 3, touched, min_lines=2)
    touched |= set(lines_gone)
    deleted_lines |= delete_last_lines(lines_gone)
    orders_gone = pick_orders([D[4]], 1, touched)
    touched |= set(orders_gone)
    deleted_orders |= delete_orders(orders_gone)
    later_delivered = pick_orders(D[2:8], 6, touched, statuses=["open", "shipped"])
    touched |= set(later_delivered)
    change_headers(later_delivered, "delivered", ts(D[8], "14:00"))
    later_cancelled = pick_orders(D[1:8], 3, touched, statuses=["open", "shipped"])
    touched |= set(later_cancelled)
    change_headers(later_cancelled, "cancelled", ts(D[9], "15:30"))
    mover1 = busiest_customer(week)
    move_customer(mover1, '12 Quote "Lane", Unit 3', "Bristol", "WA", ts(D[8], "10:00"))
    product1 = reprice_busiest_product(week, "1.07", ts(D[8], "03:00"), exclude=[20])
    print(f"     deleted lines {sorted(deleted_lines)}; deleted order(s) {sorted(deleted_orders)}; headers changed "
          f"on {D[8]}: {later_delivered}, on {D[9]}: {later_cancelled}; customer {mover1} moves on {D[8]}; "
          f"product {product1} repriced on {D[8]}", flush=True)
    sim_advance(D[9])
    cdc_caught_up()

    # 2. The backfill: the README's week first (the source is already two days ahead), then the rest.
    step(f"2a. backfill {D[1]}..{D[7]}")
    backfill(D[1], D[7])
    verify(f"backfill {D[1]}..{D[7]}", D[1:8], deleted_lines, deleted_orders)
    step(f"2b. backfill {D[8]}..{D[9]}")
    backfill(D[8], D[9])
    verify(f"backfill {D[1]}..{D[9]}", D[1:10], deleted_lines, deleted_orders)

    # 3. Day by day, with changes and deletes in the source first.
    step(f"3. {D[10]}: delete lines of loaded days and an order, change a header, move a customer, simulate, run")
    lines_gone = pick_orders([D[3], D[6]], 2, touched, min_lines=2)
    touched |= set(lines_gone)
    deleted_lines |= delete_last_lines(lines_gone)
    orders_gone = pick_orders([D[2]], 1, touched)
    touched |= set(orders_gone)
    deleted_orders |= delete_orders(orders_gone)
    cancelled10 = pick_orders([D[5]], 1, touched, statuses=["open", "shipped", "delivered"])
    touched |= set(cancelled10)
    change_headers(cancelled10, "cancelled", ts(D[10], "08:00"))
    mover2 = busiest_customer(D[1:10], exclude=[mover1])
    old_address = src("SELECT address FROM shop.customers WHERE customer_id = %s", (mover2,))[0][0]
    move_customer(mover2, "7 Comma, Way", "Riverton", "NY", ts(D[10], "10:00"))
    product2 = reprice_busiest_product(D[1:10], "0.95", ts(D[10], "02:00"), exclude=[20, product1])
    sim_advance(D[10])
    # An order the moved customer places that evening, after the simulated day: two lines.
    # (The simulated day may have touched the customer too: what the source says now is expected.)
    new_address, moved_at = src("SELECT address, updated_at::text FROM shop.customers WHERE customer_id = %s",
                                (mover2,))[0]
    new_order = src("SELECT max(order_id) + 1 FROM shop.orders")[0][0]
    prods = src("SELECT product_id, price FROM shop.products ORDER BY product_id LIMIT 2")
    execute(ENV["STRATA_SOURCE_DSN"], [
        ("INSERT INTO shop.orders (order_id, customer_id, status, ordered_at, updated_at, note) "
         "VALUES (%s, %s, 'open', %s, %s, NULL)", (new_order, mover2, ts(D[10], "23:30"), ts(D[10], "23:30")))] + [
        ("INSERT INTO shop.order_items (order_id, line_no, product_id, quantity, unit_price, updated_at) "
         "VALUES (%s, %s, %s, %s, %s, %s)", (new_order, n + 1, p, n + 2, price, ts(D[10], "23:30")))
        for n, (p, price) in enumerate(prods)])
    touched.add(new_order)
    print(f"     deleted lines so far {sorted(deleted_lines)}; deleted orders so far {sorted(deleted_orders)}; "
          f"order {cancelled10} cancelled on {D[10]}; customer {mover2} moves on {D[10]} 10:00 and places order "
          f"{new_order} at 23:30; product {product2} repriced", flush=True)
    cdc_caught_up()
    run_day(D[10])
    verify(f"run {D[10]}", D[1:11], deleted_lines, deleted_orders)
    # The move splits the customer's history: earlier orders keep the old address, the new one the new.
    rows = wh("""SELECT f.order_id, c.address FROM dwh.fact_sales f JOIN dwh.dim_customer c USING (customer_key)
                 WHERE c.customer_id = %s ORDER BY f.order_id""", (mover2,))
    earlier = src("""SELECT order_id FROM shop.orders WHERE customer_id = %s AND ordered_at < %s::timestamptz
                     ORDER BY order_id""", (mover2, moved_at))
    addr = {}
    for o, a in rows:
        addr.setdefault(o, set()).add(a)
    compare(f"customer {mover2}'s order {new_order} (after the move) points to the version with the new address "
            f"({new_address})",
            [] if addr.get(new_order) == {new_address} else [f"order {new_order}: address {addr.get(new_order)}"])
    compare(f"customer {mover2}'s {len(earlier)} orders before the move ({moved_at}) point to the version with the "
            f"old address ({old_address})",
            [f"order {o}: address {addr.get(o) or 'no fact on a version of this customer'}"
             for (o,) in earlier if addr.get(o) != {old_address}])

    step(f"3. {D[11]}: delete a line of yesterday's order and of {D[1]}, delete an order of {D[9]}, simulate, run")
    deleted_lines |= delete_last_lines([new_order])
    lines_gone = pick_orders([D[1]], 1, touched, min_lines=2)
    touched |= set(lines_gone)
    deleted_lines |= delete_last_lines(lines_gone)
    orders_gone = pick_orders([D[9]], 1, touched)
    touched |= set(orders_gone)
    deleted_orders |= delete_orders(orders_gone)
    delivered11 = pick_orders([D[7]], 1, touched, statuses=["open", "shipped"])
    touched |= set(delivered11)
    change_headers(delivered11, "delivered", ts(D[11], "09:00"))
    sim_advance(D[11])
    cdc_caught_up()
    info = run_day(D[11])
    verify(f"run {D[11]}", D[1:12], deleted_lines, deleted_orders)
    forced_mismatch(D[11], info.get("run_id"), deleted_lines, deleted_orders)


# --- 5. a forced mismatch blocks the publish --------------------------------------------------------
# Adapt here if the reconciliation moves to another task or check. Expected to fire: a
# `reconciliation` check at error severity comparing the day's order lines in the source / lake /
# staging with dwh.fact_sales (today: `reconciliation_to_facts:order_items`, declared `severity: warn`).
def forced_mismatch(day, run_id, deleted_lines, deleted_orders):
    step(f"5. forced mismatch on {day}: a fact row removed behind strata's back, marts adjusted to match")
    if not run_id:
        check(False, f"a run of {day} to corrupt exists")
        return
    k = dkey(day)
    victim = wh("""SELECT f.order_id, f.line_no, f.quantity, f.amount, p.product_id FROM dwh.fact_sales f
                   JOIN dwh.dim_product p USING (product_key)
                   WHERE f.date_key = %s AND EXISTS (SELECT 1 FROM dwh.fact_sales g WHERE g.order_id = f.order_id
                                                     AND g.line_no <> f.line_no)
                   ORDER BY f.order_id, f.line_no DESC LIMIT 1""", (k,))
    if not check(bool(victim), f"{day} has an order with two fact lines to corrupt"):
        return
    order_id, line_no, qty, amount, product_id = victim[0]
    same_product = wh("""SELECT count(*) FROM dwh.fact_sales f JOIN dwh.dim_product p USING (product_key)
                         WHERE f.order_id = %s AND f.line_no <> %s AND p.product_id = %s""",
                      (order_id, line_no, product_id))[0][0]
    pubs_before = wh("SELECT coalesce(max(version), 0), count(*) FILTER (WHERE run_id = %s) FROM serving.publications",
                     (run_id,))[0]
    fingerprint = """SELECT md5(coalesce(string_agg(x, ',' ORDER BY x), '')) FROM (
                       SELECT 'd' || to_jsonb(t)::text FROM serving.daily_sales t
                       UNION ALL SELECT 'p' || to_jsonb(t)::text FROM serving.product_daily_sales t
                       UNION ALL SELECT 'o' || to_jsonb(t)::text FROM serving.orders_current t) s(x)"""
    serving_before = wh(fingerprint)[0][0]
    served_before = api_daily([day]).get(day)
    execute(ENV["STRATA_PG_DSN"], [
        ("DELETE FROM dwh.fact_sales WHERE order_id = %s AND line_no = %s", (order_id, line_no)),
        ("UPDATE marts.daily_sales SET units = units - %s, revenue = revenue - %s WHERE ds = %s",
         (qty, amount, day.isoformat())),
        ("UPDATE marts.product_daily_sales SET units = units - %s, revenue = revenue - %s, orders = orders - %s "
         "WHERE ds = %s AND product_id = %s", (qty, amount, 0 if same_product else 1, day.isoformat(), product_id)),
        ("DELETE FROM marts.product_daily_sales WHERE ds = %s AND product_id = %s AND units <= 0",
         (day.isoformat(), product_id)),
        ("UPDATE marts.orders_current SET amount = amount - %s WHERE order_id = %s", (amount, order_id)),
    ])
    print(f"     removed fact ({order_id}, {line_no}): quantity {qty}, amount {money(amount)}, product {product_id}; "
          f"marts.daily_sales/product_daily_sales/orders_current adjusted so marts still equal the facts", flush=True)
    since = wh("SELECT now()")[0][0]
    alerts_before = len(WEBHOOK.received) if WEBHOOK else 0
    rc, out, err = stratactl("--json", "clear", "--run", run_id, "--task", CHECK_TASK, "--wait", timeout=1200)
    info = json.loads(out) if out.strip().startswith("{") else {}
    tasks = {t["task"]: t for t in info.get("tasks", [])}
    check(rc == 1 and info.get("state") == "failed",
          f"re-running the checks of {day} fails the run (exit {rc}, state {info.get('state')}: "
          f"{info.get('message', '')})", [err.strip()[:300]] if err.strip() else [])
    check(tasks.get("publish", {}).get("state") != "succeeded",
          f"publish of {day} does not run (state {tasks.get('publish', {}).get('state')})")
    pubs_after = wh("SELECT coalesce(max(version), 0), count(*) FILTER (WHERE run_id = %s) FROM serving.publications",
                    (run_id,))[0]
    check(pubs_after == pubs_before,
          f"serving.publications gets no new version for run {run_id} "
          f"(max version {pubs_before[0]} -> {pubs_after[0]}, rows of the run {pubs_before[1]} -> {pubs_after[1]})")
    check(wh(fingerprint)[0][0] == serving_before, "serving.daily_sales, product_daily_sales and orders_current "
                                                   "are unchanged")
    served_after = api_daily([day]).get(day)
    check(served_after == served_before,
          f"the query API still answers {day} with the previous publication (before {served_before}, now "
          f"{served_after})")
    results = wh("""SELECT check_name, kind, severity, status, target, observed, message FROM quality.check_results
                    WHERE run_id = %s AND checked_at >= %s AND status <> 'pass' ORDER BY check_name""",
                 (run_id, since))
    for r in results:
        print(f"     check {r[0]} ({r[1]}, {r[2]}): {r[3]} target={r[4]} observed={r[5]} message={r[6]}", flush=True)
    recon = [r for r in results if r[1] == "reconciliation" and r[3] == "fail"]
    check(bool(recon), f"a reconciliation check fails at error severity for {day} "
                       f"(non-passing checks: {[(r[0], r[3]) for r in results]})")
    if recon:
        check(any(day.isoformat() in " ".join(str(x) for x in r[4:]) for r in recon),
              f"the failing reconciliation names the day {day}")
    if WEBHOOK:
        wait_until(lambda: any(a.get("kind") == "reconciliation" and a.get("event") == "check_failing"
                               for a in WEBHOOK.received[alerts_before:]), 30, "a reconciliation alert")
        recon_alerts = [a for a in WEBHOOK.received[alerts_before:]
                        if a.get("kind") == "reconciliation" and a.get("event") == "check_failing"]
        for a in recon_alerts:
            print(f"     alert: {a.get('text') or a}", flush=True)
        check(any(a.get("ds") == day.isoformat() and a.get("severity") == "error" for a in recon_alerts),
              f"an error-severity reconciliation alert for {day} reached the webhook")

    step(f"5b. a clean re-run of {day} reconciles and publishes again")
    info = run_day(day)
    pubs_final = wh("SELECT count(*) FROM serving.publications WHERE run_id = %s", (info.get("run_id", ""),))[0][0]
    check(pubs_final == 1, f"the clean re-run of {day} is published ({pubs_final} publication(s))")
    want = per_day(source_lines([day])).get(day, (0, 0, 0, Decimal(0)))
    got = wh("SELECT count(*), coalesce(sum(amount), 0) FROM dwh.fact_sales WHERE date_key = %s", (k,))[0]
    served = wh("SELECT revenue FROM serving.daily_sales WHERE ds = %s", (day.isoformat(),))
    check(got == (want[1], want[3]) and served and close(served[0][0], want[3]),
          f"after the clean re-run {day} has the source's {want[1]} lines and {money(want[3])} in facts and serving "
          f"(facts {got[0]} lines, {money(got[1])}; serving {money(served[0][0]) if served else 'no row'})")


WEBHOOK = None


def main():
    def with_stack(env, webhook):
        global ENV, WEBHOOK
        ENV, WEBHOOK = env, webhook
        os.environ.update({k: v for k, v in ENV.items() if k.startswith("STRATA_")})
        scenario()

    run_on_own_stack(ROOT, BIN, "strata-right-numbers-", clean_env(keep=("STRATA_PIPELINE_SPEC",)),
                     ["--start", START.isoformat(), "--seed", SEED], with_stack, FAILURES)


if __name__ == "__main__":
    main()

"""The lake's silver and gold layers, read back with an independent Parquet reader (hyparquet):
silver holds the staged day typed, one row per key; gold holds the published marts of the day;
re-running a date replaces a partition whole."""
import json
import os
import subprocess
from decimal import Decimal

from strata_e2e import ENV, check, finish, stratactl, wh

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAKE = ENV["STRATA_LAKE_ROOT"]
DS = "2024-01-03"


def manifest(layer, name, ds=DS):
    with open(os.path.join(LAKE, layer, name, f"dt={ds}", "_manifest.json")) as f:
        return json.load(f)


def rows(layer, name, ds=DS):
    m = manifest(layer, name, ds)
    out = []
    for f in m["files"]:
        p = subprocess.run(["node", f"{ROOT}/tests/parquet/dump.mjs", os.path.join(LAKE, layer, name, f"dt={ds}", f["path"])],
                           capture_output=True, text=True, check=True)
        out.extend(json.loads(p.stdout))
    return m, out


m, silver = rows("silver", "customers")
staged = wh("""SELECT DISTINCT ON (customer_id) customer_id::text, name, email, segment,
                      'us:' || (extract(epoch FROM updated_at) * 1000000)::bigint
               FROM staging.customers WHERE ds = %s ORDER BY customer_id, updated_at DESC""", (DS,))
check(m["format"] == "parquet" and m["layer"] == "silver" and m["rows"] == len(staged) > 0,
      f"silver/customers/dt={DS} is a Parquet partition of {m['rows']} rows, one per staged customer ({len(staged)})")
got = sorted((r["customer_id"], r["name"], r["email"], r["segment"], r["updated_at"]) for r in silver)
check(got == sorted(tuple(s) for s in staged), "every silver value equals the latest staged version of its key")
n_staged = wh("SELECT count(*) FROM staging.products WHERE ds = %s", (DS,))[0][0]
_, products = rows("silver", "products")
prices = wh("SELECT DISTINCT ON (product_id) product_id::text, price FROM staging.products WHERE ds = %s "
            "ORDER BY product_id, updated_at DESC", (DS,))
check(sorted((p["product_id"], p["price"]) for p in products) == sorted(prices),
      f"silver/products: {len(products)} rows (of {n_staged} staged) with exact DOUBLE prices")

m, gold = rows("gold", "daily_sales")
mart = wh("SELECT ds::text, orders::text, units::text, revenue::float FROM marts.daily_sales WHERE ds = %s", (DS,))
days = (wh("SELECT %s::date - '1970-01-01'::date", (DS,))[0][0])
check(len(gold) == 1 and (gold[0]["ds"], gold[0]["orders"], gold[0]["units"], gold[0]["revenue"]) ==
      (f"days:{days}", mart[0][1], mart[0][2], mart[0][3]), f"gold/daily_sales/dt={DS} equals the mart row {mart}")
m, gold = rows("gold", "product_daily_sales")
check(m["rows"] == wh("SELECT count(*) FROM marts.product_daily_sales WHERE ds = %s", (DS,))[0][0] == len(gold),
      f"gold/product_daily_sales holds the day's {len(gold)} mart rows")

# Publishing copies only what changed since the last publish: serving must still equal marts,
# table by table, row for row.
for (t,) in wh("SELECT table_name FROM information_schema.tables WHERE table_schema = 'marts' AND table_type = 'BASE TABLE'"):
    diff = wh(f"SELECT count(*) FROM ((SELECT * FROM marts.{t} EXCEPT ALL SELECT * FROM serving.{t}) UNION ALL "
              f"(SELECT * FROM serving.{t} EXCEPT ALL SELECT * FROM marts.{t})) d")[0][0]
    rows_ = wh(f"SELECT count(*) FROM serving.{t}")[0][0]
    check(diff == 0 and rows_ > 0, f"serving.{t} equals marts.{t} after incremental publishes ({rows_} rows)")

# Every day's gold partition holds what serving holds for that day, labelled with the publication
# it reflects, and nothing is left pending: later runs that moved earlier days rewrote them.
check(wh("SELECT count(*) FROM ops.gold_pending")[0][0] == 0, "no gold partition is pending after the publishes")
for mart in ("daily_sales", "product_daily_sales"):
    for (day,) in wh(f"SELECT DISTINCT ds::text FROM serving.{mart} ORDER BY 1"):
        m, got = rows("gold", mart, day)
        want = wh(f"SELECT * FROM serving.{mart} WHERE ds = %s", (day,))
        version = wh("SELECT version FROM ops.gold_partitions WHERE mart = %s AND ds = %s", (mart, day))
        check(len(got) == len(want) == m["rows"] and version and m.get("publish_version") == version[0][0],
              f"gold/{mart}/dt={day}: {len(got)} rows = serving's {len(want)}, publish_version "
              f"{m.get('publish_version')} recorded")
        if mart == "daily_sales":
            check([(g["orders"], g["units"], g["revenue"]) for g in got] ==
                  [(str(w[1]), str(w[2]), float(w[3])) for w in want], f"gold/daily_sales/dt={day} equals serving {want}")

# The same through DuckDB, as a consumer of the lake reads it: every gold file at once.
def duck(sql):
    p = subprocess.run(["node", f"{ROOT}/tests/parquet/duck.mjs", sql], capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


gold_days = duck(f"""SELECT ds::VARCHAR AS ds, orders::VARCHAR AS orders, units::VARCHAR AS units,
                            round(revenue, 2)::VARCHAR AS revenue
                     FROM read_parquet('{LAKE}/gold/daily_sales/*/*/*.parquet', union_by_name = true) ORDER BY ds""")
serving_days = wh("SELECT ds::text, orders::text, units::text, revenue::text FROM serving.daily_sales ORDER BY ds")
def cents(v):
    return Decimal(v).quantize(Decimal("0.01"))


check([(g["ds"], g["orders"], g["units"], cents(g["revenue"])) for g in gold_days] ==
      [(d, o, u, cents(r)) for d, o, u, r in serving_days],
      f"DuckDB over every gold/daily_sales file reads serving, day by day ({len(gold_days)} days)")
gold_products = duck(f"""SELECT ds::VARCHAR AS ds, count(*)::VARCHAR AS n, sum(units)::VARCHAR AS units,
                                round(sum(revenue), 2)::VARCHAR AS revenue
                         FROM read_parquet('{LAKE}/gold/*/*/*/*.parquet', union_by_name = true, filename = true)
                         WHERE filename LIKE '%/gold/product_daily_sales/%' GROUP BY ds ORDER BY ds""")
serving_products = wh("""SELECT ds::text, count(*)::text, sum(units)::text, sum(revenue)::text
                         FROM serving.product_daily_sales GROUP BY ds ORDER BY ds""")
check([(g["ds"], g["n"], g["units"], cents(g["revenue"])) for g in gold_products] ==
      [(d, n, u, cents(r)) for d, n, u, r in serving_products],
      f"DuckDB over gold/*/*/*/*.parquet (union_by_name) reads serving.product_daily_sales per day")

before = manifest("silver", "customers")["run_id"]
rc, out, err = stratactl("--json", "run", "--date", DS)
check(rc == 0 and json.loads(out)["state"] == "succeeded", "re-running the date succeeds")
after = manifest("silver", "customers")
runs = [d for d in os.listdir(os.path.join(LAKE, "silver", "customers", f"dt={DS}")) if d.startswith("run=")]
check(after["run_id"] != before and runs == [f"run={after['run_id']}"],
      f"the re-run replaced the silver partition whole (one run directory: {runs})")
_, again = rows("silver", "customers")
restaged = wh("""SELECT DISTINCT ON (customer_id) customer_id::text, name, email, segment,
                        'us:' || (extract(epoch FROM updated_at) * 1000000)::bigint
                 FROM staging.customers WHERE ds = %s ORDER BY customer_id, updated_at DESC""", (DS,))
check(sorted((r["customer_id"], r["name"], r["email"], r["segment"], r["updated_at"]) for r in again) ==
      sorted(tuple(x) for x in restaged), "and it equals the re-staged day (latest per key)")
finish()

"""One week through the real binaries: source -> ingest -> bus -> lake -> staging -> dwh/marts
-> checks, then idempotent re-runs and malformed input."""
import json

import psycopg2

from strata_e2e import (ENV, WebhookReceiver, check, checksum, dead_letters, finish, metric_value, metrics,
                        sim_advance, sim_control, src, stratactl, wait_for, wh)

DAYS = [f"2024-01-0{d}" for d in range(1, 8)]
DWH = ["dwh.dim_customer", "dwh.dim_product", "dwh.dim_state", "dwh.fact_sales", "marts.daily_sales",
       "marts.orders_current"]
ALL = DWH + ["staging.customers", "staging.products", "staging.orders", "staging.order_items",
             "staging.businesses", "staging.states"]

# --- a week of daily runs --------------------------------------------------------------------
for ds in DAYS:
    sim_advance(ds)
    rc, out, err = stratactl("--json", "run", "--date", ds)
    check(rc == 0, f"run {ds} exits 0 (stderr: {err.strip()[:200]})")
    run = json.loads(out) if out.strip() else {}
    check(run.get("state") == "succeeded", f"run {ds} succeeded: {run.get('message', '')}")

# --- facts equal the source, day by day ----------------------------------------------------
source = src("""SELECT o.ordered_at::date, count(*), sum(i.quantity * i.unit_price)
                FROM shop.order_items i JOIN shop.orders o USING (order_id) GROUP BY 1 ORDER BY 1""")
facts = wh("""SELECT d.date, count(*), sum(f.amount) FROM dwh.fact_sales f JOIN dwh.dim_date d USING (date_key)
              GROUP BY 1 ORDER BY 1""")
check(len(source) == 7, f"source has orders on 7 days (got {len(source)})")
check(source == facts, f"fact_sales rows and sum(amount) per day equal the source: {source} vs {facts}")
mart = wh("SELECT ds, revenue FROM marts.daily_sales ORDER BY ds")
check([(d, s) for d, _, s in source] == mart, "marts.daily_sales revenue per day equals the source")
src_status = src("SELECT status, count(*) FROM shop.orders GROUP BY 1 ORDER BY 1")
check(src_status == wh("SELECT status, count(*) FROM marts.orders_current GROUP BY 1 ORDER BY 1"),
      f"marts.orders_current status counts equal the source's {src_status}")

# --- SCD2 dimension ----------------------------------------------------------------------------
n_customers = src("SELECT count(*) FROM shop.customers")[0][0]
current = wh("SELECT count(*), count(DISTINCT customer_id) FROM dwh.dim_customer WHERE is_current AND customer_id >= 0")
check(current[0] == (n_customers, n_customers), f"every one of {n_customers} customers has exactly one current row")
overlaps = wh("""SELECT count(*) FROM dwh.dim_customer a JOIN dwh.dim_customer b
                 ON a.customer_id = b.customer_id AND a.customer_key < b.customer_key
                 AND a.valid_from < b.valid_to AND b.valid_from < a.valid_to""")[0][0]
check(overlaps == 0, "no two versions of a customer overlap in validity")
# Moves are type 2 (a new version); segment changes are type 1 (overwritten in every version).
versions_src = dict(src("SELECT customer_id, count(*) FROM shop.customer_history WHERE change <> 'segment' GROUP BY 1"))
versions_dwh = dict(wh("SELECT customer_id, count(*) FROM dwh.dim_customer WHERE customer_id >= 0 GROUP BY 1"))
changed = [c for c, n in versions_src.items() if n > 1]
check(len(changed) > 5, f"the simulator changed several customers ({len(changed)})")
check(versions_src == versions_dwh, "each customer has one dim_customer row per version (created + each move)")
src_segments = dict(src("SELECT customer_id, segment FROM shop.customers"))
dwh_segments = wh("SELECT customer_id, array_agg(DISTINCT segment) FROM dwh.dim_customer WHERE customer_id >= 0 GROUP BY 1")
check(src("SELECT count(*) FROM shop.customer_history WHERE change = 'segment'")[0][0] > 0 and
      all(segs == [src_segments[c]] for c, segs in dwh_segments),
      "segment (type 1) holds the source's latest value in every version of every customer")
moved = src("""SELECT h.customer_id FROM shop.customer_history h WHERE change = 'address' LIMIT 1""")[0][0]
addresses = wh("SELECT count(DISTINCT address) FROM dwh.dim_customer WHERE customer_id = %s", (moved,))[0][0]
check(addresses >= 2, f"customer {moved} who moved has its old and new address in history ({addresses})")
latest = src("SELECT address FROM shop.customers WHERE customer_id = %s", (moved,))[0][0]
check(wh("SELECT address FROM dwh.dim_customer WHERE customer_id = %s AND is_current", (moved,))[0][0] == latest,
      "the current version carries the source's latest address")
bad_keys = wh("""SELECT count(*) FROM dwh.fact_sales f JOIN dwh.dim_customer c USING (customer_key)
                 WHERE NOT (f.ordered_at >= c.valid_from AND f.ordered_at < c.valid_to)""")[0][0]
check(bad_keys == 0, "every fact points at the customer version valid at order time")
check(wh("SELECT count(*) FROM dwh.fact_sales WHERE customer_key = 0 OR product_key = 0")[0][0] == 0,
      "no fact fell back to an unknown member")
check(wh("SELECT count(*) FROM dwh.dim_state")[0][0] == 51, "dim_state has 51 states from the HTML table")
# The simulator deletes product 20 from its catalogue on the fourth day; the products dataset is
# a full snapshot, so its absence from the snapshot of 2024-01-04 closes the product that day.
check(src("SELECT count(*) FROM shop.products WHERE product_id = 20")[0][0] == 0, "the source deleted product 20")
gone = wh("""SELECT valid_to::text, is_current, is_deleted FROM dwh.dim_product WHERE product_id = 20
             ORDER BY valid_from""")
check(gone == [("2024-01-05 00:00:00+00", False, True)],
      f"dim_product closes product 20 at the end of the day its snapshot lacked it and marks it deleted ({gone})")
check(wh("SELECT count(*) FROM dwh.dim_product WHERE is_current AND product_id > 0")[0][0] == 19,
      "19 products are current")

# --- lineage and reconciliation ----------------------------------------------------------------
lineage = wh("SELECT count(*) FROM staging.orders s JOIN ops.runs r USING (run_id) WHERE r.ds = s.ds")[0][0]
check(lineage == wh("SELECT count(*) FROM staging.orders")[0][0], "every staging row carries its run's ds and run_id")
recon = wh("""SELECT count(*) FILTER (WHERE status = 'pass'), count(*) FROM quality.check_results
              WHERE kind = 'reconciliation'""")[0]
check(recon[0] == recon[1] == 7 * 7, f"source=lake=staging for 6 datasets, and staging=facts, x 7 days ({recon})")

# --- re-running a day replaces it: the warehouse ends byte-for-byte the same --------------------
# --- every date rebuilt in any order gives the same warehouse ----------------------------------------
# (Here, before any past day is re-extracted, staging still holds every version the source had.)
# Natural content: surrogate keys replaced by the natural keys and versions they stand for.
NATURAL = """
SELECT 'c' || to_jsonb(t)::text FROM (SELECT customer_id, name, email, address, city, state, segment, valid_from,
  valid_to, is_current, version FROM dwh.dim_customer) t
UNION ALL SELECT 'p' || to_jsonb(t)::text FROM (SELECT product_id, name, category, price, valid_from, valid_to, is_deleted, attributes_as_of
  FROM dwh.dim_product) t
UNION ALL SELECT 'f' || to_jsonb(t)::text FROM (SELECT f.order_id, f.line_no, f.date_key, c.customer_id, c.valid_from,
  p.product_id, f.quantity, f.unit_price, f.amount FROM dwh.fact_sales f JOIN dwh.dim_customer c USING (customer_key)
  JOIN dwh.dim_product p USING (product_key)) t
UNION ALL SELECT 's' || to_jsonb(t)::text FROM (SELECT abbreviation, name, population FROM dwh.dim_state) t
UNION ALL SELECT 'b' || to_jsonb(t)::text FROM dwh.fact_business_daily t
UNION ALL SELECT 'r' || to_jsonb(t)::text FROM (SELECT review_id, business_id, stars, title, updated_at FROM dwh.fact_review) t
UNION ALL SELECT 'm' || to_jsonb(t)::text FROM marts.daily_sales t
UNION ALL SELECT 'q' || to_jsonb(t)::text FROM marts.product_daily_sales t
UNION ALL SELECT 'o' || to_jsonb(t)::text FROM marts.orders_current t"""


def natural():
    return wh(f"SELECT md5(string_agg(x, ',' ORDER BY x)) FROM ({NATURAL}) s(x)")[0][0]


in_order = natural()
admin = psycopg2.connect(ENV["STRATA_PG_DSN"])
admin.autocommit = True
with admin.cursor() as cur:
    cur.execute("TRUNCATE dwh.fact_sales, dwh.fact_business_daily, dwh.fact_review, dwh.dim_state, marts.daily_sales, "
                "marts.product_daily_sales, marts.business_review_changes, marts.rating_by_price_level, "
                "marts.business_stars, marts.orders_current")
    cur.execute("DELETE FROM dwh.dim_customer WHERE customer_key <> 0")
    cur.execute("DELETE FROM dwh.dim_product WHERE product_key <> 0")
scrambled = ["2024-01-07", "2024-01-03", "2024-01-01", "2024-01-05", "2024-01-02", "2024-01-06", "2024-01-04"]
for ds in scrambled:
    run_id = wh("SELECT run_id FROM ops.runs WHERE ds = %s AND state = 'succeeded' ORDER BY created_at DESC LIMIT 1",
                (ds,))[0][0]
    rc, out, err = stratactl("clear", "--run", run_id, "--task", "model", "--wait")
    check(rc == 0, f"rebuilding the models of {ds} succeeds ({err.strip()[:120]})")
check(natural() == in_order, f"dims, facts and marts rebuilt from empty in the order {scrambled} equal the in-order build "
      "(early-arriving facts re-keyed once their customer arrives)")
check(wh("SELECT count(*) FROM dwh.fact_sales WHERE customer_key = 0 OR product_key = 0")[0][0] == 0,
      "no fact is left on an unknown member")

before_all = checksum(ALL)
rc, _, _ = stratactl("run", "--date", DAYS[-1])
check(rc == 0, "re-run of the last day succeeds")
check(checksum(ALL) == before_all, "re-running the last day leaves every warehouse table unchanged")
before_dwh = checksum(DWH)
rc, _, _ = stratactl("run", "--date", DAYS[2])
check(rc == 0, "re-run of an earlier day succeeds")
check(checksum(DWH) == before_dwh, "re-running an earlier day leaves dwh and marts unchanged")
rc, _, _ = stratactl("backfill", "--from", DAYS[0], "--to", DAYS[1], "--reprocess", "all")
check(rc == 0, "backfill of two days succeeds")
check(checksum(DWH) == before_dwh, "a backfill of past days leaves dwh and marts unchanged")
# Staging of a re-extracted past day legitimately shrinks (rows changed since then now belong to
# later days), so the clean reference for what follows is taken here.
before_all = checksum(ALL)

# --- malformed records: dead-lettered, counted, a failed check, an alert; good rows arrive ------
hook = WebhookReceiver(int(ENV["STRATA_WEBHOOK_PORT"]))
received = hook.received
dl_before = metric_value(metrics("ingest"), "strata_ingest_dead_letters_total", {"dataset": "businesses"})
sim_control(7)  # every 7th of 35 business records is broken: wrong type, missing key, bad JSON
rc, out, _ = stratactl("--json", "run", "--date", DAYS[-1])
sim_control(0)
run = json.loads(out)
check(rc == 1, f"a run with malformed records exits 1 (got {rc})")
check(run["message"] == "checks failed: dead_letters:businesses", f"the run names the failed check: {run['message']}")
tasks = {t["task"]: t for t in run["tasks"]}
check(tasks["extract.businesses"]["rows"] == 30 and tasks["extract.businesses"]["rejected"] == 5,
      f"30 good business records extracted, 5 rejected ({tasks['extract.businesses']})")
check(dead_letters(run["run_id"]) == 5, "5 entries on strata:deadletter for the run")
check(wh("SELECT count(*) FROM staging.businesses WHERE ds = %s", (DAYS[-1],))[0][0] == 30,
      "every good business record arrived in staging")
dl_after = metric_value(metrics("ingest"), "strata_ingest_dead_letters_total", {"dataset": "businesses"})
check(dl_after - dl_before == 5, f"strata_ingest_dead_letters_total grew by 5 ({dl_before} -> {dl_after})")
failed = wh("""SELECT check_name, observed FROM quality.check_results WHERE run_id = %s AND status = 'fail'""",
            (run["run_id"],))
check(failed == [("dead_letters:businesses", "5")], f"quality.check_results has the failed check: {failed}")
failing_alerts = [a["check"] for a in received if a["event"] == "check_failing" and a["severity"] == "error"]
check(failing_alerts == ["dead_letters:businesses"], f"the webhook received one alert naming the check ({received})")
check(received and received[0]["sample"] == [] and "text" in received[0], "the alert is Slack-compatible")
run_alerts = lambda: [a for a in received if a["event"] == "run_failed" and a["ds"] == DAYS[-1]]  # noqa: E731
check(wait_for(lambda: len(run_alerts()) == 1, 30, "the run_failed alert") and
      run["run_id"] in run_alerts()[0]["message"] and "dead_letters:businesses" in run_alerts()[0]["message"],
      f"the failed run is alerted too, once, naming the run and why ({run_alerts()})")
reasons = __import__("strata_e2e").run("redis-cli", "-p", ENV["STRATA_REDIS_PORT"], "xrange", "strata:deadletter", "-", "+")[1]
for reason in ["column 'rating' expected float, got \"n/a\"", "missing key 'id'", "bad JSON"]:
    check(reason in reasons, f"a dead letter says: {reason}")
hook.close()

rc, _, _ = stratactl("run", "--date", DAYS[-1])
check(rc == 0, "after the source is fixed the re-run succeeds")
check(checksum(ALL) == before_all, "and the warehouse is back to exactly the clean state")

# --- write-audit-publish: a failed audit keeps yesterday's marts serving ---------------------------
D8 = "2024-01-08"


def served_days():
    rc, out, err = stratactl("--json", "query", "daily_sales", "from=2024-01-01", "to=2024-01-31")
    assert rc == 0, err
    return json.loads(out)


sim_advance(D8)
before_days = served_days()
check([d["ds"] for d in before_days] == DAYS, "the query service serves the 7 published days")
sim_control(7)
rc, out, _ = stratactl("--json", "run", "--date", D8)
sim_control(0)
run = json.loads(out)
tasks = {t["task"]: t for t in run["tasks"]}
check(rc == 1 and tasks["publish"]["state"] == "skipped", f"a failed audit skips publish ({tasks['publish']['state']})")
check(wh("SELECT count(*) FROM marts.daily_sales WHERE ds = %s", (D8,))[0][0] == 1, "the new day was built in marts")
check(wh("SELECT count(*) FROM serving.daily_sales WHERE ds = %s", (D8,))[0][0] == 0, "but not published to serving")
check(served_days() == before_days, "the query service still answers with the previous publication")
rc, _, _ = stratactl("run", "--date", D8)
check(rc == 0, "the clean re-run of the new day succeeds")
after_days = served_days()
check([d["ds"] for d in after_days] == DAYS + [D8], "publishing made the new day visible at once (cache invalidated)")
revenue = float(wh("SELECT revenue FROM marts.daily_sales WHERE ds = %s", (D8,))[0][0])
check(abs(after_days[-1]["revenue"] - revenue) < 0.005, "and its revenue equals the mart's")
check(wh("SELECT count(*) FROM serving.publications")[0][0] >= 8, "every successful run recorded a publication")

finish()

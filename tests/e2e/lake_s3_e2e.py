"""The lake on an S3-compatible object store (s3rver, its own stack started with --lake s3):
a day through every service with bronze, silver and gold as objects, manifests committed last
and matching what was loaded, a re-run replacing partitions whole, and an outage of the store
that delays the pipeline but loses and doubles nothing."""
import json
import os
import signal
import subprocess
import tempfile
import time
import zlib

import botocore.config
import botocore.session
import psycopg2

from strata_e2e import ENV, check, finish, metric, metrics, sim_advance, src, stratactl, wh

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUCKET = "strata-lake"
s3 = botocore.session.get_session().create_client(
    "s3", endpoint_url=ENV["STRATA_S3_ENDPOINT"], region_name="us-east-1", aws_access_key_id="S3RVER",
    aws_secret_access_key="S3RVER", config=botocore.config.Config(s3={"addressing_style": "path"}))


def keys(prefix):
    out = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
        out.extend(o["Key"] for o in page.get("Contents", []))
    return out


def get(key):
    return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()


def manifest(layer, name, ds):
    return json.loads(get(f"lake/{layer}/{name}/dt={ds}/_manifest.json"))


def run_day(ds):
    rc, out, err = stratactl("--json", "run", "--date", ds)
    state = json.loads(out).get("state") if out.strip() else None
    return rc, state, err


check(ENV["STRATA_LAKE_ROOT"] == "s3://strata-lake/lake", f"this stack's lake is in S3 ({ENV['STRATA_LAKE_ROOT']})")

DS = "2024-01-01"
sim_advance(DS)
rc, state, err = run_day(DS)
check(rc == 0 and state == "succeeded", f"a day runs end to end on the S3 lake ({err.strip()[:200]})")

# --- bronze: each dataset's partition is committed in S3 and is exactly what was loaded --------------
loads = wh("SELECT dataset, run_id, loaded_rows FROM ops.loads WHERE ds = %s ORDER BY 1", (DS,))
check(len(loads) >= 6, f"every dataset was loaded from the S3 lake ({[l[0] for l in loads]})")
for dataset, run_id, loaded in loads:
    m = manifest("bronze", dataset, DS)
    staged = wh(f"SELECT count(*) FROM staging.{dataset} WHERE ds = %s", (DS,))[0][0]
    files_ok = all(len(get(f"lake/bronze/{dataset}/dt={DS}/{f['path']}")) == f["bytes"] and
                   zlib.crc32(get(f"lake/bronze/{dataset}/dt={DS}/{f['path']}")) == f["crc32"] for f in m["files"])
    check(m["run_id"] == run_id and m["rows"] == loaded == staged and files_ok,
          f"bronze/{dataset}: manifest {m['rows']} rows = loaded {loaded} = staged {staged}; "
          f"{len(m['files'])} part object(s) with the manifest's sizes and CRCs")
check(not os.path.exists(os.path.join(ENV["STRATA_STACK_DIR"], "lake", "bronze")), "nothing was written to local disk")
n_orders = src("SELECT count(*) FROM shop.orders WHERE (ordered_at AT TIME ZONE 'UTC')::date = %s", (DS,))[0][0]
check(wh("SELECT count(*) FROM dwh.fact_sales f JOIN dwh.dim_date d USING (date_key) WHERE d.date = %s", (DS,))[0][0] ==
      src("SELECT count(*) FROM shop.order_items i JOIN shop.orders o USING (order_id) WHERE (o.ordered_at AT TIME ZONE 'UTC')::date = %s",
          (DS,))[0][0] and n_orders > 0, f"the day's facts equal the source's lines ({n_orders} orders)")
recon = wh("""SELECT count(*) FILTER (WHERE status = 'pass'), count(*) FROM quality.check_results
              WHERE kind = 'reconciliation' AND ds = %s AND check_name NOT LIKE 'reconciliation_to_facts%%'""", (DS,))[0]
check(recon[0] == recon[1] > 0, f"quality read the lake's manifests from S3: source = lake = staging ({recon})")

# --- silver and gold: Parquet objects an independent reader opens ------------------------------------
m = manifest("silver", "customers", DS)
with tempfile.NamedTemporaryFile(suffix=".parquet") as f:
    f.write(get(f"lake/silver/customers/dt={DS}/{m['files'][0]['path']}"))
    f.flush()
    dump = subprocess.run(["node", f"{ROOT}/tests/parquet/dump.mjs", f.name], capture_output=True, text=True, check=True)
silver = json.loads(dump.stdout)
staged = wh("SELECT count(DISTINCT customer_id) FROM staging.customers WHERE ds = %s", (DS,))[0][0]
check(m["format"] == "parquet" and len(silver) == m["rows"] == staged,
      f"silver/customers is a Parquet object hyparquet reads: {len(silver)} rows, one per staged customer")
gold = manifest("gold", "daily_sales", DS)
check(gold["rows"] == 1, "gold/daily_sales holds the published day")

# --- a re-run replaces every partition whole -------------------------------------------------------
before = manifest("bronze", "orders", DS)["run_id"]
rc, state, err = run_day(DS)
after = manifest("bronze", "orders", DS)["run_id"]
runs = {k.split("/")[4] for k in keys(f"lake/bronze/orders/dt={DS}/") if "/run=" in k}
check(rc == 0 and state == "succeeded" and after != before and runs == {f"run={after}"},
      f"re-running the day commits a new run and removes the old objects ({sorted(runs)})")
silver_runs = {k.split("/")[4] for k in keys(f"lake/silver/customers/dt={DS}/") if "/run=" in k}
check(len(silver_runs) == 1, f"one silver run remains ({sorted(silver_runs)})")

# --- the store goes away mid-run and comes back: nothing lost, nothing doubled ----------------------
DS2 = "2024-01-02"
sim_advance(DS2)
pidfile = os.path.join(ENV["STRATA_STACK_DIR"], "run", "s3rver.pid")
os.kill(int(open(pidfile).read()), signal.SIGSTOP)  # requests hang, then time out and are retried
started = time.time()
proc = subprocess.Popen([os.path.join(ENV["STRATA_BIN"], "stratactl"), "--json", "run", "--date", DS2],
                        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
log_path = os.path.join(ENV["STRATA_STACK_DIR"], "logs", "lake_export.log")
deadline = time.time() + 60
while time.time() < deadline and "s3://strata-lake/lake/bronze/" not in open(log_path).read():
    time.sleep(0.5)
check("s3://strata-lake/lake/bronze/" in open(log_path).read(),
      f"lake-export logs the stalled S3 request naming the object ({time.time() - started:.0f} s after the run began)")
# Long enough for every retry to be spent: the batch stays pending on the bus, to be written later.
deadline = time.time() + 90
while time.time() < deadline and "after 4 attempt(s)" not in open(log_path).read():
    time.sleep(0.5)
check("after 4 attempt(s)" in open(log_path).read(),
      f"lake-export gives up on the request after its 4 attempts ({time.time() - started:.0f} s) and keeps the batch")
check(proc.poll() is None, "the run waits while the store is unreachable")
errors = metric(metrics("lake_export"), "strata_lake_export_batches_total", {"outcome": "error"})
check(errors >= 1, f"strata_lake_export_batches_total{{outcome=\"error\"}} counts the failed writes ({errors})")
os.kill(int(open(pidfile).read()), signal.SIGCONT)
out, err = proc.communicate(timeout=600)
state = json.loads(out).get("state") if out.strip() else None
check(proc.returncode == 0 and state == "succeeded",
      f"after the store returns the run succeeds ({time.time() - started:.0f} s; {err.strip()[:200]})")
for table, sql in [("orders", "SELECT count(*) FROM shop.orders WHERE (updated_at AT TIME ZONE 'UTC')::date = %s"),
                   ("order_items", "SELECT count(*) FROM shop.order_items WHERE (updated_at AT TIME ZONE 'UTC')::date = %s")]:
    want = src(sql, (DS2,))[0][0]
    got = wh(f"SELECT count(*), count(DISTINCT ({'order_id' if table == 'orders' else 'order_id, line_no'})) "
             f"FROM staging.{table} WHERE ds = %s", (DS2,))[0]
    lake = manifest("bronze", table, DS2)["rows"]
    check(got[0] == got[1] == lake == want, f"{table} of {DS2}: source {want} = lake {lake} = staged {got[0]}, no duplicates")

# --- gold follows serving on S3: a later day that changes an earlier day's marts rewrites its gold -----
def gold_rows(mart, ds):
    m = manifest("gold", mart, ds)
    rows = []
    for f in m["files"]:
        with tempfile.NamedTemporaryFile(suffix=".parquet") as tmp:
            tmp.write(get(f"lake/gold/{mart}/dt={ds}/{f['path']}"))
            tmp.flush()
            out = subprocess.run(["node", f"{ROOT}/tests/parquet/dump.mjs", tmp.name], capture_output=True, text=True,
                                 check=True)
            rows.extend(json.loads(out.stdout))
    return m, rows


DS3 = "2024-01-03"
conn = psycopg2.connect(ENV["STRATA_SOURCE_DSN"])
conn.autocommit = True
with conn.cursor() as cur:  # a line of an order placed on DS changes on DS3, the way an application changes it
    cur.execute("""UPDATE shop.order_items SET quantity = quantity + 7, updated_at = %s
                   WHERE (order_id, line_no) = (SELECT i.order_id, i.line_no FROM shop.order_items i JOIN shop.orders o
                                                USING (order_id) WHERE (o.ordered_at AT TIME ZONE 'UTC')::date = %s
                                                ORDER BY 1, 2 LIMIT 1)""", (DS3 + " 00:30:00+00", DS))
conn.close()
before_gold = manifest("gold", "daily_sales", DS)
sim_advance(DS3)
rc, state, err = run_day(DS3)
check(rc == 0 and state == "succeeded", f"the run of {DS3} succeeds")
m, got = gold_rows("daily_sales", DS)
want = wh("SELECT orders, units, revenue::float FROM serving.daily_sales WHERE ds = %s", (DS,))[0]
version = wh("SELECT version FROM ops.gold_partitions WHERE mart = 'daily_sales' AND ds = %s", (DS,))[0][0]
check(m["publish_version"] > before_gold["publish_version"] and m["publish_version"] == version,
      f"gold/daily_sales/dt={DS} on S3 was rewritten by the run of {DS3} (publish_version "
      f"{before_gold['publish_version']} -> {m['publish_version']})")
check(len(got) == 1 and (int(got[0]["orders"]), int(got[0]["units"]), got[0]["revenue"]) == (want[0], want[1], want[2]),
      f"and it equals serving for {DS}: {want}")
src_units = src("""SELECT sum(i.quantity) FROM shop.order_items i JOIN shop.orders o USING (order_id)
                   WHERE (o.ordered_at AT TIME ZONE 'UTC')::date = %s""", (DS,))[0][0]
check(want[1] == src_units, f"which holds the source's units for {DS} after the change ({src_units})")
check(wh("SELECT count(*) FROM ops.gold_pending")[0][0] == 0, "nothing is left pending")
finish()

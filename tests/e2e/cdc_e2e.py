"""Change data capture end to end, against the stack's real PostgreSQL source: inserts, updates and
deletes reach raw.orders_changes and marts.orders_current within seconds; kill -9 of ingest and of
the warehouse-loader under a steady write load loses and doubles nothing; unchanged TOAST values
keep their value; the batch path agrees; a dropped slot and a table without a replica identity are
refused loudly. Test orders live on 2030-01-01 so the other tests' days are untouched."""
import atexit
import json
import os
import random
import signal
import statistics
import subprocess
import tempfile
import threading
import time

import psycopg2

from strata_e2e import (BIN, ENV, check, finish, free_port, gauge, pid_of, set_pid, src, start, stratactl, wait_for,
                        wh)

ING = ENV["STRATA_INGEST_METRICS"]
DIR = ENV["STRATA_STACK_DIR"]
BASE = 9_000_000  # test order ids


def src_conn():
    c = psycopg2.connect(ENV["STRATA_SOURCE_DSN"])
    c.autocommit = True
    return c


SRC = src_conn()


def src_exec(sql, params=None):
    with SRC.cursor() as cur:
        cur.execute(sql, params)


def mart(ids_from=BASE):
    return wh("SELECT order_id, status, amount, updated_at FROM marts.orders_current WHERE order_id >= %s ORDER BY 1",
              (ids_from,))


def source(ids_from=BASE):
    return src("""SELECT o.order_id, o.status,
                         (SELECT sum(quantity * unit_price) FROM shop.order_items i WHERE i.order_id = o.order_id)::numeric(14,2),
                         o.updated_at
                  FROM shop.orders o WHERE o.order_id >= %s ORDER BY 1""", (ids_from,))


def converged():
    return mart() == source()


check(wait_for(lambda: gauge(ING, "strata_ingest_cdc_up") == 1, 30, "cdc up"), "ingest streams from the replication slot")

# --- inserts, updates, deletes ----------------------------------------------------------------
src_exec("""INSERT INTO shop.orders (order_id, customer_id, status, ordered_at, updated_at)
            SELECT %s + g, 1, 'open', '2030-01-01 10:00+00', '2030-01-01 10:00+00' FROM generate_series(1, 50) g""",
         (BASE,))
src_exec("""INSERT INTO shop.order_items (order_id, line_no, product_id, quantity, unit_price, updated_at)
            SELECT %s + g, l, 1 + (g + l) %% 5, l, 10.50, '2030-01-01 10:00+00'
            FROM generate_series(1, 50) g, generate_series(1, 2) l""", (BASE,))
check(wait_for(converged, 10, "inserts applied"), "50 inserted orders with 100 lines reach marts.orders_current")
check(wh("SELECT count(*) FROM raw.orders_changes WHERE order_id > %s AND op = 'c'", (BASE,))[0][0] == 50,
      "raw.orders_changes holds 50 inserts")

latencies = []
for i in range(30):
    oid = BASE + 1 + i
    t0 = time.time()
    src_exec("UPDATE shop.orders SET status = 'shipped', updated_at = '2030-01-01 11:00+00'::timestamptz + %s * interval '1 second' "
             "WHERE order_id = %s", (i, oid))
    wait_for(lambda: wh("SELECT status FROM marts.orders_current WHERE order_id = %s", (oid,)) == [("shipped",)], 10,
             f"order {oid} shipped")
    latencies.append(time.time() - t0)
latencies.sort()
print(f"commit -> marts.orders_current: p50 {statistics.median(latencies) * 1000:.0f} ms, "
      f"max {latencies[-1] * 1000:.0f} ms over {len(latencies)} updates", flush=True)
check(latencies[-1] < 3.0, f"every update is visible in marts.orders_current within 3 s (max {latencies[-1]:.2f} s)")

src_exec("DELETE FROM shop.order_items WHERE order_id = %s", (BASE + 50,))
src_exec("DELETE FROM shop.orders WHERE order_id = %s", (BASE + 50,))
check(wait_for(converged, 10, "delete applied"), "a deleted order leaves marts.orders_current")
check(wh("SELECT op, count(*) FROM raw.orders_changes WHERE order_id = %s GROUP BY 1 ORDER BY 1", (BASE + 50,)) ==
      [("c", 1), ("d", 1)], "raw.orders_changes keeps the insert and the delete of that order")
check(wh("SELECT _deleted FROM raw.orders_current WHERE order_id = %s", (BASE + 50,)) == [(True,)],
      "raw.orders_current keeps a tombstone for it")
rows = wh("SELECT lsn::text, commit_time FROM raw.orders_changes WHERE order_id = %s AND op = 'd'", (BASE + 50,))
check(len(rows) == 1 and rows[0][0] and rows[0][1] is not None, f"a change carries its LSN and commit time: {rows}")

# --- unchanged TOAST values -------------------------------------------------------------------
src_exec("UPDATE shop.orders SET note = (SELECT string_agg(md5(g::text), '') FROM generate_series(1, 1000) g), "
         "updated_at = '2030-01-01 12:00+00' WHERE order_id = %s", (BASE + 1,))
src_exec("UPDATE shop.orders SET status = 'delivered', updated_at = '2030-01-01 13:00+00' WHERE order_id = %s", (BASE + 1,))
check(wait_for(converged, 10, "toast updates"), "updates of a row with a TOASTed note are applied")
last = wh("""SELECT length(note), unchanged FROM raw.orders_changes WHERE order_id = %s ORDER BY lsn DESC, seq DESC
             LIMIT 1""", (BASE + 1,))
check(last == [(32000, ["note"])], f"the status-only update keeps the 32000-char note it did not resend: {last}")
check(wh("SELECT length(note) FROM raw.orders_current WHERE order_id = %s", (BASE + 1,)) == [(32000,)],
      "raw.orders_current keeps the note")

# --- kill -9 of ingest and of the loader under a steady write load -------------------------------
updates = {}
stop = threading.Event()


inserted, deleted = [], []


def load():
    c = src_conn()
    rng = random.Random(7)
    n = 0
    while not stop.is_set() and n < 2000:
        oid = BASE + rng.randint(1, 49)
        with c.cursor() as cur:
            cur.execute("UPDATE shop.orders SET updated_at = updated_at + interval '1 second', "
                        "status = (ARRAY['open','shipped','delivered'])[1 + %s %% 3] WHERE order_id = %s", (n, oid))
            if n % 20 == 0:  # an insert every 20 updates, and a delete of an earlier insert every 40
                new = BASE + 1000 + n
                cur.execute("INSERT INTO shop.orders (order_id, customer_id, status, ordered_at, updated_at) "
                            "VALUES (%s, 1, 'open', '2030-01-01 15:00+00', '2030-01-01 15:00+00')", (new,))
                inserted.append(new)
                if n % 40 == 0 and len(inserted) > 1:
                    cur.execute("DELETE FROM shop.orders WHERE order_id = %s", (inserted[-2],))
                    deleted.append(inserted[-2])
        updates[oid] = updates.get(oid, 0) + 1
        n += 1
        time.sleep(0.002)


before = dict(wh("SELECT order_id, count(*) FROM raw.orders_changes WHERE order_id > %s AND op = 'u' GROUP BY 1", (BASE,)))
t = threading.Thread(target=load)
t.start()
time.sleep(1.0)
os.kill(pid_of("ingest"), signal.SIGKILL)
time.sleep(1.0)
set_pid("ingest", start("ingest"))
time.sleep(1.5)
os.kill(pid_of("warehouse_loader"), signal.SIGKILL)
time.sleep(1.0)
set_pid("warehouse_loader", start("warehouse_loader"))
t.join()
total = sum(updates.values())
check(total == 2000, f"the load generator committed {total} updates")
check(wait_for(converged, 40, "convergence after kills"), "after kill -9 of ingest and loader, marts.orders_current equals the source")
after = dict(wh("SELECT order_id, count(*) FROM raw.orders_changes WHERE order_id > %s AND op = 'u' GROUP BY 1", (BASE,)))
diff = {oid: after.get(oid, 0) - before.get(oid, 0) for oid in updates}
check(diff == updates, "raw.orders_changes has every update exactly once (no loss, no duplicates) across the kills"
      + ("" if diff == updates else f": {[(o, diff[o], updates[o]) for o in updates if diff[o] != updates[o]][:5]}"))
ops = wh("SELECT op, count(*) FROM raw.orders_changes WHERE order_id >= %s GROUP BY 1 ORDER BY 1", (BASE + 1000,))
check(ops == [("c", len(inserted)), ("d", len(deleted))],
      f"{len(inserted)} inserts and {len(deleted)} deletes made during the kills are each recorded once: {ops}")
check(wait_for(lambda: gauge(ING, "strata_ingest_cdc_replication_lag_seconds") == 0, 10, "lag 0"),
      "replication lag is 0 once caught up")
check(gauge(ING, "strata_ingest_cdc_slot_lag_bytes") >= 0, "slot lag in bytes is exposed")
state = wh("SELECT applied_lsn <= acked_lsn OR applied_lsn > acked_lsn, snapshot_done FROM ops.cdc_state")
check(state == [(True, True)], f"ops.cdc_state tracks the slot: {state}")

# --- one ingest holds the slot; a second waits and takes over when the first dies ---------------------
standby_metrics = f"127.0.0.1:{free_port()}"
standby = start("ingest", {"STRATA_INGEST_GRPC": f"127.0.0.1:{free_port()}", "STRATA_INGEST_METRICS": standby_metrics},
                log_name="ingest_standby.log")
atexit.register(lambda: subprocess.run(["kill", "-9", str(standby)], capture_output=True))
time.sleep(3)
check(gauge(standby_metrics, "strata_ingest_cdc_up") == 0 and
      "is in use by backend pid" in open(os.path.join(DIR, "logs", "ingest_standby.log")).read(),
      "a second ingest waits while the slot is in use")
os.kill(pid_of("ingest"), signal.SIGKILL)
t0 = time.time()
check(wait_for(lambda: gauge(standby_metrics, "strata_ingest_cdc_up") == 1, 15, "standby takes over"),
      f"the second ingest streams {time.time() - t0:.1f} s after the first died")
src_exec("UPDATE shop.orders SET status = 'open', updated_at = '2030-01-01 16:00+00' WHERE order_id = %s", (BASE + 3,))
check(wait_for(converged, 10, "standby applies"), "changes flow through the standby")
os.kill(standby, signal.SIGTERM)
wait_for(lambda: src("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'strata_demo' AND active")[0][0] == 0,
         10, "standby released the slot")
set_pid("ingest", start("ingest"))
check(wait_for(lambda: gauge(ING, "strata_ingest_cdc_up") == 1, 15, "stack ingest back"), "the stack's ingest streams again")

# --- the batch path agrees --------------------------------------------------------------------
cdc_view = mart()
rc, out, err = stratactl("--json", "run", "--date", "2030-01-01")
run = json.loads(out) if out.strip() else {}
check(rc == 0 and run.get("state") == "succeeded", f"the batch run of 2030-01-01 succeeds ({err.strip()[:200]})")
check(mart() == cdc_view == source(), "after the batch path rebuilt the day, marts.orders_current still equals the CDC view and the source")
staged = wh("""SELECT DISTINCT ON (order_id) order_id, status, updated_at FROM staging.orders
               WHERE order_id > %s ORDER BY order_id, updated_at DESC""", (BASE,))
check(staged == [(o, s, u) for o, s, _, u in cdc_view],
      "the batch extraction's latest version of every test order equals the CDC current view")

# --- a dropped slot fails loudly ----------------------------------------------------------------
os.kill(pid_of("ingest"), signal.SIGKILL)
check(wait_for(lambda: src("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'strata_demo' AND active")[0][0] == 0,
               10, "slot inactive"), "the slot is released when ingest dies")
src_exec("SELECT pg_drop_replication_slot('strata_demo')")
set_pid("ingest", start("ingest"))
log = os.path.join(DIR, "logs", "ingest.log")


def log_has(text):
    with open(log) as f:
        return text in f.read()


check(wait_for(lambda: log_has("replication slot 'strata_demo' is missing, but strata has applied changes"), 20,
               "missing slot error"), "a missing slot is reported with what was applied and how to start over")
check(gauge(ING, "strata_ingest_cdc_up") == 0 and gauge(ING, "strata_ingest_cdc_errors_total", {"kind": "fatal"}) >= 1,
      "cdc_up is 0 and a fatal error is counted")
check(src("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'strata_demo'")[0][0] == 0,
      "no slot is silently recreated")
# A slot recreated behind strata's back (it confirms WAL strata never saw) is refused too.
os.kill(pid_of("ingest"), signal.SIGKILL)
src_exec("UPDATE shop.customers SET updated_at = updated_at WHERE customer_id = 1")  # WAL strata never sees
src_exec("SELECT pg_create_logical_replication_slot('strata_demo', 'pgoutput')")
set_pid("ingest", start("ingest"))
check(wait_for(lambda: log_has("replication slot 'strata_demo' confirms "), 20, "recreated slot error") and
      log_has("past what strata acknowledged"), "a recreated slot is reported instead of silently skipping changes")
check(gauge(ING, "strata_ingest_cdc_up") == 0, "and capture stays down")
# The documented way back: forget the state, a fresh slot snapshots the tables again.
os.kill(pid_of("ingest"), signal.SIGKILL)
wait_for(lambda: src("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'strata_demo' AND active")[0][0] == 0,
         10, "slot released")
src_exec("SELECT pg_drop_replication_slot('strata_demo')")
wh_conn = psycopg2.connect(ENV["STRATA_PG_DSN"])
wh_conn.autocommit = True
wh_conn.cursor().execute("DELETE FROM ops.cdc_state WHERE slot = 'strata_demo'")
src_exec("UPDATE shop.orders SET status = 'cancelled', updated_at = '2030-01-02 00:00+00' WHERE order_id = %s", (BASE + 2,))
set_pid("ingest", start("ingest"))
check(wait_for(lambda: gauge(ING, "strata_ingest_cdc_up") == 1, 30, "cdc up again"), "after the reset, CDC streams again")
check(wait_for(converged, 20, "snapshot"), "the fresh snapshot brings the change made while capture was down")

# --- a table without a usable replica identity is refused at start --------------------------------
src_exec("DROP TABLE IF EXISTS shop.no_key; CREATE TABLE shop.no_key (id int, v text)")
spec = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
spec.write("""pipeline: nokey
datasets:
  - name: no_key
    source: {type: postgres, table: shop.no_key, cursor: id}
    key: [id]
    columns: [{name: id, type: int}, {name: v, type: text}]
cdc: {slot: strata_nokey, publication: strata_nokey, datasets: [no_key]}
""")
spec.close()
pid = start("ingest", {"STRATA_PIPELINE_SPEC": spec.name, "STRATA_INGEST_GRPC": f"127.0.0.1:{free_port()}",
                       "STRATA_INGEST_METRICS": f"127.0.0.1:{free_port()}"}, log_name="ingest_nokey.log")
atexit.register(lambda: subprocess.run(["kill", "-9", str(pid)], capture_output=True))
nokey_log = os.path.join(DIR, "logs", "ingest_nokey.log")
check(wait_for(lambda: "shop.no_key (dataset 'no_key') has no usable replica identity (no primary key)" in open(nokey_log).read(),
               20, "replica identity refusal"), "a table without a primary key or replica identity is refused, by name")
check(src("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'strata_nokey'")[0][0] == 0,
      "no slot is created for it")
os.kill(pid, signal.SIGTERM)
src_exec("DROP TABLE shop.no_key")
finish()

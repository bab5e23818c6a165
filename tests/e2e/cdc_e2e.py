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

from strata_e2e import (BIN, ENV, check, finish, free_port, gauge, metrics_up, pid_of, set_pid, src, start, stratactl,
                        wait_for, wh)

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


def lsn(text):
    """A pg_lsn's text form ('16/B374D848') as a number, to compare positions in the WAL."""
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def insert_lsn(conn=None):
    if conn is None:
        return lsn(src("SELECT pg_current_wal_insert_lsn()::text")[0][0])
    with conn.cursor() as cur:
        cur.execute("SELECT pg_current_wal_insert_lsn()::text")
        return lsn(cur.fetchone()[0])


check(wait_for(lambda: gauge(ING, "strata_ingest_cdc_up") == 1, 30, "cdc up"), "ingest streams from the replication slot")

# --- inserts, updates, deletes ----------------------------------------------------------------
src_exec("""INSERT INTO shop.orders (order_id, customer_id, status, ordered_at, updated_at)
            SELECT %s + g, 1, 'open', '2030-01-01 10:00+00', '2030-01-01 10:00+00' FROM generate_series(1, 50) g""",
         (BASE,))
src_exec("""INSERT INTO shop.order_items (order_id, line_no, product_id, quantity, unit_price, updated_at)
            SELECT %s + g, l, 1 + (g + l) %% 5, l, 10.50, '2030-01-01 10:00+00'
            FROM generate_series(1, 50) g, generate_series(1, 2) l""", (BASE,))
check(wait_for(converged, 60, "inserts applied"), "50 inserted orders with 100 lines reach marts.orders_current")
check(wh("SELECT count(*) FROM raw.orders_changes WHERE order_id > %s AND op = 'c'", (BASE,))[0][0] == 50,
      "raw.orders_changes holds 50 inserts")

# How fast is for `make bench`; here each update must arrive, with a generous deadline.
latencies, missing = [], []
for i in range(30):
    oid = BASE + 1 + i
    t0 = time.time()
    src_exec("UPDATE shop.orders SET status = 'shipped', updated_at = '2030-01-01 11:00+00'::timestamptz + %s * interval '1 second' "
             "WHERE order_id = %s", (i, oid))
    if not wait_for(lambda: wh("SELECT status FROM marts.orders_current WHERE order_id = %s", (oid,)) == [("shipped",)],
                    60, f"order {oid} shipped"):
        missing.append(oid)
    latencies.append(time.time() - t0)
latencies.sort()
print(f"commit -> marts.orders_current: p50 {statistics.median(latencies) * 1000:.0f} ms, "
      f"max {latencies[-1] * 1000:.0f} ms over {len(latencies)} updates", flush=True)
check(not missing, f"each of 30 single updates reaches marts.orders_current on its own (missing: {missing})")

src_exec("DELETE FROM shop.order_items WHERE order_id = %s", (BASE + 50,))
src_exec("DELETE FROM shop.orders WHERE order_id = %s", (BASE + 50,))
check(wait_for(converged, 60, "delete applied"), "a deleted order leaves marts.orders_current")
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
check(wait_for(converged, 60, "toast updates"), "updates of a row with a TOASTed note are applied")
last = wh("""SELECT length(note), unchanged FROM raw.orders_changes WHERE order_id = %s ORDER BY lsn DESC, seq DESC
             LIMIT 1""", (BASE + 1,))
check(last == [(32000, ["note"])], f"the status-only update keeps the 32000-char note it did not resend: {last}")
check(wh("SELECT length(note) FROM raw.orders_current WHERE order_id = %s", (BASE + 1,)) == [(32000,)],
      "raw.orders_current keeps the note")

# --- kill -9 of ingest and of the loader under a steady write load -------------------------------
# The load runs at least 2000 updates and until the kills are done; the kills happen at points of
# its progress (not after fixed sleeps), so each lands mid-load however fast the machine is. Every
# update records its new updated_at and the WAL insert position after its commit: once the slot
# confirms a position at or past that, the update must already be in the warehouse.
updates = {}
stop = threading.Event()
progress = {"n": 0, "error": None}
committed = []  # (order_id, new updated_at, WAL insert LSN after the commit) of every update
inserted, deleted = [], []


def load():
    try:
        c = src_conn()
        rng = random.Random(7)
        n = 0
        while (n < 2000 or not stop.is_set()) and n < 50000:
            oid = BASE + rng.randint(1, 49)
            with c.cursor() as cur:
                cur.execute("UPDATE shop.orders SET updated_at = updated_at + interval '1 second', "
                            "status = (ARRAY['open','shipped','delivered'])[1 + %s %% 3] WHERE order_id = %s "
                            "RETURNING updated_at", (n, oid))
                new_ts = cur.fetchone()[0]
                committed.append((oid, new_ts, insert_lsn(c)))
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
            progress["n"] = n
            time.sleep(0.002)
    except Exception as e:  # noqa: BLE001 - reported by the checks below
        progress["error"] = repr(e)


violations, acked_behind, samples = [], [], {"n": 0, "confirmed_past_applied": 0}


def confirmed_within_applied():
    """Nothing is confirmed to the slot beyond what the warehouse committed: every update whose
    commit lies at or before the slot's confirmed_flush_lsn (on the source) is already in
    raw.orders_changes, and the confirmation was recorded in ops.cdc_state.acked_lsn first."""
    slot = src("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'strata_demo'")
    if not slot or slot[0][0] is None:
        return
    confirmed = lsn(slot[0][0])
    covered = [(o, ts) for o, ts, after in list(committed) if after <= confirmed]
    applied_lsn, acked_lsn = wh("SELECT applied_lsn::text, acked_lsn::text FROM ops.cdc_state WHERE slot = 'strata_demo'")[0]
    have = set(wh("SELECT order_id, updated_at FROM raw.orders_changes WHERE order_id > %s AND op = 'u'", (BASE,)))
    samples["n"] += 1
    samples["confirmed_past_applied"] += confirmed > lsn(applied_lsn)
    lost = [c for c in covered if c not in have]
    if lost:
        violations.append((slot[0][0], applied_lsn, len(lost), lost[:3]))
    if confirmed > lsn(acked_lsn):
        acked_behind.append((slot[0][0], acked_lsn))


def progressed(n, what, seconds=120):
    return wait_for(lambda: progress["n"] >= n or progress["error"] is not None, seconds, what) and progress["error"] is None


def sample_until(cond, seconds, what):
    """Waits for cond() while checking the slot invariant between polls."""
    def step():
        confirmed_within_applied()
        return cond()
    return wait_for(step, seconds, what)


before = dict(wh("SELECT order_id, count(*) FROM raw.orders_changes WHERE order_id > %s AND op = 'u' GROUP BY 1", (BASE,)))
before_ts = dict(src("SELECT order_id, updated_at FROM shop.orders WHERE order_id BETWEEN %s AND %s", (BASE + 1, BASE + 49)))
t = threading.Thread(target=load)
t.start()
marks = {}
check(progressed(300, "300 updates"), "the load is running")
os.kill(pid_of("ingest"), signal.SIGKILL)
marks["ingest killed"] = progress["n"]
check(sample_until(lambda: progress["n"] >= marks["ingest killed"] + 200, 120, "updates while ingest is down"),
      "the load keeps committing while ingest is dead")
set_pid("ingest", start("ingest"))
marks["ingest restarted"] = progress["n"]
check(sample_until(lambda: gauge(ING, "strata_ingest_cdc_up") == 1, 60, "ingest streams again"),
      "the restarted ingest streams again under the load")
marks["loader killed"] = progress["n"]
os.kill(pid_of("warehouse_loader"), signal.SIGKILL)
check(sample_until(lambda: progress["n"] >= marks["loader killed"] + 200, 120, "updates while the loader is down"),
      "the load keeps committing while the loader is dead")
set_pid("warehouse_loader", start("warehouse_loader"))
marks["loader restarted"] = progress["n"]
check(sample_until(lambda: progress["n"] >= marks["loader restarted"] + 200, 120, "updates after both restarts"),
      "the load goes on after both restarts")
stop.set()
t.join()
print(f"load progress at each step: {marks}, total {progress['n']}", flush=True)
check(progress["error"] is None and progress["n"] >= 2000, f"the load committed {progress['n']} updates ({progress['error']})")
after_ts = dict(src("SELECT order_id, updated_at FROM shop.orders WHERE order_id BETWEEN %s AND %s", (BASE + 1, BASE + 49)))
drift = {o: ((after_ts[o] - before_ts[o]).total_seconds(), n) for o, n in updates.items()
         if (after_ts[o] - before_ts[o]).total_seconds() != n}
check(not drift, f"the source holds every update the load counted (each moved updated_at by 1 s): {list(drift.items())[:5]}")
check(sample_until(converged, 120, "convergence after kills"),
      "after kill -9 of ingest and loader, marts.orders_current equals the source")
after = dict(wh("SELECT order_id, count(*) FROM raw.orders_changes WHERE order_id > %s AND op = 'u' GROUP BY 1", (BASE,)))
diff = {oid: after.get(oid, 0) - before.get(oid, 0) for oid in updates}
check(diff == updates, "raw.orders_changes has every update exactly once (no loss, no duplicates) across the kills"
      + ("" if diff == updates else f": {[(o, diff[o], updates[o]) for o in updates if diff[o] != updates[o]][:5]}"))
ops = wh("SELECT op, count(*) FROM raw.orders_changes WHERE order_id >= %s GROUP BY 1 ORDER BY 1", (BASE + 1000,))
check(ops == [("c", len(inserted)), ("d", len(deleted))],
      f"{len(inserted)} inserts and {len(deleted)} deletes made during the kills are each recorded once: {ops}")
confirmed_within_applied()
print(f"slot sampled {samples['n']} times; confirmed_flush_lsn past applied_lsn in {samples['confirmed_past_applied']} "
      "(quiet WAL after everything published was applied)", flush=True)
check(samples["n"] >= 10 and not violations,
      f"in {samples['n']} samples across the kills the slot never confirmed an update the warehouse had not committed"
      + ("" if not violations else f": {violations[:3]}"))
check(not acked_behind, f"every confirmed position was recorded in ops.cdc_state.acked_lsn first {acked_behind[:3]}")
check(wait_for(lambda: gauge(ING, "strata_ingest_cdc_replication_lag_seconds") == 0, 60, "lag 0"),
      "replication lag is 0 once caught up")
state = wh("SELECT snapshot_done FROM ops.cdc_state WHERE slot = 'strata_demo'")
check(state == [(True,)], f"ops.cdc_state records the finished snapshot: {state}")

# --- the lag gauges see a stalled loader: WAL retained and commits waiting ------------------------
# A captured change the warehouse cannot apply holds the slot before its commit; WAL written after
# it (here ~1 MB into a table outside the publication) is retained and counted.
src_exec("DROP TABLE IF EXISTS public.cdc_lag_filler; CREATE TABLE public.cdc_lag_filler (v text)")
loader = pid_of("warehouse_loader")
os.kill(loader, signal.SIGSTOP)
try:
    src_exec("UPDATE shop.orders SET status = 'shipped', updated_at = updated_at + interval '1 second' WHERE order_id = %s",
             (BASE + 2,))
    held = insert_lsn()
    src_exec("INSERT INTO public.cdc_lag_filler SELECT (SELECT string_agg(md5(random()::text || g || i), '') "
             "FROM generate_series(1, 60) i) FROM generate_series(1, 500) g")
    written = insert_lsn() - held
    check(wait_for(lambda: gauge(ING, "strata_ingest_cdc_slot_lag_bytes") >= written, 60, "slot lag"),
          f"with the loader stopped, strata_ingest_cdc_slot_lag_bytes covers the {written} bytes of WAL written "
          "after the unapplied change")
    check(wait_for(lambda: gauge(ING, "strata_ingest_cdc_replication_lag_seconds") >= 1.0, 60, "replication lag"),
          "and strata_ingest_cdc_replication_lag_seconds counts the age of the unapplied commit")
finally:
    os.kill(loader, signal.SIGCONT)
check(wait_for(converged, 120, "applied after the stall"), "once the loader runs again the stalled changes are applied")
check(wait_for(lambda: gauge(ING, "strata_ingest_cdc_replication_lag_seconds") == 0, 60, "lag 0 again"),
      "replication lag returns to 0")
check(wait_for(lambda: gauge(ING, "strata_ingest_cdc_slot_lag_bytes") < written, 60, "slot released"),
      "and the slot releases the WAL it held")
src_exec("DROP TABLE public.cdc_lag_filler")

# --- one ingest holds the slot; a second waits and takes over when the first dies ---------------------
standby_metrics = f"127.0.0.1:{free_port()}"
standby = start("ingest", {"STRATA_INGEST_GRPC": f"127.0.0.1:{free_port()}", "STRATA_INGEST_METRICS": standby_metrics},
                log_name="ingest_standby.log")
atexit.register(lambda: subprocess.run(["kill", "-9", str(standby)], capture_output=True))
check(wait_for(lambda: metrics_up(standby_metrics) and
               "is in use by backend pid" in open(os.path.join(DIR, "logs", "ingest_standby.log")).read(), 60,
               "standby refused the slot"), "a second ingest is told the slot is in use")
check(gauge(standby_metrics, "strata_ingest_cdc_up") == 0 and gauge(ING, "strata_ingest_cdc_up") == 1,
      "it waits (cdc_up 0) while the first keeps streaming (cdc_up 1)")
os.kill(pid_of("ingest"), signal.SIGKILL)
t0 = time.time()
check(wait_for(lambda: gauge(standby_metrics, "strata_ingest_cdc_up") == 1, 60, "standby takes over"),
      f"the second ingest streams {time.time() - t0:.1f} s after the first died")
src_exec("UPDATE shop.orders SET status = 'open', updated_at = '2030-01-01 16:00+00' WHERE order_id = %s", (BASE + 3,))
check(wait_for(converged, 60, "standby applies"), "changes flow through the standby")
os.kill(standby, signal.SIGTERM)
wait_for(lambda: src("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'strata_demo' AND active")[0][0] == 0,
         10, "standby released the slot")
set_pid("ingest", start("ingest"))
check(wait_for(lambda: gauge(ING, "strata_ingest_cdc_up") == 1, 60, "stack ingest back"), "the stack's ingest streams again")

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
check(wait_for(lambda: log_has("replication slot 'strata_demo' confirms "), 60, "recreated slot error") and
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
check(wait_for(converged, 60, "snapshot"), "the fresh snapshot brings the change made while capture was down")

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

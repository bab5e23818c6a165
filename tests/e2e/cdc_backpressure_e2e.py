"""CDC backpressure (docs/operations.md, "Change data capture"): while strata:cdc holds
`bus_high_water` entries, ingest stops reading the replication slot — the WAL waits in the slot
instead of Redis — and nothing is lost once the consumer is back. Issue 17, item 9.

A private stack (infra/stack.sh, local lake) with STRATA_BUS_HIGH_WATER=20 and a spec whose CDC
publishes every committed transaction as its own entry (batch_changes: 1), so a few hundred source
transactions are far more entries than the stream may hold.

  1. CDC streams; the simulator's first day is applied; the stream is empty.
  2. The warehouse-loader (strata:cdc's only consumer) is stopped.
  3. 160 source transactions: 100 inserted orders with 2 lines each, 40 status updates, 20
     deletions of an order and its lines.
  4. Paused at the mark: strata:cdc holds exactly 20 entries and never held more (sampled every
     0.1 s from the loader's stop to the end), strata_ingest_backpressure_active{stream=strata:cdc}
     is 1, the changes beyond the stream's 20 entries are still in the WAL. Across two standby
     status messages ingest sent while paused (pg_stat_replication.reply_time), the slot's
     confirmed_flush_lsn did not move and stays before the first new transaction (so the slot
     retains the WAL of every one of them); strata_ingest_cdc_replication_lag_seconds and
     strata_ingest_cdc_slot_lag_bytes keep growing (the StrataCdcLagHigh /
     StrataCdcSlotRetainsWal alerts see a stalled loader).
  5. The loader is back: every change is applied exactly — raw.orders_changes /
     raw.order_items_changes hold each insert, update and delete once, raw.*_current and
     marts.orders_current equal the source's tables row for row (SQL written here); the stream
     drains, the gauge drops to 0 and the slot confirms past the last transaction.
  6. A batch left pending by a dead consumer holds the watermark: with the loader stopped, one
     source transaction (T1) is published and read by a consumer that then disappears; a
     loader started with a long reclaim_idle_ms applies a later transaction (T2) first. Until T1
     is applied, ops.cdc_state.applied_lsn, acked_lsn and the slot's confirmed_flush_lsn stay
     before T1 (across two standby status messages); once a loader reclaims T1, both are
     applied and the slot moves past T2.

Every metric read must exist (an absent series is a failure). Environment: STRATA_BUILD_BIN
(default <repo>/build/bin). Run with /usr/bin/python3.
"""
import os
import signal
import subprocess
import threading
import time

import psycopg2

from pipeline_copy import demo_variant
from own_stack import FAILURES, check, clean_env, gone, load_pb2, pid_of, query, run_on_own_stack, metric as stack_metric, start_service, step, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.abspath(os.environ.get("STRATA_BUILD_BIN") or os.path.join(ROOT, "build", "bin"))
START = "2024-01-01"
HIGH_WATER = 20
BASE = 7_000_000  # this test's order ids
N_ORDERS, N_UPDATES, N_DELETES = 100, 40, 20
SLOT = "strata_demo"

ENV = {}


PB = load_pb2(ROOT)


def wh(sql, params=None):
    return query(ENV["STRATA_PG_DSN"], sql, params)


def src(sql, params=None):
    return query(ENV["STRATA_SOURCE_DSN"], sql, params)


def lsn(text):
    hi, lo = text.split("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def metric(name, labels):
    return stack_metric(ENV, "ingest", name, labels)


def backpressure():
    return metric("strata_ingest_backpressure_active", {"stream": "strata:cdc"})


def slot():
    """(confirmed_flush_lsn, restart_lsn, reply_time of the walsender streaming it)."""
    r = src("SELECT s.confirmed_flush_lsn::text, s.restart_lsn::text, r.reply_time FROM pg_replication_slots s "
            "LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = %s", (SLOT,))
    return (lsn(r[0][0]), lsn(r[0][1]), r[0][2]) if r and r[0][0] else (None, None, None)


def source_state():
    orders = src("SELECT order_id, customer_id, status, updated_at FROM shop.orders ORDER BY 1")
    items = src("SELECT order_id, line_no, product_id, quantity, updated_at FROM shop.order_items ORDER BY 1, 2")
    return orders, items


def warehouse_state():
    orders = wh("SELECT order_id, customer_id, status, updated_at FROM raw.orders_current WHERE NOT _deleted ORDER BY 1")
    items = wh("SELECT order_id, line_no, product_id, quantity, updated_at FROM raw.order_items_current "
               "WHERE NOT _deleted ORDER BY 1, 2")
    return orders, items


class StreamSampler(threading.Thread):
    """XLEN strata:cdc every 0.1 s: the largest length seen."""

    def __init__(self, redis_client):
        super().__init__(daemon=True)
        self.r, self.max, self.samples, self.stop = redis_client, 0, 0, threading.Event()

    def run(self):
        while not self.stop.is_set():
            self.max = max(self.max, self.r.xlen("strata:cdc"))
            self.samples += 1
            time.sleep(0.1)


def generate(conn):
    """The source transactions made while the loader is stopped; returns the expected changes
    per (table, op) and the WAL insert position before the first and after the last."""
    def one(sql, params=()):
        with conn.cursor() as cur:
            cur.execute(sql, params)

    with conn.cursor() as cur:
        cur.execute("SELECT pg_current_wal_insert_lsn()::text")
        first = lsn(cur.fetchone()[0])
    for i in range(1, N_ORDERS + 1):
        with conn:  # one transaction: an order and its two lines
            one("INSERT INTO shop.orders (order_id, customer_id, status, ordered_at, updated_at) "
                "SELECT %s, min(customer_id), 'open', '2030-01-01 10:00+00', '2030-01-01 10:00+00' FROM shop.customers",
                (BASE + i,))
            one("INSERT INTO shop.order_items (order_id, line_no, product_id, quantity, unit_price, updated_at) "
                "SELECT %s, l, (SELECT min(product_id) FROM shop.products), l, 9.99, '2030-01-01 10:00+00' "
                "FROM generate_series(1, 2) l", (BASE + i,))
    for i in range(1, N_UPDATES + 1):
        with conn:
            one("UPDATE shop.orders SET status = 'shipped', updated_at = '2030-01-01 11:00+00' WHERE order_id = %s",
                (BASE + i,))
    for i in range(N_ORDERS - N_DELETES + 1, N_ORDERS + 1):
        with conn:
            one("DELETE FROM shop.order_items WHERE order_id = %s", (BASE + i,))
            one("DELETE FROM shop.orders WHERE order_id = %s", (BASE + i,))
    with conn.cursor() as cur:
        cur.execute("SELECT pg_current_wal_insert_lsn()::text")
        last = lsn(cur.fetchone()[0])
    conn.commit()
    expected = {("orders", "c"): N_ORDERS, ("orders", "u"): N_UPDATES, ("orders", "d"): N_DELETES,
                ("order_items", "c"): 2 * N_ORDERS, ("order_items", "d"): 2 * N_DELETES}
    return expected, first, last


def test_changes():
    out = {}
    for table in ("orders", "order_items"):
        for op, n in wh(f"SELECT op, count(*) FROM raw.{table}_changes WHERE order_id > %s GROUP BY 1", (BASE,)):
            out[(table, op)] = n
    return out


def stream_changes(bus):
    """How many changes the entries on strata:cdc carry, and the smallest order id among them."""
    n, smallest = 0, None
    for _, fields in bus.xrange("strata:cdc"):
        b = PB.ChangeBatch()
        b.ParseFromString(fields[b"batch"])
        n += len(b.changes)
        for c in b.changes:
            oid = int(c.values[0].text) if c.values and c.values[0].HasField("text") else None
            if oid is not None:
                smallest = oid if smallest is None else min(smallest, oid)
    return n, smallest


def scenario(env, _webhook):
    global ENV
    ENV = env
    import redis
    bus = redis.Redis(port=int(ENV["STRATA_REDIS_PORT"]))

    step("1. CDC streams; the simulator's first day is applied")
    check(wait_until(lambda: metric("strata_ingest_cdc_up", {"slot": SLOT}) == 1, 120, "cdc up"),
          "ingest streams from the replication slot (strata_ingest_cdc_up 1)")
    rc = subprocess.run([f"{BIN}/strata-source-sim", "advance", "--through", START], env=ENV, capture_output=True,
                        text=True, timeout=300)
    if rc.returncode != 0:
        raise RuntimeError(f"strata-source-sim advance: {rc.stderr.strip()}")
    caught_up = wait_until(lambda: warehouse_state() == source_state() and bus.xlen("strata:cdc") == 0, 180,
                           "the first day's changes applied")
    n_orders = len(source_state()[0])
    check(caught_up and n_orders > 0, f"raw.orders_current / raw.order_items_current equal the source ({n_orders} orders); "
                                      "strata:cdc is empty")
    check(backpressure() == 0, f"strata_ingest_backpressure_active{{stream=strata:cdc}} is 0 ({backpressure()})")

    step("2. the warehouse-loader stops")
    pid = pid_of(ENV, "warehouse_loader")
    os.kill(pid, signal.SIGTERM)
    check(wait_until(lambda: gone(pid), 60, "the loader to stop"), "the warehouse-loader stopped")
    sampler = StreamSampler(redis.Redis(port=int(ENV["STRATA_REDIS_PORT"])))
    sampler.start()
    try:
        paused(bus, sampler)
    finally:
        sampler.stop.set()
        sampler.join()
    check(sampler.max <= HIGH_WATER and sampler.samples > 100,
          f"strata:cdc never held more than {HIGH_WATER} entries ({sampler.samples} samples, largest {sampler.max})")


def paused(bus, sampler):
    step(f"3. {N_ORDERS + N_UPDATES + N_DELETES} source transactions while nothing consumes strata:cdc")
    conn = psycopg2.connect(ENV["STRATA_SOURCE_DSN"])
    try:
        expected, first, last = generate(conn)
    finally:
        conn.close()
    total = sum(expected.values())
    print(f"     {total} changes, WAL {first:X} .. {last:X}", flush=True)

    step(f"4. ingest pauses at the high-water mark ({HIGH_WATER})")
    at_mark = wait_until(lambda: backpressure() == 1 and bus.xlen("strata:cdc") == HIGH_WATER, 120, "backpressure")
    check(at_mark, f"strata_ingest_backpressure_active{{stream=strata:cdc}} is 1 and strata:cdc holds {HIGH_WATER} "
                   f"entries ({backpressure()}, {bus.xlen('strata:cdc')})")
    in_stream, smallest = stream_changes(bus)
    check(0 < in_stream < total and smallest == BASE + 1,
          f"the stream holds the oldest {in_stream} of the {total} changes (from order {smallest}); the other "
          f"{total - in_stream} wait in the WAL")
    confirmed, restart, reply = slot()
    check(reply is not None, f"ingest holds the slot: its walsender is in pg_stat_replication ({reply})")
    # Standby status messages go out at least every 10 s while paused: two of them later, the
    # slot's position is what ingest confirmed while it could not publish.
    r1 = wait_until(lambda: slot()[2] is not None and slot()[2] > reply, 90, "a standby status message")
    reply1 = slot()[2]
    r2 = wait_until(lambda: slot()[2] is not None and slot()[2] > reply1, 90, "a second standby status message")
    confirmed2, restart2, reply2 = slot()
    check(r1 and r2, f"ingest kept the replication connection alive while paused (replies at {reply}, {reply1}, {reply2})")
    check(confirmed2 == confirmed and confirmed2 is not None and confirmed2 <= first,
          f"the slot's confirmed_flush_lsn did not move ({confirmed:X} -> {confirmed2:X}) and is before the first new "
          f"transaction ({first:X})")
    check(restart2 is not None and restart2 <= first,
          f"the slot retains the WAL of every new transaction (restart_lsn {restart2:X} <= {first:X})")
    acked = lsn(wh("SELECT acked_lsn::text FROM ops.cdc_state WHERE slot = %s", (SLOT,))[0][0])
    check(acked <= first, f"ops.cdc_state.acked_lsn {acked:X} is before the first new transaction")
    check(bus.xlen("strata:cdc") == HIGH_WATER and backpressure() == 1, "still paused at the mark")
    check(test_changes() == {}, "nothing of it reached the warehouse (the loader is down)")
    # The lag metrics see the stall (what StrataCdcLagHigh and StrataCdcSlotRetainsWal read).
    lag_ok = wait_until(lambda: (metric("strata_ingest_cdc_replication_lag_seconds", {"slot": SLOT}) or 0) >= 15,
                        120, "replication lag >= 15 s")
    check(lag_ok, "strata_ingest_cdc_replication_lag_seconds grows while paused: "
                  f"{metric('strata_ingest_cdc_replication_lag_seconds', {'slot': SLOT})} s")
    retained = wait_until(lambda: (metric("strata_ingest_cdc_slot_lag_bytes", {"slot": SLOT}) or 0) >= last - confirmed2,
                          120, "slot lag")
    check(retained, f"strata_ingest_cdc_slot_lag_bytes counts the retained WAL: "
                    f"{metric('strata_ingest_cdc_slot_lag_bytes', {'slot': SLOT})} >= {last - confirmed2}")

    step("5. the loader is back: everything arrives, once")
    start_service(ENV, "warehouse_loader", [f"{BIN}/strata-warehouse-loader"])
    done = wait_until(lambda: test_changes() == expected and warehouse_state() == source_state(), 180,
                      "every change applied")
    got = test_changes()
    check(done and got == expected, f"raw.*_changes hold each of the {total} changes once ({sorted(got.items())})",
          [f"expected {sorted(expected.items())}"])
    src_orders, src_items = source_state()
    wh_orders, wh_items = warehouse_state()
    check(wh_orders == src_orders and wh_items == src_items,
          f"raw.orders_current and raw.order_items_current equal the source: {len(wh_orders)} orders, "
          f"{len(wh_items)} lines (source {len(src_orders)}, {len(src_items)})")
    mart = wh("SELECT order_id, status FROM marts.orders_current WHERE order_id > %s ORDER BY 1", (BASE,))
    want = src("SELECT order_id, status FROM shop.orders WHERE order_id > %s ORDER BY 1", (BASE,))
    check(mart == want and len(want) == N_ORDERS - N_DELETES,
          f"marts.orders_current has the source's {len(want)} test orders with their status ({len(mart)})")
    check(wait_until(lambda: bus.xlen("strata:cdc") == 0 and backpressure() == 0, 120, "the stream to drain"),
          f"strata:cdc drains and the gauge drops to 0 ({bus.xlen('strata:cdc')}, {backpressure()})")
    check(wait_until(lambda: (slot()[0] or 0) >= last, 120, "the slot to confirm the last transaction"),
          f"the slot confirms past the last new transaction ({(slot()[0] or 0):X} >= {last:X})")
    check(wait_until(lambda: metric("strata_ingest_cdc_replication_lag_seconds", {"slot": SLOT}) == 0, 120, "lag 0"),
          "strata_ingest_cdc_replication_lag_seconds is back to 0")
    watermark(bus)


def commit(sql, params=()):
    """Runs `sql` in its own transaction on the source; the WAL insert position after its commit."""
    conn = psycopg2.connect(ENV["STRATA_SOURCE_DSN"])
    try:
        with conn, conn.cursor() as cur:
            cur.execute(sql, params)
        with conn.cursor() as cur:
            cur.execute("SELECT pg_current_wal_insert_lsn()::text")
            return lsn(cur.fetchone()[0])
    finally:
        conn.close()


def watermark(bus):
    step("6. a batch pending with a dead consumer holds applied_lsn and the slot")
    pid = pid_of(ENV, "warehouse_loader")
    os.kill(pid, signal.SIGTERM)
    check(wait_until(lambda: gone(pid), 60, "the loader to stop"), "the warehouse-loader stopped")
    t1 = commit("UPDATE shop.orders SET status = 'delivered', updated_at = '2030-01-01 12:00+00' WHERE order_id = %s",
                (BASE + 1,))
    published = wait_until(lambda: stream_changes(bus)[1] == BASE + 1, 60, "T1 on the stream")
    check(published and bus.xlen("strata:cdc") == 1, f"T1 is the one entry on strata:cdc ({bus.xlen('strata:cdc')})")
    got = bus.xreadgroup("warehouse-loader", "a-loader-that-dies", {"strata:cdc": ">"}, count=1)
    check(len(got) == 1 and len(got[0][1]) == 1, "a consumer that then disappears read T1 (pending in the group)")
    start_service(ENV, "warehouse_loader", [f"{BIN}/strata-warehouse-loader"],
                  dict(ENV, STRATA_RECLAIM_IDLE_MS="600000"))
    t2 = commit("UPDATE shop.orders SET status = 'delivered', updated_at = '2030-01-01 12:00+00' WHERE order_id = %s",
                (BASE + 2,))
    status = lambda oid: wh("SELECT status FROM raw.orders_current WHERE order_id = %s", (oid,))  # noqa: E731
    check(wait_until(lambda: status(BASE + 2) == [("delivered",)], 120, "T2 applied"),
          "the new loader applies T2 (a later transaction) while T1 is pending with the dead consumer")
    check(status(BASE + 1) == [("shipped",)], f"T1 is not applied yet ({status(BASE + 1)})")
    confirmed, _, reply = slot()
    r1 = wait_until(lambda: slot()[2] is not None and slot()[2] > reply, 90, "a standby status message")
    reply1 = slot()[2]
    r2 = wait_until(lambda: slot()[2] is not None and slot()[2] > reply1, 90, "a second standby status message")
    confirmed2 = slot()[0]
    applied, acked = (lsn(x) for x in wh("SELECT applied_lsn::text, acked_lsn::text FROM ops.cdc_state WHERE slot = %s",
                                         (SLOT,))[0])
    check(r1 and r2 and confirmed2 is not None and confirmed2 < t1,
          f"across two standby status messages the slot's confirmed_flush_lsn stays before T1 ({confirmed2:X} < {t1:X})")
    check(applied < t1 and acked < t1,
          f"ops.cdc_state.applied_lsn {applied:X} and acked_lsn {acked:X} stay before T1 ({t1:X})")
    pid = pid_of(ENV, "warehouse_loader")
    os.kill(pid, signal.SIGTERM)
    check(wait_until(lambda: gone(pid), 60, "the loader to stop"), "that loader stops")
    start_service(ENV, "warehouse_loader", [f"{BIN}/strata-warehouse-loader"], dict(ENV, STRATA_RECLAIM_IDLE_MS="500"))
    check(wait_until(lambda: status(BASE + 1) == [("delivered",)], 120, "T1 applied"),
          "a loader that reclaims the dead consumer's entry applies T1")
    check(wait_until(lambda: (slot()[0] or 0) >= t2, 120, "the slot past T2"),
          f"then the slot confirms past T2 ({(slot()[0] or 0):X} >= {t2:X})")
    check(wait_until(lambda: warehouse_state() == source_state(), 60, "equal"),
          "raw.orders_current and raw.order_items_current equal the source")


def main():
    def prepare(stack_dir):
        marker = "  batch_ms: 100\n"

        def one_change_per_batch(demo):
            assert demo.count(marker) == 1, "pipelines/demo/pipeline.yaml changed: cannot set the CDC batch size"
            return demo.replace(marker, marker + "  batch_changes: 1\n")
        spec = demo_variant(os.path.join(stack_dir, "cdc_backpressure"), one_change_per_batch)
        return {"STRATA_PIPELINE_SPEC": spec, "STRATA_BUS_HIGH_WATER": str(HIGH_WATER)}

    run_on_own_stack(ROOT, BIN, "strata-cdc-backpressure-", clean_env(), ["--start", START], scenario, FAILURES,
                     prepare)


if __name__ == "__main__":
    main()

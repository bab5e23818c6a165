"""CDC load generator and measurement for `make bench`.

Commits UPDATEs of shop.orders at a steady target rate (changes/s) for a fixed time, in small
transactions every 50 ms, then waits for the warehouse to apply them and reads from
raw.orders_changes what arrived: the sustained applied rate and commit -> warehouse latency
(applied_at is set as each change is written in the loader's transaction, commit_time is the
source commit). While it runs it samples the bus backlog (`XLEN strata:cdc`, bounded by ingest's
high-water mark) and the resident memory of the processes named in STRATA_BENCH_PIDS
("name:pid,..."): past capacity the lag grows, memory must not. Prints one JSON object."""
import json
import os
import subprocess
import sys
import threading
import time

import psycopg2

rate, seconds = int(sys.argv[1]), float(sys.argv[2])
src = psycopg2.connect(os.environ["STRATA_SOURCE_DSN"])
src.autocommit = True
wh = psycopg2.connect(os.environ["STRATA_PG_DSN"])
wh.autocommit = True
cur = src.cursor()
cur.execute("SELECT min(order_id), max(order_id) FROM shop.orders")
lo, hi = cur.fetchone()
per_tick = max(1, int(rate * 0.05))
cur.execute("SELECT now()")
start_ts = cur.fetchone()[0]
peak = {"bus": 0}
pids = dict(p.split(":") for p in os.environ.get("STRATA_BENCH_PIDS", "").split(",") if p)
done = threading.Event()


def sample():
    while not done.is_set():
        try:
            n = int(subprocess.run(["redis-cli", "-p", os.environ["STRATA_REDIS_PORT"], "XLEN", "strata:cdc"],
                                   capture_output=True, text=True, timeout=5).stdout.strip() or 0)
            peak["bus"] = max(peak["bus"], n)
        except (ValueError, subprocess.SubprocessError):
            pass
        for name, pid in pids.items():
            try:
                with open(f"/proc/{pid}/status") as f:
                    kb = next(int(l.split()[1]) for l in f if l.startswith("VmRSS"))
                peak[name] = max(peak.get(name, 0), kb // 1024)
            except (OSError, StopIteration):
                pass
        time.sleep(0.2)


sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
t0 = time.time()
sent, tick, nxt = 0, 0, lo
while time.time() - t0 < seconds:
    a = nxt
    b = min(hi, a + per_tick - 1)
    cur.execute("UPDATE shop.orders SET updated_at = updated_at + interval '1 microsecond' WHERE order_id BETWEEN %s AND %s",
                (a, b))
    sent += cur.rowcount
    nxt = b + 1 if b < hi else lo
    tick += 1
    sleep = t0 + tick * 0.05 - time.time()
    if sleep > 0:
        time.sleep(sleep)
offered_secs = time.time() - t0
w = wh.cursor()
deadline = time.time() + 900  # past capacity the backlog drains at the plateau rate
while time.time() < deadline:
    w.execute("SELECT count(*) FROM raw.orders_changes WHERE op = 'u' AND commit_time >= %s", (start_ts,))
    if w.fetchone()[0] >= sent:
        break
    time.sleep(0.5)
w.execute("""SELECT count(*), extract(epoch FROM max(applied_at) - min(commit_time)),
                    percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM applied_at - commit_time)),
                    percentile_cont(0.99) WITHIN GROUP (ORDER BY extract(epoch FROM applied_at - commit_time)),
                    max(extract(epoch FROM applied_at - commit_time))
             FROM raw.orders_changes WHERE op = 'u' AND commit_time >= %s""", (start_ts,))
n, span, p50, p99, mx = (float(x) if x is not None else 0.0 for x in w.fetchone())
done.set()
sampler.join()
print(json.dumps({"target_rate": rate, "sent": sent, "offered_rate": sent / offered_secs, "applied": int(n),
                  "sustained_rate": (n / span) if span else 0, "p50_ms": (p50 or 0) * 1000,
                  "p99_ms": (p99 or 0) * 1000, "max_ms": (mx or 0) * 1000,
                  "peak_bus_entries": peak.pop("bus"), "peak_rss_mib": peak}))

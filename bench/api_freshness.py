"""Source commit -> visible in the API answer, for `make bench` (bench/overload.sh).

While bench/cdc_load.py commits UPDATEs of shop.orders at RATE changes/s in the background, a
probe commits one more change every 200 ms (an order's updated_at set to the commit's clock) and
polls the `order_live` endpoint (HTTP GET /analytics/orders/live, a realtime endpoint reading
what change data capture keeps current, cached at most its staleness bound) every 5 ms until the
answer shows that change. Latency is the probe's commit returning -> the first answer showing it,
so it includes CDC (slot, bus, loader transaction) and the API's cache. Prints one JSON object.

    api_freshness.py RATE SECONDS
"""
import datetime as dt
import json
import os
import subprocess
import sys
import time
import urllib.request

import psycopg2

rate, seconds = int(sys.argv[1]), float(sys.argv[2])
here = os.path.dirname(os.path.abspath(__file__))
background = subprocess.Popen([sys.executable, os.path.join(here, "cdc_load.py"), str(rate), str(seconds)],
                              stdout=subprocess.PIPE, text=True) if rate > 0 else None
src = psycopg2.connect(os.environ["STRATA_SOURCE_DSN"])
src.autocommit = True
cur = src.cursor()
cur.execute("SELECT order_id FROM shop.orders ORDER BY order_id DESC LIMIT 10")
probes = [r[0] for r in cur.fetchall()]
url = f"http://{os.environ['STRATA_QUERY_HTTP']}/analytics/orders/live?order_id="
headers = {"Authorization": f"Bearer {os.environ['STRATA_QUERY_TOKEN']}"}


def seen_at(order_id):
    """The updated_at the API answers for the order now (None if it has none)."""
    with urllib.request.urlopen(urllib.request.Request(url + str(order_id), headers=headers), timeout=5) as r:
        rows = json.loads(r.read())["orders"]
    return dt.datetime.fromisoformat(rows[0]["updated_at"].replace("Z", "+00:00")) if rows else None


latencies, missed, t0, i = [], 0, time.time(), 0
while time.time() - t0 < seconds:
    oid = probes[i % len(probes)]
    i += 1
    cur.execute("UPDATE shop.orders SET updated_at = clock_timestamp() WHERE order_id = %s RETURNING updated_at", (oid,))
    want = cur.fetchone()[0]
    committed = time.time()
    while True:
        got = seen_at(oid)
        if got is not None and got >= want:
            latencies.append((time.time() - committed) * 1000)
            break
        if time.time() - committed > 10:
            missed += 1
            break
        time.sleep(0.005)
    time.sleep(max(0.0, 0.2 - (time.time() - committed)))
load = json.loads(background.communicate()[0]) if background else None
latencies.sort()


def pct(p):
    return latencies[min(len(latencies) - 1, int(p * len(latencies)))] if latencies else 0.0


print(json.dumps({"offered_rate": rate, "probes": len(latencies), "missed": missed, "p50_ms": pct(0.50),
                  "p99_ms": pct(0.99), "max_ms": latencies[-1] if latencies else 0.0, "load": load}))

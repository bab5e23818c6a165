"""The controller's status page as a person sees it, in headless Chromium: the grid of runs x
tasks, a run's detail with its checks; and its JSON stays fast with 10,000 runs in history."""
import json
import os
import subprocess
import tempfile
import time
import urllib.request

import psycopg2

from strata_e2e import ENV, check, finish, wh

BASE = f"http://{ENV['STRATA_CONTROLLER_HTTP']}"
CHROMIUM = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--virtual-time-budget=8000"]


def chromium(*args):
    profile = tempfile.mkdtemp()
    p = subprocess.run(CHROMIUM + [f"--user-data-dir={profile}"] + list(args), capture_output=True, text=True,
                       timeout=120)
    return p.stdout


latest = wh("SELECT run_id, ds::text, state FROM ops.runs WHERE pipeline = 'demo' ORDER BY created_at DESC, run_id DESC LIMIT 25")
dom = chromium("--dump-dom", BASE + "/")
rows = dom.count('<tr class="run" data-run="r')  # the script's own template has no run id
check(rows == len(latest) and rows > 0, f"the grid shows one row per recent run ({rows} of {len(latest)})")
check(all(run_id in dom for run_id, _, _ in latest), "every recent run id is on the page")
newest_state = latest[0][2]
check(f'<span class="state {newest_state}">{newest_state}</span>' in dom, f"the newest run's state ({newest_state}) is shown")
check("publish" in dom and "extract.customers" in dom, "task columns are named")
check(dom.count('<div class="succeeded"></div>') >= 10, "succeeded tasks are coloured as such")
check("<h3>checks</h3>" in dom and ("reconciliation" in dom or "dead_letters" in dom),
      "the newest run's detail lists its check results")

shot = os.path.join(ENV["STRATA_STACK_DIR"], "status-page.png")
chromium(f"--screenshot={shot}", "--window-size=1400,900", BASE + "/")
check(os.path.exists(shot) and os.path.getsize(shot) > 20000, "a screenshot of the page was taken")

# 10,000 runs of history: the page's data still comes back in well under 100 ms.
conn = psycopg2.connect(ENV["STRATA_PG_DSN"])
conn.autocommit = True
with conn.cursor() as cur:
    cur.execute("DELETE FROM ops.task_runs WHERE run_id LIKE 'page-%%'; DELETE FROM ops.runs WHERE pipeline = 'page'")
    cur.execute("""INSERT INTO ops.runs (run_id, pipeline, ds, state, trigger, created_at, started_at, finished_at)
                   SELECT 'page-' || lpad(g::text, 6, '0'), 'page', date '2000-01-01' + g, 'succeeded', 'schedule',
                          now() - (10000 - g) * interval '1 minute', now(), now() FROM generate_series(1, 10000) g""")
    cur.execute("""INSERT INTO ops.task_runs (run_id, task, state, attempt)
                   SELECT r.run_id, t, 'succeeded', 1 FROM ops.runs r,
                          unnest(ARRAY['extract.customers','export.customers','load.customers','model','check','publish']) t
                   WHERE r.pipeline = 'page'""")
    cur.execute("ANALYZE ops.runs; ANALYZE ops.task_runs")
urllib.request.urlopen(f"{BASE}/api/grid?pipeline=page&limit=25").read()  # warm up
timings, before, seen = [], "", 0
for _ in range(20):
    t0 = time.perf_counter()
    grid = json.loads(urllib.request.urlopen(f"{BASE}/api/grid?pipeline=page&limit=25&before={before}").read())
    timings.append((time.perf_counter() - t0) * 1000)
    seen += len(grid["runs"])
    before = grid["next_before"]
check(seen == 500 and all(len(r["tasks"]) == 6 for r in grid["runs"]), "20 pages of 25 runs with their tasks")
check(max(timings) < 100, f"with 10,000 runs each page answers in under 100 ms (max {max(timings):.1f} ms)")
t0 = time.perf_counter()
html = urllib.request.urlopen(f"{BASE}/").read()
check((time.perf_counter() - t0) * 1000 < 100 and b"<table id=\"grid\">" in html, "the page itself is served at once")
with conn.cursor() as cur:
    cur.execute("DELETE FROM ops.task_runs WHERE run_id LIKE 'page-%%'; DELETE FROM ops.runs WHERE pipeline = 'page'")
finish()

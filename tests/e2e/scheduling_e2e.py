"""Backfills (reprocess policies, dry run, fair sharing with other runs), cron schedules with
catch-up, missed-deadline alerts, and run listing over 10,000 runs."""
import datetime
import json
import os
import signal
import subprocess
import time

import grpc

from strata_e2e import BIN, ENV, WebhookReceiver, check, finish, free_port, load_pb2, stratactl, wh

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pb = load_pb2()


def wait_for(cond, seconds):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.2)
    return False


# --- backfill: dry run and reprocess policies ---------------------------------------------------
F1, F2 = "2024-02-01", "2024-02-02"
rc, out, _ = stratactl("--json", "backfill", "--from", F1, "--to", F2, "--dry-run")
check(rc == 0 and json.loads(out) == [F1, F2], f"dry run lists the two dates without runs ({out.strip()})")
check(wh("SELECT count(*) FROM ops.runs WHERE ds IN (%s, %s)", (F1, F2))[0][0] == 0, "a dry run queues nothing")
rc, out, _ = stratactl("--json", "backfill", "--from", F1, "--to", F2, "--timeout", "300")
runs = json.loads(out)
# The simulator has no shop activity in February: the freshness check fails these runs.
check(len(runs) == 2 and all(r["trigger"] == "backfill" and r["state"] == "failed" for r in runs),
      f"the backfill ran both dates (and they failed the freshness check): {[r['state'] for r in runs]}")
check(rc == 1, "a backfill with failed runs exits 1")
rc, out, _ = stratactl("--json", "backfill", "--from", "2024-01-30", "--to", F2, "--dry-run", "--reprocess", "missing")
check(json.loads(out) == ["2024-01-30", "2024-01-31"], f"reprocess=missing skips dates that have runs ({out.strip()})")
rc, out, _ = stratactl("--json", "backfill", "--from", "2024-01-30", "--to", F2, "--dry-run", "--reprocess", "failed")
check(json.loads(out) == ["2024-01-30", "2024-01-31", F1, F2], f"reprocess=failed adds the failed dates ({out.strip()})")
rc, out, _ = stratactl("--json", "backfill", "--from", "2024-01-05", "--to", "2024-01-06", "--dry-run", "--reprocess", "all")
check(json.loads(out) == ["2024-01-05", "2024-01-06"], "reprocess=all takes every date")
rc, _, err = stratactl("backfill", "--from", F2, "--to", F1)
check(rc == 2, "a reversed range is refused")

# --- fair sharing: a 30-day backfill alongside daily runs; all complete, none starves ------------
from strata_e2e import sim_advance  # noqa: E402

sim_advance("2024-03-30")
backfill_proc = subprocess.Popen([f"{BIN}/stratactl", "--json", "backfill", "--from", "2024-03-01", "--to",
                                  "2024-03-30", "--reprocess", "all", "--timeout", "900"], stdout=subprocess.PIPE,
                                 text=True)
time.sleep(1.0)
manual = [subprocess.Popen([f"{BIN}/stratactl", "--json", "run", "--date", d, "--timeout", "900"],
                           stdout=subprocess.PIPE, text=True) for d in ("2024-01-09", "2024-01-10")]
outs = [p.communicate(timeout=900)[0] for p in manual + [backfill_proc]]
backfilled = json.loads(outs[-1])
check(len(backfilled) == 30 and all(r["state"] == "succeeded" for r in backfilled),
      f"all 30 backfill runs succeeded ({sum(r['state'] == 'succeeded' for r in backfilled)})")
check(all(json.loads(o)["state"] == "succeeded" for o in outs[:2]), "both daily runs succeeded")
order = [t for (t,) in wh("""SELECT trigger FROM ops.runs
                             WHERE (trigger = 'backfill' AND ds BETWEEN '2024-03-01' AND '2024-03-30')
                                OR (trigger = 'manual' AND ds IN ('2024-01-09', '2024-01-10')
                                    AND created_at > now() - interval '15 minutes')
                             ORDER BY started_at""")]
last_manual = max(i for i, t in enumerate(order) if t == "manual")
check(len(order) == 32 and last_manual <= 6,
      f"the daily runs queued behind the backfill started within its first few runs, not after it (position {last_manual})")

# --- run listing stays fast with 10,000 runs ------------------------------------------------------
wh_conn = __import__("psycopg2").connect(ENV["STRATA_PG_DSN"])
wh_conn.autocommit = True
with wh_conn.cursor() as cur:
    cur.execute("DELETE FROM ops.task_runs WHERE run_id LIKE 'perf-%%'; DELETE FROM ops.runs WHERE pipeline = 'perf'")
    cur.execute("""INSERT INTO ops.runs (run_id, pipeline, ds, state, trigger, created_at, started_at, finished_at)
                   SELECT 'perf-' || lpad(g::text, 6, '0'), 'perf', date '2000-01-01' + g,
                          (ARRAY['succeeded','failed','succeeded','succeeded'])[1 + g % 4], 'schedule',
                          now() - (10000 - g) * interval '1 minute', now(), now()
                   FROM generate_series(1, 10000) g""")
    cur.execute("""INSERT INTO ops.task_runs (run_id, task, state, attempt)
                   SELECT r.run_id, t, 'succeeded', 1 FROM ops.runs r,
                          unnest(ARRAY['extract.a','export.a','load.a','model','check','publish']) t
                   WHERE r.pipeline = 'perf'""")
    cur.execute("ANALYZE ops.runs")
channel = grpc.insecure_channel(ENV["STRATA_CONTROLLER_GRPC"])
list_runs = channel.unary_unary("/strata.v1.Controller/ListRuns", request_serializer=pb.ListRunsRequest.SerializeToString,
                                response_deserializer=pb.ListRunsReply.FromString)
list_runs(pb.ListRunsRequest(pipeline="perf", limit=50), timeout=10)  # warm the connection
timings, seen, token = [], [], ""
while True:
    t0 = time.perf_counter()
    page = list_runs(pb.ListRunsRequest(pipeline="perf", limit=500, page_token=token), timeout=10)
    timings.append((time.perf_counter() - t0) * 1000)
    seen += [r.run_id for r in page.runs]
    token = page.next_page_token
    if not token:
        break
check(len(seen) == 10000 and len(set(seen)) == 10000 and seen[0] == "perf-010000",
      f"paging visits all 10,000 runs once, newest first ({len(seen)})")
check(max(timings) < 100, f"every page of 500 answers in under 100 ms (max {max(timings):.1f} ms)")
t0 = time.perf_counter()
first = list_runs(pb.ListRunsRequest(pipeline="perf", limit=50, state="failed"), timeout=10)
ms = (time.perf_counter() - t0) * 1000
check(len(first.runs) == 50 and all(r.state == "failed" for r in first.runs) and ms < 100,
      f"the first page filtered by state answers in {ms:.1f} ms")
rc, out, _ = stratactl("--json", "runs", "--limit", "3", "--state", "failed", "--from", "2024-02-01", "--to", "2024-02-02")
listing = json.loads(out)
check([r["ds"] for r in listing["runs"]] == [F2, F1], f"stratactl runs filters by state and date ({listing})")
with wh_conn.cursor() as cur:
    cur.execute("DELETE FROM ops.task_runs WHERE run_id LIKE 'perf-%%'; DELETE FROM ops.runs WHERE pipeline = 'perf'")

# --- a cron schedule with catch-up, and missed deadlines alerted once per date ----------------------
hook = WebhookReceiver(int(ENV["STRATA_WEBHOOK_PORT"]))
alerts = hook.received
today = datetime.datetime.now(datetime.timezone.utc).date()
start = today - datetime.timedelta(days=3)
spec = open(os.path.join(ROOT, "pipelines", "demo.yaml")).read().replace("pipeline: demo", "pipeline: sched")
spec += f"\nschedule:\n  cron: '* * * * *'\n  timezone: UTC\n  start_date: {start}\n  catchup: true\n  deadline: '00:00'\n"
spec_path = os.path.join(ENV["STRATA_STACK_DIR"], "sched.yaml")
open(spec_path, "w").write(spec)
env = dict(os.environ, STRATA_PIPELINE_SPEC=spec_path, STRATA_CONTROLLER_GRPC=f"127.0.0.1:{free_port()}",
           STRATA_CONTROLLER_METRICS=f"127.0.0.1:{free_port()}", STRATA_CONTROLLER_HTTP=f"127.0.0.1:{free_port()}")
log = open(os.path.join(ENV["STRATA_STACK_DIR"], "logs", "controller_sched.log"), "w")
sched = subprocess.Popen([f"{BIN}/strata-controller"], env=env, stdout=log, stderr=log)
expected = [str(start + datetime.timedelta(days=i)) for i in range(3)]
try:
    ok = wait_for(lambda: [str(r[0]) for r in wh("SELECT ds FROM ops.runs WHERE pipeline = 'sched' AND trigger = 'schedule' "
                                                 "ORDER BY ds")] == expected, 30)
    check(ok, f"catch-up queued one scheduled run per date since start_date: {expected}")
    ok = wait_for(lambda: sorted(a["ds"] for a in alerts if a.get("event") == "run_deadline_missed") == expected, 40)
    check(ok, f"each date whose run missed the 00:00 deadline raised one alert ({[a.get('ds') for a in alerts]})")
    time.sleep(6)  # at least one more schedule pass
    runs_now = wh("SELECT count(*) FROM ops.runs WHERE pipeline = 'sched'")[0][0]
    missed = [a["ds"] for a in alerts if a.get("event") == "run_deadline_missed"]
    check(runs_now == 3 and len(missed) == 3, f"later passes queue nothing twice and do not re-alert ({runs_now}, {missed})")
finally:
    sched.send_signal(signal.SIGTERM)
    sched.wait(timeout=30)
    hook.close()
finish()

"""Backfills (reprocess policies, dry run, fair sharing with other runs), cron schedules with
catch-up, missed-deadline alerts, and run listing over 10,000 runs."""
import datetime
import json
import os
import signal
import subprocess

import grpc

from pipeline_copy import demo_variant, without_schedule
from strata_e2e import BIN, ENV, WebhookReceiver, check, finish, free_port, load_pb2, stratactl, wait_for, wh

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
pb = load_pb2()


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
queued_after = wh("SELECT now()")[0][0]
backfill_proc = subprocess.Popen([f"{BIN}/stratactl", "--json", "backfill", "--from", "2024-03-01", "--to",
                                  "2024-03-30", "--reprocess", "all", "--timeout", "900"], stdout=subprocess.PIPE,
                                 text=True)
check(wait_for(lambda: wh("SELECT count(*) FROM ops.runs WHERE trigger = 'backfill' AND created_at >= %s "
                          "AND ds BETWEEN '2024-03-01' AND '2024-03-30'", (queued_after,))[0][0] == 30, 120,
               "the backfill's runs queued"), "the backfill queued its 30 runs")
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
# How fast is for `make bench`; here the pages must be complete and in order.
seen, token, pages = [], "", 0
while pages < 100:
    page = list_runs(pb.ListRunsRequest(pipeline="perf", limit=500, page_token=token), timeout=60)
    seen += [r.run_id for r in page.runs]
    pages += 1
    token = page.next_page_token
    if not token:
        break
check(pages == 20 and seen == [f"perf-{g:06d}" for g in range(10000, 0, -1)],
      f"paging visits all 10,000 runs once, newest first, in 20 pages of 500 ({len(seen)} in {pages})")
first = list_runs(pb.ListRunsRequest(pipeline="perf", limit=50, state="failed"), timeout=60)
check([r.run_id for r in first.runs] == [f"perf-{g:06d}" for g in range(9997, 9997 - 200, -4)],
      f"the first page filtered by state holds the 50 newest failed runs ({[r.run_id for r in first.runs][:3]}...)")
rc, out, _ = stratactl("--json", "runs", "--limit", "3", "--state", "failed", "--from", "2024-02-01", "--to", "2024-02-02")
listing = json.loads(out)
check([r["ds"] for r in listing["runs"]] == [F2, F1], f"stratactl runs filters by state and date ({listing})")
with wh_conn.cursor() as cur:
    cur.execute("DELETE FROM ops.task_runs WHERE run_id LIKE 'perf-%%'; DELETE FROM ops.runs WHERE pipeline = 'perf'")

# --- a cron schedule with catch-up, and missed deadlines alerted once per date ----------------------
# Which dates are due depends on the day the controller sees (PostgreSQL's clock, in UTC), so the
# expected dates are computed from that same clock whenever they are compared: the test holds when
# UTC midnight passes during it.
for stmt in ["DELETE FROM ops.task_runs WHERE run_id IN (SELECT run_id FROM ops.runs WHERE pipeline = 'sched')",
             "DELETE FROM ops.runs WHERE pipeline = 'sched'", "DELETE FROM ops.deadline_alerts WHERE pipeline = 'sched'"]:
    with wh_conn.cursor() as cur:
        cur.execute(stmt)
hook = WebhookReceiver(int(ENV["STRATA_WEBHOOK_PORT"]))
alerts = hook.received


def db_today():
    return wh("SELECT (now() AT TIME ZONE 'UTC')::date")[0][0]


start = db_today() - datetime.timedelta(days=3)


def due():
    """Every date from start_date through yesterday (UTC), as the schedule's catch-up owes them."""
    return [str(start + datetime.timedelta(days=i)) for i in range((db_today() - start).days)]


def scheduled():
    return [str(r[0]) for r in wh("SELECT ds FROM ops.runs WHERE pipeline = 'sched' AND trigger = 'schedule' ORDER BY ds")]


def missed():
    return sorted(a["ds"] for a in alerts if a.get("event") == "run_deadline_missed")


spec_path = demo_variant(os.path.join(ENV["STRATA_STACK_DIR"], "sched"), lambda t: without_schedule(t).replace("pipeline: demo", "pipeline: sched") +
                         f"\nschedule:\n  cron: '* * * * *'\n  timezone: UTC\n  start_date: {start}\n  catchup: true\n  deadline: '00:00'\n")
env = dict(os.environ, STRATA_PIPELINE_SPEC=spec_path, STRATA_SCHEDULES="true", STRATA_CONTROLLER_GRPC=f"127.0.0.1:{free_port()}",
           STRATA_CONTROLLER_METRICS=f"127.0.0.1:{free_port()}", STRATA_CONTROLLER_HTTP=f"127.0.0.1:{free_port()}")
log = open(os.path.join(ENV["STRATA_STACK_DIR"], "logs", "controller_sched.log"), "w")
sched = subprocess.Popen([f"{BIN}/strata-controller"], env=env, stdout=log, stderr=log)
try:
    ok = wait_for(lambda: scheduled() == due(), 120, "catch-up runs")
    check(ok, f"catch-up queued one scheduled run per date since start_date: {scheduled()} (due {due()})")
    ok = wait_for(lambda: missed() == due(), 120, "deadline alerts")
    check(ok, f"each date whose run missed the 00:00 deadline raised one alert ({missed()})")
    # A later pass must queue nothing twice and re-alert nothing. To know a pass happened, forget
    # that one date was alerted: the next pass alerts it again (and only it).
    unsucceeded = [d for d in due() if not wh("SELECT 1 FROM ops.runs WHERE pipeline = 'sched' AND ds = %s "
                                              "AND state = 'succeeded'", (d,))]
    rearmed = (unsucceeded or due())[0]
    with wh_conn.cursor() as cur:
        cur.execute("DELETE FROM ops.deadline_alerts WHERE pipeline = 'sched' AND ds = %s", (rearmed,))
    ok = wait_for(lambda: missed().count(rearmed) == 2, 120, "a later schedule pass")
    check(ok, f"a later pass alerts again for {rearmed}, whose alert record was removed ({missed()})")
    ok = wait_for(lambda: scheduled() == due() and missed() == sorted(due() + [rearmed]), 60, "nothing twice")
    check(ok, f"later passes queue nothing twice and do not re-alert recorded dates ({scheduled()}, {missed()})")
finally:
    sched.send_signal(signal.SIGTERM)
    sched.wait(timeout=30)
    hook.close()

# --- the data interval of a ds is the logical day in the schedule's time zone ----------------------
# A controller for a Europe/Paris schedule sends its extractions to a stand-in ingest (a grpcio
# server here) that records each TaskRequest. The expected UTC bounds are written out by hand:
# winter (UTC+1), the 23-hour day clocks go forward (2024-03-31) and the 25-hour day they go back
# (2024-10-27).
from concurrent import futures  # noqa: E402

from strata_e2e import gauge  # noqa: E402

WINDOWS = {"2024-01-10": ("2024-01-09T23:00:00Z", "2024-01-10T23:00:00Z"),
           "2024-03-31": ("2024-03-30T23:00:00Z", "2024-03-31T22:00:00Z"),
           "2024-10-27": ("2024-10-26T22:00:00Z", "2024-10-27T23:00:00Z")}
extracts = []


def record_extract(request, context):
    extracts.append(request)
    return pb.TaskAccepted(task=request.task)


fake_ingest = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
fake_ingest.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("strata.v1.Ingest", {
    "Extract": grpc.unary_unary_rpc_method_handler(record_extract, request_deserializer=pb.TaskRequest.FromString,
                                                   response_serializer=pb.TaskAccepted.SerializeToString)}),))
ingest_port = fake_ingest.add_insecure_port("127.0.0.1:0")
fake_ingest.start()


def forget_paris():
    for stmt in ["DELETE FROM ops.task_runs WHERE run_id IN (SELECT run_id FROM ops.runs WHERE pipeline = 'paris')",
                 "DELETE FROM ops.runs WHERE pipeline = 'paris'"]:
        with wh_conn.cursor() as cur:
            cur.execute(stmt)


forget_paris()
# start_date far ahead: nothing is scheduled by itself, runs are started by hand below.
spec_path = demo_variant(os.path.join(ENV["STRATA_STACK_DIR"], "paris"), lambda t: without_schedule(t).replace("pipeline: demo", "pipeline: paris") +
                         "\nschedule:\n  cron: '0 2 * * *'\n  timezone: Europe/Paris\n  start_date: 2099-01-01\n")
paris_grpc, paris_metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
env = dict(os.environ, STRATA_PIPELINE_SPEC=spec_path, STRATA_SCHEDULES="true", STRATA_CONTROLLER_GRPC=paris_grpc,
           STRATA_CONTROLLER_METRICS=paris_metrics, STRATA_CONTROLLER_HTTP=f"127.0.0.1:{free_port()}",
           STRATA_INGEST_GRPC=f"127.0.0.1:{ingest_port}")
log = open(os.path.join(ENV["STRATA_STACK_DIR"], "logs", "controller_paris.log"), "w")
paris = subprocess.Popen([f"{BIN}/strata-controller"], env=env, stdout=log, stderr=log)
try:
    check(wait_for(lambda: gauge(paris_metrics, "strata_controller_leader") == 1, 60, "paris controller leads"),
          "a controller for a Europe/Paris schedule leads its pipeline")
    pchan = grpc.insecure_channel(paris_grpc)
    start_run = pchan.unary_unary("/strata.v1.Controller/StartRun", request_serializer=pb.StartRunRequest.SerializeToString,
                                  response_deserializer=pb.RunInfo.FromString)
    cancel_run = pchan.unary_unary("/strata.v1.Controller/CancelRun", request_serializer=pb.GetRunRequest.SerializeToString,
                                   response_deserializer=pb.RunInfo.FromString)
    for ds, window in WINDOWS.items():
        run = start_run(pb.StartRunRequest(pipeline="paris", ds=ds), timeout=30)
        mine = lambda: [r for r in extracts if r.run_id == run.run_id]  # noqa: E731
        ok = wait_for(lambda: len(mine()) >= 5, 120, f"extractions of {ds}")
        got = {(r.interval_start, r.interval_end) for r in mine()}
        check(ok and got == {window} and all(r.ds == ds for r in mine()),
              f"ds {ds} in Europe/Paris is extracted over [{window[0]}, {window[1]}) ({len(mine())} extractions: {got})")
        cancel_run(pb.GetRunRequest(run_id=run.run_id), timeout=30)
        check(wait_for(lambda: wh("SELECT state FROM ops.runs WHERE run_id = %s", (run.run_id,))[0][0] == "cancelled", 60,
                       "paris run cancelled"), f"the run of {ds} is cancelled")
finally:
    paris.send_signal(signal.SIGTERM)
    paris.wait(timeout=30)
    fake_ingest.stop(0)
    forget_paris()
finish()

"""Every check kind on data made to pass and data made to fail, against a real quality service
and PostgreSQL; results kept with samples; one alert per check and ds when it starts failing
and one when it recovers, never one per re-run; a notifier outage is counted, not fatal;
profiles of a staged dataset."""
import json
import os
import subprocess

import grpc

from strata_e2e import BIN, ENV, WebhookReceiver, check, finish, free_port, gauge, load_pb2, stratactl, wait_for, wh

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
strata_pb2 = load_pb2()

DS = "2024-03-10"


def sql(statement):
    import psycopg2
    conn = psycopg2.connect(ENV["STRATA_PG_DSN"])
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute(statement)
    conn.close()


# Data made to pass (good) and to fail (bad): 6 days of history, ds is the last. A previous
# run of this test against the same warehouse leaves its results and alert state: start clean.
sql("""
DELETE FROM quality.alert_state WHERE ds = '2024-03-10';
DELETE FROM quality.check_results WHERE run_id LIKE 'qtest-%';
DROP SCHEMA IF EXISTS qtest CASCADE;
CREATE SCHEMA qtest;
CREATE TABLE qtest.parents (id int PRIMARY KEY);
INSERT INTO qtest.parents SELECT generate_series(1, 5);
CREATE TABLE qtest.good (id int, qty int, status text, parent_id int, ts timestamptz, ds date);
CREATE TABLE qtest.bad (LIKE qtest.good);
-- good: 10 rows a day for 6 days, all clean, newest ts 2 h before the end of ds
INSERT INTO qtest.good
SELECT d * 100 + i, 1 + i % 10, CASE WHEN i % 2 = 0 THEN 'open' ELSE 'shipped' END, 1 + i % 5,
       '2024-03-10 22:00+00'::timestamptz - (10 - d) * interval '1 day', '2024-03-05'::date + (d - 5)
FROM generate_series(5, 10) d, generate_series(0, 9) i;
-- bad: the same history, then a spike of 200 rows on ds, old timestamps, and exactly:
--   2 NULL qty, 3 duplicate ids (id 7 three times -> 1 duplicated value), 4 unknown statuses,
--   2 orphan parents, 5 qty out of range (incl. 3 over 100 for custom SQL)
INSERT INTO qtest.bad SELECT * FROM qtest.good WHERE ds < '2024-03-10';
UPDATE qtest.bad SET ts = ts - interval '3 days';
INSERT INTO qtest.bad
SELECT 100000 + i, 1 + i % 10, 'open', 1, '2024-03-07 00:00+00', '2024-03-10' FROM generate_series(1, 186) i;
INSERT INTO qtest.bad VALUES
  (1, NULL, 'open', 1, '2024-03-07 00:00+00', '2024-03-10'), (2, NULL, 'open', 1, '2024-03-07 00:00+00', '2024-03-10'),
  (7, 5, 'open', 1, '2024-03-07 00:00+00', '2024-03-10'), (7, 5, 'open', 1, '2024-03-07 00:00+00', '2024-03-10'),
  (7, 5, 'open', 1, '2024-03-07 00:00+00', '2024-03-10'),
  (8, 5, 'lost', 1, '2024-03-07 00:00+00', '2024-03-10'), (9, 5, 'lost', 1, '2024-03-07 00:00+00', '2024-03-10'),
  (10, 5, 'stolen', 1, '2024-03-07 00:00+00', '2024-03-10'), (11, 5, 'stolen', 1, '2024-03-07 00:00+00', '2024-03-10'),
  (12, 5, 'open', 99, '2024-03-07 00:00+00', '2024-03-10'), (13, 5, 'open', 98, '2024-03-07 00:00+00', '2024-03-10'),
  (14, 0, 'open', 1, '2024-03-07 00:00+00', '2024-03-10'), (15, 50, 'open', 1, '2024-03-07 00:00+00', '2024-03-10'),
  (16, 500, 'open', 1, '2024-03-07 00:00+00', '2024-03-10'), (17, 600, 'open', 1, '2024-03-07 00:00+00', '2024-03-10'),
  (18, 700, 'open', 1, '2024-03-07 00:00+00', '2024-03-10');
""")

# A webhook receiver that can be switched off to simulate a notifier outage.
hook_port = free_port()
hook = WebhookReceiver(hook_port)
received = hook.received

grpc_addr, metrics_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
env = dict(os.environ, STRATA_PIPELINE_SPEC=f"{ROOT}/tests/e2e/fixtures/quality_spec.yaml",
           STRATA_QUALITY_GRPC=grpc_addr, STRATA_QUALITY_METRICS=metrics_addr,
           STRATA_WEBHOOK_URL=f"http://127.0.0.1:{hook_port}/hook", STRATA_WEBHOOK_FORMAT="generic")
log = open(os.path.join(ENV["STRATA_STACK_DIR"], "logs", "quality_e2e.log"), "w")
svc = subprocess.Popen([f"{BIN}/strata-quality"], env=env, stderr=log)
channel = grpc.insecure_channel(grpc_addr)
grpc.channel_ready_future(channel).result(timeout=20)
run_checks = channel.unary_unary("/strata.v1.Quality/RunChecks",
                                 request_serializer=strata_pb2.TaskRequest.SerializeToString,
                                 response_deserializer=strata_pb2.TaskAccepted.FromString)
latest = channel.unary_unary("/strata.v1.Quality/LatestResults",
                             request_serializer=strata_pb2.CheckResultsRequest.SerializeToString,
                             response_deserializer=strata_pb2.CheckResultsReply.FromString)


def run(run_id):
    """Runs the checks and waits until the task is over, alerts included: its results are
    committed and its database session (application_name strata:<run_id>:check:1, held until the
    last alert went out) has ended."""
    run_checks(strata_pb2.TaskRequest(pipeline="qtest", ds=DS, run_id=run_id, task="check", attempt=1), timeout=10)
    if not wait_for(lambda: wh("SELECT count(*) FROM quality.check_results WHERE run_id = %s", (run_id,))[0][0] == 19,
                    120, f"checks of {run_id}"):
        raise SystemExit("checks did not finish")
    if not wait_for(lambda: wh("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                               (f"strata:{run_id}:check:1",))[0][0] == 0, 120, f"alerts of {run_id}"):
        raise SystemExit("the check task did not end")
    return {r[0]: r[1:] for r in wh(
        "SELECT check_name, status, observed, sample::text FROM quality.check_results WHERE run_id = %s", (run_id,))}


try:
    res = run("qtest-1")
    for kind in ["nn", "uniq", "uniq2", "av", "rel", "range", "fresh", "vol", "sql"]:
        check(res[f"{kind}_good"][0] == "pass", f"{kind}: data made to pass passes ({res[f'{kind}_good']})")
        check(res[f"{kind}_bad"][0] == "fail", f"{kind}: data made to fail fails ({res[f'{kind}_bad'][:2]})")
    expected_counts = {"nn_bad": "2", "uniq_bad": "1", "uniq2_bad": "1", "av_bad": "4", "rel_bad": "2",
                       "range_bad": "5", "sql_bad": "3"}
    for name, n in expected_counts.items():
        check(res[name][1] == n, f"{name}: observed {n} failing rows (got {res[name][1]})")
    check(res["fresh_bad"][1] == "96.0 h", f"freshness observes the newest row's age ({res['fresh_bad'][1]})")
    check(res["vol_bad"][1] == "202", f"volume anomaly observes today's 202 rows ({res['vol_bad'][1]})")
    check(res["warn_bad"][0] == "warn", "a warn-severity check that fails is recorded as warn")
    sample = json.loads(res["range_bad"][2])
    check(len(sample) == 5 and all(r["qty"] < 1 or r["qty"] > 10 for r in sample),
          "range keeps a bounded sample of the failing rows")
    check(json.loads(res["uniq_bad"][2]) == [{"id": 7, "occurrences": 3}], "unique's sample names the duplicate")
    check(json.loads(res["nn_good"][2]) == [], "a passing check has no sample")

    failing = sorted(a["check"] for a in received if a["event"] == "check_failing")
    expected_failing = sorted([f"{k}_bad" for k in ["nn", "uniq", "uniq2", "av", "rel", "range", "fresh", "vol",
                                                      "sql", "warn"]])
    check(failing == expected_failing, f"one alert per failing check ({len(failing)}): {failing}")
    check(all("text" not in a for a in received), "the generic payload format has no Slack text")

    received.clear()
    run("qtest-2")
    check(received == [], f"re-running the same ds alerts nothing new ({len(received)} alerts)")
    history = wh("SELECT count(*) FROM quality.check_results WHERE check_name = 'nn_bad' AND ds = %s", (DS,))[0][0]
    check(history == 2, "history keeps both runs' results")
    check(wh("SELECT run_id FROM quality.latest_results WHERE check_name = 'nn_bad' AND ds = %s", (DS,))[0][0] ==
          "qtest-2", "quality.latest_results shows the newest result per check and ds")
    reply = latest(strata_pb2.CheckResultsRequest(ds=DS), timeout=10)
    check(len(reply.results) == 19 and all(r.run_id == "qtest-2" for r in reply.results),
          "LatestResults returns the latest result of every check")

    # Fix two checks: exactly two recovery alerts.
    sql("UPDATE qtest.bad SET qty = 1 WHERE qty IS NULL; UPDATE qtest.bad SET parent_id = 1 WHERE parent_id > 5")
    res = run("qtest-3")
    check(res["nn_bad"][0] == "pass" and res["rel_bad"][0] == "pass", "fixed data passes")
    recovered = sorted(a["check"] for a in received if a["event"] == "check_recovered")
    check(recovered == ["nn_bad", "rel_bad"], f"one recovery alert per fixed check: {recovered}")

    # Notifier outage: checks still complete, the failure is counted, the alert is retried later.
    hook.close()
    received.clear()
    undelivered0 = gauge(metrics_addr, "strata_quality_alerts_total", {"event": "failing", "outcome": "failed"})
    sql("UPDATE qtest.bad SET qty = NULL WHERE id = 1")
    res = run("qtest-4")  # returns once delivery was retried and given up
    check(res["nn_bad"][0] == "fail", "the check result is recorded during the outage")
    undelivered = gauge(metrics_addr, "strata_quality_alerts_total", {"event": "failing", "outcome": "failed"})
    check(undelivered - undelivered0 == 1,
          f"the one undelivered alert is counted in strata_quality_alerts_total{{outcome=failed}} ({undelivered0} -> {undelivered})")
    check(wh("SELECT state FROM quality.alert_state WHERE check_name = 'nn_bad' AND ds = %s", (DS,))[0][0] == "ok",
          "an undelivered alert does not move the alert state, so the next run retries it")
finally:
    svc.terminate()
    svc.wait(timeout=20)

# Profiles of the demo pipeline's staged data (the pipeline test ran before this one).
ds = wh("SELECT max(ds)::text FROM quality.profiles WHERE dataset = 'customers'")[0][0]
prof = dict((r[0], r[1:]) for r in wh(
    "SELECT column_name, row_count, null_count, distinct_count FROM quality.profiles "
    "WHERE dataset = 'customers' AND ds = %s", (ds,)))
actual = wh("SELECT count(*), count(DISTINCT segment), count(DISTINCT customer_id) FROM staging.customers "
            "WHERE ds = %s", (ds,))[0]
check(prof["segment"] == (actual[0], 0, actual[1]), f"profile of customers.segment on {ds} matches staging ({prof['segment']})")
check(prof["customer_id"][2] == actual[2], "distinct count of customer_id matches")
rc, out, _ = stratactl("profile", "--dataset", "customers", "--date", ds)
check(rc == 0 and "segment" in out, "stratactl profile prints the profile")
finish()

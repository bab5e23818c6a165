"""Claims of the docs that no other test checked (issue 17, item 9), end to end on a private stack.

It starts its own stack (infra/stack.sh, local lake) with the demo spec plus one dataset,
`reviews_ignored`: the reviews API again, with the default `schema_drift: ignore`. Then, one
simulated day at a time:
  D1  a clean run (the baseline);
  D2  schema drift: the reviews API grows a field (`language`). `reviews` (schema_drift:
      add_column) stages it as a text column and records it in ops.schema_columns;
      `reviews_ignored` (default ignore) stages the same reviews without it and only counts the
      drift in strata_ingest_schema_drift_total;
  D3  task_retries: load.states fails once (a trigger on staging.states raises on its first
      row, then never again); the run succeeds, ops.task_runs shows attempt 2, ops.task_events
      the failed first attempt;
      then a corrupted bronze part file: one digit of an order_items part file of D3 is changed
      (still valid CSV, so only the CRC in the manifest can tell). Re-running load.order_items
      fails naming the file and stages nothing of the partition; with the file restored the
      same re-run loads exactly the manifest's rows;
  D4  an undelivered alert: the day's checks fail (malformed business records) while the webhook
      receiver is down, so quality.alert_state does not move; with the receiver back, the next
      run of the day delivers the failing alert, and a clean run after it the recovery;
  D5  a controller restart (SIGTERM) mid-run: the run is not failed, it stays running and the
      restarted controller resumes it (succeeded tasks are not run again) to success, as
      docs/operations.md and docs/architecture.md say;
  D6  the same restart while the abandoned attempt of a task is still running when the run is
      resumed.
D5 also holds a `stratactl run` waiting through the graceful restart to polling on (a shutting-down
controller answers CANCELLED), and D6 the resumed run to staging the partition once while the
abandoned attempt still runs (the loader loads one partition at a time).

Environment: STRATA_BUILD_BIN (default <repo>/build/bin); STRATA_PIPELINE_SPEC is ignored (the test writes its own spec from
pipelines/demo). Run with /usr/bin/python3.
"""
import csv
import datetime as dt
import io
import json
import os
import re
import signal
import subprocess
import urllib.request

import psycopg2

from pipeline_copy import demo_variant
from own_stack import FAILURES, Webhook, check, clean_env, gone, pid_of, query, run_on_own_stack, metric as stack_metric, start_service, step, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.abspath(os.environ.get("STRATA_BUILD_BIN") or os.path.join(ROOT, "build", "bin"))
START = dt.date(2024, 1, 1)
DAY = [None] + [(START + dt.timedelta(days=i)).isoformat() for i in range(6)]  # DAY[1] .. DAY[6]

ENV = {}
WEBHOOK = None


# --- reporting -------------------------------------------------------------------------------------
# --- the stack -------------------------------------------------------------------------------------
def write_spec(path):
    """pipelines/demo plus `reviews_ignored`: the same reviews API with the default drift policy."""
    extra = """  - name: reviews_ignored
    source:
      type: http_json
      path: /reviews
      records: reviews
      since_param: updated_since
      since_field: updated_at
      overlap_seconds: 3600
      pagination: {style: cursor, cursor_param: cursor, cursor_field: next_cursor, limit_param: limit, limit: 100}
      auth: {type: bearer, env: STRATA_REVIEWS_TOKEN}
      rate_limit: {rps: 50, burst: 10}
    key: [review_id]
    columns:
      - {name: review_id, type: int}
      - {name: business_id, type: text}
      - {name: stars, type: int}
      - {name: title, type: text}
      - {name: updated_at, type: timestamp}

"""
    marker = "# Near-real-time path"

    def add(demo):
        assert marker in demo, "pipelines/demo/pipeline.yaml changed: cannot place the extra dataset"
        return demo.replace(marker, extra + marker, 1)
    return demo_variant(path, add)


def run(*args, timeout=900):
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=ENV)
    return p.returncode, p.stdout, p.stderr


def stratactl(*args, timeout=900):
    return run(f"{BIN}/stratactl", *args, timeout=timeout)


def sim_advance(day):
    rc, _, err = run(f"{BIN}/strata-source-sim", "advance", "--through", day, timeout=300)
    if rc != 0:
        raise RuntimeError(f"strata-source-sim advance --through {day}: {err.strip()}")


def sim_control(**knobs):
    qs = "&".join(f"{k}={v}" for k, v in knobs.items())
    req = urllib.request.Request(f"{ENV['STRATA_SOURCE_HTTP']}/control?{qs}", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200


def wh(sql, params=None):
    return query(ENV["STRATA_PG_DSN"], sql, params)


def src(sql, params=None):
    return query(ENV["STRATA_SOURCE_DSN"], sql, params)


def scrape(addr):
    with urllib.request.urlopen(f"http://{addr}/metrics", timeout=10) as r:
        return r.read().decode()


def metric(service, name, labels):
    return stack_metric(ENV, service, name, labels)


def run_day(day, expect="succeeded"):
    rc, out, err = stratactl("--json", "run", "--date", day, "--timeout", "800")
    info = json.loads(out) if out.strip().startswith("{") else {}
    tasks = {t["task"]: t for t in info.get("tasks", [])}
    bad = [f"{t['task']}: {t['state']} {t.get('message', '')}" for t in info.get("tasks", [])
           if t["state"] != "succeeded"]
    check(info.get("state") == expect and (rc == 0) == (expect == "succeeded"),
          f"run {day}: {expect} (exit {rc}, state {info.get('state')}: {info.get('message', '')})",
          bad + ([err.strip()[:300]] if err.strip() else []))
    return info, tasks


def task_rows(run_id):
    """task -> (state, attempt, started_at, message) from ops.task_runs."""
    return {t: (s, a, st, m) for t, s, a, st, m in
            wh("SELECT task, state, attempt, started_at, message FROM ops.task_runs WHERE run_id = %s", (run_id,))}


# --- the claims ------------------------------------------------------------------------------------
def columns_of(table):
    return [c for (c,) in wh("SELECT column_name FROM information_schema.columns WHERE table_schema = 'staging' "
                             "AND table_name = %s ORDER BY ordinal_position", (table,))]


def claim_schema_drift():
    step(f"b. schema drift on {DAY[2]}: add_column stages the new field, ignore only counts it")
    check("language" not in columns_of("reviews") and "language" not in columns_of("reviews_ignored"),
          "before the drift neither staging.reviews nor staging.reviews_ignored has a 'language' column")
    sim_advance(DAY[2])
    sim_control(extra_field=1)
    try:
        info, _ = run_day(DAY[2])
    finally:
        sim_control(extra_field=0)
    # add_column: a text column after the declared ones, remembered in ops.schema_columns.
    cols = wh("SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'staging' "
              "AND table_name = 'reviews' ORDER BY ordinal_position")
    check(cols and cols[-1] == ("language", "text"),
          f"staging.reviews gained 'language' as its last column, type text ({cols})")
    recorded = wh("SELECT pipeline, dataset, column_name FROM ops.schema_columns ORDER BY dataset, column_name")
    check(recorded == [("demo", "reviews", "language")],
          f"ops.schema_columns records exactly (demo, reviews, language) ({recorded})")
    staged = wh("SELECT count(*), count(*) FILTER (WHERE language = 'en') FROM staging.reviews WHERE ds = %s",
                (DAY[2],))[0] if "language" in columns_of("reviews") else (None, None)
    check(staged[0] and staged[1] == staged[0],
          f"every review staged for {DAY[2]} carries the API's value language='en' ({staged[1]} of {staged[0]})")
    # ignore: the same records, staged without the field; the drift is only counted.
    check("language" not in columns_of("reviews_ignored"),
          f"staging.reviews_ignored has no 'language' column ({columns_of('reviews_ignored')})")
    ids = wh("SELECT review_id FROM staging.reviews WHERE ds = %s ORDER BY 1", (DAY[2],))
    ids_ignored = wh("SELECT review_id FROM staging.reviews_ignored WHERE ds = %s ORDER BY 1", (DAY[2],))
    check(ids and ids == ids_ignored,
          f"reviews_ignored staged the same {len(ids_ignored)} reviews as reviews ({len(ids)}) for {DAY[2]}")
    for ds_name in ("reviews_ignored", "reviews"):
        n = metric("ingest", "strata_ingest_schema_drift_total",
                   {"dataset": ds_name, "field": "language", "change": "appeared"})
        check(n == 1, f"strata_ingest_schema_drift_total{{dataset={ds_name},field=language,change=appeared}} "
                      f"is 1 (one extraction saw it): {n}")
    drift_events = wh("SELECT count(*) FROM ops.task_events WHERE run_id = %s AND task = 'extract.reviews_ignored' "
                      "AND message LIKE %s", (info.get("run_id"), "%field 'language' appeared%(schema_drift: ignore)%"))
    check(drift_events[0][0] >= 1, "the run's log notes the ignored drift on extract.reviews_ignored "
                                   f"({drift_events[0][0]} event(s))")


def claim_task_retries():
    step(f"c. task_retries on {DAY[3]}: load.states fails once, is retried, the run succeeds")
    # Sequences are not transactional: the first row ever inserted after this raises, later ones pass.
    wh("""CREATE SEQUENCE public.claims_fail_once;
          CREATE FUNCTION public.claims_fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
          BEGIN
            IF nextval('public.claims_fail_once') = 1 THEN
              RAISE EXCEPTION 'claims: injected failure of the first load';
            END IF;
            RETURN NEW;
          END $$;
          CREATE TRIGGER claims_fail_once BEFORE INSERT ON staging.states
            FOR EACH ROW EXECUTE FUNCTION public.claims_fail_once()""")
    sim_advance(DAY[3])
    retrying_before = metric("controller", "strata_controller_tasks_total", {"kind": "load", "state": "retrying"}) or 0
    try:
        info, tasks = run_day(DAY[3])
    finally:
        wh("DROP TRIGGER claims_fail_once ON staging.states; DROP FUNCTION public.claims_fail_once(); "
           "DROP SEQUENCE public.claims_fail_once")
    run_id = info.get("run_id")
    rows = task_rows(run_id)
    st = rows.get("load.states", (None, None, None, None))
    check(st[0] == "succeeded" and st[1] == 2, f"ops.task_runs: load.states succeeded at attempt 2 ({st[:2]})")
    events = wh("SELECT state, attempt, message FROM ops.task_events WHERE run_id = %s AND task = 'load.states' "
                "ORDER BY at, attempt", (run_id,))
    states = [(s, a) for s, a, _ in events]
    check(states == [("running", 1), ("retrying", 1), ("running", 2), ("succeeded", 2)],
          f"ops.task_events: running 1, retrying 1, running 2, succeeded 2 ({states})")
    msg = next((m for s, _, m in events if s == "retrying"), "")
    check("claims: injected failure of the first load" in msg, f"the retried attempt's error is kept ({msg[:160]})")
    others = {t: v[1] for t, v in rows.items() if t != "load.states" and v[1] != 1}
    check(not others, f"no other task needed a second attempt ({others})")
    retrying_after = metric("controller", "strata_controller_tasks_total", {"kind": "load", "state": "retrying"})
    check(retrying_after is not None and retrying_after - retrying_before == 1,
          f"strata_controller_tasks_total{{kind=load,state=retrying}} grew by 1 ({retrying_before} -> {retrying_after})")
    # What the second attempt staged is the page's table (counted from the page itself).
    expected = page_states()
    staged = wh("SELECT count(*) FROM staging.states WHERE ds = %s", (DAY[3],))[0][0]
    check(expected > 0 and staged == expected, f"staging.states holds the page's {expected} states for {DAY[3]} ({staged})")
    return run_id


def claim_crc(run_id):
    step(f"a. a corrupted bronze part file of order_items {DAY[3]} is rejected by load, naming the file")
    part_dir = os.path.join(ENV["STRATA_LAKE_ROOT"], "bronze", "order_items", f"dt={DAY[3]}")
    manifest = json.load(open(os.path.join(part_dir, "_manifest.json")))
    check(manifest.get("format", "csv") == "csv" and manifest.get("compression", "none") == "none",
          f"order_items' bronze is plain CSV ({manifest.get('format')}, {manifest.get('compression')})")
    victim = os.path.join(part_dir, manifest["files"][0]["path"])
    original = open(victim, "rb").read()
    lines = original.decode().split("\n")
    # One digit of the first row's unit_price changes: still a valid row, so only the checksum can
    # tell. (Column positions from the file's own header line.)
    ci = next(csv.reader([lines[0]])).index("unit_price")
    row = next(csv.reader([lines[1]]))
    price = row[ci]
    pos = max(i for i, ch in enumerate(price) if ch.isdigit())
    row[ci] = price[:pos] + str((int(price[pos]) + 1) % 10) + price[pos + 1:]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="").writerow(row)
    lines[1] = buf.getvalue()
    corrupted = "\n".join(lines).encode()
    check(corrupted != original and len(corrupted) == len(original),
          f"the part file differs in one digit only ({price} -> {row[ci]}) in {victim}")
    loads_before = wh("SELECT run_id, manifest_rows, loaded_rows, loaded_at FROM ops.loads "
                      "WHERE dataset = 'order_items' AND ds = %s", (DAY[3],))
    check(loads_before and loads_before[0][2] == manifest["rows"] > 0,
          f"before: ops.loads has the partition's {manifest['rows']} rows ({loads_before})")
    with open(victim, "wb") as f:
        f.write(corrupted)
    # A fresh load of the day: its staged rows are removed first, so anything staged is the new load's.
    wh("DELETE FROM staging.order_items WHERE ds = %s", (DAY[3],))
    rc, out, err = stratactl("--json", "clear", "--run", run_id, "--task", "load.order_items", "--wait")
    info = json.loads(out) if out.strip().startswith("{") else {}
    tasks = {t["task"]: t for t in info.get("tasks", [])}
    lo = tasks.get("load.order_items", {})
    check(rc != 0 and info.get("state") == "failed" and lo.get("state") == "failed",
          f"the re-run of load.order_items fails (exit {rc}, run {info.get('state')}, task {lo.get('state')})",
          [err.strip()[:300]])
    check(f"checksum mismatch in {victim}" in lo.get("message", "") and
          f"checksum mismatch in {victim}" in info.get("message", ""),
          f"the error names the file ({lo.get('message', '')[:200]})")
    check(tasks.get("model", {}).get("state") == "skipped" and tasks.get("publish", {}).get("state") == "skipped",
          "nothing downstream ran (model and publish skipped)")
    staged = wh("SELECT count(*) FROM staging.order_items WHERE ds = %s", (DAY[3],))[0][0]
    check(staged == 0, f"nothing of the partition is staged ({staged} rows in staging.order_items for {DAY[3]})")
    loads_after = wh("SELECT run_id, manifest_rows, loaded_rows, loaded_at FROM ops.loads "
                     "WHERE dataset = 'order_items' AND ds = %s", (DAY[3],))
    check(loads_after == loads_before, "ops.loads is unchanged by the rejected load")
    # The same re-run with the file as written loads the manifest's rows: the checksum was the reason.
    with open(victim, "wb") as f:
        f.write(original)
    rc, out, err = stratactl("--json", "clear", "--run", run_id, "--task", "load.order_items", "--wait")
    info = json.loads(out) if out.strip().startswith("{") else {}
    staged = wh("SELECT count(*) FROM staging.order_items WHERE ds = %s", (DAY[3],))[0][0]
    check(rc == 0 and info.get("state") == "succeeded" and staged == manifest["rows"],
          f"with the file restored the same re-run succeeds and stages the manifest's {manifest['rows']} rows "
          f"(exit {rc}, {info.get('state')}, {staged} rows)", [err.strip()[:300]])


def claim_webhook_retry():
    global WEBHOOK
    step(f"d. {DAY[4]}: an alert the receiver missed is delivered by the next run once it is back")
    name = "dead_letters:businesses"
    sim_advance(DAY[4])
    WEBHOOK.close()
    WEBHOOK = None
    failed_before = metric("quality", "strata_quality_alerts_total", {"event": "failing", "outcome": "failed"}) or 0
    sim_control(malformed_every=7)
    info, _ = run_day(DAY[4], expect="failed")
    failing = wh("SELECT check_name FROM quality.check_results WHERE run_id = %s AND status = 'fail'",
                 (info.get("run_id"),))
    check((name,) in failing, f"the run's check {name} failed ({failing})")
    # Alerts go out after the run has its answer: wait until quality has given up on this one.
    gave_up = wait_until(lambda: (metric("quality", "strata_quality_alerts_total",
                                         {"event": "failing", "outcome": "failed"}) or 0) > failed_before,
                         120, "quality to give up delivering the alert")
    check(gave_up, "strata_quality_alerts_total{event=failing,outcome=failed} grew: the alert was not delivered")
    state = wh("SELECT state FROM quality.alert_state WHERE check_name = %s AND ds = %s", (name, DAY[4]))
    check(state == [], f"quality.alert_state did not move for an undelivered alert ({state})")

    WEBHOOK = Webhook(int(ENV["STRATA_WEBHOOK_PORT"]))  # the receiver is back
    info2, _ = run_day(DAY[4], expect="failed")
    got = wait_until(lambda: any(a.get("event") == "check_failing" and a.get("check") == name and
                                 a.get("ds") == DAY[4] for a in WEBHOOK.received), 120, "the failing alert")
    check(got, f"the next run of {DAY[4]} delivered the failing alert for {name}",
          [json.dumps(a)[:200] for a in WEBHOOK.received])
    hit = [a for a in WEBHOOK.received if a.get("event") == "check_failing" and a.get("check") == name]
    check(len(hit) == 1 and hit[0].get("run_id") == info2.get("run_id"),
          f"exactly once, from that run ({[a.get('run_id') for a in hit]} vs {info2.get('run_id')})")
    check(wait_until(lambda: wh("SELECT state FROM quality.alert_state WHERE check_name = %s AND ds = %s",
                                (name, DAY[4])) == [("failing",)], 60, "alert_state failing"),
          "quality.alert_state moved to failing once the alert was delivered")

    sim_control(malformed_every=0)
    info3, _ = run_day(DAY[4])
    got = wait_until(lambda: any(a.get("event") == "check_recovered" and a.get("check") == name and
                                 a.get("ds") == DAY[4] for a in WEBHOOK.received), 120, "the recovery alert")
    check(got, f"a clean run of {DAY[4]} delivered the recovery of {name}")
    check(wait_until(lambda: wh("SELECT state FROM quality.alert_state WHERE check_name = %s AND ds = %s",
                                (name, DAY[4])) == [("ok",)], 60, "alert_state ok"),
          "and quality.alert_state is ok")
    failing_again = [a for a in WEBHOOK.received if a.get("event") == "check_failing" and a.get("check") == name]
    check(len(failing_again) == 1, f"the failing alert was not sent again ({len(failing_again)})")


def page_states():
    """How many states the simulator's page lists (what one load of `states` stages)."""
    with urllib.request.urlopen(f"{ENV['STRATA_SOURCE_HTTP']}/states.html", timeout=10) as r:
        page = r.read().decode()
    table = re.search(r'<table id="states".*?</table>', page, re.S)
    return len(re.findall(r"<tr>\s*<td>", table.group(0))) if table else -1


def latest_run(ds):
    r = wh("SELECT run_id FROM ops.runs WHERE ds = %s ORDER BY created_at DESC LIMIT 1", (ds,))
    return r[0][0] if r else None


def run_state(rid):
    return wh("SELECT state, message FROM ops.runs WHERE run_id = %s", (rid,))[0]


def controller_log():
    return open(os.path.join(ENV["STRATA_STACK_DIR"], "logs", "controller.log")).read()


def stop_controller_mid_run(ds):
    """Starts a run of ds (stratactl run, waiting), lets it reach load.states (held by `blocker`'s
    lock on staging.states, taken by the caller), stops the controller with SIGTERM. Returns (run_id, tasks succeeded
    before the stop, the waiting stratactl, its stderr file)."""
    err_file = open(os.path.join(ENV["STRATA_STACK_DIR"], "logs", f"claims_stratactl_run_{ds}.err"), "w+")
    waiter = subprocess.Popen([f"{BIN}/stratactl", "--json", "run", "--date", ds, "--timeout", "800"],
                              stdout=subprocess.PIPE, stderr=err_file, text=True, env=ENV)
    mid = wait_until(lambda: latest_run(ds) is not None and
                     task_rows(latest_run(ds)).get("load.states", ("",))[0] == "running", 300, "load.states running")
    check(mid, f"run {ds} is mid-way: load.states is running behind a lock")
    rid = latest_run(ds)
    done_before = {t: v for t, v in task_rows(rid).items() if v[0] == "succeeded"}
    check(any(t.startswith("extract.") for t in done_before),
          f"some tasks had succeeded before the restart ({len(done_before)}: {sorted(done_before)[:4]}...)")
    old = pid_of(ENV, "controller")
    os.kill(old, signal.SIGTERM)
    check(wait_until(lambda: gone(old), 60, "the controller to stop"), "the controller stopped on SIGTERM")
    state = run_state(rid)
    check(state[0] == "running", f"with the controller down the run is still 'running', not failed ({state})")
    check(f"shutting down mid-run run_id={rid}" in controller_log(),
          "the controller logged that the run will be resumed")
    return rid, done_before, waiter, err_file


def claim_controller_restart():
    step(f"e. {DAY[5]}: a controller restart mid-run: the run is resumed (docs/operations.md, docs/architecture.md)")
    expected = page_states()
    sim_advance(DAY[5])
    blocker = psycopg2.connect(ENV["STRATA_PG_DSN"])
    blocker.cursor().execute("LOCK TABLE staging.states IN ACCESS EXCLUSIVE MODE")  # holds load.states
    waiter = None
    try:
        rid, done_before, waiter, err_file = stop_controller_mid_run(DAY[5])
        # The abandoned attempt finishes while no controller runs; its answer waits on the bus.
        blocker.rollback()
        check(wait_until(lambda: wh("SELECT count(*) FROM staging.states WHERE ds = %s", (DAY[5],))[0][0] ==
                         expected, 120, "the first attempt of load.states to finish"),
              "the abandoned first attempt of load.states finished while the controller was down")
        start_service(ENV, "controller", [f"{BIN}/strata-controller"])
        check(wait_until(lambda: f"resuming run_id={rid}" in controller_log(), 120, "the resume"),
              "the restarted controller resumed the run")
        finished = wait_until(lambda: run_state(rid)[0] in ("succeeded", "failed", "cancelled"), 600,
                              "the resumed run to finish")
        final = run_state(rid)
        check(finished and final[0] == "succeeded", f"the resumed run succeeded ({final})")
        after = task_rows(rid)
        rerun = [t for t, v in done_before.items() if after.get(t) != v]
        check(not rerun, f"tasks that had succeeded were not run again (same attempt and start): {rerun}")
        ls = after.get("load.states", (None, 0))
        check(ls[0] == "succeeded" and ls[1] == 2, f"load.states was launched again by the new leader ({ls[:2]})")
        staged = wh("SELECT count(*) FROM staging.states WHERE ds = %s", (DAY[5],))[0][0]
        check(staged == expected, f"staging.states holds the page's {expected} states once ({staged})")
        try:
            out, _ = waiter.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            waiter.kill()
            out, _ = waiter.communicate()
        info = json.loads(out) if out.strip().startswith("{") else {}
        err_file.flush()
        err_file.seek(0)
        waiter_err = err_file.read().strip()
        err_file.close()
        waited = waiter.returncode == 0 and info.get("state") == "succeeded" and info.get("run_id") == rid
        check(waited, f"the stratactl run waiting through the restart printed the run succeeded and exited 0 "
                          f"(exit {waiter.returncode}, {info.get('state')}; stderr: {waiter_err[-160:]})")
        # A shutting-down controller answers the GetRun it still receives CANCELLED; stratactl
        # counts that as transient, like UNAVAILABLE, and polls on.
    finally:
        blocker.close()
        if waiter is not None and waiter.poll() is None:
            waiter.kill()

    step(f"e2. {DAY[6]}: the same, but the abandoned attempt is still running when the run is resumed")
    sim_advance(DAY[6])
    blocker = psycopg2.connect(ENV["STRATA_PG_DSN"])
    blocker.cursor().execute("LOCK TABLE staging.states IN ACCESS EXCLUSIVE MODE")
    waiter = None
    try:
        rid, done_before, waiter, err_file = stop_controller_mid_run(DAY[6])
        err_file.close()
        start_service(ENV, "controller", [f"{BIN}/strata-controller"])
        # Both attempts' statements wait for the lock (their connections are named after the attempt).
        waiting = lambda: sorted(a for (a,) in wh(
            "SELECT application_name FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND application_name "
            "IN (%s, %s)", (f"strata:{rid}:load.states:1", f"strata:{rid}:load.states:2")))
        check(wait_until(lambda: len(waiting()) == 2, 120, "both attempts of load.states waiting for the lock"),
              f"the restarted controller resumed the run: load.states attempt 2 waits in the loader beside the "
              f"abandoned attempt 1 ({waiting()})")
        blocker.rollback()
        finished = wait_until(lambda: run_state(rid)[0] in ("succeeded", "failed", "cancelled"), 600,
                              "the resumed run to finish")
        final = run_state(rid)
        staged = wh("SELECT count(*) FROM staging.states WHERE ds = %s", (DAY[6],))[0][0]
        check(finished, f"the resumed run finished ({final})")
        # The loader loads one partition at a time (an advisory lock per dataset and day): attempt 2
        # waits for the abandoned attempt 1, then replaces what it staged.
        check(final[0] == "succeeded" and staged == expected,
              f"with both attempts in flight the resumed run still succeeds and stages the {expected} states "
              f"once (run {final[0]}: {final[1]}; {staged} rows in staging.states for {DAY[6]})")
    finally:
        blocker.close()
        if waiter is not None and waiter.poll() is None:
            waiter.kill()


def scenario():
    step("stack up; CDC slot ready")
    check(wait_until(lambda: src("SELECT count(*) FROM pg_replication_slots WHERE slot_type = 'logical'")[0][0] > 0,
                     120, "ingest to create the replication slot"), "ingest created the CDC replication slot")
    step(f"{DAY[1]}: a clean run")
    sim_advance(DAY[1])
    run_day(DAY[1])
    rid3 = None
    for claim in (claim_schema_drift, claim_task_retries, claim_crc, claim_webhook_retry, claim_controller_restart):
        # A claim that breaks with an error is a failure; the next ones still run on the same stack.
        try:
            if claim is claim_crc:
                claim(rid3)
            elif claim is claim_task_retries:
                rid3 = claim()
            else:
                claim()
        except Exception as e:
            import traceback
            traceback.print_exc()
            check(False, f"{claim.__name__} ended with an error: {e}")


def main():
    def prepare(stack_dir):
        spec = write_spec(os.path.join(stack_dir, "claims"))
        return {"STRATA_PIPELINE_SPEC": spec, "STRATA_TASK_RETRIES": "2"}

    def with_stack(env, webhook):
        global ENV, WEBHOOK
        ENV, WEBHOOK = env, webhook
        try:
            scenario()
        finally:
            if WEBHOOK is not webhook and WEBHOOK is not None:  # the scenario restarts its receiver
                WEBHOOK.close()

    run_on_own_stack(ROOT, BIN, "strata-claims-", clean_env(), ["--start", START.isoformat()], with_stack, FAILURES,
                     prepare)


if __name__ == "__main__":
    main()

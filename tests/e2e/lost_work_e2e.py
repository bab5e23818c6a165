"""Lost work is found in seconds, not by the task timeout (issue 16, item 1), end to end on a
private stack.

Workers keep a lease on every task they hold (common/task_lease.h); the controller re-dispatches
a task whose lease lapsed. With leases of 3 s and a task timeout of 600 s:
  D1  a clean run (the baseline: how many states the simulator's page holds);
  D2  load.states is held inside PostgreSQL by a lock the test takes on staging.states, so the
      loader is seen holding attempt 1 (its statement waits, named by application_name); the
      loader is killed with SIGKILL and started again, and the lock released. The controller
      must re-dispatch load.states within a minute (attempt 2, on the restarted loader), the
      run succeed, ops.task_events record attempt 1's loss, strata_controller_lost_tasks_total
      count it, and staging.states hold the page's states once;
  D3  the same for quality: the checks task is held by a lock on quality.check_results (its
      results wait to be written), the quality service killed and restarted; check is
      re-dispatched and the run succeeds;
  D4  batches lost on the bus: lake-export is paused (SIGSTOP) until every extract of the day
      has put its batches on strata:batches, then the stream is deleted (what a Redis restart
      without persistence leaves) and lake-export resumed. The controller must see the exporter
      drained with partitions uncommitted, extract again (attempt 2) and finish the run without
      a human: staging.order_items then holds exactly the source's lines of the day, once, and
      the bronze manifest lists only the second extraction's parts.

Environment: STRATA_BUILD_BIN (default <repo>/build/bin). Run with /usr/bin/python3.
"""
import datetime as dt
import json
import os
import signal
import subprocess
import time

import psycopg2

from own_stack import FAILURES, check, clean_env, gone, pid_of, query, run_on_own_stack, metric as stack_metric, start_service, step, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.abspath(os.environ.get("STRATA_BUILD_BIN") or os.path.join(ROOT, "build", "bin"))
START = dt.date(2024, 1, 1)
DAY = [None] + [(START + dt.timedelta(days=i)).isoformat() for i in range(4)]
LEASE_SECONDS = 3
TIMEOUT_SECONDS = 600
REDISPATCH_WITHIN = 60  # generous on a loaded 2-core machine; the timeout would take 600 s

ENV = {}


def wh(sql, params=None):
    return query(ENV["STRATA_PG_DSN"], sql, params)


def run(*args, timeout=900):
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=ENV)
    return p.returncode, p.stdout, p.stderr


def sim_advance(day):
    rc, _, err = run(f"{BIN}/strata-source-sim", "advance", "--through", day, timeout=300)
    if rc != 0:
        raise RuntimeError(f"strata-source-sim advance --through {day}: {err.strip()}")


def metric(service, name):
    return stack_metric(ENV, service, name)


def run_state(run_id):
    rows = wh("SELECT state FROM ops.runs WHERE run_id = %s", (run_id,))
    return rows[0][0] if rows else None


def task_row(run_id, task):
    rows = wh("SELECT state, attempt FROM ops.task_runs WHERE run_id = %s AND task = %s", (run_id, task))
    return rows[0] if rows else None


def kill_holding_worker(day, task, service, lock_sql):
    """Runs `day` while the test holds `lock_sql`, kills `service` once it is seen waiting on the
    lock for `task` attempt 1, starts it again, releases the lock. Returns the finished run."""
    blocker = psycopg2.connect(ENV["STRATA_PG_DSN"])
    waiter = None
    try:
        cur = blocker.cursor()
        cur.execute(lock_sql)  # held until rollback
        waiter = subprocess.Popen([f"{BIN}/stratactl", "--json", "run", "--date", day, "--timeout", "800"], env=ENV,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        run_id = None

        def held():
            nonlocal run_id
            rows = wh("SELECT application_name FROM pg_stat_activity WHERE application_name LIKE %s "
                      "AND wait_event_type = 'Lock'", (f"strata:%:{task}:1",))
            if rows:
                run_id = rows[0][0].split(":")[1]
            return bool(rows)

        if not check(wait_until(held, 300, f"{task} attempt 1 to wait on the test's lock"),
                     f"{service} is seen holding {task} attempt 1 (its statement waits on the test's lock)"):
            return None, None
        check(task_row(run_id, task) == ("running", 1), f"ops.task_runs shows {task} running at attempt 1",
              [str(task_row(run_id, task))])
        pid = pid_of(ENV, service)
        os.kill(pid, signal.SIGKILL)
        killed_at = time.time()
        check(wait_until(lambda: gone(pid), 30, f"{service} to die"), f"{service} (pid {pid}) killed with SIGKILL")
        start_service(ENV, service, [f"{BIN}/strata-{service.replace('_', '-')}"])
        blocker.rollback()  # the abandoned attempt's statement may now run; its answer is stale anyway

        def redispatched():
            row = task_row(run_id, task)
            return row is not None and row[1] >= 2
        found = wait_until(redispatched, REDISPATCH_WITHIN, f"{task} to be re-dispatched")
        took = time.time() - killed_at
        check(found, f"{task} re-dispatched (attempt 2) {took:.0f} s after the kill, within {REDISPATCH_WITHIN} s "
                     f"(task timeout {TIMEOUT_SECONDS} s)", [str(task_row(run_id, task))])
        out, err = waiter.communicate(timeout=800)
        info = json.loads(out) if out.strip().startswith("{") else {}
        check(waiter.returncode == 0 and info.get("state") == "succeeded",
              f"the run of {day} succeeds (exit {waiter.returncode}, state {info.get('state')})", [err.strip()[:300]])
        return run_id, info
    finally:
        blocker.close()
        if waiter is not None and waiter.poll() is None:
            waiter.kill()


def scenario():
    step(f"{DAY[1]}: a clean run")
    sim_advance(DAY[1])
    rc, out, err = run(f"{BIN}/stratactl", "--json", "run", "--date", DAY[1], "--timeout", "800")
    check(rc == 0, f"run {DAY[1]} succeeds (exit {rc})", [err.strip()[:300]])
    states = wh("SELECT count(*) FROM staging.states WHERE ds = %s", (DAY[1],))[0][0]
    check(states > 0, f"staging.states holds the page's {states} states for {DAY[1]}")
    check(metric("controller", "strata_controller_lost_tasks_total") == 0,
          "strata_controller_lost_tasks_total is present and 0 before anything is lost")

    step(f"{DAY[2]}: the loader is killed holding load.states")
    sim_advance(DAY[2])
    run_id, _ = kill_holding_worker(DAY[2], "load.states", "warehouse_loader",
                                    "LOCK TABLE staging.states IN EXCLUSIVE MODE")
    if run_id:
        check(task_row(run_id, "load.states") == ("succeeded", 2), "load.states succeeded at attempt 2",
              [str(task_row(run_id, "load.states"))])
        events = wh("SELECT attempt, state, message FROM ops.task_events WHERE run_id = %s AND task = 'load.states' "
                    "ORDER BY id", (run_id,))
        check(any(a == 1 and "lease lapsed" in (m or "") for a, _, m in events),
              "ops.task_events records attempt 1 lost with its lease", [str(e) for e in events])
        staged = wh("SELECT count(*), count(DISTINCT abbreviation) FROM staging.states WHERE ds = %s", (DAY[2],))[0]
        check(staged == (states, states), f"staging.states holds the {states} states of {DAY[2]} once",
              [f"{staged[0]} rows, {staged[1]} distinct"])
    lost = metric("controller", "strata_controller_lost_tasks_total")
    check(lost is not None and lost >= 1, f"strata_controller_lost_tasks_total counted the loss ({lost})")

    step(f"{DAY[3]}: the quality service is killed holding the checks")
    sim_advance(DAY[3])
    before = metric("controller", "strata_controller_lost_tasks_total") or 0
    run_id, _ = kill_holding_worker(DAY[3], "check", "quality", "LOCK TABLE quality.check_results IN EXCLUSIVE MODE")
    if run_id:
        check(task_row(run_id, "check") == ("succeeded", 2), "check succeeded at attempt 2",
              [str(task_row(run_id, "check"))])
        results = wh("SELECT count(*) FROM quality.check_results WHERE run_id = %s", (run_id,))[0][0]
        check(results > 0, f"the re-dispatched checks recorded their results ({results} rows)")
    after = metric("controller", "strata_controller_lost_tasks_total")
    check(after is not None and after >= before + 1, f"strata_controller_lost_tasks_total went up ({before} → {after})")

    lost_batches()


def redis(*args):
    p = subprocess.run(["redis-cli", "-p", ENV["STRATA_REDIS_PORT"], *args], capture_output=True, text=True,
                       timeout=30, env=ENV)
    return p.stdout.strip()


def lost_batches():
    step(f"{DAY[4]}: the day's batches are lost on the bus")
    sim_advance(DAY[4])
    before = metric("controller", "strata_controller_lost_batches_total")
    check(before == 0, f"strata_controller_lost_batches_total is present and 0 ({before})")
    exporter = pid_of(ENV, "lake_export")
    os.kill(exporter, signal.SIGSTOP)
    waiter = subprocess.Popen([f"{BIN}/stratactl", "--json", "run", "--date", DAY[4], "--timeout", "800"], env=ENV,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def extracted():
            rows = wh("SELECT r.run_id, count(*) FILTER (WHERE t.state = 'succeeded'), count(*) FROM ops.runs r "
                      "JOIN ops.task_runs t USING (run_id) WHERE r.ds = %s AND t.task LIKE 'extract.%%' "
                      "GROUP BY r.run_id", (DAY[4],))
            return rows[0][0] if rows and rows[0][1] == rows[0][2] else None
        if not check(wait_until(lambda: extracted() is not None, 300, "every extract of the day to succeed"),
                     "every extract of the day succeeded while lake-export was paused"):
            return
        run_id = extracted()
        queued = int(redis("XLEN", "strata:batches") or 0)
        check(queued > 0, f"the day's batches wait on strata:batches ({queued} entries)")
        check(redis("DEL", "strata:batches") == "1", "strata:batches deleted (the stream a restart without AOF loses)")
        os.kill(exporter, signal.SIGCONT)
        out, err = waiter.communicate(timeout=800)
        info = json.loads(out) if out.strip().startswith("{") else {}
        check(waiter.returncode == 0 and info.get("state") == "succeeded",
              f"the run of {DAY[4]} succeeds without a human (exit {waiter.returncode}, state {info.get('state')})",
              [err.strip()[:300]])
        check(task_row(run_id, "extract.order_items") == ("succeeded", 2), "extract.order_items ran again (attempt 2)",
              [str(task_row(run_id, "extract.order_items"))])
        events = wh("SELECT message FROM ops.task_events WHERE run_id = %s AND task = 'export.order_items' "
                    "ORDER BY id", (run_id,))
        check(any("gone from the bus" in (m or "") for (m,) in events),
              "ops.task_events record why export.order_items extracted again", [str(e) for e in events])
        lines = query(ENV["STRATA_SOURCE_DSN"], "SELECT count(*) FROM shop.order_items WHERE updated_at >= %s::date "
                      "AND updated_at < %s::date + 1", (DAY[4], DAY[4]))[0][0]
        staged = wh("SELECT count(*), count(DISTINCT (order_id, line_no)) FROM staging.order_items WHERE ds = %s",
                    (DAY[4],))[0]
        check(lines > 0 and staged == (lines, lines),
              f"staging.order_items holds the source's {lines} lines of {DAY[4]} once", [f"{staged}"])
        manifest = json.load(open(os.path.join(ENV["STRATA_LAKE_ROOT"], "bronze", "order_items", f"dt={DAY[4]}",
                                               "_manifest.json")))
        check(manifest["run_id"] == run_id and sum(f["rows"] for f in manifest["files"]) == lines,
              f"the bronze manifest of {DAY[4]} is this run's and counts {lines} rows",
              [f"{manifest['run_id']} {sum(f['rows'] for f in manifest['files'])}"])
        after = metric("controller", "strata_controller_lost_batches_total")
        check(after is not None and after >= 1, f"strata_controller_lost_batches_total counted it ({after})")
    finally:
        try:
            os.kill(exporter, signal.SIGCONT)
        except OSError:
            pass
        if waiter.poll() is None:
            waiter.kill()


def main():
    def with_stack(env, webhook):
        global ENV
        ENV = env
        scenario()

    run_on_own_stack(ROOT, BIN, "strata-lost-work-", clean_env(), ["--start", START.isoformat()], with_stack, FAILURES,
                     lambda _: {"STRATA_TASK_LEASE_SECONDS": str(LEASE_SECONDS),
                                "STRATA_TASK_TIMEOUT_SECONDS": str(TIMEOUT_SECONDS)})


if __name__ == "__main__":
    main()

"""Three claims of the controller that no other test checked (issue 17, item 9), end to end on a
private stack (infra/stack.sh, demo spec, STRATA_MAX_ACTIVE_RUNS=2):

  a. max_active_runs (docs/operations.md "The leader executes at most max_active_runs runs at
     once"): a backfill of four days is sampled while it runs (ops.runs and the
     strata_controller_active_runs gauge): runs are seen waiting while two run, never more than
     two run, and the runs' own [started_at, finished_at) intervals never overlap more than two
     deep; all four succeed.
  b. a late answer of a cancelled attempt is ignored (docs/operations.md; the controller fences
     answers by attempt): load.states of a run is held behind a table lock, the run is cancelled
     (the attempt keeps waiting in PostgreSQL), then `stratactl clear` starts attempt 2, which
     waits in the loader behind attempt 1. With the lock released attempt 1 fails (a trigger
     fails the first row it stages) and its task_failed answer reaches the controller while
     attempt 2 is still held (a second gate inside the same trigger); the answer must change
     nothing, and attempt 2's success is the task's outcome.
 b2. the same, but the controller is paused (SIGSTOP) until both answers, attempt 1's late
     failure and attempt 2's success, wait on strata:events, so it reads them in one batch: the
     stale answer must not keep out the current one (it did: the task then hung until
     task_timeout_seconds).
  c. a leader that loses its lock connection exits (docs/operations.md "Leaders and restarts"):
     mid-run, the warehouse session holding the controller's advisory lock is terminated
     (pg_terminate_backend); the controller must exit non-zero, the run stays `running`
     (docs/architecture.md "Failure behaviour": the next leader resumes it), and a new controller
     resumes it to success without re-running tasks that had succeeded.

Environment: STRATA_BUILD_BIN (default <repo>/build/bin). Run with /usr/bin/python3.
"""
import datetime as dt
import json
import os
import re
import signal
import subprocess
import threading
import time
import urllib.request

import psycopg2
import redis

from own_stack import FAILURES, check, clean_env, gone, pid_of, query, run_on_own_stack, metric as stack_metric, start_service, step, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.abspath(os.environ.get("STRATA_BUILD_BIN") or os.path.join(ROOT, "build", "bin"))
START = dt.date(2024, 1, 1)
DAY = [None] + [(START + dt.timedelta(days=i)).isoformat() for i in range(7)]  # DAY[1] .. DAY[7]
MAX_ACTIVE = 2
LEADER_LOCK_CLASS = 7400010  # pg_try_advisory_lock(7400010, hashtext(pipeline)) in controller.cpp
GATE = (7400099, 1)  # this test's own advisory lock, held to keep attempt 2 of load.states waiting

ENV = {}


# --- reporting -------------------------------------------------------------------------------------
# --- the stack -------------------------------------------------------------------------------------
def run(*args, timeout=900):
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=ENV)
    return p.returncode, p.stdout, p.stderr


def stratactl(*args, timeout=900):
    return run(f"{BIN}/stratactl", *args, timeout=timeout)


def stratactl_bg(name, *args):
    """stratactl in the background; (process, its stderr file)."""
    err = open(os.path.join(ENV["STRATA_STACK_DIR"], "logs", f"controller_claims_{name}.err"), "w+")
    return subprocess.Popen([f"{BIN}/stratactl", *args], stdout=subprocess.PIPE, stderr=err, text=True,
                            env=ENV), err


def finish(proc, err, timeout):
    """Waits for a background stratactl: (exit code or None, parsed JSON stdout, stderr tail)."""
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        return None, None, "timed out"
    err.flush()
    err.seek(0)
    tail = err.read().strip()[-300:]
    err.close()
    try:
        parsed = json.loads(out) if out.strip() else None
    except ValueError:
        parsed = None
    return proc.returncode, parsed, tail


def sim_advance(day):
    rc, _, err = run(f"{BIN}/strata-source-sim", "advance", "--through", day, timeout=300)
    if rc != 0:
        raise RuntimeError(f"strata-source-sim advance --through {day}: {err.strip()}")


def wh(sql, params=None):
    return query(ENV["STRATA_PG_DSN"], sql, params)


def metric(service, name, labels=None):
    return stack_metric(ENV, service, name, labels)


def latest_run(ds):
    r = wh("SELECT run_id FROM ops.runs WHERE ds = %s ORDER BY created_at DESC LIMIT 1", (ds,))
    return r[0][0] if r else None


def run_state(rid):
    return wh("SELECT state, message FROM ops.runs WHERE run_id = %s", (rid,))[0]


def task_rows(rid):
    """task -> (state, attempt, started_at, message) from ops.task_runs."""
    return {t: (s, a, st, m) for t, s, a, st, m in
            wh("SELECT task, state, attempt, started_at, message FROM ops.task_runs WHERE run_id = %s", (rid,))}


def task_row(rid, task):
    return task_rows(rid).get(task, (None, None, None, None))


def waiting_attempts(rid, task):
    """Application names (strata:<run>:<task>:<attempt>) of the task's statements waiting for a lock."""
    return sorted(a for (a,) in wh(
        "SELECT application_name FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND application_name LIKE %s",
        (f"strata:{rid}:{task}:%",)))


def page_states():
    """How many states the simulator's page lists (what one load of `states` stages)."""
    with urllib.request.urlopen(f"{ENV['STRATA_SOURCE_HTTP']}/states.html", timeout=10) as r:
        page = r.read().decode()
    table = re.search(r'<table id="states".*?</table>', page, re.S)
    return len(re.findall(r"<tr>\s*<td>", table.group(0))) if table else -1


def controller_log():
    return open(os.path.join(ENV["STRATA_STACK_DIR"], "logs", "controller.log")).read()


def start_controller(reap=False):
    """A controller that is this test's child (so its exit code can be read); stack.sh down stops it.
    With `reap`, a thread collects its exit, so stack.sh does not wait for a zombie."""
    p = start_service(ENV, "controller", [f"{BIN}/strata-controller"])
    if reap:
        threading.Thread(target=p.wait, daemon=True).start()
    return p


def leading():
    """strata_controller_leader is 1 (False while the controller does not answer yet)."""
    try:
        return metric("controller", "strata_controller_leader") == 1
    except OSError:
        return False


def leader_lock_holders():
    return [pid for (pid,) in wh("SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND classid = %s AND granted",
                                 (LEADER_LOCK_CLASS,))]


# --- a. max_active_runs ----------------------------------------------------------------------------
def max_overlap(intervals):
    """The most intervals [start, end) that contain one instant."""
    return max((sum(1 for s2, e2 in intervals if s2 <= s < e2) for s, _ in intervals), default=0)


def claim_max_active_runs():
    days = DAY[1:5]
    step(f"a. max_active_runs={MAX_ACTIVE}: a backfill of {days[0]}..{days[-1]} never runs more than "
         f"{MAX_ACTIVE} at once")
    sim_advance(days[-1])
    proc, err = stratactl_bg("backfill", "--json", "backfill", "--from", days[0], "--to", days[-1], "--timeout", "600")
    samples = []  # (running, queued, gauge)
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline:
        counts = dict(wh("SELECT state, count(*) FROM ops.runs WHERE ds BETWEEN %s AND %s GROUP BY state",
                         (days[0], days[-1])))
        gauge = metric("controller", "strata_controller_active_runs")
        samples.append((counts.get("running", 0) + counts.get("cancelling", 0), counts.get("queued", 0), gauge))
        time.sleep(0.2)
    rc, out, tail = finish(proc, err, 60)
    states = sorted((r["ds"], r["state"]) for r in out) if isinstance(out, list) else out
    check(rc == 0 and states == [(d, "succeeded") for d in days],
          f"the backfill ran all {len(days)} days to success (exit {rc}: {states})", [tail])
    # Non-vacuous: the limit was reached with work waiting behind it.
    check(any(r >= MAX_ACTIVE and q > 0 for r, q, _ in samples),
          f"a sample saw (at least) {MAX_ACTIVE} runs running while others waited queued "
          f"({len(samples)} samples, running/queued seen: {sorted(set((r, q) for r, q, _ in samples))})")
    check(samples and max(r for r, _, _ in samples) <= MAX_ACTIVE,
          f"no sample of ops.runs saw more than {MAX_ACTIVE} runs running "
          f"(max {max((r for r, _, _ in samples), default=None)})")
    # The gauge has no series before the controller's first run (it is created on first use), so
    # it must exist in every sample taken while ops.runs showed a run running.
    gauges = [g for r, _, g in samples if r > 0]
    check(gauges and None not in gauges and max(gauges) == MAX_ACTIVE,
          f"strata_controller_active_runs exists in every sample taken while a run ran, never above and once at "
          f"exactly {MAX_ACTIVE} (values seen: {sorted(set(gauges), key=str)})")
    rows = wh("SELECT ds::text, started_at, finished_at FROM ops.runs WHERE ds BETWEEN %s AND %s ORDER BY started_at",
              (days[0], days[-1]))
    complete = len(rows) == len(days) and all(s and f for _, s, f in rows)
    overlap = max_overlap([(s, f) for _, s, f in rows]) if complete else None
    check(complete and overlap == MAX_ACTIVE,
          f"the runs' [started_at, finished_at) intervals overlap at most (and at some instant exactly) "
          f"{MAX_ACTIVE} deep ({overlap}; {[(d, str(s)[11:23], str(f)[11:23]) for d, s, f in rows]})")


# --- b. a late answer of a cancelled attempt -------------------------------------------------------
class EventTap:
    """Copies every entry added to strata:events after start() (the controller deletes what it
    consumed, so the stream cannot be read after the fact): one blocked XREAD is served at XADD."""

    def __init__(self):
        self.r = redis.Redis.from_url(ENV["STRATA_REDIS_URL"])
        self.entries = []
        self.stop = False
        self.name = f"controller-claims-tap-{os.getpid()}"

    def start(self):
        last = self.r.xinfo_stream("strata:events")["last-generated-id"]
        last = last.decode() if isinstance(last, bytes) else last

        def loop():
            conn = redis.Redis.from_url(ENV["STRATA_REDIS_URL"])
            conn.client_setname(self.name)
            cursor = last
            while not self.stop:
                for _, items in conn.xread({"strata:events": cursor}, block=1000) or []:
                    for eid, fields in items:
                        self.entries.append((eid.decode(), fields))
                        cursor = eid.decode()

        threading.Thread(target=loop, daemon=True).start()
        # Blocked in XREAD before anything happens: an entry added and deleted in between is not lost.
        return wait_until(lambda: any(c.get("name") == self.name and c.get("cmd") == "xread"
                                      for c in self.r.client_list()), 30, "the event tap to block in XREAD")

    def find(self, kind, text):
        """A function giving the id of the first tapped load.states entry of `kind` whose event holds `text`."""
        def first():
            for eid, f in self.entries:
                if f.get(b"kind") == kind.encode() and f.get(b"task") == b"load.states" and \
                        text.encode() in f.get(b"event", b""):
                    return eid
            return None
        return first

    def consumer_idle_ms(self, consumer):
        for c in self.r.xinfo_consumers("strata:events", "controller"):
            name = c["name"].decode() if isinstance(c["name"], bytes) else c["name"]
            if name == consumer:
                return c["idle"]
        return -1

    def controller_consumed(self, eid):
        """The controller's group delivered entry `eid` and acked everything it was delivered."""
        for g in self.r.xinfo_groups("strata:events"):
            name = g["name"].decode() if isinstance(g["name"], bytes) else g["name"]
            if name == "controller":
                last = g["last-delivered-id"]
                last = last.decode() if isinstance(last, bytes) else last
                as_tuple = lambda i: tuple(int(x) for x in i.split("-"))
                return as_tuple(last) >= as_tuple(eid) and g["pending"] == 0
        return False


def late_answer_scenario(ds, together):
    """load.states of ds: attempt 1 held, the run cancelled, attempt 2 started by `clear` behind it;
    attempt 1 then fails late. Not `together`: its answer reaches the controller while attempt 2 is
    still held. `together`: the controller is paused (SIGSTOP) until both answers, attempt 1's
    failure and then attempt 2's success, wait on strata:events, so it reads them in one batch."""
    sim_advance(ds)
    expected = page_states()
    wh(f"""CREATE SEQUENCE public.cc_states_rows;
           CREATE FUNCTION public.cc_states_gate() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN
             IF NEW.ds = DATE '{ds}' THEN
               IF nextval('public.cc_states_rows') = 1 THEN
                 RAISE EXCEPTION 'controller_claims: late failure of %', current_setting('application_name');
               END IF;
               PERFORM pg_advisory_xact_lock_shared({GATE[0]}, {GATE[1]});
             END IF;
             RETURN NEW;
           END $$;
           CREATE TRIGGER cc_states_gate BEFORE INSERT ON staging.states
             FOR EACH ROW EXECUTE FUNCTION public.cc_states_gate()""")
    gate = psycopg2.connect(ENV["STRATA_PG_DSN"])
    gate.autocommit = True
    gate.cursor().execute("SELECT pg_advisory_lock(%s, %s)", GATE)
    blocker = psycopg2.connect(ENV["STRATA_PG_DSN"])
    blocker.cursor().execute("LOCK TABLE staging.states IN ACCESS EXCLUSIVE MODE")
    tap = EventTap()
    waiter, paused = None, None
    try:
        waiter, err = stratactl_bg(f"run_cancelled_{ds}", "--json", "run", "--date", ds, "--timeout", "600")
        check(wait_until(lambda: latest_run(ds) is not None and
                         waiting_attempts(latest_run(ds), "load.states") == [f"strata:{latest_run(ds)}:load.states:1"],
                         300, "load.states attempt 1 to wait for the table lock"),
              "load.states attempt 1 is waiting in PostgreSQL behind the test's lock")
        rid = latest_run(ds)
        rc, _, e = stratactl("--json", "cancel", "--run", rid, timeout=60)
        check(rc == 0, f"stratactl cancel --run {rid} was accepted (exit {rc})", [e.strip()[:300]])
        check(wait_until(lambda: run_state(rid)[0] == "cancelled", 120, "the run to be cancelled"),
              f"the run is cancelled ({run_state(rid)})")
        rc, out, tail = finish(waiter, err, 120)
        waiter = None
        check(rc == 1 and isinstance(out, dict) and out.get("state") == "cancelled",
              f"the waiting stratactl run reported the run cancelled and exited 1 "
              f"(exit {rc}, {out.get('state') if isinstance(out, dict) else out})", [tail])
        ls = task_row(rid, "load.states")
        check(ls[:2] == ("skipped", 1), f"ops.task_runs: load.states is skipped at attempt 1 ({ls[:2]})")
        check(waiting_attempts(rid, "load.states") == [f"strata:{rid}:load.states:1"],
              "the cancelled attempt 1 is still waiting in PostgreSQL: its answer will come late")

        rc, _, e = stratactl("--json", "clear", "--run", rid, "--task", "load.states", timeout=60)
        check(rc == 0, f"stratactl clear --run {rid} --task load.states was accepted (exit {rc})", [e.strip()[:300]])
        both = [f"strata:{rid}:load.states:1", f"strata:{rid}:load.states:2"]
        check(wait_until(lambda: waiting_attempts(rid, "load.states") == both, 120,
                         "attempt 2 to wait behind attempt 1"),
              f"attempt 2 of load.states waits in the loader behind the cancelled attempt 1 "
              f"({waiting_attempts(rid, 'load.states')})")
        check(task_row(rid, "load.states")[:2] == ("running", 2),
              f"ops.task_runs: load.states is running at attempt 2 ({task_row(rid, 'load.states')[:2]})")
        first_event = wh("SELECT coalesce(max(id), 0) FROM ops.task_events WHERE run_id = %s", (rid,))[0][0]
        if not check(tap.start(), "a tap on strata:events is in place before the late answer"):
            return
        if together:
            paused = pid_of(ENV, "controller")
            os.kill(paused, signal.SIGSTOP)
            # Its last XREADGROUP (blocking 500 ms) has expired: nothing is delivered to it until it runs again.
            check(wait_until(lambda: tap.consumer_idle_ms(f"controller-{paused}") > 1500, 30,
                             "the paused controller's read to expire"),
                  "the controller is paused and no read of strata:events is pending for it")

        # Attempt 1 goes on: it fails on its first row; attempt 2 then stages behind it and waits at the gate.
        blocker.rollback()
        late = tap.find("task_failed", f"late failure of strata:{rid}:load.states:1")
        check(wait_until(lambda: late() is not None, 120, "attempt 1's task_failed on strata:events"),
              "attempt 1's late answer (task_failed, 'late failure of strata:<run>:load.states:1') reached strata:events",
              [f"{eid}: {f.get(b'kind')} {f.get(b'task')}" for eid, f in tap.entries])
        check(wait_until(lambda: waiting_attempts(rid, "load.states") == [f"strata:{rid}:load.states:2"], 60,
                         "attempt 2 at the gate"),
              f"attempt 2 has not answered: it waits at the test's gate ({waiting_attempts(rid, 'load.states')})")
        if not together:
            check(late() is not None and wait_until(lambda: tap.controller_consumed(late()), 120,
                                                    "the controller to consume it"),
                  f"the controller consumed and acked it (entry {late()})")
            ls = task_row(rid, "load.states")
            check(ls[:2] == ("running", 2) and run_state(rid)[0] == "running",
                  f"after the late failure load.states is still running at attempt 2 and the run running "
                  f"({ls[:2]}, {run_state(rid)[0]})")

        gate.cursor().execute("SELECT pg_advisory_unlock(%s, %s)", GATE)  # attempt 2 goes on
        if together:
            answer = tap.find("task_succeeded", rid)
            check(wait_until(lambda: answer() is not None, 120, "attempt 2's task_succeeded on strata:events"),
                  "attempt 2's answer (task_succeeded) reached strata:events too")
            check(late() is not None and answer() is not None and not tap.controller_consumed(late()),
                  f"both answers wait undelivered to the paused controller ({late()}, {answer()})")
            os.kill(paused, signal.SIGCONT)
            paused = None
        finished = wait_until(lambda: run_state(rid)[0] in ("succeeded", "failed", "cancelled"), 120,
                              "the re-run to finish")
        final = run_state(rid)
        check(finished and final[0] == "succeeded", f"the re-run succeeded ({final})")
        ls = task_row(rid, "load.states")
        check(ls[:2] == ("succeeded", 2), f"ops.task_runs: load.states succeeded at attempt 2 ({ls[:2]}: {ls[3][:120]})")
        events = wh("SELECT state, attempt FROM ops.task_events WHERE run_id = %s AND task = 'load.states' AND id > %s "
                    "ORDER BY id", (rid, first_event))
        check(events == [("succeeded", 2)],
              f"ops.task_events: after attempt 2 started, load.states only succeeded at attempt 2 ({events})")
        staged = wh("SELECT count(*) FROM staging.states WHERE ds = %s", (ds,))[0][0]
        rows_seen = wh("SELECT last_value FROM public.cc_states_rows")[0][0]
        check(expected > 0 and staged == expected and rows_seen == 1 + expected,
              f"staging.states holds attempt 2's {expected} states; the trigger saw attempt 1's failed row plus "
              f"attempt 2's (staged {staged}, rows through the trigger {rows_seen})")
    finally:
        if paused is not None:
            os.kill(paused, signal.SIGCONT)
        tap.stop = True
        if waiter is not None and waiter.poll() is None:
            waiter.kill()
        blocker.close()
        gate.close()
        wh("DROP TRIGGER cc_states_gate ON staging.states; DROP FUNCTION public.cc_states_gate(); "
           "DROP SEQUENCE public.cc_states_rows")


def claim_late_answer_ignored():
    step(f"b. {DAY[5]}: a cancelled attempt of load.states answers late, while attempt 2 runs; the answer is ignored")
    late_answer_scenario(DAY[5], together=False)
    step(f"b2. {DAY[6]}: the same, with both attempts' answers read by the controller in one batch")
    late_answer_scenario(DAY[6], together=True)


# --- c. the leader exits on losing its lock --------------------------------------------------------
def claim_exit_on_lock_loss():
    ds = DAY[7]
    step(f"c. {ds}: the leader loses its advisory-lock session mid-run and exits; the run is resumed")
    sim_advance(ds)
    # The controller becomes this test's child, so its exit code can be read.
    old = pid_of(ENV, "controller")
    os.kill(old, signal.SIGTERM)
    check(wait_until(lambda: gone(old), 60, "the stack's controller to stop"), "the stack's controller stopped")
    leader = start_controller()
    check(wait_until(leading, 120, "the new controller to lead"), "a controller started by the test leads")
    blocker = psycopg2.connect(ENV["STRATA_PG_DSN"])
    blocker.cursor().execute("LOCK TABLE staging.states IN ACCESS EXCLUSIVE MODE")  # holds load.states
    waiter = None
    try:
        waiter, err = stratactl_bg("run_lock_loss", "--json", "run", "--date", ds, "--timeout", "600")
        check(wait_until(lambda: latest_run(ds) is not None and
                         waiting_attempts(latest_run(ds), "load.states") == [f"strata:{latest_run(ds)}:load.states:1"],
                         300, "load.states to wait for the table lock"),
              f"the run of {ds} is mid-way: load.states attempt 1 waits behind the test's lock")
        rid = latest_run(ds)
        done_before = {t: v for t, v in task_rows(rid).items() if v[0] == "succeeded"}
        holders = leader_lock_holders()
        check(len(holders) == 1, f"exactly one session holds the leader lock ({holders})")
        if not holders:
            return
        killed = wh("SELECT pg_terminate_backend(%s)", (holders[0],))[0][0]
        check(killed, f"pg_terminate_backend ended the leader's lock session (pid {holders[0]})")
        try:
            code = leader.wait(timeout=90)
        except subprocess.TimeoutExpired:
            code = None
        check(code is not None and code != 0,
              f"the controller exited, non-zero, after losing its lock (exit code {code})",
              [line for line in controller_log().splitlines()[-5:]])
        if code is None:
            leader.kill()
            leader.wait()
        check("lost the leader lock connection" in controller_log(), "its log says it lost the leader lock connection")
        state = run_state(rid)
        check(state[0] == "running", f"with the leader gone the run is still 'running', not failed ({state})")
        check(task_row(rid, "load.states")[:2] == ("running", 1),
              f"load.states is still running at attempt 1 ({task_row(rid, 'load.states')[:2]})")

        # The abandoned attempt 1 finishes while no controller runs (two attempts of one load at once
        # race on the partition's silver file in the loader, which is not what this test is about).
        blocker.rollback()
        # Done: its load is committed (ops.loads) and its connection, open until the task returns, is gone.
        attempt1 = f"strata:{rid}:load.states:1"
        check(wait_until(lambda: wh("SELECT count(*) FROM ops.loads WHERE dataset = 'states' AND ds = %s", (ds,))[0][0]
                         == 1 and wh("SELECT count(*) FROM pg_stat_activity WHERE application_name = %s",
                                     (attempt1,))[0][0] == 0, 120, "the abandoned attempt 1 to finish"),
              "the abandoned attempt 1 of load.states finished in the loader while no controller led")
        start_controller(reap=True)
        check(wait_until(leading, 120, "the next controller to lead"), "the next controller takes the lock and leads")
        check(wait_until(lambda: f"resuming run_id={rid}" in controller_log(), 120, "the resume"),
              "the next leader resumed the run")
        finished = wait_until(lambda: run_state(rid)[0] in ("succeeded", "failed", "cancelled"), 300,
                              "the resumed run to finish")
        final = run_state(rid)
        check(finished and final[0] == "succeeded", f"the resumed run succeeded ({final})")
        after = task_rows(rid)
        rerun = [t for t, v in done_before.items() if after.get(t) != v]
        check(done_before and not rerun,
              f"the {len(done_before)} tasks that had succeeded were not run again (same attempt and start): {rerun}")
        ls = after.get("load.states", (None, None, None, ""))
        check(ls[:2] == ("succeeded", 2),
              f"load.states was launched again by the new leader and succeeded at attempt 2 ({ls[:2]}: {ls[3][:160]})")
        rc, out, tail = finish(waiter, err, 120)
        waiter = None
        check(rc == 0 and isinstance(out, dict) and out.get("state") == "succeeded" and out.get("run_id") == rid,
              f"the stratactl run waiting through the lock loss printed the run succeeded and exited 0 (exit {rc})",
              [tail])
    finally:
        blocker.close()
        if waiter is not None and waiter.poll() is None:
            waiter.kill()


def scenario():
    for claim in (claim_max_active_runs, claim_late_answer_ignored, claim_exit_on_lock_loss):
        # A claim that breaks with an error is a failure; the next ones still run on the same stack.
        try:
            claim()
        except Exception as e:
            import traceback
            traceback.print_exc()
            check(False, f"{claim.__name__} ended with an error: {e}")


def main():
    def with_stack(env, _webhook):
        global ENV
        ENV = env
        scenario()

    run_on_own_stack(ROOT, BIN, "strata-controller-claims-", clean_env(), ["--start", START.isoformat()], with_stack,
                     FAILURES, lambda _dir: {"STRATA_MAX_ACTIVE_RUNS": str(MAX_ACTIVE), "STRATA_TASK_RETRIES": "2"})


if __name__ == "__main__":
    main()

"""Chaos (issue 16, "Tests"): a multi-day backfill under random kill -9 of every service kind,
Redis and PostgreSQL restarts at chosen moments and workers killed holding a task ends with every
day succeeded, within a stated bound, and a warehouse content-equal to an undisturbed run.

Two stacks of its own, one after the other, both with STRATA_TASK_LEASE_SECONDS=3 and
STRATA_TASK_RETRIES=5 (chaos must not exhaust a task's retries):
  reference  the simulator advanced through N days, `stratactl --json backfill --from D1 --to DN`
             undisturbed; its warehouse is read as the expected content;
  chaos      the same, while three threads run:
    supervisor  restarts any strata service process that has exited (same binary, same
                environment, appending to the same log, rewriting <stack>/run/<service>.pid so
                `stack.sh down` stops it) — what compose's `restart:` policy does in production,
                and what brings the controller back after it exits on a PostgreSQL restart;
    killer      every few seconds, SIGKILL of the next kind of a shuffled cycle of ingest,
                lake_export, warehouse_loader, quality, query and controller (as soon as it is
                busy with one of the backfill's tasks within a random pause, else at its end);
                kinds a moment is using are passed over;
    moments     the chosen moments, one after another (a hold right after a moment is armed
                before that moment lets the pipeline go, so they catch the same run's stages):
      <redis|pg>@extract-export  lake-export paused (SIGSTOP) until a run has extracted every
                dataset with exports open and batches on strata:batches, the server restarted,
                lake-export resumed; after a Redis restart the stream holds the same entries;
      <redis|pg>@<load|publish>  a lock the test takes (EXCLUSIVE: readers go on) holds the next
                load of a dataset (on its staging table) or the next publish (on
                serving.product_daily_sales, which publish writes after four other marts in its
                one transaction) inside PostgreSQL; once a worker is seen waiting on it
                (pg_stat_activity), the server is restarted;
      holding:<service>:<task>  the same hold, then the worker holding the task is killed; the
                task must succeed at a later attempt;
      lake-export-away@export-dispatch  lake-export unreachable when the controller dispatches
                exports whose partitions it has already committed (see Moments.exporter_away);
                those exports must succeed.
    Redis restarts: `redis-cli shutdown` (it writes the AOF), then redis-server with exactly
    infra/stack.sh's arguments. PostgreSQL restarts: `pg_ctl restart -m fast` on the stack's data
    directory (as the postgres user when root).

  short (`--short`, in `make test`): 3 days; Redis between extract and export, the loader killed
    holding load.order_items, lake-export away at export dispatch, PostgreSQL mid-publish; 3
    random kills. Bound 240 s.
  long (default, `make chaos`): 6 days of 1,000 orders; Redis and PostgreSQL each restarted
    between extract and export, mid-load and mid-publish, the quality service killed holding the
    checks and the loader holding a load, lake-export away at export dispatch; random kills
    2-6 s apart until the backfill ends (every kind at least once). Bound 900 s.

Then:
  - stratactl backfill exits 0 with every run succeeded. It is not re-issued: a waiting stratactl
    riding out controller restarts is part of the claim. The chaos begins once the Backfill call
    has queued the runs (that one call is not retried);
  - the latest run of every day in ops.runs succeeded;
  - the backfill finished within the bound, from the Backfill call to stratactl's exit (the
    undisturbed reference takes seconds on this machine);
  - every planned moment happened, and its task-level claim holds (above);
  - the warehouse equals the reference's, compared as sorted multisets of rows with surrogate
    keys replaced by natural keys (surrogate key values, run ids, LSNs and load/capture times may
    differ): every table of staging (and its row count per ds), dwh (facts point to a
    dimension version by natural key and valid_from), marts, serving (publications as the set of
    published days), raw (CDC), and the latest check result of every check for every day. The
    first differing rows of each table are printed.

Before advancing the simulator the test waits for CDC's initial snapshot, and before each
backfill for CDC to have applied the simulator's changes, so both stacks capture the same
history and publish orders_current from the same state.

Every action is printed with the wall-clock time and the seconds since the Backfill call, the
seed first. STRATA_CHAOS_SEED=<n> (or --seed n) replays a plan: the same kinds in the same order,
the same pauses and held datasets (the timing of a loaded machine still varies). Environment:
STRATA_BUILD_BIN (default <repo>/build/bin). Run with /usr/bin/python3.
"""
import argparse
import collections
import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time

import psycopg2

from own_stack import FAILURES, check, clean_env, gone, pid_of, query, run_on_own_stack, start_service, step, \
    wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.abspath(os.environ.get("STRATA_BUILD_BIN") or os.path.join(ROOT, "build", "bin"))
PGBIN = "/usr/lib/postgresql/15/bin"
START = dt.date(2024, 1, 1)
LEASE_SECONDS = 3
RETRIES = 5
KINDS = ("ingest", "lake_export", "warehouse_loader", "quality", "query", "controller")
LOAD_DATASETS = ("customers", "products", "orders", "order_items", "businesses", "reviews")
PUBLISH_HOLD = "serving.product_daily_sales"  # publish writes business_*, daily_sales, orders_current first

SHORT = dict(name="short", days=3, orders_per_day=0, bound=240, kill_gaps=(2.0, 5.0), kills=3,
             moments=["redis@extract-export", "holding:warehouse_loader:load.order_items",
                      "lake-export-away@export-dispatch", "pg@publish"])
LONG = dict(name="long", days=6, orders_per_day=1000, bound=900, kill_gaps=(2.0, 6.0), kills=None,
            moments=["redis@extract-export", "pg@load", "holding:quality:check", "redis@publish",
                     "lake-export-away@export-dispatch", "holding:warehouse_loader:load", "pg@publish",
                     "pg@extract-export", "redis@load"])

class Stack:
    """One running stack: its environment, its services' processes and its two servers."""

    def __init__(self, env):
        self.env = env
        self.dir = env["STRATA_STACK_DIR"]
        self.pid_lock = threading.Lock()
        self.children = {}  # service -> Popen of the processes this test started (to reap them)
        self.log_from = collections.Counter()  # service -> log offset where its current process began

    def wh(self, sql, params=None):
        return query(self.env["STRATA_PG_DSN"], sql, params)

    def try_wh(self, sql, params=None):
        """wh(), or None while the warehouse does not answer (PostgreSQL restarting)."""
        try:
            return self.wh(sql, params)
        except psycopg2.Error:
            return None

    def pid_of(self, service):
        with self.pid_lock:  # not while the supervisor rewrites the file
            return pid_of(self.env, service)

    def exited(self, service):
        """(True, exit code or None) once the service's recorded process is gone."""
        pid = self.pid_of(service)
        child = self.children.get(service)
        if child is not None and child.pid == pid:
            code = child.poll()
            return code is not None, code
        return gone(pid), None

    def up(self, service):
        """True while the service's current process is alive and has finished starting (its
        start-up DDL is done and it serves gRPC)."""
        if self.exited(service)[0]:
            return False
        with open(os.path.join(self.dir, "logs", f"{service}.log"), "rb") as f:
            f.seek(self.log_from[service])
            return b'"msg":"started grpc=' in f.read()

    def start_service(self, service):
        """The same binary, environment and log (appended); the pid file rewritten so stack.sh
        down stops it."""
        self.log_from[service] = os.path.getsize(os.path.join(self.dir, "logs", f"{service}.log"))
        with self.pid_lock:
            p = start_service(self.env, service, [f"{BIN}/strata-{service.replace('_', '-')}"])
            self.children[service] = p
        return p.pid

    def redis(self, *args):
        p = subprocess.run(["redis-cli", "-p", self.env["STRATA_REDIS_PORT"], *args], capture_output=True, text=True,
                           timeout=30)
        return p.stdout.strip()

    def restart_redis(self):
        """SHUTDOWN (which writes the AOF), then redis-server with infra/stack.sh's arguments."""
        pidfile = os.path.join(self.dir, "run", "redis.pid")
        old = int(open(pidfile).read())
        self.redis("shutdown")
        if not wait_until(lambda: not os.path.exists(f"/proc/{old}"), 30, "redis-server to stop", 0.05):
            raise RuntimeError("redis-server did not stop on SHUTDOWN")
        subprocess.run(["redis-server", "--port", self.env["STRATA_REDIS_PORT"], "--bind", "127.0.0.1",
                        "--daemonize", "yes", "--dir", os.path.join(self.dir, "redis"), "--save", "",
                        "--appendonly", "yes", "--appendfsync", "everysec", "--pidfile", pidfile,
                        "--logfile", os.path.join(self.dir, "logs", "redis.log")], check=True, timeout=30)
        if not wait_until(lambda: self.redis("ping") == "PONG", 60, "redis-server to answer", 0.05):
            raise RuntimeError("redis-server did not come back")
        return old, int(open(pidfile).read())

    def restart_postgres(self):
        """pg_ctl restart -m fast on the stack's data directory, as the postgres user when root."""
        pgdir = open(os.path.join(self.dir, "pgdir")).read().strip()
        as_pg = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
        old = open(os.path.join(pgdir, "data", "postmaster.pid")).readline().strip()
        # -l: without it the new postmaster would keep this call's stdout pipe open.
        p = subprocess.run([*as_pg, f"{PGBIN}/pg_ctl", "-D", os.path.join(pgdir, "data"), "-l",
                            os.path.join(pgdir, "postgres.log"), "-m", "fast", "-w", "-t", "120", "restart"],
                           capture_output=True, text=True, timeout=180)
        if p.returncode != 0:
            raise RuntimeError(f"pg_ctl restart: {p.stdout} {p.stderr}")
        return old, open(os.path.join(pgdir, "data", "postmaster.pid")).readline().strip()


class Clock:
    def __init__(self):
        self.t0 = time.time()

    def log(self, who, msg):
        now = time.time()
        print(f"[{time.strftime('%H:%M:%S', time.localtime(now))}.{int(now * 1000) % 1000:03d} "
              f"+{now - self.t0:6.1f}s] {who}: {msg}", flush=True)


class Supervisor(threading.Thread):
    """compose's `restart:` policy: a strata service process that exited is started again."""

    def __init__(self, stack, clock):
        super().__init__(daemon=True)
        self.stack, self.clock = stack, clock
        self.halt = threading.Event()
        self.restarts = collections.Counter()
        self.errors = []

    def run(self):
        while not self.halt.is_set():
            for service in KINDS:
                try:
                    dead, code = self.stack.exited(service)
                    if dead and not self.halt.is_set():
                        old = self.stack.pid_of(service)
                        time.sleep(0.3)  # compose restarts at once; a breath lets ports be released
                        pid = self.stack.start_service(service)
                        self.restarts[service] += 1
                        self.clock.log("supervisor", f"{service} (pid {old}) exited"
                                       f"{'' if code is None else f' with {code}'}; started again as pid {pid}")
                except Exception as e:  # noqa: BLE001 - the supervisor must keep going
                    self.errors.append(f"{service}: {e}")
            self.halt.wait(0.2)

    def stop(self):
        self.halt.set()
        self.join(timeout=30)


class Killer(threading.Thread):
    """Random kill -9 every few seconds while the backfill runs: the next kind of a shuffled cycle
    (kinds not killed yet first), as soon as it is busy with the backfill's work within a random
    pause, else at the pause's end. A kind a moment is using (Moments.protected) is passed over
    and comes again at the end of the cycle."""

    BUSY = {"ingest": "extract.%", "lake_export": "export.%", "warehouse_loader": "load.%|model|publish",
            "quality": "check", "controller": None, "query": None}

    def __init__(self, stack, clock, rng, profile, run_ids, finished, protected):
        super().__init__(daemon=True)
        self.stack, self.clock, self.rng, self.profile = stack, clock, rng, profile
        self.run_ids, self.finished, self.protected = run_ids, finished, protected
        self.cycle = []
        self.killed = collections.Counter()
        self.errors = []

    def busy(self, service):
        """What the service is working on for the backfill, or None."""
        if service == "query":
            return None
        if service == "controller":
            rows = self.stack.try_wh("SELECT 'run ' || run_id FROM ops.runs WHERE run_id = ANY(%s) "
                                     "AND state = 'running' LIMIT 1", (self.run_ids,))
        else:
            rows = self.stack.try_wh("SELECT task || ' of run ' || run_id FROM ops.task_runs WHERE run_id = ANY(%s) "
                                     "AND state = 'running' AND task SIMILAR TO %s LIMIT 1",
                                     (self.run_ids, self.BUSY[service]))
        return rows[0][0] if rows else None

    def run(self):
        try:
            limit = self.profile["kills"]
            while not self.finished() and (limit is None or sum(self.killed.values()) < limit):
                self.kill_one()
        except Exception as e:  # noqa: BLE001 - reported as a failure by the scenario
            self.errors.append(repr(e))
            self.clock.log("killer", f"error: {e!r}")

    def kill_one(self):
        if not self.cycle:
            self.cycle = self.rng.sample(KINDS, len(KINDS))
        # A kind never killed yet goes first (one passed over because a moment used it comes back).
        unkilled = [k for k in self.cycle if not self.killed[k]]
        service = unkilled[-1] if unkilled else self.cycle[-1]
        self.cycle.remove(service)
        lo, hi = self.profile["kill_gaps"]
        deadline = time.time() + self.rng.uniform(lo, hi)
        doing = None
        time.sleep(lo / 2)
        while time.time() < deadline and not self.finished():
            doing = self.busy(service)
            if doing:
                break
            time.sleep(0.05)
        if self.finished():
            return
        if self.protected[service] > 0:
            self.clock.log("killer", f"{service} passed over (a chosen moment is using it)")
            self.cycle.insert(0, service)  # its turn comes again at the end of this cycle
            return
        pid = self.stack.pid_of(service)
        try:
            os.kill(pid, signal.SIGKILL)
            self.killed[service] += 1
            self.clock.log("killer", f"kill -9 {service} (pid {pid}) {'while on ' + doing if doing else 'idle'}")
        except ProcessLookupError:
            self.clock.log("killer", f"{service} (pid {pid}) already gone")


class Moments(threading.Thread):
    """Performs the chosen moments of the plan, one after another. A hold that comes right after a
    moment is armed (its lock taken) before that moment lets the pipeline go on, so consecutive
    moments catch the same run's later stages instead of racing them."""

    def __init__(self, stack, clock, rng, profile, run_ids, finished):
        super().__init__(daemon=True)
        self.stack, self.clock, self.profile = stack, clock, profile
        self.run_ids, self.finished = run_ids, finished
        self.plan = list(profile["moments"])
        # Which dataset a load moment holds is part of the seeded plan.
        self.tasks = [self.hold_task(a, rng) for a in self.plan]
        self.protected = collections.Counter()  # services the killer leaves alone meanwhile
        self.armed = None    # (plan index, Lock)
        self.killed = collections.Counter()
        self.done = []       # moments performed
        self.skipped = []    # moments the backfill ended before
        self.held = []       # (action, run_id, task, attempt) of every hold that caught a worker
        self.dispatched = []  # (run_id, exports) dispatched while lake-export was away
        self.notes = []      # failures found while acting (e.g. the bus lost entries on a restart)
        self.errors = []

    @staticmethod
    def hold_task(action, rng):
        if action.startswith("holding:"):
            task = action.split(":")[2]
        elif action.endswith("@load") or action.endswith("@publish"):
            task = action.split("@")[1]
        else:
            return None
        return f"load.{rng.choice(LOAD_DATASETS)}" if task == "load" else task

    def log(self, msg):
        self.clock.log("moment", msg)

    def run(self):
        try:
            for i, action in enumerate(self.plan):
                if self.finished():
                    self.log(f"backfill over; {action} not performed")
                    self.skipped.append(action)
                    continue
                self.perform(i)
        except Exception as e:  # noqa: BLE001 - reported as a failure by the scenario
            self.errors.append(repr(e))
            self.log(f"error: {e!r}")
        finally:
            self.disarm()

    def perform(self, i):
        action = self.plan[i]
        if action == "lake-export-away@export-dispatch":
            return self.exporter_away(i)
        if action.startswith("holding:"):
            service = action.split(":")[1]
            return self.hold(i, lambda hold, lock: self.kill_holder(service, hold, lock))
        server, moment = action.split("@")
        restart = self.restart_redis if server == "redis" else self.restart_postgres
        if moment == "extract-export":
            return self.between_extract_and_export(i, restart)

        def act(hold, lock):
            restart(f"{action}: {hold[1]} of run {hold[0]} (attempt {hold[2]}) waits on the test's lock")
            if server == "pg":
                self.let_go(lock)  # gone with the restart; the next hold is armed after it
        return self.hold(i, act)

    def wait(self, cond, seconds):
        """Polls cond until true, the backfill ends or `seconds` pass; cond's errors count as false."""
        deadline = time.time() + seconds
        while time.time() < deadline and not self.finished():
            try:
                if cond():
                    return True
            except psycopg2.Error:
                pass
            time.sleep(0.05)
        return False

    # --- restarts

    def restart_redis(self, why):
        before = self.stack.redis("xlen", "strata:batches")
        old, new = self.stack.restart_redis()
        after = self.stack.redis("xlen", "strata:batches")
        self.log(f"Redis restarted ({why}): pid {old} -> {new}; strata:batches {before} -> {after} entries")
        return before, after

    def restart_postgres(self, why):
        start = time.time()
        old, new = self.stack.restart_postgres()
        self.log(f"PostgreSQL restarted ({why}): postmaster {old} -> {new}, {time.time() - start:.1f} s")
        return None, None

    def between_extract_and_export(self, i, restart):
        """lake-export paused until a run extracted every dataset with exports still open and its
        batches on the bus; then the restart."""
        action = self.plan[i]
        self.protect("lake_export")
        exporter = self.stack.pid_of("lake_export")
        os.kill(exporter, signal.SIGSTOP)
        self.log(f"{action}: lake-export (pid {exporter}) paused (SIGSTOP) until a run has extracted everything")
        try:
            caught = []

            def extracted():
                rows = self.stack.wh(
                    "SELECT run_id FROM ops.task_runs WHERE run_id = ANY(%s) GROUP BY run_id "
                    "HAVING bool_and(state = 'succeeded') FILTER (WHERE task LIKE 'extract.%%') "
                    "AND NOT bool_and(state = 'succeeded') FILTER (WHERE task LIKE 'export.%%')", (self.run_ids,))
                caught[:] = [r[0] for r in rows]
                # lake-export deletes what it acknowledged: entries left are the run's unexported batches.
                return bool(rows) and int(self.stack.redis("xlen", "strata:batches") or 0) > 0
            if not self.wait(extracted, 300):
                self.skipped.append(action)
                self.log(f"{action}: no run reached it before the backfill ended")
                return
            before, after = restart(f"{action}: run {caught[0]} extracted, exports open")
            if before != after:
                self.notes.append(f"{action}: strata:batches held {before} entries before the Redis restart "
                                  f"and {after} after (AOF should keep them)")
            self.done.append(action)
            self.arm(i + 1)
        finally:
            try:
                os.kill(exporter, signal.SIGCONT)
                self.log(f"lake-export (pid {exporter}) resumed (SIGCONT)")
            except ProcessLookupError:
                pass
            self.unprotect("lake_export")

    def exporter_away(self, i):
        """lake-export unreachable when the controller dispatches exports whose partitions it has
        already committed (what a kill of lake-export at that instant does): the controller's
        question "already committed?" gets no answer and the commit events came before the
        dispatch; the exports must still finish. To get there every time, the test holds the
        run's last extract in the controller's hands (a row lock on its ops.task_runs row: the
        controller stops at marking it running) until lake-export has committed the other
        datasets, pauses lake-export, lets the controller go on, and resumes lake-export once the
        controller has dispatched those exports."""
        action = self.plan[i]
        # While the controller is held it cannot re-dispatch an extract whose worker died: ingest too.
        away = {"controller", "lake_export", "ingest"}
        self.protect(*away)
        conn, exporter = None, None
        try:
            last = self.profile["last_extract"]  # the extract the controller dispatches last
            target, datasets = [], []

            def next_run():
                rows = self.stack.wh("SELECT r.run_id, r.ds::text FROM ops.runs r JOIN ops.task_runs t USING (run_id) "
                                     "WHERE r.run_id = ANY(%s) AND r.state = 'queued' AND t.task = %s "
                                     "AND t.state = 'pending' ORDER BY r.ds LIMIT 1", (self.run_ids, last))
                target[:] = list(rows[0]) if rows else []
                return bool(rows)

            def committed():
                for d in datasets:
                    path = os.path.join(self.stack.env["STRATA_LAKE_ROOT"], "bronze", d, f"dt={target[1]}",
                                        "_manifest.json")
                    try:
                        if json.load(open(path)).get("run_id") != target[0]:
                            return False
                    except (OSError, ValueError):
                        return False
                return True
            for _ in range(5):  # the controller may get there first, or a restart may hold things up
                if not self.wait(next_run, 300):
                    break
                conn = psycopg2.connect(self.stack.env["STRATA_PG_DSN"])
                cur = conn.cursor()
                cur.execute("SELECT state FROM ops.task_runs WHERE run_id = %s AND task = %s FOR UPDATE",
                            (target[0], last))
                if cur.fetchone()[0] == "pending":
                    datasets[:] = [t.split(".", 1)[1] for (t,) in self.stack.wh(
                        "SELECT task FROM ops.task_runs WHERE run_id = %s AND task LIKE 'extract.%%' AND task <> %s",
                        (target[0], last))]
                    self.log(f"{action}: {last} of run {target[0]} ({target[1]}) held in the controller's hands "
                             f"(row lock) until lake-export commits the run's other partitions")
                    if self.wait(committed, 30):
                        break
                    self.log(f"{action}: the run's other partitions were not committed within 30 s; letting go")
                release(conn)
                conn = None
            if conn is None:
                self.skipped.append(action)
                self.log(f"{action}: no run reached it before the backfill ended")
                return
            run_id = target[0]
            exporter = self.stack.pid_of("lake_export")
            os.kill(exporter, signal.SIGSTOP)
            release(conn)
            conn = None
            self.log(f"{action}: lake-export committed {len(datasets)} partitions of run {run_id}; lake-export "
                     f"(pid {exporter}) paused (SIGSTOP) and the controller let go")
            exports = [f"export.{d}" for d in datasets]
            if not self.wait(lambda: self.stack.wh(
                    "SELECT bool_and(state <> 'pending') FROM ops.task_runs WHERE run_id = %s AND task = ANY(%s)",
                    (run_id, exports))[0][0], 300):
                self.skipped.append(action)
                return
            self.dispatched.append((run_id, exports))
            self.done.append(action)
        finally:
            if conn is not None:
                release(conn)
            if exporter is not None:
                try:
                    os.kill(exporter, signal.SIGCONT)
                    self.log(f"lake-export (pid {exporter}) resumed (SIGCONT) after the controller dispatched the "
                             f"exports")
                except ProcessLookupError:
                    pass
            self.unprotect(*away)

    # --- holds

    def protect(self, *services):
        self.protected.update(services)

    def unprotect(self, *services):
        self.protected.subtract(services)

    @staticmethod
    def table_of(task):
        if task == "publish":
            return PUBLISH_HOLD
        return "quality.check_results" if task == "check" else f"staging.{task.split('.', 1)[1]}"

    def take(self, table, wait=300):
        """A Lock: a connection holding an EXCLUSIVE lock on table (readers go on, writers wait),
        once the table exists (serving's, after the first publish); None if it does not within
        `wait` s. The service that owns the table is left alone by the killer while the lock is
        held, and the lock is taken only once that service has finished starting: its start-up
        DDL (CREATE INDEX IF NOT EXISTS) waits for the lock too, holding the DDL advisory lock
        every service's start-up takes, and the held task would never come."""
        owner = "quality" if table.startswith("quality.") else "warehouse_loader"
        self.protect(owner)
        try:
            exists = lambda: self.stack.wh("SELECT to_regclass(%s) IS NOT NULL", (table,))[0][0]  # noqa: E731
            if not (exists() if wait == 0 else self.wait(exists, wait)):
                self.unprotect(owner)
                return None
            for _ in range(10):
                if not self.wait(lambda: self.stack.up(owner), 120):
                    break
                pid = self.stack.pid_of(owner)
                conn = psycopg2.connect(self.stack.env["STRATA_PG_DSN"])
                try:
                    cur = conn.cursor()
                    cur.execute("SET lock_timeout = '60s'")
                    cur.execute(f"LOCK TABLE {table} IN EXCLUSIVE MODE")  # held until rollback
                except psycopg2.Error:
                    release(conn)
                    raise
                if self.stack.pid_of(owner) == pid and self.stack.up(owner):
                    return [conn, owner]
                release(conn)  # it was restarting meanwhile: let its start-up finish first
            self.unprotect(owner)
            return None
        except Exception:
            self.unprotect(owner)
            raise

    def let_go(self, lock):
        if lock[0] is not None:
            release(lock[0])
            lock[0] = None
            self.unprotect(lock[1])

    def arm(self, i):
        """Takes the lock of plan item i now, if it is a hold (see the class comment)."""
        if i >= len(self.plan) or self.tasks[i] is None or self.armed or self.finished():
            return
        task = self.tasks[i]
        # No waiting for the table: it may appear only once the moment being performed lets go.
        lock = self.take(self.table_of(task), wait=0)
        if lock is not None:
            self.armed = (i, lock)
            self.log(f"{self.plan[i]}: armed early: holding {task} with a lock on {self.table_of(task)}")

    def disarm(self):
        if self.armed:
            self.let_go(self.armed[1])
            self.armed = None

    def hold(self, i, act):
        """Holds task i inside PostgreSQL with a lock on the table it writes, calls act(hold, lock)
        once a worker waits on it, arms the next moment, then lets go (if act has not)."""
        action, task = self.plan[i], self.tasks[i]
        if self.armed and self.armed[0] == i:
            lock = self.armed[1]
            self.armed = None
        else:
            self.disarm()
            lock = self.take(self.table_of(task))
            if lock is None:
                self.skipped.append(action)
                return
            self.log(f"{action}: holding {task} with a lock on {self.table_of(task)}")
        try:
            hold = []

            def held():
                rows = self.stack.wh("SELECT application_name FROM pg_stat_activity WHERE application_name LIKE %s "
                                     "AND wait_event_type = 'Lock'", (f"strata:%:{task}:%",))
                if rows:
                    _, run_id, name, attempt = rows[0][0].split(":")
                    hold[:] = [run_id, name, int(attempt)]
                return bool(rows)
            if not self.wait(held, 300):
                self.skipped.append(action)
                self.log(f"{action}: no worker reached {task} before the backfill ended")
                return
            self.held.append((action, *hold))
            act(hold, lock)
            self.done.append(action)
            self.arm(i + 1)
        finally:
            self.let_go(lock)

    def kill_holder(self, service, hold, lock):
        pid = self.stack.pid_of(service)
        os.kill(pid, signal.SIGKILL)
        self.killed[service] += 1
        self.log(f"kill -9 {service} (pid {pid}) holding {hold[1]} of run {hold[0]} (attempt {hold[2]})")
        # Let go once the supervisor has started the worker again (as lost_work_e2e does), and
        # arm the next moment only once its start-up is through (see take()).
        self.wait(lambda: self.stack.pid_of(service) != pid, 60)
        self.let_go(lock)
        self.wait(lambda: self.stack.up(service), 120)


def release(conn):
    try:
        conn.rollback()
        conn.close()
    except psycopg2.Error:
        pass  # PostgreSQL restarted under it


def run_backfill(stack, profile, clock, chaos_on):
    """Runs the backfill of profile's days on `stack`; with chaos_on, under a supervisor, the
    moments and the killer. Returns (stratactl exit code, its JSON, seconds taken, (supervisor,
    moments, killer), days); the supervisor keeps running (a controller may still exit after a
    PostgreSQL restart) until the caller stops it."""
    days = [(START + dt.timedelta(days=i)).isoformat() for i in range(profile["days"])]
    # CDC's initial snapshot first: the simulator's days then reach raw.*_changes as the same
    # inserts and updates in both stacks (not, depending on timing, as snapshot reads).
    check(wait_until(lambda: (stack.try_wh("SELECT bool_and(snapshot_done) FROM ops.cdc_state") or [[None]])[0][0],
                     120, "CDC's initial snapshot"), "CDC took its initial snapshot before the simulator advances")
    sim = [f"{BIN}/strata-source-sim", "advance", "--through", days[-1]]
    if profile["orders_per_day"]:
        sim += ["--orders-per-day", str(profile["orders_per_day"])]
    p = subprocess.run(sim, env=stack.env, capture_output=True, text=True, timeout=300)
    if p.returncode != 0:
        raise RuntimeError(f"strata-source-sim advance: {p.stderr.strip()}")
    check(wait_until(lambda: cdc_caught_up(stack), 180, "CDC to apply the simulator's changes"),
          "CDC applied the simulator's changes before the backfill (raw and marts.orders_current = source)")
    bound = profile["bound"]
    clock.t0 = time.time()
    ctl = subprocess.Popen([f"{BIN}/stratactl", "--json", "backfill", "--from", days[0], "--to", days[-1],
                            "--timeout", str(bound)], env=stack.env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    clock.log("test", f"stratactl backfill --from {days[0]} --to {days[-1]} (pid {ctl.pid})")
    supervisor = moments = killer = None
    try:
        if chaos_on:
            supervisor = Supervisor(stack, clock)
            supervisor.start()
            run_ids = []

            def queued():
                run_ids[:] = [r[0] for r in stack.wh("SELECT run_id FROM ops.runs WHERE trigger = 'backfill'")]
                return len(run_ids) == len(days) or ctl.poll() is not None
            check(wait_until(queued, 60, "the backfill's runs to be queued", 0.05) and len(run_ids) == len(days),
                  f"the Backfill call queued {len(days)} runs before the chaos begins")
            time.sleep(0.5)  # the call returns right after the insert; let its answer reach stratactl
            finished = lambda: ctl.poll() is not None  # noqa: E731
            moments = Moments(stack, clock, random.Random(profile["seed"]), profile, run_ids, finished)
            killer = Killer(stack, clock, random.Random(profile["seed"] + 1), profile, run_ids, finished,
                            moments.protected)
            moments.start()
            killer.start()
        try:
            out, err = ctl.communicate(timeout=bound + 120)
        except subprocess.TimeoutExpired:
            ctl.kill()
            out, err = ctl.communicate()
        took = time.time() - clock.t0
        clock.log("test", f"stratactl exited {ctl.returncode} after {took:.1f} s")
        for t in (moments, killer):
            if t:
                t.join(timeout=360)
    except BaseException:
        if supervisor:
            supervisor.stop()
        raise
    if err.strip():
        print("stratactl stderr:\n  " + "\n  ".join(err.strip().splitlines()[-15:]), flush=True)
    try:
        runs = json.loads(out)
    except ValueError:
        runs = None
    return ctl.returncode, runs, took, (supervisor, moments, killer), days


def cdc_caught_up(stack):
    src = query(stack.env["STRATA_SOURCE_DSN"],
                "SELECT (SELECT count(*) FROM shop.orders), (SELECT max(updated_at) FROM shop.orders), "
                "(SELECT count(*) FROM shop.order_items), (SELECT max(updated_at) FROM shop.order_items)")[0]
    wh = stack.try_wh("SELECT (SELECT count(*) FROM raw.orders_current WHERE NOT _deleted), "
                      "(SELECT max(updated_at) FROM raw.orders_current), "
                      "(SELECT count(*) FROM raw.order_items_current WHERE NOT _deleted), "
                      "(SELECT max(updated_at) FROM raw.order_items_current), "
                      "(SELECT count(*) FROM marts.orders_current)")
    return wh is not None and tuple(wh[0][:4]) == tuple(src) and wh[0][4] == src[0]


def check_runs(stack, label, rc, runs, days):
    states = [r.get("state") for r in runs] if isinstance(runs, list) else None
    check(rc == 0 and states == ["succeeded"] * len(days),
          f"{label}: stratactl backfill exited {rc} with {len(days)} runs succeeded ({states})")
    latest = dict(stack.wh("SELECT DISTINCT ON (ds) ds::text, state FROM ops.runs WHERE ds = ANY(%s::date[]) "
                           "ORDER BY ds, created_at DESC", (days,)))
    check(latest == {d: "succeeded" for d in days},
          f"{label}: the latest run of every day in ops.runs succeeded", [str(latest)])


# --- the warehouse, as comparable content -------------------------------------------------------

SURROGATE = {"dwh.dim_customer": ["customer_key"], "dwh.dim_product": ["product_key"],
             "dwh.dim_state": ["state_key"]}
# Facts point to a dimension version by its natural key and valid_from, not by surrogate value.
FACT_SALES = ("SELECT row(f.order_id, f.line_no, f.date_key, f.customer_id, f.product_id, f.quantity, f.unit_price, "
              "f.amount, f.ordered_at, f.is_deleted, c.customer_id, c.valid_from, p.product_id, p.valid_from)::text "
              "FROM dwh.fact_sales f LEFT JOIN dwh.dim_customer c ON c.customer_key = f.customer_key "
              "LEFT JOIN dwh.dim_product p ON p.product_key = f.product_key")
# Where and when a row was loaded or captured is not content.
NOT_CONTENT = {"run_id", "lsn", "seq", "commit_time", "applied_at", "_lsn", "_seq", "_commit_time"}


def snapshot(stack):
    """{name: Counter of rows as text} for every compared table, plus staging counts per ds."""
    tables = stack.wh("SELECT table_schema || '.' || table_name FROM information_schema.tables "
                      "WHERE table_schema IN ('staging', 'dwh', 'marts', 'serving', 'raw') "
                      "AND table_type = 'BASE TABLE' ORDER BY 1")
    snap = {}
    for (name,) in tables:
        if name == "dwh.fact_sales":
            sql = FACT_SALES
        elif name == "serving.publications":
            sql = "SELECT DISTINCT ds::text FROM serving.publications"
        else:
            schema, table = name.split(".")
            cols = [c for (c,) in stack.wh("SELECT column_name FROM information_schema.columns WHERE table_schema = %s "
                                           "AND table_name = %s ORDER BY ordinal_position", (schema, table))
                    if c not in NOT_CONTENT and c not in SURROGATE.get(name, [])]
            sql = f"SELECT row({', '.join(cols)})::text FROM {name}"
        snap[name] = collections.Counter(r[0] for r in stack.wh(sql))
        if name.startswith("staging."):
            snap[f"{name} rows per ds"] = collections.Counter(
                {f"{ds} {n}": 1 for ds, n in stack.wh(f"SELECT ds::text, count(*) FROM {name} GROUP BY ds")})
    snap["quality: latest result per check and day"] = collections.Counter(
        r[0] for r in stack.wh("SELECT row(ds, check_name, kind, severity, target, status, observed, threshold)::text "
                               "FROM quality.latest_results"))
    return snap


def compare(reference, chaos, names=None):
    """Failure lines for every table whose rows differ (the first differing rows of each)."""
    problems = []
    for name in sorted(names or set(reference) | set(chaos)):
        ref, got = reference.get(name), chaos.get(name)
        if ref is None or got is None:
            problems.append((name, [f"only in the {'chaos' if ref is None else 'reference'} warehouse"]))
            continue
        if ref == got:
            continue
        missing, extra = sorted((ref - got).elements()), sorted((got - ref).elements())
        lines = [f"{sum(ref.values())} rows in the reference, {sum(got.values())} after chaos; "
                 f"{len(missing)} missing, {len(extra)} unexpected"]
        lines += [f"missing:    {r}" for r in missing[:5]] + [f"unexpected: {r}" for r in extra[:5]]
        problems.append((name, lines))
    return problems


CDC_TABLES = ("raw.orders_current", "raw.order_items_current", "raw.orders_changes", "raw.order_items_changes",
              "marts.orders_current")


# --- the two stacks -----------------------------------------------------------------------------

def reference_stack(profile, result):
    def scenario(env, _webhook):
        stack = Stack(env)
        step(f"reference: {profile['days']} days backfilled undisturbed")
        rc, runs, took, _, days = run_backfill(stack, profile, Clock(), chaos_on=False)
        check_runs(stack, "reference", rc, runs, days)
        result["took"] = took
        # The extract the controller dispatches last (tasks come in the order they started).
        result["last_extract"] = [t["task"] for t in runs[0]["tasks"] if t["task"].startswith("extract.")][-1]
        result["snapshot"] = snapshot(stack)
        print(f"reference: {took:.1f} s; {sum(sum(c.values()) for c in result['snapshot'].values())} rows read "
              f"from {len(result['snapshot'])} tables", flush=True)
    return scenario


def chaos_stack(profile, reference, result):
    def scenario(env, _webhook):
        stack = Stack(env)
        step(f"chaos: {profile['days']} days backfilled under chaos (seed {profile['seed']}, "
             f"bound {profile['bound']} s)")
        print(f"moments, in order: {' '.join(profile['moments'])}; meanwhile "
              f"{'kills until the backfill ends' if profile['kills'] is None else str(profile['kills']) + ' kills'}, "
              f"{profile['kill_gaps'][0]:.0f}-{profile['kill_gaps'][1]:.0f} s apart", flush=True)
        rc, runs, took, (supervisor, moments, killer), days = run_backfill(stack, profile, Clock(), chaos_on=True)
        try:
            after_chaos(stack, profile, reference, result, rc, runs, took, moments, killer, days)
        finally:
            supervisor.stop()
            print(f"supervisor restarts: {dict(supervisor.restarts)}", flush=True)
            check(not supervisor.errors, "the supervisor ran without errors", supervisor.errors[:5])
    return scenario


def after_chaos(stack, profile, reference, result, rc, runs, took, moments, killer, days):
    """The claims after the chaos: runs, bound, moments, and the warehouse against the reference."""
    result["took"] = took
    step("after the chaos")
    check_runs(stack, "chaos", rc, runs, days)
    check(took <= profile["bound"], f"the chaos backfill finished in {took:.0f} s, within {profile['bound']} s")
    killed = killer.killed + moments.killed
    print(f"kills: {dict(killed)}; moments done: {moments.done}", flush=True)
    check(not moments.errors and not killer.errors, "the chaos threads ran without errors",
          moments.errors + killer.errors)
    check(not moments.skipped and sorted(moments.done) == sorted(profile["moments"]),
          f"every planned moment happened ({len(moments.done)}/{len(profile['moments'])})",
          [f"skipped: {moments.skipped}"])
    if profile["kills"] is None:
        check(set(killed) >= set(KINDS), f"every service kind was killed at least once ({dict(killed)})")
    for note in moments.notes:
        check(False, note)
    for action, run_id, task, attempt in moments.held:
        if not action.startswith("holding:"):
            continue
        row = stack.wh("SELECT state, attempt FROM ops.task_runs WHERE run_id = %s AND task = %s", (run_id, task))
        check(bool(row) and row[0][0] == "succeeded" and row[0][1] > attempt,
              f"{task} of run {run_id}, whose worker was killed holding attempt {attempt}, succeeded at a later "
              f"attempt ({row[0] if row else None})")
    for run_id, exports in moments.dispatched:
        rows = stack.wh("SELECT task, state, attempt, message FROM ops.task_runs WHERE run_id = %s "
                        "AND task = ANY(%s) ORDER BY task", (run_id, exports))
        check(all(r[1] == "succeeded" for r in rows) and len(rows) == len(exports),
              f"the {len(exports)} exports of run {run_id} dispatched while lake-export was away succeeded",
              [str(r) for r in rows])
    lost = stack.wh("SELECT count(*) FROM ops.task_events WHERE message LIKE '%%lease lapsed%%'")[0][0]
    print(f"ops.task_events: {lost} attempt(s) recorded lost with their lease", flush=True)

    step("the warehouse equals the undisturbed run's")
    ok_cdc = wait_until(lambda: not compare(reference, snapshot_of(stack, CDC_TABLES), CDC_TABLES), 180,
                        "CDC tables to settle after the chaos")
    check(ok_cdc, "CDC tables (raw.*, marts.orders_current) settled to the reference's")
    got = snapshot(stack)
    problems = compare(reference, got)
    for name in sorted(reference):
        if not any(p[0] == name for p in problems):
            print(f"  equal  {name} ({sum(reference[name].values())} rows)", flush=True)
    for name, lines in problems:
        check(False, f"{name} differs from the undisturbed run", lines)
    check(not problems, f"all {len(reference)} compared tables equal the undisturbed run's")


def snapshot_of(stack, names):
    try:
        snap = snapshot(stack)
    except psycopg2.Error:
        return {}
    return {n: snap.get(n, collections.Counter()) for n in names}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--short", action="store_true", help="3 days, 4 moments and 3 kills (make test)")
    ap.add_argument("--seed", type=int, default=None, help="chaos seed (default $STRATA_CHAOS_SEED, else random)")
    args = ap.parse_args()
    profile = dict(SHORT if args.short else LONG)
    seed = args.seed if args.seed is not None else os.environ.get("STRATA_CHAOS_SEED")
    profile["seed"] = int(seed) if seed not in (None, "") else random.SystemRandom().randrange(1, 10 ** 6)
    print(f"chaos_e2e {profile['name']}: seed {profile['seed']} (replay: STRATA_CHAOS_SEED={profile['seed']}), "
          f"{profile['days']} days, bound {profile['bound']} s", flush=True)
    started = time.time()
    base = clean_env()
    def extra(_stack_dir):
        return {"STRATA_TASK_LEASE_SECONDS": str(LEASE_SECONDS), "STRATA_TASK_RETRIES": str(RETRIES)}
    ref, got = {}, {}
    print("\n=== reference stack", flush=True)
    run_on_own_stack(ROOT, BIN, "strata-chaos-ref-", base, ["--start", START.isoformat()],
                     reference_stack(profile, ref), FAILURES, extra)
    print("\n=== chaos stack", flush=True)
    profile["last_extract"] = ref["last_extract"]
    run_on_own_stack(ROOT, BIN, "strata-chaos-", base, ["--start", START.isoformat()],
                     chaos_stack(profile, ref["snapshot"], got), FAILURES, extra)
    print(f"chaos_e2e {profile['name']} seed {profile['seed']}: reference backfill {ref['took']:.1f} s, chaos "
          f"backfill {got['took']:.1f} s (bound {profile['bound']} s), whole test {time.time() - started:.0f} s",
          flush=True)


if __name__ == "__main__":
    sys.exit(main())

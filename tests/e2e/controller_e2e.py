"""The controller under failure: kill -9 mid-run and restart (succeeded tasks are not re-run),
a standby that takes over when the leader dies, cancel, clear-and-re-run, and a service that
is down for a while."""
import json
import os
import signal
import subprocess
import time
import urllib.request

import psycopg2

from strata_e2e import (BIN, ENV, check, finish, free_port, gauge, pid_of, set_pid, sim_advance, start,
                        stratactl, wait_for, wh)

DIR = ENV["STRATA_STACK_DIR"]


def task_states(run_id):
    return {t: (s, a, str(st)) for t, s, a, st in
            wh("SELECT task, state, attempt, started_at FROM ops.task_runs WHERE run_id = %s", (run_id,))}


def run_state(run_id):
    return wh("SELECT state FROM ops.runs WHERE run_id = %s", (run_id,))[0][0]


def start_run(ds, controller=None):
    args = ["--json"] + (["--controller", controller] if controller else []) + ["run", "--date", ds, "--timeout", "1"]
    stratactl(*args)  # returns after a second; the run goes on
    return wh("SELECT run_id FROM ops.runs WHERE ds = %s ORDER BY created_at DESC LIMIT 1", (ds,))[0][0]


def lock_states():
    conn = psycopg2.connect(ENV["STRATA_PG_DSN"])
    conn.cursor().execute("LOCK TABLE staging.states IN ACCESS EXCLUSIVE MODE")
    return conn


# --- kill -9 mid-run, restart: the run completes and succeeded tasks are not re-run --------------
D9, D10 = "2024-01-09", "2024-01-10"
sim_advance(D10)
blocker = lock_states()  # holds load.states so the run is caught mid-way
run9 = start_run(D9)
check(wait_for(lambda: task_states(run9).get("load.states", ("",))[0] == "running", 30, "load.states running"),
      "the run is mid-way: load.states is running behind a lock")
before = task_states(run9)
extracts = {t: v for t, v in before.items() if t.startswith("extract.")}
check(all(v[0] == "succeeded" for v in extracts.values()), "all extract tasks had succeeded before the kill")
killed = pid_of("controller")
os.kill(killed, signal.SIGKILL)
check(wait_for(lambda: not os.path.exists(f"/proc/{killed}") or
               open(f"/proc/{killed}/stat").read().split(")")[-1].split()[0] == "Z", 30, "controller gone"),
      "the controller is gone")
set_pid("controller", start("controller"))
blocker.rollback()
blocker.close()
check(wait_for(lambda: run_state(run9) in ("succeeded", "failed"), 60, "run 9 to finish"), "the run finished")
check(run_state(run9) == "succeeded", f"the resumed run succeeded ({run_state(run9)})")
after = task_states(run9)
check(all(after[t] == extracts[t] for t in extracts),
      "the extract tasks that had succeeded were not run again (same attempt and start time)")

# --- clear a task: it and everything downstream run again, nothing upstream ----------------------
rc, out, err = stratactl("--json", "clear", "--run", run9, "--task", "model", "--wait")
check(rc == 0 and json.loads(out)["state"] == "succeeded", f"clear model --wait re-ran the run ({rc} {err.strip()})")
cleared = task_states(run9)
check(cleared["model"][1] == after["model"][1] + 1 and cleared["publish"][1] == after["publish"][1] + 1,
      "model and publish ran once more")
check(all(cleared[t] == extracts[t] for t in extracts) and cleared["load.orders"] == after["load.orders"],
      "nothing upstream of model ran again")
rc, out, _ = stratactl("--json", "logs", "--run", run9)
log_lines = json.loads(out)
model_attempts = [l["attempt"] for l in log_lines if l["task"] == "model" and l["state"] == "running"]
check(rc == 0 and model_attempts == [after["model"][1], after["model"][1] + 1],
      f"stratactl logs shows each attempt of model ({model_attempts})")
rc, out, _ = stratactl("--json", "pipelines")
pipes = json.loads(out)
check(rc == 0 and pipes[0]["name"] == "demo" and pipes[0]["tasks"][-1] == "publish" and pipes[0]["leading"],
      "stratactl pipelines lists the demo pipeline, its tasks and that this controller leads it")
rc, _, err = stratactl("clear", "--run", run9, "--task", "nonsense")
check(rc == 2 and "task" in err, "clearing an unknown task is refused")

# --- cancel ----------------------------------------------------------------------------------
blocker = lock_states()
run10 = start_run(D10)
check(wait_for(lambda: task_states(run10).get("load.states", ("",))[0] == "running", 60, "load.states running"),
      "the run to cancel is mid-way: load.states is running behind a lock")
rc, out, _ = stratactl("cancel", "--run", run10)
check(rc == 0, "cancel is accepted")
check(wait_for(lambda: run_state(run10) == "cancelled", 60, "cancelled"), f"the run ends cancelled ({run_state(run10)})")
states = task_states(run10)
check(states["publish"][0] == "skipped" and states["model"][0] == "skipped", "tasks not yet started are skipped")
blocker.rollback()
blocker.close()
rc, _, err = stratactl("cancel", "--run", run10)
check(rc == 2 and "not active" in err, f"cancelling a finished run is refused ({err.strip()})")

# --- a service down for a while: the controller waits and retries, then the run succeeds ------
os.kill(pid_of("quality"), signal.SIGKILL)
run10b = start_run(D10)
# Quality comes back only once the controller has reached the check task and is waiting for it.
check(wait_for(lambda: task_states(run10b).get("check", ("",))[0] == "running", 120, "check task waiting"),
      "with quality down, the run reaches its check task and waits")
set_pid("quality", start("quality"))
check(wait_for(lambda: run_state(run10b) in ("succeeded", "failed"), 90, "run 10 to finish"), "the run finished")
check(run_state(run10b) == "succeeded", f"with quality down for a while the run still succeeded ({run_state(run10b)})")

# --- leader and standby --------------------------------------------------------------------
leader_metrics = ENV["STRATA_CONTROLLER_METRICS"]
sb_grpc, sb_metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
standby = start("controller", {"STRATA_CONTROLLER_GRPC": sb_grpc, "STRATA_CONTROLLER_METRICS": sb_metrics,
                               "STRATA_CONTROLLER_HTTP": f"127.0.0.1:{free_port()}"},
                "controller_standby.log")
check(wait_for(lambda: gauge(sb_metrics, "strata_controller_leader") == 0, 60, "standby up"),
      "a second controller starts as a standby")
check(gauge(leader_metrics, "strata_controller_leader") == 1, "the first controller leads")
os.kill(pid_of("controller"), signal.SIGKILL)
t0 = time.time()
check(wait_for(lambda: gauge(sb_metrics, "strata_controller_leader") == 1, 60, "takeover"),
      f"the standby leads {time.time() - t0:.1f} s after the leader died")
rc, out, err = stratactl("--json", "--controller", sb_grpc, "run", "--date", D10)
check(rc == 0, f"the new leader runs the pipeline ({err.strip()[:200]})")
# Put a controller back on the stack's address (it stands by), then retire the temporary leader.
set_pid("controller", start("controller"))
check(wait_for(lambda: gauge(leader_metrics, "strata_controller_leader") == 0, 60, "standby up"),
      "a controller on the original address stands by")
os.kill(standby, signal.SIGKILL)
check(wait_for(lambda: gauge(leader_metrics, "strata_controller_leader") == 1, 60, "takeover"),
      "and takes over when the temporary leader dies")

# --- a task over its timeout is failed and its database work really cancelled ---------------------
os.kill(pid_of("controller"), signal.SIGKILL)
set_pid("controller", start("controller", {"STRATA_TASK_TIMEOUT_SECONDS": "8", "STRATA_TASK_RETRIES": "0"},
                            "controller_timeout.log"))
check(wait_for(lambda: gauge(leader_metrics, "strata_controller_leader") == 1, 60, "lead"),
      "a controller with an 8 s task timeout leads")
blocker = lock_states()
run_t = start_run(D10)


def stuck():
    """The loader's statements of this run's load.states that are running (blocked on the lock)."""
    return wh("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s AND state = 'active'",
              (f"strata:{run_t}:load.states:%",))[0][0]


check(wait_for(lambda: stuck() > 0, 60, "blocked statement"),
      "load.states has a statement running in PostgreSQL, blocked behind the lock")
check(wait_for(lambda: run_state(run_t) in ("failed", "succeeded"), 60, "timeout"), "the run ended")
message = wh("SELECT message FROM ops.task_runs WHERE run_id = %s AND task = 'load.states'", (run_t,))[0][0]
check(run_state(run_t) == "failed" and "no completion within 8 s" in message,
      f"load.states failed on its timeout ({message})")
check(wait_for(lambda: stuck() == 0, 30, "cancel"), "the loader's blocked statement was cancelled in PostgreSQL")
blocker.rollback()
blocker.close()
os.kill(pid_of("controller"), signal.SIGKILL)
set_pid("controller", start("controller"))
check(wait_for(lambda: gauge(leader_metrics, "strata_controller_leader") == 1, 60, "lead"),
      "the normal controller leads again")
finish()

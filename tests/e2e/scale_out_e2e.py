"""Two instances of every worker: the demo on a stack where ingest, lake-export, warehouse-loader
and quality each run twice (the second instance on its own ports) and the controller dials both
(STRATA_<SERVICE>_DIAL=addr1,addr2; round robin, an instance that stops answering skipped).

  - a day runs; both instances of ingest, lake-export and the loader did part of its tasks
    (their own metrics say so); staging and the fact hold exactly the source's lines, once;
  - during a day of 8,000 lines, one instance of each kind is killed with SIGKILL: the run
    succeeds on the survivors (a task the dead one held is dispatched again once its lease
    lapses), staging and the fact hold exactly the source's lines, each once.

Environment: STRATA_BUILD_BIN (default <repo>/build/bin). Run with /usr/bin/python3.
"""
import json
import os
import signal
import subprocess
import sys
import time

from own_stack import FAILURES, check, clean_env, gone, metric, pid_of, query, run_on_own_stack, start_service, step, \
    wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.abspath(os.environ.get("STRATA_BUILD_BIN") or os.path.join(ROOT, "build", "bin"))
sys.path.insert(0, os.path.join(ROOT, "infra"))
from free_port import free_port  # noqa: E402

D1, D2 = "2024-01-02", "2024-01-03"
WORKERS = {"ingest": "strata-ingest", "lake_export": "strata-lake-export",
           "warehouse_loader": "strata-warehouse-loader", "quality": "strata-quality"}
TASKS = {"ingest": "strata_ingest_tasks_total", "lake_export": "strata_lake_export_batches_total",
         "warehouse_loader": "strata_warehouse_loader_tasks_total", "quality": "strata_quality_checks_total"}
ENV = {}
SECOND = {}  # worker -> (Popen, env)


def run(*args, timeout=600):
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=ENV)
    return p.returncode, p.stdout, p.stderr


def lines(day):
    src = query(ENV["STRATA_SOURCE_DSN"], "SELECT count(*), coalesce(sum(quantity * unit_price), 0)::text FROM shop.order_items "
                                          "WHERE updated_at >= %s::date AND updated_at < %s::date + 1", (day, day))[0]
    fact = query(ENV["STRATA_PG_DSN"], "SELECT count(*), coalesce(sum(amount), 0)::text FROM dwh.fact_sales "
                                       "WHERE date_key = to_char(%s::date, 'YYYYMMDD')::int AND NOT is_deleted", (day,))[0]
    staged = query(ENV["STRATA_PG_DSN"], "SELECT count(*), count(DISTINCT (order_id, line_no)) FROM staging.order_items "
                                         "WHERE ds = %s", (day,))[0]
    return src, fact, staged


def check_day(day, rc, out, err):
    state = json.loads(out)["state"] if rc == 0 and out.strip() else f"rc={rc} {err.strip()[:300]}"
    check(state == "succeeded", f"{day} runs (state {state})")
    src, fact, staged = lines(day)
    check(src == fact and src[0] > 0, f"{day}: dwh.fact_sales holds the source's {src[0]} lines, sum {src[1]} (has {fact})")
    check(staged == (src[0], src[0]), f"{day}: staging holds each of them once ({staged[0]} rows, {staged[1]} keys)")


def safe_metric(env, service, name, labels=None):
    """The metric, or None while the service does not answer yet."""
    try:
        return metric(env, service, name, labels)
    except OSError:
        return None


def answers(env, service):
    """The service's /metrics answers (it started)."""
    import urllib.request
    try:
        with urllib.request.urlopen(f"http://{env[f'STRATA_{service.upper()}_METRICS']}/metrics", timeout=5) as r:
            return r.status == 200
    except OSError:
        return False


def work(env, worker):
    return safe_metric(env, worker, TASKS[worker]) or 0.0


def scenario():
    step("a second instance of every worker; the controller dials both")
    dial = {}
    for worker, binary in WORKERS.items():
        up = worker.upper()
        env2 = dict(ENV, **{f"STRATA_{up}_GRPC": f"127.0.0.1:{free_port(os.path.join(ENV['STRATA_STACK_DIR'], 'run', 'ports'))}",
                            f"STRATA_{up}_METRICS": f"127.0.0.1:{free_port(os.path.join(ENV['STRATA_STACK_DIR'], 'run', 'ports'))}"})
        SECOND[worker] = (start_service(ENV, f"{worker}_2", [f"{BIN}/{binary}"], env2), env2)
        dial[f"STRATA_{up}_DIAL"] = f"{ENV[f'STRATA_{up}_GRPC']},{env2[f'STRATA_{up}_GRPC']}"
        check(wait_until(lambda: answers(env2, worker), 60, f"the second {worker}"),
              f"a second {worker} serves on {env2[f'STRATA_{up}_GRPC']}")
    os.kill(pid_of(ENV, "controller"), signal.SIGTERM)
    wait_until(lambda: gone(pid_of(ENV, "controller")), 30, "the controller to stop")
    ENV.update(dial)
    start_service(ENV, "controller", [f"{BIN}/strata-controller"], dict(ENV))
    check(wait_until(lambda: safe_metric(ENV, "controller", "strata_controller_leader") == 1, 60, "a leader"),
          f"the controller leads again, dialing {', '.join(f'{k}={v}' for k, v in dial.items())}")

    step(f"{D1} runs over two instances of each worker")
    run(f"{BIN}/strata-source-sim", "advance", "--through", D1)
    before = {w: (work(ENV, w), work(SECOND[w][1], w)) for w in WORKERS}
    check_day(D1, *run(f"{BIN}/stratactl", "--json", "run", "--date", D1, "--timeout", "400"))
    for w in ("ingest", "lake_export", "warehouse_loader"):
        first, second = work(ENV, w) - before[w][0], work(SECOND[w][1], w) - before[w][1]
        check(first > 0 and second > 0, f"both {w} instances worked ({first:.0f} and {second:.0f})")

    step(f"one instance of each kind killed (SIGKILL) while {D2} (8,000 lines) runs")
    run(f"{BIN}/strata-source-sim", "advance", "--through", D2, "--orders-per-day", "2000", "--items-per-order", "4")
    day = subprocess.Popen([f"{BIN}/stratactl", "--json", "run", "--date", D2, "--timeout", "500"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    time.sleep(1.0)
    killed = []
    for w in WORKERS:
        pid = pid_of(ENV, w)
        os.kill(pid, signal.SIGKILL)
        killed.append(f"{w} ({pid})")
    out, err = day.communicate(timeout=700)
    print(f"     killed {', '.join(killed)}", flush=True)
    check_day(D2, day.returncode, out, err)
    check(all(SECOND[w][0].poll() is None for w in WORKERS), "the second instances are still running")


def main():
    def with_stack(env, webhook):
        global ENV
        ENV = env
        try:
            scenario()
        finally:
            for p, _ in SECOND.values():
                if p.poll() is None:
                    p.send_signal(signal.SIGTERM)
            for p, _ in SECOND.values():
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()

    run_on_own_stack(ROOT, BIN, "strata-scale-", clean_env(), [], with_stack, FAILURES)


if __name__ == "__main__":
    main()

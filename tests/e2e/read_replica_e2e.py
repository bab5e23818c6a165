"""Published answers from a hot standby: the demo on a stack whose warehouse server has a
streaming replica (STRATA_PG_REPLICA=1), the query service reading from it.

  - after a day is published and replayed, an uncached published answer is read on the replica
    (strata_query_reads_total{target="replica"}) and equals the primary's rows;
  - with the replica's replay paused, the next day is published: an answer of the new version is
    never read from the replica (it has not replayed it) but from the primary, and holds the new
    day; the replica's lag shows in strata_query_replica_lag_bytes and its version in
    strata_query_replica_version;
  - replay resumed, the replica serves the new version;
  - a realtime endpoint always reads the primary; with the replica stopped, published answers
    still come, from the primary.

Environment: STRATA_BUILD_BIN (default <repo>/build/bin). Run with /usr/bin/python3.
"""
import json
import os
import subprocess
import time
import urllib.request

from own_stack import FAILURES, check, clean_env, metric, query, run_on_own_stack, step, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.abspath(os.environ.get("STRATA_BUILD_BIN") or os.path.join(ROOT, "build", "bin"))
D1, D2 = "2024-01-02", "2024-01-03"
ENV = {}


def run(*args, timeout=600):
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=ENV)
    return p.returncode, p.stdout, p.stderr


def run_day(day):
    run(f"{BIN}/strata-source-sim", "advance", "--through", day)
    rc, out, err = run(f"{BIN}/stratactl", "--json", "run", "--date", day, "--timeout", "400")
    state = json.loads(out)["state"] if rc == 0 and out.strip() else f"rc={rc} {err.strip()[:300]}"
    check(state == "succeeded", f"{day} runs (state {state})")


def published(dsn):
    return query(dsn, "SELECT coalesce(max(version), 0) FROM serving.publications")[0][0]


def daily(frm, to):
    req = urllib.request.Request(f"http://{ENV['STRATA_QUERY_HTTP']}/analytics/sales/daily?from={frm}&to={to}",
                                 headers={"Authorization": f"Bearer {ENV['STRATA_QUERY_TOKEN']}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        body = json.loads(r.read())
    return r.status, [(d["ds"], d["orders"], d["revenue"]) for d in body["days"]], body.get("cached")


def primary_daily(frm, to):
    return [(str(ds), orders, float(revenue)) for ds, orders, revenue in
            query(ENV["STRATA_PG_DSN"], "SELECT ds, orders, revenue FROM serving.daily_sales WHERE ds BETWEEN %s AND %s "
                                        "ORDER BY ds", (frm, to))]


def reads(**labels):
    return metric(ENV, "query", "strata_query_reads_total", labels) or 0.0


def replica_sql(sql):
    return run("psql", ENV["STRATA_PG_REPLICA_DSN"], "-qAtc", sql)


def scenario():
    step("the stack's warehouse server has a streaming replica")
    rc, out, _ = replica_sql("SELECT pg_is_in_recovery()")
    check(rc == 0 and out.strip() == "t", "the replica is a hot standby (pg_is_in_recovery)")

    step(f"{D1} published and replayed: answers come from the replica")
    run_day(D1)
    v1 = published(ENV["STRATA_PG_DSN"])
    wait_until(lambda: published(ENV["STRATA_PG_REPLICA_DSN"]) == v1, 30, "the replica replays the publication")
    wait_until(lambda: metric(ENV, "query", "strata_query_replica_version") == v1, 10, "the query service sees it")
    before = reads(target="replica")
    status, rows, cached = daily(D1, D1)
    check(status == 200 and rows == primary_daily(D1, D1) and len(rows) == 1 and not cached,
          f"an uncached answer of version {v1} equals the primary's rows ({rows})")
    check(reads(target="replica") == before + 1, f"and was read on the replica ({before} -> {reads(target='replica')})")

    step(f"replay paused, {D2} published: the new version is read from the primary")
    rc, _, err = replica_sql("SELECT pg_wal_replay_pause()")
    check(rc == 0, f"replay paused ({err.strip()[:200]})")
    run_day(D2)
    v2 = published(ENV["STRATA_PG_DSN"])
    check(v2 > v1 and published(ENV["STRATA_PG_REPLICA_DSN"]) == v1, f"the primary is at version {v2}, the replica at {v1}")
    wait_until(lambda: (metric(ENV, "query", "strata_query_replica_lag_bytes") or 0) > 0, 10, "the lag to show")
    behind_before, replica_before = reads(target="primary", reason="not_ready"), reads(target="replica")
    status, rows, cached = daily(D1, D2)
    check(status == 200 and rows == primary_daily(D1, D2) and [r[0] for r in rows] == [D1, D2],
          f"the answer holds the new day ({rows})")
    check(reads(target="primary", reason="not_ready") == behind_before + 1 and reads(target="replica") == replica_before,
          "and was read on the primary, not on the replica that has not replayed it")
    check(metric(ENV, "query", "strata_query_replica_version") == v1,
          f"strata_query_replica_version says {v1}; lag {metric(ENV, 'query', 'strata_query_replica_lag_bytes'):.0f} bytes")

    step("replay resumed: the replica serves the new version")
    replica_sql("SELECT pg_wal_replay_resume()")
    wait_until(lambda: metric(ENV, "query", "strata_query_replica_version") == v2, 30, "the replica to replay it")
    replica_before = reads(target="replica")
    status, rows, _ = daily(D2, D2)
    check(status == 200 and rows == primary_daily(D2, D2) and reads(target="replica") == replica_before + 1,
          f"an answer of version {v2} read on the replica ({rows})")

    step("realtime reads the primary; without the replica, published answers still come")
    realtime_before = reads(target="primary", reason="realtime")
    order = query(ENV["STRATA_PG_DSN"], "SELECT order_id FROM marts.orders_current ORDER BY order_id LIMIT 1")[0][0]
    req = urllib.request.Request(f"http://{ENV['STRATA_QUERY_HTTP']}/analytics/orders/live?order_id={order}",
                                 headers={"Authorization": f"Bearer {ENV['STRATA_QUERY_TOKEN']}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        live = r.status
    check(live == 200 and reads(target="primary", reason="realtime") == realtime_before + 1,
          "the realtime endpoint read the primary")
    pgdir = open(os.path.join(ENV["STRATA_STACK_DIR"], "pgdir")).read().strip()
    as_pg = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    subprocess.run([*as_pg, "/usr/lib/postgresql/15/bin/pg_ctl", "-D", f"{pgdir}/replica", "-m", "immediate", "stop"],
                   capture_output=True, timeout=60)
    time.sleep(0.2)
    status, rows, _ = daily("2024-01-01", D2)
    check(status == 200 and rows == primary_daily("2024-01-01", D2),
          f"with the replica stopped a published answer still comes ({len(rows)} days), from the primary")


def main():
    def prepare(stack_dir):
        return {"STRATA_PG_REPLICA": "1"}

    def with_stack(env, webhook):
        global ENV
        ENV = env
        scenario()

    run_on_own_stack(ROOT, BIN, "strata-replica-", clean_env(), [], with_stack, FAILURES, prepare)


if __name__ == "__main__":
    main()

"""The bus on a Redis Cluster: the demo pipeline on a stack whose Redis is a cluster of three
masters with a replica each (STRATA_REDIS_CLUSTER=3, STRATA_REDIS_CLUSTER_REPLICAS=1), with a
live reshard and a master killed in the middle.

  - a day runs through every service with the cluster's nodes as seeds; the fact holds exactly
    the source's lines of the day; strata's keys (streams, leases, the serving version, cached
    answers) are spread over more than one node, each on the node that owns its slot;
  - the slot holding strata:batches migrates to another master while the services run
    (IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE): the next day runs to the same exact numbers, the
    stream now answered by its new owner (the services followed ASK and MOVED, nobody restarted);
  - an answer is cached in the cluster and served again from it;
  - the master now holding strata:batches is killed (SIGKILL) while a day of 8,000 lines runs:
    its replica is promoted, the run succeeds, staging and the fact hold exactly the source's
    lines (nothing lost, nothing doubled).

Environment: STRATA_BUILD_BIN (default <repo>/build/bin). Run with /usr/bin/python3.
"""
import json
import os
import signal
import subprocess
import time
import urllib.request

from own_stack import FAILURES, check, clean_env, query, run_on_own_stack, step

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.abspath(os.environ.get("STRATA_BUILD_BIN") or os.path.join(ROOT, "build", "bin"))
D1, D2, D3 = "2024-01-02", "2024-01-03", "2024-01-04"
ENV = {}


def run(*args, timeout=600):
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=ENV)
    return p.returncode, p.stdout, p.stderr


def cli(port, *args):
    rc, out, err = run("redis-cli", "-p", str(port), *args)
    if rc != 0:
        raise RuntimeError(f"redis-cli -p {port} {' '.join(args)}: {err}")
    return out.strip()


def ports():
    return ENV["STRATA_REDIS_CLUSTER_PORTS"].split()


def live_ports():
    return [p for p in ports() if run("redis-cli", "-p", p, "ping")[1].strip() == "PONG"]


def masters():
    """Ports of the live masters, from CLUSTER NODES."""
    out = []
    for line in cli(live_ports()[0], "cluster", "nodes").splitlines():
        f = line.split()
        if "master" in f[2] and "fail" not in f[2]:
            out.append(f[1].split("@")[0].rsplit(":", 1)[1])
    return sorted(out)


def node_ids():
    """{port: node id} from CLUSTER NODES."""
    out = {}
    for line in cli(live_ports()[0], "cluster", "nodes").splitlines():
        f = line.split()
        out[f[1].split("@")[0].rsplit(":", 1)[1]] = f[0]
    return out


def owner_of(key):
    """The port of the node that owns `key`'s slot, from the cluster itself."""
    slot = int(cli(live_ports()[0], "cluster", "keyslot", key))
    for line in cli(live_ports()[0], "cluster", "nodes").splitlines():
        f = line.split()
        if "master" not in f[2] or "fail" in f[2]:
            continue
        for part in f[8:]:
            lo, _, hi = part.partition("-")
            if lo.isdigit() and int(lo) <= slot <= int(hi or lo):
                return f[1].split("@")[0].rsplit(":", 1)[1]
    return None


def move_slot(slot, src, dst):
    """Migrates one hash slot from the master on port `src` to the one on `dst`, keys included,
    the way the Redis Cluster specification describes it (IMPORTING/MIGRATING, MIGRATE, NODE);
    clients asking for its keys meanwhile get ASK, then MOVED."""
    ids = node_ids()
    cli(dst, "cluster", "setslot", str(slot), "importing", ids[src])
    cli(src, "cluster", "setslot", str(slot), "migrating", ids[dst])
    while True:
        keys = cli(src, "cluster", "getkeysinslot", str(slot), "100").split()
        if not keys:
            break
        cli(src, "migrate", "127.0.0.1", dst, "", "0", "5000", "keys", *keys)
    for p in masters():
        cli(p, "cluster", "setslot", str(slot), "node", ids[dst])


def keys_on(port):
    return set(cli(port, "--scan").split())


def source_lines(day):
    return query(ENV["STRATA_SOURCE_DSN"],
                 "SELECT count(*), coalesce(sum(quantity * unit_price), 0)::text FROM shop.order_items "
                 "WHERE updated_at >= %s::date AND updated_at < %s::date + 1", (day, day))[0]


def fact_lines(day):
    return query(ENV["STRATA_PG_DSN"],
                 "SELECT count(*), coalesce(sum(amount), 0)::text FROM dwh.fact_sales "
                 "WHERE date_key = to_char(%s::date, 'YYYYMMDD')::int AND NOT is_deleted", (day,))[0]


def staged_lines(day):
    return query(ENV["STRATA_PG_DSN"], "SELECT count(*), count(DISTINCT (order_id, line_no)) FROM staging.order_items "
                                       "WHERE ds = %s", (day,))[0]


def check_day(day, rc, out, err):
    state = json.loads(out)["state"] if rc == 0 and out.strip() else f"rc={rc} {err.strip()[:300]}"
    check(state == "succeeded", f"{day} runs on the cluster (state {state})")
    src, fact, staged = source_lines(day), fact_lines(day), staged_lines(day)
    check(src == fact and src[0] > 0, f"{day}: dwh.fact_sales holds the source's {src[0]} lines, sum {src[1]} (has {fact})")
    check(staged == (src[0], src[0]), f"{day}: staging holds each of them once ({staged[0]} rows, {staged[1]} keys)")


def run_day(day):
    run(f"{BIN}/strata-source-sim", "advance", "--through", day)
    check_day(day, *run(f"{BIN}/stratactl", "--json", "run", "--date", day, "--timeout", "400"))


def http(path):
    req = urllib.request.Request(f"http://{ENV['STRATA_QUERY_HTTP']}{path}",
                                 headers={"Authorization": f"Bearer {ENV['STRATA_QUERY_TOKEN']}"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return r.status, json.loads(r.read())


def scenario():
    step("the stack's bus is a three-master cluster")
    check(len(ports()) == 6 and len(masters()) == 3 and ENV["STRATA_REDIS_URL"].count(",") == 5,
          f"three masters and three replicas, all seeds in STRATA_REDIS_URL ({ENV['STRATA_REDIS_URL']})")
    check(all("cluster_state:ok" in cli(p, "cluster", "info") for p in ports()), "cluster_state:ok on every node")

    step(f"{D1} runs through every service")
    run_day(D1)
    placed = {p: keys_on(p) for p in masters()}
    used = [p for p in masters() if placed[p]]
    check(len(used) >= 2, f"strata's keys are spread over {len(used)} nodes ({ {p: len(k) for p, k in placed.items()} })")
    misplaced = [(k, p) for p in masters() for k in placed[p] if owner_of(k) != p]
    check(not misplaced, f"every key sits on the node owning its slot (misplaced: {misplaced[:3]})")
    for stream in ("strata:batches", "strata:events"):
        check(stream in placed.get(owner_of(stream), set()), f"{stream} is on its owner {owner_of(stream)}")

    step("an answer is cached in the cluster")
    status, first = http(f"/analytics/sales/daily?from={D1}&to={D2}")
    status2, again = http(f"/analytics/sales/daily?from={D1}&to={D2}")
    cached = [k for p in masters() for k in keys_on(p) if k.startswith("strata:q:")]
    same = {k: v for k, v in first.items() if k != "cached"} == {k: v for k, v in again.items() if k != "cached"}
    check(status == status2 == 200 and same and again.get("cached") is True and cached,
          f"the daily sales answer twice the same, the second from the cache (cached={again.get('cached')}), "
          f"kept under {cached[:1]}")

    step("the slot of strata:batches migrates to another master, services running")
    slot = int(cli(masters()[0], "cluster", "keyslot", "strata:batches"))
    src = owner_of("strata:batches")
    dst = next(p for p in masters() if p != src)
    move_slot(slot, src, dst)
    check(owner_of("strata:batches") == dst and len(masters()) == 3,
          f"slot {slot} (strata:batches) now belongs to {owner_of('strata:batches')}; three masters still")

    step(f"{D2} runs after the reshard, nobody restarted")
    run_day(D2)
    check("strata:batches" in keys_on(dst) and "strata:batches" not in keys_on(src),
          f"strata:batches answered by its new owner {dst}")
    status, after = http(f"/analytics/sales/daily?from={D1}&to={D2}")
    check(status == 200 and D2 in json.dumps(after) and D1 in json.dumps(after),
          f"the API answers after the reshard, both days in its answer ({json.dumps(after)[:160]})")


    step(f"the master holding strata:batches is killed while {D3} (8,000 lines) runs")
    victim = owner_of("strata:batches")
    replica = next(line.split()[1].split("@")[0].rsplit(":", 1)[1]
                   for line in cli(victim, "cluster", "nodes").splitlines()
                   if line.split()[2] in ("slave", "replica") and line.split()[3] == node_ids()[victim])
    for _ in range(100):  # the replica has caught up before its master dies
        if "master_link_status:up" in cli(replica, "info", "replication"):
            break
        time.sleep(0.1)
    run(f"{BIN}/strata-source-sim", "advance", "--through", D3, "--orders-per-day", "2000", "--items-per-order", "4")
    day = subprocess.Popen([f"{BIN}/stratactl", "--json", "run", "--date", D3, "--timeout", "400"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    time.sleep(0.5)
    with open(os.path.join(ENV["STRATA_STACK_DIR"], "run", f"redis-{victim}.pid")) as f:
        os.kill(int(f.read().strip()), signal.SIGKILL)
    out, err = day.communicate(timeout=600)
    check_day(D3, day.returncode, out, err)
    check(victim not in live_ports() and owner_of("strata:batches") == replica,
          f"the replica {replica} of the killed master {victim} owns strata:batches now")
    check("cluster_state:ok" in cli(replica, "cluster", "info"), "the cluster is ok without the killed node")


def main():
    def prepare(stack_dir):
        return {"STRATA_REDIS_CLUSTER": "3", "STRATA_REDIS_CLUSTER_REPLICAS": "1"}

    def with_stack(env, webhook):
        global ENV
        ENV = env
        scenario()

    run_on_own_stack(ROOT, BIN, "strata-cluster-", clean_env(), [], with_stack, FAILURES, prepare)


if __name__ == "__main__":
    main()

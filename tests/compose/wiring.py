"""The compose deployment is wired the way the services read it, proven without a container engine
from `docker-compose config` (the file as Docker would run it), infra/prometheus/prometheus.yml
and the defaults in common/config.cpp:

  - every strata container gets the settings with no usable default (warehouse DSN, Redis URL,
    every service's gRPC address), and every host they name (postgres, redis, minio, source-sim,
    the services) is a compose service; a service is dialed (STRATA_<SERVICE>_DIAL, else its
    gRPC address) at the compose service running that binary, on the port it listens on;
  - every target Prometheus scrapes is a compose service running a strata binary, on the port
    that binary serves metrics on (STRATA_<SERVICE>_METRICS, or the code's default), on an
    address another container can reach (not loopback);
  - every named volume is declared, every bind-mounted file exists, a lake on a path lies on a
    volume, every published HTTP port is the one the service listens on;
  - with the scale profile and the .env.example lines it documents, the Redis seeds are the
    cluster's nodes and the replica DSN names the replica service.

Each rule is also run once against a deliberately broken copy, so a check that cannot fail
fails the test. Run with /usr/bin/python3 (python3-yaml).
"""
import copy
import os
import re
import subprocess
import sys

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVICES = ["ingest", "lake_export", "warehouse_loader", "quality", "query", "controller"]


def compose_config(env=None, profile=None):
    args = ["docker-compose", "-f", os.path.join(ROOT, "docker-compose.yml")]
    if profile:
        args += ["--profile", profile]
    p = subprocess.run(args + ["config"], capture_output=True, text=True, env=dict(os.environ, **(env or {})), cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"docker-compose config failed: {p.stderr}")
    return yaml.safe_load(p.stdout)


def default_endpoints():
    """{service: (grpc, metrics, http)} from common/config.cpp's DefaultEndpoints."""
    src = open(os.path.join(ROOT, "common", "config.cpp")).read()
    found = dict((m[0], (m[1], m[2], m[3])) for m in
                 re.findall(r'\{"(\w+)", \{"([^"]*)", "([^"]*)", "([^"]*)"(?:, "[^"]*")?\}\}', src))
    assert set(found) == set(SERVICES), f"DefaultEndpoints not understood: {found}"
    return found


def binary_of(svc):
    cmd = svc.get("command") or []
    cmd = cmd if isinstance(cmd, list) else cmd.split()
    text = " ".join(cmd)
    m = re.search(r"\bstrata-(ingest|lake-export|warehouse-loader|quality|query|controller)\b", text)
    return m.group(1).replace("-", "_") if m else None


def dsn_host(dsn):
    m = re.search(r"(?:^|\s)host=(\S+)", dsn)
    return m.group(1) if m else None


def url_hosts(url):
    rest = re.sub(r"^\w+://", "", url).split("/")[0]
    return [part.rsplit(":", 1)[0] for part in rest.split(",") if part]


def problems(cfg, prometheus, defaults, profile_env=None):
    """Every wiring problem of a resolved compose config, as readable strings."""
    out = []
    services = cfg["services"]
    names = set(services)
    runs = {binary_of(s): name for name, s in services.items() if binary_of(s)}
    for b in SERVICES:
        if b not in runs:
            out.append(f"no compose service runs strata-{b.replace('_', '-')}")
    strata = {name: s for name, s in services.items() if s.get("image") == "strata:latest"}
    for name, s in strata.items():
        env = s.get("environment") or {}
        for var in ("STRATA_PG_DSN", "STRATA_REDIS_URL"):
            if not env.get(var):
                out.append(f"{name}: {var} is not set")
        for var, value in env.items():
            if not value:
                continue
            hosts = []
            if var.endswith("_DSN") or var == "STRATA_QUERY_REPLICA_DSNS":
                hosts = [dsn_host(d) for d in str(value).split(";") if d.strip()]
            elif var in ("STRATA_REDIS_URL", "STRATA_S3_ENDPOINT", "STRATA_SOURCE_HTTP"):
                hosts = url_hosts(str(value))
            for h in hosts:
                if h not in names:
                    out.append(f"{name}: {var} names host '{h}', which is no compose service")
        for b in SERVICES:
            var, dvar = f"STRATA_{b.upper()}_GRPC", f"STRATA_{b.upper()}_DIAL"
            value = env.get(var)
            if not value:
                out.append(f"{name}: {var} is not set (the default {defaults[b][0]} is the container itself)")
                continue
            host, port = str(value).rsplit(":", 1)
            if host not in ("0.0.0.0", runs.get(b)):
                out.append(f"{name}: {var}={value}: strata-{b.replace('_', '-')} runs in '{runs.get(b)}'")
            # Clients dial STRATA_<SERVICE>_DIAL (else the listen address): the service's name, its port.
            dial = str(env.get(dvar) or value)
            dhost, dport = re.sub(r"^dns:///", "", dial).rsplit(":", 1)
            if dhost != runs.get(b) or dport != port:
                out.append(f"{name}: clients dial strata-{b.replace('_', '-')} at {dial}, but it runs in "
                           f"'{runs.get(b)}' listening on port {port}")
        b = binary_of(s)
        if b and defaults[b][2]:
            http = str(env.get(f"STRATA_{b.upper()}_HTTP") or defaults[b][2])
            port = http.rsplit(":", 1)[1]
            for p in s.get("ports") or []:
                target = str(p.get("target") if isinstance(p, dict) else str(p).rsplit(":", 1)[-1])
                if target not in (port, env.get(f"STRATA_{b.upper()}_GRPC", defaults[b][0]).rsplit(":", 1)[1]):
                    out.append(f"{name}: publishes container port {target}, but it listens on {port} (HTTP) "
                               f"and its gRPC port")
        lake = str(env.get("STRATA_LAKE_ROOT") or "")
        if lake.startswith("/"):
            mounts = [str(v.get("target") if isinstance(v, dict) else str(v).split(":")[1]) for v in s.get("volumes") or []]
            if not any(lake == m or lake.startswith(m.rstrip("/") + "/") for m in mounts):
                out.append(f"{name}: STRATA_LAKE_ROOT {lake} is on no volume ({mounts})")
    declared = set((cfg.get("volumes") or {}).keys())
    for name, s in services.items():
        for v in s.get("volumes") or []:
            kind = v.get("type") if isinstance(v, dict) else ("bind" if str(v).startswith((".", "/")) else "volume")
            source = v.get("source") if isinstance(v, dict) else str(v).split(":")[0]
            if kind == "volume" and source not in declared:
                out.append(f"{name}: volume '{source}' is not declared")
            if kind == "bind" and not os.path.exists(source if os.path.isabs(source) else os.path.join(ROOT, source)):
                out.append(f"{name}: bind-mounted '{source}' does not exist")
    for job in prometheus.get("scrape_configs", []):
        for sc in job.get("static_configs", []):
            for target in sc.get("targets", []):
                host, port = target.rsplit(":", 1)
                s = services.get(host)
                b = binary_of(s) if s else None
                if not b:
                    out.append(f"prometheus scrapes {target}: '{host}' runs no strata binary")
                    continue
                metrics = str((s.get("environment") or {}).get(f"STRATA_{b.upper()}_METRICS") or defaults[b][1])
                if metrics.rsplit(":", 1)[1] != port:
                    out.append(f"prometheus scrapes {target}, but strata-{b.replace('_', '-')} serves metrics on {metrics}")
                elif metrics.rsplit(":", 1)[0] in ("127.0.0.1", "localhost"):
                    out.append(f"prometheus scrapes {target}, but strata-{b.replace('_', '-')} serves metrics on "
                               f"{metrics}, unreachable from another container")
    if profile_env:
        nodes = [n for n in services if n.startswith("redis-node-")]
        for name, s in strata.items():
            env = s.get("environment") or {}
            seeds = url_hosts(str(env.get("STRATA_REDIS_URL", "")))
            if not seeds or not set(seeds) <= set(nodes):
                out.append(f"{name}: with the scale profile the Redis seeds {seeds} are not cluster nodes {nodes}")
            replicas = [dsn_host(d) for d in str(env.get("STRATA_QUERY_REPLICA_DSNS", "")).split(";") if d.strip()]
            if replicas != ["postgres-replica"]:
                out.append(f"{name}: with the scale profile STRATA_QUERY_REPLICA_DSNS names {replicas}")
    return out


def scale_env():
    """The scale profile's settings, as .env.example documents them (its commented lines)."""
    env = {}
    lines = open(os.path.join(ROOT, ".env.example")).read().split("# scale profile", 1)[1].splitlines()
    for line in lines:
        m = re.match(r"#\s*(STRATA_[A-Z_]+)=(.*)$", line)
        if m:
            env[m.group(1)] = m.group(2)
    assert set(env) == {"STRATA_REDIS_URL", "STRATA_QUERY_REPLICA_DSNS"}, env
    return env


def main():
    defaults = default_endpoints()
    prometheus = yaml.safe_load(open(os.path.join(ROOT, "infra", "prometheus", "prometheus.yml")))
    failures = []
    cfg = compose_config()
    found = problems(cfg, prometheus, defaults)
    print(f"default deployment: {len(cfg['services'])} services, {len(found)} problems")
    failures += found
    senv = scale_env()
    scale = compose_config(senv, "scale")
    found = problems(scale, prometheus, defaults, senv)
    print(f"scale profile: {len(scale['services'])} services, {len(found)} problems")
    failures += found

    # Every rule must be able to fail.
    def broken(mutate):
        c, p = copy.deepcopy(cfg), copy.deepcopy(prometheus)
        mutate(c, p)
        return problems(c, p, defaults)
    cases = {
        "a scrape port": lambda c, p: p["scrape_configs"][0]["static_configs"][0].__setitem__(
            "targets", ["ingest:9999"] + p["scrape_configs"][0]["static_configs"][0]["targets"][1:]),
        "a gRPC address": lambda c, p: c["services"]["quality"]["environment"].__setitem__("STRATA_QUERY_GRPC", "quality:50055"),
        "a dial target": lambda c, p: c["services"]["controller"]["environment"].__setitem__(
            "STRATA_WAREHOUSE_LOADER_DIAL", "dns:///warehouse-loader:50099"),
        "a DSN host": lambda c, p: c["services"]["ingest"]["environment"].__setitem__("STRATA_PG_DSN", "host=pg dbname=w"),
        "a missing Redis URL": lambda c, p: c["services"]["query"]["environment"].pop("STRATA_REDIS_URL"),
        "an undeclared volume": lambda c, p: c["volumes"].pop(next(iter(c["volumes"]))),
        "a published port": lambda c, p: c["services"]["query"].__setitem__("ports", [{"target": 9999, "published": "9999"}]),
        "metrics on loopback": lambda c, p: c["services"]["quality"]["environment"].__setitem__(
            "STRATA_QUALITY_METRICS", "127.0.0.1:9104"),
        "a lake off its volume": lambda c, p: c["services"]["ingest"]["environment"].__setitem__("STRATA_LAKE_ROOT", "/nowhere/lake"),
    }
    for what, mutate in cases.items():
        found = broken(mutate)
        print(f"broken {what}: {found[:1]}")
        if not found:
            failures.append(f"the checks miss {what}")
    if failures:
        print(f"{len(failures)} problem(s):")
        for f in failures:
            print(f"  - {f}")
        sys.exit(1)
    print("compose wiring ok")


if __name__ == "__main__":
    main()

"""Monitoring against the running stack: a real Prometheus with the project's scrape config and
alerting rules sees every service up; the Grafana dashboards only use metrics strata exposes
(their PromQL evaluates in that Prometheus) and their SQL runs as the analyst role."""
import json
import os
import re
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request

import psycopg2

from strata_e2e import ENV, check, finish, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SERVICES = {"ingest": 9101, "lake-export": 9102, "warehouse-loader": 9103, "quality": 9104, "query": 9105,
            "controller": 9106}


def api(port, path):
    return json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5).read())


# The compose scrape config, pointed at this stack's addresses.
config = open(os.path.join(ROOT, "infra/prometheus/prometheus.yml")).read()
for host, port in SERVICES.items():
    check(f"{host}:{port}" in config, f"prometheus.yml scrapes {host}")
    config = config.replace(f"{host}:{port}", ENV[f"STRATA_{host.upper().replace('-', '_')}_METRICS"])
config = config.replace("scrape_interval: 15s", "scrape_interval: 1s")
config = config.replace("/etc/prometheus/alerts.yml", os.path.join(ROOT, "infra/prometheus/alerts.yml"))
work = tempfile.mkdtemp()
open(os.path.join(work, "prometheus.yml"), "w").write(config)
port = free_port()
log = open(os.path.join(ENV["STRATA_STACK_DIR"], "logs", "prometheus.log"), "w")
prom = subprocess.Popen(["prometheus", f"--config.file={work}/prometheus.yml", f"--storage.tsdb.path={work}/data",
                         f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=log)
try:
    up = []
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            targets = api(port, "/api/v1/targets")["data"]["activeTargets"]
            up = [t["scrapeUrl"] for t in targets if t["health"] == "up"]
            if len(up) == len(SERVICES):
                break
        except OSError:
            pass
        time.sleep(0.5)
    check(len(up) == len(SERVICES), f"Prometheus scrapes all {len(SERVICES)} services and every target is up ({len(up)})")
    rules = [r["name"] for g in api(port, "/api/v1/rules")["data"]["groups"] for r in g["rules"]]
    check(len(rules) == 9 and {"StrataRunFailed", "StrataCdcDown", "StrataLakeWritesFailing"} <= set(rules), f"the alerting rules are loaded ({rules})")
    time.sleep(3)  # a few scrapes for rate() windows

    golden = {l.split()[1] for l in open(os.path.join(ROOT, "tests/metrics_golden.txt")) if l.strip() and not l.startswith("#")}
    future = set()
    health = json.load(open(os.path.join(ROOT, "infra/grafana/dashboards/pipeline-health.json")))
    for panel in health["panels"]:
        expr = panel["targets"][0]["expr"]
        names = {re.sub(r"_(bucket|count|sum)$", "", n) for n in re.findall(r"strata_[a-z_]+", expr)}
        check(names <= golden | future, f"panel '{panel['title']}' uses only metrics strata exposes ({names - golden - future})")
        result = api(port, "/api/v1/query?query=" + urllib.parse.quote(expr))
        check(result["status"] == "success", f"panel '{panel['title']}' evaluates in Prometheus")
finally:
    prom.terminate()
    prom.wait(timeout=30)

dsn = ENV["STRATA_PG_DSN"].replace("user=postgres", "user=analyst")
business = json.load(open(os.path.join(ROOT, "infra/grafana/dashboards/business.json")))
conn = psycopg2.connect(dsn)
for panel in business["panels"]:
    with conn.cursor() as cur:
        cur.execute(panel["targets"][0]["rawSql"])
        rows = cur.fetchall()
    check(len(rows) > 0, f"business panel '{panel['title']}' returns rows as the analyst role ({len(rows)})")
    conn.rollback()
datasources = open(os.path.join(ROOT, "infra/grafana/provisioning/datasources/strata.yml")).read()
for dash in (health, business):
    for panel in dash["panels"]:
        check(f"uid: {panel['datasource']['uid']}" in datasources,
              f"panel '{panel['title']}' uses a provisioned datasource")
finish()

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

from strata_e2e import ENV, check, finish, free_port, metric, metrics, src, wait_for, wh

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
    declared = re.findall(r"^\s*- alert: (\w+)", open(os.path.join(ROOT, "infra/prometheus/alerts.yml")).read(), re.M)
    check(len(declared) == 11 and sorted(rules) == sorted(declared),
          f"the alerting rules are loaded: every rule of infra/prometheus/alerts.yml, 11 ({rules})")
    # rate() and increase() need two samples of a series: wait until every target was scraped a few times.
    samples = lambda: api(port, "/api/v1/query?query=" + urllib.parse.quote("count_over_time(up[5m])"))  # noqa: E731
    check(wait_for(lambda: len(samples()["data"]["result"]) == len(SERVICES) and
                   all(float(r["value"][1]) >= 3 for r in samples()["data"]["result"]), 120, "three scrapes"),
          "Prometheus has scraped every target at least three times")

    golden = {l.split()[1] for l in open(os.path.join(ROOT, "tests/metrics_golden.txt")) if l.strip() and not l.startswith("#")}
    future = set()
    results = {}
    health = json.load(open(os.path.join(ROOT, "infra/grafana/dashboards/pipeline-health.json")))
    for panel in health["panels"]:
        expr = panel["targets"][0]["expr"]
        names = {re.sub(r"_(bucket|count|sum)$", "", n) for n in re.findall(r"strata_[a-z_]+", expr)}
        check(names <= golden | future, f"panel '{panel['title']}' uses only metrics strata exposes ({names - golden - future})")
        result = api(port, "/api/v1/query?query=" + urllib.parse.quote(expr))
        series = result["data"]["result"] if result["status"] == "success" else []
        check(result["status"] == "success" and len(series) > 0,
              f"panel '{panel['title']}' evaluates in Prometheus to {len(series)} series (not empty)")
        results[panel["title"]] = series
    # Values that can be told from elsewhere: the controller's own /metrics and the run history.
    states = {r["metric"].get("state") for r in results["Runs finished by state"]}
    check({"succeeded", "failed"} <= states, f"runs finished by state has the succeeded and failed runs this stack had ({states})")
    last_success = metric(metrics("controller"), "strata_controller_last_success_timestamp_seconds")
    hours = [float(r["value"][1]) for r in results["Hours since the last successful run"]]
    at = results["Hours since the last successful run"][0]["value"][0]
    check(len(hours) == 1 and abs(hours[0] - (at - last_success) / 3600) < 0.01,
          f"hours since the last success is (now - the controller's last success) ({hours})")
    failed_kinds = {r["metric"].get("kind") for r in results["Failed checks"]}
    check("dead_letters" in failed_kinds, f"the failed-checks panel names the dead_letters check that failed ({failed_kinds})")
finally:
    prom.terminate()
    prom.wait(timeout=30)

dsn = ENV["STRATA_PG_DSN"].replace("user=postgres", "user=analyst")
business = json.load(open(os.path.join(ROOT, "infra/grafana/dashboards/business.json")))
conn = psycopg2.connect(dsn)
panels = {}
for panel in business["panels"]:
    with conn.cursor() as cur:
        cur.execute("SET TIME ZONE 'UTC'")
        cur.execute(panel["targets"][0]["rawSql"])
        panels[panel["title"]] = cur.fetchall()
    conn.rollback()
check(set(panels) == {"Daily revenue", "Orders by current status", "Largest review-count changes (latest day)",
                      "Average rating by price level (latest day)"}, f"the business dashboard's panels ({sorted(panels)})")
# What each panel must show, worked out here from the source (the shop's orders and lines) and from
# the published tables read row by row, not with the panels' SQL.
served = [d for (d,) in wh("SELECT ds FROM serving.daily_sales ORDER BY ds")]
want = src("""SELECT o.ordered_at::date, sum(i.quantity * i.unit_price), count(DISTINCT o.order_id)
              FROM shop.orders o JOIN shop.order_items i USING (order_id)
              WHERE o.ordered_at::date = ANY(%s::date[]) GROUP BY 1 ORDER BY 1""", (served,))
got = panels["Daily revenue"]
check(len(got) == len(want) > 0 and [(t.date(), round(r, 2), n) for t, r, n in got] == [(d, round(float(r), 2), n) for d, r, n in want],
      f"'Daily revenue' shows the source's revenue and orders for each of the {len(want)} published days")
statuses = {}
for (status,) in wh("SELECT status FROM serving.orders_current"):
    statuses[status] = statuses.get(status, 0) + 1
check(panels["Orders by current status"] == sorted(statuses.items()) and statuses,
      f"'Orders by current status' counts the published orders per status ({sorted(statuses.items())})")
rows = wh("SELECT ds, business_id, name, review_count, review_change FROM serving.business_review_changes")
day = max(r[0] for r in rows)
top = sorted((r[1:] for r in rows if r[0] == day and r[4] is not None), key=lambda r: -r[3])[:10]
got = panels["Largest review-count changes (latest day)"]
check(len(got) == len(top) == 10 and [r[3] for r in got] == [r[3] for r in top] and set(got) <= set(r[1:] for r in rows if r[0] == day),
      f"'Largest review-count changes' lists the ten largest changes of {day} ({[r[3] for r in got]})")
levels = {}
for lvl, avg in wh("SELECT price_level, avg_rating FROM serving.rating_by_price_level WHERE ds = %s", (day,)):
    levels[str(lvl)] = float(avg)
check(panels["Average rating by price level (latest day)"] == sorted(levels.items()) and levels,
      f"'Average rating by price level' shows each level of {day} ({sorted(levels.items())})")
datasources = open(os.path.join(ROOT, "infra/grafana/provisioning/datasources/strata.yml")).read()
for dash in (health, business):
    for panel in dash["panels"]:
        check(f"uid: {panel['datasource']['uid']}" in datasources,
              f"panel '{panel['title']}' uses a provisioned datasource")
finish()

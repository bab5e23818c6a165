"""The bare tools strata replaces, on the same source day as the pipeline run, same servers:

  floor   psql \\copy (SELECT ...) TO STDOUT | zstd  -> a lake file
          zstd -dc | psql \\copy                     -> staging
          INSERT ... SELECT ... ON CONFLICT          -> the fact
  pandas  pandas.read_sql -> gzip CSV lake file -> psycopg2 copy_expert -> the same upsert
          (the seed-style Python pipeline)

Each is run RUNS times (default 3) from empty tables; prints one JSON object with every run's
seconds per step and the median of the totals.

  /usr/bin/python3 bench/baselines.py DS WORKDIR   (environment: STRATA_SOURCE_DSN, STRATA_PG_DSN)
"""
import gzip
import json
import os
import statistics
import subprocess
import sys
import time
import warnings

import pandas as pd
import psycopg2

DS, WORK = sys.argv[1], sys.argv[2]
# pandas warns about plain DBAPI connections; the seed-style scripts use exactly those.
warnings.filterwarnings("ignore", category=UserWarning)
RUNS = int(os.environ.get("STRATA_BENCH_BASELINE_RUNS", "3"))
SRC, WH = os.environ["STRATA_SOURCE_DSN"], os.environ["STRATA_PG_DSN"]
SELECT = (f"SELECT order_id, line_no, product_id, quantity, unit_price, updated_at FROM shop.order_items "
          f"WHERE updated_at >= '{DS}' AND updated_at < '{DS}'::date + 1")
SETUP = """
SET client_min_messages = warning;
CREATE SCHEMA IF NOT EXISTS bench;
DROP TABLE IF EXISTS bench.order_items, bench.fact;
CREATE TABLE bench.order_items (order_id bigint, line_no int, product_id bigint, quantity int, unit_price numeric(10,2),
                                updated_at timestamptz);
CREATE TABLE bench.fact (order_id bigint, line_no int, date_key int NOT NULL, product_id bigint, quantity int,
                         unit_price numeric(12,2), amount numeric(14,2), updated_at timestamptz,
                         PRIMARY KEY (order_id, line_no));
"""
UPSERT = """
INSERT INTO bench.fact
SELECT order_id, line_no, to_char(updated_at AT TIME ZONE 'UTC', 'YYYYMMDD')::int, product_id, quantity, unit_price,
       round(quantity * unit_price, 2), updated_at
FROM bench.order_items
ON CONFLICT (order_id, line_no) DO UPDATE SET quantity = EXCLUDED.quantity, unit_price = EXCLUDED.unit_price,
  amount = EXCLUDED.amount, updated_at = EXCLUDED.updated_at
"""


def psql(dsn, *args, **kw):
    return subprocess.run(["psql", dsn, "-qAt", *args], check=True, **kw)


def timed(f):
    t = time.perf_counter()
    f()
    return time.perf_counter() - t


def floor():
    lake = os.path.join(WORK, "floor.tsv.zst")
    steps = {}
    steps["extract"] = timed(lambda: subprocess.run(
        f"psql '{SRC}' -qAt -c \"\\copy ({SELECT}) TO STDOUT\" | zstd -q -f -o '{lake}'", shell=True, check=True))
    steps["load"] = timed(lambda: subprocess.run(
        f"zstd -dc '{lake}' | psql '{WH}' -qAt -c '\\copy bench.order_items FROM STDIN'", shell=True, check=True))
    steps["upsert"] = timed(lambda: psql(WH, "-c", UPSERT))
    return steps


def pandas_pipeline():
    lake = os.path.join(WORK, "pandas.csv.gz")
    steps = {}
    frame = {}

    def extract():
        with psycopg2.connect(SRC) as c:
            frame["df"] = pd.read_sql(SELECT, c)
        frame["df"].to_csv(lake, index=False, compression="gzip")
    steps["extract"] = timed(extract)

    def load():
        with psycopg2.connect(WH) as c, c.cursor() as cur, gzip.open(lake, "rt") as f:
            cur.copy_expert("COPY bench.order_items FROM STDIN (FORMAT csv, HEADER true)", f)
    steps["load"] = timed(load)
    steps["upsert"] = timed(lambda: psql(WH, "-c", UPSERT))
    return steps


out = {}
for name, pipeline in (("floor", floor), ("pandas", pandas_pipeline)):
    runs = []
    for _ in range(RUNS):
        psql(WH, "-c", SETUP)
        steps = pipeline()
        steps["total"] = sum(steps.values())
        runs.append(steps)
    rows = int(psql(WH, "-c", "SELECT count(*) FROM bench.fact", capture_output=True, text=True).stdout)
    out[name] = {"runs": runs, "median": statistics.median(r["total"] for r in runs), "rows": rows}
psql(WH, "-c", "SET client_min_messages = warning; DROP SCHEMA bench CASCADE")
print(json.dumps(out))

"""Governance: the loader's roles log in and read exactly their layers."""
import psycopg2

from strata_e2e import ENV, check, finish

TABLES = {
    "raw": None,
    "staging": "staging.orders",
    "dwh": "dwh.fact_sales",
    "marts": "marts.daily_sales",
    "serving": "serving.daily_sales",
    "quality": "quality.check_results",
    "ops": "ops.runs",
}
ALLOWED = {
    "analyst": {"dwh", "marts", "serving", "quality"},
    "scientist": {"staging", "dwh", "marts", "serving", "quality"},
    "engineer": {"staging", "dwh", "marts", "serving", "quality", "ops"},
}
dsn = ENV["STRATA_PG_DSN"].replace("user=postgres", "")
for role, allowed in ALLOWED.items():
    conn = psycopg2.connect(f"{dsn} user={role}")
    conn.autocommit = True
    for layer, table in TABLES.items():
        if table is None:
            continue
        with conn.cursor() as cur:
            try:
                cur.execute(f"SELECT count(*) FROM {table}")
                n = cur.fetchone()[0]
                check(layer in allowed, f"{role} reads {table} ({n} rows)" if layer in allowed
                      else f"{role} must not read {table}, but read {n} rows")
            except psycopg2.errors.InsufficientPrivilege as e:
                check(layer not in allowed, f"{role} is denied {table}" if layer not in allowed
                      else f"{role} should read {table}: {e.pgerror.strip()}")
    with conn.cursor() as cur:
        try:
            cur.execute("DELETE FROM serving.daily_sales")
            check(False, f"{role} must not write serving.daily_sales")
        except psycopg2.errors.InsufficientPrivilege:
            check(True, f"{role} cannot write the published marts")
    conn.close()
finish()

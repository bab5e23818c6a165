"""Governance: the loader's roles log in and read exactly their layers, raw included; none of them
may INSERT, UPDATE, DELETE or TRUNCATE any table of any layer (nobody but the loading user writes).
Every write is tried inside a transaction that is rolled back, so a wrongly granted write changes
nothing."""
import base64
import hashlib
import hmac

import psycopg2

from strata_e2e import ENV, check, finish, wh

TABLES = {
    "raw": "raw.orders_changes",
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
    "engineer": {"raw", "staging", "dwh", "marts", "serving", "quality", "ops"},
}
missing = [t for t in TABLES.values() if wh("SELECT to_regclass(%s)", (t,))[0][0] is None]
check(not missing, f"every layer's table exists ({missing})")
first_column = {t: wh("SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum = 1", (t,))[0][0]
                for t in TABLES.values() if t not in missing}


def writes(table):
    col = first_column[table]
    return {
        "INSERT": f"INSERT INTO {table} DEFAULT VALUES",
        "UPDATE": f"UPDATE {table} SET {col} = {col} WHERE false",
        "DELETE": f"DELETE FROM {table} WHERE false",
        "TRUNCATE": f"TRUNCATE {table}",
    }


dsn = ENV["STRATA_PG_DSN"].replace("user=postgres", "")
for role, allowed in ALLOWED.items():
    conn = psycopg2.connect(f"{dsn} user={role}")
    for layer, table in TABLES.items():
        if table in missing:
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
        conn.rollback()
        wrong = []
        for verb, sql in writes(table).items():
            with conn.cursor() as cur:
                try:
                    cur.execute(sql)
                    wrong.append(f"{verb} succeeded")
                except psycopg2.errors.InsufficientPrivilege as e:
                    # On a layer it reads the role passes the schema, so the table's privilege refuses.
                    if layer in allowed and f"permission denied for table {table.split('.')[1]}" not in e.pgerror:
                        wrong.append(f"{verb}: {e.pgerror.strip()}")
                except psycopg2.Error as e:
                    wrong.append(f"{verb} got past the privilege check: {e.pgerror.strip()}")
            conn.rollback()
        check(not wrong, f"{role} may not INSERT, UPDATE, DELETE or TRUNCATE {table}" + (f": {wrong}" if wrong else ""))
    conn.close()


def scram_matches(verifier, password):
    """Whether PostgreSQL's SCRAM-SHA-256 verifier (RFC 5803 form) was made from `password`."""
    if not verifier or not verifier.startswith("SCRAM-SHA-256$"):
        return False
    iterations_salt, keys = verifier[len("SCRAM-SHA-256$"):].split("$")
    iterations, salt = iterations_salt.split(":")
    stored_key = keys.split(":")[0]
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iterations))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return base64.b64encode(hashlib.sha256(client_key).digest()).decode() == stored_key


# The analyst's password comes from the configuration (STRATA_ANALYST_PASSWORD), as a dashboard
# needs it; roles given none have none.
verifiers = dict(wh("SELECT rolname, rolpassword FROM pg_authid WHERE rolname IN ('analyst', 'scientist')"))
check(scram_matches(verifiers.get("analyst"), ENV["STRATA_ANALYST_PASSWORD"]),
      "the loader set analyst's password from STRATA_ANALYST_PASSWORD (its SCRAM verifier matches)")
check(not scram_matches(verifiers.get("analyst"), ENV["STRATA_ANALYST_PASSWORD"] + "x"),
      "and only that password matches")
check(verifiers.get("scientist") is None, "a role given no password has none")
finish()

"""Bad configuration and bad arguments fail fast with a message naming what and where."""
import os
import tempfile

from strata_e2e import BIN, ENV, check, finish, free_port, stratactl

env_clean = {k: v for k, v in os.environ.items() if not k.startswith("STRATA_")}


def start(binary, config_text=None, extra_env=None):
    env = dict(env_clean, **(extra_env or {}))
    args = [f"{BIN}/{binary}"]
    if config_text is not None:
        f = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
        f.write(config_text)
        f.close()
        args += ["--config", f.name]
    import subprocess
    p = subprocess.run(args, capture_output=True, text=True, env=env, timeout=30)
    return p.returncode, p.stderr


rc, err = start("strata-ingest", "warehouse_dns: host=x\n")
check(rc == 2 and "warehouse_dns: unknown key" in err, f"unknown config key: exit 2 naming it ({rc}: {err.strip()})")
rc, err = start("strata-query", "services:\n  query: {grpc: nowhere}\n")
check(rc == 2 and "services.query.grpc: expected host:port" in err, f"bad address: exit 2 ({err.strip()})")
rc, err = start("strata-controller", "", {"STRATA_REDIS_URL": "localhost:6379"})
check(rc == 2 and "STRATA_REDIS_URL" in err, f"bad env override: exit 2 naming the variable ({err.strip()})")
bad_spec = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
bad_spec.write("pipeline: demo\ndatasets:\n  - name: x\n    source: {type: ftp}\n    columns: [{name: a, type: int}]\n")
bad_spec.close()
rc, err = start("strata-ingest", "", {"STRATA_PIPELINE_SPEC": bad_spec.name,
                                       "STRATA_INGEST_GRPC": f"127.0.0.1:{free_port()}",
                                       "STRATA_INGEST_METRICS": f"127.0.0.1:{free_port()}"})
check(rc == 2 and "datasets[0].source.type: unknown source type 'ftp'" in err,
      f"bad pipeline spec: exit 2 naming the path ({err.strip()})")

# A pipeline folder's SQL models: stratactl validate and the loader's start-up refuse the same
# faults with the same message (file and line), before any database is asked.
import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(ROOT, "pipelines", "demo")


def ctl(*args):
    p = subprocess.run([f"{BIN}/stratactl", *args], capture_output=True, text=True, env=env_clean, timeout=30)
    return p.returncode, p.stdout, p.stderr


rc, out, err = ctl("validate", DEMO)
check(rc == 0 and "pipeline demo is valid" in out and "8 SQL models" in out,
      f"stratactl validate pipelines/demo: valid, 8 SQL models ({rc}: {out.strip()} {err.strip()})")
rc, out, _ = ctl("--json", "models", DEMO)
names = [m["name"] for m in json.loads(out)] if rc == 0 else []
check(names == ["dwh.fact_business_daily", "marts.business_review_changes", "dwh.fact_review", "marts.business_stars",
                "marts.daily_sales", "dwh.dim_state", "marts.product_daily_sales", "marts.rating_by_price_level"],
      f"stratactl models lists the demo's SQL models in build order ({names})")


rc, out, err = ctl("--json", "lineage", "marts.daily_sales", DEMO)
lin = json.loads(out) if rc == 0 else {}
check(rc == 0 and lin["upstream"][:2] == ["dwh.fact_sales", "dwh.dim_date"] and
      {"source.orders", "source.order_items", "source.customers", "source.products"} <= set(lin["upstream"]) and
      lin["downstream"] == ["serving.daily_sales", "endpoint.daily_sales"],
      f"stratactl lineage marts.daily_sales: from the fact back to the sources, published as serving.daily_sales, "
      f"served by the daily_sales endpoint ({lin or err})")
rc, _, err = ctl("lineage", "marts.nothing", DEMO)
check(rc == 2 and err.startswith("lineage: pipeline demo has no table 'marts.nothing' (its tables: "),
      f"stratactl lineage of an unknown table: exit 2 listing the tables ({err[:80]})")


def start_loader(spec, **env):
    """The warehouse loader on `spec`, on ports of its own, with `env` (default: an unreachable
    warehouse, so only what it refuses before connecting is seen)."""
    return start("strata-warehouse-loader", "", dict({
        "STRATA_PIPELINE_SPEC": spec, "STRATA_PG_DSN": "host=127.0.0.1 port=1",
        "STRATA_WAREHOUSE_LOADER_GRPC": f"127.0.0.1:{free_port()}",
        "STRATA_WAREHOUSE_LOADER_METRICS": f"127.0.0.1:{free_port()}"}, **env))


def broken(files):
    d = tempfile.mkdtemp(prefix="strata-bad-pipeline-")
    shutil.rmtree(d)
    shutil.copytree(DEMO, d)
    for name, text in files.items():
        with open(os.path.join(d, "models", name), "w") as f:
            f.write(text)
    return d


cyclic = broken({"a.sql": "/* strata\nname: marts.a\nkind: full\n*/\nSELECT * FROM marts.b",
                 "b.sql": "/* strata\nname: marts.b\nkind: full\n*/\nSELECT * FROM marts.a"})
want = (f"{cyclic}/models/a.sql:5: models form a cycle: {cyclic}/models/a.sql (marts.a) reads marts.b; "
        f"{cyclic}/models/b.sql (marts.b) reads marts.a")
rc, _, err = ctl("validate", cyclic)
check(rc == 2 and err.strip() == want, f"a cycle: stratactl validate exits 2 naming both files ({rc}: {err.strip()})")
rc, err = start_loader(cyclic)
check(rc == 2 and want in err, f"and the loader refuses to start with the same message ({rc}: {err.strip()[-300:]})")
unknown = broken({"u.sql": "/* strata\nname: marts.u\nkind: full\n*/\nSELECT count(*) AS n\nFROM marts.nothing"})
rc, _, err = ctl("validate", unknown)
check(rc == 2 and err.strip().startswith(f"{unknown}/models/u.sql:6: reads marts.nothing, which this pipeline does not build"),
      f"a table nobody builds: exit 2 naming file and line ({err.strip()})")
rc, err = start_loader(unknown)
check(rc == 2 and "u.sql:6: reads marts.nothing" in err, f"the loader refuses it before connecting ({rc}: {err.strip()[-200:]})")
param = broken({"p.sql": "/* strata\nname: marts.p\nkind: incremental_by_ds\n*/\nSELECT {day} AS ds"})
rc, _, err = ctl("validate", param)
check(rc == 2 and err.strip() == f"{param}/models/p.sql:5: unknown parameter {{day}} (parameters: {{ds}}, {{start}}, {{end}})",
      f"an unknown parameter: exit 2 naming it ({err.strip()})")


def with_endpoint(item):
    """The demo folder with one more endpoint (the list ends the file); its line in pipeline.yaml."""
    d = broken({})
    path = os.path.join(d, "pipeline.yaml")
    lines = open(path).read().rstrip("\n").split("\n")
    with open(path, "w") as f:
        f.write("\n".join(lines + ["  " + item]) + "\n")
    return d, len(lines) + 1


nope, line = with_endpoint("- {name: nope, path: /nope, sql: SELECT * FROM serving.nope}")
want = f"{nope}/pipeline.yaml:{line}: endpoints (nope): the SQL reads serving.nope, which this pipeline neither builds nor publishes"
rc, _, err = ctl("validate", nope)
check(rc == 2 and err.strip() == want, f"an endpoint reading a table nobody builds: exit 2 naming file and line ({err.strip()})")
rc, err = start_loader(nope)
check(rc == 2 and want in err, f"and the loader refuses to start with the same message ({rc}: {err.strip()[-200:]})")
badtype, line = with_endpoint("- {name: t, path: /t, params: [{name: n, type: int32}], sql: 'SELECT {n}'}")
want = (f"{badtype}/pipeline.yaml:{line}: endpoints[8] (t).params[0] (n).type: unknown type 'int32' "
        "(known: boolean, date, integer, number, text)")
rc, _, err = ctl("validate", badtype)
check(rc == 2 and err.strip() == want, f"an unknown parameter type: exit 2 naming file, line and key ({err.strip()})")
rc, err = start("strata-query", "", {"STRATA_PIPELINE_SPEC": badtype, "STRATA_PG_DSN": "host=127.0.0.1 port=1",
                                     "STRATA_QUERY_GRPC": f"127.0.0.1:{free_port()}",
                                     "STRATA_QUERY_METRICS": f"127.0.0.1:{free_port()}",
                                     "STRATA_QUERY_HTTP": f"127.0.0.1:{free_port()}"})
check(rc == 2 and want in err, f"and the query service refuses to start with it ({rc}: {err.strip()[-200:]})")
# SQL that names a table the pipeline has but a column it lacks passes every offline check; the
# loader plans each endpoint against the warehouse at start-up and refuses it there.
typo, line = with_endpoint("- {name: typo, path: /typo, sql: SELECT revenu FROM serving.daily_sales}")
rc, err = start_loader(typo, STRATA_PG_DSN=ENV["STRATA_PG_DSN"], STRATA_REDIS_URL=ENV["STRATA_REDIS_URL"])
want = f"{typo}/pipeline.yaml:{line}: endpoints (typo): PostgreSQL cannot plan its SQL: "
check(rc == 2 and want in err and 'column "revenu" does not exist' in err,
      f"an endpoint whose SQL PostgreSQL cannot plan stops the loader at start-up, named ({rc}: {err.strip()[-250:]})")
for d in (cyclic, unknown, param, nope, badtype, typo):
    shutil.rmtree(d)

rc, _, err = stratactl("run", "--date", "2024-13-01")
check(rc == 2 and "--date" in err, f"stratactl with a bad date exits 2 ({err.strip()})")
rc, _, err = stratactl("--controller", "127.0.0.1:1", "status")
check(rc == 3, f"stratactl exits 3 when the controller is unreachable ({rc})")
rc, _, err = stratactl("backfill", "--from", "2024-01-05", "--to", "2024-01-01")
check(rc == 2, "a backfill whose range is reversed is refused")
finish()

"""Bad configuration and bad arguments fail fast with a message naming what and where."""
import os
import tempfile

from strata_e2e import BIN, check, finish, free_port, stratactl

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

rc, _, err = stratactl("run", "--date", "2024-13-01")
check(rc == 2 and "--date" in err, f"stratactl with a bad date exits 2 ({err.strip()})")
rc, _, err = stratactl("--controller", "127.0.0.1:1", "status")
check(rc == 3, f"stratactl exits 3 when the controller is unreachable ({rc})")
rc, _, err = stratactl("backfill", "--from", "2024-01-05", "--to", "2024-01-01")
check(rc == 2, "a backfill whose range is reversed is refused")
finish()

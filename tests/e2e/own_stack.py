"""Helpers for end-to-end tests that start a stack of their own (infra/stack.sh up in a temporary
directory) instead of the suite's shared one: reading the stack's addresses, a caller environment
free of another stack's, plain queries, condition waits, a webhook receiver, the ok/FAIL report,
the stack's service processes (pid, stop, start again) and the project's protobuf messages."""
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer

import psycopg2


def stack_env(stack_dir):
    """The variables infra/stack.sh wrote to <stack_dir>/env."""
    out = subprocess.run(["bash", "-c", f". '{stack_dir}/env' && env -0"], capture_output=True, check=True).stdout
    env = {}
    for item in out.decode().split("\0"):
        if "=" in item:
            k, v = item.split("=", 1)
            env[k] = v
    return env


def clean_env(keep=()):
    """The caller's environment without another stack's addresses (the names in `keep` stay)."""
    return {k: v for k, v in os.environ.items()
            if not (k.startswith("STRATA_") or k.startswith("AWS_")) or k in keep}


def execute(dsn, statements):
    """Runs (sql, params) pairs in one transaction (committed); returns the last statement's rows."""
    conn = psycopg2.connect(dsn)
    rows = []
    try:
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            for sql, params in statements:
                cur.execute(sql, params)
                rows = cur.fetchall() if cur.description else []
        conn.commit()
        return rows
    finally:
        conn.close()


def query(dsn, sql, params=None):
    """One statement in its own committed transaction; its rows, if any."""
    return execute(dsn, [(sql, params)])


# --- the report: one line per check, the failures collected for run_on_own_stack ---------------------
FAILURES = []


def check(cond, what, details=()):
    print(f"{'ok  ' if cond else 'FAIL'} {what}", flush=True)
    if not cond:
        for line in details:
            print(f"       {line}", flush=True)
        FAILURES.append(what)
    return cond


def step(title):
    print(f"\n=== {title} ({time.strftime('%H:%M:%S')})", flush=True)


# --- the stack's service processes --------------------------------------------------------------------
def pid_file(env, service):
    return os.path.join(env["STRATA_STACK_DIR"], "run", f"{service}.pid")


def pid_of(env, service):
    return int(open(pid_file(env, service)).read())


def gone(pid):
    """The process is gone (or a zombie nobody reaped)."""
    try:
        return open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def start_service(env, service, argv, child_env=None):
    """Starts `argv` as the stack's `service` (log appended, pid file rewritten so stack.sh down
    stops it); returns the Popen."""
    log = open(os.path.join(env["STRATA_STACK_DIR"], "logs", f"{service}.log"), "a")
    p = subprocess.Popen(argv, env=child_env or env, stdout=log, stderr=log, start_new_session=True)
    with open(pid_file(env, service), "w") as f:
        f.write(str(p.pid))
    return p


def metric(env, service, name, labels=None):
    """Sum of the series of `name` on `service`'s /metrics whose labels include `labels`; None when
    no such series exists (an expected metric that is absent is a failure, never a 0)."""
    import urllib.request
    with urllib.request.urlopen(f"http://{env[f'STRATA_{service.upper()}_METRICS']}/metrics", timeout=10) as r:
        text = r.read().decode()
    found, total = False, 0.0
    for line in text.splitlines():
        if not (line.startswith(name + "{") or line.startswith(name + " ")):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in (labels or {}).items()):
            found, total = True, total + float(value)
    return total if found else None


def load_pb2(root):
    """The project's messages, generated from proto/ by the real protoc for this run."""
    gen = tempfile.mkdtemp(prefix="strata-pb2-")
    subprocess.run(["protoc", f"--python_out={gen}", "-I", f"{root}/proto", f"{root}/proto/strata.proto"], check=True)
    sys.path.insert(0, gen)
    import strata_pb2
    return strata_pb2


def wait_until(cond, seconds, what, interval=0.3):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(interval)
    print(f"     timed out after {seconds} s waiting for {what}", flush=True)
    return False


class Webhook:
    """A receiver for the quality service's alerts on the stack's STRATA_WEBHOOK_PORT; closed, the
    port refuses (an alert then stays undelivered)."""

    def __init__(self, port):
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    received.append(json.loads(body))
                except ValueError:
                    received.append({"raw": body.decode(errors="replace")})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        HTTPServer.allow_reuse_address = True
        self.server = HTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


BINARIES = ("strata-source-sim", "strata-ingest", "strata-lake-export", "strata-warehouse-loader", "strata-quality",
            "strata-query", "strata-controller", "stratactl")


def run_on_own_stack(root, bin_dir, prefix, base_env, up_args, scenario, failures, prepare=None):
    """Starts infra/stack.sh in a new temporary directory (`prepare(stack_dir)` may return extra
    environment first), calls scenario(env, webhook) with the stack's environment and a webhook
    receiver on its port, always stops the stack, prints the failures collected in `failures` and
    exits 1 when there are any (2 when a binary is missing). An unexpected error is a failure too.
    The stack directory is removed after a green run and kept, with its logs, after a red one."""
    started = time.time()
    for name in BINARIES:
        if not os.access(os.path.join(bin_dir, name), os.X_OK):
            print(f"missing binary {bin_dir}/{name} (set STRATA_BUILD_BIN)", flush=True)
            raise SystemExit(2)
    import shutil
    import tempfile
    import traceback
    stack_dir = tempfile.mkdtemp(prefix=prefix)
    env = dict(base_env, **(prepare(stack_dir) if prepare else {}))
    webhook, ok = None, False
    try:
        print(f"\n=== infra/stack.sh up --dir {stack_dir} --bin {bin_dir} ({time.strftime('%H:%M:%S')})", flush=True)
        p = subprocess.run([f"{root}/infra/stack.sh", "up", "--dir", stack_dir, "--bin", bin_dir, *up_args], env=env,
                           capture_output=True, text=True, timeout=300)
        if p.returncode != 0:
            print(p.stdout, p.stderr, flush=True)
            raise RuntimeError("the stack did not start")
        stack = dict(env, **stack_env(stack_dir))
        webhook = Webhook(int(stack["STRATA_WEBHOOK_PORT"]))
        scenario(stack, webhook)
        ok = not failures
    except Exception as e:
        traceback.print_exc()
        failures.append(f"unexpected error: {e}")
    finally:
        if webhook:
            webhook.close()
        down = subprocess.run([f"{root}/infra/stack.sh", "down", "--dir", stack_dir], env=env, capture_output=True,
                              text=True, timeout=300)
        print(down.stdout.strip(), down.stderr.strip(), flush=True)
        if ok:
            shutil.rmtree(stack_dir, ignore_errors=True)
        else:
            print(f"stack logs kept in {stack_dir}/logs", flush=True)
    print(f"\n{time.time() - started:.0f} s", flush=True)
    if failures:
        print(f"{len(failures)} assertion(s) failed:", flush=True)
        for f in failures:
            print(f"  - {f}", flush=True)
        raise SystemExit(1)
    print("all assertions passed", flush=True)

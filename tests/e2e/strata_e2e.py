"""Helpers for strata's end-to-end tests: the running test stack (see infra/stack.sh) is
described by STRATA_* environment variables; these helpers drive it through its real
binaries and read results straight from PostgreSQL, Redis and the lake."""
import json
import os
import subprocess
import sys
import time
import urllib.request

import psycopg2

ENV = os.environ
BIN = ENV["STRATA_BIN"]
FAILURES = []


def check(cond, what):
    """Records a failed assertion with its description; the test exits non-zero at the end."""
    status = "ok  " if cond else "FAIL"
    print(f"{status} {what}", flush=True)
    if not cond:
        FAILURES.append(what)


def finish():
    if FAILURES:
        print(f"{len(FAILURES)} assertion(s) failed", flush=True)
        sys.exit(1)
    print("all assertions passed", flush=True)


def run(*args, timeout=600):
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)
    return p.returncode, p.stdout, p.stderr


def stratactl(*args):
    return run(f"{BIN}/stratactl", *args)


def sim_advance(ds):
    rc, out, err = run(f"{BIN}/strata-source-sim", "advance", "--through", ds)
    assert rc == 0, err


def sim_control(malformed_every=None, **knobs):
    """Switches the simulator's faults: malformed_every, fail_next, throttle_next, truncate_next,
    slow_next/slow_ms, repeat_page, shift_rows, rate_limit, extra_field. Returns its state."""
    if malformed_every is not None:
        knobs["malformed_every"] = malformed_every
    qs = "&".join(f"{k}={v}" for k, v in knobs.items())
    req = urllib.request.Request(f"{ENV['STRATA_SOURCE_HTTP']}/control?{qs}", data=b"", method="POST")
    with urllib.request.urlopen(req, timeout=5) as r:
        assert r.status == 200
        return dict(line.split("=", 1) for line in r.read().decode().split())


def start(service, extra_env=None, log_name=None):
    """Starts a service binary of the stack in the background (logs appended to the stack's)."""
    env = dict(os.environ, **(extra_env or {}))
    log = open(os.path.join(ENV["STRATA_STACK_DIR"], "logs", log_name or f"{service}.log"), "a")
    p = subprocess.Popen([f"{BIN}/strata-{service.replace('_', '-')}"], env=env, stdout=log, stderr=log,
                         start_new_session=True)
    return p.pid


def set_pid(service, pid):
    with open(os.path.join(ENV["STRATA_STACK_DIR"], "run", f"{service}.pid"), "w") as f:
        f.write(str(pid))


def pid_of(service):
    return int(open(os.path.join(ENV["STRATA_STACK_DIR"], "run", f"{service}.pid")).read())


def gauge(metrics_addr, name, labels=None):
    try:
        text = urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=2).read().decode()
        return metric_value(text, name, labels or {})
    except OSError:
        return -1


def wait_for(cond, seconds, what):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    print(f"timed out waiting for {what}", flush=True)
    return False


def query(dsn, sql, params=None):
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            cur.execute(sql, params)
            return cur.fetchall()
    finally:
        conn.close()


def wh(sql, params=None):
    return query(ENV["STRATA_PG_DSN"], sql, params)


def src(sql, params=None):
    return query(ENV["STRATA_SOURCE_DSN"], sql, params)


def checksum(tables):
    """md5 over every row of the tables. run_id is lineage (which run wrote a staging row), not
    data, so it is left out: a re-run writes the same data under its own run id."""
    parts = " UNION ALL ".join(f"SELECT '{t}' || (to_jsonb(t) - 'run_id')::text AS x FROM {t} t" for t in tables)
    return wh(f"SELECT md5(string_agg(x, ',' ORDER BY x)) FROM ({parts}) s")[0][0]


def metrics(service):
    with urllib.request.urlopen(f"http://{ENV[f'STRATA_{service.upper()}_METRICS']}/metrics", timeout=5) as r:
        return r.read().decode()


def metric_value(text, name, labels):
    """Sum of samples of `name` whose labels include all of `labels` (dict)."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def dead_letters(run_id):
    rc, out, _ = run("redis-cli", "-p", ENV["STRATA_REDIS_PORT"], "--no-raw", "xrange", "strata:deadletter", "-", "+")
    return out.count(f'"{run_id}"')


def free_port():
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def load_pb2():
    """The project's messages, generated from proto/ by the real protoc for this test run."""
    import tempfile
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    gen = tempfile.mkdtemp()
    subprocess.run(["protoc", f"--python_out={gen}", "-I", f"{root}/proto", f"{root}/proto/strata.proto"], check=True)
    sys.path.insert(0, gen)
    import strata_pb2
    return strata_pb2


class WebhookReceiver:
    """A local webhook endpoint that records every JSON body posted to it."""

    def __init__(self, port):
        import threading
        from http.server import BaseHTTPRequestHandler, HTTPServer
        received = self.received = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = HTTPServer(("127.0.0.1", port), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

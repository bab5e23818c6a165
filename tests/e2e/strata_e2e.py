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


class MetricMissing(AssertionError):
    """A metric a test reads is not exposed (or its endpoint does not answer): never read as 0."""


def _report_uncaught(kind, value, tb):
    if issubclass(kind, MetricMissing):
        print(f"FAIL {value}", flush=True)
    sys.__excepthook__(kind, value, tb)


sys.excepthook = _report_uncaught
_REQUIRED = object()


def scrape(metrics_addr, timeout=5):
    """The text of a /metrics endpoint (host:port); MetricMissing when it does not answer."""
    try:
        with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=timeout) as r:
            return r.read().decode()
    except OSError as e:
        raise MetricMissing(f"{metrics_addr}/metrics does not answer: {e}") from None


def metrics_up(metrics_addr):
    """True once a service's /metrics endpoint answers (for waiting on a process to start)."""
    try:
        scrape(metrics_addr, timeout=2)
        return True
    except MetricMissing:
        return False


def gauge(metrics_addr, name, labels=None, default=_REQUIRED):
    """The value of a metric series on a service's /metrics (summed over series whose labels
    include `labels`). An absent series or an endpoint that does not answer raises MetricMissing;
    see metric() for `default`."""
    return metric(scrape(metrics_addr, timeout=2), name, labels, default=default)


def wait_for(cond, seconds, what):
    """Polls cond() until it is true or `seconds` pass. A MetricMissing inside cond() counts as
    "not yet" (a service restarting, a series not created yet); the last one is printed on timeout."""
    deadline = time.time() + seconds
    last_missing = None
    while time.time() < deadline:
        try:
            if cond():
                return True
        except MetricMissing as e:
            last_missing = e
        time.sleep(0.1)
    print(f"timed out waiting for {what}" + (f" (last: {last_missing})" if last_missing else ""), flush=True)
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


def _samples(text, name, labels):
    found, total = False, 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            found = True
            total += float(value)
    return found, total


def golden_metric_names():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "metrics_golden.txt")) as f:
        return {line.split()[1] for line in f if line.strip() and not line.startswith("#")}


def metric(text, name, labels=None, default=_REQUIRED):
    """Sum of the samples of `name` whose labels include all of `labels` (dict) in a /metrics text.

    No matching sample raises MetricMissing: a metric the test expects must exist. `default` is
    only for a baseline read before the event that creates a labelled series (prometheus-cpp
    exposes a labelled counter from its first increment), and only for names in
    tests/metrics_golden.txt, so a misspelt or renamed metric still fails."""
    found, total = _samples(text, name, labels or {})
    if found:
        return total
    if default is _REQUIRED:
        raise MetricMissing(f"{name}{labels or ''} is not exposed")
    if name not in golden_metric_names():
        raise MetricMissing(f"{name} is not a strata metric (tests/metrics_golden.txt)")
    return default


def metric_value(text, name, labels):
    """Deprecated, lenient: an absent series reads as 0. Kept only for pipeline_e2e.py, whose one
    use takes a baseline before the series exists; use metric() everywhere else."""
    return _samples(text, name, labels)[1]


def dead_letters(run_id):
    rc, out, _ = run("redis-cli", "-p", ENV["STRATA_REDIS_PORT"], "--no-raw", "xrange", "strata:deadletter", "-", "+")
    return out.count(f'"{run_id}"')


def _port_picker():
    import importlib.util
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "infra", "free_port.py")
    spec = importlib.util.spec_from_file_location("strata_free_port", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.free_port


_pick_port = _port_picker()


def free_port():
    """A free port outside the ephemeral range (infra/free_port.py says why), never one already
    picked by this process or by the stack (its run/ports), bound or not."""
    stack_dir = ENV.get("STRATA_STACK_DIR")
    return _pick_port(os.path.join(stack_dir, "run", "ports") if stack_dir else None)


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

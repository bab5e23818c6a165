"""Helpers for end-to-end tests that start a stack of their own (infra/stack.sh up in a temporary
directory) instead of the suite's shared one: reading the stack's addresses, a caller environment
free of another stack's, plain queries, condition waits and a webhook receiver."""
import json
import os
import subprocess
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


def query(dsn, sql, params=None):
    """Runs one statement in its own transaction (committed) and returns its rows, if any."""
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SET TIME ZONE 'UTC'")
            cur.execute(sql, params)
            rows = cur.fetchall() if cur.description else []
        conn.commit()
        return rows
    finally:
        conn.close()


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

"""The query service, its HTTP gateway and stratactl against what production throws at them:
a second instance on a taken address, bad and oversized input, clients that trickle their
requests, a controller restart while stratactl waits, Redis restarting empty (cache versions
come from the warehouse's publication record) and a PostgreSQL restart (the connection pool
reconnects). Runs on the stack after the tests that read the week pipeline_e2e loaded: it
restarts the stack's controller, Redis and PostgreSQL."""
import concurrent.futures
import http.client
import json
import os
import random
import select
import shlex
import signal
import socket
import subprocess
import threading
import time
import urllib.parse

import grpc
import psycopg2
import redis

from call_rows import rows
from strata_e2e import (BIN, ENV, check, finish, free_port, load_pb2, metric, metrics, metrics_up, pid_of, set_pid,
                        start, wait_for, wh)

pb = load_pb2()
ANALYST = ENV["STRATA_QUERY_TOKEN"]
HTTP_HOST, HTTP_PORT = ENV["STRATA_QUERY_HTTP"].rsplit(":", 1)
HTTP_PORT = int(HTTP_PORT)
channel = grpc.insecure_channel(ENV["STRATA_QUERY_GRPC"])
INTERNAL_TEXT = ["ERROR:", "SQLSTATE", "pqxx", "postgres", "PostgreSQL", "date/time field", "connection",
                 "refused", "socket", "redis", "terminat", "server closed"]


AUTH = [("authorization", "Bearer " + ANALYST)]
CALL = channel.unary_unary("/strata.v1.Query/Call", request_serializer=pb.CallRequest.SerializeToString,
                           response_deserializer=pb.CallReply.FromString)


def call(endpoint, params, timeout=10):
    """Query.Call of a declared endpoint (pipelines/demo/pipeline.yaml), parameters as text."""
    return CALL(pb.CallRequest(endpoint=endpoint, params=params), timeout=timeout, metadata=AUTH)


def daily(frm, to, timeout=10):
    return call("daily_sales", {"from": frm, "to": to}, timeout=timeout)


def outcome(fn):
    """(code, details, reply) of one gRPC call."""
    try:
        return grpc.StatusCode.OK, "", fn()
    except grpc.RpcError as e:
        return e.code(), e.details() or "", None


def http_get(path, token=ANALYST, timeout=10):
    """(status, body bytes) of one GET on the gateway."""
    c = http.client.HTTPConnection(HTTP_HOST, HTTP_PORT, timeout=timeout)
    try:
        c.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def raw_exchange(data, wait=30):
    """Sends bytes on a fresh connection and returns (status, parsed JSON body or None, raw) of
    what comes back before the server closes it or `wait` seconds pass."""
    s = socket.create_connection((HTTP_HOST, HTTP_PORT), timeout=wait)
    got = b""
    try:
        s.sendall(data)
        deadline = time.time() + wait
        while time.time() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
            head, sep, body = got.partition(b"\r\n\r\n")
            length = [int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length:")]
            if sep and length and len(body) >= length[0]:
                break
    except (ConnectionResetError, BrokenPipeError, socket.timeout):
        pass
    finally:
        s.close()
    head, _, body = got.partition(b"\r\n\r\n")
    try:
        status = int(head.split(b" ")[1])
    except (IndexError, ValueError):
        status = None
    try:
        parsed = json.loads(body)
    except ValueError:
        parsed = None
    return status, parsed, got


def error_code(body):
    """error.code of a JSON error body; None when the body is not one."""
    try:
        return json.loads(body)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None


def no_internal_text(message):
    return not any(t.lower() in message.lower() for t in INTERNAL_TEXT)


def unique_range():
    """A date range nobody asked for before: neither Redis nor process memory holds its answer."""
    y = random.randint(3000, 9000)
    d = random.randint(1, 28)
    return f"{y}-01-{d:02d}", f"{y}-02-{d:02d}"


# ==== 7. a second instance on a taken address fails start-up with a clear message ================
def second_query(extra_env, wait=60):
    """Starts another query service (fresh ports unless overridden); (exit code or None if it is
    still running after `wait` s, stderr)."""
    env = dict(os.environ, STRATA_QUERY_GRPC=f"127.0.0.1:{free_port()}",
               STRATA_QUERY_METRICS=f"127.0.0.1:{free_port()}", STRATA_QUERY_HTTP=f"127.0.0.1:{free_port()}")
    env.update(extra_env)
    p = subprocess.Popen([f"{BIN}/strata-query"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         text=True, start_new_session=True)
    try:
        _, err = p.communicate(timeout=wait)
        return p.returncode, err
    except subprocess.TimeoutExpired:
        p.terminate()
        _, err = p.communicate(timeout=30)
        return None, err


grpc_addr, http_addr = ENV["STRATA_QUERY_GRPC"], ENV["STRATA_QUERY_HTTP"]
rc, err = second_query({"STRATA_QUERY_GRPC": grpc_addr}, wait=30)
check(rc not in (None, 0) and f"cannot listen for gRPC on {grpc_addr}" in err and "in use" in err,
      f"a second query service on the live gRPC address exits ({rc}) naming it: {err.strip()[-300:]}")
rc, err = second_query({"STRATA_QUERY_HTTP": http_addr}, wait=30)
check(rc not in (None, 0) and f"query HTTP gateway: cannot listen on {http_addr}" in err and "in use" in err,
      f"a second query service on the live HTTP address exits ({rc}) naming it: {err.strip()[-300:]}")
status, body = http_get("/health")
code, details, _ = outcome(lambda: daily("2024-01-01", "2024-01-07"))
check(status == 200 and code == grpc.StatusCode.OK, "the first instance still answers HTTP and gRPC alone")

# Sharing on purpose: reuse_port on both instances lets them listen on one address.
shared = {"STRATA_REUSE_PORT": "true", "STRATA_QUERY_GRPC": f"127.0.0.1:{free_port()}",
          "STRATA_QUERY_HTTP": f"127.0.0.1:{free_port()}"}
sharers = []
for _ in range(2):
    m = f"127.0.0.1:{free_port()}"
    sharers.append((subprocess.Popen([f"{BIN}/strata-query"], env=dict(os.environ, STRATA_QUERY_METRICS=m, **shared),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True), m))
    check(wait_for(lambda: metrics_up(m), 60, "a sharing query service"), "a query service with reuse_port starts")
check(all(p.poll() is None for p, _ in sharers), "with reuse_port: true two instances share one gRPC and HTTP address")
for p, _ in sharers:
    p.terminate()
    p.wait(timeout=30)

# ==== 8. bad input: 400 / INVALID_ARGUMENT naming the parameter, JSON bodies, short quotes =========
code, details, _ = outcome(lambda: daily("0000-01-01", "2024-01-07"))
check(code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("from:") and no_internal_text(details),
      f"gRPC Call daily_sales from 0000-01-01 is INVALID_ARGUMENT naming 'from' ({code}, {details})")
code, details, _ = outcome(lambda: call("rating_by_price_level", {"ds": "0000-01-01"}))
check(code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith("ds:") and no_internal_text(details),
      f"gRPC Call rating_by_price_level on 0000-01-01 is INVALID_ARGUMENT naming 'ds' ({code}, {details})")
MB = "x" * (1 << 20)
for what, fn, param in [
        ("status", lambda: call("orders_by_status", {"status": MB}), "status"),
        ("from", lambda: daily(MB, "2024-01-07"), "from"),
        ("to", lambda: daily("2024-01-01", MB), "to"),
        ("page_token", lambda: call("orders_by_status", {"page_token": MB}), "page_token"),
        ("ds", lambda: call("rating_by_price_level", {"ds": MB}), "ds")]:
    code, details, _ = outcome(fn)
    check(code == grpc.StatusCode.INVALID_ARGUMENT and details.startswith(param + ":") and len(details) < 300,
          f"gRPC: a 1 MB {what} is INVALID_ARGUMENT naming it and quoting at most a short prefix "
          f"({code}, {len(details)} chars: {details[:160]})")
# Call takes the endpoint's and the parameters' names from the client too: a 1 MB one of either is
# refused with a short quote of it (NOT_FOUND for the endpoint, INVALID_ARGUMENT for the parameter).
code, details, _ = outcome(lambda: call(MB, {}))
check(code == grpc.StatusCode.NOT_FOUND and len(details) < 300 and no_internal_text(details),
      f"gRPC: a 1 MB endpoint name is NOT_FOUND quoting at most a short prefix ({code}, {len(details)} chars: "
      f"{details[:160]})")
code, details, _ = outcome(lambda: call("daily_sales", {"from": "2024-01-01", "to": "2024-01-07", MB: "1"}))
check(code == grpc.StatusCode.INVALID_ARGUMENT and "unknown parameter of daily_sales" in details and
      len(details) < 300, f"gRPC: a 1 MB parameter name is INVALID_ARGUMENT quoting at most a short prefix "
                          f"({code}, {len(details)} chars: {details[:160]})")

# Every endpoint and parameter with hostile values: a 4xx whose body is JSON naming the parameter.
ENDPOINTS = {
    "/analytics/orders": {"status": "open", "limit": "5", "page_token": ""},
    "/analytics/orders/top": {"status": "open", "limit": "3"},
    "/analytics/orders/customers": {"status": "open", "limit": "3"},
    "/analytics/orders/product": {"from": "2024-01-01", "to": "2024-01-07", "limit": "5", "page_token": ""},
    "/analytics/sales/daily": {"from": "2024-01-01", "to": "2024-01-07"},
    "/analytics/businesses/review-changes": {"from": "2024-01-01", "to": "2024-01-07", "limit": "5"},
    "/analytics/businesses/rating-by-price": {"ds": "2024-01-07"},
    "/analytics/orders/live": {"order_id": "1"},
}
HOSTILE = ["0000-01-01", "line\nbreak", 'quote"d', "back\\slash", "tab\there", "nul\x00byte", "\x01\x02",
           "caf\u00e9", "'; DROP TABLE serving.daily_sales; --", "9999-99-99", "-1", "1e9", "x" * 3000, "%", "{}"]
bad_json, unnamed, leaky, not_4xx, probes = [], [], [], [], 0
for path, params in ENDPOINTS.items():
    for name in params:
        for value in HOSTILE + ["%ff%fe"]:
            query = dict(params)
            query[name] = value
            qs = urllib.parse.urlencode(query)
            if value == "%ff%fe":  # bytes that are not UTF-8
                qs = "&".join(f"{k}={'%ff%fe' if k == name else urllib.parse.quote(v)}" for k, v in query.items())
            status, body = http_get(f"{path}?{qs}")
            if status == 200:
                continue  # some values are fine for some parameters (an empty-ish page token, ...)
            probes += 1
            try:
                message = json.loads(body)["error"]["message"]
            except (ValueError, KeyError, TypeError):
                bad_json.append((path, name, status, body[:120]))
                message = body.decode(errors="replace")  # still judged below
            if not 400 <= status < 500:
                not_4xx.append((path, name, value[:20], status, message[:80]))
            if not message.startswith(name + ":"):
                unnamed.append((path, name, value[:20], message[:80]))
            if not no_internal_text(message) or len(message) > 300:
                leaky.append((path, name, value[:20], message[:120]))
check(probes > 100, f"{probes} hostile requests were refused")
check(not bad_json, f"every HTTP error body is valid JSON with error.code and error.message {bad_json[:3]}")
check(not not_4xx, f"every refusal of bad input is a 4xx {not_4xx[:3]}")
check(not unnamed, f"every message names the parameter {unnamed[:3]}")
check(not leaky, f"no message carries internal text or a long echo of the value {leaky[:3]}")
status, body = http_get("/no/such/endpoint")
check(status == 404 and error_code(body) == "NOT_FOUND", f"an unknown path is a JSON 404 ({body[:100]})")
status, body = http_get("/analytics/sales/daily?from=2024-01-01&to=2024-01-07&fromm=2024-01-01")
message = json.loads(body)["error"].get("message", "") if error_code(body) else ""
check(status == 400 and error_code(body) == "INVALID_ARGUMENT" and message.startswith("fromm:"),
      f"an unknown query parameter is a JSON 400 naming it ({status}, {body[:160]})")

# A 1 MB parameter does not fit an HTTP request line: 414 with JSON naming it, a short prefix.
status, parsed, raw = raw_exchange(b"GET /analytics/orders?limit=5&status=" + b"s" * (1 << 20) + b" HTTP/1.1\r\n"
                                   b"Host: x\r\n\r\n")
message = (parsed or {}).get("error", {}).get("message", "")
check(status == 414 and parsed["error"]["code"] == "INVALID_ARGUMENT" and message.startswith("status:") and
      len(message) < 300, f"HTTP: a 1 MB parameter is a 414 INVALID_ARGUMENT naming it ({status}, {message[:160]})")

# ==== 6. slow clients cost the gateway a buffer, not a thread =====================================
TRICKLERS, TRICKLE_FOR = 32, 45


def trickle(results, i, stop_at):
    """Opens a request and sends one more header byte every half second until the server gives
    up on it (an answer or a close) or stop_at passes. Records (how, seconds, status)."""
    t0 = time.time()
    try:
        s = socket.create_connection((HTTP_HOST, HTTP_PORT), timeout=10)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        while time.time() < stop_at:
            r, _, _ = select.select([s], [], [], 0.5)
            if r:
                data = s.recv(4096)
                status = int(data.split(b" ")[1]) if data.startswith(b"HTTP/1.1 ") else None
                results[i] = ("cut", time.time() - t0, status, data)
                s.close()
                return
            s.sendall(b"z")
        results[i] = ("survived", time.time() - t0, None, b"")
        s.close()
    except OSError as e:
        results[i] = ("cut", time.time() - t0, None, str(e).encode())


results = [None] * TRICKLERS
stop_at = time.time() + TRICKLE_FOR
threads = [threading.Thread(target=trickle, args=(results, i, stop_at), daemon=True) for i in range(TRICKLERS)]
for t in threads:
    t.start()
time.sleep(1)  # every trickler is connected and mid-headers
health = []
for _ in range(5):
    try:
        health.append(http_get("/health", token=None, timeout=10)[0])
    except OSError as e:
        health.append(str(e))
check(health == [200] * 5, f"with {TRICKLERS} connections trickling headers, /health still answers ({health})")
code, _, reply = outcome(lambda: daily("2024-01-01", "2024-01-07"))
status, body = http_get("/analytics/sales/daily?from=2024-01-01&to=2024-01-07")
check(status == 200 and reply is not None and len(json.loads(body)["days"]) == len(reply.rows),
      "and so do the analytics endpoints, with the gRPC answer")
for t in threads:
    t.join(TRICKLE_FOR + 30)
cut = [r for r in results if r and r[0] == "cut"]
check(len(cut) == TRICKLERS, f"every trickling connection was cut before {TRICKLE_FOR} s "
                             f"({len(cut)} of {TRICKLERS}; longest {max((r[1] for r in cut), default=0):.1f} s)")
answered = [r for r in cut if r[2] == 408]
check(answered and all(error_code(r[3].partition(b"\r\n\r\n")[2]) == "DEADLINE_EXCEEDED" for r in answered),
      f"cut connections got a 408 with a JSON body ({len(answered)} of {len(cut)})")

status, parsed, _ = raw_exchange(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * (64 * 1024) + b"\r\n\r\n")
check(status == 431 and parsed and parsed["error"]["code"] == "INVALID_ARGUMENT",
      f"64 KiB of headers are refused with 431 and a JSON body ({status}, {parsed})")
status, parsed, _ = raw_exchange(b"POST /analytics/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n\r\n")
check(status == 413 and parsed and "body" in parsed["error"]["message"],
      f"a 5 MB body is refused with 413 before it is sent ({status}, {parsed})")
t0 = time.time()
s = socket.create_connection((HTTP_HOST, HTTP_PORT), timeout=10)
s.sendall(b"POST /analytics/orders HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
slow_body = None
while time.time() - t0 < 60:
    r, _, _ = select.select([s], [], [], 0.5)
    if r:
        slow_body = s.recv(4096)
        break
    try:
        s.sendall(b"b")
    except OSError:
        break
s.close()
check(slow_body is not None and slow_body.startswith(b"HTTP/1.1 408"),
      f"a body trickled byte by byte is cut with 408 ({(slow_body or b'')[:40]}, after {time.time() - t0:.1f} s)")


# ==== 9. stratactl backfill --json waits through a controller restart ===========================
def lock_states():
    conn = psycopg2.connect(ENV["STRATA_PG_DSN"])
    conn.cursor().execute("LOCK TABLE staging.states IN ACCESS EXCLUSIVE MODE")
    return conn


def active_runs():
    return wh("SELECT count(*) FROM ops.runs WHERE state IN ('queued', 'running')")[0][0]


def gone(pid):
    try:
        return open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


check(wait_for(lambda: active_runs() == 0, 300, "no active runs"), "no run is active before the backfill")
days = [str(d) for (d,) in wh("SELECT DISTINCT ds FROM ops.runs WHERE state = 'succeeded' ORDER BY ds LIMIT 3")]
first_day, second_day, third_day = days
stack_dir = ENV["STRATA_STACK_DIR"]
blocker = lock_states()  # holds load.states, so the runs are still going when the controller dies
long_err = open(os.path.join(stack_dir, "logs", "stratactl_backfill.err"), "w+")
backfill = subprocess.Popen([f"{BIN}/stratactl", "--json", "backfill", "--from", first_day, "--to", second_day,
                             "--reprocess", "all", "--timeout", "600"],
                            stdout=subprocess.PIPE, stderr=long_err, text=True)
mid_way = wait_for(lambda: wh("SELECT count(*) FROM ops.task_runs t JOIN ops.runs r USING (run_id) WHERE r.ds = %s "
                              "AND r.trigger = 'backfill' AND r.state = 'running' AND t.task = 'load.states' "
                              "AND t.state = 'running'", (first_day,))[0][0] > 0, 120, "backfill mid-way")
check(mid_way, "the backfill's first run is mid-way (load.states behind a lock)")
# A second waiter with a short --timeout: the controller stays away longer than that.
short_err = open(os.path.join(stack_dir, "logs", "stratactl_short.err"), "w+")
short = subprocess.Popen([f"{BIN}/stratactl", "--json", "run", "--date", third_day, "--timeout", "15"],
                         stdout=subprocess.PIPE, stderr=short_err, text=True)
time.sleep(1)  # its run is queued and it is polling
killed = pid_of("controller")
os.kill(killed, signal.SIGKILL)
check(wait_for(lambda: gone(killed), 30, "controller gone"), "the controller is gone (kill -9)")


def stderr_of(f):
    f.flush()
    f.seek(0)
    return f.read()


check(wait_for(lambda: "unreachable" in stderr_of(long_err), 30, "a retry line"),
      f"stratactl backfill says on stderr that it is retrying ({stderr_of(long_err).strip()[:200]})")
check(backfill.poll() is None, "and keeps waiting while the controller is down")
try:
    short_out, _ = short.communicate(timeout=90)
except subprocess.TimeoutExpired:
    short.kill()
    short_out, _ = short.communicate()
check(short.returncode == 3 and short_out == "" and "stayed unreachable until the --timeout of 15 s" in
      stderr_of(short_err), f"a waiter whose --timeout passes while the controller is down exits 3 saying so "
                            f"({short.returncode}, {stderr_of(short_err).strip()[-200:]})")
check(backfill.poll() is None, "the backfill with a longer --timeout is still waiting")
set_pid("controller", start("controller"))
blocker.rollback()
blocker.close()
try:
    out, _ = backfill.communicate(timeout=600)
except subprocess.TimeoutExpired:
    backfill.kill()
    out, _ = backfill.communicate()
try:
    runs = json.loads(out)
except ValueError:
    runs = None
check(backfill.returncode == 0 and runs and [r["ds"] for r in runs] == [first_day, second_day] and
      all(r["state"] == "succeeded" for r in runs),
      f"after the controller came back, backfill --json printed both runs succeeded and exited 0 "
      f"({backfill.returncode}, {out.strip()[:200]})")
check("answers again" in stderr_of(long_err), "and said on stderr that the controller answers again")
check(wait_for(lambda: active_runs() == 0, 300, "queued runs to finish"), "every queued run finished")

# ==== 4. Redis restarts empty: cache versions still only grow, from the warehouse's record =========
r = redis.Redis.from_url(ENV["STRATA_REDIS_URL"])
VERSION_KEY = "strata:serving_version"


def published():
    return wh("SELECT coalesce(max(version), 0) FROM serving.publications")[0][0]


def redis_version():
    try:
        v = r.get(VERSION_KEY)
        return int(v) if v is not None else None
    except redis.RedisError:
        return None


check(wait_for(lambda: redis_version() == published(), 30, "version key"),
      f"the cache version in Redis is the warehouse's publication version ({redis_version()} = {published()})")
first = daily(first_day, third_day)
again = daily(first_day, third_day)
check(again.cached and rows(again) == rows(first), "a repeated question is answered from the cache")
subprocess.run(["redis-cli", "-p", ENV["STRATA_REDIS_PORT"], "shutdown", "nosave"], capture_output=True)
subprocess.run(["redis-server", "--port", ENV["STRATA_REDIS_PORT"], "--bind", "127.0.0.1", "--daemonize", "yes",
                "--dir", os.path.join(stack_dir, "redis"), "--save", "", "--appendonly", "no",
                "--pidfile", os.path.join(stack_dir, "run/redis.pid"),
                "--logfile", os.path.join(stack_dir, "logs/redis.log")], check=True)
def redis_up():
    try:
        return r.ping()
    except redis.RedisError:
        return False


check(wait_for(redis_up, 30, "redis back"), "Redis is back")
r.flushall()  # whatever persistence the stack uses, this Redis has lost everything
check(wait_for(lambda: redis_version() == published(), 30, "version key re-derived"),
      f"the version key is derived again from the warehouse ({redis_version()} = {published()})")
before = published()
proc = subprocess.run([f"{BIN}/stratactl", "--json", "run", "--date", third_day, "--timeout", "300"],
                      capture_output=True, text=True)
check(proc.returncode == 0 and published() > before, f"a re-run publishes again ({proc.returncode}, {published()})")
check(redis_version() == published(), f"the announced version follows the warehouse ({redis_version()})")
fresh = daily(first_day, third_day)
want = [(str(d), n) for d, n in wh("SELECT ds, orders FROM serving.daily_sales WHERE ds BETWEEN %s AND %s ORDER BY ds",
                                   (first_day, third_day))]
check(not fresh.cached and [(d["ds"], d["orders"]) for d in rows(fresh)] == want,
      f"after the publish the answer is fresh, not the cached one from before the restart (cached={fresh.cached})")

# ==== 3. PostgreSQL restarts: the query service reconnects ======================================
pgdir = open(os.path.join(stack_dir, "pgdir")).read().strip()
opts = shlex.split(open(os.path.join(pgdir, "data", "postmaster.opts")).read())
server_opts = " ".join(shlex.quote(a) for a in opts[3:])  # after: postgres "-D" "<data>"
as_pg = ["runuser", "-u", "postgres", "--"] if os.getuid() == 0 else []
pg_ctl = [*as_pg, "/usr/lib/postgresql/15/bin/pg_ctl", "-D", os.path.join(pgdir, "data")]


def pg_up():
    try:
        psycopg2.connect(ENV["STRATA_PG_DSN"], connect_timeout=2).close()
        return True
    except psycopg2.OperationalError:
        return False


def many_uncached(n, parallel):
    """n questions nobody asked before (each needs PostgreSQL); their codes."""
    def one(_):
        frm, to = unique_range()
        return outcome(lambda: daily(frm, to, timeout=15))[0]
    if not parallel:
        return [one(i) for i in range(n)]
    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        return list(ex.map(one, range(n)))


warm = many_uncached(12, parallel=True)  # several pooled connections
check(warm == [grpc.StatusCode.OK] * 12, f"12 concurrent uncached questions are answered ({set(warm)})")
reconnects_before = metric(metrics("query"), "strata_query_pg_reconnects_total")
# The controller leaves when it loses its leader lock's connection (for a standby to take
# over), and no supervisor restarts it here: it is stopped first and started again afterwards.
controller = pid_of("controller")
os.kill(controller, signal.SIGTERM)
check(wait_for(lambda: gone(controller), 30, "controller stopped"), "the controller is stopped for the restart")
subprocess.run([*pg_ctl, "-m", "fast", "-w", "stop"], check=True, capture_output=True)
code, details, _ = outcome(lambda: daily(*unique_range()))
check(code == grpc.StatusCode.UNAVAILABLE and no_internal_text(details),
      f"with PostgreSQL down a new question is UNAVAILABLE without internal text ({code}, {details})")
frm, to = unique_range()
status, body = http_get(f"/analytics/sales/daily?from={frm}&to={to}")
check(status == 503 and error_code(body) == "UNAVAILABLE" and no_internal_text(body.decode(errors="replace")),
      f"and a JSON 503 over HTTP ({status}, {body[:160]})")
subprocess.run([*pg_ctl, "-l", os.path.join(pgdir, "postgres.log"), "-w", "-t", "60", "-o", server_opts, "start"],
               check=True, capture_output=True)
check(wait_for(pg_up, 60, "PostgreSQL back"), "PostgreSQL is back")
set_pid("controller", start("controller"))
after = many_uncached(10, parallel=False) + many_uncached(10, parallel=True)
check(after == [grpc.StatusCode.OK] * 20,
      f"after the restart every query succeeds: {after.count(grpc.StatusCode.OK)} of 20 "
      f"({[c.name for c in after if c != grpc.StatusCode.OK]})")
check(metric(metrics("query"), "strata_query_pg_reconnects_total") > reconnects_before,
      "strata_query_pg_reconnects_total counted the replaced connections")
cached = daily(first_day, third_day)
check(rows(cached) == rows(fresh), "and cached answers are unchanged")

# The rest of the stack outlived both restarts (the fixture's clean shutdown depends on it).
check(wait_for(lambda: metrics_up(ENV["STRATA_CONTROLLER_METRICS"]), 60, "controller up"), "the controller is back")
for svc in ["ingest", "lake_export", "warehouse_loader", "quality", "query", "controller"]:
    check(not gone(pid_of(svc)) and metrics_up(ENV[f"STRATA_{svc.upper()}_METRICS"]), f"{svc} is still up")

finish()

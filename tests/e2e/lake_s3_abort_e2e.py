"""A lake upload to S3 that fails midway aborts its multipart upload (common/s3.h: "PUTs larger
than multipart_threshold go as a multipart upload ... aborted on failure"; docs/operations.md, "The
lake on S3"), and the batch is written whole on the retry. Issue 17, item 9.

A private stack started with --lake s3. Its S3 server is s3rver (tests/s3), restarted on the same
port and directory through tests/s3/s3rver_multipart.js, which adds the two multipart operations
s3rver 3.7.1 lacks (AbortMultipartUpload, ListMultipartUploads) over s3rver's own store of uploads
in progress. lake-export reaches it through a small HTTP proxy in this test that records every
request and makes one part fail: every attempt at part 2 of the first upload of the test's object
is answered 500 InternalError (the store failing mid-upload).

  1. The server: botocore itself creates an upload, sees it listed, aborts it (204), sees the list
     empty and a second abort refused (NoSuchUpload): the harness behaves as S3 does.
  2. One batch of 150,000 order lines (about 11 MB of CSV: a 3-part multipart upload) goes on
     strata:batches for lake-export.
  3. What lake-export did: initiated upload U1, part 1 accepted, part 2 tried 4 times (500 each),
     then DELETE ?uploadId=U1 (204) — before any other upload of the object; U1 was never
     completed. The batch stayed pending (strata_lake_export_batches_total{outcome=error}), was
     reclaimed and written by upload U2 (3 parts, completed, not aborted).
  4. What the store holds: ListMultipartUploads is empty and s3rver's upload store has no
     upload left; the object's bytes and CRC-32 are its .meta's, it holds exactly the 150,000
     published lines, and the manifest commits them.

Environment: STRATA_BUILD_BIN (default <repo>/build/bin). Run with /usr/bin/python3.
"""
import csv
import io
import json
import os
import re
import signal
import socket
import threading
import time
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit
import http.client

import botocore.config
import botocore.session

from own_stack import FAILURES, check, clean_env, gone, load_pb2, pid_of, run_on_own_stack, metric as stack_metric, start_service, step, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.abspath(os.environ.get("STRATA_BUILD_BIN") or os.path.join(ROOT, "build", "bin"))
BUCKET = "strata-lake"
DS = "2024-01-05"
DATASET = "order_items"
COLUMNS = ["order_id", "line_no", "product_id", "quantity", "unit_price", "updated_at"]
N_ROWS = 150_000
FIRST_ORDER = 10_000_000
MAX_ATTEMPTS = 4  # S3Config::max_attempts

ENV = {}


PB = load_pb2(ROOT)


def metric(name, labels):
    """None also while lake-export does not answer (it is restarted by the test)."""
    try:
        return stack_metric(ENV, "lake_export", name, labels)
    except OSError:
        return None


def port_open(port):
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def stop(name):
    pid = pid_of(ENV, name)
    os.kill(pid, signal.SIGTERM)
    if not wait_until(lambda: gone(pid), 60, f"{name} to stop"):
        raise RuntimeError(f"{name} did not stop")


def start(name, argv, env):
    return start_service(ENV, name, argv, env)


class FaultProxy:
    """HTTP proxy to the S3 server: records (method, key, query, status) of every request, and
    answers 500 InternalError to every attempt at part `fail_part` of the first upload of a key
    containing `target`."""

    def __init__(self, upstream_port, target, fail_part):
        self.log, self.first_upload = [], None
        lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def handle_one(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                url = urlsplit(self.path)
                q = {k: v[0] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
                key = unquote(url.path)
                fail = (self.command == "PUT" and target in key and q.get("partNumber") == str(fail_part) and
                        q.get("uploadId") is not None and q.get("uploadId") == proxy.first_upload)
                if fail:
                    status, headers = 500, [("Content-Type", "application/xml")]
                    data = b"<?xml version=\"1.0\"?><Error><Code>InternalError</Code><Message>injected</Message></Error>"
                else:
                    conn = http.client.HTTPConnection("127.0.0.1", upstream_port, timeout=120)
                    conn.request(self.command, self.path, body=body,
                                 headers={k: v for k, v in self.headers.items() if k.lower() != "connection"})
                    resp = conn.getresponse()
                    data = resp.read()
                    status = resp.status
                    headers = [(k, v) for k, v in resp.getheaders()
                               if k.lower() not in ("transfer-encoding", "connection", "content-length")]
                    conn.close()
                upload = q.get("uploadId")
                if self.command == "POST" and "uploads" in q and status == 200:
                    m = re.search(rb"<UploadId>([^<]+)</UploadId>", data)
                    upload = m.group(1).decode() if m else None
                    with lock:
                        if target in key and proxy.first_upload is None:
                            proxy.first_upload = upload
                with lock:
                    proxy.log.append({"method": self.command, "key": key, "query": q, "status": status,
                                      "upload": upload, "bytes": len(body)})
                self.send_response(status)
                for k, v in headers:
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_one

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def s3_client(port):
    return botocore.session.get_session().create_client(
        "s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1", aws_access_key_id="S3RVER",
        aws_secret_access_key="S3RVER", config=botocore.config.Config(s3={"addressing_style": "path"},
                                                                        retries={"max_attempts": 1}))


def uploads(s3, prefix=""):
    return [(u["Key"], u["UploadId"]) for u in s3.list_multipart_uploads(Bucket=BUCKET, Prefix=prefix).get("Uploads", [])]


def get(s3, key):
    try:
        return s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    except s3.exceptions.NoSuchKey:
        return None


def harness_check(s3):
    step("1. the S3 server: s3rver with AbortMultipartUpload and ListMultipartUploads, checked with botocore")
    key = "harness-check/object.bin"
    before = uploads(s3)
    up = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    s3.upload_part(Bucket=BUCKET, Key=key, UploadId=up, PartNumber=1, Body=b"x" * 1024)
    listed = uploads(s3)
    status = s3.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=up)["ResponseMetadata"]["HTTPStatusCode"]
    after = uploads(s3)
    try:
        s3.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=up)
        again = "accepted"
    except s3.exceptions.NoSuchUpload:
        again = "NoSuchUpload"
    check(before == [] and listed == [(key, up)] and status == 204 and after == [] and again == "NoSuchUpload",
          f"an upload is listed while in progress, an abort answers 204 and removes it, a second abort is "
          f"NoSuchUpload (before {before}, during {listed}, abort {status}, after {after}, again {again})")


def big_batch(run_id):
    b = PB.Batch(batch_id=f"{run_id}/{DATASET}/0", pipeline="demo", dataset=DATASET, ds=DS, run_id=run_id, seq=0,
                 last=True, total_batches=1, columns=COLUMNS, source_position="test")
    for i in range(N_ROWS):
        b.rows.add().values.extend(PB.Value(text=t) for t in (
            str(FIRST_ORDER + i // 3), str(1 + i % 3), str(1 + i % 97), str(1 + i % 5), f"{(i % 4000) / 100:.2f}",
            f"{DS}T{(i // 3600) % 24:02d}:{(i // 60) % 60:02d}:{i % 60:02d}Z"))
    return b


def scenario(env, _webhook):
    global ENV
    ENV = env
    import redis
    check(ENV.get("STRATA_LAKE_ROOT") == f"s3://{BUCKET}/lake", f"the stack's lake is in S3 ({ENV.get('STRATA_LAKE_ROOT')})")
    s3_port = int(ENV["STRATA_S3_PORT"])
    stop("s3rver")
    check(wait_until(lambda: not port_open(s3_port), 30, "the port to close"), "the stack's s3rver stopped")
    start("s3rver", ["node", os.path.join(ROOT, "tests", "s3", "s3rver_multipart.js"),
                     os.path.join(ENV["STRATA_STACK_DIR"], "s3"), str(s3_port), BUCKET], ENV)
    if not wait_until(lambda: port_open(s3_port), 60, "s3rver_multipart"):
        raise RuntimeError("tests/s3/s3rver_multipart.js did not start")
    s3 = s3_client(s3_port)
    harness_check(s3)

    run_id = f"r{int(time.time() * 1000)}-5300ab"
    prefix = f"lake/bronze/{DATASET}/dt={DS}/"
    obj = f"{prefix}run={run_id}/part-00000.csv"
    proxy = FaultProxy(s3_port, f"run={run_id}/part-00000.csv", fail_part=2)
    try:
        stop("lake_export")
        start("lake_export", [f"{BIN}/strata-lake-export"],
              dict(ENV, STRATA_S3_ENDPOINT=f"http://127.0.0.1:{proxy.port}"))
        check(wait_until(lambda: metric("strata_lake_export_reclaimed_total", {}) is not None, 60, "lake-export"),
              "lake-export restarted, writing to S3 through the fault proxy")

        step(f"2. one batch of {N_ROWS} order lines for {DS} (run {run_id})")
        errors_before = metric("strata_lake_export_batches_total", {"outcome": "error"}) or 0
        batch = big_batch(run_id)
        payload = batch.SerializeToString()
        redis.Redis(port=int(ENV["STRATA_REDIS_PORT"])).xadd(
            "strata:batches", {"batch": payload, "dataset": DATASET, "ds": DS, "run_id": run_id})
        committed = wait_until(lambda: get(s3, f"{prefix}_manifest.json") is not None, 300, "the manifest")
        check(committed, "the partition was committed in the end")

        step("3. what lake-export sent: the failed upload aborted, the retry completed")
        log = list(proxy.log)
        inits = [r["upload"] for r in log if r["method"] == "POST" and "uploads" in r["query"] and r["key"].endswith(obj)]
        check(len(inits) == 2 and inits[0] == proxy.first_upload,
              f"two multipart uploads of the object were initiated ({inits})")
        u1, u2 = (inits + [None, None])[:2]
        of = lambda u: [(r["method"], r["query"].get("partNumber"), r["status"]) for r in log if r["upload"] == u]
        first = of(u1)
        want_first = ([("POST", None, 200), ("PUT", "1", 200)] + [("PUT", "2", 500)] * MAX_ATTEMPTS +
                      [("DELETE", None, 204)])
        check(first == want_first,
              f"U1: initiated, part 1 accepted, part 2 failed {MAX_ATTEMPTS} times, then aborted (204); never "
              f"completed ({first})", [f"expected {want_first}"])
        i_abort = next((i for i, r in enumerate(log) if r["method"] == "DELETE" and r["upload"] == u1), None)
        i_u2 = next((i for i, r in enumerate(log) if r["upload"] == u2 and u2), None)
        check(i_abort is not None and i_u2 is not None and i_abort < i_u2,
              "the abort came with the failure, before the retry's upload")
        second = of(u2)
        want_second = [("POST", None, 200), ("PUT", "1", 200), ("PUT", "2", 200), ("PUT", "3", 200), ("POST", None, 200)]
        check(second == want_second, f"U2: 3 parts, completed, not aborted ({second})")
        errors = metric("strata_lake_export_batches_total", {"outcome": "error"})
        reclaimed = metric("strata_lake_export_reclaimed_total", {})
        check(errors is not None and errors > errors_before and (reclaimed or 0) >= 1,
              f"the batch failed once (strata_lake_export_batches_total{{outcome=error}} {errors_before} -> {errors}) "
              f"and was reclaimed (strata_lake_export_reclaimed_total {reclaimed})")
        lelog = open(os.path.join(ENV["STRATA_STACK_DIR"], "logs", "lake_export.log")).read()
        check(f"s3 upload part 2 s3://{BUCKET}/{obj}: HTTP 500 InternalError" in lelog,
              "lake-export's log names the failed part and object")

        step("4. what the store holds: no upload in progress, the object whole, the partition committed")
        left = uploads(s3)
        check(left == [], f"ListMultipartUploads is empty ({left})")
        store = os.path.join(ENV["STRATA_STACK_DIR"], "s3", BUCKET, "._S3rver_uploads")
        on_disk = sorted(os.listdir(store)) if os.path.isdir(store) else []
        check(on_disk == [], f"s3rver's store of uploads in progress is empty ({on_disk})")
        data = get(s3, obj) or b""
        meta = json.loads(get(s3, f"{prefix}run={run_id}/part-00000.meta") or b"{}")
        check(len(data) > 10 * 1024 * 1024 and len(data) == meta.get("bytes") and zlib.crc32(data) == meta.get("crc32"),
              f"the object has the {meta.get('bytes')} bytes and the CRC-32 of its .meta ({len(data)} bytes)")
        records = list(csv.reader(io.StringIO(data.decode())))
        body = records[1:]
        want = [(FIRST_ORDER + i // 3, 1 + i % 3) for i in range(N_ROWS)]
        got = [(int(r[2]), int(r[3])) for r in body] if records and records[0][:4] == ["_ds", "_run_id", "order_id", "line_no"] else []
        check(got == want and all(r[1] == run_id for r in body),
              f"it holds exactly the {N_ROWS} published lines, in order ({len(body)} records)")
        manifest = json.loads(get(s3, f"{prefix}_manifest.json") or b"{}")
        files = manifest.get("files", [])
        check(manifest.get("run_id") == run_id and manifest.get("rows") == N_ROWS and len(files) == 1 and
              files[0].get("bytes") == len(data) and files[0].get("crc32") == zlib.crc32(data),
              f"the manifest commits the run's {N_ROWS} rows in that one file ({manifest.get('rows')}, {len(files)} file(s))")
    finally:
        proxy.close()


def main():
    run_on_own_stack(ROOT, BIN, "strata-lake-s3-abort-", clean_env(), ["--lake", "s3"], scenario, FAILURES)


if __name__ == "__main__":
    main()

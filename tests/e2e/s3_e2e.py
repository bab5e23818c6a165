"""strata's S3 client: SigV4 signatures equal botocore's for the same requests (path- and
virtual-host style, query strings, odd keys, payloads), and behaviour against a real
S3-compatible server (s3rver from npm): buckets, small and multipart objects, listing, deletes,
a wrong secret, an unreachable endpoint."""
import datetime
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from urllib.parse import quote

import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

TOOL = sys.argv[1]
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FAILURES = []


def check(ok, what):
    print(("ok   " if ok else "FAIL ") + what, flush=True)
    if not ok:
        FAILURES.append(what)


class Fixed(datetime.datetime):
    @classmethod
    def utcnow(cls):
        return cls(2024, 1, 2, 3, 4, 5)


botocore.auth.datetime.datetime = Fixed
creds = Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
cases = [
    ("GET", "127.0.0.1:9000", "/lake/bronze/orders/dt=2024-01-01/_manifest.json", "", b""),
    ("PUT", "127.0.0.1:9000", "/lake/bronze/orders/dt=2024-01-01/run=r1/part-00000.csv.zst", "", b"a,b\n1,2\n"),
    ("GET", "lake.s3.us-east-1.amazonaws.com", "/", "list-type=2&prefix=silver/t/&continuation-token=a b+c/=", b""),
    ("PUT", "lake.s3.example.com", "/key with spaces/ünïcødé/(1)!*'.txt", "partNumber=3&uploadId=xyz~_-.", b"x" * 1000),
    ("POST", "127.0.0.1:4569", "/lake/big.bin", "uploads=", b""),
    ("DELETE", "127.0.0.1:4569", "/lake/a%2Fb", "", b""),
]
payload = tempfile.NamedTemporaryFile(delete=False)
for method, host, path, query, body in cases:
    with open(payload.name, "wb") as f:
        f.write(body)
    url = f"http://{host}{quote(path, safe='/~')}"
    if query:
        params = dict(kv.split("=", 1) for kv in query.split("&"))
        url += "?" + "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in params.items())
    req = AWSRequest(method=method, url=url, data=body, headers={})
    botocore.auth.S3SigV4Auth(creds, "s3", "us-east-1").add_auth(req)
    want = req.headers["Authorization"]
    got = subprocess.run([TOOL, "sign", method, host, path, query, payload.name, "20240102T030405Z"],
                         capture_output=True, text=True, check=True).stdout.strip()
    check(got == want, f"SigV4 {method} {host}{path}{'?' + query if query else ''}: strata signs like botocore"
          + ("" if got == want else f"\n  got  {got}\n  want {want}"))

# --- behaviour against s3rver ----------------------------------------------------------------------
sys.path.insert(0, os.path.join(ROOT, "infra"))
from free_port import free_port  # noqa: E402  (a port outside the ephemeral range)
port = free_port()
data = tempfile.mkdtemp()
server = subprocess.Popen([os.path.join(ROOT, "tests/s3/node_modules/.bin/s3rver"), "--directory", data, "--port", str(port),
                           "--address", "127.0.0.1", "--silent"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
try:
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    r = subprocess.run([TOOL, "check", f"http://127.0.0.1:{port}", "strata-lake"], capture_output=True, text=True)
    print(r.stdout + r.stderr, end="")
    check(r.returncode == 0, "the S3 client behaves against s3rver")
finally:
    server.terminate()
    server.wait(timeout=10)
    shutil.rmtree(data, ignore_errors=True)
if FAILURES:
    print(f"{len(FAILURES)} assertion(s) failed")
    sys.exit(1)
print("all assertions passed")

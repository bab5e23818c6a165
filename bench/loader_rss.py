"""Loader memory against partition size: bronze partitions of order_items with N rows are written
straight into the bench stack's lake (CSV parts of 50,000 rows and a manifest, as lake-export
writes them), then a freshly started warehouse-loader loads each one (streamed COPY into staging) and its
peak RSS (VmHWM) is read. Usage: loader_rss.py N [N ...]; prints
one JSON line per N. Run inside the bench stack's environment."""
import json
import os
import signal
import subprocess
import sys
import time
import zlib

import grpc
import psycopg2

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "e2e"))
from strata_e2e import load_pb2  # noqa: E402

pb = load_pb2()
ENV = os.environ
DIR = ENV["STRATA_STACK_DIR"]
COLUMNS = ["order_id", "line_no", "product_id", "quantity", "unit_price", "updated_at"]
PART_ROWS = 50000


def write_partition(ds, n, run_id):
    part_dir = os.path.join(ENV["STRATA_LAKE_ROOT"], "bronze", "order_items", f"dt={ds}")
    os.makedirs(os.path.join(part_dir, f"run={run_id}"), exist_ok=True)
    files = []
    for p, start in enumerate(range(0, n, PART_ROWS)):
        rows = min(PART_ROWS, n - start)
        lines = ["_ds,_run_id," + ",".join(COLUMNS)]
        lines.extend(f"{ds},{run_id},{(start + i) // 4 + 1},{(start + i) % 4 + 1},{1 + (start + i) % 20},{1 + i % 7},"
                     f"{5 + (start + i) % 1000 / 10:.2f},{ds}T12:00:00.{i % 1000000:06d}Z" for i in range(rows))
        data = ("\n".join(lines) + "\n").encode()
        name = f"run={run_id}/part-{p:05d}.csv"
        with open(os.path.join(part_dir, name), "wb") as f:
            f.write(data)
        files.append({"path": name, "rows": rows, "bytes": len(data), "crc32": zlib.crc32(data)})
    manifest = {"dataset": "order_items", "ds": ds, "run_id": run_id, "layer": "bronze", "format": "csv",
                "compression": "none", "columns": COLUMNS, "rows": n, "committed_at": "", "files": files}
    with open(os.path.join(part_dir, "_manifest.json"), "w") as f:
        json.dump(manifest, f)


def restart_loader():
    pidfile = os.path.join(DIR, "run", "warehouse_loader.pid")
    pid = int(open(pidfile).read())
    os.kill(pid, signal.SIGTERM)
    for _ in range(200):
        try:
            os.kill(pid, 0)
            time.sleep(0.1)
        except OSError:
            break
    log_path = os.path.join(DIR, "logs", "warehouse_loader.log")
    start = os.path.getsize(log_path)
    log = open(log_path, "a")
    p = subprocess.Popen([os.path.join(ENV["STRATA_BIN"], "strata-warehouse-loader")], stdout=log, stderr=log,
                         start_new_session=True)
    open(pidfile, "w").write(str(p.pid))
    for _ in range(300):
        with open(log_path) as f:
            f.seek(start)
            if '"msg":"started grpc=' in f.read():
                return p.pid
        time.sleep(0.1)
    raise SystemExit("warehouse-loader did not restart")


def vm_hwm(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM"):
            return int(line.split()[1]) // 1024
    return -1


def measure(n, ds):
    run_id = f"r{int(time.time() * 1000)}-b{n:x}"
    t = time.time()
    write_partition(ds, n, run_id)
    generated = time.time() - t
    pid = restart_loader()
    idle = vm_hwm(pid)
    stub = grpc.insecure_channel(ENV["STRATA_WAREHOUSE_LOADER_GRPC"]).unary_unary(
        "/strata.v1.WarehouseLoader/Load", request_serializer=pb.TaskRequest.SerializeToString,
        response_deserializer=pb.TaskAccepted.FromString)
    db = psycopg2.connect(ENV["STRATA_PG_DSN"])
    db.autocommit = True
    t0 = time.time()
    stub(pb.TaskRequest(pipeline="demo", dataset="order_items", ds=ds, run_id=run_id, task="load.order_items",
                        attempt=1), timeout=30)
    while True:
        with db.cursor() as cur:
            cur.execute("SELECT loaded_rows FROM ops.loads WHERE dataset = 'order_items' AND ds = %s AND run_id = %s",
                        (ds, run_id))
            r = cur.fetchone()
        if r:
            break
        if time.time() - t0 > 3600:
            raise SystemExit("load did not finish")
        time.sleep(0.2)
    seconds = time.time() - t0
    print(json.dumps({"rows": n, "loaded": r[0], "load_seconds": round(seconds, 2),
                      "rss_mib": vm_hwm(pid), "idle_rss_mib": idle, "generate_seconds": round(generated, 1)}), flush=True)


for i, n in enumerate(int(a) for a in sys.argv[1:]):
    measure(n, f"2030-01-{i + 1:02d}")

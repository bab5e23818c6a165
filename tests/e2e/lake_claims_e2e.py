"""lake-export drops a stale run's batches and removes its files (docs/architecture.md, "The life
of one batch" step 3; docs/operations.md, "The lake on S3"), end to end on a private stack with a
local lake. Issue 17, item 9.

The claim: when a run's manifest commits a partition, older runs' part files are removed (they
are unreachable), and a batch of a run older than the committed one is dropped, so a late
redelivery cannot resurrect a replaced partition.

  1. 2024-01-01 runs once (run R1): order_items' partition is committed by R1.
  2. A stale run S (R1 < S, started before the next run) has two of its three batches on
     strata:batches; lake-export writes them under run=S/ (no commit: its last batch is missing).
  3. The day runs again (run R2 > S): its manifest commits the partition; run=R1/ and the partial
     run=S/ are gone, and the partition holds exactly the source's order lines of the day, once.
  4. S's last batch, and a complete one-batch run of R1, arrive late: both are counted stale and
     dropped; nothing is written, the manifest is byte-for-byte R2's.
  5. Attempts within a run (a run extracts again after batches were lost on the bus; batches carry
     their extract attempt): run T (> R2) has two batches of attempt 1 written; the first batch of
     attempt 2 clears them; a late batch of attempt 1 is stale; attempt 2's last batch commits the
     partition with exactly attempt 2's rows, and R2's files go.

Expected rows come from the source database with SQL written here; part files are read back with
Python's csv module. Environment: STRATA_BUILD_BIN (default <repo>/build/bin). Run with
/usr/bin/python3.
"""
import csv
import io
import json
import os
import subprocess
import time
import zlib

from own_stack import FAILURES, check, clean_env, load_pb2, query, run_on_own_stack, metric as stack_metric, step, wait_until

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.abspath(os.environ.get("STRATA_BUILD_BIN") or os.path.join(ROOT, "build", "bin"))
DS = "2024-01-01"
DATASET = "order_items"
COLUMNS = ["order_id", "line_no", "product_id", "quantity", "unit_price", "updated_at"]
MARKER = 990_000_000  # order ids of the stale runs' rows: the simulator never gets near them
BATCH_ROWS = "40"     # several batches per run, so a run can be caught half-written

ENV = {}


PB = load_pb2(ROOT)


def run(*args, timeout=900):
    p = subprocess.run(list(args), capture_output=True, text=True, timeout=timeout, env=ENV)
    return p.returncode, p.stdout, p.stderr


def wh(sql, params=None):
    return query(ENV["STRATA_PG_DSN"], sql, params)


def src(sql, params=None):
    return query(ENV["STRATA_SOURCE_DSN"], sql, params)


def metric(service, name, labels):
    return stack_metric(ENV, service, name, labels)


def run_day(ds):
    rc, out, err = run(f"{BIN}/stratactl", "--json", "run", "--date", ds, "--timeout", "800")
    info = json.loads(out) if out.strip().startswith("{") else {}
    check(rc == 0 and info.get("state") == "succeeded",
          f"run {ds} succeeded (exit {rc}, {info.get('state')}: {info.get('message', '')})", [err.strip()[:300]])
    return info.get("run_id")


def part_dir():
    return os.path.join(ENV["STRATA_LAKE_ROOT"], "bronze", DATASET, f"dt={DS}")


def entries():
    """What the partition's directory holds: the manifest and run=<id> folders, sorted."""
    return sorted(os.listdir(part_dir())) if os.path.isdir(part_dir()) else []


def manifest_bytes():
    with open(os.path.join(part_dir(), "_manifest.json"), "rb") as f:
        return f.read()


def source_lines():
    """The day's order lines in the source, as the set of their keys (plain SQL, written here)."""
    rows = src("SELECT order_id, line_no FROM shop.order_items "
               "WHERE updated_at >= %s::date AND updated_at < %s::date + 1", (DS, DS))
    return sorted((int(a), int(b)) for a, b in rows)


def publish(redis_client, run_id, seq, rows, last=False, total=0, attempt=0):
    """One Batch of order_items for DS on strata:batches, as ingest would send it (attempt 0: one
    that does not say)."""
    b = PB.Batch(batch_id=f"{run_id}/{DATASET}/{seq}", pipeline="demo", dataset=DATASET, ds=DS, run_id=run_id,
                 seq=seq, last=last, total_batches=total, columns=COLUMNS, source_position=f"test seq={seq}",
                 attempt=attempt)
    for order_id, line_no in rows:
        r = b.rows.add()
        for v in (str(order_id), str(line_no), "1", "2", "3.5", f"{DS}T12:00:00Z"):
            r.values.add(text=v)
    redis_client.xadd("strata:batches", {"batch": b.SerializeToString(), "dataset": DATASET, "ds": DS,
                                         "run_id": run_id})


def read_text(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def part_keys(run_dir, seq):
    """(order_id, line_no) of a part file's records; None when it is not there."""
    text = read_text(os.path.join(run_dir, f"part-{seq:05d}.csv"))
    if text is None:
        return None
    records = list(csv.reader(io.StringIO(text)))
    oi, ln = records[0].index("order_id"), records[0].index("line_no")
    return [(int(r[oi]), int(r[ln])) for r in records[1:]]


def stale_rows(seq):
    return [(MARKER + seq, 1), (MARKER + seq, 2), (MARKER + seq, 3)]


def read_partition(run_id):
    """(problems, keys) of the committed partition: every file the manifest names exists with its
    size, CRC-32 and row count; keys are (order_id, line_no) of every record read back."""
    m = json.loads(manifest_bytes())
    problems, keys = [], []
    for f in m["files"]:
        path = os.path.join(part_dir(), f["path"])
        if not f["path"].startswith(f"run={run_id}/"):
            problems.append(f"{f['path']} is not under run={run_id}/")
        if not os.path.exists(path):
            problems.append(f"{f['path']} is missing")
            continue
        data = open(path, "rb").read()
        if len(data) != f["bytes"] or zlib.crc32(data) != f["crc32"]:
            problems.append(f"{f['path']}: {len(data)} bytes crc {zlib.crc32(data)} vs manifest {f['bytes']} {f['crc32']}")
        records = list(csv.reader(io.StringIO(data.decode())))
        header, body = records[0], records[1:]
        if len(body) != f["rows"]:
            problems.append(f"{f['path']}: {len(body)} records vs manifest {f['rows']}")
        oi, ln, ri = header.index("order_id"), header.index("line_no"), header.index("_run_id")
        keys.extend((int(r[oi]), int(r[ln])) for r in body)
        if any(r[ri] != run_id for r in body):
            problems.append(f"{f['path']}: records of another run")
    return m, problems, sorted(keys)


def scenario(env, _webhook):
    global ENV
    ENV = env
    import redis
    bus = redis.Redis(port=int(ENV["STRATA_REDIS_PORT"]))

    step(f"1. {DS} runs once: run R1 commits {DATASET}")
    rc, _, err = run(f"{BIN}/strata-source-sim", "advance", "--through", DS, timeout=300)
    if rc != 0:
        raise RuntimeError(f"strata-source-sim advance: {err.strip()}")
    r1 = run_day(DS)
    expected = source_lines()
    m1 = json.loads(manifest_bytes())
    check(m1["run_id"] == r1 and m1["rows"] == len(expected) > 0 and len(m1["files"]) >= 2,
          f"R1's manifest: {m1['rows']} rows in {len(m1['files'])} files = the source's {len(expected)} lines of {DS}")
    check(entries() == ["_manifest.json", f"run={r1}"], f"the partition holds R1's files only ({entries()})")

    step("2. a stale run S (R1 < S < the next run) has two of its three batches written")
    stale = f"r{int(time.time() * 1000)}-5ca1e0"  # run ids are r<unix ms>-<hex>: R1 < S < the next run
    publish(bus, stale, 0, stale_rows(0))
    publish(bus, stale, 1, stale_rows(1))
    stale_dir = os.path.join(part_dir(), f"run={stale}")
    written = wait_until(lambda: all(os.path.exists(os.path.join(stale_dir, f"part-0000{i}.{ext}"))
                                     for i in (0, 1) for ext in ("csv", "meta")), 120, "S's two part files")
    check(written and r1 < stale, f"lake-export wrote S's two parts under run={stale}/ (newer than R1 {r1}), "
                                  f"uncommitted: {sorted(os.listdir(stale_dir)) if os.path.isdir(stale_dir) else []}")
    check(json.loads(manifest_bytes())["run_id"] == r1, "the manifest still names R1 (S is incomplete)")

    step("3. the day runs again: R2 commits, R1's and S's files are removed")
    r2 = run_day(DS)
    check(r2 is not None and r2 > stale > r1, f"run ids sort by start: R1 {r1} < S {stale} < R2 {r2}")
    m2, problems, keys = read_partition(r2)
    check(m2["run_id"] == r2, f"the manifest names R2 ({m2['run_id']})")
    check(entries() == ["_manifest.json", f"run={r2}"],
          f"the partition holds the manifest and run={r2}/ only: R1's and the stale S's files are gone ({entries()})")
    check(not problems, "every file R2's manifest names is there, with its size, CRC-32, rows and run id", problems)
    check(keys == expected and m2["rows"] == len(expected),
          f"R2's partition holds exactly the source's {len(expected)} order lines of {DS}, once "
          f"({len(keys)} records read back, {len(set(keys))} distinct, manifest {m2['rows']})")
    staged = wh(f"SELECT count(*), count(DISTINCT (order_id, line_no)), count(*) FILTER (WHERE order_id >= %s) "
                f"FROM staging.{DATASET} WHERE ds = %s", (MARKER, DS))[0]
    loads = wh("SELECT run_id, manifest_rows, loaded_rows FROM ops.loads WHERE dataset = %s AND ds = %s", (DATASET, DS))
    check(staged == (len(expected), len(expected), 0) and loads == [(r2, len(expected), len(expected))],
          f"staging.{DATASET} holds those {len(expected)} lines from R2, none of S's (staged {staged}, ops.loads {loads})")

    step("4. S's last batch and a whole batch of R1 arrive late: dropped as stale")
    stale_before = metric("lake_export", "strata_lake_export_batches_total", {"outcome": "stale"}) or 0
    written_before = metric("lake_export", "strata_lake_export_batches_total", {"outcome": "written"})
    before = manifest_bytes()
    publish(bus, stale, 2, stale_rows(2), last=True, total=3)  # would complete S
    publish(bus, r1, 0, stale_rows(7), last=True, total=1)     # a complete one-batch R1
    counted = wait_until(lambda: (metric("lake_export", "strata_lake_export_batches_total",
                                         {"outcome": "stale"}) or 0) - stale_before >= 2, 120, "2 stale batches")
    stale_after = metric("lake_export", "strata_lake_export_batches_total", {"outcome": "stale"})
    written_after = metric("lake_export", "strata_lake_export_batches_total", {"outcome": "written"})
    check(counted and stale_after is not None and stale_after - stale_before == 2,
          f"strata_lake_export_batches_total{{outcome=stale}} grew by 2 ({stale_before} -> {stale_after})")
    check(written_before is not None and written_after == written_before,
          f"and {{outcome=written}} did not move ({written_before} -> {written_after})")
    check(wait_until(lambda: bus.xlen("strata:batches") == 0, 60, "the stream to empty"),
          "both entries left strata:batches (acked and deleted)")
    check(entries() == ["_manifest.json", f"run={r2}"], f"nothing was written for S or R1 ({entries()})")
    check(manifest_bytes() == before, "the manifest is byte-for-byte R2's")
    _, problems, keys = read_partition(r2)
    check(not problems and keys == expected, f"R2's partition is intact: the source's {len(expected)} lines",
          problems)

    step("5. attempts of one run: attempt 2 replaces attempt 1's parts, a late batch of attempt 1 is stale")
    run_t = f"r{int(time.time() * 1000)}-a77e00"
    t_dir = os.path.join(part_dir(), f"run={run_t}")
    listing = lambda: sorted(os.listdir(t_dir)) if os.path.isdir(t_dir) else []
    first = lambda: read_text(os.path.join(t_dir, "_attempt"))
    a1 = {seq: [(MARKER + 100 + seq, n) for n in (1, 2)] for seq in (0, 1, 2)}
    a2 = {seq: [(MARKER + 200 + seq, n) for n in (1, 2, 3)] for seq in (0, 1)}
    publish(bus, run_t, 0, a1[0], attempt=1)
    publish(bus, run_t, 1, a1[1], attempt=1)
    check(wait_until(lambda: listing() == ["_attempt", "part-00000.csv", "part-00000.meta", "part-00001.csv",
                                           "part-00001.meta"] and first() == "1", 120, "attempt 1's parts"),
          f"attempt 1 of run T ({run_t}) has two parts written ({listing()}, _attempt {first()})")
    publish(bus, run_t, 0, a2[0], attempt=2)
    replaced = wait_until(lambda: first() == "2" and part_keys(t_dir, 0) == a2[0] and
                          listing() == ["_attempt", "part-00000.csv", "part-00000.meta"], 120, "attempt 2's first part")
    check(replaced, f"the first batch of attempt 2 replaced attempt 1's parts: {listing()}, _attempt {first()}, "
                    f"part 0 holds {part_keys(t_dir, 0)}")
    stale_before = metric("lake_export", "strata_lake_export_batches_total", {"outcome": "stale"}) or 0
    publish(bus, run_t, 2, a1[2], last=True, total=3, attempt=1)  # would complete attempt 1
    counted = wait_until(lambda: (metric("lake_export", "strata_lake_export_batches_total",
                                         {"outcome": "stale"}) or 0) - stale_before >= 1, 120, "1 stale batch")
    stale_after = metric("lake_export", "strata_lake_export_batches_total", {"outcome": "stale"})
    check(counted and stale_after == stale_before + 1,
          f"the late batch of attempt 1 is counted stale ({stale_before} -> {stale_after})")
    check(listing() == ["_attempt", "part-00000.csv", "part-00000.meta"] and manifest_bytes() == before,
          f"it wrote nothing and committed nothing ({listing()}; the manifest is R2's)")
    publish(bus, run_t, 1, a2[1], last=True, total=2, attempt=2)
    check(wait_until(lambda: json.loads(manifest_bytes())["run_id"] == run_t, 120, "run T's commit"),
          "attempt 2's last batch commits the partition for run T")
    m_t, problems, keys = read_partition(run_t)
    want = sorted(a2[0] + a2[1])
    check(not problems and keys == want and m_t["rows"] == len(want),
          f"it holds exactly attempt 2's {len(want)} rows, none of attempt 1's ({len(keys)} read back)", problems)
    check(entries() == ["_manifest.json", f"run={run_t}"], f"and R2's files are gone ({entries()})")


def main():
    env = dict(clean_env(), STRATA_BATCH_ROWS=BATCH_ROWS)
    run_on_own_stack(ROOT, BIN, "strata-lake-claims-", env, ["--start", DS], scenario, FAILURES)


if __name__ == "__main__":
    main()

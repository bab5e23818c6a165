"""The controller's status page as a person sees it, in headless Chromium: the grid of runs x
tasks and the newest run's detail with its checks, read from the DOM Chromium rendered (the
page's own script excluded) and compared with ops.runs, ops.task_runs and quality.check_results;
a screenshot whose pixels show the task colours; and its JSON pages through 10,000 runs."""
import json
import os
import struct
import subprocess
import tempfile
import urllib.request
import zlib
from html.parser import HTMLParser

import psycopg2

from strata_e2e import ENV, check, finish, wh

BASE = f"http://{ENV['STRATA_CONTROLLER_HTTP']}"
CHROMIUM = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            "--virtual-time-budget=8000"]


def chromium(*args):
    profile = tempfile.mkdtemp()
    p = subprocess.run(CHROMIUM + [f"--user-data-dir={profile}"] + list(args), capture_output=True, text=True,
                       timeout=120)
    return p.stdout


class Node:
    def __init__(self, tag, attrs):
        self.tag, self.attrs, self.children = tag, dict(attrs), []

    def text(self):
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def classes(self):
        return (self.attrs.get("class") or "").split()

    def find_all(self, tag=None, cls=None, **attrs):
        out = []
        for c in self.children:
            if isinstance(c, Node):
                if (tag is None or c.tag == tag) and (cls is None or cls in c.classes()) and \
                        all(c.attrs.get(k) == v for k, v in attrs.items()):
                    out.append(c)
                out += c.find_all(tag, cls, **attrs)
        return out

    def elements(self):
        return [c for c in self.children if isinstance(c, Node)]


class Dom(HTMLParser):
    """The rendered document as a tree; <script> and <style> contents are left out, so nothing
    found here comes from the page's own templates."""
    VOID = {"meta", "link", "br", "img", "input", "hr", "col", "base", "source", "wbr"}

    def __init__(self, html):
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", [])
        self.stack = [self.root]
        self.skip = 0
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag in ("script", "style"):
            self.skip += 1
            return
        node = Node(tag, attrs)
        self.stack[-1].children.append(node)
        if tag not in self.VOID:
            self.stack.append(node)

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self.skip -= 1
            return
        for i in range(len(self.stack) - 1, 0, -1):
            if self.stack[i].tag == tag:
                del self.stack[i:]
                return

    def handle_data(self, data):
        if not self.skip:
            self.stack[-1].children.append(data)


latest = wh("SELECT run_id, ds::text, state, trigger FROM ops.runs WHERE pipeline = 'demo' "
            "ORDER BY created_at DESC, run_id DESC LIMIT 25")
task_state = {(r, t): s for r, t, s in wh("SELECT run_id, task, state FROM ops.task_runs WHERE run_id = ANY(%s)",
                                          ([r[0] for r in latest],))}
dom = Dom(chromium("--dump-dom", BASE + "/")).root

# --- the grid --------------------------------------------------------------------------------------
header = [th.text() for th in dom.find_all("th", cls="task")]
newest = latest[0][0]
newest_tasks = {t for (r, t) in task_state if r == newest}
check(len(header) > 0 and set(header) == newest_tasks and header[-1] == "publish",
      f"the grid's task columns are the run's tasks, publish last ({header})")
rows = dom.find_all("tr", cls="run")
check([tr.attrs.get("data-run") for tr in rows] == [r[0] for r in latest] and len(rows) > 0,
      f"the grid shows the {len(latest)} newest runs, newest first ({len(rows)} rows)")
cells_ok, shown = True, []
for tr, (run_id, ds, state, trigger) in zip(rows, latest):
    tds = tr.elements()
    texts = [td.text().strip() for td in tds[:4]]
    shown.append(texts)
    spans = tds[2].find_all("span", cls="state") if len(tds) > 2 else []
    if texts != [ds, run_id, state, trigger] or not spans or state not in spans[0].classes():
        cells_ok = False
    colours = [(td.find_all("div") or [Node("div", [])])[0].classes() for td in tds[5:]]
    if colours != [[task_state.get((run_id, t), "pending")] for t in header]:
        cells_ok = False
        print(f"  run {run_id}: cells {colours} vs {[task_state.get((run_id, t), 'pending') for t in header]}")
check(cells_ok, f"each row shows its ds, run id, state and trigger, and one cell per task coloured by its state ({shown[:2]})")
succeeded_cells = sum(1 for tr in rows for td in tr.find_all("td", cls="cell")
                      if "succeeded" in (td.find_all("div") or [Node("div", [])])[0].classes())
check(succeeded_cells == sum(1 for (r, _), s in task_state.items() if s == "succeeded" and r in {x[0] for x in latest}),
      f"every succeeded task is a succeeded cell ({succeeded_cells})")

# --- the newest run's detail, with its checks --------------------------------------------------------
detail = (dom.find_all("div", id="detail") or [Node("div", [])])[0]
title = " ".join(h.text() for h in detail.find_all("h2"))
check(f"run {newest}" in title and f"ds {latest[0][1]}" in title and latest[0][2] in title,
      f"the detail shows the newest run: {title!r}")
tables = detail.find_all("table")
task_rows = [[td.text() for td in tr.find_all("td")][:2] for tr in tables[0].find_all("tr")][1:] if tables else []
check(sorted(task_rows) == sorted([t, s] for (r, t), s in task_state.items() if r == newest),
      f"the detail lists each task with its state ({len(task_rows)})")
headings = [h.text() for h in detail.find_all("h3")]
check_rows = [[td.text() for td in tr.find_all("td")] for tr in tables[1].find_all("tr")][1:] if len(tables) > 1 else []
want = wh("SELECT check_name, status, coalesce(observed, '') FROM quality.check_results WHERE run_id = %s ORDER BY 1",
          (newest,))
check(headings == ["checks"] and len(want) > 0 and sorted((c[0], c[1], c[2]) for c in check_rows) == want,
      f"the detail lists the run's {len(want)} check results with status and observed value ({len(check_rows)} shown)")


# --- a screenshot: the task colours are on it ---------------------------------------------------------
def png_pixels(path):
    """(width, height, rows of RGB(A) bytes) of an 8-bit, non-interlaced PNG."""
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            w, h, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", body)
            assert depth == 8 and colour in (2, 6) and interlace == 0, (depth, colour, interlace)
            bpp = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    raw, stride, rows, prev = zlib.decompress(idat), w * bpp, [], bytearray(w * bpp)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        if f == 1:
            for i in range(bpp, stride):
                line[i] = (line[i] + line[i - bpp]) & 255
        elif f == 2:
            line = bytearray((a + b) & 255 for a, b in zip(line, prev))
        elif f == 3:
            for i in range(stride):
                line[i] = (line[i] + ((line[i - bpp] if i >= bpp else 0) + prev[i]) // 2) & 255
        elif f == 4:
            for i in range(stride):
                a, b, c = (line[i - bpp] if i >= bpp else 0), prev[i], (prev[i - bpp] if i >= bpp else 0)
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append(line)
        prev = line
    return w, h, bpp, rows


shot = os.path.join(ENV["STRATA_STACK_DIR"], "status-page.png")
chromium(f"--screenshot={shot}", "--window-size=1400,900", BASE + "/")
w, h, bpp, pixels = png_pixels(shot)
green = sum(1 for line in pixels for x in range(0, w * bpp, bpp) if tuple(line[x:x + 3]) == (0x2d, 0xa4, 0x4e))
# A succeeded cell is a 16x16 square of #2da44e (rounded corners take a few pixels off).
check((w, h) == (1400, 900) and green >= 200 * min(succeeded_cells, 10),
      f"the 1400x900 screenshot shows the succeeded cells in green ({green} green pixels)")

# --- 10,000 runs of history: the grid's JSON pages through them --------------------------------------
# (How fast is for `make bench`.)
conn = psycopg2.connect(ENV["STRATA_PG_DSN"])
conn.autocommit = True
with conn.cursor() as cur:
    cur.execute("DELETE FROM ops.task_runs WHERE run_id LIKE 'page-%%'; DELETE FROM ops.runs WHERE pipeline = 'page'")
    cur.execute("""INSERT INTO ops.runs (run_id, pipeline, ds, state, trigger, created_at, started_at, finished_at)
                   SELECT 'page-' || lpad(g::text, 6, '0'), 'page', date '2000-01-01' + g, 'succeeded', 'schedule',
                          now() - (10000 - g) * interval '1 minute', now(), now() FROM generate_series(1, 10000) g""")
    cur.execute("""INSERT INTO ops.task_runs (run_id, task, state, attempt)
                   SELECT r.run_id, t, 'succeeded', 1 FROM ops.runs r,
                          unnest(ARRAY['extract.customers','export.customers','load.customers','model','check','publish']) t
                   WHERE r.pipeline = 'page'""")
    cur.execute("ANALYZE ops.runs; ANALYZE ops.task_runs")
before, seen, complete = "", [], True
for _ in range(20):
    grid = json.loads(urllib.request.urlopen(f"{BASE}/api/grid?pipeline=page&limit=25&before={before}", timeout=60).read())
    seen += [r["run_id"] for r in grid["runs"]]
    complete = complete and all(r["tasks"] == {t: "succeeded" for t in ["extract.customers", "export.customers",
                                                                        "load.customers", "model", "check", "publish"]}
                                for r in grid["runs"])
    before = grid["next_before"]
check(seen == [f"page-{g:06d}" for g in range(10000, 9500, -1)] and complete,
      f"20 pages of 25 runs, newest first, each with its 6 tasks ({len(seen)})")
html = urllib.request.urlopen(f"{BASE}/", timeout=60).read()
check(b"<table id=\"grid\">" in html, "the page itself is served")
with conn.cursor() as cur:
    cur.execute("DELETE FROM ops.task_runs WHERE run_id LIKE 'page-%%'; DELETE FROM ops.runs WHERE pipeline = 'page'")
finish()

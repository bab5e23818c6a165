#include "services/controller/status_page.h"

namespace strata::controller {

const char* StatusPageHtml() {
  return R"HTML(<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>strata — runs</title>
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #1f2328; }
  h1 { font-size: 20px; margin: 0 0 4px; }
  .sub { color: #57606a; margin-bottom: 16px; }
  table { border-collapse: collapse; }
  th, td { padding: 4px 8px; border-bottom: 1px solid #d0d7de; text-align: left; white-space: nowrap; }
  th.task { writing-mode: vertical-rl; transform: rotate(180deg); font-weight: normal; color: #57606a; }
  td.cell { width: 18px; height: 18px; padding: 0; }
  td.cell div { width: 16px; height: 16px; margin: 2px; border-radius: 3px; }
  .succeeded { background: #2da44e; } .failed { background: #cf222e; } .running { background: #0969da; }
  .pending { background: #d0d7de; } .skipped { background: #eaeef2; border: 1px dashed #8c959f; }
  .retrying { background: #bf8700; } .queued { background: #d0d7de; } .cancelled, .cancelling { background: #6e7781; }
  span.state { color: #fff; padding: 1px 6px; border-radius: 8px; font-size: 12px; }
  tr.run { cursor: pointer; } tr.run:hover { background: #f6f8fa; }
  #detail { margin-top: 24px; } #detail table { margin-top: 8px; }
  .pager button { margin: 12px 8px 0 0; }
  .fail { color: #cf222e; } .warn { color: #9a6700; } .pass { color: #1a7f37; }
  a { color: #0969da; }
</style>
</head>
<body>
<h1>strata runs — <span id="pipeline"></span></h1>
<div class="sub">Rows are runs (newest first), columns are tasks in DAG order. Click a run for its tasks and checks.
  Metrics: <a href="/metrics-link" id="metrics">controller /metrics</a></div>
<table id="grid"><thead></thead><tbody></tbody></table>
<div class="pager"><button id="newer" disabled>newer</button><button id="older">older</button></div>
<div id="detail"></div>
<script>
const pages = [];
let current = "";
function esc(s) { return String(s).replace(/[&<>"]/g, c => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c])); }
async function load(before) {
  const res = await fetch("/api/grid?limit=25" + (before ? "&before=" + encodeURIComponent(before) : ""));
  const grid = await res.json();
  current = before;
  document.getElementById("pipeline").textContent = grid.pipeline;
  document.getElementById("metrics").href = grid.metrics_url;
  const head = "<tr><th>ds</th><th>run</th><th>state</th><th>trigger</th><th>seconds</th>" +
      grid.tasks.map(t => `<th class="task">${esc(t)}</th>`).join("") + "</tr>";
  document.querySelector("#grid thead").innerHTML = head;
  document.querySelector("#grid tbody").innerHTML = grid.runs.map(r =>
      `<tr class="run" data-run="${esc(r.run_id)}"><td>${esc(r.ds)}</td><td>${esc(r.run_id)}</td>` +
      `<td><span class="state ${esc(r.state)}">${esc(r.state)}</span></td><td>${esc(r.trigger)}</td>` +
      `<td>${r.seconds.toFixed(1)}</td>` +
      grid.tasks.map(t => `<td class="cell" title="${esc(t)}: ${esc(r.tasks[t] || "")}"><div class="${esc(r.tasks[t] || "pending")}"></div></td>`).join("") +
      "</tr>").join("");
  document.querySelectorAll("tr.run").forEach(tr => tr.onclick = () => detail(tr.dataset.run));
  const older = document.getElementById("older");
  older.disabled = !grid.next_before;
  older.onclick = () => { pages.push(current); load(grid.next_before); };
  const newer = document.getElementById("newer");
  newer.disabled = pages.length === 0;
  newer.onclick = () => load(pages.pop());
  if (grid.runs.length && !before) detail(grid.runs[0].run_id);
}
async function detail(runId) {
  const r = await (await fetch("/api/runs/" + encodeURIComponent(runId))).json();
  document.getElementById("detail").innerHTML =
      `<h2>run ${esc(r.run_id)} — ds ${esc(r.ds)} — <span class="state ${esc(r.state)}">${esc(r.state)}</span></h2>` +
      (r.message ? `<div class="fail">${esc(r.message)}</div>` : "") +
      "<table><tr><th>task</th><th>state</th><th>attempt</th><th>rows</th><th>rejected</th><th>seconds</th><th>message</th></tr>" +
      r.tasks.map(t => `<tr><td>${esc(t.task)}</td><td><span class="state ${esc(t.state)}">${esc(t.state)}</span></td>` +
          `<td>${t.attempt}</td><td>${t.rows}</td><td>${t.rejected}</td><td>${t.seconds.toFixed(2)}</td><td>${esc(t.message)}</td></tr>`).join("") +
      "</table><h3>checks</h3><table><tr><th>check</th><th>status</th><th>observed</th><th>message</th></tr>" +
      r.checks.map(c => `<tr><td>${esc(c.check)}</td><td class="${esc(c.status)}">${esc(c.status)}</td>` +
          `<td>${esc(c.observed)}</td><td>${esc(c.message)}</td></tr>`).join("") + "</table>";
}
load("");
</script>
</body>
</html>
)HTML";
}

}  // namespace strata::controller

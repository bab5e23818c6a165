#include "services/controller/dag.h"

#include <algorithm>
#include <cstdio>
#include <set>

namespace strata::controller {

std::vector<TaskNode> BuildDag(const PipelineSpec& spec) {
  std::vector<TaskNode> dag;
  std::vector<std::string> loads;
  for (const auto& d : spec.datasets) {
    dag.push_back({"extract." + d.name, TaskKind::kExtract, d.name, {}});
    dag.push_back({"export." + d.name, TaskKind::kExport, d.name, {"extract." + d.name}});
    dag.push_back({"load." + d.name, TaskKind::kLoad, d.name, {"export." + d.name}});
    loads.push_back("load." + d.name);
  }
  dag.push_back({"model", TaskKind::kModel, "", loads});
  dag.push_back({"check", TaskKind::kCheck, "", {"model"}});
  dag.push_back({"publish", TaskKind::kPublish, "", {"check"}});
  return dag;
}

std::vector<std::string> ReadyTasks(const std::vector<TaskNode>& dag, const std::vector<std::string>& pending,
                                    const std::vector<std::string>& succeeded) {
  const std::set<std::string> ok(succeeded.begin(), succeeded.end());
  const std::set<std::string> waiting(pending.begin(), pending.end());
  std::vector<std::string> out;
  for (const auto& t : dag) {
    if (!waiting.count(t.name)) continue;
    if (std::all_of(t.deps.begin(), t.deps.end(), [&](const std::string& d) { return ok.count(d) > 0; }))
      out.push_back(t.name);
  }
  return out;
}

std::vector<std::string> Downstream(const std::vector<TaskNode>& dag, const std::string& task) {
  std::set<std::string> reached{task};
  std::vector<std::string> out;
  // DAG order is topological, so one forward pass reaches everything.
  for (const auto& t : dag) {
    if (std::any_of(t.deps.begin(), t.deps.end(), [&](const std::string& d) { return reached.count(d) > 0; })) {
      reached.insert(t.name);
      out.push_back(t.name);
    }
  }
  return out;
}

std::string NewRunId(long long unix_ms, unsigned random) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "r%013lld-%04x", unix_ms, random & 0xffffu);
  return buf;
}

}  // namespace strata::controller

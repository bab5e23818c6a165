#include "services/warehouse_loader/lineage.h"

#include <algorithm>
#include <deque>
#include <set>

#include "common/errors.h"
#include "services/warehouse_loader/models.h"

namespace strata::loader {
namespace {

bool Captured(const PipelineSpec& spec, const std::string& dataset) {
  return std::find(spec.cdc.datasets.begin(), spec.cdc.datasets.end(), dataset) != spec.cdc.datasets.end();
}

// Breadth-first from `start` over `next`: nearest first, each once.
std::vector<std::string> Walk(const std::map<std::string, std::vector<std::string>>& next, const std::string& start) {
  std::vector<std::string> out;
  std::set<std::string> seen{start};
  std::deque<std::string> todo{start};
  while (!todo.empty()) {
    const std::string t = todo.front();
    todo.pop_front();
    auto it = next.find(t);
    if (it == next.end()) continue;
    for (const auto& n : it->second)
      if (seen.insert(n).second) {
        out.push_back(n);
        todo.push_back(n);
      }
  }
  return out;
}

}  // namespace

std::map<std::string, std::vector<std::string>> PipelineGraph(const PipelineSpec& spec) {
  std::map<std::string, std::vector<std::string>> g;
  const auto add = [&](const std::string& table, const std::string& from) {
    auto& v = g[table];
    if (from != table && std::find(v.begin(), v.end(), from) == v.end()) v.push_back(from);
  };
  for (const auto& d : spec.datasets) {
    g["source." + d.name];
    add("staging." + d.name, "source." + d.name);
    if (Captured(spec, d.name)) {
      add("raw." + d.name + "_changes", "source." + d.name);
      add("raw." + d.name + "_current", "raw." + d.name + "_changes");
    }
  }
  g["dwh.dim_date"];
  for (const auto& dim : spec.dimensions) {
    add("dwh." + dim.name, "staging." + dim.from);
    if (Captured(spec, dim.from)) add("dwh." + dim.name, "raw." + dim.from + "_current");
  }
  for (const auto& f : spec.facts) {
    const std::string t = "dwh." + f.name;
    add(t, "staging." + f.from);
    for (const auto& j : f.joins) add(t, "staging." + j.dataset);
    for (const auto& ref : f.dimensions) add(t, "dwh." + ref.dimension);
    for (const auto& del : FactDeletionSources(spec, f)) add(t, "raw." + del.dataset + "_current");
  }
  for (const auto& m : AllModels())
    if (std::find(spec.models.begin(), spec.models.end(), m.name) != spec.models.end())
      for (const auto& t : m.tables)
        for (const auto& r : m.reads) add(t, r);
  for (const auto& m : spec.sql_models)
    for (const auto& r : m.Upstream()) add(m.name, r);
  // Published copies of every marts table (views and models marked `publish: false` are not).
  std::vector<std::string> marts;
  for (const auto& [t, from] : g)
    if (t.rfind("marts.", 0) == 0) marts.push_back(t);
  for (const auto& t : marts) {
    const bool unpublished = std::any_of(spec.sql_models.begin(), spec.sql_models.end(),
                                         [&](const SqlModel& m) { return m.name == t && !m.Published(); });
    if (!unpublished) add("serving." + t.substr(6), t);
  }
  // The API: each endpoint reads what it serves.
  for (const auto& e : spec.endpoints)
    for (const auto& r : e.reads) add("endpoint." + e.name, r);
  // Only what this pipeline has (a built-in reads raw.orders_current only where CDC captures it).
  for (auto& [t, from] : g)
    from.erase(std::remove_if(from.begin(), from.end(), [&](const std::string& f) { return !g.count(f); }), from.end());
  return g;
}

void CheckEndpointReads(const PipelineSpec& spec) {
  const auto graph = PipelineGraph(spec);
  for (const auto& e : spec.endpoints)
    for (const auto& t : e.reads)
      if (!graph.count(t))
        throw InputError(e.file + ":" + std::to_string(e.line) + ": endpoints (" + e.name + "): the SQL reads " + t +
                         ", which this pipeline neither builds nor publishes");
}

Lineage LineageOf(const PipelineSpec& spec, const std::string& table) {
  const auto up = PipelineGraph(spec);
  if (!up.count(table)) {
    std::string known;
    for (const auto& [t, from] : up)
      if (t.rfind("source.", 0) != 0) known += (known.empty() ? "" : ", ") + t;
    throw InputError("lineage: pipeline " + spec.name + " has no table '" + table + "' (its tables: " + known + ")");
  }
  std::map<std::string, std::vector<std::string>> down;
  for (const auto& [t, from] : up)
    for (const auto& f : from) down[f].push_back(t);
  return {Walk(up, table), Walk(down, table)};
}

}  // namespace strata::loader

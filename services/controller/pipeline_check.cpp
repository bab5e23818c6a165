#include "services/controller/pipeline_check.h"

#include <iostream>
#include <nlohmann/json.hpp>

#include "common/errors.h"
#include "common/spec.h"
#include "services/warehouse_loader/lineage.h"
#include "services/warehouse_loader/models.h"
#include "services/warehouse_loader/sql_models.h"

namespace strata::ctl {
namespace {

// Everything the loader checks at start-up without a database.
PipelineSpec Checked(const std::string& dir) {
  PipelineSpec spec = LoadPipelineSpec(dir);
  loader::ResolveModels(spec);
  loader::CheckSqlModelReads(spec, loader::BuiltInTables(spec));
  loader::CheckEndpointReads(spec);
  return spec;
}

std::string Join(const std::vector<std::string>& v) {
  std::string out;
  for (const auto& s : v) out += (out.empty() ? "" : ", ") + s;
  return out;
}

}  // namespace

int ValidatePipeline(const std::string& dir, bool json) {
  try {
    const PipelineSpec spec = Checked(dir);
    if (json) {
      std::cout << nlohmann::json{{"pipeline", spec.name}, {"valid", true}, {"datasets", spec.datasets.size()},
                                  {"dimensions", spec.dimensions.size()}, {"facts", spec.facts.size()},
                                  {"sql_models", spec.sql_models.size()}, {"checks", spec.checks.size()},
                                  {"endpoints", spec.endpoints.size()}}
                       .dump()
                << "\n";
    } else {
      std::cout << dir << ": pipeline " << spec.name << " is valid: " << spec.datasets.size() << " datasets, "
                << spec.dimensions.size() << " dimensions, " << spec.facts.size() << " facts, " << spec.sql_models.size()
                << " SQL models, " << spec.checks.size() << " checks, " << spec.endpoints.size() << " endpoints\n";
    }
    return 0;
  } catch (const InputError& e) {
    std::cerr << e.what() << "\n";
    return 2;
  }
}

int ListModels(const std::string& dir, bool json) {
  try {
    const PipelineSpec spec = Checked(dir);
    nlohmann::json out = nlohmann::json::array();
    for (const SqlModel* m : OrderSqlModels(spec.sql_models)) {
      if (json) {
        out.push_back({{"name", m->name}, {"kind", m->kind}, {"file", m->file}, {"upstream", m->Upstream()},
                       {"unique_key", m->unique_key}, {"time_column", m->time_column}, {"description", m->description}});
      } else {
        std::cout << m->name << "  " << m->kind << "  " << m->file << "\n    reads: " << Join(m->Upstream()) << "\n";
      }
    }
    if (json) std::cout << out.dump() << "\n";
    return 0;
  } catch (const InputError& e) {
    std::cerr << e.what() << "\n";
    return 2;
  }
}

int PrintLineage(const std::string& dir, const std::string& table, bool json) {
  try {
    const loader::Lineage l = loader::LineageOf(Checked(dir), table);
    if (json)
      std::cout << nlohmann::json{{"table", table}, {"upstream", l.upstream}, {"downstream", l.downstream}}.dump() << "\n";
    else
      std::cout << table << "\n  upstream:   " << Join(l.upstream) << "\n  downstream: " << Join(l.downstream) << "\n";
    return 0;
  } catch (const InputError& e) {
    std::cerr << e.what() << "\n";
    return 2;
  }
}

int ListEndpoints(const std::string& dir, bool json) {
  try {
    const PipelineSpec spec = Checked(dir);
    nlohmann::ordered_json out = nlohmann::ordered_json::array();
    for (const ApiEndpoint& e : spec.endpoints) {
      nlohmann::ordered_json params = nlohmann::ordered_json::array();
      std::string line;
      for (const auto& p : e.params) {
        nlohmann::ordered_json j = {{"name", p.name}, {"type", p.type}, {"required", p.required}};
        if (p.default_value) j["default"] = *p.default_value;
        if (p.min) j["min"] = *p.min;
        if (p.max) j["max"] = *p.max;
        if (!p.allowed.empty()) j["enum"] = p.allowed;
        params.push_back(j);
        line += (line.empty() ? "" : " ") + p.name + ":" + p.type + (p.required ? "!" : "") +
                (p.default_value ? "=" + *p.default_value : "");
      }
      if (e.paged) line += std::string(line.empty() ? "" : " ") + "limit:integer=" + std::to_string(e.default_limit) + " page_token:text";
      if (json) {
        out.push_back({{"name", e.name}, {"path", e.path}, {"params", params}, {"paged", e.paged}, {"roles", e.roles},
                       {"cache", e.cache}, {"staleness_ms", e.cache == "realtime" ? e.staleness_ms : 0},
                       {"reads", e.reads}, {"description", e.description}});
      } else {
        std::cout << e.name << "  GET " << e.path << "  cache=" << e.cache
                  << (e.cache == "realtime" ? "(" + std::to_string(e.staleness_ms) + "ms)" : "")
                  << "  roles=" << (e.roles.empty() ? "any" : Join(e.roles)) << "\n    params: " << (line.empty() ? "none" : line)
                  << "\n    reads: " << Join(e.reads) << "\n";
      }
    }
    if (json) std::cout << out.dump() << "\n";
    return 0;
  } catch (const InputError& e) {
    std::cerr << e.what() << "\n";
    return 2;
  }
}

}  // namespace strata::ctl

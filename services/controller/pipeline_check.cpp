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
                                  {"sql_models", spec.sql_models.size()}, {"checks", spec.checks.size()}}
                       .dump()
                << "\n";
    } else {
      std::cout << dir << ": pipeline " << spec.name << " is valid: " << spec.datasets.size() << " datasets, "
                << spec.dimensions.size() << " dimensions, " << spec.facts.size() << " facts, " << spec.sql_models.size()
                << " SQL models, " << spec.checks.size() << " checks\n";
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

}  // namespace strata::ctl

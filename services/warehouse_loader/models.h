// The warehouse's tables and the SQL that builds them from staging. Each model is idempotent
// per logical date: it recomputes the affected keys from the whole staging history and merges
// by natural key, so re-running any date leaves every table byte-for-byte the same and surrogate
// keys never change once assigned.
#pragma once
#include <string>
#include <vector>

#include "common/spec.h"

namespace pqxx {
class transaction_base;
}

namespace strata::loader {

// Schemas, ops/dwh/marts tables, the date dimension and the unknown members.
std::string WarehouseDdl();
// staging.<dataset> with ds, run_id and the dataset's typed columns.
std::string StagingDdl(const DatasetSpec& dataset);

struct Model {
  std::string name;
  std::vector<std::string> statements;  // run in order in one transaction; $1 is ds
};

// Built-in models, in dependency order. Throws InputError for a name it does not know.
const std::vector<Model>& AllModels();
std::vector<const Model*> ResolveModels(const std::vector<std::string>& names);

// Runs one model's statements for `ds` (validated YYYY-MM-DD) inside the caller's transaction.
void RunModel(pqxx::transaction_base& tx, const Model& model, const std::string& ds);

}  // namespace strata::loader

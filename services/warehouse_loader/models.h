// The warehouse's tables and the SQL that builds them from staging. Each model is idempotent
// per logical date: it recomputes the affected keys from the whole staging history and merges
// by natural key, so re-running any date leaves every table byte-for-byte the same and surrogate
// keys never change once assigned.
#pragma once
#include <set>
#include <string>
#include <vector>

#include "common/spec.h"

namespace pqxx {
class transaction_base;
}

namespace strata::loader {

// Schemas, the declared dimensions, ops/dwh/marts tables and the date dimension.
std::string WarehouseDdl(const PipelineSpec& spec);
// staging.<dataset> with ds, run_id and the dataset's typed columns, indexed by ds and (for a
// dataset a dimension or fact reads) by its key.
std::string StagingDdl(const PipelineSpec& spec, const DatasetSpec& dataset);

struct Model {
  std::string name;
  std::vector<std::string> statements;  // run in order in one transaction; $1 is ds
  std::vector<std::string> tables;      // what a built-in model builds (schema.table)
  std::vector<std::string> reads;       // what a built-in model's statements read, for lineage
  std::string ddl;                      // a built-in model's tables, created only when the spec lists it
};

// Built-in models (facts, marts), in dependency order.
const std::vector<Model>& AllModels();
// The spec's `models`, in its order: declared dimensions and built-in models. Throws
// InputError for a name that is neither, or a built-in whose dimensions are not declared.
std::vector<Model> ResolveModels(const PipelineSpec& spec);

// The tables the built-in models named in the spec's `models` build: what SQL models may read
// besides the spec's own tables.
std::set<std::string> BuiltInTables(const PipelineSpec& spec);

// Runs one model's statements for `ds` (validated YYYY-MM-DD) inside the caller's transaction.
void RunModel(pqxx::transaction_base& tx, const Model& model, const std::string& ds);

}  // namespace strata::loader

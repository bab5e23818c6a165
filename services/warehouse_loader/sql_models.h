// Building a pipeline's SQL models (common/sql_model.h) in the warehouse.
//
// What each kind does when the model task runs for a day `ds`, inside the model build's one
// transaction (so readers of serving never see a half-built day):
// - full: every row is replaced by what the SELECT returns now.
// - incremental_by_ds: for each day of its slice, the rows whose time column is that day are
//   replaced by the SELECT run with {ds} = that day ({start}, {end} = [day, day + 1)). The slice
//   is the run's day plus every day an upstream fact or incremental_by_ds model changed in this
//   build (a late line moves an earlier day's totals), so cost follows the days that changed and
//   every other day stays byte-identical. A row for another day is an error naming the model.
// - incremental_by_key: the SELECT's rows are merged on unique_key (updated only where they
//   differ); a boolean column `_deleted` in the SELECT deletes the rows it marks instead.
// - view: (re)created at start-up; nothing at run time.
//
// Tables are created at start-up from the SELECT's own column types (cast in the SELECT to fix a
// type), with unique_key as the primary key and the declared indexes. A table whose columns no
// longer match its SELECT is refused at start-up, naming the file: the change needs a migration.
#pragma once
#include <set>
#include <string>

#include "common/spec.h"

#include <pqxx/connection>  // pqxx::connection is an alias, which cannot be forward-declared

namespace pqxx {
class transaction_base;
}  // namespace pqxx

namespace strata::loader {

// Every table a model reads must exist in the pipeline: a dataset's staging table, a captured
// dataset's raw change log or current table, a declared dimension or fact, dwh.dim_date, another
// model, or one of `built_in_tables`. Throws InputError "FILE:LINE: ..." naming the table.
void CheckSqlModelReads(const PipelineSpec& spec, const std::set<std::string>& built_in_tables);

// Creates missing model tables and views and checks existing ones (see above), under the DDL
// lock. Throws InputError naming the file for a SELECT PostgreSQL cannot plan, a missing time
// column or unique key column, or a table whose columns differ.
void EnsureSqlModelTables(pqxx::connection& conn, const PipelineSpec& spec);

// Builds every SQL model for `ds` (validated YYYY-MM-DD) in dependency order, in the caller's
// transaction, after the declared dimensions, facts and built-in models.
void RunSqlModels(pqxx::transaction_base& tx, const PipelineSpec& spec, const std::string& ds);

// Plans every endpoint's statement (PREPARE, never run) against the warehouse the loader just
// set up: a misspelt column or bad SQL stops the loader at start-up, naming the file, line and
// endpoint, instead of failing every call. Throws InputError.
void CheckEndpointStatements(pqxx::connection& conn, const PipelineSpec& spec);

}  // namespace strata::loader

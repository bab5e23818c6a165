#include "services/warehouse_loader/sql_models.h"

#include <spdlog/spdlog.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <map>
#include <pqxx/pqxx>

#include "common/errors.h"
#include "common/pg.h"
#include "common/time_util.h"

namespace strata::loader {
namespace {

using Columns = std::vector<std::pair<std::string, std::string>>;  // (name, type), in table order

std::string Table(const std::string& qualified) {
  const auto dot = qualified.find('.');
  return qualified.substr(0, dot) + "." + QuoteIdent(qualified.substr(dot + 1));
}

std::string At(const SqlModel& m, int line_in_sql = 1) { return m.file + ":" + std::to_string(m.sql_line + line_in_sql - 1) + ": "; }

// The line (of the SELECT) where `table` is first named.
int LineOf(const SqlModel& m, const std::string& table) {
  std::string lower = m.sql;
  for (auto& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  const size_t p = lower.find(table);
  return p == std::string::npos ? 1 : 1 + static_cast<int>(std::count(lower.begin(), lower.begin() + static_cast<long>(p), '\n'));
}

Columns ColumnsOf(pqxx::transaction_base& tx, const std::string& regclass) {
  Columns out;
  for (const auto& r : tx.exec_params(
           "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
           "WHERE a.attrelid = $1::regclass AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
           regclass))
    out.emplace_back(r[0].c_str(), r[1].c_str());
  return out;
}

std::string Names(const Columns& cols) {
  std::string out;
  for (const auto& [n, t] : cols) out += (out.empty() ? "" : ", ") + n + " " + t;
  return out;
}

bool Has(const Columns& cols, const std::string& name) {
  return std::any_of(cols.begin(), cols.end(), [&](const auto& c) { return c.first == name; });
}

std::string List(const std::vector<std::string>& cols, const std::string& prefix = "") {
  std::string out;
  for (const auto& c : cols) out += (out.empty() ? "" : ", ") + prefix + QuoteIdent(c);
  return out;
}

std::string Plain(const std::vector<std::string>& cols) {
  std::string out;
  for (const auto& c : cols) out += (out.empty() ? "" : ", ") + c;
  return out;
}

// First line of a PostgreSQL message (the rest repeats the query).
std::string Brief(const std::exception& e) {
  std::string w = e.what();
  const auto nl = w.find('\n');
  return nl == std::string::npos ? w : w.substr(0, nl);
}

// The columns and types the SELECT returns, from PostgreSQL's own plan of it.
Columns Shape(pqxx::work& tx, const SqlModel& m) {
  try {
    pqxx::subtransaction sub(tx, "shape");
    sub.exec("CREATE TEMP TABLE strata_model_shape ON COMMIT DROP AS SELECT * FROM (\n" + WithoutParameters(m) +
             "\n) q WITH NO DATA");
    Columns cols = ColumnsOf(sub, "pg_temp.strata_model_shape");
    sub.exec("DROP TABLE strata_model_shape");
    sub.commit();
    return cols;
  } catch (const pqxx::sql_error& e) {
    throw InputError(At(m) + "PostgreSQL cannot plan the SELECT of " + m.name + ": " + Brief(e));
  }
}

pqxx::result Exec(pqxx::transaction_base& tx, const std::string& sql, const std::vector<std::string>& params) {
  return tx.exec_params(sql, pqxx::prepare::make_dynamic_params(params));
}

std::vector<std::string> Values(const BoundSql& b, const std::string& day) {
  std::vector<std::string> out;
  for (const auto& n : b.names) out.push_back(n == "end" ? AddDays(day, 1) : day);  // ds and start are the day
  return out;
}

}  // namespace

void CheckSqlModelReads(const PipelineSpec& spec, const std::set<std::string>& built_in_tables) {
  std::set<std::string> known = built_in_tables;
  known.insert("dwh.dim_date");
  for (const auto& d : spec.datasets) known.insert("staging." + d.name);
  for (const auto& d : spec.cdc.datasets) {
    known.insert("raw." + d + "_changes");
    known.insert("raw." + d + "_current");
  }
  for (const auto& d : spec.dimensions) known.insert("dwh." + d.name);
  for (const auto& f : spec.facts) known.insert("dwh." + f.name);
  for (const auto& m : spec.sql_models) known.insert(m.name);
  for (const auto& m : spec.sql_models) {
    for (const auto& t : m.reads)
      if (!known.count(t))
        throw InputError(At(m, LineOf(m, t)) + "reads " + t +
                         ", which this pipeline does not build (a dataset's staging table, a declared dimension or "
                         "fact, dwh.dim_date, a captured dataset's raw tables or another model)");
    for (const auto& t : m.depends_on)
      if (!known.count(t)) throw InputError(m.file + ":1: depends_on names " + t + ", which this pipeline does not build");
  }
}

void EnsureSqlModelTables(pqxx::connection& conn, const PipelineSpec& spec) {
  if (spec.sql_models.empty()) return;
  pqxx::work tx(conn);
  tx.exec("SELECT pg_advisory_xact_lock(7400001)");  // the DDL lock (common/pg.h RunDdl)
  for (const SqlModel* m : OrderSqlModels(spec.sql_models)) {
    const std::string target = Table(m->name);
    if (m->kind == "view") {
      try {
        pqxx::subtransaction sub(tx, "view");
        sub.exec("CREATE OR REPLACE VIEW " + target + " AS\n" + m->sql);
        sub.commit();
      } catch (const pqxx::sql_error& e) {
        throw InputError(At(*m) + "PostgreSQL refused view " + m->name + ": " + Brief(e));
      }
      continue;
    }
    Columns shape = Shape(tx, *m);
    const auto deleted = std::find_if(shape.begin(), shape.end(), [](const auto& c) { return c.first == "_deleted"; });
    if (deleted != shape.end()) {
      if (m->kind != "incremental_by_key")
        throw InputError(At(*m) + "_deleted marks rows to delete in an incremental_by_key model; " + m->name + " is " + m->kind);
      if (deleted->second != "boolean") throw InputError(At(*m) + "_deleted must be a boolean, not " + deleted->second);
      shape.erase(deleted);
    }
    std::string names;
    for (const auto& [n, t] : shape) names += (names.empty() ? "" : ", ") + n;
    if (m->kind == "incremental_by_ds") {
      const auto tc = std::find_if(shape.begin(), shape.end(), [&](const auto& c) { return c.first == m->time_column; });
      if (tc == shape.end())
        throw InputError(At(*m) + "time_column '" + m->time_column + "' is not a column of the SELECT (its columns: " + names + ")");
      if (tc->second != "date")
        throw InputError(At(*m) + "time_column '" + m->time_column + "' is " + tc->second +
                         "; an incremental_by_ds model's day column is a date (cast it: ...::date AS " + m->time_column + ")");
    }
    // Publish records a mart's changed days from its `ds` column (ops.mart_day_changes).
    const auto ds = std::find_if(shape.begin(), shape.end(), [](const auto& c) { return c.first == "ds"; });
    if (m->name.rfind("marts.", 0) == 0 && ds != shape.end() && ds->second != "date")
      throw InputError(At(*m) + "column ds of a mart is the day it is published by; it is " + ds->second +
                       " here (cast it: ...::date AS ds, or name the column otherwise)");
    for (const auto& k : m->unique_key)
      if (!Has(shape, k)) throw InputError(At(*m) + "unique_key column '" + k + "' is not a column of the SELECT (its columns: " + names + ")");
    for (const auto& ix : m->indexes)
      for (const auto& c : ix)
        if (!Has(shape, c)) throw InputError(At(*m) + "index column '" + c + "' is not a column of the SELECT (its columns: " + names + ")");

    const auto kind = tx.exec_params("SELECT c.relkind::text FROM pg_class c WHERE c.oid = to_regclass($1)", target);
    if (!kind.empty()) {
      if (std::string(kind[0][0].c_str()) != "r")
        throw InputError(At(*m) + m->name + " exists and is not a table (a view?); drop it to let the model build it");
      const Columns have = ColumnsOf(tx, target);
      if (have != shape)
        throw InputError(At(*m) + "the SELECT returns (" + Names(shape) + ") but " + m->name + " has (" + Names(have) +
                         "): the table must be changed to match (a migration), or the SELECT to match the table");
      std::vector<std::string> key;
      for (const auto& r : tx.exec_params(
               "SELECT a.attname::text FROM pg_index x JOIN pg_attribute a ON a.attrelid = x.indrelid "
               "AND a.attnum = ANY (x.indkey::int2[]) WHERE x.indrelid = $1::regclass AND x.indisprimary "
               "ORDER BY array_position(x.indkey::int2[], a.attnum)",
               target))
        key.emplace_back(r[0].c_str());
      if (key != m->unique_key)
        throw InputError(At(*m) + "unique_key [" + Plain(m->unique_key) + "] but " + m->name + "'s primary key is [" +
                         Plain(key) + "]: the table must be changed to match (a migration)");
    } else {
      std::string ddl = "CREATE TABLE " + target + " (";
      for (const auto& [n, t] : shape) ddl += QuoteIdent(n) + " " + t + ", ";
      ddl += m->unique_key.empty() ? "" : "PRIMARY KEY (" + List(m->unique_key) + "), ";
      ddl.resize(ddl.size() - 2);
      tx.exec(ddl + ")");
      spdlog::info("created table {} for model {} ({})", m->name, m->file, names);
    }
    // Declared indexes, also ones added to the declaration of an existing table.
    const std::string table = m->name.substr(m->name.find('.') + 1);
    std::vector<std::vector<std::string>> indexes = m->indexes;
    if (m->kind == "incremental_by_ds" && (m->unique_key.empty() || m->unique_key[0] != m->time_column))
      indexes.insert(indexes.begin(), {m->time_column});
    for (const auto& ix : indexes) {
      std::string name = table;
      for (const auto& c : ix) name += "_" + c;
      tx.exec("CREATE INDEX IF NOT EXISTS " + QuoteIdent(name.substr(0, 63)) + " ON " + target + " (" + List(ix) + ")");
    }
  }
  // A published mart is read from its serving copy, which exists (empty) before the first publish.
  for (const auto& m : spec.sql_models)
    if (m.Published()) {
      const std::string table = QuoteIdent(m.name.substr(6));
      tx.exec("CREATE TABLE IF NOT EXISTS serving." + table + " (LIKE marts." + table + " INCLUDING ALL)");
    }
  tx.commit();
}

void CheckEndpointStatements(pqxx::connection& conn, const PipelineSpec& spec) {
  if (spec.endpoints.empty()) return;
  pqxx::read_transaction tx(conn);
  for (const ApiEndpoint& e : spec.endpoints) {
    try {
      pqxx::subtransaction sub(tx, "endpoint");
      sub.exec("PREPARE strata_endpoint_check AS " + e.bound_sql);  // planned, not run
      sub.exec("DEALLOCATE strata_endpoint_check");
      sub.commit();
    } catch (const pqxx::sql_error& ex) {
      throw InputError(e.file + ":" + std::to_string(e.line) + ": endpoints (" + e.name +
                       "): PostgreSQL cannot plan its SQL: " + Brief(ex));
    }
  }
}

void RunSqlModels(pqxx::transaction_base& tx, const PipelineSpec& spec, const std::string& ds) {
  if (spec.sql_models.empty()) return;
  // The days each table's build changed in this transaction: a declared fact leaves its touched
  // dates in tmp_<fact>_dates (services/warehouse_loader/facts.h).
  std::map<std::string, std::set<std::string>> changed;
  for (const auto& f : spec.facts) {
    const std::string tmp = "tmp_" + f.name + "_dates";
    if (!tx.exec_params("SELECT to_regclass($1) IS NOT NULL", tmp)[0][0].as<bool>()) continue;
    for (const auto& r : tx.exec("SELECT d.date::text FROM dwh.dim_date d JOIN " + QuoteIdent(tmp) + " t USING (date_key)"))
      changed["dwh." + f.name].insert(r[0].c_str());
  }
  for (const SqlModel* m : OrderSqlModels(spec.sql_models)) {
    if (m->kind == "view") continue;
    const auto start = std::chrono::steady_clock::now();
    const std::string target = Table(m->name);
    std::vector<std::string> cols;
    for (const auto& [n, t] : ColumnsOf(tx, target)) cols.push_back(n);
    const std::string col_list = List(cols), q_cols = List(cols, "q.");
    size_t days_built = 1;
    if (m->kind == "full") {
      const BoundSql b = BindParameters(*m);
      tx.exec("DELETE FROM " + target);
      Exec(tx, "INSERT INTO " + target + " (" + col_list + ")\nSELECT " + q_cols + " FROM (\n" + b.sql + "\n) q", Values(b, ds));
    } else if (m->kind == "incremental_by_ds") {
      std::set<std::string> days{ds};
      for (const auto& up : m->Upstream()) {
        auto it = changed.find(up);
        if (it != changed.end()) days.insert(it->second.begin(), it->second.end());
      }
      // A day's rows may feed the next days' (a day-over-day change): those are rebuilt too.
      std::set<std::string> later;
      for (const auto& d : days)
        for (int k = 1; k <= m->lookahead_days; ++k) later.insert(AddDays(d, k));
      days.insert(later.begin(), later.end());
      // $1 is the day being built; the model's own parameters follow.
      const BoundSql b = BindParameters(*m, 2);
      const std::string tc = QuoteIdent(m->time_column);
      const std::string message = "model " + m->name + " (" + m->file + ") returned a row for " + m->time_column + " = ";
      const std::string insert =
          "INSERT INTO " + target + " (" + col_list + ")\nSELECT " + q_cols + " FROM (\n" + b.sql + "\n) q\nWHERE CASE WHEN q." + tc +
          " = $1::date THEN true ELSE ops.strata_model_error($" + std::to_string(2 + b.names.size()) + "::text || coalesce(q." + tc +
          "::text, 'NULL') || ' while building ' || $1::text || ': an incremental_by_ds model returns only the day it builds') END";
      for (const auto& day : days) {
        tx.exec_params("DELETE FROM " + target + " WHERE " + tc + " = $1::date", day);
        std::vector<std::string> params{day};
        for (const auto& v : Values(b, day)) params.push_back(v);
        params.push_back(message);
        Exec(tx, insert, params);
      }
      changed[m->name] = days;
      days_built = days.size();
    } else {  // incremental_by_key
      const BoundSql b = BindParameters(*m);
      const auto probe = Exec(tx, "SELECT * FROM (\n" + b.sql + "\n) q LIMIT 0", Values(b, ds));
      bool deletes = false;
      for (pqxx::row::size_type i = 0; i < probe.columns(); ++i) deletes = deletes || std::string(probe.column_name(i)) == "_deleted";
      std::vector<std::string> rest;
      for (const auto& c : cols)
        if (std::find(m->unique_key.begin(), m->unique_key.end(), c) == m->unique_key.end()) rest.push_back(c);
      std::string match;
      for (const auto& k : m->unique_key) match += std::string(match.empty() ? "" : " AND ") + "t." + QuoteIdent(k) + " = q." + QuoteIdent(k);
      std::string set, old_row, new_row;
      for (const auto& c : rest) {
        set += (set.empty() ? "" : ", ") + QuoteIdent(c) + " = EXCLUDED." + QuoteIdent(c);
        old_row += (old_row.empty() ? "" : ", ") + std::string("t.") + QuoteIdent(c);
        new_row += (new_row.empty() ? "" : ", ") + std::string("EXCLUDED.") + QuoteIdent(c);
      }
      std::string sql = "WITH q AS MATERIALIZED (\n" + b.sql + "\n)";
      if (deletes) sql += ", gone AS (DELETE FROM " + target + " t USING q WHERE q._deleted AND " + match + ")";
      sql += "\nINSERT INTO " + target + " AS t (" + col_list + ")\nSELECT " + q_cols + " FROM q" + (deletes ? " WHERE NOT q._deleted" : "") +
             "\nON CONFLICT (" + List(m->unique_key) + ") DO " +
             (rest.empty() ? "NOTHING" : "UPDATE SET " + set + " WHERE (" + old_row + ") IS DISTINCT FROM (" + new_row + ")");
      Exec(tx, sql, Values(b, ds));
    }
    spdlog::info("built model={} kind={} ds={} days={} seconds={:.3f}", m->name, m->kind, ds, days_built,
                 std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
}

}  // namespace strata::loader

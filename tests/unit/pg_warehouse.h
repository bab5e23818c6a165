// A scratch warehouse for the *_pgtest suites: a database dropped and created afresh on the test
// stack's PostgreSQL (STRATA_PG_ADMIN_DSN), the warehouse DDL of a spec installed in it, a day's
// model build run exactly as the loader runs it, and rows read back as "a|b|NULL" lines.
#pragma once
#include <cstdlib>
#include <functional>
#include <memory>
#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "common/pg.h"
#include "common/spec.h"
#include "services/warehouse_loader/cdc_apply.h"
#include "services/warehouse_loader/models.h"
#include "services/warehouse_loader/sql_models.h"

namespace strata::loader::pgtest {

// Empty when the suite runs without a stack (the tests then skip).
inline std::string AdminDsn() {
  const char* dsn = std::getenv("STRATA_PG_ADMIN_DSN");
  return dsn ? dsn : "";
}

// What `fn` threw (its what()), or "(no error)".
inline std::string ErrorOf(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "(no error)";
}

// Keeps only the SQL models of `spec` named in `names` (a test that builds part of the demo).
inline void KeepSqlModels(PipelineSpec& spec, const std::vector<std::string>& names) {
  std::vector<SqlModel> kept;
  for (const auto& m : spec.sql_models)
    for (const auto& n : names)
      if (m.name == n) kept.push_back(m);
  spec.sql_models = kept;
}

class PgWarehouse {
 public:
  explicit PgWarehouse(const std::string& db) {
    {
      pqxx::connection admin(AdminDsn() + " dbname=postgres");
      pqxx::nontransaction tx(admin);
      tx.exec("DROP DATABASE IF EXISTS " + QuoteIdent(db) + " WITH (FORCE)");
      tx.exec("CREATE DATABASE " + QuoteIdent(db));
    }
    conn_ = std::make_unique<pqxx::connection>(AdminDsn() + " dbname=" + db);
  }

  // What the loader installs at start-up: warehouse, staging and CDC tables.
  void Install(const PipelineSpec& spec) {
    std::string ddl = WarehouseDdl(spec);
    for (const auto& d : spec.datasets) ddl += StagingDdl(spec, d);
    RunDdl(*conn_, ddl + CdcDdl(spec));
    EnsureSqlModelTables(*conn_, spec);
  }

  void Exec(const std::string& sql) {
    pqxx::work tx(*conn_);
    tx.exec("SET LOCAL TIME ZONE 'UTC'");
    tx.exec(sql);
    tx.commit();
  }

  // Every model of `spec` for `ds`, in one transaction, as the loader's BuildModels.
  void Build(const PipelineSpec& spec, const std::string& ds) {
    pqxx::work tx(*conn_);
    tx.exec("SET LOCAL TIME ZONE 'UTC'");
    for (const Model& m : ResolveModels(spec)) RunModel(tx, m, ds);
    RunSqlModels(tx, spec, ds);
    tx.commit();
  }

  pqxx::connection& Conn() { return *conn_; }

  std::vector<std::string> Rows(const std::string& sql) {
    pqxx::work tx(*conn_);
    tx.exec("SET LOCAL TIME ZONE 'UTC'");
    std::vector<std::string> out;
    for (const auto& row : tx.exec(sql)) {
      std::string line;
      for (int i = 0; i < static_cast<int>(row.size()); ++i)
        line += (i ? "|" : "") + std::string(row[i].is_null() ? "NULL" : row[i].c_str());
      out.push_back(std::move(line));
    }
    return out;
  }

  pqxx::connection& conn() { return *conn_; }

 private:
  std::unique_ptr<pqxx::connection> conn_;
};

}  // namespace strata::loader::pgtest

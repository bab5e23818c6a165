#include "services/warehouse_loader/migrations.h"

#include <spdlog/spdlog.h>

#include "common/errors.h"

namespace strata::loader {

int ApplyMigrations(pqxx::connection& conn, const std::string& pipeline, const std::vector<Migration>& migrations) {
  int applied = 0;
  for (const Migration& m : migrations) {
    pqxx::work tx(conn);
    tx.exec("SELECT pg_advisory_xact_lock(7400001)");  // the DDL lock (common/pg.h RunDdl)
    tx.exec("CREATE TABLE IF NOT EXISTS ops.schema_migrations (pipeline text NOT NULL, version integer NOT NULL, "
            "name text NOT NULL, checksum text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now(), "
            "PRIMARY KEY (pipeline, version))");
    const auto done = tx.exec_params("SELECT name, checksum FROM ops.schema_migrations WHERE pipeline = $1 AND version = $2",
                                     pipeline, m.version);
    if (!done.empty()) {
      if (std::string(done[0][1].c_str()) != m.checksum)
        throw InputError(m.file + ": migration " + std::to_string(m.version) + " was applied on " + "this warehouse as '" +
                         done[0][0].c_str() + "' and has changed since (checksum " + done[0][1].c_str() + ", now " +
                         m.checksum + "): write a new migration instead of editing an applied one");
      continue;
    }
    try {
      pqxx::subtransaction sub(tx, "migration");
      sub.exec(m.sql);
      sub.commit();
    } catch (const pqxx::sql_error& e) {
      std::string what = e.what();
      while (!what.empty() && (what.back() == '\n' || what.back() == ' ')) what.pop_back();
      throw InputError(m.file + ": migration " + std::to_string(m.version) + " failed: " + what);
    }
    tx.exec_params("INSERT INTO ops.schema_migrations (pipeline, version, name, checksum) VALUES ($1, $2, $3, $4)",
                   pipeline, m.version, m.name, m.checksum);
    tx.commit();
    ++applied;
    spdlog::info("applied migration {} ({}) of pipeline {}", m.version, m.name, pipeline);
  }
  return applied;
}

}  // namespace strata::loader

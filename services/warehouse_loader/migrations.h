// Applies a pipeline's migrations (common/migration.h) to its warehouse: each one not yet
// recorded in ops.schema_migrations, in version order, in its own transaction under the DDL
// lock (so two loaders starting together apply each once), recorded with its checksum.
#pragma once
#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "common/migration.h"

namespace strata::loader {

// Returns how many were applied now. Throws InputError naming the file when a migration fails
// (PostgreSQL's message included; nothing of it stays) or when one applied before has changed
// since (its checksum differs): a migration is history, a new change is a new file.
int ApplyMigrations(pqxx::connection& conn, const std::string& pipeline, const std::vector<Migration>& migrations);

}  // namespace strata::loader

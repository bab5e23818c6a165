// Migrations: a pipeline folder's `migrations/NNN_what.sql`, the schema changes its warehouse
// needs when a model's table changes shape (a column dropped, added, a key changed), so a
// warehouse built by an older version upgrades in place instead of being refused at start-up.
// The warehouse loader applies each once, in number order, before it checks the models' tables,
// and records it (ops.schema_migrations: version, name, checksum, applied_at); see
// services/warehouse_loader/migrations.h. This header reads and checks the files only (no
// database): tests/unit/migration_test.cpp.
#pragma once
#include <string>
#include <vector>

#include "common/checksum.h"

namespace strata {

struct Migration {
  std::string file;  // for messages
  int version = 0;   // NNN
  std::string name;  // what
  std::string sql;
  std::string checksum;  // of the SQL, to refuse a migration edited after it was applied
};

// Every `NNN_name.sql` of `dir`, by version; none when the folder does not exist. Throws
// InputError naming the file for a name that is not NNN_name.sql (NNN: digits) or a version two
// files share.
std::vector<Migration> LoadMigrations(const std::string& dir);

}  // namespace strata

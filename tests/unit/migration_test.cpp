// Reading a pipeline's migrations/ folder (common/migration.h): order, names, refusals.
#include "common/migration.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "common/errors.h"

namespace strata {
namespace {

namespace fs = std::filesystem;

class MigrationFiles : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::temp_directory_path() / ("strata-migrations-" + std::to_string(::getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  void Write(const std::string& name, const std::string& sql) { std::ofstream(dir_ / name) << sql; }
  std::string ErrorOf() {
    try {
      LoadMigrations(dir_.string());
    } catch (const InputError& e) {
      return e.what();
    }
    return "";
  }
  fs::path dir_;
};

TEST_F(MigrationFiles, ReadInNumberOrderWithAStableChecksum) {
  Write("10_later.sql", "SELECT 10");
  Write("2_first.sql", "SELECT 2");
  const auto ms = LoadMigrations(dir_.string());
  ASSERT_EQ(ms.size(), 2u);
  EXPECT_EQ(ms[0].version, 2);
  EXPECT_EQ(ms[0].name, "first");
  EXPECT_EQ(ms[1].version, 10);
  EXPECT_EQ(ms[0].checksum, Checksum("SELECT 2"));
  EXPECT_EQ(Checksum(""), "cbf29ce484222325");  // FNV-1a's offset basis: the same everywhere
  EXPECT_TRUE(LoadMigrations((dir_ / "absent").string()).empty());
}

TEST_F(MigrationFiles, BadNamesAndSharedNumbersAreRefusedNamingTheFile) {
  Write("add column.sql", "SELECT 1");
  EXPECT_EQ(ErrorOf(), (dir_ / "add column.sql").string() +
                           ": a migration is named NNN_what.sql (NNN: its number, what: lower case, digits, _)");
  fs::remove(dir_ / "add column.sql");
  Write("1_a.sql", "SELECT 1");
  Write("001_b.sql", "SELECT 2");
  const std::string e = ErrorOf();
  EXPECT_NE(e.find(": migration 1 is also "), std::string::npos) << e;
}

}  // namespace
}  // namespace strata

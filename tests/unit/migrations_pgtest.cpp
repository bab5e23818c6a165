// Migrations in a real PostgreSQL (services/warehouse_loader/migrations.h): applied once and
// recorded; an edited or failing one refused naming its file; and the demo's own migration
// bringing a warehouse built by the former built-in models to the SQL models' shape, data kept.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <functional>

#include "common/errors.h"
#include "services/warehouse_loader/migrations.h"
#include "tests/unit/pg_warehouse.h"

namespace strata::loader {
namespace {

using pgtest::AdminDsn;
using pgtest::ErrorOf;

Migration Make(int version, const std::string& name, const std::string& sql) {
  return {"migrations/" + std::to_string(version) + "_" + name + ".sql", version, name, sql, Checksum(sql)};
}

class MigrationsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (AdminDsn().empty()) GTEST_SKIP() << "STRATA_PG_ADMIN_DSN not set";
    wh_ = std::make_unique<pgtest::PgWarehouse>("strata_migrations_pgtest");
    wh_->Exec("CREATE SCHEMA ops; CREATE SCHEMA dwh; CREATE SCHEMA marts; CREATE SCHEMA serving; CREATE SCHEMA staging");
  }
  std::unique_ptr<pgtest::PgWarehouse> wh_;
};

TEST_F(MigrationsTest, EachIsAppliedOnceInOrderAndRecorded) {
  const std::vector<Migration> ms = {Make(1, "t", "CREATE TABLE dwh.t (a int)"),
                                     Make(2, "t_b", "ALTER TABLE dwh.t ADD COLUMN b text")};
  EXPECT_EQ(ApplyMigrations(wh_->Conn(), "p", ms), 2);
  EXPECT_EQ(ApplyMigrations(wh_->Conn(), "p", ms), 0);
  EXPECT_EQ(wh_->Rows("SELECT version, name FROM ops.schema_migrations WHERE pipeline = 'p' ORDER BY 1"),
            (std::vector<std::string>{"1|t", "2|t_b"}));
  EXPECT_EQ(wh_->Rows("SELECT string_agg(column_name, ',' ORDER BY ordinal_position) FROM information_schema.columns "
                      "WHERE table_schema = 'dwh' AND table_name = 't'"),
            std::vector<std::string>{"a,b"});
}

TEST_F(MigrationsTest, AnEditedOrFailingMigrationIsRefusedNamingItsFile) {
  ApplyMigrations(wh_->Conn(), "p", {Make(1, "t", "CREATE TABLE dwh.t (a int)")});
  const Migration edited = Make(1, "t", "CREATE TABLE dwh.t (a bigint)");
  EXPECT_EQ(ErrorOf([&] { ApplyMigrations(wh_->Conn(), "p", {edited}); }),
            "migrations/1_t.sql: migration 1 was applied on this warehouse as 't' and has changed since (checksum " +
                Checksum("CREATE TABLE dwh.t (a int)") + ", now " + edited.checksum +
                "): write a new migration instead of editing an applied one");
  const std::string failed = ErrorOf([&] {
    ApplyMigrations(wh_->Conn(), "p", {Make(1, "t", "CREATE TABLE dwh.t (a int)"),
                                       Make(2, "bad", "ALTER TABLE dwh.t ADD COLUMN b text; ALTER TABLE dwh.nope ADD c int")});
  });
  EXPECT_EQ(failed.substr(0, 75), "migrations/2_bad.sql: migration 2 failed: ERROR:  relation \"dwh.nope\" does ");
  // Nothing of the failed migration stays, and it is not recorded.
  EXPECT_EQ(wh_->Rows("SELECT count(*) FROM information_schema.columns WHERE table_schema = 'dwh' AND table_name = 't'"),
            std::vector<std::string>{"1"});
  EXPECT_EQ(wh_->Rows("SELECT max(version) FROM ops.schema_migrations"), std::vector<std::string>{"1"});
}

TEST_F(MigrationsTest, TheDemosMigrationUpgradesAWarehouseOfTheFormerBuiltInModels) {
  // The tables as the loader's C++ created them before they became SQL models, with rows.
  wh_->Exec(R"(
CREATE TABLE dwh.dim_state (state_key bigserial PRIMARY KEY, abbreviation text NOT NULL UNIQUE, name text NOT NULL,
                            population bigint);
INSERT INTO dwh.dim_state (abbreviation, name, population) VALUES ('CA', 'California', 39000000), ('TX', 'Texas', NULL);
CREATE TABLE dwh.fact_business_daily (business_id text NOT NULL, date_key integer NOT NULL, name text, category text,
  state text, price_level integer, rating numeric(3,1), review_count integer NOT NULL, review_change integer,
  PRIMARY KEY (business_id, date_key));
INSERT INTO dwh.fact_business_daily VALUES ('b1', 20240102, 'Cafe', 'cafe', 'CA', 2, 4.5, 10, 3);
CREATE TABLE marts.business_review_changes (ds date NOT NULL, business_id text NOT NULL, name text,
  review_count integer NOT NULL, review_change integer, PRIMARY KEY (ds, business_id));
CREATE TABLE dwh.fact_review (review_id bigint PRIMARY KEY, business_id text NOT NULL, stars integer NOT NULL, title text,
  updated_at timestamptz NOT NULL, first_ds date NOT NULL, last_ds date NOT NULL);
CREATE INDEX fact_review_business ON dwh.fact_review (business_id);
INSERT INTO dwh.fact_review VALUES (7, 'b1', 4, 'good', '2024-01-02 10:00+00', '2024-01-02', '2024-01-02');
CREATE TABLE marts.business_stars (business_id text PRIMARY KEY, reviews bigint NOT NULL, avg_stars numeric(4,2) NOT NULL);)");
  // The stack runs the demo: its folder is STRATA_PIPELINE_SPEC.
  PipelineSpec spec = LoadPipelineSpec(std::getenv("STRATA_PIPELINE_SPEC"));
  EXPECT_EQ(ApplyMigrations(wh_->Conn(), "demo", spec.migrations), 2);
  // The SQL models accept the tables as they are now (a mismatch would throw), and the rows stayed.
  pgtest::KeepSqlModels(spec, {"dwh.dim_state", "dwh.fact_business_daily", "marts.business_review_changes",
                               "dwh.fact_review", "marts.business_stars"});
  spec.datasets.erase(std::remove_if(spec.datasets.begin(), spec.datasets.end(), [](const DatasetSpec& d) {
                        return d.name != "states" && d.name != "state_population" && d.name != "businesses" &&
                               d.name != "reviews";
                      }),
                      spec.datasets.end());
  for (const auto& d : spec.datasets) wh_->Exec(StagingDdl(spec, d));
  EXPECT_NO_THROW(EnsureSqlModelTables(wh_->Conn(), spec));
  EXPECT_EQ(wh_->Rows("SELECT abbreviation, name, population FROM dwh.dim_state ORDER BY 1"),
            (std::vector<std::string>{"CA|California|39000000", "TX|Texas|NULL"}));
  EXPECT_EQ(wh_->Rows("SELECT business_id, date_key, ds, review_count FROM dwh.fact_business_daily"),
            std::vector<std::string>{"b1|20240102|2024-01-02|10"});
  EXPECT_EQ(wh_->Rows("SELECT indexname FROM pg_indexes WHERE schemaname = 'dwh' AND tablename = 'fact_review' ORDER BY 1"),
            (std::vector<std::string>{"fact_review_business_id", "fact_review_pkey"}));
  EXPECT_EQ(wh_->Rows("SELECT review_id, business_id FROM dwh.fact_review"), std::vector<std::string>{"7|b1"});
  // A new warehouse: the same migration changes nothing (the models create their tables).
  pgtest::PgWarehouse fresh("strata_migrations_pgtest_fresh");
  fresh.Exec("CREATE SCHEMA ops; CREATE SCHEMA dwh");
  EXPECT_EQ(ApplyMigrations(fresh.Conn(), "demo", spec.migrations), 2);
  EXPECT_EQ(fresh.Rows("SELECT count(*) FROM pg_tables WHERE schemaname = 'dwh'"), std::vector<std::string>{"0"});
}

}  // namespace
}  // namespace strata::loader

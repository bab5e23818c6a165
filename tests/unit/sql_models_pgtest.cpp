// SQL models built in a real PostgreSQL (services/warehouse_loader/sql_models.h): each kind's
// rows, the slice of an incremental_by_ds model (the run's day plus the days its upstream fact
// changed), other days left untouched, and the exact refusals at start-up and at run time.
#include <gtest/gtest.h>

#include <functional>

#include "common/errors.h"
#include "tests/unit/pg_warehouse.h"
#include "tests/unit/visits_spec.h"

namespace strata::loader {
namespace {

using pgtest::AdminDsn;
using pgtest::ErrorOf;

const char* kMinutes = R"(/* strata
name: marts.visit_minutes
kind: incremental_by_ds
unique_key: [ds]
*/
SELECT d.date AS ds, count(*) AS visits, sum(f.minutes)::numeric(10,2) AS minutes
FROM dwh.fact_visit f JOIN dwh.dim_date d USING (date_key)
WHERE f.date_key = to_char({ds}, 'YYYYMMDD')::int
GROUP BY d.date)";

const char* kNames = R"(/* strata
name: marts.person_names
kind: incremental_by_key
unique_key: [id]
*/
SELECT DISTINCT ON (id) id, name, name IS NULL AS _deleted
FROM staging.people WHERE ds = {ds}
ORDER BY id, changed_at DESC)";

const char* kTotal = R"(/* strata
name: marts.visit_total
kind: full
*/
SELECT count(*) AS visits, coalesce(sum(minutes), 0)::numeric(12,2) AS minutes FROM dwh.fact_visit)";

const char* kView = R"(/* strata
name: marts.busy_days
kind: view
*/
SELECT ds FROM marts.visit_minutes WHERE visits > 1)";

class SqlModelsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (AdminDsn().empty()) GTEST_SKIP() << "STRATA_PG_ADMIN_DSN not set";
    wh_ = std::make_unique<pgtest::PgWarehouse>("strata_sql_models_pgtest");
    spec_ = ParsePipelineSpec(fixtures::VisitsSpec(), "visits.yaml");
  }

  void Use(const std::vector<std::pair<std::string, std::string>>& files) {
    spec_.sql_models.clear();
    for (const auto& [file, text] : files) spec_.sql_models.push_back(ParseSqlModel(text, file));
    CheckSqlModelReads(spec_, BuiltInTables(spec_));
    wh_->Install(spec_);
  }

  std::string Query(const std::string& sql) {
    std::string out;
    for (const auto& line : wh_->Rows(sql)) out += line + "\n";
    return out;
  }

  std::unique_ptr<pgtest::PgWarehouse> wh_;
  PipelineSpec spec_;
};

TEST_F(SqlModelsTest, EachKindBuildsItsRows) {
  Use({{"visit_minutes.sql", kMinutes}, {"person_names.sql", kNames}, {"visit_total.sql", kTotal}, {"busy_days.sql", kView}});
  wh_->Exec(R"(
INSERT INTO staging.people VALUES ('2024-01-01', 'r1', 1, 'Ann', '2024-01-01 08:00+00'),
                                  ('2024-01-01', 'r1', 2, 'Bob', '2024-01-01 08:00+00');
INSERT INTO staging.visits VALUES
  ('2024-01-01', 'r1', 1, 1, 60, '2024-01-01 10:00+00', '2024-01-01 10:00+00'),
  ('2024-01-01', 'r1', 2, 2, 30, '2024-01-01 11:00+00', '2024-01-01 11:00+00');)");
  wh_->Build(spec_, "2024-01-01");
  EXPECT_EQ(Query("SELECT ds, visits, minutes FROM marts.visit_minutes ORDER BY ds"), "2024-01-01|2|1.50\n");
  EXPECT_EQ(Query("SELECT id, name FROM marts.person_names ORDER BY id"), "1|Ann\n2|Bob\n");
  EXPECT_EQ(Query("SELECT visits, minutes FROM marts.visit_total"), "2|1.50\n");
  EXPECT_EQ(Query("SELECT ds FROM marts.busy_days"), "2024-01-01\n");
  // The tables are typed by the SELECT, keyed by unique_key, indexed on the time column.
  EXPECT_EQ(Query("SELECT a.attname, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a "
                  "WHERE a.attrelid = 'marts.visit_minutes'::regclass AND a.attnum > 0 ORDER BY a.attnum"),
            "ds|date\nvisits|bigint\nminutes|numeric(10,2)\n");
  EXPECT_EQ(Query("SELECT indexdef FROM pg_indexes WHERE schemaname = 'marts' AND tablename = 'person_names'"),
            "CREATE UNIQUE INDEX person_names_pkey ON marts.person_names USING btree (id)\n");
  EXPECT_EQ(Query("SELECT count(*) FROM pg_tables WHERE schemaname = 'serving' AND tablename IN "
                  "('visit_minutes', 'person_names', 'visit_total')"),
            "3\n");  // serving copies exist before the first publish

  // Day 2: Bob renamed, Ann deleted (a NULL name marks the delete here), one more visit.
  wh_->Exec(R"(
INSERT INTO staging.people VALUES ('2024-01-02', 'r2', 1, NULL, '2024-01-02 08:00+00'),
                                  ('2024-01-02', 'r2', 2, 'Robert', '2024-01-02 08:00+00');
INSERT INTO staging.visits VALUES
  ('2024-01-02', 'r2', 3, 2, 90, '2024-01-02 10:00+00', '2024-01-02 10:00+00');)");
  wh_->Build(spec_, "2024-01-02");
  EXPECT_EQ(Query("SELECT ds, visits, minutes FROM marts.visit_minutes ORDER BY ds"), "2024-01-01|2|1.50\n2024-01-02|1|1.50\n");
  EXPECT_EQ(Query("SELECT id, name FROM marts.person_names ORDER BY id"), "2|Robert\n");
  EXPECT_EQ(Query("SELECT visits, minutes FROM marts.visit_total"), "3|3.00\n");
}

TEST_F(SqlModelsTest, AMartMarkedPublishFalseGetsNoServingCopy) {
  Use({{"scratch.sql", "/* strata\nname: marts.scratch\nkind: full\npublish: false\n*/\nSELECT count(*) AS n FROM dwh.fact_visit"}});
  EXPECT_EQ(Query("SELECT schemaname FROM pg_tables WHERE tablename = 'scratch' ORDER BY 1"), "marts\n");
}

TEST_F(SqlModelsTest, TheSliceIsTheRunsDayPlusTheDaysTheFactChangedAndNoOtherDayIsRewritten) {
  Use({{"visit_minutes.sql", kMinutes}});
  for (const char* day : {"2024-01-01", "2024-01-02", "2024-01-03"}) {
    wh_->Exec(std::string("INSERT INTO staging.visits VALUES ('") + day + "', 'r', " + std::to_string(day[9] - '0') +
              ", 1, 60, '" + day + " 10:00+00', '" + day + " 10:00+00')");
    wh_->Build(spec_, day);
  }
  const std::string before = Query("SELECT ds, visits, minutes, xmin FROM marts.visit_minutes ORDER BY ds");
  // Day 4's run stages a late visit of day 1: day 1 and day 4 are rebuilt, days 2 and 3 keep
  // their rows (the same row versions: xmin unchanged).
  wh_->Exec("INSERT INTO staging.visits VALUES ('2024-01-04', 'r', 9, 1, 120, '2024-01-01 23:00+00', '2024-01-04 09:00+00'),"
            " ('2024-01-04', 'r', 4, 1, 60, '2024-01-04 10:00+00', '2024-01-04 10:00+00')");
  wh_->Build(spec_, "2024-01-04");
  EXPECT_EQ(Query("SELECT ds, visits, minutes FROM marts.visit_minutes ORDER BY ds"),
            "2024-01-01|2|3.00\n2024-01-02|1|1.00\n2024-01-03|1|1.00\n2024-01-04|1|1.00\n");
  const std::string after = Query("SELECT ds, visits, minutes, xmin FROM marts.visit_minutes WHERE ds IN ('2024-01-02', "
                                  "'2024-01-03') ORDER BY ds");
  EXPECT_NE(before.find(after), std::string::npos) << before << "\nvs\n" << after;
  // Re-running day 2 rewrites day 2 only.
  const std::string others = Query("SELECT ds, xmin FROM marts.visit_minutes WHERE ds <> '2024-01-02' ORDER BY ds");
  wh_->Build(spec_, "2024-01-02");
  EXPECT_EQ(Query("SELECT ds, xmin FROM marts.visit_minutes WHERE ds <> '2024-01-02' ORDER BY ds"), others);
}

// A day-over-day change: each day's count of visits minus the day before's, from staging.
const char* kDelta = R"(/* strata
name: marts.visit_delta
kind: incremental_by_ds
lookahead_days: 1
unique_key: [ds]
*/
SELECT ds, count(*) AS visits,
       count(*) - (SELECT count(*) FROM staging.visits p WHERE p.ds = {ds} - 1) AS change
FROM staging.visits WHERE ds = {ds}
GROUP BY ds)";

TEST_F(SqlModelsTest, LookaheadRebuildsTheNextDaySoDaysLoadedOutOfOrderConverge) {
  Use({{"visit_delta.sql", kDelta}});
  const auto stage = [&](const std::string& day, int n) {
    for (int i = 0; i < n; ++i)
      wh_->Exec("INSERT INTO staging.visits VALUES ('" + day + "', 'r', " + std::to_string(day[9] * 10 + i) + ", 1, 60, '" +
                day + " 10:00+00', '" + day + " 10:00+00')");
  };
  // Day 2 arrives first: its change is against an empty day 1.
  stage("2024-01-02", 5);
  wh_->Build(spec_, "2024-01-02");
  EXPECT_EQ(Query("SELECT ds, visits, change FROM marts.visit_delta ORDER BY ds"), "2024-01-02|5|5\n");
  const std::string day2_before = Query("SELECT xmin FROM marts.visit_delta WHERE ds = '2024-01-02'");
  // Day 1 arrives late: building it rebuilds day 2 too, whose change is now against day 1.
  stage("2024-01-01", 2);
  wh_->Build(spec_, "2024-01-01");
  EXPECT_EQ(Query("SELECT ds, visits, change FROM marts.visit_delta ORDER BY ds"), "2024-01-01|2|2\n2024-01-02|5|3\n");
  EXPECT_NE(Query("SELECT xmin FROM marts.visit_delta WHERE ds = '2024-01-02'"), day2_before);
  // Day 3 is built with days 3 and 4 (no day 4 yet: nothing for it); days 1 and 2 stay as they are.
  stage("2024-01-03", 1);
  const std::string first_two = Query("SELECT ds, xmin FROM marts.visit_delta ORDER BY ds");
  wh_->Build(spec_, "2024-01-03");
  EXPECT_EQ(Query("SELECT ds, visits, change FROM marts.visit_delta ORDER BY ds"),
            "2024-01-01|2|2\n2024-01-02|5|3\n2024-01-03|1|-4\n");
  EXPECT_EQ(Query("SELECT ds, xmin FROM marts.visit_delta WHERE ds < '2024-01-03' ORDER BY ds"), first_two);
}

TEST_F(SqlModelsTest, RefusalsAtStartUpNameTheFileAndLine) {
  EXPECT_EQ(ErrorOf([&] {
              Use({{"bad.sql", "/* strata\nname: marts.bad\nkind: full\n*/\nSELECT nope FROM dwh.fact_visit"}});
            }),
            "bad.sql:5: PostgreSQL cannot plan the SELECT of marts.bad: ERROR:  column \"nope\" does not exist");
  EXPECT_EQ(ErrorOf([&] {
              Use({{"t.sql", "/* strata\nname: marts.t\nkind: incremental_by_ds\n*/\nSELECT {ds} AS day, 1 AS n"}});
            }),
            "t.sql:5: time_column 'ds' is not a column of the SELECT (its columns: day, n)");
  EXPECT_EQ(ErrorOf([&] {
              Use({{"t.sql", "/* strata\nname: marts.t\nkind: incremental_by_ds\n*/\nSELECT {ds}::timestamptz AS ds"}});
            }),
            "t.sql:5: time_column 'ds' is timestamp with time zone; an incremental_by_ds model's day column is a date "
            "(cast it: ...::date AS ds)");
  EXPECT_EQ(ErrorOf([&] {
              Use({{"u.sql", "/* strata\nname: marts.u\nkind: full\n*/\nSELECT 1 AS a\nFROM marts.nothing"}});
            }),
            "u.sql:6: reads marts.nothing, which this pipeline does not build (a dataset's staging table, a declared "
            "dimension or fact, dwh.dim_date, a captured dataset's raw tables or another model)");
  // A table whose columns no longer match its SELECT.
  Use({{"visit_minutes.sql", kMinutes}});
  const std::string changed = std::string(kMinutes).replace(std::string(kMinutes).find("count(*) AS visits"), 18, "count(*)::int AS visits");
  EXPECT_EQ(ErrorOf([&] { Use({{"visit_minutes.sql", changed}}); }),
            "visit_minutes.sql:6: the SELECT returns (ds date, visits integer, minutes numeric(10,2)) but "
            "marts.visit_minutes has (ds date, visits bigint, minutes numeric(10,2)): the table must be changed to "
            "match (a migration), or the SELECT to match the table");
  // ... or whose primary key differs from unique_key.
  const std::string rekeyed = std::string(kMinutes).replace(std::string(kMinutes).find("unique_key: [ds]"), 16,
                                                            "unique_key: [ds, visits]");
  EXPECT_EQ(ErrorOf([&] { Use({{"visit_minutes.sql", rekeyed}}); }),
            "visit_minutes.sql:6: unique_key [ds, visits] but marts.visit_minutes's primary key is [ds]: the table must "
            "be changed to match (a migration)");
  // A mart's ds column is the day publish copies by: it must be a date.
  EXPECT_EQ(ErrorOf([&] {
              Use({{"d.sql", "/* strata\nname: marts.d\nkind: full\n*/\nSELECT '2024-01-01'::text AS ds, 1 AS n"}});
            }),
            "d.sql:5: column ds of a mart is the day it is published by; it is text here (cast it: ...::date AS ds, or "
            "name the column otherwise)");
}

TEST_F(SqlModelsTest, AnIncrementalByDsRowForAnotherDayFailsTheBuildNamingTheModel) {
  Use({{"shifted.sql", "/* strata\nname: marts.shifted\nkind: incremental_by_ds\n*/\nSELECT ({ds} + 1)::date AS ds, 1 AS n"}});
  EXPECT_EQ(ErrorOf([&] { wh_->Build(spec_, "2024-01-01"); }).substr(0, 150),
            std::string("ERROR:  model marts.shifted (shifted.sql) returned a row for ds = 2024-01-02 while building "
                        "2024-01-01: an incremental_by_ds model returns only the day it builds")
                .substr(0, 150));
  EXPECT_EQ(Query("SELECT count(*) FROM marts.shifted"), "0\n");
}

}  // namespace
}  // namespace strata::loader

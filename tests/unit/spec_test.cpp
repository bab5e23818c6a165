#include <gtest/gtest.h>

#include "common/errors.h"
#include "common/spec.h"

namespace strata {
namespace {

const char* kGood = R"(
pipeline: demo
datasets:
  - name: customers
    source: {type: postgres, table: shop.customers, cursor: updated_at}
    key: [customer_id]
    columns:
      - {name: customer_id, type: int}
      - {name: updated_at, type: timestamp}
  - name: states
    source: {type: html_table, path: /states.html, table_id: states}
    columns:
      - {name: name, type: text, header: Name}
models: [dim_customer]
checks:
  - {kind: unique, table: dwh.dim_customer, columns: [customer_id, valid_from]}
  - {kind: relationships, table: dwh.fact_sales, column: customer_key, to: dwh.dim_customer.customer_key, severity: warn}
  - {kind: reconciliation}
)";

std::string ErrorOf(const std::string& yaml) {
  try {
    ParsePipelineSpec(yaml, "p.yaml");
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(Spec, ParsesDatasetsModelsChecks) {
  const PipelineSpec s = ParsePipelineSpec(kGood, "p.yaml");
  ASSERT_EQ(s.datasets.size(), 2u);
  EXPECT_EQ(s.datasets[0].source.cursor, "updated_at");
  EXPECT_EQ(s.datasets[0].columns[1].type, ColumnType::kTimestamp);
  EXPECT_EQ(s.datasets[1].columns[0].header, "Name");
  ASSERT_EQ(s.checks.size(), 3u);
  EXPECT_EQ(s.checks[0].name, "unique:dwh.dim_customer.customer_id+valid_from");
  EXPECT_EQ(s.checks[1].to_table, "dwh.dim_customer");
  EXPECT_EQ(s.checks[1].to_column, "customer_key");
  EXPECT_EQ(s.checks[1].severity, "warn");
  EXPECT_EQ(s.Find("states"), &s.datasets[1]);
  EXPECT_EQ(s.Find("nope"), nullptr);
}

TEST(Spec, Schedule) {
  const PipelineSpec s = ParsePipelineSpec(std::string(kGood) +
                                               "schedule: {cron: '0 2 * * *', timezone: Europe/Paris, "
                                               "start_date: 2024-01-01, catchup: true, deadline: '06:30'}\n",
                                           "p.yaml");
  EXPECT_TRUE(s.schedule.present);
  EXPECT_EQ(s.schedule.timezone, "Europe/Paris");
  EXPECT_TRUE(s.schedule.catchup);
  EXPECT_EQ(s.schedule.deadline, "06:30");
  EXPECT_EQ(ErrorOf(std::string(kGood) + "schedule: {cron: '0 2 * *', start_date: 2024-01-01}\n"),
            "p.yaml:schedule.cron: cron \"0 2 * *\": expected 5 fields (minute hour day-of-month month "
            "day-of-week), got 4");
  EXPECT_EQ(ErrorOf(std::string(kGood) + "schedule: {cron: '0 2 * * *', start_date: 2024-01-01, deadline: '6am'}\n"),
            "p.yaml:schedule.deadline: expected HH:MM, got '6am'");
}

TEST(Spec, ErrorsNameFileAndPath) {
  std::string bad = kGood;
  bad.replace(bad.find("type: timestamp"), 15, "type: decimal");
  EXPECT_EQ(ErrorOf(bad), "p.yaml:datasets[0].columns[1].type: unknown type 'decimal' (known: int, float, text, "
                          "timestamp, date, bool)");
  bad = kGood;
  bad.replace(bad.find("key: [customer_id]"), 18, "key: [id]");
  EXPECT_EQ(ErrorOf(bad), "p.yaml:datasets[0].key: key column 'id' is not a declared column");
  bad = kGood;
  bad.replace(bad.find("kind: reconciliation"), 20, "kind: vibes");
  EXPECT_NE(ErrorOf(bad).find("p.yaml:checks[2].kind: unknown check kind 'vibes'"), std::string::npos);
  bad = kGood;
  bad.replace(bad.find("type: postgres"), 14, "type: ftp");
  EXPECT_NE(ErrorOf(bad).find("datasets[0].source.type: unknown source type 'ftp'"), std::string::npos);
  EXPECT_NE(ErrorOf("pipeline: x\ndatasets: []\n").find("p.yaml:datasets: expected a non-empty list"),
            std::string::npos);
}

}  // namespace
}  // namespace strata

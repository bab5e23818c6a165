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

TEST(Spec, DimensionsDeclaredWithTheirChecks) {
  const std::string base = R"(
pipeline: p
datasets:
  - name: people
    source: {type: postgres, table: src.people, cursor: changed_at}
    key: [id]
    columns:
      - {name: id, type: int}
      - {name: name, type: text}
      - {name: email, type: text}
      - {name: gone, type: bool}
      - {name: born, type: date}
      - {name: changed_at, type: timestamp}
models: [dim_person]
dimensions:
  - {name: dim_person, from: people, key: id, effective_from: changed_at, deleted: gone, scd2: [name], scd1: [email]}
)";
  const PipelineSpec s = ParsePipelineSpec(base, "p.yaml");
  ASSERT_EQ(s.dimensions.size(), 1u);
  const DimensionSpec& d = *s.FindDimension("dim_person");
  EXPECT_EQ(d.surrogate, "person_key");
  EXPECT_EQ(d.unknown_key, "-1");
  EXPECT_EQ(d.deleted, "gone");
  EXPECT_EQ(d.scd2, std::vector<std::string>{"name"});
  auto with = [&](const std::string& from, const std::string& to) {
    std::string y = base;
    y.replace(y.find(from), from.size(), to);
    return ErrorOf(y);
  };
  EXPECT_EQ(with("effective_from: changed_at", "effective_from: born"),
            "p.yaml:dimensions[0].effective_from: 'born' must be a timestamp column (the source's business time)");
  EXPECT_EQ(with("scd1: [email]", "scd1: [mail]"), "p.yaml:dimensions[0].scd1: 'mail' is not a column of dataset 'people'");
  EXPECT_EQ(with("scd1: [email]", "scd1: [name]"),
            "p.yaml:dimensions[0].scd2: column 'name' is the key, the effective time, or listed twice");
  EXPECT_EQ(with("from: people", "from: persons"), "p.yaml:dimensions[0].from: unknown dataset 'persons'");
  EXPECT_EQ(with("models: [dim_person]", "models: []"),
            "p.yaml:dimensions[0].name: dimension 'dim_person' is declared but not listed in models (which sets the "
            "build order)");
  EXPECT_EQ(with("deleted: gone", "deleted: name"), "p.yaml:dimensions[0].deleted: 'name' must be a bool or timestamp column");
  EXPECT_EQ(with(", scd2: [name], scd1: [email]", ""), "p.yaml:dimensions[0]: expected attribute columns in scd1 and/or scd2");
  EXPECT_EQ(with("key: id,", "key: born,"), "p.yaml:dimensions[0].key: a natural key must be an int or text column");
  EXPECT_EQ(with("scd2: [name]", "scd2: [name], colour: blue"),
            "p.yaml:dimensions[0].colour: unknown key (known: absent_means_deleted, deleted, effective_from, from, key, "
            "name, scd1, scd2, surrogate_key, unknown_key)");
  EXPECT_EQ(with("scd2: [name]", "scd2: [name], absent_means_deleted: true"),
            "p.yaml:dimensions[0].absent_means_deleted: dataset 'people' is not extracted as a full snapshot "
            "(source.incremental: snapshot), so a key missing from a day's rows says nothing about its deletion");
}

TEST(Spec, FactsDeclaredWithTheirChecks) {
  const std::string base = R"(
pipeline: p
datasets:
  - name: lines
    source: {type: postgres, table: src.lines, cursor: changed_at}
    key: [order_id, line_no]
    columns:
      - {name: order_id, type: int}
      - {name: line_no, type: int}
      - {name: product_id, type: int}
      - {name: qty, type: int}
      - {name: changed_at, type: timestamp}
  - name: orders
    source: {type: postgres, table: src.orders, cursor: changed_at}
    key: [order_id]
    columns:
      - {name: order_id, type: int}
      - {name: placed_at, type: timestamp}
      - {name: changed_at, type: timestamp}
  - name: products
    source: {type: postgres, table: src.products, cursor: changed_at}
    key: [product_id]
    columns:
      - {name: product_id, type: int}
      - {name: title, type: text}
      - {name: changed_at, type: timestamp}
dimensions:
  - {name: dim_product, from: products, key: product_id, effective_from: changed_at, scd1: [title]}
facts:
  - name: fact_lines
    from: lines
    grain: [order_id, line_no]
    join: [{dataset: orders, on: [order_id]}]
    event_time: placed_at
    dimensions: [{dimension: dim_product, key: product_id}]
    measures: [{name: units, type: integer, sql: qty}]
models: [dim_product, fact_lines]
)";
  const PipelineSpec s = ParsePipelineSpec(base, "p.yaml");
  ASSERT_NE(s.FindFact("fact_lines"), nullptr);
  EXPECT_EQ(s.facts[0].mode, "merge");
  EXPECT_EQ(s.facts[0].joins[0].on, std::vector<std::string>{"order_id"});
  auto with = [&](const std::string& from, const std::string& to) {
    std::string y = base;
    y.replace(y.find(from), from.size(), to);
    return ErrorOf(y);
  };
  EXPECT_EQ(with("event_time: placed_at", "event_time: qty"), "p.yaml:facts[0].event_time: 'qty' must be a timestamp column");
  EXPECT_EQ(with("event_time: placed_at", "event_time: shipped_at"),
            "p.yaml:facts[0].event_time: 'shipped_at' is not a column of 'lines' or a joined dataset");
  EXPECT_EQ(with("on: [order_id]", "on: [line_no]"),
            "p.yaml:facts[0].join[0].on: 'line_no' must be a column of both 'lines' and 'orders'");
  EXPECT_EQ(with("models: [dim_product, fact_lines]", "models: [fact_lines, dim_product]"),
            "p.yaml:facts[0].dimensions[0].dimension: dimension 'dim_product' must come before 'fact_lines' in models");
  EXPECT_EQ(with("type: integer, sql: qty", "type: money, sql: qty"),
            "p.yaml:facts[0].measures[0].type: unsupported type 'money' (known: bigint, integer, smallint, double "
            "precision, real, text, boolean, date, timestamptz, numeric, numeric(p,s))");
  EXPECT_EQ(with("name: units", "name: product_key"),
            "p.yaml:facts[0].measures[0].name: column 'product_key' already exists in the fact table");
  EXPECT_EQ(with("sql: qty", "sql: 'qty; DROP TABLE x'"), "p.yaml:facts[0].measures[0].sql: one expression, without ';'");
  EXPECT_EQ(with("grain: [order_id, line_no]", "grain: [order_id, line]"),
            "p.yaml:facts[0].grain: 'line' is not a column of dataset 'lines'");
  EXPECT_EQ(with("dimension: dim_product", "dimension: dim_colour"),
            "p.yaml:facts[0].dimensions[0].dimension: unknown dimension 'dim_colour' (declare it under dimensions)");
  EXPECT_EQ(with("event_time: placed_at", "event_time: placed_at\n    mode: upsert"),
            "p.yaml:facts[0].mode: unknown mode 'upsert' (known: merge, replace)");
  EXPECT_EQ(s.facts[0].on_delete, "delete");
  EXPECT_EQ(with("event_time: placed_at", "event_time: placed_at\n    on_delete: drop"),
            "p.yaml:facts[0].on_delete: unknown policy 'drop' (known: delete, flag)");
  EXPECT_EQ(with("event_time: placed_at", "event_time: placed_at\n    deleted: qty"),
            "p.yaml:facts[0].deleted: 'qty' must be a bool or timestamp column (true, or set, when deleted)");
  EXPECT_EQ(with("event_time: placed_at", "event_time: placed_at\n    deleted: gone"),
            "p.yaml:facts[0].deleted: 'gone' is not a column of 'lines' or a joined dataset");
  EXPECT_EQ(with("name: units", "name: is_deleted"),
            "p.yaml:facts[0].measures[0].name: column 'is_deleted' already exists in the fact table");
  // Fact reconciliation: the fact and its measure must exist.
  const std::string checks = "models: [dim_product, fact_lines]\nchecks:\n  - {kind: reconciliation, fact: fact_lines, measure: units}";
  const PipelineSpec r = ParsePipelineSpec(std::string(base).replace(base.find("models: [dim_product, fact_lines]"), 33, checks), "p.yaml");
  EXPECT_EQ(r.checks[0].fact, "fact_lines");
  EXPECT_EQ(r.checks[0].measure, "units");
  EXPECT_EQ(with("models: [dim_product, fact_lines]",
                 "models: [dim_product, fact_lines]\nchecks: [{kind: reconciliation, fact: fact_x}]"),
            "p.yaml:checks[0].fact: unknown fact 'fact_x' (declare it under facts)");
  EXPECT_EQ(with("models: [dim_product, fact_lines]",
                 "models: [dim_product, fact_lines]\nchecks: [{kind: reconciliation, fact: fact_lines, measure: qty}]"),
            "p.yaml:checks[0].measure: 'qty' is not a measure of fact 'fact_lines'");
  EXPECT_EQ(with("models: [dim_product, fact_lines]",
                 "models: [dim_product, fact_lines]\nchecks: [{kind: reconciliation, measure: units}]"),
            "p.yaml:checks[0].measure: a measure needs 'fact'");
  // Deletions are seen where CDC captures the grain's dataset or a header keyed by its join.
  EXPECT_TRUE(FactDeletionSources(s, s.facts[0]).empty());
  const PipelineSpec c = ParsePipelineSpec(base + "cdc: {slot: s, publication: p, datasets: [orders, lines]}\n", "p.yaml");
  const auto del = FactDeletionSources(c, c.facts[0]);
  ASSERT_EQ(del.size(), 2u);
  EXPECT_EQ(del[0].dataset, "lines");
  EXPECT_EQ(del[0].key, (std::vector<std::string>{"order_id", "line_no"}));
  EXPECT_EQ(del[1].dataset, "orders");
  EXPECT_EQ(del[1].key, std::vector<std::string>{"order_id"});
}

}  // namespace
}  // namespace strata

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "services/ingest/coerce.h"

namespace strata::ingest {
namespace {

using nlohmann::json;

TEST(Coerce, AcceptsCanonicalValues) {
  EXPECT_EQ(CoerceJson(json(42), ColumnType::kInt).text, "42");
  EXPECT_EQ(CoerceJson(json("5024279"), ColumnType::kInt).text, "5024279");
  EXPECT_EQ(CoerceJson(json(4.5), ColumnType::kFloat).text, "4.5");
  EXPECT_EQ(CoerceJson(json(3.0), ColumnType::kInt).text, "3");
  EXPECT_EQ(CoerceJson(json(true), ColumnType::kBool).text, "true");
  EXPECT_EQ(CoerceJson(json("2024-02-29"), ColumnType::kDate).text, "2024-02-29");
  EXPECT_EQ(CoerceJson(json("2024-01-02 03:04:05"), ColumnType::kTimestamp).text, "2024-01-02T03:04:05Z");
  EXPECT_EQ(CoerceJson(json("2024-01-02T03:04:05.123+02:00"), ColumnType::kTimestamp).text,
            "2024-01-02T03:04:05.123+02:00");
  EXPECT_TRUE(CoerceJson(json(nullptr), ColumnType::kInt).is_null);
  EXPECT_EQ(CoerceJson(json(7), ColumnType::kText).text, "7");
}

TEST(Coerce, RejectsWithReason) {
  EXPECT_EQ(CoerceJson(json("n/a"), ColumnType::kFloat).why, "expected float, got \"n/a\"");
  EXPECT_EQ(CoerceJson(json(4.5), ColumnType::kInt).why, "expected int, got 4.5");
  EXPECT_EQ(CoerceJson(json("2023-02-29"), ColumnType::kDate).why, "expected date, got \"2023-02-29\"");
  EXPECT_FALSE(CoerceJson(json("12,5"), ColumnType::kFloat).ok);
  EXPECT_FALSE(CoerceJson(json::object(), ColumnType::kText).ok);
  EXPECT_FALSE(CoerceJson(json("yes"), ColumnType::kBool).ok);
  EXPECT_FALSE(CoerceJson(json("2024-01-02T25:00:00"), ColumnType::kTimestamp).ok);
}

}  // namespace
}  // namespace strata::ingest

#include "common/errors.h"
#include "services/ingest/extract_query.h"

namespace strata::ingest {
namespace {

TEST(ExtractQuery, DayWindowIsHalfOpenUtc) {
  const Window w = DayWindow("2024-02-28");
  EXPECT_EQ(w.start, "2024-02-28T00:00:00Z");
  EXPECT_EQ(w.end, "2024-02-29T00:00:00Z");
  EXPECT_EQ(DayWindow("2024-12-31").end, "2025-01-01T00:00:00Z");
  EXPECT_THROW(DayWindow("2024-02-30"), InputError);
}

TEST(ExtractQuery, SelectsTheWindowOrderedByCursorThenKey) {
  DatasetSpec d;
  d.name = "order_items";
  d.source.type = "postgres";
  d.source.table = "shop.order_items";
  d.source.cursor = "updated_at";
  d.key = {"order_id", "line_no"};
  d.columns = {{"order_id", ColumnType::kInt, ""}, {"updated_at", ColumnType::kTimestamp, ""}};
  EXPECT_EQ(IncrementalSelect(d, "2024-01-03"),
            "SELECT \"order_id\"::text, to_char(\"updated_at\" AT TIME ZONE 'UTC', "
            "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM \"shop\".\"order_items\" WHERE \"updated_at\" >= "
            "'2024-01-03T00:00:00Z' AND \"updated_at\" < '2024-01-04T00:00:00Z' ORDER BY \"updated_at\", "
            "\"order_id\", \"line_no\"");
}

TEST(ExtractQuery, ExplicitWindowFromASchedulesTimeZone) {
  DatasetSpec d;
  d.source.table = "shop.orders";
  d.source.cursor = "updated_at";
  d.key = {"order_id"};
  d.columns = {{"order_id", ColumnType::kInt, ""}};
  // ds 2024-01-10 in Europe/Paris is [2024-01-09T23:00Z, 2024-01-10T23:00Z).
  EXPECT_EQ(IncrementalSelect(d, Window{"2024-01-09T23:00:00Z", "2024-01-10T23:00:00Z"}),
            "SELECT \"order_id\"::text FROM \"shop\".\"orders\" WHERE \"updated_at\" >= '2024-01-09T23:00:00Z' AND "
            "\"updated_at\" < '2024-01-10T23:00:00Z' ORDER BY \"updated_at\", \"order_id\"");
  EXPECT_THROW(IncrementalSelect(d, Window{"2024-01-10 00:00", "2024-01-11T00:00:00Z"}), InputError);
  EXPECT_THROW(IncrementalSelect(d, Window{"2024-01-11T00:00:00Z", "2024-01-10T00:00:00Z"}), InputError);
}

TEST(ExtractQuery, HeadersTravelWithTheLinesOfTheirWindow) {
  const PipelineSpec spec = ParsePipelineSpec(R"(
pipeline: p
datasets:
  - name: lines
    source: {type: postgres, table: shop.lines, cursor: updated_at}
    key: [order_id, line_no]
    columns: [{name: order_id, type: int}, {name: line_no, type: int}, {name: updated_at, type: timestamp}]
  - name: orders
    source: {type: postgres, table: shop.orders, cursor: updated_at}
    key: [order_id]
    columns: [{name: order_id, type: int}, {name: placed_at, type: timestamp}, {name: updated_at, type: timestamp}]
facts:
  - {name: fact_lines, from: lines, grain: [order_id, line_no], join: [{dataset: orders, on: [order_id]}],
     event_time: placed_at, measures: [{name: n, type: integer, sql: '1'}]}
models: [fact_lines]
)", "p.yaml");
  EXPECT_TRUE(Referrers(spec, *spec.Find("lines")).empty());
  const auto refs = Referrers(spec, *spec.Find("orders"));
  ASSERT_EQ(refs.size(), 1u);
  EXPECT_EQ(IncrementalSelect(*spec.Find("orders"), DayWindow("2024-01-03"), "", refs),
            "SELECT \"order_id\"::text, to_char(\"placed_at\" AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), "
            "to_char(\"updated_at\" AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') FROM \"shop\".\"orders\" "
            "WHERE (\"updated_at\" >= '2024-01-03T00:00:00Z' AND \"updated_at\" < '2024-01-04T00:00:00Z' OR (\"order_id\") IN "
            "(SELECT \"order_id\" FROM \"shop\".\"lines\" WHERE \"updated_at\" >= '2024-01-03T00:00:00Z' AND "
            "\"updated_at\" < '2024-01-04T00:00:00Z')) ORDER BY \"updated_at\", \"order_id\"");
}

}  // namespace
}  // namespace strata::ingest

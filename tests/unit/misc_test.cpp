#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/errors.h"
#include "common/http_client.h"
#include "common/lsn.h"
#include "common/parquet.h"
#include "common/pg.h"
#include "common/time_util.h"
#include "common/token_bucket.h"
#include "services/quality/checks.h"
#include "services/query/query.h"
#include "services/source_sim/source_sim.h"

namespace strata {
namespace {

TEST(TimeUtil, DatesRoundTripAndValidate) {
  EXPECT_EQ(ParseDate("1970-01-01"), 0);
  EXPECT_EQ(AddDays("2024-02-28", 1), "2024-02-29");
  EXPECT_EQ(AddDays("2023-12-31", 1), "2024-01-01");
  EXPECT_FALSE(IsValidDate("2023-02-29"));
  EXPECT_FALSE(IsValidDate("2024-1-01"));
  EXPECT_THROW(ParseDate("yesterday", "ds"), InputError);
}

TEST(Http, RedactsSecrets) {
  EXPECT_EQ(RedactUrl("https://user:pw@api.example.com/x?api_key=abc&page=2&token=t"),
            "https://***@api.example.com/x?api_key=***&page=2&token=***");
}

TEST(TokenBucket, StartsFullRefillsAtTheRateAndSaysHowLongToWait) {
  TokenBucket b(2, 3);  // 2 per second, bursts of 3
  EXPECT_TRUE(b.TryTake(10.0));
  EXPECT_TRUE(b.TryTake(10.0));
  EXPECT_TRUE(b.TryTake(10.0));
  double wait = 0;
  EXPECT_FALSE(b.TryTake(10.0, &wait));
  EXPECT_DOUBLE_EQ(wait, 0.5);
  EXPECT_TRUE(b.TryTake(10.5));
  EXPECT_FALSE(b.TryTake(10.5));
  EXPECT_TRUE(b.TryTake(20.0));  // refilled, but never past the burst
  EXPECT_TRUE(b.TryTake(20.0));
  EXPECT_TRUE(b.TryTake(20.0));
  EXPECT_FALSE(b.TryTake(20.0));
  // A pause (Retry-After) holds every token until it ends, then the bucket refills from empty.
  b.PauseUntil(30.0);
  EXPECT_FALSE(b.TryTake(29.0, &wait));
  EXPECT_DOUBLE_EQ(wait, 1.0);
  EXPECT_FALSE(b.TryTake(30.0));
  EXPECT_TRUE(b.TryTake(30.5));
  TokenBucket unlimited(0, 1);
  for (int i = 0; i < 100; ++i) EXPECT_TRUE(unlimited.TryTake(1.0));
}

TEST(Lsn, ParsesWhatPostgreSqlWritesAndRefusesTheRest) {
  EXPECT_EQ(ParseLsn("16/B374D848"), 0x16B374D848ULL);
  EXPECT_EQ(FormatLsn(0x16B374D848ULL), "16/B374D848");
  EXPECT_EQ(ParseLsn(FormatLsn(0xFFFFFFFFFFFFFFFFULL)), 0xFFFFFFFFFFFFFFFFULL);
  for (const char* bad : {"", "16", "/1", "1/", "G/1", "1/2/3", "100000000/0", "1 /2"}) {
    try {
      ParseLsn(bad);
      ADD_FAILURE() << "accepted " << bad;
    } catch (const InputError& e) {
      EXPECT_EQ(std::string(e.what()), std::string("LSN \"") + bad + "\": expected X/Y in hex");
    }
  }
}

TEST(QueryCache, KeyEmbedsPublishedVersion) {
  EXPECT_EQ(query::CacheKey(7, "top_customers", "status=open\x1f"), "strata:q:v7:top_customers:status=open\x1f");
  EXPECT_NE(query::CacheKey(7, "M", "p"), query::CacheKey(8, "M", "p"));
}

TEST(Quality, AlertPayloadsSlackAndGeneric) {
  quality::CheckResult r;
  r.name = "unique:dwh.fact_sales.order_id";
  r.kind = "unique";
  r.severity = "error";
  r.status = "fail";
  r.message = "3 failing row(s)";
  r.sample = "[{\"order_id\": 7}]";
  const auto slack = nlohmann::json::parse(
      quality::AlertPayload("slack", quality::Transition::kStartsFailing, "demo", "2024-01-02", "r1", r));
  EXPECT_EQ(slack["text"], ":red_circle: strata check failing: unique:dwh.fact_sales.order_id (error) "
                           "pipeline=demo ds=2024-01-02 \u2014 3 failing row(s)");
  EXPECT_EQ(slack["event"], "check_failing");
  EXPECT_EQ(slack["sample"][0]["order_id"], 7);
  const auto generic = nlohmann::json::parse(
      quality::AlertPayload("generic", quality::Transition::kRecovers, "demo", "2024-01-02", "r2", r));
  EXPECT_FALSE(generic.contains("text"));
  EXPECT_EQ(generic["event"], "check_recovered");
  EXPECT_EQ(generic["run_id"], "r2");
}

TEST(Quality, AlertOncePerTransition) {
  using quality::Transition;
  EXPECT_EQ(quality::AlertTransition("", "fail"), Transition::kStartsFailing);
  EXPECT_EQ(quality::AlertTransition("failing", "fail"), Transition::kNone);  // a re-run does not re-alert
  EXPECT_EQ(quality::AlertTransition("failing", "warn"), Transition::kNone);
  EXPECT_EQ(quality::AlertTransition("failing", "pass"), Transition::kRecovers);
  EXPECT_EQ(quality::AlertTransition("ok", "pass"), Transition::kNone);
  EXPECT_EQ(quality::AlertTransition("", "pass"), Transition::kNone);
  EXPECT_EQ(quality::AlertTransition("ok", "warn"), Transition::kStartsFailing);
}

TEST(Quality, VolumeAnomalyNeedsHistoryAndFlagsOutliers) {
  EXPECT_TRUE(quality::JudgeVolume(1000, {10, 12}, 3).ok);  // too little history to judge
  const auto normal = quality::JudgeVolume(22, {18, 18, 29, 19, 27, 30}, 3);
  EXPECT_TRUE(normal.ok) << normal.message;
  const auto spike = quality::JudgeVolume(200, {18, 18, 29, 19, 27, 30}, 3);
  EXPECT_FALSE(spike.ok);
  EXPECT_NEAR(spike.mean, 23.5, 1e-9);
  const auto drop = quality::JudgeVolume(0, {100, 101, 99, 100}, 3);
  EXPECT_FALSE(drop.ok);
  EXPECT_TRUE(quality::JudgeVolume(101, {100, 100, 100}, 3).ok);  // flat history: one row is noise
}

TEST(Quality, FailingRowsSqlPerKind) {
  auto quote = [](const std::string& v) { return "'" + v + "'"; };
  CheckSpec c;
  c.kind = "range";
  c.table = "dwh.fact_sales";
  c.columns = {"quantity"};
  c.min = "1";
  c.max = "100";
  EXPECT_EQ(*quality::FailingRowsSql(c, "'2024-01-02'", quote),
            "SELECT * FROM \"dwh\".\"fact_sales\" WHERE \"quantity\" < 1 OR \"quantity\" > 100");
  c.kind = "accepted_values";
  c.values = {"open", "shipped"};
  EXPECT_EQ(*quality::FailingRowsSql(c, "'2024-01-02'", quote),
            "SELECT * FROM \"dwh\".\"fact_sales\" WHERE \"quantity\" IS NOT NULL AND \"quantity\"::text NOT IN "
            "('open', 'shipped')");
  c.kind = "custom_sql";
  c.sql = "SELECT * FROM marts.daily_sales WHERE ds = {ds} AND revenue < 0;\n";
  EXPECT_EQ(*quality::FailingRowsSql(c, "'2024-01-02'", quote),
            "SELECT * FROM marts.daily_sales WHERE ds = '2024-01-02' AND revenue < 0");
  c.kind = "freshness";
  EXPECT_FALSE(quality::FailingRowsSql(c, "'2024-01-02'", quote).has_value());
  // A sliced check reads the run's day only: a date key, or a date column.
  c.kind = "not_null";
  c.columns = {"customer_key"};
  c.slice = "date_key";
  EXPECT_EQ(*quality::FailingRowsSql(c, "'2024-01-02'", quote),
            "SELECT * FROM (SELECT * FROM \"dwh\".\"fact_sales\" WHERE \"date_key\" = to_char('2024-01-02'::date, "
            "'YYYYMMDD')::int) sliced WHERE \"customer_key\" IS NULL");
  c.kind = "relationships";
  c.slice = "ordered_at";
  c.to_table = "dwh.dim_customer";
  c.to_column = "customer_key";
  EXPECT_EQ(*quality::FailingRowsSql(c, "'2024-01-02'", quote),
            "SELECT t.* FROM (SELECT * FROM \"dwh\".\"fact_sales\" WHERE \"ordered_at\"::date = '2024-01-02'::date) t "
            "WHERE t.\"customer_key\" IS NOT NULL AND NOT EXISTS (SELECT 1 FROM \"dwh\".\"dim_customer\" p WHERE "
            "p.\"customer_key\" = t.\"customer_key\")");
}

TEST(SourceSim, BusinessPagesAreDeterministicAndPaginated) {
  source_sim::SimOptions opt;
  int status = 0;
  const auto p1 = nlohmann::json::parse(source_sim::BusinessesPage("2024-01-02", 1, opt, &status));
  EXPECT_EQ(status, 200);
  EXPECT_EQ(p1["total_pages"], 4);
  EXPECT_EQ(p1["businesses"].size(), 10u);
  const auto p4 = nlohmann::json::parse(source_sim::BusinessesPage("2024-01-02", 4, opt, &status));
  EXPECT_EQ(p4["businesses"].size(), 5u);
  EXPECT_EQ(source_sim::BusinessesPage("2024-01-02", 1, opt, &status),
            source_sim::BusinessesPage("2024-01-02", 1, opt, &status));
  source_sim::BusinessesPage("bad", 1, opt, &status);
  EXPECT_EQ(status, 400);
}

TEST(SourceSim, MalformedRecordsRotateThroughFaults) {
  source_sim::SimOptions opt;
  opt.malformed_every = 4;
  int status = 0;
  const auto p1 = nlohmann::json::parse(source_sim::BusinessesPage("2024-01-02", 1, opt, &status));
  EXPECT_EQ(p1["businesses"][3]["rating"], "n/a");      // 4th: wrong type
  EXPECT_FALSE(p1["businesses"][7].contains("id"));     // 8th: missing key
  const auto p2 = nlohmann::json::parse(source_sim::BusinessesPage("2024-01-02", 2, opt, &status));
  EXPECT_TRUE(p2["businesses"][1].is_string());         // 12th: broken JSON
}

}  // namespace
}  // namespace strata

namespace strata {
namespace {

TEST(CopyText, FieldsNullsAndEscapes) {
  const std::string line = "1\t\\N\ta\\tb\\\\c\\nd\t\n";
  const auto f = ParseCopyTextLine(line.data(), line.size());
  ASSERT_EQ(f.size(), 4u);
  EXPECT_EQ(f[0], std::optional<std::string>("1"));
  EXPECT_FALSE(f[1].has_value());
  EXPECT_EQ(f[2], std::optional<std::string>("a\tb\\c\nd"));
  EXPECT_EQ(f[3], std::optional<std::string>(""));
}

}  // namespace
}  // namespace strata

namespace strata {
namespace {

TEST(Parquet, BadValueNamesColumnAndRowAndWritesNothing) {
  try {
    EncodeParquet({{"id", ColumnType::kInt}, {"at", ColumnType::kTimestamp}},
                  {{std::string("1"), std::string("2024-01-01T00:00:00Z")}, {std::string("2"), std::string("soon")}},
                  ParquetCodec::kZstd);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(), "parquet: column 'at' row 1: \"soon\" is not a timestamp");
  }
  EXPECT_THROW(EncodeParquet({{"id", ColumnType::kInt}}, {{std::string("1"), std::string("2")}}, ParquetCodec::kSnappy),
               InputError);
  EXPECT_THROW(ParseParquetCodec("lz4", "lake.compression"), InputError);
}

TEST(Parquet, FileIsFramedByMagicAndFooterLength) {
  const std::string f = EncodeParquet({{"x", ColumnType::kText}}, {{std::string("a")}, {std::nullopt}},
                                      ParquetCodec::kUncompressed);
  ASSERT_GT(f.size(), 12u);
  EXPECT_EQ(f.substr(0, 4), "PAR1");
  EXPECT_EQ(f.substr(f.size() - 4), "PAR1");
  const uint32_t footer = static_cast<uint8_t>(f[f.size() - 8]) | static_cast<uint8_t>(f[f.size() - 7]) << 8 |
                          static_cast<uint8_t>(f[f.size() - 6]) << 16 | static_cast<uint32_t>(static_cast<uint8_t>(f[f.size() - 5])) << 24;
  EXPECT_LT(footer, f.size() - 12);
}

}  // namespace
}  // namespace strata

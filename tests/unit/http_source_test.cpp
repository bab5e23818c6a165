#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/errors.h"
#include "common/spec.h"
#include "common/time_util.h"
#include "services/ingest/extract_query.h"
#include "services/ingest/http_source.h"
#include "services/source_sim/source_sim.h"

namespace strata::ingest {
namespace {

using nlohmann::json;

PaginationSpec Style(const std::string& s, int limit = 2) {
  PaginationSpec p;
  p.style = s;
  p.limit = limit;
  return p;
}

TEST(Paginator, PageNumbersStopAtTotalPages) {
  Paginator p(Style("page"), "http://api/x?date=2024-01-01");
  EXPECT_EQ(p.url(), "http://api/x?date=2024-01-01&page=1");
  EXPECT_TRUE(p.Advance(json{{"total_pages", 3}}, {}, 10));
  EXPECT_EQ(p.url(), "http://api/x?date=2024-01-01&page=2");
  EXPECT_EQ(p.position(), "page=2");
  EXPECT_TRUE(p.Advance(json{{"total_pages", 3}}, {}, 10));
  EXPECT_FALSE(p.Advance(json{{"total_pages", 3}}, {}, 10));
  EXPECT_EQ(p.pages(), 3);
}

TEST(Paginator, PageNumbersWithoutTotalStopAtEmptyPage) {
  Paginator p(Style("page"), "http://api/x");
  EXPECT_EQ(p.url(), "http://api/x?page=1");
  EXPECT_TRUE(p.Advance(json::object(), {}, 5));
  EXPECT_FALSE(p.Advance(json::object(), {}, 0));
}

TEST(Paginator, OffsetLimitStopsAtShortPageOrTotal) {
  Paginator p(Style("offset", 50), "http://api/x");
  EXPECT_EQ(p.url(), "http://api/x?limit=50&offset=0");
  EXPECT_TRUE(p.Advance(json{{"total", 120}}, {}, 50));
  EXPECT_EQ(p.url(), "http://api/x?limit=50&offset=50");
  EXPECT_TRUE(p.Advance(json{{"total", 120}}, {}, 50));
  EXPECT_EQ(p.position(), "offset=100");
  EXPECT_FALSE(p.Advance(json{{"total", 120}}, {}, 20));
  Paginator q(Style("offset", 50), "http://api/x");
  EXPECT_FALSE(q.Advance(json{{"total", 50}}, {}, 50)) << "a full last page ends at the total";
}

TEST(Paginator, CursorTokenFollowsBodyAndRefusesLoops) {
  Paginator p(Style("cursor", 100), "http://api/r?updated_since=2024-01-01T00%3A00%3A00Z");
  EXPECT_EQ(p.url(), "http://api/r?updated_since=2024-01-01T00%3A00%3A00Z&limit=100");
  EXPECT_TRUE(p.Advance(json{{"next_cursor", "17:4"}}, {}, 100));
  EXPECT_EQ(p.url(), "http://api/r?updated_since=2024-01-01T00%3A00%3A00Z&limit=100&cursor=17%3A4");
  EXPECT_TRUE(p.Advance(json{{"next_cursor", "18:9"}}, {}, 100));
  EXPECT_THROW(p.Advance(json{{"next_cursor", "17:4"}}, {}, 100), InputError);
  Paginator q(Style("cursor"), "http://api/r");
  EXPECT_FALSE(q.Advance(json{{"next_cursor", nullptr}}, {}, 3));
}

TEST(Paginator, LinkHeaderRelNext) {
  Paginator p(Style("link"), "http://h:1/reviews/by-page?limit=2");
  EXPECT_TRUE(p.Advance(json::object(), {{"link", "</reviews/by-page?page=2&limit=2>; rel=\"next\""}}, 2));
  EXPECT_EQ(p.url(), "http://h:1/reviews/by-page?page=2&limit=2");
  EXPECT_FALSE(p.Advance(json::object(), {}, 2));
}

TEST(LinkNext, ParsesSeveralLinksAndResolvesRelativeTargets) {
  EXPECT_EQ(LinkNext(R"(<https://a/x?p=1>; rel="prev", <https://a/x?p=3>; rel="next")", "https://a/x?p=2"),
            "https://a/x?p=3");
  EXPECT_EQ(LinkNext(R"(<page3.json>; rel=next)", "http://a/api/page2.json"), "http://a/api/page3.json");
  EXPECT_EQ(LinkNext(R"(</v1/x?after=9>; title="more"; rel="next last")", "http://a:8/v1/x"), "http://a:8/v1/x?after=9");
  EXPECT_FALSE(LinkNext(R"(<https://a/x?p=1>; rel="prev")", "https://a/x").has_value());
  EXPECT_FALSE(LinkNext("", "https://a/x").has_value());
}

DatasetSpec Census() {
  return ParsePipelineSpec(R"(
pipeline: t
datasets:
  - name: pop
    source: {type: http_json, path: /census, format: census, pagination: {style: none}}
    key: [name]
    columns:
      - {name: name, type: text, header: NAME}
      - {name: population, type: int, header: POP}
)", "t.yaml").datasets[0];
}

TEST(Census, HeaderRowMapsToColumns) {
  const auto recs = CensusRecords(json::parse(R"([["NAME","POP","state"],["Alabama","5024279","01"],["Alaska","733391","02"]])"),
                                  Census());
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_EQ(recs[0], json({{"name", "Alabama"}, {"population", "5024279"}}));
  EXPECT_EQ(recs[1]["name"], "Alaska");
}

TEST(Census, WrongWidthRowIsReturnedForTheDeadLetterStream) {
  const auto recs = CensusRecords(json::parse(R"([["NAME","POP"],["Alabama"],["Alaska","733391"]])"), Census());
  ASSERT_EQ(recs.size(), 2u);
  EXPECT_TRUE(recs[0].is_string());
  EXPECT_EQ(recs[1]["population"], "733391");
}

TEST(Census, MissingHeaderSaysWhatWasFound) {
  try {
    CensusRecords(json::parse(R"([["NAME","POPULATION"]])"), Census());
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(), "census header row: expected \"POP\" for column 'population', found [\"NAME\", \"POPULATION\"]");
  }
  EXPECT_THROW(CensusRecords(json::parse(R"({"NAME":"x"})"), Census()), InputError);
}

TEST(Census, SimulatorServesEveryState) {
  source_sim::SimOptions opt;
  const auto recs = CensusRecords(json::parse(source_sim::CensusJson(opt)), Census());
  EXPECT_EQ(recs.size(), 51u);
}

TEST(Drift, ReportsNewFieldsOnceAndVanishedColumns) {
  DriftTracker d(Census());
  EXPECT_EQ(d.Observe(json{{"name", "a"}, {"extra", 1}}), std::vector<std::string>{"extra"});
  EXPECT_TRUE(d.Observe(json{{"name", "b"}, {"extra", 2}}).empty());
  EXPECT_EQ(d.Vanished(), std::vector<std::string>{"population"});
  d.Known("later");
  EXPECT_TRUE(d.Observe(json{{"later", 1}, {"population", 3}}).empty());
  EXPECT_TRUE(d.Vanished().empty());
}

TEST(RequestPacer, PacesToTheRate) {
  RequestPacer b(50, 1);
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < 6; ++i) b.Acquire();
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_GE(s, 5 / 50.0 - 0.005) << "six requests at 50/s with a burst of one take at least 100 ms";
}

TEST(RequestPacer, RetryAfterPausesEveryone) {
  RequestPacer b(1000, 10);
  b.PauseUntil(std::chrono::steady_clock::now() + std::chrono::milliseconds(150));
  EXPECT_GE(b.Acquire().count(), 140);
}

TEST(Cursor, TimestampsCompareAsInstantsAndMoveBackByOverlap) {
  EXPECT_EQ(TimestampMicros("1970-01-01T00:00:01Z"), 1000000);
  EXPECT_EQ(TimestampMicros("1970-01-01T01:00:00+01:00"), 0);
  EXPECT_TRUE(CursorLess(ColumnType::kTimestamp, "2024-01-01T10:00:00.5Z", "2024-01-01T10:00:01Z"));
  EXPECT_TRUE(CursorLess(ColumnType::kTimestamp, "2024-01-01T11:00:00+02:00", "2024-01-01T10:00:00Z"));
  EXPECT_FALSE(CursorLess(ColumnType::kInt, "10", "9"));
  EXPECT_EQ(CursorMinus(ColumnType::kTimestamp, "2024-01-01T00:30:00Z", 3600), "2023-12-31T23:30:00.000000Z");
  EXPECT_EQ(CursorMinus(ColumnType::kInt, "100", 5), "95");
  EXPECT_THROW(TimestampMicros("yesterday"), InputError);
}

TEST(WatermarkSelect, CompoundStrictOrOverlapWindow) {
  auto spec = ParsePipelineSpec(R"(
pipeline: t
datasets:
  - name: items
    source: {type: postgres, table: shop.items, cursor: updated_at, incremental: watermark}
    key: [order_id, line_no]
    columns:
      - {name: order_id, type: int}
      - {name: line_no, type: int}
      - {name: updated_at, type: timestamp}
)", "t.yaml");
  DatasetSpec d = spec.datasets[0];
  Watermark w{"2024-01-02T03:04:05.000000Z", {"7", "2"}};
  const std::string strict = WatermarkSelect(d, &w);
  EXPECT_NE(strict.find("WHERE (\"updated_at\", \"order_id\", \"line_no\") > ('2024-01-02T03:04:05.000000Z', '7', '2')"),
            std::string::npos) << strict;
  EXPECT_NE(strict.find("ORDER BY \"updated_at\", \"order_id\", \"line_no\""), std::string::npos);
  d.source.overlap_seconds = 600;
  const std::string overlap = WatermarkSelect(d, &w);
  EXPECT_NE(overlap.find("\"updated_at\" >= '2024-01-02T03:04:05.000000Z'::timestamptz - interval '600 seconds'"),
            std::string::npos) << overlap;
  EXPECT_EQ(WatermarkSelect(d, nullptr).find("WHERE"), std::string::npos);
  w.cursor = "x'; DROP TABLE t; --";
  d.source.overlap_seconds = 0;
  EXPECT_NE(WatermarkSelect(d, &w).find("'x''; DROP TABLE t; --'"), std::string::npos) << "literals are quoted";
  const Watermark back = WatermarkFromJson(WatermarkJson(Watermark{"c", {"1"}}));
  EXPECT_EQ(back.cursor, "c");
  EXPECT_EQ(back.key, std::vector<std::string>{"1"});
}

TEST(SourceSpec, HttpOptionsAreValidatedWithTheirPath) {
  auto fails = [](const std::string& source, const std::string& want) {
    try {
      ParsePipelineSpec("pipeline: t\ndatasets:\n  - name: d\n    key: [id]\n    source: " + source +
                            "\n    columns: [{name: id, type: int}, {name: ts, type: timestamp}]\n",
                        "t.yaml");
      ADD_FAILURE() << "accepted " << source;
    } catch (const InputError& e) {
      EXPECT_EQ(std::string(e.what()), want);
    }
  };
  fails("{type: http_json, path: /x, pagination: {style: pages}}",
        "t.yaml:datasets[0].source.pagination.style: unknown value 'pages' (known: cursor, link, none, offset, page)");
  fails("{type: http_json, path: /x, auth: {type: bearer}}", "t.yaml:datasets[0].source.auth.env: expected a string");
  fails("{type: http_json, path: /x, rate_limit: {rps: 0}}",
        "t.yaml:datasets[0].source.rate_limit.rps: expected a positive number, got '0'");
  fails("{type: http_json, path: /x, since_param: since}",
        "t.yaml:datasets[0].source.since_field: missing (the record field that holds the cursor)");
  fails("{type: http_json, path: /x, since_param: since, since_field: nope}",
        "t.yaml:datasets[0].source.since_field: cursor field 'nope' is not a declared column");
  fails("{type: http_json, path: /x, schema_drift: maybe}",
        "t.yaml:datasets[0].source.schema_drift: unknown value 'maybe' (known: add_column, fail, ignore)");
  fails("{type: http_json, path: /x, overlap_seconds: -5}",
        "t.yaml:datasets[0].source.overlap_seconds: expected an integer >= 0, got '-5'");
}

}  // namespace
}  // namespace strata::ingest

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "common/errors.h"
#include "common/http_client.h"
#include "common/time_util.h"
#include "services/quality/quality.h"
#include "services/query/query.h"
#include "services/source_sim/source_sim.h"
#include "services/warehouse_loader/models.h"

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

TEST(QueryCache, KeyEmbedsPublishedVersion) {
  EXPECT_EQ(query::CacheKey(7, "TopCustomers", "open|3"), "strata:q:v7:TopCustomers:open|3");
  EXPECT_NE(query::CacheKey(7, "M", "p"), query::CacheKey(8, "M", "p"));
}

TEST(Quality, AlertPayloadIsSlackCompatible) {
  quality::CheckResult r;
  r.name = "unique:dwh.fact_sales.order_id";
  r.kind = "unique";
  r.severity = "error";
  r.message = "3 duplicated key values";
  const auto j = nlohmann::json::parse(quality::AlertPayload("demo", "2024-01-02", "r1", {r}));
  EXPECT_EQ(j["text"], "strata: 1 check(s) failed for pipeline demo ds=2024-01-02 run=r1:\n"
                       "- unique:dwh.fact_sales.order_id (error): 3 duplicated key values");
  EXPECT_EQ(j["checks"][0]["check"], "unique:dwh.fact_sales.order_id");
}

TEST(Models, ResolveInOrderAndRejectUnknown) {
  const auto models = loader::ResolveModels({"dim_customer", "fact_sales"});
  ASSERT_EQ(models.size(), 2u);
  EXPECT_EQ(models[1]->name, "fact_sales");
  EXPECT_THROW(loader::ResolveModels({"dim_unicorn"}), InputError);
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

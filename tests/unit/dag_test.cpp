#include <gtest/gtest.h>

#include "services/controller/dag.h"

namespace strata::controller {
namespace {

PipelineSpec TwoDatasets() {
  PipelineSpec s;
  s.name = "demo";
  s.datasets.resize(2);
  s.datasets[0].name = "customers";
  s.datasets[1].name = "orders";
  return s;
}

TEST(Dag, ShapeIsExtractExportLoadThenModelThenCheck) {
  const auto dag = BuildDag(TwoDatasets());
  ASSERT_EQ(dag.size(), 9u);
  EXPECT_EQ(dag[1].name, "export.customers");
  EXPECT_EQ(dag[1].deps, std::vector<std::string>{"extract.customers"});
  EXPECT_EQ(dag[6].name, "model");
  EXPECT_EQ(dag[6].deps, (std::vector<std::string>{"load.customers", "load.orders"}));
  EXPECT_EQ(dag[7].deps, std::vector<std::string>{"model"});
  EXPECT_EQ(dag[8].name, "publish");
  EXPECT_EQ(dag[8].deps, std::vector<std::string>{"check"});
}

TEST(Dag, ReadyTasksWaitForAllDeps) {
  const auto dag = BuildDag(TwoDatasets());
  std::vector<std::string> pending;
  for (const auto& t : dag) pending.push_back(t.name);
  EXPECT_EQ(ReadyTasks(dag, pending, {}), (std::vector<std::string>{"extract.customers", "extract.orders"}));
  const std::vector<std::string> pend2 = {"load.orders", "model", "check"};
  EXPECT_EQ(ReadyTasks(dag, pend2, {"load.customers"}), std::vector<std::string>{});
  EXPECT_EQ(ReadyTasks(dag, pend2, {"export.orders", "load.customers"}), std::vector<std::string>{"load.orders"});
}

TEST(Dag, DownstreamIsTransitive) {
  const auto dag = BuildDag(TwoDatasets());
  EXPECT_EQ(Downstream(dag, "export.orders"), (std::vector<std::string>{"load.orders", "model", "check", "publish"}));
}

TEST(Dag, RunIdsSortByTime) {
  EXPECT_EQ(NewRunId(1700000000000LL, 0xbeef), "r1700000000000-beef");
  EXPECT_LT(NewRunId(999999999999LL, 0xffff), NewRunId(1000000000000LL, 0));
}

}  // namespace
}  // namespace strata::controller

#include "common/cron.h"
#include "common/errors.h"
#include "common/time_util.h"

namespace strata {
namespace {

LocalMinute At(const std::string& ds, int hour, int minute) { return {ParseDate(ds), hour * 60 + minute}; }

TEST(Cron, DailyAtTwo) {
  const CronExpr c = CronExpr::Parse("0 2 * * *");
  EXPECT_TRUE(c.Matches(At("2024-03-10", 2, 0)));
  EXPECT_FALSE(c.Matches(At("2024-03-10", 2, 1)));
  const auto last = c.LatestAtOrBefore(At("2024-03-10", 1, 59));
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(FormatDate(last->day), "2024-03-09");
  EXPECT_EQ(last->minute, 120);
}

TEST(Cron, StepsListsRangesAndWeekdays) {
  const CronExpr c = CronExpr::Parse("*/15 9-17 * * 1-5");  // quarter-hourly, office hours, weekdays
  EXPECT_TRUE(c.Matches(At("2024-03-11", 9, 45)));   // a Monday
  EXPECT_FALSE(c.Matches(At("2024-03-10", 9, 45)));  // a Sunday
  EXPECT_FALSE(c.Matches(At("2024-03-11", 18, 0)));
  const auto last = c.LatestAtOrBefore(At("2024-03-11", 8, 0));  // Monday morning: Friday 17:45
  ASSERT_TRUE(last.has_value());
  EXPECT_EQ(FormatDate(last->day), "2024-03-08");
  EXPECT_EQ(last->minute, 17 * 60 + 45);
  EXPECT_TRUE(CronExpr::Parse("0 0 * * 7").Matches(At("2024-03-10", 0, 0)));  // 7 is Sunday too
  // Both day fields restricted: either matches (the 1st, or any Monday).
  const CronExpr either = CronExpr::Parse("0 0 1 * 1");
  EXPECT_TRUE(either.Matches(At("2024-03-01", 0, 0)));
  EXPECT_TRUE(either.Matches(At("2024-03-11", 0, 0)));
  EXPECT_FALSE(either.Matches(At("2024-03-12", 0, 0)));
}

TEST(Cron, ErrorsNameTheField) {
  auto error = [](const std::string& text) {
    try {
      CronExpr::Parse(text);
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_EQ(error("0 25 * * *"), "cron \"0 25 * * *\": hour 25 is out of range 0-23");
  EXPECT_EQ(error("0 2 * *"), "cron \"0 2 * *\": expected 5 fields (minute hour day-of-month month day-of-week), got 4");
  EXPECT_EQ(error("*/0 * * * *"), "cron \"*/0 * * * *\": minute step must be positive");
  EXPECT_EQ(error("a * * * *"), "cron \"a * * * *\": minute 'a' is not a number");
}

}  // namespace
}  // namespace strata

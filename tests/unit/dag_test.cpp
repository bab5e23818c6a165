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

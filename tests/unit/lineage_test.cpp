// Lineage over a whole pipeline: sources, staging, dimensions, facts, SQL models (a view too),
// serving copies — upstream and downstream, nearest first.
#include "services/warehouse_loader/lineage.h"

#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include "common/errors.h"
#include "tests/unit/visits_spec.h"

namespace strata::loader {
namespace {

PipelineSpec Spec() {
  PipelineSpec spec = ParsePipelineSpec(fixtures::VisitsSpec(), "visits.yaml");
  spec.sql_models.push_back(ParseSqlModel(
      "/* strata\nname: marts.visit_days\nkind: incremental_by_ds\n*/\n"
      "SELECT d.date AS ds, count(*) AS visits FROM dwh.fact_visit f JOIN dwh.dim_date d USING (date_key)\n"
      "WHERE f.date_key = to_char({ds}, 'YYYYMMDD')::int GROUP BY d.date",
      "visit_days.sql"));
  spec.sql_models.push_back(
      ParseSqlModel("/* strata\nname: marts.busy_days\nkind: view\n*/\nSELECT ds FROM marts.visit_days WHERE visits > 1", "busy_days.sql"));
  return spec;
}

using V = std::vector<std::string>;

TEST(Lineage, AMartsUpstreamReachesTheSourcesAndItsDownstreamTheServingCopyAndViews) {
  const Lineage l = LineageOf(Spec(), "marts.visit_days");
  EXPECT_EQ(l.upstream, (V{"dwh.fact_visit", "dwh.dim_date", "staging.visits", "dwh.dim_person", "source.visits",
                           "staging.people", "source.people"}));
  EXPECT_EQ(l.downstream, (V{"marts.busy_days", "serving.visit_days"}));  // a view is not published
}

TEST(Lineage, AStagingTablesDownstreamIsEverythingBuiltFromIt) {
  const Lineage l = LineageOf(Spec(), "staging.people");
  EXPECT_EQ(l.upstream, V{"source.people"});
  EXPECT_EQ(l.downstream, (V{"dwh.dim_person", "dwh.fact_visit", "marts.visit_days", "marts.busy_days", "serving.visit_days"}));
}

TEST(Lineage, AnUnknownTableIsRefusedListingTheTablesThereAre) {
  try {
    LineageOf(Spec(), "marts.nothing");
    FAIL() << "accepted";
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(),
                 "lineage: pipeline visits has no table 'marts.nothing' (its tables: dwh.dim_date, dwh.dim_person, "
                 "dwh.fact_visit, marts.busy_days, marts.visit_days, serving.visit_days, staging.people, staging.visits)");
  }
}

}  // namespace
}  // namespace strata::loader

namespace strata::loader {
namespace {

std::vector<ApiEndpoint> EndpointsReading(const std::string& table) {
  return ParseEndpoints(YAML::Load("- {name: visits, path: /visits, sql: 'SELECT * FROM " + table + "'}"), "visits.yaml");
}

TEST(Lineage, EndpointsAreDownstreamOfWhatTheyRead) {
  PipelineSpec spec = Spec();
  spec.endpoints = EndpointsReading("serving.visit_days");
  EXPECT_EQ(LineageOf(spec, "marts.visit_days").downstream,
            (std::vector<std::string>{"marts.busy_days", "serving.visit_days", "endpoint.visits"}));
  EXPECT_NO_THROW(CheckEndpointReads(spec));
}

TEST(Lineage, AMartMarkedPublishFalseHasNoServingCopy) {
  PipelineSpec spec = Spec();
  for (auto& m : spec.sql_models)
    if (m.name == "marts.visit_days") m.publish = false;
  EXPECT_EQ(LineageOf(spec, "marts.visit_days").downstream, std::vector<std::string>{"marts.busy_days"});
  spec.endpoints = EndpointsReading("serving.visit_days");
  EXPECT_THROW(CheckEndpointReads(spec), InputError);
  spec.endpoints = EndpointsReading("marts.visit_days");  // a realtime-style read of marts itself
  EXPECT_NO_THROW(CheckEndpointReads(spec));
}

TEST(Lineage, AnEndpointReadingATableThePipelineLacksIsRefused) {
  PipelineSpec spec = Spec();
  spec.endpoints = EndpointsReading("serving.busy_days");  // a view: not published
  try {
    CheckEndpointReads(spec);
    FAIL() << "accepted";
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(), "visits.yaml:1: endpoints (visits): the SQL reads serving.busy_days, which this pipeline "
                           "neither builds nor publishes");
  }
}

}  // namespace
}  // namespace strata::loader

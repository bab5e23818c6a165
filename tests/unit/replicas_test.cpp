// Which replica answers a published version, without a database.
#include "services/query/replicas.h"

#include <gtest/gtest.h>

#include "common/config.h"

namespace strata::query {
namespace {

TEST(PickReplica, OnlyAHealthyReplicaThatReplayedTheVersion) {
  const std::vector<ReplicaState> rs = {{true, 7}, {false, 9}, {true, 9}};
  EXPECT_EQ(PickReplica(rs, 9, 0), 2);   // 0 is behind, 1 is unhealthy
  EXPECT_EQ(PickReplica(rs, 10, 0), -1);  // nobody has 10: the primary
  EXPECT_EQ(PickReplica({}, 1, 0), -1);
  EXPECT_EQ(PickReplica({{true, -1}}, 0, 0), -1);  // unknown is never enough
  EXPECT_EQ(PickReplica({{true, 0}}, 0, 0), 0);    // nothing published yet: version 0
}

TEST(PickReplica, TakesTurns) {
  const std::vector<ReplicaState> rs = {{true, 5}, {true, 5}, {true, 4}};
  EXPECT_EQ(PickReplica(rs, 5, 0), 0);
  EXPECT_EQ(PickReplica(rs, 5, 1), 1);
  EXPECT_EQ(PickReplica(rs, 5, 2), 0);  // 2 is behind: the next one in turn
  EXPECT_EQ(PickReplica(rs, 4, 2), 2);
}

TEST(ReplicaName, HostAndPortOfTheDsn) {
  EXPECT_EQ(ReplicaName("host=10.0.0.5 port=5433 dbname=warehouse user=strata", 0), "10.0.0.5:5433");
  EXPECT_EQ(ReplicaName("dbname=w host=standby", 1), "standby:5432");
  EXPECT_EQ(ReplicaName("hostaddr=1.2.3.4 port=6000", 2), "localhost:6000");
  EXPECT_EQ(ReplicaName("dbname=w", 3), "replica3");
}

TEST(SplitDsns, SemicolonsSeparate) {
  EXPECT_EQ(SplitDsns("host=a port=1 dbname=w; host=b port=2 dbname=w ;"),
            (std::vector<std::string>{"host=a port=1 dbname=w", "host=b port=2 dbname=w"}));
  EXPECT_TRUE(SplitDsns("").empty());
  EXPECT_TRUE(SplitDsns(" ; ").empty());
}

}  // namespace
}  // namespace strata::query

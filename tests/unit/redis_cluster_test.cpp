// Redis Cluster routing without a network: slots, routing keys, seed lists, redirections.
#include "common/redis_cluster.h"

#include <gtest/gtest.h>

#include "common/errors.h"

namespace strata {
namespace {

TEST(KeySlot, MatchesTheClusterSpecification) {
  // The specification's CRC16 check value: "123456789" -> 0x31C3 (12739 = 0x31C3 % 16384).
  EXPECT_EQ(KeySlot("123456789"), 0x31C3);
  // Values redis-cli CLUSTER KEYSLOT gives.
  EXPECT_EQ(KeySlot("foo"), 12182);
  EXPECT_EQ(KeySlot("bar"), 5061);
  EXPECT_EQ(KeySlot("strata:batches"), KeySlot("strata:batches"));
  EXPECT_EQ(KeySlot(""), 0);
}

TEST(KeySlot, HashTagsShareASlot) {
  EXPECT_EQ(KeySlot("{user1000}.following"), KeySlot("{user1000}.followers"));
  EXPECT_EQ(KeySlot("{user1000}.following"), KeySlot("user1000"));
  // Only the first '{' counts; an empty tag means the whole key.
  EXPECT_EQ(KeySlot("foo{{bar}}zap"), KeySlot("{bar"));
  EXPECT_EQ(KeySlot("foo{}{bar}"), KeySlot(std::string("foo{}{bar}")));
  EXPECT_NE(KeySlot("foo{}{bar}"), KeySlot("bar"));
  EXPECT_EQ(KeySlot("foo{bar}{zap}"), KeySlot("bar"));
  EXPECT_EQ(KeySlot("no{close"), KeySlot(std::string("no{close")));
}

TEST(RoutingKey, FirstKeyOfEveryCommandStrataSends) {
  using V = std::vector<std::string>;
  EXPECT_EQ(RoutingKey(V{"GET", "k"}), "k");
  EXPECT_EQ(RoutingKey(V{"SET", "k", "v", "PX", "100", "NX"}), "k");
  EXPECT_EQ(RoutingKey(V{"XADD", "strata:batches", "*", "batch", "x"}), "strata:batches");
  EXPECT_EQ(RoutingKey(V{"XGROUP", "CREATE", "strata:cdc", "g", "$", "MKSTREAM"}), "strata:cdc");
  EXPECT_EQ(RoutingKey(V{"XINFO", "GROUPS", "strata:events"}), "strata:events");
  EXPECT_EQ(RoutingKey(V{"xreadgroup", "GROUP", "g", "c", "COUNT", "10", "BLOCK", "1000", "streams", "s1", ">"}), "s1");
  EXPECT_EQ(RoutingKey(V{"EVAL", "return 1", "1", "lease", "v"}), "lease");
  EXPECT_EQ(RoutingKey(V{"EVAL", "return 1", "0"}), std::nullopt);
  EXPECT_EQ(RoutingKey(V{"PING"}), std::nullopt);
  EXPECT_EQ(RoutingKey(V{"CLUSTER", "SLOTS"}), std::nullopt);
  EXPECT_EQ(RoutingKey(V{"XREADGROUP", "GROUP", "g", "c"}), std::nullopt);
}

TEST(ParseRedisUrl, OneNodeOrSeeds) {
  auto one = ParseRedisUrl("redis://127.0.0.1:6380");
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].Name(), "127.0.0.1:6380");
  auto db = ParseRedisUrl("redis://redis/0");
  ASSERT_EQ(db.size(), 1u);
  EXPECT_EQ(db[0].Name(), "redis:6379");
  auto seeds = ParseRedisUrl("redis://a:7000,b:7001,c:7002");
  ASSERT_EQ(seeds.size(), 3u);
  EXPECT_EQ(seeds[2].Name(), "c:7002");
}

TEST(ParseRedisUrl, BadPartsAreNamed) {
  auto error_of = [](const std::string& url) {
    try {
      ParseRedisUrl(url);
    } catch (const InputError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(error_of("http://a:1"), "redis url \"http://a:1\": expected redis://host:port[,host:port...]");
  EXPECT_EQ(error_of("redis://a:1,:2"), "redis url \"redis://a:1,:2\": empty host in \":2\"");
  EXPECT_EQ(error_of("redis://a:1,b:x"), "redis url \"redis://a:1,b:x\": bad port in \"b:x\"");
  EXPECT_EQ(error_of("redis://a:70000"), "redis url \"redis://a:70000\": bad port in \"a:70000\"");
}

TEST(ParseRedirect, MovedAndAsk) {
  auto moved = ParseRedirect("MOVED 3999 127.0.0.1:6381");
  ASSERT_TRUE(moved);
  EXPECT_FALSE(moved->ask);
  EXPECT_EQ(moved->slot, 3999);
  EXPECT_EQ(moved->node.Name(), "127.0.0.1:6381");
  auto ask = ParseRedirect("ASK 16383 10.0.0.2:7000");
  ASSERT_TRUE(ask);
  EXPECT_TRUE(ask->ask);
  EXPECT_EQ(ask->slot, 16383);
  EXPECT_EQ(ParseRedirect("ERR unknown command"), std::nullopt);
  EXPECT_EQ(ParseRedirect("MOVED 16384 a:1"), std::nullopt);
  EXPECT_EQ(ParseRedirect("MOVED x a:1"), std::nullopt);
  EXPECT_EQ(ParseRedirect("MOVED 12 :1"), std::nullopt);
  EXPECT_EQ(ParseRedirect("MOVED 12"), std::nullopt);
}

}  // namespace
}  // namespace strata

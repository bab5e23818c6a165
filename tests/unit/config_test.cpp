#include <gtest/gtest.h>

#include <map>

#include "common/config.h"
#include "common/errors.h"

namespace strata {
namespace {

EnvLookup Env(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](const char* name) -> const char* {
    static thread_local std::string value;
    auto it = vars.find(name);
    if (it == vars.end()) return nullptr;
    value = it->second;
    return value.c_str();
  };
}

std::string ErrorOf(const std::string& yaml, std::map<std::string, std::string> env = {}) {
  try {
    ParseConfig(yaml, "strata.yaml", Env(std::move(env)));
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

TEST(Config, DefaultsThenFileThenEnv) {
  const Config c = ParseConfig(
      "warehouse_dsn: host=a dbname=w\nbatch_rows: 100\nservices:\n  query: {grpc: '127.0.0.1:7000'}\n",
      "strata.yaml", Env({{"STRATA_PG_DSN", "host=b dbname=w"}, {"STRATA_INGEST_METRICS", "0.0.0.0:9999"}}));
  EXPECT_EQ(c.warehouse_dsn, "host=b dbname=w");
  EXPECT_EQ(c.batch_rows, 100);
  EXPECT_EQ(c.endpoint("query").grpc, "127.0.0.1:7000");
  EXPECT_EQ(c.endpoint("query").metrics, "127.0.0.1:9105");
  EXPECT_EQ(c.endpoint("ingest").metrics, "0.0.0.0:9999");
  EXPECT_EQ(c.redis_url, "redis://127.0.0.1:6379");
}

TEST(Config, UnknownKeyNamesItsPath) {
  EXPECT_EQ(ErrorOf("warehouse_dns: x\n"), "config strata.yaml:warehouse_dns: unknown key");
  EXPECT_EQ(ErrorOf("services:\n  ingest: {grcp: 'a:1'}\n"),
            "config strata.yaml:services.ingest.grcp: unknown key (known: grpc, metrics, http, dial)");
  EXPECT_NE(ErrorOf("services:\n  billing: {grpc: 'a:1'}\n").find("services.billing: unknown service"),
            std::string::npos);
}

TEST(Config, GrpcTargetOfSeveralInstances) {
  EXPECT_EQ(GrpcTarget({"127.0.0.1:50053", "", "", ""}), "127.0.0.1:50053");
  EXPECT_EQ(GrpcTarget({"127.0.0.1:50053", "", "", "127.0.0.1:1,127.0.0.1:2"}), "ipv4:127.0.0.1:1,127.0.0.1:2");
  EXPECT_EQ(GrpcTarget({"127.0.0.1:50053", "", "", "[::1]:1,[::1]:2"}), "ipv6:[::1]:1,[::1]:2");
  EXPECT_EQ(GrpcTarget({"0.0.0.0:50053", "", "", "dns:///loader:50053"}), "dns:///loader:50053");
  EXPECT_EQ(GrpcTarget({"0.0.0.0:50053", "", "", "loader:50053"}), "loader:50053");
}

TEST(Config, BadValuesFailFast) {
  EXPECT_EQ(ErrorOf("batch_rows: lots\n"),
            "config strata.yaml:batch_rows: expected a positive integer, got \"lots\"");
  EXPECT_EQ(ErrorOf("services:\n  quality: {grpc: 'localhost'}\n"),
            "config services.quality.grpc: expected host:port, got \"localhost\"");
  EXPECT_EQ(ErrorOf("", {{"STRATA_REDIS_URL", "http://x:1"}}),
            "config redis_url (or STRATA_REDIS_URL): expected redis://host:port, got \"http://x:1\"");
  EXPECT_NE(ErrorOf("a: [1, 2\n").find("not valid YAML"), std::string::npos);
  // Several instances to dial: addresses in a list, names through a dns:/// target.
  EXPECT_EQ(ErrorOf("", {{"STRATA_WAREHOUSE_LOADER_DIAL", "127.0.0.1:1,127.0.0.1:2"}}), "");
  EXPECT_EQ(ErrorOf("", {{"STRATA_WAREHOUSE_LOADER_DIAL", "dns:///loader:50053"}}), "");
  EXPECT_EQ(ErrorOf("", {{"STRATA_INGEST_DIAL", "127.0.0.1:1,ingest-2:50051"}}),
            "config services.ingest.dial (or STRATA_INGEST_DIAL): a list takes IP addresses, got \"ingest-2\" "
            "(for names use dns:///name:port)");
  EXPECT_EQ(ErrorOf("", {{"STRATA_INGEST_DIAL", "127.0.0.1:1,127.0.0.1"}}),
            "config services.ingest.dial (or STRATA_INGEST_DIAL): expected host:port, got \"127.0.0.1\"");
  // Seed nodes of a Redis Cluster: each one checked, the bad one named.
  EXPECT_EQ(ErrorOf("", {{"STRATA_REDIS_URL", "redis://a:7000,b:7001"}}), "");
  EXPECT_EQ(ErrorOf("", {{"STRATA_REDIS_URL", "redis://a:7000,b"}}),
            "config redis_url (or STRATA_REDIS_URL): expected host:port, got \"b\"");
}

}  // namespace
}  // namespace strata

// query: analytics over gRPC and HTTP/JSON from the published marts (schema `serving`), cached
// in Redis and, for the hottest answers, in process memory.
// Cache keys embed the published warehouse version (strata:publish_version, bumped by the
// controller after each successful run), so a publish makes every older entry unreachable at
// once without scanning. If Redis is down the service answers straight from PostgreSQL and
// counts it in strata_query_degraded_total.
#pragma once
#include <memory>
#include <string>

#include "common/service.h"

namespace strata {
struct Config;
}

namespace strata::query {

// "strata:q:v<version>:<method>:<canonical params>"
std::string CacheKey(long long version, const std::string& method, const std::string& params);

std::unique_ptr<Component> MakeQuery(const Config& config, prometheus::Registry& registry);

}  // namespace strata::query

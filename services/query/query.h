// query: analytics over gRPC from the marts and dwh tables, cached in Redis.
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

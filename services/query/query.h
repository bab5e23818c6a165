// query: the endpoints a pipeline declares (pipeline.yaml `endpoints:`), served over gRPC
// (Query.Call, Query.ListEndpoints) and on their HTTP/JSON paths, with /openapi.json generated
// from them. How an answer is found (process memory, Redis, the warehouse) and kept is in
// core.h; a call's parameters and typed rows in endpoint_call.h.
#pragma once
#include <memory>
#include <string>

#include "common/service.h"

namespace strata {
struct Config;
}

namespace strata::query {

// "strata:q:v<publish version>:<endpoint>:<canonical params>": a published answer's key, so a
// publish makes every older one unreachable at once without scanning.
std::string CacheKey(long long version, const std::string& endpoint, const std::string& params);
// "strata:q:rt:<endpoint>:<canonical params>": a realtime answer's key (it expires by itself).
std::string RealtimeCacheKey(const std::string& endpoint, const std::string& params);

std::unique_ptr<Component> MakeQuery(const Config& config, prometheus::Registry& registry);

}  // namespace strata::query

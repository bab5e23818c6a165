// controller: runs a pipeline's DAG for a logical date. It calls the services' gRPC APIs to
// start tasks and learns of their completion from events on strata:events. Runs and task runs
// are recorded in ops.runs / ops.task_runs; a successful run announces the published warehouse
// version (serving.publications.version) in Redis (strata:serving_version), which invalidates
// the query cache.
#pragma once
#include <memory>

#include "common/service.h"

namespace strata {
struct Config;
}

namespace strata::controller {

std::unique_ptr<Component> MakeController(const Config& config, prometheus::Registry& registry);

}  // namespace strata::controller

// quality: runs the pipeline spec's checks for a logical date against the warehouse and the
// lake, keeps every result (pass, warn and fail, with observed value, threshold and a bounded
// sample of failing rows) in quality.check_results, profiles every staged dataset, and alerts a
// webhook once when a check starts failing for a ds and once when it recovers. It reports task
// success only when no error-severity check failed, which is what gates publishing (WAP).
#pragma once
#include <memory>

#include "common/service.h"

namespace strata {
struct Config;
}

namespace strata::quality {

std::unique_ptr<Component> MakeQuality(const Config& config, prometheus::Registry& registry);

}  // namespace strata::quality

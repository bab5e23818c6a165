// warehouse-loader: COPYs committed lake partitions into staging (replacing that date's rows
// in one transaction, streaming file bytes straight into COPY) and builds the dwh/marts models
// for a logical date. Completion of each task is reported as an Event.
#pragma once
#include <memory>

#include "common/service.h"

namespace strata {
struct Config;
}

namespace strata::loader {

std::unique_ptr<Component> MakeLoader(const Config& config, prometheus::Registry& registry);

}  // namespace strata::loader

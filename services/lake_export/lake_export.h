// lake-export: consumes record batches from strata:batches (consumer group "lake-export") and
// writes them to the lake as bronze CSV part files, one per batch, named by the batch's
// sequence number so a redelivered batch rewrites its own file. When every part of a run's
// partition is present (the last batch says how many), the manifest is committed by atomic
// rename and a partition_committed event is published. An entry is acked only after its file
// is fsynced; entries a dead consumer left pending are reclaimed after a minute.
#pragma once
#include <memory>

#include "common/service.h"

namespace strata {
struct Config;
}

namespace strata::lake_export {

std::unique_ptr<Component> MakeLakeExport(const Config& config, prometheus::Registry& registry);

}  // namespace strata::lake_export

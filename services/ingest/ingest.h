// ingest: extracts one dataset for one logical date from its source and publishes record
// batches to strata:batches. Sources: PostgreSQL (incremental by a cursor column within the
// logical day, read through a server-side cursor so memory is one fetch), HTTP JSON APIs
// (paginated, retried on 5xx/timeouts), and HTML tables. Records that cannot be coerced to the
// declared types go to strata:deadletter with the reason and source position; every good
// record still goes through. Completion is reported as an Event.
#pragma once
#include <memory>

#include "common/service.h"

namespace strata {
struct Config;
}

namespace strata::ingest {

std::unique_ptr<Component> MakeIngest(const Config& config, prometheus::Registry& registry);

}  // namespace strata::ingest

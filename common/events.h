// Progress events on strata:events. Services publish one when a task they accepted ends;
// the controller consumes them. Publishing retries briefly because a lost completion event
// would stall a run until its timeout.
#pragma once
#include <string>

#include "common/bus.h"
#include "strata.pb.h"

namespace strata {

void PublishEvent(Bus& bus, const std::string& service, strata::v1::Event event);
bool DecodeEvent(const StreamEntry& entry, strata::v1::Event* out);

// Convenience for task services: success/failure of the task named in `req`.
// "strata:<run_id>:<task>:<attempt>", set as application_name on the PostgreSQL connections
// that do a task's work, so the controller can cancel that work when the task times out.
std::string TaskApplicationName(const strata::v1::TaskRequest& req);
// dsn with application_name appended.
std::string DsnForTask(const std::string& dsn, const strata::v1::TaskRequest& req);

strata::v1::Event TaskEvent(const strata::v1::TaskRequest& req, bool ok, const std::string& message,
                            long long rows = 0, long long rejected = 0);

}  // namespace strata

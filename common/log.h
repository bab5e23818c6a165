// Structured logging: one JSON object per line on stderr (ts, level, service, msg), so a log
// shipper can index fields without regexes. Messages use key=value pairs for their facts.
#pragma once
#include <string>

namespace strata {
// Installs the process-wide spdlog logger; level from STRATA_LOG_LEVEL (default info).
void InitLogging(const std::string& service);
}  // namespace strata

#include "common/log.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <cstdlib>

namespace strata {

void InitLogging(const std::string& service) {
  auto logger = spdlog::stderr_logger_mt(service);
  // Messages never contain raw quotes from user data unescaped at error sites that matter;
  // %v is the message, kept last so a line stays valid JSON for the common case.
  logger->set_pattern("{\"ts\":\"%Y-%m-%dT%H:%M:%S.%eZ\",\"level\":\"%l\",\"service\":\"" + service +
                          "\",\"msg\":\"%v\"}",
                      spdlog::pattern_time_type::utc);
  const char* lvl = std::getenv("STRATA_LOG_LEVEL");
  logger->set_level(lvl ? spdlog::level::from_str(lvl) : spdlog::level::info);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
}

}  // namespace strata

// quality: runs the pipeline spec's checks for a logical date against the warehouse and the
// lake, stores every result (pass or fail) in quality.check_results, posts failed checks to the
// configured webhook, and reports task success only when no error-severity check failed.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "common/service.h"

namespace strata {
struct Config;
struct CheckSpec;
}

namespace strata::quality {

struct CheckResult {
  std::string name, kind, severity, target;
  std::string status;  // pass | fail | warn
  std::string observed, threshold, message;
};

// The JSON body posted to the webhook: Slack-compatible "text" plus structured "checks".
std::string AlertPayload(const std::string& pipeline, const std::string& ds, const std::string& run_id,
                         const std::vector<CheckResult>& failed);

std::unique_ptr<Component> MakeQuality(const Config& config, prometheus::Registry& registry);

}  // namespace strata::quality

#include "common/events.h"

#include <spdlog/spdlog.h>

#include <chrono>
#include <thread>

#include "common/errors.h"
#include "common/time_util.h"

namespace strata {

void PublishEvent(Bus& bus, const std::string& service, strata::v1::Event event) {
  event.set_service(service);
  event.set_at_unix_ms(NowUnixMs());
  const std::string payload = event.SerializeAsString();
  for (int attempt = 1;; ++attempt) {
    try {
      bus.Add(kEventStream, {{"event", payload}, {"kind", event.kind()}, {"task", event.task()}});
      return;
    } catch (const EnvError& e) {
      if (attempt >= 5) throw;
      spdlog::warn("event publish failed attempt={} error={}", attempt, e.what());
      std::this_thread::sleep_for(std::chrono::milliseconds(200 * attempt));
    }
  }
}

bool DecodeEvent(const StreamEntry& entry, strata::v1::Event* out) {
  auto it = entry.fields.find("event");
  return it != entry.fields.end() && out->ParseFromString(it->second);
}

strata::v1::Event TaskEvent(const strata::v1::TaskRequest& req, bool ok, const std::string& message,
                            long long rows, long long rejected) {
  strata::v1::Event e;
  e.set_kind(ok ? "task_succeeded" : "task_failed");
  e.set_pipeline(req.pipeline());
  e.set_dataset(req.dataset());
  e.set_ds(req.ds());
  e.set_run_id(req.run_id());
  e.set_task(req.task());
  e.set_rows(rows);
  e.set_rejected(rejected);
  e.set_message(message);
  e.set_attempt(req.attempt());
  return e;
}

std::string TaskApplicationName(const strata::v1::TaskRequest& req) {
  return ("strata:" + req.run_id() + ":" + req.task() + ":" + std::to_string(req.attempt())).substr(0, 63);
}

std::string DsnForTask(const std::string& dsn, const strata::v1::TaskRequest& req) {
  return dsn + " application_name=" + TaskApplicationName(req);
}

}  // namespace strata

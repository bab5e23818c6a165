#include "common/task_lease.h"

#include <spdlog/spdlog.h>

#include "common/bus.h"

namespace strata {

namespace {
constexpr long long kDoneMs = 600000;  // long enough for the controller to read the event
}

std::string LeaseKey(const strata::v1::TaskRequest& req) {
  return "strata:lease:" + req.run_id() + ":" + req.task() + ":" + std::to_string(req.attempt());
}

LeaseState ReadLease(RedisClient& redis, const std::string& key) {
  try {
    const RedisReply r = redis.Command({"GET", key});
    if (r.type == RedisReply::kNil) return LeaseState::kAbsent;
    return r.str == "done" ? LeaseState::kDone : LeaseState::kHeld;
  } catch (const std::exception&) {
    return LeaseState::kUnknown;
  }
}

LeaseKeeper::LeaseKeeper(const std::string& redis_url, std::chrono::milliseconds ttl)
    : redis_(std::make_unique<RedisClient>(redis_url, 2000)), ttl_(ttl), refresher_([this] { Loop(); }) {}

LeaseKeeper::~LeaseKeeper() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  refresher_.join();
}

void LeaseKeeper::Set(const std::string& key, const std::string& value, long long ttl_ms) {
  // A refresh racing Release() must not turn "done" back into "held".
  static const char* kRefresh =
      "if ARGV[1] == 'held' and redis.call('GET', KEYS[1]) == 'done' then return 0 end "
      "redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return 1";
  try {
    redis_->Command({"EVAL", kRefresh, "1", key, value, std::to_string(ttl_ms)});
  } catch (const std::exception& e) {
    spdlog::warn("task lease not written key={} error={}", key, e.what());
  }
}

void LeaseKeeper::Hold(const strata::v1::TaskRequest& req) {
  const std::string key = LeaseKey(req);
  {
    std::lock_guard<std::mutex> lock(mu_);
    held_.insert(key);
  }
  Set(key, "held", ttl_.count());
}

void LeaseKeeper::Release(const strata::v1::TaskRequest& req) {
  const std::string key = LeaseKey(req);
  {
    std::lock_guard<std::mutex> lock(mu_);
    held_.erase(key);
  }
  Set(key, "done", kDoneMs);
}

void LeaseKeeper::Loop() {
  std::unique_lock<std::mutex> lock(mu_);
  while (!stop_) {
    cv_.wait_for(lock, ttl_ / 3, [this] { return stop_; });
    if (stop_) break;
    const std::set<std::string> keys = held_;
    lock.unlock();
    for (const auto& k : keys) Set(k, "held", ttl_.count());
    lock.lock();
  }
}

}  // namespace strata

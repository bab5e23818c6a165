// Task leases: how the controller learns in seconds that the worker holding a task is gone.
//
// A worker that accepted a task keeps the key LeaseKey(req) alive in Redis (TTL `ttl`,
// refreshed every ttl/3) from before it answers the dispatch RPC until the task ends; then it
// marks the key "done" for a while, so the controller keeps waiting for the completion event
// instead of calling the task lost. A worker killed with its tasks stops refreshing, and the
// key expires within `ttl`. The controller re-dispatches a task (a new attempt; the old
// attempt's late answers are ignored) once its key has stayed absent for half a TTL — longer
// than a refresh interval, so an emptied Redis (a restart) that the workers refill at their
// next refresh does not look like lost work.
//
// Leases are best effort: with Redis unreachable a worker keeps working and the controller
// stops judging leases (the task timeout still bounds a task).
#pragma once
#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>

#include "strata.pb.h"

namespace strata {

class RedisClient;

// "strata:lease:<run_id>:<task>:<attempt>".
std::string LeaseKey(const strata::v1::TaskRequest& req);

// What the controller reads from a lease key.
enum class LeaseState { kHeld, kDone, kAbsent, kUnknown /* Redis unreachable */ };
LeaseState ReadLease(RedisClient& redis, const std::string& key);

class LeaseKeeper {
 public:
  LeaseKeeper(const std::string& redis_url, std::chrono::milliseconds ttl);
  ~LeaseKeeper();
  LeaseKeeper(const LeaseKeeper&) = delete;
  LeaseKeeper& operator=(const LeaseKeeper&) = delete;

  // Takes the lease now (before the dispatch is answered) and keeps it until Release().
  void Hold(const strata::v1::TaskRequest& req);
  // The task ended (its completion event is published): the key says "done" for ten minutes.
  void Release(const strata::v1::TaskRequest& req);

 private:
  void Set(const std::string& key, const std::string& value, long long ttl_ms);
  void Loop();

  std::unique_ptr<RedisClient> redis_;
  const std::chrono::milliseconds ttl_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::set<std::string> held_;
  bool stop_ = false;
  std::thread refresher_;
};

}  // namespace strata

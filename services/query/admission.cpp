#include "services/query/admission.h"

#include <algorithm>

namespace strata::query {

AdmissionGate::AdmissionGate(int limit, int max_queue, std::chrono::milliseconds max_wait)
    : limit_(std::max(1, limit)), max_queue_(std::max(0, max_queue)), max_wait_(std::max(std::chrono::milliseconds(0), max_wait)) {}

AdmissionGate::Verdict AdmissionGate::Enter(Clock::time_point deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  // Waiters go first: a newcomer does not overtake a request already queued.
  if (running_ < limit_ && waiting_ == 0) {
    ++running_;
    return Verdict::kAdmitted;
  }
  if (waiting_ >= max_queue_) return Verdict::kQueueFull;
  ++waiting_;
  const auto until = std::min(deadline, Clock::now() + max_wait_);
  const bool got = freed_.wait_until(lock, until, [&] { return running_ < limit_; });
  --waiting_;
  if (!got) return Verdict::kWaitedTooLong;
  ++running_;
  return Verdict::kAdmitted;
}

void AdmissionGate::Leave() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    --running_;
  }
  freed_.notify_all();  // a waiter that timed out cannot swallow the wake-up
}

int AdmissionGate::running() const {
  std::lock_guard<std::mutex> lock(mu_);
  return running_;
}

int AdmissionGate::waiting() const {
  std::lock_guard<std::mutex> lock(mu_);
  return waiting_;
}

}  // namespace strata::query

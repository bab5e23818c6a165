#pragma once
// Admission to the warehouse: how many queries one query service runs on PostgreSQL at once.
//
// Past its capacity a service that queues every request without bound answers nothing in time:
// each request waits behind all the others until its deadline, so throughput falls as the
// offered load grows. The gate keeps the service on its plateau instead: at most `limit`
// queries run, at most `max_queue` requests wait for a slot, each for at most `max_wait` (or its
// own deadline, when sooner); everything beyond is refused at once, in microseconds, for the
// client to retry. Cached answers never pass the gate, so they stay fast while it sheds.
//
// Thread-safe; no I/O, so it is tested without a network (tests/unit/admission_test.cpp).

#include <chrono>
#include <condition_variable>
#include <mutex>

namespace strata::query {

class AdmissionGate {
 public:
  using Clock = std::chrono::steady_clock;
  enum class Verdict { kAdmitted, kQueueFull, kWaitedTooLong };

  // limit >= 1, max_queue >= 0 (0: never wait), max_wait >= 0.
  AdmissionGate(int limit, int max_queue, std::chrono::milliseconds max_wait);

  // Takes a slot, waiting while the queue has room, until min(now + max_wait, deadline).
  // Every kAdmitted must be matched by one Leave(); prefer Ticket.
  Verdict Enter(Clock::time_point deadline);
  void Leave();

  int running() const;
  int waiting() const;

  // A slot held for a scope.
  class Ticket {
   public:
    Ticket(AdmissionGate& gate, Clock::time_point deadline) : gate_(gate), verdict_(gate.Enter(deadline)) {}
    ~Ticket() {
      if (verdict_ == Verdict::kAdmitted) gate_.Leave();
    }
    Ticket(const Ticket&) = delete;
    Ticket& operator=(const Ticket&) = delete;
    Verdict verdict() const { return verdict_; }

   private:
    AdmissionGate& gate_;
    Verdict verdict_;
  };

 private:
  const int limit_;
  const int max_queue_;
  const std::chrono::milliseconds max_wait_;
  mutable std::mutex mu_;
  std::condition_variable freed_;
  int running_ = 0;
  int waiting_ = 0;
};

}  // namespace strata::query

// A token bucket: `rate` tokens per second, holding at most `burst`, starting full. Pure logic
// over a clock the caller passes (seconds on any monotonic scale), so it is tested without
// sleeping. The one rate limiter of strata: the query service's per-token limit and ingest's
// per-source request pacing. Not thread-safe (callers lock).
#pragma once

namespace strata {

class TokenBucket {
 public:
  // rate <= 0: unlimited.
  TokenBucket(double rate, double burst);
  // Takes a token at `now` when one is free. Otherwise takes nothing and, if `wait` is given,
  // says how many seconds until one is.
  bool TryTake(double now, double* wait = nullptr);
  // No token before `until` (a server's Retry-After); the bucket refills from empty after it.
  void PauseUntil(double until);

 private:
  double rate_, burst_, tokens_;
  double last_ = -1;  // the last refill; -1 before the first take
  double paused_until_ = 0;
};

}  // namespace strata

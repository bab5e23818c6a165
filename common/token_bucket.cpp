#include "common/token_bucket.h"

#include <algorithm>

namespace strata {

TokenBucket::TokenBucket(double rate, double burst) : rate_(rate), burst_(std::max(1.0, burst)), tokens_(burst_) {}

bool TokenBucket::TryTake(double now, double* wait) {
  if (now < paused_until_) {
    if (wait) *wait = paused_until_ - now;
    return false;
  }
  if (rate_ <= 0) return true;
  if (last_ >= 0 && now > last_) tokens_ = std::min(burst_, tokens_ + (now - last_) * rate_);
  last_ = std::max(last_, now);
  if (tokens_ >= 1.0) {
    tokens_ -= 1.0;
    return true;
  }
  if (wait) *wait = (1.0 - tokens_) / rate_;
  return false;
}

void TokenBucket::PauseUntil(double until) {
  paused_until_ = std::max(paused_until_, until);
  tokens_ = 0;
  last_ = std::max(last_, until);
}

}  // namespace strata

// Access control pieces of the query service, pure and clock-injectable: per-token token
// buckets, page tokens, and the HTTP status for a gRPC code.
#pragma once
#include <string>

namespace strata::query {

// A token bucket: `rate` tokens per second, holding at most `burst`. Starts full.
class TokenBucket {
 public:
  TokenBucket(double rate, double burst) : rate_(rate), burst_(burst), tokens_(burst) {}
  bool Take(double now_seconds);

 private:
  double rate_, burst_, tokens_;
  double last_ = -1;
};

// Page tokens are opaque to clients; today they carry an offset.
std::string EncodePageToken(long long offset);
// False for anything EncodePageToken did not produce.
bool DecodePageToken(const std::string& token, long long* offset);

// grpc::StatusCode (as int) -> HTTP status for the JSON gateway.
int HttpStatusFor(int grpc_code);

}  // namespace strata::query

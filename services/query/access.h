// Pieces of the query service's access, pure: page tokens and the HTTP status for a gRPC code
// (the per-token rate limit is common/token_bucket.h).
#pragma once
#include <string>

namespace strata::query {

// Page tokens are opaque to clients; today they carry an offset.
std::string EncodePageToken(long long offset);
// False for anything EncodePageToken did not produce.
bool DecodePageToken(const std::string& token, long long* offset);

// grpc::StatusCode (as int) -> HTTP status for the JSON gateway.
int HttpStatusFor(int grpc_code);

}  // namespace strata::query

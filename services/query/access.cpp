#include "services/query/access.h"

#include <algorithm>

namespace strata::query {

std::string EncodePageToken(long long offset) { return "o" + std::to_string(offset); }

bool DecodePageToken(const std::string& token, long long* offset) {
  if (token.empty()) {
    *offset = 0;
    return true;
  }
  if (token.size() < 2 || token.size() > 12 || token[0] != 'o') return false;
  if (!std::all_of(token.begin() + 1, token.end(), [](char c) { return c >= '0' && c <= '9'; })) return false;
  *offset = std::stoll(token.substr(1));
  return true;
}

int HttpStatusFor(int code) {
  switch (code) {
    case 0: return 200;    // OK
    case 3: return 400;    // INVALID_ARGUMENT
    case 16: return 401;   // UNAUTHENTICATED
    case 7: return 403;    // PERMISSION_DENIED
    case 5: return 404;    // NOT_FOUND
    case 8: return 429;    // RESOURCE_EXHAUSTED
    case 4: return 504;    // DEADLINE_EXCEEDED
    case 14: return 503;   // UNAVAILABLE
    default: return 500;
  }
}

}  // namespace strata::query

// strata's error hierarchy. Code inside a service throws these; RPC boundaries translate them
// into grpc::Status (InputError -> INVALID_ARGUMENT/FAILED_PRECONDITION, EnvError -> UNAVAILABLE).
// Wrap libpqxx/hiredis/libcurl failures into EnvError at the edge so callers can tell a bad
// environment (retry later) from bad input (retrying will not help).
#pragma once
#include <cstdio>
#include <stdexcept>
#include <string>

namespace strata {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Bad configuration, bad pipeline spec, malformed input data: the message names what and where.
class InputError : public Error {
 public:
  using Error::Error;
};

// The environment failed: network, database, Redis, filesystem.
class EnvError : public Error {
 public:
  using Error::Error;
};

// A client-supplied value as it may appear in an error message: double-quoted, at most
// `max_bytes` of it, every byte outside printable ASCII (and " and \) escaped, and the full
// length noted when cut: "abc"... (1048576 bytes). An error never echoes a whole hostile value
// (gRPC carries the message in a trailer with a size limit; logs and JSON stay readable).
inline std::string QuoteForMessage(const std::string& value, size_t max_bytes = 32) {
  std::string out = "\"";
  const size_t n = value.size() < max_bytes ? value.size() : max_bytes;
  for (size_t i = 0; i < n; ++i) {
    const unsigned char c = static_cast<unsigned char>(value[i]);
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c == '\n') {
      out += "\\n";
    } else if (c < 0x20 || c >= 0x7f) {
      char hex[8];
      std::snprintf(hex, sizeof hex, "\\x%02x", c);
      out += hex;
    } else {
      out += static_cast<char>(c);
    }
  }
  out += '"';
  if (n < value.size()) out += "... (" + std::to_string(value.size()) + " bytes)";
  return out;
}

}  // namespace strata

// strata's error hierarchy. Code inside a service throws these; RPC boundaries translate them
// into grpc::Status (InputError -> INVALID_ARGUMENT/FAILED_PRECONDITION, EnvError -> UNAVAILABLE).
// Wrap libpqxx/hiredis/libcurl failures into EnvError at the edge so callers can tell a bad
// environment (retry later) from bad input (retrying will not help).
#pragma once
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

}  // namespace strata

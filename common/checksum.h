// A stable checksum of text (FNV-1a 64, hex): the same on every machine, build and process, so
// it can be stored (a migration's) or shared between replicas (an endpoint's cache identity).
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>

namespace strata {

inline std::string Checksum(const std::string& text) {
  uint64_t h = 14695981039346656037ULL;
  for (unsigned char c : text) {
    h ^= c;
    h *= 1099511628211ULL;
  }
  char buf[17];
  std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(h));
  return buf;
}

}  // namespace strata

#include "common/lsn.h"

#include <cstdio>
#include <stdexcept>

#include "common/errors.h"

namespace strata {

uint64_t ParseLsn(const std::string& text) {
  const size_t slash = text.find('/');
  if (slash == std::string::npos || slash == 0 || slash + 1 == text.size())
    throw InputError("LSN \"" + text + "\": expected X/Y in hex");
  try {
    size_t a = 0, b = 0;
    const uint64_t hi = std::stoull(text.substr(0, slash), &a, 16);
    const uint64_t lo = std::stoull(text.substr(slash + 1), &b, 16);
    if (a != slash || b != text.size() - slash - 1 || hi > 0xffffffffULL || lo > 0xffffffffULL)
      throw std::invalid_argument(text);
    return (hi << 32) | lo;
  } catch (const std::exception&) {
    throw InputError("LSN \"" + text + "\": expected X/Y in hex");
  }
}

std::string FormatLsn(uint64_t lsn) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%X/%X", static_cast<unsigned>(lsn >> 32), static_cast<unsigned>(lsn & 0xffffffffULL));
  return buf;
}

}  // namespace strata

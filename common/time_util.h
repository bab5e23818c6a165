// Calendar helpers for logical dates (`ds`, YYYY-MM-DD, always UTC).
#pragma once
#include <cstdint>
#include <string>

namespace strata {

// Days since 1970-01-01 for a strict YYYY-MM-DD date; throws InputError naming `what` otherwise.
int64_t ParseDate(const std::string& ds, const std::string& what = "date");
std::string FormatDate(int64_t days_since_epoch);
std::string AddDays(const std::string& ds, int64_t days);
// A strict YYYY-MM-DD calendar date from 0001-01-01 to 9999-12-31.
bool IsValidDate(const std::string& ds);
int64_t NowUnixMs();
// Microseconds since the epoch of "YYYY-MM-DD[T ]HH:MM:SS[.ffffff][Z|±HH[:MM]]" (no offset: UTC).
// Throws InputError.
int64_t TimestampMicros(const std::string& timestamp);
// Current UTC time as ISO-8601 with milliseconds.
std::string NowIso();

}  // namespace strata

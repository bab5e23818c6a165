#include "common/time_util.h"

#include <chrono>
#include <regex>
#include <cstdio>
#include <ctime>

#include "common/errors.h"

namespace strata {

namespace {
// Howard Hinnant's civil-from-days algorithms: exact for the proleptic Gregorian calendar.
int64_t DaysFromCivil(int64_t y, unsigned m, unsigned d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const unsigned yoe = static_cast<unsigned>(y - era * 400);
  const unsigned doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + static_cast<int64_t>(doe) - 719468;
}

void CivilFromDays(int64_t z, int64_t* y, unsigned* m, unsigned* d) {
  z += 719468;
  const int64_t era = (z >= 0 ? z : z - 146096) / 146097;
  const unsigned doe = static_cast<unsigned>(z - era * 146097);
  const unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
  const unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
  const unsigned mp = (5 * doy + 2) / 153;
  *d = doy - (153 * mp + 2) / 5 + 1;
  *m = mp + (mp < 10 ? 3 : -9);
  *y = static_cast<int64_t>(yoe) + era * 400 + (*m <= 2);
}
}  // namespace

bool IsValidDate(const std::string& ds) {
  if (ds.size() != 10 || ds[4] != '-' || ds[7] != '-') return false;
  for (size_t i : {0, 1, 2, 3, 5, 6, 8, 9})
    if (ds[i] < '0' || ds[i] > '9') return false;
  const int y = std::stoi(ds.substr(0, 4));
  const unsigned m = static_cast<unsigned>(std::stoi(ds.substr(5, 2)));
  const unsigned d = static_cast<unsigned>(std::stoi(ds.substr(8, 2)));
  // Year 0000 does not exist (1 BC precedes AD 1; PostgreSQL refuses it).
  if (y < 1 || m < 1 || m > 12 || d < 1) return false;
  static const unsigned kDays[] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  const bool leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
  const unsigned max_day = (m == 2 && leap) ? 29 : kDays[m - 1];
  return d <= max_day;
}

int64_t ParseDate(const std::string& ds, const std::string& what) {
  if (!IsValidDate(ds))
    throw InputError(what + ": expected a date YYYY-MM-DD, got \"" + ds + "\"");
  return DaysFromCivil(std::stoi(ds.substr(0, 4)), static_cast<unsigned>(std::stoi(ds.substr(5, 2))),
                       static_cast<unsigned>(std::stoi(ds.substr(8, 2))));
}

std::string FormatDate(int64_t days) {
  int64_t y;
  unsigned m, d;
  CivilFromDays(days, &y, &m, &d);
  char buf[32];
  std::snprintf(buf, sizeof buf, "%04lld-%02u-%02u", static_cast<long long>(y), m, d);
  return buf;
}

std::string AddDays(const std::string& ds, int64_t n) { return FormatDate(ParseDate(ds) + n); }

int64_t NowUnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

std::string NowIso() {
  const int64_t ms = NowUnixMs();
  const std::time_t secs = static_cast<std::time_t>(ms / 1000);
  std::tm tm{};
  gmtime_r(&secs, &tm);
  char buf[96];
  std::snprintf(buf, sizeof buf, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900,
                tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                static_cast<int>(ms % 1000));
  return buf;
}

int64_t TimestampMicros(const std::string& s) {
  static const std::regex kTs(
      R"(^([0-9]{4}-[0-9]{2}-[0-9]{2})[T ]([0-9]{2}):([0-9]{2}):([0-9]{2})(?:\.([0-9]{1,6}))?(Z|([+-])([0-9]{2}):?([0-9]{2})?)?$)");
  std::smatch m;
  if (!std::regex_match(s, m, kTs)) throw InputError("\"" + s + "\" is not a timestamp (YYYY-MM-DD HH:MM:SS[.ffffff][Z|+HH:MM])");
  int64_t us = ParseDate(m[1].str(), "timestamp") * 86400LL;
  us += std::stoll(m[2].str()) * 3600 + std::stoll(m[3].str()) * 60 + std::stoll(m[4].str());
  if (m[7].matched) {
    const int64_t off = std::stoll(m[8].str()) * 3600 + (m[9].matched ? std::stoll(m[9].str()) * 60 : 0);
    us += m[7].str() == "+" ? -off : off;
  }
  us *= 1000000;
  if (m[5].matched) {
    std::string frac = m[5].str();
    frac.resize(6, '0');
    us += std::stoll(frac);
  }
  return us;
}

}  // namespace strata

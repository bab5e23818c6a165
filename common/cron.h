// Five-field cron expressions (minute hour day-of-month month day-of-week) as crontab(5) has
// them: `*`, numbers, ranges `a-b`, lists `a,b`, steps `*/n` and `a-b/n`; day-of-week 0-7 with
// 0 and 7 both Sunday. When both day fields are restricted, either may match (Vixie cron).
// Times are naive local wall-clock minutes: the caller converts to the schedule's time zone.
// No packaged C++ cron library exists in Debian 12, hence this small one.
#pragma once
#include <bitset>
#include <cstdint>
#include <optional>
#include <string>

namespace strata {

struct LocalMinute {
  int64_t day = 0;   // days since 1970-01-01
  int minute = 0;    // minute of the day, 0..1439
};

class CronExpr {
 public:
  // Throws InputError naming the field: "cron \"0 25 * * *\": hour 25 is out of range 0-23".
  static CronExpr Parse(const std::string& text);
  bool Matches(const LocalMinute& t) const;
  // The latest matching minute at or before `now`, looking back at most `max_days`.
  std::optional<LocalMinute> LatestAtOrBefore(const LocalMinute& now, int max_days = 366) const;
  const std::string& text() const { return text_; }

 private:
  std::string text_;
  std::bitset<60> minutes_;
  std::bitset<24> hours_;
  std::bitset<32> doms_;
  std::bitset<13> months_;
  std::bitset<8> dows_;
  bool dom_any_ = true, dow_any_ = true;
};

}  // namespace strata

#include "services/controller/schedule.h"

#include <algorithm>

#include "common/time_util.h"

namespace strata::controller {

std::optional<std::pair<std::string, std::string>> DueRange(const ScheduleSpec& sc, const LocalMinute& now) {
  const auto fired = CronExpr::Parse(sc.cron).LatestAtOrBefore(now);
  if (!fired) return std::nullopt;
  const std::string due = FormatDate(fired->day - 1);
  if (due < sc.start_date) return std::nullopt;
  const std::string first = sc.catchup ? std::max(sc.start_date, AddDays(due, -3660)) : due;
  return std::make_pair(first, due);
}

std::vector<std::string> DatesToQueue(const std::pair<std::string, std::string>& range, const std::set<std::string>& have) {
  std::vector<std::string> out;
  for (std::string ds = range.first; ds <= range.second && out.size() < 1000; ds = AddDays(ds, 1))
    if (!have.count(ds)) out.push_back(ds);
  return out;
}

bool DeadlinePassed(const ScheduleSpec& sc, const std::string& ds, const LocalMinute& now) {
  if (sc.deadline.empty()) return false;
  const int deadline_minute = std::stoi(sc.deadline.substr(0, 2)) * 60 + std::stoi(sc.deadline.substr(3, 2));
  const int64_t deadline_day = ParseDate(ds) + 1;
  return now.day > deadline_day || (now.day == deadline_day && now.minute >= deadline_minute);
}

}  // namespace strata::controller

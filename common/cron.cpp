#include "common/cron.h"

#include <sstream>
#include <vector>

#include "common/errors.h"
#include "common/time_util.h"

namespace strata {

namespace {

template <size_t N>
bool ParseField(const std::string& expr, const std::string& field, const char* name, int lo, int hi,
                std::bitset<N>* out) {
  auto fail = [&](const std::string& why) -> bool {
    throw InputError("cron \"" + expr + "\": " + name + " " + why);
  };
  auto number = [&](const std::string& s) {
    if (s.empty() || s.find_first_not_of("0123456789") != std::string::npos) fail("'" + s + "' is not a number");
    const int v = std::stoi(s);
    if (v < lo || v > hi) fail(std::to_string(v) + " is out of range " + std::to_string(lo) + "-" + std::to_string(hi));
    return v;
  };
  std::stringstream parts(field);
  std::string part;
  bool any = false;
  while (std::getline(parts, part, ',')) {
    int step = 1;
    const auto slash = part.find('/');
    std::string range = part.substr(0, slash);
    if (slash != std::string::npos) {
      step = number(part.substr(slash + 1));
      if (step == 0) fail("step must be positive");
    }
    int a, b;
    if (range == "*") {
      a = lo;
      b = hi;
      any = slash == std::string::npos;
    } else if (const auto dash = range.find('-'); dash != std::string::npos) {
      a = number(range.substr(0, dash));
      b = number(range.substr(dash + 1));
      if (a > b) fail("range " + range + " is backwards");
    } else {
      a = number(range);
      b = slash == std::string::npos ? a : hi;
    }
    for (int v = a; v <= b; v += step) out->set(static_cast<size_t>(v));
  }
  if (field.empty()) fail("is empty");
  return any;
}

}  // namespace

CronExpr CronExpr::Parse(const std::string& text) {
  std::stringstream ss(text);
  std::vector<std::string> fields;
  for (std::string f; ss >> f;) fields.push_back(f);
  if (fields.size() != 5)
    throw InputError("cron \"" + text + "\": expected 5 fields (minute hour day-of-month month day-of-week), got " +
                     std::to_string(fields.size()));
  CronExpr c;
  c.text_ = text;
  ParseField(text, fields[0], "minute", 0, 59, &c.minutes_);
  ParseField(text, fields[1], "hour", 0, 23, &c.hours_);
  c.dom_any_ = ParseField(text, fields[2], "day-of-month", 1, 31, &c.doms_);
  ParseField(text, fields[3], "month", 1, 12, &c.months_);
  c.dow_any_ = ParseField(text, fields[4], "day-of-week", 0, 7, &c.dows_);
  if (c.dows_.test(7)) c.dows_.set(0);
  return c;
}

bool CronExpr::Matches(const LocalMinute& t) const {
  if (!minutes_.test(static_cast<size_t>(t.minute % 60)) || !hours_.test(static_cast<size_t>(t.minute / 60)))
    return false;
  const std::string date = FormatDate(t.day);
  const int month = std::stoi(date.substr(5, 2));
  const int dom = std::stoi(date.substr(8, 2));
  if (!months_.test(static_cast<size_t>(month))) return false;
  const int dow = static_cast<int>(((t.day % 7) + 11) % 7);  // 1970-01-01 was a Thursday (4)
  const bool dom_ok = doms_.test(static_cast<size_t>(dom));
  const bool dow_ok = dows_.test(static_cast<size_t>(dow));
  if (dom_any_ || dow_any_) return dom_ok && dow_ok;
  return dom_ok || dow_ok;
}

std::optional<LocalMinute> CronExpr::LatestAtOrBefore(const LocalMinute& now, int max_days) const {
  LocalMinute t = now;
  for (int64_t steps = 0; steps <= static_cast<int64_t>(max_days) * 1440; ++steps) {
    if (Matches(t)) return t;
    if (--t.minute < 0) {
      t.minute = 1439;
      --t.day;
    }
  }
  return std::nullopt;
}

}  // namespace strata

// What a pipeline's schedule owes at a moment: which logical dates need a run, and whether a
// date's deadline has passed. Plain logic over the schedule's local time (the caller reads the
// clock and converts it to the schedule's time zone), tested without a database or a clock:
// tests/unit/schedule_test.cpp. The controller's leader asks every few seconds.
#pragma once
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "common/cron.h"
#include "common/spec.h"

namespace strata::controller {

// The dates whose runs a schedule may owe at `now`: [first, due], where `due` is the day before
// the latest cron tick at or before `now` (a tick at 00:30 on the 2nd runs the 1st) and `first`
// is `due` itself, or with catch-up `start_date` (at most ten years back). nullopt when nothing
// is due yet (no tick, or `due` before `start_date`).
std::optional<std::pair<std::string, std::string>> DueRange(const ScheduleSpec& schedule, const LocalMinute& now);

// Of `range`, in date order, the dates without a run yet (`have`): at most 1000 per pass.
std::vector<std::string> DatesToQueue(const std::pair<std::string, std::string>& range, const std::set<std::string>& have);

// Whether `ds`'s deadline (HH:MM local on the day after ds) has passed at `now`; false without one.
bool DeadlinePassed(const ScheduleSpec& schedule, const std::string& ds, const LocalMinute& now);

}  // namespace strata::controller

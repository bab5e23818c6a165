// What a schedule owes at a given local minute (services/controller/schedule.h): no clock, no
// database.
#include "services/controller/schedule.h"

#include <gtest/gtest.h>

#include "common/time_util.h"

namespace strata::controller {
namespace {

LocalMinute At(const std::string& day, int hour, int minute) { return {ParseDate(day), hour * 60 + minute}; }

ScheduleSpec Daily(bool catchup, const std::string& deadline = "") {
  ScheduleSpec sc;
  sc.present = true;
  sc.cron = "30 0 * * *";
  sc.start_date = "2024-03-01";
  sc.catchup = catchup;
  sc.deadline = deadline;
  return sc;
}

using Range = std::pair<std::string, std::string>;

TEST(Schedule, TheDayBeforeTheLatestTickIsDue) {
  // 00:29 on the 10th: the latest tick was 00:30 on the 9th, which runs the 8th.
  EXPECT_EQ(DueRange(Daily(false), At("2024-03-10", 0, 29)), Range("2024-03-08", "2024-03-08"));
  EXPECT_EQ(DueRange(Daily(false), At("2024-03-10", 0, 30)), Range("2024-03-09", "2024-03-09"));
  // Catch-up owes every date since start_date.
  EXPECT_EQ(DueRange(Daily(true), At("2024-03-10", 12, 0)), Range("2024-03-01", "2024-03-09"));
  // Before start_date nothing is due.
  EXPECT_EQ(DueRange(Daily(true), At("2024-03-01", 12, 0)), std::nullopt);
  // Catch-up reaches back ten years at most.
  ScheduleSpec old = Daily(true);
  old.start_date = "2000-01-01";
  EXPECT_EQ(DueRange(old, At("2024-03-10", 12, 0))->first, "2014-03-02");  // 3,660 days before the 9th
}

TEST(Schedule, OnlyDatesWithoutARunAreQueuedAtMostAThousandAPass) {
  EXPECT_EQ(DatesToQueue({"2024-03-01", "2024-03-05"}, {"2024-03-02", "2024-03-04"}),
            (std::vector<std::string>{"2024-03-01", "2024-03-03", "2024-03-05"}));
  EXPECT_TRUE(DatesToQueue({"2024-03-01", "2024-03-02"}, {"2024-03-01", "2024-03-02"}).empty());
  const auto many = DatesToQueue({"2014-01-01", "2024-01-01"}, {});
  EXPECT_EQ(many.size(), 1000u);
  EXPECT_EQ(many.front(), "2014-01-01");
}

TEST(Schedule, ADeadlineIsHhMmOnTheDayAfterTheDate) {
  const ScheduleSpec sc = Daily(false, "06:00");
  EXPECT_FALSE(DeadlinePassed(sc, "2024-03-09", At("2024-03-10", 5, 59)));
  EXPECT_TRUE(DeadlinePassed(sc, "2024-03-09", At("2024-03-10", 6, 0)));
  EXPECT_TRUE(DeadlinePassed(sc, "2024-03-09", At("2024-03-11", 0, 0)));
  EXPECT_FALSE(DeadlinePassed(sc, "2024-03-10", At("2024-03-10", 23, 59)));
  EXPECT_FALSE(DeadlinePassed(Daily(false), "2024-03-01", At("2030-01-01", 0, 0)));  // no deadline
}

}  // namespace
}  // namespace strata::controller

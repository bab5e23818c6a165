// The query service's admission gate: a bounded number of warehouse queries, a bounded queue,
// a bounded wait, and no request overtaking one already waiting.
#include "services/query/admission.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>
#include <vector>

namespace strata::query {
namespace {

using namespace std::chrono_literals;
using V = AdmissionGate::Verdict;

AdmissionGate::Clock::time_point In(std::chrono::milliseconds d) { return AdmissionGate::Clock::now() + d; }

TEST(AdmissionGate, AdmitsUpToTheLimitThenShedsWhenNoOneMayWait) {
  AdmissionGate gate(2, 0, 1000ms);
  EXPECT_EQ(gate.Enter(In(10s)), V::kAdmitted);
  EXPECT_EQ(gate.Enter(In(10s)), V::kAdmitted);
  EXPECT_EQ(gate.running(), 2);
  EXPECT_EQ(gate.Enter(In(10s)), V::kQueueFull);  // at once: the queue holds nobody
  gate.Leave();
  EXPECT_EQ(gate.Enter(In(10s)), V::kAdmitted);
  EXPECT_EQ(gate.running(), 2);
}

TEST(AdmissionGate, AWaiterGivesUpAfterMaxWaitOrItsDeadlineWhicheverIsSooner) {
  AdmissionGate gate(1, 4, 50ms);
  ASSERT_EQ(gate.Enter(In(10s)), V::kAdmitted);
  auto t0 = AdmissionGate::Clock::now();
  EXPECT_EQ(gate.Enter(In(10s)), V::kWaitedTooLong);
  EXPECT_GE(AdmissionGate::Clock::now() - t0, 50ms);
  t0 = AdmissionGate::Clock::now();
  EXPECT_EQ(gate.Enter(In(5ms)), V::kWaitedTooLong);  // the deadline, not the 50 ms
  EXPECT_GE(AdmissionGate::Clock::now() - t0, 5ms);
  EXPECT_EQ(gate.waiting(), 0);
  EXPECT_EQ(gate.running(), 1);
}

TEST(AdmissionGate, AWaiterTakesTheSlotFreedWhileItWaits) {
  AdmissionGate gate(1, 1, 60s);
  ASSERT_EQ(gate.Enter(In(60s)), V::kAdmitted);
  std::atomic<int> verdict{-1};
  std::thread waiter([&] { verdict = static_cast<int>(gate.Enter(In(60s))); });
  while (gate.waiting() != 1) std::this_thread::yield();
  // The queue (1) is full now: a third request is refused at once.
  EXPECT_EQ(gate.Enter(In(60s)), V::kQueueFull);
  EXPECT_EQ(verdict.load(), -1);
  gate.Leave();
  waiter.join();
  EXPECT_EQ(verdict.load(), static_cast<int>(V::kAdmitted));
  EXPECT_EQ(gate.running(), 1);
  EXPECT_EQ(gate.waiting(), 0);
}

TEST(AdmissionGate, ANewcomerDoesNotOvertakeAWaiter) {
  AdmissionGate gate(1, 1, 60s);
  ASSERT_EQ(gate.Enter(In(60s)), V::kAdmitted);
  std::atomic<bool> admitted{false};
  std::thread waiter([&] {
    if (gate.Enter(In(60s)) == V::kAdmitted) admitted = true;
  });
  while (gate.waiting() != 1) std::this_thread::yield();
  gate.Leave();
  // Whether or not the waiter has woken yet, the freed slot is its: a newcomer finds either a
  // waiter ahead of it (the queue of one full) or the slot taken, and is not admitted.
  EXPECT_NE(gate.Enter(In(100ms)), V::kAdmitted);
  waiter.join();
  EXPECT_TRUE(admitted.load());
}

TEST(AdmissionGate, NeverMoreThanTheLimitRunUnderContention) {
  AdmissionGate gate(3, 100, 10s);
  std::atomic<int> running{0}, peak{0}, admitted{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < 16; ++i)
    threads.emplace_back([&] {
      for (int k = 0; k < 200; ++k) {
        AdmissionGate::Ticket t(gate, In(10s));
        if (t.verdict() != V::kAdmitted) continue;
        const int now = ++running;
        int p = peak.load();
        while (now > p && !peak.compare_exchange_weak(p, now)) {
        }
        ++admitted;
        --running;
      }
    });
  for (auto& t : threads) t.join();
  EXPECT_LE(peak.load(), 3);
  EXPECT_EQ(admitted.load(), 16 * 200);  // a queue of 100 and 10 s: nobody is shed
  EXPECT_EQ(gate.running(), 0);
}

}  // namespace
}  // namespace strata::query

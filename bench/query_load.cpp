// Closed-loop gRPC load generator for the query service. It keeps `--concurrency` requests in
// flight over `--channels` connections with gRPC's callback API (a new request is issued as
// each answer arrives), which costs the client far less CPU than a thread per request: on a
// 2-core machine the client shares the cores with the server it measures.
//   query_load --target HOST:PORT --token T [--concurrency 16] [--channels 2] [--seconds 5]
//              [--mode cached|uncached]
// cached: every request asks the same DailySales range (served from the cache after the first);
// uncached: every request asks a different range, so each is a cache miss answered by PostgreSQL.
// Prints one JSON object: requests, errors, seconds, rps, p50_ms, p99_ms.
#include <grpcpp/grpcpp.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <functional>
#include <mutex>
#include <chrono>
#include <cstdio>
#include <thread>
#include <vector>

#include "common/time_util.h"
#include "strata.grpc.pb.h"

int main(int argc, char** argv) {
  CLI::App app{"query_load"};
  std::string target, token, mode = "cached";
  int concurrency = 16, channels = 2;
  double seconds = 5;
  app.add_option("--target", target)->required();
  app.add_option("--token", token);
  app.add_option("--concurrency", concurrency, "requests in flight");
  app.add_option("--channels", channels, "connections");
  app.add_option("--seconds", seconds);
  app.add_option("--mode", mode)->check(CLI::IsMember({"cached", "uncached"}));
  CLI11_PARSE(app, argc, argv);

  struct Slot {
    grpc::ClientContext* ctx = nullptr;
    strata::v1::DailySalesRequest req;
    strata::v1::DailySalesReply reply;
    std::chrono::steady_clock::time_point t0;
  };
  std::vector<std::unique_ptr<strata::v1::Query::Stub>> stubs;
  for (int c = 0; c < channels; ++c) {
    grpc::ChannelArguments args;
    args.SetInt("grpc.use_local_subchannel_pool", 1);  // a separate connection per channel
    stubs.push_back(strata::v1::Query::NewStub(grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args)));
  }
  std::mutex mu;
  std::condition_variable cv;
  std::vector<double> all;
  all.reserve(1 << 22);
  std::atomic<long long> errors{0};
  std::atomic<long long> counter{0};
  int active = concurrency;
  const auto start = std::chrono::steady_clock::now();
  const auto end = start + std::chrono::duration<double>(seconds);
  std::vector<Slot> slots(static_cast<size_t>(concurrency));
  std::function<void(size_t)> issue = [&](size_t i) {
    Slot& s = slots[i];
    delete s.ctx;
    s.ctx = new grpc::ClientContext();
    s.ctx->set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    if (!token.empty()) s.ctx->AddMetadata("authorization", "Bearer " + token);
    if (mode == "uncached") {
      // A fresh (from, to) pair per request: ~100k distinct keys.
      const long long n = counter++;
      s.req.set_from(strata::AddDays("2000-01-01", n % 10000));
      s.req.set_to(strata::AddDays(s.req.from(), 1 + (n / 10000) % 10));
    } else {
      s.req.set_from("2024-01-01");
      s.req.set_to("2024-12-31");
    }
    s.reply.Clear();
    s.t0 = std::chrono::steady_clock::now();
    stubs[i % stubs.size()]->async()->DailySales(s.ctx, &s.req, &s.reply, [&, i](grpc::Status st) {
      const auto t1 = std::chrono::steady_clock::now();
      if (!st.ok()) ++errors;
      bool again;
      {
        std::lock_guard<std::mutex> lock(mu);
        all.push_back(std::chrono::duration<double, std::milli>(t1 - slots[i].t0).count());
        again = t1 < end;
        if (!again && --active == 0) cv.notify_all();
      }
      if (again) issue(i);
    });
  };
  for (size_t i = 0; i < slots.size(); ++i) issue(i);
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return active == 0; });
  }
  for (auto& sl : slots) delete sl.ctx;
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::sort(all.begin(), all.end());
  auto pct = [&](double p) { return all.empty() ? 0.0 : all[static_cast<size_t>(p * static_cast<double>(all.size() - 1))]; };
  std::printf("{\"mode\":\"%s\",\"concurrency\":%d,\"requests\":%zu,\"errors\":%lld,\"seconds\":%.2f,\"rps\":%.0f,"
              "\"p50_ms\":%.3f,\"p99_ms\":%.3f}\n",
              mode.c_str(), concurrency, all.size(), errors.load(), elapsed, static_cast<double>(all.size()) / elapsed,
              pct(0.50), pct(0.99));
  return errors.load() == 0 ? 0 : 1;
}

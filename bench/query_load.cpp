// Closed-loop gRPC load generator for the query service. It keeps `--concurrency` requests in
// flight over `--channels` connections with gRPC's callback API (a new request is issued as
// each answer arrives), which costs the client far less CPU than a thread per request: on a
// 2-core machine the client shares the cores with the server it measures.
//   query_load --target HOST:PORT --token T [--concurrency 16] [--channels 2] [--seconds 5]
//              [--mode cached|uncached] [--rate R]
// cached: every request asks the same daily_sales range (served from the cache after the first);
// uncached: every request asks a different range, so each is a cache miss answered by PostgreSQL.
// Prints one JSON object: requests, errors, seconds, rps, p50_ms, p99_ms.
//
// With --rate the load is open-loop instead: R requests/s are issued on a fixed schedule whatever
// the answers do (as independent users would), which is how overload is seen: a closed loop slows
// down with the server and never offers more than it can take. It prints offered and answered
// rates, how many were shed (UNAVAILABLE) or ran out of time, and the answered requests' latency.
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

namespace {

using Stubs = std::vector<std::unique_ptr<strata::v1::Query::Stub>>;

// The demo's daily_sales endpoint.
void FillRequest(const std::string& mode, long long n, strata::v1::CallRequest* req) {
  req->set_endpoint("daily_sales");
  auto& p = *req->mutable_params();
  if (mode == "uncached") {
    // A fresh (from, to) pair per request: ~100k distinct keys.
    p["from"] = strata::AddDays("2000-01-01", n % 10000);
    p["to"] = strata::AddDays(p["from"], 1 + (n / 10000) % 10);
  } else {
    p["from"] = "2024-01-01";
    p["to"] = "2024-12-31";
  }
}

int OpenLoop(const Stubs& stubs, const std::string& token, const std::string& mode, double rate, double seconds) {
  struct Call {
    grpc::ClientContext ctx;
    strata::v1::CallRequest req;
    strata::v1::CallReply reply;
    std::chrono::steady_clock::time_point t0;
  };
  std::mutex mu;
  std::condition_variable cv;
  std::vector<double> ok_ms;
  long long outstanding = 0, shed = 0, deadline = 0, other = 0, issued = 0;
  const auto start = std::chrono::steady_clock::now();
  const auto interval = std::chrono::duration<double>(1.0 / rate);
  for (;; ++issued) {
    const auto due = start + std::chrono::duration_cast<std::chrono::steady_clock::duration>(interval * static_cast<double>(issued));
    if (due - start >= std::chrono::duration<double>(seconds)) break;
    std::this_thread::sleep_until(due);
    auto* c = new Call();
    c->ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    if (!token.empty()) c->ctx.AddMetadata("authorization", "Bearer " + token);
    FillRequest(mode, issued, &c->req);
    c->t0 = std::chrono::steady_clock::now();
    {
      std::lock_guard<std::mutex> lock(mu);
      ++outstanding;
    }
    stubs[static_cast<size_t>(issued) % stubs.size()]->async()->Call(&c->ctx, &c->req, &c->reply, [&, c](grpc::Status st) {
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - c->t0).count();
      delete c;
      std::lock_guard<std::mutex> lock(mu);
      if (st.ok()) ok_ms.push_back(ms);
      // Refused at capacity: by the service's admission gate (UNAVAILABLE) or, past its bound
      // on calls in flight, by gRPC itself (RESOURCE_EXHAUSTED).
      else if (st.error_code() == grpc::StatusCode::UNAVAILABLE || st.error_code() == grpc::StatusCode::RESOURCE_EXHAUSTED) ++shed;
      else if (st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED) ++deadline;
      else ++other;
      if (--outstanding == 0) cv.notify_all();
    });
  }
  const double offered_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  {
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return outstanding == 0; });
  }
  const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  std::sort(ok_ms.begin(), ok_ms.end());
  auto pct = [&](double p) { return ok_ms.empty() ? 0.0 : ok_ms[static_cast<size_t>(p * static_cast<double>(ok_ms.size() - 1))]; };
  std::printf("{\"mode\":\"%s\",\"target_rps\":%.0f,\"issued\":%lld,\"offered_rps\":%.0f,\"ok\":%zu,"
              "\"answered_rps\":%.0f,\"shed\":%lld,\"deadline_exceeded\":%lld,\"other_errors\":%lld,"
              "\"seconds\":%.2f,\"p50_ms\":%.3f,\"p99_ms\":%.3f}\n",
              mode.c_str(), rate, issued, static_cast<double>(issued) / offered_s, ok_ms.size(),
              static_cast<double>(ok_ms.size()) / elapsed, shed, deadline, other, elapsed, pct(0.50), pct(0.99));
  return other == 0 ? 0 : 1;
}

}  // namespace

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
  double rate = 0;
  app.add_option("--rate", rate, "open loop: requests/s offered");
  CLI11_PARSE(app, argc, argv);

  struct Slot {
    grpc::ClientContext* ctx = nullptr;
    strata::v1::CallRequest req;
    strata::v1::CallReply reply;
    std::chrono::steady_clock::time_point t0;
  };
  Stubs stubs;
  for (int c = 0; c < channels; ++c) {
    grpc::ChannelArguments args;
    args.SetInt("grpc.use_local_subchannel_pool", 1);  // a separate connection per channel
    stubs.push_back(strata::v1::Query::NewStub(grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args)));
  }
  if (rate > 0) return OpenLoop(stubs, token, mode, rate, seconds);
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
    FillRequest(mode, counter++, &s.req);
    s.reply.Clear();
    s.t0 = std::chrono::steady_clock::now();
    stubs[i % stubs.size()]->async()->Call(s.ctx, &s.req, &s.reply, [&, i](grpc::Status st) {
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

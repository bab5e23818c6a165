#include "services/query/query_metrics.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

namespace strata::query {

Metrics::Metrics(prometheus::Registry& r)
    : requests(prometheus::BuildCounter().Name("strata_query_requests_total")
                   .Help("Analytics requests, by method, transport and code").Register(r)),
      cache(prometheus::BuildCounter().Name("strata_query_cache_total")
                .Help("Cache lookups, by result (hit_local|hit|miss|shared)").Register(r)),
      backend(prometheus::BuildCounter().Name("strata_query_backend_queries_total")
                  .Help("Queries sent to PostgreSQL, by method").Register(r)),
      degraded(prometheus::BuildCounter().Name("strata_query_degraded_total")
                   .Help("Requests answered without the cache because Redis failed").Register(r)),
      reconnects(prometheus::BuildCounter().Name("strata_query_pg_reconnects_total")
                     .Help("Warehouse connections found broken (e.g. after a restart) and replaced").Register(r)),
      latency(prometheus::BuildHistogram().Name("strata_query_request_duration_seconds")
                  .Help("Request latency by method").Register(r)),
      shed(prometheus::BuildCounter().Name("strata_query_shed_total")
               .Help("Requests refused at capacity, by reason (in_flight: 3/4 of grpc_max_threads calls "
                     "in flight; queue_full: no room to wait for a warehouse slot; wait: no slot within "
                     "query_queue_wait_ms or the deadline)").Register(r)),
      backend_running(prometheus::BuildGauge().Name("strata_query_backend_running")
                          .Help("Warehouse queries running now (at most query_max_backend)").Register(r).Add({})),
      backend_waiting(prometheus::BuildGauge().Name("strata_query_backend_waiting")
                          .Help("Requests waiting for a warehouse slot (at most query_max_queue)").Register(r).Add({})) {
  degraded.Add({});  // exposed as 0 from the start: an absent series cannot be alerted on
  reconnects.Add({});
  shed.Add({{"reason", "queue_full"}});
  shed.Add({{"reason", "wait"}});
  shed.Add({{"reason", "in_flight"}});
}

namespace {

std::string CodeName(grpc::StatusCode c) {
  switch (c) {
    case grpc::StatusCode::OK: return "OK";
    case grpc::StatusCode::INVALID_ARGUMENT: return "INVALID_ARGUMENT";
    case grpc::StatusCode::UNAUTHENTICATED: return "UNAUTHENTICATED";
    case grpc::StatusCode::PERMISSION_DENIED: return "PERMISSION_DENIED";
    case grpc::StatusCode::RESOURCE_EXHAUSTED: return "RESOURCE_EXHAUSTED";
    case grpc::StatusCode::DEADLINE_EXCEEDED: return "DEADLINE_EXCEEDED";
    case grpc::StatusCode::NOT_FOUND: return "NOT_FOUND";
    default: return "UNAVAILABLE";
  }
}

}  // namespace

RequestSeries::RequestSeries(Metrics& metrics, const std::vector<std::string>& endpoints) {
  std::vector<std::string> names = {"unknown"};
  names.insert(names.end(), endpoints.begin(), endpoints.end());
  for (const auto& method : names) {
    Series& s = series_[method];
    for (int t = 0; t < 2; ++t)
      for (size_t c = 0; c < kNumCodes; ++c)
        s.requests[t][c] =
            &metrics.requests.Add({{"method", method}, {"transport", t ? "http" : "grpc"}, {"code", CodeName(kCodes[c])}});
    s.latency = &metrics.latency.Add(
        {{"method", method}},
        prometheus::Histogram::BucketBoundaries{0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1});
  }
}

void RequestSeries::Count(const std::string& endpoint, bool http, grpc::StatusCode code, double seconds) const {
  auto it = series_.find(endpoint);
  if (it == series_.end()) it = series_.find("unknown");
  size_t c = kNumCodes - 1;
  for (size_t i = 0; i < kNumCodes; ++i)
    if (kCodes[i] == code) c = i;
  it->second.requests[http ? 1 : 0][c]->Increment();
  it->second.latency->Observe(seconds);
}

}  // namespace strata::query

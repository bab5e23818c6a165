// The query service's Prometheus metrics: families registered once, and each endpoint's request
// series resolved at start-up so the hot path (a cached answer is a few microseconds) takes no
// label lookup.
#pragma once
#include <grpcpp/support/status.h>

#include <map>
#include <string>
#include <vector>

namespace prometheus {
class Counter;
class Gauge;
class Histogram;
class Registry;
template <typename T>
class Family;
}  // namespace prometheus

namespace strata::query {

struct Metrics {
  explicit Metrics(prometheus::Registry& r);
  prometheus::Family<prometheus::Counter>& requests;
  prometheus::Family<prometheus::Counter>& cache;
  prometheus::Family<prometheus::Counter>& backend;
  prometheus::Family<prometheus::Counter>& degraded;
  prometheus::Family<prometheus::Counter>& reconnects;
  prometheus::Family<prometheus::Histogram>& latency;
  prometheus::Family<prometheus::Counter>& shed;
  prometheus::Gauge& backend_running;
  prometheus::Gauge& backend_waiting;
};

// strata_query_requests_total{method, transport, code} and the latency histogram per endpoint
// (`method` is the endpoint's name; calls naming no endpoint count as "unknown").
class RequestSeries {
 public:
  RequestSeries(Metrics& metrics, const std::vector<std::string>& endpoints);
  // Counts one call; a code outside the usual ones is counted as UNAVAILABLE.
  void Count(const std::string& endpoint, bool http, grpc::StatusCode code, double seconds) const;

 private:
  static constexpr grpc::StatusCode kCodes[] = {
      grpc::StatusCode::OK, grpc::StatusCode::INVALID_ARGUMENT, grpc::StatusCode::UNAUTHENTICATED,
      grpc::StatusCode::PERMISSION_DENIED, grpc::StatusCode::RESOURCE_EXHAUSTED, grpc::StatusCode::DEADLINE_EXCEEDED,
      grpc::StatusCode::NOT_FOUND, grpc::StatusCode::UNAVAILABLE};
  static constexpr size_t kNumCodes = sizeof(kCodes) / sizeof(kCodes[0]);
  struct Series {
    prometheus::Counter* requests[2][kNumCodes];
    prometheus::Histogram* latency;
  };
  std::map<std::string, Series> series_;
};

}  // namespace strata::query

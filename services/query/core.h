// The query service's core, shared by its gRPC service and HTTP/JSON gateway so both give the
// same answers: a declared endpoint's call is authorized (token, role, per-token rate), its
// parameters bound (endpoint_call.h), and its answer taken from the process cache, Redis, or the
// warehouse — one query for identical concurrent misses, within a bounded number of warehouse
// slots (admission.h), shed past capacity.
//
// Cache policies: `published` answers are keyed by the publish version (serving.publications),
// so a publish makes older ones unreachable at once; `realtime` ones live at most the
// endpoint's staleness; `none` are not kept. With Redis down, answers come straight from the
// warehouse (strata_query_degraded_total).
#pragma once
#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/bus.h"
#include "common/config.h"
#include "common/endpoint.h"
#include "common/pg.h"
#include "common/token_bucket.h"
#include "services/query/access.h"
#include "services/query/admission.h"
#include "services/query/local_cache.h"
#include "services/query/query_metrics.h"
#include "services/query/replicas.h"
#include "strata.pb.h"

namespace strata::query {

struct Call {
  std::string method;     // the endpoint's name
  std::string transport;  // grpc | http
  std::string token;
  std::chrono::system_clock::time_point deadline;
};

class QueryCore {
 public:
  QueryCore(const Config& config, std::vector<ApiEndpoint> endpoints, std::string pipeline, prometheus::Registry& registry);

  void Start() {
    version_.Start();
    replicas_.Start();
  }
  void Stop() {
    replicas_.Stop();
    version_.Stop();
  }
  const std::vector<ApiEndpoint>& endpoints() const { return endpoints_; }

  // One call of `req.endpoint()`: the rows, or a status a client can act on (NOT_FOUND,
  // UNAUTHENTICATED, PERMISSION_DENIED, RESOURCE_EXHAUSTED, INVALID_ARGUMENT naming the
  // parameter, DEADLINE_EXCEEDED, UNAVAILABLE when shed or the warehouse is down).
  grpc::Status Handle(const Call& call, const v1::CallRequest& req, v1::CallReply* reply);
  // Every endpoint, with its columns once the warehouse can describe them.
  void List(v1::ListEndpointsReply* reply);

 private:
  using Fill = std::function<void(pqxx::transaction_base&)>;
  struct Lookup {
    bool hit = false;
    std::string key;          // where the answer is cached
    std::string version = "0";  // the publish version it belongs to (published)
    bool redis_ok = true;
  };

  const ApiEndpoint* Find(const std::string& name) const;
  grpc::Status Authorize(const Call& call, const ApiEndpoint& e);
  grpc::Status Run(const Call& call, const ApiEndpoint& e, const v1::CallRequest& req, v1::CallReply* reply);
  std::vector<v1::Column> Describe(const ApiEndpoint& e);

  // answer_cache.cpp
  grpc::Status Cached(const Call& call, const ApiEndpoint& e, const std::string& params, v1::CallReply* reply, const Fill& fill);
  Lookup LookUp(const Call& call, const ApiEndpoint& e, const std::string& params, v1::CallReply* reply);
  // `version`: the publish version a published answer belongs to (read from a replica that has
  // replayed it, or the primary); nullopt reads the primary.
  grpc::Status FromWarehouse(const Call& call, bool has_params, std::optional<long long> version, v1::CallReply* reply,
                             const Fill& fill);
  void Store(const ApiEndpoint& e, const std::string& key, const std::string& bytes);
  std::optional<long long> WarehouseVersion();
  grpc::Status Admit(const Call& call);
  grpc::Status Shed(const char* reason, const std::string& message);
  RedisClient& Redis() { return *redis_[next_redis_++ % redis_.size()]; }

  Config config_;
  std::vector<ApiEndpoint> endpoints_;
  std::string pipeline_;
  Metrics metrics_;
  RequestSeries series_;
  prometheus::Counter* hit_local_ = nullptr;
  PgPool pool_;          // the primary: the published version, realtime reads, replicas behind
  ReplicaSet replicas_;  // hot standbys for published answers (query_replica_dsns)
  AdmissionGate gate_;   // the endpoints' warehouse queries (not the version lookups)
  std::atomic<int> in_flight_{0};
  const int max_in_flight_;
  LocalCache local_;
  VersionWatcher version_;
  std::vector<std::unique_ptr<RedisClient>> redis_;
  std::atomic<unsigned> next_redis_{0};
  std::mutex buckets_mu_;
  std::map<std::string, TokenBucket> buckets_;
  std::mutex described_mu_;
  std::map<std::string, std::vector<v1::Column>> described_;
  std::map<std::string, std::chrono::steady_clock::time_point> undescribed_;  // the last failed attempt
  std::mutex flight_mu_;
  std::map<std::string, std::shared_future<std::pair<grpc::Status, std::string>>> inflight_;
};

}  // namespace strata::query

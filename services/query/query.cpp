#include "services/query/query.h"

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <httplib.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <chrono>
#include <future>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <thread>
#include <unordered_map>

#include "common/bus.h"
#include "common/config.h"
#include "common/errors.h"
#include "common/http_server.h"
#include "common/pg.h"
#include "common/spec.h"
#include "common/time_util.h"
#include "services/query/access.h"
#include "services/query/admission.h"
#include "services/query/endpoint_call.h"
#include "services/query/openapi.h"
#include "strata.grpc.pb.h"

namespace strata::query {

std::string CacheKey(long long version, const std::string& endpoint, const std::string& params) {
  return "strata:q:v" + std::to_string(version) + ":" + endpoint + ":" + params;
}

std::string RealtimeCacheKey(const std::string& endpoint, const std::string& params) {
  return "strata:q:rt:" + endpoint + ":" + params;
}

namespace {

namespace pb = strata::v1;
using Clock = std::chrono::system_clock;

// One round trip: read the published version and the entry cached under it. An empty reply
// means the version key is gone (Redis restarted empty): it is derived again from the warehouse.
const char* kLookupScript =
    "local v = redis.call('GET', KEYS[1]) "
    "if not v then return {} end "
    "return {v, redis.call('GET', 'strata:q:v' .. v .. ':' .. ARGV[1])}";

struct Metrics {
  explicit Metrics(prometheus::Registry& r)
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

// Process-local copy of recent answers, keyed like Redis (version included) so a publish
// makes them unreachable the moment the version watcher sees it. Sharded to keep lock hold
// times short; a full shard is simply cleared (answers are cheap to fetch again).
class LocalCache {
 public:
  explicit LocalCache(int ttl_seconds) : ttl_(std::chrono::seconds(ttl_seconds)) {}
  bool Get(const std::string& key, std::string* out) {
    Shard& s = ShardFor(key);
    std::lock_guard<std::mutex> lock(s.mu);
    auto it = s.entries.find(key);
    if (it == s.entries.end() || std::chrono::steady_clock::now() > it->second.expires) return false;
    *out = it->second.bytes;
    return true;
  }
  // `ttl` bounds a realtime answer's age below the cache's own TTL.
  void Put(const std::string& key, const std::string& bytes,
           std::optional<std::chrono::milliseconds> ttl = std::nullopt) {
    Shard& s = ShardFor(key);
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.entries.size() >= kMaxPerShard) s.entries.clear();
    const std::chrono::steady_clock::duration life = ttl ? std::min<std::chrono::steady_clock::duration>(*ttl, ttl_) : ttl_;
    s.entries[key] = {bytes, std::chrono::steady_clock::now() + life};
  }

 private:
  static constexpr size_t kShards = 16, kMaxPerShard = 1024;
  struct Entry {
    std::string bytes;
    std::chrono::steady_clock::time_point expires;
  };
  struct Shard {
    std::mutex mu;
    std::unordered_map<std::string, Entry> entries;
  };
  Shard& ShardFor(const std::string& key) { return shards_[std::hash<std::string>{}(key) % kShards]; }
  std::chrono::steady_clock::duration ttl_;
  Shard shards_[kShards];
};

struct Call {
  std::string method;
  std::string transport;  // grpc | http
  std::string token;
  Clock::time_point deadline;
};

grpc::Status Invalid(const std::string& msg) { return {grpc::StatusCode::INVALID_ARGUMENT, msg}; }

// The declared endpoints, served identically to the gRPC service and the HTTP/JSON gateway so
// both give the same answers.
class QueryCore {
 public:
  QueryCore(const Config& config, std::vector<ApiEndpoint> endpoints, prometheus::Registry& registry)
      : config_(config), endpoints_(std::move(endpoints)), metrics_(registry),
        pool_(config.warehouse_dsn, 16,
              [this](const std::string& why) {
                metrics_.reconnects.Add({}).Increment();
                spdlog::warn("warehouse connection replaced: {}", why);
              }),
        gate_(config.query_max_backend, config.query_max_queue, std::chrono::milliseconds(config.query_queue_wait_ms)),
        local_(config.query_cache_ttl_seconds),
        version_(config.redis_url, kPublishVersionKey, [this] { return WarehouseVersion(); }) {
    for (int i = 0; i < 8; ++i) redis_.push_back(std::make_unique<RedisClient>(config.redis_url, 500));
    if (config_.query_tokens.empty())
      spdlog::warn("query authentication is off: STRATA_QUERY_TOKENS is not set");
    BuildSeries();
  }

  void Start() { version_.Start(); }
  void Stop() { version_.Stop(); }

  const std::vector<ApiEndpoint>& endpoints() const { return endpoints_; }

  const ApiEndpoint* Find(const std::string& name) const {
    for (const auto& e : endpoints_)
      if (e.name == name) return &e;
    return nullptr;
  }

  grpc::Status Handle(const Call& call, const pb::CallRequest& req, pb::CallReply* reply) {
    const auto start = std::chrono::steady_clock::now();
    const ApiEndpoint* endpoint = Find(req.endpoint());
    // Calls in flight are bounded below gRPC's own bound (grpc_max_threads), so past capacity
    // the excess is refused here, at once and counted, before it queues on Redis or the
    // warehouse; gRPC's refusal (uncounted) stays a backstop.
    struct InFlight {
      std::atomic<int>& n;
      ~InFlight() { --n; }
    } in_flight{in_flight_};
    grpc::Status st;
    if (++in_flight_ > max_in_flight_)
      st = Shed("in_flight", "the query service is at capacity (" + std::to_string(max_in_flight_) +
                                 " calls in flight); retry shortly");
    else if (Clock::now() >= call.deadline)
      st = {grpc::StatusCode::DEADLINE_EXCEEDED, "the call's deadline had passed on arrival"};
    else if (!endpoint)
      st = {grpc::StatusCode::NOT_FOUND, "unknown endpoint " + QuoteForMessage(req.endpoint()) + " (ListEndpoints lists them)"};
    else
      st = Authorize(call, *endpoint);
    if (st.ok()) st = Run(call, *endpoint, req, reply);
    const Series& series = SeriesFor(endpoint ? endpoint->name : "unknown");
    series.requests[call.transport == "http" ? 1 : 0][CodeIndex(st.error_code())]->Increment();
    series.latency->Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    return st;
  }

  // Every endpoint with its columns (described by the warehouse once the tables exist).
  void List(pb::ListEndpointsReply* reply) {
    for (const auto& e : endpoints_) {
      auto* info = reply->add_endpoints();
      info->set_name(e.name);
      info->set_path(e.path);
      info->set_description(e.description);
      info->set_pipeline(pipeline_);
      for (const auto& p : e.params) {
        auto* q = info->add_params();
        q->set_name(p.name);
        q->set_type(p.type);
        q->set_required(p.required);
        q->set_default_value(p.default_value.value_or(""));
        q->set_min(p.min.value_or(""));
        q->set_max(p.max.value_or(""));
        for (const auto& a : p.allowed) q->add_allowed(a);
        q->set_description(p.description);
      }
      if (e.paged) {
        auto* limit = info->add_params();
        limit->set_name("limit");
        limit->set_type("integer");
        limit->set_default_value(std::to_string(e.default_limit));
        limit->set_min("1");
        limit->set_max(std::to_string(e.max_limit));
        limit->set_description("rows per page");
        auto* token = info->add_params();
        token->set_name("page_token");
        token->set_type("text");
        token->set_description("the previous page's next_page_token");
      }
      for (const auto& c : Describe(e)) *info->add_columns() = c;
      for (const auto& r : e.roles) info->add_roles(r);
      info->set_cache(e.cache);
      info->set_staleness_ms(e.cache == "realtime" ? e.staleness_ms : 0);
      info->set_paged(e.paged);
      info->set_result(e.result);
    }
  }

  void set_pipeline(const std::string& name) { pipeline_ = name; }

 private:
  // Label lookups take a lock and hash the labels; resolving every series once keeps the hot
  // path (a cached answer is a few microseconds) free of them.
  static constexpr grpc::StatusCode kCodes[] = {
      grpc::StatusCode::OK, grpc::StatusCode::INVALID_ARGUMENT, grpc::StatusCode::UNAUTHENTICATED,
      grpc::StatusCode::PERMISSION_DENIED, grpc::StatusCode::RESOURCE_EXHAUSTED, grpc::StatusCode::DEADLINE_EXCEEDED,
      grpc::StatusCode::NOT_FOUND, grpc::StatusCode::UNAVAILABLE};
  static constexpr size_t kNumCodes = sizeof(kCodes) / sizeof(kCodes[0]);
  struct Series {
    prometheus::Counter* requests[2][kNumCodes];
    prometheus::Histogram* latency;
  };

  static size_t CodeIndex(grpc::StatusCode c) {
    for (size_t i = 0; i < kNumCodes; ++i)
      if (kCodes[i] == c) return i;
    return kNumCodes - 1;  // everything else is reported as UNAVAILABLE
  }

  void BuildSeries() {
    std::vector<std::string> names = {"unknown"};
    for (const auto& e : endpoints_) names.push_back(e.name);
    for (const auto& method : names) {
      Series& s = series_[method];
      for (int t = 0; t < 2; ++t)
        for (size_t c = 0; c < kNumCodes; ++c)
          s.requests[t][c] = &metrics_.requests.Add(
              {{"method", method}, {"transport", t ? "http" : "grpc"}, {"code", CodeName(kCodes[c])}});
      s.latency = &metrics_.latency.Add(
          {{"method", method}}, prometheus::Histogram::BucketBoundaries{0.0001, 0.00025, 0.0005, 0.001, 0.0025,
                                                                        0.005, 0.01, 0.05, 0.25, 1});
    }
    hit_local_ = &metrics_.cache.Add({{"result", "hit_local"}});
  }

  const Series& SeriesFor(const std::string& method) const { return series_.at(method); }

  static std::string CodeName(grpc::StatusCode c) {
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

  grpc::Status Authorize(const Call& call, const ApiEndpoint& e) {
    std::string bucket_key = "anonymous";
    if (!config_.query_tokens.empty()) {
      if (call.token.empty())
        return {grpc::StatusCode::UNAUTHENTICATED, "missing API token: send 'authorization: Bearer <token>'"};
      auto it = config_.query_tokens.find(call.token);
      if (it == config_.query_tokens.end()) return {grpc::StatusCode::UNAUTHENTICATED, "unknown API token"};
      if (!e.roles.empty() && std::find(e.roles.begin(), e.roles.end(), it->second) == e.roles.end())
        return {grpc::StatusCode::PERMISSION_DENIED, "role '" + it->second + "' may not call " + e.name};
      bucket_key = call.token;
    }
    const double now = std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
    std::lock_guard<std::mutex> lock(buckets_mu_);
    auto it = buckets_.find(bucket_key);
    if (it == buckets_.end())
      it = buckets_.emplace(bucket_key, TokenBucket(config_.query_rate_limit_rps, 2.0 * config_.query_rate_limit_rps))
               .first;
    if (!it->second.Take(now))
      return {grpc::StatusCode::RESOURCE_EXHAUSTED,
              "rate limit of " + std::to_string(config_.query_rate_limit_rps) + " requests/s exceeded for this token"};
    return grpc::Status::OK;
  }

  RedisClient& Redis() { return *redis_[next_redis_++ % redis_.size()]; }

  // The warehouse's published version: what cache keys are derived from, whatever Redis holds.
  // nullopt when the warehouse cannot say (unreachable).
  std::optional<long long> WarehouseVersion() {
    try {
      long long v = 0;
      pool_.With([&](pqxx::connection& c) {
        pqxx::read_transaction tx(c);
        v = tx.exec("SELECT coalesce(max(version), 0) FROM serving.publications")[0][0].as<long long>();
      });
      return v;
    } catch (const pqxx::undefined_table&) {
      return 0;  // nothing published yet
    } catch (const std::exception& e) {
      spdlog::debug("cannot read the published version: {}", e.what());
      return std::nullopt;
    }
  }

  // Cache-aside with single-flight. `fill(tx)` writes the answer into `reply` from PostgreSQL.
  // published: keyed by the publish version, so a publish makes older answers unreachable;
  // realtime: keyed without it and kept at most the endpoint's staleness; none: never cached
  // (identical concurrent calls still share one query).
  template <typename Fill>
  grpc::Status Cached(const Call& call, const ApiEndpoint& e, const std::string& params, pb::CallReply* reply, Fill fill) {
    const std::string suffix = call.method + ":" + params;
    const bool published = e.cache == "published";
    std::optional<std::chrono::milliseconds> life;
    if (!published) life = std::chrono::milliseconds(e.staleness_ms);
    std::string version = "0";
    bool redis_ok = e.cache != "none";
    {
      std::string bytes;
      const std::string local_key = published ? "strata:q:v" + std::to_string(version_.version()) + ":" + suffix
                                              : RealtimeCacheKey(call.method, params);
      if (redis_ok && (!published || version_.known()) && local_.Get(local_key, &bytes) && reply->ParseFromString(bytes)) {
        reply->set_cached(true);
        hit_local_->Increment();
        return grpc::Status::OK;
      }
    }
    try {
      if (published) {
        const RedisReply r = Redis().Command({"EVAL", kLookupScript, "1", kPublishVersionKey, suffix});
        if (r.type == RedisReply::kArray && !r.elements.empty()) {
          version = r.elements[0].str;
        } else if (const auto v = WarehouseVersion()) {
          version = std::to_string(AnnounceVersion(Redis(), kPublishVersionKey, *v));
        } else {
          throw EnvError("the published version is unknown (Redis lost it and the warehouse cannot say)");
        }
        version_.Observe(std::stoll(version));
        if (r.elements.size() == 2 && r.elements[1].type == RedisReply::kString && reply->ParseFromString(r.elements[1].str)) {
          reply->set_cached(true);
          metrics_.cache.Add({{"result", "hit"}}).Increment();
          local_.Put("strata:q:v" + version + ":" + suffix, r.elements[1].str);
          return grpc::Status::OK;
        }
        metrics_.cache.Add({{"result", "miss"}}).Increment();
      } else if (redis_ok) {
        const RedisReply r = Redis().Command({"GET", RealtimeCacheKey(call.method, params)});
        if (r.type == RedisReply::kString && reply->ParseFromString(r.str)) {
          reply->set_cached(true);
          metrics_.cache.Add({{"result", "hit"}}).Increment();
          local_.Put(RealtimeCacheKey(call.method, params), r.str, life);
          return grpc::Status::OK;
        }
        metrics_.cache.Add({{"result", "miss"}}).Increment();
      }
    } catch (const EnvError& ex) {
      redis_ok = false;
      metrics_.degraded.Add({}).Increment();
      spdlog::warn("degraded: answering without cache endpoint={} error={}", call.method, ex.what());
    }
    const std::string key = published ? "strata:q:v" + version + ":" + suffix
                            : e.cache == "realtime" ? RealtimeCacheKey(call.method, params)
                                                    : "strata:q:none:" + suffix;

    // Single-flight: identical misses wait for the first one's answer instead of all querying.
    std::promise<std::pair<grpc::Status, std::string>> promise;
    std::shared_future<std::pair<grpc::Status, std::string>> shared;
    bool leader = false;
    {
      std::lock_guard<std::mutex> lock(flight_mu_);
      auto it = inflight_.find(key);
      if (it != inflight_.end()) {
        shared = it->second;
      } else {
        shared = promise.get_future().share();
        inflight_.emplace(key, shared);
        leader = true;
      }
    }
    if (!leader) {
      metrics_.cache.Add({{"result", "shared"}}).Increment();
      if (shared.wait_until(call.deadline) == std::future_status::timeout)
        return {grpc::StatusCode::DEADLINE_EXCEEDED, "deadline passed while waiting for an identical query"};
      const auto& [st, bytes] = shared.get();
      if (st.ok()) reply->ParseFromString(bytes);
      return st;
    }

    // Double-check: a leader that finished between our lookup and our flight registration has
    // already cached the answer.
    if (redis_ok) {
      try {
        const RedisReply again = Redis().Command({"GET", key});
        if (again.type == RedisReply::kString && reply->ParseFromString(again.str)) {
          reply->set_cached(true);
          promise.set_value({grpc::Status::OK, again.str});
          std::lock_guard<std::mutex> lock(flight_mu_);
          inflight_.erase(key);
          return grpc::Status::OK;
        }
      } catch (const EnvError&) {
        redis_ok = false;
      }
    }

    grpc::Status st = grpc::Status::OK;
    long long remaining = 0;
    if (Clock::now() >= call.deadline) {
      st = {grpc::StatusCode::DEADLINE_EXCEEDED, "deadline already passed"};
    } else if (auto shed = Admit(call); !shed.ok()) {
      st = shed;
    } else if ((remaining = std::chrono::duration_cast<std::chrono::milliseconds>(call.deadline - Clock::now()).count()) <= 0) {
      // The wait for a slot used the rest of the call's time.
      gate_.Leave();
      metrics_.backend_running.Set(gate_.running());
      st = {grpc::StatusCode::DEADLINE_EXCEEDED, "deadline passed while waiting for a warehouse slot"};
    } else {
      // Admitted: the slot is held until the warehouse answered (or failed).
      struct Release {
        QueryCore& q;
        ~Release() {
          q.gate_.Leave();
          q.metrics_.backend_running.Set(q.gate_.running());
        }
      } release{*this};
      try {
        metrics_.backend.Add({{"method", call.method}}).Increment();
        pool_.With([&](pqxx::connection& c) {
          reply->Clear();  // a retry on a fresh connection starts over
          pqxx::read_transaction tx(c);
          // One round trip for both settings; the deadline becomes the statement timeout.
          tx.exec("SET LOCAL TIME ZONE 'UTC'; SET LOCAL statement_timeout = " + std::to_string(remaining));
          fill(tx);
        });
        if (published) reply->set_version(std::stoll(version));
      } catch (const std::exception& e) {
        // The client gets a code and a message it can act on; PostgreSQL's text goes to the log.
        reply->Clear();
        st = WarehouseFailure(call, e);
      }
    }
    const std::string bytes = st.ok() ? reply->SerializeAsString() : "";
    if (st.ok() && redis_ok) {
      local_.Put(key, bytes, life);
      try {
        if (published) Redis().Command({"SET", key, bytes, "EX", std::to_string(config_.query_cache_ttl_seconds)});
        else Redis().Command({"SET", key, bytes, "PX", std::to_string(e.staleness_ms)});
      } catch (const EnvError&) {
        metrics_.degraded.Add({}).Increment();
      }
    }
    promise.set_value({st, bytes});
    std::lock_guard<std::mutex> lock(flight_mu_);
    inflight_.erase(key);
    return st;
  }

  // Takes a warehouse slot for `call`, or says why the request is shed (the caller may retry:
  // UNAVAILABLE, HTTP 503).
  grpc::Status Admit(const Call& call) {
    const auto steady_deadline =
        AdmissionGate::Clock::now() + std::chrono::duration_cast<AdmissionGate::Clock::duration>(call.deadline - Clock::now());
    metrics_.backend_waiting.Set(gate_.waiting() + 1);
    const AdmissionGate::Verdict v = gate_.Enter(steady_deadline);
    metrics_.backend_waiting.Set(gate_.waiting());
    metrics_.backend_running.Set(gate_.running());
    if (v == AdmissionGate::Verdict::kAdmitted) return grpc::Status::OK;
    if (v == AdmissionGate::Verdict::kQueueFull)
      return Shed("queue_full", "the query service is at capacity (" + std::to_string(config_.query_max_backend) +
                                    " warehouse queries running, " + std::to_string(config_.query_max_queue) +
                                    " waiting); retry shortly");
    return Shed("wait", "the query service is at capacity (no warehouse slot within " +
                            std::to_string(config_.query_queue_wait_ms) + " ms); retry shortly");
  }

  grpc::Status Shed(const char* reason, const std::string& message) {
    metrics_.shed.Add({{"reason", reason}}).Increment();
    return {grpc::StatusCode::UNAVAILABLE, message};
  }

  static grpc::Status WarehouseFailure(const Call& call, const std::exception& e) {
    const auto* sql = dynamic_cast<const pqxx::sql_error*>(&e);
    const std::string state = sql ? sql->sqlstate() : "";
    if (state == "57014") return {grpc::StatusCode::DEADLINE_EXCEEDED, "query exceeded its deadline"};
    if (state.rfind("22", 0) == 0) {
      // Data exception: a parameter passed validation but not PostgreSQL (validation should
      // have caught it; the log says which).
      spdlog::warn("warehouse refused a parameter method={} sqlstate={} error={}", call.method, state, e.what());
      return Invalid("a parameter is outside the range the warehouse accepts");
    }
    spdlog::error("warehouse query failed method={} sqlstate={} error={}", call.method, state, e.what());
    return {grpc::StatusCode::UNAVAILABLE, "the warehouse is unavailable; try again shortly"};
  }

  // ---- an endpoint's answer --------------------------------------------------------------

  grpc::Status Run(const Call& call, const ApiEndpoint& e, const pb::CallRequest& req, pb::CallReply* reply) {
    BoundCall bound;
    try {
      bound = BindCall(e, {req.params().begin(), req.params().end()});
    } catch (const InputError& ex) {
      return {grpc::StatusCode::INVALID_ARGUMENT, ex.what()};
    }
    return Cached(call, e, bound.cache_key, reply, [&](pqxx::transaction_base& tx) {
      std::vector<const char*> values;
      for (const auto& v : bound.values) values.push_back(v ? v->c_str() : nullptr);
      const pqxx::result r = tx.exec_params(bound.sql, pqxx::prepare::make_dynamic_params(values));
      std::vector<std::string> types;
      for (pqxx::row::size_type c = 0; c < r.columns(); ++c) {
        auto* col = reply->add_columns();
        col->set_name(r.column_name(c));
        col->set_type(ColumnTypeOf(r.column_type(c)));
        if (auto it = e.columns.find(col->name()); it != e.columns.end()) col->set_description(it->second);
        types.push_back(col->type());
      }
      const size_t rows = e.paged ? std::min<size_t>(r.size(), static_cast<size_t>(bound.limit)) : r.size();
      for (size_t i = 0; i < rows; ++i) {
        auto* row = reply->add_rows();
        for (pqxx::row::size_type c = 0; c < r.columns(); ++c)
          SetCell(types[c], r[i][c].c_str(), r[i][c].is_null(), row->add_cells());
      }
      if (e.paged && r.size() > rows) reply->set_next_page_token(EncodePageToken(bound.offset + bound.limit));
    });
  }

  // The endpoint's columns, asked of the warehouse until it can say (its tables may not exist
  // before the first run), then remembered.
  std::vector<pb::Column> Describe(const ApiEndpoint& e) {
    {
      std::lock_guard<std::mutex> lock(described_mu_);
      if (auto it = described_.find(e.name); it != described_.end()) return it->second;
    }
    std::vector<pb::Column> cols;
    try {
      pool_.With([&](pqxx::connection& c) {
        cols.clear();
        pqxx::read_transaction tx(c);
        tx.exec("SET LOCAL statement_timeout = 5000");
        const pqxx::result r = tx.exec(DescribeSql(e));
        for (pqxx::row::size_type i = 0; i < r.columns(); ++i) {
          pb::Column col;
          col.set_name(r.column_name(i));
          col.set_type(ColumnTypeOf(r.column_type(i)));
          if (auto it = e.columns.find(col.name()); it != e.columns.end()) col.set_description(it->second);
          cols.push_back(col);
        }
      });
    } catch (const std::exception& ex) {
      spdlog::debug("cannot describe endpoint {} yet: {}", e.name, ex.what());
      return {};
    }
    std::lock_guard<std::mutex> lock(described_mu_);
    described_[e.name] = cols;
    return cols;
  }

  Config config_;
  std::vector<ApiEndpoint> endpoints_;
  std::string pipeline_;
  Metrics metrics_;
  PgPool pool_;  // every warehouse query, the published version included
  AdmissionGate gate_;  // the analytics' warehouse queries (not the version lookups)
  std::atomic<int> in_flight_{0};
  const int max_in_flight_ = std::max(1, config_.grpc_max_threads * 3 / 4);
  LocalCache local_;
  VersionWatcher version_;
  std::map<std::string, Series> series_;
  prometheus::Counter* hit_local_ = nullptr;
  std::vector<std::unique_ptr<RedisClient>> redis_;
  std::atomic<unsigned> next_redis_{0};
  std::mutex buckets_mu_;
  std::map<std::string, TokenBucket> buckets_;
  std::mutex described_mu_;
  std::map<std::string, std::vector<pb::Column>> described_;
  std::mutex flight_mu_;
  std::map<std::string, std::shared_future<std::pair<grpc::Status, std::string>>> inflight_;
};

std::string BearerToken(const std::string& header) {
  const std::string prefix = "Bearer ";
  return header.rfind(prefix, 0) == 0 ? header.substr(prefix.size()) : "";
}

class QueryImpl final : public Component, public pb::Query::Service {
 public:
  QueryImpl(const Config& config, const PipelineSpec& spec, prometheus::Registry& registry)
      : config_(config), core_(config, spec.endpoints, registry) {
    if (config_.warehouse_dsn.empty()) throw InputError("warehouse_dsn (STRATA_PG_DSN) is not configured");
    core_.set_pipeline(spec.name);
    if (spec.endpoints.empty()) spdlog::warn("pipeline {} declares no endpoints: the query service answers none", spec.name);
  }

  std::vector<grpc::Service*> GrpcServices() override { return {this}; }

  void Start() override {
    core_.Start();
    const std::string& listen = config_.endpoint("query").http;
    if (listen.empty()) return;
    RegisterRoutes();
    http_.Start(listen, "query HTTP gateway", config_.reuse_port);
    spdlog::info("http gateway listening on {} ({} endpoints)", listen, core_.endpoints().size());
  }

  void Stop() override {
    http_.Stop();
    core_.Stop();
  }

  grpc::Status Call(grpc::ServerContext* ctx, const pb::CallRequest* req, pb::CallReply* reply) override {
    return core_.Handle(GrpcCall(req->endpoint(), ctx), *req, reply);
  }

  grpc::Status ListEndpoints(grpc::ServerContext*, const pb::ListEndpointsRequest*, pb::ListEndpointsReply* reply) override {
    core_.List(reply);
    return grpc::Status::OK;
  }

 private:
  struct Call GrpcCall(const std::string& endpoint, grpc::ServerContext* ctx) {
    struct Call call{endpoint, "grpc", "", Clock::now() + std::chrono::milliseconds(config_.query_timeout_ms)};
    auto it = ctx->client_metadata().find("authorization");
    if (it != ctx->client_metadata().end()) call.token = BearerToken(std::string(it->second.data(), it->second.size()));
    // The client's deadline wins when it is sooner than ours.
    if (ctx->deadline() < call.deadline) call.deadline = ctx->deadline();
    return call;
  }

  // ---- HTTP/JSON gateway ------------------------------------------------------------------

  static void SendJson(httplib::Response& res, int status, const std::string& body) {
    res.status = status;
    res.set_content(body + "\n", "application/json");
  }

  static void SendError(httplib::Response& res, const grpc::Status& st) {
    static const char* kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                   "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                   "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                                   "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
    const int code = static_cast<int>(st.error_code());
    const nlohmann::json body = {
        {"error", {{"code", code >= 0 && code <= 16 ? kNames[code] : "UNKNOWN"}, {"message", st.error_message()}}}};
    // Shed load and a warehouse restart are both worth retrying soon; say when.
    if (st.error_code() == grpc::StatusCode::UNAVAILABLE) res.set_header("Retry-After", "1");
    // Any byte a message carries stays valid JSON (invalid UTF-8 becomes U+FFFD).
    SendJson(res, HttpStatusFor(code), body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  }

  void Serve(const ApiEndpoint& e, const httplib::Request& http_req, httplib::Response& res) {
    struct Call call{e.name, "http", BearerToken(http_req.get_header_value("Authorization")),
                     Clock::now() + std::chrono::milliseconds(config_.query_timeout_ms)};
    pb::CallRequest req;
    req.set_endpoint(e.name);
    // A repeated parameter: its first value (as one value per name is all an endpoint takes).
    for (const auto& [name, value] : http_req.params) req.mutable_params()->insert({name, value});
    pb::CallReply reply;
    const grpc::Status st = core_.Handle(call, req, &reply);
    if (!st.ok()) return SendError(res, st);
    SendJson(res, 200, ReplyJson(e, reply));
  }

  void RegisterRoutes() {
    http_.server().Get("/health", [](const httplib::Request&, httplib::Response& res) {
      SendJson(res, 200, "{\"status\":\"SERVING\"}");
    });
    // What the endpoints are: public, like the declarations they come from.
    http_.server().Get("/openapi.json", [this](const httplib::Request&, httplib::Response& res) {
      pb::ListEndpointsReply list;
      core_.List(&list);
      SendJson(res, 200, OpenApiJson(list, "strata query API"));
    });
    http_.server().Get("/endpoints", [this](const httplib::Request&, httplib::Response& res) {
      pb::ListEndpointsReply list;
      core_.List(&list);
      std::string json;
      google::protobuf::util::JsonPrintOptions opts;
      opts.preserve_proto_field_names = true;
      opts.always_print_primitive_fields = true;
      google::protobuf::util::MessageToJsonString(list, &json, opts);
      SendJson(res, 200, json);
    });
    for (const auto& e : core_.endpoints())
      http_.server().Get(e.path, [this, &e](const httplib::Request& r, httplib::Response& res) { Serve(e, r, res); });
  }

  Config config_;
  QueryCore core_;
  HttpListener http_;
};

}  // namespace

std::unique_ptr<Component> MakeQuery(const Config& config, prometheus::Registry& registry) {
  return std::make_unique<QueryImpl>(config, LoadPipelineSpec(config.pipeline_spec), registry);
}

}  // namespace strata::query

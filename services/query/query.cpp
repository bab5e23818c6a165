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
#include "common/time_util.h"
#include "services/query/access.h"
#include "services/query/admission.h"
#include "strata.grpc.pb.h"

namespace strata::query {

std::string CacheKey(long long version, const std::string& method, const std::string& params) {
  return "strata:q:v" + std::to_string(version) + ":" + method + ":" + params;
}

namespace {

namespace pb = strata::v1;
using Clock = std::chrono::system_clock;

const std::set<std::string> kStatuses = {"open", "shipped", "delivered", "cancelled"};

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
  void Put(const std::string& key, const std::string& bytes) {
    Shard& s = ShardFor(key);
    std::lock_guard<std::mutex> lock(s.mu);
    if (s.entries.size() >= kMaxPerShard) s.entries.clear();
    s.entries[key] = {bytes, std::chrono::steady_clock::now() + ttl_};
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

grpc::Status CheckLimit(int requested, int fallback, int* out) {
  if (requested < 0) return Invalid("limit: must not be negative, got " + std::to_string(requested));
  if (requested > 1000) return Invalid("limit: at most 1000, got " + std::to_string(requested));
  *out = requested == 0 ? fallback : requested;
  return grpc::Status::OK;
}

// Client values appear in messages only through QuoteForMessage: a short, escaped prefix.
grpc::Status CheckStatus(const std::string& status) {
  if (status.empty() || kStatuses.count(status)) return grpc::Status::OK;
  return Invalid("status: unknown status " + QuoteForMessage(status) + " (known: open, shipped, delivered, cancelled)");
}

grpc::Status CheckDate(const char* name, const std::string& ds) {
  if (IsValidDate(ds)) return grpc::Status::OK;
  return Invalid(std::string(name) + ": expected a date YYYY-MM-DD from 0001-01-01 to 9999-12-31, got " +
                 QuoteForMessage(ds));
}

grpc::Status CheckRange(const std::string& from, const std::string& to) {
  if (auto st = CheckDate("from", from); !st.ok()) return st;
  if (auto st = CheckDate("to", to); !st.ok()) return st;
  if (from > to) return Invalid("from: must not be after to (" + from + " > " + to + ")");
  return grpc::Status::OK;
}

grpc::Status CheckPage(const std::string& token, long long* offset) {
  if (!DecodePageToken(token, offset)) return Invalid("page_token: not a token this service issued");
  return grpc::Status::OK;
}

// The analytics, shared verbatim by the gRPC service and the HTTP/JSON gateway so both give
// the same answers.
class QueryCore {
 public:
  QueryCore(const Config& config, prometheus::Registry& registry)
      : config_(config), metrics_(registry),
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

  template <typename Req, typename Reply>
  grpc::Status Handle(const Call& call, const Req& req, Reply* reply) {
    const auto start = std::chrono::steady_clock::now();
    // Calls in flight are bounded below gRPC's own bound (grpc_max_threads), so past capacity
    // the excess is refused here, at once and counted, before it queues on Redis or the
    // warehouse; gRPC's refusal (uncounted) stays a backstop.
    struct InFlight {
      std::atomic<int>& n;
      ~InFlight() { --n; }
    } in_flight{in_flight_};
    grpc::Status st = ++in_flight_ > max_in_flight_
                          ? Shed("in_flight", "the query service is at capacity (" + std::to_string(max_in_flight_) +
                                                  " calls in flight); retry shortly")
                      : Clock::now() >= call.deadline
                          ? grpc::Status{grpc::StatusCode::DEADLINE_EXCEEDED, "the call's deadline had passed on arrival"}
                          : Authorize(call);
    if (st.ok()) st = Dispatch(call, req, reply);
    const Series& series = SeriesFor(call.method);
    series.requests[call.transport == "http" ? 1 : 0][CodeIndex(st.error_code())]->Increment();
    series.latency->Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    return st;
  }

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
    for (const char* method : {"OrdersByStatus", "TopOrders", "TopCustomers", "DailySales", "SalesByProduct",
                               "ReviewChanges", "RatingByPriceLevel"}) {
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

  grpc::Status Authorize(const Call& call) {
    std::string bucket_key = "anonymous";
    if (!config_.query_tokens.empty()) {
      if (call.token.empty())
        return {grpc::StatusCode::UNAUTHENTICATED, "missing API token: send 'authorization: Bearer <token>'"};
      auto it = config_.query_tokens.find(call.token);
      if (it == config_.query_tokens.end()) return {grpc::StatusCode::UNAUTHENTICATED, "unknown API token"};
      if (!RoleAllows(it->second, call.method))
        return {grpc::StatusCode::PERMISSION_DENIED, "role '" + it->second + "' may not call " + call.method};
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
  template <typename Reply, typename Fill>
  grpc::Status Cached(const Call& call, const std::string& params, Reply* reply, Fill fill) {
    const std::string suffix = call.method + ":" + params;
    if (version_.known()) {
      std::string bytes;
      if (local_.Get("strata:q:v" + std::to_string(version_.version()) + ":" + suffix, &bytes) &&
          reply->ParseFromString(bytes)) {
        reply->set_cached(true);
        hit_local_->Increment();
        return grpc::Status::OK;
      }
    }
    std::string version = "0";
    bool redis_ok = true;
    try {
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
    } catch (const EnvError& e) {
      redis_ok = false;
      metrics_.degraded.Add({}).Increment();
      spdlog::warn("degraded: answering without cache method={} error={}", call.method, e.what());
    }
    const std::string key = "strata:q:v" + version + ":" + suffix;

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
      } catch (const std::exception& e) {
        // The client gets a code and a message it can act on; PostgreSQL's text goes to the log.
        reply->Clear();
        st = WarehouseFailure(call, e);
      }
    }
    const std::string bytes = st.ok() ? reply->SerializeAsString() : "";
    if (st.ok() && redis_ok) {
      local_.Put(key, bytes);
      try {
        Redis().Command({"SET", key, bytes, "EX", std::to_string(config_.query_cache_ttl_seconds)});
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

  // ---- the analytics --------------------------------------------------------------------

  grpc::Status Dispatch(const Call& call, const pb::OrdersByStatusRequest& req, pb::OrdersReply* reply) {
    int limit;
    long long offset;
    if (auto st = CheckStatus(req.status()); !st.ok()) return st;
    if (auto st = CheckLimit(req.limit(), 100, &limit); !st.ok()) return st;
    if (auto st = CheckPage(req.page_token(), &offset); !st.ok()) return st;
    return Cached(call, req.status() + "|" + std::to_string(limit) + "|" + std::to_string(offset), reply,
                  [&](pqxx::transaction_base& tx) {
                    FillOrders(tx.exec_params(
                                   "SELECT order_id, customer_id, status, to_char(ordered_at, "
                                   "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), coalesce(amount, 0)::float8 "
                                   "FROM serving.orders_current WHERE ($1 = '' OR status = $1) "
                                   "ORDER BY ordered_at DESC, order_id DESC LIMIT $2 OFFSET $3",
                                   req.status(), limit + 1, offset),
                               limit, offset, reply);
                  });
  }

  grpc::Status Dispatch(const Call& call, const pb::TopOrdersRequest& req, pb::OrdersReply* reply) {
    int limit;
    if (auto st = CheckStatus(req.status()); !st.ok()) return st;
    if (auto st = CheckLimit(req.limit(), 10, &limit); !st.ok()) return st;
    return Cached(call, req.status() + "|" + std::to_string(limit), reply, [&](pqxx::transaction_base& tx) {
      FillOrders(tx.exec_params("SELECT order_id, customer_id, status, to_char(ordered_at, "
                                "'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), coalesce(amount, 0)::float8 "
                                "FROM serving.orders_current WHERE ($1 = '' OR status = $1) AND amount IS NOT NULL "
                                "ORDER BY amount DESC, order_id LIMIT $2",
                                req.status(), limit),
                 limit, -1, reply);
    });
  }

  static void FillOrders(const pqxx::result& r, int limit, long long offset, pb::OrdersReply* reply) {
    for (int i = 0; i < static_cast<int>(r.size()) && i < limit; ++i) {
      auto* o = reply->add_orders();
      o->set_order_id(r[i][0].as<long long>());
      o->set_customer_id(r[i][1].as<long long>());
      o->set_status(r[i][2].c_str());
      o->set_ordered_at(r[i][3].c_str());
      o->set_amount(r[i][4].as<double>());
    }
    if (offset >= 0 && static_cast<int>(r.size()) > limit) reply->set_next_page_token(EncodePageToken(offset + limit));
  }

  grpc::Status Dispatch(const Call& call, const pb::TopCustomersRequest& req, pb::TopCustomersReply* reply) {
    int limit;
    if (auto st = CheckStatus(req.status()); !st.ok()) return st;
    if (auto st = CheckLimit(req.limit(), 10, &limit); !st.ok()) return st;
    return Cached(call, req.status() + "|" + std::to_string(limit), reply, [&](pqxx::transaction_base& tx) {
      const auto r = tx.exec_params(
          "SELECT o.customer_id, coalesce(dc.name, ''), sum(o.amount)::float8, count(*) "
          "FROM serving.orders_current o "
          "LEFT JOIN dwh.dim_customer dc ON dc.customer_id = o.customer_id AND dc.is_current "
          "WHERE ($1 = '' OR o.status = $1) AND o.amount IS NOT NULL "
          "GROUP BY o.customer_id, dc.name ORDER BY sum(o.amount) DESC, o.customer_id LIMIT $2",
          req.status(), limit);
      for (const auto& row : r) {
        auto* c = reply->add_customers();
        c->set_customer_id(row[0].as<long long>());
        c->set_name(row[1].c_str());
        c->set_revenue(row[2].as<double>());
        c->set_orders(row[3].as<long long>());
      }
    });
  }

  grpc::Status Dispatch(const Call& call, const pb::DailySalesRequest& req, pb::DailySalesReply* reply) {
    if (auto st = CheckRange(req.from(), req.to()); !st.ok()) return st;
    return Cached(call, req.from() + "|" + req.to(), reply, [&](pqxx::transaction_base& tx) {
      const auto r = tx.exec_params(
          "SELECT ds::text, orders, units, revenue::float8 FROM serving.daily_sales "
          "WHERE ds BETWEEN $1::date AND $2::date ORDER BY ds",
          req.from(), req.to());
      for (const auto& row : r) {
        auto* d = reply->add_days();
        d->set_ds(row[0].c_str());
        d->set_orders(row[1].as<long long>());
        d->set_units(row[2].as<long long>());
        d->set_revenue(row[3].as<double>());
      }
    });
  }

  grpc::Status Dispatch(const Call& call, const pb::SalesByProductRequest& req, pb::SalesByProductReply* reply) {
    int limit;
    long long offset;
    // Without a range (how the endpoint's users call it) the answer covers every published day.
    const bool all_days = req.from().empty() && req.to().empty();
    if (!all_days)
      if (auto st = CheckRange(req.from(), req.to()); !st.ok()) return st;
    if (auto st = CheckLimit(req.limit(), 20, &limit); !st.ok()) return st;
    if (auto st = CheckPage(req.page_token(), &offset); !st.ok()) return st;
    const std::string from = all_days ? "-infinity" : req.from(), to = all_days ? "infinity" : req.to();
    return Cached(call, from + "|" + to + "|" + std::to_string(limit) + "|" + std::to_string(offset),
                  reply, [&](pqxx::transaction_base& tx) {
                    const auto r = tx.exec_params(
                        "SELECT product_id, coalesce(max(product_name), ''), sum(orders), sum(units), "
                        "sum(revenue)::float8 FROM serving.product_daily_sales WHERE ds BETWEEN $1::date AND $2::date "
                        "GROUP BY product_id ORDER BY sum(revenue) DESC, product_id LIMIT $3 OFFSET $4",
                        from, to, limit + 1, offset);
                    for (int i = 0; i < static_cast<int>(r.size()) && i < limit; ++i) {
                      auto* p = reply->add_products();
                      p->set_product_id(r[i][0].as<long long>());
                      p->set_name(r[i][1].c_str());
                      p->set_orders(r[i][2].as<long long>());
                      p->set_units(r[i][3].as<long long>());
                      p->set_revenue(r[i][4].as<double>());
                    }
                    if (static_cast<int>(r.size()) > limit) reply->set_next_page_token(EncodePageToken(offset + limit));
                  });
  }

  grpc::Status Dispatch(const Call& call, const pb::ReviewChangesRequest& req, pb::ReviewChangesReply* reply) {
    int limit;
    if (auto st = CheckRange(req.from(), req.to()); !st.ok()) return st;
    if (auto st = CheckLimit(req.limit(), 10, &limit); !st.ok()) return st;
    return Cached(call, req.from() + "|" + req.to() + "|" + std::to_string(limit), reply,
                  [&](pqxx::transaction_base& tx) {
                    // The change over (from, to] is the count on `to` minus the count on `from`.
                    const auto r = tx.exec_params(
                        "SELECT t.business_id, coalesce(t.name, ''), t.review_count, "
                        "t.review_count - f.review_count FROM serving.business_review_changes t "
                        "JOIN serving.business_review_changes f ON f.business_id = t.business_id AND f.ds = $1::date "
                        "WHERE t.ds = $2::date ORDER BY 4 DESC, 1 LIMIT $3",
                        req.from(), req.to(), limit);
                    for (const auto& row : r) {
                      auto* b = reply->add_businesses();
                      b->set_business_id(row[0].c_str());
                      b->set_name(row[1].c_str());
                      b->set_review_count(row[2].as<long long>());
                      b->set_change(row[3].as<long long>());
                    }
                  });
  }

  grpc::Status Dispatch(const Call& call, const pb::RatingByPriceLevelRequest& req,
                        pb::RatingByPriceLevelReply* reply) {
    if (!req.ds().empty())
      if (auto st = CheckDate("ds", req.ds()); !st.ok()) return st;
    return Cached(call, req.ds(), reply, [&](pqxx::transaction_base& tx) {
      const auto r = tx.exec_params(
          "SELECT ds::text, price_level, businesses, avg_rating::float8 FROM serving.rating_by_price_level "
          "WHERE ds = CASE WHEN $1 = '' THEN (SELECT max(ds) FROM serving.rating_by_price_level) ELSE $1::date END "
          "ORDER BY price_level",
          req.ds());
      for (const auto& row : r) {
        reply->set_ds(row[0].c_str());
        auto* l = reply->add_levels();
        l->set_price_level(row[1].as<int>());
        l->set_businesses(row[2].as<long long>());
        l->set_avg_rating(row[3].as<double>());
      }
    });
  }

  Config config_;
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
  std::mutex flight_mu_;
  std::map<std::string, std::shared_future<std::pair<grpc::Status, std::string>>> inflight_;
};

std::string BearerToken(const std::string& header) {
  const std::string prefix = "Bearer ";
  return header.rfind(prefix, 0) == 0 ? header.substr(prefix.size()) : "";
}

class QueryImpl final : public Component, public pb::Query::Service {
 public:
  QueryImpl(const Config& config, prometheus::Registry& registry) : config_(config), core_(config, registry) {
    if (config_.warehouse_dsn.empty()) throw InputError("warehouse_dsn (STRATA_PG_DSN) is not configured");
  }

  std::vector<grpc::Service*> GrpcServices() override { return {this}; }

  void Start() override {
    core_.Start();
    const std::string& listen = config_.endpoint("query").http;
    if (listen.empty()) return;
    RegisterRoutes();
    http_.Start(listen, "query HTTP gateway", config_.reuse_port);
    spdlog::info("http gateway listening on {}", listen);
  }

  void Stop() override {
    http_.Stop();
    core_.Stop();
  }

#define STRATA_GRPC_METHOD(Name, Req, Reply)                                                      \
  grpc::Status Name(grpc::ServerContext* ctx, const pb::Req* req, pb::Reply* reply) override {    \
    return core_.Handle(GrpcCall(#Name, ctx), *req, reply);                                        \
  }
  STRATA_GRPC_METHOD(OrdersByStatus, OrdersByStatusRequest, OrdersReply)
  STRATA_GRPC_METHOD(TopOrders, TopOrdersRequest, OrdersReply)
  STRATA_GRPC_METHOD(TopCustomers, TopCustomersRequest, TopCustomersReply)
  STRATA_GRPC_METHOD(DailySales, DailySalesRequest, DailySalesReply)
  STRATA_GRPC_METHOD(SalesByProduct, SalesByProductRequest, SalesByProductReply)
  STRATA_GRPC_METHOD(ReviewChanges, ReviewChangesRequest, ReviewChangesReply)
  STRATA_GRPC_METHOD(RatingByPriceLevel, RatingByPriceLevelRequest, RatingByPriceLevelReply)
#undef STRATA_GRPC_METHOD

 private:
  Call GrpcCall(const char* method, grpc::ServerContext* ctx) {
    Call call{method, "grpc", "", Clock::now() + std::chrono::milliseconds(config_.query_timeout_ms)};
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

  // Parses an integer query parameter; absent means 0 (the method's default).
  static grpc::Status IntParam(const httplib::Request& req, const char* name, int* out) {
    *out = 0;
    if (!req.has_param(name)) return grpc::Status::OK;
    const std::string v = req.get_param_value(name);
    try {
      size_t used = 0;
      *out = std::stoi(v, &used);
      if (used == v.size()) return grpc::Status::OK;
    } catch (const std::exception&) {
    }
    return Invalid(std::string(name) + ": expected an integer, got " + QuoteForMessage(v));
  }

  template <typename Req, typename Reply>
  void Serve(const char* method, const httplib::Request& http_req, httplib::Response& res, Req& req) {
    Call call{method, "http", BearerToken(http_req.get_header_value("Authorization")),
              Clock::now() + std::chrono::milliseconds(config_.query_timeout_ms)};
    Reply reply;
    const grpc::Status st = core_.Handle(call, req, &reply);
    if (!st.ok()) return SendError(res, st);
    std::string json;
    google::protobuf::util::JsonPrintOptions opts;
    opts.preserve_proto_field_names = true;
    opts.always_print_primitive_fields = true;
    google::protobuf::util::MessageToJsonString(reply, &json, opts);
    SendJson(res, 200, json);
  }

  void RegisterRoutes() {
    auto param = [](const httplib::Request& r, const char* name) {
      return r.has_param(name) ? r.get_param_value(name) : std::string();
    };
    http_.server().Get("/health", [](const httplib::Request&, httplib::Response& res) {
      SendJson(res, 200, "{\"status\":\"SERVING\"}");
    });
    http_.server().Get("/analytics/orders", [this, param](const httplib::Request& r, httplib::Response& res) {
      pb::OrdersByStatusRequest req;
      int limit;
      if (auto st = IntParam(r, "limit", &limit); !st.ok()) return SendError(res, st);
      req.set_status(param(r, "status"));
      req.set_limit(limit);
      req.set_page_token(param(r, "page_token"));
      Serve<pb::OrdersByStatusRequest, pb::OrdersReply>("OrdersByStatus", r, res, req);
    });
    http_.server().Get("/analytics/orders/top", [this, param](const httplib::Request& r, httplib::Response& res) {
      pb::TopOrdersRequest req;
      int limit;
      if (auto st = IntParam(r, "limit", &limit); !st.ok()) return SendError(res, st);
      req.set_limit(limit);
      req.set_status(param(r, "status"));
      Serve<pb::TopOrdersRequest, pb::OrdersReply>("TopOrders", r, res, req);
    });
    http_.server().Get("/analytics/orders/customers", [this, param](const httplib::Request& r, httplib::Response& res) {
      pb::TopCustomersRequest req;
      int limit;
      if (auto st = IntParam(r, "limit", &limit); !st.ok()) return SendError(res, st);
      req.set_limit(limit);
      req.set_status(param(r, "status"));
      Serve<pb::TopCustomersRequest, pb::TopCustomersReply>("TopCustomers", r, res, req);
    });
    http_.server().Get("/analytics/orders/product", [this, param](const httplib::Request& r, httplib::Response& res) {
      pb::SalesByProductRequest req;
      int limit;
      if (auto st = IntParam(r, "limit", &limit); !st.ok()) return SendError(res, st);
      req.set_from(param(r, "from"));
      req.set_to(param(r, "to"));
      req.set_limit(limit);
      req.set_page_token(param(r, "page_token"));
      Serve<pb::SalesByProductRequest, pb::SalesByProductReply>("SalesByProduct", r, res, req);
    });
    http_.server().Get("/analytics/sales/daily", [this, param](const httplib::Request& r, httplib::Response& res) {
      pb::DailySalesRequest req;
      req.set_from(param(r, "from"));
      req.set_to(param(r, "to"));
      Serve<pb::DailySalesRequest, pb::DailySalesReply>("DailySales", r, res, req);
    });
    http_.server().Get("/analytics/businesses/review-changes", [this, param](const httplib::Request& r, httplib::Response& res) {
      pb::ReviewChangesRequest req;
      int limit;
      if (auto st = IntParam(r, "limit", &limit); !st.ok()) return SendError(res, st);
      req.set_from(param(r, "from"));
      req.set_to(param(r, "to"));
      req.set_limit(limit);
      Serve<pb::ReviewChangesRequest, pb::ReviewChangesReply>("ReviewChanges", r, res, req);
    });
    http_.server().Get("/analytics/businesses/rating-by-price", [this, param](const httplib::Request& r, httplib::Response& res) {
      pb::RatingByPriceLevelRequest req;
      req.set_ds(param(r, "ds"));
      Serve<pb::RatingByPriceLevelRequest, pb::RatingByPriceLevelReply>("RatingByPriceLevel", r, res, req);
    });
  }

  Config config_;
  QueryCore core_;
  HttpListener http_;
};

}  // namespace

std::unique_ptr<Component> MakeQuery(const Config& config, prometheus::Registry& registry) {
  return std::make_unique<QueryImpl>(config, registry);
}

}  // namespace strata::query

#include "services/query/query.h"

#include <grpcpp/grpcpp.h>
#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <mutex>
#include <set>

#include "common/bus.h"
#include "common/config.h"
#include "common/errors.h"
#include "common/pg.h"
#include "common/time_util.h"
#include "strata.grpc.pb.h"

namespace strata::query {

std::string CacheKey(long long version, const std::string& method, const std::string& params) {
  return "strata:q:v" + std::to_string(version) + ":" + method + ":" + params;
}

namespace {

const std::set<std::string> kStatuses = {"open", "shipped", "delivered", "cancelled"};

struct Metrics {
  explicit Metrics(prometheus::Registry& r)
      : requests(prometheus::BuildCounter().Name("strata_query_requests_total")
                     .Help("Analytics requests, by method and code").Register(r)),
        cache(prometheus::BuildCounter().Name("strata_query_cache_total")
                  .Help("Cache lookups, by result (hit|miss)").Register(r)),
        degraded(prometheus::BuildCounter().Name("strata_query_degraded_total")
                     .Help("Requests answered without the cache because Redis failed").Register(r)),
        latency(prometheus::BuildHistogram().Name("strata_query_request_duration_seconds")
                    .Help("Request latency by method").Register(r)) {
    degraded.Add({});  // exposed as 0 from the start: an absent series cannot be alerted on
  }
  prometheus::Family<prometheus::Counter>& requests;
  prometheus::Family<prometheus::Counter>& cache;
  prometheus::Family<prometheus::Counter>& degraded;
  prometheus::Family<prometheus::Histogram>& latency;
};

// A few warehouse connections reused across requests (connect costs more than most queries).
class PgPool {
 public:
  explicit PgPool(std::string dsn) : dsn_(std::move(dsn)) {}
  template <typename Fn>
  auto With(Fn fn) {
    std::unique_ptr<pqxx::connection> c;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!idle_.empty()) {
        c = std::move(idle_.back());
        idle_.pop_back();
      }
    }
    if (!c || !c->is_open()) c = PgConnect(dsn_);
    auto result = fn(*c);
    std::lock_guard<std::mutex> lock(mu_);
    if (idle_.size() < 8) idle_.push_back(std::move(c));
    return result;
  }

 private:
  std::string dsn_;
  std::mutex mu_;
  std::vector<std::unique_ptr<pqxx::connection>> idle_;
};

class QueryImpl final : public Component, public strata::v1::Query::Service {
 public:
  QueryImpl(const Config& config, prometheus::Registry& registry)
      : config_(config), metrics_(registry), pool_(config.warehouse_dsn),
        redis_(std::make_unique<RedisClient>(config.redis_url, 500)) {
    if (config_.warehouse_dsn.empty()) throw InputError("warehouse_dsn (STRATA_PG_DSN) is not configured");
  }

  std::vector<grpc::Service*> GrpcServices() override { return {this}; }

  grpc::Status OrdersByStatus(grpc::ServerContext*, const strata::v1::OrdersByStatusRequest* req,
                              strata::v1::OrdersReply* resp) override {
    if (!req->status().empty() && !kStatuses.count(req->status()))
      return Invalid("OrdersByStatus", "status: unknown status '" + req->status() +
                                           "' (known: open, shipped, delivered, cancelled)");
    int limit;
    if (auto st = Limit("OrdersByStatus", req->limit(), 100, &limit); !st.ok()) return st;
    return Cached("OrdersByStatus", req->status() + "|" + std::to_string(limit), resp, [&](pqxx::connection& c) {
      pqxx::read_transaction tx(c);
      tx.exec("SET LOCAL TIME ZONE 'UTC'");
      const auto r = tx.exec_params(
          "SELECT order_id, customer_id, status, to_char(ordered_at, 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), "
          "coalesce(amount, 0)::float8 FROM marts.orders_current WHERE ($1 = '' OR status = $1) "
          "ORDER BY ordered_at DESC, order_id DESC LIMIT $2",
          req->status(), limit);
      for (const auto& row : r) {
        auto* o = resp->add_orders();
        o->set_order_id(row[0].as<long long>());
        o->set_customer_id(row[1].as<long long>());
        o->set_status(row[2].c_str());
        o->set_ordered_at(row[3].c_str());
        o->set_amount(row[4].as<double>());
      }
    });
  }

  grpc::Status TopCustomers(grpc::ServerContext*, const strata::v1::TopCustomersRequest* req,
                            strata::v1::TopCustomersReply* resp) override {
    if (!req->status().empty() && !kStatuses.count(req->status()))
      return Invalid("TopCustomers", "status: unknown status '" + req->status() +
                                         "' (known: open, shipped, delivered, cancelled)");
    int limit;
    if (auto st = Limit("TopCustomers", req->limit(), 10, &limit); !st.ok()) return st;
    return Cached("TopCustomers", req->status() + "|" + std::to_string(limit), resp, [&](pqxx::connection& c) {
      pqxx::read_transaction tx(c);
      const auto r = tx.exec_params(
          "SELECT o.customer_id, coalesce(dc.name, ''), sum(o.amount)::float8, count(*) "
          "FROM marts.orders_current o "
          "LEFT JOIN dwh.dim_customer dc ON dc.customer_id = o.customer_id AND dc.is_current "
          "WHERE ($1 = '' OR o.status = $1) AND o.amount IS NOT NULL "
          "GROUP BY o.customer_id, dc.name ORDER BY sum(o.amount) DESC, o.customer_id LIMIT $2",
          req->status(), limit);
      for (const auto& row : r) {
        auto* cr = resp->add_customers();
        cr->set_customer_id(row[0].as<long long>());
        cr->set_name(row[1].c_str());
        cr->set_revenue(row[2].as<double>());
        cr->set_orders(row[3].as<long long>());
      }
    });
  }

  grpc::Status DailySales(grpc::ServerContext*, const strata::v1::DailySalesRequest* req,
                          strata::v1::DailySalesReply* resp) override {
    if (!IsValidDate(req->from())) return Invalid("DailySales", "from: expected YYYY-MM-DD, got \"" + req->from() + "\"");
    if (!IsValidDate(req->to())) return Invalid("DailySales", "to: expected YYYY-MM-DD, got \"" + req->to() + "\"");
    if (req->from() > req->to()) return Invalid("DailySales", "from: must not be after to");
    return Cached("DailySales", req->from() + "|" + req->to(), resp, [&](pqxx::connection& c) {
      pqxx::read_transaction tx(c);
      const auto r = tx.exec_params(
          "SELECT ds::text, orders, units, revenue::float8 FROM marts.daily_sales "
          "WHERE ds BETWEEN $1::date AND $2::date ORDER BY ds",
          req->from(), req->to());
      for (const auto& row : r) {
        auto* d = resp->add_days();
        d->set_ds(row[0].c_str());
        d->set_orders(row[1].as<long long>());
        d->set_units(row[2].as<long long>());
        d->set_revenue(row[3].as<double>());
      }
    });
  }

 private:
  grpc::Status Invalid(const std::string& method, const std::string& msg) {
    metrics_.requests.Add({{"method", method}, {"code", "INVALID_ARGUMENT"}}).Increment();
    return {grpc::StatusCode::INVALID_ARGUMENT, msg};
  }

  grpc::Status Limit(const std::string& method, int requested, int fallback, int* out) {
    if (requested < 0) return Invalid(method, "limit: must not be negative, got " + std::to_string(requested));
    if (requested > 1000) return Invalid(method, "limit: at most 1000, got " + std::to_string(requested));
    *out = requested == 0 ? fallback : requested;
    return grpc::Status::OK;
  }

  // Cache-aside around `fill`, which writes the answer into `resp` from PostgreSQL.
  template <typename Reply, typename Fill>
  grpc::Status Cached(const std::string& method, const std::string& params, Reply* resp, Fill fill) {
    const auto start = std::chrono::steady_clock::now();
    std::string key;
    bool redis_ok = true;
    try {
      const RedisReply v = redis_->Command({"GET", kPublishVersionKey});
      key = CacheKey(v.type == RedisReply::kString ? std::stoll(v.str) : 0, method, params);
      const RedisReply hit = redis_->Command({"GET", key});
      if (hit.type == RedisReply::kString && resp->ParseFromString(hit.str)) {
        resp->set_cached(true);
        metrics_.cache.Add({{"result", "hit"}}).Increment();
        return Done(method, start, grpc::Status::OK);
      }
      metrics_.cache.Add({{"result", "miss"}}).Increment();
    } catch (const EnvError& e) {
      redis_ok = false;
      metrics_.degraded.Add({}).Increment();
      spdlog::warn("degraded: answering without cache method={} error={}", method, e.what());
    }
    try {
      pool_.With([&](pqxx::connection& c) {
        fill(c);
        return 0;
      });
    } catch (const std::exception& e) {
      return Done(method, start, {grpc::StatusCode::UNAVAILABLE, std::string("warehouse: ") + e.what()});
    }
    if (redis_ok) {
      try {
        redis_->Command({"SET", key, resp->SerializeAsString(), "EX", std::to_string(config_.query_cache_ttl_seconds)});
      } catch (const EnvError& e) {
        metrics_.degraded.Add({}).Increment();
      }
    }
    return Done(method, start, grpc::Status::OK);
  }

  grpc::Status Done(const std::string& method, std::chrono::steady_clock::time_point start, grpc::Status st) {
    metrics_.requests.Add({{"method", method}, {"code", st.ok() ? "OK" : "UNAVAILABLE"}}).Increment();
    metrics_.latency.Add({{"method", method}}, prometheus::Histogram::BucketBoundaries{0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.25, 1})
        .Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    return st;
  }

  Config config_;
  Metrics metrics_;
  PgPool pool_;
  std::unique_ptr<RedisClient> redis_;
};

}  // namespace

std::unique_ptr<Component> MakeQuery(const Config& config, prometheus::Registry& registry) {
  return std::make_unique<QueryImpl>(config, registry);
}

}  // namespace strata::query

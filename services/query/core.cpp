#include "services/query/core.h"

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "common/errors.h"
#include "services/query/endpoint_call.h"

namespace strata::query {

namespace pb = strata::v1;
using Clock = std::chrono::system_clock;

QueryCore::QueryCore(const Config& config, std::vector<ApiEndpoint> endpoints, std::string pipeline,
                     prometheus::Registry& registry)
    : config_(config), endpoints_(std::move(endpoints)), pipeline_(std::move(pipeline)), metrics_(registry),
      series_(metrics_,
              [this] {
                std::vector<std::string> names;
                for (const auto& e : endpoints_) names.push_back(e.name);
                return names;
              }()),
      hit_local_(&metrics_.cache.Add({{"result", "hit_local"}})),
      pool_(config.warehouse_dsn, 16,
            [this](const std::string& why) {
              metrics_.reconnects.Add({}).Increment();
              spdlog::warn("warehouse connection replaced: {}", why);
            }),
      replicas_(config.query_replica_dsns, pool_, registry),
      gate_(config.query_max_backend, config.query_max_queue, std::chrono::milliseconds(config.query_queue_wait_ms)),
      max_in_flight_(std::max(1, config.grpc_max_threads * 3 / 4)),
      local_(config.query_cache_ttl_seconds),
      version_(config.redis_url, kPublishVersionKey, [this] { return WarehouseVersion(); }) {
  for (int i = 0; i < 8; ++i) redis_.push_back(std::make_unique<RedisClient>(config.redis_url, 500));
  if (config_.query_tokens.empty()) spdlog::warn("query authentication is off: STRATA_QUERY_TOKENS is not set");
}

const ApiEndpoint* QueryCore::Find(const std::string& name) const {
  for (const auto& e : endpoints_)
    if (e.name == name) return &e;
  return nullptr;
}

grpc::Status QueryCore::Handle(const Call& call, const pb::CallRequest& req, pb::CallReply* reply) {
  const auto start = std::chrono::steady_clock::now();
  const ApiEndpoint* endpoint = Find(req.endpoint());
  // Calls in flight are bounded below gRPC's own bound (grpc_max_threads), so past capacity the
  // excess is refused here, at once and counted, before it queues on Redis or the warehouse;
  // gRPC's refusal (uncounted) stays a backstop.
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
  series_.Count(endpoint ? endpoint->name : "unknown", call.transport == "http", st.error_code(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  return st;
}

grpc::Status QueryCore::Authorize(const Call& call, const ApiEndpoint& e) {
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
    it = buckets_.emplace(bucket_key, TokenBucket(config_.query_rate_limit_rps, 2.0 * config_.query_rate_limit_rps)).first;
  if (!it->second.TryTake(now))
    return {grpc::StatusCode::RESOURCE_EXHAUSTED,
            "rate limit of " + std::to_string(config_.query_rate_limit_rps) + " requests/s exceeded for this token"};
  return grpc::Status::OK;
}

grpc::Status QueryCore::Run(const Call& call, const ApiEndpoint& e, const pb::CallRequest& req, pb::CallReply* reply) {
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

std::vector<pb::Column> QueryCore::Describe(const ApiEndpoint& e) {
  const auto now = std::chrono::steady_clock::now();
  {
    std::lock_guard<std::mutex> lock(described_mu_);
    if (auto it = described_.find(e.name); it != described_.end()) return it->second;
    // The listing is public: a warehouse that cannot describe yet is asked again at most every 10 s.
    if (auto it = undescribed_.find(e.name); it != undescribed_.end() && now - it->second < std::chrono::seconds(10)) return {};
  }
  // Asked of the warehouse until it can say (the tables may not exist before the first run),
  // then remembered.
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
    std::lock_guard<std::mutex> lock(described_mu_);
    undescribed_[e.name] = now;
    return {};
  }
  std::lock_guard<std::mutex> lock(described_mu_);
  described_[e.name] = cols;
  return cols;
}

namespace {

void AddParam(pb::EndpointInfo* info, const std::string& name, const std::string& type, const std::string& default_value,
              const std::string& min, const std::string& max, const std::string& description) {
  auto* q = info->add_params();
  q->set_name(name);
  q->set_type(type);
  q->set_default_value(default_value);
  q->set_min(min);
  q->set_max(max);
  q->set_description(description);
}

}  // namespace

void QueryCore::List(pb::ListEndpointsReply* reply) {
  for (const auto& e : endpoints_) {
    auto* info = reply->add_endpoints();
    info->set_name(e.name);
    info->set_path(e.path);
    info->set_description(e.description);
    info->set_pipeline(pipeline_);
    for (const auto& p : e.params) {
      AddParam(info, p.name, p.type, p.default_value.value_or(""), p.min.value_or(""), p.max.value_or(""), p.description);
      auto* q = info->mutable_params(info->params_size() - 1);
      q->set_required(p.required);
      for (const auto& a : p.allowed) q->add_allowed(a);
    }
    if (e.paged) {
      AddParam(info, "limit", "integer", std::to_string(e.default_limit), "1", std::to_string(e.max_limit), "rows per page");
      AddParam(info, "page_token", "text", "", "", "", "the previous page's next_page_token");
    }
    for (const auto& c : Describe(e)) *info->add_columns() = c;
    for (const auto& r : e.roles) info->add_roles(r);
    info->set_cache(e.cache);
    info->set_staleness_ms(e.cache == "realtime" ? e.staleness_ms : 0);
    info->set_paged(e.paged);
    info->set_result(e.result);
  }
}

}  // namespace strata::query

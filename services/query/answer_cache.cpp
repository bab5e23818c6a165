// QueryCore's answers: cache-aside (process memory, then Redis) with single-flight, and the
// warehouse behind an admission gate. See core.h.
#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <spdlog/spdlog.h>

#include "common/errors.h"
#include "services/query/core.h"
#include "services/query/query.h"

namespace strata::query {

namespace pb = strata::v1;
using Clock = std::chrono::system_clock;

namespace {

// One round trip: read the published version and the entry cached under it. An empty reply
// means the version key is gone (Redis restarted empty): it is derived again from the warehouse.
// On a Redis Cluster the entry lives in another slot than the version, which a script may not
// touch: there the two are read one after the other (below).
const char* kLookupScript =
    "local v = redis.call('GET', KEYS[1]) "
    "if not v then return {} end "
    "return {v, redis.call('GET', 'strata:q:v' .. v .. ':' .. ARGV[1])}";

// A realtime answer and how long Redis keeps it still: the process keeps it no longer, so an
// answer is never older than the endpoint's staleness bound, whoever stored it.
const char* kRealtimeScript =
    "local v = redis.call('GET', KEYS[1]) "
    "if not v then return {} end "
    "return {v, redis.call('PTTL', KEYS[1])}";

grpc::Status WarehouseFailure(const Call& call, bool has_params, const std::exception& e) {
  const auto* sql = dynamic_cast<const pqxx::sql_error*>(&e);
  const std::string state = sql ? sql->sqlstate() : "";
  if (state == "57014") return {grpc::StatusCode::DEADLINE_EXCEEDED, "query exceeded its deadline"};
  if (state.rfind("22", 0) == 0 && has_params) {
    // Data exception: a parameter passed validation but not PostgreSQL (validation should have
    // caught it; the log says which).
    spdlog::warn("warehouse refused a parameter method={} sqlstate={} error={}", call.method, state, e.what());
    return {grpc::StatusCode::INVALID_ARGUMENT, "a parameter is outside the range the warehouse accepts"};
  }
  if (state.rfind("22", 0) == 0 || state.rfind("42", 0) == 0) {
    // The endpoint's SQL fails on the data or the schema: its declaration needs a fix; retrying
    // will not help.
    spdlog::error("endpoint SQL failed method={} sqlstate={} error={}", call.method, state, e.what());
    return {grpc::StatusCode::INTERNAL, "the endpoint's SQL failed in the warehouse (the service log says why)"};
  }
  // The client gets a code and a message it can act on; PostgreSQL's text goes to the log.
  spdlog::error("warehouse query failed method={} sqlstate={} error={}", call.method, state, e.what());
  return {grpc::StatusCode::UNAVAILABLE, "the warehouse is unavailable; try again shortly"};
}

}  // namespace

std::optional<long long> QueryCore::WarehouseVersion() {
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

QueryCore::Lookup QueryCore::LookUp(const Call& call, const ApiEndpoint& e, const std::string& params, pb::CallReply* reply) {
  Lookup l;
  // The endpoint's identity: its pipeline, name and declaration (a changed declaration, or another
  // pipeline's endpoint of the same name sharing this Redis, never answers from these entries).
  const std::string id = pipeline_ + "." + e.name + "@" + e.fingerprint;
  const std::string suffix = id + ":" + params;
  const bool published = e.cache == "published";
  if (e.cache == "none") {
    l.redis_ok = false;
    l.key = "strata:q:none:" + suffix;  // single-flight only
    return l;
  }
  const auto hit = [&](bool local) {
    reply->set_cached(true);
    if (local) hit_local_->Increment();
    else metrics_.cache.Add({{"result", "hit"}}).Increment();
    l.hit = true;
    return l;
  };
  std::string bytes;
  if (!published) {
    l.key = RealtimeCacheKey(id, params);
    if (local_.Get(l.key, &bytes) && reply->ParseFromString(bytes)) return hit(true);
  } else if (version_.known() &&
             local_.Get(CacheKey(version_.version(), id, params), &bytes) && reply->ParseFromString(bytes)) {
    return hit(true);
  }
  try {
    if (published) {
      RedisReply r;
      if (!Redis().cluster()) {
        r = Redis().Command({"EVAL", kLookupScript, "1", kPublishVersionKey, suffix});
      } else if (RedisReply v = Redis().Command({"GET", kPublishVersionKey}); v.type == RedisReply::kString) {
        r.type = RedisReply::kArray;
        r.elements = {v, Redis().Command({"GET", "strata:q:v" + v.str + ":" + suffix})};
      }
      if (r.type == RedisReply::kArray && !r.elements.empty()) {
        l.version = r.elements[0].str;
      } else if (const auto v = WarehouseVersion()) {
        l.version = std::to_string(AnnounceVersion(Redis(), kPublishVersionKey, *v));
      } else {
        throw EnvError("the published version is unknown (Redis lost it and the warehouse cannot say)");
      }
      version_.Observe(std::stoll(l.version));
      l.key = "strata:q:v" + l.version + ":" + suffix;
      if (r.elements.size() == 2 && r.elements[1].type == RedisReply::kString && reply->ParseFromString(r.elements[1].str)) {
        local_.Put(l.key, r.elements[1].str);
        return hit(false);
      }
    } else {
      const RedisReply r = Redis().Command({"EVAL", kRealtimeScript, "1", l.key});
      if (r.type == RedisReply::kArray && r.elements.size() == 2 && reply->ParseFromString(r.elements[0].str)) {
        const long long left = std::min<long long>(r.elements[1].integer, e.staleness_ms);
        if (left > 0) local_.Put(l.key, r.elements[0].str, std::chrono::milliseconds(left));
        return hit(false);
      }
    }
    metrics_.cache.Add({{"result", "miss"}}).Increment();
  } catch (const EnvError& ex) {
    l.redis_ok = false;
    if (l.key.empty()) l.key = "strata:q:v0:" + suffix;
    metrics_.degraded.Add({}).Increment();
    spdlog::warn("degraded: answering without cache endpoint={} error={}", call.method, ex.what());
  }
  return l;
}

grpc::Status QueryCore::Cached(const Call& call, const ApiEndpoint& e, const std::string& params, pb::CallReply* reply,
                               const Fill& fill) {
  Lookup l = LookUp(call, e, params, reply);
  if (l.hit) return grpc::Status::OK;

  // Single-flight: identical misses wait for the first one's answer instead of all querying.
  std::promise<std::pair<grpc::Status, std::string>> promise;
  std::shared_future<std::pair<grpc::Status, std::string>> shared;
  bool leader = false;
  {
    std::lock_guard<std::mutex> lock(flight_mu_);
    auto it = inflight_.find(l.key);
    if (it != inflight_.end()) {
      shared = it->second;
    } else {
      shared = promise.get_future().share();
      inflight_.emplace(l.key, shared);
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
  const auto finish = [&](const grpc::Status& st, const std::string& bytes) {
    promise.set_value({st, bytes});
    std::lock_guard<std::mutex> lock(flight_mu_);
    inflight_.erase(l.key);
    return st;
  };

  // Double-check: a leader that finished between our lookup and our flight registration has
  // already cached the answer.
  if (l.redis_ok) {
    try {
      const RedisReply again = Redis().Command({"GET", l.key});
      if (again.type == RedisReply::kString && reply->ParseFromString(again.str)) {
        reply->set_cached(true);
        return finish(grpc::Status::OK, again.str);
      }
    } catch (const EnvError&) {
      l.redis_ok = false;
    }
  }
  const grpc::Status st = FromWarehouse(call, !e.params.empty() || e.paged,
                                        e.cache == "published" ? std::optional(std::stoll(l.version)) : std::nullopt, reply, fill);
  if (st.ok() && e.cache == "published") reply->set_version(std::stoll(l.version));
  const std::string bytes = st.ok() ? reply->SerializeAsString() : "";
  if (st.ok() && l.redis_ok) Store(e, l.key, bytes);
  return finish(st, bytes);
}

grpc::Status QueryCore::FromWarehouse(const Call& call, bool has_params, std::optional<long long> version,
                                      pb::CallReply* reply, const Fill& fill) {
  if (Clock::now() >= call.deadline) return {grpc::StatusCode::DEADLINE_EXCEEDED, "deadline already passed"};
  if (auto shed = Admit(call); !shed.ok()) return shed;
  // Admitted: the slot is held until the warehouse answered (or failed).
  struct Release {
    QueryCore& q;
    ~Release() {
      q.gate_.Leave();
      q.metrics_.backend_running.Set(q.gate_.running());
    }
  } release{*this};
  const long long remaining = std::chrono::duration_cast<std::chrono::milliseconds>(call.deadline - Clock::now()).count();
  // The wait for a slot may have used the rest of the call's time.
  if (remaining <= 0) return {grpc::StatusCode::DEADLINE_EXCEEDED, "deadline passed while waiting for a warehouse slot"};
  try {
    metrics_.backend.Add({{"method", call.method}}).Increment();
    const auto read = [&](pqxx::connection& c) {
      reply->Clear();  // a retry on a fresh connection (or on the primary) starts over
      pqxx::read_transaction tx(c);
      // One round trip for both settings; the deadline becomes the statement timeout.
      tx.exec("SET LOCAL TIME ZONE 'UTC'; SET LOCAL statement_timeout = " + std::to_string(remaining));
      fill(tx);
    };
    if (version) replicas_.Read(*version, read);
    else replicas_.ReadPrimary(read);
    return grpc::Status::OK;
  } catch (const std::exception& e) {
    reply->Clear();
    return WarehouseFailure(call, has_params, e);
  }
}

void QueryCore::Store(const ApiEndpoint& e, const std::string& key, const std::string& bytes) {
  const bool published = e.cache == "published";
  local_.Put(key, bytes, published ? std::nullopt : std::optional(std::chrono::milliseconds(e.staleness_ms)));
  try {
    if (published) Redis().Command({"SET", key, bytes, "EX", std::to_string(config_.query_cache_ttl_seconds)});
    else Redis().Command({"SET", key, bytes, "PX", std::to_string(e.staleness_ms)});
  } catch (const EnvError&) {
    metrics_.degraded.Add({}).Increment();
  }
}

// Takes a warehouse slot for `call`, or says why the request is shed (the caller may retry:
// UNAVAILABLE, HTTP 503).
grpc::Status QueryCore::Admit(const Call& call) {
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

grpc::Status QueryCore::Shed(const char* reason, const std::string& message) {
  metrics_.shed.Add({{"reason", reason}}).Increment();
  return {grpc::StatusCode::UNAVAILABLE, message};
}

}  // namespace strata::query

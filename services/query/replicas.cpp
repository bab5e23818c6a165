#include "services/query/replicas.h"

#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include <chrono>
#include <pqxx/pqxx>

namespace strata::query {

int PickReplica(const std::vector<ReplicaState>& replicas, long long version, unsigned turn) {
  const size_t n = replicas.size();
  for (size_t k = 0; k < n; ++k) {
    const size_t i = (turn + k) % n;
    if (replicas[i].healthy && replicas[i].version >= version) return static_cast<int>(i);
  }
  return -1;
}

std::string ReplicaName(const std::string& dsn, size_t index) {
  auto value_of = [&](const std::string& key) -> std::string {
    for (size_t p = dsn.find(key + "="); p != std::string::npos; p = dsn.find(key + "=", p + 1)) {
      if (p != 0 && dsn[p - 1] != ' ') continue;  // "hostaddr=" is not "host="
      const size_t start = p + key.size() + 1;
      return dsn.substr(start, dsn.find(' ', start) - start);
    }
    return "";
  };
  const std::string host = value_of("host"), port = value_of("port");
  if (host.empty() && port.empty()) return "replica" + std::to_string(index);
  return (host.empty() ? "localhost" : host) + ":" + (port.empty() ? "5432" : port);
}

ReplicaSet::ReplicaSet(const std::vector<std::string>& dsns, PgPool& primary, prometheus::Registry& registry)
    : primary_(primary) {
  auto& lag = prometheus::BuildGauge()
                  .Name("strata_query_replica_lag_bytes")
                  .Help("WAL bytes the replica has yet to replay, measured against the primary every 0.5 s")
                  .Register(registry);
  auto& version = prometheus::BuildGauge()
                      .Name("strata_query_replica_version")
                      .Help("Publish version the replica has replayed (-1: unknown)")
                      .Register(registry);
  auto& reads = prometheus::BuildCounter()
                    .Name("strata_query_reads_total")
                    .Help("Warehouse reads of endpoints by target; reason says why a read went to the primary")
                    .Register(registry);
  primary_no_replicas_ = &reads.Add({{"target", "primary"}, {"reason", "no_replicas"}, {"replica", ""}});
  primary_behind_ = &reads.Add({{"target", "primary"}, {"reason", "not_ready"}, {"replica", ""}});
  primary_failed_ = &reads.Add({{"target", "primary"}, {"reason", "failed"}, {"replica", ""}});
  primary_realtime_ = &reads.Add({{"target", "primary"}, {"reason", "realtime"}, {"replica", ""}});
  for (size_t i = 0; i < dsns.size(); ++i) {
    auto r = std::make_unique<Replica>(ReplicaName(dsns[i], i), dsns[i]);
    r->lag_bytes = &lag.Add({{"replica", r->name}});
    r->replayed = &version.Add({{"replica", r->name}});
    r->replayed->Set(-1);
    r->reads = &reads.Add({{"target", "replica"}, {"reason", ""}, {"replica", r->name}});
    replicas_.push_back(std::move(r));
  }
}

ReplicaSet::~ReplicaSet() { Stop(); }

void ReplicaSet::Start() {
  if (replicas_.empty() || poller_.joinable()) return;
  Poll();  // the first reads already know which replicas are there
  poller_ = std::thread([this] {
    while (!stop_) {
      for (int i = 0; i < 5 && !stop_; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      if (!stop_) Poll();
    }
  });
}

void ReplicaSet::Stop() {
  stop_ = true;
  if (poller_.joinable()) poller_.join();
}

int ReplicaSet::Pick(long long version) {
  if (replicas_.empty()) {
    primary_no_replicas_->Increment();
    return -1;
  }
  std::vector<ReplicaState> states;
  states.reserve(replicas_.size());
  for (const auto& r : replicas_) states.push_back({r->healthy.load(), r->version.load()});
  const int i = PickReplica(states, version, turn_++);
  if (i < 0) primary_behind_->Increment();
  return i;
}

void ReplicaSet::Counted(int i) { replicas_[static_cast<size_t>(i)]->reads->Increment(); }

void ReplicaSet::CountRealtime() { primary_realtime_->Increment(); }

void ReplicaSet::Failed(int i, const std::string& why) {
  Replica& r = *replicas_[static_cast<size_t>(i)];
  if (r.healthy.exchange(false)) spdlog::warn("replica read failed, reading the primary replica={} error={}", r.name, why);
  primary_failed_->Increment();
}

void ReplicaSet::Poll() {
  std::string primary_lsn;
  try {
    primary_.With([&](pqxx::connection& c) {
      pqxx::nontransaction tx(c);
      primary_lsn = tx.exec("SELECT pg_current_wal_lsn()::text")[0][0].as<std::string>();
    });
  } catch (const std::exception& e) {
    spdlog::debug("replica poll: the primary's WAL position is unknown: {}", e.what());
  }
  for (auto& rp : replicas_) {
    Replica& r = *rp;
    try {
      long long version = 0;
      std::string replayed;
      r.pool.With([&](pqxx::connection& c) {
        pqxx::nontransaction tx(c);
        const pqxx::row row = tx.exec(
            "SELECT coalesce(pg_last_wal_replay_lsn()::text, ''), to_regclass('serving.publications') IS NOT NULL")[0];
        replayed = row[0].as<std::string>();
        version = row[1].as<bool>() ? tx.exec("SELECT coalesce(max(version), 0) FROM serving.publications")[0][0].as<long long>() : 0;
      });
      if (!primary_lsn.empty() && !replayed.empty()) {
        primary_.With([&](pqxx::connection& c) {
          pqxx::nontransaction tx(c);
          r.lag_bytes->Set(tx.exec_params("SELECT greatest(pg_wal_lsn_diff($1::pg_lsn, $2::pg_lsn), 0)", primary_lsn, replayed)[0][0].as<double>());
        });
      }
      r.version = version;
      r.replayed->Set(static_cast<double>(version));
      if (!r.healthy.exchange(true)) spdlog::info("replica serving replica={} version={}", r.name, version);
    } catch (const std::exception& e) {
      if (r.healthy.exchange(false)) spdlog::warn("replica unreachable, reading the primary replica={} error={}", r.name, e.what());
      r.version = -1;
      r.replayed->Set(-1);
    }
  }
}

}  // namespace strata::query

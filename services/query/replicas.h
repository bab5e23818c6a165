// Hot standbys (PostgreSQL streaming replicas) the query service reads published answers from,
// so reads scale past the primary while the loader writes to it.
//
// The promise: an answer of publish version V is read from a replica only if that replica has
// replayed V — its own serving.publications holds V, and the serving tables are published in
// the same transaction as that row, so it holds V's rows. A poller asks each replica every
// 500 ms what it has replayed and how far behind the primary's WAL it is (bytes); a replica
// that is behind, unreachable or failed a read since the last poll is skipped, and the read
// goes to another replica or to the primary. Realtime and uncached endpoints read the primary:
// their freshness bound is tighter than replication promises.
//
// Metrics: strata_query_replica_lag_bytes{replica}, strata_query_replica_version{replica},
// strata_query_reads_total{target="primary"|"replica", reason} (reason says why a read went to
// the primary: no_replicas; not_ready — every replica behind the version, unreachable or
// failed since its last poll; failed — the replica read failed; realtime).
#pragma once
#include <atomic>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "common/pg.h"

namespace prometheus {
class Counter;
class Gauge;
class Registry;
}  // namespace prometheus

namespace strata::query {

// What the poller last saw of one replica.
struct ReplicaState {
  bool healthy = false;     // answered the last poll and no read failed since
  long long version = -1;   // the publish version it has replayed (-1: unknown)
};

// The replica to read publish version `version` from: one that is healthy and has replayed it,
// taken in turn from `turn` (round robin); -1 when none qualifies (read the primary).
int PickReplica(const std::vector<ReplicaState>& replicas, long long version, unsigned turn);

// The replica's name for metrics and logs: host and port of its DSN ("host=a port=5433 ..." ->
// "a:5433"), or the DSN's position when it names neither.
std::string ReplicaName(const std::string& dsn, size_t index);

class ReplicaSet {
 public:
  ReplicaSet(const std::vector<std::string>& dsns, PgPool& primary, prometheus::Registry& registry);
  ~ReplicaSet();
  ReplicaSet(const ReplicaSet&) = delete;
  ReplicaSet& operator=(const ReplicaSet&) = delete;

  void Start();
  void Stop();
  bool empty() const { return replicas_.empty(); }

  // Runs fn(connection) for publish version `version` on a replica that has replayed it, or on
  // the primary; a replica whose read fails is skipped until its next good poll and fn runs
  // again on the primary (fn must be safe to run twice, as for PgPool::With).
  template <typename Fn>
  void Read(long long version, Fn&& fn) {
    const int i = Pick(version);
    if (i < 0) return primary_.With(fn);
    try {
      replicas_[static_cast<size_t>(i)]->pool.With(fn);
      Counted(i);
    } catch (const std::exception& e) {
      Failed(i, e.what());
      primary_.With(fn);
    }
  }
  // A read that must see the primary (realtime, uncached): counted as such.
  template <typename Fn>
  void ReadPrimary(Fn&& fn) {
    CountRealtime();
    primary_.With(fn);
  }

 private:
  struct Replica {
    std::string name;
    PgPool pool;
    std::atomic<bool> healthy{false};
    std::atomic<long long> version{-1};
    prometheus::Gauge* lag_bytes = nullptr;
    prometheus::Gauge* replayed = nullptr;
    prometheus::Counter* reads = nullptr;
    Replica(std::string n, const std::string& dsn) : name(std::move(n)), pool(dsn, 4) {}
  };
  int Pick(long long version);
  void Counted(int i);
  void CountRealtime();
  void Failed(int i, const std::string& why);
  void Poll();

  PgPool& primary_;
  std::vector<std::unique_ptr<Replica>> replicas_;
  prometheus::Counter* primary_no_replicas_ = nullptr;
  prometheus::Counter* primary_behind_ = nullptr;
  prometheus::Counter* primary_failed_ = nullptr;
  prometheus::Counter* primary_realtime_ = nullptr;
  std::atomic<unsigned> turn_{0};
  std::atomic<bool> stop_{false};
  std::thread poller_;
};

}  // namespace strata::query

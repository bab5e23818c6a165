#include "services/ingest/cdc.h"

#include <libpq-fe.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>
#include <sys/select.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <algorithm>
#include <deque>
#include <functional>
#include <optional>
#include <map>
#include <thread>

#include "common/bus.h"
#include "common/errors.h"
#include "common/lsn.h"
#include "common/ops_schema.h"
#include "common/pg.h"
#include "common/time_util.h"
#include "services/ingest/extract_query.h"
#include "strata.pb.h"

namespace strata::ingest {

namespace {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

constexpr int64_t kPgEpochOffsetUs = 946684800000000LL;  // 2000-01-01 in Unix microseconds

// A configuration problem a retry cannot fix: logged loudly, retried slowly.
struct CdcFatal : std::runtime_error {
  using std::runtime_error::runtime_error;
};

uint64_t Be64(const char* p) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
uint32_t Be32(const char* p) {
  uint32_t v = 0;
  for (int i = 0; i < 4; ++i) v = (v << 8) | static_cast<unsigned char>(p[i]);
  return v;
}
void PutBe64(std::string& out, uint64_t v) {
  for (int i = 7; i >= 0; --i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

// Reads pgoutput's wire format; throws on a short message rather than reading past it.
struct Reader {
  const char* p;
  const char* end;
  void Need(size_t n) const {
    if (static_cast<size_t>(end - p) < n) throw EnvError("cdc: truncated replication message");
  }
  char Byte() {
    Need(1);
    return *p++;
  }
  uint16_t U16() {
    Need(2);
    const uint16_t v = static_cast<uint16_t>((static_cast<unsigned char>(p[0]) << 8) | static_cast<unsigned char>(p[1]));
    p += 2;
    return v;
  }
  uint32_t U32() {
    Need(4);
    const uint32_t v = Be32(p);
    p += 4;
    return v;
  }
  uint64_t U64() {
    Need(8);
    const uint64_t v = Be64(p);
    p += 8;
    return v;
  }
  std::string Str() {
    const void* nul = memchr(p, 0, static_cast<size_t>(end - p));
    if (!nul) throw EnvError("cdc: unterminated string in replication message");
    std::string s(p, static_cast<const char*>(nul));
    p = static_cast<const char*>(nul) + 1;
    return s;
  }
  std::string Bytes(size_t n) {
    Need(n);
    std::string s(p, n);
    p += n;
    return s;
  }
};

struct Relation {
  const DatasetSpec* dataset = nullptr;  // null: a table we do not capture
  std::vector<int> to_dataset;           // source column i -> dataset column index, -1: not captured
  std::vector<std::string> names;
};

struct TupleCol {
  char kind = 'n';  // n null, u unchanged TOAST, t text
  std::string text;
};

std::vector<TupleCol> ReadTuple(Reader& r) {
  const uint16_t n = r.U16();
  std::vector<TupleCol> cols(n);
  for (auto& c : cols) {
    c.kind = r.Byte();
    if (c.kind == 't' || c.kind == 'b') c.text = r.Bytes(r.U32());
  }
  return cols;
}

// libpq connection in replication=database mode.
class ReplConn {
 public:
  explicit ReplConn(const std::string& dsn) {
    const char* keys[] = {"dbname", "replication", "options", "application_name", nullptr};
    const char* vals[] = {dsn.c_str(), "database", "-c timezone=UTC -c datestyle=ISO", "strata-cdc", nullptr};
    conn_ = PQconnectdbParams(keys, vals, /*expand_dbname=*/1);
    if (PQstatus(conn_) != CONNECTION_OK) {
      const std::string why = PQerrorMessage(conn_);
      PQfinish(conn_);
      conn_ = nullptr;
      throw EnvError("cdc: replication connection: " + why);
    }
  }
  ~ReplConn() {
    if (conn_) PQfinish(conn_);
  }
  ReplConn(const ReplConn&) = delete;
  ReplConn& operator=(const ReplConn&) = delete;
  PGconn* get() { return conn_; }

  std::vector<std::string> QueryRow(const std::string& sql) {
    PGresult* r = PQexec(conn_, sql.c_str());
    if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) < 1) {
      const std::string why = PQresultErrorMessage(r);
      PQclear(r);
      throw EnvError("cdc: " + sql.substr(0, sql.find(' ', 10)) + ": " + why);
    }
    std::vector<std::string> row;
    for (int i = 0; i < PQnfields(r); ++i) row.push_back(PQgetisnull(r, 0, i) ? "" : PQgetvalue(r, 0, i));
    PQclear(r);
    return row;
  }

  void StartCopyBoth(const std::string& sql) {
    PGresult* r = PQexec(conn_, sql.c_str());
    if (PQresultStatus(r) != PGRES_COPY_BOTH) {
      const std::string why = PQresultErrorMessage(r);
      PQclear(r);
      throw EnvError("cdc: START_REPLICATION: " + why);
    }
    PQclear(r);
  }

 private:
  PGconn* conn_ = nullptr;
};

}  // namespace

struct CdcStreamer::Impl {
  Impl(const Config& c, const PipelineSpec& s, prometheus::Registry& r)
      : config(c), spec(s),
        changes(prometheus::BuildCounter()
                    .Name("strata_ingest_cdc_changes_total")
                    .Help("Source changes captured by logical replication, by dataset and op")
                    .Register(r)),
        batches(prometheus::BuildCounter()
                    .Name("strata_ingest_cdc_batches_total")
                    .Help("CDC micro-batches published on strata:cdc")
                    .Register(r)),
        errors(prometheus::BuildCounter()
                   .Name("strata_ingest_cdc_errors_total")
                   .Help("CDC stream failures, by kind (fatal: needs an operator; transient: retried)")
                   .Register(r)),
        gauges(prometheus::BuildGauge()
                   .Name("strata_ingest_cdc_up")
                   .Help("1 while this ingest holds the replication slot and streams")
                   .Register(r)),
        slot_lag(prometheus::BuildGauge()
                     .Name("strata_ingest_cdc_slot_lag_bytes")
                     .Help("WAL the source retains for the slot: current WAL LSN - confirmed flush LSN")
                     .Register(r)),
        repl_lag(prometheus::BuildGauge()
                     .Name("strata_ingest_cdc_replication_lag_seconds")
                     .Help("Age of the oldest source commit not yet applied in the warehouse (0 when caught up)")
                     .Register(r)),
        backpressure(prometheus::BuildGauge()
                         .Name("strata_ingest_backpressure_active")
                         .Help("1 while ingest waits for a bus stream to drain below its high-water mark")
                         .Register(r)) {}

  void Loop() {
    auto& up = gauges.Add({{"slot", spec.cdc.slot}});
    while (!stop) {
      try {
        RunOnce(up);
      } catch (const CdcFatal& e) {
        up.Set(0);
        errors.Add({{"kind", "fatal"}}).Increment();
        spdlog::error("cdc stopped slot={} error={}", spec.cdc.slot, e.what());
        Sleep(30s);
      } catch (const std::exception& e) {
        up.Set(0);
        errors.Add({{"kind", "transient"}}).Increment();
        spdlog::warn("cdc interrupted slot={} error={} (retrying)", spec.cdc.slot, e.what());
        Sleep(2s);
      }
    }
    up.Set(0);
  }

  void Sleep(std::chrono::milliseconds d) {
    const auto until = Clock::now() + d;
    while (!stop && Clock::now() < until) std::this_thread::sleep_for(50ms);
  }

  std::string Tables() const {
    std::string out;
    for (const auto& name : spec.cdc.datasets) out += (out.empty() ? "" : ", ") + QuoteQualified(spec.Find(name)->source.table);
    return out;
  }

  void CheckSource(pqxx::connection& src) {
    pqxx::work tx(src);
    if (tx.exec1("SHOW wal_level")[0].as<std::string>() != "logical")
      throw CdcFatal("the source's wal_level is not 'logical': set wal_level = logical and restart it");
    for (const auto& name : spec.cdc.datasets) {
      const std::string table = spec.Find(name)->source.table;
      const auto r = tx.exec_params(
          "SELECT c.relreplident::text, EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary) "
          "FROM pg_class c WHERE c.oid = to_regclass($1)",
          table);
      if (r.empty()) throw CdcFatal("captured table " + table + " (dataset '" + name + "') does not exist");
      const std::string ident = r[0][0].c_str();
      const bool pk = r[0][1].as<bool>();
      if (ident == "n" || (ident == "d" && !pk))
        throw CdcFatal("table " + table + " (dataset '" + name + "') has no usable replica identity (" +
                       (ident == "n" ? "REPLICA IDENTITY NOTHING" : "no primary key") +
                       "): updates and deletes could not be captured. Add a primary key or ALTER TABLE " + table +
                       " REPLICA IDENTITY FULL");
    }
    const auto pub = tx.exec_params("SELECT 1 FROM pg_publication WHERE pubname = $1", spec.cdc.publication);
    if (pub.empty()) tx.exec("CREATE PUBLICATION " + QuoteIdent(spec.cdc.publication) + " FOR TABLE " + Tables());
    else tx.exec("ALTER PUBLICATION " + QuoteIdent(spec.cdc.publication) + " SET TABLE " + Tables());
    tx.commit();
  }

  struct State {
    uint64_t acked = 0, applied = 0;
    bool snapshot_done = false;
  };

  std::optional<State> ReadState(pqxx::connection& wh) {
    // Serialised with every other service's DDL (RunDdl's advisory lock).
    RunDdl(wh, SharedOpsDdl());
    pqxx::work tx(wh);
    const auto r = tx.exec_params(
        "SELECT acked_lsn::text, applied_lsn::text, snapshot_done FROM ops.cdc_state WHERE slot = $1", spec.cdc.slot);
    tx.commit();
    if (r.empty()) return std::nullopt;
    return State{ParseLsn(r[0][0].c_str()), ParseLsn(r[0][1].c_str()), r[0][2].as<bool>()};
  }

  void RunOnce(prometheus::Gauge& up) {
    auto src = PgConnect(config.source_dsn);
    auto wh = PgConnect(config.warehouse_dsn);
    CheckSource(*src);
    Bus bus(config.redis_url);
    std::optional<State> state = ReadState(*wh);
    const auto slot = pqxx::work(*src).exec_params(
        "SELECT confirmed_flush_lsn::text, active, active_pid FROM pg_replication_slots WHERE slot_name = $1",
        spec.cdc.slot);
    if (!slot.empty() && slot[0][1].as<bool>())
      throw EnvError("replication slot '" + spec.cdc.slot + "' is in use by backend pid " +
                     std::string(slot[0][2].c_str()) + " (another ingest?); waiting for it");
    ReplConn repl(config.source_dsn);
    uint64_t start = 0;
    if (slot.empty()) {
      if (state && state->snapshot_done)
        throw CdcFatal("replication slot '" + spec.cdc.slot + "' is missing, but strata has applied changes from it up to " +
                       FormatLsn(state->applied) + ": changes made since may be lost. To start over from a fresh "
                       "snapshot, DELETE FROM ops.cdc_state WHERE slot = '" + spec.cdc.slot + "'");
      start = CreateSlotAndSnapshot(repl, *src, *wh, bus);
    } else if (!state || !state->snapshot_done) {
      // A slot strata created but never finished snapshotting from: nothing was acknowledged
      // from it, so it is safe to start it over.
      spdlog::warn("cdc: slot {} has no finished snapshot; recreating it", spec.cdc.slot);
      pqxx::work tx(*src);
      tx.exec_params("SELECT pg_drop_replication_slot($1)", spec.cdc.slot);
      tx.commit();
      start = CreateSlotAndSnapshot(repl, *src, *wh, bus);
    } else {
      const uint64_t confirmed = slot[0][0].is_null() ? 0 : ParseLsn(slot[0][0].c_str());
      if (confirmed > state->acked)
        throw CdcFatal("replication slot '" + spec.cdc.slot + "' confirms " + FormatLsn(confirmed) +
                       ", past what strata acknowledged (" + FormatLsn(state->acked) +
                       "): it was recreated or advanced by someone else, and changes in between are lost. To start "
                       "over from a fresh snapshot, DELETE FROM ops.cdc_state WHERE slot = '" + spec.cdc.slot +
                       "' and drop the slot");
      start = state->acked;
    }
    up.Set(1);
    Stream(repl, *src, *wh, bus, start);
  }

  // CREATE_REPLICATION_SLOT exports a snapshot consistent with the slot's start: reading the
  // tables in it and then streaming from the slot sees every row exactly once.
  uint64_t CreateSlotAndSnapshot(ReplConn& repl, pqxx::connection& src, pqxx::connection& wh, Bus& bus) {
    const auto row = repl.QueryRow("CREATE_REPLICATION_SLOT " + QuoteIdent(spec.cdc.slot) + " LOGICAL pgoutput EXPORT_SNAPSHOT");
    const uint64_t point = ParseLsn(row[1]);
    const std::string snapshot = row[2];
    {
      pqxx::work tx(wh);
      tx.exec_params(
          "INSERT INTO ops.cdc_state (slot, acked_lsn, applied_lsn, snapshot_done) VALUES ($1, $2::pg_lsn, '0/0', false) "
          "ON CONFLICT (slot) DO UPDATE SET acked_lsn = EXCLUDED.acked_lsn, applied_lsn = '0/0', snapshot_done = false, "
          "created_at = now()",
          spec.cdc.slot, FormatLsn(point));
      tx.commit();
    }
    spdlog::info("cdc: created slot {} at {}; snapshotting {}", spec.cdc.slot, FormatLsn(point), Tables());
    pqxx::transaction<pqxx::isolation_level::repeatable_read, pqxx::readwrite_policy::read_only> tx(src);
    tx.exec("SET TRANSACTION SNAPSHOT " + tx.quote(snapshot));
    tx.exec("SET LOCAL TIME ZONE 'UTC'");
    strata::v1::ChangeBatch batch;
    int32_t seq = 0;
    const int64_t now_us = NowUnixMs() * 1000;
    long long rows = 0;
    for (const auto& name : spec.cdc.datasets) {
      const DatasetSpec& d = *spec.Find(name);
      tx.exec("DECLARE strata_snap NO SCROLL CURSOR FOR " + WatermarkSelect(d, nullptr));
      for (;;) {
        const pqxx::result r = tx.exec("FETCH 5000 FROM strata_snap");
        if (r.empty()) break;
        for (const auto& row2 : r) {
          auto* c = batch.add_changes();
          c->set_dataset(name);
          c->set_op("r");
          c->set_lsn(FormatLsn(point));
          c->set_seq(seq++);
          c->set_commit_unix_us(now_us);
          for (size_t i = 0; i < d.columns.size(); ++i) {
            auto* v = c->add_values();
            if (row2[static_cast<int>(i)].is_null()) v->set_null(true);
            else v->set_text(row2[static_cast<int>(i)].c_str());
          }
          ++rows;
        }
        // Only the snapshot's last batch carries its LSN: applied_lsn reaches the consistent
        // point when the whole snapshot is in, not with its first batch.
        if (batch.changes_size() >= spec.cdc.batch_changes) Publish(bus, batch, 0);
      }
      tx.exec("CLOSE strata_snap");
      changes.Add({{"dataset", name}, {"op", "r"}}).Increment(0);
    }
    tx.commit();
    Publish(bus, batch, point);  // possibly empty: it marks the snapshot's end
    pqxx::work done(wh);
    done.exec_params("UPDATE ops.cdc_state SET snapshot_done = true WHERE slot = $1", spec.cdc.slot);
    done.commit();
    spdlog::info("cdc: snapshot of {} rows published; streaming from {}", rows, FormatLsn(point));
    return point;
  }

  // Waits while the stream is above its high-water mark, so a stalled consumer slows capture
  // (WAL waits in the slot) instead of filling Redis.
  void WaitForRoom(Bus& bus, const std::function<void()>& keepalive) {
    auto& g = backpressure.Add({{"stream", kCdcStream}});
    bool waiting = false;
    while (!stop && bus.Length(kCdcStream) >= config.bus_high_water) {
      if (!waiting) spdlog::warn("cdc: {} holds >= {} entries; pausing capture", kCdcStream, config.bus_high_water);
      waiting = true;
      g.Set(1);
      if (keepalive) keepalive();
      std::this_thread::sleep_for(100ms);
    }
    g.Set(0);
  }

  void Publish(Bus& bus, strata::v1::ChangeBatch& batch, uint64_t end_lsn,
               const std::function<void()>& keepalive = nullptr) {
    WaitForRoom(bus, keepalive);
    batch.set_pipeline(spec.name);
    batch.set_slot(spec.cdc.slot);
    batch.set_end_lsn(FormatLsn(end_lsn));
    for (const auto& c : batch.changes()) changes.Add({{"dataset", c.dataset()}, {"op", c.op()}}).Increment();
    bus.Add(kCdcStream, {{"batch", batch.SerializeAsString()}, {"end_lsn", batch.end_lsn()}});
    batches.Add({}).Increment();
    batch.Clear();
  }

  uint64_t AppliedLsn(pqxx::connection& wh) {
    pqxx::work tx(wh);
    const auto a = tx.exec_params1("SELECT applied_lsn::text FROM ops.cdc_state WHERE slot = $1", spec.cdc.slot);
    tx.commit();
    return ParseLsn(a[0].c_str());
  }

  void Stream(ReplConn& repl, pqxx::connection& src, pqxx::connection& wh, Bus& bus, uint64_t start) {
    repl.StartCopyBoth("START_REPLICATION SLOT " + QuoteIdent(spec.cdc.slot) + " LOGICAL " + FormatLsn(start) +
                       " (proto_version '1', publication_names " + pqxx::work(src).quote(spec.cdc.publication) +
                       ", messages 'true')");
    spdlog::info("cdc: streaming slot={} publication={} from {}", spec.cdc.slot, spec.cdc.publication, FormatLsn(start));
    PGconn* conn = repl.get();
    std::map<uint32_t, Relation> relations;
    std::vector<strata::v1::Change> tx_changes;  // the transaction being received
    strata::v1::ChangeBatch pending;             // committed, not yet published
    uint64_t pending_end = 0;
    auto pending_since = Clock::now();
    // Everything before `start` is published (by an earlier streamer or the snapshot), but not
    // necessarily applied yet: the slot moves past quiet WAL only once applied catches up.
    uint64_t published = start, applied = AppliedLsn(wh), acked = start, idle_point = start;
    std::deque<std::pair<uint64_t, int64_t>> unapplied;  // (end_lsn, first commit us) per published batch
    auto last_feedback = Clock::now() - 1h, last_applied_poll = Clock::now(), last_heartbeat = Clock::now(),
         last_lag_poll = Clock::now() - 1h;
    auto& slot_lag_g = slot_lag.Add({{"slot", spec.cdc.slot}});
    auto& repl_lag_g = repl_lag.Add({{"slot", spec.cdc.slot}});

    const auto send_feedback = [&](bool force) {
      // Everything published is applied and nothing is in flight: the slot may move past
      // quiet stretches of WAL (heartbeats, other tables' traffic) too.
      uint64_t flush = applied;
      if (published <= applied && pending.changes_size() == 0 && tx_changes.empty()) flush = std::max(flush, idle_point);
      if (flush > acked) {
        pqxx::work tx(wh);
        tx.exec_params("UPDATE ops.cdc_state SET acked_lsn = greatest(acked_lsn, $2::pg_lsn) WHERE slot = $1",
                       spec.cdc.slot, FormatLsn(flush));
        tx.commit();
        acked = flush;
      } else if (!force && Clock::now() - last_feedback < 10s) {
        return;
      }
      std::string msg = "r";
      PutBe64(msg, std::max(published, acked));
      PutBe64(msg, acked);
      PutBe64(msg, acked);
      PutBe64(msg, static_cast<uint64_t>(NowUnixMs() * 1000 - kPgEpochOffsetUs));
      msg.push_back(0);
      if (PQputCopyData(conn, msg.data(), static_cast<int>(msg.size())) != 1 || PQflush(conn) != 0)
        throw EnvError(std::string("cdc: sending feedback: ") + PQerrorMessage(conn));
      last_feedback = Clock::now();
    };
    // What the warehouse applied (confirmed to the slot) and the lag gauges. Also run while
    // Publish waits for room on the stream: a stalled loader must show in the lag metrics (and
    // StrataCdcLagHigh, StrataCdcSlotRetainsWal) rather than freeze them at their last value.
    const auto poll_progress = [&] {
      const auto now = Clock::now();
      if (now - last_applied_poll >= 100ms) {
        last_applied_poll = now;
        applied = std::max(applied, AppliedLsn(wh));
        // An empty stream means the loader has committed everything published (entries leave
        // the stream only after their transaction commits), including a previous session's.
        if (pending.changes_size() == 0 && applied < published && bus.Length(kCdcStream) == 0) applied = published;
        while (!unapplied.empty() && unapplied.front().first <= applied) unapplied.pop_front();
        // The oldest unapplied commit: of a published batch, else of the one waiting to be.
        const int64_t oldest_us = !unapplied.empty()          ? unapplied.front().second
                                  : pending.changes_size() > 0 ? pending.changes(0).commit_unix_us()
                                                               : 0;
        repl_lag_g.Set(oldest_us == 0 ? 0.0 : std::max(0.0, (NowUnixMs() * 1000 - oldest_us) / 1e6));
        send_feedback(false);
      }
      if (now - last_lag_poll >= 2s) {
        last_lag_poll = now;
        pqxx::work tx(src);
        const auto r = tx.exec_params(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn)::bigint FROM pg_replication_slots "
            "WHERE slot_name = $1",
            spec.cdc.slot);
        tx.commit();
        if (!r.empty() && !r[0][0].is_null()) slot_lag_g.Set(r[0][0].as<double>());
      }
    };
    const auto publish_pending = [&] {
      if (pending.changes_size() == 0) return;
      const int64_t first_us = pending.changes(0).commit_unix_us();
      Publish(bus, pending, pending_end, poll_progress);
      published = pending_end;
      unapplied.emplace_back(pending_end, first_us);
    };

    while (!stop) {
      // Drain whatever the server has sent.
      for (;;) {
        char* buf = nullptr;
        const int len = PQgetCopyData(conn, &buf, /*async=*/1);
        if (len == 0) break;
        if (len == -1) {
          PGresult* r = PQgetResult(conn);
          const std::string why = r ? PQresultErrorMessage(r) : "";
          if (r) PQclear(r);
          throw EnvError("cdc: replication stream ended" + (why.empty() ? std::string() : ": " + why));
        }
        if (len < 0) throw EnvError(std::string("cdc: replication stream: ") + PQerrorMessage(conn));
        std::unique_ptr<char, decltype(&PQfreemem)> own(buf, &PQfreemem);
        Reader r{buf, buf + len};
        const char kind = r.Byte();
        if (kind == 'k') {
          const uint64_t wal_end = r.U64();
          r.U64();
          const bool reply = r.Byte() != 0;
          if (tx_changes.empty()) idle_point = std::max(idle_point, wal_end);
          if (reply) send_feedback(true);
          continue;
        }
        if (kind != 'w') continue;
        r.U64();  // dataStart
        r.U64();  // walEnd
        r.U64();  // sendTime
        HandleMessage(r, relations, tx_changes, pending, pending_end, idle_point, pending_since);
        if (pending.changes_size() >= spec.cdc.batch_changes) publish_pending();
      }
      const auto now = Clock::now();
      if (pending.changes_size() > 0 && now - pending_since >= std::chrono::milliseconds(spec.cdc.batch_ms))
        publish_pending();
      poll_progress();
      if (now - last_heartbeat >= std::chrono::seconds(spec.cdc.heartbeat_seconds)) {
        last_heartbeat = now;
        pqxx::work tx(src);
        tx.exec("SELECT pg_logical_emit_message(false, 'strata_heartbeat', now()::text)");
        tx.commit();
      }
      // Wait for the socket (or the next periodic task).
      const int sock = PQsocket(conn);
      fd_set fds;
      FD_ZERO(&fds);
      FD_SET(sock, &fds);
      timeval tv{0, 20000};
      if (select(sock + 1, &fds, nullptr, nullptr, &tv) < 0 && errno != EINTR)
        throw EnvError(std::string("cdc: select: ") + std::strerror(errno));
      if (!PQconsumeInput(conn)) throw EnvError(std::string("cdc: replication connection: ") + PQerrorMessage(conn));
    }
    publish_pending();
  }

  void HandleMessage(Reader& r, std::map<uint32_t, Relation>& relations, std::vector<strata::v1::Change>& tx_changes,
                     strata::v1::ChangeBatch& pending, uint64_t& pending_end, uint64_t& idle_point,
                     Clock::time_point& pending_since) {
    const char type = r.Byte();
    switch (type) {
      case 'B': {
        r.U64();  // final LSN
        r.U64();  // commit time
        r.U32();  // xid
        tx_changes.clear();
        return;
      }
      case 'R': {
        const uint32_t relid = r.U32();
        const std::string ns = r.Str();
        const std::string name = r.Str();
        r.Byte();  // replica identity
        const uint16_t n = r.U16();
        Relation rel;
        for (const auto& dn : spec.cdc.datasets) {
          const DatasetSpec* d = spec.Find(dn);
          if (d->source.table == ns + "." + name) rel.dataset = d;
        }
        for (uint16_t i = 0; i < n; ++i) {
          r.Byte();  // flags
          const std::string col = r.Str();
          r.U32();  // type oid
          r.U32();  // typmod
          rel.names.push_back(col);
          rel.to_dataset.push_back(rel.dataset ? rel.dataset->ColumnIndex(col) : -1);
        }
        if (rel.dataset)
          for (const auto& c : rel.dataset->columns)
            if (std::find(rel.names.begin(), rel.names.end(), c.name) == rel.names.end())
              spdlog::warn("cdc: column {} of dataset {} is not in source table {}.{}; it stays NULL", c.name,
                           rel.dataset->name, ns, name);
        relations[relid] = std::move(rel);
        return;
      }
      case 'I':
      case 'U':
      case 'D': {
        const uint32_t relid = r.U32();
        auto it = relations.find(relid);
        if (it == relations.end()) throw EnvError("cdc: change for unknown relation " + std::to_string(relid));
        std::vector<TupleCol> tuple;
        char tag = r.Byte();
        if (type == 'U' && (tag == 'K' || tag == 'O')) {
          ReadTuple(r);  // the old key / row: the new tuple carries the key again
          tag = r.Byte();
        }
        tuple = ReadTuple(r);
        const Relation& rel = it->second;
        if (!rel.dataset) return;
        strata::v1::Change c;
        c.set_dataset(rel.dataset->name);
        c.set_op(type == 'I' ? "c" : type == 'U' ? "u" : "d");
        std::vector<const TupleCol*> by_col(rel.dataset->columns.size(), nullptr);
        for (size_t i = 0; i < tuple.size() && i < rel.to_dataset.size(); ++i)
          if (rel.to_dataset[i] >= 0) by_col[static_cast<size_t>(rel.to_dataset[i])] = &tuple[i];
        for (size_t i = 0; i < by_col.size(); ++i) {
          auto* v = c.add_values();
          const TupleCol* t = by_col[i];
          if (!t || t->kind == 'n' || t->kind == 'u') v->set_null(true);
          else v->set_text(t->text);
          if (t && t->kind == 'u') c.add_unchanged(rel.dataset->columns[i].name);
        }
        tx_changes.push_back(std::move(c));
        return;
      }
      case 'C': {
        r.Byte();  // flags
        r.U64();   // commit LSN
        const uint64_t end = r.U64();
        const int64_t ts = static_cast<int64_t>(r.U64()) + kPgEpochOffsetUs;
        if (tx_changes.empty()) {
          idle_point = std::max(idle_point, end);
          return;
        }
        if (pending.changes_size() == 0) pending_since = Clock::now();
        int32_t seq = 0;
        for (auto& c : tx_changes) {
          c.set_lsn(FormatLsn(end));
          c.set_seq(seq++);
          c.set_commit_unix_us(ts);
          *pending.add_changes() = std::move(c);
        }
        tx_changes.clear();
        pending_end = end;
        return;
      }
      case 'M': {
        r.Byte();  // flags
        const uint64_t lsn = r.U64();
        if (tx_changes.empty() && pending.changes_size() == 0) idle_point = std::max(idle_point, lsn);
        return;
      }
      case 'T':
        spdlog::warn("cdc: a captured table was truncated at the source; TRUNCATE is not replicated");
        return;
      default:
        return;  // Y (type), O (origin): nothing to capture
    }
  }

  const Config& config;
  const PipelineSpec& spec;
  prometheus::Family<prometheus::Counter>& changes;
  prometheus::Family<prometheus::Counter>& batches;
  prometheus::Family<prometheus::Counter>& errors;
  prometheus::Family<prometheus::Gauge>& gauges;
  prometheus::Family<prometheus::Gauge>& slot_lag;
  prometheus::Family<prometheus::Gauge>& repl_lag;
  prometheus::Family<prometheus::Gauge>& backpressure;
  std::atomic<bool> stop{false};
  std::thread thread;
};

CdcStreamer::CdcStreamer(const Config& config, const PipelineSpec& spec, prometheus::Registry& registry)
    : impl_(std::make_unique<Impl>(config, spec, registry)) {}

CdcStreamer::~CdcStreamer() { Stop(); }

void CdcStreamer::Start() {
  if (!impl_->spec.cdc.present || impl_->config.source_dsn.empty()) return;
  impl_->thread = std::thread([this] { impl_->Loop(); });
}

void CdcStreamer::Stop() {
  impl_->stop = true;
  if (impl_->thread.joinable()) impl_->thread.join();
}

}  // namespace strata::ingest

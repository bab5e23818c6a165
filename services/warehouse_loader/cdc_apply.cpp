#include "services/warehouse_loader/cdc_apply.h"

#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <optional>
#include <set>
#include <thread>

#include "common/bus.h"
#include "common/errors.h"
#include "common/lsn.h"
#include "common/pg.h"
#include "common/time_util.h"
#include <pqxx/tablewriter>
#include "strata.pb.h"

namespace strata::loader {

namespace {

constexpr const char* kGroup = "warehouse-loader";

std::string Changes(const DatasetSpec& d) { return "raw." + QuoteIdent(d.name + "_changes"); }
std::string Current(const DatasetSpec& d) { return "raw." + QuoteIdent(d.name + "_current"); }

std::string Temp(const DatasetSpec& d) { return QuoteIdent("tmp_cdc_" + d.name); }

std::string KeyList(const DatasetSpec& d) {
  std::string out;
  for (const auto& k : d.key) out += (out.empty() ? "" : ", ") + QuoteIdent(k);
  return out;
}

bool Captures(const PipelineSpec& spec, const std::string& dataset) {
  return std::find(spec.cdc.datasets.begin(), spec.cdc.datasets.end(), dataset) != spec.cdc.datasets.end();
}

}  // namespace

std::string CdcDdl(const PipelineSpec& spec) {
  if (!spec.cdc.present) return "";
  std::string ddl =
      "CREATE SCHEMA IF NOT EXISTS raw;\n";  // ops.cdc_state: SharedOpsDdl()
  for (const auto& name : spec.cdc.datasets) {
    const DatasetSpec& d = *spec.Find(name);
    std::string cols;
    for (const auto& c : d.columns) cols += ", " + QuoteIdent(c.name) + " " + PgTypeName(c.type);
    ddl += "CREATE TABLE IF NOT EXISTS " + Changes(d) +
           " (lsn pg_lsn NOT NULL, seq integer NOT NULL, op char(1) NOT NULL, commit_time timestamptz NOT NULL, "
           "applied_at timestamptz NOT NULL DEFAULT clock_timestamp()" + cols + ", unchanged text[], PRIMARY KEY (lsn, seq));\n";
    ddl += "CREATE INDEX IF NOT EXISTS " + QuoteIdent(d.name + "_changes_key") + " ON " + Changes(d) + " (" +
           KeyList(d) + ", lsn DESC, seq DESC);\n";
    std::string ccols;
    for (const auto& c : d.columns) ccols += QuoteIdent(c.name) + " " + PgTypeName(c.type) + ", ";
    ddl += "CREATE TABLE IF NOT EXISTS " + Current(d) + " (" + ccols +
           "_lsn pg_lsn NOT NULL, _seq integer NOT NULL, _commit_time timestamptz NOT NULL, "
           "_deleted boolean NOT NULL DEFAULT false, PRIMARY KEY (" + KeyList(d) + "));\n";
    // The fact builds look up the tombstones (few) among the current rows (many).
    ddl += "CREATE INDEX IF NOT EXISTS " + QuoteIdent(d.name + "_current_deleted") + " ON " + Current(d) + " (" +
           KeyList(d) + ") WHERE _deleted;\n";
  }
  return ddl;
}

struct CdcApplier::Impl {
  Impl(const Config& c, const PipelineSpec& s, prometheus::Registry& r)
      : config(c), spec(s),
        applied(prometheus::BuildCounter()
                    .Name("strata_warehouse_loader_cdc_changes_applied_total")
                    .Help("CDC changes applied to the warehouse, by dataset")
                    .Register(r)),
        failures(prometheus::BuildCounter()
                     .Name("strata_warehouse_loader_cdc_failures_total")
                     .Help("CDC batches that failed to apply, by outcome (retried|dead_lettered)")
                     .Register(r)),
        latency(prometheus::BuildHistogram()
                    .Name("strata_warehouse_loader_cdc_commit_to_apply_seconds")
                    .Help("Source commit to warehouse commit, per change")
                    .Register(r)) {
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    consumer = std::string(host) + "-" + std::to_string(getpid());
  }

  void Loop() {
    auto conn_holder = std::unique_ptr<pqxx::connection>();
    while (!stop) {
      try {
        Bus bus(config.redis_url);
        bus.EnsureGroup(kCdcStream, kGroup);
        if (!conn_holder) conn_holder = PgConnect(config.warehouse_dsn);
        // Our own pending entries first (a restart), then others' orphans, then new ones.
        std::vector<StreamEntry> entries = bus.AutoClaim(kCdcStream, kGroup, consumer, config.reclaim_idle_ms, 16);
        if (entries.empty()) entries = bus.ReadGroup(kCdcStream, kGroup, consumer, 16, 500);
        ApplyEntries(bus, *conn_holder, entries);
      } catch (const std::exception& e) {
        spdlog::warn("cdc apply loop error={}", e.what());
        conn_holder.reset();
        std::this_thread::sleep_for(std::chrono::seconds(1));
      }
    }
  }

  // Entries read together are applied in one transaction (fewer commits under load); if that
  // fails, each is applied on its own so one bad batch cannot hold up the others.
  void ApplyEntries(Bus& bus, pqxx::connection& conn, const std::vector<StreamEntry>& entries) {
    if (entries.empty()) return;
    std::vector<strata::v1::ChangeBatch> batches(entries.size());
    bool decodable = true;
    for (size_t i = 0; i < entries.size(); ++i) {
      auto it = entries[i].fields.find("batch");
      decodable = decodable && it != entries[i].fields.end() && batches[i].ParseFromString(it->second);
    }
    if (decodable && entries.size() > 1) {
      // Asked outside the try: Redis failing here is not the batches' fault (the loop reconnects
      // and the entries stay pending), so it must not count toward dead-lettering them.
      const bool advance = NothingEarlierPending(bus, entries);
      try {
        std::vector<const strata::v1::ChangeBatch*> all;
        for (const auto& b : batches) all.push_back(&b);
        Apply(conn, all, advance);
        for (const auto& e : entries) {
          bus.Ack(kCdcStream, kGroup, e.id);
          bus.Delete(kCdcStream, e.id);
        }
        return;
      } catch (const pqxx::broken_connection&) {
        throw;
      } catch (const std::exception& ex) {
        spdlog::warn("cdc apply of {} batches together failed ({}); applying them one by one", entries.size(), ex.what());
      }
    }
    for (const auto& e : entries) {
      if (stop) break;
      HandleWithRetry(bus, conn, e);
    }
  }

  void HandleWithRetry(Bus& bus, pqxx::connection& conn, const StreamEntry& e) {
    strata::v1::ChangeBatch batch;
    auto it = e.fields.find("batch");
    if (it == e.fields.end() || !batch.ParseFromString(it->second)) {
      DeadLetter(bus, e, "undecodable CDC batch");
      return;
    }
    const bool advance = NothingEarlierPending(bus, {e});  // outside the retries, as above
    for (int attempt = 1;; ++attempt) {
      try {
        Apply(conn, {&batch}, advance);
        break;
      } catch (const pqxx::broken_connection&) {
        throw;  // reconnect; the entry stays pending and is reclaimed
      } catch (const std::exception& ex) {
        if (attempt >= 5) {
          failures.Add({{"outcome", "dead_lettered"}}).Increment();
          DeadLetter(bus, e, std::string("CDC batch up to ") + batch.end_lsn() + " failed to apply: " + ex.what());
          return;
        }
        failures.Add({{"outcome", "retried"}}).Increment();
        spdlog::warn("cdc apply failed end_lsn={} attempt={} error={}", batch.end_lsn(), attempt, ex.what());
        std::this_thread::sleep_for(std::chrono::milliseconds(200 << attempt));
      }
    }
    bus.Ack(kCdcStream, kGroup, e.id);
    bus.Delete(kCdcStream, e.id);
  }

  void DeadLetter(Bus& bus, const StreamEntry& e, const std::string& reason) {
    spdlog::error("cdc dead-letter id={} reason={}", e.id, reason);
    // The batch itself goes with the reason: once acknowledged it is gone from strata:cdc (and
    // the slot moves past it), so the dead letter is the only copy left to replay.
    std::map<std::string, std::string> fields{{"reason", reason}, {"position", std::string(kCdcStream) + " id=" + e.id}};
    if (auto it = e.fields.find("batch"); it != e.fields.end()) fields["batch"] = it->second;
    bus.Add(kDeadLetterStream, fields);
    bus.Ack(kCdcStream, kGroup, e.id);
    bus.Delete(kCdcStream, e.id);
  }

  // Whether every entry delivered before `entries` (in stream order, which is WAL order) has been
  // applied: only then may applied_lsn move to their end. A restarted loader (a new consumer)
  // reads new entries before its predecessor's pending ones become claimable, and N loaders
  // commit in any order; moving the watermark past a batch still pending would let ingest
  // confirm to the slot changes the warehouse does not hold — lost for good if the bus is then
  // lost. The watermark holds until the earlier batch is applied; once the stream is empty
  // ingest knows that everything published is applied.
  bool NothingEarlierPending(Bus& bus, const std::vector<StreamEntry>& entries) {
    std::set<std::string> ours;
    std::string newest;
    for (const auto& e : entries) {
      ours.insert(e.id);
      if (newest.empty() || StreamIdLess(newest, e.id)) newest = e.id;
    }
    for (const auto& id : bus.PendingUpTo(kCdcStream, kGroup, newest, static_cast<int>(entries.size()) + 1))
      if (!ours.count(id)) {
        spdlog::info("cdc: applying entries up to {} while {} is still pending; applied_lsn stays until it is applied",
                     newest, id);
        return false;
      }
    return true;
  }

  static bool StreamIdLess(const std::string& a, const std::string& b) {
    const auto split = [](const std::string& id) {
      const auto dash = id.find('-');
      return std::make_pair(std::stoull(id.substr(0, dash)), dash == std::string::npos ? 0ULL : std::stoull(id.substr(dash + 1)));
    };
    return split(a) < split(b);
  }

  void Apply(pqxx::connection& conn, const std::vector<const strata::v1::ChangeBatch*>& batches, bool advance_watermark) {
    pqxx::work tx(conn);
    tx.exec("SET LOCAL TIME ZONE 'UTC'");
    std::map<std::string, std::vector<const strata::v1::Change*>> by_dataset;
    std::string end_lsn = "0/0", slot;
    uint64_t end = 0;
    for (const auto* batch : batches) {
      for (const auto& c : batch->changes()) by_dataset[c.dataset()].push_back(&c);
      slot = batch->slot();
      const uint64_t e = ParseLsn(batch->end_lsn());
      if (e >= end) {
        end = e;
        end_lsn = batch->end_lsn();
      }
    }
    std::set<std::string> orders_touched;
    int64_t newest_us = 0;
    for (auto& [name, changes] : by_dataset) {
      const DatasetSpec* d = spec.Find(name);
      if (!d || !Captures(spec, name)) throw InputError("CDC change for dataset '" + name + "', which is not captured");
      ApplyDataset(tx, *d, changes, name == "orders" || name == "order_items" ? &orders_touched : nullptr);
      for (const auto* c : changes) newest_us = std::max(newest_us, c->commit_unix_us());
    }
    if (!orders_touched.empty() && Captures(spec, "orders") &&
        std::find(spec.models.begin(), spec.models.end(), "orders_current") != spec.models.end())
      RefreshOrdersCurrent(tx);
    tx.exec_params(
        "UPDATE ops.cdc_state SET applied_lsn = CASE WHEN $4 THEN greatest(applied_lsn, $2::pg_lsn) ELSE applied_lsn END, "
        "applied_at = now(), last_commit_at = greatest(last_commit_at, to_timestamp($3::double precision / 1e6)) "
        "WHERE slot = $1",
        slot, end_lsn, newest_us, advance_watermark);
    tx.commit();
    const int64_t now_us = NowUnixMs() * 1000;
    for (auto& [name, changes] : by_dataset) {
      applied.Add({{"dataset", name}}).Increment(static_cast<double>(changes.size()));
      auto& h = latency.Add({}, prometheus::Histogram::BucketBoundaries{0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 60});
      for (const auto* c : changes)
        if (c->op() != "r") h.Observe(std::max<int64_t>(0, now_us - c->commit_unix_us()) / 1e6);
    }
  }

  void ApplyDataset(pqxx::work& tx, const DatasetSpec& d, const std::vector<const strata::v1::Change*>& changes,
                    std::set<std::string>* orders_touched) {
    const size_t n = d.columns.size();
    std::vector<size_t> key_idx;
    for (const auto& k : d.key) key_idx.push_back(static_cast<size_t>(d.ColumnIndex(k)));
    // Values per change, with unchanged TOAST columns filled from the key's previous version.
    std::map<std::string, std::vector<std::optional<std::string>>> latest;  // key -> values
    std::vector<std::vector<std::optional<std::string>>> rows;
    for (const auto* c : changes) {
      if (static_cast<size_t>(c->values_size()) != n)
        throw InputError("CDC change for '" + d.name + "' at " + c->lsn() + " has " + std::to_string(c->values_size()) +
                         " values, the dataset has " + std::to_string(n) + " columns");
      std::vector<std::optional<std::string>> v(n);
      for (size_t i = 0; i < n; ++i)
        if (c->values(static_cast<int>(i)).kind_case() == strata::v1::Value::kText) v[i] = c->values(static_cast<int>(i)).text();
      std::string key;
      for (size_t k : key_idx) key += v[k].value_or("") + '\x1f';
      if (c->unchanged_size() > 0 && c->op() != "d") {
        auto prev = latest.find(key);
        std::vector<std::optional<std::string>> before;
        if (prev != latest.end()) {
          before = prev->second;
        } else {
          std::string where;
          for (size_t j = 0; j < key_idx.size(); ++j)
            where += (j ? " AND " : "") + QuoteIdent(d.key[j]) + " = " + tx.quote(v[key_idx[j]].value_or(""));
          std::string cols;
          for (const auto& col : d.columns)
            cols += (cols.empty() ? "" : ", ") +
                    (col.type == ColumnType::kTimestamp
                         ? "to_char(" + QuoteIdent(col.name) + ", 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
                         : QuoteIdent(col.name) + "::text");
          const auto r = tx.exec("SELECT " + cols + " FROM " + Current(d) + " WHERE " + where);
          if (!r.empty())
            for (size_t i = 0; i < n; ++i)
              before.push_back(r[0][static_cast<int>(i)].is_null() ? std::nullopt
                                                                   : std::optional<std::string>(r[0][static_cast<int>(i)].c_str()));
        }
        for (const auto& col : c->unchanged()) {
          const int i = d.ColumnIndex(col);
          if (i < 0) continue;
          if (before.empty())
            throw InputError("CDC update of '" + d.name + "' at " + c->lsn() + " left TOASTed column '" + col +
                             "' unchanged, and no earlier version of the row is known");
          v[static_cast<size_t>(i)] = before[static_cast<size_t>(i)];
        }
      }
      if (c->op() != "d") latest[key] = v;
      if (orders_touched) orders_touched->insert(v[static_cast<size_t>(d.ColumnIndex("order_id"))].value_or(""));
      rows.push_back(std::move(v));
    }
    // Every change, once: COPY into a per-session temp table, then set-based statements.
    EnsureTemp(tx, d);
    std::vector<std::string> copy_cols = {"lsn", "seq", "op", "commit_us"};
    for (const auto& c : d.columns) copy_cols.push_back(c.name);
    copy_cols.push_back("unchanged");
    {
      // libpqxx 6.4's stream_to takes tuples only; tablewriter takes ready COPY text lines.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wdeprecated-declarations"
      pqxx::tablewriter out(tx, "tmp_cdc_" + d.name, copy_cols.begin(), copy_cols.end());
#pragma GCC diagnostic pop
      std::string line;
      std::vector<const char*> fields(copy_cols.size());
      std::string seq, us, unchanged;
      for (size_t r = 0; r < rows.size(); ++r) {
        const auto* c = changes[r];
        seq = std::to_string(c->seq());
        us = std::to_string(c->commit_unix_us());
        unchanged.clear();
        for (int u = 0; u < c->unchanged_size(); ++u) unchanged += (u ? "," : "{") + c->unchanged(u);
        if (!unchanged.empty()) unchanged += "}";
        fields[0] = c->lsn().c_str();
        fields[1] = seq.c_str();
        fields[2] = c->op().c_str();
        fields[3] = us.c_str();
        for (size_t i = 0; i < n; ++i) fields[4 + i] = rows[r][i] ? rows[r][i]->c_str() : nullptr;
        fields[4 + n] = unchanged.empty() ? nullptr : unchanged.c_str();
        line.clear();
        for (size_t f = 0; f < fields.size(); ++f) {
          if (f) line.push_back('\t');
          if (!fields[f]) {
            line += "\\N";
            continue;
          }
          for (const char* p = fields[f]; *p; ++p) {
            switch (*p) {
              case '\\': line += "\\\\"; break;
              case '\t': line += "\\t"; break;
              case '\n': line += "\\n"; break;
              case '\r': line += "\\r"; break;
              default: line.push_back(*p);
            }
          }
        }
        out.write_raw_line(line);
      }
      out.complete();
    }
    std::string cols;
    for (const auto& c : d.columns) cols += ", " + QuoteIdent(c.name);
    tx.exec("INSERT INTO " + Changes(d) + " (lsn, seq, op, commit_time" + cols + ", unchanged) SELECT lsn, seq, op, "
            "to_timestamp(commit_us::double precision / 1e6)" + cols + ", unchanged FROM " + Temp(d) +
            " ON CONFLICT (lsn, seq) DO NOTHING");
    // The latest version per key; a change older than what is there (a redelivery) loses.
    std::string set;
    for (const auto& c : d.columns) set += QuoteIdent(c.name) + " = CASE WHEN EXCLUDED._deleted THEN " + Current(d) + "." +
                                           QuoteIdent(c.name) + " ELSE EXCLUDED." + QuoteIdent(c.name) + " END, ";
    tx.exec("INSERT INTO " + Current(d) + " (" + cols.substr(2) + ", _lsn, _seq, _commit_time, _deleted) "
            "SELECT DISTINCT ON (" + KeyList(d) + ") " + cols.substr(2) + ", lsn, seq, "
            "to_timestamp(commit_us::double precision / 1e6), op = 'd' FROM " + Temp(d) +
            " ORDER BY " + KeyList(d) + ", lsn DESC, seq DESC"
            " ON CONFLICT (" + KeyList(d) + ") DO UPDATE SET " + set +
            "_lsn = EXCLUDED._lsn, _seq = EXCLUDED._seq, _commit_time = EXCLUDED._commit_time, _deleted = EXCLUDED._deleted "
            "WHERE (" + Current(d) + "._lsn, " + Current(d) + "._seq) < (EXCLUDED._lsn, EXCLUDED._seq)");
  }

  static void EnsureTemp(pqxx::work& tx, const DatasetSpec& d) {
    std::string tcols;
    for (const auto& c : d.columns) tcols += ", " + QuoteIdent(c.name) + " " + PgTypeName(c.type);
    tx.exec("CREATE TEMP TABLE IF NOT EXISTS " + Temp(d) +
            " (lsn pg_lsn, seq integer, op char(1), commit_us bigint" + tcols + ", unchanged text[]) ON COMMIT DELETE ROWS");
  }

  // marts.orders_current for the orders this transaction's changes touched.
  void RefreshOrdersCurrent(pqxx::work& tx) {
    const bool items = Captures(spec, "order_items");
    std::string touched = "SELECT order_id FROM tmp_cdc_orders";
    EnsureTemp(tx, *spec.Find("orders"));
    if (items) {
      EnsureTemp(tx, *spec.Find("order_items"));
      touched += " UNION SELECT order_id FROM tmp_cdc_order_items";
    }
    const std::string amount =
        items ? "(SELECT sum(i.quantity * i.unit_price)::numeric(14,2) FROM raw.order_items_current i "
                "WHERE i.order_id = o.order_id AND NOT i._deleted)"
              : "(SELECT c.amount FROM marts.orders_current c WHERE c.order_id = o.order_id)";
    tx.exec("INSERT INTO marts.orders_current (order_id, customer_id, status, ordered_at, updated_at, amount) "
            "SELECT o.order_id, o.customer_id, o.status, o.ordered_at, o.updated_at, " + amount +
            " FROM raw.orders_current o WHERE NOT o._deleted AND o.order_id IN (" + touched + ") ORDER BY o.order_id "
            "ON CONFLICT (order_id) DO UPDATE SET customer_id = EXCLUDED.customer_id, status = EXCLUDED.status, "
            "ordered_at = EXCLUDED.ordered_at, updated_at = EXCLUDED.updated_at, amount = EXCLUDED.amount "
            "WHERE orders_current.updated_at <= EXCLUDED.updated_at AND (orders_current.customer_id, orders_current.status, "
            "orders_current.ordered_at, orders_current.updated_at, orders_current.amount) IS DISTINCT FROM "
            "(EXCLUDED.customer_id, EXCLUDED.status, EXCLUDED.ordered_at, EXCLUDED.updated_at, EXCLUDED.amount)");
    tx.exec("DELETE FROM marts.orders_current c USING raw.orders_current o WHERE o.order_id = c.order_id AND o._deleted "
            "AND o.order_id IN (" + touched + ")");
  }

  const Config& config;
  const PipelineSpec& spec;
  prometheus::Family<prometheus::Counter>& applied;
  prometheus::Family<prometheus::Counter>& failures;
  prometheus::Family<prometheus::Histogram>& latency;
  std::string consumer;
  std::atomic<bool> stop{false};
  std::thread thread;
};

CdcApplier::CdcApplier(const Config& config, const PipelineSpec& spec, prometheus::Registry& registry)
    : impl_(std::make_unique<Impl>(config, spec, registry)) {}

CdcApplier::~CdcApplier() { Stop(); }

void CdcApplier::Start() {
  if (!impl_->spec.cdc.present) return;
  impl_->thread = std::thread([this] { impl_->Loop(); });
}

void CdcApplier::Stop() {
  impl_->stop = true;
  if (impl_->thread.joinable()) impl_->thread.join();
}

}  // namespace strata::loader

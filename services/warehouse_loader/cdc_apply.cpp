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
#include "common/pg.h"
#include "common/time_util.h"
#include "strata.pb.h"

namespace strata::loader {

namespace {

constexpr const char* kGroup = "warehouse-loader";

std::string Changes(const DatasetSpec& d) { return "raw." + QuoteIdent(d.name + "_changes"); }
std::string Current(const DatasetSpec& d) { return "raw." + QuoteIdent(d.name + "_current"); }

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
      "CREATE SCHEMA IF NOT EXISTS raw;\n"
      "CREATE TABLE IF NOT EXISTS ops.cdc_state (slot text PRIMARY KEY, acked_lsn pg_lsn NOT NULL, "
      "applied_lsn pg_lsn NOT NULL DEFAULT '0/0', snapshot_done boolean NOT NULL DEFAULT false, "
      "created_at timestamptz NOT NULL DEFAULT now(), applied_at timestamptz, last_commit_at timestamptz);\n";
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
        for (const auto& e : entries) {
          if (stop) break;
          HandleWithRetry(bus, *conn_holder, e);
        }
      } catch (const std::exception& e) {
        spdlog::warn("cdc apply loop error={}", e.what());
        conn_holder.reset();
        std::this_thread::sleep_for(std::chrono::seconds(1));
      }
    }
  }

  void HandleWithRetry(Bus& bus, pqxx::connection& conn, const StreamEntry& e) {
    strata::v1::ChangeBatch batch;
    auto it = e.fields.find("batch");
    if (it == e.fields.end() || !batch.ParseFromString(it->second)) {
      DeadLetter(bus, e, "undecodable CDC batch");
      return;
    }
    for (int attempt = 1;; ++attempt) {
      try {
        Apply(conn, batch);
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
    bus.Add(kDeadLetterStream, {{"reason", reason}, {"position", std::string(kCdcStream) + " id=" + e.id}});
    bus.Ack(kCdcStream, kGroup, e.id);
    bus.Delete(kCdcStream, e.id);
  }

  void Apply(pqxx::connection& conn, const strata::v1::ChangeBatch& batch) {
    pqxx::work tx(conn);
    tx.exec("SET LOCAL TIME ZONE 'UTC'");
    std::map<std::string, std::vector<const strata::v1::Change*>> by_dataset;
    for (const auto& c : batch.changes()) by_dataset[c.dataset()].push_back(&c);
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
      RefreshOrdersCurrent(tx, orders_touched);
    tx.exec_params(
        "UPDATE ops.cdc_state SET applied_lsn = greatest(applied_lsn, $2::pg_lsn), applied_at = now(), "
        "last_commit_at = greatest(last_commit_at, to_timestamp($3::double precision / 1e6)) WHERE slot = $1",
        batch.slot(), batch.end_lsn(), newest_us);
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
    // Every change, once.
    std::string cols;
    for (const auto& c : d.columns) cols += ", " + QuoteIdent(c.name);
    const auto lit = [&tx](const std::optional<std::string>& v) { return v ? tx.quote(*v) : std::string("NULL"); };
    std::string ins = "INSERT INTO " + Changes(d) + " (lsn, seq, op, commit_time" + cols + ", unchanged) VALUES ";
    for (size_t r = 0; r < rows.size(); ++r) {
      const auto* c = changes[r];
      ins += (r ? ",(" : "(") + tx.quote(c->lsn()) + "::pg_lsn, " + std::to_string(c->seq()) + ", " + tx.quote(c->op()) +
             ", to_timestamp(" + std::to_string(c->commit_unix_us()) + "::double precision / 1e6)";
      for (size_t i = 0; i < n; ++i) ins += ", " + lit(rows[r][i]) + "::" + PgTypeName(d.columns[i].type);
      std::string unchanged = "ARRAY[";
      for (int u = 0; u < c->unchanged_size(); ++u) unchanged += (u ? "," : "") + tx.quote(c->unchanged(u));
      ins += ", " + (c->unchanged_size() ? unchanged + "]::text[]" : std::string("NULL")) + ")";
    }
    tx.exec(ins + " ON CONFLICT (lsn, seq) DO NOTHING");
    // The latest version per key; a change older than what is there (a redelivery) loses.
    std::map<std::string, size_t> last;
    for (size_t r = 0; r < rows.size(); ++r) {
      std::string key;
      for (size_t k : key_idx) key += rows[r][k].value_or("") + '\x1f';
      last[key] = r;
    }
    std::string up = "INSERT INTO " + Current(d) + " (" + cols.substr(2) + ", _lsn, _seq, _commit_time, _deleted) VALUES ";
    bool first = true;
    for (const auto& [key, r] : last) {
      const auto* c = changes[r];
      up += std::string(first ? "(" : ",(");
      first = false;
      for (size_t i = 0; i < n; ++i) up += (i ? ", " : "") + lit(rows[r][i]) + "::" + PgTypeName(d.columns[i].type);
      up += ", " + tx.quote(c->lsn()) + "::pg_lsn, " + std::to_string(c->seq()) + ", to_timestamp(" +
            std::to_string(c->commit_unix_us()) + "::double precision / 1e6), " + (c->op() == "d" ? "true" : "false") + ")";
    }
    std::string set;
    for (const auto& c : d.columns) set += QuoteIdent(c.name) + " = CASE WHEN EXCLUDED._deleted THEN " + Current(d) + "." +
                                           QuoteIdent(c.name) + " ELSE EXCLUDED." + QuoteIdent(c.name) + " END, ";
    tx.exec(up + " ON CONFLICT (" + KeyList(d) + ") DO UPDATE SET " + set +
            "_lsn = EXCLUDED._lsn, _seq = EXCLUDED._seq, _commit_time = EXCLUDED._commit_time, _deleted = EXCLUDED._deleted "
            "WHERE (" + Current(d) + "._lsn, " + Current(d) + "._seq) < (EXCLUDED._lsn, EXCLUDED._seq)");
  }

  void RefreshOrdersCurrent(pqxx::work& tx, const std::set<std::string>& ids) {
    std::string list;
    for (const auto& id : ids) list += (list.empty() ? "" : ",") + tx.quote(id) + "::bigint";
    const bool items = Captures(spec, "order_items");
    const std::string amount =
        items ? "(SELECT sum(i.quantity * i.unit_price)::numeric(14,2) FROM raw.order_items_current i "
                "WHERE i.order_id = o.order_id AND NOT i._deleted)"
              : "(SELECT c.amount FROM marts.orders_current c WHERE c.order_id = o.order_id)";
    tx.exec("INSERT INTO marts.orders_current (order_id, customer_id, status, ordered_at, updated_at, amount) "
            "SELECT o.order_id, o.customer_id, o.status, o.ordered_at, o.updated_at, " + amount +
            " FROM raw.orders_current o WHERE NOT o._deleted AND o.order_id IN (" + list + ") ORDER BY o.order_id "
            "ON CONFLICT (order_id) DO UPDATE SET customer_id = EXCLUDED.customer_id, status = EXCLUDED.status, "
            "ordered_at = EXCLUDED.ordered_at, updated_at = EXCLUDED.updated_at, amount = EXCLUDED.amount "
            "WHERE orders_current.updated_at <= EXCLUDED.updated_at AND (orders_current.customer_id, orders_current.status, "
            "orders_current.ordered_at, orders_current.updated_at, orders_current.amount) IS DISTINCT FROM "
            "(EXCLUDED.customer_id, EXCLUDED.status, EXCLUDED.ordered_at, EXCLUDED.updated_at, EXCLUDED.amount)");
    tx.exec("DELETE FROM marts.orders_current c USING raw.orders_current o WHERE o.order_id = c.order_id AND o._deleted "
            "AND o.order_id IN (" + list + ")");
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

#include "services/ingest/ingest.h"

#include <grpcpp/grpcpp.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <regex>
#include <set>
#include <unordered_map>
#include <thread>

#include "common/bus.h"
#include "common/config.h"
#include "common/errors.h"
#include "common/events.h"
#include "common/http_client.h"
#include "common/ops_schema.h"
#include "common/pg.h"
#include "common/spec.h"
#include "common/task_lease.h"
#include "common/task_runner.h"
#include "common/time_util.h"
#include "services/ingest/batch_builder.h"
#include "services/ingest/cdc.h"
#include "services/ingest/coerce.h"
#include "services/ingest/extract_query.h"
#include "services/ingest/html_table.h"
#include "services/ingest/http_source.h"
#include "strata.grpc.pb.h"

namespace strata::ingest {

namespace {

using strata::v1::TaskRequest;

struct Metrics {
  explicit Metrics(prometheus::Registry& r)
      : records(prometheus::BuildCounter()
                    .Name("strata_ingest_records_total")
                    .Help("Records extracted, by dataset and outcome (accepted|rejected)")
                    .Register(r)),
        batches(prometheus::BuildCounter()
                    .Name("strata_ingest_batches_total")
                    .Help("Record batches published to the bus")
                    .Register(r)),
        dead_letters(prometheus::BuildCounter()
                         .Name("strata_ingest_dead_letters_total")
                         .Help("Records sent to the dead-letter stream")
                         .Register(r)),
        tasks(prometheus::BuildCounter()
                  .Name("strata_ingest_tasks_total")
                  .Help("Extraction tasks finished, by outcome")
                  .Register(r)),
        http_retries(prometheus::BuildCounter()
                         .Name("strata_ingest_http_retries_total")
                         .Help("HTTP source requests retried")
                         .Register(r)),
        drift(prometheus::BuildCounter()
                  .Name("strata_ingest_schema_drift_total")
                  .Help("Fields that appeared in or vanished from a source, by dataset, field and change")
                  .Register(r)),
        duplicates(prometheus::BuildCounter()
                       .Name("strata_ingest_duplicate_records_total")
                       .Help("Records dropped because an identical record with the same key arrived earlier in the extraction")
                       .Register(r)),
        relists(prometheus::BuildCounter()
                    .Name("strata_ingest_relists_total")
                    .Help("Listings read again because fewer distinct records arrived than the API reported")
                    .Register(r)),
        rate_wait(prometheus::BuildCounter()
                      .Name("strata_ingest_rate_limit_wait_seconds_total")
                      .Help("Time spent waiting for the source's rate limit")
                      .Register(r)),
        shards(prometheus::BuildCounter()
                   .Name("strata_ingest_shards_total")
                   .Help("Shards of sharded extractions this worker finished, by outcome")
                   .Register(r)),
        backpressure(prometheus::BuildGauge()
                         .Name("strata_ingest_batches_backpressure_active")
                         .Help("1 while an extraction waits for strata:batches to drain below its high-water mark")
                         .Register(r)),
        duration(prometheus::BuildHistogram()
                     .Name("strata_ingest_extract_duration_seconds")
                     .Help("Wall time of one extraction")
                     .Register(r)) {}
  prometheus::Family<prometheus::Counter>& records;
  prometheus::Family<prometheus::Counter>& batches;
  prometheus::Family<prometheus::Counter>& dead_letters;
  prometheus::Family<prometheus::Counter>& tasks;
  prometheus::Family<prometheus::Counter>& http_retries;
  prometheus::Family<prometheus::Counter>& drift;
  prometheus::Family<prometheus::Counter>& duplicates;
  prometheus::Family<prometheus::Counter>& relists;
  prometheus::Family<prometheus::Counter>& rate_wait;
  prometheus::Family<prometheus::Counter>& shards;
  prometheus::Family<prometheus::Gauge>& backpressure;
  prometheus::Family<prometheus::Histogram>& duration;
};

// One extraction's sink: good rows to the batch builder, bad ones to the dead-letter stream.
class Sink {
 public:
  Sink(Bus& bus, Metrics& m, const TaskRequest& req, const DatasetSpec& ds, int batch_rows, int high_water)
      : bus_(bus), m_(m), req_(req), dataset_(ds), batch_rows_(batch_rows), high_water_(high_water) {}

  // Fields staged as text after the declared columns (schema_drift: add_column). Only before the
  // first row: every batch of a partition has the same columns.
  void SetExtraColumns(std::vector<std::string> extra) {
    if (builder_) throw std::logic_error("extra columns set after the first row");
    extra_ = std::move(extra);
  }
  const std::vector<std::string>& extra_columns() const { return extra_; }

  void Good(const std::vector<std::string>& v, const std::vector<bool>& nulls, const std::string& pos) {
    Builder().Add(v, nulls, pos);
  }

  void Reject(const std::string& reason, const std::string& position, const std::string& record) {
    ++rejected_;
    m_.dead_letters.Add({{"dataset", dataset_.name}}).Increment();
    spdlog::warn("dead-letter dataset={} ds={} position={} reason={}", dataset_.name, req_.ds(),
                 position, reason);
    bus_.Add(kDeadLetterStream, {{"dataset", dataset_.name},
                                 {"ds", req_.ds()},
                                 {"run_id", req_.run_id()},
                                 {"reason", reason},
                                 {"position", position},
                                 {"record", record.substr(0, 4096)}});
  }

  // Coerces a JSON object to the dataset's columns; missing key columns and type errors reject.
  void Json(const nlohmann::json& rec, const std::string& pos) {
    if (!rec.is_object()) {
      Reject(rec.is_string() ? "bad JSON: record is a string, not an object"
                             : "bad JSON: record is not an object",
             pos, rec.is_string() ? rec.get<std::string>() : rec.dump());
      return;
    }
    const size_t n = dataset_.columns.size();
    std::vector<std::string> values(n + extra_.size());
    std::vector<bool> nulls(n + extra_.size(), false);
    for (size_t i = 0; i < n; ++i) {
      const Column& col = dataset_.columns[i];
      const bool is_key = std::count(dataset_.key.begin(), dataset_.key.end(), col.name) > 0;
      auto it = rec.find(col.name);
      if (it == rec.end() || it->is_null()) {
        if (is_key) return Reject("missing key '" + col.name + "'", pos, rec.dump());
        nulls[i] = true;
        continue;
      }
      Coerced c = CoerceJson(*it, col.type);
      if (!c.ok) return Reject("column '" + col.name + "' " + c.why, pos, rec.dump());
      values[i] = std::move(c.text);
    }
    for (size_t e = 0; e < extra_.size(); ++e) {
      auto it = rec.find(extra_[e]);
      nulls[n + e] = it == rec.end() || it->is_null();
      if (!nulls[n + e]) values[n + e] = it->is_string() ? it->get<std::string>() : it->dump();
    }
    // The same record twice (a page served again) is dropped; a changed record with the same key
    // is kept, and the models keep the latest version by key.
    if (!dataset_.key.empty()) {
      std::string key;
      for (const auto& k : dataset_.key) key += values[static_cast<size_t>(dataset_.ColumnIndex(k))] + '\x1f';
      const size_t h = std::hash<std::string>{}(rec.dump());
      auto [it, fresh] = seen_.emplace(key, h);
      if (!fresh && it->second == h) {
        m_.duplicates.Add({{"dataset", dataset_.name}}).Increment();
        return;
      }
      it->second = h;
    }
    Good(values, nulls, pos);
  }

  // Distinct keys accepted so far (records with a key, deduplicated).
  size_t distinct_keys() const { return seen_.size(); }
  Bus& bus() { return bus_; }

  int Finish(const std::string& watermark = "") { return Builder().Finish(watermark); }
  void SetSeqBase(int base) { Builder().SetSeqBase(base); }
  int FinishShard() { return Builder().FinishShard(); }
  long long rows() const { return builder_ ? builder_->rows() : 0; }
  long long rejected() const { return rejected_; }

 private:
  BatchBuilder& Builder() {
    if (!builder_) {
      std::vector<std::string> cols;
      for (const auto& c : dataset_.columns) cols.push_back(c.name);
      cols.insert(cols.end(), extra_.begin(), extra_.end());
      builder_.emplace(req_, cols, batch_rows_, [this](const strata::v1::Batch& b) {
        // Backpressure: while lake-export is behind, wait instead of flooding Redis.
        if (bus_.Length(kBatchStream) >= high_water_) {
          auto& g = m_.backpressure.Add({{"stream", kBatchStream}});
          g.Set(1);
          spdlog::warn("{} holds >= {} entries; extraction of {} waits", kBatchStream, high_water_, dataset_.name);
          while (bus_.Length(kBatchStream) >= high_water_) std::this_thread::sleep_for(std::chrono::milliseconds(50));
          g.Set(0);
        }
        bus_.Add(kBatchStream, {{"batch", b.SerializeAsString()},
                                {"dataset", b.dataset()},
                                {"ds", b.ds()},
                                {"run_id", b.run_id()}});
        m_.batches.Add({{"dataset", dataset_.name}}).Increment();
      });
      builder_->SetLakeFormat(dataset_.bronze_format, dataset_.bronze_compression);
    }
    return *builder_;
  }
  Bus& bus_;
  Metrics& m_;
  const TaskRequest& req_;
  const DatasetSpec& dataset_;
  int batch_rows_;
  long long high_water_;
  std::vector<std::string> extra_;
  std::optional<BatchBuilder> builder_;
  std::unordered_map<std::string, size_t> seen_;  // key -> hash of the record last accepted
  long long rejected_ = 0;
};

class IngestImpl final : public Component, public strata::v1::Ingest::Service {
 public:
  IngestImpl(const Config& config, prometheus::Registry& registry)
      : config_(config), spec_(LoadPipelineSpec(config.pipeline_spec)), metrics_(registry),
        leases_(config_.redis_url, std::chrono::seconds(config_.task_lease_seconds)), runner_(2), cdc_(config_, spec_, registry) {
    cdc_.Start();
    shard_worker_ = std::thread([this] { ShardWorkerLoop(); });
  }

  std::vector<grpc::Service*> GrpcServices() override { return {this}; }
  void Stop() override {
    stop_ = true;
    if (shard_worker_.joinable()) shard_worker_.join();
    cdc_.Stop();
    runner_.Stop();
  }

  grpc::Status Extract(grpc::ServerContext*, const TaskRequest* req,
                       strata::v1::TaskAccepted* resp) override {
    const DatasetSpec* ds = spec_.Find(req->dataset());
    if (req->pipeline() != spec_.name)
      return {grpc::StatusCode::NOT_FOUND, "pipeline '" + req->pipeline() + "' is not loaded (have '" + spec_.name + "')"};
    if (!ds) return {grpc::StatusCode::NOT_FOUND, "dataset '" + req->dataset() + "' is not in pipeline '" + spec_.name + "'"};
    if (!IsValidDate(req->ds()))
      return {grpc::StatusCode::INVALID_ARGUMENT, "ds: expected YYYY-MM-DD, got \"" + req->ds() + "\""};
    if (req->run_id().empty()) return {grpc::StatusCode::INVALID_ARGUMENT, "run_id: must not be empty"};
    TaskRequest copy = *req;
    leases_.Hold(copy);
    if (!runner_.Submit([this, copy, ds] {
          Run(copy, *ds);
          leases_.Release(copy);
        })) {
      leases_.Release(copy);
      return {grpc::StatusCode::UNAVAILABLE, "ingest is shutting down"};
    }
    resp->set_task(req->task());
    return grpc::Status::OK;
  }

 private:
  void Run(const TaskRequest& req, const DatasetSpec& dataset) {
    const auto start = std::chrono::steady_clock::now();
    Bus bus(config_.redis_url);
    strata::v1::Event ev;
    try {
      if (dataset.source.type == "postgres" && dataset.source.shards > 1) {
        const auto [rows, rejected] = ExtractSharded(req, dataset, bus);
        metrics_.records.Add({{"dataset", dataset.name}, {"outcome", "accepted"}}).Increment(static_cast<double>(rows));
        metrics_.records.Add({{"dataset", dataset.name}, {"outcome", "rejected"}}).Increment(static_cast<double>(rejected));
        spdlog::info("extracted dataset={} ds={} run_id={} rows={} rejected={} shards={}", dataset.name, req.ds(),
                     req.run_id(), rows, rejected, dataset.source.shards);
        ev = TaskEvent(req, true, "", rows, rejected);
      } else {
      Sink sink(bus, metrics_, req, dataset, config_.batch_rows, config_.bus_high_water);
      std::string watermark;
      if (dataset.source.type == "postgres") watermark = ExtractPostgres(req, dataset, sink);
      else if (dataset.source.type == "http_json") watermark = ExtractHttpJson(req, dataset, sink);
      else ExtractHtmlTable(req, dataset, sink);
      const int batches = sink.Finish(watermark);
      metrics_.records.Add({{"dataset", dataset.name}, {"outcome", "accepted"}}).Increment(static_cast<double>(sink.rows()));
      metrics_.records.Add({{"dataset", dataset.name}, {"outcome", "rejected"}}).Increment(static_cast<double>(sink.rejected()));
      spdlog::info("extracted dataset={} ds={} run_id={} rows={} rejected={} batches={}", dataset.name,
                   req.ds(), req.run_id(), sink.rows(), sink.rejected(), batches);
      ev = TaskEvent(req, true, "", sink.rows(), sink.rejected());
      }
      metrics_.tasks.Add({{"outcome", "succeeded"}}).Increment();
    } catch (const std::exception& e) {
      spdlog::error("extract failed dataset={} ds={} run_id={} error={}", dataset.name, req.ds(),
                    req.run_id(), e.what());
      ev = TaskEvent(req, false, std::string("extract ") + dataset.name + ": " + e.what());
      metrics_.tasks.Add({{"outcome", "failed"}}).Increment();
    }
    metrics_.duration.Add({{"dataset", dataset.name}}, prometheus::Histogram::BucketBoundaries{0.1, 0.5, 1, 5, 30, 120, 600})
        .Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    try {
      PublishEvent(bus, "ingest", ev);
    } catch (const std::exception& e) {
      spdlog::error("cannot publish completion event task={} error={}", req.task(), e.what());
    }
  }

  static constexpr int kShardSpan = 1000000;  // seqs per shard: shard i's batches are i * span + j

  // Shards of this pipeline's datasets: only workers that loaded the same spec take them.
  std::string ExtractStream() const { return std::string(kExtractStream) + ":" + spec_.name; }

  static std::string ShardKey(const TaskRequest& req) {
    return "strata:shards:" + req.run_id() + ":" + req.dataset() + ":" + std::to_string(req.attempt());
  }

  // The SELECT of one extraction (or one shard of it).
  std::string PostgresSelect(const TaskRequest& req, const DatasetSpec& d, const Watermark* stored,
                             const std::string& extra_where) {
    if (d.source.incremental == "watermark") return WatermarkSelect(d, stored, extra_where);
    const Window w = req.interval_start().empty() ? DayWindow(req.ds()) : Window{req.interval_start(), req.interval_end()};
    return IncrementalSelect(d, w, extra_where, Referrers(spec_, d));
  }

  // Streams `select` as COPY text into the sink, rows decoded as the bytes arrive (no cursor
  // round trips), so memory stays flat in the table's size. Runs inside `copy`'s open
  // transaction. Returns the rows read; `last` ends as the final row's values (with rows
  // ordered by (cursor, key), the new watermark).
  static long long CopySelect(CopyConn& copy, const DatasetSpec& d, const std::string& select, const std::string& where,
                              Sink& sink, std::vector<std::string>& last) {
    last.assign(d.columns.size(), std::string());
    std::vector<bool> nulls(d.columns.size());
    long long offset = 0;
    copy.CopyOut("COPY (" + select + ") TO STDOUT", [&](const std::vector<std::optional<std::string>>& fields) {
      const std::string pos = d.source.table + where + " row=" + std::to_string(offset++);
      if (fields.size() != d.columns.size())
        throw InputError(pos + ": COPY returned " + std::to_string(fields.size()) + " fields, expected " +
                         std::to_string(d.columns.size()));
      for (size_t i = 0; i < fields.size(); ++i) {
        nulls[i] = !fields[i];
        if (fields[i]) last[i] = *fields[i];
        else last[i].clear();
      }
      sink.Good(last, nulls, pos);
    });
    return offset;
  }

  // A read-only repeatable-read transaction on the source: one snapshot for a whole extraction
  // (a row updated mid-extract is in this day's snapshot or the next day's, never both halves),
  // or the coordinator's exported one for a shard.
  std::unique_ptr<CopyConn> SourceSnapshot(const TaskRequest& req, const std::string& exported = "") {
    auto copy = std::make_unique<CopyConn>(DsnForTask(config_.source_dsn, req));
    copy->Exec("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
    if (!exported.empty()) {
      if (exported.find_first_not_of("0123456789ABCDEFabcdef-") != std::string::npos)
        throw InputError("shard snapshot id '" + exported + "' is not a PostgreSQL snapshot id");
      copy->Exec("SET TRANSACTION SNAPSHOT '" + exported + "'");
    }
    copy->Exec("SET LOCAL TIME ZONE 'UTC'");
    return copy;
  }

  // Coordinator of a sharded extraction: holds one repeatable-read snapshot open and exported
  // while the shards (taken by any ingest worker from strata:extract) read it, then commits the
  // partition's end marker listing every shard's batches.
  std::pair<long long, long long> ExtractSharded(const TaskRequest& req, const DatasetSpec& d, Bus& bus) {
    if (config_.source_dsn.empty()) throw InputError("source_dsn (STRATA_SOURCE_DSN) is not configured");
    const int n = d.source.shards;
    std::optional<Watermark> stored;
    if (d.source.incremental == "watermark") stored = ReadWatermark(req, d);
    auto conn = PgConnect(DsnForTask(config_.source_dsn, req));
    pqxx::transaction<pqxx::isolation_level::repeatable_read, pqxx::readwrite_policy::read_only> tx(*conn);
    const std::string snapshot = tx.exec1("SELECT pg_export_snapshot()")[0].c_str();
    const std::string key = ShardKey(req);
    bus.client().Command({"DEL", key});
    for (int i = 0; i < n; ++i) {
      strata::v1::ExtractShard item;
      *item.mutable_task() = req;
      item.set_shard(i);
      item.set_shards(n);
      item.set_snapshot(snapshot);
      bus.Add(ExtractStream(), {{"shard", item.SerializeAsString()}, {"dataset", d.name}, {"run_id", req.run_id()}});
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(config_.task_timeout_seconds);
    std::map<std::string, std::string> h;
    for (;;) {
      const RedisReply r = bus.client().Command({"HGETALL", key});
      h.clear();
      for (size_t i = 0; i + 1 < r.elements.size(); i += 2) h[r.elements[i].str] = r.elements[i + 1].str;
      for (int i = 0; i < n; ++i)
        if (auto f = h.find("failed_" + std::to_string(i)); f != h.end())
          throw EnvError("shard " + std::to_string(i) + " of " + std::to_string(n) + ": " + f->second);
      int done = 0;
      for (int i = 0; i < n; ++i) done += h.count("batches_" + std::to_string(i)) ? 1 : 0;
      if (done == n) break;
      if (stop_ || std::chrono::steady_clock::now() > deadline)
        throw EnvError(std::to_string(done) + " of " + std::to_string(n) + " shards finished before " +
                       (stop_ ? "shutdown" : "the task timeout"));
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    tx.commit();  // the snapshot is no longer needed
    long long rows = 0, rejected = 0;
    strata::v1::Batch last;
    last.set_pipeline(req.pipeline());
    last.set_dataset(d.name);
    last.set_ds(req.ds());
    last.set_run_id(req.run_id());
    last.set_attempt(req.attempt());
    last.set_seq(n * kShardSpan);
    last.set_batch_id(BatchBuilder::BatchId(req.run_id(), d.name, n * kShardSpan));
    last.set_last(true);
    last.set_total_batches(n * kShardSpan + 1);
    last.set_shard_span(kShardSpan);
    last.set_lake_format(d.bronze_format);
    last.set_lake_compression(d.bronze_compression);
    for (const auto& c : d.columns) last.add_columns(c.name);
    std::optional<Watermark> newest = stored;
    const int ci = d.ColumnIndex(d.source.cursor);
    const ColumnType ct = ci >= 0 ? d.columns[static_cast<size_t>(ci)].type : ColumnType::kText;
    for (int i = 0; i < n; ++i) {
      const std::string s = std::to_string(i);
      last.add_shard_batches(std::stoi(h["batches_" + s]));
      rows += std::stoll(h["rows_" + s]);
      rejected += std::stoll(h["rejected_" + s]);
      if (auto w = h.find("watermark_" + s); w != h.end() && !w->second.empty()) {
        const Watermark sw = WatermarkFromJson(w->second);
        if (!newest || MakeCursorKey(ct, newest->cursor) < MakeCursorKey(ct, sw.cursor) ||
            (!(MakeCursorKey(ct, sw.cursor) < MakeCursorKey(ct, newest->cursor)) && newest->key < sw.key))
          newest = sw;
      }
    }
    if (d.source.incremental == "watermark" && newest) last.set_watermark(WatermarkJson(*newest));
    bus.Add(kBatchStream, {{"batch", last.SerializeAsString()}, {"dataset", d.name}, {"ds", req.ds()}, {"run_id", req.run_id()}});
    metrics_.batches.Add({{"dataset", d.name}}).Increment();
    bus.client().Command({"EXPIRE", key, "86400"});
    return {rows, rejected};
  }

  // Every ingest is a worker for sharded extractions: one shard at a time from strata:extract,
  // reclaiming shards a dead worker left pending.
  void ShardWorkerLoop() {
    char host[256] = {};
    gethostname(host, sizeof host - 1);
    const std::string consumer = std::string(host) + "-" + std::to_string(getpid());
    while (!stop_) {
      try {
        Bus bus(config_.redis_url);
        bus.EnsureGroup(ExtractStream(), "ingest");
        while (!stop_) {
          auto entries = bus.AutoClaim(ExtractStream(), "ingest", consumer, config_.reclaim_idle_ms, 1);
          if (entries.empty()) entries = bus.ReadGroup(ExtractStream(), "ingest", consumer, 1, 1000);
          for (const auto& e : entries) {
            strata::v1::ExtractShard item;
            auto it = e.fields.find("shard");
            if (it != e.fields.end() && item.ParseFromString(it->second)) RunShard(bus, item);
            else spdlog::error("undecodable shard entry id={}", e.id);
            bus.Ack(ExtractStream(), "ingest", e.id);
            bus.Delete(ExtractStream(), e.id);
          }
        }
      } catch (const std::exception& e) {
        spdlog::warn("shard worker error={}", e.what());
        std::this_thread::sleep_for(std::chrono::seconds(1));
      }
    }
  }

  void RunShard(Bus& bus, const strata::v1::ExtractShard& item) {
    const TaskRequest& req = item.task();
    const std::string key = ShardKey(req);
    const std::string s = std::to_string(item.shard());
    const DatasetSpec* d = spec_.Find(req.dataset());
    try {
      if (!d || req.pipeline() != spec_.name)
        throw InputError("dataset '" + req.dataset() + "' of pipeline '" + req.pipeline() + "' is not loaded here");
      std::optional<Watermark> stored;
      if (d->source.incremental == "watermark") stored = ReadWatermark(req, *d);
      Sink sink(bus, metrics_, req, *d, config_.batch_rows, config_.bus_high_water);
      sink.SetSeqBase(item.shard() * kShardSpan);
      auto copy = SourceSnapshot(req, item.snapshot());
      std::vector<std::string> values;
      const long long read =
          CopySelect(*copy, *d, PostgresSelect(req, *d, stored ? &*stored : nullptr, ShardPredicate(*d, item.shard(), item.shards())),
                     " shard=" + s, sink, values);
      const bool any = read > 0;
      copy->Exec("COMMIT");
      const int batches = sink.FinishShard();
      std::string wm;
      if (d->source.incremental == "watermark" && any) {
        const size_t ci = static_cast<size_t>(d->ColumnIndex(d->source.cursor));
        wm = WatermarkJson({values[ci], KeyAfterCursor(*d, d->source.cursor, values)});
      }
      bus.client().Command({"HSET", key, "batches_" + s, std::to_string(batches), "rows_" + s, std::to_string(sink.rows()),
                            "rejected_" + s, std::to_string(sink.rejected()), "watermark_" + s, wm});
      metrics_.shards.Add({{"outcome", "done"}}).Increment();
      spdlog::info("shard done dataset={} run_id={} shard={}/{} rows={} batches={}", req.dataset(), req.run_id(), s,
                   item.shards(), sink.rows(), batches);
    } catch (const std::exception& e) {
      metrics_.shards.Add({{"outcome", "failed"}}).Increment();
      spdlog::error("shard failed dataset={} run_id={} shard={} error={}", req.dataset(), req.run_id(), s, e.what());
      bus.client().Command({"HSET", key, "failed_" + s, e.what()});
    }
  }

  // A warehouse connection for the task, with the shared ops tables in place (created once per
  // process: ingest may run before the loader has set up the warehouse).
  std::unique_ptr<pqxx::connection> OpsConnection(const TaskRequest& req) {
    auto conn = PgConnect(DsnForTask(config_.warehouse_dsn, req));
    if (!ops_ready_.load()) {
      RunDdl(*conn, SharedOpsDdl());
      ops_ready_ = true;
    }
    return conn;
  }

  // The stored watermark of a watermark-incremental dataset, or nullopt before its first load.
  std::optional<Watermark> ReadWatermark(const TaskRequest& req, const DatasetSpec& d) {
    auto conn = OpsConnection(req);
    pqxx::read_transaction tx(*conn);
    const auto r = tx.exec_params("SELECT watermark FROM ops.watermarks WHERE pipeline = $1 AND dataset = $2",
                                  req.pipeline(), d.name);
    if (r.empty()) return std::nullopt;
    return WatermarkFromJson(r[0][0].c_str());
  }

  static std::vector<std::string> KeyAfterCursor(const DatasetSpec& d, const std::string& cursor_col,
                                                 const std::vector<std::string>& values) {
    std::vector<std::string> key;
    for (const auto& k : d.key)
      if (k != cursor_col) key.push_back(values[static_cast<size_t>(d.ColumnIndex(k))]);
    return key;
  }

  std::string ExtractPostgres(const TaskRequest& req, const DatasetSpec& d, Sink& sink) {
    if (config_.source_dsn.empty()) throw InputError("source_dsn (STRATA_SOURCE_DSN) is not configured");
    const bool by_watermark = d.source.incremental == "watermark";
    std::optional<Watermark> stored;
    if (by_watermark) stored = ReadWatermark(req, d);
    auto copy = SourceSnapshot(req);
    std::vector<std::string> values;
    const std::string select = d.source.incremental == "snapshot" ? WatermarkSelect(d, nullptr)
                                                                  : PostgresSelect(req, d, stored ? &*stored : nullptr, "");
    const long long offset = CopySelect(*copy, d, select, "", sink, values);
    copy->Exec("COMMIT");
    if (!by_watermark) return "";
    // Rows arrive ordered by (cursor, key): the last one is the new watermark.
    if (offset == 0) return stored ? WatermarkJson(*stored) : "";
    const size_t cursor_idx = static_cast<size_t>(std::max(0, d.ColumnIndex(d.source.cursor)));
    return WatermarkJson({values[cursor_idx], KeyAfterCursor(d, d.source.cursor, values)});
  }

  // Request headers carrying the source's credentials, read from the environment per extraction
  // (so a rotated secret is picked up) and never logged.
  static std::map<std::string, std::string> AuthHeaders(const DatasetSpec& d) {
    const AuthSpec& a = d.source.auth;
    if (a.type.empty()) return {};
    const char* secret = std::getenv(a.env.c_str());
    if (!secret || !*secret)
      throw InputError("dataset '" + d.name + "': auth needs environment variable " + a.env + ", which is not set");
    if (a.type == "bearer") return {{"Authorization", std::string("Bearer ") + secret}};
    return {{a.header, secret}};
  }

  RequestPacer& BucketFor(const DatasetSpec& d) {
    std::lock_guard<std::mutex> lock(buckets_mu_);
    auto it = buckets_.find(d.name);
    if (it == buckets_.end())
      it = buckets_.emplace(d.name, std::make_unique<RequestPacer>(d.source.rate_limit_rps, d.source.rate_limit_burst)).first;
    return *it->second;
  }

  // GET through the source's rate limit, with bounded retries on transport errors, timeouts,
  // 429 and 5xx, and on a body that is not complete JSON (a truncated transfer): exponential
  // backoff with jitter, honouring Retry-After for everyone sharing the limit. Other statuses
  // (401, 404...) fail at once. Errors name the redacted URL, the status and the attempts.
  std::pair<HttpResponse, nlohmann::json> GetJson(const std::string& url, const DatasetSpec& d,
                                                  const std::map<std::string, std::string>& headers) {
    RequestPacer& bucket = BucketFor(d);
    std::mt19937 rng(std::random_device{}());
    for (int attempt = 1;; ++attempt) {
      const auto waited = bucket.Acquire();
      if (waited.count() > 0)
        metrics_.rate_wait.Add({{"dataset", d.name}}).Increment(static_cast<double>(waited.count()) / 1000.0);
      HttpResponse r = HttpGet(url, headers, d.source.timeout_ms);
      std::string what;
      if (r.status == 200) {
        nlohmann::json doc = nlohmann::json::parse(r.body, nullptr, /*allow_exceptions=*/false);
        if (!doc.is_discarded()) return {std::move(r), std::move(doc)};
        what = "body is not complete JSON (" + std::to_string(r.body.size()) + " bytes)";
      } else {
        what = r.status == 0 ? r.error : "HTTP " + std::to_string(r.status);
      }
      const bool retryable = r.status == 0 || r.status == 200 || r.status == 429 || r.status >= 500;
      if (!retryable || attempt >= d.source.max_attempts)
        throw EnvError("GET " + RedactUrl(url) + ": " + what + " after " + std::to_string(attempt) + " attempt(s)");
      long delay_ms = 100L << std::min(attempt, 8);
      if (auto it = r.headers.find("retry-after"); it != r.headers.end()) {
        try {
          const long ra = std::stol(it->second) * 1000L;
          bucket.PauseUntil(std::chrono::steady_clock::now() + std::chrono::milliseconds(ra));
          delay_ms = std::max(delay_ms, ra);
        } catch (const std::exception&) {
        }
      }
      delay_ms += std::uniform_int_distribution<long>(0, delay_ms / 2)(rng);
      metrics_.http_retries.Add({{"dataset", d.name}}).Increment();
      spdlog::warn("retrying url={} status={} attempt={} delay_ms={}", RedactUrl(url), what, attempt, delay_ms);
      std::this_thread::sleep_for(std::chrono::milliseconds(std::min(delay_ms, 30000L)));
    }
  }

  std::string GetText(const std::string& url, const DatasetSpec& d) {
    RequestPacer& bucket = BucketFor(d);
    for (int attempt = 1;; ++attempt) {
      bucket.Acquire();
      const HttpResponse r = HttpGet(url, AuthHeaders(d), d.source.timeout_ms);
      if (r.status == 200) return r.body;
      const std::string what = r.status == 0 ? r.error : "HTTP " + std::to_string(r.status);
      if (!(r.status == 0 || r.status == 429 || r.status >= 500) || attempt >= d.source.max_attempts)
        throw EnvError("GET " + RedactUrl(url) + ": " + what + " after " + std::to_string(attempt) + " attempt(s)");
      metrics_.http_retries.Add({{"dataset", d.name}}).Increment();
      std::this_thread::sleep_for(std::chrono::milliseconds(100L << attempt));
    }
  }

  // Columns added to a dataset by schema_drift: add_column, in the order they were first seen.
  std::vector<std::string> AddedColumns(const TaskRequest& req, const DatasetSpec& d) {
    auto conn = OpsConnection(req);
    pqxx::read_transaction tx(*conn);
    std::vector<std::string> out;
    for (const auto& row : tx.exec_params(
             "SELECT column_name FROM ops.schema_columns WHERE pipeline = $1 AND dataset = $2 ORDER BY added_at, column_name",
             req.pipeline(), d.name))
      out.push_back(row[0].c_str());
    return out;
  }

  void RecordDrift(const TaskRequest& req, const DatasetSpec& d, Sink& sink, const std::string& field,
                   const std::string& change, const std::string& where) {
    metrics_.drift.Add({{"dataset", d.name}, {"field", field}, {"change", change}}).Increment();
    const std::string msg = "schema drift in dataset '" + d.name + "': field '" + field + "' " + change +
                            (where.empty() ? "" : " at " + where) + " (schema_drift: " + d.source.schema_drift + ")";
    spdlog::warn("{}", msg);
    strata::v1::Event ev = TaskEvent(req, true, msg);
    ev.set_kind("schema_drift");
    PublishEvent(sink.bus(), "ingest", ev);
    if (d.source.schema_drift == "fail") throw InputError(msg);
    if (d.source.schema_drift == "add_column" && change == "appeared") {
      static const std::regex kIdent("^[a-z_][a-z0-9_]{0,62}$");
      if (!std::regex_match(field, kIdent)) {
        spdlog::warn("field '{}' of dataset {} is not a usable column name; not added", field, d.name);
        return;
      }
      auto conn = OpsConnection(req);
      pqxx::work tx(*conn);
      tx.exec_params("INSERT INTO ops.schema_columns (pipeline, dataset, column_name) VALUES ($1, $2, $3) "
                     "ON CONFLICT DO NOTHING", req.pipeline(), d.name, field);
      tx.commit();
    }
  }

  std::string ExtractHttpJson(const TaskRequest& req, const DatasetSpec& d, Sink& sink) {
    const SourceSpec& s = d.source;
    const auto headers = AuthHeaders(d);
    const bool by_cursor = !s.since_param.empty();
    const ColumnType cursor_type =
        by_cursor ? d.columns[static_cast<size_t>(d.ColumnIndex(s.since_field))].type : ColumnType::kText;
    std::optional<Watermark> stored;
    if (by_cursor) stored = ReadWatermark(req, d);

    std::string base = config_.source_http + s.path;
    auto add_param = [&base](const std::string& k, const std::string& v) {
      base += (base.find('?') == std::string::npos ? "?" : "&") + k + "=" + UrlEncode(v);
    };
    for (const auto& [k, v] : s.params) add_param(k, v);
    if (!s.date_param.empty()) add_param(s.date_param, req.ds());
    if (by_cursor && stored) add_param(s.since_param, CursorMinus(cursor_type, stored->cursor, s.overlap_seconds));

    std::vector<std::string> extra;
    if (s.schema_drift == "add_column") extra = AddedColumns(req, d);
    DriftTracker drift(d);
    for (const auto& e : extra) drift.Known(e);
    bool first_page = true;
    std::optional<Watermark> newest = stored;
    CursorKey newest_key;
    if (stored) newest_key = MakeCursorKey(cursor_type, stored->cursor);

    for (int pass = 1;; ++pass) {
      Paginator pager(s.pagination, base);
      long long expected = -1, keyless = 0;
      const size_t keys_before = sink.distinct_keys();
      std::set<std::string> keys_this_pass;
      for (;;) {
        auto [resp, doc] = GetJson(pager.url(), d, headers);
        std::vector<nlohmann::json> records;
        if (s.format == "census") {
          try {
            records = CensusRecords(doc, d);
          } catch (const InputError& e) {
            throw InputError("GET " + RedactUrl(pager.url()) + ": " + e.what());
          }
        } else {
          const nlohmann::json* arr = &doc;
          if (!s.records.empty()) {
            auto it = doc.is_object() ? doc.find(s.records) : doc.end();
            if (!doc.is_object() || it == doc.end() || !it->is_array())
              throw InputError("GET " + RedactUrl(pager.url()) + ": expected an array under \"" + s.records + "\"");
            arr = &*it;
          } else if (!doc.is_array()) {
            throw InputError("GET " + RedactUrl(pager.url()) + ": expected a JSON array of records");
          }
          records.assign(arr->begin(), arr->end());
          if (doc.is_object()) {
            auto t = doc.find(s.pagination.total_field);
            if (t != doc.end() && t->is_number_integer()) expected = t->get<long long>();
          }
        }
        // Drift is judged before any row of the extraction is staged, so a column added on the
        // first page is in every batch; later appearances take effect from the next extraction.
        for (size_t i = 0; i < records.size(); ++i)
          for (const auto& f : drift.Observe(records[i])) {
            RecordDrift(req, d, sink, f, "appeared", pager.position() + " index=" + std::to_string(i));
            if (first_page && s.schema_drift == "add_column" && sink.rows() == 0) extra.push_back(f);
          }
        if (first_page) {
          sink.SetExtraColumns(extra);
          first_page = false;
        }
        for (size_t i = 0; i < records.size(); ++i) {
          const nlohmann::json& rec = records[i];
          const std::string pos = pager.position() + " index=" + std::to_string(i);
          std::string key;
          bool has_key = rec.is_object();
          for (const auto& k : d.key) {
            auto it = has_key ? rec.find(k) : rec.end();
            if (!has_key || it == rec.end() || it->is_null()) {
              has_key = false;
              break;
            }
            key += it->dump() + '\x1f';
          }
          if (has_key) keys_this_pass.insert(key);
          else ++keyless;
          const long long before = sink.rejected();
          sink.Json(rec, pos);
          if (by_cursor && sink.rejected() == before && has_key) {
            auto c = rec.find(s.since_field);
            if (c != rec.end() && !c->is_null()) {
              Coerced cv = CoerceJson(*c, cursor_type);
              std::vector<std::string> kv;
              for (const auto& k : d.key)
                if (k != s.since_field) kv.push_back(CoerceJson(rec.at(k), d.columns[static_cast<size_t>(d.ColumnIndex(k))].type).text);
              if (cv.ok) {
                const CursorKey ck = MakeCursorKey(cursor_type, cv.text);
                if (!newest || newest_key < ck || (!(ck < newest_key) && newest->key < kv)) {
                  newest = Watermark{cv.text, kv};
                  newest_key = ck;
                }
              }
            }
          }
        }
        if (!pager.Advance(doc, resp.headers, records.size())) break;
      }
      const long long got = static_cast<long long>(keys_this_pass.size()) + keyless;
      if (expected < 0 || got >= expected || s.pagination.style == "cursor" || s.pagination.style == "none") break;
      metrics_.relists.Add({{"dataset", d.name}}).Increment();
      if (pass >= 3)
        throw InputError("GET " + RedactUrl(base) + ": the listing reported " + std::to_string(expected) +
                         " records but " + std::to_string(got) + " distinct ones arrived, " + std::to_string(pass) +
                         " times (rows shifting between pages)");
      spdlog::warn("dataset={} listing reported {} records, {} distinct arrived ({} new keys); reading it again",
                   d.name, expected, got, sink.distinct_keys() - keys_before);
    }
    for (const auto& f : drift.Vanished()) {
      if (std::find(extra.begin(), extra.end(), f) != extra.end()) continue;
      RecordDrift(req, d, sink, f, "vanished", "");
    }
    return by_cursor && newest ? WatermarkJson(*newest) : "";
  }

  void ExtractHtmlTable(const TaskRequest&, const DatasetSpec& d, Sink& sink) {
    const std::string url = config_.source_http + d.source.path;
    HtmlTable t;
    try {
      t = ::strata::ingest::ExtractHtmlTable(GetText(url, d), d.source.table_id);
    } catch (const InputError& e) {
      throw InputError(RedactUrl(url) + ": " + e.what());
    }
    std::vector<int> idx;
    for (const auto& c : d.columns) {
      const std::string want = c.header.empty() ? c.name : c.header;
      auto it = std::find_if(t.headers.begin(), t.headers.end(), [&](const std::string& h) {
        return h.size() == want.size() && std::equal(h.begin(), h.end(), want.begin(), [](char a, char b) {
                 return std::tolower(static_cast<unsigned char>(a)) == std::tolower(static_cast<unsigned char>(b));
               });
      });
      if (it == t.headers.end()) {
        std::string found;
        for (const auto& h : t.headers) found += (found.empty() ? "\"" : ", \"") + h + "\"";
        throw InputError(RedactUrl(url) + " table id=\"" + d.source.table_id + "\": expected header \"" +
                         want + "\" for column '" + c.name + "', found headers [" + found + "]");
      }
      idx.push_back(static_cast<int>(it - t.headers.begin()));
    }
    for (size_t r = 0; r < t.rows.size(); ++r) {
      nlohmann::json rec = nlohmann::json::object();
      for (size_t i = 0; i < d.columns.size(); ++i)
        if (static_cast<size_t>(idx[i]) < t.rows[r].size()) rec[d.columns[i].name] = t.rows[r][idx[i]];
      sink.Json(rec, "row=" + std::to_string(r + 1));
    }
  }

  Config config_;
  PipelineSpec spec_;
  Metrics metrics_;
  std::mutex buckets_mu_;
  std::map<std::string, std::unique_ptr<RequestPacer>> buckets_;  // per dataset, shared by its tasks
  LeaseKeeper leases_;  // outlives runner_: its tasks release their leases
  TaskRunner runner_;
  CdcStreamer cdc_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> ops_ready_{false};
  std::thread shard_worker_;
};

}  // namespace

std::unique_ptr<Component> MakeIngest(const Config& config, prometheus::Registry& registry) {
  return std::make_unique<IngestImpl>(config, registry);
}

}  // namespace strata::ingest

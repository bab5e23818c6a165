#include "services/lake_export/lake_export.h"

#include <grpcpp/grpcpp.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <map>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <sstream>
#include <thread>

#include "common/bus.h"
#include "common/config.h"
#include "common/csv.h"
#include "common/errors.h"
#include "common/events.h"
#include "common/lake.h"
#include "common/lake_codec.h"
#include "common/lake_store.h"
#include "common/time_util.h"
#include "strata.grpc.pb.h"

namespace strata::lake_export {

namespace {

constexpr const char* kGroup = "lake-export";
constexpr const char* kLayer = "bronze";

// Part files are part-NNNNN<suffix> (.csv, .ndjson.zst, ...) with part-NNNNN.meta beside them.
std::string PartName(int seq) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "part-%05d", seq);
  return buf;
}

LakeFormat FormatOf(const strata::v1::Batch& b) {
  return ParseLakeFormat(b.lake_format().empty() ? "csv" : b.lake_format(),
                         b.lake_compression().empty() ? "none" : b.lake_compression(), "batch " + b.batch_id());
}

struct Metrics {
  explicit Metrics(prometheus::Registry& r)
      : batches(prometheus::BuildCounter().Name("strata_lake_export_batches_total")
                    .Help("Batches consumed, by outcome (written|stale|invalid|error)").Register(r)),
        rows(prometheus::BuildCounter().Name("strata_lake_export_rows_total")
                 .Help("Rows written to the lake").Register(r)),
        bytes(prometheus::BuildCounter().Name("strata_lake_export_bytes_total")
                  .Help("Bytes written to the lake").Register(r)),
        commits(prometheus::BuildCounter().Name("strata_lake_export_partitions_committed_total")
                    .Help("Partitions committed by manifest").Register(r)),
        reclaimed(prometheus::BuildCounter().Name("strata_lake_export_reclaimed_total")
                      .Help("Pending entries reclaimed from dead consumers").Register(r)) {
    reclaimed.Add({});  // exposed as 0 from the start: an absent series cannot be alerted on
  }
  prometheus::Family<prometheus::Counter>& batches;
  prometheus::Family<prometheus::Counter>& rows;
  prometheus::Family<prometheus::Counter>& bytes;
  prometheus::Family<prometheus::Counter>& commits;
  prometheus::Family<prometheus::Counter>& reclaimed;
};

class LakeExportImpl final : public Component, public strata::v1::LakeExport::Service {
 public:
  LakeExportImpl(const Config& config, prometheus::Registry& registry)
      : config_(config), store_(OpenLakeStore(config.lake_root)), metrics_(registry),
        consumer_("lake-export-" + std::to_string(::getpid())) {}

  std::vector<grpc::Service*> GrpcServices() override { return {this}; }

  void Start() override {
    thread_ = std::thread([this] { Loop(); });
  }
  void Stop() override {
    stop_ = true;
    if (thread_.joinable()) thread_.join();
  }

  grpc::Status DescribePartition(grpc::ServerContext*, const strata::v1::PartitionRequest* req,
                                 strata::v1::PartitionInfo* resp) override {
    if (!IsValidDate(req->ds()))
      return {grpc::StatusCode::INVALID_ARGUMENT, "ds: expected YYYY-MM-DD, got \"" + req->ds() + "\""};
    const std::string dir = PartitionKey(req->layer().empty() ? kLayer : req->layer(), req->dataset(), req->ds());
    try {
      auto m = ReadManifest(*store_, dir);
      if (!m) return grpc::Status::OK;
      resp->set_committed(true);
      resp->set_run_id(m->run_id);
      resp->set_rows(m->rows);
      resp->set_manifest_path(store_->Where(ManifestPath(dir)));
      for (const auto& f : m->files) resp->add_files(f.path);
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return {grpc::StatusCode::DATA_LOSS, e.what()};
    }
  }

 private:
  void Loop() {
    Bus bus(config_.redis_url);
    auto last_claim = std::chrono::steady_clock::now() - std::chrono::minutes(5);
    while (!stop_) {
      try {
        bus.EnsureGroup(kBatchStream, kGroup);
        std::vector<StreamEntry> entries;
        const auto claim_every = std::chrono::milliseconds(std::min(15000, config_.reclaim_idle_ms / 2));
        if (std::chrono::steady_clock::now() - last_claim > claim_every) {
          entries = bus.AutoClaim(kBatchStream, kGroup, consumer_, config_.reclaim_idle_ms, 64);
          if (!entries.empty()) {
            metrics_.reclaimed.Add({}).Increment(static_cast<double>(entries.size()));
            spdlog::warn("reclaimed {} pending batch(es) from dead consumers", entries.size());
          }
          last_claim = std::chrono::steady_clock::now();
        }
        if (entries.empty()) entries = bus.ReadGroup(kBatchStream, kGroup, consumer_, 16, 1000);
        for (const auto& e : entries) {
          if (stop_) break;  // un-acked entries stay pending and are reclaimed later
          try {
            Handle(bus, e);
          } catch (const std::exception&) {
            // The entry stays pending and is reclaimed and written once the lake answers again.
            metrics_.batches.Add({{"outcome", "error"}}).Increment();
            throw;
          }
        }
      } catch (const std::exception& e) {
        spdlog::error("bus loop error={}", e.what());
        std::this_thread::sleep_for(std::chrono::seconds(1));
      }
    }
  }

  void Handle(Bus& bus, const StreamEntry& e) {
    strata::v1::Batch b;
    auto it = e.fields.find("batch");
    if (it == e.fields.end() || !b.ParseFromString(it->second) || !IsValidDate(b.ds()) ||
        b.dataset().empty() || b.run_id().empty()) {
      // Poison entry: keep it for inspection on the dead-letter stream, then drop it.
      spdlog::error("undecodable batch entry id={}", e.id);
      bus.Add(kDeadLetterStream, {{"reason", "lake-export: undecodable batch entry"},
                                  {"position", "strata:batches id=" + e.id}});
      metrics_.batches.Add({{"outcome", "invalid"}}).Increment();
      bus.Ack(kBatchStream, kGroup, e.id);
      bus.Delete(kBatchStream, e.id);
      return;
    }
    const std::string dir = PartitionKey(kLayer, b.dataset(), b.ds());
    // A batch of a run older than the committed one is stale: writing it would resurrect a
    // replaced partition. Run ids sort by start time.
    std::optional<Manifest> committed = ReadManifest(*store_, dir);
    if ((committed && committed->run_id > b.run_id()) || !AttemptCurrent(b, dir)) {
      metrics_.batches.Add({{"outcome", "stale"}}).Increment();
    } else {
      WriteBatch(b, dir);
      TryCommit(bus, b, dir);
      metrics_.batches.Add({{"outcome", "written"}}).Increment();
    }
    bus.Ack(kBatchStream, kGroup, e.id);
    bus.Delete(kBatchStream, e.id);
  }

  // A run's partition is made of one extraction attempt's batches. A batch of an older attempt
  // than the run directory's is stale; the first batch of a newer attempt clears the older
  // attempt's parts (after batches were lost on the bus the run extracts again, and the two
  // extractions' parts must never mix). Batches without an attempt (0) are always current.
  bool AttemptCurrent(const strata::v1::Batch& b, const std::string& dir) {
    if (b.attempt() <= 0) return true;
    const std::string run_dir = dir + "/run=" + b.run_id();
    auto it = attempts_.find(run_dir);
    if (it == attempts_.end()) {
      if (attempts_.size() > 10000) attempts_.clear();  // a cache; the store has the truth
      const auto stored = store_->Get(run_dir + "/_attempt");
      it = attempts_.emplace(run_dir, stored ? std::stoi(*stored) : 0).first;
    }
    if (b.attempt() < it->second) return false;
    if (b.attempt() > it->second) {
      if (it->second > 0) {
        spdlog::warn("extraction attempt {} replaces attempt {} dataset={} ds={} run_id={}", b.attempt(), it->second,
                     b.dataset(), b.ds(), b.run_id());
        store_->RemoveAll(run_dir + "/");
      }
      store_->Put(run_dir + "/_attempt", std::to_string(b.attempt()));
      it->second = b.attempt();
    }
    return true;
  }

  void WriteBatch(const strata::v1::Batch& b, const std::string& dir) {
    const std::string run_dir = dir + "/run=" + b.run_id();
    const LakeFormat f = FormatOf(b);
    std::vector<std::string> cols(b.columns().begin(), b.columns().end());
    std::string text;
    if (f.format == "csv") {
      text = CsvHeader(cols);
      for (const auto& row : b.rows()) {
        AppendCsvField(text, b.ds(), false);
        text.push_back(',');
        AppendCsvField(text, b.run_id(), false);
        for (const auto& v : row.values()) {
          text.push_back(',');
          AppendCsvField(text, v.text(), v.kind_case() == strata::v1::Value::kNull);
        }
        text.push_back('\n');
      }
    } else {
      std::vector<const std::string*> values(cols.size());
      for (const auto& row : b.rows()) {
        for (size_t i = 0; i < cols.size() && i < static_cast<size_t>(row.values_size()); ++i)
          values[i] = row.values(static_cast<int>(i)).kind_case() == strata::v1::Value::kNull
                          ? nullptr
                          : &row.values(static_cast<int>(i)).text();
        AppendNdjsonLine(text, b.ds(), b.run_id(), cols, values);
      }
    }
    const std::string data = CompressPart(f, std::move(text));
    const std::string part = PartName(b.seq()) + f.Suffix();
    store_->Put(run_dir + "/" + part, data);
    nlohmann::json meta = {{"rows", b.rows_size()}, {"bytes", data.size()}, {"crc32", Crc32(data)}, {"file", part},
                           {"format", f.format}, {"compression", f.compression}};
    meta["columns"] = cols;
    store_->Put(run_dir + "/" + PartName(b.seq()) + ".meta", meta.dump());
    if (b.last()) {
      if (!b.watermark().empty()) store_->Put(run_dir + "/_watermark", b.watermark());
      if (b.shard_batches_size() > 0) {
        nlohmann::json shards = {{"span", b.shard_span()},
                                 {"batches", std::vector<int>(b.shard_batches().begin(), b.shard_batches().end())}};
        store_->Put(run_dir + "/_shards", shards.dump());
      }
      store_->Put(run_dir + "/_total", std::to_string(b.total_batches()));
    }
    metrics_.rows.Add({{"dataset", b.dataset()}}).Increment(b.rows_size());
    metrics_.bytes.Add({{"dataset", b.dataset()}}).Increment(static_cast<double>(data.size()));
  }

  void TryCommit(Bus& bus, const strata::v1::Batch& b, const std::string& dir) {
    const std::string run_dir = dir + "/run=" + b.run_id();
    const auto total_text = store_->Get(run_dir + "/_total");
    if (!total_text) return;
    const int total = std::stoi(*total_text);
    // The batches that make the partition: 0..total-1, or for a sharded extraction each shard's
    // run of seqs and the final marker.
    std::vector<int> seqs;
    if (const auto shards = store_->Get(run_dir + "/_shards")) {
      const auto sh = nlohmann::json::parse(*shards);
      const int span = sh.at("span").get<int>();
      const auto counts = sh.at("batches").get<std::vector<int>>();
      for (size_t i = 0; i < counts.size(); ++i)
        for (int j = 0; j < counts[i]; ++j) seqs.push_back(static_cast<int>(i) * span + j);
      seqs.push_back(total - 1);
    } else {
      for (int seq = 0; seq < total; ++seq) seqs.push_back(seq);
    }
    Manifest m;
    m.dataset = b.dataset();
    m.ds = b.ds();
    m.run_id = b.run_id();
    m.layer = kLayer;
    for (const int seq : seqs) {
      const std::string meta_path = run_dir + "/" + PartName(seq) + ".meta";
      const auto meta_text = store_->Get(meta_path);
      if (!meta_text) return;  // not complete yet
      const auto meta = nlohmann::json::parse(*meta_text);
      if (m.columns.empty()) {
        m.columns = meta.at("columns").get<std::vector<std::string>>();
        m.format = meta.value("format", "csv");
        m.compression = meta.value("compression", "none");
      }
      ManifestFile f;
      f.path = "run=" + b.run_id() + "/" + meta.value("file", PartName(seq) + ".csv");
      f.rows = meta.at("rows").get<int64_t>();
      f.bytes = meta.at("bytes").get<int64_t>();
      f.crc32 = meta.at("crc32").get<uint32_t>();
      m.rows += f.rows;
      m.files.push_back(f);
    }
    m.committed_at = NowIso();
    if (const auto wm = store_->Get(run_dir + "/_watermark")) m.watermark = *wm;
    store_->Put(ManifestPath(dir), ManifestToJson(m));
    metrics_.commits.Add({{"dataset", b.dataset()}}).Increment();
    spdlog::info("committed partition dataset={} ds={} run_id={} rows={} files={}", m.dataset, m.ds,
                 m.run_id, m.rows, m.files.size());
    // Older runs' files are unreachable now that the manifest names this run.
    RemoveOtherRuns(*store_, dir, b.run_id(), /*older_only=*/true);
    strata::v1::Event ev;
    ev.set_kind("partition_committed");
    ev.set_pipeline(b.pipeline());
    ev.set_dataset(b.dataset());
    ev.set_ds(b.ds());
    ev.set_run_id(b.run_id());
    ev.set_task("export." + b.dataset());
    ev.set_rows(m.rows);
    ev.set_message(store_->Where(ManifestPath(dir)));
    PublishEvent(bus, "lake_export", ev);
  }

  Config config_;
  std::unique_ptr<LakeStore> store_;
  Metrics metrics_;
  std::string consumer_;
  std::map<std::string, int> attempts_;  // run directory -> its extraction attempt (one bus thread)
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace

std::unique_ptr<Component> MakeLakeExport(const Config& config, prometheus::Registry& registry) {
  return std::make_unique<LakeExportImpl>(config, registry);
}

}  // namespace strata::lake_export

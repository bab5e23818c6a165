#include "services/ingest/ingest.h"

#include <grpcpp/grpcpp.h>
#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <nlohmann/json.hpp>
#include <random>
#include <thread>

#include "common/bus.h"
#include "common/config.h"
#include "common/errors.h"
#include "common/events.h"
#include "common/http_client.h"
#include "common/pg.h"
#include "common/spec.h"
#include "common/task_runner.h"
#include "common/time_util.h"
#include "services/ingest/batch_builder.h"
#include "services/ingest/coerce.h"
#include "services/ingest/extract_query.h"
#include "services/ingest/html_table.h"
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
        duration(prometheus::BuildHistogram()
                     .Name("strata_ingest_extract_duration_seconds")
                     .Help("Wall time of one extraction")
                     .Register(r)) {}
  prometheus::Family<prometheus::Counter>& records;
  prometheus::Family<prometheus::Counter>& batches;
  prometheus::Family<prometheus::Counter>& dead_letters;
  prometheus::Family<prometheus::Counter>& tasks;
  prometheus::Family<prometheus::Counter>& http_retries;
  prometheus::Family<prometheus::Histogram>& duration;
};

// One extraction's sink: good rows to the batch builder, bad ones to the dead-letter stream.
class Sink {
 public:
  Sink(Bus& bus, Metrics& m, const TaskRequest& req, const DatasetSpec& ds, int batch_rows)
      : bus_(bus), m_(m), req_(req), dataset_(ds),
        builder_(req, ColumnNames(ds), batch_rows, [this](const strata::v1::Batch& b) {
          bus_.Add(kBatchStream, {{"batch", b.SerializeAsString()},
                                  {"dataset", b.dataset()},
                                  {"ds", b.ds()},
                                  {"run_id", b.run_id()}});
          m_.batches.Add({{"dataset", dataset_.name}}).Increment();
        }) {}

  void Good(const std::vector<std::string>& v, const std::vector<bool>& nulls, const std::string& pos) {
    builder_.Add(v, nulls, pos);
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
    std::vector<std::string> values(dataset_.columns.size());
    std::vector<bool> nulls(dataset_.columns.size(), false);
    for (size_t i = 0; i < dataset_.columns.size(); ++i) {
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
    Good(values, nulls, pos);
  }

  int Finish() { return builder_.Finish(); }
  long long rows() const { return builder_.rows(); }
  long long rejected() const { return rejected_; }

 private:
  static std::vector<std::string> ColumnNames(const DatasetSpec& ds) {
    std::vector<std::string> out;
    for (const auto& c : ds.columns) out.push_back(c.name);
    return out;
  }
  Bus& bus_;
  Metrics& m_;
  const TaskRequest& req_;
  const DatasetSpec& dataset_;
  BatchBuilder builder_;
  long long rejected_ = 0;
};

class IngestImpl final : public Component, public strata::v1::Ingest::Service {
 public:
  IngestImpl(const Config& config, prometheus::Registry& registry)
      : config_(config), spec_(LoadPipelineSpec(config.pipeline_spec)), metrics_(registry),
        runner_(2) {}

  std::vector<grpc::Service*> GrpcServices() override { return {this}; }
  void Stop() override { runner_.Stop(); }

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
    if (!runner_.Submit([this, copy, ds] { Run(copy, *ds); }))
      return {grpc::StatusCode::UNAVAILABLE, "ingest is shutting down"};
    resp->set_task(req->task());
    return grpc::Status::OK;
  }

 private:
  void Run(const TaskRequest& req, const DatasetSpec& dataset) {
    const auto start = std::chrono::steady_clock::now();
    Bus bus(config_.redis_url);
    strata::v1::Event ev;
    try {
      Sink sink(bus, metrics_, req, dataset, config_.batch_rows);
      if (dataset.source.type == "postgres") ExtractPostgres(req, dataset, sink);
      else if (dataset.source.type == "http_json") ExtractHttpJson(req, dataset, sink);
      else ExtractHtmlTable(req, dataset, sink);
      const int batches = sink.Finish();
      metrics_.records.Add({{"dataset", dataset.name}, {"outcome", "accepted"}}).Increment(static_cast<double>(sink.rows()));
      metrics_.records.Add({{"dataset", dataset.name}, {"outcome", "rejected"}}).Increment(static_cast<double>(sink.rejected()));
      spdlog::info("extracted dataset={} ds={} run_id={} rows={} rejected={} batches={}", dataset.name,
                   req.ds(), req.run_id(), sink.rows(), sink.rejected(), batches);
      ev = TaskEvent(req, true, "", sink.rows(), sink.rejected());
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

  void ExtractPostgres(const TaskRequest& req, const DatasetSpec& d, Sink& sink) {
    if (config_.source_dsn.empty()) throw InputError("source_dsn (STRATA_SOURCE_DSN) is not configured");
    auto conn = PgConnect(DsnForTask(config_.source_dsn, req));
    // One repeatable-read snapshot for the whole extraction: a row updated mid-extract is
    // either in this day's snapshot or the next day's, never both halves.
    pqxx::transaction<pqxx::isolation_level::repeatable_read, pqxx::readwrite_policy::read_only> tx(*conn);
    tx.exec("SET LOCAL TIME ZONE 'UTC'");
    const std::string select = req.interval_start().empty()
                                   ? IncrementalSelect(d, req.ds())
                                   : IncrementalSelect(d, Window{req.interval_start(), req.interval_end()});
    tx.exec("DECLARE strata_extract NO SCROLL CURSOR FOR " + select);
    const std::string fetch = "FETCH " + std::to_string(config_.batch_rows) + " FROM strata_extract";
    std::vector<std::string> values(d.columns.size());
    std::vector<bool> nulls(d.columns.size());
    long long offset = 0;
    for (;;) {
      const pqxx::result r = tx.exec(fetch);
      if (r.empty()) break;
      for (const auto& row : r) {
        for (size_t i = 0; i < d.columns.size(); ++i) {
          nulls[i] = row[static_cast<int>(i)].is_null();
          values[i] = nulls[i] ? std::string() : row[static_cast<int>(i)].c_str();
        }
        sink.Good(values, nulls, d.source.table + " row=" + std::to_string(offset++));
      }
    }
    tx.commit();
  }

  // GET with bounded retries on transport errors, 429 and 5xx (exponential backoff + jitter,
  // honouring Retry-After); other statuses fail at once with the (redacted) URL.
  std::string GetWithRetry(const std::string& url, const std::string& dataset) {
    std::mt19937 rng(std::random_device{}());
    for (int attempt = 1;; ++attempt) {
      const HttpResponse r = HttpGet(url);
      if (r.status == 200) return r.body;
      const bool retryable = r.status == 0 || r.status == 429 || r.status >= 500;
      const std::string what = r.status == 0 ? r.error : "HTTP " + std::to_string(r.status);
      if (!retryable || attempt >= 5)
        throw EnvError("GET " + RedactUrl(url) + ": " + what + " after " + std::to_string(attempt) + " attempt(s)");
      long delay_ms = 100L << attempt;
      if (auto it = r.headers.find("retry-after"); it != r.headers.end()) {
        try {
          delay_ms = std::max(delay_ms, std::stol(it->second) * 1000L);
        } catch (const std::exception&) {
        }
      }
      delay_ms += std::uniform_int_distribution<long>(0, delay_ms / 2)(rng);
      metrics_.http_retries.Add({{"dataset", dataset}}).Increment();
      spdlog::warn("retrying url={} status={} attempt={} delay_ms={}", RedactUrl(url), what, attempt, delay_ms);
      std::this_thread::sleep_for(std::chrono::milliseconds(std::min(delay_ms, 30000L)));
    }
  }

  void ExtractHttpJson(const TaskRequest& req, const DatasetSpec& d, Sink& sink) {
    int total_pages = 1;
    for (int page = 1; page <= total_pages; ++page) {
      const std::string url = config_.source_http + d.source.path + "?" + d.source.date_param + "=" +
                              UrlEncode(req.ds()) + "&page=" + std::to_string(page);
      const std::string body = GetWithRetry(url, d.name);
      const std::string pos = "page=" + std::to_string(page);
      nlohmann::json doc = nlohmann::json::parse(body, nullptr, /*allow_exceptions=*/false);
      if (doc.is_discarded() || !doc.is_object()) {
        if (page == 1) throw InputError("GET " + RedactUrl(url) + ": response is not a JSON object");
        sink.Reject("bad JSON: page body does not parse", pos, body);
        continue;
      }
      if (doc.contains("total_pages") && doc["total_pages"].is_number_integer())
        total_pages = doc["total_pages"].get<int>();
      auto recs = doc.find(d.source.records);
      if (recs == doc.end() || !recs->is_array())
        throw InputError("GET " + RedactUrl(url) + ": expected an array under \"" + d.source.records + "\"");
      for (size_t i = 0; i < recs->size(); ++i) sink.Json((*recs)[i], pos + " index=" + std::to_string(i));
    }
  }

  void ExtractHtmlTable(const TaskRequest&, const DatasetSpec& d, Sink& sink) {
    const std::string url = config_.source_http + d.source.path;
    HtmlTable t;
    try {
      t = ::strata::ingest::ExtractHtmlTable(GetWithRetry(url, d.name), d.source.table_id);
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
  TaskRunner runner_;
};

}  // namespace

std::unique_ptr<Component> MakeIngest(const Config& config, prometheus::Registry& registry) {
  return std::make_unique<IngestImpl>(config, registry);
}

}  // namespace strata::ingest

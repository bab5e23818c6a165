#include "services/quality/quality.h"

#include <grpcpp/grpcpp.h>
#include <prometheus/counter.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

#include "common/bus.h"
#include "common/config.h"
#include "common/errors.h"
#include "common/events.h"
#include "common/http_client.h"
#include "common/lake.h"
#include "common/pg.h"
#include "common/spec.h"
#include "common/task_runner.h"
#include "common/time_util.h"
#include "strata.grpc.pb.h"

namespace strata::quality {

namespace {

using strata::v1::TaskRequest;

const char* kDdl = R"SQL(
CREATE SCHEMA IF NOT EXISTS quality;
CREATE TABLE IF NOT EXISTS quality.check_results (
  id bigserial PRIMARY KEY,
  run_id text NOT NULL,
  ds date NOT NULL,
  check_name text NOT NULL,
  kind text NOT NULL,
  severity text NOT NULL,
  target text NOT NULL,
  status text NOT NULL CHECK (status IN ('pass', 'fail', 'warn')),
  observed text,
  threshold text,
  message text,
  checked_at timestamptz NOT NULL DEFAULT now());
CREATE INDEX IF NOT EXISTS check_results_ds ON quality.check_results (ds, check_name, checked_at DESC);
)SQL";

struct Metrics {
  explicit Metrics(prometheus::Registry& r)
      : checks(prometheus::BuildCounter().Name("strata_quality_checks_total")
                   .Help("Check results, by kind and status").Register(r)),
        alerts(prometheus::BuildCounter().Name("strata_quality_alerts_total")
                   .Help("Webhook alerts, by outcome (sent|failed|skipped)").Register(r)) {}
  prometheus::Family<prometheus::Counter>& checks;
  prometheus::Family<prometheus::Counter>& alerts;
};

}  // namespace

std::string AlertPayload(const std::string& pipeline, const std::string& ds, const std::string& run_id,
                         const std::vector<CheckResult>& failed) {
  std::string text = "strata: " + std::to_string(failed.size()) + " check(s) failed for pipeline " + pipeline +
                     " ds=" + ds + " run=" + run_id + ":";
  nlohmann::json checks = nlohmann::json::array();
  for (const auto& f : failed) {
    text += "\n- " + f.name + " (" + f.severity + "): " + f.message;
    checks.push_back({{"check", f.name}, {"kind", f.kind}, {"severity", f.severity}, {"target", f.target},
                      {"observed", f.observed}, {"threshold", f.threshold}, {"message", f.message}});
  }
  return nlohmann::json{{"text", text}, {"pipeline", pipeline}, {"ds", ds}, {"run_id", run_id}, {"checks", checks}}
      .dump();
}

namespace {

class QualityImpl final : public Component, public strata::v1::Quality::Service {
 public:
  QualityImpl(const Config& config, prometheus::Registry& registry)
      : config_(config), spec_(LoadPipelineSpec(config.pipeline_spec)), metrics_(registry), runner_(1) {
    if (config_.warehouse_dsn.empty()) throw InputError("warehouse_dsn (STRATA_PG_DSN) is not configured");
    auto conn = PgConnect(config_.warehouse_dsn);
    RunDdl(*conn, kDdl);
  }

  std::vector<grpc::Service*> GrpcServices() override { return {this}; }
  void Stop() override { runner_.Stop(); }

  grpc::Status RunChecks(grpc::ServerContext*, const TaskRequest* req, strata::v1::TaskAccepted* resp) override {
    if (!IsValidDate(req->ds()))
      return {grpc::StatusCode::INVALID_ARGUMENT, "ds: expected YYYY-MM-DD, got \"" + req->ds() + "\""};
    if (req->run_id().empty()) return {grpc::StatusCode::INVALID_ARGUMENT, "run_id: must not be empty"};
    TaskRequest copy = *req;
    if (!runner_.Submit([this, copy] { Run(copy); }))
      return {grpc::StatusCode::UNAVAILABLE, "quality is shutting down"};
    resp->set_task(req->task());
    return grpc::Status::OK;
  }

 private:
  void Run(const TaskRequest& req) {
    strata::v1::Event ev;
    try {
      std::vector<CheckResult> results = Evaluate(req);
      std::vector<CheckResult> failed;
      std::string failed_errors;
      {
        auto conn = PgConnect(config_.warehouse_dsn);
        pqxx::work tx(*conn);
        for (const auto& r : results) {
          tx.exec_params(
              "INSERT INTO quality.check_results (run_id, ds, check_name, kind, severity, target, status, "
              "observed, threshold, message) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
              req.run_id(), req.ds(), r.name, r.kind, r.severity, r.target, r.status, r.observed, r.threshold,
              r.message);
          metrics_.checks.Add({{"kind", r.kind}, {"status", r.status}}).Increment();
          if (r.status != "pass") failed.push_back(r);
          if (r.status == "fail") failed_errors += (failed_errors.empty() ? "" : ", ") + r.name;
        }
        tx.commit();
      }
      if (!failed.empty()) Alert(req, failed);
      spdlog::info("checks ds={} run_id={} total={} not_passed={}", req.ds(), req.run_id(), results.size(),
                   failed.size());
      ev = failed_errors.empty()
               ? TaskEvent(req, true, std::to_string(results.size()) + " checks passed", static_cast<long long>(results.size()))
               : TaskEvent(req, false, "checks failed: " + failed_errors, static_cast<long long>(results.size()));
    } catch (const std::exception& e) {
      spdlog::error("checks could not run ds={} error={}", req.ds(), e.what());
      ev = TaskEvent(req, false, std::string("checks could not run: ") + e.what());
    }
    try {
      Bus bus(config_.redis_url);
      PublishEvent(bus, "quality", ev);
    } catch (const std::exception& e) {
      spdlog::error("cannot publish event error={}", e.what());
    }
  }

  std::vector<CheckResult> Evaluate(const TaskRequest& req) {
    auto conn = PgConnect(config_.warehouse_dsn);
    pqxx::read_transaction tx(*conn);
    std::vector<CheckResult> out;
    auto count = [&](const std::string& sql) { return tx.exec(sql)[0][0].as<long long>(); };
    for (const CheckSpec& c : spec_.checks) {
      auto base = [&](const std::string& target) {
        CheckResult r;
        r.name = c.name;
        r.kind = c.kind;
        r.severity = c.severity;
        r.target = target;
        return r;
      };
      auto finish = [&](CheckResult r, long long bad, const std::string& what) {
        r.observed = std::to_string(bad);
        r.threshold = "0";
        r.status = bad == 0 ? "pass" : (c.severity == "warn" ? "warn" : "fail");
        r.message = bad == 0 ? "ok" : std::to_string(bad) + " " + what;
        out.push_back(std::move(r));
      };
      const std::string col = c.columns.empty() ? "" : QuoteIdent(c.columns.front());
      if (c.kind == "not_null") {
        finish(base(c.table + "." + c.columns.front()),
               count("SELECT count(*) FROM " + QuoteQualified(c.table) + " WHERE " + col + " IS NULL"), "rows with NULL");
      } else if (c.kind == "unique") {
        std::string cols;
        for (const auto& k : c.columns) cols += (cols.empty() ? "" : ", ") + QuoteIdent(k);
        finish(base(c.table + "(" + cols + ")"),
               count("SELECT count(*) FROM (SELECT 1 FROM " + QuoteQualified(c.table) + " GROUP BY " + cols +
                     " HAVING count(*) > 1) dup"),
               "duplicated key values");
      } else if (c.kind == "relationships") {
        finish(base(c.table + "." + c.columns.front() + " -> " + c.to_table + "." + c.to_column),
               count("SELECT count(*) FROM " + QuoteQualified(c.table) + " t WHERE t." + col +
                     " IS NOT NULL AND NOT EXISTS (SELECT 1 FROM " + QuoteQualified(c.to_table) + " p WHERE p." +
                     QuoteIdent(c.to_column) + " = t." + col + ")"),
               "rows without a parent");
      } else if (c.kind == "accepted_values") {
        std::string list;
        for (const auto& v : c.values) list += (list.empty() ? "" : ", ") + tx.quote(v);
        finish(base(c.table + "." + c.columns.front()),
               count("SELECT count(*) FROM " + QuoteQualified(c.table) + " WHERE " + col + " IS NOT NULL AND " + col +
                     "::text NOT IN (" + list + ")"),
               "rows outside the accepted values");
      } else if (c.kind == "reconciliation") {
        for (const auto& d : spec_.datasets) out.push_back(Reconcile(tx, c, d, req));
      } else if (c.kind == "dead_letters") {
        for (const auto& d : spec_.datasets) {
          const auto r = tx.exec_params(
              "SELECT coalesce(sum(rejected), 0) FROM ops.task_runs WHERE run_id = $1 AND task = $2",
              req.run_id(), "extract." + d.name);
          CheckResult res = base(d.name);
          res.name = c.name + ":" + d.name;
          finish(res, r[0][0].as<long long>(), "records dead-lettered (see strata:deadletter)");
        }
      }
    }
    return out;
  }

  // source extract = lake manifest = staging rows, for one dataset and ds.
  CheckResult Reconcile(pqxx::read_transaction& tx, const CheckSpec& c, const DatasetSpec& d, const TaskRequest& req) {
    CheckResult r;
    r.name = c.name + ":" + d.name;
    r.kind = c.kind;
    r.severity = c.severity;
    r.target = d.name + " ds=" + req.ds();
    const auto src = tx.exec_params("SELECT rows FROM ops.task_runs WHERE run_id = $1 AND task = $2",
                                    req.run_id(), "extract." + d.name);
    const long long source = src.empty() ? -1 : src[0][0].as<long long>();
    const auto m = ReadManifest(PartitionDir(config_.lake_root, "bronze", d.name, req.ds()));
    const long long lake = m ? m->rows : -1;
    const long long staging = tx.exec_params("SELECT count(*) FROM staging." + QuoteIdent(d.name) + " WHERE ds = $1",
                                             req.ds())[0][0].as<long long>();
    r.observed = "source=" + std::to_string(source) + " lake=" + std::to_string(lake) +
                 " staging=" + std::to_string(staging);
    r.threshold = "all equal";
    const bool ok = source >= 0 && source == lake && lake == staging;
    r.status = ok ? "pass" : (c.severity == "warn" ? "warn" : "fail");
    r.message = ok ? "ok" : "row counts differ across layers: " + r.observed;
    return r;
  }

  void Alert(const TaskRequest& req, const std::vector<CheckResult>& failed) {
    if (config_.webhook_url.empty()) {
      metrics_.alerts.Add({{"outcome", "skipped"}}).Increment();
      return;
    }
    const std::string body = AlertPayload(req.pipeline(), req.ds(), req.run_id(), failed);
    for (int attempt = 1; attempt <= 3; ++attempt) {
      const HttpResponse r = HttpPost(config_.webhook_url, body, "application/json");
      if (r.status >= 200 && r.status < 300) {
        metrics_.alerts.Add({{"outcome", "sent"}}).Increment();
        return;
      }
      spdlog::warn("webhook attempt={} url={} status={} error={}", attempt, RedactUrl(config_.webhook_url),
                   r.status, r.error);
      std::this_thread::sleep_for(std::chrono::milliseconds(200 * attempt));
    }
    // A notifier outage must not fail the pipeline; it is counted and logged instead.
    metrics_.alerts.Add({{"outcome", "failed"}}).Increment();
  }

  Config config_;
  PipelineSpec spec_;
  Metrics metrics_;
  TaskRunner runner_;
};

}  // namespace

std::unique_ptr<Component> MakeQuality(const Config& config, prometheus::Registry& registry) {
  return std::make_unique<QualityImpl>(config, registry);
}

}  // namespace strata::quality

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
#include "common/governance.h"
#include "common/http_client.h"
#include "common/lake.h"
#include "common/lake_store.h"
#include "common/pg.h"
#include "common/spec.h"
#include "common/task_lease.h"
#include "common/task_runner.h"
#include "common/time_util.h"
#include "services/quality/checks.h"
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
ALTER TABLE quality.check_results ADD COLUMN IF NOT EXISTS sample jsonb NOT NULL DEFAULT '[]';
CREATE INDEX IF NOT EXISTS check_results_ds ON quality.check_results (ds, check_name, checked_at DESC);
-- History is never rewritten; this is the answer to "what is the state of check X for ds?".
CREATE OR REPLACE VIEW quality.latest_results AS
  SELECT DISTINCT ON (ds, check_name) * FROM quality.check_results
  ORDER BY ds, check_name, checked_at DESC, id DESC;
-- What was last alerted per check and ds, so re-runs do not re-alert.
CREATE TABLE IF NOT EXISTS quality.alert_state (
  check_name text NOT NULL,
  ds date NOT NULL,
  state text NOT NULL CHECK (state IN ('ok', 'failing')),
  changed_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (check_name, ds));
CREATE TABLE IF NOT EXISTS quality.profiles (
  dataset text NOT NULL,
  ds date NOT NULL,
  column_name text NOT NULL,
  row_count bigint NOT NULL,
  null_count bigint NOT NULL,
  null_ratio double precision NOT NULL,
  distinct_count bigint NOT NULL,
  run_id text NOT NULL,
  profiled_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (dataset, ds, column_name));
)SQL";

constexpr int kSampleRows = 5;

struct Metrics {
  explicit Metrics(prometheus::Registry& r)
      : checks(prometheus::BuildCounter().Name("strata_quality_checks_total")
                   .Help("Check results, by kind and status").Register(r)),
        alerts(prometheus::BuildCounter().Name("strata_quality_alerts_total")
                   .Help("Webhook alerts, by event (failing|recovered) and outcome (sent|failed|skipped)")
                   .Register(r)) {
    alerts.Add({{"event", "failing"}, {"outcome", "failed"}});  // the notifier-outage series exists from start
  }
  prometheus::Family<prometheus::Counter>& checks;
  prometheus::Family<prometheus::Counter>& alerts;
};


class QualityImpl final : public Component, public strata::v1::Quality::Service {
 public:
  QualityImpl(const Config& config, prometheus::Registry& registry)
      : config_(config), spec_(LoadPipelineSpec(config.pipeline_spec)), metrics_(registry), leases_(config_.redis_url, std::chrono::seconds(config_.task_lease_seconds)), runner_(1) {
    if (config_.warehouse_dsn.empty()) throw InputError("warehouse_dsn (STRATA_PG_DSN) is not configured");
    auto conn = PgConnect(config_.warehouse_dsn);
    RunDdl(*conn, std::string(kDdl) + GovernanceDdl());
  }

  std::vector<grpc::Service*> GrpcServices() override { return {this}; }
  void Stop() override { runner_.Stop(); }

  grpc::Status RunChecks(grpc::ServerContext*, const TaskRequest* req, strata::v1::TaskAccepted* resp) override {
    if (!IsValidDate(req->ds()))
      return {grpc::StatusCode::INVALID_ARGUMENT, "ds: expected YYYY-MM-DD, got \"" + req->ds() + "\""};
    if (req->run_id().empty()) return {grpc::StatusCode::INVALID_ARGUMENT, "run_id: must not be empty"};
    TaskRequest copy = *req;
    leases_.Hold(copy);
    if (!runner_.Submit([this, copy] {
          Run(copy);
          leases_.Release(copy);
        })) {
      leases_.Release(copy);
      return {grpc::StatusCode::UNAVAILABLE, "quality is shutting down"};
    }
    resp->set_task(req->task());
    return grpc::Status::OK;
  }

  grpc::Status Notify(grpc::ServerContext*, const strata::v1::NotifyRequest* req, strata::v1::NotifyReply*) override {
    if (config_.webhook_url.empty()) {
      spdlog::warn("alert (no webhook configured) event={} ds={} message={}", req->event(), req->ds(), req->message());
      metrics_.alerts.Add({{"event", req->event()}, {"outcome", "skipped"}}).Increment();
      return grpc::Status::OK;
    }
    nlohmann::json body = {{"event", req->event()}, {"pipeline", req->pipeline()}, {"ds", req->ds()},
                           {"message", req->message()}};
    if (config_.webhook_format == "slack")
      body["text"] = ":alarm_clock: strata " + req->event() + ": pipeline=" + req->pipeline() + " ds=" + req->ds() +
                     " — " + req->message();
    for (int attempt = 1; attempt <= 3; ++attempt) {
      const HttpResponse r = HttpPost(config_.webhook_url, body.dump(), "application/json");
      if (r.status >= 200 && r.status < 300) {
        metrics_.alerts.Add({{"event", req->event()}, {"outcome", "sent"}}).Increment();
        return grpc::Status::OK;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(200 << attempt));
    }
    metrics_.alerts.Add({{"event", req->event()}, {"outcome", "failed"}}).Increment();
    return {grpc::StatusCode::UNAVAILABLE, "webhook did not accept the alert"};
  }

  grpc::Status LatestResults(grpc::ServerContext*, const strata::v1::CheckResultsRequest* req,
                             strata::v1::CheckResultsReply* resp) override {
    if (!IsValidDate(req->ds()))
      return {grpc::StatusCode::INVALID_ARGUMENT, "ds: expected YYYY-MM-DD, got \"" + req->ds() + "\""};
    try {
      auto conn = PgConnect(config_.warehouse_dsn);
      pqxx::read_transaction tx(*conn);
      const auto r = tx.exec_params(
          "SELECT check_name, kind, severity, target, status, coalesce(observed, ''), coalesce(threshold, ''), "
          "coalesce(message, ''), sample::text, run_id, checked_at::text FROM quality.latest_results "
          "WHERE ds = $1 ORDER BY check_name",
          req->ds());
      for (const auto& row : r) {
        auto* c = resp->add_results();
        c->set_check(row[0].c_str());
        c->set_kind(row[1].c_str());
        c->set_severity(row[2].c_str());
        c->set_target(row[3].c_str());
        c->set_status(row[4].c_str());
        c->set_observed(row[5].c_str());
        c->set_threshold(row[6].c_str());
        c->set_message(row[7].c_str());
        c->set_sample_json(row[8].c_str());
        c->set_run_id(row[9].c_str());
        c->set_checked_at(row[10].c_str());
      }
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return {grpc::StatusCode::UNAVAILABLE, e.what()};
    }
  }

  grpc::Status Profile(grpc::ServerContext*, const strata::v1::ProfileRequest* req,
                       strata::v1::ProfileReply* resp) override {
    if (!IsValidDate(req->ds()))
      return {grpc::StatusCode::INVALID_ARGUMENT, "ds: expected YYYY-MM-DD, got \"" + req->ds() + "\""};
    if (!spec_.Find(req->dataset()))
      return {grpc::StatusCode::NOT_FOUND, "dataset '" + req->dataset() + "' is not in pipeline '" + spec_.name + "'"};
    try {
      auto conn = PgConnect(config_.warehouse_dsn);
      pqxx::read_transaction tx(*conn);
      const auto r = tx.exec_params(
          "SELECT column_name, row_count, null_count, null_ratio, distinct_count FROM quality.profiles "
          "WHERE dataset = $1 AND ds = $2 ORDER BY column_name",
          req->dataset(), req->ds());
      if (r.empty()) return {grpc::StatusCode::NOT_FOUND, "no profile for " + req->dataset() + " ds=" + req->ds()};
      for (const auto& row : r) {
        auto* c = resp->add_columns();
        c->set_column(row[0].c_str());
        c->set_rows(row[1].as<long long>());
        c->set_nulls(row[2].as<long long>());
        c->set_null_ratio(row[3].as<double>());
        c->set_distinct(row[4].as<long long>());
      }
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return {grpc::StatusCode::UNAVAILABLE, e.what()};
    }
  }

 private:
  void Run(const TaskRequest& req) {
    strata::v1::Event ev;
    try {
      auto conn = PgConnect(DsnForTask(config_.warehouse_dsn, req));
      std::vector<CheckResult> results = Evaluate(*conn, req);
      std::string failed_errors;
      std::vector<std::pair<Transition, CheckResult>> alerts;
      {
        pqxx::work tx(*conn);
        for (const auto& r : results) {
          tx.exec_params(
              "INSERT INTO quality.check_results (run_id, ds, check_name, kind, severity, target, status, "
              "observed, threshold, message, sample) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb)",
              req.run_id(), req.ds(), r.name, r.kind, r.severity, r.target, r.status, r.observed, r.threshold,
              r.message, r.sample);
          metrics_.checks.Add({{"kind", r.kind}, {"status", r.status}}).Increment();
          if (r.status == "fail") failed_errors += (failed_errors.empty() ? "" : ", ") + r.name;
          const auto st = tx.exec_params("SELECT state FROM quality.alert_state WHERE check_name = $1 AND ds = $2",
                                         r.name, req.ds());
          const Transition t = AlertTransition(st.empty() ? "" : st[0][0].c_str(), r.status);
          if (t != Transition::kNone) alerts.emplace_back(t, r);
        }
        tx.commit();
      }
      try {
        pqxx::work ptx(*conn);
        Profile(ptx, req);
        ptx.commit();
      } catch (const std::exception& e) {
        // Profiles inform; they never cost a run its check results.
        spdlog::warn("profiling failed ds={} error={}", req.ds(), e.what());
      }
      spdlog::info("checks ds={} run_id={} total={} failed={}", req.ds(), req.run_id(), results.size(),
                   failed_errors);
      ev = failed_errors.empty()
               ? TaskEvent(req, true, std::to_string(results.size()) + " checks passed",
                           static_cast<long long>(results.size()))
               : TaskEvent(req, false, "checks failed: " + failed_errors, static_cast<long long>(results.size()));
      Report(ev);
      // Alerts go out after the run has its answer: a slow or dead webhook never holds it up.
      for (const auto& [t, r] : alerts) Alert(*conn, req, t, r);
      return;
    } catch (const std::exception& e) {
      spdlog::error("checks could not run ds={} error={}", req.ds(), e.what());
      ev = TaskEvent(req, false, std::string("checks could not run: ") + e.what());
    }
    Report(ev);
  }

  void Report(const strata::v1::Event& ev) {
    try {
      Bus bus(config_.redis_url);
      PublishEvent(bus, "quality", ev);
    } catch (const std::exception& e) {
      spdlog::error("cannot publish event error={}", e.what());
    }
  }

  static CheckResult Base(const CheckSpec& c, const std::string& target) {
    CheckResult r;
    r.name = c.name;
    r.kind = c.kind;
    r.severity = c.severity;
    r.target = target;
    return r;
  }

  static void Verdict(CheckResult& r, const CheckSpec& c, bool ok, const std::string& message) {
    r.status = ok ? "pass" : (c.severity == "warn" ? "warn" : "fail");
    r.message = ok ? "ok" : message;
  }

  std::vector<CheckResult> Evaluate(pqxx::connection& conn, const TaskRequest& req) {
    pqxx::read_transaction tx(conn);
    tx.exec("SET LOCAL TIME ZONE 'UTC'");
    const std::string ds_lit = tx.quote(req.ds());
    std::vector<CheckResult> out;
    for (const CheckSpec& c : spec_.checks) {
      tx.exec("SAVEPOINT chk");
      try {
        if (auto failing = FailingRowsSql(c, ds_lit, [&](const std::string& v) { return tx.quote(v); })) {
          CheckResult r = Base(c, c.kind == "custom_sql" ? "custom SQL" : c.table + (c.columns.empty() ? "" : "." + c.columns.front()));
          const long long bad = tx.exec("SELECT count(*) FROM (" + *failing + ") failing")[0][0].as<long long>();
          if (bad > 0)
            r.sample = tx.exec("SELECT coalesce(json_agg(s), '[]')::text FROM (SELECT * FROM (" + *failing +
                               ") failing LIMIT " + std::to_string(kSampleRows) + ") s")[0][0].c_str();
          r.observed = std::to_string(bad);
          r.threshold = "0";
          Verdict(r, c, bad == 0, std::to_string(bad) + " failing row(s)");
          out.push_back(std::move(r));
        } else if (c.kind == "freshness") {
          out.push_back(Freshness(tx, c, req));
        } else if (c.kind == "volume_anomaly") {
          out.push_back(Volume(tx, c, req));
        } else if (c.kind == "reconciliation" && !c.fact.empty()) {
          out.push_back(ReconcileFact(tx, c, req));
        } else if (c.kind == "reconciliation") {
          for (const auto& d : spec_.datasets)
            if (c.datasets.empty() || std::count(c.datasets.begin(), c.datasets.end(), d.name))
              out.push_back(Reconcile(tx, c, d, req));
        } else if (c.kind == "dead_letters") {
          for (const auto& d : spec_.datasets) {
            if (!c.datasets.empty() && !std::count(c.datasets.begin(), c.datasets.end(), d.name)) continue;
            const auto rj = tx.exec_params(
                "SELECT coalesce(sum(rejected), 0) FROM ops.task_runs WHERE run_id = $1 AND task = $2",
                req.run_id(), "extract." + d.name);
            CheckResult r = Base(c, d.name);
            r.name = c.name + ":" + d.name;
            const long long n = rj[0][0].as<long long>();
            r.observed = std::to_string(n);
            r.threshold = "0";
            Verdict(r, c, n == 0, std::to_string(n) + " record(s) dead-lettered (see strata:deadletter)");
            out.push_back(std::move(r));
          }
        }
        tx.exec("RELEASE SAVEPOINT chk");
      } catch (const pqxx::sql_error& e) {
        // A check that cannot run is a failed check, not a crashed service: say why.
        tx.exec("ROLLBACK TO SAVEPOINT chk");
        CheckResult r = Base(c, c.table);
        r.status = "fail";
        r.message = std::string("check could not run: ") + e.what();
        out.push_back(std::move(r));
      }
    }
    return out;
  }

  CheckResult Freshness(pqxx::read_transaction& tx, const CheckSpec& c, const TaskRequest& req) {
    CheckResult r = Base(c, c.table + "." + c.columns.front());
    // Age of the newest business timestamp at the end of the logical day.
    const auto row = tx.exec("SELECT extract(epoch FROM (" + tx.quote(req.ds()) + "::date + 1)::timestamptz - max(" +
                             QuoteIdent(c.columns.front()) + ")) / 3600.0 FROM " + QuoteQualified(c.table) +
                             (c.slice.empty() ? "" : " WHERE " + DateKeyExpr(c.slice, tx.quote(req.ds()))))[0];
    char threshold[64];
    std::snprintf(threshold, sizeof threshold, "<= %.1f h", c.max_age_hours);
    r.threshold = threshold;
    if (row[0].is_null()) {
      r.observed = "no rows";
      Verdict(r, c, false, "no data at all in " + c.table);
      return r;
    }
    const double age = row[0].as<double>();
    char observed[64];
    std::snprintf(observed, sizeof observed, "%.1f h", age);
    r.observed = observed;
    Verdict(r, c, age <= c.max_age_hours,
            "newest " + c.columns.front() + " is " + r.observed + " old at the end of " + req.ds());
    return r;
  }

  CheckResult Volume(pqxx::read_transaction& tx, const CheckSpec& c, const TaskRequest& req) {
    CheckResult r = Base(c, c.table);
    const std::string col = QuoteIdent(c.date_column);
    const auto rows = tx.exec_params(
        "SELECT d::date, (SELECT count(*) FROM " + QuoteQualified(c.table) + " WHERE " + col + "::date = d::date) "
        "FROM generate_series($1::date - $2::int, $1::date, interval '1 day') d ORDER BY d",
        req.ds(), c.lookback_days);
    std::vector<long long> history;
    long long today = 0;
    for (const auto& row : rows) {
      if (std::string(row[0].c_str()) == req.ds()) today = row[1].as<long long>();
      else if (row[1].as<long long>() > 0) history.push_back(row[1].as<long long>());
    }
    const VolumeVerdict v = JudgeVolume(today, history, c.max_sigma);
    r.observed = std::to_string(today);
    char threshold[96];
    std::snprintf(threshold, sizeof threshold, "|x - %.1f| <= %.1f sigma", v.mean, c.max_sigma);
    r.threshold = threshold;
    Verdict(r, c, v.ok, v.message);
    if (v.ok) r.message = v.message;
    return r;
  }

  // source extract = lake manifest = staging (= facts, when `to` names the fact table).
  CheckResult Reconcile(pqxx::read_transaction& tx, const CheckSpec& c, const DatasetSpec& d,
                        const TaskRequest& req) {
    CheckResult r = Base(c, d.name + " ds=" + req.ds());
    r.name = c.name + ":" + d.name;
    const auto src = tx.exec_params("SELECT rows FROM ops.task_runs WHERE run_id = $1 AND task = $2",
                                    req.run_id(), "extract." + d.name);
    const long long source = src.empty() ? -1 : src[0][0].as<long long>();
    const auto m = ReadManifest(*OpenLakeStore(config_.lake_root), PartitionKey("bronze", d.name, req.ds()));
    const long long lake = m ? m->rows : -1;
    const long long staging =
        tx.exec_params("SELECT count(*) FROM staging." + QuoteIdent(d.name) + " WHERE ds = $1", req.ds())[0][0]
            .as<long long>();
    r.observed = "source=" + std::to_string(source) + " lake=" + std::to_string(lake) +
                 " staging=" + std::to_string(staging);
    bool ok = source >= 0 && source == lake && lake == staging;
    if (!c.to_table.empty()) {
      const long long facts = tx.exec("SELECT count(*) FROM " + QuoteQualified(c.to_table) + " WHERE " +
                                      DateKeyExpr(c.to_column, tx.quote(req.ds())))[0][0]
                                  .as<long long>();
      r.observed += " " + c.to_table + "=" + std::to_string(facts);
      ok = ok && facts == staging;
    }
    r.threshold = "all equal";
    Verdict(r, c, ok, "row counts differ across layers: " + r.observed);
    return r;
  }

  // Staging → fact: every row staged on ds that the source still has is a live fact row.
  CheckResult ReconcileFact(pqxx::read_transaction& tx, const CheckSpec& c, const TaskRequest& req) {
    const FactSpec& f = *spec_.FindFact(c.fact);
    CheckResult r = Base(c, "dwh." + f.name + " ds=" + req.ds());
    const std::string gap = FactGapSql(spec_, f, c.measure, tx.quote(req.ds()) + "::date");
    const auto row = tx.exec("SELECT count(*), coalesce(sum(gap_measure), 0)::text FROM (" + gap + ") g")[0];
    const long long missing = row[0].as<long long>();
    if (missing > 0)
      r.sample = tx.exec("SELECT coalesce(json_agg(s), '[]')::text FROM (SELECT * FROM (" + gap + ") g LIMIT " +
                         std::to_string(kSampleRows) + ") s")[0][0].c_str();
    r.observed = std::to_string(missing) + " row(s)" + (c.measure.empty() ? "" : ", " + c.measure + " " + row[1].c_str());
    r.threshold = "0 rows";
    Verdict(r, c, missing == 0,
            "ds=" + req.ds() + ": " + std::to_string(missing) + " row(s) of " + f.from + " staged that day are not in dwh." +
                f.name + (c.measure.empty() ? "" : " (" + c.measure + " " + row[1].c_str() + " missing)"));
    return r;
  }

  // Per column of the staged dataset for ds: rows, NULLs and distinct values.
  void Profile(pqxx::work& tx, const TaskRequest& req) {
    for (const auto& d : spec_.datasets) {
      if (tx.exec("SELECT to_regclass(" + tx.quote("staging." + d.name) + ")")[0][0].is_null()) continue;
      std::string sql = "SELECT count(*)";
      for (const auto& col : d.columns)
        sql += ", count(" + QuoteIdent(col.name) + "), count(DISTINCT " + QuoteIdent(col.name) + ")";
      sql += " FROM staging." + QuoteIdent(d.name) + " WHERE ds = " + tx.quote(req.ds());
      const auto row = tx.exec(sql)[0];
      const long long rows = row[0].as<long long>();
      for (size_t i = 0; i < d.columns.size(); ++i) {
        const long long non_null = row[static_cast<int>(1 + 2 * i)].as<long long>();
        const long long distinct = row[static_cast<int>(2 + 2 * i)].as<long long>();
        const double ratio = rows == 0 ? 0.0 : static_cast<double>(rows - non_null) / static_cast<double>(rows);
        tx.exec_params(
            "INSERT INTO quality.profiles (dataset, ds, column_name, row_count, null_count, null_ratio, "
            "distinct_count, run_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (dataset, ds, column_name) "
            "DO UPDATE SET row_count = EXCLUDED.row_count, null_count = EXCLUDED.null_count, null_ratio = "
            "EXCLUDED.null_ratio, distinct_count = EXCLUDED.distinct_count, run_id = EXCLUDED.run_id, profiled_at = now()",
            d.name, req.ds(), d.columns[i].name, rows, rows - non_null, ratio, distinct, req.run_id());
      }
    }
  }

  // One webhook call per transition; the state only moves once the receiver took it, so an
  // outage is retried by the next run instead of being forgotten.
  void Alert(pqxx::connection& conn, const TaskRequest& req, Transition t, const CheckResult& r) {
    const char* event = t == Transition::kStartsFailing ? "failing" : "recovered";
    bool delivered = config_.webhook_url.empty();
    if (delivered) {
      metrics_.alerts.Add({{"event", event}, {"outcome", "skipped"}}).Increment();
      spdlog::warn("alert (no webhook configured) event={} check={} ds={}", event, r.name, req.ds());
    } else {
      const std::string body = AlertPayload(config_.webhook_format, t, req.pipeline(), req.ds(), req.run_id(), r);
      for (int attempt = 1; attempt <= 3 && !delivered; ++attempt) {
        const HttpResponse resp = HttpPost(config_.webhook_url, body, "application/json");
        delivered = resp.status >= 200 && resp.status < 300;
        if (!delivered) {
          spdlog::warn("webhook attempt={} url={} status={} error={}", attempt, RedactUrl(config_.webhook_url),
                       resp.status, resp.error);
          std::this_thread::sleep_for(std::chrono::milliseconds(200 << attempt));
        }
      }
      metrics_.alerts.Add({{"event", event}, {"outcome", delivered ? "sent" : "failed"}}).Increment();
    }
    if (!delivered) return;
    pqxx::work tx(conn);
    tx.exec_params(
        "INSERT INTO quality.alert_state (check_name, ds, state) VALUES ($1, $2, $3) ON CONFLICT (check_name, ds) "
        "DO UPDATE SET state = EXCLUDED.state, changed_at = now()",
        r.name, req.ds(), t == Transition::kStartsFailing ? "failing" : "ok");
    tx.commit();
  }

  Config config_;
  PipelineSpec spec_;
  Metrics metrics_;
  LeaseKeeper leases_;  // outlives runner_: its tasks release their leases
  TaskRunner runner_;
};

}  // namespace

std::unique_ptr<Component> MakeQuality(const Config& config, prometheus::Registry& registry) {
  return std::make_unique<QualityImpl>(config, registry);
}

}  // namespace strata::quality

#include "services/controller/controller.h"

#include <grpcpp/grpcpp.h>
#include <httplib.h>
#include <prometheus/counter.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <map>
#include <optional>
#include <set>
#include <random>
#include <thread>
#include <unistd.h>

#include "common/bus.h"
#include "common/config.h"
#include "common/cron.h"
#include "common/errors.h"
#include "common/events.h"
#include <nlohmann/json.hpp>
#include "common/governance.h"
#include "common/http_server.h"
#include "common/pg.h"
#include "common/spec.h"
#include "common/task_lease.h"
#include "common/task_runner.h"
#include "common/time_util.h"
#include "services/controller/dag.h"
#include "services/controller/schedule.h"
#include "services/controller/status_page.h"
#include "strata.grpc.pb.h"

namespace strata::controller {

namespace {

using namespace std::chrono_literals;
using strata::v1::RunInfo;

const char* kDdl = R"SQL(
CREATE SCHEMA IF NOT EXISTS ops;
CREATE TABLE IF NOT EXISTS ops.runs (
  run_id text PRIMARY KEY,
  pipeline text NOT NULL,
  ds date NOT NULL,
  state text NOT NULL,
  message text NOT NULL DEFAULT '',
  created_at timestamptz NOT NULL DEFAULT now(),
  started_at timestamptz,
  finished_at timestamptz);
CREATE INDEX IF NOT EXISTS runs_created ON ops.runs (created_at DESC);
ALTER TABLE ops.runs ADD COLUMN IF NOT EXISTS trigger text NOT NULL DEFAULT 'manual';
CREATE INDEX IF NOT EXISTS runs_pipeline_created ON ops.runs (pipeline, created_at DESC, run_id DESC);
CREATE INDEX IF NOT EXISTS runs_active ON ops.runs (pipeline, state) WHERE state IN ('queued', 'running', 'cancelling');
CREATE INDEX IF NOT EXISTS runs_ds ON ops.runs (pipeline, ds);
-- One scheduled run per date: the scheduler may look at the same date twice.
CREATE UNIQUE INDEX IF NOT EXISTS runs_one_scheduled ON ops.runs (pipeline, ds) WHERE trigger = 'schedule';
CREATE TABLE IF NOT EXISTS ops.task_events (
  id bigserial PRIMARY KEY,
  run_id text NOT NULL,
  task text NOT NULL,
  state text NOT NULL,
  attempt integer NOT NULL,
  message text NOT NULL DEFAULT '',
  at timestamptz NOT NULL DEFAULT clock_timestamp());
CREATE INDEX IF NOT EXISTS task_events_run ON ops.task_events (run_id, id);
CREATE TABLE IF NOT EXISTS ops.deadline_alerts (
  pipeline text NOT NULL,
  ds date NOT NULL,
  alerted_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (pipeline, ds));
CREATE TABLE IF NOT EXISTS ops.task_runs (
  run_id text NOT NULL REFERENCES ops.runs (run_id),
  task text NOT NULL,
  state text NOT NULL,
  attempt integer NOT NULL DEFAULT 0,
  rows bigint NOT NULL DEFAULT 0,
  rejected bigint NOT NULL DEFAULT 0,
  message text NOT NULL DEFAULT '',
  started_at timestamptz,
  finished_at timestamptz,
  PRIMARY KEY (run_id, task));
)SQL";

struct Metrics {
  explicit Metrics(prometheus::Registry& r)
      : runs(prometheus::BuildCounter().Name("strata_controller_runs_total")
                 .Help("Pipeline runs finished, by state").Register(r)),
        tasks(prometheus::BuildCounter().Name("strata_controller_tasks_total")
                  .Help("Tasks finished, by kind and state").Register(r)),
        active(prometheus::BuildGauge().Name("strata_controller_active_runs")
                   .Help("Runs currently executing").Register(r)),
        run_duration(prometheus::BuildHistogram().Name("strata_controller_run_duration_seconds")
                         .Help("Wall time of a pipeline run").Register(r)),
        last_success(prometheus::BuildGauge().Name("strata_controller_last_success_timestamp_seconds")
                         .Help("Unix time the last run succeeded (its marts were published)").Register(r)),
        leader(prometheus::BuildGauge().Name("strata_controller_leader")
                   .Help("1 while this controller holds the leader lock").Register(r)),
        deadline_misses(prometheus::BuildCounter().Name("strata_controller_deadline_misses_total")
                            .Help("Logical dates whose run missed its deadline (alerted once each)").Register(r)),
        lost_tasks(prometheus::BuildCounter().Name("strata_controller_lost_tasks_total")
                       .Help("Task attempts re-dispatched because their worker's lease lapsed").Register(r)),
        lost_batches(prometheus::BuildCounter().Name("strata_controller_lost_batches_total")
                         .Help("Exports whose batches were gone from the bus, extracted again").Register(r)) {
    leader.Add({}).Set(0);
    active.Add({}).Set(0);  // present from start-up: an absent series reads as "no data", not 0
    lost_tasks.Add({});
    lost_batches.Add({});
  }
  prometheus::Family<prometheus::Counter>& runs;
  prometheus::Family<prometheus::Counter>& tasks;
  prometheus::Family<prometheus::Gauge>& active;
  prometheus::Family<prometheus::Histogram>& run_duration;
  prometheus::Family<prometheus::Gauge>& last_success;
  prometheus::Family<prometheus::Gauge>& leader;
  prometheus::Family<prometheus::Counter>& deadline_misses;
  prometheus::Family<prometheus::Counter>& lost_tasks;
  prometheus::Family<prometheus::Counter>& lost_batches;
};

const char* KindName(TaskKind k) {
  switch (k) {
    case TaskKind::kExtract: return "extract";
    case TaskKind::kExport: return "export";
    case TaskKind::kLoad: return "load";
    case TaskKind::kModel: return "model";
    case TaskKind::kCheck: return "check";
    case TaskKind::kPublish: return "publish";
  }
  return "?";
}

class ControllerImpl final : public Component, public strata::v1::Controller::Service {
 public:
  ControllerImpl(const Config& config, prometheus::Registry& registry)
      : config_(config), spec_(LoadPipelineSpec(config.pipeline_spec)), metrics_(registry),
        runner_(config.max_active_runs) {
    if (config_.warehouse_dsn.empty()) throw InputError("warehouse_dsn (STRATA_PG_DSN) is not configured");
    auto conn = PgConnect(config_.warehouse_dsn);
    RunDdl(*conn, std::string(kDdl) + GovernanceDdl());
    // Round robin over every instance the target names (one, or several: STRATA_<SVC>_DIAL);
    // an instance that stops answering is skipped until it reconnects.
    auto channel = [&](const std::string& svc) {
      grpc::ChannelArguments args;
      args.SetLoadBalancingPolicyName("round_robin");
      return grpc::CreateCustomChannel(GrpcTarget(config_.endpoint(svc)), grpc::InsecureChannelCredentials(), args);
    };
    ingest_ = strata::v1::Ingest::NewStub(channel("ingest"));
    loader_ = strata::v1::WarehouseLoader::NewStub(channel("warehouse_loader"));
    quality_ = strata::v1::Quality::NewStub(channel("quality"));
    lake_ = strata::v1::LakeExport::NewStub(channel("lake_export"));
  }

  std::vector<grpc::Service*> GrpcServices() override { return {this}; }

  void Start() override {
    // The page first: a taken address must fail start-up before the leader thread exists.
    const std::string& listen = config_.endpoint("controller").http;
    if (!listen.empty()) {
      RegisterPage();
      http_.Start(listen, "controller status page", config_.reuse_port);
      spdlog::info("status page on http://{}/", listen);
    }
    leader_thread_ = std::thread([this] { Lead(); });
  }
  void Stop() override {
    http_.Stop();
    stop_ = true;
    cv_.notify_all();
    if (leader_thread_.joinable()) leader_thread_.join();
    runner_.Stop();
    if (events_thread_.joinable()) events_thread_.join();
  }

  grpc::Status StartRun(grpc::ServerContext*, const strata::v1::StartRunRequest* req, RunInfo* resp) override {
    const std::string pipeline = req->pipeline().empty() ? spec_.name : req->pipeline();
    if (pipeline != spec_.name)
      return {grpc::StatusCode::NOT_FOUND, "pipeline '" + pipeline + "' is not loaded (have '" + spec_.name + "')"};
    if (!IsValidDate(req->ds()))
      return {grpc::StatusCode::INVALID_ARGUMENT, "ds: expected YYYY-MM-DD, got \"" + req->ds() + "\""};
    std::string run_id;
    try {
      auto conn = PgConnect(config_.warehouse_dsn);
      pqxx::work tx(*conn);
      run_id = InsertRun(tx, pipeline, req->ds(), "manual");
      tx.commit();
    } catch (const std::exception& e) {
      return {grpc::StatusCode::UNAVAILABLE, std::string("cannot record run: ") + e.what()};
    }
    cv_.notify_all();
    spdlog::info("run queued run_id={} ds={}", run_id, req->ds());
    return Describe(run_id, resp);
  }

  // Records a queued run with all its tasks pending; the leader picks it up.
  std::string InsertRun(pqxx::work& tx, const std::string& pipeline, const std::string& ds, const std::string& trigger) {
    static std::mt19937 rng(std::random_device{}());
    static std::mutex rng_mu;
    std::string run_id;
    {
      std::lock_guard<std::mutex> lock(rng_mu);
      run_id = NewRunId(NowUnixMs(), rng());
    }
    tx.exec_params("INSERT INTO ops.runs (run_id, pipeline, ds, state, trigger) VALUES ($1, $2, $3, 'queued', $4)",
                   run_id, pipeline, ds, trigger);
    for (const auto& t : BuildDag(spec_))
      tx.exec_params("INSERT INTO ops.task_runs (run_id, task, state) VALUES ($1, $2, 'pending')", run_id, t.name);
    return run_id;
  }

  grpc::Status Backfill(grpc::ServerContext*, const strata::v1::BackfillRequest* req,
                        strata::v1::BackfillReply* resp) override {
    const std::string pipeline = req->pipeline().empty() ? spec_.name : req->pipeline();
    if (pipeline != spec_.name)
      return {grpc::StatusCode::NOT_FOUND, "pipeline '" + pipeline + "' is not loaded (have '" + spec_.name + "')"};
    if (!IsValidDate(req->from())) return {grpc::StatusCode::INVALID_ARGUMENT, "from: expected YYYY-MM-DD, got \"" + req->from() + "\""};
    if (!IsValidDate(req->to())) return {grpc::StatusCode::INVALID_ARGUMENT, "to: expected YYYY-MM-DD, got \"" + req->to() + "\""};
    if (req->from() > req->to()) return {grpc::StatusCode::INVALID_ARGUMENT, "from: must not be after to"};
    if (ParseDate(req->to()) - ParseDate(req->from()) >= 3660)
      return {grpc::StatusCode::INVALID_ARGUMENT, "from/to: at most 3660 days per backfill"};
    const std::string policy = req->reprocess().empty() ? "missing" : req->reprocess();
    if (policy != "missing" && policy != "failed" && policy != "all")
      return {grpc::StatusCode::INVALID_ARGUMENT, "reprocess: expected missing, failed or all, got '" + policy + "'"};
    try {
      auto conn = PgConnect(config_.warehouse_dsn);
      pqxx::work tx(*conn);
      // The latest run of each date in range decides what "missing" and "failed" mean.
      const auto latest = tx.exec_params(
          "SELECT DISTINCT ON (ds) ds::text, state FROM ops.runs WHERE pipeline = $1 AND ds BETWEEN $2 AND $3 "
          "ORDER BY ds, created_at DESC, run_id DESC",
          pipeline, req->from(), req->to());
      std::map<std::string, std::string> state_of;
      for (const auto& row : latest) state_of[row[0].c_str()] = row[1].c_str();
      for (std::string ds = req->from(); ds <= req->to(); ds = AddDays(ds, 1)) {
        auto it = state_of.find(ds);
        const bool missing = it == state_of.end();
        const bool failed = !missing && (it->second == "failed" || it->second == "cancelled");
        if (policy == "all" || missing || (policy == "failed" && failed)) resp->add_planned_ds(ds);
      }
      if (req->dry_run()) return grpc::Status::OK;
      std::vector<std::string> ids;
      for (const auto& ds : resp->planned_ds()) ids.push_back(InsertRun(tx, pipeline, ds, "backfill"));
      tx.commit();
      cv_.notify_all();
      spdlog::info("backfill queued pipeline={} from={} to={} reprocess={} runs={}", pipeline, req->from(), req->to(),
                   policy, ids.size());
      for (const auto& id : ids) {
        RunInfo* info = resp->add_runs();
        if (auto st = Describe(id, info); !st.ok()) return st;
      }
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return {grpc::StatusCode::UNAVAILABLE, e.what()};
    }
  }

  grpc::Status RunLog(grpc::ServerContext*, const strata::v1::GetRunRequest* req,
                      strata::v1::RunLogReply* resp) override {
    try {
      auto conn = PgConnect(config_.warehouse_dsn);
      pqxx::read_transaction tx(*conn);
      if (tx.exec_params("SELECT 1 FROM ops.runs WHERE run_id = $1", req->run_id()).empty())
        return {grpc::StatusCode::NOT_FOUND, "run '" + req->run_id() + "' does not exist"};
      const auto r = tx.exec_params(
          "SELECT to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), task, state, attempt, message "
          "FROM ops.task_events WHERE run_id = $1 ORDER BY id",
          req->run_id());
      for (const auto& row : r) {
        auto* l = resp->add_lines();
        l->set_at(row[0].c_str());
        l->set_task(row[1].c_str());
        l->set_state(row[2].c_str());
        l->set_attempt(row[3].as<int>());
        l->set_message(row[4].c_str());
      }
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return {grpc::StatusCode::UNAVAILABLE, e.what()};
    }
  }

  grpc::Status ListPipelines(grpc::ServerContext*, const strata::v1::ListPipelinesRequest*,
                             strata::v1::ListPipelinesReply* resp) override {
    auto* p = resp->add_pipelines();
    p->set_name(spec_.name);
    for (const auto& d : spec_.datasets) p->add_datasets(d.name);
    for (const auto& t : BuildDag(spec_)) p->add_tasks(t.name);
    if (spec_.schedule.present) {
      p->set_schedule_cron(spec_.schedule.cron);
      p->set_schedule_timezone(spec_.schedule.timezone);
      p->set_catchup(spec_.schedule.catchup);
      p->set_deadline(spec_.schedule.deadline);
      p->set_start_date(spec_.schedule.start_date);
    }
    p->set_leading(leader_);
    return grpc::Status::OK;
  }

  grpc::Status CancelRun(grpc::ServerContext*, const strata::v1::GetRunRequest* req, RunInfo* resp) override {
    try {
      auto conn = PgConnect(config_.warehouse_dsn);
      pqxx::work tx(*conn);
      const auto r = tx.exec_params("SELECT state FROM ops.runs WHERE run_id = $1 FOR UPDATE", req->run_id());
      if (r.empty()) return {grpc::StatusCode::NOT_FOUND, "run '" + req->run_id() + "' does not exist"};
      const std::string state = r[0][0].c_str();
      if (state != "queued" && state != "running")
        return {grpc::StatusCode::FAILED_PRECONDITION, "run '" + req->run_id() + "' is " + state + ", not active"};
      tx.exec_params("UPDATE ops.runs SET state = 'cancelling' WHERE run_id = $1", req->run_id());
      tx.commit();
    } catch (const std::exception& e) {
      return {grpc::StatusCode::UNAVAILABLE, e.what()};
    }
    spdlog::info("cancel requested run_id={}", req->run_id());
    return Describe(req->run_id(), resp);
  }

  grpc::Status ClearTask(grpc::ServerContext*, const strata::v1::ClearTaskRequest* req, RunInfo* resp) override {
    const auto dag = BuildDag(spec_);
    if (std::none_of(dag.begin(), dag.end(), [&](const TaskNode& t) { return t.name == req->task(); }))
      return {grpc::StatusCode::INVALID_ARGUMENT, "task: '" + req->task() + "' is not a task of pipeline '" +
                                                      spec_.name + "'"};
    try {
      auto conn = PgConnect(config_.warehouse_dsn);
      pqxx::work tx(*conn);
      const auto r = tx.exec_params("SELECT state FROM ops.runs WHERE run_id = $1 FOR UPDATE", req->run_id());
      if (r.empty()) return {grpc::StatusCode::NOT_FOUND, "run '" + req->run_id() + "' does not exist"};
      const std::string state = r[0][0].c_str();
      if (state == "queued" || state == "running" || state == "cancelling")
        return {grpc::StatusCode::FAILED_PRECONDITION, "run '" + req->run_id() + "' is still " + state};
      std::vector<std::string> reset = Downstream(dag, req->task());
      reset.insert(reset.begin(), req->task());
      for (const auto& t : reset)
        tx.exec_params("UPDATE ops.task_runs SET state = 'pending', message = '', started_at = NULL, "
                       "finished_at = NULL WHERE run_id = $1 AND task = $2",
                       req->run_id(), t);
      tx.exec_params("UPDATE ops.runs SET state = 'queued', message = '', finished_at = NULL WHERE run_id = $1",
                     req->run_id());
      tx.commit();
      spdlog::info("cleared run_id={} task={} and {} downstream", req->run_id(), req->task(), reset.size() - 1);
    } catch (const std::exception& e) {
      return {grpc::StatusCode::UNAVAILABLE, e.what()};
    }
    return Describe(req->run_id(), resp);
  }

  grpc::Status GetRun(grpc::ServerContext*, const strata::v1::GetRunRequest* req, RunInfo* resp) override {
    return Describe(req->run_id(), resp);
  }

  grpc::Status ListRuns(grpc::ServerContext*, const strata::v1::ListRunsRequest* req,
                        strata::v1::ListRunsReply* resp) override {
    if (req->limit() < 0) return {grpc::StatusCode::INVALID_ARGUMENT, "limit: must not be negative"};
    if (req->limit() > 1000) return {grpc::StatusCode::INVALID_ARGUMENT, "limit: at most 1000"};
    for (const auto* d : {&req->ds_from(), &req->ds_to()})
      if (!d->empty() && !IsValidDate(*d))
        return {grpc::StatusCode::INVALID_ARGUMENT, "ds_from/ds_to: expected YYYY-MM-DD, got \"" + *d + "\""};
    const int limit = req->limit() == 0 ? 20 : req->limit();
    const std::string pipeline = req->pipeline().empty() ? spec_.name : req->pipeline();
    try {
      auto conn = PgConnect(config_.warehouse_dsn);
      pqxx::read_transaction tx(*conn);
      const auto r = tx.exec_params(
          "SELECT run_id, pipeline, ds::text, state, message, coalesce(started_at::text, ''), "
          "coalesce(finished_at::text, ''), trigger FROM ops.runs "
          "WHERE pipeline = $1 AND ($2 = '' OR state = $2) "
          "AND ($3 = '' OR ds >= $3::date) AND ($4 = '' OR ds <= $4::date) "
          "AND ($5 = '' OR (created_at, run_id) < (SELECT created_at, run_id FROM ops.runs WHERE run_id = $5)) "
          "ORDER BY created_at DESC, run_id DESC LIMIT $6",
          pipeline, req->state(), req->ds_from(), req->ds_to(), req->page_token(), limit + 1);
      for (int i = 0; i < static_cast<int>(r.size()) && i < limit; ++i) FillRun(r[i], resp->add_runs());
      if (static_cast<int>(r.size()) > limit) resp->set_next_page_token(resp->runs(limit - 1).run_id());
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return {grpc::StatusCode::UNAVAILABLE, e.what()};
    }
  }

 private:
  static void FillRun(const pqxx::row& row, RunInfo* info) {
    info->set_run_id(row[0].c_str());
    info->set_pipeline(row[1].c_str());
    info->set_ds(row[2].c_str());
    info->set_state(row[3].c_str());
    info->set_message(row[4].c_str());
    info->set_started_at(row[5].c_str());
    info->set_finished_at(row[6].c_str());
    info->set_trigger(row[7].c_str());
  }

  grpc::Status Describe(const std::string& run_id, RunInfo* resp) {
    try {
      auto conn = PgConnect(config_.warehouse_dsn);
      pqxx::read_transaction tx(*conn);
      const auto r = tx.exec_params(
          "SELECT run_id, pipeline, ds::text, state, message, coalesce(started_at::text, ''), "
          "coalesce(finished_at::text, ''), trigger FROM ops.runs WHERE run_id = $1",
          run_id);
      if (r.empty()) return {grpc::StatusCode::NOT_FOUND, "run '" + run_id + "' does not exist"};
      FillRun(r[0], resp);
      const auto t = tx.exec_params(
          "SELECT task, state, attempt, rows, rejected, message, "
          "coalesce(extract(epoch FROM coalesce(finished_at, now()) - started_at), 0) "
          "FROM ops.task_runs WHERE run_id = $1 ORDER BY started_at NULLS LAST, task",
          run_id);
      for (const auto& row : t) {
        auto* task = resp->add_tasks();
        task->set_task(row[0].c_str());
        task->set_state(row[1].c_str());
        task->set_attempt(row[2].as<int>());
        task->set_rows(row[3].as<long long>());
        task->set_rejected(row[4].as<long long>());
        task->set_message(row[5].c_str());
        task->set_duration_seconds(row[6].as<double>());
      }
      return grpc::Status::OK;
    } catch (const std::exception& e) {
      return {grpc::StatusCode::UNAVAILABLE, e.what()};
    }
  }

  // ---- status page --------------------------------------------------------------------------

  void RegisterPage() {
    http_.server().Get("/", [](const httplib::Request&, httplib::Response& res) {
      res.set_content(StatusPageHtml(), "text/html; charset=utf-8");
    });
    http_.server().Get("/health", [](const httplib::Request&, httplib::Response& res) { res.set_content("ok\n", "text/plain"); });
    http_.server().Get("/api/grid", [this](const httplib::Request& req, httplib::Response& res) {
      try {
        int limit = req.has_param("limit") ? std::stoi(req.get_param_value("limit")) : 25;
        limit = std::max(1, std::min(limit, 200));
        const std::string pipeline = req.has_param("pipeline") ? req.get_param_value("pipeline") : spec_.name;
        res.set_content(GridJson(pipeline, limit, req.get_param_value("before")), "application/json");
      } catch (const std::exception& e) {
        res.status = 400;
        res.set_content(nlohmann::json{{"error", e.what()}}.dump(), "application/json");
      }
    });
    http_.server().Get(R"(/api/runs/([A-Za-z0-9_.:-]+))", [this](const httplib::Request& req, httplib::Response& res) {
      try {
        const std::string body = RunJsonFor(req.matches[1]);
        if (body.empty()) {
          res.status = 404;
          res.set_content(R"({"error":"no such run"})", "application/json");
        } else {
          res.set_content(body, "application/json");
        }
      } catch (const std::exception& e) {
        res.status = 503;
        res.set_content(nlohmann::json{{"error", e.what()}}.dump(), "application/json");
      }
    });
  }

  // One page of the grid: two indexed queries (a page of runs, then their tasks) whatever the
  // history's size, so the page stays fast with tens of thousands of runs.
  std::string GridJson(const std::string& pipeline, int limit, const std::string& before) {
    auto conn = PgConnect(config_.warehouse_dsn);
    pqxx::read_transaction tx(*conn);
    const auto runs = tx.exec_params(
        "SELECT run_id, ds::text, state, trigger, "
        "coalesce(extract(epoch FROM coalesce(finished_at, now()) - started_at), 0)::float8 "
        "FROM ops.runs WHERE pipeline = $1 "
        "AND ($2 = '' OR (created_at, run_id) < (SELECT created_at, run_id FROM ops.runs WHERE run_id = $2)) "
        "ORDER BY created_at DESC, run_id DESC LIMIT $3",
        pipeline, before, limit + 1);
    nlohmann::json out;
    out["pipeline"] = pipeline;
    out["metrics_url"] = "http://" + config_.endpoint("controller").metrics + "/metrics";
    out["tasks"] = nlohmann::json::array();
    for (const auto& t : BuildDag(spec_)) out["tasks"].push_back(t.name);
    out["runs"] = nlohmann::json::array();
    std::vector<std::string> ids;
    for (int i = 0; i < static_cast<int>(runs.size()) && i < limit; ++i) {
      ids.push_back(runs[i][0].c_str());
      out["runs"].push_back({{"run_id", runs[i][0].c_str()}, {"ds", runs[i][1].c_str()}, {"state", runs[i][2].c_str()},
                             {"trigger", runs[i][3].c_str()}, {"seconds", runs[i][4].as<double>()},
                             {"tasks", nlohmann::json::object()}});
    }
    out["next_before"] = static_cast<int>(runs.size()) > limit ? ids.back() : "";
    if (!ids.empty()) {
      std::string list;
      for (const auto& id : ids) list += (list.empty() ? "" : ",") + tx.quote(id);
      const auto tasks = tx.exec("SELECT run_id, task, state FROM ops.task_runs WHERE run_id IN (" + list + ")");
      std::map<std::string, size_t> index;
      for (size_t i = 0; i < ids.size(); ++i) index[ids[i]] = i;
      for (const auto& row : tasks) out["runs"][index[row[0].c_str()]]["tasks"][row[1].c_str()] = row[2].c_str();
    }
    return out.dump();
  }

  std::string RunJsonFor(const std::string& run_id) {
    RunInfo info;
    if (!Describe(run_id, &info).ok()) return "";
    nlohmann::json out = {{"run_id", info.run_id()}, {"ds", info.ds()}, {"state", info.state()},
                          {"message", info.message()}, {"trigger", info.trigger()}, {"tasks", nlohmann::json::array()},
                          {"checks", nlohmann::json::array()}};
    for (const auto& t : info.tasks())
      out["tasks"].push_back({{"task", t.task()}, {"state", t.state()}, {"attempt", t.attempt()}, {"rows", t.rows()},
                              {"rejected", t.rejected()}, {"seconds", t.duration_seconds()}, {"message", t.message()}});
    auto conn = PgConnect(config_.warehouse_dsn);
    pqxx::read_transaction tx(*conn);
    if (!tx.exec("SELECT to_regclass('quality.check_results')")[0][0].is_null()) {
      const auto checks = tx.exec_params(
          "SELECT check_name, status, coalesce(observed, ''), coalesce(message, '') FROM quality.check_results "
          "WHERE run_id = $1 ORDER BY status <> 'fail', status <> 'warn', check_name",
          run_id);
      for (const auto& c : checks)
        out["checks"].push_back({{"check", c[0].c_str()}, {"status", c[1].c_str()}, {"observed", c[2].c_str()},
                                 {"message", c[3].c_str()}});
    }
    return out.dump();
  }

  // ---- leadership and scheduling -------------------------------------------------------------

  // Whoever holds the session-level advisory lock leads: it consumes events and executes runs.
  // The others wait for the lock. A leader that loses its lock connection exits, so there is
  // never a second executor; its runs are resumed by the next leader from ops.task_runs.
  void Lead() {
    std::unique_ptr<pqxx::connection> lock_conn;
    while (!stop_ && !leader_) {
      try {
        if (!lock_conn) lock_conn = PgConnect(config_.warehouse_dsn);
        pqxx::nontransaction tx(*lock_conn);
        // One leader per pipeline: controllers of different pipelines never wait for each other.
        leader_ = tx.exec_params("SELECT pg_try_advisory_lock(7400010, hashtext($1))", spec_.name)[0][0].as<bool>();
      } catch (const std::exception& e) {
        lock_conn.reset();
        spdlog::warn("leader election error={}", e.what());
      }
      if (!leader_) std::this_thread::sleep_for(1s);
    }
    if (stop_) return;
    metrics_.leader.Add({}).Set(1);
    spdlog::info("leading: executing runs");
    events_thread_ = std::thread([this] { ConsumeEvents(); });
    auto last_lock_check = std::chrono::steady_clock::now();
    auto last_schedule_pass = std::chrono::steady_clock::now() - 1h;
    while (!stop_) {
      try {
        if (std::chrono::steady_clock::now() - last_lock_check > 2s) {
          pqxx::nontransaction tx(*lock_conn);
          tx.exec("SELECT 1");  // the lock lives as long as this session
          last_lock_check = std::chrono::steady_clock::now();
        }
        if (spec_.schedule.present && config_.schedules && std::chrono::steady_clock::now() - last_schedule_pass > 5s) {
          last_schedule_pass = std::chrono::steady_clock::now();
          SchedulePass();
        }
        ScheduleRuns();
      } catch (const pqxx::broken_connection& e) {
        spdlog::critical("lost the leader lock connection ({}); exiting so a standby takes over", e.what());
        std::_Exit(3);
      } catch (const std::exception& e) {
        spdlog::error("scheduler error={}", e.what());
      }
      std::unique_lock<std::mutex> lock(mu_);
      cv_.wait_for(lock, 200ms);
    }
  }

  // Starts queued runs and resumes running ones (left by a dead leader) up to max_active_runs.
  // Runs being resumed or cancelled go first; then queued backfill runs and other queued runs
  // take turns, so a long backfill never starves the daily runs and vice versa.
  void ScheduleRuns() {
    std::lock_guard<std::mutex> lock(active_mu_);
    if (static_cast<int>(active_.size()) >= config_.max_active_runs) return;
    auto conn = PgConnect(config_.warehouse_dsn);
    pqxx::read_transaction tx(*conn);
    const auto r = tx.exec_params(
        "SELECT run_id, ds::text, state, trigger FROM ops.runs "
        "WHERE pipeline = $1 AND state IN ('queued', 'running', 'cancelling') ORDER BY created_at, run_id LIMIT 500",
        spec_.name);
    std::deque<std::pair<std::string, std::string>> resume, backfill, other;
    for (const auto& row : r) {
      if (active_.count(row[0].c_str())) continue;
      auto item = std::make_pair(std::string(row[0].c_str()), std::string(row[1].c_str()));
      if (std::string(row[2].c_str()) != "queued") resume.push_back(item);
      else if (std::string(row[3].c_str()) == "backfill") backfill.push_back(item);
      else other.push_back(item);
    }
    while (static_cast<int>(active_.size()) < config_.max_active_runs &&
           !(resume.empty() && backfill.empty() && other.empty())) {
      std::deque<std::pair<std::string, std::string>>* from = &resume;
      if (resume.empty()) {
        const bool take_backfill = !backfill.empty() && (other.empty() || !last_pick_was_backfill_);
        from = take_backfill ? &backfill : &other;
        last_pick_was_backfill_ = take_backfill;
      }
      const auto [run_id, ds] = from->front();
      from->pop_front();
      active_.insert(run_id);
      const std::string pipeline = spec_.name;
      if (!runner_.Submit([this, run_id = run_id, pipeline, ds = ds] {
            Execute(run_id, pipeline, ds);
            std::lock_guard<std::mutex> l(active_mu_);
            active_.erase(run_id);
            cv_.notify_all();
          }))
        active_.erase(run_id);
    }
  }

  // The schedule: queue the due date (and, with catch-up, every earlier date since start_date
  // that has no run), and alert once per date whose run missed its deadline.
  void SchedulePass() {
    const ScheduleSpec& sc = spec_.schedule;
    auto conn = PgConnect(config_.warehouse_dsn);
    pqxx::work tx(*conn);
    const std::string local = tx.exec_params("SELECT to_char(now() AT TIME ZONE $1, 'YYYY-MM-DD HH24:MI')",
                                             sc.timezone)[0][0].c_str();
    const LocalMinute now{ParseDate(local.substr(0, 10)), std::stoi(local.substr(11, 2)) * 60 + std::stoi(local.substr(14, 2))};
    const auto range = DueRange(sc, now);
    if (!range) return;
    const auto have = tx.exec_params("SELECT DISTINCT ds::text FROM ops.runs WHERE pipeline = $1 AND ds BETWEEN $2 AND $3",
                                     spec_.name, range->first, range->second);
    std::set<std::string> existing;
    for (const auto& row : have) existing.insert(row[0].c_str());
    int queued = 0;
    for (const auto& ds : DatesToQueue(*range, existing)) {
      InsertRun(tx, spec_.name, ds, "schedule");
      ++queued;
    }
    const std::string& due = range->second;
    if (queued) spdlog::info("schedule queued runs={} through ds={} cron=\"{}\" tz={}", queued, due, sc.cron, sc.timezone);

    if (!sc.deadline.empty()) {
      // Look back a week for dates without a successful run and no alert yet.
      const auto late = tx.exec_params(
          "SELECT d::date::text FROM generate_series(greatest($2::date, $3::date - 7), $3::date, interval '1 day') d "
          "WHERE NOT EXISTS (SELECT 1 FROM ops.runs r WHERE r.pipeline = $1 AND r.ds = d::date AND r.state = 'succeeded') "
          "AND NOT EXISTS (SELECT 1 FROM ops.deadline_alerts a WHERE a.pipeline = $1 AND a.ds = d::date) ORDER BY 1",
          spec_.name, sc.start_date, FormatDate(now.day - 1));
      for (const auto& row : late) {
        const std::string ds = row[0].c_str();
        if (!DeadlinePassed(sc, ds, now)) continue;
        const int64_t deadline_day = ParseDate(ds) + 1;
        strata::v1::NotifyRequest n;
        n.set_event("run_deadline_missed");
        n.set_pipeline(spec_.name);
        n.set_ds(ds);
        n.set_message("no successful run for ds " + ds + " by " + sc.deadline + " " + sc.timezone + " on " +
                      FormatDate(deadline_day));
        strata::v1::NotifyReply reply;
        grpc::ClientContext ctx;
        ctx.set_deadline(std::chrono::system_clock::now() + 10s);
        if (quality_->Notify(&ctx, n, &reply).ok()) {
          tx.exec_params("INSERT INTO ops.deadline_alerts (pipeline, ds) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                         spec_.name, ds);
          metrics_.deadline_misses.Add({}).Increment();
          spdlog::warn("deadline missed pipeline={} ds={} (alert sent)", spec_.name, ds);
        }
      }
    }
    tx.commit();
  }

  // ---- events ----------------------------------------------------------------------------

  void ConsumeEvents() {
    Bus bus(config_.redis_url);
    const std::string consumer = "controller-" + std::to_string(::getpid());
    bool claimed = false;
    while (!stop_) {
      try {
        bus.EnsureGroup(kEventStream, "controller");
        // A new leader first takes over what the previous one read but never acked.
        std::vector<StreamEntry> entries;
        if (!claimed) {
          entries = bus.AutoClaim(kEventStream, "controller", consumer, 0, 1000);
          claimed = true;
        }
        if (entries.empty()) entries = bus.ReadGroup(kEventStream, "controller", consumer, 64, 500);
        for (const auto& e : entries) {
          strata::v1::Event ev;
          if (DecodeEvent(e, &ev) && !ev.run_id().empty() && ev.kind() == "schema_drift") {
            // Not an outcome: a note in the run's log (stratactl logs, the status page).
            try {
              auto conn = PgConnect(config_.warehouse_dsn);
              pqxx::work tx(*conn);
              tx.exec_params("INSERT INTO ops.task_events (run_id, task, state, attempt, message) "
                             "VALUES ($1, $2, 'schema_drift', $3, $4)",
                             ev.run_id(), ev.task(), ev.attempt(), ev.message());
              tx.commit();
            } catch (const std::exception& ex) {
              spdlog::warn("cannot record schema drift event run_id={} error={}", ev.run_id(), ex.what());
            }
          } else if (DecodeEvent(e, &ev) && !ev.run_id().empty()) {
            std::lock_guard<std::mutex> lock(mu_);
            // First word wins: a redelivered or duplicated event never flips a task's outcome. A
            // later attempt's answer replaces an earlier attempt's, which the run ignores anyway:
            // read in one batch, the stale answer must not keep out the current one.
            auto [it, fresh] = events_[ev.run_id()].emplace(ev.task(), ev);
            if (!fresh && ev.attempt() > it->second.attempt()) it->second = ev;
          }
          bus.Ack(kEventStream, "controller", e.id);
          bus.Delete(kEventStream, e.id);
        }
        cv_.notify_all();
      } catch (const std::exception& e) {
        spdlog::error("event loop error={}", e.what());
        std::this_thread::sleep_for(1s);
      }
    }
  }

  // ---- execution -------------------------------------------------------------------------

  void SetTask(const std::string& run_id, const std::string& task, const std::string& state, int attempt,
               long long rows, long long rejected, const std::string& message) {
    auto conn = PgConnect(config_.warehouse_dsn);
    pqxx::work tx(*conn);
    const bool starting = state == "running";
    tx.exec_params(
        "UPDATE ops.task_runs SET state = $3, attempt = $4, rows = $5, rejected = $6, message = $7, "
        "started_at = CASE WHEN $8 THEN now() ELSE started_at END, "
        "finished_at = CASE WHEN $8 THEN NULL ELSE now() END WHERE run_id = $1 AND task = $2",
        run_id, task, state, attempt, rows, rejected, message, starting);
    tx.exec_params("INSERT INTO ops.task_events (run_id, task, state, attempt, message) VALUES ($1, $2, $3, $4, $5)",
                   run_id, task, state, attempt, message);
    tx.commit();
  }

  void SetRun(const std::string& run_id, const std::string& state, const std::string& message) {
    auto conn = PgConnect(config_.warehouse_dsn);
    pqxx::work tx(*conn);
    if (state == "running")
      tx.exec_params("UPDATE ops.runs SET state = $2, started_at = now() WHERE run_id = $1", run_id, state);
    else
      tx.exec_params("UPDATE ops.runs SET state = $2, message = $3, finished_at = now() WHERE run_id = $1", run_id,
                     state, message);
    tx.commit();
  }

  // Starts a task's remote work; retries while the service is unreachable.
  grpc::Status Launch(const TaskNode& t, const strata::v1::TaskRequest& req) {
    grpc::Status st;
    for (int attempt = 1; attempt <= 5; ++attempt) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + 10s);
      ctx.set_wait_for_ready(true);
      strata::v1::TaskAccepted acc;
      switch (t.kind) {
        case TaskKind::kExtract: st = ingest_->Extract(&ctx, req, &acc); break;
        case TaskKind::kLoad: st = loader_->Load(&ctx, req, &acc); break;
        case TaskKind::kModel: st = loader_->BuildModels(&ctx, req, &acc); break;
        case TaskKind::kCheck: st = quality_->RunChecks(&ctx, req, &acc); break;
        case TaskKind::kPublish: st = loader_->Publish(&ctx, req, &acc); break;
        case TaskKind::kExport: return grpc::Status::OK;  // driven by the bus; we only await its commit
      }
      if (st.ok() || (st.error_code() != grpc::StatusCode::UNAVAILABLE &&
                      st.error_code() != grpc::StatusCode::DEADLINE_EXCEEDED))
        return st;
      spdlog::warn("task={} service unavailable attempt={} error={}", t.name, attempt, st.error_message());
      std::this_thread::sleep_for(std::chrono::milliseconds(500 * attempt));
    }
    return st;
  }

  std::string RunState(const std::string& run_id) {
    auto conn = PgConnect(config_.warehouse_dsn);
    pqxx::read_transaction tx(*conn);
    const auto r = tx.exec_params("SELECT state FROM ops.runs WHERE run_id = $1", run_id);
    return r.empty() ? "" : r[0][0].c_str();
  }

  // An export task is waiting for lake-export's commit; if the commit happened while no
  // controller was listening, the lake itself says so.
  bool ExportAlreadyCommitted(const TaskNode& t, const std::string& ds, const std::string& run_id, long long* rows) {
    strata::v1::PartitionRequest req;
    req.set_dataset(t.dataset);
    req.set_ds(ds);
    strata::v1::PartitionInfo info;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + 5s);
    if (!lake_->DescribePartition(&ctx, req, &info).ok()) return false;
    *rows = info.rows();
    return info.committed() && info.run_id() == run_id;
  }

  // What one run knows of its running tasks' leases (common/task_lease.h).
  struct LeaseWatch {
    std::unique_ptr<RedisClient> redis;
    std::chrono::steady_clock::time_point last_check{};
    std::map<std::string, std::chrono::steady_clock::time_point> absent_since;
    std::chrono::steady_clock::time_point last_bus_check{};
    std::optional<std::chrono::steady_clock::time_point> drained_since;  // strata:batches seen drained
  };

  // The running tasks whose worker is gone: their lease key has stayed absent for half a lease
  // (read at most once a second). Exports are driven by the bus and hold no lease.
  std::set<std::string> LostTasks(const std::string& run_id,
                                  const std::map<std::string, std::chrono::steady_clock::time_point>& running,
                                  std::map<std::string, int>& attempts, const std::vector<TaskNode>& dag, LeaseWatch& w) {
    std::set<std::string> lost;
    const auto now = std::chrono::steady_clock::now();
    if (running.empty() || now - w.last_check < 1s) return lost;
    w.last_check = now;
    if (!w.redis) w.redis = std::make_unique<RedisClient>(config_.redis_url, 2000);
    const auto grace = std::chrono::milliseconds(config_.task_lease_seconds * 500L);
    for (const auto& [name, since] : running) {
      const auto t = std::find_if(dag.begin(), dag.end(), [&](const TaskNode& n) { return n.name == name; });
      if (t == dag.end() || t->kind == TaskKind::kExport) continue;
      strata::v1::TaskRequest req;
      req.set_run_id(run_id);
      req.set_task(name);
      req.set_attempt(attempts[name]);
      if (ReadLease(*w.redis, LeaseKey(req)) != LeaseState::kAbsent) {
        w.absent_since.erase(name);
        continue;
      }
      const auto first = w.absent_since.emplace(name, now).first->second;
      if (now - first >= grace && now - since >= grace) {
        lost.insert(name);
        w.absent_since.erase(name);
      }
    }
    return lost;
  }

  // Runs (or resumes) a run: tasks that already succeeded are kept, the rest are launched as
  // their dependencies succeed. A failed task is retried with exponential backoff and jitter
  // (up to task_retries times; failed checks are data, not luck, and are not retried,
  // unless their worker was lost).
  // True when lake-export has nothing left to do on strata:batches: the stream is gone (Redis
  // lost it), or every entry has been delivered to the group and acknowledged. False when it
  // cannot tell (Redis unreachable).
  static bool BusDrained(RedisClient& redis) {
    auto field = [](const RedisReply& r, const std::string& name) -> const RedisReply* {
      for (size_t i = 0; i + 1 < r.elements.size(); i += 2)
        if (r.elements[i].str == name) return &r.elements[i + 1];
      return nullptr;
    };
    try {
      RedisReply stream;
      try {
        stream = redis.Command({"XINFO", "STREAM", kBatchStream});
      } catch (const EnvError& e) {
        if (std::string(e.what()).find("no such key") != std::string::npos) return true;
        throw;
      }
      const RedisReply* last = field(stream, "last-generated-id");
      const RedisReply* length = field(stream, "length");
      for (const auto& g : redis.Command({"XINFO", "GROUPS", kBatchStream}).elements) {
        const RedisReply* name = field(g, "name");
        if (!name || name->str != "lake-export") continue;
        const RedisReply* pending = field(g, "pending");
        const RedisReply* delivered = field(g, "last-delivered-id");
        return pending && pending->integer == 0 && delivered && last && delivered->str == last->str;
      }
      return length && length->integer == 0;  // no consumer group yet: drained only if empty
    } catch (const std::exception&) {
      return false;
    }
  }

  // The running exports whose batches are gone: their extract succeeded (every batch was on
  // the bus), yet for 10 s lake-export has had nothing left to read and the partition is not
  // committed by this run (Redis restarted without its stream, or the stream was trimmed).
  // Those found committed by this run go to `committed` (with their rows): their commit event
  // came before the export was dispatched, when lake-export could not be asked (it was
  // restarting), so no event is coming for them.
  std::set<std::string> LostBatches(const std::string& run_id, const std::string& ds,
                                    const std::map<std::string, std::chrono::steady_clock::time_point>& running,
                                    const std::vector<TaskNode>& dag, LeaseWatch& w,
                                    std::map<std::string, long long>& committed) {
    std::set<std::string> lost;
    const auto now = std::chrono::steady_clock::now();
    if (now - w.last_bus_check < 5s) return lost;
    w.last_bus_check = now;
    std::vector<const TaskNode*> exports;
    for (const auto& [name, since] : running) {
      const auto t = std::find_if(dag.begin(), dag.end(), [&](const TaskNode& n) { return n.name == name; });
      if (t != dag.end() && t->kind == TaskKind::kExport && now - since >= 10s) exports.push_back(&*t);
    }
    if (exports.empty()) {
      w.drained_since.reset();
      return lost;
    }
    if (!w.redis) w.redis = std::make_unique<RedisClient>(config_.redis_url, 2000);
    if (!BusDrained(*w.redis)) {
      w.drained_since.reset();
      return lost;
    }
    if (!w.drained_since) w.drained_since = now;
    if (now - *w.drained_since < 10s) return lost;
    for (const TaskNode* t : exports) {
      long long rows = 0;
      if (ExportAlreadyCommitted(*t, ds, run_id, &rows)) committed[t->name] = rows;
      else lost.insert(t->name);
    }
    w.drained_since.reset();
    return lost;
  }

  void Execute(const std::string& run_id, const std::string& pipeline, const std::string& ds) {
    const auto run_start = std::chrono::steady_clock::now();
    metrics_.active.Add({}).Increment();
    std::string failure;
    bool cancelled = false;
    try {
      const auto dag = BuildDag(spec_);
      auto node = [&](const std::string& name) -> const TaskNode& {
        return *std::find_if(dag.begin(), dag.end(), [&](const TaskNode& n) { return n.name == name; });
      };
      std::vector<std::string> pending, succeeded;
      std::map<std::string, int> attempts;
      {
        auto conn = PgConnect(config_.warehouse_dsn);
        pqxx::work tx(*conn);
        const auto r = tx.exec_params("SELECT task, state, attempt FROM ops.task_runs WHERE run_id = $1", run_id);
        std::map<std::string, std::string> states;
        for (const auto& row : r) {
          states[row[0].c_str()] = row[1].c_str();
          attempts[row[0].c_str()] = row[2].as<int>();
        }
        for (const auto& t : dag) {
          if (states[t.name] == "succeeded") succeeded.push_back(t.name);
          else pending.push_back(t.name);
        }
        const bool resumed = !succeeded.empty() || RunStateIn(tx, run_id, "running");
        tx.exec_params("UPDATE ops.runs SET state = CASE WHEN state = 'cancelling' THEN state ELSE 'running' END, "
                       "started_at = coalesce(started_at, now()) WHERE run_id = $1",
                       run_id);
        tx.commit();
        if (resumed)
          spdlog::info("resuming run_id={} ds={} succeeded_tasks={} remaining={}", run_id, ds, succeeded.size(),
                       pending.size());
      }
      const Window interval = DataInterval(ds);
      std::map<std::string, std::chrono::steady_clock::time_point> running, not_before;
      LeaseWatch leases;
      const auto timeout = std::chrono::seconds(config_.task_timeout_seconds);
      std::mt19937 rng(std::random_device{}());
      auto last_state_check = std::chrono::steady_clock::now() - 1s;  // check for a cancel first
      while ((!pending.empty() || !running.empty()) && !stop_) {
        if (std::chrono::steady_clock::now() - last_state_check > 500ms) {
          last_state_check = std::chrono::steady_clock::now();
          if (RunState(run_id) == "cancelling") {
            cancelled = true;
            failure = "cancelled";
            break;
          }
        }
        if (failure.empty()) {
          for (const auto& name : ReadyTasks(dag, pending, succeeded)) {
            auto nb = not_before.find(name);
            if (nb != not_before.end() && std::chrono::steady_clock::now() < nb->second) continue;
            const TaskNode& t = node(name);
            strata::v1::TaskRequest req;
            req.set_pipeline(pipeline);
            req.set_dataset(t.dataset);
            req.set_ds(ds);
            req.set_run_id(run_id);
            req.set_task(t.name);
            req.set_interval_start(interval.start);
            req.set_interval_end(interval.end);
            pending.erase(std::find(pending.begin(), pending.end(), name));
            const int attempt = ++attempts[name];
            req.set_attempt(attempt);
            {
              // A fresh attempt must not be satisfied by the previous attempt's event.
              std::lock_guard<std::mutex> lock(mu_);
              events_[run_id].erase(name);
            }
            SetTask(run_id, name, "running", attempt, 0, 0, "");
            long long rows = 0;
            if (t.kind == TaskKind::kExport && ExportAlreadyCommitted(t, ds, run_id, &rows)) {
              SetTask(run_id, name, "succeeded", attempt, rows, 0, "partition already committed");
              succeeded.push_back(name);
              continue;
            }
            const grpc::Status st = Launch(t, req);
            if (!st.ok()) {
              const std::string msg = name + ": " + st.error_message();
              SetTask(run_id, name, "failed", attempt, 0, 0, msg);
              metrics_.tasks.Add({{"kind", KindName(t.kind)}, {"state", "failed"}}).Increment();
              failure = msg;
              break;
            }
            running[name] = std::chrono::steady_clock::now();
          }
        }
        if (running.empty() && !failure.empty()) break;
        if (running.empty() && !pending.empty() && ReadyTasks(dag, pending, succeeded).empty()) {
          failure = "no task of the run can start (a dependency never succeeded)";
          break;
        }
        const std::set<std::string> lost = LostTasks(run_id, running, attempts, dag, leases);
        std::map<std::string, long long> committed;
        const std::set<std::string> lost_batches = LostBatches(run_id, ds, running, dag, leases, committed);
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait_for(lock, 200ms);
        auto& evs = events_[run_id];
        for (auto it = running.begin(); it != running.end();) {
          const std::string name = it->first;
          const TaskNode& t = node(name);
          auto ev = evs.find(name);
          // An answer to an abandoned attempt (e.g. one that timed out) is not this attempt's.
          if (ev != evs.end() && t.kind != TaskKind::kExport && ev->second.attempt() != attempts[name]) {
            evs.erase(ev);
            ev = evs.end();
          }
          std::string state, message;
          long long rows = 0, rejected = 0;
          if (ev != evs.end()) {
            const bool ok = ev->second.kind() != "task_failed";
            state = ok ? "succeeded" : "failed";
            message = ev->second.message();
            rows = ev->second.rows();
            rejected = ev->second.rejected();
          } else if (committed.count(name)) {
            state = "succeeded";
            message = "partition already committed";
            rows = committed[name];
          } else if (lost_batches.count(name)) {
            state = "failed";
            message = name + ": its batches are gone from the bus (the exporter is idle and the partition is not "
                             "committed); extracting again";
            metrics_.lost_batches.Add({}).Increment();
            spdlog::warn("batches lost run_id={} task={}; extracting again", run_id, name);
          } else if (std::chrono::steady_clock::now() - it->second > timeout || lost.count(name)) {
            state = "failed";
            message = lost.count(name) ? name + ": the worker holding attempt " + std::to_string(attempts[name]) +
                                             " is gone (its lease lapsed)"
                                       : name + ": no completion within " + std::to_string(config_.task_timeout_seconds) + " s";
            if (lost.count(name)) {
              metrics_.lost_tasks.Add({}).Increment();
              spdlog::warn("task lost run_id={} task={} attempt={}", run_id, name, attempts[name]);
            }
            lock.unlock();
            CancelRemote(run_id, name, attempts[name]);
            lock.lock();
          } else {
            ++it;
            continue;
          }
          lock.unlock();
          // A check that failed found bad data and is not re-run; a check whose worker was lost
          // never ran to the end, and is.
          const bool retry = state == "failed" && (t.kind != TaskKind::kCheck || lost.count(name)) &&
                             attempts[name] <= config_.task_retries;
          SetTask(run_id, name, retry ? "retrying" : state, attempts[name], rows, rejected, message);
          lock.lock();
          metrics_.tasks.Add({{"kind", KindName(t.kind)}, {"state", retry ? "retrying" : state}}).Increment();
          if (state == "succeeded") {
            succeeded.push_back(name);
          } else if (retry && lost_batches.count(name)) {
            // Its extract runs again (a new attempt; lake-export drops the old attempt's parts),
            // then the export waits again.
            const std::string extract = t.deps.front();
            succeeded.erase(std::remove(succeeded.begin(), succeeded.end(), extract), succeeded.end());
            pending.push_back(extract);
            pending.push_back(name);
            lock.unlock();
            SetTask(run_id, extract, "retrying", attempts[extract], 0, 0, "its batches were lost on the bus");
            lock.lock();
          } else if (retry) {
            // Exponential backoff with full jitter, capped at a minute.
            const long base_ms = std::min(60000L, 1000L << std::min(attempts[name], 6));
            not_before[name] = std::chrono::steady_clock::now() +
                               std::chrono::milliseconds(std::uniform_int_distribution<long>(base_ms / 2, base_ms)(rng));
            pending.push_back(name);
            spdlog::warn("task failed, retrying run_id={} task={} attempt={} error={}", run_id, name, attempts[name],
                         message);
          } else if (failure.empty()) {
            failure = message.empty() ? name + " failed" : message;
          }
          it = running.erase(it);
        }
      }
      if (stop_ && failure.empty() && (!pending.empty() || !running.empty())) {
        // Leave the run 'running': the next leader resumes it.
        spdlog::info("shutting down mid-run run_id={}; it will be resumed", run_id);
        metrics_.active.Add({}).Decrement();
        return;
      }
      if (!failure.empty()) {
        auto conn = PgConnect(config_.warehouse_dsn);
        pqxx::work tx(*conn);
        tx.exec_params("UPDATE ops.task_runs SET state = 'skipped', finished_at = now() "
                       "WHERE run_id = $1 AND state IN ('pending', 'running', 'retrying')", run_id);
        tx.commit();
      }
    } catch (const std::exception& e) {
      failure = std::string("controller error: ") + e.what();
    }
    {
      std::lock_guard<std::mutex> lock(mu_);
      events_.erase(run_id);
    }
    const std::string final_state = cancelled ? "cancelled" : failure.empty() ? "succeeded" : "failed";
    if (failure.empty()) AnnouncePublication(run_id);
    try {
      SetRun(run_id, final_state, failure);
    } catch (const std::exception& e) {
      spdlog::error("cannot record run end run_id={} error={}", run_id, e.what());
    }
    if (final_state == "failed") AlertRunFailed(run_id, pipeline, ds, failure);
    metrics_.active.Add({}).Decrement();
    metrics_.runs.Add({{"state", final_state}}).Increment();
    if (failure.empty()) metrics_.last_success.Add({}).SetToCurrentTime();
    metrics_.run_duration.Add({}, prometheus::Histogram::BucketBoundaries{1, 5, 15, 60, 300, 900, 3600})
        .Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - run_start).count());
    spdlog::info("run finished run_id={} ds={} state={} message={}", run_id, ds, final_state, failure);
  }

  // A failed run reaches a person through the same notifier as failing checks (the quality
  // service's webhook), not only as a metric someone must be watching. Best effort: the run's
  // state is recorded already; a notifier that is down is logged and counted there.
  void AlertRunFailed(const std::string& run_id, const std::string& pipeline, const std::string& ds,
                      const std::string& failure) {
    strata::v1::NotifyRequest n;
    n.set_event("run_failed");
    n.set_pipeline(pipeline);
    n.set_ds(ds);
    n.set_message("run " + run_id + " failed: " + failure);
    strata::v1::NotifyReply reply;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    const grpc::Status st = quality_->Notify(&ctx, n, &reply);
    if (!st.ok()) spdlog::warn("cannot alert run failure run_id={} error={}", run_id, st.error_message());
  }

  // The marts were published: announcing the warehouse's publication version makes every
  // cached answer unreachable at once. The version comes from serving.publications, not from a
  // Redis counter, so it keeps growing when Redis restarts empty. Best effort: the query
  // service also reads serving.publications itself every few seconds.
  void AnnouncePublication(const std::string& run_id) {
    try {
      auto conn = PgConnect(config_.warehouse_dsn);
      pqxx::read_transaction tx(*conn);
      const long long version =
          tx.exec("SELECT coalesce(max(version), 0) FROM serving.publications")[0][0].as<long long>();
      RedisClient redis(config_.redis_url);
      AnnounceVersion(redis, kPublishVersionKey, version);
    } catch (const std::exception& e) {
      spdlog::warn("cannot announce the published version run_id={} error={}", run_id, e.what());
    }
  }

  // A timed-out task's database work is really stopped: its connections carry the task's
  // application_name, and PostgreSQL cancels their statements.
  void CancelRemote(const std::string& run_id, const std::string& task, int attempt) {
    strata::v1::TaskRequest req;
    req.set_run_id(run_id);
    req.set_task(task);
    req.set_attempt(attempt);
    const std::string app = TaskApplicationName(req);
    for (const std::string* dsn : {&config_.warehouse_dsn, &config_.source_dsn}) {
      if (dsn->empty()) continue;
      try {
        auto conn = PgConnect(*dsn);
        pqxx::nontransaction tx(*conn);
        const auto r = tx.exec_params(
            "SELECT count(*) FILTER (WHERE pg_cancel_backend(pid)) FROM pg_stat_activity WHERE application_name = $1", app);
        if (r[0][0].as<long long>() > 0) spdlog::warn("cancelled timed-out work task={} run_id={}", task, run_id);
      } catch (const std::exception& e) {
        spdlog::warn("could not cancel timed-out work task={} error={}", task, e.what());
      }
    }
  }

  struct Window {
    std::string start, end;
  };
  // ds's data interval: the logical day in the schedule's time zone (UTC without a schedule),
  // as UTC instants. PostgreSQL knows the time zone rules, so it does the conversion.
  Window DataInterval(const std::string& ds) {
    const std::string tz = spec_.schedule.present ? spec_.schedule.timezone : "UTC";
    auto conn = PgConnect(config_.warehouse_dsn);
    pqxx::read_transaction tx(*conn);
    const auto r = tx.exec_params(
        "SELECT to_char(($1::date)::timestamp AT TIME ZONE $2 AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), "
        "to_char(($1::date + 1)::timestamp AT TIME ZONE $2 AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
        ds, tz);
    return {r[0][0].c_str(), r[0][1].c_str()};
  }

  static bool RunStateIn(pqxx::transaction_base& tx, const std::string& run_id, const std::string& state) {
    const auto r = tx.exec_params("SELECT state FROM ops.runs WHERE run_id = $1", run_id);
    return !r.empty() && state == r[0][0].c_str();
  }

  Config config_;
  PipelineSpec spec_;
  Metrics metrics_;
  TaskRunner runner_;
  std::unique_ptr<strata::v1::Ingest::Stub> ingest_;
  std::unique_ptr<strata::v1::WarehouseLoader::Stub> loader_;
  std::unique_ptr<strata::v1::Quality::Stub> quality_;
  std::unique_ptr<strata::v1::LakeExport::Stub> lake_;
  std::atomic<bool> leader_{false};
  std::thread leader_thread_;
  HttpListener http_;
  std::mutex active_mu_;
  std::set<std::string> active_;
  bool last_pick_was_backfill_ = false;
  std::mutex mu_;
  std::condition_variable cv_;
  std::map<std::string, std::map<std::string, strata::v1::Event>> events_;
  std::atomic<bool> stop_{false};
  std::thread events_thread_;
};

}  // namespace

std::unique_ptr<Component> MakeController(const Config& config, prometheus::Registry& registry) {
  return std::make_unique<ControllerImpl>(config, registry);
}

}  // namespace strata::controller

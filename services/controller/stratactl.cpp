// stratactl: the operator's CLI for the controller (and a few analytics queries).
// Exit codes: 0 success, 1 a run/backfill failed, 2 usage error, 3 controller unreachable.
#include <CLI/CLI.hpp>
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/config.h"
#include "common/time_util.h"
#include "services/controller/pipeline_check.h"
#include "strata.grpc.pb.h"

namespace {

using strata::v1::RunInfo;

std::string EnvOr(const char* var, const char* fallback) {
  const char* v = std::getenv(var);
  return v && *v ? v : fallback;
}

nlohmann::json RunJson(const RunInfo& r) {
  nlohmann::json tasks = nlohmann::json::array();
  for (const auto& t : r.tasks())
    tasks.push_back({{"task", t.task()}, {"state", t.state()}, {"rows", t.rows()}, {"rejected", t.rejected()},
                     {"duration_seconds", t.duration_seconds()}, {"message", t.message()}});
  return {{"run_id", r.run_id()}, {"pipeline", r.pipeline()}, {"ds", r.ds()}, {"state", r.state()},
          {"trigger", r.trigger()},
          {"message", r.message()}, {"started_at", r.started_at()}, {"finished_at", r.finished_at()},
          {"tasks", tasks}};
}

void PrintRun(const RunInfo& r) {
  std::printf("run %s  pipeline=%s  ds=%s  state=%s\n", r.run_id().c_str(), r.pipeline().c_str(), r.ds().c_str(),
              r.state().c_str());
  std::printf("  %-26s %-10s %10s %9s %9s  %s\n", "TASK", "STATE", "ROWS", "REJECTED", "SECONDS", "MESSAGE");
  for (const auto& t : r.tasks())
    std::printf("  %-26s %-10s %10lld %9lld %9.2f  %s\n", t.task().c_str(), t.state().c_str(),
                static_cast<long long>(t.rows()), static_cast<long long>(t.rejected()), t.duration_seconds(),
                t.message().c_str());
  if (!r.message().empty()) std::printf("  message: %s\n", r.message().c_str());
}

bool Terminal(const std::string& state) {
  return state == "succeeded" || state == "failed" || state == "cancelled" || state == "skipped";
}

int Fail(const grpc::Status& st, const std::string& what) {
  std::cerr << "stratactl: " << what << ": " << st.error_message() << " (" << st.error_code() << ")\n";
  if (st.error_code() == grpc::StatusCode::UNAVAILABLE || st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED)
    return 3;
  return 2;
}

bool Transient(const grpc::Status& st) {
  // A controller shutting down for a restart cancels the calls it is still serving.
  return st.error_code() == grpc::StatusCode::UNAVAILABLE || st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
         st.error_code() == grpc::StatusCode::CANCELLED;
}

// Reads runs while the CLI waits for them. A controller that stops answering (a restart is
// routine) is retried until the wait's deadline, with a line on stderr while it is away and
// one when it is back; only other errors, or the deadline, end the wait.
class RunPoller {
 public:
  RunPoller(strata::v1::Controller::Stub& stub, std::string address, std::chrono::steady_clock::time_point deadline)
      : stub_(stub), address_(std::move(address)), deadline_(deadline) {}

  grpc::Status Get(const std::string& run_id, RunInfo* out) {
    for (;;) {
      const auto now = std::chrono::steady_clock::now();
      grpc::ClientContext ctx;
      // Wait for the channel to (re)connect rather than failing at once while it is down.
      ctx.set_wait_for_ready(true);
      const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline_ - now);
      ctx.set_deadline(std::chrono::system_clock::now() +
                       std::clamp(left, std::chrono::milliseconds(100), std::chrono::milliseconds(5000)));
      strata::v1::GetRunRequest req;
      req.set_run_id(run_id);
      const grpc::Status st = stub_.GetRun(&ctx, req, out);
      if (st.ok()) {
        if (away_) std::cerr << "stratactl: controller " << address_ << " answers again; still waiting\n";
        away_ = false;
        return st;
      }
      if (!Transient(st) || std::chrono::steady_clock::now() >= deadline_) return st;
      const auto t = std::chrono::steady_clock::now();
      if (!away_ || t - last_note_ >= std::chrono::seconds(5)) {
        const auto secs = std::chrono::duration_cast<std::chrono::seconds>(deadline_ - t).count();
        std::cerr << "stratactl: controller " << address_ << " unreachable (" << st.error_message()
                  << "); retrying for up to " << secs << " s more\n";
        last_note_ = t;
      }
      away_ = true;
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
  }

 private:
  strata::v1::Controller::Stub& stub_;
  std::string address_;
  std::chrono::steady_clock::time_point deadline_;
  bool away_ = false;
  std::chrono::steady_clock::time_point last_note_;
};

// The wait ended on an error: unreachable until the deadline is exit 3, anything else Fail().
int WaitFailed(const grpc::Status& st, const std::string& what, int timeout_s) {
  if (!Transient(st)) return Fail(st, what);
  std::cerr << "stratactl: " << what << ": the controller stayed unreachable until the --timeout of " << timeout_s
            << " s passed (" << st.error_message() << ")\n";
  return 3;
}

// Starts a run for ds and waits for it; returns the exit code for that run.
int RunOne(strata::v1::Controller::Stub& stub, const std::string& address, const std::string& pipeline,
           const std::string& ds, bool json, int timeout_s) {
  strata::v1::StartRunRequest req;
  req.set_pipeline(pipeline);
  req.set_ds(ds);
  RunInfo info;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    const auto st = stub.StartRun(&ctx, req, &info);
    if (!st.ok()) return Fail(st, "start run for " + ds);
  }
  const bool tty = !json && isatty(fileno(stderr));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
  RunPoller poller(stub, address, deadline);
  while (!Terminal(info.state())) {
    if (std::chrono::steady_clock::now() > deadline) {
      std::cerr << "stratactl: run " << info.run_id() << " still " << info.state() << " after " << timeout_s << " s\n";
      return 1;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(250));
    RunInfo next;
    const auto st = poller.Get(info.run_id(), &next);
    if (!st.ok()) return WaitFailed(st, "get run " + info.run_id(), timeout_s);
    info = next;
    if (tty) {
      int done = 0;
      for (const auto& t : info.tasks()) done += Terminal(t.state()) ? 1 : 0;
      std::fprintf(stderr, "\r%s ds=%s %s %d/%d tasks", info.run_id().c_str(), ds.c_str(), info.state().c_str(), done,
                   info.tasks_size());
    }
  }
  if (tty) std::fprintf(stderr, "\n");
  if (json) std::cout << RunJson(info).dump() << "\n";
  else PrintRun(info);
  return info.state() == "succeeded" ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"stratactl — run and inspect strata pipelines"};
  app.require_subcommand(1);
  // Where the services are dialed: STRATA_<SERVICE>_DIAL when they run as several instances
  // (config.h, GrpcTarget), else their gRPC address.
  const auto dial = [](const char* service, const char* fallback) {
    const std::string up = std::string("STRATA_") + service;
    return strata::GrpcTarget({EnvOr((up + "_GRPC").c_str(), fallback), "", "", EnvOr((up + "_DIAL").c_str(), "")});
  };
  std::string controller = dial("CONTROLLER", "127.0.0.1:50056");
  std::string query_addr = dial("QUERY", "127.0.0.1:50055");
  std::string quality_addr = dial("QUALITY", "127.0.0.1:50054");
  std::string token = EnvOr("STRATA_QUERY_TOKEN", "");
  bool json = false;
  std::string pipeline;  // empty: the one the controller runs
  int timeout_s = 1800;
  app.add_option("--controller", controller, "controller gRPC address (env STRATA_CONTROLLER_DIAL, else STRATA_CONTROLLER_GRPC)");
  app.add_option("--query", query_addr, "query gRPC address (env STRATA_QUERY_DIAL, else STRATA_QUERY_GRPC)");
  app.add_option("--quality", quality_addr, "quality gRPC address (env STRATA_QUALITY_DIAL, else STRATA_QUALITY_GRPC)");
  app.add_option("--token", token, "query API token (env STRATA_QUERY_TOKEN)");
  app.add_flag("--json", json, "machine-readable output");

  std::string date, from, to;
  auto* run = app.add_subcommand("run", "run the pipeline for one logical date and wait for it");
  run->add_option("--date,-d", date, "logical date YYYY-MM-DD")->required();
  run->add_option("--pipeline,-p", pipeline, "pipeline name (default: the one the controller runs)");
  run->add_option("--timeout", timeout_s, "seconds to wait");

  std::string reprocess = "missing";
  bool dry_run = false;
  auto* backfill = app.add_subcommand("backfill", "queue runs for every date in [from, to] and wait for them");
  backfill->add_option("--from", from, "first date")->required();
  backfill->add_option("--to", to, "last date")->required();
  backfill->add_option("--pipeline,-p", pipeline, "pipeline name (default: the one the controller runs)");
  backfill->add_option("--timeout", timeout_s, "seconds to wait for all runs");
  backfill->add_option("--reprocess", reprocess, "missing | failed | all")
      ->check(CLI::IsMember({"missing", "failed", "all"}));
  backfill->add_flag("--dry-run", dry_run, "list the dates that would run, queue nothing");

  std::string run_id, task;
  auto* cancel = app.add_subcommand("cancel", "cancel an active run");
  cancel->add_option("--run", run_id, "run id")->required();
  auto* clear = app.add_subcommand("clear", "re-run a task of a finished run and everything downstream of it");
  clear->add_option("--run", run_id, "run id")->required();
  clear->add_option("--task", task, "task name, e.g. model or load.orders")->required();
  bool wait = false;
  clear->add_flag("--wait", wait, "wait for the re-run and exit with its outcome");
  auto* tasks = app.add_subcommand("tasks", "a run's tasks with state, rows, durations");
  tasks->add_option("--run", run_id, "run id")->required();
  auto* logs = app.add_subcommand("logs", "every task state change of a run: attempts, retries, errors");
  logs->add_option("--run", run_id, "run id")->required();
  auto* pipelines = app.add_subcommand("pipelines", "the pipelines the controller runs, with schedules and tasks");

  int limit = 20;
  std::string state, page_token;
  auto* status = app.add_subcommand("runs", "list runs, newest first (paginated)");
  status->alias("status");
  status->add_option("--limit,-n", limit, "how many runs");
  status->add_option("--state", state, "only runs in this state");
  status->add_option("--from", from, "only logical dates from this one");
  status->add_option("--to", to, "only logical dates up to this one");
  status->add_option("--page-token", page_token, "continue after the previous page");

  auto* query = app.add_subcommand("query", "call an endpoint the pipeline declares (stratactl endpoints lists them)");
  std::string endpoint;
  std::vector<std::string> query_params;
  query->add_option("endpoint", endpoint, "endpoint name, e.g. daily_sales")->required();
  query->add_option("params", query_params, "parameters as name=value, e.g. from=2024-01-01 limit=5");

  auto* checks = app.add_subcommand("checks", "latest check results for a logical date");
  checks->add_option("--date,-d", date, "logical date YYYY-MM-DD")->required();
  std::string dataset;
  auto* profile = app.add_subcommand("profile", "column profile of a staged dataset for a date");
  profile->add_option("--dataset", dataset)->required();
  profile->add_option("--date,-d", date)->required();

  std::string pipeline_dir = EnvOr("STRATA_PIPELINE_SPEC", "pipelines/demo");
  auto* validate = app.add_subcommand("validate", "check a pipeline folder as the services would at start-up (offline)");
  validate->add_option("dir", pipeline_dir, "pipeline folder or its pipeline.yaml (env STRATA_PIPELINE_SPEC)");
  auto* models = app.add_subcommand("models", "a pipeline folder's SQL models in build order (offline)");
  models->add_option("dir", pipeline_dir, "pipeline folder or its pipeline.yaml (env STRATA_PIPELINE_SPEC)");
  auto* endpoints = app.add_subcommand("endpoints", "a pipeline folder's declared endpoints: path, parameters, roles, cache (offline)");
  endpoints->add_option("dir", pipeline_dir, "pipeline folder or its pipeline.yaml (env STRATA_PIPELINE_SPEC)");
  std::string lineage_table;
  auto* lineage = app.add_subcommand("lineage", "what a table is built from and what is built from it (offline)");
  lineage->add_option("table", lineage_table, "schema.table, e.g. marts.daily_sales")->required();
  lineage->add_option("dir", pipeline_dir, "pipeline folder or its pipeline.yaml (env STRATA_PIPELINE_SPEC)");

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e) == 0 ? 0 : 2;
  }

  if (*validate) return strata::ctl::ValidatePipeline(pipeline_dir, json);
  if (*models) return strata::ctl::ListModels(pipeline_dir, json);
  if (*lineage) return strata::ctl::PrintLineage(pipeline_dir, lineage_table, json);
  if (*endpoints) return strata::ctl::ListEndpoints(pipeline_dir, json);

  // Reconnect quickly after a controller restart (gRPC's default backoff grows to two minutes).
  grpc::ChannelArguments channel_args;
  channel_args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 250);
  channel_args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 250);
  channel_args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  auto stub = strata::v1::Controller::NewStub(
      grpc::CreateCustomChannel(controller, grpc::InsecureChannelCredentials(), channel_args));

  if (*run) {
    if (!strata::IsValidDate(date)) {
      std::cerr << "stratactl run: --date: expected YYYY-MM-DD, got \"" << date << "\"\n";
      return 2;
    }
    return RunOne(*stub, controller, pipeline, date, json, timeout_s);
  }
  if (*backfill) {
    strata::v1::BackfillRequest req;
    req.set_pipeline(pipeline);
    req.set_from(from);
    req.set_to(to);
    req.set_reprocess(reprocess);
    req.set_dry_run(dry_run);
    strata::v1::BackfillReply reply;
    {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(30));
      const auto st = stub->Backfill(&ctx, req, &reply);
      if (!st.ok()) return Fail(st, "backfill");
    }
    if (dry_run) {
      if (json) {
        std::cout << nlohmann::json(std::vector<std::string>(reply.planned_ds().begin(), reply.planned_ds().end())).dump()
                  << "\n";
      } else {
        std::printf("would run %d date(s) (reprocess=%s):\n", reply.planned_ds_size(), reprocess.c_str());
        for (const auto& ds : reply.planned_ds()) std::printf("  %s\n", ds.c_str());
      }
      return 0;
    }
    // Wait for every queued run, showing progress.
    std::vector<RunInfo> runs(reply.runs().begin(), reply.runs().end());
    const bool tty = !json && isatty(fileno(stderr));
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s);
    RunPoller poller(*stub, controller, deadline);
    for (;;) {
      int done = 0, failed = 0;
      for (auto& r : runs) {
        if (!Terminal(r.state())) {
          RunInfo next;
          const auto st = poller.Get(r.run_id(), &next);
          if (!st.ok()) return WaitFailed(st, "backfill: get run " + r.run_id(), timeout_s);
          r = next;
        }
        done += Terminal(r.state()) ? 1 : 0;
        failed += (Terminal(r.state()) && r.state() != "succeeded") ? 1 : 0;
      }
      if (tty) std::fprintf(stderr, "\rbackfill %s..%s: %d/%zu done, %d failed", from.c_str(), to.c_str(), done, runs.size(), failed);
      if (done == static_cast<int>(runs.size())) {
        if (tty) std::fprintf(stderr, "\n");
        if (json) {
          nlohmann::json out = nlohmann::json::array();
          for (const auto& r : runs) out.push_back(RunJson(r));
          std::cout << out.dump() << "\n";
        } else {
          for (const auto& r : runs) std::printf("%-20s %-11s %-10s %s\n", r.run_id().c_str(), r.ds().c_str(), r.state().c_str(), r.message().c_str());
          std::printf("backfill %s..%s: %zu run(s), %d failed\n", from.c_str(), to.c_str(), runs.size(), failed);
        }
        return failed ? 1 : 0;
      }
      if (std::chrono::steady_clock::now() > deadline) {
        std::cerr << "stratactl: backfill still running after " << timeout_s << " s\n";
        return 1;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
    }
  }
  if (*logs) {
    strata::v1::GetRunRequest req;
    req.set_run_id(run_id);
    strata::v1::RunLogReply reply;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    const auto st = stub->RunLog(&ctx, req, &reply);
    if (!st.ok()) return Fail(st, "logs");
    nlohmann::json out = nlohmann::json::array();
    for (const auto& l : reply.lines()) {
      if (json)
        out.push_back({{"at", l.at()}, {"task", l.task()}, {"state", l.state()}, {"attempt", l.attempt()},
                       {"message", l.message()}});
      else
        std::printf("%s  %-24s %-10s attempt %d  %s\n", l.at().c_str(), l.task().c_str(), l.state().c_str(),
                    l.attempt(), l.message().c_str());
    }
    if (json) std::cout << out.dump() << "\n";
    return 0;
  }
  if (*pipelines) {
    strata::v1::ListPipelinesReply reply;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    const auto st = stub->ListPipelines(&ctx, strata::v1::ListPipelinesRequest(), &reply);
    if (!st.ok()) return Fail(st, "pipelines");
    nlohmann::json out = nlohmann::json::array();
    for (const auto& p : reply.pipelines()) {
      out.push_back({{"name", p.name()},
                     {"datasets", std::vector<std::string>(p.datasets().begin(), p.datasets().end())},
                     {"tasks", std::vector<std::string>(p.tasks().begin(), p.tasks().end())},
                     {"schedule", p.schedule_cron()}, {"timezone", p.schedule_timezone()}, {"catchup", p.catchup()},
                     {"start_date", p.start_date()}, {"deadline", p.deadline()}, {"leading", p.leading()}});
      if (!json) {
        std::printf("%s  schedule=%s tz=%s catchup=%s start=%s deadline=%s  %s\n", p.name().c_str(),
                    p.schedule_cron().empty() ? "(manual)" : p.schedule_cron().c_str(), p.schedule_timezone().c_str(),
                    p.catchup() ? "yes" : "no", p.start_date().c_str(), p.deadline().c_str(),
                    p.leading() ? "leader" : "standby");
        std::string t;
        for (const auto& x : p.tasks()) t += (t.empty() ? "" : " ") + x;
        std::printf("  tasks: %s\n", t.c_str());
      }
    }
    if (json) std::cout << out.dump() << "\n";
    return 0;
  }
  if (*cancel || *clear || *tasks) {
    RunInfo info;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    grpc::Status st;
    if (*cancel) {
      strata::v1::GetRunRequest req;
      req.set_run_id(run_id);
      st = stub->CancelRun(&ctx, req, &info);
    } else if (*clear) {
      strata::v1::ClearTaskRequest req;
      req.set_run_id(run_id);
      req.set_task(task);
      st = stub->ClearTask(&ctx, req, &info);
    } else {
      strata::v1::GetRunRequest req;
      req.set_run_id(run_id);
      st = stub->GetRun(&ctx, req, &info);
    }
    if (!st.ok()) return Fail(st, *cancel ? "cancel" : *clear ? "clear" : "tasks");
    RunPoller poller(*stub, controller, std::chrono::steady_clock::now() + std::chrono::seconds(timeout_s));
    while (*clear && wait && !Terminal(info.state())) {
      std::this_thread::sleep_for(std::chrono::milliseconds(250));
      const auto st = poller.Get(run_id, &info);
      if (!st.ok()) return WaitFailed(st, "clear: get run " + run_id, timeout_s);
    }
    if (json) std::cout << RunJson(info).dump() << "\n";
    else PrintRun(info);
    return (*clear && wait && info.state() != "succeeded") ? 1 : 0;
  }
  if (*status) {
    strata::v1::ListRunsRequest req;
    req.set_limit(limit);
    req.set_state(state);
    req.set_ds_from(from);
    req.set_ds_to(to);
    req.set_page_token(page_token);
    strata::v1::ListRunsReply reply;
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    const auto st = stub->ListRuns(&ctx, req, &reply);
    if (!st.ok()) return Fail(st, "list runs");
    if (json) {
      nlohmann::json out = nlohmann::json::array();
      for (const auto& r : reply.runs()) out.push_back(RunJson(r));
      std::cout << nlohmann::json{{"runs", out}, {"next_page_token", reply.next_page_token()}}.dump() << "\n";
    } else {
      std::printf("%-20s %-8s %-11s %-10s %-9s %-32s %s\n", "RUN", "PIPELINE", "DS", "STATE", "TRIGGER", "FINISHED",
                  "MESSAGE");
      for (const auto& r : reply.runs())
        std::printf("%-20s %-8s %-11s %-10s %-9s %-32s %s\n", r.run_id().c_str(), r.pipeline().c_str(), r.ds().c_str(),
                    r.state().c_str(), r.trigger().c_str(), r.finished_at().c_str(), r.message().c_str());
      if (!reply.next_page_token().empty()) std::printf("next page: --page-token %s\n", reply.next_page_token().c_str());
    }
    return 0;
  }
  if (*checks || *profile) {
    auto qs = strata::v1::Quality::NewStub(grpc::CreateChannel(quality_addr, grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (*checks) {
      strata::v1::CheckResultsRequest req;
      req.set_ds(date);
      strata::v1::CheckResultsReply reply;
      const auto st = qs->LatestResults(&ctx, req, &reply);
      if (!st.ok()) return Fail(st, "checks");
      int failed = 0;
      nlohmann::json out = nlohmann::json::array();
      for (const auto& c : reply.results()) {
        failed += c.status() == "fail" ? 1 : 0;
        out.push_back({{"check", c.check()}, {"status", c.status()}, {"severity", c.severity()},
                       {"observed", c.observed()}, {"threshold", c.threshold()}, {"message", c.message()},
                       {"run_id", c.run_id()}});
      }
      if (json) {
        std::cout << out.dump() << "\n";
      } else {
        std::printf("%-48s %-6s %-8s %-40s %s\n", "CHECK", "STATUS", "SEVERITY", "OBSERVED", "MESSAGE");
        for (const auto& c : reply.results())
          std::printf("%-48s %-6s %-8s %-40s %s\n", c.check().c_str(), c.status().c_str(), c.severity().c_str(),
                      c.observed().c_str(), c.message().c_str());
      }
      return failed ? 1 : 0;
    }
    strata::v1::ProfileRequest req;
    req.set_dataset(dataset);
    req.set_ds(date);
    strata::v1::ProfileReply reply;
    const auto st = qs->Profile(&ctx, req, &reply);
    if (!st.ok()) return Fail(st, "profile");
    std::printf("%-20s %10s %10s %10s %10s\n", "COLUMN", "ROWS", "NULLS", "NULL_RATIO", "DISTINCT");
    for (const auto& c : reply.columns())
      std::printf("%-20s %10lld %10lld %10.4f %10lld\n", c.column().c_str(), static_cast<long long>(c.rows()),
                  static_cast<long long>(c.nulls()), c.null_ratio(), static_cast<long long>(c.distinct()));
    return 0;
  }
  if (*query) {
    auto q = strata::v1::Query::NewStub(grpc::CreateChannel(query_addr, grpc::InsecureChannelCredentials()));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    if (!token.empty()) ctx.AddMetadata("authorization", "Bearer " + token);
    strata::v1::CallRequest req;
    req.set_endpoint(endpoint);
    for (const auto& kv : query_params) {
      const auto eq = kv.find('=');
      if (eq == std::string::npos || eq == 0) {
        std::cerr << "stratactl query: '" << kv << "' is not name=value\n";
        return 2;
      }
      (*req.mutable_params())[kv.substr(0, eq)] = kv.substr(eq + 1);
    }
    strata::v1::CallReply reply;
    const grpc::Status st = q->Call(&ctx, req, &reply);
    if (!st.ok()) return Fail(st, "query");
    nlohmann::ordered_json out = nlohmann::ordered_json::array();
    for (const auto& r : reply.rows()) {
      nlohmann::ordered_json row = nlohmann::ordered_json::object();
      for (int i = 0; i < r.cells_size() && i < reply.columns_size(); ++i) {
        const auto& v = r.cells(i);
        auto& cell = row[reply.columns(i).name()];
        switch (v.kind_case()) {
          case strata::v1::Cell::kIntValue: cell = v.int_value(); break;
          case strata::v1::Cell::kNumberValue: cell = v.number_value(); break;
          case strata::v1::Cell::kDecimalValue: cell = std::stod(v.decimal_value()); break;
          case strata::v1::Cell::kBoolValue: cell = v.bool_value(); break;
          case strata::v1::Cell::kTextValue: cell = v.text_value(); break;
          default: cell = nullptr;
        }
      }
      out.push_back(std::move(row));
    }
    if (json) {
      std::cout << out.dump() << "\n";
    } else {
      for (const auto& row : out) {
        std::string line;
        for (auto it = row.begin(); it != row.end(); ++it)
          line += (line.empty() ? "" : "  ") + it.key() + "=" + (it->is_string() ? it->get<std::string>() : it->dump());
        std::cout << line << "\n";
      }
      if (!reply.next_page_token().empty()) std::cout << "next page: page_token=" << reply.next_page_token() << "\n";
    }
    return 0;
  }
  return 2;
}

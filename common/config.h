// Service configuration: one YAML file shared by the suite (config/strata.yaml), overridden by
// environment variables. Validated completely at start-up: an unknown key, a missing value or a
// malformed address throws InputError naming the key's path, so a service never starts half
// configured.
//
// Environment overrides (win over the file):
//   STRATA_PG_DSN, STRATA_SOURCE_DSN, STRATA_REDIS_URL, STRATA_LAKE_ROOT, STRATA_PIPELINE_SPEC,
//   STRATA_WEBHOOK_URL, STRATA_WEBHOOK_FORMAT, STRATA_SOURCE_HTTP, STRATA_BATCH_ROWS, STRATA_RECLAIM_IDLE_MS,
//   STRATA_TASK_TIMEOUT_SECONDS, STRATA_TASK_RETRIES, STRATA_MAX_ACTIVE_RUNS, STRATA_QUERY_TOKENS, STRATA_QUERY_RATE_LIMIT_RPS, STRATA_QUERY_TIMEOUT_MS,
//   STRATA_REUSE_PORT,
//   STRATA_<SERVICE>_GRPC and STRATA_<SERVICE>_METRICS (host:port) for
//   INGEST, LAKE_EXPORT, WAREHOUSE_LOADER, QUALITY, QUERY, CONTROLLER.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace strata {

struct Endpoint {
  std::string grpc;     // host:port the gRPC server listens on / clients dial
  std::string metrics;  // host:port of the Prometheus /metrics listener
  std::string http;     // optional extra HTTP listener (query gateway)
  // Where clients dial the service when several instances run: host:port[,host:port...] (each
  // instance listening on its own `grpc`), or a gRPC target such as dns:///loader:50053 whose
  // name resolves to every instance. Empty: `grpc`. See GrpcTarget.
  std::string dial;
};

struct Config {
  std::string warehouse_dsn;
  std::string source_dsn;
  std::string redis_url = "redis://127.0.0.1:6379";
  std::string lake_root = ".strata/lake";
  std::string pipeline_spec = "pipelines/demo";  // a pipeline folder (or its YAML file)
  std::string webhook_url;  // empty: alerts are logged only
  // Passwords of the warehouse roles strata creates (common/governance.h), set by the loader.
  std::map<std::string, std::string> role_passwords;
  std::string webhook_format = "slack";  // slack ({"text": ...} plus fields) | generic (fields only)
  std::string source_http = "http://127.0.0.1:8089";
  int batch_rows = 5000;
  // Ingest pauses while a bus stream it feeds holds this many entries (backpressure).
  int bus_high_water = 2000;
  int query_cache_ttl_seconds = 300;
  // Hot standbys of the warehouse the query service reads published answers from, as libpq
  // DSNs separated by ';' (services/query/replicas.h). Empty: every read goes to the primary.
  std::vector<std::string> query_replica_dsns;
  // API tokens of the query service, token -> role (analyst | viewer). Environment only
  // (STRATA_QUERY_TOKENS="tokA:analyst,tokB:viewer"): secrets never live in the file.
  // Empty: authentication is off (a warning is logged at start-up).
  std::map<std::string, std::string> query_tokens;
  int query_rate_limit_rps = 1000;  // per token, token bucket with a burst of 2x
  int query_timeout_ms = 5000;      // per call, also capped by the client's deadline
  // Admission to the warehouse (services/query/admission.h): queries run at once, requests
  // that may wait for one, and how long; the rest are shed with UNAVAILABLE.
  // Calls a service's gRPC server handles at once (one thread each); beyond it a call is refused
  // with RESOURCE_EXHAUSTED before it is read.
  int grpc_max_threads = 128;
  int query_max_backend = 8;
  int query_max_queue = 64;
  int query_queue_wait_ms = 250;
  int task_timeout_seconds = 900;
  // A worker refreshes a lease on each task it holds; the controller re-dispatches a task whose
  // lease has lapsed (common/task_lease.h), so a killed worker costs seconds, not the timeout.
  int task_lease_seconds = 10;
  int task_retries = 2;      // extra attempts for a failed task (checks are never retried)
  int max_active_runs = 1;   // runs the leader controller executes at once
  // Bus entries pending this long on a consumer are presumed orphaned and reclaimed.
  int reclaim_idle_ms = 60000;
  // Let several processes listen on one gRPC/HTTP address (SO_REUSEPORT). Off: a second
  // instance on a live address fails start-up instead of silently splitting the traffic.
  bool reuse_port = false;
  // The controller queues the spec's scheduled runs (and alerts missed deadlines) only when true
  // (STRATA_SCHEDULES); local and test stacks turn it off and run dates by hand.
  bool schedules = true;
  std::map<std::string, Endpoint> services;

  // The endpoint of a known service; throws InputError for an unknown name.
  const Endpoint& endpoint(const std::string& service) const;
};

// The services every config knows about, in DAG order.
const std::vector<std::string>& ServiceNames();

using EnvLookup = std::function<const char*(const char*)>;

// Parses YAML text (may be empty) then applies env overrides. `origin` names the file in errors.
Config ParseConfig(const std::string& yaml_text, const std::string& origin, const EnvLookup& env);
// Reads `path` (empty: no file, defaults + env only) with the process environment.
Config LoadConfig(const std::string& path);

// host:port check used for every address; throws InputError naming `what`.
void ValidateHostPort(const std::string& value, const std::string& what);
// The gRPC target clients dial for `ep`: its `dial` list as an ipv4:/ipv6: target when it names
// several addresses ("127.0.0.1:1,127.0.0.1:2" -> "ipv4:127.0.0.1:1,127.0.0.1:2"; names need a
// dns:/// target instead), any other `dial` as given, else its `grpc` address. Channels to it
// balance calls round robin and skip an instance that stopped answering.
std::string GrpcTarget(const Endpoint& ep);

// "dsn1; dsn2" -> {"dsn1", "dsn2"} (query_replica_dsns): trimmed, empty parts dropped.
std::vector<std::string> SplitDsns(const std::string& value);

}  // namespace strata

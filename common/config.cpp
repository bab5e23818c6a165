#include "common/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>
#include <fstream>
#include <set>
#include <sstream>

#include "common/errors.h"

namespace strata {

namespace {

const std::map<std::string, Endpoint>& DefaultEndpoints() {
  static const std::map<std::string, Endpoint> kDefaults = {
      {"ingest", {"127.0.0.1:50051", "127.0.0.1:9101", "", ""}},
      {"lake_export", {"127.0.0.1:50052", "127.0.0.1:9102", "", ""}},
      {"warehouse_loader", {"127.0.0.1:50053", "127.0.0.1:9103", "", ""}},
      {"quality", {"127.0.0.1:50054", "127.0.0.1:9104", "", ""}},
      {"query", {"127.0.0.1:50055", "127.0.0.1:9105", "127.0.0.1:8085", ""}},
      {"controller", {"127.0.0.1:50056", "127.0.0.1:9106", "127.0.0.1:8086", ""}},
  };
  return kDefaults;
}

std::string Upper(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::toupper(c); });
  return s;
}

std::string Scalar(const YAML::Node& n, const std::string& path) {
  if (!n.IsScalar()) throw InputError("config " + path + ": expected a string value");
  return n.as<std::string>();
}

int PositiveInt(const std::string& text, const std::string& path, bool allow_zero = false) {
  try {
    size_t used = 0;
    const int v = std::stoi(text, &used);
    if (used == text.size() && (v > 0 || (allow_zero && v == 0))) return v;
  } catch (const std::exception&) {
  }
  throw InputError("config " + path + ": expected a " + (allow_zero ? "non-negative" : "positive") +
                   " integer, got \"" + text + "\"");
}

bool Bool(const std::string& text, const std::string& path) {
  if (text == "true") return true;
  if (text == "false") return false;
  throw InputError("config " + path + ": expected true or false, got \"" + text + "\"");
}

}  // namespace

const std::vector<std::string>& ServiceNames() {
  static const std::vector<std::string> kNames = {"ingest",  "lake_export", "warehouse_loader",
                                                  "quality", "query",       "controller"};
  return kNames;
}

const Endpoint& Config::endpoint(const std::string& service) const {
  auto it = services.find(service);
  if (it == services.end()) throw InputError("config services: unknown service '" + service + "'");
  return it->second;
}

// "dsn1; dsn2": libpq DSNs hold spaces and '=' but no ';'. Empty parts are dropped.
std::vector<std::string> SplitDsns(const std::string& value) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    const auto semi = value.find(';', start);
    std::string part = value.substr(start, semi == std::string::npos ? std::string::npos : semi - start);
    part.erase(0, part.find_first_not_of(" \t"));
    part.erase(part.find_last_not_of(" \t") + 1);
    if (!part.empty()) out.push_back(part);
    if (semi == std::string::npos) break;
    start = semi + 1;
  }
  return out;
}

void ValidateHostPort(const std::string& value, const std::string& what) {
  const auto colon = value.rfind(':');
  bool ok = colon != std::string::npos && colon > 0 && colon + 1 < value.size();
  if (ok) {
    const std::string port = value.substr(colon + 1);
    ok = std::all_of(port.begin(), port.end(), [](unsigned char c) { return std::isdigit(c); }) &&
         port.size() <= 5 && std::stoi(port) > 0 && std::stoi(port) < 65536;
  }
  if (!ok) throw InputError(what + ": expected host:port, got \"" + value + "\"");
}

Config ParseConfig(const std::string& yaml_text, const std::string& origin, const EnvLookup& env) {
  Config c;
  c.services = DefaultEndpoints();
  YAML::Node root;
  try {
    root = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    throw InputError("config " + origin + ": not valid YAML: " + e.what());
  }
  if (root && !root.IsNull()) {
    if (!root.IsMap()) throw InputError("config " + origin + ": top level must be a mapping");
    for (const auto& kv : root) {
      const std::string key = kv.first.as<std::string>();
      const std::string path = origin + ":" + key;
      if (key == "warehouse_dsn") c.warehouse_dsn = Scalar(kv.second, path);
      else if (key == "source_dsn") c.source_dsn = Scalar(kv.second, path);
      else if (key == "redis_url") c.redis_url = Scalar(kv.second, path);
      else if (key == "query_replica_dsns") c.query_replica_dsns = SplitDsns(Scalar(kv.second, path));
      else if (key == "lake_root") c.lake_root = Scalar(kv.second, path);
      else if (key == "pipeline_spec") c.pipeline_spec = Scalar(kv.second, path);
      else if (key == "webhook_url") c.webhook_url = Scalar(kv.second, path);
      else if (key == "source_http") c.source_http = Scalar(kv.second, path);
      else if (key == "webhook_format") c.webhook_format = Scalar(kv.second, path);
      else if (key == "batch_rows") c.batch_rows = PositiveInt(Scalar(kv.second, path), path);
      else if (key == "bus_high_water") c.bus_high_water = PositiveInt(Scalar(kv.second, path), path);
      else if (key == "query_cache_ttl_seconds")
        c.query_cache_ttl_seconds = PositiveInt(Scalar(kv.second, path), path);
      else if (key == "task_timeout_seconds")
        c.task_timeout_seconds = PositiveInt(Scalar(kv.second, path), path);
      else if (key == "task_lease_seconds")
        c.task_lease_seconds = PositiveInt(Scalar(kv.second, path), path);
      else if (key == "query_rate_limit_rps")
        c.query_rate_limit_rps = PositiveInt(Scalar(kv.second, path), path);
      else if (key == "query_timeout_ms") c.query_timeout_ms = PositiveInt(Scalar(kv.second, path), path);
      else if (key == "grpc_max_threads") c.grpc_max_threads = PositiveInt(Scalar(kv.second, path), path);
      else if (key == "query_max_backend") c.query_max_backend = PositiveInt(Scalar(kv.second, path), path);
      else if (key == "query_max_queue")
        c.query_max_queue = PositiveInt(Scalar(kv.second, path), path, /*allow_zero=*/true);
      else if (key == "query_queue_wait_ms")
        c.query_queue_wait_ms = PositiveInt(Scalar(kv.second, path), path, /*allow_zero=*/true);
      else if (key == "task_retries") c.task_retries = PositiveInt(Scalar(kv.second, path), path, /*allow_zero=*/true);
      else if (key == "max_active_runs") c.max_active_runs = PositiveInt(Scalar(kv.second, path), path);
      else if (key == "reclaim_idle_ms") c.reclaim_idle_ms = PositiveInt(Scalar(kv.second, path), path);
      else if (key == "reuse_port") c.reuse_port = Bool(Scalar(kv.second, path), path);
      else if (key == "schedules") c.schedules = Bool(Scalar(kv.second, path), path);
      else if (key == "services") {
        if (!kv.second.IsMap()) throw InputError("config " + path + ": expected a mapping");
        for (const auto& svc : kv.second) {
          const std::string name = svc.first.as<std::string>();
          const std::string spath = path + "." + name;
          auto it = c.services.find(name);
          if (it == c.services.end())
            throw InputError("config " + spath + ": unknown service (known: ingest, lake_export, "
                             "warehouse_loader, quality, query, controller)");
          if (!svc.second.IsMap()) throw InputError("config " + spath + ": expected a mapping");
          for (const auto& f : svc.second) {
            const std::string fk = f.first.as<std::string>();
            const std::string fpath = spath + "." + fk;
            if (fk == "grpc") it->second.grpc = Scalar(f.second, fpath);
            else if (fk == "metrics") it->second.metrics = Scalar(f.second, fpath);
            else if (fk == "http") it->second.http = Scalar(f.second, fpath);
            else if (fk == "dial") it->second.dial = Scalar(f.second, fpath);
            else throw InputError("config " + fpath + ": unknown key (known: grpc, metrics, http, dial)");
          }
        }
      } else {
        throw InputError("config " + path + ": unknown key");
      }
    }
  }

  auto override_str = [&](const char* var, std::string& field) {
    if (const char* v = env(var)) field = v;
  };
  override_str("STRATA_PG_DSN", c.warehouse_dsn);
  override_str("STRATA_SOURCE_DSN", c.source_dsn);
  override_str("STRATA_REDIS_URL", c.redis_url);
  override_str("STRATA_LAKE_ROOT", c.lake_root);
  override_str("STRATA_PIPELINE_SPEC", c.pipeline_spec);
  override_str("STRATA_WEBHOOK_URL", c.webhook_url);
  if (const char* v = env("STRATA_QUERY_REPLICA_DSNS")) c.query_replica_dsns = SplitDsns(v);
  for (const char* role : {"analyst", "scientist", "engineer"}) {
    std::string var = std::string("STRATA_") + role + "_PASSWORD";
    for (auto& ch : var) ch = static_cast<char>(std::toupper(static_cast<unsigned char>(ch)));
    if (const char* v = env(var.c_str())) c.role_passwords[role] = v;
  }
  override_str("STRATA_SOURCE_HTTP", c.source_http);
  override_str("STRATA_WEBHOOK_FORMAT", c.webhook_format);
  if (const char* v = env("STRATA_BATCH_ROWS")) c.batch_rows = PositiveInt(v, "STRATA_BATCH_ROWS");
  if (const char* v = env("STRATA_BUS_HIGH_WATER")) c.bus_high_water = PositiveInt(v, "STRATA_BUS_HIGH_WATER");
  if (const char* v = env("STRATA_RECLAIM_IDLE_MS")) c.reclaim_idle_ms = PositiveInt(v, "STRATA_RECLAIM_IDLE_MS");
  if (const char* v = env("STRATA_REUSE_PORT")) c.reuse_port = Bool(v, "STRATA_REUSE_PORT");
  if (const char* v = env("STRATA_SCHEDULES")) c.schedules = Bool(v, "STRATA_SCHEDULES");
  if (const char* v = env("STRATA_QUERY_RATE_LIMIT_RPS"))
    c.query_rate_limit_rps = PositiveInt(v, "STRATA_QUERY_RATE_LIMIT_RPS");
  if (const char* v = env("STRATA_QUERY_TIMEOUT_MS")) c.query_timeout_ms = PositiveInt(v, "STRATA_QUERY_TIMEOUT_MS");
  if (const char* v = env("STRATA_GRPC_MAX_THREADS")) c.grpc_max_threads = PositiveInt(v, "STRATA_GRPC_MAX_THREADS");
  if (const char* v = env("STRATA_QUERY_MAX_BACKEND")) c.query_max_backend = PositiveInt(v, "STRATA_QUERY_MAX_BACKEND");
  if (const char* v = env("STRATA_QUERY_MAX_QUEUE")) c.query_max_queue = PositiveInt(v, "STRATA_QUERY_MAX_QUEUE", true);
  if (const char* v = env("STRATA_QUERY_QUEUE_WAIT_MS"))
    c.query_queue_wait_ms = PositiveInt(v, "STRATA_QUERY_QUEUE_WAIT_MS", true);
  if (const char* v = env("STRATA_QUERY_TOKENS")) {
    std::stringstream list(v);
    std::string item;
    while (std::getline(list, item, ',')) {
      if (item.empty()) continue;
      const auto colon = item.rfind(':');
      const std::string role = colon == std::string::npos ? "" : item.substr(colon + 1);
      if (colon == std::string::npos || colon == 0 || (role != "analyst" && role != "viewer"))
        throw InputError("STRATA_QUERY_TOKENS: expected token:role pairs with role analyst or viewer, got an entry "
                         "ending in \"" + (role.empty() ? std::string("(no role)") : role) + "\"");
      c.query_tokens[item.substr(0, colon)] = role;
    }
  }
  if (const char* v = env("STRATA_TASK_RETRIES")) c.task_retries = PositiveInt(v, "STRATA_TASK_RETRIES", true);
  if (const char* v = env("STRATA_MAX_ACTIVE_RUNS")) c.max_active_runs = PositiveInt(v, "STRATA_MAX_ACTIVE_RUNS");
  if (const char* v = env("STRATA_TASK_TIMEOUT_SECONDS"))
    c.task_timeout_seconds = PositiveInt(v, "STRATA_TASK_TIMEOUT_SECONDS");
  if (const char* v = env("STRATA_TASK_LEASE_SECONDS"))
    c.task_lease_seconds = PositiveInt(v, "STRATA_TASK_LEASE_SECONDS");
  for (auto& [name, ep] : c.services) {
    const std::string prefix = "STRATA_" + Upper(name) + "_";
    override_str((prefix + "GRPC").c_str(), ep.grpc);
    override_str((prefix + "METRICS").c_str(), ep.metrics);
    override_str((prefix + "HTTP").c_str(), ep.http);
    override_str((prefix + "DIAL").c_str(), ep.dial);
  }

  // Validation after overrides: the effective values are what must be right.
  if (c.redis_url.rfind("redis://", 0) != 0)
    throw InputError("config redis_url (or STRATA_REDIS_URL): expected redis://host:port, got \"" +
                     c.redis_url + "\"");
  {  // One node, or seed nodes of a Redis Cluster: redis://h1:p1,h2:p2
    const std::string nodes = c.redis_url.substr(8, c.redis_url.find('/', 8) - 8);
    for (size_t start = 0;;) {
      const auto comma = nodes.find(',', start);
      ValidateHostPort(nodes.substr(start, comma - start), "config redis_url (or STRATA_REDIS_URL)");
      if (comma == std::string::npos) break;
      start = comma + 1;
    }
  }
  if (c.webhook_format != "slack" && c.webhook_format != "generic")
    throw InputError("config webhook_format (or STRATA_WEBHOOK_FORMAT): expected slack or generic, got \"" +
                     c.webhook_format + "\"");
  if (c.lake_root.empty()) throw InputError("config lake_root (or STRATA_LAKE_ROOT): must not be empty");
  for (const auto& [name, ep] : c.services) {
    ValidateHostPort(ep.grpc, "config services." + name + ".grpc");
    ValidateHostPort(ep.metrics, "config services." + name + ".metrics");
    if (!ep.http.empty()) ValidateHostPort(ep.http, "config services." + name + ".http");
    if (!ep.dial.empty() && ep.dial.find("://") == std::string::npos && ep.dial.find(':') != std::string::npos &&
        ep.dial.rfind("ipv4:", 0) != 0 && ep.dial.rfind("ipv6:", 0) != 0 && ep.dial.rfind("unix:", 0) != 0) {
      const std::string what = "config services." + name + ".dial (or STRATA_" + Upper(name) + "_DIAL)";
      const bool several = ep.dial.find(',') != std::string::npos;
      for (size_t start = 0;;) {
        const auto comma = ep.dial.find(',', start);
        const std::string addr = ep.dial.substr(start, comma - start);
        ValidateHostPort(addr, what);
        // A list becomes an ipv4:/ipv6: target, which takes addresses, not names.
        const std::string host = addr.substr(0, addr.rfind(':'));
        if (several && host.find_first_not_of("0123456789.") != std::string::npos && host[0] != '[')
          throw InputError(what + ": a list takes IP addresses, got \"" + host + "\" (for names use dns:///name:port)");
        if (comma == std::string::npos) break;
        start = comma + 1;
      }
    }
  }
  return c;
}

std::string GrpcTarget(const Endpoint& ep) {
  if (ep.dial.empty()) return ep.grpc;
  if (ep.dial.find(',') == std::string::npos || ep.dial.find(':') == ep.dial.find("://") ||
      ep.dial.rfind("ipv4:", 0) == 0 || ep.dial.rfind("ipv6:", 0) == 0)
    return ep.dial;
  return (ep.dial[0] == '[' ? "ipv6:" : "ipv4:") + ep.dial;
}

Config LoadConfig(const std::string& path) {
  std::string text;
  if (!path.empty()) {
    std::ifstream in(path);
    if (!in) throw InputError("config " + path + ": cannot open file");
    std::stringstream ss;
    ss << in.rdbuf();
    text = ss.str();
  }
  return ParseConfig(text, path.empty() ? "<defaults>" : path,
                     [](const char* var) { return std::getenv(var); });
}

}  // namespace strata

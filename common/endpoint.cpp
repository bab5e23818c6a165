#include "common/endpoint.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>

#include "common/checksum.h"
#include "common/errors.h"
#include "common/sql_model.h"
#include "common/time_util.h"

namespace strata {
namespace {

const std::regex kIdent("^[a-z_][a-z0-9_]*$");
const std::regex kPath("^(/[A-Za-z0-9_.~-]+)+$");
// -?[0-9]{1,18}: fits int64. Checked on every call, so without std::regex.
bool IsInteger(const std::string& v) {
  const size_t digits = v.size() - (!v.empty() && v[0] == '-' ? 1 : 0);
  if (digits < 1 || digits > 18) return false;
  return std::all_of(v.end() - static_cast<long>(digits), v.end(), [](char c) { return c >= '0' && c <= '9'; });
}
const std::set<std::string> kTypes = {"integer", "number", "boolean", "text", "date"};
const std::set<std::string> kCaches = {"published", "realtime", "none"};
// Paths the gateway answers itself.
const std::set<std::string> kReserved = {"/health", "/metrics", "/openapi.json", "/endpoints"};
constexpr size_t kMaxText = 4096;

struct Where {
  std::string file;
  std::string prefix;  // endpoints[i]
  [[noreturn]] void Fail(const YAML::Node& at, const std::string& key, const std::string& what) const {
    const int line = at.Mark().line >= 0 ? at.Mark().line + 1 : 0;
    throw InputError(file + ":" + std::to_string(line) + ": " + prefix + (key.empty() ? "" : "." + key) + ": " + what);
  }
};

std::string Known(const std::set<std::string>& s) {
  std::string out;
  for (const auto& k : s) out += (out.empty() ? "" : ", ") + k;
  return out;
}

std::string Scalar(const Where& w, const YAML::Node& n, const std::string& key) {
  if (!n.IsScalar()) w.Fail(n, key, "expected a single value");
  return n.as<std::string>();
}

int Int(const Where& w, const YAML::Node& n, const std::string& key, int lo, int hi) {
  const std::string v = Scalar(w, n, key);
  if (!IsInteger(v)) w.Fail(n, key, "expected an integer, got '" + v + "'");
  const long long x = std::stoll(v);
  if (x < lo || x > hi) w.Fail(n, key, "must be from " + std::to_string(lo) + " to " + std::to_string(hi) + ", got " + v);
  return static_cast<int>(x);
}

std::vector<std::string> List(const Where& w, const YAML::Node& n, const std::string& key) {
  std::vector<std::string> out;
  if (n.IsScalar()) return {n.as<std::string>()};
  if (!n.IsSequence()) w.Fail(n, key, "expected a list");
  for (const auto& x : n) out.push_back(Scalar(w, x, key));
  return out;
}

void OnlyKeys(const Where& w, const YAML::Node& n, const std::string& at, const std::set<std::string>& known) {
  if (!n.IsMap()) w.Fail(n, at, "expected a mapping");
  for (const auto& kv : n) {
    const std::string k = kv.first.as<std::string>();
    if (!known.count(k)) w.Fail(kv.first, at.empty() ? k : at + "." + k, "unknown key (known: " + Known(known) + ")");
  }
}

EndpointParam ParseParam(const Where& w, const YAML::Node& n, const std::string& at) {
  OnlyKeys(w, n, at, {"name", "type", "required", "default", "min", "max", "enum", "description"});
  EndpointParam p;
  if (!n["name"]) w.Fail(n, at, "name: missing");
  p.name = Scalar(w, n["name"], at + ".name");
  if (!std::regex_match(p.name, kIdent)) w.Fail(n["name"], at + ".name", "'" + p.name + "' is not a name (lower case, digits, _)");
  const std::string where = at + " (" + p.name + ")";
  if (!n["type"]) w.Fail(n, where, "type: missing (" + Known(kTypes) + ")");
  p.type = Scalar(w, n["type"], where + ".type");
  if (!kTypes.count(p.type)) w.Fail(n["type"], where + ".type", "unknown type '" + p.type + "' (known: " + Known(kTypes) + ")");
  if (n["required"]) {
    const std::string r = Scalar(w, n["required"], where + ".required");
    if (r != "true" && r != "false") w.Fail(n["required"], where + ".required", "expected true or false");
    p.required = r == "true";
  }
  if (n["description"]) p.description = Scalar(w, n["description"], where + ".description");
  if (n["enum"]) {
    if (p.type != "text" && p.type != "integer") w.Fail(n["enum"], where + ".enum", "only a text or integer parameter has allowed values");
    p.allowed = List(w, n["enum"], where + ".enum");
    if (p.allowed.empty()) w.Fail(n["enum"], where + ".enum", "expected at least one value");
    for (const auto& v : p.allowed)
      if (p.type == "integer" && !IsInteger(v)) w.Fail(n["enum"], where + ".enum", "'" + v + "' is not an integer");
  }
  for (const char* bound : {"min", "max"}) {
    if (!n[bound]) continue;
    if (p.type != "integer" && p.type != "number" && p.type != "date")
      w.Fail(n[bound], where + "." + bound, "only an integer, number or date parameter has bounds");
    const std::string v = Scalar(w, n[bound], where + "." + bound);
    EndpointParam unbounded = p;
    unbounded.min.reset();
    unbounded.max.reset();
    unbounded.allowed.clear();
    if (const std::string why = CheckParamValue(unbounded, v); !why.empty()) w.Fail(n[bound], where + "." + bound, why);
    (std::string(bound) == "min" ? p.min : p.max) = v;
  }
  if (p.min && p.max && CheckParamValue(EndpointParam{p.name, p.type, false, {}, p.min, {}, {}, ""}, *p.max) != "")
    w.Fail(n["max"], where + ".max", "is below min (" + *p.min + ")");
  if (n["default"]) {
    if (p.required) w.Fail(n["default"], where + ".default", "a required parameter has no default");
    const std::string v = Scalar(w, n["default"], where + ".default");
    if (const std::string why = CheckParamValue(p, v); !why.empty()) w.Fail(n["default"], where + ".default", why);
    p.default_value = v;
  }
  return p;
}

std::string ReadSqlFile(const Where& w, const YAML::Node& n, const std::string& spec_file, const std::string& rel) {
  namespace fs = std::filesystem;
  if (rel.empty() || fs::path(rel).is_absolute() || rel.find("..") != std::string::npos)
    w.Fail(n, "sql_file", "expected a path inside the pipeline folder, e.g. endpoints/daily_sales.sql");
  const fs::path path = fs::path(spec_file).parent_path() / rel;
  std::ifstream in(path);
  if (!in) w.Fail(n, "sql_file", "cannot open " + path.string());
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Checks the SQL: one SELECT, parameters declared and used; fills `e.reads`.
void CheckSql(const Where& w, const YAML::Node& at, ApiEndpoint& e) {
  while (!e.sql.empty() && (std::isspace(static_cast<unsigned char>(e.sql.back())) || e.sql.back() == ';')) e.sql.pop_back();
  if (e.sql.empty()) w.Fail(at, "sql", "empty");
  std::set<std::string> used;
  std::string first, previous;
  bool order_by = false;
  ScanSql(
      e.sql,
      [&](size_t, size_t, const std::string& name) {
        if (!e.Param(name)) {
          std::string known;
          for (const auto& p : e.params) known += (known.empty() ? "" : ", ") + p.name;
          w.Fail(at, "sql", "{" + name + "} is not a declared parameter (declared: " + (known.empty() ? "none" : known) + ")");
        }
        used.insert(name);
      },
      [&](size_t pos, size_t len) {
        const std::string word = SqlWord(e.sql, pos, len);
        if (first.empty()) first = word;
        if (previous == "order" && word == "by") order_by = true;
        previous = word;
        const auto dot = word.find('.');
        if (dot == std::string::npos) return;
        const std::string schema = word.substr(0, dot);
        if (schema != "serving" && schema != "marts" && schema != "dwh" && schema != "raw" && schema != "staging") return;
        const std::string table = word.substr(0, word.find('.', dot + 1));
        if (std::find(e.reads.begin(), e.reads.end(), table) == e.reads.end()) e.reads.push_back(table);
      },
      [&](size_t) { w.Fail(at, "sql", "one statement per endpoint (a ';' ends the SELECT early)"); });
  if (first != "select" && first != "with") w.Fail(at, "sql", "expected a SELECT (or WITH ... SELECT), found '" + first + "'");
  for (const auto& p : e.params)
    if (!used.count(p.name)) w.Fail(at, "params", "'" + p.name + "' is declared but the SQL never uses {" + p.name + "}");
  if (e.paged && !order_by)
    w.Fail(at, "sql", "a paged endpoint needs an ORDER BY that fixes the order of its rows (pages are cut from it)");
}

bool ValidUtf8(const std::string& s) {
  size_t i = 0;
  while (i < s.size()) {
    const unsigned char c = static_cast<unsigned char>(s[i]);
    const int n = c < 0x80 ? 0 : (c >> 5) == 6 ? 1 : (c >> 4) == 14 ? 2 : (c >> 3) == 30 ? 3 : -1;
    if (n < 0 || (n == 1 && c < 0xc2) || i + static_cast<size_t>(n) >= s.size() + (n == 0 ? 1 : 0)) return false;
    for (int k = 1; k <= n; ++k)
      if ((static_cast<unsigned char>(s[i + static_cast<size_t>(k)]) >> 6) != 2) return false;
    i += static_cast<size_t>(n) + 1;
  }
  return true;
}

// The statement every call runs: each {name} replaced by $k::type, numbered in order of first
// use; paged, LIMIT and OFFSET as the last two. Computed once, not per call.
void Bind(ApiEndpoint& e) {
  std::map<std::string, int> number;
  size_t copied = 0;
  ScanSql(
      e.sql,
      [&](size_t pos, size_t len, const std::string& name) {
        auto [it, fresh] = number.emplace(name, static_cast<int>(number.size()) + 1);
        if (fresh) e.bind_order.push_back(name);
        e.bound_sql += e.sql.substr(copied, pos - copied) + "$" + std::to_string(it->second) + "::" + PgTypeOf(e.Param(name)->type);
        copied = pos + len;
      },
      [](size_t, size_t) {}, [](size_t) {});
  e.bound_sql += e.sql.substr(copied);
  if (e.paged) {
    // On its own line: the SQL may end in a -- comment.
    const int n = static_cast<int>(e.bind_order.size());
    e.bound_sql += "\nLIMIT $" + std::to_string(n + 1) + "::bigint OFFSET $" + std::to_string(n + 2) + "::bigint";
  }
  std::string identity = e.bound_sql + "\x1f" + e.result + "\x1f" + std::to_string(e.default_limit) + "/" +
                         std::to_string(e.max_limit);
  for (const auto& p : e.params)
    identity += "\x1f" + p.name + ":" + p.type + ":" + p.default_value.value_or("\x01") + ":" + p.min.value_or("") + ":" +
                p.max.value_or("");
  e.fingerprint = Checksum(identity).substr(0, 12);
}

}  // namespace

const EndpointParam* ApiEndpoint::Param(const std::string& n) const {
  for (const auto& p : params)
    if (p.name == n) return &p;
  return nullptr;
}

std::string PgTypeOf(const std::string& type) {
  if (type == "integer") return "bigint";
  if (type == "number") return "float8";
  if (type == "boolean") return "boolean";
  if (type == "date") return "date";
  return "text";
}

bool CompareParams(const std::string& type, const std::string& left, const std::string& op, const std::string& right) {
  int cmp = 0;
  if (type == "integer") {
    const long long a = std::stoll(left), b = std::stoll(right);
    cmp = a < b ? -1 : a > b ? 1 : 0;
  } else if (type == "number") {
    const double a = std::stod(left), b = std::stod(right);
    cmp = a < b ? -1 : a > b ? 1 : 0;
  } else {
    cmp = left.compare(right) < 0 ? -1 : left.compare(right) > 0 ? 1 : 0;
  }
  if (op == "<") return cmp < 0;
  if (op == "<=") return cmp <= 0;
  if (op == "=") return cmp == 0;
  if (op == "!=") return cmp != 0;
  if (op == ">=") return cmp >= 0;
  return cmp > 0;
}

std::string CheckParamValue(const EndpointParam& p, const std::string& v) {
  const std::string got = ", got " + QuoteForMessage(v);
  if (p.type == "integer") {
    if (!IsInteger(v)) return "expected an integer" + got;
    const long long x = std::stoll(v);
    if (p.min && x < std::stoll(*p.min)) return "at least " + *p.min + got;
    if (p.max && x > std::stoll(*p.max)) return "at most " + *p.max + got;
  } else if (p.type == "number") {
    char* end = nullptr;
    errno = 0;
    const double x = v.empty() || v.size() > 64 ? NAN : std::strtod(v.c_str(), &end);
    // ERANGE: too large, or too small to be told from 0 (PostgreSQL would refuse it unnamed).
    if (std::isnan(x) || std::isinf(x) || errno == ERANGE || end != v.c_str() + v.size()) return "expected a number" + got;
    if (p.min && x < std::stod(*p.min)) return "at least " + *p.min + got;
    if (p.max && x > std::stod(*p.max)) return "at most " + *p.max + got;
  } else if (p.type == "boolean") {
    if (v != "true" && v != "false") return "expected true or false" + got;
  } else if (p.type == "date") {
    if (!IsValidDate(v)) return "expected a date YYYY-MM-DD from 0001-01-01 to 9999-12-31" + got;
    if (p.min && v < *p.min) return "not before " + *p.min + got;
    if (p.max && v > *p.max) return "not after " + *p.max + got;
  } else if (v.size() > kMaxText) {
    return "at most " + std::to_string(kMaxText) + " bytes" + got;
  } else if (v.find('\0') != std::string::npos || !ValidUtf8(v)) {
    // PostgreSQL would cut the first at the NUL and refuse the second without naming the parameter.
    return "expected UTF-8 text without NUL bytes" + got;
  }
  if (!p.allowed.empty() && std::find(p.allowed.begin(), p.allowed.end(), v) == p.allowed.end()) {
    std::string known;
    for (const auto& a : p.allowed) known += (known.empty() ? "" : ", ") + a;
    return "unknown value " + QuoteForMessage(v) + " (allowed: " + known + ")";
  }
  return "";
}

std::vector<ApiEndpoint> ParseEndpoints(const YAML::Node& node, const std::string& file) {
  std::vector<ApiEndpoint> out;
  if (!node.IsSequence()) Where{file, "endpoints"}.Fail(node, "", "expected a list of endpoints");
  std::set<std::string> names, paths;
  for (size_t i = 0; i < node.size(); ++i) {
    const YAML::Node n = node[i];
    Where w{file, "endpoints[" + std::to_string(i) + "]"};
    OnlyKeys(w, n, "", {"name", "path", "description", "roles", "cache", "staleness_ms", "result", "paging", "params",
                        "checks", "columns", "sql", "sql_file"});
    ApiEndpoint e;
    e.file = file;
    e.line = n.Mark().line + 1;
    if (!n["name"]) w.Fail(n, "name", "missing");
    e.name = Scalar(w, n["name"], "name");
    if (!std::regex_match(e.name, kIdent)) w.Fail(n["name"], "name", "'" + e.name + "' is not a name (lower case, digits, _)");
    if (!names.insert(e.name).second) w.Fail(n["name"], "name", "a second endpoint named '" + e.name + "'");
    w.prefix += " (" + e.name + ")";
    if (!n["path"]) w.Fail(n, "path", "missing (the HTTP path, e.g. /analytics/sales/daily)");
    e.path = Scalar(w, n["path"], "path");
    if (!std::regex_match(e.path, kPath)) w.Fail(n["path"], "path", "'" + e.path + "' is not a path like /analytics/sales");
    if (kReserved.count(e.path)) w.Fail(n["path"], "path", e.path + " is the gateway's own (" + Known(kReserved) + ")");
    if (!paths.insert(e.path).second) w.Fail(n["path"], "path", "a second endpoint at " + e.path);
    if (n["description"]) e.description = Scalar(w, n["description"], "description");
    if (n["roles"]) e.roles = List(w, n["roles"], "roles");
    if (n["cache"]) {
      e.cache = Scalar(w, n["cache"], "cache");
      if (!kCaches.count(e.cache)) w.Fail(n["cache"], "cache", "unknown policy '" + e.cache + "' (known: " + Known(kCaches) + ")");
    }
    if (n["staleness_ms"]) {
      if (e.cache != "realtime") w.Fail(n["staleness_ms"], "staleness_ms", "only a realtime endpoint has a staleness bound");
      e.staleness_ms = Int(w, n["staleness_ms"], "staleness_ms", 1, 3600000);
    }
    if (n["result"]) {
      e.result = Scalar(w, n["result"], "result");
      if (!std::regex_match(e.result, kIdent)) w.Fail(n["result"], "result", "'" + e.result + "' is not a name");
      if (e.result == "cached" || e.result == "next_page_token" || e.result == "version")
        w.Fail(n["result"], "result", "'" + e.result + "' is a key of every answer");
    }
    if (n["paging"]) {
      const YAML::Node pg = n["paging"];
      OnlyKeys(w, pg, "paging", {"limit", "max_limit"});
      e.paged = true;
      e.max_limit = pg["max_limit"] ? Int(w, pg["max_limit"], "paging.max_limit", 1, 10000) : 1000;
      e.default_limit = pg["limit"] ? Int(w, pg["limit"], "paging.limit", 1, e.max_limit) : std::min(100, e.max_limit);
    }
    if (n["params"]) {
      const YAML::Node ps = n["params"];
      if (!ps.IsSequence()) w.Fail(ps, "params", "expected a list of parameters");
      for (size_t j = 0; j < ps.size(); ++j) {
        EndpointParam p = ParseParam(w, ps[j], "params[" + std::to_string(j) + "]");
        if (e.Param(p.name)) w.Fail(ps[j], "params", "a second parameter named '" + p.name + "'");
        if (e.paged && (p.name == "limit" || p.name == "page_token"))
          w.Fail(ps[j], "params", "'" + p.name + "' is the paging's own parameter (declared by paging:)");
        e.params.push_back(std::move(p));
      }
    }
    if (n["checks"]) {
      const std::vector<std::string> texts = List(w, n["checks"], "checks");
      for (size_t j = 0; j < texts.size(); ++j) {
        static const std::regex kCheck(R"(\s*([a-z_][a-z0-9_]*)\s*(<=|>=|!=|<|>|=)\s*([a-z_][a-z0-9_]*)\s*)");
        const YAML::Node at = n["checks"][j];
        std::smatch m;
        if (!std::regex_match(texts[j], m, kCheck))
          w.Fail(at, "checks", "'" + texts[j] + "' is not 'parameter op parameter' (op: < <= = != >= >)");
        ParamCheck c{m[1], m[2], m[3], texts[j]};
        const EndpointParam* l = e.Param(c.left);
        const EndpointParam* r = e.Param(c.right);
        for (const auto& [name, p] : {std::pair{c.left, l}, std::pair{c.right, r}})
          if (!p) w.Fail(at, "checks", "'" + texts[j] + "': '" + name + "' is not a declared parameter");
        if (l->type != r->type || l->type == "boolean")
          w.Fail(at, "checks", "'" + texts[j] + "' compares " + l->type + " with " + r->type +
                                   " (two integers, numbers, dates or texts)");
        e.checks.push_back(std::move(c));
      }
    }
    if (n["columns"]) {
      if (!n["columns"].IsMap()) w.Fail(n["columns"], "columns", "expected a mapping of column name to description");
      for (const auto& c : n["columns"]) e.columns[c.first.as<std::string>()] = c.second.IsScalar() ? c.second.as<std::string>() : "";
    }
    if (n["sql"] && n["sql_file"]) w.Fail(n["sql_file"], "sql_file", "give sql or sql_file, not both");
    if (n["sql"]) e.sql = Scalar(w, n["sql"], "sql");
    else if (n["sql_file"]) e.sql = ReadSqlFile(w, n["sql_file"], file, Scalar(w, n["sql_file"], "sql_file"));
    else w.Fail(n, "sql", "missing (a SELECT, or sql_file: a file of the pipeline folder)");
    CheckSql(w, n["sql"] ? n["sql"] : n["sql_file"], e);
    Bind(e);
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace strata

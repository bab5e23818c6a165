// Endpoints: the API of a pipeline, declared in its pipeline.yaml next to the models they serve,
// instead of written in code. The query service serves each on its HTTP path and through the
// generic Call RPC; stratactl lists them; /openapi.json is generated from them.
//
//   endpoints:
//     - name: daily_sales                    # the RPC's endpoint name and the metrics label
//       path: /analytics/sales/daily         # GET, on the query service's HTTP gateway
//       description: Orders, units and revenue per day.
//       roles: [analyst, viewer]             # optional: tokens of these roles only
//       cache: published                     # published (default) | realtime | none
//       staleness_ms: 500                    # realtime: how old an answer may be (default 1000)
//       result: days                         # the JSON key of the rows (default rows)
//       paging: {limit: 100, max_limit: 1000}  # optional: adds `limit` and `page_token`
//       params:
//         - {name: from, type: date, required: true, description: first day}
//         - {name: status, type: text, enum: [open, shipped]}
//         - {name: limit, type: integer, default: 10, min: 1, max: 1000}
//       checks: ["from <= to"]              # optional: comparisons between two parameters
//       columns: {revenue: sum of the day's lines}   # optional descriptions of result columns
//       sql: SELECT ds, orders, units, revenue FROM serving.daily_sales
//            WHERE ds BETWEEN {from} AND {to} ORDER BY ds
//       # or sql_file: endpoints/daily_sales.sql (relative to the pipeline folder)
//
// A `{name}` in the SQL is a declared parameter, bound as a typed query parameter ($1::date,
// ...), never spliced into the text; an optional parameter given no value and no default is
// NULL. Parameter types: integer, number, boolean, text, date.
//
// This header parses and nothing else (no database, no network): tests/unit/endpoint_test.cpp.
// Every error names the file and line.
#pragma once
#include <map>
#include <optional>
#include <string>
#include <vector>

namespace YAML {
class Node;
}

namespace strata {

struct EndpointParam {
  std::string name;
  std::string type;  // integer | number | boolean | text | date
  bool required = false;
  std::optional<std::string> default_value;
  std::optional<std::string> min, max;  // integer, number and date: inclusive
  std::vector<std::string> allowed;     // `enum:` in YAML
  std::string description;
};

// `checks:` entry "left op right": two parameters of one type (integer, number, date, text),
// op one of < <= = != >= >. A call where both have a value and the comparison is false is
// refused (INVALID_ARGUMENT / 400) naming both; one absent skips the check.
struct ParamCheck {
  std::string left, op, right;
  std::string text;  // as declared, for messages
};

struct ApiEndpoint {
  std::string file;  // for messages
  int line = 0;
  std::string name;
  std::string path;
  std::string description;
  std::vector<std::string> roles;  // empty: any token
  std::string cache = "published";  // published | realtime | none
  int staleness_ms = 1000;
  std::string result = "rows";
  bool paged = false;
  int default_limit = 0, max_limit = 0;  // paged only
  std::vector<EndpointParam> params;  // as declared; a paged endpoint's `limit` and `page_token` are not in it
  std::vector<ParamCheck> checks;
  std::map<std::string, std::string> columns;  // column -> description
  std::string sql;
  std::vector<std::string> reads;  // schema.table names the SQL reads
  // The statement a call runs: {name}s as $1::type, ... (then LIMIT/OFFSET when paged), and
  // which parameter each $k is.
  std::string bound_sql;
  std::vector<std::string> bind_order;
  // What its answers depend on besides the data (statement, parameters, paging, result key):
  // part of its cache keys, so a changed declaration never serves the former one's answers.
  std::string fingerprint;

  const EndpointParam* Param(const std::string& name) const;
};

// Parses `endpoints:` of a pipeline spec at `file` (sql_file paths are relative to its folder).
// Throws InputError "FILE:LINE: endpoints[i].key: message" for an unknown key or parameter
// type, a default or bound that does not fit the type, a {parameter} the endpoint does not
// declare, a declared parameter the SQL never uses, a duplicate name or path, a path that is
// not /a/b, a statement that is not one SELECT (or WITH), or a paged SQL without ORDER BY.
std::vector<ApiEndpoint> ParseEndpoints(const YAML::Node& node, const std::string& file);

// The value `text` of parameter `p`, checked: "" when it fits, else why not (without the
// parameter's name).
std::string CheckParamValue(const EndpointParam& p, const std::string& text);

// Whether `left op right` holds for two checked values of parameter type `type` (numbers
// compared as numbers, dates and text as text).
bool CompareParams(const std::string& type, const std::string& left, const std::string& op, const std::string& right);

// The PostgreSQL type a parameter of `type` is bound as.
std::string PgTypeOf(const std::string& type);

}  // namespace strata

// Endpoint declarations (common/endpoint.h) and their binding to statements and answers
// (services/query/endpoint_call.h): every refusal names the file, line and key; a call's
// parameters are checked against the declaration and bound, never spliced.
#include <gtest/gtest.h>
#include <yaml-cpp/yaml.h>

#include "common/endpoint.h"
#include "common/errors.h"
#include "common/spec.h"
#include "services/query/endpoint_call.h"
#include "strata.pb.h"

namespace strata {
namespace {

std::vector<ApiEndpoint> Parse(const std::string& yaml) { return ParseEndpoints(YAML::Load(yaml), "p/pipeline.yaml"); }

std::string ErrorOf(const std::string& yaml) {
  try {
    Parse(yaml);
  } catch (const InputError& e) {
    return e.what();
  }
  return "";
}

const char* kDaily = R"(
- name: daily_sales
  path: /analytics/sales/daily
  roles: [analyst, viewer]
  result: days
  params:
    - {name: from, type: date, required: true}
    - {name: to, type: date, required: true}
  checks: ["from <= to"]
  sql: |
    SELECT ds, revenue FROM serving.daily_sales
    WHERE ds BETWEEN {from} AND {to} AND ds >= {from}
    ORDER BY ds
- name: top
  path: /analytics/top
  paging: {limit: 5, max_limit: 50}
  params:
    - {name: status, type: text, enum: [open, shipped]}
    - {name: min_amount, type: number, min: 0, default: 0}
  sql: SELECT order_id FROM serving.orders_current WHERE ({status} IS NULL OR status = {status}) AND amount >= {min_amount} ORDER BY order_id -- newest last
)";

TEST(Endpoint, ParsesDeclarations) {
  const auto eps = Parse(kDaily);
  ASSERT_EQ(eps.size(), 2u);
  const ApiEndpoint& d = eps[0];
  EXPECT_EQ(d.name, "daily_sales");
  EXPECT_EQ(d.line, 2);
  EXPECT_EQ(d.path, "/analytics/sales/daily");
  EXPECT_EQ(d.roles, (std::vector<std::string>{"analyst", "viewer"}));
  EXPECT_EQ(d.cache, "published");
  EXPECT_EQ(d.result, "days");
  EXPECT_FALSE(d.paged);
  EXPECT_EQ(d.reads, std::vector<std::string>{"serving.daily_sales"});
  ASSERT_EQ(d.params.size(), 2u);
  EXPECT_TRUE(d.params[0].required);
  EXPECT_EQ(eps[1].default_limit, 5);
  EXPECT_EQ(eps[1].max_limit, 50);
  EXPECT_EQ(*eps[1].Param("min_amount")->default_value, "0");
}

TEST(Endpoint, RefusesBadChecks) {
  const std::string head = "- {name: x, path: /x, params: [{name: a, type: date}, {name: b, type: date}, {name: f, type: boolean}, "
                           "{name: n, type: integer}], sql: 'SELECT {a}, {b}, {f}, {n}', ";
  EXPECT_EQ(ErrorOf(head + "checks: ['a before b']}"),
            "p/pipeline.yaml:1: endpoints[0] (x).checks: 'a before b' is not 'parameter op parameter' (op: < <= = != >= >)");
  EXPECT_EQ(ErrorOf(head + "checks: ['a <= c']}"), "p/pipeline.yaml:1: endpoints[0] (x).checks: 'a <= c': 'c' is not a declared parameter");
  EXPECT_EQ(ErrorOf(head + "checks: ['a <= n']}"),
            "p/pipeline.yaml:1: endpoints[0] (x).checks: 'a <= n' compares date with integer (two integers, numbers, dates or texts)");
  EXPECT_EQ(ErrorOf(head + "checks: ['f = f']}"),
            "p/pipeline.yaml:1: endpoints[0] (x).checks: 'f = f' compares boolean with boolean (two integers, numbers, dates or texts)");
  EXPECT_EQ(ErrorOf(head + "checks: ['a<b', 'b >= a']}"), "");
}

TEST(Endpoint, RefusesWithFileLineAndKey) {
  EXPECT_EQ(ErrorOf("- {name: x, path: /x, params: [{name: n, type: int32}], sql: 'SELECT {n}'}"),
            "p/pipeline.yaml:1: endpoints[0] (x).params[0] (n).type: unknown type 'int32' (known: boolean, date, integer, "
            "number, text)");
  EXPECT_EQ(ErrorOf("- name: x\n  path: /x\n  sql: SELECT * FROM serving.t WHERE a = {a}\n"),
            "p/pipeline.yaml:3: endpoints[0] (x).sql: {a} is not a declared parameter (declared: none)");
  EXPECT_EQ(ErrorOf("- {name: x, path: /x, params: [{name: a, type: text}], sql: SELECT 1}"),
            "p/pipeline.yaml:1: endpoints[0] (x).params: 'a' is declared but the SQL never uses {a}");
  EXPECT_EQ(ErrorOf("- {name: x, path: /x, sql: 'DELETE FROM serving.t'}"),
            "p/pipeline.yaml:1: endpoints[0] (x).sql: expected a SELECT (or WITH ... SELECT), found 'delete'");
  EXPECT_EQ(ErrorOf("- {name: x, path: /x, sql: 'SELECT 1; DROP TABLE serving.t'}"),
            "p/pipeline.yaml:1: endpoints[0] (x).sql: one statement per endpoint (a ';' ends the SELECT early)");
  EXPECT_EQ(ErrorOf("- {name: x, path: /x, paging: {limit: 5}, sql: SELECT a FROM serving.t}"),
            "p/pipeline.yaml:1: endpoints[0] (x).sql: a paged endpoint needs an ORDER BY that fixes the order of its "
            "rows (pages are cut from it)");
  EXPECT_EQ(ErrorOf("- {name: x, path: /x, params: [{name: n, type: integer, default: ten}], sql: 'SELECT {n}'}"),
            "p/pipeline.yaml:1: endpoints[0] (x).params[0] (n).default: expected an integer, got \"ten\"");
  EXPECT_EQ(ErrorOf("- {name: x, path: /x, params: [{name: d, type: date, min: 2024-02-30}], sql: 'SELECT {d}'}"),
            "p/pipeline.yaml:1: endpoints[0] (x).params[0] (d).min: expected a date YYYY-MM-DD from 0001-01-01 to "
            "9999-12-31, got \"2024-02-30\"");
  EXPECT_EQ(ErrorOf("- {name: x, path: /x, cache: sometimes, sql: SELECT 1}"),
            "p/pipeline.yaml:1: endpoints[0] (x).cache: unknown policy 'sometimes' (known: none, published, realtime)");
  EXPECT_EQ(ErrorOf("- {name: x, path: /x, staleness_ms: 10, sql: SELECT 1}"),
            "p/pipeline.yaml:1: endpoints[0] (x).staleness_ms: only a realtime endpoint has a staleness bound");
  EXPECT_EQ(ErrorOf("- {name: x, path: /health, sql: SELECT 1}"),
            "p/pipeline.yaml:1: endpoints[0] (x).path: /health is the gateway's own (/endpoints, /health, /metrics, "
            "/openapi.json)");
  EXPECT_EQ(ErrorOf("- {name: x, path: /x, sql: SELECT 1}\n- {name: y, path: /x, sql: SELECT 1}"),
            "p/pipeline.yaml:2: endpoints[1] (y).path: a second endpoint at /x");
  EXPECT_EQ(ErrorOf("- {name: x, path: /x, paging: {limit: 5}, params: [{name: limit, type: integer}], "
                    "sql: 'SELECT {limit} ORDER BY 1'}"),
            "p/pipeline.yaml:1: endpoints[0] (x).params: 'limit' is the paging's own parameter (declared by paging:)");
  EXPECT_EQ(ErrorOf("- {name: x, path: /x, colour: red, sql: SELECT 1}"),
            "p/pipeline.yaml:1: endpoints[0].colour: unknown key (known: cache, checks, columns, description, name, paging, "
            "params, path, result, roles, sql, sql_file, staleness_ms)");
}

TEST(Endpoint, TheSpecCarriesEndpointsAndRefusesThemAtParse) {
  const std::string head = "pipeline: p\ndatasets:\n  - {name: a, source: {type: http_json, path: /a}, key: [id], "
                           "columns: [{name: id, type: int}]}\n";
  const PipelineSpec spec = ParsePipelineSpec(head + "endpoints:\n  - {name: x, path: /x, sql: SELECT id FROM staging.a}\n", "f.yaml");
  ASSERT_EQ(spec.endpoints.size(), 1u);
  EXPECT_EQ(spec.endpoints[0].reads, std::vector<std::string>{"staging.a"});
  try {
    ParsePipelineSpec(head + "endpoints:\n  - {name: x, path: x, sql: SELECT 1}\n", "f.yaml");
    FAIL() << "a path without / was accepted";
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(), "f.yaml:5: endpoints[0] (x).path: 'x' is not a path like /analytics/sales");
  }
}

TEST(EndpointCall, BindsTypedParametersInOrderOfFirstUse) {
  const auto eps = Parse(kDaily);
  const query::BoundCall b = query::BindCall(eps[0], {{"from", "2024-01-01"}, {"to", "2024-01-31"}});
  EXPECT_EQ(b.sql, "SELECT ds, revenue FROM serving.daily_sales\nWHERE ds BETWEEN $1::date AND $2::date AND ds >= $1::date\n"
                   "ORDER BY ds");
  ASSERT_EQ(b.values.size(), 2u);
  EXPECT_EQ(*b.values[0], "2024-01-01");
  EXPECT_EQ(*b.values[1], "2024-01-31");
  // A value that looks like SQL is a value: it never reaches the text.
  const query::BoundCall t = query::BindCall(eps[1], {{"status", "open"}, {"limit", "7"}, {"page_token", "o14"}});
  EXPECT_EQ(t.sql,
            "SELECT order_id FROM serving.orders_current WHERE ($1::text IS NULL OR status = $1::text) AND amount >= "
            "$2::float8 ORDER BY order_id -- newest last\nLIMIT $3::bigint OFFSET $4::bigint");
  EXPECT_EQ(*t.values[1], "0");  // the default
  EXPECT_EQ(*t.values[2], "8");  // one more than a page, to see whether another follows
  EXPECT_EQ(*t.values[3], "14");
  EXPECT_EQ(t.limit, 7);
  // Absent and optional: NULL; an empty value is absent.
  const query::BoundCall n = query::BindCall(eps[1], {{"status", ""}});
  EXPECT_FALSE(n.values[0].has_value());
  EXPECT_EQ(*n.values[2], "6");
  // The cache key holds the effective values: a default given or taken is one question.
  EXPECT_EQ(query::BindCall(eps[1], {}).cache_key, query::BindCall(eps[1], {{"min_amount", "0"}, {"limit", "5"}}).cache_key);
  EXPECT_NE(query::BindCall(eps[1], {}).cache_key, query::BindCall(eps[1], {{"status", "open"}}).cache_key);
  // No value can pose as another parameter or as an absent one.
  const auto free_text = Parse("- {name: t, path: /t, params: [{name: a, type: text}, {name: b, type: text}], "
                               "sql: 'SELECT {a}, {b}'}");
  EXPECT_NE(query::BindCall(free_text[0], {{"a", "1;b=1:2"}}).cache_key,
            query::BindCall(free_text[0], {{"a", "1"}, {"b", "2"}}).cache_key);
  EXPECT_NE(query::BindCall(free_text[0], {{"a", "-"}}).cache_key, query::BindCall(free_text[0], {}).cache_key);
}

std::string BindError(const ApiEndpoint& e, const std::map<std::string, std::string>& params) {
  try {
    query::BindCall(e, params);
  } catch (const InputError& ex) {
    return ex.what();
  }
  return "";
}

TEST(EndpointCall, RefusesNamingTheParameter) {
  const auto eps = Parse(kDaily);
  EXPECT_EQ(BindError(eps[0], {{"from", "2024-01-01"}}), "to: required (date)");
  EXPECT_EQ(BindError(eps[0], {{"from", "2024-02-30"}, {"to", "2024-03-01"}}),
            "from: expected a date YYYY-MM-DD from 0001-01-01 to 9999-12-31, got \"2024-02-30\"");
  EXPECT_EQ(BindError(eps[0], {{"from", "2024-01-01"}, {"to", "2024-01-02"}, {"form", "x"}}),
            "form: unknown parameter of daily_sales (known: from, to)");
  EXPECT_EQ(BindError(eps[0], {{"from", "2024-01-01"}, {"to", "2024-01-02"}, {"x'; DROP", "1"}}),
            "\"x'; DROP\": unknown parameter of daily_sales (known: from, to)");
  EXPECT_EQ(BindError(eps[1], {{"status", "lost"}}), "status: unknown value \"lost\" (allowed: open, shipped)");
  EXPECT_EQ(BindError(eps[1], {{"limit", "0"}}), "limit: at least 1, got \"0\"");
  EXPECT_EQ(BindError(eps[1], {{"limit", "51"}}), "limit: at most 50, got \"51\"");
  EXPECT_EQ(BindError(eps[1], {{"limit", "ten"}}), "limit: expected an integer, got \"ten\"");
  EXPECT_EQ(BindError(eps[1], {{"min_amount", "-1"}}), "min_amount: at least 0, got \"-1\"");
  EXPECT_EQ(BindError(eps[1], {{"min_amount", "1e999"}}), "min_amount: expected a number, got \"1e999\"");
  EXPECT_EQ(BindError(eps[1], {{"page_token", "x1"}}), "page_token: not a token this service issued");
  // checks: between parameters, once both have a value.
  EXPECT_EQ(BindError(eps[0], {{"from", "2024-02-01"}, {"to", "2024-01-31"}}),
            "from, to: from (2024-02-01) must be <= to (2024-01-31)");
  EXPECT_EQ(BindError(eps[0], {{"from", "2024-01-31"}, {"to", "2024-01-31"}}), "");
  const auto nums = Parse("- {name: n, path: /n, params: [{name: lo, type: integer}, {name: hi, type: integer}], "
                          "checks: ['lo < hi'], sql: 'SELECT {lo}, {hi}'}");
  EXPECT_EQ(BindError(nums[0], {{"lo", "10"}, {"hi", "9"}}), "lo, hi: lo (10) must be < hi (9)");
  EXPECT_EQ(BindError(nums[0], {{"lo", "9"}, {"hi", "10"}}), "");  // as numbers, not as text
  EXPECT_EQ(BindError(nums[0], {{"lo", "10"}}), "");                // one absent: not checked
  const auto free_text = Parse("- {name: t, path: /t, params: [{name: a, type: text}], sql: 'SELECT {a}'}");
  EXPECT_EQ(BindError(free_text[0], {{"a", std::string("ab\0cd", 5)}}), "a: expected UTF-8 text without NUL bytes, got \"ab\\x00cd\"");
  EXPECT_EQ(BindError(free_text[0], {{"a", "caf\xc3"}}), "a: expected UTF-8 text without NUL bytes, got \"caf\\xc3\"");
  EXPECT_EQ(BindError(free_text[0], {{"a", "caf\xc3\xa9"}}), "");
  EXPECT_EQ(BindError(free_text[0], {{"a", std::string(5000, 'x')}}).substr(0, 40), "a: at most 4096 bytes, got \"xxxxxxxxxxxx");
}

TEST(EndpointCall, TypesCellsAndAnswersJson) {
  EXPECT_EQ(query::ColumnTypeOf(20), "integer");
  EXPECT_EQ(query::ColumnTypeOf(1700), "decimal");
  EXPECT_EQ(query::ColumnTypeOf(1082), "date");
  EXPECT_EQ(query::ColumnTypeOf(1184), "timestamp");
  EXPECT_EQ(query::ColumnTypeOf(25), "text");
  v1::CallReply reply;
  for (const auto& [name, type] : std::vector<std::pair<std::string, std::string>>{
           {"id", "integer"}, {"amount", "decimal"}, {"at", "timestamp"}, {"day", "date"}, {"note", "text"}}) {
    auto* c = reply.add_columns();
    c->set_name(name);
    c->set_type(type);
  }
  auto* row = reply.add_rows();
  query::SetCell("integer", "49", false, row->add_cells());
  query::SetCell("decimal", "1234.50", false, row->add_cells());
  query::SetCell("timestamp", "2024-01-02 10:00:00.25+00", false, row->add_cells());
  query::SetCell("date", "2024-01-02", false, row->add_cells());
  query::SetCell("text", "", true, row->add_cells());
  EXPECT_EQ(row->cells(2).text_value(), "2024-01-02T10:00:00.25Z");
  const auto eps = Parse(kDaily);
  reply.set_next_page_token("o5");
  reply.set_version(3);
  EXPECT_EQ(query::ReplyJson(eps[1], reply),
            R"({"rows":[{"id":49,"amount":1234.5,"at":"2024-01-02T10:00:00.25Z","day":"2024-01-02","note":null}],)"
            R"("cached":false,"version":3,"next_page_token":"o5"})");
  EXPECT_EQ(query::DescribeSql(eps[0]),
            "SELECT * FROM (SELECT ds, revenue FROM serving.daily_sales\nWHERE ds BETWEEN NULL::date AND NULL::date AND "
            "ds >= NULL::date\nORDER BY ds\n) strata_describe LIMIT 0");
}

}  // namespace
}  // namespace strata

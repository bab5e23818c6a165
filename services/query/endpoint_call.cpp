#include "services/query/endpoint_call.h"

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <set>

#include "common/errors.h"
#include "common/sql_model.h"
#include "services/query/access.h"
#include "strata.pb.h"

namespace strata::query {

namespace pb = strata::v1;

BoundCall BindCall(const ApiEndpoint& e, const std::map<std::string, std::string>& params) {
  for (const auto& [name, value] : params) {
    if (e.Param(name) || (e.paged && (name == "limit" || name == "page_token"))) continue;
    std::string known;
    for (const auto& p : e.params) known += (known.empty() ? "" : ", ") + p.name;
    if (e.paged) known += std::string(known.empty() ? "" : ", ") + "limit, page_token";
    const bool plain = !name.empty() && name.size() <= 64 &&
                       name.find_first_not_of("abcdefghijklmnopqrstuvwxyz0123456789_") == std::string::npos;
    throw InputError((plain ? name : QuoteForMessage(name)) + ": unknown parameter of " + e.name +
                     " (known: " + (known.empty() ? "none" : known) + ")");
  }
  BoundCall out;
  std::map<std::string, std::optional<std::string>> effective;
  for (const auto& p : e.params) {
    auto it = params.find(p.name);
    // An empty value is absent, as in a query string's `status=`.
    std::optional<std::string> v = it != params.end() && !it->second.empty() ? std::optional(it->second) : p.default_value;
    if (!v && p.required) throw InputError(p.name + ": required (" + p.type + ")");
    if (v)
      if (const std::string why = CheckParamValue(p, *v); !why.empty()) throw InputError(p.name + ": " + why);
    effective[p.name] = v;
    // Length-prefixed: no value can pose as another parameter or as an absent one.
    out.cache_key += p.name + (v ? "=" + std::to_string(v->size()) + ":" + *v : "-") + ";";
  }
  for (const auto& c : e.checks) {
    const auto& l = effective.at(c.left);
    const auto& r = effective.at(c.right);
    if (l && r && !CompareParams(e.Param(c.left)->type, *l, c.op, *r))
      throw InputError(c.left + ", " + c.right + ": " + c.left + " (" + *l + ") must be " + c.op + " " + c.right + " (" + *r + ")");
  }
  if (e.paged) {
    out.limit = e.default_limit;
    if (auto it = params.find("limit"); it != params.end() && !it->second.empty()) {
      const EndpointParam limit{"limit", "integer", false, {}, "1", std::to_string(e.max_limit), {}, ""};
      if (const std::string why = CheckParamValue(limit, it->second); !why.empty()) throw InputError("limit: " + why);
      out.limit = std::stoi(it->second);
    }
    const auto it = params.find("page_token");
    if (!DecodePageToken(it == params.end() ? "" : it->second, &out.offset))
      throw InputError("page_token: not a token this service issued");
    out.cache_key += "limit=" + std::to_string(out.limit) + ";page=" + std::to_string(out.offset);
  }
  for (const auto& name : e.bind_order) out.values.push_back(effective.at(name));
  if (e.paged) {
    out.values.push_back(std::to_string(out.limit + 1));
    out.values.push_back(std::to_string(out.offset));
  }
  out.sql = e.bound_sql;
  return out;
}

std::string ColumnTypeOf(unsigned oid) {
  switch (oid) {
    case 20: case 21: case 23: return "integer";
    case 700: case 701: return "number";
    case 1700: return "decimal";
    case 16: return "boolean";
    case 1082: return "date";
    case 1114: case 1184: return "timestamp";
    default: return "text";
  }
}

void SetCell(const std::string& type, const char* text, bool is_null, pb::Cell* out) {
  if (is_null) {
    out->set_is_null(true);
  } else if (type == "integer") {
    out->set_int_value(std::strtoll(text, nullptr, 10));
  } else if (type == "number") {
    out->set_number_value(std::strtod(text, nullptr));
  } else if (type == "decimal") {
    out->set_decimal_value(text);
  } else if (type == "boolean") {
    out->set_bool_value(text[0] == 't');
  } else if (type == "timestamp") {
    // PostgreSQL's ISO output in UTC: "2024-01-02 10:00:00[.123456][+00]".
    std::string t = text;
    if (t.size() > 10 && t[10] == ' ') t[10] = 'T';
    if (t.size() > 3 && t.compare(t.size() - 3, 3, "+00") == 0) t.resize(t.size() - 3);
    out->set_text_value(t + "Z");
  } else {
    out->set_text_value(text);
  }
}

std::string DescribeSql(const ApiEndpoint& e) {
  std::string sql;
  size_t copied = 0;
  ScanSql(
      e.sql,
      [&](size_t pos, size_t len, const std::string& name) {
        sql += e.sql.substr(copied, pos - copied) + "NULL::" + PgTypeOf(e.Param(name)->type);
        copied = pos + len;
      },
      [](size_t, size_t) {}, [](size_t) {});
  return "SELECT * FROM (" + sql + e.sql.substr(copied) + "\n) strata_describe LIMIT 0";
}

namespace {

nlohmann::ordered_json JsonOf(const pb::Cell& v) {
  switch (v.kind_case()) {
    case pb::Cell::kIntValue: return v.int_value();
    case pb::Cell::kNumberValue: return v.number_value();
    case pb::Cell::kDecimalValue: return std::strtod(v.decimal_value().c_str(), nullptr);
    case pb::Cell::kBoolValue: return v.bool_value();
    case pb::Cell::kTextValue: return v.text_value();
    default: return nullptr;
  }
}

}  // namespace

std::string ReplyJson(const ApiEndpoint& e, const pb::CallReply& reply) {
  // Ordered: a row's keys come in the SELECT's column order.
  nlohmann::ordered_json rows = nlohmann::ordered_json::array();
  for (const auto& r : reply.rows()) {
    nlohmann::ordered_json row = nlohmann::ordered_json::object();
    for (int i = 0; i < r.cells_size() && i < reply.columns_size(); ++i) row[reply.columns(i).name()] = JsonOf(r.cells(i));
    rows.push_back(std::move(row));
  }
  nlohmann::ordered_json body = {{e.result, std::move(rows)}, {"cached", reply.cached()}, {"version", reply.version()}};
  if (e.paged) body["next_page_token"] = reply.next_page_token();
  // Text from the warehouse stays valid JSON whatever its bytes (invalid UTF-8 becomes U+FFFD).
  return body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace strata::query

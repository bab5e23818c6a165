#include "services/query/openapi.h"

#include <nlohmann/json.hpp>

#include <cstdlib>

#include "strata.pb.h"

namespace strata::query {

namespace pb = strata::v1;
using Json = nlohmann::ordered_json;

namespace {

Json ParamSchema(const pb::EndpointParameter& p) {
  Json s;
  const auto typed = [&](const std::string& v) -> Json {
    if (p.type() == "integer") return std::strtoll(v.c_str(), nullptr, 10);
    if (p.type() == "number") return std::strtod(v.c_str(), nullptr);
    if (p.type() == "boolean") return v == "true";
    return v;
  };
  if (p.type() == "integer") s = {{"type", "integer"}, {"format", "int64"}};
  else if (p.type() == "number") s = {{"type", "number"}, {"format", "double"}};
  else if (p.type() == "boolean") s = {{"type", "boolean"}};
  else if (p.type() == "date") s = {{"type", "string"}, {"format", "date"}};
  else s = {{"type", "string"}};
  // OpenAPI bounds are numeric; a date's are said in the description.
  if (p.type() == "integer" || p.type() == "number") {
    if (!p.min().empty()) s["minimum"] = typed(p.min());
    if (!p.max().empty()) s["maximum"] = typed(p.max());
  }
  if (p.allowed_size() > 0) {
    s["enum"] = Json::array();
    for (const auto& a : p.allowed()) s["enum"].push_back(typed(a));
  }
  if (!p.default_value().empty()) s["default"] = typed(p.default_value());
  return s;
}

Json ColumnSchema(const pb::Column& c) {
  Json s;
  if (c.type() == "integer") s = {{"type", "integer"}, {"format", "int64"}};
  else if (c.type() == "number" || c.type() == "decimal") s = {{"type", "number"}};
  else if (c.type() == "boolean") s = {{"type", "boolean"}};
  else if (c.type() == "date") s = {{"type", "string"}, {"format", "date"}};
  else if (c.type() == "timestamp") s = {{"type", "string"}, {"format", "date-time"}};
  else s = {{"type", "string"}};
  s["nullable"] = true;
  if (!c.description().empty()) s["description"] = c.description();
  return s;
}

Json ErrorResponse(const std::string& what) {
  return {{"description", what}, {"content", {{"application/json", {{"schema", {{"$ref", "#/components/schemas/Error"}}}}}}}};
}

}  // namespace

std::string OpenApiJson(const pb::ListEndpointsReply& list, const std::string& title) {
  Json paths = Json::object();
  paths["/health"] = {{"get",
                       {{"operationId", "health"},
                        {"summary", "Liveness of the gateway"},
                        {"security", Json::array()},
                        {"responses", {{"200", {{"description", "serving"}}}}}}}};
  for (const auto& e : list.endpoints()) {
    Json params = Json::array();
    for (const auto& p : e.params()) {
      std::string description = p.description();
      if (p.type() == "date" && (!p.min().empty() || !p.max().empty()))
        description += (description.empty() ? "" : " ") + std::string("(from ") + (p.min().empty() ? "any day" : p.min()) +
                       " to " + (p.max().empty() ? "any day" : p.max()) + ")";
      Json q = {{"name", p.name()}, {"in", "query"}, {"required", p.required()}, {"schema", ParamSchema(p)}};
      if (!description.empty()) q["description"] = description;
      params.push_back(std::move(q));
    }
    Json row = {{"type", "object"}};
    if (e.columns_size() > 0) {
      Json props = Json::object();
      Json required = Json::array();
      for (const auto& c : e.columns()) {
        props[c.name()] = ColumnSchema(c);
        required.push_back(c.name());
      }
      row["properties"] = std::move(props);
      row["required"] = std::move(required);
    }
    Json props = {{e.result(), {{"type", "array"}, {"items", row}}},
                  {"cached", {{"type", "boolean"}, {"description", "answered from the cache"}}},
                  {"version", {{"type", "integer"}, {"format", "int64"}, {"description", "the publish version answered from (0: not a published endpoint)"}}}};
    Json required = {e.result(), "cached", "version"};
    if (e.paged()) {
      props["next_page_token"] = {{"type", "string"}, {"description", "pass as page_token for the next page; empty on the last"}};
      required.push_back("next_page_token");
    }
    std::string description = e.description();
    if (e.roles_size() > 0) {
      description += std::string(description.empty() ? "" : " ") + "Roles:";
      for (const auto& r : e.roles()) description += " " + r;
      description += ".";
    }
    description += std::string(description.empty() ? "" : " ") + "Cache: " + e.cache() +
                   (e.cache() == "realtime" ? " (at most " + std::to_string(e.staleness_ms()) + " ms old)" : "") + ".";
    Json op = {{"operationId", e.name()},
               {"summary", e.description().empty() ? e.name() : e.description()},
               {"description", description},
               {"tags", {e.pipeline().empty() ? "strata" : e.pipeline()}},
               {"parameters", params},
               {"responses",
                {{"200", {{"description", "the rows"}, {"content", {{"application/json", {{"schema", {{"type", "object"}, {"properties", props}, {"required", required}}}}}}}}},
                 {"400", ErrorResponse("a parameter is invalid (the message names it)")},
                 {"401", ErrorResponse("no token, or an unknown one")},
                 {"403", ErrorResponse("the token's role may not call this endpoint")},
                 {"429", ErrorResponse("the token's rate limit is exceeded")},
                 {"503", ErrorResponse("at capacity or the warehouse is unavailable; retry after Retry-After seconds")},
                 {"504", ErrorResponse("the query exceeded its deadline")}}}};
    paths[e.path()] = {{"get", std::move(op)}};
  }
  Json doc = {
      {"openapi", "3.0.3"},
      {"info", {{"title", title}, {"version", "1"}, {"description", "Endpoints declared by the pipeline (pipeline.yaml `endpoints:`)."}}},
      {"paths", std::move(paths)},
      {"components",
       {{"securitySchemes", {{"bearer", {{"type", "http"}, {"scheme", "bearer"}}}}},
        {"schemas",
         {{"Error",
           {{"type", "object"},
            {"required", {"error"}},
            {"properties",
             {{"error",
               {{"type", "object"},
                {"required", {"code", "message"}},
                {"properties", {{"code", {{"type", "string"}}}, {"message", {{"type", "string"}}}}}}}}}}}}}}},
      {"security", {{{"bearer", Json::array()}}}}};
  return doc.dump(-1, ' ', false, Json::error_handler_t::replace);
}

}  // namespace strata::query

#include "services/ingest/coerce.h"

#include <nlohmann/json.hpp>
#include <regex>

#include "common/time_util.h"

namespace strata::ingest {

namespace {
const std::regex kInt(R"(^[+-]?[0-9]{1,18}$)");
const std::regex kFloat(R"(^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$)");
const std::regex kTimestamp(
    R"(^([0-9]{4}-[0-9]{2}-[0-9]{2})[T ]([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?(Z|[+-][0-9]{2}(:?[0-9]{2})?)?$)");

Coerced Bad(ColumnType t, const std::string& shown) {
  Coerced c;
  c.ok = false;
  c.why = std::string("expected ") + ColumnTypeName(t) + ", got " + shown;
  return c;
}

Coerced Good(std::string text) {
  Coerced c;
  c.text = std::move(text);
  return c;
}

std::string Shown(const std::string& s) {
  return "\"" + (s.size() > 60 ? s.substr(0, 60) + "..." : s) + "\"";
}
}  // namespace

Coerced CoerceText(const std::string& v, ColumnType t) {
  switch (t) {
    case ColumnType::kText:
      return Good(v);
    case ColumnType::kInt:
      return std::regex_match(v, kInt) ? Good(v[0] == '+' ? v.substr(1) : v) : Bad(t, Shown(v));
    case ColumnType::kFloat:
      return std::regex_match(v, kFloat) ? Good(v) : Bad(t, Shown(v));
    case ColumnType::kBool:
      if (v == "true" || v == "false") return Good(v);
      return Bad(t, Shown(v));
    case ColumnType::kDate:
      return IsValidDate(v) ? Good(v) : Bad(t, Shown(v));
    case ColumnType::kTimestamp: {
      std::smatch m;
      if (std::regex_match(v, m, kTimestamp) && IsValidDate(m[1].str())) {
        std::string out = v;
        out[10] = 'T';
        if (!m[4].matched) out += "Z";  // naive timestamps are UTC by contract
        return Good(out);
      }
      return Bad(t, Shown(v));
    }
  }
  return Bad(t, Shown(v));
}

Coerced CoerceJson(const nlohmann::json& v, ColumnType t) {
  if (v.is_null()) {
    Coerced c;
    c.is_null = true;
    return c;
  }
  if (v.is_string()) return CoerceText(v.get<std::string>(), t);
  if (v.is_object() || v.is_array()) return Bad(t, v.is_object() ? "an object" : "an array");
  switch (t) {
    case ColumnType::kText:
      return Good(v.dump());
    case ColumnType::kInt:
      if (v.is_number_integer()) return Good(v.dump());
      if (v.is_number_float()) {
        const double d = v.get<double>();
        if (d == static_cast<double>(static_cast<long long>(d)))
          return Good(std::to_string(static_cast<long long>(d)));
      }
      return Bad(t, v.dump());
    case ColumnType::kFloat:
      return v.is_number() ? Good(v.dump()) : Bad(t, v.dump());
    case ColumnType::kBool:
      return v.is_boolean() ? Good(v.get<bool>() ? "true" : "false") : Bad(t, v.dump());
    case ColumnType::kDate:
    case ColumnType::kTimestamp:
      return Bad(t, v.dump());
  }
  return Bad(t, v.dump());
}

}  // namespace strata::ingest

#include "common/csv.h"

namespace strata {

void AppendCsvField(std::string& out, std::string_view v, bool is_null) {
  if (is_null) return;
  const bool quote = v.empty() || v.find_first_of(",\"\n\r") != std::string_view::npos ||
                     v == "\\.";
  if (!quote) {
    out.append(v);
    return;
  }
  out.push_back('"');
  for (char c : v) {
    if (c == '"') out.push_back('"');
    out.push_back(c);
  }
  out.push_back('"');
}

void AppendCsvLine(std::string& out, const std::vector<std::string>& fields,
                   const std::vector<bool>& nulls) {
  for (size_t i = 0; i < fields.size(); ++i) {
    if (i) out.push_back(',');
    AppendCsvField(out, fields[i], i < nulls.size() && nulls[i]);
  }
  out.push_back('\n');
}

}  // namespace strata

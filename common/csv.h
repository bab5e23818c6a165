// CSV as PostgreSQL's COPY (FORMAT csv) reads it: an unquoted empty field is NULL, a quoted
// empty field ("") is the empty string; fields with separators, quotes or newlines are quoted.
#pragma once
#include <string>
#include <string_view>
#include <vector>

namespace strata {

void AppendCsvField(std::string& out, std::string_view value, bool is_null);
// Appends a whole line (fields comma-separated, '\n' terminated). nulls[i] marks NULL fields.
void AppendCsvLine(std::string& out, const std::vector<std::string>& fields,
                   const std::vector<bool>& nulls);

}  // namespace strata

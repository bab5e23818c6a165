// Type coercion for ingested values: a source value becomes the canonical text of the
// dataset's declared column type, or a reason it cannot. Pure; no I/O.
//   int        JSON integer, or a string of an optional sign and digits ("5024279")
//   float      JSON number, or a decimal string
//   bool       JSON bool, or "true"/"false"
//   date       "YYYY-MM-DD" (a real calendar date)
//   timestamp  "YYYY-MM-DD[T ]HH:MM:SS[.frac][Z|±HH[:MM]]"
//   text       strings as they are; numbers and bools in their JSON spelling
// JSON null and an absent field are NULL. Objects and arrays are never coerced.
#pragma once
#include <nlohmann/json_fwd.hpp>
#include <string>

#include "common/spec.h"

namespace strata::ingest {

struct Coerced {
  bool ok = true;
  bool is_null = false;
  std::string text;
  std::string why;  // set when !ok: "expected float, got \"n/a\""
};

Coerced CoerceJson(const nlohmann::json& value, ColumnType type);
Coerced CoerceText(const std::string& value, ColumnType type);

}  // namespace strata::ingest

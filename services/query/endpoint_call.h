// From a call's parameters to the statement the warehouse runs, and from the warehouse's rows to
// the answer: pure logic (no database, no network), tested in tests/unit/endpoint_test.cpp.
#pragma once
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "common/endpoint.h"

namespace strata::v1 {
class CallReply;
class Cell;
}

namespace strata::query {

// A call ready for the warehouse.
struct BoundCall {
  std::string sql;                                // {name}s replaced by $1::type, ...
  std::vector<std::optional<std::string>> values;  // for $1, $2, ...; nullopt is NULL
  std::string cache_key;  // the parameters' effective values, canonical (defaults applied)
  int limit = 0;          // paged: rows per page; the statement asks for one more to see a next page
  long long offset = 0;   // paged: rows skipped
};

// Checks `params` against the declaration and binds them. Throws InputError whose message
// starts with the parameter's name ("limit: at most 1000, got \"5000\"", "form: unknown
// parameter (known: from, to)", "from: required").
BoundCall BindCall(const ApiEndpoint& e, const std::map<std::string, std::string>& params);

// A statement with the endpoint's columns and no rows (every parameter NULL): what the listing
// learns the column types from.
std::string DescribeSql(const ApiEndpoint& e);

// The JSON a column type is answered as in HTTP, and the PostgreSQL type OIDs it comes from.
// integer: int2/int4/int8; number: float4/float8; decimal: numeric; boolean; date; timestamp:
// timestamp and timestamptz; text: everything else.
std::string ColumnTypeOf(unsigned oid);

// A cell as the warehouse printed it (text format, UTC session) in the reply's Value of `type`.
// Timestamps become ISO 8601 with "T" and "Z" ("2024-01-02 10:00:00+00" -> "2024-01-02T10:00:00Z").
void SetCell(const std::string& type, const char* text, bool is_null, strata::v1::Cell* out);

// The HTTP body: {"<result>": [{column: value, ...}], "next_page_token": ..., "cached": ...,
// "version": ...}; integers, decimals and numbers as JSON numbers, dates and timestamps as
// ISO strings, NULL as null.
std::string ReplyJson(const ApiEndpoint& e, const strata::v1::CallReply& reply);

}  // namespace strata::query

#include "services/ingest/extract_query.h"

#include <regex>

#include "common/errors.h"
#include "common/pg.h"
#include "common/time_util.h"

namespace strata::ingest {

Window DayWindow(const std::string& ds) {
  ParseDate(ds, "ds");
  return {ds + "T00:00:00Z", AddDays(ds, 1) + "T00:00:00Z"};
}

std::string IncrementalSelect(const DatasetSpec& d, const std::string& ds) { return IncrementalSelect(d, DayWindow(ds)); }

std::string IncrementalSelect(const DatasetSpec& d, const Window& w) {
  static const std::regex kUtc(R"(^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$)");
  if (!std::regex_match(w.start, kUtc) || !std::regex_match(w.end, kUtc) || !(w.start < w.end))
    throw InputError("data interval: expected ISO-8601 UTC bounds start < end, got [" + w.start + ", " + w.end + ")");
  std::string cols;
  for (const auto& c : d.columns) {
    if (!cols.empty()) cols += ", ";
    cols += c.type == ColumnType::kTimestamp
                ? "to_char(" + QuoteIdent(c.name) + " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
                : QuoteIdent(c.name) + "::text";
  }
  const std::string cursor = QuoteIdent(d.source.cursor);
  std::string order = cursor;
  for (const auto& k : d.key)
    if (k != d.source.cursor) order += ", " + QuoteIdent(k);
  const std::string table = QuoteQualified(d.source.table);
  // The window bounds are built from a validated date, so inlining them is safe.
  return "SELECT " + cols + " FROM " + table + " WHERE " + cursor + " >= '" + w.start + "' AND " + cursor +
         " < '" + w.end + "' ORDER BY " + order;
}

}  // namespace strata::ingest

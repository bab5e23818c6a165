#include "services/ingest/extract_query.h"

#include <nlohmann/json.hpp>
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

namespace {

std::string SelectList(const DatasetSpec& d) {
  std::string cols;
  for (const auto& c : d.columns) {
    if (!cols.empty()) cols += ", ";
    cols += c.type == ColumnType::kTimestamp
                ? "to_char(" + QuoteIdent(c.name) + " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
                : QuoteIdent(c.name) + "::text";
  }
  return cols;
}

std::string OrderBy(const DatasetSpec& d) {
  std::string order = QuoteIdent(d.source.cursor);
  for (const auto& k : d.key)
    if (k != d.source.cursor) order += ", " + QuoteIdent(k);
  return order;
}

}  // namespace

std::vector<Referrer> Referrers(const PipelineSpec& spec, const DatasetSpec& d) {
  std::vector<Referrer> out;
  if (d.source.type != "postgres" || d.source.incremental != "interval") return out;
  for (const auto& f : spec.facts) {
    const DatasetSpec* from = spec.Find(f.from);
    if (!from || from->source.type != "postgres" || from->source.incremental != "interval") continue;
    for (const auto& j : f.joins)
      if (j.dataset == d.name) out.push_back({from->source.table, from->source.cursor, j.on});
  }
  return out;
}

std::string IncrementalSelect(const DatasetSpec& d, const Window& w, const std::string& extra_where,
                              const std::vector<Referrer>& referrers) {
  static const std::regex kUtc(R"(^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z$)");
  if (!std::regex_match(w.start, kUtc) || !std::regex_match(w.end, kUtc) || !(w.start < w.end))
    throw InputError("data interval: expected ISO-8601 UTC bounds start < end, got [" + w.start + ", " + w.end + ")");
  const std::string cols = SelectList(d);
  const std::string cursor = QuoteIdent(d.source.cursor);
  const std::string order = OrderBy(d);
  const std::string table = QuoteQualified(d.source.table);
  // The window bounds are built from a validated date, so inlining them is safe.
  const auto in_window = [&w](const std::string& col) {
    return col + " >= '" + w.start + "' AND " + col + " < '" + w.end + "'";
  };
  std::string where = in_window(cursor);
  for (const auto& r : referrers) {
    std::string on;
    for (const auto& c : r.on) on += (on.empty() ? "" : ", ") + QuoteIdent(c);
    where += " OR (" + on + ") IN (SELECT " + on + " FROM " + QuoteQualified(r.table) + " WHERE " +
             in_window(QuoteIdent(r.cursor)) + ")";
  }
  if (!referrers.empty()) where = "(" + where + ")";
  return "SELECT " + cols + " FROM " + table + " WHERE " + where + (extra_where.empty() ? "" : " AND " + extra_where) +
         " ORDER BY " + order;
}

std::string WatermarkSelect(const DatasetSpec& d, const Watermark* w, const std::string& extra_where) {
  std::string sql = "SELECT " + SelectList(d) + " FROM " + QuoteQualified(d.source.table);
  if (w) {
    const std::string cursor = QuoteIdent(d.source.cursor);
    if (d.source.overlap_seconds > 0) {
      sql += " WHERE " + cursor + " >= " + QuoteLiteral(w->cursor) + "::" +
             PgTypeName(d.columns[static_cast<size_t>(d.ColumnIndex(d.source.cursor))].type) + " - " +
             (d.columns[static_cast<size_t>(d.ColumnIndex(d.source.cursor))].type == ColumnType::kTimestamp
                  ? "interval '" + std::to_string(d.source.overlap_seconds) + " seconds'"
                  : std::to_string(d.source.overlap_seconds));
    } else {
      std::string lhs = cursor, rhs = QuoteLiteral(w->cursor);
      size_t i = 0;
      for (const auto& k : d.key) {
        if (k == d.source.cursor) continue;
        if (i >= w->key.size()) throw InputError("watermark key has " + std::to_string(w->key.size()) + " values, the dataset key more");
        lhs += ", " + QuoteIdent(k);
        rhs += ", " + QuoteLiteral(w->key[i++]);
      }
      sql += " WHERE (" + lhs + ") > (" + rhs + ")";
    }
  }
  if (!extra_where.empty()) sql += std::string(w ? " AND " : " WHERE ") + extra_where;
  return sql + " ORDER BY " + OrderBy(d);
}

std::string ShardPredicate(const DatasetSpec& d, int shard, int shards) {
  std::string key;
  for (const auto& k : d.key) key += (key.empty() ? "" : " || '|' || ") + QuoteIdent(k) + "::text";
  return "(hashtext(" + key + ") & 2147483647) % " + std::to_string(shards) + " = " + std::to_string(shard);
}

std::string WatermarkJson(const Watermark& w) { return nlohmann::json{{"cursor", w.cursor}, {"key", w.key}}.dump(); }

Watermark WatermarkFromJson(const std::string& text) {
  try {
    const auto j = nlohmann::json::parse(text);
    return {j.at("cursor").get<std::string>(), j.at("key").get<std::vector<std::string>>()};
  } catch (const std::exception& e) {
    throw InputError("watermark " + text + ": " + e.what());
  }
}

}  // namespace strata::ingest

#include "services/quality/checks.h"

#include <algorithm>
#include <cmath>
#include <functional>
#include <nlohmann/json.hpp>

#include "common/pg.h"

namespace strata::quality {

std::string DateKeyExpr(const std::string& column, const std::string& ds_literal) {
  if (column.size() > 4 && column.compare(column.size() - 4, 4, "_key") == 0)
    return QuoteIdent(column) + " = to_char(" + ds_literal + "::date, 'YYYYMMDD')::int";
  return QuoteIdent(column) + "::date = " + ds_literal + "::date";
}

std::optional<std::string> FailingRowsSql(const CheckSpec& c, const std::string& ds_literal,
                                          const std::function<std::string(const std::string&)>& quote) {
  const std::string table =
      c.table.empty() ? ""
      : c.slice.empty() ? QuoteQualified(c.table)
                        : "(SELECT * FROM " + QuoteQualified(c.table) + " WHERE " + DateKeyExpr(c.slice, ds_literal) + ")";
  const std::string alias = c.slice.empty() ? "" : " sliced";
  const std::string col = c.columns.empty() ? "" : QuoteIdent(c.columns.front());
  if (c.kind == "not_null") return "SELECT * FROM " + table + alias + " WHERE " + col + " IS NULL";
  if (c.kind == "unique") {
    std::string cols;
    for (const auto& k : c.columns) cols += (cols.empty() ? "" : ", ") + QuoteIdent(k);
    return "SELECT " + cols + ", count(*) AS occurrences FROM " + table + alias + " GROUP BY " + cols +
           " HAVING count(*) > 1";
  }
  if (c.kind == "relationships")
    return "SELECT t.* FROM " + table + " t WHERE t." + col + " IS NOT NULL AND NOT EXISTS (SELECT 1 FROM " +
           QuoteQualified(c.to_table) + " p WHERE p." + QuoteIdent(c.to_column) + " = t." + col + ")";
  if (c.kind == "accepted_values") {
    std::string list;
    for (const auto& v : c.values) list += (list.empty() ? "" : ", ") + quote(v);
    return "SELECT * FROM " + table + alias + " WHERE " + col + " IS NOT NULL AND " + col + "::text NOT IN (" + list + ")";
  }
  if (c.kind == "range") {
    std::string cond;
    if (!c.min.empty()) cond += col + " < " + c.min;
    if (!c.max.empty()) cond += (cond.empty() ? "" : " OR ") + col + " > " + c.max;
    return "SELECT * FROM " + table + alias + " WHERE " + cond;
  }
  if (c.kind == "custom_sql") {
    std::string sql = c.sql;
    for (size_t p = sql.find("{ds}"); p != std::string::npos; p = sql.find("{ds}", p + ds_literal.size()))
      sql.replace(p, 4, ds_literal);
    while (!sql.empty() && (sql.back() == ';' || std::isspace(static_cast<unsigned char>(sql.back())))) sql.pop_back();
    return sql;
  }
  return std::nullopt;
}

namespace {

std::string Cols(const std::vector<std::string>& cols, const std::string& prefix = "") {
  std::string out;
  for (const auto& c : cols) out += (out.empty() ? "" : ", ") + prefix + QuoteIdent(c);
  return out;
}

// Latest staged version per key: by the dataset's cursor, then the latest load.
std::string Latest(const DatasetSpec& d, const std::vector<std::string>& key) {
  std::string order = Cols(key, "s.");
  if (!d.CursorColumn().empty()) order += ", s." + QuoteIdent(d.CursorColumn()) + " DESC NULLS LAST";
  return order + ", s.ds DESC, s.run_id DESC";
}

}  // namespace

std::string FactGapSql(const PipelineSpec& spec, const FactSpec& f, const std::string& measure,
                       const std::string& ds_literal) {
  const DatasetSpec& from = *spec.Find(f.from);
  std::vector<std::string> have;
  for (const auto& c : from.columns) have.push_back(c.name);
  std::string sql = "WITH lines AS (\n  SELECT DISTINCT ON (" + Cols(f.grain, "s.") + ") " + Cols(have, "s.") +
                    " FROM staging." + QuoteIdent(f.from) + " s WHERE s.ds = " + ds_literal + "\n  ORDER BY " +
                    Latest(from, f.grain) + ")";
  std::string select = "SELECT lines.*", joins;
  for (size_t i = 0; i < f.joins.size(); ++i) {
    const auto& j = f.joins[i];
    const DatasetSpec& jd = *spec.Find(j.dataset);
    const std::string alias = "h" + std::to_string(i);
    std::vector<std::string> jcols;
    for (const auto& c : jd.columns) jcols.push_back(c.name);
    sql += ",\n" + alias + " AS (\n  SELECT DISTINCT ON (" + Cols(j.on, "s.") + ") " + Cols(jcols, "s.") + " FROM staging." +
           QuoteIdent(j.dataset) + " s\n  WHERE (" + Cols(j.on, "s.") + ") IN (SELECT " + Cols(j.on) + " FROM lines)\n  ORDER BY " +
           Latest(jd, j.on) + ")";
    for (const auto& c : jcols)
      if (std::find(have.begin(), have.end(), c) == have.end()) {
        select += ", " + alias + "." + QuoteIdent(c);
        have.push_back(c);
      }
    joins += " LEFT JOIN " + alias + " USING (" + Cols(j.on) + ")";
  }
  std::string value = "NULL::numeric";
  for (const auto& m : f.measures)
    if (m.name == measure) value = "(" + m.sql + ")::" + m.type;
  std::string live;
  for (const auto& g : f.grain) live += " AND x." + QuoteIdent(g) + " = r." + QuoteIdent(g);
  sql += "\nSELECT " + Cols(f.grain, "r.") + ", " + value + " AS gap_measure FROM (" + select + " FROM lines" + joins + ") r\n" +
         "WHERE NOT EXISTS (SELECT 1 FROM dwh." + QuoteIdent(f.name) + " x WHERE NOT x.is_deleted" + live + ")";
  for (const auto& del : FactDeletionSources(spec, f)) {
    std::string match;
    for (const auto& k : del.key) match += " AND t." + QuoteIdent(k) + " = r." + QuoteIdent(k);
    sql += "\n  AND NOT EXISTS (SELECT 1 FROM raw." + QuoteIdent(del.dataset + "_current") + " t WHERE t._deleted" + match + ")";
  }
  return sql;
}

VolumeVerdict JudgeVolume(long long today, const std::vector<long long>& history, double max_sigma) {
  VolumeVerdict v;
  if (history.size() < 3) {
    v.message = "not enough history (" + std::to_string(history.size()) + " of at least 3 days)";
    return v;
  }
  double sum = 0;
  for (long long h : history) sum += static_cast<double>(h);
  v.mean = sum / static_cast<double>(history.size());
  double sq = 0;
  for (long long h : history) sq += (static_cast<double>(h) - v.mean) * (static_cast<double>(h) - v.mean);
  v.stddev = std::sqrt(sq / static_cast<double>(history.size() - 1));
  const double diff = std::fabs(static_cast<double>(today) - v.mean);
  // A perfectly flat history makes any change infinitely many sigmas away; treat a one-row
  // wobble as noise rather than an anomaly.
  v.sigmas = diff / std::max(v.stddev, 1.0);
  v.ok = v.sigmas <= max_sigma;
  char buf[160];
  std::snprintf(buf, sizeof buf, "%lld rows vs trailing mean %.1f (stddev %.1f): %.2f sigma", today, v.mean,
                v.stddev, v.sigmas);
  v.message = buf;
  return v;
}

Transition AlertTransition(const std::string& alerted_state, const std::string& status) {
  if (status != "pass" && alerted_state != "failing") return Transition::kStartsFailing;
  if (status == "pass" && alerted_state == "failing") return Transition::kRecovers;
  return Transition::kNone;
}

std::string AlertPayload(const std::string& format, Transition t, const std::string& pipeline,
                         const std::string& ds, const std::string& run_id, const CheckResult& r) {
  const bool failing = t == Transition::kStartsFailing;
  nlohmann::json j = {{"event", failing ? "check_failing" : "check_recovered"},
                      {"pipeline", pipeline},
                      {"ds", ds},
                      {"run_id", run_id},
                      {"check", r.name},
                      {"kind", r.kind},
                      {"severity", r.severity},
                      {"status", r.status},
                      {"target", r.target},
                      {"observed", r.observed},
                      {"threshold", r.threshold},
                      {"message", r.message},
                      {"sample", nlohmann::json::parse(r.sample, nullptr, false)}};
  if (format == "slack") {
    j["text"] = std::string(failing ? ":red_circle: strata check failing" : ":large_green_circle: strata check recovered") +
                ": " + r.name + " (" + r.severity + ") pipeline=" + pipeline + " ds=" + ds + " — " + r.message;
  }
  return j.dump();
}

}  // namespace strata::quality

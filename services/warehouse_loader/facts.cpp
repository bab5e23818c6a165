#include "services/warehouse_loader/facts.h"

#include <algorithm>
#include <cctype>
#include <functional>

#include "common/pg.h"
#include "services/warehouse_loader/dimensions.h"

namespace strata::loader {
namespace {

std::string List(const std::vector<std::string>& cols, const std::string& prefix = "") {
  std::string out;
  for (const auto& c : cols) out += (out.empty() ? "" : ", ") + prefix + QuoteIdent(c);
  return out;
}

const Column& ColumnOf(const PipelineSpec& spec, const FactSpec& f, const std::string& name) {
  const DatasetSpec* from = spec.Find(f.from);
  if (from->ColumnIndex(name) >= 0) return from->columns[from->ColumnIndex(name)];
  for (const auto& j : f.joins) {
    const DatasetSpec* d = spec.Find(j.dataset);
    if (d->ColumnIndex(name) >= 0) return d->columns[d->ColumnIndex(name)];
  }
  throw std::logic_error("fact column " + name + " was validated by the spec parser");
}

// Latest version per key of a staged dataset: by its cursor, then the latest load.
std::string LatestOrder(const DatasetSpec& d, const std::vector<std::string>& key, const std::string& alias) {
  std::string order = List(key, alias + ".");
  if (!d.CursorColumn().empty()) order += ", " + alias + "." + QuoteIdent(d.CursorColumn()) + " DESC NULLS LAST";
  return order + ", " + alias + ".ds DESC, " + alias + ".run_id DESC";
}

// The natural-key columns of the fact's dimensions that are not grain columns: stored in the
// fact, so its attribution is visible and a header change can be compared with what it used.
std::vector<std::string> NaturalKeys(const FactSpec& f) {
  std::vector<std::string> out;
  for (const auto& ref : f.dimensions)
    if (std::find(f.grain.begin(), f.grain.end(), ref.key) == f.grain.end() &&
        std::find(out.begin(), out.end(), ref.key) == out.end())
      out.push_back(ref.key);
  return out;
}

// Whether `sql` names `col` as an identifier (a conservative, textual test).
bool Names(const std::string& sql, const std::string& col) {
  const auto ident = [](char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; };
  for (size_t p = sql.find(col); p != std::string::npos; p = sql.find(col, p + 1))
    if ((p == 0 || !ident(sql[p - 1])) && (p + col.size() == sql.size() || !ident(sql[p + col.size()]))) return true;
  return false;
}

std::string DateKey(const std::string& ts) { return "to_char(" + ts + " AT TIME ZONE 'UTC', 'YYYYMMDD')::int"; }

bool Contains(const std::vector<std::string>& all, const std::vector<std::string>& some) {
  for (const auto& c : some)
    if (std::find(all.begin(), all.end(), c) == all.end()) return false;
  return true;
}

// A row deleted in the source, as change data capture saw it: a tombstone in raw.<d>_current
// for the key. `cols` are the key columns of `alias`.
std::string Tombstone(const std::string& dataset, const std::vector<std::string>& cols, const std::string& alias) {
  std::string cond;
  for (const auto& c : cols) cond += " AND t." + QuoteIdent(c) + " = " + alias + "." + QuoteIdent(c);
  return "EXISTS (SELECT 1 FROM raw." + QuoteIdent(dataset + "_current") + " t WHERE t._deleted" + cond + ")";
}

}  // namespace

std::string FactDdl(const PipelineSpec& spec, const FactSpec& f) {
  const std::string table = "dwh." + QuoteIdent(f.name);
  std::string sql = "CREATE TABLE IF NOT EXISTS " + table + " (\n";
  for (const auto& g : f.grain) sql += "  " + QuoteIdent(g) + " " + PgTypeName(ColumnOf(spec, f, g).type) + " NOT NULL,\n";
  sql += "  date_key integer NOT NULL,\n";
  for (const auto& ref : f.dimensions)
    sql += "  " + QuoteIdent(spec.FindDimension(ref.dimension)->surrogate) + " bigint NOT NULL,\n";
  for (const auto& k : NaturalKeys(f)) sql += "  " + QuoteIdent(k) + " " + PgTypeName(ColumnOf(spec, f, k).type) + ",\n";
  for (const auto& m : f.measures) sql += "  " + QuoteIdent(m.name) + " " + m.type + ",\n";
  sql += "  " + QuoteIdent(f.event_time) + " timestamptz NOT NULL,\n  is_deleted boolean NOT NULL DEFAULT false,\n"
         "  PRIMARY KEY (" + List(f.grain) + "));\n";
  sql += "ALTER TABLE " + table + " ADD COLUMN IF NOT EXISTS is_deleted boolean NOT NULL DEFAULT false;\n";
  for (const auto& m : f.measures)
    sql += "ALTER TABLE " + table + " ADD COLUMN IF NOT EXISTS " + QuoteIdent(m.name) + " " + m.type + ";\n";
  for (const auto& k : NaturalKeys(f))
    sql += "ALTER TABLE " + table + " ADD COLUMN IF NOT EXISTS " + QuoteIdent(k) + " " +
           PgTypeName(ColumnOf(spec, f, k).type) + ";\n";
  sql += "CREATE INDEX IF NOT EXISTS " + QuoteIdent(f.name + "_date") + " ON " + table + " (date_key);\n";
  // A dimension build that moves a version's validity re-keys the facts pointing to it.
  for (const auto& ref : f.dimensions) {
    const std::string sk = spec.FindDimension(ref.dimension)->surrogate;
    sql += "CREATE INDEX IF NOT EXISTS " + QuoteIdent(f.name + "_" + sk + "_at") + " ON " + table + " (" + QuoteIdent(sk) +
           ", " + QuoteIdent(f.event_time) + ");\n";
  }
  return sql;
}

std::vector<std::string> FactStatements(const PipelineSpec& spec, const FactSpec& f) {
  const DatasetSpec& from = *spec.Find(f.from);
  const std::string table = "dwh." + QuoteIdent(f.name);
  const std::string affected = QuoteIdent("tmp_" + f.name + "_affected"), src = QuoteIdent("tmp_" + f.name + "_src"), dates = QuoteIdent("tmp_" + f.name + "_dates");
  const std::string grain = List(f.grain), ev = QuoteIdent(f.event_time);
  const bool merge = f.mode == "merge";
  std::vector<std::string> out;

  // 1. (merge) The grains to rebuild. Duplicates are harmless (every use is a semi-join) and
  //    cheaper than removing them from a million rows.
  if (merge) {
    std::string sql = "CREATE TEMP TABLE " + affected + " ON COMMIT DROP AS\nSELECT " + grain + " FROM staging." +
                      QuoteIdent(f.from) + " WHERE ds = $1";
    // The lines of headers staged today, when the header changed what their facts hold: its
    // event time or a dimension key (stored in the fact), or when no live fact has it yet (its
    // lines were staged before it). A status change alone rebuilds nothing. A measure that
    // reads a header column, or a soft-delete column on the header, makes every header staged
    // today count.
    for (const auto& j : f.joins) {
      const DatasetSpec& jd = *spec.Find(j.dataset);
      std::vector<std::string> used;
      bool measured = false;
      for (const auto& c : jd.columns) {
        if (from.ColumnIndex(c.name) >= 0) continue;  // the line's own column wins
        const bool keyed = std::find_if(f.dimensions.begin(), f.dimensions.end(),
                                        [&](const auto& r) { return r.key == c.name; }) != f.dimensions.end();
        if (c.name == f.event_time || keyed) used.push_back(c.name);
        for (const auto& m : f.measures) measured = measured || Names(m.sql, c.name);
        measured = measured || c.name == f.deleted;  // a soft-deleted header deletes its lines
      }
      std::string match, differs;
      for (const auto& c : j.on) match += std::string(match.empty() ? "" : " AND ") + "x." + QuoteIdent(c) + " = h." + QuoteIdent(c);
      for (const auto& c : used)
        differs += std::string(differs.empty() ? "" : " OR ") + "x." + QuoteIdent(c) + " IS DISTINCT FROM h." + QuoteIdent(c);
      const std::string changed =
          measured ? "" : "\n    AND (NOT EXISTS (SELECT 1 FROM " + table + " x WHERE " + match + " AND NOT x.is_deleted)" +
                              (differs.empty() ? "" : "\n         OR EXISTS (SELECT 1 FROM " + table + " x WHERE " + match +
                                                          " AND (" + differs + "))") + ")";
      sql += "\nUNION ALL SELECT " + List(f.grain, "s.") + " FROM staging." + QuoteIdent(f.from) + " s WHERE (" +
             List(j.on, "s.") + ") IN (\n  SELECT " + List(j.on, "h.") + " FROM staging." + QuoteIdent(j.dataset) +
             " h WHERE h.ds = $1" + changed + ")";
    }
    // Facts whose event falls where today's dimension build took validity from their version
    // (through the fact's (surrogate key, event time) index).
    for (const auto& ref : f.dimensions) {
      const DimensionSpec& dim = *spec.FindDimension(ref.dimension);
      sql += "\nUNION ALL SELECT " + List(f.grain, "x.") + " FROM " + QuoteIdent("tmp_" + dim.name + "_rekey") + " r JOIN " +
             table + " x ON x." + QuoteIdent(dim.surrogate) + " = r.sk AND x." + ev + " >= r.lo AND x." + ev + " < r.hi";
    }
    // (snapshot `from`) Live facts whose grain today's non-empty snapshot lacks.
    if (from.source.incremental == "snapshot") {
      std::string match;
      for (const auto& g : f.grain) match += " AND s." + QuoteIdent(g) + " = x." + QuoteIdent(g);
      const std::string staging = "staging." + QuoteIdent(f.from);
      sql += "\nUNION ALL SELECT " + List(f.grain, "x.") + " FROM " + table + " x WHERE NOT x.is_deleted AND EXISTS (SELECT 1 FROM " +
             staging + " WHERE ds = $1) AND NOT EXISTS (SELECT 1 FROM " + staging + " s WHERE s.ds = $1" + match + ")";
    }
    // Rows deleted in the source (CDC tombstones) whose facts are still live.
    for (const auto& del : FactDeletionSources(spec, f)) {
      if (!Contains(f.grain, del.key)) continue;  // a header key outside the grain: its lines carry their own tombstones
      std::string match;
      for (const auto& c : del.key) match += std::string(match.empty() ? "" : " AND ") + "x." + QuoteIdent(c) + " = r." + QuoteIdent(c);
      sql += "\n-- deleted in the source\nUNION ALL SELECT " + List(f.grain, "x.") + " FROM raw." +
             QuoteIdent(del.dataset + "_current") + " r JOIN " + table + " x ON " + match +
             " WHERE r._deleted AND NOT x.is_deleted";
    }
    out.push_back(sql);
    // Temp tables are never auto-analyzed; without statistics the planner guesses their size
    // and picks nested loops over a million rows.
    out.push_back("ANALYZE " + affected);
  }

  // 2. The fact's columns: the latest version per grain joined to the latest version of each
  //    header, measures computed over that row (one pass, only the columns the fact needs kept).
  {
    std::vector<std::string> have;
    for (const auto& c : from.columns) have.push_back(c.name);
    std::string ctes = "base AS (\n  SELECT DISTINCT ON (" + List(f.grain, "s.") + ") " + List(have, "s.") +
                       " FROM staging." + QuoteIdent(f.from) + " s\n" +
                       (merge ? "  WHERE (" + List(f.grain, "s.") + ") IN (SELECT " + grain + " FROM " + affected + ")\n" : "") +
                       "  ORDER BY " + LatestOrder(from, f.grain, "s") + ")";
    std::string select = "SELECT base.*", join_sql;
    for (size_t i = 0; i < f.joins.size(); ++i) {
      const auto& j = f.joins[i];
      const DatasetSpec& jd = *spec.Find(j.dataset);
      std::vector<std::string> jcols;
      for (const auto& c : jd.columns) jcols.push_back(c.name);
      const std::string alias = "j" + std::to_string(i);
      ctes += ",\n" + alias + " AS (\n  SELECT DISTINCT ON (" + List(j.on, "s.") + ") " + List(jcols, "s.") +
              " FROM staging." + QuoteIdent(j.dataset) + " s\n  WHERE (" + List(j.on, "s.") + ") IN (SELECT " + List(j.on) +
              " FROM base)\n  ORDER BY " + LatestOrder(jd, j.on, "s") + ")";
      for (const auto& c : jcols)
        if (std::find(have.begin(), have.end(), c) == have.end()) {
          select += ", " + alias + "." + QuoteIdent(c);
          have.push_back(c);
        }
      join_sql += " JOIN " + alias + " USING (" + List(j.on) + ")";
    }
    std::vector<std::string> cols = f.grain;
    for (const std::string& c : std::vector<std::string>{f.event_time})
      if (std::find(cols.begin(), cols.end(), c) == cols.end()) cols.push_back(c);
    for (const auto& ref : f.dimensions)
      if (std::find(cols.begin(), cols.end(), ref.key) == cols.end()) cols.push_back(ref.key);
    std::string deleted;
    for (const auto& del : FactDeletionSources(spec, f)) deleted += std::string(deleted.empty() ? "" : " OR ") + Tombstone(del.dataset, del.key, "r");
    if (!f.deleted.empty())
      deleted += std::string(deleted.empty() ? "" : " OR ") +
                 (ColumnOf(spec, f, f.deleted).type == ColumnType::kBool ? "coalesce(r." + QuoteIdent(f.deleted) + ", false)"
                                                                         : "r." + QuoteIdent(f.deleted) + " IS NOT NULL");
    if (from.source.incremental == "snapshot") {
      // Gone from the latest snapshot (the source as it is now, whichever day is built).
      std::string match;
      for (const auto& g : f.grain) match += " AND l." + QuoteIdent(g) + " = r." + QuoteIdent(g);
      const std::string staging = "staging." + QuoteIdent(f.from);
      deleted += std::string(deleted.empty() ? "" : " OR ") + "NOT EXISTS (SELECT 1 FROM " + staging +
                 " l WHERE l.ds = (SELECT max(ds) FROM " + staging + ")" + match + ")";
    }
    std::string sql = "CREATE TEMP TABLE " + src + " ON COMMIT DROP AS\nWITH " + ctes + "\nSELECT " + List(cols) + ", " +
                      (deleted.empty() ? "false" : deleted) + " AS _deleted";
    for (size_t i = 0; i < f.measures.size(); ++i)
      sql += ",\n  (" + f.measures[i].sql + ")::" + f.measures[i].type + " AS m" + std::to_string(i);
    sql += "\nFROM (" + select + " FROM base" + join_sql + ") r";
    if (!merge) sql += " WHERE " + DateKey(ev) + " = to_char($1::date, 'YYYYMMDD')::int";
    out.push_back(sql);
    out.push_back("ANALYZE " + src);
  }
  if (!merge) {
    out.push_back("CREATE TEMP TABLE " + affected + " ON COMMIT DROP AS\nSELECT " + grain + " FROM " + src +
                  "\nUNION SELECT " + grain + " FROM " + table + " WHERE date_key = to_char($1::date, 'YYYYMMDD')::int");
    out.push_back("ANALYZE " + affected);
  }

  // 4. Dates touched before the change (a fact may move to another date).
  out.push_back("CREATE TEMP TABLE " + dates + " ON COMMIT DROP AS\nSELECT DISTINCT date_key FROM " + table + " WHERE (" +
                grain + ") IN (SELECT " + grain + " FROM " + affected + ")\nUNION SELECT to_char($1::date, 'YYYYMMDD')::int");

  // 5. Early-arriving facts: unseen natural keys become inferred members.
  for (const auto& ref : f.dimensions)
    out.push_back(InferredMembersSql(*spec.FindDimension(ref.dimension), "SELECT " + QuoteIdent(ref.key) + " FROM " + src));

  // 6. (replace) The day's slice loses rows no longer on it.
  if (!merge)
    out.push_back("DELETE FROM " + table + " WHERE date_key = to_char($1::date, 'YYYYMMDD')::int AND (" + grain +
                  ") NOT IN (SELECT " + grain + " FROM " + src + (f.on_delete == "delete" ? " WHERE NOT _deleted" : "") + ")");
  // 6b. Rows deleted in the source leave the fact (policy delete); policy flag keeps them below.
  if (f.on_delete == "delete" && (!FactDeletionSources(spec, f).empty() || !f.deleted.empty() ||
                                  from.source.incremental == "snapshot"))
    out.push_back("DELETE FROM " + table + " WHERE (" + grain + ") IN (SELECT " + grain + " FROM " + src + " WHERE _deleted)");

  // 7. Merge by grain, keyed to the dimension versions valid at the event.
  {
    std::vector<std::string> target = f.grain, values;
    for (const auto& g : f.grain) values.push_back("s." + QuoteIdent(g));
    std::vector<std::string> updated{"date_key"};
    target.push_back("date_key");
    values.push_back(DateKey("s." + ev));
    std::string joins;
    for (size_t i = 0; i < f.dimensions.size(); ++i) {
      const DimensionSpec& dim = *spec.FindDimension(f.dimensions[i].dimension);
      const std::string d = "d" + std::to_string(i);
      target.push_back(dim.surrogate);
      updated.push_back(dim.surrogate);
      values.push_back("coalesce(" + d + "." + QuoteIdent(dim.surrogate) + ", 0)");
      joins += "\nLEFT JOIN dwh." + QuoteIdent(dim.name) + " " + d + " ON " + d + "." + QuoteIdent(dim.key) + " = s." +
               QuoteIdent(f.dimensions[i].key) + " AND s." + ev + " >= " + d + ".valid_from AND s." + ev + " < " + d +
               ".valid_to";
    }
    for (size_t i = 0; i < f.measures.size(); ++i) {
      target.push_back(f.measures[i].name);
      updated.push_back(f.measures[i].name);
      values.push_back("s.m" + std::to_string(i));
    }
    for (const auto& k : NaturalKeys(f)) {
      target.push_back(k);
      updated.push_back(k);
      values.push_back("s." + QuoteIdent(k));
    }
    target.push_back(f.event_time);
    updated.push_back(f.event_time);
    values.push_back("s." + ev);
    target.push_back("is_deleted");
    updated.push_back("is_deleted");
    values.push_back("s._deleted");
    std::string vals, set, old_row, new_row;
    for (const auto& v : values) vals += (vals.empty() ? "" : ", ") + v;
    for (const auto& u : updated) {
      set += (set.empty() ? "" : ", ") + QuoteIdent(u) + " = EXCLUDED." + QuoteIdent(u);
      old_row += (old_row.empty() ? "" : ", ") + QuoteIdent(f.name) + "." + QuoteIdent(u);
      new_row += (new_row.empty() ? "" : ", ") + std::string("EXCLUDED.") + QuoteIdent(u);
    }
    out.push_back("INSERT INTO " + table + " (" + List(target) + ")\nSELECT " + vals + "\nFROM " + src + " s" + joins +
                  (f.on_delete == "delete" ? "\nWHERE NOT s._deleted" : "") + "\nORDER BY " + List(f.grain, "s.") + "\nON CONFLICT (" + grain + ") DO UPDATE SET " + set +
                  "\nWHERE (" + old_row + ") IS DISTINCT FROM (" + new_row + ")");
  }

  // 8. Dates touched after the change.
  out.push_back("INSERT INTO " + dates + " SELECT DISTINCT " + DateKey(ev) + " FROM " + src + " EXCEPT SELECT date_key FROM " +
                dates);
  return out;
}

}  // namespace strata::loader

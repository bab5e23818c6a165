#include "services/warehouse_loader/dimensions.h"

#include <functional>

#include "common/pg.h"

namespace strata::loader {
namespace {

std::string Join(const std::vector<std::string>& cols, const std::function<std::string(const std::string&)>& f,
                 const std::string& sep = ", ") {
  std::string out;
  for (const auto& c : cols) out += (out.empty() ? "" : sep) + f(c);
  return out;
}

struct Names {
  std::string table, staging, k, sk, e;
  std::vector<std::string> c2, c1, attrs;  // attrs = c2 then c1
  std::string deleted_expr;                // over staging alias s
  std::function<std::string(const std::string&)> type;
};

Names NamesOf(const DimensionSpec& dim, const DatasetSpec& from) {
  Names n;
  n.table = "dwh." + QuoteIdent(dim.name);
  n.staging = "staging." + QuoteIdent(from.name);
  n.k = QuoteIdent(dim.key);
  n.sk = QuoteIdent(dim.surrogate);
  n.e = QuoteIdent(dim.effective_from);
  for (const auto& c : dim.scd2) n.c2.push_back(QuoteIdent(c));
  for (const auto& c : dim.scd1) n.c1.push_back(QuoteIdent(c));
  n.attrs = n.c2;
  n.attrs.insert(n.attrs.end(), n.c1.begin(), n.c1.end());
  if (dim.deleted.empty()) {
    n.deleted_expr = "false";
  } else {
    const ColumnType t = from.columns[from.ColumnIndex(dim.deleted)].type;
    n.deleted_expr = t == ColumnType::kBool ? "coalesce(s." + QuoteIdent(dim.deleted) + ", false)"
                                            : "s." + QuoteIdent(dim.deleted) + " IS NOT NULL";
  }
  n.type = [&from](const std::string& quoted) {
    const std::string bare = quoted.substr(1, quoted.size() - 2);
    return std::string(PgTypeName(from.columns[from.ColumnIndex(bare)].type));
  };
  return n;
}

}  // namespace

std::string DimensionDdl(const DimensionSpec& dim, const DatasetSpec& from) {
  const Names n = NamesOf(dim, from);
  const std::string key_type = PgTypeName(from.columns[from.ColumnIndex(dim.key)].type);
  std::string sql = "CREATE TABLE IF NOT EXISTS " + n.table + " (\n  " + n.sk + " bigserial PRIMARY KEY,\n  " + n.k +
                    " " + key_type + " NOT NULL,\n";
  for (const auto& c : n.attrs) sql += "  " + c + " " + n.type(c) + ",\n";
  sql += R"(  valid_from timestamptz NOT NULL,
  valid_to timestamptz NOT NULL DEFAULT 'infinity',
  is_current boolean NOT NULL,
  version integer NOT NULL DEFAULT 1,
  is_deleted boolean NOT NULL DEFAULT false,
  is_inferred boolean NOT NULL DEFAULT false,
  attributes_as_of timestamptz,  -- business time of the observation the type-1 columns come from
  last_seen_ds date,             -- (snapshot datasets) the last snapshot day the key was in
  observed_from timestamptz,     -- business time of the observation that started the version
  CHECK (valid_from < valid_to),
  CHECK (is_current = (valid_to = 'infinity')),
  UNIQUE ()" + n.k + ", valid_from));\n";
  // Columns added to the spec later are added to the table (history before them stays NULL).
  for (const char* meta : {"version integer NOT NULL DEFAULT 1", "is_deleted boolean NOT NULL DEFAULT false",
                           "is_inferred boolean NOT NULL DEFAULT false", "attributes_as_of timestamptz", "last_seen_ds date",
                           "observed_from timestamptz"})
    sql += "ALTER TABLE " + n.table + " ADD COLUMN IF NOT EXISTS " + meta + ";\n";
  for (const auto& c : n.attrs) sql += "ALTER TABLE " + n.table + " ADD COLUMN IF NOT EXISTS " + c + " " + n.type(c) + ";\n";
  sql += "CREATE UNIQUE INDEX IF NOT EXISTS " + QuoteIdent(dim.name + "_one_current") + " ON " + n.table + " (" + n.k +
         ") WHERE is_current;\n";
  sql += "CREATE EXTENSION IF NOT EXISTS btree_gist;\n";
  sql += "DO $$ BEGIN\n  IF NOT EXISTS (SELECT 1 FROM pg_constraint WHERE conname = " + QuoteLiteral(dim.name + "_no_overlap") +
         ") THEN\n    ALTER TABLE " + n.table + " ADD CONSTRAINT " + QuoteIdent(dim.name + "_no_overlap") +
         " EXCLUDE USING gist (" + n.k + " WITH =, tstzrange(valid_from, valid_to) WITH &&);\n  END IF;\nEND $$;\n";
  // The unknown member: text attributes say so, the rest stay NULL.
  std::string cols = n.sk + ", " + n.k, vals = "0, " + (key_type == std::string("text") ? QuoteLiteral(dim.unknown_key)
                                                                                      : dim.unknown_key);
  for (const auto& c : n.attrs)
    if (n.type(c) == std::string("text")) cols += ", " + c, vals += ", 'unknown'";
  sql += "INSERT INTO " + n.table + " (" + cols + ", valid_from, valid_to, is_current) VALUES (" + vals +
         ", '-infinity', 'infinity', true) ON CONFLICT DO NOTHING;\n";
  return sql;
}

std::vector<std::string> DimensionStatements(const DimensionSpec& dim, const DatasetSpec& from, bool captured) {
  const Names n = NamesOf(dim, from);
  const std::string obs = QuoteIdent("tmp_" + dim.name + "_obs"), ver = QuoteIdent("tmp_" + dim.name + "_versions");
  auto nulls = [&](const std::string& c) { return "NULL::" + n.type(c); };
  const std::string attrs_s = n.attrs.empty() ? "" : ", " + Join(n.attrs, [](const std::string& c) { return "s." + c; });
  const std::string attrs_d = n.attrs.empty() ? "" : ", " + Join(n.attrs, [](const std::string& c) { return "d." + c; });
  const std::string attrs_null = n.attrs.empty() ? "" : ", " + Join(n.attrs, nulls);
  // What separates two versions: the type-2 columns and whether the key is deleted.
  const std::string signature =
      "ROW(" + Join(n.c2, [](const std::string& c) { return "CASE WHEN deleted THEN NULL ELSE " + c + " END"; }) +
      (n.c2.empty() ? "" : ", ") + "deleted)::text";
  const std::string history_cols = n.k + ", " + (n.attrs.empty() ? "" : Join(n.attrs, [](const std::string& c) { return c; }) + ", ") +
                                   "valid_from, valid_to, is_current, is_deleted, version, attributes_as_of, last_seen_ds, observed_from";
  const std::string v_cols = "v.k, " + (n.attrs.empty() ? "" : Join(n.attrs, [](const std::string& c) { return "v." + c; }) + ", ") +
                             "v.valid_from, v.valid_to, v.is_current, v.is_deleted, v.version, v.attributes_as_of, v.last_seen_ds, "
                             "v.observed_from";
  const std::string d_cols = "d." + n.k + ", " + (n.attrs.empty() ? "" : Join(n.attrs, [](const std::string& c) { return "d." + c; }) + ", ") +
                             "d.valid_from, d.valid_to, d.is_current, d.is_deleted, d.version, d.attributes_as_of, d.last_seen_ds, "
                             "d.observed_from";
  const std::string set_cols = (n.attrs.empty() ? "" : Join(n.attrs, [](const std::string& c) { return c + " = v." + c; }) + ", ") +
                               "valid_to = v.valid_to, is_current = v.is_current, is_deleted = v.is_deleted, "
                               "version = v.version, attributes_as_of = v.attributes_as_of, last_seen_ds = v.last_seen_ds, "
                               "observed_from = v.observed_from";

  std::vector<std::string> out;
  const std::string seen = QuoteIdent("tmp_" + dim.name + "_seen");
  std::string affected = "SELECT DISTINCT " + n.k + " FROM " + n.staging + " WHERE ds = $1 AND " + n.k + " IS NOT NULL";
  if (dim.absent_means_deleted) {
    // 0. (snapshot datasets) The keys staged today and the current keys today's snapshot lacks,
    //    each with the last snapshot day it was in (staged, or recorded by an earlier build: a
    //    re-extracted past day shows today's source, not that day's) and the first snapshot day
    //    after that: the key was deleted in the source by the end of it. An empty day is no
    //    snapshot and deletes nothing.
    out.push_back(
        "CREATE TEMP TABLE " + seen + " ON COMMIT DROP AS\n"
        "WITH keys AS (\n"
        "  " + affected + "\n"
        "  UNION SELECT d." + n.k + " FROM " + n.table + " d WHERE d.is_current AND d." + n.sk + " <> 0 AND NOT d.is_inferred\n"
        "    AND EXISTS (SELECT 1 FROM " + n.staging + " WHERE ds = $1)\n"
        "    AND NOT EXISTS (SELECT 1 FROM " + n.staging + " s WHERE s.ds = $1 AND s." + n.k + " = d." + n.k + ")),\n"
        "last AS (\n"
        "  SELECT k, max(day) AS last_seen FROM (\n"
        "    SELECT s." + n.k + " AS k, max(s.ds) AS day FROM " + n.staging + " s WHERE s." + n.k + " IN (SELECT " + n.k +
        " FROM keys) GROUP BY 1\n"
        "    UNION ALL SELECT d." + n.k + ", max(d.last_seen_ds) FROM " + n.table + " d WHERE d." + n.k + " IN (SELECT " + n.k +
        " FROM keys) AND d." + n.sk + " <> 0 GROUP BY 1) x\n"
        "  GROUP BY k)\n"
        // The first snapshot day after it: one probe of the ds index per key.
        "SELECT l.k, l.last_seen, (SELECT min(s.ds) FROM " + n.staging + " s WHERE s.ds > l.last_seen) AS gone_day FROM last l");
    affected = "SELECT k AS " + n.k + " FROM " + seen;
  }
  // 0b. (CDC-captured datasets) Keys deleted in the source whose current version is still live.
  std::string cdc_obs;
  if (captured) {
    const std::string changes = "raw." + QuoteIdent(from.name + "_changes"), current = "raw." + QuoteIdent(from.name + "_current");
    affected = "(" + affected + ")\n  UNION SELECT t." + n.k + " FROM " + current + " t JOIN " + n.table + " d ON d." + n.k +
               " = t." + n.k + " AND d.is_current AND NOT d.is_deleted AND NOT d.is_inferred AND d." + n.sk +
               " <> 0 WHERE t._deleted";
    // Every state the change stream saw of the affected keys (a daily extract sees only the
    // last of a day), and every delete, at its commit time (a deleted row has no business time).
    cdc_obs = ",\ncaptured AS (\n"
              "  SELECT s." + n.k + " AS k, s." + n.e + " AS t, " + n.deleted_expr + " AS deleted" + attrs_s + ", 0 AS precedence\n"
              "  FROM " + changes + " s WHERE s." + n.k + " IN (SELECT " + n.k + " FROM affected) AND s.op IN ('c', 'u', 'r')\n"
              "    AND s." + n.e + " IS NOT NULL\n"
              "  UNION ALL\n"
              "  SELECT s." + n.k + ", s.commit_time, true" + attrs_null + ", 0 FROM " + changes + " s\n"
              "  WHERE s." + n.k + " IN (SELECT " + n.k + " FROM affected) AND s.op = 'd')";
  }
  // 1. Observations of the keys staged on ds: every staged state (the latest load wins for one
  //    instant), the versions already held, the deletions already recorded, (snapshot datasets)
  //    the deletions absent keys mean, and (CDC) every captured change.
  out.push_back("CREATE TEMP TABLE " + obs + " ON COMMIT DROP AS\n"
                "WITH affected AS (" + affected + "),\n"
                "staged AS (\n"
                "  SELECT DISTINCT ON (s." + n.k + ", s." + n.e + ") s." + n.k + " AS k, s." + n.e + " AS t, " +
                n.deleted_expr + " AS deleted" + attrs_s + ", 0 AS precedence\n"
                "  FROM " + n.staging + " s WHERE s." + n.k + " IN (SELECT " + n.k + " FROM affected) AND s." + n.e + " IS NOT NULL\n"
                "  ORDER BY s." + n.k + ", s." + n.e + ", s.ds DESC, s.run_id DESC, s::text),\n"
                "known AS (\n"
                "  SELECT d." + n.k + ", coalesce(d.observed_from, d.valid_from), false" + attrs_d + ", 1 FROM " + n.table + " d\n"
                "  WHERE d." + n.k + " IN (SELECT " + n.k + " FROM affected) AND d." + n.sk + " <> 0 AND NOT d.is_inferred\n"
                "  UNION ALL\n"
                "  SELECT d." + n.k + ", d.valid_to, true" + attrs_null + ", 1 FROM " + n.table + " d\n"
                "  WHERE d." + n.k + " IN (SELECT " + n.k + " FROM affected) AND d." + n.sk + " <> 0 AND d.is_deleted AND NOT d.is_inferred" +
                (dim.absent_means_deleted ? "\n  UNION ALL\n  SELECT g.k, (g.gone_day + 1)::timestamptz, true" + attrs_null +
                                                ", 2 FROM " + seen + " g WHERE g.gone_day IS NOT NULL"
                                          : "") +
                ")" + cdc_obs + "\n"
                "SELECT DISTINCT ON (k, t) * FROM (SELECT * FROM staged UNION ALL SELECT * FROM known" +
                (captured ? " UNION ALL SELECT * FROM captured" : "") + ") u\n"
                "ORDER BY k, t, precedence");
  out.push_back("ANALYZE " + obs);  // temp tables are never auto-analyzed

  // 2. The derived history: a version starts where the signature changes and lasts until the
  //    next start; a start that is a deletion ends the version before it and is no version.
  std::string t1_cols = n.c1.empty() ? "" : ", " + Join(n.c1, [](const std::string& c) { return "t1." + c; });
  std::string c2_cols = n.c2.empty() ? "" : ", " + Join(n.c2, [](const std::string& c) { return "sp." + c; });
  std::string c1_only = n.c1.empty() ? "" : ", " + Join(n.c1, [](const std::string& c) { return c; });
  std::string c2_only = n.c2.empty() ? "" : ", " + Join(n.c2, [](const std::string& c) { return c; });
  std::string c1_d = n.c1.empty() ? "" : ", " + Join(n.c1, [](const std::string& c) { return "d." + c; });
  out.push_back("CREATE TEMP TABLE " + ver + " ON COMMIT DROP AS\n"
                "WITH marked AS (\n"
                "  SELECT o.*, lag(" + signature + ") OVER w AS prev_sig, " + signature + " AS sig,\n"
                "         row_number() OVER w AS n FROM " + obs + " o WINDOW w AS (PARTITION BY k ORDER BY t)),\n"
                "spans AS (\n"
                "  SELECT m.*, lead(t) OVER w AS next_t, lead(deleted) OVER w AS next_deleted\n"
                "  FROM marked m WHERE n = 1 OR sig IS DISTINCT FROM prev_sig WINDOW w AS (PARTITION BY k ORDER BY t)),\n"
                // Type-1 values: from the latest live observation, staged or already applied.
                "t1 AS (\n"
                "  SELECT DISTINCT ON (k) k, t AS as_of" + c1_only + " FROM (\n"
                "    SELECT k, t" + c1_only + ", precedence FROM " + obs + " WHERE NOT deleted AND precedence = 0\n"
                "    UNION ALL\n"
                "    SELECT d." + n.k + ", d.attributes_as_of" + c1_d + ", 1 FROM " + n.table + " d\n"
                "    WHERE d." + n.k + " IN (SELECT k FROM " + obs + ") AND d." + n.sk + " <> 0 AND NOT d.is_inferred) x\n"
                "  ORDER BY k, t DESC NULLS LAST, precedence)\n"
                "SELECT k" + c2_only + c1_only + ",\n"
                // The first version also covers the time before the first observation: the
                // source kept only its current row, so whatever happened before is unknown and
                // the earliest known state is the best attribution for facts from then.
                "       CASE WHEN version = 1 THEN '-infinity'::timestamptz ELSE observed_from END AS valid_from,\n"
                "       valid_to, is_current, is_deleted, version, attributes_as_of, last_seen_ds, observed_from\n"
                "FROM (\n"
                "SELECT sp.k" + c2_cols + t1_cols + ", sp.t AS observed_from,\n"
                "       coalesce(sp.next_t, 'infinity'::timestamptz) AS valid_to, sp.next_t IS NULL AS is_current,\n"
                "       coalesce(sp.next_deleted, false) AS is_deleted,\n"
                "       (row_number() OVER (PARTITION BY sp.k ORDER BY sp.t))::int AS version, t1.as_of AS attributes_as_of,\n"
                "       " + (dim.absent_means_deleted ? "g.last_seen" : "NULL::date") + " AS last_seen_ds\n"
                "FROM spans sp LEFT JOIN t1 USING (k)" + (dim.absent_means_deleted ? " LEFT JOIN " + seen + " g USING (k)" : "") +
                " WHERE NOT sp.deleted) h");
  out.push_back("ANALYZE " + ver);

  // 2b. Where validity is lost: for every version held of a key staged today, the part of its
  //     interval that the derived history no longer gives it — all of it when the version goes,
  //     [new valid_to, old valid_to) when it shrinks. Facts point to the version that covered
  //     their event, so exactly the facts of (sk, event in [lo, hi)) need another version; a
  //     version that grows or keeps its interval (type-1 updates, completed inferred members)
  //     moves no fact. A fact build finds them through its (surrogate key, event time) index:
  //     a customer who moves today re-keys today's facts after the move, not their history.
  const std::string rekey = QuoteIdent("tmp_" + dim.name + "_rekey");
  out.push_back("CREATE TEMP TABLE " + rekey + " ON COMMIT DROP AS\n"
                "SELECT d." + n.sk + " AS sk, CASE WHEN v.k IS NULL THEN d.valid_from ELSE v.valid_to END AS lo, d.valid_to AS hi\n"
                "FROM " + n.table + " d LEFT JOIN " + ver + " v ON v.k = d." + n.k + " AND v.valid_from = d.valid_from\n"
                "WHERE d." + n.k + " IN (SELECT k FROM " + obs + ") AND d." + n.sk + " <> 0\n"
                "  AND (v.k IS NULL OR v.valid_to < d.valid_to)");
  out.push_back("ANALYZE " + rekey);
  // 3. An inferred member becomes the key's first version, keeping its surrogate key.
  out.push_back("UPDATE " + n.table + " d SET " + set_cols + ", valid_from = v.valid_from, is_inferred = false\n"
                "FROM " + ver + " v WHERE d.is_inferred AND d." + n.k + " = v.k AND v.version = 1");
  // 3b. (snapshot datasets) A member known only from facts that today's snapshot lacks is gone
  //     from the source: still the key's only attribution (valid throughout, since when it was
  //     deleted is unknown), flagged deleted. Its completion, if the key comes back, clears it.
  if (dim.absent_means_deleted)
    out.push_back("UPDATE " + n.table + " d SET is_deleted = true WHERE d.is_inferred AND NOT d.is_deleted\n"
                  "  AND EXISTS (SELECT 1 FROM " + n.staging + " WHERE ds = $1)\n"
                  "  AND NOT EXISTS (SELECT 1 FROM " + n.staging + " s WHERE s.ds = $1 AND s." + n.k + " = d." + n.k + ")");
  // 4. Versions that are no longer versions (a late change moved the start of the interval).
  out.push_back("DELETE FROM " + n.table + " d WHERE d." + n.k + " IN (SELECT k FROM " + obs + ") AND d." + n.sk +
                " <> 0 AND NOT d.is_inferred\n"
                "  AND NOT EXISTS (SELECT 1 FROM " + ver + " v WHERE v.k = d." + n.k + " AND v.valid_from = d.valid_from)");
  // 5./6. Updates: intervals that shrink (and stop being current) first, then those that grow,
  //       so no statement ever holds two current rows or two overlapping intervals.
  for (const char* cmp : {"<=", ">"}) {
    out.push_back("UPDATE " + n.table + " d SET " + set_cols + "\nFROM " + ver + " v\n"
                  "WHERE v.k = d." + n.k + " AND v.valid_from = d.valid_from AND v.valid_to " + cmp + " d.valid_to\n"
                  "  AND (" + d_cols + ") IS DISTINCT FROM (" + v_cols + ")");
  }
  // 7. New versions, in key and time order so surrogate keys are assigned deterministically.
  out.push_back("INSERT INTO " + n.table + " (" + history_cols + ")\n"
                "SELECT " + v_cols + " FROM " + ver + " v\n"
                "WHERE NOT EXISTS (SELECT 1 FROM " + n.table + " d WHERE d." + n.k + " = v.k AND d.valid_from = v.valid_from)\n"
                "ORDER BY v.k, v.valid_from");
  return out;
}

std::string InferredMembersSql(const DimensionSpec& dim, const std::string& keys_query) {
  const std::string table = "dwh." + QuoteIdent(dim.name), k = QuoteIdent(dim.key);
  // (snapshot datasets) A key that no staged snapshot ever held was deleted before strata
  // extracted it: flagged at once (catalogue-sized staging, so the lookup is cheap).
  const std::string staging = "staging." + QuoteIdent(dim.from);
  const std::string deleted =
      dim.absent_means_deleted ? "EXISTS (SELECT 1 FROM " + staging + ") AND NOT EXISTS (SELECT 1 FROM " + staging +
                                     " s WHERE s." + k + " = q.key)"
                               : "false";
  return "INSERT INTO " + table + " (" + k + ", valid_from, valid_to, is_current, is_inferred, is_deleted)\n"
         "SELECT DISTINCT q.key, '-infinity'::timestamptz, 'infinity'::timestamptz, true, true, " + deleted + "\n"
         "FROM (" + keys_query + ") q(key)\n"
         "WHERE q.key IS NOT NULL AND NOT EXISTS (SELECT 1 FROM " + table + " d WHERE d." + k + " = q.key)\n"
         "ORDER BY 1";
}

}  // namespace strata::loader

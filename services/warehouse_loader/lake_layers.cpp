#include "services/warehouse_loader/lake_layers.h"

#include "common/errors.h"
#include "common/lake.h"
#include "common/pg.h"
#include "common/time_util.h"

namespace strata::loader {

namespace {

// The canonical text the Parquet writer parses, per column type.
std::string SelectExpr(const std::string& col, ColumnType t) {
  switch (t) {
    case ColumnType::kTimestamp: return "to_char(" + col + " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')";
    case ColumnType::kBool: return "CASE WHEN " + col + " THEN 'true' WHEN NOT " + col + " THEN 'false' END";
    case ColumnType::kFloat: return col + "::double precision::text";  // shortest exact text
    default: return col + "::text";
  }
}

ColumnType FromPg(const std::string& pg_type) {
  if (pg_type == "bigint" || pg_type == "integer" || pg_type == "smallint") return ColumnType::kInt;
  if (pg_type == "numeric" || pg_type == "double precision" || pg_type == "real") return ColumnType::kFloat;
  if (pg_type == "date") return ColumnType::kDate;
  if (pg_type == "boolean") return ColumnType::kBool;
  if (pg_type.rfind("timestamp", 0) == 0) return ColumnType::kTimestamp;
  return ColumnType::kText;
}

// The select with its $1 replaced by a quoted literal (cursor declarations take no parameters).
std::string Substitute(std::string sql, const std::string& literal) {
  for (size_t p = sql.find("$1"); p != std::string::npos; p = sql.find("$1", p + literal.size())) sql.replace(p, 2, literal);
  return sql;
}

long long WritePartition(pqxx::transaction_base& tx, LakeStore& lake, const std::string& layer,
                         const std::string& name, const std::string& ds, const std::string& run_id,
                         const std::vector<ParquetColumn>& cols, const std::string& select, ParquetCodec codec,
                         long long publish_version = 0) {
  // Rows stream from a server-side cursor into row groups on disk: memory holds one row group,
  // whatever the partition's size.
  const std::string dir = PartitionKey(layer, name, ds);
  const std::string part = "run=" + run_id + "/part-00000.parquet";
  const std::unique_ptr<ObjectWriter> file = lake.Create(dir + "/" + part);
  ParquetWriter writer(cols, codec, [&file](const std::string& b) { file->Write(b.data(), b.size()); }, 50000);
  tx.exec("DECLARE strata_layer NO SCROLL CURSOR FOR " + Substitute(select, tx.quote(ds)));
  for (;;) {
    const pqxx::result r = tx.exec("FETCH 10000 FROM strata_layer");
    if (r.empty()) break;
    for (const auto& row : r) {
      ParquetRow out(cols.size());
      for (size_t i = 0; i < cols.size(); ++i)
        if (!row[static_cast<int>(i)].is_null()) out[i] = std::string(row[static_cast<int>(i)].c_str());
      writer.Add(std::move(out));
    }
  }
  tx.exec("CLOSE strata_layer");
  writer.Finish();
  file->Commit();
  Manifest m;
  m.dataset = name;
  m.ds = ds;
  m.run_id = run_id;
  m.layer = layer;
  m.format = "parquet";
  for (const auto& c : cols) m.columns.push_back(c.name);
  m.files.push_back({part, writer.rows(), file->bytes(), file->crc32()});
  m.rows = writer.rows();
  m.committed_at = NowIso();
  m.publish_version = publish_version;
  lake.Put(ManifestPath(dir), ManifestToJson(m));
  RemoveOtherRuns(lake, dir, run_id, /*older_only=*/false);
  return m.rows;
}

}  // namespace

long long ExportSilver(pqxx::transaction_base& tx, LakeStore& lake, const DatasetSpec& d,
                       const std::string& ds, const std::string& run_id, ParquetCodec codec) {
  std::vector<ParquetColumn> cols;
  std::string select;
  for (const auto& c : d.columns) {
    cols.push_back({c.name, c.type});
    select += (select.empty() ? "" : ", ") + SelectExpr(QuoteIdent(c.name), c.type);
  }
  std::string keys;
  for (const auto& k : d.key) keys += (keys.empty() ? "" : ", ") + QuoteIdent(k);
  const std::string cursor = d.source.type == "postgres" ? d.source.cursor : d.source.since_field;
  std::string sql = "SELECT " + select + " FROM staging." + QuoteIdent(d.name) + " WHERE ds = $1";
  if (!keys.empty()) {
    // One row per key: the latest version by the cursor when there is one.
    sql = "SELECT DISTINCT ON (" + keys + ") " + select + " FROM staging." + QuoteIdent(d.name) + " WHERE ds = $1 ORDER BY " +
          keys + (cursor.empty() ? "" : ", " + QuoteIdent(cursor) + " DESC NULLS LAST");
  }
  return WritePartition(tx, lake, "silver", d.name, ds, run_id, cols, sql, codec);
}

std::vector<std::string> GoldMarts(pqxx::transaction_base& tx) {
  std::vector<std::string> out;
  for (const auto& t : tx.exec(
           "SELECT t.table_name FROM information_schema.tables t WHERE t.table_schema = 'serving' "
           "AND t.table_type = 'BASE TABLE' AND EXISTS (SELECT 1 FROM information_schema.columns c WHERE "
           "c.table_schema = 'serving' AND c.table_name = t.table_name AND c.column_name = 'ds') ORDER BY 1"))
    out.push_back(t[0].c_str());
  return out;
}

long long ExportGold(pqxx::transaction_base& tx, LakeStore& lake, const std::string& mart, const std::string& ds,
                     const std::string& run_id, long long publish_version, ParquetCodec codec) {
  std::vector<ParquetColumn> cols;
  std::string select;
  for (const auto& c : tx.exec_params("SELECT column_name::text, data_type::text FROM information_schema.columns "
                                      "WHERE table_schema = 'serving' AND table_name = $1 ORDER BY ordinal_position",
                                      mart)) {
    cols.push_back({c[0].c_str(), FromPg(c[1].c_str())});
    select += (select.empty() ? "" : ", ") + SelectExpr(QuoteIdent(c[0].c_str()), cols.back().type);
  }
  if (cols.empty()) throw InputError("serving." + mart + " does not exist");
  const long long rows = WritePartition(tx, lake, "gold", mart, ds, run_id, cols,
                                        "SELECT " + select + " FROM serving." + QuoteIdent(mart) + " WHERE ds = $1 ORDER BY 1, 2",
                                        codec, publish_version);
  // What a reader of the lake will see: the committed manifest, read back from the store.
  const auto m = ReadManifest(lake, PartitionKey("gold", mart, ds));
  const long long serving =
      tx.exec_params("SELECT count(*) FROM serving." + QuoteIdent(mart) + " WHERE ds = $1", ds)[0][0].as<long long>();
  if (!m || m->publish_version != publish_version || m->rows != serving || rows != serving)
    throw InputError("gold partition " + lake.Where(PartitionKey("gold", mart, ds)) + " does not match serving: manifest " +
                     (m ? "publish_version " + std::to_string(m->publish_version) + ", " + std::to_string(m->rows) + " rows"
                        : "missing") +
                     "; serving publication " + std::to_string(publish_version) + ", " + std::to_string(serving) + " rows");
  return rows;
}

}  // namespace strata::loader

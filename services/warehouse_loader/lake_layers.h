// The lake's silver and gold layers, written by the warehouse-loader as Parquet partitions:
//   silver/<dataset>/dt=<ds>/   the day's staged rows, typed, one row per key (the latest by the
//                               dataset's cursor), for datasets with `silver:` in the spec
//   gold/<mart>/dt=<ds>/        the day's rows of every mart with a `ds` column, after publish
// Each partition is one run directory plus a manifest committed last, exactly like bronze
// (common/lake.h), on the local or S3 lake (common/lake_store.h): a reader sees the previous partition or the new one; re-exporting a
// date replaces it, and older run directories are removed once the new manifest is durable.
#pragma once
#include <pqxx/pqxx>
#include <string>
#include <vector>

#include "common/lake_store.h"
#include "common/parquet.h"
#include "common/spec.h"

namespace strata::loader {

// Writes silver/<d>/dt=<ds>/ from staging (inside `tx`, so it sees what the load committed).
// Returns the rows written.
long long ExportSilver(pqxx::transaction_base& tx, LakeStore& lake, const DatasetSpec& d,
                       const std::string& ds, const std::string& run_id, ParquetCodec codec);

// The serving tables with a ds column: the marts that have a gold layer.
std::vector<std::string> GoldMarts(pqxx::transaction_base& tx);

// Writes gold/<mart>/dt=<ds>/ from serving.<mart> as `tx` sees it, its manifest naming
// `publish_version` (the publication that snapshot holds), then reads the manifest back from
// the store and throws unless it names that version and the rows serving has for the day.
// Returns the rows written.
long long ExportGold(pqxx::transaction_base& tx, LakeStore& lake, const std::string& mart, const std::string& ds,
                     const std::string& run_id, long long publish_version, ParquetCodec codec);

}  // namespace strata::loader

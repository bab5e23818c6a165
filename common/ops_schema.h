// The ops tables more than one service writes, defined once: the loader creates them with the
// warehouse, and ingest (which may start first) runs the same idempotent DDL before it uses them.
//   ops.watermarks      (pipeline, dataset) -> the largest (cursor, key) loaded; the loader writes it
//   ops.schema_columns  columns a source grew (schema_drift: add_column); ingest writes, loader stages
//   ops.cdc_state       per replication slot: acked LSN (ingest) and applied LSN (loader)
#pragma once
#include <string>

namespace strata {

const std::string& SharedOpsDdl();

}  // namespace strata

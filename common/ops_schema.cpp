#include "common/ops_schema.h"

namespace strata {

const std::string& SharedOpsDdl() {
  static const std::string kDdl = R"SQL(
CREATE SCHEMA IF NOT EXISTS ops;

-- Written with the staging load, so a crash anywhere before it replays rows instead of skipping them.
CREATE TABLE IF NOT EXISTS ops.watermarks (
  pipeline text NOT NULL,
  dataset text NOT NULL,
  watermark jsonb NOT NULL,
  ds date NOT NULL,
  run_id text NOT NULL,
  updated_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (pipeline, dataset));

CREATE TABLE IF NOT EXISTS ops.schema_columns (
  pipeline text NOT NULL,
  dataset text NOT NULL,
  column_name text NOT NULL,
  added_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (pipeline, dataset, column_name));

CREATE TABLE IF NOT EXISTS ops.cdc_state (
  slot text PRIMARY KEY,
  acked_lsn pg_lsn NOT NULL,
  applied_lsn pg_lsn NOT NULL DEFAULT '0/0',
  snapshot_done boolean NOT NULL DEFAULT false,
  created_at timestamptz NOT NULL DEFAULT now(),
  applied_at timestamptz,
  last_commit_at timestamptz);
)SQL";
  return kDdl;
}

}  // namespace strata

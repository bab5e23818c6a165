// The pipeline spec (pipelines/*.yaml): datasets with their sources, keys and typed columns,
// the models to build and the checks to run. Parsing validates everything up front and throws
// InputError naming the file and key path ("pipelines/demo/pipeline.yaml: datasets[2].columns.rating:
// unknown type 'decimal'").
#pragma once
#include <map>
#include <string>
#include <vector>

#include "common/endpoint.h"
#include "common/migration.h"
#include "common/sql_model.h"

namespace strata {

enum class ColumnType { kInt, kFloat, kText, kTimestamp, kDate, kBool };

const char* ColumnTypeName(ColumnType t);
// The PostgreSQL type a column of this type is staged as.
const char* PgTypeName(ColumnType t);

struct Column {
  std::string name;
  ColumnType type = ColumnType::kText;
  std::string header;  // html_table / census: the header text that maps to this column
};

// How an HTTP JSON API splits a listing into pages.
//   page:   ?<page_param>=1,2,... until <total_pages_field> (or an empty page)
//   offset: ?<offset_param>=0,L,2L,...&<limit_param>=L until a short page (or <total_field>)
//   cursor: ?<cursor_param>=<token from the previous body's <cursor_field>> until it is null
//   link:   follow the response's `Link: <...>; rel="next"` header until there is none
//   none:   a single request
struct PaginationSpec {
  std::string style = "page";
  std::string page_param = "page";
  std::string total_pages_field = "total_pages";
  std::string offset_param = "offset";
  std::string limit_param = "limit";
  int limit = 100;
  std::string cursor_param = "cursor";
  std::string cursor_field = "next_cursor";
  // When the body names the listing's record count here, fewer distinct keys than that after
  // the last page means rows shifted between pages: the listing is read again (bounded).
  std::string total_field = "total";
};

// Credentials come from the environment variable `env`, never from the spec, and never appear
// in logs or error messages.
struct AuthSpec {
  std::string type;  // "" (none) | bearer | header
  std::string env;
  std::string header = "Authorization";  // header: the header that carries the key
};

struct SourceSpec {
  std::string type;  // postgres | http_json | html_table
  // postgres: incremental extraction of rows whose `cursor` falls within the logical day
  // (incremental: interval), or after the stored (cursor, key) watermark (incremental: watermark).
  std::string table;
  std::string cursor;
  // postgres: interval | watermark | snapshot (the whole table with COPY ... TO STDOUT in one
  // repeatable-read snapshot, every run)
  std::string incremental = "interval";
  // postgres: split the extraction into this many key-hash shards that any ingest worker may
  // take from strata:extract, all reading one exported snapshot.
  int shards = 1;
  // http_json: GET <source_http><path>, records under `records` (empty: the body is the array).
  std::string path;
  std::string date_param;  // by logical date: ?<date_param>=<ds>
  // by cursor: ?<since_param>=<watermark - overlap>, where the watermark is the largest
  // (since_field, key) extracted by an earlier run whose partition reached the warehouse.
  std::string since_param;
  std::string since_field;
  int overlap_seconds = 0;
  std::string records = "records";
  std::string format = "objects";  // objects | census (array of arrays, header row first)
  std::map<std::string, std::string> params;  // fixed query parameters
  PaginationSpec pagination;
  AuthSpec auth;
  double rate_limit_rps = 0;  // 0: unlimited; requests per second (token bucket)
  int rate_limit_burst = 1;
  long timeout_ms = 10000;
  int max_attempts = 5;
  // A field that appears or vanishes: ignore (record it), add_column (stage it as text), fail.
  std::string schema_drift = "ignore";
  // html_table: the <table id=...> on the page at `path`.
  std::string table_id;
};

struct DatasetSpec {
  std::string name;
  SourceSpec source;
  std::vector<std::string> key;
  std::vector<Column> columns;
  // When set (none | snappy | zstd), each loaded day is also written to the lake's silver layer
  // as Parquet with this compression: typed, one row per key.
  std::string silver;
  // Bronze part files: csv | ndjson, compressed none | gzip | zstd.
  std::string bronze_format = "csv";
  std::string bronze_compression = "none";
  int ColumnIndex(const std::string& name) const;  // -1 if absent
  // The column that orders versions of a row (postgres cursor / HTTP since_field); may be empty.
  std::string CursorColumn() const { return source.type == "postgres" ? source.cursor : source.since_field; }
};

struct CheckSpec {
  std::string name;
  // not_null | unique | relationships | accepted_values | range | freshness | volume_anomaly |
  // custom_sql | reconciliation | dead_letters
  std::string kind;
  std::string severity;  // error | warn
  std::string table;
  std::vector<std::string> columns;
  std::string to_table;   // relationships; reconciliation: the fact table counted per ds
  std::string to_column;  // relationships; reconciliation: the fact's date (or date_key) column
  std::vector<std::string> values;  // accepted_values
  std::string min, max;             // range (either may be empty)
  double max_age_hours = 24;        // freshness
  int lookback_days = 7;            // volume_anomaly
  double max_sigma = 3;             // volume_anomaly
  std::string date_column = "ds";   // volume_anomaly: the column that holds the logical date
  std::string sql;                  // custom_sql: returns the failing rows; {ds} is the date literal
  // Row-level kinds and freshness: only the rows of the run's day, by this column (a date or
  // timestamp column compared as a date, or a yyyymmdd `..._key`), so a check's cost follows the
  // day instead of the table's age. Empty: the whole table.
  std::string slice;
  std::vector<std::string> datasets;  // reconciliation / dead_letters: empty means all
  // reconciliation of a declared fact: every row of its `from` dataset staged on ds (not
  // deleted in the source) has a live fact row; the gap is reported in rows and in `measure`.
  std::string fact;
  std::string measure;
};

// When runs start by themselves. Each cron firing (in `timezone`) is due for the logical date
// before the firing's local date: a run fired at 02:00 on the 11th processes ds = the 10th,
// whose data interval is [10th 00:00, 11th 00:00) local time. With `catchup`, every date since
// `start_date` without a run gets one (oldest first); without it, only the latest due date.
// `deadline` (HH:MM): a ds whose run has not succeeded by that local time on the following day
// raises an alert through the quality notifier.
struct ScheduleSpec {
  bool present = false;
  std::string cron;
  std::string timezone = "UTC";
  std::string start_date;
  bool catchup = false;
  std::string deadline;  // empty: none
};

// Change data capture from the PostgreSQL source: logical replication (pgoutput) of the
// datasets' tables through `slot` and `publication`, applied continuously to
// raw.<dataset>_changes, raw.<dataset>_current and marts.orders_current.
struct CdcSpec {
  bool present = false;
  std::string slot;
  std::string publication;
  std::vector<std::string> datasets;  // postgres-source datasets with a key
  int heartbeat_seconds = 10;
  int batch_ms = 200;       // a micro-batch closes after this long...
  int batch_changes = 5000; // ...or this many changes
};

// A dimension declared in the spec and built by the loader from one staged dataset: natural key,
// surrogate key, per-column SCD type, validity from the source's business time. The builder's
// rules (change points, late changes, deletes, inferred members) are in
// services/warehouse_loader/dimensions.h.
struct DimensionSpec {
  std::string name;            // table dwh.<name>, and its model name in `models`
  std::string from;            // the dataset whose staged rows are the dimension's observations
  std::string key;             // natural key column
  std::string surrogate;       // surrogate key column; default <name without dim_>_key
  std::string effective_from;  // timestamp column: when the observed state took effect
  std::string deleted;         // optional bool (true) or timestamp (set) column marking deletion
  // For a full-snapshot dataset: a current key missing from a day's (non-empty) snapshot was
  // hard-deleted in the source by the end of that day.
  bool absent_means_deleted = false;
  std::vector<std::string> scd1;  // overwritten in every version
  std::vector<std::string> scd2;  // a change starts a new version
  std::string unknown_key;        // natural key of the unknown member (-1 / 'unknown')
};

// A fact table declared in the spec and built by the loader (services/warehouse_loader/facts.h).
struct FactSpec {
  struct Join {
    std::string dataset;          // header rows, latest version per `on` key
    std::vector<std::string> on;  // columns of both datasets
  };
  struct DimensionRef {
    std::string dimension;  // a declared dimension
    std::string key;        // the column (of `from` or a join) holding its natural key
  };
  struct Measure {
    std::string name, type, sql;  // column name, PostgreSQL type, SQL over the row's columns
  };
  std::string name;                // table dwh.<name>, and its model name in `models`
  std::string from;                // the dataset at the fact's grain, latest version per grain
  std::vector<std::string> grain;  // columns of `from`: the fact's primary key
  std::vector<Join> joins;
  std::string event_time;  // timestamp column: picks dimension versions and the date key
  std::vector<DimensionRef> dimensions;
  std::vector<Measure> measures;
  std::string mode = "merge";  // merge (by grain) | replace (the day's slice)
  // A grain (or its header) deleted in the source, as seen through change data capture:
  // delete (the fact row goes) | flag (it stays with is_deleted = true, outside every mart).
  std::string on_delete = "delete";
  // A soft-delete column of `from` or a join (bool true, or a timestamp set, when the row is
  // deleted): such a row is deleted too. And when `from` is extracted as a full snapshot, a grain
  // missing from the latest snapshot is deleted.
  std::string deleted;
};

struct PipelineSpec {
  std::string name;
  ScheduleSpec schedule;
  CdcSpec cdc;
  std::vector<DatasetSpec> datasets;
  std::vector<DimensionSpec> dimensions;
  std::vector<FactSpec> facts;
  std::vector<std::string> models;  // declared dimensions and facts, and built-in models, in order
  // The pipeline folder's models/*.sql (common/sql_model.h), built after `models`, each after
  // the models it reads.
  std::vector<SqlModel> sql_models;
  // The folder's migrations/NNN_what.sql (common/migration.h), by version.
  std::vector<Migration> migrations;
  std::vector<CheckSpec> checks;
  std::vector<ApiEndpoint> endpoints;  // common/endpoint.h
  const DatasetSpec* Find(const std::string& dataset) const;
  const DimensionSpec* FindDimension(const std::string& name) const;
  const FactSpec* FindFact(const std::string& name) const;
};

// Where deletions of a fact's rows are seen: a dataset captured by CDC (cdc.datasets), keyed
// by the fact's grain or by a header's join columns; its tombstones in raw.<dataset>_current
// mean the row is gone from the source.
struct DeletionSource {
  std::string dataset;
  std::vector<std::string> key;
};
std::vector<DeletionSource> FactDeletionSources(const PipelineSpec& spec, const FactSpec& fact);

PipelineSpec ParsePipelineSpec(const std::string& yaml_text, const std::string& origin);
// `path` is a pipeline folder (its pipeline.yaml and models/*.sql) or a YAML file (the models/
// folder beside it, if any). Also refuses SQL models that form a cycle or build a table a
// dimension or fact declares.
PipelineSpec LoadPipelineSpec(const std::string& path);

}  // namespace strata

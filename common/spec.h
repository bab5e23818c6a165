// The pipeline spec (pipelines/*.yaml): datasets with their sources, keys and typed columns,
// the models to build and the checks to run. Parsing validates everything up front and throws
// InputError naming the file and key path ("pipelines/demo.yaml: datasets[2].columns.rating:
// unknown type 'decimal'").
#pragma once
#include <map>
#include <string>
#include <vector>

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

struct SourceSpec {
  std::string type;  // postgres | http_json | html_table
  // postgres: incremental extraction of rows whose `cursor` falls within the logical day.
  std::string table;
  std::string cursor;
  // http_json: GET <source_http><path>?<date_param>=<ds>&page=N, records under `records`.
  std::string path;
  std::string date_param = "date";
  std::string records = "records";
  // html_table: the <table id=...> on the page at `path`.
  std::string table_id;
};

struct DatasetSpec {
  std::string name;
  SourceSpec source;
  std::vector<std::string> key;
  std::vector<Column> columns;
  int ColumnIndex(const std::string& name) const;  // -1 if absent
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
  std::vector<std::string> datasets;  // reconciliation / dead_letters: empty means all
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

struct PipelineSpec {
  std::string name;
  ScheduleSpec schedule;
  std::vector<DatasetSpec> datasets;
  std::vector<std::string> models;
  std::vector<CheckSpec> checks;
  const DatasetSpec* Find(const std::string& dataset) const;
};

PipelineSpec ParsePipelineSpec(const std::string& yaml_text, const std::string& origin);
PipelineSpec LoadPipelineSpec(const std::string& path);

}  // namespace strata

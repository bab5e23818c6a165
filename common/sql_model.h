// SQL models: the tables of a pipeline written as SQL files in its `models/` folder, one model
// per file, instead of in code.
//
// A model file starts with a block comment holding its declaration in YAML, then one SELECT:
//
//   /* strata
//   name: marts.daily_sales          # the table it builds (schema.table)
//   kind: incremental_by_ds          # full | incremental_by_ds | incremental_by_key | view
//   time_column: ds                  # incremental_by_ds: the day column (default ds)
//   lookahead_days: 1                # incremental_by_ds: a day's change also changes the next
//                                    # days (a day-over-day delta): they are rebuilt with it
//   unique_key: [ds]                 # the table's primary key (required by incremental_by_key)
//   indexes: [[product_id]]          # optional, each a list of columns
//   depends_on: [dwh.fact_sales]     # optional, beyond the tables the SELECT names
//   publish: false                   # a marts model: kept out of serving (default true)
//   description: Orders, units and revenue per day.
//   columns: {revenue: sum of quantity × unit price of the day's live lines}
//   */
//   SELECT ... WHERE f.date_key = to_char({ds}, 'YYYYMMDD')::int
//
// `{ds}`, `{start}` and `{end}` are the run's day and its [start, end) window as dates; they are
// bound as query parameters ($1, $2, $3), never spliced into the text. What a kind means when the
// model runs is in services/warehouse_loader/sql_models.h.
//
// This header parses and orders models and nothing else (no database), so it is tested without
// one (tests/unit/sql_model_test.cpp). Every error names the file and line.
#pragma once
#include <functional>
#include <map>
#include <string>
#include <vector>

namespace strata {

struct SqlModel {
  std::string file;  // as given to the parser, for messages
  std::string name;  // schema.table
  std::string kind;  // full | incremental_by_ds | incremental_by_key | view
  std::string time_column;
  int lookahead_days = 0;  // incremental_by_ds: also rebuild this many days after each changed day
  bool publish = true;     // a marts table (not a view) is copied to serving at publish
  std::vector<std::string> unique_key;
  std::vector<std::vector<std::string>> indexes;
  std::vector<std::string> depends_on;  // declared
  std::vector<std::string> reads;       // schema.table names in the SELECT, in order of appearance
  std::string description;
  std::map<std::string, std::string> columns;  // column -> description
  std::string sql;   // the SELECT as written (parameters still as {ds}, {start}, {end})
  int sql_line = 1;  // the line of the file the SELECT starts on
  bool uses_parameters = false;

  // Whether publish copies it to serving (marts tables marked publish; never dwh or views).
  bool Published() const { return publish && kind != "view" && name.rfind("marts.", 0) == 0; }
  // Every table the model needs built before it: `reads` and `depends_on`, each once.
  std::vector<std::string> Upstream() const;
};

// Parses one model file. Throws InputError "FILE:LINE: message" for a missing or malformed
// declaration, an unknown key or kind, a kind that does not fit (a view with parameters, an
// incremental_by_key model without unique_key), an unknown {parameter}, or no SELECT.
SqlModel ParseSqlModel(const std::string& text, const std::string& file);

// Every `*.sql` file of `dir`, by file name; none when the folder does not exist. Two files
// building the same table are refused, naming both.
std::vector<SqlModel> LoadSqlModels(const std::string& dir);

// The SELECT with each parameter it uses replaced by a positional one ($1::date, ...), numbered
// in order of first use; `names` says which is which (PostgreSQL wants exactly the parameters a
// statement uses). `first` numbers them from there, for statements that add their own.
struct BoundSql {
  std::string sql;
  std::vector<std::string> names;  // "ds", "start" or "end", for $first, $first+1, ...
};
BoundSql BindParameters(const SqlModel& model, int first = 1);
// The SELECT with every parameter replaced by a typed NULL: for planning it without running it
// (CREATE TABLE ... AS ... WITH NO DATA takes no parameters).
std::string WithoutParameters(const SqlModel& model);

// Walks SQL text, skipping string literals ('...', E'...' with backslash escapes, $tag$...$tag$)
// and comments. `on_param(pos, len, name)` sees each {name}; `on_word(pos, len)` each name made
// of dot-separated parts, bare or double-quoted ("dwh"."fact_sales" is one word);
// `on_semicolon(pos)` each statement separator.
void ScanSql(const std::string& sql, const std::function<void(size_t, size_t, const std::string&)>& on_param,
             const std::function<void(size_t, size_t)>& on_word, const std::function<void(size_t)>& on_semicolon);

// The name ScanSql's on_word saw at [pos, pos+len), as PostgreSQL reads it: bare parts fold to
// lower case, quoted ones keep theirs ("Dwh".x -> Dwh.x, DWH.X -> dwh.x).
std::string SqlWord(const std::string& sql, size_t pos, size_t len);

// The models in an order where each comes after the models it reads. A cycle throws
// InputError naming each file of it, in order.
std::vector<const SqlModel*> OrderSqlModels(const std::vector<SqlModel>& models);

}  // namespace strata

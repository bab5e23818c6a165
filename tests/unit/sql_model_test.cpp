// SQL model files: the declaration, the kinds, parameters, dependencies and their order, and the
// exact message (file and line) of every refusal.
#include "common/sql_model.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "common/errors.h"

namespace strata {
namespace {

std::string ErrorOf(const std::string& text, const std::string& file = "models/m.sql") {
  try {
    ParseSqlModel(text, file);
  } catch (const InputError& e) {
    return e.what();
  }
  return "(accepted)";
}

const char* kDaily = R"(-- The shop's day.
/* strata
name: marts.daily_sales
kind: incremental_by_ds
unique_key: [ds]
depends_on: dwh.dim_product
description: Orders per day.
columns: {orders: orders that day}
*/
SELECT d.date AS ds, count(DISTINCT f.order_id) AS orders  -- {not_a_parameter} in a comment
FROM dwh.fact_sales f JOIN dwh.dim_date d USING (date_key)
WHERE f.date_key = to_char({ds}, 'YYYYMMDD')::int AND f.note <> '{end} in a string'
  AND f.ordered_at < {end} AND f.ordered_at >= {ds};
)";

TEST(SqlModel, ParsesTheDeclarationAndInfersWhatItReads) {
  const SqlModel m = ParseSqlModel(kDaily, "pipelines/x/models/daily_sales.sql");
  EXPECT_EQ(m.name, "marts.daily_sales");
  EXPECT_EQ(m.kind, "incremental_by_ds");
  EXPECT_EQ(m.time_column, "ds");  // the default
  EXPECT_EQ(m.unique_key, std::vector<std::string>{"ds"});
  EXPECT_EQ(m.description, "Orders per day.");
  EXPECT_EQ(m.columns.at("orders"), "orders that day");
  EXPECT_EQ(m.sql_line, 10);
  EXPECT_EQ(m.reads, (std::vector<std::string>{"dwh.fact_sales", "dwh.dim_date"}));
  EXPECT_EQ(m.Upstream(), (std::vector<std::string>{"dwh.fact_sales", "dwh.dim_date", "dwh.dim_product"}));
  EXPECT_EQ(m.sql.back(), '}');  // the trailing ';' and blank line are dropped
}

TEST(SqlModel, BindsParametersInOrderOfFirstUseAndNeverInsideStringsOrComments) {
  const SqlModel m = ParseSqlModel(kDaily, "m.sql");
  const BoundSql b = BindParameters(m);
  EXPECT_EQ(b.names, (std::vector<std::string>{"ds", "end"}));
  EXPECT_NE(b.sql.find("to_char($1::date, 'YYYYMMDD')"), std::string::npos);
  EXPECT_NE(b.sql.find("f.ordered_at < $2::date AND f.ordered_at >= $1::date"), std::string::npos);
  EXPECT_NE(b.sql.find("'{end} in a string'"), std::string::npos);
  EXPECT_NE(b.sql.find("-- {not_a_parameter} in a comment"), std::string::npos);
  const BoundSql from3 = BindParameters(m, 3);
  EXPECT_NE(from3.sql.find("to_char($3::date"), std::string::npos);
  EXPECT_NE(WithoutParameters(m).find("to_char(NULL::date, 'YYYYMMDD')"), std::string::npos);
}

TEST(SqlModel, EscapeStringsDollarQuotesAndQuotedNamesAreReadAsPostgreSQLReadsThem) {
  // E'\'' is one string: what follows is still SQL (its table read, its parameter bound).
  const SqlModel e = ParseSqlModel(
      "/* strata\nname: marts.x\nkind: incremental_by_ds\n*/\n"
      "SELECT {ds} AS ds, replace(f.note, E'\\'', '') AS note FROM dwh.fact_sales f WHERE f.day = {end}",
      "x.sql");
  EXPECT_EQ(e.reads, std::vector<std::string>{"dwh.fact_sales"});
  EXPECT_EQ(BindParameters(e).names, (std::vector<std::string>{"ds", "end"}));
  // A dollar-quoted string hides a ';', a {ds} and a table name; a quoted name is a name.
  const SqlModel d = ParseSqlModel(
      "/* strata\nname: marts.y\nkind: full\n*/\n"
      "SELECT $q$ {ds}; dwh.not_read $q$ AS a, $$it's$$ AS b FROM \"dwh\".\"fact_sales\" JOIN marts.\"Daily\" USING (k)",
      "y.sql");
  EXPECT_EQ(d.reads, (std::vector<std::string>{"dwh.fact_sales", "marts.Daily"}));  // quoted: case kept
  EXPECT_FALSE(d.uses_parameters);
  EXPECT_EQ(BindParameters(d).sql, d.sql);
}

TEST(SqlModel, RefusalsNameTheFileAndLine) {
  EXPECT_EQ(ErrorOf("SELECT 1"),
            "models/m.sql:1: a model file starts with its declaration: a '/* strata' block comment (name, kind, ...)");
  EXPECT_EQ(ErrorOf("/* strata\nname: marts.x\nkind: full\n"), "models/m.sql:1: the '/* strata' declaration is not closed with '*/'");
  EXPECT_EQ(ErrorOf("/* strata\nname: marts.x\nkind: snapshot\n*/\nSELECT 1 AS a"),
            "models/m.sql:3: kind: unknown kind 'snapshot' (full, incremental_by_ds, incremental_by_key, view)");
  EXPECT_EQ(ErrorOf("/* strata\nname: marts.x\nkind: full\nowner: me\n*/\nSELECT 1 AS a"),
            "models/m.sql:4: unknown key 'owner' (known: name, kind, time_column, lookahead_days, unique_key, indexes, "
            "depends_on, publish, description, columns)");
  EXPECT_EQ(ErrorOf("/* strata\nname: marts.x\nkind: full\npublish: maybe\n*/\nSELECT 1 AS a"),
            "models/m.sql:4: publish: expected true or false, got 'maybe'");
  EXPECT_EQ(ErrorOf("/* strata\nname: dwh.x\nkind: full\npublish: true\n*/\nSELECT 1 AS a"),
            "models/m.sql:4: publish: only a marts model is published (serving holds marts)");
  EXPECT_EQ(ErrorOf("/* strata\nname: marts.x\nkind: full\nlookahead_days: 1\n*/\nSELECT 1 AS a"),
            "models/m.sql:4: lookahead_days: only an incremental_by_ds model rebuilds later days (this one is full)");
  EXPECT_EQ(ErrorOf("/* strata\nname: marts.x\nkind: incremental_by_ds\nlookahead_days: -1\n*/\nSELECT {ds} AS ds"),
            "models/m.sql:4: lookahead_days: expected a whole number of days from 0 to 31, got '-1'");
  EXPECT_EQ(ErrorOf("/* strata\nname: staging.x\nkind: full\n*/\nSELECT 1 AS a"),
            "models/m.sql:2: name: 'staging.x' must be dwh.<table> or marts.<table> (lower case, digits, _)");
  EXPECT_EQ(ErrorOf("/* strata\nkind: full\n*/\nSELECT 1 AS a"),
            "models/m.sql:1: name: missing (the table the model builds, e.g. marts.daily_sales)");
  EXPECT_EQ(ErrorOf("/* strata\nname: marts.x\nkind: full\n*/\n\nSELECT 1 AS a\nWHERE d = {day}"),
            "models/m.sql:7: unknown parameter {day} (parameters: {ds}, {start}, {end})");
  EXPECT_EQ(ErrorOf("/* strata\nname: marts.x\nkind: view\n*/\nSELECT {ds} AS ds"),
            "models/m.sql:5: a view cannot take {ds}: it is not built per day (use incremental_by_ds)");
  EXPECT_EQ(ErrorOf("/* strata\nname: marts.x\nkind: incremental_by_ds\n*/\nSELECT now()::date AS ds"),
            "models/m.sql:5: an incremental_by_ds model selects one day's rows: use {ds} (or {start}/{end}) in its SELECT");
  EXPECT_EQ(ErrorOf("/* strata\nname: marts.x\nkind: incremental_by_key\n*/\nSELECT 1 AS a"),
            "models/m.sql:1: unique_key: an incremental_by_key model merges on its unique key; declare it");
  EXPECT_EQ(ErrorOf("/* strata\nname: marts.x\nkind: full\ntime_column: ds\n*/\nSELECT 1 AS a"),
            "models/m.sql:4: time_column: only an incremental_by_ds model has one (this one is full)");
  EXPECT_EQ(ErrorOf("/* strata\nname: marts.x\nkind: full\n*/\nSELECT 1 AS a;\nDELETE FROM marts.y"),
            "models/m.sql:5: one statement per model file (a ';' ends the SELECT early)");
  EXPECT_EQ(ErrorOf("/* strata\nname: marts.x\nkind: full\n*/\nDELETE FROM marts.y"),
            "models/m.sql:5: expected a SELECT (or WITH ... SELECT), found 'delete'");
  EXPECT_EQ(ErrorOf("/* strata\nname: marts.x\nkind: full\n*/\n"), "models/m.sql:5: no SELECT after the declaration");
  EXPECT_EQ(ErrorOf("/* strata\nname: marts.x\nkind: full\ndepends_on: fact_sales\n*/\nSELECT 1 AS a"),
            "models/m.sql:4: depends_on: 'fact_sales' is not a schema.table name (schemas: raw, staging, dwh, marts, "
            "serving, ops)");
  const std::string yaml = ErrorOf("/* strata\nname: marts.x\nkind: [full\n*/\nSELECT 1 AS a");
  EXPECT_EQ(yaml.rfind("models/m.sql:", 0), 0u) << yaml;
  EXPECT_NE(yaml.find(": the declaration is not valid YAML: "), std::string::npos) << yaml;
}

SqlModel Model(const std::string& name, const std::string& reads, const std::string& file) {
  return ParseSqlModel("/* strata\nname: " + name + "\nkind: full\n*/\nSELECT * FROM " + reads, file);
}

TEST(SqlModel, OrdersModelsAfterWhatTheyReadAndNamesEveryFileOfACycle) {
  const std::vector<SqlModel> models = {Model("marts.c", "marts.b", "c.sql"), Model("marts.a", "dwh.fact_sales", "a.sql"),
                                        Model("marts.b", "marts.a", "b.sql")};
  std::vector<std::string> order;
  for (const SqlModel* m : OrderSqlModels(models)) order.push_back(m->name);
  EXPECT_EQ(order, (std::vector<std::string>{"marts.a", "marts.b", "marts.c"}));

  const std::vector<SqlModel> cycle = {Model("marts.a", "marts.c", "a.sql"), Model("marts.b", "marts.a", "b.sql"),
                                       Model("marts.c", "marts.b", "c.sql")};
  try {
    OrderSqlModels(cycle);
    FAIL() << "a cycle was accepted";
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(),
                 "a.sql:5: models form a cycle: a.sql (marts.a) reads marts.c; c.sql (marts.c) reads marts.b; "
                 "b.sql (marts.b) reads marts.a");
  }
}

TEST(SqlModel, LoadsAFolderInFileOrderAndRefusesTwoFilesForOneTable) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("strata_sql_models_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir / "b.sql") << "/* strata\nname: marts.b\nkind: full\n*/\nSELECT 1 AS a\n";
  std::ofstream(dir / "a.sql") << "/* strata\nname: marts.a\nkind: full\n*/\nSELECT 1 AS a\n";
  std::ofstream(dir / "notes.txt") << "not a model";
  const auto models = LoadSqlModels(dir.string());
  ASSERT_EQ(models.size(), 2u);
  EXPECT_EQ(models[0].name, "marts.a");
  EXPECT_EQ(models[1].name, "marts.b");
  std::ofstream(dir / "c.sql") << "/* strata\nname: marts.a\nkind: full\n*/\nSELECT 2 AS a\n";
  try {
    LoadSqlModels(dir.string());
    FAIL() << "two files for one table were accepted";
  } catch (const InputError& e) {
    EXPECT_EQ(std::string(e.what()), (dir / "c.sql").string() + ":1: marts.a is already built by " + (dir / "a.sql").string());
  }
  EXPECT_TRUE(LoadSqlModels((dir / "missing").string()).empty());
  fs::remove_all(dir);
}

}  // namespace
}  // namespace strata

#include "services/warehouse_loader/models.h"

#include <pqxx/pqxx>

#include "common/errors.h"
#include "common/pg.h"
#include "services/warehouse_loader/dimensions.h"
#include "services/warehouse_loader/facts.h"

#include <algorithm>

namespace strata::loader {

std::string WarehouseDdl(const PipelineSpec& spec) {
  std::string dims;
  for (const auto& d : spec.dimensions) dims += DimensionDdl(d, *spec.Find(d.from));
  for (const auto& f : spec.facts) dims += FactDdl(spec, f);
  // Only the built-in models the spec lists get their tables: a pipeline without them has none
  // of them.
  std::string built_in;
  for (const auto& m : AllModels())
    if (std::find(spec.models.begin(), spec.models.end(), m.name) != spec.models.end()) built_in += m.ddl;
  return R"SQL(
CREATE SCHEMA IF NOT EXISTS raw;
CREATE SCHEMA IF NOT EXISTS staging;
CREATE SCHEMA IF NOT EXISTS dwh;
CREATE SCHEMA IF NOT EXISTS marts;
CREATE SCHEMA IF NOT EXISTS ops;
CREATE SCHEMA IF NOT EXISTS serving;

CREATE TABLE IF NOT EXISTS ops.loads (
  dataset text NOT NULL,
  ds date NOT NULL,
  run_id text NOT NULL,
  manifest_rows bigint NOT NULL,
  loaded_rows bigint NOT NULL,
  loaded_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (dataset, ds));

CREATE TABLE IF NOT EXISTS dwh.dim_date (
  date_key integer PRIMARY KEY,
  date date NOT NULL UNIQUE,
  year integer NOT NULL,
  quarter integer NOT NULL,
  month integer NOT NULL,
  day integer NOT NULL,
  day_of_week integer NOT NULL,
  day_name text NOT NULL,
  month_name text NOT NULL,
  is_weekend boolean NOT NULL);


-- What the models changed in marts since the last publish, recorded by statement triggers
-- (ops.note_mart_change): the days of a mart with a ds column, else the primary-key values.
-- Publish copies exactly those into serving, so its cost follows the change, not the marts' size.
CREATE TABLE IF NOT EXISTS ops.mart_day_changes (mart text NOT NULL, ds date NOT NULL, PRIMARY KEY (mart, ds));
CREATE TABLE IF NOT EXISTS ops.mart_key_changes (mart text NOT NULL, key jsonb NOT NULL, PRIMARY KEY (mart, key));
CREATE TABLE IF NOT EXISTS ops.serving_tables (mart text PRIMARY KEY, first_published_at timestamptz NOT NULL DEFAULT now());
-- Raised from inside a SQL model's statement (services/warehouse_loader/sql_models.h) to refuse a
-- row it may not write, naming the model.
CREATE OR REPLACE FUNCTION ops.strata_model_error(message text) RETURNS boolean LANGUAGE plpgsql VOLATILE AS $fn$
BEGIN
  RAISE EXCEPTION '%', message USING ERRCODE = 'data_exception';
END $fn$;
CREATE OR REPLACE FUNCTION ops.note_mart_change() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
  key text := '';
  rows text;
BEGIN
  -- Only the key columns are read from each row (a whole-row to_jsonb per changed row cost
  -- seconds on a day's orders); an update's old and new keys are one set.
  FOR i IN 1 .. TG_NARGS - 1 LOOP
    key := key || CASE WHEN i > 1 THEN ', ' ELSE '' END || format('to_jsonb(r.%I)', TG_ARGV[i]);
  END LOOP;
  rows := CASE TG_OP WHEN 'INSERT' THEN 'new_rows' WHEN 'DELETE' THEN 'old_rows'
                     ELSE '(SELECT * FROM new_rows UNION ALL SELECT * FROM old_rows)' END;
  IF TG_ARGV[0] = 'ds' THEN
    EXECUTE format('INSERT INTO ops.mart_day_changes SELECT DISTINCT %L, ds FROM %s r ON CONFLICT DO NOTHING',
                   TG_TABLE_NAME, rows);
  ELSE
    -- An insert's or a delete's primary keys are distinct already: no sort.
    EXECUTE format('INSERT INTO ops.mart_key_changes SELECT %s %L, jsonb_build_array(%s) FROM %s r '
                   'ON CONFLICT DO NOTHING', CASE WHEN TG_OP = 'UPDATE' THEN 'DISTINCT' ELSE '' END,
                   TG_TABLE_NAME, key, rows);
  END IF;
  RETURN NULL;
END $fn$;
-- Installs the triggers on marts.<t>: by day when it has a ds column, else by primary key (a
-- table with neither is copied whole at every publish).
CREATE OR REPLACE FUNCTION ops.install_change_triggers(t text) RETURNS boolean LANGUAGE plpgsql AS $fn$
DECLARE
  args text;
BEGIN
  IF EXISTS (SELECT 1 FROM information_schema.columns WHERE table_schema = 'marts' AND table_name = t
             AND column_name = 'ds') THEN
    args := quote_literal('ds');
  ELSE
    SELECT string_agg(quote_literal(a.attname), ', ' ORDER BY array_position(i.indkey::int2[], a.attnum)) INTO args
    FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey::int2[])
    WHERE i.indrelid = format('marts.%I', t)::regclass AND i.indisprimary;
    IF args IS NULL THEN RETURN false; END IF;
    args := quote_literal('key') || ', ' || args;
  END IF;
  IF (SELECT count(*) FROM pg_trigger WHERE tgrelid = format('marts.%I', t)::regclass
      AND tgname IN ('strata_changes_i', 'strata_changes_u', 'strata_changes_d')) = 3 THEN
    RETURN true;  -- installed (a publish asks every time; no lock taken then)
  END IF;
  EXECUTE format('CREATE OR REPLACE TRIGGER strata_changes_i AFTER INSERT ON marts.%I REFERENCING NEW TABLE AS new_rows '
                 'FOR EACH STATEMENT EXECUTE FUNCTION ops.note_mart_change(%s)', t, args);
  EXECUTE format('CREATE OR REPLACE TRIGGER strata_changes_u AFTER UPDATE ON marts.%I REFERENCING NEW TABLE AS new_rows '
                 'OLD TABLE AS old_rows FOR EACH STATEMENT EXECUTE FUNCTION ops.note_mart_change(%s)', t, args);
  EXECUTE format('CREATE OR REPLACE TRIGGER strata_changes_d AFTER DELETE ON marts.%I REFERENCING OLD TABLE AS old_rows '
                 'FOR EACH STATEMENT EXECUTE FUNCTION ops.note_mart_change(%s)', t, args);
  RETURN true;
END $fn$;

-- serving: the published copy of marts, the only thing the query service reads.
CREATE TABLE IF NOT EXISTS serving.publications (
  version bigserial PRIMARY KEY,
  ds date NOT NULL,
  run_id text NOT NULL,
  published_at timestamptz NOT NULL DEFAULT now());
-- The lake's gold layer follows serving: every (mart, day) a publish changed is pending until
-- its partition is written from serving and read back; gold_partitions says what each holds.
CREATE TABLE IF NOT EXISTS ops.gold_pending (
  mart text NOT NULL,
  ds date NOT NULL,
  version bigint NOT NULL,  -- the publication that changed it last
  PRIMARY KEY (mart, ds));
CREATE TABLE IF NOT EXISTS ops.gold_partitions (
  mart text NOT NULL,
  ds date NOT NULL,
  version bigint NOT NULL,  -- the publication the partition holds
  rows bigint NOT NULL,
  run_id text NOT NULL,
  written_at timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (mart, ds));

INSERT INTO dwh.dim_date
SELECT to_char(d, 'YYYYMMDD')::int, d::date, extract(year FROM d)::int, extract(quarter FROM d)::int,
       extract(month FROM d)::int, extract(day FROM d)::int, extract(isodow FROM d)::int,
       trim(to_char(d, 'Day')), trim(to_char(d, 'Month')), extract(isodow FROM d) >= 6
FROM generate_series('2015-01-01'::date, '2035-12-31'::date, interval '1 day') AS d
ON CONFLICT DO NOTHING;

-- (the marts' change triggers are installed after the built-in models' tables, below)
)SQL" + built_in + dims + R"SQL(
SELECT ops.install_change_triggers(table_name::text) FROM information_schema.tables
WHERE table_schema = 'marts' AND table_type = 'BASE TABLE';
)SQL";
}

std::string StagingDdl(const PipelineSpec& spec, const DatasetSpec& d) {
  std::string cols;
  for (const auto& c : d.columns) cols += ", " + QuoteIdent(c.name) + " " + PgTypeName(c.type);
  const std::string table = "staging." + QuoteIdent(d.name);
  std::string sql = "CREATE TABLE IF NOT EXISTS " + table + " (ds date NOT NULL, run_id text NOT NULL" + cols +
                    ");\nCREATE INDEX IF NOT EXISTS " + QuoteIdent(d.name + "_ds") + " ON " + table + " (ds);\n";
  // Dimensions and facts look up every staged version of the keys a day touched: by key, so
  // the cost follows the day's keys, never the table's age.
  bool looked_up = false;
  for (const auto& dim : spec.dimensions) looked_up = looked_up || dim.from == d.name;
  for (const auto& f : spec.facts) {
    looked_up = looked_up || f.from == d.name;
    for (const auto& j : f.joins) looked_up = looked_up || j.dataset == d.name;
  }
  // A SQL model reading the dataset may look its keys up too (the earlier versions of the day's
  // rows, say).
  for (const auto& m : spec.sql_models)
    looked_up = looked_up || std::find(m.reads.begin(), m.reads.end(), "staging." + d.name) != m.reads.end();
  if (looked_up && !d.key.empty()) {
    std::string key;
    for (const auto& k : d.key) key += (key.empty() ? "" : ", ") + QuoteIdent(k);
    sql += "CREATE INDEX IF NOT EXISTS " + QuoteIdent(d.name + "_key") + " ON " + table + " (" + key + ");\n";
  }
  return sql;
}

const std::vector<Model>& AllModels() {
  static const std::vector<Model> kModels = {
      {"orders_current",
       {R"SQL(
CREATE TEMP TABLE tmp_affected_orders ON COMMIT DROP AS
SELECT order_id, bool_or(lines) AS lines, bool_or(staged) AS staged FROM (
  SELECT order_id, false AS lines, true AS staged FROM staging.orders WHERE ds = $1
  UNION ALL SELECT order_id, true, false FROM tmp_fact_sales_affected) a
GROUP BY order_id)SQL",
        "ANALYZE tmp_affected_orders",
        // The latest staged header of every affected order: when no later day is staged (a
        // daily run), the day's own version for the orders staged today (read through the ds
        // index); otherwise, and for orders whose lines alone changed, the newest of its staged
        // versions through the key index. The amount is re-summed only where the order's lines
        // changed today or the mart lacks the order (a status change keeps the amount the mart
        // holds). Both are scalar subqueries on purpose: one index probe per affected order,
        // where a join lets the planner walk the fact's and the mart's whole key index (the
        // newest orders sort last), which grows with the warehouse's age.
        R"SQL(
INSERT INTO marts.orders_current (order_id, customer_id, status, ordered_at, updated_at, amount)
WITH newest AS (SELECT $1 >= coalesce((SELECT max(ds) FROM staging.orders), $1) AS is_newest),
headers AS (
  SELECT DISTINCT ON (o.order_id) o.order_id, o.customer_id, o.status, o.ordered_at, o.updated_at
  FROM staging.orders o WHERE o.ds = $1 AND (SELECT is_newest FROM newest)
  ORDER BY o.order_id, o.updated_at DESC)
SELECT h.order_id, h.customer_id, h.status, h.ordered_at, h.updated_at,
       CASE WHEN a.lines
            THEN (SELECT sum(f.amount) FROM dwh.fact_sales f WHERE f.order_id = h.order_id AND NOT f.is_deleted)
            ELSE coalesce((SELECT c.amount FROM marts.orders_current c WHERE c.order_id = h.order_id),
                          (SELECT sum(f.amount) FROM dwh.fact_sales f WHERE f.order_id = h.order_id AND NOT f.is_deleted))
       END
FROM (SELECT * FROM headers
      UNION ALL
      SELECT a.order_id, l.customer_id, l.status, l.ordered_at, l.updated_at
      FROM tmp_affected_orders a CROSS JOIN LATERAL (
        SELECT o.customer_id, o.status, o.ordered_at, o.updated_at FROM staging.orders o
        WHERE o.order_id = a.order_id ORDER BY o.updated_at DESC, o.ds DESC LIMIT 1) l
      WHERE NOT (a.staged AND (SELECT is_newest FROM newest))) h
JOIN tmp_affected_orders a USING (order_id)
ORDER BY h.order_id
ON CONFLICT (order_id) DO UPDATE SET customer_id = EXCLUDED.customer_id, status = EXCLUDED.status,
  ordered_at = EXCLUDED.ordered_at, updated_at = EXCLUDED.updated_at, amount = EXCLUDED.amount
WHERE orders_current.updated_at <= EXCLUDED.updated_at  -- never behind what CDC already applied
  AND (orders_current.customer_id, orders_current.status, orders_current.ordered_at,
       orders_current.updated_at, orders_current.amount)
      IS DISTINCT FROM
      (EXCLUDED.customer_id, EXCLUDED.status, EXCLUDED.ordered_at, EXCLUDED.updated_at,
       EXCLUDED.amount))SQL"},
       {"marts.orders_current"},
       {"staging.orders", "dwh.fact_sales", "raw.orders_current"},
       R"SQL(
CREATE TABLE IF NOT EXISTS marts.orders_current (
  order_id bigint PRIMARY KEY,
  customer_id bigint NOT NULL,
  status text NOT NULL,
  ordered_at timestamptz NOT NULL,
  updated_at timestamptz NOT NULL,
  amount numeric(14,2));
CREATE INDEX IF NOT EXISTS orders_current_status ON marts.orders_current (status);
CREATE TABLE IF NOT EXISTS serving.orders_current (LIKE marts.orders_current INCLUDING ALL);
)SQL"},

  };
  return kModels;
}

std::set<std::string> BuiltInTables(const PipelineSpec& spec) {
  std::set<std::string> out;
  for (const auto& m : AllModels())
    if (std::find(spec.models.begin(), spec.models.end(), m.name) != spec.models.end()) out.insert(m.tables.begin(), m.tables.end());
  return out;
}

std::vector<Model> ResolveModels(const PipelineSpec& spec) {
  std::vector<Model> out;
  for (const auto& name : spec.models) {
    if (const DimensionSpec* dim = spec.FindDimension(name)) {
      const bool captured = std::find(spec.cdc.datasets.begin(), spec.cdc.datasets.end(), dim->from) != spec.cdc.datasets.end();
      out.push_back({name, DimensionStatements(*dim, *spec.Find(dim->from), captured), {"dwh." + name}, {}, ""});
      continue;
    }
    if (const FactSpec* fact = spec.FindFact(name)) {
      out.push_back({name, FactStatements(spec, *fact), {"dwh." + name}, {}, ""});
      continue;
    }
    const Model* found = nullptr;
    for (const auto& m : AllModels())
      if (m.name == name) found = &m;
    if (!found) {
      std::string known;
      for (const auto& m : AllModels()) known += (known.empty() ? "" : ", ") + m.name;
      throw InputError("models: unknown model '" + name + "' (built in: " + known +
                       "; or declare it under dimensions or facts)");
    }
    Model model = *found;
    // An order deleted in the source (a CDC tombstone) leaves the batch-built mart, whichever
    // day's build sees it first (its lines may have left the facts days before).
    if (name == "orders_current" &&
        std::find(spec.cdc.datasets.begin(), spec.cdc.datasets.end(), "orders") != spec.cdc.datasets.end())
      model.statements.push_back(R"SQL(
DELETE FROM marts.orders_current c USING raw.orders_current o
WHERE o.order_id = c.order_id AND o._deleted)SQL");
    // The marts read what the fact build left in its temp tables.
    if (name == "orders_current" &&
        (!spec.FindFact("fact_sales") || std::find(spec.models.begin(), spec.models.end(), "fact_sales") > std::find(spec.models.begin(), spec.models.end(), name)))
      throw InputError("models: " + name + " needs the fact 'fact_sales' declared under facts and listed before it");
    out.push_back(std::move(model));
  }
  return out;
}

void RunModel(pqxx::transaction_base& tx, const Model& m, const std::string& ds) {
  for (const auto& sql : m.statements) {
    if (sql.find("$1") == std::string::npos) {
      tx.exec(sql);
    } else if (sql.find("CREATE TEMP TABLE") != std::string::npos) {
      // Utility statements (CREATE TABLE AS) take no parameters: inline the validated date.
      std::string inlined = sql;
      const std::string lit = tx.quote(ds) + "::date";
      for (size_t p = inlined.find("$1"); p != std::string::npos; p = inlined.find("$1", p)) inlined.replace(p, 2, lit);
      tx.exec(inlined);
    } else {
      tx.exec_params(sql, ds);
    }
  }
}

}  // namespace strata::loader

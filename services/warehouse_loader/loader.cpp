#include "services/warehouse_loader/loader.h"

#include <grpcpp/grpcpp.h>
#include <prometheus/counter.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>
#include <zlib.h>

#include <chrono>
#include <fstream>

#include "common/bus.h"
#include "common/config.h"
#include "common/errors.h"
#include "common/events.h"
#include "common/governance.h"
#include "common/lake.h"
#include "common/lake_store.h"
#include "common/lake_codec.h"
#include "common/ops_schema.h"
#include "common/pg.h"
#include "common/spec.h"
#include "common/task_lease.h"
#include "common/task_runner.h"
#include "common/time_util.h"
#include "services/warehouse_loader/cdc_apply.h"
#include "services/warehouse_loader/lake_layers.h"
#include "services/warehouse_loader/lineage.h"
#include "services/warehouse_loader/migrations.h"
#include "services/warehouse_loader/models.h"
#include "services/warehouse_loader/sql_models.h"
#include "strata.grpc.pb.h"

namespace strata::loader {

namespace {

using strata::v1::TaskRequest;

struct Metrics {
  explicit Metrics(prometheus::Registry& r)
      : rows(prometheus::BuildCounter().Name("strata_warehouse_loader_rows_loaded_total")
                 .Help("Rows COPYed into staging").Register(r)),
        tasks(prometheus::BuildCounter().Name("strata_warehouse_loader_tasks_total")
                  .Help("Load and model tasks finished, by kind and outcome").Register(r)),
        duration(prometheus::BuildHistogram().Name("strata_warehouse_loader_task_duration_seconds")
                     .Help("Wall time of load and model tasks").Register(r)) {}
  prometheus::Family<prometheus::Counter>& rows;
  prometheus::Family<prometheus::Counter>& tasks;
  prometheus::Family<prometheus::Histogram>& duration;
};

class LoaderImpl final : public Component, public strata::v1::WarehouseLoader::Service {
 public:
  LoaderImpl(const Config& config, prometheus::Registry& registry)
      : config_(config), spec_(LoadPipelineSpec(config.pipeline_spec)),
        models_(ResolveModels(spec_)), metrics_(registry), leases_(config_.redis_url, std::chrono::seconds(config_.task_lease_seconds)), runner_(2), cdc_(config_, spec_, registry) {
    if (config_.warehouse_dsn.empty()) throw InputError("warehouse_dsn (STRATA_PG_DSN) is not configured");
    CheckSqlModelReads(spec_, BuiltInTables(spec_));  // before any connection: a spec error is not a database one
    CheckEndpointReads(spec_);
    auto conn = PgConnect(config_.warehouse_dsn);
    std::string ddl = WarehouseDdl(spec_);
    for (const auto& d : spec_.datasets) ddl += StagingDdl(spec_, d);
    RunDdl(*conn, ddl + SharedOpsDdl() + CdcDdl(spec_) + GovernanceDdl());
    // Passwords apart from the DDL batch: a failing statement would log the whole batch.
    if (const std::string pw = RolePasswordsSql(config_.role_passwords); !pw.empty()) RunDdl(*conn, pw);
    // An older warehouse is brought to the shape the models expect before they are checked.
    ApplyMigrations(*conn, spec_.name, spec_.migrations);
    EnsureSqlModelTables(*conn, spec_);
    CheckEndpointStatements(*conn, spec_);
    cdc_.Start();
  }

  std::vector<grpc::Service*> GrpcServices() override { return {this}; }
  void Stop() override {
    cdc_.Stop();
    runner_.Stop();
  }

  grpc::Status Load(grpc::ServerContext*, const TaskRequest* req, strata::v1::TaskAccepted* resp) override {
    const DatasetSpec* d = spec_.Find(req->dataset());
    if (!d) return {grpc::StatusCode::NOT_FOUND, "dataset '" + req->dataset() + "' is not in pipeline '" + spec_.name + "'"};
    return Submit(*req, resp, [this, d](const TaskRequest& r) { return LoadPartition(r, *d); }, "load");
  }

  grpc::Status BuildModels(grpc::ServerContext*, const TaskRequest* req, strata::v1::TaskAccepted* resp) override {
    return Submit(*req, resp, [this](const TaskRequest& r) { return RunModels(r); }, "model");
  }

  grpc::Status Publish(grpc::ServerContext*, const TaskRequest* req, strata::v1::TaskAccepted* resp) override {
    return Submit(*req, resp, [this](const TaskRequest& r) { return PublishMarts(r); }, "publish");
  }

 private:
  using Work = std::function<long long(const TaskRequest&)>;

  grpc::Status Submit(const TaskRequest& req, strata::v1::TaskAccepted* resp, Work work, const std::string& kind) {
    if (!IsValidDate(req.ds()))
      return {grpc::StatusCode::INVALID_ARGUMENT, "ds: expected YYYY-MM-DD, got \"" + req.ds() + "\""};
    if (req.run_id().empty()) return {grpc::StatusCode::INVALID_ARGUMENT, "run_id: must not be empty"};
    leases_.Hold(req);
    if (!runner_.Submit([this, req, work, kind] {
          const auto start = std::chrono::steady_clock::now();
          strata::v1::Event ev;
          try {
            ev = TaskEvent(req, true, "", work(req));
            metrics_.tasks.Add({{"kind", kind}, {"outcome", "succeeded"}}).Increment();
          } catch (const std::exception& e) {
            spdlog::error("task failed task={} ds={} run_id={} error={}", req.task(), req.ds(), req.run_id(), e.what());
            ev = TaskEvent(req, false, req.task() + ": " + e.what());
            metrics_.tasks.Add({{"kind", kind}, {"outcome", "failed"}}).Increment();
          }
          metrics_.duration.Add({{"kind", kind}}, prometheus::Histogram::BucketBoundaries{0.05, 0.25, 1, 5, 30, 120, 600})
              .Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
          try {
            Bus bus(config_.redis_url);
            PublishEvent(bus, "warehouse_loader", ev);
          } catch (const std::exception& e) {
            spdlog::error("cannot publish event task={} error={}", req.task(), e.what());
          }
          leases_.Release(req);
        })) {
      leases_.Release(req);
      return {grpc::StatusCode::UNAVAILABLE, "warehouse-loader is shutting down"};
    }
    resp->set_task(req.task());
    return grpc::Status::OK;
  }

  long long LoadPartition(const TaskRequest& req, const DatasetSpec& d) {
    // One store per task: tasks run on several threads.
    const std::unique_ptr<LakeStore> store = OpenLakeStore(config_.lake_root);
    const std::string key = PartitionKey("bronze", d.name, req.ds());
    const std::string dir = store->Where(key);
    const auto manifest = ReadManifest(*store, key);
    if (!manifest) throw InputError("no committed lake partition at " + dir);
    // The declared columns first; anything after them is a field the source grew
    // (schema_drift: add_column), staged as text.
    std::vector<std::string> want;
    for (const auto& c : d.columns) want.push_back(c.name);
    if (manifest->columns.size() < want.size() ||
        !std::equal(want.begin(), want.end(), manifest->columns.begin())) {
      std::string got, declared;
      for (const auto& c : manifest->columns) got += (got.empty() ? "" : ",") + c;
      for (const auto& c : want) declared += (declared.empty() ? "" : ",") + c;
      throw InputError("partition " + dir + " has columns [" + got + "], the spec declares [" + declared + "]");
    }
    std::string collist = "ds, run_id";
    for (const auto& c : manifest->columns) collist += ", " + QuoteIdent(c);
    const std::string table = "staging." + QuoteIdent(d.name);

    CopyConn pg(DsnForTask(config_.warehouse_dsn, req));
    pg.Exec("BEGIN");
    pg.Exec("SET LOCAL TIME ZONE 'UTC'");
    // One load of a partition at a time: a resumed run can start a second attempt while the
    // first still runs; the second waits, then replaces what the first staged.
    pg.ExecParams("SELECT pg_advisory_xact_lock(7400003, hashtext($1))", {d.name + "/" + req.ds()});
    for (size_t i = want.size(); i < manifest->columns.size(); ++i)
      pg.Exec("ALTER TABLE " + table + " ADD COLUMN IF NOT EXISTS " + QuoteIdent(manifest->columns[i]) + " text");
    pg.ExecParams("DELETE FROM " + table + " WHERE ds = $1", {req.ds()});

    // Stream every part file in order, decoded (and decompressed) to CSV, verifying each
    // file's checksum.
    const LakeFormat format = ParseLakeFormat(manifest->format, manifest->compression, "partition " + dir);
    size_t file_idx = 0;
    std::unique_ptr<PartReader> part;
    const auto open_next = [&]() -> bool {
      if (part) {
        if (part->crc32() != manifest->files[file_idx - 1].crc32)
          throw InputError("checksum mismatch in " + dir + "/" + manifest->files[file_idx - 1].path);
        part.reset();
      }
      if (file_idx >= manifest->files.size()) return false;
      const std::string file = key + "/" + manifest->files[file_idx++].path;
      part = std::make_unique<PartReader>(store->Where(file), store->Open(file), format, manifest->columns);
      return true;
    };
    const long long copied = pg.CopyIn(
        "COPY " + table + " (" + collist + ") FROM STDIN (FORMAT csv)", [&](char* buf, size_t cap) -> size_t {
          for (;;) {
            if (!part && !open_next()) return 0;
            const size_t n = part->Read(buf, cap);
            if (n > 0) return n;
            if (!open_next()) return 0;
          }
        });
    if (copied != manifest->rows)
      throw InputError("partition " + dir + ": manifest says " + std::to_string(manifest->rows) +
                       " rows, COPY loaded " + std::to_string(copied));
    pg.ExecParams(
        "INSERT INTO ops.loads (dataset, ds, run_id, manifest_rows, loaded_rows) VALUES ($1, $2, $3, $4, $5) "
        "ON CONFLICT (dataset, ds) DO UPDATE SET run_id = EXCLUDED.run_id, manifest_rows = EXCLUDED.manifest_rows, "
        "loaded_rows = EXCLUDED.loaded_rows, loaded_at = now()",
        {d.name, req.ds(), manifest->run_id, std::to_string(manifest->rows), std::to_string(copied)});
    if (!manifest->watermark.empty()) {
      // Only forward: re-loading an older partition never moves the watermark back.
      const std::string cursor = d.source.type == "postgres" ? d.source.cursor : d.source.since_field;
      const int ci = d.ColumnIndex(cursor);
      if (ci < 0) throw InputError("partition " + dir + " carries a watermark but dataset '" + d.name + "' has no cursor");
      const std::string cast = PgTypeName(d.columns[static_cast<size_t>(ci)].type);
      pg.ExecParams(
          "INSERT INTO ops.watermarks AS w (pipeline, dataset, watermark, ds, run_id) VALUES ($1, $2, $3::jsonb, $4, $5) "
          "ON CONFLICT (pipeline, dataset) DO UPDATE SET watermark = EXCLUDED.watermark, ds = EXCLUDED.ds, "
          "run_id = EXCLUDED.run_id, updated_at = now() "
          "WHERE ((EXCLUDED.watermark->>'cursor')::" + cast + ", EXCLUDED.watermark->'key') > "
          "((w.watermark->>'cursor')::" + cast + ", w.watermark->'key')",
          {req.pipeline(), d.name, manifest->watermark, req.ds(), manifest->run_id});
    }
    pg.Exec("COMMIT");
    if (!d.silver.empty()) {
      auto conn = PgConnect(DsnForTask(config_.warehouse_dsn, req));
      pqxx::read_transaction tx(*conn);
      tx.exec("SET LOCAL TIME ZONE 'UTC'");
      const long long n = ExportSilver(tx, *store, d, req.ds(), manifest->run_id,
                                       ParseParquetCodec(d.silver, "datasets." + d.name + ".silver"));
      spdlog::info("exported silver dataset={} ds={} rows={}", d.name, req.ds(), n);
    }
    metrics_.rows.Add({{"dataset", d.name}}).Increment(static_cast<double>(copied));
    spdlog::info("loaded dataset={} ds={} run_id={} rows={}", d.name, req.ds(), manifest->run_id, copied);
    return copied;
  }

  long long RunModels(const TaskRequest& req) {
    auto conn = PgConnect(DsnForTask(config_.warehouse_dsn, req));
    pqxx::work tx(*conn);
    tx.exec("SET LOCAL TIME ZONE 'UTC'");
    // A day's statements read a day's keys through indexes; their estimated cost over a large
    // table still crosses the JIT thresholds, and compiling (~0.5 s a statement) costs more
    // than the statement.
    tx.exec("SET LOCAL jit = off");
    // One builder per warehouse at a time: models of two dates touch the same keys.
    tx.exec("SELECT pg_advisory_xact_lock(7400002)");
    for (const Model& model : models_) {
      const Model* m = &model;
      const auto start = std::chrono::steady_clock::now();
      RunModel(tx, *m, req.ds());
      spdlog::info("built model={} ds={} seconds={:.3f}", m->name, req.ds(),
                   std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    }
    RunSqlModels(tx, spec_, req.ds());
    // The task's rows: the day's rows of the declared facts (a pipeline without facts reports 0).
    long long rows = 0;
    for (const auto& f : spec_.facts)
      rows += tx.exec_params("SELECT count(*) FROM dwh." + QuoteIdent(f.name) +
                                 " WHERE date_key = to_char($1::date, 'YYYYMMDD')::int",
                             req.ds())[0][0]
                  .as<long long>();
    tx.commit();
    return rows;
  }

  // serving takes the marts' changes in one transaction: readers see the previous publication
  // until commit, then the new one, never a mix. What changed comes from the statement triggers
  // on marts (ops.mart_day_changes / mart_key_changes), so a publish copies the days and keys the
  // runs since the last one touched, not the whole marts; a table published for the first time
  // (or one with neither a ds column nor a primary key) is copied whole. Every (mart, day) that
  // changed is marked pending for the lake's gold layer, then rewritten from serving.
  long long PublishMarts(const TaskRequest& req) {
    auto conn = PgConnect(DsnForTask(config_.warehouse_dsn, req));
    pqxx::work tx(*conn);
    tx.exec("SET LOCAL jit = off");  // per-key copies, as in the model build
    tx.exec("SELECT pg_advisory_xact_lock(7400002)");  // not while a model build is writing marts
    const auto tables = tx.exec(
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'marts' AND table_type = 'BASE TABLE' "
        "ORDER BY table_name");
    const auto v = tx.exec_params("INSERT INTO serving.publications (ds, run_id) VALUES ($1, $2) RETURNING version",
                                  req.ds(), req.run_id());
    const std::string version = v[0][0].c_str();
    long long rows = 0;
    for (const auto& t : tables) {
      const std::string mart = t[0].c_str(), name = QuoteIdent(mart);
      // A SQL model marked `publish: false` stays in marts (an intermediate, or not for readers).
      if (std::any_of(spec_.sql_models.begin(), spec_.sql_models.end(),
                      [&](const SqlModel& m) { return m.name == "marts." + mart && !m.Published(); })) {
        // What its change triggers noted is never published: dropped, so it cannot pile up.
        tx.exec_params("DELETE FROM ops.mart_day_changes WHERE mart = $1", mart);
        tx.exec_params("DELETE FROM ops.mart_key_changes WHERE mart = $1", mart);
        continue;
      }
      tx.exec("CREATE TABLE IF NOT EXISTS serving." + name + " (LIKE marts." + name + " INCLUDING ALL)");
      const bool tracked = tx.exec_params("SELECT ops.install_change_triggers($1)", mart)[0][0].as<bool>();
      const bool by_day = !tx.exec_params("SELECT 1 FROM information_schema.columns WHERE table_schema = 'marts' "
                                          "AND table_name = $1 AND column_name = 'ds'", mart).empty();
      const bool first = !tx.exec_params("INSERT INTO ops.serving_tables (mart) VALUES ($1) ON CONFLICT DO NOTHING "
                                         "RETURNING 1", mart).empty();
      if (first || !tracked) {
        tx.exec_params("DELETE FROM ops.mart_day_changes WHERE mart = $1", mart);
        tx.exec_params("DELETE FROM ops.mart_key_changes WHERE mart = $1", mart);
        tx.exec("DELETE FROM serving." + name);
        rows += tx.exec("INSERT INTO serving." + name + " SELECT * FROM marts." + name).affected_rows();
        if (by_day)
          tx.exec_params("INSERT INTO ops.gold_pending (mart, ds, version) SELECT DISTINCT $1::text, ds, $2::bigint FROM "
                         "marts." + name + " ON CONFLICT (mart, ds) DO UPDATE SET version = EXCLUDED.version",
                         mart, version);
      } else if (by_day) {
        tx.exec("CREATE TEMP TABLE tmp_publish_days (ds date) ON COMMIT DROP");
        tx.exec_params("WITH d AS (DELETE FROM ops.mart_day_changes WHERE mart = $1 RETURNING ds) "
                       "INSERT INTO tmp_publish_days SELECT DISTINCT ds FROM d", mart);
        tx.exec("DELETE FROM serving." + name + " WHERE ds IN (SELECT ds FROM tmp_publish_days)");
        rows += tx.exec("INSERT INTO serving." + name + " SELECT * FROM marts." + name +
                        " WHERE ds IN (SELECT ds FROM tmp_publish_days)").affected_rows();
        tx.exec_params("INSERT INTO ops.gold_pending (mart, ds, version) SELECT $1::text, ds, $2::bigint FROM tmp_publish_days "
                       "ON CONFLICT (mart, ds) DO UPDATE SET version = EXCLUDED.version", mart, version);
        tx.exec("DROP TABLE tmp_publish_days");
      } else {
        // The primary key's columns and types, to turn the recorded JSON keys back into rows.
        std::string cols, typed;
        int i = 0;
        for (const auto& c : tx.exec_params(
                 "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_index x "
                 "JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = ANY (x.indkey::int2[]) "
                 "WHERE x.indrelid = ('marts.' || quote_ident($1))::regclass AND x.indisprimary "
                 "ORDER BY array_position(x.indkey::int2[], a.attnum)", mart)) {
          cols += (cols.empty() ? "" : ", ") + QuoteIdent(c[0].c_str());
          typed += (typed.empty() ? "" : ", ") + std::string("(key->>") + std::to_string(i++) + ")::" + c[1].c_str();
        }
        tx.exec("CREATE TEMP TABLE tmp_publish_keys (key jsonb) ON COMMIT DROP");
        tx.exec_params("WITH d AS (DELETE FROM ops.mart_key_changes WHERE mart = $1 RETURNING key) "
                       "INSERT INTO tmp_publish_keys SELECT key FROM d", mart);
        const std::string keys = "(" + cols + ") IN (SELECT " + typed + " FROM tmp_publish_keys)";
        tx.exec("DELETE FROM serving." + name + " WHERE " + keys);
        rows += tx.exec("INSERT INTO serving." + name + " SELECT * FROM marts." + name + " WHERE " + keys).affected_rows();
        tx.exec("DROP TABLE tmp_publish_keys");
      }
      // The published day's partition exists for every mart with days, even when empty.
      if (by_day)
        tx.exec_params("INSERT INTO ops.gold_pending (mart, ds, version) VALUES ($1, $2, $3) "
                       "ON CONFLICT (mart, ds) DO UPDATE SET version = EXCLUDED.version", mart, req.ds(), version);
    }
    tx.commit();
    spdlog::info("published version={} ds={} run_id={} tables={} rows={}", version, req.ds(), req.run_id(),
                 tables.size(), rows);
    const long long exported = ExportPendingGold(*conn, req.run_id());
    spdlog::info("exported gold ds={} rows={}", req.ds(), exported);
    return rows;
  }

  // Writes every pending gold partition from serving, each in one repeatable-read snapshot
  // labelled with the publication it holds, and clears it once written and read back. What a
  // crash leaves pending is written by the next publish.
  long long ExportPendingGold(pqxx::connection& conn, const std::string& run_id) {
    const std::unique_ptr<LakeStore> lake = OpenLakeStore(config_.lake_root);
    pqxx::result pending;
    {
      pqxx::read_transaction tx(conn);
      pending = tx.exec("SELECT mart, ds::text FROM ops.gold_pending ORDER BY ds, mart");
    }
    long long rows = 0;
    for (const auto& p : pending) {
      const std::string mart = p[0].c_str(), ds = p[1].c_str();
      pqxx::transaction<pqxx::isolation_level::repeatable_read> tx(conn);
      tx.exec("SET LOCAL TIME ZONE 'UTC'");
      const long long published = tx.exec("SELECT coalesce(max(version), 0) FROM serving.publications")[0][0].as<long long>();
      const long long n = ExportGold(tx, *lake, mart, ds, run_id, published, ParquetCodec::kZstd);
      rows += n;
      tx.exec_params("INSERT INTO ops.gold_partitions (mart, ds, version, rows, run_id) VALUES ($1, $2, $3, $4, $5) "
                     "ON CONFLICT (mart, ds) DO UPDATE SET version = EXCLUDED.version, rows = EXCLUDED.rows, "
                     "run_id = EXCLUDED.run_id, written_at = now()",
                     mart, ds, published, n, run_id);
      tx.exec_params("DELETE FROM ops.gold_pending WHERE mart = $1 AND ds = $2 AND version <= $3", mart, ds, published);
      tx.commit();
    }
    return rows;
  }

  Config config_;
  PipelineSpec spec_;
  std::vector<Model> models_;
  Metrics metrics_;
  LeaseKeeper leases_;  // outlives runner_: its tasks release their leases
  TaskRunner runner_;
  CdcApplier cdc_;
};

}  // namespace

std::unique_ptr<Component> MakeLoader(const Config& config, prometheus::Registry& registry) {
  return std::make_unique<LoaderImpl>(config, registry);
}

}  // namespace strata::loader

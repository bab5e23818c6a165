// Warehouse models against a real PostgreSQL (database strata_pgtest, recreated per run):
// exact SCD2 rows, fact keys of the version valid at order time, marts, and idempotency.
#include <gtest/gtest.h>

#include <cstdlib>
#include <map>
#include <random>
#include <pqxx/pqxx>

#include "common/pg.h"
#include "common/spec.h"
#include "services/warehouse_loader/cdc_apply.h"
#include "services/quality/checks.h"
#include "services/warehouse_loader/models.h"
#include "tests/unit/pg_warehouse.h"
#include "tests/unit/visits_spec.h"

namespace strata::loader {
namespace {

// valid_from as epoch seconds; a first version reaches back to -infinity.
const std::string kEpochFrom =
    "CASE WHEN valid_from = '-infinity' THEN '-infinity' ELSE extract(epoch FROM valid_from)::bigint::text END";

using pgtest::AdminDsn;

class ModelsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (AdminDsn().empty()) GTEST_SKIP() << "STRATA_PG_ADMIN_DSN not set";
    wh_ = std::make_unique<pgtest::PgWarehouse>("strata_pgtest");
    PipelineSpec demo = LoadPipelineSpec(std::getenv("STRATA_PIPELINE_SPEC"));
    pgtest::KeepSqlModels(demo, {"marts.daily_sales", "marts.product_daily_sales"});
    UseSpec(std::move(demo), {"dim_product", "dim_customer", "fact_sales", "orders_current"});
  }

  void UseSpec(PipelineSpec spec, std::vector<std::string> models) {
    spec.models = std::move(models);
    spec_ = std::move(spec);
    wh_->Install(spec_);
  }

  void Exec(const std::string& sql) { wh_->Exec(sql); }
  void Build(const std::string& ds) { wh_->Build(spec_, ds); }

  std::string Query(const std::string& sql) {
    std::string out;
    for (const auto& line : wh_->Rows(sql)) out += line + "\n";
    return out;
  }

  std::string Checksum() {
    return Query(
        "SELECT md5(string_agg(x, ',' ORDER BY x)) FROM ("
        "SELECT 'c' || t::text x FROM dwh.dim_customer t UNION ALL SELECT 'p' || t::text FROM dwh.dim_product t "
        "UNION ALL SELECT 'f' || t::text FROM dwh.fact_sales t UNION ALL SELECT 'd' || t::text FROM marts.daily_sales t "
        "UNION ALL SELECT 'o' || t::text FROM marts.orders_current t) s");
  }

  void StageDay1And2() {
    Exec(R"(
INSERT INTO staging.products VALUES
  ('2024-01-01', 'r1', 1, 'Pen', 'office', 2.5, '2024-01-01 00:01:00+00');
INSERT INTO staging.customers VALUES
  ('2024-01-01', 'r1', 1, 'Ann', 'a@x', 'A street', 'Springfield', 'CA', 'consumer', '2024-01-01 03:00+00', '2024-01-01 03:00+00'),
  ('2024-01-01', 'r1', 2, 'Bob', 'b@x', 'X street', 'Riverton', 'TX', 'corporate', '2024-01-01 04:00+00', '2024-01-01 04:00+00');
INSERT INTO staging.orders VALUES
  ('2024-01-01', 'r1', 10, 1, 'open', '2024-01-01 13:00+00', '2024-01-01 13:00+00');
INSERT INTO staging.order_items VALUES
  ('2024-01-01', 'r1', 10, 1, 1, 2, 2.5, '2024-01-01 13:00+00'),
  ('2024-01-01', 'r1', 10, 2, 1, 4, 2.5, '2024-01-01 13:00+00');
INSERT INTO staging.customers VALUES
  ('2024-01-02', 'r2', 1, 'Ann', 'a@x', 'B street', 'Springfield', 'CA', 'consumer', '2024-01-01 03:00+00', '2024-01-02 08:00+00');
INSERT INTO staging.products VALUES
  ('2024-01-02', 'r2', 1, 'Pen', 'office', 3.0, '2024-01-02 01:00:00+00');
INSERT INTO staging.orders VALUES
  ('2024-01-02', 'r2', 10, 1, 'shipped', '2024-01-01 13:00+00', '2024-01-02 09:00+00'),
  ('2024-01-02', 'r2', 11, 1, 'open', '2024-01-02 14:00+00', '2024-01-02 14:00+00');
INSERT INTO staging.order_items VALUES
  ('2024-01-02', 'r2', 11, 1, 1, 1, 3.0, '2024-01-02 14:00+00');
)");
  }

  std::unique_ptr<pgtest::PgWarehouse> wh_;
  PipelineSpec spec_;
};

TEST_F(ModelsTest, Scd2HistoryFactKeysAndMarts) {
  StageDay1And2();
  Build("2024-01-01");
  Build("2024-01-02");
  EXPECT_EQ(Query("SELECT customer_id, address, valid_from, valid_to, is_current FROM dwh.dim_customer "
                  "WHERE customer_id > 0 ORDER BY customer_id, valid_from"),
            "1|A street|-infinity|2024-01-02 08:00:00+00|f\n"
            "1|B street|2024-01-02 08:00:00+00|infinity|t\n"
            "2|X street|-infinity|infinity|t\n");
  // Order 10 was placed under Ann's first address, order 11 under her second.
  EXPECT_EQ(Query("SELECT f.order_id, f.line_no, c.address, f.amount, f.date_key FROM dwh.fact_sales f "
                  "JOIN dwh.dim_customer c USING (customer_key) ORDER BY 1, 2"),
            "10|1|A street|5.00|20240101\n10|2|A street|10.00|20240101\n11|1|B street|3.00|20240102\n");
  EXPECT_EQ(Query("SELECT ds, orders, units, revenue FROM marts.daily_sales ORDER BY ds"),
            "2024-01-01|1|6|15.00\n2024-01-02|1|1|3.00\n");
  EXPECT_EQ(Query("SELECT order_id, status, amount FROM marts.orders_current ORDER BY 1"),
            "10|shipped|15.00\n11|open|3.00\n");
  EXPECT_EQ(Query("SELECT product_id, price, valid_from, version FROM dwh.dim_product WHERE product_id > 0"),
            "1|3|-infinity|1\n");  // SCD1: overwritten, one version since it was first seen
}

TEST_F(ModelsTest, RebuildingAnyDateKeepsTheWarehouseIdentical) {
  StageDay1And2();
  Build("2024-01-01");
  Build("2024-01-02");
  const std::string before = Checksum();
  Build("2024-01-02");
  EXPECT_EQ(Checksum(), before);
  Build("2024-01-01");
  EXPECT_EQ(Checksum(), before);
  EXPECT_EQ(Query("SELECT count(*) FROM dwh.dim_customer WHERE customer_id > 0"), "3\n");
}

TEST_F(ModelsTest, SeveralChangesInOneDayApplyInOrderAndLateChangeSplitsInterval) {
  StageDay1And2();
  Build("2024-01-01");
  Build("2024-01-02");
  Exec(R"(
INSERT INTO staging.customers VALUES
  ('2024-01-03', 'r3', 2, 'Bob', 'b@x', 'Z street', 'Riverton', 'TX', 'corporate', '2024-01-01 04:00+00', '2024-01-03 07:00+00'),
  ('2024-01-03', 'r3', 2, 'Bob', 'b@x', 'Y street', 'Riverton', 'TX', 'corporate', '2024-01-01 04:00+00', '2024-01-03 05:00+00'),
  ('2024-01-03', 'r3', 1, 'Ann', 'a@x', 'Late street', 'Springfield', 'CA', 'consumer', '2024-01-01 03:00+00', '2024-01-01 20:00+00');
)");
  Build("2024-01-03");
  EXPECT_EQ(Query("SELECT customer_id, address, valid_from, valid_to, is_current FROM dwh.dim_customer "
                  "WHERE customer_id > 0 ORDER BY customer_id, valid_from"),
            "1|A street|-infinity|2024-01-01 20:00:00+00|f\n"
            "1|Late street|2024-01-01 20:00:00+00|2024-01-02 08:00:00+00|f\n"
            "1|B street|2024-01-02 08:00:00+00|infinity|t\n"
            "2|X street|-infinity|2024-01-03 05:00:00+00|f\n"
            "2|Y street|2024-01-03 05:00:00+00|2024-01-03 07:00:00+00|f\n"
            "2|Z street|2024-01-03 07:00:00+00|infinity|t\n");
  EXPECT_EQ(Query("SELECT count(*) FROM (SELECT customer_id FROM dwh.dim_customer WHERE is_current "
                  "GROUP BY 1 HAVING count(*) > 1) d"),
            "0\n");
}

}  // namespace
}  // namespace strata::loader

// Property test: random histories (several changes a day, late changes that land inside an
// older interval, re-runs of earlier days) through the SCD2 builder, compared after every day
// with a reference model kept in this test: every version ever staged, each valid until the
// next one.
namespace strata::loader {
namespace {

struct RefVersion {
  std::string address;
  long long version = 0;
};

TEST_F(ModelsTest, Scd2MatchesAReferenceModelOverRandomHistories) {
  std::mt19937 rng(20241121);
  // reference: customer -> (updated_at epoch seconds -> address)
  std::map<int, std::map<long long, std::string>> ref;
  const long long day0 = 1704067200;  // 2024-01-01T00:00:00Z
  std::string checksum_before_rerun;
  for (int day = 0; day < 12; ++day) {
    const std::string ds = "2024-01-" + std::string(day + 1 < 10 ? "0" : "") + std::to_string(day + 1);
    std::string values;
    for (int customer = 1; customer <= 8; ++customer) {
      const int changes = static_cast<int>(rng() % 4);  // 0..3 versions of this customer today
      for (int k = 0; k < changes; ++k) {
        long long at;
        if (day > 0 && rng() % 4 == 0) {
          at = day0 + static_cast<long long>(rng() % static_cast<unsigned>(day * 86400));  // late: an earlier day
        } else {
          at = day0 + day * 86400LL + static_cast<long long>(rng() % 86400);
        }
        if (ref[customer].count(at)) continue;  // one version per instant
        const std::string addr = "addr-" + std::to_string(customer) + "-" + std::to_string(rng() % 3);
        ref[customer][at] = addr;
        values += std::string(values.empty() ? "" : ",") + "('" + ds + "', 'r', " + std::to_string(customer) +
                  ", 'n', 'e', '" + addr + "', 'c', 's', 'seg', to_timestamp(" + std::to_string(day0) +
                  "), to_timestamp(" + std::to_string(at) + "))";
      }
    }
    if (!values.empty()) Exec("INSERT INTO staging.customers VALUES " + values);
    Build(ds);
    if (day > 2 && rng() % 3 == 0) {  // re-run an earlier day: nothing may change
      const std::string before = Checksum();
      Build("2024-01-0" + std::to_string(1 + rng() % 3));
      ASSERT_EQ(Checksum(), before) << "re-running an earlier day changed the warehouse after day " << ds;
    }
    // Expected rows, in the same shape the query below prints.
    std::string expected;
    for (const auto& [customer, observed] : ref) {
      // A version starts only where the address (type 2) changes.
      std::vector<std::pair<long long, std::string>> versions;
      for (const auto& [at, addr] : observed)
        if (versions.empty() || versions.back().second != addr) versions.emplace_back(at, addr);
      for (size_t i = 0; i < versions.size(); ++i) {
        const bool last = i + 1 == versions.size();
        // The first version reaches back to -infinity; observed_from keeps when it was seen.
        expected += std::to_string(customer) + "|" + versions[i].second + "|" +
                    (i == 0 ? "-infinity" : std::to_string(versions[i].first)) + "|" +
                    (last ? "infinity" : std::to_string(versions[i + 1].first)) + "|" + (last ? "t" : "f") + "|" +
                    std::to_string(i + 1) + "|" + std::to_string(versions[i].first) + "\n";
      }
    }
    ASSERT_EQ(Query("SELECT customer_id, address, " + kEpochFrom + ", "
                    "CASE WHEN valid_to = 'infinity' THEN 'infinity' ELSE extract(epoch FROM valid_to)::bigint::text END, "
                    "is_current, version, extract(epoch FROM observed_from)::bigint FROM dwh.dim_customer "
                    "WHERE customer_id > 0 ORDER BY customer_id, valid_from"),
              expected)
        << "after day " << ds;
  }
}

TEST_F(ModelsTest, OverlappingVersionsAreRejectedByTheDatabase) {
  StageDay1And2();
  Build("2024-01-01");
  // Bypassing the builder: the exclusion constraint refuses a version overlapping another.
  EXPECT_THROW(Exec("INSERT INTO dwh.dim_customer (customer_id, name, valid_from, valid_to, is_current) "
                    "VALUES (1, 'x', '2024-01-01 05:00+00', '2024-01-01 06:00+00', false)"),
               pqxx::sql_error);
  EXPECT_THROW(Exec("INSERT INTO dwh.dim_customer (customer_id, name, valid_from, valid_to, is_current) "
                    "VALUES (1, 'x', '2024-02-01 00:00+00', 'infinity', true)"),
               pqxx::sql_error);  // a second current row
}

}  // namespace
}  // namespace strata::loader

// Deletions, type-1 columns and inferred members, on a dimension declared for this test.
namespace strata::loader {
namespace {

const char* kPeopleSpec = R"(
pipeline: people
datasets:
  - name: people
    source: {type: postgres, table: src.people, cursor: changed_at}
    key: [id]
    columns:
      - {name: id, type: int}
      - {name: name, type: text}
      - {name: tier, type: text}
      - {name: email, type: text}
      - {name: gone, type: bool}
      - {name: changed_at, type: timestamp}
models: [dim_person]
dimensions:
  - {name: dim_person, from: people, key: id, effective_from: changed_at, deleted: gone,
     scd2: [name, tier], scd1: [email]}
)";

struct Obs {
  std::string name, tier, email;
  bool gone = false;
};

// The reference: from every observation of a key, in business-time order, the versions a
// type-2 dimension must hold.
std::string ExpectedPeople(const std::map<int, std::map<long long, Obs>>& ref) {
  std::string out;
  for (const auto& [id, observed] : ref) {
    std::string email, as_of = "NULL";
    for (const auto& [at, o] : observed)
      if (!o.gone) email = o.email, as_of = std::to_string(at);
    struct Start {
      long long at;
      const Obs* o;
    };
    std::vector<Start> starts;
    for (const auto& [at, o] : observed) {
      const std::string sig = o.gone ? "deleted" : o.name + "|" + o.tier;
      const std::string prev = starts.empty() ? "" : (starts.back().o->gone ? "deleted" : starts.back().o->name + "|" + starts.back().o->tier);
      if (starts.empty() || sig != prev) starts.push_back({at, &o});
    }
    int version = 0;
    for (size_t i = 0; i < starts.size(); ++i) {
      if (starts[i].o->gone) continue;
      const bool last = i + 1 == starts.size();
      ++version;
      out += std::to_string(id) + "|" + starts[i].o->name + "|" + starts[i].o->tier + "|" + email + "|" +
             (version == 1 ? "-infinity" : std::to_string(starts[i].at)) + "|" +
             (last ? "infinity" : std::to_string(starts[i + 1].at)) + "|" + (last ? "t" : "f") + "|" +
             (!last && starts[i + 1].o->gone ? "t" : "f") + "|" + std::to_string(version) + "|" + as_of + "|" +
             std::to_string(starts[i].at) + "\n";
    }
  }
  return out;
}

TEST_F(ModelsTest, DeclaredDimensionMatchesAReferenceModelWithDeletesAndTypeOneColumns) {
  UseSpec(ParsePipelineSpec(kPeopleSpec, "people.yaml"), {"dim_person"});
  std::mt19937 rng(7);
  std::map<int, std::map<long long, Obs>> ref;
  const long long day0 = 1704067200;
  for (int day = 0; day < 15; ++day) {
    const std::string ds = "2024-01-" + std::string(day + 1 < 10 ? "0" : "") + std::to_string(day + 1);
    std::string values;
    for (int id = 1; id <= 10; ++id) {
      const int changes = static_cast<int>(rng() % 4);
      for (int k = 0; k < changes; ++k) {
        const long long at = (day > 0 && rng() % 4 == 0)
                                 ? day0 + static_cast<long long>(rng() % static_cast<unsigned>(day * 86400))
                                 : day0 + day * 86400LL + static_cast<long long>(rng() % 86400);
        if (ref[id].count(at)) continue;
        Obs o{"n" + std::to_string(rng() % 2), "t" + std::to_string(rng() % 2), "e" + std::to_string(rng() % 5),
              rng() % 6 == 0};
        ref[id][at] = o;
        values += std::string(values.empty() ? "" : ",") + "('" + ds + "', 'r', " + std::to_string(id) + ", '" + o.name +
                  "', '" + o.tier + "', '" + o.email + "', " + (o.gone ? "true" : "false") + ", to_timestamp(" +
                  std::to_string(at) + "))";
      }
    }
    if (!values.empty()) Exec("INSERT INTO staging.people VALUES " + values);
    Build(ds);
    if (day > 2 && rng() % 3 == 0) {
      const std::string before = Query("SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM dwh.dim_person t");
      Build("2024-01-0" + std::to_string(1 + rng() % 3));
      ASSERT_EQ(Query("SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM dwh.dim_person t"), before)
          << "re-running an earlier day changed dim_person after " << ds;
    }
    ASSERT_EQ(Query("SELECT id, name, tier, email, " + kEpochFrom + ", "
                    "CASE WHEN valid_to = 'infinity' THEN 'infinity' ELSE extract(epoch FROM valid_to)::bigint::text END, "
                    "is_current, is_deleted, version, extract(epoch FROM attributes_as_of)::bigint, "
                    "extract(epoch FROM observed_from)::bigint FROM dwh.dim_person WHERE person_key <> 0 ORDER BY id, valid_from"),
              ExpectedPeople(ref))
        << "after day " << ds;
  }
  // The property is not vacuous: the run deleted keys, brought some back, and collapsed no-op changes.
  EXPECT_NE(Query("SELECT count(*) FROM dwh.dim_person WHERE is_deleted"), "0\n");
  EXPECT_EQ(Query("SELECT count(*) FROM (SELECT id FROM dwh.dim_person WHERE is_current GROUP BY 1 HAVING count(*) > 1) x"),
            "0\n");
}

TEST_F(ModelsTest, DeletionClosesTheVersionAndAReturnStartsANewOne) {
  UseSpec(ParsePipelineSpec(kPeopleSpec, "people.yaml"), {"dim_person"});
  Exec(R"(INSERT INTO staging.people VALUES
    ('2024-01-01', 'r1', 7, 'Ann', 'gold', 'a@x', false, '2024-01-01 10:00+00'),
    ('2024-01-02', 'r2', 7, 'Ann', 'gold', 'a@x', true,  '2024-01-02 11:00+00'))");
  Build("2024-01-01");
  Build("2024-01-02");
  EXPECT_EQ(Query("SELECT name, valid_from, valid_to, is_current, is_deleted FROM dwh.dim_person WHERE id = 7"),
            "Ann|-infinity|2024-01-02 11:00:00+00|f|t\n");
  Exec("INSERT INTO staging.people VALUES ('2024-01-03', 'r3', 7, 'Ann', 'gold', 'ann@y', false, '2024-01-03 12:00+00')");
  Build("2024-01-03");
  EXPECT_EQ(Query("SELECT email, valid_from, valid_to, is_current, is_deleted, version FROM dwh.dim_person WHERE id = 7 "
                  "ORDER BY valid_from"),
            "ann@y|-infinity|2024-01-02 11:00:00+00|f|t|1\n"
            "ann@y|2024-01-03 12:00:00+00|infinity|t|f|2\n");
}

TEST_F(ModelsTest, EarlyArrivingFactGetsAnInferredMemberCompletedInPlace) {
  // Order 20 of customer 5 arrives on day 1; customer 5 is only extracted on day 2.
  Exec(R"(
INSERT INTO staging.products VALUES ('2024-01-01', 'r1', 1, 'Pen', 'office', 2.5, '2024-01-01 00:01:00+00');
INSERT INTO staging.orders VALUES ('2024-01-01', 'r1', 20, 5, 'open', '2024-01-01 13:00+00', '2024-01-01 13:00+00'),
                                  ('2024-01-01', 'r1', 21, 6, 'open', '2024-01-01 14:00+00', '2024-01-01 14:00+00');
INSERT INTO staging.order_items VALUES ('2024-01-01', 'r1', 20, 1, 1, 1, 2.5, '2024-01-01 13:00+00'),
                                       ('2024-01-01', 'r1', 21, 1, 1, 1, 2.5, '2024-01-01 14:00+00');)");
  Build("2024-01-01");
  EXPECT_EQ(Query("SELECT customer_id, name, valid_from, valid_to, is_current, is_inferred FROM dwh.dim_customer "
                  "WHERE customer_id > 0 ORDER BY 1"),
            "5|NULL|-infinity|infinity|t|t\n6|NULL|-infinity|infinity|t|t\n");
  const std::string inferred_key = Query("SELECT customer_key FROM dwh.dim_customer WHERE customer_id = 5");
  EXPECT_EQ(Query("SELECT customer_key FROM dwh.fact_sales WHERE order_id = 20"), inferred_key);
  // Customer 5 existed before the order; customer 6 only registered after placing it.
  Exec(R"(INSERT INTO staging.customers VALUES
    ('2024-01-02', 'r2', 5, 'Eve', 'e@x', 'E street', 'Fairview', 'NY', 'consumer', '2024-01-01 09:00+00', '2024-01-01 09:00+00'),
    ('2024-01-02', 'r2', 6, 'Gus', 'g@x', 'G street', 'Bristol', 'OH', 'consumer', '2024-01-01 20:00+00', '2024-01-01 20:00+00'))");
  Build("2024-01-02");
  EXPECT_EQ(Query("SELECT customer_id, name, valid_from, valid_to, is_current, is_inferred FROM dwh.dim_customer "
                  "WHERE customer_id > 0 ORDER BY 1"),
            "5|Eve|-infinity|infinity|t|f\n6|Gus|-infinity|infinity|t|f\n");
  EXPECT_EQ(Query("SELECT customer_id, observed_from FROM dwh.dim_customer WHERE customer_id > 0 ORDER BY 1"),
            "5|2024-01-01 09:00:00+00\n6|2024-01-01 20:00:00+00\n");
  EXPECT_EQ(Query("SELECT customer_key FROM dwh.dim_customer WHERE customer_id = 5"), inferred_key)
      << "the inferred row is completed in place";
  // Both orders keep their customer: order 21 predates customer 6's first observed version, which
  // covers the unobserved time before it.
  EXPECT_EQ(Query("SELECT f.order_id, c.customer_id, c.name FROM dwh.fact_sales f JOIN dwh.dim_customer c "
                  "USING (customer_key) ORDER BY 1"),
            "20|5|Eve\n21|6|Gus\n");
}

// Rows deleted in the source reach the warehouse through CDC tombstones (raw.<t>_current).
TEST_F(ModelsTest, RowsDeletedInTheSourceLeaveFactsAndMartsAndAreNotResurrected) {
  StageDay1And2();
  Build("2024-01-01");
  Build("2024-01-02");
  const std::string gap = "SELECT * FROM (" + quality::FactGapSql(spec_, *spec_.FindFact("fact_sales"), "amount",
                                                                    "'2024-01-01'::date") + ") g ORDER BY 1, 2";
  EXPECT_EQ(Query(gap), "");
  // Line (10, 2) is deleted, and the whole order 11 (its line, then the order).
  Exec("INSERT INTO raw.order_items_current (order_id, line_no, product_id, quantity, unit_price, updated_at, _lsn, _seq, "
       "_commit_time, _deleted) VALUES (10, 2, 1, 4, 2.5, '2024-01-01 13:00+00', '0/10', 1, now(), true), "
       "(11, 1, 1, 1, 3.0, '2024-01-02 14:00+00', '0/11', 1, now(), true)");
  Exec("INSERT INTO raw.orders_current (order_id, customer_id, status, ordered_at, updated_at, _lsn, _seq, _commit_time, "
       "_deleted) VALUES (11, 1, 'open', '2024-01-02 14:00+00', '2024-01-02 14:00+00', '0/11', 2, now(), true)");
  Build("2024-01-03");  // any later day's build applies the deletes, whatever it staged
  EXPECT_EQ(Query("SELECT order_id, line_no, amount FROM dwh.fact_sales ORDER BY 1, 2"), "10|1|5.00\n");
  EXPECT_EQ(Query("SELECT ds, orders, units, revenue FROM marts.daily_sales ORDER BY ds"), "2024-01-01|1|2|5.00\n");
  EXPECT_EQ(Query("SELECT order_id, status, amount FROM marts.orders_current ORDER BY 1"), "10|shipped|5.00\n");
  EXPECT_EQ(Query(gap), "") << "a deleted line is no gap";
  // Re-running the days whose staged rows still hold the deleted lines brings none of them back.
  const std::string after = Checksum();
  Build("2024-01-02");
  Build("2024-01-01");
  EXPECT_EQ(Checksum(), after);
  // The reconciliation sees a line that lost its fact, with its amount.
  Exec("DELETE FROM dwh.fact_sales WHERE order_id = 10 AND line_no = 1");
  EXPECT_EQ(Query(gap), "10|1|5.00\n");
}

TEST_F(ModelsTest, AProductDeletedBeforeItsFirstSnapshotIsAnInferredMemberMarkedDeleted) {
  StageDay1And2();
  Exec("INSERT INTO staging.order_items VALUES ('2024-01-01', 'r1', 10, 3, 9, 1, 7.0, '2024-01-01 13:00+00')");
  Build("2024-01-01");
  EXPECT_EQ(Query("SELECT product_id, valid_from, valid_to, is_current, is_inferred, is_deleted FROM dwh.dim_product "
                  "WHERE product_id = 9"),
            "9|-infinity|infinity|t|t|t\n");
  EXPECT_EQ(Query("SELECT p.product_id FROM dwh.fact_sales f JOIN dwh.dim_product p USING (product_key) "
                  "WHERE f.order_id = 10 AND f.line_no = 3"),
            "9\n") << "the line keeps its own product";
  // It shows up in a later snapshot after all: completed in place, no longer deleted.
  Exec("INSERT INTO staging.products VALUES ('2024-01-02', 'r2', 9, 'Ink', 'office', 7.0, '2023-12-30 00:00+00')");
  Build("2024-01-02");
  EXPECT_EQ(Query("SELECT product_id, name, valid_from, is_current, is_inferred, is_deleted FROM dwh.dim_product "
                  "WHERE product_id = 9"),
            "9|Ink|-infinity|t|f|f\n");
}

// Cost follows the day: every statement of a day's build can reach the history it needs through
// an index. With sequential scans disabled the planner still picks one where no index path
// exists, so a "Seq Scan" of a table that grows with history (anything but the build's own temp
// tables and the static date dimension) is a statement whose cost would grow with the
// warehouse's age. (Which path the planner takes on real sizes is measured by `make bench`.)
TEST_F(ModelsTest, EveryStatementOfADaysBuildReachesHistoryThroughIndexes) {
  const PipelineSpec demo = LoadPipelineSpec(std::getenv("STRATA_PIPELINE_SPEC"));
  UseSpec(demo, demo.models);  // every model of the demo
  StageDay1And2();
  Build("2024-01-01");
  Build("2024-01-02");
  Exec("INSERT INTO raw.order_items_current (order_id, line_no, product_id, quantity, unit_price, updated_at, _lsn, _seq, "
       "_commit_time, _deleted) VALUES (10, 2, 1, 4, 2.5, '2024-01-01 13:00+00', '0/10', 1, now(), true)");
  Exec(R"(INSERT INTO staging.customers VALUES
  ('2024-01-03', 'r3', 2, 'Bob', 'b@x', 'Late street', 'Riverton', 'TX', 'corporate', '2024-01-01 04:00+00', '2024-01-01 09:00+00');
INSERT INTO staging.products VALUES ('2024-01-03', 'r3', 1, 'Pen', 'office', 3.5, '2024-01-03 01:00:00+00');
INSERT INTO staging.orders VALUES ('2024-01-03', 'r3', 10, 1, 'delivered', '2024-01-01 13:00+00', '2024-01-03 09:00+00');
INSERT INTO staging.order_items VALUES ('2024-01-03', 'r3', 12, 1, 1, 1, 3.5, '2024-01-03 14:00+00');
INSERT INTO staging.orders VALUES ('2024-01-03', 'r3', 12, 2, 'open', '2024-01-03 14:00+00', '2024-01-03 14:00+00');)");
  pqxx::work tx(wh_->conn());
  tx.exec("SET LOCAL TIME ZONE 'UTC'");
  tx.exec("SET LOCAL enable_seqscan = off");
  std::string scans;
  for (const Model& m : ResolveModels(spec_)) {
    for (const auto& sql : m.statements) {
      std::string inlined = sql;
      for (size_t p = inlined.find("$1"); p != std::string::npos; p = inlined.find("$1", p)) inlined.replace(p, 2, "'2024-01-03'::date");
      if (inlined.rfind("ANALYZE", 0) != 0) {
        for (const auto& row : tx.exec("EXPLAIN " + inlined)) {
          const std::string line = row[0].c_str();
          const size_t at = line.find("Seq Scan on ");
          if (at == std::string::npos) continue;
          const std::string rel = line.substr(at + 12, line.find(' ', at + 12) - at - 12);
          if (rel.rfind("tmp_", 0) == 0 || rel == "dim_date") continue;
          scans += m.name + ": " + rel + " in\n" + inlined.substr(0, 300) + "\n\n";
        }
      }
      tx.exec(inlined);  // later statements read the temp tables this one creates
    }
  }
  EXPECT_EQ(scans, "");
}

TEST_F(ModelsTest, ASoftDeleteColumnDeletesTheFact) {
  PipelineSpec spec = spec_;
  DatasetSpec& items = const_cast<DatasetSpec&>(*spec.Find("order_items"));
  items.columns.push_back({"deleted_at", ColumnType::kTimestamp, ""});
  spec.facts[0].deleted = "deleted_at";
  Exec("DROP TABLE staging.order_items");  // staged again with the new column
  UseSpec(spec, spec_.models);
  Exec(R"(
INSERT INTO staging.customers VALUES
  ('2024-01-01', 'r1', 1, 'Ann', 'a@x', 'A street', 'Springfield', 'CA', 'consumer', '2024-01-01 03:00+00', '2024-01-01 03:00+00');
INSERT INTO staging.products VALUES ('2024-01-01', 'r1', 1, 'Pen', 'office', 2.5, '2024-01-01 00:01:00+00');
INSERT INTO staging.orders VALUES ('2024-01-01', 'r1', 10, 1, 'open', '2024-01-01 13:00+00', '2024-01-01 13:00+00');
INSERT INTO staging.order_items VALUES
  ('2024-01-01', 'r1', 10, 1, 1, 2, 2.5, '2024-01-01 13:00+00', NULL),
  ('2024-01-01', 'r1', 10, 2, 1, 4, 2.5, '2024-01-01 13:00+00', NULL);)");
  Build("2024-01-01");
  // The application marks line 2 deleted the next day.
  Exec("INSERT INTO staging.order_items VALUES ('2024-01-02', 'r2', 10, 2, 1, 4, 2.5, '2024-01-02 09:00+00', "
       "'2024-01-02 09:00+00')");
  Build("2024-01-02");
  EXPECT_EQ(Query("SELECT order_id, line_no, amount FROM dwh.fact_sales ORDER BY 1, 2"), "10|1|5.00\n");
  EXPECT_EQ(Query("SELECT ds, units, revenue FROM marts.daily_sales"), "2024-01-01|2|5.00\n");
  Build("2024-01-01");  // re-running the day that staged it live brings nothing back
  EXPECT_EQ(Query("SELECT order_id, line_no FROM dwh.fact_sales ORDER BY 1, 2"), "10|1\n");
}

TEST_F(ModelsTest, AGrainMissingFromTheLatestSnapshotIsDeleted) {
  PipelineSpec spec = spec_;
  const_cast<DatasetSpec&>(*spec.Find("order_items")).source.incremental = "snapshot";
  UseSpec(spec, spec_.models);
  StageDay1And2();  // day 2's snapshot of order_items holds only line (11, 1)
  Exec("INSERT INTO staging.order_items VALUES ('2024-01-02', 'r2', 10, 1, 1, 2, 2.5, '2024-01-01 13:00+00')");
  Build("2024-01-01");
  EXPECT_EQ(Query("SELECT order_id, line_no FROM dwh.fact_sales ORDER BY 1, 2"), "10|1\n")
      << "built from day 1's snapshot but judged by the latest: (10, 2) is gone from the source";
  Build("2024-01-02");
  EXPECT_EQ(Query("SELECT order_id, line_no FROM dwh.fact_sales ORDER BY 1, 2"), "10|1\n11|1\n");
  EXPECT_EQ(Query("SELECT ds, units, revenue FROM marts.daily_sales ORDER BY ds"),
            "2024-01-01|2|5.00\n2024-01-02|1|3.00\n");
}

// A dimension whose dataset CDC captures takes every intermediate version and every delete
// from the change stream, which a daily extract cannot see.
TEST_F(ModelsTest, ACapturedDimensionTakesEveryVersionAndDeleteFromTheChangeStream) {
  PipelineSpec spec = spec_;
  spec.cdc.datasets.push_back("customers");
  UseSpec(spec, spec_.models);
  StageDay1And2();
  const std::string cols = "(lsn, seq, op, commit_time, customer_id, name, email, address, city, state, segment, "
                           "created_at, updated_at)";
  // Ann moves twice on day 2 before the extract sees her last address; Bob is deleted on day 3.
  Exec("INSERT INTO raw.customers_changes " + cols + " VALUES "
       "('0/1', 1, 'u', '2024-01-02 05:00+00', 1, 'Ann', 'a@x', 'Interim street', 'Springfield', 'CA', 'consumer', "
       "'2024-01-01 03:00+00', '2024-01-02 05:00+00'), "
       "('0/2', 1, 'u', '2024-01-02 08:00+00', 1, 'Ann', 'a@x', 'B street', 'Springfield', 'CA', 'consumer', "
       "'2024-01-01 03:00+00', '2024-01-02 08:00+00'), "
       "('0/3', 1, 'd', '2024-01-03 10:00+00', 2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)");
  Exec("INSERT INTO raw.customers_current (customer_id, name, email, address, city, state, segment, created_at, updated_at, "
       "_lsn, _seq, _commit_time, _deleted) VALUES (2, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '0/3', 1, "
       "'2024-01-03 10:00+00', true)");
  Build("2024-01-01");
  Build("2024-01-02");
  Build("2024-01-03");
  EXPECT_EQ(Query("SELECT customer_id, address, valid_from, valid_to, is_current, is_deleted FROM dwh.dim_customer "
                  "WHERE customer_id > 0 ORDER BY customer_id, valid_from"),
            "1|A street|-infinity|2024-01-02 05:00:00+00|f|f\n"
            "1|Interim street|2024-01-02 05:00:00+00|2024-01-02 08:00:00+00|f|f\n"
            "1|B street|2024-01-02 08:00:00+00|infinity|t|f\n"
            "2|X street|-infinity|2024-01-03 10:00:00+00|f|t\n");
  const std::string after = Checksum();
  Build("2024-01-02");
  Build("2024-01-03");
  EXPECT_EQ(Checksum(), after) << "re-running the days changes nothing";
}

TEST_F(ModelsTest, FlagPolicyKeepsDeletedFactsOutOfTheMarts) {
  PipelineSpec spec = spec_;
  spec.facts[0].on_delete = "flag";
  UseSpec(spec, spec_.models);
  StageDay1And2();
  Build("2024-01-01");
  Build("2024-01-02");
  Exec("INSERT INTO raw.order_items_current (order_id, line_no, product_id, quantity, unit_price, updated_at, _lsn, _seq, "
       "_commit_time, _deleted) VALUES (10, 2, 1, 4, 2.5, '2024-01-01 13:00+00', '0/10', 1, now(), true)");
  Build("2024-01-02");
  EXPECT_EQ(Query("SELECT order_id, line_no, amount, is_deleted FROM dwh.fact_sales ORDER BY 1, 2"),
            "10|1|5.00|f\n10|2|10.00|t\n11|1|3.00|f\n");
  EXPECT_EQ(Query("SELECT ds, orders, units, revenue FROM marts.daily_sales ORDER BY ds"),
            "2024-01-01|1|2|5.00\n2024-01-02|1|1|3.00\n");
  // The line comes back in the source (re-inserted): the next build revives the fact.
  Exec("UPDATE raw.order_items_current SET _deleted = false, _lsn = '0/20' WHERE order_id = 10 AND line_no = 2");
  Exec("INSERT INTO staging.order_items VALUES ('2024-01-03', 'r3', 10, 2, 1, 4, 2.5, '2024-01-03 10:00+00')");
  Build("2024-01-03");
  EXPECT_EQ(Query("SELECT order_id, line_no, amount, is_deleted FROM dwh.fact_sales ORDER BY 1, 2"),
            "10|1|5.00|f\n10|2|10.00|f\n11|1|3.00|f\n");
  EXPECT_EQ(Query("SELECT ds, orders, units, revenue FROM marts.daily_sales ORDER BY ds"),
            "2024-01-01|1|6|15.00\n2024-01-02|1|1|3.00\n");
}

}  // namespace
}  // namespace strata::loader

// A fact declared in a spec of its own, in replace mode: the day's slice is rebuilt.
namespace strata::loader {
namespace {

TEST_F(ModelsTest, ReplaceModeRebuildsTheDaySliceAndMovesRowsBetweenDays) {
  UseSpec(ParsePipelineSpec(fixtures::VisitsSpec("replace"), "visits.yaml"), {"dim_person", "fact_visit"});
  Exec(R"(
INSERT INTO staging.people VALUES ('2024-01-01', 'r1', 1, 'Ann', '2024-01-01 08:00+00');
INSERT INTO staging.visits VALUES
  ('2024-01-01', 'r1', 1, 1, 60, '2024-01-01 10:00+00', '2024-01-01 10:00+00'),
  ('2024-01-01', 'r1', 2, 1, 30, '2024-01-01 11:00+00', '2024-01-01 11:00+00'),
  ('2024-01-01', 'r1', 4, 9, 90, '2024-01-01 12:00+00', '2024-01-01 12:00+00');)");
  Build("2024-01-01");
  EXPECT_EQ(Query("SELECT f.visit_id, f.date_key, p.id, p.is_inferred, f.minutes FROM dwh.fact_visit f "
                  "JOIN dwh.dim_person p USING (person_key) ORDER BY 1"),
            "1|20240101|1|f|1.00\n2|20240101|1|f|0.50\n4|20240101|9|t|1.50\n");
  // Visit 2 was re-dated to the next day; visit 3 happened then.
  Exec(R"(INSERT INTO staging.visits VALUES
  ('2024-01-02', 'r2', 2, 1, 45, '2024-01-02 10:00+00', '2024-01-02 10:05+00'),
  ('2024-01-02', 'r2', 3, 1, 120, '2024-01-02 09:00+00', '2024-01-02 09:00+00');)");
  Build("2024-01-02");
  Build("2024-01-01");
  EXPECT_EQ(Query("SELECT visit_id, date_key, minutes FROM dwh.fact_visit ORDER BY 1"),
            "1|20240101|1.00\n2|20240102|0.75\n3|20240102|2.00\n4|20240101|1.50\n");
  const std::string before = Query("SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM dwh.fact_visit t");
  Build("2024-01-02");
  EXPECT_EQ(Query("SELECT md5(string_agg(t::text, ',' ORDER BY t::text)) FROM dwh.fact_visit t"), before);
}

}  // namespace
}  // namespace strata::loader

// Hard deletes seen by full snapshots: a key missing from a day's snapshot was deleted that day.
namespace strata::loader {
namespace {

TEST_F(ModelsTest, AKeyMissingFromADaysSnapshotIsClosedAndMarkedDeleted) {
  UseSpec(ParsePipelineSpec(R"(
pipeline: snap
datasets:
  - name: people
    source: {type: postgres, table: src.people, cursor: changed_at, incremental: snapshot}
    key: [id]
    columns:
      - {name: id, type: int}
      - {name: name, type: text}
      - {name: changed_at, type: timestamp}
dimensions:
  - {name: dim_person, from: people, key: id, effective_from: changed_at, scd2: [name], absent_means_deleted: true}
models: [dim_person]
)",
                            "snap.yaml"),
          {"dim_person"});
  Exec(R"(INSERT INTO staging.people VALUES
    ('2024-01-01', 'r1', 1, 'Ann', '2023-12-01 00:00+00'), ('2024-01-01', 'r1', 2, 'Bob', '2023-12-02 00:00+00'),
    ('2024-01-02', 'r2', 1, 'Ann', '2023-12-01 00:00+00'))");
  Build("2024-01-01");
  Build("2024-01-02");
  Build("2024-01-03");  // nothing staged that day: no snapshot, so nothing is deleted
  const std::string expected =
      "1|Ann|-infinity|infinity|t|f\n"
      "2|Bob|-infinity|2024-01-03 00:00:00+00|f|t\n";
  const std::string rows = "SELECT id, name, valid_from, valid_to, is_current, is_deleted FROM dwh.dim_person "
                           "WHERE person_key <> 0 ORDER BY id, valid_from";
  EXPECT_EQ(Query(rows), expected);
  Build("2024-01-02");
  Build("2024-01-01");
  EXPECT_EQ(Query(rows), expected) << "re-running the days changes nothing";
  // Bob is back in the snapshot of the 4th: a new version from his row's time.
  Exec("INSERT INTO staging.people VALUES ('2024-01-04', 'r4', 1, 'Ann', '2023-12-01 00:00+00'), "
       "('2024-01-04', 'r4', 2, 'Bob', '2024-01-04 09:00+00')");
  Build("2024-01-04");
  EXPECT_EQ(Query(rows), expected + "2|Bob|2024-01-04 09:00:00+00|infinity|t|f\n");
}

}  // namespace
}  // namespace strata::loader

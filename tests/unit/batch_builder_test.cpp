#include <gtest/gtest.h>

#include "services/ingest/batch_builder.h"

namespace strata::ingest {
namespace {

strata::v1::TaskRequest Req() {
  strata::v1::TaskRequest r;
  r.set_pipeline("demo");
  r.set_dataset("orders");
  r.set_ds("2024-01-03");
  r.set_run_id("r0000000000001-abcd");
  return r;
}

std::vector<strata::v1::Batch> Build(int rows, int batch_rows) {
  std::vector<strata::v1::Batch> out;
  BatchBuilder b(Req(), {"id", "note"}, batch_rows, [&](const strata::v1::Batch& x) { out.push_back(x); });
  for (int i = 0; i < rows; ++i) b.Add({std::to_string(i), "n"}, {false, i % 2 == 1}, "row=" + std::to_string(i));
  const int total = b.Finish();
  EXPECT_EQ(total, static_cast<int>(out.size()));
  EXPECT_EQ(b.rows(), rows);
  return out;
}

TEST(BatchBuilder, SplitsAndMarksTheLastBatch) {
  const auto batches = Build(2500, 1000);
  ASSERT_EQ(batches.size(), 3u);
  EXPECT_EQ(batches[0].rows_size(), 1000);
  EXPECT_EQ(batches[2].rows_size(), 500);
  EXPECT_FALSE(batches[1].last());
  EXPECT_TRUE(batches[2].last());
  EXPECT_EQ(batches[2].total_batches(), 3);
  EXPECT_EQ(batches[1].seq(), 1);
  EXPECT_EQ(batches[1].batch_id(), "r0000000000001-abcd/orders/1");
  EXPECT_EQ(batches[1].source_position(), "row=1000");
  EXPECT_EQ(batches[0].ds(), "2024-01-03");
}

TEST(BatchBuilder, ExactMultipleHoldsBackTheLastFullBatch) {
  const auto batches = Build(2000, 1000);
  ASSERT_EQ(batches.size(), 2u);
  EXPECT_TRUE(batches[1].last());
  EXPECT_EQ(batches[1].rows_size(), 1000);
  EXPECT_EQ(batches[1].total_batches(), 2);
}

TEST(BatchBuilder, EmptyExtractionStillCommits) {
  const auto batches = Build(0, 1000);
  ASSERT_EQ(batches.size(), 1u);
  EXPECT_TRUE(batches[0].last());
  EXPECT_EQ(batches[0].total_batches(), 1);
  EXPECT_EQ(batches[0].rows_size(), 0);
}

TEST(BatchBuilder, RoundTripsNullsThroughProtobuf) {
  const auto batches = Build(3, 10);
  strata::v1::Batch decoded;
  ASSERT_TRUE(decoded.ParseFromString(batches[0].SerializeAsString()));
  EXPECT_EQ(decoded.rows(1).values(0).text(), "1");
  EXPECT_EQ(decoded.rows(1).values(1).kind_case(), strata::v1::Value::kNull);
  EXPECT_EQ(decoded.rows(2).values(1).text(), "n");
}

}  // namespace
}  // namespace strata::ingest

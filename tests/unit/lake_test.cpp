#include <gtest/gtest.h>

#include <filesystem>

#include "common/csv.h"
#include "common/errors.h"
#include "common/lake.h"

namespace strata {
namespace {

TEST(Lake, ManifestRoundTrip) {
  Manifest m;
  m.dataset = "orders";
  m.ds = "2024-01-02";
  m.run_id = "r1";
  m.columns = {"order_id", "status"};
  m.files = {{"run=r1/part-00000.csv", 10, 300, 12345u}, {"run=r1/part-00001.csv", 5, 150, 7u}};
  m.rows = 15;
  const Manifest back = ManifestFromJson(ManifestToJson(m), "x");
  EXPECT_EQ(back.rows, 15);
  ASSERT_EQ(back.files.size(), 2u);
  EXPECT_EQ(back.files[1].path, "run=r1/part-00001.csv");
  EXPECT_EQ(back.files[0].crc32, 12345u);
  EXPECT_EQ(back.columns, m.columns);
}

TEST(Lake, MalformedManifestIsAnInputError) {
  EXPECT_THROW(ManifestFromJson("{\"dataset\": 1}", "m.json"), InputError);
  EXPECT_THROW(ManifestFromJson("not json", "m.json"), InputError);
}

TEST(Lake, PartitionLayoutAndAtomicWrite) {
  const std::string root = ::testing::TempDir() + "/strata-lake-test";
  std::filesystem::remove_all(root);
  const std::string dir = PartitionDir(root, "bronze", "orders", "2024-01-02");
  EXPECT_EQ(dir, root + "/bronze/orders/dt=2024-01-02");
  EXPECT_FALSE(ReadManifest(dir).has_value());
  Manifest m;
  m.dataset = "orders";
  m.ds = "2024-01-02";
  m.run_id = "r9";
  WriteFileAtomic(ManifestPath(dir), ManifestToJson(m));
  ASSERT_TRUE(ReadManifest(dir).has_value());
  EXPECT_EQ(ReadManifest(dir)->run_id, "r9");
  int entries = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) entries += e.path().filename() == "_manifest.json" ? 1 : 100;
  EXPECT_EQ(entries, 1);  // no temp file left behind
  EXPECT_EQ(Crc32("123456789"), 0xCBF43926u);
}

TEST(Csv, QuotesWhatCopyNeedsQuoted) {
  std::string out;
  AppendCsvLine(out, {"a", "b,c", "say \"hi\"", "", "x", "line\nbreak"}, {false, false, false, false, true, false});
  EXPECT_EQ(out, "a,\"b,c\",\"say \"\"hi\"\"\",\"\",,\"line\nbreak\"\n");
}

}  // namespace
}  // namespace strata

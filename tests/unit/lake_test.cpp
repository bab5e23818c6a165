#include <gtest/gtest.h>

#include <filesystem>

#include "common/csv.h"
#include "common/errors.h"
#include "common/lake.h"
#include "common/csv.h"
#include "common/lake_codec.h"

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

namespace strata {
namespace {

std::string ReadAllCsv(const std::string& path, const LakeFormat& f, const std::vector<std::string>& cols) {
  PartReader r(path, f, cols);
  std::string out;
  char buf[7];  // tiny reads: every chunk boundary case
  for (size_t n; (n = r.Read(buf, sizeof buf)) > 0;) out.append(buf, n);
  return out;
}

TEST(LakeCodec, EveryFormatAndCompressionReadsBackAsTheSameCsv) {
  const std::vector<std::string> cols = {"id", "note"};
  const std::vector<std::vector<std::string>> rows = {{"1", "plain"}, {"2", "comma, \"quote\"\nnewline ✓"}, {"3", ""}};
  const std::vector<std::vector<bool>> nulls = {{false, false}, {false, false}, {false, true}};
  // What COPY ... (FORMAT csv) must be fed, written out by hand: fields with a comma, quote or
  // newline quoted, quotes doubled, NULL an unquoted empty field.
  const std::string want =
      "2024-01-01,run1,1,plain\n"
      "2024-01-01,run1,2,\"comma, \"\"quote\"\"\nnewline ✓\"\n"
      "2024-01-01,run1,3,\n";
  const std::string dir = ::testing::TempDir();
  for (const char* format : {"csv", "ndjson"}) {
    for (const char* comp : {"none", "gzip", "zstd"}) {
      const LakeFormat f = ParseLakeFormat(format, comp, "t");
      std::string text = f.format == "csv" ? CsvHeader(cols) : "";
      for (size_t r = 0; r < rows.size(); ++r) {
        if (f.format == "csv") {
          AppendCsvField(text, "2024-01-01", false);
          text += ",";
          AppendCsvField(text, "run1", false);
          for (size_t i = 0; i < cols.size(); ++i) {
            text += ",";
            AppendCsvField(text, rows[r][i], nulls[r][i]);
          }
          text += "\n";
        } else {
          std::vector<const std::string*> v;
          for (size_t i = 0; i < cols.size(); ++i) v.push_back(nulls[r][i] ? nullptr : &rows[r][i]);
          AppendNdjsonLine(text, "2024-01-01", "run1", cols, v);
        }
      }
      if (f.format == "csv") {
        EXPECT_EQ(text, "_ds,_run_id,id,note\n" + want) << "the writer's CSV";
      }
      const std::string data = CompressPart(f, text);
      const std::string path = dir + "/part" + f.Suffix();
      WriteFileAtomic(path, data);
      EXPECT_EQ(ReadAllCsv(path, f, cols), want) << format << "/" << comp;
      PartReader r(path, f, cols);
      char buf[1024];
      while (r.Read(buf, sizeof buf) > 0) {
      }
      EXPECT_EQ(r.crc32(), Crc32(data)) << "the CRC covers the bytes on disk";
    }
  }
}

TEST(LakeCodec, CorruptCompressedFileNamesThePath) {
  const std::string path = ::testing::TempDir() + "/bad.csv.zst";
  WriteFileAtomic(path, "definitely not zstd");
  PartReader r(path, ParseLakeFormat("csv", "zstd", "t"), {"a"});
  char buf[64];
  try {
    r.Read(buf, sizeof buf);
    FAIL() << "expected InputError";
  } catch (const InputError& e) {
    EXPECT_NE(std::string(e.what()).find(path + ": corrupt zstd data"), std::string::npos) << e.what();
  }
  EXPECT_THROW(ParseLakeFormat("parquet", "none", "datasets[0].bronze"), InputError);
  EXPECT_THROW(ParseLakeFormat("csv", "lz4", "datasets[0].bronze"), InputError);
}

}  // namespace
}  // namespace strata

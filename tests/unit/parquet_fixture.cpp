// Writes Parquet files with strata's encoder, plus the values they must hold, for
// tests/parquet/check.mjs to read back with an independent reader (hyparquet).
//   parquet_fixture DIR   ->  DIR/{none,snappy,zstd}.parquet, DIR/empty.parquet, DIR/expected.json
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "common/parquet.h"
#include "common/time_util.h"

using strata::ColumnType;

int main(int argc, char** argv) {
  if (argc != 2) {
    std::cerr << "usage: parquet_fixture DIR\n";
    return 2;
  }
  const std::string dir = argv[1];
  const std::vector<strata::ParquetColumn> cols = {
      {"id", ColumnType::kInt},        {"price", ColumnType::kFloat}, {"name", ColumnType::kText},
      {"at", ColumnType::kTimestamp},  {"day", ColumnType::kDate},    {"ok", ColumnType::kBool},
      {"category", ColumnType::kText}, {"never", ColumnType::kText}};
  const char* categories[] = {"books", "garden", "kitchen", "toys", "ünïcødé ✓"};
  std::vector<strata::ParquetRow> rows;
  nlohmann::json expected = nlohmann::json::array();
  for (int i = 0; i < 1000; ++i) {
    const bool null = i % 7 == 3;
    const long long id = i == 0 ? -9007199254740993LL : 1000000000000LL + i;
    const double price = i * 1.25 - 300.5;
    const std::string name = i == 1 ? "" : "name \"" + std::to_string(i) + "\"\n\t,";
    const long long at_us = 1704067200000000LL + i * 1234567LL;  // 2024-01-01 + i * 1.234567 s
    const std::string at = "2024-01-01T00:00:00Z";
    char ts[64];
    std::snprintf(ts, sizeof ts, "%s.%06lldZ", strata::FormatDate(at_us / 86400000000LL).c_str(), at_us % 1000000LL);
    const long long sec = (at_us / 1000000) % 86400;
    char full[80];
    std::snprintf(full, sizeof full, "%sT%02lld:%02lld:%02lld.%06lldZ", strata::FormatDate(at_us / 86400000000LL).c_str(),
                  sec / 3600, sec / 60 % 60, sec % 60, at_us % 1000000LL);
    const std::string day = strata::AddDays("2024-01-01", i - 500);
    strata::ParquetRow row = {std::to_string(id),
                              null ? std::nullopt : std::optional<std::string>(std::to_string(price)),
                              null ? std::nullopt : std::optional<std::string>(name),
                              full,
                              day,
                              null ? std::nullopt : std::optional<std::string>(i % 2 ? "true" : "false"),
                              categories[i % 5],
                              std::nullopt};
    rows.push_back(row);
    nlohmann::json e = nlohmann::json::object();
    e["id"] = std::to_string(id);
    e["price"] = null ? nlohmann::json() : nlohmann::json(std::stod(std::to_string(price)));
    e["name"] = null ? nlohmann::json() : nlohmann::json(name);
    e["at"] = "us:" + std::to_string(at_us);
    e["day"] = "days:" + std::to_string(strata::ParseDate(day));
    e["ok"] = null ? nlohmann::json() : nlohmann::json(i % 2 == 1);
    e["category"] = categories[i % 5];
    e["never"] = nullptr;
    expected.push_back(e);
  }
  for (auto [name, codec] : {std::pair<const char*, strata::ParquetCodec>{"none", strata::ParquetCodec::kUncompressed},
                             {"snappy", strata::ParquetCodec::kSnappy},
                             {"zstd", strata::ParquetCodec::kZstd}}) {
    std::ofstream(dir + "/" + name + ".parquet", std::ios::binary) << strata::EncodeParquet(cols, rows, codec);
  }
  {
    // Streamed in row groups of 128 rows: the same values, 8 groups.
    std::ofstream out(dir + "/groups.parquet", std::ios::binary);
    strata::ParquetWriter w(cols, strata::ParquetCodec::kZstd, [&out](const std::string& b) { out << b; }, 128);
    for (const auto& r : rows) w.Add(r);
    w.Finish();
  }
  std::ofstream(dir + "/empty.parquet", std::ios::binary) << strata::EncodeParquet(cols, {}, strata::ParquetCodec::kZstd);
  std::ofstream(dir + "/expected.json") << expected.dump();
  std::cout << "wrote 4 files, " << rows.size() << " rows each\n";
  return 0;
}

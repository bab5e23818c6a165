// Writes Parquet files with strata's encoder, plus the values they must hold, for
// tests/parquet/check.mjs to read back with an independent reader (hyparquet).
//   parquet_fixture DIR   ->  DIR/{none,snappy,zstd}.parquet, DIR/empty.parquet, DIR/expected.json
#include <ctime>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "common/parquet.h"

using strata::ColumnType;

namespace {

// Calendar text from the C library (not strata's own date helpers), for the values written.
std::string UtcText(long long unix_seconds, const char* format) {
  const std::time_t t = static_cast<std::time_t>(unix_seconds);
  std::tm tm{};
  gmtime_r(&t, &tm);
  char out[64];
  std::strftime(out, sizeof out, format, &tm);
  return out;
}

}  // namespace

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
    // 2024-01-01T00:00:00Z is 1704067200 s and day 19723 after the epoch.
    const long long at_us = 1704067200000000LL + i * 1234567LL;  // 2024-01-01 + i * 1.234567 s
    char frac[16];
    std::snprintf(frac, sizeof frac, ".%06lldZ", at_us % 1000000LL);
    const std::string full = UtcText(at_us / 1000000, "%Y-%m-%dT%H:%M:%S") + frac;
    const long long days = 19723 + i - 500;
    const std::string day = UtcText(days * 86400, "%Y-%m-%d");
    // Anchors worked out by hand, so a wrong calendar (the C library's or this arithmetic's) shows.
    if ((i == 0 && (day != "2022-08-19" || full != "2024-01-01T00:00:00.000000Z")) ||
        (i == 500 && day != "2024-01-01") || (i == 559 && day != "2024-02-29") ||
        (i == 999 && (day != "2025-05-14" || full != "2024-01-01T00:20:33.332433Z"))) {
      std::cerr << "fixture calendar is wrong at row " << i << ": " << day << " " << full << "\n";
      return 1;
    }
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
    e["day"] = "days:" + std::to_string(days);
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

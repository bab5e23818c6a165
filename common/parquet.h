// A Parquet writer for flat tables of the lake's column types, with no Parquet library (none is
// packaged for Debian 12): the file metadata and page headers are Thrift structs serialised with
// libthrift's compact protocol (common/thrift/parquet_meta.thrift); pages are written here.
//
// What it promises:
//  * row groups of up to row_group_rows rows, one v1 data page per column per group (plus a dictionary page when the
//    column is dictionary-encoded), every column OPTIONAL (nulls as definition levels);
//  * types: int -> INT64 (INTEGER(64, signed)), float -> DOUBLE, text -> BYTE_ARRAY (STRING),
//    timestamp -> INT64 TIMESTAMP(UTC, MICROS), date -> INT32 DATE, bool -> BOOLEAN;
//  * dictionary encoding (RLE_DICTIONARY) for a column whose distinct values are at most half
//    its values, PLAIN otherwise; pages compressed with snappy, zstd or not at all;
//  * column-chunk statistics: null_count, min_value/max_value in the type's order (and the
//    column_orders that give them meaning);
//  * a value that does not parse as its column's type throws InputError naming the column and
//    row (write through an AtomicFile so a failed file never becomes visible).
// Values arrive as the canonical text ingest produces (Value.text), NULL as nullopt.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "common/spec.h"

namespace strata {

enum class ParquetCodec { kUncompressed, kSnappy, kZstd };

// "none" | "snappy" | "zstd"; throws InputError naming `what` otherwise.
ParquetCodec ParseParquetCodec(const std::string& name, const std::string& what);

struct ParquetColumn {
  std::string name;
  ColumnType type = ColumnType::kText;
};

using ParquetRow = std::vector<std::optional<std::string>>;

// Writes a Parquet file row by row: rows are buffered into row groups of `row_group_rows` and
// each group is encoded and handed to `out` when full, so memory is bounded by one row group,
// not the file. Finish() writes the last group and the footer; nothing is valid before it.
class ParquetWriter {
 public:
  using Sink = std::function<void(const std::string& bytes)>;
  ParquetWriter(std::vector<ParquetColumn> columns, ParquetCodec codec, Sink out, size_t row_group_rows = 100000,
                std::string created_by = "strata");
  ~ParquetWriter();
  void Add(ParquetRow row);  // throws InputError for a value that is not its column's type
  void Finish();
  int64_t rows() const { return rows_; }

 private:
  void FlushGroup();
  struct Meta;
  std::vector<ParquetColumn> columns_;
  ParquetCodec codec_;
  Sink out_;
  size_t group_rows_;
  std::string created_by_;
  std::vector<ParquetRow> pending_;
  int64_t offset_ = 0, rows_ = 0;
  std::unique_ptr<Meta> meta_;
};

// The bytes of a complete Parquet file holding `rows` (each with one value per column).
std::string EncodeParquet(const std::vector<ParquetColumn>& columns, const std::vector<ParquetRow>& rows,
                          ParquetCodec codec, const std::string& created_by = "strata");

}  // namespace strata

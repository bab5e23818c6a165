// Bronze part files in the lake's formats, for lake-export (writer) and the warehouse-loader
// (reader):
//   csv     a header line (_ds,_run_id,<columns>) and one line per row, PostgreSQL CSV rules
//           (unquoted empty = NULL, "" = empty string)
//   ndjson  one JSON object per row: {"_ds": ..., "_run_id": ..., "<column>": "<text>" | null}
// each optionally compressed whole with gzip or zstd (file suffix .gz / .zst).
// The reader turns any of them back into CSV lines without header, streamed for COPY ... FROM
// STDIN (FORMAT csv), and checks the CRC-32 of the bytes on disk against the manifest. Memory is
// bounded by the read buffer, not the file.
#pragma once
#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

namespace strata {

struct LakeFormat {
  std::string format = "csv";        // csv | ndjson
  std::string compression = "none";  // none | gzip | zstd
  std::string Suffix() const;        // ".csv", ".ndjson.zst", ...
};

// Throws InputError naming `what` for an unknown format or compression.
LakeFormat ParseLakeFormat(const std::string& format, const std::string& compression, const std::string& what);

// The CSV header line of a part (_ds,_run_id,<columns>).
std::string CsvHeader(const std::vector<std::string>& columns);
// One NDJSON line; values[i] is ignored where nulls[i].
void AppendNdjsonLine(std::string& out, const std::string& ds, const std::string& run_id,
                      const std::vector<std::string>& columns, const std::vector<const std::string*>& values);
// A part's text compressed as the format says (none: unchanged).
std::string CompressPart(const LakeFormat& f, std::string text);

class PartReader {
 public:
  PartReader(const std::string& path, const LakeFormat& f, std::vector<std::string> columns);
  // From any stream (e.g. an object of an S3 lake); `name` is used in messages.
  PartReader(const std::string& name, std::unique_ptr<std::istream> in, const LakeFormat& f,
             std::vector<std::string> columns);
  ~PartReader();
  // Fills buf with CSV bytes (no header); 0 at the end of the file. Throws InputError on a
  // corrupt file, naming the path.
  size_t Read(char* buf, size_t cap);
  uint32_t crc32() const { return crc_; }

 private:
  bool Refill();  // decompressed bytes into text_; false at end
  std::string path_;
  LakeFormat f_;
  std::vector<std::string> columns_;
  std::unique_ptr<std::istream> in_;
  uint32_t crc_ = 0;
  std::string raw_, text_, out_;
  size_t text_pos_ = 0, out_pos_ = 0;
  bool header_skipped_ = false, eof_ = false;
  struct Codec;
  std::unique_ptr<Codec> codec_;
};

}  // namespace strata

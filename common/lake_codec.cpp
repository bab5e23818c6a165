#include "common/lake_codec.h"

#include <zlib.h>
#include <zstd.h>

#include <cstring>
#include <nlohmann/json.hpp>

#include "common/csv.h"
#include "common/errors.h"

namespace strata {

std::string LakeFormat::Suffix() const {
  return "." + format + (compression == "gzip" ? ".gz" : compression == "zstd" ? ".zst" : "");
}

LakeFormat ParseLakeFormat(const std::string& format, const std::string& compression, const std::string& what) {
  if (format != "csv" && format != "ndjson") throw InputError(what + ".format: unknown format '" + format + "' (known: csv, ndjson)");
  if (compression != "none" && compression != "gzip" && compression != "zstd")
    throw InputError(what + ".compression: unknown compression '" + compression + "' (known: none, gzip, zstd)");
  return {format, compression};
}

namespace {

std::string Gzip(const std::string& raw) {
  z_stream z{};
  if (deflateInit2(&z, 6, Z_DEFLATED, 16 + MAX_WBITS, 8, Z_DEFAULT_STRATEGY) != Z_OK) throw EnvError("gzip: deflateInit2");
  std::string out(deflateBound(&z, raw.size()), '\0');
  z.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(raw.data()));
  z.avail_in = static_cast<uInt>(raw.size());
  z.next_out = reinterpret_cast<Bytef*>(out.data());
  z.avail_out = static_cast<uInt>(out.size());
  const int rc = deflate(&z, Z_FINISH);
  out.resize(z.total_out);
  deflateEnd(&z);
  if (rc != Z_STREAM_END) throw EnvError("gzip: deflate did not finish");
  return out;
}

std::string Zstd(const std::string& raw) {
  std::string out(ZSTD_compressBound(raw.size()), '\0');
  const size_t n = ZSTD_compress(out.data(), out.size(), raw.data(), raw.size(), 3);
  if (ZSTD_isError(n)) throw EnvError(std::string("zstd: ") + ZSTD_getErrorName(n));
  out.resize(n);
  return out;
}

}  // namespace

std::string CsvHeader(const std::vector<std::string>& columns) {
  std::string h = "_ds,_run_id";
  for (const auto& c : columns) h += "," + c;
  return h + "\n";
}

void AppendNdjsonLine(std::string& out, const std::string& ds, const std::string& run_id,
                      const std::vector<std::string>& columns, const std::vector<const std::string*>& values) {
  nlohmann::json j = {{"_ds", ds}, {"_run_id", run_id}};
  for (size_t i = 0; i < columns.size(); ++i) j[columns[i]] = values[i] ? nlohmann::json(*values[i]) : nlohmann::json();
  out += j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  out.push_back('\n');
}

std::string CompressPart(const LakeFormat& f, std::string text) {
  if (f.compression == "gzip") return Gzip(text);
  if (f.compression == "zstd") return Zstd(text);
  return text;
}

struct PartReader::Codec {
  z_stream z{};
  bool z_init = false;
  ZSTD_DStream* zs = nullptr;
  ~Codec() {
    if (z_init) inflateEnd(&z);
    if (zs) ZSTD_freeDStream(zs);
  }
};

PartReader::PartReader(const std::string& path, const LakeFormat& f, std::vector<std::string> columns)
    : PartReader(path, std::make_unique<std::ifstream>(path, std::ios::binary), f, std::move(columns)) {}

PartReader::PartReader(const std::string& name, std::unique_ptr<std::istream> in, const LakeFormat& f,
                       std::vector<std::string> columns)
    : path_(name), f_(f), columns_(std::move(columns)), in_(std::move(in)), codec_(std::make_unique<Codec>()) {
  if (!*in_) throw EnvError("cannot open " + name);
  crc_ = static_cast<uint32_t>(::crc32(0L, Z_NULL, 0));
  if (f_.compression == "gzip") {
    if (inflateInit2(&codec_->z, 16 + MAX_WBITS) != Z_OK) throw EnvError("gzip: inflateInit2");
    codec_->z_init = true;
  } else if (f_.compression == "zstd") {
    codec_->zs = ZSTD_createDStream();
    ZSTD_initDStream(codec_->zs);
  }
}

PartReader::~PartReader() = default;

bool PartReader::Refill() {
  if (eof_) return false;
  raw_.resize(256 * 1024);
  in_->read(raw_.data(), static_cast<std::streamsize>(raw_.size()));
  raw_.resize(static_cast<size_t>(in_->gcount()));
  if (raw_.empty()) {
    eof_ = true;
    return false;
  }
  crc_ = static_cast<uint32_t>(::crc32(crc_, reinterpret_cast<const Bytef*>(raw_.data()), static_cast<uInt>(raw_.size())));
  // Keep what is left over from the previous chunk (a partial line), append the new bytes.
  text_.erase(0, text_pos_);
  text_pos_ = 0;
  if (f_.compression == "none") {
    text_ += raw_;
  } else if (f_.compression == "gzip") {
    z_stream& z = codec_->z;
    z.next_in = reinterpret_cast<Bytef*>(raw_.data());
    z.avail_in = static_cast<uInt>(raw_.size());
    char buf[64 * 1024];
    while (z.avail_in > 0) {
      z.next_out = reinterpret_cast<Bytef*>(buf);
      z.avail_out = sizeof buf;
      const int rc = inflate(&z, Z_NO_FLUSH);
      if (rc != Z_OK && rc != Z_STREAM_END) throw InputError(path_ + ": corrupt gzip data (" + std::to_string(rc) + ")");
      text_.append(buf, sizeof buf - z.avail_out);
      if (rc == Z_STREAM_END) break;
    }
  } else {
    ZSTD_inBuffer inb{raw_.data(), raw_.size(), 0};
    char buf[64 * 1024];
    while (inb.pos < inb.size) {
      ZSTD_outBuffer outb{buf, sizeof buf, 0};
      const size_t rc = ZSTD_decompressStream(codec_->zs, &outb, &inb);
      if (ZSTD_isError(rc)) throw InputError(path_ + ": corrupt zstd data (" + ZSTD_getErrorName(rc) + ")");
      text_.append(buf, outb.pos);
    }
  }
  return true;
}

size_t PartReader::Read(char* buf, size_t cap) {
  for (;;) {
    // Plain CSV past its header goes from the file straight into the caller's buffer.
    if (f_.format == "csv" && f_.compression == "none" && header_skipped_ && out_pos_ >= out_.size() &&
        text_pos_ >= text_.size()) {
      in_->read(buf, static_cast<std::streamsize>(cap));
      const size_t n = static_cast<size_t>(in_->gcount());
      crc_ = static_cast<uint32_t>(::crc32(crc_, reinterpret_cast<const Bytef*>(buf), static_cast<uInt>(n)));
      return n;
    }
    if (out_pos_ < out_.size()) {
      const size_t n = std::min(cap, out_.size() - out_pos_);
      std::memcpy(buf, out_.data() + out_pos_, n);
      out_pos_ += n;
      return n;
    }
    out_.clear();
    out_pos_ = 0;
    // Complete lines available in text_ become output.
    const size_t last_nl = text_.rfind('\n');
    if (last_nl != std::string::npos && last_nl >= text_pos_) {
      const size_t end = last_nl + 1;
      if (f_.format == "csv") {
        if (!header_skipped_) {
          text_pos_ = text_.find('\n', text_pos_) + 1;
          header_skipped_ = true;
        }
        // CSV fields may hold quoted newlines, so a chunk boundary inside a quoted field is
        // harmless: bytes pass straight through to COPY, which parses them.
        out_.assign(text_, text_pos_, end - text_pos_);
      } else {
        std::vector<std::string> values(columns_.size());
        std::vector<bool> nulls(columns_.size());
        size_t pos = text_pos_;
        while (pos < end) {
          const size_t nl = text_.find('\n', pos);
          const std::string_view line(text_.data() + pos, nl - pos);
          pos = nl + 1;
          if (line.empty()) continue;
          const auto j = nlohmann::json::parse(line, nullptr, false);
          if (!j.is_object()) throw InputError(path_ + ": a line is not a JSON object");
          const std::string ds = j.value("_ds", ""), run = j.value("_run_id", "");
          AppendCsvField(out_, ds, false);
          out_.push_back(',');
          AppendCsvField(out_, run, false);
          for (size_t i = 0; i < columns_.size(); ++i) {
            auto it = j.find(columns_[i]);
            const bool null = it == j.end() || it->is_null();
            out_.push_back(',');
            AppendCsvField(out_, null ? std::string() : it->is_string() ? it->get<std::string>() : it->dump(), null);
          }
          out_.push_back('\n');
        }
      }
      text_pos_ = end;
      if (!out_.empty()) continue;
    }
    if (!Refill()) {
      if (text_pos_ < text_.size() && f_.format == "csv" && header_skipped_) {
        out_.assign(text_, text_pos_, std::string::npos);  // a last line without '\n'
        text_pos_ = text_.size();
        continue;
      }
      return 0;
    }
  }
}

}  // namespace strata

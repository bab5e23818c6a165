#include "common/parquet.h"

#include <snappy.h>
#include <thrift/protocol/TCompactProtocol.h>
#include <thrift/transport/TBufferTransports.h>
#include <zstd.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <unordered_map>

#include "common/errors.h"
#include "common/time_util.h"
#include "parquet_meta_types.h"

namespace strata {

namespace pq = strata::parquet;

ParquetCodec ParseParquetCodec(const std::string& name, const std::string& what) {
  if (name == "none") return ParquetCodec::kUncompressed;
  if (name == "snappy") return ParquetCodec::kSnappy;
  if (name == "zstd") return ParquetCodec::kZstd;
  throw InputError(what + ": unknown Parquet compression '" + name + "' (known: none, snappy, zstd)");
}

namespace {

template <class T>
std::string Thrift(const T& obj) {
  auto buf = std::make_shared<apache::thrift::transport::TMemoryBuffer>();
  apache::thrift::protocol::TCompactProtocolT<apache::thrift::transport::TMemoryBuffer> proto(buf);
  obj.write(&proto);
  return buf->getBufferAsString();
}

void PutLe(std::string& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}

void PutVarint(std::string& out, uint64_t v) {
  while (v >= 0x80) {
    out.push_back(static_cast<char>((v & 0x7f) | 0x80));
    v >>= 7;
  }
  out.push_back(static_cast<char>(v));
}

// The RLE / bit-packing hybrid, as bit-packed runs only (groups of 8, LSB first); the reader
// knows the value count from the page header, so the padding of the last group is ignored.
std::string BitPackedHybrid(const std::vector<uint32_t>& values, int bit_width) {
  std::string out;
  const size_t groups = (values.size() + 7) / 8;
  if (groups == 0) return out;
  PutVarint(out, (static_cast<uint64_t>(groups) << 1) | 1);
  uint64_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < groups * 8; ++i) {
    acc |= static_cast<uint64_t>(i < values.size() ? values[i] : 0) << bits;
    bits += bit_width;
    while (bits >= 8) {
      out.push_back(static_cast<char>(acc & 0xff));
      acc >>= 8;
      bits -= 8;
    }
  }
  return out;
}

int BitWidth(uint64_t max_value) {
  int w = 0;
  while (max_value > 0) {
    ++w;
    max_value >>= 1;
  }
  return w == 0 ? 1 : w;
}

std::string Compress(ParquetCodec codec, const std::string& raw) {
  std::string out;
  switch (codec) {
    case ParquetCodec::kUncompressed: return raw;
    case ParquetCodec::kSnappy: snappy::Compress(raw.data(), raw.size(), &out); return out;
    case ParquetCodec::kZstd: {
      out.resize(ZSTD_compressBound(raw.size()));
      const size_t n = ZSTD_compress(out.data(), out.size(), raw.data(), raw.size(), 3);
      if (ZSTD_isError(n)) throw EnvError(std::string("zstd: ") + ZSTD_getErrorName(n));
      out.resize(n);
      return out;
    }
  }
  return raw;
}

pq::CompressionCodec::type CodecOf(ParquetCodec c) {
  switch (c) {
    case ParquetCodec::kSnappy: return pq::CompressionCodec::SNAPPY;
    case ParquetCodec::kZstd: return pq::CompressionCodec::ZSTD;
    default: return pq::CompressionCodec::UNCOMPRESSED;
  }
}

// One column's non-null values, PLAIN-encoded one by one, with the order the statistics need.
struct Encoded {
  std::vector<std::string> plain;  // per non-null value: its PLAIN bytes (BYTE_ARRAY: no length)
  std::vector<uint32_t> def;       // per row: 1 present, 0 null
  size_t min_i = 0, max_i = 0;
  bool any = false;
};

bool Less(ColumnType t, const std::string& a, const std::string& b) {
  auto i64 = [](const std::string& s) {
    int64_t v;
    std::memcpy(&v, s.data(), 8);
    return v;
  };
  switch (t) {
    case ColumnType::kInt:
    case ColumnType::kTimestamp: return i64(a) < i64(b);
    case ColumnType::kFloat: {
      double x, y;
      std::memcpy(&x, a.data(), 8);
      std::memcpy(&y, b.data(), 8);
      return x < y;
    }
    case ColumnType::kDate: {
      int32_t x, y;
      std::memcpy(&x, a.data(), 4);
      std::memcpy(&y, b.data(), 4);
      return x < y;
    }
    case ColumnType::kBool: return a < b;
    case ColumnType::kText: return a < b;  // char_traits<char> compares as unsigned bytes
  }
  return a < b;
}

std::string PlainValue(const ParquetColumn& col, const std::string& text, size_t row) {
  std::string out;
  try {
    switch (col.type) {
      case ColumnType::kInt: {
        size_t used = 0;
        const long long v = std::stoll(text, &used);
        if (used != text.size()) throw std::invalid_argument(text);
        PutLe(out, static_cast<uint64_t>(v), 8);
        return out;
      }
      case ColumnType::kFloat: {
        size_t used = 0;
        const double v = std::stod(text, &used);
        if (used != text.size()) throw std::invalid_argument(text);
        uint64_t bits;
        std::memcpy(&bits, &v, 8);
        PutLe(out, bits, 8);
        return out;
      }
      case ColumnType::kTimestamp: PutLe(out, static_cast<uint64_t>(TimestampMicros(text)), 8); return out;
      case ColumnType::kDate: PutLe(out, static_cast<uint64_t>(static_cast<uint32_t>(ParseDate(text, "date"))), 4); return out;
      case ColumnType::kBool:
        if (text != "true" && text != "false" && text != "t" && text != "f") throw std::invalid_argument(text);
        out.push_back(text[0] == 't' ? 1 : 0);
        return out;
      case ColumnType::kText: return text;
    }
  } catch (const std::exception&) {
  }
  throw InputError("parquet: column '" + col.name + "' row " + std::to_string(row) + ": \"" + text.substr(0, 60) +
                   "\" is not a " + ColumnTypeName(col.type));
}

void AppendPlain(std::string& out, ColumnType t, const std::string& v) {
  if (t == ColumnType::kText) PutLe(out, v.size(), 4);
  out += v;
}

pq::SchemaElement Leaf(const ParquetColumn& c) {
  pq::SchemaElement e;
  e.name = c.name;
  e.__set_repetition_type(pq::FieldRepetitionType::OPTIONAL);
  pq::LogicalType lt;
  switch (c.type) {
    case ColumnType::kInt: {
      e.__set_type(pq::Type::INT64);
      e.__set_converted_type(pq::ConvertedType::INT_64);
      pq::IntType it;
      it.bitWidth = 64;
      it.isSigned = true;
      lt.__set_INTEGER(it);
      e.__set_logicalType(lt);
      break;
    }
    case ColumnType::kFloat: e.__set_type(pq::Type::DOUBLE); break;
    case ColumnType::kText:
      e.__set_type(pq::Type::BYTE_ARRAY);
      e.__set_converted_type(pq::ConvertedType::UTF8);
      lt.__set_STRING(pq::StringType());
      e.__set_logicalType(lt);
      break;
    case ColumnType::kTimestamp: {
      e.__set_type(pq::Type::INT64);
      e.__set_converted_type(pq::ConvertedType::TIMESTAMP_MICROS);
      pq::TimestampType ts;
      ts.isAdjustedToUTC = true;
      ts.unit.__set_MICROS(pq::MicroSeconds());
      lt.__set_TIMESTAMP(ts);
      e.__set_logicalType(lt);
      break;
    }
    case ColumnType::kDate:
      e.__set_type(pq::Type::INT32);
      e.__set_converted_type(pq::ConvertedType::DATE);
      lt.__set_DATE(pq::DateType());
      e.__set_logicalType(lt);
      break;
    case ColumnType::kBool: e.__set_type(pq::Type::BOOLEAN); break;
  }
  return e;
}

}  // namespace

namespace {

// Encodes one row group; `file` receives its bytes, which start at file offset `base`.
pq::RowGroup EncodeRowGroup(const std::vector<ParquetColumn>& columns, const std::vector<ParquetRow>& rows,
                            ParquetCodec codec, int64_t row_base, int64_t base, std::string& file) {
  // Encode (and validate) every value first: a bad value leaves nothing half-written.
  std::vector<Encoded> enc(columns.size());
  for (size_t r = 0; r < rows.size(); ++r) {
    if (rows[r].size() != columns.size())
      throw InputError("parquet: row " + std::to_string(row_base + static_cast<int64_t>(r)) + " has " + std::to_string(rows[r].size()) +
                       " values for " + std::to_string(columns.size()) + " columns");
    for (size_t c = 0; c < columns.size(); ++c) {
      Encoded& e = enc[c];
      if (!rows[r][c]) {
        e.def.push_back(0);
        continue;
      }
      e.def.push_back(1);
      e.plain.push_back(PlainValue(columns[c], *rows[r][c], static_cast<size_t>(row_base) + r));
      const size_t i = e.plain.size() - 1;
      if (!e.any || Less(columns[c].type, e.plain[i], e.plain[e.min_i])) e.min_i = i;
      if (!e.any || Less(columns[c].type, e.plain[e.max_i], e.plain[i])) e.max_i = i;
      e.any = true;
    }
  }

  pq::RowGroup group;
  group.num_rows = static_cast<int64_t>(rows.size());
  group.total_byte_size = 0;
  int64_t group_compressed = 0;
  const auto write_page = [&](pq::PageHeader header, const std::string& raw, int64_t* uncompressed, int64_t* compressed) {
    const std::string body = Compress(codec, raw);
    header.uncompressed_page_size = static_cast<int32_t>(raw.size());
    header.compressed_page_size = static_cast<int32_t>(body.size());
    const std::string head = Thrift(header);
    file += head;
    file += body;
    *uncompressed += static_cast<int64_t>(head.size() + raw.size());
    *compressed += static_cast<int64_t>(head.size() + body.size());
  };

  for (size_t c = 0; c < columns.size(); ++c) {
    const ParquetColumn& col = columns[c];
    Encoded& e = enc[c];
    const int64_t chunk_start = base + static_cast<int64_t>(file.size());
    int64_t uncompressed = 0, compressed = 0;
    pq::ColumnMetaData meta;
    meta.type = Leaf(col).type;
    meta.path_in_schema = {col.name};
    meta.codec = CodecOf(codec);
    meta.num_values = static_cast<int64_t>(rows.size());

    // Dictionary encoding pays when values repeat; booleans are one bit anyway.
    std::vector<uint32_t> indices;
    std::vector<const std::string*> dict;
    if (col.type != ColumnType::kBool && !e.plain.empty()) {
      std::unordered_map<std::string, uint32_t> ids;
      for (const auto& v : e.plain) {
        auto [it, fresh] = ids.emplace(v, static_cast<uint32_t>(dict.size()));
        if (fresh) dict.push_back(&it->first);
        indices.push_back(it->second);
        if (dict.size() * 2 > e.plain.size()) break;
      }
      if (dict.size() * 2 > e.plain.size()) {
        dict.clear();
        indices.clear();
      } else {
        std::string raw;
        for (const auto* v : dict) AppendPlain(raw, col.type, *v);
        pq::PageHeader h;
        h.type = pq::PageType::DICTIONARY_PAGE;
        pq::DictionaryPageHeader dh;
        dh.num_values = static_cast<int32_t>(dict.size());
        dh.encoding = pq::Encoding::PLAIN;
        h.__set_dictionary_page_header(dh);
        meta.__set_dictionary_page_offset(base + static_cast<int64_t>(file.size()));
        write_page(h, raw, &uncompressed, &compressed);
      }
    }

    std::string raw;
    const std::string levels = BitPackedHybrid(e.def, 1);
    PutLe(raw, levels.size(), 4);
    raw += levels;
    pq::DataPageHeader dp;
    dp.num_values = static_cast<int32_t>(rows.size());
    dp.definition_level_encoding = pq::Encoding::RLE;
    dp.repetition_level_encoding = pq::Encoding::RLE;
    if (!dict.empty()) {
      dp.encoding = pq::Encoding::RLE_DICTIONARY;
      const int width = BitWidth(dict.size() - 1);
      raw.push_back(static_cast<char>(width));
      raw += BitPackedHybrid(indices, width);
      meta.encodings = {pq::Encoding::PLAIN, pq::Encoding::RLE, pq::Encoding::RLE_DICTIONARY};
    } else if (col.type == ColumnType::kBool) {
      dp.encoding = pq::Encoding::PLAIN;
      std::string bits((e.plain.size() + 7) / 8, '\0');
      for (size_t i = 0; i < e.plain.size(); ++i)
        if (e.plain[i][0]) bits[i / 8] = static_cast<char>(bits[i / 8] | (1 << (i % 8)));
      raw += bits;
      meta.encodings = {pq::Encoding::PLAIN, pq::Encoding::RLE};
    } else {
      dp.encoding = pq::Encoding::PLAIN;
      for (const auto& v : e.plain) AppendPlain(raw, col.type, v);
      meta.encodings = {pq::Encoding::PLAIN, pq::Encoding::RLE};
    }
    pq::PageHeader h;
    h.type = pq::PageType::DATA_PAGE;
    h.__set_data_page_header(dp);
    meta.data_page_offset = base + static_cast<int64_t>(file.size());
    write_page(h, raw, &uncompressed, &compressed);

    pq::Statistics st;
    st.__set_null_count(static_cast<int64_t>(rows.size() - e.plain.size()));
    if (e.any) {
      st.__set_min_value(e.plain[e.min_i]);
      st.__set_max_value(e.plain[e.max_i]);
    }
    meta.__set_statistics(st);
    meta.total_uncompressed_size = uncompressed;
    meta.total_compressed_size = compressed;
    pq::ColumnChunk chunk;
    chunk.file_offset = chunk_start;
    chunk.__set_meta_data(meta);
    group.columns.push_back(chunk);
    group.total_byte_size += uncompressed;
    group_compressed += compressed;
  }
  group.__set_file_offset(base);
  group.__set_total_compressed_size(group_compressed);
  return group;
}

}  // namespace

struct ParquetWriter::Meta {
  std::vector<pq::RowGroup> groups;
};

ParquetWriter::ParquetWriter(std::vector<ParquetColumn> columns, ParquetCodec codec, Sink out, size_t row_group_rows,
                             std::string created_by)
    : columns_(std::move(columns)), codec_(codec), out_(std::move(out)), group_rows_(std::max<size_t>(1, row_group_rows)),
      created_by_(std::move(created_by)), meta_(std::make_unique<Meta>()) {
  out_("PAR1");
  offset_ = 4;
}

ParquetWriter::~ParquetWriter() = default;

void ParquetWriter::Add(ParquetRow row) {
  pending_.push_back(std::move(row));
  if (pending_.size() >= group_rows_) FlushGroup();
}

void ParquetWriter::FlushGroup() {
  if (pending_.empty()) return;
  std::string bytes;
  meta_->groups.push_back(EncodeRowGroup(columns_, pending_, codec_, rows_, offset_, bytes));
  rows_ += static_cast<int64_t>(pending_.size());
  pending_.clear();
  offset_ += static_cast<int64_t>(bytes.size());
  out_(bytes);
}

void ParquetWriter::Finish() {
  FlushGroup();
  pq::FileMetaData fm;
  fm.version = 1;
  pq::SchemaElement root;
  root.name = "schema";
  root.__set_num_children(static_cast<int32_t>(columns_.size()));
  fm.schema.push_back(root);
  std::vector<pq::ColumnOrder> orders;
  for (const auto& c : columns_) {
    fm.schema.push_back(Leaf(c));
    pq::ColumnOrder o;
    o.__set_TYPE_ORDER(pq::TypeDefinedOrder());
    orders.push_back(o);
  }
  fm.num_rows = rows_;
  fm.row_groups = meta_->groups;
  fm.__set_created_by(created_by_);
  fm.__set_column_orders(orders);
  std::string footer = Thrift(fm);
  PutLe(footer, footer.size(), 4);
  footer += "PAR1";
  out_(footer);
}

std::string EncodeParquet(const std::vector<ParquetColumn>& columns, const std::vector<ParquetRow>& rows,
                          ParquetCodec codec, const std::string& created_by) {
  std::string file;
  ParquetWriter w(columns, codec, [&file](const std::string& b) { file += b; }, std::max<size_t>(1, rows.size()),
                  created_by);
  for (const auto& r : rows) w.Add(r);
  w.Finish();
  return file;
}

}  // namespace strata

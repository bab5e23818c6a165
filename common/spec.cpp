#include "common/spec.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <regex>
#include <set>
#include <sstream>
#include <type_traits>

#include "common/cron.h"
#include "common/endpoint.h"
#include "common/lake_codec.h"
#include "common/errors.h"
#include "common/time_util.h"

namespace strata {

namespace {

const std::regex kIdent("^[a-z_][a-z0-9_]*$");
const std::regex kQualified("^[a-z_][a-z0-9_]*\\.[a-z_][a-z0-9_]*$");

[[noreturn]] void Fail(const std::string& path, const std::string& what) {
  throw InputError(path + ": " + what);
}

std::string Str(const YAML::Node& n, const std::string& path) {
  if (!n || !n.IsScalar()) Fail(path, "expected a string");
  return n.as<std::string>();
}

std::vector<std::string> StrList(const YAML::Node& n, const std::string& path) {
  std::vector<std::string> out;
  if (n.IsScalar()) return {n.as<std::string>()};
  if (!n.IsSequence()) Fail(path, "expected a list of strings");
  for (size_t i = 0; i < n.size(); ++i) out.push_back(Str(n[i], path + "[" + std::to_string(i) + "]"));
  return out;
}

void OnlyKeys(const YAML::Node& n, const std::string& path, const std::set<std::string>& allowed) {
  if (!n.IsMap()) Fail(path, "expected a mapping");
  for (const auto& kv : n) {
    const std::string k = kv.first.as<std::string>();
    if (!allowed.count(k)) {
      std::string known;
      for (const auto& a : allowed) known += (known.empty() ? "" : ", ") + a;
      Fail(path + "." + k, "unknown key (known: " + known + ")");
    }
  }
}

ColumnType ParseType(const std::string& t, const std::string& path) {
  if (t == "int") return ColumnType::kInt;
  if (t == "float") return ColumnType::kFloat;
  if (t == "text") return ColumnType::kText;
  if (t == "timestamp") return ColumnType::kTimestamp;
  if (t == "date") return ColumnType::kDate;
  if (t == "bool") return ColumnType::kBool;
  Fail(path, "unknown type '" + t + "' (known: int, float, text, timestamp, date, bool)");
}

void CheckIdent(const std::string& v, const std::string& path) {
  if (!std::regex_match(v, kIdent)) Fail(path, "'" + v + "' is not a lower-case identifier");
}

void CheckQualified(const std::string& v, const std::string& path) {
  if (!std::regex_match(v, kQualified)) Fail(path, "'" + v + "' is not schema.table");
}

}  // namespace

const char* ColumnTypeName(ColumnType t) {
  switch (t) {
    case ColumnType::kInt: return "int";
    case ColumnType::kFloat: return "float";
    case ColumnType::kText: return "text";
    case ColumnType::kTimestamp: return "timestamp";
    case ColumnType::kDate: return "date";
    case ColumnType::kBool: return "bool";
  }
  return "text";
}

const char* PgTypeName(ColumnType t) {
  switch (t) {
    case ColumnType::kInt: return "bigint";
    case ColumnType::kFloat: return "double precision";
    case ColumnType::kText: return "text";
    case ColumnType::kTimestamp: return "timestamptz";
    case ColumnType::kDate: return "date";
    case ColumnType::kBool: return "boolean";
  }
  return "text";
}

int DatasetSpec::ColumnIndex(const std::string& n) const {
  for (size_t i = 0; i < columns.size(); ++i)
    if (columns[i].name == n) return static_cast<int>(i);
  return -1;
}

const DimensionSpec* PipelineSpec::FindDimension(const std::string& name) const {
  for (const auto& d : dimensions)
    if (d.name == name) return &d;
  return nullptr;
}

const FactSpec* PipelineSpec::FindFact(const std::string& name) const {
  for (const auto& f : facts)
    if (f.name == name) return &f;
  return nullptr;
}

const DatasetSpec* PipelineSpec::Find(const std::string& dataset) const {
  for (const auto& d : datasets)
    if (d.name == dataset) return &d;
  return nullptr;
}

namespace {

DimensionSpec ParseDimension(const YAML::Node& n, const PipelineSpec& spec, const std::string& origin, size_t i) {
  const std::string path = origin + ":dimensions[" + std::to_string(i) + "]";
  OnlyKeys(n, path, {"name", "from", "key", "surrogate_key", "effective_from", "deleted", "absent_means_deleted",
                     "scd1", "scd2", "unknown_key"});
  DimensionSpec dim;
  dim.name = Str(n["name"], path + ".name");
  CheckIdent(dim.name, path + ".name");
  for (const auto& other : spec.dimensions)
    if (other.name == dim.name) Fail(path + ".name", "duplicate dimension '" + dim.name + "'");
  if (std::find(spec.models.begin(), spec.models.end(), dim.name) == spec.models.end())
    Fail(path + ".name", "dimension '" + dim.name + "' is declared but not listed in models (which sets the build order)");
  dim.from = Str(n["from"], path + ".from");
  const DatasetSpec* ds = spec.Find(dim.from);
  if (!ds) Fail(path + ".from", "unknown dataset '" + dim.from + "'");
  auto column = [&](const std::string& name, const std::string& at) -> const Column& {
    const int idx = ds->ColumnIndex(name);
    if (idx < 0) Fail(at, "'" + name + "' is not a column of dataset '" + dim.from + "'");
    return ds->columns[idx];
  };
  dim.key = Str(n["key"], path + ".key");
  const ColumnType key_type = column(dim.key, path + ".key").type;
  if (key_type != ColumnType::kInt && key_type != ColumnType::kText)
    Fail(path + ".key", "a natural key must be an int or text column");
  dim.surrogate = n["surrogate_key"] ? Str(n["surrogate_key"], path + ".surrogate_key")
                                     : (dim.name.rfind("dim_", 0) == 0 ? dim.name.substr(4) : dim.name) + "_key";
  CheckIdent(dim.surrogate, path + ".surrogate_key");
  dim.effective_from = Str(n["effective_from"], path + ".effective_from");
  if (column(dim.effective_from, path + ".effective_from").type != ColumnType::kTimestamp)
    Fail(path + ".effective_from", "'" + dim.effective_from + "' must be a timestamp column (the source's business time)");
  if (n["deleted"]) {
    dim.deleted = Str(n["deleted"], path + ".deleted");
    const ColumnType t = column(dim.deleted, path + ".deleted").type;
    if (t != ColumnType::kBool && t != ColumnType::kTimestamp)
      Fail(path + ".deleted", "'" + dim.deleted + "' must be a bool or timestamp column");
  }
  if (n["absent_means_deleted"]) {
    const std::string v = Str(n["absent_means_deleted"], path + ".absent_means_deleted");
    if (v != "true" && v != "false") Fail(path + ".absent_means_deleted", "expected true or false, got '" + v + "'");
    dim.absent_means_deleted = v == "true";
    if (dim.absent_means_deleted && ds->source.incremental != "snapshot")
      Fail(path + ".absent_means_deleted",
           "dataset '" + dim.from + "' is not extracted as a full snapshot (source.incremental: snapshot), so a key "
           "missing from a day's rows says nothing about its deletion");
  }
  if (n["scd1"]) dim.scd1 = StrList(n["scd1"], path + ".scd1");
  if (n["scd2"]) dim.scd2 = StrList(n["scd2"], path + ".scd2");
  if (dim.scd1.empty() && dim.scd2.empty()) Fail(path, "expected attribute columns in scd1 and/or scd2");
  std::set<std::string> seen{dim.key, dim.effective_from, dim.deleted, dim.surrogate};
  for (const auto* list : {&dim.scd1, &dim.scd2}) {
    const std::string at = path + (list == &dim.scd1 ? ".scd1" : ".scd2");
    for (const auto& c : *list) {
      column(c, at);
      if (!seen.insert(c).second) Fail(at, "column '" + c + "' is the key, the effective time, or listed twice");
    }
  }
  for (const char* reserved : {"valid_from", "valid_to", "is_current", "version", "is_deleted", "is_inferred",
                               "attributes_as_of", "last_seen_ds", "observed_from"})
    if (seen.count(reserved)) Fail(path, std::string("column name '") + reserved + "' is reserved for the dimension's history");
  dim.unknown_key = n["unknown_key"] ? Str(n["unknown_key"], path + ".unknown_key")
                                     : (key_type == ColumnType::kInt ? "-1" : "unknown");
  if (key_type == ColumnType::kInt && !std::regex_match(dim.unknown_key, std::regex("-?[0-9]+")))
    Fail(path + ".unknown_key", "expected an integer, got '" + dim.unknown_key + "'");
  return dim;
}

FactSpec ParseFact(const YAML::Node& n, const PipelineSpec& spec, const std::string& origin, size_t i) {
  const std::string path = origin + ":facts[" + std::to_string(i) + "]";
  OnlyKeys(n, path, {"name", "from", "grain", "join", "event_time", "dimensions", "measures", "mode", "on_delete",
                     "deleted"});
  FactSpec f;
  f.name = Str(n["name"], path + ".name");
  CheckIdent(f.name, path + ".name");
  if (spec.FindDimension(f.name) || spec.FindFact(f.name)) Fail(path + ".name", "duplicate model '" + f.name + "'");
  const auto listed = std::find(spec.models.begin(), spec.models.end(), f.name);
  if (listed == spec.models.end())
    Fail(path + ".name", "fact '" + f.name + "' is declared but not listed in models (which sets the build order)");
  f.from = Str(n["from"], path + ".from");
  const DatasetSpec* from = spec.Find(f.from);
  if (!from) Fail(path + ".from", "unknown dataset '" + f.from + "'");
  std::vector<const DatasetSpec*> sources{from};
  f.grain = StrList(n["grain"], path + ".grain");
  if (f.grain.empty()) Fail(path + ".grain", "expected the columns that identify one fact row");
  for (const auto& g : f.grain)
    if (from->ColumnIndex(g) < 0) Fail(path + ".grain", "'" + g + "' is not a column of dataset '" + f.from + "'");
  if (const YAML::Node joins = n["join"]) {
    if (!joins.IsSequence()) Fail(path + ".join", "expected a list of {dataset, on}");
    for (size_t j = 0; j < joins.size(); ++j) {
      const std::string jp = path + ".join[" + std::to_string(j) + "]";
      OnlyKeys(joins[j], jp, {"dataset", "on"});
      FactSpec::Join join{Str(joins[j]["dataset"], jp + ".dataset"), StrList(joins[j]["on"], jp + ".on")};
      const DatasetSpec* d = spec.Find(join.dataset);
      if (!d) Fail(jp + ".dataset", "unknown dataset '" + join.dataset + "'");
      if (join.on.empty()) Fail(jp + ".on", "expected the columns to join on");
      for (const auto& c : join.on)
        if (d->ColumnIndex(c) < 0 || from->ColumnIndex(c) < 0)
          Fail(jp + ".on", "'" + c + "' must be a column of both '" + f.from + "' and '" + join.dataset + "'");
      sources.push_back(d);
      f.joins.push_back(std::move(join));
    }
  }
  // A column named by the fact: from `from` first, then the joins in order.
  auto column = [&](const std::string& name, const std::string& at) -> const Column& {
    for (const DatasetSpec* d : sources)
      if (d->ColumnIndex(name) >= 0) return d->columns[d->ColumnIndex(name)];
    Fail(at, "'" + name + "' is not a column of '" + f.from + "' or a joined dataset");
  };
  f.event_time = Str(n["event_time"], path + ".event_time");
  if (column(f.event_time, path + ".event_time").type != ColumnType::kTimestamp)
    Fail(path + ".event_time", "'" + f.event_time + "' must be a timestamp column");
  if (const YAML::Node dims = n["dimensions"]) {
    if (!dims.IsSequence()) Fail(path + ".dimensions", "expected a list of {dimension, key}");
    for (size_t j = 0; j < dims.size(); ++j) {
      const std::string dp = path + ".dimensions[" + std::to_string(j) + "]";
      OnlyKeys(dims[j], dp, {"dimension", "key"});
      FactSpec::DimensionRef ref{Str(dims[j]["dimension"], dp + ".dimension"), Str(dims[j]["key"], dp + ".key")};
      const DimensionSpec* dim = spec.FindDimension(ref.dimension);
      if (!dim) Fail(dp + ".dimension", "unknown dimension '" + ref.dimension + "' (declare it under dimensions)");
      if (std::find(spec.models.begin(), spec.models.end(), ref.dimension) > listed)
        Fail(dp + ".dimension", "dimension '" + ref.dimension + "' must come before '" + f.name + "' in models");
      column(ref.key, dp + ".key");
      f.dimensions.push_back(std::move(ref));
    }
  }
  const YAML::Node ms = n["measures"];
  if (!ms || !ms.IsSequence() || ms.size() == 0) Fail(path + ".measures", "expected a non-empty list of {name, type, sql}");
  static const std::regex kPgType("(bigint|integer|smallint|double precision|real|text|boolean|date|timestamptz|numeric(\\([0-9]+,[0-9]+\\))?)");
  std::set<std::string> names(f.grain.begin(), f.grain.end());
  names.insert({"date_key", "is_deleted", f.event_time});
  for (const auto& ref : f.dimensions) names.insert(spec.FindDimension(ref.dimension)->surrogate);
  for (size_t j = 0; j < ms.size(); ++j) {
    const std::string mp = path + ".measures[" + std::to_string(j) + "]";
    OnlyKeys(ms[j], mp, {"name", "type", "sql"});
    FactSpec::Measure m{Str(ms[j]["name"], mp + ".name"), Str(ms[j]["type"], mp + ".type"), Str(ms[j]["sql"], mp + ".sql")};
    CheckIdent(m.name, mp + ".name");
    if (!names.insert(m.name).second) Fail(mp + ".name", "column '" + m.name + "' already exists in the fact table");
    if (!std::regex_match(m.type, kPgType))
      Fail(mp + ".type", "unsupported type '" + m.type +
                             "' (known: bigint, integer, smallint, double precision, real, text, boolean, date, "
                             "timestamptz, numeric, numeric(p,s))");
    if (m.sql.find(';') != std::string::npos) Fail(mp + ".sql", "one expression, without ';'");
    f.measures.push_back(std::move(m));
  }
  if (n["mode"]) {
    f.mode = Str(n["mode"], path + ".mode");
    if (f.mode != "merge" && f.mode != "replace") Fail(path + ".mode", "unknown mode '" + f.mode + "' (known: merge, replace)");
  }
  if (n["on_delete"]) {
    f.on_delete = Str(n["on_delete"], path + ".on_delete");
    if (f.on_delete != "delete" && f.on_delete != "flag")
      Fail(path + ".on_delete", "unknown policy '" + f.on_delete + "' (known: delete, flag)");
  }
  if (n["deleted"]) {
    f.deleted = Str(n["deleted"], path + ".deleted");
    const ColumnType t = column(f.deleted, path + ".deleted").type;
    if (t != ColumnType::kBool && t != ColumnType::kTimestamp)
      Fail(path + ".deleted", "'" + f.deleted + "' must be a bool or timestamp column (true, or set, when deleted)");
  }
  return f;
}

}  // namespace

std::vector<DeletionSource> FactDeletionSources(const PipelineSpec& spec, const FactSpec& f) {
  const auto captured = [&spec](const std::string& d) {
    return std::find(spec.cdc.datasets.begin(), spec.cdc.datasets.end(), d) != spec.cdc.datasets.end();
  };
  const auto same_set = [](std::vector<std::string> a, std::vector<std::string> b) {
    std::sort(a.begin(), a.end());
    std::sort(b.begin(), b.end());
    return a == b;
  };
  std::vector<DeletionSource> out;
  const DatasetSpec* from = spec.Find(f.from);
  if (from && captured(f.from) && same_set(from->key, f.grain)) out.push_back({f.from, f.grain});
  for (const auto& j : f.joins) {
    const DatasetSpec* d = spec.Find(j.dataset);
    if (d && captured(j.dataset) && same_set(d->key, j.on)) out.push_back({j.dataset, j.on});
  }
  return out;
}

PipelineSpec ParsePipelineSpec(const std::string& text, const std::string& origin) {
  YAML::Node root;
  try {
    root = YAML::Load(text);
  } catch (const YAML::Exception& e) {
    Fail(origin, std::string("not valid YAML: ") + e.what());
  }
  OnlyKeys(root, origin, {"pipeline", "datasets", "dimensions", "facts", "models", "checks", "schedule", "cdc", "endpoints"});
  PipelineSpec spec;
  spec.name = Str(root["pipeline"], origin + ":pipeline");
  CheckIdent(spec.name, origin + ":pipeline");

  const YAML::Node ds = root["datasets"];
  if (!ds || !ds.IsSequence() || ds.size() == 0) Fail(origin + ":datasets", "expected a non-empty list");
  std::set<std::string> names;
  for (size_t i = 0; i < ds.size(); ++i) {
    const std::string path = origin + ":datasets[" + std::to_string(i) + "]";
    const YAML::Node d = ds[i];
    OnlyKeys(d, path, {"name", "source", "key", "columns", "silver", "bronze"});
    DatasetSpec dataset;
    dataset.name = Str(d["name"], path + ".name");
    CheckIdent(dataset.name, path + ".name");
    if (!names.insert(dataset.name).second) Fail(path + ".name", "duplicate dataset '" + dataset.name + "'");

    const YAML::Node s = d["source"];
    if (!s) Fail(path + ".source", "missing");
    OnlyKeys(s, path + ".source",
             {"type", "table", "cursor", "incremental", "path", "date_param", "since_param", "since_field",
              "overlap_seconds", "records", "format", "params", "pagination", "auth", "rate_limit",
              "timeout_ms", "max_attempts", "schema_drift", "table_id", "shards"});
    SourceSpec& src = dataset.source;
    src.type = Str(s["type"], path + ".source.type");
    auto opt = [&](const YAML::Node& node, const std::string& at, const char* key, std::string& field) {
      if (node[key]) field = Str(node[key], at + "." + key);
    };
    auto integer = [&](const YAML::Node& node, const std::string& at, const char* key, auto* out, long lo) {
      if (!node[key]) return;
      const std::string v = Str(node[key], at + "." + key);
      try {
        size_t used = 0;
        const long x = std::stol(v, &used);
        if (used != v.size() || x < lo) throw std::invalid_argument(v);
        *out = static_cast<std::remove_pointer_t<decltype(out)>>(x);
      } catch (const std::exception&) {
        Fail(at + "." + key, "expected an integer >= " + std::to_string(lo) + ", got '" + v + "'");
      }
    };
    auto one_of = [&](const std::string& v, const std::string& at, const std::set<std::string>& allowed) {
      if (allowed.count(v)) return;
      std::string known;
      for (const auto& a : allowed) known += (known.empty() ? "" : ", ") + a;
      Fail(at, "unknown value '" + v + "' (known: " + known + ")");
    };
    const std::string sp = path + ".source";
    opt(s, sp, "table", src.table);
    opt(s, sp, "cursor", src.cursor);
    opt(s, sp, "incremental", src.incremental);
    opt(s, sp, "path", src.path);
    opt(s, sp, "date_param", src.date_param);
    opt(s, sp, "since_param", src.since_param);
    opt(s, sp, "since_field", src.since_field);
    integer(s, sp, "overlap_seconds", &src.overlap_seconds, 0);
    opt(s, sp, "records", src.records);
    opt(s, sp, "format", src.format);
    opt(s, sp, "table_id", src.table_id);
    opt(s, sp, "schema_drift", src.schema_drift);
    integer(s, sp, "timeout_ms", &src.timeout_ms, 1);
    integer(s, sp, "shards", &src.shards, 1);
    integer(s, sp, "max_attempts", &src.max_attempts, 1);
    one_of(src.schema_drift, sp + ".schema_drift", {"ignore", "add_column", "fail"});
    if (const YAML::Node pr = s["params"]) {
      if (!pr.IsMap()) Fail(sp + ".params", "expected a mapping of query parameters");
      for (const auto& kv : pr) src.params[kv.first.as<std::string>()] = Str(kv.second, sp + ".params." + kv.first.as<std::string>());
    }
    if (const YAML::Node pg = s["pagination"]) {
      const std::string at = sp + ".pagination";
      OnlyKeys(pg, at, {"style", "page_param", "total_pages_field", "offset_param", "limit_param", "limit",
                        "cursor_param", "cursor_field", "total_field"});
      PaginationSpec& p = src.pagination;
      opt(pg, at, "style", p.style);
      one_of(p.style, at + ".style", {"none", "page", "offset", "cursor", "link"});
      opt(pg, at, "page_param", p.page_param);
      opt(pg, at, "total_pages_field", p.total_pages_field);
      opt(pg, at, "offset_param", p.offset_param);
      opt(pg, at, "limit_param", p.limit_param);
      integer(pg, at, "limit", &p.limit, 1);
      opt(pg, at, "cursor_param", p.cursor_param);
      opt(pg, at, "cursor_field", p.cursor_field);
      opt(pg, at, "total_field", p.total_field);
    }
    if (const YAML::Node au = s["auth"]) {
      const std::string at = sp + ".auth";
      OnlyKeys(au, at, {"type", "env", "header"});
      src.auth.type = Str(au["type"], at + ".type");
      one_of(src.auth.type, at + ".type", {"bearer", "header"});
      src.auth.env = Str(au["env"], at + ".env");
      opt(au, at, "header", src.auth.header);
      if (src.auth.type == "header" && !au["header"]) Fail(at + ".header", "missing (the header that carries the key)");
    }
    if (const YAML::Node rl = s["rate_limit"]) {
      const std::string at = sp + ".rate_limit";
      OnlyKeys(rl, at, {"rps", "burst"});
      const std::string v = Str(rl["rps"], at + ".rps");
      try {
        src.rate_limit_rps = std::stod(v);
      } catch (const std::exception&) {
        src.rate_limit_rps = -1;
      }
      if (!(src.rate_limit_rps > 0)) Fail(at + ".rps", "expected a positive number, got '" + v + "'");
      integer(rl, at, "burst", &src.rate_limit_burst, 1);
    }
    if (src.type == "postgres") {
      CheckQualified(src.table, sp + ".table");
      CheckIdent(src.cursor, sp + ".cursor");
      one_of(src.incremental, sp + ".incremental", {"interval", "watermark", "snapshot"});
      if (src.shards > 1 && src.incremental == "snapshot")
        Fail(sp + ".shards", "snapshot extractions are not sharded (use incremental: interval or watermark)");
    } else if (src.type == "http_json") {
      if (src.path.empty() || src.path[0] != '/') Fail(sp + ".path", "expected a path starting with /");
      one_of(src.format, sp + ".format", {"objects", "census"});
      if (!src.date_param.empty() && !src.since_param.empty())
        Fail(sp + ".since_param", "a source is incremental by date_param or by since_param, not both");
      if (!src.since_param.empty() && src.since_field.empty())
        Fail(sp + ".since_field", "missing (the record field that holds the cursor)");
    } else if (src.type == "html_table") {
      if (src.path.empty() || src.path[0] != '/') Fail(sp + ".path", "expected a path starting with /");
      if (src.table_id.empty()) Fail(sp + ".table_id", "missing");
    } else {
      Fail(sp + ".type", "unknown source type '" + src.type + "' (known: postgres, http_json, html_table)");
    }

    const YAML::Node cols = d["columns"];
    if (!cols || !cols.IsSequence() || cols.size() == 0) Fail(path + ".columns", "expected a non-empty list");
    for (size_t c = 0; c < cols.size(); ++c) {
      const std::string cpath = path + ".columns[" + std::to_string(c) + "]";
      OnlyKeys(cols[c], cpath, {"name", "type", "header"});
      Column col;
      col.name = Str(cols[c]["name"], cpath + ".name");
      CheckIdent(col.name, cpath + ".name");
      if (col.name == "ds" || col.name == "run_id") Fail(cpath + ".name", "'" + col.name + "' is reserved");
      col.type = ParseType(Str(cols[c]["type"], cpath + ".type"), cpath + ".type");
      if (cols[c]["header"]) col.header = Str(cols[c]["header"], cpath + ".header");
      if (dataset.ColumnIndex(col.name) >= 0) Fail(cpath + ".name", "duplicate column '" + col.name + "'");
      dataset.columns.push_back(col);
    }
    if (d["key"]) dataset.key = StrList(d["key"], path + ".key");
    if (const YAML::Node b = d["bronze"]) {
      OnlyKeys(b, path + ".bronze", {"format", "compression"});
      if (b["format"]) dataset.bronze_format = Str(b["format"], path + ".bronze.format");
      if (b["compression"]) dataset.bronze_compression = Str(b["compression"], path + ".bronze.compression");
      ParseLakeFormat(dataset.bronze_format, dataset.bronze_compression, path + ".bronze");
    }
    if (d["silver"]) {
      dataset.silver = Str(d["silver"], path + ".silver");
      if (dataset.silver != "none" && dataset.silver != "snappy" && dataset.silver != "zstd")
        Fail(path + ".silver", "unknown Parquet compression '" + dataset.silver + "' (known: none, snappy, zstd)");
    }
    for (const auto& k : dataset.key)
      if (dataset.ColumnIndex(k) < 0) Fail(path + ".key", "key column '" + k + "' is not a declared column");
    if (src.type == "postgres" && dataset.ColumnIndex(src.cursor) < 0)
      Fail(path + ".source.cursor", "cursor column '" + src.cursor + "' is not a declared column");
    if (!src.since_field.empty() && dataset.ColumnIndex(src.since_field) < 0)
      Fail(path + ".source.since_field", "cursor field '" + src.since_field + "' is not a declared column");
    if ((!src.since_param.empty() || src.incremental == "watermark") && dataset.key.empty())
      Fail(path + ".key", "a watermark-incremental dataset needs a key (the watermark is (cursor, key))");
    spec.datasets.push_back(std::move(dataset));
  }

  if (root["models"]) spec.models = StrList(root["models"], origin + ":models");

  if (const YAML::Node dims = root["dimensions"]) {
    if (!dims.IsSequence()) Fail(origin + ":dimensions", "expected a list");
    for (size_t i = 0; i < dims.size(); ++i) spec.dimensions.push_back(ParseDimension(dims[i], spec, origin, i));
  }
  if (const YAML::Node facts = root["facts"]) {
    if (!facts.IsSequence()) Fail(origin + ":facts", "expected a list");
    for (size_t i = 0; i < facts.size(); ++i) spec.facts.push_back(ParseFact(facts[i], spec, origin, i));
  }

  if (const YAML::Node c = root["cdc"]) {
    const std::string path = origin + ":cdc";
    OnlyKeys(c, path, {"slot", "publication", "datasets", "heartbeat_seconds", "batch_ms", "batch_changes"});
    CdcSpec& cdc = spec.cdc;
    cdc.present = true;
    cdc.slot = Str(c["slot"], path + ".slot");
    CheckIdent(cdc.slot, path + ".slot");
    cdc.publication = Str(c["publication"], path + ".publication");
    CheckIdent(cdc.publication, path + ".publication");
    cdc.datasets = StrList(c["datasets"], path + ".datasets");
    if (cdc.datasets.empty()) Fail(path + ".datasets", "expected at least one dataset");
    for (const auto& name : cdc.datasets) {
      const DatasetSpec* d = spec.Find(name);
      if (!d) Fail(path + ".datasets", "unknown dataset '" + name + "'");
      if (d->source.type != "postgres") Fail(path + ".datasets", "dataset '" + name + "' is not a postgres source");
      if (d->key.empty()) Fail(path + ".datasets", "dataset '" + name + "' needs a key to be captured");
    }
    for (auto [key, out] : {std::pair<const char*, int*>{"heartbeat_seconds", &cdc.heartbeat_seconds},
                            {"batch_ms", &cdc.batch_ms}, {"batch_changes", &cdc.batch_changes}}) {
      if (!c[key]) continue;
      const std::string v = Str(c[key], path + "." + key);
      try {
        size_t used = 0;
        *out = std::stoi(v, &used);
        if (used != v.size() || *out < 1) throw std::invalid_argument(v);
      } catch (const std::exception&) {
        Fail(path + "." + key, "expected a positive integer, got '" + v + "'");
      }
    }
  }

  if (const YAML::Node sc = root["schedule"]) {
    const std::string path = origin + ":schedule";
    OnlyKeys(sc, path, {"cron", "timezone", "start_date", "catchup", "deadline"});
    ScheduleSpec& s = spec.schedule;
    s.present = true;
    s.cron = Str(sc["cron"], path + ".cron");
    try {
      CronExpr::Parse(s.cron);
    } catch (const InputError& e) {
      Fail(path + ".cron", e.what());
    }
    if (sc["timezone"]) s.timezone = Str(sc["timezone"], path + ".timezone");
    s.start_date = Str(sc["start_date"], path + ".start_date");
    if (!IsValidDate(s.start_date)) Fail(path + ".start_date", "expected YYYY-MM-DD, got '" + s.start_date + "'");
    if (sc["catchup"]) {
      const std::string v = Str(sc["catchup"], path + ".catchup");
      if (v != "true" && v != "false") Fail(path + ".catchup", "expected true or false, got '" + v + "'");
      s.catchup = v == "true";
    }
    if (sc["deadline"]) {
      s.deadline = Str(sc["deadline"], path + ".deadline");
      static const std::regex kHhMm("^([01][0-9]|2[0-3]):[0-5][0-9]$");
      if (!std::regex_match(s.deadline, kHhMm)) Fail(path + ".deadline", "expected HH:MM, got '" + s.deadline + "'");
    }
  }

  if (root["checks"]) {
    const YAML::Node cs = root["checks"];
    if (!cs.IsSequence()) Fail(origin + ":checks", "expected a list");
    std::set<std::string> check_names;
    for (size_t i = 0; i < cs.size(); ++i) {
      const std::string path = origin + ":checks[" + std::to_string(i) + "]";
      OnlyKeys(cs[i], path, {"name", "kind", "severity", "table", "column", "columns", "to", "values", "min",
                             "max", "max_age_hours", "lookback_days", "max_sigma", "date_column", "sql",
                             "datasets", "fact", "measure", "slice"});
      CheckSpec c;
      const YAML::Node n = cs[i];
      c.kind = Str(n["kind"], path + ".kind");
      c.severity = n["severity"] ? Str(n["severity"], path + ".severity") : "error";
      if (c.severity != "error" && c.severity != "warn")
        Fail(path + ".severity", "expected error or warn, got '" + c.severity + "'");
      if (n["table"]) {
        c.table = Str(n["table"], path + ".table");
        CheckQualified(c.table, path + ".table");
      }
      if (n["column"]) c.columns = {Str(n["column"], path + ".column")};
      if (n["columns"]) c.columns = StrList(n["columns"], path + ".columns");
      for (const auto& col : c.columns) CheckIdent(col, path + ".columns");
      if (n["values"]) c.values = StrList(n["values"], path + ".values");
      if (n["datasets"]) c.datasets = StrList(n["datasets"], path + ".datasets");
      for (const auto& d : c.datasets)
        if (!spec.Find(d)) Fail(path + ".datasets", "unknown dataset '" + d + "'");
      auto number = [&](const char* key, double* out) {
        if (!n[key]) return;
        const std::string v = Str(n[key], path + "." + key);
        try {
          size_t used = 0;
          *out = std::stod(v, &used);
          if (used != v.size()) throw std::invalid_argument(v);
        } catch (const std::exception&) {
          Fail(path + "." + key, "expected a number, got '" + v + "'");
        }
      };
      auto text_number = [&](const char* key, std::string* out) {
        double ignored = 0;
        number(key, &ignored);
        if (n[key]) *out = Str(n[key], path + "." + key);
      };
      text_number("min", &c.min);
      text_number("max", &c.max);
      number("max_age_hours", &c.max_age_hours);
      number("max_sigma", &c.max_sigma);
      double lookback = c.lookback_days;
      number("lookback_days", &lookback);
      c.lookback_days = static_cast<int>(lookback);
      if (c.lookback_days < 1) Fail(path + ".lookback_days", "must be at least 1");
      if (n["date_column"]) {
        c.date_column = Str(n["date_column"], path + ".date_column");
        CheckIdent(c.date_column, path + ".date_column");
      }
      if (n["sql"]) c.sql = Str(n["sql"], path + ".sql");
      if (n["slice"]) {
        c.slice = Str(n["slice"], path + ".slice");
        CheckIdent(c.slice, path + ".slice");
      }
      const bool needs_column = c.kind == "not_null" || c.kind == "unique" || c.kind == "relationships" ||
                                c.kind == "accepted_values" || c.kind == "range" || c.kind == "freshness";
      if ((needs_column || c.kind == "volume_anomaly") && c.table.empty())
        Fail(path, "check kind '" + c.kind + "' needs a table");
      if (needs_column && c.columns.empty()) Fail(path, "check kind '" + c.kind + "' needs column(s)");
      auto parse_to = [&]() {
        const std::string to = Str(n["to"], path + ".to");
        const auto dot = to.rfind('.');
        if (dot == std::string::npos) Fail(path + ".to", "expected schema.table.column");
        c.to_table = to.substr(0, dot);
        c.to_column = to.substr(dot + 1);
        CheckQualified(c.to_table, path + ".to");
        CheckIdent(c.to_column, path + ".to");
      };
      if (c.kind == "relationships") {
        parse_to();
      } else if (c.kind == "reconciliation") {
        if (n["to"]) parse_to();
        if (n["fact"]) {
          if (n["to"] || n["datasets"]) Fail(path + ".fact", "a fact reconciliation takes no 'to' or 'datasets'");
          c.fact = Str(n["fact"], path + ".fact");
          const FactSpec* f = spec.FindFact(c.fact);
          if (!f) Fail(path + ".fact", "unknown fact '" + c.fact + "' (declare it under facts)");
          if (n["measure"]) {
            c.measure = Str(n["measure"], path + ".measure");
            if (std::none_of(f->measures.begin(), f->measures.end(), [&](const auto& m) { return m.name == c.measure; }))
              Fail(path + ".measure", "'" + c.measure + "' is not a measure of fact '" + c.fact + "'");
          }
        } else if (n["measure"]) {
          Fail(path + ".measure", "a measure needs 'fact'");
        }
      } else if (c.kind == "accepted_values") {
        if (c.values.empty()) Fail(path + ".values", "accepted_values needs a non-empty list");
      } else if (c.kind == "range") {
        if (c.min.empty() && c.max.empty()) Fail(path, "range needs min, max or both");
      } else if (c.kind == "custom_sql") {
        if (c.sql.empty()) Fail(path + ".sql", "custom_sql needs the SQL that returns failing rows");
        if (!n["name"]) Fail(path + ".name", "custom_sql checks need a name");
      } else if (c.kind != "not_null" && c.kind != "unique" && c.kind != "freshness" &&
                 c.kind != "volume_anomaly" && c.kind != "dead_letters") {
        Fail(path + ".kind", "unknown check kind '" + c.kind +
                                 "' (known: not_null, unique, relationships, accepted_values, range, freshness, "
                                 "volume_anomaly, custom_sql, reconciliation, dead_letters)");
      }
      c.name = cs[i]["name"] ? Str(cs[i]["name"], path + ".name") : "";
      if (c.name.empty()) {
        c.name = c.kind;
        if (!c.table.empty()) c.name += ":" + c.table;
        for (const auto& col : c.columns) c.name += (col == c.columns.front() ? "." : "+") + col;
      }
      if (!check_names.insert(c.name).second) Fail(path + ".name", "duplicate check '" + c.name + "'");
      spec.checks.push_back(c);
    }
  }
  if (root["endpoints"]) spec.endpoints = ParseEndpoints(root["endpoints"], origin);
  return spec;
}

PipelineSpec LoadPipelineSpec(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const std::string file = fs::is_directory(path, ec) ? (fs::path(path) / "pipeline.yaml").string() : path;
  std::ifstream in(file);
  if (!in) throw InputError(file + ": cannot open pipeline spec");
  std::stringstream ss;
  ss << in.rdbuf();
  PipelineSpec spec = ParsePipelineSpec(ss.str(), file);
  spec.sql_models = LoadSqlModels((fs::path(file).parent_path() / "models").string());
  spec.migrations = LoadMigrations((fs::path(file).parent_path() / "migrations").string());
  for (const auto& m : spec.sql_models) {
    const std::string table = m.name.substr(m.name.find('.') + 1);
    if (m.name.rfind("dwh.", 0) == 0 && (spec.FindDimension(table) || spec.FindFact(table)))
      throw InputError(m.file + ":1: " + m.name + " is declared under " + (spec.FindFact(table) ? "facts" : "dimensions") +
                       " in " + file + "; a model file cannot build it too");
  }
  OrderSqlModels(spec.sql_models);  // refuses a cycle at start-up
  return spec;
}

}  // namespace strata

#include "common/sql_model.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <fstream>
#include <functional>
#include <regex>
#include <set>
#include <sstream>

#include "common/errors.h"

namespace strata {
namespace {

const std::set<std::string> kKinds = {"full", "incremental_by_ds", "incremental_by_key", "view"};
const std::set<std::string> kParameters = {"ds", "start", "end"};
// The schemas a model may read; a model builds tables in dwh or marts.
const std::set<std::string> kSchemas = {"raw", "staging", "dwh", "marts", "serving", "ops"};
const std::regex kIdent("^[a-z_][a-z0-9_]*$");

[[noreturn]] void Fail(const std::string& file, int line, const std::string& what) {
  throw InputError(file + ":" + std::to_string(line) + ": " + what);
}

int LineAt(const std::string& text, size_t offset) {
  return 1 + static_cast<int>(std::count(text.begin(), text.begin() + static_cast<long>(std::min(offset, text.size())), '\n'));
}

bool IdentChar(char c) { return std::isalnum(static_cast<unsigned char>(c)) || c == '_'; }

std::string Replace(const SqlModel& m, const std::map<std::string, std::string>& with) {
  std::string out;
  size_t copied = 0;
  ScanSql(
      m.sql,
      [&](size_t pos, size_t len, const std::string& name) {
        out += m.sql.substr(copied, pos - copied) + with.at(name);
        copied = pos + len;
      },
      [](size_t, size_t) {}, [](size_t) {});
  return out + m.sql.substr(copied);
}

std::vector<std::string> Columns(const YAML::Node& n, const std::string& file, int line, const std::string& key) {
  std::vector<std::string> out;
  if (n.IsScalar()) out.push_back(n.as<std::string>());
  else if (n.IsSequence())
    for (const auto& c : n) {
      if (!c.IsScalar()) Fail(file, line + static_cast<int>(c.Mark().line), key + ": expected column names");
      out.push_back(c.as<std::string>());
    }
  else Fail(file, line + static_cast<int>(n.Mark().line), key + ": expected a column name or a list of them");
  for (const auto& c : out)
    if (!std::regex_match(c, kIdent))
      Fail(file, line + static_cast<int>(n.Mark().line), key + ": '" + c + "' is not a column name (lower case, digits, _)");
  return out;
}

}  // namespace

void ScanSql(const std::string& sql, const std::function<void(size_t, size_t, const std::string&)>& on_param,
          const std::function<void(size_t, size_t)>& on_word, const std::function<void(size_t)>& on_semicolon) {
  size_t i = 0;
  const size_t n = sql.size();
  // One part of a name at `j` (bare or quoted); returns the position after it.
  const auto part = [&](size_t j) {
    if (j < n && sql[j] == '"') {
      for (++j; j < n; ++j)
        if (sql[j] == '"') {
          if (j + 1 < n && sql[j + 1] == '"') ++j;
          else return j + 1;
        }
      return n;
    }
    while (j < n && IdentChar(sql[j])) ++j;
    return j;
  };
  while (i < n) {
    const char c = sql[i];
    if (c == '\'') {
      const bool escapes = i > 0 && (sql[i - 1] == 'E' || sql[i - 1] == 'e') && (i < 2 || !IdentChar(sql[i - 2]));
      for (++i; i < n; ++i) {
        if (escapes && sql[i] == '\\') {
          ++i;
          continue;
        }
        if (sql[i] == '\'') {
          if (i + 1 < n && sql[i + 1] == '\'') ++i;
          else break;
        }
      }
      ++i;
    } else if (c == '$' && i + 1 < n && !std::isdigit(static_cast<unsigned char>(sql[i + 1]))) {
      size_t j = i + 1;
      while (j < n && IdentChar(sql[j])) ++j;
      if (j < n && sql[j] == '$') {  // $tag$ ... $tag$
        const std::string tag = sql.substr(i, j - i + 1);
        const size_t end = sql.find(tag, j + 1);
        i = end == std::string::npos ? n : end + tag.size();
      } else {
        ++i;
      }
    } else if (c == '-' && i + 1 < n && sql[i + 1] == '-') {
      while (i < n && sql[i] != '\n') ++i;
    } else if (c == '/' && i + 1 < n && sql[i + 1] == '*') {
      const size_t end = sql.find("*/", i + 2);
      i = end == std::string::npos ? n : end + 2;
    } else if (c == '{') {
      const size_t end = sql.find('}', i);
      if (end != std::string::npos && end - i <= 40) {
        on_param(i, end - i + 1, sql.substr(i + 1, end - i - 1));
        i = end + 1;
      } else {
        ++i;
      }
    } else if (c == ';') {
      on_semicolon(i);
      ++i;
    } else if (IdentChar(c) || c == '"') {
      size_t j = part(i);
      while (j + 1 < n && sql[j] == '.' && (IdentChar(sql[j + 1]) || sql[j + 1] == '"')) j = part(j + 1);
      on_word(i, j - i);
      i = j;
    } else {
      ++i;
    }
  }
}

std::string SqlWord(const std::string& sql, size_t pos, size_t len) {
  std::string word;
  bool quoted = false;
  for (size_t k = pos; k < pos + len; ++k) {
    if (sql[k] == '"') {
      if (quoted && k + 1 < pos + len && sql[k + 1] == '"') word += sql[++k];
      else quoted = !quoted;
    } else {
      word += quoted ? sql[k] : static_cast<char>(std::tolower(static_cast<unsigned char>(sql[k])));
    }
  }
  return word;
}

std::vector<std::string> SqlModel::Upstream() const {
  std::vector<std::string> out;
  for (const auto* list : {&reads, &depends_on})
    for (const auto& t : *list)
      if (t != name && std::find(out.begin(), out.end(), t) == out.end()) out.push_back(t);
  return out;
}

SqlModel ParseSqlModel(const std::string& text, const std::string& file) {
  SqlModel m;
  m.file = file;
  // Only blank lines and -- comments may come before the declaration.
  size_t p = 0;
  for (;;) {
    while (p < text.size() && std::isspace(static_cast<unsigned char>(text[p]))) ++p;
    if (text.compare(p, 2, "--") != 0) break;
    p = text.find('\n', p);
    if (p == std::string::npos) p = text.size();
  }
  if (text.compare(p, 9, "/* strata") != 0)
    Fail(file, LineAt(text, p), "a model file starts with its declaration: a '/* strata' block comment (name, kind, ...)");
  const size_t yaml_begin = p + 9, yaml_end = text.find("*/", yaml_begin);
  if (yaml_end == std::string::npos) Fail(file, LineAt(text, p), "the '/* strata' declaration is not closed with '*/'");
  const int yaml_line = LineAt(text, yaml_begin);
  YAML::Node decl;
  try {
    decl = YAML::Load(text.substr(yaml_begin, yaml_end - yaml_begin));
  } catch (const YAML::Exception& e) {
    Fail(file, yaml_line + std::max(0, e.mark.line), "the declaration is not valid YAML: " + e.msg);
  }
  if (!decl.IsMap()) Fail(file, yaml_line, "the declaration must be a YAML mapping (name: ..., kind: ...)");
  const auto line_of = [&](const YAML::Node& n) { return yaml_line + std::max(0, n.Mark().line); };
  for (const auto& kv : decl) {
    const std::string key = kv.first.as<std::string>();
    const int line = line_of(kv.first);
    const YAML::Node& v = kv.second;
    const auto scalar = [&]() {
      if (!v.IsScalar()) Fail(file, line, key + ": expected a single value");
      return v.as<std::string>();
    };
    if (key == "name") m.name = scalar();
    else if (key == "kind") m.kind = scalar();
    else if (key == "time_column") m.time_column = scalar();
    else if (key == "publish") {
      const std::string v = scalar();
      if (v != "true" && v != "false") Fail(file, line, "publish: expected true or false, got '" + v + "'");
      m.publish = v == "true";
    } else if (key == "lookahead_days") {
      const std::string v = scalar();
      if (v.empty() || v.size() > 2 || !std::all_of(v.begin(), v.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
          std::stoi(v) > 31)
        Fail(file, line, "lookahead_days: expected a whole number of days from 0 to 31, got '" + v + "'");
      m.lookahead_days = std::stoi(v);
    }
    else if (key == "unique_key") m.unique_key = Columns(v, file, yaml_line, key);
    else if (key == "description") m.description = scalar();
    else if (key == "depends_on") {
      // table names, checked below
    } else if (key == "indexes") {
      if (!v.IsSequence()) Fail(file, line, "indexes: expected a list of column lists, e.g. [[product_id], [ds, status]]");
      for (const auto& ix : v) m.indexes.push_back(Columns(ix, file, yaml_line, "indexes"));
    } else if (key == "columns") {
      if (!v.IsMap()) Fail(file, line, "columns: expected a mapping of column name to description");
      for (const auto& c : v) m.columns[c.first.as<std::string>()] = c.second.IsScalar() ? c.second.as<std::string>() : "";
    } else {
      Fail(file, line, "unknown key '" + key +
                           "' (known: name, kind, time_column, lookahead_days, unique_key, indexes, depends_on, publish, description, "
                           "columns)");
    }
    if (key == "depends_on") {
      std::vector<std::string> deps;
      if (v.IsScalar()) deps.push_back(v.as<std::string>());
      else if (v.IsSequence())
        for (const auto& d : v) deps.push_back(d.IsScalar() ? d.as<std::string>() : "");
      else Fail(file, line, "depends_on: expected a table name or a list of them");
      for (const auto& d : deps) {
        const auto dot = d.find('.');
        if (dot == std::string::npos || !kSchemas.count(d.substr(0, dot)) || !std::regex_match(d.substr(dot + 1), kIdent))
          Fail(file, line, "depends_on: '" + d + "' is not a schema.table name (schemas: raw, staging, dwh, marts, serving, ops)");
        m.depends_on.push_back(d);
      }
    }
  }
  const int decl_line = LineAt(text, p);
  if (m.name.empty()) Fail(file, decl_line, "name: missing (the table the model builds, e.g. marts.daily_sales)");
  {
    const auto dot = m.name.find('.');
    const std::string schema = dot == std::string::npos ? "" : m.name.substr(0, dot);
    if ((schema != "dwh" && schema != "marts") || !std::regex_match(m.name.substr(dot + 1), kIdent))
      Fail(file, line_of(decl["name"]), "name: '" + m.name + "' must be dwh.<table> or marts.<table> (lower case, digits, _)");
  }
  if (m.kind.empty()) Fail(file, decl_line, "kind: missing (full, incremental_by_ds, incremental_by_key or view)");
  if (!kKinds.count(m.kind))
    Fail(file, line_of(decl["kind"]), "kind: unknown kind '" + m.kind + "' (full, incremental_by_ds, incremental_by_key, view)");
  if (m.kind == "incremental_by_ds") {
    if (m.time_column.empty()) m.time_column = "ds";
    if (!std::regex_match(m.time_column, kIdent)) Fail(file, line_of(decl["time_column"]), "time_column: not a column name");
  } else if (!m.time_column.empty()) {
    Fail(file, line_of(decl["time_column"]), "time_column: only an incremental_by_ds model has one (this one is " + m.kind + ")");
  }
  if (m.publish && decl["publish"] && m.name.rfind("marts.", 0) != 0)
    Fail(file, line_of(decl["publish"]), "publish: only a marts model is published (serving holds marts)");
  if (m.lookahead_days > 0 && m.kind != "incremental_by_ds")
    Fail(file, line_of(decl["lookahead_days"]), "lookahead_days: only an incremental_by_ds model rebuilds later days (this one is " + m.kind + ")");
  if (m.kind == "incremental_by_key" && m.unique_key.empty())
    Fail(file, decl_line, "unique_key: an incremental_by_key model merges on its unique key; declare it");
  if (m.kind == "view" && (!m.unique_key.empty() || !m.indexes.empty()))
    Fail(file, decl_line, "a view has no unique_key or indexes");

  // The SELECT: the rest of the file, one statement.
  size_t body = yaml_end + 2;
  while (body < text.size() && std::isspace(static_cast<unsigned char>(text[body]))) ++body;
  std::string sql = text.substr(body);
  while (!sql.empty() && (std::isspace(static_cast<unsigned char>(sql.back())) || sql.back() == ';')) sql.pop_back();
  m.sql_line = LineAt(text, body);
  if (sql.empty()) Fail(file, m.sql_line, "no SELECT after the declaration");
  m.sql = sql;
  bool first_word = true;
  ScanSql(
      sql,
      [&](size_t pos, size_t, const std::string& name) {
        const int line = m.sql_line + LineAt(sql, pos) - 1;
        if (!kParameters.count(name))
          Fail(file, line, "unknown parameter {" + name + "} (parameters: {ds}, {start}, {end})");
        if (m.kind == "view")
          Fail(file, line, "a view cannot take {" + name + "}: it is not built per day (use incremental_by_ds)");
        m.uses_parameters = true;
      },
      [&](size_t pos, size_t len) {
        const std::string word = SqlWord(sql, pos, len);
        if (first_word) {
          first_word = false;
          if (word != "select" && word != "with")
            Fail(file, m.sql_line + LineAt(sql, pos) - 1, "expected a SELECT (or WITH ... SELECT), found '" + word + "'");
        }
        const auto dot = word.find('.');
        if (dot == std::string::npos || !kSchemas.count(word.substr(0, dot))) return;
        const std::string table = word.substr(0, word.find('.', dot + 1));
        if (std::find(m.reads.begin(), m.reads.end(), table) == m.reads.end()) m.reads.push_back(table);
      },
      [&](size_t pos) {
        Fail(file, m.sql_line + LineAt(sql, pos) - 1, "one statement per model file (a ';' ends the SELECT early)");
      });
  if (first_word) Fail(file, m.sql_line, "no SELECT after the declaration");
  if (m.kind == "incremental_by_ds" && !m.uses_parameters)
    Fail(file, m.sql_line, "an incremental_by_ds model selects one day's rows: use {ds} (or {start}/{end}) in its SELECT");
  return m;
}

std::vector<SqlModel> LoadSqlModels(const std::string& dir) {
  namespace fs = std::filesystem;
  std::vector<SqlModel> out;
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return out;
  std::vector<fs::path> files;
  for (const auto& e : fs::directory_iterator(dir))
    if (e.is_regular_file() && e.path().extension() == ".sql") files.push_back(e.path());
  std::sort(files.begin(), files.end());
  std::map<std::string, std::string> built_by;
  for (const auto& f : files) {
    std::ifstream in(f);
    if (!in) throw InputError(f.string() + ": cannot read");
    std::stringstream ss;
    ss << in.rdbuf();
    out.push_back(ParseSqlModel(ss.str(), f.string()));
    auto [it, fresh] = built_by.emplace(out.back().name, f.string());
    if (!fresh) throw InputError(f.string() + ":1: " + out.back().name + " is already built by " + it->second);
  }
  return out;
}

BoundSql BindParameters(const SqlModel& m, int first) {
  BoundSql out;
  std::map<std::string, std::string> with;
  ScanSql(
      m.sql,
      [&](size_t, size_t, const std::string& name) {
        if (with.count(name)) return;
        with[name] = "$" + std::to_string(first + static_cast<int>(out.names.size())) + "::date";
        out.names.push_back(name);
      },
      [](size_t, size_t) {}, [](size_t) {});
  out.sql = Replace(m, with);
  return out;
}

std::string WithoutParameters(const SqlModel& m) {
  return Replace(m, {{"ds", "NULL::date"}, {"start", "NULL::date"}, {"end", "NULL::date"}});
}

std::vector<const SqlModel*> OrderSqlModels(const std::vector<SqlModel>& models) {
  std::map<std::string, const SqlModel*> by_name;
  for (const auto& m : models) by_name[m.name] = &m;
  std::vector<const SqlModel*> out, path;
  std::map<const SqlModel*, int> state;  // 1 visiting, 2 done
  std::function<void(const SqlModel*)> visit = [&](const SqlModel* m) {
    if (state[m] == 2) return;
    if (state[m] == 1) {
      std::string cycle;
      const auto from = std::find(path.begin(), path.end(), m);
      for (auto it = from; it != path.end(); ++it) {
        const SqlModel* next = (it + 1 == path.end()) ? m : *(it + 1);
        cycle += (*it)->file + " (" + (*it)->name + ") reads " + next->name + "; ";
      }
      cycle.resize(cycle.size() - 2);
      throw InputError(m->file + ":" + std::to_string(m->sql_line) + ": models form a cycle: " + cycle);
    }
    state[m] = 1;
    path.push_back(m);
    for (const auto& up : m->Upstream()) {
      auto it = by_name.find(up);
      if (it != by_name.end()) visit(it->second);
    }
    path.pop_back();
    state[m] = 2;
    out.push_back(m);
  };
  for (const auto& m : models) visit(&m);
  return out;
}

}  // namespace strata

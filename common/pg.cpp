#include "common/pg.h"

#include <libpq-fe.h>
#include <poll.h>

#include <vector>

#include "common/errors.h"

namespace strata {

std::unique_ptr<pqxx::connection> PgConnect(const std::string& dsn) {
  try {
    auto c = std::make_unique<pqxx::connection>(dsn);
    return c;
  } catch (const std::exception& e) {
    throw EnvError(std::string("postgres connect: ") + e.what());
  }
}

bool PgConnectionLost(const pqxx::connection& conn) {
  if (!conn.is_open()) return true;
  const int fd = conn.sock();
  if (fd < 0) return true;
  // An idle connection has nothing to read: anything there (a FATAL "terminating connection"
  // notice, end of file, an error) means the server is done with it.
  pollfd p{fd, POLLIN, 0};
  return ::poll(&p, 1, 0) != 0;
}

PgPool::PgPool(std::string dsn, size_t max_idle, std::function<void(const std::string&)> on_reconnect)
    : dsn_(std::move(dsn)), max_idle_(max_idle), on_reconnect_(std::move(on_reconnect)) {}

std::unique_ptr<pqxx::connection> PgPool::Acquire() {
  for (;;) {
    std::unique_ptr<pqxx::connection> c;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (idle_.empty()) break;
      c = std::move(idle_.back());
      idle_.pop_back();
    }
    if (!PgConnectionLost(*c)) return c;
    if (on_reconnect_) on_reconnect_("an idle connection was closed by the server");
  }
  return PgConnect(dsn_);
}

void PgPool::Release(std::unique_ptr<pqxx::connection> c) {
  std::lock_guard<std::mutex> lock(mu_);
  if (idle_.size() < max_idle_) idle_.push_back(std::move(c));
}

bool PgPool::Broken(const pqxx::connection& c, const std::exception& e) {
  return dynamic_cast<const pqxx::broken_connection*>(&e) != nullptr || !c.is_open();
}

std::unique_ptr<pqxx::connection> PgPool::Fresh(const std::string& why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    idle_.clear();  // they went down with the one that broke
  }
  if (on_reconnect_) on_reconnect_(why);
  return PgConnect(dsn_);
}

void RunDdl(pqxx::connection& conn, const std::string& sql) {
  pqxx::work tx(conn);
  tx.exec("SELECT pg_advisory_xact_lock(7400001)");
  tx.exec(sql);
  tx.commit();
}

std::string QuoteIdent(const std::string& ident) {
  std::string out = "\"";
  for (char c : ident) {
    if (c == '"') out += '"';
    out += c;
  }
  return out + "\"";
}

std::string QuoteLiteral(const std::string& value) {
  std::string out = "'";
  for (char c : value) {
    if (c == '\'') out += '\'';
    out += c;
  }
  return out + "'";
}

std::string QuoteQualified(const std::string& qualified) {
  const auto dot = qualified.find('.');
  if (dot == std::string::npos) return QuoteIdent(qualified);
  return QuoteIdent(qualified.substr(0, dot)) + "." + QuoteIdent(qualified.substr(dot + 1));
}

CopyConn::CopyConn(const std::string& dsn) {
  conn_ = PQconnectdb(dsn.c_str());
  if (PQstatus(conn_) != CONNECTION_OK) {
    const std::string why = PQerrorMessage(conn_);
    PQfinish(conn_);
    conn_ = nullptr;
    throw EnvError("postgres connect: " + why);
  }
}

CopyConn::~CopyConn() {
  if (conn_) PQfinish(conn_);
}

void CopyConn::Exec(const std::string& sql) { ExecParams(sql, {}); }

long long CopyConn::ExecParams(const std::string& sql, const std::vector<std::string>& params) {
  std::vector<const char*> values;
  for (const auto& p : params) values.push_back(p.c_str());
  PGresult* r = PQexecParams(conn_, sql.c_str(), static_cast<int>(values.size()), nullptr,
                             values.data(), nullptr, nullptr, 0);
  const auto status = PQresultStatus(r);
  if (status != PGRES_COMMAND_OK && status != PGRES_TUPLES_OK) {
    const std::string why = PQresultErrorMessage(r);
    PQclear(r);
    throw EnvError("postgres: " + why);
  }
  const char* n = PQcmdTuples(r);
  const long long rows = (n && *n) ? std::stoll(n) : 0;
  PQclear(r);
  return rows;
}

std::vector<std::optional<std::string>> ParseCopyTextLine(const char* p, size_t len) {
  if (len > 0 && p[len - 1] == '\n') --len;
  std::vector<std::optional<std::string>> out;
  std::string cur;
  bool null_field = false;
  for (size_t i = 0;; ++i) {
    if (i == len || p[i] == '\t') {
      if (null_field) out.emplace_back(std::nullopt);
      else out.emplace_back(std::move(cur));
      cur.clear();
      null_field = false;
      if (i == len) break;
      continue;
    }
    if (p[i] != '\\' || i + 1 == len) {
      cur.push_back(p[i]);
      continue;
    }
    const char e = p[++i];
    switch (e) {
      case 'N':
        null_field = cur.empty();
        if (!null_field) cur += "\\N";
        break;
      case 't': cur.push_back('\t'); break;
      case 'n': cur.push_back('\n'); break;
      case 'r': cur.push_back('\r'); break;
      case 'b': cur.push_back('\b'); break;
      case 'f': cur.push_back('\f'); break;
      case 'v': cur.push_back('\v'); break;
      default: cur.push_back(e); break;  // \\ and any other escaped character
    }
  }
  return out;
}

long long CopyConn::CopyOut(const std::string& copy_sql,
                            const std::function<void(const std::vector<std::optional<std::string>>&)>& row) {
  PGresult* r = PQexec(conn_, copy_sql.c_str());
  if (PQresultStatus(r) != PGRES_COPY_OUT) {
    const std::string why = PQresultErrorMessage(r);
    PQclear(r);
    throw EnvError("postgres COPY: " + why);
  }
  PQclear(r);
  long long rows = 0;
  for (;;) {
    char* buf = nullptr;
    const int n = PQgetCopyData(conn_, &buf, 0);
    if (n == -1) break;
    if (n < 0) throw EnvError(std::string("postgres COPY receive: ") + PQerrorMessage(conn_));
    std::unique_ptr<char, decltype(&PQfreemem)> own(buf, &PQfreemem);
    row(ParseCopyTextLine(buf, static_cast<size_t>(n)));
    ++rows;
  }
  std::string why;
  while ((r = PQgetResult(conn_)) != nullptr) {
    if (PQresultStatus(r) != PGRES_COMMAND_OK) why = PQresultErrorMessage(r);
    PQclear(r);
  }
  if (!why.empty()) throw EnvError("postgres COPY: " + why);
  return rows;
}

long long CopyConn::CopyIn(const std::string& copy_sql,
                           const std::function<size_t(char*, size_t)>& read) {
  PGresult* r = PQexec(conn_, copy_sql.c_str());
  if (PQresultStatus(r) != PGRES_COPY_IN) {
    const std::string why = PQresultErrorMessage(r);
    PQclear(r);
    throw EnvError("postgres COPY: " + why);
  }
  PQclear(r);
  std::vector<char> buf(256 * 1024);
  std::string failure;
  try {
    for (;;) {
      const size_t n = read(buf.data(), buf.size());
      if (n == 0) break;
      if (PQputCopyData(conn_, buf.data(), static_cast<int>(n)) != 1)
        throw EnvError(std::string("postgres COPY send: ") + PQerrorMessage(conn_));
    }
  } catch (const std::exception& e) {
    failure = e.what();
  }
  PQputCopyEnd(conn_, failure.empty() ? nullptr : failure.c_str());
  long long rows = 0;
  std::string why;
  while ((r = PQgetResult(conn_)) != nullptr) {
    if (PQresultStatus(r) == PGRES_COMMAND_OK) {
      const char* n = PQcmdTuples(r);
      rows = (n && *n) ? std::stoll(n) : 0;
    } else {
      why = PQresultErrorMessage(r);
    }
    PQclear(r);
  }
  if (!failure.empty()) throw EnvError("COPY aborted: " + failure);
  if (!why.empty()) throw EnvError("postgres COPY: " + why);
  return rows;
}

}  // namespace strata

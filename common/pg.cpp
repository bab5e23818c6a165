#include "common/pg.h"

#include <libpq-fe.h>

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

// PostgreSQL helpers.
//  * Connect(): a libpqxx connection; failures become EnvError naming the host (never the
//    password: libpq's messages don't contain it, and we never print the DSN).
//  * RunDdl(): idempotent schema setup serialised across services by an advisory lock, so
//    services starting together don't race on CREATE SCHEMA IF NOT EXISTS.
//  * CopyConn: a raw libpq connection for COPY FROM STDIN streaming; bytes go from a reader
//    straight to the server in 256 KiB chunks, so memory is flat in the input size.
//  * PgPool: a few reused connections that survive a server restart.
#pragma once
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <vector>
#include <pqxx/pqxx>
#include <string>

typedef struct pg_conn PGconn;

namespace strata {

std::unique_ptr<pqxx::connection> PgConnect(const std::string& dsn);
void RunDdl(pqxx::connection& conn, const std::string& sql);

// True when `conn` can no longer be used: libpq lost it (PQstatus != CONNECTION_OK), or the
// server closed it while it sat idle (a restart, an idle timeout: the socket is readable, or
// shut, with no query outstanding). Costs one non-blocking poll().
bool PgConnectionLost(const pqxx::connection& conn);

// A few connections to one database, reused across calls (connecting costs more than most
// queries). Thread-safe.
//
// With(fn) lends fn a connection. A pooled connection the server has closed is noticed before
// it is lent and replaced. A call that fails because its connection broke mid-way
// (pqxx::broken_connection, or libpq's status no longer CONNECTION_OK) drops every idle
// connection — a restart breaks them all — and runs fn once more on a fresh one, so a server
// restart costs callers only the calls in flight while the server was down. fn must therefore
// be safe to run twice: read-only work, or a transaction that had not committed. A failure for
// any other reason is rethrown and the connection discarded. Connect failures throw EnvError.
class PgPool {
 public:
  // `on_reconnect(why)` is called (outside the pool's lock) each time a broken connection is
  // replaced, for a metric and a log line.
  explicit PgPool(std::string dsn, size_t max_idle = 16,
                  std::function<void(const std::string& why)> on_reconnect = nullptr);

  template <typename Fn>
  void With(Fn&& fn) {
    std::unique_ptr<pqxx::connection> c = Acquire();
    try {
      fn(*c);
    } catch (const std::exception& e) {
      if (!Broken(*c, e)) throw;
      c = Fresh(e.what());
      fn(*c);
    }
    Release(std::move(c));
  }

 private:
  std::unique_ptr<pqxx::connection> Acquire();
  void Release(std::unique_ptr<pqxx::connection> c);
  static bool Broken(const pqxx::connection& c, const std::exception& e);
  std::unique_ptr<pqxx::connection> Fresh(const std::string& why);

  std::string dsn_;
  size_t max_idle_;
  std::function<void(const std::string&)> on_reconnect_;
  std::mutex mu_;
  std::vector<std::unique_ptr<pqxx::connection>> idle_;
};

class CopyConn {
 public:
  explicit CopyConn(const std::string& dsn);
  ~CopyConn();
  CopyConn(const CopyConn&) = delete;
  CopyConn& operator=(const CopyConn&) = delete;

  // Runs a command that returns no rows (BEGIN, DELETE ..., COMMIT). Throws EnvError.
  void Exec(const std::string& sql);
  // Same with parameters ($1..$n) bound as text.
  long long ExecParams(const std::string& sql, const std::vector<std::string>& params);
  // Starts `copy_sql` (a COPY ... FROM STDIN) and feeds it from `read` until it returns 0 bytes.
  // `read(buf, cap)` returns the byte count written into buf. Returns the rows copied.
  long long CopyIn(const std::string& copy_sql,
                   const std::function<size_t(char* buf, size_t cap)>& read);
  // Runs `copy_sql` (a COPY ... TO STDOUT in text format) and hands each row to `row`, fields
  // decoded (backslash escapes undone; NULL as nullopt). Returns the rows read.
  long long CopyOut(const std::string& copy_sql,
                    const std::function<void(const std::vector<std::optional<std::string>>&)>& row);

 private:
  PGconn* conn_ = nullptr;
};

// Splits one line of COPY text format into fields ("\N" is NULL; \t \n \\ ... unescaped).
std::vector<std::optional<std::string>> ParseCopyTextLine(const char* line, size_t len);

// Quotes an identifier for SQL text (schema/table/column names from the pipeline spec).
std::string QuoteIdent(const std::string& ident);
// A SQL string literal ('it''s'), for generated SQL where no connection is at hand
// (standard_conforming_strings, the default since PostgreSQL 9.1).
std::string QuoteLiteral(const std::string& value);
// "schema.table" -> "schema"."table" (names validated by the spec parser).
std::string QuoteQualified(const std::string& qualified);

}  // namespace strata

// PostgreSQL helpers.
//  * Connect(): a libpqxx connection; failures become EnvError naming the host (never the
//    password: libpq's messages don't contain it, and we never print the DSN).
//  * RunDdl(): idempotent schema setup serialised across services by an advisory lock, so
//    services starting together don't race on CREATE SCHEMA IF NOT EXISTS.
//  * CopyConn: a raw libpq connection for COPY FROM STDIN streaming; bytes go from a reader
//    straight to the server in 256 KiB chunks, so memory is flat in the input size.
#pragma once
#include <functional>
#include <memory>
#include <optional>
#include <vector>
#include <pqxx/pqxx>
#include <string>

typedef struct pg_conn PGconn;

namespace strata {

std::unique_ptr<pqxx::connection> PgConnect(const std::string& dsn);
void RunDdl(pqxx::connection& conn, const std::string& sql);

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

// The pieces of the HTTP JSON connector that do not touch the network, so each is tested on its
// own: the token bucket that paces requests, the pagination state machine for every style in
// PaginationSpec, RFC 8288 `Link` parsing, census (array-of-arrays) decoding, and schema-drift
// bookkeeping. The connector in ingest.cpp strings them together around HttpGet.
#pragma once
#include <chrono>
#include <cstdint>
#include <map>
#include <mutex>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "common/spec.h"
#include "common/token_bucket.h"

namespace strata::ingest {

// Requests per second with a burst allowance, shared by a source's tasks (common/token_bucket.h
// underneath). Acquire() blocks until a token is free; PauseUntil() makes every caller wait (a
// server's Retry-After applies to the whole client). Thread-safe.
class RequestPacer {
 public:
  using Clock = std::chrono::steady_clock;
  RequestPacer(double rps, int burst);
  // Returns how long the caller waited.
  std::chrono::milliseconds Acquire();
  void PauseUntil(Clock::time_point t);

 private:
  static double Seconds(Clock::time_point t) { return std::chrono::duration<double>(t.time_since_epoch()).count(); }
  std::mutex mu_;
  TokenBucket bucket_;
};

// The target of `rel="next"` in a Link header, resolved against `base_url` when relative.
std::optional<std::string> LinkNext(const std::string& link_header, const std::string& base_url);

// Walks one listing. url() is the next request; Advance() consumes its response and says whether
// another page follows. Throws InputError when the API misbehaves in a way that would loop
// forever (a cursor or link that does not move).
class Paginator {
 public:
  // `base` is the URL with every fixed query parameter already in it (no pagination ones).
  Paginator(const PaginationSpec& spec, std::string base);
  const std::string& url() const { return url_; }
  // Where the current page sits in the listing, for dead letters: "page=3", "offset=200", ...
  const std::string& position() const { return position_; }
  bool Advance(const nlohmann::json& body, const std::map<std::string, std::string>& headers,
               size_t records_on_page);
  int pages() const { return pages_; }

 private:
  void Set(const std::string& param, const std::string& value);
  PaginationSpec spec_;
  std::string base_, url_, position_;
  int page_ = 1;
  long long offset_ = 0;
  int pages_ = 0;
  std::set<std::string> seen_;  // cursors / links already followed
};

// Census-style body: [["NAME","POP","state"], ["Alabama","5024279","01"], ...]. The header row
// is matched to the dataset's columns (by `header`, else by name, case-insensitively) and every
// later row becomes an object keyed by column name. Throws InputError saying what was expected
// and what was found when the shape or a header is wrong; a data row of the wrong width is
// returned as a JSON string so the caller dead-letters it.
std::vector<nlohmann::json> CensusRecords(const nlohmann::json& body, const DatasetSpec& dataset);

// Fields seen in records against the declared columns, over one extraction.
class DriftTracker {
 public:
  explicit DriftTracker(const DatasetSpec& dataset);
  // Returns the fields of `record` that are neither declared nor already reported.
  std::vector<std::string> Observe(const nlohmann::json& record);
  // Declared columns that no record carried (meaningful after at least one record).
  std::vector<std::string> Vanished() const;
  long long records() const { return records_; }
  // A field already handled (e.g. added as a column earlier): never reported as new.
  void Known(const std::string& field) { reported_.insert(field); }

 private:
  std::set<std::string> declared_, present_, reported_;
  std::vector<std::string> order_;
  long long records_ = 0;
};

}  // namespace strata::ingest

namespace strata::ingest {

// Cursor values (canonical text of the since_field's type) ordered and moved back by the
// overlap window. Timestamps compare as instants, whatever their UTC offset.
std::string FormatMicros(int64_t micros);                // "YYYY-MM-DDTHH:MM:SS.ffffffZ"
bool CursorLess(ColumnType type, const std::string& a, const std::string& b);
// The sort key of one cursor value, computed once per record.
struct CursorKey {
  enum Kind { kText, kInt, kReal } kind = kText;
  int64_t num = 0;  // kInt (timestamps as microseconds)
  double real = 0;  // kReal
  std::string text;
  bool operator<(const CursorKey& o) const {
    return kind == kInt ? num < o.num : kind == kReal ? real < o.real : text < o.text;
  }
};
CursorKey MakeCursorKey(ColumnType type, const std::string& value);
std::string CursorMinus(ColumnType type, const std::string& cursor, int seconds);

}  // namespace strata::ingest

#include "services/ingest/http_source.h"

#include <algorithm>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "common/errors.h"
#include "common/http_client.h"
#include "common/time_util.h"

namespace strata::ingest {

RequestPacer::RequestPacer(double rps, int burst) : bucket_(rps, burst) {}

std::chrono::milliseconds RequestPacer::Acquire() {
  const auto start = Clock::now();
  for (;;) {
    double wait = 0;
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (bucket_.TryTake(Seconds(Clock::now()), &wait))
        return std::chrono::duration_cast<std::chrono::milliseconds>(Clock::now() - start);
    }
    std::this_thread::sleep_for(std::chrono::microseconds(static_cast<long long>(wait * 1e6) + 1));
  }
}

void RequestPacer::PauseUntil(Clock::time_point t) {
  std::lock_guard<std::mutex> lock(mu_);
  bucket_.PauseUntil(Seconds(t));
}

namespace {

std::string Origin(const std::string& url) {
  static const std::regex kOrigin(R"(^([a-zA-Z][a-zA-Z0-9+.-]*://[^/?#]+))");
  std::smatch m;
  return std::regex_search(url, m, kOrigin) ? m[1].str() : std::string();
}

bool IEquals(const std::string& a, const std::string& b) {
  return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
           return std::tolower(static_cast<unsigned char>(x)) == std::tolower(static_cast<unsigned char>(y));
         });
}

}  // namespace

std::optional<std::string> LinkNext(const std::string& header, const std::string& base_url) {
  // Link: <https://api/x?page=2>; rel="next", <https://api/x?page=9>; rel="last"
  static const std::regex kLink(R"(<([^>]*)>\s*((?:;\s*[^;,]+)*))");
  static const std::regex kRel(R"re(;\s*rel\s*=\s*"?([^";,]+)"?)re", std::regex::icase);
  for (std::sregex_iterator it(header.begin(), header.end(), kLink), end; it != end; ++it) {
    const std::string params = (*it)[2].str();
    std::smatch rel;
    if (!std::regex_search(params, rel, kRel)) continue;
    // rel may hold several space-separated types: rel="next last"
    std::string types = rel[1].str();
    bool next = false;
    for (size_t p = 0; p <= types.size();) {
      const size_t q = std::min(types.find(' ', p), types.size());
      if (IEquals(types.substr(p, q - p), "next")) next = true;
      p = q + 1;
    }
    if (!next) continue;
    std::string target = (*it)[1].str();
    if (target.rfind("http://", 0) == 0 || target.rfind("https://", 0) == 0) return target;
    if (!target.empty() && target[0] == '/') return Origin(base_url) + target;
    // Relative to the current path's directory.
    const std::string no_query = base_url.substr(0, base_url.find('?'));
    return no_query.substr(0, no_query.rfind('/') + 1) + target;
  }
  return std::nullopt;
}

Paginator::Paginator(const PaginationSpec& spec, std::string base) : spec_(spec), base_(std::move(base)) {
  if (spec_.style == "page") {
    Set(spec_.page_param, "1");
    position_ = "page=1";
  } else if (spec_.style == "offset") {
    Set(spec_.offset_param, "0");
    position_ = "offset=0";
  } else if (spec_.style == "cursor") {
    Set("", "");
    position_ = "cursor=(first)";
  } else {
    url_ = base_;
    position_ = spec_.style == "link" ? "link=1" : "page=1";
  }
}

void Paginator::Set(const std::string& param, const std::string& value) {
  url_ = base_;
  const char sep = base_.find('?') == std::string::npos ? '?' : '&';
  if (spec_.style == "offset" || spec_.style == "cursor") {
    url_ += sep;
    url_ += spec_.limit_param + "=" + std::to_string(spec_.limit);
    if (!param.empty()) url_ += "&" + param + "=" + UrlEncode(value);
  } else if (!param.empty()) {
    url_ += sep;
    url_ += param + "=" + UrlEncode(value);
  }
}

bool Paginator::Advance(const nlohmann::json& body, const std::map<std::string, std::string>& headers,
                        size_t records_on_page) {
  ++pages_;
  if (spec_.style == "none") return false;
  if (spec_.style == "page") {
    if (records_on_page == 0) return false;
    if (body.is_object()) {
      auto t = body.find(spec_.total_pages_field);
      if (t != body.end() && t->is_number_integer() && page_ >= t->get<int>()) return false;
    }
    ++page_;
    Set(spec_.page_param, std::to_string(page_));
    position_ = "page=" + std::to_string(page_);
    return true;
  }
  if (spec_.style == "offset") {
    if (records_on_page < static_cast<size_t>(spec_.limit)) return false;
    offset_ += static_cast<long long>(records_on_page);
    if (body.is_object()) {
      auto t = body.find(spec_.total_field);
      if (t != body.end() && t->is_number_integer() && offset_ >= t->get<long long>()) return false;
    }
    Set(spec_.offset_param, std::to_string(offset_));
    position_ = "offset=" + std::to_string(offset_);
    return true;
  }
  if (spec_.style == "cursor") {
    if (!body.is_object()) return false;
    auto c = body.find(spec_.cursor_field);
    if (c == body.end() || c->is_null()) return false;
    const std::string token = c->is_string() ? c->get<std::string>() : c->dump();
    if (token.empty()) return false;
    if (!seen_.insert(token).second)
      throw InputError("pagination cursor \"" + token + "\" returned twice at " + position_ +
                       ": the API is looping");
    Set(spec_.cursor_param, token);
    position_ = "cursor=" + token;
    return true;
  }
  // link
  auto h = headers.find("link");
  if (h == headers.end()) return false;
  auto next = LinkNext(h->second, url_);
  if (!next) return false;
  if (*next == url_ || !seen_.insert(*next).second)
    throw InputError("Link rel=\"next\" points back to " + RedactUrl(*next) + " at " + position_ +
                     ": the API is looping");
  url_ = *next;
  position_ = "link=" + std::to_string(pages_ + 1);
  return true;
}

std::vector<nlohmann::json> CensusRecords(const nlohmann::json& body, const DatasetSpec& dataset) {
  if (!body.is_array() || body.empty() || !body[0].is_array())
    throw InputError("expected an array of arrays with a header row first, found " +
                     std::string(body.is_array() ? (body.empty() ? "an empty array" : "an array of non-arrays")
                                                 : body.type_name()));
  const nlohmann::json& header = body[0];
  std::vector<std::string> found;
  for (const auto& h : header) found.push_back(h.is_string() ? h.get<std::string>() : h.dump());
  std::vector<int> idx;
  for (const auto& c : dataset.columns) {
    const std::string want = c.header.empty() ? c.name : c.header;
    auto it = std::find_if(found.begin(), found.end(), [&](const std::string& h) { return IEquals(h, want); });
    if (it == found.end()) {
      std::string list;
      for (const auto& h : found) list += (list.empty() ? "\"" : ", \"") + h + "\"";
      throw InputError("census header row: expected \"" + want + "\" for column '" + c.name + "', found [" +
                       list + "]");
    }
    idx.push_back(static_cast<int>(it - found.begin()));
  }
  std::vector<nlohmann::json> out;
  out.reserve(body.size() - 1);
  for (size_t r = 1; r < body.size(); ++r) {
    const nlohmann::json& row = body[r];
    if (!row.is_array() || row.size() != header.size()) {
      out.push_back(row.dump());  // a string: the caller dead-letters it with its position
      continue;
    }
    nlohmann::json rec = nlohmann::json::object();
    for (size_t i = 0; i < dataset.columns.size(); ++i) rec[dataset.columns[i].name] = row[idx[i]];
    out.push_back(std::move(rec));
  }
  return out;
}

DriftTracker::DriftTracker(const DatasetSpec& dataset) {
  for (const auto& c : dataset.columns) {
    declared_.insert(c.name);
    order_.push_back(c.name);
  }
}

std::vector<std::string> DriftTracker::Observe(const nlohmann::json& record) {
  std::vector<std::string> added;
  if (!record.is_object()) return added;
  ++records_;
  for (auto it = record.begin(); it != record.end(); ++it) {
    if (declared_.count(it.key())) {
      present_.insert(it.key());
    } else if (reported_.insert(it.key()).second) {
      added.push_back(it.key());
    }
  }
  return added;
}

std::vector<std::string> DriftTracker::Vanished() const {
  std::vector<std::string> out;
  if (records_ == 0) return out;
  for (const auto& c : order_)
    if (!present_.count(c)) out.push_back(c);
  return out;
}

}  // namespace strata::ingest

namespace strata::ingest {

std::string FormatMicros(int64_t micros) {
  int64_t secs = micros / 1000000, frac = micros % 1000000;
  if (frac < 0) {
    frac += 1000000;
    --secs;
  }
  int64_t days = secs / 86400, rem = secs % 86400;
  if (rem < 0) {
    rem += 86400;
    --days;
  }
  char buf[40];
  std::snprintf(buf, sizeof buf, "%sT%02d:%02d:%02d.%06dZ", FormatDate(days).c_str(), static_cast<int>(rem / 3600),
                static_cast<int>(rem / 60 % 60), static_cast<int>(rem % 60), static_cast<int>(frac));
  return buf;
}

CursorKey MakeCursorKey(ColumnType type, const std::string& v) {
  CursorKey k;
  if (type == ColumnType::kTimestamp) {
    k.kind = CursorKey::kInt;
    k.num = TimestampMicros(v);
  } else if (type == ColumnType::kInt) {
    k.kind = CursorKey::kInt;
    k.num = std::stoll(v);
  } else if (type == ColumnType::kFloat) {
    k.kind = CursorKey::kReal;
    k.real = std::stod(v);
  } else {
    k.text = v;
  }
  return k;
}

bool CursorLess(ColumnType type, const std::string& a, const std::string& b) {
  return MakeCursorKey(type, a) < MakeCursorKey(type, b);
}

std::string CursorMinus(ColumnType type, const std::string& cursor, int seconds) {
  switch (type) {
    case ColumnType::kTimestamp: return FormatMicros(TimestampMicros(cursor) - int64_t{seconds} * 1000000);
    case ColumnType::kInt: return std::to_string(std::stoll(cursor) - seconds);
    case ColumnType::kDate: return AddDays(cursor, -((seconds + 86399) / 86400));
    default: return cursor;  // text cursors have no arithmetic: re-read from the watermark itself
  }
}

}  // namespace strata::ingest

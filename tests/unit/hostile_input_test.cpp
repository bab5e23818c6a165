// What strata makes of hostile input before any handler sees it: how much of a bad value an
// error message may quote, which dates exist, how the HTTP reader judges a request that is
// still arriving, and the reuse_port setting.
#include <gtest/gtest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>

#include "common/config.h"
#include "common/errors.h"
#include "common/http_server.h"
#include "common/time_util.h"

namespace strata {
namespace {

TEST(QuoteForMessage, ShortValuesAreQuotedWhole) {
  EXPECT_EQ(QuoteForMessage("open"), "\"open\"");
  EXPECT_EQ(QuoteForMessage(""), "\"\"");
}

TEST(QuoteForMessage, LongValuesGiveAPrefixAndTheirLength) {
  const std::string huge(1 << 20, 'a');
  const std::string q = QuoteForMessage(huge);
  EXPECT_EQ(q, "\"" + std::string(32, 'a') + "\"... (1048576 bytes)");
  EXPECT_EQ(QuoteForMessage("abcdef", 3), "\"abc\"... (6 bytes)");
}

TEST(QuoteForMessage, EscapesEverythingOutsidePrintableAscii) {
  EXPECT_EQ(QuoteForMessage("a\"b\\c\nd\te\x01\xff"), "\"a\\\"b\\\\c\\nd\\x09e\\x01\\xff\"");
  // A cut through a multi-byte character leaves only escapes, never half a character.
  const std::string q = QuoteForMessage("\xc3\xa9\xc3\xa9", 3);
  EXPECT_EQ(q, "\"\\xc3\\xa9\\xc3\"... (4 bytes)");
}

TEST(Dates, YearZeroDoesNotExist) {
  EXPECT_FALSE(IsValidDate("0000-01-01"));
  EXPECT_FALSE(IsValidDate("0000-12-31"));
  EXPECT_TRUE(IsValidDate("0001-01-01"));
  EXPECT_TRUE(IsValidDate("9999-12-31"));
  EXPECT_THROW(ParseDate("0000-01-01", "ds"), InputError);
}

HttpLimits Limits() {
  HttpLimits l;
  l.max_header_bytes = 1024;
  l.max_body_bytes = 100;
  return l;
}

TEST(ScanRequest, WaitsForTheWholeHead) {
  EXPECT_EQ(ScanRequest("", Limits()).state, HeadScan::kNeedMore);
  EXPECT_EQ(ScanRequest("GET /health HTTP/1.1\r\nHost: x\r\n", Limits()).state, HeadScan::kNeedMore);
  const std::string get = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
  const HeadScan s = ScanRequest(get, Limits());
  EXPECT_EQ(s.state, HeadScan::kComplete);
  EXPECT_EQ(s.head_bytes, get.size());
  EXPECT_EQ(s.request_bytes, get.size());
  // Bare newlines end lines too (httplib accepts them).
  EXPECT_EQ(ScanRequest("GET / HTTP/1.0\n\n", Limits()).state, HeadScan::kComplete);
}

TEST(ScanRequest, WaitsForAFixedLengthBody) {
  const std::string head = "POST /control HTTP/1.1\r\ncontent-LENGTH: 5\r\n\r\n";
  const HeadScan partial = ScanRequest(head + "ab", Limits());
  EXPECT_EQ(partial.state, HeadScan::kNeedMore);
  EXPECT_EQ(partial.head_bytes, head.size());
  const HeadScan whole = ScanRequest(head + "abcdeGET", Limits());  // a pipelined request follows
  EXPECT_EQ(whole.state, HeadScan::kComplete);
  EXPECT_EQ(whole.request_bytes, head.size() + 5);
}

TEST(ScanRequest, ChunkedAndExpectContinueBodiesAreLeftToTheHandlerThread) {
  const HeadScan chunked = ScanRequest("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", Limits());
  EXPECT_EQ(chunked.state, HeadScan::kComplete);
  EXPECT_TRUE(chunked.body_on_worker);
  const HeadScan expect =
      ScanRequest("POST / HTTP/1.1\r\nContent-Length: 50\r\nExpect: 100-continue\r\n\r\n", Limits());
  EXPECT_EQ(expect.state, HeadScan::kComplete);
  EXPECT_TRUE(expect.body_on_worker);
}

TEST(ScanRequest, RefusesWhatIsTooLarge) {
  const HeadScan body = ScanRequest("POST / HTTP/1.1\r\nContent-Length: 101\r\n\r\n", Limits());
  EXPECT_EQ(body.state, HeadScan::kBodyTooLarge);
  EXPECT_NE(body.detail.find("at most 100 bytes"), std::string::npos) << body.detail;

  std::string trickle = "GET / HTTP/1.1\r\n";
  while (trickle.size() <= 1024) trickle += "X-Pad: 0123456789\r\n";
  EXPECT_EQ(ScanRequest(trickle, Limits()).state, HeadScan::kHeadTooLarge);
  EXPECT_EQ(ScanRequest(trickle + "\r\n", Limits()).state, HeadScan::kHeadTooLarge);
}

TEST(ScanRequest, AnOverlongRequestLineNamesItsParameterAndQuotesAPrefix) {
  const std::string line = "GET /analytics/orders?limit=5&status=" + std::string(1 << 20, 'z');
  const HeadScan s = ScanRequest(line, Limits());
  EXPECT_EQ(s.state, HeadScan::kUriTooLong);
  EXPECT_EQ(s.detail.rfind("status: too long", 0), 0u) << s.detail;
  EXPECT_NE(s.detail.find("\"" + std::string(32, 'z') + "\"..."), std::string::npos) << s.detail;
  EXPECT_LT(s.detail.size(), 200u);
  EXPECT_EQ(ScanRequest("GET /" + std::string(9000, 'p'), Limits()).detail, "request line: longer than 8192 bytes");
}

TEST(HttpErrorJson, IsValidJsonWhateverTheMessage) {
  const auto j = nlohmann::json::parse(HttpErrorJson(408, "line one\nline \"two\"\t\x01 \xff"));
  EXPECT_EQ(j["error"]["code"], "DEADLINE_EXCEEDED");
  EXPECT_EQ(j["error"]["message"].get<std::string>().substr(0, 9), "line one\n");
  EXPECT_EQ(nlohmann::json::parse(HttpErrorJson(431, "x"))["error"]["code"], "INVALID_ARGUMENT");
  EXPECT_EQ(nlohmann::json::parse(HttpErrorJson(503, "x"))["error"]["code"], "UNAVAILABLE");
}

EnvLookup Env(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](const char* name) -> const char* {
    static thread_local std::string value;
    auto it = vars.find(name);
    if (it == vars.end()) return nullptr;
    value = it->second;
    return value.c_str();
  };
}

TEST(Config, ReusePortIsOffUnlessConfigured) {
  EXPECT_FALSE(ParseConfig("", "strata.yaml", Env({})).reuse_port);
  EXPECT_TRUE(ParseConfig("reuse_port: true\n", "strata.yaml", Env({})).reuse_port);
  EXPECT_FALSE(ParseConfig("reuse_port: true\n", "strata.yaml", Env({{"STRATA_REUSE_PORT", "false"}})).reuse_port);
  try {
    ParseConfig("reuse_port: yes please\n", "strata.yaml", Env({}));
    FAIL() << "a bad reuse_port was accepted";
  } catch (const InputError& e) {
    EXPECT_STREQ(e.what(), "config strata.yaml:reuse_port: expected true or false, got \"yes please\"");
  }
}

}  // namespace
}  // namespace strata

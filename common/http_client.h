// Minimal blocking HTTP client over libcurl for connectors and webhooks.
// Transport failures (DNS, refused, timeout) come back as status 0 with `error` set, never as
// exceptions, so callers decide on retry policy. URLs in messages go through RedactUrl().
#pragma once
#include <map>
#include <string>

namespace strata {

struct HttpResponse {
  long status = 0;  // 0: transport failure, see error
  std::string body;
  std::string error;
  std::map<std::string, std::string> headers;  // lower-cased names
};

HttpResponse HttpGet(const std::string& url, const std::map<std::string, std::string>& headers = {},
                     long timeout_ms = 10000);
HttpResponse HttpPost(const std::string& url, const std::string& body,
                      const std::string& content_type, long timeout_ms = 5000);

// Drops user-info and the values of query parameters that look secret (token, key, secret).
std::string RedactUrl(const std::string& url);
// Percent-encodes a query parameter value.
std::string UrlEncode(const std::string& value);

}  // namespace strata

// An HTTP listener for a service's side endpoints (status page, JSON gateway, simulator):
// binds host:port up front so a taken or malformed address fails start-up with EnvError /
// InputError naming it, then serves on its own threads until Stop(). Routes are registered on
// server() before Start().
//
// Slow or hostile clients cost a buffer, not a thread: a connection is read by one poll()
// thread until its request line, headers and (fixed-length) body have all arrived, and only a
// complete request is handed to a handler thread. The head must arrive within
// header_timeout_ms and fit in max_header_bytes (else 408 / 431 / 414), the body within
// body_timeout_ms and max_body_bytes (else 408 / 413); an idle kept-alive connection is closed
// after idle_timeout_ms; past max_connections a new connection gets 503. Error answers carry a
// JSON body {"error": {"code", "message"}}.
//
// The address is bound without SO_REUSEPORT unless `reuse_port` is set, so a second instance
// on a live address fails start-up instead of silently sharing the traffic.
#pragma once
#include <cstddef>
#include <memory>
#include <string>
#include <thread>

namespace httplib {
class Server;
}

namespace strata {

struct HttpLimits {
  int header_timeout_ms = 10000;  // request line + headers, from the first byte
  int body_timeout_ms = 10000;    // the body, once the headers are in
  int idle_timeout_ms = 5000;     // a kept-alive connection waiting for its next request
  int write_timeout_ms = 10000;   // each blocked write of an answer
  size_t max_header_bytes = 16 * 1024;
  size_t max_body_bytes = 64 * 1024;  // no endpoint takes more; the reader buffers whole bodies
  int workers = 0;                // handler threads; 0: max(8, cores - 1)
  int max_connections = 512;      // open connections, waiting or being answered
};

// What a buffer received so far holds of one HTTP/1.1 request (pure; exposed for tests).
struct HeadScan {
  enum State { kNeedMore, kComplete, kUriTooLong, kHeadTooLarge, kBodyTooLarge } state = kNeedMore;
  size_t head_bytes = 0;     // through the blank line, once seen
  size_t request_bytes = 0;  // head + Content-Length body, when complete
  bool body_on_worker = false;  // chunked or Expect: 100-continue: the handler thread reads it
  std::string detail;        // for the error answers: which limit, which parameter
};
HeadScan ScanRequest(const std::string& buf, const HttpLimits& limits);

// The JSON error body every listener answers with: {"error":{"code":..,"message":..}}.
std::string HttpErrorJson(int http_status, const std::string& message);

class HttpListener {
 public:
  explicit HttpListener(HttpLimits limits = {});
  ~HttpListener();
  HttpListener(const HttpListener&) = delete;
  HttpListener& operator=(const HttpListener&) = delete;

  httplib::Server& server();
  // `what` names the endpoint in errors ("query HTTP gateway"). `reuse_port` lets several
  // processes listen on one address (config reuse_port / STRATA_REUSE_PORT).
  void Start(const std::string& listen, const std::string& what, bool reuse_port = false);
  void Stop();  // idempotent; waits for in-flight requests

 private:
  class Impl;
  std::unique_ptr<Impl> impl_;
};

// Why binding host:port would fail right now ("Address already in use"), or "" if it would
// not; for start-up messages. Binds without SO_REUSEPORT.
std::string BindProblem(const std::string& listen);

}  // namespace strata

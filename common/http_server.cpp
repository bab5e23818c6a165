#include "common/http_server.h"

#include <fcntl.h>
#include <httplib.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <mutex>
#include <nlohmann/json.hpp>
#include <vector>

#include "common/config.h"
#include "common/errors.h"

namespace strata {

namespace {

using SteadyClock = std::chrono::steady_clock;
using Ms = std::chrono::milliseconds;

// httplib's own limit on the request line (CPPHTTPLIB_REQUEST_URI_MAX_LENGTH).
constexpr size_t kMaxRequestLine = 8192;
constexpr int kMaxRequestsPerConnection = 100;
constexpr int kLingerMs = 2000;  // a refused connection's last chance to read its answer

std::string Lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char c) { return std::tolower(c); });
  return s;
}

std::string Trim(const std::string& s) {
  const auto b = s.find_first_not_of(" \t\r");
  if (b == std::string::npos) return "";
  return s.substr(b, s.find_last_not_of(" \t\r") - b + 1);
}

// Names the query parameter a cut-off request line ends in, for the 414 answer.
std::string CutParameter(const std::string& line) {
  const std::string generic = "request line: longer than " + std::to_string(kMaxRequestLine) + " bytes";
  const auto q = line.find('?');
  if (q == std::string::npos) return generic;
  const auto amp = line.rfind('&');
  const std::string pair = line.substr(amp != std::string::npos && amp > q ? amp + 1 : q + 1);
  const auto eq = pair.find('=');
  if (eq == std::string::npos || eq == 0) return generic;
  const std::string name = pair.substr(0, eq);
  const bool plain = name.size() <= 64 && std::all_of(name.begin(), name.end(), [](unsigned char c) {
                       return std::isalnum(c) || c == '_' || c == '-' || c == '.';
                     });
  // Only the start of the value has been read: quote its first bytes, not its length.
  const std::string value = pair.substr(eq + 1);
  return (plain ? name : QuoteForMessage(name)) + ": too long (the request line may hold " +
         std::to_string(kMaxRequestLine) + " bytes), got " + QuoteForMessage(value.substr(0, 32)) +
         (value.size() > 32 ? "..." : "");
}

const char* CodeForStatus(int status) {
  switch (status) {
    case 401: return "UNAUTHENTICATED";
    case 403: return "PERMISSION_DENIED";
    case 404: return "NOT_FOUND";
    case 408: return "DEADLINE_EXCEEDED";
    case 429: return "RESOURCE_EXHAUSTED";
    case 501: return "UNIMPLEMENTED";
    case 503: return "UNAVAILABLE";
    case 504: return "DEADLINE_EXCEEDED";
    default: return status >= 500 ? "INTERNAL" : "INVALID_ARGUMENT";
  }
}

const char* Reason(int status) {
  switch (status) {
    case 400: return "Bad Request";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 413: return "Payload Too Large";
    case 414: return "URI Too Long";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 503: return "Service Unavailable";
    default: return "Error";
  }
}

void CloseFd(int fd) {
  ::shutdown(fd, SHUT_RDWR);
  ::close(fd);
}

// Best effort: a short answer to a connection about to be closed (it is not worth a thread).
// The write side is shut, so the client sees the answer end.
void Answer(int fd, int status, const std::string& message) {
  const std::string body = HttpErrorJson(status, message);
  const std::string out = "HTTP/1.1 " + std::to_string(status) + " " + Reason(status) +
                          "\r\nContent-Type: application/json\r\nContent-Length: " + std::to_string(body.size()) +
                          "\r\nConnection: close\r\n\r\n" + body;
  (void)::send(fd, out.data(), out.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
  ::shutdown(fd, SHUT_WR);
}

// Waits until fd is ready for `events` or `deadline` passes.
bool WaitFd(int fd, short events, SteadyClock::time_point deadline) {
  for (;;) {
    const auto left = std::chrono::duration_cast<Ms>(deadline - SteadyClock::now()).count();
    if (left <= 0) return false;
    pollfd p{fd, events, 0};
    const int r = ::poll(&p, 1, static_cast<int>(std::min<long long>(left, 1000)));
    if (r > 0) return true;
    if (r < 0 && errno != EINTR) return false;
  }
}

std::string Address(const sockaddr_storage& ss, socklen_t len, int* port) {
  char host[NI_MAXHOST] = "", serv[NI_MAXSERV] = "";
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&ss), len, host, sizeof host, serv, sizeof serv,
                  NI_NUMERICHOST | NI_NUMERICSERV) != 0)
    return "";
  *port = std::atoi(serv);
  return host;
}

// One connection as a handler thread sees it: the bytes the reader thread already took off the
// socket come first, then the socket itself, read and written with deadlines (the socket is
// non-blocking).
class ConnStream final : public httplib::Stream {
 public:
  ConnStream(int fd, std::string buffered, const HttpLimits& limits)
      : fd_(fd), buf_(std::move(buffered)), limits_(limits) {}

  void StartRequest() { read_deadline_ = SteadyClock::now() + Ms(limits_.body_timeout_ms); }
  std::string TakeLeftover() {
    std::string rest = buf_.substr(pos_);
    buf_.clear();
    pos_ = 0;
    return rest;
  }
  void Refill(std::string bytes) {
    buf_ = std::move(bytes);
    pos_ = 0;
  }

  bool is_readable() const override { return pos_ < buf_.size() || WaitFd(fd_, POLLIN, read_deadline_); }
  bool is_writable() const override {
    return WaitFd(fd_, POLLOUT, SteadyClock::now() + Ms(limits_.write_timeout_ms));
  }

  ssize_t read(char* ptr, size_t size) override {
    if (pos_ >= buf_.size()) {
      buf_.clear();
      pos_ = 0;
      char chunk[16 * 1024];
      for (;;) {
        const ssize_t n = ::recv(fd_, chunk, sizeof chunk, 0);
        if (n > 0) {
          buf_.assign(chunk, static_cast<size_t>(n));
          break;
        }
        if (n == 0) return 0;
        if (errno == EINTR) continue;
        if ((errno == EAGAIN || errno == EWOULDBLOCK) && WaitFd(fd_, POLLIN, read_deadline_)) continue;
        return -1;
      }
    }
    const size_t n = std::min(size, buf_.size() - pos_);
    std::memcpy(ptr, buf_.data() + pos_, n);
    pos_ += n;
    return static_cast<ssize_t>(n);
  }

  ssize_t write(const char* ptr, size_t size) override {
    size_t done = 0;
    while (done < size) {
      const ssize_t n = ::send(fd_, ptr + done, size - done, MSG_NOSIGNAL);
      if (n > 0) {
        done += static_cast<size_t>(n);
        continue;
      }
      if (n < 0 && errno == EINTR) continue;
      if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) && is_writable()) continue;
      return -1;
    }
    return static_cast<ssize_t>(size);
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (getpeername(fd_, reinterpret_cast<sockaddr*>(&ss), &len) == 0) ip = Address(ss, len, &port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    sockaddr_storage ss{};
    socklen_t len = sizeof ss;
    if (getsockname(fd_, reinterpret_cast<sockaddr*>(&ss), &len) == 0) ip = Address(ss, len, &port);
  }
  socket_t socket() const override { return fd_; }

 private:
  int fd_;
  std::string buf_;
  size_t pos_ = 0;
  const HttpLimits& limits_;
  SteadyClock::time_point read_deadline_ = SteadyClock::now();
};

// httplib runs each accepted connection as a task; ours only hands the socket to the reader
// thread, so it runs right on the accepting thread.
class InlineQueue final : public httplib::TaskQueue {
 public:
  void enqueue(std::function<void()> fn) override { fn(); }
  void shutdown() override {}
};

}  // namespace

HeadScan ScanRequest(const std::string& buf, const HttpLimits& limits) {
  HeadScan s;
  const auto first_nl = buf.find('\n');
  if (first_nl == std::string::npos ? buf.size() > kMaxRequestLine : first_nl > kMaxRequestLine + 1) {
    s.state = HeadScan::kUriTooLong;
    s.detail = CutParameter(buf.substr(0, std::min(buf.size(), kMaxRequestLine)));
    return s;
  }
  // The head ends at the first empty line ("\r\n" or a bare "\n", as httplib accepts both).
  size_t line_start = first_nl == std::string::npos ? buf.size() : first_nl + 1;
  long long content_length = -1;
  bool head_done = false;
  while (line_start < buf.size()) {
    const auto nl = buf.find('\n', line_start);
    if (nl == std::string::npos) break;
    const std::string line = buf.substr(line_start, nl - line_start);
    line_start = nl + 1;
    if (line.empty() || line == "\r") {
      head_done = true;
      break;
    }
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    const std::string name = Lower(Trim(line.substr(0, colon)));
    const std::string value = Lower(Trim(line.substr(colon + 1)));
    if (name == "content-length") {
      try {
        size_t used = 0;
        const long long v = std::stoll(value, &used);
        if (used == value.size() && v >= 0) content_length = v;
      } catch (const std::exception&) {
      }
    } else if (name == "transfer-encoding" && value.find("chunked") != std::string::npos) {
      s.body_on_worker = true;
    } else if (name == "expect" && value == "100-continue") {
      s.body_on_worker = true;
    }
  }
  if (!head_done) {
    if (buf.size() > limits.max_header_bytes) {
      s.state = HeadScan::kHeadTooLarge;
      s.detail = "request headers: more than " + std::to_string(limits.max_header_bytes) + " bytes";
    }
    return s;
  }
  s.head_bytes = line_start;
  if (s.head_bytes > limits.max_header_bytes) {
    s.state = HeadScan::kHeadTooLarge;
    s.detail = "request headers: more than " + std::to_string(limits.max_header_bytes) + " bytes";
    return s;
  }
  if (content_length > static_cast<long long>(limits.max_body_bytes)) {
    s.state = HeadScan::kBodyTooLarge;
    s.detail = "request body: at most " + std::to_string(limits.max_body_bytes) + " bytes, got a Content-Length of " +
               std::to_string(content_length);
    return s;
  }
  if (s.body_on_worker || content_length <= 0) {
    s.state = HeadScan::kComplete;
    s.request_bytes = s.head_bytes;
    return s;
  }
  if (buf.size() >= s.head_bytes + static_cast<size_t>(content_length)) {
    s.state = HeadScan::kComplete;
    s.request_bytes = s.head_bytes + static_cast<size_t>(content_length);
  }
  return s;
}

std::string HttpErrorJson(int http_status, const std::string& message) {
  nlohmann::json j = {{"error", {{"code", CodeForStatus(http_status)}, {"message", message}}}};
  return j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) + "\n";
}

std::string BindProblem(const std::string& listen) {
  const auto colon = listen.rfind(':');
  if (colon == std::string::npos) return "not host:port";
  std::string host = listen.substr(0, colon);
  if (host.size() > 1 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE;
  addrinfo* res = nullptr;
  if (const int rc = getaddrinfo(host.c_str(), listen.substr(colon + 1).c_str(), &hints, &res); rc != 0)
    return gai_strerror(rc);
  std::string why;
  const int fd = ::socket(res->ai_family, res->ai_socktype, res->ai_protocol);
  if (fd < 0) {
    why = std::strerror(errno);
  } else {
    int yes = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    if (::bind(fd, res->ai_addr, res->ai_addrlen) != 0) why = std::strerror(errno);
    ::close(fd);
  }
  freeaddrinfo(res);
  return why;
}

// The httplib server, fed by a reader thread that collects whole requests and a few handler
// threads that answer them.
class HttpListener::Impl final : public httplib::Server {
 public:
  explicit Impl(HttpLimits limits) : limits_(limits) {
    if (limits_.workers <= 0)
      limits_.workers = static_cast<int>(
          std::max(8u, std::thread::hardware_concurrency() > 0 ? std::thread::hardware_concurrency() - 1 : 0u));
    new_task_queue = [] { return new InlineQueue; };
    set_keep_alive_max_count(kMaxRequestsPerConnection);
    set_keep_alive_timeout(std::max(1, limits_.idle_timeout_ms / 1000));
    set_payload_max_length(limits_.max_body_bytes);
    set_error_handler([](const httplib::Request& req, httplib::Response& res) {
      if (!res.body.empty()) return;
      const std::string message = res.status == 404 ? "no such endpoint: " + QuoteForMessage(req.path, 64)
                                                    : Reason(res.status);
      res.set_content(HttpErrorJson(res.status, message), "application/json");
    });
    // No internal text reaches a client: the exception is logged, the answer is generic.
    set_exception_handler([](const httplib::Request& req, httplib::Response& res, std::exception_ptr ep) {
      std::string what = "unknown exception";
      try {
        if (ep) std::rethrow_exception(ep);
      } catch (const std::exception& e) {
        what = e.what();
      } catch (...) {
      }
      spdlog::error("http handler failed path={} error={}", req.path, what);
      res.status = 500;
      res.set_content(HttpErrorJson(500, "internal error"), "application/json");
    });
    if (::pipe2(wake_, O_CLOEXEC | O_NONBLOCK) != 0) throw EnvError(std::string("pipe: ") + std::strerror(errno));
  }

  ~Impl() override {
    StopThreads();
    ::close(wake_[0]);
    ::close(wake_[1]);
  }

  void Begin(const std::string& listen, const std::string& what, bool reuse_port) {
    set_socket_options([reuse_port](socket_t sock) {
      int yes = 1;
      setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);  // restart over TIME_WAIT
      if (reuse_port) setsockopt(sock, SOL_SOCKET, SO_REUSEPORT, &yes, sizeof yes);
    });
    const auto colon = listen.rfind(':');
    if (!bind_to_port(listen.substr(0, colon), std::stoi(listen.substr(colon + 1)))) {
      const std::string why = BindProblem(listen);
      throw EnvError(what + ": cannot listen on " + listen + (why.empty() ? "" : ": " + why) +
                     (why == std::strerror(EADDRINUSE)
                          ? " (another process listens there; set reuse_port: true to share the address on purpose)"
                          : ""));
    }
    reader_ = std::thread([this] { ReadLoop(); });
    for (int i = 0; i < limits_.workers; ++i) workers_.emplace_back([this] { WorkLoop(); });
    acceptor_ = std::thread([this] { listen_after_bind(); });
    // stop() is a no-op until the accept loop runs: wait for it so Stop() cannot hang.
    for (int i = 0; i < 1000 && !is_running(); ++i) std::this_thread::sleep_for(Ms(1));
  }

  void End() {
    if (!acceptor_.joinable()) return;
    stop();
    acceptor_.join();
    StopThreads();
  }

 private:
  struct Conn {
    int fd;
    std::string buf;
    SteadyClock::time_point deadline;
    bool idle = false;        // kept alive, nothing of the next request yet
    bool body_phase = false;  // the head is in; the deadline is the body's
    bool eof = false;         // the client will send nothing more (it may still read)
    bool lingering = false;   // refused: answered, waiting briefly for the client to go
    int served = 0;           // requests answered on this connection so far
  };

  // Called by httplib's accept loop for each new connection.
  bool process_and_close_socket(socket_t sock) override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (!stopping_ && open_ < limits_.max_connections) {
        ++open_;
        const int flags = fcntl(sock, F_GETFL, 0);
        fcntl(sock, F_SETFL, flags | O_NONBLOCK);
        incoming_.push_back({sock, "", SteadyClock::now() + Ms(limits_.header_timeout_ms)});
        Wake();
        return true;
      }
    }
    Answer(sock, 503, "too many open connections (" + std::to_string(limits_.max_connections) + ")");
    ::close(sock);
    return false;
  }

  void Wake() { (void)!::write(wake_[1], "x", 1); }

  void Close(int fd) {
    CloseFd(fd);
    std::lock_guard<std::mutex> lock(mu_);
    --open_;
  }
  // A kept-alive connection goes back to the reader with what it already sent of its next request.
  void Return(int fd, std::string leftover, int served) {
    std::lock_guard<std::mutex> lock(mu_);
    if (stopping_) {
      CloseFd(fd);
      --open_;
      return;
    }
    const bool idle = leftover.empty();
    const auto deadline = SteadyClock::now() + Ms(idle ? limits_.idle_timeout_ms : limits_.header_timeout_ms);
    incoming_.push_back({fd, std::move(leftover), deadline, idle});
    incoming_.back().served = served;
    Wake();
  }

  // The reader: one poll() over every connection that has not yet sent a whole request.
  void ReadLoop() {
    std::vector<Conn> conns;
    std::vector<pollfd> fds;
    for (;;) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        if (stopping_) break;
        for (auto& c : incoming_) conns.push_back(std::move(c));
        incoming_.clear();
      }
      auto now = SteadyClock::now();
      long long wait_ms = 1000;
      for (const auto& c : conns)
        wait_ms = std::min<long long>(wait_ms, std::chrono::duration_cast<Ms>(c.deadline - now).count() + 1);
      fds.assign(1, pollfd{wake_[0], POLLIN, 0});
      for (const auto& c : conns) fds.push_back({c.fd, POLLIN, 0});
      if (::poll(fds.data(), fds.size(), static_cast<int>(std::max<long long>(wait_ms, 0))) < 0 && errno != EINTR)
        break;
      char drain[64];
      while (::read(wake_[0], drain, sizeof drain) > 0) {
      }
      now = SteadyClock::now();
      std::vector<Conn> keep;
      keep.reserve(conns.size());
      for (size_t i = 0; i < conns.size(); ++i) {
        Conn& c = conns[i];
        const bool readable = fds[i + 1].revents != 0;
        if (c.lingering) {
          // Refused: what the client still sends is read and dropped for a moment, so that
          // closing does not reset the connection before the client has read the answer.
          if ((readable && !Discard(c.fd)) || now >= c.deadline) {
            Close(c.fd);
            continue;
          }
          keep.push_back(std::move(c));
          continue;
        }
        if (readable && !Receive(c)) {
          Close(c.fd);
          continue;
        }
        if (c.idle && !c.buf.empty()) {
          c.idle = false;
          c.deadline = now + Ms(limits_.header_timeout_ms);
        }
        const HeadScan scan = ScanRequest(c.buf, limits_);
        int refuse = 0;
        std::string why = scan.detail;
        switch (scan.state) {
          case HeadScan::kComplete: {
            std::lock_guard<std::mutex> lock(mu_);
            ready_.push_back(std::move(c));
            ready_cv_.notify_one();
            continue;
          }
          case HeadScan::kUriTooLong: refuse = 414; break;
          case HeadScan::kHeadTooLarge: refuse = 431; break;
          case HeadScan::kBodyTooLarge: refuse = 413; break;
          case HeadScan::kNeedMore: break;
        }
        if (!refuse) {
          if (c.eof) {
            Close(c.fd);  // gone before finishing a request
            continue;
          }
          if (scan.head_bytes > 0 && !c.body_phase) {
            c.body_phase = true;
            c.deadline = now + Ms(limits_.body_timeout_ms);
          }
          if (now >= c.deadline) {
            if (c.buf.empty()) {
              Close(c.fd);  // an idle connection: nothing to answer
              continue;
            }
            refuse = 408;
            why = c.body_phase ? "request body: not received within " + std::to_string(limits_.body_timeout_ms) + " ms"
                               : "request headers: not received within " +
                                     std::to_string(limits_.header_timeout_ms) + " ms";
          }
        }
        if (refuse) {
          Answer(c.fd, refuse, why);
          c.lingering = true;
          c.buf.clear();
          c.buf.shrink_to_fit();
          c.deadline = now + Ms(kLingerMs);
        }
        keep.push_back(std::move(c));
      }
      conns.swap(keep);
    }
    for (auto& c : conns) Close(c.fd);
  }

  // Reads and drops what a refused connection sends; false once it is closed or failed.
  static bool Discard(int fd) {
    char chunk[16 * 1024];
    for (;;) {
      const ssize_t n = ::recv(fd, chunk, sizeof chunk, 0);
      if (n > 0) continue;
      if (n < 0 && errno == EINTR) continue;
      return n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK);
    }
  }

  // Takes what the socket has; false when the socket failed.
  bool Receive(Conn& c) {
    char chunk[16 * 1024];
    const size_t cap = limits_.max_header_bytes + limits_.max_body_bytes + sizeof chunk;
    while (c.buf.size() < cap) {
      const ssize_t n = ::recv(c.fd, chunk, sizeof chunk, 0);
      if (n > 0) {
        c.buf.append(chunk, static_cast<size_t>(n));
        continue;
      }
      if (n == 0) {
        c.eof = true;
        return true;
      }
      if (errno == EINTR) continue;
      return errno == EAGAIN || errno == EWOULDBLOCK;
    }
    return true;
  }

  void WorkLoop() {
    for (;;) {
      Conn c;
      {
        std::unique_lock<std::mutex> lock(mu_);
        ready_cv_.wait(lock, [&] { return stopping_ || !ready_.empty(); });
        if (stopping_) return;
        c = std::move(ready_.front());
        ready_.pop_front();
      }
      Serve(c.fd, std::move(c.buf), c.served);
    }
  }

  // Answers the requests of one connection while they arrive whole (pipelined), then hands the
  // connection back to the reader or closes it.
  void Serve(int fd, std::string bytes, int served) {
    ConnStream stream(fd, std::move(bytes), limits_);
    for (;; ++served) {
      stream.StartRequest();
      bool stopping;
      {
        std::lock_guard<std::mutex> lock(mu_);
        stopping = stopping_;
      }
      const bool close_connection = stopping || served + 1 >= kMaxRequestsPerConnection;
      bool closed = false;
      const bool ok = process_request(stream, close_connection, closed, nullptr);
      if (!ok || closed || close_connection) return Close(fd);
      std::string leftover = stream.TakeLeftover();
      if (ScanRequest(leftover, limits_).state == HeadScan::kComplete) {
        stream.Refill(std::move(leftover));
        continue;
      }
      return Return(fd, std::move(leftover), served + 1);
    }
  }

  void StopThreads() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stopping_ = true;
    }
    Wake();
    ready_cv_.notify_all();
    if (reader_.joinable()) reader_.join();
    for (auto& w : workers_)
      if (w.joinable()) w.join();
    workers_.clear();
    std::lock_guard<std::mutex> lock(mu_);
    for (auto& c : incoming_) CloseFd(c.fd);
    for (auto& c : ready_) CloseFd(c.fd);
    incoming_.clear();
    ready_.clear();
  }

  HttpLimits limits_;
  int wake_[2] = {-1, -1};
  std::mutex mu_;
  bool stopping_ = false;
  int open_ = 0;
  std::vector<Conn> incoming_;  // new and returned connections, for the reader
  std::deque<Conn> ready_;      // whole requests, for the handler threads
  std::condition_variable ready_cv_;
  std::thread acceptor_, reader_;
  std::vector<std::thread> workers_;
};

HttpListener::HttpListener(HttpLimits limits) : impl_(std::make_unique<Impl>(limits)) {}

HttpListener::~HttpListener() { Stop(); }

httplib::Server& HttpListener::server() { return *impl_; }

void HttpListener::Start(const std::string& listen, const std::string& what, bool reuse_port) {
  ValidateHostPort(listen, what);
  impl_->Begin(listen, what, reuse_port);
}

void HttpListener::Stop() { impl_->End(); }

}  // namespace strata

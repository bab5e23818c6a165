// An HTTP listener for a service's side endpoints (status page, JSON gateway, simulator):
// binds host:port up front so a taken or malformed address fails start-up with EnvError /
// InputError naming it, then serves on its own thread until Stop(). Routes are registered on
// server() before Start().
#pragma once
#include <memory>
#include <string>
#include <thread>

namespace httplib {
class Server;
}

namespace strata {

class HttpListener {
 public:
  HttpListener();
  ~HttpListener();
  HttpListener(const HttpListener&) = delete;
  HttpListener& operator=(const HttpListener&) = delete;

  httplib::Server& server() { return *server_; }
  // `what` names the endpoint in errors ("query HTTP gateway").
  void Start(const std::string& listen, const std::string& what);
  void Stop();  // idempotent; waits for in-flight requests

 private:
  std::unique_ptr<httplib::Server> server_;
  std::thread thread_;
};

}  // namespace strata

#include "common/http_server.h"

#include <httplib.h>

#include "common/config.h"
#include "common/errors.h"

namespace strata {

HttpListener::HttpListener() : server_(std::make_unique<httplib::Server>()) {}

HttpListener::~HttpListener() { Stop(); }

void HttpListener::Start(const std::string& listen, const std::string& what) {
  ValidateHostPort(listen, what);
  const auto colon = listen.rfind(':');
  if (!server_->bind_to_port(listen.substr(0, colon).c_str(), std::stoi(listen.substr(colon + 1))))
    throw EnvError(what + ": cannot listen on " + listen);
  thread_ = std::thread([this] { server_->listen_after_bind(); });
}

void HttpListener::Stop() {
  if (!thread_.joinable()) return;
  server_->stop();
  thread_.join();
}

}  // namespace strata

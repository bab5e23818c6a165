// Service bootstrap shared by every strata server. ServiceMain():
//   1. parses --config (default: $STRATA_CONFIG or no file) and validates it (exit 2 on error);
//   2. installs JSON logging and blocks SIGTERM/SIGINT in every thread;
//   3. builds the Component, starts a gRPC server with the standard health service and server
//      reflection, and a Prometheus /metrics listener (prometheus-cpp) on its own port;
//   4. on SIGTERM/SIGINT marks health NOT_SERVING, drains the gRPC server (5 s deadline),
//      then stops the component so in-flight work finishes or is left un-acked for reclaim.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

namespace grpc {
class Service;
}
namespace prometheus {
class Registry;
}

namespace strata {

struct Config;

class Component {
 public:
  virtual ~Component() = default;
  virtual std::vector<grpc::Service*> GrpcServices() = 0;
  virtual void Start() {}
  virtual void Stop() {}
};

using ComponentFactory =
    std::function<std::unique_ptr<Component>(const Config&, prometheus::Registry&)>;

int ServiceMain(int argc, char** argv, const std::string& service, const ComponentFactory& make);

}  // namespace strata

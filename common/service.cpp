#include "common/service.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>
#include <grpcpp/grpcpp.h>
#include <prometheus/exposer.h>
#include <prometheus/registry.h>
#include <spdlog/spdlog.h>

#include <cerrno>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <iostream>

#include "common/config.h"
#include "common/errors.h"
#include "common/http_server.h"
#include "common/log.h"

namespace strata {

int ServiceMain(int argc, char** argv, const std::string& service, const ComponentFactory& make) {
  std::string config_path = std::getenv("STRATA_CONFIG") ? std::getenv("STRATA_CONFIG") : "";
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--config" && i + 1 < argc) {
      config_path = argv[++i];
    } else if (a.rfind("--config=", 0) == 0) {
      config_path = a.substr(9);
    } else if (a == "--help" || a == "-h") {
      std::cout << "usage: " << argv[0] << " [--config strata.yaml]\n"
                << "Environment overrides: see README (STRATA_PG_DSN, STRATA_REDIS_URL, ...)\n";
      return 0;
    } else {
      std::cerr << argv[0] << ": unknown argument '" << a << "'\n";
      return 2;
    }
  }
  InitLogging(service);

  // Block termination signals before any thread exists so only sigwait() below sees them.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);

  try {
    const Config config = LoadConfig(config_path);
    const Endpoint& ep = config.endpoint(service);
    auto registry = std::make_shared<prometheus::Registry>();
    std::unique_ptr<prometheus::Exposer> exposer;
    try {
      exposer = std::make_unique<prometheus::Exposer>(ep.metrics);
    } catch (const std::exception&) {
      const std::string why = BindProblem(ep.metrics);
      throw EnvError("cannot listen for metrics on " + ep.metrics + (why.empty() ? "" : ": " + why));
    }
    exposer->RegisterCollectable(registry);

    std::unique_ptr<Component> component = make(config, *registry);

    grpc::EnableDefaultHealthCheckService(true);
    grpc::reflection::InitProtoReflectionServerBuilderPlugin();
    grpc::ServerBuilder builder;
    // gRPC sets SO_REUSEPORT by default, which lets a second instance share a live address.
    builder.AddChannelArgument(GRPC_ARG_ALLOW_REUSEPORT, config.reuse_port ? 1 : 0);
    // The synchronous server starts a thread per call in flight, without a bound by default:
    // past capacity threads and queued calls pile up (a GiB of memory, every call late). With a
    // bound, gRPC refuses calls beyond it at once with RESOURCE_EXHAUSTED and memory stays flat.
    grpc::ResourceQuota quota("strata-" + service);
    quota.SetMaxThreads(config.grpc_max_threads);
    builder.SetResourceQuota(quota);
    int bound_port = 0;
    builder.AddListeningPort(ep.grpc, grpc::InsecureServerCredentials(), &bound_port);
    for (grpc::Service* s : component->GrpcServices()) builder.RegisterService(s);
    std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
    if (!server || bound_port == 0) {
      const std::string why = BindProblem(ep.grpc);
      throw EnvError("cannot listen for gRPC on " + ep.grpc + (why.empty() ? "" : ": " + why) +
                     (why == std::strerror(EADDRINUSE)
                          ? " (another process listens there; set reuse_port: true to share the address on purpose)"
                          : ""));
    }
    component->Start();
    server->GetHealthCheckService()->SetServingStatus(true);
    spdlog::info("started grpc={} metrics={}", ep.grpc, ep.metrics);

    int sig = 0;
    sigwait(&sigs, &sig);
    spdlog::info("signal={} shutting down", strsignal(sig));
    server->GetHealthCheckService()->SetServingStatus(false);
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
    component->Stop();
    server->Wait();
    spdlog::info("stopped");
    return 0;
  } catch (const InputError& e) {
    spdlog::error("configuration error: {}", e.what());
    std::cerr << service << ": " << e.what() << "\n";
    return 2;
  } catch (const std::exception& e) {
    spdlog::error("fatal: {}", e.what());
    std::cerr << service << ": " << e.what() << "\n";
    return 1;
  }
}

}  // namespace strata

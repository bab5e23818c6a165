#include "services/query/query.h"

#include <google/protobuf/util/json_util.h>
#include <grpcpp/grpcpp.h>
#include <httplib.h>
#include <spdlog/spdlog.h>

#include <nlohmann/json.hpp>

#include "common/config.h"
#include "common/errors.h"
#include "common/http_server.h"
#include "common/spec.h"
#include "services/query/access.h"
#include "services/query/core.h"
#include "services/query/endpoint_call.h"
#include "services/query/openapi.h"
#include "strata.grpc.pb.h"

namespace strata::query {

std::string CacheKey(long long version, const std::string& endpoint, const std::string& params) {
  return "strata:q:v" + std::to_string(version) + ":" + endpoint + ":" + params;
}

std::string RealtimeCacheKey(const std::string& endpoint, const std::string& params) {
  return "strata:q:rt:" + endpoint + ":" + params;
}

namespace {

namespace pb = strata::v1;

std::string BearerToken(const std::string& header) {
  const std::string prefix = "Bearer ";
  return header.rfind(prefix, 0) == 0 ? header.substr(prefix.size()) : "";
}

class QueryImpl final : public Component, public pb::Query::Service {
 public:
  QueryImpl(const Config& config, const PipelineSpec& spec, prometheus::Registry& registry)
      : config_(config), core_(config, spec.endpoints, spec.name, registry) {
    if (config_.warehouse_dsn.empty()) throw InputError("warehouse_dsn (STRATA_PG_DSN) is not configured");
    if (spec.endpoints.empty()) spdlog::warn("pipeline {} declares no endpoints: the query service answers none", spec.name);
  }

  std::vector<grpc::Service*> GrpcServices() override { return {this}; }

  void Start() override {
    core_.Start();
    const std::string& listen = config_.endpoint("query").http;
    if (listen.empty()) return;
    RegisterRoutes();
    http_.Start(listen, "query HTTP gateway", config_.reuse_port);
    spdlog::info("http gateway listening on {} ({} endpoints)", listen, core_.endpoints().size());
  }

  void Stop() override {
    http_.Stop();
    core_.Stop();
  }

  grpc::Status Call(grpc::ServerContext* ctx, const pb::CallRequest* req, pb::CallReply* reply) override {
    return core_.Handle(GrpcCall(req->endpoint(), ctx), *req, reply);
  }

  grpc::Status ListEndpoints(grpc::ServerContext*, const pb::ListEndpointsRequest*, pb::ListEndpointsReply* reply) override {
    core_.List(reply);
    return grpc::Status::OK;
  }

 private:
  struct Call GrpcCall(const std::string& endpoint, grpc::ServerContext* ctx) {
    struct Call call{endpoint, "grpc", "", std::chrono::system_clock::now() + std::chrono::milliseconds(config_.query_timeout_ms)};
    auto it = ctx->client_metadata().find("authorization");
    if (it != ctx->client_metadata().end()) call.token = BearerToken(std::string(it->second.data(), it->second.size()));
    // The client's deadline wins when it is sooner than ours.
    if (ctx->deadline() < call.deadline) call.deadline = ctx->deadline();
    return call;
  }

  // ---- HTTP/JSON gateway ------------------------------------------------------------------

  static void SendJson(httplib::Response& res, int status, const std::string& body) {
    res.status = status;
    res.set_content(body + "\n", "application/json");
  }

  static void SendError(httplib::Response& res, const grpc::Status& st) {
    static const char* kNames[] = {"OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED",
                                   "NOT_FOUND", "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
                                   "FAILED_PRECONDITION", "ABORTED", "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL",
                                   "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"};
    const int code = static_cast<int>(st.error_code());
    const nlohmann::json body = {
        {"error", {{"code", code >= 0 && code <= 16 ? kNames[code] : "UNKNOWN"}, {"message", st.error_message()}}}};
    // Shed load and a warehouse restart are both worth retrying soon; say when.
    if (st.error_code() == grpc::StatusCode::UNAVAILABLE) res.set_header("Retry-After", "1");
    // Any byte a message carries stays valid JSON (invalid UTF-8 becomes U+FFFD).
    SendJson(res, HttpStatusFor(code), body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  }

  void Serve(const ApiEndpoint& e, const httplib::Request& http_req, httplib::Response& res) {
    struct Call call{e.name, "http", BearerToken(http_req.get_header_value("Authorization")),
                     std::chrono::system_clock::now() + std::chrono::milliseconds(config_.query_timeout_ms)};
    pb::CallRequest req;
    req.set_endpoint(e.name);
    // A repeated parameter: its first value (as one value per name is all an endpoint takes).
    for (const auto& [name, value] : http_req.params) req.mutable_params()->insert({name, value});
    pb::CallReply reply;
    const grpc::Status st = core_.Handle(call, req, &reply);
    if (!st.ok()) return SendError(res, st);
    SendJson(res, 200, ReplyJson(e, reply));
  }

  void RegisterRoutes() {
    http_.server().Get("/health", [](const httplib::Request&, httplib::Response& res) {
      SendJson(res, 200, "{\"status\":\"SERVING\"}");
    });
    // What the endpoints are: public, like the declarations they come from.
    http_.server().Get("/openapi.json", [this](const httplib::Request&, httplib::Response& res) {
      pb::ListEndpointsReply list;
      core_.List(&list);
      SendJson(res, 200, OpenApiJson(list, "strata query API"));
    });
    http_.server().Get("/endpoints", [this](const httplib::Request&, httplib::Response& res) {
      pb::ListEndpointsReply list;
      core_.List(&list);
      std::string json;
      google::protobuf::util::JsonPrintOptions opts;
      opts.preserve_proto_field_names = true;
      opts.always_print_primitive_fields = true;
      google::protobuf::util::MessageToJsonString(list, &json, opts);
      SendJson(res, 200, json);
    });
    // The gateway matches paths as regular expressions: a declared path is matched literally.
    for (const auto& e : core_.endpoints()) {
      std::string pattern;
      for (char c : e.path) pattern += c == '.' ? std::string("\\.") : std::string(1, c);
      http_.server().Get(pattern, [this, &e](const httplib::Request& r, httplib::Response& res) { Serve(e, r, res); });
    }
  }

  Config config_;
  QueryCore core_;
  HttpListener http_;
};

}  // namespace

std::unique_ptr<Component> MakeQuery(const Config& config, prometheus::Registry& registry) {
  return std::make_unique<QueryImpl>(config, LoadPipelineSpec(config.pipeline_spec), registry);
}

}  // namespace strata::query

// The OpenAPI 3 document of the HTTP gateway, generated from the endpoint listing (the
// declarations plus the column types the warehouse reported): served at /openapi.json and
// checked by a real validator in tests/e2e/query_api_e2e.py.
#pragma once
#include <string>

namespace strata::v1 {
class ListEndpointsReply;
}

namespace strata::query {

// OpenAPI 3.0.3 JSON: one GET operation per endpoint (operationId = its name), its query
// parameters with their schemas (type, format, bounds, enum, default), the 200 answer's schema
// ({result: [row], cached, version[, next_page_token]}, each column typed and nullable; a row of
// an endpoint not yet described is any object) and the error answers.
std::string OpenApiJson(const strata::v1::ListEndpointsReply& endpoints, const std::string& title);

}  // namespace strata::query

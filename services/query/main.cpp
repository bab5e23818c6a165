#include "common/service.h"
#include "services/query/query.h"

int main(int argc, char** argv) {
  return strata::ServiceMain(argc, argv, "query", strata::query::MakeQuery);
}

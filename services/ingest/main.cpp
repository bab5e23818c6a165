#include "common/service.h"
#include "services/ingest/ingest.h"

int main(int argc, char** argv) {
  return strata::ServiceMain(argc, argv, "ingest", strata::ingest::MakeIngest);
}

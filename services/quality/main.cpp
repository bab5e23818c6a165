#include "common/service.h"
#include "services/quality/quality.h"

int main(int argc, char** argv) {
  return strata::ServiceMain(argc, argv, "quality", strata::quality::MakeQuality);
}

#include "common/service.h"
#include "services/lake_export/lake_export.h"

int main(int argc, char** argv) {
  return strata::ServiceMain(argc, argv, "lake_export", strata::lake_export::MakeLakeExport);
}

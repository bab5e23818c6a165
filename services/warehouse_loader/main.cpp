#include "common/service.h"
#include "services/warehouse_loader/loader.h"

int main(int argc, char** argv) {
  return strata::ServiceMain(argc, argv, "warehouse_loader", strata::loader::MakeLoader);
}

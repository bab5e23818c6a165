#include "common/service.h"
#include "services/controller/controller.h"

int main(int argc, char** argv) {
  return strata::ServiceMain(argc, argv, "controller", strata::controller::MakeController);
}

// `stratactl validate DIR`, `stratactl models DIR`, `stratactl endpoints DIR` and `stratactl lineage TABLE DIR`: a pipeline folder checked and described
// without any service or database — what the services would refuse at start-up, refused here
// with the same message (file and key path, or file and line).
#pragma once
#include <string>

namespace strata::ctl {

// Prints a one-line summary and returns 0, or prints the error to stderr and returns 2.
int ValidatePipeline(const std::string& dir, bool json);
// The SQL models in build order: name, kind, file, what each reads. 2 when the folder is invalid.
int ListModels(const std::string& dir, bool json);
// What `table` is built from and what is built from it (services/warehouse_loader/lineage.h).
// 2 when the folder is invalid or has no such table.
int PrintLineage(const std::string& dir, const std::string& table, bool json);

// The declared endpoints: name, path, parameters (name:type, ! when required, =default),
// cache policy, roles, tables read. 2 when the folder is invalid.
int ListEndpoints(const std::string& dir, bool json);

}  // namespace strata::ctl

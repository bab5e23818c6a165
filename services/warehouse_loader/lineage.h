// Lineage: which tables a table is built from and which are built from it, across a whole
// pipeline — sources (`source.<dataset>`), staging, CDC's raw tables, declared dimensions and
// facts, built-in and SQL models, the published `serving` copies and the endpoints
// (`endpoint.<name>`). What `stratactl lineage`
// prints; computed from the spec alone (no database).
#pragma once
#include <map>
#include <string>
#include <vector>

#include "common/spec.h"

namespace strata::loader {

// Every table (and source) of the pipeline -> the ones it is built from directly.
std::map<std::string, std::vector<std::string>> PipelineGraph(const PipelineSpec& spec);

// Refuses an endpoint whose SQL reads a table the pipeline does not have (InputError naming the
// file, line and endpoint).
void CheckEndpointReads(const PipelineSpec& spec);

struct Lineage {
  std::vector<std::string> upstream;    // transitively, nearest first
  std::vector<std::string> downstream;  // transitively, nearest first
};
// Throws InputError for a table the pipeline does not have.
Lineage LineageOf(const PipelineSpec& spec, const std::string& table);

}  // namespace strata::loader

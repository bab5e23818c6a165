// The per-date DAG derived from a pipeline spec. For every dataset:
//   extract.<d> -> export.<d> -> load.<d>
// then `model` after every load, `check` after model, and `publish` after check
// (write-audit-publish: marts reach the query service only if the audit passed). Pure.
#pragma once
#include <string>
#include <vector>

#include "common/spec.h"

namespace strata::controller {

enum class TaskKind { kExtract, kExport, kLoad, kModel, kCheck, kPublish };

struct TaskNode {
  std::string name;  // "extract.customers", "model", ...
  TaskKind kind;
  std::string dataset;  // empty for model/check
  std::vector<std::string> deps;
};

std::vector<TaskNode> BuildDag(const PipelineSpec& spec);

// Names of tasks whose deps all appear in `succeeded` and that are in `pending`.
std::vector<std::string> ReadyTasks(const std::vector<TaskNode>& dag, const std::vector<std::string>& pending,
                                    const std::vector<std::string>& succeeded);

// Every task downstream of `task` (transitively), in DAG order.
std::vector<std::string> Downstream(const std::vector<TaskNode>& dag, const std::string& task);

// A run id that sorts by creation time: "r<unix-ms, 13 digits>-<4 hex>".
std::string NewRunId(long long unix_ms, unsigned random);

}  // namespace strata::controller

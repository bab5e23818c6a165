// Pure logic of the quality service: the SQL that returns a check's failing rows, the
// volume-anomaly verdict, alert transitions and alert payloads. No I/O.
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/spec.h"

namespace strata::quality {

struct CheckResult {
  std::string name, kind, severity, target;
  std::string status;  // pass | fail | warn
  std::string observed, threshold, message;
  std::string sample = "[]";  // JSON array of up to 5 failing rows
};

// The condition "column holds the day ds": a yyyymmdd integer for a `..._key` column, else the
// column compared as a date. `ds_literal` is the quoted date.
std::string DateKeyExpr(const std::string& column, const std::string& ds_literal);

// For row-level kinds (not_null, unique, relationships, accepted_values, range, custom_sql):
// a SELECT whose rows are the failures, over the check's slice of the table when it has one.
// `ds_literal` is the quoted date for {ds} in custom SQL and the slice. nullopt for kinds
// evaluated otherwise. Values are quoted with `quote`.
std::optional<std::string> FailingRowsSql(const CheckSpec& check, const std::string& ds_literal,
                                          const std::function<std::string(const std::string&)>& quote);

// Fact reconciliation (reconciliation with `fact`): the rows of the fact's `from` dataset
// staged on ds (their latest version that day) that were not deleted in the source (CDC
// tombstones) and have no live row in dwh.<fact>. Columns: the grain, then `gap_measure`, the
// declared measure computed from the staged row and its latest staged header (NULL without a
// measure). `ds_literal` is the quoted date.
std::string FactGapSql(const PipelineSpec& spec, const FactSpec& fact, const std::string& measure,
                       const std::string& ds_literal);

struct VolumeVerdict {
  bool ok = true;
  double mean = 0, stddev = 0, sigmas = 0;
  std::string message;
};
// today's count against the trailing counts (oldest first); needs at least 3 days of history.
VolumeVerdict JudgeVolume(long long today, const std::vector<long long>& history, double max_sigma);

// What a new result means for alerting, given the state last alerted ("ok", "failing" or "").
enum class Transition { kNone, kStartsFailing, kRecovers };
Transition AlertTransition(const std::string& alerted_state, const std::string& status);

// The webhook body. format "slack": {"text": ..., plus the fields}; "generic": the fields only.
std::string AlertPayload(const std::string& format, Transition t, const std::string& pipeline,
                         const std::string& ds, const std::string& run_id, const CheckResult& r);

}  // namespace strata::quality

// Applies change-data-capture micro-batches (strata:cdc, group "warehouse-loader") to the
// warehouse, one batch per transaction, in stream order:
//   raw.<dataset>_changes   every change (lsn, seq, op, commit_time, columns), deduplicated by (lsn, seq)
//   raw.<dataset>_current   the latest row per key, deletes kept as tombstones (_deleted)
//   marts.orders_current    re-derived for the orders a batch touched (when orders are captured)
//   ops.cdc_state           applied_lsn, in the same transaction: what ingest may confirm to the slot
// A change whose TOASTed columns were unchanged gets them from the key's previous version, never a
// placeholder. A redelivered batch changes nothing (lsn guards). A batch that fails to apply is
// retried, and after 5 failures moved to strata:deadletter with the reason (and counted).
#pragma once
#include <memory>
#include <string>

#include "common/config.h"
#include "common/spec.h"

namespace prometheus {
class Registry;
}

namespace strata::loader {

std::string CdcDdl(const PipelineSpec& spec);

class CdcApplier {
 public:
  CdcApplier(const Config& config, const PipelineSpec& spec, prometheus::Registry& registry);
  ~CdcApplier();
  void Start();
  void Stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace strata::loader

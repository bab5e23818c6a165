// Change data capture from the PostgreSQL source over the logical replication protocol
// (pgoutput, libpq COPY BOTH). What it promises:
//  * at start: every captured table has a usable replica identity (a primary key, an index, or
//    FULL), else it refuses with a message naming the table; the publication exists; the slot
//    exists and was not recreated behind strata's back (its confirmed position is never ahead of
//    what strata acknowledged) — a missing or recreated slot is an error, never a silent skip;
//  * a new slot starts with a consistent snapshot of the tables (op "r"), exported by the slot;
//  * inserts, updates and deletes become Change records with commit LSN and commit time,
//    published on strata:cdc in micro-batches (CdcSpec.batch_ms / batch_changes);
//  * the slot's confirmed LSN advances only to what the warehouse-loader has applied
//    (ops.cdc_state.applied_lsn), so kill -9 of any process loses nothing;
//  * heartbeats (a logical message every heartbeat_seconds) keep the slot advancing and the lag
//    measurable while captured tables are quiet;
//  * unchanged TOAST values are flagged (Change.unchanged), never sent as placeholders.
// Only one ingest holds the slot at a time; the others wait and take over when it goes.
#pragma once
#include <memory>

#include "common/config.h"
#include "common/spec.h"

namespace prometheus {
class Registry;
}

namespace strata::ingest {

class CdcStreamer {
 public:
  CdcStreamer(const Config& config, const PipelineSpec& spec, prometheus::Registry& registry);
  ~CdcStreamer();
  void Start();
  void Stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace strata::ingest

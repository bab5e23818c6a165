// Groups extracted records into bus batches of at most `batch_rows` rows. The last batch of an
// extraction is held back until Finish() so it can carry last=true and the total count, which
// is how lake-export knows a partition is complete. An extraction with no rows still emits one
// (empty, last) batch so the empty partition commits. Pure: emission goes to a callback.
#pragma once
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "strata.pb.h"

namespace strata::ingest {

class BatchBuilder {
 public:
  using Emit = std::function<void(const strata::v1::Batch&)>;
  BatchBuilder(const strata::v1::TaskRequest& req, std::vector<std::string> columns, int batch_rows,
               Emit emit);

  // values[i] is ignored when nulls[i] is set. `position` names where the row came from.
  void Add(const std::vector<std::string>& values, const std::vector<bool>& nulls,
           const std::string& position);
  // Emits the held batch marked last; returns the number of batches emitted in total.
  // `watermark` (may be empty) is set on the last batch.
  int Finish(const std::string& watermark = "");
  // For one shard of a sharded extraction: seqs start at `base`; FinishShard() emits what is
  // left without marking anything last and returns the shard's batch count.
  void SetSeqBase(int base);
  // How lake-export should write the batches (Batch.lake_format / lake_compression).
  void SetLakeFormat(const std::string& format, const std::string& compression);
  int FinishShard();
  long long rows() const { return rows_; }

  static std::string BatchId(const std::string& run_id, const std::string& dataset, int seq);

 private:
  strata::v1::Batch NewBatch(int seq) const;

  strata::v1::TaskRequest req_;
  std::vector<std::string> columns_;
  int batch_rows_;
  Emit emit_;
  strata::v1::Batch current_;
  std::optional<strata::v1::Batch> held_;
  int next_seq_ = 0;
  int seq_base_ = 0;
  std::string lake_format_, lake_compression_;
  long long rows_ = 0;
};

}  // namespace strata::ingest

#include "services/ingest/batch_builder.h"

#include <stdexcept>

namespace strata::ingest {

BatchBuilder::BatchBuilder(const strata::v1::TaskRequest& req, std::vector<std::string> columns,
                           int batch_rows, Emit emit)
    : req_(req), columns_(std::move(columns)), batch_rows_(batch_rows), emit_(std::move(emit)) {
  current_ = NewBatch(next_seq_++);
}

std::string BatchBuilder::BatchId(const std::string& run_id, const std::string& dataset, int seq) {
  return run_id + "/" + dataset + "/" + std::to_string(seq);
}

strata::v1::Batch BatchBuilder::NewBatch(int seq) const {
  strata::v1::Batch b;
  b.set_batch_id(BatchId(req_.run_id(), req_.dataset(), seq_base_ + seq));
  b.set_pipeline(req_.pipeline());
  b.set_dataset(req_.dataset());
  b.set_ds(req_.ds());
  b.set_run_id(req_.run_id());
  b.set_attempt(req_.attempt());
  b.set_seq(seq_base_ + seq);
  b.set_lake_format(lake_format_);
  b.set_lake_compression(lake_compression_);
  for (const auto& c : columns_) b.add_columns(c);
  return b;
}

void BatchBuilder::Add(const std::vector<std::string>& values, const std::vector<bool>& nulls,
                       const std::string& position) {
  if (current_.rows_size() == 0) current_.set_source_position(position);
  auto* row = current_.add_rows();
  for (size_t i = 0; i < values.size(); ++i) {
    auto* v = row->add_values();
    if (i < nulls.size() && nulls[i]) v->set_null(true);
    else v->set_text(values[i]);
  }
  ++rows_;
  if (current_.rows_size() >= batch_rows_) {
    if (held_) emit_(*held_);
    held_ = std::move(current_);
    current_ = NewBatch(next_seq_++);
  }
}

void BatchBuilder::SetLakeFormat(const std::string& format, const std::string& compression) {
  lake_format_ = format;
  lake_compression_ = compression;
  current_.set_lake_format(format);
  current_.set_lake_compression(compression);
}

void BatchBuilder::SetSeqBase(int base) {
  if (rows_ > 0 || held_) throw std::logic_error("SetSeqBase after rows were added");
  seq_base_ = base;
  current_ = NewBatch(next_seq_ - 1);
}

int BatchBuilder::FinishShard() {
  if (held_) emit_(*held_);
  held_.reset();
  if (current_.rows_size() > 0) emit_(current_);
  return current_.rows_size() > 0 ? current_.seq() - seq_base_ + 1 : current_.seq() - seq_base_;
}

int BatchBuilder::Finish(const std::string& watermark) {
  // The final batch is the non-empty current one, else the held one, else an empty batch.
  strata::v1::Batch last;
  int total;
  if (current_.rows_size() > 0 || !held_) {
    if (held_) emit_(*held_);
    last = std::move(current_);
    total = last.seq() + 1;
  } else {
    last = std::move(*held_);
    total = last.seq() + 1;
  }
  held_.reset();
  last.set_last(true);
  last.set_total_batches(total);
  last.set_watermark(watermark);
  emit_(last);
  return total;
}

}  // namespace strata::ingest

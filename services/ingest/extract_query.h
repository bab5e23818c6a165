// The incremental extraction query for a PostgreSQL source: rows whose cursor column falls in
// the logical day's half-open window [ds 00:00 UTC, ds+1 00:00 UTC), ordered by (cursor, key)
// so the order is total and a resumed or repeated extraction sees rows in the same sequence.
// Timestamps are rendered as ISO-8601 UTC text so they survive the bus unchanged. Pure.
#pragma once
#include <string>
#include <vector>

#include "common/spec.h"

namespace strata::ingest {

struct Window {
  std::string start;  // inclusive, ISO-8601 UTC
  std::string end;    // exclusive
};

// Throws InputError for a malformed ds.
Window DayWindow(const std::string& ds);

// Rows of another source table that reference this dataset's rows (a fact's lines and their
// header): `on` columns exist in both; `table`'s rows in the window pull their referenced rows
// into the same extraction.
struct Referrer {
  std::string table;
  std::string cursor;
  std::vector<std::string> on;
};
// The referrers of `dataset` in `spec`: every fact that joins it as a header, whose `from` is
// a PostgreSQL dataset extracted by interval like `dataset`. A header is then extracted with
// the lines of its window even when it changed later (its current state), so no line of the
// window lacks its header in staging, whichever days are loaded.
std::vector<Referrer> Referrers(const PipelineSpec& spec, const DatasetSpec& dataset);

// SELECT ... FROM <table> WHERE <cursor> >= '<start>' AND <cursor> < '<end>' ORDER BY ...
std::string IncrementalSelect(const DatasetSpec& dataset, const std::string& ds);
// The same over an explicit window (a schedule's data interval). Throws InputError unless both
// bounds are ISO-8601 UTC timestamps ("2024-01-09T23:00:00Z"). With referrers, also the rows
// that a referrer's rows in the window reference.
std::string IncrementalSelect(const DatasetSpec& dataset, const Window& window,
                              const std::string& extra_where = "", const std::vector<Referrer>& referrers = {});

// A stored watermark: the largest (cursor, key...) a previous extraction delivered.
struct Watermark {
  std::string cursor;
  std::vector<std::string> key;
};
// Rows after the watermark, ordered by (cursor, key). With overlap_seconds > 0 the lower bound
// is cursor >= watermark - overlap (rows re-read are deduplicated downstream by key); with 0 it
// is the strict compound (cursor, key) > watermark. No watermark: every row.
std::string WatermarkSelect(const DatasetSpec& dataset, const Watermark* watermark,
                            const std::string& extra_where = "");
// Rows of shard `shard` of `shards`, by a hash of the key: every row is in exactly one shard.
std::string ShardPredicate(const DatasetSpec& dataset, int shard, int shards);
// The JSON form carried in Batch.watermark.
std::string WatermarkJson(const Watermark& w);
Watermark WatermarkFromJson(const std::string& json);

}  // namespace strata::ingest

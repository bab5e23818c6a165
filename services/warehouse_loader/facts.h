// Fact tables declared in the pipeline spec (FactSpec), turned into DDL and into the SQL of
// their model. A fact row is the latest staged version of one grain of `from` (by the
// dataset's cursor, then the latest load), joined to the latest version of its header rows,
// with each declared dimension's surrogate key for the version valid at `event_time`, a
// `date_key` (yyyymmdd of event_time in UTC) and the declared measures.
//
// Per logical date (mode merge) the rows rebuilt are: grains staged that day, grains whose
// header rows were staged that day, and facts whose dimension history changed that day or
// whose dimension row no longer covers their event time (unknown member, a version removed or
// moved by a late change, an inferred member completed later). A natural key the dimension
// has never seen gets an inferred member first, so no fact is left without a key. Rows are
// merged by grain and written only when something differs; building a day twice, or every
// day in any order, gives the same table. Mode replace rebuilds the facts whose event falls on
// the day instead.
//
// Deletes: where change data capture covers `from` (keyed by the grain) or a joined header
// (keyed by its `on` columns), a tombstone in raw.<dataset>_current means the row is gone from
// the source. Policy `delete` removes the fact row, `flag` keeps it with is_deleted = true; marts
// read live rows only. A tombstoned grain whose fact is still live is rebuilt whatever the day,
// and the batch path never brings back a row CDC deleted.
//
// Models after the fact in the same transaction can use two temp tables:
//   tmp_<fact>_affected (the grain columns) and tmp_<fact>_dates (date_key: every date whose
//   facts were touched, before or after the change).
#pragma once
#include <string>
#include <vector>

#include "common/spec.h"

namespace strata::loader {

std::string FactDdl(const PipelineSpec& spec, const FactSpec& fact);
std::vector<std::string> FactStatements(const PipelineSpec& spec, const FactSpec& fact);

}  // namespace strata::loader

// Dimensions declared in the pipeline spec (DimensionSpec), turned into DDL and into the SQL
// of their model. The builder is correct by construction:
//  - The table holds every version of every natural key with valid_from/valid_to (from the
//    source's business time, never load time), is_current, version, is_deleted, is_inferred.
//    A partial unique index allows one current row per key and an exclusion constraint
//    (btree_gist) forbids overlapping validity, so a broken history cannot be committed.
//  - A day's build re-derives the history of every key staged that day from all its staged
//    observations plus the versions the table already holds (the table is the durable record:
//    an incremental re-extraction only shows a row's latest state). Observations are ordered
//    by business time, so several changes in one batch apply in order and a late change
//    splits the interval it falls into. A new version starts only where a type-2 column or
//    the deleted state changes; type-1 columns take the latest observed value in every
//    version. A deletion closes the open version at its time and marks it is_deleted; a key
//    that comes back starts a new version.
//  - The table is then made equal to the derived history (delete, shrink, extend, insert, in
//    the order the constraints require) inside the caller's transaction.
//  - Surrogate key 0 is the unknown member. A fact builder that meets a natural key the
//    dimension has never seen inserts an inferred member (InferredMembersSql); when the real
//    row arrives the inferred row is completed in place as the key's first version, keeping
//    its surrogate key.
// Building a day twice, or every day in any order, gives the same rows.
#pragma once
#include <string>
#include <vector>

#include "common/spec.h"

namespace strata::loader {

// CREATE TABLE dwh.<name> with its constraints and unknown member; idempotent.
std::string DimensionDdl(const DimensionSpec& dim, const DatasetSpec& from);

// The model's statements, in order, for one logical date ($1). They leave the temp table
// tmp_<name>_rekey (sk, lo, hi): per surrogate key, the validity [lo, hi) the build took from it,
// so a fact build later in the transaction keys again exactly the facts of that key whose event
// falls there.
// `captured`: `from` is captured by CDC, so the history also takes every state and every
// delete of raw.<from>_changes for the affected keys (and keys deleted in the source whose
// current version is still live are affected).
std::vector<std::string> DimensionStatements(const DimensionSpec& dim, const DatasetSpec& from, bool captured = false);

// INSERT of inferred members for the natural keys returned by `keys_query` (one column) that
// the dimension does not hold yet. Valid from -infinity to infinity until completed.
std::string InferredMembersSql(const DimensionSpec& dim, const std::string& keys_query);

}  // namespace strata::loader

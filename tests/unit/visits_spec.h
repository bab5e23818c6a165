// A small pipeline for tests that need one of their own: `people` (an SCD2 dimension dim_person)
// and their `visits` (a fact fact_visit keyed to the person version valid at the visit, with a
// `minutes` measure). `mode` is the fact's mode: merge (by grain) or replace (the day's slice).
#pragma once
#include <string>

namespace strata::fixtures {

inline std::string VisitsSpec(const std::string& mode = "merge") {
  return R"yaml(
pipeline: visits
datasets:
  - name: people
    source: {type: postgres, table: src.people, cursor: changed_at}
    key: [id]
    columns:
      - {name: id, type: int}
      - {name: name, type: text}
      - {name: changed_at, type: timestamp}
  - name: visits
    source: {type: postgres, table: src.visits, cursor: changed_at}
    key: [visit_id]
    columns:
      - {name: visit_id, type: int}
      - {name: person_id, type: int}
      - {name: seconds, type: int}
      - {name: at, type: timestamp}
      - {name: changed_at, type: timestamp}
dimensions:
  - {name: dim_person, from: people, key: id, effective_from: changed_at, scd2: [name]}
facts:
  - name: fact_visit
    from: visits
    grain: [visit_id]
    event_time: at
    dimensions: [{dimension: dim_person, key: person_id}]
    measures:
      - {name: minutes, type: "numeric(8,2)", sql: "seconds / 60.0"}
    mode: )yaml" + mode + R"yaml(
models: [dim_person, fact_visit]
)yaml";
}

}  // namespace strata::fixtures

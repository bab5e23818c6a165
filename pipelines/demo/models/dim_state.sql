-- US states from the states web page, with their population from the census API.
/* strata
name: dwh.dim_state
kind: incremental_by_key
unique_key: [abbreviation]
indexes: [[name]]
description: "The states the review site's businesses are in; type 1 throughout (the latest name and count)."
columns:
  abbreviation: the two-letter code (the natural key)
  name: the state's name, as the states page writes it
  population: the census count as of the day built (the latest census staged on or before it)
*/
SELECT s.abbreviation,
       s.name,
       p.population
FROM (SELECT DISTINCT ON (abbreviation) abbreviation, name
      FROM staging.states
      WHERE ds = {ds}
      ORDER BY abbreviation, name) s
LEFT JOIN (SELECT DISTINCT ON (name) name, population
           FROM staging.state_population
           WHERE ds = (SELECT max(ds) FROM staging.state_population WHERE ds <= {ds})
           ORDER BY name) p USING (name)

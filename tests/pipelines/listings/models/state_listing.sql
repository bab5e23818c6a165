/* strata
name: marts.state_listing
kind: full
unique_key: [abbreviation]
description: Every state with the businesses of the latest listing in it (rebuilt whole every run).
*/
WITH states AS (
  SELECT DISTINCT ON (abbreviation) abbreviation, name
  FROM staging.us_states
  ORDER BY abbreviation, ds DESC
), latest AS (
  SELECT * FROM staging.listings WHERE ds = (SELECT max(ds) FROM staging.listings)
)
SELECT s.abbreviation,
       s.name,
       count(l.id) AS businesses,
       coalesce(sum(l.review_count), 0)::bigint AS reviews
FROM states s
LEFT JOIN latest l ON l.state = s.abbreviation
GROUP BY s.abbreviation, s.name

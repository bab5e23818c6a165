-- Reviews from the reviews API, one row per review at its newest version: overlapping and
-- repeated extractions converge by key. For each review staged on the day, its newest version
-- among every day it was staged (through the staging table's key index), so days built in any
-- order agree.
/* strata
name: dwh.fact_review
kind: incremental_by_key
unique_key: [review_id]
indexes: [[business_id]]
description: Every review the reviews API returned, at its newest version.
columns:
  first_ds: the first day the review was staged
  last_ds: the first day its newest version was staged
*/
SELECT DISTINCT ON (r.review_id)
       r.review_id::bigint AS review_id,
       r.business_id,
       r.stars::integer AS stars,
       r.title,
       r.updated_at,
       (SELECT min(x.ds) FROM staging.reviews x WHERE x.review_id = r.review_id) AS first_ds,
       r.ds AS last_ds
FROM staging.reviews r
WHERE r.review_id IN (SELECT review_id FROM staging.reviews WHERE ds = {ds})
ORDER BY r.review_id, r.updated_at DESC, r.ds, r.run_id

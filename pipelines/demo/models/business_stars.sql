-- Reviews and mean stars per business. Only the businesses the day's reviews touch are counted
-- again: the ones they are in, and the ones an earlier version of them was in (a review that
-- moved leaves one business and joins another). A business left without reviews goes.
/* strata
name: marts.business_stars
kind: incremental_by_key
unique_key: [business_id]
description: Every business with reviews, its review count and mean stars.
columns:
  reviews: its reviews (each at its newest version)
  avg_stars: their mean stars, 2 decimals
*/
WITH touched AS (
  SELECT DISTINCT r.business_id
  FROM staging.reviews r
  WHERE r.review_id IN (SELECT review_id FROM staging.reviews WHERE ds = {ds})
    AND r.ds <= {ds}
)
SELECT t.business_id,
       count(f.review_id) AS reviews,
       coalesce(round(avg(f.stars), 2), 0)::numeric(4,2) AS avg_stars,
       count(f.review_id) = 0 AS _deleted
FROM touched t
LEFT JOIN dwh.fact_review f USING (business_id)
GROUP BY t.business_id

/* strata
name: marts.business_review_changes
kind: incremental_by_ds
unique_key: [ds, business_id]
description: Each business's review count and its change per day (what the review-changes endpoint and dashboard show).
*/
SELECT f.ds,
       f.business_id,
       f.name,
       f.review_count,
       f.review_change
FROM dwh.fact_business_daily f
WHERE f.ds = {ds}

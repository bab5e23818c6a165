-- Periodic snapshot of the review-site API: one row per business per day, with the change of
-- its review count against the day before. A day's counts change the next day's change, so the
-- next day is rebuilt with it (lookahead_days): loading days in any order converges.
/* strata
name: dwh.fact_business_daily
kind: incremental_by_ds
lookahead_days: 1
unique_key: [business_id, date_key]
indexes: [[date_key]]
description: The review site's listing per business and day.
columns:
  date_key: the day as yyyymmdd (dwh.dim_date)
  ds: the same day as a date
  business_id: the listing's id (a repeated listing of one day counts once, the highest count)
  review_change: review_count minus the day before's (NULL when that day has no listing of the business)
*/
SELECT b.id AS business_id,
       to_char({ds}, 'YYYYMMDD')::int AS date_key,
       b.name,
       b.category,
       b.state,
       b.price_level::integer AS price_level,
       b.rating::numeric(3,1) AS rating,
       b.review_count::integer AS review_count,
       (b.review_count - p.review_count)::integer AS review_change,
       {ds} AS ds
FROM (SELECT DISTINCT ON (id) * FROM staging.businesses
      WHERE ds = {ds} AND review_count IS NOT NULL
      ORDER BY id, review_count DESC, rating DESC, name) b
LEFT JOIN (SELECT DISTINCT ON (id) id, review_count FROM staging.businesses
           WHERE ds = {ds} - 1 AND review_count IS NOT NULL
           ORDER BY id, review_count DESC, rating DESC, name) p USING (id)

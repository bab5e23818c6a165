/* strata
name: marts.category_day
kind: incremental_by_ds
unique_key: [ds, category]
description: The listing of a day, per category.
columns:
  businesses: businesses listed in the category that day
  avg_rating: their mean rating, 2 decimals
  reviews: their reviews, summed
*/
SELECT {ds} AS ds,
       category,
       count(*) AS businesses,
       round(avg(rating)::numeric, 2)::numeric(4,2) AS avg_rating,
       sum(review_count)::bigint AS reviews
FROM staging.listings
WHERE ds = {ds}
GROUP BY category

/* strata
name: marts.rating_by_price_level
kind: incremental_by_ds
unique_key: [ds, price_level]
description: The review site's businesses per price level ($ .. $$$$) and their mean rating, per day's listing.
columns:
  ds: the day of the listing
  price_level: 1 ($) to 4 ($$$$)
  businesses: businesses listed at that level that day
  avg_rating: their mean rating, 2 decimals
*/
SELECT {ds} AS ds,
       price_level,
       count(*) AS businesses,
       round(avg(rating), 2)::numeric(4,2) AS avg_rating
FROM dwh.fact_business_daily
WHERE date_key = to_char({ds}, 'YYYYMMDD')::int
  AND price_level IS NOT NULL
GROUP BY price_level

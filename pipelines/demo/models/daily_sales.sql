-- The shop's day: what the daily-sales endpoint and the business dashboard show.
/* strata
name: marts.daily_sales
kind: incremental_by_ds
unique_key: [ds]
description: Orders, units and revenue per day (UTC) of the live order lines.
columns:
  ds: the day (UTC) the orders were placed
  orders: orders with at least one live line that day
  units: sum of the lines' quantities
  revenue: sum of quantity × unit price of the lines
*/
SELECT d.date AS ds,
       count(DISTINCT f.order_id) AS orders,
       sum(f.quantity)::bigint AS units,
       sum(f.amount)::numeric(16,2) AS revenue
FROM dwh.fact_sales f
JOIN dwh.dim_date d USING (date_key)
WHERE f.date_key = to_char({ds}, 'YYYYMMDD')::int
  AND NOT f.is_deleted
GROUP BY d.date

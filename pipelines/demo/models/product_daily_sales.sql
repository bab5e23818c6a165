/* strata
name: marts.product_daily_sales
kind: incremental_by_ds
unique_key: [ds, product_id]
description: Orders, units and revenue per day (UTC) and product, with the product's current name.
columns:
  ds: the day (UTC) the orders were placed
  product_id: the product's natural key
  product_name: the product's name (its version valid at the order)
  orders: orders with at least one live line of the product that day
  units: sum of the product's quantities
  revenue: sum of quantity × unit price of the product's lines
*/
SELECT d.date AS ds,
       p.product_id,
       p.name AS product_name,
       count(DISTINCT f.order_id) AS orders,
       sum(f.quantity)::bigint AS units,
       sum(f.amount)::numeric(16,2) AS revenue
FROM dwh.fact_sales f
JOIN dwh.dim_date d USING (date_key)
JOIN dwh.dim_product p USING (product_key)
WHERE f.date_key = to_char({ds}, 'YYYYMMDD')::int
  AND NOT f.is_deleted
GROUP BY d.date, p.product_id, p.name

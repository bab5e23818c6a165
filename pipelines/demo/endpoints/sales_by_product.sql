-- Per product over the range; an open end of the range reaches every published day.
SELECT product_id,
       coalesce(max(product_name), '') AS name,
       sum(orders)::bigint AS orders,
       sum(units)::bigint AS units,
       sum(revenue) AS revenue
FROM serving.product_daily_sales
WHERE ({from} IS NULL OR ds >= {from})
  AND ({to} IS NULL OR ds <= {to})
GROUP BY product_id
ORDER BY sum(revenue) DESC, product_id

#!/usr/bin/env bash
# make demo: starts the whole suite on a private PostgreSQL + Redis under .strata/demo, runs the
# demo pipeline for 7 logical days (the simulator advances one day before each run, as a daily
# schedule would see it), prints what landed where, asks the query service, and stops it all.
# Exits 0 only if every run and every check passed.
set -euo pipefail
BIN=${1:-build/bin}
ROOT=$(cd "$(dirname "$0")/.." && pwd)
DIR=$ROOT/.strata/demo
START=${STRATA_DEMO_START:-2024-01-01}
DAYS=${STRATA_DEMO_DAYS:-7}

"$ROOT/infra/stack.sh" up --dir "$DIR" --bin "$BIN" --start "$START"
trap '"$ROOT/infra/stack.sh" down --dir "$DIR" >/dev/null' EXIT
# shellcheck disable=SC1091
. "$DIR/env"

failed=0
last=$START
for i in $(seq 0 $((DAYS - 1))); do
  ds=$(date -u -d "$START + $i day" +%F)
  last=$ds
  "$BIN/strata-source-sim" advance --through "$ds" >/dev/null
  if "$BIN/stratactl" run --date "$ds" >"$DIR/logs/run-$ds.txt"; then
    echo "run $ds: succeeded"
  else
    echo "run $ds: FAILED"; cat "$DIR/logs/run-$ds.txt"; failed=1
  fi
done

echo
echo "== rows per layer =="
psql "$STRATA_SOURCE_DSN" -qAt -F ' ' -c "
  SELECT 'source  shop.' || t, n FROM (VALUES
    ('customers', (SELECT count(*) FROM shop.customers)), ('products', (SELECT count(*) FROM shop.products)),
    ('orders', (SELECT count(*) FROM shop.orders)), ('order_items', (SELECT count(*) FROM shop.order_items))) v(t, n)"
for d in customers products orders order_items businesses states; do
  rows=$(cat "$STRATA_LAKE_ROOT"/bronze/$d/dt=*/_manifest.json | python3 -c 'import json,sys
d=sys.stdin.read().replace("}\n{","}\x00{").split("\x00"); print(sum(json.loads(x)["rows"] for x in d if x.strip()))')
  echo "lake    bronze/$d $rows"
done
psql "$STRATA_PG_DSN" -qAt -F ' ' -c "
  SELECT 'staging ' || t, n FROM (VALUES
    ('customers', (SELECT count(*) FROM staging.customers)), ('products', (SELECT count(*) FROM staging.products)),
    ('orders', (SELECT count(*) FROM staging.orders)), ('order_items', (SELECT count(*) FROM staging.order_items)),
    ('businesses', (SELECT count(*) FROM staging.businesses)), ('states', (SELECT count(*) FROM staging.states))) v(t, n)
  UNION ALL SELECT 'dwh     dim_customer (' || count(*) FILTER (WHERE is_current) || ' current)', count(*) FROM dwh.dim_customer WHERE customer_id >= 0
  UNION ALL SELECT 'dwh     dim_product (' || count(*) FILTER (WHERE is_current) || ' current, ' || count(*) FILTER (WHERE is_deleted) || ' deleted)', count(*) FROM dwh.dim_product WHERE product_id >= 0
  UNION ALL SELECT 'dwh     dim_state', count(*) FROM dwh.dim_state
  UNION ALL SELECT 'dwh     fact_sales', count(*) FROM dwh.fact_sales
  UNION ALL SELECT 'marts   daily_sales', count(*) FROM marts.daily_sales
  UNION ALL SELECT 'marts   orders_current', count(*) FROM marts.orders_current"

echo
echo "== checks =="
psql "$STRATA_PG_DSN" -qAt -F ' ' -c "SELECT status, count(*) FROM quality.check_results GROUP BY 1 ORDER BY 1"

echo
echo "== daily sales $START..$last (through the query service) =="
"$BIN/stratactl" query daily_sales from="$START" to="$last" || failed=1
echo
echo "== top 3 customers by revenue, open orders =="
"$BIN/stratactl" query top_customers status=open limit=3 || failed=1
echo
"$BIN/stratactl" runs --limit "$DAYS"
if [ "$failed" -ne 0 ]; then echo "demo: FAILED"; exit 1; fi
echo "demo: all $DAYS days succeeded"

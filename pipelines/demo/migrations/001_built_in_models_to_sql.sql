-- dim_state, fact_business_daily and business_review_changes were built by the loader's C++ and
-- are SQL models now (models/*.sql): a warehouse built before takes their shape. A new warehouse
-- has none of these tables yet, and nothing changes.
DO $$
BEGIN
  -- dim_state: keyed by its natural key (the surrogate key nothing referenced is gone).
  IF EXISTS (SELECT 1 FROM information_schema.columns
             WHERE table_schema = 'dwh' AND table_name = 'dim_state' AND column_name = 'state_key') THEN
    ALTER TABLE dwh.dim_state DROP COLUMN state_key;
    ALTER TABLE dwh.dim_state DROP CONSTRAINT IF EXISTS dim_state_abbreviation_key;
    ALTER TABLE dwh.dim_state ADD PRIMARY KEY (abbreviation);
  END IF;
  -- fact_business_daily: its day as a date too (the model's time column), after the others.
  IF to_regclass('dwh.fact_business_daily') IS NOT NULL AND NOT EXISTS (
       SELECT 1 FROM information_schema.columns
       WHERE table_schema = 'dwh' AND table_name = 'fact_business_daily' AND column_name = 'ds') THEN
    ALTER TABLE dwh.fact_business_daily ADD COLUMN ds date;
    UPDATE dwh.fact_business_daily SET ds = to_date(date_key::text, 'YYYYMMDD');
  END IF;
END $$;

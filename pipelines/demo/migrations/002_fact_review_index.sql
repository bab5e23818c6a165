-- fact_review became a SQL model (models/fact_review.sql), which names its business_id index
-- after the column: a warehouse built before keeps its one index under that name.
ALTER INDEX IF EXISTS dwh.fact_review_business RENAME TO fact_review_business_id;

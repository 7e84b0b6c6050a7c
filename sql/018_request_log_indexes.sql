-- 018_request_log_indexes: request_logs keeps only the indexes a reader uses.
--
-- The module writes every recommend/similar/popular answer here (one batch
-- per nginx worker per second); each index costs on every row.  In psql
-- (tests/bench/request_log_insert.py, docs/BENCHMARKS.md "Request log"),
-- the five btrees of 005/010 were 6 of the 12.5 CPU us a row costs under
-- COPY.  What reads the table, and what it needs:
--   - cm_usage_report (GET /api/v1/admin/usage), cinematch eval replay,
--     the canary checks: a ts range.  The table is append-only in ts order
--     (rows are logged as answered; a late batch is at most seconds out of
--     order), which is what BRIN is for: a range scan reads the few block
--     ranges whose min/max overlap it, and an insert updates one summary
--     tuple instead of descending a btree.  32 pages per range (~1,300
--     rows): a one-hour window of a quiet month still skips most blocks.
--   - cm_usage_report's api-key lookup (chat requests by request id, API
--     keys only): (api_key_id, ts) WHERE api_key_id IS NOT NULL stays; rows
--     of JWT callers skip it, so it costs only what it serves.
--   - lookup of one request by its id (operators, the integration tests):
--     request_id stays.
--   - (user_id, ts) and (model_name, ts): no query filters on either (the
--     usage report groups a ts range by them, which reads the range anyway);
--     model_name is 'recsys' on every row the module writes.  Dropped.
-- A later reader that needs one back adds it in its own migration.
--
-- On a partitioned table these statements reach every partition (and
-- request_logs_ensure_partition's ATTACH gives new ones the same set).
-- CREATE INDEX takes a SHARE lock on request_logs while it builds: the
-- module's batches wait (its queue drops past cinematch_request_log_queue,
-- counted), nothing else does.

DROP INDEX request_logs_ts_idx;
DROP INDEX request_logs_user_ts_idx;
DROP INDEX request_logs_model_ts_idx;

CREATE INDEX request_logs_ts_brin ON request_logs USING brin (ts)
    WITH (pages_per_range = 32);

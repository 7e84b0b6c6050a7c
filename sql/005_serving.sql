-- 005_serving: request logs (monthly partitions) and batch prediction jobs.

-- Append-only and high volume: partitioned by month so old months are
-- dropped (DROP TABLE request_logs_yYYYYmMM) instead of DELETEd.  No foreign
-- keys: logs outlive users and keys, and FK checks would cost on every
-- insert.  Rows for months without a partition land in request_logs_default;
-- request_logs_ensure_partition() moves them out when it creates the month.
CREATE TABLE request_logs (
    ts                  timestamptz NOT NULL DEFAULT now(),
    request_id          text NOT NULL,
    method              text NOT NULL,
    route               text NOT NULL,
    path                text NOT NULL,
    status              smallint NOT NULL
                        CONSTRAINT request_logs_status_check CHECK (status BETWEEN 100 AND 599),
    duration_ms         real NOT NULL
                        CONSTRAINT request_logs_duration_ms_check CHECK (duration_ms >= 0),
    bytes_in            bigint,
    bytes_out           bigint,
    user_id             bigint,
    api_key_id          bigint,
    model_name          text,
    model_version       integer,
    cache_hit           boolean,
    client_ip           inet,
    user_agent          text,
    error_code          text
) PARTITION BY RANGE (ts);

CREATE TABLE request_logs_default PARTITION OF request_logs DEFAULT;

CREATE INDEX request_logs_ts_idx ON request_logs (ts);
CREATE INDEX request_logs_user_ts_idx ON request_logs (user_id, ts) WHERE user_id IS NOT NULL;
CREATE INDEX request_logs_request_id_idx ON request_logs (request_id);

-- Create the partition for the month containing p_month (idempotent),
-- moving any rows of that month out of the default partition first
-- (attaching would fail while the default holds them).  Call it ahead of
-- time for next month (a daily maintenance timer; this migration covers the
-- month it runs in and the next).  Until then rows land in the default
-- partition: nothing is lost, queries just scan more.  Returns the name.
CREATE FUNCTION request_logs_ensure_partition(p_month date) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    lo   timestamptz := date_trunc('month', p_month::timestamp) AT TIME ZONE 'UTC';
    hi   timestamptz := (date_trunc('month', p_month::timestamp) + interval '1 month') AT TIME ZONE 'UTC';
    part text := format('request_logs_y%sm%s', to_char(p_month, 'YYYY'), to_char(p_month, 'MM'));
BEGIN
    IF to_regclass(part) IS NOT NULL THEN
        RETURN part;
    END IF;
    -- Serialise concurrent callers on the parent table.
    LOCK TABLE request_logs IN SHARE UPDATE EXCLUSIVE MODE;
    IF to_regclass(part) IS NOT NULL THEN
        RETURN part;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE request_logs INCLUDING DEFAULTS INCLUDING CONSTRAINTS)', part);
    EXECUTE format('WITH moved AS (DELETE FROM request_logs_default WHERE ts >= $1 AND ts < $2 RETURNING *)'
                   ' INSERT INTO %I SELECT * FROM moved', part) USING lo, hi;
    EXECUTE format('ALTER TABLE request_logs ATTACH PARTITION %I FOR VALUES FROM (%L) TO (%L)',
                   part, lo, hi);
    RETURN part;
END;
$$;

SELECT request_logs_ensure_partition(current_date);
SELECT request_logs_ensure_partition((current_date + interval '1 month')::date);


-- Batch prediction jobs.  The job row is the record; the work items travel
-- on a Redis stream (stream_id) and results go to result_path.
CREATE TABLE batch_jobs (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id             bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    api_key_id          bigint REFERENCES api_keys (id) ON DELETE SET NULL,
    kind                text NOT NULL
                        CONSTRAINT batch_jobs_kind_check CHECK (kind IN ('recommend', 'similar', 'generate')),
    status              text NOT NULL DEFAULT 'queued'
                        CONSTRAINT batch_jobs_status_check
                        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    model_version_id    bigint REFERENCES model_versions (id) ON DELETE SET NULL,
    input               jsonb NOT NULL,
    items_total         integer NOT NULL DEFAULT 0
                        CONSTRAINT batch_jobs_items_total_check CHECK (items_total >= 0),
    items_done          integer NOT NULL DEFAULT 0,
    items_failed        integer NOT NULL DEFAULT 0,
    stream_id           text,
    result_path         text,
    error               text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz,
    CONSTRAINT batch_jobs_items_check
        CHECK (items_done >= 0 AND items_failed >= 0 AND items_done + items_failed <= items_total),
    CONSTRAINT batch_jobs_finished_check
        CHECK ((status IN ('queued', 'running')) = (finished_at IS NULL))
);
CREATE INDEX batch_jobs_user_created_idx ON batch_jobs (user_id, created_at DESC);
CREATE INDEX batch_jobs_active_idx ON batch_jobs (created_at) WHERE status IN ('queued', 'running');

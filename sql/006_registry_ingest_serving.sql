-- 006_registry_ingest_serving: what the auth, serving, chat and MLOps issues
-- need beyond 001-005 (read against issues 4, 5, 7 and 8).  001-005 were
-- already merged, so this fixes forward instead of editing them.

-- ---- catalog: title search with trigrams ("toy sto", typos) --------------------
-- pg_trgm ships with PostgreSQL 15 and is a trusted extension: the database
-- owner may create it.
CREATE EXTENSION IF NOT EXISTS pg_trgm;
DROP INDEX movies_title_lower_idx;
-- WHERE lower(title) LIKE '%' || lower($1) || '%'  or  lower(title) % lower($1)
CREATE INDEX movies_title_trgm_idx ON movies USING gin (lower(title) gin_trgm_ops);
CREATE INDEX movies_year_idx ON movies (year);


-- ---- ingestion: what was ingested and how (`cinematch ingest ratings|movies|dialogs`)
ALTER TABLE ingestion_batches
    ADD COLUMN kind text NOT NULL DEFAULT 'ratings'
        CONSTRAINT ingestion_batches_kind_check CHECK (kind IN ('ratings', 'movies', 'dialogs')),
    ADD COLUMN source text NOT NULL DEFAULT 'cli'
        CONSTRAINT ingestion_batches_source_check CHECK (source IN ('cli', 'watch', 'initial', 'api')),
    DROP CONSTRAINT ingestion_batches_format_check,
    ADD CONSTRAINT ingestion_batches_format_check
        CHECK (format IN ('ml-csv', 'ml-100k', 'ml-1m', 'synth', 'cornell', 'dialog-pairs'));

-- The dialogue corpus the dialog LM trains on (Cornell Movie-Dialogs or plain
-- dialogue files): one row per dialogue, its turns in order.
CREATE TABLE dialogs (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    batch_id        bigint NOT NULL REFERENCES ingestion_batches (id) ON DELETE CASCADE,
    source_key      text NOT NULL,          -- e.g. Cornell "L194 L195 L196"
    movie_title     text,
    data_split      text NOT NULL DEFAULT 'train'
                    CONSTRAINT dialogs_data_split_check
                    CHECK (data_split IN ('train', 'validation', 'test')),
    CONSTRAINT dialogs_batch_source_key UNIQUE (batch_id, source_key)
);
CREATE INDEX dialogs_split_idx ON dialogs (data_split);

CREATE TABLE dialog_turns (
    dialog_id       bigint NOT NULL REFERENCES dialogs (id) ON DELETE CASCADE,
    turn            integer NOT NULL CONSTRAINT dialog_turns_turn_check CHECK (turn >= 0),
    speaker         text,
    text            text NOT NULL
                    CONSTRAINT dialog_turns_text_check CHECK (length(text) <= 10000),
    PRIMARY KEY (dialog_id, turn)
);


-- ---- drift: alert with reasons, as issue 8 words it --------------------------------
ALTER TABLE drift_reports RENAME COLUMN drift_detected TO alert;
ALTER TABLE drift_reports RENAME COLUMN alerted_at TO notified_at;
ALTER INDEX drift_reports_unalerted_idx RENAME TO drift_reports_unnotified_idx;
ALTER TABLE drift_reports
    ADD COLUMN popularity_shift double precision,
    ADD COLUMN user_activity_shift double precision,
    ADD COLUMN thresholds jsonb NOT NULL DEFAULT '{}',
    ADD COLUMN reasons text[] NOT NULL DEFAULT '{}',
    DROP CONSTRAINT drift_reports_ks_method_check;
-- method names as scipy.stats.ks_2samp and `cinematch drift ks --method` spell them
UPDATE drift_reports SET ks_method = 'asymp' WHERE ks_method = 'asymptotic';
UPDATE drift_reports SET reasons = '{unrecorded}' WHERE alert AND cardinality(reasons) = 0;
ALTER TABLE drift_reports
    ADD CONSTRAINT drift_reports_ks_method_check CHECK (ks_method IN ('exact', 'asymp')),
    ADD CONSTRAINT drift_reports_reasons_check CHECK (NOT alert OR cardinality(reasons) > 0);


-- ---- training: the promotion gate's decision and why ---------------------------------
ALTER TABLE training_runs
    ADD COLUMN gate_decision text CONSTRAINT training_runs_gate_decision_check
        CHECK (gate_decision IN ('promoted', 'rejected', 'skipped')),
    ADD COLUMN gate_reason text;


-- ---- registry: a model (name, task, owner) above its versions --------------------------
-- System models (recsys, dialog) have no owner; a user's private model is
-- visible to its owner and admins only ("admin, or owner for private models").
CREATE TABLE models (
    name                model_name PRIMARY KEY,
    task                text NOT NULL
                        CONSTRAINT models_task_check CHECK (task IN ('recsys', 'dialog')),
    owner_id            bigint REFERENCES users (id) ON DELETE CASCADE,
    private             boolean NOT NULL DEFAULT false,
    description         text CONSTRAINT models_description_check CHECK (length(description) <= 2000),
    created_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT models_private_check CHECK (NOT private OR owner_id IS NOT NULL)
);
CREATE INDEX models_owner_idx ON models (owner_id) WHERE owner_id IS NOT NULL;

INSERT INTO models (name, task, description) VALUES
    ('recsys', 'recsys', 'movie recommendations (ALS), served by cinematch infer'),
    ('dialog', 'dialog', 'movie-dialogue language model, served by cinematch infer');
-- versions registered before this migration keep their model
INSERT INTO models (name, task)
    SELECT DISTINCT ON (model_name) model_name, task FROM model_versions
    ORDER BY model_name, created_at
    ON CONFLICT (name) DO NOTHING;

ALTER TABLE model_versions
    ADD CONSTRAINT model_versions_model_name_fkey
        FOREIGN KEY (model_name) REFERENCES models (name) ON DELETE RESTRICT,
    DROP COLUMN task;


-- ---- serving: what replay evaluation and canaries read from the request log -------------
ALTER TABLE request_logs
    ADD COLUMN is_fallback boolean,
    ADD COLUMN fallback_reason text,
    ADD COLUMN detail jsonb;            -- e.g. returned movie ids and scores

-- Batch jobs name their model (POST /api/v1/predict/{name}/batch).  Jobs made
-- before this have none: the check holds for new rows only (NOT VALID).
ALTER TABLE batch_jobs
    ADD COLUMN model_name model_name,
    ALTER COLUMN kind SET DEFAULT 'predict',
    DROP CONSTRAINT batch_jobs_kind_check,
    ADD CONSTRAINT batch_jobs_kind_check
        CHECK (kind IN ('predict', 'recommend', 'similar', 'generate'));
UPDATE batch_jobs j SET model_name = v.model_name
    FROM model_versions v WHERE v.id = j.model_version_id;
ALTER TABLE batch_jobs
    ADD CONSTRAINT batch_jobs_model_name_check CHECK (model_name IS NOT NULL) NOT VALID;

-- One row per job item, written with INSERT ... ON CONFLICT DO NOTHING, so a
-- redelivered stream entry (at-least-once) never duplicates a result.
CREATE TABLE batch_job_results (
    job_id              uuid NOT NULL REFERENCES batch_jobs (id) ON DELETE CASCADE,
    item_index          integer NOT NULL
                        CONSTRAINT batch_job_results_item_index_check CHECK (item_index >= 0),
    ok                  boolean NOT NULL,
    result              jsonb,
    error               text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, item_index),
    CONSTRAINT batch_job_results_outcome_check CHECK (ok = (error IS NULL))
);

-- 003_mlops: drift reports, training runs, the model registry.

-- Model names as used in the registry, on disk and in the IPC header
-- (cm_ipc_model_t.name is 32 bytes with the NUL).
CREATE DOMAIN model_name AS text
    CONSTRAINT model_name_check CHECK (VALUE ~ '^[a-z][a-z0-9_-]{0,30}$');

-- One row per drift check: baseline (training ratings) vs current (buffer).
CREATE TABLE drift_reports (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at          timestamptz NOT NULL DEFAULT now(),
    batch_id            bigint REFERENCES ingestion_batches (id) ON DELETE SET NULL,
    baseline_rows       bigint NOT NULL CONSTRAINT drift_reports_baseline_rows_check CHECK (baseline_rows >= 0),
    current_rows        bigint NOT NULL CONSTRAINT drift_reports_current_rows_check CHECK (current_rows >= 0),
    ks_statistic        double precision
                        CONSTRAINT drift_reports_ks_statistic_check CHECK (ks_statistic BETWEEN 0 AND 1),
    ks_pvalue           double precision
                        CONSTRAINT drift_reports_ks_pvalue_check CHECK (ks_pvalue BETWEEN 0 AND 1),
    ks_method           text CONSTRAINT drift_reports_ks_method_check CHECK (ks_method IN ('exact', 'asymptotic')),
    psi                 double precision CONSTRAINT drift_reports_psi_check CHECK (psi >= 0),
    psi_band            text CONSTRAINT drift_reports_psi_band_check
                        CHECK (psi_band IN ('stable', 'moderate', 'significant')),
    mean_baseline       double precision,
    mean_current        double precision,
    std_baseline        double precision,
    std_current         double precision,
    new_item_share      double precision
                        CONSTRAINT drift_reports_new_item_share_check CHECK (new_item_share BETWEEN 0 AND 1),
    details             jsonb NOT NULL DEFAULT '{}',
    drift_detected      boolean NOT NULL,
    alerted_at          timestamptz
);
CREATE INDEX drift_reports_created_idx ON drift_reports (created_at DESC);
CREATE INDEX drift_reports_unalerted_idx ON drift_reports (created_at)
    WHERE drift_detected AND alerted_at IS NULL;


-- Every training attempt, successful or not, with what it ran on.
CREATE TABLE training_runs (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_name          model_name NOT NULL,
    triggered_by        text NOT NULL DEFAULT 'manual'
                        CONSTRAINT training_runs_triggered_by_check
                        CHECK (triggered_by IN ('manual', 'schedule', 'drift', 'api')),
    status              text NOT NULL DEFAULT 'running'
                        CONSTRAINT training_runs_status_check
                        CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'canceled')),
    params              jsonb NOT NULL DEFAULT '{}',
    metrics             jsonb NOT NULL DEFAULT '{}',
    train_rows          bigint CONSTRAINT training_runs_train_rows_check CHECK (train_rows >= 0),
    test_rows           bigint CONSTRAINT training_runs_test_rows_check CHECK (test_rows >= 0),
    data_bytes          bigint CONSTRAINT training_runs_data_bytes_check CHECK (data_bytes >= 0),
    duration_ms         bigint CONSTRAINT training_runs_duration_ms_check CHECK (duration_ms >= 0),
    code_version        text NOT NULL,
    host                text,
    drift_report_id     bigint REFERENCES drift_reports (id) ON DELETE SET NULL,
    error               text,
    started_at          timestamptz NOT NULL DEFAULT now(),
    finished_at         timestamptz,
    CONSTRAINT training_runs_finished_check
        CHECK ((status IN ('queued', 'running')) = (finished_at IS NULL)),
    CONSTRAINT training_runs_error_check CHECK (status <> 'failed' OR error IS NOT NULL)
);
CREATE INDEX training_runs_model_started_idx ON training_runs (model_name, started_at DESC);
CREATE INDEX training_runs_active_idx ON training_runs (model_name)
    WHERE status IN ('queued', 'running');


-- The registry.  Artifacts live in the model store
-- (var/lib/cinematch/models/<model>/<version>/); the row is the index and
-- the stage.  At most one production version per model, enforced here so a
-- racing promotion fails instead of serving two.
CREATE TABLE model_versions (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_name          model_name NOT NULL,
    version             integer NOT NULL CONSTRAINT model_versions_version_check CHECK (version > 0),
    task                text NOT NULL
                        CONSTRAINT model_versions_task_check CHECK (task IN ('recsys', 'dialog')),
    stage               text NOT NULL DEFAULT 'none'
                        CONSTRAINT model_versions_stage_check
                        CHECK (stage IN ('none', 'staging', 'production', 'archived')),
    artifact_path       text NOT NULL,
    artifact_sha256     text NOT NULL
                        CONSTRAINT model_versions_artifact_sha256_check
                        CHECK (artifact_sha256 ~ '^[0-9a-f]{64}$'),
    artifact_bytes      bigint CONSTRAINT model_versions_artifact_bytes_check CHECK (artifact_bytes >= 0),
    metrics             jsonb NOT NULL DEFAULT '{}',
    training_run_id     bigint REFERENCES training_runs (id) ON DELETE SET NULL,
    description         text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    stage_changed_at    timestamptz NOT NULL DEFAULT now(),
    stage_changed_by    bigint REFERENCES users (id) ON DELETE SET NULL,
    CONSTRAINT model_versions_name_version_key UNIQUE (model_name, version)
);
CREATE UNIQUE INDEX model_versions_one_production_key ON model_versions (model_name)
    WHERE stage = 'production';
CREATE INDEX model_versions_stage_idx ON model_versions (stage, model_name);

-- The promotion history: one row per stage change, written by a trigger so
-- no code path (API, `cinematch train --promote`, psql) can skip it.
CREATE TABLE model_stage_events (
    id                  bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    model_version_id    bigint NOT NULL REFERENCES model_versions (id) ON DELETE CASCADE,
    model_name          model_name NOT NULL,
    version             integer NOT NULL,
    from_stage          text,              -- NULL when the version was registered
    to_stage            text NOT NULL,
    changed_by          bigint REFERENCES users (id) ON DELETE SET NULL,
    changed_at          timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX model_stage_events_model_idx ON model_stage_events (model_name, changed_at DESC);

CREATE FUNCTION cm_model_stage_touch() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.stage IS DISTINCT FROM OLD.stage THEN
        NEW.stage_changed_at := now();
    END IF;
    RETURN NEW;
END;
$$;

CREATE FUNCTION cm_model_stage_log() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' OR NEW.stage IS DISTINCT FROM OLD.stage THEN
        INSERT INTO model_stage_events (model_version_id, model_name, version, from_stage,
                                        to_stage, changed_by)
        VALUES (NEW.id, NEW.model_name, NEW.version,
                CASE WHEN TG_OP = 'UPDATE' THEN OLD.stage END, NEW.stage,
                NEW.stage_changed_by);
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER model_versions_stage_touch BEFORE UPDATE OF stage ON model_versions
    FOR EACH ROW EXECUTE FUNCTION cm_model_stage_touch();
CREATE TRIGGER model_versions_stage_log AFTER INSERT OR UPDATE OF stage ON model_versions
    FOR EACH ROW EXECUTE FUNCTION cm_model_stage_log();

-- 010_admin_registry: the registry's stage transitions as functions, so
-- `cinematch model promote|rollback` (workers/mlops_util.c) and
-- POST /api/v1/models/{name}/versions/{v}/stage (the nginx module) run the
-- same SQL instead of two copies that drift apart; and the indexes the admin
-- views (GET /api/v1/admin/...) page and aggregate on.

-- Move name:version to p_stage (staging | production | archived) for p_by
-- (users.id, NULL for the CLI and the daemons).  Rules:
--   * same stage again: nothing changes (changed = false), no NOTIFY;
--   * production is left only by promoting another version (or a rollback,
--     which is a promotion): a model that has a production version keeps
--     one, so `cinematch infer` never finds none to serve;
--   * promotion archives the old production version, and sends
--     NOTIFY cinematch_models '<name>:<version>' (infer reloads on it); the
--     notification is delivered at commit, so never for a rolled-back change.
-- Serialised per model by the same advisory lock the training gate takes.
-- Errors: 22023 bad stage, P0002 unknown version, 55000 refused transition.
-- The caller checks the artifact (sha256 against the store) before calling
-- when it can reach the model store; the daemons check it again at load.
CREATE FUNCTION cm_model_set_stage(p_name text, p_version integer, p_stage text,
                                   p_by bigint DEFAULT NULL)
RETURNS TABLE (model_name text, version integer, stage text, previous_stage text,
               archived_version integer, changed boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    cur      text;
    old_prod integer;
BEGIN
    IF p_stage IS NULL OR p_stage NOT IN ('staging', 'production', 'archived') THEN
        RAISE EXCEPTION 'stage must be staging, production or archived'
            USING ERRCODE = '22023';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('cinematch.registry.' || p_name));
    SELECT v.stage INTO cur FROM model_versions v
        WHERE v.model_name = p_name AND v.version = p_version FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION '% version % is not in the registry', p_name, p_version
            USING ERRCODE = 'P0002';
    END IF;
    model_name := p_name;
    version := p_version;
    stage := p_stage;
    previous_stage := cur;
    changed := cur <> p_stage;
    IF NOT changed THEN
        RETURN NEXT;
        RETURN;
    END IF;
    IF cur = 'production' THEN
        RAISE EXCEPTION '% version % is production: promote another version or roll back',
                        p_name, p_version
            USING ERRCODE = '55000';
    END IF;
    IF p_stage = 'production' THEN
        UPDATE model_versions v SET stage = 'archived', stage_changed_by = p_by
            WHERE v.model_name = p_name AND v.stage = 'production'
            RETURNING v.version INTO old_prod;
        archived_version := old_prod;
    END IF;
    UPDATE model_versions v SET stage = p_stage, stage_changed_by = p_by
        WHERE v.model_name = p_name AND v.version = p_version;
    IF p_stage = 'production' THEN
        PERFORM pg_notify('cinematch_models', p_name || ':' || p_version);
    END IF;
    RETURN NEXT;
END;
$$;

-- The version a rollback promotes: the latest one that was production
-- before and is not now (model_stage_events is written by a trigger, so
-- every path is in it); rolling back twice flips back.  NULL: none.
CREATE FUNCTION cm_model_rollback_version(p_name text) RETURNS integer
LANGUAGE sql STABLE AS $$
    SELECT e.version FROM model_stage_events e
        JOIN model_versions m ON m.id = e.model_version_id
        WHERE e.model_name = p_name AND e.to_stage = 'production'
          AND m.stage <> 'production'
        ORDER BY e.changed_at DESC, e.id DESC
        LIMIT 1
$$;

-- Admin views page newest first by id and filter by model, stage or kind.
CREATE INDEX training_runs_id_model_idx ON training_runs (model_name, id DESC);
CREATE INDEX request_logs_api_key_ts_idx ON request_logs (api_key_id, ts)
    WHERE api_key_id IS NOT NULL;
CREATE INDEX request_logs_model_ts_idx ON request_logs (model_name, ts)
    WHERE model_name IS NOT NULL;
CREATE INDEX messages_created_idx ON messages (created_at) WHERE role = 'assistant';

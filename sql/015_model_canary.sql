-- 015_model_canary: a canary version served beside production (issue 8
-- "Canary"), and what the API's upload and promotion need of the registry.
--
-- A canary is a version in stage 'canary' with a traffic share in [0, 1]
-- (canary_share, four decimals: basis points, as the daemons and nginx
-- carry it).  `cinematch infer` loads it beside the production version and
-- answers the users whose cinematch/canary.h bucket (a hash of the user id
-- and the model name) is below the share; everyone else, and anonymous
-- requests, get production.  At most one canary per model.
--
--   cm_model_set_canary(name, version, share, by)  staging|canary -> canary
--   cm_model_stop_canary(name, by)                 canary -> staging
--   cm_model_set_stage(name, version, 'production') promotes it (sql/010)
--
-- Leaving the stage clears the share, and every change that moves users
-- between versions (a canary set, its share changed, stopped, promoted,
-- archived) sends NOTIFY cinematch_models '<name>:<version>:canary' at
-- commit, so the daemons reload: a trigger, so no path (CLI, API, psql)
-- can change a canary without the daemons hearing of it.

ALTER TABLE model_versions
    ADD COLUMN canary_share numeric(5, 4),
    DROP CONSTRAINT model_versions_stage_check,
    ADD CONSTRAINT model_versions_stage_check
        CHECK (stage IN ('none', 'staging', 'canary', 'production', 'archived')),
    ADD CONSTRAINT model_versions_canary_share_check
        CHECK ((stage = 'canary') = (canary_share IS NOT NULL)
               AND canary_share BETWEEN 0 AND 1);

CREATE UNIQUE INDEX model_versions_one_canary_key ON model_versions (model_name)
    WHERE stage = 'canary';


CREATE FUNCTION cm_model_canary_touch() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.stage = 'canary' AND NEW.stage <> 'canary' THEN
        NEW.canary_share := NULL;
    END IF;
    RETURN NEW;
END;
$$;

CREATE TRIGGER model_versions_canary_touch BEFORE UPDATE ON model_versions
    FOR EACH ROW EXECUTE FUNCTION cm_model_canary_touch();

CREATE FUNCTION cm_model_canary_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF (OLD.stage = 'canary' OR NEW.stage = 'canary')
       AND (NEW.stage IS DISTINCT FROM OLD.stage
            OR NEW.canary_share IS DISTINCT FROM OLD.canary_share) THEN
        PERFORM pg_notify('cinematch_models',
                          NEW.model_name || ':' || NEW.version || ':canary');
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER model_versions_canary_notify AFTER UPDATE ON model_versions
    FOR EACH ROW EXECUTE FUNCTION cm_model_canary_notify();


-- Make name:version the canary with p_share of the users, for p_by
-- (users.id; NULL for the CLI).  Only a staging version (or the canary
-- itself, to change its share) may be one; another canary of the model
-- goes back to staging (replaced_version).  The same canary with the same
-- share again: changed = false.  Serialised per model by the registry's
-- advisory lock (sql/010).  Errors: 22023 bad share, P0002 unknown
-- version, 55000 refused (not staging).  The caller checks the artifact
-- first when it can reach the model store; the daemons check it at load.
CREATE FUNCTION cm_model_set_canary(p_name text, p_version integer, p_share numeric,
                                    p_by bigint DEFAULT NULL)
RETURNS TABLE (model_name text, version integer, stage text, canary_share numeric,
               previous_stage text, replaced_version integer, changed boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    cur       text;
    cur_share numeric;
    old_can   integer;
BEGIN
    IF p_share IS NULL OR p_share < 0 OR p_share > 1
       OR p_share <> round(p_share, 4) THEN
        RAISE EXCEPTION 'share must be a number from 0 to 1 (at most 4 decimals)'
            USING ERRCODE = '22023';
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('cinematch.registry.' || p_name));
    SELECT v.stage, v.canary_share INTO cur, cur_share FROM model_versions v
        WHERE v.model_name = p_name AND v.version = p_version FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION '% version % is not in the registry', p_name, p_version
            USING ERRCODE = 'P0002';
    END IF;
    IF cur NOT IN ('staging', 'canary') THEN
        RAISE EXCEPTION '% version % is %: only a staging version can be a canary',
                        p_name, p_version, cur
            USING ERRCODE = '55000';
    END IF;
    model_name := p_name;
    version := p_version;
    stage := 'canary';
    canary_share := p_share;
    previous_stage := cur;
    changed := cur <> 'canary' OR cur_share <> p_share;
    IF cur <> 'canary' THEN
        UPDATE model_versions v SET stage = 'staging', stage_changed_by = p_by
            WHERE v.model_name = p_name AND v.stage = 'canary'
            RETURNING v.version INTO old_can;
        replaced_version := old_can;
    END IF;
    IF changed THEN
        UPDATE model_versions v
            SET stage = 'canary', canary_share = p_share, stage_changed_by = p_by
            WHERE v.model_name = p_name AND v.version = p_version;
    END IF;
    RETURN NEXT;
END;
$$;

-- Stop the canary of p_name: back to staging, production serves everyone.
-- No canary: version NULL, changed = false.
CREATE FUNCTION cm_model_stop_canary(p_name text, p_by bigint DEFAULT NULL)
RETURNS TABLE (model_name text, version integer, changed boolean)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_stopped integer;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('cinematch.registry.' || p_name));
    UPDATE model_versions v SET stage = 'staging', stage_changed_by = p_by
        WHERE v.model_name = p_name AND v.stage = 'canary'
        RETURNING v.version INTO v_stopped;
    model_name := p_name;
    version := v_stopped;
    changed := v_stopped IS NOT NULL;
    RETURN NEXT;
END;
$$;


-- POST /api/v1/models/{name}/versions (upload): register an artifact the
-- module has validated, hashed and copied into the model store, in stage
-- 'staging', with the next version.  p_store is the store root, p_file the
-- artifact's file name; the row names <store>/<name>/<version>/<file>,
-- where the module moves the copy once this has committed (and deletes
-- the row again if it cannot).  A new model name becomes a recsys model;
-- a model of another task is refused (22023: uploads are recsys
-- artifacts; the dialog model is a directory).  Serialised per model by
-- the registry's advisory lock, as `cinematch model register` is.
CREATE FUNCTION cm_model_register_upload(p_name text, p_sha256 text, p_bytes bigint,
                                         p_store text, p_file text,
                                         p_by bigint DEFAULT NULL)
RETURNS TABLE (version integer, artifact_path text, doc text)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    t   text;
    v   integer;
    p   text;
BEGIN
    PERFORM p_name::model_name;     -- the domain's check, as a 23514
    PERFORM pg_advisory_xact_lock(hashtext('cinematch.registry.' || p_name));
    SELECT m.task INTO t FROM models m WHERE m.name = p_name;
    IF NOT FOUND THEN
        INSERT INTO models (name, task) VALUES (p_name, 'recsys');
    ELSIF t <> 'recsys' THEN
        RAISE EXCEPTION 'model % is a % model: uploads take recsys artifacts', p_name, t
            USING ERRCODE = '22023';
    END IF;
    SELECT coalesce(max(x.version), 0) + 1 INTO v FROM model_versions x
        WHERE x.model_name = p_name;
    p := p_store || '/' || p_name || '/' || v || '/' || p_file;
    INSERT INTO model_versions (model_name, version, stage, artifact_path,
                                artifact_sha256, artifact_bytes, description,
                                stage_changed_by)
        VALUES (p_name, v, 'staging', p, p_sha256, p_bytes, 'uploaded through the API', p_by);
    version := v;
    artifact_path := p;
    SELECT json_build_object('model_name', x.model_name, 'version', x.version,
               'stage', x.stage, 'canary_share', x.canary_share::float8,
               'metrics', x.metrics,
               'artifact_sha256', x.artifact_sha256, 'artifact_bytes', x.artifact_bytes,
               'training_run_id', x.training_run_id, 'description', x.description,
               'created_at', to_char(x.created_at AT TIME ZONE 'UTC',
                                     'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
               'stage_changed_at', to_char(x.stage_changed_at AT TIME ZONE 'UTC',
                                           'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'))::text
        INTO doc FROM model_versions x WHERE x.model_name = p_name AND x.version = v;
    RETURN NEXT;
END;
$$;

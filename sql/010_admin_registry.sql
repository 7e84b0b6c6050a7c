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

-- GET /api/v1/admin/usage as one document: requests and HTTP errors from
-- request_logs; generations and tokens from assistant messages (their
-- conversation's user, the model of the version that wrote them, the API key
-- of the logged request with the same request id), summed per group and
-- bucket; the p_limit busiest groups are listed, totals count all of them.
-- p_group_by: user | api_key | model; p_interval: hour | day | NULL (one
-- bucket).  The module validates every argument before calling.
--
-- Why a function: the statement is planned for the values at hand (EXECUTE
-- ... USING is a one-shot plan, so the CASEs on p_group_by and p_interval
-- fold away, the scan groups by the typed column itself and the api-key
-- join disappears unless asked for), and with jit off: over a million logged
-- requests its cost estimate switches on LLVM inlining and optimisation,
-- which took 20-30 s on a loaded 2-core machine against ~2 s without.
-- date_bin() from the epoch is pure arithmetic where date_trunc(.., 'UTC')
-- converts time zones row by row.
CREATE FUNCTION cm_usage_report(p_from timestamptz, p_to timestamptz, p_group_by text,
                                p_interval text, p_limit integer) RETURNS text
LANGUAGE plpgsql STABLE SET jit = off AS $fn$
DECLARE
    doc text;
BEGIN
    EXECUTE $q$
    WITH req AS (
        SELECT CASE $3 WHEN 'user' THEN r.user_id WHEN 'api_key' THEN r.api_key_id END AS kid,
               CASE $3 WHEN 'model' THEN r.model_name END AS kname,
               CASE $4 WHEN 'hour' THEN date_bin('1 hour', r.ts, timestamptz 'epoch')
                       WHEN 'day' THEN date_bin('1 day', r.ts, timestamptz 'epoch') END AS b,
               count(*) AS requests,
               count(*) FILTER (WHERE r.status >= 400) AS errors,
               count(*) FILTER (WHERE r.status >= 500) AS server_errors,
               0::bigint AS generations, 0::bigint AS generation_errors,
               0::bigint AS prompt_tokens, 0::bigint AS completion_tokens
        FROM request_logs r
        WHERE r.ts >= $1 AND r.ts < $2
        GROUP BY 1, 2, 3),
    keys AS (       -- the API key of a chat request, by request id
        SELECT DISTINCT ON (l.request_id) l.request_id, l.api_key_id
        FROM request_logs l
        WHERE l.ts >= $1 - interval '1 hour' AND l.ts < $2 + interval '1 hour'
          AND l.api_key_id IS NOT NULL
        ORDER BY l.request_id),
    gen AS (
        SELECT CASE $3 WHEN 'user' THEN c.user_id WHEN 'api_key' THEN k.api_key_id END,
               CASE $3 WHEN 'model' THEN coalesce(v.model_name, c.model_name)::text END,
               CASE $4 WHEN 'hour' THEN date_bin('1 hour', m.created_at, timestamptz 'epoch')
                       WHEN 'day' THEN date_bin('1 day', m.created_at, timestamptz 'epoch') END,
               0::bigint, 0::bigint, 0::bigint,
               count(*), count(*) FILTER (WHERE m.status = 'error'),
               coalesce(sum(m.prompt_tokens), 0)::bigint,
               coalesce(sum(m.completion_tokens), 0)::bigint
        FROM messages m
        JOIN conversations c ON c.id = m.conversation_id
        LEFT JOIN model_versions v ON v.id = m.model_version_id
        LEFT JOIN keys k ON k.request_id = m.request_id
        WHERE m.role = 'assistant' AND m.created_at >= $1 AND m.created_at < $2
        GROUP BY 1, 2, 3),
    g AS (
        SELECT kid, kname, coalesce(kid::text, kname) AS k, b,
               sum(requests)::bigint AS requests, sum(errors)::bigint AS errors,
               sum(server_errors)::bigint AS server_errors,
               sum(generations)::bigint AS generations,
               sum(generation_errors)::bigint AS generation_errors,
               sum(prompt_tokens)::bigint AS prompt_tokens,
               sum(completion_tokens)::bigint AS completion_tokens
        FROM (SELECT * FROM req UNION ALL SELECT * FROM gen) u
        GROUP BY kid, kname, b),
    top AS (
        SELECT k FROM g GROUP BY k
        ORDER BY sum(requests) DESC, sum(prompt_tokens + completion_tokens) DESC, k NULLS LAST
        LIMIT $5)
    SELECT json_build_object(
        'from', to_char($1 AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'to', to_char($2 AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
        'group_by', $3, 'interval', $4, 'limit', $5,
        'groups', (SELECT count(DISTINCT coalesce(k, '')) FROM g),
        'rows', coalesce((SELECT json_agg(json_build_object(
                'key', g.k,
                'label', CASE $3
                    WHEN 'user' THEN (SELECT u.email FROM users u WHERE u.id = g.kid)
                    WHEN 'api_key' THEN (SELECT a.name || ' (' || a.prefix || ')'
                                         FROM api_keys a WHERE a.id = g.kid)
                    ELSE g.kname END,
                'bucket', to_char(g.b AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'),
                'requests', g.requests, 'errors', g.errors,
                'server_errors', g.server_errors,
                'generations', g.generations, 'generation_errors', g.generation_errors,
                'prompt_tokens', g.prompt_tokens, 'completion_tokens', g.completion_tokens,
                'tokens', g.prompt_tokens + g.completion_tokens)
                ORDER BY g.b NULLS FIRST, g.requests DESC, g.k NULLS LAST)
            FROM g WHERE EXISTS (SELECT 1 FROM top WHERE top.k IS NOT DISTINCT FROM g.k)),
            '[]'::json),
        'totals', (SELECT json_build_object(
                'requests', coalesce(sum(requests), 0),
                'errors', coalesce(sum(errors), 0),
                'server_errors', coalesce(sum(server_errors), 0),
                'generations', coalesce(sum(generations), 0),
                'generation_errors', coalesce(sum(generation_errors), 0),
                'prompt_tokens', coalesce(sum(prompt_tokens), 0),
                'completion_tokens', coalesce(sum(completion_tokens), 0),
                'tokens', coalesce(sum(prompt_tokens + completion_tokens), 0))
            FROM g))::text
    $q$ INTO doc USING p_from, p_to, p_group_by, p_interval, p_limit;
    RETURN doc;
END;
$fn$;

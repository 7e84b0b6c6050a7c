
/*
 * ngx_http_cinematch_api_admin.c: the model registry and the operations
 * views (API.md "Models, prediction, jobs" and "Operations"), straight
 * from PostgreSQL through the module's non-blocking pool.
 *
 *   GET  /api/v1/models                       any caller (keys: models:read)
 *   GET  /api/v1/models/{name}/versions       any caller (keys: models:read)
 *   POST /api/v1/models/{name}/versions/{v}/stage  {stage}         admin
 *   GET  /api/v1/admin/drift?limit=&cursor=&alert=                 admin
 *   GET  /api/v1/admin/runs?limit=&cursor=&model=&status=          admin
 *   GET  /api/v1/admin/ingestions?limit=&cursor=&kind=&status=     admin
 *   GET  /api/v1/admin/ingestions/{id}?limit=&cursor=   one batch + rejects
 *   GET  /api/v1/admin/usage?from=&to=&group_by=&interval=&limit=  admin
 *
 * As in the catalogue endpoints, PostgreSQL builds the JSON document and
 * the module validates every parameter (unknown ones included: a typo is a
 * 422, not a silently ignored filter) and passes one text value through.
 * Values travel as query parameters, never inside the SQL text.
 *
 * Lists are newest first and paged by an opaque cursor (the last id of the
 * page, as text): the next page is the same request with cursor=next_cursor;
 * next_cursor is null on the last page.  Keyset paging, not OFFSET, so a
 * page costs the same however deep it is and rows that arrive meanwhile do
 * not shift the pages.
 *
 * A stage change is sql/010's cm_model_set_stage(), the function that
 * `cinematch model promote|rollback` calls too: the same transition rules,
 * the same archiving of the old production version and the same NOTIFY
 * cinematch_models.  Its SQLSTATEs map to 404 (P0002), 409 (55000) and
 * 422 (22023).  Before a promotion the artifact is hashed again, as the
 * CLI does (ngx_http_cinematch_artifact_check() in
 * ngx_http_cinematch_api_models.c, on a thread pool): a changed or
 * unreadable artifact is a 409 and the registry is not touched.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_cinematch.h"
#include "cinematch/timefmt.h"
#include "cinematch/validate.h"


#define NGX_HTTP_CINEMATCH_ADMIN_LIMIT      50
#define NGX_HTTP_CINEMATCH_ADMIN_LIMIT_MAX  200
#define NGX_HTTP_CINEMATCH_USAGE_LIMIT      100
#define NGX_HTTP_CINEMATCH_USAGE_LIMIT_MAX  1000
#define NGX_HTTP_CINEMATCH_USAGE_DEFAULT    (7 * 86400LL * 1000000)
#define NGX_HTTP_CINEMATCH_USAGE_MAX        (366 * 86400LL * 1000000)
#define NGX_HTTP_CINEMATCH_USAGE_HOURLY_MAX (31 * 86400LL * 1000000)
#define NGX_HTTP_CINEMATCH_MAX_VALUES       6

/* a timestamptz as the API writes it: RFC 3339, UTC, microseconds */
#define NGX_HTTP_CINEMATCH_TS(col)                                           \
    "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"


typedef struct {
    const char                     *not_found;   /* a NULL answer means */
    const char                     *values[NGX_HTTP_CINEMATCH_MAX_VALUES];
    const char                     *field;       /* a parameter helper's */
    const char                     *message;     /* NGX_DECLINED: a 422 */
    u_char                          name[32];    /* unknown parameter */
    int64_t                         span;        /* usage: to - from, us */
} ngx_http_cinematch_admin_t;


static ngx_http_cinematch_admin_t *ngx_http_cinematch_admin_create(
    ngx_http_request_t *r, const char *not_found);
static ngx_int_t ngx_http_cinematch_admin_invalid(ngx_http_request_t *r,
    ngx_http_cinematch_admin_t *st, ngx_int_t rc);
static ngx_int_t ngx_http_cinematch_admin_args(ngx_http_request_t *r,
    ngx_http_cinematch_admin_t *st, const char *const *allowed);
static ngx_int_t ngx_http_cinematch_admin_page(ngx_http_request_t *r,
    ngx_http_cinematch_admin_t *st, ngx_int_t max_limit, ngx_int_t def);
static ngx_int_t ngx_http_cinematch_admin_list(ngx_http_request_t *r,
    const char *not_found, const char *const *allowed, ngx_int_t max_limit,
    ngx_int_t def, ngx_http_cinematch_admin_t **stp);
static ngx_int_t ngx_http_cinematch_admin_range(ngx_http_request_t *r,
    ngx_http_cinematch_admin_t *st);
static ngx_int_t ngx_http_cinematch_admin_enum(ngx_http_request_t *r,
    ngx_http_cinematch_admin_t *st, const char *name,
    const char *const *allowed, const char **out, const char *message);
static ngx_int_t ngx_http_cinematch_admin_model_name(ngx_str_t *name);
static ngx_int_t ngx_http_cinematch_admin_id(ngx_str_t *s, int64_t max);
static const char *ngx_http_cinematch_admin_num(ngx_http_request_t *r,
    int64_t v);
static ngx_int_t ngx_http_cinematch_admin_query(ngx_http_request_t *r,
    ngx_http_cinematch_admin_t *st, const char *sql, int n);
static ngx_int_t ngx_http_cinematch_admin_done(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_admin_viewer(ngx_http_request_t *r,
    ngx_http_cinematch_admin_t *st, ngx_uint_t first);
static ngx_int_t ngx_http_cinematch_admin_stage_run(ngx_http_request_t *r,
    void *data);


static ngx_str_t  ngx_http_cinematch_admin_type =
    ngx_string("application/json");

static const char *const  ngx_http_cinematch_admin_no_args[] = { NULL };
static const char *const  ngx_http_cinematch_admin_drift_args[] = {
    "limit", "cursor", "alert", NULL
};
static const char *const  ngx_http_cinematch_admin_runs_args[] = {
    "limit", "cursor", "model", "status", NULL
};
static const char *const  ngx_http_cinematch_admin_batches_args[] = {
    "limit", "cursor", "kind", "status", NULL
};
static const char *const  ngx_http_cinematch_admin_page_args[] = {
    "limit", "cursor", NULL
};
static const char *const  ngx_http_cinematch_admin_usage_args[] = {
    "from", "to", "group_by", "interval", "limit", NULL
};

static const char *const  ngx_http_cinematch_admin_bools[] = {
    "true", "false", NULL
};
static const char *const  ngx_http_cinematch_admin_run_status[] = {
    "queued", "running", "succeeded", "failed", "canceled", NULL
};
static const char *const  ngx_http_cinematch_admin_batch_kind[] = {
    "ratings", "movies", "dialogs", NULL
};
static const char *const  ngx_http_cinematch_admin_batch_status[] = {
    "running", "complete", "failed", NULL
};
static const char *const  ngx_http_cinematch_admin_stages[] = {
    "staging", "production", "archived", NULL
};
static const char *const  ngx_http_cinematch_admin_group_by[] = {
    "user", "api_key", "model", NULL
};
static const char *const  ngx_http_cinematch_admin_intervals[] = {
    "hour", "day", NULL
};


/*
 * $1 limit, $2 cursor (id, exclusive); one row more than the page is read
 * to know whether there is a next page.  "n" numbers the rows of the page.
 */

#define NGX_HTTP_CINEMATCH_PAGE_OF(list)                                     \
    " SELECT json_build_object("                                             \
    "  '" list "', coalesce(json_agg(p.doc ORDER BY p.id DESC)"              \
    "    FILTER (WHERE p.n <= $1::int), '[]'::json),"                        \
    "  'next_cursor', CASE WHEN max(p.n) > $1::int THEN"                     \
    "    (min(p.id) FILTER (WHERE p.n <= $1::int))::text END,"               \
    "  'limit', $1::int)::text FROM p"

static const char  ngx_http_cinematch_admin_drift_sql[] =
    "WITH p AS (SELECT d.id, row_number() OVER (ORDER BY d.id DESC) AS n,"
    "  to_jsonb(d) - 'created_at' - 'notified_at' || jsonb_build_object("
    "   'created_at', " NGX_HTTP_CINEMATCH_TS("d.created_at") ","
    "   'notified_at', " NGX_HTTP_CINEMATCH_TS("d.notified_at") ") AS doc"
    "  FROM drift_reports d"
    "  WHERE ($2::bigint IS NULL OR d.id < $2::bigint)"
    "    AND ($3::boolean IS NULL OR d.alert = $3::boolean)"
    "  ORDER BY d.id DESC LIMIT $1::int + 1)"
    NGX_HTTP_CINEMATCH_PAGE_OF("reports");

static const char  ngx_http_cinematch_admin_runs_sql[] =
    "WITH p AS (SELECT t.id, row_number() OVER (ORDER BY t.id DESC) AS n,"
    "  to_jsonb(t) - 'started_at' - 'finished_at' || jsonb_build_object("
    "   'started_at', " NGX_HTTP_CINEMATCH_TS("t.started_at") ","
    "   'finished_at', " NGX_HTTP_CINEMATCH_TS("t.finished_at") ","
    "   'model_version', (SELECT jsonb_build_object('version', v.version,"
    "      'stage', v.stage) FROM model_versions v"
    "      WHERE v.training_run_id = t.id ORDER BY v.version DESC LIMIT 1))"
    "   AS doc"
    "  FROM training_runs t"
    "  WHERE ($2::bigint IS NULL OR t.id < $2::bigint)"
    "    AND ($3::text IS NULL OR t.model_name = $3::text)"
    "    AND ($4::text IS NULL OR t.status = $4::text)"
    "  ORDER BY t.id DESC LIMIT $1::int + 1)"
    NGX_HTTP_CINEMATCH_PAGE_OF("runs");

#define NGX_HTTP_CINEMATCH_BATCH_DOC(b)                                      \
    "to_jsonb(" b ") - 'started_at' - 'finished_at' || jsonb_build_object("  \
    " 'started_at', " NGX_HTTP_CINEMATCH_TS(b ".started_at") ","             \
    " 'finished_at', " NGX_HTTP_CINEMATCH_TS(b ".finished_at") ","           \
    " 'duration_ms', round(extract(epoch FROM " b ".finished_at"             \
    "   - " b ".started_at) * 1000))"

static const char  ngx_http_cinematch_admin_batches_sql[] =
    "WITH p AS (SELECT b.id, row_number() OVER (ORDER BY b.id DESC) AS n, "
    NGX_HTTP_CINEMATCH_BATCH_DOC("b") " AS doc"
    "  FROM ingestion_batches b"
    "  WHERE ($2::bigint IS NULL OR b.id < $2::bigint)"
    "    AND ($3::text IS NULL OR b.kind = $3::text)"
    "    AND ($4::text IS NULL OR b.status = $4::text)"
    "  ORDER BY b.id DESC LIMIT $1::int + 1)"
    NGX_HTTP_CINEMATCH_PAGE_OF("batches");

/* $1 limit, $2 cursor (line number, exclusive; rejects in file order),
 * $3 batch id */
static const char  ngx_http_cinematch_admin_batch_sql[] =
    "SELECT json_build_object('batch', " NGX_HTTP_CINEMATCH_BATCH_DOC("b") ","
    "  'rejects', coalesce((SELECT json_agg(json_build_object("
    "     'line_no', j.line_no, 'raw_line', j.raw_line, 'reason', j.reason)"
    "     ORDER BY j.line_no) FROM (SELECT x.* FROM ingestion_rejects x"
    "     WHERE x.batch_id = b.id"
    "       AND ($2::bigint IS NULL OR x.line_no > $2::bigint)"
    "     ORDER BY x.line_no LIMIT $1::int) j), '[]'::json),"
    "  'next_cursor', (SELECT CASE WHEN count(*) > $1::int THEN"
    "     ((array_agg(k.line_no ORDER BY k.line_no))[$1::int])::text END"
    "     FROM (SELECT x.line_no FROM ingestion_rejects x"
    "       WHERE x.batch_id = b.id"
    "         AND ($2::bigint IS NULL OR x.line_no > $2::bigint)"
    "       ORDER BY x.line_no LIMIT $1::int + 1) k),"
    "  'limit', $1::int)::text"
    " FROM ingestion_batches b WHERE b.id = $3::bigint";

/* a version as every registry answer shows it */
#define NGX_HTTP_CINEMATCH_VERSION_DOC(v)                                    \
    "jsonb_build_object('version', " v ".version, 'stage', " v ".stage,"     \
    " 'canary_share', " v ".canary_share::float8,"                           \
    " 'metrics', " v ".metrics, 'artifact_sha256', " v ".artifact_sha256,"   \
    " 'artifact_bytes', " v ".artifact_bytes,"                               \
    " 'training_run_id', " v ".training_run_id,"                             \
    " 'description', " v ".description,"                                     \
    " 'created_at', " NGX_HTTP_CINEMATCH_TS(v ".created_at") ","             \
    " 'stage_changed_at', " NGX_HTTP_CINEMATCH_TS(v ".stage_changed_at") ")"

#define NGX_HTTP_CINEMATCH_MODEL_DOC(m)                                      \
    "'name', " m ".name, 'task', " m ".task,"                                \
    " 'description', " m ".description, 'private', " m ".private,"           \
    " 'created_at', " NGX_HTTP_CINEMATCH_TS(m ".created_at") ","             \
    " 'production_version', (SELECT v.version FROM model_versions v"         \
    "   WHERE v.model_name = " m ".name AND v.stage = 'production'),"        \
    " 'rollback_version', cm_model_rollback_version(" m ".name)"

/* $1 the caller may see private models of others (admin), $2 user id:
 * another user's private model is invisible, so its name is a 404 */
#define NGX_HTTP_CINEMATCH_VISIBLE(m)                                        \
    "(NOT " m ".private OR $1::boolean OR " m ".owner_id = $2::bigint)"

static const char  ngx_http_cinematch_admin_models_sql[] =
    "SELECT json_build_object('models', coalesce(json_agg(json_build_object("
    NGX_HTTP_CINEMATCH_MODEL_DOC("m") ","
    "  'versions', coalesce((SELECT json_agg("
    NGX_HTTP_CINEMATCH_VERSION_DOC("v") " ORDER BY v.version DESC)"
    "    FROM model_versions v WHERE v.model_name = m.name), '[]'::json))"
    "  ORDER BY m.name), '[]'::json))::text"
    " FROM models m WHERE " NGX_HTTP_CINEMATCH_VISIBLE("m");

static const char  ngx_http_cinematch_admin_versions_sql[] =
    "SELECT json_build_object('model', json_build_object("
    NGX_HTTP_CINEMATCH_MODEL_DOC("m") "),"
    "  'versions', coalesce((SELECT json_agg("
    NGX_HTTP_CINEMATCH_VERSION_DOC("v") " || jsonb_build_object('run',"
    "     (SELECT jsonb_build_object('id', t.id, 'status', t.status,"
    "       'triggered_by', t.triggered_by, 'params', t.params,"
    "       'metrics', t.metrics, 'train_rows', t.train_rows,"
    "       'test_rows', t.test_rows, 'duration_ms', t.duration_ms,"
    "       'gate_decision', t.gate_decision, 'gate_reason', t.gate_reason,"
    "       'code_version', t.code_version,"
    "       'started_at', " NGX_HTTP_CINEMATCH_TS("t.started_at") ","
    "       'finished_at', " NGX_HTTP_CINEMATCH_TS("t.finished_at") ")"
    "      FROM training_runs t WHERE t.id = v.training_run_id))"
    "    ORDER BY v.version DESC)"
    "    FROM model_versions v WHERE v.model_name = m.name), '[]'::json))"
    "  ::text"
    " FROM models m WHERE " NGX_HTTP_CINEMATCH_VISIBLE("m")
    "  AND m.name = $3::text";

/* $1 name, $2 version, $3 stage, $4 the admin's users.id */
static const char  ngx_http_cinematch_admin_stage_sql[] =
    "SELECT json_build_object('model_name', s.model_name,"
    "  'version', s.version, 'stage', s.stage,"
    "  'previous_stage', s.previous_stage,"
    "  'archived_version', s.archived_version, 'changed', s.changed)::text"
    " FROM cm_model_set_stage($1::text, $2::int, $3::text, $4::bigint) s";

/*
 * Usage: $1 from, $2 to (to exclusive), $3 group_by, $4 interval (NULL:
 * one bucket), $5 limit (groups).  The query is sql/010's
 * cm_usage_report(): it runs with jit off and plans for the values at hand
 * (see there why; on a million logged requests that is seconds against
 * tens of seconds).
 */
static const char  ngx_http_cinematch_admin_usage_sql[] =
    "SELECT cm_usage_report($1::timestamptz, $2::timestamptz, $3::text,"
    " $4::text, $5::int)";


/* ---- handlers ---- */

ngx_int_t
ngx_http_cinematch_admin_models_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    ngx_int_t                    rc;
    ngx_http_cinematch_admin_t  *st;

    st = ngx_http_cinematch_admin_create(r, "no models");
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_cinematch_admin_args(r, st,
                                       ngx_http_cinematch_admin_no_args);
    if (rc != NGX_OK) {
        return ngx_http_cinematch_admin_invalid(r, st, rc);
    }

    if (ngx_http_cinematch_admin_viewer(r, st, 0) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_admin_query(r, st,
                                          ngx_http_cinematch_admin_models_sql,
                                          2);
}


ngx_int_t
ngx_http_cinematch_admin_versions_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    u_char                      *p;
    ngx_int_t                    rc;
    ngx_http_cinematch_admin_t  *st;

    if (ngx_http_cinematch_admin_model_name(&ctx->params[0]) != NGX_OK) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                                             "not_found", "no such model");
    }

    st = ngx_http_cinematch_admin_create(r, "no such model");
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_cinematch_admin_args(r, st,
                                       ngx_http_cinematch_admin_no_args);
    if (rc != NGX_OK) {
        return ngx_http_cinematch_admin_invalid(r, st, rc);
    }

    if (ngx_http_cinematch_admin_viewer(r, st, 0) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_pnalloc(r->pool, ctx->params[0].len + 1);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *ngx_cpymem(p, ctx->params[0].data, ctx->params[0].len) = '\0';
    st->values[2] = (const char *) p;

    return ngx_http_cinematch_admin_query(r, st,
                                       ngx_http_cinematch_admin_versions_sql,
                                       3);
}


ngx_int_t
ngx_http_cinematch_admin_stage_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    u_char                       *p;
    json_t                       *stage, *val;
    ngx_int_t                     rc, version;
    ngx_uint_t                    i;
    const char                   *key, *s;
    ngx_http_cinematch_admin_t   *st;
    ngx_http_cinematch_caller_t  *c;

    c = ngx_http_cinematch_caller(r);
    if (c == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_cinematch_admin_model_name(&ctx->params[0]) != NGX_OK) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                                             "not_found", "no such model");
    }

    version = ngx_http_cinematch_admin_id(&ctx->params[1],
                                          NGX_MAX_INT32_VALUE);
    if (version == NGX_ERROR) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                                             "not_found", "no such version");
    }

    st = ngx_http_cinematch_admin_create(r, "no such version");
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_cinematch_admin_args(r, st,
                                       ngx_http_cinematch_admin_no_args);
    if (rc != NGX_OK) {
        return ngx_http_cinematch_admin_invalid(r, st, rc);
    }

    json_object_foreach(ctx->json, key, val) {
        if (ngx_strcmp(key, "stage") != 0) {
            return ngx_http_cinematch_send_invalid(r, key, "unknown field");
        }
    }

    stage = json_object_get(ctx->json, "stage");
    s = NULL;

    if (stage != NULL && json_is_string(stage)) {
        for (i = 0; ngx_http_cinematch_admin_stages[i] != NULL; i++) {
            if (ngx_strcmp(json_string_value(stage),
                           ngx_http_cinematch_admin_stages[i])
                == 0)
            {
                s = ngx_http_cinematch_admin_stages[i];
                break;
            }
        }
    }

    if (s == NULL) {
        return ngx_http_cinematch_send_invalid(r, "stage",
                   "required: staging, production or archived");
    }

    p = ngx_pnalloc(r->pool, ctx->params[0].len + 1);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *ngx_cpymem(p, ctx->params[0].data, ctx->params[0].len) = '\0';

    st->values[0] = (const char *) p;
    st->values[1] = ngx_http_cinematch_admin_num(r, version);
    st->values[2] = s;
    st->values[3] = ngx_http_cinematch_admin_num(r, c->user_id);

    if (st->values[1] == NULL || st->values[3] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

#if (NGX_HTTP_CINEMATCH_MODELS)
    if (ngx_strcmp(s, "production") == 0) {
        /* the artifact is hashed again first (off the event loop): the
         * registry must not name a production the daemons would refuse */
        return ngx_http_cinematch_artifact_check(r, st->values[0],
                   st->values[1], ngx_http_cinematch_admin_stage_run, st);
    }
#endif

    return ngx_http_cinematch_admin_stage_run(r, st);
}


static ngx_int_t
ngx_http_cinematch_admin_stage_run(ngx_http_request_t *r, void *data)
{
    return ngx_http_cinematch_admin_query(r, data,
                                          ngx_http_cinematch_admin_stage_sql,
                                          4);
}


ngx_int_t
ngx_http_cinematch_admin_drift_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    ngx_int_t                    rc;
    ngx_http_cinematch_admin_t  *st;

    rc = ngx_http_cinematch_admin_list(r, "no reports",
                                       ngx_http_cinematch_admin_drift_args,
                                       NGX_HTTP_CINEMATCH_ADMIN_LIMIT_MAX,
                                       NGX_HTTP_CINEMATCH_ADMIN_LIMIT, &st);
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_OK) {
        rc = ngx_http_cinematch_admin_enum(r, st, "alert",
                                           ngx_http_cinematch_admin_bools,
                                           &st->values[2],
                                           "must be true or false");
    }

    if (rc != NGX_OK) {
        return ngx_http_cinematch_admin_invalid(r, st, rc);
    }

    return ngx_http_cinematch_admin_query(r, st,
                                          ngx_http_cinematch_admin_drift_sql,
                                          3);
}


ngx_int_t
ngx_http_cinematch_admin_runs_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    ngx_int_t                    rc;
    ngx_str_t                    model;
    ngx_http_cinematch_admin_t  *st;

    rc = ngx_http_cinematch_admin_list(r, "no runs",
                                       ngx_http_cinematch_admin_runs_args,
                                       NGX_HTTP_CINEMATCH_ADMIN_LIMIT_MAX,
                                       NGX_HTTP_CINEMATCH_ADMIN_LIMIT, &st);
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_OK) {
        rc = ngx_http_cinematch_admin_enum(r, st, "status",
                   ngx_http_cinematch_admin_run_status, &st->values[3],
                   "one of queued, running, succeeded, failed, canceled");
    }

    if (rc == NGX_OK) {
        rc = ngx_http_cinematch_arg(r, "model", &model);

        if (rc == NGX_DECLINED) {
            rc = NGX_OK;

        } else if (rc == NGX_OK) {
            if (ngx_http_cinematch_admin_model_name(&model) != NGX_OK) {
                st->field = "model";
                st->message = "a model name: a lowercase letter, then up "
                              "to 30 of a-z 0-9 _ -";
                rc = NGX_DECLINED;

            } else {
                st->values[2] = (const char *) model.data;  /* has a NUL */
            }
        }
    }

    if (rc != NGX_OK) {
        return ngx_http_cinematch_admin_invalid(r, st, rc);
    }

    return ngx_http_cinematch_admin_query(r, st,
                                          ngx_http_cinematch_admin_runs_sql,
                                          4);
}


ngx_int_t
ngx_http_cinematch_admin_ingestions_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    ngx_int_t                    rc;
    ngx_http_cinematch_admin_t  *st;

    rc = ngx_http_cinematch_admin_list(r, "no batches",
                                       ngx_http_cinematch_admin_batches_args,
                                       NGX_HTTP_CINEMATCH_ADMIN_LIMIT_MAX,
                                       NGX_HTTP_CINEMATCH_ADMIN_LIMIT, &st);
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_OK) {
        rc = ngx_http_cinematch_admin_enum(r, st, "kind",
                                           ngx_http_cinematch_admin_batch_kind,
                                           &st->values[2],
                                           "one of ratings, movies, dialogs");
    }

    if (rc == NGX_OK) {
        rc = ngx_http_cinematch_admin_enum(r, st, "status",
                                     ngx_http_cinematch_admin_batch_status,
                                     &st->values[3],
                                     "one of running, complete, failed");
    }

    if (rc != NGX_OK) {
        return ngx_http_cinematch_admin_invalid(r, st, rc);
    }

    return ngx_http_cinematch_admin_query(r, st,
                                       ngx_http_cinematch_admin_batches_sql,
                                       4);
}


ngx_int_t
ngx_http_cinematch_admin_ingestion_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    ngx_int_t                    rc, id;
    ngx_http_cinematch_admin_t  *st;

    id = ngx_http_cinematch_admin_id(&ctx->params[0], NGX_MAX_INT_T_VALUE);
    if (id == NGX_ERROR) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                                             "not_found", "no such batch");
    }

    rc = ngx_http_cinematch_admin_list(r, "no such batch",
                                       ngx_http_cinematch_admin_page_args,
                                       NGX_HTTP_CINEMATCH_ADMIN_LIMIT_MAX * 5,
                                       NGX_HTTP_CINEMATCH_ADMIN_LIMIT * 2,
                                       &st);
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc != NGX_OK) {
        return ngx_http_cinematch_admin_invalid(r, st, rc);
    }

    st->values[2] = ngx_http_cinematch_admin_num(r, id);
    if (st->values[2] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_admin_query(r, st,
                                          ngx_http_cinematch_admin_batch_sql,
                                          3);
}


ngx_int_t
ngx_http_cinematch_admin_usage_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    ngx_int_t                    rc, limit;
    ngx_http_cinematch_admin_t  *st;

    limit = NGX_HTTP_CINEMATCH_USAGE_LIMIT;

    st = ngx_http_cinematch_admin_create(r, "no usage");
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_cinematch_admin_args(r, st,
                                       ngx_http_cinematch_admin_usage_args);

    if (rc == NGX_OK) {
        rc = ngx_http_cinematch_admin_range(r, st);
    }

    if (rc == NGX_OK) {
        rc = ngx_http_cinematch_admin_enum(r, st, "group_by",
                                           ngx_http_cinematch_admin_group_by,
                                           &st->values[2],
                                           "one of user, api_key, model");
    }

    if (rc == NGX_OK) {
        rc = ngx_http_cinematch_admin_enum(r, st, "interval",
                                           ngx_http_cinematch_admin_intervals,
                                           &st->values[3],
                                           "hour or day (or absent)");
    }

    if (rc == NGX_OK
        && ngx_http_cinematch_arg_int(r, "limit",
                                      NGX_HTTP_CINEMATCH_USAGE_LIMIT, 1,
                                      NGX_HTTP_CINEMATCH_USAGE_LIMIT_MAX,
                                      &limit)
           != NGX_OK)
    {
        st->field = "limit";
        st->message = "must be 1..1000";
        rc = NGX_DECLINED;
    }

    if (rc != NGX_OK) {
        return ngx_http_cinematch_admin_invalid(r, st, rc);
    }

    if (st->values[2] == NULL) {
        st->values[2] = "user";
    }

    /* hourly buckets over a year would be 8784 rows per group */
    if (st->values[3] != NULL && st->values[3][0] == 'h'
        && st->span > NGX_HTTP_CINEMATCH_USAGE_HOURLY_MAX)
    {
        return ngx_http_cinematch_send_invalid(r, "interval",
                   "hourly buckets need from..to of at most 31 days");
    }

    st->values[4] = ngx_http_cinematch_admin_num(r, limit);
    if (st->values[4] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_admin_query(r, st,
                                          ngx_http_cinematch_admin_usage_sql,
                                          5);
}


/* ---- parameters ---- */

/*
 * The helpers below return NGX_OK, NGX_DECLINED when a parameter is
 * invalid (st->field and st->message say why) or NGX_ERROR; the handler
 * answers through ngx_http_cinematch_admin_invalid(), so a request is
 * answered once whichever helper refused it.
 */

static ngx_int_t
ngx_http_cinematch_admin_invalid(ngx_http_request_t *r,
    ngx_http_cinematch_admin_t *st, ngx_int_t rc)
{
    if (rc != NGX_DECLINED || st->field == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_send_invalid(r, st->field, st->message);
}


static ngx_http_cinematch_admin_t *
ngx_http_cinematch_admin_create(ngx_http_request_t *r, const char *not_found)
{
    ngx_http_cinematch_admin_t  *st;

    st = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_admin_t));
    if (st == NULL) {
        return NULL;
    }

    st->not_found = not_found;

    return st;
}


/*
 * The start of every paged list: its state, the argument names it knows,
 * then limit and cursor.  *stp is NULL when the state cannot be allocated;
 * otherwise returns like the helpers (NGX_DECLINED: a 422 in st).
 */

static ngx_int_t
ngx_http_cinematch_admin_list(ngx_http_request_t *r, const char *not_found,
    const char *const *allowed, ngx_int_t max_limit, ngx_int_t def,
    ngx_http_cinematch_admin_t **stp)
{
    ngx_int_t                    rc;
    ngx_http_cinematch_admin_t  *st;

    st = ngx_http_cinematch_admin_create(r, not_found);
    *stp = st;

    if (st == NULL) {
        return NGX_ERROR;
    }

    rc = ngx_http_cinematch_admin_args(r, st, allowed);

    if (rc == NGX_OK) {
        rc = ngx_http_cinematch_admin_page(r, st, max_limit, def);
    }

    return rc;
}


/* every argument name must be one the endpoint knows */

static ngx_int_t
ngx_http_cinematch_admin_args(ngx_http_request_t *r,
    ngx_http_cinematch_admin_t *st, const char *const *allowed)
{
    u_char             *p, *last, *name, *end;
    size_t              len;
    ngx_uint_t          i;
    const char *const  *a;

    p = r->args.data;
    last = p + r->args.len;

    while (p < last) {
        name = p;

        while (p < last && *p != '&') {
            p++;
        }

        for (end = name; end < p && *end != '='; end++) { /* void */ }

        len = end - name;
        p++;

        if (len == 0) {
            continue;       /* "?&x=1" or "?=1": nothing to match */
        }

        for (a = allowed; *a != NULL; a++) {
            if (ngx_strlen(*a) == len && ngx_strncmp(*a, name, len) == 0) {
                break;
            }
        }

        if (*a != NULL) {
            continue;
        }

        /* the name goes back to the client: printable ASCII only */
        len = ngx_min(len, sizeof(st->name) - 1);

        for (i = 0; i < len; i++) {
            st->name[i] = (name[i] > 0x20 && name[i] < 0x7f
                           && name[i] != '%')
                          ? name[i] : '?';
        }

        st->name[len] = '\0';
        st->field = (const char *) st->name;
        st->message = "unknown parameter";

        return NGX_DECLINED;
    }

    return NGX_OK;
}


/* limit (values[0]) and cursor (values[1]) */

static ngx_int_t
ngx_http_cinematch_admin_page(ngx_http_request_t *r,
    ngx_http_cinematch_admin_t *st, ngx_int_t max_limit, ngx_int_t def)
{
    ngx_int_t   limit;
    ngx_str_t   v;

    if (ngx_http_cinematch_arg_int(r, "limit", def, 1, max_limit, &limit)
        != NGX_OK)
    {
        st->field = "limit";
        st->message = max_limit > 200 ? "must be 1..1000" : "must be 1..200";
        return NGX_DECLINED;
    }

    st->values[0] = ngx_http_cinematch_admin_num(r, limit);
    if (st->values[0] == NULL) {
        return NGX_ERROR;
    }

    switch (ngx_http_cinematch_arg(r, "cursor", &v)) {

    case NGX_DECLINED:
        return NGX_OK;

    case NGX_OK:
        break;

    default:
        return NGX_ERROR;
    }

    if (ngx_http_cinematch_admin_id(&v, NGX_MAX_INT_T_VALUE) == NGX_ERROR) {
        st->field = "cursor";
        st->message = "the next_cursor of the previous page";
        return NGX_DECLINED;
    }

    st->values[1] = (const char *) v.data;       /* NUL-terminated */

    return NGX_OK;
}


/* from (values[0]) and to (values[1]): to defaults to now, from to a
 * week before to; at most 366 days apart */

static ngx_int_t
ngx_http_cinematch_admin_range(ngx_http_request_t *r,
    ngx_http_cinematch_admin_t *st)
{
    u_char       *p;
    int64_t       t[2];
    ngx_str_t     v;
    ngx_uint_t    i;
    ngx_time_t   *tp;
    static const char  *names[2] = { "from", "to" };

    tp = ngx_timeofday();
    t[1] = (int64_t) tp->sec * 1000000 + (int64_t) tp->msec * 1000;
    t[0] = -1;

    for (i = 0; i < 2; i++) {
        switch (ngx_http_cinematch_arg(r, names[i], &v)) {

        case NGX_DECLINED:
            continue;

        case NGX_OK:
            if (cm_time_parse((char *) v.data, v.len, &t[i]) != CM_OK) {
                st->field = names[i];
                st->message = "an RFC 3339 time (2026-11-25T13:40:00Z) or "
                              "a date (2026-11-25), years 1970..9999";
                return NGX_DECLINED;
            }
            break;

        default:
            return NGX_ERROR;
        }
    }

    if (t[0] < 0) {
        t[0] = ngx_max(t[1] - NGX_HTTP_CINEMATCH_USAGE_DEFAULT, 0);
    }

    st->field = "from";

    if (t[0] >= t[1]) {
        st->message = "must be before to";
        return NGX_DECLINED;
    }

    if (t[1] - t[0] > NGX_HTTP_CINEMATCH_USAGE_MAX) {
        st->message = "from..to may span at most 366 days";
        return NGX_DECLINED;
    }

    st->field = NULL;
    st->span = t[1] - t[0];

    for (i = 0; i < 2; i++) {
        p = ngx_pnalloc(r->pool, CM_TIME_FORMAT_LEN);
        if (p == NULL) {
            return NGX_ERROR;
        }

        if (cm_time_format(t[i], (char *) p, CM_TIME_FORMAT_LEN) == 0) {
            st->field = names[i];
            st->message = "out of range";
            return NGX_DECLINED;
        }

        st->values[i] = (const char *) p;
    }

    return NGX_OK;
}


/* *out one of allowed; absent is NGX_OK with *out untouched */

static ngx_int_t
ngx_http_cinematch_admin_enum(ngx_http_request_t *r,
    ngx_http_cinematch_admin_t *st, const char *name,
    const char *const *allowed, const char **out, const char *message)
{
    ngx_str_t           v;
    const char *const  *a;

    switch (ngx_http_cinematch_arg(r, name, &v)) {

    case NGX_DECLINED:
        return NGX_OK;

    case NGX_OK:
        break;

    default:
        return NGX_ERROR;
    }

    for (a = allowed; *a != NULL; a++) {
        if (ngx_strlen(*a) == v.len && ngx_strncmp(*a, v.data, v.len) == 0) {
            *out = *a;
            return NGX_OK;
        }
    }

    st->field = name;
    st->message = message;

    return NGX_DECLINED;
}


/* the model_name domain of sql/003: ^[a-z][a-z0-9_-]{0,30}$ */

static ngx_int_t
ngx_http_cinematch_admin_model_name(ngx_str_t *name)
{
    u_char  *p;

    if (name->len == 0 || name->len > 31
        || name->data[0] < 'a' || name->data[0] > 'z')
    {
        return NGX_ERROR;
    }

    for (p = name->data + 1; p < name->data + name->len; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9')
              || *p == '_' || *p == '-'))
        {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


/* a plain positive decimal id (no sign, no leading zero) up to max */

static ngx_int_t
ngx_http_cinematch_admin_id(ngx_str_t *s, int64_t max)
{
    ngx_int_t  n;

    if (s->len == 0 || s->len > NGX_INT64_LEN - 1 || s->data[0] == '0') {
        return NGX_ERROR;
    }

    n = ngx_atoi(s->data, s->len);

    if (n == NGX_ERROR || n < 1 || n > max) {
        return NGX_ERROR;
    }

    return n;
}


static const char *
ngx_http_cinematch_admin_num(ngx_http_request_t *r, int64_t v)
{
    u_char  *p;

    p = ngx_pnalloc(r->pool, NGX_INT64_LEN + 1);
    if (p == NULL) {
        return NULL;
    }

    *ngx_sprintf(p, "%L", v) = '\0';

    return (const char *) p;
}


/* $1 may see every private model (an admin), $2 the caller's users.id */

static ngx_int_t
ngx_http_cinematch_admin_viewer(ngx_http_request_t *r,
    ngx_http_cinematch_admin_t *st, ngx_uint_t first)
{
    ngx_http_cinematch_caller_t  *c;

    c = ngx_http_cinematch_caller(r);
    if (c == NULL) {
        return NGX_ERROR;
    }

    st->values[first] = (c->admin && (c->scopes & CM_SCOPE_ADMIN))
                        ? "true" : "false";
    st->values[first + 1] = ngx_http_cinematch_admin_num(r, c->user_id);

    return st->values[first + 1] != NULL ? NGX_OK : NGX_ERROR;
}


/* ---- the query and its answer ---- */

static ngx_int_t
ngx_http_cinematch_admin_query(ngx_http_request_t *r,
    ngx_http_cinematch_admin_t *st, const char *sql, int n)
{
    switch (ngx_http_cinematch_pg_query(r, sql, n, st->values,
                                        ngx_http_cinematch_admin_done, st))
    {
    case NGX_OK:
        return NGX_DONE;

    case NGX_DECLINED:
    case NGX_BUSY:
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             "database unavailable");
    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}


static ngx_int_t
ngx_http_cinematch_admin_done(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    u_char                      *p;
    size_t                       len;
    const char                  *state;
    ngx_http_cinematch_admin_t  *st;

    st = data;

    if (err != NULL || res == NULL) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             "database unavailable");
    }

    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

        if (state == NULL) {
            state = "";
        }

        /* the registry's own refusals (sql/010): their text is ours */

        if (ngx_strcmp(state, "P0002") == 0) {
            return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                                                 "not_found",
                                                 st->not_found);
        }

        if (ngx_strcmp(state, "55000") == 0) {
            return ngx_http_cinematch_send_error(r, NGX_HTTP_CONFLICT,
                       "conflict",
                       "a production version leaves production only when "
                       "another version is promoted (or by a rollback)");
        }

        if (ngx_strcmp(state, "22023") == 0) {
            return ngx_http_cinematch_send_invalid(r, "stage",
                       "required: staging, production or archived");
        }

        /* anything else: the server's text goes to the log only */
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cinematch: admin query failed (%s): %s", state,
                      PQresultErrorMessage(res));

        if (ngx_strncmp(state, "08", 2) == 0
            || ngx_strncmp(state, "57", 2) == 0
            || ngx_strncmp(state, "53", 2) == 0)
        {
            return ngx_http_cinematch_send_error(r,
                                                 NGX_HTTP_SERVICE_UNAVAILABLE,
                                                 "unavailable",
                                                 "database unavailable");
        }

        return ngx_http_cinematch_send_error(r,
                                             NGX_HTTP_INTERNAL_SERVER_ERROR,
                                             "internal",
                                             "the query failed");
    }

    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                                             "not_found", st->not_found);
    }

    len = PQgetlength(res, 0, 0);
    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(p, PQgetvalue(res, 0, 0), len);

    return ngx_http_cinematch_send_buf(r, NGX_HTTP_OK,
                                       &ngx_http_cinematch_admin_type, p,
                                       len);
}


/*
 * ngx_http_cinematch_api_models.c: registry changes that look at the
 * model store first (API.md "Models, prediction, jobs").
 *
 *   POST   /api/v1/models/{name}/canary  {version, share}  admin
 *   DELETE /api/v1/models/{name}/canary                    admin
 *
 * and ngx_http_cinematch_artifact_check(), which runs before a canary is
 * set and before a promotion (api_admin.c's stage change): the artifact's
 * sha256 is computed again and compared with the registry's, so the API,
 * like `cinematch model promote|canary`, never makes the registry name a
 * version the daemons would refuse at load.  The digest is computed on
 * the auth module's thread pool (cinematch_password_thread_pool, the one
 * argon2id uses): a file of hundreds of MB must not stop the event loop.
 * The model store must therefore be readable on the nginx node; when it
 * is not, the change is refused (409 artifact_unreadable) rather than made
 * blind.
 *
 * The transitions themselves are sql/015's cm_model_set_canary() and
 * cm_model_stop_canary() (and sql/010's cm_model_set_stage()), the same
 * functions the CLI calls.  Their SQLSTATEs map to 404 (P0002), 409
 * (55000) and 422 (22023).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_cinematch.h"
#include "ngx_http_cinematch_auth.h"
#include "cinematch/canary.h"
#include "cinematch/digest.h"


/* one artifact check: the registry row, then the digest in a thread */
typedef struct {
    ngx_http_request_t                   *request;
    const char                           *values[2];
    char                                 *path;      /* NUL-terminated */
    char                                  want[CM_SHA256_HEX_LEN + 1];
    char                                  got[CM_SHA256_HEX_LEN + 1];
    ngx_int_t                             rc;        /* CM_OK, CM_E* */
    ngx_err_t                             err;
    ngx_http_cinematch_artifact_next_pt   next;
    void                                 *data;
} ngx_http_cinematch_artifact_t;


/* a canary change: the query's parameters */
typedef struct {
    const char                           *values[4];
} ngx_http_cinematch_canary_t;


static ngx_int_t ngx_http_cinematch_artifact_found(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
#if (NGX_THREADS)
static void ngx_http_cinematch_artifact_run(void *data, ngx_log_t *log);
static void ngx_http_cinematch_artifact_done(ngx_event_t *ev);
#endif
static ngx_int_t ngx_http_cinematch_artifact_verdict(ngx_http_request_t *r,
    ngx_http_cinematch_artifact_t *ac);
static ngx_int_t ngx_http_cinematch_canary_run(ngx_http_request_t *r,
    void *data);
static ngx_int_t ngx_http_cinematch_models_query(ngx_http_request_t *r,
    const char *sql, int n, const char *const *values);
static ngx_int_t ngx_http_cinematch_models_done(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static char *ngx_http_cinematch_models_name(ngx_http_request_t *r,
    ngx_str_t *name);
static const char *ngx_http_cinematch_models_num(ngx_http_request_t *r,
    int64_t v);


static ngx_str_t  ngx_http_cinematch_models_type =
    ngx_string("application/json");

static const char  ngx_http_cinematch_artifact_sql[] =
    "SELECT artifact_path, artifact_sha256 FROM model_versions"
    " WHERE model_name = $1::text AND version = $2::int";

/* $1 name, $2 version, $3 share, $4 the admin's users.id */
static const char  ngx_http_cinematch_canary_sql[] =
    "SELECT json_build_object('model_name', s.model_name,"
    "  'version', s.version, 'stage', s.stage,"
    "  'canary_share', s.canary_share::float8,"
    "  'previous_stage', s.previous_stage,"
    "  'replaced_version', s.replaced_version, 'changed', s.changed)::text"
    " FROM cm_model_set_canary($1::text, $2::int, $3::numeric, $4::bigint) s";

/* $1 name, $2 the admin's users.id */
static const char  ngx_http_cinematch_canary_stop_sql[] =
    "SELECT json_build_object('model_name', s.model_name,"
    "  'version', s.version, 'changed', s.changed)::text"
    " FROM cm_model_stop_canary($1::text, $2::bigint) s";


/* ---- the artifact check ---- */

/*
 * Looks name:version up, hashes its artifact on the thread pool and calls
 * next(r, data) when the digest is the registry's; answers 404 (unknown
 * version), 409 (artifact unreadable or changed) or 503 itself otherwise.
 * Returns like a handler (NGX_DONE while it runs).  name and version must
 * live in the request pool.
 */

ngx_int_t
ngx_http_cinematch_artifact_check(ngx_http_request_t *r, const char *name,
    const char *version, ngx_http_cinematch_artifact_next_pt next,
    void *data)
{
    ngx_http_cinematch_artifact_t  *ac;

    ac = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_artifact_t));
    if (ac == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ac->request = r;
    ac->values[0] = name;
    ac->values[1] = version;
    ac->next = next;
    ac->data = data;

    switch (ngx_http_cinematch_pg_query(r, ngx_http_cinematch_artifact_sql, 2,
                                        ac->values,
                                        ngx_http_cinematch_artifact_found,
                                        ac))
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
ngx_http_cinematch_artifact_found(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    ngx_http_cinematch_artifact_t *ac = data;

    size_t                                len;
#if (NGX_THREADS)
    ngx_thread_task_t                    *task;
    ngx_http_cinematch_artifact_t       **slot;
    ngx_http_cinematch_auth_main_conf_t  *amcf;
#endif

    if (err != NULL || res == NULL) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             "database unavailable");
    }

    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cinematch: artifact lookup failed: %s",
                      PQresultErrorMessage(res));
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)
        || PQgetlength(res, 0, 1) != CM_SHA256_HEX_LEN)
    {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                                             "not_found", "no such version");
    }

    len = PQgetlength(res, 0, 0);

    ac->path = ngx_pnalloc(r->pool, len + 1);
    if (ac->path == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *ngx_cpymem(ac->path, PQgetvalue(res, 0, 0), len) = '\0';
    ngx_memcpy(ac->want, PQgetvalue(res, 0, 1), CM_SHA256_HEX_LEN + 1);

#if (NGX_THREADS)

    amcf = ngx_http_get_module_main_conf(r, ngx_http_cinematch_auth_module);

    task = ngx_thread_task_alloc(r->pool, sizeof(*slot));
    if (task == NULL || amcf == NULL || amcf->pool == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    slot = task->ctx;
    *slot = ac;

    task->handler = ngx_http_cinematch_artifact_run;
    task->event.handler = ngx_http_cinematch_artifact_done;
    task->event.data = ac;

    if (ngx_thread_task_post(amcf->pool, task) != NGX_OK) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             "the thread pool is full, retry");
    }

    /* the request pool (the job, the path) outlives the client */
    r->main->blocked++;
    ngx_http_cinematch_wait(r);

    return NGX_DONE;

#else

    /* no threads: hash here; registry changes are rare admin actions */
    ac->rc = cm_sha256_file_hex(ac->path, ac->got, NULL);
    ac->err = ngx_errno;

    return ngx_http_cinematch_artifact_verdict(r, ac);

#endif
}


#if (NGX_THREADS)

/* In a pool thread: no nginx calls, only the job's own memory. */

static void
ngx_http_cinematch_artifact_run(void *data, ngx_log_t *log)
{
    ngx_http_cinematch_artifact_t *ac = *(ngx_http_cinematch_artifact_t **)
                                        data;

    ac->rc = cm_sha256_file_hex(ac->path, ac->got, NULL);
    ac->err = ngx_errno;
}


static void
ngx_http_cinematch_artifact_done(ngx_event_t *ev)
{
    ngx_http_cinematch_artifact_t *ac = ev->data;

    ngx_http_request_t  *r;

    r = ac->request;
    r->main->blocked--;

    if (r->connection->error) {
        ngx_http_cinematch_finish(r, NGX_HTTP_CLIENT_CLOSED_REQUEST);
        return;
    }

    ngx_http_cinematch_finish(r, ngx_http_cinematch_artifact_verdict(r, ac));
}

#endif


static ngx_int_t
ngx_http_cinematch_artifact_verdict(ngx_http_request_t *r,
    ngx_http_cinematch_artifact_t *ac)
{
    if (ac->rc != CM_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log,
                      ac->rc == CM_EIO ? ac->err : 0,
                      "cinematch: artifact \"%s\" of %s version %s cannot be"
                      " read", ac->path, ac->values[0], ac->values[1]);

        return ngx_http_cinematch_send_error(r, NGX_HTTP_CONFLICT,
                   "artifact_unreadable",
                   "the version's artifact cannot be read from the model "
                   "store; refusing the change");
    }

    if (ngx_strcmp(ac->got, ac->want) != 0) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cinematch: artifact \"%s\" of %s version %s has sha256"
                      " %s, the registry says %s", ac->path, ac->values[0],
                      ac->values[1], ac->got, ac->want);

        return ngx_http_cinematch_send_error(r, NGX_HTTP_CONFLICT,
                   "artifact_mismatch",
                   "the version's artifact differs from its registered "
                   "sha256; refusing the change");
    }

    return ac->next(r, ac->data);
}


/* ---- POST /api/v1/models/{name}/canary ---- */

ngx_int_t
ngx_http_cinematch_models_canary_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    char                          *name;
    json_t                        *val, *version, *share;
    double                         s;
    u_char                        *p;
    uint32_t                       bp;
    const char                    *key;
    json_int_t                     v;
    ngx_http_cinematch_caller_t   *c;
    ngx_http_cinematch_canary_t   *cq;

    c = ngx_http_cinematch_caller(r);
    name = ngx_http_cinematch_models_name(r, &ctx->params[0]);

    if (c == NULL || name == NULL) {
        return c == NULL ? NGX_HTTP_INTERNAL_SERVER_ERROR
                         : ngx_http_cinematch_send_error(r,
                               NGX_HTTP_NOT_FOUND, "not_found",
                               "no such model");
    }

    json_object_foreach(ctx->json, key, val) {
        if (ngx_strcmp(key, "version") != 0 && ngx_strcmp(key, "share") != 0)
        {
            return ngx_http_cinematch_send_invalid(r, key, "unknown field");
        }
    }

    version = json_object_get(ctx->json, "version");

    if (!json_is_integer(version) || json_integer_value(version) < 1
        || json_integer_value(version) > NGX_MAX_INT32_VALUE)
    {
        return ngx_http_cinematch_send_invalid(r, "version",
                                               "required: a version number");
    }

    v = json_integer_value(version);

    /* a number in [0, 1] with at most 4 decimals: basis points, as the
     * daemons and nginx route by (cinematch/canary.h) */

    share = json_object_get(ctx->json, "share");
    s = json_is_number(share) ? json_number_value(share) : -1.0;
    bp = (s >= 0.0 && s <= 1.0) ? (uint32_t) (s * CM_CANARY_BUCKETS + 0.5)
                                : 0;

    if (!(s >= 0.0 && s <= 1.0)
        || ngx_abs(s * CM_CANARY_BUCKETS - (double) bp) > 1e-6)
    {
        return ngx_http_cinematch_send_invalid(r, "share",
                   "required: a number from 0 to 1 with at most 4 decimals");
    }

    cq = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_canary_t));
    p = ngx_pnalloc(r->pool, sizeof("0.0000"));

    if (cq == NULL || p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *ngx_sprintf(p, "%uD.%04uD", bp / CM_CANARY_BUCKETS,
                 bp % CM_CANARY_BUCKETS) = '\0';

    cq->values[0] = name;
    cq->values[1] = ngx_http_cinematch_models_num(r, v);
    cq->values[2] = (const char *) p;
    cq->values[3] = ngx_http_cinematch_models_num(r, c->user_id);

    if (cq->values[1] == NULL || cq->values[3] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_artifact_check(r, name, cq->values[1],
                                             ngx_http_cinematch_canary_run,
                                             cq);
}


static ngx_int_t
ngx_http_cinematch_canary_run(ngx_http_request_t *r, void *data)
{
    ngx_http_cinematch_canary_t *cq = data;

    return ngx_http_cinematch_models_query(r, ngx_http_cinematch_canary_sql,
                                           4, cq->values);
}


/* ---- DELETE /api/v1/models/{name}/canary ---- */

ngx_int_t
ngx_http_cinematch_models_canary_stop_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    char                          *name;
    ngx_http_cinematch_caller_t   *c;
    ngx_http_cinematch_canary_t   *cq;

    c = ngx_http_cinematch_caller(r);
    name = ngx_http_cinematch_models_name(r, &ctx->params[0]);

    if (c == NULL || name == NULL) {
        return c == NULL ? NGX_HTTP_INTERNAL_SERVER_ERROR
                         : ngx_http_cinematch_send_error(r,
                               NGX_HTTP_NOT_FOUND, "not_found",
                               "no such model");
    }

    cq = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_canary_t));
    if (cq == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cq->values[0] = name;
    cq->values[1] = ngx_http_cinematch_models_num(r, c->user_id);

    if (cq->values[1] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_models_query(r,
                                           ngx_http_cinematch_canary_stop_sql,
                                           2, cq->values);
}


/* ---- helpers ---- */

static ngx_int_t
ngx_http_cinematch_models_query(ngx_http_request_t *r, const char *sql,
    int n, const char *const *values)
{
    switch (ngx_http_cinematch_pg_query(r, sql, n, values,
                                        ngx_http_cinematch_models_done,
                                        NULL))
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
ngx_http_cinematch_models_done(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    u_char      *p;
    size_t       len;
    const char  *state;

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

        /* the registry's own refusals (sql/015): their text is ours */

        if (ngx_strcmp(state, "P0002") == 0) {
            return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                                                 "not_found",
                                                 "no such version");
        }

        if (ngx_strcmp(state, "55000") == 0) {
            return ngx_http_cinematch_send_error(r, NGX_HTTP_CONFLICT,
                       "conflict",
                       "only a staging version (or the canary itself) can "
                       "be the canary");
        }

        if (ngx_strcmp(state, "22023") == 0) {
            return ngx_http_cinematch_send_invalid(r, "share",
                       "required: a number from 0 to 1 with at most 4 "
                       "decimals");
        }

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cinematch: registry change failed (%s): %s", state,
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

        return ngx_http_cinematch_send_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                             "internal", "the query failed");
    }

    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                                             "not_found", "no such model");
    }

    len = PQgetlength(res, 0, 0);

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(p, PQgetvalue(res, 0, 0), len);

    return ngx_http_cinematch_send_buf(r, NGX_HTTP_OK,
                                       &ngx_http_cinematch_models_type, p,
                                       len);
}


/* the {name} of the path as a C string when it is a model name
 * ([a-z][a-z0-9_-]{0,30}, the registry's domain), else NULL */

static char *
ngx_http_cinematch_models_name(ngx_http_request_t *r, ngx_str_t *name)
{
    u_char  *p, *s;

    if (name->len == 0 || name->len > 31
        || name->data[0] < 'a' || name->data[0] > 'z')
    {
        return NULL;
    }

    for (p = name->data + 1; p < name->data + name->len; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9')
              || *p == '_' || *p == '-'))
        {
            return NULL;
        }
    }

    s = ngx_pnalloc(r->pool, name->len + 1);
    if (s == NULL) {
        return NULL;
    }

    *ngx_cpymem(s, name->data, name->len) = '\0';

    return (char *) s;
}


static const char *
ngx_http_cinematch_models_num(ngx_http_request_t *r, int64_t v)
{
    u_char  *p;

    p = ngx_pnalloc(r->pool, NGX_INT64_LEN + 1);
    if (p == NULL) {
        return NULL;
    }

    *ngx_sprintf(p, "%L", v) = '\0';

    return (const char *) p;
}

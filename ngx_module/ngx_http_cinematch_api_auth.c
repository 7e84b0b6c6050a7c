
/*
 * ngx_http_cinematch_api_auth.c: POST /api/v1/auth/register and
 * POST /api/v1/auth/login (docs/SECURITY.md §4-5).
 *
 * Both are glue over libcinematch: field rules from validate.h, argon2id
 * from authkeys.h, tokens from jwt.h.  argon2id (~0.1 s, 64 MiB) runs on
 * an nginx thread pool, never on the event loop:
 *
 *   register: validate → [thread] hash → INSERT ... ON CONFLICT DO NOTHING
 *             → 201 {user} | 409
 *   login:    shape check → SELECT user → [thread] verify (or a dummy
 *             verify for an unknown email, same time) → sign JWT, new
 *             refresh family → INSERT refresh_tokens + last_login_at
 *             (+ the upgraded hash when parameters changed) → 200 tokens
 *
 * A thread job lives in the request pool; r->main->blocked keeps the pool
 * alive while a thread writes into it, even when the client goes away.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#if (NGX_THREADS)
#include <ngx_thread_pool.h>
#endif

#include "ngx_http_cinematch.h"
#include "ngx_http_cinematch_auth.h"

#include "cinematch/common.h"
#include "cinematch/authkeys.h"
#include "cinematch/jwt.h"
#include "cinematch/validate.h"


#define NGX_HTTP_CINEMATCH_PW_HASH     0
#define NGX_HTTP_CINEMATCH_PW_VERIFY   1

#define NGX_HTTP_CINEMATCH_MAX_UNKNOWN 8    /* unknown fields reported */


typedef struct {
    ngx_str_t                       secret_file;
    ngx_str_t                       previous_secret_file;
    ngx_str_t                       issuer;
    ngx_str_t                       audience;
    time_t                          access_ttl;
    time_t                          refresh_ttl;
    time_t                          leeway;
    ngx_str_t                       pool_name;
#if (NGX_THREADS)
    ngx_thread_pool_t              *pool;
#endif
    cm_jwt_keyring_t               *ring;        /* NULL: login disabled */
} ngx_http_cinematch_auth_main_conf_t;


typedef struct ngx_http_cinematch_pw_job_s  ngx_http_cinematch_pw_job_t;

typedef ngx_int_t (*ngx_http_cinematch_pw_next_pt)(ngx_http_request_t *r,
    ngx_http_cinematch_pw_job_t *job);

struct ngx_http_cinematch_pw_job_s {
    ngx_http_request_t             *request;
    ngx_uint_t                      op;          /* PW_HASH, PW_VERIFY */
    u_char                         *password;    /* zeroed by the thread */
    size_t                          password_len;
    char                           *stored;      /* VERIFY: NULL = dummy */
    char                            hash[CM_PWHASH_STRLEN];
    int                             rc;          /* CM_OK, CM_AUTH_*, ... */
    unsigned                        rehash:1;    /* hash holds an upgrade */
    ngx_http_cinematch_pw_next_pt   next;
};


/* the state of one register or login request (ctx->data) */
typedef struct {
    ngx_http_cinematch_auth_main_conf_t  *amcf;
    char                                 *email;
    char                                 *display_name;
    char                                 *user_id;
    char                                 *role;
    const char                           *values[7];
    u_char                                expires[NGX_TIME_T_LEN + 1];
    cm_token_t                            refresh;
    char                                  access[CM_JWT_MAX_TOKEN + 1];
    size_t                                access_len;
} ngx_http_cinematch_auth_state_t;


static void *ngx_http_cinematch_auth_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_cinematch_auth_init_main_conf(ngx_conf_t *cf,
    void *conf);
static char *ngx_http_cinematch_auth_load_key(ngx_conf_t *cf, ngx_str_t *file,
    cm_jwt_key_t *key);

static ngx_http_cinematch_auth_state_t *ngx_http_cinematch_auth_state(
    ngx_http_request_t *r, ngx_http_cinematch_ctx_t *ctx);
static ngx_int_t ngx_http_cinematch_auth_fields(ngx_http_request_t *r,
    json_t *body, const char **allowed, json_t *fields);
static ngx_int_t ngx_http_cinematch_auth_string(json_t *body,
    const char *name, ngx_uint_t required, json_t *fields, ngx_str_t *out);
static ngx_int_t ngx_http_cinematch_send_fields(ngx_http_request_t *r,
    json_t *fields);
static ngx_int_t ngx_http_cinematch_no_store(ngx_http_request_t *r);
static char *ngx_http_cinematch_pstrdup(ngx_pool_t *pool, const char *s,
    size_t len);
static ngx_int_t ngx_http_cinematch_pg_failed(ngx_http_request_t *r,
    PGresult *res, const char *err, ExecStatusType want);
static ngx_int_t ngx_http_cinematch_pg_queue(ngx_http_request_t *r,
    const char *sql, int nparams, const char *const *values,
    ngx_http_cinematch_pg_handler_pt handler, void *data);

static ngx_int_t ngx_http_cinematch_pw_post(ngx_http_request_t *r,
    ngx_http_cinematch_auth_main_conf_t *amcf, ngx_uint_t op,
    ngx_str_t *password, char *stored, ngx_http_cinematch_pw_next_pt next);
#if (NGX_THREADS)
static void ngx_http_cinematch_pw_run(void *data, ngx_log_t *log);
static void ngx_http_cinematch_pw_done(ngx_event_t *ev);
#endif

static ngx_int_t ngx_http_cinematch_register_hashed(ngx_http_request_t *r,
    ngx_http_cinematch_pw_job_t *job);
static ngx_int_t ngx_http_cinematch_register_done(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_login_found(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_login_verified(ngx_http_request_t *r,
    ngx_http_cinematch_pw_job_t *job);
static ngx_int_t ngx_http_cinematch_login_done(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);


static ngx_command_t  ngx_http_cinematch_auth_commands[] = {

    { ngx_string("cinematch_jwt_secret_file"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_cinematch_auth_main_conf_t, secret_file),
      NULL },

    { ngx_string("cinematch_jwt_previous_secret_file"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_cinematch_auth_main_conf_t, previous_secret_file),
      NULL },

    { ngx_string("cinematch_jwt_issuer"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_cinematch_auth_main_conf_t, issuer),
      NULL },

    { ngx_string("cinematch_jwt_audience"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_cinematch_auth_main_conf_t, audience),
      NULL },

    { ngx_string("cinematch_jwt_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_cinematch_auth_main_conf_t, access_ttl),
      NULL },

    { ngx_string("cinematch_refresh_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_cinematch_auth_main_conf_t, refresh_ttl),
      NULL },

    { ngx_string("cinematch_jwt_leeway"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_cinematch_auth_main_conf_t, leeway),
      NULL },

    { ngx_string("cinematch_password_thread_pool"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_cinematch_auth_main_conf_t, pool_name),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_cinematch_auth_module_ctx = {
    NULL,                                  /* preconfiguration */
    NULL,                                  /* postconfiguration */

    ngx_http_cinematch_auth_create_main_conf,  /* create main configuration */
    ngx_http_cinematch_auth_init_main_conf,    /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    NULL,                                  /* create location configuration */
    NULL                                   /* merge location configuration */
};


ngx_module_t  ngx_http_cinematch_auth_module = {
    NGX_MODULE_V1,
    &ngx_http_cinematch_auth_module_ctx,   /* module context */
    ngx_http_cinematch_auth_commands,      /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static const char  *ngx_http_cinematch_register_fields[] = {
    "email", "password", "display_name", NULL
};

static const char  *ngx_http_cinematch_login_fields[] = {
    "email", "password", NULL
};


static void *
ngx_http_cinematch_auth_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_cinematch_auth_main_conf_t  *amcf;

    amcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_cinematch_auth_main_conf_t));
    if (amcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     amcf->secret_file = { 0, NULL };
     *     amcf->previous_secret_file = { 0, NULL };
     *     amcf->issuer = { 0, NULL };
     *     amcf->audience = { 0, NULL };
     *     amcf->pool_name = { 0, NULL };
     *     amcf->ring = NULL;
     */

    amcf->access_ttl = NGX_CONF_UNSET;
    amcf->refresh_ttl = NGX_CONF_UNSET;
    amcf->leeway = NGX_CONF_UNSET;

    return amcf;
}


static char *
ngx_http_cinematch_auth_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_cinematch_auth_main_conf_t *amcf = conf;

    char           err[256];
    u_char        *iss, *aud;
    cm_jwt_key_t  *keys;

    ngx_conf_init_value(amcf->access_ttl, 900);
    ngx_conf_init_value(amcf->refresh_ttl, 30 * 86400);
    ngx_conf_init_value(amcf->leeway, 30);

    if (amcf->issuer.len == 0) {
        ngx_str_set(&amcf->issuer, "cinematch");
    }

    if (amcf->audience.len == 0) {
        ngx_str_set(&amcf->audience, "cinematch-api");
    }

    if (amcf->access_ttl < 60 || amcf->access_ttl > 86400) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cinematch_jwt_ttl must be 1m..1d");
        return NGX_CONF_ERROR;
    }

    if (amcf->refresh_ttl < amcf->access_ttl) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cinematch_refresh_ttl must not be shorter than "
                           "cinematch_jwt_ttl");
        return NGX_CONF_ERROR;
    }

#if (NGX_THREADS)
    /* "default" when not named: nginx creates it (32 threads) unless a
     * "thread_pool default ...;" line sizes it; each thread may hold one
     * 64 MiB argon2id block */
    amcf->pool = ngx_thread_pool_add(cf, amcf->pool_name.len
                                         ? &amcf->pool_name : NULL);
    if (amcf->pool == NULL) {
        return NGX_CONF_ERROR;
    }
#endif

    if (amcf->secret_file.len == 0) {
        if (amcf->previous_secret_file.len) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "cinematch_jwt_previous_secret_file needs "
                               "cinematch_jwt_secret_file");
            return NGX_CONF_ERROR;
        }

        return NGX_CONF_OK;      /* login answers 503 until configured */
    }

    keys = ngx_pcalloc(cf->pool, 2 * sizeof(cm_jwt_key_t));
    amcf->ring = ngx_pcalloc(cf->pool, sizeof(cm_jwt_keyring_t));
    iss = ngx_pnalloc(cf->pool, amcf->issuer.len + 1);
    aud = ngx_pnalloc(cf->pool, amcf->audience.len + 1);

    if (keys == NULL || amcf->ring == NULL || iss == NULL || aud == NULL) {
        return NGX_CONF_ERROR;
    }

    *ngx_cpymem(iss, amcf->issuer.data, amcf->issuer.len) = '\0';
    *ngx_cpymem(aud, amcf->audience.data, amcf->audience.len) = '\0';

    if (ngx_http_cinematch_auth_load_key(cf, &amcf->secret_file, &keys[0])
        != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (amcf->previous_secret_file.len
        && ngx_http_cinematch_auth_load_key(cf, &amcf->previous_secret_file,
                                            &keys[1])
           != NGX_CONF_OK)
    {
        return NGX_CONF_ERROR;
    }

    if (cm_jwt_keyring_init(amcf->ring, &keys[0],
                            amcf->previous_secret_file.len ? &keys[1] : NULL,
                            (char *) iss, (char *) aud, amcf->leeway, err,
                            sizeof(err))
        != CM_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%s", err);
        return NGX_CONF_ERROR;
    }

    /* the ring holds copies; the loose keys are not needed any more */
    ngx_explicit_memzero(keys, 2 * sizeof(cm_jwt_key_t));

    return NGX_CONF_OK;
}


static char *
ngx_http_cinematch_auth_load_key(ngx_conf_t *cf, ngx_str_t *file,
    cm_jwt_key_t *key)
{
    char       err[512];
    ngx_str_t  name;

    name = *file;

    /* relative to the prefix, as nginx does for its own files; the
     * result is NUL-terminated */
    if (ngx_conf_full_name(cf->cycle, &name, 1) != NGX_OK) {
        return NGX_CONF_ERROR;
    }

    if (cm_jwt_key_load_file(key, (char *) name.data, err, sizeof(err))
        != CM_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%s", err);
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


static ngx_http_cinematch_auth_state_t *
ngx_http_cinematch_auth_state(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    ngx_http_cinematch_auth_state_t  *st;

    st = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_auth_state_t));
    if (st == NULL) {
        return NULL;
    }

    st->amcf = ngx_http_get_module_main_conf(r,
                                             ngx_http_cinematch_auth_module);
    ctx->data = st;

    return st;
}


/* Unknown fields are an error: a typo ("pasword") must not pass silently. */

static ngx_int_t
ngx_http_cinematch_auth_fields(ngx_http_request_t *r, json_t *body,
    const char **allowed, json_t *fields)
{
    json_t       *v;
    ngx_uint_t    i, unknown;
    const char   *key;

    unknown = 0;

    json_object_foreach(body, key, v) {

        for (i = 0; allowed[i] != NULL; i++) {
            if (ngx_strcmp(key, allowed[i]) == 0) {
                break;
            }
        }

        if (allowed[i] == NULL) {
            if (unknown++ < NGX_HTTP_CINEMATCH_MAX_UNKNOWN
                && json_object_set_new(fields, key,
                                       json_string("unknown field"))
                   != 0)
            {
                return NGX_ERROR;
            }
        }
    }

    return NGX_OK;
}


/* A string field: out->data NULL when absent or null (and not required). */

static ngx_int_t
ngx_http_cinematch_auth_string(json_t *body, const char *name,
    ngx_uint_t required, json_t *fields, ngx_str_t *out)
{
    json_t  *v;

    ngx_str_null(out);

    v = json_object_get(body, name);

    if (v == NULL || json_is_null(v)) {
        if (required) {
            return json_object_set_new(fields, name,
                                       json_string("is required"))
                   == 0 ? NGX_DECLINED : NGX_ERROR;
        }

        return NGX_OK;
    }

    if (!json_is_string(v)) {
        return json_object_set_new(fields, name,
                                   json_string("must be a string"))
               == 0 ? NGX_DECLINED : NGX_ERROR;
    }

    out->data = (u_char *) json_string_value(v);
    out->len = json_string_length(v);

    return NGX_OK;
}


static ngx_int_t
ngx_http_cinematch_send_fields(ngx_http_request_t *r, json_t *fields)
{
    json_t                    *doc;
    ngx_http_cinematch_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_cinematch_module);

    doc = json_pack("{s:{s:s, s:s, s:s%, s:O}}",
                    "error",
                    "code", "validation_failed",
                    "message", "some fields are invalid",
                    "request_id",
                    ctx->request_id.len ? (char *) ctx->request_id.data : "",
                    ctx->request_id.len,
                    "fields", fields);

    return ngx_http_cinematch_send_json(r, 422, doc);
}


static ngx_int_t
ngx_http_cinematch_no_store(ngx_http_request_t *r)
{
    ngx_str_t  key, value;

    ngx_str_set(&key, "Cache-Control");
    ngx_str_set(&value, "no-store");

    if (ngx_http_cinematch_add_header(r, &key, &value) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_str_set(&key, "Pragma");
    ngx_str_set(&value, "no-cache");

    return ngx_http_cinematch_add_header(r, &key, &value);
}


static char *
ngx_http_cinematch_pstrdup(ngx_pool_t *pool, const char *s, size_t len)
{
    u_char  *p;

    p = ngx_pnalloc(pool, len + 1);
    if (p == NULL) {
        return NULL;
    }

    *ngx_cpymem(p, s, len) = '\0';

    return (char *) p;
}


/*
 * The common failure paths of a query: the pool could not run it (503),
 * or PostgreSQL refused it (500, its message logged and never sent).
 * NGX_DECLINED: the result is usable.
 */

static ngx_int_t
ngx_http_cinematch_pg_failed(ngx_http_request_t *r, PGresult *res,
    const char *err, ExecStatusType want)
{
    if (err != NULL) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             "database unavailable");
    }

    if (PQresultStatus(res) != want) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cinematch: auth query failed: %s",
                      PQresultErrorMessage(res));

        return ngx_http_cinematch_send_error(r,
                                             NGX_HTTP_INTERNAL_SERVER_ERROR,
                                             "internal", "internal error");
    }

    return NGX_DECLINED;
}


static ngx_int_t
ngx_http_cinematch_pg_queue(ngx_http_request_t *r, const char *sql,
    int nparams, const char *const *values,
    ngx_http_cinematch_pg_handler_pt handler, void *data)
{
    switch (ngx_http_cinematch_pg_query(r, sql, nparams, values, handler,
                                        data))
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


/* ---- the password thread job ---- */

static ngx_int_t
ngx_http_cinematch_pw_post(ngx_http_request_t *r,
    ngx_http_cinematch_auth_main_conf_t *amcf, ngx_uint_t op,
    ngx_str_t *password, char *stored, ngx_http_cinematch_pw_next_pt next)
{
#if (NGX_THREADS)
    ngx_thread_task_t            *task;
    ngx_http_cinematch_pw_job_t  *job;

    task = ngx_thread_task_alloc(r->pool,
                                 sizeof(ngx_http_cinematch_pw_job_t));
    if (task == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    job = task->ctx;
    ngx_memzero(job, sizeof(ngx_http_cinematch_pw_job_t));

    job->request = r;
    job->op = op;
    job->stored = stored;
    job->next = next;
    job->password_len = password->len;

    /* the thread gets its own copy, zeroed when it is done */
    job->password = ngx_pnalloc(r->pool, password->len ? password->len : 1);
    if (job->password == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(job->password, password->data, password->len);

    task->handler = ngx_http_cinematch_pw_run;
    task->event.handler = ngx_http_cinematch_pw_done;
    task->event.data = job;

    if (ngx_thread_task_post(amcf->pool, task) != NGX_OK) {
        ngx_explicit_memzero(job->password, job->password_len);

        /* the queue is full: logins are arriving faster than the pool
         * hashes; shed them rather than queue without bound */
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             "too many logins, retry");
    }

    r->main->blocked++;
    ngx_http_cinematch_wait(r);

    return NGX_DONE;

#else
    return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                         "unavailable",
                                         "nginx was built without threads");
#endif
}


#if (NGX_THREADS)

/* In a pool thread: no nginx calls, only the job's own memory. */

static void
ngx_http_cinematch_pw_run(void *data, ngx_log_t *log)
{
    ngx_http_cinematch_pw_job_t *job = data;

    const char  *pw = (const char *) job->password;

    if (job->op == NGX_HTTP_CINEMATCH_PW_HASH) {
        job->rc = cm_password_hash(job->hash, pw, job->password_len, NULL);

    } else if (job->stored == NULL) {
        job->rc = cm_password_verify_dummy(pw, job->password_len, NULL);

    } else {
        job->rc = cm_password_verify(job->stored, pw, job->password_len);

        if (job->rc == CM_OK
            && cm_password_needs_rehash(job->stored, NULL) == 1
            && cm_password_hash(job->hash, pw, job->password_len, NULL)
               == CM_OK)
        {
            job->rehash = 1;
        }
    }

    ngx_explicit_memzero(job->password, job->password_len);
}


/* Back on the event loop. */

static void
ngx_http_cinematch_pw_done(ngx_event_t *ev)
{
    ngx_http_cinematch_pw_job_t *job = ev->data;

    ngx_http_request_t  *r;

    r = job->request;
    r->main->blocked--;

    if (r->connection->error) {
        /* the client left while the thread ran; the pool survived only
         * because of blocked, and goes now */
        ngx_http_cinematch_finish(r, NGX_HTTP_CLIENT_CLOSED_REQUEST);
        return;
    }

    ngx_http_cinematch_finish(r, job->next(r, job));
}

#endif


/* ---- POST /api/v1/auth/register ---- */

ngx_int_t
ngx_http_cinematch_register_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    json_t                           *fields;
    ngx_int_t                         rc;
    ngx_str_t                         email, password, name;
    cm_field_error_t                  fe;
    ngx_http_cinematch_auth_state_t  *st;

    st = ngx_http_cinematch_auth_state(r, ctx);
    fields = ngx_http_cinematch_json_track(r, json_object());

    if (st == NULL || fields == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_cinematch_auth_fields(r, ctx->json,
                                       ngx_http_cinematch_register_fields,
                                       fields)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_cinematch_auth_string(ctx->json, "email", 1, fields,
                                        &email);
    if (rc == NGX_OK && cm_validate_email((char *) email.data, email.len, &fe)
                        != CM_OK)
    {
        rc = json_object_set_new(fields, "email", json_string(fe.message));
    }

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_cinematch_auth_string(ctx->json, "password", 1, fields,
                                        &password);
    if (rc == NGX_OK && cm_validate_password((char *) password.data,
                                             password.len, &fe)
                        != CM_OK)
    {
        rc = json_object_set_new(fields, "password", json_string(fe.message));
    }

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_cinematch_auth_string(ctx->json, "display_name", 0, fields,
                                        &name);
    if (rc == NGX_OK && name.data != NULL
        && cm_validate_display_name((char *) name.data, name.len, &fe)
           != CM_OK)
    {
        rc = json_object_set_new(fields, "display_name",
                                 json_string(fe.message));
    }

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (json_object_size(fields) > 0) {
        return ngx_http_cinematch_send_fields(r, fields);
    }

    st->email = ngx_http_cinematch_pstrdup(r->pool, (char *) email.data,
                                           email.len);
    if (st->email == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (name.data != NULL) {
        st->display_name = ngx_http_cinematch_pstrdup(r->pool,
                                                      (char *) name.data,
                                                      name.len);
        if (st->display_name == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    return ngx_http_cinematch_pw_post(r, st->amcf, NGX_HTTP_CINEMATCH_PW_HASH,
                                      &password, NULL,
                                      ngx_http_cinematch_register_hashed);
}


static ngx_int_t
ngx_http_cinematch_register_hashed(ngx_http_request_t *r,
    ngx_http_cinematch_pw_job_t *job)
{
    ngx_http_cinematch_ctx_t         *ctx;
    ngx_http_cinematch_auth_state_t  *st;

    ctx = ngx_http_get_module_ctx(r, ngx_http_cinematch_module);
    st = ctx->data;

    if (job->rc != CM_OK) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "cinematch: password hashing failed: %s",
                      cm_auth_strerror(job->rc));
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             "cannot register now");
    }

    st->values[0] = st->email;
    st->values[1] = job->hash;
    st->values[2] = st->display_name;     /* NULL: SQL NULL */

    /* ON CONFLICT on the lower(email) index: one round trip, and two
     * concurrent registrations of one address cannot both succeed */
    return ngx_http_cinematch_pg_queue(r,
        "INSERT INTO users (email, password_hash, display_name)"
        " VALUES ($1, $2, $3)"
        " ON CONFLICT ((lower(email))) DO NOTHING"
        " RETURNING id, email, role, display_name,"
        " to_char(created_at AT TIME ZONE 'UTC',"
        " 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')",
        3, st->values, ngx_http_cinematch_register_done, st);
}


static ngx_int_t
ngx_http_cinematch_register_done(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    json_t     *user;
    ngx_int_t   rc;

    rc = ngx_http_cinematch_pg_failed(r, res, err, PGRES_TUPLES_OK);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    if (PQntuples(res) == 0) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_CONFLICT,
                                             "conflict",
                                             "an account with this email "
                                             "already exists");
    }

    user = json_pack("{s:{s:I, s:s, s:s, s:o, s:s}}",
                     "user",
                     "id", (json_int_t) ngx_atoof((u_char *)
                                                  PQgetvalue(res, 0, 0),
                                                  PQgetlength(res, 0, 0)),
                     "email", PQgetvalue(res, 0, 1),
                     "role", PQgetvalue(res, 0, 2),
                     "display_name", PQgetisnull(res, 0, 3)
                                     ? json_null()
                                     : json_string(PQgetvalue(res, 0, 3)),
                     "created_at", PQgetvalue(res, 0, 4));

    if (ngx_http_cinematch_no_store(r) != NGX_OK) {
        json_decref(user);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_send_json(r, NGX_HTTP_CREATED, user);
}


/* ---- POST /api/v1/auth/login ---- */

ngx_int_t
ngx_http_cinematch_login_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    json_t                           *fields;
    ngx_int_t                         rc;
    ngx_str_t                         email, password;
    ngx_http_cinematch_auth_state_t  *st;

    st = ngx_http_cinematch_auth_state(r, ctx);
    fields = ngx_http_cinematch_json_track(r, json_object());

    if (st == NULL || fields == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (st->amcf->ring == NULL) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "cinematch: login needs cinematch_jwt_secret_file");
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             "login is not configured");
    }

    if (ngx_http_cinematch_auth_fields(r, ctx->json,
                                       ngx_http_cinematch_login_fields,
                                       fields)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* only the shape is checked here: the rules are register's business,
     * and a login must not tell which rule an old password breaks */
    rc = ngx_http_cinematch_auth_string(ctx->json, "email", 1, fields,
                                        &email);
    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_cinematch_auth_string(ctx->json, "password", 1, fields,
                                        &password);
    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (json_object_size(fields) > 0) {
        return ngx_http_cinematch_send_fields(r, fields);
    }

    if (email.len > CM_EMAIL_MAX || password.len > CM_PASSWORD_MAX
        || password.len == 0)
    {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_UNAUTHORIZED,
                                             "unauthenticated",
                                             "invalid email or password");
    }

    st->email = ngx_http_cinematch_pstrdup(r->pool, (char *) email.data,
                                           email.len);
    if (st->email == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    st->values[0] = st->email;

    return ngx_http_cinematch_pg_queue(r,
        "SELECT id, password_hash, role FROM users"
        " WHERE lower(email) = lower($1) AND disabled_at IS NULL",
        1, st->values, ngx_http_cinematch_login_found, st);
}


static ngx_int_t
ngx_http_cinematch_login_found(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    ngx_http_cinematch_auth_state_t *st = data;

    char                      *stored;
    json_t                    *v;
    ngx_int_t                  rc;
    ngx_str_t                  password;
    ngx_http_cinematch_ctx_t  *ctx;

    rc = ngx_http_cinematch_pg_failed(r, res, err, PGRES_TUPLES_OK);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    stored = NULL;

    if (PQntuples(res) == 1) {
        st->user_id = ngx_http_cinematch_pstrdup(r->pool,
                                                 PQgetvalue(res, 0, 0),
                                                 PQgetlength(res, 0, 0));
        stored = ngx_http_cinematch_pstrdup(r->pool, PQgetvalue(res, 0, 1),
                                            PQgetlength(res, 0, 1));
        st->role = ngx_http_cinematch_pstrdup(r->pool, PQgetvalue(res, 0, 2),
                                              PQgetlength(res, 0, 2));

        if (st->user_id == NULL || stored == NULL || st->role == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    /* the parsed body outlives the query: take the password from it */
    ctx = ngx_http_get_module_ctx(r, ngx_http_cinematch_module);
    v = json_object_get(ctx->json, "password");
    password.data = (u_char *) json_string_value(v);
    password.len = json_string_length(v);

    return ngx_http_cinematch_pw_post(r, st->amcf,
                                      NGX_HTTP_CINEMATCH_PW_VERIFY,
                                      &password, stored,
                                      ngx_http_cinematch_login_verified);
}


static ngx_int_t
ngx_http_cinematch_login_verified(ngx_http_request_t *r,
    ngx_http_cinematch_pw_job_t *job)
{
    u_char                           *p;
    ngx_http_cinematch_ctx_t         *ctx;
    cm_jwt_claims_t                   claims;
    ngx_http_cinematch_auth_state_t  *st;

    ctx = ngx_http_get_module_ctx(r, ngx_http_cinematch_module);
    st = ctx->data;

    if (job->rc != CM_OK || job->stored == NULL) {
        if (job->rc != CM_AUTH_EMISMATCH) {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "cinematch: login: stored hash unusable: %s",
                          cm_auth_strerror(job->rc));
        }

        return ngx_http_cinematch_send_error(r, NGX_HTTP_UNAUTHORIZED,
                                             "unauthenticated",
                                             "invalid email or password");
    }

    ngx_memzero(&claims, sizeof(cm_jwt_claims_t));

    if (cm_token_generate(&st->refresh, CM_TOKEN_REFRESH, ngx_time(),
                          st->amcf->refresh_ttl)
        != CM_OK
        || cm_uuid_v4(claims.jti) != CM_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_cpystrn((u_char *) claims.sub, (u_char *) st->user_id,
                sizeof(claims.sub));
    ngx_cpystrn((u_char *) claims.role, (u_char *) st->role,
                sizeof(claims.role));
    ngx_cpystrn((u_char *) claims.sid, (u_char *) st->refresh.family,
                sizeof(claims.sid));
    claims.iat = ngx_time();
    claims.exp = claims.iat + st->amcf->access_ttl;

    if (cm_jwt_sign(st->amcf->ring, &claims, st->access, sizeof(st->access),
                    &st->access_len)
        != CM_OK)
    {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "cinematch: cannot sign an access token");
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_sprintf(st->expires, "%T", (time_t) st->refresh.expires_at);
    *p = '\0';

    st->values[0] = st->user_id;
    st->values[1] = st->refresh.sha256;
    st->values[2] = st->refresh.family;
    st->values[3] = (char *) st->expires;
    st->values[4] = NULL;
    st->values[5] = NULL;
    st->values[6] = job->rehash ? job->hash : NULL;

    if (r->headers_in.user_agent != NULL) {
        st->values[4] = ngx_http_cinematch_pstrdup(r->pool,
                                 (char *) r->headers_in.user_agent->value.data,
                                 ngx_min(r->headers_in.user_agent->value.len,
                                         512));
        if (st->values[4] == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (r->connection->sockaddr->sa_family == AF_INET
#if (NGX_HAVE_INET6)
        || r->connection->sockaddr->sa_family == AF_INET6
#endif
       )
    {
        st->values[5] = ngx_http_cinematch_pstrdup(r->pool,
                                 (char *) r->connection->addr_text.data,
                                 r->connection->addr_text.len);
        if (st->values[5] == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    /* a new refresh family, the login time and (after a parameter change)
     * the upgraded hash, in one statement */
    return ngx_http_cinematch_pg_queue(r,
        "WITH rt AS ("
        " INSERT INTO refresh_tokens (user_id, token_sha256, family_id,"
        " expires_at, user_agent, client_ip)"
        " VALUES ($1::bigint, $2, $3::uuid, to_timestamp($4::bigint),"
        " $5, $6::inet) RETURNING user_id)"
        " UPDATE users SET last_login_at = now(),"
        " password_hash = COALESCE($7, users.password_hash)"
        " FROM rt WHERE users.id = rt.user_id RETURNING users.id",
        7, st->values, ngx_http_cinematch_login_done, st);
}


static ngx_int_t
ngx_http_cinematch_login_done(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    ngx_http_cinematch_auth_state_t *st = data;

    json_t     *doc;
    ngx_int_t   rc;

    rc = ngx_http_cinematch_pg_failed(r, res, err, PGRES_TUPLES_OK);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    if (PQntuples(res) != 1) {
        /* the account went away between the two queries */
        return ngx_http_cinematch_send_error(r, NGX_HTTP_UNAUTHORIZED,
                                             "unauthenticated",
                                             "invalid email or password");
    }

    doc = json_pack("{s:s%, s:s, s:s, s:I}",
                    "access_token", st->access, st->access_len,
                    "refresh_token", st->refresh.token,
                    "token_type", "Bearer",
                    "expires_in", (json_int_t) st->amcf->access_ttl);

    if (ngx_http_cinematch_no_store(r) != NGX_OK) {
        json_decref(doc);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_send_json(r, NGX_HTTP_OK, doc);
}

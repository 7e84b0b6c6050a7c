
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

#include "ngx_http_cinematch.h"
#include "ngx_http_cinematch_auth.h"

#include "cinematch/common.h"
#include "cinematch/authkeys.h"
#include "cinematch/jwt.h"
#include "cinematch/validate.h"
#include "cinematch/digest.h"


#define NGX_HTTP_CINEMATCH_PW_HASH     0
#define NGX_HTTP_CINEMATCH_PW_VERIFY   1

#define NGX_HTTP_CINEMATCH_MAX_UNKNOWN 8    /* unknown fields reported */




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
    cm_token_t                            onetime;    /* verify, reset */
    u_char                                ttl[NGX_TIME_T_LEN + 1];
    char                                  access[CM_JWT_MAX_TOKEN + 1];
    size_t                                access_len;

    /* me, refresh, logout, keys */
    ngx_http_cinematch_caller_t          *caller;
    char                                  caller_id[NGX_INT64_LEN + 1];
    char                                  sha[CM_SHA256_HEX_LEN + 1];
    char                                  scopes[256];
    cm_apikey_t                           key;
} ngx_http_cinematch_auth_state_t;


static void *ngx_http_cinematch_auth_create_main_conf(ngx_conf_t *cf);
static void *ngx_http_cinematch_auth_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_cinematch_auth_merge_loc_conf(ngx_conf_t *cf,
    void *parent, void *child);
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
static ngx_int_t ngx_http_cinematch_login_lookup(ngx_http_request_t *r);
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

    { ngx_string("cinematch_api_key_touch_interval"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_cinematch_auth_main_conf_t, key_touch),
      NULL },

    { ngx_string("cinematch_cors"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF
      |NGX_CONF_1MORE,
      ngx_http_cinematch_cors,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("cinematch_login_account_limit"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE12,
      ngx_http_cinematch_login_account_limit,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("cinematch_email_verification"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_cinematch_auth_main_conf_t, verify_email),
      NULL },

    { ngx_string("cinematch_verify_token_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_cinematch_auth_main_conf_t, verify_ttl),
      NULL },

    { ngx_string("cinematch_reset_token_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_cinematch_auth_main_conf_t, reset_ttl),
      NULL },

    { ngx_string("cinematch_rate_limit"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF
      |NGX_CONF_TAKE12,
      ngx_http_cinematch_rate_limit,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
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

    ngx_http_cinematch_auth_create_loc_conf,   /* create location configuration */
    ngx_http_cinematch_auth_merge_loc_conf     /* merge location configuration */
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
    amcf->key_touch = NGX_CONF_UNSET_MSEC;
    amcf->verify_email = NGX_CONF_UNSET;
    amcf->verify_ttl = NGX_CONF_UNSET;
    amcf->reset_ttl = NGX_CONF_UNSET;

    return amcf;
}


static void *
ngx_http_cinematch_auth_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_cinematch_auth_loc_conf_t  *alcf;

    alcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_cinematch_auth_loc_conf_t));
    if (alcf == NULL) {
        return NULL;
    }

    alcf->rl = NGX_CONF_UNSET_PTR;
    alcf->cors = NGX_CONF_UNSET_PTR;

    return alcf;
}


static char *
ngx_http_cinematch_auth_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child)
{
    ngx_http_cinematch_auth_loc_conf_t *prev = parent;
    ngx_http_cinematch_auth_loc_conf_t *conf = child;

    if (conf->rl == NGX_CONF_UNSET_PTR) {
        conf->rl = (prev->rl == NGX_CONF_UNSET_PTR) ? NULL : prev->rl;
        conf->rl_name = prev->rl_name;
    }

    ngx_conf_merge_ptr_value(conf->cors, prev->cors, NULL);

    return NGX_CONF_OK;
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
    ngx_conf_init_msec_value(amcf->key_touch, 60000);
    ngx_conf_init_value(amcf->verify_email, 1);
    ngx_conf_init_value(amcf->verify_ttl, 86400);
    ngx_conf_init_value(amcf->reset_ttl, 1800);

    if (amcf->verify_ttl < 60 || amcf->verify_ttl > 7 * 86400) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cinematch_verify_token_ttl must be 1m..7d");
        return NGX_CONF_ERROR;
    }

    if (amcf->reset_ttl < 60 || amcf->reset_ttl > 86400) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cinematch_reset_token_ttl must be 1m..1d");
        return NGX_CONF_ERROR;
    }

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

    if (st->amcf->verify_email) {
        u_char  *p;

        if (cm_token_generate(&st->onetime, CM_TOKEN_ONETIME, ngx_time(),
                              st->amcf->verify_ttl)
            != CM_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        p = ngx_sprintf(st->ttl, "%T", st->amcf->verify_ttl);
        *p = '\0';

        st->values[3] = st->onetime.sha256;
        st->values[4] = (char *) st->ttl;
        st->values[5] = st->onetime.token;

        /* the account, its verification token and the mail to send, in
         * one statement: either all three exist or none does */
        return ngx_http_cinematch_pg_queue(r,
            "WITH u AS ("
            " INSERT INTO users (email, password_hash, display_name)"
            " VALUES ($1, $2, $3)"
            " ON CONFLICT ((lower(email))) DO NOTHING"
            " RETURNING id, email, role, display_name, created_at),"
            " t AS ("
            " INSERT INTO user_tokens (user_id, purpose, token_sha256,"
            " expires_at)"
            " SELECT id, 'verify_email', $4,"
            " now() + make_interval(secs => $5::int) FROM u RETURNING id),"
            " m AS ("
            " INSERT INTO mail_outbox (token_id, kind, to_addr, token)"
            " SELECT t.id, 'verify_email', u.email, $6 FROM t, u)"
            " SELECT id, email, role, display_name,"
            " to_char(created_at AT TIME ZONE 'UTC',"
            " 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') FROM u",
            6, st->values, ngx_http_cinematch_register_done, st);
    }

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
    ngx_http_cinematch_auth_state_t *st = data;

    json_t     *user;
    ngx_int_t   rc;

    /* the verification token lives on in the outbox row only */
    ngx_explicit_memzero(&st->onetime, sizeof(cm_token_t));

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

    if (st->amcf->login_rl != NULL) {
        /* attempts per account, whoever makes them (per IP is the
         * location's cinematch_rate_limit): a refused attempt costs no
         * query and no argon2id */
        u_char     *lower;
        ngx_str_t   name, ident;

        lower = ngx_pnalloc(r->pool, email.len + 1);
        ident.data = ngx_pnalloc(r->pool, sizeof("login:")
                                          + CM_SHA256_HEX_LEN);
        if (lower == NULL || ident.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_strlow(lower, email.data, email.len);
        ngx_memcpy(ident.data, "login:", 6);

        if (cm_sha256_hex(lower, email.len, (char *) ident.data + 6)
            != CM_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ident.len = 6 + CM_SHA256_HEX_LEN;
        ngx_str_set(&name, "account");

        return ngx_http_cinematch_authn_take(r, st->amcf->login_rl, &name,
                                             &ident,
                                             ngx_http_cinematch_login_lookup);
    }

    return ngx_http_cinematch_login_lookup(r);
}


static ngx_int_t
ngx_http_cinematch_login_lookup(ngx_http_request_t *r)
{
    ngx_http_cinematch_ctx_t         *ctx;
    ngx_http_cinematch_auth_state_t  *st;

    ctx = ngx_http_get_module_ctx(r, ngx_http_cinematch_module);
    st = ctx->data;

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


/* ---- the endpoints behind the identity step (ROUTE_AUTH) ---- */

static ngx_int_t ngx_http_cinematch_me_done(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_refresh_done(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_refresh_reused(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_logout_denied(ngx_http_request_t *r,
    void *data, redisReply *reply);
static ngx_int_t ngx_http_cinematch_logout_done(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_key_created(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_key_listed(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_key_revoked(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_key_uncached(ngx_http_request_t *r,
    void *data, redisReply *reply);


/* at most 100 live API keys per user (the INSERT checks) */

static const char  *ngx_http_cinematch_refresh_fields[] = {
    "refresh_token", NULL
};

static const char  *ngx_http_cinematch_key_fields[] = {
    "name", "scopes", NULL
};

static ngx_str_t  ngx_http_cinematch_auth_json = ngx_string("application/json");


/* state for a request with a caller; NULL (and a 401 to send) without */

static ngx_http_cinematch_auth_state_t *
ngx_http_cinematch_auth_caller_state(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    u_char                           *p;
    ngx_http_cinematch_auth_state_t  *st;

    st = ngx_http_cinematch_auth_state(r, ctx);
    if (st == NULL) {
        return NULL;
    }

    st->caller = ngx_http_cinematch_caller(r);
    if (st->caller == NULL) {
        return NULL;
    }

    p = ngx_sprintf((u_char *) st->caller_id, "%L", st->caller->user_id);
    *p = '\0';

    return st;
}


/* ---- GET /api/v1/auth/me ---- */

ngx_int_t
ngx_http_cinematch_me_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    ngx_http_cinematch_auth_state_t  *st;

    st = ngx_http_cinematch_auth_caller_state(r, ctx);
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    st->values[0] = st->caller_id;

    return ngx_http_cinematch_pg_queue(r,
        "SELECT id, email, role, display_name,"
        " to_char(created_at AT TIME ZONE 'UTC',"
        " 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
        " email_verified_at IS NOT NULL"
        " FROM users WHERE id = $1::bigint AND disabled_at IS NULL",
        1, st->values, ngx_http_cinematch_me_done, st);
}


static ngx_int_t
ngx_http_cinematch_me_done(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    json_t     *user;
    ngx_int_t   rc;

    rc = ngx_http_cinematch_pg_failed(r, res, err, PGRES_TUPLES_OK);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    if (PQntuples(res) != 1) {
        /* a valid token of an account that was disabled or deleted */
        return ngx_http_cinematch_send_error(r, NGX_HTTP_UNAUTHORIZED,
                                             "unauthenticated",
                                             "the account is not active");
    }

    user = json_pack("{s:{s:I, s:s, s:s, s:o, s:s, s:b}}",
                     "user",
                     "id", (json_int_t) ngx_atoof((u_char *)
                                                  PQgetvalue(res, 0, 0),
                                                  PQgetlength(res, 0, 0)),
                     "email", PQgetvalue(res, 0, 1),
                     "role", PQgetvalue(res, 0, 2),
                     "display_name", PQgetisnull(res, 0, 3)
                                     ? json_null()
                                     : json_string(PQgetvalue(res, 0, 3)),
                     "created_at", PQgetvalue(res, 0, 4),
                     "email_verified", PQgetvalue(res, 0, 5)[0] == 't');

    if (ngx_http_cinematch_no_store(r) != NGX_OK) {
        json_decref(user);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_send_json(r, NGX_HTTP_OK, user);
}


/* ---- POST /api/v1/auth/refresh ---- */

ngx_int_t
ngx_http_cinematch_refresh_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    json_t                           *fields;
    ngx_int_t                         rc;
    ngx_str_t                         token;
    ngx_http_cinematch_auth_state_t  *st;

    st = ngx_http_cinematch_auth_state(r, ctx);
    fields = ngx_http_cinematch_json_track(r, json_object());

    if (st == NULL || fields == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (st->amcf->ring == NULL) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             "login is not configured");
    }

    if (ngx_http_cinematch_auth_fields(r, ctx->json,
                                       ngx_http_cinematch_refresh_fields,
                                       fields)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_cinematch_auth_string(ctx->json, "refresh_token", 1,
                                        fields, &token);
    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (json_object_size(fields) > 0) {
        return ngx_http_cinematch_send_fields(r, fields);
    }

    if (cm_token_hash((char *) token.data, token.len, CM_TOKEN_REFRESH,
                      st->sha)
        != CM_OK)
    {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_UNAUTHORIZED,
                                             "unauthenticated",
                                             "invalid refresh token");
    }

    if (cm_token_generate(&st->refresh, CM_TOKEN_REFRESH, ngx_time(),
                          st->amcf->refresh_ttl)
        != CM_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    st->values[0] = st->sha;
    st->values[1] = st->refresh.sha256;

    /* spend and rotate in one statement: the row lock lets one of two
     * concurrent uses through; the child keeps the family's expiry */
    return ngx_http_cinematch_pg_queue(r,
        "WITH spent AS ("
        " UPDATE refresh_tokens SET spent_at = now()"
        " WHERE token_sha256 = $1 AND spent_at IS NULL"
        " AND revoked_at IS NULL AND expires_at > now()"
        " RETURNING id, user_id, family_id, expires_at, user_agent,"
        " client_ip),"
        " child AS ("
        " INSERT INTO refresh_tokens (user_id, token_sha256, family_id,"
        " parent_id, expires_at, user_agent, client_ip)"
        " SELECT user_id, $2, family_id, id, expires_at, user_agent,"
        " client_ip FROM spent RETURNING user_id, family_id)"
        " SELECT u.id, u.role, child.family_id FROM child"
        " JOIN users u ON u.id = child.user_id WHERE u.disabled_at IS NULL",
        2, st->values, ngx_http_cinematch_refresh_done, st);
}


static ngx_int_t
ngx_http_cinematch_refresh_done(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    ngx_http_cinematch_auth_state_t *st = data;

    json_t           *doc;
    ngx_int_t         rc;
    cm_jwt_claims_t   claims;

    rc = ngx_http_cinematch_pg_failed(r, res, err, PGRES_TUPLES_OK);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    if (PQntuples(res) != 1) {
        /* unknown, expired, revoked or spent: if spent, this is a reuse
         * (a stolen token or a stolen child): the family dies */
        return ngx_http_cinematch_pg_queue(r,
            "UPDATE refresh_tokens SET revoked_at = now()"
            " WHERE family_id = (SELECT family_id FROM refresh_tokens"
            " WHERE token_sha256 = $1 AND spent_at IS NOT NULL)"
            " AND revoked_at IS NULL RETURNING user_id",
            1, st->values, ngx_http_cinematch_refresh_reused, st);
    }

    ngx_memzero(&claims, sizeof(cm_jwt_claims_t));

    if (PQgetlength(res, 0, 0) >= (int) sizeof(claims.sub)
        || PQgetlength(res, 0, 1) >= (int) sizeof(claims.role)
        || PQgetlength(res, 0, 2) >= (int) sizeof(claims.sid)
        || cm_uuid_v4(claims.jti) != CM_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_cpystrn((u_char *) claims.sub, (u_char *) PQgetvalue(res, 0, 0),
                sizeof(claims.sub));
    ngx_cpystrn((u_char *) claims.role, (u_char *) PQgetvalue(res, 0, 1),
                sizeof(claims.role));
    ngx_cpystrn((u_char *) claims.sid, (u_char *) PQgetvalue(res, 0, 2),
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


static ngx_int_t
ngx_http_cinematch_refresh_reused(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    ngx_int_t  rc;

    rc = ngx_http_cinematch_pg_failed(r, res, err, PGRES_TUPLES_OK);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    if (PQntuples(res) > 0) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "cinematch: spent refresh token reused: session of "
                      "user %s revoked", PQgetvalue(res, 0, 0));
    }

    if (ngx_http_cinematch_no_store(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_send_error(r, NGX_HTTP_UNAUTHORIZED,
                                         "unauthenticated",
                                         "invalid refresh token");
}


/* ---- POST /api/v1/auth/logout ---- */

ngx_int_t
ngx_http_cinematch_logout_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    time_t                            ttl;
    ngx_http_cinematch_auth_state_t  *st;

    st = ngx_http_cinematch_auth_caller_state(r, ctx);
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (st->caller->apikey) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_BAD_REQUEST,
                                             "invalid_request",
                                             "logout needs an access token; "
                                             "revoke API keys with "
                                             "DELETE /api/v1/keys/{id}");
    }

    /* the token is accepted until exp + leeway: deny it that long */
    ttl = st->caller->exp + st->amcf->leeway - ngx_time() + 1;
    if (ttl < 1) {
        ttl = 1;
    }

    switch (ngx_http_cinematch_redis_commandf(r,
                                ngx_http_cinematch_logout_denied, st,
                                "SET cm:deny:%s 1 EX %lld NX",
                                st->caller->jti, (long long) ttl))
    {
    case NGX_OK:
        return NGX_DONE;

    case NGX_DECLINED:
        return ngx_http_cinematch_logout_denied(r, st, NULL);

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}


static ngx_int_t
ngx_http_cinematch_logout_denied(ngx_http_request_t *r, void *data,
    redisReply *reply)
{
    ngx_http_cinematch_auth_state_t *st = data;

    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        /* documented trade-off: the access token stays usable until it
         * expires; the refresh family is revoked below either way */
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "cinematch: logout: access token not denylisted "
                      "(Redis unavailable)");
    }

    if (st->caller->sid[0] == '\0') {
        return ngx_http_cinematch_logout_done(r, st, NULL, NULL);
    }

    st->values[0] = st->caller->sid;
    st->values[1] = st->caller_id;

    return ngx_http_cinematch_pg_queue(r,
        "UPDATE refresh_tokens SET revoked_at = now()"
        " WHERE family_id = $1::uuid AND user_id = $2::bigint"
        " AND revoked_at IS NULL",
        2, st->values, ngx_http_cinematch_logout_done, st);
}


static ngx_int_t
ngx_http_cinematch_logout_done(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    ngx_int_t  rc;

    if (res != NULL || err != NULL) {
        rc = ngx_http_cinematch_pg_failed(r, res, err, PGRES_COMMAND_OK);
        if (rc != NGX_DECLINED) {
            return rc;
        }
    }

    if (ngx_http_cinematch_no_store(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_send_buf(r, NGX_HTTP_NO_CONTENT,
                                       &ngx_http_cinematch_auth_json,
                                       NULL, 0);
}


/* ---- /api/v1/keys: managed with a login session, not with a key ---- */

static ngx_int_t
ngx_http_cinematch_key_session(ngx_http_request_t *r,
    ngx_http_cinematch_auth_state_t *st)
{
    if (st->caller->apikey) {
        /* a key must not mint keys (a narrow key would widen itself) */
        return ngx_http_cinematch_send_error(r, NGX_HTTP_FORBIDDEN,
                                             "forbidden",
                                             "API keys are managed with an "
                                             "access token");
    }

    return NGX_DECLINED;
}


ngx_int_t
ngx_http_cinematch_key_create_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    json_t                           *fields, *scopes;
    uint32_t                          mask;
    ngx_int_t                         rc;
    ngx_str_t                         name;
    cm_field_error_t                  fe;
    ngx_http_cinematch_auth_state_t  *st;

    st = ngx_http_cinematch_auth_caller_state(r, ctx);
    fields = ngx_http_cinematch_json_track(r, json_object());

    if (st == NULL || fields == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_cinematch_key_session(r, st);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    if (ngx_http_cinematch_auth_fields(r, ctx->json,
                                       ngx_http_cinematch_key_fields, fields)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_cinematch_auth_string(ctx->json, "name", 1, fields, &name);
    if (rc == NGX_OK && cm_validate_key_name((char *) name.data, name.len,
                                             &fe)
                        != CM_OK)
    {
        rc = json_object_set_new(fields, "name", json_string(fe.message));
    }

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    mask = 0;
    scopes = json_object_get(ctx->json, "scopes");

    if (scopes != NULL && !json_is_null(scopes)) {
        if (cm_scopes_from_json(scopes, &mask, &fe) != CM_OK) {
            rc = json_object_set_new(fields, "scopes",
                                     json_string(fe.message));

        } else if ((mask & CM_SCOPE_ADMIN) && !st->caller->admin) {
            rc = json_object_set_new(fields, "scopes",
                                     json_string("admin needs an "
                                                 "administrator"));
        }

        if (rc == NGX_ERROR) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (json_object_size(fields) > 0) {
        return ngx_http_cinematch_send_fields(r, fields);
    }

    st->display_name = ngx_http_cinematch_pstrdup(r->pool, (char *) name.data,
                                                  name.len);
    if (st->display_name == NULL
        || cm_apikey_generate(&st->key) != CM_OK
        || cm_scopes_to_pg_array(mask, st->scopes, sizeof(st->scopes))
           != CM_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    st->values[0] = st->caller_id;
    st->values[1] = st->display_name;
    st->values[2] = st->key.prefix;
    st->values[3] = st->key.sha256;
    st->values[4] = st->scopes;

    /* the cap is checked in the same statement as the insert */
    return ngx_http_cinematch_pg_queue(r,
        "INSERT INTO api_keys (user_id, name, prefix, key_sha256, scopes)"
        " SELECT $1::bigint, $2, $3, $4, $5::text[]"
        " WHERE (SELECT count(*) FROM api_keys WHERE user_id = $1::bigint"
        " AND revoked_at IS NULL) < 100"
        " RETURNING id",
        5, st->values, ngx_http_cinematch_key_created, st);
}


static ngx_int_t
ngx_http_cinematch_key_created(ngx_http_request_t *r, void *data,
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
        return ngx_http_cinematch_send_error(r, NGX_HTTP_CONFLICT, "conflict",
                                             "too many API keys; revoke one "
                                             "first");
    }

    doc = json_pack("{s:I, s:s, s:s, s:s}",
                    "id", (json_int_t) ngx_atoof((u_char *)
                                                 PQgetvalue(res, 0, 0),
                                                 PQgetlength(res, 0, 0)),
                    "name", st->display_name,
                    "prefix", st->key.prefix,
                    "key", st->key.key);

    ngx_explicit_memzero(st->key.key, sizeof(st->key.key));

    if (ngx_http_cinematch_no_store(r) != NGX_OK) {
        json_decref(doc);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_send_json(r, NGX_HTTP_CREATED, doc);
}


ngx_int_t
ngx_http_cinematch_key_list_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    ngx_int_t                         rc;
    ngx_http_cinematch_auth_state_t  *st;

    st = ngx_http_cinematch_auth_caller_state(r, ctx);
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_cinematch_key_session(r, st);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    st->values[0] = st->caller_id;

    return ngx_http_cinematch_pg_queue(r,
        "SELECT id, name, prefix, scopes,"
        " to_char(created_at AT TIME ZONE 'UTC',"
        " 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
        " to_char(last_used_at AT TIME ZONE 'UTC',"
        " 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
        " FROM api_keys WHERE user_id = $1::bigint AND revoked_at IS NULL"
        " ORDER BY created_at DESC, id DESC",
        1, st->values, ngx_http_cinematch_key_listed, st);
}


static ngx_int_t
ngx_http_cinematch_key_listed(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    int         i, n;
    json_t     *keys, *key, *scopes;
    uint32_t    mask, bit;
    ngx_int_t   rc;
    const char *names[] = { "recommend", "chat", "predict", "models:read",
                            "models:write", "admin" };

    rc = ngx_http_cinematch_pg_failed(r, res, err, PGRES_TUPLES_OK);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    keys = ngx_http_cinematch_json_track(r, json_array());
    if (keys == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    n = PQntuples(res);

    for (i = 0; i < n; i++) {
        scopes = json_array();

        if (scopes != NULL
            && cm_scopes_from_pg_array(PQgetvalue(res, i, 3),
                                       PQgetlength(res, i, 3), &mask)
               == CM_OK)
        {
            for (bit = 0; bit < 6; bit++) {
                if (mask & (1u << bit)) {
                    json_array_append_new(scopes, json_string(names[bit]));
                }
            }
        }

        key = json_pack("{s:I, s:s, s:s, s:o, s:s, s:o}",
                        "id", (json_int_t) ngx_atoof((u_char *)
                                                     PQgetvalue(res, i, 0),
                                                     PQgetlength(res, i, 0)),
                        "name", PQgetvalue(res, i, 1),
                        "prefix", PQgetvalue(res, i, 2),
                        "scopes", scopes ? scopes : json_null(),
                        "created_at", PQgetvalue(res, i, 4),
                        "last_used_at", PQgetisnull(res, i, 5)
                                        ? json_null()
                                        : json_string(PQgetvalue(res, i, 5)));

        if (key == NULL || json_array_append_new(keys, key) != 0) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (ngx_http_cinematch_no_store(r) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_send_json(r, NGX_HTTP_OK,
                                        json_pack("{s:O}", "keys", keys));
}


ngx_int_t
ngx_http_cinematch_key_delete_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    ngx_int_t                         rc;
    ngx_uint_t                        i;
    ngx_str_t                        *id;
    ngx_http_cinematch_auth_state_t  *st;

    st = ngx_http_cinematch_auth_caller_state(r, ctx);
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_cinematch_key_session(r, st);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    /* anything but a plain id cannot name a key: the same 404 */
    id = &ctx->params[0];

    for (i = 0; i < id->len; i++) {
        if (id->data[i] < '0' || id->data[i] > '9') {
            break;
        }
    }

    if (id->len == 0 || id->len > 18 || i < id->len || id->data[0] == '0') {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                                             "not_found", "no such API key");
    }

    st->email = ngx_http_cinematch_pstrdup(r->pool, (char *) id->data,
                                           id->len);
    if (st->email == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    st->values[0] = st->email;
    st->values[1] = st->caller_id;
    st->values[2] = st->caller->admin ? "t" : "f";

    /* another user's key is "no such key" (404), never 403 */
    return ngx_http_cinematch_pg_queue(r,
        "UPDATE api_keys SET revoked_at = now()"
        " WHERE id = $1::bigint AND (user_id = $2::bigint OR $3::boolean)"
        " AND revoked_at IS NULL RETURNING key_sha256",
        3, st->values, ngx_http_cinematch_key_revoked, st);
}


static ngx_int_t
ngx_http_cinematch_key_revoked(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    ngx_http_cinematch_auth_state_t *st = data;

    ngx_int_t  rc;

    rc = ngx_http_cinematch_pg_failed(r, res, err, PGRES_TUPLES_OK);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    if (PQntuples(res) != 1 || PQgetlength(res, 0, 0) != CM_SHA256_HEX_LEN) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                                             "not_found", "no such API key");
    }

    ngx_memcpy(st->sha, PQgetvalue(res, 0, 0), CM_SHA256_HEX_LEN);
    st->sha[CM_SHA256_HEX_LEN] = '\0';

    /* drop the cached lookup so the key stops working now */
    switch (ngx_http_cinematch_redis_commandf(r,
                                        ngx_http_cinematch_key_uncached, st,
                                        "DEL cm:key:%s", st->sha))
    {
    case NGX_OK:
        return NGX_DONE;

    case NGX_DECLINED:
        return ngx_http_cinematch_key_uncached(r, st, NULL);

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}


static ngx_int_t
ngx_http_cinematch_key_uncached(ngx_http_request_t *r, void *data,
    redisReply *reply)
{
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "cinematch: revoked API key may stay cached for up "
                      "to 60 s (Redis unavailable)");
    }

    return ngx_http_cinematch_send_buf(r, NGX_HTTP_NO_CONTENT,
                                       &ngx_http_cinematch_auth_json,
                                       NULL, 0);
}


/*
 * ---- email verification and password reset ----
 *
 * One-time tokens ("cmo_", 256 bits) are stored as SHA-256 only; the mail
 * that carries one is an outbox row written in the same statement as the
 * token, sent later by `cinematch mailer` (no SMTP on the event loop, and
 * a mail server outage delays mail instead of failing requests).  A token
 * is consumed by one UPDATE ... RETURNING, so it works once.
 */

static ngx_int_t ngx_http_cinematch_onetime_token(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx, ngx_http_cinematch_auth_state_t *st,
    const char **allowed, json_t *fields);
static ngx_int_t ngx_http_cinematch_bad_onetime(ngx_http_request_t *r);
static ngx_int_t ngx_http_cinematch_verify_email_done(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_forgot_password_done(
    ngx_http_request_t *r, void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_reset_password_found(
    ngx_http_request_t *r, void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_reset_password_hashed(
    ngx_http_request_t *r, ngx_http_cinematch_pw_job_t *job);
static ngx_int_t ngx_http_cinematch_reset_password_nbf(
    ngx_http_request_t *r, void *data, redisReply *reply);
static ngx_int_t ngx_http_cinematch_reset_password_done(
    ngx_http_request_t *r, void *data, PGresult *res, const char *err);


static const char  *ngx_http_cinematch_verify_fields[] = {
    "token", NULL
};

static const char  *ngx_http_cinematch_forgot_fields[] = {
    "email", NULL
};

static const char  *ngx_http_cinematch_reset_fields[] = {
    "token", "new_password", NULL
};


/*
 * Field checks of a body with a "token": unknown fields, the token's shape
 * (a string; a malformed one is the same 400 as an unknown one), and
 * st->sha = its hash.  NGX_OK: go on; NGX_DECLINED: fields has errors
 * (more may be added by the caller); anything else is an answer.
 */

static ngx_int_t
ngx_http_cinematch_onetime_token(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx, ngx_http_cinematch_auth_state_t *st,
    const char **allowed, json_t *fields)
{
    ngx_int_t  rc;
    ngx_str_t  token;

    if (ngx_http_cinematch_auth_fields(r, ctx->json, allowed, fields)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_cinematch_auth_string(ctx->json, "token", 1, fields,
                                        &token);
    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_DECLINED || json_object_size(fields) > 0) {
        return NGX_DECLINED;
    }

    if (cm_token_hash((char *) token.data, token.len, CM_TOKEN_ONETIME,
                      st->sha)
        != CM_OK)
    {
        st->sha[0] = '\0';
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_cinematch_bad_onetime(ngx_http_request_t *r)
{
    return ngx_http_cinematch_send_error(r, NGX_HTTP_BAD_REQUEST,
                                         "invalid_request",
                                         "the token is invalid, expired or "
                                         "already used");
}


/* ---- POST /api/v1/auth/verify-email {token} ---- */

ngx_int_t
ngx_http_cinematch_verify_email_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    json_t                           *fields;
    ngx_int_t                         rc;
    ngx_http_cinematch_auth_state_t  *st;

    st = ngx_http_cinematch_auth_state(r, ctx);
    fields = ngx_http_cinematch_json_track(r, json_object());

    if (st == NULL || fields == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_cinematch_onetime_token(r, ctx, st,
                                          ngx_http_cinematch_verify_fields,
                                          fields);
    if (rc == NGX_DECLINED) {
        return ngx_http_cinematch_send_fields(r, fields);
    }

    if (rc != NGX_OK) {
        return rc;
    }

    if (st->sha[0] == '\0') {
        return ngx_http_cinematch_bad_onetime(r);
    }

    st->values[0] = st->sha;

    /* consume and apply in one statement: of two concurrent uses, the
     * row lock lets one through and the other finds used_at set */
    return ngx_http_cinematch_pg_queue(r,
        "WITH t AS ("
        " UPDATE user_tokens SET used_at = now()"
        " WHERE token_sha256 = $1 AND purpose = 'verify_email'"
        " AND used_at IS NULL AND expires_at > now() RETURNING user_id)"
        " UPDATE users SET email_verified_at ="
        " COALESCE(users.email_verified_at, now())"
        " FROM t WHERE users.id = t.user_id RETURNING users.id",
        1, st->values, ngx_http_cinematch_verify_email_done, st);
}


static ngx_int_t
ngx_http_cinematch_verify_email_done(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    ngx_int_t  rc;

    rc = ngx_http_cinematch_pg_failed(r, res, err, PGRES_TUPLES_OK);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    if (PQntuples(res) != 1) {
        return ngx_http_cinematch_bad_onetime(r);
    }

    return ngx_http_cinematch_send_buf(r, NGX_HTTP_NO_CONTENT,
                                       &ngx_http_cinematch_auth_json,
                                       NULL, 0);
}


/*
 * ---- POST /api/v1/auth/forgot-password {email} ----
 *
 * Always 202 with one body: whether the address has an account, and
 * whether a mail was queued, are not in the answer.  Both cases run the
 * same single statement (an index lookup that finds a row or not, and
 * inserts that find nothing to insert), so the time differs by a few row
 * writes, not by a mail transaction.  One reset mail per account per
 * minute: later requests within the minute queue nothing (and answer the
 * same), so the endpoint cannot be used to flood someone's mailbox.
 */

ngx_int_t
ngx_http_cinematch_forgot_password_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    u_char                           *p;
    json_t                           *fields;
    ngx_int_t                         rc;
    ngx_str_t                         email;
    ngx_http_cinematch_auth_state_t  *st;

    st = ngx_http_cinematch_auth_state(r, ctx);
    fields = ngx_http_cinematch_json_track(r, json_object());

    if (st == NULL || fields == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_cinematch_auth_fields(r, ctx->json,
                                       ngx_http_cinematch_forgot_fields,
                                       fields)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_cinematch_auth_string(ctx->json, "email", 1, fields,
                                        &email);
    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* the shape only: a rule check would answer differently for
     * addresses that register refuses, which says nothing about accounts,
     * but keeping one path is simpler to reason about */
    if (rc == NGX_OK && (email.len == 0 || email.len > CM_EMAIL_MAX)) {
        if (json_object_set_new(fields, "email",
                                json_string("must be 1..254 bytes"))
            != 0)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    if (json_object_size(fields) > 0) {
        return ngx_http_cinematch_send_fields(r, fields);
    }

    st->email = ngx_http_cinematch_pstrdup(r->pool, (char *) email.data,
                                           email.len);
    if (st->email == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (cm_token_generate(&st->onetime, CM_TOKEN_ONETIME, ngx_time(),
                          st->amcf->reset_ttl)
        != CM_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_sprintf(st->ttl, "%T", st->amcf->reset_ttl);
    *p = '\0';

    st->values[0] = st->email;
    st->values[1] = st->onetime.sha256;
    st->values[2] = (char *) st->ttl;
    st->values[3] = st->onetime.token;

    return ngx_http_cinematch_pg_queue(r,
        "WITH u AS ("
        " SELECT id, email FROM users"
        " WHERE lower(email) = lower($1) AND disabled_at IS NULL"
        " AND NOT EXISTS (SELECT 1 FROM user_tokens k"
        " WHERE k.user_id = users.id AND k.purpose = 'reset_password'"
        " AND k.created_at > now() - interval '60 seconds')),"
        " t AS ("
        " INSERT INTO user_tokens (user_id, purpose, token_sha256,"
        " expires_at)"
        " SELECT id, 'reset_password', $2,"
        " now() + make_interval(secs => $3::int) FROM u RETURNING id),"
        " m AS ("
        " INSERT INTO mail_outbox (token_id, kind, to_addr, token)"
        " SELECT t.id, 'reset_password', u.email, $4 FROM t, u)"
        " SELECT count(*) FROM t",
        4, st->values, ngx_http_cinematch_forgot_password_done, st);
}


static ngx_int_t
ngx_http_cinematch_forgot_password_done(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    ngx_http_cinematch_auth_state_t *st = data;

    ngx_int_t  rc;

    /* the token is in the outbox row (or nowhere); not in this pool */
    ngx_explicit_memzero(&st->onetime, sizeof(cm_token_t));

    rc = ngx_http_cinematch_pg_failed(r, res, err, PGRES_TUPLES_OK);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    return ngx_http_cinematch_send_json(r, NGX_HTTP_ACCEPTED,
               json_pack("{s:s}", "message",
                         "if an account has this address, a reset link is "
                         "on its way to it"));
}


/*
 * ---- POST /api/v1/auth/reset-password {token, new_password} ----
 *
 * A cheap look at the token first, so a made-up token costs a query and
 * no argon2id; then the hash on the thread pool; then one statement that
 * consumes the token (the look may have raced: the consume decides),
 * stores the hash, spends the user's other reset tokens and revokes every
 * refresh family (every session ends); then SET cm:nbf:u<id> <now>, the
 * user's "tokens not before": the identity step refuses access tokens
 * issued before that second (checked with the denylist, in the same Redis
 * round trip; kept until the last such token expires).  The answer waits
 * for it, so once the client has its 204 the old tokens are refused.
 * Redis down: the reset still succeeds, and access tokens issued before
 * it live until exp (at most cinematch_access_token_ttl): fail open, the
 * same as the logout denylist (docs/SECURITY.md).
 */

ngx_int_t
ngx_http_cinematch_reset_password_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    json_t                           *fields;
    ngx_int_t                         rc;
    ngx_str_t                         password;
    cm_field_error_t                  fe;
    ngx_http_cinematch_auth_state_t  *st;

    st = ngx_http_cinematch_auth_state(r, ctx);
    fields = ngx_http_cinematch_json_track(r, json_object());

    if (st == NULL || fields == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_cinematch_onetime_token(r, ctx, st,
                                          ngx_http_cinematch_reset_fields,
                                          fields);
    if (rc != NGX_OK && rc != NGX_DECLINED) {
        return rc;
    }

    rc = ngx_http_cinematch_auth_string(ctx->json, "new_password", 1, fields,
                                        &password);
    if (rc == NGX_OK && cm_validate_password((char *) password.data,
                                             password.len, &fe)
                        != CM_OK)
    {
        rc = json_object_set_new(fields, "new_password",
                                 json_string(fe.message));
    }

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (json_object_size(fields) > 0) {
        return ngx_http_cinematch_send_fields(r, fields);
    }

    if (st->sha[0] == '\0') {
        return ngx_http_cinematch_bad_onetime(r);
    }

    st->values[0] = st->sha;

    return ngx_http_cinematch_pg_queue(r,
        "SELECT 1 FROM user_tokens"
        " WHERE token_sha256 = $1 AND purpose = 'reset_password'"
        " AND used_at IS NULL AND expires_at > now()",
        1, st->values, ngx_http_cinematch_reset_password_found, st);
}


static ngx_int_t
ngx_http_cinematch_reset_password_found(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    ngx_http_cinematch_auth_state_t *st = data;

    json_t                    *v;
    ngx_int_t                  rc;
    ngx_str_t                  password;
    ngx_http_cinematch_ctx_t  *ctx;

    rc = ngx_http_cinematch_pg_failed(r, res, err, PGRES_TUPLES_OK);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    if (PQntuples(res) != 1) {
        return ngx_http_cinematch_bad_onetime(r);
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_cinematch_module);
    v = json_object_get(ctx->json, "new_password");
    password.data = (u_char *) json_string_value(v);
    password.len = json_string_length(v);

    return ngx_http_cinematch_pw_post(r, st->amcf,
                                      NGX_HTTP_CINEMATCH_PW_HASH,
                                      &password, NULL,
                                      ngx_http_cinematch_reset_password_hashed);
}


static ngx_int_t
ngx_http_cinematch_reset_password_hashed(ngx_http_request_t *r,
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
                                             "cannot reset now");
    }

    st->values[0] = st->sha;
    st->values[1] = job->hash;

    /* the other sub-statements must not touch the row t updates (one
     * statement may not change a row twice): hence token_sha256 <> $1 */
    return ngx_http_cinematch_pg_queue(r,
        "WITH t AS ("
        " UPDATE user_tokens SET used_at = now()"
        " WHERE token_sha256 = $1 AND purpose = 'reset_password'"
        " AND used_at IS NULL AND expires_at > now() RETURNING user_id),"
        " u AS ("
        " UPDATE users SET password_hash = $2,"
        " email_verified_at = COALESCE(users.email_verified_at, now())"
        " FROM t WHERE users.id = t.user_id AND users.disabled_at IS NULL"
        " RETURNING users.id),"
        " o AS ("
        " UPDATE user_tokens SET used_at = now()"
        " WHERE user_id IN (SELECT id FROM u)"
        " AND purpose = 'reset_password' AND used_at IS NULL"
        " AND token_sha256 <> $1),"
        " rt AS ("
        " UPDATE refresh_tokens SET revoked_at = now()"
        " WHERE user_id IN (SELECT id FROM u) AND revoked_at IS NULL)"
        " SELECT id FROM u",
        2, st->values, ngx_http_cinematch_reset_password_done, st);
}


static ngx_int_t
ngx_http_cinematch_reset_password_done(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    ngx_int_t                         rc;
    ngx_http_cinematch_auth_state_t  *st;

    rc = ngx_http_cinematch_pg_failed(r, res, err, PGRES_TUPLES_OK);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    if (PQntuples(res) != 1) {
        return ngx_http_cinematch_bad_onetime(r);
    }

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "cinematch: password of user %s reset; sessions revoked",
                  PQgetvalue(res, 0, 0));

    st = data;

    /* older tokens may live until exp + leeway; the key one second more */
    switch (ngx_http_cinematch_redis_commandf(r,
                              ngx_http_cinematch_reset_password_nbf, st,
                              "SET cm:nbf:u%s %lld EX %lld",
                              PQgetvalue(res, 0, 0), (long long) ngx_time(),
                              (long long) (st->amcf->access_ttl
                                           + st->amcf->leeway + 1)))
    {
    case NGX_OK:
        return NGX_DONE;

    case NGX_DECLINED:
        return ngx_http_cinematch_reset_password_nbf(r, st, NULL);

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}


static ngx_int_t
ngx_http_cinematch_reset_password_nbf(ngx_http_request_t *r, void *data,
    redisReply *reply)
{
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "cinematch: Redis unavailable: access tokens issued "
                      "before this password reset stay valid until they "
                      "expire");
    }

    return ngx_http_cinematch_send_buf(r, NGX_HTTP_NO_CONTENT,
                                       &ngx_http_cinematch_auth_json,
                                       NULL, 0);
}

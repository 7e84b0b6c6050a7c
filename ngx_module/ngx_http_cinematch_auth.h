
/*
 * ngx_http_cinematch_auth.h: the auth endpoints (ngx_http_cinematch_api_auth.c,
 * an optional file: config defines NGX_HTTP_CINEMATCH_AUTH when present).
 *
 * The file is its own small HTTP module, ngx_http_cinematch_auth_module,
 * so that its directives (JWT secret files, token lifetimes, the password
 * thread pool) and its configuration live beside its handlers.
 */


#ifndef _NGX_HTTP_CINEMATCH_AUTH_H_INCLUDED_
#define _NGX_HTTP_CINEMATCH_AUTH_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#if (NGX_THREADS)
#include <ngx_thread_pool.h>
#endif

#include "ngx_http_cinematch.h"

#include "cinematch/jwt.h"
#include "cinematch/ratelimit.h"
#include "cinematch/validate.h"


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

    ngx_msec_t                      key_touch;   /* last_used_at interval */
    ngx_shm_zone_t                 *rl_zone;     /* local fallback buckets */
    cm_ratelimit_t                 *login_rl;    /* login attempts per
                                                    account; NULL: off */

    ngx_flag_t                      verify_email; /* register queues a
                                                     verification mail */
    time_t                          verify_ttl;  /* one-time token lives */
    time_t                          reset_ttl;
} ngx_http_cinematch_auth_main_conf_t;


typedef struct {
    cm_ratelimit_t                 *rl;          /* NULL: no limit */
    ngx_str_t                       rl_name;     /* Redis key part */
    ngx_array_t                    *cors;        /* of ngx_str_t origins;
                                                    "*" any; NULL: off */
} ngx_http_cinematch_auth_loc_conf_t;


extern ngx_module_t  ngx_http_cinematch_auth_module;


/* ngx_http_cinematch_authn.c: identity, authorization and rate limit
 * before a route's handler (docs/SECURITY.md §3) */
ngx_int_t ngx_http_cinematch_authn(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
char *ngx_http_cinematch_rate_limit(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
char *ngx_http_cinematch_cors(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
ngx_int_t ngx_http_cinematch_cors_preflight(ngx_http_request_t *r,
    ngx_uint_t allow);
char *ngx_http_cinematch_login_account_limit(ngx_conf_t *cf,
    ngx_command_t *cmd, void *conf);
ngx_int_t ngx_http_cinematch_authn_take(ngx_http_request_t *r,
    cm_ratelimit_t *rl, ngx_str_t *name, ngx_str_t *ident,
    ngx_http_cinematch_caller_next_pt next);
ngx_int_t ngx_http_cinematch_whoami_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_authn_init_zone(ngx_conf_t *cf,
    ngx_http_cinematch_auth_main_conf_t *amcf, size_t size);


ngx_int_t ngx_http_cinematch_register_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_login_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_refresh_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_logout_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_me_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_key_create_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_key_list_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_key_delete_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_verify_email_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_forgot_password_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_reset_password_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);

/* ngx_http_cinematch_api_ratings.c: the caller's ratings */
ngx_int_t ngx_http_cinematch_rating_put_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_ratings_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);


#endif /* _NGX_HTTP_CINEMATCH_AUTH_H_INCLUDED_ */

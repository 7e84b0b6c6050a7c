
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

#include "ngx_http_cinematch.h"


extern ngx_module_t  ngx_http_cinematch_auth_module;


ngx_int_t ngx_http_cinematch_register_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_login_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);


#endif /* _NGX_HTTP_CINEMATCH_AUTH_H_INCLUDED_ */

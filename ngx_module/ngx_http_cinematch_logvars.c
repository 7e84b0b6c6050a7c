/*
 * ngx_http_cinematch_logvars.c: variables for structured access logs.
 *
 *   $cinematch_user_id        users.id of the authenticated caller
 *   $cinematch_route          the route pattern that served the request
 *                             ("/api/v1/movies/{id}", "unmatched"), the
 *                             same label /metrics uses: low cardinality,
 *                             no ids or query strings
 *   $cinematch_model_version  the model version that answered (a handler
 *                             sets it from the daemon's result)
 *
 * Each is "not found" (an empty string in a log_format) when the request
 * did not reach the module or the value does not apply.  Values are read
 * at log time from the request's module context, so they are never cached.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_cinematch.h"


#define NGX_HTTP_CINEMATCH_MODEL_VERSION_LEN  64


static ngx_int_t ngx_http_cinematch_user_id_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_cinematch_route_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_cinematch_model_version_variable(
    ngx_http_request_t *r, ngx_http_variable_value_t *v, uintptr_t data);


static ngx_http_variable_t  ngx_http_cinematch_log_vars[] = {

    { ngx_string("cinematch_user_id"), NULL,
      ngx_http_cinematch_user_id_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("cinematch_route"), NULL,
      ngx_http_cinematch_route_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

    { ngx_string("cinematch_model_version"), NULL,
      ngx_http_cinematch_model_version_variable, 0,
      NGX_HTTP_VAR_NOCACHEABLE, 0 },

      ngx_http_null_variable
};


ngx_int_t
ngx_http_cinematch_logvars_add(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var, *v;

    for (v = ngx_http_cinematch_log_vars; v->name.len; v++) {
        var = ngx_http_add_variable(cf, &v->name, v->flags);
        if (var == NULL) {
            return NGX_ERROR;
        }

        var->get_handler = v->get_handler;
        var->data = v->data;
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_cinematch_user_id_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    u_char                    *p;
    ngx_http_cinematch_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_cinematch_module);

    if (ctx == NULL || ctx->caller == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    p = ngx_pnalloc(r->pool, NGX_INT64_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    v->len = ngx_sprintf(p, "%L", ctx->caller->user_id) - p;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->data = p;

    return NGX_OK;
}


static ngx_int_t
ngx_http_cinematch_route_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_str_t                 *name;
    ngx_http_cinematch_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_cinematch_module);

    if (ctx == NULL) {
        v->not_found = 1;
        return NGX_OK;
    }

    name = ngx_http_cinematch_route_name(ctx->route_label);

    v->len = name->len;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->data = name->data;

    return NGX_OK;
}


static ngx_int_t
ngx_http_cinematch_model_version_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_cinematch_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_cinematch_module);

    if (ctx == NULL || ctx->model_version.len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = ctx->model_version.len;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->data = ctx->model_version.data;

    return NGX_OK;
}


void
ngx_http_cinematch_set_model_version(ngx_http_request_t *r, json_t *answer)
{
    size_t                     len;
    json_t                    *v;
    const char                *s;
    ngx_http_cinematch_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_cinematch_module);

    v = json_object_get(answer, "model_version");

    if (ctx == NULL || !json_is_string(v)) {
        return;
    }

    /* the daemon's text: bounded, and only what a version looks like */

    s = json_string_value(v);
    len = json_string_length(v);

    if (len == 0 || len > NGX_HTTP_CINEMATCH_MODEL_VERSION_LEN
        || len != ngx_strlen(s))
    {
        return;
    }

    ctx->model_version.data = ngx_pnalloc(r->pool, len);
    if (ctx->model_version.data == NULL) {
        ctx->model_version.len = 0;
        return;
    }

    ngx_memcpy(ctx->model_version.data, s, len);
    ctx->model_version.len = len;
}

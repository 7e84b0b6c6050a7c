
/*
 * ngx_http_cinematch_router.c: the route table and the content handler.
 *
 * Every endpoint is one line of ngx_http_cinematch_routes[]: methods, a
 * path pattern whose "{name}" parts match one non-empty path segment each,
 * the handler, and flags (read the body, parse it as JSON, internal).  A
 * path that no pattern matches is a JSON 404; a path that matches only
 * with other methods is a JSON 405 with Allow.  GET routes answer HEAD.
 *
 * The table is scanned in order; with a few dozen short patterns this is
 * cheaper than building anything, and the handler of any endpoint is found
 * by reading one table.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_cinematch.h"
#include "cinematch/validate.h"     /* CM_SCOPE_* of the route flags */
#if (NGX_HTTP_CINEMATCH_AUTH)
#include "ngx_http_cinematch_auth.h"
#endif


typedef struct {
    ngx_uint_t   method;
    ngx_str_t    name;
} ngx_http_cinematch_method_t;


static ngx_int_t ngx_http_cinematch_route_match(ngx_str_t *pattern,
    ngx_str_t *uri, ngx_str_t *params, ngx_uint_t *nparams);
static ngx_int_t ngx_http_cinematch_route_check(ngx_conf_t *cf,
    ngx_http_cinematch_route_t *route);
static ngx_int_t ngx_http_cinematch_send_not_allowed(ngx_http_request_t *r,
    ngx_uint_t allow);


ngx_http_cinematch_route_t  ngx_http_cinematch_routes[] = {

    /* operations */

    { NGX_HTTP_GET, ngx_string("/health"),
      ngx_http_cinematch_health_handler, 0 },

    { NGX_HTTP_GET, ngx_string("/ready"),
      ngx_http_cinematch_ready_handler, 0 },

    { NGX_HTTP_GET, ngx_string("/metrics"),
      ngx_http_cinematch_metrics_handler, 0 },

    /* the catalogue, from PostgreSQL */

    { NGX_HTTP_GET, ngx_string("/api/v1/movies"),
      ngx_http_cinematch_movies_handler, 0 },

    { NGX_HTTP_GET, ngx_string("/api/v1/movies/{id}"),
      ngx_http_cinematch_movie_handler, 0 },

#if (NGX_HTTP_CINEMATCH_INFER)
    /* recommendations, answered by the inference daemon */

    { NGX_HTTP_POST, ngx_string("/api/v1/recommend"),
      ngx_http_cinematch_recommend_handler,
      NGX_HTTP_CINEMATCH_ROUTE_JSON|NGX_HTTP_CINEMATCH_ROUTE_AUTH
      |NGX_HTTP_CINEMATCH_ROUTE_SCOPE(CM_SCOPE_RECOMMEND) },

    { NGX_HTTP_POST, ngx_string("/api/v1/similar"),
      ngx_http_cinematch_similar_handler, NGX_HTTP_CINEMATCH_ROUTE_JSON },

    { NGX_HTTP_GET, ngx_string("/api/v1/popular"),
      ngx_http_cinematch_popular_handler, 0 },

    { NGX_HTTP_POST, ngx_string("/api/v1/predict/{name}"),
      ngx_http_cinematch_predict_handler, NGX_HTTP_CINEMATCH_ROUTE_JSON },
#endif

#if (NGX_HTTP_CINEMATCH_AUTH)
    /* auth (ngx_http_cinematch_api_auth.c) */

    { NGX_HTTP_POST, ngx_string("/api/v1/auth/register"),
      ngx_http_cinematch_register_handler, NGX_HTTP_CINEMATCH_ROUTE_JSON },

    { NGX_HTTP_POST, ngx_string("/api/v1/auth/login"),
      ngx_http_cinematch_login_handler, NGX_HTTP_CINEMATCH_ROUTE_JSON },

    { NGX_HTTP_POST, ngx_string("/api/v1/auth/refresh"),
      ngx_http_cinematch_refresh_handler, NGX_HTTP_CINEMATCH_ROUTE_JSON },

    { NGX_HTTP_POST, ngx_string("/api/v1/auth/logout"),
      ngx_http_cinematch_logout_handler, NGX_HTTP_CINEMATCH_ROUTE_AUTH },

    { NGX_HTTP_GET, ngx_string("/api/v1/auth/me"),
      ngx_http_cinematch_me_handler, NGX_HTTP_CINEMATCH_ROUTE_AUTH },

    { NGX_HTTP_POST, ngx_string("/api/v1/keys"),
      ngx_http_cinematch_key_create_handler,
      NGX_HTTP_CINEMATCH_ROUTE_JSON|NGX_HTTP_CINEMATCH_ROUTE_AUTH },

    { NGX_HTTP_GET, ngx_string("/api/v1/keys"),
      ngx_http_cinematch_key_list_handler, NGX_HTTP_CINEMATCH_ROUTE_AUTH },

    { NGX_HTTP_DELETE, ngx_string("/api/v1/keys/{id}"),
      ngx_http_cinematch_key_delete_handler, NGX_HTTP_CINEMATCH_ROUTE_AUTH },

    /* the caller's ratings (ngx_http_cinematch_api_ratings.c) */

    { NGX_HTTP_PUT, ngx_string("/api/v1/ratings/{movie_id}"),
      ngx_http_cinematch_rating_put_handler,
      NGX_HTTP_CINEMATCH_ROUTE_JSON|NGX_HTTP_CINEMATCH_ROUTE_AUTH
      |NGX_HTTP_CINEMATCH_ROUTE_SCOPE(CM_SCOPE_RECOMMEND) },

    { NGX_HTTP_GET, ngx_string("/api/v1/ratings"),
      ngx_http_cinematch_ratings_handler,
      NGX_HTTP_CINEMATCH_ROUTE_AUTH
      |NGX_HTTP_CINEMATCH_ROUTE_SCOPE(CM_SCOPE_RECOMMEND) },
#endif

    /* internal, only where "cinematch_echo on" */

    { NGX_HTTP_POST, ngx_string("/internal/json"),
      ngx_http_cinematch_json_echo_handler,
      NGX_HTTP_CINEMATCH_ROUTE_JSON|NGX_HTTP_CINEMATCH_ROUTE_ECHO },

    { NGX_HTTP_GET, ngx_string("/internal/pg/sleep/{ms}"),
      ngx_http_cinematch_pg_sleep_handler, NGX_HTTP_CINEMATCH_ROUTE_ECHO },

    { NGX_HTTP_GET, ngx_string("/internal/args"),
      ngx_http_cinematch_args_handler, NGX_HTTP_CINEMATCH_ROUTE_ECHO },

    { NGX_HTTP_GET, ngx_string("/internal/pg/types/{text}"),
      ngx_http_cinematch_pg_types_handler, NGX_HTTP_CINEMATCH_ROUTE_ECHO },

    { NGX_HTTP_GET, ngx_string("/internal/redis/echo/{value}"),
      ngx_http_cinematch_redis_echo_handler, NGX_HTTP_CINEMATCH_ROUTE_ECHO },

#if (NGX_HTTP_CINEMATCH_AUTH)
    { NGX_HTTP_GET, ngx_string("/internal/auth/whoami"),
      ngx_http_cinematch_whoami_handler,
      NGX_HTTP_CINEMATCH_ROUTE_OPTAUTH|NGX_HTTP_CINEMATCH_ROUTE_ECHO },

    { NGX_HTTP_GET, ngx_string("/internal/auth/admin"),
      ngx_http_cinematch_whoami_handler,
      NGX_HTTP_CINEMATCH_ROUTE_ADMIN|NGX_HTTP_CINEMATCH_ROUTE_ECHO },

    { NGX_HTTP_GET, ngx_string("/internal/auth/recommend"),
      ngx_http_cinematch_whoami_handler,
      NGX_HTTP_CINEMATCH_ROUTE_AUTH|NGX_HTTP_CINEMATCH_ROUTE_ECHO
      |NGX_HTTP_CINEMATCH_ROUTE_SCOPE(CM_SCOPE_RECOMMEND) },
#endif

#if (NGX_HTTP_CINEMATCH_ECHO)
    { NGX_HTTP_POST, ngx_string("/internal/echo"),
      ngx_http_cinematch_echo_handler,
      NGX_HTTP_CINEMATCH_ROUTE_BODY|NGX_HTTP_CINEMATCH_ROUTE_ECHO },

    { NGX_HTTP_POST, ngx_string("/internal/echo/stream"),
      ngx_http_cinematch_echo_stream_handler,
      NGX_HTTP_CINEMATCH_ROUTE_BODY|NGX_HTTP_CINEMATCH_ROUTE_ECHO },
#endif

};


ngx_uint_t  ngx_http_cinematch_nroutes =
    sizeof(ngx_http_cinematch_routes) / sizeof(ngx_http_cinematch_route_t);


/*
 * Routes that share a pattern (GET and DELETE of /x/{id}) share one
 * metrics label: the index of the first of them.  One more label, nroutes,
 * counts requests that matched no route.
 */

static ngx_uint_t  ngx_http_cinematch_route_labels[
    sizeof(ngx_http_cinematch_routes) / sizeof(ngx_http_cinematch_route_t)];

static ngx_str_t  ngx_http_cinematch_unmatched = ngx_string("unmatched");


static ngx_http_cinematch_method_t  ngx_http_cinematch_methods[] = {
    { NGX_HTTP_GET, ngx_string("GET") },
    { NGX_HTTP_HEAD, ngx_string("HEAD") },
    { NGX_HTTP_POST, ngx_string("POST") },
    { NGX_HTTP_PUT, ngx_string("PUT") },
    { NGX_HTTP_PATCH, ngx_string("PATCH") },
    { NGX_HTTP_DELETE, ngx_string("DELETE") },
    { NGX_HTTP_OPTIONS, ngx_string("OPTIONS") },
    { 0, ngx_null_string }
};


ngx_int_t
ngx_http_cinematch_router_init(ngx_conf_t *cf)
{
    ngx_uint_t                   i, j;
    ngx_http_cinematch_route_t  *routes;

    routes = ngx_http_cinematch_routes;

    for (i = 0; i < ngx_http_cinematch_nroutes; i++) {

        if (ngx_http_cinematch_route_check(cf, &routes[i]) != NGX_OK) {
            return NGX_ERROR;
        }

        ngx_http_cinematch_route_labels[i] = i;

        for (j = 0; j < i; j++) {
            if (routes[j].pattern.len == routes[i].pattern.len
                && ngx_strncmp(routes[j].pattern.data, routes[i].pattern.data,
                               routes[i].pattern.len)
                   == 0)
            {
                ngx_http_cinematch_route_labels[i] = j;
                break;
            }
        }
    }

    return NGX_OK;
}


/*
 * Patterns are compiled into the module, so a bad one is a programming
 * error; it is caught at start-up rather than on the first request.  The
 * character set also keeps patterns safe as Prometheus label values.
 */

static ngx_int_t
ngx_http_cinematch_route_check(ngx_conf_t *cf,
    ngx_http_cinematch_route_t *route)
{
    u_char      *p, *last;
    ngx_uint_t   n, inparam;

    p = route->pattern.data;
    last = p + route->pattern.len;

    if (route->pattern.len == 0 || *p != '/' || route->handler == NULL) {
        goto invalid;
    }

    n = 0;
    inparam = 0;

    for ( /* void */ ; p < last; p++) {

        if (*p == '{') {
            if (inparam || p[-1] != '/') {
                goto invalid;
            }

            inparam = 1;
            continue;
        }

        if (*p == '}') {
            if (!inparam || p[-1] == '{' || (p + 1 < last && p[1] != '/')) {
                goto invalid;
            }

            inparam = 0;

            if (++n > NGX_HTTP_CINEMATCH_MAX_PARAMS) {
                goto invalid;
            }

            continue;
        }

        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
            || (*p >= '0' && *p <= '9')
            || *p == '/' || *p == '_' || *p == '-' || *p == '.')
        {
            continue;
        }

        goto invalid;
    }

    if (inparam) {
        goto invalid;
    }

    return NGX_OK;

invalid:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "cinematch: invalid route pattern \"%V\"",
                       &route->pattern);
    return NGX_ERROR;
}


ngx_str_t *
ngx_http_cinematch_route_name(ngx_uint_t label)
{
    if (label >= ngx_http_cinematch_nroutes) {
        return &ngx_http_cinematch_unmatched;
    }

    return &ngx_http_cinematch_routes[label].pattern;
}


static ngx_int_t
ngx_http_cinematch_route_match(ngx_str_t *pattern, ngx_str_t *uri,
    ngx_str_t *params, ngx_uint_t *nparams)
{
    u_char      *p, *pe, *u, *ue, *start;
    ngx_uint_t   n;

    p = pattern->data;
    pe = p + pattern->len;
    u = uri->data;
    ue = u + uri->len;
    n = 0;

    while (p < pe) {

        if (*p == '{') {

            /* a parameter: one non-empty path segment */

            while (*p != '}') {
                p++;
            }

            p++;

            for (start = u; u < ue && *u != '/'; u++) { /* void */ }

            if (u == start) {
                return NGX_DECLINED;
            }

            params[n].data = start;
            params[n].len = u - start;
            n++;

            continue;
        }

        if (u == ue || *u != *p) {
            return NGX_DECLINED;
        }

        p++;
        u++;
    }

    if (u != ue) {
        return NGX_DECLINED;
    }

    *nparams = n;

    return NGX_OK;
}


ngx_int_t
ngx_http_cinematch_handler(ngx_http_request_t *r)
{
    ngx_int_t                       rc;
    ngx_uint_t                      i, allow, method, nparams;
    ngx_str_t                       params[NGX_HTTP_CINEMATCH_MAX_PARAMS];
    ngx_http_cinematch_ctx_t       *ctx;
    ngx_http_cinematch_route_t     *route;
    ngx_http_cinematch_loc_conf_t  *lcf;

    if (r != r->main) {
        return NGX_DECLINED;
    }

    ctx = ngx_http_cinematch_create_ctx(r);
    if (ctx == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_cinematch_module);

    method = (r->method == NGX_HTTP_HEAD) ? NGX_HTTP_GET : r->method;
    allow = 0;
    route = NULL;

    for (i = 0; i < ngx_http_cinematch_nroutes; i++) {

        if ((ngx_http_cinematch_routes[i].flags
             & NGX_HTTP_CINEMATCH_ROUTE_ECHO)
            && !lcf->echo)
        {
            continue;
        }

        if (ngx_http_cinematch_route_match(
                                   &ngx_http_cinematch_routes[i].pattern,
                                   &r->uri, params, &nparams)
            != NGX_OK)
        {
            continue;
        }

        ctx->route_label = ngx_http_cinematch_route_labels[i];

        if (ngx_http_cinematch_routes[i].methods & method) {
            route = &ngx_http_cinematch_routes[i];
            break;
        }

        allow |= ngx_http_cinematch_routes[i].methods;
    }

    if (route == NULL) {
        rc = ngx_http_discard_request_body(r);

        if (rc != NGX_OK) {
            return rc;
        }

        if (allow) {
            return ngx_http_cinematch_send_not_allowed(r, allow);
        }

        return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                                             "not_found", "no such endpoint");
    }

    ctx->route = route;
    ctx->nparams = nparams;
    ngx_memcpy(ctx->params, params, nparams * sizeof(ngx_str_t));

    if (route->flags & NGX_HTTP_CINEMATCH_ROUTE_BODY) {
        return ngx_http_cinematch_read_body(r, ctx);
    }

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    return ngx_http_cinematch_status(r, ngx_http_cinematch_dispatch(r, ctx));
}


ngx_int_t
ngx_http_cinematch_dispatch(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
#if (NGX_HTTP_CINEMATCH_AUTH)
    return ngx_http_cinematch_authn(r, ctx);
#else
    if (ctx->route->flags & NGX_HTTP_CINEMATCH_ROUTE_AUTH) {
        /* never serve a protected route without the auth step */
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             "authentication is not built in");
    }

    return ctx->route->handler(r, ctx);
#endif
}


ngx_http_cinematch_caller_t *
ngx_http_cinematch_caller(ngx_http_request_t *r)
{
    ngx_http_cinematch_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_cinematch_module);

    return ctx != NULL ? ctx->caller : NULL;
}


static ngx_int_t
ngx_http_cinematch_send_not_allowed(ngx_http_request_t *r, ngx_uint_t allow)
{
    u_char                       *p;
    size_t                        len;
    ngx_str_t                     key, value;
    ngx_http_cinematch_method_t  *m;

    if (allow & NGX_HTTP_GET) {
        allow |= NGX_HTTP_HEAD;
    }

    len = 0;

    for (m = ngx_http_cinematch_methods; m->method; m++) {
        if (allow & m->method) {
            len += m->name.len + sizeof(", ") - 1;
        }
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    value.data = p;

    for (m = ngx_http_cinematch_methods; m->method; m++) {
        if (allow & m->method) {
            if (p != value.data) {
                *p++ = ','; *p++ = ' ';
            }

            p = ngx_cpymem(p, m->name.data, m->name.len);
        }
    }

    value.len = p - value.data;
    ngx_str_set(&key, "Allow");

    if (ngx_http_cinematch_add_header(r, &key, &value) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_ALLOWED,
                                         "method_not_allowed",
                                         "method not allowed");
}

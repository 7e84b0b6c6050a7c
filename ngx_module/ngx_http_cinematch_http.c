
/*
 * ngx_http_cinematch_http.c: what every endpoint shares.
 *
 *   - the request context and X-Request-ID (the client's when it is sane,
 *     otherwise 32 hex digits of fresh randomness, as the stock
 *     $request_id, but drawn from a per-worker buffer), sent on every
 *     response;
 *   - responses: JSON (jansson), raw buffers, and the uniform error body
 *     {"error":{"code":..,"message":..,"request_id":..}} of the API;
 *   - the request body: cinematch_max_body_size (JSON 413), one
 *     contiguous copy, JSON parsing (JSON 400/415);
 *   - jansson values tied to the request pool by a pool cleanup;
 *   - the wait/finish pair of a request suspended on an upstream.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <openssl/rand.h>

#include "ngx_http_cinematch.h"


static ngx_int_t ngx_http_cinematch_request_id_valid(ngx_str_t *id);
static ngx_int_t ngx_http_cinematch_request_id_new(ngx_http_request_t *r,
    ngx_str_t *id);
static ngx_uint_t ngx_http_cinematch_has_header(ngx_http_request_t *r,
    ngx_str_t *key);
static ngx_int_t ngx_http_cinematch_retry_after(ngx_http_request_t *r,
    ngx_uint_t status);
static ngx_int_t ngx_http_cinematch_security_headers(ngx_http_request_t *r);
static void ngx_http_cinematch_body_handler(ngx_http_request_t *r);
static ngx_int_t ngx_http_cinematch_body_done(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
static ngx_int_t ngx_http_cinematch_json_content_type(ngx_http_request_t *r);
static u_char *ngx_http_cinematch_json_escape(u_char *dst, u_char *src,
    size_t len);
static void ngx_http_cinematch_json_cleanup(void *data);
static ngx_int_t ngx_http_cinematch_request_body_filter(ngx_http_request_t *r,
    ngx_chain_t *in);


typedef struct {
    ngx_uint_t    status;
    const char   *code;
    const char   *message;
} ngx_http_cinematch_status_t;


static ngx_http_cinematch_status_t  ngx_http_cinematch_statuses[] = {
    { NGX_HTTP_BAD_REQUEST, "invalid_request", "bad request" },
    { NGX_HTTP_UNAUTHORIZED, "unauthenticated", "authentication required" },
    { NGX_HTTP_FORBIDDEN, "forbidden", "forbidden" },
    { NGX_HTTP_NOT_FOUND, "not_found", "not found" },
    { NGX_HTTP_CONFLICT, "conflict", "conflict" },
    { NGX_HTTP_REQUEST_ENTITY_TOO_LARGE, "payload_too_large",
      "request body is too large" },
    { NGX_HTTP_UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
      "unsupported media type" },
    { NGX_HTTP_TOO_MANY_REQUESTS, "rate_limited", "too many requests" },
    { NGX_HTTP_INTERNAL_SERVER_ERROR, "internal", "internal error" },
    { NGX_HTTP_NOT_IMPLEMENTED, "not_implemented", "not implemented" },
    { NGX_HTTP_BAD_GATEWAY, "bad_gateway", "bad gateway" },
    { NGX_HTTP_SERVICE_UNAVAILABLE, "unavailable", "service unavailable" },
    { NGX_HTTP_GATEWAY_TIME_OUT, "timeout", "upstream timed out" },
    { 0, NULL, NULL }
};


static ngx_http_request_body_filter_pt  ngx_http_cinematch_next_body_filter;


static ngx_str_t  ngx_http_cinematch_request_id_header =
    ngx_string("X-Request-ID");
static ngx_str_t  ngx_http_cinematch_json_type =
    ngx_string("application/json");


ngx_http_cinematch_ctx_t *
ngx_http_cinematch_create_ctx(ngx_http_request_t *r)
{
    ngx_uint_t                       i;
    ngx_list_part_t                 *part;
    ngx_table_elt_t                 *h;
    ngx_http_cinematch_ctx_t        *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_cinematch_module);
    if (ctx != NULL) {
        return ctx;
    }

    ctx = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_ctx_t));
    if (ctx == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     ctx->request_id = { 0, NULL };
     *     ctx->route = NULL;
     *     ctx->nparams = 0;
     *     ctx->body = { 0, NULL };
     *     ctx->json = NULL;
     *     ctx->data = NULL;
     */

    ctx->route_label = ngx_http_cinematch_nroutes;

    ngx_http_set_ctx(r, ctx, ngx_http_cinematch_module);

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].hash == 0
            || h[i].key.len != ngx_http_cinematch_request_id_header.len
            || ngx_strncasecmp(h[i].key.data,
                               ngx_http_cinematch_request_id_header.data,
                               h[i].key.len)
               != 0)
        {
            continue;
        }

        if (ngx_http_cinematch_request_id_valid(&h[i].value) == NGX_OK) {
            ctx->request_id = h[i].value;
        }

        break;
    }

    if (ctx->request_id.len == 0
        && ngx_http_cinematch_request_id_new(r, &ctx->request_id) != NGX_OK)
    {
        return NULL;
    }

    if (ngx_http_cinematch_add_header(r, &ngx_http_cinematch_request_id_header,
                                      &ctx->request_id)
        != NGX_OK)
    {
        return NULL;
    }

    return ctx;
}


/*
 * A new request id: 16 random bytes as 32 hex digits, the shape and the
 * strength of the stock $request_id, which calls RAND_bytes() for each
 * request (OpenSSL 3's per-call overhead was ~2.5 % of a worker serving a
 * no-op endpoint, measured with perf).  Here the bytes come from a
 * per-worker buffer that one RAND_bytes() call refills every 256 ids: the
 * same generator (unpredictable, unique with the odds of 128 random bits),
 * one call instead of 256.  The buffer belongs to the process that filled
 * it: after a fork it is refilled before use.  The stock variable stays
 * the fallback if the generator fails.
 */

#define NGX_HTTP_CINEMATCH_RID_BYTES  16
#define NGX_HTTP_CINEMATCH_RID_BATCH  256

static ngx_int_t
ngx_http_cinematch_request_id_new(ngx_http_request_t *r, ngx_str_t *id)
{
    u_char                          *p;
    ngx_http_variable_value_t       *vv;
    ngx_http_cinematch_main_conf_t  *mcf;

    static ngx_pid_t   pid;
    static ngx_uint_t  next = NGX_HTTP_CINEMATCH_RID_BATCH;
    static u_char      pool[NGX_HTTP_CINEMATCH_RID_BYTES
                            * NGX_HTTP_CINEMATCH_RID_BATCH];

    p = ngx_pnalloc(r->pool, 2 * NGX_HTTP_CINEMATCH_RID_BYTES);
    if (p == NULL) {
        return NGX_ERROR;
    }

    if (pid != ngx_pid || next == NGX_HTTP_CINEMATCH_RID_BATCH) {
        if (RAND_bytes(pool, sizeof(pool)) != 1) {
            goto fallback;
        }

        pid = ngx_pid;
        next = 0;
    }

    ngx_hex_dump(p, pool + next * NGX_HTTP_CINEMATCH_RID_BYTES,
                 NGX_HTTP_CINEMATCH_RID_BYTES);
    next++;

    id->data = p;
    id->len = 2 * NGX_HTTP_CINEMATCH_RID_BYTES;

    return NGX_OK;

fallback:

    mcf = ngx_http_get_module_main_conf(r, ngx_http_cinematch_module);

    vv = ngx_http_get_indexed_variable(r, mcf->request_id_index);

    if (vv == NULL || vv->not_found) {
        return NGX_ERROR;
    }

    id->data = vv->data;
    id->len = vv->len;

    return NGX_OK;
}


/*
 * A client's request id is echoed into a response header and into JSON
 * and logs, so only a short token of safe characters is accepted.
 */

static ngx_int_t
ngx_http_cinematch_request_id_valid(ngx_str_t *id)
{
    u_char  *p, *last;

    if (id->len == 0 || id->len > NGX_HTTP_CINEMATCH_REQUEST_ID_LEN) {
        return NGX_DECLINED;
    }

    last = id->data + id->len;

    for (p = id->data; p < last; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
            || (*p >= '0' && *p <= '9')
            || *p == '-' || *p == '_' || *p == '.' || *p == ':')
        {
            continue;
        }

        return NGX_DECLINED;
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_cinematch_add_header(ngx_http_request_t *r, ngx_str_t *key,
    ngx_str_t *value)
{
    ngx_table_elt_t  *h;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    h->key = *key;
    h->value = *value;
    h->lowcase_key = NULL;

    return NGX_OK;
}


/*
 * On every API answer: no MIME sniffing of JSON into HTML, never framed,
 * no Referer to wherever a link in an answer leads.  Answers of routes
 * that carry credentials or secrets (ROUTE_AUTH, ROUTE_OPTAUTH,
 * ROUTE_NOSTORE), errors included, are not stored by any cache; a handler
 * that set its own Cache-Control keeps it.
 */

static ngx_int_t
ngx_http_cinematch_security_headers(ngx_http_request_t *r)
{
    ngx_uint_t                 i;
    ngx_http_cinematch_ctx_t  *ctx;

    static ngx_str_t  cache_control = ngx_string("Cache-Control");
    static ngx_str_t  no_store = ngx_string("no-store");

    static ngx_str_t  headers[][2] = {
        { ngx_string("X-Content-Type-Options"), ngx_string("nosniff") },
        { ngx_string("X-Frame-Options"), ngx_string("DENY") },
        { ngx_string("Referrer-Policy"), ngx_string("no-referrer") }
    };

    for (i = 0; i < sizeof(headers) / sizeof(headers[0]); i++) {
        if (ngx_http_cinematch_add_header(r, &headers[i][0], &headers[i][1])
            != NGX_OK)
        {
            return NGX_ERROR;
        }
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_cinematch_module);

    if (ctx != NULL && ctx->route != NULL
        && (ctx->route->flags & (NGX_HTTP_CINEMATCH_ROUTE_AUTH
                                 |NGX_HTTP_CINEMATCH_ROUTE_OPTAUTH
                                 |NGX_HTTP_CINEMATCH_ROUTE_NOSTORE))
        && !ngx_http_cinematch_has_header(r, &cache_control))
    {
        return ngx_http_cinematch_add_header(r, &cache_control, &no_store);
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_cinematch_send_buf(ngx_http_request_t *r, ngx_uint_t status,
    ngx_str_t *type, u_char *data, size_t len)
{
    ngx_int_t     rc;
    ngx_buf_t    *b;
    ngx_chain_t   out;

    if (r->header_sent) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "cinematch: response already sent");
        return NGX_ERROR;
    }

    if (ngx_http_cinematch_security_headers(r) != NGX_OK) {
        return NGX_ERROR;
    }

    r->headers_out.status = status;
    r->headers_out.content_type = *type;
    r->headers_out.content_type_len = type->len;
    r->headers_out.content_type_lowcase = NULL;
    r->headers_out.content_length_n = len;

    if (r->headers_out.content_length) {
        r->headers_out.content_length->hash = 0;
        r->headers_out.content_length = NULL;
    }

    if (len == 0) {
        r->header_only = 1;
    }

    rc = ngx_http_send_header(r);

    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    b = ngx_calloc_buf(r->pool);
    if (b == NULL) {
        return NGX_ERROR;
    }

    b->pos = data;
    b->last = data + len;
    b->memory = 1;
    b->last_buf = 1;
    b->last_in_chain = 1;

    out.buf = b;
    out.next = NULL;

    return ngx_http_output_filter(r, &out);
}


/*
 * Takes the caller's reference to json, so that a handler may write
 * return ngx_http_cinematch_send_json(r, 200, json_pack(...));
 * a NULL json (jansson ran out of memory) becomes a 500.
 */

ngx_int_t
ngx_http_cinematch_send_json(ngx_http_request_t *r, ngx_uint_t status,
    json_t *json)
{
    u_char  *p;
    size_t   len;

    if (json == NULL) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "cinematch: cannot build JSON response");
        return ngx_http_cinematch_send_error(r,
                                         NGX_HTTP_INTERNAL_SERVER_ERROR,
                                         "internal", "internal error");
    }

    len = json_dumpb(json, NULL, 0, JSON_COMPACT);

    p = (len == 0) ? NULL : ngx_pnalloc(r->pool, len);

    if (p == NULL || json_dumpb(json, (char *) p, len, JSON_COMPACT) != len) {
        json_decref(json);
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                      "cinematch: cannot serialise JSON response");
        return ngx_http_cinematch_send_error(r,
                                         NGX_HTTP_INTERNAL_SERVER_ERROR,
                                         "internal", "internal error");
    }

    json_decref(json);

    return ngx_http_cinematch_send_buf(r, status,
                                       &ngx_http_cinematch_json_type, p, len);
}


static ngx_uint_t
ngx_http_cinematch_has_header(ngx_http_request_t *r, ngx_str_t *key)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_out.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return 0;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].hash != 0
            && h[i].key.len == key->len
            && ngx_strncasecmp(h[i].key.data, key->data, key->len) == 0)
        {
            return 1;
        }
    }
}


/*
 * The error body is written without jansson: it must work when memory is
 * short, and its parts are known.  503 answers carry Retry-After (1 s
 * unless the caller set one).
 */

ngx_int_t
ngx_http_cinematch_send_error(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message)
{
    u_char                    *p, *body;
    size_t                     len, code_len, msg_len;
    ngx_str_t                  id;
    ngx_http_cinematch_ctx_t  *ctx;

    static u_char  part1[] = "{\"error\":{\"code\":\"";
    static u_char  part2[] = "\",\"message\":\"";
    static u_char  part3[] = "\",\"request_id\":\"";
    static u_char  part4[] = "\"}}";

    ctx = ngx_http_get_module_ctx(r, ngx_http_cinematch_module);

    code_len = ngx_strlen(code);

    if (ctx != NULL) {
        id = ctx->request_id;

        /* for the request log (ngx_http_cinematch_serving.c) */
        ctx->error_code.data = ngx_pnalloc(r->pool, code_len);
        if (ctx->error_code.data != NULL) {
            ngx_memcpy(ctx->error_code.data, code, code_len);
            ctx->error_code.len = code_len;
        }

    } else {
        ngx_str_null(&id);
    }

    msg_len = ngx_strlen(message);

    len = sizeof(part1) - 1 + code_len * 6
          + sizeof(part2) - 1 + msg_len * 6
          + sizeof(part3) - 1 + id.len
          + sizeof(part4) - 1;

    body = ngx_pnalloc(r->pool, len);
    if (body == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(body, part1, sizeof(part1) - 1);
    p = ngx_http_cinematch_json_escape(p, (u_char *) code, code_len);
    p = ngx_cpymem(p, part2, sizeof(part2) - 1);
    p = ngx_http_cinematch_json_escape(p, (u_char *) message, msg_len);
    p = ngx_cpymem(p, part3, sizeof(part3) - 1);

    if (id.len) {
        p = ngx_cpymem(p, id.data, id.len);
    }

    p = ngx_cpymem(p, part4, sizeof(part4) - 1);

    if (ngx_http_cinematch_retry_after(r, status) != NGX_OK) {
        return NGX_ERROR;
    }

    return ngx_http_cinematch_send_buf(r, status,
                                       &ngx_http_cinematch_json_type,
                                       body, p - body);
}


static ngx_int_t
ngx_http_cinematch_retry_after(ngx_http_request_t *r, ngx_uint_t status)
{
    ngx_str_t  key, value;

    ngx_str_set(&key, "Retry-After");

    if (status != NGX_HTTP_SERVICE_UNAVAILABLE
        || ngx_http_cinematch_has_header(r, &key))
    {
        return NGX_OK;
    }

    ngx_str_set(&value, "1");

    return ngx_http_cinematch_add_header(r, &key, &value);
}


ngx_int_t
ngx_http_cinematch_send_invalid(ngx_http_request_t *r, const char *field,
    const char *message)
{
    json_t *extra;

    extra = json_pack("{s:{s:s}}", "fields", field, message);
    if (extra == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_send_error_json(r, 422, "validation_failed",
                                              message, extra);
}


/*
 * The error body with more members, e.g. the "fields" of a 422
 * validation_failed: {"error":{"code","message","request_id","fields":{..}}}.
 * Takes the reference to extra (an object; NULL for none).
 */

ngx_int_t
ngx_http_cinematch_send_error_json(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message, json_t *extra)
{
    json_t                    *err;
    ngx_http_cinematch_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_cinematch_module);

    if (ctx != NULL) {
        /* for the request log (ngx_http_cinematch_serving.c) */
        ctx->error_code.len = ngx_strlen(code);
        ctx->error_code.data = ngx_pnalloc(r->pool, ctx->error_code.len);
        if (ctx->error_code.data == NULL) {
            ctx->error_code.len = 0;
        } else {
            ngx_memcpy(ctx->error_code.data, code, ctx->error_code.len);
        }
    }

    err = json_pack("{s:s, s:s, s:s%}", "code", code, "message", message,
                    "request_id",
                    ctx ? (const char *) ctx->request_id.data : "",
                    ctx ? ctx->request_id.len : 0);

    if (err == NULL || (extra != NULL && json_object_update(err, extra) != 0))
    {
        json_decref(err);
        json_decref(extra);
        return ngx_http_cinematch_send_error(r, status, code, message);
    }

    json_decref(extra);

    if (ngx_http_cinematch_retry_after(r, status) != NGX_OK) {
        json_decref(err);
        return NGX_ERROR;
    }

    return ngx_http_cinematch_send_json(r, status,
                                        json_pack("{s:o}", "error", err));
}


static u_char *
ngx_http_cinematch_json_escape(u_char *dst, u_char *src, size_t len)
{
    u_char  c;

    static u_char  hex[] = "0123456789abcdef";

    while (len--) {
        c = *src++;

        if (c == '"' || c == '\\') {
            *dst++ = '\\';
            *dst++ = c;

        } else if (c < 0x20 || c == 0x7f) {
            *dst++ = '\\'; *dst++ = 'u'; *dst++ = '0'; *dst++ = '0';
            *dst++ = hex[c >> 4];
            *dst++ = hex[c & 0xf];

        } else {
            *dst++ = c;
        }
    }

    return dst;
}


/*
 * jansson allocates with malloc(): a value that lives as long as the
 * request is released by a cleanup of the request pool.  Returns json
 * (NULL stays NULL).
 */

json_t *
ngx_http_cinematch_json_track(ngx_http_request_t *r, json_t *json)
{
    ngx_pool_cleanup_t  *cln;

    if (json == NULL) {
        return NULL;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        json_decref(json);
        return NULL;
    }

    cln->handler = ngx_http_cinematch_json_cleanup;
    cln->data = json;

    return json;
}


static void
ngx_http_cinematch_json_cleanup(void *data)
{
    json_decref((json_t *) data);
}


ngx_int_t
ngx_http_cinematch_body_size_check(ngx_http_request_t *r)
{
    ngx_http_cinematch_loc_conf_t  *lcf;

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_cinematch_module);

    if (r->headers_in.content_length_n > (off_t) lcf->max_body_size) {
        return NGX_DECLINED;
    }

    return NGX_OK;
}


/*
 * Reads the body for a route with ROUTE_BODY and then calls its handler.
 * Called as (and returns like) a content handler.
 */

ngx_int_t
ngx_http_cinematch_read_body(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    if (ngx_http_cinematch_body_size_check(r) != NGX_OK) {
        return ngx_http_cinematch_refuse_body(r,
                                     NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                     "payload_too_large",
                                     "request body is too large");
    }

    if ((ctx->route->flags & NGX_HTTP_CINEMATCH_ROUTE_JSON)
           == NGX_HTTP_CINEMATCH_ROUTE_JSON
        && ngx_http_cinematch_json_content_type(r) != NGX_OK)
    {
        return ngx_http_cinematch_refuse_body(r,
                                     NGX_HTTP_UNSUPPORTED_MEDIA_TYPE,
                                     "unsupported_media_type",
                                     "request body must be application/json");
    }

    return ngx_http_cinematch_read_body_then(r,
                                             ngx_http_cinematch_body_handler);
}


/*
 * The one body reader: the JSON routes above and the model upload (which
 * reads only after the identity step, into a file) both come here.
 */

ngx_int_t
ngx_http_cinematch_read_body_then(ngx_http_request_t *r,
    ngx_http_client_body_handler_pt post)
{
    ngx_int_t  rc;

    rc = ngx_http_read_client_request_body(r, post);

    if (rc >= NGX_HTTP_SPECIAL_RESPONSE) {
        return ngx_http_cinematch_status(r, rc);
    }

    return NGX_DONE;
}


ngx_int_t
ngx_http_cinematch_refuse_body(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message)
{
    ngx_int_t  rc;

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    return ngx_http_cinematch_send_error(r, status, code, message);
}


/*
 * A handler may return an HTTP status as nginx handlers do (typically
 * NGX_HTTP_INTERNAL_SERVER_ERROR when an allocation fails); before nginx
 * turns it into its HTML page, it becomes the API's JSON error.  Statuses
 * that mean the connection is going away (408, 444, 499) pass through.
 * Like nginx, no keep-alive after a 400, 413 or 500: the request body may
 * not have been read to its end.
 */

ngx_int_t
ngx_http_cinematch_status(ngx_http_request_t *r, ngx_int_t rc)
{
    ngx_http_cinematch_status_t  *st;

    if (rc < NGX_HTTP_SPECIAL_RESPONSE || r->header_sent
        || r->connection->error)
    {
        return rc;
    }

    for (st = ngx_http_cinematch_statuses; st->status; st++) {
        if (st->status == (ngx_uint_t) rc) {
            break;
        }
    }

    if (st->status == 0) {
        return rc;
    }

    switch (rc) {
    case NGX_HTTP_BAD_REQUEST:
    case NGX_HTTP_REQUEST_ENTITY_TOO_LARGE:
    case NGX_HTTP_INTERNAL_SERVER_ERROR:
    case NGX_HTTP_NOT_IMPLEMENTED:
        r->keepalive = 0;
        break;
    default:
        break;
    }

    return ngx_http_cinematch_send_error(r, st->status, st->code,
                                         st->message);
}


/* A missing Content-Type is accepted; a present one must be JSON. */

static ngx_int_t
ngx_http_cinematch_json_content_type(ngx_http_request_t *r)
{
    u_char     *p, *last;
    ngx_str_t  *type;

    if (r->headers_in.content_type == NULL) {
        return NGX_OK;
    }

    type = &r->headers_in.content_type->value;
    last = type->data + type->len;

    for (p = type->data; p < last && *p != ';' && *p != ' '; p++) {
        /* void */
    }

    if ((size_t) (p - type->data) == ngx_http_cinematch_json_type.len
        && ngx_strncasecmp(type->data, ngx_http_cinematch_json_type.data,
                           ngx_http_cinematch_json_type.len)
           == 0)
    {
        return NGX_OK;
    }

    return NGX_DECLINED;
}


static void
ngx_http_cinematch_body_handler(ngx_http_request_t *r)
{
    ngx_http_cinematch_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_cinematch_module);

    ngx_http_finalize_request(r, ngx_http_cinematch_status(r,
                                       ngx_http_cinematch_body_done(r, ctx)));
}


static ngx_int_t
ngx_http_cinematch_body_done(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    u_char                         *p;
    off_t                           size;
    ssize_t                         n;
    json_t                         *json;
    ngx_buf_t                      *b;
    ngx_chain_t                    *cl;
    json_error_t                    err;
    ngx_http_cinematch_loc_conf_t  *lcf;

    u_char  message[sizeof("malformed JSON: ") + JSON_ERROR_TEXT_LENGTH
                    + sizeof(" at line , column ") + 2 * NGX_INT_T_LEN];

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_cinematch_module);

    size = 0;

    if (r->request_body != NULL) {
        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            b = cl->buf;
            size += b->in_file ? b->file_last - b->file_pos
                               : b->last - b->pos;
        }
    }

    /* a chunked body has no Content-Length to check in advance */

    if (ctx->body_too_large || size > (off_t) lcf->max_body_size) {
        return ngx_http_cinematch_send_error(r,
                                     NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                     "payload_too_large",
                                     "request body is too large");
    }

    if (size > 0) {
        p = ngx_pnalloc(r->pool, (size_t) size);
        if (p == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ctx->body.data = p;

        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            b = cl->buf;

            if (b->in_file) {
                n = ngx_read_file(b->file, p, (size_t) (b->file_last
                                                        - b->file_pos),
                                  b->file_pos);

                if (n != b->file_last - b->file_pos) {
                    ngx_log_error(NGX_LOG_ALERT, r->connection->log, 0,
                                  "cinematch: cannot read request body "
                                  "from a temporary file");
                    return NGX_HTTP_INTERNAL_SERVER_ERROR;
                }

                p += n;
                continue;
            }

            p = ngx_cpymem(p, b->pos, b->last - b->pos);
        }

        ctx->body.len = p - ctx->body.data;
    }

    if ((ctx->route->flags & NGX_HTTP_CINEMATCH_ROUTE_JSON)
        != NGX_HTTP_CINEMATCH_ROUTE_JSON)
    {
        return ngx_http_cinematch_dispatch(r, ctx);
    }

    if (ctx->body.len == 0) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_BAD_REQUEST,
                                             "invalid_request",
                                             "request body is empty");
    }

    json = json_loadb((const char *) ctx->body.data, ctx->body.len,
                      JSON_REJECT_DUPLICATES, &err);

    if (json == NULL) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "cinematch: malformed JSON body: %s", err.text);

        p = ngx_snprintf(message, sizeof(message) - 1,
                         "malformed JSON: %s at line %d, column %d",
                         err.text, err.line, err.column);
        *p = '\0';

        return ngx_http_cinematch_send_error(r, NGX_HTTP_BAD_REQUEST,
                                             "invalid_request",
                                             (const char *) message);
    }

    ctx->json = ngx_http_cinematch_json_track(r, json);
    if (ctx->json == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (!json_is_object(json)) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_BAD_REQUEST,
                                             "invalid_request",
                                             "request body must be "
                                             "a JSON object");
    }

    return ngx_http_cinematch_dispatch(r, ctx);
}


/*
 * A chunked body has no length to check before reading it, and the core's
 * client_max_body_size is off in cinematch locations (see the merge): this
 * request body filter counts the bytes of bodies read for a route, and
 * once they pass cinematch_max_body_size drops the rest as it arrives
 * (marked consumed, not passed on, so it is neither buffered nor written
 * to a temporary file).  Only the final empty buffer goes on, so that
 * reading completes and the route answers the JSON 413.
 */

ngx_int_t
ngx_http_cinematch_body_filter_init(ngx_conf_t *cf)
{
    ngx_http_cinematch_next_body_filter = ngx_http_top_request_body_filter;
    ngx_http_top_request_body_filter = ngx_http_cinematch_request_body_filter;

    return NGX_OK;
}


static ngx_int_t
ngx_http_cinematch_request_body_filter(ngx_http_request_t *r, ngx_chain_t *in)
{
    off_t                           limit;
    ngx_chain_t                    *cl, out;
    ngx_http_cinematch_ctx_t       *ctx;
    ngx_http_cinematch_loc_conf_t  *lcf;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_cinematch_module);

    if (ctx == NULL || ctx->route == NULL || in == NULL) {
        return ngx_http_cinematch_next_body_filter(r, in);
    }

    lcf = ngx_http_get_module_loc_conf(r, ngx_http_cinematch_module);
    limit = (off_t) lcf->max_body_size;

#if (NGX_HTTP_CINEMATCH_MODELS)
    if (ctx->route->flags & NGX_HTTP_CINEMATCH_ROUTE_UPLOAD) {
        limit = ngx_http_cinematch_models_upload_max(r);
    }
#endif

    if (!ctx->body_too_large) {
        for (cl = in; cl; cl = cl->next) {
            ctx->body_received += ngx_buf_size(cl->buf);
        }

        if (ctx->body_received <= limit) {
            return ngx_http_cinematch_next_body_filter(r, in);
        }

        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "cinematch: client sent a body of more than %O bytes",
                      limit);

        ctx->body_too_large = 1;

        /*
         * What was kept so far is dropped too, marked as written the way
         * ngx_http_write_request_body() does, or a full read buffer would
         * still be flushed to a temporary file.
         */

        for (cl = r->request_body->bufs; cl; cl = cl->next) {
            cl->buf->pos = cl->buf->last;
            cl->buf->file_pos = cl->buf->file_last;
        }

        r->request_body->bufs = NULL;
    }

    for (cl = in; cl; cl = cl->next) {
        cl->buf->pos = cl->buf->last;
        cl->buf->file_pos = cl->buf->file_last;

        if (cl->buf->last_buf) {
            out.buf = cl->buf;
            out.next = NULL;

            return ngx_http_cinematch_next_body_filter(r, &out);
        }
    }

    return NGX_OK;
}


/*
 * Query arguments.  ngx_http_cinematch_arg() gives the value of `name`
 * unescaped (%XX, and '+' as a space) into the request pool; NGX_DECLINED
 * when the argument is absent.  ngx_http_cinematch_arg_int() parses a
 * decimal integer in [min, max], def when absent; NGX_ERROR when the value
 * is malformed or out of range, for the handler to answer 400.
 */

ngx_int_t
ngx_http_cinematch_arg(ngx_http_request_t *r, const char *name,
    ngx_str_t *value)
{
    u_char     *p, *dst, *src;
    ngx_str_t   raw;

    if (ngx_http_arg(r, (u_char *) name, ngx_strlen(name), &raw) != NGX_OK) {
        return NGX_DECLINED;
    }

    p = ngx_pnalloc(r->pool, raw.len + 1);
    if (p == NULL) {
        return NGX_ERROR;
    }

    ngx_memcpy(p, raw.data, raw.len);

    for (dst = p; dst < p + raw.len; dst++) {
        if (*dst == '+') {
            *dst = ' ';
        }
    }

    src = p;
    dst = p;
    ngx_unescape_uri(&dst, &src, raw.len, 0);
    *dst = '\0';

    value->data = p;
    value->len = dst - p;

    return NGX_OK;
}


ngx_int_t
ngx_http_cinematch_arg_int(ngx_http_request_t *r, const char *name,
    ngx_int_t def, ngx_int_t min, ngx_int_t max, ngx_int_t *out)
{
    ngx_int_t   n, sign;
    ngx_str_t   value;

    switch (ngx_http_cinematch_arg(r, name, &value)) {

    case NGX_DECLINED:
        *out = def;
        return NGX_OK;

    case NGX_OK:
        break;

    default:
        return NGX_ERROR;
    }

    sign = 1;

    if (value.len > 1 && value.data[0] == '-') {
        sign = -1;
        value.data++;
        value.len--;
    }

    n = ngx_atoi(value.data, value.len);

    if (n == NGX_ERROR) {
        return NGX_ERROR;
    }

    n *= sign;

    if (n < min || n > max) {
        return NGX_ERROR;
    }

    *out = n;

    return NGX_OK;
}


/*
 * A handler that is about to wait on an upstream calls this and returns
 * NGX_DONE; the upstream's completion calls ngx_http_cinematch_finish().
 * While it waits, a client that closes the connection terminates the
 * request, and the pool cleanups release what it held.
 */

void
ngx_http_cinematch_wait(ngx_http_request_t *r)
{
    r->main->count++;

    if (r->read_event_handler == ngx_http_block_reading) {
        r->read_event_handler = ngx_http_test_reading;
    }
}


/* Completion from another connection's event: finalize, run posted. */

void
ngx_http_cinematch_finish(ngx_http_request_t *r, ngx_int_t rc)
{
    ngx_connection_t  *c;

    c = r->connection;

    ngx_http_finalize_request(r, ngx_http_cinematch_status(r, rc));
    ngx_http_run_posted_requests(c);
}

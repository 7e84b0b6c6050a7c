
/*
 * ngx_http_cinematch_api_ops.c: operational endpoints.
 *
 *   GET /health   liveness: the worker answers; touches nothing else.
 *   GET /ready    readiness: a PostgreSQL round trip (SELECT 1), a Redis
 *                 PING and the inference daemons' state, run concurrently;
 *                 503 names the checks that failed.
 *   GET /metrics  see ngx_http_cinematch_metrics.c.
 *   POST /internal/json  (cinematch_echo on) answers the parsed body; it
 *                 exists to test the body and JSON handling.
 *   GET /internal/pg/sleep/{ms}  (cinematch_echo on) a query that takes
 *                 ms milliseconds, to test the pool: queueing, timeouts,
 *                 clients that go away.  Also the model of a handler that
 *                 waits on PostgreSQL.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_cinematch.h"


typedef struct {
    ngx_uint_t    pending;
    ngx_uint_t    failed;
    json_t       *checks;
    ngx_msec_t    start;
} ngx_http_cinematch_ready_t;


static ngx_int_t ngx_http_cinematch_pg_sleep_done(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_ready_pg(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_ready_redis(ngx_http_request_t *r,
    void *data, redisReply *reply);
static void ngx_http_cinematch_ready_check(ngx_http_cinematch_ready_t *rd,
    const char *name, const char *err);
static ngx_int_t ngx_http_cinematch_ready_done(ngx_http_request_t *r,
    ngx_http_cinematch_ready_t *rd);


ngx_int_t
ngx_http_cinematch_health_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    ngx_http_cinematch_main_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(r, ngx_http_cinematch_module);

    return ngx_http_cinematch_send_json(r, NGX_HTTP_OK,
               json_pack("{s:s, s:s, s:I}",
                         "status", "ok",
                         "version", NGX_HTTP_CINEMATCH_VERSION,
                         "uptime_seconds",
                         (json_int_t) (ngx_time() - mcf->start_time)));
}


ngx_int_t
ngx_http_cinematch_json_echo_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    return ngx_http_cinematch_send_json(r, NGX_HTTP_OK,
                                        json_pack("{s:O}", "json", ctx->json));
}


ngx_int_t
ngx_http_cinematch_pg_sleep_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    u_char       *p;
    ngx_int_t     ms, rc;
    const char  **values;

    ms = ngx_atoi(ctx->params[0].data, ctx->params[0].len);

    if (ms == NGX_ERROR || ms > 60000) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_BAD_REQUEST,
                                             "invalid_request",
                                             "ms must be 0..60000");
    }

    values = ngx_palloc(r->pool, sizeof(const char *));
    p = ngx_pnalloc(r->pool, NGX_INT_T_LEN + sizeof(".000"));

    if (values == NULL || p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* parameters are text: the query and its values travel separately */

    *ngx_sprintf(p, "%i.%03i", ms / 1000, ms % 1000) = '\0';
    values[0] = (const char *) p;

    ctx->data = (void *) (uintptr_t) ms;

    rc = ngx_http_cinematch_pg_query(r, "SELECT pg_sleep($1::float8)", 1,
                                     values,
                                     ngx_http_cinematch_pg_sleep_done, ctx);

    switch (rc) {

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
ngx_http_cinematch_pg_sleep_done(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    ngx_http_cinematch_ctx_t *ctx = data;

    if (err != NULL) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             ngx_strcmp(err, "timeout") == 0
                                             ? "database timeout"
                                             : "database unavailable");
    }

    if (PQresultStatus(res) != PGRES_TUPLES_OK) {

        /* the server's message is logged, never sent to the client */

        return ngx_http_cinematch_send_error(r,
                                             NGX_HTTP_INTERNAL_SERVER_ERROR,
                                             "internal", "query failed");
    }

    return ngx_http_cinematch_send_json(r, NGX_HTTP_OK,
               json_pack("{s:I}", "slept_ms",
                         (json_int_t) (uintptr_t) ctx->data));
}


ngx_int_t
ngx_http_cinematch_ready_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    json_t                      *inference;
    ngx_int_t                    rc;
    ngx_http_cinematch_ready_t  *rd;

    static const char  *ping[] = { "PING" };
    static size_t       ping_len[] = { 4 };

    rd = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_ready_t));
    if (rd == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rd->checks = ngx_http_cinematch_json_track(r, json_object());
    if (rd->checks == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rd->start = ngx_current_msec;
    ctx->data = rd;

    /* inference: the daemons' state is read from their segments at once */

    inference = json_object();
    if (inference == NULL
        || json_object_set_new(rd->checks, "inference", inference) != 0)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

#if (NGX_HTTP_CINEMATCH_INFER)
    rc = ngx_http_cinematch_infer_ready(r, inference);
#else
    rc = NGX_OK;
    json_object_set_new(inference, "status", json_string("ok"));
    json_object_set_new(inference, "models", json_array());
#endif

    if (rc != NGX_OK) {
        rd->failed++;
    }

    /* PostgreSQL and Redis run concurrently; each took its own count */

    rc = ngx_http_cinematch_pg_query(r, "SELECT 1", 0, NULL,
                                     ngx_http_cinematch_ready_pg, rd);

    if (rc == NGX_OK) {
        rd->pending++;

    } else {
        ngx_http_cinematch_ready_check(rd, "postgres",
                                       (rc == NGX_DECLINED)
                                       ? "not connected" : "internal error");
    }

    rc = ngx_http_cinematch_redis_command(r, ngx_http_cinematch_ready_redis,
                                          rd, 1, ping, ping_len);

    if (rc == NGX_OK) {
        rd->pending++;

    } else {
        ngx_http_cinematch_ready_check(rd, "redis",
                                       (rc == NGX_DECLINED)
                                       ? "not connected" : "internal error");
    }

    if (rd->pending) {
        return NGX_DONE;
    }

    return ngx_http_cinematch_ready_done(r, rd);
}


static ngx_int_t
ngx_http_cinematch_ready_pg(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    ngx_http_cinematch_ready_t *rd = data;

    if (err == NULL && PQresultStatus(res) != PGRES_TUPLES_OK) {
        err = "query failed";
    }

    ngx_http_cinematch_ready_check(rd, "postgres", err);

    if (--rd->pending) {
        return NGX_DONE;
    }

    return ngx_http_cinematch_ready_done(r, rd);
}


static ngx_int_t
ngx_http_cinematch_ready_redis(ngx_http_request_t *r, void *data,
    redisReply *reply)
{
    ngx_http_cinematch_ready_t *rd = data;

    const char  *err;

    if (reply == NULL) {
        err = "no reply";

    } else if (reply->type != REDIS_REPLY_STATUS
               || reply->len != 4
               || ngx_strncmp(reply->str, "PONG", 4) != 0)
    {
        err = "unexpected reply to PING";

    } else {
        err = NULL;
    }

    ngx_http_cinematch_ready_check(rd, "redis", err);

    if (--rd->pending) {
        return NGX_DONE;
    }

    return ngx_http_cinematch_ready_done(r, rd);
}


static void
ngx_http_cinematch_ready_check(ngx_http_cinematch_ready_t *rd,
    const char *name, const char *err)
{
    json_t  *check;

    if (err) {
        rd->failed++;
        check = json_pack("{s:s, s:s}", "status", "error", "error", err);

    } else {
        check = json_pack("{s:s, s:I}", "status", "ok", "latency_ms",
                          (json_int_t) (ngx_current_msec - rd->start));
    }

    /* a NULL check makes json_object_set_new() fail: seen as not ready */

    if (json_object_set_new(rd->checks, name, check) != 0) {
        rd->failed++;
    }
}


static ngx_int_t
ngx_http_cinematch_ready_done(ngx_http_request_t *r,
    ngx_http_cinematch_ready_t *rd)
{
    json_t      *failed, *check, *status;
    ngx_str_t    key, value;
    const char  *name;

    failed = json_array();
    if (failed == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json_object_foreach(rd->checks, name, check) {
        status = json_object_get(check, "status");

        if (!json_is_string(status)
            || ngx_strcmp(json_string_value(status), "ok") != 0)
        {
            json_array_append_new(failed, json_string(name));
        }
    }

    if (rd->failed == 0 && json_array_size(failed) == 0) {
        json_decref(failed);

        return ngx_http_cinematch_send_json(r, NGX_HTTP_OK,
                   json_pack("{s:s, s:O}", "status", "ok",
                             "checks", rd->checks));
    }

    ngx_str_set(&key, "Retry-After");
    ngx_str_set(&value, "1");

    if (ngx_http_cinematch_add_header(r, &key, &value) != NGX_OK) {
        json_decref(failed);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_send_json(r, NGX_HTTP_SERVICE_UNAVAILABLE,
               json_pack("{s:s, s:o, s:O}", "status", "unavailable",
                         "failed", failed, "checks", rd->checks));
}

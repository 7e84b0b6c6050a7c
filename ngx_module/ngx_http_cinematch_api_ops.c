
/*
 * ngx_http_cinematch_api_ops.c: operational endpoints.
 *
 *   GET /health   liveness: the worker answers; touches nothing else.
 *   GET /ready    readiness: a PostgreSQL round trip (SELECT 1), a Redis
 *                 PING and the inference daemons' state, run concurrently;
 *                 503 names the checks that failed; a backend that is not
 *                 configured is "disabled".
 *   GET /metrics  see ngx_http_cinematch_metrics.c.
 *   POST /internal/json  (cinematch_echo on) answers the parsed body; it
 *                 exists to test the body and JSON handling (and answers
 *                 422 with the body's "invalid_fields").
 *   GET /internal/redis/echo/{value}  (cinematch_echo on) Redis ECHO of
 *                 the path segment: the model of a handler that waits on
 *                 Redis.
 *   GET /internal/args?limit=&offset=&q=  (cinematch_echo on) the query
 *                 argument helpers, as a movie search would use them.
 *   GET /internal/pg/types/{text}  (cinematch_echo on) one row of
 *                 assorted column types through ngx_http_cinematch_pg_rows(),
 *                 the path segment as a query parameter ("fail": an error
 *                 on the server).
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
    json_t       *training;     /* runs in progress, NULL: unknown */
    ngx_msec_t    start;
} ngx_http_cinematch_ready_t;


/*
 * Trainings in progress (`cinematch train ... --from-db` writes its
 * progress into the run row), read after the PostgreSQL check succeeded.
 * Informational: a failure (an older schema, a busy pool) leaves the key
 * out and never fails readiness.  The partial index on active runs keeps
 * it one index probe.
 */
#define NGX_HTTP_CINEMATCH_READY_TRAINING                                    \
    "SELECT coalesce(json_agg(json_build_object('run', id, 'model',"        \
    " model_name, 'status', status, 'started_at', started_at,"              \
    " 'progress', metrics->'progress') ORDER BY id), '[]')::text"            \
    " FROM training_runs WHERE status IN ('queued', 'running')"


static ngx_int_t ngx_http_cinematch_redis_echo_done(ngx_http_request_t *r,
    void *data, redisReply *reply);
static ngx_int_t ngx_http_cinematch_pg_types_done(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_pg_sleep_done(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_ready_pg(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_ready_training(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_ready_redis(ngx_http_request_t *r,
    void *data, redisReply *reply);
static void ngx_http_cinematch_ready_check(ngx_http_cinematch_ready_t *rd,
    const char *name, const char *err);
static void ngx_http_cinematch_ready_disabled(ngx_http_cinematch_ready_t *rd,
    const char *name);
static ngx_int_t ngx_http_cinematch_ready_done(ngx_http_request_t *r,
    ngx_http_cinematch_ready_t *rd);


/*
 * Load balancers and probes call /health often: the answer is printed
 * into an exact-size buffer, without jansson's allocations.
 */

#define NGX_HTTP_CINEMATCH_HEALTH                                            \
    "{\"status\":\"ok\",\"version\":\"" NGX_HTTP_CINEMATCH_VERSION           \
    "\",\"uptime_seconds\":"

ngx_int_t
ngx_http_cinematch_health_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    u_char     *p, *body;
    time_t      uptime;
    ngx_str_t   type;

    body = ngx_pnalloc(r->pool, sizeof(NGX_HTTP_CINEMATCH_HEALTH) - 1
                                + NGX_TIME_T_LEN + sizeof("}") - 1);
    if (body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    uptime = ngx_max(ngx_time() - ngx_http_cinematch_metrics_start_time(), 0);

    p = ngx_cpymem(body, NGX_HTTP_CINEMATCH_HEALTH,
                   sizeof(NGX_HTTP_CINEMATCH_HEALTH) - 1);
    p = ngx_sprintf(p, "%T}", uptime);

    ngx_str_set(&type, "application/json");

    return ngx_http_cinematch_send_buf(r, NGX_HTTP_OK, &type, body, p - body);
}


ngx_int_t
ngx_http_cinematch_json_echo_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    json_t  *fields;

    /* {"invalid_fields": {...}} tests the 422 of handlers that validate */

    fields = json_object_get(ctx->json, "invalid_fields");

    if (json_is_object(fields)) {
        return ngx_http_cinematch_send_error_json(r, 422,
                   "validation_failed", "some fields are invalid",
                   json_pack("{s:O}", "fields", fields));
    }

    return ngx_http_cinematch_send_json(r, NGX_HTTP_OK,
                                        json_pack("{s:O}", "json", ctx->json));
}


ngx_int_t
ngx_http_cinematch_redis_echo_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    ngx_int_t     rc;
    size_t       *lens;
    const char  **argv;

    argv = ngx_palloc(r->pool, 2 * sizeof(const char *));
    lens = ngx_palloc(r->pool, 2 * sizeof(size_t));

    if (argv == NULL || lens == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* binary-safe arguments: the segment is passed with its length */

    argv[0] = "ECHO";
    lens[0] = 4;
    argv[1] = (const char *) ctx->params[0].data;
    lens[1] = ctx->params[0].len;

    rc = ngx_http_cinematch_redis_command(r,
                                          ngx_http_cinematch_redis_echo_done,
                                          ctx, 2, argv, lens);

    switch (rc) {

    case NGX_OK:
        return NGX_DONE;

    case NGX_DECLINED:
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             "cache unavailable");

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}


static ngx_int_t
ngx_http_cinematch_redis_echo_done(ngx_http_request_t *r, void *data,
    redisReply *reply)
{
    if (reply == NULL) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             "cache unavailable");
    }

    if (reply->type != REDIS_REPLY_STRING) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_send_json(r, NGX_HTTP_OK,
               json_pack("{s:s%}", "echo", reply->str, (size_t) reply->len));
}


ngx_int_t
ngx_http_cinematch_args_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    json_t     *q;
    ngx_int_t   limit, offset;
    ngx_str_t   value;

    if (ngx_http_cinematch_arg_int(r, "limit", 20, 1, 100, &limit) != NGX_OK)
    {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_BAD_REQUEST,
                                             "invalid_request",
                                             "limit must be 1..100");
    }

    if (ngx_http_cinematch_arg_int(r, "offset", 0, 0, NGX_MAX_INT32_VALUE,
                                   &offset)
        != NGX_OK)
    {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_BAD_REQUEST,
                                             "invalid_request",
                                             "offset must be 0 or more");
    }

    switch (ngx_http_cinematch_arg(r, "q", &value)) {

    case NGX_OK:
        q = json_stringn((const char *) value.data, value.len);
        if (q == NULL) {
            return ngx_http_cinematch_send_error(r, NGX_HTTP_BAD_REQUEST,
                                                 "invalid_request",
                                                 "q must be UTF-8");
        }

        break;

    case NGX_DECLINED:
        q = json_null();
        break;

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_send_json(r, NGX_HTTP_OK,
               json_pack("{s:I, s:I, s:o}", "limit", (json_int_t) limit,
                         "offset", (json_int_t) offset, "q", q));
}


ngx_int_t
ngx_http_cinematch_pg_types_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    u_char       *p;
    ngx_int_t     rc;
    const char  **values;

    /* the text "fail" makes the query fail on the server (1/0) */

    static const char  sql[] =
        "SELECT $1::text AS param, 1 / (($1::text <> 'fail')::int) AS one, "
        "42::int4 AS i4, "
        "9007199254740993::int8 AS i8, 2.5::float8 AS f8, "
        "3.25::numeric AS num, 'NaN'::float8 AS nan, true AS yes, "
        "NULL::text AS nothing, '{\"k\": [1, 2]}'::jsonb AS doc, "
        "ARRAY['a', 'b'] AS arr";

    values = ngx_palloc(r->pool, sizeof(const char *));
    p = ngx_pnalloc(r->pool, ctx->params[0].len + 1);

    if (values == NULL || p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *ngx_cpymem(p, ctx->params[0].data, ctx->params[0].len) = '\0';
    values[0] = (const char *) p;

    rc = ngx_http_cinematch_pg_query(r, sql, 1, values,
                                     ngx_http_cinematch_pg_types_done, ctx);

    switch (rc) {

    case NGX_OK:
        return NGX_DONE;

    case NGX_DECLINED:
    case NGX_BUSY:
        return NGX_HTTP_SERVICE_UNAVAILABLE;

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}


static ngx_int_t
ngx_http_cinematch_pg_types_done(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    if (err != NULL) {
        return NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_send_json(r, NGX_HTTP_OK,
               json_pack("{s:o}", "rows", ngx_http_cinematch_pg_rows(res)));
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
    json_t                          *inference;
    ngx_int_t                        rc;
    ngx_http_cinematch_ready_t      *rd;
    ngx_http_cinematch_main_conf_t  *mcf;

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

    /*
     * PostgreSQL and Redis run concurrently; each took its own count.  One
     * that is not configured is reported "disabled" and does not fail.
     */

    mcf = ngx_http_get_module_main_conf(r, ngx_http_cinematch_module);

    if (mcf->pg_conninfo.len == 0) {
        ngx_http_cinematch_ready_disabled(rd, "postgres");

    } else {
        rc = ngx_http_cinematch_pg_query(r, "SELECT 1", 0, NULL,
                                         ngx_http_cinematch_ready_pg, rd);

        if (rc == NGX_OK) {
            rd->pending++;

        } else {
            ngx_http_cinematch_ready_check(rd, "postgres",
                                           (rc == NGX_DECLINED)
                                           ? "not connected"
                                           : (rc == NGX_BUSY)
                                             ? "too many queries waiting"
                                             : "internal error");
        }
    }

    if (mcf->redis_host.len == 0) {
        ngx_http_cinematch_ready_disabled(rd, "redis");

    } else {
        rc = ngx_http_cinematch_redis_commandf(r,
                                               ngx_http_cinematch_ready_redis,
                                               rd, "PING");

        if (rc == NGX_OK) {
            rd->pending++;

        } else {
            ngx_http_cinematch_ready_check(rd, "redis",
                                           (rc == NGX_ERROR)
                                           ? "internal error"
                                           : "not connected");
        }
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

    /* the same pending count carries over to the training query */

    if (err == NULL
        && ngx_http_cinematch_pg_query(r, NGX_HTTP_CINEMATCH_READY_TRAINING,
                                       0, NULL,
                                       ngx_http_cinematch_ready_training, rd)
           == NGX_OK)
    {
        return NGX_DONE;
    }

    if (--rd->pending) {
        return NGX_DONE;
    }

    return ngx_http_cinematch_ready_done(r, rd);
}


static ngx_int_t
ngx_http_cinematch_ready_training(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    ngx_http_cinematch_ready_t *rd = data;

    if (err == NULL
        && PQresultStatus(res) == PGRES_TUPLES_OK
        && PQntuples(res) == 1
        && !PQgetisnull(res, 0, 0))
    {
        rd->training = ngx_http_cinematch_json_track(r,
                           json_loads(PQgetvalue(res, 0, 0), 0, NULL));
    }

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


static void
ngx_http_cinematch_ready_disabled(ngx_http_cinematch_ready_t *rd,
    const char *name)
{
    if (json_object_set_new(rd->checks, name,
                            json_pack("{s:s}", "status", "disabled"))
        != 0)
    {
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
            || (ngx_strcmp(json_string_value(status), "ok") != 0
                && ngx_strcmp(json_string_value(status), "disabled") != 0))
        {
            json_array_append_new(failed, json_string(name));
        }
    }

    if (rd->failed == 0 && json_array_size(failed) == 0) {
        json_decref(failed);

        return ngx_http_cinematch_send_json(r, NGX_HTTP_OK,
                   json_pack("{s:s, s:O, s:O*}", "status", "ok",
                             "checks", rd->checks,
                             "training", rd->training));
    }

    ngx_str_set(&key, "Retry-After");
    ngx_str_set(&value, "1");

    if (ngx_http_cinematch_add_header(r, &key, &value) != NGX_OK) {
        json_decref(failed);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_send_json(r, NGX_HTTP_SERVICE_UNAVAILABLE,
               json_pack("{s:s, s:o, s:O, s:O*}", "status", "unavailable",
                         "failed", failed, "checks", rd->checks,
                         "training", rd->training));
}


/*
 * ngx_http_cinematch_api_jobs.c: batch prediction jobs (API.md "Batch
 * jobs"), behind the identity step.
 *
 *   POST /api/v1/predict/{name}/batch  {items: [{user_id, movie_ids}]}
 *       → a batch_jobs row (status queued, the body as input), then XADD
 *         of the job id to the Redis stream NGX_HTTP_CINEMATCH_JOBS_STREAM,
 *         then the stream id on the row → 202 {job_id, status, ...} and
 *         Location.  `cinematch batch` (workers/cmd_batch.c) consumes the
 *         stream in a consumer group and writes one batch_job_results row
 *         per item.  Redis unavailable: the job is marked failed, 503.
 *   GET /api/v1/jobs/{id}
 *       → {job_id, model, status, progress, error, times, result}: the
 *         results (in item order) once the job has finished, else null.
 *         Only the owner or an admin sees a job; anyone else gets 404, as
 *         for an id that does not exist.
 *
 * Limits: 1..NGX_HTTP_CINEMATCH_JOBS_MAX_ITEMS items, each with 1..1000
 * movie ids (as /predict), NGX_HTTP_CINEMATCH_JOBS_MAX_IDS ids in all; the
 * body size limit of the location applies first (413).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_cinematch.h"


#define NGX_HTTP_CINEMATCH_JOBS_STREAM     "cinematch:jobs"
#define NGX_HTTP_CINEMATCH_JOBS_MAXLEN     "100000"
#define NGX_HTTP_CINEMATCH_JOBS_MAX_ITEMS  1000
#define NGX_HTTP_CINEMATCH_JOBS_MAX_PER    1000
#define NGX_HTTP_CINEMATCH_JOBS_MAX_IDS    100000
#define NGX_HTTP_CINEMATCH_UUID_LEN        36


typedef struct {
    char                  user_id[NGX_INT64_LEN + 1];
    char                  key_id[NGX_INT64_LEN + 1];
    char                  items[NGX_INT_T_LEN + 1];
    char                  admin[2];
    char                  job_id[NGX_HTTP_CINEMATCH_UUID_LEN + 1];
    char                  stream_id[64];
    char                 *input;          /* the body, compact; malloc'd */
    const char           *values[6];
    ngx_str_t             model;
    ngx_uint_t            n_items;
} ngx_http_cinematch_jobs_t;


static ngx_int_t ngx_http_cinematch_jobs_validate(ngx_http_request_t *r,
    json_t *body, ngx_uint_t *n_items);
static ngx_int_t ngx_http_cinematch_jobs_create(ngx_http_request_t *r);
static void ngx_http_cinematch_jobs_cleanup(void *data);
static ngx_int_t ngx_http_cinematch_jobs_created(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_jobs_queued(ngx_http_request_t *r,
    void *data, redisReply *reply);
static ngx_int_t ngx_http_cinematch_jobs_answer(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_jobs_unqueued(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_jobs_found(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_jobs_query(ngx_http_request_t *r,
    const char *sql, int nparams, const char *const *values,
    ngx_http_cinematch_pg_handler_pt handler, void *data);
static ngx_int_t ngx_http_cinematch_jobs_unavailable(ngx_http_request_t *r,
    const char *what);


static ngx_str_t  ngx_http_cinematch_jobs_json_type =
    ngx_string("application/json");


ngx_int_t
ngx_http_cinematch_batch_submit_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    ngx_int_t                     rc;
    ngx_pool_cleanup_t           *cln;
    ngx_http_cinematch_caller_t  *c;
    ngx_http_cinematch_jobs_t    *st;

    /* the models a batch can name: those /predict/{name} serves */
    if (ctx->params[0].len != 6
        || ngx_strncmp(ctx->params[0].data, "recsys", 6) != 0)
    {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                                             "not_found", "no such model");
    }

    c = ngx_http_cinematch_caller(r);
    st = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_jobs_t));
    cln = ngx_pool_cleanup_add(r->pool, 0);

    if (c == NULL || st == NULL || cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->data = st;

    rc = ngx_http_cinematch_jobs_validate(r, ctx->json, &st->n_items);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    /* jansson's allocation: released with the request pool */
    st->input = json_dumps(ctx->json, JSON_COMPACT);
    if (st->input == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_cinematch_jobs_cleanup;
    cln->data = st;

    /* the same rule as /predict and /recommend: a plain user predicts for
     * their own rating user only, and a batch naming anyone else is
     * refused whole, before a job exists */
    if (c->admin) {
        return ngx_http_cinematch_jobs_create(r);
    }

    return ngx_http_cinematch_caller_rating_id(r,
                                             ngx_http_cinematch_jobs_create);
}


static ngx_int_t
ngx_http_cinematch_jobs_create(ngx_http_request_t *r)
{
    u_char                       *p;
    size_t                        i;
    json_t                       *item;
    ngx_http_cinematch_ctx_t     *ctx;
    ngx_http_cinematch_caller_t  *c;
    ngx_http_cinematch_jobs_t    *st;

    ctx = ngx_http_get_module_ctx(r, ngx_http_cinematch_module);
    st = ctx->data;
    c = ngx_http_cinematch_caller(r);

    if (!c->admin) {
        json_array_foreach(json_object_get(ctx->json, "items"), i, item) {
            if (json_integer_value(json_object_get(item, "user_id"))
                != c->rating_user_id)
            {
                return ngx_http_cinematch_send_error(r, NGX_HTTP_FORBIDDEN,
                           "forbidden",
                           "predictions for another user need an "
                           "administrator");
            }
        }
    }

    p = ngx_sprintf((u_char *) st->user_id, "%L", c->user_id);
    *p = '\0';
    p = ngx_sprintf((u_char *) st->key_id, "%L", c->key_id);
    *p = '\0';
    p = ngx_sprintf((u_char *) st->items, "%ui", st->n_items);
    *p = '\0';

    st->model = ctx->params[0];
    st->values[0] = st->user_id;
    st->values[1] = st->key_id;
    st->values[2] = "recsys";
    st->values[3] = st->input;
    st->values[4] = st->items;

    return ngx_http_cinematch_jobs_query(r,
        "INSERT INTO batch_jobs (user_id, api_key_id, kind, model_name,"
        " input, items_total) VALUES ($1::bigint, nullif($2::bigint, 0),"
        " 'predict', $3, $4::jsonb, $5::integer) RETURNING id::text",
        5, st->values, ngx_http_cinematch_jobs_created, st);
}


/*
 * The same rules as POST /predict/{name} for each item, plus the batch's
 * own limits.  NGX_DECLINED when the body is good; otherwise what sending
 * the 422 returned (which may well be NGX_OK).
 */

static ngx_int_t
ngx_http_cinematch_jobs_validate(ngx_http_request_t *r, json_t *body,
    ngx_uint_t *n_items)
{
    size_t       i, j, n, total;
    json_t      *items, *item, *ids, *v;
    const char  *key;
    json_int_t   id;

    json_object_foreach(body, key, v) {
        if (ngx_strcmp(key, "items") != 0) {
            return ngx_http_cinematch_send_invalid(r, key, "unknown field");
        }
    }

    items = json_object_get(body, "items");
    n = json_is_array(items) ? json_array_size(items) : 0;

    if (n == 0 || n > NGX_HTTP_CINEMATCH_JOBS_MAX_ITEMS) {
        return ngx_http_cinematch_send_invalid(r, "items",
                   "an array of 1..1000 {user_id, movie_ids} objects");
    }

    total = 0;

    json_array_foreach(items, i, item) {
        if (!json_is_object(item)) {
            return ngx_http_cinematch_send_invalid(r, "items",
                       "each item must be an object");
        }

        json_object_foreach(item, key, v) {
            if (ngx_strcmp(key, "user_id") != 0
                && ngx_strcmp(key, "movie_ids") != 0)
            {
                return ngx_http_cinematch_send_invalid(r, "items",
                           "unknown field in an item");
            }
        }

        v = json_object_get(item, "user_id");
        id = json_is_integer(v) ? json_integer_value(v) : 0;

        if (id < 1 || id > NGX_MAX_INT32_VALUE) {
            return ngx_http_cinematch_send_invalid(r, "items.user_id",
                       "required, a positive integer");
        }

        ids = json_object_get(item, "movie_ids");
        j = json_is_array(ids) ? json_array_size(ids) : 0;

        if (j == 0 || j > NGX_HTTP_CINEMATCH_JOBS_MAX_PER) {
            return ngx_http_cinematch_send_invalid(r, "items.movie_ids",
                       "1..1000 movie ids required");
        }

        total += j;

        if (total > NGX_HTTP_CINEMATCH_JOBS_MAX_IDS) {
            return ngx_http_cinematch_send_invalid(r, "items",
                       "at most 100000 movie ids in one batch");
        }

        json_array_foreach(ids, j, v) {
            id = json_is_integer(v) ? json_integer_value(v) : 0;

            if (id < 1 || id > NGX_MAX_INT32_VALUE) {
                return ngx_http_cinematch_send_invalid(r, "items.movie_ids",
                           "must be positive integers");
            }
        }
    }

    *n_items = n;

    return NGX_DECLINED;
}


static void
ngx_http_cinematch_jobs_cleanup(void *data)
{
    ngx_http_cinematch_jobs_t *st = data;

    free(st->input);
    st->input = NULL;
}


static ngx_int_t
ngx_http_cinematch_jobs_created(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    ngx_http_cinematch_jobs_t *st = data;

    if (err != NULL) {
        return ngx_http_cinematch_jobs_unavailable(r, "database unavailable");
    }

    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1
        || PQgetlength(res, 0, 0) != NGX_HTTP_CINEMATCH_UUID_LEN)
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cinematch: batch job insert failed: %s",
                      PQresultErrorMessage(res));
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(st->job_id, PQgetvalue(res, 0, 0),
               NGX_HTTP_CINEMATCH_UUID_LEN + 1);

    switch (ngx_http_cinematch_redis_commandf(r,
                ngx_http_cinematch_jobs_queued, st,
                "XADD " NGX_HTTP_CINEMATCH_JOBS_STREAM " MAXLEN ~ "
                NGX_HTTP_CINEMATCH_JOBS_MAXLEN " * job %s model %s",
                st->job_id, "recsys"))
    {
    case NGX_OK:
        return NGX_DONE;

    case NGX_ERROR:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;

    default:
        return ngx_http_cinematch_jobs_queued(r, st, NULL);
    }
}


static ngx_int_t
ngx_http_cinematch_jobs_queued(ngx_http_request_t *r, void *data,
    redisReply *reply)
{
    ngx_http_cinematch_jobs_t *st = data;

    if (reply == NULL || reply->type != REDIS_REPLY_STRING
        || reply->len >= sizeof(st->stream_id))
    {
        /* not queued: no consumer will ever see it, say so on the row */
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cinematch: XADD of batch job %s failed: %s",
                      st->job_id,
                      reply != NULL && reply->type == REDIS_REPLY_ERROR
                      ? reply->str : "redis unavailable");
        ngx_http_cinematch_metrics_upstream_error(
            NGX_HTTP_CINEMATCH_UPSTREAM_REDIS);

        st->values[0] = st->job_id;

        return ngx_http_cinematch_jobs_query(r,
            "UPDATE batch_jobs SET status = 'failed', finished_at = now(),"
            " error = 'could not be queued' WHERE id = $1::uuid",
            1, st->values, ngx_http_cinematch_jobs_unqueued, st);
    }

    ngx_memcpy(st->stream_id, reply->str, reply->len);
    st->stream_id[reply->len] = '\0';

    st->values[0] = st->job_id;
    st->values[1] = st->stream_id;

    return ngx_http_cinematch_jobs_query(r,
        "UPDATE batch_jobs SET stream_id = $2 WHERE id = $1::uuid",
        2, st->values, ngx_http_cinematch_jobs_answer, st);
}


static ngx_int_t
ngx_http_cinematch_jobs_unqueued(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    return ngx_http_cinematch_jobs_unavailable(r, "job queue unavailable");
}


static ngx_int_t
ngx_http_cinematch_jobs_answer(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    ngx_http_cinematch_jobs_t *st = data;

    u_char     *p;
    ngx_str_t   key, value;

    /* the job is queued either way; the stream id is for operators */
    if (err != NULL || PQresultStatus(res) != PGRES_COMMAND_OK) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "cinematch: batch job %s queued but its stream id "
                      "was not stored: %s", st->job_id,
                      err != NULL ? err : PQresultErrorMessage(res));
    }

    value.len = sizeof("/api/v1/jobs/") - 1 + NGX_HTTP_CINEMATCH_UUID_LEN;
    value.data = ngx_pnalloc(r->pool, value.len);
    if (value.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(value.data, "/api/v1/jobs/", sizeof("/api/v1/jobs/") - 1);
    ngx_memcpy(p, st->job_id, NGX_HTTP_CINEMATCH_UUID_LEN);

    ngx_str_set(&key, "Location");

    if (ngx_http_cinematch_add_header(r, &key, &value) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_send_json(r, NGX_HTTP_ACCEPTED,
               json_pack("{s:s, s:s, s:s, s:I, s:s%}",
                         "job_id", st->job_id,
                         "model", "recsys",
                         "status", "queued",
                         "items_total", (json_int_t) st->n_items,
                         "status_url", value.data, value.len));
}


ngx_int_t
ngx_http_cinematch_job_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    u_char                       *p;
    ngx_uint_t                    i;
    ngx_http_cinematch_caller_t  *c;
    ngx_http_cinematch_jobs_t    *st;

    c = ngx_http_cinematch_caller(r);
    st = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_jobs_t));

    if (c == NULL || st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->data = st;

    /* only a canonical uuid names a job; anything else is no job */
    if (ctx->params[0].len != NGX_HTTP_CINEMATCH_UUID_LEN) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                                             "not_found", "no such job");
    }

    for (i = 0; i < NGX_HTTP_CINEMATCH_UUID_LEN; i++) {
        u_char ch = ngx_tolower(ctx->params[0].data[i]);

        if ((i == 8 || i == 13 || i == 18 || i == 23)
            ? ch != '-'
            : !((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f')))
        {
            return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                                                 "not_found", "no such job");
        }

        st->job_id[i] = (char) ch;
    }

    p = ngx_sprintf((u_char *) st->user_id, "%L", c->user_id);
    *p = '\0';
    st->admin[0] = c->admin ? 't' : 'f';

    st->values[0] = st->job_id;
    st->values[1] = st->user_id;
    st->values[2] = st->admin;

#define NGX_HTTP_CINEMATCH_JOBS_TS(col)                                       \
    "to_char(j." col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

    /* the answer is built by PostgreSQL: results are jsonb already */
    return ngx_http_cinematch_jobs_query(r,
        "SELECT json_build_object('job_id', j.id, 'model', j.model_name,"
        " 'status', j.status,"
        " 'progress', json_build_object('total', j.items_total,"
        "  'done', j.items_done, 'failed', j.items_failed,"
        "  'fraction', CASE WHEN j.items_total = 0 THEN 1 ELSE"
        "  round((j.items_done + j.items_failed)::numeric / j.items_total,"
        "  4) END),"
        " 'error', j.error,"
        " 'created_at', " NGX_HTTP_CINEMATCH_JOBS_TS("created_at") ","
        " 'started_at', " NGX_HTTP_CINEMATCH_JOBS_TS("started_at") ","
        " 'finished_at', " NGX_HTTP_CINEMATCH_JOBS_TS("finished_at") ","
        " 'result', CASE WHEN j.status IN ('succeeded', 'failed') THEN"
        "  (SELECT coalesce(json_agg(CASE WHEN x.ok THEN x.result::json"
        "   ELSE json_build_object('error', x.error) END"
        "   ORDER BY x.item_index), '[]')"
        "   FROM batch_job_results x WHERE x.job_id = j.id) END)::text"
        " FROM batch_jobs j WHERE j.id = $1::uuid"
        " AND (j.user_id = $2::bigint OR $3::boolean)",
        3, st->values, ngx_http_cinematch_jobs_found, st);

#undef NGX_HTTP_CINEMATCH_JOBS_TS
}


static ngx_int_t
ngx_http_cinematch_jobs_found(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    u_char  *doc;
    size_t   len;

    if (err != NULL) {
        return ngx_http_cinematch_jobs_unavailable(r, "database unavailable");
    }

    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cinematch: batch job query failed: %s",
                      PQresultErrorMessage(res));
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (PQntuples(res) != 1) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                                             "not_found", "no such job");
    }

    /* the result is cleared when we return: the body is the pool's copy */
    len = (size_t) PQgetlength(res, 0, 0);
    doc = ngx_pnalloc(r->pool, len);
    if (doc == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(doc, PQgetvalue(res, 0, 0), len);

    return ngx_http_cinematch_send_buf(r, NGX_HTTP_OK,
                                       &ngx_http_cinematch_jobs_json_type,
                                       doc, len);
}


static ngx_int_t
ngx_http_cinematch_jobs_query(ngx_http_request_t *r, const char *sql,
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
        return ngx_http_cinematch_jobs_unavailable(r, "database unavailable");

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}


static ngx_int_t
ngx_http_cinematch_jobs_unavailable(ngx_http_request_t *r, const char *what)
{
    return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                         "unavailable", what);
}


/*
 * ngx_http_cinematch_api_ratings.c: the caller's own ratings (API.md
 * "Movies, ratings, recommendations"), behind the identity step.
 *
 *   PUT /api/v1/ratings/{movie_id}  {rating}  0.5..5.0 in steps of 0.5
 *       → one statement upserts `ratings` (source 'app') and appends to
 *         `ratings_buffer`, in the caller's rating user space
 *         (users.rating_user_id); then CM_REQ_FOLD_IN to the inference
 *         daemon so the next /recommend reflects it → 200 with the rating
 *         and whether the fold-in happened (the rating is stored either
 *         way; the next retrain takes it from the buffer)
 *   GET /api/v1/ratings?limit=&offset=  newest first
 *
 * A movie id that is not a plain positive int32, or no such movie: 404.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <math.h>

#include "ngx_http_cinematch.h"
#include "ngx_http_cinematch_auth.h"
#if (NGX_HTTP_CINEMATCH_INFER)
#include "ngx_http_cinematch_infer.h"
#endif
#if (NGX_HTTP_CINEMATCH_SERVING)
#include "ngx_http_cinematch_serving.h"
#endif


typedef struct {
    char                  user_id[NGX_INT64_LEN + 1];
    char                  movie_id[NGX_INT32_LEN + 1];
    char                  rating[8];
    char                  limit[NGX_INT_T_LEN + 1];
    char                  offset[NGX_INT_T_LEN + 1];
    const char           *values[3];
    int32_t               movie;
    float                 value;
    int64_t               rating_user;
    json_t               *doc;           /* the answer, tracked */
} ngx_http_cinematch_ratings_t;


static ngx_int_t ngx_http_cinematch_rating_stored(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_rating_answer(ngx_http_request_t *r,
    ngx_http_cinematch_ratings_t *st, ngx_uint_t folded);
#if (NGX_HTTP_CINEMATCH_INFER)
static void ngx_http_cinematch_rating_folded(
    ngx_http_cinematch_infer_req_t *ir, ngx_int_t rc);
#endif
static ngx_int_t ngx_http_cinematch_ratings_listed(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_ratings_query(ngx_http_request_t *r,
    const char *sql, int nparams, const char *const *values,
    ngx_http_cinematch_pg_handler_pt handler, void *data);
static ngx_int_t ngx_http_cinematch_ratings_invalid(ngx_http_request_t *r,
    const char *field, const char *message);


#define NGX_HTTP_CINEMATCH_RATED_AT \
    "to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"


ngx_int_t
ngx_http_cinematch_rating_put_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    u_char                        *p;
    double                         v;
    json_t                        *rating, *val;
    ngx_int_t                      movie;
    const char                    *key;
    ngx_http_cinematch_caller_t   *c;
    ngx_http_cinematch_ratings_t  *st;

    c = ngx_http_cinematch_caller(r);
    st = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_ratings_t));

    if (c == NULL || st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->data = st;

    /* a plain positive int32, or it names no movie */
    movie = ngx_atoi(ctx->params[0].data, ctx->params[0].len);

    if (movie <= 0 || movie > NGX_MAX_INT32_VALUE
        || ctx->params[0].len > 10 || ctx->params[0].data[0] == '0')
    {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                                             "not_found", "no such movie");
    }

    json_object_foreach(ctx->json, key, val) {
        if (ngx_strcmp(key, "rating") != 0) {
            return ngx_http_cinematch_ratings_invalid(r, key,
                                                      "unknown field");
        }
    }

    rating = json_object_get(ctx->json, "rating");

    if (rating == NULL || !json_is_number(rating)) {
        return ngx_http_cinematch_ratings_invalid(r, "rating",
                                                  "required, a number "
                                                  "0.5..5.0 in steps of 0.5");
    }

    v = json_number_value(rating) * 2;

    if (!isfinite(v) || v < 1 || v > 10 || v != floor(v)) {
        return ngx_http_cinematch_ratings_invalid(r, "rating",
                                                  "must be 0.5..5.0 in "
                                                  "steps of 0.5");
    }

    st->movie = (int32_t) movie;
    st->value = (float) (v / 2);

    p = ngx_sprintf((u_char *) st->user_id, "%L", c->user_id);
    *p = '\0';
    p = ngx_sprintf((u_char *) st->movie_id, "%i", movie);
    *p = '\0';
    p = ngx_sprintf((u_char *) st->rating, "%i.%i", (ngx_int_t) v / 2,
                    ((ngx_int_t) v % 2) * 5);
    *p = '\0';

    st->values[0] = st->user_id;
    st->values[1] = st->movie_id;
    st->values[2] = st->rating;

    /* one statement, so the two tables cannot disagree; no movie (or no
     * active user) inserts nothing and returns no row */
    return ngx_http_cinematch_ratings_query(r,
        "WITH u AS (SELECT rating_user_id FROM users"
        "  WHERE id = $1::bigint AND disabled_at IS NULL),"
        " m AS (SELECT movie_id FROM movies WHERE movie_id = $2::integer),"
        " up AS (INSERT INTO ratings (user_id, movie_id, rating, ts, source)"
        "  SELECT u.rating_user_id, m.movie_id, $3::numeric, now(), 'app'"
        "  FROM u, m"
        "  ON CONFLICT (user_id, movie_id) DO UPDATE SET"
        "  rating = EXCLUDED.rating, ts = EXCLUDED.ts, source = 'app'"
        "  RETURNING user_id, movie_id, rating, ts),"
        " buf AS (INSERT INTO ratings_buffer (user_id, movie_id, rating, ts,"
        "  source) SELECT user_id, movie_id, rating, ts, 'app' FROM up)"
        " SELECT user_id, movie_id, rating::text, "
        NGX_HTTP_CINEMATCH_RATED_AT " FROM up",
        3, st->values, ngx_http_cinematch_rating_stored, st);
}


static ngx_int_t
ngx_http_cinematch_rating_stored(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    ngx_http_cinematch_ratings_t *st = data;

#if (NGX_HTTP_CINEMATCH_INFER)
    u_char                           payload[8];
    uint64_t                         params[1];
    ngx_http_cinematch_infer_req_t  *ir;
#endif

    if (err != NULL) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             "database unavailable");
    }

    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cinematch: rating upsert failed: %s",
                      PQresultErrorMessage(res));
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (PQntuples(res) != 1) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                                             "not_found", "no such movie");
    }

    st->rating_user = ngx_atoof((u_char *) PQgetvalue(res, 0, 0),
                                PQgetlength(res, 0, 0));

    st->doc = ngx_http_cinematch_json_track(r,
                  json_pack("{s:I, s:f, s:s}",
                            "movie_id", (json_int_t) st->movie,
                            "rating", atof(PQgetvalue(res, 0, 2)),
                            "rated_at", PQgetvalue(res, 0, 3)));
    if (st->doc == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

#if (NGX_HTTP_CINEMATCH_INFER)

    params[0] = (uint64_t) st->rating_user;
    ngx_memcpy(payload, &st->movie, 4);
    ngx_memcpy(payload + 4, &st->value, 4);

    switch (ngx_http_cinematch_infer_submit(r, CM_REQ_FOLD_IN, params, 1,
                                            payload, sizeof(payload),
                                            ngx_http_cinematch_rating_folded,
                                            st, &ir))
    {
    case NGX_OK:
        ngx_http_cinematch_wait(r);
        return NGX_DONE;

    case NGX_ERROR:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;

    default:
        /* no daemon, or busy: stored; the next training picks it up */
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "cinematch: rating stored but not folded in "
                      "(no inference daemon available)");
        break;
    }

#endif

    return ngx_http_cinematch_rating_answer(r, st, 0);
}


#if (NGX_HTTP_CINEMATCH_INFER)

static void
ngx_http_cinematch_rating_folded(ngx_http_cinematch_infer_req_t *ir,
    ngx_int_t rc)
{
    ngx_http_cinematch_ratings_t *st = ir->data;

    uint32_t             state;
    ngx_uint_t           folded;
    ngx_http_request_t  *r;

    r = ir->request;

    if (rc == NGX_ERROR) {
        ngx_http_cinematch_finish(r, ngx_http_cinematch_rating_answer(r, st,
                                                                      0));
        return;
    }

    ngx_http_cinematch_infer_rearm(ir);

    state = cm_ipc_slot_state(ir->slot);

    if (state != CM_SLOT_DONE && state != CM_SLOT_ERROR) {
        return;
    }

    folded = (state == CM_SLOT_DONE);

    if (!folded) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "cinematch: fold-in refused by the daemon (%d)",
                      (int) ir->slot->status);
    }

    ngx_http_cinematch_infer_release(ir);

    ngx_http_cinematch_finish(r, ngx_http_cinematch_rating_answer(r, st,
                                                                  folded));
}

#endif


static ngx_int_t
ngx_http_cinematch_rating_send(ngx_http_request_t *r, void *data)
{
    ngx_http_cinematch_ratings_t *st = data;

    return ngx_http_cinematch_send_json(r, NGX_HTTP_OK, json_incref(st->doc));
}


/*
 * The user's cached recommendations are stale from here on: their cache
 * generation moves before the answer, so the caller's next /recommend
 * misses the cache (and sees the fold-in).
 */

static ngx_int_t
ngx_http_cinematch_rating_answer(ngx_http_request_t *r,
    ngx_http_cinematch_ratings_t *st, ngx_uint_t folded)
{
    if (json_object_set_new(st->doc, "folded_in", json_boolean(folded))
        != 0)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

#if (NGX_HTTP_CINEMATCH_SERVING)
    return ngx_http_cinematch_cache_invalidate(r, st->rating_user,
                                               ngx_http_cinematch_rating_send,
                                               st);
#else
    return ngx_http_cinematch_rating_send(r, st);
#endif
}


ngx_int_t
ngx_http_cinematch_ratings_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    u_char                        *p;
    ngx_int_t                      limit, offset;
    ngx_http_cinematch_caller_t   *c;
    ngx_http_cinematch_ratings_t  *st;

    c = ngx_http_cinematch_caller(r);
    st = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_ratings_t));

    if (c == NULL || st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_cinematch_arg_int(r, "limit", 100, 1, 1000, &limit)
        != NGX_OK)
    {
        return ngx_http_cinematch_ratings_invalid(r, "limit",
                                                  "must be 1..1000");
    }

    if (ngx_http_cinematch_arg_int(r, "offset", 0, 0, 1000000, &offset)
        != NGX_OK)
    {
        return ngx_http_cinematch_ratings_invalid(r, "offset",
                                                  "must be 0..1000000");
    }

    p = ngx_sprintf((u_char *) st->user_id, "%L", c->user_id);
    *p = '\0';
    p = ngx_sprintf((u_char *) st->limit, "%i", limit);
    *p = '\0';
    p = ngx_sprintf((u_char *) st->offset, "%i", offset);
    *p = '\0';

    st->values[0] = st->user_id;
    st->values[1] = st->limit;
    st->values[2] = st->offset;

    return ngx_http_cinematch_ratings_query(r,
        "SELECT r.movie_id, m.title, r.rating::text, "
        "to_char(r.ts AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),"
        " count(*) OVER ()"
        " FROM ratings r JOIN movies m ON m.movie_id = r.movie_id"
        " WHERE r.user_id = (SELECT rating_user_id FROM users"
        "  WHERE id = $1::bigint)"
        " ORDER BY r.ts DESC, r.movie_id LIMIT $2::integer OFFSET $3::integer",
        3, st->values, ngx_http_cinematch_ratings_listed, st);
}


static ngx_int_t
ngx_http_cinematch_ratings_listed(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    int      i, n;
    json_t  *list, *item;

    if (err != NULL) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             "database unavailable");
    }

    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cinematch: ratings query failed: %s",
                      PQresultErrorMessage(res));
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    list = ngx_http_cinematch_json_track(r, json_array());
    if (list == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    n = PQntuples(res);

    for (i = 0; i < n; i++) {
        item = json_pack("{s:I, s:s, s:f, s:s}",
                         "movie_id", (json_int_t) ngx_atoi((u_char *)
                                                 PQgetvalue(res, i, 0),
                                                 PQgetlength(res, i, 0)),
                         "title", PQgetvalue(res, i, 1),
                         "rating", atof(PQgetvalue(res, i, 2)),
                         "rated_at", PQgetvalue(res, i, 3));

        if (item == NULL || json_array_append_new(list, item) != 0) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    return ngx_http_cinematch_send_json(r, NGX_HTTP_OK,
               json_pack("{s:O, s:I}", "ratings", list,
                         "total", (json_int_t) (n
                                  ? ngx_atoi((u_char *) PQgetvalue(res, 0, 4),
                                             PQgetlength(res, 0, 4))
                                  : 0)));
}


static ngx_int_t
ngx_http_cinematch_ratings_query(ngx_http_request_t *r, const char *sql,
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


static ngx_int_t
ngx_http_cinematch_ratings_invalid(ngx_http_request_t *r, const char *field,
    const char *message)
{
    json_t                    *doc;
    ngx_http_cinematch_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_cinematch_module);

    doc = json_pack("{s:{s:s, s:s, s:s%, s:{s:s}}}", "error",
                    "code", "validation_failed",
                    "message", "some fields are invalid",
                    "request_id",
                    ctx->request_id.len ? (char *) ctx->request_id.data : "",
                    ctx->request_id.len,
                    "fields", field, message);

    return ngx_http_cinematch_send_json(r, 422, doc);
}

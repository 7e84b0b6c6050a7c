/*
 * ngx_http_cinematch_api_recsys.c: recommendations served by the
 * inference daemon (API.md "Movies, ratings, recommendations").
 *
 *   POST /api/v1/recommend        CM_REQ_RECOMMEND (batched in the daemon)
 *   POST /api/v1/similar          CM_REQ_SIMILAR
 *   GET  /api/v1/popular          CM_REQ_POPULAR
 *   POST /api/v1/predict/{name}   CM_REQ_PREDICT ("recsys" only)
 *
 * Every field is validated here and answered with 422 + `fields`; the
 * daemon validates again (it trusts nothing it reads from a slot) and
 * answers JSON, which is checked to parse before it is passed through.
 */
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_cinematch.h"
#include "ngx_http_cinematch_infer.h"
#if (NGX_HTTP_CINEMATCH_SERVING)
#include "ngx_http_cinematch_serving.h"
#endif
#include "cinematch/movielens.h"


#define NGX_HTTP_CINEMATCH_MAX_K        100
#define NGX_HTTP_CINEMATCH_MAX_PREDICT  1000


static ngx_int_t ngx_http_cinematch_rs_unknown_fields(ngx_http_request_t *r,
    json_t *body, const char **allowed);
static ngx_int_t ngx_http_cinematch_rs_int(json_t *body, const char *key,
    json_int_t def, json_int_t lo, json_int_t hi, json_int_t *out);
static ngx_int_t ngx_http_cinematch_rs_genres(ngx_http_request_t *r,
    json_t *arr, ngx_str_t *out);
static ngx_int_t ngx_http_cinematch_rs_submit(ngx_http_request_t *r,
    uint32_t kind, uint64_t *params, size_t np, u_char *payload, size_t len);
static ngx_int_t ngx_http_cinematch_rs_run(ngx_http_request_t *r,
    void *data);
static void ngx_http_cinematch_rs_ready(ngx_http_cinematch_infer_req_t *ir,
    ngx_int_t rc);
#if (NGX_HTTP_CINEMATCH_SERVING)
static ngx_int_t ngx_http_cinematch_rs_answer_text(ngx_http_request_t *r,
    void *data, u_char *p, size_t len);
#endif


static ngx_str_t  ngx_http_cinematch_rs_json = ngx_string("application/json");


/* one request to the daemon, kept until it answers */
typedef struct {
    uint32_t     kind;
    ngx_uint_t   endpoint;    /* NGX_HTTP_CINEMATCH_EP_*; 3: none */
    int64_t      user;        /* the rating user of a recommendation */
    uint64_t     params[5];
    size_t       np;
    u_char      *payload;
    size_t       len;
} ngx_http_cinematch_rs_job_t;


#if (NGX_HTTP_CINEMATCH_AUTH)
/* a validated /recommend waiting for the caller's rating user id */
typedef struct {
    uint64_t   params[5];
    ngx_str_t  genres;
} ngx_http_cinematch_rs_rec_t;

/* a validated /predict waiting for the caller's rating user id */
typedef struct {
    uint64_t   params[1];
    u_char    *ids;
    size_t     len;
} ngx_http_cinematch_rs_pred_t;

static ngx_int_t ngx_http_cinematch_rs_recommend_as(ngx_http_request_t *r);
static ngx_int_t ngx_http_cinematch_rs_predict_as(ngx_http_request_t *r);
#endif



static ngx_int_t
ngx_http_cinematch_rs_unknown_fields(ngx_http_request_t *r, json_t *body,
    const char **allowed)
{
    const char   *key;
    json_t       *v;
    ngx_uint_t    i;

    if (!json_is_object(body)) {
        return ngx_http_cinematch_send_invalid(r, "body",
                                             "must be a JSON object");
    }

    json_object_foreach(body, key, v) {
        for (i = 0; allowed[i] != NULL; i++) {
            if (ngx_strcmp(key, allowed[i]) == 0) {
                break;
            }
        }

        if (allowed[i] == NULL) {
            return ngx_http_cinematch_send_invalid(r, key, "unknown field");
        }
    }

    return NGX_DECLINED;   /* all known: carry on */
}


/* NGX_OK, NGX_DECLINED (absent: def used) or NGX_ERROR (wrong type or
 * out of range). */
static ngx_int_t
ngx_http_cinematch_rs_int(json_t *body, const char *key, json_int_t def,
    json_int_t lo, json_int_t hi, json_int_t *out)
{
    json_t *v = json_object_get(body, key);

    if (v == NULL || json_is_null(v)) {
        *out = def;
        return NGX_DECLINED;
    }

    if (!json_is_integer(v)) {
        return NGX_ERROR;
    }

    *out = json_integer_value(v);

    return (*out < lo || *out > hi) ? NGX_ERROR : NGX_OK;
}


/* NGX_DECLINED when every key is allowed, else the 422 already sent. */

/* A JSON array of genre names to "A,B" for the daemon. */
static ngx_int_t
ngx_http_cinematch_rs_genres(ngx_http_request_t *r, json_t *arr,
    ngx_str_t *out)
{
    u_char      *p;
    size_t       i, len;
    json_t      *g;
    const char  *name;

    ngx_str_null(out);

    if (arr == NULL || json_is_null(arr)) {
        return NGX_OK;
    }

    if (!json_is_array(arr) || json_array_size(arr) > CM_ML_N_GENRES) {
        return NGX_ERROR;
    }

    out->data = ngx_pnalloc(r->pool, CM_ML_N_GENRES * 24);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    p = out->data;

    json_array_foreach(arr, i, g) {
        if (!json_is_string(g)) {
            return NGX_ERROR;
        }

        name = json_string_value(g);
        len = json_string_length(g);

        if (len == 0 || len > 20 || cm_ml_genre_parse(name, len) <= 0) {
            return NGX_ERROR;
        }

        if (p != out->data) {
            *p++ = ',';
        }

        p = ngx_cpymem(p, name, len);
    }

    out->len = p - out->data;

    return NGX_OK;
}


ngx_int_t
ngx_http_cinematch_recommend_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    json_t      *filters;
    uint64_t     params[5];
    ngx_int_t    rc;
    ngx_str_t    genres;
    json_int_t   user, k, ymin, ymax;

    static const char  *allowed[] = { "user_id", "k", "exclude_seen",
                                      "filters", NULL };
    static const char  *allowed_filters[] = { "genres", "year_min",
                                              "year_max", NULL };

    rc = ngx_http_cinematch_rs_unknown_fields(r, ctx->json, allowed);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    if (ngx_http_cinematch_rs_int(ctx->json, "user_id", 0, 1, NGX_MAX_INT32_VALUE,
                                  &user) == NGX_ERROR)
    {
        return ngx_http_cinematch_send_invalid(r, "user_id",
                                             "must be a positive integer");
    }

    if (ngx_http_cinematch_rs_int(ctx->json, "k", 10, 1,
                                  NGX_HTTP_CINEMATCH_MAX_K, &k) == NGX_ERROR)
    {
        return ngx_http_cinematch_send_invalid(r, "k", "must be 1..100");
    }

    params[2] = CM_REC_EXCLUDE_SEEN;

    if (json_object_get(ctx->json, "exclude_seen") != NULL) {
        if (!json_is_boolean(json_object_get(ctx->json, "exclude_seen"))) {
            return ngx_http_cinematch_send_invalid(r, "exclude_seen",
                                                 "must be true or false");
        }

        if (json_is_false(json_object_get(ctx->json, "exclude_seen"))) {
            params[2] = 0;
        }
    }

    ymin = 0;
    ymax = 0;
    ngx_str_null(&genres);
    filters = json_object_get(ctx->json, "filters");

    if (filters != NULL && !json_is_null(filters)) {
        rc = ngx_http_cinematch_rs_unknown_fields(r, filters,
                                                  allowed_filters);
        if (rc != NGX_DECLINED) {
            return rc;
        }

        if (ngx_http_cinematch_rs_genres(r,
                json_object_get(filters, "genres"), &genres) != NGX_OK)
        {
            return ngx_http_cinematch_send_invalid(r, "filters.genres",
                       "must be a list of MovieLens genre names");
        }

        if (ngx_http_cinematch_rs_int(filters, "year_min", 0, 1870, 2100,
                                      &ymin) == NGX_ERROR
            || ngx_http_cinematch_rs_int(filters, "year_max", 0, 1870, 2100,
                                         &ymax) == NGX_ERROR)
        {
            return ngx_http_cinematch_send_invalid(r, "filters",
                       "year_min and year_max must be years 1870..2100");
        }

        if (ymin != 0 && ymax != 0 && ymin > ymax) {
            return ngx_http_cinematch_send_invalid(r, "filters.year_min",
                                                 "must not exceed year_max");
        }
    }

#if (NGX_HTTP_CINEMATCH_AUTH)
    {
        /* the caller's own recommendations unless an admin names another
         * user; the caller's rating user id may need a lookup first */
        ngx_http_cinematch_rs_rec_t  *rec;

        rec = ngx_palloc(r->pool, sizeof(ngx_http_cinematch_rs_rec_t));
        if (rec == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        rec->params[0] = (uint64_t) user;
        rec->params[1] = (uint64_t) k;
        rec->params[2] = params[2];
        rec->params[3] = (uint64_t) ymin;
        rec->params[4] = (uint64_t) ymax;
        rec->genres = genres;
        ctx->data = rec;

        if (user != 0 && ngx_http_cinematch_caller(r)->admin) {
            return ngx_http_cinematch_rs_recommend_as(r);
        }

        return ngx_http_cinematch_caller_rating_id(r,
                                        ngx_http_cinematch_rs_recommend_as);
    }
#else
    params[0] = (uint64_t) user;
    params[1] = (uint64_t) k;
    params[3] = (uint64_t) ymin;
    params[4] = (uint64_t) ymax;

    return ngx_http_cinematch_rs_submit(r, CM_REQ_RECOMMEND, params, 5,
                                        genres.data, genres.len);
#endif
}


#if (NGX_HTTP_CINEMATCH_AUTH)

static ngx_int_t
ngx_http_cinematch_rs_recommend_as(ngx_http_request_t *r)
{
    ngx_http_cinematch_ctx_t     *ctx;
    ngx_http_cinematch_rs_rec_t  *rec;
    ngx_http_cinematch_caller_t  *c;

    ctx = ngx_http_get_module_ctx(r, ngx_http_cinematch_module);
    rec = ctx->data;
    c = ngx_http_cinematch_caller(r);

    if (rec->params[0] == 0) {
        rec->params[0] = (uint64_t) c->rating_user_id;

    } else if (!c->admin && rec->params[0] != (uint64_t) c->rating_user_id) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_FORBIDDEN,
                                             "forbidden",
                                             "recommendations for another "
                                             "user need an administrator");
    }

    return ngx_http_cinematch_rs_submit(r, CM_REQ_RECOMMEND, rec->params, 5,
                                        rec->genres.data, rec->genres.len);
}

#endif


ngx_int_t
ngx_http_cinematch_similar_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    uint64_t     params[2];
    ngx_int_t    rc;
    json_int_t   movie, k;

    static const char  *allowed[] = { "movie_id", "k", NULL };

    rc = ngx_http_cinematch_rs_unknown_fields(r, ctx->json, allowed);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    if (ngx_http_cinematch_rs_int(ctx->json, "movie_id", 0, 1,
                                  NGX_MAX_INT32_VALUE, &movie) != NGX_OK)
    {
        return ngx_http_cinematch_send_invalid(r, "movie_id",
                                             "required, a positive integer");
    }

    if (ngx_http_cinematch_rs_int(ctx->json, "k", 10, 1,
                                  NGX_HTTP_CINEMATCH_MAX_K, &k) == NGX_ERROR)
    {
        return ngx_http_cinematch_send_invalid(r, "k", "must be 1..100");
    }

    params[0] = (uint64_t) movie;
    params[1] = (uint64_t) k;

    return ngx_http_cinematch_rs_submit(r, CM_REQ_SIMILAR, params, 2, NULL, 0);
}


ngx_int_t
ngx_http_cinematch_popular_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    uint64_t    params[1];
    ngx_int_t   k;
    ngx_str_t   arg, genre;

    k = 10;

    if (ngx_http_arg(r, (u_char *) "k", 1, &arg) == NGX_OK) {
        k = ngx_atoi(arg.data, arg.len);

        if (k == NGX_ERROR || k < 1 || k > NGX_HTTP_CINEMATCH_MAX_K) {
            return ngx_http_cinematch_send_invalid(r, "k", "must be 1..100");
        }
    }

    ngx_str_null(&genre);

    if (ngx_http_arg(r, (u_char *) "genre", 5, &arg) == NGX_OK) {
        genre.data = ngx_pnalloc(r->pool, arg.len + 1);
        if (genre.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        /* "Sci-Fi" arrives as is; "Film%20Noir"-style escapes decoded */
        {
            u_char  *dst = genre.data, *src = arg.data;

            ngx_unescape_uri(&dst, &src, arg.len, NGX_UNESCAPE_URI);
            genre.len = dst - genre.data;
        }

        if (genre.len == 0 || genre.len > 20
            || cm_ml_genre_parse((char *) genre.data, genre.len) <= 0)
        {
            return ngx_http_cinematch_send_invalid(r, "genre",
                                                 "unknown genre");
        }
    }

    params[0] = (uint64_t) k;

    return ngx_http_cinematch_rs_submit(r, CM_REQ_POPULAR, params, 1,
                                        genre.data, genre.len);
}


ngx_int_t
ngx_http_cinematch_predict_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    size_t       i, n;
    json_t      *ids, *v;
    int32_t     *buf, id;
    uint64_t     params[1];
    ngx_int_t    rc;
    json_int_t   user;

    static const char  *allowed[] = { "user_id", "movie_ids", NULL };

    if (ctx->params[0].len != 6
        || ngx_strncmp(ctx->params[0].data, "recsys", 6) != 0)
    {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                                             "not_found", "no such model");
    }

    rc = ngx_http_cinematch_rs_unknown_fields(r, ctx->json, allowed);
    if (rc != NGX_DECLINED) {
        return rc;
    }

    if (ngx_http_cinematch_rs_int(ctx->json, "user_id", 0, 1,
                                  NGX_MAX_INT32_VALUE, &user) != NGX_OK)
    {
        return ngx_http_cinematch_send_invalid(r, "user_id",
                                             "required, a positive integer");
    }

    ids = json_object_get(ctx->json, "movie_ids");
    n = json_is_array(ids) ? json_array_size(ids) : 0;

    if (n == 0 || n > NGX_HTTP_CINEMATCH_MAX_PREDICT) {
        return ngx_http_cinematch_send_invalid(r, "movie_ids",
                                             "1..1000 movie ids required");
    }

    buf = ngx_palloc(r->pool, n * sizeof(int32_t));
    if (buf == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    json_array_foreach(ids, i, v) {
        if (!json_is_integer(v) || json_integer_value(v) < 1
            || json_integer_value(v) > NGX_MAX_INT32_VALUE)
        {
            return ngx_http_cinematch_send_invalid(r, "movie_ids",
                                                 "must be positive integers");
        }

        id = (int32_t) json_integer_value(v);
        ngx_memcpy(&buf[i], &id, sizeof(int32_t));
    }

#if (NGX_HTTP_CINEMATCH_AUTH)
    {
        /* the same rule as /recommend: the caller's own rating user
         * unless an admin names another */
        ngx_http_cinematch_rs_pred_t  *pred;

        if (ngx_http_cinematch_caller(r)->admin) {
            params[0] = (uint64_t) user;

            return ngx_http_cinematch_rs_submit(r, CM_REQ_PREDICT, params, 1,
                                                (u_char *) buf,
                                                n * sizeof(int32_t));
        }

        pred = ngx_palloc(r->pool, sizeof(ngx_http_cinematch_rs_pred_t));
        if (pred == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        pred->params[0] = (uint64_t) user;
        pred->ids = (u_char *) buf;
        pred->len = n * sizeof(int32_t);
        ctx->data = pred;

        return ngx_http_cinematch_caller_rating_id(r,
                                        ngx_http_cinematch_rs_predict_as);
    }
#else
    params[0] = (uint64_t) user;

    return ngx_http_cinematch_rs_submit(r, CM_REQ_PREDICT, params, 1,
                                        (u_char *) buf, n * sizeof(int32_t));
#endif
}


#if (NGX_HTTP_CINEMATCH_AUTH)

static ngx_int_t
ngx_http_cinematch_rs_predict_as(ngx_http_request_t *r)
{
    ngx_http_cinematch_ctx_t      *ctx;
    ngx_http_cinematch_caller_t   *c;
    ngx_http_cinematch_rs_pred_t  *pred;

    ctx = ngx_http_get_module_ctx(r, ngx_http_cinematch_module);
    pred = ctx->data;
    c = ngx_http_cinematch_caller(r);

    if (pred->params[0] != (uint64_t) c->rating_user_id) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_FORBIDDEN,
                                             "forbidden",
                                             "predictions for another "
                                             "user need an administrator");
    }

    return ngx_http_cinematch_rs_submit(r, CM_REQ_PREDICT, pred->params, 1,
                                        pred->ids, pred->len);
}

#endif


/*
 * recommend, similar and popular go through the response cache when it is
 * on (a hit answers without the daemon); everything else, and every miss,
 * goes to the daemon.
 */

static ngx_int_t
ngx_http_cinematch_rs_submit(ngx_http_request_t *r, uint32_t kind,
    uint64_t *params, size_t np, u_char *payload, size_t len)
{
    ngx_http_cinematch_rs_job_t  *job;

    job = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_rs_job_t));
    if (job == NULL || np > 5) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    job->kind = kind;
    job->np = np;
    job->payload = payload;
    job->len = len;
    ngx_memcpy(job->params, params, np * sizeof(uint64_t));

    switch (kind) {
    case CM_REQ_RECOMMEND:
        job->endpoint = 0;
        job->user = (int64_t) params[0];
#if (NGX_HTTP_CINEMATCH_SERVING)
        /* the daemon writes the request log's members beside the answer:
         * nothing here parses a recommendation */
        job->params[2] |= CM_REC_LOG_MEMBERS;
#endif
        break;
    case CM_REQ_SIMILAR:
        job->endpoint = 1;
        break;
    case CM_REQ_POPULAR:
        job->endpoint = 2;
        break;
    default:
        job->endpoint = 3;
        break;
    }

#if (NGX_HTTP_CINEMATCH_SERVING)

    if (job->endpoint < NGX_HTTP_CINEMATCH_EP_N) {
        u_char     *p;
        ngx_str_t   key;

        /* the parameters as text, in a fixed order: part of the key */

        key.data = ngx_pnalloc(r->pool, 5 * (NGX_INT64_LEN + 1) + len + 1);
        if (key.data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        p = key.data;

        if (kind == CM_REQ_RECOMMEND) {
            p = ngx_sprintf(p, "%uL:%uL:%uL:%uL:%uL:", params[0], params[1],
                            job->params[2], params[3], params[4]);

        } else if (kind == CM_REQ_SIMILAR) {
            p = ngx_sprintf(p, "%uL:%uL:", params[0], params[1]);

        } else {
            p = ngx_sprintf(p, "%uL:", params[0]);
        }

        p = ngx_cpymem(p, payload, len);
        key.len = p - key.data;

        if (ngx_http_cinematch_cache_fetch(r, job->endpoint, job->user, &key,
                                           ngx_http_cinematch_rs_run, job)
            == NGX_DONE)
        {
            return NGX_DONE;
        }
    }

#endif

    return ngx_http_cinematch_rs_run(r, job);
}


static ngx_int_t
ngx_http_cinematch_rs_run(ngx_http_request_t *r, void *data)
{
    ngx_http_cinematch_rs_job_t *job = data;

    ngx_int_t                        rc;
    ngx_http_cinematch_infer_req_t  *ir;

    rc = ngx_http_cinematch_infer_submit(r, job->kind, job->params, job->np,
                                         job->payload, job->len,
                                         ngx_http_cinematch_rs_ready, job,
                                         &ir);
    switch (rc) {

    case NGX_OK:
        ngx_http_cinematch_wait(r);
        return NGX_DONE;

    case NGX_BUSY:
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                   "unavailable", "all inference slots are busy");

    case NGX_DECLINED:
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                   "unavailable", "no inference daemon is available");

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}


static void
ngx_http_cinematch_rs_ready(ngx_http_cinematch_infer_req_t *ir, ngx_int_t rc)
{
    u_char              *p;
    json_t              *check;
    int32_t              status;
    uint32_t             state, len;
    ngx_http_request_t  *r = ir->request;

    if (rc == NGX_ERROR) {
        ngx_http_cinematch_finish(r, ngx_http_cinematch_send_error(r,
            NGX_HTTP_SERVICE_UNAVAILABLE, "unavailable",
            "the inference daemon went away"));
        return;
    }

    ngx_http_cinematch_infer_rearm(ir);

    state = cm_ipc_slot_state(ir->slot);

    if (state != CM_SLOT_DONE && state != CM_SLOT_ERROR) {
        return;
    }

    status = ir->slot->status;
    len = ir->slot->res_len;

    if (state == CM_SLOT_ERROR) {
        ngx_http_cinematch_infer_release(ir);

        switch (status) {

        case CM_ENOTFOUND:
            rc = ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                     "not_found", "no such movie in the model");
            break;

        case CM_EINVAL:
            rc = ngx_http_cinematch_send_invalid(r, "body",
                     "rejected by the model server");
            break;

        case CM_EAGAIN:
            rc = ngx_http_cinematch_send_error(r,
                     NGX_HTTP_SERVICE_UNAVAILABLE, "unavailable",
                     "no recommendation model is loaded");
            break;

        default:
            rc = ngx_http_cinematch_send_error(r,
                     NGX_HTTP_INTERNAL_SERVER_ERROR, "internal_error",
                     "the model server failed the request");
        }

        ngx_http_cinematch_finish(r, rc);
        return;
    }

    /* copy out of the slot, then make sure it is the JSON we expect */

    if (len == 0 || len > ir->seg->hdr->res_cap) {
        ngx_http_cinematch_infer_release(ir);
        ngx_http_cinematch_metrics_upstream_error(
            NGX_HTTP_CINEMATCH_UPSTREAM_INFER);
        ngx_http_cinematch_finish(r, ngx_http_cinematch_send_error(r,
            NGX_HTTP_BAD_GATEWAY, "bad_gateway",
            "malformed answer from the model server"));
        return;
    }

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        ngx_http_cinematch_infer_release(ir);
        ngx_http_cinematch_finish(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_memcpy(p, cm_ipc_slot_res(ir->seg, ir->slot), len);
    ngx_http_cinematch_infer_release(ir);

#if (NGX_HTTP_CINEMATCH_SERVING)
    if (p[0] == '"') {
        ngx_http_cinematch_rs_job_t *job = ir->data;

        if (job->kind == CM_REQ_RECOMMEND) {
            ngx_http_cinematch_finish(r,
                ngx_http_cinematch_rs_answer_text(r, job, p, len));
            return;
        }
    }
#endif

    check = json_loadb((char *) p, len, JSON_REJECT_DUPLICATES, NULL);

    if (!json_is_object(check)) {
        json_decref(check);
        ngx_http_cinematch_metrics_upstream_error(
            NGX_HTTP_CINEMATCH_UPSTREAM_INFER);
        ngx_http_cinematch_finish(r, ngx_http_cinematch_send_error(r,
            NGX_HTTP_BAD_GATEWAY, "bad_gateway",
            "malformed answer from the model server"));
        return;
    }

#if (NGX_HTTP_CINEMATCH_SERVING)
    {
        ngx_http_cinematch_rs_job_t *job = ir->data;

        if (job->endpoint < NGX_HTTP_CINEMATCH_EP_N) {
            ngx_http_cinematch_serving_answered(r, job->endpoint, job->user,
                                                p, len, check);
        }
    }
#endif

    ngx_http_cinematch_set_model_version(r, check);
    json_decref(check);

    ngx_http_cinematch_finish(r, ngx_http_cinematch_send_buf(r, NGX_HTTP_OK,
                                  &ngx_http_cinematch_rs_json, p, len));
}


#if (NGX_HTTP_CINEMATCH_SERVING)

/*
 * A recommendation with its request-log members: "<members>\n<answer>".
 * The daemon writes both from text jansson made at model load, so this
 * only checks the shape (members that start with the model_version, an
 * answer that is one object) instead of parsing ~2 KB of JSON per request.
 */

static ngx_int_t
ngx_http_cinematch_rs_answer_text(ngx_http_request_t *r, void *data,
    u_char *p, size_t len)
{
    ngx_http_cinematch_rs_job_t *job = data;

    u_char     *nl, *body, *v, *end;
    size_t      blen;
    ngx_str_t   members, version;

    static const u_char  lead[] = "\"model_version\":\"";

    nl = ngx_strlchr(p, p + len, '\n');
    body = nl != NULL ? nl + 1 : NULL;
    blen = body != NULL ? (size_t) (p + len - body) : 0;

    if (nl == NULL || blen < 2 || body[0] != '{' || body[blen - 1] != '}'
        || (size_t) (nl - p) < sizeof(lead) - 1
        || ngx_memcmp(p, lead, sizeof(lead) - 1) != 0)
    {
        ngx_http_cinematch_metrics_upstream_error(
            NGX_HTTP_CINEMATCH_UPSTREAM_INFER);
        return ngx_http_cinematch_send_error(r, NGX_HTTP_BAD_GATEWAY,
                   "bad_gateway", "malformed answer from the model server");
    }

    members.data = p;
    members.len = nl - p;

    /* a version is plain text: no quote or backslash inside */
    v = p + sizeof(lead) - 1;
    for (end = v; end < nl && *end != '"' && *end != '\\'; end++) {
        /* void */
    }

    version.data = v;
    version.len = (end < nl && *end == '"') ? (size_t) (end - v) : 0;

    ngx_http_cinematch_serving_answered_text(r, job->endpoint, body, blen,
                                             &members, &version);
    ngx_http_cinematch_serving_set_version(r, &version);

    return ngx_http_cinematch_send_buf(r, NGX_HTTP_OK,
                                       &ngx_http_cinematch_rs_json, body,
                                       blen);
}

#endif

/*
 * ngx_http_cinematch_api_movies.c: the catalogue, straight from
 * PostgreSQL (API.md "Movies").
 *
 *   GET /api/v1/movies?q=&genre=&year_min=&year_max=&limit=&offset=
 *   GET /api/v1/movies/{id}
 *
 * PostgreSQL builds the JSON document (json_build_object), so the module
 * only validates parameters and passes one text value through.  Every
 * value travels as a query parameter, never inside the SQL text.
 */
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_cinematch.h"
#include "cinematch/movielens.h"
#include "cinematch/validate.h"


#define NGX_HTTP_CINEMATCH_Q_MAX  200


static ngx_int_t ngx_http_cinematch_movies_arg(ngx_http_request_t *r,
    char *name, size_t len, ngx_str_t *out);
static ngx_int_t ngx_http_cinematch_movies_num(ngx_http_request_t *r,
    char *name, size_t len, ngx_int_t lo, ngx_int_t hi, const char **out);
static ngx_int_t ngx_http_cinematch_movies_query(ngx_http_request_t *r,
    const char *sql, int n, const char **values);
static ngx_int_t ngx_http_cinematch_movies_done(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);


static ngx_str_t  ngx_http_cinematch_movies_type =
    ngx_string("application/json");


static const char  ngx_http_cinematch_movies_sql[] =
    "WITH m AS ("
    "  SELECT movie_id, title, year, genres FROM movies"
    "  WHERE ($1::text IS NULL OR title ILIKE '%' || $1 || '%' ESCAPE '\\')"
    "    AND ($2::text IS NULL OR $2 = ANY (genres))"
    "    AND ($3::int IS NULL OR year >= $3::int)"
    "    AND ($4::int IS NULL OR year <= $4::int))"
    " SELECT json_build_object("
    "  'movies', coalesce((SELECT json_agg(json_build_object("
    "      'movie_id', p.movie_id, 'title', p.title, 'year', p.year,"
    "      'genres', p.genres) ORDER BY p.movie_id)"
    "    FROM (SELECT * FROM m ORDER BY movie_id LIMIT $5::int"
    "          OFFSET $6::int) p), '[]'::json),"
    "  'total', (SELECT count(*) FROM m),"
    "  'limit', $5::int, 'offset', $6::int)::text";

static const char  ngx_http_cinematch_movie_sql[] =
    "SELECT json_build_object('movie_id', m.movie_id, 'title', m.title,"
    "  'year', m.year, 'genres', m.genres,"
    "  'rating_count', s.n, 'rating_mean', s.mean)::text"
    " FROM movies m, LATERAL (SELECT count(*) AS n,"
    "  round(avg(r.rating)::numeric, 3) AS mean"
    "  FROM ratings r WHERE r.movie_id = m.movie_id) s"
    " WHERE m.movie_id = $1::int";


/* A query argument, '+' and %XX decoded, NUL-terminated. */
static ngx_int_t
ngx_http_cinematch_movies_arg(ngx_http_request_t *r, char *name, size_t len,
    ngx_str_t *out)
{
    u_char     *dst, *src, *p;
    ngx_str_t   raw;

    if (ngx_http_arg(r, (u_char *) name, len, &raw) != NGX_OK) {
        return NGX_DECLINED;
    }

    out->data = ngx_pnalloc(r->pool, raw.len + 1);
    if (out->data == NULL) {
        return NGX_ERROR;
    }

    for (p = raw.data; p < raw.data + raw.len; p++) {
        if (*p == '+') {
            *p = ' ';
        }
    }

    dst = out->data;
    src = raw.data;
    ngx_unescape_uri(&dst, &src, raw.len, 0);
    out->len = dst - out->data;
    *dst = '\0';

    return NGX_OK;
}


static ngx_int_t
ngx_http_cinematch_movies_num(ngx_http_request_t *r, char *name, size_t len,
    ngx_int_t lo, ngx_int_t hi, const char **out)
{
    ngx_int_t   v, rc;
    ngx_str_t   s;

    rc = ngx_http_cinematch_movies_arg(r, name, len, &s);
    if (rc != NGX_OK) {
        return rc;
    }

    v = ngx_atoi(s.data, s.len);

    if (v == NGX_ERROR || v < lo || v > hi) {
        return NGX_ERROR;
    }

    *out = (const char *) s.data;

    return NGX_OK;
}



ngx_int_t
ngx_http_cinematch_movies_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    u_char       *d, *s;
    ngx_int_t     rc;
    ngx_str_t     q, genre;
    const char  **v;

    v = ngx_pcalloc(r->pool, 6 * sizeof(const char *));
    if (v == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_cinematch_movies_arg(r, "q", 1, &q);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_OK && q.len > 0) {
        if (q.len > NGX_HTTP_CINEMATCH_Q_MAX
            || !cm_utf8_valid((char *) q.data, q.len, NULL)
            || ngx_strlen(q.data) != q.len)
        {
            return ngx_http_cinematch_send_invalid(r, "q",
                       "at most 200 bytes of UTF-8 text");
        }

        /* LIKE metacharacters are searched for literally */
        d = ngx_pnalloc(r->pool, q.len * 2 + 1);
        if (d == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        v[0] = (const char *) d;

        for (s = q.data; s < q.data + q.len; s++) {
            if (*s == '%' || *s == '_' || *s == '\\') {
                *d++ = '\\';
            }
            *d++ = *s;
        }

        *d = '\0';
    }

    rc = ngx_http_cinematch_movies_arg(r, "genre", 5, &genre);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_OK) {
        if (genre.len == 0 || genre.len > 20
            || cm_ml_genre_parse((char *) genre.data, genre.len) <= 0)
        {
            return ngx_http_cinematch_send_invalid(r, "genre",
                                                 "unknown genre");
        }

        v[1] = (const char *) genre.data;
    }

    if (ngx_http_cinematch_movies_num(r, "year_min", 8, 1870, 2100, &v[2])
        == NGX_ERROR
        || ngx_http_cinematch_movies_num(r, "year_max", 8, 1870, 2100, &v[3])
           == NGX_ERROR)
    {
        return ngx_http_cinematch_send_invalid(r, "year_min",
                   "year_min and year_max must be years 1870..2100");
    }

    v[4] = "20";
    v[5] = "0";

    if (ngx_http_cinematch_movies_num(r, "limit", 5, 1, 100, &v[4])
        == NGX_ERROR)
    {
        return ngx_http_cinematch_send_invalid(r, "limit", "must be 1..100");
    }

    if (ngx_http_cinematch_movies_num(r, "offset", 6, 0, 1000000, &v[5])
        == NGX_ERROR)
    {
        return ngx_http_cinematch_send_invalid(r, "offset",
                                             "must be 0..1000000");
    }

    return ngx_http_cinematch_movies_query(r, ngx_http_cinematch_movies_sql,
                                           6, v);
}


ngx_int_t
ngx_http_cinematch_movie_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    ngx_int_t     id;
    const char  **v;

    id = ngx_atoi(ctx->params[0].data, ctx->params[0].len);

    if (id == NGX_ERROR || id < 1 || id > NGX_MAX_INT32_VALUE
        || ctx->params[0].len > 10)
    {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                                             "not_found", "no such movie");
    }

    v = ngx_palloc(r->pool, sizeof(const char *));
    if (v == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    v[0] = ngx_pnalloc(r->pool, NGX_INT_T_LEN + 1);
    if (v[0] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *ngx_sprintf((u_char *) v[0], "%i", id) = '\0';

    return ngx_http_cinematch_movies_query(r, ngx_http_cinematch_movie_sql, 1,
                                           v);
}


static ngx_int_t
ngx_http_cinematch_movies_query(ngx_http_request_t *r, const char *sql,
    int n, const char **values)
{
    switch (ngx_http_cinematch_pg_query(r, sql, n, values,
                                        ngx_http_cinematch_movies_done,
                                        NULL))
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
ngx_http_cinematch_movies_done(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    u_char  *p;
    size_t   len;

    if (err != NULL || res == NULL
        || PQresultStatus(res) != PGRES_TUPLES_OK)
    {
        if (res != NULL && PQresultStatus(res) != PGRES_TUPLES_OK) {
            /* the server's text goes to the log, never to the client */
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "cinematch: movies query failed: %s",
                          PQresultErrorMessage(res));
        }

        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             "database unavailable");
    }

    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                                             "not_found", "no such movie");
    }

    len = PQgetlength(res, 0, 0);
    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(p, PQgetvalue(res, 0, 0), len);

    return ngx_http_cinematch_send_buf(r, NGX_HTTP_OK,
                                       &ngx_http_cinematch_movies_type, p,
                                       len);
}


/*
 * ngx_http_cinematch_api_conversations.c: the caller's conversations with
 * the dialog model (API.md "Chat").
 *
 *   POST   /api/v1/conversations                {title?} → 201
 *   GET    /api/v1/conversations?limit=&cursor= newest activity first
 *   GET    /api/v1/conversations/{id}           {conversation, messages}
 *   PATCH  /api/v1/conversations/{id}           {title}
 *   DELETE /api/v1/conversations/{id}           → 204
 *   POST   /api/v1/conversations/{id}/messages  generate (SSE or JSON)
 *   POST   /api/v1/conversations/{id}/cancel    stop that generation
 *   GET    /api/v1/conversations/{id}/export?format=json|md|pdf
 *   POST   /api/v1/messages/{id}/feedback       {rating: 1|-1, comment?}
 *
 * Every statement is scoped by the caller's user id, so another user's
 * conversation or message is a 404, never a 403.
 *
 * A message is persisted so that nothing is lost: the user's message is
 * stored (and the conversation touched) before generation starts; the
 * reply is stored when generation ends, with status complete, partial
 * (the client went away: the text produced so far) or error (the daemon
 * went away or failed), its token counts and latencies, and only then is
 * the final `done` event (or the JSON answer) sent, with its id.
 *
 * Context: the last NGX_HTTP_CINEMATCH_CONV_TURNS turns, from a Redis list
 * per conversation (cinematch:conv:<id>:turns), rebuilt from PostgreSQL
 * when the list is missing or Redis is down (the WebSocket shares the
 * list).  The daemon drops the oldest whole turns that do not fit the
 * model's context (reported as "context" in `done`); the payload builder
 * drops the oldest turns that do not fit a slot.
 *
 * A PDF export is rendered on a thread pool (ngx_http_cinematch_export_
 * module below: `cinematch_export_thread_pool NAME;`, http level, default
 * nginx's "default" pool), never on the event loop: a long conversation
 * takes this worker's other clients nowhere.
 *
 * Events for downstream consumers go to the Redis stream
 * cinematch:chat.events (MAXLEN ~ 100000), fire and forget: message.created,
 * generation.finished (with its stats) and feedback.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#if (NGX_THREADS)
#include <ngx_thread_pool.h>
#endif

#include "ngx_http_cinematch.h"
#include "ngx_http_cinematch_infer.h"
#include "ngx_http_cinematch_chat.h"
#include "cinematch/validate.h"
#include "cinematch/chatdoc.h"


#define NGX_HTTP_CINEMATCH_CONV_TTL        "86400"
#define NGX_HTTP_CINEMATCH_CONV_TITLE      200      /* characters */
#define NGX_HTTP_CINEMATCH_CONV_COMMENT    2000     /* characters */
#define NGX_HTTP_CINEMATCH_CONV_EVENTS     "cinematch:chat.events"
#define NGX_HTTP_CINEMATCH_CONV_MAXLEN     "100000"
#define NGX_HTTP_CINEMATCH_CONV_EXPORT     5000     /* messages */

#define NGX_HTTP_CINEMATCH_CONV_TS(col)                                       \
    "to_char(" col " AT TIME ZONE 'UTC', "                                    \
    "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

/* the conversation as a JSON object, from the row c */
#define NGX_HTTP_CINEMATCH_CONV_JSON                                          \
    "json_build_object('id', c.id, 'title', c.title,"                         \
    " 'model', c.model_name,"                                                 \
    " 'created_at', " NGX_HTTP_CINEMATCH_CONV_TS("c.created_at") ","          \
    " 'updated_at', " NGX_HTTP_CINEMATCH_CONV_TS("c.updated_at") ")::text"

/* its messages, oldest first, with the caller's vote ($2: user id) */
#define NGX_HTTP_CINEMATCH_CONV_MESSAGES                                      \
    "(SELECT coalesce(json_agg(json_build_object('id', m.id,"                 \
    " 'role', m.role, 'content', m.content, 'status', m.status,"              \
    " 'finish_reason', m.finish_reason, 'error', m.error,"                    \
    " 'prompt_tokens', m.prompt_tokens,"                                      \
    " 'completion_tokens', m.completion_tokens,"                              \
    " 'first_token_ms', m.first_token_ms, 'latency_ms', m.latency_ms,"        \
    " 'feedback', (SELECT f.rating FROM message_feedback f"                   \
    "   WHERE f.message_id = m.id AND f.user_id = $2::bigint),"               \
    " 'created_at', " NGX_HTTP_CINEMATCH_CONV_TS("m.created_at") ")"          \
    " ORDER BY m.id), '[]'::json)::text"                                      \
    " FROM (SELECT * FROM messages WHERE conversation_id = c.id"              \
    "  ORDER BY id DESC LIMIT 5000) m)"


typedef struct {
    ngx_http_cinematch_gen_t      gen;           /* messages only */

    char                          user_id[NGX_INT64_LEN + 1];
    char                          conv_id[40];
    char                          limit[NGX_INT_T_LEN + 1];
    char                          cursor_us[NGX_INT64_LEN + 1];
    char                          cursor_id[40];
    char                          message_id[NGX_INT64_LEN + 1];
    char                          rating[4];
    const char                   *values[12];
    ngx_int_t                     nlimit;
    ngx_uint_t                    format;        /* export: 0 json, 1 md */

    /* messages */
    uint64_t                      params[NGX_HTTP_CINEMATCH_GEN_PARAMS];
    json_t                       *stop;
    ngx_str_t                     content;       /* NUL-terminated */
    char                          user_message_id[NGX_INT64_LEN + 1];
    char                          request_id[NGX_HTTP_CINEMATCH_REQUEST_ID_LEN
                                             + 1];
    ngx_str_t                    *turns;
    size_t                        nturns;
    u_char                       *clean;         /* one record, cleaned */

    /* the stored reply */
    ngx_http_cinematch_reply_row_t  row;
    u_char                       *reply;         /* cleaned, NUL-terminated */
    size_t                        reply_len;
} ngx_http_cinematch_conv_t;


static ngx_http_cinematch_conv_t *ngx_http_cinematch_conv_state(
    ngx_http_request_t *r, ngx_http_cinematch_ctx_t *ctx, ngx_uint_t id);
static ngx_int_t ngx_http_cinematch_conv_query(ngx_http_request_t *r,
    const char *sql, int nparams, const char *const *values,
    ngx_http_cinematch_pg_handler_pt handler, void *data);
static ngx_uint_t ngx_http_cinematch_conv_failed(ngx_http_request_t *r,
    PGresult *res, const char *err, const char *what, ngx_int_t *rc);
static ngx_int_t ngx_http_cinematch_conv_not_found(ngx_http_request_t *r);
static ngx_uint_t ngx_http_cinematch_conv_uuid(ngx_str_t *s);
static ngx_int_t ngx_http_cinematch_conv_title(json_t *body,
    ngx_uint_t required, ngx_http_cinematch_conv_t *st, const char **field,
    const char **message);
static ngx_int_t ngx_http_cinematch_conv_one(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_conv_listed(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_conv_got(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_conv_deleted(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_conv_export(ngx_http_request_t *r,
    ngx_http_cinematch_conv_t *st, json_t *conv, json_t *messages);
static ngx_int_t ngx_http_cinematch_conv_download(ngx_http_request_t *r,
    ngx_http_cinematch_conv_t *st, const char *ext, ngx_str_t *type,
    u_char *data, size_t len);

static ngx_int_t ngx_http_cinematch_conv_cancel_owned(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);

/* the PDF export's thread pool (cinematch_export_thread_pool) */
typedef struct {
    ngx_str_t                     pool_name;
#if (NGX_THREADS)
    ngx_thread_pool_t            *pool;
#endif
} ngx_http_cinematch_export_conf_t;


/* One PDF render: the thread reads conv and messages (nobody else touches
 * them meanwhile) and writes pdf, len, rc and err. */
typedef struct {
    ngx_http_request_t           *request;
    ngx_http_cinematch_conv_t    *st;
    json_t                       *conv;
    json_t                       *messages;
    unsigned char                *pdf;       /* malloc'ed by libharu glue */
    size_t                        len;
    int                           rc;
    char                          err[256];
} ngx_http_cinematch_export_job_t;


static ngx_int_t ngx_http_cinematch_conv_pdf(ngx_http_request_t *r,
    ngx_http_cinematch_conv_t *st, json_t *conv, json_t *messages);
static ngx_int_t ngx_http_cinematch_conv_pdf_send(ngx_http_request_t *r,
    ngx_http_cinematch_export_job_t *job);
static void ngx_http_cinematch_conv_pdf_free(void *data);
#if (NGX_THREADS)
static void ngx_http_cinematch_conv_pdf_run(void *data, ngx_log_t *log);
static void ngx_http_cinematch_conv_pdf_done(ngx_event_t *ev);
#endif
static void *ngx_http_cinematch_export_create_conf(ngx_conf_t *cf);
static char *ngx_http_cinematch_export_init_conf(ngx_conf_t *cf, void *conf);

static ngx_int_t ngx_http_cinematch_msg_stored(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_msg_cached(ngx_http_request_t *r,
    void *data, redisReply *reply);
static ngx_int_t ngx_http_cinematch_msg_history(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_msg_generate(ngx_http_request_t *r,
    ngx_http_cinematch_conv_t *st);
static void ngx_http_cinematch_msg_reading(ngx_http_request_t *r);
static ngx_int_t ngx_http_cinematch_msg_text(ngx_http_cinematch_gen_t *g,
    u_char *text, size_t len);
static ngx_int_t ngx_http_cinematch_msg_end(ngx_http_cinematch_gen_t *g);
static ngx_int_t ngx_http_cinematch_msg_saved(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_msg_pushed(ngx_http_request_t *r,
    void *data, redisReply *reply);
static ngx_int_t ngx_http_cinematch_msg_answer(ngx_http_request_t *r,
    ngx_http_cinematch_conv_t *st);

static ngx_int_t ngx_http_cinematch_feedback_stored(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);


static ngx_command_t  ngx_http_cinematch_export_commands[] = {

    { ngx_string("cinematch_export_thread_pool"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_cinematch_export_conf_t, pool_name),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_cinematch_export_module_ctx = {
    NULL,                                    /* preconfiguration */
    NULL,                                    /* postconfiguration */

    ngx_http_cinematch_export_create_conf,   /* create main configuration */
    ngx_http_cinematch_export_init_conf,     /* init main configuration */

    NULL,                                    /* create server configuration */
    NULL,                                    /* merge server configuration */

    NULL,                                    /* create location configuration */
    NULL                                     /* merge location configuration */
};


ngx_module_t  ngx_http_cinematch_export_module = {
    NGX_MODULE_V1,
    &ngx_http_cinematch_export_module_ctx,   /* module context */
    ngx_http_cinematch_export_commands,      /* module directives */
    NGX_HTTP_MODULE,                         /* module type */
    NULL,                                    /* init master */
    NULL,                                    /* init module */
    NULL,                                    /* init process */
    NULL,                                    /* init thread */
    NULL,                                    /* exit thread */
    NULL,                                    /* exit process */
    NULL,                                    /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_str_t  ngx_http_cinematch_conv_json_type =
    ngx_string("application/json");
static ngx_str_t  ngx_http_cinematch_conv_md_type =
    ngx_string("text/markdown; charset=utf-8");
static ngx_str_t  ngx_http_cinematch_conv_pdf_type =
    ngx_string("application/pdf");



static ngx_http_cinematch_conv_t *
ngx_http_cinematch_conv_state(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx, ngx_uint_t id)
{
    u_char                       *p;
    ngx_http_cinematch_caller_t  *c;
    ngx_http_cinematch_conv_t    *st;

    c = ngx_http_cinematch_caller(r);

    st = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_conv_t));
    if (c == NULL || st == NULL) {
        return NULL;
    }

    ctx->data = st;

    p = ngx_sprintf((u_char *) st->user_id, "%L", c->user_id);
    *p = '\0';

    if (id) {
        /* the caller checked the uuid */
        p = ngx_cpymem(st->conv_id, ctx->params[0].data, ctx->params[0].len);
        *p = '\0';
    }

    st->values[0] = st->conv_id;
    st->values[1] = st->user_id;

    return st;
}


static ngx_int_t
ngx_http_cinematch_conv_query(ngx_http_request_t *r, const char *sql,
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


/* 0 when res holds rows; otherwise 1, and *rc is the answer to return */

static ngx_uint_t
ngx_http_cinematch_conv_failed(ngx_http_request_t *r, PGresult *res,
    const char *err, const char *what, ngx_int_t *rc)
{
    if (err != NULL) {
        *rc = ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                            "unavailable",
                                            "database unavailable");
        return 1;
    }

    if (PQresultStatus(res) == PGRES_TUPLES_OK) {
        return 0;
    }

    ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                  "cinematch: %s failed: %s", what,
                  PQresultErrorMessage(res));

    *rc = NGX_HTTP_INTERNAL_SERVER_ERROR;

    return 1;
}


static ngx_int_t
ngx_http_cinematch_conv_not_found(ngx_http_request_t *r)
{
    return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND, "not_found",
                                         "no such conversation");
}


/* A canonical uuid (8-4-4-4-12 hex digits); anything else names nothing. */

static ngx_uint_t
ngx_http_cinematch_conv_uuid(ngx_str_t *s)
{
    ngx_uint_t  i;

    if (s->len != 36) {
        return 0;
    }

    for (i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s->data[i] != '-') {
                return 0;
            }

        } else if (!((s->data[i] >= '0' && s->data[i] <= '9')
                     || ((s->data[i] | 0x20) >= 'a'
                         && (s->data[i] | 0x20) <= 'f')))
        {
            return 0;
        }
    }

    return 1;
}


/*
 * "title": a string of up to 200 characters, or null; into values[2].
 * NGX_ERROR with *field and *message for a 422.
 */

static ngx_int_t
ngx_http_cinematch_conv_title(json_t *body, ngx_uint_t required,
    ngx_http_cinematch_conv_t *st, const char **field, const char **message)
{
    size_t       chars;
    json_t      *v;
    const char  *key;

    json_object_foreach(body, key, v) {
        if (ngx_strcmp(key, "title") != 0) {
            *field = key;
            *message = "unknown field";
            return NGX_ERROR;
        }
    }

    v = json_object_get(body, "title");

    *field = "title";
    *message = "a string of up to 200 characters, or null";

    if (v == NULL && required) {
        return NGX_ERROR;
    }

    if (v == NULL || json_is_null(v)) {
        st->values[2] = NULL;
        return NGX_OK;
    }

    if (!json_is_string(v)
        || !cm_utf8_valid(json_string_value(v), json_string_length(v),
                          &chars)
        || chars > NGX_HTTP_CINEMATCH_CONV_TITLE
        || ngx_strlen(json_string_value(v)) != json_string_length(v))
    {
        return NGX_ERROR;
    }

    st->values[2] = json_string_value(v);

    return NGX_OK;
}


ngx_int_t
ngx_http_cinematch_conv_create_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    const char                 *field, *message;
    ngx_http_cinematch_conv_t  *st;

    st = ngx_http_cinematch_conv_state(r, ctx, 0);
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_cinematch_conv_title(ctx->json, 0, st, &field, &message)
        != NGX_OK)
    {
        return ngx_http_cinematch_send_invalid(r, field, message);
    }

    st->format = NGX_HTTP_CREATED;
    st->values[0] = st->user_id;
    st->values[1] = st->values[2];

    /* no account row (a token for a removed user): nothing is inserted */
    return ngx_http_cinematch_conv_query(r,
        "WITH c AS (INSERT INTO conversations (user_id, title, model_name)"
        " SELECT id, $2, 'dialog' FROM users"
        "  WHERE id = $1::bigint AND disabled_at IS NULL"
        " RETURNING *)"
        " SELECT " NGX_HTTP_CINEMATCH_CONV_JSON " FROM c",
        2, st->values, ngx_http_cinematch_conv_one, st);
}


ngx_int_t
ngx_http_cinematch_conv_update_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    const char                 *field, *message;
    ngx_http_cinematch_conv_t  *st;

    if (!ngx_http_cinematch_conv_uuid(&ctx->params[0])) {
        return ngx_http_cinematch_conv_not_found(r);
    }

    st = ngx_http_cinematch_conv_state(r, ctx, 1);
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_cinematch_conv_title(ctx->json, 1, st, &field, &message)
        != NGX_OK)
    {
        return ngx_http_cinematch_send_invalid(r, field, message);
    }

    st->format = NGX_HTTP_OK;

    return ngx_http_cinematch_conv_query(r,
        "UPDATE conversations c SET title = $3"
        " WHERE c.id = $1::uuid AND c.user_id = $2::bigint"
        " RETURNING " NGX_HTTP_CINEMATCH_CONV_JSON,
        3, st->values, ngx_http_cinematch_conv_one, st);
}


/* One conversation row (created or updated): st->format is the status. */

static ngx_int_t
ngx_http_cinematch_conv_one(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    json_t                     *conv;
    ngx_int_t                   rc;
    ngx_http_cinematch_conv_t  *st = data;

    if (ngx_http_cinematch_conv_failed(r, res, err, "conversation write",
                                       &rc))
    {
        return rc;
    }

    if (PQntuples(res) != 1) {
        if (st->format == NGX_HTTP_CREATED) {
            return ngx_http_cinematch_send_error(r, NGX_HTTP_UNAUTHORIZED,
                                                 "unauthenticated",
                                                 "no such account");
        }

        return ngx_http_cinematch_conv_not_found(r);
    }

    conv = json_loads(PQgetvalue(res, 0, 0), 0, NULL);
    if (conv == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_send_json(r, st->format,
                                        json_pack("{s:o}", "conversation",
                                                  conv));
}


/*
 * Newest activity first (updated_at, then id, both descending), by keyset:
 * the cursor is "<updated_at in µs since the epoch>_<id>" of the last row
 * of the previous page, so a page costs one index range scan however deep
 * it is.  A conversation that gets a message moves to the front; a client
 * paging at that moment may miss it on later pages, never see a row twice.
 */

ngx_int_t
ngx_http_cinematch_conv_list_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    u_char                     *p, *us;
    ngx_str_t                   cursor, id;
    ngx_int_t                   limit, rc;
    ngx_http_cinematch_conv_t  *st;

    st = ngx_http_cinematch_conv_state(r, ctx, 0);
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (ngx_http_cinematch_arg_int(r, "limit", 20, 1, 100, &limit) != NGX_OK)
    {
        return ngx_http_cinematch_send_invalid(r, "limit", "must be 1..100");
    }

    st->nlimit = limit;
    p = ngx_sprintf((u_char *) st->limit, "%i", limit + 1);
    *p = '\0';

    st->values[0] = st->limit;
    st->values[1] = st->user_id;
    st->values[2] = NULL;
    st->values[3] = NULL;

    rc = ngx_http_cinematch_arg(r, "cursor", &cursor);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_OK) {
        us = ngx_strlchr(cursor.data, cursor.data + cursor.len, '_');

        if (us == NULL || us == cursor.data || us - cursor.data > 19
            || ngx_atoof(cursor.data, us - cursor.data) == NGX_ERROR)
        {
            return ngx_http_cinematch_send_invalid(r, "cursor",
                                                   "not a cursor of this "
                                                   "list");
        }

        id.data = us + 1;
        id.len = cursor.data + cursor.len - id.data;

        if (!ngx_http_cinematch_conv_uuid(&id)) {
            return ngx_http_cinematch_send_invalid(r, "cursor",
                                                   "not a cursor of this "
                                                   "list");
        }

        p = ngx_cpymem(st->cursor_us, cursor.data, us - cursor.data);
        *p = '\0';
        p = ngx_cpymem(st->cursor_id, id.data, id.len);
        *p = '\0';

        st->values[2] = st->cursor_us;
        st->values[3] = st->cursor_id;
    }

    return ngx_http_cinematch_conv_query(r,
        "SELECT " NGX_HTTP_CINEMATCH_CONV_JSON ","
        " (extract(epoch FROM c.updated_at) * 1000000)::bigint || '_' || c.id"
        " FROM conversations c WHERE c.user_id = $2::bigint"
        " AND ($3::bigint IS NULL OR (c.updated_at, c.id) <"
        "  ('epoch'::timestamptz + $3::bigint * interval '1 microsecond',"
        "   $4::uuid))"
        " ORDER BY c.updated_at DESC, c.id DESC LIMIT $1::integer",
        4, st->values, ngx_http_cinematch_conv_listed, st);
}


static ngx_int_t
ngx_http_cinematch_conv_listed(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    int                         i, n;
    json_t                     *list, *conv, *next;
    ngx_int_t                   rc;
    ngx_http_cinematch_conv_t  *st = data;

    if (ngx_http_cinematch_conv_failed(r, res, err, "conversation list",
                                       &rc))
    {
        return rc;
    }

    list = ngx_http_cinematch_json_track(r, json_array());
    if (list == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    n = PQntuples(res);
    next = json_null();

    if (n > st->nlimit) {
        n = (int) st->nlimit;
        next = json_string(PQgetvalue(res, n - 1, 1));
    }

    for (i = 0; i < n; i++) {
        conv = json_loads(PQgetvalue(res, i, 0), 0, NULL);

        if (conv == NULL || json_array_append_new(list, conv) != 0) {
            json_decref(next);
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    return ngx_http_cinematch_send_json(r, NGX_HTTP_OK,
               json_pack("{s:O, s:o}", "conversations", list,
                         "next_cursor", next));
}


ngx_int_t
ngx_http_cinematch_conv_get_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    ngx_http_cinematch_conv_t  *st;

    if (!ngx_http_cinematch_conv_uuid(&ctx->params[0])) {
        return ngx_http_cinematch_conv_not_found(r);
    }

    st = ngx_http_cinematch_conv_state(r, ctx, 1);
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    st->format = (ngx_uint_t) -1;

    return ngx_http_cinematch_conv_query(r,
        "SELECT " NGX_HTTP_CINEMATCH_CONV_JSON ", "
        NGX_HTTP_CINEMATCH_CONV_MESSAGES
        " FROM conversations c"
        " WHERE c.id = $1::uuid AND c.user_id = $2::bigint",
        2, st->values, ngx_http_cinematch_conv_got, st);
}


ngx_int_t
ngx_http_cinematch_conv_export_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    ngx_int_t                   rc;
    ngx_str_t                   format;
    ngx_http_cinematch_conv_t  *st;

    if (!ngx_http_cinematch_conv_uuid(&ctx->params[0])) {
        return ngx_http_cinematch_conv_not_found(r);
    }

    st = ngx_http_cinematch_conv_state(r, ctx, 1);
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rc = ngx_http_cinematch_arg(r, "format", &format);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_DECLINED
        || (format.len == 4 && ngx_strncmp(format.data, "json", 4) == 0))
    {
        st->format = 0;

    } else if (format.len == 2 && ngx_strncmp(format.data, "md", 2) == 0) {
        st->format = 1;

    } else if (format.len == 3 && ngx_strncmp(format.data, "pdf", 3) == 0) {
        st->format = 2;

    } else {
        return ngx_http_cinematch_send_invalid(r, "format",
                                               "must be json, md or pdf");
    }

    return ngx_http_cinematch_conv_query(r,
        "SELECT " NGX_HTTP_CINEMATCH_CONV_JSON ", "
        NGX_HTTP_CINEMATCH_CONV_MESSAGES
        " FROM conversations c"
        " WHERE c.id = $1::uuid AND c.user_id = $2::bigint",
        2, st->values, ngx_http_cinematch_conv_got, st);
}


/* GET (format -1) or an export (0 json, 1 md, 2 pdf) of one conversation */

static ngx_int_t
ngx_http_cinematch_conv_got(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    char                       *txt;
    u_char                     *p;
    size_t                      len;
    json_t                     *conv, *messages, *doc;
    ngx_int_t                   rc;
    ngx_http_cinematch_conv_t  *st = data;

    if (ngx_http_cinematch_conv_failed(r, res, err, "conversation read",
                                       &rc))
    {
        return rc;
    }

    if (PQntuples(res) != 1) {
        return ngx_http_cinematch_conv_not_found(r);
    }

    conv = json_loads(PQgetvalue(res, 0, 0), 0, NULL);
    messages = json_loads(PQgetvalue(res, 0, 1), 0, NULL);

    if (conv == NULL || messages == NULL) {
        json_decref(conv);
        json_decref(messages);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (st->format == (ngx_uint_t) -1) {
        return ngx_http_cinematch_send_json(r, NGX_HTTP_OK,
                   json_pack("{s:o, s:o}", "conversation", conv,
                             "messages", messages));
    }

    if (st->format != 0) {
        /* takes conv and messages */
        return ngx_http_cinematch_conv_export(r, st, conv, messages);
    }

    doc = json_pack("{s:o, s:o, s:s}", "conversation", conv,
                    "messages", messages,
                    "format", "cinematch.conversation.v1");
    if (doc == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    txt = json_dumps(doc, JSON_INDENT(2));
    json_decref(doc);

    if (txt == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    len = ngx_strlen(txt);
    p = ngx_pnalloc(r->pool, len + 1);

    if (p == NULL) {
        free(txt);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(p, txt, len);
    p[len] = '\n';
    free(txt);

    return ngx_http_cinematch_conv_download(r, st, "json",
                                            &ngx_http_cinematch_conv_json_type,
                                            p, len + 1);
}


/*
 * Markdown or PDF, rendered by libcinematch (chatdoc.h); takes conv and
 * messages.  Markdown is a single pass over the text, done here; a PDF
 * takes a few milliseconds per page and embeds the font, so it is
 * rendered on the thread pool.  GET of a conversation is capped at 5000
 * messages, which bounds both.
 */

static ngx_int_t
ngx_http_cinematch_conv_export(ngx_http_request_t *r,
    ngx_http_cinematch_conv_t *st, json_t *conv, json_t *messages)
{
    int      rc;
    char    *md;
    u_char  *p;
    size_t   len;

    if (st->format == 2) {
        return ngx_http_cinematch_conv_pdf(r, st, conv, messages);
    }

    rc = cm_chatdoc_markdown(conv, messages, &md, &len);
    json_decref(conv);
    json_decref(messages);

    if (rc != CM_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_pnalloc(r->pool, len);
    if (p != NULL) {
        ngx_memcpy(p, md, len);
    }
    free(md);

    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_conv_download(r, st, "md",
                                            &ngx_http_cinematch_conv_md_type,
                                            p, len);
}


static ngx_int_t
ngx_http_cinematch_conv_pdf(ngx_http_request_t *r,
    ngx_http_cinematch_conv_t *st, json_t *conv, json_t *messages)
{
    ngx_pool_cleanup_t                *cln;
    ngx_http_cinematch_export_job_t   *job;
#if (NGX_THREADS)
    ngx_thread_task_t                 *task;
    ngx_http_cinematch_export_conf_t  *ecf;
#endif

    /* the PDF bytes go straight into the answer: libharu's buffer is
     * freed with the request, whenever and however it ends */
    cln = ngx_pool_cleanup_add(r->pool, 0);

#if (NGX_THREADS)
    task = ngx_thread_task_alloc(r->pool,
                                 sizeof(ngx_http_cinematch_export_job_t));
    job = task != NULL ? task->ctx : NULL;
#else
    job = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_export_job_t));
#endif

    if (cln == NULL || job == NULL) {
        json_decref(conv);
        json_decref(messages);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memzero(job, sizeof(ngx_http_cinematch_export_job_t));

    job->request = r;
    job->st = st;
    job->conv = conv;
    job->messages = messages;

    cln->handler = ngx_http_cinematch_conv_pdf_free;
    cln->data = job;

#if (NGX_THREADS)

    ecf = ngx_http_get_module_main_conf(r, ngx_http_cinematch_export_module);

    task->handler = ngx_http_cinematch_conv_pdf_run;
    task->event.handler = ngx_http_cinematch_conv_pdf_done;
    task->event.data = job;

    if (ngx_thread_task_post(ecf->pool, task) != NGX_OK) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             "too many exports at once, "
                                             "retry");
    }

    ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                  "cinematch: PDF export of conversation %s: %uz messages "
                  "to render on the thread pool", st->conv_id,
                  json_array_size(messages));

    /* the thread writes into the request pool: blocked keeps it alive
     * even when the client leaves meanwhile */
    r->main->blocked++;
    ngx_http_cinematch_wait(r);

    return NGX_DONE;

#else

    /* nginx without threads: rendered here, as before */
    job->rc = cm_chatdoc_pdf(conv, messages, NULL, &job->pdf, &job->len,
                             job->err, sizeof(job->err));

    return ngx_http_cinematch_conv_pdf_send(r, job);

#endif
}


#if (NGX_THREADS)

/* In a pool thread: libcinematch only, the job's own memory. */

static void
ngx_http_cinematch_conv_pdf_run(void *data, ngx_log_t *log)
{
    ngx_http_cinematch_export_job_t *job = data;

    job->rc = cm_chatdoc_pdf(job->conv, job->messages, NULL, &job->pdf,
                             &job->len, job->err, sizeof(job->err));
}


/* Back on the event loop. */

static void
ngx_http_cinematch_conv_pdf_done(ngx_event_t *ev)
{
    ngx_http_cinematch_export_job_t *job = ev->data;

    ngx_http_request_t  *r;

    r = job->request;
    r->main->blocked--;

    if (r->connection->error) {
        /* the client left while the thread rendered; the pool survived
         * only because of blocked, and goes now (with the PDF) */
        ngx_http_cinematch_finish(r, NGX_HTTP_CLIENT_CLOSED_REQUEST);
        return;
    }

    ngx_http_cinematch_finish(r, ngx_http_cinematch_conv_pdf_send(r, job));
}

#endif


static ngx_int_t
ngx_http_cinematch_conv_pdf_send(ngx_http_request_t *r,
    ngx_http_cinematch_export_job_t *job)
{
    if (job->rc == CM_CHATDOC_ENOTSUP) {
        return ngx_http_cinematch_send_invalid(r, "format",
                   "pdf is not available on this server (built without "
                   "libharu)");
    }

    if (job->rc != CM_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cinematch: PDF export failed: %s", job->err);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_conv_download(r, job->st, "pdf",
                                            &ngx_http_cinematch_conv_pdf_type,
                                            job->pdf, job->len);
}


/* The request pool's cleanup: the documents and the rendered bytes. */

static void
ngx_http_cinematch_conv_pdf_free(void *data)
{
    ngx_http_cinematch_export_job_t *job = data;

    json_decref(job->conv);
    json_decref(job->messages);
    free(job->pdf);

    job->conv = NULL;
    job->messages = NULL;
    job->pdf = NULL;
}


static void *
ngx_http_cinematch_export_create_conf(ngx_conf_t *cf)
{
    ngx_http_cinematch_export_conf_t  *ecf;

    /* pool_name: { 0, NULL } = the default pool */
    ecf = ngx_pcalloc(cf->pool, sizeof(ngx_http_cinematch_export_conf_t));

    return ecf;
}


static char *
ngx_http_cinematch_export_init_conf(ngx_conf_t *cf, void *conf)
{
#if (NGX_THREADS)
    ngx_http_cinematch_export_conf_t *ecf = conf;

    /* "default" when not named: nginx creates it (32 threads) unless a
     * "thread_pool default ...;" line sizes it */
    ecf->pool = ngx_thread_pool_add(cf, ecf->pool_name.len
                                        ? &ecf->pool_name : NULL);
    if (ecf->pool == NULL) {
        return NGX_CONF_ERROR;
    }
#endif

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_cinematch_conv_download(ngx_http_request_t *r,
    ngx_http_cinematch_conv_t *st, const char *ext, ngx_str_t *type,
    u_char *data, size_t len)
{
    u_char     *p;
    ngx_str_t   key, value;

    value.data = ngx_pnalloc(r->pool, 96);
    if (value.data == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_sprintf(value.data,
                    "attachment; filename=\"conversation-%s.%s\"",
                    st->conv_id, ext);
    value.len = p - value.data;
    ngx_str_set(&key, "Content-Disposition");

    if (ngx_http_cinematch_add_header(r, &key, &value) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_send_buf(r, NGX_HTTP_OK, type, data, len);
}


ngx_int_t
ngx_http_cinematch_conv_delete_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    ngx_http_cinematch_conv_t  *st;

    if (!ngx_http_cinematch_conv_uuid(&ctx->params[0])) {
        return ngx_http_cinematch_conv_not_found(r);
    }

    st = ngx_http_cinematch_conv_state(r, ctx, 1);
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_conv_query(r,
        "DELETE FROM conversations"
        " WHERE id = $1::uuid AND user_id = $2::bigint RETURNING id",
        2, st->values, ngx_http_cinematch_conv_deleted, st);
}


static ngx_int_t
ngx_http_cinematch_conv_deleted(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    ngx_int_t                   rc;
    ngx_http_cinematch_conv_t  *st = data;

    if (ngx_http_cinematch_conv_failed(r, res, err, "conversation delete",
                                       &rc))
    {
        return rc;
    }

    if (PQntuples(res) != 1) {
        return ngx_http_cinematch_conv_not_found(r);
    }

    /* the context goes with it (fire and forget: it expires anyway) */
    (void) ngx_http_cinematch_redis_commandf(NULL, NULL, NULL,
                                             "DEL cinematch:conv:%s:turns",
                                             st->conv_id);

    return ngx_http_cinematch_send_buf(r, NGX_HTTP_NO_CONTENT,
                                       &ngx_http_cinematch_conv_json_type,
                                       NULL, 0);
}


/*
 * POST /api/v1/conversations/{id}/cancel
 *
 * The owner's check (404 otherwise, as everywhere), then a stop request
 * into every slot labelled with the conversation id, on any worker's
 * partition (ngx_http_cinematch_infer_stop).  The generation ends on the
 * worker that streams it: the daemon finishes it with finish_reason
 * "cancelled", and that worker stores the text so far (status partial,
 * with its counts) and sends `done`, as for any other end.  202: the stop
 * is asked for, it has not necessarily happened yet; 409 when nothing is
 * being generated in the conversation.
 */

ngx_int_t
ngx_http_cinematch_conv_cancel_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    ngx_http_cinematch_conv_t  *st;

    if (!ngx_http_cinematch_conv_uuid(&ctx->params[0])) {
        return ngx_http_cinematch_conv_not_found(r);
    }

    st = ngx_http_cinematch_conv_state(r, ctx, 1);
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_conv_query(r,
        "SELECT 1 FROM conversations"
        " WHERE id = $1::uuid AND user_id = $2::bigint",
        2, st->values, ngx_http_cinematch_conv_cancel_owned, st);
}


static ngx_int_t
ngx_http_cinematch_conv_cancel_owned(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    ngx_int_t                   rc;
    ngx_str_t                   tag;
    ngx_uint_t                  n;
    ngx_http_cinematch_conv_t  *st = data;

    if (ngx_http_cinematch_conv_failed(r, res, err, "conversation read",
                                       &rc))
    {
        return rc;
    }

    if (PQntuples(res) != 1) {
        return ngx_http_cinematch_conv_not_found(r);
    }

    tag.data = (u_char *) st->conv_id;
    tag.len = ngx_strlen(st->conv_id);

    n = ngx_http_cinematch_infer_stop(&tag);

    if (n == 0) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_CONFLICT,
                                             "conflict",
                                             "no reply is being generated "
                                             "in this conversation");
    }

    return ngx_http_cinematch_send_json(r, NGX_HTTP_ACCEPTED,
               json_pack("{s:s, s:I}", "conversation_id", st->conv_id,
                         "cancelled", (json_int_t) n));
}


/*
 * POST /api/v1/conversations/{id}/messages
 *
 * validate → store the user message (404 when the conversation is not the
 * caller's) → context from Redis, or PostgreSQL on a miss → generate →
 * store the reply → `done` (or the JSON answer).
 */

ngx_int_t
ngx_http_cinematch_msg_create_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    u_char                     *p;
    json_t                     *b, *v;
    size_t                      i;
    ngx_str_t                   payload;
    const char                 *key, *field, *message;
    ngx_http_cinematch_conv_t  *st;

    static const char  *allowed[] = {
        "content", "stream", "max_tokens", "temperature", "top_k", "top_p",
        "stop", "seed", "repetition_penalty", NULL
    };

    if (!ngx_http_cinematch_conv_uuid(&ctx->params[0])) {
        return ngx_http_cinematch_conv_not_found(r);
    }

    st = ngx_http_cinematch_conv_state(r, ctx, 1);
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    b = ctx->json;

    json_object_foreach(b, key, v) {
        for (i = 0; allowed[i] != NULL; i++) {
            if (ngx_strcmp(key, allowed[i]) == 0) {
                break;
            }
        }

        if (allowed[i] == NULL) {
            return ngx_http_cinematch_send_invalid(r, key, "unknown field");
        }
    }

    v = json_object_get(b, "content");

    if (!json_is_string(v)) {
        return ngx_http_cinematch_send_invalid(r, "content",
                                               "required, a string");
    }

    st->content.data = (u_char *) json_string_value(v);
    st->content.len = json_string_length(v);

    for (i = 0; i < st->content.len; i++) {
        if (st->content.data[i] != ' ' && st->content.data[i] != '\t'
            && st->content.data[i] != '\n' && st->content.data[i] != '\r')
        {
            break;
        }
    }

    if (i == st->content.len) {
        return ngx_http_cinematch_send_invalid(r, "content",
                                               "must not be empty");
    }

    /* jansson has checked UTF-8; NUL would end the text early */
    if (st->content.len > NGX_HTTP_CINEMATCH_GEN_CONTENT
        || ngx_strlen(st->content.data) != st->content.len
        || !cm_utf8_valid((char *) st->content.data, st->content.len, NULL))
    {
        return ngx_http_cinematch_send_invalid(r, "content",
                                               "at most 8192 bytes of UTF-8 "
                                               "text without NUL");
    }

    v = json_object_get(b, "stream");

    if (v != NULL && !json_is_null(v) && !json_is_boolean(v)) {
        return ngx_http_cinematch_send_invalid(r, "stream",
                                               "must be a boolean");
    }

    st->gen.stream = (v == NULL || json_is_null(v) || json_is_true(v));

    if (ngx_http_cinematch_gen_sampling(b, st->params, &field, &message)
        != NGX_OK)
    {
        return ngx_http_cinematch_send_invalid(r, field, message);
    }

    /* check stop (and that the message alone fits) before storing */
    st->stop = json_object_get(b, "stop");

    if (ngx_http_cinematch_gen_payload(r->pool, &st->content, 1, st->stop,
                                       &payload, &field) != NGX_OK)
    {
        return ngx_http_cinematch_send_invalid(r, field,
                   ngx_strcmp(field, "stop") == 0
                   ? "a string or up to 4 strings of 1..64 bytes"
                   : "too long");
    }

    p = ngx_cpymem(st->request_id, ctx->request_id.data,
                   ngx_min(ctx->request_id.len,
                           NGX_HTTP_CINEMATCH_REQUEST_ID_LEN));
    *p = '\0';

    st->values[2] = (char *) st->content.data;
    st->values[3] = st->request_id;

    return ngx_http_cinematch_conv_query(r,
        "WITH c AS (UPDATE conversations SET updated_at = now()"
        "  WHERE id = $1::uuid AND user_id = $2::bigint RETURNING id)"
        " INSERT INTO messages (conversation_id, role, content, request_id)"
        " SELECT id, 'user', $3, $4 FROM c RETURNING id",
        4, st->values, ngx_http_cinematch_msg_stored, st);
}


static ngx_int_t
ngx_http_cinematch_msg_stored(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    u_char                     *p;
    ngx_int_t                   rc;
    ngx_http_cinematch_conv_t  *st = data;

    if (ngx_http_cinematch_conv_failed(r, res, err, "message insert",
                                       &rc))
    {
        return rc;
    }

    if (PQntuples(res) != 1) {
        return ngx_http_cinematch_conv_not_found(r);
    }

    p = ngx_cpymem(st->user_message_id, PQgetvalue(res, 0, 0),
                   ngx_min((size_t) PQgetlength(res, 0, 0), NGX_INT64_LEN));
    *p = '\0';

    (void) ngx_http_cinematch_redis_commandf(NULL, NULL, NULL,
               "XADD " NGX_HTTP_CINEMATCH_CONV_EVENTS " MAXLEN ~ "
               NGX_HTTP_CINEMATCH_CONV_MAXLEN " * type message.created"
               " conversation_id %s message_id %s user_id %s role user"
               " request_id %s",
               st->conv_id, st->user_message_id, st->user_id,
               st->request_id);

    rc = ngx_http_cinematch_redis_commandf(r, ngx_http_cinematch_msg_cached,
               st, "LRANGE cinematch:conv:%s:turns -%d -1", st->conv_id,
               NGX_HTTP_CINEMATCH_CONV_TURNS - 1);

    if (rc == NGX_OK) {
        return NGX_DONE;
    }

    return ngx_http_cinematch_msg_cached(r, st, NULL);
}


static ngx_int_t
ngx_http_cinematch_msg_cached(ngx_http_request_t *r, void *data,
    redisReply *reply)
{
    size_t                      i, n;
    ngx_http_cinematch_conv_t  *st = data;

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements == 0)
    {
        /* a miss (or Redis is away): the last turns from PostgreSQL,
         * which include the user message just stored */
        return ngx_http_cinematch_conv_query(r,
            "SELECT content FROM (SELECT id, content FROM messages"
            "  WHERE conversation_id = (SELECT id FROM conversations"
            "   WHERE id = $1::uuid AND user_id = $2::bigint)"
            "  AND role <> 'system' AND content <> ''"
            "  ORDER BY id DESC LIMIT 20) t ORDER BY id",
            2, st->values, ngx_http_cinematch_msg_history, st);
    }

    n = reply->elements;

    st->turns = ngx_palloc(r->pool, (n + 1) * sizeof(ngx_str_t));
    if (st->turns == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (i = 0; i < n; i++) {
        if (reply->element[i]->type != REDIS_REPLY_STRING) {
            return ngx_http_cinematch_msg_cached(r, st, NULL);
        }

        st->turns[i].len = reply->element[i]->len;
        st->turns[i].data = ngx_pnalloc(r->pool, st->turns[i].len + 1);
        if (st->turns[i].data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        ngx_memcpy(st->turns[i].data, reply->element[i]->str,
                   st->turns[i].len);
    }

    st->turns[n] = st->content;
    st->nturns = n + 1;

    ngx_http_cinematch_conv_push_turn(st->conv_id, st->content.data,
                                      st->content.len);

    return ngx_http_cinematch_msg_generate(r, st);
}


static ngx_int_t
ngx_http_cinematch_msg_history(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    int                         i, n;
    ngx_int_t                   rc;
    ngx_http_cinematch_conv_t  *st = data;

    if (ngx_http_cinematch_conv_failed(r, res, err, "message history",
                                       &rc))
    {
        return rc;
    }

    n = PQntuples(res);

    st->turns = ngx_palloc(r->pool, (n + 1) * sizeof(ngx_str_t));
    if (st->turns == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (i = 0; i < n; i++) {
        st->turns[i].len = PQgetlength(res, i, 0);
        st->turns[i].data = ngx_pnalloc(r->pool, st->turns[i].len + 1);
        if (st->turns[i].data == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
        ngx_memcpy(st->turns[i].data, PQgetvalue(res, i, 0),
                   st->turns[i].len);
    }

    if (n == 0) {
        /* the conversation went away since the insert */
        return ngx_http_cinematch_conv_not_found(r);
    }

    st->nturns = n;

    ngx_http_cinematch_conv_cache_turns(r->pool, st->conv_id, st->turns, n);

    return ngx_http_cinematch_msg_generate(r, st);
}


/* Append a turn to the cached context, keep the last N, refresh the TTL. */

void
ngx_http_cinematch_conv_push_turn(const char *conv_id, u_char *text,
    size_t len)
{
    if (len == 0) {
        return;
    }

    (void) ngx_http_cinematch_redis_commandf(NULL, NULL, NULL,
               "RPUSH cinematch:conv:%s:turns %b", conv_id, text, len);
    (void) ngx_http_cinematch_redis_commandf(NULL, NULL, NULL,
               "LTRIM cinematch:conv:%s:turns -%d -1", conv_id,
               NGX_HTTP_CINEMATCH_CONV_TURNS);
    (void) ngx_http_cinematch_redis_commandf(NULL, NULL, NULL,
               "EXPIRE cinematch:conv:%s:turns " NGX_HTTP_CINEMATCH_CONV_TTL,
               conv_id);
}


ngx_int_t
ngx_http_cinematch_conv_push_reply(ngx_http_request_t *r, const char *conv_id,
    u_char *text, size_t len, ngx_http_cinematch_redis_handler_pt handler,
    void *data)
{
    ngx_int_t  rc;

    if (len == 0) {
        return NGX_DECLINED;
    }

    /* one connection, answered in order: the EXPIRE's reply comes after
     * the RPUSH and the LTRIM were applied */
    rc = ngx_http_cinematch_redis_commandf(NULL, NULL, NULL,
               "RPUSH cinematch:conv:%s:turns %b", conv_id, text, len);
    if (rc != NGX_OK) {
        return rc;
    }

    (void) ngx_http_cinematch_redis_commandf(NULL, NULL, NULL,
               "LTRIM cinematch:conv:%s:turns -%d -1", conv_id,
               NGX_HTTP_CINEMATCH_CONV_TURNS);

    rc = ngx_http_cinematch_redis_commandf(r, handler, data,
               "EXPIRE cinematch:conv:%s:turns " NGX_HTTP_CINEMATCH_CONV_TTL,
               conv_id);
    if (rc != NGX_OK) {
        ngx_http_cinematch_conv_drop_turns(conv_id);
    }

    return rc;
}


/* A context that may have missed a turn goes: it is rebuilt from
 * PostgreSQL by the next message. */

void
ngx_http_cinematch_conv_drop_turns(const char *conv_id)
{
    (void) ngx_http_cinematch_redis_commandf(NULL, NULL, NULL,
                                             "DEL cinematch:conv:%s:turns",
                                             conv_id);
}


/* The cached context rebuilt from the turns read from PostgreSQL: DEL,
 * then RPUSH the turns, then EXPIRE (fire and forget). */

void
ngx_http_cinematch_conv_cache_turns(ngx_pool_t *pool, const char *conv_id,
    ngx_str_t *turns, size_t n)
{
    size_t        i;
    const char  **argv;
    size_t       *argvlen;

    argv = ngx_palloc(pool, (n + 2) * sizeof(char *));
    argvlen = ngx_palloc(pool, (n + 2) * sizeof(size_t));

    if (n == 0 || argv == NULL || argvlen == NULL) {
        return;
    }

    argv[0] = "RPUSH";
    argvlen[0] = 5;
    argv[1] = ngx_pnalloc(pool, 64);

    if (argv[1] == NULL) {
        return;
    }

    argvlen[1] = ngx_sprintf((u_char *) argv[1], "cinematch:conv:%s:turns",
                             conv_id) - (u_char *) argv[1];

    for (i = 0; i < n; i++) {
        argv[i + 2] = (char *) turns[i].data;
        argvlen[i + 2] = turns[i].len;
    }

    (void) ngx_http_cinematch_redis_commandf(NULL, NULL, NULL,
               "DEL cinematch:conv:%s:turns", conv_id);
    (void) ngx_http_cinematch_redis_command(NULL, NULL, NULL, (int) n + 2,
                                            argv, argvlen);
    (void) ngx_http_cinematch_redis_commandf(NULL, NULL, NULL,
               "EXPIRE cinematch:conv:%s:turns "
               NGX_HTTP_CINEMATCH_CONV_TTL, conv_id);
}


static ngx_int_t
ngx_http_cinematch_msg_generate(ngx_http_request_t *r,
    ngx_http_cinematch_conv_t *st)
{
    u_char      *p;
    ngx_int_t    rc;
    ngx_str_t    payload;
    const char  *field;

    if (ngx_http_cinematch_gen_payload(r->pool, st->turns, st->nturns,
                                       st->stop, &payload, &field)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;   /* checked before */
    }

    st->gen.request = r;
    st->gen.text = ngx_http_cinematch_msg_text;
    st->gen.end = ngx_http_cinematch_msg_end;
    st->gen.data = st;
    st->gen.keep = 1;
    st->gen.save_on_gone = 1;
    st->gen.tag.data = (u_char *) st->conv_id;
    st->gen.tag.len = ngx_strlen(st->conv_id);

    rc = ngx_http_cinematch_gen_start(r, &st->gen, st->params, &payload);

    if (rc == NGX_BUSY || rc == NGX_DECLINED) {
        return ngx_http_cinematch_send_error_json(r,
                   NGX_HTTP_SERVICE_UNAVAILABLE, "unavailable",
                   ngx_http_cinematch_gen_unavailable(rc),
                   json_pack("{s:I}", "user_message_id",
                             (json_int_t) ngx_atoof(
                                 (u_char *) st->user_message_id,
                                 ngx_strlen(st->user_message_id))));
    }

    if (rc != NGX_OK) {
        return rc;
    }

    /* a client that leaves is noticed by this handler, not nginx's, so
     * that what was generated can be stored first */
    r->read_event_handler = ngx_http_cinematch_msg_reading;

    st->clean = ngx_pnalloc(r->pool, 3 * (size_t) st->gen.rec_cap);
    if (st->clean == NULL) {
        return NGX_ERROR;
    }

    if (st->gen.stream) {
        /* a comment: sends the headers now, ignored by clients */
        p = ngx_http_cinematch_sse_reserve(&st->gen.sse, 64);
        if (p == NULL) {
            return NGX_ERROR;
        }

        p = ngx_sprintf(p, ": user message %s\n\n", st->user_message_id);
        ngx_http_cinematch_sse_commit(&st->gen.sse, p);

        if (ngx_http_cinematch_sse_flush(&st->gen.sse, 0) == NGX_ERROR) {
            return ngx_http_cinematch_gen_gone(&st->gen);
        }
    }

    return NGX_DONE;
}


/*
 * Like ngx_http_test_reading(), but a client that closed the connection
 * stops the generation through ngx_http_cinematch_gen_gone(), which stores
 * the partial reply before the request ends.
 */

static void
ngx_http_cinematch_msg_reading(ngx_http_request_t *r)
{
    int                         n;
    char                        buf[1];
    ngx_err_t                   err;
    ngx_connection_t           *c;
    ngx_http_cinematch_ctx_t   *ctx;
    ngx_http_cinematch_gen_t   *g;

    c = r->connection;

#if (NGX_HTTP_V2)
    if (r->stream) {
        /*
         * HTTP/2: the stream was reset (RST_STREAM) or the connection
         * closed; nginx has set c->error on the stream's connection and
         * calls this handler.  ngx_http_test_reading() would terminate
         * the request here and the reply would be lost: it is stored
         * as for HTTP/1.1 instead.
         */
        if (!c->error) {
            return;
        }

        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "client cancelled the HTTP/2 stream during generation");
        goto gone;
    }
#endif

    n = recv(c->fd, buf, 1, MSG_PEEK);
    err = ngx_socket_errno;

    if (n > 0 || (n == -1 && err == NGX_EAGAIN)) {
        if ((ngx_event_flags & NGX_USE_LEVEL_EVENT) && c->read->active) {
            if (ngx_del_event(c->read, NGX_READ_EVENT, 0) != NGX_OK) {
                ngx_http_cinematch_finish(r, NGX_ERROR);
            }
        }

        return;
    }

    c->read->eof = 1;

    if (c->error) {
        return;   /* already noticed; the store under way finalizes */
    }

    c->error = 1;

    ngx_log_error(NGX_LOG_INFO, c->log, n == 0 ? 0 : err,
                  "client prematurely closed connection during generation");

#if (NGX_HTTP_V2)
gone:
#endif

    ctx = ngx_http_get_module_ctx(r, ngx_http_cinematch_module);
    g = ctx != NULL ? ctx->data : NULL;

    if (g == NULL || g->finished) {
        return;   /* the reply is being stored; that finalizes */
    }

    ngx_http_cinematch_finish(r, ngx_http_cinematch_gen_gone(g));
}


static ngx_int_t
ngx_http_cinematch_msg_text(ngx_http_cinematch_gen_t *g, u_char *text,
    size_t len)
{
    u_char                     *p;
    size_t                      n;
    ngx_http_cinematch_conv_t  *st = g->data;

    static u_char  head[] = "event: token\ndata: {\"text\":\"";
    static u_char  tail[] = "\"}\n\n";

    if (!g->stream) {
        return NGX_OK;   /* kept in g->reply */
    }

    n = cm_utf8_sanitize((char *) st->clean, (char *) text, len);

    p = ngx_http_cinematch_sse_reserve(&g->sse,
                                       sizeof(head) + n * 6 + sizeof(tail));
    if (p == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(p, head, sizeof(head) - 1);
    p = ngx_http_cinematch_json_text(p, st->clean, n);
    p = ngx_cpymem(p, tail, sizeof(tail) - 1);
    ngx_http_cinematch_sse_commit(&g->sse, p);

    return NGX_OK;
}


/*
 * The end of a generation, however it ended: store the reply, then answer
 * (ngx_http_cinematch_msg_saved).
 */

static ngx_int_t
ngx_http_cinematch_msg_end(ngx_http_cinematch_gen_t *g)
{
    ngx_http_request_t         *r = g->request;
    ngx_http_cinematch_conv_t  *st = g->data;

    st->reply = ngx_pnalloc(r->pool, 3 * g->len + 1);
    if (st->reply == NULL) {
        return NGX_ERROR;
    }

    st->reply_len = cm_utf8_sanitize((char *) st->reply, (char *) g->reply,
                                     g->len);
    st->reply[st->reply_len] = '\0';

    ngx_http_cinematch_gen_reply_row(g, &st->row);

    st->values[2] = (char *) st->reply;
    st->values[3] = st->row.status;
    st->values[4] = st->row.finish;
    st->values[5] = st->row.error[0] ? st->row.error : NULL;
    st->values[6] = st->row.pt[0] ? st->row.pt : NULL;
    st->values[7] = st->row.ct[0] ? st->row.ct : NULL;
    st->values[8] = st->row.ttft[0] ? st->row.ttft : NULL;
    st->values[9] = st->row.latency;
    st->values[10] = st->row.version_id ? st->row.version : NULL;
    st->values[11] = st->request_id;

    /* the conversation may have been deleted meanwhile: no row then */
    switch (ngx_http_cinematch_pg_query(r,
        "INSERT INTO messages (conversation_id, role, content, status,"
        " finish_reason, error, prompt_tokens, completion_tokens,"
        " first_token_ms, latency_ms, model_version_id, request_id)"
        " SELECT c.id, 'assistant', $3, $4, $5, $6, $7::integer,"
        "  $8::integer, $9::real, $10::real,"
        "  (SELECT v.id FROM model_versions v WHERE v.model_name = 'dialog'"
        "    AND v.version = $11::integer),"
        "  $12"
        " FROM conversations c"
        " WHERE c.id = $1::uuid AND c.user_id = $2::bigint"
        " RETURNING id",
        12, st->values, ngx_http_cinematch_msg_saved, st))
    {
    case NGX_OK:
        return NGX_DONE;

    case NGX_ERROR:
        return NGX_ERROR;

    default:
        return ngx_http_cinematch_msg_saved(r, st, NULL,
                                            "database unavailable");
    }
}


static ngx_int_t
ngx_http_cinematch_msg_saved(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    u_char                     *p;
    const char                 *id;
    ngx_http_cinematch_gen_t   *g;
    ngx_http_cinematch_conv_t  *st = data;

    g = &st->gen;
    id = NULL;

    if (err == NULL && PQresultStatus(res) == PGRES_TUPLES_OK
        && PQntuples(res) == 1)
    {
        id = PQgetvalue(res, 0, 0);

    } else {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cinematch: reply of conversation %s not stored: %s",
                      st->conv_id,
                      err != NULL ? err
                      : PQresultStatus(res) == PGRES_TUPLES_OK
                      ? "conversation deleted" : PQresultErrorMessage(res));
    }

    (void) ngx_http_cinematch_redis_commandf(NULL, NULL, NULL,
               "XADD " NGX_HTTP_CINEMATCH_CONV_EVENTS " MAXLEN ~ "
               NGX_HTTP_CINEMATCH_CONV_MAXLEN " * type generation.finished"
               " conversation_id %s message_id %s user_id %s status %s"
               " finish_reason %s prompt_tokens %s completion_tokens %s"
               " first_token_ms %s latency_ms %s model_version %s"
               " request_id %s context_turns %s dropped_turns %s"
               " truncated %s",
               st->conv_id, id != NULL ? id : "", st->user_id, st->row.status,
               st->row.finish, st->row.pt, st->row.ct, st->row.ttft, st->row.latency, st->row.version,
               st->request_id, st->row.turns, st->row.dropped,
               st->row.truncated);

    st->message_id[0] = '\0';

    if (id != NULL) {
        p = ngx_cpymem(st->message_id, id,
                       ngx_min(ngx_strlen(id), NGX_INT64_LEN));
        *p = '\0';
    }

    /* the reply goes into the context before the client hears of it: a
     * next message sent at once, maybe to another worker, must see it */
    if (id != NULL && g->outcome != NGX_HTTP_CINEMATCH_GEN_LOST
        && g->outcome != NGX_HTTP_CINEMATCH_GEN_FAILED
        && ngx_http_cinematch_conv_push_reply(r, st->conv_id, st->reply,
                                              st->reply_len,
                                              ngx_http_cinematch_msg_pushed,
                                              st)
           == NGX_OK)
    {
        return NGX_DONE;
    }

    return ngx_http_cinematch_msg_answer(r, st);
}


static ngx_int_t
ngx_http_cinematch_msg_pushed(ngx_http_request_t *r, void *data,
    redisReply *reply)
{
    ngx_http_cinematch_conv_t  *st = data;

    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        ngx_http_cinematch_conv_drop_turns(st->conv_id);
    }

    return ngx_http_cinematch_msg_answer(r, st);
}


/* The final event, or the JSON answer, of a stored (or lost) reply. */

static ngx_int_t
ngx_http_cinematch_msg_answer(ngx_http_request_t *r,
    ngx_http_cinematch_conv_t *st)
{
    u_char                     *p;
    json_t                     *doc;
    int64_t                     pt, ct;
    json_int_t                  umid;
    ngx_uint_t                  status;
    const char                 *id, *code, *message;
    ngx_http_cinematch_gen_t   *g;

    g = &st->gen;
    id = st->message_id[0] ? st->message_id : NULL;

    if (r->connection->error) {
        return NGX_HTTP_CLIENT_CLOSED_REQUEST;   /* partial: stored */
    }

    pt = g->prompt_tokens;
    ct = g->completion_tokens;
    umid = (json_int_t) ngx_atoof((u_char *) st->user_message_id,
                                  ngx_strlen(st->user_message_id));

    if ((g->outcome == NGX_HTTP_CINEMATCH_GEN_COMPLETE
         || g->outcome == NGX_HTTP_CINEMATCH_GEN_CANCELLED)
        && id != NULL)
    {
        code = NULL;
        message = NULL;
        status = NGX_HTTP_OK;

    } else if (g->outcome == NGX_HTTP_CINEMATCH_GEN_FAILED
               && g->status == CM_EINVAL)
    {
        code = "validation_failed";
        message = "rejected by the model server";
        status = 422;

    } else {
        code = "unavailable";
        message = id == NULL ? "the reply could not be stored" : st->row.error;
        status = NGX_HTTP_SERVICE_UNAVAILABLE;
    }

    if (!g->stream) {
        if (code != NULL) {
            return ngx_http_cinematch_send_error_json(r, status, code,
                       message,
                       json_pack("{s:I, s:o}", "user_message_id", umid,
                                 "message_id", id != NULL
                                 ? json_integer(ngx_atoof((u_char *) id,
                                                          ngx_strlen(id)))
                                 : json_null()));
        }

        doc = json_pack("{s:I, s:s, s:s, s:s%, s:s, s:s, s:{s:I, s:I},"
                        " s:s?, s:s, s:I}",
                        "id", (json_int_t) ngx_atoof((u_char *) id,
                                                     ngx_strlen(id)),
                        "conversation_id", st->conv_id,
                        "role", "assistant",
                        "content", (char *) st->reply, st->reply_len,
                        "status", st->row.status,
                        "finish_reason", g->finish,
                        "usage", "prompt_tokens", (json_int_t) pt,
                        "completion_tokens", (json_int_t) ct,
                        "model_version", st->row.version[0] ? st->row.version : NULL,
                        "request_id", st->request_id,
                        "user_message_id", umid);

        if (doc != NULL && g->context) {
            json_object_set_new(doc, "context",
                json_pack("{s:I, s:I, s:b}",
                          "turns", (json_int_t) g->context_turns,
                          "dropped_turns", (json_int_t) g->dropped_turns,
                          "truncated", (int) g->truncated));
        }

        return ngx_http_cinematch_send_json(r, status, doc);
    }

    p = ngx_http_cinematch_sse_reserve(&g->sse,
                                       512 + NGX_HTTP_CINEMATCH_GEN_CONTEXT_LEN);
    if (p == NULL) {
        return NGX_ERROR;
    }

    if (code == NULL) {
        p = ngx_sprintf(p, "event: done\ndata: {\"message_id\":%s,"
                        "\"user_message_id\":%s,\"finish_reason\":\"%s\","
                        "\"usage\":{\"prompt_tokens\":%L,"
                        "\"completion_tokens\":%L},\"context\":",
                        id, st->user_message_id, g->finish, pt, ct);
        p = ngx_http_cinematch_gen_context(g, p);
        p = ngx_cpymem(p, "}\n\n", 3);

    } else {
        p = ngx_sprintf(p, "event: error\ndata: {\"error\":{\"code\":\"%s\","
                        "\"message\":\"%s\"},\"user_message_id\":%s,"
                        "\"message_id\":%s}\n\n",
                        code, message, st->user_message_id,
                        id != NULL ? id : "null");
    }

    ngx_http_cinematch_sse_commit(&g->sse, p);

    return ngx_http_cinematch_sse_flush(&g->sse, 1);
}


/* POST /api/v1/messages/{id}/feedback {rating: 1|-1, comment?} */

ngx_int_t
ngx_http_cinematch_feedback_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    u_char                     *p;
    size_t                      chars;
    json_t                     *v;
    ngx_int_t                   id;
    const char                 *key;
    ngx_http_cinematch_conv_t  *st;

    st = ngx_http_cinematch_conv_state(r, ctx, 0);
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    id = ngx_atoi(ctx->params[0].data, ctx->params[0].len);

    if (id <= 0 || ctx->params[0].len > 18 || ctx->params[0].data[0] == '0')
    {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                                             "not_found", "no such message");
    }

    json_object_foreach(ctx->json, key, v) {
        if (ngx_strcmp(key, "rating") != 0 && ngx_strcmp(key, "comment") != 0)
        {
            return ngx_http_cinematch_send_invalid(r, key, "unknown field");
        }
    }

    v = json_object_get(ctx->json, "rating");

    if (!json_is_integer(v)
        || (json_integer_value(v) != 1 && json_integer_value(v) != -1))
    {
        return ngx_http_cinematch_send_invalid(r, "rating", "must be 1 or -1");
    }

    p = ngx_sprintf((u_char *) st->rating, "%d", (int) json_integer_value(v));
    *p = '\0';

    v = json_object_get(ctx->json, "comment");
    st->values[3] = NULL;

    if (v != NULL && !json_is_null(v)) {
        if (!json_is_string(v)
            || !cm_utf8_valid(json_string_value(v), json_string_length(v),
                              &chars)
            || chars > NGX_HTTP_CINEMATCH_CONV_COMMENT
            || ngx_strlen(json_string_value(v)) != json_string_length(v))
        {
            return ngx_http_cinematch_send_invalid(r, "comment",
                                                   "a string of up to 2000 "
                                                   "characters");
        }

        st->values[3] = json_string_value(v);
    }

    p = ngx_sprintf((u_char *) st->message_id, "%i", id);
    *p = '\0';

    st->values[0] = st->message_id;
    st->values[1] = st->user_id;
    st->values[2] = st->rating;

    /* only the caller's own assistant messages can be rated */
    return ngx_http_cinematch_conv_query(r,
        "INSERT INTO message_feedback (message_id, user_id, rating, comment)"
        " SELECT m.id, c.user_id, $3::smallint, $4 FROM messages m"
        " JOIN conversations c ON c.id = m.conversation_id"
        " WHERE m.id = $1::bigint AND c.user_id = $2::bigint"
        " AND m.role = 'assistant'"
        " ON CONFLICT (message_id, user_id) DO UPDATE"
        " SET rating = EXCLUDED.rating, comment = EXCLUDED.comment"
        " RETURNING message_id, rating, comment, "
        NGX_HTTP_CINEMATCH_CONV_TS("updated_at"),
        4, st->values, ngx_http_cinematch_feedback_stored, st);
}


static ngx_int_t
ngx_http_cinematch_feedback_stored(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    ngx_int_t                   rc;
    ngx_http_cinematch_conv_t  *st = data;

    if (ngx_http_cinematch_conv_failed(r, res, err, "feedback upsert",
                                       &rc))
    {
        return rc;
    }

    if (PQntuples(res) != 1) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                                             "not_found", "no such message");
    }

    (void) ngx_http_cinematch_redis_commandf(NULL, NULL, NULL,
               "XADD " NGX_HTTP_CINEMATCH_CONV_EVENTS " MAXLEN ~ "
               NGX_HTTP_CINEMATCH_CONV_MAXLEN " * type feedback"
               " message_id %s user_id %s rating %s",
               st->message_id, st->user_id, st->rating);

    return ngx_http_cinematch_send_json(r, NGX_HTTP_OK,
               json_pack("{s:{s:I, s:i, s:s?, s:s}}", "feedback",
                         "message_id", (json_int_t) ngx_atoof(
                                 (u_char *) PQgetvalue(res, 0, 0),
                                 PQgetlength(res, 0, 0)),
                         "rating", atoi(PQgetvalue(res, 0, 1)),
                         "comment", PQgetisnull(res, 0, 2)
                                    ? NULL : PQgetvalue(res, 0, 2),
                         "updated_at", PQgetvalue(res, 0, 3)));
}

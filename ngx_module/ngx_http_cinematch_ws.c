
/*
 * ngx_http_cinematch_ws.c: GET /api/v1/ws/chat, the conversation chat over
 * a WebSocket (RFC 6455).
 *
 * Authentication is the route's, as for every endpoint: the handshake
 * carries Authorization: Bearer <access token> or X-API-Key (scope chat).
 * Browsers cannot set headers on a WebSocket, so the access token may
 * instead come as a subprotocol:
 *
 *     new WebSocket(url, ["cinematch.v1", "cinematch.bearer." + token])
 *
 * and the 101 then selects "cinematch.v1".  (Not a query parameter: URLs
 * end up in access logs, the subprotocol header does not.)
 *
 * The handshake (HTTP/1.1 GET, Upgrade: websocket, Connection: upgrade,
 * Sec-WebSocket-Version: 13 else 426, a valid Sec-WebSocket-Key else 400)
 * is answered 101, then this file owns the connection: the request stays
 * alive (r->main->count) and its read and write handlers become the frame
 * reader and the output queue.  Frames are parsed by cm_ws_parse()
 * (shared/src/wsframe.c); protocol errors close with its code.
 *
 * Each text message {conversation_id, content, max_tokens?, temperature?,
 * top_k?, top_p?, stop?, seed?, repetition_penalty?} is validated like POST
 * /api/v1/conversations/{id}/messages, the user message is stored, the
 * last turns are read from the conversation's Redis list as SSE does
 * (rebuilt from PostgreSQL on a miss), the reply is generated
 * (ngx_http_cinematch_chat.h) and streamed as {"type":"token","text"}, then
 * stored and announced with {"type":"done",...} (or {"type":"error",...}),
 * the payloads of the SSE events.  One generation at a time per socket: a
 * message that arrives meanwhile gets an error event (code "busy").  A
 * client that closes or disconnects mid-generation cancels it; the text
 * so far is stored with status "partial", as with SSE.
 *
 * Memory: one state per socket from the request pool (read buffer,
 * message buffer, output buffer of fixed sizes), reused by every message;
 * what one message needs (context, payload, the stored reply) comes from a
 * pool of its own, destroyed when the message is answered, so a long-lived
 * socket grows the request pool only by the few hundred bytes of each
 * query and slot request.
 *
 * Keep-alive (directives, any level):
 *
 *     cinematch_ws_ping_interval 30s;   # 0: no server pings
 *     cinematch_ws_idle_timeout  5m;    # 0: never closed for idleness
 *
 * The server pings every interval; a client that has sent nothing at all
 * (no pong, no frame) by the next ping is dropped with close 1001 "ping
 * timeout".  A socket with no message and no reply in flight for the idle
 * timeout is closed with 1000 "idle timeout".  Either way the TCP
 * connection goes once the close frame is out, or after
 * NGX_HTTP_CINEMATCH_WS_CLOSE_WAIT if the client does not take it.  The
 * timer is cancelable: it never holds up a worker that is shutting down.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>
#include <ngx_sha1.h>

#include "ngx_http_cinematch.h"
#include "ngx_http_cinematch_chat.h"
#include "cinematch/validate.h"
#include "cinematch/chatdoc.h"
#include "cinematch/wsframe.h"


#define NGX_HTTP_CINEMATCH_WS_MAX_MESSAGE  65536     /* one client message */
#define NGX_HTTP_CINEMATCH_WS_OUT          (256 * 1024)
#define NGX_HTTP_CINEMATCH_WS_TURNS        NGX_HTTP_CINEMATCH_CONV_TURNS
#define NGX_HTTP_CINEMATCH_WS_CLOSE_WAIT   5000      /* ms */
#define NGX_HTTP_CINEMATCH_WS_GUID  "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
#define NGX_HTTP_CINEMATCH_WS_PROTO   "cinematch.v1"
#define NGX_HTTP_CINEMATCH_WS_BEARER  "cinematch.bearer."
#define NGX_HTTP_CINEMATCH_WS_EVENTS                                          \
    "XADD cinematch:chat.events MAXLEN ~ 100000 * "


typedef struct {
    ngx_msec_t                    ping_interval;
    ngx_msec_t                    idle_timeout;
} ngx_http_cinematch_ws_conf_t;


typedef struct {
    ngx_http_cinematch_gen_t      gen;        /* first: ctx->data points here
                                                 for the generation layer */
    ngx_http_request_t           *request;

    cm_ws_parser_t                parser;
    u_char                       *in;         /* frames read, not parsed */
    size_t                        in_len;
    size_t                        in_cap;

    u_char                       *out;        /* frames to send */
    size_t                        out_pos;
    size_t                        out_last;

    /* the message being answered */
    json_t                       *body;
    ngx_uint_t                    seq;
    uint64_t                      params[NGX_HTTP_CINEMATCH_GEN_PARAMS];
    json_t                       *stop;
    ngx_str_t                     content;
    ngx_pool_t                   *pool;       /* this message's, see below */
    ngx_str_t                    *turns;
    size_t                        nturns;
    u_char                       *clean;      /* 3 * clean_cap bytes */
    uint32_t                      clean_cap;
    char                          user_id[NGX_INT64_LEN + 1];
    char                          conv_id[40];
    char                          user_message_id[NGX_INT64_LEN + 1];
    char                          message_id[NGX_INT64_LEN + 1];
    char                          request_id[NGX_HTTP_CINEMATCH_REQUEST_ID_LEN
                                             + NGX_INT_T_LEN + 2];
    size_t                        request_id_len;  /* the handshake's */
    const char                   *values[12];
    ngx_http_cinematch_reply_row_t  row;
    u_char                       *reply;
    size_t                        reply_len;

    ngx_event_t                   busy_timer;   /* armed while busy */

    ngx_http_cinematch_ws_conf_t *conf;
    ngx_event_t                   alive_timer;  /* pings, idle timeout */
    ngx_msec_t                    last_active;  /* a message or a reply */
    ngx_msec_t                    last_ping;

    unsigned                      ping_unanswered:1;
    unsigned                      busy:1;       /* a message is in flight */
    unsigned                      generating:1; /* the gen is running */
    unsigned                      closing:1;    /* a close frame is queued */
    unsigned                      gone:1;
} ngx_http_cinematch_ws_t;


static ngx_int_t ngx_http_cinematch_ws_header(ngx_http_request_t *r,
    const char *name, size_t len, ngx_str_t *value);
static ngx_int_t ngx_http_cinematch_ws_protocol(ngx_http_request_t *r,
    const char *prefix, size_t len, ngx_str_t *item);
static ngx_int_t ngx_http_cinematch_ws_accept(ngx_http_request_t *r,
    ngx_str_t *key);
static void ngx_http_cinematch_ws_cleanup(void *data);
static void ngx_http_cinematch_ws_busy_timer(ngx_event_t *ev);
static void ngx_http_cinematch_ws_read(ngx_http_request_t *r);
static void ngx_http_cinematch_ws_write(ngx_http_request_t *r);
static ngx_int_t ngx_http_cinematch_ws_flush(ngx_http_cinematch_ws_t *ws);
static ngx_int_t ngx_http_cinematch_ws_frame(ngx_http_cinematch_ws_t *ws,
    int opcode, const u_char *data, size_t len);
static void ngx_http_cinematch_ws_close(ngx_http_cinematch_ws_t *ws,
    uint16_t code, const char *reason);
static void ngx_http_cinematch_ws_gone(ngx_http_cinematch_ws_t *ws);
static ngx_int_t ngx_http_cinematch_ws_event(ngx_http_cinematch_ws_t *ws,
    json_t *doc);
static void ngx_http_cinematch_ws_error(ngx_http_cinematch_ws_t *ws,
    const char *code, const char *message, const char *field);
static void ngx_http_cinematch_ws_message(ngx_http_cinematch_ws_t *ws,
    u_char *data, size_t len);
static ngx_uint_t ngx_http_cinematch_ws_uuid(const char *s, size_t len);
static ngx_int_t ngx_http_cinematch_ws_stored(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_ws_history(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_ws_text(ngx_http_cinematch_gen_t *g,
    u_char *text, size_t len);
static ngx_int_t ngx_http_cinematch_ws_end(ngx_http_cinematch_gen_t *g);
static ngx_int_t ngx_http_cinematch_ws_saved(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_ws_pushed(ngx_http_request_t *r,
    void *data, redisReply *reply);
static ngx_int_t ngx_http_cinematch_ws_answer(ngx_http_cinematch_ws_t *ws);
static ngx_int_t ngx_http_cinematch_ws_idle(ngx_http_cinematch_ws_t *ws);
static void ngx_http_cinematch_ws_alive_timer(ngx_event_t *ev);
static ngx_int_t ngx_http_cinematch_ws_cached(ngx_http_request_t *r,
    void *data, redisReply *reply);
static ngx_int_t ngx_http_cinematch_ws_generate(ngx_http_cinematch_ws_t *ws);
static void *ngx_http_cinematch_ws_create_conf(ngx_conf_t *cf);
static char *ngx_http_cinematch_ws_merge_conf(ngx_conf_t *cf, void *parent,
    void *child);


static ngx_command_t  ngx_http_cinematch_ws_commands[] = {

    { ngx_string("cinematch_ws_ping_interval"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_cinematch_ws_conf_t, ping_interval),
      NULL },

    { ngx_string("cinematch_ws_idle_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_cinematch_ws_conf_t, idle_timeout),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_cinematch_ws_module_ctx = {
    NULL,                                  /* preconfiguration */
    NULL,                                  /* postconfiguration */

    NULL,                                  /* create main configuration */
    NULL,                                  /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_cinematch_ws_create_conf,     /* create location configuration */
    ngx_http_cinematch_ws_merge_conf       /* merge location configuration */
};


ngx_module_t  ngx_http_cinematch_ws_module = {
    NGX_MODULE_V1,
    &ngx_http_cinematch_ws_module_ctx,     /* module context */
    ngx_http_cinematch_ws_commands,        /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    NULL,                                  /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    NULL,                                  /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static void *
ngx_http_cinematch_ws_create_conf(ngx_conf_t *cf)
{
    ngx_http_cinematch_ws_conf_t  *conf;

    conf = ngx_palloc(cf->pool, sizeof(ngx_http_cinematch_ws_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    conf->ping_interval = NGX_CONF_UNSET_MSEC;
    conf->idle_timeout = NGX_CONF_UNSET_MSEC;

    return conf;
}


static char *
ngx_http_cinematch_ws_merge_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_cinematch_ws_conf_t  *prev = parent;
    ngx_http_cinematch_ws_conf_t  *conf = child;

    ngx_conf_merge_msec_value(conf->ping_interval, prev->ping_interval,
                              30000);
    ngx_conf_merge_msec_value(conf->idle_timeout, prev->idle_timeout,
                              300000);

    return NGX_CONF_OK;
}


/* A request header by name (case-insensitive); NGX_DECLINED when absent. */

static ngx_int_t
ngx_http_cinematch_ws_header(ngx_http_request_t *r, const char *name,
    size_t len, ngx_str_t *value)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return NGX_DECLINED;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == len
            && ngx_strncasecmp(h[i].key.data, (u_char *) name, len) == 0)
        {
            *value = h[i].value;
            return NGX_OK;
        }
    }
}


/*
 * The first item of Sec-WebSocket-Protocol (a comma-separated list) that
 * starts with prefix (exactly prefix when exact); NGX_DECLINED when none.
 */

static ngx_int_t
ngx_http_cinematch_ws_protocol(ngx_http_request_t *r, const char *prefix,
    size_t len, ngx_str_t *item)
{
    u_char     *p, *last, *end;
    ngx_str_t   v;

    if (ngx_http_cinematch_ws_header(r, "Sec-WebSocket-Protocol", 22, &v)
        != NGX_OK)
    {
        return NGX_DECLINED;
    }

    p = v.data;
    last = v.data + v.len;

    while (p < last) {
        while (p < last && (*p == ' ' || *p == '\t' || *p == ',')) {
            p++;
        }

        end = p;
        while (end < last && *end != ',' && *end != ' ' && *end != '\t') {
            end++;
        }

        if ((size_t) (end - p) >= len && ngx_strncmp(p, prefix, len) == 0) {
            item->data = p;
            item->len = end - p;
            return NGX_OK;
        }

        p = end;
    }

    return NGX_DECLINED;
}


ngx_int_t
ngx_http_cinematch_ws_bearer(ngx_http_request_t *r, ngx_str_t *authz)
{
    u_char     *p;
    ngx_str_t   item;
    size_t      len = sizeof(NGX_HTTP_CINEMATCH_WS_BEARER) - 1;

    if (ngx_http_cinematch_ws_protocol(r, NGX_HTTP_CINEMATCH_WS_BEARER, len,
                                       &item)
        != NGX_OK
        || item.len == len)
    {
        return NGX_DECLINED;
    }

    p = ngx_pnalloc(r->pool, sizeof("Bearer ") - 1 + item.len - len);
    if (p == NULL) {
        return NGX_ERROR;
    }

    authz->data = p;
    p = ngx_cpymem(p, "Bearer ", sizeof("Bearer ") - 1);
    p = ngx_cpymem(p, item.data + len, item.len - len);
    authz->len = p - authz->data;

    return NGX_OK;
}


/* Sec-WebSocket-Accept: base64(SHA-1(key + GUID)), RFC 6455 4.2.2 */

static ngx_int_t
ngx_http_cinematch_ws_accept(ngx_http_request_t *r, ngx_str_t *key)
{
    u_char           digest[20];
    ngx_str_t        src, dst;
    ngx_sha1_t       sha1;
    ngx_table_elt_t  *h;

    ngx_sha1_init(&sha1);
    ngx_sha1_update(&sha1, key->data, key->len);
    ngx_sha1_update(&sha1, NGX_HTTP_CINEMATCH_WS_GUID,
                    sizeof(NGX_HTTP_CINEMATCH_WS_GUID) - 1);
    ngx_sha1_final(digest, &sha1);

    dst.data = ngx_pnalloc(r->pool, ngx_base64_encoded_length(20));
    if (dst.data == NULL) {
        return NGX_ERROR;
    }

    src.data = digest;
    src.len = 20;
    ngx_encode_base64(&dst, &src);

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Sec-WebSocket-Accept");
    h->value = dst;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    h->hash = 1;
    ngx_str_set(&h->key, "Upgrade");
    ngx_str_set(&h->value, "websocket");

    /* a browser that offered our subprotocol needs it selected */
    if (ngx_http_cinematch_ws_protocol(r, NGX_HTTP_CINEMATCH_WS_PROTO,
                                       sizeof(NGX_HTTP_CINEMATCH_WS_PROTO) - 1,
                                       &src)
        == NGX_OK
        && src.len == sizeof(NGX_HTTP_CINEMATCH_WS_PROTO) - 1)
    {
        h = ngx_list_push(&r->headers_out.headers);
        if (h == NULL) {
            return NGX_ERROR;
        }

        h->hash = 1;
        ngx_str_set(&h->key, "Sec-WebSocket-Protocol");
        ngx_str_set(&h->value, NGX_HTTP_CINEMATCH_WS_PROTO);
    }

    return NGX_OK;
}


ngx_int_t
ngx_http_cinematch_ws_chat_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    u_char                       *p;
    size_t                        n;
    ngx_str_t                     v, key;
    ngx_connection_t             *c;
    ngx_pool_cleanup_t           *cln;
    ngx_http_cinematch_ws_t      *ws;
    ngx_http_cinematch_caller_t  *caller;

    c = r->connection;

    if (r != r->main || r->http_version != NGX_HTTP_VERSION_11
#if (NGX_HTTP_V2)
        || r->stream != NULL
#endif
        )
    {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request", "a WebSocket needs HTTP/1.1");
    }

    if (ngx_http_cinematch_ws_header(r, "Upgrade", 7, &v) != NGX_OK
        || ngx_strlcasestrn(v.data, v.data + v.len, (u_char *) "websocket",
                            9 - 1) == NULL
        || ngx_http_cinematch_ws_header(r, "Connection", 10, &v) != NGX_OK
        || ngx_strlcasestrn(v.data, v.data + v.len, (u_char *) "upgrade",
                            7 - 1) == NULL)
    {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request",
                   "send Upgrade: websocket and Connection: Upgrade");
    }

    if (ngx_http_cinematch_ws_header(r, "Sec-WebSocket-Version", 21, &v)
        != NGX_OK
        || v.len != 2 || ngx_strncmp(v.data, "13", 2) != 0)
    {
        ngx_str_set(&key, "Sec-WebSocket-Version");
        ngx_str_set(&v, "13");

        if (ngx_http_cinematch_add_header(r, &key, &v) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_cinematch_send_error(r, 426, "upgrade_required",
                   "Sec-WebSocket-Version must be 13");
    }

    if (ngx_http_cinematch_ws_header(r, "Sec-WebSocket-Key", 17, &key)
        != NGX_OK
        || !cm_ws_key_valid((char *) key.data, key.len))
    {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request",
                   "Sec-WebSocket-Key must be base64 of 16 bytes");
    }

    caller = ngx_http_cinematch_caller(r);
    if (caller == NULL) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_UNAUTHORIZED,
                   "unauthenticated", "credentials required");
    }

    ws = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_ws_t));
    if (ws == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ws->request = r;
    ws->in_cap = NGX_HTTP_CINEMATCH_WS_MAX_MESSAGE + CM_WS_MAX_HEADER;
    ws->in = ngx_pnalloc(r->pool, ws->in_cap);
    ws->parser.msg = ngx_pnalloc(r->pool, NGX_HTTP_CINEMATCH_WS_MAX_MESSAGE);
    ws->out = ngx_pnalloc(r->pool, NGX_HTTP_CINEMATCH_WS_OUT);

    if (ws->in == NULL || ws->parser.msg == NULL || ws->out == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ws->parser.max = NGX_HTTP_CINEMATCH_WS_MAX_MESSAGE;
    ws->parser.require_mask = 1;
    cm_ws_parser_reset(&ws->parser);

    p = ngx_sprintf((u_char *) ws->user_id, "%L", caller->user_id);
    *p = '\0';

    n = ngx_min(ctx->request_id.len, NGX_HTTP_CINEMATCH_REQUEST_ID_LEN);
    p = ngx_cpymem(ws->request_id, ctx->request_id.data, n);
    *p = '\0';
    ws->request_id_len = n;

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cln->handler = ngx_http_cinematch_ws_cleanup;
    cln->data = ws;

    ws->busy_timer.handler = ngx_http_cinematch_ws_busy_timer;
    ws->busy_timer.data = ws;
    ws->busy_timer.log = c->log;

    ws->conf = ngx_http_get_module_loc_conf(r, ngx_http_cinematch_ws_module);
    ws->alive_timer.handler = ngx_http_cinematch_ws_alive_timer;
    ws->alive_timer.data = ws;
    ws->alive_timer.log = c->log;
    ws->alive_timer.cancelable = 1;
    ws->last_active = ngx_current_msec;
    ws->last_ping = ngx_current_msec;

    if (ngx_http_cinematch_ws_accept(r, &key) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ctx->data = ws;

    r->headers_out.status = NGX_HTTP_SWITCHING_PROTOCOLS;
    ngx_str_set(&r->headers_out.status_line, "101 Switching Protocols");
    r->headers_out.content_length_n = -1;
    r->keepalive = 0;
    r->lingering_close = 0;

    if (ngx_http_send_header(r) == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (ngx_http_send_special(r, NGX_HTTP_FLUSH) == NGX_ERROR) {
        return NGX_ERROR;
    }

    c->log->action = "serving a WebSocket";

    (void) ngx_tcp_nodelay(c);

    /* frames sent right behind the handshake were read with it */
    n = r->header_in->last - r->header_in->pos;
    if (n > 0) {
        n = ngx_min(n, ws->in_cap);
        ngx_memcpy(ws->in, r->header_in->pos, n);
        ws->in_len = n;
        r->header_in->pos += n;
    }

    r->read_event_handler = ngx_http_cinematch_ws_read;
    r->write_event_handler = ngx_http_cinematch_ws_write;

    /* the request lives until the socket closes */
    r->main->count++;

    if (ws->conf->ping_interval || ws->conf->idle_timeout) {
        ngx_add_timer(&ws->alive_timer,
                      ws->conf->ping_interval == 0 ? ws->conf->idle_timeout
                      : ws->conf->idle_timeout == 0 ? ws->conf->ping_interval
                      : ngx_min(ws->conf->ping_interval,
                                ws->conf->idle_timeout));
    }

    /* between messages the socket is idle: a reload or a shutdown of
     * the worker closes it (ngx_close_idle_connections) */
    c->idle = 1;

    if (ws->in_len > 0 || c->read->ready) {
        ngx_post_event(c->read, &ngx_posted_events);

    } else if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        return NGX_ERROR;
    }

    return NGX_DONE;
}


/*
 * A timer armed while a message is in flight: a worker that is shutting
 * down (reload) waits for its pending timers, so the reply finishes and is
 * stored instead of the socket being abandoned.  It only re-arms itself.
 */

static void
ngx_http_cinematch_ws_busy_timer(ngx_event_t *ev)
{
    ngx_http_cinematch_ws_t  *ws = ev->data;

    if (ws->busy) {
        ngx_add_timer(ev, 60000);
    }
}


/*
 * Pings and the idle timeout (see the top of the file).  After our close
 * frame is queued the timer waits NGX_HTTP_CINEMATCH_WS_CLOSE_WAIT, then
 * drops the connection if the frame could not go out.
 */

static void
ngx_http_cinematch_ws_alive_timer(ngx_event_t *ev)
{
    ngx_msec_t                     now, next, t;
    ngx_connection_t              *c;
    ngx_http_cinematch_ws_t       *ws = ev->data;
    ngx_http_cinematch_ws_conf_t  *wcf = ws->conf;

    c = ws->request->connection;

    if (ws->gone) {
        return;
    }

    if (ws->closing) {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "cinematch: WebSocket close not taken, dropping");
        ngx_http_cinematch_ws_gone(ws);
        return;
    }

    now = ngx_current_msec;

    if (wcf->idle_timeout && !ws->busy
        && now - ws->last_active >= wcf->idle_timeout)
    {
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "cinematch: WebSocket idle, closing");
        ngx_http_cinematch_ws_close(ws, CM_WS_CLOSE_NORMAL, "idle timeout");
        ngx_add_timer(ev, NGX_HTTP_CINEMATCH_WS_CLOSE_WAIT);
        return;
    }

    if (wcf->ping_interval && now - ws->last_ping >= wcf->ping_interval) {

        if (ws->ping_unanswered) {
            ngx_log_error(NGX_LOG_INFO, c->log, 0,
                          "cinematch: WebSocket ping not answered, closing");
            ngx_http_cinematch_ws_close(ws, CM_WS_CLOSE_GOING_AWAY,
                                        "ping timeout");
            ngx_add_timer(ev, NGX_HTTP_CINEMATCH_WS_CLOSE_WAIT);
            return;
        }

        ws->ping_unanswered = 1;
        ws->last_ping = now;
        (void) ngx_http_cinematch_ws_frame(ws, CM_WS_OP_PING,
                                           (u_char *) "cinematch", 9);
    }

    next = NGX_TIMER_INFINITE;

    if (wcf->ping_interval) {
        next = ws->last_ping + wcf->ping_interval - now;
    }

    if (wcf->idle_timeout) {
        /* while busy, look again one timeout after the reply at most */
        t = ws->busy ? wcf->idle_timeout
                     : ws->last_active + wcf->idle_timeout - now;
        next = ngx_min(next, t);
    }

    if (next != NGX_TIMER_INFINITE && !ws->gone && !ws->closing) {
        ngx_add_timer(ev, next == 0 ? 1 : next);
    }
}


static void
ngx_http_cinematch_ws_cleanup(void *data)
{
    ngx_http_cinematch_ws_t  *ws = data;

    if (ws->busy_timer.timer_set) {
        ngx_del_timer(&ws->busy_timer);
    }

    if (ws->alive_timer.timer_set) {
        ngx_del_timer(&ws->alive_timer);
    }

    if (ws->body != NULL) {
        json_decref(ws->body);
        ws->body = NULL;
    }

    if (ws->pool != NULL) {
        ngx_destroy_pool(ws->pool);
        ws->pool = NULL;
    }
}


static void
ngx_http_cinematch_ws_read(ngx_http_request_t *r)
{
    long                      rc;
    ssize_t                   n;
    cm_ws_event_t             ev;
    ngx_connection_t         *c;
    ngx_http_cinematch_ctx_t *ctx;
    ngx_http_cinematch_ws_t  *ws;

    c = r->connection;
    ctx = ngx_http_get_module_ctx(r, ngx_http_cinematch_module);
    ws = ctx->data;

    if (ws->gone) {
        return;
    }

    for ( ;; ) {

        /* parse what is buffered: frames, one at a time */
        while (ws->in_len > 0 && !ws->closing) {
            rc = cm_ws_parse(&ws->parser, ws->in, ws->in_len, &ev);

            if (rc < 0) {
                ngx_log_error(NGX_LOG_INFO, c->log, 0,
                              "cinematch: WebSocket frame refused, close %d",
                              (int) ws->parser.close_code);
                ngx_http_cinematch_ws_close(ws, ws->parser.close_code,
                    ws->parser.close_code == CM_WS_CLOSE_TOO_BIG
                    ? "message too big"
                    : ws->parser.close_code == CM_WS_CLOSE_BAD_DATA
                    ? "invalid UTF-8" : "protocol error");
                return;
            }

            if (rc == 0) {
                break;
            }

            /* any frame (a pong, most often) answers our ping */
            ws->ping_unanswered = 0;

            switch (ev) {

            case CM_WS_EV_TEXT:
                ws->last_active = ngx_current_msec;
                ngx_http_cinematch_ws_message(ws, ws->parser.msg,
                                              ws->parser.msg_len);
                break;

            case CM_WS_EV_BINARY:
                ngx_http_cinematch_ws_close(ws, 1003, "text frames only");
                break;

            case CM_WS_EV_PING:
                (void) ngx_http_cinematch_ws_frame(ws, CM_WS_OP_PONG,
                                                   ws->parser.ctl,
                                                   ws->parser.ctl_len);
                break;

            case CM_WS_EV_CLOSE:
                ngx_http_cinematch_ws_close(ws,
                    ws->parser.ctl_code == CM_WS_CLOSE_NO_STATUS
                    ? CM_WS_CLOSE_NORMAL : ws->parser.ctl_code, NULL);
                break;

            default:
                break;
            }

            if (ws->gone) {
                return;
            }

            ws->in_len -= (size_t) rc;
            if (ws->in_len > 0) {
                ngx_memmove(ws->in, ws->in + rc, ws->in_len);
            }
        }

        if (ws->closing) {
            /* the close is queued: what comes after it is discarded */
            ws->in_len = 0;
        }

        if (ws->in_len == ws->in_cap) {
            /* cannot happen: a frame that fits max fits in */
            ngx_http_cinematch_ws_close(ws, CM_WS_CLOSE_TOO_BIG, NULL);
            return;
        }

        n = c->recv(c, ws->in + ws->in_len, ws->in_cap - ws->in_len);

        if (n == NGX_AGAIN) {
            break;
        }

        if (n == 0 || n == NGX_ERROR) {
            c->read->eof = 1;
            ngx_log_error(NGX_LOG_INFO, c->log, 0,
                          "client closed the WebSocket%s",
                          ws->generating ? " during generation" : "");
            ngx_http_cinematch_ws_gone(ws);
            return;
        }

        ws->in_len += n;
    }

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        ngx_http_cinematch_ws_gone(ws);
    }
}


static void
ngx_http_cinematch_ws_write(ngx_http_request_t *r)
{
    ngx_http_cinematch_ctx_t *ctx;
    ngx_http_cinematch_ws_t  *ws;

    ctx = ngx_http_get_module_ctx(r, ngx_http_cinematch_module);
    ws = ctx->data;

    if (ws->gone) {
        return;
    }

    if (ngx_http_cinematch_ws_flush(ws) == NGX_ERROR) {
        ngx_http_cinematch_ws_gone(ws);
        return;
    }

    if (ws->closing && ws->out_pos == ws->out_last) {
        /* our close is out: the server closes the TCP connection first */
        ngx_http_cinematch_ws_gone(ws);
    }
}


static ngx_int_t
ngx_http_cinematch_ws_flush(ngx_http_cinematch_ws_t *ws)
{
    ssize_t              n;
    ngx_connection_t    *c;
    ngx_http_request_t  *r = ws->request;

    c = r->connection;

    if (c->error) {
        return NGX_ERROR;
    }

    /* the tail of the 101 response, if the socket refused it */
    if (r->out != NULL || c->buffered) {
        if (ngx_http_output_filter(r, NULL) == NGX_ERROR) {
            return NGX_ERROR;
        }

        if (r->out != NULL || c->buffered) {
            return ngx_handle_write_event(c->write, 0) == NGX_OK
                   ? NGX_AGAIN : NGX_ERROR;
        }
    }

    while (ws->out_pos < ws->out_last) {
        n = c->send(c, ws->out + ws->out_pos, ws->out_last - ws->out_pos);

        if (n == NGX_AGAIN) {
            return ngx_handle_write_event(c->write, 0) == NGX_OK
                   ? NGX_AGAIN : NGX_ERROR;
        }

        if (n == NGX_ERROR || n == 0) {
            return NGX_ERROR;
        }

        ws->out_pos += n;
    }

    ws->out_pos = 0;
    ws->out_last = 0;

    return NGX_OK;
}


/*
 * Queue one frame; the write handler sends it once this event is over
 * (so no callback of the generation layer runs into a send failure).
 */

static ngx_int_t
ngx_http_cinematch_ws_frame(ngx_http_cinematch_ws_t *ws, int opcode,
    const u_char *data, size_t len)
{
    size_t             h;
    ngx_connection_t  *c;

    c = ws->request->connection;

    if (ws->closing || ws->gone) {
        return NGX_OK;   /* nothing after our close */
    }

    if (ws->out_pos > 0) {
        ngx_memmove(ws->out, ws->out + ws->out_pos,
                    ws->out_last - ws->out_pos);
        ws->out_last -= ws->out_pos;
        ws->out_pos = 0;
    }

    if (len + CM_WS_MAX_HEADER > NGX_HTTP_CINEMATCH_WS_OUT - ws->out_last) {
        /* a client this far behind is not reading: let it go */
        ngx_log_error(NGX_LOG_INFO, c->log, 0,
                      "cinematch: WebSocket client too slow, closing");
        c->error = 1;
        ngx_post_event(c->write, &ngx_posted_events);
        return NGX_ERROR;
    }

    h = cm_ws_header(ws->out + ws->out_last, opcode, len);
    ws->out_last += h;

    if (len > 0) {
        ngx_memcpy(ws->out + ws->out_last, data, len);
        ws->out_last += len;
    }

    if (opcode == CM_WS_OP_CLOSE) {
        ws->closing = 1;
    }

    if (!c->write->posted) {
        ngx_post_event(c->write, &ngx_posted_events);
    }

    return NGX_OK;
}


static void
ngx_http_cinematch_ws_close(ngx_http_cinematch_ws_t *ws, uint16_t code,
    const char *reason)
{
    u_char  payload[CM_WS_MAX_CONTROL];
    size_t  n;

    n = cm_ws_close_payload(payload, code, reason);
    (void) ngx_http_cinematch_ws_frame(ws, CM_WS_OP_CLOSE, payload, n);
}


/*
 * The socket is over (closed, failed, or our close frame went out).  A
 * running generation is cancelled and what it produced stored "partial";
 * a query under way finalizes when it returns (its handler sees c->error).
 */

static void
ngx_http_cinematch_ws_gone(ngx_http_cinematch_ws_t *ws)
{
    ngx_http_request_t  *r = ws->request;

    if (ws->gone) {
        return;
    }

    ws->gone = 1;

    if (ws->generating && !ws->gen.finished) {
        ws->generating = 0;
        ngx_http_cinematch_finish(r, ngx_http_cinematch_gen_gone(&ws->gen));
        return;
    }

    r->connection->error = 1;

    if (ws->busy) {
        return;
    }

    ngx_http_cinematch_finish(r, NGX_HTTP_CLIENT_CLOSED_REQUEST);
}


/* A JSON event as one text frame; doc is released. */

static ngx_int_t
ngx_http_cinematch_ws_event(ngx_http_cinematch_ws_t *ws, json_t *doc)
{
    char       *s;
    ngx_int_t   rc;

    if (doc == NULL) {
        return NGX_ERROR;
    }

    s = json_dumps(doc, JSON_COMPACT);
    json_decref(doc);

    if (s == NULL) {
        return NGX_ERROR;
    }

    rc = ngx_http_cinematch_ws_frame(ws, CM_WS_OP_TEXT, (u_char *) s,
                                     ngx_strlen(s));
    free(s);

    return rc;
}


static void
ngx_http_cinematch_ws_error(ngx_http_cinematch_ws_t *ws, const char *code,
    const char *message, const char *field)
{
    json_t  *err;

    err = json_pack("{s:s, s:s}", "code", code, "message", message);

    if (err != NULL && field != NULL) {
        json_object_set_new(err, "fields",
                            json_pack("{s:s}", field, message));
    }

    (void) ngx_http_cinematch_ws_event(ws,
               json_pack("{s:s, s:o}", "type", "error", "error", err));
}


static ngx_uint_t
ngx_http_cinematch_ws_uuid(const char *s, size_t len)
{
    size_t  i;

    if (len != 36) {
        return 0;
    }

    for (i = 0; i < 36; i++) {
        if (i == 8 || i == 13 || i == 18 || i == 23) {
            if (s[i] != '-') {
                return 0;
            }

        } else if (!((s[i] >= '0' && s[i] <= '9')
                     || ((s[i] | 0x20) >= 'a' && (s[i] | 0x20) <= 'f')))
        {
            return 0;
        }
    }

    return 1;
}


/* One client message: validate, then store the user message. */

static void
ngx_http_cinematch_ws_message(ngx_http_cinematch_ws_t *ws, u_char *data,
    size_t len)
{
    u_char              *p;
    json_t              *b, *v;
    size_t               i;
    ngx_int_t            rc;
    ngx_str_t            payload;
    const char          *key, *field, *message;
    ngx_http_request_t  *r = ws->request;

    static const char  *allowed[] = {
        "conversation_id", "content", "max_tokens", "temperature", "top_k",
        "top_p", "stop", "seed", "repetition_penalty", NULL
    };

    if (ws->busy) {
        ngx_http_cinematch_ws_error(ws, "busy",
                                    "a reply is being generated", NULL);
        return;
    }

    b = json_loadb((char *) data, len, JSON_REJECT_DUPLICATES, NULL);

    if (!json_is_object(b)) {
        json_decref(b);
        ngx_http_cinematch_ws_error(ws, "invalid_request",
                                    "a message is a JSON object", NULL);
        return;
    }

    if (ws->body != NULL) {
        json_decref(ws->body);
    }

    ws->body = b;

    json_object_foreach(b, key, v) {
        for (i = 0; allowed[i] != NULL; i++) {
            if (ngx_strcmp(key, allowed[i]) == 0) {
                break;
            }
        }

        if (allowed[i] == NULL) {
            ngx_http_cinematch_ws_error(ws, "validation_failed",
                                        "unknown field", key);
            return;
        }
    }

    v = json_object_get(b, "conversation_id");

    if (!json_is_string(v)) {
        ngx_http_cinematch_ws_error(ws, "validation_failed",
                                    "required, a string", "conversation_id");
        return;
    }

    if (!ngx_http_cinematch_ws_uuid(json_string_value(v),
                                    json_string_length(v)))
    {
        ngx_http_cinematch_ws_error(ws, "not_found",
                                    "conversation not found", NULL);
        return;
    }

    ngx_memcpy(ws->conv_id, json_string_value(v), 36);
    ws->conv_id[36] = '\0';

    v = json_object_get(b, "content");

    if (!json_is_string(v)) {
        ngx_http_cinematch_ws_error(ws, "validation_failed",
                                    "required, a string", "content");
        return;
    }

    ws->content.data = (u_char *) json_string_value(v);
    ws->content.len = json_string_length(v);

    for (i = 0; i < ws->content.len; i++) {
        if (ws->content.data[i] != ' ' && ws->content.data[i] != '\t'
            && ws->content.data[i] != '\n' && ws->content.data[i] != '\r')
        {
            break;
        }
    }

    if (i == ws->content.len) {
        ngx_http_cinematch_ws_error(ws, "validation_failed",
                                    "must not be empty", "content");
        return;
    }

    if (ws->content.len > NGX_HTTP_CINEMATCH_GEN_CONTENT
        || ngx_strlen(ws->content.data) != ws->content.len
        || !cm_utf8_valid((char *) ws->content.data, ws->content.len, NULL))
    {
        ngx_http_cinematch_ws_error(ws, "validation_failed",
                                    "at most 8192 bytes of UTF-8 text "
                                    "without NUL", "content");
        return;
    }

    if (ngx_http_cinematch_gen_sampling(b, ws->params, &field, &message)
        != NGX_OK)
    {
        ngx_http_cinematch_ws_error(ws, "validation_failed", message, field);
        return;
    }

    ws->stop = json_object_get(b, "stop");

    ws->pool = ngx_create_pool(4096, r->connection->log);
    if (ws->pool == NULL) {
        ngx_http_cinematch_ws_error(ws, "internal", "out of memory", NULL);
        return;
    }

    if (ngx_http_cinematch_gen_payload(ws->pool, &ws->content, 1, ws->stop,
                                       &payload, &field) != NGX_OK)
    {
        ngx_destroy_pool(ws->pool);
        ws->pool = NULL;
        ngx_http_cinematch_ws_error(ws, "validation_failed",
            ngx_strcmp(field, "stop") == 0
            ? "a string or up to 4 strings of 1..64 bytes" : "too long",
            field);
        return;
    }

    /* one request id per message: the handshake's, then ".2", ".3" */
    ws->seq++;
    if (ws->seq > 1) {
        p = ngx_sprintf((u_char *) ws->request_id + ws->request_id_len,
                        ".%ui", ws->seq);
        *p = '\0';
    }

    ws->values[0] = ws->conv_id;
    ws->values[1] = ws->user_id;
    ws->values[2] = (char *) ws->content.data;
    ws->values[3] = ws->request_id;

    ws->busy = 1;
    r->connection->idle = 0;
    ngx_add_timer(&ws->busy_timer, 60000);
    ws->user_message_id[0] = '\0';

    rc = ngx_http_cinematch_pg_query(r,
        "WITH c AS (UPDATE conversations SET updated_at = now()"
        "  WHERE id = $1::uuid AND user_id = $2::bigint RETURNING id)"
        " INSERT INTO messages (conversation_id, role, content, request_id)"
        " SELECT id, 'user', $3, $4 FROM c RETURNING id",
        4, ws->values, ngx_http_cinematch_ws_stored, ws);

    if (rc != NGX_OK) {
        (void) ngx_http_cinematch_ws_idle(ws);
        ngx_http_cinematch_ws_error(ws, "unavailable",
                                    "database unavailable", NULL);
    }
}


/*
 * After a query or a generation, the answer is on the socket: the request
 * goes on waiting for frames; or the client went away meanwhile.
 */

static ngx_int_t
ngx_http_cinematch_ws_idle(ngx_http_cinematch_ws_t *ws)
{
    ws->busy = 0;
    ws->generating = 0;
    ws->last_active = ngx_current_msec;

    if (ws->busy_timer.timer_set) {
        ngx_del_timer(&ws->busy_timer);
    }

    if (ws->pool != NULL) {
        ngx_destroy_pool(ws->pool);
        ws->pool = NULL;
    }

    if (ws->request->connection->error) {
        return NGX_HTTP_CLIENT_CLOSED_REQUEST;
    }

    ws->request->connection->idle = 1;

    if (ngx_exiting || ngx_terminate) {
        /* the worker is going away: the answer is out, say goodbye */
        ngx_http_cinematch_ws_close(ws, CM_WS_CLOSE_GOING_AWAY,
                                    "server restarting");
    }

    return NGX_DONE;
}


static ngx_int_t
ngx_http_cinematch_ws_stored(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    u_char                   *p;
    ngx_http_cinematch_ws_t  *ws = data;

    if (r->connection->error) {
        return ngx_http_cinematch_ws_idle(ws);
    }

    if (err != NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cinematch: WebSocket message insert failed: %s",
                      err != NULL ? err : PQresultErrorMessage(res));
        ngx_http_cinematch_ws_error(ws, "unavailable",
                                    "database unavailable", NULL);
        return ngx_http_cinematch_ws_idle(ws);
    }

    if (PQntuples(res) != 1) {
        ngx_http_cinematch_ws_error(ws, "not_found",
                                    "conversation not found", NULL);
        return ngx_http_cinematch_ws_idle(ws);
    }

    p = ngx_cpymem(ws->user_message_id, PQgetvalue(res, 0, 0),
                   ngx_min((size_t) PQgetlength(res, 0, 0), NGX_INT64_LEN));
    *p = '\0';

    (void) ngx_http_cinematch_redis_commandf(NULL, NULL, NULL,
               NGX_HTTP_CINEMATCH_WS_EVENTS "type message.created"
               " conversation_id %s message_id %s user_id %s role user"
               " request_id %s",
               ws->conv_id, ws->user_message_id, ws->user_id,
               ws->request_id);

    /* the context: the conversation's Redis list, as the SSE path reads
     * it (the message just stored is appended), or PostgreSQL on a miss */
    if (ngx_http_cinematch_redis_commandf(r, ngx_http_cinematch_ws_cached,
            ws, "LRANGE cinematch:conv:%s:turns -%d -1", ws->conv_id,
            NGX_HTTP_CINEMATCH_WS_TURNS - 1)
        == NGX_OK)
    {
        return NGX_DONE;
    }

    return ngx_http_cinematch_ws_cached(r, ws, NULL);
}


static ngx_int_t
ngx_http_cinematch_ws_cached(ngx_http_request_t *r, void *data,
    redisReply *reply)
{
    size_t                    i, n;
    ngx_http_cinematch_ws_t  *ws = data;

    if (r->connection->error) {
        return ngx_http_cinematch_ws_idle(ws);
    }

    if (reply != NULL && reply->type == REDIS_REPLY_ARRAY
        && reply->elements > 0)
    {
        n = reply->elements;

        ws->turns = ngx_palloc(ws->pool, (n + 1) * sizeof(ngx_str_t));
        if (ws->turns == NULL) {
            return NGX_ERROR;
        }

        for (i = 0; i < n; i++) {
            if (reply->element[i]->type != REDIS_REPLY_STRING) {
                break;
            }

            ws->turns[i].len = reply->element[i]->len;
            ws->turns[i].data = ngx_pnalloc(ws->pool, ws->turns[i].len + 1);
            if (ws->turns[i].data == NULL) {
                return NGX_ERROR;
            }
            ngx_memcpy(ws->turns[i].data, reply->element[i]->str,
                       ws->turns[i].len);
        }

        if (i == n) {
            ws->turns[n] = ws->content;
            ws->nturns = n + 1;

            ngx_http_cinematch_conv_push_turn(ws->conv_id, ws->content.data,
                                              ws->content.len);

            return ngx_http_cinematch_ws_generate(ws);
        }
    }

    /* a miss (or Redis is away): the last turns, which include the
     * message just stored */
    if (ngx_http_cinematch_pg_query(r,
            "SELECT content FROM (SELECT id, content FROM messages"
            "  WHERE conversation_id = (SELECT id FROM conversations"
            "   WHERE id = $1::uuid AND user_id = $2::bigint)"
            "  AND role <> 'system' AND content <> ''"
            "  ORDER BY id DESC LIMIT 20) t ORDER BY id",
            2, ws->values, ngx_http_cinematch_ws_history, ws)
        == NGX_OK)
    {
        return NGX_DONE;
    }

    ngx_http_cinematch_ws_error(ws, "unavailable", "database unavailable",
                                NULL);
    return ngx_http_cinematch_ws_idle(ws);
}


static ngx_int_t
ngx_http_cinematch_ws_history(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    int                        i, n;
    ngx_http_cinematch_ws_t   *ws = data;

    if (r->connection->error) {
        return ngx_http_cinematch_ws_idle(ws);
    }

    if (err != NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        ngx_http_cinematch_ws_error(ws, "unavailable",
                                    "database unavailable", NULL);
        return ngx_http_cinematch_ws_idle(ws);
    }

    n = PQntuples(res);

    if (n == 0) {
        ngx_http_cinematch_ws_error(ws, "not_found",
                                    "conversation not found", NULL);
        return ngx_http_cinematch_ws_idle(ws);
    }

    ws->turns = ngx_palloc(ws->pool, n * sizeof(ngx_str_t));
    if (ws->turns == NULL) {
        return NGX_ERROR;
    }

    for (i = 0; i < n; i++) {
        ws->turns[i].len = PQgetlength(res, i, 0);
        ws->turns[i].data = ngx_pnalloc(ws->pool, ws->turns[i].len + 1);
        if (ws->turns[i].data == NULL) {
            return NGX_ERROR;
        }
        ngx_memcpy(ws->turns[i].data, PQgetvalue(res, i, 0),
                   ws->turns[i].len);
    }

    ws->nturns = n;

    ngx_http_cinematch_conv_cache_turns(ws->pool, ws->conv_id, ws->turns,
                                        ws->nturns);

    return ngx_http_cinematch_ws_generate(ws);
}


static ngx_int_t
ngx_http_cinematch_ws_generate(ngx_http_cinematch_ws_t *ws)
{
    u_char                    *reply, *rec;
    size_t                     cap;
    uint32_t                   rec_cap;
    ngx_int_t                  rc;
    ngx_str_t                  payload;
    const char                *field;
    ngx_http_cinematch_gen_t  *g;
    ngx_http_request_t        *r = ws->request;

    if (ngx_http_cinematch_gen_payload(ws->pool, ws->turns, ws->nturns,
                                       ws->stop, &payload, &field)
        != NGX_OK)
    {
        ngx_http_cinematch_ws_error(ws, "internal", "context too long",
                                    NULL);
        return ngx_http_cinematch_ws_idle(ws);
    }

    /* a fresh generation; the reply buffer of the last one is reused */
    g = &ws->gen;
    reply = g->reply;
    cap = g->cap;
    rec = g->rec;
    rec_cap = g->rec_cap;
    ngx_memzero(g, sizeof(ngx_http_cinematch_gen_t));
    g->reply = reply;
    g->cap = cap;
    g->rec = rec;
    g->rec_cap = rec_cap;

    g->request = r;
    g->text = ngx_http_cinematch_ws_text;
    g->end = ngx_http_cinematch_ws_end;
    g->data = ws;
    g->keep = 1;
    g->save_on_gone = 1;
    g->tag.data = (u_char *) ws->conv_id;
    g->tag.len = ngx_strlen(ws->conv_id);

    rc = ngx_http_cinematch_gen_start(r, g, ws->params, &payload);

    if (rc == NGX_BUSY || rc == NGX_DECLINED) {
        (void) ngx_http_cinematch_ws_event(ws,
            json_pack("{s:s, s:{s:s, s:s}, s:I}", "type", "error",
                      "error", "code", "unavailable", "message",
                      ngx_http_cinematch_gen_unavailable(rc),
                      "user_message_id",
                      (json_int_t) ngx_atoof((u_char *) ws->user_message_id,
                                       ngx_strlen(ws->user_message_id))));
        return ngx_http_cinematch_ws_idle(ws);
    }

    if (rc != NGX_OK) {
        ngx_http_cinematch_ws_error(ws, "internal", "generation failed",
                                    NULL);
        return ngx_http_cinematch_ws_idle(ws);
    }

    /* gen_start has set ctx->data = g, which is ws */
    ws->generating = 1;

    if (ws->clean == NULL || ws->clean_cap < g->rec_cap) {
        ws->clean = ngx_pnalloc(r->pool, 3 * (size_t) g->rec_cap);
        if (ws->clean == NULL) {
            return NGX_ERROR;
        }
        ws->clean_cap = g->rec_cap;
    }

    return NGX_DONE;
}


static ngx_int_t
ngx_http_cinematch_ws_text(ngx_http_cinematch_gen_t *g, u_char *text,
    size_t len)
{
    u_char                   *p, *buf;
    size_t                    n;
    ngx_http_cinematch_ws_t  *ws = g->data;

    static u_char  head[] = "{\"type\":\"token\",\"text\":\"";
    static u_char  tail[] = "\"}";

    n = cm_utf8_sanitize((char *) ws->clean, (char *) text, len);

    buf = ngx_alloc(sizeof(head) + n * 6 + sizeof(tail),
                    ws->request->connection->log);
    if (buf == NULL) {
        return NGX_ERROR;
    }

    p = ngx_cpymem(buf, head, sizeof(head) - 1);
    p = ngx_http_cinematch_json_text(p, ws->clean, n);
    p = ngx_cpymem(p, tail, sizeof(tail) - 1);

    (void) ngx_http_cinematch_ws_frame(ws, CM_WS_OP_TEXT, buf, p - buf);
    ngx_free(buf);

    return NGX_OK;
}


/* The generation is over, however it ended: store the reply. */

static ngx_int_t
ngx_http_cinematch_ws_end(ngx_http_cinematch_gen_t *g)
{
    ngx_http_request_t       *r = g->request;
    ngx_http_cinematch_ws_t  *ws = g->data;

    ws->generating = 0;

    ws->reply = ngx_pnalloc(ws->pool, 3 * g->len + 1);
    if (ws->reply == NULL) {
        return NGX_ERROR;
    }

    ws->reply_len = cm_utf8_sanitize((char *) ws->reply, (char *) g->reply,
                                     g->len);
    ws->reply[ws->reply_len] = '\0';

    ngx_http_cinematch_gen_reply_row(g, &ws->row);

    ws->values[2] = (char *) ws->reply;
    ws->values[3] = ws->row.status;
    ws->values[4] = ws->row.finish;
    ws->values[5] = ws->row.error[0] ? ws->row.error : NULL;
    ws->values[6] = ws->row.pt[0] ? ws->row.pt : NULL;
    ws->values[7] = ws->row.ct[0] ? ws->row.ct : NULL;
    ws->values[8] = ws->row.ttft[0] ? ws->row.ttft : NULL;
    ws->values[9] = ws->row.latency;
    ws->values[10] = ws->row.version_id ? ws->row.version : NULL;
    ws->values[11] = ws->request_id;

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
        12, ws->values, ngx_http_cinematch_ws_saved, ws))
    {
    case NGX_OK:
        return NGX_DONE;

    case NGX_ERROR:
        return NGX_ERROR;

    default:
        return ngx_http_cinematch_ws_saved(r, ws, NULL,
                                           "database unavailable");
    }
}


static ngx_int_t
ngx_http_cinematch_ws_saved(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    u_char                    *p;
    const char                *id;
    ngx_http_cinematch_gen_t  *g;
    ngx_http_cinematch_ws_t   *ws = data;

    g = &ws->gen;
    id = NULL;

    if (err == NULL && PQresultStatus(res) == PGRES_TUPLES_OK
        && PQntuples(res) == 1)
    {
        id = PQgetvalue(res, 0, 0);

    } else {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cinematch: reply of conversation %s not stored: %s",
                      ws->conv_id,
                      err != NULL ? err
                      : PQresultStatus(res) == PGRES_TUPLES_OK
                      ? "conversation deleted" : PQresultErrorMessage(res));
    }

    (void) ngx_http_cinematch_redis_commandf(NULL, NULL, NULL,
               NGX_HTTP_CINEMATCH_WS_EVENTS "type generation.finished"
               " conversation_id %s message_id %s user_id %s status %s"
               " finish_reason %s prompt_tokens %s completion_tokens %s"
               " first_token_ms %s latency_ms %s model_version %s"
               " request_id %s context_turns %s dropped_turns %s"
               " truncated %s",
               ws->conv_id, id != NULL ? id : "", ws->user_id, ws->row.status,
               ws->row.finish, ws->row.pt, ws->row.ct, ws->row.ttft, ws->row.latency,
               ws->row.version, ws->request_id, ws->row.turns,
               ws->row.dropped, ws->row.truncated);

    ws->message_id[0] = '\0';

    if (id != NULL) {
        p = ngx_cpymem(ws->message_id, id,
                       ngx_min(ngx_strlen(id), NGX_INT64_LEN));
        *p = '\0';
    }

    /* into the context before `done`, as for SSE: the next message may
     * come at once, on another worker */
    if (id != NULL && g->outcome != NGX_HTTP_CINEMATCH_GEN_LOST
        && g->outcome != NGX_HTTP_CINEMATCH_GEN_FAILED
        && ngx_http_cinematch_conv_push_reply(r, ws->conv_id, ws->reply,
                                              ws->reply_len,
                                              ngx_http_cinematch_ws_pushed,
                                              ws)
           == NGX_OK)
    {
        return NGX_DONE;
    }

    return ngx_http_cinematch_ws_answer(ws);
}


static ngx_int_t
ngx_http_cinematch_ws_pushed(ngx_http_request_t *r, void *data,
    redisReply *reply)
{
    ngx_http_cinematch_ws_t  *ws = data;

    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        ngx_http_cinematch_conv_drop_turns(ws->conv_id);
    }

    return ngx_http_cinematch_ws_answer(ws);
}


static ngx_int_t
ngx_http_cinematch_ws_answer(ngx_http_cinematch_ws_t *ws)
{
    const char                *id, *code, *message;
    json_int_t                 umid;
    ngx_http_cinematch_gen_t  *g;

    g = &ws->gen;
    id = ws->message_id[0] ? ws->message_id : NULL;

    if (ws->request->connection->error) {
        return ngx_http_cinematch_ws_idle(ws);   /* partial: stored */
    }

    umid = (json_int_t) ngx_atoof((u_char *) ws->user_message_id,
                                  ngx_strlen(ws->user_message_id));

    if ((g->outcome == NGX_HTTP_CINEMATCH_GEN_COMPLETE
         || g->outcome == NGX_HTTP_CINEMATCH_GEN_CANCELLED)
        && id != NULL)
    {
        (void) ngx_http_cinematch_ws_event(ws,
            json_pack("{s:s, s:I, s:I, s:s, s:{s:I, s:I}, s:o}",
                      "type", "done",
                      "message_id", (json_int_t) ngx_atoof((u_char *) id,
                                                         ngx_strlen(id)),
                      "user_message_id", umid,
                      "finish_reason", g->finish,
                      "usage", "prompt_tokens",
                      (json_int_t) g->prompt_tokens,
                      "completion_tokens",
                      (json_int_t) g->completion_tokens,
                      "context", g->context
                      ? json_pack("{s:I, s:I, s:b}",
                                  "turns", (json_int_t) g->context_turns,
                                  "dropped_turns",
                                  (json_int_t) g->dropped_turns,
                                  "truncated", (int) g->truncated)
                      : json_null()));

        return ngx_http_cinematch_ws_idle(ws);
    }

    if (g->outcome == NGX_HTTP_CINEMATCH_GEN_FAILED && g->status == CM_EINVAL)
    {
        code = "validation_failed";
        message = "rejected by the model server";

    } else {
        code = "unavailable";
        message = id == NULL ? "the reply could not be stored" : ws->row.error;
    }

    (void) ngx_http_cinematch_ws_event(ws,
        json_pack("{s:s, s:{s:s, s:s}, s:I, s:o}",
                  "type", "error",
                  "error", "code", code, "message", message,
                  "user_message_id", umid,
                  "message_id", id != NULL
                  ? json_integer(ngx_atoof((u_char *) id, ngx_strlen(id)))
                  : json_null()));

    return ngx_http_cinematch_ws_idle(ws);
}

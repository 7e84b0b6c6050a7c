
/*
 * ngx_http_cinematch_chat.h: one dialog generation on the inference daemon,
 * shared by the OpenAI-compatible endpoint (ngx_http_cinematch_api_chat.c)
 * and the conversation messages (ngx_http_cinematch_api_conversations.c).
 *
 * A generation is a CM_REQ_CHAT slot and, when streamed, an SSE writer.
 * Its owner validates the sampling fields and builds the payload with the
 * helpers below, starts it, and is called back:
 *
 *   text(g, p, n)  for every piece of text the daemon streamed (already
 *                  appended to g->reply when g->keep is set);
 *   end(g)         once, when the generation is over: g->outcome says how,
 *                  g->finish/usage/version what the daemon reported, and
 *                  the slot is already given back.  Its return value is
 *                  passed to ngx_http_finalize_request(); NGX_DONE when it
 *                  started another wait (a query) that finalizes itself.
 *
 * With g->save_on_gone a client that goes away (a failed write, or the
 * owner's read handler calling ngx_http_cinematch_gen_gone()) does not
 * terminate the request at once: the generation is cancelled, whatever
 * text the daemon had produced is collected, and end() runs with outcome
 * GONE so the owner can store it; c->error is set, so the request ends
 * when end()'s wait does.
 */


#ifndef _NGX_HTTP_CINEMATCH_CHAT_H_INCLUDED_
#define _NGX_HTTP_CINEMATCH_CHAT_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_cinematch.h"
#include "ngx_http_cinematch_infer.h"


#define NGX_HTTP_CINEMATCH_GEN_PARAMS    6
#define NGX_HTTP_CINEMATCH_GEN_TURNS     64
#define NGX_HTTP_CINEMATCH_GEN_CONTENT   8192     /* bytes per turn */
#define NGX_HTTP_CINEMATCH_GEN_REPLY     (256 * 1024)


typedef struct ngx_http_cinematch_gen_s  ngx_http_cinematch_gen_t;

typedef ngx_int_t (*ngx_http_cinematch_gen_text_pt)(
    ngx_http_cinematch_gen_t *g, u_char *text, size_t len);
typedef ngx_int_t (*ngx_http_cinematch_gen_end_pt)(
    ngx_http_cinematch_gen_t *g);


typedef enum {
    NGX_HTTP_CINEMATCH_GEN_RUNNING = 0,
    NGX_HTTP_CINEMATCH_GEN_COMPLETE,     /* finish_reason stop or length */
    NGX_HTTP_CINEMATCH_GEN_FAILED,       /* the daemon refused or failed */
    NGX_HTTP_CINEMATCH_GEN_LOST,         /* the daemon went away */
    NGX_HTTP_CINEMATCH_GEN_GONE,         /* the client went away */
    NGX_HTTP_CINEMATCH_GEN_CANCELLED     /* stopped by a cancel request
                                            (finish_reason "cancelled") */
} ngx_http_cinematch_gen_outcome_e;


struct ngx_http_cinematch_gen_s {
    ngx_http_request_t                *request;
    ngx_http_cinematch_infer_req_t    *ir;
    ngx_http_cinematch_sse_t           sse;       /* when stream */

    ngx_http_cinematch_gen_text_pt     text;
    ngx_http_cinematch_gen_end_pt      end;
    void                              *data;      /* the owner's state */
    ngx_str_t                          tag;       /* a conversation id: a
                                                     cancel request finds
                                                     the slot by it */

    u_char                            *rec;       /* one ring record */
    uint32_t                           rec_cap;

    u_char                            *reply;     /* the text so far, when
                                                     keep */
    size_t                             len;
    size_t                             cap;

    /* filled before end() */
    ngx_http_cinematch_gen_outcome_e   outcome;
    int32_t                            status;    /* slot status (CM_E*) */
    char                               finish[12]; /* "stop", "length",
                                                      "cancelled" or "" */
    int64_t                            prompt_tokens;
    int64_t                            completion_tokens;
    char                               version[32];

    /* what the daemon made of the context (when context is set): turns
     * in the prompt, the oldest turns it left out to fit the model, and
     * whether the newest turn itself was cut to its tail */
    int64_t                            context_turns;
    int64_t                            dropped_turns;

    ngx_msec_t                         started;
    ngx_msec_t                         first_token;   /* 0: none yet */
    ngx_msec_t                         ended;

    unsigned                           stream:1;
    unsigned                           keep:1;
    unsigned                           save_on_gone:1;
    unsigned                           finished:1;
    unsigned                           context:1;
    unsigned                           truncated:1;
};


/*
 * Sampling fields of a request body into the CM_REQ_CHAT params.  On a bad
 * value returns NGX_ERROR with *field and *message set for a 422.
 */
ngx_int_t ngx_http_cinematch_gen_sampling(json_t *body,
    uint64_t params[NGX_HTTP_CINEMATCH_GEN_PARAMS], const char **field,
    const char **message);

/*
 * Turns (oldest first) and the request's "stop" (absent, a string or up to
 * 4 strings) into the CM_REQ_CHAT payload; the oldest turns are dropped
 * when they do not fit a slot.  NGX_ERROR with *field set ("stop" or
 * "messages") when invalid or when not even the last turn fits.
 */
ngx_int_t ngx_http_cinematch_gen_payload(ngx_pool_t *pool,
    const ngx_str_t *turns, size_t nturns, json_t *stop, ngx_str_t *out,
    const char **field);

/*
 * Submit; when g->stream, also send the event-stream headers (the caller
 * may then write its first event and flush).  g->request, text, end, data,
 * stream, keep, save_on_gone and tag are set by the caller.  Returns NGX_OK
 * (the request now waits: return NGX_DONE), NGX_BUSY or NGX_DECLINED (no
 * slot, no daemon: answer 503), or an error to return.
 */
ngx_int_t ngx_http_cinematch_gen_start(ngx_http_request_t *r,
    ngx_http_cinematch_gen_t *g, const uint64_t *params, ngx_str_t *payload);

/*
 * Why gen_start() answered NGX_BUSY or NGX_DECLINED, for the client: no
 * slot, no daemon, or daemons that serve no dialog model (then the text
 * says how to get one: chat is the one feature that needs a corpus).
 */
#define NGX_HTTP_CINEMATCH_NO_DIALOG_MODEL                                   \
    "no dialog model is loaded yet: add a dialogue corpus (the Cornell "     \
    "Movie-Dialogs files in $CINEMATCH_DATA/cornell, then ./build.sh run "   \
    "trains one in the background), or run `cinematch ingest dialogs "       \
    "--data DIR` and `cinematch train dialog --from-db`; a model in "        \
    "training is served once promoted (GET /ready shows its progress)"

const char *ngx_http_cinematch_gen_unavailable(ngx_int_t rc);

/* The client went away (see above); returns like end(). */
ngx_int_t ngx_http_cinematch_gen_gone(ngx_http_cinematch_gen_t *g);

/* How a generation ended, as the columns of the stored assistant message
 * (conversation messages over SSE and WebSocket store the same row). */
typedef struct {
    char                          status[12];    /* complete|partial|error */
    char                          finish[8];
    char                          error[64];
    char                          pt[NGX_INT64_LEN + 1];    /* "" unknown */
    char                          ct[NGX_INT64_LEN + 1];
    char                          ttft[NGX_INT64_LEN + 1];
    char                          latency[NGX_INT64_LEN + 1];
    char                          version[32];
    char                          turns[NGX_INT64_LEN + 1];   /* context, */
    char                          dropped[NGX_INT64_LEN + 1]; /* "" when */
    char                          truncated[6];               /* unknown */
    unsigned                      version_id:1;  /* version is an integer */
} ngx_http_cinematch_reply_row_t;

void ngx_http_cinematch_gen_reply_row(ngx_http_cinematch_gen_t *g,
    ngx_http_cinematch_reply_row_t *row);

/* g's context report as JSON text, `{"turns":..,"dropped_turns":..,
 * "truncated":..}`, or "null" when the daemon sent none; p has room for
 * NGX_HTTP_CINEMATCH_GEN_CONTEXT_LEN bytes.  Returns the end. */
#define NGX_HTTP_CINEMATCH_GEN_CONTEXT_LEN  (64 + 2 * NGX_INT64_LEN)
u_char *ngx_http_cinematch_gen_context(ngx_http_cinematch_gen_t *g,
    u_char *p);


#if (NGX_HTTP_CINEMATCH_CONVERSATIONS)

/* ngx_http_cinematch_api_conversations.c: the caller's conversations */
extern ngx_module_t  ngx_http_cinematch_export_module;

ngx_int_t ngx_http_cinematch_conv_create_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_conv_list_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_conv_get_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_conv_update_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_conv_delete_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_conv_export_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_msg_create_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_conv_cancel_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_feedback_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);

/* The context cache of a conversation (Redis cinematch:conv:<id>:turns,
 * the last NGX_HTTP_CINEMATCH_CONV_TURNS turns), shared by the SSE and
 * WebSocket paths; fire and forget. */
#define NGX_HTTP_CINEMATCH_CONV_TURNS      20
void ngx_http_cinematch_conv_push_turn(const char *conv_id, u_char *text,
    size_t len);
/* The same for a reply, answered: handler runs once Redis has applied the
 * append (the EXPIRE after it answered; NULL reply: it may not have, and
 * the caller drops the list), so the reply is in the context before the
 * client hears that it is done and sends the next message, maybe to
 * another worker.  NGX_OK: wait (return NGX_DONE); anything else: nothing
 * to wait for (Redis is down, or the text is empty), answer now. */
ngx_int_t ngx_http_cinematch_conv_push_reply(ngx_http_request_t *r,
    const char *conv_id, u_char *text, size_t len,
    ngx_http_cinematch_redis_handler_pt handler, void *data);
void ngx_http_cinematch_conv_drop_turns(const char *conv_id);
void ngx_http_cinematch_conv_cache_turns(ngx_pool_t *pool,
    const char *conv_id, ngx_str_t *turns, size_t n);

#endif


#if (NGX_HTTP_CINEMATCH_WS)

/* ngx_http_cinematch_ws.c: GET /api/v1/ws/chat */
ngx_int_t ngx_http_cinematch_ws_chat_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);

#endif


#endif /* _NGX_HTTP_CINEMATCH_CHAT_H_INCLUDED_ */

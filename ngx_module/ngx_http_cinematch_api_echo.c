/*
 * ngx_http_cinematch_api_echo.c: internal endpoints that prove the spine,
 * enabled only by `cinematch_echo on;` in a location.
 *
 *   POST /internal/echo                        body → daemon → same bytes
 *   POST /internal/echo/stream?chunks=N&delay_ms=D
 *        SSE: N × "event: chunk" carrying the body, then "event: done";
 *        "event: error" when the daemon is lost mid-stream.
 *
 * The stream writer is the pattern the chat endpoints reuse: headers go
 * out at once, each READY drains the slot's ring into buffers recycled
 * through free/busy chains (memory stays flat however long the stream),
 * and while the client is slow the ring is left full so the daemon pauses
 * the sequence instead of nginx buffering it.
 */
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_cinematch.h"
#include "ngx_http_cinematch_infer.h"


#define NGX_HTTP_CINEMATCH_ECHO_BUF  8192


typedef struct {
    ngx_http_cinematch_infer_req_t  *ir;
    ngx_chain_t                     *free;
    ngx_chain_t                     *busy;
    u_char                          *rec;       /* one ring record */
    uint32_t                         rec_cap;
    ngx_uint_t                       chunks;
    unsigned                         finished:1;
} ngx_http_cinematch_echo_stream_t;


static ngx_int_t ngx_http_cinematch_echo_submit_error(ngx_http_request_t *r,
    ngx_int_t rc);
static void ngx_http_cinematch_echo_ready(ngx_http_cinematch_infer_req_t *ir,
    ngx_int_t rc);
static void ngx_http_cinematch_echo_stream_ready(
    ngx_http_cinematch_infer_req_t *ir, ngx_int_t rc);
static void ngx_http_cinematch_echo_stream_write(ngx_http_request_t *r);
static ngx_int_t ngx_http_cinematch_echo_stream_drain(ngx_http_request_t *r,
    ngx_http_cinematch_echo_stream_t *es, ngx_int_t lost);
static size_t ngx_http_cinematch_echo_escape(u_char *dst, u_char *src,
    size_t len);
static ngx_int_t ngx_http_cinematch_echo_arg(ngx_http_request_t *r,
    char *name, size_t len, ngx_int_t def, ngx_int_t lo, ngx_int_t hi,
    ngx_int_t *out);


static ngx_str_t  ngx_http_cinematch_octet = ngx_string("application/octet-stream");


ngx_int_t
ngx_http_cinematch_echo_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    ngx_int_t                        rc;
    ngx_http_cinematch_infer_req_t  *ir;

    rc = ngx_http_cinematch_infer_submit(r, CM_REQ_ECHO, NULL, 0,
                                         ctx->body.data, ctx->body.len,
                                         ngx_http_cinematch_echo_ready, ctx,
                                         &ir);
    if (rc != NGX_OK) {
        return ngx_http_cinematch_echo_submit_error(r, rc);
    }

    ngx_http_cinematch_wait(r);

    return NGX_DONE;
}


static ngx_int_t
ngx_http_cinematch_echo_submit_error(ngx_http_request_t *r, ngx_int_t rc)
{
    /* send_error adds Retry-After to every 503 */

    if (rc == NGX_BUSY) {
        return ngx_http_cinematch_send_error(r,
                   NGX_HTTP_SERVICE_UNAVAILABLE, "unavailable",
                   "all inference slots are busy, retry shortly");
    }

    if (rc == NGX_DECLINED) {
        return ngx_http_cinematch_send_error(r,
                   NGX_HTTP_SERVICE_UNAVAILABLE, "unavailable",
                   "no inference daemon is available");
    }

    return ngx_http_cinematch_send_error(r, NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
               "payload_too_large", "payload does not fit an inference slot");
}


static void
ngx_http_cinematch_echo_ready(ngx_http_cinematch_infer_req_t *ir,
    ngx_int_t rc)
{
    u_char              *p;
    uint32_t             len, state;
    ngx_http_request_t  *r = ir->request;

    if (rc == NGX_ERROR) {
        rc = ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                 "unavailable", "the inference daemon went away");
        ngx_http_cinematch_finish(r, rc);
        return;
    }

    ngx_http_cinematch_infer_rearm(ir);

    state = cm_ipc_slot_state(ir->slot);

    if (state != CM_SLOT_DONE && state != CM_SLOT_ERROR) {
        return;   /* not final yet */
    }

    if (state == CM_SLOT_ERROR) {
        rc = ir->slot->status == CM_EAGAIN
             ? ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                   "unavailable", "the inference daemon is draining")
             : ngx_http_cinematch_send_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request", "the inference daemon refused it");
        ngx_http_cinematch_infer_release(ir);
        ngx_http_cinematch_finish(r, rc);
        return;
    }

    /* copy out before the slot goes back to the pool */
    len = ir->slot->res_len;

    if (len > ir->seg->hdr->res_cap) {
        ngx_http_cinematch_infer_release(ir);
        rc = ngx_http_cinematch_send_error(r, NGX_HTTP_BAD_GATEWAY,
                 "bad_gateway", "malformed answer from the inference daemon");
        ngx_http_cinematch_finish(r, rc);
        return;
    }

    p = ngx_pnalloc(r->pool, len + 1);
    if (p == NULL) {
        ngx_http_cinematch_infer_release(ir);
        ngx_http_cinematch_finish(r, NGX_HTTP_INTERNAL_SERVER_ERROR);
        return;
    }

    ngx_memcpy(p, cm_ipc_slot_res(ir->seg, ir->slot), len);
    ngx_http_cinematch_infer_release(ir);

    rc = ngx_http_cinematch_send_buf(r, NGX_HTTP_OK, &ngx_http_cinematch_octet,
                                     p, len);
    ngx_http_cinematch_finish(r, rc);
}


static ngx_int_t
ngx_http_cinematch_echo_arg(ngx_http_request_t *r, char *name, size_t len,
    ngx_int_t def, ngx_int_t lo, ngx_int_t hi, ngx_int_t *out)
{
    ngx_str_t  v;

    if (ngx_http_arg(r, (u_char *) name, len, &v) != NGX_OK) {
        *out = def;
        return NGX_OK;
    }

    *out = ngx_atoi(v.data, v.len);

    return (*out == NGX_ERROR || *out < lo || *out > hi) ? NGX_ERROR : NGX_OK;
}


ngx_int_t
ngx_http_cinematch_echo_stream_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    uint64_t                           params[2];
    ngx_int_t                          rc, chunks, delay;
    ngx_table_elt_t                   *h;
    ngx_http_cinematch_echo_stream_t  *es;

    if (ngx_http_cinematch_echo_arg(r, "chunks", 6, 10, 1, 10000, &chunks)
        != NGX_OK
        || ngx_http_cinematch_echo_arg(r, "delay_ms", 8, 0, 0, 10000, &delay)
           != NGX_OK)
    {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_BAD_REQUEST,
                   "invalid_request",
                   "chunks must be 1..10000 and delay_ms 0..10000");
    }

    es = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_echo_stream_t));
    if (es == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    params[0] = (uint64_t) chunks;
    params[1] = (uint64_t) delay * 1000;

    rc = ngx_http_cinematch_infer_submit(r, CM_REQ_ECHO_STREAM, params, 2,
                                         ctx->body.data, ctx->body.len,
                                         ngx_http_cinematch_echo_stream_ready,
                                         es, &es->ir);
    if (rc != NGX_OK) {
        return ngx_http_cinematch_echo_submit_error(r, rc);
    }

    ctx->data = es;   /* the write handler finds the stream here */
    es->rec_cap = es->ir->seg->hdr->ring_cap;
    es->rec = ngx_pnalloc(r->pool, es->rec_cap);
    if (es->rec == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = -1;
    ngx_str_set(&r->headers_out.content_type, "text/event-stream");
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    h->hash = 1;
    ngx_str_set(&h->key, "Cache-Control");
    ngx_str_set(&h->value, "no-cache");

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
    h->hash = 1;
    ngx_str_set(&h->key, "X-Accel-Buffering");
    ngx_str_set(&h->value, "no");

    rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc;
    }

    /* a client that goes away finalizes the request; the pool cleanup
     * then cancels the daemon's work */
    r->read_event_handler = ngx_http_test_reading;
    r->write_event_handler = ngx_http_cinematch_echo_stream_write;

    ngx_http_cinematch_wait(r);

    return NGX_DONE;
}


static void
ngx_http_cinematch_echo_stream_ready(ngx_http_cinematch_infer_req_t *ir,
    ngx_int_t rc)
{
    ngx_http_request_t                *r = ir->request;
    ngx_connection_t                  *c = r->connection;
    ngx_http_cinematch_echo_stream_t  *es = ir->data;

    if (es->finished) {
        return;
    }

    rc = ngx_http_cinematch_echo_stream_drain(r, es, rc == NGX_ERROR);

    if (rc != NGX_DONE) {
        /* finalizes and runs posted requests; r may be gone after it
         * (regression: ASan caught a read of r->connection here) */
        ngx_http_cinematch_finish(r, rc);
        return;
    }

    ngx_http_run_posted_requests(c);
}


static void
ngx_http_cinematch_echo_stream_write(ngx_http_request_t *r)
{
    ngx_int_t                          rc;
    ngx_http_cinematch_ctx_t          *ctx;
    ngx_http_cinematch_echo_stream_t  *es;

    ctx = ngx_http_get_module_ctx(r, ngx_http_cinematch_module);
    es = ctx != NULL ? ctx->data : NULL;

    if (es == NULL || es->finished) {
        return;
    }

    if (r->connection->write->timedout) {
        r->connection->timedout = 1;
        ngx_http_cinematch_finish(r, NGX_HTTP_REQUEST_TIME_OUT);
        return;
    }

    rc = ngx_http_output_filter(r, NULL);
    if (rc == NGX_ERROR) {
        ngx_http_cinematch_finish(r, NGX_ERROR);
        return;
    }

    ngx_chain_update_chains(r->pool, &es->free, &es->busy, NULL,
                            (ngx_buf_tag_t) &ngx_http_cinematch_module);

    rc = ngx_http_cinematch_echo_stream_drain(r, es, es->ir->seg == NULL);
    if (rc != NGX_DONE) {
        ngx_http_cinematch_finish(r, rc);
    }
}


/*
 * Move complete ring records into SSE events.  Returns NGX_DONE to keep
 * waiting, or the code to finalize with once the stream has ended.
 */
static ngx_int_t
ngx_http_cinematch_echo_stream_drain(ngx_http_request_t *r,
    ngx_http_cinematch_echo_stream_t *es, ngx_int_t lost)
{
    int64_t                          n;
    uint32_t                         state;
    ngx_int_t                        rc;
    ngx_buf_t                       *b;
    ngx_chain_t                     *out, **ll, *cl;
    ngx_http_cinematch_infer_req_t  *ir = es->ir;
    size_t                           need;

    static u_char  ev_chunk[] = "event: chunk\ndata: {\"text\":\"";
    static u_char  ev_end[] = "\"}\n\n";

    out = NULL;
    ll = &out;
    b = NULL;
    state = CM_SLOT_RUNNING;

    /* the client is not keeping up: leave the ring full, the daemon
     * pauses this stream until the write handler calls us again */
    if (es->busy != NULL && !lost) {
        return NGX_DONE;
    }

    if (!lost) {
        ngx_http_cinematch_infer_rearm(ir);
        state = cm_ipc_slot_state(ir->slot);

        for ( ;; ) {
            n = cm_ipc_ring_get(ir->seg, ir->slot, es->rec, es->rec_cap);

            if (n == CM_EAGAIN) {
                break;
            }

            if (n < 0) {
                lost = 1;   /* garbage in the ring: end like a lost daemon */
                break;
            }

            need = sizeof(ev_chunk) - 1 + (size_t) n * 6 + sizeof(ev_end) - 1;

            if (b == NULL || (size_t) (b->end - b->last) < need) {
                cl = ngx_chain_get_free_buf(r->pool, &es->free);
                if (cl == NULL) {
                    return NGX_ERROR;
                }

                b = cl->buf;

                if (b->start == NULL
                    || (size_t) (b->end - b->start)
                       < ngx_max(need, NGX_HTTP_CINEMATCH_ECHO_BUF))
                {
                    b->start = ngx_palloc(r->pool,
                                   ngx_max(need, NGX_HTTP_CINEMATCH_ECHO_BUF));
                    if (b->start == NULL) {
                        return NGX_ERROR;
                    }
                    b->end = b->start
                             + ngx_max(need, NGX_HTTP_CINEMATCH_ECHO_BUF);
                }

                b->pos = b->start;
                b->last = b->start;
                b->memory = 1;
                b->flush = 1;
                b->tag = (ngx_buf_tag_t) &ngx_http_cinematch_module;

                *ll = cl;
                ll = &cl->next;
            }

            b->last = ngx_cpymem(b->last, ev_chunk, sizeof(ev_chunk) - 1);
            b->last += ngx_http_cinematch_echo_escape(b->last, es->rec,
                                                      (size_t) n);
            b->last = ngx_cpymem(b->last, ev_end, sizeof(ev_end) - 1);
            es->chunks++;
        }
    }

    if (lost || state == CM_SLOT_DONE || state == CM_SLOT_ERROR) {
        /* final state seen after the last drain: nothing more will come */
        cl = ngx_chain_get_free_buf(r->pool, &es->free);
        if (cl == NULL) {
            return NGX_ERROR;
        }

        b = cl->buf;
        b->start = ngx_palloc(r->pool, 256);
        if (b->start == NULL) {
            return NGX_ERROR;
        }
        b->pos = b->start;
        b->end = b->start + 256;
        b->memory = 1;
        b->last_buf = 1;
        b->tag = (ngx_buf_tag_t) &ngx_http_cinematch_module;

        if (lost || state == CM_SLOT_ERROR) {
            b->last = ngx_sprintf(b->start,
                "event: error\ndata: {\"error\":{\"code\":\"unavailable\","
                "\"message\":\"%s\"}}\n\n",
                lost ? "the inference daemon went away"
                     : "the inference daemon failed the request");
        } else {
            b->last = ngx_sprintf(b->start,
                                  "event: done\ndata: {\"chunks\":%ui}\n\n",
                                  es->chunks);
        }

        *ll = cl;
        es->finished = 1;
        ngx_http_cinematch_infer_release(ir);
    }

    if (out == NULL) {
        return NGX_DONE;
    }

    rc = ngx_http_output_filter(r, out);

    ngx_chain_update_chains(r->pool, &es->free, &es->busy, &out,
                            (ngx_buf_tag_t) &ngx_http_cinematch_module);

    if (rc == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (es->finished) {
        /* NGX_AGAIN here lets the core writer flush the tail */
        return rc;
    }

    return NGX_DONE;
}


/* JSON string body escaping; dst must hold 6 × len bytes. */
static size_t
ngx_http_cinematch_echo_escape(u_char *dst, u_char *src, size_t len)
{
    u_char  *p = dst;
    size_t   i;

    static u_char  hex[] = "0123456789abcdef";

    for (i = 0; i < len; i++) {
        if (src[i] == '"' || src[i] == '\\') {
            *p++ = '\\';
            *p++ = src[i];

        } else if (src[i] < 0x20 || src[i] == 0x7f) {
            *p++ = '\\';
            *p++ = 'u';
            *p++ = '0';
            *p++ = '0';
            *p++ = hex[src[i] >> 4];
            *p++ = hex[src[i] & 0xf];

        } else {
            *p++ = src[i];
        }
    }

    return p - dst;
}

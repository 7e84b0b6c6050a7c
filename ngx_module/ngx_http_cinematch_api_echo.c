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




typedef struct {
    ngx_http_cinematch_infer_req_t  *ir;
    ngx_http_cinematch_sse_t         sse;
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

    rc = ngx_http_cinematch_sse_start(r, &es->sse);
    if (rc != NGX_OK) {
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

    if (ngx_http_cinematch_sse_resume(&es->sse) == NGX_ERROR) {
        ngx_http_cinematch_finish(r, NGX_ERROR);
        return;
    }

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
    u_char                          *p;
    int64_t                          n;
    uint32_t                         state;
    ngx_int_t                        rc;
    ngx_http_cinematch_infer_req_t  *ir = es->ir;

    static u_char  ev_chunk[] = "event: chunk\ndata: {\"text\":\"";
    static u_char  ev_end[] = "\"}\n\n";

    /* the client is not keeping up: leave the ring full, the daemon
     * pauses this stream until the write handler calls us again */
    if (ngx_http_cinematch_sse_blocked(&es->sse) && !lost) {
        return NGX_DONE;
    }

    state = CM_SLOT_RUNNING;

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

            p = ngx_http_cinematch_sse_reserve(&es->sse,
                    sizeof(ev_chunk) + (size_t) n * 6 + sizeof(ev_end));
            if (p == NULL) {
                return NGX_ERROR;
            }

            p = ngx_cpymem(p, ev_chunk, sizeof(ev_chunk) - 1);
            p = ngx_http_cinematch_json_text(p, es->rec, (size_t) n);
            p = ngx_cpymem(p, ev_end, sizeof(ev_end) - 1);
            ngx_http_cinematch_sse_commit(&es->sse, p);
            es->chunks++;
        }
    }

    if (lost || state == CM_SLOT_DONE || state == CM_SLOT_ERROR) {
        /* final state seen after the last drain: nothing more will come */
        p = ngx_http_cinematch_sse_reserve(&es->sse, 256);
        if (p == NULL) {
            return NGX_ERROR;
        }

        if (lost || state == CM_SLOT_ERROR) {
            p = ngx_sprintf(p,
                "event: error\ndata: {\"error\":{\"code\":\"unavailable\","
                "\"message\":\"%s\"}}\n\n",
                lost ? "the inference daemon went away"
                     : "the inference daemon failed the request");
        } else {
            p = ngx_sprintf(p, "event: done\ndata: {\"chunks\":%ui}\n\n",
                            es->chunks);
        }

        ngx_http_cinematch_sse_commit(&es->sse, p);
        es->finished = 1;
        ngx_http_cinematch_infer_release(ir);

        /* NGX_AGAIN here lets the core writer flush the tail */
        return ngx_http_cinematch_sse_flush(&es->sse, 1);
    }

    rc = ngx_http_cinematch_sse_flush(&es->sse, 0);

    return rc == NGX_ERROR ? NGX_ERROR : NGX_DONE;
}

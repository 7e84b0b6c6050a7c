/*
 * ngx_http_cinematch_sse.c: a server-sent-events writer for long streams.
 *
 * Buffers are recycled through free/busy chains (ngx_chain_update_chains),
 * so a stream of any length keeps the request pool flat; events are
 * appended into the current buffer and flushed together; a comment line
 * goes out every 15 s of silence so proxies keep the connection; and
 * `blocked` tells the producer to stop draining its source while the
 * client is slow, which pushes backpressure back to the model.
 */
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_cinematch.h"


#define NGX_HTTP_CINEMATCH_SSE_BUF        8192
#define NGX_HTTP_CINEMATCH_SSE_KEEPALIVE  15000


static void ngx_http_cinematch_sse_keepalive(ngx_event_t *ev);
static void ngx_http_cinematch_sse_cleanup(void *data);


u_char *
ngx_http_cinematch_json_text(u_char *dst, const u_char *src, size_t len)
{
    size_t   i;

    static u_char  hex[] = "0123456789abcdef";

    for (i = 0; i < len; i++) {
        switch (src[i]) {

        case '"':
        case '\\':
            *dst++ = '\\';
            *dst++ = src[i];
            break;

        case '\n':
            *dst++ = '\\';
            *dst++ = 'n';
            break;

        case '\r':
            *dst++ = '\\';
            *dst++ = 'r';
            break;

        case '\t':
            *dst++ = '\\';
            *dst++ = 't';
            break;

        default:
            if (src[i] < 0x20 || src[i] == 0x7f) {
                *dst++ = '\\';
                *dst++ = 'u';
                *dst++ = '0';
                *dst++ = '0';
                *dst++ = hex[src[i] >> 4];
                *dst++ = hex[src[i] & 0xf];

            } else {
                *dst++ = src[i];
            }
        }
    }

    return dst;
}


ngx_int_t
ngx_http_cinematch_sse_start(ngx_http_request_t *r,
    ngx_http_cinematch_sse_t *sse)
{
    ngx_int_t            rc;
    ngx_table_elt_t     *h;
    ngx_pool_cleanup_t  *cln;

    ngx_memzero(sse, sizeof(ngx_http_cinematch_sse_t));
    sse->request = r;
    sse->last = &sse->out;

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    cln->handler = ngx_http_cinematch_sse_cleanup;
    cln->data = sse;

    r->headers_out.status = NGX_HTTP_OK;
    r->headers_out.content_length_n = -1;
    ngx_str_set(&r->headers_out.content_type, "text/event-stream");
    r->headers_out.content_type_len = r->headers_out.content_type.len;

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }
    h->hash = 1;
    ngx_str_set(&h->key, "Cache-Control");
    ngx_str_set(&h->value, "no-cache");

    h = ngx_list_push(&r->headers_out.headers);
    if (h == NULL) {
        return NGX_ERROR;
    }
    h->hash = 1;
    ngx_str_set(&h->key, "X-Accel-Buffering");
    ngx_str_set(&h->value, "no");

    rc = ngx_http_send_header(r);
    if (rc == NGX_ERROR || rc > NGX_OK || r->header_only) {
        return rc == NGX_OK ? NGX_ERROR : rc;
    }

    sse->keepalive.handler = ngx_http_cinematch_sse_keepalive;
    sse->keepalive.data = sse;
    sse->keepalive.log = r->connection->log;
    sse->keepalive.cancelable = 1;
    ngx_add_timer(&sse->keepalive, NGX_HTTP_CINEMATCH_SSE_KEEPALIVE);

    return NGX_OK;
}


u_char *
ngx_http_cinematch_sse_reserve(ngx_http_cinematch_sse_t *sse, size_t need)
{
    size_t               size;
    ngx_buf_t           *b = sse->buf;
    ngx_chain_t         *cl;
    ngx_http_request_t  *r = sse->request;

    if (b != NULL && (size_t) (b->end - b->last) >= need) {
        return b->last;
    }

    cl = ngx_chain_get_free_buf(r->pool, &sse->free);
    if (cl == NULL) {
        return NULL;
    }

    b = cl->buf;
    size = ngx_max(need, NGX_HTTP_CINEMATCH_SSE_BUF);

    if (b->start == NULL || (size_t) (b->end - b->start) < size) {
        /* recycled buffers are reused as they are; only a bigger need
         * than ever before allocates */
        b->start = ngx_palloc(r->pool, size);
        if (b->start == NULL) {
            return NULL;
        }
        b->end = b->start + size;
    }

    b->pos = b->start;
    b->last = b->start;
    b->memory = 1;
    b->flush = 1;
    b->last_buf = 0;
    b->tag = (ngx_buf_tag_t) &ngx_http_cinematch_module;

    *sse->last = cl;
    sse->last = &cl->next;
    sse->buf = b;

    return b->last;
}


void
ngx_http_cinematch_sse_commit(ngx_http_cinematch_sse_t *sse, u_char *last)
{
    sse->buf->last = last;
}


ngx_int_t
ngx_http_cinematch_sse_flush(ngx_http_cinematch_sse_t *sse,
    ngx_uint_t last_buf)
{
    ngx_int_t            rc;
    ngx_http_request_t  *r = sse->request;

    if (last_buf) {
        if (ngx_http_cinematch_sse_reserve(sse, 0) == NULL) {
            return NGX_ERROR;
        }
        sse->buf->last_buf = 1;
        sse->done = 1;

        if (sse->keepalive.timer_set) {
            ngx_del_timer(&sse->keepalive);
        }
    }

    if (sse->out == NULL) {
        return NGX_OK;
    }

    rc = ngx_http_output_filter(r, sse->out);

    ngx_chain_update_chains(r->pool, &sse->free, &sse->busy, &sse->out,
                            (ngx_buf_tag_t) &ngx_http_cinematch_module);

    sse->out = NULL;
    sse->last = &sse->out;
    sse->buf = NULL;

    if (!sse->done && rc != NGX_ERROR) {
        /* silence is measured from the last write */
        ngx_add_timer(&sse->keepalive, NGX_HTTP_CINEMATCH_SSE_KEEPALIVE);
    }

    return rc;
}


ngx_int_t
ngx_http_cinematch_sse_resume(ngx_http_cinematch_sse_t *sse)
{
    ngx_int_t            rc;
    ngx_http_request_t  *r = sse->request;

    rc = ngx_http_output_filter(r, NULL);

    ngx_chain_update_chains(r->pool, &sse->free, &sse->busy, NULL,
                            (ngx_buf_tag_t) &ngx_http_cinematch_module);

    return rc;
}


ngx_uint_t
ngx_http_cinematch_sse_blocked(ngx_http_cinematch_sse_t *sse)
{
    return sse->busy != NULL;
}


static void
ngx_http_cinematch_sse_keepalive(ngx_event_t *ev)
{
    u_char                    *p;
    ngx_http_cinematch_sse_t  *sse = ev->data;

    static u_char  comment[] = ": keep-alive\n\n";

    if (sse->done) {
        return;
    }

    p = ngx_http_cinematch_sse_reserve(sse, sizeof(comment) - 1);
    if (p == NULL) {
        ngx_http_cinematch_finish(sse->request, NGX_ERROR);
        return;
    }

    ngx_http_cinematch_sse_commit(sse, ngx_cpymem(p, comment,
                                                  sizeof(comment) - 1));

    if (ngx_http_cinematch_sse_flush(sse, 0) == NGX_ERROR) {
        ngx_http_cinematch_finish(sse->request, NGX_ERROR);
    }
}


static void
ngx_http_cinematch_sse_cleanup(void *data)
{
    ngx_http_cinematch_sse_t *sse = data;

    if (sse->keepalive.timer_set) {
        ngx_del_timer(&sse->keepalive);
    }
}

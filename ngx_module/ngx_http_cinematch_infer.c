/*
 * ngx_http_cinematch_infer.c: doorbell connections to the inference
 * daemons, slot claims and READY dispatch.  See the header for the model.
 */
#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <sys/un.h>

#include "ngx_http_cinematch_infer.h"


#define NGX_HTTP_CINEMATCH_INFER_BACKOFF_MIN   50
#define NGX_HTTP_CINEMATCH_INFER_BACKOFF_MAX   500
#define NGX_HTTP_CINEMATCH_INFER_WATCH         250


typedef struct {
    ngx_str_t                          socket;     /* NUL-terminated */
    ngx_str_t                          shm;        /* NUL-terminated */
    cm_ipc_seg_t                       seg;
    ngx_connection_t                  *conn;
    ngx_event_t                        reconnect;
    ngx_msec_t                         backoff;
    ngx_http_cinematch_infer_req_t   **inflight;   /* by slot index */
    uint32_t                           inflight_cap;
    uint32_t                           first;
    uint32_t                           count;
    uint32_t                           hint;
    u_char                             rbuf[sizeof(cm_ipc_msg_t)];
    size_t                             rlen;
    ngx_uint_t                         logged_down;
} ngx_http_cinematch_infer_daemon_t;


static void ngx_http_cinematch_infer_connect(
    ngx_http_cinematch_infer_daemon_t *d);
static void ngx_http_cinematch_infer_reconnect_handler(ngx_event_t *ev);
static void ngx_http_cinematch_infer_watch_handler(ngx_event_t *ev);
static void ngx_http_cinematch_infer_read_handler(ngx_event_t *ev);
static void ngx_http_cinematch_infer_dummy_handler(ngx_event_t *ev);
static void ngx_http_cinematch_infer_lost(
    ngx_http_cinematch_infer_daemon_t *d, const char *why);
static ngx_int_t ngx_http_cinematch_infer_send(
    ngx_http_cinematch_infer_daemon_t *d, uint32_t op, uint32_t slot);
static void ngx_http_cinematch_infer_cleanup(void *data);


static ngx_http_cinematch_infer_daemon_t  *ngx_http_cinematch_infer_daemons;
static ngx_uint_t                          ngx_http_cinematch_infer_n;
static ngx_event_t                         ngx_http_cinematch_infer_watch;
static ngx_uint_t                          ngx_http_cinematch_infer_busy;
static ngx_log_t                          *ngx_http_cinematch_infer_log;
static ngx_uint_t                          ngx_http_cinematch_infer_exiting;


ngx_int_t
ngx_http_cinematch_infer_init_process(ngx_cycle_t *cycle,
    ngx_http_cinematch_main_conf_t *cmcf)
{
    ngx_uint_t                          i;
    ngx_array_t                        *daemons = cmcf->infer;
    ngx_http_cinematch_infer_conf_t    *conf;
    ngx_http_cinematch_infer_daemon_t  *d;

    ngx_http_cinematch_infer_exiting = 0;

    if (daemons == NULL || daemons->nelts == 0) {
        ngx_http_cinematch_infer_n = 0;
        return NGX_OK;
    }

    ngx_http_cinematch_infer_log = cycle->log;
    ngx_http_cinematch_infer_n = daemons->nelts;
    ngx_http_cinematch_infer_daemons = ngx_pcalloc(cycle->pool,
        daemons->nelts * sizeof(ngx_http_cinematch_infer_daemon_t));
    if (ngx_http_cinematch_infer_daemons == NULL) {
        return NGX_ERROR;
    }

    conf = daemons->elts;

    for (i = 0; i < daemons->nelts; i++) {
        d = &ngx_http_cinematch_infer_daemons[i];

        d->socket.data = ngx_pnalloc(cycle->pool, conf[i].socket.len + 1);
        d->shm.data = ngx_pnalloc(cycle->pool, conf[i].shm.len + 1);
        if (d->socket.data == NULL || d->shm.data == NULL) {
            return NGX_ERROR;
        }
        d->socket.len = conf[i].socket.len;
        d->shm.len = conf[i].shm.len;
        ngx_memcpy(d->socket.data, conf[i].socket.data, d->socket.len);
        ngx_memcpy(d->shm.data, conf[i].shm.data, d->shm.len);
        d->socket.data[d->socket.len] = '\0';
        d->shm.data[d->shm.len] = '\0';

        d->backoff = NGX_HTTP_CINEMATCH_INFER_BACKOFF_MIN;
        d->reconnect.handler = ngx_http_cinematch_infer_reconnect_handler;
        d->reconnect.data = d;
        d->reconnect.log = cycle->log;
        d->reconnect.cancelable = 1;

        ngx_http_cinematch_infer_connect(d);
    }

    ngx_http_cinematch_infer_watch.handler =
        ngx_http_cinematch_infer_watch_handler;
    ngx_http_cinematch_infer_watch.log = cycle->log;
    ngx_http_cinematch_infer_watch.cancelable = 1;
    ngx_add_timer(&ngx_http_cinematch_infer_watch,
                  NGX_HTTP_CINEMATCH_INFER_WATCH);

    return NGX_OK;
}


void
ngx_http_cinematch_infer_exit_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                          i;
    ngx_http_cinematch_infer_daemon_t  *d;

    ngx_http_cinematch_infer_exiting = 1;

    for (i = 0; i < ngx_http_cinematch_infer_n; i++) {
        d = &ngx_http_cinematch_infer_daemons[i];

        if (d->conn != NULL) {
            ngx_http_cinematch_infer_lost(d, "worker exiting");
        }
    }

    ngx_http_cinematch_infer_n = 0;
}


static void
ngx_http_cinematch_infer_schedule(ngx_http_cinematch_infer_daemon_t *d)
{
    if (ngx_http_cinematch_infer_exiting || ngx_exiting || ngx_quit) {
        return;
    }

    if (!d->reconnect.timer_set) {
        ngx_add_timer(&d->reconnect, d->backoff);
    }

    d->backoff = ngx_min(d->backoff * 2, NGX_HTTP_CINEMATCH_INFER_BACKOFF_MAX);
}


static void
ngx_http_cinematch_infer_connect(ngx_http_cinematch_infer_daemon_t *d)
{
    int                  rc;
    char                 err[256];
    ngx_err_t            e;
    socklen_t            len;
    struct ucred         cred;
    ngx_socket_t         s;
    ngx_core_conf_t     *ccf;
    ngx_connection_t    *c;
    struct sockaddr_un   sa;

    if (d->socket.len >= sizeof(sa.sun_path)) {
        ngx_log_error(NGX_LOG_ALERT, ngx_http_cinematch_infer_log, 0,
                      "cinematch_infer socket path too long: \"%V\"",
                      &d->socket);
        return;
    }

    s = ngx_socket(AF_UNIX, SOCK_STREAM, 0);
    if (s == (ngx_socket_t) -1) {
        ngx_log_error(NGX_LOG_ALERT, ngx_http_cinematch_infer_log, ngx_errno,
                      ngx_socket_n " failed");
        ngx_http_cinematch_infer_schedule(d);
        return;
    }

    ngx_memzero(&sa, sizeof(sa));
    sa.sun_family = AF_UNIX;
    ngx_memcpy(sa.sun_path, d->socket.data, d->socket.len);

    /* a unix connect() completes at once or fails at once */
    if (connect(s, (struct sockaddr *) &sa, sizeof(sa)) == -1) {
        e = ngx_socket_errno;
        if (!d->logged_down) {
            ngx_log_error(NGX_LOG_WARN, ngx_http_cinematch_infer_log, e,
                          "cinematch: inference daemon \"%V\" not reachable",
                          &d->socket);
            d->logged_down = 1;
        }
        ngx_close_socket(s);
        ngx_http_cinematch_infer_schedule(d);
        return;
    }

    rc = cm_ipc_attach(&d->seg, (char *) d->shm.data, err, sizeof(err));
    if (rc != 0) {
        ngx_log_error(NGX_LOG_WARN, ngx_http_cinematch_infer_log, 0,
                      "cinematch: segment \"%V\": %s", &d->shm, err);
        ngx_close_socket(s);
        ngx_http_cinematch_infer_schedule(d);
        return;
    }

    /* the segment must belong to the daemon at the other end */
    len = sizeof(cred);
    if (getsockopt(s, SOL_SOCKET, SO_PEERCRED, &cred, &len) == -1
        || cred.pid != d->seg.hdr->daemon_pid)
    {
        ngx_log_error(NGX_LOG_WARN, ngx_http_cinematch_infer_log, 0,
                      "cinematch: segment \"%V\" is not owned by the daemon"
                      " on \"%V\", retrying", &d->shm, &d->socket);
        cm_ipc_detach(&d->seg);
        ngx_close_socket(s);
        ngx_http_cinematch_infer_schedule(d);
        return;
    }

    if (ngx_nonblocking(s) == -1) {
        cm_ipc_detach(&d->seg);
        ngx_close_socket(s);
        ngx_http_cinematch_infer_schedule(d);
        return;
    }

    if (d->inflight_cap < d->seg.hdr->slot_count) {
        /* sized once per slot count; kept across reconnects */
        ngx_free(d->inflight);
        d->inflight = ngx_calloc(d->seg.hdr->slot_count * sizeof(void *),
                                 ngx_http_cinematch_infer_log);
        if (d->inflight == NULL) {
            d->inflight_cap = 0;
            cm_ipc_detach(&d->seg);
            ngx_close_socket(s);
            ngx_http_cinematch_infer_schedule(d);
            return;
        }
        d->inflight_cap = d->seg.hdr->slot_count;
    }

    c = ngx_get_connection(s, ngx_http_cinematch_infer_log);
    if (c == NULL) {
        cm_ipc_detach(&d->seg);
        ngx_close_socket(s);
        ngx_http_cinematch_infer_schedule(d);
        return;
    }

    c->data = d;
    c->read->handler = ngx_http_cinematch_infer_read_handler;
    c->write->handler = ngx_http_cinematch_infer_dummy_handler;
    c->read->log = c->log;
    c->write->log = c->log;
    c->log->action = "talking to the cinematch inference daemon";

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        ngx_close_connection(c);
        cm_ipc_detach(&d->seg);
        ngx_http_cinematch_infer_schedule(d);
        return;
    }

    d->conn = c;
    d->rlen = 0;
    d->backoff = NGX_HTTP_CINEMATCH_INFER_BACKOFF_MIN;
    d->logged_down = 0;

    ccf = (ngx_core_conf_t *) ngx_get_conf(ngx_cycle->conf_ctx,
                                           ngx_core_module);
    cm_ipc_partition(&d->seg, (uint32_t) ngx_worker,
                     (uint32_t) ccf->worker_processes, &d->first, &d->count);

    ngx_log_error(NGX_LOG_INFO, ngx_http_cinematch_infer_log, 0,
                  "cinematch: connected to inference daemon \"%V\" pid %d,"
                  " slots %uD..%uD", &d->socket, (int) cred.pid, d->first,
                  d->first + d->count - 1);
}


static void
ngx_http_cinematch_infer_reconnect_handler(ngx_event_t *ev)
{
    ngx_http_cinematch_infer_daemon_t *d = ev->data;

    if (d->conn == NULL) {
        ngx_http_cinematch_infer_connect(d);
    }
}


static void
ngx_http_cinematch_infer_watch_handler(ngx_event_t *ev)
{
    uint64_t                            now, hb;
    ngx_uint_t                          i;
    struct timespec                     ts;
    ngx_http_cinematch_infer_daemon_t  *d;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    now = (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec;

    for (i = 0; i < ngx_http_cinematch_infer_n; i++) {
        d = &ngx_http_cinematch_infer_daemons[i];

        if (d->conn == NULL) {
            continue;
        }

        hb = atomic_load(&d->seg.hdr->heartbeat_ns);

        ngx_http_cinematch_metrics_set_queue_depth(i,
            atomic_load(&d->seg.hdr->queue_depth));

        if (now <= hb || now - hb <= CM_IPC_HEARTBEAT_STALE_NS) {
            continue;
        }

        /*
         * No beat for 2 s.  A daemon that died is noticed by its socket
         * closing, and here by its pid; a live one is most likely in a
         * long decode step (a large batch at high load), which must not
         * fail its streams with "went away": it is given up only when
         * its loop has not turned for the hung limit.
         */

        if (kill(d->seg.hdr->daemon_pid, 0) == -1 && ngx_errno == NGX_ESRCH) {
            ngx_http_cinematch_infer_lost(d, "daemon process gone");

        } else if (now - hb > CM_IPC_HEARTBEAT_HUNG_NS) {
            ngx_http_cinematch_infer_lost(d, "heartbeat stale: loop hung");
        }
    }

    if (!ngx_exiting && !ngx_quit && !ngx_http_cinematch_infer_exiting) {
        ngx_add_timer(ev, NGX_HTTP_CINEMATCH_INFER_WATCH);
    }
}


static void
ngx_http_cinematch_infer_dummy_handler(ngx_event_t *ev)
{
    /* doorbells are 8 bytes into an empty socket buffer: never wait */
}


static void
ngx_http_cinematch_infer_read_handler(ngx_event_t *ev)
{
    size_t                              k, n;
    ssize_t                             got;
    cm_ipc_msg_t                        msg;
    ngx_connection_t                   *c = ev->data;
    ngx_http_cinematch_infer_req_t     *ir;
    ngx_http_cinematch_infer_daemon_t  *d = c->data;
    u_char                              buf[512];

    for ( ;; ) {
        ngx_memcpy(buf, d->rbuf, d->rlen);

        got = recv(c->fd, buf + d->rlen, sizeof(buf) - d->rlen, 0);

        if (got == 0) {
            ngx_http_cinematch_infer_lost(d, "daemon closed the connection");
            return;
        }

        if (got == -1) {
            if (ngx_socket_errno == NGX_EAGAIN) {
                break;
            }
            if (ngx_socket_errno == NGX_EINTR) {
                continue;
            }
            ngx_http_cinematch_infer_lost(d, "read error");
            return;
        }

        n = d->rlen + (size_t) got;

        for (k = 0; k + sizeof(msg) <= n; k += sizeof(msg)) {
            ngx_memcpy(&msg, buf + k, sizeof(msg));

            if (msg.op != CM_MSG_READY || msg.slot >= d->inflight_cap
                || d->conn == NULL)
            {
                continue;   /* untrusted peer: ignore what we cannot use */
            }

            ir = d->inflight[msg.slot];
            if (ir != NULL) {
                /* the handler may finalize the request: do not touch ir */
                ir->handler(ir, NGX_OK);
            }
        }

        d->rlen = n - k;
        ngx_memcpy(d->rbuf, buf + k, d->rlen);

        if (d->conn == NULL) {
            return;   /* a handler lost the daemon */
        }
    }

    if (ngx_handle_read_event(c->read, 0) != NGX_OK) {
        ngx_http_cinematch_infer_lost(d, "event registration failed");
    }
}


static void
ngx_http_cinematch_infer_lost(ngx_http_cinematch_infer_daemon_t *d,
    const char *why)
{
    uint32_t                         i;
    ngx_uint_t                       level;
    ngx_http_cinematch_infer_req_t  *ir;

    level = ngx_http_cinematch_infer_exiting ? NGX_LOG_INFO : NGX_LOG_ERR;

    ngx_log_error(level, ngx_http_cinematch_infer_log, 0,
                  "cinematch: inference daemon \"%V\" lost: %s",
                  &d->socket, why);

    if (!ngx_http_cinematch_infer_exiting) {
        ngx_http_cinematch_metrics_upstream_error(
            NGX_HTTP_CINEMATCH_UPSTREAM_INFER);
        ngx_http_cinematch_metrics_set_queue_depth(
            (ngx_uint_t) (d - ngx_http_cinematch_infer_daemons), 0);
    }

    if (d->conn != NULL) {
        ngx_close_connection(d->conn);
        d->conn = NULL;
    }

    /* every waiting request ends now with a clean error; the slots belong
     * to a segment we are about to unmap, so nobody touches them again */
    for (i = 0; i < d->inflight_cap; i++) {
        ir = d->inflight[i];
        if (ir == NULL) {
            continue;
        }
        d->inflight[i] = NULL;
        ir->done = 1;
        ir->seg = NULL;
        ir->slot = NULL;
        ir->handler(ir, NGX_ERROR);
    }

    cm_ipc_detach(&d->seg);
    ngx_http_cinematch_infer_schedule(d);
}


static ngx_int_t
ngx_http_cinematch_infer_send(ngx_http_cinematch_infer_daemon_t *d,
    uint32_t op, uint32_t slot)
{
    ssize_t       n;
    cm_ipc_msg_t  msg;

    if (d->conn == NULL) {
        return NGX_ERROR;
    }

    msg.op = op;
    msg.slot = slot;

    /* 8 bytes are written whole or not at all on a stream socket with
     * room; a full buffer means the daemon stopped reading */
    n = send(d->conn->fd, &msg, sizeof(msg), MSG_NOSIGNAL);

    return n == (ssize_t) sizeof(msg) ? NGX_OK : NGX_ERROR;
}


ngx_int_t
ngx_http_cinematch_infer_submit(ngx_http_request_t *r, uint32_t kind,
    const uint64_t *params, size_t nparams, const u_char *payload,
    size_t len, ngx_http_cinematch_infer_handler_pt handler, void *data,
    ngx_http_cinematch_infer_req_t **out)
{
    return ngx_http_cinematch_infer_submit_tagged(r, NULL, kind, params,
                                                  nparams, payload, len,
                                                  handler, data, out);
}


ngx_int_t
ngx_http_cinematch_infer_submit_tagged(ngx_http_request_t *r,
    const ngx_str_t *tag, uint32_t kind, const uint64_t *params,
    size_t nparams, const u_char *payload, size_t len,
    ngx_http_cinematch_infer_handler_pt handler, void *data,
    ngx_http_cinematch_infer_req_t **out)
{
    int64_t                             idx;
    uint32_t                            depth, best_depth;
    ngx_uint_t                          i, best;
    cm_ipc_slot_t                      *slot;
    ngx_pool_cleanup_t                 *cln;
    ngx_http_cinematch_infer_req_t     *ir;
    ngx_http_cinematch_infer_daemon_t  *d;

    best = NGX_CONF_UNSET_UINT;
    best_depth = 0;

    for (i = 0; i < ngx_http_cinematch_infer_n; i++) {
        d = &ngx_http_cinematch_infer_daemons[i];

        if (d->conn == NULL) {
            continue;
        }

        depth = atomic_load(&d->seg.hdr->queue_depth);

        if (best == NGX_CONF_UNSET_UINT || depth < best_depth) {
            best = i;
            best_depth = depth;
        }
    }

    if (best == NGX_CONF_UNSET_UINT) {
        return NGX_DECLINED;
    }

    d = &ngx_http_cinematch_infer_daemons[best];

    if (len > d->seg.hdr->req_cap) {
        return NGX_ERROR;
    }

    ir = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_infer_req_t));
    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (ir == NULL || cln == NULL) {
        return NGX_ERROR;
    }

    idx = cm_ipc_claim(&d->seg, d->first, d->count, &d->hint,
                       (uint32_t) ngx_pid);
    if (idx < 0) {
        ngx_http_cinematch_infer_busy++;
        return NGX_BUSY;
    }

    slot = cm_ipc_slot(&d->seg, (uint32_t) idx);

    ir->request = r;
    ir->handler = handler;
    ir->data = data;
    ir->seg = &d->seg;
    ir->slot = slot;
    ir->index = (uint32_t) idx;
    ir->daemon = best;

    cln->handler = ngx_http_cinematch_infer_cleanup;
    cln->data = ir;

    d->inflight[idx] = ir;

    if (tag != NULL) {
        cm_ipc_set_tag(slot, (const char *) tag->data, tag->len);
    }

    if (cm_ipc_submit(&d->seg, slot, kind, params, nparams, payload, len)
        != 0
        || ngx_http_cinematch_infer_send(d, CM_MSG_SUBMIT, (uint32_t) idx)
           != NGX_OK)
    {
        ngx_http_cinematch_infer_release(ir);
        return NGX_ERROR;
    }

    *out = ir;

    return NGX_OK;
}


void
ngx_http_cinematch_infer_rearm(ngx_http_cinematch_infer_req_t *ir)
{
    if (ir->slot != NULL) {
        atomic_store(&ir->slot->bell, 0);
        atomic_thread_fence(memory_order_seq_cst);
    }
}


void
ngx_http_cinematch_infer_release(ngx_http_cinematch_infer_req_t *ir)
{
    ngx_http_cinematch_infer_daemon_t  *d;

    if (ir->done) {
        return;
    }

    ir->done = 1;

    d = &ngx_http_cinematch_infer_daemons[ir->daemon];

    if (ir->index < d->inflight_cap && d->inflight[ir->index] == ir) {
        d->inflight[ir->index] = NULL;
    }

    if (ir->slot != NULL && cm_ipc_release(ir->slot)) {
        /* the daemon was working on it: tell it to stop now */
        (void) ngx_http_cinematch_infer_send(d, CM_MSG_CANCEL, ir->index);
    }

    ir->slot = NULL;
    ir->seg = NULL;
}


ngx_uint_t
ngx_http_cinematch_infer_stop(const ngx_str_t *tag)
{
    int64_t                             idx;
    uint32_t                            from, seq;
    ngx_uint_t                          i, n;
    ngx_http_cinematch_infer_daemon_t  *d;

    n = 0;

    for (i = 0; i < ngx_http_cinematch_infer_n; i++) {
        d = &ngx_http_cinematch_infer_daemons[i];

        if (d->conn == NULL) {
            continue;
        }

        /* every slot, not only this worker's partition: the generation
         * may stream through another worker */
        from = 0;

        for ( ;; ) {
            idx = cm_ipc_find_tag(&d->seg, (const char *) tag->data,
                                  tag->len, &from, &seq);
            if (idx < 0) {
                break;
            }

            cm_ipc_stop(cm_ipc_slot(&d->seg, (uint32_t) idx), seq);

            /* the daemon also notices the request at its next step, so a
             * doorbell that does not go out only delays the stop */
            (void) ngx_http_cinematch_infer_send(d, CM_MSG_STOP,
                                                 (uint32_t) idx);
            n++;
        }
    }

    return n;
}


static void
ngx_http_cinematch_infer_cleanup(void *data)
{
    ngx_http_cinematch_infer_req_t *ir = data;

    ngx_http_cinematch_infer_release(ir);
}


ngx_uint_t
ngx_http_cinematch_infer_ndaemons(void)
{
    return ngx_http_cinematch_infer_n;
}


void
ngx_http_cinematch_infer_get_status(ngx_uint_t i,
    ngx_http_cinematch_infer_status_t *st)
{
    uint64_t                            now, hb;
    struct timespec                     ts;
    ngx_http_cinematch_infer_daemon_t  *d;

    ngx_memzero(st, sizeof(*st));

    if (i >= ngx_http_cinematch_infer_n) {
        return;
    }

    d = &ngx_http_cinematch_infer_daemons[i];
    st->socket = d->socket;

    if (d->conn == NULL) {
        ngx_cpystrn((u_char *) st->status, (u_char *) "not connected",
                    sizeof(st->status));
        return;
    }

    clock_gettime(CLOCK_MONOTONIC, &ts);
    now = (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec;
    hb = atomic_load(&d->seg.hdr->heartbeat_ns);

    st->connected = 1;
    st->heartbeat_ok = !(now > hb && now - hb > CM_IPC_HEARTBEAT_STALE_NS);
    st->ready = atomic_load(&d->seg.hdr->ready);
    st->queue_depth = atomic_load(&d->seg.hdr->queue_depth);
    st->nmodels = cm_ipc_get_models(&d->seg, st->models, CM_IPC_MAX_MODELS);

    /* the daemon's text: copy bounded and force the terminator */
    ngx_memcpy(st->status, d->seg.hdr->status, sizeof(st->status));
    st->status[sizeof(st->status) - 1] = '\0';
}


ngx_int_t
ngx_http_cinematch_infer_get_stats(ngx_uint_t i, cm_ipc_stats_snapshot_t *st)
{
    ngx_http_cinematch_infer_daemon_t  *d;

    if (i >= ngx_http_cinematch_infer_n) {
        return NGX_DECLINED;
    }

    d = &ngx_http_cinematch_infer_daemons[i];

    if (d->conn == NULL || d->seg.hdr == NULL) {
        return NGX_DECLINED;
    }

    return cm_ipc_stats_read(&d->seg, st) == CM_OK ? NGX_OK : NGX_DECLINED;
}


ngx_uint_t
ngx_http_cinematch_infer_busy_total(void)
{
    return ngx_http_cinematch_infer_busy;
}


uint32_t
ngx_http_cinematch_infer_models_seq(ngx_uint_t i)
{
    ngx_http_cinematch_infer_daemon_t  *d;

    if (i >= ngx_http_cinematch_infer_n) {
        return 0;
    }

    d = &ngx_http_cinematch_infer_daemons[i];

    return d->conn != NULL ? atomic_load(&d->seg.hdr->models_seq) : 0;
}


ngx_int_t
ngx_http_cinematch_infer_ready(ngx_http_request_t *r, json_t *check)
{
    ngx_uint_t                          i, m, ok;
    json_t                             *daemons, *models, *o, *mo;
    ngx_http_cinematch_infer_status_t   st;

    daemons = json_array();
    models = json_array();
    if (daemons == NULL || models == NULL) {
        json_decref(daemons);
        json_decref(models);
        return NGX_ERROR;
    }

    ok = 1;   /* no daemon configured is not a failure */

    for (i = 0; i < ngx_http_cinematch_infer_n; i++) {
        ngx_http_cinematch_infer_get_status(i, &st);

        o = json_pack("{s:s%, s:b, s:b, s:b, s:i, s:s}",
                      "socket", (char *) st.socket.data, st.socket.len,
                      "connected", (int) st.connected,
                      "heartbeat_ok", (int) st.heartbeat_ok,
                      "ready", (int) st.ready,
                      "queue_depth", (json_int_t) st.queue_depth,
                      "status", st.status);
        if (o != NULL) {
            json_array_append_new(daemons, o);
        }

        if (!st.connected || !st.heartbeat_ok || !st.ready) {
            ok = 0;
        }

        for (m = 0; m < st.nmodels; m++) {
            mo = json_pack("{s:s, s:s, s:s}", "name", st.models[m].name,
                           "version", st.models[m].version,
                           "sha256", st.models[m].sha256);
            if (mo != NULL && st.models[m].role == CM_IPC_ROLE_CANARY) {
                /* a canary beside production: its share of the users */
                json_object_set_new(mo, "canary_share",
                                    json_real(st.models[m].share_bp
                                              / 10000.0));
            }
            if (mo != NULL) {
                json_array_append_new(models, mo);
            }
        }
    }

    json_object_set_new(check, "status",
                        json_string(ok ? "ok"
                                       : (ngx_http_cinematch_infer_n == 0
                                          ? "not configured" : "down")));
    json_object_set_new(check, "daemons", daemons);
    json_object_set_new(check, "models", models);

    return ok ? NGX_OK : NGX_DECLINED;
}

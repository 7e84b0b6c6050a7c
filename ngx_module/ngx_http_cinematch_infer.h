/*
 * ngx_http_cinematch_infer.h: the nginx side of the spine, the client of
 * `cinematch infer` daemons (see shared/include/cinematch/ipc.h).
 *
 * Each worker keeps, per configured daemon, one non-blocking doorbell
 * connection and a mapping of the daemon's segment.  A request claims a
 * slot from the worker's partition, submits, and is called back on every
 * READY doorbell for its slot; a pool cleanup gives the slot back (and
 * cancels the daemon's work) however the request ends.  A closed socket, a
 * daemon pid that is gone, or a heartbeat older than the hung limit
 * (ipc.h: a live daemon late by a slow step is waited for) fails every
 * in-flight request of that daemon with NGX_ERROR in the callback and
 * reconnects with backoff; a restarted daemon is picked up without
 * touching nginx.
 */
#ifndef _NGX_HTTP_CINEMATCH_INFER_H_INCLUDED_
#define _NGX_HTTP_CINEMATCH_INFER_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_cinematch.h"
#include "cinematch/common.h"
#include "cinematch/ipc.h"

typedef struct ngx_http_cinematch_infer_req_s
    ngx_http_cinematch_infer_req_t;

/*
 * Called on READY (rc NGX_OK: read the ring / result now) and when the
 * daemon is lost (rc NGX_ERROR).  After the callback saw a final state or
 * an error it must not touch the slot again.
 */
typedef void (*ngx_http_cinematch_infer_handler_pt)(
    ngx_http_cinematch_infer_req_t *ir, ngx_int_t rc);

struct ngx_http_cinematch_infer_req_s {
    ngx_http_request_t                  *request;
    ngx_http_cinematch_infer_handler_pt  handler;
    void                                *data;
    cm_ipc_seg_t                        *seg;       /* NULL once lost */
    cm_ipc_slot_t                       *slot;
    uint32_t                             index;
    ngx_uint_t                           daemon;
    unsigned                             done:1;    /* slot released */
};


/* The directives fill cmcf->infer (ngx_http_cinematch_infer_conf_t). */
ngx_int_t ngx_http_cinematch_infer_init_process(ngx_cycle_t *cycle,
    ngx_http_cinematch_main_conf_t *cmcf);
void ngx_http_cinematch_infer_exit_process(ngx_cycle_t *cycle);
/* /ready: fills check {status, daemons:[...], models:[...]}; NGX_OK when
 * every configured daemon is connected, alive and ready. */
ngx_int_t ngx_http_cinematch_infer_ready(ngx_http_request_t *r,
    json_t *check);

/*
 * Claim a slot on the least-loaded live daemon and submit.  Returns NGX_OK
 * (callbacks follow), NGX_BUSY (no free slot: answer 503 + Retry-After),
 * NGX_DECLINED (no daemon connected: 503), NGX_ERROR.
 */
ngx_int_t ngx_http_cinematch_infer_submit(ngx_http_request_t *r,
    uint32_t kind, const uint64_t *params, size_t nparams,
    const u_char *payload, size_t len,
    ngx_http_cinematch_infer_handler_pt handler, void *data,
    ngx_http_cinematch_infer_req_t **out);

/* The same, with the slot labelled `tag` (a conversation id, at most 39
 * bytes) so that any worker can stop it (ngx_http_cinematch_infer_stop). */
ngx_int_t ngx_http_cinematch_infer_submit_tagged(ngx_http_request_t *r,
    const ngx_str_t *tag, uint32_t kind, const uint64_t *params,
    size_t nparams, const u_char *payload, size_t len,
    ngx_http_cinematch_infer_handler_pt handler, void *data,
    ngx_http_cinematch_infer_req_t **out);

/*
 * Ask the daemons to stop every generation labelled `tag`, whichever
 * worker streams it: the stop request goes into the slot (cm_ipc_stop)
 * with a STOP doorbell, and the daemon ends the generation as DONE with
 * finish_reason "cancelled", which its owner streams as usual.  Returns
 * how many generations were asked to stop.
 */
ngx_uint_t ngx_http_cinematch_infer_stop(const ngx_str_t *tag);

/* Clear the bell before draining, so a record written after the drain
 * rings again (see ipc.h). */
void ngx_http_cinematch_infer_rearm(ngx_http_cinematch_infer_req_t *ir);

/* Give the slot back now (also done by the pool cleanup). */
void ngx_http_cinematch_infer_release(ngx_http_cinematch_infer_req_t *ir);

/* For /ready and /metrics. */
typedef struct {
    ngx_str_t        socket;
    ngx_uint_t       connected;
    ngx_uint_t       heartbeat_ok;
    ngx_uint_t       ready;
    ngx_uint_t       queue_depth;
    ngx_uint_t       nmodels;
    cm_ipc_model_t   models[CM_IPC_MAX_MODELS];
    char             status[128];
} ngx_http_cinematch_infer_status_t;

ngx_uint_t ngx_http_cinematch_infer_ndaemons(void);
void ngx_http_cinematch_infer_get_status(ngx_uint_t i,
    ngx_http_cinematch_infer_status_t *st);
/* The daemon's serving statistics (ipc.h, cm_ipc_stats_t): NGX_OK when
 * daemon i is connected and publishes a block this module understands. */
ngx_int_t ngx_http_cinematch_infer_get_stats(ngx_uint_t i,
    cm_ipc_stats_snapshot_t *st);
/* Requests refused for lack of a slot since start, in this worker. */
ngx_uint_t ngx_http_cinematch_infer_busy_total(void);
/* The daemon's model table sequence (moves on every publish, i.e. every
 * reload); 0 when not connected. */
uint32_t ngx_http_cinematch_infer_models_seq(ngx_uint_t i);


#endif /* _NGX_HTTP_CINEMATCH_INFER_H_INCLUDED_ */

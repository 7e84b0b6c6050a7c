/*
 * ngx_http_cinematch_serving.h: what the recommendation endpoints add
 * around the inference daemon (ngx_http_cinematch_serving.c, a module of
 * its own in the same .so, with its own directives):
 *
 *   - a response cache in Redis for /recommend, /similar and /popular,
 *     keyed by the served model (version and artifact digest), the rating
 *     user, the user's generation counter and the request's parameters.  A
 *     fold-in INCRs the user's generation, so every entry of that user is
 *     unreachable at once; entries age out after cinematch_cache_ttl.
 *     Redis down or slow: the request is served uncached.
 *   - a request log: every answer of those endpoints (errors included, with
 *     their status) is queued in the worker in the log phase and written to
 *     request_logs in batches (one COPY per flush on a connection of its
 *     own); a full queue drops and counts.
 *   - POST /api/v1/admin/reload: NOTIFY cinematch_models, which every
 *     inference daemon LISTENs to.
 */
#ifndef _NGX_HTTP_CINEMATCH_SERVING_H_INCLUDED_
#define _NGX_HTTP_CINEMATCH_SERVING_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_cinematch.h"


#define NGX_HTTP_CINEMATCH_EP_RECOMMEND  0
#define NGX_HTTP_CINEMATCH_EP_SIMILAR    1
#define NGX_HTTP_CINEMATCH_EP_POPULAR    2
#define NGX_HTTP_CINEMATCH_EP_N          3


extern ngx_module_t  ngx_http_cinematch_serving_module;


/* Returns like a handler: called on a cache miss (data as given) and by
 * ngx_http_cinematch_cache_invalidate() once the generation moved. */
typedef ngx_int_t (*ngx_http_cinematch_serving_next_pt)(
    ngx_http_request_t *r, void *data);

/*
 * Looks the answer up.  NGX_DECLINED: no cache for this request (off, no
 * model loaded, Redis not connected): the caller goes on itself.  NGX_DONE:
 * the lookup runs; a hit is answered from the cache, a miss calls
 * miss(r, data), whose return value finalizes the request.  `params` is
 * the endpoint's canonical parameter text (part of the key); `user` the
 * rating user whose generation applies (0: none).
 */
ngx_int_t ngx_http_cinematch_cache_fetch(ngx_http_request_t *r,
    ngx_uint_t endpoint, int64_t user, ngx_str_t *params,
    ngx_http_cinematch_serving_next_pt miss, void *data);

/*
 * The daemon answered 200 with body (doc: its parsed form, or NULL):
 * stores it in the cache when a lookup missed and the answer's
 * model_version is the one the key names, and keeps what the request log
 * entry takes from it.  Never fails the request.
 */
void ngx_http_cinematch_serving_answered(ngx_http_request_t *r,
    ngx_uint_t endpoint, int64_t user, u_char *body, size_t len,
    json_t *doc);

/*
 * The same for an answer that came with its request-log members (the
 * daemon's "<members>\n<answer>", CM_REC_LOG_MEMBERS): nothing is parsed.
 * `version` is the model_version the members name.
 */
void ngx_http_cinematch_serving_answered_text(ngx_http_request_t *r,
    ngx_uint_t endpoint, u_char *body, size_t len, ngx_str_t *members,
    ngx_str_t *version);

/* $cinematch_model_version from a version's text (bounded, or unset) */
void ngx_http_cinematch_serving_set_version(ngx_http_request_t *r,
    ngx_str_t *version);

/* INCR the rating user's generation, then next(r, data).  Returns what
 * next returned, or NGX_DONE while the INCR runs (Redis down: next at
 * once). */
ngx_int_t ngx_http_cinematch_cache_invalidate(ngx_http_request_t *r,
    int64_t user, ngx_http_cinematch_serving_next_pt next, void *data);

/* POST /api/v1/admin/reload */
ngx_int_t ngx_http_cinematch_admin_reload_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);

/* /metrics: an upper bound of the text, and the text */
size_t ngx_http_cinematch_serving_metrics_size(void);
u_char *ngx_http_cinematch_serving_metrics(u_char *p);


#endif /* _NGX_HTTP_CINEMATCH_SERVING_H_INCLUDED_ */

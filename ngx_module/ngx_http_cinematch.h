
/*
 * ngx_http_cinematch.h: types and entry points shared by the files of
 * ngx_http_cinematch_module.
 *
 * The module is split by concern:
 *
 *   ngx_http_cinematch_module.c   directives, configuration, process hooks
 *   ngx_http_cinematch_router.c   the route table and the content handler
 *   ngx_http_cinematch_http.c     request id, JSON in/out, uniform errors
 *   ngx_http_cinematch_metrics.c  counters in a shared zone, /metrics text
 *   ngx_http_cinematch_pg.c       per-worker non-blocking libpq pool
 *   ngx_http_cinematch_redis.c    hiredis async context on nginx events
 *   ngx_http_cinematch_api_ops.c  /health, /ready, /metrics
 *   ngx_http_cinematch_infer.c    inference daemon client (optional file)
 *   ngx_http_cinematch_api_*.c    one file per API resource
 *
 * A handler that waits on PostgreSQL, Redis or an inference daemon returns
 * NGX_DONE; the wait took r->main->count++ and the completion callback's
 * return value is passed to ngx_http_finalize_request(), so the request is
 * finalized exactly once.  Anything a request holds outside its pool (a
 * connection lease, a queued query, a pending command) is released by a
 * pool cleanup, so a client that goes away frees it.
 */


#ifndef _NGX_HTTP_CINEMATCH_H_INCLUDED_
#define _NGX_HTTP_CINEMATCH_H_INCLUDED_


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <jansson.h>
#include <libpq-fe.h>
#include <hiredis/hiredis.h>
#include <hiredis/async.h>

#include "cinematch/common.h"      /* CM_E* codes of libcinematch */


#ifndef NGX_HTTP_CINEMATCH_VERSION
#define NGX_HTTP_CINEMATCH_VERSION  "0.0.0"
#endif

#define NGX_HTTP_CINEMATCH_MAX_PARAMS      4
#define NGX_HTTP_CINEMATCH_MAX_INFER       16
#define NGX_HTTP_CINEMATCH_REQUEST_ID_LEN  128


/* route flags */
#define NGX_HTTP_CINEMATCH_ROUTE_BODY      0x0001  /* read the body first */
#define NGX_HTTP_CINEMATCH_ROUTE_JSON      0x0003  /* ... and parse it */
#define NGX_HTTP_CINEMATCH_ROUTE_ECHO      0x0004  /* needs cinematch_echo */
#define NGX_HTTP_CINEMATCH_ROUTE_AUTH      0x0010  /* credentials required */
#define NGX_HTTP_CINEMATCH_ROUTE_ADMIN     0x0030  /* ... and role admin */
#define NGX_HTTP_CINEMATCH_ROUTE_OPTAUTH   0x0040  /* caller identified when
                                                      credentials are sent */
#define NGX_HTTP_CINEMATCH_ROUTE_NOSTORE   0x0080  /* Cache-Control: no-store
                                                      on every answer (auth
                                                      routes do it anyway) */
#define NGX_HTTP_CINEMATCH_ROUTE_WS        0x10000 /* WebSocket handshake:
                                                      the access token may
                                                      come in
                                                      Sec-WebSocket-Protocol */
#define NGX_HTTP_CINEMATCH_ROUTE_UPLOAD    0x20000 /* the handler reads the
                                                      body itself, into a
                                                      file, after the auth
                                                      step; its own size
                                                      limit (see
                                                      api_models.c) */
/* the CM_SCOPE_* (cinematch/validate.h) an API key needs for the route */
#define NGX_HTTP_CINEMATCH_ROUTE_SCOPE(s)  ((ngx_uint_t) (s) << 8)
#define NGX_HTTP_CINEMATCH_ROUTE_SCOPES(f) ((uint32_t) (((f) >> 8) & 0xff))


/* upstreams counted by cinematch_upstream_errors_total */
#define NGX_HTTP_CINEMATCH_UPSTREAM_PG     0
#define NGX_HTTP_CINEMATCH_UPSTREAM_REDIS  1
#define NGX_HTTP_CINEMATCH_UPSTREAM_INFER  2
#define NGX_HTTP_CINEMATCH_UPSTREAM_N      3


typedef struct ngx_http_cinematch_ctx_s  ngx_http_cinematch_ctx_t;


/*
 * Who made the request (ngx_http_cinematch_caller()), filled before the
 * handler of a ROUTE_AUTH route runs (and of a ROUTE_OPTAUTH route when
 * credentials were sent).  Handlers scope every user resource by user_id
 * (admins: any), and answer 404, not 403, for another user's resource.
 */
typedef struct {
    int64_t                         user_id;         /* users.id */
    int64_t                         key_id;          /* api_keys.id; 0: JWT */
    int64_t                         rating_user_id;  /* users.rating_user_id;
                                                        0: not loaded (JWT),
                                                        see SQL in handlers */
    uint32_t                        scopes;          /* CM_SCOPE_* allowed */
    time_t                          exp;             /* JWT expiry */
    time_t                          iat;             /* JWT issued at */
    char                            jti[40];         /* JWT id, "" for keys */
    char                            sid[40];         /* refresh family */
    unsigned                        admin:1;
    unsigned                        apikey:1;
} ngx_http_cinematch_caller_t;

typedef ngx_int_t (*ngx_http_cinematch_handler_pt)(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);


typedef struct {
    ngx_uint_t                      methods;    /* NGX_HTTP_GET|... */
    ngx_str_t                       pattern;    /* "/api/v1/movies/{id}" */
    ngx_http_cinematch_handler_pt   handler;
    ngx_uint_t                      flags;      /* ROUTE_* */
} ngx_http_cinematch_route_t;


/*
 * One `cinematch_infer <socket> shm=<name>;` line.  The directive parser
 * fills socket and shm (both NUL-terminated); the inference client
 * (ngx_http_cinematch_infer.c) owns everything from `data` on.
 */
typedef struct {
    ngx_str_t                       socket;
    ngx_str_t                       shm;
    ngx_uint_t                      index;
    void                           *data;
} ngx_http_cinematch_infer_conf_t;


typedef struct {
    ngx_str_t                       pg_conninfo;     /* NUL-terminated */
    ngx_uint_t                      pg_pool_size;
    ngx_msec_t                      pg_timeout;

    ngx_str_t                       redis_host;      /* NUL-terminated */
    ngx_int_t                       redis_port;      /* 0: redis_host is a
                                                        unix socket path */
    ngx_msec_t                      redis_timeout;

    ngx_array_t                    *infer;  /* of ..._infer_conf_t */

    ngx_shm_zone_t                 *metrics_zone;
    ngx_int_t                       request_id_index;
    time_t                          start_time;
} ngx_http_cinematch_main_conf_t;


typedef struct {
    ngx_flag_t                      enable;
    ngx_flag_t                      echo;
    size_t                          max_body_size;
} ngx_http_cinematch_loc_conf_t;


struct ngx_http_cinematch_ctx_s {
    ngx_str_t                       request_id;
    ngx_http_cinematch_route_t     *route;        /* NULL: no route matched */
    ngx_uint_t                      route_label;  /* metrics label index */

    ngx_str_t                       params[NGX_HTTP_CINEMATCH_MAX_PARAMS];
    ngx_uint_t                      nparams;

    ngx_str_t                       body;         /* contiguous copy */
    json_t                         *json;         /* parsed body, or NULL */
    off_t                           body_received;

    unsigned                        body_too_large:1;

    ngx_http_cinematch_caller_t    *caller;       /* NULL: anonymous */
    void                           *authn;        /* the auth step's state */

    void                           *data;         /* the handler's state */

    ngx_str_t                       model_version; /* that answered, for
                                                      $cinematch_model_version */
    ngx_str_t                       error_code;   /* of the error body sent,
                                                     for the request log */
};


#if (NGX_HTTP_CINEMATCH_WS)
/* ngx_http_cinematch_ws.c: "Bearer <token>" from the handshake's
 * Sec-WebSocket-Protocol (browsers cannot send Authorization); NGX_DECLINED
 * when none is offered */
ngx_int_t ngx_http_cinematch_ws_bearer(ngx_http_request_t *r,
    ngx_str_t *authz);
#endif


/* ngx_http_cinematch_module.c */

extern ngx_module_t  ngx_http_cinematch_module;


/* ngx_http_cinematch_router.c */

extern ngx_http_cinematch_route_t  ngx_http_cinematch_routes[];
extern ngx_uint_t                  ngx_http_cinematch_nroutes;

ngx_int_t ngx_http_cinematch_router_init(ngx_conf_t *cf);
ngx_int_t ngx_http_cinematch_handler(ngx_http_request_t *r);
ngx_str_t *ngx_http_cinematch_route_name(ngx_uint_t label);
/* runs the identity and rate-limit step the route asks for, then the
 * route's handler; returns like a handler */
ngx_int_t ngx_http_cinematch_dispatch(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
/* the authenticated caller, or NULL (anonymous) */
ngx_http_cinematch_caller_t *ngx_http_cinematch_caller(ngx_http_request_t *r);
#if (NGX_HTTP_CINEMATCH_AUTH)
/* fills caller->rating_user_id (one PostgreSQL query for a JWT caller;
 * API-key callers have it already), then returns next(r); a missing or
 * disabled account is a 401 */
typedef ngx_int_t (*ngx_http_cinematch_caller_next_pt)(ngx_http_request_t *r);
ngx_int_t ngx_http_cinematch_caller_rating_id(ngx_http_request_t *r,
    ngx_http_cinematch_caller_next_pt next);
#endif


/* ngx_http_cinematch_http.c */

ngx_http_cinematch_ctx_t *ngx_http_cinematch_create_ctx(ngx_http_request_t *r);
ngx_int_t ngx_http_cinematch_add_header(ngx_http_request_t *r, ngx_str_t *key,
    ngx_str_t *value);
ngx_int_t ngx_http_cinematch_send_buf(ngx_http_request_t *r,
    ngx_uint_t status, ngx_str_t *type, u_char *data, size_t len);
ngx_int_t ngx_http_cinematch_send_json(ngx_http_request_t *r,
    ngx_uint_t status, json_t *json);
ngx_int_t ngx_http_cinematch_send_error(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *message);
ngx_int_t ngx_http_cinematch_send_error_json(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *message, json_t *extra);
/* 422 validation_failed with "fields": {field: message}. */
ngx_int_t ngx_http_cinematch_send_invalid(ngx_http_request_t *r,
    const char *field, const char *message);
ngx_int_t ngx_http_cinematch_status(ngx_http_request_t *r, ngx_int_t rc);
json_t *ngx_http_cinematch_json_track(ngx_http_request_t *r, json_t *json);
ngx_int_t ngx_http_cinematch_read_body(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
/* reads the body, then post(r); returns like a content handler */
ngx_int_t ngx_http_cinematch_read_body_then(ngx_http_request_t *r,
    ngx_http_client_body_handler_pt post);
/* a refusal before reading: drops the body unread, then the error */
ngx_int_t ngx_http_cinematch_refuse_body(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *message);
ngx_int_t ngx_http_cinematch_body_size_check(ngx_http_request_t *r);
ngx_int_t ngx_http_cinematch_arg(ngx_http_request_t *r, const char *name,
    ngx_str_t *value);
ngx_int_t ngx_http_cinematch_arg_int(ngx_http_request_t *r, const char *name,
    ngx_int_t def, ngx_int_t min, ngx_int_t max, ngx_int_t *out);
ngx_int_t ngx_http_cinematch_body_filter_init(ngx_conf_t *cf);
void ngx_http_cinematch_wait(ngx_http_request_t *r);
void ngx_http_cinematch_finish(ngx_http_request_t *r, ngx_int_t rc);


/* ngx_http_cinematch_metrics.c */

ngx_int_t ngx_http_cinematch_metrics_init_conf(ngx_conf_t *cf,
    ngx_http_cinematch_main_conf_t *cmcf);
ngx_int_t ngx_http_cinematch_metrics_log_handler(ngx_http_request_t *r);
time_t ngx_http_cinematch_metrics_start_time(void);
void ngx_http_cinematch_metrics_upstream_error(ngx_uint_t upstream);
void ngx_http_cinematch_metrics_set_queue_depth(ngx_uint_t daemon,
    ngx_uint_t depth);
/* A chat reply's first token reached this worker (once per request): the
 * time since the request began goes into
 * cinematch_chat_time_to_first_token_seconds. */
void ngx_http_cinematch_metrics_chat_first_token(ngx_http_request_t *r);
ngx_int_t ngx_http_cinematch_metrics_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);


/* ngx_http_cinematch_logvars.c: $cinematch_user_id, $cinematch_route,
 * $cinematch_model_version for structured access logs */

ngx_int_t ngx_http_cinematch_logvars_add(ngx_conf_t *cf);
/* records answer's "model_version" (a string) for the access log */
void ngx_http_cinematch_set_model_version(ngx_http_request_t *r,
    json_t *answer);


/* ngx_http_cinematch_pg.c */

/*
 * res is the first result of the query, or NULL when the query never ran
 * (timeout, connection lost: err says why).  It is cleared after the
 * handler returns.  The return value is passed to
 * ngx_http_finalize_request(); return NGX_DONE to keep waiting (another
 * query issued from the handler took its own count).
 */
typedef ngx_int_t (*ngx_http_cinematch_pg_handler_pt)(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);

ngx_int_t ngx_http_cinematch_pg_init_process(ngx_cycle_t *cycle,
    ngx_http_cinematch_main_conf_t *cmcf);
void ngx_http_cinematch_pg_exit_process(ngx_cycle_t *cycle);
ngx_int_t ngx_http_cinematch_pg_query(ngx_http_request_t *r, const char *sql,
    int nparams, const char *const *values,
    ngx_http_cinematch_pg_handler_pt handler, void *data);
ngx_uint_t ngx_http_cinematch_pg_connected(void);
/* the nginx side of a libpq socket, for the pool and the request log's own
 * connection: level-triggered interest in read / write, and letting go of
 * the connection (the socket stays libpq's; closed: it is closed already) */
ngx_int_t ngx_http_cinematch_pg_events(ngx_connection_t *c, ngx_uint_t read,
    ngx_uint_t write);
void ngx_http_cinematch_pg_release(ngx_connection_t *c, ngx_uint_t closed);
json_t *ngx_http_cinematch_pg_value(PGresult *res, int row, int col);
json_t *ngx_http_cinematch_pg_row(PGresult *res, int row);
json_t *ngx_http_cinematch_pg_rows(PGresult *res);


/* ngx_http_cinematch_redis.c */

/*
 * reply is NULL when the command did not complete (timeout, connection
 * lost or never made).  It belongs to hiredis and is only valid during the
 * handler.
 * The return value is passed to ngx_http_finalize_request() when r is not
 * NULL; with r == NULL the command is fire-and-forget.
 */
typedef ngx_int_t (*ngx_http_cinematch_redis_handler_pt)(
    ngx_http_request_t *r, void *data, redisReply *reply);

ngx_int_t ngx_http_cinematch_redis_init_process(ngx_cycle_t *cycle,
    ngx_http_cinematch_main_conf_t *cmcf);
void ngx_http_cinematch_redis_exit_process(ngx_cycle_t *cycle);
ngx_int_t ngx_http_cinematch_redis_command(ngx_http_request_t *r,
    ngx_http_cinematch_redis_handler_pt handler, void *data, int argc,
    const char **argv, const size_t *argvlen);
ngx_int_t ngx_http_cinematch_redis_commandf(ngx_http_request_t *r,
    ngx_http_cinematch_redis_handler_pt handler, void *data,
    const char *fmt, ...);
ngx_uint_t ngx_http_cinematch_redis_connected(void);
ngx_uint_t ngx_http_cinematch_redis_configured(void);


/* ngx_http_cinematch_sse.c: event streams with recycled buffers */

typedef struct {
    ngx_http_request_t             *request;
    ngx_chain_t                    *free;
    ngx_chain_t                    *busy;
    ngx_chain_t                    *out;          /* being built */
    ngx_chain_t                   **last;
    ngx_buf_t                      *buf;          /* current out buffer */
    ngx_event_t                     keepalive;    /* ": keep-alive" */
    unsigned                        done:1;       /* last_buf sent */
} ngx_http_cinematch_sse_t;

/* JSON string body of src into dst (room for 6 * len bytes). */
u_char *ngx_http_cinematch_json_text(u_char *dst, const u_char *src,
    size_t len);
/* 200 text/event-stream headers, keep-alive comments every 15 s. */
ngx_int_t ngx_http_cinematch_sse_start(ngx_http_request_t *r,
    ngx_http_cinematch_sse_t *sse);
/* Room for need bytes at the returned pointer; commit the new end. */
u_char *ngx_http_cinematch_sse_reserve(ngx_http_cinematch_sse_t *sse,
    size_t need);
void ngx_http_cinematch_sse_commit(ngx_http_cinematch_sse_t *sse,
    u_char *last);
/* Send what was committed (and end the stream with last_buf). */
ngx_int_t ngx_http_cinematch_sse_flush(ngx_http_cinematch_sse_t *sse,
    ngx_uint_t last_buf);
/* From the write handler: push out what the client refused before. */
ngx_int_t ngx_http_cinematch_sse_resume(ngx_http_cinematch_sse_t *sse);
/* The client has not taken the previous output yet. */
ngx_uint_t ngx_http_cinematch_sse_blocked(ngx_http_cinematch_sse_t *sse);


/* ngx_http_cinematch_api_movies.c */

ngx_int_t ngx_http_cinematch_movies_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_movie_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);


/* ngx_http_cinematch_api_ops.c */

ngx_int_t ngx_http_cinematch_health_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_ready_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_json_echo_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_pg_sleep_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_redis_echo_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_pg_types_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_args_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);


#if (NGX_HTTP_CINEMATCH_INFER)

/*
 * ngx_http_cinematch_infer.c: the inference daemon client.  The module
 * calls these when that file is built in (config defines
 * NGX_HTTP_CINEMATCH_INFER when it exists).
 *
 * ready fills `check` (a JSON object: status, daemons, models) and returns
 * NGX_OK when every configured daemon is usable, NGX_DECLINED otherwise.
 */
ngx_int_t ngx_http_cinematch_infer_init_process(ngx_cycle_t *cycle,
    ngx_http_cinematch_main_conf_t *cmcf);
void ngx_http_cinematch_infer_exit_process(ngx_cycle_t *cycle);
ngx_int_t ngx_http_cinematch_infer_ready(ngx_http_request_t *r,
    json_t *check);

#endif

#if (NGX_HTTP_CINEMATCH_INFER)

/* ngx_http_cinematch_api_recsys.c: recommendations via the daemon */
ngx_int_t ngx_http_cinematch_recommend_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_similar_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_popular_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_predict_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);

/* ngx_http_cinematch_api_chat.c: OpenAI-compatible chat */
ngx_int_t ngx_http_cinematch_chat_completions_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_models_list_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);

#endif

#if (NGX_HTTP_CINEMATCH_JOBS)

/* ngx_http_cinematch_api_jobs.c: batch prediction jobs */
ngx_int_t ngx_http_cinematch_batch_submit_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_job_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);

#endif

#if (NGX_HTTP_CINEMATCH_ECHO)

/* ngx_http_cinematch_api_echo.c: internal echo endpoints (cinematch_echo) */
ngx_int_t ngx_http_cinematch_echo_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_echo_stream_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);

#endif


#if (NGX_HTTP_CINEMATCH_ADMIN)

/* ngx_http_cinematch_api_admin.c: the model registry and admin views */
ngx_int_t ngx_http_cinematch_admin_models_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_admin_versions_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_admin_stage_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_admin_drift_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_admin_runs_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_admin_ingestions_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_admin_ingestion_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_admin_usage_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);

#endif


#if (NGX_HTTP_CINEMATCH_MODELS)

/* ngx_http_cinematch_api_models.c: canaries and the artifact check */
typedef ngx_int_t (*ngx_http_cinematch_artifact_next_pt)(
    ngx_http_request_t *r, void *data);
/* re-hash name:version's artifact off the event loop, then next(r, data)
 * when it is the registry's sha256; 404 / 409 / 503 answered otherwise */
ngx_int_t ngx_http_cinematch_artifact_check(ngx_http_request_t *r,
    const char *name, const char *version,
    ngx_http_cinematch_artifact_next_pt next, void *data);
ngx_int_t ngx_http_cinematch_models_canary_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_models_canary_stop_handler(
    ngx_http_request_t *r, ngx_http_cinematch_ctx_t *ctx);
ngx_int_t ngx_http_cinematch_models_upload_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx);
/* the body limit of ROUTE_UPLOAD routes (cinematch_model_upload_max_size) */
off_t ngx_http_cinematch_models_upload_max(ngx_http_request_t *r);

#endif

#endif /* _NGX_HTTP_CINEMATCH_H_INCLUDED_ */

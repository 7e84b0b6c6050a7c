
/*
 * ngx_http_cinematch_redis.c: one hiredis async context per worker,
 * driven by nginx events.
 *
 * The adapter is the usual five hooks: addRead/delRead/addWrite/delWrite
 * switch the events of an nginx connection made around hiredis' socket
 * (level-triggered: hiredis reads at most 16 KB per call and expects to be
 * called again while data is pending); cleanup drops that connection when
 * hiredis frees the context and closes the socket.
 *
 * A command needs a context, connected or connecting; with none (waiting
 * out the backoff) it starts a connect at once, at most every 100 ms.
 *
 * Ownership: hiredis frees its context itself after a failed connect or a
 * disconnect, so the callbacks only forget it and arm the reconnect timer
 * (100 ms doubling to 2 s); nothing here frees a hiredis object from inside
 * one of its callbacks.  A command (ngx_http_cinematch_redis_cmd_t) is
 * malloc'ed: hiredis holds it until it calls back, which can be after the
 * request is gone.  A pool cleanup of the request detaches it, and the
 * reply is then dropped.
 *
 * hiredis 0.14 has no command timeout: each command has a timer of
 * cinematch_redis_timeout.  When it fires the request gets its answer (no
 * reply) at once and the connection is dropped and re-made, since a server
 * that does not answer in time is not answering the commands queued behind
 * it either.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_cinematch.h"


#define NGX_HTTP_CINEMATCH_REDIS_BACKOFF_MIN  100
#define NGX_HTTP_CINEMATCH_REDIS_BACKOFF_MAX  2000


typedef struct {
    ngx_http_request_t                    *request;
    ngx_http_cinematch_redis_handler_pt    handler;   /* NULL: detached */
    void                                  *data;
    ngx_pool_cleanup_t                    *cln;
    ngx_event_t                            timer;
} ngx_http_cinematch_redis_cmd_t;


typedef struct {
    ngx_http_cinematch_main_conf_t        *mcf;
    ngx_log_t                             *log;
    redisAsyncContext                     *ac;
    ngx_connection_t                      *c;
    ngx_msec_t                             backoff;
    ngx_event_t                            timer;     /* reconnect, connect
                                                         timeout */
    ngx_event_t                            drop;      /* posted: free ac */
    ngx_msec_t                             kicked;    /* last on-demand
                                                         connect */
    unsigned                               connected:1;
    unsigned                               exiting:1;
} ngx_http_cinematch_redis_t;


static void ngx_http_cinematch_redis_connect(ngx_http_cinematch_redis_t *rd);
static void ngx_http_cinematch_redis_schedule(ngx_http_cinematch_redis_t *rd);
static void ngx_http_cinematch_redis_timer_handler(ngx_event_t *ev);
static void ngx_http_cinematch_redis_drop_handler(ngx_event_t *ev);
static void ngx_http_cinematch_redis_connect_cb(const redisAsyncContext *ac,
    int status);
static void ngx_http_cinematch_redis_disconnect_cb(
    const redisAsyncContext *ac, int status);
static void ngx_http_cinematch_redis_reply_cb(redisAsyncContext *ac,
    void *reply, void *privdata);
static ngx_http_cinematch_redis_cmd_t *ngx_http_cinematch_redis_cmd_create(
    ngx_http_request_t *r, ngx_http_cinematch_redis_handler_pt handler,
    void *data);
static void ngx_http_cinematch_redis_cmd_free(
    ngx_http_cinematch_redis_cmd_t *cmd);
static void ngx_http_cinematch_redis_cmd_start(ngx_http_request_t *r,
    ngx_http_cinematch_redis_cmd_t *cmd);
static void ngx_http_cinematch_redis_cmd_timeout(ngx_event_t *ev);
static void ngx_http_cinematch_redis_cmd_cleanup(void *data);
static void ngx_http_cinematch_redis_read_handler(ngx_event_t *ev);
static void ngx_http_cinematch_redis_write_handler(ngx_event_t *ev);
static void ngx_http_cinematch_redis_add_read(void *privdata);
static void ngx_http_cinematch_redis_del_read(void *privdata);
static void ngx_http_cinematch_redis_add_write(void *privdata);
static void ngx_http_cinematch_redis_del_write(void *privdata);
static void ngx_http_cinematch_redis_cleanup(void *privdata);


/* per worker */
static ngx_http_cinematch_redis_t  *ngx_http_cinematch_redis;


ngx_int_t
ngx_http_cinematch_redis_init_process(ngx_cycle_t *cycle,
    ngx_http_cinematch_main_conf_t *mcf)
{
    ngx_http_cinematch_redis_t  *rd;

    if (mcf->redis_host.len == 0) {
        return NGX_OK;
    }

    rd = ngx_pcalloc(cycle->pool, sizeof(ngx_http_cinematch_redis_t));
    if (rd == NULL) {
        return NGX_ERROR;
    }

    rd->mcf = mcf;
    rd->log = cycle->log;

    rd->timer.handler = ngx_http_cinematch_redis_timer_handler;
    rd->timer.data = rd;
    rd->timer.log = cycle->log;

    rd->drop.handler = ngx_http_cinematch_redis_drop_handler;
    rd->drop.data = rd;
    rd->drop.log = cycle->log;

    ngx_http_cinematch_redis = rd;

    ngx_http_cinematch_redis_connect(rd);

    return NGX_OK;
}


void
ngx_http_cinematch_redis_exit_process(ngx_cycle_t *cycle)
{
    redisAsyncContext           *ac;
    ngx_http_cinematch_redis_t  *rd;

    rd = ngx_http_cinematch_redis;
    if (rd == NULL) {
        return;
    }

    /* replies still pending are dropped: their requests die with us */

    rd->exiting = 1;

    if (rd->timer.timer_set) {
        ngx_del_timer(&rd->timer);
    }

    if (rd->drop.posted) {
        ngx_delete_posted_event(&rd->drop);
    }

    ac = rd->ac;
    rd->ac = NULL;

    if (ac != NULL) {
        redisAsyncFree(ac);
    }

    ngx_http_cinematch_redis = NULL;
}


/* whether this worker has Redis at all (connected or not) */

ngx_uint_t
ngx_http_cinematch_redis_configured(void)
{
    return ngx_http_cinematch_redis != NULL;
}


ngx_uint_t
ngx_http_cinematch_redis_connected(void)
{
    return ngx_http_cinematch_redis != NULL
           && ngx_http_cinematch_redis->connected;
}


static void
ngx_http_cinematch_redis_connect(ngx_http_cinematch_redis_t *rd)
{
    redisAsyncContext  *ac;
    ngx_connection_t   *c;

    if (rd->mcf->redis_port) {
        ac = redisAsyncConnect((const char *) rd->mcf->redis_host.data,
                               (int) rd->mcf->redis_port);

    } else {
        ac = redisAsyncConnectUnix((const char *) rd->mcf->redis_host.data);
    }

    if (ac == NULL) {
        ngx_log_error(NGX_LOG_ALERT, rd->log, 0,
                      "cinematch: cannot allocate a Redis context");
        ngx_http_cinematch_redis_schedule(rd);
        return;
    }

    if (ac->err) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "cinematch: cannot connect to Redis: %s", ac->errstr);
        redisAsyncFree(ac);
        ngx_http_cinematch_redis_schedule(rd);
        return;
    }

    c = ngx_get_connection(ac->c.fd, rd->log);
    if (c == NULL) {
        redisAsyncFree(ac);
        ngx_http_cinematch_redis_schedule(rd);
        return;
    }

    c->data = rd;
    c->read->log = rd->log;
    c->write->log = rd->log;
    c->read->handler = ngx_http_cinematch_redis_read_handler;
    c->write->handler = ngx_http_cinematch_redis_write_handler;

    rd->c = c;
    rd->ac = ac;

    /* the hooks first: setting the connect callback arms the write event */

    ac->ev.data = rd;
    ac->ev.addRead = ngx_http_cinematch_redis_add_read;
    ac->ev.delRead = ngx_http_cinematch_redis_del_read;
    ac->ev.addWrite = ngx_http_cinematch_redis_add_write;
    ac->ev.delWrite = ngx_http_cinematch_redis_del_write;
    ac->ev.cleanup = ngx_http_cinematch_redis_cleanup;

    redisAsyncSetConnectCallback(ac, ngx_http_cinematch_redis_connect_cb);
    redisAsyncSetDisconnectCallback(ac,
                                    ngx_http_cinematch_redis_disconnect_cb);

    /* connect timeout */

    rd->timer.cancelable = 1;
    ngx_add_timer(&rd->timer, rd->mcf->redis_timeout);
}


static void
ngx_http_cinematch_redis_schedule(ngx_http_cinematch_redis_t *rd)
{
    ngx_msec_t  delay;

    if (rd->exiting || ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    delay = rd->backoff;

    rd->backoff = (rd->backoff == 0)
                  ? NGX_HTTP_CINEMATCH_REDIS_BACKOFF_MIN
                  : ngx_min(rd->backoff * 2,
                            NGX_HTTP_CINEMATCH_REDIS_BACKOFF_MAX);

    if (rd->timer.timer_set) {
        ngx_del_timer(&rd->timer);
    }

    rd->timer.cancelable = 1;
    ngx_add_timer(&rd->timer, ngx_max(delay, 1));
}


static void
ngx_http_cinematch_redis_timer_handler(ngx_event_t *ev)
{
    redisAsyncContext           *ac;
    ngx_http_cinematch_redis_t  *rd;

    rd = ev->data;

    if (rd->ac == NULL) {
        if (!(rd->exiting || ngx_exiting || ngx_terminate || ngx_quit)) {
            ngx_http_cinematch_redis_connect(rd);
        }

        return;
    }

    if (rd->connected) {
        return;
    }

    /*
     * The connect did not finish in time.  Not connected, so hiredis will
     * not call the disconnect callback: forget the context here.
     */

    ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                  "cinematch: Redis connect timed out");

    ac = rd->ac;
    rd->ac = NULL;
    redisAsyncFree(ac);

    ngx_http_cinematch_redis_schedule(rd);
}


/*
 * Drops a connected context from outside hiredis' callbacks (a posted
 * event): hiredis calls every pending callback with no reply, then the
 * disconnect callback, which arms the reconnect.
 */

static void
ngx_http_cinematch_redis_drop_handler(ngx_event_t *ev)
{
    ngx_http_cinematch_redis_t  *rd;

    rd = ev->data;

    /* only a connected context calls the disconnect callback */

    if (rd->ac != NULL && rd->connected) {
        ngx_log_error(NGX_LOG_WARN, rd->log, 0,
                      "cinematch: dropping the Redis connection");
        redisAsyncFree(rd->ac);
    }
}


static void
ngx_http_cinematch_redis_connect_cb(const redisAsyncContext *ac, int status)
{
    ngx_http_cinematch_redis_t  *rd;

    rd = ac->ev.data;

    if (rd->timer.timer_set) {
        ngx_del_timer(&rd->timer);
    }

    if (status != REDIS_OK) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "cinematch: cannot connect to Redis: %s", ac->errstr);

        /* hiredis frees the context when this returns */

        rd->ac = NULL;
        rd->connected = 0;
        ngx_http_cinematch_redis_schedule(rd);
        return;
    }

    ngx_log_error(NGX_LOG_INFO, rd->log, 0,
                  "cinematch: connected to Redis");

    rd->connected = 1;
    rd->backoff = 0;
}


static void
ngx_http_cinematch_redis_disconnect_cb(const redisAsyncContext *ac,
    int status)
{
    ngx_http_cinematch_redis_t  *rd;

    rd = ac->ev.data;

    if (!rd->exiting) {
        ngx_log_error(NGX_LOG_ERR, rd->log, 0,
                      "cinematch: Redis connection lost: %s",
                      ac->err ? ac->errstr : "closed");
    }

    /* hiredis frees the context when this returns */

    rd->ac = NULL;
    rd->connected = 0;

    if (rd->drop.posted) {
        ngx_delete_posted_event(&rd->drop);
    }

    ngx_http_cinematch_redis_schedule(rd);
}


/*
 * Sends argv as one command.  Returns NGX_OK (the handler will be called
 * later; with r, r->main->count was taken and the caller returns
 * NGX_DONE), NGX_DECLINED when Redis is not configured or not connected,
 * or NGX_ERROR.  The handler is never called from inside this function.
 */

ngx_int_t
ngx_http_cinematch_redis_command(ngx_http_request_t *r,
    ngx_http_cinematch_redis_handler_pt handler, void *data, int argc,
    const char **argv, const size_t *argvlen)
{
    ngx_http_cinematch_redis_cmd_t  *cmd;

    cmd = ngx_http_cinematch_redis_cmd_create(r, handler, data);
    if (cmd == NULL) {
        return (ngx_http_cinematch_redis == NULL
                || ngx_http_cinematch_redis->ac == NULL)
               ? NGX_DECLINED : NGX_ERROR;
    }

    if (redisAsyncCommandArgv(ngx_http_cinematch_redis->ac,
                              ngx_http_cinematch_redis_reply_cb, cmd,
                              argc, argv, argvlen)
        != REDIS_OK)
    {
        ngx_http_cinematch_redis_cmd_free(cmd);
        return NGX_ERROR;
    }

    ngx_http_cinematch_redis_cmd_start(r, cmd);

    return NGX_OK;
}


/*
 * The same with hiredis' format: each %s (C string) or %b (pointer, size_t
 * length) becomes one argument of its own, so values are never parsed as
 * part of the command.
 */

ngx_int_t
ngx_http_cinematch_redis_commandf(ngx_http_request_t *r,
    ngx_http_cinematch_redis_handler_pt handler, void *data,
    const char *fmt, ...)
{
    int                              rc;
    va_list                          args;
    ngx_http_cinematch_redis_cmd_t  *cmd;

    cmd = ngx_http_cinematch_redis_cmd_create(r, handler, data);
    if (cmd == NULL) {
        return (ngx_http_cinematch_redis == NULL
                || ngx_http_cinematch_redis->ac == NULL)
               ? NGX_DECLINED : NGX_ERROR;
    }

    va_start(args, fmt);
    rc = redisvAsyncCommand(ngx_http_cinematch_redis->ac,
                            ngx_http_cinematch_redis_reply_cb, cmd, fmt, args);
    va_end(args);

    if (rc != REDIS_OK) {
        ngx_http_cinematch_redis_cmd_free(cmd);
        return NGX_ERROR;
    }

    ngx_http_cinematch_redis_cmd_start(r, cmd);

    return NGX_OK;
}


/* NULL when not connected nor connecting (an upstream error) or no memory */

static ngx_http_cinematch_redis_cmd_t *
ngx_http_cinematch_redis_cmd_create(ngx_http_request_t *r,
    ngx_http_cinematch_redis_handler_pt handler, void *data)
{
    ngx_http_cinematch_redis_t      *rd;
    ngx_http_cinematch_redis_cmd_t  *cmd;

    rd = ngx_http_cinematch_redis;

    if (rd == NULL) {
        return NULL;
    }

    /*
     * While a connect is in progress hiredis buffers commands and sends
     * them once connected (or fails them if the connect fails).  With no
     * context at all, waiting out the backoff, a command is a reason to
     * connect now: at most one such attempt per BACKOFF_MIN.
     */

    if (rd->ac == NULL
        && ngx_current_msec - rd->kicked >= NGX_HTTP_CINEMATCH_REDIS_BACKOFF_MIN
        && !(rd->exiting || ngx_exiting || ngx_terminate || ngx_quit))
    {
        rd->kicked = ngx_current_msec;

        if (rd->timer.timer_set) {
            ngx_del_timer(&rd->timer);
        }

        ngx_http_cinematch_redis_connect(rd);
    }

    if (rd->ac == NULL) {
        ngx_http_cinematch_metrics_upstream_error(
                                        NGX_HTTP_CINEMATCH_UPSTREAM_REDIS);
        return NULL;
    }

    cmd = ngx_calloc(sizeof(ngx_http_cinematch_redis_cmd_t), rd->log);
    if (cmd == NULL) {
        return NULL;
    }

    if (r != NULL) {
        cmd->cln = ngx_pool_cleanup_add(r->pool, 0);
        if (cmd->cln == NULL) {
            ngx_free(cmd);
            return NULL;
        }

        cmd->cln->handler = ngx_http_cinematch_redis_cmd_cleanup;
        cmd->cln->data = cmd;
    }

    cmd->request = r;
    cmd->handler = handler;
    cmd->data = data;

    return cmd;
}


/* hiredis refused the command: it never saw cmd */

static void
ngx_http_cinematch_redis_cmd_free(ngx_http_cinematch_redis_cmd_t *cmd)
{
    ngx_log_error(NGX_LOG_ERR, ngx_cycle->log, 0,
                  "cinematch: cannot queue a Redis command");

    if (cmd->cln) {
        cmd->cln->handler = NULL;
    }

    ngx_free(cmd);
}


static void
ngx_http_cinematch_redis_cmd_start(ngx_http_request_t *r,
    ngx_http_cinematch_redis_cmd_t *cmd)
{
    ngx_http_cinematch_redis_t  *rd;

    rd = ngx_http_cinematch_redis;

    cmd->timer.handler = ngx_http_cinematch_redis_cmd_timeout;
    cmd->timer.data = cmd;
    cmd->timer.log = r ? r->connection->log : rd->log;

    ngx_add_timer(&cmd->timer, rd->mcf->redis_timeout);

    if (r != NULL) {
        ngx_http_cinematch_wait(r);
    }
}


static void
ngx_http_cinematch_redis_reply_cb(redisAsyncContext *ac, void *reply,
    void *privdata)
{
    ngx_int_t                             rc;
    ngx_http_request_t                   *r;
    ngx_http_cinematch_redis_t           *rd;
    ngx_http_cinematch_redis_cmd_t       *cmd;
    ngx_http_cinematch_redis_handler_pt   handler;

    cmd = privdata;
    rd = ngx_http_cinematch_redis;

    if (cmd->timer.timer_set) {
        ngx_del_timer(&cmd->timer);
    }

    if (cmd->cln) {
        cmd->cln->handler = NULL;
    }

    r = cmd->request;
    handler = cmd->handler;

    if (handler != NULL && rd != NULL && !rd->exiting) {

        if (reply == NULL) {
            ngx_http_cinematch_metrics_upstream_error(
                                        NGX_HTTP_CINEMATCH_UPSTREAM_REDIS);
        }

        rc = handler(r, cmd->data, reply);

        if (r != NULL) {
            ngx_http_cinematch_finish(r, rc);
        }
    }

    /* hiredis frees the reply after this returns */

    ngx_free(cmd);
}


static void
ngx_http_cinematch_redis_cmd_timeout(ngx_event_t *ev)
{
    ngx_int_t                             rc;
    ngx_http_request_t                   *r;
    ngx_http_cinematch_redis_t           *rd;
    ngx_http_cinematch_redis_cmd_t       *cmd;
    ngx_http_cinematch_redis_handler_pt   handler;

    cmd = ev->data;
    rd = ngx_http_cinematch_redis;

    ngx_log_error(NGX_LOG_ERR, ev->log, 0,
                  "cinematch: Redis command timed out");

    ngx_http_cinematch_metrics_upstream_error(
                                        NGX_HTTP_CINEMATCH_UPSTREAM_REDIS);

    /* hiredis still holds cmd: detach it, its reply callback frees it */

    r = cmd->request;
    handler = cmd->handler;

    cmd->request = NULL;
    cmd->handler = NULL;

    if (cmd->cln) {
        cmd->cln->handler = NULL;
        cmd->cln = NULL;
    }

    if (rd != NULL && rd->ac != NULL && !rd->drop.posted) {
        ngx_post_event(&rd->drop, &ngx_posted_events);
    }

    if (handler != NULL) {
        rc = handler(r, cmd->data, NULL);

        if (r != NULL) {
            ngx_http_cinematch_finish(r, rc);
        }
    }
}


/* The request is going away before its reply arrived. */

static void
ngx_http_cinematch_redis_cmd_cleanup(void *data)
{
    ngx_http_cinematch_redis_cmd_t *cmd = data;

    if (cmd->timer.timer_set) {
        ngx_del_timer(&cmd->timer);
    }

    cmd->request = NULL;
    cmd->handler = NULL;
    cmd->cln = NULL;
}


static void
ngx_http_cinematch_redis_read_handler(ngx_event_t *ev)
{
    ngx_connection_t            *c;
    ngx_http_cinematch_redis_t  *rd;

    c = ev->data;
    rd = c->data;

    /* may free the context, and c with it (the cleanup hook) */

    if (rd->ac != NULL) {
        redisAsyncHandleRead(rd->ac);
    }
}


static void
ngx_http_cinematch_redis_write_handler(ngx_event_t *ev)
{
    ngx_connection_t            *c;
    ngx_http_cinematch_redis_t  *rd;

    c = ev->data;
    rd = c->data;

    if (rd->ac != NULL) {
        redisAsyncHandleWrite(rd->ac);
    }
}


static void
ngx_http_cinematch_redis_add_read(void *privdata)
{
    ngx_http_cinematch_redis_t *rd = privdata;

    if (rd->c != NULL && !rd->c->read->active) {
        if (ngx_add_event(rd->c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            ngx_log_error(NGX_LOG_ALERT, rd->log, 0,
                          "cinematch: cannot watch the Redis socket");
        }
    }
}


static void
ngx_http_cinematch_redis_del_read(void *privdata)
{
    ngx_http_cinematch_redis_t *rd = privdata;

    if (rd->c != NULL && rd->c->read->active) {
        (void) ngx_del_event(rd->c->read, NGX_READ_EVENT, 0);
    }
}


static void
ngx_http_cinematch_redis_add_write(void *privdata)
{
    ngx_http_cinematch_redis_t *rd = privdata;

    if (rd->c != NULL && !rd->c->write->active) {
        if (ngx_add_event(rd->c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            ngx_log_error(NGX_LOG_ALERT, rd->log, 0,
                          "cinematch: cannot watch the Redis socket");
        }
    }
}


static void
ngx_http_cinematch_redis_del_write(void *privdata)
{
    ngx_http_cinematch_redis_t *rd = privdata;

    if (rd->c != NULL && rd->c->write->active) {
        (void) ngx_del_event(rd->c->write, NGX_WRITE_EVENT, 0);
    }
}


/* hiredis is freeing the context and will close the socket right after. */

static void
ngx_http_cinematch_redis_cleanup(void *privdata)
{
    ngx_connection_t            *c;
    ngx_http_cinematch_redis_t  *rd = privdata;

    c = rd->c;
    if (c == NULL) {
        return;
    }

    if (c->read->active) {
        (void) ngx_del_event(c->read, NGX_READ_EVENT, NGX_CLOSE_EVENT);
    }

    if (c->write->active) {
        (void) ngx_del_event(c->write, NGX_WRITE_EVENT, NGX_CLOSE_EVENT);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    c->fd = (ngx_socket_t) -1;
    ngx_free_connection(c);

    rd->c = NULL;
}

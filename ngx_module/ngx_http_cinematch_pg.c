
/*
 * ngx_http_cinematch_pg.c: a per-worker pool of non-blocking libpq
 * connections driven by nginx events.
 *
 * Each worker opens cinematch_postgres_pool connections in init_process
 * (PQconnectStart, then PQconnectPoll whenever the socket is ready in the
 * direction libpq asked for).  A query is sent with PQsendQueryParams on an
 * idle connection, or waits in a FIFO until one is idle; its result is read
 * with PQconsumeInput/PQisBusy/PQgetResult as the socket becomes readable.
 * Nothing here blocks the worker.
 *
 * Lifetimes: a connection (ngx_http_cinematch_pg_conn_t) lives as long as
 * the worker; a query (ngx_http_cinematch_pg_query_t) lives in its
 * request's pool.  A pool cleanup unlinks a query whose request goes away:
 * a waiting query leaves the queue, a running one is abandoned and its
 * connection drops the result when it arrives.  So the completion handler
 * is called at most once, and only for a live request.
 *
 * Failures: a lost connection fails its running query and is re-opened
 * after a backoff (100 ms doubling to 2 s); when no connection is open or
 * opening, waiting queries fail, and a new query tries one connection at
 * once (at most every 100 ms) or is refused.  A query
 * that outlives cinematch_query_timeout (waiting plus running) fails; if it
 * was running its connection is closed, since a non-blocking cancel is not
 * available in libpq 15, and re-opened at once.
 *
 * libpq owns the sockets: they are watched level-triggered (libpq may
 * leave data in the kernel buffer), and never closed by nginx.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_cinematch.h"


#define NGX_HTTP_CINEMATCH_PG_BACKOFF_MIN  100
#define NGX_HTTP_CINEMATCH_PG_BACKOFF_MAX  2000
#define NGX_HTTP_CINEMATCH_PG_MAX_WAITING  1024


typedef enum {
    ngx_http_cinematch_pg_down = 0,       /* waiting to reconnect */
    ngx_http_cinematch_pg_connecting,
    ngx_http_cinematch_pg_idle,
    ngx_http_cinematch_pg_busy
} ngx_http_cinematch_pg_state_e;


typedef struct ngx_http_cinematch_pg_conn_s  ngx_http_cinematch_pg_conn_t;


typedef struct {
    ngx_http_request_t                *request;
    const char                        *sql;
    int                                nparams;
    const char *const                 *values;
    ngx_http_cinematch_pg_handler_pt   handler;
    void                              *data;

    ngx_msec_t                         deadline;
    ngx_event_t                        timer;     /* while waiting */
    ngx_queue_t                        queue;     /* in waiting */
    ngx_http_cinematch_pg_conn_t      *conn;      /* while running */

    unsigned                           waiting:1;
} ngx_http_cinematch_pg_query_t;


struct ngx_http_cinematch_pg_conn_s {
    PGconn                            *pg;
    ngx_connection_t                  *c;
    ngx_http_cinematch_pg_state_e      state;
    ngx_msec_t                         backoff;

    /* reconnect delay, connect timeout or query timeout, by state */
    ngx_event_t                        timer;

    ngx_http_cinematch_pg_query_t     *query;     /* NULL: abandoned */
    PGresult                          *result;    /* the first result */
    ngx_queue_t                        queue;     /* in idle */
};


typedef struct {
    ngx_http_cinematch_main_conf_t    *mcf;
    ngx_log_t                         *log;
    ngx_http_cinematch_pg_conn_t      *conns;
    ngx_uint_t                         nconns;
    ngx_queue_t                        idle;
    ngx_queue_t                        waiting;
    ngx_uint_t                         nwaiting;
    ngx_msec_t                         kicked;    /* last on-demand connect */
} ngx_http_cinematch_pg_pool_t;


static void ngx_http_cinematch_pg_connect(ngx_http_cinematch_pg_conn_t *pc);
static void ngx_http_cinematch_pg_connect_poll(
    ngx_http_cinematch_pg_conn_t *pc);
static ngx_int_t ngx_http_cinematch_pg_attach(
    ngx_http_cinematch_pg_conn_t *pc);
static void ngx_http_cinematch_pg_detach(ngx_http_cinematch_pg_conn_t *pc,
    ngx_uint_t closed);
static ngx_int_t ngx_http_cinematch_pg_want(ngx_http_cinematch_pg_conn_t *pc,
    ngx_uint_t read, ngx_uint_t write);
static void ngx_http_cinematch_pg_read_handler(ngx_event_t *ev);
static void ngx_http_cinematch_pg_write_handler(ngx_event_t *ev);
static void ngx_http_cinematch_pg_timer_handler(ngx_event_t *ev);
static void ngx_http_cinematch_pg_wait_timeout(ngx_event_t *ev);
static ngx_int_t ngx_http_cinematch_pg_send(ngx_http_cinematch_pg_conn_t *pc,
    ngx_http_cinematch_pg_query_t *q);
static ngx_int_t ngx_http_cinematch_pg_kick(
    ngx_http_cinematch_pg_pool_t *pool);
static void ngx_http_cinematch_pg_dispatch(void);
static void ngx_http_cinematch_pg_complete(ngx_http_cinematch_pg_conn_t *pc);
static void ngx_http_cinematch_pg_fail(ngx_http_cinematch_pg_conn_t *pc,
    const char *err, ngx_msec_t delay);
static void ngx_http_cinematch_pg_close(ngx_http_cinematch_pg_conn_t *pc);
static void ngx_http_cinematch_pg_schedule(ngx_http_cinematch_pg_conn_t *pc,
    ngx_msec_t delay);
static void ngx_http_cinematch_pg_deliver(ngx_http_cinematch_pg_query_t *q,
    PGresult *res, const char *err);
static void ngx_http_cinematch_pg_fail_waiting(const char *err);
static void ngx_http_cinematch_pg_cleanup(void *data);
static void ngx_http_cinematch_pg_notice(void *arg, const char *message);


/* per worker */
static ngx_http_cinematch_pg_pool_t  *ngx_http_cinematch_pg_pool;


ngx_int_t
ngx_http_cinematch_pg_init_process(ngx_cycle_t *cycle,
    ngx_http_cinematch_main_conf_t *mcf)
{
    ngx_uint_t                     i;
    ngx_http_cinematch_pg_pool_t  *pool;

    if (mcf->pg_conninfo.len == 0) {
        return NGX_OK;
    }

    pool = ngx_pcalloc(cycle->pool, sizeof(ngx_http_cinematch_pg_pool_t));
    if (pool == NULL) {
        return NGX_ERROR;
    }

    pool->conns = ngx_pcalloc(cycle->pool, mcf->pg_pool_size
                                        * sizeof(ngx_http_cinematch_pg_conn_t));
    if (pool->conns == NULL) {
        return NGX_ERROR;
    }

    pool->mcf = mcf;
    pool->log = cycle->log;
    pool->nconns = mcf->pg_pool_size;
    ngx_queue_init(&pool->idle);
    ngx_queue_init(&pool->waiting);

    ngx_http_cinematch_pg_pool = pool;

    for (i = 0; i < pool->nconns; i++) {
        pool->conns[i].timer.handler = ngx_http_cinematch_pg_timer_handler;
        pool->conns[i].timer.data = &pool->conns[i];
        pool->conns[i].timer.log = cycle->log;

        ngx_http_cinematch_pg_connect(&pool->conns[i]);
    }

    return NGX_OK;
}


void
ngx_http_cinematch_pg_exit_process(ngx_cycle_t *cycle)
{
    ngx_uint_t                     i;
    ngx_http_cinematch_pg_pool_t  *pool;

    pool = ngx_http_cinematch_pg_pool;
    if (pool == NULL) {
        return;
    }

    /* requests still waiting are being torn down with the worker */

    for (i = 0; i < pool->nconns; i++) {
        if (pool->conns[i].query) {
            pool->conns[i].query->conn = NULL;
            pool->conns[i].query = NULL;
        }

        ngx_http_cinematch_pg_close(&pool->conns[i]);
    }

    ngx_http_cinematch_pg_pool = NULL;
}


ngx_uint_t
ngx_http_cinematch_pg_connected(void)
{
    ngx_uint_t                     i, n;
    ngx_http_cinematch_pg_pool_t  *pool;

    pool = ngx_http_cinematch_pg_pool;
    if (pool == NULL) {
        return 0;
    }

    n = 0;

    for (i = 0; i < pool->nconns; i++) {
        if (pool->conns[i].state >= ngx_http_cinematch_pg_idle) {
            n++;
        }
    }

    return n;
}


/*
 * Queues a parameterised query for r.  Returns NGX_OK (the handler will be
 * called later, and r->main->count was taken: the caller returns
 * NGX_DONE), NGX_DECLINED when PostgreSQL is not configured or no
 * connection is open or opening, NGX_BUSY when too many queries wait, or
 * NGX_ERROR.  The handler is never called from inside this function.  sql
 * and values must stay valid until the handler runs (the request pool).
 */

ngx_int_t
ngx_http_cinematch_pg_query(ngx_http_request_t *r, const char *sql,
    int nparams, const char *const *values,
    ngx_http_cinematch_pg_handler_pt handler, void *data)
{
    ngx_uint_t                      i;
    ngx_pool_cleanup_t             *cln;
    ngx_http_cinematch_pg_pool_t   *pool;
    ngx_http_cinematch_pg_query_t  *q;

    pool = ngx_http_cinematch_pg_pool;

    if (pool == NULL) {
        return NGX_DECLINED;
    }

    for (i = 0; i < pool->nconns; i++) {
        if (pool->conns[i].state != ngx_http_cinematch_pg_down) {
            break;
        }
    }

    if (i == pool->nconns && ngx_http_cinematch_pg_kick(pool) != NGX_OK) {
        ngx_http_cinematch_metrics_upstream_error(
                                            NGX_HTTP_CINEMATCH_UPSTREAM_PG);
        return NGX_DECLINED;
    }

    if (pool->nwaiting >= NGX_HTTP_CINEMATCH_PG_MAX_WAITING) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "cinematch: %ui PostgreSQL queries waiting, "
                      "refusing more", pool->nwaiting);
        ngx_http_cinematch_metrics_upstream_error(
                                            NGX_HTTP_CINEMATCH_UPSTREAM_PG);
        return NGX_BUSY;
    }

    q = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_pg_query_t));
    if (q == NULL) {
        return NGX_ERROR;
    }

    cln = ngx_pool_cleanup_add(r->pool, 0);
    if (cln == NULL) {
        return NGX_ERROR;
    }

    q->request = r;
    q->sql = sql;
    q->nparams = nparams;
    q->values = values;
    q->handler = handler;
    q->data = data;
    q->deadline = ngx_current_msec + pool->mcf->pg_timeout;

    q->timer.handler = ngx_http_cinematch_pg_wait_timeout;
    q->timer.data = q;
    q->timer.log = r->connection->log;

    cln->handler = ngx_http_cinematch_pg_cleanup;
    cln->data = q;

    ngx_queue_insert_tail(&pool->waiting, &q->queue);
    pool->nwaiting++;
    q->waiting = 1;

    ngx_add_timer(&q->timer, pool->mcf->pg_timeout);

    ngx_http_cinematch_wait(r);

    ngx_http_cinematch_pg_dispatch();

    return NGX_OK;
}


/*
 * Every connection is down, waiting out its backoff.  A query is a reason
 * to try one now rather than fail: PostgreSQL may be back, and the answer
 * of a connect comes quickly either way (a refused connect fails the
 * query through ngx_http_cinematch_pg_fail()).  At most one such attempt
 * per NGX_HTTP_CINEMATCH_PG_BACKOFF_MIN, so that a flood of requests
 * against a dead server does not become a flood of connects.
 */

static ngx_int_t
ngx_http_cinematch_pg_kick(ngx_http_cinematch_pg_pool_t *pool)
{
    ngx_http_cinematch_pg_conn_t  *pc;

    if (ngx_current_msec - pool->kicked < NGX_HTTP_CINEMATCH_PG_BACKOFF_MIN
        || ngx_exiting || ngx_terminate || ngx_quit)
    {
        return NGX_DECLINED;
    }

    pool->kicked = ngx_current_msec;

    pc = &pool->conns[0];

    if (pc->timer.timer_set) {
        ngx_del_timer(&pc->timer);
    }

    ngx_http_cinematch_pg_connect(pc);

    return (pc->state == ngx_http_cinematch_pg_connecting)
           ? NGX_OK : NGX_DECLINED;
}


/* Hands waiting queries to idle connections, oldest first. */

static void
ngx_http_cinematch_pg_dispatch(void)
{
    ngx_queue_t                    *qq;
    ngx_http_cinematch_pg_conn_t   *pc;
    ngx_http_cinematch_pg_pool_t   *pool;
    ngx_http_cinematch_pg_query_t  *q;

    pool = ngx_http_cinematch_pg_pool;

    while (!ngx_queue_empty(&pool->waiting)
           && !ngx_queue_empty(&pool->idle))
    {
        qq = ngx_queue_head(&pool->waiting);
        q = ngx_queue_data(qq, ngx_http_cinematch_pg_query_t, queue);

        qq = ngx_queue_head(&pool->idle);
        pc = ngx_queue_data(qq, ngx_http_cinematch_pg_conn_t, queue);

        if (ngx_http_cinematch_pg_send(pc, q) != NGX_OK) {

            /* the query stays first in line; the connection is re-opened */

            ngx_http_cinematch_pg_close(pc);
            ngx_http_cinematch_pg_schedule(pc, 0);
        }
    }
}


static ngx_int_t
ngx_http_cinematch_pg_send(ngx_http_cinematch_pg_conn_t *pc,
    ngx_http_cinematch_pg_query_t *q)
{
    int                            rc;
    ngx_msec_int_t                 left;
    ngx_http_cinematch_pg_pool_t  *pool;

    pool = ngx_http_cinematch_pg_pool;

    if (!PQsendQueryParams(pc->pg, q->sql, q->nparams, NULL, q->values,
                           NULL, NULL, 0))
    {
        ngx_log_error(NGX_LOG_ERR, pool->log, 0,
                      "cinematch: PQsendQueryParams() failed: %s",
                      PQerrorMessage(pc->pg));
        return NGX_ERROR;
    }

    ngx_queue_remove(&pc->queue);
    pc->state = ngx_http_cinematch_pg_busy;

    ngx_queue_remove(&q->queue);
    pool->nwaiting--;
    q->waiting = 0;

    if (q->timer.timer_set) {
        ngx_del_timer(&q->timer);
    }

    q->conn = pc;
    pc->query = q;

    left = (ngx_msec_int_t) (q->deadline - ngx_current_msec);

    pc->timer.cancelable = 0;
    ngx_add_timer(&pc->timer, (ngx_msec_t) ngx_max(left, 1));

    rc = PQflush(pc->pg);

    if (rc == -1) {
        ngx_log_error(NGX_LOG_ERR, pool->log, 0,
                      "cinematch: PQflush() failed: %s",
                      PQerrorMessage(pc->pg));

        /* the handler must not run from inside a query call: post it */

        ngx_http_cinematch_pg_want(pc, 1, 1);
        return NGX_OK;
    }

    if (ngx_http_cinematch_pg_want(pc, 1, rc == 1) != NGX_OK) {
        ngx_http_cinematch_pg_want(pc, 1, 1);
    }

    return NGX_OK;
}


static void
ngx_http_cinematch_pg_connect(ngx_http_cinematch_pg_conn_t *pc)
{
    const char                    *keywords[4], *values[4];
    ngx_http_cinematch_pg_pool_t  *pool;

    pool = ngx_http_cinematch_pg_pool;

    /*
     * The configured string is expanded as "dbname"; what follows it
     * overrides: results are UTF-8, as JSON needs, whatever the server's
     * default, and sessions are named in pg_stat_activity.
     */

    keywords[0] = "dbname";
    values[0] = (const char *) pool->mcf->pg_conninfo.data;
    keywords[1] = "client_encoding";
    values[1] = "UTF8";
    keywords[2] = "fallback_application_name";
    values[2] = "cinematch-nginx";
    keywords[3] = NULL;
    values[3] = NULL;

    pc->pg = PQconnectStartParams(keywords, values, 1);

    if (pc->pg == NULL) {
        ngx_log_error(NGX_LOG_ALERT, pool->log, 0,
                      "cinematch: PQconnectStartParams() failed: "
                      "out of memory");
        ngx_http_cinematch_pg_schedule(pc, pc->backoff);
        return;
    }

    PQsetNoticeProcessor(pc->pg, ngx_http_cinematch_pg_notice, pool);

    if (PQstatus(pc->pg) == CONNECTION_BAD
        || ngx_http_cinematch_pg_attach(pc) != NGX_OK)
    {
        ngx_log_error(NGX_LOG_ERR, pool->log, 0,
                      "cinematch: cannot connect to PostgreSQL: %s",
                      PQerrorMessage(pc->pg));
        ngx_http_cinematch_pg_close(pc);
        ngx_http_cinematch_pg_schedule(pc, pc->backoff);
        return;
    }

    pc->state = ngx_http_cinematch_pg_connecting;

    pc->timer.cancelable = 1;
    ngx_add_timer(&pc->timer, pool->mcf->pg_timeout);

    /* libpq: behave as if PGRES_POLLING_WRITING had been returned */

    if (ngx_http_cinematch_pg_want(pc, 0, 1) != NGX_OK) {
        ngx_http_cinematch_pg_close(pc);
        ngx_http_cinematch_pg_schedule(pc, pc->backoff);
    }
}


static void
ngx_http_cinematch_pg_connect_poll(ngx_http_cinematch_pg_conn_t *pc)
{
    ngx_http_cinematch_pg_pool_t  *pool;

    pool = ngx_http_cinematch_pg_pool;

    switch (PQconnectPoll(pc->pg)) {

    case PGRES_POLLING_READING:
        if (ngx_http_cinematch_pg_attach(pc) != NGX_OK
            || ngx_http_cinematch_pg_want(pc, 1, 0) != NGX_OK)
        {
            break;
        }

        return;

    case PGRES_POLLING_WRITING:
        if (ngx_http_cinematch_pg_attach(pc) != NGX_OK
            || ngx_http_cinematch_pg_want(pc, 0, 1) != NGX_OK)
        {
            break;
        }

        return;

    case PGRES_POLLING_OK:
        if (PQsetnonblocking(pc->pg, 1) != 0
            || ngx_http_cinematch_pg_attach(pc) != NGX_OK
            || ngx_http_cinematch_pg_want(pc, 1, 0) != NGX_OK)
        {
            break;
        }

        if (pc->timer.timer_set) {
            ngx_del_timer(&pc->timer);
        }

        ngx_log_error(NGX_LOG_INFO, pool->log, 0,
                      "cinematch: connected to PostgreSQL, server %d",
                      PQserverVersion(pc->pg));

        pc->state = ngx_http_cinematch_pg_idle;
        pc->backoff = 0;
        ngx_queue_insert_tail(&pool->idle, &pc->queue);

        ngx_http_cinematch_pg_dispatch();
        return;

    default: /* PGRES_POLLING_FAILED */
        break;
    }

    ngx_log_error(NGX_LOG_ERR, pool->log, 0,
                  "cinematch: cannot connect to PostgreSQL: %s",
                  PQerrorMessage(pc->pg));

    ngx_http_cinematch_pg_fail(pc, "not connected", pc->backoff);
}


/*
 * libpq may replace the socket while it connects (another address of the
 * host, SSL refused): the old one is closed by then, so its events are
 * dropped without a syscall and the new one is watched.
 */

static ngx_int_t
ngx_http_cinematch_pg_attach(ngx_http_cinematch_pg_conn_t *pc)
{
    ngx_socket_t                   fd;
    ngx_connection_t              *c;
    ngx_http_cinematch_pg_pool_t  *pool;

    pool = ngx_http_cinematch_pg_pool;
    fd = PQsocket(pc->pg);

    if (pc->c != NULL) {
        if (pc->c->fd == fd) {
            return NGX_OK;
        }

        ngx_http_cinematch_pg_detach(pc, 1);
    }

    if (fd == (ngx_socket_t) -1) {
        return NGX_ERROR;
    }

    c = ngx_get_connection(fd, pool->log);
    if (c == NULL) {
        return NGX_ERROR;
    }

    c->data = pc;
    c->log = pool->log;
    c->read->log = pool->log;
    c->write->log = pool->log;
    c->read->handler = ngx_http_cinematch_pg_read_handler;
    c->write->handler = ngx_http_cinematch_pg_write_handler;

    pc->c = c;

    return NGX_OK;
}


static void
ngx_http_cinematch_pg_detach(ngx_http_cinematch_pg_conn_t *pc,
    ngx_uint_t closed)
{
    if (pc->c == NULL) {
        return;
    }

    ngx_http_cinematch_pg_release(pc->c, closed);

    pc->c = NULL;
}


void
ngx_http_cinematch_pg_release(ngx_connection_t *c, ngx_uint_t closed)
{
    ngx_uint_t  flags;

    flags = closed ? NGX_CLOSE_EVENT : 0;

    if (c->read->active) {
        (void) ngx_del_event(c->read, NGX_READ_EVENT, flags);
    }

    if (c->write->active) {
        (void) ngx_del_event(c->write, NGX_WRITE_EVENT, flags);
    }

    if (c->read->posted) {
        ngx_delete_posted_event(c->read);
    }

    if (c->write->posted) {
        ngx_delete_posted_event(c->write);
    }

    /* the socket belongs to libpq */

    c->fd = (ngx_socket_t) -1;
    ngx_free_connection(c);
}


static ngx_int_t
ngx_http_cinematch_pg_want(ngx_http_cinematch_pg_conn_t *pc, ngx_uint_t read,
    ngx_uint_t write)
{
    return ngx_http_cinematch_pg_events(pc->c, read, write);
}


/* Level-triggered, so that data libpq did not read yet is reported again. */

ngx_int_t
ngx_http_cinematch_pg_events(ngx_connection_t *c, ngx_uint_t read,
    ngx_uint_t write)
{
    if (read && !c->read->active) {
        if (ngx_add_event(c->read, NGX_READ_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

    } else if (!read && c->read->active) {
        if (ngx_del_event(c->read, NGX_READ_EVENT, 0) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    if (write && !c->write->active) {
        if (ngx_add_event(c->write, NGX_WRITE_EVENT, NGX_LEVEL_EVENT)
            != NGX_OK)
        {
            return NGX_ERROR;
        }

    } else if (!write && c->write->active) {
        if (ngx_del_event(c->write, NGX_WRITE_EVENT, 0) != NGX_OK) {
            return NGX_ERROR;
        }
    }

    return NGX_OK;
}


static void
ngx_http_cinematch_pg_read_handler(ngx_event_t *ev)
{
    PGresult                      *res;
    PGnotify                      *notify;
    ngx_connection_t              *c;
    ngx_http_cinematch_pg_conn_t  *pc;

    c = ev->data;
    pc = c->data;

    switch (pc->state) {

    case ngx_http_cinematch_pg_connecting:
        ngx_http_cinematch_pg_connect_poll(pc);
        return;

    case ngx_http_cinematch_pg_busy:
        if (!PQconsumeInput(pc->pg)) {
            ngx_log_error(NGX_LOG_ERR, c->log, 0,
                          "cinematch: PostgreSQL connection lost: %s",
                          PQerrorMessage(pc->pg));
            ngx_http_cinematch_pg_fail(pc, "connection lost", 0);
            return;
        }

        while (!PQisBusy(pc->pg)) {
            res = PQgetResult(pc->pg);

            if (res == NULL) {
                ngx_http_cinematch_pg_complete(pc);
                return;
            }

            if (pc->result == NULL) {
                pc->result = res;

            } else {
                PQclear(res);
            }
        }

        return;

    case ngx_http_cinematch_pg_idle:
        if (!PQconsumeInput(pc->pg) || PQstatus(pc->pg) != CONNECTION_OK) {
            ngx_log_error(NGX_LOG_WARN, c->log, 0,
                          "cinematch: idle PostgreSQL connection lost: %s",
                          PQerrorMessage(pc->pg));
            ngx_http_cinematch_pg_fail(pc, "connection lost", 0);
            return;
        }

        while ((notify = PQnotifies(pc->pg)) != NULL) {
            PQfreemem(notify);
        }

        return;

    default:
        return;
    }
}


static void
ngx_http_cinematch_pg_write_handler(ngx_event_t *ev)
{
    int                            rc;
    ngx_connection_t              *c;
    ngx_http_cinematch_pg_conn_t  *pc;

    c = ev->data;
    pc = c->data;

    switch (pc->state) {

    case ngx_http_cinematch_pg_connecting:
        ngx_http_cinematch_pg_connect_poll(pc);
        return;

    case ngx_http_cinematch_pg_busy:
        rc = PQflush(pc->pg);

        if (rc == -1) {
            ngx_log_error(NGX_LOG_ERR, c->log, 0,
                          "cinematch: cannot send to PostgreSQL: %s",
                          PQerrorMessage(pc->pg));
            ngx_http_cinematch_pg_fail(pc, "connection lost", 0);
            return;
        }

        if (rc == 0 && ngx_http_cinematch_pg_want(pc, 1, 0) != NGX_OK) {
            ngx_http_cinematch_pg_fail(pc, "connection lost", 0);
        }

        return;

    default:
        (void) ngx_http_cinematch_pg_want(pc, 1, 0);
        return;
    }
}


static void
ngx_http_cinematch_pg_timer_handler(ngx_event_t *ev)
{
    ngx_http_cinematch_pg_conn_t  *pc;

    pc = ev->data;

    switch (pc->state) {

    case ngx_http_cinematch_pg_down:
        if (ngx_exiting || ngx_terminate || ngx_quit) {
            return;
        }

        ngx_http_cinematch_pg_connect(pc);
        return;

    case ngx_http_cinematch_pg_connecting:
        ngx_log_error(NGX_LOG_ERR, ev->log, 0,
                      "cinematch: PostgreSQL connect timed out");
        ngx_http_cinematch_pg_fail(pc, "not connected", pc->backoff);
        return;

    case ngx_http_cinematch_pg_busy:
        ngx_log_error(NGX_LOG_ERR, ev->log, 0,
                      "cinematch: PostgreSQL query timed out");
        ngx_http_cinematch_pg_fail(pc, "timeout", 0);
        return;

    default:
        return;
    }
}


static void
ngx_http_cinematch_pg_wait_timeout(ngx_event_t *ev)
{
    ngx_http_cinematch_pg_pool_t   *pool;
    ngx_http_cinematch_pg_query_t  *q;

    q = ev->data;
    pool = ngx_http_cinematch_pg_pool;

    ngx_log_error(NGX_LOG_ERR, ev->log, 0,
                  "cinematch: PostgreSQL query timed out waiting for a "
                  "connection");

    ngx_queue_remove(&q->queue);
    pool->nwaiting--;
    q->waiting = 0;

    ngx_http_cinematch_pg_deliver(q, NULL, "timeout");
}


static void
ngx_http_cinematch_pg_complete(ngx_http_cinematch_pg_conn_t *pc)
{
    PGresult                       *res;
    ngx_http_cinematch_pg_pool_t   *pool;
    ngx_http_cinematch_pg_query_t  *q;

    pool = ngx_http_cinematch_pg_pool;

    q = pc->query;
    res = pc->result;

    pc->query = NULL;
    pc->result = NULL;

    if (pc->timer.timer_set) {
        ngx_del_timer(&pc->timer);
    }

    pc->state = ngx_http_cinematch_pg_idle;
    ngx_queue_insert_tail(&pool->idle, &pc->queue);

    /* queries that waited go first, then the handler may issue more */

    ngx_http_cinematch_pg_dispatch();

    if (q != NULL) {
        q->conn = NULL;

        if (res != NULL && PQresultStatus(res) == PGRES_FATAL_ERROR) {
            ngx_log_error(NGX_LOG_ERR, pool->log, 0,
                          "cinematch: PostgreSQL query failed: %s",
                          PQresultErrorMessage(res));
            ngx_http_cinematch_metrics_upstream_error(
                                            NGX_HTTP_CINEMATCH_UPSTREAM_PG);
        }

        ngx_http_cinematch_pg_deliver(q, res, NULL);
    }

    if (res != NULL) {
        PQclear(res);
    }
}


/*
 * The connection is unusable: fail its query, re-open it after delay, and
 * when no connection is left open or opening, fail the waiting queries.
 */

static void
ngx_http_cinematch_pg_fail(ngx_http_cinematch_pg_conn_t *pc, const char *err,
    ngx_msec_t delay)
{
    ngx_uint_t                      i;
    ngx_http_cinematch_pg_pool_t   *pool;
    ngx_http_cinematch_pg_query_t  *q;

    pool = ngx_http_cinematch_pg_pool;

    q = pc->query;
    pc->query = NULL;

    ngx_http_cinematch_pg_close(pc);
    ngx_http_cinematch_pg_schedule(pc, delay);

    if (q != NULL) {
        q->conn = NULL;
        ngx_http_cinematch_pg_deliver(q, NULL, err);
    }

    for (i = 0; i < pool->nconns; i++) {
        if (pool->conns[i].state != ngx_http_cinematch_pg_down) {
            return;
        }
    }

    ngx_http_cinematch_pg_fail_waiting(err);
}


static void
ngx_http_cinematch_pg_close(ngx_http_cinematch_pg_conn_t *pc)
{
    if (pc->timer.timer_set) {
        ngx_del_timer(&pc->timer);
    }

    if (pc->state == ngx_http_cinematch_pg_idle) {
        ngx_queue_remove(&pc->queue);
    }

    /* libpq closes the socket itself when it sees the connection die */

    if (pc->c != NULL) {
        ngx_http_cinematch_pg_detach(pc, pc->pg == NULL
                                         || PQsocket(pc->pg) != pc->c->fd);
    }

    if (pc->result) {
        PQclear(pc->result);
        pc->result = NULL;
    }

    if (pc->pg) {
        PQfinish(pc->pg);
        pc->pg = NULL;
    }

    pc->state = ngx_http_cinematch_pg_down;
}


static void
ngx_http_cinematch_pg_schedule(ngx_http_cinematch_pg_conn_t *pc,
    ngx_msec_t delay)
{
    if (ngx_exiting || ngx_terminate || ngx_quit) {
        return;
    }

    if (pc->backoff == 0) {
        pc->backoff = NGX_HTTP_CINEMATCH_PG_BACKOFF_MIN;

    } else {
        pc->backoff = ngx_min(pc->backoff * 2,
                              NGX_HTTP_CINEMATCH_PG_BACKOFF_MAX);
    }

    /* an idle worker may exit with this timer pending */

    pc->timer.cancelable = 1;
    ngx_add_timer(&pc->timer, ngx_max(delay, 1));
}


static void
ngx_http_cinematch_pg_deliver(ngx_http_cinematch_pg_query_t *q,
    PGresult *res, const char *err)
{
    ngx_int_t            rc;
    ngx_http_request_t  *r;

    if (q->timer.timer_set) {
        ngx_del_timer(&q->timer);
    }

    if (err != NULL) {
        ngx_http_cinematch_metrics_upstream_error(
                                            NGX_HTTP_CINEMATCH_UPSTREAM_PG);
    }

    r = q->request;

    /* q lives in r->pool: not touched once the request is finalized */

    rc = q->handler(r, q->data, res, err);

    ngx_http_cinematch_finish(r, rc);
}


static void
ngx_http_cinematch_pg_fail_waiting(const char *err)
{
    ngx_queue_t                    *qq;
    ngx_http_cinematch_pg_pool_t   *pool;
    ngx_http_cinematch_pg_query_t  *q;

    pool = ngx_http_cinematch_pg_pool;

    while (!ngx_queue_empty(&pool->waiting)) {
        qq = ngx_queue_head(&pool->waiting);
        q = ngx_queue_data(qq, ngx_http_cinematch_pg_query_t, queue);

        ngx_queue_remove(qq);
        pool->nwaiting--;
        q->waiting = 0;

        ngx_http_cinematch_pg_deliver(q, NULL, err);
    }
}


/* The request is going away before its query completed. */

static void
ngx_http_cinematch_pg_cleanup(void *data)
{
    ngx_http_cinematch_pg_query_t *q = data;

    if (q->timer.timer_set) {
        ngx_del_timer(&q->timer);
    }

    if (q->waiting) {
        ngx_queue_remove(&q->queue);
        q->waiting = 0;

        if (ngx_http_cinematch_pg_pool != NULL) {
            ngx_http_cinematch_pg_pool->nwaiting--;
        }
    }

    if (q->conn) {

        /* running: the connection drops the result when it arrives */

        q->conn->query = NULL;
        q->conn = NULL;
    }
}


static void
ngx_http_cinematch_pg_notice(void *arg, const char *message)
{
    ngx_http_cinematch_pg_pool_t *pool = arg;

    ngx_log_error(NGX_LOG_INFO, pool->log, 0,
                  "cinematch: PostgreSQL notice: %s", message);
}


/*
 * Results to JSON, for handlers.  Types map by OID: booleans, integers and
 * floating point (numeric too) become JSON booleans and numbers, json and
 * jsonb are parsed, NULL is null, anything else is its text (arrays and
 * timestamps included: build those with to_json() in SQL when a handler
 * needs structure).  A value jansson refuses (a non-finite float) falls
 * back to its text; NULL is returned only when memory runs out.
 */

#define NGX_HTTP_CINEMATCH_BOOLOID     16
#define NGX_HTTP_CINEMATCH_INT8OID     20
#define NGX_HTTP_CINEMATCH_INT2OID     21
#define NGX_HTTP_CINEMATCH_INT4OID     23
#define NGX_HTTP_CINEMATCH_OIDOID      26
#define NGX_HTTP_CINEMATCH_JSONOID     114
#define NGX_HTTP_CINEMATCH_FLOAT4OID   700
#define NGX_HTTP_CINEMATCH_FLOAT8OID   701
#define NGX_HTTP_CINEMATCH_NUMERICOID  1700
#define NGX_HTTP_CINEMATCH_JSONBOID    3802


json_t *
ngx_http_cinematch_pg_value(PGresult *res, int row, int col)
{
    int          len;
    char        *v, *end;
    double       d;
    json_t      *json;
    long long    n;

    if (PQgetisnull(res, row, col)) {
        return json_null();
    }

    v = PQgetvalue(res, row, col);
    len = PQgetlength(res, row, col);
    json = NULL;

    switch (PQftype(res, col)) {

    case NGX_HTTP_CINEMATCH_BOOLOID:
        return json_boolean(v[0] == 't');

    case NGX_HTTP_CINEMATCH_INT8OID:
    case NGX_HTTP_CINEMATCH_INT2OID:
    case NGX_HTTP_CINEMATCH_INT4OID:
    case NGX_HTTP_CINEMATCH_OIDOID:
        errno = 0;
        n = strtoll(v, &end, 10);

        if (errno == 0 && end == v + len && len > 0) {
            json = json_integer((json_int_t) n);
        }

        break;

    case NGX_HTTP_CINEMATCH_FLOAT4OID:
    case NGX_HTTP_CINEMATCH_FLOAT8OID:
    case NGX_HTTP_CINEMATCH_NUMERICOID:
        errno = 0;
        d = strtod(v, &end);

        if (errno == 0 && end == v + len && len > 0) {
            json = json_real(d);   /* NULL for NaN and infinities */
        }

        break;

    case NGX_HTTP_CINEMATCH_JSONOID:
    case NGX_HTTP_CINEMATCH_JSONBOID:
        json = json_loadb(v, len, JSON_DECODE_ANY, NULL);
        break;

    default:
        break;
    }

    if (json == NULL) {
        json = json_stringn(v, len);
    }

    return json;
}


json_t *
ngx_http_cinematch_pg_row(PGresult *res, int row)
{
    int      col, ncols;
    json_t  *obj, *value;

    obj = json_object();
    if (obj == NULL) {
        return NULL;
    }

    ncols = PQnfields(res);

    for (col = 0; col < ncols; col++) {
        value = ngx_http_cinematch_pg_value(res, row, col);

        if (json_object_set_new(obj, PQfname(res, col), value) != 0) {
            json_decref(obj);
            return NULL;
        }
    }

    return obj;
}


json_t *
ngx_http_cinematch_pg_rows(PGresult *res)
{
    int      row, nrows;
    json_t  *rows;

    rows = json_array();
    if (rows == NULL) {
        return NULL;
    }

    nrows = PQntuples(res);

    for (row = 0; row < nrows; row++) {
        if (json_array_append_new(rows, ngx_http_cinematch_pg_row(res, row))
            != 0)
        {
            json_decref(rows);
            return NULL;
        }
    }

    return rows;
}

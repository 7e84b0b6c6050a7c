/*
 * cmd_infer.c: `cinematch infer`, the inference daemon.
 *
 * One thread runs an epoll loop over: the listening unix socket, one
 * doorbell connection per nginx worker, a signalfd, and a tick timeout.
 * Requests arrive as SUBMIT doorbells naming a slot of our shm segment;
 * each becomes a job.  Whole-answer kinds finish inside the loop; streaming
 * kinds are stepped by the scheduler tick, which is where batched work
 * (recommendation SGEMMs, LM decode steps) runs: one step serves every
 * active job, and a job that joined since the last tick joins this one.
 *
 * Why one thread: the doorbells and the scheduler share one view of the
 * jobs without locks, and batching wants every runnable job in one place.
 * The one exception is recommendation scoring: a batch's misses are split
 * between --score-threads threads (BLAS at one thread each) and the loop
 * thread waits for them (a fork-join), so the model, its fold-in overlay
 * and the answer cache are still only touched by the loop thread between
 * batches.
 *
 * The heartbeat in the header is refreshed every loop turn (the loop wakes
 * at least every CM_INFER_TICK_MAX_MS), so a wedged loop shows up in nginx
 * as a stale heartbeat, not as a hang.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <grp.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cblas.h>

#include "cinematch/common.h"
#include "cinematch/ipc.h"
#include "cinematch/lm_kernels.h"
#include "cinematch/serve_dialog.h"
#include "cinematch/serve_recsys.h"
#include "cmd.h"
#include "infer_models.h"

#define CM_INFER_MAX_CONNS     1024
#define CM_INFER_TICK_MAX_MS   50      /* heartbeat ≥ 20 Hz */
#define CM_INFER_OUTBUF        4096    /* queued doorbells per connection */
#define CM_INFER_SWEEP_NS      (1000ull * 1000000ull)
#define CM_INFER_BATCH_MAX     32      /* recommendations scored before
                                          their doorbells go out */


typedef struct {
    int       fd;                       /* -1 when unused */
    uint8_t   out[CM_INFER_OUTBUF];     /* doorbells the socket refused */
    size_t    out_len;
    int       want_out;                 /* EPOLLOUT armed */
    int       held;                     /* in cm_infer_t.held */
} cm_infer_conn_t;

typedef struct {
    int              active;            /* stepped by the scheduler */
    int              conn;              /* index into conns, -1 if gone */
    cm_ipc_slot_t   *s;
    uint32_t         kind;
    uint64_t         next_ns;           /* ECHO_STREAM: next chunk due */
    uint64_t         remaining;         /* ECHO_STREAM: chunks left */
    uint64_t         delay_ns;
    cm_dlg_stream_t *dlg;               /* CHAT: generating, or NULL */
    int              chat_queued;       /* CHAT: waiting for a sequence */
    int              tokens_counted;    /* CHAT: completion tokens already
                                           in the statistics */
    uint64_t         last_token_ns;     /* CHAT: when the previous token
                                           reached the ring; 0 = none yet */
} cm_infer_job_t;

typedef struct cm_infer_pool_s cm_infer_pool_t;

typedef struct {
    cm_infer_pool_t        *pool;
    pthread_t               th;
    cm_rs_scratch_t        *w;
    const cm_rs_rec_req_t  *q;          /* this thread's part of a batch */
    char                  **out;
    size_t                  n;
    int                     rc;
} cm_infer_scorer_t;

struct cm_infer_pool_s {
    pthread_mutex_t         mu;
    pthread_cond_t          go;         /* gen moved: a batch to score */
    pthread_cond_t          done;       /* running reached 0 */
    uint64_t                gen;
    uint32_t                running;
    int                     stop;
    const cm_rs_server_t   *rs;
    cm_infer_scorer_t      *sc;         /* (n); sc[0] is the loop thread */
    uint32_t                n;
};

typedef struct {
    cm_ipc_seg_t      seg;
    int               epfd;
    int               lfd;
    int               sfd;              /* read end of the signal pipe */
    char              sock_path[108];
    char              pidfile[256];
    cm_infer_conn_t   conns[CM_INFER_MAX_CONNS];
    cm_infer_job_t   *jobs;             /* one per slot */
    uint32_t          nactive;
    int               draining;
    uint64_t          drain_deadline_ns;
    uint64_t          drain_timeout_ns;
    uint64_t          last_sweep_ns;
    cm_infer_models_t models;
    int               listen_fd;        /* PostgreSQL LISTEN, or -1 */
    uint32_t         *pending;          /* RECOMMEND slots for the batch */
    uint32_t          npending;
    uint32_t          nchat;            /* CHAT generations running */
    uint32_t          nchat_queued;     /* CHAT waiting for admission */
    uint32_t          chat_queue_max;
    cm_infer_pool_t   pool;             /* scoring threads */
    uint32_t          score_threads;
    uint32_t          answer_cache;     /* entries; 0: off */
    int               hold_bells;       /* queue doorbells, send later */
    /* the answer caches' counters as published: per served model (the
     * production one, the canary) the server last seen and its counts
     * then, so a reload adds to the totals instead of resetting them */
    const cm_rs_server_t *ac_srv[2];
    uint64_t          ac_seen[2][2];
    uint64_t          ac_total[2];      /* hits, misses */
    uint32_t          nheld;
    int               held[CM_INFER_MAX_CONNS];   /* conns with queued bells */
} cm_infer_t;


static int cm_infer_main(int argc, char **argv);

/* Signals go through a self-pipe rather than a signalfd: OpenBLAS starts
 * its thread pool before main(), and a process-directed signal may land on
 * any thread that does not block it, so blocking it in main is not enough. */
static int cm_infer_sigpipe[2] = { -1, -1 };

CM_COMMAND("infer", "inference daemon: serves nginx through shared memory",
           cm_infer_main);


/* sd_notify(3) without libsystemd: one datagram to $NOTIFY_SOCKET. */
static void
cm_sd_notify(const char *state)
{
    const char          *path = getenv("NOTIFY_SOCKET");
    struct sockaddr_un   sa;
    int                  fd;
    size_t               len;

    if (path == NULL || (path[0] != '/' && path[0] != '@')
        || strlen(path) >= sizeof(sa.sun_path))
    {
        return;
    }
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        return;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    len = strlen(path);
    memcpy(sa.sun_path, path, len);
    if (sa.sun_path[0] == '@') {
        sa.sun_path[0] = '\0';   /* abstract namespace */
    }
    (void) sendto(fd, state, strlen(state), MSG_NOSIGNAL,
                  (struct sockaddr *) &sa,
                  (socklen_t) (offsetof(struct sockaddr_un, sun_path) + len));
    close(fd);
}


static void
cm_infer_epoll(cm_infer_t *d, int op, int fd, uint32_t events, uint64_t tag)
{
    struct epoll_event ev;

    memset(&ev, 0, sizeof(ev));
    ev.events = events;
    ev.data.u64 = tag;
    if (epoll_ctl(d->epfd, op, fd, &ev) != 0 && op != EPOLL_CTL_DEL) {
        cm_error("epoll_ctl(%d): %s", fd, strerror(errno));
    }
}


static void
cm_infer_on_signal(int signo)
{
    unsigned char  b = (unsigned char) signo;
    int            saved = errno;

    if (write(cm_infer_sigpipe[1], &b, 1) < 0) {
        /* pipe full: a signal is already pending */
    }
    errno = saved;
}


/* Tags: 0 = listener, 1 = signals, 2 = PostgreSQL LISTEN, 3 + i = conn i. */
#define CM_TAG_LISTEN  0
#define CM_TAG_SIGNAL  1
#define CM_TAG_PG      2
#define CM_TAG_CONN    3


static void
cm_infer_conn_flush(cm_infer_t *d, int ci)
{
    cm_infer_conn_t  *c = &d->conns[ci];
    ssize_t           n;

    while (c->out_len > 0) {
        n = send(c->fd, c->out, c->out_len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) {
                break;
            }
            return;   /* the read side will see the close */
        }
        memmove(c->out, c->out + n, c->out_len - (size_t) n);
        c->out_len -= (size_t) n;
    }
    if ((c->out_len > 0) != c->want_out) {
        c->want_out = c->out_len > 0;
        cm_infer_epoll(d, EPOLL_CTL_MOD, c->fd,
                       EPOLLIN | (c->want_out ? EPOLLOUT : 0),
                       CM_TAG_CONN + (uint64_t) ci);
    }
}


static void
cm_infer_send(cm_infer_t *d, int ci, uint32_t op, uint32_t slot)
{
    cm_infer_conn_t  *c;
    cm_ipc_msg_t      m = { op, slot };

    if (ci < 0 || d->conns[ci].fd < 0) {
        return;
    }
    c = &d->conns[ci];
    if (c->out_len + sizeof(m) > sizeof(c->out) && d->hold_bells) {
        cm_infer_conn_flush(d, ci);   /* held ones first */
    }
    if (c->out_len + sizeof(m) > sizeof(c->out)) {
        /* 512 doorbells behind: the worker is not reading; it will still
         * find the final state when it next looks at the slot */
        cm_warn("doorbell queue full on connection %d, dropping READY", ci);
        return;
    }
    memcpy(c->out + c->out_len, &m, sizeof(m));
    c->out_len += sizeof(m);
    if (d->hold_bells) {
        /* a batch is being answered: one send per connection at its end
         * (and one wake-up of that nginx worker) instead of one per answer */
        if (!c->held) {
            c->held = 1;
            d->held[d->nheld++] = ci;
        }
        return;
    }
    cm_infer_conn_flush(d, ci);
}


/* Send the doorbells queued while hold_bells was set. */
static void
cm_infer_bells_flush(cm_infer_t *d)
{
    uint32_t  i;
    int       ci;

    d->hold_bells = 0;
    for (i = 0; i < d->nheld; i++) {
        ci = d->held[i];
        d->conns[ci].held = 0;
        if (d->conns[ci].fd >= 0) {
            cm_infer_conn_flush(d, ci);
        }
    }
    d->nheld = 0;
}


/* Ring READY at most once until nginx clears the bell (see ipc.h). */
static void
cm_infer_ready(cm_infer_t *d, cm_infer_job_t *j, uint32_t slot)
{
    if (atomic_exchange(&j->s->bell, 1) == 0) {
        cm_infer_send(d, j->conn, CM_MSG_READY, slot);
    }
}


static void
cm_infer_set_result(cm_infer_t *d, cm_ipc_slot_t *s, const void *p,
                    size_t len)
{
    if (len > d->seg.hdr->res_cap) {
        len = d->seg.hdr->res_cap;
    }
    memcpy(cm_ipc_slot_res(&d->seg, s), p, len);
    s->res_len = (uint32_t) len;
}


static void
cm_infer_fail(cm_infer_t *d, cm_infer_job_t *j, uint32_t slot, int code,
              const char *msg)
{
    cm_infer_set_result(d, j->s, msg, strlen(msg));
    if (cm_ipc_finish(j->s, code) == CM_OK) {
        cm_infer_ready(d, j, slot);
    }
}


static void
cm_infer_job_end(cm_infer_t *d, cm_infer_job_t *j)
{
    if (j->active) {
        j->active = 0;
        d->nactive--;
        atomic_fetch_sub(&d->seg.hdr->queue_depth, 1);
    }
    atomic_fetch_add(&d->seg.hdr->requests_total, 1);
}


static void
cm_infer_answer(cm_infer_t *d, cm_infer_job_t *j, uint32_t slot, char *json)
{
    size_t len;

    if (json == NULL) {
        cm_infer_fail(d, j, slot, CM_ENOMEM, "out of memory");
        return;
    }
    len = strlen(json);
    if (len > d->seg.hdr->res_cap) {
        free(json);
        cm_infer_fail(d, j, slot, CM_EINVAL, "answer larger than the slot");
        return;
    }
    cm_infer_set_result(d, j->s, json, len);
    free(json);
    if (cm_ipc_finish(j->s, 0) == CM_OK) {
        cm_infer_ready(d, j, slot);
    }
}


/* Validate a recsys request (everything nginx wrote is untrusted) and
 * answer it, or queue RECOMMEND for the batch: returns 1 when queued. */
static int
cm_infer_recsys(cm_infer_t *d, cm_infer_job_t *j, uint32_t slot,
                uint32_t kind, uint32_t len)
{
    cm_ipc_slot_t  *s = j->s;
    const uint8_t  *req = cm_ipc_slot_req(&d->seg, s);
    uint64_t        p[CM_IPC_NPARAMS];
    char            err[256], *out = NULL;
    uint32_t        mask, n, i;
    int32_t        *ids;
    float          *vals;
    int             rc;

    memcpy(p, s->params, sizeof(p));   /* read once */
    if (d->models.rs == NULL) {
        cm_infer_fail(d, j, slot, CM_EAGAIN, "no recsys model is loaded");
        return 0;
    }

    switch (kind) {

    case CM_REQ_RECOMMEND:
        if (p[0] > INT32_MAX || p[1] < 1 || p[1] > CM_RSS_MAX_K
            || (p[3] != 0 && (p[3] < 1800 || p[3] > 2200))
            || (p[4] != 0 && (p[4] < 1800 || p[4] > 2200)) || len > 1024
            || cm_rs_parse_genres((const char *) req, len, &mask, err,
                                  sizeof(err)) != CM_OK)
        {
            cm_infer_fail(d, j, slot, CM_EINVAL, "bad recommend request");
            return 0;
        }
        d->pending[d->npending++] = slot;
        return 1;

    case CM_REQ_SIMILAR:
        if (p[0] < 1 || p[0] > INT32_MAX || p[1] < 1 || p[1] > CM_RSS_MAX_K) {
            cm_infer_fail(d, j, slot, CM_EINVAL, "bad similar request");
            return 0;
        }
        rc = cm_rs_server_similar(d->models.rs, (int32_t) p[0],
                                  (uint32_t) p[1], &out, err, sizeof(err));
        break;

    case CM_REQ_POPULAR:
        if (p[0] < 1 || p[0] > CM_RSS_MAX_K || len > 1024
            || cm_rs_parse_genres((const char *) req, len, &mask, err,
                                  sizeof(err)) != CM_OK)
        {
            cm_infer_fail(d, j, slot, CM_EINVAL, "bad popular request");
            return 0;
        }
        rc = cm_rs_server_popular(d->models.rs, (uint32_t) p[0], mask, &out);
        break;

    case CM_REQ_PREDICT:
        n = len / 4;
        if (p[0] < 1 || p[0] > INT32_MAX || len % 4 != 0 || n < 1
            || n > CM_RSS_MAX_PREDICT)
        {
            cm_infer_fail(d, j, slot, CM_EINVAL, "bad predict request");
            return 0;
        }
        ids = malloc(len);
        if (ids == NULL) {
            cm_infer_fail(d, j, slot, CM_ENOMEM, "out of memory");
            return 0;
        }
        memcpy(ids, req, len);
        rc = cm_rs_server_predict(cm_infer_models_recsys_for(&d->models,
                                                             (int64_t) p[0]),
                                  (int32_t) p[0], ids, n, &out, err,
                                  sizeof(err));
        free(ids);
        break;

    case CM_REQ_FOLD_IN:
        n = len / 8;
        if (p[0] < 1 || p[0] > INT32_MAX || len % 8 != 0 || n < 1
            || n > 1000)
        {
            cm_infer_fail(d, j, slot, CM_EINVAL, "bad fold-in request");
            return 0;
        }
        ids = malloc((size_t) n * sizeof(int32_t));
        vals = malloc((size_t) n * sizeof(float));
        if (ids == NULL || vals == NULL) {
            free(ids);
            free(vals);
            cm_infer_fail(d, j, slot, CM_ENOMEM, "out of memory");
            return 0;
        }
        for (i = 0; i < n; i++) {
            memcpy(&ids[i], req + 8 * i, 4);
            memcpy(&vals[i], req + 8 * i + 4, 4);
        }
        rc = cm_rs_server_fold_in(d->models.rs, (int32_t) p[0], ids, vals, n,
                                  err, sizeof(err));
        if (rc == CM_OK && d->models.canary != NULL
            && cm_rs_server_fold_in(d->models.canary, (int32_t) p[0], ids,
                                    vals, n, err, sizeof(err)) != CM_OK)
        {
            /* production took them: the canary answers from the
             * dataset vector until the next load folds them in */
            cm_warn("infer: canary fold-in of user %d: %s", (int) p[0], err);
        }
        free(ids);
        free(vals);
        if (rc == CM_OK) {
            char buf[96];

            snprintf(buf, sizeof(buf), "{\"user_id\":%d,\"folded\":%u,"
                     "\"model_version\":\"%s\"}", (int) p[0], n,
                     cm_rs_server_version(cm_infer_models_recsys_for(
                         &d->models, (int64_t) p[0])));
            out = strdup(buf);
        }
        break;

    default:
        return 0;
    }

    if (rc != CM_OK) {
        cm_infer_fail(d, j, slot, rc, err);
        return 0;
    }
    cm_infer_answer(d, j, slot, out);
    return 0;
}


/* ---- scoring threads ------------------------------------------------------
 * The loop thread splits a batch's cache misses into one part per scoring
 * thread, scores the first part itself and waits for the others (a
 * fork-join), so the server is never touched by anyone else while a
 * fold-in, a reload or the answer cache runs: those stay in the loop
 * thread, between batches, as before. */

static void *
cm_infer_scorer_main(void *arg)
{
    cm_infer_scorer_t  *sc = arg;
    cm_infer_pool_t    *p = sc->pool;
    uint64_t            seen = 0;

    for ( ;; ) {
        pthread_mutex_lock(&p->mu);
        while (p->gen == seen && !p->stop) {
            pthread_cond_wait(&p->go, &p->mu);
        }
        seen = p->gen;
        if (p->stop) {
            pthread_mutex_unlock(&p->mu);
            return NULL;
        }
        pthread_mutex_unlock(&p->mu);

        sc->rc = sc->n > 0 ? cm_rs_server_recommend_with(p->rs, sc->w, sc->q,
                                                         sc->n, sc->out)
                           : CM_OK;

        pthread_mutex_lock(&p->mu);
        if (--p->running == 0) {
            pthread_cond_signal(&p->done);
        }
        pthread_mutex_unlock(&p->mu);
    }
}


static int
cm_infer_pool_start(cm_infer_pool_t *p, uint32_t n)
{
    uint32_t i;

    p->sc = calloc(n, sizeof(cm_infer_scorer_t));
    if (p->sc == NULL) {
        return CM_ENOMEM;
    }
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    for (i = 0; i < n; i++) {
        p->sc[i].pool = p;
        p->sc[i].w = cm_rs_scratch_new();
        if (p->sc[i].w == NULL) {
            return CM_ENOMEM;
        }
        p->n = i + 1;
        /* sc[0] is the loop thread's own part */
        if (i > 0 && pthread_create(&p->sc[i].th, NULL, cm_infer_scorer_main,
                                    &p->sc[i]) != 0)
        {
            p->n = i;
            cm_rs_scratch_free(p->sc[i].w);
            return CM_EIO;
        }
    }
    return CM_OK;
}


static void
cm_infer_pool_stop(cm_infer_pool_t *p)
{
    uint32_t i;

    if (p->sc == NULL) {
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (i = 0; i < p->n; i++) {
        if (i > 0) {
            pthread_join(p->sc[i].th, NULL);
        }
        cm_rs_scratch_free(p->sc[i].w);
    }
    free(p->sc);
    p->sc = NULL;
    p->n = 0;
}


/* Score q[0..n) into out[], on every thread when there is enough work. */
static int
cm_infer_pool_score(cm_infer_pool_t *p, const cm_rs_server_t *rs,
                    const cm_rs_rec_req_t *q, size_t n, char **out)
{
    uint32_t  t, parts, i;
    size_t    at = 0, each;
    int       rc;

    parts = p->n;
    if ((size_t) parts > n) {
        parts = (uint32_t) n;
    }
    if (parts <= 1) {
        return cm_rs_server_recommend_with(rs, p->sc[0].w, q, n, out);
    }
    for (t = 0; t < p->n; t++) {
        each = t < parts ? (n - at) / (parts - t) : 0;
        p->sc[t].q = q + at;
        p->sc[t].out = out + at;
        p->sc[t].n = each;
        p->sc[t].rc = CM_OK;
        at += each;
    }
    pthread_mutex_lock(&p->mu);
    p->rs = rs;
    p->running = p->n - 1;
    p->gen++;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);

    rc = cm_rs_server_recommend_with(rs, p->sc[0].w, p->sc[0].q, p->sc[0].n,
                                     p->sc[0].out);

    pthread_mutex_lock(&p->mu);
    while (p->running > 0) {
        pthread_cond_wait(&p->done, &p->mu);
    }
    pthread_mutex_unlock(&p->mu);

    for (t = 1; t < p->n; t++) {
        if (p->sc[t].rc != CM_OK) {
            /* that part has no answers: fail it, keep the others */
            for (i = 0; i < p->sc[t].n; i++) {
                p->sc[t].out[i] = NULL;
            }
        }
    }
    if (rc != CM_OK) {
        for (i = 0; i < p->sc[0].n; i++) {
            p->sc[0].out[i] = NULL;
        }
    }
    return CM_OK;
}


/* Score the cache misses with the model each user is routed to: one
 * scoring pass per served version (the canary's users apart from the
 * rest).  srv[i] names the model of q[i]; out[i] stays NULL for a request
 * whose part failed. */
static void
cm_infer_score_routed(cm_infer_t *d, cm_rs_rec_req_t *q, uint32_t n,
                      cm_rs_server_t **srv, char **out)
{
    cm_rs_rec_req_t  *sub;
    cm_rs_server_t   *m;
    uint32_t         *idx, i, k, side;
    char            **subout;

    memset(out, 0, n * sizeof(*out));
    if (d->models.canary == NULL) {
        (void) cm_infer_pool_score(&d->pool, d->models.rs, q, n, out);
        return;
    }
    sub = malloc(n * sizeof(*sub));
    idx = malloc(n * sizeof(*idx));
    subout = calloc(n, sizeof(*subout));
    for (side = 0; sub != NULL && idx != NULL && subout != NULL && side < 2;
         side++)
    {
        m = side ? d->models.canary : d->models.rs;
        for (i = 0, k = 0; i < n; i++) {
            if (srv[i] == m) {
                idx[k] = i;
                sub[k++] = q[i];
            }
        }
        if (k == 0) {
            continue;
        }
        memset(subout, 0, k * sizeof(*subout));
        (void) cm_infer_pool_score(&d->pool, m, sub, k, subout);
        for (i = 0; i < k; i++) {
            out[idx[i]] = subout[i];
        }
    }
    free(sub);
    free(idx);
    free(subout);
}


/* One part of the batch (see cm_infer_recommend_batch): answers the
 * answer cache holds are written at once; the rest are scored (one
 * scoring pass per scoring thread's share) and kept in the cache.
 * Requests never wait for a batch to fill. */
static void
cm_infer_recommend_part(cm_infer_t *d, const uint32_t *pending, uint32_t n)
{
    cm_rs_rec_req_t  *q;
    char            **out;
    uint32_t          i, mask, nmiss = 0, *miss;
    cm_rs_server_t  **srv, *m;
    cm_infer_job_t   *j;
    uint64_t          p[CM_IPC_NPARAMS];
    const char       *hit;
    size_t            len;

    q = calloc(n, sizeof(*q));
    out = calloc(n, sizeof(*out));
    miss = calloc(n, sizeof(*miss));
    srv = calloc(n, sizeof(cm_rs_server_t *));
    if (q == NULL || out == NULL || miss == NULL || srv == NULL
        || d->models.rs == NULL)
    {
        for (i = 0; i < n; i++) {
            j = &d->jobs[pending[i]];
            cm_infer_fail(d, j, pending[i], CM_EAGAIN,
                          "recommendation batch failed");
            cm_infer_job_end(d, j);
        }
        free(q);
        free(out);
        free(miss);
        free(srv);
        return;
    }
    for (i = 0; i < n; i++) {
        j = &d->jobs[pending[i]];
        memcpy(p, j->s->params, sizeof(p));
        /* validated at submit; parse again from our own copy of the
         * checks' inputs, never trusting the slot between the two */
        mask = 0;
        (void) cm_rs_parse_genres((const char *) cm_ipc_slot_req(&d->seg,
                                                                 j->s),
                                  j->s->req_len <= 1024 ? j->s->req_len : 0,
                                  &mask, NULL, 0);
        q[nmiss].user = (int32_t) (p[0] <= INT32_MAX ? p[0] : 0);
        q[nmiss].k = (uint32_t) (p[1] >= 1 && p[1] <= CM_RSS_MAX_K ? p[1]
                                                                   : 10);
        q[nmiss].exclude_seen = (p[2] & CM_REC_EXCLUDE_SEEN) != 0;
        q[nmiss].log_members = (p[2] & CM_REC_LOG_MEMBERS) != 0;
        q[nmiss].genres = mask;
        q[nmiss].year_min = (int32_t) (p[3] <= 2200 ? p[3] : 0);
        q[nmiss].year_max = (int32_t) (p[4] <= 2200 ? p[4] : 0);

        /* the canary's users are answered (and cached) by the canary */
        m = cm_infer_models_recsys_for(&d->models, q[nmiss].user);
        srv[nmiss] = m;
        hit = cm_rs_server_cache_get(m, &q[nmiss], &len);
        if (hit != NULL && len <= d->seg.hdr->res_cap) {
            cm_infer_set_result(d, j->s, hit, len);
            if (cm_ipc_finish(j->s, 0) == CM_OK) {
                cm_infer_ready(d, j, pending[i]);
            }
            cm_infer_job_end(d, j);
            continue;
        }
        miss[nmiss++] = pending[i];
    }
    if (nmiss > 0) {
        cm_infer_score_routed(d, q, nmiss, srv, out);
    }
    for (i = 0; i < nmiss; i++) {
        j = &d->jobs[miss[i]];
        if (out[i] == NULL) {
            cm_infer_fail(d, j, miss[i], CM_ENOMEM,
                          "recommendation failed");
        } else if (strlen(out[i]) > d->seg.hdr->res_cap) {
            cm_infer_fail(d, j, miss[i], CM_EINVAL,
                          "answer larger than the slot");
        } else {
            cm_infer_set_result(d, j->s, out[i], strlen(out[i]));
            if (cm_ipc_finish(j->s, 0) == CM_OK) {
                cm_infer_ready(d, j, miss[i]);
            }
        }
        cm_infer_job_end(d, j);
        cm_rs_server_cache_put(srv[i], &q[i], out[i]);   /* takes it */
    }
    free(q);
    free(out);
    free(miss);
    free(srv);
}


/* The batch: every RECOMMEND that arrived since the last turn, in parts of
 * at most CM_INFER_BATCH_MAX; each part's doorbells go out (one send per
 * nginx worker) before the next part is scored, so the first arrivals of
 * a large batch do not wait for the last. */
static void
cm_infer_recommend_batch(cm_infer_t *d)
{
    uint32_t  n = d->npending, at, cnt;

    d->npending = 0;
    for (at = 0; at < n; at += cnt) {
        cnt = n - at < CM_INFER_BATCH_MAX ? n - at : CM_INFER_BATCH_MAX;
        d->hold_bells = 1;
        cm_infer_recommend_part(d, d->pending + at, cnt);
        cm_infer_bells_flush(d);
    }
}


/* Parse a CHAT payload (untrusted) and start generating; CM_EAGAIN when
 * no sequence is free (the job then waits in the queue). */
static int
cm_infer_chat_start(cm_infer_t *d, cm_infer_job_t *j, char *err,
                    size_t errlen)
{
    const uint8_t   *p = cm_ipc_slot_req(&d->seg, j->s);
    uint32_t         len = j->s->req_len, off = 0, n, i, l;
    const char      *turns[CM_DLG_MAX_TURNS], *stops[CM_DLG_MAX_STOPS];
    size_t           lens[CM_DLG_MAX_TURNS];
    char             stopbuf[CM_DLG_MAX_STOPS][CM_DLG_MAX_STOP_LEN + 1];
    uint8_t         *copy;
    uint64_t         prm[CM_IPC_NPARAMS];
    cm_lm_params_t   lp;
    int              rc, nstops;

    if (d->models.dlg == NULL) {
        return cm_seterr(err, errlen, CM_EAGAIN, "no dialog model is loaded");
    }
    if (d->nchat >= (uint32_t) cm_dlg_server_max_seqs(d->models.dlg)) {
        return CM_EAGAIN;
    }
    if (len > d->seg.hdr->req_cap) {
        return cm_seterr(err, errlen, CM_EINVAL, "bad chat payload");
    }
    /* our own copy: nginx could change the slot while we parse */
    copy = malloc(len + 1);
    if (copy == NULL) {
        return cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
    }
    memcpy(copy, p, len);
    memcpy(prm, j->s->params, sizeof(prm));

#define CM_TAKE_U32(v)                                                      \
    do {                                                                    \
        if (len - off < 4) { goto bad; }                                    \
        memcpy(&(v), copy + off, 4);                                        \
        off += 4;                                                           \
    } while (0)

    CM_TAKE_U32(n);
    if (n < 1 || n > CM_DLG_MAX_TURNS) {
        goto bad;
    }
    for (i = 0; i < n; i++) {
        CM_TAKE_U32(l);
        if (l > len - off) {
            goto bad;
        }
        turns[i] = (const char *) copy + off;
        lens[i] = l;
        off += l;
    }
    CM_TAKE_U32(l);
    nstops = (int) l;
    if (l > CM_DLG_MAX_STOPS) {
        goto bad;
    }
    for (i = 0; i < l; i++) {
        uint32_t sl;

        CM_TAKE_U32(sl);
        if (sl < 1 || sl > CM_DLG_MAX_STOP_LEN || sl > len - off
            || memchr(copy + off, '\0', sl) != NULL)
        {
            goto bad;
        }
        memcpy(stopbuf[i], copy + off, sl);
        stopbuf[i][sl] = '\0';
        stops[i] = stopbuf[i];
        off += sl;
    }
    if (off != len || prm[0] < 1 || prm[0] > CM_DLG_MAX_TOKENS
        || prm[1] > 2000 || prm[2] > 1000 || prm[3] < 1 || prm[3] > 1000
        || (prm[5] != 0 && (prm[5] < 1000 || prm[5] > 2000)))
    {
        goto bad;
    }
#undef CM_TAKE_U32

    cm_lm_params_default(&lp);
    lp.max_tokens = (int) prm[0];
    lp.temperature = (float) prm[1] / 1000.0f;
    lp.top_k = (int) prm[2];
    lp.top_p = (float) prm[3] / 1000.0f;
    lp.seed = prm[4];
    if (prm[5] != 0) {
        lp.repetition_penalty = (float) prm[5] / 1000.0f;
    }
    j->dlg = calloc(1, sizeof(cm_dlg_stream_t));
    if (j->dlg == NULL) {
        free(copy);
        return cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
    }
    rc = cm_dlg_start(d->models.dlg, j->dlg, turns, lens, n, &lp, stops,
                      nstops, err, errlen);
    free(copy);
    if (rc != CM_OK) {
        free(j->dlg);
        j->dlg = NULL;
        return rc == CM_EAGAIN ? CM_EINVAL : rc;
    }
    d->nchat++;
    atomic_store_explicit(&j->s->prompt_tokens,
                          (uint32_t) j->dlg->prompt_tokens,
                          memory_order_relaxed);
    atomic_fetch_add_explicit(&d->seg.hdr->stats.prompt_tokens,
                              (uint64_t) j->dlg->prompt_tokens,
                              memory_order_relaxed);
    j->tokens_counted = 0;
    j->last_token_ns = 0;
    return CM_OK;

bad:
    free(copy);
    return cm_seterr(err, errlen, CM_EINVAL, "bad chat request");
}


/* A generation that nginx cancelled (client gone, worker gone): counted
 * once, by whoever notices it first, before its KV cache is freed. */
static void
cm_infer_chat_cancelled(cm_infer_t *d, cm_infer_job_t *j)
{
    if (j->active && j->kind == CM_REQ_CHAT) {
        atomic_fetch_add_explicit(&d->seg.hdr->stats.cancellations, 1,
                                  memory_order_relaxed);
    }
}


/* Tokens a step produced for one stream: the counter moves at once (not
 * when the reply ends), so tokens/s is live; the gap since the stream's
 * previous token is one inter-token latency sample. */
static void
cm_infer_chat_account(cm_infer_t *d, cm_infer_job_t *j, uint64_t now)
{
    int n = j->dlg->completion_tokens - j->tokens_counted;

    if (n <= 0) {
        return;
    }
    atomic_fetch_add_explicit(&d->seg.hdr->stats.completion_tokens,
                              (uint64_t) n, memory_order_relaxed);
    j->tokens_counted = j->dlg->completion_tokens;
    atomic_store_explicit(&j->s->completion_tokens,
                          (uint32_t) j->dlg->completion_tokens,
                          memory_order_relaxed);
    if (j->last_token_ns != 0 && now > j->last_token_ns) {
        cm_ipc_stats_observe_itl(&d->seg, now - j->last_token_ns);
    }
    j->last_token_ns = now;
}


/* The recsys answer caches' hits and misses (totals over reloads) and
 * the answers they hold now. */
static void
cm_infer_publish_cache(cm_infer_t *d)
{
    cm_ipc_stats_t        *st = &d->seg.hdr->stats;
    const cm_rs_server_t  *m;
    uint64_t               c[2];
    size_t                 entries = 0;
    int                    i, b;

    for (i = 0; i < 2; i++) {
        m = i == 0 ? d->models.rs : d->models.canary;
        if (m == NULL) {
            d->ac_srv[i] = NULL;
            continue;
        }
        cm_rs_server_cache_stats(m, &c[0], &c[1]);
        entries += cm_rs_server_cache_entries(m);
        for (b = 0; b < 2; b++) {
            if (m != d->ac_srv[i] || c[b] < d->ac_seen[i][b]) {
                d->ac_seen[i][b] = 0;   /* a new server counts from zero */
            }
            d->ac_total[b] += c[b] - d->ac_seen[i][b];
            d->ac_seen[i][b] = c[b];
        }
        d->ac_srv[i] = m;
    }
    atomic_store_explicit(&st->answer_cache_hits, d->ac_total[0],
                          memory_order_relaxed);
    atomic_store_explicit(&st->answer_cache_misses, d->ac_total[1],
                          memory_order_relaxed);
    atomic_store_explicit(&st->answer_cache_entries, entries,
                          memory_order_relaxed);
}


/* The gauges, once per loop turn: cheap (a pass over the slots only while
 * something generates) and always current when nginx samples them. */
static void
cm_infer_publish_stats(cm_infer_t *d)
{
    cm_ipc_stats_t  *st = &d->seg.hdr->stats;
    uint64_t         used = 0, cap = 0;
    uint32_t         i, max_seqs = 0;
    cm_infer_job_t  *j;

    if (d->models.dlg != NULL) {
        max_seqs = (uint32_t) cm_dlg_server_max_seqs(d->models.dlg);
        cap = (uint64_t) max_seqs
              * (uint64_t) cm_dlg_server_context(d->models.dlg);
    }
    for (i = 0; i < d->seg.hdr->slot_count && d->nchat > 0; i++) {
        j = &d->jobs[i];
        if (j->active && j->dlg != NULL && j->dlg->started) {
            used += (uint64_t) j->dlg->seq.pos;
        }
    }
    atomic_store_explicit(&st->running_seqs, d->nchat, memory_order_relaxed);
    atomic_store_explicit(&st->waiting_seqs, d->nchat_queued,
                          memory_order_relaxed);
    atomic_store_explicit(&st->max_seqs, max_seqs, memory_order_relaxed);
    atomic_store_explicit(&st->kv_cap_tokens, cap, memory_order_relaxed);
    atomic_store_explicit(&st->kv_used_tokens, used < cap ? used : cap,
                          memory_order_relaxed);
    cm_infer_publish_cache(d);
}


static void
cm_infer_chat_end(cm_infer_t *d, cm_infer_job_t *j)
{
    if (j->dlg != NULL) {
        cm_dlg_stream_free(j->dlg);
        free(j->dlg);
        j->dlg = NULL;
        d->nchat--;
    }
    if (j->chat_queued) {
        j->chat_queued = 0;
        d->nchat_queued--;
    }
}


/*
 * An explicit cancel (ipc.h: slot->stop, CM_MSG_STOP) from any nginx
 * worker: the generation ends now as if it had finished, with
 * finish_reason "cancelled", the text already sampled (what fits the ring
 * now) and its counts, so its owner streams a normal end and stores the
 * reply.  The KV cache is freed at once; it counts as a cancellation.
 * Also for a generation still waiting in the queue (no counts then).
 */
static void
cm_infer_chat_stop(cm_infer_t *d, uint32_t slot)
{
    char             buf[CM_DLG_TEXT_CAP], res[384];
    uint32_t         room;
    size_t           n;
    int              done, pt = 0, ct = 0, turns = 0, dropped = 0, trunc = 0;
    cm_infer_job_t  *j;

    if (slot >= d->seg.hdr->slot_count) {
        return;
    }
    j = &d->jobs[slot];
    if (!j->active || j->kind != CM_REQ_CHAT
        || cm_ipc_slot_state(j->s) != CM_SLOT_RUNNING
        || !cm_ipc_stop_requested(j->s))
    {
        return;   /* over already, or a stop for an earlier claim */
    }
    if (j->dlg != NULL) {
        room = cm_ipc_ring_space(&d->seg, j->s);
        if (room > sizeof(buf)) {
            room = sizeof(buf);
        }
        if (j->dlg->ready > 0 && room > 0) {
            n = cm_dlg_take(j->dlg, buf, room, &done);
            if (n > 0) {
                (void) cm_ipc_ring_put(&d->seg, j->s, buf, (uint32_t) n);
            }
        }
        pt = j->dlg->prompt_tokens;
        ct = j->dlg->completion_tokens;
        turns = j->dlg->context_turns;
        dropped = j->dlg->dropped_turns;
        trunc = j->dlg->truncated;
    }
    n = (size_t) snprintf(res, sizeof(res),
        "{\"finish_reason\":\"cancelled\",\"usage\":{\"prompt_tokens\":%d,"
        "\"completion_tokens\":%d},\"model_version\":\"%s\"",
        pt, ct, d->models.dlg != NULL
                ? cm_dlg_server_version(d->models.dlg) : "");
    if (j->dlg != NULL && n < sizeof(res)) {
        n += (size_t) snprintf(res + n, sizeof(res) - n,
            ",\"context\":{\"turns\":%d,\"dropped_turns\":%d,"
            "\"truncated\":%s}", turns, dropped, trunc ? "true" : "false");
    }
    if (n < sizeof(res) - 1) {
        res[n++] = '}';
    }
    cm_infer_chat_cancelled(d, j);
    cm_infer_chat_end(d, j);                        /* frees the KV cache */
    cm_infer_set_result(d, j->s, res, n);
    if (cm_ipc_finish(j->s, 0) == CM_OK) {
        cm_infer_ready(d, j, slot);
    }
    cm_infer_job_end(d, j);
    cm_debug("slot %u stopped by a cancel request", slot);
}


/* Move ready text into the ring; returns 1 when the stream is complete
 * and its result has been written. */
static int
cm_infer_chat_flush(cm_infer_t *d, cm_infer_job_t *j, uint32_t slot)
{
    char      buf[CM_DLG_TEXT_CAP], res[384];
    uint32_t  room;
    size_t    n;
    int       done = 0, rc;

    room = cm_ipc_ring_space(&d->seg, j->s);
    if (room > sizeof(buf)) {
        room = sizeof(buf);
    }
    if (j->dlg->ready > 0 && room > 0) {
        n = cm_dlg_take(j->dlg, buf, room, &done);
        if (n > 0) {
            rc = cm_ipc_ring_put(&d->seg, j->s, buf, (uint32_t) n);
            if (rc == CM_OK) {
                cm_infer_ready(d, j, slot);
            }
        }
    } else {
        (void) cm_dlg_take(j->dlg, buf, 0, &done);
    }
    if (!done) {
        return 0;
    }
    n = (size_t) snprintf(res, sizeof(res),
        "{\"finish_reason\":\"%s\",\"usage\":{\"prompt_tokens\":%d,"
        "\"completion_tokens\":%d},\"model_version\":\"%s\","
        "\"context\":{\"turns\":%d,\"dropped_turns\":%d,"
        "\"truncated\":%s}}",
        cm_dlg_finish_name(j->dlg->finish), j->dlg->prompt_tokens,
        j->dlg->completion_tokens, cm_dlg_server_version(d->models.dlg),
        j->dlg->context_turns, j->dlg->dropped_turns,
        j->dlg->truncated ? "true" : "false");
    cm_infer_set_result(d, j->s, res, n);
    rc = cm_ipc_finish(j->s, 0);
    if (rc == CM_OK) {
        cm_infer_ready(d, j, slot);
    } else if (rc == CM_ECANCELED) {
        /* nginx gave the slot up (its client left) while this last step
         * ran: a cancellation all the same, as nginx counts its CANCEL */
        cm_infer_chat_cancelled(d, j);
    }
    return 1;
}


/* The decode tick: admit queued generations, step every stream whose
 * text has drained in one batched forward, and stream what it wrote.
 * Returns 1 when another step is due at once. */
static int
cm_infer_chat_tick(cm_infer_t *d)
{
    cm_dlg_stream_t  *batch[256];
    uint32_t          idx[256], i;
    int               n = 0, k;
    cm_infer_job_t   *j;
    char              err[128];
    uint64_t          now;

    for (i = 0; i < d->seg.hdr->slot_count
                && (d->nchat > 0 || d->nchat_queued > 0); i++)
    {
        j = &d->jobs[i];
        if (!j->active || j->kind != CM_REQ_CHAT) {
            continue;
        }
        if (cm_ipc_slot_state(j->s) == CM_SLOT_CANCELLED) {
            cm_infer_chat_cancelled(d, j);
            cm_infer_chat_end(d, j);
            (void) cm_ipc_finish(j->s, CM_ECANCELED);
            cm_infer_job_end(d, j);
            continue;
        }
        if (cm_ipc_stop_requested(j->s)) {
            /* its STOP doorbell may still be coming, or was lost */
            cm_infer_chat_stop(d, i);
            continue;
        }
        if (j->chat_queued) {
            int rc = cm_infer_chat_start(d, j, err, sizeof(err));

            if (rc == CM_EAGAIN && d->models.dlg != NULL) {
                continue;   /* still no room */
            }
            j->chat_queued = 0;
            d->nchat_queued--;
            if (rc != CM_OK) {
                cm_infer_fail(d, j, i, rc, err);
                cm_infer_job_end(d, j);
                continue;
            }
        }
        if (j->dlg == NULL) {
            continue;
        }
        /* a stream whose reader is behind is paused, not stepped */
        if (cm_infer_chat_flush(d, j, i)) {
            cm_infer_chat_end(d, j);
            cm_infer_job_end(d, j);
            continue;
        }
        if (j->dlg->ready == 0 && j->dlg->finish == CM_DLG_FINISH_NONE
            && n < 256)
        {
            batch[n] = j->dlg;
            idx[n++] = i;
        } else {
            /* paused: its reader has not drained the ring */
        }
    }
    if (n == 0) {
        return 0;
    }
    cm_dlg_step(d->models.dlg, batch, n);
    now = cm_now_mono_ns();
    for (k = 0; k < n; k++) {
        j = &d->jobs[idx[k]];
        cm_infer_chat_account(d, j, now);
        if (cm_infer_chat_flush(d, j, idx[k])) {
            cm_infer_chat_end(d, j);
            cm_infer_job_end(d, j);
        }
    }
    return 1;
}


static void
cm_infer_publish_models(cm_infer_t *d)
{
    cm_ipc_model_t  table[CM_IPC_MAX_MODELS];
    uint32_t        n;

    if (d->models.rs != NULL
        && cm_rs_server_cache_size(d->models.rs, d->answer_cache) != CM_OK)
    {
        cm_warn("infer: no memory for the answer cache: it is off");
    }
    if (d->models.canary != NULL
        && cm_rs_server_cache_size(d->models.canary, d->answer_cache) != CM_OK)
    {
        cm_warn("infer: no memory for the canary's answer cache: it is off");
    }
    n = cm_infer_models_table(&d->models, table, CM_IPC_MAX_MODELS);
    cm_ipc_set_models(&d->seg, table, n);
    snprintf(d->seg.hdr->status, sizeof(d->seg.hdr->status), "%s",
             d->models.status[0] != '\0' ? d->models.status : "ok");
}


static void
cm_infer_reload(cm_infer_t *d)
{
    if (d->npending > 0) {
        cm_infer_recommend_batch(d);   /* swap at a batch boundary */
    }
    (void) cm_infer_models_load(&d->models, d->nchat + d->nchat_queued > 0);
    cm_infer_publish_models(d);
}


static void
cm_infer_submit(cm_infer_t *d, int ci, uint32_t slot)
{
    cm_ipc_slot_t   *s;
    cm_infer_job_t  *j;
    uint32_t         kind, len;

    if (slot >= d->seg.hdr->slot_count) {
        cm_warn("SUBMIT for slot %u out of range, ignored", slot);
        return;
    }
    s = cm_ipc_slot(&d->seg, slot);
    if (!cm_ipc_slot_cas(s, CM_SLOT_SUBMITTED, CM_SLOT_RUNNING)) {
        /* nginx took it back before we got here: nothing to do */
        return;
    }
    j = &d->jobs[slot];
    memset(j, 0, sizeof(*j));
    j->s = s;
    j->conn = ci;
    /* read once: nginx could scribble on the slot while we look */
    kind = s->kind;
    len = s->req_len;
    j->kind = kind;

    if (d->draining) {
        cm_infer_fail(d, j, slot, CM_EAGAIN, "inference daemon is draining");
        cm_infer_job_end(d, j);
        return;
    }
    if (len > d->seg.hdr->req_cap) {
        cm_infer_fail(d, j, slot, CM_EINVAL, "request payload too large");
        cm_infer_job_end(d, j);
        return;
    }

    switch (kind) {

    case CM_REQ_ECHO:
        if (len > d->seg.hdr->res_cap) {
            cm_infer_fail(d, j, slot, CM_EINVAL, "echo payload too large");
            break;
        }
        cm_infer_set_result(d, s, cm_ipc_slot_req(&d->seg, s), len);
        if (cm_ipc_finish(s, 0) == CM_OK) {
            cm_infer_ready(d, j, slot);
        }
        break;

    case CM_REQ_ECHO_STREAM:
        if (s->params[0] < 1 || s->params[0] > 10000
            || s->params[1] > 10ull * 1000000ull
            || (uint64_t) len + 4 > d->seg.hdr->ring_cap)
        {
            cm_infer_fail(d, j, slot, CM_EINVAL,
                          "echo stream parameters out of range");
            break;
        }
        j->remaining = s->params[0];
        j->delay_ns = s->params[1] * 1000ull;
        j->next_ns = cm_now_mono_ns();
        j->active = 1;
        d->nactive++;
        atomic_fetch_add(&d->seg.hdr->queue_depth, 1);
        return;

    case CM_REQ_CHAT: {
        char  err[128];
        int   rc;

        j->active = 1;
        d->nactive++;
        atomic_fetch_add(&d->seg.hdr->queue_depth, 1);
        if (cm_ipc_stop_requested(s)) {
            cm_infer_chat_stop(d, slot);   /* cancelled before it began */
            return;
        }
        rc = cm_infer_chat_start(d, j, err, sizeof(err));
        if (rc == CM_OK) {
            return;
        }
        if (rc == CM_EAGAIN && d->models.dlg != NULL
            && d->nchat_queued < d->chat_queue_max)
        {
            /* all sequences busy: wait in the bounded queue */
            j->chat_queued = 1;
            d->nchat_queued++;
            return;
        }
        if (rc == CM_EAGAIN && d->models.dlg != NULL) {
            atomic_fetch_add_explicit(&d->seg.hdr->stats.queue_rejections, 1,
                                      memory_order_relaxed);
        }
        cm_infer_fail(d, j, slot, rc == CM_EAGAIN ? CM_EAGAIN : rc,
                      rc == CM_EAGAIN && d->models.dlg != NULL
                      ? "generation queue is full" : err);
        break;
    }

    case CM_REQ_RECOMMEND:
    case CM_REQ_SIMILAR:
    case CM_REQ_POPULAR:
    case CM_REQ_PREDICT:
    case CM_REQ_FOLD_IN:
        if (cm_infer_recsys(d, j, slot, kind, len) == 1) {
            return;   /* joins the next batch */
        }
        break;

    default:
        cm_infer_fail(d, j, slot, CM_EINVAL, "unknown request kind");
        break;
    }
    cm_infer_job_end(d, j);
}


static void
cm_infer_cancel(cm_infer_t *d, uint32_t slot)
{
    cm_infer_job_t *j;

    if (slot >= d->seg.hdr->slot_count) {
        return;
    }
    j = &d->jobs[slot];
    if (j->active && cm_ipc_slot_state(j->s) == CM_SLOT_CANCELLED) {
        cm_infer_chat_cancelled(d, j);
        cm_infer_chat_end(d, j);                    /* frees the KV cache */
        (void) cm_ipc_finish(j->s, CM_ECANCELED);   /* frees the slot */
        cm_infer_job_end(d, j);
        cm_debug("slot %u cancelled", slot);
    }
}


/* The scheduler step: advance every active job; returns the ms until the
 * next job is due (or CM_INFER_TICK_MAX_MS). */
static int
cm_infer_step(cm_infer_t *d)
{
    uint32_t         i;
    uint64_t         now = cm_now_mono_ns(), wait_ns = CM_INFER_TICK_MAX_MS
                                                        * 1000000ull;
    cm_infer_job_t  *j;
    int              rc;

    for (i = 0; i < d->seg.hdr->slot_count && d->nactive > 0; i++) {
        j = &d->jobs[i];
        if (!j->active || j->kind == CM_REQ_CHAT) {
            continue;   /* generations are stepped by cm_infer_chat_tick */
        }
        if (cm_ipc_slot_state(j->s) == CM_SLOT_CANCELLED) {
            cm_infer_cancel(d, i);   /* its doorbell may still be coming */
            continue;
        }
        while (j->remaining > 0 && j->next_ns <= now) {
            rc = cm_ipc_ring_put(&d->seg, j->s, cm_ipc_slot_req(&d->seg, j->s),
                                 j->s->req_len);
            if (rc == CM_EAGAIN) {
                /* nginx has not drained the ring: pause, retry soon */
                cm_infer_ready(d, j, i);
                if (wait_ns > 1000000ull) {
                    wait_ns = 1000000ull;
                }
                break;
            }
            j->remaining--;
            j->next_ns = j->delay_ns > 0 ? now + j->delay_ns : now;
            cm_infer_ready(d, j, i);
            if (j->delay_ns > 0) {
                break;
            }
        }
        if (j->remaining == 0) {
            if (cm_ipc_finish(j->s, 0) == CM_OK) {
                cm_infer_ready(d, j, i);
            }
            cm_infer_job_end(d, j);
        } else if (j->next_ns > now && j->next_ns - now < wait_ns) {
            wait_ns = j->next_ns - now;
        }
    }
    return (int) ((wait_ns + 999999ull) / 1000000ull);
}


/* Slots whose nginx worker died are returned to the pool. */
static void
cm_infer_sweep(cm_infer_t *d)
{
    uint32_t         i, st;
    cm_ipc_slot_t   *s;

    for (i = 0; i < d->seg.hdr->slot_count; i++) {
        s = cm_ipc_slot(&d->seg, i);
        st = cm_ipc_slot_state(s);
        if (st == CM_SLOT_FREE || s->owner_pid == 0
            || kill((pid_t) s->owner_pid, 0) == 0 || errno != ESRCH)
        {
            continue;
        }
        if (d->jobs[i].active) {
            cm_infer_chat_cancelled(d, &d->jobs[i]);
            cm_infer_chat_end(d, &d->jobs[i]);
            cm_infer_job_end(d, &d->jobs[i]);
        }
        if (cm_ipc_slot_cas(s, st, CM_SLOT_FREE)) {
            cm_warn("slot %u reclaimed from dead worker %u (was %s)", i,
                    s->owner_pid, cm_slot_state_name(st));
        }
    }
}


static void
cm_infer_conn_close(cm_infer_t *d, int ci)
{
    uint32_t i;

    epoll_ctl(d->epfd, EPOLL_CTL_DEL, d->conns[ci].fd, NULL);
    close(d->conns[ci].fd);
    d->conns[ci].fd = -1;
    d->conns[ci].out_len = 0;
    d->conns[ci].want_out = 0;
    /* nobody will read what those jobs write: stop them now */
    for (i = 0; i < d->seg.hdr->slot_count; i++) {
        if (d->jobs[i].conn == ci) {
            d->jobs[i].conn = -1;
            if (d->jobs[i].active) {
                (void) cm_ipc_release(d->jobs[i].s);   /* → CANCELLED */
                cm_infer_cancel(d, i);
            }
        }
    }
    cm_debug("connection %d closed", ci);
}


static void
cm_infer_conn_read(cm_infer_t *d, int ci)
{
    cm_ipc_msg_t  msgs[64];
    ssize_t       n;
    size_t        k;

    for ( ;; ) {
        n = recv(d->conns[ci].fd, msgs, sizeof(msgs), MSG_DONTWAIT);
        if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
            cm_infer_conn_close(d, ci);
            return;
        }
        if (n < 0) {
            return;
        }
        if (n % (ssize_t) sizeof(cm_ipc_msg_t) != 0) {
            /* doorbells are 8 bytes and nginx writes them whole; a torn
             * one means a confused peer: drop it */
            cm_warn("connection %d sent a partial doorbell, closing", ci);
            cm_infer_conn_close(d, ci);
            return;
        }
        for (k = 0; k < (size_t) n / sizeof(cm_ipc_msg_t); k++) {
            switch (msgs[k].op) {
            case CM_MSG_SUBMIT:
                cm_infer_submit(d, ci, msgs[k].slot);
                break;
            case CM_MSG_CANCEL:
                cm_infer_cancel(d, msgs[k].slot);
                break;
            case CM_MSG_STOP:
                cm_infer_chat_stop(d, msgs[k].slot);
                break;
            default:
                cm_warn("connection %d: unknown doorbell op %u", ci,
                        msgs[k].op);
            }
        }
    }
}


static void
cm_infer_accept(cm_infer_t *d)
{
    int fd, ci;

    for ( ;; ) {
        fd = accept4(d->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            return;
        }
        for (ci = 0; ci < CM_INFER_MAX_CONNS; ci++) {
            if (d->conns[ci].fd < 0) {
                break;
            }
        }
        if (ci == CM_INFER_MAX_CONNS) {
            cm_warn("too many connections, refusing one");
            close(fd);
            continue;
        }
        d->conns[ci].fd = fd;
        d->conns[ci].out_len = 0;
        d->conns[ci].want_out = 0;
        cm_infer_epoll(d, EPOLL_CTL_ADD, fd, EPOLLIN,
                       CM_TAG_CONN + (uint64_t) ci);
        cm_debug("connection %d accepted", ci);
    }
}


static int
cm_infer_listen(cm_infer_t *d, const char *path, gid_t gid, char *err,
                size_t errlen)
{
    struct sockaddr_un sa;

    if (strlen(path) >= sizeof(sa.sun_path)) {
        return cm_seterr(err, errlen, CM_EINVAL, "socket path too long: %s",
                         path);
    }
    d->lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (d->lfd < 0) {
        return cm_seterr(err, errlen, CM_EIO, "socket: %s", strerror(errno));
    }
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, path, strlen(path));
    (void) unlink(path);   /* a stale socket from a previous run */
    if (bind(d->lfd, (struct sockaddr *) &sa, sizeof(sa)) != 0) {
        return cm_seterr(err, errlen, CM_EIO, "bind(%s): %s", path,
                         strerror(errno));
    }
    snprintf(d->sock_path, sizeof(d->sock_path), "%s", path);
    if (chmod(path, 0660) != 0
        || (gid != (gid_t) -1 && chown(path, (uid_t) -1, gid) != 0))
    {
        return cm_seterr(err, errlen, CM_EIO, "chmod/chown(%s): %s", path,
                         strerror(errno));
    }
    if (listen(d->lfd, 128) != 0) {
        return cm_seterr(err, errlen, CM_EIO, "listen: %s", strerror(errno));
    }
    return CM_OK;
}


static void
cm_infer_usage(FILE *out)
{
    fprintf(out,
        "usage: cinematch infer [options]\n\n"
        "Runs the inference daemon: creates the shared-memory segment and the\n"
        "doorbell socket that nginx workers connect to, and serves requests.\n\n"
        "options:\n"
        "  --id ID               daemon id (default 0)\n"
        "  --socket PATH         unix socket (default $CINEMATCH_RUN_DIR or\n"
        "                        /run/cinematch, /cinematch-infer-ID.sock)\n"
        "  --shm NAME            shm segment (default /cinematch-infer-ID)\n"
        "  --slots N             request slots (default %d, max %d)\n"
        "  --ring-kb N           stream ring per slot in KiB (default %d)\n"
        "  --group NAME          group owning socket and segment (mode 0660)\n"
        "  --pidfile FILE        write the pid here\n"
        "  --drain-timeout SEC   on SIGTERM wait this long for work (default 10)\n"
        "  --log-level LEVEL     debug|info|warn|error\n"
        "  --log-format FORMAT   text|json (one JSON object a line)\n"
        "  --dsn DSN             serve the registry's production models\n"
        "                        (default $CINEMATCH_PG_DSN); reload on\n"
        "                        NOTIFY " CM_INFER_NOTIFY_CHANNEL "\n"
        "  --recsys FILE         serve this recsys artifact instead\n"
        "  --movies FILE         its catalogue (movies.csv)\n"
        "  --recsys-version V    version reported for --recsys\n"
        "  --dialog DIR          serve this dialog model (model.bin +\n"
        "                        tokenizer/) instead of the registry's\n"
        "  --dialog-version V    version reported for --dialog\n"
        "  --max-seqs N          concurrent generations (KV caches), default 8;\n"
        "                        up to 4x more wait in a queue, then 503\n"
        "  --score-threads N     threads scoring a recommendation batch\n"
        "                        (default: the CPUs, at most 8), 1..64\n"
        "  --answer-cache N      recommend answers kept per model version,\n"
        "                        dropped per user by a fold-in (default\n"
        "                        8192, at most 64 MB; 0: off)\n"
        "  --decode-threads N    threads per decode step (1..16, default 1;\n"
        "                        with the AVX-512 decode kernels only)\n"
        "  --decode-weights W    fp32 (default) or bf16: dialog decode with\n"
        "                        bf16 weights (CPUs with AVX512_BF16)\n"
        "  --decode-kv T         fp32 (default) or bf16: dialog KV caches in\n"
        "                        bf16 (CPUs with AVX512_BF16)\n\n"
        "signals: SIGTERM/SIGINT drain then exit, SIGHUP reload models.\n",
        CM_IPC_DEFAULT_SLOTS, CM_IPC_MAX_SLOTS, CM_IPC_DEFAULT_RING_CAP / 1024);
}


static int
cm_parse_u32(const char *s, uint32_t lo, uint32_t hi, uint32_t *out)
{
    char           *end;
    unsigned long   v;

    errno = 0;
    v = strtoul(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
        return CM_EINVAL;
    }
    *out = (uint32_t) v;
    return CM_OK;
}


static int
cm_infer_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "id", required_argument, NULL, 'i' },
        { "socket", required_argument, NULL, 's' },
        { "shm", required_argument, NULL, 'm' },
        { "slots", required_argument, NULL, 'n' },
        { "ring-kb", required_argument, NULL, 'r' },
        { "group", required_argument, NULL, 'g' },
        { "pidfile", required_argument, NULL, 'p' },
        { "drain-timeout", required_argument, NULL, 'd' },
        { "log-level", required_argument, NULL, 'l' },
        { "dsn", required_argument, NULL, 'D' },
        { "recsys", required_argument, NULL, 'R' },
        { "movies", required_argument, NULL, 'M' },
        { "recsys-version", required_argument, NULL, 'V' },
        { "dialog", required_argument, NULL, 'G' },
        { "dialog-version", required_argument, NULL, 'W' },
        { "max-seqs", required_argument, NULL, 'S' },
        { "score-threads", required_argument, NULL, 'T' },
        { "answer-cache", required_argument, NULL, 'A' },
        { "decode-threads", required_argument, NULL, 'Q' },
        { "decode-weights", required_argument, NULL, 'w' },
        { "decode-kv", required_argument, NULL, 'k' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    static cm_infer_t    d;
    cm_ipc_config_t      cfg = { CM_IPC_DEFAULT_SLOTS, CM_IPC_DEFAULT_REQ_CAP,
                                 CM_IPC_DEFAULT_RES_CAP,
                                 CM_IPC_DEFAULT_RING_CAP };
    const char          *id = "0", *sock = NULL, *shm = NULL, *group = NULL;
    const char          *rundir;
    char                 shm_buf[64], sock_buf[108], err[256], path[128];
    uint32_t             ring_kb = CM_IPC_DEFAULT_RING_CAP / 1024, drain = 10;
    gid_t                gid = (gid_t) -1;
    struct group        *gr;
    struct sigaction     sa;
    unsigned char        sigs[16];
    ssize_t              ns;
    struct epoll_event   evs[64];
    int                  c, i, n, timeout, rc = 0;
    FILE                *pf;

    memset(&d, 0, sizeof(d));
    d.answer_cache = 8192;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'i': id = optarg; break;
        case 's': sock = optarg; break;
        case 'm': shm = optarg; break;
        case 'g': group = optarg; break;
        case 'D': d.models.dsn = optarg; break;
        case 'R': d.models.artifact = optarg; break;
        case 'M': d.models.movies = optarg; break;
        case 'V': d.models.version = optarg; break;
        case 'G': d.models.dialog = optarg; break;
        case 'W': d.models.dialog_version = optarg; break;
        case 'S': {
            uint32_t v;

            if (cm_parse_u32(optarg, 1, 256, &v)) {
                fprintf(stderr, "infer: --max-seqs must be 1..256\n");
                return 2;
            }
            d.models.max_seqs = (int) v;
            break;
        }
        case 'T':
            if (cm_parse_u32(optarg, 1, 64, &d.score_threads)) {
                fprintf(stderr, "infer: --score-threads must be 1..64\n");
                return 2;
            }
            break;
        case 'A':
            if (cm_parse_u32(optarg, 0, 1u << 24, &d.answer_cache)) {
                fprintf(stderr, "infer: --answer-cache must be 0..16777216\n");
                return 2;
            }
            break;
        case 'Q': {
            uint32_t v;

            if (cm_parse_u32(optarg, 1, CM_LM_MAX_THREADS, &v)) {
                fprintf(stderr, "infer: --decode-threads must be 1..%d\n",
                        CM_LM_MAX_THREADS);
                return 2;
            }
            d.models.decode_threads = (int) v;
            break;
        }
        case 'w':
            if (strcmp(optarg, "bf16") == 0) {
                if (!cm_lmk_bf16()) {
                    fprintf(stderr, "infer: --decode-weights bf16: this CPU"
                            " has no AVX512_BF16\n");
                    return 2;
                }
                d.models.decode_bf16 = 1;
            } else if (strcmp(optarg, "fp32") == 0) {
                d.models.decode_bf16 = 0;
            } else {
                fprintf(stderr, "infer: --decode-weights: fp32 or bf16\n");
                return 2;
            }
            break;
        case 'k':
            if (strcmp(optarg, "bf16") == 0) {
                if (!cm_lmk_bf16()) {
                    fprintf(stderr, "infer: --decode-kv bf16: this CPU"
                            " has no AVX512_BF16\n");
                    return 2;
                }
                d.models.decode_kv_bf16 = 1;
            } else if (strcmp(optarg, "fp32") == 0) {
                d.models.decode_kv_bf16 = 0;
            } else {
                fprintf(stderr, "infer: --decode-kv: fp32 or bf16\n");
                return 2;
            }
            break;
        case 'p': snprintf(d.pidfile, sizeof(d.pidfile), "%s", optarg); break;
        case 'n':
            if (cm_parse_u32(optarg, 1, CM_IPC_MAX_SLOTS, &cfg.slot_count)) {
                fprintf(stderr, "infer: --slots must be 1..%d\n",
                        CM_IPC_MAX_SLOTS);
                return 2;
            }
            break;
        case 'r':
            if (cm_parse_u32(optarg, 1, 16384, &ring_kb)) {
                fprintf(stderr, "infer: --ring-kb must be 1..16384\n");
                return 2;
            }
            break;
        case 'd':
            if (cm_parse_u32(optarg, 0, 3600, &drain)) {
                fprintf(stderr, "infer: --drain-timeout must be 0..3600\n");
                return 2;
            }
            break;
        case 'l':
            if (cm_log_level_parse(optarg, &cm_log_level) != CM_OK) {
                fprintf(stderr, "infer: bad --log-level %s\n", optarg);
                return 2;
            }
            break;
        case 'h':
            cm_infer_usage(stdout);
            return 0;
        default:
            cm_infer_usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "infer: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (strlen(id) == 0 || strlen(id) > 32 || strspn(id,
            "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-")
        != strlen(id))
    {
        fprintf(stderr, "infer: --id must be 1-32 characters [A-Za-z0-9_-]\n");
        return 2;
    }
    cfg.ring_cap = ring_kb * 1024;
    d.drain_timeout_ns = (uint64_t) drain * 1000000000ull;

    rundir = getenv("CINEMATCH_RUN_DIR");
    cm_ipc_default_names(id, shm_buf, sizeof(shm_buf), sock_buf,
                         sizeof(sock_buf), rundir);
    if (shm == NULL) {
        shm = shm_buf;
    }
    if (sock == NULL) {
        sock = sock_buf;
    }
    if (group != NULL) {
        gr = getgrnam(group);
        if (gr == NULL) {
            fprintf(stderr, "infer: unknown group '%s'\n", group);
            return 2;
        }
        gid = gr->gr_gid;
    }

    if (d.models.dsn == NULL && d.models.artifact == NULL
        && d.models.dialog == NULL)
    {
        d.models.dsn = getenv("CINEMATCH_PG_DSN");
    }
    d.lfd = d.sfd = d.epfd = d.listen_fd = -1;
    d.chat_queue_max = 4 * (uint32_t) (d.models.max_seqs > 0
                                       ? d.models.max_seqs : 8);
    for (i = 0; i < CM_INFER_MAX_CONNS; i++) {
        d.conns[i].fd = -1;
    }

    /* signals arrive through the self-pipe, handled in the loop */
    if (pipe2(cm_infer_sigpipe, O_NONBLOCK | O_CLOEXEC) != 0) {
        cm_error("infer: pipe: %s", strerror(errno));
        return 1;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = cm_infer_on_signal;
    sa.sa_flags = SA_RESTART;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (cm_ipc_create(&d.seg, shm, &cfg, err, sizeof(err)) != CM_OK) {
        cm_error("infer: %s", err);
        return 1;
    }
    snprintf(path, sizeof(path), "/dev/shm%s", shm);
    if (gid != (gid_t) -1 && chown(path, (uid_t) -1, gid) != 0) {
        cm_error("infer: chown(%s): %s", path, strerror(errno));
        rc = 1;
        goto done;
    }
    d.jobs = calloc(d.seg.hdr->slot_count, sizeof(cm_infer_job_t));
    d.pending = calloc(d.seg.hdr->slot_count, sizeof(uint32_t));
    if (d.jobs == NULL || d.pending == NULL) {
        cm_error("infer: out of memory");
        rc = 1;
        goto done;
    }
    if (cm_infer_listen(&d, sock, gid, err, sizeof(err)) != CM_OK) {
        cm_error("infer: %s", err);
        rc = 1;
        goto done;
    }
    d.sfd = cm_infer_sigpipe[0];
    d.epfd = epoll_create1(EPOLL_CLOEXEC);
    if (d.epfd < 0) {
        cm_error("infer: epoll: %s", strerror(errno));
        rc = 1;
        goto done;
    }
    cm_infer_epoll(&d, EPOLL_CTL_ADD, d.lfd, EPOLLIN, CM_TAG_LISTEN);
    cm_infer_epoll(&d, EPOLL_CTL_ADD, d.sfd, EPOLLIN, CM_TAG_SIGNAL);

    if (d.pidfile[0] != '\0') {
        pf = fopen(d.pidfile, "w");
        if (pf == NULL) {
            cm_error("infer: pidfile %s: %s", d.pidfile, strerror(errno));
            rc = 1;
            goto done;
        }
        fprintf(pf, "%d\n", (int) getpid());
        fclose(pf);
    }

    /* One BLAS thread: the batches are a few users by ~10k items, too
     * small to split, and a second OpenBLAS thread spinning in
     * sched_yield took the core nginx needs (perf: 40 % of the daemon's
     * samples in the scheduler at 64 connections). */
    openblas_set_num_threads(1);
    if (d.score_threads == 0) {
        long ncpu = sysconf(_SC_NPROCESSORS_ONLN);

        d.score_threads = ncpu < 1 ? 1 : (ncpu > 8 ? 8 : (uint32_t) ncpu);
    }
    if (cm_infer_pool_start(&d.pool, d.score_threads) != CM_OK) {
        cm_error("infer: cannot start %u scoring threads", d.score_threads);
        rc = 1;
        goto done;
    }

    /* a model that fails to load leaves the daemon up (echo and /ready
     * work, recsys answers 503) with the reason in the status text */
    (void) cm_infer_models_load(&d.models, 0);
    cm_infer_publish_models(&d);
    atomic_store(&d.seg.hdr->ready, 1);
    d.listen_fd = cm_infer_models_listen_fd(&d.models);
    if (d.listen_fd >= 0) {
        cm_infer_epoll(&d, EPOLL_CTL_ADD, d.listen_fd, EPOLLIN, CM_TAG_PG);
    }
    cm_info("infer %s ready: shm %s (%u slots × %u bytes), socket %s", id,
            shm, d.seg.hdr->slot_count, d.seg.hdr->slot_size, sock);
    cm_sd_notify("READY=1\nSTATUS=serving");

    for ( ;; ) {
        atomic_store(&d.seg.hdr->heartbeat_ns, cm_now_mono_ns());
        if (d.npending > 0) {
            cm_infer_recommend_batch(&d);
        }
        timeout = d.nactive > 0 ? cm_infer_step(&d) : CM_INFER_TICK_MAX_MS;
        if (d.nchat > 0 || d.nchat_queued > 0) {
            /* decode steps back to back; doorbells are read in between */
            /* a decode step's doorbells: one send per nginx worker */
            d.hold_bells = 1;
            timeout = cm_infer_chat_tick(&d) ? 0 : (timeout > 1 ? 1 : timeout);
            cm_infer_bells_flush(&d);
        }
        cm_infer_publish_stats(&d);

        if (d.draining && (d.nactive == 0
                           || cm_now_mono_ns() > d.drain_deadline_ns))
        {
            cm_info("infer: drained (%u still active), exiting", d.nactive);
            break;
        }
        if (cm_now_mono_ns() - d.last_sweep_ns > CM_INFER_SWEEP_NS) {
            cm_infer_sweep(&d);
            d.last_sweep_ns = cm_now_mono_ns();
            if (d.models.dsn != NULL && d.listen_fd < 0) {
                d.listen_fd = cm_infer_models_listen_fd(&d.models);
                if (d.listen_fd >= 0) {
                    cm_infer_epoll(&d, EPOLL_CTL_ADD, d.listen_fd, EPOLLIN,
                                   CM_TAG_PG);
                }
            }
        }

        n = epoll_wait(d.epfd, evs, CM_ARRAY_SIZE(evs), timeout);
        if (n < 0 && errno != EINTR) {
            cm_error("epoll_wait: %s", strerror(errno));
            rc = 1;
            break;
        }
        for (i = 0; i < n; i++) {
            uint64_t tag = evs[i].data.u64;

            if (tag == CM_TAG_LISTEN) {
                if (!d.draining) {
                    cm_infer_accept(&d);
                }
            } else if (tag == CM_TAG_SIGNAL) {
                ns = read(d.sfd, sigs, sizeof(sigs));
                for (c = 0; c < (int) ns; c++) {
                    if (sigs[c] == SIGHUP) {
                        cm_info("infer: SIGHUP, reloading models");
                        cm_infer_reload(&d);
                    } else if (!d.draining) {
                        cm_info("infer: signal %u, draining", sigs[c]);
                        cm_sd_notify("STOPPING=1");
                        d.draining = 1;
                        d.drain_deadline_ns = cm_now_mono_ns()
                                              + d.drain_timeout_ns;
                        atomic_store(&d.seg.hdr->ready, 0);
                        snprintf(d.seg.hdr->status, sizeof(d.seg.hdr->status),
                                 "draining");
                    }
                }
            } else if (tag == CM_TAG_PG) {
                if (cm_infer_models_consume(&d.models)) {
                    cm_infer_reload(&d);
                }
                if (d.models.listen == NULL) {
                    epoll_ctl(d.epfd, EPOLL_CTL_DEL, d.listen_fd, NULL);
                    d.listen_fd = -1;   /* re-made by the sweep */
                }
            } else {
                int ci = (int) (tag - CM_TAG_CONN);

                if (ci < 0 || ci >= CM_INFER_MAX_CONNS || d.conns[ci].fd < 0) {
                    continue;
                }
                if (evs[i].events & EPOLLOUT) {
                    cm_infer_conn_flush(&d, ci);
                }
                if (evs[i].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) {
                    cm_infer_conn_read(&d, ci);
                }
            }
        }
    }

done:
    for (i = 0; i < CM_INFER_MAX_CONNS; i++) {
        if (d.conns[i].fd >= 0) {
            close(d.conns[i].fd);
        }
    }
    if (d.lfd >= 0) {
        close(d.lfd);
        if (d.sock_path[0] != '\0') {
            unlink(d.sock_path);
        }
    }
    close(cm_infer_sigpipe[0]);
    close(cm_infer_sigpipe[1]);
    if (d.epfd >= 0) {
        close(d.epfd);
    }
    if (d.pidfile[0] != '\0' && rc == 0) {
        unlink(d.pidfile);
    }
    cm_infer_pool_stop(&d.pool);
    free(d.jobs);
    free(d.pending);
    cm_infer_models_free(&d.models);
    cm_ipc_detach(&d.seg);
    return rc;
}

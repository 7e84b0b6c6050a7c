/*
 * cmd_batch.c: `cinematch batch`, the consumer of batch prediction jobs.
 *
 *   cinematch batch [--once|--loop] [--dsn DSN] [--redis ADDR]
 *                   [--stream KEY] [--group G] [--consumer NAME]
 *                   [--claim-idle MS] [--block MS]
 *
 * POST /api/v1/predict/{name}/batch (ngx_http_cinematch_api_jobs.c) writes
 * a batch_jobs row and XADDs "job <uuid>" to the stream.  Consumers share
 * a consumer group, so each entry goes to one of them; an entry is XACKed
 * only after the job's row says it finished.  Delivery is at least once:
 *
 *   - a consumer that dies leaves its entry pending; any other consumer
 *     takes it over with XAUTOCLAIM once it has been idle --claim-idle ms
 *     (a working consumer touches its entry after every chunk, so a long
 *     job is not stolen from a live one);
 *   - whoever runs a job again skips the items that already have a row in
 *     batch_job_results and writes the others with ON CONFLICT DO NOTHING,
 *     so a result is written once however often its item is computed;
 *   - progress (items_done / items_failed) is recounted from the result
 *     rows after each chunk, never incremented, so it cannot double count;
 *   - a job row that never reached the stream (nginx died between the
 *     INSERT and the XADD) is queued again after a minute.
 *
 * Predictions come from the registry's production recsys model through
 * cm_rs_server_predict(), the function `cinematch infer` answers
 * POST /api/v1/predict/recsys with (app ratings folded in at load); the
 * consumer reloads when the production version changes.
 *
 * Exit status: 0 done (--once: nothing left), 1 failure, 2 bad usage.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <hiredis/hiredis.h>
#include <jansson.h>
#include <libpq-fe.h>

#include "cinematch/common.h"
#include "cinematch/serve_recsys.h"
#include "cmd.h"
#include "infer_models.h"
#include "mlops.h"


#define CM_BATCH_STREAM      "cinematch:jobs"
#define CM_BATCH_GROUP       "cinematch-batch"
#define CM_BATCH_CHUNK       50     /* items per results INSERT */
#define CM_BATCH_MAX_IDS     CM_RSS_MAX_PREDICT

typedef struct {
    const char   *dsn;
    const char   *redis;
    const char   *stream;
    const char   *group;
    char          consumer[128];
    long          claim_idle_ms;
    long          block_ms;
    long          throttle_ms;      /* per item; tests and demos only */
    int           loop;
} cm_batch_cli_t;

typedef struct {
    cm_batch_cli_t      *cli;
    PGconn              *pg;
    redisContext        *rd;
    cm_infer_models_t    mm;
    char                 err[512];
} cm_batch_t;

typedef struct {
    char    *p;
    size_t   n;
    size_t   cap;
} cm_batch_buf_t;


static int cm_batch_main(int argc, char **argv);
static void cm_batch_usage(FILE *f);
static int cm_batch_connect(cm_batch_t *b);
static int cm_batch_round(cm_batch_t *b, int *idle);
static int cm_batch_requeue(cm_batch_t *b);
static int cm_batch_entries(cm_batch_t *b, redisReply *entries, int *n);
static int cm_batch_entry(cm_batch_t *b, const char *id, redisReply *fields);
static int cm_batch_job(cm_batch_t *b, const char *entry, const char *job);
static int cm_batch_model(cm_batch_t *b, char *err, size_t errlen);
static int cm_batch_flush(cm_batch_t *b, const char *entry,
    const char *job, cm_batch_buf_t *rows);
static int cm_batch_finish(cm_batch_t *b, const char *job, const char *error);
static int cm_batch_ack(cm_batch_t *b, const char *entry);
static int cm_buf_add(cm_batch_buf_t *b, const char *s, size_t n);

CM_COMMAND("batch", "run batch prediction jobs from the Redis stream"
           " (consumer group, at least once)", cm_batch_main);


static volatile sig_atomic_t  cm_batch_stop;


static void
cm_batch_on_signal(int sig)
{
    (void) sig;
    cm_batch_stop = 1;
}


static void
cm_batch_usage(FILE *f)
{
    fprintf(f,
        "usage: cinematch batch [--once|--loop] [--dsn DSN] [--redis ADDR]\n"
        "                       [--stream KEY] [--group G] [--consumer NAME]\n"
        "                       [--claim-idle MS] [--block MS]\n\n"
        "Runs batch prediction jobs (POST /api/v1/predict/recsys/batch) from"
        " the\nRedis stream, as one consumer of a consumer group: claims"
        " entries a dead\nconsumer left pending, predicts every item with the"
        " registry's production\nrecsys model, writes one batch_job_results"
        " row per item (a redelivered\nentry never writes a result twice),"
        " updates the job's progress, and\nacknowledges the entry when the job"
        " has finished.\n\n"
        "  --once            take what is waiting, then exit (default)\n"
        "  --loop            wait for jobs until SIGTERM\n"
        "  --dsn DSN         PostgreSQL (default $CINEMATCH_PG_DSN)\n"
        "  --redis ADDR      host:port or unix:/path (default"
        " $CINEMATCH_REDIS,\n"
        "                    else 127.0.0.1:6379)\n"
        "  --stream KEY      default " CM_BATCH_STREAM "\n"
        "  --group G         default " CM_BATCH_GROUP "\n"
        "  --consumer NAME   default HOSTNAME-PID\n"
        "  --claim-idle MS   take over entries idle this long (default"
        " 60000)\n"
        "  --block MS        --loop: wait this long per read (default"
        " 5000)\n\n"
        "Exit status: 0 done, 1 failure, 2 bad usage.\n");
}


static long
cm_batch_num(const char *s, long lo, long hi)
{
    char  *end;
    long   v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
        return -1;
    }
    return v;
}


static int
cm_batch_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "once", no_argument, NULL, 'o' },
        { "loop", no_argument, NULL, 'l' },
        { "dsn", required_argument, NULL, 'd' },
        { "redis", required_argument, NULL, 'r' },
        { "stream", required_argument, NULL, 's' },
        { "group", required_argument, NULL, 'g' },
        { "consumer", required_argument, NULL, 'c' },
        { "claim-idle", required_argument, NULL, 'i' },
        { "block", required_argument, NULL, 'b' },
        { "throttle-ms", required_argument, NULL, 't' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    cm_batch_cli_t     cli;
    cm_batch_t         b;
    struct sigaction   sa;
    char               host[64];
    int                ch, rc = 0, idle;

    memset(&cli, 0, sizeof(cli));
    cli.stream = CM_BATCH_STREAM;
    cli.group = CM_BATCH_GROUP;
    cli.claim_idle_ms = 60000;
    cli.block_ms = 5000;
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'o': cli.loop = 0; break;
        case 'l': cli.loop = 1; break;
        case 'd': cli.dsn = optarg; break;
        case 'r': cli.redis = optarg; break;
        case 's': cli.stream = optarg; break;
        case 'g': cli.group = optarg; break;
        case 'c':
            if (optarg[0] == '\0' || strlen(optarg) >= sizeof(cli.consumer)) {
                fprintf(stderr, "cinematch batch: --consumer wants 1..127"
                        " characters\n");
                return 2;
            }
            snprintf(cli.consumer, sizeof(cli.consumer), "%s", optarg);
            break;
        case 'i':
        case 'b':
        case 't':
            {
                long v = cm_batch_num(optarg, 0, 86400000L);

                if (v < 0) {
                    fprintf(stderr, "cinematch batch: %s wants milliseconds"
                            " 0..86400000, got '%s'\n", argv[optind - 1],
                            optarg);
                    return 2;
                }
                if (ch == 'i') {
                    cli.claim_idle_ms = v;
                } else if (ch == 'b') {
                    cli.block_ms = v;
                } else {
                    cli.throttle_ms = v;
                }
            }
            break;
        case 'h':
            cm_batch_usage(stdout);
            return 0;
        default:
            fprintf(stderr, "cinematch batch: unknown or incomplete option"
                    " '%s' (see --help)\n", argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "cinematch batch: unexpected argument '%s'"
                " (see --help)\n", argv[optind]);
        return 2;
    }
    if (cli.consumer[0] == '\0') {
        if (gethostname(host, sizeof(host)) != 0) {
            snprintf(host, sizeof(host), "batch");
        }
        host[sizeof(host) - 1] = '\0';
        snprintf(cli.consumer, sizeof(cli.consumer), "%s-%ld", host,
                 (long) getpid());
    }
    if (cli.redis == NULL) {
        cli.redis = getenv("CINEMATCH_REDIS");
        if (cli.redis == NULL || cli.redis[0] == '\0') {
            cli.redis = "127.0.0.1:6379";
        }
    }

    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = cm_batch_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);

    memset(&b, 0, sizeof(b));
    b.cli = &cli;
    b.mm.dsn = cli.dsn != NULL ? cli.dsn : getenv("CINEMATCH_PG_DSN");
    if (b.mm.dsn == NULL) {
        b.mm.dsn = "";
    }

    while (!cm_batch_stop) {
        if ((b.pg == NULL || b.rd == NULL) && cm_batch_connect(&b) != CM_OK) {
            cm_error("batch: %s", b.err);
            rc = 1;
        } else {
            rc = cm_batch_round(&b, &idle) == CM_OK ? 0 : 1;
            if (rc != 0) {
                cm_error("batch: %s", b.err);
            }
            if (!cli.loop && (rc != 0 || idle)) {
                break;
            }
        }
        if (rc != 0) {
            if (!cli.loop) {
                break;
            }
            /* start over with new connections; the pending entry waits */
            PQfinish(b.pg);
            b.pg = NULL;
            redisFree(b.rd);
            b.rd = NULL;
            sleep(1);
        }
    }

    PQfinish(b.pg);
    redisFree(b.rd);
    cm_rs_server_free(b.mm.rs);
    return rc;
}


static int
cm_batch_connect(cm_batch_t *b)
{
    const char      *a = b->cli->redis, *colon;
    char             host[256];
    struct timeval   tv = { 5, 0 };
    redisReply      *r;

    if (b->pg == NULL) {
        b->pg = cm_pg_connect(b->cli->dsn, "cinematch-batch", b->err,
                              sizeof(b->err));
        if (b->pg == NULL) {
            return CM_EIO;
        }
    }
    if (b->rd == NULL) {
        if (strncmp(a, "unix:", 5) == 0) {
            b->rd = redisConnectUnixWithTimeout(a + 5, tv);
        } else {
            colon = strrchr(a, ':');
            if (colon == NULL || (size_t) (colon - a) >= sizeof(host)) {
                return cm_seterr(b->err, sizeof(b->err), CM_EINVAL,
                                 "--redis wants host:port or unix:/path, got"
                                 " '%s'", a);
            }
            memcpy(host, a, (size_t) (colon - a));
            host[colon - a] = '\0';
            b->rd = redisConnectWithTimeout(host, atoi(colon + 1), tv);
        }
        if (b->rd == NULL || b->rd->err) {
            cm_seterr(b->err, sizeof(b->err), CM_EIO, "redis %s: %s", a,
                      b->rd != NULL ? b->rd->errstr : "out of memory");
            redisFree(b->rd);
            b->rd = NULL;
            return CM_EIO;
        }
        /* from id 0: entries added before the group existed are jobs too */
        r = redisCommand(b->rd, "XGROUP CREATE %s %s 0 MKSTREAM",
                         b->cli->stream, b->cli->group);
        if (r == NULL || (r->type == REDIS_REPLY_ERROR
                          && strstr(r->str, "BUSYGROUP") == NULL))
        {
            cm_seterr(b->err, sizeof(b->err), CM_EIO, "XGROUP CREATE: %s",
                      r != NULL ? r->str : b->rd->errstr);
            freeReplyObject(r);
            redisFree(b->rd);
            b->rd = NULL;
            return CM_EIO;
        }
        freeReplyObject(r);
    }
    return CM_OK;
}


/*
 * One round: entries idle past --claim-idle (a dead consumer's), then this
 * consumer's own pending ones (a restart under the same name), then new
 * ones.  *idle is set when no new entry came.
 */
static int
cm_batch_round(cm_batch_t *b, int *idle)
{
    char         next[64], idle_s[24];
    redisReply  *r;
    int          n, rc = CM_OK, guard;

    *idle = 1;
    rc = cm_batch_requeue(b);
    if (rc != CM_OK) {
        return rc;
    }
    snprintf(next, sizeof(next), "0-0");
    snprintf(idle_s, sizeof(idle_s), "%ld", b->cli->claim_idle_ms);
    for (guard = 0; guard < 1000 && !cm_batch_stop; guard++) {
        r = redisCommand(b->rd, "XAUTOCLAIM %s %s %s %s %s COUNT 16",
                         b->cli->stream, b->cli->group, b->cli->consumer,
                         idle_s, next);
        if (r == NULL || r->type != REDIS_REPLY_ARRAY || r->elements < 2
            || r->element[0]->type != REDIS_REPLY_STRING)
        {
            rc = cm_seterr(b->err, sizeof(b->err), CM_EIO, "XAUTOCLAIM: %s",
                           r == NULL ? b->rd->errstr
                           : (r->type == REDIS_REPLY_ERROR ? r->str
                                                           : "bad reply"));
            freeReplyObject(r);
            return rc;
        }
        snprintf(next, sizeof(next), "%s", r->element[0]->str);
        n = 0;
        if (r->element[1]->elements > 0) {
            cm_info("batch: claimed %zu idle entries",
                    r->element[1]->elements);
        }
        rc = cm_batch_entries(b, r->element[1], &n);
        freeReplyObject(r);
        if (rc != CM_OK || strcmp(next, "0-0") == 0) {
            break;
        }
    }
    if (rc != CM_OK || cm_batch_stop) {
        return rc;
    }

    /* id 0: what was delivered to this name and never acknowledged */
    r = redisCommand(b->rd, "XREADGROUP GROUP %s %s COUNT 16 STREAMS %s 0",
                     b->cli->group, b->cli->consumer, b->cli->stream);
    if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements == 1
        && r->element[0]->elements == 2)
    {
        rc = cm_batch_entries(b, r->element[0]->element[1], &n);
    } else if (r == NULL || r->type == REDIS_REPLY_ERROR) {
        rc = cm_seterr(b->err, sizeof(b->err), CM_EIO, "XREADGROUP: %s",
                       r == NULL ? b->rd->errstr : r->str);
    }
    freeReplyObject(r);
    if (rc != CM_OK || cm_batch_stop) {
        return rc;
    }

    if (b->cli->loop) {
        r = redisCommand(b->rd, "XREADGROUP GROUP %s %s COUNT 1 BLOCK %ld"
                         " STREAMS %s >", b->cli->group, b->cli->consumer,
                         b->cli->block_ms, b->cli->stream);
    } else {
        r = redisCommand(b->rd, "XREADGROUP GROUP %s %s COUNT 1 STREAMS %s >",
                         b->cli->group, b->cli->consumer, b->cli->stream);
    }
    if (r == NULL || r->type == REDIS_REPLY_ERROR) {
        rc = cm_seterr(b->err, sizeof(b->err), CM_EIO, "XREADGROUP: %s",
                       r == NULL ? b->rd->errstr : r->str);
    } else if (r->type == REDIS_REPLY_ARRAY && r->elements == 1
               && r->element[0]->elements == 2)
    {
        n = 0;
        rc = cm_batch_entries(b, r->element[0]->element[1], &n);
        *idle = n == 0;
    }
    freeReplyObject(r);
    return rc;
}


/*
 * A job whose row was committed but whose XADD never happened (nginx died
 * in between; a refused XADD marks the job failed instead) would wait
 * forever: after a minute without a stream id it is put on the stream
 * again.  A job that was queued but
 * whose stream id failed to be stored may so run twice; its results are
 * written once all the same.
 */
static int
cm_batch_requeue(cm_batch_t *b)
{
    PGresult    *r, *u;
    redisReply  *rr;
    const char  *v[2];
    int          i;

    r = cm_pg_query(b->pg, "SELECT id::text FROM batch_jobs WHERE status ="
                    " 'queued' AND stream_id IS NULL AND created_at < now()"
                    " - interval '1 minute' ORDER BY created_at LIMIT 100",
                    0, NULL, b->err, sizeof(b->err));
    if (r == NULL) {
        return CM_EIO;
    }
    for (i = 0; i < PQntuples(r); i++) {
        rr = redisCommand(b->rd, "XADD %s * job %s model recsys",
                          b->cli->stream, PQgetvalue(r, i, 0));
        if (rr == NULL || rr->type != REDIS_REPLY_STRING) {
            cm_seterr(b->err, sizeof(b->err), CM_EIO, "XADD: %s",
                      rr == NULL ? b->rd->errstr
                      : (rr->type == REDIS_REPLY_ERROR ? rr->str
                                                       : "bad reply"));
            freeReplyObject(rr);
            PQclear(r);
            return CM_EIO;
        }
        v[0] = PQgetvalue(r, i, 0);
        v[1] = rr->str;
        u = cm_pg_query(b->pg, "UPDATE batch_jobs SET stream_id = $2 WHERE"
                        " id = $1::uuid", 2, v, b->err, sizeof(b->err));
        cm_warn("batch: job %s had never been queued; queued as %s", v[0],
                rr->str);
        freeReplyObject(rr);
        if (u == NULL) {
            PQclear(r);
            return CM_EIO;
        }
        PQclear(u);
    }
    PQclear(r);
    return CM_OK;
}


static int
cm_batch_entries(cm_batch_t *b, redisReply *entries, int *n)
{
    size_t        i;
    redisReply   *e;
    int           rc;

    if (entries == NULL || entries->type != REDIS_REPLY_ARRAY) {
        return CM_OK;
    }
    for (i = 0; i < entries->elements && !cm_batch_stop; i++) {
        e = entries->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 1
            || e->element[0]->type != REDIS_REPLY_STRING)
        {
            continue;
        }
        rc = cm_batch_entry(b, e->element[0]->str,
                            e->elements > 1 ? e->element[1] : NULL);
        if (rc != CM_OK) {
            return rc;
        }
        (*n)++;
    }
    return CM_OK;
}


static int
cm_batch_entry(cm_batch_t *b, const char *id, redisReply *fields)
{
    size_t       i;
    const char  *job = NULL;

    if (fields != NULL && fields->type == REDIS_REPLY_ARRAY) {
        for (i = 0; i + 1 < fields->elements; i += 2) {
            if (fields->element[i]->type == REDIS_REPLY_STRING
                && strcmp(fields->element[i]->str, "job") == 0
                && fields->element[i + 1]->type == REDIS_REPLY_STRING)
            {
                job = fields->element[i + 1]->str;
            }
        }
    }
    if (job == NULL || strlen(job) != 36) {
        /* trimmed away or not ours: nothing to run, do not see it again */
        cm_warn("batch: entry %s names no job; acknowledged", id);
        return cm_batch_ack(b, id);
    }
    return cm_batch_job(b, id, job);
}


static int
cm_batch_ack(cm_batch_t *b, const char *entry)
{
    redisReply  *r;
    int          rc = CM_OK;

    r = redisCommand(b->rd, "XACK %s %s %s", b->cli->stream, b->cli->group,
                     entry);
    if (r == NULL || r->type == REDIS_REPLY_ERROR) {
        rc = cm_seterr(b->err, sizeof(b->err), CM_EIO, "XACK: %s",
                       r == NULL ? b->rd->errstr : r->str);
    }
    freeReplyObject(r);
    return rc;
}


/* The registry's production recsys model, loaded again when it changed. */
static int
cm_batch_model(cm_batch_t *b, char *err, size_t errlen)
{
    PGresult  *r;
    int        rc;

    r = cm_pg_query(b->pg, "SELECT version::text FROM model_versions WHERE"
                    " model_name = 'recsys' AND stage = 'production'", 0,
                    NULL, err, errlen);
    if (r == NULL) {
        return CM_EIO;
    }
    if (PQntuples(r) == 0) {
        PQclear(r);
        return cm_seterr(err, errlen, CM_ENOTFOUND,
                         "no production recsys model in the registry");
    }
    if (b->mm.rs != NULL
        && strcmp(cm_rs_server_version(b->mm.rs), PQgetvalue(r, 0, 0)) == 0)
    {
        PQclear(r);
        return CM_OK;
    }
    PQclear(r);
    rc = cm_infer_models_load_recsys(&b->mm);
    if (rc != CM_OK || b->mm.rs == NULL) {
        return cm_seterr(err, errlen, rc != CM_OK ? rc : CM_ENOTFOUND,
                         "%s", b->mm.status);
    }
    return CM_OK;
}


static int
cm_batch_job(cm_batch_t *b, const char *entry, const char *job)
{
    char            err[256], idx_s[24], *out, *txt;
    const char     *v[2];
    PGresult       *r;
    json_t         *input, *items, *item, *ids, *x;
    json_error_t    jerr;
    uint8_t        *done = NULL;
    int32_t         movies[CM_BATCH_MAX_IDS];
    size_t          i, j, n_items, n_ids, pending = 0;
    cm_batch_buf_t  rows = { NULL, 0, 0 };
    int             rc, k;
    json_int_t      user;

    v[0] = job;
    r = cm_pg_query(b->pg, "SELECT status, input::text FROM batch_jobs"
                    " WHERE id = $1::uuid", 1, v, b->err, sizeof(b->err));
    if (r == NULL) {
        return CM_EIO;
    }
    if (PQntuples(r) == 0 || (strcmp(PQgetvalue(r, 0, 0), "queued") != 0
                              && strcmp(PQgetvalue(r, 0, 0), "running") != 0))
    {
        /* finished by an earlier delivery, or deleted: only the ack is
         * left to do */
        PQclear(r);
        return cm_batch_ack(b, entry);
    }
    input = json_loads(PQgetvalue(r, 0, 1), 0, &jerr);
    PQclear(r);
    items = json_object_get(input, "items");
    if (!json_is_array(items)) {
        json_decref(input);
        rc = cm_batch_finish(b, job, "input has no items array");
        return rc == CM_OK ? cm_batch_ack(b, entry) : rc;
    }
    n_items = json_array_size(items);

    if (cm_batch_model(b, err, sizeof(err)) != CM_OK) {
        json_decref(input);
        if (b->mm.rs == NULL && b->pg != NULL
            && PQstatus(b->pg) == CONNECTION_OK)
        {
            /* nothing to predict with: the job fails, says why */
            rc = cm_batch_finish(b, job, err);
            return rc == CM_OK ? cm_batch_ack(b, entry) : rc;
        }
        return cm_seterr(b->err, sizeof(b->err), CM_EIO, "%s", err);
    }

    r = cm_pg_query(b->pg, "UPDATE batch_jobs SET status = 'running',"
                    " started_at = coalesce(started_at, now()) WHERE id ="
                    " $1::uuid AND status IN ('queued', 'running')", 1, v,
                    b->err, sizeof(b->err));
    PQclear(r);
    if (r == NULL) {
        json_decref(input);
        return CM_EIO;
    }

    /* the items an earlier delivery finished */
    done = calloc(n_items + 1, 1);
    r = done != NULL ? cm_pg_query(b->pg, "SELECT item_index FROM"
                                   " batch_job_results WHERE job_id ="
                                   " $1::uuid", 1, v, b->err,
                                   sizeof(b->err))
                     : NULL;
    if (r == NULL) {
        json_decref(input);
        free(done);
        return done == NULL ? CM_ENOMEM : CM_EIO;
    }
    for (k = 0; k < PQntuples(r); k++) {
        i = (size_t) strtoul(PQgetvalue(r, k, 0), NULL, 10);
        if (i < n_items) {
            done[i] = 1;
        }
    }
    if (PQntuples(r) > 0) {
        cm_info("batch: job %s resumes with %d of %zu items done", job,
                PQntuples(r), n_items);
    }
    PQclear(r);

    rc = CM_OK;
    for (i = 0; i < n_items && rc == CM_OK; i++) {
        if (done[i]) {
            continue;
        }
        if (cm_batch_stop) {
            rc = cm_seterr(b->err, sizeof(b->err), CM_ERR, "stopped; job %s"
                           " stays pending for another consumer", job);
            break;
        }
        item = json_array_get(items, i);
        ids = json_object_get(item, "movie_ids");
        user = json_integer_value(json_object_get(item, "user_id"));
        n_ids = json_is_array(ids) ? json_array_size(ids) : 0;
        out = NULL;
        err[0] = '\0';
        if (user < 1 || user > INT32_MAX || n_ids == 0
            || n_ids > CM_BATCH_MAX_IDS)
        {
            snprintf(err, sizeof(err), "needs user_id and 1..%d movie_ids",
                     CM_BATCH_MAX_IDS);
        } else {
            json_array_foreach(ids, j, x) {
                json_int_t m = json_integer_value(x);

                movies[j] = m >= 1 && m <= INT32_MAX ? (int32_t) m : 0;
            }
            if (cm_rs_server_predict(b->mm.rs, (int32_t) user, movies, n_ids,
                                     &out, err, sizeof(err)) != CM_OK
                && err[0] == '\0')
            {
                snprintf(err, sizeof(err), "prediction failed");
            }
        }
        snprintf(idx_s, sizeof(idx_s), "%zu", i);
        rc = cm_buf_add(&rows, rows.n ? "," : "[", 1);
        if (out != NULL) {
            rc |= cm_buf_add(&rows, "{\"i\":", 5);
            rc |= cm_buf_add(&rows, idx_s, strlen(idx_s));
            rc |= cm_buf_add(&rows, ",\"ok\":true,\"r\":", 15);
            rc |= cm_buf_add(&rows, out, strlen(out));
            rc |= cm_buf_add(&rows, "}", 1);
            free(out);
        } else {
            x = json_pack("{s:I, s:b, s:s}", "i", (json_int_t) i, "ok", 0,
                          "e", err);
            txt = x != NULL ? json_dumps(x, JSON_COMPACT) : NULL;
            rc |= txt != NULL ? cm_buf_add(&rows, txt, strlen(txt))
                              : CM_ENOMEM;
            free(txt);
            json_decref(x);
        }
        if (rc != CM_OK) {
            rc = cm_seterr(b->err, sizeof(b->err), CM_ENOMEM,
                           "out of memory");
            break;
        }
        if (b->cli->throttle_ms > 0) {
            struct timespec ts = { b->cli->throttle_ms / 1000,
                                   (b->cli->throttle_ms % 1000) * 1000000L };

            nanosleep(&ts, NULL);
        }
        if (++pending == CM_BATCH_CHUNK || b->cli->throttle_ms > 0) {
            rc = cm_batch_flush(b, entry, job, &rows);
            pending = 0;
        }
    }
    if (rc == CM_OK && rows.n > 0) {
        rc = cm_batch_flush(b, entry, job, &rows);
    }
    free(rows.p);
    free(done);
    json_decref(input);
    if (rc != CM_OK) {
        return rc;
    }
    rc = cm_batch_finish(b, job, NULL);
    if (rc == CM_OK) {
        cm_info("batch: job %s finished (%zu items)", job, n_items);
        rc = cm_batch_ack(b, entry);
    }
    return rc;
}


/*
 * Write a chunk of results (a JSON array of {i, ok, r | e}), recount the
 * job's progress from the result rows, and touch the stream entry so that
 * XAUTOCLAIM does not hand a live job to another consumer.
 */
static int
cm_batch_flush(cm_batch_t *b, const char *entry, const char *job,
    cm_batch_buf_t *rows)
{
    const char  *v[2];
    PGresult    *r;
    redisReply  *rr;

    if (cm_buf_add(rows, "]", 1) != CM_OK) {
        return cm_seterr(b->err, sizeof(b->err), CM_ENOMEM, "out of memory");
    }
    rows->p[rows->n] = '\0';
    v[0] = job;
    v[1] = rows->p;
    r = cm_pg_query(b->pg, "INSERT INTO batch_job_results (job_id, item_index,"
                    " ok, result, error) SELECT $1::uuid, t.i, t.ok, t.r, t.e"
                    " FROM jsonb_to_recordset($2::jsonb) AS t(i int, ok"
                    " boolean, r jsonb, e text) ON CONFLICT (job_id,"
                    " item_index) DO NOTHING", 2, v, b->err, sizeof(b->err));
    rows->n = 0;
    if (r == NULL) {
        return CM_EIO;
    }
    PQclear(r);
    r = cm_pg_query(b->pg, "UPDATE batch_jobs j SET items_done = c.ok,"
                    " items_failed = c.bad FROM (SELECT count(*) FILTER"
                    " (WHERE ok) AS ok, count(*) FILTER (WHERE NOT ok) AS bad"
                    " FROM batch_job_results WHERE job_id = $1::uuid) c"
                    " WHERE j.id = $1::uuid", 1, v, b->err, sizeof(b->err));
    if (r == NULL) {
        return CM_EIO;
    }
    PQclear(r);
    /* min-idle 0 from the owner: only resets the entry's idle time */
    rr = redisCommand(b->rd, "XCLAIM %s %s %s 0 %s JUSTID", b->cli->stream,
                      b->cli->group, b->cli->consumer, entry);
    if (rr == NULL) {
        return cm_seterr(b->err, sizeof(b->err), CM_EIO, "XCLAIM: %s",
                         b->rd->errstr);
    }
    freeReplyObject(rr);
    return CM_OK;
}


/* error NULL: succeeded (failed when every item failed). */
static int
cm_batch_finish(cm_batch_t *b, const char *job, const char *error)
{
    const char  *v[2];
    PGresult    *r;

    v[0] = job;
    v[1] = error;
    r = cm_pg_query(b->pg, "UPDATE batch_jobs SET finished_at = now(),"
                    " status = CASE WHEN $2::text IS NOT NULL OR (items_total"
                    " > 0 AND items_failed = items_total) THEN 'failed' ELSE"
                    " 'succeeded' END, error = CASE WHEN $2::text IS NOT NULL"
                    " THEN $2::text WHEN items_total > 0 AND items_failed ="
                    " items_total THEN 'every item failed' END WHERE id ="
                    " $1::uuid AND status IN ('queued', 'running')", 2, v,
                    b->err, sizeof(b->err));
    if (r == NULL) {
        return CM_EIO;
    }
    PQclear(r);
    return CM_OK;
}


static int
cm_buf_add(cm_batch_buf_t *b, const char *s, size_t n)
{
    char    *p;
    size_t   cap;

    if (b->n + n + 2 > b->cap) {
        cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n + 2) {
            cap *= 2;
        }
        p = realloc(b->p, cap);
        if (p == NULL) {
            return CM_ENOMEM;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return CM_OK;
}

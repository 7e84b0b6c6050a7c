/*
 * cmd_bench_serving.c: `cinematch bench serving`, recommendation scoring
 * as the inference daemon does it, without IPC or HTTP: microseconds per
 * user unbatched (one SGEMV per request), batched (one SGEMM per batch),
 * on several threads (the daemon's scoring threads), and from the answer
 * cache, all in the same run on the same artifact; the scoring rows twice:
 * with OpenBLAS as before and with the item matrix packed once (when the
 * CPU runs lm_kernels' AVX-512 code).
 *
 * Every row is a complete answer: scores, filters off, exclude seen,
 * top-K, explanations and the JSON text (with the request log's members,
 * as nginx asks for them).  Users rotate over the model's first --users.
 */
#include <getopt.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cblas.h>

#include "cinematch/common.h"
#include "cinematch/movielens.h"
#include "cinematch/serve_recsys.h"
#include "cmd.h"

static int cm_bench_serving_main(int argc, char **argv);

CM_COMMAND("bench serving", "recommend scoring in us/user: batched, "
           "unbatched, threads, answer cache", cm_bench_serving_main);


typedef struct {
    const cm_rs_server_t  *srv;
    cm_rs_scratch_t       *w;
    const int32_t         *users;
    size_t                 nusers;
    size_t                 first;      /* this thread's first request */
    size_t                 count;      /* requests to answer */
    size_t                 batch;
    uint32_t               k;
    int                    rc;
    uint64_t               cpu_ns;     /* this thread's CPU time */
} cm_bsv_part_t;


static uint64_t
cm_bsv_cpu_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
    return (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec;
}


static void *
cm_bsv_run(void *arg)
{
    cm_bsv_part_t    *p = arg;
    cm_rs_rec_req_t   q[256];
    char             *out[256];
    size_t            done = 0, i, n;
    uint64_t          c0 = cm_bsv_cpu_ns();

    while (done < p->count) {
        n = p->count - done < p->batch ? p->count - done : p->batch;
        for (i = 0; i < n; i++) {
            memset(&q[i], 0, sizeof(q[i]));
            q[i].user = p->users[(p->first + done + i) % p->nusers];
            q[i].k = p->k;
            q[i].exclude_seen = 1;
            q[i].log_members = 1;
        }
        if (cm_rs_server_recommend_with(p->srv, p->w, q, n, out) != CM_OK) {
            p->rc = CM_ERR;
            return NULL;
        }
        for (i = 0; i < n; i++) {
            if (out[i] == NULL) {
                p->rc = CM_ENOMEM;
            }
            free(out[i]);
        }
        done += n;
    }
    p->cpu_ns = cm_bsv_cpu_ns() - c0;
    return NULL;
}


/* wall us per answer over `total` requests on `threads` threads; *cpu
 * gets the CPU us per answer (all threads), which a loaded machine
 * disturbs much less than the wall time */
static double
cm_bsv_measure(const cm_rs_server_t *srv, const int32_t *users,
               size_t nusers, uint32_t k, size_t batch, uint32_t threads,
               size_t total, double *cpu)
{
    uint64_t       cpu_ns = 0;
    cm_bsv_part_t  parts[64], warm;
    pthread_t      th[64];
    uint64_t       t0, t1;
    uint32_t       t;
    size_t         at = 0;
    int            rc = CM_OK;

    *cpu = 0.0;
    if (threads < 1 || threads > 64) {
        return -1.0;
    }
    for (t = 0; t < threads; t++) {
        memset(&parts[t], 0, sizeof(parts[t]));
        parts[t].srv = srv;
        parts[t].w = cm_rs_scratch_new();
        parts[t].users = users;
        parts[t].nusers = nusers;
        parts[t].first = at;
        parts[t].count = (total - at) / (threads - t);
        parts[t].batch = batch;
        parts[t].k = k;
        at += parts[t].count;
        if (parts[t].w == NULL) {
            return -1.0;
        }
    }
    /* warm: the scratches grow once, the model's pages are touched */
    for (t = 0; t < threads; t++) {
        warm = parts[t];
        warm.count = batch;
        cm_bsv_run(&warm);
    }

    t0 = cm_now_mono_ns();
    for (t = 1; t < threads; t++) {
        if (pthread_create(&th[t], NULL, cm_bsv_run, &parts[t]) != 0) {
            return -1.0;
        }
    }
    cm_bsv_run(&parts[0]);
    for (t = 1; t < threads; t++) {
        pthread_join(th[t], NULL);
    }
    t1 = cm_now_mono_ns();
    for (t = 0; t < threads; t++) {
        rc |= parts[t].rc;
        cpu_ns += parts[t].cpu_ns;
        cm_rs_scratch_free(parts[t].w);
    }
    *cpu = (double) cpu_ns / 1e3 / (double) total;
    return rc == CM_OK ? (double) (t1 - t0) / 1e3 / (double) total : -1.0;
}


static double
cm_bsv_cache(cm_rs_server_t *srv, const int32_t *users, size_t nusers,
             uint32_t k, size_t total)
{
    cm_rs_rec_req_t   q;
    char             *out;
    const char       *hit;
    size_t            i, len, hits = 0;
    uint64_t          t0, t1;

    /* 2-way sets: room enough that no user's answer is evicted */
    if (nusers == 0 || total == 0
        || cm_rs_server_cache_size(srv, 16 * nusers) != CM_OK)
    {
        return -1.0;
    }
    memset(&q, 0, sizeof(q));
    q.k = k;
    q.exclude_seen = 1;
    q.log_members = 1;
    for (i = 0; i < nusers; i++) {
        q.user = users[i];
        if (cm_rs_server_recommend_batch(srv, &q, 1, &out) != CM_OK) {
            return -1.0;
        }
        cm_rs_server_cache_put(srv, &q, out);
    }
    t0 = cm_now_mono_ns();
    for (i = 0; i < total; i++) {
        q.user = users[i % nusers];
        hit = cm_rs_server_cache_get(srv, &q, &len);
        hits += hit != NULL && len > 0;
    }
    t1 = cm_now_mono_ns();
    (void) cm_rs_server_cache_size(srv, 0);
    return (double) (t1 - t0) / 1e3 / (double) total
           * (hits == total ? 1.0 : -1.0);
}


/* CPU us per user of the scores alone (no top-K, no JSON), batches of
 * `batch` users: what packing the item matrix changes */
static double
cm_bsv_scores(const cm_rs_server_t *srv, size_t nusers, size_t batch,
              size_t total)
{
    const cm_rs_model_t  *m = cm_rs_server_model(srv);
    uint32_t              u[256];
    float                *out;
    size_t                done = 0, i, n;
    uint64_t              c0;

    out = malloc(batch * m->n_items * sizeof(float) + 1);
    if (out == NULL || batch > CM_ARRAY_SIZE(u)) {
        free(out);
        return -1.0;
    }
    for (i = 0; i < batch; i++) {   /* warm */
        u[i] = (uint32_t) (i % nusers);
    }
    (void) cm_rs_server_score_users(srv, u, batch, out);
    c0 = cm_bsv_cpu_ns();
    while (done < total) {
        n = total - done < batch ? total - done : batch;
        for (i = 0; i < n; i++) {
            u[i] = (uint32_t) ((done + i) % nusers);
        }
        if (cm_rs_server_score_users(srv, u, n, out) != CM_OK) {
            free(out);
            return -1.0;
        }
        done += n;
    }
    c0 = cm_bsv_cpu_ns() - c0;
    free(out);
    return (double) c0 / 1e3 / (double) total;
}


static void
cm_bsv_usage(FILE *out)
{
    fprintf(out,
        "usage: cinematch bench serving --recsys FILE [--movies FILE]\n"
        "                               [options]\n\n"
        "Recommendation answers as `cinematch infer` makes them (top-K,\n"
        "exclude seen, explanations, JSON), in microseconds per user:\n"
        "unbatched, batched, on several threads, and from the answer cache,\n"
        "in one run on one artifact; the scoring rows with OpenBLAS and then\n"
        "with the item matrix packed once (AVX-512 CPUs).\n\n"
        "options:\n"
        "  --recsys FILE     recsys artifact (e.g. the stack's production one)\n"
        "  --movies FILE     its catalogue (movies.csv; titles in the JSON)\n"
        "  --users N         rotate over the model's first N users (600)\n"
        "  --requests N      answers per measurement (3000)\n"
        "  --k N             recommendations per answer (10)\n"
        "  --threads N       largest thread count to try (2)\n");
}


static int
cm_bench_serving_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "recsys", required_argument, NULL, 'R' },
        { "movies", required_argument, NULL, 'M' },
        { "users", required_argument, NULL, 'u' },
        { "requests", required_argument, NULL, 'n' },
        { "k", required_argument, NULL, 'k' },
        { "threads", required_argument, NULL, 't' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    const char            *artifact = NULL, *movies = NULL;
    long                   nusers = 600, total = 3000, k = 10, maxt = 2, v;
    cm_movies_t            mv;
    cm_ml_opts_t           mo;
    cm_rs_server_t        *srv = NULL;
    const cm_rs_model_t   *m;
    int32_t               *users = NULL;
    char                   err[256], *end;
    double                 one = 0.0, us, cpu, one_cpu = 0.0, base_cpu[16];
    size_t                 b, i, row;
    uint32_t               t;
    int                    c, pk, rc = 1;
    static const size_t    batches[] = { 1, 8, 32, 64 };

    memset(&mv, 0, sizeof(mv));
    memset(&mo, 0, sizeof(mo));
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'R': artifact = optarg; break;
        case 'M': movies = optarg; break;
        case 'u': case 'n': case 'k': case 't':
            v = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || v < 1
                || v > (c == 't' ? 64 : c == 'k' ? CM_RSS_MAX_K : 10000000))
            {
                fprintf(stderr, "bench serving: bad --%s %s\n",
                        c == 'u' ? "users" : c == 'n' ? "requests"
                        : c == 'k' ? "k" : "threads", optarg);
                return 2;
            }
            *(c == 'u' ? &nusers : c == 'n' ? &total : c == 'k' ? &k
                                                                : &maxt) = v;
            break;
        case 'h':
            cm_bsv_usage(stdout);
            return 0;
        default:
            cm_bsv_usage(stderr);
            return 2;
        }
    }
    if (optind < argc || artifact == NULL) {
        fprintf(stderr, optind < argc ? "bench serving: unexpected argument\n"
                                      : "bench serving: --recsys is required\n");
        cm_bsv_usage(stderr);
        return 2;
    }
    if (movies != NULL
        && cm_ml_read_movies_file(movies, CM_ML_LATEST, &mo, &mv, err,
                                  sizeof(err)) != CM_OK)
    {
        fprintf(stderr, "bench serving: %s\n", err);
        return 1;
    }
    if (cm_rs_server_open(&srv, artifact, "bench", mv.v, mv.n, err,
                          sizeof(err)) != CM_OK)
    {
        fprintf(stderr, "bench serving: %s\n", err);
        goto done;
    }
    m = cm_rs_server_model(srv);
    if ((size_t) nusers > m->n_users) {
        nusers = (long) m->n_users;
    }
    users = malloc((size_t) nusers * sizeof(int32_t));
    if (users == NULL || nusers < 1) {
        fprintf(stderr, "bench serving: no users\n");
        goto done;
    }
    for (i = 0; i < (size_t) nusers; i++) {
        users[i] = m->user_ext[i];
    }
    openblas_set_num_threads(1);   /* as the daemon runs it */

    printf("bench serving: %u users x %u items, %u factors; k=%ld, %ld"
           " answers per row, users rotating over %ld\n",
           m->n_users, m->n_items, m->factors, k, total, nusers);
    for (pk = 0; pk < 2; pk++) {
        if (cm_rs_server_pack_items(srv, pk) != pk) {
            printf("  item matrix not packed (no AVX-512 kernels here)\n");
            break;
        }
        printf("  %-34s %10s %10s %12s %10s%s\n",
               pk ? "item factors packed once:" : "OpenBLAS (packs per call):",
               "wall us", "vs unb.", "CPU us", "vs unb.",
               pk ? "   CPU vs OpenBLAS" : "");
        one = cm_bsv_measure(srv, users, (size_t) nusers, (uint32_t) k, 1, 1,
                             (size_t) total, &one_cpu);
        row = 0;
        for (t = 1; t <= (uint32_t) maxt; t = t == 1 ? (uint32_t) maxt
                                                       : (uint32_t) maxt + 1)
        {
            for (b = 0; b < CM_ARRAY_SIZE(batches); b++) {
                char label[64];

                if (t > 1 && batches[b] == 1) {
                    continue;
                }
                cpu = one_cpu;
                us = t == 1 && b == 0
                     ? one
                     : cm_bsv_measure(srv, users, (size_t) nusers,
                                      (uint32_t) k, batches[b], t,
                                      (size_t) total, &cpu);
                snprintf(label, sizeof(label), "%s, batch %zu, %u thread%s",
                         batches[b] == 1 ? "unbatched" : "batched",
                         batches[b], t, t > 1 ? "s" : "");
                if (us < 0 || one <= 0) {
                    printf("  %-34s %10s\n", label, "failed");
                    goto done;
                }
                printf("  %-34s %10.1f %9.2fx %12.1f %9.2fx", label, us,
                       one / us, cpu, one_cpu / cpu);
                if (pk && row < CM_ARRAY_SIZE(base_cpu)) {
                    printf("   %9.2fx", base_cpu[row] / cpu);
                } else if (row < CM_ARRAY_SIZE(base_cpu)) {
                    base_cpu[row] = cpu;
                }
                printf("\n");
                row++;
            }
            if (maxt == 1) {
                break;
            }
        }
        for (b = 0; b < CM_ARRAY_SIZE(batches); b++) {
            char label[64];

            snprintf(label, sizeof(label), "scores only, batch %zu",
                     batches[b]);
            cpu = cm_bsv_scores(srv, (size_t) nusers, batches[b],
                                (size_t) total);
            printf("  %-34s %10s %10s %12.2f %10s", label, "", "", cpu, "");
            if (pk && row < CM_ARRAY_SIZE(base_cpu)) {
                printf("   %9.2fx", base_cpu[row] / cpu);
            } else if (row < CM_ARRAY_SIZE(base_cpu)) {
                base_cpu[row] = cpu;
            }
            printf("\n");
            row++;
        }
    }
    us = cm_bsv_cache(srv, users, (size_t) nusers, (uint32_t) k,
                      (size_t) total * 10);
    if (us < 0) {
        printf("  %-34s %10s\n", "answer cache hit", "failed");
        goto done;
    }
    printf("  %-34s %10.3f %9.0fx   (one thread: wall = CPU)\n",
           "answer cache hit", us, one / us);
    rc = 0;

done:
    free(users);
    cm_rs_server_free(srv);
    cm_movies_free(&mv);
    return rc;
}

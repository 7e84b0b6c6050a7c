/*
 * cmd_train_db.c: `cinematch train recsys --from-db`, the retraining step
 * of the MLOps loop (reached through cmd_recsys.c's `train recsys`).
 *
 *   1. one trainer at a time (session advisory lock); runs left 'running'
 *      by a trainer that died are marked failed first;
 *   2. a training_runs row: the queued drift request (--if-drift) or a new
 *      manual one, status 'running', with params, host, code version;
 *   3. data: ratings with data_split 'train' + the pending buffer = train,
 *      data_split 'test' = held out;
 *   4. train, write the artifact, evaluate on the held-out ratings;
 *   5. register the version (stage 'staging', the model store copy);
 *   6. gate: the production model is evaluated on the same held-out
 *      ratings (its recorded metrics when its artifact cannot be read);
 *      candidate NDCG@K >= production * (1 + gate_ndcg %) and RMSE <=
 *      production * (1 + gate_rmse %); no production -> passes;
 *   7. --promote-if-better and passed: promote (archive, production,
 *      NOTIFY in one transaction), then merge the buffer rows used into
 *      ratings and stamp merged_at.
 * Any failure before 7 marks the run failed with the reason and leaves the
 * registry's production version untouched.
 *
 * Exit status: 0 trained (promoted or not) or nothing to do, 1 failed,
 * 2 bad usage.
 */
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "cinematch/common.h"
#include "cinematch/movielens.h"
#include "cinematch/recsys.h"
#include "cinematch/recsys_eval.h"
#include "mlops.h"


typedef struct {
    const char          *dsn;
    const char          *model;
    cm_rs_train_conf_t   tc;
    int                  reg_set;
    size_t               k;
    int                  if_drift;
    int                  promote;
    double               gate_ndcg;     /* % relative improvement needed */
    double               gate_rmse;     /* % RMSE may worsen (0: none) */
    long                 loop;
} cm_tdb_cli_t;

/* SIGTERM/SIGINT while a run is training: the run is marked 'canceled'
 * (cm_run_watch_t in mlops.h). */

typedef struct {
    cm_ratings_t   train;
    cm_ratings_t   test;
    int64_t        buf_max_id;      /* buffer rows <= this were used */
    uint64_t       buf_rows;
} cm_tdb_data_t;


static void cm_tdb_usage(FILE *f);
static int cm_tdb_once(const cm_tdb_cli_t *cli, cm_run_watch_t *w);
static int cm_tdb_load(PGconn *c, cm_tdb_data_t *td, char *err,
    size_t errlen);
static json_t *cm_tdb_metrics_json(const cm_rs_metrics_t *m);
static int cm_tdb_fail(PGconn *c, const char *run_id, uint64_t t0,
    const char *why);


static void
cm_tdb_usage(FILE *f)
{
    fprintf(f,
        "usage: cinematch train recsys --from-db [--if-drift]"
        " [--promote-if-better]\n"
        "                              [--gate-ndcg PCT] [--gate-rmse PCT]"
        " [--k K]\n"
        "                              [--algo A] [--factors N] [--iters N]"
        " [--reg R]\n"
        "                              [--alpha A] [--bias-reg B]"
        " [--threads N] [--seed S]\n"
        "                              [--dsn DSN] [--loop INTERVAL]\n\n"
        "Trains on the ratings of data_split 'train' plus the pending"
        " ratings_buffer,\nevaluates on data_split 'test', records a"
        " training_runs row and registers the\nversion (stage staging) in"
        " the model store.\n\n"
        "  --if-drift           only when `cinematch drift` queued a request;"
        " claims it\n"
        "  --promote-if-better  promote when the gate passes (first model"
        " always does),\n"
        "                       then merge the buffer into ratings\n"
        "  --gate-ndcg PCT      NDCG@K must beat production's by PCT %%"
        " relative (default 1)\n"
        "  --gate-rmse PCT      RMSE may be at most PCT %% worse than"
        " production's (default 0)\n"
        "  --k K                ranking cut-off (default 10)\n"
        "  --loop INTERVAL      run again every INTERVAL (with --if-drift: a"
        " daemon)\n"
        "Model options as `cinematch train recsys` (default als, 64 factors,"
        " 15 iters).\n");
}


static int
cm_tdb_num(const char *flag, const char *s, double lo, double hi,
    double *out)
{
    return cm_cli_num("cinematch train recsys", flag, s, lo, hi, out);
}


int
cm_train_recsys_db_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "from-db", no_argument, NULL, 'F' },
        { "dsn", required_argument, NULL, 'd' },
        { "if-drift", no_argument, NULL, 'D' },
        { "promote-if-better", no_argument, NULL, 'P' },
        { "gate-ndcg", required_argument, NULL, 'n' },
        { "gate-rmse", required_argument, NULL, 'r' },
        { "k", required_argument, NULL, 'k' },
        { "algo", required_argument, NULL, 'a' },
        { "factors", required_argument, NULL, 'f' },
        { "iters", required_argument, NULL, 'i' },
        { "reg", required_argument, NULL, 'R' },
        { "alpha", required_argument, NULL, 'A' },
        { "bias-reg", required_argument, NULL, 'b' },
        { "threads", required_argument, NULL, 't' },
        { "seed", required_argument, NULL, 's' },
        { "loop", required_argument, NULL, 'l' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    cm_tdb_cli_t  cli;
    double        v;
    int           ch, rc;

    memset(&cli, 0, sizeof(cli));
    cli.model = "recsys";
    cm_rs_train_conf_default(&cli.tc);
    cli.k = 10;
    cli.gate_ndcg = 1.0;
    cli.gate_rmse = 0.0;
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'F': break;
        case 'd': cli.dsn = optarg; break;
        case 'D': cli.if_drift = 1; break;
        case 'P': cli.promote = 1; break;
        case 'n':
            if (cm_tdb_num("--gate-ndcg", optarg, -100, 1000, &cli.gate_ndcg))
            {
                return 2;
            }
            break;
        case 'r':
            if (cm_tdb_num("--gate-rmse", optarg, 0, 1000, &cli.gate_rmse)) {
                return 2;
            }
            break;
        case 'k':
            if (cm_tdb_num("--k", optarg, 1, 1000, &v)) return 2;
            cli.k = (size_t) v;
            break;
        case 'a':
            if (cm_rs_algo_parse(optarg, &cli.tc.algo) != CM_OK
                || cli.tc.algo == CM_RS_ITEMKNN)
            {
                fprintf(stderr, "cinematch train recsys: --algo wants als,"
                        " ials, bias or pop, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'f':
            if (cm_tdb_num("--factors", optarg, 1, CM_RS_MAX_FACTORS, &v)) {
                return 2;
            }
            cli.tc.factors = (uint32_t) v;
            break;
        case 'i':
            if (cm_tdb_num("--iters", optarg, 1, 1000, &v)) return 2;
            cli.tc.iters = (uint32_t) v;
            break;
        case 'R':
            if (cm_tdb_num("--reg", optarg, 0, 1e6, &v)) return 2;
            cli.tc.reg = (float) v;
            cli.reg_set = 1;
            break;
        case 'A':
            if (cm_tdb_num("--alpha", optarg, 1e-6, 1e6, &v)) return 2;
            cli.tc.alpha = (float) v;
            break;
        case 'b':
            if (cm_tdb_num("--bias-reg", optarg, 1e-6, 1e6, &v)) return 2;
            cli.tc.bias_reg = (float) v;
            break;
        case 't':
            if (cm_tdb_num("--threads", optarg, 1, 64, &v)) return 2;
            cli.tc.threads = (uint32_t) v;
            break;
        case 's':
            if (cm_tdb_num("--seed", optarg, 0, 1e18, &v)) return 2;
            cli.tc.seed = (uint64_t) v;
            break;
        case 'l':
            cli.loop = cm_interval_parse(optarg);
            if (cli.loop <= 0) {
                fprintf(stderr, "cinematch train recsys: --loop wants an"
                        " interval like 30s, 15m, 1h, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'h':
            cm_tdb_usage(stdout);
            return 0;
        default:
            fprintf(stderr, "cinematch train recsys: unknown or incomplete"
                    " option '%s' with --from-db (see --from-db --help)\n",
                    argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "cinematch train recsys: unexpected argument '%s'\n",
                argv[optind]);
        return 2;
    }
    if (!cli.reg_set) {
        cli.tc.reg = cli.tc.algo == CM_RS_ALS ? 0.05f : 5.0f;
    }
    for (;;) {
        cm_run_watch_t  w;
        int             sig;

        if (cm_run_watch_start(&w, cli.dsn, "cinematch train recsys",
                               "canceled", "canceled") != 0)
        {
            fprintf(stderr, "cinematch train recsys: cannot start the signal"
                    " watcher\n");
            return 1;
        }
        rc = cm_tdb_once(&cli, &w);
        sig = cm_run_watch_stop(&w);
        if (sig != 0) {
            fprintf(stderr, "cinematch train recsys: stopped by signal %d"
                    " after the run finished\n", sig);
            return 128 + sig;
        }
        if (cli.loop <= 0) {
            return rc;
        }
        fflush(stdout);
        fflush(stderr);
        sleep((unsigned) cli.loop);
    }
}


static int
cm_tdb_load(PGconn *c, cm_tdb_data_t *td, char *err, size_t errlen)
{
    PGresult     *r;
    cm_rating_t   x;
    int           i, n, rc = CM_OK;

    /* one snapshot for both reads, so the buffer rows merged later are
     * exactly those trained on */
    if (cm_pg_exec(c, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY", err,
                   errlen) != CM_OK)
    {
        return CM_EIO;
    }
    r = cm_pg_query(c, "SELECT user_id, movie_id, rating::float4,"
                    " extract(epoch FROM ts)::bigint, data_split = 'test'"
                    " FROM ratings WHERE data_split IN ('train', 'test')", 0,
                    NULL, err, errlen);
    if (r == NULL) {
        rc = CM_EIO;
        goto done;
    }
    n = PQntuples(r);
    for (i = 0; i < n && rc == CM_OK; i++) {
        x.user = atoi(PQgetvalue(r, i, 0));
        x.item = atoi(PQgetvalue(r, i, 1));
        x.rating = strtof(PQgetvalue(r, i, 2), NULL);
        x.ts = strtoll(PQgetvalue(r, i, 3), NULL, 10);
        rc = cm_ratings_push(PQgetvalue(r, i, 4)[0] == 't' ? &td->test
                                                           : &td->train, &x);
    }
    PQclear(r);
    if (rc != CM_OK) {
        cm_seterr(err, errlen, rc, "out of memory");
        goto done;
    }
    r = cm_pg_query(c, "SELECT user_id, movie_id, rating::float4,"
                    " extract(epoch FROM ts)::bigint, id FROM ratings_buffer"
                    " WHERE merged_at IS NULL", 0, NULL, err, errlen);
    if (r == NULL) {
        rc = CM_EIO;
        goto done;
    }
    n = PQntuples(r);
    td->buf_max_id = 0;
    for (i = 0; i < n && rc == CM_OK; i++) {
        int64_t id = strtoll(PQgetvalue(r, i, 4), NULL, 10);

        x.user = atoi(PQgetvalue(r, i, 0));
        x.item = atoi(PQgetvalue(r, i, 1));
        x.rating = strtof(PQgetvalue(r, i, 2), NULL);
        x.ts = strtoll(PQgetvalue(r, i, 3), NULL, 10);
        rc = cm_ratings_push(&td->train, &x);
        td->buf_max_id = id > td->buf_max_id ? id : td->buf_max_id;
    }
    td->buf_rows = (uint64_t) n;
    PQclear(r);
    if (rc != CM_OK) {
        cm_seterr(err, errlen, rc, "out of memory");
    }
done:
    PQclear(PQexec(c, "COMMIT"));
    return rc;
}


static json_t *
cm_tdb_metrics_json(const cm_rs_metrics_t *m)
{
    json_t  *j = json_object();
    char     key[32];

#define CM_TDB_SET(name, val)                                                \
    do {                                                                     \
        snprintf(key, sizeof(key), name "@%zu", m->k);                       \
        json_object_set_new(j, key, isfinite(val) ? json_real(val)           \
                                                  : json_null());            \
    } while (0)

    json_object_set_new(j, "rmse", isfinite(m->rmse) ? json_real(m->rmse)
                                                     : json_null());
    json_object_set_new(j, "mae", isfinite(m->mae) ? json_real(m->mae)
                                                   : json_null());
    CM_TDB_SET("ndcg", m->ndcg);
    CM_TDB_SET("precision", m->precision);
    CM_TDB_SET("recall", m->recall);
    CM_TDB_SET("hr", m->hr);
    CM_TDB_SET("map", m->map);
    CM_TDB_SET("coverage", m->coverage);
    json_object_set_new(j, "n_test", json_integer((json_int_t) m->n_pred));
    json_object_set_new(j, "n_rank_users",
                        json_integer((json_int_t) m->n_rank_users));
#undef CM_TDB_SET
    return j;
}


static int
cm_tdb_fail(PGconn *c, const char *run_id, uint64_t t0, const char *why)
{
    char         ms[24];
    const char  *v[3];

    PQclear(PQexec(c, "ROLLBACK"));
    snprintf(ms, sizeof(ms), "%llu",
             (unsigned long long) ((cm_now_mono_ns() - t0) / 1000000));
    v[0] = run_id;
    v[1] = why;
    v[2] = ms;
    PQclear(PQexecParams(c, "UPDATE training_runs SET status = 'failed',"
                         " error = left($2, 2000), duration_ms = $3,"
                         " finished_at = now() WHERE id = $1", 3, NULL, v,
                         NULL, NULL, 0));
    fprintf(stderr, "cinematch train recsys: run %s failed: %s\n", run_id,
            why);
    return 1;
}


static int
cm_tdb_once(const cm_tdb_cli_t *cli, cm_run_watch_t *w)
{
    char              err[1024], run_id[24], host[256], tmp[PATH_MAX + 64];
    char              root[PATH_MAX], ms[24], n1[24], n2[24], n3[24];
    char             *params_s = NULL, *metrics_s = NULL, why[600];
    const char       *v[8];
    PGconn           *c;
    PGresult         *r;
    cm_tdb_data_t     td;
    cm_rs_data_t      d;
    cm_rs_model_t    *m = NULL, *prod = NULL;
    cm_rs_metrics_t   cm, pm;
    json_t           *params = NULL, *metrics = NULL, *gate, *pj;
    double            p_ndcg = NAN, p_rmse = NAN, c_ndcg, c_rmse;
    uint64_t          t0 = cm_now_mono_ns();
    int               rc = 1, have_d = 0, version = 0, prod_version = 0;
    int               pass, have_prod = 0;
    char              ndcg_key[32];

    memset(&td, 0, sizeof(td));
    c = cm_pg_connect(cli->dsn, "cinematch-train", err, sizeof(err));
    if (c == NULL) {
        fprintf(stderr, "cinematch train recsys: %s\n", err);
        return 1;
    }

    /* 1. one trainer at a time; the lock goes with the session, so a
     * trainer that died left it free and its 'running' rows are stale */
    v[0] = cli->model;
    r = cm_pg_query(c, "SELECT pg_try_advisory_lock(hashtext('cinematch"
                    ".train.' || $1))", 1, v, err, sizeof(err));
    if (r == NULL || PQgetvalue(r, 0, 0)[0] != 't') {
        PQclear(r);
        fprintf(stderr, "cinematch train recsys: %s\n", r == NULL ? err
                : "another training of this model is running");
        PQfinish(c);
        return 1;
    }
    PQclear(r);
    PQclear(PQexecParams(c, "UPDATE training_runs SET status = 'failed',"
                         " error = 'interrupted: the trainer stopped before"
                         " finishing', finished_at = now() WHERE model_name ="
                         " $1 AND status = 'running'", 1, NULL, v, NULL, NULL,
                         0));

    /* 2. the run row */
    gethostname(host, sizeof(host));
    host[sizeof(host) - 1] = '\0';
    params = json_pack("{s:s, s:i, s:i, s:f, s:f, s:f, s:I, s:i, s:i, s:f,"
                       " s:f}", "algo", cm_rs_algo_name(cli->tc.algo),
                       "factors", (int) cli->tc.factors, "iters",
                       (int) cli->tc.iters, "reg", (double) cli->tc.reg,
                       "alpha", (double) cli->tc.alpha, "bias_reg",
                       (double) cli->tc.bias_reg, "seed",
                       (json_int_t) cli->tc.seed, "threads",
                       (int) cli->tc.threads, "k", (int) cli->k,
                       "gate_ndcg_pct", cli->gate_ndcg, "gate_rmse_pct",
                       cli->gate_rmse);
    params_s = json_dumps(params, JSON_COMPACT | JSON_SORT_KEYS);
    v[0] = cli->model;
    v[1] = params_s != NULL ? params_s : "{}";
    v[2] = CM_VERSION;
    v[3] = host;
    if (cli->if_drift) {
        r = cm_pg_query(c, "UPDATE training_runs SET status = 'running',"
                        " started_at = now(), params = $2::jsonb,"
                        " code_version = $3, host = $4 WHERE id = (SELECT id"
                        " FROM training_runs WHERE model_name = $1 AND status"
                        " = 'queued' ORDER BY id LIMIT 1 FOR UPDATE SKIP"
                        " LOCKED) RETURNING id", 4, v, err, sizeof(err));
    } else {
        r = cm_pg_query(c, "INSERT INTO training_runs (model_name,"
                        " triggered_by, status, params, code_version, host)"
                        " VALUES ($1, 'manual', 'running', $2::jsonb, $3, $4)"
                        " RETURNING id", 4, v, err, sizeof(err));
    }
    if (r == NULL) {
        fprintf(stderr, "cinematch train recsys: %s\n", err);
        goto done;
    }
    if (PQntuples(r) == 0) {
        PQclear(r);
        printf("train: no drift alert queued a training of %s; nothing to"
               " do\n", cli->model);
        rc = 0;
        goto done;
    }
    snprintf(run_id, sizeof(run_id), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    cm_run_watch_set_run(w, run_id);

    /* 3. data */
    if (cm_tdb_load(c, &td, err, sizeof(err)) != CM_OK) {
        rc = cm_tdb_fail(c, run_id, t0, err);
        goto done;
    }
    if (td.train.n == 0) {
        rc = cm_tdb_fail(c, run_id, t0, "no training ratings (run cinematch"
                         " ingest --target ratings first)");
        goto done;
    }

    /* 4. train, evaluate */
    if (cm_rs_data_build(td.train.v, td.train.n, &d, err, sizeof(err))
        != CM_OK)
    {
        rc = cm_tdb_fail(c, run_id, t0, err);
        goto done;
    }
    have_d = 1;
    if (cm_rs_train(&d, &cli->tc, &m, err, sizeof(err)) != CM_OK) {
        rc = cm_tdb_fail(c, run_id, t0, err);
        goto done;
    }
    memset(&cm, 0, sizeof(cm));
    cm.rmse = cm.ndcg = NAN;
    if (td.test.n > 0
        && cm_rs_evaluate(m, &d, td.test.v, td.test.n, cli->k, &cm, err,
                          sizeof(err)) != CM_OK)
    {
        rc = cm_tdb_fail(c, run_id, t0, err);
        goto done;
    }
    cm_model_store_root(root, sizeof(root));
    if ((size_t) snprintf(tmp, sizeof(tmp), "%s/.tmp", root) >= sizeof(tmp)
        || cm_mkdir_p(tmp, err, sizeof(err)) != CM_OK)
    {
        rc = cm_tdb_fail(c, run_id, t0, err[0] ? err : "store path too long");
        goto done;
    }
    if ((size_t) snprintf(tmp, sizeof(tmp), "%s/.tmp/recsys-run%s.cmrs", root,
                          run_id) >= sizeof(tmp))
    {
        rc = cm_tdb_fail(c, run_id, t0, "model store path too long");
        goto done;
    }
    if (cm_rs_model_write(m, tmp, err, sizeof(err)) != CM_OK) {
        rc = cm_tdb_fail(c, run_id, t0, err);
        goto done;
    }

    /* 6 (before 5, so the row carries the comparison): production on the
     * same held-out ratings */
    snprintf(ndcg_key, sizeof(ndcg_key), "ndcg@%zu", cli->k);
    v[0] = cli->model;
    r = cm_pg_query(c, "SELECT version, artifact_path, metrics::text FROM"
                    " model_versions WHERE model_name = $1 AND stage ="
                    " 'production'", 1, v, err, sizeof(err));
    if (r == NULL) {
        unlink(tmp);
        rc = cm_tdb_fail(c, run_id, t0, err);
        goto done;
    }
    if (PQntuples(r) > 0) {
        have_prod = 1;
        prod_version = atoi(PQgetvalue(r, 0, 0));
        if (td.test.n > 0
            && cm_rs_model_open(PQgetvalue(r, 0, 1), &prod, err, sizeof(err))
               == CM_OK
            && cm_rs_evaluate(prod, &d, td.test.v, td.test.n, cli->k, &pm,
                              err, sizeof(err)) == CM_OK)
        {
            p_ndcg = pm.ndcg;
            p_rmse = pm.rmse;
        } else {
            json_error_t  je;
            json_t       *rec = json_loads(PQgetvalue(r, 0, 2), 0, &je);

            p_ndcg = json_number_value(json_object_get(rec, ndcg_key));
            p_rmse = json_number_value(json_object_get(rec, "rmse"));
            if (json_object_get(rec, ndcg_key) == NULL) {
                p_ndcg = NAN;
            }
            if (json_object_get(rec, "rmse") == NULL) {
                p_rmse = NAN;
            }
            json_decref(rec);
        }
    }
    PQclear(r);

    c_ndcg = cm.ndcg;
    c_rmse = cm.rmse;
    if (!have_prod) {
        pass = 1;
        snprintf(why, sizeof(why), "first %s model", cli->model);
    } else if (!isfinite(c_ndcg)) {
        pass = 0;
        snprintf(why, sizeof(why), "no held-out ratings to compare on");
    } else if (!isfinite(p_ndcg)) {
        pass = 1;
        snprintf(why, sizeof(why), "production v%d has no comparable"
                 " metrics", prod_version);
    } else {
        int ndcg_ok = c_ndcg >= p_ndcg * (1.0 + cli->gate_ndcg / 100.0);
        /* a candidate that predicts no ratings (pop, ials) cannot show an
         * RMSE "not worse" than a production model that does */
        int rmse_ok = !isfinite(p_rmse)
                      || (isfinite(c_rmse)
                          && c_rmse <= p_rmse * (1.0 + cli->gate_rmse / 100.0));

        pass = ndcg_ok && rmse_ok;
        snprintf(why, sizeof(why), "%s %.4f vs production v%d %.4f (%+.2f%%,"
                 " need %+.2f%%), rmse %.4f vs %.4f: %s", ndcg_key, c_ndcg,
                 prod_version, p_ndcg,
                 p_ndcg > 0 ? 100.0 * (c_ndcg - p_ndcg) / p_ndcg : 0.0,
                 cli->gate_ndcg, c_rmse, p_rmse,
                 pass ? "passes" : (!ndcg_ok ? "ndcg not better enough"
                                             : "rmse worse"));
    }

    metrics = cm_tdb_metrics_json(&cm);
    pj = json_object();
    if (have_prod) {
        json_object_set_new(pj, "version", json_integer(prod_version));
        json_object_set_new(pj, ndcg_key, isfinite(p_ndcg) ? json_real(p_ndcg)
                                                           : json_null());
        json_object_set_new(pj, "rmse", isfinite(p_rmse) ? json_real(p_rmse)
                                                         : json_null());
    }
    gate = json_pack("{s:b, s:s, s:b, s:o}", "passed", pass, "reason", why,
                     "promote_requested", cli->promote, "production", pj);
    json_object_set_new(metrics, "gate", gate);
    metrics_s = json_dumps(metrics, JSON_COMPACT | JSON_SORT_KEYS);

    /* 5. register (stage staging): from here on a signal waits for the
     * run to finish, so the row and the registry agree */
    atomic_store(&w->phase, CM_RUN_CRITICAL);
    if (cm_model_register(c, cli->model, "recsys", tmp, metrics_s,
                          atoll(run_id), "staging", NULL, &version, err,
                          sizeof(err)) != CM_OK)
    {
        unlink(tmp);
        rc = cm_tdb_fail(c, run_id, t0, err);
        goto done;
    }
    unlink(tmp);

    snprintf(ms, sizeof(ms), "%llu",
             (unsigned long long) ((cm_now_mono_ns() - t0) / 1000000));
    snprintf(n1, sizeof(n1), "%zu", td.train.n);
    snprintf(n2, sizeof(n2), "%zu", td.test.n);
    snprintf(n3, sizeof(n3), "%llu",
             (unsigned long long) (td.train.n + td.test.n)
             * (unsigned long long) sizeof(cm_rating_t));
    v[0] = run_id;
    v[1] = metrics_s != NULL ? metrics_s : "{}";
    v[2] = n1;
    v[3] = n2;
    v[4] = n3;
    v[5] = ms;
    /* sql/006: promoted | rejected | skipped (passed, not asked to promote) */
    v[6] = !pass ? "rejected" : (cli->promote ? "promoted" : "skipped");
    v[7] = why;
    r = cm_pg_query(c, "UPDATE training_runs SET status = 'succeeded',"
                    " metrics = $2::jsonb, train_rows = $3, test_rows = $4,"
                    " data_bytes = $5, duration_ms = $6, finished_at = now(),"
                    " gate_decision = $7, gate_reason = $8 WHERE id = $1", 8,
                    v, err, sizeof(err));
    if (r == NULL) {
        rc = cm_tdb_fail(c, run_id, t0, err);
        goto done;
    }
    PQclear(r);
    printf("run %s: trained %s on %zu ratings (%llu from the buffer),"
           " evaluated on %zu: rmse %.4f %s %.4f -> %s version %d (staging)\n"
           "gate: %s\n", run_id, cm_rs_algo_name(cli->tc.algo), td.train.n,
           (unsigned long long) td.buf_rows, td.test.n, c_rmse, ndcg_key,
           c_ndcg, cli->model, version, why);

    /* 7. promote, merge the buffer */
    if (pass && cli->promote) {
        if (cm_model_promote(c, cli->model, version, err, sizeof(err))
            != CM_OK)
        {
            fprintf(stderr, "cinematch train recsys: promotion failed,"
                    " production unchanged: %s\n", err);
            if ((size_t) snprintf(why, sizeof(why), "gate passed; promotion"
                                  " failed: %s", err) >= sizeof(why))
            {
                why[sizeof(why) - 1] = '\0';
            }
            v[0] = run_id;
            v[1] = why;
            PQclear(PQexecParams(c, "UPDATE training_runs SET gate_decision ="
                                 " 'skipped', gate_reason = $2 WHERE id = $1",
                                 2, NULL, v, NULL, NULL, 0));
            goto done;
        }
        printf("promoted %s version %d to production\n", cli->model,
               version);
        if (td.buf_max_id > 0) {
            snprintf(n1, sizeof(n1), "%lld", (long long) td.buf_max_id);
            v[0] = n1;
            if (cm_pg_exec(c, "BEGIN", err, sizeof(err)) != CM_OK
                || (r = cm_pg_query(c, "INSERT INTO ratings (user_id,"
                        " movie_id, rating, ts, source, data_split, batch_id)"
                        " SELECT DISTINCT ON (user_id, movie_id) user_id,"
                        " movie_id, rating, ts, source, 'train', batch_id"
                        " FROM ratings_buffer WHERE merged_at IS NULL AND id"
                        " <= $1 ORDER BY user_id, movie_id, ts DESC, id DESC"
                        " ON CONFLICT (user_id, movie_id) DO UPDATE SET"
                        " rating = EXCLUDED.rating, ts = EXCLUDED.ts"
                        " WHERE EXCLUDED.ts >= ratings.ts", 1, v, err,
                        sizeof(err))) == NULL)
            {
                PQclear(PQexec(c, "ROLLBACK"));
                fprintf(stderr, "cinematch train recsys: buffer merge failed"
                        " (it stays pending): %s\n", err);
                rc = 0;
                goto done;
            }
            PQclear(r);
            r = cm_pg_query(c, "UPDATE ratings_buffer SET merged_at = now()"
                            " WHERE merged_at IS NULL AND id <= $1", 1, v,
                            err, sizeof(err));
            if (r == NULL || cm_pg_exec(c, "COMMIT", err, sizeof(err))
                             != CM_OK)
            {
                PQclear(r);
                PQclear(PQexec(c, "ROLLBACK"));
                fprintf(stderr, "cinematch train recsys: buffer merge failed"
                        " (it stays pending): %s\n", err);
                rc = 0;
                goto done;
            }
            printf("merged %s buffer rows into ratings\n", PQcmdTuples(r));
            PQclear(r);
        }
    } else if (!pass) {
        printf("kept production%s; version %d stays in staging\n",
               have_prod ? "" : " (none)", version);
    }
    rc = 0;

done:
    if (prod != NULL) {
        cm_rs_model_free(prod);
    }
    if (m != NULL) {
        cm_rs_model_free(m);
    }
    if (have_d) {
        cm_rs_data_free(&d);
    }
    cm_ratings_free(&td.train);
    cm_ratings_free(&td.test);
    json_decref(params);
    json_decref(metrics);
    free(params_s);
    free(metrics_s);
    PQfinish(c);
    return rc;
}

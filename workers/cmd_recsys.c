/*
 * cmd_recsys.c: `cinematch train recsys`, `cinematch eval recsys`,
 * `cinematch model inspect` and `cinematch bench recsys`.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cinematch/common.h"
#include "cinematch/movielens.h"
#include "cinematch/recsys.h"
#include "cinematch/recsys_eval.h"
#include "cmd.h"
#include "mlops.h"

static int cm_train_recsys_main(int argc, char **argv);
static int cm_eval_recsys_main(int argc, char **argv);
static int cm_model_inspect_main(int argc, char **argv);
static int cm_bench_recsys_main(int argc, char **argv);
static int cm_model_query_main(int argc, char **argv);
CM_COMMAND("train recsys", "train a recommender (ALS, iALS, bias, pop) into"
           " an artifact", cm_train_recsys_main);
CM_COMMAND("eval recsys", "evaluate recommenders: RMSE/MAE and ranking"
           " metrics@K", cm_eval_recsys_main);
CM_COMMAND("model inspect", "print and validate a model artifact",
           cm_model_inspect_main);
CM_COMMAND("bench recsys", "time ALS against the no-BLAS reference ALS",
           cm_bench_recsys_main);
CM_COMMAND("model query", "recommend, find similar films or fold in ratings"
           " with an artifact", cm_model_query_main);

/* options shared by train, eval and bench */
typedef struct {
    const char          *data;
    const char          *out;
    cm_ml_format_t       format;
    cm_rs_split_t        split;
    int                  have_split;
    cm_rs_train_conf_t   tc;
    int                  reg_set;
    int                  bias_reg_set;
    int                  alpha_set;
    int                  conf_set;
    int                  knn_set;
    int                  sim_set;
    size_t               k;
    int                  json;
    int                  lenient;
    uint32_t             ref_iters;
    int                  validate;
    const char          *artifact;     /* eval recsys --artifact */
    const char          *dump_topk;    /* eval recsys --dump-topk */
} cm_rs_cli_t;

enum {
    OPT_DATA = 256, OPT_FORMAT, OPT_SPLIT, OPT_ALGO, OPT_FACTORS, OPT_ITERS,
    OPT_REG, OPT_ALPHA, OPT_K, OPT_JSON, OPT_THREADS, OPT_SEED, OPT_OUT,
    OPT_KNN, OPT_LENIENT, OPT_REF_ITERS, OPT_VALIDATE, OPT_BIAS_REG,
    OPT_REG_EXP, OPT_KNN_BLEND, OPT_SIM_SHRINK, OPT_CONF_THR,
    OPT_CONF_BELOW, OPT_CG, OPT_ARTIFACT, OPT_DUMP_TOPK
};

static const struct option cm_rs_opts[] = {
    { "data", required_argument, NULL, OPT_DATA },
    { "format", required_argument, NULL, OPT_FORMAT },
    { "split", required_argument, NULL, OPT_SPLIT },
    { "algo", required_argument, NULL, OPT_ALGO },
    { "factors", required_argument, NULL, OPT_FACTORS },
    { "iters", required_argument, NULL, OPT_ITERS },
    { "reg", required_argument, NULL, OPT_REG },
    { "alpha", required_argument, NULL, OPT_ALPHA },
    { "k", required_argument, NULL, OPT_K },
    { "json", no_argument, NULL, OPT_JSON },
    { "threads", required_argument, NULL, OPT_THREADS },
    { "seed", required_argument, NULL, OPT_SEED },
    { "out", required_argument, NULL, OPT_OUT },
    { "knn", required_argument, NULL, OPT_KNN },
    { "lenient", no_argument, NULL, OPT_LENIENT },
    { "ref-iters", required_argument, NULL, OPT_REF_ITERS },
    { "validate", no_argument, NULL, OPT_VALIDATE },
    { "bias-reg", required_argument, NULL, OPT_BIAS_REG },
    { "reg-exp", required_argument, NULL, OPT_REG_EXP },
    { "knn-blend", required_argument, NULL, OPT_KNN_BLEND },
    { "sim-shrink", required_argument, NULL, OPT_SIM_SHRINK },
    { "conf-threshold", required_argument, NULL, OPT_CONF_THR },
    { "conf-below", required_argument, NULL, OPT_CONF_BELOW },
    { "cg", required_argument, NULL, OPT_CG },
    { "artifact", required_argument, NULL, OPT_ARTIFACT },
    { "dump-topk", required_argument, NULL, OPT_DUMP_TOPK },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 }
};

static const char *cm_rs_common_help =
    "  --data DIR          MovieLens directory (ratings.csv, u.data or"
    " ratings.dat)\n"
    "  --format F          auto|ml-latest|ml-100k|ml-1m (default auto)\n"
    "  --algo A            als|ials|bias|pop|itemknn (default als)\n"
    "  --factors N         latent factors (default 64)\n"
    "  --iters N           ALS iterations (default 15)\n"
    "  --reg R             lambda, times n^reg-exp for a row with n"
    " ratings\n"
    "                      (defaults tuned on ml-latest-small: als --reg 2"
    " --reg-exp 0.4\n"
    "                      --bias-reg 0.5; ials --reg 40 --alpha 1.5"
    " --conf-threshold 4\n"
    "                      --conf-below 0; bias --reg 2)\n"
    "  --alpha A           iALS confidence 1 + A*rating\n"
    "  --conf-threshold T  iALS: ratings below T get confidence"
    " 1 + A*B*rating\n"
    "  --conf-below B      (T 0 or B 1: 1 + A*rating for all)\n"
    "  --bias-reg B        ALS: biases regularised by reg*B\n"
    "  --reg-exp E         1: ALS-WR; 0: constant (ials default)\n"
    "  --knn N             item-kNN neighbours (default 30 --sim-shrink 30"
    "\n"
    "                      --conf-threshold 4 --conf-below 0: a seen film"
    " rated\n"
    "                      under 4 does not vote in the ranking)\n"
    "  --knn-blend B       ALS (eval only): add an item-kNN vote on the"
    " ALS\n"
    "                      residuals, shrunk by B (default 0: off)\n"
    "  --sim-shrink S      item-kNN: cosine * n/(n + S), n = co-raters\n"
    "  --cg N              N conjugate-gradient steps per row instead of"
    " exact\n"
    "                      Cholesky solves (default 0: exact)\n"
    "  --threads N         solver threads (default 1; results do not"
    " depend on it)\n"
    "  --seed S            initialisation seed (default 1)\n"
    "  --lenient           skip malformed lines (counted) instead of"
    " failing\n";


static int
cm_rs_num(const char *cmd, const char *flag, const char *s, double lo,
    double hi, double *out)
{
    char    *end;
    double   v = strtod(s, &end);

    if (*s == '\0' || *end != '\0' || !(v >= lo && v <= hi)) {
        fprintf(stderr, "cinematch %s: %s wants a number in %g..%g, got"
                " '%s'\n", cmd, flag, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}


/* Returns 0 to go on, 1 after --help, 2 on a usage error. */
static int
cm_rs_parse(const char *cmd, int argc, char **argv, cm_rs_cli_t *c,
    void (*usage)(FILE *))
{
    int     ch;
    double  v;
    char    err[512];

    memset(c, 0, sizeof(*c));
    cm_rs_train_conf_default(&c->tc);
    c->k = 10;
    c->ref_iters = 2;
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "h", cm_rs_opts, NULL)) != -1) {
        switch (ch) {
        case OPT_DATA: c->data = optarg; break;
        case OPT_OUT: c->out = optarg; break;
        case OPT_JSON: c->json = 1; break;
        case OPT_LENIENT: c->lenient = 1; break;
        case OPT_VALIDATE: c->validate = 1; break;
        case OPT_ARTIFACT: c->artifact = optarg; break;
        case OPT_DUMP_TOPK: c->dump_topk = optarg; break;
        case OPT_FORMAT:
            if (cm_ml_format_parse(optarg, &c->format) != CM_OK) {
                fprintf(stderr, "cinematch %s: --format wants auto, ml-latest,"
                        " ml-100k or ml-1m, got '%s'\n", cmd, optarg);
                return 2;
            }
            break;
        case OPT_SPLIT:
            if (cm_rs_split_parse(optarg, &c->split, err, sizeof(err))
                != CM_OK)
            {
                fprintf(stderr, "cinematch %s: %s\n", cmd, err);
                return 2;
            }
            c->have_split = 1;
            break;
        case OPT_ALGO:
            if (cm_rs_algo_parse(optarg, &c->tc.algo) != CM_OK) {
                fprintf(stderr, "cinematch %s: --algo wants als, ials, bias,"
                        " pop or itemknn, got '%s'\n", cmd, optarg);
                return 2;
            }
            break;
        case OPT_FACTORS:
            if (cm_rs_num(cmd, "--factors", optarg, 1, CM_RS_MAX_FACTORS, &v)) {
                return 2;
            }
            c->tc.factors = (uint32_t) v;
            break;
        case OPT_ITERS:
            if (cm_rs_num(cmd, "--iters", optarg, 1, 1000, &v)) return 2;
            c->tc.iters = (uint32_t) v;
            break;
        case OPT_REG:
            if (cm_rs_num(cmd, "--reg", optarg, 0, 1e6, &v)) return 2;
            c->tc.reg = (float) v;
            c->reg_set = 1;
            break;
        case OPT_ALPHA:
            if (cm_rs_num(cmd, "--alpha", optarg, 1e-6, 1e6, &v)) return 2;
            c->tc.alpha = (float) v;
            c->alpha_set = 1;
            break;
        case OPT_K:
            if (cm_rs_num(cmd, "--k", optarg, 1, 10000, &v)) return 2;
            c->k = (size_t) v;
            break;
        case OPT_BIAS_REG:
            if (cm_rs_num(cmd, "--bias-reg", optarg, 1e-6, 1e6, &v)) {
                return 2;
            }
            c->tc.bias_reg = (float) v;
            c->bias_reg_set = 1;
            break;
        case OPT_REG_EXP:
            if (cm_rs_num(cmd, "--reg-exp", optarg, 0, 2, &v)) return 2;
            c->tc.reg_exp = (float) v;
            break;
        case OPT_KNN_BLEND:
            if (cm_rs_num(cmd, "--knn-blend", optarg, 0, 1e6, &v)) return 2;
            c->tc.knn_blend = (float) v;
            break;
        case OPT_SIM_SHRINK:
            if (cm_rs_num(cmd, "--sim-shrink", optarg, 0, 1e6, &v)) return 2;
            c->tc.knn_sim_shrink = (float) v;
            c->sim_set = 1;
            break;
        case OPT_CONF_THR:
            if (cm_rs_num(cmd, "--conf-threshold", optarg, 0, 10, &v)) {
                return 2;
            }
            c->tc.conf_thr = (float) v;
            c->conf_set = 1;
            break;
        case OPT_CONF_BELOW:
            if (cm_rs_num(cmd, "--conf-below", optarg, 0, 10, &v)) return 2;
            c->tc.conf_below = (float) v;
            c->conf_set = 1;
            break;
        case OPT_CG:
            if (cm_rs_num(cmd, "--cg", optarg, 0, 100, &v)) return 2;
            c->tc.cg_steps = (uint32_t) v;
            break;
        case OPT_KNN:
            if (cm_rs_num(cmd, "--knn", optarg, 1, 10000, &v)) return 2;
            c->tc.knn = (uint32_t) v;
            c->knn_set = 1;
            break;
        case OPT_THREADS:
            if (cm_rs_num(cmd, "--threads", optarg, 1, 64, &v)) return 2;
            c->tc.threads = (uint32_t) v;
            break;
        case OPT_SEED:
            if (cm_rs_num(cmd, "--seed", optarg, 0, 1e18, &v)) return 2;
            c->tc.seed = (uint64_t) v;
            break;
        case OPT_REF_ITERS:
            if (cm_rs_num(cmd, "--ref-iters", optarg, 0, 100, &v)) return 2;
            c->ref_iters = (uint32_t) v;
            break;
        case 'h':
            usage(stdout);
            return 1;
        default:
            fprintf(stderr, "cinematch %s: unknown or incomplete option"
                    " '%s'\n", cmd, argv[optind - 1]);
            usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "cinematch %s: unexpected argument '%s'\n", cmd,
                argv[optind]);
        return 2;
    }
    /*
     * Per-algorithm defaults for what was not given: the settings tuned on
     * ml-latest-small's validation parts (docs/BENCHMARKS.md).
     */
    if (c->tc.algo == CM_RS_ALS) {
        if (!c->reg_set) {
            c->tc.reg = 2.0f;
            if (c->tc.reg_exp < 0) {
                c->tc.reg_exp = 0.4f;
            }
            if (!c->bias_reg_set) {
                c->tc.bias_reg = 0.5f;
            }
        }
    } else if (c->tc.algo == CM_RS_IALS) {
        if (!c->reg_set) {
            c->tc.reg = 40.0f;
        }
        if (!c->alpha_set) {
            c->tc.alpha = 1.5f;
        }
        if (!c->conf_set) {
            c->tc.conf_thr = 4.0f;
            c->tc.conf_below = 0.0f;
        }
    } else if (c->tc.algo == CM_RS_ITEMKNN) {
        if (!c->knn_set) {
            c->tc.knn = 30;
        }
        if (!c->sim_set) {
            c->tc.knn_sim_shrink = 30.0f;
        }
        if (!c->conf_set) {
            c->tc.conf_thr = 4.0f;
            c->tc.conf_below = 0.0f;
        }
    } else if (!c->reg_set) {
        c->tc.reg = c->tc.algo == CM_RS_BIAS ? 2.0f : 10.0f;
    }
    return 0;
}


static int
cm_rs_load(const char *cmd, cm_rs_cli_t *c, cm_ml_dataset_t *ds)
{
    cm_ml_opts_t  o;
    char          err[1024];

    memset(&o, 0, sizeof(o));
    o.strict = !c->lenient;
    /* strict: the error message already names the line */
    o.on_bad = c->lenient ? cm_ml_report_stderr : NULL;
    if (cm_ml_load_dir(c->data, c->format, &o, ds, err, sizeof(err))
        != CM_OK)
    {
        fprintf(stderr, "cinematch %s: %s\n", cmd, err);
        return 1;
    }
    c->format = ds->format;
    if (o.n_bad > 0) {
        fprintf(stderr, "cinematch %s: skipped %zu malformed lines of %zu\n",
                cmd, o.n_bad, o.n_lines);
    }
    return 0;
}


/* ---- train recsys -------------------------------------------------------- */

static void
cm_train_recsys_usage(FILE *f)
{
    fprintf(f, "usage: cinematch train recsys --data DIR --out FILE"
            " [options]\n\nTrains on every rating of DIR and writes the"
            " recsys artifact (see\n`cinematch model inspect`).  With"
            " --from-db: the MLOps retraining from\nPostgreSQL (see"
            " `cinematch train recsys --from-db --help`).\n\n%s",
            cm_rs_common_help);
}


static int
cm_train_recsys_main(int argc, char **argv)
{
    cm_rs_cli_t       c;
    cm_ml_dataset_t   ds;
    cm_rs_data_t      d;
    cm_rs_model_t    *m;
    char              err[1024];
    int               rc;
    uint64_t          t0;
    double            secs;

    if (cm_argv_has(argc, argv, "--from-db")) {
        return cm_train_recsys_db_main(argc, argv);     /* cmd_train_db.c */
    }
    rc = cm_rs_parse("train recsys", argc, argv, &c, cm_train_recsys_usage);
    if (rc != 0) {
        return rc == 1 ? 0 : 2;
    }
    if (c.data == NULL || c.out == NULL) {
        fprintf(stderr, "cinematch train recsys: --data and --out are"
                " required\n");
        return 2;
    }
    if (c.tc.algo == CM_RS_ITEMKNN) {
        fprintf(stderr, "cinematch train recsys: itemknn is an evaluation"
                " baseline; no artifact format\n");
        return 2;
    }
    if (cm_rs_load("train recsys", &c, &ds) != 0) {
        return 1;
    }
    rc = cm_rs_data_build(ds.ratings.v, ds.ratings.n, &d, err, sizeof(err));
    cm_ml_dataset_free(&ds);
    if (rc != CM_OK) {
        fprintf(stderr, "cinematch train recsys: %s\n", err);
        return 1;
    }
    t0 = cm_now_mono_ns();
    rc = cm_rs_train(&d, &c.tc, &m, err, sizeof(err));
    secs = (double) (cm_now_mono_ns() - t0) / 1e9;
    if (rc != CM_OK) {
        cm_rs_data_free(&d);
        fprintf(stderr, "cinematch train recsys: %s\n", err);
        return 1;
    }
    rc = cm_rs_model_write(m, c.out, err, sizeof(err));
    if (rc != CM_OK) {
        fprintf(stderr, "cinematch train recsys: %s\n", err);
    } else {
        printf("trained %s (%u factors, %u iters, reg %g, %u threads) on %llu"
               " ratings, %u users, %u items in %.2f s -> %s\n",
               cm_rs_algo_name(c.tc.algo), m->factors, c.tc.iters,
               (double) c.tc.reg, c.tc.threads, (unsigned long long) d.nnz,
               d.n_users, d.n_items, secs, c.out);
    }
    cm_rs_model_free(m);
    cm_rs_data_free(&d);
    return rc == CM_OK ? 0 : 1;
}


/* ---- eval recsys --------------------------------------------------------- */

static void
cm_eval_recsys_usage(FILE *f)
{
    fprintf(f, "usage: cinematch eval recsys --data DIR [--split S]"
            " [options] [--k 10] [--json]\n\n"
            "  --split S           random:FRAC:SEED (default random:0.2:1),\n"
            "                      temporal-user:FRAC, files:BASE,TEST\n"
            "  --k K               cut-off of the ranking metrics"
            " (default 10)\n"
            "  --json              one JSON object instead of the table\n"
            "  --validate          split the training part again the same"
            " way and\n"
            "                      report on that validation part (for"
            " tuning; the\n"
            "                      test part is never touched)\n"
            "  --artifact FILE     with --dump-topk: no training, no split;"
            " score every\n"
            "                      user of this artifact offline, one user"
            " at a time\n"
            "  --dump-topk FILE    write each user's top-K unseen films as"
            " JSON lines\n"
            "                      {user_id, movie_ids, scores} (external"
            " ids; - is\n"
            "                      stdout): what `cinematch infer` must"
            " answer\n%s\n"
            "Ranking: full catalogue of train items minus the user's train"
            " items;\npositives = test ratings >= 4.0; see"
            " shared/include/cinematch/recsys_eval.h.\n", cm_rs_common_help);
}


static int
cm_rs_read_split_file(cm_rs_cli_t *c, const char *name, cm_ratings_t *out)
{
    char          path[4096], err[1024];
    cm_ml_opts_t  o;

    memset(&o, 0, sizeof(o));
    o.strict = !c->lenient;
    /* strict: the error message already names the line */
    o.on_bad = c->lenient ? cm_ml_report_stderr : NULL;
    if (name[0] == '/') {
        snprintf(path, sizeof(path), "%s", name);
    } else {
        snprintf(path, sizeof(path), "%s/%s", c->data, name);
    }
    if (cm_ml_read_ratings_file(path, c->format, &o, out, err, sizeof(err))
        != CM_OK)
    {
        fprintf(stderr, "cinematch eval recsys: %s\n", err);
        return 1;
    }
    return 0;
}


/*
 * eval recsys --artifact FILE --dump-topk OUT: the offline top-K of every
 * user of an artifact, scored one user at a time (the daemon scores
 * batches with one SGEMM), seen films excluded, for consistency checks of
 * the serving path.
 */
static int
cm_rs_dump_topk(const cm_rs_cli_t *c)
{
    FILE           *f;
    float          *row, *sc;
    uint32_t       *idx, u;
    size_t          n, j;
    cm_rs_model_t  *m;
    char            err[1024];
    int             rc = 0;

    if (cm_rs_model_open(c->artifact, &m, err, sizeof(err)) != CM_OK) {
        fprintf(stderr, "cinematch eval recsys: %s\n", err);
        return 1;
    }
    f = strcmp(c->dump_topk, "-") == 0 ? stdout : fopen(c->dump_topk, "w");
    row = malloc((size_t) m->n_items * sizeof(float));
    idx = malloc(c->k * sizeof(uint32_t));
    sc = malloc(c->k * sizeof(float));
    if (f == NULL || row == NULL || idx == NULL || sc == NULL) {
        fprintf(stderr, "cinematch eval recsys: %s: %s\n", c->dump_topk,
                f == NULL ? strerror(errno) : "out of memory");
        rc = 1;
        goto done;
    }
    for (u = 0; u < m->n_users && rc == 0; u++) {
        if (cm_rs_score_users(m, &u, 1, row) != CM_OK) {
            fprintf(stderr, "cinematch eval recsys: scoring failed\n");
            rc = 1;
            break;
        }
        n = cm_rs_topk(row, m->n_items, m->seen_idx + m->seen_ptr[u],
                       m->seen_ptr[u + 1] - m->seen_ptr[u], c->k, idx, sc);
        fprintf(f, "{\"user_id\":%d,\"movie_ids\":[", m->user_ext[u]);
        for (j = 0; j < n; j++) {
            fprintf(f, "%s%d", j ? "," : "", m->item_ext[idx[j]]);
        }
        fprintf(f, "],\"scores\":[");
        for (j = 0; j < n; j++) {
            fprintf(f, "%s%.9g", j ? "," : "", (double) sc[j]);
        }
        fprintf(f, "]}\n");
    }
    if (f != stdout && f != NULL && fclose(f) != 0) {
        fprintf(stderr, "cinematch eval recsys: %s: %s\n", c->dump_topk,
                strerror(errno));
        rc = 1;
    }
    f = NULL;
done:
    if (f != NULL && f != stdout) {
        fclose(f);
    }
    free(row);
    free(idx);
    free(sc);
    cm_rs_model_free(m);
    return rc;
}


static int
cm_eval_recsys_main(int argc, char **argv)
{
    cm_rs_cli_t       c;
    cm_ml_dataset_t   ds;
    cm_ratings_t      train = { 0 }, test = { 0 };
    cm_rs_data_t      d;
    cm_rs_model_t    *m = NULL;
    cm_rs_metrics_t   mt;
    char              err[1024], proto[2200], key[64];
    int               rc;
    uint64_t          t0;
    double            train_s, eval_s;

    rc = cm_rs_parse("eval recsys", argc, argv, &c, cm_eval_recsys_usage);
    if (rc != 0) {
        return rc == 1 ? 0 : 2;
    }
    if ((c.artifact == NULL) != (c.dump_topk == NULL)) {
        fprintf(stderr, "cinematch eval recsys: --artifact and --dump-topk"
                " go together\n");
        return 2;
    }
    if (c.artifact != NULL) {
        if (c.data != NULL || c.have_split) {
            fprintf(stderr, "cinematch eval recsys: --artifact takes no"
                    " --data or --split\n");
            return 2;
        }
        return cm_rs_dump_topk(&c);
    }
    if (c.data == NULL) {
        fprintf(stderr, "cinematch eval recsys: --data is required\n");
        return 2;
    }
    if (!c.have_split) {
        cm_rs_split_parse("random:0.2:1", &c.split, NULL, 0);
    }
    memset(&ds, 0, sizeof(ds));
    if (c.split.kind == CM_SPLIT_FILES) {
        if (c.format == CM_ML_AUTO
            && cm_ml_detect_dir(c.data, &c.format, err, sizeof(err)) != CM_OK)
        {
            fprintf(stderr, "cinematch eval recsys: %s\n", err);
            return 1;
        }
        if (cm_rs_read_split_file(&c, c.split.base, &train) != 0
            || cm_rs_read_split_file(&c, c.split.test, &test) != 0)
        {
            cm_ratings_free(&train);
            cm_ratings_free(&test);
            return 1;
        }
    } else {
        if (cm_rs_load("eval recsys", &c, &ds) != 0) {
            return 1;
        }
        rc = c.split.kind == CM_SPLIT_RANDOM
             ? cm_rs_split_random(&ds.ratings, c.split.frac, c.split.seed,
                                  &train, &test)
             : cm_rs_split_temporal_user(&ds.ratings, c.split.frac, &train,
                                         &test);
        cm_ml_dataset_free(&ds);
        if (rc != CM_OK) {
            fprintf(stderr, "cinematch eval recsys: out of memory\n");
            return 1;
        }
    }

    if (c.validate) {
        cm_ratings_t  tr2 = { 0 }, val = { 0 };

        rc = c.split.kind == CM_SPLIT_TEMPORAL_USER
             ? cm_rs_split_temporal_user(&train, c.split.frac, &tr2, &val)
             : cm_rs_split_random(&train, c.split.kind == CM_SPLIT_RANDOM
                                  ? c.split.frac : 0.2,
                                  c.split.seed + 1000003, &tr2, &val);
        cm_ratings_free(&train);
        cm_ratings_free(&test);
        train = tr2;
        test = val;
        if (rc != CM_OK) {
            fprintf(stderr, "cinematch eval recsys: out of memory\n");
            goto out;
        }
    }
    rc = cm_rs_data_build(train.v, train.n, &d, err, sizeof(err));
    if (rc != CM_OK) {
        fprintf(stderr, "cinematch eval recsys: %s\n", err);
        goto out;
    }
    t0 = cm_now_mono_ns();
    rc = cm_rs_train(&d, &c.tc, &m, err, sizeof(err));
    train_s = (double) (cm_now_mono_ns() - t0) / 1e9;
    if (rc != CM_OK) {
        fprintf(stderr, "cinematch eval recsys: %s\n", err);
        goto out_data;
    }
    t0 = cm_now_mono_ns();
    rc = cm_rs_evaluate(m, &d, test.v, test.n, c.k, &mt, err, sizeof(err));
    eval_s = (double) (cm_now_mono_ns() - t0) / 1e9;
    if (rc != CM_OK) {
        fprintf(stderr, "cinematch eval recsys: %s\n", err);
        goto out_model;
    }

    {
        char split[2100];

        cm_rs_split_format(&c.split, split, sizeof(split));
        snprintf(proto, sizeof(proto), "%s %s%s", cm_ml_format_name(c.format),
                 split, c.validate ? " (validation part of train)" : "");
    }
    if (c.json) {
        json_t *o = json_object();
        char   *s;

#define CM_NUM(v) (isnan(v) ? json_null() : json_real(v))
        json_object_set_new(o, "protocol", json_string(proto));
        json_object_set_new(o, "data", json_string(c.data));
        json_object_set_new(o, "algo",
                            json_string(cm_rs_algo_name(c.tc.algo)));
        json_object_set_new(o, "factors", json_integer(m->factors));
        json_object_set_new(o, "iters", json_integer(c.tc.iters));
        json_object_set_new(o, "reg", json_real(c.tc.reg));
        json_object_set_new(o, "alpha", json_real(c.tc.alpha));
        json_object_set_new(o, "knn", json_integer(c.tc.knn));
        json_object_set_new(o, "reg_exp", json_real(m->reg_exp));
        json_object_set_new(o, "bias_reg", json_real(m->bias_reg));
        json_object_set_new(o, "knn_blend", json_real(c.tc.knn_blend));
        json_object_set_new(o, "sim_shrink", json_real(c.tc.knn_sim_shrink));
        json_object_set_new(o, "conf_threshold", json_real(c.tc.conf_thr));
        json_object_set_new(o, "conf_below", json_real(c.tc.conf_below));
        json_object_set_new(o, "cg", json_integer(c.tc.cg_steps));
        json_object_set_new(o, "seed", json_integer((json_int_t) c.tc.seed));
        json_object_set_new(o, "threads", json_integer(c.tc.threads));
        json_object_set_new(o, "k", json_integer((json_int_t) c.k));
        json_object_set_new(o, "n_train", json_integer((json_int_t) d.nnz));
        json_object_set_new(o, "n_test", json_integer((json_int_t) test.n));
        json_object_set_new(o, "n_users", json_integer(d.n_users));
        json_object_set_new(o, "n_items", json_integer(d.n_items));
        json_object_set_new(o, "n_rank_users",
                            json_integer((json_int_t) mt.n_rank_users));
        json_object_set_new(o, "rmse", CM_NUM(mt.rmse));
        json_object_set_new(o, "mae", CM_NUM(mt.mae));
#define CM_AT(name, v) \
        snprintf(key, sizeof(key), name "@%zu", c.k); \
        json_object_set_new(o, key, json_real(v))
        CM_AT("precision", mt.precision);
        CM_AT("recall", mt.recall);
        CM_AT("ndcg", mt.ndcg);
        CM_AT("hr", mt.hr);
        CM_AT("map", mt.map);
        CM_AT("coverage", mt.coverage);
        json_object_set_new(o, "train_seconds", json_real(train_s));
        json_object_set_new(o, "eval_seconds", json_real(eval_s));
        s = json_dumps(o, JSON_COMPACT | JSON_PRESERVE_ORDER
                          | JSON_REAL_PRECISION(6));
        printf("%s\n", s);
        free(s);
        json_decref(o);
    } else {
        printf("%s: %s (factors %u, iters %u, reg %g, reg-exp %g, bias-reg %g,"
               " alpha %g, conf-threshold %g, conf-below %g, knn %u,"
               " knn-blend %g, sim-shrink %g, cg %u), %llu train / %zu test"
               " ratings, %u users, %u items\n", proto,
               cm_rs_algo_name(c.tc.algo), m->factors, c.tc.iters,
               (double) c.tc.reg, (double) m->reg_exp, (double) m->bias_reg,
               (double) c.tc.alpha, (double) c.tc.conf_thr,
               (double) c.tc.conf_below, c.tc.knn, (double) c.tc.knn_blend,
               (double) c.tc.knn_sim_shrink, c.tc.cg_steps,
               (unsigned long long) d.nnz, test.n, d.n_users, d.n_items);
        if (!isnan(mt.rmse)) {
            printf("  RMSE          %.4f   [%s, %zu predictions]\n", mt.rmse,
                   proto, mt.n_pred);
            printf("  MAE           %.4f   [%s]\n", mt.mae, proto);
        } else {
            printf("  RMSE/MAE      n/a      [%s: ranking-only model]\n",
                   proto);
        }
        printf("  Precision@%-3zu %.4f   [%s, %zu users with a positive"
               " >= 4]\n", c.k, mt.precision, proto, mt.n_rank_users);
        printf("  Recall@%-6zu %.4f   [%s]\n", c.k, mt.recall, proto);
        printf("  NDCG@%-8zu %.4f   [%s]\n", c.k, mt.ndcg, proto);
        printf("  HR@%-10zu %.4f   [%s]\n", c.k, mt.hr, proto);
        printf("  MAP@%-9zu %.4f   [%s]\n", c.k, mt.map, proto);
        printf("  Coverage@%-4zu %.4f   [%s]\n", c.k, mt.coverage, proto);
        printf("  train %.2f s, eval %.2f s (%u threads)\n", train_s, eval_s,
               c.tc.threads);
    }

out_model:
    cm_rs_model_free(m);
out_data:
    cm_rs_data_free(&d);
out:
    cm_ratings_free(&train);
    cm_ratings_free(&test);
    return rc == CM_OK ? 0 : 1;
}


/* ---- model inspect ------------------------------------------------------- */

static void
cm_hex(const uint8_t *p, size_t n, char *out)
{
    size_t i;

    for (i = 0; i < n; i++) {
        sprintf(out + 2 * i, "%02x", p[i]);
    }
}


static int
cm_model_inspect_main(int argc, char **argv)
{
    cm_rs_model_t  *m;
    char            err[1024], hex[65];
    uint32_t        i, nu;
    size_t          n, j;
    uint32_t        idx[5];
    float           sc[5];

    if (cm_cmd_wants_help(argc, argv)) {
        printf("usage: cinematch model inspect FILE\n\nValidates a recsys"
               " artifact (offsets, lengths, checksum, id maps, CSR)\nand"
               " prints its header.\n");
        return 0;
    }
    if (argc != 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: cinematch model inspect FILE\n");
        return 2;
    }
    if (cm_rs_model_open(argv[1], &m, err, sizeof(err)) != CM_OK) {
        fprintf(stderr, "cinematch model inspect: %s\n", err);
        return 1;
    }
    printf("file        %s (%zu bytes, valid)\n", argv[1], m->map_len);
    printf("format      recsys v%u, little-endian, 64-byte aligned"
           " sections\n", CM_RS_VERSION);
    printf("algo        %s\n", cm_rs_algo_name(m->algo));
    printf("factors     %u\n", m->factors);
    printf("users       %u\n", m->n_users);
    printf("items       %u\n", m->n_items);
    printf("seen        %llu ratings\n", (unsigned long long) m->nnz);
    printf("mean        %.4f\n", (double) m->mean);
    printf("params      reg %g, alpha %g, iters %u, seed %llu\n",
           (double) m->reg, (double) m->alpha, m->iters,
           (unsigned long long) m->seed);
    printf("created     %llu (unix)\n", (unsigned long long) m->created);
    cm_hex(m->data_fp, 32, hex);
    printf("data fp     %s\n", hex);
    cm_hex(m->checksum, 32, hex);
    printf("checksum    %s (BLAKE2b-256, verified)\n", hex);
    printf("user ids    %d .. %d\n", m->user_ext[0],
           m->user_ext[m->n_users - 1]);
    printf("item ids    %d .. %d\n", m->item_ext[0],
           m->item_ext[m->n_items - 1]);
    nu = 0;
    if (cm_rs_recommend(m, nu, 5, 1, idx, sc, &n) == CM_OK) {
        printf("user %-6d top-5 unseen:", m->user_ext[0]);
        for (j = 0; j < n; j++) {
            printf(" %d (%.3f)", m->item_ext[idx[j]], (double) sc[j]);
        }
        printf("\n");
    }
    for (i = 0; i < 1 && m->factors > 0; i++) {
        if (cm_rs_similar_items(m, 0, 5, idx, sc, &n) == CM_OK) {
            printf("item %-6d similar:", m->item_ext[0]);
            for (j = 0; j < n; j++) {
                printf(" %d (%.3f)", m->item_ext[idx[j]], (double) sc[j]);
            }
            printf("\n");
        }
    }
    cm_rs_model_free(m);
    return 0;
}


/* ---- bench recsys -------------------------------------------------------- */

static void
cm_bench_recsys_usage(FILE *f)
{
    fprintf(f, "usage: cinematch bench recsys --data DIR [--factors 64]"
            " [--iters 15]\n                             [--threads 2]"
            " [--ref-iters 2] [--cg 3] [--reg R]\n\n"
            "Times exact ALS with --threads and with 1 thread, ALS by"
            " conjugate\ngradient (--cg N, default 3) with --threads, and the"
            " no-BLAS reference\nALS (plain loops, --ref-iters iterations)"
            " on all of DIR, and prints\nseconds per iteration and the"
            " ratios, all measured in this run.\n");
}


/*
 * What the inference daemon does per request: scores of a batch of users
 * by one SGEMM, then top-10 excluding seen per user; and one user alone.
 */
static void
cm_rs_bench_scoring(const cm_rs_model_t *m)
{
    uint32_t   users[64], top[10], u, b, nb;
    float     *s, ts[10];
    size_t     n, a;
    uint64_t   t0;
    double     t_batch, t_one;

    s = malloc((size_t) 64 * m->n_items * sizeof(float));
    if (s == NULL) {
        return;
    }
    t0 = cm_now_mono_ns();
    for (u = 0; u < m->n_users; u += nb) {
        nb = m->n_users - u < 64 ? m->n_users - u : 64;
        for (b = 0; b < nb; b++) {
            users[b] = u + b;
        }
        (void) cm_rs_score_users(m, users, nb, s);
        for (a = 0; a < nb; a++) {
            (void) cm_rs_topk(s + a * m->n_items, m->n_items,
                              m->seen_idx + m->seen_ptr[users[a]],
                              m->seen_ptr[users[a] + 1]
                              - m->seen_ptr[users[a]], 10, top, ts);
        }
    }
    t_batch = (double) (cm_now_mono_ns() - t0) / 1e3 / m->n_users;
    nb = m->n_users < 200 ? m->n_users : 200;
    t0 = cm_now_mono_ns();
    for (u = 0; u < nb; u++) {
        (void) cm_rs_recommend(m, u, 10, 1, top, ts, &n);
    }
    t_one = (double) (cm_now_mono_ns() - t0) / 1e3 / nb;
    printf("  scoring %u items x %u factors, top-10 exclude-seen, 1 thread:"
           " %.1f us/user in batches of 64, %.1f us/user alone\n",
           m->n_items, m->factors, t_batch, t_one);
    free(s);
}


static int
cm_bench_recsys_main(int argc, char **argv)
{
    cm_rs_cli_t          c;
    cm_ml_dataset_t      ds;
    cm_rs_data_t         d;
    cm_rs_model_t       *m;
    cm_rs_train_conf_t   tc;
    char                 err[1024];
    uint64_t             t0;
    double               t_par, t_one, t_cg, t_ref = 0;
    uint32_t             T;
    int                  rc;

    rc = cm_rs_parse("bench recsys", argc, argv, &c, cm_bench_recsys_usage);
    if (rc != 0) {
        return rc == 1 ? 0 : 2;
    }
    if (c.data == NULL) {
        fprintf(stderr, "cinematch bench recsys: --data is required\n");
        return 2;
    }
    if (cm_rs_load("bench recsys", &c, &ds) != 0) {
        return 1;
    }
    rc = cm_rs_data_build(ds.ratings.v, ds.ratings.n, &d, err, sizeof(err));
    cm_ml_dataset_free(&ds);
    if (rc != CM_OK) {
        fprintf(stderr, "cinematch bench recsys: %s\n", err);
        return 1;
    }
    tc = c.tc;
    tc.algo = CM_RS_ALS;
    tc.cg_steps = 0;                    /* exact solves first */
    T = tc.threads;
    printf("bench recsys: %llu ratings, %u users, %u items, %u factors\n",
           (unsigned long long) d.nnz, d.n_users, d.n_items, tc.factors);

    t0 = cm_now_mono_ns();
    rc = cm_rs_train(&d, &tc, &m, err, sizeof(err));
    t_par = (double) (cm_now_mono_ns() - t0) / 1e9;
    if (rc != CM_OK) {
        goto fail;
    }
    cm_rs_bench_scoring(m);
    cm_rs_model_free(m);
    printf("  als  %2u threads  %3u iters  %8.3f s  %8.4f s/iter\n", T,
           tc.iters, t_par, t_par / tc.iters);
    if (T != 1) {
        tc.threads = 1;
        t0 = cm_now_mono_ns();
        rc = cm_rs_train(&d, &tc, &m, err, sizeof(err));
        t_one = (double) (cm_now_mono_ns() - t0) / 1e9;
        if (rc != CM_OK) {
            goto fail;
        }
        cm_rs_model_free(m);
        printf("  als   1 thread   %3u iters  %8.3f s  %8.4f s/iter\n",
               tc.iters, t_one, t_one / tc.iters);
    } else {
        t_one = t_par;
    }
    tc.threads = T;
    tc.cg_steps = c.tc.cg_steps ? c.tc.cg_steps : 3;
    t0 = cm_now_mono_ns();
    rc = cm_rs_train(&d, &tc, &m, err, sizeof(err));
    t_cg = (double) (cm_now_mono_ns() - t0) / 1e9;
    if (rc != CM_OK) {
        goto fail;
    }
    cm_rs_model_free(m);
    printf("  als  %2u threads  %3u iters  %8.3f s  %8.4f s/iter  (--cg %u:"
           " %.1fx the exact solves)\n", T, tc.iters, t_cg, t_cg / tc.iters,
           tc.cg_steps, t_par / t_cg);
    tc.cg_steps = 0;
    if (c.ref_iters > 0) {
        tc.iters = c.ref_iters;
        t0 = cm_now_mono_ns();
        rc = cm_rs_train_als_reference(&d, &tc, &m, err, sizeof(err));
        t_ref = (double) (cm_now_mono_ns() - t0) / 1e9;
        if (rc != CM_OK) {
            goto fail;
        }
        cm_rs_model_free(m);
        printf("  ref   1 thread   %3u iters  %8.3f s  %8.4f s/iter"
               "  (no BLAS/LAPACK)\n", tc.iters, t_ref, t_ref / tc.iters);
        printf("  speed-up per iteration vs reference: %.1fx (1 thread),"
               " %.1fx (%u threads)\n",
               (t_ref / c.ref_iters) / (t_one / c.tc.iters),
               (t_ref / c.ref_iters) / (t_par / c.tc.iters), T);
    }
    cm_rs_data_free(&d);
    return 0;

fail:
    fprintf(stderr, "cinematch bench recsys: %s\n", err);
    cm_rs_data_free(&d);
    return 1;
}


/* ---- model query ---------------------------------------------------------- */

static void
cm_model_query_usage(FILE *f)
{
    fprintf(f, "usage: cinematch model query FILE [--k 10]\n"
            "         (--user ID | --similar MOVIE | --popular |"
            " --rate MOVIE:R[,MOVIE:R...])\n\n"
            "Uses the scoring API the inference daemon uses, with external"
            " MovieLens ids:\n"
            "  --user ID       top-K unseen films for a trained user, each with"
            " the seen\n"
            "                  film that explains it\n"
            "  --similar MOVIE films closest to MOVIE (cosine of factors)\n"
            "  --popular       the cold-start list\n"
            "  --rate LIST     fold in a new user from ratings (one ridge"
            " solve), then\n"
            "                  recommend excluding the rated films\n");
}


static int
cm_cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *) a, y = *(const uint32_t *) b;

    return (x > y) - (x < y);
}


static int
cm_model_query_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "user", required_argument, NULL, 'u' },
        { "similar", required_argument, NULL, 's' },
        { "popular", no_argument, NULL, 'p' },
        { "rate", required_argument, NULL, 'r' },
        { "k", required_argument, NULL, 'k' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    cm_rs_model_t  *m = NULL;
    const char     *user = NULL, *similar = NULL, *rate = NULL, *file;
    int             popular = 0, ch, rc = 1, modes;
    size_t          k = 10, n = 0, j, nr = 0;
    uint32_t       *idx = NULL, *items = NULL, because;
    float          *sc = NULL, *ratings = NULL, *scores = NULL, *x = NULL;
    float           bias, sim;
    double          v;
    char            err[1024], *end;
    int64_t         u, it;

    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'u': user = optarg; break;
        case 's': similar = optarg; break;
        case 'p': popular = 1; break;
        case 'r': rate = optarg; break;
        case 'k':
            if (cm_rs_num("model query", "--k", optarg, 1, 1000, &v)) {
                return 2;
            }
            k = (size_t) v;
            break;
        case 'h':
            cm_model_query_usage(stdout);
            return 0;
        default:
            fprintf(stderr, "cinematch model query: unknown or incomplete"
                    " option '%s'\n", argv[optind - 1]);
            cm_model_query_usage(stderr);
            return 2;
        }
    }
    modes = (user != NULL) + (similar != NULL) + popular + (rate != NULL);
    if (optind != argc - 1 || modes != 1) {
        cm_model_query_usage(stderr);
        return 2;
    }
    file = argv[optind];
    if (cm_rs_model_open(file, &m, err, sizeof(err)) != CM_OK) {
        fprintf(stderr, "cinematch model query: %s\n", err);
        return 1;
    }
    idx = malloc(k * sizeof(uint32_t));
    sc = malloc(k * sizeof(float));
    if (idx == NULL || sc == NULL) {
        goto done;
    }

    if (user != NULL) {
        u = cm_rs_find_id(m->user_ext, m->n_users,
                          (int32_t) strtol(user, &end, 10));
        if (*end != '\0' || u < 0) {
            fprintf(stderr, "cinematch model query: user %s is not in the"
                    " model (try --popular or --rate)\n", user);
            goto done;
        }
        if (cm_rs_recommend(m, (uint32_t) u, k, 1, idx, sc, &n) != CM_OK) {
            goto done;
        }
        for (j = 0; j < n; j++) {
            printf("%d\t%.4f", m->item_ext[idx[j]], (double) sc[j]);
            if (m->factors > 0
                && cm_rs_explain(m, (uint32_t) u, idx[j], &because, &sim)
                   == CM_OK)
            {
                printf("\tbecause %d (%.3f)", m->item_ext[because],
                       (double) sim);
            }
            printf("\n");
        }
        rc = 0;
    } else if (similar != NULL) {
        it = cm_rs_find_id(m->item_ext, m->n_items,
                           (int32_t) strtol(similar, &end, 10));
        if (*end != '\0' || it < 0) {
            fprintf(stderr, "cinematch model query: movie %s is not in the"
                    " model\n", similar);
            goto done;
        }
        if (cm_rs_similar_items(m, (uint32_t) it, k, idx, sc, &n) != CM_OK) {
            fprintf(stderr, "cinematch model query: a %s model has no"
                    " factors\n", cm_rs_algo_name(m->algo));
            goto done;
        }
        for (j = 0; j < n; j++) {
            printf("%d\t%.4f\n", m->item_ext[idx[j]], (double) sc[j]);
        }
        rc = 0;
    } else if (popular) {
        if (cm_rs_popular(m, NULL, 0, k, idx, sc, &n) == CM_OK) {
            for (j = 0; j < n; j++) {
                printf("%d\t%.0f\n", m->item_ext[idx[j]], (double) sc[j]);
            }
            rc = 0;
        }
    } else {
        const char *p = rate;

        items = malloc((strlen(rate) / 2 + 1) * sizeof(uint32_t));
        ratings = malloc((strlen(rate) / 2 + 1) * sizeof(float));
        scores = malloc(m->n_items * sizeof(float));
        x = malloc((m->factors ? m->factors : 1) * sizeof(float));
        if (items == NULL || ratings == NULL || scores == NULL || x == NULL) {
            goto done;
        }
        while (*p != '\0') {
            long   id = strtol(p, &end, 10);
            double r;

            if (end == p || *end != ':') {
                fprintf(stderr, "cinematch model query: --rate wants"
                        " MOVIE:RATING[,...], at '%s'\n", p);
                rc = 2;
                goto done;
            }
            r = strtod(end + 1, &end);
            it = cm_rs_find_id(m->item_ext, m->n_items, (int32_t) id);
            if (it < 0 || !(r >= 0.5 && r <= 5.0)) {
                fprintf(stderr, "cinematch model query: movie %ld unknown or"
                        " rating %g outside 0.5..5\n", id, r);
                rc = 2;
                goto done;
            }
            items[nr] = (uint32_t) it;
            ratings[nr++] = (float) r;
            p = *end == ',' ? end + 1 : end;
            if (*end != ',' && *end != '\0') {
                rc = 2;
                fprintf(stderr, "cinematch model query: junk after a rating:"
                        " '%s'\n", end);
                goto done;
            }
        }
        if (cm_rs_fold_in(m, items, ratings, nr, 0, x, &bias) != CM_OK) {
            fprintf(stderr, "cinematch model query: fold-in needs an als or"
                    " ials model\n");
            goto done;
        }
        cm_rs_score_vector(m, x, bias, scores);
        qsort(items, nr, sizeof(uint32_t), cm_cmp_u32);
        n = cm_rs_topk(scores, m->n_items, items, nr, k, idx, sc);
        for (j = 0; j < n; j++) {
            printf("%d\t%.4f\n", m->item_ext[idx[j]], (double) sc[j]);
        }
        rc = 0;
    }

done:
    free(idx); free(sc); free(items); free(ratings); free(scores); free(x);
    cm_rs_model_free(m);
    return rc;
}

/*
 * cmd_drift.c: `cinematch drift` (baseline = training ratings, current =
 * the pending buffer, one drift_reports row per run) and the statistics on
 * their own: `cinematch drift ks A B`, `cinematch drift psi A B`.
 *
 * When a run flags drift it also, in the same transaction, queues a
 * training request (training_runs row, status 'queued', triggered_by
 * 'drift') unless one is already queued, stamps notified_at and sends
 * NOTIFY cinematch_drift '<report id>'; `cinematch train recsys --from-db
 * --if-drift` claims the queued request.
 *
 * Exit status: 0 done (drift or not), 1 failed, 2 bad usage.
 */
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "cinematch/common.h"
#include "cinematch/drift.h"
#include "cmd.h"
#include "mlops.h"


#define CM_DRIFT_CHANNEL  "cinematch_drift"
#define CM_DRIFT_TOPK     20

typedef struct {
    const char  *dsn;
    const char  *model;
    double       alpha;         /* KS p-value below which ... */
    double       ks_min;        /* ... and a statistic at least this */
    double       psi_alert;
    double       mean_shift;    /* |mean change| in % of baseline */
    double       new_items;     /* share of ratings on unseen items */
    double       pop_tvd;       /* item popularity total variation */
    int          json;
    long         loop;
} cm_drift_cli_t;


static int cm_drift_main(int argc, char **argv);
static int cm_drift_ks_main(int argc, char **argv);
static int cm_drift_psi_main(int argc, char **argv);
static int cm_drift_once(const cm_drift_cli_t *cli);

CM_COMMAND("drift", "compare the rating buffer with the training ratings"
           " (KS, PSI, shifts) -> drift_reports", cm_drift_main);
CM_COMMAND("drift ks", "two-sample Kolmogorov-Smirnov test on two files of"
           " numbers", cm_drift_ks_main);
CM_COMMAND("drift psi", "population stability index of two files of"
           " numbers", cm_drift_psi_main);


static int
cm_drift_num(const char *flag, const char *s, double lo, double hi,
    double *out)
{
    return cm_cli_num("cinematch drift", flag, s, lo, hi, out);
}


static void
cm_drift_usage(FILE *f)
{
    fprintf(f,
        "usage: cinematch drift [--model NAME] [--dsn DSN] [--json]"
        " [--loop INTERVAL]\n"
        "                       [--alpha P] [--ks-min D] [--psi X]"
        " [--mean-shift PCT]\n"
        "                       [--new-items SHARE] [--pop-tvd X]\n"
        "       cinematch drift ks A B [--method auto|exact|asymp]\n"
        "                       [--alternative two-sided|less|greater]"
        " [--json]\n"
        "       cinematch drift psi A B [--bins N] [--json]\n\n"
        "Baseline = ratings with data_split 'train'; current = ratings_buffer"
        " rows not\nyet merged.  Writes one drift_reports row: KS two-sample"
        " test of the rating\nvalues (exact below 10000 per side, asymptotic"
        " above, as scipy's ks_2samp),\nPSI over the ten half-star bins,"
        " mean/std, the share of ratings on items and\nby users unseen in"
        " training, item-popularity total variation and top-%d\noverlap."
        "  Drift when any of:\n"
        "  --alpha P --ks-min D   KS p-value < P and statistic >= D (default"
        " 0.01, 0.1)\n"
        "  --psi X                PSI >= X (default 0.25, 'significant')\n"
        "  --mean-shift PCT       |mean change| >= PCT %% of the baseline"
        " mean (default 7)\n"
        "  --new-items SHARE      share on items unseen in training >= SHARE"
        " (default 0.5)\n"
        "  --pop-tvd X            popularity total variation >= X (default"
        " 0.7)\n"
        "A drift queues a training request for --model (default recsys) and"
        " sends\nNOTIFY " CM_DRIFT_CHANNEL ".  --loop runs again every"
        " INTERVAL (30s, 15m, 1h, 1d).\n", CM_DRIFT_TOPK);
}


static int
cm_drift_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "dsn", required_argument, NULL, 'd' },
        { "model", required_argument, NULL, 'm' },
        { "alpha", required_argument, NULL, 'a' },
        { "ks-min", required_argument, NULL, 'k' },
        { "psi", required_argument, NULL, 'p' },
        { "mean-shift", required_argument, NULL, 's' },
        { "new-items", required_argument, NULL, 'n' },
        { "pop-tvd", required_argument, NULL, 't' },
        { "json", no_argument, NULL, 'j' },
        { "loop", required_argument, NULL, 'l' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    cm_drift_cli_t  cli;
    int             ch, rc;

    memset(&cli, 0, sizeof(cli));
    cli.model = "recsys";
    cli.alpha = 0.01;
    cli.ks_min = 0.1;
    cli.psi_alert = CM_PSI_SIGNIFICANT;
    cli.mean_shift = 7.0;
    cli.new_items = 0.5;
    cli.pop_tvd = 0.7;
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'd': cli.dsn = optarg; break;
        case 'm': cli.model = optarg; break;
        case 'j': cli.json = 1; break;
        case 'a':
            if (cm_drift_num("--alpha", optarg, 0, 1, &cli.alpha)) return 2;
            break;
        case 'k':
            if (cm_drift_num("--ks-min", optarg, 0, 1, &cli.ks_min)) return 2;
            break;
        case 'p':
            if (cm_drift_num("--psi", optarg, 0, 1e9, &cli.psi_alert)) {
                return 2;
            }
            break;
        case 's':
            if (cm_drift_num("--mean-shift", optarg, 0, 1000,
                             &cli.mean_shift))
            {
                return 2;
            }
            break;
        case 'n':
            if (cm_drift_num("--new-items", optarg, 0, 1, &cli.new_items)) {
                return 2;
            }
            break;
        case 't':
            if (cm_drift_num("--pop-tvd", optarg, 0, 1, &cli.pop_tvd)) {
                return 2;
            }
            break;
        case 'l':
            cli.loop = cm_interval_parse(optarg);
            if (cli.loop <= 0) {
                fprintf(stderr, "cinematch drift: --loop wants an interval"
                        " like 30s, 15m, 1h, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'h':
            cm_drift_usage(stdout);
            return 0;
        default:
            fprintf(stderr, "cinematch drift: unknown or incomplete option"
                    " '%s' (see --help)\n", argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "cinematch drift: unexpected argument '%s' (see"
                " --help; the tests are 'drift ks' and 'drift psi')\n",
                argv[optind]);
        return 2;
    }
    for (;;) {
        rc = cm_drift_once(&cli);
        if (cli.loop <= 0) {
            return rc;
        }
        fflush(stdout);
        fflush(stderr);
        sleep((unsigned) cli.loop);
    }
}


/* Ten half-star bins from "SELECT (rating * 2)::int, count(*) ..." */
static int
cm_drift_hist(PGconn *c, const char *sql, uint64_t h[10], char *err,
    size_t errlen)
{
    PGresult  *r = cm_pg_query(c, sql, 0, NULL, err, errlen);
    int        i, b;

    if (r == NULL) {
        return CM_EIO;
    }
    memset(h, 0, 10 * sizeof(uint64_t));
    for (i = 0; i < PQntuples(r); i++) {
        b = atoi(PQgetvalue(r, i, 0));
        if (b >= 1 && b <= 10) {
            h[b - 1] = strtoull(PQgetvalue(r, i, 1), NULL, 10);
        }
    }
    PQclear(r);
    return CM_OK;
}


static int
cm_drift_once(const cm_drift_cli_t *cli)
{
    static const double  stars[10] = {
        0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0
    };
    uint64_t         hb[10], hc[10], nb = 0, nc = 0;
    double           mb, sb, mc, sc, psi, shift, new_items, new_users;
    double           tvd, rpu_b, rpu_c, user_tvd;
    long             overlap;
    cm_ks_result_t   ks;
    PGconn          *c;
    PGresult        *r;
    char             err[1024], id_s[24], *details = NULL;
    const char      *v[16];
    char             s[16][40];
    json_t          *d = NULL, *reasons, *jb, *jc;
    int              i, drift, rc = 1;

    c = cm_pg_connect(cli->dsn, "cinematch-drift", err, sizeof(err));
    if (c == NULL) {
        fprintf(stderr, "cinematch drift: %s\n", err);
        return 1;
    }
    /* one run at a time (a timer tick and a manual run would write two
     * reports from the same data); the lock goes with the session */
    r = cm_pg_query(c, "SELECT pg_try_advisory_lock(hashtext("
                    "'cinematch.drift'))", 0, NULL, err, sizeof(err));
    if (r == NULL || PQgetvalue(r, 0, 0)[0] != 't') {
        fprintf(stderr, "cinematch drift: %s\n", r == NULL ? err
                : "another drift run is in progress; nothing done");
        PQclear(r);
        rc = r == NULL ? 1 : 0;
        goto done;
    }
    PQclear(r);
    if (cm_drift_hist(c, "SELECT (rating * 2)::int, count(*) FROM ratings"
                      " WHERE data_split = 'train' GROUP BY 1", hb, err,
                      sizeof(err)) != CM_OK
        || cm_drift_hist(c, "SELECT (rating * 2)::int, count(*) FROM"
                         " ratings_buffer WHERE merged_at IS NULL GROUP BY 1",
                         hc, err, sizeof(err)) != CM_OK)
    {
        fprintf(stderr, "cinematch drift: %s\n", err);
        goto done;
    }
    for (i = 0; i < 10; i++) {
        nb += hb[i];
        nc += hc[i];
    }
    if (nb == 0 || nc == 0) {
        printf("drift: nothing to compare (%llu training ratings, %llu in the"
               " buffer)\n", (unsigned long long) nb, (unsigned long long) nc);
        rc = 0;
        goto done;
    }
    if (cm_ks_2samp_counts(hb, hc, 10, stars, CM_KS_TWO_SIDED, CM_KS_AUTO,
                           &ks, err, sizeof(err)) != CM_OK)
    {
        fprintf(stderr, "cinematch drift: %s\n", err);
        goto done;
    }
    psi = cm_psi_counts(hb, hc, 10);
    cm_hist_moments(hb, stars, 10, &mb, &sb);
    cm_hist_moments(hc, stars, 10, &mc, &sc);
    shift = mb != 0.0 ? 100.0 * (mc - mb) / mb : 0.0;

    /* items, users: what a histogram cannot see */
    r = cm_pg_query(c,
        "WITH cur AS (SELECT user_id, movie_id FROM ratings_buffer"
        "             WHERE merged_at IS NULL),"
        " b AS (SELECT movie_id, count(*)::float8 / sum(count(*)) OVER () p"
        "       FROM ratings WHERE data_split = 'train' GROUP BY movie_id),"
        " c AS (SELECT movie_id, count(*)::float8 / sum(count(*)) OVER () p"
        "       FROM cur GROUP BY movie_id),"
        " bu AS (SELECT user_id, count(*)::float8 / sum(count(*)) OVER () p"
        "        FROM ratings WHERE data_split = 'train' GROUP BY user_id),"
        " cu AS (SELECT user_id, count(*)::float8 / sum(count(*)) OVER () p"
        "        FROM cur GROUP BY user_id)"
        " SELECT"
        "  (SELECT count(*) FROM cur WHERE movie_id NOT IN"
        "     (SELECT movie_id FROM b))::float8 / (SELECT count(*) FROM cur),"
        "  (SELECT count(*) FROM cur WHERE user_id NOT IN"
        "     (SELECT user_id FROM bu))::float8 / (SELECT count(*) FROM cur),"
        "  (SELECT 0.5 * sum(abs(coalesce(b.p, 0) - coalesce(c.p, 0)))"
        "     FROM b FULL JOIN c USING (movie_id)),"
        "  (SELECT count(*) FROM (SELECT movie_id FROM b ORDER BY p DESC,"
        "     movie_id LIMIT 20) x JOIN (SELECT movie_id FROM c ORDER BY p"
        "     DESC, movie_id LIMIT 20) y USING (movie_id)),"
        "  (SELECT count(*)::float8 / greatest(count(DISTINCT user_id), 1)"
        "     FROM ratings WHERE data_split = 'train'),"
        "  (SELECT count(*)::float8 / greatest(count(DISTINCT user_id), 1)"
        "     FROM cur),"
        "  (SELECT 0.5 * sum(abs(coalesce(bu.p, 0) - coalesce(cu.p, 0)))"
        "     FROM bu FULL JOIN cu USING (user_id))", 0, NULL, err,
        sizeof(err));
    if (r == NULL) {
        fprintf(stderr, "cinematch drift: %s\n", err);
        goto done;
    }
    new_items = atof(PQgetvalue(r, 0, 0));
    new_users = atof(PQgetvalue(r, 0, 1));
    tvd = atof(PQgetvalue(r, 0, 2));
    overlap = atol(PQgetvalue(r, 0, 3));
    rpu_b = atof(PQgetvalue(r, 0, 4));
    rpu_c = atof(PQgetvalue(r, 0, 5));
    user_tvd = atof(PQgetvalue(r, 0, 6));
    PQclear(r);

    reasons = json_array();
    if (ks.pvalue < cli->alpha && ks.statistic >= cli->ks_min) {
        json_array_append_new(reasons, json_string("ks"));
    }
    if (psi >= cli->psi_alert) {
        json_array_append_new(reasons, json_string("psi"));
    }
    if (fabs(shift) >= cli->mean_shift) {
        json_array_append_new(reasons, json_string("mean_shift"));
    }
    if (new_items >= cli->new_items) {
        json_array_append_new(reasons, json_string("new_items"));
    }
    if (tvd >= cli->pop_tvd) {
        json_array_append_new(reasons, json_string("popularity"));
    }
    drift = json_array_size(reasons) > 0;

    jb = json_array();
    jc = json_array();
    for (i = 0; i < 10; i++) {
        json_array_append_new(jb, json_integer((json_int_t) hb[i]));
        json_array_append_new(jc, json_integer((json_int_t) hc[i]));
    }
    d = json_pack("{s:o, s:o, s:o, s:f, s:f, s:f, s:f, s:i, s:f, s:f, s:f,"
                  " s:f, s:s, s:{s:f, s:f, s:f, s:f, s:f, s:f}}",
                  "reasons", reasons, "hist_baseline", jb, "hist_current", jc,
                  "mean_shift_pct", shift, "ks_location", ks.location,
                  "new_user_share", new_users, "popularity_tvd", tvd,
                  "top20_overlap", (int) overlap,
                  "top20_shift", 1.0 - (double) overlap / CM_DRIFT_TOPK,
                  "ratings_per_user_baseline", rpu_b,
                  "ratings_per_user_current", rpu_c,
                  "std_shift_pct", sb != 0.0 ? 100.0 * (sc - sb) / sb : 0.0,
                  "model", cli->model,
                  "thresholds", "alpha", cli->alpha, "ks_min", cli->ks_min,
                  "psi", cli->psi_alert, "mean_shift_pct", cli->mean_shift,
                  "new_items", cli->new_items, "pop_tvd", cli->pop_tvd);
    if (d != NULL) {
        json_object_set_new(d, "user_activity_tvd", json_real(user_tvd));
    }
    details = d != NULL ? json_dumps(d, JSON_COMPACT) : NULL;

    snprintf(s[0], 40, "%llu", (unsigned long long) nb);
    snprintf(s[1], 40, "%llu", (unsigned long long) nc);
    snprintf(s[2], 40, "%.17g", ks.statistic);
    snprintf(s[3], 40, "%.17g", ks.pvalue);
    /* exact | asymp, as scipy.stats.ks_2samp and the schema (sql/006) */
    snprintf(s[4], 40, "%s", cm_ks_method_name(ks.method));
    snprintf(s[5], 40, "%.17g", psi);
    snprintf(s[6], 40, "%s", cm_psi_band(psi));
    snprintf(s[7], 40, "%.17g", mb);
    snprintf(s[8], 40, "%.17g", mc);
    snprintf(s[9], 40, "%.17g", sb);
    snprintf(s[10], 40, "%.17g", sc);
    snprintf(s[11], 40, "%.17g", new_items < 0 ? 0 : new_items);
    snprintf(s[12], 40, "%s", drift ? "true" : "false");
    for (i = 0; i < 13; i++) {
        v[i] = s[i];
    }
    v[13] = details != NULL ? details : "{}";
    snprintf(s[14], 40, "%.17g", tvd);
    snprintf(s[15], 40, "%.17g", user_tvd);
    v[14] = s[14];
    v[15] = s[15];

    if (cm_pg_exec(c, "BEGIN", err, sizeof(err)) != CM_OK) {
        goto failed;
    }
    r = cm_pg_query(c, "INSERT INTO drift_reports (batch_id, baseline_rows,"
                    " current_rows, ks_statistic, ks_pvalue, ks_method, psi,"
                    " psi_band, mean_baseline, mean_current, std_baseline,"
                    " std_current, new_item_share, alert, details, reasons,"
                    " thresholds, popularity_shift, user_activity_shift)"
                    " SELECT (SELECT max(batch_id) FROM ratings_buffer WHERE"
                    " merged_at IS NULL), $1, $2, $3, $4, $5, $6, $7, $8, $9,"
                    " $10, $11, $12, $13, $14::jsonb, ARRAY(SELECT"
                    " jsonb_array_elements_text($14::jsonb->'reasons')),"
                    " coalesce($14::jsonb->'thresholds', '{}'), $15, $16"
                    " RETURNING id", 16, v, err, sizeof(err));
    if (r == NULL) {
        goto failed;
    }
    snprintf(id_s, sizeof(id_s), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    if (drift) {
        v[0] = id_s;
        v[1] = cli->model;
        v[2] = CM_VERSION;
        r = cm_pg_query(c, "INSERT INTO training_runs (model_name,"
                        " triggered_by, status, code_version, drift_report_id)"
                        " SELECT $2::text, 'drift', 'queued', $3::text,"
                        " $1::bigint WHERE NOT EXISTS (SELECT 1 FROM"
                        " training_runs WHERE model_name = $2::text AND"
                        " status = 'queued')", 3, v, err,
                        sizeof(err));
        if (r == NULL) {
            goto failed;
        }
        PQclear(r);
        r = cm_pg_query(c, "UPDATE drift_reports SET notified_at = now()"
                        " WHERE id = $1", 1, v, err, sizeof(err));
        if (r == NULL) {
            goto failed;
        }
        PQclear(r);
        r = cm_pg_query(c, "SELECT pg_notify('" CM_DRIFT_CHANNEL "', $1)", 1,
                        v, err, sizeof(err));
        if (r == NULL) {
            goto failed;
        }
        PQclear(r);
    }
    if (cm_pg_exec(c, "COMMIT", err, sizeof(err)) != CM_OK) {
        goto failed;
    }

    if (cli->json) {
        json_object_set_new(d, "report_id", json_integer(atoll(id_s)));
        json_object_set_new(d, "drift", json_boolean(drift));
        json_object_set_new(d, "ks_statistic", json_real(ks.statistic));
        json_object_set_new(d, "ks_pvalue", json_real(ks.pvalue));
        json_object_set_new(d, "ks_method",
                            json_string(cm_ks_method_name(ks.method)));
        json_object_set_new(d, "psi", json_real(psi));
        json_object_set_new(d, "new_item_share", json_real(new_items));
        json_object_set_new(d, "baseline_rows", json_integer((json_int_t) nb));
        json_object_set_new(d, "current_rows", json_integer((json_int_t) nc));
        json_dumpf(d, stdout, JSON_COMPACT);
        printf("\n");
    } else {
        printf("drift report %s: %llu baseline vs %llu current ratings\n"
               "  KS D=%.4f p=%.3g (%s)  PSI=%.4f (%s)  mean %.3f -> %.3f"
               " (%+.1f%%)  std %.3f -> %.3f\n"
               "  new items %.1f%%  new users %.1f%%  popularity TVD %.3f"
               "  top-20 overlap %ld/20  user activity TVD %.3f\n"
               "  %s\n", id_s, (unsigned long long) nb,
               (unsigned long long) nc, ks.statistic, ks.pvalue,
               cm_ks_method_name(ks.method), psi, cm_psi_band(psi), mb, mc,
               shift, sb, sc, 100.0 * new_items, 100.0 * new_users, tvd,
               overlap, user_tvd,
               drift ? "DRIFT: training requested" : "no drift");
    }
    rc = 0;
    goto cleanup;

failed:
    fprintf(stderr, "cinematch drift: %s\n", err);
    PQclear(PQexec(c, "ROLLBACK"));
cleanup:
    free(details);
    json_decref(d);
done:
    PQfinish(c);
    return rc;
}


/* ---- drift ks / drift psi ------------------------------------------------ */

static int
cm_drift_read_numbers(const char *path, double **out, size_t *n)
{
    char     *buf, *p, *line, *end, err[512];
    size_t    len, cap = 0, lineno = 0;
    double   *v = NULL, *nv, x;

    if (cm_read_file(path, &buf, &len, err, sizeof(err)) != CM_OK) {
        fprintf(stderr, "cinematch drift: %s\n", err);
        return -1;
    }
    *n = 0;
    for (p = buf; p != NULL && *p != '\0'; ) {
        line = p;
        p = strchr(p, '\n');
        if (p != NULL) {
            *p++ = '\0';
        }
        lineno++;
        line += strspn(line, " \t\r");
        if (*line == '\0' || *line == '#') {
            continue;
        }
        x = strtod(line, &end);
        end += strspn(end, " \t\r");
        if (end == line || *end != '\0' || !isfinite(x)) {
            fprintf(stderr, "cinematch drift: %s:%zu: not a number\n", path,
                    lineno);
            free(buf);
            free(v);
            return -1;
        }
        if (*n == cap) {
            cap = cap ? cap * 2 : 1024;
            nv = realloc(v, cap * sizeof(double));
            if (nv == NULL) {
                free(buf);
                free(v);
                return -1;
            }
            v = nv;
        }
        v[(*n)++] = x;
    }
    free(buf);
    if (*n == 0) {
        fprintf(stderr, "cinematch drift: %s: no numbers\n", path);
        free(v);
        return -1;
    }
    *out = v;
    return 0;
}


static void
cm_drift_ks_usage(FILE *f)
{
    fprintf(f, "usage: cinematch drift ks A B [--method auto|exact|asymp]\n"
            "                          [--alternative two-sided|less|greater]"
            " [--json]\n\n"
            "Two-sample Kolmogorov-Smirnov test of the numbers in files A and"
            " B (one per\nline, '#' comments), computed as"
            " scipy.stats.ks_2samp(A, B, alternative,\nmethod) does.\n");
}


static int
cm_drift_ks_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "method", required_argument, NULL, 'm' },
        { "alternative", required_argument, NULL, 'a' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    cm_ks_method_t   method = CM_KS_AUTO;
    cm_ks_alt_t      alt = CM_KS_TWO_SIDED;
    cm_ks_result_t   r;
    double          *a = NULL, *b = NULL;
    size_t           na, nb;
    char             err[256];
    int              ch, json = 0, rc = 1;

    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'm':
            if (cm_ks_method_parse(optarg, &method) != CM_OK) {
                fprintf(stderr, "cinematch drift ks: --method wants auto,"
                        " exact or asymp, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'a':
            if (cm_ks_alt_parse(optarg, &alt) != CM_OK) {
                fprintf(stderr, "cinematch drift ks: --alternative wants"
                        " two-sided, less or greater, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'j': json = 1; break;
        case 'h':
            cm_drift_ks_usage(stdout);
            return 0;
        default:
            fprintf(stderr, "cinematch drift ks: unknown or incomplete option"
                    " '%s' (see --help)\n", argv[optind - 1]);
            return 2;
        }
    }
    if (argc - optind != 2) {
        fprintf(stderr, "cinematch drift ks: wants two files, A and B (see"
                " --help)\n");
        return 2;
    }
    if (cm_drift_read_numbers(argv[optind], &a, &na) != 0
        || cm_drift_read_numbers(argv[optind + 1], &b, &nb) != 0)
    {
        goto done;
    }
    if (cm_ks_2samp(a, na, b, nb, alt, method, &r, err, sizeof(err))
        != CM_OK)
    {
        fprintf(stderr, "cinematch drift ks: %s\n", err);
        goto done;
    }
    if (json) {
        printf("{\"statistic\":%.17g,\"pvalue\":%.17g,\"method\":\"%s\","
               "\"statistic_location\":%.17g,\"statistic_sign\":%d,"
               "\"n1\":%zu,\"n2\":%zu}\n", r.statistic, r.pvalue,
               cm_ks_method_name(r.method), r.location, r.sign, na, nb);
    } else {
        printf("statistic %.6g  pvalue %.6g  (%s, n1 %zu, n2 %zu)\n",
               r.statistic, r.pvalue, cm_ks_method_name(r.method), na, nb);
    }
    rc = 0;
done:
    free(a);
    free(b);
    return rc;
}


static void
cm_drift_psi_usage(FILE *f)
{
    fprintf(f, "usage: cinematch drift psi A B [--bins N] [--json]\n\n"
            "Population stability index of B (current) against A (baseline)"
            " over N\nequal-width bins spanning both (default 10); empty bins"
            " count as a share\nof %g.  Bands: < 0.1 stable, < 0.25 moderate,"
            " else significant.\n", CM_PSI_EPS);
}


static int
cm_drift_psi_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "bins", required_argument, NULL, 'b' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    double   *a = NULL, *b = NULL, psi, bins = 10;
    size_t    na, nb;
    char      err[256];
    int       ch, json = 0, rc = 1;

    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'b':
            if (cm_drift_num("--bins", optarg, 1, 10000, &bins)) return 2;
            break;
        case 'j': json = 1; break;
        case 'h':
            cm_drift_psi_usage(stdout);
            return 0;
        default:
            fprintf(stderr, "cinematch drift psi: unknown or incomplete option"
                    " '%s' (see --help)\n", argv[optind - 1]);
            return 2;
        }
    }
    if (argc - optind != 2) {
        fprintf(stderr, "cinematch drift psi: wants two files, A and B (see"
                " --help)\n");
        return 2;
    }
    if (cm_drift_read_numbers(argv[optind], &a, &na) != 0
        || cm_drift_read_numbers(argv[optind + 1], &b, &nb) != 0)
    {
        goto done;
    }
    if (cm_psi_samples(a, na, b, nb, (size_t) bins, &psi, err, sizeof(err))
        != CM_OK)
    {
        fprintf(stderr, "cinematch drift psi: %s\n", err);
        goto done;
    }
    if (json) {
        printf("{\"psi\":%.17g,\"band\":\"%s\",\"bins\":%zu}\n", psi,
               cm_psi_band(psi), (size_t) bins);
    } else {
        printf("psi %.6g (%s, %zu bins)\n", psi, cm_psi_band(psi),
               (size_t) bins);
    }
    rc = 0;
done:
    free(a);
    free(b);
    return rc;
}

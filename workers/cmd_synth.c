/*
 * cmd_synth.c: `cinematch synth`, MovieLens-shaped synthetic data.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/common.h"
#include "cinematch/synth.h"
#include "cmd.h"

static int cm_synth_main(int argc, char **argv);
CM_COMMAND("synth", "generate a MovieLens-shaped dataset with planted tastes",
           cm_synth_main);


static void
cm_synth_usage(FILE *f)
{
    fprintf(f,
        "usage: cinematch synth --out DIR [--users N] [--items M]"
        " [--ratings R]\n"
        "                       [--seed S] [--rank D] [--noise SD]"
        " [--drift-batches K]\n"
        "                       [--batch-ratings B]\n\n"
        "Writes DIR/ratings.csv and DIR/movies.csv in the ml-latest-small"
        " format\n(userId,movieId,rating,timestamp / movieId,title,genres)"
        " from planted latent\ntastes, genres and popularity skew; the same"
        " seed gives the same bytes.\nWith --drift-batches K also"
        " DIR/batches/week_001.csv .. week_K.csv, weekly\nbatches whose"
        " distribution shifts progressively (rating mean down, a trending\n"
        "genre up, new films and new users).\n\n"
        "defaults: --users 610 --items 9000 --ratings 100000 --seed 42"
        " --rank 8\n          --noise 0.6 --batch-ratings ratings/50+100\n");
}


static int
cm_synth_num(const char *flag, const char *s, uint64_t lo, uint64_t hi,
    uint64_t *out)
{
    char                *end;
    unsigned long long   v;

    v = strtoull(s, &end, 10);
    if (*s == '\0' || *end != '\0' || *s == '-' || v < lo || v > hi) {
        fprintf(stderr, "cinematch synth: %s wants an integer in %llu..%llu,"
                " got '%s'\n", flag, (unsigned long long) lo,
                (unsigned long long) hi, s);
        return -1;
    }
    *out = v;
    return 0;
}


static int
cm_synth_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "out", required_argument, NULL, 'o' },
        { "users", required_argument, NULL, 'u' },
        { "items", required_argument, NULL, 'i' },
        { "ratings", required_argument, NULL, 'r' },
        { "seed", required_argument, NULL, 's' },
        { "rank", required_argument, NULL, 'd' },
        { "noise", required_argument, NULL, 'n' },
        { "drift-batches", required_argument, NULL, 'k' },
        { "batch-ratings", required_argument, NULL, 'b' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    cm_synth_conf_t  c;
    const char      *out = NULL;
    uint64_t         v, n;
    char             err[512], *end;
    int              ch, rc;
    uint64_t         t0;

    cm_synth_conf_default(&c);
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'o': out = optarg; break;
        case 'u':
            if (cm_synth_num("--users", optarg, 1, 100000000, &v)) return 2;
            c.n_users = (uint32_t) v;
            break;
        case 'i':
            if (cm_synth_num("--items", optarg, 10, 50000000, &v)) return 2;
            c.n_items = (uint32_t) v;
            break;
        case 'r':
            if (cm_synth_num("--ratings", optarg, 1, 4000000000ull, &v)) {
                return 2;
            }
            c.n_ratings = v;
            break;
        case 's':
            if (cm_synth_num("--seed", optarg, 0, UINT64_MAX, &v)) return 2;
            c.seed = v;
            break;
        case 'd':
            if (cm_synth_num("--rank", optarg, 1, 64, &v)) return 2;
            c.rank = (uint32_t) v;
            break;
        case 'k':
            if (cm_synth_num("--drift-batches", optarg, 0, 1000, &v)) {
                return 2;
            }
            c.drift_batches = (uint32_t) v;
            break;
        case 'b':
            if (cm_synth_num("--batch-ratings", optarg, 1, 100000000, &v)) {
                return 2;
            }
            c.batch_ratings = (uint32_t) v;
            break;
        case 'n':
            c.noise = strtod(optarg, &end);
            if (*end != '\0' || !(c.noise > 0 && c.noise < 5)) {
                fprintf(stderr, "cinematch synth: --noise wants a number in"
                        " (0, 5), got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'h':
            cm_synth_usage(stdout);
            return 0;
        default:
            fprintf(stderr, "cinematch synth: unknown or incomplete option"
                    " '%s'\n", argv[optind - 1]);
            cm_synth_usage(stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "cinematch synth: unexpected argument '%s'\n",
                argv[optind]);
        return 2;
    }
    if (out == NULL) {
        fprintf(stderr, "cinematch synth: --out DIR is required\n");
        cm_synth_usage(stderr);
        return 2;
    }

    t0 = cm_now_mono_ns();
    rc = cm_synth_write_dir(&c, out, &n, err, sizeof(err));
    if (rc != CM_OK) {
        fprintf(stderr, "cinematch synth: %s\n", err);
        return 1;
    }
    printf("synth: %llu ratings, %u users, %u films (+%u batch-only) in %s"
           " (%.1f s, seed %llu)\n", (unsigned long long) n, c.n_users,
           c.n_items, c.drift_batches ? c.n_items / 20 + 1 : 0, out,
           (double) (cm_now_mono_ns() - t0) / 1e9,
           (unsigned long long) c.seed);
    if (c.drift_batches) {
        printf("synth: %u weekly batches in %s/batches\n", c.drift_batches,
               out);
    }
    return 0;
}

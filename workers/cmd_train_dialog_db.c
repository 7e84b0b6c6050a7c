/*
 * cmd_train_dialog_db.c: `cinematch train dialog --from-db`, the dialog
 * model's turn of the MLOps loop (reached through cmd_dialog.c's
 * `train dialog`).  The same shape as `train recsys --from-db`:
 *
 *   1. one trainer per model at a time (session advisory lock); runs left
 *      'running' by a trainer that died are marked failed first;
 *   2. --if-new-data: nothing to do unless a dialogue batch completed after
 *      the one the last successful run trained on;
 *   3. a training_runs row (params, host, code version);
 *   4. data: the ingested dialogues (sql/006 dialogs, dialog_turns) of the
 *      complete batches, split as `ingest dialogs` recorded it (by film):
 *      'train' trains, 'validation' validates, 'test' is left alone.  The
 *      gate's validation set is the validation dialogues in id order up to
 *      --val-bytes of text, so it stays the same set while batches arrive;
 *   5. train (the file trainer, cm_train_dialog_file(), on the exported
 *      split: train.txt trains, val.txt validates), with progress in the
 *      run row's metrics.progress (GET /ready shows it);
 *   6. gate: candidate and production are both evaluated now on that same
 *      validation text, each with its own tokenizer, so the comparison is
 *      in bits per byte (per token would favour the coarser tokenizer);
 *      passes when there is no production model, or the candidate's bpb is
 *      at least --gate-loss % below production's;
 *   7. register (model store var/lib/cinematch/models/dialog/<version>/:
 *      model.bin, tokenizer/, training.json, meta.json, SHA256SUMS; the
 *      registry row points at the directory, its sha256 is model.bin's,
 *      which `cinematch infer` checks at load), stage staging;
 *   8. promote when the gate passed (archive, production, NOTIFY in one
 *      transaction: the daemons reload).
 * A failure, or SIGTERM/SIGINT, before 7 marks the run failed with the
 * reason and leaves the registry's production version untouched; a
 * SIGKILL leaves the row 'running' until the next trainer (step 1).
 *
 * Exit status: 0 trained (promoted or not) or nothing to do, 1 failed,
 * 2 bad usage, 128+N stopped by signal N.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
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
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "cinematch/common.h"
#include "cinematch/bpe.h"
#include "cinematch/cornell.h"
#include "cinematch/dialog.h"
#include "cinematch/gpt.h"
#include "cinematch/gpt_cuda.h"
#include "mlops.h"


#define CM_TDD_ME  "cinematch train dialog"

typedef struct {
    const char  *dsn;
    const char  *model;
    const char  *config;
    int          steps;
    int          batch;             /* 0: the trainer's default */
    int          seq;
    int          val_every;
    double       minutes;           /* 0: off */
    double       lr;                /* 0: the trainer's default */
    double       gate_loss;         /* % relative bpb improvement needed */
    long         val_bytes;
    uint64_t     seed;
    int          if_new_data;
    int          promote;
    const char  *device;            /* --device, passed on; NULL: cpu */
} cm_tdd_cli_t;

/* What the export wrote: sizes for the run row, the validation set's
 * identity for the gate. */
typedef struct {
    size_t   train_dialogs, val_dialogs, train_turns, val_turns;
    size_t   train_bytes, val_bytes;
    int64_t  max_batch_id;
    char     val_sha256[65];
} cm_tdd_data_t;

typedef struct {
    double  loss;           /* nats per token, own tokenizer */
    double  bpb;            /* bits per byte of the validation text */
    size_t  tokens, bytes;
} cm_tdd_eval_t;

/* SIGTERM/SIGINT while training: the run is marked 'failed'
 * (cm_run_watch_t in mlops.h). */

/* Progress into the run row: the trainer's callback has no context
 * argument, and there is one run per process. */
typedef struct {
    PGconn    *c;
    char       run_id[24];
    uint64_t   last_ns;
} cm_tdd_progress_t;


static void cm_tdd_usage(FILE *f);
static int cm_tdd_num(const char *flag, const char *s, double lo, double hi,
    double *out);
static int cm_tdd_once(const cm_tdd_cli_t *cli, cm_run_watch_t *w);
static int cm_tdd_export(PGconn *c, const char *dir, long val_cap,
    int64_t max_batch, cm_tdd_data_t *d, char *err, size_t errlen);
static int cm_tdd_eval_dir(const char *dir, const char *val_path,
    cm_tdd_eval_t *ev, char *err, size_t errlen);
static int cm_tdd_register(PGconn *c, const char *name, const char *src,
    const char *metrics_json, const char *run_id, int *version, char *err,
    size_t errlen);
static int cm_tdd_copy(const char *from, const char *to, char *err,
    size_t errlen);
static int cm_tdd_rm_one(const char *path, const struct stat *st, int flag,
    struct FTW *ftw);
static void cm_tdd_rmtree(const char *dir);
static void cm_tdd_sweep(const char *root, const char *model);
static int cm_tdd_fail(PGconn *c, const char *run_id, uint64_t t0,
    const char *why);
static void cm_tdd_on_progress(int step, int steps, double loss,
    double val_loss, double secs);


cm_train_progress_pt  cm_train_dialog_progress;

static cm_tdd_progress_t  cm_tdd_prog;


static void
cm_tdd_usage(FILE *f)
{
    fprintf(f,
        "usage: cinematch train dialog --from-db [--if-new-data]"
        " [--no-promote]\n"
        "                              [--config NAME] [--steps N]"
        " [--minutes M]\n"
        "                              [--batch B] [--seq T] [--lr X]"
        " [--seed S]\n"
        "                              [--val-every N] [--val-bytes N]"
        " [--gate-loss PCT]\n"
        "                              [--model NAME] [--dsn DSN]"
        " [--device cpu|cuda|auto]\n\n"
        "Trains the dialog GPT on the ingested dialogues (`cinematch ingest"
        " dialogs`):\ndata_split 'train' trains, 'validation' validates (split"
        " by film at ingest).\nRecords a training_runs row, registers the"
        " version in the model store\n"
        "($CINEMATCH_MODEL_STORE/dialog/<version>/,"
        " stage staging) and promotes it when\nthe gate passes: no production"
        " model yet, or validation bits per byte at\nleast PCT %% below"
        " production's, both measured now on the same validation text.\n\n"
        "  --if-new-data      only when a dialogue batch arrived since the last"
        " successful\n"
        "                     run (the timer form); otherwise nothing to do\n"
        "  --no-promote       register in staging only, whatever the gate"
        " says\n"
        "  --promote-if-better  the default (as `train recsys --from-db`"
        " spells it)\n"
        "  --gate-loss PCT    relative improvement needed (default 1)\n"
        "  --val-bytes N      validation text the gate compares on, whole"
        " dialogues in\n"
        "                     id order (default 262144)\n"
        "  --config NAME      dialog-tiny | dialog-small | gpt2-124M"
        " (dialog-tiny)\n"
        "  --steps N          optimizer steps (300); --minutes M also stops"
        " after M\n"
        "                     minutes of training\n"
        "  --model NAME       registry name (dialog)\n"
        "Other options as `cinematch train dialog` (see its --help).\n");
}


static int
cm_tdd_num(const char *flag, const char *s, double lo, double hi,
    double *out)
{
    return cm_cli_num(CM_TDD_ME, flag, s, lo, hi, out);
}


int
cm_train_dialog_db_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "from-db", no_argument, NULL, 'F' },
        { "dsn", required_argument, NULL, 'd' },
        { "model", required_argument, NULL, 'N' },
        { "if-new-data", no_argument, NULL, 'I' },
        { "no-promote", no_argument, NULL, 'P' },
        { "promote-if-better", no_argument, NULL, 'p' },
        { "gate-loss", required_argument, NULL, 'g' },
        { "val-bytes", required_argument, NULL, 'V' },
        { "config", required_argument, NULL, 'C' },
        { "steps", required_argument, NULL, 'n' },
        { "minutes", required_argument, NULL, 'M' },
        { "batch", required_argument, NULL, 'B' },
        { "seq", required_argument, NULL, 'T' },
        { "lr", required_argument, NULL, 'l' },
        { "seed", required_argument, NULL, 's' },
        { "val-every", required_argument, NULL, 'v' },
        { "device", required_argument, NULL, 'D' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    cm_tdd_cli_t     cli;
    cm_run_watch_t   w;
    cm_gpt_config_t  cfg;
    double           v;
    int              ch, rc, sig;

    memset(&cli, 0, sizeof(cli));
    cli.model = "dialog";
    cli.config = "dialog-tiny";
    cli.steps = 300;
    cli.val_every = 100;
    cli.gate_loss = 1.0;
    cli.val_bytes = 262144;
    cli.seed = 1;
    cli.promote = 1;
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'F':               /* the form itself */
        case 'p':               /* the default: promote when better */
            break;
        case 'd': cli.dsn = optarg; break;
        case 'N': cli.model = optarg; break;
        case 'I': cli.if_new_data = 1; break;
        case 'P': cli.promote = 0; break;
        case 'C': cli.config = optarg; break;
        case 'D': cli.device = optarg; break;
        case 'g':
            if (cm_tdd_num("--gate-loss", optarg, -1000, 100, &cli.gate_loss))
            {
                return 2;
            }
            break;
        case 'V':
            if (cm_tdd_num("--val-bytes", optarg, 1024, 1e10, &v)) return 2;
            cli.val_bytes = (long) v;
            break;
        case 'n':
            if (cm_tdd_num("--steps", optarg, 1, 1e8, &v)) return 2;
            cli.steps = (int) v;
            break;
        case 'M':
            if (cm_tdd_num("--minutes", optarg, 0, 1e6, &cli.minutes)) {
                return 2;
            }
            break;
        case 'B':
            if (cm_tdd_num("--batch", optarg, 1, 4096, &v)) return 2;
            cli.batch = (int) v;
            break;
        case 'T':
            if (cm_tdd_num("--seq", optarg, 1, 65536, &v)) return 2;
            cli.seq = (int) v;
            break;
        case 'l':
            if (cm_tdd_num("--lr", optarg, 1e-9, 10, &cli.lr)) return 2;
            break;
        case 's':
            if (cm_tdd_num("--seed", optarg, 0, 1e18, &v)) return 2;
            cli.seed = (uint64_t) v;
            break;
        case 'v':
            if (cm_tdd_num("--val-every", optarg, 0, 1e8, &v)) return 2;
            cli.val_every = (int) v;
            break;
        case 'h':
            cm_tdd_usage(stdout);
            return 0;
        default:
            fprintf(stderr, CM_TDD_ME ": unknown or incomplete option '%s'"
                    " with --from-db (see --from-db --help)\n",
                    argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, CM_TDD_ME ": unexpected argument '%s'\n",
                argv[optind]);
        return 2;
    }
    /* --device is the trainer's; a wrong value or cuda without a GPU
     * stops here, before a run row is written */
    if (cli.device != NULL) {
        char err[256] = "";

        if (strcmp(cli.device, "cpu") != 0 && strcmp(cli.device, "cuda") != 0
            && strcmp(cli.device, "auto") != 0)
        {
            fprintf(stderr, CM_TDD_ME ": --device wants cpu, cuda or auto,"
                    " got '%s'\n", cli.device);
            return 2;
        }
        if (strcmp(cli.device, "cuda") == 0
            && cm_cuda_device_count(err, sizeof(err)) < 1)
        {
            fprintf(stderr, CM_TDD_ME ": --device cuda: no usable GPU (%s)\n",
                    err);
            return 2;
        }
    }
    /* the daemon serves GPT checkpoints only */
    if (cm_gpt_config_named(cli.config, 0, &cfg) != CM_OK) {
        fprintf(stderr, CM_TDD_ME ": --config wants dialog-tiny,"
                " dialog-small or gpt2-124M with --from-db, got '%s'\n",
                cli.config);
        return 2;
    }
    if (cm_run_watch_start(&w, cli.dsn, CM_TDD_ME, "failed", "killed") != 0)
    {
        fprintf(stderr, CM_TDD_ME ": cannot start the signal watcher\n");
        return 1;
    }
    rc = cm_tdd_once(&cli, &w);
    sig = cm_run_watch_stop(&w);
    if (sig != 0) {
        fprintf(stderr, CM_TDD_ME ": stopped by signal %d after the run"
                " finished\n", sig);
        return 128 + sig;
    }
    return rc;
}


/* ---- progress ---------------------------------------------------------- */

/* At most one row update per 2 s, and every evaluation: cheap next to a
 * training step, and enough for /ready and `cinematch model list`. */
static void
cm_tdd_on_progress(int step, int steps, double loss, double val_loss,
    double secs)
{
    char         doc[256];
    const char  *v[2];
    uint64_t     now = cm_now_mono_ns();

    if (cm_tdd_prog.c == NULL
        || (val_loss < 0 && step != steps
            && now - cm_tdd_prog.last_ns < 2000000000ull))
    {
        return;
    }
    cm_tdd_prog.last_ns = now;
    if (val_loss >= 0) {
        snprintf(doc, sizeof(doc), "{\"progress\": {\"step\": %d, \"steps\":"
                 " %d, \"loss\": %.5f, \"val_loss\": %.5f, \"seconds\":"
                 " %.1f}}", step, steps, isfinite(loss) ? loss : -1.0,
                 val_loss, secs);
    } else {
        snprintf(doc, sizeof(doc), "{\"progress\": {\"step\": %d, \"steps\":"
                 " %d, \"loss\": %.5f, \"seconds\": %.1f}}", step, steps,
                 isfinite(loss) ? loss : -1.0, secs);
    }
    v[0] = cm_tdd_prog.run_id;
    v[1] = doc;
    /* keeps the last val_loss when this update has none */
    PQclear(PQexecParams(cm_tdd_prog.c, "UPDATE training_runs SET metrics ="
                         " metrics || jsonb_build_object('progress',"
                         " coalesce(metrics->'progress', '{}') ||"
                         " ($2::jsonb->'progress')) WHERE id = $1", 2, NULL,
                         v, NULL, NULL, 0));
}


/* ---- data -------------------------------------------------------------- */

/*
 * The dialogues of complete batches up to max_batch into dir/train.txt and
 * dir/val.txt in the plain corpus form (cornell.h: one turn per line, a
 * blank line between dialogues), which the trainer and the evaluation read
 * back as the same conversations.  Ingested text is cleaned already
 * (cm_text_clean: no control characters); a row written by other means is
 * made to fit: line breaks become spaces, empty turns are skipped.
 */
static int
cm_tdd_export(PGconn *c, const char *dir, long val_cap, int64_t max_batch,
    cm_tdd_data_t *d, char *err, size_t errlen)
{
    char          path[PATH_MAX + 32], mb[24], *t, *p;
    const char   *v[1];
    PGresult     *r;
    FILE         *ft = NULL, *fv = NULL, *f;
    int           i, n, val, skip = 0, rc = CM_OK;
    int64_t       cur = -1, id;
    size_t        len;

    memset(d, 0, sizeof(*d));
    snprintf(mb, sizeof(mb), "%lld", (long long) max_batch);
    v[0] = mb;
    r = cm_pg_query(c, "SELECT d.id, d.data_split = 'validation', t.text FROM"
                    " dialogs d JOIN ingestion_batches b ON b.id = d.batch_id"
                    " AND b.status = 'complete' AND b.id <= $1 JOIN"
                    " dialog_turns t ON t.dialog_id = d.id WHERE d.data_split"
                    " IN ('train', 'validation') ORDER BY d.id, t.turn", 1, v,
                    err, errlen);
    if (r == NULL) {
        return CM_EIO;
    }
    snprintf(path, sizeof(path), "%.4000s/train.txt", dir);
    ft = fopen(path, "w");
    snprintf(path, sizeof(path), "%.4000s/val.txt", dir);
    fv = fopen(path, "w");
    if (ft == NULL || fv == NULL) {
        rc = cm_seterr(err, errlen, CM_EIO, "%s: %s", path, strerror(errno));
        goto done;
    }
    n = PQntuples(r);
    f = NULL;
    val = 0;
    for (i = 0; i < n; i++) {
        id = strtoll(PQgetvalue(r, i, 0), NULL, 10);
        if (id != cur) {
            /* a new dialogue: close the last one, pick its side */
            if (f != NULL) {
                fputc('\n', f);
            }
            cur = id;
            val = PQgetvalue(r, i, 1)[0] == 't';
            skip = val && (long) d->val_bytes >= val_cap;
            f = skip ? NULL : (val ? fv : ft);
            if (f != NULL) {
                if (val) {
                    d->val_dialogs++;
                } else {
                    d->train_dialogs++;
                }
            }
        }
        if (f == NULL) {
            continue;
        }
        t = PQgetvalue(r, i, 2);
        for (p = t; *p != '\0'; p++) {
            if (*p == '\n' || *p == '\r') {
                *p = ' ';
            }
        }
        len = strlen(t);
        if (len == 0 || strspn(t, " \t") == len) {
            continue;
        }
        if (fwrite(t, 1, len, f) != len || fputc('\n', f) == EOF) {
            rc = cm_seterr(err, errlen, CM_EIO, "writing the corpus: %s",
                           strerror(errno));
            goto done;
        }
        if (val) {
            d->val_turns++;
            d->val_bytes += len + 1;
        } else {
            d->train_turns++;
            d->train_bytes += len + 1;
        }
    }
    if (f != NULL) {
        fputc('\n', f);
    }
    d->max_batch_id = max_batch;

done:
    if (ft != NULL && fclose(ft) != 0 && rc == CM_OK) {
        rc = cm_seterr(err, errlen, CM_EIO, "train.txt: %s", strerror(errno));
    }
    if (fv != NULL && fclose(fv) != 0 && rc == CM_OK) {
        rc = cm_seterr(err, errlen, CM_EIO, "val.txt: %s", strerror(errno));
    }
    PQclear(r);
    if (rc == CM_OK) {
        /* the validation set's identity: what the gate compared on */
        snprintf(path, sizeof(path), "%.4000s/val.txt", dir);
        rc = cm_sha256_file(path, d->val_sha256, NULL, err, errlen);
    }
    return rc;
}


/*
 * A model directory (model.bin + tokenizer/) on the validation text: the
 * text rendered with the model's own tokenizer, every full (4, maxT)
 * window, then the remainder as (1, maxT) windows, so at most maxT - 1
 * tokens at the very end go unscored; bpb divides by the bytes scored.
 */
static int
cm_tdd_eval_dir(const char *dir, const char *val_path, cm_tdd_eval_t *ev,
    char *err, size_t errlen)
{
    char               path[PATH_MAX + 32];
    cm_gpt_t           m;
    cm_bpe_t          *b = NULL;
    cm_corpus_t        vc;
    cm_dialog_data_t   vd;
    cm_dialog_eval_t   e1, e2;
    size_t             used;
    int                rc, T;

    memset(ev, 0, sizeof(*ev));
    memset(&vd, 0, sizeof(vd));
    snprintf(path, sizeof(path), "%.4000s/model.bin", dir);
    rc = cm_gpt_load(&m, path, err, errlen);
    if (rc != CM_OK) {
        return rc;
    }
    snprintf(path, sizeof(path), "%.4000s/tokenizer", dir);
    rc = cm_bpe_load(&b, path, err, errlen);
    if (rc != CM_OK) {
        cm_gpt_free(&m);
        return rc;
    }
    cm_corpus_init(&vc);
    rc = cm_corpus_load(&vc, val_path, err, errlen);
    if (rc == CM_OK) {
        rc = cm_dialog_render(&vc, b, 0.0, 1, &vd);
        if (rc != CM_OK) {
            cm_seterr(err, errlen, rc, "rendering the validation text");
        }
    }
    cm_corpus_free(&vc);
    if (rc != CM_OK) {
        goto done;
    }
    T = m.config.max_seq_len;
    if (vd.train.n >= 2 && vd.train.n <= (size_t) T) {
        T = (int) vd.train.n - 1;   /* a small corpus: one shorter window */
    }
    rc = cm_dialog_eval(&m, b, vd.train.ids, vd.train.n, 4, T, 0, &e1);
    if (rc == CM_OK) {
        used = e1.tokens;
        rc = cm_dialog_eval(&m, b, vd.train.ids + used, vd.train.n - used, 1,
                            T, 0, &e2);
    }
    if (rc != CM_OK) {
        cm_seterr(err, errlen, rc, "evaluation failed");
        goto done;
    }
    ev->tokens = e1.tokens + e2.tokens;
    ev->bytes = e1.bytes + e2.bytes;
    if (ev->tokens == 0 || ev->bytes == 0) {
        rc = cm_seterr(err, errlen, CM_EINVAL, "validation text shorter than"
                       " one context (%d tokens)", T);
        goto done;
    }
    ev->loss = (e1.loss * (double) e1.tokens + e2.loss * (double) e2.tokens)
               / (double) ev->tokens;
    ev->bpb = (e1.bpb * (double) e1.bytes + e2.bpb * (double) e2.bytes)
              / (double) ev->bytes;

done:
    cm_dialog_data_free(&vd);
    cm_bpe_free(b);
    cm_gpt_free(&m);
    return rc;
}


/* ---- the model store ---------------------------------------------------- */

static int
cm_tdd_copy(const char *from, const char *to, char *err, size_t errlen)
{
    char     buf[1 << 16];
    int      in, out, rc = CM_OK;
    ssize_t  n;

    in = open(from, O_RDONLY | O_CLOEXEC);
    if (in < 0) {
        return cm_seterr(err, errlen, CM_EIO, "%s: %s", from,
                         strerror(errno));
    }
    out = open(to, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (out < 0) {
        close(in);
        return cm_seterr(err, errlen, CM_EIO, "%s: %s", to, strerror(errno));
    }
    while ((n = read(in, buf, sizeof(buf))) > 0) {
        if (write(out, buf, (size_t) n) != n) {
            rc = cm_seterr(err, errlen, CM_EIO, "%s: %s", to,
                           strerror(errno));
            break;
        }
    }
    if (n < 0 && rc == CM_OK) {
        rc = cm_seterr(err, errlen, CM_EIO, "%s: %s", from, strerror(errno));
    }
    if (rc == CM_OK && fsync(out) != 0) {
        rc = cm_seterr(err, errlen, CM_EIO, "%s: %s", to, strerror(errno));
    }
    close(in);
    if (close(out) != 0 && rc == CM_OK) {
        rc = cm_seterr(err, errlen, CM_EIO, "%s: %s", to, strerror(errno));
    }
    return rc;
}


static int
cm_tdd_rm_one(const char *path, const struct stat *st, int flag,
    struct FTW *ftw)
{
    (void) st;
    (void) ftw;
    if (flag == FTW_DP) {
        rmdir(path);
    } else {
        unlink(path);
    }
    return 0;
}


/* rm -r of a directory this command made (never follows links) */
static void
cm_tdd_rmtree(const char *dir)
{
    nftw(dir, cm_tdd_rm_one, 16, FTW_DEPTH | FTW_PHYS);
}


/* The work directories of this model's runs that were killed (we hold
 * the model's training lock: none of them is in use). */
static void
cm_tdd_sweep(const char *root, const char *model)
{
    char            dir[PATH_MAX + 16], path[PATH_MAX + 300];
    size_t          n = strlen(model);
    DIR            *d;
    struct dirent  *e;

    snprintf(dir, sizeof(dir), "%.4000s/.tmp", root);
    d = opendir(dir);
    if (d == NULL) {
        return;
    }
    while ((e = readdir(d)) != NULL) {
        if (strncmp(e->d_name, model, n) == 0
            && strncmp(e->d_name + n, "-run", 4) == 0)
        {
            snprintf(path, sizeof(path), "%.4000s/%.255s", dir, e->d_name);
            cm_tdd_rmtree(path);
        }
    }
    closedir(d);
}


/*
 * The version directory: model.bin, tokenizer/{vocab.json,merges.txt},
 * training.json (the trainer's metrics), meta.json and SHA256SUMS over all
 * of them; then the model_versions row (stage staging) naming the
 * directory with model.bin's sha256.  The version number and the directory
 * are taken under the registry's advisory lock, so a concurrent
 * `model register` cannot take the same number.
 */
static int
cm_tdd_register(PGconn *c, const char *name, const char *src,
    const char *metrics_json, const char *run_id, int *version, char *err,
    size_t errlen)
{
    static const char *const files[] = {
        "model.bin", "tokenizer/vocab.json", "tokenizer/merges.txt",
        "metrics.json"
    };
    char          root[PATH_MAX], dir[PATH_MAX + 64], from[PATH_MAX + 64];
    char          to[PATH_MAX + 128], ver[16], bytes_s[24], sha[65];
    char          one[65], sums[1024], *meta;
    const char   *v[8];
    uint64_t      bytes, total = 0;
    size_t        i, ns = 0;
    json_t       *m, *mj;
    json_error_t  je;
    PGresult     *r;
    int           rc, made = 0;

    rc = cm_pg_exec(c, "BEGIN", err, errlen);
    if (rc != CM_OK) {
        return rc;
    }
    v[0] = name;
    r = cm_pg_query(c, "SELECT pg_advisory_xact_lock(hashtext('cinematch"
                    ".registry.' || $1))", 1, v, err, errlen);
    if (r == NULL) {
        goto failed;
    }
    PQclear(r);
    r = cm_pg_query(c, "SELECT coalesce(max(version), 0) + 1 FROM"
                    " model_versions WHERE model_name = $1", 1, v, err,
                    errlen);
    if (r == NULL) {
        goto failed;
    }
    *version = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);

    cm_model_store_root(root, sizeof(root));
    snprintf(dir, sizeof(dir), "%.4000s/%s/%d", root, name, *version);
    /* a directory left by a registration whose transaction failed */
    cm_tdd_rmtree(dir);
    snprintf(to, sizeof(to), "%.4000s/tokenizer", dir);
    if (cm_mkdir_p(to, err, errlen) != CM_OK) {
        goto failed;
    }
    made = 1;
    sha[0] = '\0';
    for (i = 0; i < CM_ARRAY_SIZE(files); i++) {
        snprintf(from, sizeof(from), "%.4000s/%s", src, files[i]);
        snprintf(to, sizeof(to), "%.4000s/%s", dir, strcmp(files[i],
                 "metrics.json") == 0 ? "training.json" : files[i]);
        if (cm_tdd_copy(from, to, err, errlen) != CM_OK
            || cm_sha256_file(to, one, &bytes, err, errlen) != CM_OK)
        {
            goto failed;
        }
        total += bytes;
        if (i == 0) {
            memcpy(sha, one, sizeof(sha));
        }
        ns += (size_t) snprintf(sums + ns, sizeof(sums) - ns, "%s  %s\n", one,
                                strcmp(files[i], "metrics.json") == 0
                                ? "training.json" : files[i]);
    }
    mj = json_loads(metrics_json, 0, &je);
    m = json_pack("{s:s, s:i, s:s, s:s, s:s, s:I, s:I, s:o*, s:s, s:I}",
                  "name", name, "version", *version, "task", "dialog",
                  "artifact", "model.bin", "sha256", sha, "bytes",
                  (json_int_t) total, "created", (json_int_t) time(NULL),
                  "metrics", mj, "code_version", CM_VERSION,
                  "training_run_id", (json_int_t) atoll(run_id));
    meta = m != NULL ? json_dumps(m, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(m);
    if (meta == NULL) {
        cm_seterr(err, errlen, CM_ENOMEM, "meta.json: out of memory");
        goto failed;
    }
    snprintf(to, sizeof(to), "%.4000s/meta.json", dir);
    {
        FILE *f = fopen(to, "w");

        if (f == NULL || fputs(meta, f) == EOF || fclose(f) != 0) {
            free(meta);
            cm_seterr(err, errlen, CM_EIO, "%s: %s", to, strerror(errno));
            goto failed;
        }
    }
    free(meta);
    snprintf(to, sizeof(to), "%.4000s/SHA256SUMS", dir);
    {
        FILE *f = fopen(to, "w");

        if (f == NULL || fputs(sums, f) == EOF || fclose(f) != 0) {
            cm_seterr(err, errlen, CM_EIO, "%s: %s", to, strerror(errno));
            goto failed;
        }
    }

    r = cm_pg_query(c, "INSERT INTO models (name, task) VALUES ($1, 'dialog')"
                    " ON CONFLICT (name) DO NOTHING", 1, v, err, errlen);
    if (r == NULL) {
        goto failed;
    }
    PQclear(r);
    snprintf(ver, sizeof(ver), "%d", *version);
    snprintf(bytes_s, sizeof(bytes_s), "%llu", (unsigned long long) total);
    v[1] = ver;
    v[2] = dir;
    v[3] = sha;
    v[4] = bytes_s;
    v[5] = metrics_json;
    v[6] = run_id;
    r = cm_pg_query(c, "INSERT INTO model_versions (model_name, version,"
                    " stage, artifact_path, artifact_sha256, artifact_bytes,"
                    " metrics, training_run_id) SELECT name, $2::int,"
                    " 'staging', $3, $4, $5::bigint, $6::jsonb, $7::bigint"
                    " FROM models WHERE name = $1 AND task = 'dialog'", 7, v,
                    err, errlen);
    if (r == NULL) {
        goto failed;
    }
    if (strcmp(PQcmdTuples(r), "1") != 0) {
        PQclear(r);
        cm_seterr(err, errlen, CM_ECONFLICT, "model %s exists with another"
                  " task than dialog", name);
        goto failed;
    }
    PQclear(r);
    if (cm_pg_exec(c, "COMMIT", err, errlen) != CM_OK) {
        goto failed;
    }
    return CM_OK;

failed:
    if (PQtransactionStatus(c) != PQTRANS_IDLE) {
        PQclear(PQexec(c, "ROLLBACK"));
    }
    if (made) {
        cm_tdd_rmtree(dir);
    }
    return CM_ERR;
}


/* ---- one run ------------------------------------------------------------ */

static int
cm_tdd_fail(PGconn *c, const char *run_id, uint64_t t0, const char *why)
{
    char         ms[24];
    const char  *v[3];

    if (PQtransactionStatus(c) != PQTRANS_IDLE) {
        PQclear(PQexec(c, "ROLLBACK"));
    }
    snprintf(ms, sizeof(ms), "%llu",
             (unsigned long long) ((cm_now_mono_ns() - t0) / 1000000));
    v[0] = run_id;
    v[1] = why;
    v[2] = ms;
    PQclear(PQexecParams(c, "UPDATE training_runs SET status = 'failed',"
                         " error = left($2, 2000), duration_ms = $3,"
                         " finished_at = now() WHERE id = $1", 3, NULL, v,
                         NULL, NULL, 0));
    fprintf(stderr, CM_TDD_ME ": run %s failed: %s\n", run_id, why);
    return 1;
}


static int
cm_tdd_once(const cm_tdd_cli_t *cli, cm_run_watch_t *w)
{
    char            err[1024], run_id[24], host[256], root[PATH_MAX];
    char            work[PATH_MAX + 64], out[PATH_MAX + 80];
    char            valp[PATH_MAX + 80], trainp[PATH_MAX + 80], why[700];
    char            a_steps[24], a_seed[24], a_min[32], a_batch[24];
    char            a_seq[24], a_lr[32], a_ve[24], ms[24], n1[24], n2[24];
    char            n3[24], *params_s = NULL, *metrics_s = NULL;
    char           *targv[32];
    const char     *v[8];
    PGconn         *c;
    PGresult       *r;
    cm_tdd_data_t   data;
    cm_tdd_eval_t   ce, pe;
    json_t         *params = NULL, *metrics = NULL, *pj, *tj;
    json_error_t    je;
    double          p_bpb = NAN, p_loss = NAN;
    uint64_t        t0 = cm_now_mono_ns();
    int64_t         newest, last = -1;
    int             rc = 1, targc = 0, version = 0, prod_version = 0;
    int             pass, have_prod = 0, have_work = 0;

    c = cm_pg_connect(cli->dsn, "cinematch-train", err, sizeof(err));
    if (c == NULL) {
        fprintf(stderr, CM_TDD_ME ": %s\n", err);
        return 1;
    }

    /* 1. one trainer per model (the key `train recsys` uses, by name) */
    v[0] = cli->model;
    r = cm_pg_query(c, "SELECT pg_try_advisory_lock(hashtext('cinematch"
                    ".train.' || $1))", 1, v, err, sizeof(err));
    if (r == NULL || PQgetvalue(r, 0, 0)[0] != 't') {
        PQclear(r);
        fprintf(stderr, CM_TDD_ME ": %s\n", r == NULL ? err
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
    cm_model_store_root(root, sizeof(root));
    cm_tdd_sweep(root, cli->model);

    /* 2. what there is to train on */
    r = cm_pg_query(c, "SELECT max(id) FROM ingestion_batches WHERE kind ="
                    " 'dialogs' AND status = 'complete'", 0, NULL, err,
                    sizeof(err));
    if (r == NULL) {
        fprintf(stderr, CM_TDD_ME ": %s\n", err);
        goto done;
    }
    newest = PQgetisnull(r, 0, 0) ? -1 : strtoll(PQgetvalue(r, 0, 0), NULL,
                                                 10);
    PQclear(r);
    r = cm_pg_query(c, "SELECT (params->>'max_batch_id')::bigint FROM"
                    " training_runs WHERE model_name = $1 AND status ="
                    " 'succeeded' AND params ? 'max_batch_id' ORDER BY id"
                    " DESC LIMIT 1", 1, v, err, sizeof(err));
    if (r == NULL) {
        fprintf(stderr, CM_TDD_ME ": %s\n", err);
        goto done;
    }
    if (PQntuples(r) > 0 && !PQgetisnull(r, 0, 0)) {
        last = strtoll(PQgetvalue(r, 0, 0), NULL, 10);
    }
    PQclear(r);
    if (cli->if_new_data && (newest < 0 || newest <= last)) {
        printf("train: %s; nothing to do\n", newest < 0
               ? "no dialogues ingested (cinematch ingest dialogs --data DIR)"
               : "no dialogue batch arrived since the last successful run");
        rc = 0;
        goto done;
    }

    /* 3. the run row */
    gethostname(host, sizeof(host));
    host[sizeof(host) - 1] = '\0';
    params = json_pack("{s:s, s:i, s:f, s:i, s:i, s:f, s:I, s:i, s:f, s:I,"
                       " s:I}", "config", cli->config, "steps", cli->steps,
                       "minutes", cli->minutes, "batch", cli->batch, "seq",
                       cli->seq, "lr", cli->lr, "seed",
                       (json_int_t) cli->seed, "val_every", cli->val_every,
                       "gate_loss_pct", cli->gate_loss, "val_bytes",
                       (json_int_t) cli->val_bytes, "max_batch_id",
                       (json_int_t) newest);
    params_s = json_dumps(params, JSON_COMPACT | JSON_SORT_KEYS);
    v[1] = params_s != NULL ? params_s : "{}";
    v[2] = CM_VERSION;
    v[3] = host;
    v[4] = cli->if_new_data ? "schedule" : "manual";
    r = cm_pg_query(c, "INSERT INTO training_runs (model_name, triggered_by,"
                    " status, params, code_version, host) VALUES ($1, $5,"
                    " 'running', $2::jsonb, $3, $4) RETURNING id", 5, v, err,
                    sizeof(err));
    if (r == NULL) {
        fprintf(stderr, CM_TDD_ME ": %s\n", err);
        goto done;
    }
    snprintf(run_id, sizeof(run_id), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    cm_run_watch_set_run(w, run_id);
    printf("run %s: training %s (%s) from the database\n", run_id,
           cli->model, cli->config);
    fflush(stdout);
    if (newest < 0) {
        rc = cm_tdd_fail(c, run_id, t0, "no dialogues ingested (run"
                         " cinematch ingest dialogs --data DIR first)");
        goto done;
    }

    /* 4. the split, exported where the store keeps its temporaries */
    if ((size_t) snprintf(work, sizeof(work), "%.4000s/.tmp/%s-run%s", root,
                          cli->model, run_id) >= sizeof(work))
    {
        rc = cm_tdd_fail(c, run_id, t0, "model store path too long");
        goto done;
    }
    snprintf(out, sizeof(out), "%.4000s/model", work);
    if (cm_mkdir_p(out, err, sizeof(err)) != CM_OK) {
        rc = cm_tdd_fail(c, run_id, t0, err);
        goto done;
    }
    have_work = 1;
    if (cm_tdd_export(c, work, cli->val_bytes, newest, &data, err,
                      sizeof(err)) != CM_OK)
    {
        rc = cm_tdd_fail(c, run_id, t0, err);
        goto done;
    }
    if (data.train_dialogs == 0 || data.val_dialogs == 0) {
        snprintf(why, sizeof(why), "%zu training and %zu validation"
                 " dialogues: both are needed (ingest with --val-frac > 0)",
                 data.train_dialogs, data.val_dialogs);
        rc = cm_tdd_fail(c, run_id, t0, why);
        goto done;
    }
    printf("run %s: %zu training dialogues (%zu turns), %zu validation"
           " dialogues (%zu bytes, sha256 %.12s)\n", run_id,
           data.train_dialogs, data.train_turns, data.val_dialogs,
           data.val_bytes, data.val_sha256);
    fflush(stdout);

    /* 5. train */
    snprintf(trainp, sizeof(trainp), "%.4000s/train.txt", work);
    snprintf(valp, sizeof(valp), "%.4000s/val.txt", work);
    snprintf(a_steps, sizeof(a_steps), "%d", cli->steps);
    snprintf(a_seed, sizeof(a_seed), "%llu", (unsigned long long) cli->seed);
    snprintf(a_ve, sizeof(a_ve), "%d", cli->val_every);
    targv[targc++] = "train dialog";
    targv[targc++] = "--corpus";
    targv[targc++] = trainp;
    targv[targc++] = "--val-corpus";
    targv[targc++] = valp;
    targv[targc++] = "--out";
    targv[targc++] = out;
    targv[targc++] = "--config";
    targv[targc++] = (char *) cli->config;
    targv[targc++] = "--steps";
    targv[targc++] = a_steps;
    targv[targc++] = "--seed";
    targv[targc++] = a_seed;
    targv[targc++] = "--val-every";
    targv[targc++] = a_ve;
    /* the trainer's evaluations are progress reports: a sample is enough,
     * the gate below scores the whole validation set once */
    targv[targc++] = "--val-tokens";
    targv[targc++] = "8192";
    if (cli->minutes > 0) {
        snprintf(a_min, sizeof(a_min), "%g", cli->minutes);
        targv[targc++] = "--minutes";
        targv[targc++] = a_min;
    }
    if (cli->batch > 0) {
        snprintf(a_batch, sizeof(a_batch), "%d", cli->batch);
        targv[targc++] = "--batch";
        targv[targc++] = a_batch;
    }
    if (cli->seq > 0) {
        snprintf(a_seq, sizeof(a_seq), "%d", cli->seq);
        targv[targc++] = "--seq";
        targv[targc++] = a_seq;
    }
    if (cli->lr > 0) {
        snprintf(a_lr, sizeof(a_lr), "%g", cli->lr);
        targv[targc++] = "--lr";
        targv[targc++] = a_lr;
    }
    if (cli->device != NULL) {
        targv[targc++] = "--device";
        targv[targc++] = (char *) cli->device;
    }
    targv[targc] = NULL;
    cm_tdd_prog.c = c;
    snprintf(cm_tdd_prog.run_id, sizeof(cm_tdd_prog.run_id), "%s", run_id);
    cm_tdd_prog.last_ns = 0;
    cm_train_dialog_progress = cm_tdd_on_progress;
    rc = cm_train_dialog_file(targc, targv);
    cm_train_dialog_progress = NULL;
    cm_tdd_prog.c = NULL;
    if (rc != 0) {
        rc = cm_tdd_fail(c, run_id, t0, "training failed (the trainer's"
                         " messages are in this command's log)");
        goto done;
    }

    /* 6. the gate, on the same validation text for both */
    if (cm_tdd_eval_dir(out, valp, &ce, err, sizeof(err)) != CM_OK) {
        snprintf(why, sizeof(why), "evaluating the candidate: %.600s", err);
        rc = cm_tdd_fail(c, run_id, t0, why);
        goto done;
    }
    v[0] = cli->model;
    r = cm_pg_query(c, "SELECT version, artifact_path, metrics::text FROM"
                    " model_versions WHERE model_name = $1 AND stage ="
                    " 'production'", 1, v, err, sizeof(err));
    if (r == NULL) {
        rc = cm_tdd_fail(c, run_id, t0, err);
        goto done;
    }
    pj = json_object();
    if (PQntuples(r) > 0) {
        have_prod = 1;
        prod_version = atoi(PQgetvalue(r, 0, 0));
        json_object_set_new(pj, "version", json_integer(prod_version));
        if (cm_tdd_eval_dir(PQgetvalue(r, 0, 1), valp, &pe, err, sizeof(err))
            == CM_OK)
        {
            p_bpb = pe.bpb;
            p_loss = pe.loss;
            json_object_set_new(pj, "measured", json_string("now"));
        } else {
            /* its recorded numbers count only on the same text */
            json_t *rec = json_loads(PQgetvalue(r, 0, 2), 0, &je);
            json_t *vs = json_object_get(rec, "val_set_sha256");

            cm_warn("train dialog: production v%d cannot be evaluated: %s",
                    prod_version, err);
            if (json_is_string(vs)
                && strcmp(json_string_value(vs), data.val_sha256) == 0
                && json_is_number(json_object_get(rec, "val_bpb")))
            {
                p_bpb = json_number_value(json_object_get(rec, "val_bpb"));
                p_loss = json_number_value(json_object_get(rec, "val_loss"));
                json_object_set_new(pj, "measured", json_string("recorded"));
            }
            json_decref(rec);
        }
        json_object_set_new(pj, "val_bpb", isfinite(p_bpb)
                            ? json_real(p_bpb) : json_null());
        json_object_set_new(pj, "val_loss", isfinite(p_loss)
                            ? json_real(p_loss) : json_null());
    }
    PQclear(r);
    if (!have_prod) {
        pass = 1;
        snprintf(why, sizeof(why), "first %s model (val bpb %.4f)",
                 cli->model, ce.bpb);
    } else if (!isfinite(p_bpb)) {
        pass = 1;
        snprintf(why, sizeof(why), "production v%d cannot be evaluated on"
                 " this validation set", prod_version);
    } else {
        double need = p_bpb * (1.0 - cli->gate_loss / 100.0);

        pass = ce.bpb <= need;
        snprintf(why, sizeof(why), "val bpb %.4f vs production v%d %.4f on"
                 " the same %zu validation bytes (%+.2f%%, need %+.2f%%):"
                 " %s", ce.bpb, prod_version, p_bpb, data.val_bytes,
                 100.0 * (ce.bpb - p_bpb) / p_bpb, -cli->gate_loss,
                 pass ? "passes" : "not better enough");
    }

    /* the trainer's own numbers, then the gate's measurement beside them */
    snprintf(trainp, sizeof(trainp), "%.4000s/metrics.json", out);
    tj = json_load_file(trainp, 0, &je);
    metrics = json_object();
    if (json_is_object(tj)) {
        json_object_set(metrics, "training", tj);
    }
    json_decref(tj);
    json_object_set_new(metrics, "val_loss", json_real(ce.loss));
    json_object_set_new(metrics, "val_ppl", json_real(exp(ce.loss)));
    json_object_set_new(metrics, "val_bpb", json_real(ce.bpb));
    json_object_set_new(metrics, "val_tokens",
                        json_integer((json_int_t) ce.tokens));
    json_object_set_new(metrics, "val_bytes_scored",
                        json_integer((json_int_t) ce.bytes));
    json_object_set_new(metrics, "val_set_sha256",
                        json_string(data.val_sha256));
    json_object_set_new(metrics, "val_set_bytes",
                        json_integer((json_int_t) data.val_bytes));
    json_object_set_new(metrics, "val_dialogs",
                        json_integer((json_int_t) data.val_dialogs));
    json_object_set_new(metrics, "train_dialogs",
                        json_integer((json_int_t) data.train_dialogs));
    json_object_set_new(metrics, "gate",
                        json_pack("{s:b, s:s, s:f, s:b, s:o}", "passed",
                                  pass, "reason", why, "gate_loss_pct",
                                  cli->gate_loss, "promote_requested",
                                  cli->promote, "production", pj));
    metrics_s = json_dumps(metrics, JSON_COMPACT | JSON_SORT_KEYS);
    if (metrics_s == NULL) {
        rc = cm_tdd_fail(c, run_id, t0, "metrics: out of memory");
        goto done;
    }

    /* 7. register: from here a signal waits for the end of the run */
    atomic_store(&w->phase, CM_RUN_CRITICAL);
    if (cm_tdd_register(c, cli->model, out, metrics_s, run_id, &version, err,
                        sizeof(err)) != CM_OK)
    {
        snprintf(why, sizeof(why), "registering: %.600s", err);
        rc = cm_tdd_fail(c, run_id, t0, why);
        goto done;
    }
    snprintf(ms, sizeof(ms), "%llu",
             (unsigned long long) ((cm_now_mono_ns() - t0) / 1000000));
    snprintf(n1, sizeof(n1), "%zu", data.train_dialogs);
    snprintf(n2, sizeof(n2), "%zu", data.val_dialogs);
    snprintf(n3, sizeof(n3), "%zu", data.train_bytes + data.val_bytes);
    v[0] = run_id;
    v[1] = metrics_s;
    v[2] = n1;
    v[3] = n2;
    v[4] = n3;
    v[5] = ms;
    v[6] = !pass ? "rejected" : (cli->promote ? "promoted" : "skipped");
    v[7] = why;
    /* keeps the trainer's last progress beside the final numbers */
    r = cm_pg_query(c, "UPDATE training_runs SET status = 'succeeded',"
                    " metrics = $2::jsonb || jsonb_strip_nulls("
                    " jsonb_build_object('progress', metrics->'progress')),"
                    " train_rows = $3, test_rows = $4, data_bytes = $5,"
                    " duration_ms = $6, finished_at = now(), gate_decision ="
                    " $7, gate_reason = $8 WHERE id = $1", 8, v, err,
                    sizeof(err));
    if (r == NULL) {
        rc = cm_tdd_fail(c, run_id, t0, err);
        goto done;
    }
    PQclear(r);
    printf("run %s: %s version %d (staging): val loss %.4f, bpb %.4f on %zu"
           " validation dialogues\ngate: %s\n", run_id, cli->model, version,
           ce.loss, ce.bpb, data.val_dialogs, why);

    /* 8. promote */
    if (pass && cli->promote) {
        if (cm_model_promote(c, cli->model, version, err, sizeof(err))
            != CM_OK)
        {
            fprintf(stderr, CM_TDD_ME ": promotion failed, production"
                    " unchanged: %s\n", err);
            snprintf(why, sizeof(why), "gate passed; promotion failed: %.600s",
                     err);
            v[0] = run_id;
            v[1] = why;
            PQclear(PQexecParams(c, "UPDATE training_runs SET gate_decision ="
                                 " 'skipped', gate_reason = $2 WHERE id = $1",
                                 2, NULL, v, NULL, NULL, 0));
            goto done;
        }
        printf("promoted %s version %d to production\n", cli->model,
               version);
    } else if (!pass) {
        printf("kept production v%d; version %d stays in staging\n",
               prod_version, version);
    }
    rc = 0;

done:
    if (have_work) {
        cm_tdd_rmtree(work);
    }
    json_decref(params);
    json_decref(metrics);
    free(params_s);
    free(metrics_s);
    PQfinish(c);
    return rc;
}

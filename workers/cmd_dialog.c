/*
 * cmd_dialog.c: the dialog LM commands.
 *   cinematch train dialog   corpus -> tokenizer -> GPT training with val loss
 *   cinematch lm init        random weights in an llm.c checkpoint
 *   cinematch lm logits      float32 T x V logits of a token list
 *   cinematch lm generate    sample a reply to a prompt (KV cache)
 *   cinematch lm eval        validation loss, perplexity, bits per byte
 *   cinematch bench dialog   training and decode throughput
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "cinematch/common.h"
#include "cinematch/bpe.h"
#include "cinematch/cornell.h"
#include "cinematch/dialog.h"
#include "cinematch/gpt.h"
#include "cinematch/lm.h"
#include "cinematch/lstm.h"
#include "cinematch/gpt_cuda.h"
#include "cmd.h"
#include "mlops.h"

static int cm_train_dialog_main(int argc, char **argv);
static int cm_lm_init_main(int argc, char **argv);
static int cm_lm_logits_main(int argc, char **argv);
static int cm_lm_generate_main(int argc, char **argv);
static int cm_lm_eval_main(int argc, char **argv);
static int cm_bench_dialog_main(int argc, char **argv);

CM_COMMAND("train dialog", "train the dialog GPT on a corpus (CPU)",
           cm_train_dialog_main);
CM_COMMAND("lm init", "write a randomly initialised GPT checkpoint",
           cm_lm_init_main);
CM_COMMAND("lm logits", "write the float32 logits of a token list",
           cm_lm_logits_main);
CM_COMMAND("lm generate", "generate a reply to a prompt",
           cm_lm_generate_main);
CM_COMMAND("lm eval", "validation loss, perplexity, bits per byte",
           cm_lm_eval_main);
CM_COMMAND("bench dialog", "dialog LM training and decode throughput",
           cm_bench_dialog_main);


/* ---- argument helpers ------------------------------------------------- */

static int
cm_arg_int(const char *cmd, const char *name, const char *s, long lo,
    long hi, int *out)
{
    char *end;
    long  v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (errno != 0 || *s == '\0' || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "%s: --%s wants an integer in %ld..%ld, got '%s'\n",
                cmd, name, lo, hi, s);
        return CM_EINVAL;
    }
    *out = (int) v;
    return CM_OK;
}


static int
cm_arg_float(const char *cmd, const char *name, const char *s, double lo,
    double hi, float *out)
{
    char   *end;
    double  v;

    errno = 0;
    v = strtod(s, &end);
    if (errno != 0 || *s == '\0' || *end != '\0' || !(v >= lo && v <= hi)) {
        fprintf(stderr, "%s: --%s wants a number in %g..%g, got '%s'\n",
                cmd, name, lo, hi, s);
        return CM_EINVAL;
    }
    *out = (float) v;
    return CM_OK;
}


static uint64_t
cm_rng(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);

    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}


static double
cm_secs(uint64_t t0)
{
    return (double) (cm_now_mono_ns() - t0) / 1e9;
}


/* CPU time of the process (all threads), seconds: on a shared machine the
 * wall-clock rate depends on the neighbours, the CPU-time rate much less. */
static double
cm_cpu_now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double) ts.tv_sec + (double) ts.tv_nsec / 1e9;
}


/* Corpus + tokenizer: loads DIR's tokenizer, or trains one on the training
 * split and saves it there. */
static int
cm_dialog_tokenizer(const cm_corpus_t *c, const char *dir, int train,
    int vocab, double frac, uint64_t seed, cm_bpe_t **out)
{
    char          err[512];
    uint8_t      *is_val;
    const char  **texts;
    size_t       *lens, i, j, n = 0;
    int           rc;

    if (!train) {
        if (cm_bpe_load(out, dir, err, sizeof(err)) != CM_OK) {
            cm_error("tokenizer: %s", err);
            return CM_ERR;
        }
        return CM_OK;
    }
    is_val = malloc(c->n_convs + 1);
    texts = malloc((c->n_turns + 1) * sizeof(*texts));
    lens = malloc((c->n_turns + 1) * sizeof(*lens));
    if (is_val == NULL || texts == NULL || lens == NULL) {
        free(is_val);
        free(texts);
        free(lens);
        return CM_ENOMEM;
    }
    cm_corpus_split(c, frac, seed, is_val);
    for (i = 0; i < c->n_convs; i++) {
        for (j = 0; !is_val[i] && j < c->convs[i].n; j++) {
            texts[n] = cm_corpus_str(c, c->turns[c->convs[i].first + j].text);
            lens[n] = strlen(texts[n]);
            n++;
        }
    }
    rc = cm_bpe_train(out, texts, lens, n, vocab, err, sizeof(err));
    if (rc == CM_OK) {
        rc = cm_bpe_save(*out, dir, err, sizeof(err));
    }
    if (rc != CM_OK) {
        cm_error("tokenizer: %s", err);
    } else {
        cm_info("tokenizer: trained %d tokens on %zu training turns -> %s",
                cm_bpe_vocab_size(*out), n, dir);
    }
    free(is_val);
    free(texts);
    free(lens);
    return rc;
}


/* ---- --device cpu|cuda|auto ------------------------------------------- */

/*
 * cpu (the default) runs on the CPU; cuda needs a GPU (gpt_cuda.h's
 * resident backend) and exits 2 with the reason when none answers; auto
 * takes the GPU when cudaGetDeviceCount finds one and otherwise runs on
 * the CPU after a one-line note.  *gpu says which.  Returns 0, or 2 (bad
 * value, or cuda without a usable GPU).
 */
static int
cm_dialog_device(const char *me, const char *want, int *gpu)
{
    char err[256] = "";
    int  n;

    *gpu = 0;
    if (want == NULL || strcmp(want, "cpu") == 0) {
        return 0;
    }
    if (strcmp(want, "cuda") != 0 && strcmp(want, "auto") != 0) {
        fprintf(stderr, "%s: --device wants cpu, cuda or auto, got '%s'\n",
                me, want);
        return 2;
    }
    n = cm_cuda_device_count(err, sizeof(err));
    if (n > 0) {
        *gpu = 1;
        cm_info("%s: --device %s: GPU (%d CUDA device%s)", me, want, n,
                n == 1 ? "" : "s");
        return 0;
    }
    if (strcmp(want, "cuda") == 0) {
        fprintf(stderr, "%s: --device cuda: no usable GPU (%s)\n", me,
                err[0] ? err : "no CUDA device");
        return 2;
    }
    cm_info("%s: --device auto: CPU (no usable GPU: %s)", me,
            err[0] ? err : "no CUDA device");
    return 0;
}


/* ---- either model: the GPT or the LSTM baseline ----------------------- */

/* One trainer and one evaluation for both architectures: the commands
 * below go through these, so the two see the same data, schedule and
 * metrics. */
typedef struct {
    int             lstm;   /* 0: GPT (gpt.h), 1: LSTM (lstm.h) */
    cm_gpt_t        gpt;
    cm_lstm_t       rnn;
    cm_gpt_cuda_t  *cu;     /* GPT training on the GPU (gpt_cuda.h): the
                               device holds the live parameters and
                               moments; gpt gets them by cm_dlm_sync */
} cm_dlm_t;


static int
cm_dlm_load(cm_dlm_t *d, const char *path, char *err, size_t errlen)
{
    memset(d, 0, sizeof(*d));
    d->lstm = cm_lstm_is_checkpoint(path);
    return d->lstm ? cm_lstm_load(&d->rnn, path, err, errlen)
                   : cm_gpt_load(&d->gpt, path, err, errlen);
}


static void
cm_dlm_free(cm_dlm_t *d)
{
    cm_gpt_cuda_free(d->cu);
    d->cu = NULL;
    if (d->lstm) {
        cm_lstm_free(&d->rnn);
    } else {
        cm_gpt_free(&d->gpt);
    }
}


static int
cm_dlm_max_seq(const cm_dlm_t *d)
{
    return d->lstm ? d->rnn.config.max_seq_len : d->gpt.config.max_seq_len;
}


static int
cm_dlm_vocab(const cm_dlm_t *d)
{
    return d->lstm ? d->rnn.config.vocab_size : d->gpt.config.vocab_size;
}


static size_t
cm_dlm_num_parameters(const cm_dlm_t *d)
{
    return d->lstm ? d->rnn.num_parameters : d->gpt.num_parameters;
}


/* forward with targets and backward, accumulating; *loss is the mean */
static int
cm_dlm_forward_backward(cm_dlm_t *d, const int *inp, const int *tgt, int B,
    int T, float grad_scale, float *loss)
{
    int rc;

    if (d->lstm) {
        rc = cm_lstm_forward(&d->rnn, inp, tgt, B, T);
        rc = rc == CM_OK ? cm_lstm_backward(&d->rnn, grad_scale) : rc;
        *loss = d->rnn.mean_loss;
    } else if (d->cu != NULL) {
        rc = cm_gpt_cuda_forward(d->cu, inp, tgt, B, T, loss);
        rc = rc == CM_OK ? cm_gpt_cuda_backward(d->cu, grad_scale) : rc;
    } else {
        rc = cm_gpt_forward(&d->gpt, inp, tgt, B, T);
        rc = rc == CM_OK ? cm_gpt_backward(&d->gpt, grad_scale) : rc;
        *loss = d->gpt.mean_loss;
    }
    return rc;
}


static void
cm_dlm_zero_grad(cm_dlm_t *d)
{
    if (d->lstm) {
        cm_lstm_zero_grad(&d->rnn);
    } else if (d->cu != NULL) {
        (void) cm_gpt_cuda_zero_grad(d->cu);   /* a failure shows next */
    } else {
        cm_gpt_zero_grad(&d->gpt);
    }
}


/* NAN when the GPU failed (the trainer stops on a non-finite norm) */
static float
cm_dlm_clip_grad(cm_dlm_t *d, float max_norm)
{
    float norm;

    if (!d->lstm && d->cu != NULL) {
        return cm_gpt_cuda_clip_grad(d->cu, max_norm, &norm) == CM_OK
               ? norm : NAN;
    }
    return d->lstm ? cm_lstm_clip_grad(&d->rnn, max_norm)
                   : cm_gpt_clip_grad(&d->gpt, max_norm);
}


static int
cm_dlm_update(cm_dlm_t *d, const cm_adamw_t *o)
{
    if (!d->lstm && d->cu != NULL) {
        return cm_gpt_cuda_update(d->cu, o);
    }
    return d->lstm ? cm_lstm_update(&d->rnn, o) : cm_gpt_update(&d->gpt, o);
}


/* The GPU's parameters and moments into the CPU model, before anything
 * reads it (evaluation, checkpoints). */
static int
cm_dlm_sync(cm_dlm_t *d)
{
    return d->lstm || d->cu == NULL ? CM_OK
                                    : cm_gpt_cuda_download(d->cu, &d->gpt);
}


static int
cm_dlm_save(cm_dlm_t *d, const char *dir, int step, char *err,
    size_t errlen)
{
    char path[4200];
    int  rc;

    if (cm_dlm_sync(d) != CM_OK) {
        snprintf(err, errlen, "cannot copy the model back from the GPU");
        return CM_ERR;
    }

    snprintf(path, sizeof(path), "%.4000s/model.bin", dir);
    rc = d->lstm ? cm_lstm_save(&d->rnn, path, err, errlen)
                 : cm_gpt_save(&d->gpt, path, err, errlen);
    if (rc != CM_OK) {
        return rc;
    }
    snprintf(path, sizeof(path), "%.4000s/state.bin", dir);
    return d->lstm ? cm_lstm_save_state(&d->rnn, step, path, err, errlen)
                   : cm_gpt_save_state(&d->gpt, step, path, err, errlen);
}


static int
cm_dlm_load_state(cm_dlm_t *d, int *step, const char *path, char *err,
    size_t errlen)
{
    return d->lstm ? cm_lstm_load_state(&d->rnn, step, path, err, errlen)
                   : cm_gpt_load_state(&d->gpt, step, path, err, errlen);
}


static int
cm_dlm_eval(cm_dlm_t *d, const cm_bpe_t *b, const int32_t *ids, size_t n,
    int B, int T, size_t max_tokens, cm_dialog_eval_t *ev)
{
    return d->lstm ? cm_dialog_eval_lstm(&d->rnn, b, ids, n, B, T,
                                         max_tokens, ev)
                   : cm_dialog_eval(&d->gpt, b, ids, n, B, T, max_tokens,
                                    ev);
}


static int
cm_dlm_reply_eval(const cm_dlm_t *d, const cm_bpe_t *b, const cm_corpus_t *c,
    const uint8_t *is_val, size_t max_examples, int max_tokens,
    cm_dialog_replies_t *out)
{
    return d->lstm ? cm_dialog_reply_eval_lstm(&d->rnn, b, c, is_val,
                                               max_examples, max_tokens, out)
                   : cm_dialog_reply_eval(&d->gpt, b, c, is_val,
                                          max_examples, max_tokens, out);
}


/* ---- train dialog ----------------------------------------------------- */

static const char cm_train_dialog_usage[] =
    "usage: cinematch train dialog --corpus PATH --out DIR [options]\n"
    "\n"
    "Trains the dialog GPT (or the LSTM baseline) on the training split of\n"
    "PATH (Cornell directory, plain dialogue file or .tsv pairs).  Writes\n"
    "DIR/model.bin (llm.c checkpoint; the LSTM's own format), DIR/state.bin\n"
    "(optimizer, for --resume), DIR/tokenizer/ (trained here unless\n"
    "--tokenizer is given) and DIR/metrics.json.\n"
    "  --config NAME       dialog-tiny | dialog-small | gpt2-124M |"
    " lstm-tiny |\n"
    "                      lstm-small (dialog-tiny)\n"
    "  --arch gpt|lstm     lstm with a dialog-* config picks the LSTM of\n"
    "                      the same size class (lstm-tiny, lstm-small)\n"
    "  --device D          cpu | cuda | auto (cpu): cuda trains the GPT on\n"
    "                      the GPU (exit 2 when none answers), auto takes\n"
    "                      the GPU when there is one\n"
    "  --steps N           optimizer steps in total (100)\n"
    "  --minutes M         also stop after M minutes of training (0: off)\n"
    "  --tokenizer DIR     use this tokenizer instead of training one\n"
    "  --batch B --seq T   batch shape (8, min(128, maxT))\n"
    "  --grad-accum K      micro-batches per step (1)\n"
    "  --lr X --lr-min X   cosine schedule peak and floor (1e-3, lr/10)\n"
    "  --warmup N          warm-up steps (steps/20)\n"
    "  --weight-decay X    AdamW decay on matrices (0.1)\n"
    "  --clip X            gradient norm clip (1.0)\n"
    "  --val-every N       evaluate and checkpoint every N steps (100)\n"
    "  --val-tokens N      validation targets per evaluation (32768)\n"
    "  --val-frac F        validation share, by film (0.05)\n"
    "  --val-corpus PATH   validate on PATH instead: all of --corpus\n"
    "                      trains (the registry's fixed split)\n"
    "  --seed S            init, split and batch seed (1)\n"
    "  --resume            continue from DIR/model.bin + DIR/state.bin\n"
    "  --stop-at N         checkpoint and stop after step N (the schedule\n"
    "                      still spans --steps; resume later)\n"
    "  --log-every N       step log interval (10)\n"
    "\n"
    "cinematch train dialog --from-db [options]: the registry form, on the\n"
    "ingested dialogues (see `cinematch train dialog --from-db --help`).\n";


typedef struct {
    const char  *corpus, *out, *config, *tokenizer, *arch, *device;
    const char  *val_corpus;
    int          steps, batch, seq, accum, warmup, val_every, val_tokens;
    int          log_every, resume, stop_at;
    float        lr, lr_min, wd, clip, frac, minutes;
    uint64_t     seed;
} cm_train_opts_t;


static int
cm_train_dialog_eval(cm_dlm_t *d, const cm_bpe_t *b, const cm_tokens_t *val,
    const cm_train_opts_t *o, int T, cm_dialog_eval_t *ev)
{
    int rc = cm_dlm_eval(d, b, val->ids, val->n, o->batch, T,
                         (size_t) o->val_tokens, ev);

    if (rc != CM_OK) {
        cm_error("train dialog: evaluation failed: %s", cm_strerror(rc));
    }
    return rc;
}


static int
cm_train_dialog_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "corpus", required_argument, NULL, 'c' },
        { "out", required_argument, NULL, 'o' },
        { "config", required_argument, NULL, 'C' },
        { "tokenizer", required_argument, NULL, 'k' },
        { "steps", required_argument, NULL, 'n' },
        { "minutes", required_argument, NULL, 'M' },
        { "batch", required_argument, NULL, 'B' },
        { "seq", required_argument, NULL, 'T' },
        { "grad-accum", required_argument, NULL, 'a' },
        { "lr", required_argument, NULL, 'l' },
        { "lr-min", required_argument, NULL, 'm' },
        { "warmup", required_argument, NULL, 'w' },
        { "weight-decay", required_argument, NULL, 'd' },
        { "clip", required_argument, NULL, 'g' },
        { "val-every", required_argument, NULL, 'v' },
        { "val-tokens", required_argument, NULL, 'V' },
        { "val-frac", required_argument, NULL, 'f' },
        { "seed", required_argument, NULL, 's' },
        { "resume", no_argument, NULL, 'r' },
        { "log-every", required_argument, NULL, 'L' },
        { "stop-at", required_argument, NULL, 'S' },
        { "arch", required_argument, NULL, 'A' },
        { "device", required_argument, NULL, 'D' },
        { "val-corpus", required_argument, NULL, 'X' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    const char         *me = "train dialog";
    cm_train_opts_t     o;
    cm_corpus_t         cp;
    cm_bpe_t           *b = NULL;
    cm_dialog_data_t    data;
    cm_gpt_config_t     cfg;
    cm_lstm_config_t    lcfg;
    cm_dlm_t            d;
    cm_dialog_eval_t    ev;
    cm_adamw_t          opt;
    char                err[512], path[4200], tokdir[4096];
    int                 c, rc = 0, step = 0, T, a, k, *inp = NULL, *tgt = NULL;
    int                 bad = 0, train_tok, lstm, vocab, gpu;
    float               ml;
    char                cfgname[64];
    uint64_t            t0, ts, rng;
    size_t              per, span, tokens_done = 0;
    double              train_secs = 0.0, loss = 0.0, last_val = -1.0;
    double              uni_bpb = -1.0, bi_bpb = -1.0;
    float               norm, lr;
    struct stat         st;
    json_t             *js;

    /* the registry form: its own options, data from PostgreSQL */
    if (cm_argv_has(argc, argv, "--from-db")) {
        return cm_train_dialog_db_main(argc, argv);
    }
    memset(&o, 0, sizeof(o));
    memset(&ev, 0, sizeof(ev));
    o.config = "dialog-tiny";
    o.steps = 100;
    o.batch = 8;
    o.seq = 128;
    o.accum = 1;
    o.warmup = -1;
    o.val_every = 100;
    o.val_tokens = 32768;
    o.log_every = 10;
    o.lr = 1e-3f;
    o.lr_min = -1.0f;
    o.wd = 0.1f;
    o.clip = 1.0f;
    o.frac = 0.05f;
    o.seed = 1;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': o.corpus = optarg; break;
        case 'o': o.out = optarg; break;
        case 'C': o.config = optarg; break;
        case 'k': o.tokenizer = optarg; break;
        case 'n': bad |= cm_arg_int(me, "steps", optarg, 1, 100000000,
                                    &o.steps); break;
        case 'M': bad |= cm_arg_float(me, "minutes", optarg, 0, 1e6,
                                      &o.minutes); break;
        case 'B': bad |= cm_arg_int(me, "batch", optarg, 1, 4096, &o.batch);
                  break;
        case 'T': bad |= cm_arg_int(me, "seq", optarg, 1, 65536, &o.seq);
                  break;
        case 'a': bad |= cm_arg_int(me, "grad-accum", optarg, 1, 4096,
                                    &o.accum); break;
        case 'l': bad |= cm_arg_float(me, "lr", optarg, 0, 10, &o.lr); break;
        case 'm': bad |= cm_arg_float(me, "lr-min", optarg, 0, 10,
                                      &o.lr_min); break;
        case 'w': bad |= cm_arg_int(me, "warmup", optarg, 0, 100000000,
                                    &o.warmup); break;
        case 'd': bad |= cm_arg_float(me, "weight-decay", optarg, 0, 10,
                                      &o.wd); break;
        case 'g': bad |= cm_arg_float(me, "clip", optarg, 0, 1e9, &o.clip);
                  break;
        case 'v': bad |= cm_arg_int(me, "val-every", optarg, 0, 100000000,
                                    &o.val_every); break;
        case 'V': bad |= cm_arg_int(me, "val-tokens", optarg, 0, 1000000000,
                                    &o.val_tokens); break;
        case 'f': bad |= cm_arg_float(me, "val-frac", optarg, 0.0, 0.9,
                                      &o.frac); break;
        case 's': o.seed = strtoull(optarg, NULL, 10); break;
        case 'r': o.resume = 1; break;
        case 'L': bad |= cm_arg_int(me, "log-every", optarg, 1, 100000000,
                                    &o.log_every); break;
        case 'S': bad |= cm_arg_int(me, "stop-at", optarg, 1, 100000000,
                                    &o.stop_at); break;
        case 'A': o.arch = optarg; break;
        case 'D': o.device = optarg; break;
        case 'X': o.val_corpus = optarg; break;
        case 'h': fputs(cm_train_dialog_usage, stdout); return 0;
        default:  fputs(cm_train_dialog_usage, stderr); return 2;
        }
    }
    if (bad || o.corpus == NULL || o.out == NULL || optind != argc) {
        if (!bad) {
            fprintf(stderr, "%s: --corpus and --out are required\n", me);
        }
        fputs(cm_train_dialog_usage, stderr);
        return 2;
    }
    if ((c = cm_dialog_device(me, o.device, &gpu)) != 0) {
        return c;
    }
    if (o.arch != NULL && strcmp(o.arch, "gpt") != 0
        && strcmp(o.arch, "lstm") != 0)
    {
        fprintf(stderr, "%s: --arch wants gpt or lstm, got '%s'\n", me,
                o.arch);
        return 2;
    }
    lstm = strncmp(o.config, "lstm-", 5) == 0;
    if (o.arch != NULL && lstm != (strcmp(o.arch, "lstm") == 0)) {
        if (lstm || strncmp(o.config, "dialog-", 7) != 0) {
            fprintf(stderr, "%s: --config %s is not a %s config\n", me,
                    o.config, o.arch);
            return 2;
        }
        /* dialog-tiny -> lstm-tiny, dialog-small -> lstm-small */
        snprintf(cfgname, sizeof(cfgname), "lstm-%.40s", o.config + 7);
        o.config = cfgname;
        lstm = 1;
    }
    if (lstm ? cm_lstm_config_named(o.config, 0, &lcfg) != CM_OK
             : cm_gpt_config_named(o.config, 0, &cfg) != CM_OK)
    {
        fprintf(stderr, "%s: unknown --config '%s' (dialog-tiny, "
                "dialog-small, gpt2-124M, lstm-tiny, lstm-small)\n", me,
                o.config);
        return 2;
    }
    if (gpu && lstm) {
        if (strcmp(o.device, "cuda") == 0) {
            fprintf(stderr, "%s: --device cuda: the CUDA backend trains the"
                    " GPT; the LSTM baseline trains on the CPU\n", me);
            return 2;
        }
        cm_info("%s: --device auto: CPU (the LSTM has no CUDA backend)", me);
        gpu = 0;
    }
    vocab = lstm ? lcfg.vocab_size : cfg.vocab_size;
    if (o.val_corpus != NULL) {
        o.frac = 0.0f;          /* all of --corpus trains, tokenizer too */
    }
    if (o.lr_min < 0.0f) {
        o.lr_min = o.lr / 10.0f;
    }
    if (o.warmup < 0) {
        o.warmup = o.steps / 20 > 0 ? o.steps / 20 : 1;
    }
    if (mkdir(o.out, 0755) != 0 && errno != EEXIST) {
        cm_error("%s: %s: %s", me, o.out, strerror(errno));
        return 1;
    }

    /* corpus and tokenizer */
    cm_corpus_init(&cp);
    if (cm_corpus_load(&cp, o.corpus, err, sizeof(err)) != CM_OK) {
        cm_error("%s: %s", me, err);
        return 1;
    }
    cm_info("%s: corpus %s: %zu conversations, %zu turns, %zu malformed"
            " lines skipped", me, o.corpus, cp.n_convs, cp.n_turns,
            cp.n_malformed);
    snprintf(tokdir, sizeof(tokdir), "%s/tokenizer", o.out);
    if (o.tokenizer != NULL) {
        rc = cm_dialog_tokenizer(&cp, o.tokenizer, 0, 0, 0, 0, &b);
        /* keep a copy beside the model, so the run directory serves */
        if (rc == CM_OK && cm_bpe_save(b, tokdir, err, sizeof(err))
                           != CM_OK)
        {
            cm_warn("%s: could not copy the tokenizer: %s", me, err);
        }
    } else {
        snprintf(path, sizeof(path), "%.4000s/vocab.json", tokdir);
        rc = cm_dialog_tokenizer(&cp, tokdir,
                                 !(o.resume && stat(path, &st) == 0),
                                 vocab, o.frac, o.seed, &b);
    }
    if (rc != CM_OK) {
        cm_corpus_free(&cp);
        return 1;
    }
    if (lstm) {
        cm_lstm_config_named(o.config, cm_bpe_vocab_size(b), &lcfg);
    } else {
        cm_gpt_config_named(o.config, cm_bpe_vocab_size(b), &cfg);
    }
    t0 = cm_now_mono_ns();
    if (cm_dialog_render(&cp, b, o.frac, o.seed, &data) != CM_OK) {
        cm_error("%s: rendering the corpus failed", me);
        return 1;
    }
    if (o.val_corpus != NULL) {
        cm_corpus_t       vc;
        cm_dialog_data_t  vd;

        /* frac 0 renders every conversation into .train: here, the
         * validation stream */
        err[0] = '\0';
        cm_corpus_init(&vc);
        if (cm_corpus_load(&vc, o.val_corpus, err, sizeof(err)) != CM_OK
            || cm_dialog_render(&vc, b, 0.0, o.seed, &vd) != CM_OK)
        {
            cm_error("%s: --val-corpus: %s", me, err[0] ? err
                     : "rendering failed");
            cm_corpus_free(&vc);
            return 1;
        }
        cm_corpus_free(&vc);
        free(data.val.ids);
        data.val = vd.train;
        data.n_val_convs = vd.n_train_convs;
        vd.train.ids = NULL;
        cm_dialog_data_free(&vd);
    }
    cm_info("%s: train %zu tokens (%zu conversations), val %zu tokens (%zu"
            " conversations), tokenized in %.1f s", me, data.train.n,
            data.n_train_convs, data.val.n, data.n_val_convs, cm_secs(t0));
    cm_corpus_free(&cp);
    if (cm_dialog_ngram_bpb(b, &data.train, &data.val, &uni_bpb, &bi_bpb)
        == CM_OK)
    {
        cm_info("%s: baselines on the same split: unigram %.4f bpb, bigram"
                " %.4f bpb", me, uni_bpb, bi_bpb);
    }

    /* model */
    snprintf(path, sizeof(path), "%s/model.bin", o.out);
    memset(&d, 0, sizeof(d));
    if (o.resume) {
        if (cm_dlm_load(&d, path, err, sizeof(err)) != CM_OK) {
            cm_error("%s: --resume: %s", me, err);
            return 1;
        }
        if (d.lstm != lstm) {
            cm_error("%s: --resume: %s holds a%s, not a%s", me, path,
                     d.lstm ? "n LSTM" : " GPT", lstm ? "n LSTM" : " GPT");
            return 1;
        }
        if (cm_dlm_vocab(&d) != cm_bpe_vocab_size(b)) {
            cm_error("%s: --resume: checkpoint vocab %d != tokenizer %d", me,
                     cm_dlm_vocab(&d), cm_bpe_vocab_size(b));
            return 1;
        }
        snprintf(path, sizeof(path), "%s/state.bin", o.out);
        if (cm_dlm_load_state(&d, &step, path, err, sizeof(err)) != CM_OK) {
            cm_error("%s: --resume: %s", me, err);
            return 1;
        }
        cm_info("%s: resumed at step %d", me, step);
    } else if ((d.lstm = lstm) ? cm_lstm_init(&d.rnn, &lcfg, o.seed) != CM_OK
                               : cm_gpt_init(&d.gpt, &cfg, o.seed) != CM_OK)
    {
        cm_error("%s: cannot allocate the model", me);
        return 1;
    }
    T = o.seq < cm_dlm_max_seq(&d) ? o.seq : cm_dlm_max_seq(&d);
    per = (size_t) o.batch * T;
    if (data.train.n < (size_t) T + 2) {
        cm_error("%s: training stream too short (%zu tokens) for T=%d", me,
                 data.train.n, T);
        return 1;
    }
    span = data.train.n - (size_t) T - 1;
    if (lstm) {
        cm_info("%s: %s LSTM L=%d E=%d H=%d %s maxT=%d V=%d, %zu parameters",
                me, o.config, d.rnn.config.num_layers, d.rnn.config.embed_dim,
                d.rnn.config.hidden, d.rnn.config.tied ? "tied" : "untied",
                d.rnn.config.max_seq_len, d.rnn.config.vocab_size,
                d.rnn.num_parameters);
    } else {
        cm_info("%s: %s L=%d NH=%d C=%d maxT=%d V=%d (Vp %d), %zu"
                " parameters", me, o.config, d.gpt.config.num_layers,
                d.gpt.config.num_heads, d.gpt.config.channels,
                d.gpt.config.max_seq_len, d.gpt.config.vocab_size,
                d.gpt.config.padded_vocab_size, d.gpt.num_parameters);
    }
    if (gpu) {
        /* the CPU model (fresh or resumed, moments included) is the
         * source; the device holds the live copy from here on */
        if (cm_gpt_cuda_create(&d.cu, &d.gpt.config, o.batch, T, err,
                               sizeof(err)) != CM_OK
            || cm_gpt_cuda_upload(d.cu, &d.gpt) != CM_OK)
        {
            cm_error("%s: cannot set the model up on the GPU: %s", me,
                     d.cu == NULL ? err : "upload failed");
            cm_dlm_free(&d);
            return 1;
        }
        cm_info("%s: training on the GPU (resident CUDA backend)", me);
    }
    cm_info("%s: B=%d T=%d accum=%d, steps %d, lr %.2g -> %.2g, warmup %d",
            me, o.batch, T, o.accum, o.steps, (double) o.lr,
            (double) o.lr_min, o.warmup);
    inp = malloc(per * sizeof(int));
    tgt = malloc(per * sizeof(int));
    if (inp == NULL || tgt == NULL) {
        return 1;
    }
    memset(&opt, 0, sizeof(opt));
    opt.beta1 = 0.9f;
    opt.beta2 = 0.95f;
    opt.eps = 1e-8f;
    opt.weight_decay = o.wd;

    t0 = cm_now_mono_ns();
    for (; step < o.steps; step++) {
        ts = cm_now_mono_ns();
        lr = cm_lr_cosine(step, o.warmup, o.steps, o.lr, o.lr_min);
        /* batches depend on (seed, step) only: a resumed run sees the same
         * data as an uninterrupted one */
        rng = o.seed * 1000003ull + (uint64_t) step;
        cm_dlm_zero_grad(&d);
        loss = 0.0;
        for (a = 0; a < o.accum; a++) {
            int bb;

            for (bb = 0; bb < o.batch; bb++) {
                size_t off = (size_t) (cm_rng(&rng) % (span + 1));

                for (k = 0; k < T; k++) {
                    inp[bb * T + k] = data.train.ids[off + k];
                    tgt[bb * T + k] = data.train.ids[off + k + 1];
                }
            }
            if (cm_dlm_forward_backward(&d, inp, tgt, o.batch, T,
                                        1.0f / (float) o.accum, &ml)
                != CM_OK)
            {
                cm_error("%s: forward/backward failed", me);
                return 1;
            }
            loss += ml / o.accum;
        }
        norm = cm_dlm_clip_grad(&d, o.clip);
        if (d.cu != NULL && isnan(norm)) {
            cm_error("%s: gradient norm failed (GPU) at step %d", me, step);
            return 1;
        }
        opt.lr = lr;
        opt.step = step + 1;
        if (cm_dlm_update(&d, &opt) != CM_OK) {
            cm_error("%s: update failed", me);
            return 1;
        }
        tokens_done += per * (size_t) o.accum;
        if (!isfinite(loss)) {
            cm_error("%s: loss is %f at step %d; stopping", me, loss, step);
            return 1;
        }
        if ((step + 1) % o.log_every == 0 || step == 0) {
            double dt = cm_secs(ts);

            cm_info("step %d/%d loss %.4f lr %.2e norm %.3f %.0f ms"
                    " %.0f tok/s", step + 1, o.steps, loss, (double) lr,
                    (double) norm, dt * 1e3,
                    (double) per * o.accum / dt);
            if (cm_train_dialog_progress != NULL) {
                cm_train_dialog_progress(step + 1, o.steps, loss, -1.0,
                                         cm_secs(t0));
            }
        }
        train_secs = cm_secs(t0);
        if ((o.val_every > 0 && (step + 1) % o.val_every == 0)
            || step + 1 == o.steps || step + 1 == o.stop_at
            || (o.minutes > 0 && train_secs >= o.minutes * 60.0))
        {
            uint64_t te = cm_now_mono_ns();

            if (cm_dlm_sync(&d) != CM_OK) {
                cm_error("%s: cannot copy the model back from the GPU", me);
                return 1;
            }
            if (cm_train_dialog_eval(&d, b, &data.val, &o, T, &ev) == CM_OK
                && ev.tokens > 0)
            {
                last_val = ev.loss;
                cm_info("val step %d: loss %.4f ppl %.2f bpb %.4f (%zu tokens,"
                        " %zu bytes) after %.0f s", step + 1, ev.loss,
                        ev.ppl, ev.bpb, ev.tokens, ev.bytes, train_secs);
                if (cm_train_dialog_progress != NULL) {
                    cm_train_dialog_progress(step + 1, o.steps, loss, ev.loss,
                                             train_secs);
                }
            }
            if (cm_dlm_save(&d, o.out, step + 1, err, sizeof(err)) != CM_OK) {
                cm_error("%s: %s", me, err);
                return 1;
            }
            /* evaluation and checkpoint time is not training time */
            t0 += cm_now_mono_ns() - te;
            if (o.minutes > 0 && train_secs >= o.minutes * 60.0) {
                step++;
                cm_info("%s: --minutes %.1f reached", me, (double) o.minutes);
                break;
            }
            if (step + 1 == o.stop_at) {
                step++;
                cm_info("%s: stopped at step %d (--stop-at)", me, step);
                break;
            }
        }
    }
    train_tok = (int) (train_secs > 0 ? (double) tokens_done / train_secs
                                      : 0);
    js = json_pack("{s:s, s:s, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:i, s:f,"
                   " s:I, s:I}",
                   "config", o.config, "arch", lstm ? "lstm" : "gpt",
                   "steps", step, "maxT", cm_dlm_max_seq(&d), "V",
                   cm_dlm_vocab(&d), "batch", o.batch, "seq", T,
                   "train_loss", loss, "val_loss", last_val,
                   "train_tokens_per_s", train_tok, "train_seconds",
                   train_secs, "val_tokens", (json_int_t) ev.tokens,
                   "num_parameters",
                   (json_int_t) cm_dlm_num_parameters(&d));
    if (js != NULL && lstm) {
        json_object_set_new(js, "L", json_integer(d.rnn.config.num_layers));
        json_object_set_new(js, "E", json_integer(d.rnn.config.embed_dim));
        json_object_set_new(js, "H", json_integer(d.rnn.config.hidden));
        json_object_set_new(js, "tied", json_boolean(d.rnn.config.tied));
    } else if (js != NULL) {
        json_object_set_new(js, "L", json_integer(d.gpt.config.num_layers));
        json_object_set_new(js, "NH", json_integer(d.gpt.config.num_heads));
        json_object_set_new(js, "C", json_integer(d.gpt.config.channels));
    }
    if (js != NULL) {
        json_object_set_new(js, "device", json_string(d.cu != NULL ? "cuda"
                                                                   : "cpu"));
    }
    if (js != NULL && last_val >= 0) {
        json_object_set_new(js, "val_ppl", json_real(exp(last_val)));
        json_object_set_new(js, "val_bpb", json_real(ev.bpb));
    }
    if (js != NULL && uni_bpb >= 0) {
        json_object_set_new(js, "unigram_val_bpb", json_real(uni_bpb));
        json_object_set_new(js, "bigram_val_bpb", json_real(bi_bpb));
    }
    snprintf(path, sizeof(path), "%s/metrics.json", o.out);
    if (js == NULL || json_dump_file(js, path, JSON_INDENT(2)) != 0) {
        cm_warn("%s: could not write %s", me, path);
    }
    json_decref(js);
    printf("trained %s for %d steps in %.1f s (%d tok/s); val loss %.4f;"
           " checkpoint %s/model.bin\n", o.config, step, train_secs,
           train_tok, last_val, o.out);
    free(inp);
    free(tgt);
    cm_dlm_free(&d);
    cm_bpe_free(b);
    cm_dialog_data_free(&data);
    return 0;
}


int
cm_train_dialog_file(int argc, char **argv)
{
    return cm_train_dialog_main(argc, argv);
}


/* ---- lm init / logits -------------------------------------------------- */

static int
cm_lm_init_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'C' },
        { "seed", required_argument, NULL, 's' },
        { "out", required_argument, NULL, 'o' },
        { "vocab-size", required_argument, NULL, 'v' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    static const char usage[] =
        "usage: cinematch lm init --config NAME --out FILE [--seed S]"
        " [--vocab-size V]\n";
    const char      *config = "dialog-tiny", *out = NULL;
    uint64_t         seed = 1;
    int              c, vocab = 0, bad = 0;
    cm_gpt_config_t  cfg;
    cm_gpt_t         m;
    char             err[512];

    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'C': config = optarg; break;
        case 's': seed = strtoull(optarg, NULL, 10); break;
        case 'o': out = optarg; break;
        case 'v': bad |= cm_arg_int("lm init", "vocab-size", optarg, 1,
                                    1 << 24, &vocab); break;
        case 'h': fputs(usage, stdout); return 0;
        default:  fputs(usage, stderr); return 2;
        }
    }
    if (bad || out == NULL || optind != argc
        || cm_gpt_config_named(config, vocab, &cfg) != CM_OK)
    {
        fputs(usage, stderr);
        return 2;
    }
    if (cm_gpt_init(&m, &cfg, seed) != CM_OK
        || cm_gpt_save(&m, out, err, sizeof(err)) != CM_OK)
    {
        cm_error("lm init: cannot write %s", out);
        return 1;
    }
    printf("wrote %s: %s, %zu parameters\n", out, config, m.num_parameters);
    cm_gpt_free(&m);
    return 0;
}


static int
cm_lm_logits_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "ckpt", required_argument, NULL, 'k' },
        { "tokens", required_argument, NULL, 't' },
        { "out", required_argument, NULL, 'o' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    static const char usage[] =
        "usage: cinematch lm logits --ckpt FILE --tokens 1,2,3 --out FILE\n"
        "Writes T x V float32 logits (row-major, unpadded V) of a GPT or\n"
        "LSTM checkpoint.\n";
    const char  *ckpt = NULL, *toks = NULL, *out = NULL, *p;
    int          c, n = 0, cap = 0, *ids = NULL, t;
    cm_dlm_t     m;
    char         err[512], *end;
    FILE        *f;
    long         v;

    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'k': ckpt = optarg; break;
        case 't': toks = optarg; break;
        case 'o': out = optarg; break;
        case 'h': fputs(usage, stdout); return 0;
        default:  fputs(usage, stderr); return 2;
        }
    }
    if (ckpt == NULL || toks == NULL || out == NULL || optind != argc) {
        fputs(usage, stderr);
        return 2;
    }
    for (p = toks; *p != '\0'; ) {
        errno = 0;
        v = strtol(p, &end, 10);
        if (end == p || errno != 0 || v < 0 || v > INT32_MAX
            || (*end != ',' && *end != '\0'))
        {
            fprintf(stderr, "lm logits: bad --tokens near '%s'\n", p);
            free(ids);
            return 2;
        }
        if (n == cap) {
            int *ni;

            cap = cap ? cap * 2 : 64;
            ni = realloc(ids, (size_t) cap * sizeof(int));
            if (ni == NULL) {
                free(ids);
                return 1;
            }
            ids = ni;
        }
        ids[n++] = (int) v;
        p = *end == ',' ? end + 1 : end;
    }
    if (n == 0) {
        fputs(usage, stderr);
        return 2;
    }
    if (cm_dlm_load(&m, ckpt, err, sizeof(err)) != CM_OK) {
        cm_error("lm logits: %s", err);
        free(ids);
        return 1;
    }
    if ((m.lstm ? cm_lstm_forward(&m.rnn, ids, NULL, 1, n)
                : cm_gpt_forward(&m.gpt, ids, NULL, 1, n)) != CM_OK)
    {
        cm_error("lm logits: tokens out of range or longer than maxT %d",
                 cm_dlm_max_seq(&m));
        free(ids);
        cm_dlm_free(&m);
        return 1;
    }
    free(ids);
    f = fopen(out, "wb");
    if (f == NULL) {
        cm_error("lm logits: %s: %s", out, strerror(errno));
        cm_dlm_free(&m);
        return 1;
    }
    for (t = 0; t < n; t++) {
        if (m.lstm) {
            fwrite(m.rnn.acts.logits + (size_t) t * m.rnn.config.vocab_size,
                   sizeof(float), (size_t) m.rnn.config.vocab_size, f);
        } else {
            fwrite(m.gpt.acts.logits
                   + (size_t) t * m.gpt.config.padded_vocab_size,
                   sizeof(float), (size_t) m.gpt.config.vocab_size, f);
        }
    }
    cm_dlm_free(&m);
    if (fclose(f) != 0) {
        cm_error("lm logits: write failed");
        return 1;
    }
    return 0;
}


/* ---- lm generate ------------------------------------------------------- */

/* Generation on the GPU (gpt_cuda.h): the device runs the forwards with
 * its KV cache (slot 0), the host samples as cm_lm_prefill / cm_lm_step
 * do (cm_lm_sample over s's history), so the output and the finish
 * reasons are the CPU path's. */
static void
cm_gen_take(cm_lm_engine_t *e, cm_lm_seq_t *s, const float *logits)
{
    int i;

    s->next = cm_lm_sample(e, s, logits);
    s->n_generated++;
    for (i = 0; i < s->params.n_stop; i++) {
        if (s->params.stop[i] == s->next) {
            s->finish = CM_LM_STOP;
        }
    }
}


static int
cm_gen_gpu_prefill(cm_gpt_cuda_kv_t *kv, cm_lm_engine_t *e, cm_lm_seq_t *s,
    const int32_t *tokens, int n, float *logits)
{
    int rc;

    if (n < 1 || s->pos + n > e->model->config.max_seq_len) {
        return CM_EINVAL;
    }
    if ((rc = cm_gpt_cuda_prefill(kv, 0, tokens, n, logits)) != CM_OK) {
        return rc;
    }
    memcpy(s->history + s->pos, tokens, (size_t) n * sizeof(int32_t));
    s->pos += n;
    cm_gen_take(e, s, logits);
    return CM_OK;
}


static int
cm_gen_gpu_step(cm_gpt_cuda_kv_t *kv, cm_lm_engine_t *e, cm_lm_seq_t *s,
    float *logits)
{
    int slot = 0, tok = s->next, rc;

    if (s->params.max_tokens > 0 && s->n_generated >= s->params.max_tokens) {
        s->finish = CM_LM_LENGTH;
        return CM_OK;
    }
    if (s->pos >= e->model->config.max_seq_len) {
        s->finish = CM_LM_CONTEXT;
        return CM_OK;
    }
    if ((rc = cm_gpt_cuda_decode(kv, &slot, &tok, 1, logits)) != CM_OK) {
        return rc;
    }
    s->history[s->pos++] = tok;
    cm_gen_take(e, s, logits);
    return CM_OK;
}


static const char cm_lm_generate_usage[] =
    "usage: cinematch lm generate --ckpt FILE --tokenizer DIR --prompt TEXT\n"
    "           [--max-tokens N] [--temperature X] [--top-k K] [--top-p P]\n"
    "           [--repetition-penalty X] [--seed S] [--device cpu|cuda|auto]\n"
    "\n"
    "The prompt is the user's turn (earlier turns may be joined with\n"
    "<|eot|>); the reply is printed as it is generated, up to end of turn.\n"
    "--checkpoint is accepted for --ckpt.\n";


static int
cm_lm_generate_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "ckpt", required_argument, NULL, 'k' },
        { "checkpoint", required_argument, NULL, 'k' },
        { "tokenizer", required_argument, NULL, 'z' },
        { "prompt", required_argument, NULL, 'p' },
        { "max-tokens", required_argument, NULL, 'n' },
        { "temperature", required_argument, NULL, 't' },
        { "top-k", required_argument, NULL, 'K' },
        { "top-p", required_argument, NULL, 'P' },
        { "repetition-penalty", required_argument, NULL, 'r' },
        { "seed", required_argument, NULL, 's' },
        { "device", required_argument, NULL, 'D' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    const char      *me = "lm generate", *ckpt = NULL, *tok = NULL;
    const char      *prompt = NULL, *device = NULL;
    cm_lm_params_t   p;
    cm_gpt_t         m;
    cm_bpe_t        *b = NULL;
    cm_lm_engine_t   e;
    cm_lm_seq_t      s, *sp = &s;
    cm_tokens_t      t = { 0 };
    char             err[512];
    int              c, bad = 0, n0, room, gpu, rc;
    int32_t          eot, eos;
    cm_gpt_cuda_t   *g = NULL;
    cm_gpt_cuda_kv_t *kv = NULL;
    float           *gl = NULL;
    uint64_t         t0;
    double           ttft, total;
    size_t           len;
    const uint8_t   *tb;
    cm_bpe_stream_t  st = { { 0 }, 0 };
    char             piece[1024];

    cm_lm_params_default(&p);
    p.min_tokens = 1;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'k': ckpt = optarg; break;
        case 'z': tok = optarg; break;
        case 'p': prompt = optarg; break;
        case 'n': bad |= cm_arg_int(me, "max-tokens", optarg, 1, 1 << 20,
                                    &p.max_tokens); break;
        case 't': bad |= cm_arg_float(me, "temperature", optarg, 0, 100,
                                      &p.temperature); break;
        case 'K': bad |= cm_arg_int(me, "top-k", optarg, 0, 1 << 24,
                                    &p.top_k); break;
        case 'P': bad |= cm_arg_float(me, "top-p", optarg, 0, 1, &p.top_p);
                  break;
        case 'r': bad |= cm_arg_float(me, "repetition-penalty", optarg, 0.01,
                                      100, &p.repetition_penalty); break;
        case 's': p.seed = strtoull(optarg, NULL, 10); break;
        case 'D': device = optarg; break;
        case 'h': fputs(cm_lm_generate_usage, stdout); return 0;
        default:  fputs(cm_lm_generate_usage, stderr); return 2;
        }
    }
    if (bad || ckpt == NULL || tok == NULL || prompt == NULL
        || optind != argc)
    {
        fputs(cm_lm_generate_usage, stderr);
        return 2;
    }
    if ((c = cm_dialog_device(me, device, &gpu)) != 0) {
        return c;
    }
    if (cm_lstm_is_checkpoint(ckpt)) {
        cm_error("%s: %s is an LSTM baseline; generation serves GPT"
                 " checkpoints (the LSTM answers in lm eval's replies)", me,
                 ckpt);
        return 1;
    }
    if (cm_gpt_load(&m, ckpt, err, sizeof(err)) != CM_OK
        || cm_bpe_load(&b, tok, err, sizeof(err)) != CM_OK)
    {
        cm_error("%s: %s", me, err);
        return 1;
    }
    if (cm_bpe_vocab_size(b) != m.config.vocab_size) {
        cm_error("%s: tokenizer has %d tokens, model %d", me,
                 cm_bpe_vocab_size(b), m.config.vocab_size);
        return 1;
    }
    eot = cm_bpe_special(b, CM_BPE_ENDOFTURN);
    eos = cm_bpe_special(b, CM_BPE_ENDOFTEXT);
    p.n_stop = 0;
    if (eot >= 0) {
        p.stop[p.n_stop++] = eot;
    }
    if (eos >= 0) {
        p.stop[p.n_stop++] = eos;
    }
    if (cm_bpe_encode(b, prompt, strlen(prompt), CM_BPE_SPECIAL, &t)
        != CM_OK)
    {
        return 1;
    }
    if (t.n == 0 || t.ids[t.n - 1] != eot) {
        if (cm_bpe_encode(b, CM_BPE_ENDOFTURN, strlen(CM_BPE_ENDOFTURN),
                          CM_BPE_SPECIAL, &t) != CM_OK)
        {
            return 1;
        }
    }
    /* keep the latest turns when the prompt and reply exceed the context */
    room = m.config.max_seq_len - p.max_tokens;
    if (room < 1) {
        room = m.config.max_seq_len / 2;
    }
    n0 = (int) t.n > room ? (int) t.n - room : 0;
    if (cm_lm_engine_init(&e, &m, 64) != CM_OK
        || cm_lm_seq_init(&s, &e, &p) != CM_OK)
    {
        return 1;
    }
    if (gpu) {
        /* the weights on the device, a one-slot KV cache there; sampling
         * stays here (cm_lm_sample on the logits copied back) */
        err[0] = '\0';
        gl = malloc((size_t) m.config.vocab_size * sizeof(float));
        if (gl == NULL
            || cm_gpt_cuda_create(&g, &m.config, 1, 1, err, sizeof(err))
               != CM_OK
            || cm_gpt_cuda_upload(g, &m) != CM_OK
            || cm_gpt_cuda_kv_create(&kv, g, 1) != CM_OK)
        {
            cm_error("%s: cannot set the model up on the GPU%s%s", me,
                     err[0] ? ": " : "", err);
            return 1;
        }
    }
    t0 = cm_now_mono_ns();
    rc = gpu ? cm_gen_gpu_prefill(kv, &e, &s, t.ids + n0, (int) t.n - n0, gl)
             : cm_lm_prefill(&e, &s, t.ids + n0, (int) t.n - n0);
    if (rc != CM_OK) {
        cm_error("%s: prefill failed", me);
        return 1;
    }
    ttft = cm_secs(t0);
    while (s.finish == CM_LM_RUNNING) {
        /* whole UTF-8 characters only, as an SSE stream would send */
        tb = cm_bpe_token(b, s.next, &len);
        if (tb != NULL && len + 4 <= sizeof(piece)) {
            len = cm_bpe_stream_push(b, &st, s.next, piece);
            fwrite(piece, 1, len, stdout);
            fflush(stdout);
        }
        if (!gpu) {
            cm_lm_step(&e, &sp, 1);
        } else if (cm_gen_gpu_step(kv, &e, &s, gl) != CM_OK) {
            cm_error("%s: decode step failed on the GPU", me);
            return 1;
        }
    }
    len = cm_bpe_stream_flush(&st, piece);
    fwrite(piece, 1, len, stdout);
    total = cm_secs(t0);
    printf("\n");
    cm_info("%s: prompt %d tokens, %d generated (%s), first token %.1f ms,"
            " %.1f tok/s", me, (int) t.n - n0,
            s.n_generated - (s.finish == CM_LM_STOP),
            s.finish == CM_LM_STOP ? "end of turn"
            : s.finish == CM_LM_LENGTH ? "max tokens" : "context full",
            ttft * 1e3, s.n_generated > 1 ? (s.n_generated - 1)
                                            / (total - ttft) : 0.0);
    free(t.ids);
    free(gl);
    cm_gpt_cuda_kv_free(kv);
    cm_gpt_cuda_free(g);
    cm_lm_seq_free(&s);
    cm_lm_engine_free(&e);
    cm_bpe_free(b);
    cm_gpt_free(&m);
    return 0;
}


/* ---- lm eval ----------------------------------------------------------- */

static int
cm_lm_eval_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "ckpt", required_argument, NULL, 'k' },
        { "tokenizer", required_argument, NULL, 'z' },
        { "corpus", required_argument, NULL, 'c' },
        { "val-frac", required_argument, NULL, 'f' },
        { "seed", required_argument, NULL, 's' },
        { "batch", required_argument, NULL, 'B' },
        { "seq", required_argument, NULL, 'T' },
        { "max-tokens", required_argument, NULL, 'n' },
        { "replies", required_argument, NULL, 'R' },
        { "device", required_argument, NULL, 'D' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    static const char usage[] =
        "usage: cinematch lm eval --ckpt FILE --tokenizer DIR --corpus PATH\n"
        "           [--val-frac F] [--seed S] [--batch B] [--seq T]"
        " [--max-tokens N]\n"
        "           [--replies N] [--device cpu|cuda|auto]\n"
        "Loss, perplexity and bits per byte on the validation split (the\n"
        "GPT or the LSTM, told apart by the checkpoint's magic; the\n"
        "same --val-frac/--seed as training).  --replies N (default 100, 0\n"
        "off) also answers N validation conversations greedily (32 tokens\n"
        "at most) and reports BLEU-4 against the real replies and\n"
        "distinct-1/2 of the generated ones.\n";
    const char        *me = "lm eval", *ckpt = NULL, *tok = NULL;
    const char        *corpus = NULL, *device = NULL;
    float              frac = 0.05f;
    uint64_t           seed = 1;
    int                c, bad = 0, B = 8, T = 128, maxn = 0, replies = 100;
    int                gpu;
    uint8_t           *is_val;
    cm_dialog_replies_t rq;
    cm_dlm_t           m;
    cm_bpe_t          *b = NULL;
    cm_corpus_t        cp;
    cm_dialog_data_t   d;
    cm_dialog_eval_t   ev;
    char               err[512];

    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'k': ckpt = optarg; break;
        case 'z': tok = optarg; break;
        case 'c': corpus = optarg; break;
        case 'f': bad |= cm_arg_float(me, "val-frac", optarg, 0.0, 0.9,
                                      &frac); break;
        case 's': seed = strtoull(optarg, NULL, 10); break;
        case 'B': bad |= cm_arg_int(me, "batch", optarg, 1, 4096, &B); break;
        case 'T': bad |= cm_arg_int(me, "seq", optarg, 1, 65536, &T); break;
        case 'n': bad |= cm_arg_int(me, "max-tokens", optarg, 0, 1 << 30,
                                    &maxn); break;
        case 'R': bad |= cm_arg_int(me, "replies", optarg, 0, 1 << 24,
                                    &replies); break;
        case 'D': device = optarg; break;
        case 'h': fputs(usage, stdout); return 0;
        default:  fputs(usage, stderr); return 2;
        }
    }
    if (bad || ckpt == NULL || tok == NULL || corpus == NULL
        || optind != argc)
    {
        fputs(usage, stderr);
        return 2;
    }
    if ((c = cm_dialog_device(me, device, &gpu)) != 0) {
        return c;
    }
    if (gpu) {
        cm_info("%s: evaluation runs on the CPU (the CUDA backend serves"
                " training and generation)", me);
    }
    cm_corpus_init(&cp);
    if (cm_dlm_load(&m, ckpt, err, sizeof(err)) != CM_OK
        || cm_bpe_load(&b, tok, err, sizeof(err)) != CM_OK
        || cm_corpus_load(&cp, corpus, err, sizeof(err)) != CM_OK)
    {
        cm_error("%s: %s", me, err);
        return 1;
    }
    if (cm_bpe_vocab_size(b) != cm_dlm_vocab(&m)) {
        cm_error("%s: tokenizer has %d tokens, model %d", me,
                 cm_bpe_vocab_size(b), cm_dlm_vocab(&m));
        return 1;
    }
    if (cm_dialog_render(&cp, b, frac, seed, &d) != CM_OK) {
        return 1;
    }
    T = T < cm_dlm_max_seq(&m) ? T : cm_dlm_max_seq(&m);
    printf("model: %s, %zu parameters\n", m.lstm ? "LSTM" : "GPT",
           cm_dlm_num_parameters(&m));
    if (cm_dlm_eval(&m, b, d.val.ids, d.val.n, B, T, (size_t) maxn, &ev)
        != CM_OK)
    {
        cm_error("%s: evaluation failed", me);
        return 1;
    }
    printf("val: %zu conversations, %zu tokens evaluated, %zu bytes\n"
           "loss %.4f nats/token  perplexity %.2f  bits/byte %.4f\n",
           d.n_val_convs, ev.tokens, ev.bytes, ev.loss, ev.ppl, ev.bpb);
    is_val = malloc(cp.n_convs + 1);
    if (replies > 0 && is_val != NULL && cm_dlm_max_seq(&m) > 32) {
        cm_corpus_split(&cp, frac, seed, is_val);
        if (cm_dlm_reply_eval(&m, b, &cp, is_val, (size_t) replies, 32, &rq)
            == CM_OK && rq.examples > 0)
        {
            printf("greedy replies to %zu conversations: BLEU-4 %.4f (p1..p4"
                   " %.3f %.3f %.3f %.3f, brevity %.3f)  distinct-1 %.3f"
                   "  distinct-2 %.3f\n", rq.examples, rq.bleu4,
                   rq.precision[0], rq.precision[1], rq.precision[2],
                   rq.precision[3], rq.brevity, rq.distinct1, rq.distinct2);
        }
    }
    free(is_val);
    cm_dialog_data_free(&d);
    cm_corpus_free(&cp);
    cm_bpe_free(b);
    cm_dlm_free(&m);
    return 0;
}


/* ---- bench dialog ------------------------------------------------------ */

static const char cm_bench_dialog_usage[] =
    "usage: cinematch bench dialog [--config NAME] [--batch B] [--seq T]\n"
    "           [--steps N] [--ref-steps N] [--decode N] [--prompt-len N]\n"
    "           [--lstm-steps N] [--decode-threads N] [--decode-weights W]\n"
    "           [--decode-kv T]\n"
    "\n"
    "Random weights.  Prints training tokens/s (SGEMM kernels, and the\n"
    "plain-loop reference for the ratio), decode tokens/s with the KV cache\n"
    "at batch 1, 8 and 32 and without it at batch 1 (full forward over the\n"
    "context per token), and time to first token for a --prompt-len prompt.\n"
    "--lstm-steps N (default 3, 0 off) also trains the LSTM baseline of the\n"
    "same size class (lstm-tiny / lstm-small) in the same run, for the ratio.\n"
    "--steps 0 skips training (decode and time to first token only).\n"
    "--decode-threads N splits each decode step of the lm_kernels path over\n"
    "N threads (default 1; the OpenBLAS path uses OPENBLAS_NUM_THREADS).\n"
    "--decode-weights bf16 (CPUs with AVX512_BF16) also decodes with the\n"
    "weights in bf16, after the fp32 runs in the same process, and prints\n"
    "the ratio; time to first token is then the bf16 engine's.  fp32\n"
    "(default): the fp32 runs only.  --decode-kv bf16 (with --decode-weights\n"
    "bf16) then also runs bf16 weights with bf16 KV caches.\n";


static double
cm_bench_train(cm_gpt_t *m, int B, int T, int steps, double *cpu_rate)
{
    int        *inp, *tgt, i, s;
    uint64_t    t0, rng = 7;
    cm_adamw_t  o = { 1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 0 };
    double      secs, c0;

    inp = malloc((size_t) B * T * sizeof(int));
    tgt = malloc((size_t) B * T * sizeof(int));
    for (i = 0; i < B * T; i++) {
        inp[i] = (int) (cm_rng(&rng) % (uint64_t) m->config.vocab_size);
        tgt[i] = (int) (cm_rng(&rng) % (uint64_t) m->config.vocab_size);
    }
    /* one untimed step allocates grads, activations and moments */
    cm_gpt_forward(m, inp, tgt, B, T);
    cm_gpt_zero_grad(m);
    cm_gpt_backward(m, 1.0f);
    c0 = cm_cpu_now();
    t0 = cm_now_mono_ns();
    for (s = 0; s < steps; s++) {
        cm_gpt_forward(m, inp, tgt, B, T);
        cm_gpt_zero_grad(m);
        cm_gpt_backward(m, 1.0f);
        cm_gpt_clip_grad(m, 1.0f);
        o.step = s + 1;
        cm_gpt_update(m, &o);
    }
    secs = cm_secs(t0);
    *cpu_rate = (double) B * T * steps / (cm_cpu_now() - c0);
    free(inp);
    free(tgt);
    return (double) B * T * steps / secs;
}


/* The same loop for the LSTM baseline: random data, AdamW, clipping. */
static double
cm_bench_train_lstm(cm_lstm_t *m, int B, int T, int steps, double *cpu_rate)
{
    int        *inp, *tgt, i, s;
    uint64_t    t0, rng = 7;
    cm_adamw_t  o = { 1e-4f, 0.9f, 0.95f, 1e-8f, 0.1f, 0 };
    double      secs, c0;

    *cpu_rate = 0.0;
    inp = malloc((size_t) B * T * sizeof(int));
    tgt = malloc((size_t) B * T * sizeof(int));
    if (inp == NULL || tgt == NULL) {
        free(inp);
        free(tgt);
        return 0.0;
    }
    for (i = 0; i < B * T; i++) {
        inp[i] = (int) (cm_rng(&rng) % (uint64_t) m->config.vocab_size);
        tgt[i] = (int) (cm_rng(&rng) % (uint64_t) m->config.vocab_size);
    }
    cm_lstm_forward(m, inp, tgt, B, T);
    cm_lstm_zero_grad(m);
    cm_lstm_backward(m, 1.0f);
    c0 = cm_cpu_now();
    t0 = cm_now_mono_ns();
    for (s = 0; s < steps; s++) {
        cm_lstm_forward(m, inp, tgt, B, T);
        cm_lstm_zero_grad(m);
        cm_lstm_backward(m, 1.0f);
        cm_lstm_clip_grad(m, 1.0f);
        o.step = s + 1;
        cm_lstm_update(m, &o);
    }
    secs = cm_secs(t0);
    *cpu_rate = (double) B * T * steps / (cm_cpu_now() - c0);
    free(inp);
    free(tgt);
    return (double) B * T * steps / secs;
}


static int
cm_bench_dialog_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "config", required_argument, NULL, 'C' },
        { "batch", required_argument, NULL, 'B' },
        { "seq", required_argument, NULL, 'T' },
        { "steps", required_argument, NULL, 'n' },
        { "ref-steps", required_argument, NULL, 'r' },
        { "decode", required_argument, NULL, 'd' },
        { "prompt-len", required_argument, NULL, 'p' },
        { "lstm-steps", required_argument, NULL, 'l' },
        { "decode-threads", required_argument, NULL, 'D' },
        { "decode-weights", required_argument, NULL, 'W' },
        { "decode-kv", required_argument, NULL, 'K' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    const char      *me = "bench dialog", *config = "dialog-small";
    int              lstm_steps = 3;
    char             lname[64];
    cm_lstm_config_t lcfg;
    cm_lstm_t        lm;
    double           lfast, lfast_cpu;
    int              c, bad = 0, B = 8, T = 128, steps = 3, ref_steps = 1;
    int              D = 32, P = 128, bi, i, j, batches[3] = { 1, 8, 32 };
    int              rc = 1;
    cm_gpt_config_t  cfg;
    cm_gpt_t         m;
    cm_lm_engine_t   e;
    cm_lm_params_t   p;
    cm_lm_seq_t     *seqs, **sp;
    int32_t         *prompt;
    int             *ctx;
    uint64_t         t0, rng = 3;
    double           fast, ref, secs, tps[4][3], nocache, ttft = 1e30;
    double           fast_cpu, ref_cpu, cps[4][3], nocache_cpu, c0;
    int              mode, nmodes, dthreads = 1, wbf16 = 0, kvbf16 = 0;

    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'C': config = optarg; break;
        case 'B': bad |= cm_arg_int(me, "batch", optarg, 1, 1024, &B); break;
        case 'T': bad |= cm_arg_int(me, "seq", optarg, 1, 65536, &T); break;
        case 'n': bad |= cm_arg_int(me, "steps", optarg, 0, 100000, &steps);
                  break;
        case 'r': bad |= cm_arg_int(me, "ref-steps", optarg, 0, 100000,
                                    &ref_steps); break;
        case 'd': bad |= cm_arg_int(me, "decode", optarg, 1, 65536, &D);
                  break;
        case 'p': bad |= cm_arg_int(me, "prompt-len", optarg, 1, 65536, &P);
                  break;
        case 'l': bad |= cm_arg_int(me, "lstm-steps", optarg, 0, 100000,
                                    &lstm_steps); break;
        case 'D': bad |= cm_arg_int(me, "decode-threads", optarg, 1,
                                    CM_LM_MAX_THREADS, &dthreads); break;
        case 'W':
            if (strcmp(optarg, "bf16") == 0) {
                wbf16 = 1;
            } else if (strcmp(optarg, "fp32") != 0) {
                fprintf(stderr, "%s: --decode-weights: fp32 or bf16\n", me);
                bad = 1;
            }
            break;
        case 'K':
            if (strcmp(optarg, "bf16") == 0) {
                kvbf16 = 1;
            } else if (strcmp(optarg, "fp32") != 0) {
                fprintf(stderr, "%s: --decode-kv: fp32 or bf16\n", me);
                bad = 1;
            }
            break;
        case 'h': fputs(cm_bench_dialog_usage, stdout); return 0;
        default:  fputs(cm_bench_dialog_usage, stderr); return 2;
        }
    }
    if (bad || optind != argc || cm_gpt_config_named(config, 0, &cfg)
                                 != CM_OK)
    {
        fputs(cm_bench_dialog_usage, stderr);
        return 2;
    }
    if (kvbf16 && !wbf16) {
        fprintf(stderr, "%s: --decode-kv bf16 needs --decode-weights bf16\n",
                me);
        return 2;
    }
    if (wbf16 && !cm_lmk_bf16()) {
        fprintf(stderr, "%s: --decode-weights bf16: this CPU has no"
                " AVX512_BF16\n", me);
        return 2;
    }
    T = T < cfg.max_seq_len ? T : cfg.max_seq_len;
    if (P + D > cfg.max_seq_len) {
        P = cfg.max_seq_len / 2;
        D = cfg.max_seq_len - P;
    }
    if (cm_gpt_init(&m, &cfg, 1) != CM_OK) {
        return 1;
    }
    printf("bench dialog: %s L=%d NH=%d C=%d maxT=%d V=%d, %zu parameters\n",
           config, cfg.num_layers, cfg.num_heads, cfg.channels,
           cfg.max_seq_len, cfg.vocab_size, m.num_parameters);

    printf("rates: wall-clock tok/s, and [tok per CPU-second of the"
           " process] (less sensitive to other load on the machine)\n");
    fast = steps > 0 ? cm_bench_train(&m, B, T, steps, &fast_cpu) : 0.0;
    if (steps > 0) {
        printf("train B=%d T=%d AdamW: %.0f tok/s [%.0f] (SGEMM kernels, %d"
               " steps)\n", B, T, fast, fast_cpu, steps);
    }
    if (ref_steps > 0 && steps > 0) {
        m.use_ref = 1;
        ref = cm_bench_train(&m, B, T, ref_steps, &ref_cpu);
        m.use_ref = 0;
        printf("train B=%d T=%d AdamW: %.0f tok/s [%.0f] (plain-loop"
               " reference, %d steps)  ratio %.1fx [%.1fx]\n", B, T, ref,
               ref_cpu, ref_steps, fast / ref, fast_cpu / ref_cpu);
    }
    snprintf(lname, sizeof(lname), "lstm-%.40s",
             strncmp(config, "dialog-", 7) == 0 ? config + 7 : "small");
    if (lstm_steps > 0 && steps > 0
        && cm_lstm_config_named(lname, cfg.vocab_size, &lcfg) == CM_OK
        && cm_lstm_init(&lm, &lcfg, 1) == CM_OK)
    {
        int lT = T < lcfg.max_seq_len ? T : lcfg.max_seq_len;

        lfast = cm_bench_train_lstm(&lm, B, lT, lstm_steps, &lfast_cpu);
        printf("train B=%d T=%d AdamW: %.0f tok/s [%.0f] (LSTM baseline %s,"
               " L=%d H=%d, %zu parameters, %d steps)  GPT/LSTM %.2fx"
               " [%.2fx]\n", B, lT, lfast, lfast_cpu, lname,
               lcfg.num_layers, lcfg.hidden, lm.num_parameters, lstm_steps,
               fast / lfast, fast_cpu / lfast_cpu);
        cm_lstm_free(&lm);
    }

    /* decode with the KV cache: P-token prompts, then D steps timed */
    prompt = malloc((size_t) cfg.max_seq_len * sizeof(int32_t));
    ctx = malloc((size_t) cfg.max_seq_len * sizeof(int));
    seqs = calloc(32, sizeof(cm_lm_seq_t));
    sp = calloc(32, sizeof(cm_lm_seq_t *));
    if (prompt == NULL || ctx == NULL || seqs == NULL || sp == NULL
        || cm_lm_engine_init(&e, &m, 128) != CM_OK
        || cm_lm_engine_threads(&e, dthreads) != CM_OK)
    {
        free(prompt);
        free(ctx);
        free(seqs);
        free(sp);
        cm_gpt_free(&m);
        return 1;
    }
    for (i = 0; i < cfg.max_seq_len; i++) {
        prompt[i] = (int32_t) (cm_rng(&rng) % (uint64_t) cfg.vocab_size);
    }
    cm_lm_params_default(&p);
    p.max_tokens = 0;
    /* mode 0: the engine as it runs (lm_kernels where the CPU has them);
     * mode 1: the same engine on OpenBLAS, the baseline for the ratio;
     * mode 2 (--decode-weights bf16): lm_kernels with bf16 weights */
    nmodes = e.pk != NULL ? 2 + wbf16 + kvbf16 : 1;
    for (mode = 0; mode < nmodes; mode++) {
        e.use_packed = mode != 1 && e.pk != NULL;
        if (mode == 2 && cm_lm_engine_bf16(&e) != CM_OK) {
            goto fail;
        }
        if (mode == 3 && cm_lm_engine_kv_bf16(&e) != CM_OK) {
            goto fail;
        }
        for (bi = 0; bi < 3; bi++) {
            int nb = batches[bi];

            for (j = 0; j < nb; j++) {
                p.seed = (uint64_t) j + 1;
                if (cm_lm_seq_init(&seqs[j], &e, &p) != CM_OK
                    || cm_lm_prefill(&e, &seqs[j], prompt, P) != CM_OK)
                {
                    goto fail;
                }
                sp[j] = &seqs[j];
            }
            c0 = cm_cpu_now();
            t0 = cm_now_mono_ns();
            for (i = 0; i < D; i++) {
                cm_lm_step(&e, sp, nb);
            }
            secs = cm_secs(t0);
            tps[mode][bi] = (double) nb * D / secs;
            cps[mode][bi] = (double) nb * D / (cm_cpu_now() - c0);
            for (j = 0; j < nb; j++) {
                cm_lm_seq_free(&seqs[j]);
            }
        }
        printf("decode (KV cache, prompt %d, %d steps, %s%.0d%s): batch 1"
               " %.0f [%.0f], batch 8 %.0f [%.0f], batch 32 %.0f [%.0f]"
               " tok/s\n", P, D,
               !e.use_packed ? "OpenBLAS"
               : e.kv_bf16 ? "lm_kernels bf16 weights and KV, "
               : e.bf16 ? "lm_kernels bf16 weights, " : "lm_kernels, ",
               e.use_packed ? e.threads : 0,
               e.use_packed ? " thread(s)" : "",
               tps[mode][0], cps[mode][0], tps[mode][1], cps[mode][1],
               tps[mode][2], cps[mode][2]);
    }
    if (e.pk != NULL) {
        printf("decode lm_kernels / OpenBLAS: batch 1 %.2fx [%.2fx], batch 8"
               " %.2fx [%.2fx], batch 32 %.2fx [%.2fx]\n",
               tps[0][0] / tps[1][0], cps[0][0] / cps[1][0],
               tps[0][1] / tps[1][1], cps[0][1] / cps[1][1],
               tps[0][2] / tps[1][2], cps[0][2] / cps[1][2]);
        e.use_packed = 1;
    }
    if (nmodes == 4) {
        printf("decode bf16 KV / fp32 KV (bf16 weights): batch 1 %.2fx"
               " [%.2fx], batch 8 %.2fx [%.2fx], batch 32 %.2fx [%.2fx]\n",
               tps[3][0] / tps[2][0], cps[3][0] / cps[2][0],
               tps[3][1] / tps[2][1], cps[3][1] / cps[2][1],
               tps[3][2] / tps[2][2], cps[3][2] / cps[2][2]);
    }
    if (nmodes >= 3) {
        printf("decode bf16 / fp32 weights (lm_kernels): batch 1 %.2fx"
               " [%.2fx], batch 8 %.2fx [%.2fx], batch 32 %.2fx [%.2fx]\n",
               tps[2][0] / tps[0][0], cps[2][0] / cps[0][0],
               tps[2][1] / tps[0][1], cps[2][1] / cps[0][1],
               tps[2][2] / tps[0][2], cps[2][2] / cps[0][2]);
    }

    /* without the cache: a full forward over the context per token */
    for (i = 0; i < P; i++) {
        ctx[i] = prompt[i];
    }
    c0 = cm_cpu_now();
    t0 = cm_now_mono_ns();
    for (i = 0; i < D; i++) {
        int n = P + i, k, best = 0;
        const float *row;

        cm_gpt_forward(&m, ctx, NULL, 1, n);
        row = m.acts.logits + (size_t) (n - 1) * cfg.padded_vocab_size;
        for (k = 1; k < cfg.vocab_size; k++) {
            best = row[k] > row[best] ? k : best;
        }
        ctx[n] = best;
    }
    nocache = (double) D / cm_secs(t0);
    nocache_cpu = (double) D / (cm_cpu_now() - c0);
    printf("decode (no cache, full forward per token) batch 1: %.0f [%.0f]"
           " tok/s; KV cache speed-up %.1fx [%.1fx]\n", nocache, nocache_cpu,
           tps[0][0] / nocache, cps[0][0] / nocache_cpu);

    /* time to first token: prefill P tokens + one sample, best of 3 */
    for (i = 0; i < 5; i++) {
        if (cm_lm_seq_init(&seqs[0], &e, &p) != CM_OK) {
            goto fail;
        }
        c0 = cm_cpu_now();
        t0 = cm_now_mono_ns();
        cm_lm_prefill(&e, &seqs[0], prompt, P);
        secs = cm_secs(t0);
        if (secs < ttft) {
            ttft = secs;
            nocache_cpu = cm_cpu_now() - c0;
        }
        cm_lm_seq_free(&seqs[0]);
    }
    printf("time to first token (%d-token prompt, best of 5): %.1f ms [%.1f"
           " ms CPU]\n", P, ttft * 1e3, nocache_cpu * 1e3);
    rc = 0;

fail:
    cm_lm_engine_free(&e);
    free(prompt);
    free(ctx);
    free(seqs);
    free(sp);
    cm_gpt_free(&m);
    return rc;
}

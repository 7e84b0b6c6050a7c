/*
 * cmd_tokenizer.c: `cinematch train tokenizer` (byte-level BPE on the
 * training split of a dialogue corpus) and `cinematch bench tokenizer`.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/common.h"
#include "cinematch/bpe.h"
#include "cinematch/cornell.h"
#include "cmd.h"

static int cm_train_tokenizer_main(int argc, char **argv);
static int cm_bench_tokenizer_main(int argc, char **argv);

CM_COMMAND("train tokenizer", "train a byte-level BPE tokenizer on a corpus",
           cm_train_tokenizer_main);
CM_COMMAND("bench tokenizer", "BPE encode throughput (MB/s) on a corpus",
           cm_bench_tokenizer_main);


static const char cm_train_tok_usage[] =
    "usage: cinematch train tokenizer --corpus PATH --out DIR\n"
    "           [--vocab-size N] [--val-frac F] [--seed S]\n"
    "\n"
    "Trains GPT-2 style byte-level BPE on the training split of PATH (a\n"
    "Cornell directory, a plain dialogue file, or a .tsv pair file) and\n"
    "writes DIR/vocab.json and DIR/merges.txt.  The validation split (same\n"
    "--val-frac/--seed as `train dialog`) is left out.\n"
    "  --vocab-size N   tokens in total, bytes and 2 specials included"
    " (8192)\n"
    "  --val-frac F     share held out for validation (0.05)\n"
    "  --seed S         split seed (1)\n";


static int
cm_train_tokenizer_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "corpus", required_argument, NULL, 'c' },
        { "out", required_argument, NULL, 'o' },
        { "vocab-size", required_argument, NULL, 'v' },
        { "val-frac", required_argument, NULL, 'f' },
        { "seed", required_argument, NULL, 's' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    const char   *corpus = NULL, *out = NULL;
    int           vocab = 8192, c, rc;
    double        frac = 0.05;
    uint64_t      seed = 1;
    cm_corpus_t   cp;
    uint8_t      *is_val;
    const char  **texts;
    size_t       *lens, i, j, n = 0, bytes = 0;
    cm_bpe_t     *b = NULL;
    char          err[512];
    uint64_t      t0;

    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'c': corpus = optarg; break;
        case 'o': out = optarg; break;
        case 'v': vocab = atoi(optarg); break;
        case 'f': frac = atof(optarg); break;
        case 's': seed = strtoull(optarg, NULL, 10); break;
        case 'h': fputs(cm_train_tok_usage, stdout); return 0;
        default:  fputs(cm_train_tok_usage, stderr); return 2;
        }
    }
    if (corpus == NULL || out == NULL || optind != argc || vocab < 258
        || frac < 0.0 || frac >= 1.0)
    {
        fprintf(stderr, "train tokenizer: --corpus and --out are required,"
                " --vocab-size >= 258, 0 <= --val-frac < 1\n");
        fputs(cm_train_tok_usage, stderr);
        return 2;
    }

    cm_corpus_init(&cp);
    if (cm_corpus_load(&cp, corpus, err, sizeof(err)) != CM_OK) {
        cm_error("train tokenizer: %s", err);
        return 1;
    }
    is_val = malloc(cp.n_convs + 1);
    texts = malloc((cp.n_turns + 1) * sizeof(*texts));
    lens = malloc((cp.n_turns + 1) * sizeof(*lens));
    if (is_val == NULL || texts == NULL || lens == NULL) {
        cm_error("train tokenizer: out of memory");
        free(is_val);
        free(texts);
        free(lens);
        cm_corpus_free(&cp);
        return 1;
    }
    cm_corpus_split(&cp, frac, seed, is_val);
    for (i = 0; i < cp.n_convs; i++) {
        if (is_val[i]) {
            continue;
        }
        for (j = 0; j < cp.convs[i].n; j++) {
            texts[n] = cm_corpus_str(&cp, cp.turns[cp.convs[i].first + j].text);
            lens[n] = strlen(texts[n]);
            bytes += lens[n];
            n++;
        }
    }
    cm_info("train tokenizer: %zu conversations, %zu turns, %zu bytes of"
            " training text (%zu malformed lines skipped)", cp.n_convs, n,
            bytes, cp.n_malformed);
    t0 = cm_now_mono_ns();
    rc = cm_bpe_train(&b, texts, lens, n, vocab, err, sizeof(err));
    if (rc == CM_OK) {
        cm_info("train tokenizer: %d merges, vocab %d, %.1f s",
                cm_bpe_n_merges(b), cm_bpe_vocab_size(b),
                (double) (cm_now_mono_ns() - t0) / 1e9);
        rc = cm_bpe_save(b, out, err, sizeof(err));
    }
    if (rc != CM_OK) {
        cm_error("train tokenizer: %s", err);
    } else {
        printf("wrote %s/vocab.json and %s/merges.txt (vocab %d)\n", out,
               out, cm_bpe_vocab_size(b));
    }
    cm_bpe_free(b);
    free(is_val);
    free(texts);
    free(lens);
    cm_corpus_free(&cp);
    return rc == CM_OK ? 0 : 1;
}


static const char cm_bench_tok_usage[] =
    "usage: cinematch bench tokenizer --tokenizer DIR --corpus PATH"
    " [--repeat N]\n"
    "\n"
    "Encodes every turn of PATH N times (3) and prints MB/s and tokens per\n"
    "byte, with the decode rate beside it.\n";


static int
cm_bench_tokenizer_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "tokenizer", required_argument, NULL, 't' },
        { "corpus", required_argument, NULL, 'c' },
        { "repeat", required_argument, NULL, 'r' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    const char   *tok = NULL, *corpus = NULL;
    int           repeat = 3, c, r;
    cm_corpus_t   cp;
    cm_bpe_t     *b = NULL;
    cm_tokens_t   t = { 0 };
    char          err[512], *text, *dec;
    size_t        i, len = 0, off = 0, dlen;
    uint64_t      t0, t1;
    double        enc_s = 1e30, dec_s = 1e30;

    optind = 1;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 't': tok = optarg; break;
        case 'c': corpus = optarg; break;
        case 'r': repeat = atoi(optarg); break;
        case 'h': fputs(cm_bench_tok_usage, stdout); return 0;
        default:  fputs(cm_bench_tok_usage, stderr); return 2;
        }
    }
    if (tok == NULL || corpus == NULL || repeat < 1 || optind != argc) {
        fputs(cm_bench_tok_usage, stderr);
        return 2;
    }
    if (cm_bpe_load(&b, tok, err, sizeof(err)) != CM_OK) {
        cm_error("bench tokenizer: %s", err);
        return 1;
    }
    cm_corpus_init(&cp);
    if (cm_corpus_load(&cp, corpus, err, sizeof(err)) != CM_OK) {
        cm_error("bench tokenizer: %s", err);
        return 1;
    }
    /* one text, a line per turn: what `train dialog` encodes */
    for (i = 0; i < cp.n_turns; i++) {
        len += strlen(cm_corpus_str(&cp, cp.turns[i].text)) + 1;
    }
    text = malloc(len + 1);
    if (text == NULL) {
        return 1;
    }
    for (i = 0; i < cp.n_turns; i++) {
        size_t l = strlen(cm_corpus_str(&cp, cp.turns[i].text));

        memcpy(text + off, cm_corpus_str(&cp, cp.turns[i].text), l);
        off += l;
        text[off++] = '\n';
    }
    for (r = 0; r < repeat; r++) {
        t.n = 0;
        t0 = cm_now_mono_ns();
        if (cm_bpe_encode(b, text, len, 0, &t) != CM_OK) {
            free(text);
            return 1;
        }
        t1 = cm_now_mono_ns();
        enc_s = (double) (t1 - t0) / 1e9 < enc_s ? (double) (t1 - t0) / 1e9
                                                 : enc_s;
        t0 = cm_now_mono_ns();
        if (cm_bpe_decode(b, t.ids, t.n, &dec, &dlen) != CM_OK) {
            free(text);
            return 1;
        }
        t1 = cm_now_mono_ns();
        dec_s = (double) (t1 - t0) / 1e9 < dec_s ? (double) (t1 - t0) / 1e9
                                                 : dec_s;
        if (dlen != len || memcmp(dec, text, len) != 0) {
            cm_error("bench tokenizer: round trip mismatch");
            free(dec);
            free(text);
            return 1;
        }
        free(dec);
    }
    printf("tokenizer: vocab %d, %.2f MB text, %zu tokens (%.3f tokens/byte)"
           "\nencode %.2f MB/s  decode %.1f MB/s  (best of %d, 1 thread)\n",
           cm_bpe_vocab_size(b), (double) len / 1e6, t.n,
           (double) t.n / (double) len, (double) len / 1e6 / enc_s,
           (double) len / 1e6 / dec_s, repeat);
    free(t.ids);
    free(text);
    cm_bpe_free(b);
    cm_corpus_free(&cp);
    return 0;
}

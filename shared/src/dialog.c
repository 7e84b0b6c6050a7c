/*
 * dialog.c: corpus -> rendered token streams; evaluation on a stream.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/common.h"
#include "cinematch/dialog.h"


static int
cm_push(cm_tokens_t *t, int32_t id)
{
    int32_t *p;
    size_t   cap;

    if (t->n == t->cap) {
        cap = t->cap ? t->cap * 2 : 1024;
        p = realloc(t->ids, cap * sizeof(int32_t));
        if (p == NULL) {
            return CM_ENOMEM;
        }
        t->ids = p;
        t->cap = cap;
    }
    t->ids[t->n++] = id;
    return CM_OK;
}


int
cm_dialog_render_turns(const cm_bpe_t *b, const char *const *turns,
    size_t n, int close, cm_tokens_t *t)
{
    int32_t eot = cm_bpe_special(b, CM_BPE_ENDOFTURN);
    int32_t eos = cm_bpe_special(b, CM_BPE_ENDOFTEXT);
    size_t  i;
    int     rc;

    if (eot < 0 || eos < 0) {
        return CM_EINVAL;
    }
    for (i = 0; i < n; i++) {
        /* corpus text never becomes a special token */
        rc = cm_bpe_encode(b, turns[i], strlen(turns[i]), 0, t);
        if (rc != CM_OK || (rc = cm_push(t, eot)) != CM_OK) {
            return rc;
        }
    }
    return close ? cm_push(t, eos) : CM_OK;
}


int
cm_dialog_render(const cm_corpus_t *c, const cm_bpe_t *b, double frac,
    uint64_t seed, cm_dialog_data_t *out)
{
    uint8_t     *is_val;
    const char **turns = NULL;
    size_t       i, j, cap = 0;
    int          rc = CM_OK;

    memset(out, 0, sizeof(*out));
    is_val = malloc(c->n_convs + 1);
    if (is_val == NULL) {
        return CM_ENOMEM;
    }
    cm_corpus_split(c, frac, seed, is_val);
    for (i = 0; i < c->n_convs && rc == CM_OK; i++) {
        const cm_conv_t *cv = &c->convs[i];

        if (cv->n > cap) {
            const char **nt = realloc(turns, cv->n * sizeof(*turns));

            if (nt == NULL) {
                rc = CM_ENOMEM;
                break;
            }
            turns = nt;
            cap = cv->n;
        }
        for (j = 0; j < cv->n; j++) {
            turns[j] = cm_corpus_str(c, c->turns[cv->first + j].text);
        }
        rc = cm_dialog_render_turns(b, turns, cv->n, 1,
                                    is_val[i] ? &out->val : &out->train);
        if (is_val[i]) {
            out->n_val_convs++;
        } else {
            out->n_train_convs++;
        }
    }
    free(turns);
    free(is_val);
    if (rc != CM_OK) {
        cm_dialog_data_free(out);
    }
    return rc;
}


void
cm_dialog_data_free(cm_dialog_data_t *d)
{
    free(d->train.ids);
    free(d->val.ids);
    memset(d, 0, sizeof(*d));
}


int
cm_dialog_eval(cm_gpt_t *m, const cm_bpe_t *b, const int32_t *ids, size_t n,
    int B, int T, size_t max_tokens, cm_dialog_eval_t *out)
{
    int     *inp, *tgt, rc = CM_OK;
    size_t   per = (size_t) B * T, off = 0, k, len;
    double   sum = 0.0;
    int32_t  eot = cm_bpe_special(b, CM_BPE_ENDOFTURN);
    int32_t  eos = cm_bpe_special(b, CM_BPE_ENDOFTEXT);

    memset(out, 0, sizeof(*out));
    inp = malloc(per * sizeof(int));
    tgt = malloc(per * sizeof(int));
    if (inp == NULL || tgt == NULL) {
        free(inp);
        free(tgt);
        return CM_ENOMEM;
    }
    while (off + per + 1 <= n
           && (max_tokens == 0 || out->tokens + per <= max_tokens))
    {
        for (k = 0; k < per; k++) {
            inp[k] = ids[off + k];
            tgt[k] = ids[off + k + 1];
        }
        if ((rc = cm_gpt_forward(m, inp, tgt, B, T)) != CM_OK) {
            break;
        }
        sum += (double) m->mean_loss * (double) per;
        for (k = 0; k < per; k++) {
            len = 0;
            (void) cm_bpe_token(b, tgt[k], &len);
            out->bytes += (tgt[k] == eot || tgt[k] == eos) ? 1 : len;
        }
        out->tokens += per;
        off += per;
    }
    free(inp);
    free(tgt);
    if (rc != CM_OK) {
        return rc;
    }
    if (out->tokens > 0) {
        out->loss = sum / (double) out->tokens;
        out->ppl = exp(out->loss);
        out->bpb = sum / (double) out->bytes / M_LN2;
    }
    return CM_OK;
}


static int
cm_u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

    return x < y ? -1 : (x > y);
}


int
cm_dialog_ngram_bpb(const cm_bpe_t *b, const cm_tokens_t *train,
    const cm_tokens_t *val, double *unigram_bpb, double *bigram_bpb)
{
    size_t     V = (size_t) cm_bpe_vocab_size(b), i, bytes = 0, len, lo, hi;
    size_t     mid, np;
    double    *uni, lu = 0.0, lb = 0.0, pu, cab;
    uint64_t  *pairs, key;
    int32_t    eot = cm_bpe_special(b, CM_BPE_ENDOFTURN);
    int32_t    eos = cm_bpe_special(b, CM_BPE_ENDOFTEXT);
    double    *ca;

    if (train->n < 2 || val->n < 2) {
        return CM_EINVAL;
    }
    uni = calloc(V, sizeof(double));
    ca = calloc(V, sizeof(double));
    np = train->n - 1;
    pairs = malloc(np * sizeof(uint64_t));
    if (uni == NULL || ca == NULL || pairs == NULL) {
        free(uni);
        free(ca);
        free(pairs);
        return CM_ENOMEM;
    }
    for (i = 0; i < train->n; i++) {
        uni[train->ids[i]] += 1.0;
    }
    for (i = 0; i < np; i++) {
        pairs[i] = (uint64_t) train->ids[i] * V + (uint64_t) train->ids[i + 1];
        ca[train->ids[i]] += 1.0;
    }
    qsort(pairs, np, sizeof(uint64_t), cm_u64_cmp);
    for (i = 1; i < val->n; i++) {
        int32_t a = val->ids[i - 1], t = val->ids[i];

        pu = (uni[t] + 1.0) / ((double) train->n + (double) V);
        /* count of (a, t): equal range in the sorted pairs */
        key = (uint64_t) a * V + (uint64_t) t;
        lo = 0;
        hi = np;
        while (lo < hi) {
            mid = (lo + hi) / 2;
            if (pairs[mid] < key) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        for (cab = 0.0; lo < np && pairs[lo] == key; lo++) {
            cab += 1.0;
        }
        lu -= log(pu);
        lb -= log((cab + 2.0 * pu) / (ca[a] + 2.0));
        len = 0;
        (void) cm_bpe_token(b, t, &len);
        bytes += (t == eot || t == eos) ? 1 : len;
    }
    *unigram_bpb = lu / (double) bytes / M_LN2;
    *bigram_bpb = lb / (double) bytes / M_LN2;
    free(uni);
    free(ca);
    free(pairs);
    return CM_OK;
}

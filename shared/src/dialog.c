/*
 * dialog.c: corpus -> rendered token streams; evaluation on a stream.
 */
#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/common.h"
#include "cinematch/dialog.h"
#include "cinematch/lm.h"
#include "cinematch/lstm.h"


typedef int (*cm_dialog_loss_pt)(void *model, const int *inp,
    const int *tgt, int B, int T, float *mean_loss);

static int cm_dialog_eval_with(cm_dialog_loss_pt loss, void *model,
    const cm_bpe_t *b, const int32_t *ids, size_t n, int B, int T,
    size_t max_tokens, cm_dialog_eval_t *out);


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


/* The mean loss of one (B, T) batch, whatever the model. */
static int
cm_dialog_gpt_loss(void *model, const int *inp, const int *tgt, int B, int T,
    float *mean_loss)
{
    cm_gpt_t *m = model;
    int       rc = cm_gpt_forward(m, inp, tgt, B, T);

    *mean_loss = m->mean_loss;
    return rc;
}


static int
cm_dialog_lstm_loss(void *model, const int *inp, const int *tgt, int B,
    int T, float *mean_loss)
{
    cm_lstm_t *m = model;
    int        rc = cm_lstm_forward(m, inp, tgt, B, T);

    *mean_loss = m->mean_loss;
    return rc;
}


int
cm_dialog_eval(cm_gpt_t *m, const cm_bpe_t *b, const int32_t *ids, size_t n,
    int B, int T, size_t max_tokens, cm_dialog_eval_t *out)
{
    return cm_dialog_eval_with(cm_dialog_gpt_loss, m, b, ids, n, B, T,
                               max_tokens, out);
}


int
cm_dialog_eval_lstm(cm_lstm_t *m, const cm_bpe_t *b, const int32_t *ids,
    size_t n, int B, int T, size_t max_tokens, cm_dialog_eval_t *out)
{
    return cm_dialog_eval_with(cm_dialog_lstm_loss, m, b, ids, n, B, T,
                               max_tokens, out);
}


/* The same windows, targets and byte count for every kind of model, so
 * their numbers compare. */
static int
cm_dialog_eval_with(cm_dialog_loss_pt loss, void *model, const cm_bpe_t *b,
    const int32_t *ids, size_t n, int B, int T, size_t max_tokens,
    cm_dialog_eval_t *out)
{
    float    ml = 0.0f;
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
        if ((rc = loss(model, inp, tgt, B, T, &ml)) != CM_OK) {
            break;
        }
        sum += (double) ml * (double) per;
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


/* ---- reply quality: BLEU-4, distinct-n ---------------------------------- */

typedef struct {
    char   **w;          /* words (pointers into one lower-cased copy) */
    size_t   n;
    char    *buf;
} cm_words_t;


static int
cm_words_split(const char *s, cm_words_t *out)
{
    size_t  len = strlen(s), i, cap = 8;
    char   *p;

    memset(out, 0, sizeof(*out));
    out->buf = malloc(len + 1);
    out->w = malloc(cap * sizeof(char *));
    if (out->buf == NULL || out->w == NULL) {
        return CM_ENOMEM;
    }
    for (i = 0; i <= len; i++) {
        out->buf[i] = (char) tolower((unsigned char) s[i]);
    }
    for (p = strtok(out->buf, " \t\n"); p != NULL; p = strtok(NULL, " \t\n"))
    {
        if (out->n == cap) {
            char **nw = realloc(out->w, cap * 2 * sizeof(char *));

            if (nw == NULL) {
                return CM_ENOMEM;
            }
            out->w = nw;
            cap *= 2;
        }
        out->w[out->n++] = p;
    }
    return CM_OK;
}


static void
cm_words_free(cm_words_t *w)
{
    free(w->w);
    free(w->buf);
    memset(w, 0, sizeof(*w));
}


static int
cm_ngram_eq(char *const *a, char *const *b, int n)
{
    int k;

    for (k = 0; k < n; k++) {
        if (strcmp(a[k], b[k]) != 0) {
            return 0;
        }
    }
    return 1;
}


/* Clipped matches of the hypothesis' n-grams in the reference. */
static size_t
cm_ngram_clipped(const cm_words_t *h, const cm_words_t *r, int n)
{
    size_t  i, j, k, match = 0, ch, cr;

    if (h->n < (size_t) n) {
        return 0;
    }
    for (i = 0; i + n <= h->n; i++) {
        /* count each distinct n-gram once, at its first occurrence */
        for (k = 0; k < i; k++) {
            if (cm_ngram_eq(h->w + k, h->w + i, n)) {
                break;
            }
        }
        if (k < i) {
            continue;
        }
        for (ch = 0, k = i; k + n <= h->n; k++) {
            ch += cm_ngram_eq(h->w + k, h->w + i, n);
        }
        for (cr = 0, j = 0; j + n <= r->n; j++) {
            cr += cm_ngram_eq(r->w + j, h->w + i, n);
        }
        match += ch < cr ? ch : cr;
    }
    return match;
}


static int
cm_str_cmp(const void *a, const void *b)
{
    return strcmp(*(char *const *) a, *(char *const *) b);
}


/* unique / total over the joined n-grams in grams[0..n) (sorted here) */
static double
cm_distinct(char **grams, size_t n)
{
    size_t i, u = 0;

    if (n == 0) {
        return 0.0;
    }
    qsort(grams, n, sizeof(char *), cm_str_cmp);
    for (i = 0; i < n; i++) {
        u += i == 0 || strcmp(grams[i], grams[i - 1]) != 0;
    }
    return (double) u / (double) n;
}


int
cm_dialog_bleu(const char *const *hyps, const char *const *refs, size_t n,
    cm_dialog_replies_t *out)
{
    size_t       i, j, hyp_len = 0, ref_len = 0, ng[2] = { 0 };
    size_t       match[4] = { 0 }, total[4] = { 0 }, cap_g[2] = { 0 };
    char       **grams[2] = { NULL, NULL };
    cm_words_t   hw, rw;
    int          g, rc = CM_OK, zero = 0;
    double       logsum = 0.0;

    memset(out, 0, sizeof(*out));
    for (i = 0; i < n && rc == CM_OK; i++) {
        memset(&rw, 0, sizeof(rw));
        if (cm_words_split(hyps[i], &hw) != CM_OK
            || cm_words_split(refs[i], &rw) != CM_OK)
        {
            cm_words_free(&hw);     /* a split frees nothing itself */
            cm_words_free(&rw);
            rc = CM_ENOMEM;
            break;
        }
        hyp_len += hw.n;
        ref_len += rw.n;
        for (g = 0; g < 4; g++) {
            match[g] += cm_ngram_clipped(&hw, &rw, g + 1);
            total[g] += hw.n >= (size_t) g + 1 ? hw.n - (size_t) g : 0;
        }
        for (g = 0; g < 2 && rc == CM_OK; g++) {
            for (j = 0; j + (size_t) g < hw.n; j++) {
                size_t  l = strlen(hw.w[j])
                            + (g ? strlen(hw.w[j + 1]) + 1 : 0);
                char   *gs = malloc(l + 1);

                if (gs == NULL) {
                    rc = CM_ENOMEM;
                    break;
                }
                snprintf(gs, l + 1, g ? "%s\x01%s" : "%s", hw.w[j],
                         g ? hw.w[j + 1] : "");
                if (ng[g] == cap_g[g]) {
                    size_t  nc = cap_g[g] ? cap_g[g] * 2 : 1024;
                    char  **nn = realloc(grams[g], nc * sizeof(char *));

                    if (nn == NULL) {
                        free(gs);
                        rc = CM_ENOMEM;
                        break;
                    }
                    grams[g] = nn;
                    cap_g[g] = nc;
                }
                grams[g][ng[g]++] = gs;
            }
        }
        cm_words_free(&hw);
        cm_words_free(&rw);
    }
    if (rc == CM_OK) {
        out->examples = n;
        for (g = 0; g < 4; g++) {
            out->precision[g] = total[g] ? (double) match[g] / total[g] : 0.0;
            zero |= match[g] == 0;
            logsum += match[g] ? log(out->precision[g]) : 0.0;
        }
        out->brevity = hyp_len == 0 ? 0.0
                       : hyp_len >= ref_len ? 1.0
                       : exp(1.0 - (double) ref_len / (double) hyp_len);
        out->bleu4 = zero ? 0.0 : out->brevity * exp(logsum / 4.0);
        out->distinct1 = cm_distinct(grams[0], ng[0]);
        out->distinct2 = cm_distinct(grams[1], ng[1]);
    }
    for (g = 0; g < 2; g++) {
        for (i = 0; i < ng[g]; i++) {
            free(grams[g][i]);
        }
        free(grams[g]);
    }
    return rc;
}


int
cm_dialog_reply_eval(const cm_gpt_t *m, const cm_bpe_t *b,
    const cm_corpus_t *c, const uint8_t *is_val, size_t max_examples,
    int max_tokens, cm_dialog_replies_t *out)
{
    enum { BATCH = 16 };
    cm_lm_engine_t   e;
    cm_lm_params_t   p;
    cm_lm_seq_t      seq[BATCH], *sp[BATCH];
    cm_tokens_t      ctx = { 0 }, gen[BATCH];
    size_t           conv_of[BATCH], i, k, nb, nh = 0;
    char           **hyps = NULL;
    const char     **refs = NULL;
    int              rc = CM_OK, n, room;
    const char      *turns[512];

    memset(out, 0, sizeof(*out));
    if (max_tokens < 1 || max_tokens >= m->config.max_seq_len) {
        return CM_EINVAL;
    }
    hyps = calloc(max_examples + 1, sizeof(char *));
    refs = calloc(max_examples + 1, sizeof(char *));
    if (hyps == NULL || refs == NULL
        || cm_lm_engine_init(&e, m, 64) != CM_OK)
    {
        free(hyps);
        free(refs);
        return CM_ENOMEM;
    }
    cm_lm_params_default(&p);
    p.temperature = 0.0f;
    p.repetition_penalty = 1.0f;
    p.max_tokens = max_tokens;
    p.min_tokens = 1;       /* greedy would often pick <|endoftext|> */
    p.stop[0] = cm_bpe_special(b, CM_BPE_ENDOFTURN);
    p.stop[1] = cm_bpe_special(b, CM_BPE_ENDOFTEXT);
    p.n_stop = 2;
    room = m->config.max_seq_len - max_tokens;
    memset(gen, 0, sizeof(gen));

    i = 0;
    while (rc == CM_OK && nh < max_examples && i < c->n_convs) {
        /* admit a batch of examples */
        for (nb = 0; nb < BATCH && i < c->n_convs && nh + nb < max_examples;
             i++)
        {
            const cm_conv_t *cv = &c->convs[i];

            if (!is_val[i] || cv->n < 2 || cv->n > 512) {
                continue;
            }
            for (k = 0; k + 1 < cv->n; k++) {
                turns[k] = cm_corpus_str(c, c->turns[cv->first + k].text);
            }
            ctx.n = 0;
            if ((rc = cm_dialog_render_turns(b, turns, cv->n - 1, 0, &ctx))
                != CM_OK)
            {
                break;
            }
            n = (int) ctx.n > room ? room : (int) ctx.n;
            if (cm_lm_seq_init(&seq[nb], &e, &p) != CM_OK) {
                rc = CM_ENOMEM;
                break;
            }
            if ((rc = cm_lm_prefill(&e, &seq[nb], ctx.ids + ctx.n - n, n))
                != CM_OK)
            {
                cm_lm_seq_free(&seq[nb]);
                break;
            }
            sp[nb] = &seq[nb];
            gen[nb].n = 0;
            conv_of[nb] = i;
            nb++;
        }
        /* decode the batch together, one step for all running sequences */
        for ( ;; ) {
            int running = 0;

            for (k = 0; k < nb && rc == CM_OK; k++) {
                if (seq[k].finish != CM_LM_RUNNING) {
                    continue;
                }
                if (gen[k].n == gen[k].cap) {
                    size_t   nc = gen[k].cap ? gen[k].cap * 2 : 64;
                    int32_t *ni = realloc(gen[k].ids, nc * sizeof(int32_t));

                    if (ni == NULL) {
                        rc = CM_ENOMEM;
                        break;
                    }
                    gen[k].ids = ni;
                    gen[k].cap = nc;
                }
                gen[k].ids[gen[k].n++] = seq[k].next;
                running++;
            }
            if (running == 0 || rc != CM_OK) {
                break;
            }
            cm_lm_step(&e, sp, (int) nb);
        }
        for (k = 0; k < nb; k++) {
            const cm_conv_t *cv = &c->convs[conv_of[k]];

            if (rc == CM_OK
                && cm_bpe_decode(b, gen[k].ids, gen[k].n, &hyps[nh], NULL)
                   != CM_OK)
            {
                rc = CM_ENOMEM;
            }
            if (rc == CM_OK) {
                refs[nh++] = cm_corpus_str(c,
                                           c->turns[cv->first + cv->n - 1].text);
            }
            cm_lm_seq_free(&seq[k]);
        }
        if (nb == 0) {
            break;
        }
    }
    if (rc == CM_OK && nh > 0) {
        rc = cm_dialog_bleu((const char *const *) hyps, refs, nh, out);
    }
    for (k = 0; k < nh; k++) {
        free(hyps[k]);
    }
    for (k = 0; k < BATCH; k++) {
        free(gen[k].ids);
    }
    free(hyps);
    free(refs);
    free(ctx.ids);
    cm_lm_engine_free(&e);
    return rc;
}


/*
 * The LSTM's greedy replies, on exactly the examples and contexts
 * cm_dialog_reply_eval picks for a GPT of the same maxT (validation
 * conversations of 2..512 turns in corpus order, the earlier turns
 * rendered and cut to their last maxT - max_tokens tokens), with the same
 * decoding (argmax, end of turn / end of text stop the reply and are
 * masked for the first token).  One sequence at a time: the state is two
 * (L, H) vectors, each step two SGEMVs per layer.
 */
int
cm_dialog_reply_eval_lstm(const cm_lstm_t *m, const cm_bpe_t *b,
    const cm_corpus_t *c, const uint8_t *is_val, size_t max_examples,
    int max_tokens, cm_dialog_replies_t *out)
{
    cm_lstm_state_t   st;
    cm_tokens_t       ctx = { 0 }, gen = { 0 };
    size_t            i, k, nh = 0;
    char            **hyps = NULL;
    const char      **refs = NULL;
    const char       *turns[512];
    int               rc = CM_OK, n, room, t, V = m->config.vocab_size, best;
    int32_t           eot = cm_bpe_special(b, CM_BPE_ENDOFTURN);
    int32_t           eos = cm_bpe_special(b, CM_BPE_ENDOFTEXT);

    memset(out, 0, sizeof(*out));
    if (max_tokens < 1 || max_tokens >= m->config.max_seq_len) {
        return CM_EINVAL;
    }
    hyps = calloc(max_examples + 1, sizeof(char *));
    refs = calloc(max_examples + 1, sizeof(char *));
    if (hyps == NULL || refs == NULL || cm_lstm_state_init(&st, m) != CM_OK) {
        free(hyps);
        free(refs);
        return CM_ENOMEM;
    }
    room = m->config.max_seq_len - max_tokens;
    for (i = 0; rc == CM_OK && nh < max_examples && i < c->n_convs; i++) {
        const cm_conv_t *cv = &c->convs[i];

        if (!is_val[i] || cv->n < 2 || cv->n > 512) {
            continue;
        }
        for (k = 0; k + 1 < cv->n; k++) {
            turns[k] = cm_corpus_str(c, c->turns[cv->first + k].text);
        }
        ctx.n = 0;
        if ((rc = cm_dialog_render_turns(b, turns, cv->n - 1, 0, &ctx))
            != CM_OK)
        {
            break;
        }
        n = (int) ctx.n > room ? room : (int) ctx.n;
        cm_lstm_state_reset(&st, m);
        for (k = ctx.n - (size_t) n; rc == CM_OK && k < ctx.n; k++) {
            rc = cm_lstm_step(m, &st, ctx.ids[k], k + 1 == ctx.n);
        }
        gen.n = 0;
        for (t = 0; rc == CM_OK && t < max_tokens; t++) {
            best = -1;
            for (k = 0; k < (size_t) V; k++) {
                if (t == 0 && ((int32_t) k == eot || (int32_t) k == eos)) {
                    continue;
                }
                if (best < 0 || st.logits[k] > st.logits[best]) {
                    best = (int) k;
                }
            }
            if (best == eot || best == eos) {
                break;
            }
            if ((rc = cm_push(&gen, best)) != CM_OK) {
                break;
            }
            if (t + 1 < max_tokens) {
                rc = cm_lstm_step(m, &st, best, 1);
            }
        }
        if (rc == CM_OK
            && cm_bpe_decode(b, gen.ids, gen.n, &hyps[nh], NULL) != CM_OK)
        {
            rc = CM_ENOMEM;
        }
        if (rc == CM_OK) {
            refs[nh++] = cm_corpus_str(c, c->turns[cv->first + cv->n - 1].text);
        }
    }
    if (rc == CM_OK && nh > 0) {
        rc = cm_dialog_bleu((const char *const *) hyps, refs, nh, out);
    }
    for (k = 0; k < nh; k++) {
        free(hyps[k]);
    }
    free(hyps);
    free(refs);
    free(ctx.ids);
    free(gen.ids);
    cm_lstm_state_free(&st);
    return rc;
}

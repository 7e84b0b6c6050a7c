/*
 * serve_dialog.c: generation streams for the dialog model: prompt
 * rendering and truncation, batched decode, UTF-8 and stop-string safe
 * text.  See cinematch/serve_dialog.h.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/common.h"
#include "cinematch/serve_dialog.h"
#include "cinematch/validate.h"

/* prompt tokens per decode step over all streams still prefilling: a
 * step with them costs about as much as two 32-stream decode steps, which
 * bounds what a burst of new streams adds to the running ones' gaps */
#define CM_DLG_PREFILL  64

struct cm_dlg_server_s {
    cm_gpt_t         model;
    cm_bpe_t        *bpe;
    cm_lm_engine_t   eng;
    int              max_seqs;
    int32_t          eot;
    int32_t          eos;
    char             version[64];
};


const char *
cm_dlg_finish_name(cm_dlg_finish_t f)
{
    switch (f) {
    case CM_DLG_FINISH_STOP:    return "stop";
    case CM_DLG_FINISH_LENGTH:  return "length";
    default:                    return "none";
    }
}


int
cm_dlg_server_open(cm_dlg_server_t **out, const char *dir,
                   const char *version, int max_seqs, char *err,
                   size_t errlen)
{
    cm_dlg_server_t  *s;
    char              path[1024];
    int               rc;

    *out = NULL;
    if (max_seqs < 1 || max_seqs > 256) {
        return cm_seterr(err, errlen, CM_EINVAL, "max_seqs must be 1..256");
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
    }
    snprintf(path, sizeof(path), "%s/model.bin", dir);
    rc = cm_gpt_load(&s->model, path, err, errlen);
    if (rc != CM_OK) {
        free(s);
        return rc;
    }
    snprintf(path, sizeof(path), "%s/tokenizer", dir);
    rc = cm_bpe_load(&s->bpe, path, err, errlen);
    if (rc != CM_OK) {
        cm_gpt_free(&s->model);
        free(s);
        return rc;
    }
    s->eot = cm_bpe_special(s->bpe, CM_BPE_ENDOFTURN);
    s->eos = cm_bpe_special(s->bpe, CM_BPE_ENDOFTEXT);
    if (s->eot < 0 || cm_bpe_vocab_size(s->bpe) > s->model.config.vocab_size) {
        cm_seterr(err, errlen, CM_EFORMAT, "%s: tokenizer does not match the"
                  " model (vocab %d > %d or no <|eot|>)", dir,
                  cm_bpe_vocab_size(s->bpe), s->model.config.vocab_size);
        cm_bpe_free(s->bpe);
        cm_gpt_free(&s->model);
        free(s);
        return CM_EFORMAT;
    }
    /* one row per running sequence per step, plus up to CM_DLG_PREFILL
     * prompt tokens of new streams (chunked prefill) in the same forward */
    rc = cm_lm_engine_init(&s->eng, &s->model, max_seqs + CM_DLG_PREFILL);
    if (rc != CM_OK) {
        cm_bpe_free(s->bpe);
        cm_gpt_free(&s->model);
        free(s);
        return cm_seterr(err, errlen, rc, "engine: out of memory");
    }
    s->eng.prefill_budget = CM_DLG_PREFILL;
    s->max_seqs = max_seqs;
    snprintf(s->version, sizeof(s->version), "%s", version);
    *out = s;
    return CM_OK;
}


int
cm_dlg_server_threads(cm_dlg_server_t *s, int n)
{
    return cm_lm_engine_threads(&s->eng, n);
}


int
cm_dlg_server_bf16(cm_dlg_server_t *s)
{
    return cm_lm_engine_bf16(&s->eng);
}


int
cm_dlg_server_kv_bf16(cm_dlg_server_t *s)
{
    return cm_lm_engine_kv_bf16(&s->eng);
}


void
cm_dlg_server_free(cm_dlg_server_t *s)
{
    if (s == NULL) {
        return;
    }
    cm_lm_engine_free(&s->eng);
    cm_bpe_free(s->bpe);
    cm_gpt_free(&s->model);
    free(s);
}


const char *
cm_dlg_server_version(const cm_dlg_server_t *s)
{
    return s->version;
}


int
cm_dlg_server_max_seqs(const cm_dlg_server_t *s)
{
    return s->max_seqs;
}


int
cm_dlg_server_context(const cm_dlg_server_t *s)
{
    return s->model.config.max_seq_len;
}


/* Length of the longest suffix of text[0..len) that is a proper prefix of
 * some stop string: those bytes might still become a stop string. */
static size_t
cm_dlg_stop_holdback(const cm_dlg_stream_t *st, size_t len)
{
    size_t  best = 0, k, i;
    int     j;

    for (j = 0; j < st->nstops; j++) {
        for (k = st->stop_len[j] - 1; k > best; k--) {
            if (k > len) {
                continue;
            }
            for (i = 0; i < k && st->text[len - k + i] == st->stops[j][i];
                 i++)
            {
                /* compare */
            }
            if (i == k) {
                best = k;
                break;
            }
        }
    }
    return best;
}


/* Bytes at the end of text[0..len) that start an incomplete UTF-8
 * sequence (0..3). */
static size_t
cm_dlg_utf8_tail(const char *text, size_t len)
{
    size_t          back, need;
    unsigned char   c;

    for (back = 1; back <= 3 && back <= len; back++) {
        c = (unsigned char) text[len - back];
        if ((c & 0xc0) == 0x80) {
            continue;                /* continuation byte: look further */
        }
        need = (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3
               : (c & 0xf8) == 0xf0 ? 4 : 1;
        return need > back ? back : 0;
    }
    return 0;
}


static void
cm_dlg_recompute(cm_dlg_stream_t *st)
{
    size_t  hold, j, pos;
    char   *hit;
    int     k;

    /* a complete stop string ends the stream; nothing from it on is sent */
    for (k = 0; k < st->nstops; k++) {
        hit = memmem(st->text, st->len, st->stops[k], st->stop_len[k]);
        if (hit != NULL) {
            pos = (size_t) (hit - st->text);
            st->len = pos;
            st->ready = pos;
            st->finish = CM_DLG_FINISH_STOP;
            return;
        }
    }
    if (st->finish != CM_DLG_FINISH_NONE) {
        /* ended: all of it goes, but never a broken code point */
        st->ready = st->len - cm_dlg_utf8_tail(st->text, st->len);
        st->len = st->ready;
        return;
    }
    hold = cm_dlg_stop_holdback(st, st->len);
    j = st->len - hold;
    j -= cm_dlg_utf8_tail(st->text, j);
    st->ready = j;
}


void
cm_dlg_stream_push(cm_dlg_stream_t *st, const uint8_t *p, size_t n)
{
    if (st->finish != CM_DLG_FINISH_NONE) {
        return;
    }
    if (n > sizeof(st->text) - st->len) {
        /* the reader is far behind: end rather than lose text silently */
        n = sizeof(st->text) - st->len;
        st->finish = CM_DLG_FINISH_LENGTH;
    }
    memcpy(st->text + st->len, p, n);
    st->len += n;
    cm_dlg_recompute(st);
}


void
cm_dlg_stream_end(cm_dlg_stream_t *st, cm_dlg_finish_t f)
{
    if (st->finish == CM_DLG_FINISH_NONE) {
        st->finish = f;
    }
    cm_dlg_recompute(st);
}


/* Bytes the UTF-8 sequence that starts with lead byte c claims (1 for a
 * byte that cannot start one). */
static size_t
cm_dlg_utf8_need(unsigned char c)
{
    return (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3
           : (c & 0xf8) == 0xf0 ? 4 : 1;
}


/*
 * Ready bytes go out as valid UTF-8 only: a byte that does not start a
 * valid sequence (a stray continuation byte, a lead byte whose sequence is
 * broken, overlong or a surrogate) is replaced by U+FFFD, so every reader
 * (SSE, JSON, PostgreSQL) gets text it can keep.  Input is consumed only as
 * far as its output fits in cap.
 */
static const unsigned char  cm_dlg_fffd[3] = { 0xef, 0xbf, 0xbd };  /* U+FFFD */


size_t
cm_dlg_take(cm_dlg_stream_t *st, char *out, size_t cap, int *done)
{
    size_t          i = 0, o = 0, need;
    unsigned char   c;

    while (i < st->ready) {
        c = (unsigned char) st->text[i];
        need = c < 0x80 ? 1 : cm_dlg_utf8_need(c);
        if (c >= 0x80
            && (need == 1 || i + need > st->ready
                || cm_utf8_valid(st->text + i, need, NULL) != 1))
        {
            if (o + 3 > cap) {
                break;
            }
            memcpy(out + o, cm_dlg_fffd, sizeof(cm_dlg_fffd));
            o += sizeof(cm_dlg_fffd);
            i += 1;
            continue;
        }
        if (o + need > cap) {
            break;
        }
        memcpy(out + o, st->text + i, need);
        o += need;
        i += need;
    }
    memmove(st->text, st->text + i, st->len - i);
    st->len -= i;
    st->ready -= i;
    *done = st->finish != CM_DLG_FINISH_NONE && st->len == 0;
    return o;
}


size_t
cm_dlg_context_fit(const size_t *ntok, size_t n, size_t budget,
                   size_t *first, int *cut)
{
    size_t  total = 0, i = n;

    *cut = 0;
    while (i > 0 && total + ntok[i - 1] <= budget) {
        total += ntok[i - 1];
        i--;
    }
    if (i == n && n > 0) {
        /* not even the newest turn fits: its last budget tokens */
        *first = n - 1;
        *cut = 1;
        return budget;
    }
    *first = i;
    return total;
}


int
cm_dlg_start(cm_dlg_server_t *s, cm_dlg_stream_t *st,
             const char *const *turns, const size_t *turn_lens, size_t nturns,
             const cm_lm_params_t *params, const char *const *stops,
             int nstops, char *err, size_t errlen)
{
    cm_tokens_t     t;
    cm_lm_params_t  p;
    size_t          i, keep, maxT, first;
    size_t          ntok[CM_DLG_MAX_TURNS];
    int             rc, cut;

    memset(st, 0, sizeof(*st));
    if (nturns == 0 || nturns > CM_DLG_MAX_TURNS) {
        return cm_seterr(err, errlen, CM_EINVAL, "1..%d turns",
                         CM_DLG_MAX_TURNS);
    }
    if (nstops < 0 || nstops > CM_DLG_MAX_STOPS) {
        return cm_seterr(err, errlen, CM_EINVAL, "at most %d stop strings",
                         CM_DLG_MAX_STOPS);
    }
    for (i = 0; i < (size_t) nstops; i++) {
        size_t l = strlen(stops[i]);

        if (l == 0 || l > CM_DLG_MAX_STOP_LEN) {
            return cm_seterr(err, errlen, CM_EINVAL, "stop strings must be"
                             " 1..%d bytes", CM_DLG_MAX_STOP_LEN);
        }
        memcpy(st->stops[i], stops[i], l + 1);
        st->stop_len[i] = l;
    }
    st->nstops = nstops;

    p = *params;
    if (p.max_tokens <= 0 || p.max_tokens > CM_DLG_MAX_TOKENS) {
        p.max_tokens = CM_DLG_MAX_TOKENS;
    }
    maxT = (size_t) s->model.config.max_seq_len;
    if ((size_t) p.max_tokens >= maxT) {
        p.max_tokens = (int) (maxT / 2);
    }
    p.stop[0] = s->eot;
    p.n_stop = 1;
    if (s->eos >= 0) {
        p.stop[p.n_stop++] = s->eos;
    }

    memset(&t, 0, sizeof(t));
    for (i = 0; i < nturns; i++) {
        size_t before = t.n;

        rc = cm_bpe_encode(s->bpe, turns[i], turn_lens[i], 0, &t);
        if (rc == CM_OK && t.n == t.cap) {
            int32_t *ids = realloc(t.ids, (t.cap + 16) * sizeof(int32_t));

            rc = ids != NULL ? CM_OK : CM_ENOMEM;
            if (ids != NULL) {
                t.ids = ids;
                t.cap += 16;
            }
        }
        if (rc != CM_OK) {
            free(t.ids);
            return cm_seterr(err, errlen, rc, "tokenizer: out of memory");
        }
        t.ids[t.n++] = s->eot;
        ntok[i] = t.n - before;
    }
    /* the oldest whole turns give way so the reply has room; a turn is
     * never cut, except the newest when it alone is too long: then its
     * tail is kept (the words nearest the reply), and the stream says so */
    keep = cm_dlg_context_fit(ntok, nturns, maxT - (size_t) p.max_tokens,
                              &first, &cut);
    if (keep < t.n) {
        memmove(t.ids, t.ids + (t.n - keep), keep * sizeof(int32_t));
        t.n = keep;
    }
    st->context_turns = (int) (nturns - first);
    st->dropped_turns = (int) first;
    st->truncated = cut;
    rc = cm_lm_seq_init(&st->seq, &s->eng, &p);
    if (rc != CM_OK) {
        free(t.ids);
        return cm_seterr(err, errlen, rc, "KV cache: out of memory");
    }
    /* the prompt runs in chunks inside the next cm_dlg_step calls, batched
     * with the other streams' tokens, so a new stream does not stall the
     * running ones for a whole prefill */
    rc = cm_lm_feed(&s->eng, &st->seq, t.ids, (int) t.n);
    free(t.ids);
    if (rc != CM_OK) {
        cm_lm_seq_free(&st->seq);
        return cm_seterr(err, errlen, rc, "prefill failed");
    }
    st->prompt_tokens = (int) t.n;
    st->started = 1;
    return CM_OK;
}


/* Emits st's token sampled by the last step (never a sampled stop token),
 * and ends the stream at once when that was its last one (max_tokens or a
 * full context), rather than a step later. */
static void
cm_dlg_emit(cm_dlg_server_t *s, cm_dlg_stream_t *st)
{
    cm_lm_seq_t    *q = &st->seq;
    const uint8_t  *tok;
    size_t          tl;

    tok = cm_bpe_token(s->bpe, q->next, &tl);
    if (tok != NULL) {
        cm_dlg_stream_push(st, tok, tl);
    }
    st->completion_tokens++;
    if (st->finish == CM_DLG_FINISH_NONE
        && ((q->params.max_tokens > 0
             && q->n_generated >= q->params.max_tokens)
            || q->pos >= s->model.config.max_seq_len))
    {
        q->finish = q->pos >= s->model.config.max_seq_len ? CM_LM_CONTEXT
                                                          : CM_LM_LENGTH;
    }
}


int
cm_dlg_step(cm_dlg_server_t *s, cm_dlg_stream_t **streams, int n)
{
    cm_lm_seq_t    *seqs[256];
    int             gen[256], i, m = 0, k;

    for (i = 0; i < n && m < 256; i++) {
        cm_dlg_stream_t *st = streams[i];

        if (!st->started || st->finish != CM_DLG_FINISH_NONE
            || st->seq.finish != CM_LM_RUNNING)
        {
            continue;
        }
        /* a prompt still running, or the token emitted after the last
         * step, which this step feeds */
        gen[m] = st->seq.n_generated;
        seqs[m++] = &st->seq;
    }
    if (m > 0) {
        cm_lm_step(&s->eng, seqs, m);
    }
    /* a token sampled in this step goes into the text now, so it reaches
     * the ring after this step, not the next one */
    for (i = 0, k = 0; i < n && k < m; i++) {
        cm_dlg_stream_t *st = streams[i];

        if (&st->seq != seqs[k]) {
            continue;
        }
        if (st->seq.n_generated > gen[k] && st->seq.finish != CM_LM_STOP) {
            cm_dlg_emit(s, st);
        }
        k++;
    }
    for (i = 0; i < n; i++) {
        cm_dlg_stream_t *st = streams[i];

        if (st->started && st->finish == CM_DLG_FINISH_NONE
            && st->seq.finish != CM_LM_RUNNING)
        {
            cm_dlg_stream_end(st, st->seq.finish == CM_LM_STOP
                                  ? CM_DLG_FINISH_STOP
                                  : CM_DLG_FINISH_LENGTH);
        }
    }
    return m;
}


void
cm_dlg_stream_free(cm_dlg_stream_t *st)
{
    if (st->started) {
        cm_lm_seq_free(&st->seq);
        st->started = 0;
    }
}

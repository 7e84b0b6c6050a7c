/*
 * cinematch/lm.h: the dialog LM inference engine: KV cache, prefill as
 * SGEMMs, batched decode of many sequences in one step, sampling.
 *
 * Ownership and threading:
 *   - a cm_gpt_t (gpt.h) holds the weights; the engine only reads them, so
 *     several engines (one per thread) may share one model;
 *   - a cm_lm_engine_t holds scratch for up to max_rows token rows per
 *     forward; use it from one thread at a time; where the CPU runs the
 *     lm_kernels.h kernels it also holds a copy of the weights packed for
 *     them at init, so an engine must be made after the weights are final
 *     (training further means a new engine);
 *   - a cm_lm_seq_t is one conversation being generated: its own KV cache
 *     (L x maxT x C keys and values), sampling parameters, RNG and stop
 *     state.  Sequences are independent; any subset may be stepped
 *     together, which is what continuous batching in the daemon does:
 *     admit new sequences with cm_lm_prefill, advance all running ones
 *     with one cm_lm_step, retire the finished ones, repeat.
 *
 * Protocol for one sequence:
 *     cm_lm_seq_init(&s, &eng, &params);
 *     cm_lm_prefill(&eng, &s, prompt, n);     samples the first token
 *     while (s.finish == CM_LM_RUNNING) {
 *         emit(s.next);                       token to stream to the user
 *         cm_lm_step(&eng, &sp, 1);           feeds it, samples the next
 *     }
 *     cm_lm_seq_free(&s);
 * A sampled stop token ends the sequence (finish = CM_LM_STOP) and is not
 * emitted; max_tokens counts emitted tokens (CM_LM_LENGTH); a full context
 * ends with CM_LM_CONTEXT.  Cancelling is simply not stepping a sequence
 * again and freeing it.
 *
 * Reproducibility: each sequence samples from its own RNG seeded by
 * params.seed, so a given (model, prompt, params) yields the same tokens
 * whatever else shares its batch (up to float rounding differences between
 * SGEMM shapes, which the tests bound).
 */
#ifndef CINEMATCH_LM_H
#define CINEMATCH_LM_H

#include <stddef.h>
#include <stdint.h>

#include "cinematch/gpt.h"
#include "cinematch/lm_kernels.h"

#define CM_LM_MAX_STOP  8
#define CM_LM_MAX_THREADS 16

typedef enum {
    CM_LM_RUNNING = 0,
    CM_LM_STOP,          /* sampled a stop token */
    CM_LM_LENGTH,        /* emitted max_tokens */
    CM_LM_CONTEXT        /* KV cache full (maxT tokens) */
} cm_lm_finish_t;

typedef struct {
    float     temperature;         /* 0: greedy (argmax) */
    int       top_k;               /* keep the k most likely; 0: all */
    float     top_p;               /* nucleus mass; >= 1: off */
    float     repetition_penalty;  /* CTRL-style over prompt + output; 1 off */
    int       max_tokens;          /* emitted tokens at most; 0: no limit */
    int       min_tokens;          /* stop tokens masked until this many
                                      were emitted (no empty replies) */
    uint64_t  seed;
    int32_t   stop[CM_LM_MAX_STOP];/* stop token ids */
    int       n_stop;
} cm_lm_params_t;

typedef struct {
    float     p;                   /* logit, then probability */
    int32_t   id;
} cm_lm_cand_t;

typedef struct {
    const cm_gpt_t  *model;
    int              max_rows;     /* token rows per forward */
    float           *x;            /* (R, C) residual stream */
    float           *xn;           /* (R, C) layernorm output */
    float           *qkv;          /* (R, 3C) */
    float           *atty;         /* (R, C) */
    float           *tmp;          /* (R, C) projection output */
    float           *fch;          /* (R, 4C) */
    float           *scores;       /* (NH, maxT) attention weights */
    float           *sel;          /* (R, C) rows that need logits */
    float           *logits;       /* (R, Vp) */
    int32_t         *row_tok;      /* (R) */
    int32_t         *row_pos;      /* (R) */
    void           **row_seq;      /* (R) cm_lm_seq_t * */
    uint8_t         *row_kind;     /* (R) 0 decode, 1 prompt (cm_lm_feed) */
    int              prefill_budget; /* prompt tokens per cm_lm_step, over
                                      all fed sequences (max_rows) */
    cm_lm_cand_t    *cand;         /* (V) sampling scratch */
    uint8_t         *seen;         /* (V) repetition-penalty marks */
    /* the weights re-laid out for lm_kernels.h, when the CPU has the
     * kernels (a copy of the matrices: about the model's size again) */
    float           *packed;       /* one allocation, carved into pk */
    cm_lmk_matrix_t *pk;           /* (4L + 1): per layer qkv, attproj, fc,
                                      fcproj; then the LM head (wte) */
    int              use_packed;   /* 1: lm_kernels; 0: OpenBLAS (the bench
                                      clears it to compare) */
    uint16_t        *packed_bf16;  /* bf16 panels instead (cm_lm_engine_bf16),
                                      carved into pk the same way */
    uint16_t        *xbf;          /* (R, 4C) activations rounded to bf16 */
    int              bf16;         /* 1: pk holds bf16 weights */
    int              kv_bf16;      /* 1: new sequences cache in bf16 */
    uint64_t         forwards;     /* forwards run (tests: one per step) */
    int              threads;      /* parts a step is split into (1) */
    void            *pool;         /* worker threads, or NULL */
} cm_lm_engine_t;

typedef struct {
    cm_lm_params_t   params;
    int              pos;          /* tokens in the KV cache */
    int              n_generated;  /* tokens sampled so far */
    int              pending;      /* prompt tokens fed, not yet run */
    int32_t          next;         /* sampled, not yet fed; -1 none */
    cm_lm_finish_t   finish;
    float           *k;            /* (L, maxT, C) cached keys */
    float           *v;            /* (L, maxT, C) cached values, in
                                      the same block as k */
    size_t           kv_bytes;     /* of that block */
    uint16_t        *kb;           /* instead of k and v (both NULL): the */
    uint16_t        *vb;           /* cache in bf16 (cm_lm_engine_kv_bf16) */
    int32_t         *history;      /* (maxT + 1) tokens fed, then next */
    float           *logits;       /* (Vp) logits after the last fed token */
    uint64_t         rng;
} cm_lm_seq_t;

/* Defaults: temperature 0.8, top_k 40, top_p 0.95, penalty 1.1,
 * max_tokens 64, seed 1, no stop tokens. */
void cm_lm_params_default(cm_lm_params_t *p);

int cm_lm_engine_init(cm_lm_engine_t *e, const cm_gpt_t *m, int max_rows);
/* Splits each step's linear layers (by panels) and attention (by rows)
 * over n threads, the caller included; with the packed kernels only (the
 * OpenBLAS path keeps OpenBLAS's own threads).  Results are the same bits
 * as with 1.  0, CM_EINVAL (n outside 1..16), CM_ENOMEM. */
int cm_lm_engine_threads(cm_lm_engine_t *e, int n);
void cm_lm_engine_free(cm_lm_engine_t *e);
/* Opt-in bf16 decode weights: re-packs every matrix of pk (qkv, attention
 * projection, MLP, LM head) as bf16 (lm_kernels.h), frees the fp32 copy;
 * each linear layer then rounds its input rows to bf16 and accumulates in
 * fp32.  Numerics change (logits within ~0.5 % of the logit range of fp32
 * on the test models); attention stays fp32, and the KV cache too unless
 * cm_lm_engine_kv_bf16.  CM_EINVAL where the CPU has no
 * AVX512_BF16 (cm_lmk_bf16() == 0) or the engine did not pack; CM_ENOMEM. */
int cm_lm_engine_bf16(cm_lm_engine_t *e);
/* Opt-in bf16 KV cache: sequences made after this (cm_lm_seq_init) keep
 * their keys and values rounded to bf16 (half the bytes attention reads a
 * step); attention widens them and computes in fp32.  Sequences made
 * before keep fp32.  Independent of cm_lm_engine_bf16.  CM_EINVAL where
 * the CPU has no AVX512_BF16 or the engine did not pack. */
int cm_lm_engine_kv_bf16(cm_lm_engine_t *e);

int cm_lm_seq_init(cm_lm_seq_t *s, const cm_lm_engine_t *e,
    const cm_lm_params_t *p);
void cm_lm_seq_free(cm_lm_seq_t *s);

/* Feeds n prompt tokens (pos + n <= maxT, ids < V) and samples s->next.
 * 0, CM_EINVAL (bad ids, too long), CM_ENOMEM. */
int cm_lm_prefill(cm_lm_engine_t *e, cm_lm_seq_t *s, const int32_t *tokens,
    int n);

/* Queues n prompt tokens (same checks as cm_lm_prefill) to be run by the
 * following cm_lm_step calls in chunks: chunked prefill, so a long prompt
 * joins the running batch without stalling it.  s->next stays -1 until
 * the last chunk has run and the first token is sampled. */
int cm_lm_feed(cm_lm_engine_t *e, cm_lm_seq_t *s, const int32_t *tokens,
    int n);

/* One step for every running sequence in seqs[0..n): a decoding sequence
 * feeds its next token and samples another; a fed one (cm_lm_feed) runs
 * the next chunk of its prompt, up to e->prefill_budget prompt tokens in
 * the step over all of them, in seqs order.  All rows go through one
 * forward (more when they exceed max_rows).  Finished sequences are
 * skipped.  Returns how many of seqs are still running. */
int cm_lm_step(cm_lm_engine_t *e, cm_lm_seq_t **seqs, int n);

/* Sampling alone, exposed for tests: picks a token from logits[0..V). */
int32_t cm_lm_sample(cm_lm_engine_t *e, cm_lm_seq_t *s, const float *logits);

#endif /* CINEMATCH_LM_H */

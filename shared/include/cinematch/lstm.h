/*
 * cinematch/lstm.h: the baseline LSTM language model (embedding -> L-layer
 * LSTM -> tied or untied output), fp32, forward/backward/AdamW on the CPU
 * with OpenBLAS, trained and evaluated by the same pipeline as the GPT
 * (gpt.h) so the two are comparable on the same split.
 *
 * Layout as gpt.h: all parameters in one allocation carved by a size table
 * in a fixed order (cm_lstm_params_t), likewise the activations.  Gates
 * are in PyTorch's order i, f, g, o; one bias per gate (PyTorch's b_ih +
 * b_hh folded).  The input projection of a layer is one SGEMM over all
 * B x T positions; only the recurrent product h_{t-1} Whh^T is per time
 * step (one SGEMM over the batch).  Training windows start from a zero
 * state, as the GPT's start from an empty context.
 *
 * Checkpoint (own format, little-endian):
 *   int32 header[256]: [0] magic 20251125, [1] version 1, [2] maxT,
 *   [3] V, [4] E (embedding width), [5] H (hidden width), [6] L,
 *   [7] tied (0/1; 1 needs E == H), the rest 0;
 *   then the parameters as fp32 in the order of cm_lstm_params_t.
 * The loader checks every field and the file size before reading more.
 * The optimizer state file (--resume) is header[256] = { 20251126, 1,
 * step, nparams_lo, nparams_hi } then m and v.
 */
#ifndef CINEMATCH_LSTM_H
#define CINEMATCH_LSTM_H

#include <stddef.h>
#include <stdint.h>

#include "cinematch/gpt.h"     /* cm_adamw_t */

#define CM_LSTM_MAGIC        20251125
#define CM_LSTM_VERSION      1
#define CM_LSTM_HEADER_INTS  256
#define CM_LSTM_NPARAMS      7
#define CM_LSTM_NACTS        8

typedef struct {
    int  max_seq_len;     /* maxT: longest training / evaluation window */
    int  vocab_size;      /* V */
    int  embed_dim;       /* E */
    int  hidden;          /* H */
    int  num_layers;      /* L */
    int  tied;            /* output matrix is wte (E == H) */
} cm_lstm_config_t;

typedef struct {
    float *wte;       /* (V, E) token embeddings (and output when tied) */
    float *wih0;      /* (4H, E) layer 0 input weights */
    float *wihr;      /* (L-1, 4H, H) input weights of layers 1.. */
    float *whh;       /* (L, 4H, H) recurrent weights */
    float *bias;      /* (L, 4H) */
    float *wout;      /* (V, H) output weights; size 0 when tied */
    float *bout;      /* (V) output bias */
} cm_lstm_params_t;

typedef struct {
    float *emb;       /* (B, T, E) layer 0 input */
    float *gates;     /* (L, B, T, 4H) i, f, g, o after their nonlinearity */
    float *c;         /* (L, B, T, H) cell state */
    float *tc;        /* (L, B, T, H) tanh(c) */
    float *h;         /* (L, B, T, H) hidden state (layer output) */
    float *hprev;     /* (L, B, T, H) h shifted one step, zero at t = 0 */
    float *logits;    /* (B, T, V) */
    float *probs;     /* (B, T, V) softmax, with targets only */
} cm_lstm_acts_t;

typedef struct {
    cm_lstm_config_t  config;
    cm_lstm_params_t  params;
    size_t            param_sizes[CM_LSTM_NPARAMS];
    float            *params_memory;
    size_t            num_parameters;
    cm_lstm_params_t  grads;            /* allocated on first backward */
    float            *grads_memory;
    float            *m_memory;         /* AdamW moments, on first update */
    float            *v_memory;
    cm_lstm_acts_t    acts;             /* sized for (batch_size, seq_len) */
    size_t            act_sizes[CM_LSTM_NACTS];
    float            *acts_memory;
    size_t            num_activations;
    float            *losses;           /* (B, T) */
    float            *scratch;          /* backward: dgates (B, T, 4H),
                                           dh, dx (B, T, max(E, H)) x 2,
                                           dlogits (B, T, V), dh_next,
                                           dc_next (B, H) */
    size_t            scratch_size;
    int               batch_size;       /* B the activations are sized for */
    int               seq_len;          /* T the activations are sized for */
    int               last_B, last_T;
    int              *inputs;           /* (B, T) last forward */
    int              *targets;          /* (B, T) */
    float             mean_loss;        /* -1 when forward had no targets */
} cm_lstm_t;

/* Decoding state of one sequence: feed tokens one at a time. */
typedef struct {
    float  *h;        /* (L, H) */
    float  *c;        /* (L, H) */
    float  *x;        /* (max(E, H)) layer input */
    float  *g;        /* (4H) gates */
    float  *logits;   /* (V) after the last fed token, when asked for */
} cm_lstm_state_t;

/* Named shapes: "lstm-tiny" (E=H=64, L=2, maxT=64, V=512: tests and CI)
 * and "lstm-small" (E=H=512, L=2, maxT=256, V=8192: beside dialog-small).
 * vocab_size <= 0 keeps the config's own.  0 / CM_EINVAL. */
int cm_lstm_config_named(const char *name, int vocab_size,
    cm_lstm_config_t *cfg);
int cm_lstm_config_check(const cm_lstm_config_t *cfg, char *err,
    size_t errlen);
/* Parameter sizes in checkpoint order; returns the total (0 on overflow
 * or a bad shape). */
size_t cm_lstm_param_sizes(const cm_lstm_config_t *cfg,
    size_t sizes[CM_LSTM_NPARAMS]);

/* Random init (PyTorch's LSTM init, forget-gate bias 1; see lstm.c). */
int cm_lstm_init(cm_lstm_t *m, const cm_lstm_config_t *cfg, uint64_t seed);
int cm_lstm_load(cm_lstm_t *m, const char *path, char *err, size_t errlen);
int cm_lstm_save(const cm_lstm_t *m, const char *path, char *err,
    size_t errlen);
void cm_lstm_free(cm_lstm_t *m);
/* 1 when the file at path starts with the LSTM magic, 0 otherwise. */
int cm_lstm_is_checkpoint(const char *path);
/* Header check against the file size; fills cfg.  For the fuzz target. */
int cm_lstm_header_parse(const int32_t *h, size_t file_size,
    cm_lstm_config_t *cfg, char *err, size_t errlen);

int cm_lstm_save_state(const cm_lstm_t *m, int step, const char *path,
    char *err, size_t errlen);
int cm_lstm_load_state(cm_lstm_t *m, int *step, const char *path, char *err,
    size_t errlen);

/* Forward over inputs (B, T), T <= maxT, from a zero state; targets may be
 * NULL.  With targets, mean_loss is the mean cross-entropy (nats). */
int cm_lstm_forward(cm_lstm_t *m, const int *inputs, const int *targets,
    int B, int T);
void cm_lstm_zero_grad(cm_lstm_t *m);
/* Backward of the last forward (with targets), accumulating into grads;
 * grad_scale as cm_gpt_backward. */
int cm_lstm_backward(cm_lstm_t *m, float grad_scale);
float cm_lstm_clip_grad(cm_lstm_t *m, float max_norm);
/* AdamW; decay on the matrices (wte, wih0, wihr, whh, wout) only. */
int cm_lstm_update(cm_lstm_t *m, const cm_adamw_t *opt);

/* ---- one layer over (B, T), exported for the gradient checks --------- */

/* x (B, T, In) from a zero state; writes gates (B, T, 4H, after their
 * nonlinearities), c, tc, h and hprev (B, T, H). */
void cm_lstm_layer_forward(float *gates, float *c, float *tc, float *h,
    float *hprev, const float *x, const float *wih, const float *whh,
    const float *bias, int B, int T, int In, int H);
/* dh (B, T, H): gradient w.r.t. the layer's h outputs; accumulates into
 * dx (B, T, In), dwih, dwhh, dbias.  dgates (B, T, 4H), dh_next and
 * dc_next (B, H) are scratch. */
void cm_lstm_layer_backward(float *dx, float *dwih, float *dwhh,
    float *dbias, float *dgates, float *dh_next, float *dc_next,
    const float *dh, const float *x, const float *gates, const float *c,
    const float *tc, const float *hprev, const float *wih, const float *whh,
    int B, int T, int In, int H);

/* ---- decoding -------------------------------------------------------- */

int cm_lstm_state_init(cm_lstm_state_t *s, const cm_lstm_t *m);
void cm_lstm_state_reset(cm_lstm_state_t *s, const cm_lstm_t *m);
void cm_lstm_state_free(cm_lstm_state_t *s);
/* Feeds one token (0 <= token < V); with want_logits, s->logits holds the
 * next-token logits.  CM_EINVAL on a bad id. */
int cm_lstm_step(const cm_lstm_t *m, cm_lstm_state_t *s, int token,
    int want_logits);

#endif /* CINEMATCH_LSTM_H */

/*
 * cinematch/gpt.h: GPT-2 (pre-LN, GELU-tanh, learned positions, tied
 * embeddings), fp32, forward/backward/AdamW on the CPU with OpenBLAS.
 *
 * Layout follows karpathy/llm.c: all parameters in one allocation carved by
 * a size table in a fixed order (the llm.c checkpoint order), likewise the
 * activations; kernels come in x_forward/x_backward pairs, outputs first,
 * then inputs, then sizes.  The embedding table is padded to Vp rows (a
 * multiple of 128, as llm.c) and the padded rows stay zero; logits are
 * computed over Vp but softmax/loss only over the real V.
 *
 * Checkpoints are llm.c's: a 256 x int32 header (magic 20240326, version 3
 * = fp32, maxT, V, L, NH, C, Vp) then the parameters as little-endian fp32
 * in the order of cm_gpt_params_t.  The loader validates the header
 * against the file size before reading anything else.
 *
 * A model is not thread-safe; the inference engine (lm.h) only reads the
 * parameters, so several engines may share one loaded model.
 */
#ifndef CINEMATCH_GPT_H
#define CINEMATCH_GPT_H

#include <stddef.h>
#include <stdint.h>

#include "cinematch/optim.h"   /* cm_adamw_t, cm_adamw_update */

#define CM_GPT_MAGIC        20240326
#define CM_GPT_VERSION_FP32 3
#define CM_GPT_HEADER_INTS  256
#define CM_GPT_NPARAMS      16
#define CM_GPT_NACTS        23

typedef struct {
    int  max_seq_len;         /* maxT */
    int  vocab_size;          /* V */
    int  padded_vocab_size;   /* Vp >= V, multiple of 128 */
    int  num_layers;          /* L */
    int  num_heads;           /* NH */
    int  channels;            /* C, divisible by NH */
} cm_gpt_config_t;

typedef struct {
    float *wte;       /* (Vp, C) token embeddings, tied to the output */
    float *wpe;       /* (maxT, C) position embeddings */
    float *ln1w;      /* (L, C) */
    float *ln1b;      /* (L, C) */
    float *qkvw;      /* (L, 3*C, C) */
    float *qkvb;      /* (L, 3*C) */
    float *attprojw;  /* (L, C, C) */
    float *attprojb;  /* (L, C) */
    float *ln2w;      /* (L, C) */
    float *ln2b;      /* (L, C) */
    float *fcw;       /* (L, 4*C, C) */
    float *fcb;       /* (L, 4*C) */
    float *fcprojw;   /* (L, C, 4*C) */
    float *fcprojb;   /* (L, C) */
    float *lnfw;      /* (C) */
    float *lnfb;      /* (C) */
} cm_gpt_params_t;

typedef struct {
    float *encoded;   /* (B, T, C) */
    float *ln1;       /* (L, B, T, C) */
    float *ln1_mean;  /* (L, B, T) */
    float *ln1_rstd;  /* (L, B, T) */
    float *qkv;       /* (L, B, T, 3*C) */
    float *atty;      /* (L, B, T, C) */
    float *preatt;    /* (L, B, NH, T, T) */
    float *att;       /* (L, B, NH, T, T) */
    float *attproj;   /* (L, B, T, C) */
    float *residual2; /* (L, B, T, C) */
    float *ln2;       /* (L, B, T, C) */
    float *ln2_mean;  /* (L, B, T) */
    float *ln2_rstd;  /* (L, B, T) */
    float *fch;       /* (L, B, T, 4*C) */
    float *fch_gelu;  /* (L, B, T, 4*C) */
    float *fcproj;    /* (L, B, T, C) */
    float *residual3; /* (L, B, T, C) */
    float *lnf;       /* (B, T, C) */
    float *lnf_mean;  /* (B, T) */
    float *lnf_rstd;  /* (B, T) */
    float *logits;    /* (B, T, Vp) */
    float *probs;     /* (B, T, Vp) */
    float *losses;    /* (B, T) */
} cm_gpt_acts_t;

typedef struct {
    cm_gpt_config_t  config;
    cm_gpt_params_t  params;
    size_t           param_sizes[CM_GPT_NPARAMS];
    float           *params_memory;
    size_t           num_parameters;
    cm_gpt_params_t  grads;            /* allocated on first backward */
    float           *grads_memory;
    float           *m_memory;         /* AdamW moments, on first update */
    float           *v_memory;
    cm_gpt_acts_t    acts;             /* sized for (batch_size, seq_len) */
    size_t           act_sizes[CM_GPT_NACTS];
    float           *acts_memory;
    size_t           num_activations;
    cm_gpt_acts_t    grads_acts;
    float           *grads_acts_memory;
    int              batch_size;       /* B the activations are sized for */
    int              seq_len;          /* T the activations are sized for */
    int              last_B;           /* B, T of the last forward */
    int              last_T;
    int             *inputs;           /* (B, T) last forward */
    int             *targets;          /* (B, T) or unused */
    float            mean_loss;        /* -1 when forward had no targets */
    int              use_ref;          /* plain-loop kernels (tests/bench) */
} cm_gpt_t;

/* Named shapes: "dialog-tiny", "dialog-small", "gpt2-124M".  vocab_size
 * <= 0 keeps the config's own (8192 dialog, 50257 gpt2).  0 / CM_EINVAL. */
int cm_gpt_config_named(const char *name, int vocab_size,
    cm_gpt_config_t *cfg);
/* Validates a config (positive sizes, C % NH == 0, V <= Vp, bounds). */
int cm_gpt_config_check(const cm_gpt_config_t *cfg, char *err, size_t errlen);
/* Parameter sizes in llm.c order; returns the total (0 on overflow). */
size_t cm_gpt_param_sizes(const cm_gpt_config_t *cfg,
    size_t sizes[CM_GPT_NPARAMS]);

/* Activation sizes for (B, T) in the order of cm_gpt_acts_t (the table
 * the CPU model carves its activations with). */
void cm_gpt_act_sizes(const cm_gpt_config_t *cfg, int B, int T,
    size_t sizes[CM_GPT_NACTS]);
/* Points the tensors of p (a) at consecutive slices of mem, sized by the
 * table: pointer arithmetic only, so mem may be device memory. */
void cm_gpt_point_params(cm_gpt_params_t *p, float *mem,
    const size_t sizes[CM_GPT_NPARAMS]);
void cm_gpt_point_acts(cm_gpt_acts_t *a, float *mem,
    const size_t sizes[CM_GPT_NACTS]);
/* Parameter tensors AdamW decays (bit k: tensor k of cm_gpt_params_t):
 * the matrices wte, wpe, qkvw, attprojw, fcw, fcprojw. */
#define CM_GPT_DECAY_MASK  (1u << 0 | 1u << 1 | 1u << 4 | 1u << 6         \
                            | 1u << 10 | 1u << 12)

/* Random GPT-2 initialisation (N(0, 0.02), residual projections scaled by
 * 1/sqrt(2L), LayerNorm 1/0, biases 0, padded rows 0). */
int cm_gpt_init(cm_gpt_t *m, const cm_gpt_config_t *cfg, uint64_t seed);
int cm_gpt_load(cm_gpt_t *m, const char *path, char *err, size_t errlen);
int cm_gpt_save(const cm_gpt_t *m, const char *path, char *err,
    size_t errlen);
void cm_gpt_free(cm_gpt_t *m);

/* Checks a llm.c header against the file size; fills cfg.  Exposed for the
 * fuzz target. */
int cm_gpt_header_parse(const int32_t *h, size_t file_size,
    cm_gpt_config_t *cfg, char *err, size_t errlen);

/* Optimizer state (m, v, step) beside a checkpoint, for --resume. */
int cm_gpt_save_state(const cm_gpt_t *m, int step, const char *path,
    char *err, size_t errlen);
int cm_gpt_load_state(cm_gpt_t *m, int *step, const char *path, char *err,
    size_t errlen);

/* Forward over inputs (B, T) with T <= maxT; targets may be NULL.  With
 * targets, m->mean_loss is the mean cross-entropy (nats per token).
 * (Re)allocates activations when B or T grow. */
int cm_gpt_forward(cm_gpt_t *m, const int *inputs, const int *targets,
    int B, int T);
void cm_gpt_zero_grad(cm_gpt_t *m);
/* Backward of the last forward (which had targets); accumulates into
 * grads, so gradient accumulation is several forward/backward pairs before
 * one update with the loss scaled by the caller (see grad_scale). */
int cm_gpt_backward(cm_gpt_t *m, float grad_scale);
/* Global L2 norm of the gradients; scales them down to max_norm when
 * larger (max_norm <= 0: no clipping).  Returns the norm before clipping. */
float cm_gpt_clip_grad(cm_gpt_t *m, float max_norm);
/* AdamW; weight decay only on the matrices (wte, wpe, *w with 2 dims). */
int cm_gpt_update(cm_gpt_t *m, const cm_adamw_t *opt);
/* Cosine schedule with linear warm-up, decaying to lr_min at total. */
float cm_lr_cosine(int step, int warmup, int total, float lr_max,
    float lr_min);

/* ---- kernels (exported for gradient checks and the bench) ------------ */

void cm_encoder_forward(float *out, const int *inp, const float *wte,
    const float *wpe, int B, int T, int C);
void cm_encoder_backward(float *dwte, float *dwpe, const float *dout,
    const int *inp, int B, int T, int C);
void cm_layernorm_forward(float *out, float *mean, float *rstd,
    const float *inp, const float *weight, const float *bias, int N, int C);
void cm_layernorm_backward(float *dinp, float *dweight, float *dbias,
    const float *dout, const float *inp, const float *weight,
    const float *mean, const float *rstd, int N, int C);
/* out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias (OC, may be NULL) */
void cm_matmul_forward(float *out, const float *inp, const float *weight,
    const float *bias, int N, int C, int OC);
void cm_matmul_backward(float *dinp, float *dweight, float *dbias,
    const float *dout, const float *inp, const float *weight, int N, int C,
    int OC);
void cm_matmul_forward_ref(float *out, const float *inp, const float *weight,
    const float *bias, int N, int C, int OC);
void cm_matmul_backward_ref(float *dinp, float *dweight, float *dbias,
    const float *dout, const float *inp, const float *weight, int N, int C,
    int OC);
/* inp (B, T, 3C) = q,k,v; out (B, T, C); preatt, att (B, NH, T, T) */
void cm_attention_forward(float *out, float *preatt, float *att,
    const float *inp, int B, int T, int C, int NH);
void cm_attention_backward(float *dinp, float *dpreatt, float *datt,
    const float *dout, const float *inp, const float *att, int B, int T,
    int C, int NH);
void cm_attention_forward_ref(float *out, float *preatt, float *att,
    const float *inp, int B, int T, int C, int NH);
void cm_attention_backward_ref(float *dinp, float *dpreatt, float *datt,
    const float *dout, const float *inp, const float *att, int B, int T,
    int C, int NH);
void cm_gelu_forward(float *out, const float *inp, size_t N);
void cm_gelu_backward(float *dinp, const float *inp, const float *dout,
    size_t N);
void cm_residual_forward(float *out, const float *inp1, const float *inp2,
    size_t N);
void cm_residual_backward(float *dinp1, float *dinp2, const float *dout,
    size_t N);
/* softmax over the first V of each Vp-wide row; padded entries get 0 */
void cm_softmax_forward(float *probs, const float *logits, int N, int V,
    int Vp);
void cm_crossentropy_forward(float *losses, const float *probs,
    const int *targets, int N, int Vp);
void cm_crossentropy_softmax_backward(float *dlogits, const float *dlosses,
    const float *probs, const int *targets, int N, int V, int Vp);

#endif /* CINEMATCH_GPT_H */

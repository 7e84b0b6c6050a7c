/*
 * cinematch/gpt_cuda.h: the GPT on CUDA, built only when nvcc exists and
 * cudart/cuBLAS link (CM_HAVE_CUDA).  Without them every function here is
 * a stub (gpt_cuda_stub.c) answering CM_ENOTFOUND ("built without CUDA"),
 * so callers need no #ifdefs.
 *
 * Two surfaces:
 *
 * 1. Kernels with host pointers (cm_cuda_layernorm_forward, ...): each
 *    copies its arguments through the device.  Every one has a CPU
 *    reference in gpt.h with the same arguments and is tested against it
 *    by test_gpt_cuda (skipped where no GPU answers).
 *
 * 2. The resident backend (cm_gpt_cuda_*): a device copy of a GPT with
 *    parameters, gradients, AdamW moments and activations allocated once
 *    on the device (carved by gpt.c's size tables, in the CPU layout), the
 *    same forward + loss, backward, gradient clipping (global norm on the
 *    device) and AdamW as cm_gpt_*, with cuBLAS SGEMMs and the kernels of
 *    surface 1; and decode with a device KV cache (cm_gpt_cuda_kv_*):
 *    prefill and batched decode steps return the logits of the rows that
 *    sample to the host, where sampling stays (lm.h).  Checkpoints stay
 *    the CPU format: upload from / download to a cm_gpt_t.
 *
 * Return values: 0, CM_ENOTFOUND when no usable GPU (cudaGetDeviceCount
 * fails or finds none: treated as "no GPU", never as a crash) or no CUDA
 * in the build, CM_EINVAL for bad arguments, CM_ENOMEM when device memory
 * runs out, CM_ERR on a CUDA error (the message in err where one is taken).
 * Not thread-safe; one device (the current one).
 */
#ifndef CINEMATCH_GPT_CUDA_H
#define CINEMATCH_GPT_CUDA_H

#include <stddef.h>

#include "cinematch/gpt.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Number of GPUs, 0 with the reason in err when none is usable. */
int cm_cuda_device_count(char *err, size_t errlen);

int cm_cuda_layernorm_forward(float *out, float *mean, float *rstd,
    const float *inp, const float *weight, const float *bias, int N, int C);
int cm_cuda_matmul_forward(float *out, const float *inp, const float *weight,
    const float *bias, int N, int C, int OC);
int cm_cuda_attention_forward(float *out, float *preatt, float *att,
    const float *inp, int B, int T, int C, int NH);
int cm_cuda_gelu_forward(float *out, const float *inp, size_t N);
int cm_cuda_gelu_backward(float *dinp, const float *inp, const float *dout,
    size_t N);
int cm_cuda_softmax_forward(float *probs, const float *logits, int N, int V,
    int Vp);
/* The backward kernels accumulate exactly where their CPU references do
 * (dinp, dweight, dbias, dlogits: +=; dpreatt, datt: overwritten). */
int cm_cuda_layernorm_backward(float *dinp, float *dweight, float *dbias,
    const float *dout, const float *inp, const float *weight,
    const float *mean, const float *rstd, int N, int C);
int cm_cuda_matmul_backward(float *dinp, float *dweight, float *dbias,
    const float *dout, const float *inp, const float *weight, int N, int C,
    int OC);
int cm_cuda_attention_backward(float *dinp, float *dpreatt, float *datt,
    const float *dout, const float *inp, const float *att, int B, int T,
    int C, int NH);
int cm_cuda_crossentropy_forward(float *losses, const float *probs,
    const int *targets, int N, int Vp);
int cm_cuda_crossentropy_softmax_backward(float *dlogits,
    const float *dlosses, const float *probs, const int *targets, int N,
    int V, int Vp);
/* One tensor's AdamW step (decay as given; the CPU loop decays matrices
 * only, so callers pass 0 for biases and LayerNorm parameters). */
int cm_cuda_adamw(float *params, const float *grads, float *m, float *v,
    size_t n, float lr, float beta1, float beta2, float eps, float wd,
    int step);


/* ---- resident backend -------------------------------------------------- */

typedef struct cm_gpt_cuda_s     cm_gpt_cuda_t;
typedef struct cm_gpt_cuda_kv_s  cm_gpt_cuda_kv_t;

/* What cm_gpt_cuda_read copies out (floats, CPU layout). */
typedef enum {
    CM_GPT_CUDA_PARAMS = 0,    /* num_parameters, cm_gpt_params_t order */
    CM_GPT_CUDA_GRADS,         /* num_parameters */
    CM_GPT_CUDA_ADAM_M,        /* num_parameters */
    CM_GPT_CUDA_ADAM_V,        /* num_parameters */
    CM_GPT_CUDA_LOGITS,        /* last forward: (B, T, Vp) */
    CM_GPT_CUDA_PROBS          /* last forward: (B, T, Vp) */
} cm_gpt_cuda_what_t;

/* A device model for cfg, activations for up to B x T (T <= maxT), all
 * memory allocated and zeroed here.  The parameters are zero until
 * cm_gpt_cuda_upload. */
int cm_gpt_cuda_create(cm_gpt_cuda_t **out, const cm_gpt_config_t *cfg,
    int B, int T, char *err, size_t errlen);
void cm_gpt_cuda_free(cm_gpt_cuda_t *g);
/* Parameters from m (same config), and the AdamW moments when m has them
 * (zero otherwise, as a fresh CPU model). */
int cm_gpt_cuda_upload(cm_gpt_cuda_t *g, const cm_gpt_t *m);
/* Parameters and AdamW moments into m (allocating m's moments when it has
 * none), so cm_gpt_save / cm_gpt_save_state write what the GPU trained. */
int cm_gpt_cuda_download(const cm_gpt_cuda_t *g, cm_gpt_t *m);
/* n floats of one region (n at most its size) into host. */
int cm_gpt_cuda_read(const cm_gpt_cuda_t *g, cm_gpt_cuda_what_t what,
    float *host, size_t n);

/* As cm_gpt_forward (inputs, targets host arrays of B x T; targets may be
 * NULL); *mean_loss gets the mean cross-entropy (-1 without targets). */
int cm_gpt_cuda_forward(cm_gpt_cuda_t *g, const int *inputs,
    const int *targets, int B, int T, float *mean_loss);
int cm_gpt_cuda_zero_grad(cm_gpt_cuda_t *g);
/* As cm_gpt_backward: accumulates into the gradients. */
int cm_gpt_cuda_backward(cm_gpt_cuda_t *g, float grad_scale);
/* As cm_gpt_clip_grad; *norm gets the norm before clipping. */
int cm_gpt_cuda_clip_grad(cm_gpt_cuda_t *g, float max_norm, float *norm);
/* As cm_gpt_update (decay on CM_GPT_DECAY_MASK tensors only). */
int cm_gpt_cuda_update(cm_gpt_cuda_t *g, const cm_adamw_t *opt);

/* A KV cache of `slots` sequences of up to maxT tokens on the device,
 * reading the parameters of g (which must outlive it). */
int cm_gpt_cuda_kv_create(cm_gpt_cuda_kv_t **out, cm_gpt_cuda_t *g,
    int slots);
void cm_gpt_cuda_kv_free(cm_gpt_cuda_kv_t *kv);
/* Empties a slot (its next token is position 0). */
int cm_gpt_cuda_kv_reset(cm_gpt_cuda_kv_t *kv, int slot);
/* Tokens in a slot's cache. */
int cm_gpt_cuda_kv_pos(const cm_gpt_cuda_kv_t *kv, int slot);
/* Runs n tokens through slot (pos + n <= maxT) and writes the logits after
 * the last of them to logits[0..V) (unpadded V). */
int cm_gpt_cuda_prefill(cm_gpt_cuda_kv_t *kv, int slot, const int *tokens,
    int n, float *logits);
/* One decode step of nb distinct slots, token tokens[i] into slots[i], all
 * rows in one forward (one SGEMM per linear layer); logits (nb, V). */
int cm_gpt_cuda_decode(cm_gpt_cuda_kv_t *kv, const int *slots,
    const int *tokens, int nb, float *logits);

#ifdef __cplusplus
}
#endif

#endif /* CINEMATCH_GPT_CUDA_H */

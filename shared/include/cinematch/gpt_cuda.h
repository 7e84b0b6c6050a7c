/*
 * cinematch/gpt_cuda.h: CUDA versions of the GPT kernels (cuBLAS for the
 * matrix products, own kernels for layernorm, GELU, softmax, causal
 * attention softmax, cross-entropy, AdamW; forward and backward), built
 * only when nvcc exists and cudart/cuBLAS link (CM_HAVE_CUDA).
 *
 * Every function has a CPU reference in gpt.h with the same arguments and
 * is tested against it by test_gpt_cuda (skipped where no GPU answers).
 * These entry points take host pointers and copy through the device: they
 * are the kernels' test and benchmark surface, not yet a resident-memory
 * training or decode backend.
 *
 * Return values: 0, CM_ENOTFOUND when no usable GPU (cudaGetDeviceCount
 * fails or finds none: treated as "no GPU", never as a crash), CM_ERR on a
 * CUDA error (the message in err where one is taken).
 */
#ifndef CINEMATCH_GPT_CUDA_H
#define CINEMATCH_GPT_CUDA_H

#include <stddef.h>

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

#ifdef __cplusplus
}
#endif

#endif /* CINEMATCH_GPT_CUDA_H */

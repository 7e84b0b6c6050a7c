/*
 * gpt_cuda_stub.c: gpt_cuda.h when the build has no CUDA (no nvcc, or
 * cudart/cuBLAS do not link): every entry point answers CM_ENOTFOUND,
 * "built without CUDA", so callers and tests need no #ifdefs.  With CUDA
 * the real definitions are in shared/cuda/ and this file is empty.
 */
#include <stdio.h>

#include "cinematch/common.h"
#include "cinematch/gpt_cuda.h"

#ifndef CM_HAVE_CUDA

#define CM_NO_CUDA "built without CUDA (nvcc, cudart or cuBLAS missing)"


int
cm_cuda_device_count(char *err, size_t errlen)
{
    if (err != NULL && errlen > 0) {
        snprintf(err, errlen, "%s", CM_NO_CUDA);
    }
    return 0;
}


int
cm_cuda_layernorm_forward(float *out, float *mean, float *rstd,
    const float *inp, const float *weight, const float *bias, int N, int C)
{
    return CM_ENOTFOUND;
}


int
cm_cuda_matmul_forward(float *out, const float *inp, const float *weight,
    const float *bias, int N, int C, int OC)
{
    return CM_ENOTFOUND;
}


int
cm_cuda_attention_forward(float *out, float *preatt, float *att,
    const float *inp, int B, int T, int C, int NH)
{
    return CM_ENOTFOUND;
}


int
cm_cuda_gelu_forward(float *out, const float *inp, size_t N)
{
    return CM_ENOTFOUND;
}


int
cm_cuda_gelu_backward(float *dinp, const float *inp, const float *dout,
    size_t N)
{
    return CM_ENOTFOUND;
}


int
cm_cuda_softmax_forward(float *probs, const float *logits, int N, int V,
    int Vp)
{
    return CM_ENOTFOUND;
}


int
cm_cuda_layernorm_backward(float *dinp, float *dweight, float *dbias,
    const float *dout, const float *inp, const float *weight,
    const float *mean, const float *rstd, int N, int C)
{
    return CM_ENOTFOUND;
}


int
cm_cuda_matmul_backward(float *dinp, float *dweight, float *dbias,
    const float *dout, const float *inp, const float *weight, int N, int C,
    int OC)
{
    return CM_ENOTFOUND;
}


int
cm_cuda_attention_backward(float *dinp, float *dpreatt, float *datt,
    const float *dout, const float *inp, const float *att, int B, int T,
    int C, int NH)
{
    return CM_ENOTFOUND;
}


int
cm_cuda_crossentropy_forward(float *losses, const float *probs,
    const int *targets, int N, int Vp)
{
    return CM_ENOTFOUND;
}


int
cm_cuda_crossentropy_softmax_backward(float *dlogits, const float *dlosses,
    const float *probs, const int *targets, int N, int V, int Vp)
{
    return CM_ENOTFOUND;
}


int
cm_cuda_adamw(float *params, const float *grads, float *m, float *v,
    size_t n, float lr, float beta1, float beta2, float eps, float wd,
    int step)
{
    return CM_ENOTFOUND;
}


int
cm_gpt_cuda_create(cm_gpt_cuda_t **out, const cm_gpt_config_t *cfg, int B,
    int T, char *err, size_t errlen)
{
    *out = NULL;
    (void) cm_cuda_device_count(err, errlen);
    return CM_ENOTFOUND;
}


void
cm_gpt_cuda_free(cm_gpt_cuda_t *g)
{
}


int
cm_gpt_cuda_upload(cm_gpt_cuda_t *g, const cm_gpt_t *m)
{
    return CM_ENOTFOUND;
}


int
cm_gpt_cuda_download(const cm_gpt_cuda_t *g, cm_gpt_t *m)
{
    return CM_ENOTFOUND;
}


int
cm_gpt_cuda_read(const cm_gpt_cuda_t *g, cm_gpt_cuda_what_t what,
    float *host, size_t n)
{
    return CM_ENOTFOUND;
}


int
cm_gpt_cuda_forward(cm_gpt_cuda_t *g, const int *inputs, const int *targets,
    int B, int T, float *mean_loss)
{
    *mean_loss = -1.0f;
    return CM_ENOTFOUND;
}


int
cm_gpt_cuda_zero_grad(cm_gpt_cuda_t *g)
{
    return CM_ENOTFOUND;
}


int
cm_gpt_cuda_backward(cm_gpt_cuda_t *g, float grad_scale)
{
    return CM_ENOTFOUND;
}


int
cm_gpt_cuda_clip_grad(cm_gpt_cuda_t *g, float max_norm, float *norm)
{
    return CM_ENOTFOUND;
}


int
cm_gpt_cuda_update(cm_gpt_cuda_t *g, const cm_adamw_t *opt)
{
    return CM_ENOTFOUND;
}


int
cm_gpt_cuda_kv_create(cm_gpt_cuda_kv_t **out, cm_gpt_cuda_t *g, int slots)
{
    *out = NULL;
    return CM_ENOTFOUND;
}


void
cm_gpt_cuda_kv_free(cm_gpt_cuda_kv_t *kv)
{
}


int
cm_gpt_cuda_kv_reset(cm_gpt_cuda_kv_t *kv, int slot)
{
    return CM_ENOTFOUND;
}


int
cm_gpt_cuda_kv_pos(const cm_gpt_cuda_kv_t *kv, int slot)
{
    return CM_ENOTFOUND;
}


int
cm_gpt_cuda_prefill(cm_gpt_cuda_kv_t *kv, int slot, const int *tokens,
    int n, float *logits)
{
    return CM_ENOTFOUND;
}


int
cm_gpt_cuda_decode(cm_gpt_cuda_kv_t *kv, const int *slots, const int *tokens,
    int nb, float *logits)
{
    return CM_ENOTFOUND;
}

#else

typedef int cm_gpt_cuda_stub_unused_t;   /* a translation unit needs one */

#endif

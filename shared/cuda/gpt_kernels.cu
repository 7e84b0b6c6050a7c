/*
 * gpt_kernels.cu: CUDA kernels for the GPT (see gpt_cuda.h); the CPU
 * references are the cm_*_forward/backward functions of gpt.c.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <stdint.h>

extern "C" {
#include "cinematch/gpt.h"
}
#include "gpt_kernels.cuh"
#include "cinematch/gpt_cuda.h"


/* ---- host side -------------------------------------------------------- */

static int
cm_cuda_ready(void)
{
    int n = 0;

    return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}


extern "C" int
cm_cuda_device_count(char *err, size_t errlen)
{
    int          n = 0;
    cudaError_t  e = cudaGetDeviceCount(&n);

    if (e != cudaSuccess) {
        if (err != NULL && errlen > 0) {
            snprintf(err, errlen, "%s", cudaGetErrorString(e));
        }
        return 0;
    }
    if (n == 0 && err != NULL && errlen > 0) {
        snprintf(err, errlen, "no CUDA device");
    }
    return n;
}


/* device copies of host arrays; NULL host pointers stay NULL */
typedef struct {
    float  *d[8];
    int     n;
} cm_dev_t;


static float *
cm_up(cm_dev_t *dv, const float *h, size_t n)
{
    float *d = NULL;

    if (cudaMalloc((void **) &d, (n ? n : 1) * sizeof(float))
        != cudaSuccess)
    {
        return NULL;
    }
    dv->d[dv->n++] = d;
    if (h != NULL && cudaMemcpy(d, h, n * sizeof(float),
                                cudaMemcpyHostToDevice) != cudaSuccess)
    {
        return NULL;
    }
    return d;
}


static int *
cm_up_int(cm_dev_t *dv, const int *h, size_t n)
{
    int *d = NULL;

    if (cudaMalloc((void **) &d, (n ? n : 1) * sizeof(int)) != cudaSuccess) {
        return NULL;
    }
    dv->d[dv->n++] = (float *) d;
    if (cudaMemcpy(d, h, n * sizeof(int), cudaMemcpyHostToDevice)
        != cudaSuccess)
    {
        return NULL;
    }
    return d;
}


static int
cm_down(float *h, const float *d, size_t n)
{
    return cudaMemcpy(h, d, n * sizeof(float), cudaMemcpyDeviceToHost)
           == cudaSuccess ? CM_OK : CM_ERR;
}


static void
cm_dev_free(cm_dev_t *dv)
{
    for (int i = 0; i < dv->n; i++) {
        cudaFree(dv->d[i]);
    }
    dv->n = 0;
}


static int
cm_sync(void)
{
    return (cudaGetLastError() == cudaSuccess
            && cudaDeviceSynchronize() == cudaSuccess) ? CM_OK : CM_ERR;
}


extern "C" int
cm_cuda_layernorm_forward(float *out, float *mean, float *rstd,
    const float *inp, const float *weight, const float *bias, int N, int C)
{
    cm_dev_t  dv = { { NULL }, 0 };
    float    *o, *m, *r, *x, *w, *b;
    int       rc = CM_ERR;

    if (!cm_cuda_ready()) {
        return CM_ENOTFOUND;
    }
    o = cm_up(&dv, NULL, (size_t) N * C);
    m = cm_up(&dv, NULL, (size_t) N);
    r = cm_up(&dv, NULL, (size_t) N);
    x = cm_up(&dv, inp, (size_t) N * C);
    w = cm_up(&dv, weight, (size_t) C);
    b = cm_up(&dv, bias, (size_t) C);
    if (o != NULL && m != NULL && r != NULL && x != NULL && w != NULL
        && b != NULL)
    {
        cm_layernorm_kernel<<<(N + 3) / 4, 128>>>(o, m, r, x, w, b, N, C);
        if (cm_sync() == CM_OK && cm_down(out, o, (size_t) N * C) == CM_OK
            && (mean == NULL || (cm_down(mean, m, (size_t) N) == CM_OK
                                 && cm_down(rstd, r, (size_t) N) == CM_OK)))
        {
            rc = CM_OK;
        }
    }
    cm_dev_free(&dv);
    return rc;
}


extern "C" int
cm_cuda_matmul_forward(float *out, const float *inp, const float *weight,
    const float *bias, int N, int C, int OC)
{
    cm_dev_t        dv = { { NULL }, 0 };
    cublasHandle_t  h;
    float          *o, *x, *w, *b = NULL;
    int             rc = CM_ERR;

    if (!cm_cuda_ready()) {
        return CM_ENOTFOUND;
    }
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
        return CM_ERR;
    }
    o = cm_up(&dv, NULL, (size_t) N * OC);
    x = cm_up(&dv, inp, (size_t) N * C);
    w = cm_up(&dv, weight, (size_t) OC * C);
    if (bias != NULL) {
        b = cm_up(&dv, bias, (size_t) OC);
    }
    if (o != NULL && x != NULL && w != NULL && (bias == NULL || b != NULL)
        && cm_gpu_matmul_forward(h, o, x, w, b, N, C, OC) == CM_OK
        && cm_sync() == CM_OK && cm_down(out, o, (size_t) N * OC) == CM_OK)
    {
        rc = CM_OK;
    }
    cm_dev_free(&dv);
    cublasDestroy(h);
    return rc;
}


extern "C" int
cm_cuda_attention_forward(float *out, float *preatt, float *att,
    const float *inp, int B, int T, int C, int NH)
{
    cm_dev_t        dv = { { NULL }, 0 };
    cublasHandle_t  h;
    float          *o, *pre, *a, *x;
    int             C3 = 3 * C, rc = CM_ERR;
    size_t          natt = (size_t) B * NH * T * T;

    if (!cm_cuda_ready()) {
        return CM_ENOTFOUND;
    }
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
        return CM_ERR;
    }
    o = cm_up(&dv, NULL, (size_t) B * T * C);
    pre = cm_up(&dv, NULL, natt);
    a = cm_up(&dv, NULL, natt);
    x = cm_up(&dv, inp, (size_t) B * T * C3);
    if (o != NULL && pre != NULL && a != NULL && x != NULL
        && cm_gpu_attention_forward(h, o, pre, a, x, B, T, C, NH) == CM_OK
        && cm_sync() == CM_OK
        && cm_down(out, o, (size_t) B * T * C) == CM_OK
        && cm_down(preatt, pre, natt) == CM_OK
        && cm_down(att, a, natt) == CM_OK)
    {
        rc = CM_OK;
    }
    cm_dev_free(&dv);
    cublasDestroy(h);
    return rc;
}


extern "C" int
cm_cuda_gelu_forward(float *out, const float *inp, size_t N)
{
    cm_dev_t  dv = { { NULL }, 0 };
    float    *o, *x;
    int       rc = CM_ERR;

    if (!cm_cuda_ready()) {
        return CM_ENOTFOUND;
    }
    o = cm_up(&dv, NULL, N);
    x = cm_up(&dv, inp, N);
    if (o != NULL && x != NULL) {
        cm_gelu_kernel<<<(unsigned) ((N + 255) / 256), 256>>>(o, x, N);
        if (cm_sync() == CM_OK && cm_down(out, o, N) == CM_OK) {
            rc = CM_OK;
        }
    }
    cm_dev_free(&dv);
    return rc;
}


extern "C" int
cm_cuda_gelu_backward(float *dinp, const float *inp, const float *dout,
    size_t N)
{
    cm_dev_t  dv = { { NULL }, 0 };
    float    *di, *x, *d;
    int       rc = CM_ERR;

    if (!cm_cuda_ready()) {
        return CM_ENOTFOUND;
    }
    di = cm_up(&dv, dinp, N);
    x = cm_up(&dv, inp, N);
    d = cm_up(&dv, dout, N);
    if (di != NULL && x != NULL && d != NULL) {
        cm_gelu_backward_kernel<<<(unsigned) ((N + 255) / 256), 256>>>(di, x,
                                                                       d, N);
        if (cm_sync() == CM_OK && cm_down(dinp, di, N) == CM_OK) {
            rc = CM_OK;
        }
    }
    cm_dev_free(&dv);
    return rc;
}


extern "C" int
cm_cuda_softmax_forward(float *probs, const float *logits, int N, int V,
    int Vp)
{
    cm_dev_t  dv = { { NULL }, 0 };
    float    *p, *l;
    int       rc = CM_ERR;
    size_t    n = (size_t) N * Vp;

    if (!cm_cuda_ready()) {
        return CM_ENOTFOUND;
    }
    p = cm_up(&dv, NULL, n);
    l = cm_up(&dv, logits, n);
    if (p != NULL && l != NULL) {
        cm_softmax_kernel<<<(N + 3) / 4, 128>>>(p, l, N, V, Vp);
        if (cm_sync() == CM_OK && cm_down(probs, p, n) == CM_OK) {
            rc = CM_OK;
        }
    }
    cm_dev_free(&dv);
    return rc;
}


extern "C" int
cm_cuda_adamw(float *params, const float *grads, float *m, float *v,
    size_t n, float lr, float beta1, float beta2, float eps, float wd,
    int step)
{
    cm_dev_t  dv = { { NULL }, 0 };
    float    *p, *g, *dm, *dvv, b1c, b2c;
    int       rc = CM_ERR;

    if (!cm_cuda_ready()) {
        return CM_ENOTFOUND;
    }
    b1c = 1.0f - powf(beta1, (float) step);
    b2c = 1.0f - powf(beta2, (float) step);
    p = cm_up(&dv, params, n);
    g = cm_up(&dv, grads, n);
    dm = cm_up(&dv, m, n);
    dvv = cm_up(&dv, v, n);
    if (p != NULL && g != NULL && dm != NULL && dvv != NULL) {
        cm_adamw_kernel<<<(unsigned) ((n + 255) / 256), 256>>>(p, g, dm, dvv,
            n, lr, beta1, beta2, b1c, b2c, eps, wd);
        if (cm_sync() == CM_OK && cm_down(params, p, n) == CM_OK
            && cm_down(m, dm, n) == CM_OK && cm_down(v, dvv, n) == CM_OK)
        {
            rc = CM_OK;
        }
    }
    cm_dev_free(&dv);
    return rc;
}


extern "C" int
cm_cuda_layernorm_backward(float *dinp, float *dweight, float *dbias,
    const float *dout, const float *inp, const float *weight,
    const float *mean, const float *rstd, int N, int C)
{
    cm_dev_t  dv = { { NULL }, 0 };
    float    *di, *dw, *db, *d, *x, *w, *m, *r;
    int       rc = CM_ERR;

    if (!cm_cuda_ready()) {
        return CM_ENOTFOUND;
    }
    di = cm_up(&dv, dinp, (size_t) N * C);
    dw = cm_up(&dv, dweight, (size_t) C);
    db = cm_up(&dv, dbias, (size_t) C);
    d = cm_up(&dv, dout, (size_t) N * C);
    x = cm_up(&dv, inp, (size_t) N * C);
    w = cm_up(&dv, weight, (size_t) C);
    m = cm_up(&dv, mean, (size_t) N);
    r = cm_up(&dv, rstd, (size_t) N);
    if (di != NULL && dw != NULL && db != NULL && d != NULL && x != NULL
        && w != NULL && m != NULL && r != NULL)
    {
        cm_layernorm_backward_kernel<<<(N + 3) / 4, 128>>>(di, dw, db, d, x,
                                                           w, m, r, N, C);
        if (cm_sync() == CM_OK
            && cm_down(dinp, di, (size_t) N * C) == CM_OK
            && cm_down(dweight, dw, (size_t) C) == CM_OK
            && cm_down(dbias, db, (size_t) C) == CM_OK)
        {
            rc = CM_OK;
        }
    }
    cm_dev_free(&dv);
    return rc;
}


/* Accumulates as the CPU version: dinp += dout W, dW += dout^T inp,
 * dbias += column sums of dout (dbias may be NULL). */
extern "C" int
cm_cuda_matmul_backward(float *dinp, float *dweight, float *dbias,
    const float *dout, const float *inp, const float *weight, int N, int C,
    int OC)
{
    cm_dev_t        dv = { { NULL }, 0 };
    cublasHandle_t  h;
    float          *di, *dw, *db = NULL, *d, *x, *w;
    int             rc = CM_ERR;

    if (!cm_cuda_ready()) {
        return CM_ENOTFOUND;
    }
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
        return CM_ERR;
    }
    di = cm_up(&dv, dinp, (size_t) N * C);
    dw = cm_up(&dv, dweight, (size_t) OC * C);
    d = cm_up(&dv, dout, (size_t) N * OC);
    x = cm_up(&dv, inp, (size_t) N * C);
    w = cm_up(&dv, weight, (size_t) OC * C);
    if (dbias != NULL) {
        db = cm_up(&dv, dbias, (size_t) OC);
    }
    if (di != NULL && dw != NULL && d != NULL && x != NULL && w != NULL
        && (dbias == NULL || db != NULL)
        && cm_gpu_matmul_backward(h, di, dw, db, d, x, w, N, C, OC) == CM_OK
        && cm_sync() == CM_OK
        && cm_down(dinp, di, (size_t) N * C) == CM_OK
        && cm_down(dweight, dw, (size_t) OC * C) == CM_OK
        && (db == NULL || cm_down(dbias, db, (size_t) OC) == CM_OK))
    {
        rc = CM_OK;
    }
    cm_dev_free(&dv);
    cublasDestroy(h);
    return rc;
}


/*
 * As cm_attention_backward: dinp (B, T, 3C) accumulates dq, dk, dv;
 * dpreatt and datt (B, NH, T, T) are overwritten.  Per batch row b, heads
 * batched (row-major X is column-major X^T):
 *   datt = dout v^T        dv += att^T dout
 *   dpreatt = causal softmax backward (kernel)
 *   dq += scale dpreatt k  dk += scale dpreatt^T q
 */
extern "C" int
cm_cuda_attention_backward(float *dinp, float *dpreatt, float *datt,
    const float *dout, const float *inp, const float *att, int B, int T,
    int C, int NH)
{
    cm_dev_t        dv = { { NULL }, 0 };
    cublasHandle_t  h;
    float          *di, *dp, *da, *d, *x, *a;
    int             C3 = 3 * C, rc = CM_ERR;
    size_t          natt = (size_t) B * NH * T * T;

    if (!cm_cuda_ready()) {
        return CM_ENOTFOUND;
    }
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
        return CM_ERR;
    }
    di = cm_up(&dv, dinp, (size_t) B * T * C3);
    dp = cm_up(&dv, NULL, natt);
    da = cm_up(&dv, NULL, natt);
    d = cm_up(&dv, dout, (size_t) B * T * C);
    x = cm_up(&dv, inp, (size_t) B * T * C3);
    a = cm_up(&dv, att, natt);
    if (di != NULL && dp != NULL && da != NULL && d != NULL && x != NULL
        && a != NULL
        && cm_gpu_attention_backward(h, di, dp, da, d, x, a, B, T, C, NH)
           == CM_OK
        && cm_sync() == CM_OK
        && cm_down(dinp, di, (size_t) B * T * C3) == CM_OK
        && cm_down(dpreatt, dp, natt) == CM_OK
        && cm_down(datt, da, natt) == CM_OK)
    {
        rc = CM_OK;
    }
    cm_dev_free(&dv);
    cublasDestroy(h);
    return rc;
}


extern "C" int
cm_cuda_crossentropy_forward(float *losses, const float *probs,
    const int *targets, int N, int Vp)
{
    cm_dev_t  dv = { { NULL }, 0 };
    float    *l, *p;
    int      *t;
    int       rc = CM_ERR;

    if (!cm_cuda_ready()) {
        return CM_ENOTFOUND;
    }
    l = cm_up(&dv, NULL, (size_t) N);
    p = cm_up(&dv, probs, (size_t) N * Vp);
    t = cm_up_int(&dv, targets, (size_t) N);
    if (l != NULL && p != NULL && t != NULL) {
        cm_crossentropy_kernel<<<(N + 127) / 128, 128>>>(l, p, t, N, Vp);
        if (cm_sync() == CM_OK && cm_down(losses, l, (size_t) N) == CM_OK) {
            rc = CM_OK;
        }
    }
    cm_dev_free(&dv);
    return rc;
}


extern "C" int
cm_cuda_crossentropy_softmax_backward(float *dlogits, const float *dlosses,
    const float *probs, const int *targets, int N, int V, int Vp)
{
    cm_dev_t  dv = { { NULL }, 0 };
    float    *dl, *dls, *p;
    int      *t;
    int       rc = CM_ERR;
    size_t    n = (size_t) N * V;

    if (!cm_cuda_ready()) {
        return CM_ENOTFOUND;
    }
    dl = cm_up(&dv, dlogits, (size_t) N * Vp);
    dls = cm_up(&dv, dlosses, (size_t) N);
    p = cm_up(&dv, probs, (size_t) N * Vp);
    t = cm_up_int(&dv, targets, (size_t) N);
    if (dl != NULL && dls != NULL && p != NULL && t != NULL) {
        cm_crossentropy_softmax_backward_kernel<<<(unsigned) ((n + 255)
                                                              / 256), 256>>>(
            dl, dls, p, t, N, V, Vp);
        if (cm_sync() == CM_OK
            && cm_down(dlogits, dl, (size_t) N * Vp) == CM_OK)
        {
            rc = CM_OK;
        }
    }
    cm_dev_free(&dv);
    return rc;
}

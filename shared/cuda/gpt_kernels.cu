/*
 * gpt_kernels.cu: CUDA kernels for the GPT (see gpt_cuda.h); the CPU
 * references are the cm_*_forward/backward functions of gpt.c.
 */
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <cuda_runtime.h>
#include <cublas_v2.h>

#include "cinematch/common.h"
#include "cinematch/gpt_cuda.h"

#define CM_GELU_SCALE 0.7978845608028654f


/* ---- kernels ---------------------------------------------------------- */

__device__ static float
cm_warp_sum(float v)
{
    for (int o = 16; o > 0; o >>= 1) {
        v += __shfl_down_sync(0xffffffff, v, o);
    }
    return __shfl_sync(0xffffffff, v, 0);
}


__device__ static float
cm_warp_max(float v)
{
    for (int o = 16; o > 0; o >>= 1) {
        v = fmaxf(v, __shfl_down_sync(0xffffffff, v, o));
    }
    return __shfl_sync(0xffffffff, v, 0);
}


/* one warp per row */
__global__ static void
cm_layernorm_kernel(float *out, float *mean, float *rstd, const float *inp,
    const float *w, const float *b, int N, int C)
{
    int          row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int          lane = threadIdx.x % 32;
    const float *x;
    float        m = 0.0f, v = 0.0f, s;

    if (row >= N) {
        return;
    }
    x = inp + (size_t) row * C;
    for (int i = lane; i < C; i += 32) {
        m += x[i];
    }
    m = cm_warp_sum(m) / C;
    for (int i = lane; i < C; i += 32) {
        float d = x[i] - m;

        v += d * d;
    }
    v = cm_warp_sum(v) / C;
    s = rsqrtf(v + 1e-5f);
    for (int i = lane; i < C; i += 32) {
        out[(size_t) row * C + i] = (s * (x[i] - m)) * w[i] + b[i];
    }
    if (lane == 0 && mean != NULL) {
        mean[row] = m;
        rstd[row] = s;
    }
}


__global__ static void
cm_gelu_kernel(float *out, const float *inp, size_t N)
{
    size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x;

    if (i < N) {
        float x = inp[i], cube = 0.044715f * x * x * x;

        out[i] = 0.5f * x * (1.0f + tanhf(CM_GELU_SCALE * (x + cube)));
    }
}


__global__ static void
cm_gelu_backward_kernel(float *dinp, const float *inp, const float *dout,
    size_t N)
{
    size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x;

    if (i < N) {
        float x = inp[i], cube = 0.044715f * x * x * x;
        float ta = CM_GELU_SCALE * (x + cube), th = tanhf(ta);
        float ch = coshf(ta), sech2 = 1.0f / (ch * ch);
        float g = 0.5f * (1.0f + th) + x * 0.5f * sech2 * CM_GELU_SCALE
                  * (1.0f + 3.0f * 0.044715f * x * x);

        dinp[i] += g * dout[i];
    }
}


/* one warp per row: softmax over the first V of Vp; padding gets 0 */
__global__ static void
cm_softmax_kernel(float *probs, const float *logits, int N, int V, int Vp)
{
    int          row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int          lane = threadIdx.x % 32;
    const float *l;
    float       *p;
    float        mx = -INFINITY, sum = 0.0f;

    if (row >= N) {
        return;
    }
    l = logits + (size_t) row * Vp;
    p = probs + (size_t) row * Vp;
    for (int i = lane; i < V; i += 32) {
        mx = fmaxf(mx, l[i]);
    }
    mx = cm_warp_max(mx);
    for (int i = lane; i < V; i += 32) {
        sum += expf(l[i] - mx);
    }
    sum = cm_warp_sum(sum);
    for (int i = lane; i < Vp; i += 32) {
        p[i] = i < V ? expf(l[i] - mx) / sum : 0.0f;
    }
}


/* one warp per (b, h, t) row of a T x T block: causal softmax */
__global__ static void
cm_causal_softmax_kernel(float *att, const float *preatt, int rows, int T)
{
    int          row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int          lane = threadIdx.x % 32, t;
    const float *p;
    float       *a;
    float        mx = -INFINITY, sum = 0.0f;

    if (row >= rows) {
        return;
    }
    t = row % T;
    p = preatt + (size_t) row * T;
    a = att + (size_t) row * T;
    for (int j = lane; j <= t; j += 32) {
        mx = fmaxf(mx, p[j]);
    }
    mx = cm_warp_max(mx);
    for (int j = lane; j <= t; j += 32) {
        sum += expf(p[j] - mx);
    }
    sum = cm_warp_sum(sum);
    for (int j = lane; j < T; j += 32) {
        a[j] = j <= t ? expf(p[j] - mx) / sum : 0.0f;
    }
}


__global__ static void
cm_bias_kernel(float *out, const float *bias, int N, int OC)
{
    size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x;

    if (i < (size_t) N * OC) {
        out[i] += bias[i % OC];
    }
}


__global__ static void
cm_adamw_kernel(float *params, const float *grads, float *m, float *v,
    size_t n, float lr, float b1, float b2, float b1c, float b2c, float eps,
    float wd)
{
    size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x;

    if (i < n) {
        float g = grads[i];
        float mm = b1 * m[i] + (1.0f - b1) * g;
        float vv = b2 * v[i] + (1.0f - b2) * g * g;

        m[i] = mm;
        v[i] = vv;
        params[i] -= lr * ((mm / b1c) / (sqrtf(vv / b2c) + eps)
                           + wd * params[i]);
    }
}


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
    float          *o, *x, *w, *b = NULL, one = 1.0f, zero = 0.0f;
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
    if (o != NULL && x != NULL && w != NULL && (bias == NULL || b != NULL)) {
        /* row-major out = inp @ w^T is column-major out^T = w^T' @ inp^T */
        if (cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, &one, w, C,
                        x, C, &zero, o, OC) == CUBLAS_STATUS_SUCCESS)
        {
            if (b != NULL) {
                size_t n = (size_t) N * OC;

                cm_bias_kernel<<<(unsigned) ((n + 255) / 256), 256>>>(o, b,
                                                                      N, OC);
            }
            if (cm_sync() == CM_OK
                && cm_down(out, o, (size_t) N * OC) == CM_OK)
            {
                rc = CM_OK;
            }
        }
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
    float          *o, *pre, *a, *x, one = 1.0f, zero = 0.0f, scale;
    int             hs = C / NH, C3 = 3 * C, rc = CM_ERR, b, ok = 1;
    size_t          natt = (size_t) B * NH * T * T;

    if (!cm_cuda_ready()) {
        return CM_ENOTFOUND;
    }
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
        return CM_ERR;
    }
    scale = 1.0f / sqrtf((float) hs);
    o = cm_up(&dv, NULL, (size_t) B * T * C);
    pre = cm_up(&dv, NULL, natt);
    a = cm_up(&dv, NULL, natt);
    x = cm_up(&dv, inp, (size_t) B * T * C3);
    if (o != NULL && pre != NULL && a != NULL && x != NULL) {
        for (b = 0; b < B && ok; b++) {
            const float *q = x + (size_t) b * T * C3, *k = q + C;
            float       *pb = pre + (size_t) b * NH * T * T;

            /* pre[h] (T x T, row = query) = scale q k^T, heads batched */
            ok = cublasSgemmStridedBatched(h, CUBLAS_OP_T, CUBLAS_OP_N, T, T,
                     hs, &scale, k, C3, hs, q, C3, hs, &zero, pb, T,
                     (long long) T * T, NH) == CUBLAS_STATUS_SUCCESS;
        }
        if (ok) {
            int rows = B * NH * T;

            cm_causal_softmax_kernel<<<(rows + 3) / 4, 128>>>(a, pre, rows,
                                                              T);
        }
        for (b = 0; b < B && ok; b++) {
            const float *v = x + (size_t) b * T * C3 + 2 * C;
            float       *ab = a + (size_t) b * NH * T * T;
            float       *ob = o + (size_t) b * T * C;

            /* out[h] (T x hs, ld C) = att[h] (T x T) @ v[h] (T x hs) */
            ok = cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, hs, T,
                     T, &one, v, C3, hs, ab, T, (long long) T * T, &zero, ob,
                     C, hs, NH) == CUBLAS_STATUS_SUCCESS;
        }
        if (ok && cm_sync() == CM_OK
            && cm_down(out, o, (size_t) B * T * C) == CM_OK
            && cm_down(preatt, pre, natt) == CM_OK
            && cm_down(att, a, natt) == CM_OK)
        {
            rc = CM_OK;
        }
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

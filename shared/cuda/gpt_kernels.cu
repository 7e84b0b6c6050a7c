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


/* one warp per row; dweight and dbias summed over rows with atomics (the
 * order varies run to run: equal to the CPU loop within rounding) */
__global__ static void
cm_layernorm_backward_kernel(float *dinp, float *dw, float *db,
    const float *dout, const float *inp, const float *w, const float *mean,
    const float *rstd, int N, int C)
{
    int          row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int          lane = threadIdx.x % 32;
    const float *d, *x;
    float       *dx, m, s, dmean = 0.0f, dnmean = 0.0f;

    if (row >= N) {
        return;
    }
    d = dout + (size_t) row * C;
    x = inp + (size_t) row * C;
    dx = dinp + (size_t) row * C;
    m = mean[row];
    s = rstd[row];
    for (int i = lane; i < C; i += 32) {
        float norm = (x[i] - m) * s, dn = w[i] * d[i];

        dmean += dn;
        dnmean += dn * norm;
    }
    dmean = cm_warp_sum(dmean) / C;
    dnmean = cm_warp_sum(dnmean) / C;
    for (int i = lane; i < C; i += 32) {
        float norm = (x[i] - m) * s, dn = w[i] * d[i];

        atomicAdd(&db[i], d[i]);
        atomicAdd(&dw[i], norm * d[i]);
        dx[i] += (dn - dmean - norm * dnmean) * s;
    }
}


/* dbias[o] += sum over rows of dout[., o]; one thread per column */
__global__ static void
cm_colsum_kernel(float *dbias, const float *dout, int N, int OC)
{
    int   o = blockIdx.x * blockDim.x + threadIdx.x;
    float s = 0.0f;

    if (o >= OC) {
        return;
    }
    for (int n = 0; n < N; n++) {
        s += dout[(size_t) n * OC + o];
    }
    dbias[o] += s;
}


/*
 * One warp per (b, h, t) row: the causal softmax's backward.  With
 * s = sum_{j<=t} a_j da_j:  dpreatt_j = a_j (da_j - s) for j <= t, 0 above;
 * datt above the diagonal is zeroed, as the CPU loop leaves it.
 */
__global__ static void
cm_causal_softmax_backward_kernel(float *dpreatt, float *datt,
    const float *att, int rows, int T)
{
    int          row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    int          lane = threadIdx.x % 32, t;
    const float *a;
    float       *da, *dp, s = 0.0f;

    if (row >= rows) {
        return;
    }
    t = row % T;
    a = att + (size_t) row * T;
    da = datt + (size_t) row * T;
    dp = dpreatt + (size_t) row * T;
    for (int j = lane; j <= t; j += 32) {
        s += a[j] * da[j];
    }
    s = cm_warp_sum(s);
    for (int j = lane; j < T; j += 32) {
        if (j <= t) {
            dp[j] = a[j] * (da[j] - s);
        } else {
            dp[j] = 0.0f;
            da[j] = 0.0f;
        }
    }
}


__global__ static void
cm_crossentropy_kernel(float *losses, const float *probs, const int *targets,
    int N, int Vp)
{
    int i = blockIdx.x * blockDim.x + threadIdx.x;

    if (i < N) {
        float p = probs[(size_t) i * Vp + targets[i]];

        losses[i] = -logf(p > 1e-30f ? p : 1e-30f);
    }
}


/* dlogits[n, i] += (probs[n, i] - [i == target n]) dlosses[n], i < V */
__global__ static void
cm_crossentropy_softmax_backward_kernel(float *dlogits, const float *dlosses,
    const float *probs, const int *targets, int N, int V, int Vp)
{
    size_t k = (size_t) blockIdx.x * blockDim.x + threadIdx.x;
    int    n, i;

    if (k >= (size_t) N * V) {
        return;
    }
    n = (int) (k / V);
    i = (int) (k % V);
    dlogits[(size_t) n * Vp + i] += (probs[(size_t) n * Vp + i]
                                     - (i == targets[n] ? 1.0f : 0.0f))
                                    * dlosses[n];
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
    float          *di, *dw, *db = NULL, *d, *x, *w, one = 1.0f;
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
        /* column-major: dinp^T (C x N) += W^T (C x OC) dout^T (OC x N) */
        && cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, &one, w, C, d,
                       OC, &one, di, C) == CUBLAS_STATUS_SUCCESS
        /* dW^T (C x OC) += inp^T (C x N) dout (N x OC) */
        && cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, &one, x, C, d,
                       OC, &one, dw, C) == CUBLAS_STATUS_SUCCESS)
    {
        if (db != NULL) {
            cm_colsum_kernel<<<(OC + 127) / 128, 128>>>(db, d, N, OC);
        }
        if (cm_sync() == CM_OK
            && cm_down(dinp, di, (size_t) N * C) == CM_OK
            && cm_down(dweight, dw, (size_t) OC * C) == CM_OK
            && (db == NULL || cm_down(dbias, db, (size_t) OC) == CM_OK))
        {
            rc = CM_OK;
        }
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
    float          *di, *dp, *da, *d, *x, *a, one = 1.0f, zero = 0.0f, scale;
    int             hs = C / NH, C3 = 3 * C, rc = CM_ERR, b, ok = 1;
    size_t          natt = (size_t) B * NH * T * T;
    long long       sa = (long long) T * T;

    if (!cm_cuda_ready()) {
        return CM_ENOTFOUND;
    }
    if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) {
        return CM_ERR;
    }
    scale = 1.0f / sqrtf((float) hs);
    di = cm_up(&dv, dinp, (size_t) B * T * C3);
    dp = cm_up(&dv, NULL, natt);
    da = cm_up(&dv, NULL, natt);
    d = cm_up(&dv, dout, (size_t) B * T * C);
    x = cm_up(&dv, inp, (size_t) B * T * C3);
    a = cm_up(&dv, att, natt);
    if (di == NULL || dp == NULL || da == NULL || d == NULL || x == NULL
        || a == NULL)
    {
        ok = 0;
    }
    for (b = 0; b < B && ok; b++) {
        const float *v = x + (size_t) b * T * C3 + 2 * C;
        const float *db = d + (size_t) b * T * C;
        const float *ab = a + (size_t) b * NH * T * T;
        float       *dab = da + (size_t) b * NH * T * T;
        float       *dvb = di + (size_t) b * T * C3 + 2 * C;

        /* datt[h] (T x T) = dout[h] (T x hs) v[h]^T */
        ok = cublasSgemmStridedBatched(h, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hs,
                 &one, v, C3, hs, db, C, hs, &zero, dab, T, sa, NH)
             == CUBLAS_STATUS_SUCCESS
             /* dv[h] (T x hs) += att[h]^T dout[h] */
             && cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_T, hs, T,
                 T, &one, db, C, hs, ab, T, sa, &one, dvb, C3, hs, NH)
                == CUBLAS_STATUS_SUCCESS;
    }
    if (ok) {
        int rows = B * NH * T;

        cm_causal_softmax_backward_kernel<<<(rows + 3) / 4, 128>>>(dp, da, a,
                                                                   rows, T);
    }
    for (b = 0; b < B && ok; b++) {
        const float *q = x + (size_t) b * T * C3, *k = q + C;
        const float *dpb = dp + (size_t) b * NH * T * T;
        float       *dq = di + (size_t) b * T * C3, *dk = dq + C;

        /* dq[h] (T x hs) += scale dpreatt[h] k[h] */
        ok = cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, hs, T, T,
                 &scale, k, C3, hs, dpb, T, sa, &one, dq, C3, hs, NH)
             == CUBLAS_STATUS_SUCCESS
             /* dk[h] (T x hs) += scale dpreatt[h]^T q[h] */
             && cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_T, hs, T,
                 T, &scale, q, C3, hs, dpb, T, sa, &one, dk, C3, hs, NH)
                == CUBLAS_STATUS_SUCCESS;
    }
    if (ok && cm_sync() == CM_OK
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

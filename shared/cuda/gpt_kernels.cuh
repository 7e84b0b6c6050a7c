/*
 * gpt_kernels.cuh: the GPT's CUDA kernels and their device-pointer
 * launchers, shared by gpt_kernels.cu (host-pointer entry points: the
 * kernel tolerance tests) and gpt_cuda.cu (the resident backend), so both
 * run the same launch code.  Private to shared/cuda; every definition is
 * static (each .cu gets its own copy, no relocatable device code needed).
 *
 * Layouts are the CPU model's (gpt.c), row-major.  cuBLAS is column-major:
 * a row-major (R x K) matrix with row stride ld is, to cuBLAS, the
 * column-major (K x R) matrix X^T with leading dimension ld, so each
 * row-major product below is written as the product of the transposes.
 *
 * The CPU references are the cm_*_forward/backward functions of gpt.c.
 */
#ifndef CM_GPT_KERNELS_CUH
#define CM_GPT_KERNELS_CUH

#include <math.h>
#include <stddef.h>

#include <cuda_runtime.h>
#include <cublas_v2.h>

#include "cinematch/common.h"

#define CM_GELU_SCALE 0.7978845608028654f
#define CM_NORM_BLOCKS 256     /* partial sums of the gradient norm */


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



/* ---- kernels of the resident backend ----------------------------------- */

/* out[b, t] = wte[inp[b, t]] + wpe[t]; one thread per element */
__global__ static void
cm_encoder_kernel(float *out, const int *inp, const float *wte,
    const float *wpe, int BT, int T, int C)
{
    size_t k = (size_t) blockIdx.x * blockDim.x + threadIdx.x;
    int    bt, i;

    if (k >= (size_t) BT * C) {
        return;
    }
    bt = (int) (k / C);
    i = (int) (k % C);
    out[k] = wte[(size_t) inp[bt] * C + i] + wpe[(size_t) (bt % T) * C + i];
}


/* dwte[inp[b, t]] += dout[b, t]; dwpe[t] += dout[b, t] (atomics: a token
 * or a position repeats over rows) */
__global__ static void
cm_encoder_backward_kernel(float *dwte, float *dwpe, const float *dout,
    const int *inp, int BT, int T, int C)
{
    size_t k = (size_t) blockIdx.x * blockDim.x + threadIdx.x;
    int    bt, i;

    if (k >= (size_t) BT * C) {
        return;
    }
    bt = (int) (k / C);
    i = (int) (k % C);
    atomicAdd(&dwte[(size_t) inp[bt] * C + i], dout[k]);
    atomicAdd(&dwpe[(size_t) (bt % T) * C + i], dout[k]);
}


/* decode rows: out[r] = wte[tok[r]] + wpe[pos[r]] */
__global__ static void
cm_encoder_pos_kernel(float *out, const int *tok, const int *pos,
    const float *wte, const float *wpe, int N, int C)
{
    size_t k = (size_t) blockIdx.x * blockDim.x + threadIdx.x;
    int    r, i;

    if (k >= (size_t) N * C) {
        return;
    }
    r = (int) (k / C);
    i = (int) (k % C);
    out[k] = wte[(size_t) tok[r] * C + i] + wpe[(size_t) pos[r] * C + i];
}


__global__ static void
cm_residual_kernel(float *out, const float *a, const float *b, size_t n)
{
    size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x;

    if (i < n) {
        out[i] = a[i] + b[i];
    }
}


/* d1 += d, d2 += d (the CPU residual backward) */
__global__ static void
cm_residual_backward_kernel(float *d1, float *d2, const float *d, size_t n)
{
    size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x;

    if (i < n) {
        d1[i] += d[i];
        d2[i] += d[i];
    }
}


__global__ static void
cm_fill_kernel(float *x, float v, size_t n)
{
    size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x;

    if (i < n) {
        x[i] = v;
    }
}


__global__ static void
cm_scale_kernel(float *x, float s, size_t n)
{
    size_t i = (size_t) blockIdx.x * blockDim.x + threadIdx.x;

    if (i < n) {
        x[i] *= s;
    }
}


/* part[block] = sum of x[i]^2 over a grid-stride share (blockDim 256) */
__global__ static void
cm_sumsq_kernel(double *part, const float *x, size_t n)
{
    __shared__ double sh[256];
    double            s = 0.0;
    size_t            i;
    int               o;

    for (i = (size_t) blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (size_t) gridDim.x * blockDim.x)
    {
        s += (double) x[i] * (double) x[i];
    }
    sh[threadIdx.x] = s;
    __syncthreads();
    for (o = 128; o > 0; o >>= 1) {
        if ((int) threadIdx.x < o) {
            sh[threadIdx.x] += sh[threadIdx.x + o];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        part[blockIdx.x] = sh[0];
    }
}


/* out[0] = sum of part[0..n) (one block of 256) */
__global__ static void
cm_sum_double_kernel(double *out, const double *part, int n)
{
    __shared__ double sh[256];
    double            s = 0.0;
    int               i, o;

    for (i = threadIdx.x; i < n; i += blockDim.x) {
        s += part[i];
    }
    sh[threadIdx.x] = s;
    __syncthreads();
    for (o = 128; o > 0; o >>= 1) {
        if ((int) threadIdx.x < o) {
            sh[threadIdx.x] += sh[threadIdx.x + o];
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) {
        out[0] = sh[0];
    }
}


/* max (is_max) or sum of v over the block (blockDim a multiple of 32,
 * at most 1024); red is 32 floats of shared memory; every thread gets it */
__device__ static float
cm_block_reduce(float v, int is_max, float *red)
{
    int lane = threadIdx.x % 32, w = threadIdx.x / 32;
    int nw = (blockDim.x + 31) / 32;

    v = is_max ? cm_warp_max(v) : cm_warp_sum(v);
    __syncthreads();                 /* red may be in use by a last call */
    if (lane == 0) {
        red[w] = v;
    }
    __syncthreads();
    if (w == 0) {
        v = lane < nw ? red[lane] : (is_max ? -INFINITY : 0.0f);
        v = is_max ? cm_warp_max(v) : cm_warp_sum(v);
        if (lane == 0) {
            red[0] = v;
        }
    }
    __syncthreads();
    return red[0];
}


/* K/V of decode rows into the cache of one layer, (S, maxT, C) each:
 * row r is slot[r] at position pos[r]; qkv rows are (q, k, v), 3C wide */
__global__ static void
cm_kv_store_kernel(float *kc, float *vc, const float *qkv, const int *slot,
    const int *pos, int N, int C, int maxT)
{
    size_t k = (size_t) blockIdx.x * blockDim.x + threadIdx.x;
    size_t dst;
    int    r, i;

    if (k >= (size_t) N * C) {
        return;
    }
    r = (int) (k / C);
    i = (int) (k % C);
    dst = ((size_t) slot[r] * maxT + pos[r]) * C + i;
    kc[dst] = qkv[(size_t) r * 3 * C + C + i];
    vc[dst] = qkv[(size_t) r * 3 * C + 2 * C + i];
}


/*
 * Attention of decode rows against the cache: one block per (row, head);
 * row r attends to positions 0..pos[r] of its slot (its own K/V already
 * stored).  Shared memory: maxT scores + 32 for the reductions.  Same
 * arithmetic as the CPU: scale q.k, causal softmax, weights @ v.
 */
__global__ static void
cm_kv_attention_kernel(float *out, const float *qkv, const float *kc,
    const float *vc, const int *slot, const int *pos, int C, int NH,
    int maxT, float scale)
{
    extern __shared__ float sc[];
    float       *red = sc + maxT;
    int          r = blockIdx.x, h = blockIdx.y, hs = C / NH, p = pos[r];
    int          j, d;
    const float *q = qkv + (size_t) r * 3 * C + (size_t) h * hs;
    size_t       base = (size_t) slot[r] * maxT * C + (size_t) h * hs;
    const float *kb = kc + base, *vb = vc + base;
    float        mx = -INFINITY, sum = 0.0f;

    for (j = threadIdx.x; j <= p; j += blockDim.x) {
        const float *k = kb + (size_t) j * C;
        float        s = 0.0f;

        for (d = 0; d < hs; d++) {
            s += q[d] * k[d];
        }
        s *= scale;
        sc[j] = s;
        mx = fmaxf(mx, s);
    }
    mx = cm_block_reduce(mx, 1, red);
    for (j = threadIdx.x; j <= p; j += blockDim.x) {
        float e = expf(sc[j] - mx);

        sc[j] = e;
        sum += e;
    }
    sum = cm_block_reduce(sum, 0, red);   /* its barriers publish sc */
    for (d = threadIdx.x; d < hs; d += blockDim.x) {
        float o = 0.0f;

        for (j = 0; j <= p; j++) {
            o += sc[j] * vb[(size_t) j * C + d];
        }
        out[(size_t) r * C + (size_t) h * hs + d] = o / sum;
    }
}


/* ---- device-pointer launchers ------------------------------------------
 * All pointers are device pointers; kernels are queued on the default
 * stream (errors surface at the next cudaGetLastError / synchronize);
 * the cuBLAS ones return CM_ERR when cuBLAS refuses.  Accumulation is the
 * CPU references': backward functions add into dinp/dweight/dbias. */

static inline unsigned
cm_blocks(size_t n, unsigned per)
{
    return (unsigned) ((n + per - 1) / per);
}


static inline void
cm_gpu_encoder_forward(float *out, const int *inp, const float *wte,
    const float *wpe, int B, int T, int C)
{
    size_t n = (size_t) B * T * C;

    cm_encoder_kernel<<<cm_blocks(n, 256), 256>>>(out, inp, wte, wpe, B * T,
                                                  T, C);
}


static inline void
cm_gpu_encoder_backward(float *dwte, float *dwpe, const float *dout,
    const int *inp, int B, int T, int C)
{
    size_t n = (size_t) B * T * C;

    cm_encoder_backward_kernel<<<cm_blocks(n, 256), 256>>>(dwte, dwpe, dout,
                                                           inp, B * T, T, C);
}


static inline void
cm_gpu_layernorm_forward(float *out, float *mean, float *rstd,
    const float *inp, const float *w, const float *b, int N, int C)
{
    cm_layernorm_kernel<<<cm_blocks((size_t) N, 4), 128>>>(out, mean, rstd,
                                                           inp, w, b, N, C);
}


static inline void
cm_gpu_layernorm_backward(float *dinp, float *dw, float *db,
    const float *dout, const float *inp, const float *w, const float *mean,
    const float *rstd, int N, int C)
{
    cm_layernorm_backward_kernel<<<cm_blocks((size_t) N, 4), 128>>>(dinp, dw,
        db, dout, inp, w, mean, rstd, N, C);
}


/* out (N, OC) = inp (N, C) @ weight (OC, C)^T + bias; to cuBLAS:
 * out^T (OC x N) = W (OC x C: op T of W^T) @ inp^T (C x N) */
static inline int
cm_gpu_matmul_forward(cublasHandle_t h, float *out, const float *inp,
    const float *weight, const float *bias, int N, int C, int OC)
{
    const float one = 1.0f, zero = 0.0f;

    if (cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, OC, N, C, &one, weight, C,
                    inp, C, &zero, out, OC) != CUBLAS_STATUS_SUCCESS)
    {
        return CM_ERR;
    }
    if (bias != NULL) {
        size_t n = (size_t) N * OC;

        cm_bias_kernel<<<cm_blocks(n, 256), 256>>>(out, bias, N, OC);
    }
    return CM_OK;
}


/* dinp (N, C) += dout (N, OC) @ W (OC, C):  dinp^T += W^T dout^T
 * dW (OC, C) += dout^T (OC, N) @ inp (N, C):  dW^T += inp^T (dout^T)^T
 * dbias (OC) += column sums of dout (dbias may be NULL) */
static inline int
cm_gpu_matmul_backward(cublasHandle_t h, float *dinp, float *dweight,
    float *dbias, const float *dout, const float *inp, const float *weight,
    int N, int C, int OC)
{
    const float one = 1.0f;

    if (cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, C, N, OC, &one, weight, C,
                    dout, OC, &one, dinp, C) != CUBLAS_STATUS_SUCCESS
        || cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_T, C, OC, N, &one, inp, C,
                       dout, OC, &one, dweight, C) != CUBLAS_STATUS_SUCCESS)
    {
        return CM_ERR;
    }
    if (dbias != NULL) {
        cm_colsum_kernel<<<cm_blocks((size_t) OC, 128), 128>>>(dbias, dout, N,
                                                               OC);
    }
    return CM_OK;
}


/*
 * inp (B, T, 3C) = q, k, v; out (B, T, C); preatt, att (B, NH, T, T).
 * Per batch row b, the NH heads batched (head stride hs in q/k/v/out,
 * T*T in preatt/att):
 *   preatt[h] (T x T, row = query) = scale q k^T:
 *     to cuBLAS preatt^T = k (op T of k^T) @ q^T
 *   out[h] (T x hs, row stride C) = att[h] @ v[h]:
 *     to cuBLAS out^T = v^T @ att^T
 */
static inline int
cm_gpu_attention_forward(cublasHandle_t h, float *out, float *preatt,
    float *att, const float *inp, int B, int T, int C, int NH)
{
    const float one = 1.0f, zero = 0.0f;
    int         hs = C / NH, C3 = 3 * C, b, rows = B * NH * T;
    float       scale = 1.0f / sqrtf((float) hs);
    long long   sa = (long long) T * T;

    for (b = 0; b < B; b++) {
        const float *q = inp + (size_t) b * T * C3, *k = q + C;
        float       *pb = preatt + (size_t) b * NH * T * T;

        if (cublasSgemmStridedBatched(h, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hs,
                &scale, k, C3, hs, q, C3, hs, &zero, pb, T, sa, NH)
            != CUBLAS_STATUS_SUCCESS)
        {
            return CM_ERR;
        }
    }
    cm_causal_softmax_kernel<<<cm_blocks((size_t) rows, 4), 128>>>(att,
        preatt, rows, T);
    for (b = 0; b < B; b++) {
        const float *v = inp + (size_t) b * T * C3 + 2 * C;
        const float *ab = att + (size_t) b * NH * T * T;
        float       *ob = out + (size_t) b * T * C;

        if (cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, hs, T, T,
                &one, v, C3, hs, ab, T, sa, &zero, ob, C, hs, NH)
            != CUBLAS_STATUS_SUCCESS)
        {
            return CM_ERR;
        }
    }
    return CM_OK;
}


/*
 * As cm_attention_backward: dinp (B, T, 3C) accumulates dq, dk, dv;
 * dpreatt and datt (B, NH, T, T) are overwritten.  Per batch row b, heads
 * batched (row-major X is column-major X^T):
 *   datt = dout v^T        dv += att^T dout
 *   dpreatt = causal softmax backward (kernel)
 *   dq += scale dpreatt k  dk += scale dpreatt^T q
 */
static inline int
cm_gpu_attention_backward(cublasHandle_t h, float *dinp, float *dpreatt,
    float *datt, const float *dout, const float *inp, const float *att,
    int B, int T, int C, int NH)
{
    const float one = 1.0f, zero = 0.0f;
    int         hs = C / NH, C3 = 3 * C, b, rows = B * NH * T;
    float       scale = 1.0f / sqrtf((float) hs);
    long long   sa = (long long) T * T;

    for (b = 0; b < B; b++) {
        const float *v = inp + (size_t) b * T * C3 + 2 * C;
        const float *db = dout + (size_t) b * T * C;
        const float *ab = att + (size_t) b * NH * T * T;
        float       *dab = datt + (size_t) b * NH * T * T;
        float       *dvb = dinp + (size_t) b * T * C3 + 2 * C;

        /* datt[h] (T x T) = dout[h] (T x hs) v[h]^T */
        if (cublasSgemmStridedBatched(h, CUBLAS_OP_T, CUBLAS_OP_N, T, T, hs,
                &one, v, C3, hs, db, C, hs, &zero, dab, T, sa, NH)
            != CUBLAS_STATUS_SUCCESS
            /* dv[h] (T x hs) += att[h]^T dout[h] */
            || cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_T, hs, T,
                   T, &one, db, C, hs, ab, T, sa, &one, dvb, C3, hs, NH)
               != CUBLAS_STATUS_SUCCESS)
        {
            return CM_ERR;
        }
    }
    cm_causal_softmax_backward_kernel<<<cm_blocks((size_t) rows, 4), 128>>>(
        dpreatt, datt, att, rows, T);
    for (b = 0; b < B; b++) {
        const float *q = inp + (size_t) b * T * C3, *k = q + C;
        const float *dpb = dpreatt + (size_t) b * NH * T * T;
        float       *dq = dinp + (size_t) b * T * C3, *dk = dq + C;

        /* dq[h] (T x hs) += scale dpreatt[h] k[h] */
        if (cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, hs, T, T,
                &scale, k, C3, hs, dpb, T, sa, &one, dq, C3, hs, NH)
            != CUBLAS_STATUS_SUCCESS
            /* dk[h] (T x hs) += scale dpreatt[h]^T q[h] */
            || cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_T, hs, T,
                   T, &scale, q, C3, hs, dpb, T, sa, &one, dk, C3, hs, NH)
               != CUBLAS_STATUS_SUCCESS)
        {
            return CM_ERR;
        }
    }
    return CM_OK;
}


static inline void
cm_gpu_gelu_forward(float *out, const float *inp, size_t n)
{
    cm_gelu_kernel<<<cm_blocks(n, 256), 256>>>(out, inp, n);
}


static inline void
cm_gpu_gelu_backward(float *dinp, const float *inp, const float *dout,
    size_t n)
{
    cm_gelu_backward_kernel<<<cm_blocks(n, 256), 256>>>(dinp, inp, dout, n);
}


static inline void
cm_gpu_residual_forward(float *out, const float *a, const float *b,
    size_t n)
{
    cm_residual_kernel<<<cm_blocks(n, 256), 256>>>(out, a, b, n);
}


static inline void
cm_gpu_residual_backward(float *d1, float *d2, const float *d, size_t n)
{
    cm_residual_backward_kernel<<<cm_blocks(n, 256), 256>>>(d1, d2, d, n);
}


static inline void
cm_gpu_softmax_forward(float *probs, const float *logits, int N, int V,
    int Vp)
{
    cm_softmax_kernel<<<cm_blocks((size_t) N, 4), 128>>>(probs, logits, N, V,
                                                         Vp);
}


static inline void
cm_gpu_crossentropy_forward(float *losses, const float *probs,
    const int *targets, int N, int Vp)
{
    cm_crossentropy_kernel<<<cm_blocks((size_t) N, 128), 128>>>(losses,
        probs, targets, N, Vp);
}


static inline void
cm_gpu_crossentropy_softmax_backward(float *dlogits, const float *dlosses,
    const float *probs, const int *targets, int N, int V, int Vp)
{
    size_t n = (size_t) N * V;

    cm_crossentropy_softmax_backward_kernel<<<cm_blocks(n, 256), 256>>>(
        dlogits, dlosses, probs, targets, N, V, Vp);
}


static inline void
cm_gpu_adamw(float *params, const float *grads, float *m, float *v,
    size_t n, float lr, float beta1, float beta2, float eps, float wd,
    int step)
{
    /* the bias corrections as the CPU computes them (optim.c) */
    float b1c = 1.0f - powf(beta1, (float) step);
    float b2c = 1.0f - powf(beta2, (float) step);

    cm_adamw_kernel<<<cm_blocks(n, 256), 256>>>(params, grads, m, v, n, lr,
        beta1, beta2, b1c, b2c, eps, wd);
}

#endif /* CM_GPT_KERNELS_CUH */

/*
 * cuda_emu.h: just enough of the CUDA runtime and cuBLAS, on the CPU, to
 * run shared/cuda's host code on a machine without a GPU (see run.sh).
 *
 * What this checks: the host orchestration (allocation carving, offsets,
 * the order of the launches) and every cuBLAS call's row-major/column-
 * major mapping, against the CPU model, through the real unit tests.
 * cublasSgemm / cublasSgemmStridedBatched are implemented from cuBLAS's
 * documented column-major semantics, independently of the code under
 * test.  Kernels without barriers or warp shuffles run their real bodies,
 * one thread after another; the others (reductions) are replaced by
 * whole-grid CPU versions in kernels_cpu.h, so their bodies are NOT
 * checked here (the GPU run of the same tests does that).
 */
#ifndef CM_CUDA_EMU_H
#define CM_CUDA_EMU_H

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#define __global__
#define __device__
#define __host__

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c)
    {
    }
};

static dim3 threadIdx, blockIdx, blockDim, gridDim;

typedef int cudaError_t;
#define cudaSuccess                0
#define cudaErrorMemoryAllocation  2
#define cudaErrorInvalidValue      1
typedef enum {
    cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice
} cudaMemcpyKind;

static inline cudaError_t
cudaGetDeviceCount(int *n)
{
    *n = 1;
    return cudaSuccess;
}

static inline const char *
cudaGetErrorString(cudaError_t e)
{
    return e == cudaSuccess ? "no error" : "emulated error";
}

static inline cudaError_t
cudaMalloc(void **p, size_t n)
{
    /* garbage, as cudaMalloc gives: the code must not rely on zeroes */
    *p = malloc(n ? n : 1);
    if (*p != NULL) {
        memset(*p, 0x7f, n);
    }
    return *p != NULL ? cudaSuccess : cudaErrorMemoryAllocation;
}

static inline cudaError_t
cudaFree(void *p)
{
    free(p);
    return cudaSuccess;
}

static inline cudaError_t
cudaMemcpy(void *d, const void *s, size_t n, cudaMemcpyKind k)
{
    memcpy(d, s, n);
    return cudaSuccess;
}

static inline cudaError_t
cudaMemcpy2D(void *d, size_t dp, const void *s, size_t sp, size_t w,
    size_t h, cudaMemcpyKind k)
{
    size_t r;

    if (w > dp || w > sp) {
        return cudaErrorInvalidValue;
    }
    for (r = 0; r < h; r++) {
        memcpy((char *) d + r * dp, (const char *) s + r * sp, w);
    }
    return cudaSuccess;
}

static inline cudaError_t
cudaMemset(void *d, int v, size_t n)
{
    memset(d, v, n);
    return cudaSuccess;
}

static inline cudaError_t
cudaGetLastError(void)
{
    return cudaSuccess;
}

static inline cudaError_t
cudaDeviceSynchronize(void)
{
    return cudaSuccess;
}

static inline float
rsqrtf(float x)
{
    return 1.0f / sqrtf(x);
}

static inline float
atomicAdd(float *p, float v)
{
    float o = *p;

    *p = o + v;
    return o;
}

/* ---- cuBLAS ------------------------------------------------------------ */

typedef struct cm_emu_blas { int unused; } *cublasHandle_t;
typedef enum { CUBLAS_OP_N, CUBLAS_OP_T } cublasOperation_t;
typedef enum {
    CUBLAS_STATUS_SUCCESS = 0, CUBLAS_STATUS_INVALID_VALUE = 7
} cublasStatus_t;
typedef enum { CUBLAS_DEFAULT_MATH = 0 } cublasMath_t;

static inline cublasStatus_t
cublasCreate(cublasHandle_t *h)
{
    *h = (cublasHandle_t) calloc(1, sizeof(struct cm_emu_blas));
    return CUBLAS_STATUS_SUCCESS;
}

static inline cublasStatus_t
cublasDestroy(cublasHandle_t h)
{
    free(h);
    return CUBLAS_STATUS_SUCCESS;
}

static inline cublasStatus_t
cublasSetMathMode(cublasHandle_t h, cublasMath_t m)
{
    return CUBLAS_STATUS_SUCCESS;
}

/*
 * Column-major, as documented: C (m x n, ldc) = alpha op(A) op(B) + beta C
 * with op(A) m x k (A stored m x k with lda >= m when N, k x m with
 * lda >= k when T) and op(B) k x n (ldb >= k when N, >= n when T).
 */
static inline cublasStatus_t
cublasSgemmStridedBatched(cublasHandle_t h, cublasOperation_t ta,
    cublasOperation_t tb, int m, int n, int k, const float *alpha,
    const float *A, int lda, long long sA, const float *B, int ldb,
    long long sB, const float *beta, float *C, int ldc, long long sC,
    int batch)
{
    int i, j, p, q;

    if (m < 0 || n < 0 || k < 0 || ldc < (m > 1 ? m : 1)
        || lda < ((ta == CUBLAS_OP_N ? m : k) > 1 ? (ta == CUBLAS_OP_N ? m
                                                                       : k)
                                                   : 1)
        || ldb < ((tb == CUBLAS_OP_N ? k : n) > 1 ? (tb == CUBLAS_OP_N ? k
                                                                       : n)
                                                   : 1))
    {
        return CUBLAS_STATUS_INVALID_VALUE;
    }
    for (q = 0; q < batch; q++) {
        const float *a = A + q * sA, *b = B + q * sB;
        float       *c = C + q * sC;

        for (j = 0; j < n; j++) {
            for (i = 0; i < m; i++) {
                double s = 0.0;

                for (p = 0; p < k; p++) {
                    float av = ta == CUBLAS_OP_N ? a[i + (size_t) p * lda]
                                                 : a[p + (size_t) i * lda];
                    float bv = tb == CUBLAS_OP_N ? b[p + (size_t) j * ldb]
                                                 : b[j + (size_t) p * ldb];

                    s += (double) av * bv;
                }
                /* beta 0: C is not read (it may hold NaN garbage) */
                c[i + (size_t) j * ldc] = (float) (*alpha * s
                    + (*beta != 0.0f ? *beta * c[i + (size_t) j * ldc]
                                     : 0.0f));
            }
        }
    }
    return CUBLAS_STATUS_SUCCESS;
}

static inline cublasStatus_t
cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb,
    int m, int n, int k, const float *alpha, const float *A, int lda,
    const float *B, int ldb, const float *beta, float *C, int ldc)
{
    return cublasSgemmStridedBatched(h, ta, tb, m, n, k, alpha, A, lda, 0, B,
                                     ldb, 0, beta, C, ldc, 0, 1);
}

/* ---- launches ------------------------------------------------------------
 * K<<<g, b[, shm]>>>(args) becomes cm_launch(K, g, b[, shm])(args) (gen.py):
 * every thread of every block runs K's body in turn. */
template <typename F>
struct cm_launcher {
    F    f;
    dim3 g, b;

    template <typename... A>
    void operator()(A... a)
    {
        gridDim = g;
        blockDim = b;
        for (unsigned by = 0; by < g.y; by++) {
            for (unsigned bx = 0; bx < g.x; bx++) {
                for (unsigned t = 0; t < b.x; t++) {
                    blockIdx = dim3(bx, by, 0);
                    threadIdx = dim3(t, 0, 0);
                    f(a...);
                }
            }
        }
    }
};

template <typename F>
static cm_launcher<F>
cm_launch(F f, dim3 g, dim3 b, size_t shm = 0)
{
    cm_launcher<F> l;

    l.f = f;
    l.g = g;
    l.b = b;
    return l;
}

#endif /* CM_CUDA_EMU_H */

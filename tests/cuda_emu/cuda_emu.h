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
 * one thread after another; the others (reductions) run their real
 * bodies too, with one std::thread per CUDA thread, a block at a time (__syncthreads a
 * block barrier, warp shuffles through a per-warp exchange with barriers,
 * __shared__ variables static: one block runs at a time).  What it cannot
 * show: races that need real concurrency between blocks, timing, memory
 * limits, cuBLAS's own numerics (its sums here are in double).
 */
#ifndef CM_CUDA_EMU_H
#define CM_CUDA_EMU_H

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <condition_variable>
#include <mutex>
#include <thread>
#include <vector>

#define __global__
#define __device__
#define __host__
#define __shared__ static

/* internal linkage for all of it, templates included: each of the two
 * emulated .cpp files has its own launch state and kernels, and a shared
 * (COMDAT) launcher instantiation would run one file's kernel with the
 * other's state */
namespace {

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c)
    {
    }
};

static thread_local dim3 threadIdx, blockIdx;
static dim3 blockDim, gridDim;

/* a reusable barrier (libstdc++ 12's std::barrier read freed memory
 * under ASan here) */
struct cm_emu_barrier {
    std::mutex              mu;
    std::condition_variable cv;
    long                    n, waiting = 0, gen = 0;

    explicit cm_emu_barrier(long count) : n(count)
    {
    }

    void arrive_and_wait()
    {
        std::unique_lock<std::mutex> lk(mu);
        long                         g = gen;

        if (++waiting == n) {
            waiting = 0;
            gen++;
            cv.notify_all();
            return;
        }
        cv.wait(lk, [&] { return gen != g; });
    }
};

/* the block being run: its barrier, its warps' barriers and exchange
 * slots, its dynamic shared memory */
static cm_emu_barrier              *cm_emu_block_bar;
static std::vector<cm_emu_barrier *> cm_emu_warp_bar;
static float                         cm_emu_xchg[32][32];
static char                         *cm_emu_dyn_shared;

static inline void
__syncthreads(void)
{
    cm_emu_block_bar->arrive_and_wait();
}

static inline float
cm_emu_shfl(float v, int src)
{
    int lane = threadIdx.x % 32, w = threadIdx.x / 32;

    cm_emu_warp_bar[w]->arrive_and_wait();     /* last exchange read */
    cm_emu_xchg[w][lane] = v;
    cm_emu_warp_bar[w]->arrive_and_wait();
    return src >= 0 && src < 32 ? cm_emu_xchg[w][src] : v;
}

static inline float
__shfl_down_sync(unsigned mask, float v, int o)
{
    return cm_emu_shfl(v, (int) (threadIdx.x % 32) + o);
}

static inline float
__shfl_sync(unsigned mask, float v, int src)
{
    return cm_emu_shfl(v, src);
}

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

/* K<<<g, b, shm>>>(args) for kernels with barriers or shuffles:
 * cm_launch_threads(K, g, b, shm)(args), one thread per CUDA thread */
template <typename F>
struct cm_threaded {
    F      f;
    dim3   g, b;
    size_t shm;

    template <typename... A>
    void operator()(A... a)
    {
        unsigned nt = b.x, nw = (nt + 31) / 32;

        gridDim = g;
        blockDim = b;
        cm_emu_dyn_shared = (char *) calloc(shm ? shm : 1, 1);
        for (unsigned by = 0; by < g.y; by++) {
            for (unsigned bx = 0; bx < g.x; bx++) {
                std::vector<std::thread> th;

                cm_emu_block_bar = new cm_emu_barrier((long) nt);
                cm_emu_warp_bar.clear();
                for (unsigned w = 0; w < nw; w++) {
                    cm_emu_warp_bar.push_back(new cm_emu_barrier(
                        (long) (w + 1 < nw || nt % 32 == 0
                                          ? 32 : nt % 32)));
                }
                for (unsigned t = 0; t < nt; t++) {
                    th.emplace_back([=, this]() {
                        blockIdx = dim3(bx, by, 0);
                        threadIdx = dim3(t, 0, 0);
                        f(a...);
                    });
                }
                for (auto &x : th) {
                    x.join();
                }
                for (auto *wb : cm_emu_warp_bar) {
                    delete wb;
                }
                delete cm_emu_block_bar;
            }
        }
        free(cm_emu_dyn_shared);
    }
};

template <typename F>
static cm_threaded<F>
cm_launch_threads(F f, dim3 g, dim3 b, size_t shm = 0)
{
    cm_threaded<F> l;

    l.f = f;
    l.g = g;
    l.b = b;
    l.shm = shm;
    return l;
}

}  /* namespace */

#endif /* CM_CUDA_EMU_H */

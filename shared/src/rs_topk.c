/*
 * rs_topk.c: top-K of a score row made on the fly (biases added in the
 * scan, blocks of 16 pruned against the heap's root).  See
 * cinematch/rs_topk.h.
 */
#include <math.h>
#include <string.h>

#include "cinematch/lm_kernels.h"
#include "cinematch/rs_topk.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CM_RSK_X86  1
#include <immintrin.h>
#define CM_RSK_AVX512  __attribute__((target("avx512f")))
#endif

/* the scan's state: out_idx/out_score are the heap until the end */
typedef struct {
    const uint32_t  *excl;
    size_t           n_excl;
    size_t           e;          /* exclusion cursor */
    cm_rs_pass_pt    pass;
    const void      *ctx;
    size_t           k;
    size_t           h;          /* heap size */
    uint32_t        *idx;
    float           *sc;
} cm_rsk_t;


/* a worse than b: lower score, or the same score and a higher index */
static inline int
cm_rsk_worse(float sa, uint32_t ia, float sb, uint32_t ib)
{
    return sa < sb || (sa == sb && ia > ib);
}


static void
cm_rsk_sift_down(float *hs, uint32_t *hi, size_t n, size_t i)
{
    size_t    c, w;
    float     ts;
    uint32_t  ti;

    for ( ;; ) {
        w = i;
        c = 2 * i + 1;
        if (c < n && cm_rsk_worse(hs[c], hi[c], hs[w], hi[w])) {
            w = c;
        }
        if (c + 1 < n && cm_rsk_worse(hs[c + 1], hi[c + 1], hs[w], hi[w])) {
            w = c + 1;
        }
        if (w == i) {
            return;
        }
        ts = hs[i]; hs[i] = hs[w]; hs[w] = ts;
        ti = hi[i]; hi[i] = hi[w]; hi[w] = ti;
        i = w;
    }
}


/* item i with score s: what cm_rs_topk does per item, the filter last */
static inline void
cm_rsk_consider(cm_rsk_t *t, float s, uint32_t i)
{
    size_t    j, a;
    float     ts;
    uint32_t  ti;

    if (t->h == t->k && !(s >= t->sc[0])) {
        return;
    }
    while (t->e < t->n_excl && t->excl[t->e] < i) {
        t->e++;
    }
    if (t->e < t->n_excl && t->excl[t->e] == i) {
        return;
    }
    if (isnan(s)) {
        return;
    }
    if (t->pass != NULL && !t->pass(t->ctx, i)) {
        return;
    }
    if (t->h < t->k) {
        t->sc[t->h] = s;
        t->idx[t->h] = i;
        t->h++;
        for (j = t->h - 1; j > 0; j = a) {   /* sift up */
            a = (j - 1) / 2;
            if (!cm_rsk_worse(t->sc[j], t->idx[j], t->sc[a], t->idx[a])) {
                break;
            }
            ts = t->sc[j]; t->sc[j] = t->sc[a]; t->sc[a] = ts;
            ti = t->idx[j]; t->idx[j] = t->idx[a]; t->idx[a] = ti;
        }
    } else if (cm_rsk_worse(t->sc[0], t->idx[0], s, i)) {
        t->sc[0] = s;
        t->idx[0] = i;
        cm_rsk_sift_down(t->sc, t->idx, t->h, 0);
    }
}


/* heap sort: pop the worst to the end, best ends first */
static size_t
cm_rsk_finish(cm_rsk_t *t)
{
    size_t    j;
    float     ts;
    uint32_t  ti;

    for (j = t->h; j > 1; j--) {
        ts = t->sc[0]; t->sc[0] = t->sc[j - 1]; t->sc[j - 1] = ts;
        ti = t->idx[0]; t->idx[0] = t->idx[j - 1]; t->idx[j - 1] = ti;
        cm_rsk_sift_down(t->sc, t->idx, j - 1, 0);
    }
    return t->h;
}


static void
cm_rsk_init(cm_rsk_t *t, const uint32_t *excl, size_t n_excl,
            cm_rs_pass_pt pass, const void *ctx, size_t k, uint32_t *out_idx,
            float *out_score)
{
    memset(t, 0, sizeof(*t));
    t->excl = excl;
    t->n_excl = excl != NULL ? n_excl : 0;
    t->pass = pass;
    t->ctx = ctx;
    t->k = k;
    t->idx = out_idx;
    t->sc = out_score;
}


size_t
cm_rs_topk_fused_plain(const float *dots, float base, const float *bias,
                       uint32_t n, const uint32_t *excl, size_t n_excl,
                       cm_rs_pass_pt pass, const void *ctx, size_t k,
                       uint32_t *out_idx, float *out_score)
{
    cm_rsk_t  t;
    uint32_t  i;

    if (k == 0) {
        return 0;
    }
    cm_rsk_init(&t, excl, n_excl, pass, ctx, k, out_idx, out_score);
    for (i = 0; i < n; i++) {
        cm_rsk_consider(&t, cm_rs_fused_score(dots, base, bias, i), i);
    }
    return cm_rsk_finish(&t);
}


#ifdef CM_RSK_X86

CM_RSK_AVX512 static size_t
cm_rs_topk_fused_avx512(const float *dots, float base, const float *bias,
                        uint32_t n, const uint32_t *excl, size_t n_excl,
                        cm_rs_pass_pt pass, const void *ctx, size_t k,
                        uint32_t *out_idx, float *out_score)
{
    cm_rsk_t   t;
    uint32_t   i, b;
    __mmask16  m, ge;
    __m512     v, vb = _mm512_set1_ps(base);
    float      tmp[16];

    cm_rsk_init(&t, excl, n_excl, pass, ctx, k, out_idx, out_score);
    /* until the heap is full every item is a candidate */
    for (i = 0; i < n && t.h < k; i++) {
        cm_rsk_consider(&t, cm_rs_fused_score(dots, base, bias, i), i);
    }
    for (; i < n; i += 16) {
        m = n - i >= 16 ? (__mmask16) 0xffff
                        : (__mmask16) ((1u << (n - i)) - 1);
        v = _mm512_maskz_loadu_ps(m, dots + i);
        if (bias != NULL) {
            v = _mm512_add_ps(v, _mm512_add_ps(vb,
                                 _mm512_maskz_loadu_ps(m, bias + i)));
        }
        /* ordered >=: NaN never passes, as in the scalar test */
        ge = _mm512_mask_cmp_ps_mask(m, v, _mm512_set1_ps(out_score[0]),
                                     _CMP_GE_OQ);
        if (ge == 0) {
            continue;
        }
        _mm512_storeu_ps(tmp, v);
        while (ge != 0) {
            b = (uint32_t) __builtin_ctz(ge);
            ge &= (__mmask16) (ge - 1);
            cm_rsk_consider(&t, tmp[b], i + b);   /* the root may have moved */
        }
    }
    return cm_rsk_finish(&t);
}

#endif


size_t
cm_rs_topk_fused(const float *dots, float base, const float *bias,
                 uint32_t n, const uint32_t *excl, size_t n_excl,
                 cm_rs_pass_pt pass, const void *ctx, size_t k,
                 uint32_t *out_idx, float *out_score)
{
    if (k == 0) {
        return 0;
    }
#ifdef CM_RSK_X86
    if (cm_lmk_simd()) {
        return cm_rs_topk_fused_avx512(dots, base, bias, n, excl, n_excl,
                                       pass, ctx, k, out_idx, out_score);
    }
#endif
    return cm_rs_topk_fused_plain(dots, base, bias, n, excl, n_excl, pass,
                                  ctx, k, out_idx, out_score);
}

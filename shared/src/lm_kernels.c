/*
 * lm_kernels.c: decode-time kernels of the dialog LM engine: a linear
 * layer over a few rows against panel-packed weights, and one row's
 * attention over its KV cache.  See cinematch/lm_kernels.h.
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cinematch/gpt.h"
#include "cinematch/lm_kernels.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CM_LMK_X86  1
#include <immintrin.h>
#define CM_LMK_AVX512  __attribute__((target("avx512f,avx512bw,avx512vl,fma")))
#define CM_LMK_INLINE  static inline __attribute__((always_inline))
#endif


static int  cm_lmk_simd_state = -1;


int
cm_lmk_simd(void)
{
#ifdef CM_LMK_X86
    if (cm_lmk_simd_state < 0) {
        __builtin_cpu_init();
        cm_lmk_simd_state = __builtin_cpu_supports("avx512f")
                            && __builtin_cpu_supports("avx512bw")
                            && __builtin_cpu_supports("avx512vl")
                            && __builtin_cpu_supports("fma");
    }
    return cm_lmk_simd_state;
#else
    return 0;
#endif
}


size_t
cm_lmk_packed_floats(int OC, int K)
{
    size_t panels = ((size_t) OC + CM_LMK_PANEL - 1) / CM_LMK_PANEL;

    return panels * (size_t) K * CM_LMK_PANEL;
}


void
cm_lmk_pack(cm_lmk_matrix_t *pm, float *mem, const float *w,
    const float *bias, int OC, int K)
{
    size_t  panels = ((size_t) OC + CM_LMK_PANEL - 1) / CM_LMK_PANEL, p;
    int     j, k, o;

    for (p = 0; p < panels; p++) {
        float *dst = mem + p * (size_t) K * CM_LMK_PANEL;

        for (j = 0; j < CM_LMK_PANEL; j++) {
            o = (int) p * CM_LMK_PANEL + j;
            for (k = 0; k < K; k++) {
                dst[(size_t) k * CM_LMK_PANEL + j] =
                    o < OC ? w[(size_t) o * K + k] : 0.0f;
            }
        }
    }
    pm->w = mem;
    pm->bias = bias;
    pm->OC = OC;
    pm->K = K;
    pm->wb = NULL;
}


void
cm_lmk_linear_ref(float *out, const float *inp, const cm_lmk_matrix_t *pm,
    int R)
{
    int          K = pm->K, OC = pm->OC, r, o, k;
    const float *pw;
    float        acc;

    for (r = 0; r < R; r++) {
        for (o = 0; o < OC; o++) {
            pw = pm->w + (size_t) (o / CM_LMK_PANEL) * K * CM_LMK_PANEL
                 + o % CM_LMK_PANEL;
            acc = pm->bias != NULL ? pm->bias[o] : 0.0f;
            for (k = 0; k < K; k++) {
                acc += inp[(size_t) r * K + k]
                       * pw[(size_t) k * CM_LMK_PANEL];
            }
            out[(size_t) r * OC + o] = acc;
        }
    }
}


#ifdef CM_LMK_X86

/*
 * One block: rows x[0..rb) (stride ldx) times one panel (K, 32), plus the
 * panel's bias, into out[0..rb) columns [0, ncols) (stride ldo).  rb is a
 * constant at every call site, so the 2 * rb accumulators live in
 * registers: per k, two loads of the panel, rb broadcasts, 2 * rb FMAs.
 */
CM_LMK_AVX512 CM_LMK_INLINE void
cm_lmk_block_avx512(float *out, size_t ldo, const float *x, size_t ldx,
    const float *pw, const float *bias, int K, int ncols, const int rb)
{
    __m512     a0[CM_LMK_ROWS], a1[CM_LMK_ROWS], b0, b1, w0, w1, xb;
    __mmask16  m0, m1;
    int        r, k;

    m0 = ncols >= 16 ? (__mmask16) 0xFFFF
                     : (__mmask16) ((1u << ncols) - 1);
    m1 = ncols >= 32 ? (__mmask16) 0xFFFF
         : ncols <= 16 ? (__mmask16) 0
         : (__mmask16) ((1u << (ncols - 16)) - 1);
    if (bias != NULL) {
        b0 = _mm512_maskz_loadu_ps(m0, bias);
        b1 = _mm512_maskz_loadu_ps(m1, bias + 16);
    } else {
        b0 = _mm512_setzero_ps();
        b1 = b0;
    }
#pragma GCC unroll 12
    for (r = 0; r < rb; r++) {
        a0[r] = b0;
        a1[r] = b1;
    }
    for (k = 0; k < K; k++) {
        w0 = _mm512_load_ps(pw + (size_t) k * CM_LMK_PANEL);
        w1 = _mm512_load_ps(pw + (size_t) k * CM_LMK_PANEL + 16);
#pragma GCC unroll 12
        for (r = 0; r < rb; r++) {
            xb = _mm512_set1_ps(x[(size_t) r * ldx + k]);
            a0[r] = _mm512_fmadd_ps(xb, w0, a0[r]);
            a1[r] = _mm512_fmadd_ps(xb, w1, a1[r]);
        }
    }
#pragma GCC unroll 12
    for (r = 0; r < rb; r++) {
        _mm512_mask_storeu_ps(out + (size_t) r * ldo, m0, a0[r]);
        _mm512_mask_storeu_ps(out + (size_t) r * ldo + 16, m1, a1[r]);
    }
}


#define CM_LMK_CASE(n)                                                      \
    case n:                                                                 \
        cm_lmk_block_avx512(o, (size_t) OC, x, (size_t) K, pw, b, K,        \
                            ncols, n);                                      \
        break

CM_LMK_AVX512 static void
cm_lmk_linear_avx512(float *out, const float *inp, const cm_lmk_matrix_t *pm,
    int R, int p0, int p1)
{
    int          K = pm->K, OC = pm->OC, p, r0, rb, ncols;
    const float *pw, *b, *x;
    float       *o;

    for (p = p0; p < p1; p++) {
        /* the panel stays in L1/L2 while every row block passes over it */
        pw = pm->w + (size_t) p * K * CM_LMK_PANEL;
        b = pm->bias != NULL ? pm->bias + (size_t) p * CM_LMK_PANEL : NULL;
        ncols = OC - p * CM_LMK_PANEL;
        ncols = ncols < CM_LMK_PANEL ? ncols : CM_LMK_PANEL;
        for (r0 = 0; r0 < R; r0 += rb) {
            rb = R - r0 < CM_LMK_ROWS ? R - r0 : CM_LMK_ROWS;
            x = inp + (size_t) r0 * K;
            o = out + (size_t) r0 * OC + (size_t) p * CM_LMK_PANEL;
            switch (rb) {
            CM_LMK_CASE(12);
            CM_LMK_CASE(11);
            CM_LMK_CASE(10);
            CM_LMK_CASE(9);
            CM_LMK_CASE(8);
            CM_LMK_CASE(7);
            CM_LMK_CASE(6);
            CM_LMK_CASE(5);
            CM_LMK_CASE(4);
            CM_LMK_CASE(3);
            CM_LMK_CASE(2);
            default:
                cm_lmk_block_avx512(o, (size_t) OC, x, (size_t) K, pw, b, K,
                                    ncols, 1);
                break;
            }
        }
    }
}

#undef CM_LMK_CASE


/*
 * Sixteen vectors in, one out: lane j is the sum of v[j]'s lanes.  A
 * transpose-and-add tree (45 shuffles and adds for 16 sums) instead of 16
 * separate horizontal reductions.
 */
CM_LMK_AVX512 CM_LMK_INLINE __m512
cm_lmk_hsum16(__m512 *v)
{
    __m512  t[8], u[4], w0, w1;
    int     i;

    for (i = 0; i < 8; i++) {
        t[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]),
                             _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
    }
    for (i = 0; i < 4; i++) {
        u[i] = _mm512_add_ps(_mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0x44),
                             _mm512_shuffle_ps(t[2 * i], t[2 * i + 1], 0xEE));
    }
    w0 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88),
                       _mm512_shuffle_f32x4(u[0], u[1], 0xDD));
    w1 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88),
                       _mm512_shuffle_f32x4(u[2], u[3], 0xDD));
    return _mm512_add_ps(_mm512_shuffle_f32x4(w0, w1, 0x88),
                         _mm512_shuffle_f32x4(w0, w1, 0xDD));
}


/* e^x for x <= 0 (softmax after subtracting the max): Cephes' expf
 * polynomial on the reduced argument, scaled by 2^n; about 1 ulp. */
CM_LMK_AVX512 CM_LMK_INLINE __m512
cm_lmk_exp(__m512 x)
{
    __m512  n, r, p;

    x = _mm512_max_ps(x, _mm512_set1_ps(-87.0f));
    n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504f)),
                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    p = _mm512_set1_ps(1.9875691500e-4f);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
    p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r),
                        _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
    return _mm512_scalef_ps(p, n);
}


/* 16 cache elements from element i of p: fp32, or bf16 (kvb) widened
 * exactly (a bf16 is the high half of its fp32). */
CM_LMK_AVX512 CM_LMK_INLINE __m512
cm_lmk_kv_ld(const void *p, size_t i, const int kvb)
{
    if (kvb) {
        return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(
            _mm256_loadu_si256((const __m256i *)
                               ((const uint16_t *) p + i))), 16));
    }
    return _mm512_loadu_ps((const float *) p + i);
}


/* q_h . k for one position (elements at k0 of kc), hs = 16 * nv. */
CM_LMK_AVX512 CM_LMK_INLINE __m512
cm_lmk_dot_vec(const __m512 *qv, const void *kc, size_t k0, int nv,
    const int kvb)
{
    __m512  a;
    int     i;

    a = _mm512_mul_ps(qv[0], cm_lmk_kv_ld(kc, k0, kvb));
    for (i = 1; i < nv; i++) {
        a = _mm512_fmadd_ps(qv[i], cm_lmk_kv_ld(kc, k0 + 16 * (size_t) i,
                                                kvb), a);
    }
    return a;
}


/*
 * out[h0 .. h0+g) (hs = 64: four vectors a head) = sum_t p_h[t] v_t for g
 * heads at once: one pass over the value rows in memory order, each row's
 * 4 g vectors into 4 g accumulators (g <= 6: 24 registers).  ph[h] are the
 * normalised probabilities of head h0 + h.  Each accumulator sums over t in
 * order with one FMA a position, the same arithmetic as a head at a time.
 */
CM_LMK_AVX512 CM_LMK_INLINE void
cm_lmk_pv64(float *out, const void *vc, size_t v0, const float *const *ph,
    int T, int C, const int g, const int kvb)
{
    __m512  acc[24], p;
    int     t, h, i;

#pragma GCC unroll 24
    for (i = 0; i < 4 * g; i++) {
        acc[i] = _mm512_setzero_ps();
    }
    for (t = 0; t < T; t++) {
        size_t v = v0 + (size_t) t * C;

#pragma GCC unroll 6
        for (h = 0; h < g; h++) {
            p = _mm512_set1_ps(ph[h][t]);
#pragma GCC unroll 4
            for (i = 0; i < 4; i++) {
                acc[4 * h + i] = _mm512_fmadd_ps(p,
                    cm_lmk_kv_ld(vc, v + 64 * h + 16 * i, kvb),
                    acc[4 * h + i]);
            }
        }
    }
#pragma GCC unroll 24
    for (i = 0; i < 4 * g; i++) {
        _mm512_storeu_ps(out + 16 * i, acc[i]);
    }
}


/*
 * scores[h][t] (h < g, rows of T) = scale * q_h . k_t,h for g heads of
 * hs = 64 at once: the key rows once, in memory order (a row's g heads
 * while it is in L1), the q vectors of the g heads held in registers.
 * Each row's per-head vector of partial sums goes to a small buffer and
 * every 16 rows a transpose-add reduces each head's 16 of them: the same
 * arithmetic, in the same order, as a head at a time.
 */
CM_LMK_AVX512 CM_LMK_INLINE void
cm_lmk_qk64(float *scores, const float *q, const void *kc, size_t k0,
    int T, int C, float scale, const int g, const int kvb)
{
    __m512       qv[24], d[16], s, sc = _mm512_set1_ps(scale);
    __m512       part[6 * 16];
    size_t       k;
    int          t, i, h, j;

#pragma GCC unroll 24
    for (j = 0; j < 4 * g; j++) {
        qv[j] = _mm512_loadu_ps(q + 16 * j);
    }
    for (t = 0; t + 16 <= T; t += 16) {
        for (i = 0; i < 16; i++) {
            k = k0 + (size_t) (t + i) * C;
#pragma GCC unroll 6
            for (h = 0; h < g; h++) {
                part[16 * h + i] = cm_lmk_dot_vec(qv + 4 * h, kc, k + 64 * h,
                                                  4, kvb);
            }
        }
        for (h = 0; h < g; h++) {
            for (i = 0; i < 16; i++) {
                d[i] = part[16 * h + i];
            }
            s = _mm512_mul_ps(cm_lmk_hsum16(d), sc);
            _mm512_storeu_ps(scores + (size_t) h * T + t, s);
        }
    }
    for ( ; t < T; t++) {
        k = k0 + (size_t) t * C;
        for (h = 0; h < g; h++) {
            scores[(size_t) h * T + t] = _mm512_reduce_add_ps(
                cm_lmk_dot_vec(qv + 4 * h, kc, k + 64 * h, 4, kvb)) * scale;
        }
    }
}


CM_LMK_AVX512 CM_LMK_INLINE void
cm_lmk_attend_body(float *out, const float *q, const void *kc,
    const void *vc, float *scores, int T, int C, int NH, float scale,
    const int kvb)
{
    int        hs = C / NH, h, t, i, nv = hs / 16, n, g;
    float      mx, sum, inv, *sh;
    const float *ph[6];
    __m512     qv[8], acc[8], d[16], s, vmx, vsum, sc = _mm512_set1_ps(scale);
    __mmask16  m;

    if (hs == 64) {
        /* scores (NH, T): the key rows once, in order, six heads a pass */
        for (h = 0; h < NH; h += g) {
            g = NH - h < 6 ? NH - h : 6;
            switch (g) {
            case 6: cm_lmk_qk64(scores + (size_t) h * T, q + 64 * h,
                                kc, 64 * (size_t) h, T, C, scale, 6, kvb);
                     break;
            case 5: cm_lmk_qk64(scores + (size_t) h * T, q + 64 * h,
                                kc, 64 * (size_t) h, T, C, scale, 5, kvb);
                     break;
            case 4: cm_lmk_qk64(scores + (size_t) h * T, q + 64 * h,
                                kc, 64 * (size_t) h, T, C, scale, 4, kvb);
                     break;
            case 3: cm_lmk_qk64(scores + (size_t) h * T, q + 64 * h,
                                kc, 64 * (size_t) h, T, C, scale, 3, kvb);
                     break;
            case 2: cm_lmk_qk64(scores + (size_t) h * T, q + 64 * h,
                                kc, 64 * (size_t) h, T, C, scale, 2, kvb);
                     break;
            default: cm_lmk_qk64(scores + (size_t) h * T, q + 64 * h,
                                 kc, 64 * (size_t) h, T, C, scale, 1, kvb);
                     break;
            }
        }
    }
    /* scores (NH, T): 16 positions at a time, every head of those 16 rows
     * while they are in L1 (the cache is read in order, once) */
    for (t = hs == 64 ? T : 0; t + 16 <= T; t += 16) {
        for (h = 0; h < NH; h++) {
            for (i = 0; i < nv; i++) {
                qv[i] = _mm512_loadu_ps(q + (size_t) h * hs + 16 * i);
            }
            for (i = 0; i < 16; i++) {
                d[i] = cm_lmk_dot_vec(qv, kc, (size_t) (t + i) * C
                                              + (size_t) h * hs, nv, kvb);
            }
            s = _mm512_mul_ps(cm_lmk_hsum16(d), sc);
            _mm512_storeu_ps(scores + (size_t) h * T + t, s);
        }
    }
    for (h = 0; h < NH && hs != 64; h++) {
        for (i = 0; i < nv; i++) {
            qv[i] = _mm512_loadu_ps(q + (size_t) h * hs + 16 * i);
        }
        for (i = t; i < T; i++) {
            scores[(size_t) h * T + i] = _mm512_reduce_add_ps(
                cm_lmk_dot_vec(qv, kc, (size_t) i * C + (size_t) h * hs,
                               nv, kvb)) * scale;
        }
    }
    for (h = 0; h < NH; h++) {
        size_t vh = (size_t) h * hs;

        sh = scores + (size_t) h * T;
        /* softmax numerators and their sum */
        vmx = _mm512_set1_ps(-INFINITY);
        for (t = 0; t < T; t += 16) {
            n = T - t < 16 ? T - t : 16;
            m = (__mmask16) (n == 16 ? 0xFFFF : (1u << n) - 1);
            vmx = _mm512_mask_max_ps(vmx, m, vmx,
                                     _mm512_maskz_loadu_ps(m, sh + t));
        }
        mx = _mm512_reduce_max_ps(vmx);
        vmx = _mm512_set1_ps(mx);
        vsum = _mm512_setzero_ps();
        for (t = 0; t < T; t += 16) {
            n = T - t < 16 ? T - t : 16;
            m = (__mmask16) (n == 16 ? 0xFFFF : (1u << n) - 1);
            s = cm_lmk_exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, sh + t),
                                         vmx));
            vsum = _mm512_mask_add_ps(vsum, m, vsum, s);
            _mm512_mask_storeu_ps(sh + t, m, s);
        }
        sum = _mm512_reduce_add_ps(vsum);
        inv = 1.0f / sum;
        if (hs == 64) {
            /* normalised here; the values pass below, all heads at once */
            s = _mm512_set1_ps(inv);
            for (t = 0; t < T; t += 16) {
                n = T - t < 16 ? T - t : 16;
                m = (__mmask16) (n == 16 ? 0xFFFF : (1u << n) - 1);
                _mm512_mask_storeu_ps(sh + t, m,
                    _mm512_mul_ps(_mm512_maskz_loadu_ps(m, sh + t), s));
            }
            continue;
        }
        /* out_h = sum_t p_t v_t */
        for (i = 0; i < nv; i++) {
            acc[i] = _mm512_setzero_ps();
        }
        for (t = 0; t < T; t++) {
            size_t  v = vh + (size_t) t * C;
            __m512  p = _mm512_set1_ps(sh[t] * inv);

            for (i = 0; i < nv; i++) {
                acc[i] = _mm512_fmadd_ps(p, cm_lmk_kv_ld(vc, v + 16 * i,
                                                         kvb), acc[i]);
            }
        }
        for (i = 0; i < nv; i++) {
            _mm512_storeu_ps(out + (size_t) h * hs + 16 * i, acc[i]);
        }
    }
    if (hs != 64) {
        return;
    }
    /* hs = 64: the value rows once, in order, up to six heads a pass */
    for (h = 0; h < NH; h += g) {
        g = NH - h < 6 ? NH - h : 6;
        for (i = 0; i < g; i++) {
            ph[i] = scores + (size_t) (h + i) * T;
        }
        switch (g) {
        case 6: cm_lmk_pv64(out + 64 * h, vc, 64 * (size_t) h, ph, T, C, 6,
                             kvb); break;
        case 5: cm_lmk_pv64(out + 64 * h, vc, 64 * (size_t) h, ph, T, C, 5,
                             kvb); break;
        case 4: cm_lmk_pv64(out + 64 * h, vc, 64 * (size_t) h, ph, T, C, 4,
                             kvb); break;
        case 3: cm_lmk_pv64(out + 64 * h, vc, 64 * (size_t) h, ph, T, C, 3,
                             kvb); break;
        case 2: cm_lmk_pv64(out + 64 * h, vc, 64 * (size_t) h, ph, T, C, 2,
                             kvb); break;
        default: cm_lmk_pv64(out + 64 * h, vc, 64 * (size_t) h, ph, T, C, 1,
                             kvb); break;
        }
    }
}


CM_LMK_AVX512 static void
cm_lmk_attend_avx512(float *out, const float *q, const float *kc,
    const float *vc, float *scores, int T, int C, int NH, float scale)
{
    cm_lmk_attend_body(out, q, kc, vc, scores, T, C, NH, scale, 0);
}


CM_LMK_AVX512 static void
cm_lmk_attend_kvb_avx512(float *out, const float *q, const uint16_t *kc,
    const uint16_t *vc, float *scores, int T, int C, int NH, float scale)
{
    cm_lmk_attend_body(out, q, kc, vc, scores, T, C, NH, scale, 1);
}


/* GELU-tanh in place, 16 at a time: tanh(|y|) = (1 - e) / (1 + e) with
 * e = exp(-2|y|) <= 1, so the exp never overflows. */
CM_LMK_AVX512 static void
cm_lmk_gelu_avx512(float *x, size_t n)
{
    const __m512  c0 = _mm512_set1_ps(0.7978845608f);    /* sqrt(2/pi) */
    const __m512  c1 = _mm512_set1_ps(0.044715f);
    const __m512  one = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f);
    const __m512  m2 = _mm512_set1_ps(-2.0f);
    __m512        v, y, ay, e, t;
    __mmask16     m;
    size_t        i;

    for (i = 0; i < n; i += 16) {
        m = n - i >= 16 ? (__mmask16) 0xFFFF
                        : (__mmask16) ((1u << (n - i)) - 1);
        v = _mm512_maskz_loadu_ps(m, x + i);
        y = _mm512_mul_ps(c0, _mm512_fmadd_ps(_mm512_mul_ps(c1, v),
                                              _mm512_mul_ps(v, v), v));
        ay = _mm512_abs_ps(y);
        e = cm_lmk_exp(_mm512_mul_ps(m2, ay));
        t = _mm512_div_ps(_mm512_sub_ps(one, e), _mm512_add_ps(one, e));
        /* the sign of y back onto tanh */
        t = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(t),
                _mm512_and_si512(_mm512_castps_si512(y),
                                 _mm512_set1_epi32((int) 0x80000000u))));
        v = _mm512_mul_ps(_mm512_mul_ps(half, v), _mm512_add_ps(one, t));
        _mm512_mask_storeu_ps(x + i, m, v);
    }
}



/* cm_lmk_layernorm for C % 16 == 0: the same three passes per row, the
 * sums over 16 lanes (C / 16 partial sums each, then added up). */
CM_LMK_AVX512 static void
cm_lmk_layernorm_avx512(float *out, const float *inp, const float *weight,
    const float *bias, int N, int C)
{
    const __m512  invc = _mm512_set1_ps(1.0f / (float) C);
    __m512        sum, var, m, sc, d;
    float         v;
    int           n, i;

    for (n = 0; n < N; n++) {
        const float *x = inp + (size_t) n * C;
        float       *o = out + (size_t) n * C;

        sum = _mm512_setzero_ps();
        for (i = 0; i < C; i += 16) {
            sum = _mm512_add_ps(sum, _mm512_loadu_ps(x + i));
        }
        m = _mm512_mul_ps(_mm512_set1_ps(_mm512_reduce_add_ps(sum)), invc);
        var = _mm512_setzero_ps();
        for (i = 0; i < C; i += 16) {
            d = _mm512_sub_ps(_mm512_loadu_ps(x + i), m);
            var = _mm512_fmadd_ps(d, d, var);
        }
        v = _mm512_reduce_add_ps(var) / (float) C;
        sc = _mm512_set1_ps(1.0f / sqrtf(v + 1e-5f));
        for (i = 0; i < C; i += 16) {
            d = _mm512_mul_ps(sc, _mm512_sub_ps(_mm512_loadu_ps(x + i), m));
            _mm512_storeu_ps(o + i, _mm512_fmadd_ps(d,
                                 _mm512_loadu_ps(weight + i),
                                 _mm512_loadu_ps(bias + i)));
        }
    }
}


/* cm_lmk_next_above, 16 logits a compare */
CM_LMK_AVX512 static int
cm_lmk_next_above_avx512(const float *x, const uint8_t *marks, int i, int n,
    float thr)
{
    __m512     t = _mm512_set1_ps(thr);
    __mmask16  m;

    for ( ; i + 16 <= n; i += 16) {
        m = _mm512_cmp_ps_mask(_mm512_loadu_ps(x + i), t, _CMP_GT_OQ)
            | _mm_test_epi8_mask(
                  _mm_loadu_si128((const __m128i *) (marks + i)),
                  _mm_set1_epi8((char) 0xFF));
        if (m != 0) {
            return i + __builtin_ctz((unsigned) m);
        }
    }
    for ( ; i < n; i++) {
        if (x[i] > thr || marks[i] != 0) {
            return i;
        }
    }
    return n;
}

#endif /* CM_LMK_X86 */


void
cm_lmk_layernorm(float *out, const float *inp, const float *weight,
    const float *bias, int N, int C)
{
#ifdef CM_LMK_X86
    if (C % 16 == 0 && cm_lmk_simd()) {
        cm_lmk_layernorm_avx512(out, inp, weight, bias, N, C);
        return;
    }
#endif
    cm_layernorm_forward(out, NULL, NULL, inp, weight, bias, N, C);
}


int
cm_lmk_next_above(const float *x, const uint8_t *marks, int i, int n,
    float thr)
{
#ifdef CM_LMK_X86
    if (cm_lmk_simd()) {
        return cm_lmk_next_above_avx512(x, marks, i, n, thr);
    }
#endif
    for ( ; i < n; i++) {
        if (x[i] > thr || marks[i] != 0) {
            return i;
        }
    }
    return n;
}


void
cm_lmk_gelu(float *x, size_t n)
{
#ifdef CM_LMK_X86
    if (cm_lmk_simd()) {
        cm_lmk_gelu_avx512(x, n);
        return;
    }
#endif
    cm_gelu_forward(x, x, n);
}


int
cm_lmk_panels(const cm_lmk_matrix_t *pm)
{
    return (pm->OC + CM_LMK_PANEL - 1) / CM_LMK_PANEL;
}


void
cm_lmk_linear_part(float *out, const float *inp, const cm_lmk_matrix_t *pm,
    int R, int p0, int p1)
{
#ifdef CM_LMK_X86
    if (cm_lmk_simd()) {
        cm_lmk_linear_avx512(out, inp, pm, R, p0, p1);
        return;
    }
#endif
    if (p0 == 0 && p1 == cm_lmk_panels(pm)) {
        cm_lmk_linear_ref(out, inp, pm, R);
        return;
    }
    {
        /* columns [p0 * 32, p1 * 32) with the plain loops */
        cm_lmk_matrix_t  sub = *pm;
        int              r, o, c0 = p0 * CM_LMK_PANEL, k;

        sub.OC = p1 * CM_LMK_PANEL < pm->OC ? p1 * CM_LMK_PANEL : pm->OC;
        for (r = 0; r < R; r++) {
            for (o = c0; o < sub.OC; o++) {
                const float *pw = pm->w + (size_t) (o / CM_LMK_PANEL) * pm->K
                                  * CM_LMK_PANEL + o % CM_LMK_PANEL;
                float        acc = pm->bias != NULL ? pm->bias[o] : 0.0f;

                for (k = 0; k < pm->K; k++) {
                    acc += inp[(size_t) r * pm->K + k]
                           * pw[(size_t) k * CM_LMK_PANEL];
                }
                out[(size_t) r * pm->OC + o] = acc;
            }
        }
    }
}


void
cm_lmk_linear(float *out, const float *inp, const cm_lmk_matrix_t *pm,
    int R)
{
    cm_lmk_linear_part(out, inp, pm, R, 0, cm_lmk_panels(pm));
}


void
cm_lmk_attend(float *out, const float *q, const float *kc, const float *vc,
    float *scores, int T, int C, int NH, float scale)
{
    int    hs = C / NH, h, t, i;
    float  mx, sum, inv, d;

#ifdef CM_LMK_X86
    /* up to 8 vectors of accumulators: head sizes 16..128 */
    if (hs % 16 == 0 && hs <= 128 && cm_lmk_simd()) {
        cm_lmk_attend_avx512(out, q, kc, vc, scores, T, C, NH, scale);
        return;
    }
#endif
    for (h = 0; h < NH; h++) {
        const float *qh = q + (size_t) h * hs;
        float       *oh = out + (size_t) h * hs;

        mx = -INFINITY;
        for (t = 0; t < T; t++) {
            const float *k = kc + (size_t) t * C + (size_t) h * hs;

            d = 0.0f;
            for (i = 0; i < hs; i++) {
                d += qh[i] * k[i];
            }
            scores[t] = d * scale;
            mx = scores[t] > mx ? scores[t] : mx;
        }
        sum = 0.0f;
        for (t = 0; t < T; t++) {
            scores[t] = expf(scores[t] - mx);
            sum += scores[t];
        }
        inv = 1.0f / sum;
        memset(oh, 0, (size_t) hs * sizeof(float));
        for (t = 0; t < T; t++) {
            const float *v = vc + (size_t) t * C + (size_t) h * hs;
            float        p = scores[t] * inv;

            for (i = 0; i < hs; i++) {
                oh[i] += p * v[i];
            }
        }
    }
}


/* ---- bf16 weights --------------------------------------------------- */

#ifdef CM_LMK_X86
#define CM_LMK_BF16  __attribute__((target( \
    "avx512f,avx512bw,avx512vl,avx512bf16,fma")))
#endif

static int  cm_lmk_bf16_state = -1;


int
cm_lmk_bf16(void)
{
#ifdef CM_LMK_X86
    if (cm_lmk_bf16_state < 0) {
        __builtin_cpu_init();
        cm_lmk_bf16_state = cm_lmk_simd()
                            && __builtin_cpu_supports("avx512bf16");
    }
    return cm_lmk_bf16_state;
#else
    return 0;
#endif
}


uint16_t
cm_lmk_bf16_round(float f)
{
    uint32_t  u;

    memcpy(&u, &f, sizeof(u));
    if ((u & 0x7F800000u) == 0) {
        return (uint16_t) ((u >> 16) & 0x8000u);     /* zero, subnormal */
    }
    if ((u & 0x7FFFFFFFu) > 0x7F800000u) {
        return (uint16_t) ((u >> 16) | 0x0040u);     /* NaN, quiet */
    }
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (uint16_t) (u >> 16);
}


float
cm_lmk_bf16_float(uint16_t b)
{
    uint32_t  u = (uint32_t) b << 16;
    float     f;

    memcpy(&f, &u, sizeof(f));
    return f;
}


int
cm_lmk_bf16_kp(int K)
{
    return (K + 1) & ~1;
}


size_t
cm_lmk_packed_bf16(int OC, int K)
{
    size_t panels = ((size_t) OC + CM_LMK_PANEL - 1) / CM_LMK_PANEL;

    return panels * (size_t) cm_lmk_bf16_kp(K) * CM_LMK_PANEL;
}


void
cm_lmk_pack_bf16(cm_lmk_matrix_t *pm, uint16_t *mem, const float *w,
    const float *bias, int OC, int K)
{
    size_t  panels = ((size_t) OC + CM_LMK_PANEL - 1) / CM_LMK_PANEL, p;
    int     Kp = cm_lmk_bf16_kp(K), j, k, o;

    for (p = 0; p < panels; p++) {
        uint16_t *dst = mem + p * (size_t) Kp * CM_LMK_PANEL;

        for (j = 0; j < CM_LMK_PANEL; j++) {
            o = (int) p * CM_LMK_PANEL + j;
            for (k = 0; k < Kp; k++) {
                dst[(size_t) (k / 2) * 2 * CM_LMK_PANEL + 2 * j + k % 2] =
                    o < OC && k < K ? cm_lmk_bf16_round(w[(size_t) o * K + k])
                                    : 0;
            }
        }
    }
    pm->w = NULL;
    pm->wb = mem;
    pm->bias = bias;
    pm->OC = OC;
    pm->K = K;
}


/* One output of the bf16 product, in the order the instruction adds. */
static float
cm_lmk_bf16_dot(const uint16_t *x, const uint16_t *pw, int Kp, float acc)
{
    int  k2;

    for (k2 = 0; k2 < Kp / 2; k2++) {
        const uint16_t *wk = pw + (size_t) k2 * 2 * CM_LMK_PANEL;

        acc += cm_lmk_bf16_float(x[2 * k2 + 1]) * cm_lmk_bf16_float(wk[1]);
        acc += cm_lmk_bf16_float(x[2 * k2]) * cm_lmk_bf16_float(wk[0]);
    }
    return acc;
}


static void
cm_lmk_linear_bf16_loops(float *out, const uint16_t *xb,
    const cm_lmk_matrix_t *pm, int R, int p0, int p1)
{
    int  Kp = cm_lmk_bf16_kp(pm->K), OC = pm->OC, r, o, o1;

    o1 = p1 * CM_LMK_PANEL < OC ? p1 * CM_LMK_PANEL : OC;
    for (r = 0; r < R; r++) {
        for (o = p0 * CM_LMK_PANEL; o < o1; o++) {
            const uint16_t *pw = pm->wb + (size_t) (o / CM_LMK_PANEL) * Kp
                                 * CM_LMK_PANEL + 2 * (o % CM_LMK_PANEL);

            out[(size_t) r * OC + o] = cm_lmk_bf16_dot(xb + (size_t) r * Kp,
                pw, Kp, pm->bias != NULL ? pm->bias[o] : 0.0f);
        }
    }
}


void
cm_lmk_linear_bf16_ref(float *out, const uint16_t *xb,
    const cm_lmk_matrix_t *pm, int R)
{
    cm_lmk_linear_bf16_loops(out, xb, pm, R, 0, cm_lmk_panels(pm));
}


#ifdef CM_LMK_X86

/*
 * cm_lmk_block_avx512 for bf16: rb rows of xb (stride ldx bf16) times one
 * panel (Kp / 2, 32, 2); per pair of K two loads of the panel, rb
 * broadcasts of a row's pair, 2 rb dpbf16 (each two K steps of 16
 * columns).
 */
CM_LMK_BF16 CM_LMK_INLINE void
cm_lmk_block_bf16(float *out, size_t ldo, const uint16_t *x, size_t ldx,
    const uint16_t *pw, const float *bias, int Kp, int ncols, const int rb)
{
    __m512     a0[CM_LMK_ROWS], a1[CM_LMK_ROWS], b0, b1;
    __m512i    w0, w1, xb;
    __mmask16  m0, m1;
    uint32_t   pair;
    int        r, k2;

    m0 = ncols >= 16 ? (__mmask16) 0xFFFF
                     : (__mmask16) ((1u << ncols) - 1);
    m1 = ncols >= 32 ? (__mmask16) 0xFFFF
         : ncols <= 16 ? (__mmask16) 0
         : (__mmask16) ((1u << (ncols - 16)) - 1);
    if (bias != NULL) {
        b0 = _mm512_maskz_loadu_ps(m0, bias);
        b1 = _mm512_maskz_loadu_ps(m1, bias + 16);
    } else {
        b0 = _mm512_setzero_ps();
        b1 = b0;
    }
#pragma GCC unroll 12
    for (r = 0; r < rb; r++) {
        a0[r] = b0;
        a1[r] = b1;
    }
    for (k2 = 0; k2 < Kp / 2; k2++) {
        w0 = _mm512_load_si512(pw + (size_t) k2 * 2 * CM_LMK_PANEL);
        w1 = _mm512_load_si512(pw + (size_t) k2 * 2 * CM_LMK_PANEL + 32);
#pragma GCC unroll 12
        for (r = 0; r < rb; r++) {
            memcpy(&pair, x + (size_t) r * ldx + 2 * k2, sizeof(pair));
            xb = _mm512_set1_epi32((int) pair);
            a0[r] = _mm512_dpbf16_ps(a0[r], (__m512bh) xb, (__m512bh) w0);
            a1[r] = _mm512_dpbf16_ps(a1[r], (__m512bh) xb, (__m512bh) w1);
        }
    }
#pragma GCC unroll 12
    for (r = 0; r < rb; r++) {
        _mm512_mask_storeu_ps(out + (size_t) r * ldo, m0, a0[r]);
        _mm512_mask_storeu_ps(out + (size_t) r * ldo + 16, m1, a1[r]);
    }
}


#define CM_LMK_CASE(n)                                                      \
    case n:                                                                 \
        cm_lmk_block_bf16(o, (size_t) OC, x, (size_t) Kp, pw, b, Kp,        \
                          ncols, n);                                        \
        break

CM_LMK_BF16 static void
cm_lmk_linear_bf16_avx512(float *out, const uint16_t *xb,
    const cm_lmk_matrix_t *pm, int R, int p0, int p1)
{
    int             Kp = cm_lmk_bf16_kp(pm->K), OC = pm->OC, p, r0, rb;
    int             ncols;
    const uint16_t *pw, *x;
    const float    *b;
    float          *o;

    for (p = p0; p < p1; p++) {
        pw = pm->wb + (size_t) p * Kp * CM_LMK_PANEL;
        b = pm->bias != NULL ? pm->bias + (size_t) p * CM_LMK_PANEL : NULL;
        ncols = OC - p * CM_LMK_PANEL;
        ncols = ncols < CM_LMK_PANEL ? ncols : CM_LMK_PANEL;
        for (r0 = 0; r0 < R; r0 += rb) {
            rb = R - r0 < CM_LMK_ROWS ? R - r0 : CM_LMK_ROWS;
            x = xb + (size_t) r0 * Kp;
            o = out + (size_t) r0 * OC + (size_t) p * CM_LMK_PANEL;
            switch (rb) {
            CM_LMK_CASE(12);
            CM_LMK_CASE(11);
            CM_LMK_CASE(10);
            CM_LMK_CASE(9);
            CM_LMK_CASE(8);
            CM_LMK_CASE(7);
            CM_LMK_CASE(6);
            CM_LMK_CASE(5);
            CM_LMK_CASE(4);
            CM_LMK_CASE(3);
            CM_LMK_CASE(2);
            default:
                cm_lmk_block_bf16(o, (size_t) OC, x, (size_t) Kp, pw, b, Kp,
                                  ncols, 1);
                break;
            }
        }
    }
}

#undef CM_LMK_CASE


/* 32 floats a conversion (round to nearest even), the pad column zero. */
CM_LMK_BF16 static void
cm_lmk_to_bf16_avx512(uint16_t *dst, const float *src, int R, int K)
{
    int        Kp = cm_lmk_bf16_kp(K), r, i, n;
    __mmask16  mlo, mhi;
    __mmask32  ms;
    __m512     lo, hi;

    for (r = 0; r < R; r++) {
        const float *s = src + (size_t) r * K;
        uint16_t    *d = dst + (size_t) r * Kp;

        for (i = 0; i < Kp; i += 32) {
            n = K - i;
            mlo = n >= 16 ? (__mmask16) 0xFFFF
                          : (__mmask16) ((1u << n) - 1);
            mhi = n >= 32 ? (__mmask16) 0xFFFF
                  : n <= 16 ? (__mmask16) 0
                  : (__mmask16) ((1u << (n - 16)) - 1);
            n = Kp - i;
            ms = n >= 32 ? (__mmask32) 0xFFFFFFFFu
                         : (__mmask32) ((1u << n) - 1);
            lo = _mm512_maskz_loadu_ps(mlo, s + i);
            hi = _mm512_maskz_loadu_ps(mhi, s + i + 16);
            _mm512_mask_storeu_epi16(d + i, ms,
                (__m512i) _mm512_cvtne2ps_pbh(hi, lo));
        }
    }
}

#endif /* CM_LMK_X86 */


void
cm_lmk_to_bf16(uint16_t *dst, const float *src, int R, int K)
{
    int  Kp = cm_lmk_bf16_kp(K), r, k;

#ifdef CM_LMK_X86
    if (cm_lmk_bf16()) {
        cm_lmk_to_bf16_avx512(dst, src, R, K);
        return;
    }
#endif
    for (r = 0; r < R; r++) {
        for (k = 0; k < Kp; k++) {
            dst[(size_t) r * Kp + k] =
                k < K ? cm_lmk_bf16_round(src[(size_t) r * K + k]) : 0;
        }
    }
}


void
cm_lmk_linear_bf16_part(float *out, const uint16_t *xb,
    const cm_lmk_matrix_t *pm, int R, int p0, int p1)
{
#ifdef CM_LMK_X86
    if (cm_lmk_bf16()) {
        cm_lmk_linear_bf16_avx512(out, xb, pm, R, p0, p1);
        return;
    }
#endif
    cm_lmk_linear_bf16_loops(out, xb, pm, R, p0, p1);
}


void
cm_lmk_attend_kvb(float *out, const float *q, const uint16_t *kc,
    const uint16_t *vc, float *scores, int T, int C, int NH, float scale)
{
    int    hs = C / NH, h, t, i;
    float  mx, sum, inv, d;

#ifdef CM_LMK_X86
    if (hs % 16 == 0 && hs <= 128 && cm_lmk_simd()) {
        cm_lmk_attend_kvb_avx512(out, q, kc, vc, scores, T, C, NH, scale);
        return;
    }
#endif
    /* cm_lmk_attend's plain loops over the widened cache */
    for (h = 0; h < NH; h++) {
        const float *qh = q + (size_t) h * hs;
        float       *oh = out + (size_t) h * hs;

        mx = -INFINITY;
        for (t = 0; t < T; t++) {
            const uint16_t *k = kc + (size_t) t * C + (size_t) h * hs;

            d = 0.0f;
            for (i = 0; i < hs; i++) {
                d += qh[i] * cm_lmk_bf16_float(k[i]);
            }
            scores[t] = d * scale;
            mx = scores[t] > mx ? scores[t] : mx;
        }
        sum = 0.0f;
        for (t = 0; t < T; t++) {
            scores[t] = expf(scores[t] - mx);
            sum += scores[t];
        }
        inv = 1.0f / sum;
        memset(oh, 0, (size_t) hs * sizeof(float));
        for (t = 0; t < T; t++) {
            const uint16_t *v = vc + (size_t) t * C + (size_t) h * hs;
            float           p = scores[t] * inv;

            for (i = 0; i < hs; i++) {
                oh[i] += p * cm_lmk_bf16_float(v[i]);
            }
        }
    }
}

/*
 * cinematch/lm_kernels.h: the decode-time kernels of the dialog LM engine
 * (lm.h): a linear layer over a few token rows against weights re-laid out
 * once into panels, and attention of one row over its KV cache.
 *
 * Why not SGEMM: a decode step multiplies R <= a few dozen rows by every
 * weight matrix.  OpenBLAS packs (copies) the whole weight matrix on every
 * call before its kernel runs, which at R = 32 cost as much as the
 * arithmetic (perf: sgemm_incopy 26 %, sgemm_kernel 27 % of a batch-32
 * decode).  Packing once when the engine starts removes that copy.
 *
 * Packed layout of a weight (OC, K) row-major (out = inp @ w^T + b):
 *     panels of 32 output columns, panel p is (K, 32) contiguous:
 *     packed[p][k][j] = w[p * 32 + j][k], zero where p * 32 + j >= OC.
 * The kernel holds a 12-row x 32-column block of outputs in registers and
 * streams the panel once per block (AVX-512; a portable loop elsewhere).
 *
 * The AVX-512 code is chosen at run time (cm_lmk_simd()); on other CPUs
 * the engine keeps using OpenBLAS, and these functions still work (plain
 * loops), which is what the tests compare against the reference.
 */
#ifndef CINEMATCH_LM_KERNELS_H
#define CINEMATCH_LM_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#define CM_LMK_PANEL  32     /* output columns per panel */
#define CM_LMK_ROWS   12     /* rows per register block */
#define CM_LMK_ALIGN  64     /* bytes; packed memory must be aligned so */

typedef struct {
    float        *w;         /* (ceil(OC / 32), K, 32), not owned */
    const float  *bias;      /* (OC) or NULL, not owned */
    int           OC;
    int           K;
    uint16_t     *wb;        /* bf16 panels (see cm_lmk_pack_bf16) or
                                NULL; when set, w is not used */
} cm_lmk_matrix_t;

/* 1 when this CPU runs the AVX-512 kernels (and the engine packs). */
int cm_lmk_simd(void);

/* Floats of packed memory for a (OC, K) weight: ceil(OC / 32) * K * 32. */
size_t cm_lmk_packed_floats(int OC, int K);

/* Fills mem (cm_lmk_packed_floats(OC, K) floats, CM_LMK_ALIGN-aligned)
 * from w (OC, K) and describes it in pm; bias (OC) may be NULL. */
void cm_lmk_pack(cm_lmk_matrix_t *pm, float *mem, const float *w,
    const float *bias, int OC, int K);

/* out (R, OC) = inp (R, K) @ w^T + bias, w packed. */
void cm_lmk_linear(float *out, const float *inp, const cm_lmk_matrix_t *pm,
    int R);
/* Panels p0..p1-1 only (output columns [32 p0, 32 p1)), so threads can
 * split a layer by panels; cm_lmk_panels() = ceil(OC / 32). */
int cm_lmk_panels(const cm_lmk_matrix_t *pm);
void cm_lmk_linear_part(float *out, const float *inp,
    const cm_lmk_matrix_t *pm, int R, int p0, int p1);
/* The same with plain loops whatever the CPU (tests, other CPUs). */
void cm_lmk_linear_ref(float *out, const float *inp,
    const cm_lmk_matrix_t *pm, int R);

/*
 * Causal attention of one token row over T cached positions, all heads:
 *     out (C) = concat_h softmax(scale * K_h q_h) @ V_h
 * q (C); kc, vc (T, C) rows of the cache (head h at columns h*hs..);
 * scores (NH * T) scratch.
 */
void cm_lmk_attend(float *out, const float *q, const float *kc,
    const float *vc, float *scores, int T, int C, int NH, float scale);

/* GELU-tanh in place (gpt.h's cm_gelu_forward, vectorised). */
void cm_lmk_gelu(float *x, size_t n);

/* LayerNorm of N rows of C (gpt.h's cm_layernorm_forward without the
 * saved statistics), its sums vectorised: equal up to float rounding. */
void cm_lmk_layernorm(float *out, const float *inp, const float *weight,
    const float *bias, int N, int C);

/* The first j in [i, n) with x[j] > thr or marks[j] != 0, else n: the
 * top-k pass of sampling skips, 16 at a time, the logits that cannot enter
 * its heap. */
int cm_lmk_next_above(const float *x, const uint8_t *marks, int i, int n,
    float thr);


/*
 * bf16 weights (opt-in, AVX512_BF16 CPUs): the same panels of 32 output
 * columns, each element rounded to bf16 (round to nearest even; zero,
 * subnormals to signed zero, NaN kept quiet), pairs along K adjacent so
 * one _mm512_dpbf16_ps takes two K steps of 16 columns:
 *     wb[p][k / 2][j][k % 2] = bf16(w[p * 32 + j][k]),
 * zero where p * 32 + j >= OC or k >= K; Kp = K rounded up to even.
 * Activations are rounded the same way, row by row (cm_lmk_to_bf16), and
 * every output is accumulated in fp32 from the bias: per pair of K, first
 * x[k+1] w[k+1], then x[k] w[k] (the instruction's order; each product of
 * two bf16 is exact in fp32, so only the adds round).
 */

/* 1 when this CPU runs the bf16 kernels (AVX512_BF16 and cm_lmk_simd()). */
int cm_lmk_bf16(void);

uint16_t cm_lmk_bf16_round(float f);
float cm_lmk_bf16_float(uint16_t b);

/* K rounded up to even: the bf16 row length of activations and panels. */
int cm_lmk_bf16_kp(int K);

/* uint16 elements of packed bf16 memory for (OC, K): ceil(OC/32) * Kp * 32. */
size_t cm_lmk_packed_bf16(int OC, int K);

/* Fills mem (CM_LMK_ALIGN-aligned) from w (OC, K); pm->w is set NULL. */
void cm_lmk_pack_bf16(cm_lmk_matrix_t *pm, uint16_t *mem, const float *w,
    const float *bias, int OC, int K);

/* dst (R, Kp) = bf16(src (R, K)), the pad column zero. */
void cm_lmk_to_bf16(uint16_t *dst, const float *src, int R, int K);

/* out (R, OC) = xb (R, Kp) @ wb^T + bias for panels p0..p1-1, pm->wb set. */
void cm_lmk_linear_bf16_part(float *out, const uint16_t *xb,
    const cm_lmk_matrix_t *pm, int R, int p0, int p1);
/* The same with plain loops whatever the CPU, all panels. */
void cm_lmk_linear_bf16_ref(float *out, const uint16_t *xb,
    const cm_lmk_matrix_t *pm, int R);

/* cm_lmk_attend over a bf16 cache (rows of C bf16, rounded by
 * cm_lmk_to_bf16): the same arithmetic as cm_lmk_attend over the widened
 * values, so the same bits. */
void cm_lmk_attend_kvb(float *out, const float *q, const uint16_t *kc,
    const uint16_t *vc, float *scores, int T, int C, int NH, float scale);

#endif /* CINEMATCH_LM_KERNELS_H */

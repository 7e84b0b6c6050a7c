/*
 * rs_topk.h: top-K of a recommendation score row made on the fly.
 *
 * cm_rs_topk() (recsys.h) takes a finished score row.  The serving path
 * scores with the packed kernel, which writes dot products only; the
 * biases used to be added in a second pass over the row, filters wrote
 * -inf into it, and the row was copied per request before the scan.
 * cm_rs_topk_fused() does all of that in the scan: an item's score is
 *
 *     bias == NULL:  dots[i]
 *     otherwise:     dots[i] + (base + bias[i])
 *
 * (the same float operations, in the same order, as the pass it replaces,
 * so the scores are bit-identical), items are compared 16 at a time
 * against the heap's root (AVX-512 where the CPU has it: a block whose
 * items all lose is skipped in a few instructions), and only the items
 * that beat the root are checked against the exclusion list and the
 * filter.  Items the filter refuses are left out (cm_rs_topk saw them as
 * -inf and could return them after every finite score; the answer
 * stopped there anyway).  Ties go to the lower index, NaN never enters:
 * for the same row the result equals cm_rs_topk's finite prefix.
 */
#ifndef CINEMATCH_RS_TOPK_H
#define CINEMATCH_RS_TOPK_H

#include <stddef.h>
#include <stdint.h>

/* 1 when item may be recommended (the request's genre / year filters) */
typedef int (*cm_rs_pass_pt)(const void *ctx, uint32_t item);

/* Top k of the row described above, skipping the ascending list
 * excl[0..n_excl) and items pass() refuses (pass NULL: none).  Writes
 * best first; returns how many (<= k). */
size_t cm_rs_topk_fused(const float *dots, float base, const float *bias,
    uint32_t n, const uint32_t *excl, size_t n_excl, cm_rs_pass_pt pass,
    const void *ctx, size_t k, uint32_t *out_idx, float *out_score);

/* The same without SIMD (other CPUs; the unit tests compare the two). */
size_t cm_rs_topk_fused_plain(const float *dots, float base,
    const float *bias, uint32_t n, const uint32_t *excl, size_t n_excl,
    cm_rs_pass_pt pass, const void *ctx, size_t k, uint32_t *out_idx,
    float *out_score);

/* One item's score as the fused scan computes it. */
static inline float
cm_rs_fused_score(const float *dots, float base, const float *bias,
                  uint32_t i)
{
    return bias != NULL ? dots[i] + (base + bias[i]) : dots[i];
}

#endif /* CINEMATCH_RS_TOPK_H */

/*
 * test_rs_topk.c: the fused top-K scan (biases added in the scan, blocks
 * pruned against the heap's root, filter on candidates) against
 * cm_rs_topk over the finished row, with ties, NaN, exclusions, filters
 * and lengths that are not a multiple of the 16-item block.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cinematch/recsys.h"
#include "cinematch/rs_topk.h"

#define N_MAX  1000

static uint32_t  rng = 12345;


static float
rnd(void)
{
    rng = rng * 1103515245u + 12345u;
    return (float) ((rng >> 8) & 0xffff) / 65536.0f;
}


static int
every_third(const void *ctx, uint32_t item)
{
    (void) ctx;
    return item % 3 != 1;
}


typedef size_t (*topk_fn)(const float *, float, const float *, uint32_t,
    const uint32_t *, size_t, cm_rs_pass_pt, const void *, size_t,
    uint32_t *, float *);


/* one case: the fused scan equals cm_rs_topk's finite prefix over the row
 * made the way the serving path made it before (row += base + bias, -inf
 * for filtered items) */
static void
check_case(topk_fn fn, uint32_t n, size_t k, int with_bias, int ties,
           int with_nan, int with_excl, int filtered)
{
    float     dots[N_MAX], bias[N_MAX], row[N_MAX], base = 3.25f;
    float     rs[100], fs[100];
    uint32_t  excl[N_MAX], ri[100], fi[100], i;
    size_t    ne = 0, nr, nf, j;

    for (i = 0; i < n; i++) {
        dots[i] = ties ? (float) (int) (rnd() * 8.0f) / 4.0f
                       : rnd() * 4.0f - 2.0f;
        bias[i] = ties ? 0.5f : rnd() - 0.5f;
        if (with_nan && i % 37 == 5) {
            dots[i] = NAN;
        }
        if (with_excl && (i % 7 == 0 || rnd() < 0.1f)) {
            excl[ne++] = i;
        }
    }
    for (i = 0; i < n; i++) {
        row[i] = dots[i];
        if (with_bias) {
            row[i] += base + bias[i];
        }
        if (filtered && !every_third(NULL, i)) {
            row[i] = -INFINITY;
        }
    }
    nr = cm_rs_topk(row, n, excl, ne, k, ri, rs);
    while (nr > 0 && isinf(rs[nr - 1])) {
        nr--;
    }
    nf = fn(dots, base, with_bias ? bias : NULL, n, excl, ne,
            filtered ? every_third : NULL, NULL, k, fi, fs);
    assert_int_equal(nf, nr);
    for (j = 0; j < nf; j++) {
        assert_int_equal(fi[j], ri[j]);
        assert_memory_equal(&fs[j], &rs[j], sizeof(float));   /* bit for bit */
    }
}


static void
run_all(topk_fn fn)
{
    static const uint32_t  ns[] = { 0, 1, 5, 15, 16, 17, 31, 64, 100, 999 };
    static const size_t    ks[] = { 1, 3, 10, 100 };
    size_t                 a, b;
    int                    flags;

    for (a = 0; a < sizeof(ns) / sizeof(ns[0]); a++) {
        for (b = 0; b < sizeof(ks) / sizeof(ks[0]); b++) {
            for (flags = 0; flags < 32; flags++) {
                check_case(fn, ns[a], ks[b], flags & 1, (flags >> 1) & 1,
                           (flags >> 2) & 1, (flags >> 3) & 1,
                           (flags >> 4) & 1);
            }
        }
    }
}


static void
test_plain_scan_equals_topk_of_the_finished_row(void **state)
{
    (void) state;
    run_all(cm_rs_topk_fused_plain);
}


static void
test_simd_scan_equals_topk_of_the_finished_row(void **state)
{
    (void) state;
    run_all(cm_rs_topk_fused);   /* AVX-512 where the CPU has it */
}


static void
test_k_zero_writes_nothing(void **state)
{
    float     d[4] = { 1, 2, 3, 4 }, s[1];
    uint32_t  i[1];

    (void) state;
    assert_int_equal(cm_rs_topk_fused(d, 0, NULL, 4, NULL, 0, NULL, NULL, 0,
                                      i, s), 0);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_plain_scan_equals_topk_of_the_finished_row),
        cmocka_unit_test(test_simd_scan_equals_topk_of_the_finished_row),
        cmocka_unit_test(test_k_zero_writes_nothing),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

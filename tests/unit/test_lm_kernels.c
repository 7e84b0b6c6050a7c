/*
 * test_lm_kernels.c: the decode kernels against plain loops: the packed
 * linear layer over shapes with partial panels and partial row blocks,
 * attention over the cache for head sizes the vector path takes and ones
 * it does not, GELU against gpt.c's.  On a CPU without AVX-512 these run
 * the portable paths, which must agree just the same.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cinematch/gpt.h"
#include "cinematch/lm_kernels.h"


static float
urand(uint64_t *s)
{
    *s = *s * 6364136223846793005ull + 1442695040888963407ull;
    return (float) ((*s >> 40) & 0xFFFFFF) / 16777216.0f * 2.0f - 1.0f;
}


static void
check_linear(int R, int K, int OC, int with_bias)
{
    uint64_t         rng = (uint64_t) (R * 1000 + K * 10 + OC);
    float           *w, *b, *x, *mem, *got, *ref, want;
    cm_lmk_matrix_t  pm;
    size_t           n = cm_lmk_packed_floats(OC, K);
    int              r, o, k;

    w = malloc((size_t) OC * K * sizeof(float));
    b = malloc((size_t) OC * sizeof(float));
    x = malloc((size_t) R * K * sizeof(float));
    got = malloc((size_t) R * OC * sizeof(float));
    ref = malloc((size_t) R * OC * sizeof(float));
    mem = aligned_alloc(CM_LMK_ALIGN, (n * sizeof(float) + CM_LMK_ALIGN - 1)
                                      / CM_LMK_ALIGN * CM_LMK_ALIGN);
    assert_non_null(w);
    assert_non_null(b);
    assert_non_null(x);
    assert_non_null(got);
    assert_non_null(ref);
    assert_non_null(mem);
    for (o = 0; o < OC * K; o++) {
        w[o] = urand(&rng);
    }
    for (o = 0; o < OC; o++) {
        b[o] = urand(&rng);
    }
    for (o = 0; o < R * K; o++) {
        x[o] = urand(&rng);
    }
    cm_lmk_pack(&pm, mem, w, with_bias ? b : NULL, OC, K);
    cm_lmk_linear(got, x, &pm, R);
    cm_lmk_linear_ref(ref, x, &pm, R);
    for (r = 0; r < R; r++) {
        for (o = 0; o < OC; o++) {
            double acc = with_bias ? b[o] : 0.0;

            for (k = 0; k < K; k++) {
                acc += (double) x[(size_t) r * K + k] * w[(size_t) o * K + k];
            }
            want = (float) acc;
            if (fabsf(got[(size_t) r * OC + o] - want) > 1e-4f * (float) K
                || fabsf(ref[(size_t) r * OC + o] - want) > 1e-4f * (float) K)
            {
                fail_msg("R=%d K=%d OC=%d row %d col %d: kernel %g ref %g"
                         " want %g", R, K, OC, r, o,
                         (double) got[(size_t) r * OC + o],
                         (double) ref[(size_t) r * OC + o], (double) want);
            }
        }
    }
    free(w);
    free(b);
    free(x);
    free(got);
    free(ref);
    free(mem);
}


static void
test_packed_linear_matches_plain_dot_products(void **state)
{
    /* full panels and blocks; a partial last panel (OC % 32 = 16, 5, 1);
     * every row-block size 1..12 and more than one block */
    check_linear(1, 16, 48, 1);
    check_linear(3, 16, 48, 0);
    check_linear(12, 64, 64, 1);
    check_linear(13, 7, 37, 1);
    check_linear(32, 96, 128, 1);
    check_linear(25, 33, 1, 1);
    check_linear(11, 40, 70, 0);
}


static void
test_packed_linear_rows_do_not_depend_on_batch(void **state)
{
    /* a row gives the same bits alone as in a batch: batched decode
     * equals single decode exactly, not just within a tolerance */
    uint64_t         rng = 7;
    int              K = 48, OC = 80, R = 20, r, o;
    float           *w = malloc((size_t) OC * K * sizeof(float));
    float           *x = malloc((size_t) R * K * sizeof(float));
    float           *all = malloc((size_t) R * OC * sizeof(float));
    float           *one = malloc((size_t) OC * sizeof(float));
    float           *mem = aligned_alloc(CM_LMK_ALIGN,
                                         cm_lmk_packed_floats(OC, K)
                                         * sizeof(float));
    cm_lmk_matrix_t  pm;

    assert_non_null(w);
    assert_non_null(x);
    assert_non_null(all);
    assert_non_null(one);
    assert_non_null(mem);
    for (o = 0; o < OC * K; o++) {
        w[o] = urand(&rng);
    }
    for (o = 0; o < R * K; o++) {
        x[o] = urand(&rng);
    }
    cm_lmk_pack(&pm, mem, w, NULL, OC, K);
    cm_lmk_linear(all, x, &pm, R);
    for (r = 0; r < R; r++) {
        cm_lmk_linear(one, x + (size_t) r * K, &pm, 1);
        assert_memory_equal(one, all + (size_t) r * OC, OC * sizeof(float));
    }
    free(w);
    free(x);
    free(all);
    free(one);
    free(mem);
}


static void
check_attend(int T, int C, int NH)
{
    uint64_t  rng = (uint64_t) (T * 100 + C + NH);
    int       hs = C / NH, h, t, i;
    float    *q = malloc((size_t) C * sizeof(float));
    float    *kc = malloc((size_t) T * C * sizeof(float));
    float    *vc = malloc((size_t) T * C * sizeof(float));
    float    *out = malloc((size_t) C * sizeof(float));
    float    *sc = malloc((size_t) NH * T * sizeof(float));
    double   *p = malloc((size_t) T * sizeof(double));
    double    mx, sum, want, scale = 1.0 / sqrt((double) hs);

    assert_non_null(q);
    assert_non_null(kc);
    assert_non_null(vc);
    assert_non_null(out);
    assert_non_null(sc);
    assert_non_null(p);
    for (i = 0; i < C; i++) {
        q[i] = 2.0f * urand(&rng);
    }
    for (i = 0; i < T * C; i++) {
        kc[i] = 2.0f * urand(&rng);
        vc[i] = urand(&rng);
    }
    cm_lmk_attend(out, q, kc, vc, sc, T, C, NH, (float) scale);
    for (h = 0; h < NH; h++) {
        mx = -1e30;
        for (t = 0; t < T; t++) {
            double d = 0.0;

            for (i = 0; i < hs; i++) {
                d += (double) q[h * hs + i] * kc[(size_t) t * C + h * hs + i];
            }
            p[t] = d * scale;
            mx = p[t] > mx ? p[t] : mx;
        }
        sum = 0.0;
        for (t = 0; t < T; t++) {
            p[t] = exp(p[t] - mx);
            sum += p[t];
        }
        for (i = 0; i < hs; i++) {
            want = 0.0;
            for (t = 0; t < T; t++) {
                want += p[t] / sum * vc[(size_t) t * C + h * hs + i];
            }
            if (fabs(out[h * hs + i] - want) > 1e-5 + 1e-4 * fabs(want)) {
                fail_msg("T=%d C=%d NH=%d head %d dim %d: got %g want %g", T,
                         C, NH, h, i, (double) out[h * hs + i], want);
            }
        }
    }
    free(q);
    free(kc);
    free(vc);
    free(out);
    free(sc);
    free(p);
}


static void
test_attention_over_cache_matches_softmax_reference(void **state)
{
    /* head sizes 16, 32, 64 (vector path) and 8, 24 (plain loops);
     * lengths below, at and past a 16-position block */
    static const int shapes[][3] = {
        { 1, 64, 4 }, { 15, 64, 4 }, { 16, 64, 4 }, { 17, 64, 4 },
        { 100, 384, 6 }, { 33, 128, 4 }, { 40, 96, 6 }, { 5, 16, 2 },
        { 29, 48, 2 }, { 256, 64, 1 },
        /* heads of 64 go through the cache six heads a pass: 12 heads
         * are two passes, 7 are six and one */
        { 40, 768, 12 }, { 23, 448, 7 }, { 161, 384, 6 }, { 16, 128, 2 }
    };
    size_t i;

    for (i = 0; i < sizeof(shapes) / sizeof(shapes[0]); i++) {
        check_attend(shapes[i][0], shapes[i][1], shapes[i][2]);
    }
}


/* The first logit above a threshold or marked, from any start, as a plain
 * scan finds it: every start and threshold over a random row with a few
 * marks and ties, lengths around the 16-wide blocks. */
static void
test_next_above_finds_what_a_plain_scan_finds(void **state)
{
    static const int lens[] = { 1, 15, 16, 17, 40, 100 };
    static const float thr[] = { -2.0f, 0.0f, 0.5f, 0.9f, 2.0f };
    uint64_t  rng = 77;
    float     x[100];
    uint8_t   marks[100];
    size_t    li, ti;
    int       n, i, j, want;

    for (i = 0; i < 100; i++) {
        x[i] = urand(&rng);
        marks[i] = (uint8_t) (i % 23 == 7 ? 1 + i % 2 : 0);
    }
    x[33] = 0.5f;   /* equal to a threshold: not above */
    for (li = 0; li < sizeof(lens) / sizeof(lens[0]); li++) {
        n = lens[li];
        for (ti = 0; ti < sizeof(thr) / sizeof(thr[0]); ti++) {
            for (i = 0; i <= n; i++) {
                for (want = n, j = i; j < n; j++) {
                    if (x[j] > thr[ti] || marks[j] != 0) {
                        want = j;
                        break;
                    }
                }
                assert_int_equal(cm_lmk_next_above(x, marks, i, n, thr[ti]),
                                 want);
            }
        }
    }
}


/* The vectorised LayerNorm against gpt.c's, in place and not, for widths
 * on (16, 64, 384) and off (24, 100: its plain loops) the vector path. */
static void
test_layernorm_matches_gpt_layernorm(void **state)
{
    static const int widths[] = { 16, 24, 64, 100, 384 };
    uint64_t  rng = 5;
    float     x[3 * 384], w[384], b[384], want[3 * 384], got[3 * 384];
    size_t    k;
    int       C, i;

    for (k = 0; k < sizeof(widths) / sizeof(widths[0]); k++) {
        C = widths[k];
        for (i = 0; i < 3 * C; i++) {
            x[i] = 3.0f * urand(&rng) + 0.5f;
        }
        for (i = 0; i < C; i++) {
            w[i] = 1.0f + 0.5f * urand(&rng);
            b[i] = 0.1f * urand(&rng);
        }
        cm_layernorm_forward(want, NULL, NULL, x, w, b, 3, C);
        cm_lmk_layernorm(got, x, w, b, 3, C);
        for (i = 0; i < 3 * C; i++) {
            assert_float_equal(got[i], want[i], 1e-5 + 1e-5 * fabs(want[i]));
        }
        cm_lmk_layernorm(x, x, w, b, 3, C);       /* in place */
        for (i = 0; i < 3 * C; i++) {
            assert_true(x[i] == got[i]);
        }
    }
}


static void
test_gelu_matches_gpt_gelu(void **state)
{
    float  x[203], a[203], b[203];
    int    i;

    for (i = 0; i < 203; i++) {
        x[i] = -12.0f + 24.0f * (float) i / 202.0f;
    }
    x[0] = 0.0f;
    x[1] = -0.0f;
    x[2] = 1e-6f;
    x[3] = -90.0f;
    x[4] = 90.0f;
    memcpy(a, x, sizeof(x));
    cm_lmk_gelu(a, 203);
    cm_gelu_forward(b, x, 203);
    for (i = 0; i < 203; i++) {
        if (fabsf(a[i] - b[i]) > 1e-6f + 1e-5f * fabsf(b[i])) {
            fail_msg("x=%g: kernel %g gpt %g", (double) x[i], (double) a[i],
                     (double) b[i]);
        }
    }
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_packed_linear_matches_plain_dot_products),
        cmocka_unit_test(test_packed_linear_rows_do_not_depend_on_batch),
        cmocka_unit_test(test_attention_over_cache_matches_softmax_reference),
        cmocka_unit_test(test_gelu_matches_gpt_gelu),
        cmocka_unit_test(test_layernorm_matches_gpt_layernorm),
        cmocka_unit_test(test_next_above_finds_what_a_plain_scan_finds),
    };

    printf("lm kernels: %s\n", cm_lmk_simd() ? "AVX-512" : "portable loops");
    return cmocka_run_group_tests(tests, NULL, NULL);
}

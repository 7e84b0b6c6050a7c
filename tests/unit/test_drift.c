/*
 * test_drift.c: two-sample KS, kstwo/smirnov tails, PSI and moments.
 *
 * Reference values: the small cases are counted by hand (lattice paths);
 * the others are scipy 1.10.1 (Debian 12 python3-scipy), computed with
 *   scipy.stats.ks_2samp(a, b, alternative=..., method=...)
 *   scipy.stats.kstwo.sf(x, n), scipy.special.smirnov(n, x)
 * A wider sweep (297 cases over n up to 10^6, every region of kstwo and
 * every method/alternative) agreed to 1e-6 relative when this was written.
 */
#include <math.h>
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "cinematch/common.h"
#include "cinematch/drift.h"


static const double cm_t_a[] = {
    0.61, 0.29, 0.06, 0.59, -1.73, -0.74, 0.51, -0.56, 0.39, 1.64, 0.05,
    -0.06, 0.64, -0.82, 0.37, 1.77, 1.09, -1.28, 2.36, 1.31, 1.05, -0.32,
    -0.4, 1.06, -2.47
};
static const double cm_t_b[] = {
    2.2, 1.66, 1.38, 0.2, 0.36, 0.0, 0.96, 1.56, 0.44, 1.5, -0.3, 0.66,
    2.31, 3.29, -0.27, -0.37, 0.38, 0.7, 0.19, 0.51
};

static const double cm_t_stars[10] = {
    0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0, 4.5, 5.0
};
static const uint64_t cm_t_ca[10] = { 1, 2, 3, 8, 10, 25, 30, 40, 20, 11 };
static const uint64_t cm_t_cb[10] = { 2, 3, 6, 12, 15, 20, 25, 15, 5, 2 };


static void
assert_rel(double got, double want, double tol)
{
    double rel = fabs(got - want) / (fabs(want) > 1e-300 ? fabs(want) : 1.0);

    if (!(rel <= tol)) {
        fail_msg("got %.17g want %.17g (rel %.3g > %.3g)", got, want, rel,
                 tol);
    }
}


static void
test_ks_exact_matches_hand_counted_paths(void **state)
{
    const double    a[] = { 1, 2, 3 }, b[] = { 4, 5, 6 };
    const double    c[] = { 1, 2 }, d[] = { 3 };
    cm_ks_result_t  r;

    /* disjoint 3 vs 3: only the two paths along the border reach D = 1,
     * p = 2 / C(6,3) = 0.1 */
    assert_int_equal(cm_ks_2samp(a, 3, b, 3, CM_KS_TWO_SIDED, CM_KS_AUTO, &r,
                                 NULL, 0), CM_OK);
    assert_rel(r.statistic, 1.0, 1e-15);
    assert_rel(r.pvalue, 0.1, 1e-12);
    assert_int_equal(r.method, CM_KS_EXACT);
    assert_rel(r.location, 3.0, 0);
    /* 2 vs 1: RRU and URR touch D = 1, RUR does not: p = 2/3 */
    assert_int_equal(cm_ks_2samp(c, 2, d, 1, CM_KS_TWO_SIDED, CM_KS_EXACT, &r,
                                 NULL, 0), CM_OK);
    assert_rel(r.pvalue, 2.0 / 3.0, 1e-12);
}


static void
test_ks_exact_matches_reference_small_samples(void **state)
{
    cm_ks_result_t  r;

    assert_int_equal(cm_ks_2samp(cm_t_a, 25, cm_t_b, 20, CM_KS_TWO_SIDED,
                                 CM_KS_AUTO, &r, NULL, 0), CM_OK);
    assert_rel(r.statistic, 0.28, 1e-12);
    assert_rel(r.pvalue, 0.2933789985549772, 1e-9);
    assert_int_equal(r.method, CM_KS_EXACT);

    assert_int_equal(cm_ks_2samp(cm_t_a, 25, cm_t_b, 20, CM_KS_GREATER,
                                 CM_KS_EXACT, &r, NULL, 0), CM_OK);
    assert_rel(r.pvalue, 0.14700537859250157, 1e-9);

    assert_int_equal(cm_ks_2samp(cm_t_a, 25, cm_t_b, 20, CM_KS_LESS,
                                 CM_KS_EXACT, &r, NULL, 0), CM_OK);
    assert_rel(r.statistic, 0.0, 0);
    assert_rel(r.pvalue, 1.0, 0);
}


static void
test_ks_asymp_matches_reference_when_forced(void **state)
{
    cm_ks_result_t  r;

    assert_int_equal(cm_ks_2samp(cm_t_a, 25, cm_t_b, 20, CM_KS_TWO_SIDED,
                                 CM_KS_ASYMP, &r, NULL, 0), CM_OK);
    assert_rel(r.pvalue, 0.29590926388673755, 1e-9);
    assert_int_equal(r.method, CM_KS_ASYMP);
    assert_int_equal(cm_ks_2samp(cm_t_a, 25, cm_t_b, 20, CM_KS_GREATER,
                                 CM_KS_ASYMP, &r, NULL, 0), CM_OK);
    assert_rel(r.pvalue, 0.1337407770991231, 1e-9);
}


static void
test_ks_counts_with_ties_match_raw_samples_and_reference(void **state)
{
    cm_ks_result_t  r, raw;
    double          xa[150], xb[105];
    size_t          i, k, na = 0, nb = 0;

    for (i = 0; i < 10; i++) {
        for (k = 0; k < cm_t_ca[i]; k++) {
            xa[na++] = cm_t_stars[i];
        }
        for (k = 0; k < cm_t_cb[i]; k++) {
            xb[nb++] = cm_t_stars[i];
        }
    }
    assert_int_equal(cm_ks_2samp_counts(cm_t_ca, cm_t_cb, 10, cm_t_stars,
                                        CM_KS_TWO_SIDED, CM_KS_AUTO, &r,
                                        NULL, 0), CM_OK);
    assert_int_equal(cm_ks_2samp(xa, na, xb, nb, CM_KS_TWO_SIDED, CM_KS_AUTO,
                                 &raw, NULL, 0), CM_OK);
    assert_rel(r.statistic, 0.2638095238095238, 1e-12);
    assert_rel(r.pvalue, 0.0002826018943864595, 1e-8);
    assert_rel(raw.statistic, r.statistic, 0);
    assert_rel(raw.pvalue, r.pvalue, 0);
    assert_rel(r.location, raw.location, 0);
}


static void
test_ks_auto_switches_to_asymptotic_above_10000(void **state)
{
    uint64_t        ca[10], cb[10];
    cm_ks_result_t  r;
    size_t          i;

    for (i = 0; i < 10; i++) {
        ca[i] = cm_t_ca[i] * 200;   /* 30000 */
        cb[i] = cm_t_cb[i] * 50;    /* 5250 */
    }
    assert_int_equal(cm_ks_2samp_counts(ca, cb, 10, cm_t_stars,
                                        CM_KS_TWO_SIDED, CM_KS_AUTO, &r,
                                        NULL, 0), CM_OK);
    assert_int_equal(r.method, CM_KS_ASYMP);
    assert_rel(r.statistic, 0.2638095238095238, 1e-12);
    assert_rel(r.pvalue, 6.409844693318677e-275, 1e-6);
}


static void
test_kstwo_sf_matches_reference_in_every_region(void **state)
{
    assert_rel(cm_kstwo_sf(10, 0.274), 0.3715203845434957, 1e-9);
    assert_rel(cm_kstwo_sf(100, 0.05), 0.9532159710635725, 1e-9);
    assert_rel(cm_kstwo_sf(1000, 0.02), 0.8108971656895577, 1e-9);
    assert_rel(cm_kstwo_sf(1000, 0.06), 0.001428597887952891, 1e-9);
    assert_rel(cm_kstwo_sf(200000, 0.001), 0.9881500208855729, 1e-9);
    assert_rel(cm_kstwo_sf(5, 0.6), 0.03008000000000001, 1e-12);
    assert_rel(cm_kstwo_sf(10, 0.0), 1.0, 0);
    assert_rel(cm_kstwo_sf(10, 1.0), 0.0, 0);
    assert_rel(cm_smirnov(10, 0.3), 0.1354635556, 1e-9);
    assert_rel(cm_smirnov(1000, 0.05), 0.006506037390545166, 1e-9);
}


static void
test_ks_rejects_empty_and_nan_samples(void **state)
{
    const double    a[] = { 1.0, NAN }, b[] = { 2.0 };
    cm_ks_result_t  r;
    char            err[128];

    assert_int_equal(cm_ks_2samp(a, 0, b, 1, CM_KS_TWO_SIDED, CM_KS_AUTO, &r,
                                 err, sizeof(err)), CM_EINVAL);
    assert_int_equal(cm_ks_2samp(a, 2, b, 1, CM_KS_TWO_SIDED, CM_KS_AUTO, &r,
                                 err, sizeof(err)), CM_EINVAL);
    assert_non_null(strstr(err, "NaN"));
    assert_true(isnan(cm_ks_pvalue(0, 5, 0.5, CM_KS_TWO_SIDED, CM_KS_AUTO,
                                   NULL)));
}


static void
test_ks_parsers_accept_scipy_names(void **state)
{
    cm_ks_alt_t     a;
    cm_ks_method_t  m;

    assert_int_equal(cm_ks_alt_parse("greater", &a), CM_OK);
    assert_int_equal(a, CM_KS_GREATER);
    assert_int_equal(cm_ks_alt_parse("bigger", &a), CM_EINVAL);
    assert_int_equal(cm_ks_method_parse("asymp", &m), CM_OK);
    assert_int_equal(m, CM_KS_ASYMP);
    assert_int_equal(cm_ks_method_parse("exact", &m), CM_OK);
    assert_string_equal(cm_ks_method_name(m), "exact");
    /* spelled as scipy's method= and the drift_reports check (sql/006) */
    assert_string_equal(cm_ks_method_name(CM_KS_ASYMP), "asymp");
}


static void
test_psi_is_zero_for_identical_and_banded_otherwise(void **state)
{
    uint64_t  half[10];
    double    psi, want = 0.0, e, c;
    size_t    i;

    for (i = 0; i < 10; i++) {
        half[i] = cm_t_ca[i] * 2;
    }
    assert_rel(cm_psi_counts(cm_t_ca, half, 10), 0.0, 0);
    assert_string_equal(cm_psi_band(0.0), "stable");
    assert_string_equal(cm_psi_band(0.1), "moderate");
    assert_string_equal(cm_psi_band(0.25), "significant");

    /* by hand: sum (c - e) ln(c / e) */
    for (i = 0; i < 10; i++) {
        e = (double) cm_t_ca[i] / 150.0;
        c = (double) cm_t_cb[i] / 105.0;
        want += (c - e) * log(c / e);
    }
    psi = cm_psi_counts(cm_t_ca, cm_t_cb, 10);
    assert_rel(psi, want, 1e-12);
    assert_rel(psi, 0.41665862503020457, 1e-12);
    assert_string_equal(cm_psi_band(psi), "significant");
}


static void
test_psi_floors_empty_bins_instead_of_going_infinite(void **state)
{
    const uint64_t  base[3] = { 10, 10, 0 }, cur[3] = { 10, 5, 5 };
    double          psi = cm_psi_counts(base, cur, 3);

    assert_true(isfinite(psi));
    assert_true(psi > 0.25);
}


static void
test_psi_samples_bins_both_ranges(void **state)
{
    double  psi;
    char    err[64];

    assert_int_equal(cm_psi_samples(cm_t_a, 25, cm_t_a, 25, 10, &psi, err,
                                    sizeof(err)), CM_OK);
    assert_rel(psi, 0.0, 0);
    assert_int_equal(cm_psi_samples(cm_t_a, 25, cm_t_b, 20, 10, &psi, err,
                                    sizeof(err)), CM_OK);
    assert_true(psi > 0.0);
}


static void
test_hist_moments_match_direct_computation(void **state)
{
    const uint64_t  c[3] = { 1, 2, 1 };
    const double    v[3] = { 1.0, 2.0, 3.0 };
    double          mean, std;

    cm_hist_moments(c, v, 3, &mean, &std);
    assert_rel(mean, 2.0, 1e-15);
    assert_rel(std, sqrt(0.5), 1e-15);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ks_exact_matches_hand_counted_paths),
        cmocka_unit_test(test_ks_exact_matches_reference_small_samples),
        cmocka_unit_test(test_ks_asymp_matches_reference_when_forced),
        cmocka_unit_test(
            test_ks_counts_with_ties_match_raw_samples_and_reference),
        cmocka_unit_test(test_ks_auto_switches_to_asymptotic_above_10000),
        cmocka_unit_test(test_kstwo_sf_matches_reference_in_every_region),
        cmocka_unit_test(test_ks_rejects_empty_and_nan_samples),
        cmocka_unit_test(test_ks_parsers_accept_scipy_names),
        cmocka_unit_test(test_psi_is_zero_for_identical_and_banded_otherwise),
        cmocka_unit_test(
            test_psi_floors_empty_bins_instead_of_going_infinite),
        cmocka_unit_test(test_psi_samples_bins_both_ranges),
        cmocka_unit_test(test_hist_moments_match_direct_computation),
    };

    return cmocka_run_group_tests_name("drift", tests, NULL, NULL);
}

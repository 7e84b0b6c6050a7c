/*
 * test_canary.c: the stable user split of a canary (cinematch/canary.h),
 * which the daemon and nginx must compute alike.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "cinematch/canary.h"
#include "cinematch/common.h"


static uint32_t
share(const char *s)
{
    uint32_t  bp = 12345;

    assert_int_equal(cm_canary_share_parse(s, strlen(s), &bp), CM_OK);
    return bp;
}


static int
share_rc(const char *s)
{
    uint32_t  bp;

    return cm_canary_share_parse(s, strlen(s), &bp);
}


static void
test_canary_bucket_is_stable_and_in_range(void **state)
{
    int64_t  u;

    (void) state;
    for (u = 1; u < 5000; u++) {
        uint32_t b = cm_canary_bucket("recsys", u);

        assert_true(b < CM_CANARY_BUCKETS);
        assert_int_equal(b, cm_canary_bucket("recsys", u));
    }
    /* pinned: nginx and the daemon are built from this one function, but
     * a change of it moves users between versions mid-canary */
    assert_int_equal(cm_canary_bucket("recsys", 1), 192);
    assert_int_equal(cm_canary_bucket("recsys", 2), 6983);
    assert_int_equal(cm_canary_bucket("recsys", 1000000), 6363);
    assert_int_equal(cm_canary_bucket("dialog", 1), 9104);
}


static void
test_canary_share_routes_about_that_share_of_consecutive_users(void **state)
{
    int64_t   u;
    uint32_t  n10 = 0, n50 = 0;

    (void) state;
    for (u = 1; u <= 100000; u++) {
        n10 += (uint32_t) cm_canary_routed("recsys", u, 1000);
        n50 += (uint32_t) cm_canary_routed("recsys", u, 5000);
    }
    /* binomial sd at n=1e5: ~95 and ~158; 5 sd either way */
    assert_in_range(n10, 10000 - 475, 10000 + 475);
    assert_in_range(n50, 50000 - 790, 50000 + 790);
}


static void
test_canary_growing_the_share_keeps_every_routed_user(void **state)
{
    int64_t  u;

    (void) state;
    for (u = 1; u <= 20000; u++) {
        if (cm_canary_routed("recsys", u, 1000)) {
            assert_true(cm_canary_routed("recsys", u, 5000));
        }
    }
}


static void
test_canary_share_zero_routes_none_and_one_routes_all(void **state)
{
    int64_t  u;

    (void) state;
    for (u = 1; u <= 20000; u++) {
        assert_false(cm_canary_routed("recsys", u, 0));
        assert_true(cm_canary_routed("recsys", u, CM_CANARY_BUCKETS));
    }
    /* anonymous requests always see production */
    assert_false(cm_canary_routed("recsys", 0, CM_CANARY_BUCKETS));
    assert_false(cm_canary_routed("recsys", -3, CM_CANARY_BUCKETS));
}


static void
test_canary_models_split_users_independently(void **state)
{
    int64_t   u;
    uint32_t  both = 0, a = 0;

    (void) state;
    for (u = 1; u <= 100000; u++) {
        int ra = cm_canary_routed("recsys", u, 5000);
        int rb = cm_canary_routed("recsys2", u, 5000);

        a += (uint32_t) ra;
        both += (uint32_t) (ra && rb);
    }
    /* independent halves overlap on about a quarter */
    assert_in_range(both, 25000 - 1000, 25000 + 1000);
    assert_true(a > 0);
}


static void
test_canary_share_parse_takes_plain_decimals_in_unit_range(void **state)
{
    (void) state;
    assert_int_equal(share("0"), 0);
    assert_int_equal(share("0.1"), 1000);
    assert_int_equal(share("0.5"), 5000);
    assert_int_equal(share("1"), 10000);
    assert_int_equal(share("1.0"), 10000);
    assert_int_equal(share(".25"), 2500);
    assert_int_equal(share("0.00005"), 1);     /* rounds half away */
    assert_int_equal(share("0.00004"), 0);
    assert_int_equal(share("0.99996"), 10000);
}


static void
test_canary_share_parse_rejects_the_rest(void **state)
{
    uint32_t bp;

    (void) state;
    assert_int_equal(share_rc(""), CM_EINVAL);
    assert_int_equal(share_rc("."), CM_EINVAL);
    assert_int_equal(share_rc("1.01"), CM_EINVAL);
    assert_int_equal(share_rc("2"), CM_EINVAL);
    assert_int_equal(share_rc("-0.1"), CM_EINVAL);
    assert_int_equal(share_rc("+0.1"), CM_EINVAL);
    assert_int_equal(share_rc("1e-1"), CM_EINVAL);
    assert_int_equal(share_rc("0x0.1"), CM_EINVAL);
    assert_int_equal(share_rc("nan"), CM_EINVAL);
    assert_int_equal(share_rc(" 0.1"), CM_EINVAL);
    assert_int_equal(share_rc("0.1 "), CM_EINVAL);
    assert_int_equal(share_rc("0..1"), CM_EINVAL);
    assert_int_equal(share_rc("0.1000000000000000000000000000000"),
                     CM_EINVAL);                         /* too long */
    assert_int_equal(cm_canary_share_parse(NULL, 0, &bp), CM_EINVAL);
    /* length bounds the read: "0.5" of "0.5x" */
    assert_int_equal(cm_canary_share_parse("0.5x", 3, &bp), CM_OK);
    assert_int_equal(bp, 5000);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_canary_bucket_is_stable_and_in_range),
        cmocka_unit_test(
            test_canary_share_routes_about_that_share_of_consecutive_users),
        cmocka_unit_test(test_canary_growing_the_share_keeps_every_routed_user),
        cmocka_unit_test(test_canary_share_zero_routes_none_and_one_routes_all),
        cmocka_unit_test(test_canary_models_split_users_independently),
        cmocka_unit_test(
            test_canary_share_parse_takes_plain_decimals_in_unit_range),
        cmocka_unit_test(test_canary_share_parse_rejects_the_rest),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

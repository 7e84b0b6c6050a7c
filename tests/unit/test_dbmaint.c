/*
 * test_dbmaint.c: request_logs partition names, month arithmetic and the
 * retention rule (no database).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>

#include "cinematch/common.h"
#include "cinematch/dbmaint.h"


static void
test_partition_month_parses_the_names_005_creates(void **state)
{
    int y = 0, m = 0;

    assert_int_equal(cm_dbmaint_partition_month("request_logs_y2026m11", &y, &m),
                     CM_OK);
    assert_int_equal(y, 2026);
    assert_int_equal(m, 11);
    assert_int_equal(cm_dbmaint_partition_month("request_logs_y1999m01", &y, &m),
                     CM_OK);
    assert_int_equal(y, 1999);
    assert_int_equal(m, 1);
}


static void
test_partition_month_rejects_default_and_lookalikes(void **state)
{
    static const char *bad[] = {
        "request_logs_default", "request_logs", "request_logs_y2026m13",
        "request_logs_y2026m00", "request_logs_y2026m1", "request_logs_y26m11",
        "request_logs_y2026m111", "request_logs_y2026-11", "Request_logs_y2026m11",
        "request_logs_y0000m05", "xrequest_logs_y2026m11", "", "request_logs_yabcdm11",
    };
    size_t  i;
    int     y = -1, m = -1;

    for (i = 0; i < CM_ARRAY_SIZE(bad); i++) {
        if (cm_dbmaint_partition_month(bad[i], &y, &m) != CM_EINVAL) {
            fail_msg("accepted '%s'", bad[i]);
        }
    }
    assert_int_equal(cm_dbmaint_partition_month(NULL, &y, &m), CM_EINVAL);
    assert_int_equal(y, -1);    /* untouched on failure */
}


static void
test_month_add_crosses_year_boundaries_both_ways(void **state)
{
    int y, m;

    cm_dbmaint_month_add(2026, 11, 1, &y, &m);
    assert_int_equal(y, 2026); assert_int_equal(m, 12);
    cm_dbmaint_month_add(2026, 12, 1, &y, &m);
    assert_int_equal(y, 2027); assert_int_equal(m, 1);
    cm_dbmaint_month_add(2026, 1, -1, &y, &m);
    assert_int_equal(y, 2025); assert_int_equal(m, 12);
    cm_dbmaint_month_add(2026, 3, -27, &y, &m);
    assert_int_equal(y, 2023); assert_int_equal(m, 12);
    cm_dbmaint_month_add(2026, 6, 0, &y, &m);
    assert_int_equal(y, 2026); assert_int_equal(m, 6);
    cm_dbmaint_month_add(0, 1, -1, &y, &m);     /* floor, not truncation */
    assert_int_equal(y, -1); assert_int_equal(m, 12);
}


static void
test_expired_keeps_the_current_month_and_the_retention_window(void **state)
{
    /* now 2026-11, keep 6: keep 2026-05 .. 2026-11, drop 2026-04 and older */
    assert_false(cm_dbmaint_expired(2026, 11, 2026, 11, 6));
    assert_false(cm_dbmaint_expired(2026, 12, 2026, 11, 6));   /* future */
    assert_false(cm_dbmaint_expired(2026, 5, 2026, 11, 6));
    assert_true(cm_dbmaint_expired(2026, 4, 2026, 11, 6));
    assert_true(cm_dbmaint_expired(2025, 12, 2026, 11, 6));

    /* across the year: now 2026-02, keep 3 → keep 2025-11 .. */
    assert_false(cm_dbmaint_expired(2025, 11, 2026, 2, 3));
    assert_true(cm_dbmaint_expired(2025, 10, 2026, 2, 3));

    /* keep 1: only last month survives besides this one */
    assert_false(cm_dbmaint_expired(2026, 10, 2026, 11, 1));
    assert_true(cm_dbmaint_expired(2026, 9, 2026, 11, 1));

    /* 0 or negative: never drop anything */
    assert_false(cm_dbmaint_expired(1990, 1, 2026, 11, 0));
    assert_false(cm_dbmaint_expired(1990, 1, 2026, 11, -3));
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_partition_month_parses_the_names_005_creates),
        cmocka_unit_test(test_partition_month_rejects_default_and_lookalikes),
        cmocka_unit_test(test_month_add_crosses_year_boundaries_both_ways),
        cmocka_unit_test(test_expired_keeps_the_current_month_and_the_retention_window),
    };

    return cmocka_run_group_tests_name("dbmaint", tests, NULL, NULL);
}

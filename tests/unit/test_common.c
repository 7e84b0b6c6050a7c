/*
 * test_common.c: error strings, log-level parsing, clocks.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <string.h>
#include <cmocka.h>

#include "cinematch/common.h"


static void
test_seterr_formats_message_and_returns_code(void **state)
{
    char buf[32];

    assert_int_equal(cm_seterr(buf, sizeof(buf), CM_EINVAL, "bad %s %d",
                               "k", 7), CM_EINVAL);
    assert_string_equal(buf, "bad k 7");
    /* NULL buffer is allowed: the code still comes back. */
    assert_int_equal(cm_seterr(NULL, 0, CM_EIO, "x"), CM_EIO);
}


static void
test_seterr_truncates_long_messages(void **state)
{
    char buf[8];

    cm_seterr(buf, sizeof(buf), CM_ERR, "%s", "0123456789abcdef");
    assert_int_equal(strlen(buf), 7);
}


static void
test_log_level_parse_accepts_names_and_rejects_others(void **state)
{
    cm_log_level_t l;

    assert_int_equal(cm_log_level_parse("WARN", &l), CM_OK);
    assert_int_equal(l, CM_LOG_WARN);
    assert_int_equal(cm_log_level_parse("debug", &l), CM_OK);
    assert_int_equal(l, CM_LOG_DEBUG);
    assert_int_equal(cm_log_level_parse("verbose", &l), CM_EINVAL);
    assert_int_equal(cm_log_level_parse("", &l), CM_EINVAL);
}


static void
test_strerror_names_every_code(void **state)
{
    int codes[] = { CM_ENOMEM, CM_EINVAL, CM_EIO, CM_ENOTFOUND, CM_EAGAIN,
                    CM_EFORMAT, CM_ECANCELED, CM_ECONFLICT };
    size_t i;

    for (i = 0; i < CM_ARRAY_SIZE(codes); i++) {
        assert_string_not_equal(cm_strerror(codes[i]), "error");
    }
    assert_string_equal(cm_strerror(-1000), "error");
}


static void
test_monotonic_clock_never_goes_backwards(void **state)
{
    uint64_t a = cm_now_mono_ns(), b = cm_now_mono_ns();

    assert_true(b >= a);
    assert_true(cm_now_real_ns() > 1600000000ull * 1000000000ull);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_seterr_formats_message_and_returns_code),
        cmocka_unit_test(test_seterr_truncates_long_messages),
        cmocka_unit_test(test_log_level_parse_accepts_names_and_rejects_others),
        cmocka_unit_test(test_strerror_names_every_code),
        cmocka_unit_test(test_monotonic_clock_never_goes_backwards),
    };

    return cmocka_run_group_tests_name("common", tests, NULL, NULL);
}

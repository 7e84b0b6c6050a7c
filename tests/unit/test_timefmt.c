/*
 * test_timefmt.c: RFC 3339 parsing and formatting for API query
 * parameters, boundary cases forced both ways.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "cinematch/common.h"
#include "cinematch/timefmt.h"


static int64_t
parse_ok(const char *s)
{
    int64_t  us = -1;

    assert_int_equal(cm_time_parse(s, strlen(s), &us), CM_OK);
    return us;
}


static int
parse(const char *s)
{
    int64_t  us;

    return cm_time_parse(s, strlen(s), &us);
}


static void
test_time_parse_full_date_is_midnight_utc(void **state)
{
    (void) state;
    assert_int_equal(parse_ok("1970-01-01"), 0);
    assert_int_equal(parse_ok("2026-11-25"), 1795564800LL * 1000000);
    assert_int_equal(parse_ok("2000-03-01") - parse_ok("2000-02-28"),
                     2LL * 86400 * 1000000);            /* 2000 is leap */
}


static void
test_time_parse_applies_offsets_and_fractions(void **state)
{
    (void) state;
    assert_int_equal(parse_ok("2026-11-25T13:40:05Z"),
                     (1795564800LL + 13 * 3600 + 40 * 60 + 5) * 1000000);
    assert_int_equal(parse_ok("2026-11-25T14:40:05+01:00"),
                     parse_ok("2026-11-25T13:40:05Z"));
    assert_int_equal(parse_ok("2026-11-25t08:10:05-05:30"),
                     parse_ok("2026-11-25 13:40:05z"));
    assert_int_equal(parse_ok("2026-11-25T13:40:05.5Z")
                     - parse_ok("2026-11-25T13:40:05Z"), 500000);
    /* digits past microseconds are truncated, not rounded */
    assert_int_equal(parse_ok("2026-11-25T13:40:05.123456789Z")
                     - parse_ok("2026-11-25T13:40:05Z"), 123456);
}


static void
test_time_parse_rejects_impossible_calendar_values(void **state)
{
    (void) state;
    assert_int_equal(parse("2026-02-29"), CM_EINVAL);   /* not leap */
    assert_int_equal(parse("1900-02-29"), CM_EINVAL);   /* but 1970+ too */
    assert_int_equal(parse_ok("2024-02-29") > 0, 1);
    assert_int_equal(parse("2026-04-31"), CM_EINVAL);
    assert_int_equal(parse("2026-13-01"), CM_EINVAL);
    assert_int_equal(parse("2026-00-10"), CM_EINVAL);
    assert_int_equal(parse("2026-01-00"), CM_EINVAL);
    assert_int_equal(parse("2026-01-01T24:00:00Z"), CM_EINVAL);
    assert_int_equal(parse("2026-01-01T23:60:00Z"), CM_EINVAL);
    assert_int_equal(parse("2026-12-31T23:59:60Z"), CM_EINVAL);
    assert_int_equal(parse("2026-01-01T00:00:00+24:00"), CM_EINVAL);
    assert_int_equal(parse("2026-01-01T00:00:00+01:60"), CM_EINVAL);
}


static void
test_time_parse_rejects_what_postgres_alone_would_take(void **state)
{
    (void) state;
    assert_int_equal(parse("now"), CM_EINVAL);
    assert_int_equal(parse("epoch"), CM_EINVAL);
    assert_int_equal(parse("infinity"), CM_EINVAL);
    assert_int_equal(parse(""), CM_EINVAL);
    assert_int_equal(parse("2026-1-01"), CM_EINVAL);
    assert_int_equal(parse("2026-01-01T10:00Z"), CM_EINVAL);
    assert_int_equal(parse("2026-01-01T10:00:00"), CM_EINVAL);   /* no zone */
    assert_int_equal(parse("2026-01-01T10:00:00.Z"), CM_EINVAL);
    assert_int_equal(parse("2026-01-01T10:00:00.1234567890Z"), CM_EINVAL);
    assert_int_equal(parse("2026-01-01T10:00:00Zjunk"), CM_EINVAL);
    assert_int_equal(parse("2026-01-01T10:00:00+0100"), CM_EINVAL);
    assert_int_equal(parse("2026-01-01 "), CM_EINVAL);
    assert_int_equal(parse("+2026-01-01"), CM_EINVAL);
    assert_int_equal(cm_time_parse("2026-01-01\0", 11, &(int64_t) { 0 }),
                     CM_EINVAL);                          /* NUL inside */
}


static void
test_time_parse_range_is_1970_to_9999_after_the_offset(void **state)
{
    (void) state;
    assert_int_equal(parse("1969-12-31"), CM_EINVAL);
    assert_int_equal(parse("1970-01-01T00:30:00+01:00"), CM_EINVAL);
    assert_int_equal(parse_ok("1970-01-01T00:30:00-01:00"),
                     5400LL * 1000000);
    assert_int_equal(parse("9999-12-31T23:30:00-01:00"), CM_EINVAL);
    assert_int_equal(parse_ok("9999-12-31T23:59:59.999999Z") > 0, 1);
}


static void
test_time_format_round_trips_parse(void **state)
{
    char         buf[CM_TIME_FORMAT_LEN];
    const char  *cases[] = { "1970-01-01T00:00:00.000000Z",
                             "2024-02-29T23:59:59.999999Z",
                             "2026-11-25T13:40:05.123456Z",
                             "9999-12-31T23:59:59.999999Z" };
    size_t       i;

    (void) state;
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        assert_int_equal(cm_time_format(parse_ok(cases[i]), buf,
                                        sizeof(buf)),
                         CM_TIME_FORMAT_LEN - 1);
        assert_string_equal(buf, cases[i]);
    }
    assert_int_equal(cm_time_format(-1, buf, sizeof(buf)), 0);
    assert_int_equal(cm_time_format(0, buf, CM_TIME_FORMAT_LEN - 1), 0);
    assert_int_equal(cm_time_format(parse_ok("9999-12-31T23:59:59Z")
                                    + 1000000, buf, sizeof(buf)), 0);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_time_parse_full_date_is_midnight_utc),
        cmocka_unit_test(test_time_parse_applies_offsets_and_fractions),
        cmocka_unit_test(test_time_parse_rejects_impossible_calendar_values),
        cmocka_unit_test(
            test_time_parse_rejects_what_postgres_alone_would_take),
        cmocka_unit_test(
            test_time_parse_range_is_1970_to_9999_after_the_offset),
        cmocka_unit_test(test_time_format_round_trips_parse),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

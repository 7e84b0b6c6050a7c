/*
 * test_common.c: error strings, log-level parsing, clocks.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <jansson.h>

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


static void
test_json_escape_quotes_controls_and_invalid_utf8(void **state)
{
    char  out[64];

    assert_int_equal(cm_json_escape(out, sizeof(out), "a\"b\\c\n\t", 7), 15);
    assert_string_equal(out, "a\\\"b\\\\c\\n\\u0009");
    /* valid UTF-8 passes; a lone continuation byte, an overlong and a
     * surrogate become U+FFFD each byte */
    cm_json_escape(out, sizeof(out), "\xc3\xa9|\x80|\xc0\xaf|\xed\xa0\x80", 11);
    assert_string_equal(out, "\xc3\xa9|\\ufffd|\\ufffd\\ufffd|"
                             "\\ufffd\\ufffd\\ufffd");
    /* NUL is data, not an end */
    cm_json_escape(out, sizeof(out), "x\0y", 3);
    assert_string_equal(out, "x\\u0000y");
}


static void
test_json_escape_truncates_on_whole_characters(void **state)
{
    char  out[8];

    /* "\u0001" needs 6 bytes: after "abc" (3) it does not fit in 7 */
    assert_int_equal(cm_json_escape(out, sizeof(out), "abc\x01", 4), 3);
    assert_string_equal(out, "abc");
    assert_int_equal(cm_json_escape(out, 1, "abc", 3), 0);
    assert_string_equal(out, "");
    assert_int_equal(cm_json_escape(out, sizeof(out), "\xc3\xa9\xc3\xa9\xc3\xa9"
                                    "\xc3\xa9", 8), 6);
    assert_string_equal(out, "\xc3\xa9\xc3\xa9\xc3\xa9");
}


/* Log one message with stderr sent into a pipe; returns what was written. */
static char *
capture_log(cm_log_format_t format, const char *arg)
{
    static char  buf[16384];
    int          fds[2], saved;
    ssize_t      n;

    assert_int_equal(pipe(fds), 0);
    saved = dup(STDERR_FILENO);
    dup2(fds[1], STDERR_FILENO);
    cm_log_format = format;
    cm_log(CM_LOG_WARN, "%s", arg);
    cm_log_format = CM_LOG_TEXT;
    dup2(saved, STDERR_FILENO);
    close(saved);
    close(fds[1]);
    n = read(fds[0], buf, sizeof(buf) - 1);
    close(fds[0]);
    assert_true(n > 0);
    buf[n] = '\0';
    return buf;
}


static void
test_json_log_line_is_one_parseable_object(void **state)
{
    char          *line, big[3000];
    json_t        *o;
    json_error_t   e;
    const char    *hostile = "slot 3 \"quoted\" \\ \n{\"level\":\"debug\"} \xff";

    cm_log_cmd = "infer";
    line = capture_log(CM_LOG_JSON, hostile);
    assert_non_null(strchr(line, '\n'));
    assert_ptr_equal(strchr(line, '\n'), line + strlen(line) - 1);
    o = json_loads(line, 0, &e);
    assert_non_null(o);
    assert_string_equal(json_string_value(json_object_get(o, "level")),
                        "warn");
    assert_string_equal(json_string_value(json_object_get(o, "cmd")),
                        "infer");
    assert_int_equal(json_integer_value(json_object_get(o, "pid")),
                     (int) getpid());
    assert_non_null(strstr(json_string_value(json_object_get(o, "msg")),
                           "{\"level\":\"debug\"} \xef\xbf\xbd"));
    assert_int_equal(strlen(json_string_value(json_object_get(o, "time"))),
                     24);
    json_decref(o);

    /* a message longer than the buffer is cut, still one valid object */
    memset(big, '"', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    line = capture_log(CM_LOG_JSON, big);
    o = json_loads(line, 0, &e);
    assert_non_null(o);
    json_decref(o);

    line = capture_log(CM_LOG_TEXT, "plain");
    assert_non_null(strstr(line, " warn ["));
    assert_non_null(strstr(line, "] plain\n"));
}


static void
test_log_format_parse_accepts_json_and_text_only(void **state)
{
    cm_log_format_t  f = CM_LOG_TEXT;

    assert_int_equal(cm_log_format_parse("json", &f), CM_OK);
    assert_int_equal(f, CM_LOG_JSON);
    assert_int_equal(cm_log_format_parse("TEXT", &f), CM_OK);
    assert_int_equal(f, CM_LOG_TEXT);
    assert_int_equal(cm_log_format_parse("xml", &f), CM_EINVAL);
    assert_int_equal(cm_log_format_parse("", &f), CM_EINVAL);
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
        cmocka_unit_test(test_json_escape_quotes_controls_and_invalid_utf8),
        cmocka_unit_test(test_json_escape_truncates_on_whole_characters),
        cmocka_unit_test(test_json_log_line_is_one_parseable_object),
        cmocka_unit_test(test_log_format_parse_accepts_json_and_text_only),
    };

    return cmocka_run_group_tests_name("common", tests, NULL, NULL);
}

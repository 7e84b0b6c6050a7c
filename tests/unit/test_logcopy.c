/*
 * test_logcopy.c: request-log rows as COPY text: field escaping and the
 * answer's members (model_version, is_fallback, fallback_reason, detail)
 * turned into COPY fields (no database; the integration test
 * test_request_log_copy.py reads such rows back from PostgreSQL).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cinematch/common.h"
#include "cinematch/logcopy.h"


static char *
escape(const char *s, size_t n)
{
    static char  out[256];
    size_t       k;

    assert_true(CM_COPY_ESCAPED_MAX(n) < sizeof(out));
    k = cm_copy_escape(out, s, n);
    assert_true(k <= CM_COPY_ESCAPED_MAX(n));
    out[k] = '\0';
    return out;
}


static char *
members(const char *m)
{
    static char  out[1024];
    long         k;

    assert_true(CM_COPY_MEMBERS_MAX(strlen(m)) < sizeof(out));
    k = cm_copy_log_members(out, m, strlen(m));
    if (k < 0) {
        return NULL;
    }
    assert_true((size_t) k <= CM_COPY_MEMBERS_MAX(strlen(m)));
    out[k] = '\0';
    return out;
}


static void
test_escape_doubles_backslashes_and_names_tab_newline_cr(void **state)
{
    (void) state;
    assert_string_equal(escape("/api/v1/x", 9), "/api/v1/x");
    assert_string_equal(escape("a\\b\tc\nd\re", 9), "a\\\\b\\tc\\nd\\re");
    assert_string_equal(escape("\\N", 2), "\\\\N");      /* not a NULL */
    assert_string_equal(escape("\xc3\xa9\x01", 3), "\xc3\xa9\x01");
    assert_string_equal(escape("a\0b", 3), "a\xef\xbf\xbd" "b");
    assert_string_equal(escape("", 0), "");
}


static void
test_members_of_a_recommend_answer_become_four_fields(void **state)
{
    (void) state;
    assert_string_equal(members(
        "\"model_version\":\"3\",\"is_fallback\":false,"
        "\"fallback_reason\":null,\"detail\":{\"endpoint\":\"recommend\","
        "\"ids\":[1,2],\"scores\":[4.5,3.25],\"rating_user_id\":9}"),
        "3\tf\t\\N\t{\"endpoint\":\"recommend\",\"ids\":[1,2],"
        "\"scores\":[4.5,3.25],\"rating_user_id\":9}");
    assert_string_equal(members(
        "\"model_version\":null,\"is_fallback\":null,"
        "\"fallback_reason\":null,\"detail\":null"),
        "\\N\t\\N\t\\N\t\\N");
    assert_string_equal(members(
        "\"detail\" : { \"a\" : [ ] } , \"is_fallback\" : true ,"
        " \"fallback_reason\":\"unknown_user\", \"model_version\":\"12\""),
        "12\tt\tunknown_user\t{ \"a\" : [ ] }");
    assert_string_equal(members(""), "\\N\t\\N\t\\N\t\\N");
}


static void
test_model_version_is_an_integer_only_when_it_is_1_to_9_digits(void **state)
{
    (void) state;
    assert_string_equal(members("\"model_version\":\"123456789\""),
                        "123456789\t\\N\t\\N\t\\N");
    assert_string_equal(members("\"model_version\":\"1234567890\""),
                        "\\N\t\\N\t\\N\t\\N");
    assert_string_equal(members("\"model_version\":\"\""), "\\N\t\\N\t\\N\t\\N");
    assert_string_equal(members("\"model_version\":\"v3\""), "\\N\t\\N\t\\N\t\\N");
    assert_string_equal(members("\"model_version\":3"), "\\N\t\\N\t\\N\t\\N");
}


static void
test_fallback_reason_is_unescaped_then_copy_escaped(void **state)
{
    (void) state;
    assert_string_equal(members(
        "\"fallback_reason\":\"a\\tb\\\\c\\\"d\\/e\\n\\u00e9\\ud83c\\udfac\""),
        "\\N\t\\N\ta\\tb\\\\c\"d/e\\n\xc3\xa9\xf0\x9f\x8e\xac\t\\N");
    /* \u escapes of tab, newline, CR and backslash are COPY-escaped too
     * (the fuzzer found them raw) */
    assert_string_equal(members("\"fallback_reason\":\"\\u0009\\u000a\\u000D\\u005c\""),
                        "\\N\t\\N\t\\t\\n\\r\\\\\t\\N");
    /* PostgreSQL text holds no NUL and no lone surrogate */
    assert_string_equal(members("\"fallback_reason\":\"x\\u0000\\ud800y\""),
                        "\\N\t\\N\tx\xef\xbf\xbd\xef\xbf\xbdy\t\\N");
}


static void
test_detail_keeps_its_json_text_with_backslashes_doubled(void **state)
{
    (void) state;
    assert_string_equal(members("\"detail\":{\"s\":\"a\\\"}\\\\\\n\"}"),
                        "\\N\t\\N\t\\N\t{\"s\":\"a\\\\\"}\\\\\\\\\\\\n\"}");
}


static void
test_members_that_are_not_json_members_are_refused(void **state)
{
    (void) state;
    assert_null(members("\"model_version\""));
    assert_null(members("\"model_version\":"));
    assert_null(members("\"detail\":{\"a\":[1,2}"));
    assert_null(members("\"detail\":{\"a\":\"}"));
    assert_null(members("model_version:1"));
    assert_null(members("\"a\":1 \"b\":2"));
    assert_null(members("\"a\":1,"));
    assert_null(members("\"a\\"));
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_escape_doubles_backslashes_and_names_tab_newline_cr),
        cmocka_unit_test(test_members_of_a_recommend_answer_become_four_fields),
        cmocka_unit_test(test_model_version_is_an_integer_only_when_it_is_1_to_9_digits),
        cmocka_unit_test(test_fallback_reason_is_unescaped_then_copy_escaped),
        cmocka_unit_test(test_detail_keeps_its_json_text_with_backslashes_doubled),
        cmocka_unit_test(test_members_that_are_not_json_members_are_refused),
    };

    return cmocka_run_group_tests_name("logcopy", tests, NULL, NULL);
}

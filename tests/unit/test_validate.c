/*
 * test_validate.c: register/login field rules with boundary cases forced
 * both ways, scopes, and the Authorization / X-API-Key parser.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include <jansson.h>

#include "cinematch/common.h"
#include "cinematch/authkeys.h"
#include "cinematch/validate.h"


static int
email(const char *s, const char **code)
{
    cm_field_error_t  e = { NULL, NULL };
    int               rc = cm_validate_email(s, strlen(s), &e);

    if (code != NULL) {
        *code = e.code;
    }
    return rc;
}


static void
test_utf8_validator_rejects_overlongs_surrogates_and_truncation(void **state)
{
    size_t  n;

    assert_true(cm_utf8_valid("a\xc3\xa9\xe2\x82\xac\xf0\x9f\x8e\xac", 10,
                              &n));
    assert_int_equal(n, 4);
    assert_false(cm_utf8_valid("\xc0\xaf", 2, NULL));          /* overlong / */
    assert_false(cm_utf8_valid("\xe0\x80\xaf", 3, NULL));      /* overlong */
    assert_false(cm_utf8_valid("\xed\xa0\x80", 3, NULL));      /* surrogate */
    assert_false(cm_utf8_valid("\xf4\x90\x80\x80", 4, NULL));  /* > 10FFFF */
    assert_false(cm_utf8_valid("\xe2\x82", 2, NULL));          /* truncated */
    assert_false(cm_utf8_valid("\x80", 1, NULL));              /* lone cont */
    assert_false(cm_utf8_valid("\xff", 1, NULL));
    assert_true(cm_utf8_valid("\xf4\x8f\xbf\xbf", 4, NULL));   /* 10FFFF */
    assert_true(cm_utf8_valid("", 0, &n));
    assert_int_equal(n, 0);
}


static void
test_email_accepts_ordinary_and_international_addresses(void **state)
{
    assert_int_equal(email("a@b.co", NULL), 0);
    assert_int_equal(email("first.last+tag@sub.example.org", NULL), 0);
    assert_int_equal(email("o'neil_{x}@ex-ample.com", NULL), 0);
    assert_int_equal(email("Ab@EXAMPLE.COM", NULL), 0);
    assert_int_equal(email("j\xc3\xb6rg@m\xc3\xbcller.de", NULL), 0);
    assert_int_equal(email("\xe7\x94\xa8\xe6\x88\xb7@\xe4\xbe\x8b\xe5\xad\x90."
                           "\xe4\xb8\xad\xe5\x9b\xbd", NULL), 0);
}


static void
test_email_rejects_malformed_addresses(void **state)
{
    size_t       i;
    const char  *code;
    const char  *bad[] = {
        "plainaddress", "@example.com", "user@", "user@@example.com",
        "a@b@example.com", "user@example", ".user@example.com",
        "user.@example.com", "us..er@example.com", "user@.example.com",
        "user@example..com", "user@example.com.", "user@-example.com",
        "user@example-.com", "us er@example.com", "user@exa mple.com",
        "user@[127.0.0.1]", "user@1.2.3.4", "\"quoted\"@example.com",
        "user@exam_ple.com", "us(er)@example.com", "user\t@example.com",
        "user@example.com\n", "us\xc2\xa0" "er@example.com",
        "us\xe2\x80\x8b" "er@example.com", "user@ex\xe2\x80\xae" "ample.com",
        "us,er@example.com", "us;er@example.com", "us\\er@example.com",
        "' OR 1=1 --@example.com",
    };

    for (i = 0; i < CM_ARRAY_SIZE(bad); i++) {
        if (email(bad[i], &code) != CM_EINVAL) {
            fail_msg("accepted \"%s\"", bad[i]);
        }
        assert_string_equal(code, "invalid_format");
    }
    assert_int_equal(email("", &code), CM_EINVAL);
    assert_string_equal(code, "required");
}


static void
test_email_length_limits_both_ways(void **state)
{
    char              buf[2048];
    cm_field_error_t  e;
    size_t            n;

    /* local part: 64 ok, 65 too long */
    memset(buf, 'a', 64);
    strcpy(buf + 64, "@example.com");
    assert_int_equal(cm_validate_email(buf, strlen(buf), &e), 0);
    memset(buf, 'a', 65);
    strcpy(buf + 65, "@example.com");
    assert_int_equal(cm_validate_email(buf, strlen(buf), &e), CM_EINVAL);
    assert_string_equal(e.code, "too_long");

    /* whole address: 254 ok, 255 too long (labels of <= 63) */
    n = (size_t) sprintf(buf, "abcdefghij@");
    memset(buf + n, 'd', 60); n += 60; buf[n++] = '.';
    memset(buf + n, 'd', 60); n += 60; buf[n++] = '.';
    memset(buf + n, 'd', 60); n += 60; buf[n++] = '.';
    memset(buf + n, 'd', 254 - n - 4); n = 250;
    memcpy(buf + n, ".com", 4); n += 4;
    buf[n] = '\0';
    assert_int_equal(strlen(buf), 254);
    assert_int_equal(cm_validate_email(buf, 254, &e), 0);
    memmove(buf + 1, buf, 255);
    buf[0] = 'x';
    assert_int_equal(strlen(buf), 255);
    assert_int_equal(cm_validate_email(buf, 255, &e), CM_EINVAL);
    assert_string_equal(e.code, "too_long");

    /* a label of 63 ok, 64 not */
    n = (size_t) sprintf(buf, "a@");
    memset(buf + n, 'l', 63);
    strcpy(buf + n + 63, ".com");
    assert_int_equal(cm_validate_email(buf, strlen(buf), &e), 0);
    memset(buf + n, 'l', 64);
    strcpy(buf + n + 64, ".com");
    assert_int_equal(cm_validate_email(buf, strlen(buf), &e), CM_EINVAL);
}


static void
test_email_rejects_nul_invalid_utf8_and_megabyte_input(void **state)
{
    cm_field_error_t  e;
    char             *big;

    assert_int_equal(cm_validate_email("a\0b@example.com", 15, &e),
                     CM_EINVAL);
    assert_string_equal(e.code, "invalid_characters");
    assert_int_equal(cm_validate_email("a\xff@example.com", 14, &e),
                     CM_EINVAL);
    assert_string_equal(e.code, "invalid_utf8");
    big = malloc(1 << 20);
    assert_non_null(big);
    memset(big, 'a', 1 << 20);
    assert_int_equal(cm_validate_email(big, 1 << 20, &e), CM_EINVAL);
    assert_string_equal(e.code, "too_long");
    assert_non_null(e.message);
    free(big);
}


static void
test_password_rules_both_ways(void **state)
{
    cm_field_error_t  e;
    char              big[1100];

    assert_int_equal(cm_validate_password("1234567", 7, &e), CM_EINVAL);
    assert_string_equal(e.code, "too_short");
    assert_int_equal(cm_validate_password("12345678", 8, &e), 0);
    /* characters, not bytes: 8 two-byte characters pass, 7 do not */
    assert_int_equal(cm_validate_password(
        "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9",
        16, &e), 0);
    assert_int_equal(cm_validate_password(
        "\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9\xc3\xa9", 14, &e),
        CM_EINVAL);
    memset(big, 'p', sizeof(big));
    assert_int_equal(cm_validate_password(big, 1024, &e), 0);
    assert_int_equal(cm_validate_password(big, 1025, &e), CM_EINVAL);
    assert_string_equal(e.code, "too_long");
    assert_int_equal(cm_validate_password("abcd\0efgh", 9, &e), CM_EINVAL);
    assert_string_equal(e.code, "invalid_characters");
    assert_int_equal(cm_validate_password("abcdefg\xff", 8, &e), CM_EINVAL);
    assert_string_equal(e.code, "invalid_utf8");
    assert_int_equal(cm_validate_password("", 0, &e), CM_EINVAL);
    assert_string_equal(e.code, "required");
    /* SQL metacharacters are just characters */
    assert_int_equal(cm_validate_password("'; DROP TABLE users; --", 23, &e),
                     0);
}


static void
test_display_name_rules_both_ways(void **state)
{
    cm_field_error_t  e;
    char              buf[512];

    memset(buf, 'n', 100);
    assert_int_equal(cm_validate_display_name(buf, 100, &e), 0);
    assert_int_equal(cm_validate_display_name(buf, 101, &e), CM_EINVAL);
    assert_string_equal(e.code, "too_long");
    /* 100 four-byte characters (400 bytes) pass; 101 do not */
    {
        size_t i;

        for (i = 0; i < 101; i++) {
            memcpy(buf + 4 * i, "\xf0\x9f\x8e\xac", 4);
        }
    }
    assert_int_equal(cm_validate_display_name(buf, 400, &e), 0);
    assert_int_equal(cm_validate_display_name(buf, 404, &e), CM_EINVAL);
    assert_string_equal(e.code, "too_long");

    assert_int_equal(cm_validate_display_name("Ada Lovelace", 12, &e), 0);
    assert_int_equal(cm_validate_display_name("", 0, &e), CM_EINVAL);
    assert_string_equal(e.code, "required");
    assert_int_equal(cm_validate_display_name("   ", 3, &e), CM_EINVAL);
    assert_int_equal(cm_validate_display_name("a\nb", 3, &e), CM_EINVAL);
    assert_string_equal(e.code, "invalid_characters");
    assert_int_equal(cm_validate_display_name("a\x7f", 2, &e), CM_EINVAL);
    assert_int_equal(cm_validate_display_name("a\xc2\x85", 3, &e), CM_EINVAL);
    assert_int_equal(cm_validate_display_name("evil\xe2\x80\xaetxt.exe", 14,
                                              &e), CM_EINVAL);
    assert_int_equal(cm_validate_display_name("a\0b", 3, &e), CM_EINVAL);
    assert_int_equal(cm_validate_display_name("a\xc3", 2, &e), CM_EINVAL);
    assert_string_equal(e.code, "invalid_utf8");
    /* a family emoji joined with ZWJ is fine */
    assert_int_equal(cm_validate_display_name(
        "\xf0\x9f\x91\xa9\xe2\x80\x8d\xf0\x9f\x91\xa7", 11, &e), 0);
    /* key names may be empty */
    assert_int_equal(cm_validate_key_name("", 0, &e), 0);
    assert_int_equal(cm_validate_key_name("ci deploy", 9, &e), 0);
}


static void
test_scopes_names_arrays_and_pg_literals(void **state)
{
    uint32_t          m;
    char              buf[128];
    json_t           *a;
    cm_field_error_t  e;

    assert_int_equal(cm_scope_from_name("models:write", 12),
                     CM_SCOPE_MODELS_WRITE);
    assert_int_equal(cm_scope_from_name("models:writ", 11), 0);
    assert_int_equal(cm_scope_from_name("Chat", 4), 0);

    a = json_loads("[\"recommend\",\"chat\"]", 0, NULL);
    assert_int_equal(cm_scopes_from_json(a, &m, &e), 0);
    assert_int_equal(m, CM_SCOPE_RECOMMEND | CM_SCOPE_CHAT);
    json_decref(a);
    assert_int_equal(cm_scopes_to_pg_array(m, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "{recommend,chat}");
    assert_int_equal(cm_scopes_from_pg_array(buf, strlen(buf), &m), 0);
    assert_int_equal(m, CM_SCOPE_RECOMMEND | CM_SCOPE_CHAT);
    assert_int_equal(cm_scopes_to_pg_array(0, buf, sizeof(buf)), 0);
    assert_string_equal(buf, "{}");
    assert_int_equal(cm_scopes_from_pg_array("{}", 2, &m), 0);
    assert_int_equal(m, 0);
    assert_int_equal(cm_scopes_from_pg_array("{chat,}", 7, &m), CM_EINVAL);
    assert_int_equal(cm_scopes_from_pg_array("{\"chat\"}", 8, &m), CM_EINVAL);
    assert_int_equal(cm_scopes_to_pg_array(CM_SCOPE_ALL, buf, 8), CM_EINVAL);

    a = json_loads("[\"chat\",\"chat\"]", 0, NULL);
    assert_int_equal(cm_scopes_from_json(a, &m, &e), CM_EINVAL);
    assert_string_equal(e.code, "duplicate");
    json_decref(a);
    a = json_loads("[\"root\"]", 0, NULL);
    assert_int_equal(cm_scopes_from_json(a, &m, &e), CM_EINVAL);
    assert_string_equal(e.code, "unknown_scope");
    json_decref(a);
    a = json_loads("[1]", 0, NULL);
    assert_int_equal(cm_scopes_from_json(a, &m, &e), CM_EINVAL);
    assert_string_equal(e.code, "invalid_type");
    json_decref(a);
    a = json_loads("\"chat\"", JSON_DECODE_ANY, NULL);
    assert_int_equal(cm_scopes_from_json(a, &m, &e), CM_EINVAL);
    json_decref(a);
    assert_int_equal(cm_scopes_from_json(NULL, &m, &e), 0);
    assert_int_equal(m, 0);

    /* an empty grant is the user minus admin */
    assert_true(cm_scope_allows(0, CM_SCOPE_CHAT));
    assert_false(cm_scope_allows(0, CM_SCOPE_ADMIN));
    assert_true(cm_scope_allows(CM_SCOPE_CHAT, CM_SCOPE_CHAT));
    assert_false(cm_scope_allows(CM_SCOPE_CHAT, CM_SCOPE_RECOMMEND));
    assert_false(cm_scope_allows(CM_SCOPE_CHAT,
                                 CM_SCOPE_CHAT | CM_SCOPE_PREDICT));
}


static int
parse(const char *authz, const char *key, cm_cred_t *c, const char **code)
{
    cm_field_error_t  e = { NULL, NULL };
    int               rc;

    rc = cm_auth_header_parse(authz, authz ? strlen(authz) : 0,
                              key, key ? strlen(key) : 0, c, &e);
    if (code != NULL) {
        *code = e.code;
    }
    return rc;
}


static void
test_auth_header_tells_jwt_from_api_key(void **state)
{
    cm_cred_t    c;
    cm_apikey_t  k;
    char         h[128];

    assert_int_equal(parse(NULL, NULL, &c, NULL), 0);
    assert_int_equal(c.kind, CM_CRED_NONE);

    assert_int_equal(parse("Bearer aaa.bbb.ccc", NULL, &c, NULL), 0);
    assert_int_equal(c.kind, CM_CRED_JWT);
    assert_int_equal(c.len, 11);
    assert_memory_equal(c.token, "aaa.bbb.ccc", 11);
    assert_int_equal(parse("bearer   aaa.bbb.ccc  ", NULL, &c, NULL), 0);
    assert_int_equal(c.kind, CM_CRED_JWT);
    assert_int_equal(c.len, 11);

    assert_int_equal(cm_apikey_generate(&k), 0);
    snprintf(h, sizeof(h), "Bearer %s", k.key);
    assert_int_equal(parse(h, NULL, &c, NULL), 0);
    assert_int_equal(c.kind, CM_CRED_APIKEY);
    assert_int_equal(c.len, 46);
    assert_int_equal(parse(NULL, k.key, &c, NULL), 0);
    assert_int_equal(c.kind, CM_CRED_APIKEY);
    snprintf(h, sizeof(h), " %s ", k.key);
    assert_int_equal(parse(NULL, h, &c, NULL), 0);
    assert_int_equal(c.len, 46);
}


static void
test_auth_header_rejects_with_precise_reasons(void **state)
{
    cm_cred_t    c;
    cm_apikey_t  k;
    const char  *code;
    char        *big;

    assert_int_equal(parse("Basic dXNlcjpwYXNz", NULL, &c, &code), CM_EINVAL);
    assert_string_equal(code, "unsupported_scheme");
    assert_int_equal(parse("Bearerx.y.z", NULL, &c, &code), CM_EINVAL);
    assert_string_equal(code, "unsupported_scheme");
    assert_int_equal(parse("Bearer", NULL, &c, &code), CM_EINVAL);
    assert_string_equal(code, "malformed");
    assert_int_equal(parse("Bearer    ", NULL, &c, &code), CM_EINVAL);
    assert_string_equal(code, "malformed");
    assert_int_equal(parse("", NULL, &c, &code), CM_EINVAL);
    assert_string_equal(code, "malformed");
    assert_int_equal(parse("Bearer a.b.c d", NULL, &c, &code), CM_EINVAL);
    assert_string_equal(code, "malformed");
    assert_int_equal(parse("Bearer a.b", NULL, &c, &code), CM_EINVAL);
    assert_string_equal(code, "malformed");
    assert_int_equal(parse("Bearer a.b.c.d", NULL, &c, &code), CM_EINVAL);
    assert_int_equal(parse("Bearer a+b.c.d", NULL, &c, &code), CM_EINVAL);
    assert_int_equal(parse("Bearer cm_short", NULL, &c, &code), CM_EINVAL);
    assert_string_equal(code, "malformed");
    assert_int_equal(parse(NULL, "cm_short", &c, &code), CM_EINVAL);
    assert_int_equal(parse(NULL, "aaa.bbb.ccc", &c, &code), CM_EINVAL);
    assert_int_equal(cm_apikey_generate(&k), 0);
    assert_int_equal(parse("Bearer a.b.c", k.key, &c, &code), CM_EINVAL);
    assert_string_equal(code, "ambiguous");
    assert_int_equal(c.kind, CM_CRED_NONE);
    assert_int_equal(cm_auth_header_parse("Bearer a\0.b.c", 13, NULL, 0, &c,
                                          NULL), CM_EINVAL);

    big = malloc(CM_AUTH_HEADER_MAX + 10);
    assert_non_null(big);
    memcpy(big, "Bearer ", 7);
    memset(big + 7, 'a', CM_AUTH_HEADER_MAX);
    assert_int_equal(cm_auth_header_parse(big, CM_AUTH_HEADER_MAX + 7, NULL,
                                          0, &c, NULL), CM_EINVAL);
    assert_int_equal(cm_auth_header_parse(NULL, 0, big,
                                          CM_AUTH_HEADER_MAX + 1, &c, NULL),
                     CM_EINVAL);
    free(big);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8_validator_rejects_overlongs_surrogates_and_truncation),
        cmocka_unit_test(test_email_accepts_ordinary_and_international_addresses),
        cmocka_unit_test(test_email_rejects_malformed_addresses),
        cmocka_unit_test(test_email_length_limits_both_ways),
        cmocka_unit_test(test_email_rejects_nul_invalid_utf8_and_megabyte_input),
        cmocka_unit_test(test_password_rules_both_ways),
        cmocka_unit_test(test_display_name_rules_both_ways),
        cmocka_unit_test(test_scopes_names_arrays_and_pg_literals),
        cmocka_unit_test(test_auth_header_tells_jwt_from_api_key),
        cmocka_unit_test(test_auth_header_rejects_with_precise_reasons),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

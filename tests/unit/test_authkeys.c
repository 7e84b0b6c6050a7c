/*
 * test_authkeys.c: API keys, refresh and one-time tokens, argon2id.
 * Password tests use libsodium's minimum cost so the suite stays fast;
 * the production parameters are measured by `cinematch bench auth`.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include <sodium.h>

#include "cinematch/common.h"
#include "cinematch/authkeys.h"

static const cm_pwhash_params_t  fast = { 1, 8192 };   /* t=1, 8 KiB */
static const cm_pwhash_params_t  fast2 = { 2, 8192 };


static int
all_base62(const char *s, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (strchr("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz",
                   s[i]) == NULL || s[i] == '\0')
        {
            return 0;
        }
    }
    return 1;
}


static void
test_apikey_has_documented_shape_and_stored_hash(void **state)
{
    cm_apikey_t  k;
    char         hex[65], prefix[9];

    assert_int_equal(cm_apikey_generate(&k), 0);
    assert_int_equal(strlen(k.key), 46);
    assert_memory_equal(k.key, "cm_", 3);
    assert_true(all_base62(k.key + 3, 43));
    assert_int_equal(strlen(k.prefix), 8);
    assert_memory_equal(k.prefix, k.key + 3, 8);
    /* stored hash = sha256 of the whole key, lowercase hex (schema regex
     * ^[0-9a-f]{64}$) */
    cm_sha256_hex(k.key, strlen(k.key), hex);
    assert_string_equal(k.sha256, hex);
    assert_int_equal(cm_apikey_parse(k.key, strlen(k.key), prefix), 0);
    assert_string_equal(prefix, k.prefix);
}


static void
test_apikeys_are_distinct(void **state)
{
    cm_apikey_t  a, b;
    int          i;

    for (i = 0; i < 100; i++) {
        assert_int_equal(cm_apikey_generate(&a), 0);
        assert_int_equal(cm_apikey_generate(&b), 0);
        assert_string_not_equal(a.key, b.key);
        assert_string_not_equal(a.sha256, b.sha256);
    }
}


static void
test_base62_digits_are_roughly_uniform(void **state)
{
    char    buf[62 * 200];
    size_t  counts[128] = { 0 }, i;

    /* 12400 draws, 200 expected per digit; a modulo bias or a dead digit
     * would show far outside 100..300 */
    assert_int_equal(cm_random_base62(buf, sizeof(buf)), 0);
    for (i = 0; i < sizeof(buf); i++) {
        counts[(unsigned char) buf[i]]++;
    }
    for (i = 0; i < 128; i++) {
        if (counts[i] != 0) {
            assert_true(counts[i] > 100 && counts[i] < 300);
        }
    }
    assert_int_equal(counts['0'] > 0 && counts['z'] > 0 && counts['Z'] > 0, 1);
}


static void
test_apikey_verify_matches_only_its_hash(void **state)
{
    cm_apikey_t  k, other;
    char         bad[80];

    assert_int_equal(cm_apikey_generate(&k), 0);
    assert_int_equal(cm_apikey_generate(&other), 0);
    assert_int_equal(cm_apikey_verify(k.key, strlen(k.key), k.sha256), 0);
    assert_int_equal(cm_apikey_verify(k.key, strlen(k.key), other.sha256),
                     CM_AUTH_EMISMATCH);
    /* a one-character change of the key */
    strcpy(bad, k.key);
    bad[20] = bad[20] == 'a' ? 'b' : 'a';
    assert_int_equal(cm_apikey_verify(bad, strlen(bad), k.sha256),
                     CM_AUTH_EMISMATCH);
    /* malformed stored hashes: uppercase, short, long, NULL */
    strcpy(bad, k.sha256);
    bad[0] = 'A';
    assert_int_equal(cm_apikey_verify(k.key, strlen(k.key), bad), CM_EINVAL);
    bad[0] = k.sha256[0];
    bad[63] = '\0';
    assert_int_equal(cm_apikey_verify(k.key, strlen(k.key), bad), CM_EINVAL);
    strcpy(bad, k.sha256);
    strcat(bad, "0");
    assert_int_equal(cm_apikey_verify(k.key, strlen(k.key), bad), CM_EINVAL);
    assert_int_equal(cm_apikey_verify(k.key, strlen(k.key), NULL), CM_EINVAL);
}


static void
test_apikey_parse_rejects_near_misses(void **state)
{
    cm_apikey_t  k;
    char         s[64];

    assert_int_equal(cm_apikey_generate(&k), 0);
    assert_int_equal(cm_apikey_parse(k.key, 45, NULL), CM_EINVAL);
    strcpy(s, k.key);
    strcat(s, "x");
    assert_int_equal(cm_apikey_parse(s, 47, NULL), CM_EINVAL);
    strcpy(s, k.key);
    s[0] = 'C';
    assert_int_equal(cm_apikey_parse(s, 46, NULL), CM_EINVAL);
    strcpy(s, k.key);
    s[10] = '-';
    assert_int_equal(cm_apikey_parse(s, 46, NULL), CM_EINVAL);
    strcpy(s, k.key);
    s[45] = '\0';
    assert_int_equal(cm_apikey_parse(s, 46, NULL), CM_EINVAL);
    assert_int_equal(cm_apikey_parse(NULL, 46, NULL), CM_EINVAL);
}


static void
test_refresh_token_shape_family_and_expiry(void **state)
{
    cm_token_t  t, u;
    char        hex[65];

    assert_int_equal(cm_token_generate(&t, CM_TOKEN_REFRESH, 1000, 3600), 0);
    assert_int_equal(strlen(t.token), 47);
    assert_memory_equal(t.token, "cmr_", 4);
    assert_int_equal(t.expires_at, 4600);
    /* uuid v4: 8-4-4-4-12, version nibble 4, variant 8..b */
    assert_int_equal(strlen(t.family), 36);
    assert_int_equal(t.family[8], '-');
    assert_int_equal(t.family[14], '4');
    assert_non_null(strchr("89ab", t.family[19]));
    assert_int_equal(cm_token_hash(t.token, 47, CM_TOKEN_REFRESH, hex), 0);
    assert_string_equal(hex, t.sha256);

    assert_int_equal(cm_token_generate(&u, CM_TOKEN_REFRESH, 1000, 3600), 0);
    assert_string_not_equal(t.token, u.token);
    assert_string_not_equal(t.family, u.family);

    assert_int_equal(cm_token_generate(&u, CM_TOKEN_REFRESH, 1000, 0),
                     CM_EINVAL);
}


static void
test_token_verify_checks_hash_then_expiry(void **state)
{
    cm_token_t  t, other;

    assert_int_equal(cm_token_generate(&t, CM_TOKEN_ONETIME, 1000, 900), 0);
    assert_memory_equal(t.token, "cmo_", 4);
    assert_int_equal(cm_token_generate(&other, CM_TOKEN_ONETIME, 1000, 900),
                     0);
    assert_int_equal(cm_token_verify(t.token, 47, CM_TOKEN_ONETIME, t.sha256,
                                     t.expires_at, 1899), 0);
    /* expiry boundary: valid strictly before expires_at */
    assert_int_equal(cm_token_verify(t.token, 47, CM_TOKEN_ONETIME, t.sha256,
                                     t.expires_at, 1900), CM_AUTH_EEXPIRED);
    /* a wrong token never learns about expiry */
    assert_int_equal(cm_token_verify(t.token, 47, CM_TOKEN_ONETIME,
                                     other.sha256, other.expires_at, 5000),
                     CM_AUTH_EMISMATCH);
    /* kinds do not mix: a refresh token is not a one-time token */
    assert_int_equal(cm_token_verify(t.token, 47, CM_TOKEN_REFRESH, t.sha256,
                                     t.expires_at, 1000), CM_EINVAL);
    assert_int_equal(cm_token_parse(t.token, 46, CM_TOKEN_ONETIME),
                     CM_EINVAL);
}


static void
test_password_round_trip_with_argon2id(void **state)
{
    char  h[CM_PWHASH_STRLEN], h2[CM_PWHASH_STRLEN];

    assert_int_equal(cm_password_hash(h, "correct horse", 13, &fast), 0);
    assert_memory_equal(h, "$argon2id$v=19$m=8,t=1,p=1$", 27);
    assert_int_equal(cm_password_verify(h, "correct horse", 13), 0);
    assert_int_equal(cm_password_verify(h, "correct horsf", 13),
                     CM_AUTH_EMISMATCH);
    assert_int_equal(cm_password_verify(h, "correct hors", 12),
                     CM_AUTH_EMISMATCH);
    /* salted: the same password hashes differently */
    assert_int_equal(cm_password_hash(h2, "correct horse", 13, &fast), 0);
    assert_string_not_equal(h, h2);
    /* bytes after NUL count (length, not C string) */
    assert_int_equal(cm_password_hash(h, "ab\0cdefgh", 9, &fast), 0);
    assert_int_equal(cm_password_verify(h, "ab", 2), CM_AUTH_EMISMATCH);
    assert_int_equal(cm_password_verify(h, "ab\0cdefgh", 9), 0);
}


static void
test_password_limits_and_unreadable_hashes(void **state)
{
    char  h[CM_PWHASH_STRLEN], big[CM_PASSWORD_MAX + 2], junk[300];

    memset(big, 'x', sizeof(big));
    assert_int_equal(cm_password_hash(h, big, CM_PASSWORD_MAX, &fast), 0);
    assert_int_equal(cm_password_verify(h, big, CM_PASSWORD_MAX), 0);
    assert_int_equal(cm_password_hash(h, big, CM_PASSWORD_MAX + 1, &fast),
                     CM_EINVAL);
    assert_int_equal(cm_password_verify(h, big, CM_PASSWORD_MAX + 1),
                     CM_EINVAL);
    /* "!" marks an account with no password login */
    assert_int_equal(cm_password_verify("!", "whatever1", 9), CM_EINVAL);
    assert_int_equal(cm_password_verify("$argon2i$v=19$m=8,t=1,p=1$x$y",
                                        "whatever1", 9), CM_EINVAL);
    memset(junk, 'a', sizeof(junk) - 1);
    junk[sizeof(junk) - 1] = '\0';
    memcpy(junk, "$argon2id$", 10);
    assert_int_equal(cm_password_verify(junk, "whatever1", 9), CM_EINVAL);
    assert_int_equal(cm_password_verify("$argon2id$v=19$m=8,t=1,p=1$garbage",
                                        "whatever1", 9), CM_AUTH_EMISMATCH);
}


static void
test_needs_rehash_when_parameters_change(void **state)
{
    char  h[CM_PWHASH_STRLEN];

    assert_int_equal(cm_password_hash(h, "password1", 9, &fast), 0);
    assert_int_equal(cm_password_needs_rehash(h, &fast), 0);
    assert_int_equal(cm_password_needs_rehash(h, &fast2), 1);
    assert_int_equal(cm_password_needs_rehash(h, NULL), 1);
    assert_true(cm_password_needs_rehash("!", &fast) < 0);
}


static void
test_dummy_verify_always_fails(void **state)
{
    assert_int_equal(cm_password_verify_dummy("pw", 2, &fast),
                     CM_AUTH_EMISMATCH);
    assert_int_equal(cm_password_verify_dummy(NULL, 0, &fast),
                     CM_AUTH_EMISMATCH);
}


static void
test_default_parameters_meet_owasp_floor(void **state)
{
    /* OWASP password storage cheat sheet: argon2id, m >= 19 MiB, t >= 2 */
    assert_true(cm_pwhash_default.memlimit >= 19u * 1024 * 1024);
    assert_true(cm_pwhash_default.opslimit >= 2);
    assert_int_equal(CM_PWHASH_STRLEN, crypto_pwhash_STRBYTES);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_apikey_has_documented_shape_and_stored_hash),
        cmocka_unit_test(test_apikeys_are_distinct),
        cmocka_unit_test(test_base62_digits_are_roughly_uniform),
        cmocka_unit_test(test_apikey_verify_matches_only_its_hash),
        cmocka_unit_test(test_apikey_parse_rejects_near_misses),
        cmocka_unit_test(test_refresh_token_shape_family_and_expiry),
        cmocka_unit_test(test_token_verify_checks_hash_then_expiry),
        cmocka_unit_test(test_password_round_trip_with_argon2id),
        cmocka_unit_test(test_password_limits_and_unreadable_hashes),
        cmocka_unit_test(test_needs_rehash_when_parameters_change),
        cmocka_unit_test(test_dummy_verify_always_fails),
        cmocka_unit_test(test_default_parameters_meet_owasp_floor),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

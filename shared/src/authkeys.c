/*
 * authkeys.c: API keys, refresh and one-time tokens, password hashing.
 *
 * Random characters are drawn by rejection sampling so every base62 digit
 * is uniform: a byte >= 248 (= 4 * 62) is thrown away (3% of draws),
 * otherwise byte % 62 is the digit.
 */
#include <string.h>

#include <sodium.h>

#include "cinematch/common.h"
#include "cinematch/authkeys.h"

static const char cm_base62[] =
    "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

const cm_pwhash_params_t  cm_pwhash_default = {
    CM_PWHASH_OPSLIMIT, CM_PWHASH_MEMLIMIT
};


static int cm_is_base62(const char *s, size_t n);
static int cm_is_hex64(const char *s);
static const char *cm_token_prefix(cm_token_kind_t kind);


int
cm_auth_init(void)
{
    /* 0: initialised now, 1: already was; -1: no entropy source */
    return sodium_init() < 0 ? CM_ERR : CM_OK;
}


int
cm_random_base62(char *out, size_t n)
{
    uint8_t  buf[64];
    size_t   i = 0, j;

    if (cm_auth_init() != CM_OK) {
        return CM_ERR;
    }
    while (i < n) {
        randombytes_buf(buf, sizeof(buf));
        for (j = 0; j < sizeof(buf) && i < n; j++) {
            if (buf[j] < 248) {
                out[i++] = cm_base62[buf[j] % 62];
            }
        }
    }
    sodium_memzero(buf, sizeof(buf));
    return CM_OK;
}




int
cm_uuid_v4(char out[CM_UUID_LEN + 1])
{
    uint8_t  b[16];
    char     hex[33];

    if (cm_auth_init() != CM_OK) {
        return CM_ERR;
    }
    randombytes_buf(b, sizeof(b));
    b[6] = (uint8_t) ((b[6] & 0x0f) | 0x40);   /* version 4 */
    b[8] = (uint8_t) ((b[8] & 0x3f) | 0x80);   /* variant 10xx */
    sodium_bin2hex(hex, sizeof(hex), b, sizeof(b));
    memcpy(out, hex, 8);
    out[8] = '-';
    memcpy(out + 9, hex + 8, 4);
    out[13] = '-';
    memcpy(out + 14, hex + 12, 4);
    out[18] = '-';
    memcpy(out + 19, hex + 16, 4);
    out[23] = '-';
    memcpy(out + 24, hex + 20, 12);
    out[36] = '\0';
    return CM_OK;
}


static int
cm_is_base62(const char *s, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        char c = s[i];

        if (!((c >= '0' && c <= '9') || (c >= 'A' && c <= 'Z')
              || (c >= 'a' && c <= 'z')))
        {
            return 0;
        }
    }
    return 1;
}


static int
cm_is_hex64(const char *s)
{
    size_t i;

    for (i = 0; i < CM_SHA256_HEX_LEN; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f'))) {
            return 0;
        }
    }
    return s[CM_SHA256_HEX_LEN] == '\0';
}


int
cm_apikey_generate(cm_apikey_t *k)
{
    memset(k, 0, sizeof(*k));
    memcpy(k->key, "cm_", 3);
    if (cm_random_base62(k->key + 3, CM_TOKEN_RANDOM_CHARS) != CM_OK) {
        return CM_ERR;
    }
    k->key[CM_APIKEY_LEN] = '\0';
    memcpy(k->prefix, k->key + 3, CM_APIKEY_PREFIX_LEN);
    k->prefix[CM_APIKEY_PREFIX_LEN] = '\0';
    return cm_sha256_hex(k->key, CM_APIKEY_LEN, k->sha256) == CM_OK
           ? CM_OK : CM_ERR;
}


int
cm_apikey_parse(const char *key, size_t len,
    char prefix[CM_APIKEY_PREFIX_LEN + 1])
{
    if (key == NULL || len != CM_APIKEY_LEN || memcmp(key, "cm_", 3) != 0
        || !cm_is_base62(key + 3, CM_TOKEN_RANDOM_CHARS))
    {
        return CM_EINVAL;
    }
    if (prefix != NULL) {
        memcpy(prefix, key + 3, CM_APIKEY_PREFIX_LEN);
        prefix[CM_APIKEY_PREFIX_LEN] = '\0';
    }
    return CM_OK;
}


int
cm_apikey_verify(const char *key, size_t len, const char *stored_hex)
{
    char  hex[CM_SHA256_HEX_LEN + 1];
    int   rc;

    if (cm_apikey_parse(key, len, NULL) != CM_OK || stored_hex == NULL
        || strnlen(stored_hex, CM_SHA256_HEX_LEN + 1) != CM_SHA256_HEX_LEN
        || !cm_is_hex64(stored_hex))
    {
        return CM_EINVAL;
    }
    if (cm_sha256_hex(key, len, hex) != CM_OK) {
        return CM_ERR;
    }
    rc = sodium_memcmp(hex, stored_hex, CM_SHA256_HEX_LEN) == 0
         ? CM_OK : CM_AUTH_EMISMATCH;
    sodium_memzero(hex, sizeof(hex));
    return rc;
}


static const char *
cm_token_prefix(cm_token_kind_t kind)
{
    return kind == CM_TOKEN_REFRESH ? "cmr_" : "cmo_";
}


int
cm_token_generate(cm_token_t *t, cm_token_kind_t kind, int64_t now,
    int64_t ttl)
{
    if (ttl <= 0 || (kind != CM_TOKEN_REFRESH && kind != CM_TOKEN_ONETIME)) {
        return CM_EINVAL;
    }
    memset(t, 0, sizeof(*t));
    memcpy(t->token, cm_token_prefix(kind), 4);
    if (cm_random_base62(t->token + 4, CM_TOKEN_RANDOM_CHARS) != CM_OK
        || cm_uuid_v4(t->family) != CM_OK)
    {
        return CM_ERR;
    }
    t->token[CM_TOKEN_MAX_LEN] = '\0';
    if (cm_sha256_hex(t->token, CM_TOKEN_MAX_LEN, t->sha256) != CM_OK) {
        return CM_ERR;
    }
    t->expires_at = now + ttl;
    return CM_OK;
}


int
cm_token_parse(const char *token, size_t len, cm_token_kind_t kind)
{
    if (token == NULL || len != CM_TOKEN_MAX_LEN
        || (kind != CM_TOKEN_REFRESH && kind != CM_TOKEN_ONETIME)
        || memcmp(token, cm_token_prefix(kind), 4) != 0
        || !cm_is_base62(token + 4, CM_TOKEN_RANDOM_CHARS))
    {
        return CM_EINVAL;
    }
    return CM_OK;
}


int
cm_token_hash(const char *token, size_t len, cm_token_kind_t kind,
    char hex[CM_SHA256_HEX_LEN + 1])
{
    if (cm_token_parse(token, len, kind) != CM_OK) {
        return CM_EINVAL;
    }
    return cm_sha256_hex(token, len, hex) == CM_OK ? CM_OK : CM_ERR;
}


int
cm_token_verify(const char *token, size_t len, cm_token_kind_t kind,
    const char *stored_hex, int64_t expires_at, int64_t now)
{
    char  hex[CM_SHA256_HEX_LEN + 1];
    int   match;

    if (cm_token_hash(token, len, kind, hex) != CM_OK || stored_hex == NULL
        || strnlen(stored_hex, CM_SHA256_HEX_LEN + 1) != CM_SHA256_HEX_LEN
        || !cm_is_hex64(stored_hex))
    {
        return CM_EINVAL;
    }
    match = sodium_memcmp(hex, stored_hex, CM_SHA256_HEX_LEN) == 0;
    if (!match) {
        return CM_AUTH_EMISMATCH;
    }
    /* expiry is checked only after the match so a wrong token never
     * learns anything about a right one */
    return now < expires_at ? CM_OK : CM_AUTH_EEXPIRED;
}


int
cm_password_hash(char out[CM_PWHASH_STRLEN], const char *pw, size_t len,
    const cm_pwhash_params_t *params)
{
    if (params == NULL) {
        params = &cm_pwhash_default;
    }
    if (pw == NULL || len > CM_PASSWORD_MAX
        || params->opslimit < crypto_pwhash_OPSLIMIT_MIN
        || params->memlimit < crypto_pwhash_MEMLIMIT_MIN)
    {
        return CM_EINVAL;
    }
    if (cm_auth_init() != CM_OK) {
        return CM_ERR;
    }
    /* crypto_pwhash_str picks argon2id (ALG_DEFAULT since 1.0.15) and
     * writes $argon2id$v=19$m=...,t=...,p=1$salt$hash */
    if (crypto_pwhash_str_alg(out, pw, len, params->opslimit,
                              params->memlimit,
                              crypto_pwhash_ALG_ARGON2ID13) != 0)
    {
        return CM_ENOMEM;   /* the only failure: memlimit not available */
    }
    return CM_OK;
}


int
cm_password_verify(const char *stored, const char *pw, size_t len)
{
    char  buf[CM_PWHASH_STRLEN];
    size_t n;

    if (stored == NULL || pw == NULL || len > CM_PASSWORD_MAX) {
        return CM_EINVAL;
    }
    n = strnlen(stored, CM_PWHASH_STRLEN);
    if (n == CM_PWHASH_STRLEN
        || strncmp(stored, "$argon2id$", 10) != 0)
    {
        return CM_EINVAL;
    }
    /* libsodium reads a crypto_pwhash_STRBYTES array: give it one */
    memset(buf, 0, sizeof(buf));
    memcpy(buf, stored, n);
    if (cm_auth_init() != CM_OK) {
        return CM_ERR;
    }
    return crypto_pwhash_str_verify(buf, pw, len) == 0
           ? CM_OK : CM_AUTH_EMISMATCH;
}


int
cm_password_needs_rehash(const char *stored, const cm_pwhash_params_t *params)
{
    char  buf[CM_PWHASH_STRLEN];
    size_t n;
    int   rc;

    if (params == NULL) {
        params = &cm_pwhash_default;
    }
    if (stored == NULL) {
        return CM_EINVAL;
    }
    n = strnlen(stored, CM_PWHASH_STRLEN);
    if (n == CM_PWHASH_STRLEN) {
        return CM_EINVAL;
    }
    memset(buf, 0, sizeof(buf));
    memcpy(buf, stored, n);
    rc = crypto_pwhash_str_needs_rehash(buf, params->opslimit,
                                        params->memlimit);
    return rc < 0 ? CM_EINVAL : rc;
}


int
cm_password_verify_dummy(const char *pw, size_t len,
    const cm_pwhash_params_t *params)
{
    static const uint8_t  salt[crypto_pwhash_SALTBYTES] = { 0 };
    uint8_t               out[32];

    if (params == NULL) {
        params = &cm_pwhash_default;
    }
    if (pw != NULL && len <= CM_PASSWORD_MAX && cm_auth_init() == CM_OK) {
        /* the same derivation a verify runs; the result is thrown away */
        if (crypto_pwhash(out, sizeof(out), pw, len, salt,
                          params->opslimit, params->memlimit,
                          crypto_pwhash_ALG_ARGON2ID13) != 0)
        {
            /* out of memory: nothing to equalise against */
        }
        sodium_memzero(out, sizeof(out));
    }
    return CM_AUTH_EMISMATCH;
}


const char *
cm_auth_strerror(int code)
{
    switch (code) {
    case CM_AUTH_EMISMATCH:  return "credentials do not match";
    case CM_AUTH_EEXPIRED:   return "token expired";
    default:                 return cm_strerror(code);
    }
}

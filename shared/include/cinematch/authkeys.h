/*
 * cinematch/authkeys.h: the secrets users hold and the server stores only
 * as hashes: API keys, refresh tokens, one-time tokens (email
 * verification, password reset), and passwords (argon2id).
 *
 * Invariants:
 *   - every random secret comes from libsodium's randombytes and carries
 *     256 bits: 43 base62 characters (62^43 > 2^256);
 *   - what is stored is the lowercase hex SHA-256 of the whole token
 *     string (64 chars, the format the sql/ schema checks); a fast hash is
 *     right here because the input is 256 random bits, not a password;
 *   - comparisons of secrets or their hashes are constant time
 *     (sodium_memcmp);
 *   - passwords use crypto_pwhash_str (argon2id, salt and parameters inside
 *     the encoded string), so parameters can be raised later and old
 *     hashes upgraded at login (cm_password_needs_rehash).
 *
 * Token formats (the prefix tells a leaked string's kind at a glance and
 * lets secret scanners match it):
 *   API key        cm_<43 base62>       prefix = the 8 chars after "cm_"
 *   refresh token  cmr_<43 base62>
 *   one-time       cmo_<43 base62>      (email verification, reset)
 */
#ifndef CINEMATCH_AUTHKEYS_H
#define CINEMATCH_AUTHKEYS_H

#include <stddef.h>
#include <stdint.h>

#include "cinematch/digest.h"

#define CM_AUTH_EMISMATCH   -120   /* secret does not match the hash */
#define CM_AUTH_EEXPIRED    -121   /* one-time token past its expiry */

#define CM_TOKEN_RANDOM_CHARS  43          /* base62 chars of 256 bits */
#define CM_APIKEY_LEN          (3 + CM_TOKEN_RANDOM_CHARS)   /* "cm_" */
#define CM_APIKEY_PREFIX_LEN   8
#define CM_TOKEN_MAX_LEN       (4 + CM_TOKEN_RANDOM_CHARS)   /* "cmr_" */
#define CM_UUID_LEN            36

typedef struct {
    char  key[CM_APIKEY_LEN + 1];            /* shown to the user once */
    char  prefix[CM_APIKEY_PREFIX_LEN + 1];  /* api_keys.prefix */
    char  sha256[CM_SHA256_HEX_LEN + 1];     /* api_keys.key_sha256 */
} cm_apikey_t;

typedef enum {
    CM_TOKEN_REFRESH = 0,   /* "cmr_" */
    CM_TOKEN_ONETIME        /* "cmo_" */
} cm_token_kind_t;

typedef struct {
    char     token[CM_TOKEN_MAX_LEN + 1];      /* given to the client */
    char     sha256[CM_SHA256_HEX_LEN + 1];    /* stored */
    char     family[CM_UUID_LEN + 1];          /* refresh: new family id */
    int64_t  expires_at;                       /* unix seconds */
} cm_token_t;

/* argon2id cost; see docs/SECURITY.md for the choice and its timing */
typedef struct {
    unsigned long long  opslimit;   /* passes (t) */
    size_t              memlimit;   /* bytes (m) */
} cm_pwhash_params_t;

/* t=2, m=64 MiB, p=1: above OWASP's argon2id floor (m=19 MiB, t=2) and
 * equal to libsodium's INTERACTIVE level; tens of ms per hash here. */
#define CM_PWHASH_OPSLIMIT  2ULL
#define CM_PWHASH_MEMLIMIT  ((size_t) 64 * 1024 * 1024)
#define CM_PWHASH_STRLEN    128     /* crypto_pwhash_STRBYTES */
#define CM_PASSWORD_MAX     1024    /* bytes, checked before hashing */

extern const cm_pwhash_params_t  cm_pwhash_default;


/* libsodium init; idempotent and thread safe.  The others call it. */
int cm_auth_init(void);

/* Fill out with n random base62 characters (no NUL added). */
int cm_random_base62(char *out, size_t n);


/* A random RFC 4122 version 4 UUID, lowercase, NUL-terminated. */
int cm_uuid_v4(char out[CM_UUID_LEN + 1]);

/* API keys. */
int cm_apikey_generate(cm_apikey_t *k);
/* Syntax check: "cm_" + 43 base62; on success prefix (may be NULL) gets
 * the 8-char lookup prefix.  Returns CM_EINVAL for anything else. */
int cm_apikey_parse(const char *key, size_t len,
    char prefix[CM_APIKEY_PREFIX_LEN + 1]);
/* 0 when sha256(key) equals stored_hex (64 hex chars), else
 * CM_AUTH_EMISMATCH; CM_EINVAL for a malformed key or stored hash. */
int cm_apikey_verify(const char *key, size_t len, const char *stored_hex);

/* Refresh and one-time tokens. ttl in seconds from now. */
int cm_token_generate(cm_token_t *t, cm_token_kind_t kind, int64_t now,
    int64_t ttl);
int cm_token_parse(const char *token, size_t len, cm_token_kind_t kind);
/* Hash a presented token for the lookup (WHERE token_sha256 = $1); the
 * lookup by hash is the comparison, so no timing leaks the token. */
int cm_token_hash(const char *token, size_t len, cm_token_kind_t kind,
    char hex[CM_SHA256_HEX_LEN + 1]);
/* Check a presented token against a stored hash and expiry: 0,
 * CM_AUTH_EMISMATCH, CM_AUTH_EEXPIRED or CM_EINVAL. */
int cm_token_verify(const char *token, size_t len, cm_token_kind_t kind,
    const char *stored_hex, int64_t expires_at, int64_t now);

/* Passwords.  params NULL = cm_pwhash_default. */
int cm_password_hash(char out[CM_PWHASH_STRLEN], const char *pw, size_t len,
    const cm_pwhash_params_t *params);
/* 0 on match, CM_AUTH_EMISMATCH, CM_EINVAL (stored is not a hash we can
 * read: e.g. "!" for accounts without password login). */
int cm_password_verify(const char *stored, const char *pw, size_t len);
/* 1 when stored was made with other parameters, 0 when current, <0 bad. */
int cm_password_needs_rehash(const char *stored,
    const cm_pwhash_params_t *params);
/* Burn the same time as a verify against a real hash, for logins with an
 * unknown email, so response time does not reveal which emails exist.
 * Always returns CM_AUTH_EMISMATCH. */
int cm_password_verify_dummy(const char *pw, size_t len,
    const cm_pwhash_params_t *params);

const char *cm_auth_strerror(int code);

#endif /* CINEMATCH_AUTHKEYS_H */

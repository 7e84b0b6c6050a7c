/*
 * cinematch/validate.h: input rules for the auth endpoints (register,
 * login, keys) and the credential parser for request headers.
 *
 * Every validator takes bytes + length (NUL bytes inside are an error,
 * never a terminator) and, on failure, fills a cm_field_error_t whose
 * code is a stable snake_case word and whose message is a short human
 * sentence: the 422 body's `fields` object is {"<field>": "<message>"}
 * (or {"<field>": {"code", "message"}}, see docs/SECURITY.md).  Both
 * strings are static.
 *
 * Limits (bytes are octets of UTF-8, characters are code points):
 *   email         3..254 bytes, local part 1..64 bytes, one '@', dot-atom
 *                 local part (no quoted forms), domain of >= 2 labels of
 *                 1..63 bytes (letters, digits, '-', UTF-8 for IDN),
 *                 no spaces of any kind, no controls
 *   password      8..1024: at least 8 characters, at most 1024 bytes,
 *                 valid UTF-8, no NUL
 *   display_name  1..100 characters, valid UTF-8, no controls, no
 *                 bidirectional overrides, not only spaces
 *   scope names   recommend, chat, predict, models:read, models:write,
 *                 admin
 */
#ifndef CINEMATCH_VALIDATE_H
#define CINEMATCH_VALIDATE_H

#include <stddef.h>
#include <stdint.h>

#define CM_EMAIL_MAX          254
#define CM_EMAIL_LOCAL_MAX    64
#define CM_PASSWORD_MIN_CHARS 8
#define CM_PASSWORD_MAX_BYTES 1024
#define CM_DISPLAY_NAME_MAX   100
#define CM_KEY_NAME_MAX       100
#define CM_AUTH_HEADER_MAX    8192

typedef struct {
    const char  *code;      /* "too_long", "invalid_format", ... */
    const char  *message;   /* "must be at most 254 bytes" */
} cm_field_error_t;

/* scopes, a bit each */
#define CM_SCOPE_RECOMMEND     0x01u
#define CM_SCOPE_CHAT          0x02u
#define CM_SCOPE_PREDICT       0x04u
#define CM_SCOPE_MODELS_READ   0x08u
#define CM_SCOPE_MODELS_WRITE  0x10u
#define CM_SCOPE_ADMIN         0x20u
#define CM_SCOPE_ALL           0x3fu

/* 1 when s[0..len) is well-formed UTF-8 (no overlongs, no surrogates,
 * nothing above U+10FFFF); *chars (may be NULL) gets the code points. */
int cm_utf8_valid(const char *s, size_t len, size_t *chars);

int cm_validate_email(const char *s, size_t len, cm_field_error_t *e);
int cm_validate_password(const char *s, size_t len, cm_field_error_t *e);
int cm_validate_display_name(const char *s, size_t len, cm_field_error_t *e);
/* An API key's name: 0..100 characters, same character rules as a
 * display name (empty is allowed). */
int cm_validate_key_name(const char *s, size_t len, cm_field_error_t *e);

/* One scope name → its bit, 0 when unknown. */
uint32_t cm_scope_from_name(const char *s, size_t len);
/* Comma-free PostgreSQL text[] literal "{recommend,chat}" for a mask. */
int cm_scopes_to_pg_array(uint32_t mask, char *out, size_t outlen);
/* Parse "{a,b}" (what PostgreSQL returns for text[] in text format);
 * unknown names make it fail (CM_EINVAL). */
int cm_scopes_from_pg_array(const char *s, size_t len, uint32_t *mask);
/* Names from a JSON array (json_t *), validated: an array of at most 16
 * distinct known names.  `arr` is a const json_t *, typed void here so
 * this header does not pull in jansson. */
int cm_scopes_from_json(const void *arr, uint32_t *mask, cm_field_error_t *e);
/* Does a key with `granted` scopes allow `required`?  An empty grant
 * means every scope except admin (the key acts as its user). */
int cm_scope_allows(uint32_t granted, uint32_t required);


/* Credentials found in a request. */
typedef enum {
    CM_CRED_NONE = 0,   /* no Authorization, no X-API-Key */
    CM_CRED_JWT,        /* Authorization: Bearer <jwt> */
    CM_CRED_APIKEY      /* Authorization: Bearer cm_..., or X-API-Key */
} cm_cred_kind_t;

typedef struct {
    cm_cred_kind_t  kind;
    const char     *token;   /* points into the header value */
    size_t          len;
} cm_cred_t;

/*
 * Parse the Authorization and X-API-Key header values (either may be NULL
 * when the header is absent).  Returns 0 (cred->kind may be NONE) or
 * CM_EINVAL with e filled: "unsupported_scheme" (Basic, ...),
 * "malformed" (empty token, bad characters, not a JWT nor a key shape),
 * "too_long", "ambiguous" (both headers, or different credentials).
 */
int cm_auth_header_parse(const char *authz, size_t authz_len,
    const char *apikey, size_t apikey_len, cm_cred_t *cred,
    cm_field_error_t *e);

#endif /* CINEMATCH_VALIDATE_H */

/*
 * cinematch/jwt.h: HS256 access tokens (RFC 7519), signed and verified
 * with OpenSSL's HMAC directly.
 *
 * The unit owns the token format and nothing else: no I/O except loading
 * a secret file, no clock (the caller passes `now`), no global state.
 *
 * Invariants:
 *   - the algorithm is pinned: a header whose "alg" is anything but
 *     "HS256" (none, HS384, RS256, ...) is rejected before any key is used;
 *   - every token carries a "kid"; it selects one of at most two keys
 *     (current, which signs, and previous, accepted during rotation);
 *   - the signature is checked (constant time) before the payload is
 *     parsed, so unauthenticated bytes never reach the claim parser;
 *   - sizes are capped before decoding (CM_JWT_MAX_*), JSON duplicates are
 *     rejected, every claim has one type, and the claims land in a
 *     caller-provided struct of fixed-size strings.
 */
#ifndef CINEMATCH_JWT_H
#define CINEMATCH_JWT_H

#include <stddef.h>
#include <stdint.h>

#define CM_JWT_MAX_TOKEN     4096  /* whole compact token, bytes */
#define CM_JWT_MAX_HEADER    256   /* decoded JSON header, bytes */
#define CM_JWT_MAX_PAYLOAD   1024  /* decoded JSON payload, bytes */
#define CM_JWT_KEY_MIN       32    /* secret bytes */
#define CM_JWT_KEY_MAX       256
#define CM_JWT_KID_LEN       16    /* hex chars of sha256(secret) */
#define CM_JWT_STR_MAX       128   /* iss, aud, sub, jti, role: bytes + 1 */

/* Reasons a token is refused; all map to 401 unauthenticated. */
#define CM_JWT_EMALFORMED  -100  /* not three base64url parts, bad JSON */
#define CM_JWT_ETOOBIG     -101  /* token, header or payload over the cap */
#define CM_JWT_EALG        -102  /* alg is not HS256, or crit present */
#define CM_JWT_EKID        -103  /* kid missing or not one of our keys */
#define CM_JWT_ESIG        -104  /* signature does not match */
#define CM_JWT_EEXPIRED    -105  /* exp <= now - leeway */
#define CM_JWT_ENOTYET     -106  /* nbf or iat later than now + leeway */
#define CM_JWT_EISS        -107  /* iss is not ours */
#define CM_JWT_EAUD        -108  /* aud does not name us */
#define CM_JWT_ECLAIM      -109  /* claim missing, wrong type, too long */

typedef struct {
    char      kid[CM_JWT_KID_LEN + 1];
    size_t    len;
    uint8_t   secret[CM_JWT_KEY_MAX];
    /* base64url of the exact header cm_jwt_sign writes with this key: a
     * token whose first part is byte-for-byte this skips the header JSON
     * parse (the common case); anything else takes the full path */
    char      hdr_b64[96];
    size_t    hdr_b64_len;
} cm_jwt_key_t;

typedef struct {
    cm_jwt_key_t  keys[2];     /* [0] current: signs and verifies;
                                  [1] previous: verifies only */
    unsigned      nkeys;       /* 1 or 2 */
    char          iss[CM_JWT_STR_MAX];
    char          aud[CM_JWT_STR_MAX];
    int64_t       leeway;      /* seconds of clock skew tolerated */
} cm_jwt_keyring_t;

typedef struct {
    char      iss[CM_JWT_STR_MAX];
    char      aud[CM_JWT_STR_MAX];
    char      sub[CM_JWT_STR_MAX];   /* user id, decimal */
    char      jti[CM_JWT_STR_MAX];   /* unique id, denylist key on logout */
    char      role[CM_JWT_STR_MAX];  /* "user" | "admin" */
    char      sid[CM_JWT_STR_MAX];   /* optional: session = refresh-token
                                        family id, so logout can revoke
                                        the family from the access token */
    char      kid[CM_JWT_KID_LEN + 1];
    int64_t   iat;
    int64_t   nbf;                    /* 0 when absent */
    int64_t   exp;
} cm_jwt_claims_t;


/*
 * Make a key from raw secret bytes (>= CM_JWT_KEY_MIN); the kid is the
 * first 16 hex chars of sha256(secret), so two different secrets get two
 * kids without any configuration.
 */
int cm_jwt_key_init(cm_jwt_key_t *key, const void *secret, size_t len,
    char *err, size_t errlen);

/*
 * Load a key from a file holding the secret (trailing whitespace is
 * stripped).  Refuses a file that is not regular, is readable or writable
 * by others, or holds fewer than CM_JWT_KEY_MIN bytes.
 */
int cm_jwt_key_load_file(cm_jwt_key_t *key, const char *path, char *err,
    size_t errlen);

/*
 * Fill a keyring: current key, optional previous key (NULL), issuer,
 * audience and leeway.
 */
int cm_jwt_keyring_init(cm_jwt_keyring_t *ring, const cm_jwt_key_t *current,
    const cm_jwt_key_t *previous, const char *iss, const char *aud,
    int64_t leeway, char *err, size_t errlen);

/*
 * Sign claims with the current key.  iss and aud are taken from the
 * keyring (claims->iss/aud/kid are ignored).  Writes a NUL-terminated
 * token into out; *outn (if not NULL) gets its length.
 */
int cm_jwt_sign(const cm_jwt_keyring_t *ring, const cm_jwt_claims_t *claims,
    char *out, size_t outlen, size_t *outn);

/*
 * Verify a compact token of len bytes (need not be NUL-terminated) at
 * unix time `now`.  Returns 0 and fills *claims, or a CM_JWT_E* code
 * (claims then holds nothing useful).
 */
int cm_jwt_verify(const cm_jwt_keyring_t *ring, const char *token,
    size_t len, int64_t now, cm_jwt_claims_t *claims);

const char *cm_jwt_strerror(int code);

#endif /* CINEMATCH_JWT_H */

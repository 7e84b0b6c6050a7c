/*
 * jwt.c: HS256 compact JWS sign/verify for access tokens.
 *
 * Verification order, cheapest and least trusting first:
 *   1. total length cap, exactly two dots, per-part length caps (computed
 *      from the encoded length, before decoding anything);
 *   2. strict base64url (no padding, canonical trailing bits) of the header;
 *   3. header JSON: object, alg == "HS256", no "crit", kid names a key;
 *   4. HMAC-SHA256 over "header.payload", compared with CRYPTO_memcmp;
 *   5. only now the payload is decoded and its claims type-checked.
 * jansson parses with JSON_REJECT_DUPLICATES so {"sub":"1","sub":"2"}
 * cannot mean different things to different readers.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/sha.h>
#include <sodium.h>

#include "cinematch/common.h"
#include "cinematch/jwt.h"

#define CM_JWT_SIG_LEN    32
#define CM_JWT_SIG_B64    43   /* base64url of 32 bytes, no padding */
#define CM_JWT_MAX_AUD    8    /* entries in an "aud" array */
#define CM_JWT_HEADER_FMT "{\"alg\":\"HS256\",\"typ\":\"JWT\",\"kid\":\"%s\"}"

/* Decoded length of n base64url chars without padding; n % 4 == 1 is
 * impossible and is caught by the decoder. */
#define CM_B64_DECODED_MAX(n)  (((n) / 4) * 3 + 2)


static int cm_b64url_decode(uint8_t *out, size_t outmax, const char *in,
    size_t inlen, size_t *outlen);
static size_t cm_b64url_encode(char *out, size_t outmax, const uint8_t *in,
    size_t inlen);
static int cm_jwt_hmac(const cm_jwt_key_t *key, const char *data, size_t len,
    uint8_t mac[CM_JWT_SIG_LEN]);
static int cm_jwt_get_str(json_t *obj, const char *name, char *dst,
    size_t dstlen, int required);
static int cm_jwt_get_int(json_t *obj, const char *name, int64_t *dst,
    int required);
static int cm_jwt_check_header(const cm_jwt_keyring_t *ring, const char *p,
    size_t len, const cm_jwt_key_t **key, char *kid);
static int cm_jwt_check_payload(const cm_jwt_keyring_t *ring, const char *p,
    size_t len, int64_t now, cm_jwt_claims_t *c);


static int
cm_b64url_decode(uint8_t *out, size_t outmax, const char *in, size_t inlen,
    size_t *outlen)
{
    /* libsodium's decoder is strict: only the URL-safe alphabet, no
     * padding in this variant, and non-zero leftover bits are an error,
     * so every byte string has exactly one accepted encoding. */
    if (inlen == 0) {
        return CM_EINVAL;
    }
    if (sodium_base642bin(out, outmax, in, inlen, NULL, outlen, NULL,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING) != 0)
    {
        return CM_EINVAL;
    }
    return CM_OK;
}


static size_t
cm_b64url_encode(char *out, size_t outmax, const uint8_t *in, size_t inlen)
{
    size_t need = sodium_base64_ENCODED_LEN(inlen,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);

    if (need > outmax) {
        return 0;
    }
    sodium_bin2base64(out, outmax, in, inlen,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    return need - 1;
}


static int
cm_jwt_hmac(const cm_jwt_key_t *key, const char *data, size_t len,
    uint8_t mac[CM_JWT_SIG_LEN])
{
    unsigned int  maclen = 0;

    if (HMAC(EVP_sha256(), key->secret, (int) key->len,
             (const unsigned char *) data, len, mac, &maclen) == NULL
        || maclen != CM_JWT_SIG_LEN)
    {
        return CM_ERR;
    }
    return CM_OK;
}


int
cm_jwt_key_init(cm_jwt_key_t *key, const void *secret, size_t len,
    char *err, size_t errlen)
{
    static const char  hex[] = "0123456789abcdef";
    uint8_t            h[SHA256_DIGEST_LENGTH];
    char               hdr[80];
    size_t             i, n;

    if (len < CM_JWT_KEY_MIN) {
        return cm_seterr(err, errlen, CM_EINVAL,
                         "jwt secret is %zu bytes, at least %d required",
                         len, CM_JWT_KEY_MIN);
    }
    if (len > CM_JWT_KEY_MAX) {
        return cm_seterr(err, errlen, CM_EINVAL,
                         "jwt secret is %zu bytes, at most %d allowed",
                         len, CM_JWT_KEY_MAX);
    }
    memset(key, 0, sizeof(*key));
    memcpy(key->secret, secret, len);
    key->len = len;

    SHA256(secret, len, h);
    for (i = 0; i < CM_JWT_KID_LEN / 2; i++) {
        key->kid[2 * i] = hex[h[i] >> 4];
        key->kid[2 * i + 1] = hex[h[i] & 0xf];
    }
    key->kid[CM_JWT_KID_LEN] = '\0';

    n = (size_t) snprintf(hdr, sizeof(hdr), CM_JWT_HEADER_FMT, key->kid);
    key->hdr_b64_len = cm_b64url_encode(key->hdr_b64, sizeof(key->hdr_b64),
                                        (uint8_t *) hdr, n);
    return key->hdr_b64_len == 0 ? CM_ERR : CM_OK;
}


int
cm_jwt_key_load_file(cm_jwt_key_t *key, const char *path, char *err,
    size_t errlen)
{
    int          fd, rc;
    struct stat  st;
    uint8_t      buf[CM_JWT_KEY_MAX + 64];
    ssize_t      n;
    size_t       len = 0;

    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd == -1) {
        return cm_seterr(err, errlen, CM_EIO, "jwt secret file \"%s\": %s",
                         path, strerror(errno));
    }
    if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
        close(fd);
        return cm_seterr(err, errlen, CM_EINVAL,
                         "jwt secret file \"%s\" is not a regular file", path);
    }
    /* A secret others can read is a secret everybody on the box has; a
     * file others (or the group) can write lets them mint admin tokens. */
    if (st.st_mode & (S_IROTH | S_IWOTH | S_IWGRP)) {
        close(fd);
        return cm_seterr(err, errlen, CM_EINVAL,
                         "jwt secret file \"%s\" has mode %04o: it must not"
                         " be readable by others nor writable by anyone but"
                         " its owner (chmod 0600 or 0640)", path,
                         (unsigned) (st.st_mode & 07777));
    }

    for ( ;; ) {
        n = read(fd, buf + len, sizeof(buf) - len);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            rc = cm_seterr(err, errlen, CM_EIO, "jwt secret file \"%s\": %s",
                           path, strerror(errno));
            goto done;
        }
        if (n == 0) {
            break;
        }
        len += (size_t) n;
        if (len == sizeof(buf)) {
            rc = cm_seterr(err, errlen, CM_EINVAL,
                           "jwt secret file \"%s\" is larger than %d bytes",
                           path, CM_JWT_KEY_MAX);
            goto done;
        }
    }
    while (len > 0 && (buf[len - 1] == '\n' || buf[len - 1] == '\r'
                       || buf[len - 1] == ' ' || buf[len - 1] == '\t'))
    {
        len--;
    }
    rc = cm_jwt_key_init(key, buf, len, err, errlen);
    if (rc != CM_OK && err != NULL && errlen > 0) {
        char tmp[256];

        snprintf(tmp, sizeof(tmp), "%s", err);
        cm_seterr(err, errlen, rc, "jwt secret file \"%s\": %s", path, tmp);
    }

done:
    OPENSSL_cleanse(buf, sizeof(buf));
    close(fd);
    return rc;
}


int
cm_jwt_keyring_init(cm_jwt_keyring_t *ring, const cm_jwt_key_t *current,
    const cm_jwt_key_t *previous, const char *iss, const char *aud,
    int64_t leeway, char *err, size_t errlen)
{
    memset(ring, 0, sizeof(*ring));
    if (current == NULL || current->len < CM_JWT_KEY_MIN) {
        return cm_seterr(err, errlen, CM_EINVAL, "no current jwt key");
    }
    if (iss == NULL || aud == NULL || iss[0] == '\0' || aud[0] == '\0'
        || strlen(iss) >= CM_JWT_STR_MAX || strlen(aud) >= CM_JWT_STR_MAX)
    {
        return cm_seterr(err, errlen, CM_EINVAL,
                         "jwt issuer and audience must be 1..%d bytes",
                         CM_JWT_STR_MAX - 1);
    }
    if (leeway < 0 || leeway > 300) {
        return cm_seterr(err, errlen, CM_EINVAL,
                         "jwt leeway must be 0..300 seconds");
    }
    ring->keys[0] = *current;
    ring->nkeys = 1;
    if (previous != NULL) {
        if (strcmp(previous->kid, current->kid) == 0) {
            return cm_seterr(err, errlen, CM_EINVAL,
                             "previous jwt key is the current key");
        }
        ring->keys[1] = *previous;
        ring->nkeys = 2;
    }
    memcpy(ring->iss, iss, strlen(iss) + 1);
    memcpy(ring->aud, aud, strlen(aud) + 1);
    ring->leeway = leeway;
    return CM_OK;
}


int
cm_jwt_sign(const cm_jwt_keyring_t *ring, const cm_jwt_claims_t *claims,
    char *out, size_t outlen, size_t *outn)
{
    const cm_jwt_key_t  *key = &ring->keys[0];
    char                 payload[CM_JWT_MAX_PAYLOAD];
    uint8_t              mac[CM_JWT_SIG_LEN];
    json_t              *o;
    size_t               plen, n, m;
    int                  rc;

    if (ring->nkeys == 0) {
        return CM_EINVAL;
    }
    o = json_pack("{s:s, s:s, s:s, s:s, s:s, s:I, s:I}",
                  "iss", ring->iss, "aud", ring->aud, "sub", claims->sub,
                  "jti", claims->jti, "role", claims->role,
                  "iat", (json_int_t) claims->iat,
                  "exp", (json_int_t) claims->exp);
    if (o == NULL) {
        return CM_JWT_ECLAIM;   /* NULL or invalid UTF-8 in a claim */
    }
    if (claims->nbf != 0
        && json_object_set_new(o, "nbf", json_integer(claims->nbf)) != 0)
    {
        json_decref(o);
        return CM_ENOMEM;
    }
    if (claims->sid[0] != '\0') {
        json_t *sid = json_string(claims->sid);

        if (sid == NULL || json_object_set_new(o, "sid", sid) != 0) {
            json_decref(o);
            return CM_JWT_ECLAIM;
        }
    }
    plen = json_dumpb(o, payload, sizeof(payload), JSON_COMPACT);
    json_decref(o);
    if (plen == 0 || plen > sizeof(payload)) {
        return CM_JWT_ETOOBIG;
    }

    /* header.payload.signature, each part base64url */
    n = key->hdr_b64_len;
    if (n + 1 >= outlen) {
        return CM_JWT_ETOOBIG;
    }
    memcpy(out, key->hdr_b64, n);
    out[n++] = '.';
    m = cm_b64url_encode(out + n, outlen - n, (uint8_t *) payload, plen);
    if (m == 0 || n + m + 1 >= outlen) {
        return CM_JWT_ETOOBIG;
    }
    n += m;
    rc = cm_jwt_hmac(key, out, n, mac);
    if (rc != CM_OK) {
        return rc;
    }
    out[n++] = '.';
    m = cm_b64url_encode(out + n, outlen - n, mac, sizeof(mac));
    if (m == 0) {
        return CM_JWT_ETOOBIG;
    }
    n += m;
    if (n > CM_JWT_MAX_TOKEN) {
        return CM_JWT_ETOOBIG;
    }
    if (outn != NULL) {
        *outn = n;
    }
    return CM_OK;
}


/* A string claim: absent is ok unless required; any other type, an empty
 * string, or one that does not fit is ECLAIM. */
static int
cm_jwt_get_str(json_t *obj, const char *name, char *dst, size_t dstlen,
    int required)
{
    json_t  *v = json_object_get(obj, name);
    size_t   len;

    dst[0] = '\0';
    if (v == NULL) {
        return required ? CM_JWT_ECLAIM : CM_OK;
    }
    if (!json_is_string(v)) {
        return CM_JWT_ECLAIM;
    }
    len = json_string_length(v);
    if (len == 0 || len >= dstlen) {
        return CM_JWT_ECLAIM;
    }
    /* JSON "\u0000" is refused by jansson's loader already; keep the
     * check so a copied claim is always a C string of the stated length */
    if (memchr(json_string_value(v), '\0', len) != NULL) {
        return CM_JWT_ECLAIM;
    }
    memcpy(dst, json_string_value(v), len + 1);
    return CM_OK;
}


/* A NumericDate: a JSON integer >= 0 (1.5e9 and "1500000000" are not). */
static int
cm_jwt_get_int(json_t *obj, const char *name, int64_t *dst, int required)
{
    json_t  *v = json_object_get(obj, name);

    *dst = 0;
    if (v == NULL) {
        return required ? CM_JWT_ECLAIM : CM_OK;
    }
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        return CM_JWT_ECLAIM;
    }
    *dst = (int64_t) json_integer_value(v);
    return CM_OK;
}


static int
cm_jwt_check_header(const cm_jwt_keyring_t *ring, const char *p, size_t len,
    const cm_jwt_key_t **key, char *kid)
{
    uint8_t        buf[CM_JWT_MAX_HEADER + 2];
    size_t         n, i;
    json_t        *h, *v;
    json_error_t   jerr;
    int            rc;

    if (cm_b64url_decode(buf, sizeof(buf), p, len, &n) != CM_OK) {
        return CM_JWT_EMALFORMED;
    }
    if (n > CM_JWT_MAX_HEADER) {
        return CM_JWT_ETOOBIG;
    }
    h = json_loadb((char *) buf, n, JSON_REJECT_DUPLICATES, &jerr);
    if (h == NULL) {
        return CM_JWT_EMALFORMED;
    }
    rc = CM_JWT_EMALFORMED;
    if (!json_is_object(h)) {
        goto done;
    }

    /* The pin: exactly "HS256".  "none", "hs256", "HS512", "RS256" (the
     * HS/RS confusion attack: an RSA public key used as an HMAC secret)
     * all end here, before any key is touched. */
    v = json_object_get(h, "alg");
    if (!json_is_string(v) || strcmp(json_string_value(v), "HS256") != 0
        || json_string_length(v) != 5)
    {
        rc = CM_JWT_EALG;
        goto done;
    }
    /* RFC 7515 4.1.11: extensions we do not understand must be refused */
    if (json_object_get(h, "crit") != NULL) {
        rc = CM_JWT_EALG;
        goto done;
    }
    v = json_object_get(h, "typ");
    if (v != NULL
        && (!json_is_string(v) || strcasecmp(json_string_value(v), "JWT") != 0))
    {
        goto done;
    }
    v = json_object_get(h, "kid");
    if (!json_is_string(v) || json_string_length(v) != CM_JWT_KID_LEN) {
        rc = CM_JWT_EKID;
        goto done;
    }
    rc = CM_JWT_EKID;
    for (i = 0; i < ring->nkeys; i++) {
        if (memcmp(ring->keys[i].kid, json_string_value(v),
                   CM_JWT_KID_LEN) == 0)
        {
            *key = &ring->keys[i];
            memcpy(kid, ring->keys[i].kid, CM_JWT_KID_LEN + 1);
            rc = CM_OK;
            break;
        }
    }

done:
    json_decref(h);
    return rc;
}


static int
cm_jwt_check_payload(const cm_jwt_keyring_t *ring, const char *p, size_t len,
    int64_t now, cm_jwt_claims_t *c)
{
    uint8_t        buf[CM_JWT_MAX_PAYLOAD + 2];
    size_t         n, i;
    json_t        *o, *aud, *v;
    json_error_t   jerr;
    int            rc, found;

    if (cm_b64url_decode(buf, sizeof(buf), p, len, &n) != CM_OK) {
        return CM_JWT_EMALFORMED;
    }
    if (n > CM_JWT_MAX_PAYLOAD) {
        return CM_JWT_ETOOBIG;
    }
    o = json_loadb((char *) buf, n, JSON_REJECT_DUPLICATES, &jerr);
    if (o == NULL) {
        return CM_JWT_EMALFORMED;
    }
    if (!json_is_object(o)) {
        rc = CM_JWT_EMALFORMED;
        goto done;
    }

    /* types and presence first: a token of the wrong shape is ECLAIM
     * whatever its times say */
    if ((rc = cm_jwt_get_str(o, "iss", c->iss, sizeof(c->iss), 1)) != CM_OK
        || (rc = cm_jwt_get_str(o, "sub", c->sub, sizeof(c->sub), 1)) != CM_OK
        || (rc = cm_jwt_get_str(o, "jti", c->jti, sizeof(c->jti), 1)) != CM_OK
        || (rc = cm_jwt_get_str(o, "role", c->role, sizeof(c->role), 1))
           != CM_OK
        || (rc = cm_jwt_get_int(o, "exp", &c->exp, 1)) != CM_OK
        || (rc = cm_jwt_get_int(o, "iat", &c->iat, 1)) != CM_OK
        || (rc = cm_jwt_get_int(o, "nbf", &c->nbf, 0)) != CM_OK
        || (rc = cm_jwt_get_str(o, "sid", c->sid, sizeof(c->sid), 0))
           != CM_OK)
    {
        goto done;
    }
    rc = CM_JWT_ECLAIM;
    if (strcmp(c->role, "user") != 0 && strcmp(c->role, "admin") != 0) {
        goto done;
    }
    if (c->exp <= c->iat) {
        goto done;
    }

    /* aud: one string, or an array of strings that names us */
    aud = json_object_get(o, "aud");
    found = 0;
    if (json_is_string(aud)) {
        found = strcmp(json_string_value(aud), ring->aud) == 0
                && json_string_length(aud) == strlen(ring->aud);
    } else if (json_is_array(aud) && json_array_size(aud) > 0
               && json_array_size(aud) <= CM_JWT_MAX_AUD)
    {
        json_array_foreach(aud, i, v) {
            if (!json_is_string(v)) {
                goto done;
            }
            if (json_string_length(v) == strlen(ring->aud)
                && strcmp(json_string_value(v), ring->aud) == 0)
            {
                found = 1;
            }
        }
    } else {
        goto done;
    }
    snprintf(c->aud, sizeof(c->aud), "%s", ring->aud);

    if (strcmp(c->iss, ring->iss) != 0) {
        rc = CM_JWT_EISS;
        goto done;
    }
    if (!found) {
        rc = CM_JWT_EAUD;
        goto done;
    }
    if (c->exp <= now - ring->leeway) {
        rc = CM_JWT_EEXPIRED;
        goto done;
    }
    if (c->nbf > now + ring->leeway || c->iat > now + ring->leeway) {
        rc = CM_JWT_ENOTYET;
        goto done;
    }
    rc = CM_OK;

done:
    json_decref(o);
    return rc;
}


int
cm_jwt_verify(const cm_jwt_keyring_t *ring, const char *token, size_t len,
    int64_t now, cm_jwt_claims_t *claims)
{
    const char          *d1, *d2, *end;
    const cm_jwt_key_t  *key = NULL;
    uint8_t              mac[CM_JWT_SIG_LEN], sig[CM_JWT_SIG_LEN + 3];
    size_t               hlen, plen, slen, n, i;
    int                  rc;

    memset(claims, 0, sizeof(*claims));
    if (token == NULL || len == 0) {
        return CM_JWT_EMALFORMED;
    }
    if (len > CM_JWT_MAX_TOKEN) {
        return CM_JWT_ETOOBIG;
    }
    end = token + len;
    d1 = memchr(token, '.', len);
    if (d1 == NULL) {
        return CM_JWT_EMALFORMED;
    }
    d2 = memchr(d1 + 1, '.', (size_t) (end - d1 - 1));
    if (d2 == NULL || memchr(d2 + 1, '.', (size_t) (end - d2 - 1)) != NULL) {
        return CM_JWT_EMALFORMED;   /* two dots exactly: no JWE, no junk */
    }
    hlen = (size_t) (d1 - token);
    plen = (size_t) (d2 - d1 - 1);
    slen = (size_t) (end - d2 - 1);

    /* caps on the encoded sizes, so nothing large is ever decoded */
    if (CM_B64_DECODED_MAX(hlen) > CM_JWT_MAX_HEADER + 2
        || CM_B64_DECODED_MAX(plen) > CM_JWT_MAX_PAYLOAD + 2)
    {
        return CM_JWT_ETOOBIG;
    }
    if (hlen == 0 || plen == 0 || slen == 0) {
        return CM_JWT_EMALFORMED;    /* an empty signature is "alg none" */
    }

    /* fast path: our own header, byte for byte (it says HS256 and names
     * this key, so the full check would accept it too) */
    for (i = 0; i < ring->nkeys; i++) {
        if (hlen == ring->keys[i].hdr_b64_len
            && memcmp(token, ring->keys[i].hdr_b64, hlen) == 0)
        {
            key = &ring->keys[i];
            memcpy(claims->kid, key->kid, sizeof(claims->kid));
            break;
        }
    }
    if (key == NULL) {
        rc = cm_jwt_check_header(ring, token, hlen, &key, claims->kid);
        if (rc != CM_OK) {
            return rc;
        }
    }

    if (slen != CM_JWT_SIG_B64
        || cm_b64url_decode(sig, sizeof(sig), d2 + 1, slen, &n) != CM_OK
        || n != CM_JWT_SIG_LEN)
    {
        return CM_JWT_ESIG;
    }
    if (cm_jwt_hmac(key, token, (size_t) (d2 - token), mac) != CM_OK) {
        return CM_ERR;
    }
    if (CRYPTO_memcmp(mac, sig, CM_JWT_SIG_LEN) != 0) {
        return CM_JWT_ESIG;
    }

    rc = cm_jwt_check_payload(ring, d1 + 1, plen, now, claims);
    if (rc != CM_OK) {
        char kid[CM_JWT_KID_LEN + 1];

        memcpy(kid, claims->kid, sizeof(kid));
        memset(claims, 0, sizeof(*claims));
        memcpy(claims->kid, kid, sizeof(kid));
    }
    return rc;
}


const char *
cm_jwt_strerror(int code)
{
    switch (code) {
    case CM_OK:             return "ok";
    case CM_JWT_EMALFORMED: return "malformed token";
    case CM_JWT_ETOOBIG:    return "token too large";
    case CM_JWT_EALG:       return "unsupported token algorithm";
    case CM_JWT_EKID:       return "unknown token key";
    case CM_JWT_ESIG:       return "bad token signature";
    case CM_JWT_EEXPIRED:   return "token expired";
    case CM_JWT_ENOTYET:    return "token not yet valid";
    case CM_JWT_EISS:       return "wrong token issuer";
    case CM_JWT_EAUD:       return "wrong token audience";
    case CM_JWT_ECLAIM:     return "bad token claims";
    default:                return cm_strerror(code);
    }
}

/*
 * test_jwt.c: HS256 access tokens: the round trip, key rotation, the
 * secret file rules, and every hostile token of issue 4 (alg none, HS/RS
 * confusion, wrong signature, expired, not yet valid, wrong iss/aud,
 * truncated, oversized, garbage base64, duplicate and ill-typed claims).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sodium.h>

#include "cinematch/common.h"
#include "cinematch/jwt.h"

#define NOW    1767225600          /* 2026-01-01T00:00:00Z */
#define ISS    "cinematch"
#define AUD    "cinematch-api"

static const char secret_a[] = "0123456789abcdef0123456789abcdef-current";
static const char secret_b[] = "fedcba9876543210fedcba9876543210-previous";

typedef struct {
    cm_jwt_key_t      a, b;
    cm_jwt_keyring_t  ring;        /* a current, b previous */
} fx_t;


static int
setup(void **state)
{
    fx_t *fx = calloc(1, sizeof(*fx));

    assert_non_null(fx);
    assert_int_equal(cm_jwt_key_init(&fx->a, secret_a, strlen(secret_a),
                                     NULL, 0), 0);
    assert_int_equal(cm_jwt_key_init(&fx->b, secret_b, strlen(secret_b),
                                     NULL, 0), 0);
    assert_int_equal(cm_jwt_keyring_init(&fx->ring, &fx->a, &fx->b, ISS, AUD,
                                         0, NULL, 0), 0);
    *state = fx;
    return 0;
}


static int
teardown(void **state)
{
    free(*state);
    return 0;
}


static size_t
b64(char *out, size_t outmax, const void *in, size_t len)
{
    sodium_bin2base64(out, outmax, in, len,
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    return strlen(out);
}


/* Build header.payload.sig from raw JSON texts, signed with key (or with
 * no signature part content when key is NULL). */
static size_t
forge(char *out, size_t outmax, const char *hdr, const char *payload,
    const cm_jwt_key_t *key)
{
    size_t        n;
    unsigned int  maclen;
    uint8_t       mac[32];

    n = b64(out, outmax, hdr, strlen(hdr));
    out[n++] = '.';
    n += b64(out + n, outmax - n, payload, strlen(payload));
    if (key != NULL) {
        HMAC(EVP_sha256(), key->secret, (int) key->len, (uint8_t *) out, n,
             mac, &maclen);
        out[n++] = '.';
        n += b64(out + n, outmax - n, mac, sizeof(mac));
    } else {
        out[n++] = '.';
        out[n] = '\0';
    }
    return n;
}


static void
hdr_for(char *buf, size_t len, const char *alg, const cm_jwt_key_t *k)
{
    snprintf(buf, len, "{\"alg\":\"%s\",\"typ\":\"JWT\",\"kid\":\"%s\"}",
             alg, k->kid);
}


static const char *
good_payload(void)
{
    return "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"sub\":\"42\","
           "\"jti\":\"j-1\",\"role\":\"user\",\"iat\":1767225600,"
           "\"exp\":1767226500}";
}


static int
verify(fx_t *fx, const char *tok, int64_t now)
{
    cm_jwt_claims_t c;

    return cm_jwt_verify(&fx->ring, tok, strlen(tok), now, &c);
}


static void
test_sign_then_verify_round_trips_every_claim(void **state)
{
    fx_t             *fx = *state;
    cm_jwt_claims_t   in, out;
    char              tok[CM_JWT_MAX_TOKEN + 1];
    size_t            n;

    memset(&in, 0, sizeof(in));
    strcpy(in.sub, "10000042");
    strcpy(in.jti, "6f1c2a");
    strcpy(in.role, "admin");
    strcpy(in.sid, "0b6c9d0e-6a4f-4b7e-9d55-2c1f3f3f0a11");
    in.iat = NOW;
    in.nbf = NOW;
    in.exp = NOW + 900;
    assert_int_equal(cm_jwt_sign(&fx->ring, &in, tok, sizeof(tok), &n), 0);
    assert_int_equal(strlen(tok), n);
    assert_int_equal(cm_jwt_verify(&fx->ring, tok, n, NOW + 10, &out), 0);
    assert_string_equal(out.iss, ISS);
    assert_string_equal(out.aud, AUD);
    assert_string_equal(out.sub, "10000042");
    assert_string_equal(out.jti, "6f1c2a");
    assert_string_equal(out.role, "admin");
    assert_string_equal(out.sid, "0b6c9d0e-6a4f-4b7e-9d55-2c1f3f3f0a11");
    assert_string_equal(out.kid, fx->a.kid);
    assert_int_equal(out.iat, NOW);
    assert_int_equal(out.nbf, NOW);
    assert_int_equal(out.exp, NOW + 900);
}


static void
test_sign_refuses_small_buffer_and_bad_utf8(void **state)
{
    fx_t             *fx = *state;
    cm_jwt_claims_t   in;
    char              tok[64];

    memset(&in, 0, sizeof(in));
    strcpy(in.sub, "1");
    strcpy(in.jti, "j");
    strcpy(in.role, "user");
    in.iat = NOW;
    in.exp = NOW + 1;
    assert_int_equal(cm_jwt_sign(&fx->ring, &in, tok, sizeof(tok), NULL),
                     CM_JWT_ETOOBIG);
    strcpy(in.sub, "\xff\xfe");
    assert_int_equal(cm_jwt_sign(&fx->ring, &in, tok, sizeof(tok), NULL),
                     CM_JWT_ECLAIM);
}


static void
test_forged_good_token_verifies(void **state)
{
    fx_t  *fx = *state;
    char   hdr[128], tok[2048];

    /* the forge helper itself is right: a well-formed token passes */
    hdr_for(hdr, sizeof(hdr), "HS256", &fx->a);
    forge(tok, sizeof(tok), hdr, good_payload(), &fx->a);
    assert_int_equal(verify(fx, tok, NOW), 0);
}


static void
test_verify_rejects_alg_none_with_or_without_signature(void **state)
{
    fx_t  *fx = *state;
    char   hdr[128], tok[2048];

    hdr_for(hdr, sizeof(hdr), "none", &fx->a);
    forge(tok, sizeof(tok), hdr, good_payload(), NULL);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_EMALFORMED);
    forge(tok, sizeof(tok), hdr, good_payload(), &fx->a);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_EALG);
    /* no signature part at all */
    tok[strrchr(tok, '.') - tok] = '\0';
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_EMALFORMED);
}


static void
test_verify_rejects_every_alg_but_hs256(void **state)
{
    fx_t        *fx = *state;
    char         hdr[160], tok[2048];
    size_t       i;
    const char  *algs[] = { "None", "NONE", "HS384", "HS512", "hs256",
                            "HS256 ", "RS256", "RS512", "ES256", "PS256",
                            "EdDSA", "" };

    for (i = 0; i < CM_ARRAY_SIZE(algs); i++) {
        hdr_for(hdr, sizeof(hdr), algs[i], &fx->a);
        forge(tok, sizeof(tok), hdr, good_payload(), &fx->a);
        assert_int_equal(verify(fx, tok, NOW), CM_JWT_EALG);
    }
    snprintf(hdr, sizeof(hdr), "{\"typ\":\"JWT\",\"kid\":\"%s\"}", fx->a.kid);
    forge(tok, sizeof(tok), hdr, good_payload(), &fx->a);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_EALG);
    snprintf(hdr, sizeof(hdr), "{\"alg\":[\"HS256\"],\"kid\":\"%s\"}",
             fx->a.kid);
    forge(tok, sizeof(tok), hdr, good_payload(), &fx->a);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_EALG);
    snprintf(hdr, sizeof(hdr), "{\"alg\":\"HS\\u0000256\",\"kid\":\"%s\"}",
             fx->a.kid);
    forge(tok, sizeof(tok), hdr, good_payload(), &fx->a);
    assert_true(verify(fx, tok, NOW) < 0);
}


static void
test_verify_rejects_hs_rs_confusion(void **state)
{
    fx_t          *fx = *state;
    char           hdr[160], tok[4096];
    cm_jwt_key_t   pub;
    const char    *pem = "-----BEGIN PUBLIC KEY-----\n"
                         "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAu1SU1L"
                         "\n-----END PUBLIC KEY-----\n";

    /* the classic attack signs RS256-labelled tokens with the public key
     * as an HMAC secret; even if that "secret" were our key, alg fails */
    assert_int_equal(cm_jwt_key_init(&pub, pem, strlen(pem), NULL, 0), 0);
    hdr_for(hdr, sizeof(hdr), "RS256", &fx->a);
    forge(tok, sizeof(tok), hdr, good_payload(), &pub);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_EALG);
    forge(tok, sizeof(tok), hdr, good_payload(), &fx->a);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_EALG);
}


static void
test_verify_rejects_crit_and_bad_typ(void **state)
{
    fx_t  *fx = *state;
    char   hdr[200], tok[2048];

    snprintf(hdr, sizeof(hdr), "{\"alg\":\"HS256\",\"crit\":[\"exp\"],"
             "\"kid\":\"%s\"}", fx->a.kid);
    forge(tok, sizeof(tok), hdr, good_payload(), &fx->a);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_EALG);
    snprintf(hdr, sizeof(hdr), "{\"alg\":\"HS256\",\"typ\":\"JWE\","
             "\"kid\":\"%s\"}", fx->a.kid);
    forge(tok, sizeof(tok), hdr, good_payload(), &fx->a);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_EMALFORMED);
    snprintf(hdr, sizeof(hdr), "{\"alg\":\"HS256\",\"typ\":\"jwt\","
             "\"kid\":\"%s\"}", fx->a.kid);
    forge(tok, sizeof(tok), hdr, good_payload(), &fx->a);
    assert_int_equal(verify(fx, tok, NOW), 0);
}


static void
test_verify_parses_headers_other_than_our_own(void **state)
{
    fx_t  *fx = *state;
    char   hdr[200], tok[2048];

    /* not byte-identical to what we sign, so the full header check runs:
     * other key order, spaces, no typ, the previous key */
    snprintf(hdr, sizeof(hdr), "{ \"kid\" : \"%s\", \"alg\" : \"HS256\" }",
             fx->b.kid);
    forge(tok, sizeof(tok), hdr, good_payload(), &fx->b);
    assert_int_equal(verify(fx, tok, NOW), 0);
    forge(tok, sizeof(tok), hdr, good_payload(), &fx->a);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_ESIG);
    /* our exact header with the other key's signature */
    hdr_for(hdr, sizeof(hdr), "HS256", &fx->a);
    assert_int_equal(strlen(fx->a.hdr_b64), fx->a.hdr_b64_len);
    forge(tok, sizeof(tok), hdr, good_payload(), &fx->b);
    assert_memory_equal(tok, fx->a.hdr_b64, fx->a.hdr_b64_len);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_ESIG);
}


static void
test_verify_rejects_wrong_signature(void **state)
{
    fx_t          *fx = *state;
    char           hdr[128], tok[2048];
    cm_jwt_key_t   other;
    size_t         n, i;
    const char    *o = "another secret that is long enough, 32+ bytes";

    hdr_for(hdr, sizeof(hdr), "HS256", &fx->a);
    n = forge(tok, sizeof(tok), hdr, good_payload(), &fx->a);

    /* every single-character change of the signature */
    for (i = n - 43; i < n; i++) {
        char saved = tok[i];

        tok[i] = saved == 'A' ? 'B' : 'A';
        assert_int_equal(verify(fx, tok, NOW), CM_JWT_ESIG);
        tok[i] = saved;
    }
    assert_int_equal(verify(fx, tok, NOW), 0);

    /* a right-looking kid with another secret behind it */
    assert_int_equal(cm_jwt_key_init(&other, o, strlen(o), NULL, 0), 0);
    memcpy(other.kid, fx->a.kid, sizeof(other.kid));
    forge(tok, sizeof(tok), hdr, good_payload(), &other);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_ESIG);

    /* signature one char short, one char long, bad trailing bits */
    n = forge(tok, sizeof(tok), hdr, good_payload(), &fx->a);
    tok[n - 1] = '\0';
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_ESIG);
    n = forge(tok, sizeof(tok), hdr, good_payload(), &fx->a);
    tok[n] = 'A';
    tok[n + 1] = '\0';
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_ESIG);
    n = forge(tok, sizeof(tok), hdr, good_payload(), &fx->a);
    /* 32 bytes = 42 full chars + 1 char carrying 2 bits and 4 zero bits:
     * setting a low bit gives a non-canonical encoding of similar bytes */
    tok[n - 1] = (char) (tok[n - 1] == 'A' ? 'B' : tok[n - 1] ^ 1);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_ESIG);
}


static void
test_verify_rejects_payload_changed_after_signing(void **state)
{
    fx_t             *fx = *state;
    cm_jwt_claims_t   in;
    char              tok[1024], hdr[128], evil[1024], *d2;
    size_t            n;

    memset(&in, 0, sizeof(in));
    strcpy(in.sub, "42");
    strcpy(in.jti, "x");
    strcpy(in.role, "user");
    in.iat = NOW;
    in.exp = NOW + 60;
    assert_int_equal(cm_jwt_sign(&fx->ring, &in, tok, sizeof(tok), &n), 0);
    /* splice an admin payload in front of the genuine signature */
    hdr_for(hdr, sizeof(hdr), "HS256", &fx->a);
    forge(evil, sizeof(evil), hdr,
          "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"sub\":\"42\","
          "\"jti\":\"x\",\"role\":\"admin\",\"iat\":1767225600,"
          "\"exp\":1767225660}", NULL);
    d2 = strrchr(tok, '.');
    strcat(evil, d2 + 1);
    assert_int_equal(verify(fx, evil, NOW), CM_JWT_ESIG);
}


static void
test_verify_rejects_expired_at_the_exact_second(void **state)
{
    fx_t  *fx = *state;
    char   hdr[128], tok[2048];

    hdr_for(hdr, sizeof(hdr), "HS256", &fx->a);
    forge(tok, sizeof(tok), hdr, good_payload(), &fx->a);
    assert_int_equal(verify(fx, tok, 1767226499), 0);
    assert_int_equal(verify(fx, tok, 1767226500), CM_JWT_EEXPIRED);
    assert_int_equal(verify(fx, tok, 1767226500 + 86400), CM_JWT_EEXPIRED);

    /* leeway of 30 s moves the edge by 30 s, no more */
    fx->ring.leeway = 30;
    assert_int_equal(verify(fx, tok, 1767226529), 0);
    assert_int_equal(verify(fx, tok, 1767226530), CM_JWT_EEXPIRED);
    fx->ring.leeway = 0;
}


static void
test_verify_rejects_not_yet_valid(void **state)
{
    fx_t  *fx = *state;
    char   hdr[128], tok[2048];

    hdr_for(hdr, sizeof(hdr), "HS256", &fx->a);
    forge(tok, sizeof(tok), hdr,
          "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"sub\":\"1\","
          "\"jti\":\"j\",\"role\":\"user\",\"iat\":1767225600,"
          "\"nbf\":1767225700,\"exp\":1767226500}", &fx->a);
    assert_int_equal(verify(fx, tok, 1767225699), CM_JWT_ENOTYET);
    assert_int_equal(verify(fx, tok, 1767225700), 0);

    /* issued in the future (a clock far ahead, or a forged iat) */
    forge(tok, sizeof(tok), hdr, good_payload(), &fx->a);
    assert_int_equal(verify(fx, tok, NOW - 1), CM_JWT_ENOTYET);
}


static void
test_verify_rejects_wrong_issuer_and_audience(void **state)
{
    fx_t  *fx = *state;
    char   hdr[128], tok[2048];

    hdr_for(hdr, sizeof(hdr), "HS256", &fx->a);
    forge(tok, sizeof(tok), hdr,
          "{\"iss\":\"evil\",\"aud\":\"" AUD "\",\"sub\":\"1\",\"jti\":\"j\","
          "\"role\":\"user\",\"iat\":1767225600,\"exp\":1767226500}", &fx->a);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_EISS);
    forge(tok, sizeof(tok), hdr,
          "{\"iss\":\"" ISS "x\",\"aud\":\"" AUD "\",\"sub\":\"1\","
          "\"jti\":\"j\",\"role\":\"user\",\"iat\":1767225600,"
          "\"exp\":1767226500}", &fx->a);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_EISS);
    forge(tok, sizeof(tok), hdr,
          "{\"iss\":\"" ISS "\",\"aud\":\"other-api\",\"sub\":\"1\","
          "\"jti\":\"j\",\"role\":\"user\",\"iat\":1767225600,"
          "\"exp\":1767226500}", &fx->a);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_EAUD);
    /* an array of audiences is fine when it names us */
    forge(tok, sizeof(tok), hdr,
          "{\"iss\":\"" ISS "\",\"aud\":[\"x\",\"" AUD "\"],\"sub\":\"1\","
          "\"jti\":\"j\",\"role\":\"user\",\"iat\":1767225600,"
          "\"exp\":1767226500}", &fx->a);
    assert_int_equal(verify(fx, tok, NOW), 0);
    forge(tok, sizeof(tok), hdr,
          "{\"iss\":\"" ISS "\",\"aud\":[\"x\",\"y\"],\"sub\":\"1\","
          "\"jti\":\"j\",\"role\":\"user\",\"iat\":1767225600,"
          "\"exp\":1767226500}", &fx->a);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_EAUD);
    forge(tok, sizeof(tok), hdr,
          "{\"iss\":\"" ISS "\",\"aud\":[\"" AUD "\",7],\"sub\":\"1\","
          "\"jti\":\"j\",\"role\":\"user\",\"iat\":1767225600,"
          "\"exp\":1767226500}", &fx->a);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_ECLAIM);
    forge(tok, sizeof(tok), hdr,
          "{\"iss\":\"" ISS "\",\"aud\":[],\"sub\":\"1\","
          "\"jti\":\"j\",\"role\":\"user\",\"iat\":1767225600,"
          "\"exp\":1767226500}", &fx->a);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_ECLAIM);
}


static void
test_verify_rejects_every_truncation(void **state)
{
    fx_t  *fx = *state;
    char   hdr[128], tok[2048];
    size_t n, i;
    cm_jwt_claims_t c;

    hdr_for(hdr, sizeof(hdr), "HS256", &fx->a);
    n = forge(tok, sizeof(tok), hdr, good_payload(), &fx->a);
    for (i = 0; i < n; i++) {
        assert_true(cm_jwt_verify(&fx->ring, tok, i, NOW, &c) < 0);
        assert_string_equal(c.sub, "");
    }
    assert_int_equal(cm_jwt_verify(&fx->ring, tok, n, NOW, &c), 0);
    /* from the front too */
    for (i = 1; i < n; i++) {
        assert_true(cm_jwt_verify(&fx->ring, tok + i, n - i, NOW, &c) < 0);
    }
    assert_int_equal(cm_jwt_verify(&fx->ring, NULL, 0, NOW, &c),
                     CM_JWT_EMALFORMED);
}


static void
test_verify_rejects_oversized_parts_before_decoding(void **state)
{
    fx_t   *fx = *state;
    char    hdr[1024], *tok, *payload;
    size_t  n;

    tok = malloc(16384);
    payload = malloc(4096);
    assert_non_null(tok);
    assert_non_null(payload);

    /* a header of 300 bytes (cap 256) */
    n = (size_t) snprintf(hdr, sizeof(hdr),
                          "{\"alg\":\"HS256\",\"kid\":\"%s\",\"x\":\"",
                          fx->a.kid);
    memset(hdr + n, 'a', 300);
    strcpy(hdr + n + 300, "\"}");
    forge(tok, 16384, hdr, good_payload(), &fx->a);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_ETOOBIG);

    /* a payload of 1100 bytes (cap 1024) */
    n = (size_t) snprintf(payload, 4096, "%.*s,\"pad\":\"",
                          (int) strlen(good_payload()) - 1, good_payload());
    memset(payload + n, 'p', 1100);
    strcpy(payload + n + 1100, "\"}");
    hdr_for(hdr, sizeof(hdr), "HS256", &fx->a);
    forge(tok, 16384, hdr, payload, &fx->a);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_ETOOBIG);

    /* a whole token over 4096 bytes */
    memset(tok, 'A', 5000);
    tok[100] = '.';
    tok[200] = '.';
    tok[5000] = '\0';
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_ETOOBIG);
    free(tok);
    free(payload);
}


static void
test_verify_rejects_garbage_base64(void **state)
{
    fx_t        *fx = *state;
    char         hdr[128], tok[2048];
    size_t       i, n;
    const char  *bad[] = {
        "", ".", "..", "...", "a.b", "a.b.c.d", "!!!.###.$$$",
        "eyJhbGciOiJIUzI1NiJ9", "e30.e30.", "e30=.e30.c2ln",
        "e30.e30.c2ln.", ".e30.c2ln", "e30..c2ln",
        "e3+0.e30.c2ln", "e3/0.e30.c2ln", "e 30.e30.c2ln",
        "e30.e30.c2ln\n", "\x80\x81.e30.c2ln",
    };

    for (i = 0; i < CM_ARRAY_SIZE(bad); i++) {
        int rc = verify(fx, bad[i], NOW);

        assert_true(rc == CM_JWT_EMALFORMED || rc == CM_JWT_ESIG
                    || rc == CM_JWT_EKID || rc == CM_JWT_EALG);
    }

    /* header that decodes but is not JSON, or JSON but not an object */
    hdr_for(hdr, sizeof(hdr), "HS256", &fx->a);
    forge(tok, sizeof(tok), "not json", good_payload(), &fx->a);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_EMALFORMED);
    forge(tok, sizeof(tok), "[\"HS256\"]", good_payload(), &fx->a);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_EMALFORMED);
    forge(tok, sizeof(tok), hdr, "[1,2]", &fx->a);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_EMALFORMED);
    forge(tok, sizeof(tok), hdr, "{\"sub\":", &fx->a);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_EMALFORMED);

    /* a padded payload ("=" is not in the alphabet without padding) */
    n = forge(tok, sizeof(tok), hdr, good_payload(), &fx->a);
    memmove(strchr(tok, '.') + 2, strchr(tok, '.') + 1,
            n - (size_t) (strchr(tok, '.') - tok));
    strchr(tok, '.')[1] = '=';
    assert_true(verify(fx, tok, NOW) < 0);
}


static void
test_verify_rejects_duplicate_claims_and_header_fields(void **state)
{
    fx_t  *fx = *state;
    char   hdr[200], tok[2048];

    /* signed by us, yet ambiguous: never accepted */
    hdr_for(hdr, sizeof(hdr), "HS256", &fx->a);
    forge(tok, sizeof(tok), hdr,
          "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"sub\":\"1\","
          "\"sub\":\"2\",\"jti\":\"j\",\"role\":\"user\","
          "\"iat\":1767225600,\"exp\":1767226500}", &fx->a);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_EMALFORMED);
    forge(tok, sizeof(tok), hdr,
          "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",\"sub\":\"1\","
          "\"jti\":\"j\",\"role\":\"user\",\"role\":\"admin\","
          "\"iat\":1767225600,\"exp\":1767226500}", &fx->a);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_EMALFORMED);
    snprintf(hdr, sizeof(hdr), "{\"alg\":\"none\",\"alg\":\"HS256\","
             "\"kid\":\"%s\"}", fx->a.kid);
    forge(tok, sizeof(tok), hdr, good_payload(), &fx->a);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_EMALFORMED);
}


static void
test_verify_rejects_ill_typed_and_missing_claims(void **state)
{
    fx_t        *fx = *state;
    char         hdr[128], tok[2048], payload[512];
    size_t       i;
    const char  *bad[] = {
        /* exp as string, real, negative, missing */
        "\"sub\":\"1\",\"jti\":\"j\",\"role\":\"user\",\"iat\":1767225600,"
        "\"exp\":\"1767226500\"",
        "\"sub\":\"1\",\"jti\":\"j\",\"role\":\"user\",\"iat\":1767225600,"
        "\"exp\":1767226500.0",
        "\"sub\":\"1\",\"jti\":\"j\",\"role\":\"user\",\"iat\":1767225600,"
        "\"exp\":-1",
        "\"sub\":\"1\",\"jti\":\"j\",\"role\":\"user\",\"iat\":1767225600",
        /* sub as number, empty, missing */
        "\"sub\":1,\"jti\":\"j\",\"role\":\"user\",\"iat\":1767225600,"
        "\"exp\":1767226500",
        "\"sub\":\"\",\"jti\":\"j\",\"role\":\"user\",\"iat\":1767225600,"
        "\"exp\":1767226500",
        "\"jti\":\"j\",\"role\":\"user\",\"iat\":1767225600,"
        "\"exp\":1767226500",
        /* role unknown, role null, jti missing, iat missing */
        "\"sub\":\"1\",\"jti\":\"j\",\"role\":\"root\",\"iat\":1767225600,"
        "\"exp\":1767226500",
        "\"sub\":\"1\",\"jti\":\"j\",\"role\":null,\"iat\":1767225600,"
        "\"exp\":1767226500",
        "\"sub\":\"1\",\"role\":\"user\",\"iat\":1767225600,"
        "\"exp\":1767226500",
        "\"sub\":\"1\",\"jti\":\"j\",\"role\":\"user\",\"exp\":1767226500",
        /* sid as number, sid empty */
        "\"sub\":\"1\",\"jti\":\"j\",\"role\":\"user\",\"iat\":1767225600,"
        "\"sid\":5,\"exp\":1767226500",
        "\"sub\":\"1\",\"jti\":\"j\",\"role\":\"user\",\"iat\":1767225600,"
        "\"sid\":\"\",\"exp\":1767226500",
        /* nbf as bool, exp before iat */
        "\"sub\":\"1\",\"jti\":\"j\",\"role\":\"user\",\"iat\":1767225600,"
        "\"nbf\":true,\"exp\":1767226500",
        "\"sub\":\"1\",\"jti\":\"j\",\"role\":\"user\",\"iat\":1767225600,"
        "\"exp\":1767225600",
    };

    hdr_for(hdr, sizeof(hdr), "HS256", &fx->a);
    for (i = 0; i < CM_ARRAY_SIZE(bad); i++) {
        snprintf(payload, sizeof(payload),
                 "{\"iss\":\"" ISS "\",\"aud\":\"" AUD "\",%s}", bad[i]);
        forge(tok, sizeof(tok), hdr, payload, &fx->a);
        assert_int_equal(verify(fx, tok, NOW), CM_JWT_ECLAIM);
    }
    /* iss as a number is a type error, not a mere wrong issuer */
    forge(tok, sizeof(tok), hdr,
          "{\"iss\":7,\"aud\":\"" AUD "\",\"sub\":\"1\",\"jti\":\"j\","
          "\"role\":\"user\",\"iat\":1767225600,\"exp\":1767226500}", &fx->a);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_ECLAIM);
}


static void
test_rotation_accepts_previous_key_until_it_is_dropped(void **state)
{
    fx_t              *fx = *state;
    cm_jwt_keyring_t   old, only_new;
    cm_jwt_claims_t    in, out;
    char               tok[1024], hdr[128];
    size_t             n;

    /* a token signed when b was current ... */
    assert_int_equal(cm_jwt_keyring_init(&old, &fx->b, NULL, ISS, AUD, 0,
                                         NULL, 0), 0);
    memset(&in, 0, sizeof(in));
    strcpy(in.sub, "7");
    strcpy(in.jti, "r");
    strcpy(in.role, "user");
    in.iat = NOW;
    in.exp = NOW + 60;
    assert_int_equal(cm_jwt_sign(&old, &in, tok, sizeof(tok), &n), 0);

    /* ... verifies after rotation (a current, b previous) ... */
    assert_int_equal(cm_jwt_verify(&fx->ring, tok, n, NOW, &out), 0);
    assert_string_equal(out.kid, fx->b.kid);

    /* ... and not once b is gone */
    assert_int_equal(cm_jwt_keyring_init(&only_new, &fx->a, NULL, ISS, AUD, 0,
                                         NULL, 0), 0);
    assert_int_equal(cm_jwt_verify(&only_new, tok, n, NOW, &out),
                     CM_JWT_EKID);

    /* new tokens are signed with the current key only */
    assert_int_equal(cm_jwt_sign(&fx->ring, &in, tok, sizeof(tok), &n), 0);
    assert_int_equal(cm_jwt_verify(&only_new, tok, n, NOW, &out), 0);
    assert_string_equal(out.kid, fx->a.kid);

    /* unknown and missing kid */
    snprintf(hdr, sizeof(hdr), "{\"alg\":\"HS256\",\"kid\":\"0000000000000000\"}");
    forge(tok, sizeof(tok), hdr, good_payload(), &fx->a);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_EKID);
    forge(tok, sizeof(tok), "{\"alg\":\"HS256\"}", good_payload(), &fx->a);
    assert_int_equal(verify(fx, tok, NOW), CM_JWT_EKID);
}


static void
test_keyring_refuses_bad_configuration(void **state)
{
    fx_t              *fx = *state;
    cm_jwt_keyring_t   r;
    cm_jwt_key_t       k;
    char               err[256];

    assert_int_equal(cm_jwt_keyring_init(&r, &fx->a, &fx->a, ISS, AUD, 0,
                                         err, sizeof(err)), CM_EINVAL);
    assert_non_null(strstr(err, "previous"));
    assert_int_equal(cm_jwt_keyring_init(&r, &fx->a, NULL, "", AUD, 0,
                                         err, sizeof(err)), CM_EINVAL);
    assert_int_equal(cm_jwt_keyring_init(&r, &fx->a, NULL, ISS, AUD, -1,
                                         err, sizeof(err)), CM_EINVAL);
    assert_int_equal(cm_jwt_key_init(&k, "short", 5, err, sizeof(err)),
                     CM_EINVAL);
    assert_non_null(strstr(err, "at least 32"));
    assert_int_equal(cm_jwt_key_init(&k, secret_a, 31, err, sizeof(err)),
                     CM_EINVAL);
    assert_int_equal(cm_jwt_key_init(&k, secret_a, 32, err, sizeof(err)), 0);
    assert_int_equal(strlen(k.kid), CM_JWT_KID_LEN);
}


static void
write_file(const char *path, const char *data, mode_t mode)
{
    FILE *f;

    unlink(path);
    f = fopen(path, "w");
    assert_non_null(f);
    fputs(data, f);
    fclose(f);
    assert_int_equal(chmod(path, mode), 0);
}


static void
test_secret_file_rules(void **state)
{
    char          dir[] = "/tmp/cm-jwt-XXXXXX", path[128], err[512];
    cm_jwt_key_t  k, direct;

    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof(path), "%s/secret", dir);

    /* 0600 with a trailing newline: loaded, newline stripped */
    write_file(path, "0123456789abcdef0123456789abcdef-current\n", 0600);
    assert_int_equal(cm_jwt_key_load_file(&k, path, err, sizeof(err)), 0);
    assert_int_equal(cm_jwt_key_init(&direct, secret_a, strlen(secret_a),
                                     NULL, 0), 0);
    assert_string_equal(k.kid, direct.kid);
    assert_int_equal(k.len, strlen(secret_a));

    /* group-readable (nginx's group) is fine */
    assert_int_equal(chmod(path, 0640), 0);
    assert_int_equal(cm_jwt_key_load_file(&k, path, err, sizeof(err)), 0);

    /* world-readable, world-writable or group-writable: refused */
    assert_int_equal(chmod(path, 0644), 0);
    assert_int_equal(cm_jwt_key_load_file(&k, path, err, sizeof(err)),
                     CM_EINVAL);
    assert_non_null(strstr(err, "0644"));
    assert_non_null(strstr(err, "chmod 0600"));
    assert_int_equal(chmod(path, 0602), 0);
    assert_int_equal(cm_jwt_key_load_file(&k, path, err, sizeof(err)),
                     CM_EINVAL);
    assert_int_equal(chmod(path, 0660), 0);
    assert_int_equal(cm_jwt_key_load_file(&k, path, err, sizeof(err)),
                     CM_EINVAL);

    /* too short once whitespace is gone */
    write_file(path, "0123456789abcdef0123456789abcde \n\n", 0600);
    assert_int_equal(cm_jwt_key_load_file(&k, path, err, sizeof(err)),
                     CM_EINVAL);
    assert_non_null(strstr(err, "at least 32"));

    /* missing file, directory */
    unlink(path);
    assert_int_equal(cm_jwt_key_load_file(&k, path, err, sizeof(err)),
                     CM_EIO);
    assert_int_equal(cm_jwt_key_load_file(&k, dir, err, sizeof(err)),
                     CM_EINVAL);
    assert_non_null(strstr(err, "regular"));
    rmdir(dir);
}


static void
test_strerror_names_every_reason(void **state)
{
    int  i;

    for (i = CM_JWT_ECLAIM; i <= CM_JWT_EMALFORMED; i++) {
        assert_string_not_equal(cm_jwt_strerror(i), "error");
    }
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sign_then_verify_round_trips_every_claim),
        cmocka_unit_test(test_sign_refuses_small_buffer_and_bad_utf8),
        cmocka_unit_test(test_forged_good_token_verifies),
        cmocka_unit_test(test_verify_rejects_alg_none_with_or_without_signature),
        cmocka_unit_test(test_verify_rejects_every_alg_but_hs256),
        cmocka_unit_test(test_verify_rejects_hs_rs_confusion),
        cmocka_unit_test(test_verify_rejects_crit_and_bad_typ),
        cmocka_unit_test(test_verify_parses_headers_other_than_our_own),
        cmocka_unit_test(test_verify_rejects_wrong_signature),
        cmocka_unit_test(test_verify_rejects_payload_changed_after_signing),
        cmocka_unit_test(test_verify_rejects_expired_at_the_exact_second),
        cmocka_unit_test(test_verify_rejects_not_yet_valid),
        cmocka_unit_test(test_verify_rejects_wrong_issuer_and_audience),
        cmocka_unit_test(test_verify_rejects_every_truncation),
        cmocka_unit_test(test_verify_rejects_oversized_parts_before_decoding),
        cmocka_unit_test(test_verify_rejects_garbage_base64),
        cmocka_unit_test(test_verify_rejects_duplicate_claims_and_header_fields),
        cmocka_unit_test(test_verify_rejects_ill_typed_and_missing_claims),
        cmocka_unit_test(test_rotation_accepts_previous_key_until_it_is_dropped),
        cmocka_unit_test(test_keyring_refuses_bad_configuration),
        cmocka_unit_test(test_secret_file_rules),
        cmocka_unit_test(test_strerror_names_every_reason),
    };

    return cmocka_run_group_tests(tests, setup, teardown);
}

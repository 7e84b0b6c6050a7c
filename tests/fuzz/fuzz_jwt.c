/*
 * fuzz_jwt.c: the access-token verifier on hostile bytes.
 *
 * First byte even: the rest is the token as a client sent it (reaches the
 * framing, base64url and header checks).  First byte odd: the rest is
 * "<header JSON>\0<payload JSON>", signed here with the keyring's key, so
 * the fuzzer also reaches the claim parser behind the signature check.
 * Either way: no crash, no leak, and an accepted token has sane claims.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <sodium.h>

#include "cinematch/jwt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static cm_jwt_keyring_t  ring;
static int               ready;


static void
init(void)
{
    static const char  secret[] = "fuzzing-secret-0123456789abcdef-0123";
    cm_jwt_key_t       k;

    if (cm_jwt_key_init(&k, secret, sizeof(secret) - 1, NULL, 0) != 0
        || cm_jwt_keyring_init(&ring, &k, NULL, "cinematch", "cinematch-api",
                               30, NULL, 0) != 0)
    {
        abort();
    }
    ready = 1;
}


static void
check(const char *tok, size_t len)
{
    cm_jwt_claims_t  c;

    if (cm_jwt_verify(&ring, tok, len, 1767225600, &c) == 0) {
        if (c.sub[0] == '\0' || c.jti[0] == '\0' || c.exp <= c.iat
            || (strcmp(c.role, "user") != 0 && strcmp(c.role, "admin") != 0))
        {
            abort();
        }
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char           *tok;
    const uint8_t  *nul;
    size_t          hlen, plen, n, cap;
    unsigned int    maclen;
    uint8_t         mac[32];

    if (!ready) {
        init();
    }
    if (size == 0 || size > 8192) {
        return 0;
    }
    if ((data[0] & 1) == 0) {
        tok = malloc(size - 1 + 1);
        if (tok == NULL) {
            return 0;
        }
        memcpy(tok, data + 1, size - 1);
        check(tok, size - 1);
        free(tok);
        return 0;
    }

    nul = memchr(data + 1, 0, size - 1);
    if (nul == NULL) {
        return 0;
    }
    hlen = (size_t) (nul - data - 1);
    plen = size - hlen - 2;
    cap = (hlen + plen) * 2 + 128;
    tok = malloc(cap);
    if (tok == NULL) {
        return 0;
    }
    n = 0;
    if (hlen > 0) {
        sodium_bin2base64(tok, cap, data + 1, hlen,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        n = strlen(tok);
    }
    tok[n++] = '.';
    if (plen > 0) {
        sodium_bin2base64(tok + n, cap - n, nul + 1, plen,
                          sodium_base64_VARIANT_URLSAFE_NO_PADDING);
        n += strlen(tok + n);
    }
    HMAC(EVP_sha256(), ring.keys[0].secret, (int) ring.keys[0].len,
         (uint8_t *) tok, n, mac, &maclen);
    tok[n++] = '.';
    sodium_bin2base64(tok + n, cap - n, mac, sizeof(mac),
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    n += strlen(tok + n);
    check(tok, n);
    free(tok);
    return 0;
}

/*
 * fuzz_auth_header.c: the Authorization / X-API-Key parser.
 *
 * Input: one flag byte (bit 0: Authorization present, bit 1: X-API-Key
 * present), then the Authorization value, '\n', the X-API-Key value.  An
 * accepted credential must point inside its header and have the shape its
 * kind promises (a JWT: base64url and exactly two dots, checked here the
 * plain way); a JWT-shaped one is then run through the verifier.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/authkeys.h"
#include "cinematch/jwt.h"
#include "cinematch/validate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static cm_jwt_keyring_t  ring;
    static int               ready;
    const char              *a = NULL, *k = NULL, *nl;
    size_t                   alen = 0, klen = 0, rest;
    char                    *buf;
    cm_cred_t                c;
    cm_field_error_t         e;
    cm_jwt_claims_t          claims;

    if (!ready) {
        cm_jwt_key_t key;

        if (cm_jwt_key_init(&key, "0123456789abcdef0123456789abcdef", 32,
                            NULL, 0) != 0
            || cm_jwt_keyring_init(&ring, &key, NULL, "i", "a", 0, NULL, 0)
               != 0)
        {
            abort();
        }
        ready = 1;
    }
    if (size == 0 || size > 16384) {
        return 0;
    }
    /* a private copy, so reads past the end are caught by ASan */
    rest = size - 1;
    buf = malloc(rest + 1);
    if (buf == NULL) {
        return 0;
    }
    memcpy(buf, data + 1, rest);
    nl = memchr(buf, '\n', rest);
    if (data[0] & 1) {
        a = buf;
        alen = nl != NULL ? (size_t) (nl - buf) : rest;
    }
    if (data[0] & 2) {
        k = nl != NULL ? nl + 1 : buf + rest;
        klen = nl != NULL ? rest - (size_t) (nl - buf) - 1 : 0;
    }

    memset(&e, 0, sizeof(e));
    if (cm_auth_header_parse(a, alen, k, klen, &c, &e) == 0) {
        switch (c.kind) {
        case CM_CRED_NONE:
            if (a != NULL || k != NULL) {
                abort();
            }
            break;
        case CM_CRED_APIKEY:
            if (cm_apikey_parse(c.token, c.len, NULL) != 0) {
                abort();
            }
            break;
        case CM_CRED_JWT:
            if (c.token < buf || c.token + c.len > buf + rest) {
                abort();
            }
            /* the shape promised: base64url and exactly two dots (the
             * parser checks it in one branch-free pass; this is the
             * plain two-pass reading of the rule) */
            {
                size_t  i, dots = 0;

                for (i = 0; i < c.len; i++) {
                    char ch = c.token[i];

                    if (ch == '.') {
                        dots++;
                    } else if (!((ch >= 'A' && ch <= 'Z')
                                 || (ch >= 'a' && ch <= 'z')
                                 || (ch >= '0' && ch <= '9')
                                 || ch == '-' || ch == '_'))
                    {
                        abort();
                    }
                }
                if (dots != 2) {
                    abort();
                }
            }
            (void) cm_jwt_verify(&ring, c.token, c.len, 0, &claims);
            break;
        }
    } else if (e.code == NULL || e.message == NULL) {
        abort();
    }
    free(buf);
    return 0;
}

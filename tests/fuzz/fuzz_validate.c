/*
 * fuzz_validate.c: every field validator and small parser of the auth
 * layer on the same bytes: email, password, display name, key name,
 * UTF-8, scopes as a PostgreSQL array literal, the rate-limit directive
 * arguments, API keys and tokens.  Rejections must carry a reason;
 * accepted rate limits must keep their values exact in doubles.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/authkeys.h"
#include "cinematch/ratelimit.h"
#include "cinematch/validate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char                   *s, err[256];
    cm_field_error_t        e;
    cm_ratelimit_t          rl;
    cm_tbucket_t            b;
    cm_ratelimit_result_t   r;
    uint32_t                mask;
    char                    lit[128];

    if (size > 65536) {
        return 0;
    }
    s = malloc(size + 1);
    if (s == NULL) {
        return 0;
    }
    memcpy(s, data, size);

#define CM_FUZZ_FIELD(fn)                                                  \
    memset(&e, 0, sizeof(e));                                             \
    if (fn(s, size, &e) != 0 && (e.code == NULL || e.message == NULL)) {  \
        abort();                                                          \
    }
    CM_FUZZ_FIELD(cm_validate_email)
    CM_FUZZ_FIELD(cm_validate_password)
    CM_FUZZ_FIELD(cm_validate_display_name)
    CM_FUZZ_FIELD(cm_validate_key_name)

    (void) cm_utf8_valid(s, size, NULL);
    if (cm_scopes_from_pg_array(s, size, &mask) == 0) {
        if (cm_scopes_to_pg_array(mask, lit, sizeof(lit)) != 0) {
            abort();
        }
    }
    if (cm_ratelimit_parse(&rl, s, size, err, sizeof(err)) == 0) {
        if (rl.capacity >= (1ull << 53) || rl.cost == 0 || rl.refill == 0) {
            abort();
        }
        memset(&b, 0, sizeof(b));
        cm_tbucket_take(&rl, &b, size, &r);
        if (!r.allowed) {
            abort();                /* a fresh bucket always admits one */
        }
    }
    (void) cm_apikey_parse(s, size, NULL);
    (void) cm_token_parse(s, size, CM_TOKEN_REFRESH);
    free(s);
    return 0;
}

/*
 * fuzz_canary_share.c: cm_canary_share_parse on arbitrary bytes (the
 * --share of `cinematch model canary`, the registry's canary_share text the
 * daemon reads).  An accepted share is at most 10000 basis points, and the
 * routing it yields is a pure function: the same user twice, the same side.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/canary.h"
#include "cinematch/common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char      *s;
    uint32_t   bp;
    int64_t    user;

    if (size > 64) {
        return 0;
    }
    /* an exact-size copy, so ASan sees any read past the end */
    s = malloc(size ? size : 1);
    if (s == NULL) {
        return 0;
    }
    memcpy(s, data, size);
    if (cm_canary_share_parse(s, size, &bp) == CM_OK) {
        if (bp > CM_CANARY_BUCKETS) {
            abort();
        }
        user = size >= 8 ? (int64_t) (data[0] | (uint64_t) data[7] << 56)
                         : (int64_t) size;
        if (cm_canary_routed("recsys", user, bp)
            != cm_canary_routed("recsys", user, bp)
            || cm_canary_bucket("recsys", user) >= CM_CANARY_BUCKETS)
        {
            abort();
        }
    }
    free(s);
    return 0;
}

/*
 * fuzz_timefmt.c: cm_time_parse on arbitrary bytes (the `from` and `to`
 * of GET /api/v1/admin/usage).  An accepted value must format, and the
 * formatted text must parse back to the same instant.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/common.h"
#include "cinematch/timefmt.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char     *s, buf[CM_TIME_FORMAT_LEN];
    int64_t   us, back;
    size_t    n;

    if (size > 256) {
        return 0;
    }
    /* an exact-size copy, so ASan sees any read past the end */
    s = malloc(size ? size : 1);
    if (s == NULL) {
        return 0;
    }
    memcpy(s, data, size);
    if (cm_time_parse(s, size, &us) == CM_OK) {
        n = cm_time_format(us, buf, sizeof(buf));
        if (n != CM_TIME_FORMAT_LEN - 1) {
            abort();
        }
        if (cm_time_parse(buf, n, &back) != CM_OK || back != us) {
            abort();
        }
    }
    free(s);
    return 0;
}

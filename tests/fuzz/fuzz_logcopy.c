/*
 * fuzz_logcopy.c: cm_copy_escape and cm_copy_log_members turn any bytes
 * into COPY text fields for the request log.  Whatever the input, the
 * output must fit the documented bound (the buffer is exactly that big:
 * ASan sees any overrun), hold no raw newline, carriage return or NUL, no
 * raw tab inside a field (members: exactly three, between the four), and
 * no backslash that escapes nothing.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/common.h"
#include "cinematch/logcopy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static void
check(const char *s, size_t n, size_t tabs)
{
    size_t  i, t = 0;

    for (i = 0; i < n; i++) {
        if (s[i] == '\n' || s[i] == '\r' || s[i] == '\0') {
            abort();
        }
        if (s[i] == '\t') {
            t++;
        }
        if (s[i] == '\\') {
            if (i + 1 == n || strchr("\\tnrN", s[i + 1]) == NULL) {
                abort();
            }
            i++;
        }
    }

    if (t != tabs) {
        abort();
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char    *out;
    size_t   n;
    long     k;

    out = malloc(CM_COPY_MEMBERS_MAX(size) + 1);
    if (out == NULL) {
        return 0;
    }

    n = cm_copy_escape(out, (const char *) data, size);
    if (n > CM_COPY_ESCAPED_MAX(size)) {
        abort();
    }
    check(out, n, 0);

    k = cm_copy_log_members(out, (const char *) data, size);
    if (k >= 0) {
        if ((size_t) k > CM_COPY_MEMBERS_MAX(size)) {
            abort();
        }
        check(out, (size_t) k, 3);
    } else if (k != CM_EINVAL) {
        abort();
    }

    free(out);
    return 0;
}

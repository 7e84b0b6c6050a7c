/*
 * fuzz_json_escape.c: cm_json_escape turns any bytes into the inside of a
 * JSON string for the JSON log lines.  Whatever the input and the room,
 * the output must stay in bounds, be valid UTF-8, hold no raw control
 * character, and never end inside an escape or a quote it opened.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/common.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static int
utf8_ok(const unsigned char *s, size_t n)
{
    size_t i = 0, k, j;

    while (i < n) {
        if (s[i] < 0x80) {
            if (s[i] < 0x20 || s[i] == 0x7f) {
                return 0;
            }
            i++;
            continue;
        }
        k = s[i] >= 0xf0 ? 4 : s[i] >= 0xe0 ? 3 : s[i] >= 0xc2 ? 2 : 0;
        if (k == 0 || i + k > n) {
            return 0;
        }
        for (j = 1; j < k; j++) {
            if ((s[i + j] & 0xc0) != 0x80) {
                return 0;
            }
        }
        i += k;
    }
    return 1;
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char    *out;
    size_t   cap, n, i;

    if (size < 1 || size > 4096) {
        return 0;
    }
    cap = data[0] % 64 == 0 ? 6 * size + 1 : data[0] % 64;
    out = malloc(cap);
    if (out == NULL) {
        return 0;
    }
    n = cm_json_escape(out, cap, (const char *) data + 1, size - 1);
    if (n >= cap || out[n] != '\0' || strlen(out) != n
        || !utf8_ok((const unsigned char *) out, n))
    {
        __builtin_trap();
    }
    /* read it back as a JSON string body: no bare quote, and every
     * escape complete (truncation never cuts one) */
    for (i = 0; i < n; i++) {
        if (out[i] == '"') {
            __builtin_trap();
        }
        if (out[i] != '\\') {
            continue;
        }
        if (i + 1 >= n || strchr("\"\\nu", out[i + 1]) == NULL) {
            __builtin_trap();
        }
        if (out[i + 1] == 'u') {
            if (i + 6 > n) {
                __builtin_trap();
            }
            i += 4;
        }
        i++;
    }
    free(out);
    return 0;
}

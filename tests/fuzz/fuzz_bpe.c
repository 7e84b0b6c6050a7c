/*
 * fuzz_bpe.c: the vocab.json + merges.txt loader on arbitrary bytes (cut at
 * the first NUL into the two files); whatever loads must encode and decode
 * the input itself back to the same bytes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/common.h"
#include "cinematch/bpe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char  *p = (const char *) data, *z;
    size_t       vl, ml;
    cm_bpe_t    *b = NULL;
    cm_tokens_t  t = { 0 };
    char         err[256], *out;
    size_t       len;

    z = memchr(p, '\0', size);
    vl = z != NULL ? (size_t) (z - p) : size;
    ml = z != NULL ? size - vl - 1 : 0;
    if (cm_bpe_load_mem(&b, p, vl, z != NULL ? z + 1 : "", ml, err,
                        sizeof(err)) != CM_OK)
    {
        return 0;
    }
    if (cm_bpe_encode(b, p, size, CM_BPE_SPECIAL, &t) == CM_OK
        && cm_bpe_decode(b, t.ids, t.n, &out, &len) == CM_OK)
    {
        cm_bpe_stream_t  st = { { 0 }, 0 };
        char            *sb = malloc(size + 8), piece[4096];
        size_t           i, n = 0, k, tl;

        if (len != size || memcmp(out, p, size) != 0) {
            abort();
        }
        /* streamed pieces concatenate to the same bytes */
        for (i = 0; sb != NULL && i < t.n; i++) {
            if (cm_bpe_token(b, t.ids[i], &tl) == NULL
                || tl + 4 > sizeof(piece))
            {
                break;
            }
            k = cm_bpe_stream_push(b, &st, t.ids[i], piece);
            if (n + k > size || st.n > 3) {
                abort();
            }
            memcpy(sb + n, piece, k);
            n += k;
        }
        if (sb != NULL && i == t.n) {
            n += cm_bpe_stream_flush(&st, sb + n);
            if (n != size || memcmp(sb, p, size) != 0) {
                abort();
            }
        }
        free(sb);
        free(out);
    }
    free(t.ids);
    cm_bpe_free(b);
    return 0;
}

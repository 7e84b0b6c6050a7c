/*
 * fuzz_movielens.c: the MovieLens readers (CSV, tab, pipe, "::") on
 * arbitrary bytes.  The first byte picks format, file kind and mode.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "cinematch/common.h"
#include "cinematch/movielens.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cm_ml_format_t  fmt;
    cm_ml_opts_t    o;
    cm_ratings_t    r;
    cm_movies_t     m;
    char            err[256];
    size_t          i;

    if (size < 1) {
        return 0;
    }
    fmt = (cm_ml_format_t) (1 + data[0] % 3);
    memset(&o, 0, sizeof(o));
    o.strict = (data[0] >> 3) & 1;
    memset(&r, 0, sizeof(r));
    memset(&m, 0, sizeof(m));
    if ((data[0] >> 2) & 1) {
        (void) cm_ml_parse_movies((const char *) data + 1, size - 1, fmt,
                                  "fuzz", &o, &m, err, sizeof(err));
        for (i = 0; i < m.n; i++) {
            if (m.v[i].title == NULL || m.v[i].title[0] == '\0') {
                __builtin_trap();
            }
        }
        cm_movies_free(&m);
    } else {
        (void) cm_ml_parse_ratings((const char *) data + 1, size - 1, fmt,
                                   "fuzz", &o, &r, err, sizeof(err));
        for (i = 0; i < r.n; i++) {
            if (r.v[i].rating < 0.5f || r.v[i].rating > 5.0f
                || r.v[i].user < 1 || r.v[i].item < 1)
            {
                __builtin_trap();
            }
        }
        cm_ratings_free(&r);
    }
    return 0;
}

/*
 * fuzz_ingest.c: the ingest planner (line index + MovieLens reader +
 * reject/duplicate/split decisions) and the COPY escaper on arbitrary
 * bytes.  The first byte picks format, catalogue and split.  Invariants
 * checked: every data line is accepted or rejected exactly once, reject
 * lines ascend, accepted ratings are half stars, escaped text has no raw
 * tab/newline and stays within its bound.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/common.h"
#include "cinematch/ingest.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const int32_t  movies[] = { 1, 2, 3, 5, 8, 13, 21, 34 };
    cm_ingest_conf_t      conf;
    cm_ingest_plan_t      p;
    cm_ml_format_t        fmt;
    char                  err[256], *esc;
    size_t                i, n;

    if (size < 1) {
        return 0;
    }
    fmt = (cm_ml_format_t) (1 + data[0] % 3);
    memset(&conf, 0, sizeof(conf));
    if (data[0] & 0x10) {
        conf.movies = movies;
        conf.n_movies = sizeof(movies) / sizeof(movies[0]);
    }
    conf.max_ts = (data[0] & 0x20) ? 2000000000 : 0;
    conf.test_frac = (data[0] & 0x40) ? 0.2 : 0.0;

    if (cm_ingest_plan((const char *) data + 1, size - 1, fmt, "fuzz", &conf,
                       &p, err, sizeof(err)) == CM_OK)
    {
        if (p.n_rows + p.n_rej != p.n_total || p.n_dup > p.n_rej) {
            __builtin_trap();
        }
        for (i = 0; i < p.n_rows; i++) {
            float twice = p.rows[i].rating * 2.0f;

            if (twice != (float) (int) twice || p.rows[i].rating < 0.5f
                || p.rows[i].rating > 5.0f)
            {
                __builtin_trap();
            }
        }
        for (i = 1; i < p.n_rej; i++) {
            if (p.rej[i].line <= p.rej[i - 1].line) {
                __builtin_trap();
            }
        }
        cm_ingest_plan_free(&p);
    }

    esc = malloc(2 * (size > 64 ? 64 : size) + 1);
    if (esc != NULL) {
        n = cm_ingest_copy_escape((const char *) data, size, 64, esc);
        if (n > 128 || strlen(esc) != n || memchr(esc, '\t', n) != NULL
            || memchr(esc, '\n', n) != NULL)
        {
            __builtin_trap();
        }
        free(esc);
    }
    (void) cm_ingest_title_strip((const char *) data, size);
    return 0;
}

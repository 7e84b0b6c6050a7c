/*
 * fuzz_recsys_model.c: the recsys artifact reader on arbitrary bytes.  Runs
 * with the checksum skipped too, so the structural and content checks see
 * inputs a checksum would otherwise stop; a model that opens is exercised
 * through the scoring API, which must stay in bounds.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/common.h"
#include "cinematch/recsys.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    void           *buf;
    cm_rs_model_t  *m;
    uint32_t        idx[5];
    float           sc[4];
    size_t          n;
    unsigned        pass;

    if (posix_memalign(&buf, 64, size ? size : 1) != 0) {
        return 0;
    }
    memcpy(buf, data, size);
    for (pass = 0; pass < 2; pass++) {
        if (cm_rs_model_open_mem(buf, size,
                                 pass ? CM_RS_OPEN_SKIP_CHECKSUM : 0, &m,
                                 NULL, 0) != CM_OK)
        {
            continue;
        }
        (void) cm_rs_recommend(m, 0, 4, 1, idx, sc, &n);
        (void) cm_rs_recommend(m, m->n_users - 1, 4, 1, idx, sc, &n);
        (void) cm_rs_similar_items(m, m->n_items - 1, 4, idx, sc, &n);
        (void) cm_rs_explain(m, m->n_users - 1, 0, idx, sc);
        (void) cm_rs_popular(m, NULL, 0, 4, idx, sc, &n);
        cm_rs_model_free(m);
    }
    free(buf);
    return 0;
}

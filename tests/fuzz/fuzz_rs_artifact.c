/*
 * fuzz_rs_artifact.c: the upload check nginx runs (cm_rs_artifact_check_mem,
 * no BLAS) against the daemon's loader (cm_rs_model_open_mem) on arbitrary
 * bytes: both accept or both refuse, for the same reason.  Checksums are
 * skipped on odd first bytes so that the checks behind it are reached.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/common.h"
#include "cinematch/recsys.h"
#include "cinematch/rs_artifact.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t        *buf = NULL;
    cm_rs_model_t  *m = NULL;
    char            e1[256], e2[256];
    unsigned        flags;
    int             a, b;

    if (size > (1 << 20)) {
        return 0;
    }
    flags = (size > 0 && (data[size - 1] & 1)) ? CM_RS_OPEN_SKIP_CHECKSUM : 0;
    if (posix_memalign((void **) &buf, 64, size ? size : 1) != 0) {
        return 0;
    }
    memcpy(buf, data, size);
    e1[0] = e2[0] = '\0';
    a = cm_rs_artifact_check_mem(buf, size, flags, e1, sizeof(e1));
    b = cm_rs_model_open_mem(buf, size, flags, &m, e2, sizeof(e2));
    cm_rs_model_free(m);
    if (a != b || (a != CM_OK && b != CM_ENOMEM && strcmp(e1, e2) != 0)) {
        abort();
    }
    free(buf);
    return 0;
}

/*
 * cinematch/rs_artifact.h: the recsys artifact checked without loading it
 * (see cinematch/recsys.h "Artifact").
 *
 * The same checks as cm_rs_model_open() makes before anything reads a
 * model (magic, version, header, every section's offset and length for the
 * header's dims, the BLAKE2b checksum, finite factors and biases, id maps
 * strictly ascending, the seen CSR), in a unit that needs no BLAS: nginx
 * validates uploads with it (the module does not link OpenBLAS, whose
 * thread pool has no place in an nginx worker).  Whatever this accepts,
 * cm_rs_model_open() accepts (tests/unit/test_rs_artifact.c and
 * tests/fuzz/fuzz_rs_artifact.c check the two against each other).
 */
#ifndef CINEMATCH_RS_ARTIFACT_H
#define CINEMATCH_RS_ARTIFACT_H

#include <stddef.h>
#include <stdint.h>

/* buf: the whole file, 8-byte aligned.  flags: CM_RS_OPEN_SKIP_CHECKSUM
 * (fuzzing and tests only).  CM_EFORMAT with the reason in err. */
int cm_rs_artifact_check_mem(const void *buf, size_t len, unsigned flags,
    char *err, size_t errlen);
/* The file mapped read-only and checked; CM_EIO when it cannot be read. */
int cm_rs_artifact_check_file(const char *path, char *err, size_t errlen);

#endif /* CINEMATCH_RS_ARTIFACT_H */

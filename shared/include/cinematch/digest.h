/*
 * cinematch/digest.h: SHA-256 as lowercase hex, the one used for artifact
 * checksums, migration checksums and stored key/token hashes.
 */
#ifndef CINEMATCH_DIGEST_H
#define CINEMATCH_DIGEST_H

#include <stddef.h>
#include <stdint.h>

#define CM_SHA256_HEX_LEN  64

/* out gets 64 hex digits and a NUL; returns CM_OK or CM_ERR (out = ""). */
int cm_sha256_hex(const void *data, size_t len,
                  char out[CM_SHA256_HEX_LEN + 1]);

/* The digest of a whole file, read in 1 MiB pieces (no copy of the file
 * in memory; safe in a worker thread).  *bytes (may be NULL) gets its
 * size.  CM_EIO when it cannot be read (errno says why), CM_ERR when the
 * digest fails; out = "" then. */
int cm_sha256_file_hex(const char *path, char out[CM_SHA256_HEX_LEN + 1],
                       uint64_t *bytes);

#endif /* CINEMATCH_DIGEST_H */

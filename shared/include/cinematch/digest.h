/*
 * cinematch/digest.h: SHA-256 as lowercase hex, the one used for artifact
 * checksums, migration checksums and stored key/token hashes.
 */
#ifndef CINEMATCH_DIGEST_H
#define CINEMATCH_DIGEST_H

#include <stddef.h>

#define CM_SHA256_HEX_LEN  64

/* out gets 64 hex digits and a NUL; returns CM_OK or CM_ERR (out = ""). */
int cm_sha256_hex(const void *data, size_t len,
                  char out[CM_SHA256_HEX_LEN + 1]);

#endif /* CINEMATCH_DIGEST_H */

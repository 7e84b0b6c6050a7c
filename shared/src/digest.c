/*
 * digest.c: SHA-256 hex digests (OpenSSL EVP).
 */
#include <openssl/evp.h>

#include "cinematch/common.h"
#include "cinematch/digest.h"


int
cm_sha256_hex(const void *data, size_t len, char out[CM_SHA256_HEX_LEN + 1])
{
    static const char  hex[] = "0123456789abcdef";
    unsigned char      md[EVP_MAX_MD_SIZE];
    unsigned int       mdlen = 0;
    size_t             i;

    if (EVP_Digest(data, len, md, &mdlen, EVP_sha256(), NULL) != 1
        || mdlen != CM_SHA256_HEX_LEN / 2)
    {
        out[0] = '\0';
        return CM_ERR;
    }
    for (i = 0; i < mdlen; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 0x0f];
    }
    out[(size_t) mdlen * 2] = '\0';
    return CM_OK;
}

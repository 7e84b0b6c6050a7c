/*
 * digest.c: SHA-256 hex digests (OpenSSL EVP).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

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


int
cm_sha256_file_hex(const char *path, char out[CM_SHA256_HEX_LEN + 1],
                   uint64_t *bytes)
{
    static const char  hex[] = "0123456789abcdef";
    unsigned char      md[EVP_MAX_MD_SIZE], *buf;
    unsigned int       mdlen = 0, i;
    EVP_MD_CTX        *ctx;
    uint64_t           total = 0;
    ssize_t            n;
    int                fd, rc = CM_OK, saved;

    out[0] = '\0';
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return CM_EIO;
    }
    buf = malloc(1 << 20);
    ctx = EVP_MD_CTX_new();
    if (buf == NULL || ctx == NULL
        || EVP_DigestInit_ex(ctx, EVP_sha256(), NULL) != 1)
    {
        rc = CM_ERR;
    }
    while (rc == CM_OK) {
        n = read(fd, buf, 1 << 20);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0) {
            rc = CM_EIO;
        } else if (n == 0) {
            break;
        } else if (EVP_DigestUpdate(ctx, buf, (size_t) n) != 1) {
            rc = CM_ERR;
        }
        total += n > 0 ? (uint64_t) n : 0;
    }
    if (rc == CM_OK && (EVP_DigestFinal_ex(ctx, md, &mdlen) != 1
                        || mdlen != CM_SHA256_HEX_LEN / 2))
    {
        rc = CM_ERR;
    }
    saved = errno;
    EVP_MD_CTX_free(ctx);
    free(buf);
    close(fd);
    errno = saved;
    if (rc != CM_OK) {
        return rc;
    }
    for (i = 0; i < mdlen; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 0x0f];
    }
    out[(size_t) mdlen * 2] = '\0';
    if (bytes != NULL) {
        *bytes = total;
    }
    return CM_OK;
}

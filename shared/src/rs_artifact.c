/*
 * rs_artifact.c: the recsys artifact's checks without BLAS (see
 * cinematch/rs_artifact.h).  Mirrors cm_rs_model_open_mem() in
 * recsys_model.c check for check; the tests hold the two together.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <sodium.h>

#include "cinematch/common.h"
#include "cinematch/recsys.h"
#include "cinematch/rs_artifact.h"


static int
cm_rsa_finite(const uint8_t *p, uint64_t n)
{
    uint64_t  i;
    float     f;

    for (i = 0; i < n; i++) {
        memcpy(&f, p + 4 * i, 4);
        if (!isfinite(f)) {
            return 0;
        }
    }
    return 1;
}


static int
cm_rsa_ascending(const uint8_t *p, uint32_t n)
{
    uint32_t  i;
    int32_t   a, b;

    for (i = 1; i < n; i++) {
        memcpy(&a, p + 4 * (i - 1), 4);
        memcpy(&b, p + 4 * i, 4);
        if (a >= b) {
            return 0;
        }
    }
    return 1;
}


int
cm_rs_artifact_check_mem(const void *buf, size_t len, unsigned flags,
    char *err, size_t errlen)
{
    static const uint8_t        zero[sizeof(((cm_rs_header_t *) 0)->pad)];
    const uint8_t              *b = buf, *ptr, *idx;
    cm_rs_header_t              h;
    crypto_generichash_state    st;
    uint64_t                    want[CM_RS_N_SECTIONS], prev_end, u, p;
    uint64_t                    lo, hi, next;
    uint32_t                    i, x = 0, y;
    uint8_t                     sum[32];

    if (((uintptr_t) buf & 7) != 0) {
        return cm_seterr(err, errlen, CM_EINVAL, "model buffer not 8-byte"
                         " aligned");
    }
    if (len < sizeof(h)) {
        return cm_seterr(err, errlen, CM_EFORMAT, "truncated: %zu bytes is"
                         " less than the %u-byte header", len,
                         CM_RS_HEADER_SIZE);
    }
    memcpy(&h, b, sizeof(h));
    if (memcmp(h.magic, CM_RS_MAGIC, 8) != 0) {
        return cm_seterr(err, errlen, CM_EFORMAT, "bad magic (not a cinematch"
                         " recsys model)");
    }
    if (h.version != CM_RS_VERSION) {
        return cm_seterr(err, errlen, CM_EFORMAT, "unsupported version %u"
                         " (this build reads %u)", h.version, CM_RS_VERSION);
    }
    if (h.header_size != CM_RS_HEADER_SIZE || h.n_sections != CM_RS_N_SECTIONS
        || memcmp(h.pad, zero, sizeof(zero)) != 0)
    {
        return cm_seterr(err, errlen, CM_EFORMAT, "bad header size, section"
                         " count or non-zero reserved bytes");
    }
    if (h.file_size != len) {
        return cm_seterr(err, errlen, CM_EFORMAT, "%s: header says %llu bytes,"
                         " file has %zu", h.file_size > len ? "truncated"
                         : "trailing data", (unsigned long long) h.file_size,
                         len);
    }
    if (h.algo < CM_RS_ALS || h.algo > CM_RS_POP) {
        return cm_seterr(err, errlen, CM_EFORMAT, "unknown algo %u", h.algo);
    }
    if (h.factors > CM_RS_MAX_FACTORS
        || ((h.algo == CM_RS_ALS || h.algo == CM_RS_IALS) && h.factors == 0)
        || ((h.algo == CM_RS_BIAS || h.algo == CM_RS_POP) && h.factors != 0))
    {
        /* the names of cm_rs_algo_name(), which lives beside LAPACK */
        static const char *const names[] = { "", "als", "ials", "bias",
                                             "pop" };

        return cm_seterr(err, errlen, CM_EFORMAT, "factors %u invalid for"
                         " algo %s", h.factors, names[h.algo]);
    }
    if (h.n_users == 0 || h.n_items == 0 || h.nnz > ((uint64_t) 1 << 40)
        || !isfinite(h.mean) || !isfinite(h.reg) || !isfinite(h.alpha)
        || !(h.bias_reg > 0) || !isfinite(h.bias_reg)
        || !(h.reg_exp >= 0 && h.reg_exp <= 2)
        || !(h.conf_thr >= 0 && h.conf_thr <= 10)
        || !(h.conf_below >= 0 && h.conf_below <= 10))
    {
        return cm_seterr(err, errlen, CM_EFORMAT, "bad dims or"
                         " hyper-parameters in header");
    }

    /* all products fit in 64 bits: 2^32 * 2^10 * 4 and 2^40 * 4 */
    want[CM_RS_SEC_U] = (uint64_t) h.n_users * h.factors * 4;
    want[CM_RS_SEC_V] = (uint64_t) h.n_items * h.factors * 4;
    want[CM_RS_SEC_BU] = (uint64_t) h.n_users * 4;
    want[CM_RS_SEC_BI] = (uint64_t) h.n_items * 4;
    want[CM_RS_SEC_USER_IDS] = (uint64_t) h.n_users * 4;
    want[CM_RS_SEC_ITEM_IDS] = (uint64_t) h.n_items * 4;
    want[CM_RS_SEC_POP] = (uint64_t) h.n_items * 4;
    want[CM_RS_SEC_SEEN_PTR] = ((uint64_t) h.n_users + 1) * 8;
    want[CM_RS_SEC_SEEN_IDX] = h.nnz * 4;
    prev_end = CM_RS_HEADER_SIZE;
    for (i = 0; i < CM_RS_N_SECTIONS; i++) {
        const cm_rs_section_t *s = &h.sec[i];

        if (s->length != want[i]) {
            return cm_seterr(err, errlen, CM_EFORMAT, "section %u: length"
                             " %llu, expected %llu for the header's dims", i,
                             (unsigned long long) s->length,
                             (unsigned long long) want[i]);
        }
        if (s->offset % CM_RS_ALIGN != 0 || s->offset < prev_end
            || s->offset > len || s->length > len - s->offset)
        {
            return cm_seterr(err, errlen, CM_EFORMAT, "section %u: offset"
                             " %llu misaligned, overlapping or past the end",
                             i, (unsigned long long) s->offset);
        }
        prev_end = s->offset + s->length;
    }
    if (!(flags & CM_RS_OPEN_SKIP_CHECKSUM)) {
        memset(h.checksum, 0, sizeof(h.checksum));
        crypto_generichash_init(&st, NULL, 0, 32);
        crypto_generichash_update(&st, (const uint8_t *) &h, sizeof(h));
        crypto_generichash_update(&st, b + sizeof(h), len - sizeof(h));
        crypto_generichash_final(&st, sum, 32);
        if (sodium_memcmp(sum, b + offsetof(cm_rs_header_t, checksum), 32)
            != 0)
        {
            return cm_seterr(err, errlen, CM_EFORMAT, "checksum mismatch"
                             " (corrupt file)");
        }
    }

    if (!cm_rsa_finite(b + h.sec[CM_RS_SEC_U].offset,
                       (uint64_t) h.n_users * h.factors)
        || !cm_rsa_finite(b + h.sec[CM_RS_SEC_V].offset,
                          (uint64_t) h.n_items * h.factors)
        || !cm_rsa_finite(b + h.sec[CM_RS_SEC_BU].offset, h.n_users)
        || !cm_rsa_finite(b + h.sec[CM_RS_SEC_BI].offset, h.n_items))
    {
        return cm_seterr(err, errlen, CM_EFORMAT, "non-finite factor or bias");
    }
    if (!cm_rsa_ascending(b + h.sec[CM_RS_SEC_USER_IDS].offset, h.n_users)
        || !cm_rsa_ascending(b + h.sec[CM_RS_SEC_ITEM_IDS].offset, h.n_items))
    {
        return cm_seterr(err, errlen, CM_EFORMAT, "id map not strictly"
                         " ascending");
    }
    ptr = b + h.sec[CM_RS_SEC_SEEN_PTR].offset;
    idx = b + h.sec[CM_RS_SEC_SEEN_IDX].offset;
    memcpy(&lo, ptr, 8);
    memcpy(&hi, ptr + 8 * (uint64_t) h.n_users, 8);
    if (lo != 0 || hi != h.nnz) {
        return cm_seterr(err, errlen, CM_EFORMAT, "seen CSR does not span"
                         " 0..nnz");
    }
    for (u = 0; u < h.n_users; u++) {
        memcpy(&lo, ptr + 8 * u, 8);
        memcpy(&next, ptr + 8 * (u + 1), 8);
        if (next < lo || next > h.nnz) {
            return cm_seterr(err, errlen, CM_EFORMAT, "seen CSR row %llu not"
                             " monotone", (unsigned long long) u);
        }
        for (p = lo; p < next; p++) {
            memcpy(&y, idx + 4 * p, 4);
            if (p > lo) {
                memcpy(&x, idx + 4 * (p - 1), 4);
            }
            if (y >= h.n_items || (p > lo && x >= y)) {
                return cm_seterr(err, errlen, CM_EFORMAT, "seen CSR row %llu:"
                                 " item out of range or unsorted",
                                 (unsigned long long) u);
            }
        }
    }
    return CM_OK;
}


int
cm_rs_artifact_check_file(const char *path, char *err, size_t errlen)
{
    struct stat   sb;
    void         *map;
    int           fd, rc;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return cm_seterr(err, errlen, CM_EIO, "%s: %s", path,
                         strerror(errno));
    }
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode)) {
        close(fd);
        return cm_seterr(err, errlen, CM_EIO, "%s: not a regular file", path);
    }
    if ((size_t) sb.st_size < sizeof(cm_rs_header_t)) {
        close(fd);
        return cm_seterr(err, errlen, CM_EFORMAT, "truncated: %lld bytes is"
                         " less than the %u-byte header",
                         (long long) sb.st_size, CM_RS_HEADER_SIZE);
    }
    map = mmap(NULL, (size_t) sb.st_size, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (map == MAP_FAILED) {
        return cm_seterr(err, errlen, CM_EIO, "%s: mmap: %s", path,
                         strerror(errno));
    }
    rc = cm_rs_artifact_check_mem(map, (size_t) sb.st_size, 0, err, errlen);
    munmap(map, (size_t) sb.st_size);
    return rc;
}

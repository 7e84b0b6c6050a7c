/*
 * recsys_model.c: the recsys artifact (write, mmap + validate) and the
 * scoring API (SGEMM scores, top-K, similar items).
 *
 * Validation order on open: header fields, then every section's offset and
 * length against the dims and the file size (overflow-checked, ordered, no
 * overlap), then the checksum, then contents (ids strictly ascending, CSR
 * monotone and in range, floats finite).  Nothing is dereferenced beyond
 * the header before its section has been checked.
 */
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cblas.h>
#include <sodium.h>

#include "cinematch/common.h"
#include "cinematch/recsys.h"

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "the recsys artifact is little-endian; add byte swapping for this host"
#endif

_Static_assert(sizeof(cm_rs_header_t) == CM_RS_HEADER_SIZE,
               "header must be 512 bytes");
_Static_assert(offsetof(cm_rs_header_t, sec) == 152, "header layout");


static void
cm_rs_expected_lengths(uint32_t k, uint32_t nu, uint32_t ni, uint64_t nnz,
    uint64_t len[CM_RS_N_SECTIONS])
{
    len[CM_RS_SEC_U] = (uint64_t) nu * k * 4;
    len[CM_RS_SEC_V] = (uint64_t) ni * k * 4;
    len[CM_RS_SEC_BU] = (uint64_t) nu * 4;
    len[CM_RS_SEC_BI] = (uint64_t) ni * 4;
    len[CM_RS_SEC_USER_IDS] = (uint64_t) nu * 4;
    len[CM_RS_SEC_ITEM_IDS] = (uint64_t) ni * 4;
    len[CM_RS_SEC_POP] = (uint64_t) ni * 4;
    len[CM_RS_SEC_SEEN_PTR] = ((uint64_t) nu + 1) * 8;
    len[CM_RS_SEC_SEEN_IDX] = nnz * 4;
}


static void
cm_rs_checksum(const uint8_t *file, size_t len, uint8_t out[32])
{
    crypto_generichash_state  st;
    cm_rs_header_t            h;

    if (sodium_init() < 0) {
        /* BLAKE2b needs no init; sodium_init only picks faster code */
    }
    memcpy(&h, file, sizeof(h));
    memset(h.checksum, 0, sizeof(h.checksum));
    crypto_generichash_init(&st, NULL, 0, 32);
    crypto_generichash_update(&st, (const uint8_t *) &h, sizeof(h));
    crypto_generichash_update(&st, file + sizeof(h), len - sizeof(h));
    crypto_generichash_final(&st, out, 32);
}


int
cm_rs_model_write(const cm_rs_model_t *m, const char *path, char *err,
    size_t errlen)
{
    cm_rs_header_t   h;
    const void      *src[CM_RS_N_SECTIONS];
    uint64_t         len[CM_RS_N_SECTIONS], off = CM_RS_HEADER_SIZE;
    uint8_t         *buf;
    char             tmp[4096];
    size_t           i;
    int              fd;
    ssize_t          w;
    size_t           done = 0;

    if (m->algo == CM_RS_ITEMKNN) {
        return cm_seterr(err, errlen, CM_EINVAL, "item-kNN models have no"
                         " artifact format; use als, ials, bias or pop");
    }
    memset(&h, 0, sizeof(h));
    memcpy(h.magic, CM_RS_MAGIC, 8);
    h.version = CM_RS_VERSION;
    h.header_size = CM_RS_HEADER_SIZE;
    h.algo = m->algo;
    h.factors = m->factors;
    h.n_users = m->n_users;
    h.n_items = m->n_items;
    h.nnz = m->nnz;
    h.mean = m->mean;
    h.reg = m->reg;
    h.alpha = m->alpha;
    h.bias_reg = m->bias_reg;
    h.reg_exp = m->reg_exp;
    h.conf_thr = m->conf_thr;
    h.conf_below = m->conf_below;
    h.iters = m->iters;
    h.seed = m->seed;
    h.created = m->created;
    memcpy(h.data_fp, m->data_fp, 32);
    h.n_sections = CM_RS_N_SECTIONS;
    cm_rs_expected_lengths(m->factors, m->n_users, m->n_items, m->nnz, len);
    src[CM_RS_SEC_U] = m->U;
    src[CM_RS_SEC_V] = m->V;
    src[CM_RS_SEC_BU] = m->bu;
    src[CM_RS_SEC_BI] = m->bi;
    src[CM_RS_SEC_USER_IDS] = m->user_ext;
    src[CM_RS_SEC_ITEM_IDS] = m->item_ext;
    src[CM_RS_SEC_POP] = m->pop;
    src[CM_RS_SEC_SEEN_PTR] = m->seen_ptr;
    src[CM_RS_SEC_SEEN_IDX] = m->seen_idx;
    for (i = 0; i < CM_RS_N_SECTIONS; i++) {
        h.sec[i].offset = off;
        h.sec[i].length = len[i];
        off = CM_ALIGN_UP(off + len[i], CM_RS_ALIGN);
    }
    h.file_size = off;

    buf = calloc(1, off);
    if (buf == NULL) {
        return cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
    }
    memcpy(buf, &h, sizeof(h));
    for (i = 0; i < CM_RS_N_SECTIONS; i++) {
        if (len[i] > 0) {
            memcpy(buf + h.sec[i].offset, src[i], len[i]);
        }
    }
    cm_rs_checksum(buf, off, h.checksum);
    memcpy(buf + offsetof(cm_rs_header_t, checksum), h.checksum, 32);

    /* write to a temporary name and rename: readers never see half a file */
    if ((size_t) snprintf(tmp, sizeof(tmp), "%s.tmp.%d", path, (int) getpid())
        >= sizeof(tmp))
    {
        free(buf);
        return cm_seterr(err, errlen, CM_EINVAL, "path too long");
    }
    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        free(buf);
        return cm_seterr(err, errlen, CM_EIO, "%s: %s", tmp, strerror(errno));
    }
    while (done < off) {
        w = write(fd, buf + done, off - done);
        if (w < 0 && errno == EINTR) {
            continue;
        }
        if (w <= 0) {
            break;
        }
        done += (size_t) w;
    }
    free(buf);
    if (done != off || fsync(fd) != 0 || close(fd) != 0) {
        unlink(tmp);
        return cm_seterr(err, errlen, CM_EIO, "%s: write failed", tmp);
    }
    if (rename(tmp, path) != 0) {
        unlink(tmp);
        return cm_seterr(err, errlen, CM_EIO, "%s: %s", path, strerror(errno));
    }
    return CM_OK;
}


static int
cm_rs_all_finite(const float *v, uint64_t n)
{
    uint64_t i;

    for (i = 0; i < n; i++) {
        if (!isfinite(v[i])) {
            return 0;
        }
    }
    return 1;
}


static int
cm_rs_ids_ascending(const int32_t *v, uint32_t n)
{
    uint32_t i;

    for (i = 1; i < n; i++) {
        if (v[i - 1] >= v[i]) {
            return 0;
        }
    }
    return 1;
}


int
cm_rs_model_open_mem(const void *buf, size_t len, unsigned flags,
    cm_rs_model_t **out, char *err, size_t errlen)
{
    const uint8_t   *b = buf;
    cm_rs_header_t   h;
    cm_rs_model_t   *m;
    uint64_t         want[CM_RS_N_SECTIONS], prev_end, p, u;
    uint8_t          sum[32];
    uint32_t         i;
    static const uint8_t zero[sizeof(h.pad)];

    *out = NULL;
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
        return cm_seterr(err, errlen, CM_EFORMAT, "factors %u invalid for"
                         " algo %s", h.factors,
                         cm_rs_algo_name((cm_rs_algo_t) h.algo));
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
    /* all products below fit in 64 bits: 2^32 * 2^10 * 4 and 2^40 * 4 */
    cm_rs_expected_lengths(h.factors, h.n_users, h.n_items, h.nnz, want);
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
        cm_rs_checksum(b, len, sum);
        if (sodium_memcmp(sum, h.checksum, 32) != 0) {
            return cm_seterr(err, errlen, CM_EFORMAT, "checksum mismatch"
                             " (corrupt file)");
        }
    }

    m = calloc(1, sizeof(*m));
    if (m == NULL) {
        return cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
    }
    m->algo = (cm_rs_algo_t) h.algo;
    m->factors = h.factors;
    m->n_users = h.n_users;
    m->n_items = h.n_items;
    m->nnz = h.nnz;
    m->mean = h.mean;
    m->reg = h.reg;
    m->alpha = h.alpha;
    m->bias_reg = h.bias_reg;
    m->reg_exp = h.reg_exp;
    m->conf_thr = h.conf_thr;
    m->conf_below = h.conf_below;
    m->iters = h.iters;
    m->seed = h.seed;
    m->created = h.created;
    memcpy(m->data_fp, h.data_fp, 32);
    memcpy(m->checksum, h.checksum, 32);
    m->U = (const float *) (const void *) (b + h.sec[CM_RS_SEC_U].offset);
    m->V = (const float *) (const void *) (b + h.sec[CM_RS_SEC_V].offset);
    m->bu = (const float *) (const void *) (b + h.sec[CM_RS_SEC_BU].offset);
    m->bi = (const float *) (const void *) (b + h.sec[CM_RS_SEC_BI].offset);
    m->user_ext = (const int32_t *) (const void *) (b + h.sec[CM_RS_SEC_USER_IDS].offset);
    m->item_ext = (const int32_t *) (const void *) (b + h.sec[CM_RS_SEC_ITEM_IDS].offset);
    m->pop = (const uint32_t *) (const void *) (b + h.sec[CM_RS_SEC_POP].offset);
    m->seen_ptr = (const uint64_t *) (const void *) (b + h.sec[CM_RS_SEC_SEEN_PTR].offset);
    m->seen_idx = (const uint32_t *) (const void *) (b + h.sec[CM_RS_SEC_SEEN_IDX].offset);

    if (!cm_rs_all_finite(m->U, (uint64_t) m->n_users * m->factors)
        || !cm_rs_all_finite(m->V, (uint64_t) m->n_items * m->factors)
        || !cm_rs_all_finite(m->bu, m->n_users)
        || !cm_rs_all_finite(m->bi, m->n_items))
    {
        cm_rs_model_free(m);
        return cm_seterr(err, errlen, CM_EFORMAT, "non-finite factor or bias");
    }
    if (!cm_rs_ids_ascending(m->user_ext, m->n_users)
        || !cm_rs_ids_ascending(m->item_ext, m->n_items))
    {
        cm_rs_model_free(m);
        return cm_seterr(err, errlen, CM_EFORMAT, "id map not strictly"
                         " ascending");
    }
    if (m->seen_ptr[0] != 0 || m->seen_ptr[m->n_users] != m->nnz) {
        cm_rs_model_free(m);
        return cm_seterr(err, errlen, CM_EFORMAT, "seen CSR does not span"
                         " 0..nnz");
    }
    for (u = 0; u < m->n_users; u++) {
        if (m->seen_ptr[u + 1] < m->seen_ptr[u]
            || m->seen_ptr[u + 1] > m->nnz)
        {
            cm_rs_model_free(m);
            return cm_seterr(err, errlen, CM_EFORMAT, "seen CSR row %llu not"
                             " monotone", (unsigned long long) u);
        }
        for (p = m->seen_ptr[u]; p < m->seen_ptr[u + 1]; p++) {
            if (m->seen_idx[p] >= m->n_items
                || (p > m->seen_ptr[u] && m->seen_idx[p - 1]
                                          >= m->seen_idx[p]))
            {
                cm_rs_model_free(m);
                return cm_seterr(err, errlen, CM_EFORMAT, "seen CSR row %llu:"
                                 " item out of range or unsorted",
                                 (unsigned long long) u);
            }
        }
    }
    if (cm_rs_model_derive(m) != CM_OK) {
        cm_rs_model_free(m);
        return cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
    }
    *out = m;
    return CM_OK;
}


int
cm_rs_model_open(const char *path, cm_rs_model_t **out, char *err,
    size_t errlen)
{
    int           fd, rc;
    struct stat   st;
    void         *p;
    size_t        len;

    *out = NULL;
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return cm_seterr(err, errlen, errno == ENOENT ? CM_ENOTFOUND : CM_EIO,
                         "%s: %s", path, strerror(errno));
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return cm_seterr(err, errlen, CM_EIO, "%s: not a regular file", path);
    }
    len = (size_t) st.st_size;
    if (len < CM_RS_HEADER_SIZE) {
        close(fd);
        return cm_seterr(err, errlen, CM_EFORMAT, "%s: truncated (%zu bytes)",
                         path, len);
    }
    p = mmap(NULL, len, PROT_READ, MAP_PRIVATE, fd, 0);
    close(fd);
    if (p == MAP_FAILED) {
        return cm_seterr(err, errlen, CM_EIO, "%s: mmap: %s", path,
                         strerror(errno));
    }
    rc = cm_rs_model_open_mem(p, len, 0, out, err, errlen);
    if (rc != CM_OK) {
        char msg[512];

        snprintf(msg, sizeof(msg), "%s", err ? err : "");
        cm_seterr(err, errlen, rc, "%s: %s", path, msg);
        munmap(p, len);
        return rc;
    }
    if (*out == NULL) {
        munmap(p, len);
        return cm_seterr(err, errlen, CM_ERR, "%s: no model", path);
    }
    (*out)->map = p;
    (*out)->map_len = len;
    return CM_OK;
}


/* ---- scoring ------------------------------------------------------------- */

int
cm_rs_score_users(const cm_rs_model_t *m, const uint32_t *users, size_t n,
    float *out)
{
    size_t    a, i, k = m->factors;
    float    *X;

    for (a = 0; a < n; a++) {
        if (users[a] >= m->n_users) {
            return CM_EINVAL;
        }
    }
    if (m->algo == CM_RS_POP) {
        for (a = 0; a < n; a++) {
            for (i = 0; i < m->n_items; i++) {
                out[a * m->n_items + i] = (float) m->pop[i];
            }
        }
        return CM_OK;
    }
    /* out = mu + b_u + b_i, then += X V^T (one SGEMM for the batch) */
    for (a = 0; a < n; a++) {
        float *row = out + a * m->n_items;

        if (m->algo == CM_RS_IALS) {
            memset(row, 0, m->n_items * sizeof(float));
        } else {
            float base = m->mean + m->bu[users[a]];

            for (i = 0; i < m->n_items; i++) {
                row[i] = base + m->bi[i];
            }
        }
    }
    if (k == 0) {
        return CM_OK;
    }
    if (n == 1) {
        /* one user: a matrix-vector product, no copy */
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int) m->n_items, (int) k,
                    1.0f, m->V, (int) k, m->U + (size_t) users[0] * k, 1,
                    1.0f, out, 1);
        return CM_OK;
    }
    X = malloc(n * k * sizeof(float));
    if (X == NULL) {
        return CM_ENOMEM;
    }
    for (a = 0; a < n; a++) {
        memcpy(X + a * k, m->U + (size_t) users[a] * k, k * sizeof(float));
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int) n,
                (int) m->n_items, (int) k, 1.0f, X, (int) k, m->V, (int) k,
                1.0f, out, (int) m->n_items);
    free(X);
    return CM_OK;
}


void
cm_rs_score_vector(const cm_rs_model_t *m, const float *x, float bias,
    float *out)
{
    size_t  i;
    int     ex = m->algo != CM_RS_IALS;

    for (i = 0; i < m->n_items; i++) {
        out[i] = ex ? m->mean + bias + m->bi[i] : 0.0f;
    }
    if (m->factors > 0) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int) m->n_items,
                    (int) m->factors, 1.0f, m->V, (int) m->factors, x, 1,
                    1.0f, out, 1);
    }
}


/* heap of (score, idx), worst at the root: lower score, then higher idx */
static int
cm_rs_worse(float sa, uint32_t ia, float sb, uint32_t ib)
{
    return sa < sb || (sa == sb && ia > ib);
}


static void
cm_rs_sift_down(float *hs, uint32_t *hi, size_t n, size_t i)
{
    size_t    c, w;
    float     ts;
    uint32_t  ti;

    for ( ;; ) {
        w = i;
        c = 2 * i + 1;
        if (c < n && cm_rs_worse(hs[c], hi[c], hs[w], hi[w])) {
            w = c;
        }
        if (c + 1 < n && cm_rs_worse(hs[c + 1], hi[c + 1], hs[w], hi[w])) {
            w = c + 1;
        }
        if (w == i) {
            return;
        }
        ts = hs[i]; hs[i] = hs[w]; hs[w] = ts;
        ti = hi[i]; hi[i] = hi[w]; hi[w] = ti;
        i = w;
    }
}


size_t
cm_rs_topk(const float *scores, uint32_t n, const uint32_t *excl,
    size_t n_excl, size_t k, uint32_t *out_idx, float *out_score)
{
    size_t    h = 0, e = 0, a, j;
    uint32_t  i, ti;
    float     ts;

    if (k == 0) {
        return 0;
    }
    /* out_idx/out_score are the heap while scanning */
    for (i = 0; i < n; i++) {
        /* once the heap is full most items lose to its root: skip them
         * before anything else (NaN fails the comparison too); the
         * exclusion cursor catches up lazily */
        if (h == k && !(scores[i] >= out_score[0])) {
            continue;
        }
        while (e < n_excl && excl[e] < i) {
            e++;
        }
        if (e < n_excl && excl[e] == i) {
            continue;
        }
        if (isnan(scores[i])) {
            continue;
        }
        if (h < k) {
            out_score[h] = scores[i];
            out_idx[h] = i;
            h++;
            /* sift up */
            for (j = h - 1; j > 0; j = a) {
                a = (j - 1) / 2;
                if (!cm_rs_worse(out_score[j], out_idx[j], out_score[a],
                                 out_idx[a]))
                {
                    break;
                }
                ts = out_score[j]; out_score[j] = out_score[a];
                out_score[a] = ts;
                ti = out_idx[j]; out_idx[j] = out_idx[a]; out_idx[a] = ti;
            }
        } else if (cm_rs_worse(out_score[0], out_idx[0], scores[i], i)) {
            out_score[0] = scores[i];
            out_idx[0] = i;
            cm_rs_sift_down(out_score, out_idx, h, 0);
        }
    }
    /* heap sort: pop the worst to the end, best ends first */
    for (j = h; j > 1; j--) {
        ts = out_score[0]; out_score[0] = out_score[j - 1];
        out_score[j - 1] = ts;
        ti = out_idx[0]; out_idx[0] = out_idx[j - 1]; out_idx[j - 1] = ti;
        cm_rs_sift_down(out_score, out_idx, j - 1, 0);
    }
    return h;
}


int
cm_rs_recommend(const cm_rs_model_t *m, uint32_t user, size_t k,
    int exclude_seen, uint32_t *out_idx, float *out_score, size_t *n_out)
{
    float  *s;
    int     rc;

    if (user >= m->n_users) {
        return CM_EINVAL;
    }
    s = malloc(m->n_items * sizeof(float));
    if (s == NULL) {
        return CM_ENOMEM;
    }
    rc = cm_rs_score_users(m, &user, 1, s);
    if (rc == CM_OK) {
        *n_out = cm_rs_topk(s, m->n_items,
                            exclude_seen ? m->seen_idx + m->seen_ptr[user]
                                         : NULL,
                            exclude_seen ? m->seen_ptr[user + 1]
                                           - m->seen_ptr[user] : 0,
                            k, out_idx, out_score);
    }
    free(s);
    return rc;
}


int
cm_rs_similar_items(const cm_rs_model_t *m, uint32_t item, size_t k,
    uint32_t *out_idx, float *out_score, size_t *n_out)
{
    float     *s, nq;
    uint32_t   i, self = item;

    if (item >= m->n_items || m->factors == 0 || m->v_norm == NULL) {
        return CM_EINVAL;
    }
    s = malloc(m->n_items * sizeof(float));
    if (s == NULL) {
        return CM_ENOMEM;
    }
    cblas_sgemv(CblasRowMajor, CblasNoTrans, (int) m->n_items,
                (int) m->factors, 1.0f, m->V, (int) m->factors,
                m->V + (size_t) item * m->factors, 1, 0.0f, s, 1);
    nq = m->v_norm[item];
    for (i = 0; i < m->n_items; i++) {
        float den = nq * m->v_norm[i];

        s[i] = den > 0 ? s[i] / den : 0.0f;
    }
    *n_out = cm_rs_topk(s, m->n_items, &self, 1, k, out_idx, out_score);
    free(s);
    return CM_OK;
}


int
cm_rs_explain(const cm_rs_model_t *m, uint32_t user, uint32_t item,
    uint32_t *because, float *sim)
{
    uint64_t  p;
    uint32_t  j, k = m->factors;
    float     best = -2.0f, c, den;
    int       found = 0;

    if (user >= m->n_users || item >= m->n_items || k == 0
        || m->v_norm == NULL)
    {
        return CM_EINVAL;
    }
    for (p = m->seen_ptr[user]; p < m->seen_ptr[user + 1]; p++) {
        j = m->seen_idx[p];
        if (j == item) {
            continue;
        }
        den = m->v_norm[item] * m->v_norm[j];
        c = den > 0 ? cblas_sdot((int) k, m->V + (size_t) item * k, 1,
                                 m->V + (size_t) j * k, 1) / den
                    : 0.0f;
        if (!found || c > best) {
            best = c;
            *because = j;
            found = 1;
        }
    }
    if (!found) {
        return CM_ENOTFOUND;
    }
    *sim = best;
    return CM_OK;
}


int
cm_rs_popular(const cm_rs_model_t *m, const uint32_t *excl, size_t n_excl,
    size_t k, uint32_t *out_idx, float *out_score, size_t *n_out)
{
    float     *s;
    uint32_t   i;

    s = malloc((m->n_items ? m->n_items : 1) * sizeof(float));
    if (s == NULL) {
        return CM_ENOMEM;
    }
    for (i = 0; i < m->n_items; i++) {
        s[i] = (float) m->pop[i];
    }
    *n_out = cm_rs_topk(s, m->n_items, excl, n_excl, k, out_idx, out_score);
    free(s);
    return CM_OK;
}

/*
 * recsys_train.c: training matrix, ALS / iALS / bias / popularity / item-kNN
 * training, the no-BLAS reference ALS, and fold-in.
 *
 * Row solve (explicit, one user or one item with n ratings, kk = k + 1
 * unknowns: the factors and the bias):
 *     G (n, kk) = [Y[j], 1] for each rated j      t (n) = r - mu - b_j
 *     n >  kk:  (G^T G + lambda n I) x = G^T t             (kk x kk)
 *     n <= kk:  x = G^T z,  (G G^T + lambda n I) z = t     (n x n)
 * Both give the same ridge solution; the second is the cheap one for the
 * long tail (most MovieLens films have fewer ratings than factors), which
 * roughly halves an iteration.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <cblas.h>
#include <lapacke.h>
#include <sodium.h>

#include "cinematch/common.h"
#include "cinematch/recsys.h"
#include "cinematch/rng.h"

#define CM_RS_CHUNK  8      /* rows per work-counter grab */

typedef struct {
    uint32_t   user;
    uint32_t   item;
    float      rating;
    int64_t    ts;
} cm_rs_trip_t;

/* One half-iteration: solve every row of X given Y. */
typedef struct {
    const cm_rs_data_t  *d;
    cm_rs_algo_t         algo;
    int                  by_user;   /* rows are users (else items) */
    uint32_t             k;
    float                reg;
    float                alpha;
    float                mean;
    float                bias_reg;  /* bias reg = reg * bias_reg */
    float                reg_exp;   /* row reg = reg * n^reg_exp */
    float                conf_thr;  /* iALS: ratings below get ... */
    float                conf_below;/* ... confidence 1 + alpha below r */
    uint32_t             cg_steps;  /* 0: exact Cholesky solves */
    const float         *Y;         /* (n_other, k) */
    const float         *yb;        /* (n_other) or NULL */
    const float         *gram;      /* (k, k) Y^T Y for iALS */
    float               *X;         /* (n_rows, k) out */
    float               *xb;        /* (n_rows) out or NULL */
    uint32_t             n_rows;
    uint32_t             next;      /* atomic work counter */
    float              **scratch;   /* per thread */
    int                  failed;
} cm_rs_job_t;

typedef struct {
    cm_rs_job_t  *job;
    uint32_t      tid;
} cm_rs_worker_t;


const char *
cm_rs_algo_name(cm_rs_algo_t a)
{
    switch (a) {
    case CM_RS_ALS:     return "als";
    case CM_RS_IALS:    return "ials";
    case CM_RS_BIAS:    return "bias";
    case CM_RS_POP:     return "pop";
    case CM_RS_ITEMKNN: return "itemknn";
    default:            return "unknown";
    }
}


int
cm_rs_algo_parse(const char *s, cm_rs_algo_t *a)
{
    static const cm_rs_algo_t all[] = { CM_RS_ALS, CM_RS_IALS, CM_RS_BIAS,
                                        CM_RS_POP, CM_RS_ITEMKNN };
    size_t i;

    for (i = 0; i < CM_ARRAY_SIZE(all); i++) {
        if (strcmp(s, cm_rs_algo_name(all[i])) == 0) {
            *a = all[i];
            return CM_OK;
        }
    }
    return CM_EINVAL;
}


void
cm_rs_train_conf_default(cm_rs_train_conf_t *c)
{
    memset(c, 0, sizeof(*c));
    c->algo = CM_RS_ALS;
    c->factors = 64;
    c->iters = 15;
    c->threads = 1;
    c->reg = 0.05f;
    c->alpha = 1.0f;
    c->knn = 100;
    c->bias_reg = 1.0f;
    c->reg_exp = -1.0f;                 /* als 1, ials 0 */
    c->conf_thr = 0.0f;
    c->conf_below = 1.0f;
    c->seed = 1;
}


/* ---- training matrix ----------------------------------------------------- */

static int
cm_rs_cmp_ext(const void *a, const void *b)
{
    int32_t x = *(const int32_t *) a, y = *(const int32_t *) b;

    return (x > y) - (x < y);
}


static int
cm_rs_cmp_trip(const void *a, const void *b)
{
    const cm_rs_trip_t *x = a, *y = b;

    if (x->user != y->user) {
        return x->user < y->user ? -1 : 1;
    }
    if (x->item != y->item) {
        return x->item < y->item ? -1 : 1;
    }
    return (x->ts > y->ts) - (x->ts < y->ts);
}


#define CM_RS_LUT_MAX  (1 << 26)   /* ids up to this use a lookup table */

/*
 * Sorted distinct ids of one column and, when the ids are small enough
 * (MovieLens ids are under a million), a table id -> dense index, which
 * turns the mapping of 20M ratings from binary searches into loads.
 */
static int32_t *
cm_rs_unique_ids(const cm_rating_t *r, size_t n, int users, uint32_t *count,
    int32_t **lut_out)
{
    int32_t  *v, *lut, id, max = 0;
    size_t    i, m = 0;

    *lut_out = NULL;
    for (i = 0; i < n; i++) {
        id = users ? r[i].user : r[i].item;
        max = id > max ? id : max;
    }
    if (max >= 0 && max < CM_RS_LUT_MAX) {
        lut = malloc(((size_t) max + 1) * sizeof(int32_t));
        if (lut != NULL) {
            memset(lut, 0xff, ((size_t) max + 1) * sizeof(int32_t));
            for (i = 0; i < n; i++) {
                id = users ? r[i].user : r[i].item;
                if (id >= 0) {
                    lut[id] = 0;
                }
            }
            for (id = 0; id <= max; id++) {
                m += lut[id] == 0;
            }
            v = malloc((m ? m : 1) * sizeof(int32_t));
            if (v == NULL) {
                free(lut);
                return NULL;
            }
            m = 0;
            for (id = 0; id <= max; id++) {
                if (lut[id] == 0) {
                    lut[id] = (int32_t) m;
                    v[m++] = id;
                }
            }
            *count = (uint32_t) m;
            *lut_out = lut;
            return v;
        }
    }
    v = malloc((n ? n : 1) * sizeof(int32_t));
    if (v == NULL) {
        return NULL;
    }
    for (i = 0; i < n; i++) {
        v[i] = users ? r[i].user : r[i].item;
    }
    qsort(v, n, sizeof(int32_t), cm_rs_cmp_ext);
    for (i = 0; i < n; i++) {
        if (m == 0 || v[m - 1] != v[i]) {
            v[m++] = v[i];
        }
    }
    *count = (uint32_t) m;
    return v;
}


int64_t
cm_rs_find_id(const int32_t *sorted, uint32_t n, int32_t ext)
{
    uint32_t lo = 0, hi = n;

    while (lo < hi) {
        uint32_t mid = lo + (hi - lo) / 2;

        if (sorted[mid] < ext) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return (lo < n && sorted[lo] == ext) ? (int64_t) lo : -1;
}


void
cm_rs_data_free(cm_rs_data_t *d)
{
    free(d->user_ext); free(d->item_ext);
    free(d->u_ptr); free(d->u_idx); free(d->u_val);
    free(d->i_ptr); free(d->i_idx); free(d->i_val);
    memset(d, 0, sizeof(*d));
}


int
cm_rs_data_build(const cm_rating_t *r, size_t n, cm_rs_data_t *d, char *err,
    size_t errlen)
{
    cm_rs_trip_t  *t = NULL;
    size_t         i, m = 0;
    uint64_t      *fill = NULL;
    int32_t       *ulut = NULL, *ilut = NULL;
    double         sum = 0;

    memset(d, 0, sizeof(*d));
    if (n == 0) {
        return cm_seterr(err, errlen, CM_EINVAL, "no ratings to train on");
    }
    d->user_ext = cm_rs_unique_ids(r, n, 1, &d->n_users, &ulut);
    d->item_ext = cm_rs_unique_ids(r, n, 0, &d->n_items, &ilut);
    t = calloc(n, sizeof(*t));          /* every slot is written below */
    fill = calloc((size_t) d->n_users + 1, sizeof(uint64_t));
    if (d->user_ext == NULL || d->item_ext == NULL || t == NULL
        || fill == NULL)
    {
        goto nomem;
    }
#define CM_RS_UIDX(x) (ulut ? (uint32_t) ulut[(x)->user]                      \
                            : (uint32_t) cm_rs_find_id(d->user_ext,           \
                                                       d->n_users, (x)->user))
    /* counting sort by user (two passes, no second copy), then each
     * user's run by (item, ts) */
    for (i = 0; i < n; i++) {
        fill[CM_RS_UIDX(&r[i]) + 1]++;
    }
    for (i = 0; i < d->n_users; i++) {
        fill[i + 1] += fill[i];
    }
    for (i = 0; i < n; i++) {
        uint32_t       u = CM_RS_UIDX(&r[i]);
        cm_rs_trip_t  *x = &t[fill[u]++];

        x->user = u;
        x->item = ilut ? (uint32_t) ilut[r[i].item]
                       : (uint32_t) cm_rs_find_id(d->item_ext, d->n_items,
                                                  r[i].item);
        x->rating = r[i].rating;
        x->ts = r[i].ts;
    }
#undef CM_RS_UIDX
    for (i = 0; i < d->n_users; i++) {
        uint64_t lo = i ? fill[i - 1] : 0, hi = fill[i];

        if (hi - lo > 1) {
            qsort(t + lo, hi - lo, sizeof(*t), cm_rs_cmp_trip);
        }
    }
    free(fill);
    fill = NULL;
    free(ulut);
    free(ilut);
    ulut = ilut = NULL;
    /* duplicates: the last of a (user, item) run has the latest ts */
    for (i = 0; i < n; i++) {
        if (i + 1 < n && t[i + 1].user == t[i].user
            && t[i + 1].item == t[i].item)
        {
            continue;
        }
        t[m++] = t[i];
    }
    d->nnz = m;
    d->u_ptr = calloc(d->n_users + 1, sizeof(uint64_t));
    d->i_ptr = calloc(d->n_items + 1, sizeof(uint64_t));
    d->u_idx = malloc(m * sizeof(uint32_t));
    d->u_val = malloc(m * sizeof(float));
    d->i_idx = malloc(m * sizeof(uint32_t));
    d->i_val = malloc(m * sizeof(float));
    fill = malloc((d->n_items + 1) * sizeof(uint64_t));
    if (d->u_ptr == NULL || d->i_ptr == NULL || d->u_idx == NULL
        || d->u_val == NULL || d->i_idx == NULL || d->i_val == NULL
        || fill == NULL)
    {
        goto nomem;
    }
    for (i = 0; i < m; i++) {
        d->u_ptr[t[i].user + 1]++;
        d->i_ptr[t[i].item + 1]++;
        d->u_idx[i] = t[i].item;
        d->u_val[i] = t[i].rating;
        sum += t[i].rating;
    }
    for (i = 0; i < d->n_users; i++) {
        d->u_ptr[i + 1] += d->u_ptr[i];
    }
    for (i = 0; i < d->n_items; i++) {
        d->i_ptr[i + 1] += d->i_ptr[i];
    }
    memcpy(fill, d->i_ptr, (d->n_items + 1) * sizeof(uint64_t));
    for (i = 0; i < m; i++) {           /* users ascending: columns sorted */
        uint64_t p = fill[t[i].item]++;

        d->i_idx[p] = t[i].user;
        d->i_val[p] = t[i].rating;
    }
    d->mean = (float) (sum / (double) m);
    free(t);
    free(fill);
    return CM_OK;

nomem:
    free(t);
    free(fill);
    free(ulut);
    free(ilut);
    cm_rs_data_free(d);
    return cm_seterr(err, errlen, CM_ENOMEM, "out of memory building the"
                     " training matrix");
}


void
cm_rs_data_fingerprint(const cm_rs_data_t *d, uint8_t out[32])
{
    crypto_generichash_state  st;
    uint64_t                  dims[3] = { d->n_users, d->n_items, d->nnz };

    if (sodium_init() < 0) {
        memset(out, 0, 32);
        return;
    }
    crypto_generichash_init(&st, NULL, 0, 32);
    crypto_generichash_update(&st, (const void *) dims, sizeof(dims));
    crypto_generichash_update(&st, (const void *) d->user_ext,
                              d->n_users * sizeof(int32_t));
    crypto_generichash_update(&st, (const void *) d->item_ext,
                              d->n_items * sizeof(int32_t));
    crypto_generichash_update(&st, (const void *) d->u_ptr,
                              (d->n_users + 1) * sizeof(uint64_t));
    crypto_generichash_update(&st, (const void *) d->u_idx,
                              d->nnz * sizeof(uint32_t));
    crypto_generichash_update(&st, (const void *) d->u_val,
                              d->nnz * sizeof(float));
    crypto_generichash_final(&st, out, 32);
}


/* ---- models -------------------------------------------------------------- */

void
cm_rs_model_free(cm_rs_model_t *m)
{
    if (m == NULL) {
        return;
    }
    if (m->map != NULL) {
        munmap(m->map, m->map_len);
    }
    free(m->mem);
    free(m->v_norm);
    free(m->gram);
    free(m->nn_idx);
    free(m->nn_sim);
    free(m);
}


/*
 * One allocation for every array of a trained model (64-byte aligned
 * pieces, like the artifact), filled with ids, popularity and seen CSR.
 */
static int
cm_rs_model_alloc(const cm_rs_data_t *d, cm_rs_algo_t algo, uint32_t k,
    cm_rs_model_t **out)
{
    cm_rs_model_t  *m;
    size_t          sz[CM_RS_N_SECTIONS], off[CM_RS_N_SECTIONS], total = 0;
    size_t          i;
    char           *base;

    sz[CM_RS_SEC_U] = (size_t) d->n_users * k * sizeof(float);
    sz[CM_RS_SEC_V] = (size_t) d->n_items * k * sizeof(float);
    sz[CM_RS_SEC_BU] = d->n_users * sizeof(float);
    sz[CM_RS_SEC_BI] = d->n_items * sizeof(float);
    sz[CM_RS_SEC_USER_IDS] = d->n_users * sizeof(int32_t);
    sz[CM_RS_SEC_ITEM_IDS] = d->n_items * sizeof(int32_t);
    sz[CM_RS_SEC_POP] = d->n_items * sizeof(uint32_t);
    sz[CM_RS_SEC_SEEN_PTR] = (d->n_users + 1) * sizeof(uint64_t);
    sz[CM_RS_SEC_SEEN_IDX] = d->nnz * sizeof(uint32_t);
    for (i = 0; i < CM_RS_N_SECTIONS; i++) {
        off[i] = total;
        total += CM_ALIGN_UP(sz[i], CM_RS_ALIGN);
    }
    m = calloc(1, sizeof(*m));
    if (m == NULL) {
        return CM_ENOMEM;
    }
    if (posix_memalign(&m->mem, CM_RS_ALIGN, total ? total : CM_RS_ALIGN)
        != 0)
    {
        free(m);
        return CM_ENOMEM;
    }
    base = m->mem;
    memset(base, 0, total);
    m->algo = algo;
    m->bias_reg = 1.0f;
    m->reg_exp = 1.0f;
    m->factors = k;
    m->n_users = d->n_users;
    m->n_items = d->n_items;
    m->nnz = d->nnz;
    m->mean = d->mean;
    m->U = (float *) (void *) (base + off[CM_RS_SEC_U]);
    m->V = (float *) (void *) (base + off[CM_RS_SEC_V]);
    m->bu = (float *) (void *) (base + off[CM_RS_SEC_BU]);
    m->bi = (float *) (void *) (base + off[CM_RS_SEC_BI]);
    m->user_ext = (int32_t *) (void *) (base + off[CM_RS_SEC_USER_IDS]);
    m->item_ext = (int32_t *) (void *) (base + off[CM_RS_SEC_ITEM_IDS]);
    m->pop = (uint32_t *) (void *) (base + off[CM_RS_SEC_POP]);
    m->seen_ptr = (uint64_t *) (void *) (base + off[CM_RS_SEC_SEEN_PTR]);
    m->seen_idx = (uint32_t *) (void *) (base + off[CM_RS_SEC_SEEN_IDX]);
    memcpy((void *) m->user_ext, d->user_ext, sz[CM_RS_SEC_USER_IDS]);
    memcpy((void *) m->item_ext, d->item_ext, sz[CM_RS_SEC_ITEM_IDS]);
    memcpy((void *) m->seen_ptr, d->u_ptr, sz[CM_RS_SEC_SEEN_PTR]);
    memcpy((void *) m->seen_idx, d->u_idx, sz[CM_RS_SEC_SEEN_IDX]);
    for (i = 0; i < d->n_items; i++) {
        ((uint32_t *) m->pop)[i] = (uint32_t) (d->i_ptr[i + 1] - d->i_ptr[i]);
    }
    cm_rs_data_fingerprint(d, m->data_fp);
    *out = m;
    return CM_OK;
}


int
cm_rs_model_derive(cm_rs_model_t *m)
{
    uint32_t  i, k = m->factors;

    free(m->v_norm);
    free(m->gram);
    m->v_norm = NULL;
    m->gram = NULL;
    if (k == 0) {
        return CM_OK;
    }
    m->v_norm = malloc((m->n_items ? m->n_items : 1) * sizeof(float));
    m->gram = calloc((size_t) k * k, sizeof(float));
    if (m->v_norm == NULL || m->gram == NULL) {
        return CM_ENOMEM;
    }
    for (i = 0; i < m->n_items; i++) {
        m->v_norm[i] = cblas_snrm2((int) k, m->V + (size_t) i * k, 1);
    }
    if (m->n_items > 0) {
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (int) k,
                    (int) m->n_items, 1.0f, m->V, (int) k, 0.0f, m->gram,
                    (int) k);
    }
    return CM_OK;
}


/* ---- the row solves ------------------------------------------------------ */

/*
 * Solve the SPD system A x = b in place (b becomes x).  A is row-major with
 * its upper triangle filled (what ssyrk(RowMajor, Upper) leaves), i.e. the
 * lower triangle in column-major terms, so the LAPACK routine can take it
 * as is: LAPACKE_sposv(ROW_MAJOR) would transpose into a fresh allocation
 * on every call, which cost more than the solve at k = 64.
 */
static int
cm_rs_posv(float *A, float *b, size_t n)
{
    return LAPACKE_sposv_work(LAPACK_COL_MAJOR, 'L', (int) n, 1, A, (int) n,
                              b, (int) n);
}


/* weighted-lambda: a row with n ratings is regularised by reg * n^e */
static float
cm_rs_row_weight(double n, float e)
{
    return e == 1.0f ? (float) n : (float) pow(n, e);
}


/* scratch floats one thread needs for rows of at most max_n entries */
static size_t
cm_rs_scratch_size(uint32_t k, uint64_t max_n)
{
    size_t kk = k + 1;

    return max_n * kk                   /* G */
           + 2 * max_n                  /* t, z */
           + kk * kk + kk               /* A, rhs */
           + (kk + 1) * (kk + 1);       /* K (dual, n <= kk) */
}


/*
 * Explicit row solve; see the top of the file.  idx/val: the row's ratings,
 * Y/yb: the other side; x (k) and *b out.  reg_w: lambda * n (ALS) or
 * lambda (bias-only).  Returns 0 or a LAPACK info.
 */
static int
cm_rs_solve_explicit(uint32_t k, const uint32_t *idx, const float *val,
    size_t n, const float *Y, const float *yb, float mean, float reg_w,
    float bias_reg, float *x, float *b, float *s)
{
    /* the bias column is 1/sqrt(bias_reg): solving with a uniform reg_w
     * then gives b' = sqrt(bias_reg) b, i.e. reg_w * bias_reg on b */
    float    bc = 1.0f / sqrtf(bias_reg);
    size_t   kk = k + 1, j, c;
    float   *G = s, *t = G + n * kk, *z = t + n, *A = z + n, *rhs = A + kk * kk;
    int      info;

    if (n == 0) {
        memset(x, 0, k * sizeof(float));
        *b = 0;
        return 0;
    }
    for (j = 0; j < n; j++) {
        const float *y = Y + (size_t) idx[j] * k;

        memcpy(G + j * kk, y, k * sizeof(float));
        G[j * kk + k] = bc;
        t[j] = val[j] - mean - (yb ? yb[idx[j]] : 0.0f);
    }
    if (n <= kk) {
        /* dual: (G G^T + reg I) z = t, x = G^T z */
        float *K = rhs + kk;

        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasNoTrans, (int) n,
                    (int) kk, 1.0f, G, (int) kk, 0.0f, K, (int) n);
        for (j = 0; j < n; j++) {
            K[j * n + j] += reg_w;
            z[j] = t[j];
        }
        info = cm_rs_posv(K, z, n);
        if (info != 0) {
            return info;
        }
        cblas_sgemv(CblasRowMajor, CblasTrans, (int) n, (int) kk, 1.0f, G,
                    (int) kk, z, 1, 0.0f, rhs, 1);
    } else {
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (int) kk, (int) n,
                    1.0f, G, (int) kk, 0.0f, A, (int) kk);
        for (c = 0; c < kk; c++) {
            A[c * kk + c] += reg_w;
        }
        cblas_sgemv(CblasRowMajor, CblasTrans, (int) n, (int) kk, 1.0f, G,
                    (int) kk, t, 1, 0.0f, rhs, 1);
        info = cm_rs_posv(A, rhs, kk);
        if (info != 0) {
            return info;
        }
    }
    memcpy(x, rhs, k * sizeof(float));
    *b = rhs[k] * bc;
    return 0;
}


/*
 * iALS row solve: (gram + sum_j (c_j - 1) y_j y_j^T + reg I) x
 * = sum_j c_j y_j, c_j = 1 + alpha r_j, or 1 + alpha below r_j for ratings
 * under thr (a 2-star rating is a weaker "watched it" signal).
 */
static int
cm_rs_solve_implicit(uint32_t k, const uint32_t *idx, const float *val,
    size_t n, const float *Y, const float *gram, float alpha, float thr,
    float below, float reg, float *x, float *s)
{
    size_t   j, c;
    float   *G = s, *A = G + n * (k + 1);
    float   *rhs = A + (size_t) (k + 1) * (k + 1), w;

    memcpy(A, gram, (size_t) k * k * sizeof(float));
    memset(rhs, 0, k * sizeof(float));
    for (j = 0; j < n; j++) {
        const float *y = Y + (size_t) idx[j] * k;
        float        cj = 1.0f + alpha * val[j] * (val[j] >= thr ? 1.0f
                                                                 : below);

        w = sqrtf(cj - 1.0f);
        for (c = 0; c < k; c++) {
            G[j * k + c] = w * y[c];
            rhs[c] += cj * y[c];
        }
    }
    if (n > 0) {
        cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (int) k, (int) n,
                    1.0f, G, (int) k, 1.0f, A, (int) k);
    }
    for (c = 0; c < k; c++) {
        A[c * k + c] += reg;
    }
    if (n == 0) {
        memset(x, 0, k * sizeof(float));
        return 0;
    }
    c = (size_t) cm_rs_posv(A, rhs, k);
    memcpy(x, rhs, k * sizeof(float));
    return (int) c;
}


/*
 * Conjugate-gradient variants (Takacs et al.; what `implicit` does for
 * iALS): a few CG steps warm-started from the row's current vector instead
 * of an exact solve.  A product with the system matrix costs O(n k) here
 * against O(n k^2) to form it, so long rows get ~k/4 times cheaper; the
 * solution is inexact, so the loss is no longer guaranteed monotone.
 */
static void
cm_rs_cg_explicit(uint32_t k, const uint32_t *idx, const float *val,
    size_t n, const float *Y, const float *yb, float mean, float reg_w,
    float bias_reg, uint32_t steps, float *x, float *b, float *s)
{
    size_t    kk = k + 1, j;
    float     bc = 1.0f / sqrtf(bias_reg);
    float    *G = s, *t = G + n * kk, *Gp = t + n, *w = Gp + n;
    float    *r = w + kk, *p = r + kk, *Ap = p + kk;
    float     rs, rs_new, a;
    uint32_t  it;

    for (j = 0; j < n; j++) {
        memcpy(G + j * kk, Y + (size_t) idx[j] * k, k * sizeof(float));
        G[j * kk + k] = bc;
        t[j] = val[j] - mean - (yb ? yb[idx[j]] : 0.0f);
    }
    memcpy(w, x, k * sizeof(float));
    w[k] = *b / bc;
    /* r = G^T (t - G w) - reg w */
    cblas_sgemv(CblasRowMajor, CblasNoTrans, (int) n, (int) kk, -1.0f, G,
                (int) kk, w, 1, 1.0f, t, 1);
    cblas_sgemv(CblasRowMajor, CblasTrans, (int) n, (int) kk, 1.0f, G,
                (int) kk, t, 1, 0.0f, r, 1);
    cblas_saxpy((int) kk, -reg_w, w, 1, r, 1);
    memcpy(p, r, kk * sizeof(float));
    rs = cblas_sdot((int) kk, r, 1, r, 1);
    for (it = 0; it < steps && rs > 1e-20f; it++) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int) n, (int) kk, 1.0f, G,
                    (int) kk, p, 1, 0.0f, Gp, 1);
        cblas_sgemv(CblasRowMajor, CblasTrans, (int) n, (int) kk, 1.0f, G,
                    (int) kk, Gp, 1, 0.0f, Ap, 1);
        cblas_saxpy((int) kk, reg_w, p, 1, Ap, 1);
        a = rs / cblas_sdot((int) kk, p, 1, Ap, 1);
        cblas_saxpy((int) kk, a, p, 1, w, 1);
        cblas_saxpy((int) kk, -a, Ap, 1, r, 1);
        rs_new = cblas_sdot((int) kk, r, 1, r, 1);
        for (j = 0; j < kk; j++) {
            p[j] = r[j] + (rs_new / rs) * p[j];
        }
        rs = rs_new;
    }
    memcpy(x, w, k * sizeof(float));
    *b = w[k] * bc;
}


static void
cm_rs_cg_implicit(uint32_t k, const uint32_t *idx, const float *val,
    size_t n, const float *Y, const float *gram, float alpha, float thr,
    float below, float reg, uint32_t steps, float *x, float *s)
{
    size_t    j;
    float    *G = s, *cm1 = G + n * k, *Gp = cm1 + n, *r = Gp + n;
    float    *p = r + k, *Ap = p + k, rs, rs_new, a;
    uint32_t  it;

    /* r = sum_j c_j y_j - (gram x + sum_j (c_j - 1)(y_j.x) y_j + reg x) */
    for (j = 0; j < n; j++) {
        memcpy(G + j * k, Y + (size_t) idx[j] * k, k * sizeof(float));
        cm1[j] = alpha * val[j] * (val[j] >= thr ? 1.0f : below);
    }
    cblas_sgemv(CblasRowMajor, CblasNoTrans, (int) n, (int) k, 1.0f, G,
                (int) k, x, 1, 0.0f, Gp, 1);
    for (j = 0; j < n; j++) {
        Gp[j] = (1.0f + cm1[j]) - cm1[j] * Gp[j];
    }
    cblas_sgemv(CblasRowMajor, CblasTrans, (int) n, (int) k, 1.0f, G,
                (int) k, Gp, 1, 0.0f, r, 1);
    cblas_ssymv(CblasRowMajor, CblasUpper, (int) k, -1.0f, gram, (int) k, x,
                1, 1.0f, r, 1);
    cblas_saxpy((int) k, -reg, x, 1, r, 1);
    memcpy(p, r, k * sizeof(float));
    rs = cblas_sdot((int) k, r, 1, r, 1);
    for (it = 0; it < steps && rs > 1e-20f; it++) {
        cblas_sgemv(CblasRowMajor, CblasNoTrans, (int) n, (int) k, 1.0f, G,
                    (int) k, p, 1, 0.0f, Gp, 1);
        for (j = 0; j < n; j++) {
            Gp[j] *= cm1[j];
        }
        cblas_sgemv(CblasRowMajor, CblasTrans, (int) n, (int) k, 1.0f, G,
                    (int) k, Gp, 1, 0.0f, Ap, 1);
        cblas_ssymv(CblasRowMajor, CblasUpper, (int) k, 1.0f, gram, (int) k,
                    p, 1, 1.0f, Ap, 1);
        cblas_saxpy((int) k, reg, p, 1, Ap, 1);
        a = rs / cblas_sdot((int) k, p, 1, Ap, 1);
        cblas_saxpy((int) k, a, p, 1, x, 1);
        cblas_saxpy((int) k, -a, Ap, 1, r, 1);
        rs_new = cblas_sdot((int) k, r, 1, r, 1);
        for (j = 0; j < k; j++) {
            p[j] = r[j] + (rs_new / rs) * p[j];
        }
        rs = rs_new;
    }
}


static void
cm_rs_solve_row(cm_rs_job_t *j, uint32_t row, float *s)
{
    const cm_rs_data_t  *d = j->d;
    const uint64_t      *ptr = j->by_user ? d->u_ptr : d->i_ptr;
    const uint32_t      *idx = j->by_user ? d->u_idx : d->i_idx;
    const float         *val = j->by_user ? d->u_val : d->i_val;
    size_t               n = ptr[row + 1] - ptr[row];
    float                b = 0, *x = j->X + (size_t) row * j->k;
    int                  info;

    if (j->algo == CM_RS_IALS) {
        float reg_w = j->reg_exp > 0 && n > 0
                      ? j->reg * cm_rs_row_weight((double) n, j->reg_exp)
                      : j->reg;

        if (j->cg_steps > 0 && n > 0) {
            cm_rs_cg_implicit(j->k, idx + ptr[row], val + ptr[row], n, j->Y,
                              j->gram, j->alpha, j->conf_thr, j->conf_below,
                              reg_w, j->cg_steps, x, s);
            info = 0;
        } else {
            info = cm_rs_solve_implicit(j->k, idx + ptr[row], val + ptr[row],
                                        n, j->Y, j->gram, j->alpha,
                                        j->conf_thr, j->conf_below, reg_w, x,
                                        s);
        }
    } else if (j->cg_steps > 0 && n > (size_t) j->k + 1) {
        float reg_w = j->algo == CM_RS_ALS
                      ? j->reg * cm_rs_row_weight((double) n, j->reg_exp)
                      : j->reg;

        b = j->xb[row];
        cm_rs_cg_explicit(j->k, idx + ptr[row], val + ptr[row], n, j->Y,
                          j->yb, j->mean, reg_w, j->bias_reg, j->cg_steps, x,
                          &b, s);
        j->xb[row] = b;
        info = 0;
    } else {
        float reg_w = j->algo == CM_RS_ALS
                      ? j->reg * cm_rs_row_weight((double) n, j->reg_exp)
                      : j->reg;

        info = cm_rs_solve_explicit(j->k, idx + ptr[row], val + ptr[row], n,
                                    j->Y, j->yb, j->mean, reg_w, j->bias_reg,
                                    x, &b, s);
        j->xb[row] = b;
    }
    if (info != 0) {
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
    }
}


static void *
cm_rs_worker(void *arg)
{
    cm_rs_worker_t  *w = arg;
    cm_rs_job_t     *j = w->job;
    uint32_t         r, end;

    for ( ;; ) {
        r = __atomic_fetch_add(&j->next, CM_RS_CHUNK, __ATOMIC_RELAXED);
        if (r >= j->n_rows) {
            break;
        }
        end = r + CM_RS_CHUNK < j->n_rows ? r + CM_RS_CHUNK : j->n_rows;
        for (; r < end; r++) {
            cm_rs_solve_row(j, r, j->scratch[w->tid]);
        }
    }
    return NULL;
}


static int
cm_rs_run_job(cm_rs_job_t *j, uint32_t threads)
{
    pthread_t       tid[64];
    cm_rs_worker_t  w[64];
    uint32_t        t, started = 0;

    j->next = 0;
    j->failed = 0;
    for (t = 1; t < threads; t++) {
        w[t].job = j;
        w[t].tid = t;
        if (pthread_create(&tid[t], NULL, cm_rs_worker, &w[t]) != 0) {
            break;
        }
        started = t;
    }
    w[0].job = j;
    w[0].tid = 0;
    cm_rs_worker(&w[0]);
    for (t = 1; t <= started; t++) {
        pthread_join(tid[t], NULL);
    }
    return j->failed ? CM_ERR : CM_OK;
}


double
cm_rs_als_loss(const cm_rs_model_t *m, const cm_rs_data_t *d)
{
    double    loss = 0, e, nrm;
    uint32_t  u, i, k = m->factors;
    uint64_t  p;

    for (u = 0; u < d->n_users; u++) {
        const float *x = m->U + (size_t) u * k;

        for (p = d->u_ptr[u]; p < d->u_ptr[u + 1]; p++) {
            i = d->u_idx[p];
            e = d->u_val[p] - m->mean - m->bu[u] - m->bi[i]
                - (k ? cblas_sdot((int) k, x, 1, m->V + (size_t) i * k, 1)
                     : 0.0f);
            loss += e * e;
        }
        nrm = (k ? cblas_sdot((int) k, x, 1, x, 1) : 0)
              + m->bias_reg * m->bu[u] * m->bu[u];
        loss += m->reg * cm_rs_row_weight((double) (d->u_ptr[u + 1]
                                                    - d->u_ptr[u]),
                                          m->reg_exp) * nrm;
    }
    for (i = 0; i < d->n_items; i++) {
        const float *y = m->V + (size_t) i * k;

        nrm = (k ? cblas_sdot((int) k, y, 1, y, 1) : 0)
              + m->bias_reg * m->bi[i] * m->bi[i];
        loss += m->reg * cm_rs_row_weight((double) (d->i_ptr[i + 1]
                                                    - d->i_ptr[i]),
                                          m->reg_exp) * nrm;
    }
    return loss;
}


/* ---- item-kNN ------------------------------------------------------------ */

typedef struct {
    const cm_rs_data_t  *d;
    cm_rs_model_t       *m;
    uint32_t             next;
    float                sim_shrink;
    float              **acc;       /* per thread (n_items) */
} cm_rs_knn_job_t;

typedef struct {
    cm_rs_knn_job_t  *job;
    uint32_t          tid;
} cm_rs_knn_worker_t;


static void *
cm_rs_knn_worker(void *arg)
{
    cm_rs_knn_worker_t  *w = arg;
    cm_rs_knn_job_t     *j = w->job;
    const cm_rs_data_t  *d = j->d;
    uint32_t             K = j->m->knn, i, n, c, s;
    float               *acc = j->acc[w->tid];
    uint32_t            *ni;
    float               *ns, sim;
    uint64_t             p, q;

    for ( ;; ) {
        i = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
        if (i >= d->n_items) {
            break;
        }
        ni = j->m->nn_idx + (size_t) i * K;
        ns = j->m->nn_sim + (size_t) i * K;
        for (c = 0; c < K; c++) {
            ni[c] = UINT32_MAX;
            ns[c] = 0;
        }
        /* co-occurrence counts with every item sharing a user */
        for (p = d->i_ptr[i]; p < d->i_ptr[i + 1]; p++) {
            uint32_t u = d->i_idx[p];

            for (q = d->u_ptr[u]; q < d->u_ptr[u + 1]; q++) {
                acc[d->u_idx[q]] += 1.0f;
            }
        }
        n = 0;
        for (p = d->i_ptr[i]; p < d->i_ptr[i + 1]; p++) {
            uint32_t u = d->i_idx[p];

            for (q = d->u_ptr[u]; q < d->u_ptr[u + 1]; q++) {
                uint32_t o = d->u_idx[q];

                if (acc[o] == 0.0f) {
                    continue;               /* already taken */
                }
                if (o != i) {
                    sim = acc[o] / sqrtf((float) (d->i_ptr[i + 1] - d->i_ptr[i])
                                         * (float) (d->i_ptr[o + 1]
                                                    - d->i_ptr[o]));
                    /* few co-raters: trust the cosine less */
                    sim *= acc[o] / (acc[o] + j->sim_shrink);
                    /* insertion into the sorted top-K (desc sim, asc id) */
                    if (n < K || sim > ns[K - 1]
                        || (sim == ns[K - 1] && o < ni[K - 1]))
                    {
                        s = n < K ? n++ : K - 1;
                        while (s > 0 && (ns[s - 1] < sim
                                         || (ns[s - 1] == sim
                                             && ni[s - 1] > o)))
                        {
                            ns[s] = ns[s - 1];
                            ni[s] = ni[s - 1];
                            s--;
                        }
                        ns[s] = sim;
                        ni[s] = o;
                    }
                }
                acc[o] = 0.0f;
            }
        }
    }
    return NULL;
}


static int
cm_rs_train_knn(const cm_rs_data_t *d, const cm_rs_train_conf_t *c,
    cm_rs_model_t *m)
{
    cm_rs_knn_job_t     j;
    cm_rs_knn_worker_t  w[64];
    pthread_t           tid[64];
    uint32_t            t, T = c->threads, started = 0;
    int                 rc = CM_OK;

    m->knn = c->knn ? c->knn : 100;
    m->nn_idx = malloc((size_t) d->n_items * m->knn * sizeof(uint32_t));
    m->nn_sim = malloc((size_t) d->n_items * m->knn * sizeof(float));
    j.acc = calloc(T, sizeof(float *));
    if (m->nn_idx == NULL || m->nn_sim == NULL || j.acc == NULL) {
        free(j.acc);
        return CM_ENOMEM;
    }
    for (t = 0; t < T; t++) {
        j.acc[t] = calloc(d->n_items, sizeof(float));
        if (j.acc[t] == NULL) {
            rc = CM_ENOMEM;
        }
    }
    if (rc == CM_OK) {
        j.d = d;
        j.m = m;
        j.next = 0;
        j.sim_shrink = c->knn_sim_shrink;
        for (t = 1; t < T; t++) {
            w[t].job = &j;
            w[t].tid = t;
            if (pthread_create(&tid[t], NULL, cm_rs_knn_worker, &w[t]) != 0) {
                break;
            }
            started = t;
        }
        w[0].job = &j;
        w[0].tid = 0;
        cm_rs_knn_worker(&w[0]);
        for (t = 1; t <= started; t++) {
            pthread_join(tid[t], NULL);
        }
    }
    for (t = 0; t < T; t++) {
        free(j.acc[t]);
    }
    free(j.acc);
    return rc;
}


/* ---- training driver ----------------------------------------------------- */

int
cm_rs_train(const cm_rs_data_t *d, const cm_rs_train_conf_t *c,
    cm_rs_model_t **out, char *err, size_t errlen)
{
    cm_rs_model_t  *m;
    cm_rs_job_t     j;
    cm_rng_t        rng;
    uint32_t        k, T, t, it;
    uint64_t        max_n = 0, i;
    float          *gram = NULL;
    int             rc;

    T = c->threads < 1 ? 1 : (c->threads > 64 ? 64 : c->threads);
    k = (c->algo == CM_RS_ALS || c->algo == CM_RS_IALS) ? c->factors : 0;
    if (k > CM_RS_MAX_FACTORS || ((c->algo == CM_RS_ALS
                                   || c->algo == CM_RS_IALS) && k == 0))
    {
        return cm_seterr(err, errlen, CM_EINVAL, "factors must be 1..%u",
                         CM_RS_MAX_FACTORS);
    }
    if (!(c->reg >= 0) || !(c->alpha > 0)) {
        return cm_seterr(err, errlen, CM_EINVAL, "reg must be >= 0 and"
                         " alpha > 0");
    }
    rc = cm_rs_model_alloc(d, c->algo == CM_RS_ITEMKNN ? CM_RS_BIAS : c->algo,
                           k, &m);
    if (rc != CM_OK) {
        return cm_seterr(err, errlen, rc, "out of memory for the model");
    }
    m->algo = c->algo;
    m->reg = c->reg;
    m->alpha = c->alpha;
    m->bias_reg = c->bias_reg > 0 ? c->bias_reg : 1.0f;
    m->conf_thr = c->conf_thr;
    m->conf_below = c->conf_below;
    m->reg_exp = c->reg_exp >= 0 ? c->reg_exp
                 : (c->algo == CM_RS_IALS ? 0.0f : 1.0f);
    m->iters = c->iters;
    m->seed = c->seed;
    m->created = cm_now_real_ns() / 1000000000ull;

    if (c->algo == CM_RS_POP) {
        *out = m;
        return CM_OK;
    }

    /* BLAS inside our own threads must not spawn its own. */
    openblas_set_num_threads(1);

    cm_rng_seed(&rng, c->seed, 0x5eed);
    for (i = 0; i < (uint64_t) d->n_items * k; i++) {
        ((float *) m->V)[i] = (float) (0.1 * cm_rng_normal(&rng));
    }
    for (i = 0; i < d->n_users; i++) {
        max_n = d->u_ptr[i + 1] - d->u_ptr[i] > max_n
                ? d->u_ptr[i + 1] - d->u_ptr[i] : max_n;
    }
    for (i = 0; i < d->n_items; i++) {
        max_n = d->i_ptr[i + 1] - d->i_ptr[i] > max_n
                ? d->i_ptr[i + 1] - d->i_ptr[i] : max_n;
    }

    memset(&j, 0, sizeof(j));
    j.d = d;
    j.algo = c->algo == CM_RS_ITEMKNN ? CM_RS_BIAS : c->algo;
    j.k = k;
    j.reg = c->algo == CM_RS_ITEMKNN ? 10.0f : c->reg;
    j.alpha = c->alpha;
    j.mean = j.algo == CM_RS_IALS ? 0.0f : d->mean;
    j.bias_reg = c->bias_reg > 0 ? c->bias_reg : 1.0f;
    j.reg_exp = m->reg_exp;
    j.conf_thr = c->conf_thr;
    j.conf_below = c->conf_below;
    j.cg_steps = c->cg_steps;
    j.scratch = calloc(T, sizeof(float *));
    if (k > 0) {
        gram = malloc((size_t) k * k * sizeof(float));
    }
    rc = (j.scratch == NULL || (k > 0 && gram == NULL)) ? CM_ENOMEM : CM_OK;
    for (t = 0; t < T && rc == CM_OK; t++) {
        j.scratch[t] = malloc(cm_rs_scratch_size(k, max_n) * sizeof(float));
        if (j.scratch[t] == NULL) {
            rc = CM_ENOMEM;
        }
    }
    if (rc != CM_OK) {
        cm_seterr(err, errlen, rc, "out of memory for solver scratch");
        goto done;
    }
    j.gram = gram;

    for (it = 0; it < (c->iters ? c->iters : 1) && rc == CM_OK; it++) {
        /* users given items */
        j.by_user = 1;
        j.Y = m->V;
        j.yb = j.algo == CM_RS_IALS ? NULL : m->bi;
        j.X = (float *) m->U;
        j.xb = (float *) m->bu;
        j.n_rows = d->n_users;
        if (j.algo == CM_RS_IALS) {
            cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (int) k,
                        (int) d->n_items, 1.0f, m->V, (int) k, 0.0f, gram,
                        (int) k);
        }
        rc = cm_rs_run_job(&j, T);
        if (rc != CM_OK) {
            break;
        }
        /* items given users */
        j.by_user = 0;
        j.Y = m->U;
        j.yb = j.algo == CM_RS_IALS ? NULL : m->bu;
        j.X = (float *) m->V;
        j.xb = (float *) m->bi;
        j.n_rows = d->n_items;
        if (j.algo == CM_RS_IALS) {
            cblas_ssyrk(CblasRowMajor, CblasUpper, CblasTrans, (int) k,
                        (int) d->n_users, 1.0f, m->U, (int) k, 0.0f, gram,
                        (int) k);
        }
        rc = cm_rs_run_job(&j, T);
        if (rc == CM_OK && c->loss != NULL) {
            c->loss[it] = j.algo == CM_RS_ALS ? cm_rs_als_loss(m, d) : 0.0;
        }
    }
    if (rc != CM_OK) {
        cm_seterr(err, errlen, rc, "a ridge solve failed (not positive"
                  " definite: try a larger --reg)");
        goto done;
    }
    if (c->algo == CM_RS_ITEMKNN
        || (c->algo == CM_RS_ALS && c->knn_blend > 0))
    {
        m->knn_shrink = c->algo == CM_RS_ALS ? c->knn_blend : 0.0f;
        rc = cm_rs_train_knn(d, c, m);
        if (rc != CM_OK) {
            cm_seterr(err, errlen, rc, "out of memory for item-kNN");
            goto done;
        }
    }
    rc = cm_rs_model_derive(m);
    if (rc != CM_OK) {
        cm_seterr(err, errlen, rc, "out of memory");
    }

done:
    for (t = 0; j.scratch != NULL && t < T; t++) {
        free(j.scratch[t]);
    }
    free(j.scratch);
    free(gram);
    if (rc != CM_OK) {
        cm_rs_model_free(m);
        return rc;
    }
    *out = m;
    return CM_OK;
}


/* ---- reference ALS: plain loops, no BLAS, no threads --------------------- */

/* In-place Cholesky solve of the SPD a (n, n) with b (n); 0 or -1. */
static int
cm_rs_ref_cholesky_solve(float *a, float *b, size_t n)
{
    size_t  i, j, p;
    double  s;

    for (j = 0; j < n; j++) {
        s = a[j * n + j];
        for (p = 0; p < j; p++) {
            s -= (double) a[j * n + p] * a[j * n + p];
        }
        if (s <= 0) {
            return -1;
        }
        a[j * n + j] = (float) sqrt(s);
        for (i = j + 1; i < n; i++) {
            s = a[i * n + j];
            for (p = 0; p < j; p++) {
                s -= (double) a[i * n + p] * a[j * n + p];
            }
            a[i * n + j] = (float) (s / a[j * n + j]);
        }
    }
    for (i = 0; i < n; i++) {                   /* L y = b */
        s = b[i];
        for (p = 0; p < i; p++) {
            s -= (double) a[i * n + p] * b[p];
        }
        b[i] = (float) (s / a[i * n + i]);
    }
    for (i = n; i-- > 0; ) {                    /* L^T x = y */
        s = b[i];
        for (p = i + 1; p < n; p++) {
            s -= (double) a[p * n + i] * b[p];
        }
        b[i] = (float) (s / a[i * n + i]);
    }
    return 0;
}


static int
cm_rs_ref_half(const uint64_t *ptr, const uint32_t *idx, const float *val,
    uint32_t n_rows, uint32_t k, const float *Y, const float *yb, float mean,
    float reg, float reg_exp, float bias_reg, float *X, float *xb, float *A,
    float *rhs)
{
    size_t    kk = k + 1, a, b;
    uint32_t  r;
    uint64_t  p;

    for (r = 0; r < n_rows; r++) {
        size_t n = ptr[r + 1] - ptr[r];

        memset(A, 0, kk * kk * sizeof(float));
        memset(rhs, 0, kk * sizeof(float));
        for (p = ptr[r]; p < ptr[r + 1]; p++) {
            const float *y = Y + (size_t) idx[p] * k;
            float        t = val[p] - mean - yb[idx[p]];

            for (a = 0; a < kk; a++) {
                float ya = a < k ? y[a] : 1.0f;

                for (b = 0; b < kk; b++) {
                    A[a * kk + b] += ya * (b < k ? y[b] : 1.0f);
                }
                rhs[a] += ya * t;
            }
        }
        for (a = 0; a < kk; a++) {
            A[a * kk + a] += reg * (float) pow((double) n, reg_exp)
                             * (a == k ? bias_reg : 1.0f)
                             + (n == 0 ? 1.0f : 0.0f);
        }
        if (cm_rs_ref_cholesky_solve(A, rhs, kk) != 0) {
            return CM_ERR;
        }
        memcpy(X + (size_t) r * k, rhs, k * sizeof(float));
        xb[r] = rhs[k];
    }
    return CM_OK;
}


int
cm_rs_train_als_reference(const cm_rs_data_t *d, const cm_rs_train_conf_t *c,
    cm_rs_model_t **out, char *err, size_t errlen)
{
    cm_rs_model_t  *m;
    cm_rng_t        rng;
    uint32_t        k = c->factors, it;
    uint64_t        i;
    float          *A, *rhs;
    int             rc;

    if (k == 0 || k > CM_RS_MAX_FACTORS) {
        return cm_seterr(err, errlen, CM_EINVAL, "factors must be 1..%u",
                         CM_RS_MAX_FACTORS);
    }
    rc = cm_rs_model_alloc(d, CM_RS_ALS, k, &m);
    if (rc != CM_OK) {
        return cm_seterr(err, errlen, rc, "out of memory");
    }
    m->reg = c->reg;
    m->reg_exp = c->reg_exp >= 0 ? c->reg_exp : 1.0f;
    m->bias_reg = c->bias_reg > 0 ? c->bias_reg : 1.0f;
    m->iters = c->iters;
    m->seed = c->seed;
    A = malloc((size_t) (k + 1) * (k + 1) * sizeof(float));
    rhs = malloc((k + 1) * sizeof(float));
    if (A == NULL || rhs == NULL) {
        free(A); free(rhs);
        cm_rs_model_free(m);
        return cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
    }
    cm_rng_seed(&rng, c->seed, 0x5eed);
    for (i = 0; i < (uint64_t) d->n_items * k; i++) {
        ((float *) m->V)[i] = (float) (0.1 * cm_rng_normal(&rng));
    }
    for (it = 0; it < c->iters && rc == CM_OK; it++) {
        rc = cm_rs_ref_half(d->u_ptr, d->u_idx, d->u_val, d->n_users, k,
                            m->V, m->bi, d->mean, c->reg, m->reg_exp,
                            m->bias_reg, (float *) m->U,
                            (float *) m->bu, A, rhs);
        if (rc == CM_OK) {
            rc = cm_rs_ref_half(d->i_ptr, d->i_idx, d->i_val, d->n_items, k,
                                m->U, m->bu, d->mean, c->reg, m->reg_exp,
                                m->bias_reg, (float *) m->V,
                                (float *) m->bi, A, rhs);
        }
        if (rc == CM_OK && c->loss != NULL) {
            c->loss[it] = cm_rs_als_loss(m, d);
        }
    }
    free(A);
    free(rhs);
    if (rc == CM_OK) {
        rc = cm_rs_model_derive(m);
    }
    if (rc != CM_OK) {
        cm_rs_model_free(m);
        return cm_seterr(err, errlen, rc, "reference ALS failed");
    }
    *out = m;
    return CM_OK;
}


/* ---- fold-in ------------------------------------------------------------- */

int
cm_rs_fold_in(const cm_rs_model_t *m, const uint32_t *items,
    const float *ratings, size_t n, float reg, float *x, float *bias)
{
    float   *s;
    size_t   j;
    int      info;

    if (m->factors == 0 || (m->algo != CM_RS_ALS && m->algo != CM_RS_IALS)) {
        return CM_EINVAL;
    }
    for (j = 0; j < n; j++) {
        if (items[j] >= m->n_items || !(ratings[j] >= 0.0f)) {
            return CM_EINVAL;
        }
    }
    if (reg <= 0) {
        reg = m->reg;
    }
    s = malloc(cm_rs_scratch_size(m->factors, n) * sizeof(float));
    if (s == NULL) {
        return CM_ENOMEM;
    }
    *bias = 0;
    if (m->algo == CM_RS_IALS) {
        info = m->gram == NULL ? -1
               : cm_rs_solve_implicit(m->factors, items, ratings, n, m->V,
                                      m->gram, m->alpha, m->conf_thr,
                                      m->conf_below,
                                      m->reg_exp > 0 && n > 0
                                      ? reg * cm_rs_row_weight((double) n,
                                                               m->reg_exp)
                                      : reg, x, s);
    } else {
        info = cm_rs_solve_explicit(m->factors, items, ratings, n, m->V,
                                    m->bi, m->mean,
                                    reg * cm_rs_row_weight((double) n,
                                                           m->reg_exp),
                                    m->bias_reg, x, bias, s);
    }
    free(s);
    return info == 0 ? CM_OK : CM_ERR;
}

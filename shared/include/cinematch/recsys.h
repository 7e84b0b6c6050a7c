/*
 * cinematch/recsys.h: the recommender engine: training data, ALS / iALS /
 * baselines, the model artifact and the scoring API the inference daemon
 * calls.
 *
 * Indices.  Users and items get dense indices 0..n-1 in ascending order of
 * their external MovieLens ids, so the id maps are two sorted int32 arrays
 * (dense -> external is an array read, external -> dense a binary search).
 *
 * Explicit model (CM_RS_ALS, CM_RS_BIAS):
 *     r_ui ~ mu + b_u + b_i + U[u] . V[i]
 * trained by ALS with weighted-lambda regularisation: each user step solves
 * min over (U[u], b_u) of sum_i (r_ui - mu - b_i - U[u].V[i] - b_u)^2
 * + reg * n_u^e * (|U[u]|^2 + bias_reg * b_u^2) (e = reg_exp: 1 is
 * ALS-WR), and symmetrically for items, so the objective decreases
 * monotonically with exact solves.  Implicit model (CM_RS_IALS): Hu,
 * Koren & Volinsky with confidence c_ui = 1 + alpha * r_ui, preference 1 on
 * rated items, biases zero; scores rank, they are not ratings.
 *
 * Threads.  Solves are spread over `threads` pthreads with a shared work
 * counter and BLAS pinned to one thread.  Each row's solve depends only on
 * the other side's factors, so results are bit-identical for any thread
 * count (deterministic for a seed, full stop).
 *
 * Artifact (version 1; every field little-endian; see cm_rs_header_t):
 *     [header 512 B][sections, each at a 64-byte aligned offset]
 *     user factors (n_users, k) f32, item factors (n_items, k) f32,
 *     user bias (n_users) f32, item bias (n_items) f32,
 *     user ids (n_users) i32 ascending, item ids (n_items) i32 ascending,
 *     item popularity (n_items) u32 = training ratings per item,
 *     seen CSR: ptr (n_users + 1) u64, idx (nnz) u32 ascending per row.
 * The header carries a BLAKE2b-256 checksum of the whole file (with the
 * checksum field zeroed).  cm_rs_model_open() mmaps the file read-only and
 * validates magic, version, every offset and length, the checksum, id order,
 * the CSR and that every float is finite, before anything reads it.
 *
 * Scoring API (for `cinematch infer`; all read-only on the model, so any
 * number of threads may score one model concurrently):
 *     cm_rs_score_users()   one SGEMM: scores of a batch of users, all items
 *     cm_rs_score_vector()  the same for a folded-in user vector
 *     cm_rs_topk()          top-K of a score row, excluding a sorted list
 *     cm_rs_recommend()     score + exclude seen + top-K for one user
 *     cm_rs_similar_items() cosine of item factors, top-K
 *     cm_rs_explain()       the seen item closest to a recommendation
 *     cm_rs_popular()       cold-start list
 *     cm_rs_fold_in()       a user vector from (item, rating) pairs: one
 *                           (k+1)x(k+1) ridge solve, no retraining
 */
#ifndef CINEMATCH_RECSYS_H
#define CINEMATCH_RECSYS_H

#include <stddef.h>
#include <stdint.h>

#include "cinematch/movielens.h"

typedef enum {
    CM_RS_ALS = 1,      /* explicit biased MF by ALS */
    CM_RS_IALS = 2,     /* implicit ALS */
    CM_RS_BIAS = 3,     /* mu + b_u + b_i only (factors = 0) */
    CM_RS_POP = 4,      /* item popularity (factors = 0) */
    CM_RS_ITEMKNN = 5   /* item-item cosine k-NN (eval only, no artifact) */
} cm_rs_algo_t;

/* Training matrix: CSR by user and by item, dense indices. */
typedef struct {
    uint32_t   n_users;
    uint32_t   n_items;
    uint64_t   nnz;
    float      mean;        /* global mean rating */
    int32_t   *user_ext;    /* (n_users) ascending external ids */
    int32_t   *item_ext;    /* (n_items) ascending */
    uint64_t  *u_ptr;       /* (n_users + 1) */
    uint32_t  *u_idx;       /* (nnz) item index, ascending within a row */
    float     *u_val;       /* (nnz) rating */
    uint64_t  *i_ptr;       /* (n_items + 1) */
    uint32_t  *i_idx;       /* (nnz) user index, ascending within a column */
    float     *i_val;       /* (nnz) */
} cm_rs_data_t;

typedef struct {
    cm_rs_algo_t  algo;
    uint32_t      factors;      /* default 64 */
    uint32_t      iters;        /* default 15 */
    uint32_t      threads;      /* default 1 */
    float         reg;          /* ALS: lambda (times n_u); iALS: lambda */
    float         alpha;        /* iALS confidence slope, default 1 */
    uint32_t      knn;          /* item-kNN neighbours, default 100 */
    float         knn_blend;    /* ALS: > 0 adds an item-kNN vote on the
                                   residuals, shrunk by this (eval only) */
    float         knn_sim_shrink; /* cosine * n_common/(n_common + this) */
    float         conf_thr;     /* iALS: ratings below conf_thr get */
    float         conf_below;   /* confidence 1 + alpha conf_below r
                                   (defaults 0 and 1: plain 1 + alpha r) */
    float         bias_reg;     /* ALS: bias reg = reg * bias_reg (def. 1)*/
    float         reg_exp;      /* row reg = reg * n^reg_exp; < 0: the
                                   algo's default (ALS 1, iALS 0) */
    uint64_t      seed;         /* factor initialisation */
    uint32_t      cg_steps;     /* 0: exact Cholesky solves (default);
                                   N: N conjugate-gradient steps per row,
                                   warm-started (ALS rows longer than k+1,
                                   all iALS rows) */
    double       *loss;         /* out (iters entries) if not NULL: the
                                   objective after each iteration */
} cm_rs_train_conf_t;

/* A model: trained in memory or opened from an artifact (read-only). */
typedef struct cm_rs_model_s {
    cm_rs_algo_t      algo;
    uint32_t          factors;      /* k */
    uint32_t          n_users;
    uint32_t          n_items;
    uint64_t          nnz;          /* seen entries */
    float             mean;
    float             reg;
    float             alpha;
    float             bias_reg;     /* bias reg / factor reg (ALS) */
    float             reg_exp;      /* row reg = reg * n^reg_exp */
    float             conf_thr;     /* iALS confidence, see train conf */
    float             conf_below;
    uint32_t          iters;
    uint64_t          seed;
    uint64_t          created;      /* unix seconds */
    uint8_t           data_fp[32];  /* BLAKE2b-256 of the training matrix */
    uint8_t           checksum[32]; /* of the artifact (0 until written) */
    const float      *U;            /* (n_users, k) */
    const float      *V;            /* (n_items, k) */
    const float      *bu;           /* (n_users) */
    const float      *bi;           /* (n_items) */
    const int32_t    *user_ext;     /* (n_users) ascending */
    const int32_t    *item_ext;     /* (n_items) ascending */
    const uint32_t   *pop;          /* (n_items) */
    const uint64_t   *seen_ptr;     /* (n_users + 1) */
    const uint32_t   *seen_idx;     /* (nnz) */
    /* derived at open/train time, owned */
    float            *v_norm;       /* (n_items) |V[i]|, for cosine */
    float            *gram;         /* (k, k) V^T V, iALS fold-in */
    /* ownership */
    void             *map;          /* mmap base or NULL */
    size_t            map_len;
    void             *mem;          /* one allocation for trained models */
    /* item-kNN only (never in an artifact) */
    uint32_t          knn;
    float             knn_shrink;   /* residual vote / (sum sim + this) */
    uint32_t         *nn_idx;       /* (n_items, knn) neighbour, or ~0 */
    float            *nn_sim;       /* (n_items, knn) cosine */
} cm_rs_model_t;

#define CM_RS_MAGIC          "CMRECSYS"
#define CM_RS_VERSION        1u
#define CM_RS_HEADER_SIZE    512u
#define CM_RS_ALIGN          64u
#define CM_RS_MAX_FACTORS    1024u

enum {
    CM_RS_SEC_U = 0, CM_RS_SEC_V, CM_RS_SEC_BU, CM_RS_SEC_BI,
    CM_RS_SEC_USER_IDS, CM_RS_SEC_ITEM_IDS, CM_RS_SEC_POP,
    CM_RS_SEC_SEEN_PTR, CM_RS_SEC_SEEN_IDX,
    CM_RS_N_SECTIONS
};

typedef struct {
    uint64_t  offset;       /* from file start, multiple of 64 */
    uint64_t  length;       /* bytes */
} cm_rs_section_t;

typedef struct {
    char             magic[8];      /*   0: "CMRECSYS" */
    uint32_t         version;       /*   8: CM_RS_VERSION */
    uint32_t         header_size;   /*  12: CM_RS_HEADER_SIZE */
    uint64_t         file_size;     /*  16: bytes, whole file */
    uint32_t         algo;          /*  24: cm_rs_algo_t */
    uint32_t         factors;       /*  28: k (0 for bias/pop) */
    uint32_t         n_users;       /*  32 */
    uint32_t         n_items;       /*  36 */
    uint64_t         nnz;           /*  40: seen entries */
    float            mean;          /*  48: global mean rating */
    float            reg;           /*  52 */
    float            alpha;         /*  56 */
    uint32_t         iters;         /*  60 */
    uint64_t         seed;          /*  64 */
    uint64_t         created;       /*  72: unix seconds */
    uint8_t          data_fp[32];   /*  80: BLAKE2b-256 of training matrix */
    uint8_t          checksum[32];  /* 112: BLAKE2b-256 of the file with
                                             this field zeroed */
    uint32_t         n_sections;    /* 144: CM_RS_N_SECTIONS */
    float            bias_reg;      /* 148: bias reg / factor reg */
    cm_rs_section_t  sec[CM_RS_N_SECTIONS];  /* 152 .. 296 */
    float            reg_exp;       /* 296: row reg = reg * n^reg_exp */
    float            conf_thr;      /* 300: iALS confidence threshold */
    float            conf_below;    /* 304: and the weight under it */
    uint8_t          pad[512 - 308];          /* zero */
} cm_rs_header_t;

/* ---- data ---------------------------------------------------------------- */

/* Duplicated (user, movie) pairs keep the latest timestamp. */
int cm_rs_data_build(const cm_rating_t *r, size_t n, cm_rs_data_t *d,
    char *err, size_t errlen);
void cm_rs_data_free(cm_rs_data_t *d);
/* Dense index of an external id, or -1. */
int64_t cm_rs_find_id(const int32_t *sorted, uint32_t n, int32_t ext);
void cm_rs_data_fingerprint(const cm_rs_data_t *d, uint8_t out[32]);

/* ---- training ------------------------------------------------------------ */

void cm_rs_train_conf_default(cm_rs_train_conf_t *c);
int cm_rs_train(const cm_rs_data_t *d, const cm_rs_train_conf_t *c,
    cm_rs_model_t **out, char *err, size_t errlen);
/* The same explicit ALS without BLAS, LAPACK or threads: the baseline the
 * benchmark compares against (plain loops, textbook Cholesky). */
int cm_rs_train_als_reference(const cm_rs_data_t *d,
    const cm_rs_train_conf_t *c, cm_rs_model_t **out, char *err,
    size_t errlen);
/* Objective of an explicit model on d (squared error + weighted reg). */
double cm_rs_als_loss(const cm_rs_model_t *m, const cm_rs_data_t *d);
void cm_rs_model_free(cm_rs_model_t *m);
/* Fill the derived arrays (v_norm: |V[i]| for cosine, gram: V^T V for
 * iALS fold-in); done by training and by open. */
int cm_rs_model_derive(cm_rs_model_t *m);

const char *cm_rs_algo_name(cm_rs_algo_t a);
int cm_rs_algo_parse(const char *s, cm_rs_algo_t *a);

/* ---- artifact ------------------------------------------------------------ */

#define CM_RS_OPEN_SKIP_CHECKSUM  1u    /* fuzzing and tests only */

int cm_rs_model_write(const cm_rs_model_t *m, const char *path, char *err,
    size_t errlen);
int cm_rs_model_open(const char *path, cm_rs_model_t **out, char *err,
    size_t errlen);
/* Validate and wrap a buffer (8-byte aligned, must outlive the model). */
int cm_rs_model_open_mem(const void *buf, size_t len, unsigned flags,
    cm_rs_model_t **out, char *err, size_t errlen);

/* ---- scoring ------------------------------------------------------------- */

/* out (n, n_items): predicted rating (ALS/BIAS), iALS score, or popularity
 * count (POP) for each listed dense user index. */
int cm_rs_score_users(const cm_rs_model_t *m, const uint32_t *users,
    size_t n, float *out);
/* out (n_items) for a user vector x (k) and bias (from cm_rs_fold_in). */
void cm_rs_score_vector(const cm_rs_model_t *m, const float *x, float bias,
    float *out);
/* Top k of scores[0..n) skipping the ascending list excl[0..n_excl); ties
 * go to the lower index.  Returns how many were written (<= k). */
size_t cm_rs_topk(const float *scores, uint32_t n, const uint32_t *excl,
    size_t n_excl, size_t k, uint32_t *out_idx, float *out_score);
/* Convenience for one user: allocates its own scratch. */
int cm_rs_recommend(const cm_rs_model_t *m, uint32_t user, size_t k,
    int exclude_seen, uint32_t *out_idx, float *out_score, size_t *n_out);
/* Items most similar to item (cosine of factors), item itself excluded. */
int cm_rs_similar_items(const cm_rs_model_t *m, uint32_t item, size_t k,
    uint32_t *out_idx, float *out_score, size_t *n_out);
/* "Because you watched X": the user's seen item with the highest cosine
 * (item factors) to item.  CM_ENOTFOUND when the user has seen nothing. */
int cm_rs_explain(const cm_rs_model_t *m, uint32_t user, uint32_t item,
    uint32_t *because, float *sim);
/* Cold start: the k most rated training items, skipping excl (ascending);
 * scores are the rating counts. */
int cm_rs_popular(const cm_rs_model_t *m, const uint32_t *excl,
    size_t n_excl, size_t k, uint32_t *out_idx, float *out_score,
    size_t *n_out);
/* Fold in a user from (dense item, rating) pairs: x (k) and *bias.  For
 * ALS the training user step; for iALS the implicit one. reg <= 0 uses
 * the model's. */
int cm_rs_fold_in(const cm_rs_model_t *m, const uint32_t *items,
    const float *ratings, size_t n, float reg, float *x, float *bias);

#endif /* CINEMATCH_RECSYS_H */

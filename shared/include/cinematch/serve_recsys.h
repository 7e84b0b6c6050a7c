/*
 * cinematch/serve_recsys.h: what `cinematch infer` does with a recsys
 * model: the model plus the movie catalogue plus the fold-in overlay,
 * answering recommend / similar / popular / predict as JSON text.
 *
 * Owns: the opened artifact, a copy of the catalogue sorted by movie id,
 * the popularity order, and one overlay entry per user whose vector was
 * re-solved from new ratings (cm_rs_server_fold_in).  Not thread-safe,
 * with one exception: cm_rs_server_recommend_with() only reads the server,
 * so several threads may run it at once, each with its own scratch, as
 * long as nothing else (a fold-in, the cache, free) runs meanwhile.  The
 * daemon does exactly that: its loop thread splits a batch between its
 * scoring threads and waits for them before it touches the server again.
 *
 * The answer cache (off unless sized): the exact text of earlier recommend
 * answers keyed by the whole request, so a repeated request skips the
 * scoring.  A fold-in drops that user's answers before it changes the
 * vector, and a new model version is a new server with an empty cache: an
 * answer is never older than the user's last fold-in or the model.
 *
 * Batching: cm_rs_server_recommend_batch() scores every dataset user of
 * the batch with one SGEMM (users × items), then filters and takes top-K
 * per request; folded-in users are scored from their overlay vectors.
 *
 * Explanations ("because"): among the user's rated items with a rating of
 * at least 4 (true ratings for folded-in ones; the model's reconstruction
 * for training ratings, which the artifact does not keep), the one whose
 * item factors are most similar to the recommended item.
 */
#ifndef CINEMATCH_SERVE_RECSYS_H
#define CINEMATCH_SERVE_RECSYS_H

#include <stddef.h>
#include <stdint.h>

#include "cinematch/movielens.h"
#include "cinematch/recsys.h"

#define CM_RSS_MAX_K         100
#define CM_RSS_MAX_PREDICT   1000
#define CM_RSS_MAX_FOLD      10000   /* ratings kept per folded-in user */

typedef struct cm_rs_server_s cm_rs_server_t;
typedef struct cm_rs_scratch_s cm_rs_scratch_t;   /* one per thread */

typedef struct {
    int32_t    user;         /* external (rating-space) user id; 0 = none */
    uint32_t   k;            /* 1..CM_RSS_MAX_K */
    int        exclude_seen;
    uint32_t   genres;       /* movielens genre mask; 0 = any */
    int32_t    year_min;     /* 0 = open */
    int32_t    year_max;     /* 0 = open */
    int        log_members;  /* answer "<log members>\n<JSON>": the
                                request log's model_version, is_fallback,
                                fallback_reason and detail members, as
                                JSON text without braces, then the answer,
                                so nginx logs and caches it unparsed */
} cm_rs_rec_req_t;

/* The catalogue: movies with clean titles (no "(year)" suffix). */
int cm_rs_server_open(cm_rs_server_t **out, const char *artifact,
    const char *version, const cm_movie_t *movies, size_t n_movies,
    char *err, size_t errlen);
void cm_rs_server_free(cm_rs_server_t *s);
const char *cm_rs_server_version(const cm_rs_server_t *s);
const cm_rs_model_t *cm_rs_server_model(const cm_rs_server_t *s);

/*
 * Scoring with the item factors packed once (lm_kernels.h: 32-item panels,
 * AVX-512 kernel): OpenBLAS's SGEMM re-packed the whole (n_items, k)
 * matrix on every batch.  cm_rs_server_open packs when the CPU runs the
 * AVX-512 kernels; cm_rs_server_pack_items(s, 0) goes back to OpenBLAS
 * (benchmarks), (s, 1) packs again; returns 1 when packed.  Not while
 * another thread scores with s.  The two score functions are
 * cm_rs_score_users / cm_rs_score_vector (recsys.h) with the packed
 * matrix when there is one: the same sums up to float rounding.
 */
int cm_rs_server_pack_items(cm_rs_server_t *s, int on);
int cm_rs_server_packed(const cm_rs_server_t *s);
int cm_rs_server_score_users(const cm_rs_server_t *s, const uint32_t *users,
    size_t n, float *out);
void cm_rs_server_score_vector(const cm_rs_server_t *s, const float *x,
    float bias, float *out);

/* out[i] gets a malloc'd JSON object for reqs[i] (API.md /recommend). */
int cm_rs_server_recommend_batch(cm_rs_server_t *s,
    const cm_rs_rec_req_t *reqs, size_t n, char **out);
/* The same with the caller's scratch: safe in several threads at once. */
int cm_rs_server_recommend_with(const cm_rs_server_t *s, cm_rs_scratch_t *w,
    const cm_rs_rec_req_t *reqs, size_t n, char **out);
cm_rs_scratch_t *cm_rs_scratch_new(void);
void cm_rs_scratch_free(cm_rs_scratch_t *w);

/* The answer cache: `entries` answers (rounded up to a power of two; 0
 * turns it off, the default), and at most 64 MB of text in all (beyond
 * that new answers are not kept).  get returns the cached text (owned by the
 * cache, valid until the next call on s) or NULL; put takes `json` (a
 * malloc'd answer to exactly q) and frees it when the cache is off. */
int cm_rs_server_cache_size(cm_rs_server_t *s, size_t entries);
const char *cm_rs_server_cache_get(cm_rs_server_t *s,
    const cm_rs_rec_req_t *q, size_t *len);
void cm_rs_server_cache_put(cm_rs_server_t *s, const cm_rs_rec_req_t *q,
    char *json);
void cm_rs_server_cache_stats(const cm_rs_server_t *s, uint64_t *hits,
    uint64_t *misses);
/* answers the cache holds now */
size_t cm_rs_server_cache_entries(const cm_rs_server_t *s);
/* CM_ENOTFOUND for a movie the model does not know. */
int cm_rs_server_similar(cm_rs_server_t *s, int32_t movie, uint32_t k,
    char **out, char *err, size_t errlen);
int cm_rs_server_popular(cm_rs_server_t *s, uint32_t k, uint32_t genres,
    char **out);
int cm_rs_server_predict(cm_rs_server_t *s, int32_t user,
    const int32_t *movies, size_t n, char **out, char *err, size_t errlen);
/* Add or replace ratings of `user` and re-solve its vector. */
int cm_rs_server_fold_in(cm_rs_server_t *s, int32_t user,
    const int32_t *movies, const float *ratings, size_t n, char *err,
    size_t errlen);
size_t cm_rs_server_overlay_users(const cm_rs_server_t *s);

/* "Action,Comedy" (names as MovieLens spells them) to a mask. */
int cm_rs_parse_genres(const char *s, size_t len, uint32_t *mask,
    char *err, size_t errlen);
/* A title without its trailing " (1995)", as a new malloc'd string. */
char *cm_rs_clean_title(const char *title);

#endif /* CINEMATCH_SERVE_RECSYS_H */

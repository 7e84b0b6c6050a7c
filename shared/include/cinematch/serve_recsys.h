/*
 * cinematch/serve_recsys.h: what `cinematch infer` does with a recsys
 * model: the model plus the movie catalogue plus the fold-in overlay,
 * answering recommend / similar / popular / predict as JSON text.
 *
 * Owns: the opened artifact, a copy of the catalogue sorted by movie id,
 * the popularity order, and one overlay entry per user whose vector was
 * re-solved from new ratings (cm_rs_server_fold_in).  Not thread-safe:
 * the daemon calls it from its one loop thread; the SGEMM inside uses BLAS
 * threads of its own.
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

typedef struct {
    int32_t    user;         /* external (rating-space) user id; 0 = none */
    uint32_t   k;            /* 1..CM_RSS_MAX_K */
    int        exclude_seen;
    uint32_t   genres;       /* movielens genre mask; 0 = any */
    int32_t    year_min;     /* 0 = open */
    int32_t    year_max;     /* 0 = open */
} cm_rs_rec_req_t;

/* The catalogue: movies with clean titles (no "(year)" suffix). */
int cm_rs_server_open(cm_rs_server_t **out, const char *artifact,
    const char *version, const cm_movie_t *movies, size_t n_movies,
    char *err, size_t errlen);
void cm_rs_server_free(cm_rs_server_t *s);
const char *cm_rs_server_version(const cm_rs_server_t *s);
const cm_rs_model_t *cm_rs_server_model(const cm_rs_server_t *s);

/* out[i] gets a malloc'd JSON object for reqs[i] (API.md /recommend). */
int cm_rs_server_recommend_batch(cm_rs_server_t *s,
    const cm_rs_rec_req_t *reqs, size_t n, char **out);
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

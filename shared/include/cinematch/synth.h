/*
 * cinematch/synth.h: MovieLens-shaped synthetic data with planted structure.
 *
 * The generative model (all of it drawn from one seed, so a seed gives
 * byte-identical files on every machine):
 *   - d latent dimensions; each genre g has a direction G_g ~ N(0, I);
 *   - item i: 1-3 genres (Drama and Comedy commonest, as in MovieLens),
 *     q_i = mean of its genre directions + noise, a bias, a release year and
 *     a Zipf popularity weight over a random rank;
 *   - user u: 1-3 favourite genres, p_u built the same way, a bias, a
 *     heavy-tailed activity (at least 20 ratings, like MovieLens) and a
 *     half-star habit;
 *   - u picks items by popularity, accepted with probability
 *     sigmoid(beta * p_u.q_i) (people watch what they expect to like);
 *   - rating = mu + b_u + b_i + p_u.q_i + noise, rounded to the user's step
 *     and clipped, which gives MovieLens' histogram (mode 4.0, mean ~3.5);
 *   - timestamps: a start date per user, a first-session burst, then a
 *     long tail, never before the film's release year.
 * Drift batches (weekly files after the main data) shift progressively:
 * rating mean down, a trending genre up, a growing share of new films that
 * exist only in the batches (they are listed in movies.csv), and new users.
 * A batch never repeats a (user, film) pair nor one of the main data; a
 * later batch may re-rate a pair of an earlier one (an update).
 */
#ifndef CINEMATCH_SYNTH_H
#define CINEMATCH_SYNTH_H

#include <stddef.h>
#include <stdint.h>

#include "cinematch/movielens.h"

typedef struct {
    uint32_t  n_users;          /* default 610 */
    uint32_t  n_items;          /* default 9000 */
    uint64_t  n_ratings;        /* target total, default 100000 */
    uint64_t  seed;             /* default 42 */
    uint32_t  rank;             /* planted latent dimensions, default 8 */
    uint32_t  drift_batches;    /* weekly batch files, default 0 */
    uint32_t  batch_ratings;    /* ratings per batch, default n_ratings/50 */
    double    noise;            /* rating noise std, default 0.6 */
} cm_synth_conf_t;

typedef struct cm_synth_s cm_synth_t;

void cm_synth_conf_default(cm_synth_conf_t *c);

int cm_synth_create(const cm_synth_conf_t *c, cm_synth_t **out, char *err,
    size_t errlen);
void cm_synth_destroy(cm_synth_t *s);

/* The catalogue, including the films that appear only in drift batches. */
const cm_movies_t *cm_synth_movies(const cm_synth_t *s);

/* User u's ratings (u in 0..n_users-1, external id u+1), sorted by movieId;
 * out is cleared first.  Depends only on (seed, u). */
int cm_synth_user(cm_synth_t *s, uint32_t u, cm_ratings_t *out);

/* Drift batch k (1..drift_batches); out is cleared first. */
int cm_synth_batch(cm_synth_t *s, uint32_t k, cm_ratings_t *out);

/* Planted truth (rank floats per row) for tests: NULL if out of range. */
const float *cm_synth_user_factors(const cm_synth_t *s, uint32_t u);
const float *cm_synth_item_factors(const cm_synth_t *s, uint32_t i);

/*
 * Writes DIR/ratings.csv, DIR/movies.csv and, with drift batches,
 * DIR/batches/week_001.csv ... (ratings.csv format).  Creates DIR.
 */
int cm_synth_write_dir(const cm_synth_conf_t *c, const char *dir,
    uint64_t *n_written, char *err, size_t errlen);

/* Writers in ml-latest format (header, LF, titles quoted when needed). */
int cm_ml_write_ratings_csv(const char *path, const cm_ratings_t *r,
    char *err, size_t errlen);
int cm_ml_write_movies_csv(const char *path, const cm_movies_t *m,
    char *err, size_t errlen);

#endif /* CINEMATCH_SYNTH_H */

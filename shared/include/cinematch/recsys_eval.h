/*
 * cinematch/recsys_eval.h: train/test splits and offline metrics for the
 * recommender (`cinematch eval recsys`).
 *
 * Splits
 *   random:FRAC:SEED   a uniformly random FRAC of all ratings (exactly
 *                      round(FRAC n) of them) is held out
 *   temporal-user:FRAC each user's ratings sorted by (timestamp, movieId);
 *                      the last ceil(FRAC n_u) are held out; users with
 *                      fewer than 5 ratings stay wholly in train
 *   files:BASE,TEST    given files (ml-100k u1.base,u1.test), relative to
 *                      the data directory unless absolute
 *
 * Metrics
 *   RMSE, MAE over every test rating; predictions clipped to [0.5, 5];
 *   unknown users/items fall back to the biases that exist.
 *   Ranking on the full catalogue: candidates are all items of the train
 *   matrix minus the user's training items; positives are test ratings
 *   >= 4.0 on items of the train matrix (others cannot be ranked); averaged
 *   over test users with at least one positive.  Users absent from train
 *   get the popularity ranking.
 *     P@K = hits / K          R@K = hits / n_pos        HR@K = hits > 0
 *     NDCG@K = sum_{hit at rank r} 1/log2(r+1) / sum_{r<=min(K,n_pos)} same
 *     MAP@K: AP@K = sum_{hit at rank r} P@r / min(K, n_pos), averaged
 *     coverage@K = distinct items in any top-K / items in train
 */
#ifndef CINEMATCH_RECSYS_EVAL_H
#define CINEMATCH_RECSYS_EVAL_H

#include <stddef.h>
#include <stdint.h>

#include "cinematch/movielens.h"
#include "cinematch/recsys.h"

typedef enum {
    CM_SPLIT_RANDOM = 1,
    CM_SPLIT_TEMPORAL_USER,
    CM_SPLIT_FILES
} cm_rs_split_kind_t;

typedef struct {
    cm_rs_split_kind_t  kind;
    double              frac;
    uint64_t            seed;
    char                base[1024];
    char                test[1024];
} cm_rs_split_t;

typedef struct {
    size_t  k;
    size_t  n_pred;         /* test ratings predicted */
    double  rmse;           /* NaN when the model predicts no ratings */
    double  mae;
    size_t  n_rank_users;   /* users with >= 1 positive */
    double  precision;
    double  recall;
    double  ndcg;
    double  hr;
    double  map;
    double  coverage;
} cm_rs_metrics_t;

int cm_rs_split_parse(const char *s, cm_rs_split_t *out, char *err,
    size_t errlen);
/* "random:0.2:1" etc. into buf */
void cm_rs_split_format(const cm_rs_split_t *s, char *buf, size_t len);

/* train/test are appended to (callers pass empty ones). */
int cm_rs_split_random(const cm_ratings_t *all, double frac, uint64_t seed,
    cm_ratings_t *train, cm_ratings_t *test);
int cm_rs_split_temporal_user(const cm_ratings_t *all, double frac,
    cm_ratings_t *train, cm_ratings_t *test);

/* One user's ranking metrics: top (n_top <= k, best first), positives
 * ascending.  out: P, R, NDCG, HR, AP (all @k). */
void cm_rs_rank_user(const uint32_t *top, size_t n_top, size_t k,
    const uint32_t *pos, size_t n_pos, double out[5]);

/* Predicted rating of (external user, external item) by an explicit model
 * (ALS, BIAS, ITEMKNN), clipped to [0.5, 5]; NaN for ranking-only ones. */
float cm_rs_predict(const cm_rs_model_t *m, const cm_rs_data_t *train,
    int32_t user, int32_t item);

int cm_rs_evaluate(const cm_rs_model_t *m, const cm_rs_data_t *train,
    const cm_rating_t *test, size_t n_test, size_t k, cm_rs_metrics_t *out,
    char *err, size_t errlen);

#endif /* CINEMATCH_RECSYS_EVAL_H */

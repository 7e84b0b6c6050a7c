/*
 * test_recsys_eval.c: metrics on hand-computed cases and the splits.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cinematch/common.h"
#include "cinematch/recsys.h"
#include "cinematch/recsys_eval.h"

#define NEAR(a, b) assert_true(fabs((double) (a) - (double) (b)) < 1e-4)


static void
test_rank_metrics_match_hand_computed_values(void **state)
{
    /* top [5 3 9 1], positives {1 3 7}: hits at ranks 2 and 4 */
    uint32_t  top[] = { 5, 3, 9, 1 }, pos[] = { 1, 3, 7 };
    double    m[5];

    cm_rs_rank_user(top, 4, 4, pos, 3, m);
    NEAR(m[0], 0.5);                                    /* P@4 */
    NEAR(m[1], 2.0 / 3);                                /* R@4 */
    /* DCG 1/log2(3) + 1/log2(5) = 1.061606; IDCG 1 + 0.630930 + 0.5 */
    NEAR(m[2], 1.061606 / 2.130930);
    NEAR(m[3], 1.0);                                    /* HR */
    NEAR(m[4], (1.0 / 2 + 2.0 / 4) / 3);                /* AP@4 */

    /* fewer recommendations than K still divide P by K */
    cm_rs_rank_user(top, 2, 4, pos, 3, m);
    NEAR(m[0], 0.25);
    /* no hit */
    cm_rs_rank_user(top, 1, 4, pos, 3, m);
    NEAR(m[2], 0.0);
    NEAR(m[3], 0.0);
    /* perfect ranking gives NDCG 1 and AP 1 */
    cm_rs_rank_user(pos, 3, 10, pos, 3, m);
    NEAR(m[2], 1.0);
    NEAR(m[4], 1.0);
}


static void
test_split_parse_accepts_the_three_protocols_and_rejects_junk(void **state)
{
    cm_rs_split_t  s;
    char           buf[128];

    assert_int_equal(cm_rs_split_parse("random:0.2:7", &s, NULL, 0), CM_OK);
    assert_int_equal(s.kind, CM_SPLIT_RANDOM);
    assert_int_equal(s.seed, 7);
    cm_rs_split_format(&s, buf, sizeof(buf));
    assert_string_equal(buf, "random:0.2:7");
    assert_int_equal(cm_rs_split_parse("temporal-user:0.2", &s, NULL, 0),
                     CM_OK);
    cm_rs_split_format(&s, buf, sizeof(buf));
    assert_string_equal(buf, "temporal-user:0.2");
    assert_int_equal(cm_rs_split_parse("files:u1.base,u1.test", &s, NULL, 0),
                     CM_OK);
    assert_string_equal(s.test, "u1.test");
    cm_rs_split_format(&s, buf, sizeof(buf));
    assert_string_equal(buf, "files:u1.base,u1.test");
    assert_int_equal(cm_rs_split_parse("random:x:1", &s, NULL, 0), CM_EINVAL);
    assert_int_equal(cm_rs_split_parse("random:0.2:1z", &s, NULL, 0),
                     CM_EINVAL);
    assert_int_equal(cm_rs_split_parse("random:1.5:1", &s, NULL, 0),
                     CM_EINVAL);
    assert_int_equal(cm_rs_split_parse("random:0.2", &s, NULL, 0), CM_EINVAL);
    assert_int_equal(cm_rs_split_parse("files:a", &s, NULL, 0), CM_EINVAL);
    assert_int_equal(cm_rs_split_parse("kfold", &s, NULL, 0), CM_EINVAL);
}


static void
test_temporal_split_holds_out_latest_and_keeps_small_users(void **state)
{
    cm_ratings_t  all = { 0 }, tr = { 0 }, te = { 0 };
    cm_rating_t   x;
    int           i;

    /* user 1: 10 ratings, two share the latest timestamp; user 2: 4 */
    for (i = 0; i < 10; i++) {
        x.user = 1;
        x.item = 100 - i;
        x.ts = i < 8 ? i : 8;
        x.rating = 3.0f;
        cm_ratings_push(&all, &x);
    }
    for (i = 0; i < 4; i++) {
        x.user = 2;
        x.item = i + 1;
        x.ts = i;
        cm_ratings_push(&all, &x);
    }
    assert_int_equal(cm_rs_split_temporal_user(&all, 0.2, &tr, &te), CM_OK);
    assert_int_equal(te.n, 2);                   /* ceil(0.2 * 10) */
    assert_int_equal(tr.n, 12);
    /* ts 8 tie: movie 91 and 92, sorted by movie id */
    assert_int_equal(te.v[0].item, 91);
    assert_int_equal(te.v[1].item, 92);
    cm_ratings_free(&tr);
    cm_ratings_free(&te);
    /* ceil: 0.25 * 10 = 2.5 -> 3 */
    assert_int_equal(cm_rs_split_temporal_user(&all, 0.25, &tr, &te), CM_OK);
    assert_int_equal(te.n, 3);
    cm_ratings_free(&tr);
    cm_ratings_free(&te);
    cm_ratings_free(&all);
}


static void
test_random_split_holds_out_exact_fraction_deterministically(void **state)
{
    cm_ratings_t  all = { 0 }, a = { 0 }, b = { 0 }, c = { 0 }, d = { 0 };
    cm_rating_t   x = { 0, 1, 1, 3.0f };
    int           i;

    for (i = 0; i < 1000; i++) {
        x.item = i + 1;
        cm_ratings_push(&all, &x);
    }
    assert_int_equal(cm_rs_split_random(&all, 0.2, 3, &a, &b), CM_OK);
    assert_int_equal(b.n, 200);
    assert_int_equal(a.n, 800);
    assert_int_equal(cm_rs_split_random(&all, 0.2, 3, &c, &d), CM_OK);
    assert_memory_equal(b.v, d.v, b.n * sizeof(cm_rating_t));
    cm_ratings_free(&a); cm_ratings_free(&b);
    cm_ratings_free(&c); cm_ratings_free(&d);
    cm_ratings_free(&all);
}


static void
test_rmse_and_mae_of_a_constant_predictor_match_hand_values(void **state)
{
    /* a bias model with a huge reg predicts the global mean 3.0 */
    cm_rating_t         tr[] = { { 0, 1, 1, 2.0f }, { 0, 2, 1, 4.0f },
                                 { 0, 1, 2, 3.0f }, { 0, 2, 2, 3.0f } };
    cm_rating_t         te[] = { { 0, 1, 3, 5.0f }, { 0, 2, 2, 1.0f },
                                 { 0, 9, 9, 4.0f } };
    cm_rs_data_t        d;
    cm_rs_train_conf_t  c;
    cm_rs_model_t      *m;
    cm_rs_metrics_t     mt;

    assert_int_equal(cm_rs_data_build(tr, 4, &d, NULL, 0), CM_OK);
    cm_rs_train_conf_default(&c);
    c.algo = CM_RS_BIAS;
    c.reg = 1e6f;
    assert_int_equal(cm_rs_train(&d, &c, &m, NULL, 0), CM_OK);
    assert_int_equal(cm_rs_evaluate(m, &d, te, 3, 10, &mt, NULL, 0), CM_OK);
    /* errors 2, 2, 1: RMSE sqrt(9/3), MAE 5/3 */
    NEAR(mt.rmse, sqrt(3.0));
    NEAR(mt.mae, 5.0 / 3);
    assert_int_equal(mt.n_pred, 3);
    /* positives: user 1 item 3 (not in train: unrankable), user 9 item 9
     * (unknown item) -> no rankable positive at all */
    assert_int_equal(mt.n_rank_users, 0);
    cm_rs_model_free(m);
    cm_rs_data_free(&d);
}


static void
test_popularity_ranking_on_a_tiny_catalogue(void **state)
{
    /* items 1 (3 ratings) > 2 (2) > 3 (1); user 5 has seen item 1 */
    cm_rating_t         tr[] = { { 0, 1, 1, 3.0f }, { 0, 2, 1, 3.0f },
                                 { 0, 5, 1, 3.0f }, { 0, 1, 2, 3.0f },
                                 { 0, 2, 2, 3.0f }, { 0, 1, 3, 3.0f } };
    cm_rating_t         te[] = { { 0, 5, 3, 5.0f } };
    cm_rs_data_t        d;
    cm_rs_train_conf_t  c;
    cm_rs_model_t      *m;
    cm_rs_metrics_t     mt;

    assert_int_equal(cm_rs_data_build(tr, 6, &d, NULL, 0), CM_OK);
    cm_rs_train_conf_default(&c);
    c.algo = CM_RS_POP;
    assert_int_equal(cm_rs_train(&d, &c, &m, NULL, 0), CM_OK);
    assert_int_equal(cm_rs_evaluate(m, &d, te, 1, 2, &mt, NULL, 0), CM_OK);
    /* user 5's list: [2, 3] (1 excluded): hit at rank 2 */
    assert_true(isnan(mt.rmse));
    assert_int_equal(mt.n_rank_users, 1);
    NEAR(mt.precision, 0.5);
    NEAR(mt.recall, 1.0);
    NEAR(mt.ndcg, 1.0 / log2(3.0));
    NEAR(mt.map, 0.5);
    NEAR(mt.coverage, 2.0 / 3);
    cm_rs_model_free(m);
    cm_rs_data_free(&d);
}


/* ratings = 3 + planted rank-2 signal, 70% observed, split 80/20 */
static void
planted_split(cm_ratings_t *tr, cm_ratings_t *te)
{
    cm_ratings_t  all = { 0 };
    cm_rating_t   x;
    int           u, i;

    for (u = 0; u < 60; u++) {
        for (i = 0; i < 40; i++) {
            double a = sin(u * 0.7) * cos(i * 1.3), b = cos(u * 0.3 + i);

            if ((u * 7 + i * 13) % 10 >= 7) {
                continue;
            }
            x.user = u + 1;
            x.item = i + 1;
            x.ts = u * 100 + i;
            x.rating = (float) (3.0 + 1.2 * a + 0.6 * b);
            cm_ratings_push(&all, &x);
        }
    }
    assert_int_equal(cm_rs_split_random(&all, 0.2, 5, tr, te), CM_OK);
    cm_ratings_free(&all);
}


static void
test_knn_blend_prediction_is_the_residual_vote_formula(void **state)
{
    cm_ratings_t        tr = { 0 }, te = { 0 };
    cm_rs_data_t        d;
    cm_rs_train_conf_t  c;
    cm_rs_model_t      *m;
    cm_rs_metrics_t     plain, blend;
    uint32_t            q, k;
    size_t              t;
    int                 checked = 0;

    planted_split(&tr, &te);
    assert_int_equal(cm_rs_data_build(tr.v, tr.n, &d, NULL, 0), CM_OK);
    cm_rs_train_conf_default(&c);
    c.factors = 2;
    c.iters = 10;
    c.reg = 0.05f;
    assert_int_equal(cm_rs_train(&d, &c, &m, NULL, 0), CM_OK);
    assert_int_equal(cm_rs_evaluate(m, &d, te.v, te.n, 5, &plain, NULL, 0),
                     CM_OK);
    cm_rs_model_free(m);
    c.knn_blend = 2.0f;
    c.knn = 10;
    assert_int_equal(cm_rs_train(&d, &c, &m, NULL, 0), CM_OK);
    assert_int_equal(cm_rs_evaluate(m, &d, te.v, te.n, 5, &blend, NULL, 0),
                     CM_OK);
    assert_true(isfinite(blend.rmse) && blend.rmse < 1.0);
    assert_true(blend.rmse != plain.rmse);
    assert_true(blend.ndcg >= 0 && blend.ndcg <= 1);

    /* recompute a few predictions by hand from the neighbour lists */
    for (t = 0; t < te.n && checked < 5; t++) {
        int64_t  u = cm_rs_find_id(m->user_ext, m->n_users, te.v[t].user);
        int64_t  i = cm_rs_find_id(m->item_ext, m->n_items, te.v[t].item);
        double   num = 0, den = 0, p;
        uint64_t e;

        if (u < 0 || i < 0) {
            continue;
        }
#define RAW(uu, ii) (m->mean + m->bu[uu] + m->bi[ii]                        \
                     + m->U[(uu) * 2] * m->V[(ii) * 2]                      \
                     + m->U[(uu) * 2 + 1] * m->V[(ii) * 2 + 1])
        p = RAW(u, i);
        for (k = 0; k < m->knn; k++) {
            q = m->nn_idx[i * m->knn + k];
            if (q == UINT32_MAX) {
                break;
            }
            for (e = d.u_ptr[u]; e < d.u_ptr[u + 1]; e++) {
                if (d.u_idx[e] == q) {
                    num += m->nn_sim[i * m->knn + k] * (d.u_val[e] - RAW(u, q));
                    den += m->nn_sim[i * m->knn + k];
                }
            }
        }
        if (den > 0) {
            p += num / (den + 2.0);
        }
        p = p < 0.5 ? 0.5 : (p > 5 ? 5 : p);
        NEAR(cm_rs_predict(m, &d, te.v[t].user, te.v[t].item), p);
        checked++;
    }
    assert_int_equal(checked, 5);
    cm_rs_model_free(m);
    cm_rs_data_free(&d);
    cm_ratings_free(&tr);
    cm_ratings_free(&te);
}


static void
test_every_algorithm_evaluates_to_metrics_in_range(void **state)
{
    cm_ratings_t        tr = { 0 }, te = { 0 };
    cm_rs_data_t        d;
    cm_rs_train_conf_t  c;
    cm_rs_model_t      *m;
    cm_rs_metrics_t     mt;
    cm_rs_algo_t        a[] = { CM_RS_ALS, CM_RS_IALS, CM_RS_BIAS, CM_RS_POP,
                                CM_RS_ITEMKNN };
    size_t              j;
    double              bias_rmse = 0;

    planted_split(&tr, &te);
    assert_int_equal(cm_rs_data_build(tr.v, tr.n, &d, NULL, 0), CM_OK);
    for (j = 0; j < CM_ARRAY_SIZE(a); j++) {
        cm_rs_train_conf_default(&c);
        c.algo = a[j];
        c.factors = 4;
        c.iters = 8;
        c.reg = a[j] == CM_RS_BIAS ? 2.0f : (a[j] == CM_RS_IALS ? 1.0f
                                                                 : 0.05f);
        c.knn = 10;
        c.conf_thr = 3.0f;
        c.conf_below = 0.2f;
        assert_int_equal(cm_rs_train(&d, &c, &m, NULL, 0), CM_OK);
        assert_int_equal(cm_rs_evaluate(m, &d, te.v, te.n, 5, &mt, NULL, 0),
                         CM_OK);
        assert_true(mt.n_rank_users > 0);
        assert_true(mt.precision >= 0 && mt.precision <= 1);
        assert_true(mt.recall >= 0 && mt.recall <= 1);
        assert_true(mt.ndcg >= 0 && mt.ndcg <= 1);
        assert_true(mt.map >= 0 && mt.map <= mt.hr + 1e-12);
        assert_true(mt.coverage > 0 && mt.coverage <= 1);
        if (a[j] == CM_RS_BIAS) {
            bias_rmse = mt.rmse;
        }
        if (a[j] == CM_RS_ALS) {
            assert_true(mt.rmse < 0.5);     /* planted rank 2, no noise */
        }
        if (a[j] == CM_RS_IALS || a[j] == CM_RS_POP) {
            assert_true(isnan(mt.rmse));
        }
        cm_rs_model_free(m);
    }
    assert_true(bias_rmse > 0);
    cm_rs_data_free(&d);
    cm_ratings_free(&tr);
    cm_ratings_free(&te);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rank_metrics_match_hand_computed_values),
        cmocka_unit_test(
            test_split_parse_accepts_the_three_protocols_and_rejects_junk),
        cmocka_unit_test(
            test_temporal_split_holds_out_latest_and_keeps_small_users),
        cmocka_unit_test(
            test_random_split_holds_out_exact_fraction_deterministically),
        cmocka_unit_test(
            test_rmse_and_mae_of_a_constant_predictor_match_hand_values),
        cmocka_unit_test(test_popularity_ranking_on_a_tiny_catalogue),
        cmocka_unit_test(
            test_knn_blend_prediction_is_the_residual_vote_formula),
        cmocka_unit_test(test_every_algorithm_evaluates_to_metrics_in_range),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

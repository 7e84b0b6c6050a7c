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
    assert_int_equal(cm_rs_split_parse("files:u1.base,u1.test", &s, NULL, 0),
                     CM_OK);
    assert_string_equal(s.test, "u1.test");
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
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

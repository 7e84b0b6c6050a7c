/*
 * test_recsys.c: ALS / iALS training on planted data, determinism across
 * thread counts, the reference ALS, baselines, scoring and fold-in.
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
#include "cinematch/rng.h"

#define NU  80
#define NI  60
#define R   3


/* ratings = 3 + U*.V* on ~60% of the cells, ids offset to look external */
static void
planted(cm_ratings_t *r, double noise)
{
    float     U[NU][R], V[NI][R];
    cm_rng_t  g;
    int       u, i, c;

    cm_rng_seed(&g, 99, 0);
    for (u = 0; u < NU; u++) {
        for (c = 0; c < R; c++) {
            U[u][c] = (float) (0.6 * cm_rng_normal(&g));
        }
    }
    for (i = 0; i < NI; i++) {
        for (c = 0; c < R; c++) {
            V[i][c] = (float) (0.6 * cm_rng_normal(&g));
        }
    }
    memset(r, 0, sizeof(*r));
    for (u = 0; u < NU; u++) {
        for (i = 0; i < NI; i++) {
            cm_rating_t x;
            double      v = 3.0;

            if (cm_rng_unif(&g) > 0.6) {
                continue;
            }
            for (c = 0; c < R; c++) {
                v += U[u][c] * V[i][c];
            }
            x.user = 1000 + u * 3;
            x.item = 50 + i * 7;
            x.rating = (float) (v + noise * cm_rng_normal(&g));
            x.ts = 1000000 + u * 100 + i;
            assert_int_equal(cm_ratings_push(r, &x), CM_OK);
        }
    }
}


static double
train_rmse(const cm_rs_model_t *m, const cm_rs_data_t *d)
{
    double    se = 0, e;
    uint32_t  u, c, i;
    uint64_t  p;

    for (u = 0; u < d->n_users; u++) {
        for (p = d->u_ptr[u]; p < d->u_ptr[u + 1]; p++) {
            i = d->u_idx[p];
            e = m->mean + m->bu[u] + m->bi[i] - d->u_val[p];
            for (c = 0; c < m->factors; c++) {
                e += m->U[u * m->factors + c] * m->V[i * m->factors + c];
            }
            se += e * e;
        }
    }
    return sqrt(se / (double) d->nnz);
}


static void
test_data_build_maps_ids_and_keeps_latest_duplicate(void **state)
{
    cm_rating_t   r[] = { { 5, 10, 7, 1.0f }, { 9, 10, 3, 2.0f },
                          { 1, 4, 7, 3.0f }, { 7, 10, 7, 4.5f } };
    cm_rs_data_t  d;

    assert_int_equal(cm_rs_data_build(r, 4, &d, NULL, 0), CM_OK);
    assert_int_equal(d.n_users, 2);
    assert_int_equal(d.n_items, 2);
    assert_int_equal(d.nnz, 3);                 /* (10,7) twice */
    assert_int_equal(d.user_ext[0], 4);
    assert_int_equal(d.item_ext[1], 7);
    /* user 10 (dense 1): items 3 and 7, the duplicate kept at ts 7 */
    assert_int_equal(d.u_ptr[2] - d.u_ptr[1], 2);
    assert_true(d.u_val[d.u_ptr[1] + 1] == 4.5f);
    assert_int_equal(cm_rs_find_id(d.user_ext, d.n_users, 10), 1);
    assert_int_equal(cm_rs_find_id(d.user_ext, d.n_users, 11), -1);
    assert_int_equal(d.i_ptr[2] - d.i_ptr[1], 2);
    assert_true(fabsf(d.mean - (3.0f + 2.0f + 4.5f) / 3) < 1e-6);
    cm_rs_data_free(&d);

    /* ids too large for the lookup table take the sorting path */
    r[2].user = 1 << 30;
    r[3].item = 2000000000;
    assert_int_equal(cm_rs_data_build(r, 4, &d, NULL, 0), CM_OK);
    assert_int_equal(d.n_users, 2);
    assert_int_equal(d.n_items, 3);
    assert_int_equal(d.nnz, 4);
    assert_int_equal(d.user_ext[1], 1 << 30);
    assert_int_equal(d.item_ext[2], 2000000000);
    assert_int_equal(d.u_idx[d.u_ptr[0] + 2], 2);   /* user 10: 3, 7, 2e9 */
    cm_rs_data_free(&d);
}


static void
test_als_loss_decreases_monotonically_and_fits_planted_rank(void **state)
{
    cm_ratings_t        r;
    cm_rs_data_t        d;
    cm_rs_train_conf_t  c;
    cm_rs_model_t      *m;
    double              loss[20];
    int                 it;

    planted(&r, 0.0);
    assert_int_equal(cm_rs_data_build(r.v, r.n, &d, NULL, 0), CM_OK);
    cm_rs_train_conf_default(&c);
    c.factors = 4;
    c.iters = 20;
    c.reg = 0.001f;
    c.loss = loss;
    assert_int_equal(cm_rs_train(&d, &c, &m, NULL, 0), CM_OK);
    for (it = 1; it < 20; it++) {
        assert_true(loss[it] <= loss[it - 1] * (1 + 1e-5) + 1e-6);
    }
    assert_true(loss[19] < loss[0]);
    assert_true(train_rmse(m, &d) < 0.05);
    cm_rs_model_free(m);
    /* the same with reg * n^0.4 and a separate bias weight */
    c.reg_exp = 0.4f;
    c.bias_reg = 0.5f;
    c.reg = 0.01f;
    assert_int_equal(cm_rs_train(&d, &c, &m, NULL, 0), CM_OK);
    for (it = 1; it < 20; it++) {
        assert_true(loss[it] <= loss[it - 1] * (1 + 1e-5) + 1e-6);
    }
    cm_rs_model_free(m);
    cm_rs_data_free(&d);
    cm_ratings_free(&r);
}


static void
test_als_is_bit_identical_across_thread_counts(void **state)
{
    cm_ratings_t        r;
    cm_rs_data_t        d;
    cm_rs_train_conf_t  c;
    cm_rs_model_t      *a, *b;

    planted(&r, 0.3);
    assert_int_equal(cm_rs_data_build(r.v, r.n, &d, NULL, 0), CM_OK);
    cm_rs_train_conf_default(&c);
    c.factors = 8;
    c.iters = 5;
    c.threads = 1;
    assert_int_equal(cm_rs_train(&d, &c, &a, NULL, 0), CM_OK);
    c.threads = 3;
    assert_int_equal(cm_rs_train(&d, &c, &b, NULL, 0), CM_OK);
    assert_memory_equal(a->U, b->U, (size_t) d.n_users * 8 * sizeof(float));
    assert_memory_equal(a->V, b->V, (size_t) d.n_items * 8 * sizeof(float));
    assert_memory_equal(a->bi, b->bi, d.n_items * sizeof(float));
    cm_rs_model_free(a);
    cm_rs_model_free(b);
    cm_rs_data_free(&d);
    cm_ratings_free(&r);
}


static void
test_reference_als_matches_blas_als(void **state)
{
    cm_ratings_t        r;
    cm_rs_data_t        d;
    cm_rs_train_conf_t  c;
    cm_rs_model_t      *a, *b;
    double              la[3], lb[3];

    planted(&r, 0.3);
    assert_int_equal(cm_rs_data_build(r.v, r.n, &d, NULL, 0), CM_OK);
    cm_rs_train_conf_default(&c);
    c.factors = 6;
    c.iters = 3;
    c.reg = 0.3f;
    c.reg_exp = 0.4f;                   /* and the bias column scaling */
    c.bias_reg = 0.5f;
    c.loss = la;
    assert_int_equal(cm_rs_train(&d, &c, &a, NULL, 0), CM_OK);
    c.loss = lb;
    assert_int_equal(cm_rs_train_als_reference(&d, &c, &b, NULL, 0), CM_OK);
    assert_true(fabs(la[2] - lb[2]) < 1e-3 * la[2]);
    assert_true(fabs(train_rmse(a, &d) - train_rmse(b, &d)) < 1e-3);
    cm_rs_model_free(a);
    cm_rs_model_free(b);
    cm_rs_data_free(&d);
    cm_ratings_free(&r);
}


static void
test_ials_and_knn_rank_a_users_unseen_preferences_above_chance(void **s)
{
    /* two taste groups: users 0..19 rate items 0..9, users 20..39 rate
     * items 10..19; each user misses one item of their group, which the
     * model must rank first among the unseen */
    cm_ratings_t        r = { 0 };
    cm_rs_data_t        d;
    cm_rs_train_conf_t  c;
    cm_rs_model_t      *m;
    cm_rs_algo_t        algos[] = { CM_RS_IALS, CM_RS_ITEMKNN, CM_RS_ALS,
                                    CM_RS_IALS };
    cm_rating_t         x;
    int                 u, i, a, good;
    uint32_t            top[1], uu;
    float               sc[1], *row;

    for (u = 0; u < 40; u++) {
        for (i = 0; i < 10; i++) {
            if (i == u % 10) {
                continue;
            }
            x.user = u + 1;
            x.item = (u < 20 ? i : i + 10) + 1;
            x.rating = 4.0f + (float) ((u + i) % 3) * 0.5f;
            x.ts = 0;
            assert_int_equal(cm_ratings_push(&r, &x), CM_OK);
        }
    }
    assert_int_equal(cm_rs_data_build(r.v, r.n, &d, NULL, 0), CM_OK);
    row = malloc(d.n_items * sizeof(float));
    for (a = 0; a < 4; a++) {
        cm_rs_train_conf_default(&c);
        c.algo = algos[a];
        c.cg_steps = a == 3 ? 3 : 0;            /* iALS by CG too */
        c.factors = 4;
        c.iters = 10;
        c.reg = algos[a] == CM_RS_IALS ? 0.1f : 0.05f;
        c.knn = 20;
        assert_int_equal(cm_rs_train(&d, &c, &m, NULL, 0), CM_OK);
        good = 0;
        for (u = 0; u < 40; u++) {
            uu = (uint32_t) u;
            if (algos[a] == CM_RS_ITEMKNN) {
                uint64_t p;
                uint32_t q;

                memset(row, 0, d.n_items * sizeof(float));
                for (p = m->seen_ptr[u]; p < m->seen_ptr[u + 1]; p++) {
                    for (q = 0; q < m->knn; q++) {
                        uint32_t nb = m->nn_idx[m->seen_idx[p] * m->knn + q];

                        if (nb != UINT32_MAX) {
                            row[nb] += m->nn_sim[m->seen_idx[p] * m->knn + q];
                        }
                    }
                }
            } else {
                assert_int_equal(cm_rs_score_users(m, &uu, 1, row), CM_OK);
            }
            cm_rs_topk(row, d.n_items, m->seen_idx + m->seen_ptr[u],
                       m->seen_ptr[u + 1] - m->seen_ptr[u], 1, top, sc);
            good += top[0] == (uint32_t) ((u < 20 ? 0 : 10) + u % 10);
        }
        if (algos[a] != CM_RS_ALS) {
            assert_true(good >= 36);
        }
        cm_rs_model_free(m);
    }
    free(row);
    cm_rs_data_free(&d);
    cm_ratings_free(&r);
}


static void
test_cg_solver_reaches_the_cholesky_fit(void **state)
{
    cm_ratings_t        r;
    cm_rs_data_t        d;
    cm_rs_train_conf_t  c;
    cm_rs_model_t      *a, *b;
    double              ra, rb;

    planted(&r, 0.1);
    assert_int_equal(cm_rs_data_build(r.v, r.n, &d, NULL, 0), CM_OK);
    cm_rs_train_conf_default(&c);
    c.factors = 4;
    c.iters = 15;
    c.reg = 0.01f;
    assert_int_equal(cm_rs_train(&d, &c, &a, NULL, 0), CM_OK);
    c.cg_steps = 3;
    c.threads = 2;
    assert_int_equal(cm_rs_train(&d, &c, &b, NULL, 0), CM_OK);
    ra = train_rmse(a, &d);
    rb = train_rmse(b, &d);
    assert_true(rb < ra + 0.02);
    assert_true(rb < 0.2);
    cm_rs_model_free(a);
    cm_rs_model_free(b);
    cm_rs_data_free(&d);
    cm_ratings_free(&r);
}


static void
test_topk_breaks_ties_by_index_and_skips_excluded(void **state)
{
    float     s[] = { 1.0f, 5.0f, 3.0f, 5.0f, NAN, 4.0f, 2.0f };
    uint32_t  ex[] = { 5 }, idx[4];
    float     sc[4];

    assert_int_equal(cm_rs_topk(s, 7, ex, 1, 4, idx, sc), 4);
    assert_int_equal(idx[0], 1);
    assert_int_equal(idx[1], 3);
    assert_int_equal(idx[2], 2);
    assert_int_equal(idx[3], 6);
    assert_true(sc[0] == 5.0f && sc[3] == 2.0f);
    assert_int_equal(cm_rs_topk(s, 3, NULL, 0, 10, idx, sc), 3);
    assert_int_equal(idx[2], 0);
}


static void
test_fold_in_recovers_a_trained_users_vector(void **state)
{
    cm_ratings_t        r;
    cm_rs_data_t        d;
    cm_rs_train_conf_t  c;
    cm_rs_model_t      *m;
    float               x[8], b, *s1, *s2;
    uint32_t            u = 5, i;
    uint64_t            p0;
    size_t              n;

    planted(&r, 0.2);
    assert_int_equal(cm_rs_data_build(r.v, r.n, &d, NULL, 0), CM_OK);
    cm_rs_train_conf_default(&c);
    c.factors = 8;
    c.iters = 30;
    assert_int_equal(cm_rs_train(&d, &c, &m, NULL, 0), CM_OK);
    p0 = d.u_ptr[u];
    n = d.u_ptr[u + 1] - p0;
    assert_int_equal(cm_rs_fold_in(m, d.u_idx + p0, d.u_val + p0, n, 0, x,
                                   &b), CM_OK);
    s1 = malloc(d.n_items * sizeof(float));
    s2 = malloc(d.n_items * sizeof(float));
    cm_rs_score_vector(m, x, b, s1);
    assert_int_equal(cm_rs_score_users(m, &u, 1, s2), CM_OK);
    for (i = 0; i < d.n_items; i++) {
        assert_true(fabsf(s1[i] - s2[i]) < 0.05f);
    }
    i = 9999;
    assert_int_equal(cm_rs_fold_in(m, &i, s1, 1, 0, x, &b), CM_EINVAL);
    free(s1);
    free(s2);
    cm_rs_model_free(m);
    cm_rs_data_free(&d);
    cm_ratings_free(&r);
}


static float
cosine_ref(const cm_rs_model_t *m, uint32_t a, uint32_t b)
{
    double    dot = 0, na = 0, nb = 0;
    uint32_t  c, k = m->factors;

    for (c = 0; c < k; c++) {
        dot += m->V[a * k + c] * m->V[b * k + c];
        na += m->V[a * k + c] * m->V[a * k + c];
        nb += m->V[b * k + c] * m->V[b * k + c];
    }
    return (float) (dot / sqrt(na * nb));
}


static void
test_similar_explain_and_popular_follow_factors_and_counts(void **state)
{
    cm_ratings_t        r;
    cm_rs_data_t        d;
    cm_rs_train_conf_t  c;
    cm_rs_model_t      *m;
    uint32_t            idx[5];
    float               sc[5];
    size_t              n, j;

    planted(&r, 0.2);
    assert_int_equal(cm_rs_data_build(r.v, r.n, &d, NULL, 0), CM_OK);
    cm_rs_train_conf_default(&c);
    c.factors = 4;
    c.iters = 5;
    assert_int_equal(cm_rs_train(&d, &c, &m, NULL, 0), CM_OK);
    assert_int_equal(cm_rs_similar_items(m, 3, 5, idx, sc, &n), CM_OK);
    assert_int_equal(n, 5);
    for (j = 0; j < n; j++) {
        assert_int_not_equal(idx[j], 3);
        assert_true(sc[j] <= 1.0001f && sc[j] >= -1.0001f);
        if (j > 0) {
            assert_true(sc[j] <= sc[j - 1]);
        }
    }
    assert_int_equal(cm_rs_similar_items(m, NI, 5, idx, sc, &n), CM_EINVAL);

    /* explanation: a seen item, and the best cosine among the seen */
    {
        uint32_t  because, u = 7;
        float     sim, c2;
        uint64_t  p;

        assert_int_equal(cm_rs_explain(m, u, 3, &because, &sim), CM_OK);
        for (p = m->seen_ptr[u]; p < m->seen_ptr[u + 1]; p++) {
            if (m->seen_idx[p] == because) {
                break;
            }
        }
        assert_true(p < m->seen_ptr[u + 1]);
        for (p = m->seen_ptr[u]; p < m->seen_ptr[u + 1]; p++) {
            uint32_t q = m->seen_idx[p];

            if (q == 3) {
                continue;
            }
            c2 = cosine_ref(m, 3, q);
            assert_true(c2 <= sim + 1e-5f);
        }
    }
    /* cold start: counts descending, exclusions honoured */
    {
        uint32_t ex[1];

        assert_int_equal(cm_rs_popular(m, NULL, 0, 5, idx, sc, &n), CM_OK);
        assert_int_equal(n, 5);
        assert_true(sc[0] >= sc[4]);
        assert_true(sc[0] == (float) m->pop[idx[0]]);
        ex[0] = idx[0];
        assert_int_equal(cm_rs_popular(m, ex, 1, 1, idx + 1, sc, &n), CM_OK);
        assert_int_not_equal(idx[1], ex[0]);
    }
    cm_rs_model_free(m);
    cm_rs_data_free(&d);
    cm_ratings_free(&r);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_data_build_maps_ids_and_keeps_latest_duplicate),
        cmocka_unit_test(
            test_als_loss_decreases_monotonically_and_fits_planted_rank),
        cmocka_unit_test(test_als_is_bit_identical_across_thread_counts),
        cmocka_unit_test(test_reference_als_matches_blas_als),
        cmocka_unit_test(
            test_ials_and_knn_rank_a_users_unseen_preferences_above_chance),
        cmocka_unit_test(test_cg_solver_reaches_the_cholesky_fit),
        cmocka_unit_test(test_topk_breaks_ties_by_index_and_skips_excluded),
        cmocka_unit_test(test_fold_in_recovers_a_trained_users_vector),
        cmocka_unit_test(
            test_similar_explain_and_popular_follow_factors_and_counts),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_synth.c: synthetic data is deterministic, MovieLens-shaped, readable
 * by our own reader, and its drift batches shift.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "cinematch/common.h"
#include "cinematch/movielens.h"
#include "cinematch/synth.h"


static void
small_conf(cm_synth_conf_t *c)
{
    cm_synth_conf_default(c);
    c->n_users = 60;
    c->n_items = 400;
    c->n_ratings = 3000;
    c->seed = 7;
    c->drift_batches = 3;
    c->batch_ratings = 400;
}


static void
test_same_seed_gives_same_users_and_other_seed_differs(void **state)
{
    cm_synth_conf_t  c;
    cm_synth_t      *a, *b;
    cm_ratings_t     ra = { 0 }, rb = { 0 };

    small_conf(&c);
    assert_int_equal(cm_synth_create(&c, &a, NULL, 0), CM_OK);
    assert_int_equal(cm_synth_create(&c, &b, NULL, 0), CM_OK);
    /* order of generation does not matter: streams are per user */
    assert_int_equal(cm_synth_user(b, 9, &rb), CM_OK);
    assert_int_equal(cm_synth_user(a, 3, &ra), CM_OK);
    assert_int_equal(cm_synth_user(a, 9, &ra), CM_OK);
    assert_int_equal(ra.n, rb.n);
    assert_true(ra.n >= 20);
    assert_memory_equal(ra.v, rb.v, ra.n * sizeof(cm_rating_t));
    cm_synth_destroy(b);
    c.seed = 8;
    assert_int_equal(cm_synth_create(&c, &b, NULL, 0), CM_OK);
    assert_int_equal(cm_synth_user(b, 9, &rb), CM_OK);
    assert_true(ra.n != rb.n
                || memcmp(ra.v, rb.v, ra.n * sizeof(cm_rating_t)) != 0);
    cm_ratings_free(&ra);
    cm_ratings_free(&rb);
    cm_synth_destroy(a);
    cm_synth_destroy(b);
}


static void
test_written_files_read_back_strictly_with_movielens_shape(void **state)
{
    cm_synth_conf_t  c;
    cm_ml_dataset_t  ds;
    cm_ml_opts_t     o = { 1, NULL, NULL, 0, 0 };
    char             dir[] = "/tmp/cm_test_synth_XXXXXX", err[512], p[600];
    uint64_t         n;
    size_t           i, halves = 0;
    double           sum = 0;
    cm_ratings_t     b = { 0 };

    small_conf(&c);
    assert_non_null(mkdtemp(dir));
    assert_int_equal(cm_synth_write_dir(&c, dir, &n, err, sizeof(err)), CM_OK);
    assert_int_equal(cm_ml_load_dir(dir, CM_ML_AUTO, &o, &ds, err,
                                    sizeof(err)), CM_OK);
    assert_int_equal(ds.format, CM_ML_LATEST);
    assert_int_equal(ds.ratings.n, n);
    assert_true(n > 2500 && n < 3500);
    assert_true(ds.movies.n > 400);                 /* + batch-only films */
    for (i = 0; i < ds.ratings.n; i++) {
        sum += ds.ratings.v[i].rating;
        halves += ds.ratings.v[i].rating
                  != (float) (int) ds.ratings.v[i].rating;
        assert_true(ds.ratings.v[i].ts >= 946684800);
    }
    assert_true(sum / n > 3.2 && sum / n < 3.8);    /* MovieLens: 3.50 */
    assert_true(halves > 0);
    for (i = 0; i < ds.movies.n; i++) {
        assert_true(ds.movies.v[i].year >= 1915 && ds.movies.v[i].year <= 2018);
        assert_true(ds.movies.v[i].genres != 0);
    }
    snprintf(p, sizeof(p), "%s/batches/week_003.csv", dir);
    assert_int_equal(cm_ml_read_ratings_file(p, CM_ML_LATEST, &o, &b, err,
                                             sizeof(err)), CM_OK);
    assert_int_equal(b.n, 400);
    cm_ratings_free(&b);
    cm_ml_dataset_free(&ds);
    snprintf(p, sizeof(p), "rm -rf '%s'", dir);
    assert_int_equal(system(p), 0);
}


static void
test_drift_batches_shift_rating_mean_down_and_add_new_films(void **state)
{
    cm_synth_conf_t  c;
    cm_synth_t      *s;
    cm_ratings_t     r1 = { 0 }, r3 = { 0 };
    double           m1 = 0, m3 = 0;
    size_t           i, new3 = 0;
    int32_t          max_main;

    small_conf(&c);
    assert_int_equal(cm_synth_create(&c, &s, NULL, 0), CM_OK);
    max_main = cm_synth_movies(s)->v[c.n_items - 1].id;
    assert_int_equal(cm_synth_batch(s, 1, &r1), CM_OK);
    assert_int_equal(cm_synth_batch(s, 3, &r3), CM_OK);
    for (i = 0; i < r1.n; i++) {
        m1 += r1.v[i].rating;
    }
    for (i = 0; i < r3.n; i++) {
        m3 += r3.v[i].rating;
        new3 += r3.v[i].item > max_main;
    }
    assert_true(m3 / r3.n < m1 / r1.n - 0.1);
    /* no (user, movie) pair twice within a batch */
    for (i = 0; i < r3.n; i++) {
        size_t q;

        for (q = i + 1; q < r3.n; q++) {
            assert_false(r3.v[i].user == r3.v[q].user
                         && r3.v[i].item == r3.v[q].item);
        }
    }
    assert_true(new3 > 40);
    assert_true(r3.v[0].ts > r1.v[0].ts);
    assert_int_equal(cm_synth_batch(s, 4, &r1), CM_EINVAL);
    cm_ratings_free(&r1);
    cm_ratings_free(&r3);
    cm_synth_destroy(s);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(
            test_same_seed_gives_same_users_and_other_seed_differs),
        cmocka_unit_test(
            test_written_files_read_back_strictly_with_movielens_shape),
        cmocka_unit_test(
            test_drift_batches_shift_rating_mean_down_and_add_new_films),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

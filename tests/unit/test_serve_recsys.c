/*
 * test_serve_recsys.c: what the inference daemon answers for recsys
 * requests, on a small synthetic catalogue and a trained ALS artifact.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <jansson.h>

#include "cinematch/common.h"
#include "cinematch/lm_kernels.h"
#include "cinematch/recsys.h"
#include "cinematch/serve_recsys.h"
#include "cinematch/synth.h"

typedef struct {
    cm_rs_server_t  *srv;
    cm_synth_t      *syn;
    cm_ratings_t     all;
    char             path[128];
} fixture_t;

static fixture_t F;


static int
setup(void **state)
{
    cm_synth_conf_t     sc;
    cm_rs_train_conf_t  tc;
    cm_rs_data_t        d;
    cm_rs_model_t      *m;
    cm_ratings_t        one;
    const cm_movies_t  *mv;
    char                err[256];
    uint32_t            u;
    size_t              i;

    memset(&F, 0, sizeof(F));
    memset(&one, 0, sizeof(one));
    cm_synth_conf_default(&sc);
    sc.n_users = 120;
    sc.n_items = 300;
    sc.n_ratings = 6000;
    sc.seed = 7;
    if (cm_synth_create(&sc, &F.syn, err, sizeof(err)) != CM_OK) {
        return -1;
    }
    for (u = 0; u < sc.n_users; u++) {
        cm_synth_user(F.syn, u, &one);
        for (i = 0; i < one.n; i++) {
            cm_ratings_push(&F.all, &one.v[i]);
        }
    }
    cm_ratings_free(&one);
    if (cm_rs_data_build(F.all.v, F.all.n, &d, err, sizeof(err)) != CM_OK) {
        return -1;
    }
    cm_rs_train_conf_default(&tc);
    tc.factors = 8;
    tc.iters = 6;
    tc.reg = 0.05f;
    if (cm_rs_train(&d, &tc, &m, err, sizeof(err)) != CM_OK) {
        return -1;
    }
    snprintf(F.path, sizeof(F.path), "/tmp/cm-test-serve-%d.cmrs",
             (int) getpid());
    if (cm_rs_model_write(m, F.path, err, sizeof(err)) != CM_OK) {
        return -1;
    }
    cm_rs_model_free(m);
    cm_rs_data_free(&d);
    mv = cm_synth_movies(F.syn);
    if (cm_rs_server_open(&F.srv, F.path, "3", mv->v, mv->n, err,
                          sizeof(err)) != CM_OK)
    {
        fprintf(stderr, "open: %s\n", err);
        return -1;
    }
    return 0;
}


static int
teardown(void **state)
{
    cm_rs_server_free(F.srv);
    cm_synth_destroy(F.syn);
    cm_ratings_free(&F.all);
    unlink(F.path);
    return 0;
}


static json_t *
recommend(int32_t user, uint32_t k, int excl, uint32_t genres, int32_t ymin,
          int32_t ymax)
{
    cm_rs_rec_req_t  q = { user, k, excl, genres, ymin, ymax, 0 };
    char            *out = NULL;
    json_t          *j;

    assert_int_equal(cm_rs_server_recommend_batch(F.srv, &q, 1, &out), CM_OK);
    assert_non_null(out);
    j = json_loads(out, 0, NULL);
    free(out);
    assert_non_null(j);
    return j;
}


static int
user_rated(int32_t user, int32_t movie)
{
    size_t i;

    for (i = 0; i < F.all.n; i++) {
        if (F.all.v[i].user == user && F.all.v[i].item == movie) {
            return 1;
        }
    }
    return 0;
}


static void
test_known_user_gets_k_unseen_items_best_first(void **state)
{
    json_t   *j = recommend(5, 10, 1, 0, 0, 0), *recs, *r;
    size_t    i;
    double    prev = 1e9;
    int       because = 0;

    assert_false(json_is_true(json_object_get(j, "is_fallback")));
    assert_string_equal(json_string_value(json_object_get(j, "model_version")),
                        "3");
    assert_int_equal(json_integer_value(json_object_get(j, "user_id")), 5);
    recs = json_object_get(j, "recommendations");
    assert_int_equal(json_array_size(recs), 10);
    json_array_foreach(recs, i, r) {
        double s = json_real_value(json_object_get(r, "score"));

        assert_true(s <= prev);
        prev = s;
        assert_false(user_rated(5, (int32_t) json_integer_value(
                                        json_object_get(r, "movie_id"))));
        assert_non_null(json_string_value(json_object_get(r, "title")));
        assert_true(json_is_array(json_object_get(r, "genres")));
        because += json_object_get(r, "because") != NULL;
    }
    assert_true(because > 0);
    json_decref(j);
}


static void
test_unknown_user_falls_back_to_popular(void **state)
{
    json_t  *j = recommend(999999, 5, 1, 0, 0, 0), *p;
    char    *pop = NULL;

    assert_true(json_is_true(json_object_get(j, "is_fallback")));
    assert_string_equal(json_string_value(json_object_get(j,
                                          "fallback_reason")),
                        "unknown_user");
    assert_int_equal(json_array_size(json_object_get(j, "recommendations")),
                     5);
    /* the same films, in the same order, as /popular */
    assert_int_equal(cm_rs_server_popular(F.srv, 5, 0, &pop), CM_OK);
    p = json_loads(pop, 0, NULL);
    free(pop);
    assert_int_equal(
        json_integer_value(json_object_get(json_array_get(
            json_object_get(j, "recommendations"), 0), "movie_id")),
        json_integer_value(json_object_get(json_array_get(
            json_object_get(p, "recommendations"), 0), "movie_id")));
    assert_string_equal(json_string_value(json_object_get(p, "source")),
                        "popularity");
    json_decref(p);
    json_decref(j);

    j = recommend(0, 3, 1, 0, 0, 0);
    assert_string_equal(json_string_value(json_object_get(j,
                                          "fallback_reason")), "no_user");
    json_decref(j);
}


static void
test_genre_and_year_filters_hold_for_every_result(void **state)
{
    uint32_t  mask = 0;
    json_t   *j, *r, *g;
    size_t    i, k;
    int       found;

    assert_int_equal(cm_rs_parse_genres("Comedy,Drama", 12, &mask, NULL, 0),
                     CM_OK);
    j = recommend(7, 20, 1, mask, 1980, 2005);
    json_array_foreach(json_object_get(j, "recommendations"), i, r) {
        json_int_t y = json_integer_value(json_object_get(r, "year"));

        assert_true(y >= 1980 && y <= 2005);
        found = 0;
        json_array_foreach(json_object_get(r, "genres"), k, g) {
            found |= strcmp(json_string_value(g), "Comedy") == 0
                     || strcmp(json_string_value(g), "Drama") == 0;
        }
        assert_true(found);
    }
    assert_true(json_array_size(json_object_get(j, "recommendations")) > 0);
    json_decref(j);
}


static void
test_parse_genres_rejects_unknown_and_empty_names(void **state)
{
    uint32_t  mask;
    char      err[128];

    assert_int_equal(cm_rs_parse_genres("Comedy,Nope", 11, &mask, err,
                                        sizeof(err)), CM_EINVAL);
    assert_non_null(strstr(err, "Nope"));
    assert_int_equal(cm_rs_parse_genres("Comedy,,Drama", 13, &mask, NULL, 0),
                     CM_EINVAL);
    assert_int_equal(cm_rs_parse_genres("", 0, &mask, NULL, 0), CM_OK);
    assert_int_equal(mask, 0);
}


static void
test_similar_excludes_itself_and_404s_unknown(void **state)
{
    const cm_rs_model_t  *m = cm_rs_server_model(F.srv);
    char                 *out = NULL, err[128];
    json_t               *j, *r;
    size_t                i;
    int32_t               movie = m->item_ext[3];

    assert_int_equal(cm_rs_server_similar(F.srv, movie, 5, &out, err,
                                          sizeof(err)), CM_OK);
    j = json_loads(out, 0, NULL);
    free(out);
    assert_int_equal(json_integer_value(json_object_get(j, "movie_id")),
                     movie);
    assert_int_equal(json_array_size(json_object_get(j, "similar_items")), 5);
    json_array_foreach(json_object_get(j, "similar_items"), i, r) {
        assert_true(json_integer_value(json_object_get(r, "movie_id"))
                    != movie);
        assert_true(json_real_value(json_object_get(r, "score")) <= 1.0001);
    }
    json_decref(j);
    assert_int_equal(cm_rs_server_similar(F.srv, 77777777, 5, &out, err,
                                          sizeof(err)), CM_ENOTFOUND);
}


static void
test_fold_in_new_user_leaves_fallback_and_follows_taste(void **state)
{
    const cm_rs_model_t  *m = cm_rs_server_model(F.srv);
    int32_t               movies[6];
    float                 ratings[6] = { 5, 5, 5, 5, 5, 5 };
    json_t               *j, *r;
    size_t                i;

    for (i = 0; i < 6; i++) {
        movies[i] = m->item_ext[i * 7];
    }
    j = recommend(500001, 5, 1, 0, 0, 0);
    assert_true(json_is_true(json_object_get(j, "is_fallback")));
    json_decref(j);

    assert_int_equal(cm_rs_server_fold_in(F.srv, 500001, movies, ratings, 6,
                                          NULL, 0), CM_OK);
    assert_int_equal(cm_rs_server_overlay_users(F.srv), 1);
    j = recommend(500001, 5, 1, 0, 0, 0);
    assert_false(json_is_true(json_object_get(j, "is_fallback")));
    json_array_foreach(json_object_get(j, "recommendations"), i, r) {
        json_int_t id = json_integer_value(json_object_get(r, "movie_id"));

        /* what the user just rated is seen now */
        assert_true(id != movies[0] && id != movies[5]);
    }
    json_decref(j);
}


static void
test_fold_in_changes_a_dataset_users_recommendations_at_once(void **state)
{
    json_t   *before, *after;
    int32_t   top;
    float     r = 1.0f;
    char     *a, *b;

    before = recommend(9, 10, 1, 0, 0, 0);
    top = (int32_t) json_integer_value(json_object_get(json_array_get(
              json_object_get(before, "recommendations"), 0), "movie_id"));
    /* the user dislikes the film we would have put first */
    assert_int_equal(cm_rs_server_fold_in(F.srv, 9, &top, &r, 1, NULL, 0),
                     CM_OK);
    after = recommend(9, 10, 1, 0, 0, 0);
    a = json_dumps(json_object_get(before, "recommendations"), 0);
    b = json_dumps(json_object_get(after, "recommendations"), 0);
    assert_string_not_equal(a, b);
    assert_true(json_integer_value(json_object_get(json_array_get(
        json_object_get(after, "recommendations"), 0), "movie_id")) != top);
    free(a);
    free(b);
    json_decref(before);
    json_decref(after);
}


static void
test_fold_in_rejects_bad_ratings_and_users(void **state)
{
    int32_t  mv = cm_rs_server_model(F.srv)->item_ext[0];
    float    bad = 5.5f, nan_r = 0.0f / 0.0f;

    assert_int_equal(cm_rs_server_fold_in(F.srv, 3, &mv, &bad, 1, NULL, 0),
                     CM_EINVAL);
    assert_int_equal(cm_rs_server_fold_in(F.srv, 3, &mv, &nan_r, 1, NULL, 0),
                     CM_EINVAL);
    assert_int_equal(cm_rs_server_fold_in(F.srv, 0, &mv, &bad, 1, NULL, 0),
                     CM_EINVAL);
}


static void
test_batch_answers_equal_single_answers(void **state)
{
    cm_rs_rec_req_t  q[3] = { { 11, 5, 1, 0, 0, 0, 0 }, { 888888, 5, 1, 0, 0, 0, 0 },
                              { 12, 7, 0, 0, 0, 0, 0 } };
    char            *batch[3], *one;
    size_t           i;

    assert_int_equal(cm_rs_server_recommend_batch(F.srv, q, 3, batch), CM_OK);
    for (i = 0; i < 3; i++) {
        assert_int_equal(cm_rs_server_recommend_batch(F.srv, &q[i], 1, &one),
                         CM_OK);
        assert_string_equal(batch[i], one);
        free(one);
        free(batch[i]);
    }
}


/* The item matrix packed once scores as OpenBLAS does up to float
 * rounding, for batches across the kernel's 12-row passes and a last
 * partial 32-item panel (300 items), and for a folded-in vector. */
static void
test_packed_items_score_as_openblas_does(void **state)
{
    const cm_rs_model_t  *m = cm_rs_server_model(F.srv);
    static const size_t   sizes[] = { 1, 3, 12, 13, 25 };
    uint32_t              users[25];
    float                *a, *b, x[8];
    size_t                s, i, ni = m->n_items;

    assert_int_equal(cm_rs_server_pack_items(F.srv, 1), 1);
    assert_true(cm_rs_server_packed(F.srv));
    a = malloc(25 * ni * sizeof(float));
    b = malloc(25 * ni * sizeof(float));
    assert_non_null(a);
    assert_non_null(b);
    for (i = 0; i < 25; i++) {
        users[i] = (uint32_t) ((i * 7 + 3) % m->n_users);
    }
    for (s = 0; s < CM_ARRAY_SIZE(sizes); s++) {
        assert_int_equal(cm_rs_server_score_users(F.srv, users, sizes[s], a),
                         CM_OK);
        assert_int_equal(cm_rs_score_users(m, users, sizes[s], b), CM_OK);
        for (i = 0; i < sizes[s] * ni; i++) {
            assert_float_equal(a[i], b[i], 1e-5f * (1.0f + fabsf(b[i])));
        }
    }
    users[0] = m->n_users;
    assert_int_equal(cm_rs_server_score_users(F.srv, users, 2, a), CM_EINVAL);

    for (i = 0; i < 8; i++) {
        x[i] = 0.1f * (float) i - 0.3f;
    }
    cm_rs_server_score_vector(F.srv, x, 0.25f, a);
    cm_rs_score_vector(m, x, 0.25f, b);
    for (i = 0; i < ni; i++) {
        assert_float_equal(a[i], b[i], 1e-5f * (1.0f + fabsf(b[i])));
    }
    free(a);
    free(b);
    (void) cm_rs_server_pack_items(F.srv, cm_lmk_simd());
}


/* Every user's top-K is the same packed or not, except where two scores
 * are within float rounding of each other (then either order is right). */
static void
test_packed_items_keep_every_users_top_k(void **state)
{
    const cm_rs_model_t  *m = cm_rs_server_model(F.srv);
    cm_rs_rec_req_t       q[16];
    char                 *on[16], *off[16];
    json_t               *ja, *jb, *ra, *rb;
    size_t                u, i, j, n;

    for (u = 0; u < m->n_users; u += n) {
        n = m->n_users - u < 16 ? m->n_users - u : 16;
        for (i = 0; i < n; i++) {
            memset(&q[i], 0, sizeof(q[i]));
            q[i].user = m->user_ext[u + i];
            q[i].k = 10;
            q[i].exclude_seen = 1;
        }
        assert_int_equal(cm_rs_server_pack_items(F.srv, 1), 1);
        assert_int_equal(cm_rs_server_recommend_batch(F.srv, q, n, on), CM_OK);
        assert_int_equal(cm_rs_server_pack_items(F.srv, 0), 0);
        assert_int_equal(cm_rs_server_recommend_batch(F.srv, q, n, off),
                         CM_OK);
        for (i = 0; i < n; i++) {
            ja = json_loads(on[i], 0, NULL);
            jb = json_loads(off[i], 0, NULL);
            assert_non_null(ja);
            assert_non_null(jb);
            ra = json_object_get(ja, "recommendations");
            rb = json_object_get(jb, "recommendations");
            assert_int_equal(json_array_size(ra), json_array_size(rb));
            assert_int_equal(json_array_size(ra), 10);
            for (j = 0; j < json_array_size(ra); j++) {
                json_t *x = json_array_get(ra, j), *y = json_array_get(rb, j);
                double  sx = json_number_value(json_object_get(x, "score"));
                double  sy = json_number_value(json_object_get(y, "score"));

                assert_float_equal(sx, sy, 1e-4);
                if (json_integer_value(json_object_get(x, "movie_id"))
                    != json_integer_value(json_object_get(y, "movie_id")))
                {
                    assert_true(fabs(sx - sy) < 1e-4);   /* a near tie */
                }
            }
            json_decref(ja);
            json_decref(jb);
            free(on[i]);
            free(off[i]);
        }
    }
    (void) cm_rs_server_pack_items(F.srv, cm_lmk_simd());
}


/* The answer is written by hand from fragments jansson made: reading it
 * and writing it again with jansson's settings gives the same bytes. */
static void
test_recommend_text_is_what_jansson_writes(void **state)
{
    cm_rs_rec_req_t  q[4] = { { 5, 10, 1, 0, 0, 0, 0 }, { 0, 3, 1, 0, 0, 0, 0 },
                              { 7, 20, 0, 0, 0, 0, 0 },
                              { 999999, 4, 1, 0, 1990, 2010, 0 } };
    char            *out[4], *again;
    json_t          *j;
    size_t           i;

    assert_int_equal(cm_rs_server_recommend_batch(F.srv, q, 4, out), CM_OK);
    for (i = 0; i < 4; i++) {
        assert_non_null(out[i]);
        j = json_loads(out[i], 0, NULL);
        assert_non_null(j);
        again = json_dumps(j, JSON_COMPACT | JSON_REAL_PRECISION(6));
        assert_string_equal(again, out[i]);
        free(again);
        json_decref(j);
        free(out[i]);
    }
}


/* With log_members the answer carries the request log's members first:
 * they parse, and name the same movies and scores as the answer. */
static void
test_log_members_come_first_and_match_the_answer(void **state)
{
    cm_rs_rec_req_t  q[2] = { { 5, 6, 1, 0, 0, 0, 1 },
                              { 777777, 3, 1, 0, 0, 0, 1 } };
    char            *out[2], *nl, *wrapped;
    json_t          *lm, *ans, *recs, *r;
    size_t           i, k;

    assert_int_equal(cm_rs_server_recommend_batch(F.srv, q, 2, out), CM_OK);
    for (k = 0; k < 2; k++) {
        nl = strchr(out[k], '\n');
        assert_non_null(nl);
        assert_true(out[k][0] == '"');
        wrapped = malloc((size_t) (nl - out[k]) + 3);
        assert_non_null(wrapped);
        wrapped[0] = '{';
        memcpy(wrapped + 1, out[k], (size_t) (nl - out[k]));
        strcpy(wrapped + 1 + (nl - out[k]), "}");
        lm = json_loads(wrapped, 0, NULL);
        ans = json_loads(nl + 1, 0, NULL);
        assert_non_null(lm);
        assert_non_null(ans);
        assert_true(json_equal(json_object_get(lm, "model_version"),
                               json_object_get(ans, "model_version")));
        assert_true(json_equal(json_object_get(lm, "is_fallback"),
                               json_object_get(ans, "is_fallback")));
        assert_true(json_equal(json_object_get(lm, "fallback_reason"),
                               json_object_get(ans, "fallback_reason")));
        r = json_object_get(lm, "detail");
        assert_string_equal(json_string_value(json_object_get(r,
                                                              "endpoint")),
                            "recommend");
        assert_int_equal(json_integer_value(json_object_get(r,
                                                    "rating_user_id")),
                         q[k].user);
        recs = json_object_get(ans, "recommendations");
        assert_int_equal(json_array_size(json_object_get(r, "ids")),
                         json_array_size(recs));
        for (i = 0; i < json_array_size(recs); i++) {
            assert_true(json_equal(
                json_array_get(json_object_get(r, "ids"), i),
                json_object_get(json_array_get(recs, i), "movie_id")));
            assert_true(json_equal(
                json_array_get(json_object_get(r, "scores"), i),
                json_object_get(json_array_get(recs, i), "score")));
        }
        json_decref(lm);
        json_decref(ans);
        free(wrapped);
        free(out[k]);
    }
}


typedef struct {
    cm_rs_scratch_t  *w;
    cm_rs_rec_req_t   q[8];
    char             *out[8];
    int               rc;
} scorer_t;


static void *
score_part(void *arg)
{
    scorer_t *sc = arg;

    sc->rc = cm_rs_server_recommend_with(F.srv, sc->w, sc->q, 8, sc->out);
    return NULL;
}


static void
test_threads_with_their_own_scratch_answer_as_one_thread_does(void **state)
{
    scorer_t   sc[3];
    pthread_t  th[3];
    char      *one[8];
    size_t     t, i;

    for (t = 0; t < 3; t++) {
        sc[t].w = cm_rs_scratch_new();
        assert_non_null(sc[t].w);
        for (i = 0; i < 8; i++) {
            cm_rs_rec_req_t q = { (int32_t) (1 + t * 8 + i), 5 + (uint32_t) i,
                                  (int) (i % 2), 0, 0, 0, 0 };

            sc[t].q[i] = q;
        }
    }
    for (t = 0; t < 3; t++) {
        assert_int_equal(pthread_create(&th[t], NULL, score_part, &sc[t]), 0);
    }
    for (t = 0; t < 3; t++) {
        pthread_join(th[t], NULL);
        assert_int_equal(sc[t].rc, CM_OK);
    }
    /* the same batches (the same SGEMM shapes, so the same rounding) on
     * this thread alone */
    for (t = 0; t < 3; t++) {
        assert_int_equal(cm_rs_server_recommend_batch(F.srv, sc[t].q, 8, one),
                         CM_OK);
        for (i = 0; i < 8; i++) {
            assert_string_equal(sc[t].out[i], one[i]);
            free(one[i]);
            free(sc[t].out[i]);
        }
        cm_rs_scratch_free(sc[t].w);
    }
}


static void
test_answer_cache_keeps_answers_until_the_users_fold_in(void **state)
{
    const cm_rs_model_t  *m = cm_rs_server_model(F.srv);
    cm_rs_rec_req_t       a = { 21, 5, 1, 0, 0, 0, 0 }, b = { 22, 5, 1, 0, 0, 0, 0 };
    cm_rs_rec_req_t       a6 = { 21, 6, 1, 0, 0, 0, 0 };
    char                 *out, *copy;
    const char           *hit;
    size_t                len;
    uint64_t              hits, misses;
    int32_t               mv = m->item_ext[3];
    float                 r = 5.0f;

    /* off by default: nothing kept, put frees */
    assert_null(cm_rs_server_cache_get(F.srv, &a, &len));
    assert_int_equal(cm_rs_server_cache_size(F.srv, 100), CM_OK);
    assert_null(cm_rs_server_cache_get(F.srv, &a, &len));

    assert_int_equal(cm_rs_server_recommend_batch(F.srv, &a, 1, &out), CM_OK);
    copy = strdup(out);
    cm_rs_server_cache_put(F.srv, &a, out);
    assert_int_equal(cm_rs_server_recommend_batch(F.srv, &b, 1, &out), CM_OK);
    cm_rs_server_cache_put(F.srv, &b, out);

    hit = cm_rs_server_cache_get(F.srv, &a, &len);
    assert_non_null(hit);
    assert_int_equal(len, strlen(copy));
    assert_memory_equal(hit, copy, len);
    assert_null(cm_rs_server_cache_get(F.srv, &a6, &len));   /* other k */

    /* a fold-in of user 21 drops 21's answers, not 22's */
    assert_int_equal(cm_rs_server_fold_in(F.srv, 21, &mv, &r, 1, NULL, 0),
                     CM_OK);
    assert_null(cm_rs_server_cache_get(F.srv, &a, &len));
    assert_non_null(cm_rs_server_cache_get(F.srv, &b, &len));

    cm_rs_server_cache_stats(F.srv, &hits, &misses);
    assert_int_equal(hits, 2);
    assert_int_equal(misses, 3);

    /* more answers than entries: the cache stays bounded and correct */
    for (a.user = 1; a.user <= 100; a.user++) {
        assert_int_equal(cm_rs_server_recommend_batch(F.srv, &a, 1, &out),
                         CM_OK);
        free(copy);
        copy = strdup(out);
        cm_rs_server_cache_put(F.srv, &a, out);
        hit = cm_rs_server_cache_get(F.srv, &a, &len);
        assert_non_null(hit);
        assert_memory_equal(hit, copy, len);
    }
    free(copy);
    assert_int_equal(cm_rs_server_cache_size(F.srv, 0), CM_OK);
    assert_null(cm_rs_server_cache_get(F.srv, &b, &len));
}


static void
test_predict_known_and_unknown_movies(void **state)
{
    const cm_rs_model_t  *m = cm_rs_server_model(F.srv);
    int32_t               ids[2] = { m->item_ext[1], 99999999 };
    char                 *out, err[64];
    json_t               *j, *p;

    assert_int_equal(cm_rs_server_predict(F.srv, 4, ids, 2, &out, err,
                                          sizeof(err)), CM_OK);
    j = json_loads(out, 0, NULL);
    free(out);
    p = json_object_get(j, "predictions");
    assert_true(json_real_value(json_object_get(json_array_get(p, 0),
                                                "rating")) >= 0.5);
    assert_true(json_is_null(json_object_get(json_array_get(p, 1),
                                             "rating")));
    json_decref(j);
    assert_int_equal(cm_rs_server_predict(F.srv, 4, ids, 0, &out, err,
                                          sizeof(err)), CM_EINVAL);
}


static void
test_clean_title_drops_only_a_year_suffix(void **state)
{
    char *t;

    t = cm_rs_clean_title("Heat (1995)");
    assert_string_equal(t, "Heat");
    free(t);
    t = cm_rs_clean_title("M*A*S*H (TV)");
    assert_string_equal(t, "M*A*S*H (TV)");
    free(t);
    t = cm_rs_clean_title("(1995)");
    assert_string_equal(t, "(1995)");
    free(t);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_known_user_gets_k_unseen_items_best_first),
        cmocka_unit_test(test_unknown_user_falls_back_to_popular),
        cmocka_unit_test(test_genre_and_year_filters_hold_for_every_result),
        cmocka_unit_test(test_parse_genres_rejects_unknown_and_empty_names),
        cmocka_unit_test(test_similar_excludes_itself_and_404s_unknown),
        cmocka_unit_test(test_fold_in_new_user_leaves_fallback_and_follows_taste),
        cmocka_unit_test(test_fold_in_changes_a_dataset_users_recommendations_at_once),
        cmocka_unit_test(test_fold_in_rejects_bad_ratings_and_users),
        cmocka_unit_test(test_batch_answers_equal_single_answers),
        cmocka_unit_test(test_packed_items_score_as_openblas_does),
        cmocka_unit_test(test_packed_items_keep_every_users_top_k),
        cmocka_unit_test(test_recommend_text_is_what_jansson_writes),
        cmocka_unit_test(test_log_members_come_first_and_match_the_answer),
        cmocka_unit_test(test_threads_with_their_own_scratch_answer_as_one_thread_does),
        cmocka_unit_test(test_answer_cache_keeps_answers_until_the_users_fold_in),
        cmocka_unit_test(test_predict_known_and_unknown_movies),
        cmocka_unit_test(test_clean_title_drops_only_a_year_suffix),
    };

    return cmocka_run_group_tests_name("serve_recsys", tests, setup, teardown);
}

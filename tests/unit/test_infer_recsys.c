/*
 * test_infer_recsys.c: `cinematch infer --recsys FILE --movies FILE`
 * answering the recsys request kinds through its segment, rejecting
 * hostile parameters, and keeping the old model when a reload finds a
 * corrupt artifact.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>

#include "cinematch/recsys.h"
#include "cinematch/synth.h"
#include "cm_test_daemon.h"

static char  dir[128], artifact[160], movies[160];


static int
setup(void **state)
{
    cm_synth_conf_t     sc;
    cm_rs_train_conf_t  tc;
    cm_ml_dataset_t     ds;
    cm_ml_opts_t        opts;
    cm_rs_data_t        d;
    cm_rs_model_t      *m;
    char                err[256];
    const char         *extra[8];

    snprintf(dir, sizeof(dir), "/tmp/cm-test-infer-rs-%d", (int) getpid());
    snprintf(artifact, sizeof(artifact), "%s/model.cmrs", dir);
    snprintf(movies, sizeof(movies), "%s/movies.csv", dir);
    cm_synth_conf_default(&sc);
    sc.n_users = 80;
    sc.n_items = 200;
    sc.n_ratings = 4000;
    memset(&opts, 0, sizeof(opts));
    if (cm_synth_write_dir(&sc, dir, NULL, err, sizeof(err)) != CM_OK
        || cm_ml_load_dir(dir, CM_ML_AUTO, &opts, &ds, err, sizeof(err))
           != CM_OK
        || cm_rs_data_build(ds.ratings.v, ds.ratings.n, &d, err, sizeof(err))
           != CM_OK)
    {
        fprintf(stderr, "setup: %s\n", err);
        return -1;
    }
    cm_rs_train_conf_default(&tc);
    tc.factors = 8;
    tc.iters = 5;
    if (cm_rs_train(&d, &tc, &m, err, sizeof(err)) != CM_OK
        || cm_rs_model_write(m, artifact, err, sizeof(err)) != CM_OK)
    {
        fprintf(stderr, "setup: %s\n", err);
        return -1;
    }
    cm_rs_model_free(m);
    cm_rs_data_free(&d);
    cm_ml_dataset_free(&ds);

    extra[0] = "--recsys";
    extra[1] = artifact;
    extra[2] = "--movies";
    extra[3] = movies;
    extra[4] = "--recsys-version";
    extra[5] = "7";
    extra[6] = NULL;
    return daemon_start_args(extra);
}


static int
teardown(void **state)
{
    char cmd[256];
    int  rc = daemon_stop(state);

    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    if (system(cmd) != 0) {
        /* leftovers in /tmp are harmless */
    }
    return rc;
}


/* Submit, wait, and parse the JSON answer; NULL when the slot ended in
 * ERROR (then *status holds the code). */
static json_t *
ask(uint32_t kind, uint64_t p0, uint64_t p1, uint64_t p2, const void *payload,
    size_t len, int *status)
{
    uint64_t        params[5] = { p0, p1, p2, 0, 0 };
    uint32_t        slot;
    cm_ipc_slot_t  *s = submit_raw(kind, params, 5, payload, len, &slot);
    json_t         *j = NULL;

    assert_int_equal(wait_ready(slot, 5000), 0);
    atomic_store(&s->bell, 0);
    *status = s->status;
    if (cm_ipc_slot_state(s) == CM_SLOT_DONE) {
        j = json_loadb((const char *) cm_ipc_slot_res(&D.seg, s), s->res_len,
                       0, NULL);
        assert_non_null(j);
    } else {
        assert_int_equal(cm_ipc_slot_state(s), CM_SLOT_ERROR);
    }
    cm_ipc_release(s);
    return j;
}


static void
test_recommend_answers_with_model_version_and_k_items(void **state)
{
    int      st;
    json_t  *j = ask(CM_REQ_RECOMMEND, 3, 5, CM_REC_EXCLUDE_SEEN, "", 0, &st);

    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "model_version")),
                        "7");
    assert_int_equal(json_array_size(json_object_get(j, "recommendations")),
                     5);
    assert_true(json_is_false(json_object_get(j, "is_fallback")));
    json_decref(j);
}


static void
test_header_lists_the_loaded_model(void **state)
{
    cm_ipc_model_t  m[4];

    assert_int_equal(cm_ipc_get_models(&D.seg, m, 4), 1);
    assert_string_equal(m[0].name, "recsys");
    assert_string_equal(m[0].version, "7");
    assert_int_equal(strlen(m[0].sha256), 64);
}


static void
test_hostile_parameters_end_in_einval(void **state)
{
    int st;

    assert_null(ask(CM_REQ_RECOMMEND, 3, 0, 0, "", 0, &st));       /* k=0 */
    assert_int_equal(st, CM_EINVAL);
    assert_null(ask(CM_REQ_RECOMMEND, 3, 101, 0, "", 0, &st));
    assert_null(ask(CM_REQ_RECOMMEND, 1ull << 40, 5, 0, "", 0, &st));
    assert_null(ask(CM_REQ_RECOMMEND, 3, 5, 0, "Comedy,Bogus", 12, &st));
    assert_int_equal(st, CM_EINVAL);
    assert_null(ask(CM_REQ_PREDICT, 3, 0, 0, "abc", 3, &st));     /* len%4 */
    assert_int_equal(st, CM_EINVAL);
    assert_null(ask(CM_REQ_FOLD_IN, 3, 0, 0, "abcd", 4, &st));    /* len%8 */
    assert_null(ask(CM_REQ_SIMILAR, 0, 5, 0, NULL, 0, &st));
    assert_int_equal(st, CM_EINVAL);
}


static void
test_similar_unknown_movie_is_not_found(void **state)
{
    int st;

    assert_null(ask(CM_REQ_SIMILAR, 99999999, 5, 0, NULL, 0, &st));
    assert_int_equal(st, CM_ENOTFOUND);
}


static void
test_popular_with_genre_and_predict(void **state)
{
    int      st;
    int32_t  ids[2] = { 1, 2 };
    json_t  *j;

    j = ask(CM_REQ_POPULAR, 4, 0, 0, "Drama", 5, &st);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "source")),
                        "genre_popularity");
    json_decref(j);
    j = ask(CM_REQ_PREDICT, 3, 0, 0, ids, sizeof(ids), &st);
    assert_non_null(j);
    assert_int_equal(json_array_size(json_object_get(j, "predictions")), 2);
    json_decref(j);
}


static void
test_fold_in_makes_a_new_user_personal(void **state)
{
    uint8_t  pairs[16];
    int32_t  mv[2] = { 1, 3 };
    float    r[2] = { 5.0f, 4.5f };
    int      st;
    json_t  *j;

    memcpy(pairs, &mv[0], 4);
    memcpy(pairs + 4, &r[0], 4);
    memcpy(pairs + 8, &mv[1], 4);
    memcpy(pairs + 12, &r[1], 4);
    j = ask(CM_REQ_RECOMMEND, 777777, 3, 1, "", 0, &st);
    assert_true(json_is_true(json_object_get(j, "is_fallback")));
    json_decref(j);
    j = ask(CM_REQ_FOLD_IN, 777777, 0, 0, pairs, sizeof(pairs), &st);
    assert_non_null(j);
    assert_int_equal(json_integer_value(json_object_get(j, "folded")), 2);
    json_decref(j);
    j = ask(CM_REQ_RECOMMEND, 777777, 3, 1, "", 0, &st);
    assert_true(json_is_false(json_object_get(j, "is_fallback")));
    json_decref(j);
}


static void
test_corrupt_artifact_on_reload_keeps_old_model_serving(void **state)
{
    FILE    *f;
    int      st, i;
    json_t  *j;

    /* flip bytes in the middle of the file: the checksum must catch it */
    f = fopen(artifact, "r+b");
    assert_non_null(f);
    fseek(f, 4096, SEEK_SET);
    fputs("garbage garbage garbage", f);
    fclose(f);
    kill(D.pid, SIGHUP);
    for (i = 0; i < 200 && strstr(D.seg.hdr->status, "failed") == NULL; i++) {
        usleep(10000);
    }
    assert_non_null(strstr(D.seg.hdr->status, "recsys load failed"));
    j = ask(CM_REQ_RECOMMEND, 3, 5, 1, "", 0, &st);
    assert_non_null(j);
    assert_string_equal(json_string_value(json_object_get(j, "model_version")),
                        "7");
    json_decref(j);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_recommend_answers_with_model_version_and_k_items),
        cmocka_unit_test(test_header_lists_the_loaded_model),
        cmocka_unit_test(test_hostile_parameters_end_in_einval),
        cmocka_unit_test(test_similar_unknown_movie_is_not_found),
        cmocka_unit_test(test_popular_with_genre_and_predict),
        cmocka_unit_test(test_fold_in_makes_a_new_user_personal),
        cmocka_unit_test(test_corrupt_artifact_on_reload_keeps_old_model_serving),
    };

    return cmocka_run_group_tests_name("infer_recsys", tests, setup, teardown);
}

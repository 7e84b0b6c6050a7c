/*
 * test_serve_dialog.c: generation streams: stop strings (also across
 * tokens) never emitted, UTF-8 never split, max_tokens, reproducible
 * seeds, and batching that does not change a sequence's text.
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
#include "cinematch/serve_dialog.h"
#include "cinematch/validate.h"

static cm_dlg_server_t  *S;
static char              dir[128];


static int
setup(void **state)
{
    const char  *b = getenv("CM_BUILD_DIR");
    char         cmd[512], err[256];

    snprintf(dir, sizeof(dir), "/tmp/cm-test-dlg-%d", (int) getpid());
    snprintf(cmd, sizeof(cmd), "%s/cinematch train dialog --corpus"
             " tests/fixtures/dialog/plain.txt --out %s --steps 20"
             " --config dialog-tiny >/dev/null 2>&1",
             b != NULL ? b : "build", dir);
    if (system(cmd) != 0) {
        fprintf(stderr, "could not train the fixture model: %s\n", cmd);
        return -1;
    }
    if (cm_dlg_server_open(&S, dir, "t1", 8, err, sizeof(err)) != CM_OK) {
        fprintf(stderr, "open: %s\n", err);
        return -1;
    }
    return 0;
}


static int
teardown(void **state)
{
    char cmd[256];

    cm_dlg_server_free(S);
    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    return system(cmd) == 0 ? 0 : -1;
}


static void
stream_with_stops(cm_dlg_stream_t *st, const char *a, const char *b)
{
    memset(st, 0, sizeof(*st));
    if (a != NULL) {
        strcpy(st->stops[st->nstops], a);
        st->stop_len[st->nstops++] = strlen(a);
    }
    if (b != NULL) {
        strcpy(st->stops[st->nstops], b);
        st->stop_len[st->nstops++] = strlen(b);
    }
}


static void
take_all(cm_dlg_stream_t *st, char *out, size_t cap, int *done)
{
    size_t n = strlen(out);

    n += cm_dlg_take(st, out + n, cap - n - 1, done);
    out[n] = '\0';
}


static void
test_invalid_utf8_from_the_model_goes_out_as_replacement_characters(void **state)
{
    cm_dlg_stream_t  st;
    char             out[256] = "";
    char             small[4];
    int              done;
    size_t           n;

    stream_with_stops(&st, NULL, NULL);
    /* a stray continuation byte, a broken 3-byte sequence, an overlong
     * "/" and a valid "\xc3\xa9" (e acute) */
    cm_dlg_stream_push(&st, (const uint8_t *) "a\x80" "b\xe2\x82" "z\xc0\xaf\xc3\xa9", 11);
    cm_dlg_stream_end(&st, CM_DLG_FINISH_STOP);
    take_all(&st, out, sizeof(out), &done);
    assert_string_equal(out, "a\xef\xbf\xbd" "b\xef\xbf\xbd\xef\xbf\xbd" "z"
                             "\xef\xbf\xbd\xef\xbf\xbd" "\xc3\xa9");
    assert_true(done);

    /* output that does not fit waits: nothing is consumed half-way */
    stream_with_stops(&st, NULL, NULL);
    cm_dlg_stream_push(&st, (const uint8_t *) "x\xff", 2);
    cm_dlg_stream_end(&st, CM_DLG_FINISH_STOP);
    n = cm_dlg_take(&st, small, 2, &done);
    assert_int_equal(n, 1);
    assert_false(done);
    n = cm_dlg_take(&st, small, sizeof(small), &done);
    assert_int_equal(n, 3);
    assert_memory_equal(small, "\xef\xbf\xbd", 3);
    assert_true(done);
}


static void
test_stop_string_spanning_tokens_is_never_emitted(void **state)
{
    cm_dlg_stream_t  st;
    char             out[256] = "";
    int              done;

    stream_with_stops(&st, "END", NULL);
    cm_dlg_stream_push(&st, (const uint8_t *) "hello E", 7);
    take_all(&st, out, sizeof(out), &done);
    assert_string_equal(out, "hello ");     /* "E" might start "END" */
    assert_false(done);
    cm_dlg_stream_push(&st, (const uint8_t *) "N", 1);
    take_all(&st, out, sizeof(out), &done);
    assert_string_equal(out, "hello ");
    cm_dlg_stream_push(&st, (const uint8_t *) "D and more", 10);
    take_all(&st, out, sizeof(out), &done);
    assert_string_equal(out, "hello ");
    assert_true(done);
    assert_int_equal(st.finish, CM_DLG_FINISH_STOP);
}


static void
test_false_stop_prefix_is_released(void **state)
{
    cm_dlg_stream_t  st;
    char             out[256] = "";
    int              done;

    stream_with_stops(&st, "END", "\n\n");
    cm_dlg_stream_push(&st, (const uint8_t *) "the EN", 6);
    take_all(&st, out, sizeof(out), &done);
    assert_string_equal(out, "the ");
    cm_dlg_stream_push(&st, (const uint8_t *) "TRY\n", 4);
    take_all(&st, out, sizeof(out), &done);
    assert_string_equal(out, "the ENTRY");   /* "\n" may start "\n\n" */
    cm_dlg_stream_end(&st, CM_DLG_FINISH_LENGTH);
    take_all(&st, out, sizeof(out), &done);
    assert_string_equal(out, "the ENTRY\n");
    assert_true(done);
}


static void
test_utf8_is_never_split_and_broken_tail_dropped(void **state)
{
    cm_dlg_stream_t  st;
    char             out[256] = "";
    int              done;

    stream_with_stops(&st, NULL, NULL);
    cm_dlg_stream_push(&st, (const uint8_t *) "caf\xc3", 4);
    take_all(&st, out, sizeof(out), &done);
    assert_string_equal(out, "caf");
    cm_dlg_stream_push(&st, (const uint8_t *) "\xa9 \xe2\x82", 4);
    take_all(&st, out, sizeof(out), &done);
    assert_string_equal(out, "caf\xc3\xa9 ");
    cm_dlg_stream_end(&st, CM_DLG_FINISH_LENGTH);   /* ends mid-character */
    take_all(&st, out, sizeof(out), &done);
    assert_string_equal(out, "caf\xc3\xa9 ");
    assert_true(done);
}


/* Run streams to the end, stepping them together; texts into outs. */
static void
run(cm_dlg_stream_t **sts, int n, char outs[][2048])
{
    int i, done, all, guard = 0;

    for (i = 0; i < n; i++) {
        outs[i][0] = '\0';
    }
    do {
        cm_dlg_step(S, sts, n);
        all = 1;
        for (i = 0; i < n; i++) {
            take_all(sts[i], outs[i], 2048, &done);
            all &= done;
        }
    } while (!all && ++guard < 2000);
    assert_true(all);
}


static void
start(cm_dlg_stream_t *st, const char *turn, uint64_t seed, float temp,
      int max_tokens)
{
    cm_lm_params_t  p;
    size_t          len = strlen(turn);
    char            err[128];

    cm_lm_params_default(&p);
    p.seed = seed;
    p.temperature = temp;
    p.max_tokens = max_tokens;
    assert_int_equal(cm_dlg_start(S, st, &turn, &len, 1, &p, NULL, 0, err,
                                  sizeof(err)), CM_OK);
    assert_true(st->prompt_tokens > 0);
}


static void
test_generation_is_valid_utf8_and_respects_max_tokens(void **state)
{
    cm_dlg_stream_t   st, *sp = &st;
    char              out[1][2048];

    start(&st, "Where are you going?", 7, 1.0f, 12);
    run(&sp, 1, out);
    assert_true(st.completion_tokens <= 12);
    assert_true(cm_utf8_valid(out[0], strlen(out[0]), NULL));
    cm_dlg_stream_free(&st);
}


static void
test_same_seed_same_text_whatever_shares_the_batch(void **state)
{
    cm_dlg_stream_t   a, b, c, *alone[1], *batch[3];
    char              o1[1][2048], o3[3][2048];

    start(&a, "I love you.", 42, 0.8f, 20);
    alone[0] = &a;
    run(alone, 1, o1);
    cm_dlg_stream_free(&a);

    start(&a, "I love you.", 42, 0.8f, 20);
    start(&b, "Get out of here!", 1, 0.8f, 30);
    start(&c, "What time is it?", 2, 0.8f, 5);
    batch[0] = &b;
    batch[1] = &a;
    batch[2] = &c;
    run(batch, 3, o3);
    assert_string_equal(o1[0], o3[1]);
    cm_dlg_stream_free(&a);
    cm_dlg_stream_free(&b);
    cm_dlg_stream_free(&c);
}


static void
test_start_rejects_bad_turns_and_stops(void **state)
{
    cm_dlg_stream_t  st;
    cm_lm_params_t   p;
    const char      *turn = "hi", *stops[5] = { "a", "b", "c", "d", "e" };
    const char      *empty[1] = { "" };
    size_t           len = 2;

    cm_lm_params_default(&p);
    assert_int_equal(cm_dlg_start(S, &st, &turn, &len, 0, &p, NULL, 0, NULL,
                                  0), CM_EINVAL);
    assert_int_equal(cm_dlg_start(S, &st, &turn, &len, 1, &p, stops, 5, NULL,
                                  0), CM_EINVAL);
    assert_int_equal(cm_dlg_start(S, &st, &turn, &len, 1, &p, empty, 1, NULL,
                                  0), CM_EINVAL);
}


static void
test_long_history_is_truncated_to_fit_the_context(void **state)
{
    cm_dlg_stream_t   st, *sp = &st;
    const char       *turns[40];
    size_t            lens[40], i;
    cm_lm_params_t    p;
    char              out[1][2048], err[64];

    for (i = 0; i < 40; i++) {
        turns[i] = "This is a rather long line of dialogue that repeats.";
        lens[i] = strlen(turns[i]);
    }
    cm_lm_params_default(&p);
    p.max_tokens = 8;
    assert_int_equal(cm_dlg_start(S, &st, turns, lens, 40, &p, NULL, 0, err,
                                  sizeof(err)), CM_OK);
    assert_true(st.prompt_tokens <= cm_dlg_server_context(S) - 8);
    run(&sp, 1, out);
    cm_dlg_stream_free(&st);
}


static void
test_context_fit_keeps_newest_whole_turns(void **state)
{
    size_t  ntok[4] = { 10, 20, 5, 7 }, first, kept;
    int     cut;

    /* everything fits, exactly and with room */
    kept = cm_dlg_context_fit(ntok, 4, 42, &first, &cut);
    assert_int_equal(kept, 42);
    assert_int_equal(first, 0);
    assert_false(cut);
    kept = cm_dlg_context_fit(ntok, 4, 100, &first, &cut);
    assert_int_equal(kept, 42);
    assert_int_equal(first, 0);

    /* one token short: the whole oldest turn goes, not one token */
    kept = cm_dlg_context_fit(ntok, 4, 41, &first, &cut);
    assert_int_equal(kept, 32);
    assert_int_equal(first, 1);
    assert_false(cut);

    /* a turn that does not fit stops the walk: no older turn skips it */
    kept = cm_dlg_context_fit(ntok, 4, 31, &first, &cut);
    assert_int_equal(kept, 12);
    assert_int_equal(first, 2);
    kept = cm_dlg_context_fit(ntok, 4, 7, &first, &cut);
    assert_int_equal(kept, 7);
    assert_int_equal(first, 3);
    assert_false(cut);

    /* the newest turn alone is too long: its tail, and it says so */
    kept = cm_dlg_context_fit(ntok, 4, 6, &first, &cut);
    assert_int_equal(kept, 6);
    assert_int_equal(first, 3);
    assert_true(cut);
    kept = cm_dlg_context_fit(ntok, 1, 3, &first, &cut);
    assert_int_equal(kept, 3);
    assert_int_equal(first, 0);
    assert_true(cut);
}


static void
test_start_drops_oldest_whole_turns_to_fit(void **state)
{
    cm_dlg_stream_t   st, one;
    const char       *turns[12];
    size_t            lens[12], i;
    cm_lm_params_t    p;
    char              err[64];
    int               ctx = cm_dlg_server_context(S), per;

    for (i = 0; i < 12; i++) {
        turns[i] = "Where are you going tonight?";
        lens[i] = strlen(turns[i]);
    }
    cm_lm_params_default(&p);
    p.max_tokens = 8;

    /* one turn: its token count (with <|eot|>) */
    assert_int_equal(cm_dlg_start(S, &one, turns, lens, 1, &p, NULL, 0, err,
                                  sizeof(err)), CM_OK);
    per = one.prompt_tokens;
    assert_int_equal(one.context_turns, 1);
    assert_int_equal(one.dropped_turns, 0);
    assert_false(one.truncated);
    cm_dlg_stream_free(&one);
    assert_true(per > 1 && per * 2 <= ctx - 8);

    /* twelve identical turns: the prompt is a whole number of them, as
     * many as fit beside max_tokens */
    assert_int_equal(cm_dlg_start(S, &st, turns, lens, 12, &p, NULL, 0, err,
                                  sizeof(err)), CM_OK);
    assert_int_equal(st.prompt_tokens % per, 0);
    assert_int_equal(st.context_turns, (ctx - 8) / per);
    assert_int_equal(st.dropped_turns, 12 - (ctx - 8) / per);
    assert_int_equal(st.prompt_tokens, st.context_turns * per);
    assert_false(st.truncated);
    cm_dlg_stream_free(&st);
}


static void
test_start_keeps_the_tail_of_a_newest_turn_too_long(void **state)
{
    cm_dlg_stream_t   st;
    const char       *turns[2];
    size_t            lens[2];
    cm_lm_params_t    p;
    char              err[64], big[4096];
    int               ctx = cm_dlg_server_context(S);

    memset(big, 'a', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    for (size_t i = 0; i + 6 < sizeof(big); i += 7) {
        memcpy(big + i, "Hello, ", 7);
    }
    turns[0] = "hi";
    lens[0] = 2;
    turns[1] = big;
    lens[1] = strlen(big);
    cm_lm_params_default(&p);
    p.max_tokens = 8;
    assert_int_equal(cm_dlg_start(S, &st, turns, lens, 2, &p, NULL, 0, err,
                                  sizeof(err)), CM_OK);
    assert_int_equal(st.prompt_tokens, ctx - 8);
    assert_int_equal(st.context_turns, 1);
    assert_int_equal(st.dropped_turns, 1);
    assert_true(st.truncated);
    cm_dlg_stream_free(&st);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_stop_string_spanning_tokens_is_never_emitted),
        cmocka_unit_test(test_invalid_utf8_from_the_model_goes_out_as_replacement_characters),
        cmocka_unit_test(test_false_stop_prefix_is_released),
        cmocka_unit_test(test_utf8_is_never_split_and_broken_tail_dropped),
        cmocka_unit_test(test_generation_is_valid_utf8_and_respects_max_tokens),
        cmocka_unit_test(test_same_seed_same_text_whatever_shares_the_batch),
        cmocka_unit_test(test_start_rejects_bad_turns_and_stops),
        cmocka_unit_test(test_long_history_is_truncated_to_fit_the_context),
        cmocka_unit_test(test_context_fit_keeps_newest_whole_turns),
        cmocka_unit_test(test_start_drops_oldest_whole_turns_to_fit),
        cmocka_unit_test(test_start_keeps_the_tail_of_a_newest_turn_too_long),
    };

    return cmocka_run_group_tests_name("serve_dialog", tests, setup, teardown);
}

/*
 * test_infer_chat.c: `cinematch infer --dialog DIR` streaming generations
 * through slot rings: text records then a JSON result, cancellation that
 * frees the sequence, hostile payloads, and the bounded admission queue.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <cmocka.h>

#include <jansson.h>

#include "cinematch/validate.h"
#include "cm_test_daemon.h"

static char dir[128];


static int
setup(void **state)
{
    const char  *b = getenv("CM_BUILD_DIR");
    const char  *extra[8];
    char         cmd[512];

    snprintf(dir, sizeof(dir), "/tmp/cm-test-infer-chat-%d", (int) getpid());
    snprintf(cmd, sizeof(cmd), "%s/cinematch train dialog --corpus"
             " tests/fixtures/dialog/plain.txt --out %s --steps 20"
             " --config dialog-tiny >/dev/null 2>&1",
             b != NULL ? b : "build", dir);
    if (system(cmd) != 0) {
        return -1;
    }
    extra[0] = "--dialog";
    extra[1] = dir;
    extra[2] = "--dialog-version";
    extra[3] = "5";
    extra[4] = "--max-seqs";
    extra[5] = "2";
    extra[6] = NULL;
    return daemon_start_args(extra);
}


static int
teardown(void **state)
{
    char cmd[256];
    int  rc = daemon_stop(state);

    snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
    return system(cmd) == 0 ? rc : -1;
}


/* payload: turns then stops, as ipc.h documents */
static size_t
payload(uint8_t *buf, const char **turns, uint32_t nt, const char **stops,
        uint32_t ns)
{
    size_t    off = 0;
    uint32_t  i, l;

    memcpy(buf + off, &nt, 4);
    off += 4;
    for (i = 0; i < nt; i++) {
        l = (uint32_t) strlen(turns[i]);
        memcpy(buf + off, &l, 4);
        memcpy(buf + off + 4, turns[i], l);
        off += 4 + l;
    }
    memcpy(buf + off, &ns, 4);
    off += 4;
    for (i = 0; i < ns; i++) {
        l = (uint32_t) strlen(stops[i]);
        memcpy(buf + off, &l, 4);
        memcpy(buf + off + 4, stops[i], l);
        off += 4 + l;
    }
    return off;
}


static cm_ipc_slot_t *
chat(const char *text, uint64_t max_tokens, uint64_t seed, uint32_t *slot)
{
    uint8_t      buf[512];
    const char  *turns[1] = { text };
    uint64_t     p[6] = { max_tokens, 800, 40, 950, seed, 0 };
    size_t       n = payload(buf, turns, 1, NULL, 0);

    return submit_raw(CM_REQ_CHAT, p, 6, buf, n, slot);
}


/* Drain records until the slot is final; returns the text. */
static char *
collect(cm_ipc_slot_t *s, uint32_t slot, int *records)
{
    static char  text[8192];
    char         rec[4096];
    size_t       len = 0;
    int64_t      n;
    int          polls = 0;

    *records = 0;
    for ( ;; ) {
        atomic_store(&s->bell, 0);
        atomic_thread_fence(memory_order_seq_cst);
        while ((n = cm_ipc_ring_get(&D.seg, s, rec, sizeof(rec))) > 0) {
            assert_true(len + (size_t) n < sizeof(text));
            memcpy(text + len, rec, (size_t) n);
            len += (size_t) n;
            (*records)++;
        }
        assert_int_equal(n, CM_EAGAIN);
        if (cm_ipc_slot_state(s) == CM_SLOT_DONE
            || cm_ipc_slot_state(s) == CM_SLOT_ERROR)
        {
            if (cm_ipc_ring_get(&D.seg, s, rec, sizeof(rec)) == CM_EAGAIN) {
                break;
            }
            continue;
        }
        assert_true(++polls < 2000);
        (void) wait_ready(slot, 50);
    }
    text[len] = '\0';
    return text;
}


static void
test_chat_streams_text_then_usage(void **state)
{
    uint32_t        slot;
    int             records;
    char           *text;
    json_t         *res;
    cm_ipc_slot_t  *s = chat("Where are you going tonight?", 16, 3, &slot);

    text = collect(s, slot, &records);
    assert_int_equal(cm_ipc_slot_state(s), CM_SLOT_DONE);
    assert_true(cm_utf8_valid(text, strlen(text), NULL));
    res = json_loadb((const char *) cm_ipc_slot_res(&D.seg, s), s->res_len,
                     0, NULL);
    assert_non_null(res);
    assert_true(json_integer_value(json_object_get(json_object_get(res,
                    "usage"), "completion_tokens")) <= 16);
    assert_true(json_integer_value(json_object_get(json_object_get(res,
                    "usage"), "prompt_tokens")) > 0);
    assert_string_equal(json_string_value(json_object_get(res,
                            "model_version")), "5");
    json_decref(res);
    cm_ipc_release(s);
}


static void
test_same_seed_same_reply(void **state)
{
    uint32_t        slot;
    int             r;
    char            first[8192];
    cm_ipc_slot_t  *s = chat("Hello there.", 24, 9, &slot);

    strcpy(first, collect(s, slot, &r));
    cm_ipc_release(s);
    s = chat("Hello there.", 24, 9, &slot);
    assert_string_equal(collect(s, slot, &r), first);
    cm_ipc_release(s);
}


static void
test_cancel_frees_the_sequence(void **state)
{
    uint32_t        slot;
    int             i;
    cm_ipc_slot_t  *s = chat("Tell me everything.", 1000, 4, &slot);

    (void) wait_ready(slot, 2000);
    if (cm_ipc_release(s)) {
        bell(CM_MSG_CANCEL, slot);
    }
    for (i = 0; i < 200 && atomic_load(&D.seg.hdr->queue_depth) != 0; i++) {
        usleep(5000);
    }
    assert_int_equal(atomic_load(&D.seg.hdr->queue_depth), 0);
    assert_int_equal(cm_ipc_slot_state(s), CM_SLOT_FREE);
}


static void
test_hostile_payloads_are_einval(void **state)
{
    uint8_t         buf[64];
    uint32_t        slot, big = 1000000, zero = 0;
    uint64_t        p[6] = { 16, 800, 40, 950, 1, 0 };
    uint64_t        bad[6] = { 0, 800, 40, 950, 1, 0 };
    cm_ipc_slot_t  *s;
    const char     *turns[1] = { "hi" };
    size_t          n;

    /* a turn length past the payload */
    memcpy(buf, "\1\0\0\0", 4);
    memcpy(buf + 4, &big, 4);
    s = submit_raw(CM_REQ_CHAT, p, 6, buf, 8, &slot);
    assert_int_equal(wait_ready(slot, 2000), 0);
    assert_int_equal(s->status, CM_EINVAL);
    cm_ipc_release(s);
    /* zero turns */
    memcpy(buf, &zero, 4);
    memcpy(buf + 4, &zero, 4);
    s = submit_raw(CM_REQ_CHAT, p, 6, buf, 8, &slot);
    assert_int_equal(wait_ready(slot, 2000), 0);
    assert_int_equal(s->status, CM_EINVAL);
    cm_ipc_release(s);
    /* max_tokens 0 */
    n = payload(buf, turns, 1, NULL, 0);
    s = submit_raw(CM_REQ_CHAT, bad, 6, buf, n, &slot);
    assert_int_equal(wait_ready(slot, 2000), 0);
    assert_int_equal(s->status, CM_EINVAL);
    cm_ipc_release(s);
    /* trailing garbage */
    s = submit_raw(CM_REQ_CHAT, p, 6, buf, n + 3, &slot);
    assert_int_equal(wait_ready(slot, 2000), 0);
    assert_int_equal(s->status, CM_EINVAL);
    cm_ipc_release(s);
}


static void
test_stop_string_is_not_in_the_text(void **state)
{
    uint8_t         buf[256];
    uint32_t        slot;
    int             r;
    uint64_t        p[6] = { 40, 0, 0, 1000, 1, 0 };
    const char     *turns[1] = { "What do you want?" }, *stops[1] = { "e" };
    cm_ipc_slot_t  *s;
    size_t          n = payload(buf, turns, 1, stops, 1);

    s = submit_raw(CM_REQ_CHAT, p, 6, buf, n, &slot);
    assert_null(strchr(collect(s, slot, &r), 'e'));
    cm_ipc_release(s);
}


static void
test_queue_admits_beyond_max_seqs(void **state)
{
    cm_ipc_slot_t  *s[4];
    uint32_t        slot[4];
    int             i, r;

    /* --max-seqs 2: the other two wait in the queue and still finish */
    for (i = 0; i < 4; i++) {
        s[i] = chat("Again and again.", 12, (uint64_t) i + 1, &slot[i]);
    }
    for (i = 0; i < 4; i++) {
        (void) collect(s[i], slot[i], &r);
        assert_int_equal(cm_ipc_slot_state(s[i]), CM_SLOT_DONE);
        cm_ipc_release(s[i]);
    }
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_chat_streams_text_then_usage),
        cmocka_unit_test(test_same_seed_same_reply),
        cmocka_unit_test(test_cancel_frees_the_sequence),
        cmocka_unit_test(test_hostile_payloads_are_einval),
        cmocka_unit_test(test_stop_string_is_not_in_the_text),
        cmocka_unit_test(test_queue_admits_beyond_max_seqs),
    };

    return cmocka_run_group_tests_name("infer_chat", tests, setup, teardown);
}

/*
 * test_ipc.c: the spine's shared-memory slots and rings.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "cinematch/common.h"
#include "cinematch/ipc.h"


static char cm_test_name[64];


static int
setup_seg(void **state)
{
    static cm_ipc_seg_t   seg;
    cm_ipc_config_t       cfg = { 8, 256, 512, 256 };
    char                  err[256];

    snprintf(cm_test_name, sizeof(cm_test_name), "/cm-test-ipc-%d",
             (int) getpid());
    assert_int_equal(cm_ipc_create(&seg, cm_test_name, &cfg, err,
                                   sizeof(err)), CM_OK);
    *state = &seg;
    return 0;
}


static int
teardown_seg(void **state)
{
    cm_ipc_detach(*state);
    return 0;
}


static void
test_create_then_attach_sees_same_header(void **state)
{
    cm_ipc_seg_t  *seg = *state, peer;
    char           err[256];

    assert_int_equal(cm_ipc_attach(&peer, cm_test_name, err, sizeof(err)),
                     CM_OK);
    assert_int_equal(peer.hdr->slot_count, 8);
    assert_int_equal(peer.hdr->ring_cap, 256);
    assert_int_equal(peer.hdr->generation, seg->hdr->generation);
    assert_int_equal(peer.hdr->slot_size % 64, 0);
    /* both mappings address the same memory */
    cm_ipc_slot(seg, 3)->seq = 77;
    assert_int_equal(cm_ipc_slot(&peer, 3)->seq, 77);
    cm_ipc_detach(&peer);
}


static void
test_attach_missing_segment_is_not_found(void **state)
{
    cm_ipc_seg_t  peer;
    char          err[256];

    assert_int_equal(cm_ipc_attach(&peer, "/cm-test-does-not-exist", err,
                                   sizeof(err)), CM_ENOTFOUND);
    assert_null(peer.base);
}


static void
test_create_rejects_bad_names_and_sizes(void **state)
{
    cm_ipc_seg_t     seg;
    cm_ipc_config_t  cfg = { 8, 256, 512, 256 };
    cm_ipc_config_t  zero = { 0, 256, 512, 256 };
    cm_ipc_config_t  huge = { CM_IPC_MAX_SLOTS + 1, 256, 512, 256 };

    assert_int_equal(cm_ipc_create(&seg, "no-slash", &cfg, NULL, 0),
                     CM_EINVAL);
    assert_int_equal(cm_ipc_create(&seg, "/a/b", &cfg, NULL, 0), CM_EINVAL);
    assert_int_equal(cm_ipc_create(&seg, "/cm-t", &zero, NULL, 0), CM_EINVAL);
    assert_int_equal(cm_ipc_create(&seg, "/cm-t", &huge, NULL, 0), CM_EINVAL);
}


static void
test_validate_header_rejects_hostile_fields(void **state)
{
    cm_ipc_seg_t     *seg = *state;
    cm_ipc_header_t   h;
    char              err[256];

    h = *seg->hdr;
    assert_int_equal(cm_ipc_validate_header(&h, seg->size, err, sizeof(err)),
                     CM_OK);
    /* a header claiming more slots than the mapping holds */
    h.slot_count = 9;
    assert_int_equal(cm_ipc_validate_header(&h, seg->size, err, sizeof(err)),
                     CM_EFORMAT);
    h = *seg->hdr;
    h.ring_cap = 300;   /* not a power of two */
    assert_int_equal(cm_ipc_validate_header(&h, seg->size, err, sizeof(err)),
                     CM_EFORMAT);
    h = *seg->hdr;
    h.slot_size = 64;   /* smaller than its parts */
    assert_int_equal(cm_ipc_validate_header(&h, seg->size, err, sizeof(err)),
                     CM_EFORMAT);
    h = *seg->hdr;
    h.abi_version = 99;
    assert_int_equal(cm_ipc_validate_header(&h, seg->size, err, sizeof(err)),
                     CM_EFORMAT);
    assert_non_null(strstr(err, "ABI"));
    h = *seg->hdr;
    h.magic = 0;
    assert_int_equal(cm_ipc_validate_header(&h, seg->size, err, sizeof(err)),
                     CM_EFORMAT);
    h = *seg->hdr;
    assert_int_equal(cm_ipc_validate_header(&h, 100, err, sizeof(err)),
                     CM_EFORMAT);
}


static void
test_stop_finds_tagged_slots_and_never_reaches_a_later_claim(void **state)
{
    cm_ipc_seg_t   *seg = *state;
    cm_ipc_slot_t  *a, *b;
    int64_t         i, k;
    uint32_t        from, seq;
    const char     *conv = "0f8fad5b-d9cb-469f-a165-70867728950e";

    i = cm_ipc_claim(seg, 0, 8, NULL, 1);
    k = cm_ipc_claim(seg, 0, 8, NULL, 2);
    assert_true(i >= 0 && k >= 0 && i != k);
    a = cm_ipc_slot(seg, (uint32_t) i);
    b = cm_ipc_slot(seg, (uint32_t) k);
    cm_ipc_set_tag(a, conv, strlen(conv));
    cm_ipc_set_tag(b, "other", 5);

    /* CLAIMED is not yet a generation */
    from = 0;
    assert_int_equal(cm_ipc_find_tag(seg, conv, strlen(conv), &from, &seq),
                     -1);

    assert_int_equal(cm_ipc_submit(seg, a, CM_REQ_CHAT, NULL, 0, "x", 1),
                     CM_OK);
    assert_int_equal(cm_ipc_submit(seg, b, CM_REQ_CHAT, NULL, 0, "x", 1),
                     CM_OK);
    from = 0;
    assert_int_equal(cm_ipc_find_tag(seg, conv, strlen(conv), &from, &seq),
                     i);
    assert_int_equal(seq, a->seq);
    /* a prefix is not the tag, and the scan goes on past the match */
    assert_int_equal(cm_ipc_find_tag(seg, conv, strlen(conv), &from, &seq),
                     -1);
    from = 0;
    assert_int_equal(cm_ipc_find_tag(seg, conv, 8, &from, &seq), -1);

    assert_false(cm_ipc_stop_requested(a));
    cm_ipc_stop(a, seq);
    assert_true(cm_ipc_stop_requested(a));
    assert_false(cm_ipc_stop_requested(b));

    /* the slot is given back and claimed again before the daemon looks:
     * the stop aimed at the earlier claim is dropped with its tag */
    assert_int_equal(cm_ipc_release(a), 0);
    assert_int_equal(cm_ipc_claim(seg, (uint32_t) i, 1, NULL, 1), i);
    assert_false(cm_ipc_stop_requested(a));
    assert_string_equal(a->tag, "");
    cm_ipc_stop(a, seq);          /* a late stop for the old claim */
    assert_false(cm_ipc_stop_requested(a));

    /* tags are cut to the field */
    cm_ipc_set_tag(a, "0123456789012345678901234567890123456789xyz", 43);
    assert_int_equal(strlen(a->tag), sizeof(a->tag) - 1);
}


static void
test_slot_lifecycle_submit_run_done_release(void **state)
{
    cm_ipc_seg_t   *seg = *state;
    cm_ipc_slot_t  *s;
    uint64_t        p[2] = { 5, 6 };
    int64_t         i;

    i = cm_ipc_claim(seg, 0, 8, NULL, 1234);
    assert_true(i >= 0);
    s = cm_ipc_slot(seg, (uint32_t) i);
    assert_int_equal(cm_ipc_slot_state(s), CM_SLOT_CLAIMED);
    assert_int_equal(s->owner_pid, 1234);

    assert_int_equal(cm_ipc_submit(seg, s, CM_REQ_ECHO, p, 2, "hi", 2), CM_OK);
    assert_int_equal(cm_ipc_slot_state(s), CM_SLOT_SUBMITTED);
    assert_memory_equal(cm_ipc_slot_req(seg, s), "hi", 2);
    assert_int_equal(s->params[1], 6);
    /* a second submit of the same slot is refused */
    assert_int_equal(cm_ipc_submit(seg, s, CM_REQ_ECHO, NULL, 0, "x", 1),
                     CM_EINVAL);

    assert_true(cm_ipc_slot_cas(s, CM_SLOT_SUBMITTED, CM_SLOT_RUNNING));
    assert_int_equal(cm_ipc_finish(s, 0), CM_OK);
    assert_int_equal(cm_ipc_slot_state(s), CM_SLOT_DONE);
    assert_int_equal(cm_ipc_release(s), 0);
    assert_int_equal(cm_ipc_slot_state(s), CM_SLOT_FREE);
}


static void
test_submit_rejects_oversized_payload_and_no_kind(void **state)
{
    cm_ipc_seg_t   *seg = *state;
    cm_ipc_slot_t  *s;
    char            big[300];
    int64_t         i;

    memset(big, 'x', sizeof(big));
    i = cm_ipc_claim(seg, 0, 8, NULL, 1);
    s = cm_ipc_slot(seg, (uint32_t) i);
    assert_int_equal(cm_ipc_submit(seg, s, CM_REQ_ECHO, NULL, 0, big,
                                   sizeof(big)), CM_EINVAL);
    assert_int_equal(cm_ipc_submit(seg, s, CM_REQ_NONE, NULL, 0, "a", 1),
                     CM_EINVAL);
    assert_int_equal(cm_ipc_slot_state(s), CM_SLOT_CLAIMED);
    cm_ipc_release(s);
}


static void
test_cancel_while_running_hands_slot_to_daemon(void **state)
{
    cm_ipc_seg_t   *seg = *state;
    cm_ipc_slot_t  *s;
    int64_t         i;

    i = cm_ipc_claim(seg, 0, 8, NULL, 1);
    s = cm_ipc_slot(seg, (uint32_t) i);
    cm_ipc_submit(seg, s, CM_REQ_ECHO_STREAM, NULL, 0, "a", 1);
    assert_true(cm_ipc_slot_cas(s, CM_SLOT_SUBMITTED, CM_SLOT_RUNNING));

    /* nginx gives up: it must tell the daemon */
    assert_int_equal(cm_ipc_release(s), 1);
    assert_int_equal(cm_ipc_slot_state(s), CM_SLOT_CANCELLED);
    /* nobody may claim it until the daemon lets go */
    assert_int_equal(cm_ipc_claim(seg, (uint32_t) i, 1, NULL, 1), -1);
    /* the daemon's finish notices and frees it exactly once */
    assert_int_equal(cm_ipc_finish(s, 0), CM_ECANCELED);
    assert_int_equal(cm_ipc_slot_state(s), CM_SLOT_FREE);
    /* releasing again is harmless */
    assert_int_equal(cm_ipc_release(s), 0);
    assert_int_equal(cm_ipc_slot_state(s), CM_SLOT_FREE);
}


static void
test_release_of_submitted_slot_beats_daemon_pickup(void **state)
{
    cm_ipc_seg_t   *seg = *state;
    cm_ipc_slot_t  *s;
    int64_t         i;

    i = cm_ipc_claim(seg, 0, 8, NULL, 1);
    s = cm_ipc_slot(seg, (uint32_t) i);
    cm_ipc_submit(seg, s, CM_REQ_ECHO, NULL, 0, "a", 1);
    assert_int_equal(cm_ipc_release(s), 0);
    /* the late SUBMIT doorbell: the daemon's CAS must fail */
    assert_false(cm_ipc_slot_cas(s, CM_SLOT_SUBMITTED, CM_SLOT_RUNNING));
}


static void
test_claim_exhausts_partition_then_fails(void **state)
{
    cm_ipc_seg_t  *seg = *state;
    uint32_t       first, count, hint = 0, k;
    int64_t        got[8];

    cm_ipc_partition(seg, 1, 2, &first, &count);
    assert_int_equal(first, 4);
    assert_int_equal(count, 4);
    for (k = 0; k < count; k++) {
        got[k] = cm_ipc_claim(seg, first, count, &hint, 1);
        assert_true(got[k] >= 4 && got[k] < 8);
    }
    assert_int_equal(cm_ipc_claim(seg, first, count, &hint, 1), -1);
    for (k = 0; k < count; k++) {
        cm_ipc_release(cm_ipc_slot(seg, (uint32_t) got[k]));
    }
    /* odd split: the last worker takes the remainder */
    cm_ipc_partition(seg, 2, 3, &first, &count);
    assert_int_equal(first, 4);
    assert_int_equal(count, 4);
    /* more workers than slots: everyone shares everything */
    cm_ipc_partition(seg, 5, 100, &first, &count);
    assert_int_equal(first, 0);
    assert_int_equal(count, 8);
}


static void
test_ring_records_wrap_around_and_keep_boundaries(void **state)
{
    cm_ipc_seg_t   *seg = *state;
    cm_ipc_slot_t  *s;
    char            rec[64], out[64];
    int64_t         i, n;
    int             k, put = 0, got = 0;

    i = cm_ipc_claim(seg, 0, 8, NULL, 1);
    s = cm_ipc_slot(seg, (uint32_t) i);

    /* 1000 records of varying size through a 256-byte ring */
    while (got < 1000) {
        while (put < 1000) {
            k = put % 50 + 1;
            memset(rec, 'a' + put % 26, (size_t) k);
            if (cm_ipc_ring_put(seg, s, rec, (uint32_t) k) != CM_OK) {
                break;
            }
            put++;
        }
        n = cm_ipc_ring_get(seg, s, out, sizeof(out));
        assert_true(n > 0);
        assert_int_equal(n, got % 50 + 1);
        assert_int_equal(out[0], 'a' + got % 26);
        assert_int_equal(out[n - 1], 'a' + got % 26);
        got++;
    }
    assert_int_equal(cm_ipc_ring_get(seg, s, out, sizeof(out)), CM_EAGAIN);
    cm_ipc_release(s);
}


static void
test_ring_full_pauses_writer_and_too_big_is_refused(void **state)
{
    cm_ipc_seg_t   *seg = *state;
    cm_ipc_slot_t  *s;
    char            rec[252];
    int64_t         i;

    memset(rec, 'z', sizeof(rec));
    i = cm_ipc_claim(seg, 0, 8, NULL, 1);
    s = cm_ipc_slot(seg, (uint32_t) i);
    assert_int_equal(cm_ipc_ring_put(seg, s, rec, 253), CM_EINVAL);
    assert_int_equal(cm_ipc_ring_put(seg, s, rec, 252), CM_OK);
    assert_int_equal(cm_ipc_ring_put(seg, s, rec, 1), CM_EAGAIN);
    cm_ipc_release(s);
}


static void
test_ring_get_rejects_garbage_indices(void **state)
{
    cm_ipc_seg_t   *seg = *state;
    cm_ipc_slot_t  *s;
    char            out[16];
    uint32_t        len = 1000;
    int64_t         i;

    i = cm_ipc_claim(seg, 0, 8, NULL, 1);
    s = cm_ipc_slot(seg, (uint32_t) i);
    /* head ahead by more than the capacity: a confused or hostile writer */
    atomic_store(&s->ring_head, 100000);
    assert_int_equal(cm_ipc_ring_get(seg, s, out, sizeof(out)), CM_EFORMAT);
    /* a record length beyond what was written */
    atomic_store(&s->ring_head, 8);
    memcpy(cm_ipc_slot_ring(seg, s), &len, 4);
    assert_int_equal(cm_ipc_ring_get(seg, s, out, sizeof(out)), CM_EFORMAT);
    /* a record larger than the reader's buffer */
    len = 4;
    atomic_store(&s->ring_head, 8);
    memcpy(cm_ipc_slot_ring(seg, s), &len, 4);
    assert_int_equal(cm_ipc_ring_get(seg, s, out, 2), CM_EFORMAT);
    cm_ipc_release(s);
}


static void
test_models_table_round_trips_and_terminates_strings(void **state)
{
    cm_ipc_seg_t    *seg = *state;
    cm_ipc_model_t   m[2], out[4];

    memset(m, 'x', sizeof(m));   /* no terminators at all */
    memcpy(m[1].name, "dialog", 7);
    cm_ipc_set_models(seg, m, 2);
    assert_int_equal(cm_ipc_get_models(seg, out, 4), 2);
    assert_int_equal(strlen(out[0].name), sizeof(out[0].name) - 1);
    assert_string_equal(out[1].name, "dialog");
    assert_int_equal(cm_ipc_get_models(seg, out, 1), 1);
}


static void
test_two_processes_stream_through_the_ring(void **state)
{
    cm_ipc_seg_t   *seg = *state;
    cm_ipc_slot_t  *s;
    pid_t           pid;
    int             st, k;
    int64_t         i, n;
    uint32_t        v, expect = 0;

    i = cm_ipc_claim(seg, 0, 8, NULL, 1);
    s = cm_ipc_slot(seg, (uint32_t) i);

    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        /* producer: 20000 counters, spinning while the ring is full */
        for (v = 0; v < 20000; v++) {
            while (cm_ipc_ring_put(seg, s, &v, sizeof(v)) == CM_EAGAIN) {
                /* spin */
            }
        }
        cm_ipc_ring_close(s);
        _exit(0);
    }
    for (k = 0; ; k++) {
        n = cm_ipc_ring_get(seg, s, &v, sizeof(v));
        if (n == CM_EAGAIN) {
            if (atomic_load(&s->ring_closed)
                && atomic_load(&s->ring_head) == atomic_load(&s->ring_tail))
            {
                break;
            }
            continue;
        }
        assert_int_equal(n, 4);
        assert_int_equal(v, expect);
        expect++;
    }
    assert_int_equal(expect, 20000);
    waitpid(pid, &st, 0);
    assert_true(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    cm_ipc_release(s);
}


static void
test_stats_block_is_published_and_histogram_buckets_by_bound(void **state)
{
    cm_ipc_seg_t             *seg = *state, peer;
    cm_ipc_stats_snapshot_t   st;
    char                      err[256];

    assert_int_equal(cm_ipc_attach(&peer, cm_test_name, err, sizeof(err)),
                     CM_OK);
    assert_int_equal(cm_ipc_stats_read(&peer, &st), CM_OK);
    assert_int_equal(st.itl_count, 0);

    /* on a bound is in that bucket; past the last finite bound is +Inf */
    cm_ipc_stats_observe_itl(seg, 1);
    cm_ipc_stats_observe_itl(seg, cm_ipc_itl_bounds_ns[0]);
    cm_ipc_stats_observe_itl(seg, cm_ipc_itl_bounds_ns[0] + 1);
    cm_ipc_stats_observe_itl(seg,
                             cm_ipc_itl_bounds_ns[CM_IPC_ITL_NBUCKETS - 1]
                             + 1);
    atomic_store(&seg->hdr->stats.running_seqs, 3);
    atomic_store(&seg->hdr->stats.completion_tokens, 42);

    assert_int_equal(cm_ipc_stats_read(&peer, &st), CM_OK);
    assert_int_equal(st.itl_buckets[0], 2);
    assert_int_equal(st.itl_buckets[1], 1);
    assert_int_equal(st.itl_buckets[CM_IPC_ITL_NBUCKETS], 1);
    assert_int_equal(st.itl_count, 4);
    assert_int_equal(st.itl_sum_ns, 1 + 2 * cm_ipc_itl_bounds_ns[0] + 1
                     + cm_ipc_itl_bounds_ns[CM_IPC_ITL_NBUCKETS - 1] + 1);
    assert_int_equal(st.running_seqs, 3);
    assert_int_equal(st.completion_tokens, 42);
    assert_string_equal(cm_ipc_itl_le[CM_IPC_ITL_NBUCKETS], "+Inf");
    cm_ipc_detach(&peer);
}


static void
test_stats_reader_rejects_old_unknown_and_hostile_blocks(void **state)
{
    cm_ipc_seg_t             *seg = *state;
    cm_ipc_stats_t           *b = &seg->hdr->stats;
    cm_ipc_stats_snapshot_t   st;

    /* a daemon from before the block leaves it zero: "none", not garbage */
    b->magic = 0;
    assert_int_equal(cm_ipc_stats_read(seg, &st), CM_ENOTFOUND);
    b->magic = CM_IPC_STATS_MAGIC;

    b->itl_nbuckets = CM_IPC_ITL_NBUCKETS + 1;
    assert_int_equal(cm_ipc_stats_read(seg, &st), CM_EFORMAT);
    b->itl_nbuckets = CM_IPC_ITL_NBUCKETS;

    b->size = 8;
    assert_int_equal(cm_ipc_stats_read(seg, &st), CM_EFORMAT);
    b->size = CM_IPC_HEADER_SIZE;    /* would run past the header page */
    assert_int_equal(cm_ipc_stats_read(seg, &st), CM_EFORMAT);
    b->size = sizeof(cm_ipc_stats_t) + 64;   /* a later, longer version */
    b->version = CM_IPC_STATS_VERSION + 1;
    assert_int_equal(cm_ipc_stats_read(seg, &st), CM_OK);
    b->version = 0;
    assert_int_equal(cm_ipc_stats_read(seg, &st), CM_EFORMAT);
    b->version = CM_IPC_STATS_VERSION;
    b->size = sizeof(cm_ipc_stats_t);

    /* more tokens in use than capacity cannot be: clamped, ratio <= 1 */
    atomic_store(&b->kv_cap_tokens, 100);
    atomic_store(&b->kv_used_tokens, 1000);
    assert_int_equal(cm_ipc_stats_read(seg, &st), CM_OK);
    assert_int_equal(st.kv_used_tokens, 100);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_create_then_attach_sees_same_header, setup_seg, teardown_seg),
        cmocka_unit_test(test_attach_missing_segment_is_not_found),
        cmocka_unit_test(test_create_rejects_bad_names_and_sizes),
        cmocka_unit_test_setup_teardown(test_validate_header_rejects_hostile_fields, setup_seg, teardown_seg),
        cmocka_unit_test_setup_teardown(test_slot_lifecycle_submit_run_done_release, setup_seg, teardown_seg),
        cmocka_unit_test_setup_teardown(test_submit_rejects_oversized_payload_and_no_kind, setup_seg, teardown_seg),
        cmocka_unit_test_setup_teardown(test_cancel_while_running_hands_slot_to_daemon, setup_seg, teardown_seg),
        cmocka_unit_test_setup_teardown(test_release_of_submitted_slot_beats_daemon_pickup, setup_seg, teardown_seg),
        cmocka_unit_test_setup_teardown(test_claim_exhausts_partition_then_fails, setup_seg, teardown_seg),
        cmocka_unit_test_setup_teardown(test_ring_records_wrap_around_and_keep_boundaries, setup_seg, teardown_seg),
        cmocka_unit_test_setup_teardown(test_ring_full_pauses_writer_and_too_big_is_refused, setup_seg, teardown_seg),
        cmocka_unit_test_setup_teardown(test_ring_get_rejects_garbage_indices, setup_seg, teardown_seg),
        cmocka_unit_test_setup_teardown(test_models_table_round_trips_and_terminates_strings, setup_seg, teardown_seg),
        cmocka_unit_test_setup_teardown(test_two_processes_stream_through_the_ring, setup_seg, teardown_seg),
        cmocka_unit_test_setup_teardown(test_stats_block_is_published_and_histogram_buckets_by_bound, setup_seg, teardown_seg),
        cmocka_unit_test_setup_teardown(test_stats_reader_rejects_old_unknown_and_hostile_blocks, setup_seg, teardown_seg),
        cmocka_unit_test_setup_teardown(test_stop_finds_tagged_slots_and_never_reaches_a_later_claim, setup_seg, teardown_seg),
    };

    return cmocka_run_group_tests_name("ipc", tests, NULL, NULL);
}

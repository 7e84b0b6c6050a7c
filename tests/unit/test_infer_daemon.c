/*
 * test_infer_daemon.c: the real `cinematch infer` binary driven through
 * its segment and doorbell socket, the way an nginx worker does it.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>
#include <cmocka.h>

#include "cinematch/common.h"
#include "cinematch/ipc.h"

#include "cm_test_daemon.h"


static void
test_echo_round_trip_returns_payload(void **state)
{
    uint32_t        slot;
    cm_ipc_slot_t  *s = submit(CM_REQ_ECHO, 0, 0, "hello spine", &slot);

    assert_int_equal(wait_ready(slot, 2000), 0);
    atomic_store(&s->bell, 0);
    assert_int_equal(cm_ipc_slot_state(s), CM_SLOT_DONE);
    assert_int_equal(s->res_len, 11);
    assert_memory_equal(cm_ipc_slot_res(&D.seg, s), "hello spine", 11);
    assert_int_equal(cm_ipc_release(s), 0);
}


static void
test_unknown_kind_ends_in_error_with_reason(void **state)
{
    uint32_t        slot;
    cm_ipc_slot_t  *s = submit(999, 0, 0, "x", &slot);

    assert_int_equal(wait_ready(slot, 2000), 0);
    assert_int_equal(cm_ipc_slot_state(s), CM_SLOT_ERROR);
    assert_int_equal(s->status, CM_EINVAL);
    assert_non_null(memmem(cm_ipc_slot_res(&D.seg, s), s->res_len,
                           "unknown", 7));
    cm_ipc_release(s);
}


static void
test_stream_delivers_every_chunk_through_small_ring(void **state)
{
    uint32_t        slot;
    char            buf[64];
    int64_t         n;
    int             got = 0, polls = 0;
    cm_ipc_slot_t  *s = submit(CM_REQ_ECHO_STREAM, 500, 0, "chunk-of-text",
                               &slot);

    /* 500 × 17 bytes through a 1 KiB ring: the daemon must pause, not drop */
    while (polls++ < 5000) {
        atomic_store(&s->bell, 0);
        atomic_thread_fence(memory_order_seq_cst);
        while ((n = cm_ipc_ring_get(&D.seg, s, buf, sizeof(buf))) > 0) {
            assert_int_equal(n, 13);
            assert_memory_equal(buf, "chunk-of-text", 13);
            got++;
        }
        assert_int_equal(n, CM_EAGAIN);
        if (cm_ipc_slot_state(s) == CM_SLOT_DONE
            && cm_ipc_ring_get(&D.seg, s, buf, sizeof(buf)) == CM_EAGAIN)
        {
            break;
        }
        (void) wait_ready(slot, 100);
    }
    assert_int_equal(got, 500);
    cm_ipc_release(s);
}


static void
test_cancel_stops_stream_and_frees_slot(void **state)
{
    uint32_t        slot;
    cm_ipc_slot_t  *s = submit(CM_REQ_ECHO_STREAM, 10000, 10000, "tick",
                               &slot);

    assert_int_equal(wait_ready(slot, 2000), 0);   /* first chunk */
    assert_int_equal(cm_ipc_slot_state(s), CM_SLOT_RUNNING);
    assert_int_equal(cm_ipc_release(s), 1);         /* → CANCELLED */
    bell(CM_MSG_CANCEL, slot);
    assert_true(CM_WAIT_FOR(cm_ipc_slot_state(s) == CM_SLOT_FREE));
    assert_int_equal(atomic_load(&D.seg.hdr->queue_depth), 0);
}


static void
test_out_of_range_parameters_are_rejected(void **state)
{
    uint32_t        slot;
    cm_ipc_slot_t  *s = submit(CM_REQ_ECHO_STREAM, 0, 0, "x", &slot);

    assert_int_equal(wait_ready(slot, 2000), 0);
    assert_int_equal(cm_ipc_slot_state(s), CM_SLOT_ERROR);
    cm_ipc_release(s);
}


static void
test_garbage_doorbells_do_not_hurt_the_daemon(void **state)
{
    uint32_t        slot;
    cm_ipc_slot_t  *s;

    bell(CM_MSG_SUBMIT, 1000000);   /* slot out of range */
    bell(77, 0);                    /* unknown op */
    bell(CM_MSG_CANCEL, 3);         /* cancel of an idle slot */
    s = submit(CM_REQ_ECHO, 0, 0, "still alive", &slot);
    assert_int_equal(wait_ready(slot, 2000), 0);
    assert_int_equal(cm_ipc_slot_state(s), CM_SLOT_DONE);
    cm_ipc_release(s);
}


/* Regression: this slept 150 ms and then expected a newer heartbeat, which
 * a daemon starved of CPU (the sanitizer build under load) did not always
 * write in time; it now waits for the heartbeat itself. */
static void
test_heartbeat_advances_and_header_reports_ready(void **state)
{
    uint64_t h0 = atomic_load(&D.seg.hdr->heartbeat_ns);

    assert_true(CM_WAIT_FOR(atomic_load(&D.seg.hdr->heartbeat_ns) > h0));
    assert_true(CM_WAIT_FOR(atomic_load(&D.seg.hdr->ready) == 1));
    assert_int_equal(D.seg.hdr->daemon_pid, D.pid);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_echo_round_trip_returns_payload),
        cmocka_unit_test(test_unknown_kind_ends_in_error_with_reason),
        cmocka_unit_test(test_stream_delivers_every_chunk_through_small_ring),
        cmocka_unit_test(test_cancel_stops_stream_and_frees_slot),
        cmocka_unit_test(test_out_of_range_parameters_are_rejected),
        cmocka_unit_test(test_garbage_doorbells_do_not_hurt_the_daemon),
        cmocka_unit_test(test_heartbeat_advances_and_header_reports_ready),
    };

    return cmocka_run_group_tests_name("infer_daemon", tests, daemon_start,
                                       daemon_stop);
}

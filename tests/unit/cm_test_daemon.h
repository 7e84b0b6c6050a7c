/*
 * cm_test_daemon.h: drive a real `cinematch infer` from a unit test the
 * way an nginx worker does (segment + doorbell socket).  Header-only: each
 * test binary that includes it gets its own copy.
 */
#ifndef CM_TEST_DAEMON_H
#define CM_TEST_DAEMON_H

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

#include "cinematch/common.h"
#include "cinematch/ipc.h"

/*
 * A wait on a condition ends as soon as the condition holds; this bound
 * only stops a test whose daemon hung.  It is no timing claim: a loaded
 * machine (the sanitizer build, CI) makes the waits longer, never failing.
 */
#define CM_TEST_HANG_MS  120000

/* 1 once cond holds (checked every 5 ms), 0 if it still does not after
 * CM_TEST_HANG_MS. */
#define CM_WAIT_FOR(cond)                                                    \
    ({                                                                       \
        int  cm_w_;                                                          \
        for (cm_w_ = 0; !(cond) && cm_w_ < CM_TEST_HANG_MS / 5; cm_w_++) {   \
            usleep(5000);                                                    \
        }                                                                    \
        (cond) ? 1 : 0;                                                      \
    })

typedef struct {
    pid_t          pid;
    int            fd;
    cm_ipc_seg_t   seg;
    char           shm[64];
    char           sock[108];
} cm_daemon_t;

static cm_daemon_t D;


static int
daemon_connect(void)
{
    struct sockaddr_un  sa;
    int                 fd;

    fd = socket(AF_UNIX, SOCK_STREAM, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sun_family = AF_UNIX;
    strcpy(sa.sun_path, D.sock);
    if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}


/* Start `cinematch infer` with extra arguments (NULL-terminated). */
static int
daemon_start_args(const char *const *extra)
{
    const char  *b = getenv("CM_BUILD_DIR");
    const char  *argv[32];
    char         bin[256], err[256];
    int          st;
    int          i, a = 0;

    snprintf(bin, sizeof(bin), "%s/cinematch", b != NULL ? b : "build");
    snprintf(D.shm, sizeof(D.shm), "/cm-test-infer-%d", (int) getpid());
    snprintf(D.sock, sizeof(D.sock), "/tmp/cm-test-infer-%d.sock",
             (int) getpid());
    argv[a++] = bin;
    argv[a++] = "infer";
    argv[a++] = "--shm";
    argv[a++] = D.shm;
    argv[a++] = "--socket";
    argv[a++] = D.sock;
    argv[a++] = "--slots";
    argv[a++] = "8";
    argv[a++] = "--ring-kb";
    argv[a++] = "1";
    argv[a++] = "--log-level";
    argv[a++] = "warn";
    for (i = 0; extra != NULL && extra[i] != NULL && a < 31; i++) {
        argv[a++] = extra[i];
    }
    argv[a] = NULL;
    unsetenv("CINEMATCH_PG_DSN");
    D.pid = fork();
    if (D.pid == 0) {
        execv(bin, (char *const *) argv);
        _exit(127);
    }
    /* up when its socket and segment are there; gone when it exited */
    for (i = 0; i < CM_TEST_HANG_MS / 10; i++) {
        if (waitpid(D.pid, &st, WNOHANG) == D.pid) {
            break;
        }
        if (access(D.sock, F_OK) == 0
            && cm_ipc_attach(&D.seg, D.shm, err, sizeof(err)) == CM_OK)
        {
            D.fd = daemon_connect();
            if (D.fd >= 0) {
                return 0;
            }
            cm_ipc_detach(&D.seg);
        }
        usleep(10000);
    }
    fprintf(stderr, "daemon did not come up (%s)\n", bin);
    return -1;
}


static int __attribute__((unused))
daemon_start(void **state)
{
    return daemon_start_args(NULL);
}


static int
daemon_stop(void **state)
{
    int st;

    close(D.fd);
    cm_ipc_detach(&D.seg);
    /* Regression: SIGTERM once killed the daemon outright when it landed
     * on an OpenBLAS pool thread (signalfd + blocked mask in main only);
     * a clean drain must exit 0. */
    kill(D.pid, SIGTERM);
    waitpid(D.pid, &st, 0);
    return WIFEXITED(st) && WEXITSTATUS(st) == 0 ? 0 : -1;
}


static void
bell(uint32_t op, uint32_t slot)
{
    cm_ipc_msg_t m = { op, slot };

    assert_int_equal(write(D.fd, &m, sizeof(m)), sizeof(m));
}


/* Wait for READY on `slot`; returns 0 or -1 on timeout. */
static int
wait_ready(uint32_t slot, int ms)
{
    struct pollfd  p = { D.fd, POLLIN, 0 };
    cm_ipc_msg_t   m;

    while (poll(&p, 1, ms) == 1) {
        if (read(D.fd, &m, sizeof(m)) != sizeof(m)) {
            return -1;
        }
        if (m.op == CM_MSG_READY && m.slot == slot) {
            return 0;
        }
    }
    return -1;
}


__attribute__((unused)) static cm_ipc_slot_t *
submit(uint32_t kind, uint64_t p0, uint64_t p1, const char *payload,
       uint32_t *slot)
{
    uint64_t        params[2] = { p0, p1 };
    int64_t         i;
    cm_ipc_slot_t  *s;

    i = cm_ipc_claim(&D.seg, 0, D.seg.hdr->slot_count, NULL,
                     (uint32_t) getpid());
    assert_true(i >= 0);
    s = cm_ipc_slot(&D.seg, (uint32_t) i);
    assert_int_equal(cm_ipc_submit(&D.seg, s, kind, params, 2, payload,
                                   strlen(payload)), CM_OK);
    bell(CM_MSG_SUBMIT, (uint32_t) i);
    *slot = (uint32_t) i;
    return s;
}



/* Submit with up to 8 parameters and a binary payload. */
__attribute__((unused)) static cm_ipc_slot_t *
submit_raw(uint32_t kind, const uint64_t *params, size_t np,
           const void *payload, size_t len, uint32_t *slot)
{
    int64_t         i;
    cm_ipc_slot_t  *s;

    i = cm_ipc_claim(&D.seg, 0, D.seg.hdr->slot_count, NULL,
                     (uint32_t) getpid());
    assert_true(i >= 0);
    s = cm_ipc_slot(&D.seg, (uint32_t) i);
    assert_int_equal(cm_ipc_submit(&D.seg, s, kind, params, np, payload, len),
                     CM_OK);
    bell(CM_MSG_SUBMIT, (uint32_t) i);
    *slot = (uint32_t) i;
    return s;
}


#endif /* CM_TEST_DAEMON_H */

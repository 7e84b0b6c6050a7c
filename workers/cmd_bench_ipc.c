/*
 * cmd_bench_ipc.c: `cinematch bench ipc`, the spine's round trip measured
 * against a plain unix-socket echo in the same run.
 *
 * Both sides run here: a child `cinematch infer` for the spine, a forked
 * echo server for the baseline.  The client is one thread, the way an
 * nginx worker is: at concurrency C it keeps C requests outstanding.
 */
#include <errno.h>
#include <getopt.h>
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
#include "cmd.h"

static int cm_bench_ipc_main(int argc, char **argv);

CM_COMMAND("bench ipc", "benchmark the shm + doorbell echo round trip",
           cm_bench_ipc_main);


static int
cm_u64_cmp(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *) a, y = *(const uint64_t *) b;

    return x < y ? -1 : x > y;
}


static void
cm_report(const char *what, uint64_t *lat, size_t n, uint64_t wall_ns)
{
    size_t  p50 = n / 2, p99 = (n * 99) / 100;

    qsort(lat, n, sizeof(uint64_t), cm_u64_cmp);
    printf("  %-28s p50 %7.1f us  p99 %7.1f us  %9.0f req/s\n", what,
           (double) lat[p50] / 1e3, (double) lat[p99] / 1e3,
           (double) n / ((double) wall_ns / 1e9));
}


/* Baseline: the same payload over a unix socketpair to an echo process. */
static double
cm_bench_socket(size_t n, const char *payload, size_t len, uint64_t *lat)
{
    int       sv[2];
    pid_t     pid;
    char      buf[4096];
    size_t    i, got;
    ssize_t   r;
    uint64_t  t0, t;

    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) != 0) {
        return -1;
    }
    pid = fork();
    if (pid == 0) {
        close(sv[0]);
        while ((r = read(sv[1], buf, sizeof(buf))) > 0) {
            if (write(sv[1], buf, (size_t) r) != r) {
                break;
            }
        }
        _exit(0);
    }
    close(sv[1]);
    t0 = cm_now_mono_ns();
    for (i = 0; i < n; i++) {
        t = cm_now_mono_ns();
        if (write(sv[0], payload, len) != (ssize_t) len) {
            break;
        }
        for (got = 0; got < len; got += (size_t) r) {
            r = read(sv[0], buf, sizeof(buf));
            if (r <= 0) {
                break;
            }
        }
        lat[i] = cm_now_mono_ns() - t;
    }
    t = cm_now_mono_ns() - t0;
    close(sv[0]);
    waitpid(pid, NULL, 0);
    cm_report("unix socket echo (c=1)", lat, n, t);
    return (double) t / (double) n;
}


static double
cm_bench_spine(cm_ipc_seg_t *seg, int fd, size_t n, uint32_t conc,
               const char *payload, size_t len, uint64_t *lat)
{
    uint64_t        t0, wall, *start;
    size_t          sent = 0, done = 0, k;
    uint32_t        outstanding = 0;
    int64_t         idx;
    cm_ipc_msg_t    m[64];
    ssize_t         r;
    cm_ipc_slot_t  *s;
    char            label[64];

    start = calloc(seg->hdr->slot_count, sizeof(uint64_t));
    if (start == NULL) {
        return -1;
    }
    t0 = cm_now_mono_ns();
    while (done < n) {
        while (outstanding < conc && sent < n) {
            idx = cm_ipc_claim(seg, 0, seg->hdr->slot_count, NULL,
                               (uint32_t) getpid());
            if (idx < 0) {
                break;
            }
            s = cm_ipc_slot(seg, (uint32_t) idx);
            start[idx] = cm_now_mono_ns();
            cm_ipc_submit(seg, s, CM_REQ_ECHO, NULL, 0, payload, len);
            m[0].op = CM_MSG_SUBMIT;
            m[0].slot = (uint32_t) idx;
            if (write(fd, m, sizeof(m[0])) != sizeof(m[0])) {
                free(start);
                return -1;
            }
            outstanding++;
            sent++;
        }
        r = read(fd, m, sizeof(m));
        if (r <= 0) {
            free(start);
            return -1;
        }
        for (k = 0; k < (size_t) r / sizeof(m[0]); k++) {
            s = cm_ipc_slot(seg, m[k].slot);
            if (s == NULL || cm_ipc_slot_state(s) != CM_SLOT_DONE
                || s->res_len != len)
            {
                continue;
            }
            lat[done++] = cm_now_mono_ns() - start[m[k].slot];
            cm_ipc_release(s);
            outstanding--;
        }
    }
    wall = cm_now_mono_ns() - t0;
    snprintf(label, sizeof(label), "shm + doorbell echo (c=%u)", conc);
    cm_report(label, lat, n, wall);
    free(start);
    return (double) wall / (double) n;
}


static int
cm_bench_ipc_main(int argc, char **argv)
{
    char                 shm[64], sock[108], err[256], self[512], *payload;
    size_t               n = 20000, len = 64;
    uint64_t            *lat;
    pid_t                pid;
    int                  fd = -1, i, c, rc = 1;
    ssize_t              sl;
    cm_ipc_seg_t         seg;
    struct sockaddr_un   sa;
    double               base, one, many;

    optind = 1;
    while ((c = getopt(argc, argv, "n:s:h")) != -1) {
        switch (c) {
        case 'n': n = strtoul(optarg, NULL, 10); break;
        case 's': len = strtoul(optarg, NULL, 10); break;
        case 'h':
            printf("usage: cinematch bench ipc [-n requests] [-s payload]\n"
                   "Echo round trip through shm + doorbell vs a unix-socket"
                   " echo, same run.\n");
            return 0;
        default:
            return 2;
        }
    }
    if (n < 100 || n > 10000000 || len < 1 || len > 4096) {
        fprintf(stderr, "bench ipc: -n 100..10000000, -s 1..4096\n");
        return 2;
    }
    payload = malloc(len);
    lat = calloc(n, sizeof(uint64_t));
    if (payload == NULL || lat == NULL) {
        free(payload);
        free(lat);
        return 1;
    }
    memset(payload, 'p', len);

    sl = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (sl <= 0) {
        free(payload);
        free(lat);
        return 1;
    }
    self[sl] = '\0';
    snprintf(shm, sizeof(shm), "/cm-bench-%d", (int) getpid());
    snprintf(sock, sizeof(sock), "/tmp/cm-bench-%d.sock", (int) getpid());
    pid = fork();
    if (pid == 0) {
        execl(self, self, "infer", "--shm", shm, "--socket", sock,
              "--log-level", "warn", (char *) NULL);
        _exit(127);
    }
    memset(&seg, 0, sizeof(seg));
    for (i = 0; i < 500; i++) {
        usleep(10000);
        if (cm_ipc_attach(&seg, shm, err, sizeof(err)) != CM_OK) {
            continue;
        }
        fd = socket(AF_UNIX, SOCK_STREAM, 0);
        memset(&sa, 0, sizeof(sa));
        sa.sun_family = AF_UNIX;
        snprintf(sa.sun_path, sizeof(sa.sun_path), "%s", sock);
        if (connect(fd, (struct sockaddr *) &sa, sizeof(sa)) == 0) {
            break;
        }
        close(fd);
        fd = -1;
        cm_ipc_detach(&seg);
    }
    if (fd < 0) {
        fprintf(stderr, "bench ipc: daemon did not start\n");
        goto out;
    }

    printf("echo round trip, %zu requests, %zu-byte payload\n", n, len);
    base = cm_bench_socket(n, payload, len, lat);
    one = cm_bench_spine(&seg, fd, n, 1, payload, len, lat);
    many = cm_bench_spine(&seg, fd, n, 64, payload, len, lat);
    if (base > 0 && one > 0 && many > 0) {
        printf("  ratio spine/socket time per request: c=1 %.2f, c=64 %.2f\n",
               one / base, many / base);
        rc = 0;
    }

out:
    if (fd >= 0) {
        close(fd);
    }
    cm_ipc_detach(&seg);
    kill(pid, SIGTERM);
    waitpid(pid, NULL, 0);
    free(payload);
    free(lat);
    return rc;
}

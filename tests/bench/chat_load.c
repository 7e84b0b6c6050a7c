/*
 * chat_load.c: the load client of tests/bench/chat_streams.py in C: N
 * concurrent streaming POST /v1/chat/completions over HTTP/1.1 on one epoll
 * thread, chunked SSE parsed just enough to time each content chunk and
 * read the final usage and finish_reason.  The asyncio client parses every
 * chunk as JSON and costs the machine CPU that the daemon and nginx share
 * on a 2-core box; this one does not.
 *
 *     chat_load PORT TOKEN N BODY
 *
 * BODY is the request's JSON object without "seed"; stream i is sent
 * {"seed": i + 1, ...BODY}.  Prints one line per stream:
 *     stream I STATUS TTFT_S END_S COMPLETION PROMPT FINISH GAP_S...
 * (times from the first request; GAP_S: seconds between content chunks)
 * then "cpu USER_S SYS_S" of this process.  Exit 0 when every stream got
 * [DONE]; 1 otherwise.  Built by chat_streams.py with cc; no library.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int      fd;
    int      status;         /* HTTP status, 0 until the head is in */
    int      chunked;
    int      done;           /* [DONE] seen */
    int      closed;
    char    *raw;            /* bytes read, not yet decoded */
    size_t   raw_len, raw_cap;
    long     chunk_left;     /* body bytes left in this chunk; -1 size */
    int      skip_crlf;      /* CRLF after a chunk's data still to skip */
    char    *sse;            /* decoded body, not yet a whole event */
    size_t   sse_len, sse_cap;
    double   t0, first, last, end;
    double  *gaps;
    size_t   ngaps, gaps_cap;
    int      completion, prompt;
    char     finish[32];
} stream_t;


static double
now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double) ts.tv_sec + (double) ts.tv_nsec * 1e-9;
}


static void
append(char **buf, size_t *len, size_t *cap, const char *p, size_t n)
{
    if (*len + n + 1 > *cap) {
        *cap = (*len + n + 1) * 2;
        *buf = realloc(*buf, *cap);
        if (*buf == NULL) {
            perror("realloc");
            exit(1);
        }
    }
    memcpy(*buf + *len, p, n);
    *len += n;
    (*buf)[*len] = '\0';
}


/* One SSE event (without its blank line): a content chunk, usage, finish,
 * or [DONE]. */
static void
on_event(stream_t *s, char *ev, double t)
{
    char *line, *save = NULL, *p;

    for (line = strtok_r(ev, "\n", &save); line != NULL;
         line = strtok_r(NULL, "\n", &save))
    {
        if (strncmp(line, "data: ", 6) != 0) {
            continue;
        }
        line += 6;
        if (strcmp(line, "[DONE]") == 0) {
            s->done = 1;
            s->end = t;
            continue;
        }
        p = strstr(line, "\"content\":\"");
        if (p != NULL && p[11] != '"') {
            if (s->first == 0.0) {
                s->first = t;
            } else {
                if (s->ngaps == s->gaps_cap) {
                    s->gaps_cap = s->gaps_cap ? 2 * s->gaps_cap : 256;
                    s->gaps = realloc(s->gaps,
                                      s->gaps_cap * sizeof(double));
                    if (s->gaps == NULL) {
                        perror("realloc");
                        exit(1);
                    }
                }
                s->gaps[s->ngaps++] = t - s->last;
            }
            s->last = t;
        }
        if ((p = strstr(line, "\"completion_tokens\":")) != NULL) {
            s->completion = atoi(p + 20);
        }
        if ((p = strstr(line, "\"prompt_tokens\":")) != NULL) {
            s->prompt = atoi(p + 16);
        }
        if ((p = strstr(line, "\"finish_reason\":\"")) != NULL) {
            size_t n = strcspn(p + 17, "\"");

            n = n < sizeof(s->finish) - 1 ? n : sizeof(s->finish) - 1;
            memcpy(s->finish, p + 17, n);
            s->finish[n] = '\0';
        }
    }
}


static void
on_body(stream_t *s, const char *p, size_t n, double t)
{
    char   *e;
    size_t  used;

    append(&s->sse, &s->sse_len, &s->sse_cap, p, n);
    used = 0;
    while ((e = strstr(s->sse + used, "\n\n")) != NULL) {
        *e = '\0';
        on_event(s, s->sse + used, t);
        used = (size_t) (e - s->sse) + 2;
    }
    memmove(s->sse, s->sse + used, s->sse_len - used + 1);
    s->sse_len -= used;
}


/* Decodes what raw holds: the head, then chunks (or plain body). */
static void
on_bytes(stream_t *s, double t)
{
    char   *e;
    size_t  at = 0, take;

    if (s->status == 0) {
        e = strstr(s->raw, "\r\n\r\n");
        if (e == NULL) {
            return;
        }
        *e = '\0';
        s->status = atoi(strchr(s->raw, ' ') ? strchr(s->raw, ' ') + 1 : "0");
        s->chunked = strcasestr(s->raw, "transfer-encoding: chunked") != NULL;
        at = (size_t) (e - s->raw) + 4;
        s->chunk_left = -1;
    }
    while (at < s->raw_len) {
        if (!s->chunked) {
            on_body(s, s->raw + at, s->raw_len - at, t);
            at = s->raw_len;
            break;
        }
        if (s->skip_crlf > 0) {
            at++;
            s->skip_crlf--;
            continue;
        }
        if (s->chunk_left < 0) {
            e = memmem(s->raw + at, s->raw_len - at, "\r\n", 2);
            if (e == NULL) {
                break;
            }
            s->chunk_left = strtol(s->raw + at, NULL, 16);
            at = (size_t) (e - s->raw) + 2;
            if (s->chunk_left == 0) {
                s->chunk_left = -1;
                s->skip_crlf = 2;
            }
            continue;
        }
        take = s->raw_len - at;
        take = take < (size_t) s->chunk_left ? take : (size_t) s->chunk_left;
        on_body(s, s->raw + at, take, t);
        at += take;
        s->chunk_left -= (long) take;
        if (s->chunk_left == 0) {
            s->chunk_left = -1;
            s->skip_crlf = 2;
        }
    }
    memmove(s->raw, s->raw + at, s->raw_len - at + 1);
    s->raw_len -= at;
}


int
main(int argc, char **argv)
{
    struct sockaddr_in  sa;
    struct epoll_event  ev, evs[64];
    struct rusage       ru;
    stream_t           *ss;
    char               *req, buf[65536];
    const char         *token, *body;
    int                 port, n, i, k, ep, left, one = 1, rc = 0;
    double              t0;
    ssize_t             got;
    size_t              cap, len, j;

    if (argc != 5) {
        fprintf(stderr, "usage: chat_load PORT TOKEN N BODY\n");
        return 2;
    }
    port = atoi(argv[1]);
    token = argv[2];
    n = atoi(argv[3]);
    body = argv[4];
    if (n < 1 || body[0] != '{') {
        fprintf(stderr, "chat_load: N >= 1 and a JSON object body\n");
        return 2;
    }
    ss = calloc((size_t) n, sizeof(*ss));
    cap = strlen(body) + strlen(token) + 512;
    req = malloc(cap);
    ep = epoll_create1(0);
    if (ss == NULL || req == NULL || ep < 0) {
        perror("chat_load");
        return 1;
    }
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t) port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);

    t0 = now();
    for (i = 0; i < n; i++) {
        char seeded[32];
        int  blen;

        ss[i].fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (ss[i].fd < 0
            || connect(ss[i].fd, (struct sockaddr *) &sa, sizeof(sa)) != 0)
        {
            perror("connect");
            return 1;
        }
        setsockopt(ss[i].fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        blen = snprintf(seeded, sizeof(seeded), "{\"seed\":%d,", i + 1);
        len = (size_t) snprintf(req, cap,
            "POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\n"
            "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
            "Accept: text/event-stream\r\nContent-Length: %zu\r\n"
            "Connection: close\r\n\r\n%s%s", token,
            (size_t) blen + strlen(body + 1), seeded, body + 1);
        ss[i].t0 = now() - t0;
        for (j = 0; j < len; j += (size_t) got) {
            got = send(ss[i].fd, req + j, len - j, MSG_NOSIGNAL);
            if (got <= 0) {
                perror("send");
                return 1;
            }
        }
        ev.events = EPOLLIN;
        ev.data.u32 = (uint32_t) i;
        if (epoll_ctl(ep, EPOLL_CTL_ADD, ss[i].fd, &ev) != 0) {
            perror("epoll_ctl");
            return 1;
        }
    }
    for (left = n; left > 0; ) {
        k = epoll_wait(ep, evs, 64, 120000);
        if (k <= 0) {
            if (k < 0 && errno == EINTR) {
                continue;
            }
            fprintf(stderr, "chat_load: no progress for 120 s\n");
            rc = 1;
            break;
        }
        for (i = 0; i < k; i++) {
            stream_t *s = &ss[evs[i].data.u32];
            double    t;

            got = read(s->fd, buf, sizeof(buf));
            if (got < 0 && (errno == EAGAIN || errno == EINTR)) {
                continue;
            }
            t = now() - t0;
            if (got > 0) {
                append(&s->raw, &s->raw_len, &s->raw_cap, buf, (size_t) got);
                on_bytes(s, t);
            }
            if (got <= 0 || s->done) {
                if (s->end == 0.0) {
                    s->end = t;
                }
                epoll_ctl(ep, EPOLL_CTL_DEL, s->fd, NULL);
                close(s->fd);
                s->closed = 1;
                left--;
            }
        }
    }
    for (i = 0; i < n; i++) {
        stream_t *s = &ss[i];

        printf("stream %d %d %.6f %.6f %d %d %s", i, s->status,
               (s->first > 0.0 ? s->first : s->end) - s->t0, s->end,
               s->completion, s->prompt, s->finish[0] ? s->finish : "-");
        for (j = 0; j < s->ngaps; j++) {
            printf(" %.6f", s->gaps[j]);
        }
        printf("\n");
        rc |= !s->done;
    }
    getrusage(RUSAGE_SELF, &ru);
    printf("cpu %.3f %.3f\n",
           (double) ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6,
           (double) ru.ru_stime.tv_sec + ru.ru_stime.tv_usec * 1e-6);
    return rc;
}

/*
 * test_ratelimit.c: the `cinematch_rate_limit` argument parser and the
 * token bucket with an injected clock: exact counts across a burst, refill
 * timing to the millisecond, and the Redis Lua script giving the same
 * answer as the C bucket at every step (against a throwaway redis-server
 * on a free loopback port, skipped when redis-server is not installed).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include <hiredis/hiredis.h>

#include "cinematch/common.h"
#include "cinematch/ratelimit.h"


static cm_ratelimit_t
rl_of(const char *s)
{
    cm_ratelimit_t  rl;
    char            err[256];

    if (cm_ratelimit_parse(&rl, s, strlen(s), err, sizeof(err)) != 0) {
        fail_msg("parse \"%s\": %s", s, err);
    }
    return rl;
}


static void
test_parse_directive_arguments(void **state)
{
    cm_ratelimit_t  rl;

    rl = rl_of("100r/m burst=20");
    assert_int_equal(rl.rate, 100);
    assert_int_equal(rl.period_ms, 60000);
    assert_int_equal(rl.burst, 20);
    assert_int_equal(rl.cost, 60000);
    assert_int_equal(rl.refill, 100);
    assert_int_equal(rl.capacity, 1200000);

    rl = rl_of("10r/s");
    assert_int_equal(rl.period_ms, 1000);
    assert_int_equal(rl.burst, 1);           /* no burst: one at a time */
    rl = rl_of("  5r/h   burst=0 ");
    assert_int_equal(rl.period_ms, 3600000);
    assert_int_equal(rl.burst, 1);
    rl = rl_of("burst=7 60r/m");
    assert_int_equal(rl.burst, 7);
    rl = rl_of("1000000r/s burst=100000");
    assert_int_equal(rl.capacity, 100000ull * 1000);
}


static void
test_parse_rejects_bad_arguments_with_reasons(void **state)
{
    cm_ratelimit_t  rl;
    char            err[256];
    size_t          i;
    const char     *bad[] = {
        "", "   ", "burst=5", "100", "100r", "100r/", "100r/x", "100r/mx",
        "100r/m burst=", "100r/m burst=x", "100r/m burst=20 burst=3",
        "0r/s", "-1r/s", "100r/m nodelay", "99999999r/s", "1000001r/s",
        "100r/m burst=100001", "100r/m 5r/s", "100 r/m", "100r/m,burst=2",
    };

    for (i = 0; i < CM_ARRAY_SIZE(bad); i++) {
        err[0] = '\0';
        if (cm_ratelimit_parse(&rl, bad[i], strlen(bad[i]), err,
                               sizeof(err)) != CM_EINVAL)
        {
            fail_msg("accepted \"%s\"", bad[i]);
        }
        assert_true(strncmp(err, "rate limit: ", 12) == 0);
    }
}


static void
test_burst_admits_exactly_burst_requests_at_once(void **state)
{
    cm_ratelimit_t         rl = rl_of("100r/m burst=20");
    cm_tbucket_t           b = { 0, 0, 0 };
    cm_ratelimit_result_t  r;
    int                    i, allowed = 0;

    for (i = 0; i < 50; i++) {
        cm_tbucket_take(&rl, &b, 1000000, &r);
        if (r.allowed) {
            allowed++;
            assert_int_equal(r.remaining, 19 - i);
            assert_int_equal(r.retry_ms, 0);
        } else {
            assert_int_equal(r.remaining, 0);
            assert_int_equal(r.retry_ms, 600);   /* one token: 60000/100 */
        }
        assert_int_equal(r.limit, 20);
    }
    assert_int_equal(allowed, 20);
    /* empty: full again after 20 * 600 ms */
    assert_int_equal(r.reset_ms, 12000);
}


static void
test_refill_is_exact_to_the_millisecond(void **state)
{
    cm_ratelimit_t         rl = rl_of("100r/m burst=20");
    cm_tbucket_t           b = { 0, 0, 0 };
    cm_ratelimit_result_t  r;
    int                    i;

    for (i = 0; i < 20; i++) {
        cm_tbucket_take(&rl, &b, 0, &r);
        assert_true(r.allowed);
    }
    cm_tbucket_take(&rl, &b, 599, &r);
    assert_false(r.allowed);
    assert_int_equal(r.retry_ms, 1);
    cm_tbucket_take(&rl, &b, 600, &r);
    assert_true(r.allowed);
    assert_int_equal(r.remaining, 0);
    cm_tbucket_take(&rl, &b, 600, &r);
    assert_false(r.allowed);
    assert_int_equal(r.retry_ms, 600);

    /* idle long enough to fill, then exactly 20 again */
    for (i = 0; i < 25; i++) {
        cm_tbucket_take(&rl, &b, 600 + 12000, &r);
        assert_int_equal(r.allowed, i < 20);
    }

    /* one request from full: reset is one token's time */
    memset(&b, 0, sizeof(b));
    cm_tbucket_take(&rl, &b, 5, &r);
    assert_int_equal(r.remaining, 19);
    assert_int_equal(r.reset_ms, 600);
}


static void
test_sustained_rate_over_a_minute(void **state)
{
    cm_ratelimit_t         rl = rl_of("100r/m burst=20");
    cm_tbucket_t           b = { 0, 0, 0 };
    cm_ratelimit_result_t  r;
    uint64_t               t;
    int                    allowed = 0;

    /* a request every 10 ms for 60 s: the burst of 20 plus one token per
     * 600 ms accrued by t = 59990 (99 whole tokens) */
    for (t = 0; t < 60000; t += 10) {
        cm_tbucket_take(&rl, &b, t, &r);
        allowed += r.allowed;
    }
    assert_int_equal(allowed, 20 + 99);

    /* 10r/s without burst: exactly one per 100 ms */
    rl = rl_of("10r/s");
    memset(&b, 0, sizeof(b));
    allowed = 0;
    for (t = 0; t < 1000; t++) {
        cm_tbucket_take(&rl, &b, t, &r);
        allowed += r.allowed;
    }
    assert_int_equal(allowed, 10);
}


static void
test_clock_going_backwards_neither_refills_nor_breaks(void **state)
{
    cm_ratelimit_t         rl = rl_of("60r/m burst=2");
    cm_tbucket_t           b = { 0, 0, 0 };
    cm_ratelimit_result_t  r;

    cm_tbucket_take(&rl, &b, 10000, &r);
    cm_tbucket_take(&rl, &b, 10000, &r);
    assert_true(r.allowed);
    cm_tbucket_take(&rl, &b, 5000, &r);
    assert_false(r.allowed);
    assert_int_equal(r.retry_ms, 1000);
    cm_tbucket_take(&rl, &b, 11000, &r);
    assert_true(r.allowed);

    /* an enormous gap fills the bucket without overflow */
    cm_tbucket_take(&rl, &b, UINT64_MAX / 2, &r);
    assert_true(r.allowed);
    assert_int_equal(r.remaining, 1);
}


static void
test_lowered_limit_clamps_a_fuller_bucket(void **state)
{
    cm_ratelimit_t         big = rl_of("100r/m burst=50");
    cm_ratelimit_t         small = rl_of("100r/m burst=5");
    cm_tbucket_t           b = { 0, 0, 0 };
    cm_ratelimit_result_t  r;

    cm_tbucket_take(&big, &b, 0, &r);
    assert_int_equal(r.remaining, 49);
    cm_tbucket_take(&small, &b, 0, &r);     /* after a config reload */
    assert_int_equal(r.remaining, 4);
}


/* ---- the Lua script against a real redis-server ---- */

typedef struct {
    pid_t          pid;
    redisContext  *c;
    char           sha[64];
} redis_fx_t;


static int
free_port(void)
{
    struct sockaddr_in  a;
    socklen_t           len = sizeof(a);
    int                 fd, port;

    fd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&a, 0, sizeof(a));
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (fd < 0 || bind(fd, (struct sockaddr *) &a, sizeof(a)) != 0
        || getsockname(fd, (struct sockaddr *) &a, &len) != 0)
    {
        if (fd >= 0) {
            close(fd);
        }
        return -1;
    }
    port = ntohs(a.sin_port);
    close(fd);
    return port;
}


static int
redis_start(redis_fx_t *fx)
{
    char             port_s[16];
    int              port, i;
    struct timespec  ts = { 0, 20 * 1000 * 1000 };
    redisReply      *rep;

    if (access("/usr/bin/redis-server", X_OK) != 0) {
        return -1;
    }
    port = free_port();
    if (port < 0) {
        return -1;
    }
    snprintf(port_s, sizeof(port_s), "%d", port);
    fx->pid = fork();
    if (fx->pid == 0) {
        int devnull = open("/dev/null", O_WRONLY);

        if (devnull >= 0) {
            dup2(devnull, 1);
            dup2(devnull, 2);
        }
        execl("/usr/bin/redis-server", "redis-server", "--port", port_s,
              "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
              "--daemonize", "no", "--dir", "/tmp", (char *) NULL);
        _exit(127);
    }
    if (fx->pid < 0) {
        return -1;
    }
    for (i = 0; i < 150; i++) {          /* up to 3 s */
        fx->c = redisConnect("127.0.0.1", port);
        if (fx->c != NULL && fx->c->err == 0) {
            rep = redisCommand(fx->c, "PING");
            if (rep != NULL) {
                freeReplyObject(rep);
                break;
            }
        }
        if (fx->c != NULL) {
            redisFree(fx->c);
            fx->c = NULL;
        }
        nanosleep(&ts, NULL);
    }
    if (fx->c == NULL) {
        return -1;
    }
    rep = redisCommand(fx->c, "SCRIPT LOAD %s", cm_ratelimit_lua);
    if (rep == NULL || rep->type != REDIS_REPLY_STRING) {
        if (rep != NULL) {
            fprintf(stderr, "SCRIPT LOAD: %s\n", rep->str);
            freeReplyObject(rep);
        }
        return -1;
    }
    snprintf(fx->sha, sizeof(fx->sha), "%s", rep->str);
    freeReplyObject(rep);
    return 0;
}


static void
redis_stop(redis_fx_t *fx)
{
    if (fx->c != NULL) {
        redisFree(fx->c);
    }
    if (fx->pid > 0) {
        kill(fx->pid, SIGTERM);
        waitpid(fx->pid, NULL, 0);
        fx->pid = 0;
    }
    fx->c = NULL;
}


static void
redis_take(redis_fx_t *fx, const char *key, const cm_ratelimit_t *rl,
    uint64_t now, cm_ratelimit_result_t *res)
{
    char          a[3][24], now_s[24];
    redisReply   *rep;

    cm_ratelimit_argv(rl, a);
    snprintf(now_s, sizeof(now_s), "%llu", (unsigned long long) now);
    rep = redisCommand(fx->c, "EVALSHA %s 1 %s %s %s %s %s", fx->sha, key,
                       a[0], a[1], a[2], now_s);
    assert_non_null(rep);
    if (rep->type != REDIS_REPLY_ARRAY) {
        fail_msg("EVALSHA: %s", rep->type == REDIS_REPLY_ERROR ? rep->str
                                                               : "?");
    }
    assert_int_equal(rep->elements, 4);
    res->allowed = (int) rep->element[0]->integer;
    res->remaining = (uint64_t) rep->element[1]->integer;
    res->retry_ms = (uint64_t) rep->element[2]->integer;
    res->reset_ms = (uint64_t) rep->element[3]->integer;
    freeReplyObject(rep);
}


static int
redis_setup(void **state)
{
    redis_fx_t  *fx = calloc(1, sizeof(*fx));

    if (fx == NULL) {
        return -1;
    }
    if (redis_start(fx) != 0) {
        redis_stop(fx);
        memset(fx, 0, sizeof(*fx));
    }
    *state = fx;
    return 0;
}


/* runs even when the test failed, so no redis-server is left behind */
static int
redis_teardown(void **state)
{
    redis_fx_t  *fx = *state;

    redis_stop(fx);
    free(fx);
    return 0;
}


static void
test_lua_script_matches_c_bucket_step_by_step(void **state)
{
    redis_fx_t            *fxp = *state;
    const char            *cfgs[] = { "100r/m burst=20", "10r/s", "7r/s burst=3",
                                      "5r/h burst=100", "1000000r/s burst=100000",
                                      "1r/h" };
    size_t                 i, step;
    uint64_t               now, seed = 88172645463325252ull;
    cm_ratelimit_t         rl;
    cm_tbucket_t           b;
    cm_ratelimit_result_t  rc, rr;
    char                   key[32];
    redisReply            *rep;
    int                    allowed = 0;

    if (fxp->c == NULL) {
        fprintf(stderr, "redis-server not usable: Lua comparison skipped\n");
        skip();
    }

    for (i = 0; i < CM_ARRAY_SIZE(cfgs); i++) {
        rl = rl_of(cfgs[i]);
        memset(&b, 0, sizeof(b));
        snprintf(key, sizeof(key), "cm:rl:test:%zu", i);
        now = 1767225600000ull;
        for (step = 0; step < 400; step++) {
            /* xorshift: bursts (0 ms), small and large gaps, and now and
             * then a step backwards */
            seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
            switch (seed % 6) {
            case 0: case 1: break;
            case 2: now += seed % 50; break;
            case 3: now += seed % 2000; break;
            case 4: now += seed % 200000; break;
            default: now -= seed % 30; break;
            }
            cm_tbucket_take(&rl, &b, now, &rc);
            redis_take(fxp, key, &rl, now, &rr);
            if (rc.allowed != rr.allowed || rc.remaining != rr.remaining
                || rc.retry_ms != rr.retry_ms || rc.reset_ms != rr.reset_ms)
            {
                fail_msg("%s step %zu at %llu: C {%d,%llu,%llu,%llu} Lua "
                         "{%d,%llu,%llu,%llu}", cfgs[i], step,
                         (unsigned long long) now, rc.allowed,
                         (unsigned long long) rc.remaining,
                         (unsigned long long) rc.retry_ms,
                         (unsigned long long) rc.reset_ms, rr.allowed,
                         (unsigned long long) rr.remaining,
                         (unsigned long long) rr.retry_ms,
                         (unsigned long long) rr.reset_ms);
            }
            allowed += rr.allowed;
        }
    }
    assert_true(allowed > 0);

    /* the key expires once the bucket would be full again */
    rep = redisCommand(fxp->c, "PTTL cm:rl:test:0");
    assert_non_null(rep);
    assert_true(rep->integer > 0 && rep->integer <= 12000 + 1000);
    freeReplyObject(rep);

    /* without now_ms the script uses Redis' TIME */
    rep = redisCommand(fxp->c, "EVAL %s 1 cm:rl:time 1200000 100 60000",
                       cm_ratelimit_lua);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    assert_int_equal(rep->element[0]->integer, 1);
    assert_int_equal(rep->element[1]->integer, 19);
    freeReplyObject(rep);

    /* bad arguments are an error reply, not a broken bucket */
    rep = redisCommand(fxp->c, "EVAL %s 1 cm:rl:bad 10 0 60000",
                       cm_ratelimit_lua);
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_ERROR);
    freeReplyObject(rep);
}


/* one EVALSHA for a batch gives what the C bucket gives taking the same
 * checks one by one, in order, across several buckets at once: runs of
 * identical checks go as one group with a count, and replaying the count
 * on the state the script answers gives each check's exact answer */
static void
test_batch_script_matches_c_buckets_taken_in_order(void **state)
{
    redis_fx_t            *fxp = *state;
    const char            *cfgs[] = { "100r/m burst=20", "7r/s burst=3",
                                      "1r/h" };
    cm_ratelimit_t         rl[3];
    cm_tbucket_t           b[3];
    cm_ratelimit_result_t  rc;
    char                   keys[3][32], args[3][3][24], nowbuf[24];
    char                   numkeys[8], counts[8][8];
    const char            *argv[4 + 8 * 8];
    size_t                 argvlen[4 + 8 * 8];
    size_t                 i, k, n, g, ng, step, a, start[8], cnt[8];
    uint64_t               t0, ts0;
    uint64_t               now = 1767225600000ull;
    uint64_t               seed = 88172645463325252ull;
    int                    which[8], allowed = 0;
    redisReply            *rep;

    if (fxp->c == NULL) {
        fprintf(stderr, "redis-server not usable: Lua comparison skipped\n");
        skip();
    }

    for (i = 0; i < 3; i++) {
        rl[i] = rl_of(cfgs[i]);
        memset(&b[i], 0, sizeof(b[i]));
        snprintf(keys[i], sizeof(keys[i]), "cm:rl:batch:%zu", i);
        cm_ratelimit_argv(&rl[i], args[i]);
    }

    for (step = 0; step < 300; step++) {
        seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
        n = 1 + seed % 8;                     /* entries in this batch */
        now += (seed >> 8) % 3 == 0 ? (seed >> 16) % 3000 : 0;

        /* n checks on 3 buckets, often the same one in a row (two
         * bits of seed per check), grouped into runs */
        ng = 0;
        for (k = 0; k < n; k++) {
            which[k] = (int) ((seed >> (2 * k + 20)) % 4);
            if (which[k] == 3) {
                which[k] = k ? which[k - 1] : 0;
            }
            if (k == 0 || which[k] != which[k - 1]) {
                start[ng] = k;
                cnt[ng++] = 1;
            } else {
                cnt[ng - 1]++;
            }
        }

        a = 0;
        argv[a++] = "EVAL";
        argv[a++] = cm_ratelimit_batch_lua;
        argv[a++] = NULL;                     /* numkeys, below */
        for (g = 0; g < ng; g++) {
            argv[a++] = keys[which[start[g]]];
            argv[a++] = "";
            argv[a++] = "";
        }
        for (g = 0; g < ng; g++) {
            for (i = 0; i < 3; i++) {
                argv[a++] = args[which[start[g]]][i];
            }
            argv[a++] = "";
            snprintf(counts[g], sizeof(counts[g]), "%zu", cnt[g]);
            argv[a++] = counts[g];
        }
        snprintf(nowbuf, sizeof(nowbuf), "%llu", (unsigned long long) now);
        argv[a++] = nowbuf;

        snprintf(numkeys, sizeof(numkeys), "%zu", 3 * ng);
        argv[2] = numkeys;
        for (i = 0; i < a; i++) {
            argvlen[i] = strlen(argv[i]);
        }

        rep = redisCommandArgv(fxp->c, (int) a, argv, argvlen);
        assert_non_null(rep);
        assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
        assert_int_equal(rep->elements, 4 * ng);

        for (g = 0; g < ng; g++) {
            cm_tbucket_t  replay;
            cm_ratelimit_result_t  rr;

            k = start[g];
            /* the state the group starts from is the C bucket's */
            t0 = b[which[k]].init ? b[which[k]].tokens : rl[which[k]].capacity;
            ts0 = b[which[k]].init ? b[which[k]].ts_ms : now;
            assert_int_equal(rep->element[4 * g]->integer, 1);
            assert_int_equal(rep->element[4 * g + 1]->integer, t0);
            assert_int_equal(rep->element[4 * g + 2]->integer, ts0);
            assert_int_equal(rep->element[4 * g + 3]->integer, now);

            /* the caller's replay answers what single takes answer */
            replay.tokens = (uint64_t) rep->element[4 * g + 1]->integer;
            replay.ts_ms = (uint64_t) rep->element[4 * g + 2]->integer;
            replay.init = 1;
            for (i = 0; i < cnt[g]; i++) {
                cm_tbucket_take(&rl[which[k]], &b[which[k]], now, &rc);
                cm_tbucket_take(&rl[which[k]], &replay,
                                (uint64_t) rep->element[4 * g + 3]->integer,
                                &rr);
                assert_int_equal(rr.allowed, rc.allowed);
                assert_int_equal(rr.remaining, rc.remaining);
                assert_int_equal(rr.retry_ms, rc.retry_ms);
                assert_int_equal(rr.reset_ms, rc.reset_ms);
                allowed += rc.allowed;
            }
        }
        freeReplyObject(rep);
    }
    assert_true(allowed > 0);

    /* a denylisted entry is refused without touching its bucket; the
     * others in the batch are taken as usual */
    rep = redisCommand(fxp->c, "SET cm:deny:j1 1");
    freeReplyObject(rep);
    rep = redisCommand(fxp->c, "EVAL %s 6 cm:rl:batch:d cm:deny:j1 %s "
                       "cm:rl:batch:d %s %s 1200000 100 60000 %s 1 "
                       "1200000 100 60000 %s 1",
                       cm_ratelimit_batch_lua, "", "", "", "", "");
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    assert_int_equal(rep->elements, 8);
    assert_int_equal(rep->element[0]->integer, -1);
    assert_int_equal(rep->element[4]->integer, 1);
    assert_int_equal(rep->element[5]->integer, 1200000);   /* full */
    freeReplyObject(rep);
    rep = redisCommand(fxp->c, "HGET cm:rl:batch:d t");
    assert_string_equal(rep->str, "1140000");               /* one take */
    freeReplyObject(rep);

    /* bad arguments anywhere: an error, and no bucket changed */
    rep = redisCommand(fxp->c, "EVAL %s 6 cm:rl:batch:e %s %s "
                       "cm:rl:batch:f %s %s 1200000 100 60000 %s 1 "
                       "10 0 60000 %s 1",
                       cm_ratelimit_batch_lua, "", "", "", "", "", "");
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_ERROR);
    freeReplyObject(rep);
    rep = redisCommand(fxp->c, "EXISTS cm:rl:batch:e");
    assert_int_equal(rep->integer, 0);
    freeReplyObject(rep);

    /* a not-before key without a number for iat: an error, no change */
    rep = redisCommand(fxp->c, "EVAL %s 3 cm:rl:batch:e %s cm:nbf:u1 "
                       "1200000 100 60000 %s 1",
                       cm_ratelimit_batch_lua, "", "");
    assert_int_equal(rep->type, REDIS_REPLY_ERROR);
    freeReplyObject(rep);
    /* a count that is not a positive integer: an error, no change */
    rep = redisCommand(fxp->c, "EVAL %s 3 cm:rl:batch:e %s %s "
                       "1200000 100 60000 %s 1.5",
                       cm_ratelimit_batch_lua, "", "", "");
    assert_int_equal(rep->type, REDIS_REPLY_ERROR);
    freeReplyObject(rep);
    rep = redisCommand(fxp->c, "EXISTS cm:rl:batch:e");
    assert_int_equal(rep->integer, 0);
    freeReplyObject(rep);

    /* key count not a multiple of three */
    rep = redisCommand(fxp->c, "EVAL %s 2 cm:rl:batch:e %s "
                       "1200000 100 60000 %s 1",
                       cm_ratelimit_batch_lua, "", "");
    assert_int_equal(rep->type, REDIS_REPLY_ERROR);
    freeReplyObject(rep);
}


/* "tokens not before": an entry whose token was issued before the time in
 * its not-before key is refused like a denylisted one (its bucket
 * untouched); issued at or after that second, or no such key: taken */
static void
test_batch_script_refuses_tokens_issued_before_not_before(void **state)
{
    redis_fx_t  *fxp = *state;
    redisReply  *rep;

    if (fxp->c == NULL) {
        fprintf(stderr, "redis-server not usable: Lua comparison skipped\n");
        skip();
    }

    rep = redisCommand(fxp->c, "SET cm:nbf:u7 1767225600");
    freeReplyObject(rep);

    /* issued a second before, the same second, after; another user with
     * no key; the same bucket for the first three */
    rep = redisCommand(fxp->c, "EVAL %s 12 "
                       "cm:rl:nbf:a %s cm:nbf:u7 "
                       "cm:rl:nbf:a %s cm:nbf:u7 "
                       "cm:rl:nbf:a %s cm:nbf:u7 "
                       "cm:rl:nbf:b %s cm:nbf:u8 "
                       "1200000 100 60000 1767225599 2 "
                       "1200000 100 60000 1767225600 3 "
                       "1200000 100 60000 1767225601 1 "
                       "1200000 100 60000 1 1 1767225600000",
                       cm_ratelimit_batch_lua, "", "", "", "");
    assert_non_null(rep);
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    assert_int_equal(rep->elements, 16);
    assert_int_equal(rep->element[0]->integer, -1);         /* 2 refused */
    assert_int_equal(rep->element[4]->integer, 1);
    assert_int_equal(rep->element[5]->integer, 1200000);    /* a: new */
    assert_int_equal(rep->element[8]->integer, 1);
    assert_int_equal(rep->element[9]->integer, 1020000);    /* a: 3 taken */
    assert_int_equal(rep->element[12]->integer, 1);
    assert_int_equal(rep->element[13]->integer, 1200000);   /* b: no key */
    freeReplyObject(rep);
    rep = redisCommand(fxp->c, "HGET cm:rl:nbf:a t");
    assert_string_equal(rep->str, "960000");                /* 4 taken */
    freeReplyObject(rep);

    /* both keys given, the denylist one absent (one MGET reads both):
     * not-before alone decides */
    rep = redisCommand(fxp->c, "EVAL %s 6 cm:rl:nbf:d cm:deny:none cm:nbf:u7 "
                       "cm:rl:nbf:d cm:deny:none2 cm:nbf:u7 "
                       "1200000 100 60000 1767225599 1 "
                       "1200000 100 60000 1767225600 1",
                       cm_ratelimit_batch_lua);
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    assert_int_equal(rep->element[0]->integer, -1);
    assert_int_equal(rep->element[4]->integer, 1);
    freeReplyObject(rep);

    /* denylist and not-before on one entry: refused */
    rep = redisCommand(fxp->c, "SET cm:deny:j9 1");
    freeReplyObject(rep);
    rep = redisCommand(fxp->c, "EVAL %s 3 cm:rl:nbf:c cm:deny:j9 cm:nbf:u7 "
                       "1200000 100 60000 1767225700 1",
                       cm_ratelimit_batch_lua);
    assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
    assert_int_equal(rep->element[0]->integer, -1);
    freeReplyObject(rep);
    rep = redisCommand(fxp->c, "EXISTS cm:rl:nbf:c");
    assert_int_equal(rep->integer, 0);
    freeReplyObject(rep);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_directive_arguments),
        cmocka_unit_test(test_parse_rejects_bad_arguments_with_reasons),
        cmocka_unit_test(test_burst_admits_exactly_burst_requests_at_once),
        cmocka_unit_test(test_refill_is_exact_to_the_millisecond),
        cmocka_unit_test(test_sustained_rate_over_a_minute),
        cmocka_unit_test(test_clock_going_backwards_neither_refills_nor_breaks),
        cmocka_unit_test(test_lowered_limit_clamps_a_fuller_bucket),
        cmocka_unit_test_setup_teardown(
            test_lua_script_matches_c_bucket_step_by_step, redis_setup,
            redis_teardown),
        cmocka_unit_test_setup_teardown(
            test_batch_script_matches_c_buckets_taken_in_order, redis_setup,
            redis_teardown),
        cmocka_unit_test_setup_teardown(
            test_batch_script_refuses_tokens_issued_before_not_before,
            redis_setup, redis_teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

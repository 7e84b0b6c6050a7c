/*
 * cinematch/ratelimit.h: token buckets, one per identity, with the same
 * integer math in two places: a Redis Lua script (shared by every nginx
 * node) and plain C (the local fallback when Redis is down, and the
 * reference the script is tested against).
 *
 * Units.  A rate of R requests per period P ms is kept exact in integers
 * by measuring tokens in units of 1/P: one request costs P units, each
 * millisecond adds R units, a full bucket holds burst * P units.  So
 * 100r/m burst=20 is cost 60000, refill 100 units/ms (one request per
 * 600 ms), capacity 1,200,000.  The parser bounds rate and burst so every
 * value stays below 2^53 (exact in the doubles Redis' Lua uses).
 *
 * Semantics.  A fresh bucket is full: `burst` requests pass at once, then
 * one per P/R ms.  burst=0 (or absent) means a capacity of one request.
 * Time that runs backwards (another node's clock in the fallback, NTP)
 * refills nothing and never drains.
 */
#ifndef CINEMATCH_RATELIMIT_H
#define CINEMATCH_RATELIMIT_H

#include <stddef.h>
#include <stdint.h>

#define CM_RATELIMIT_MAX_RATE   1000000   /* requests per period */
#define CM_RATELIMIT_MAX_BURST  100000

typedef struct {
    uint64_t  rate;        /* R: requests per period */
    uint64_t  period_ms;   /* P: 1000 (r/s), 60000 (r/m), 3600000 (r/h) */
    uint64_t  burst;       /* requests a full bucket holds (>= 1) */

    /* derived, in units (see above) */
    uint64_t  cost;        /* P */
    uint64_t  refill;      /* R per ms */
    uint64_t  capacity;    /* burst * P */

    /* the script's ARGV (capacity, refill, cost) as decimal strings, made
     * once here rather than with snprintf on every request */
    char      argv[3][24];
} cm_ratelimit_t;

typedef struct {
    uint64_t  tokens;      /* units */
    uint64_t  ts_ms;       /* time of the last refill */
    int       init;        /* 0: never used, starts full */
} cm_tbucket_t;

typedef struct {
    int       allowed;     /* 1: pass, 0: 429 */
    uint64_t  remaining;   /* whole requests left after this one */
    uint64_t  retry_ms;    /* when denied: ms until one request fits */
    uint64_t  reset_ms;    /* ms until the bucket is full again */
    uint64_t  limit;       /* burst, for X-RateLimit-Limit */
} cm_ratelimit_result_t;

/*
 * The Lua script.  KEYS[1] = bucket key (e.g. "cm:rl:<zone>:<identity>");
 * ARGV = capacity, refill, cost (units, as above), now_ms (optional: when
 * absent or empty the script uses Redis' own TIME, so nodes with skewed
 * clocks still share one timeline).  Returns {allowed, remaining,
 * retry_ms, reset_ms}.  The key expires once the bucket would be full.
 * Load it once with SCRIPT LOAD and call EVALSHA (fall back to EVAL on
 * NOSCRIPT).
 */
extern const char cm_ratelimit_lua[];

/*
 * The same for N groups of checks in one call (one round trip, one script
 * run).  A group is `count` identical checks in a row (same bucket, keys,
 * limits and iat).  KEYS = bucket_1, deny_1, nbf_1, ..., bucket_N, deny_N,
 * nbf_N where deny_i is a key whose existence refuses group i without
 * touching its bucket (a logout denylist entry) or "" for none, and nbf_i
 * a key holding a unix time before which credentials are no longer
 * accepted (set by a password reset: "tokens not before") or "" for none;
 * ARGV = capacity_i, refill_i, cost_i, iat_i, count_i for each i (iat_i:
 * when group i's token was issued, unix seconds; "" when nbf_i is ""),
 * then an optional now_ms.  Group i is refused when deny_i exists or
 * iat_i < GET nbf_i.  Returns 4N integers: per group {1, tokens, ts_ms,
 * now_ms}, the bucket state the group started from (a new bucket: full at
 * now) and the call's time, or {-1, 0, 0, 0} when refused.  The caller
 * gets each check's {allowed, remaining, retry_ms, reset_ms} by running
 * cm_tbucket_take(rl, {tokens, ts_ms, init = 1}, now_ms) count_i times:
 * exactly what N single-script calls in the same order answer, and the
 * bucket ends in the same state.  Bad arguments anywhere: an error reply,
 * nothing changed.
 */
extern const char cm_ratelimit_batch_lua[];

/*
 * Parse the directive arguments, e.g. "100r/m burst=20" (also r/s, r/h;
 * "burst=" optional).  Returns 0, or CM_EINVAL with a reason in err.
 */
int cm_ratelimit_parse(cm_ratelimit_t *rl, const char *s, size_t len,
    char *err, size_t errlen);

/* Fill the derived fields from rate, period_ms, burst. */
int cm_ratelimit_init(cm_ratelimit_t *rl, uint64_t rate, uint64_t period_ms,
    uint64_t burst);

/* Take one request from the bucket at now_ms: the C twin of the script. */
void cm_tbucket_take(const cm_ratelimit_t *rl, cm_tbucket_t *b,
    uint64_t now_ms, cm_ratelimit_result_t *res);

/* The script's ARGV for rl (capacity, refill, cost), as decimal strings
 * in bufs[3][24]. */
void cm_ratelimit_argv(const cm_ratelimit_t *rl, char bufs[3][24]);

#endif /* CINEMATCH_RATELIMIT_H */

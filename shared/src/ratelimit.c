/*
 * ratelimit.c: the token bucket, as a Redis Lua script and in C.
 *
 * The two must agree to the unit; tests/unit/test_ratelimit.c runs the
 * same request sequences through both (the script against a throwaway
 * redis-server when one is installed).  Lua 5.1 numbers are doubles, so
 * every division in the script is corrected to the exact integer result
 * (idiv) rather than trusting math.floor(a / b).
 */
#include <stdio.h>
#include <string.h>

#include "cinematch/common.h"
#include "cinematch/ratelimit.h"


const char cm_ratelimit_lua[] =
    "local cap = tonumber(ARGV[1])\n"
    "local refill = tonumber(ARGV[2])\n"
    "local cost = tonumber(ARGV[3])\n"
    "if not cap or not refill or not cost or refill < 1 or cost < 1\n"
    "   or cap < cost then\n"
    "  return redis.error_reply('cm_ratelimit: bad arguments')\n"
    "end\n"
    "local now = tonumber(ARGV[4])\n"
    "if not now then\n"
    "  local t = redis.call('TIME')\n"
    "  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "end\n"
    "local function idiv(a, b)\n"
    "  local q = math.floor(a / b)\n"
    "  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end\n"
    "  return q\n"
    "end\n"
    "local function cdiv(a, b) return idiv(a + b - 1, b) end\n"
    "local st = redis.call('HMGET', KEYS[1], 't', 'ts')\n"
    "local tokens = tonumber(st[1])\n"
    "local ts = tonumber(st[2])\n"
    "if not tokens or not ts then\n"
    "  tokens = cap\n"
    "  ts = now\n"
    "end\n"
    "if tokens > cap then tokens = cap end\n"
    "if now > ts then\n"
    "  local el = now - ts\n"
    "  if el >= cdiv(cap, refill) then\n"
    "    tokens = cap\n"
    "  else\n"
    "    tokens = tokens + el * refill\n"
    "    if tokens > cap then tokens = cap end\n"
    "  end\n"
    "  ts = now\n"
    "end\n"
    "local allowed = 0\n"
    "local retry = 0\n"
    "if tokens >= cost then\n"
    "  tokens = tokens - cost\n"
    "  allowed = 1\n"
    "else\n"
    "  retry = cdiv(cost - tokens, refill)\n"
    "end\n"
    "local reset = cdiv(cap - tokens, refill)\n"
    "redis.call('HSET', KEYS[1], 't', string.format('%d', tokens),\n"
    "           'ts', string.format('%d', ts))\n"
    "redis.call('PEXPIRE', KEYS[1], reset + 1000)\n"
    "return {allowed, idiv(tokens, cost), retry, reset}\n";


/*
 * The batch: one call takes from N buckets in order, each exactly as the
 * single script would (the same math, one TIME for all).  An entry is a
 * group of `count` identical checks in a row (a caller on several
 * connections): KEYS come in triples (bucket, denylist key or "",
 * not-before key or ""), ARGV in quintuples (capacity, refill, cost, iat
 * or "", count), then an optional now_ms.  Everything is checked before
 * any bucket changes, so a bad call changes nothing.  Each entry answers
 * the bucket state its group started from (tokens, ts) and now; the caller
 * replays the `count` takes on it with cm_tbucket_take(), the C twin, for
 * each check's exact answer, while the script applies them in closed form
 * (one `now` per call: after the first refill no take refills, so k =
 * min(count, tokens / cost) succeed).  A bucket that appears in several
 * entries is read once, carried in Lua and written once at the end, as
 * are the denylist and not-before keys (one MGET for both when new): the
 * same end state and answers as separate calls, fewer Redis commands.  ARGV strings are converted once
 * each (strtod was the top of Redis' profile).
 */
const char cm_ratelimit_batch_lua[] =
    "local n = #KEYS / 3\n"
    "if n < 1 or n ~= math.floor(n)\n"
    "   or (#ARGV ~= 5 * n and #ARGV ~= 5 * n + 1) then\n"
    "  return redis.error_reply('cm_ratelimit_batch: bad arguments')\n"
    "end\n"
    "local memo, caps, refills, costs, iats, counts = {}, {}, {}, {}, {}, {}\n"
    "local function num(s)\n"
    "  local v = memo[s]\n"
    "  if v == nil then v = tonumber(s) or false; memo[s] = v end\n"
    "  return v\n"
    "end\n"
    "for i = 1, n do\n"
    "  local cap = num(ARGV[5 * i - 4])\n"
    "  local refill = num(ARGV[5 * i - 3])\n"
    "  local cost = num(ARGV[5 * i - 2])\n"
    "  local iat = 0\n"
    "  if KEYS[3 * i] ~= '' then iat = num(ARGV[5 * i - 1]) end\n"
    "  local count = num(ARGV[5 * i])\n"
    "  if not cap or not refill or not cost or not iat or not count\n"
    "     or refill < 1 or cost < 1 or cap < cost or count < 1\n"
    "     or count ~= math.floor(count) then\n"
    "    return redis.error_reply('cm_ratelimit_batch: bad arguments')\n"
    "  end\n"
    "  caps[i] = cap; refills[i] = refill; costs[i] = cost; iats[i] = iat\n"
    "  counts[i] = count\n"
    "end\n"
    "local now = tonumber(ARGV[5 * n + 1])\n"
    "if not now then\n"
    "  local t = redis.call('TIME')\n"
    "  now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"
    "end\n"
    "local function idiv(a, b)\n"
    "  local q = math.floor(a / b)\n"
    "  if q * b > a then q = q - 1 elseif (q + 1) * b <= a then q = q + 1 end\n"
    "  return q\n"
    "end\n"
    "local function cdiv(a, b) return idiv(a + b - 1, b) end\n"
    "local out = {}\n"
    "local bt, bts, bttl, order, denied = {}, {}, {}, {}, {}\n"
    "local notbefore = {}\n"
    "for i = 1, n do\n"
    "  local key = KEYS[3 * i - 2]\n"
    "  local deny = KEYS[3 * i - 1]\n"
    "  local nbk = KEYS[3 * i]\n"
    "  local o = 4 * i - 3\n"
    "  if deny ~= '' and nbk ~= '' and denied[deny] == nil\n"
    "     and notbefore[nbk] == nil then\n"
    "    local v = redis.call('MGET', deny, nbk)\n"
    "    denied[deny] = v[1] ~= false\n"
    "    notbefore[nbk] = tonumber(v[2]) or false\n"
    "  end\n"
    "  if deny ~= '' and denied[deny] == nil then\n"
    "    denied[deny] = redis.call('EXISTS', deny) == 1\n"
    "  end\n"
    "  if nbk ~= '' and notbefore[nbk] == nil then\n"
    "    notbefore[nbk] = tonumber(redis.call('GET', nbk)) or false\n"
    "  end\n"
    "  if (deny ~= '' and denied[deny])\n"
    "     or (nbk ~= '' and notbefore[nbk] and iats[i] < notbefore[nbk]) then\n"
    "    out[o] = -1; out[o + 1] = 0; out[o + 2] = 0; out[o + 3] = 0\n"
    "  else\n"
    "    local cap, refill, cost = caps[i], refills[i], costs[i]\n"
    "    local tokens, ts = bt[key], bts[key]\n"
    "    if not tokens then\n"
    "      local st = redis.call('HMGET', key, 't', 'ts')\n"
    "      tokens = tonumber(st[1])\n"
    "      ts = tonumber(st[2])\n"
    "      order[#order + 1] = key\n"
    "    end\n"
    "    if not tokens or not ts then\n"
    "      tokens = cap\n"
    "      ts = now\n"
    "    end\n"
    "    out[o] = 1; out[o + 1] = tokens; out[o + 2] = ts; out[o + 3] = now\n"
    "    if tokens > cap then tokens = cap end\n"
    "    if now > ts then\n"
    "      local el = now - ts\n"
    "      if el >= cdiv(cap, refill) then\n"
    "        tokens = cap\n"
    "      else\n"
    "        tokens = tokens + el * refill\n"
    "        if tokens > cap then tokens = cap end\n"
    "      end\n"
    "      ts = now\n"
    "    end\n"
    "    local k = idiv(tokens, cost)\n"
    "    if k > counts[i] then k = counts[i] end\n"
    "    tokens = tokens - k * cost\n"
    "    bt[key] = tokens; bts[key] = ts\n"
    "    bttl[key] = cdiv(cap - tokens, refill) + 1000\n"
    "  end\n"
    "end\n"
    "for _, key in ipairs(order) do\n"
    "  redis.call('HSET', key, 't', string.format('%d', bt[key]),\n"
    "             'ts', string.format('%d', bts[key]))\n"
    "  redis.call('PEXPIRE', key, bttl[key])\n"
    "end\n"
    "return out\n";


int
cm_ratelimit_init(cm_ratelimit_t *rl, uint64_t rate, uint64_t period_ms,
    uint64_t burst)
{
    if (rate == 0 || rate > CM_RATELIMIT_MAX_RATE
        || (period_ms != 1000 && period_ms != 60000 && period_ms != 3600000)
        || burst > CM_RATELIMIT_MAX_BURST)
    {
        return CM_EINVAL;
    }
    memset(rl, 0, sizeof(*rl));
    rl->rate = rate;
    rl->period_ms = period_ms;
    rl->burst = burst == 0 ? 1 : burst;
    rl->cost = period_ms;
    rl->refill = rate;
    rl->capacity = rl->burst * period_ms;    /* <= 3.6e11 < 2^53 */
    cm_ratelimit_argv(rl, rl->argv);
    return CM_OK;
}


int
cm_ratelimit_parse(cm_ratelimit_t *rl, const char *s, size_t len,
    char *err, size_t errlen)
{
    const char  *p = s, *end = s + len, *w;
    uint64_t     rate = 0, burst = 0, period = 0, *num;
    size_t       digits;
    int          have_rate = 0, have_burst = 0;

    while (p < end) {
        while (p < end && (*p == ' ' || *p == '\t')) {
            p++;
        }
        if (p == end) {
            break;
        }
        w = p;
        if (!have_rate && *p >= '0' && *p <= '9') {
            num = &rate;
        } else if ((size_t) (end - p) >= 6 && memcmp(p, "burst=", 6) == 0
                   && !have_burst)
        {
            p += 6;
            num = &burst;
        } else {
            return cm_seterr(err, errlen, CM_EINVAL,
                             "rate limit: unexpected \"%.*s\" (expected"
                             " \"<N>r/s|r/m|r/h [burst=<N>]\")",
                             (int) (end - w), w);
        }
        *num = 0;
        digits = 0;
        while (p < end && *p >= '0' && *p <= '9') {
            if (++digits > 7) {
                return cm_seterr(err, errlen, CM_EINVAL,
                                 "rate limit: number too large");
            }
            *num = *num * 10 + (uint64_t) (*p++ - '0');
        }
        if (digits == 0) {
            return cm_seterr(err, errlen, CM_EINVAL,
                             "rate limit: \"burst=\" needs a number");
        }
        if (num == &rate) {
            if (end - p < 3 || p[0] != 'r' || p[1] != '/') {
                return cm_seterr(err, errlen, CM_EINVAL,
                                 "rate limit: rate must look like 100r/m");
            }
            switch (p[2]) {
            case 's': period = 1000; break;
            case 'm': period = 60000; break;
            case 'h': period = 3600000; break;
            default:
                return cm_seterr(err, errlen, CM_EINVAL,
                                 "rate limit: unit must be r/s, r/m or r/h");
            }
            p += 3;
            have_rate = 1;
        } else {
            have_burst = 1;
        }
        if (p < end && *p != ' ' && *p != '\t') {
            return cm_seterr(err, errlen, CM_EINVAL,
                             "rate limit: junk after \"%.*s\"",
                             (int) (p - w), w);
        }
    }
    if (!have_rate) {
        return cm_seterr(err, errlen, CM_EINVAL,
                         "rate limit: missing rate (e.g. 100r/m)");
    }
    if (rate == 0 || rate > CM_RATELIMIT_MAX_RATE) {
        return cm_seterr(err, errlen, CM_EINVAL,
                         "rate limit: rate must be 1..%d",
                         CM_RATELIMIT_MAX_RATE);
    }
    if (burst > CM_RATELIMIT_MAX_BURST) {
        return cm_seterr(err, errlen, CM_EINVAL,
                         "rate limit: burst must be 0..%d",
                         CM_RATELIMIT_MAX_BURST);
    }
    return cm_ratelimit_init(rl, rate, period, burst);
}


static uint64_t
cm_cdiv(uint64_t a, uint64_t b)
{
    return (a + b - 1) / b;
}


void
cm_tbucket_take(const cm_ratelimit_t *rl, cm_tbucket_t *b, uint64_t now_ms,
    cm_ratelimit_result_t *res)
{
    uint64_t  el;

    if (!b->init) {
        b->tokens = rl->capacity;
        b->ts_ms = now_ms;
        b->init = 1;
    }
    if (b->tokens > rl->capacity) {
        b->tokens = rl->capacity;     /* the limit was lowered by a reload */
    }
    if (now_ms > b->ts_ms) {
        el = now_ms - b->ts_ms;
        /* once el reaches cdiv(cap, refill) even an empty bucket is full;
         * below that el * refill < cap + refill, so nothing overflows */
        if (el >= cm_cdiv(rl->capacity, rl->refill)) {
            b->tokens = rl->capacity;
        } else {
            b->tokens += el * rl->refill;
            if (b->tokens > rl->capacity) {
                b->tokens = rl->capacity;
            }
        }
        b->ts_ms = now_ms;
    }

    res->limit = rl->burst;
    res->retry_ms = 0;
    if (b->tokens >= rl->cost) {
        b->tokens -= rl->cost;
        res->allowed = 1;
    } else {
        res->allowed = 0;
        res->retry_ms = cm_cdiv(rl->cost - b->tokens, rl->refill);
    }
    res->remaining = b->tokens / rl->cost;
    res->reset_ms = cm_cdiv(rl->capacity - b->tokens, rl->refill);
}


void
cm_ratelimit_argv(const cm_ratelimit_t *rl, char bufs[3][24])
{
    snprintf(bufs[0], 24, "%llu", (unsigned long long) rl->capacity);
    snprintf(bufs[1], 24, "%llu", (unsigned long long) rl->refill);
    snprintf(bufs[2], 24, "%llu", (unsigned long long) rl->cost);
}

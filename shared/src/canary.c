/*
 * canary.c: the stable user split of a canary (see cinematch/canary.h).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/canary.h"
#include "cinematch/common.h"


/*
 * FNV-1a over the model name, a separator and the user id's 8 bytes
 * (little-endian, so every platform agrees), then the splitmix64
 * finaliser: FNV alone leaves consecutive ids in neighbouring buckets,
 * and user ids are consecutive.  The modulo bias of 2^64 mod 10000 is
 * below 1e-15 per bucket.
 */
uint32_t
cm_canary_bucket(const char *model, int64_t user)
{
    uint64_t     h = 0xcbf29ce484222325ull, u = (uint64_t) user;
    const char  *p;
    int          i;

    for (p = model; *p != '\0'; p++) {
        h ^= (uint8_t) *p;
        h *= 0x100000001b3ull;
    }
    h ^= 0xff;      /* "ab"+user never equals "a"+"b..." */
    h *= 0x100000001b3ull;
    for (i = 0; i < 8; i++) {
        h ^= (u >> (8 * i)) & 0xff;
        h *= 0x100000001b3ull;
    }
    h ^= h >> 30;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 27;
    h *= 0x94d049bb133111ebull;
    h ^= h >> 31;
    return (uint32_t) (h % CM_CANARY_BUCKETS);
}


int
cm_canary_routed(const char *model, int64_t user, uint32_t share_bp)
{
    if (user <= 0 || share_bp == 0) {
        return 0;
    }
    return cm_canary_bucket(model, user) < share_bp;
}


int
cm_canary_share_parse(const char *s, size_t len, uint32_t *bp)
{
    char    buf[32], *end;
    double  v;
    size_t  i;

    if (s == NULL || len == 0 || len >= sizeof(buf)) {
        return CM_EINVAL;
    }
    /* plain decimals only: no sign, exponent, hex, inf or spaces */
    for (i = 0; i < len; i++) {
        if ((s[i] < '0' || s[i] > '9') && s[i] != '.') {
            return CM_EINVAL;
        }
    }
    memcpy(buf, s, len);
    buf[len] = '\0';
    v = strtod(buf, &end);
    if (end != buf + len || !(v >= 0.0 && v <= 1.0)) {
        return CM_EINVAL;
    }
    *bp = (uint32_t) lround(v * CM_CANARY_BUCKETS);
    return CM_OK;
}

/*
 * cinematch/rng.h: small deterministic PRNG (xoshiro256**, seeded through
 * splitmix64).  Header-only; the same seed gives the same stream on every
 * platform, which is what makes synth, splits and ALS initialisation
 * reproducible.  Not for anything security-related.
 */
#ifndef CINEMATCH_RNG_H
#define CINEMATCH_RNG_H

#include <math.h>
#include <stdint.h>

typedef struct {
    uint64_t  s[4];
} cm_rng_t;


static inline uint64_t
cm_splitmix64(uint64_t *x)
{
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}


/* Seed from (seed, stream): independent streams per user, per thread... */
static inline void
cm_rng_seed(cm_rng_t *r, uint64_t seed, uint64_t stream)
{
    uint64_t x = seed
                 ^ (stream * 0xd1342543de82ef95ull + 0x2545f4914f6cdd1dull);

    r->s[0] = cm_splitmix64(&x);
    r->s[1] = cm_splitmix64(&x);
    r->s[2] = cm_splitmix64(&x);
    r->s[3] = cm_splitmix64(&x);
}


static inline uint64_t
cm_rng_next(cm_rng_t *r)
{
    uint64_t *s = r->s;
    uint64_t  res = ((s[1] * 5) << 7 | (s[1] * 5) >> 57) * 9;
    uint64_t  t = s[1] << 17;

    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = (s[3] << 45) | (s[3] >> 19);
    return res;
}


/* Uniform in [0, 1). */
static inline double
cm_rng_unif(cm_rng_t *r)
{
    return (double) (cm_rng_next(r) >> 11) * (1.0 / 9007199254740992.0);
}


/* Uniform integer in [0, n), n > 0 (Lemire's multiply, tiny bias ok). */
static inline uint64_t
cm_rng_below(cm_rng_t *r, uint64_t n)
{
    return (uint64_t) (((unsigned __int128) cm_rng_next(r) * n) >> 64);
}


/* Standard normal (Box-Muller, one value per call). */
static inline double
cm_rng_normal(cm_rng_t *r)
{
    double u1 = cm_rng_unif(r), u2 = cm_rng_unif(r);

    if (u1 < 1e-300) {
        u1 = 1e-300;
    }
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

#endif /* CINEMATCH_RNG_H */

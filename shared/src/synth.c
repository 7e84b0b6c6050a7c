/*
 * synth.c: MovieLens-shaped synthetic ratings (see synth.h for the model).
 *
 * Everything a user or a batch draws comes from its own RNG stream keyed by
 * (seed, u) or (seed, batch), so users can be generated in any order and the
 * writer streams users one by one (20M ratings never sit in memory).
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cinematch/common.h"
#include "cinematch/rng.h"
#include "cinematch/synth.h"

#define CM_SYN_T0        946684800ll    /* 2000-01-01 */
#define CM_SYN_T1        1537747200ll   /* 2018-09-24: end of the main data */
#define CM_SYN_WEEK      604800ll
#define CM_SYN_BETA      1.5            /* selection: sigmoid(beta * z) */
#define CM_SYN_MU        3.03
#define CM_SYN_MIN_N     20u

/* streams: distinct per purpose */
#define CM_SYN_S_WORLD   0x1000000000ull
#define CM_SYN_S_USER    0x2000000000ull
#define CM_SYN_S_BATCH   0x3000000000ull

typedef struct {
    double    *prob;        /* (n) */
    uint32_t  *alias;       /* (n) */
    uint32_t   n;
} cm_alias_t;

struct cm_synth_s {
    cm_synth_conf_t   c;
    uint32_t          n_new;        /* films only in the drift batches */
    uint32_t          n_all;        /* n_items + n_new */
    uint32_t          n_new_users;  /* users only in the drift batches */
    uint32_t          d;            /* rank */
    float            *G;            /* (CM_ML_N_GENRES, d) genre directions */
    float            *Q;            /* (n_all, d) item factors */
    float            *bi;           /* (n_all) item biases */
    float            *P;            /* (n_users + n_new_users, d) */
    float            *bu;           /* (n_users + n_new_users) */
    uint8_t          *half;         /* (n_users + n_new_users) half stars */
    uint32_t         *n_u;          /* (n_users) ratings per user */
    int64_t          *rel;          /* (n_all) release, unix seconds */
    int32_t          *ext;          /* (n_all) movieId */
    double            s_scale;      /* 1 / std of p.q over random pairs */
    cm_alias_t        pop;          /* over the n_items main films */
    cm_alias_t        act;          /* over the n_users, by activity */
    uint32_t         *mark;         /* (n_all) dedupe stamps */
    uint32_t          stamp;
    cm_movies_t       movies;
    cm_ratings_t      scratch;
};

/* Genre frequencies in ml-latest-small (of 9742 films), index = genre bit. */
static const double cm_syn_genre_w[CM_ML_N_GENRES] = {
    0, 1828, 1263, 611, 664, 3756, 1199, 440, 4361, 779, 87, 978, 0, 334,
    573, 1596, 980, 1894, 382, 167
};

static const char *cm_syn_adj[] = {
    "Silent", "Last", "Broken", "Golden", "Dark", "Lost", "Crimson", "Wild",
    "Hidden", "Final", "Electric", "Frozen", "Little", "Midnight", "Secret",
    "Burning", "Distant", "Savage", "Quiet", "Eternal", "Velvet", "Iron"
};
static const char *cm_syn_noun[] = {
    "River", "City", "Night", "Heart", "Garden", "Empire", "Road", "Storm",
    "Mirror", "Island", "Kingdom", "Shadow", "Summer", "Witness", "Machine",
    "Harbor", "Promise", "Frontier", "Dream", "Circus", "Letter", "Planet"
};


static int
cm_alias_build(cm_alias_t *a, const double *w, uint32_t n)
{
    uint32_t  *small, *large, ns = 0, nl = 0, i, s, l;
    double    *p, sum = 0;

    a->prob = malloc(n * sizeof(double));
    a->alias = malloc(n * sizeof(uint32_t));
    small = malloc(n * sizeof(uint32_t));
    large = malloc(n * sizeof(uint32_t));
    p = malloc(n * sizeof(double));
    if (a->prob == NULL || a->alias == NULL || small == NULL || large == NULL
        || p == NULL)
    {
        free(small); free(large); free(p);
        return CM_ENOMEM;
    }
    a->n = n;
    for (i = 0; i < n; i++) {
        sum += w[i];
    }
    for (i = 0; i < n; i++) {
        p[i] = w[i] * n / sum;
        if (p[i] < 1.0) {
            small[ns++] = i;
        } else {
            large[nl++] = i;
        }
    }
    while (ns > 0 && nl > 0) {
        s = small[--ns];
        l = large[--nl];
        a->prob[s] = p[s];
        a->alias[s] = l;
        p[l] = (p[l] + p[s]) - 1.0;
        if (p[l] < 1.0) {
            small[ns++] = l;
        } else {
            large[nl++] = l;
        }
    }
    while (nl > 0) {
        l = large[--nl];
        a->prob[l] = 1.0;
        a->alias[l] = l;
    }
    while (ns > 0) {
        s = small[--ns];
        a->prob[s] = 1.0;
        a->alias[s] = s;
    }
    free(small);
    free(large);
    free(p);
    return CM_OK;
}


static uint32_t
cm_alias_draw(const cm_alias_t *a, cm_rng_t *r)
{
    uint32_t i = (uint32_t) cm_rng_below(r, a->n);

    return cm_rng_unif(r) < a->prob[i] ? i : a->alias[i];
}


static void
cm_alias_free(cm_alias_t *a)
{
    free(a->prob);
    free(a->alias);
}


void
cm_synth_conf_default(cm_synth_conf_t *c)
{
    memset(c, 0, sizeof(*c));
    c->n_users = 610;
    c->n_items = 9000;
    c->n_ratings = 100000;
    c->seed = 42;
    c->rank = 8;
    c->noise = 0.6;
}


static uint32_t
cm_syn_pick_genre(cm_rng_t *r)
{
    double  total = 0, x;
    int     g;

    for (g = 0; g < CM_ML_N_GENRES; g++) {
        total += cm_syn_genre_w[g];
    }
    x = cm_rng_unif(r) * total;
    for (g = 0; g < CM_ML_N_GENRES - 1; g++) {
        x -= cm_syn_genre_w[g];
        if (x < 0) {
            break;
        }
    }
    return (uint32_t) g;
}


/* v = 0.8 * mean(G_g, g in mask) + 0.5 * noise */
static void
cm_syn_taste(const cm_synth_t *s, uint32_t mask, cm_rng_t *r, float *v)
{
    uint32_t  k, g, n = 0;

    for (k = 0; k < s->d; k++) {
        v[k] = 0;
    }
    for (g = 0; g < CM_ML_N_GENRES; g++) {
        if (mask & (1u << g)) {
            for (k = 0; k < s->d; k++) {
                v[k] += s->G[g * s->d + k];
            }
            n++;
        }
    }
    for (k = 0; k < s->d; k++) {
        v[k] = (n ? 0.8f * v[k] / (float) n : 0)
               + 0.5f * (float) cm_rng_normal(r);
    }
}


static uint32_t
cm_syn_genre_mask(cm_rng_t *r)
{
    uint32_t  mask = 0, n, k;
    double    u = cm_rng_unif(r);

    n = u < 0.45 ? 1 : (u < 0.8 ? 2 : 3);
    for (k = 0; k < n; k++) {
        mask |= 1u << cm_syn_pick_genre(r);
    }
    return mask;
}


static int
cm_syn_title(cm_rng_t *r, int32_t year, char *buf, size_t len)
{
    const char  *a = cm_syn_adj[cm_rng_below(r, CM_ARRAY_SIZE(cm_syn_adj))];
    const char  *n1 = cm_syn_noun[cm_rng_below(r, CM_ARRAY_SIZE(cm_syn_noun))];
    const char  *n2 = cm_syn_noun[cm_rng_below(r, CM_ARRAY_SIZE(cm_syn_noun))];

    switch (cm_rng_below(r, 5)) {
    case 0:  return snprintf(buf, len, "%s %s (%d)", a, n1, year);
    case 1:  return snprintf(buf, len, "%s of the %s (%d)", n1, n2, year);
    case 2:  return snprintf(buf, len, "%s %s, The (%d)", a, n1, year);
    case 3:  return snprintf(buf, len, "\"%s\" %s (%d)", n1, n2, year);
    default: return snprintf(buf, len, "%s, %s and %s (%d)", n1, a, n2, year);
    }
}


static int64_t
cm_syn_jan1(int32_t year)
{
    /* days from 1970 to Jan 1 of year (proleptic Gregorian) */
    int64_t y = year - 1, days;

    days = 365 * (y - 1969) + (y / 4 - 1969 / 4) - (y / 100 - 1969 / 100)
           + (y / 400 - 1969 / 400);
    return days * 86400;
}


int
cm_synth_create(const cm_synth_conf_t *conf, cm_synth_t **out, char *err,
    size_t errlen)
{
    cm_synth_t  *s;
    cm_rng_t     r;
    uint32_t     i, u, k, n_users_all, rank_i, *perm, t;
    double      *w, sum, dot, ss = 0;
    uint64_t     extra;
    char         title[256];
    cm_movie_t   m;

    if (conf->n_users == 0 || conf->n_items < 10 || conf->rank == 0
        || conf->rank > 64 || conf->n_items > 50000000u
        || conf->n_users > 100000000u)
    {
        return cm_seterr(err, errlen, CM_EINVAL, "synth: need users >= 1,"
                         " items >= 10, rank 1..64");
    }
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return cm_seterr(err, errlen, CM_ENOMEM, "synth: out of memory");
    }
    s->c = *conf;
    if (s->c.noise <= 0) {
        s->c.noise = 0.6;
    }
    if (s->c.batch_ratings == 0) {
        s->c.batch_ratings = (uint32_t) (conf->n_ratings / 50 + 100);
    }
    s->d = conf->rank;
    s->n_new = conf->drift_batches ? conf->n_items / 20 + 1 : 0;
    s->n_all = conf->n_items + s->n_new;
    s->n_new_users = conf->drift_batches ? conf->n_users / 10 + 1 : 0;
    n_users_all = conf->n_users + s->n_new_users;

    s->G = malloc((size_t) CM_ML_N_GENRES * s->d * sizeof(float));
    s->Q = malloc((size_t) s->n_all * s->d * sizeof(float));
    s->bi = malloc(s->n_all * sizeof(float));
    s->P = malloc((size_t) n_users_all * s->d * sizeof(float));
    s->bu = malloc(n_users_all * sizeof(float));
    s->half = malloc(n_users_all);
    s->n_u = malloc(conf->n_users * sizeof(uint32_t));
    s->rel = malloc(s->n_all * sizeof(int64_t));
    s->ext = malloc(s->n_all * sizeof(int32_t));
    s->mark = calloc(s->n_all, sizeof(uint32_t));
    w = calloc(s->n_all > n_users_all ? s->n_all : n_users_all,
               sizeof(double));
    perm = malloc(s->n_all * sizeof(uint32_t));
    if (s->G == NULL || s->Q == NULL || s->bi == NULL || s->P == NULL
        || s->bu == NULL || s->half == NULL || s->n_u == NULL
        || s->rel == NULL || s->ext == NULL || s->mark == NULL || w == NULL
        || perm == NULL)
    {
        goto nomem;
    }

    cm_rng_seed(&r, conf->seed, CM_SYN_S_WORLD);
    for (i = 0; i < CM_ML_N_GENRES * s->d; i++) {
        s->G[i] = (float) cm_rng_normal(&r);
    }

    /* films: popularity rank is a random permutation (Fisher-Yates) */
    for (i = 0; i < s->n_all; i++) {
        perm[i] = i;
    }
    for (i = s->n_all - 1; i > 0; i--) {
        k = (uint32_t) cm_rng_below(&r, i + 1);
        t = perm[i]; perm[i] = perm[k]; perm[k] = t;
    }
    {
        int32_t  id = 0;

        for (i = 0; i < s->n_all; i++) {
            int32_t year;

            memset(&m, 0, sizeof(m));
            m.genres = cm_syn_genre_mask(&r);
            cm_syn_taste(s, m.genres, &r, s->Q + (size_t) i * s->d);
            rank_i = perm[i];
            w[i] = pow(rank_i + 10.0, -1.1);
            /* popular films are rated a little higher */
            s->bi[i] = (float) (0.35 * cm_rng_normal(&r)
                                + 0.15 * (rank_i < s->n_all / 10 ? 1 : -0.1));
            if (i < conf->n_items) {
                year = 2018 - (int32_t) (-log(1.0 - cm_rng_unif(&r)) * 14.0);
                if (year < 1915) {
                    year = 1915 + (int32_t) cm_rng_below(&r, 30);
                }
            } else {
                year = 2018;
            }
            s->rel[i] = cm_syn_jan1(year);
            id += 1 + (cm_rng_unif(&r) < 0.1 ? (int32_t) cm_rng_below(&r, 40)
                                             : 0);
            s->ext[i] = id;
            cm_syn_title(&r, year, title, sizeof(title));
            m.id = id;
            m.year = year;
            m.title = strdup(title);
            if (m.title == NULL) {
                goto nomem;
            }
            if (s->movies.n == s->movies.cap) {
                size_t       cap = s->movies.cap ? s->movies.cap * 2 : 1024;
                cm_movie_t  *v = realloc(s->movies.v, cap * sizeof(*v));

                if (v == NULL) {
                    free(m.title);
                    goto nomem;
                }
                s->movies.v = v;
                s->movies.cap = cap;
            }
            s->movies.v[s->movies.n++] = m;
        }
    }
    if (cm_alias_build(&s->pop, w, conf->n_items) != CM_OK) {
        goto nomem;
    }

    /* users */
    sum = 0;
    for (u = 0; u < n_users_all; u++) {
        uint32_t fav = cm_syn_genre_mask(&r);

        cm_syn_taste(s, fav, &r, s->P + (size_t) u * s->d);
        s->bu[u] = (float) (0.45 * cm_rng_normal(&r));
        s->half[u] = cm_rng_unif(&r) < 0.6;
        w[u] = exp(1.3 * cm_rng_normal(&r));
        if (u < conf->n_users) {
            sum += w[u];
        }
    }
    /* activity: at least CM_SYN_MIN_N (or what the total allows) */
    {
        uint32_t  min_n = CM_SYN_MIN_N, cap = conf->n_items / 2;

        if ((uint64_t) min_n * conf->n_users > conf->n_ratings) {
            min_n = (uint32_t) (conf->n_ratings / conf->n_users / 2 + 1);
        }
        extra = conf->n_ratings > (uint64_t) min_n * conf->n_users
                ? conf->n_ratings - (uint64_t) min_n * conf->n_users : 0;
        for (u = 0; u < conf->n_users; u++) {
            uint64_t n = min_n + (uint64_t) llround(extra * w[u] / sum);

            s->n_u[u] = (uint32_t) (n > cap ? cap : n);
            w[u] = s->n_u[u];
        }
        if (cm_alias_build(&s->act, w, conf->n_users) != CM_OK) {
            goto nomem;
        }
    }

    /* scale p.q so that it has unit std over random pairs */
    for (i = 0; i < 2000; i++) {
        const float *p = s->P + cm_rng_below(&r, conf->n_users) * s->d;
        const float *q = s->Q + cm_rng_below(&r, conf->n_items) * s->d;

        for (dot = 0, k = 0; k < s->d; k++) {
            dot += p[k] * q[k];
        }
        ss += dot * dot;
    }
    s->s_scale = 1.0 / sqrt(ss / 2000 + 1e-12);

    free(w);
    free(perm);
    *out = s;
    return CM_OK;

nomem:
    free(w);
    free(perm);
    cm_synth_destroy(s);
    return cm_seterr(err, errlen, CM_ENOMEM, "synth: out of memory");
}


void
cm_synth_destroy(cm_synth_t *s)
{
    if (s == NULL) {
        return;
    }
    free(s->G); free(s->Q); free(s->bi); free(s->P); free(s->bu);
    free(s->half); free(s->n_u); free(s->rel); free(s->ext); free(s->mark);
    cm_alias_free(&s->pop);
    cm_alias_free(&s->act);
    cm_movies_free(&s->movies);
    cm_ratings_free(&s->scratch);
    free(s);
}


const cm_movies_t *
cm_synth_movies(const cm_synth_t *s)
{
    return &s->movies;
}


const float *
cm_synth_user_factors(const cm_synth_t *s, uint32_t u)
{
    return u < s->c.n_users + s->n_new_users ? s->P + (size_t) u * s->d
                                             : NULL;
}


const float *
cm_synth_item_factors(const cm_synth_t *s, uint32_t i)
{
    return i < s->n_all ? s->Q + (size_t) i * s->d : NULL;
}


/* z-scored affinity of user u for item i */
static double
cm_syn_affinity(const cm_synth_t *s, uint32_t u, uint32_t i)
{
    const float  *p = s->P + (size_t) u * s->d, *q = s->Q + (size_t) i * s->d;
    double        dot = 0;
    uint32_t      k;

    for (k = 0; k < s->d; k++) {
        dot += p[k] * q[k];
    }
    return dot * s->s_scale;
}


static float
cm_syn_rating(const cm_synth_t *s, uint32_t u, uint32_t i, double z,
    double shift, cm_rng_t *r)
{
    double  x, step;

    x = CM_SYN_MU + shift + s->bu[u] + s->bi[i] + 0.7 * z
        + s->c.noise * cm_rng_normal(r);
    step = s->half[u] ? 0.5 : 1.0;
    x = floor(x / step + 0.5) * step;
    if (x < step) {
        x = step;
    }
    if (x > 5.0) {
        x = 5.0;
    }
    return (float) x;
}


static int64_t
cm_syn_time(const cm_synth_t *s, uint32_t i, int64_t start, int64_t end,
    cm_rng_t *r)
{
    int64_t  ts;

    if (cm_rng_unif(r) < 0.5) {
        ts = start + (int64_t) cm_rng_below(r, (uint64_t) 3 * 3600);   /* first session */
    } else {
        ts = start + (int64_t) (-log(1.0 - cm_rng_unif(r)) * 365.0 * 86400);
    }
    if (ts < s->rel[i]) {
        ts = s->rel[i]
             + (int64_t) (cm_rng_unif(r) * (double) (end - s->rel[i]));
    }
    return ts < end ? ts : end - 1;
}


static int
cm_syn_cmp_item(const void *a, const void *b)
{
    const cm_rating_t *x = a, *y = b;

    return (x->item > y->item) - (x->item < y->item);
}


static uint32_t
cm_syn_next_stamp(cm_synth_t *s)
{
    if (++s->stamp == 0) {
        memset(s->mark, 0, s->n_all * sizeof(uint32_t));
        s->stamp = 1;
    }
    return s->stamp;
}


int
cm_synth_user(cm_synth_t *s, uint32_t u, cm_ratings_t *out)
{
    cm_rng_t     r;
    uint32_t     i, stamp, want;
    uint64_t     tries = 0;
    int64_t      start;
    double       z;
    cm_rating_t  x;

    out->n = 0;
    if (u >= s->c.n_users) {
        return CM_EINVAL;
    }
    cm_rng_seed(&r, s->c.seed, CM_SYN_S_USER + u);
    stamp = cm_syn_next_stamp(s);
    want = s->n_u[u];
    start = CM_SYN_T0 + (int64_t) cm_rng_below(&r, (uint64_t) (CM_SYN_T1
                                         - CM_SYN_T0 - 30ll * 86400));
    while (out->n < want && tries < (uint64_t) want * 200 + 1000) {
        tries++;
        i = cm_alias_draw(&s->pop, &r);
        if (s->mark[i] == stamp) {
            continue;
        }
        z = cm_syn_affinity(s, u, i);
        if (cm_rng_unif(&r) >= 1.0 / (1.0 + exp(-CM_SYN_BETA * z))) {
            continue;
        }
        s->mark[i] = stamp;
        x.user = (int32_t) u + 1;
        x.item = s->ext[i];
        x.rating = cm_syn_rating(s, u, i, z, 0.0, &r);
        x.ts = cm_syn_time(s, i, start, CM_SYN_T1, &r);
        if (cm_ratings_push(out, &x) != CM_OK) {
            return CM_ENOMEM;
        }
    }
    if (out->n > 1) {
        qsort(out->v, out->n, sizeof(cm_rating_t), cm_syn_cmp_item);
    }
    return CM_OK;
}


static int
cm_syn_in_sorted(const cm_ratings_t *r, int32_t item)
{
    size_t lo = 0, hi = r->n;

    while (lo < hi) {
        size_t mid = (lo + hi) / 2;

        if (r->v[mid].item < item) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo < r->n && r->v[lo].item == item;
}


int
cm_synth_batch(cm_synth_t *s, uint32_t k, cm_ratings_t *out)
{
    cm_rng_t     r;
    double       t, z, boost;
    uint32_t     u, i, n_users = s->c.n_users, trend = CM_ML_G_HORROR;
    int64_t      w0;
    uint64_t     tries = 0, key, *seen, cap, h;
    cm_rating_t  x;
    int          rc = CM_OK;

    out->n = 0;
    if (k == 0 || k > s->c.drift_batches) {
        return CM_EINVAL;
    }
    /* open-addressing set of (user, item) keys: a batch rates a pair once */
    for (cap = 64; cap < (uint64_t) s->c.batch_ratings * 2; cap *= 2) {
        /* power of two, load <= 1/2 */
    }
    seen = calloc(cap, sizeof(uint64_t));
    if (seen == NULL) {
        return CM_ENOMEM;
    }
    cm_rng_seed(&r, s->c.seed, CM_SYN_S_BATCH + k);
    t = (double) k / s->c.drift_batches;
    w0 = CM_SYN_T1 + (int64_t) (k - 1) * CM_SYN_WEEK;
    boost = 1.0 + 3.0 * t;

    while (out->n < s->c.batch_ratings
           && tries < (uint64_t) s->c.batch_ratings * 400 + 1000)
    {
        tries++;
        if (cm_rng_unif(&r) < 0.2 * t) {
            u = n_users + (uint32_t) cm_rng_below(&r, s->n_new_users);
        } else {
            u = cm_alias_draw(&s->act, &r);
        }
        if (cm_rng_unif(&r) < 0.3 * t) {
            i = s->c.n_items + (uint32_t) cm_rng_below(&r, s->n_new);
        } else {
            i = cm_alias_draw(&s->pop, &r);
            /* the trending genre gains share: others are thinned */
            if (!(s->movies.v[i].genres & (1u << trend))
                && cm_rng_unif(&r) >= 1.0 / boost)
            {
                continue;
            }
        }
        z = cm_syn_affinity(s, u, i);
        if (cm_rng_unif(&r) >= 1.0 / (1.0 + exp(-CM_SYN_BETA * z))) {
            continue;
        }
        key = ((uint64_t) u << 32 | i) + 1;             /* never 0 */
        for (h = (key * 0x9e3779b97f4a7c15ull) & (cap - 1);
             seen[h] != 0 && seen[h] != key; h = (h + 1) & (cap - 1))
        {
            /* linear probing */
        }
        if (seen[h] == key) {
            continue;
        }
        if (u < n_users && i < s->c.n_items) {
            /* never re-rate a film of the main data */
            rc = cm_synth_user(s, u, &s->scratch);
            if (rc != CM_OK) {
                break;
            }
            if (cm_syn_in_sorted(&s->scratch, s->ext[i])) {
                continue;
            }
        }
        seen[h] = key;
        x.user = (int32_t) u + 1;
        x.item = s->ext[i];
        x.rating = cm_syn_rating(s, u, i, z, -0.4 * t, &r);
        x.ts = w0 + (int64_t) cm_rng_below(&r, CM_SYN_WEEK);
        rc = cm_ratings_push(out, &x);
        if (rc != CM_OK) {
            break;
        }
    }
    free(seen);
    return rc;
}


/* ---- writers ------------------------------------------------------------ */

static int
cm_syn_put_rating(FILE *f, const cm_rating_t *x)
{
    int  tenths = (int) lroundf(x->rating * 10.0f);

    return fprintf(f, "%d,%d,%d.%d,%lld\n", x->user, x->item, tenths / 10,
                   tenths % 10, (long long) x->ts) < 0 ? CM_EIO : CM_OK;
}


static FILE *
cm_syn_open(const char *path, const char *header, char *err, size_t errlen)
{
    FILE *f = fopen(path, "w");

    if (f == NULL) {
        cm_seterr(err, errlen, CM_EIO, "%s: %s", path, strerror(errno));
        return NULL;
    }
    setvbuf(f, NULL, _IOFBF, 1 << 20);
    fputs(header, f);
    return f;
}


static int
cm_syn_close(FILE *f, const char *path, int rc, char *err, size_t errlen)
{
    if (ferror(f)) {
        rc = CM_EIO;
    }
    if (fclose(f) != 0) {
        rc = CM_EIO;
    }
    if (rc == CM_EIO) {
        cm_seterr(err, errlen, CM_EIO, "%s: write failed", path);
    }
    return rc;
}


int
cm_ml_write_ratings_csv(const char *path, const cm_ratings_t *r, char *err,
    size_t errlen)
{
    FILE    *f;
    size_t   i;
    int      rc = CM_OK;

    f = cm_syn_open(path, "userId,movieId,rating,timestamp\n", err, errlen);
    if (f == NULL) {
        return CM_EIO;
    }
    for (i = 0; i < r->n && rc == CM_OK; i++) {
        rc = cm_syn_put_rating(f, &r->v[i]);
    }
    return cm_syn_close(f, path, rc, err, errlen);
}


int
cm_ml_write_movies_csv(const char *path, const cm_movies_t *m, char *err,
    size_t errlen)
{
    FILE        *f;
    size_t       i;
    const char  *t;
    char         genres[512];

    f = cm_syn_open(path, "movieId,title,genres\n", err, errlen);
    if (f == NULL) {
        return CM_EIO;
    }
    for (i = 0; i < m->n; i++) {
        fprintf(f, "%d,", m->v[i].id);
        if (strpbrk(m->v[i].title, ",\"\r\n") != NULL) {
            fputc('"', f);
            for (t = m->v[i].title; *t; t++) {
                if (*t == '"') {
                    fputc('"', f);
                }
                fputc(*t, f);
            }
            fputc('"', f);
        } else {
            fputs(m->v[i].title, f);
        }
        if (m->v[i].genres == 0) {
            fprintf(f, ",(no genres listed)\n");
        } else {
            cm_ml_genres_format(m->v[i].genres, genres, sizeof(genres));
            fprintf(f, ",%s\n", genres);
        }
    }
    return cm_syn_close(f, path, CM_OK, err, errlen);
}


static int
cm_syn_mkdir(const char *path, char *err, size_t errlen)
{
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        return cm_seterr(err, errlen, CM_EIO, "%s: %s", path,
                         strerror(errno));
    }
    return CM_OK;
}


int
cm_synth_write_dir(const cm_synth_conf_t *conf, const char *dir,
    uint64_t *n_written, char *err, size_t errlen)
{
    cm_synth_t    *s;
    cm_ratings_t   r = { 0 };
    char           path[4096];
    FILE          *f;
    uint32_t       u, k;
    size_t         j;
    uint64_t       n = 0;
    int            rc;

    rc = cm_syn_mkdir(dir, err, errlen);
    if (rc != CM_OK) {
        return rc;
    }
    rc = cm_synth_create(conf, &s, err, errlen);
    if (rc != CM_OK) {
        return rc;
    }
    snprintf(path, sizeof(path), "%s/movies.csv", dir);
    rc = cm_ml_write_movies_csv(path, &s->movies, err, errlen);
    if (rc != CM_OK) {
        goto done;
    }

    snprintf(path, sizeof(path), "%s/ratings.csv", dir);
    f = cm_syn_open(path, "userId,movieId,rating,timestamp\n", err, errlen);
    if (f == NULL) {
        rc = CM_EIO;
        goto done;
    }
    for (u = 0; u < conf->n_users && rc == CM_OK; u++) {
        rc = cm_synth_user(s, u, &r);
        for (j = 0; j < r.n && rc == CM_OK; j++) {
            rc = cm_syn_put_rating(f, &r.v[j]);
        }
        n += r.n;
    }
    rc = cm_syn_close(f, path, rc, err, errlen);
    if (rc != CM_OK) {
        goto done;
    }

    if (conf->drift_batches > 0) {
        snprintf(path, sizeof(path), "%s/batches", dir);
        rc = cm_syn_mkdir(path, err, errlen);
        for (k = 1; k <= conf->drift_batches && rc == CM_OK; k++) {
            rc = cm_synth_batch(s, k, &r);
            if (rc != CM_OK) {
                cm_seterr(err, errlen, rc, "synth: batch %u failed", k);
                break;
            }
            snprintf(path, sizeof(path), "%s/batches/week_%03u.csv", dir, k);
            rc = cm_ml_write_ratings_csv(path, &r, err, errlen);
        }
    }

done:
    if (n_written != NULL) {
        *n_written = n;
    }
    cm_ratings_free(&r);
    cm_synth_destroy(s);
    return rc;
}

/*
 * serve_recsys.c: recommend / similar / popular / predict / fold-in on an
 * opened recsys artifact.  See cinematch/serve_recsys.h.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cblas.h>
#include <jansson.h>

#include "cinematch/common.h"
#include "cinematch/lm_kernels.h"
#include "cinematch/rs_topk.h"
#include "cinematch/serve_recsys.h"

#define CM_RSS_BECAUSE_MAX   200     /* candidate explanations per user */
#define CM_RSS_LIKED         4.0f    /* "highly rated" */
#define CM_RSS_JSON_FLAGS    (JSON_COMPACT | JSON_REAL_PRECISION(6))
#define CM_RSS_CACHE_BYTES   ((size_t) 64 << 20)   /* answer cache text */
#ifndef CM_RSS_PACK_ROWS
#define CM_RSS_PACK_ROWS     12      /* users per packed-kernel pass */
#endif

typedef struct {
    int32_t    user;
    uint32_t   n;
    uint32_t   cap;
    float      bias;
    float     *x;           /* (k) */
    uint32_t  *items;       /* (n) dense, ascending */
    float     *ratings;     /* (n) */
} cm_rss_user_t;

typedef struct {
    char            *buf;
    size_t           len;
    size_t           cap;
    int              oom;
} cm_rss_buf_t;

/* a user's score row: v[i] (bias NULL) or v[i] + (base + bias[i]), the
 * biases added by the top-K scan (cinematch/rs_topk.h) */
typedef struct {
    const float     *v;
    float            base;
    const float     *bias;
} cm_rss_row_t;

/* the filter of a request, for cm_rs_topk_fused */
typedef struct {
    const cm_rs_server_t   *s;
    const cm_rs_rec_req_t  *q;
} cm_rss_filter_t;

/* what one scoring thread writes: nothing of it is shared */
struct cm_rs_scratch_s {
    float           *scores;       /* scores_cap floats */
    size_t           scores_cap;
    float           *why;          /* (K + B, k + 1) explanation scratch:
                                      recommended rows, liked rows, dots */
    size_t           why_cap;      /* floats */
    uint32_t        *tk_idx;       /* (tk_cap) */
    float           *tk_score;     /* (tk_cap) */
    size_t           tk_cap;
    cm_rss_buf_t     a;            /* the answer being written */
    cm_rss_buf_t     l;            /* its request-log members */
    int32_t          ids[CM_RSS_MAX_K];   /* the answer's movies */
    double           sc[CM_RSS_MAX_K];    /* and their scores */
    char             sct[CM_RSS_MAX_K][32];  /* as text (answer and log) */
    uint8_t          scl[CM_RSS_MAX_K];   /* its length */
    size_t           n;
};

/* one cached answer: the request it answers and its text */
typedef struct {
    cm_rs_rec_req_t  q;
    char            *json;         /* NULL: empty */
    size_t           len;
    uint64_t         used;         /* tick of the last get or put */
} cm_rss_entry_t;

struct cm_rs_server_s {
    cm_rs_model_t   *m;
    char             version[64];
    char            *version_json; /* "\"<version>\"", escaped */
    cm_movie_t      *cat;          /* (ncat) sorted by id, clean titles */
    size_t           ncat;
    int32_t         *item_cat;     /* (n_items) index into cat, -1 none */
    uint32_t        *pop_order;    /* (n_items) most rated first */
    cm_rss_user_t   *ov;           /* (nov) sorted by user */
    size_t           nov;
    size_t           ovcap;
    cm_rs_scratch_t *w;            /* the single-threaded calls' scratch */
    char            *frag;         /* per item: '{' + movie_id, title,
                                      year, genres (full) / movie_id,
                                      title (short), without the '}' */
    uint32_t        *frag_full;    /* (n_items + 1) offsets into frag */
    uint32_t        *frag_short;   /* (n_items + 1) offsets into frag */
    cm_rss_entry_t  *cache;        /* (ncache) 2-way sets; NULL: off */
    size_t           ncache;
    size_t           cache_bytes;  /* text held by the cache */
    size_t           cache_used;   /* entries holding an answer */
    uint64_t         tick;
    uint64_t         cache_hits;
    uint64_t         cache_misses;
    float           *vpack;        /* item factors packed for lm_kernels'
                                      cm_lmk_linear; NULL: OpenBLAS */
    cm_lmk_matrix_t  vpm;          /* (n_items, factors) over vpack */
};


static const cm_rs_server_t *cm_rss_sort_srv;

static int cm_rss_fragments(cm_rs_server_t *s);


static int
cm_rss_movie_cmp(const void *a, const void *b)
{
    const cm_movie_t *x = a, *y = b;

    return (x->id > y->id) - (x->id < y->id);
}


static int
cm_rss_pop_cmp(const void *a, const void *b)
{
    uint32_t  x = *(const uint32_t *) a, y = *(const uint32_t *) b;
    uint32_t  px = cm_rss_sort_srv->m->pop[x], py = cm_rss_sort_srv->m->pop[y];

    if (px != py) {
        return px > py ? -1 : 1;
    }
    return (x > y) - (x < y);   /* ties: lower movie index first */
}


char *
cm_rs_clean_title(const char *title)
{
    size_t  n = strlen(title);
    char   *t;

    /* "Heat (1995)" and "Heat (1995) " both lose the year */
    while (n > 0 && title[n - 1] == ' ') {
        n--;
    }
    if (n >= 7 && title[n - 1] == ')' && title[n - 6] == '('
        && title[n - 7] == ' ' && strspn(title + n - 5, "0123456789") >= 4)
    {
        n -= 7;
    }
    t = malloc(n + 1);
    if (t != NULL) {
        memcpy(t, title, n);
        t[n] = '\0';
    }
    return t;
}


int
cm_rs_parse_genres(const char *s, size_t len, uint32_t *mask, char *err,
                   size_t errlen)
{
    size_t  i = 0, j;
    int     g;

    *mask = 0;
    while (i < len) {
        for (j = i; j < len && s[j] != ','; j++) {
            /* find the end of this name */
        }
        if (j == i) {
            return cm_seterr(err, errlen, CM_EINVAL, "empty genre name");
        }
        g = cm_ml_genre_parse(s + i, j - i);
        if (g < 0) {
            return cm_seterr(err, errlen, CM_EINVAL, "unknown genre '%.*s'",
                             (int) (j - i > 40 ? 40 : j - i), s + i);
        }
        *mask |= 1u << g;
        i = j + 1;
    }
    return CM_OK;
}


cm_rs_scratch_t *
cm_rs_scratch_new(void)
{
    return calloc(1, sizeof(cm_rs_scratch_t));
}


void
cm_rs_scratch_free(cm_rs_scratch_t *w)
{
    if (w == NULL) {
        return;
    }
    free(w->scores);
    free(w->why);
    free(w->tk_idx);
    free(w->tk_score);
    free(w->a.buf);
    free(w->l.buf);
    free(w);
}


/* Room for `rows` score rows of this model and its top-K and explanation
 * work; a scratch outlives a model swap, so it grows to the largest. */
static int
cm_rss_scratch_fit(cm_rs_scratch_t *w, const cm_rs_model_t *m, size_t rows)
{
    size_t     ni = (size_t) m->n_items + 1, need = rows * ni, why;
    float     *f;
    uint32_t  *u;

    if (need > w->scores_cap) {
        f = realloc(w->scores, need * sizeof(float));
        if (f == NULL) {
            return CM_ENOMEM;
        }
        w->scores = f;
        w->scores_cap = need;
    }
    if (ni > w->tk_cap) {
        u = realloc(w->tk_idx, ni * sizeof(uint32_t));
        if (u == NULL) {
            return CM_ENOMEM;
        }
        w->tk_idx = u;
        f = realloc(w->tk_score, ni * sizeof(float));
        if (f == NULL) {
            return CM_ENOMEM;
        }
        w->tk_score = f;
        w->tk_cap = ni;
    }
    why = (size_t) (CM_RSS_MAX_K + CM_RSS_BECAUSE_MAX) * (m->factors + 1)
          + (size_t) CM_RSS_MAX_K * CM_RSS_BECAUSE_MAX;
    if (why > w->why_cap) {
        f = realloc(w->why, why * sizeof(float));
        if (f == NULL) {
            return CM_ENOMEM;
        }
        w->why = f;
        w->why_cap = why;
    }
    return CM_OK;
}


static void
cm_rss_cache_clear(cm_rs_server_t *s)
{
    size_t i;

    for (i = 0; i < s->ncache; i++) {
        free(s->cache[i].json);
    }
    free(s->cache);
    s->cache = NULL;
    s->ncache = 0;
    s->cache_bytes = 0;
    s->cache_used = 0;
}


void
cm_rs_server_free(cm_rs_server_t *s)
{
    size_t i;

    if (s == NULL) {
        return;
    }
    for (i = 0; i < s->ncat; i++) {
        free(s->cat[i].title);
    }
    for (i = 0; i < s->nov; i++) {
        free(s->ov[i].x);
        free(s->ov[i].items);
        free(s->ov[i].ratings);
    }
    cm_rss_cache_clear(s);
    free(s->ov);
    free(s->cat);
    free(s->item_cat);
    free(s->pop_order);
    free(s->frag);
    free(s->frag_full);
    free(s->frag_short);
    free(s->version_json);
    free(s->vpack);
    cm_rs_scratch_free(s->w);
    cm_rs_model_free(s->m);
    free(s);
}


int
cm_rs_server_pack_items(cm_rs_server_t *s, int on)
{
    const cm_rs_model_t *m = s->m;
    void                *mem;

    free(s->vpack);
    s->vpack = NULL;
    memset(&s->vpm, 0, sizeof(s->vpm));
    if (!on || m->algo == CM_RS_POP || m->factors == 0 || m->n_items == 0
        || m->n_items > INT32_MAX || m->factors > INT32_MAX)
    {
        return 0;
    }
    if (posix_memalign(&mem, CM_LMK_ALIGN,
                       cm_lmk_packed_floats((int) m->n_items, (int) m->factors)
                       * sizeof(float)) != 0)
    {
        return 0;   /* OpenBLAS scores it as before */
    }
    s->vpack = mem;
    cm_lmk_pack(&s->vpm, s->vpack, m->V, NULL, (int) m->n_items,
                (int) m->factors);
    return 1;
}


int
cm_rs_server_packed(const cm_rs_server_t *s)
{
    return s->vpack != NULL;
}


/*
 * cm_rs_score_users with the packed item matrix: out = (mean + b_u + b_i)
 * + x . v_i, the same sum the SGEMM makes (it adds its dot products to the
 * biases written first); only the order of the k multiply-adds differs.
 */
static int
cm_rss_packed_rows(const cm_rs_server_t *s, const uint32_t *users, size_t n,
                   float *out, int add_bias)
{
    const cm_rs_model_t  *m = s->m;
    size_t                a, i, r0, rb, k = m->factors, ni = m->n_items;
    float                *X = NULL;
    const float          *x;

    for (a = 0; a < n; a++) {
        if (users[a] >= m->n_users) {
            return CM_EINVAL;
        }
    }
    if (n == 0) {
        return CM_OK;
    }
    if (n == 1) {
        x = m->U + (size_t) users[0] * k;   /* one row: no copy */
    } else {
        X = malloc(n * k * sizeof(float));
        if (X == NULL) {
            return CM_ENOMEM;
        }
        for (a = 0; a < n; a++) {
            memcpy(X + a * k, m->U + (size_t) users[a] * k,
                   k * sizeof(float));
        }
        x = X;
    }
    /* CM_RSS_PACK_ROWS users at a time: their score rows stay in L2
     * while the biases are added, where one pass of all users over the
     * panels wrote (n, n_items) before reading it again */
    for (r0 = 0; r0 < n; r0 += CM_RSS_PACK_ROWS) {
        rb = n - r0 < CM_RSS_PACK_ROWS ? n - r0 : CM_RSS_PACK_ROWS;
        cm_lmk_linear(out + r0 * ni, x + r0 * k, &s->vpm, (int) rb);
        if (m->algo == CM_RS_IALS || !add_bias) {
            continue;
        }
        for (a = r0; a < r0 + rb; a++) {
            float *row = out + a * ni, base = m->mean + m->bu[users[a]];

            for (i = 0; i < ni; i++) {
                row[i] += base + m->bi[i];
            }
        }
    }
    free(X);
    return CM_OK;
}


int
cm_rs_server_score_users(const cm_rs_server_t *s, const uint32_t *users,
                         size_t n, float *out)
{
    if (s->vpack == NULL) {
        return cm_rs_score_users(s->m, users, n, out);
    }
    return cm_rss_packed_rows(s, users, n, out, 1);
}


void
cm_rs_server_score_vector(const cm_rs_server_t *s, const float *x,
                          float bias, float *out)
{
    const cm_rs_model_t  *m = s->m;
    size_t                i;

    if (s->vpack == NULL) {
        cm_rs_score_vector(m, x, bias, out);
        return;
    }
    cm_lmk_linear(out, x, &s->vpm, 1);
    if (m->algo != CM_RS_IALS) {
        for (i = 0; i < m->n_items; i++) {
            out[i] += m->mean + bias + m->bi[i];
        }
    }
}


int
cm_rs_server_open(cm_rs_server_t **out, const char *artifact,
                  const char *version, const cm_movie_t *movies,
                  size_t n_movies, char *err, size_t errlen)
{
    cm_rs_server_t  *s;
    size_t           i;
    cm_movie_t       key, *hit;
    int              rc;

    *out = NULL;
    s = calloc(1, sizeof(*s));
    if (s == NULL) {
        return cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
    }
    rc = cm_rs_model_open(artifact, &s->m, err, errlen);
    if (rc != CM_OK) {
        free(s);
        return rc;
    }
    snprintf(s->version, sizeof(s->version), "%s", version);

    s->cat = calloc(n_movies + 1, sizeof(cm_movie_t));
    s->item_cat = malloc(((size_t) s->m->n_items + 1) * sizeof(int32_t));
    s->pop_order = malloc(((size_t) s->m->n_items + 1) * sizeof(uint32_t));
    s->w = cm_rs_scratch_new();
    if (s->w == NULL || s->cat == NULL || s->item_cat == NULL
        || s->pop_order == NULL || cm_rss_scratch_fit(s->w, s->m, 1) != CM_OK)
    {
        cm_rs_server_free(s);
        return cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
    }
    for (i = 0; i < n_movies; i++) {
        s->cat[i] = movies[i];
        s->cat[i].title = cm_rs_clean_title(movies[i].title != NULL
                                            ? movies[i].title : "");
        s->ncat++;
        if (s->cat[i].title == NULL) {
            cm_rs_server_free(s);
            return cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
        }
    }
    qsort(s->cat, s->ncat, sizeof(cm_movie_t), cm_rss_movie_cmp);

    for (i = 0; i < s->m->n_items; i++) {
        key.id = s->m->item_ext[i];
        hit = s->ncat > 0 ? bsearch(&key, s->cat, s->ncat, sizeof(cm_movie_t),
                                    cm_rss_movie_cmp)
                          : NULL;
        s->item_cat[i] = hit != NULL ? (int32_t) (hit - s->cat) : -1;
        s->pop_order[i] = (uint32_t) i;
    }
    cm_rss_sort_srv = s;
    qsort(s->pop_order, s->m->n_items, sizeof(uint32_t), cm_rss_pop_cmp);
    cm_rss_sort_srv = NULL;

    if (cm_rss_fragments(s) != CM_OK) {
        cm_rs_server_free(s);
        return cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
    }
    /* packed once here, freed with the server: a reload or a canary opens
     * a new server, and a fold-in changes only user vectors */
    (void) cm_rs_server_pack_items(s, cm_lmk_simd());
    *out = s;
    return CM_OK;
}


const char *
cm_rs_server_version(const cm_rs_server_t *s)
{
    return s->version;
}


const cm_rs_model_t *
cm_rs_server_model(const cm_rs_server_t *s)
{
    return s->m;
}


size_t
cm_rs_server_overlay_users(const cm_rs_server_t *s)
{
    return s->nov;
}


static cm_rss_user_t *
cm_rss_find_user(const cm_rs_server_t *s, int32_t user)
{
    size_t lo = 0, hi = s->nov, mid;

    while (lo < hi) {
        mid = (lo + hi) / 2;
        if (s->ov[mid].user == user) {
            return &s->ov[mid];
        }
        if (s->ov[mid].user < user) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return NULL;
}


static json_t *
cm_rss_movie_json(const cm_rs_server_t *s, uint32_t item, int full)
{
    const cm_movie_t  *mv;
    json_t            *o, *g;
    int                i;

    o = json_object();
    if (o == NULL) {
        return NULL;
    }
    json_object_set_new(o, "movie_id", json_integer(s->m->item_ext[item]));
    if (s->item_cat[item] < 0) {
        json_object_set_new(o, "title", json_null());
        if (full) {
            json_object_set_new(o, "year", json_null());
            json_object_set_new(o, "genres", json_array());
        }
        return o;
    }
    mv = &s->cat[s->item_cat[item]];
    json_object_set_new(o, "title", json_string(mv->title));
    if (full) {
        json_object_set_new(o, "year", mv->year > 0 ? json_integer(mv->year)
                                                    : json_null());
        g = json_array();
        for (i = 1; i < CM_ML_N_GENRES && g != NULL; i++) {
            if (mv->genres & (1u << i)) {
                json_array_append_new(g, json_string(cm_ml_genre_name(i)));
            }
        }
        json_object_set_new(o, "genres", g != NULL ? g : json_array());
    }
    return o;
}


static int
cm_rss_passes(const cm_rs_server_t *s, uint32_t item, const cm_rs_rec_req_t *q)
{
    const cm_movie_t *mv;

    if (q->genres == 0 && q->year_min == 0 && q->year_max == 0) {
        return 1;
    }
    if (s->item_cat[item] < 0) {
        return 0;   /* nothing known about it: no filter can match */
    }
    mv = &s->cat[s->item_cat[item]];
    if (q->genres != 0 && (mv->genres & q->genres) == 0) {
        return 0;
    }
    if (q->year_min != 0 && (mv->year == 0 || mv->year < q->year_min)) {
        return 0;
    }
    if (q->year_max != 0 && (mv->year == 0 || mv->year > q->year_max)) {
        return 0;
    }
    return 1;
}


static char *
cm_rss_dump(json_t *o)
{
    char *txt = json_dumps(o, CM_RSS_JSON_FLAGS);

    json_decref(o);
    return txt;
}


static json_t *
cm_rss_popular_list(cm_rs_server_t *s, const cm_rs_rec_req_t *q, int rec)
{
    json_t    *arr, *o;
    uint32_t   i, item, got = 0;

    arr = json_array();
    for (i = 0; i < s->m->n_items && got < q->k && arr != NULL; i++) {
        item = s->pop_order[i];
        if (!cm_rss_passes(s, item, q)) {
            continue;
        }
        o = cm_rss_movie_json(s, item, rec);
        if (o == NULL) {
            continue;
        }
        if (rec) {
            json_object_set_new(o, "score", json_real(s->m->pop[item]));
        } else {
            json_object_set_new(o, "popularity_score",
                                json_real(s->m->pop[item]));
        }
        json_array_append_new(arr, o);
        got++;
    }
    return arr;
}


int
cm_rs_server_popular(cm_rs_server_t *s, uint32_t k, uint32_t genres,
                     char **out)
{
    cm_rs_rec_req_t  q;
    json_t          *o;

    memset(&q, 0, sizeof(q));
    q.k = k < 1 ? 1 : (k > CM_RSS_MAX_K ? CM_RSS_MAX_K : k);
    q.genres = genres;
    o = json_pack("{s:s, s:s, s:o}",
                  "source", genres != 0 ? "genre_popularity" : "popularity",
                  "model_version", s->version,
                  "recommendations", cm_rss_popular_list(s, &q, 0));
    *out = o != NULL ? cm_rss_dump(o) : NULL;
    return *out != NULL ? CM_OK : CM_ENOMEM;
}


/* The user's seen items (dense, ascending) and their (possibly
 * reconstructed) ratings; returns the count. */
static size_t
cm_rss_seen(const cm_rs_server_t *s, int64_t dense, const cm_rss_user_t *ov,
            const uint32_t **items)
{
    if (ov != NULL) {
        *items = ov->items;
        return ov->n;
    }
    if (dense < 0) {
        *items = NULL;
        return 0;
    }
    *items = s->m->seen_idx + s->m->seen_ptr[dense];
    return (size_t) (s->m->seen_ptr[dense + 1] - s->m->seen_ptr[dense]);
}



/* Liked items for explanations: rating >= 4 (or the best ones). */
static size_t
cm_rss_liked(const cm_rss_row_t *row, const cm_rss_user_t *ov,
             const uint32_t *seen, size_t nseen, uint32_t *liked)
{
    size_t  i, n = 0;
    float   r;

    for (i = 0; i < nseen && n < CM_RSS_BECAUSE_MAX; i++) {
        r = ov != NULL ? ov->ratings[i]
                       : cm_rs_fused_score(row->v, row->base, row->bias,
                                           seen[i]);
        if (r >= CM_RSS_LIKED) {
            liked[n++] = seen[i];
        }
    }
    return n;
}


/* ---- answers as text ------------------------------------------------------
 * The recommend answer is written straight into the scratch's buffer: each
 * movie's JSON is made once at open (with jansson, so the text is what
 * jansson would write) and copied per answer; only the scores are printed
 * per request, the way jansson prints a real. */

static void
cm_rss_put(cm_rss_buf_t *w, const char *p, size_t n)
{
    size_t  cap;
    char   *b;

    if (w->len + n + 1 > w->cap) {
        cap = w->cap ? w->cap : 4096;
        while (cap < w->len + n + 1) {
            cap *= 2;
        }
        b = realloc(w->buf, cap);
        if (b == NULL) {
            w->oom = 1;
            return;
        }
        w->buf = b;
        w->cap = cap;
    }
    memcpy(w->buf + w->len, p, n);
    w->len += n;
}


#define cm_rss_lit(w, s)  cm_rss_put(w, s, sizeof(s) - 1)


/* "%lld" without a format to parse (ten ids per answer, in the log) */
static void
cm_rss_put_int(cm_rss_buf_t *w, long long v)
{
    char                b[24], *p = b + sizeof(b);
    unsigned long long  u = v < 0 ? 0ull - (unsigned long long) v
                                  : (unsigned long long) v;

    do {
        *--p = (char) ('0' + u % 10);
        u /= 10;
    } while (u != 0);
    if (v < 0) {
        *--p = '-';
    }
    cm_rss_put(w, p, (size_t) (b + sizeof(b) - p));
}


/* jansson's JSON_REAL_PRECISION(6): "%.6g", a ".0" when that reads as an
 * integer, and no '+' or leading zeros in an exponent.  strfromd: the same
 * digits as snprintf without parsing a format per call.  b: 32 bytes;
 * returns the length. */
static size_t
cm_rss_fmt_real(char *b, double v)
{
    char  *e, *start, *end;
    int    n = strfromd(b, 30, "%.6g", v);

    if (n < 0 || n >= 30) {
        memcpy(b, "0.0", 4);
        return 3;
    }
    if (strchr(b, '.') == NULL && strchr(b, 'e') == NULL) {
        memcpy(b + n, ".0", 3);
        n += 2;
    }
    e = strchr(b, 'e');
    if (e != NULL) {
        start = e + 1;
        if (*start == '-') {
            start++;
        }
        end = start;
        if (*end == '+') {
            end++;
        }
        while (*end == '0' && end[1] != '\0') {
            end++;
        }
        if (end != start) {
            memmove(start, end, strlen(end) + 1);
            n = (int) strlen(b);
        }
    }
    return (size_t) n;
}


/* the answer's i-th score: formatted once, written again by the log */
static void
cm_rss_put_score(cm_rs_scratch_t *w, size_t i, double v)
{
    w->sc[i] = v;
    w->scl[i] = (uint8_t) cm_rss_fmt_real(w->sct[i], v);
    cm_rss_put(&w->a, w->sct[i], w->scl[i]);
}


/* the answer as a new string: "<log members>\n<answer>" when the request
 * asked for the log members */
static char *
cm_rss_take(cm_rs_scratch_t *w, const cm_rs_rec_req_t *q)
{
    char    *t;
    size_t   pre = q->log_members ? w->l.len + 1 : 0;

    if (w->a.oom || (q->log_members && w->l.oom)) {
        return NULL;
    }
    t = malloc(pre + w->a.len + 1);
    if (t != NULL) {
        if (pre > 0) {
            memcpy(t, w->l.buf, w->l.len);
            t[w->l.len] = '\n';
        }
        memcpy(t + pre, w->a.buf, w->a.len);
        t[pre + w->a.len] = '\0';
    }
    return t;
}


/* an item's JSON without its closing brace */
static void
cm_rss_put_item(cm_rss_buf_t *w, const cm_rs_server_t *s, uint32_t item,
                int full)
{
    const uint32_t *off = full ? s->frag_full : s->frag_short;

    cm_rss_put(w, s->frag + off[item], off[item + 1] - off[item]);
}


static int
cm_rss_fragments(cm_rs_server_t *s)
{
    size_t    cap = 0, len = 0, n = s->m->n_items, i, l;
    int       full;
    char     *txt, *f;
    json_t   *o;

    s->frag_full = malloc((n + 1) * sizeof(uint32_t));
    s->frag_short = malloc((n + 1) * sizeof(uint32_t));
    o = json_string(s->version);
    s->version_json = o != NULL ? json_dumps(o, JSON_ENCODE_ANY
                                                | CM_RSS_JSON_FLAGS)
                                : NULL;
    json_decref(o);
    if (s->frag_full == NULL || s->frag_short == NULL
        || s->version_json == NULL)
    {
        return CM_ENOMEM;
    }
    for (full = 1; full >= 0; full--) {
        for (i = 0; i <= n; i++) {
            (full ? s->frag_full : s->frag_short)[i] = (uint32_t) len;
            if (i == n) {
                break;
            }
            o = cm_rss_movie_json(s, (uint32_t) i, full);
            txt = o != NULL ? cm_rss_dump(o) : NULL;
            if (txt == NULL) {
                return CM_ENOMEM;
            }
            l = strlen(txt) - 1;   /* without the '}' */
            if (len + l > cap) {
                cap = cap ? cap * 2 : 64 * 1024;
                if (cap > UINT32_MAX) {
                    free(txt);
                    return CM_ENOMEM;
                }
                f = realloc(s->frag, cap);
                if (f == NULL) {
                    free(txt);
                    return CM_ENOMEM;
                }
                s->frag = f;
            }
            memcpy(s->frag + len, txt, l);
            len += l;
            free(txt);
        }
    }
    return CM_OK;
}


/* The fallback list of a recommendation: the most popular items that
 * pass the filters, each with its popularity as the score. */
static void
cm_rss_put_popular(cm_rs_scratch_t *w, const cm_rs_server_t *s,
                   const cm_rs_rec_req_t *q)
{
    uint32_t  i, item, got = 0;
    double    sc;

    for (i = 0; i < s->m->n_items && got < q->k; i++) {
        item = s->pop_order[i];
        if (!cm_rss_passes(s, item, q)) {
            continue;
        }
        if (got > 0) {
            cm_rss_lit(&w->a, ",");
        }
        sc = (double) (float) s->m->pop[item];
        cm_rss_put_item(&w->a, s, item, 1);
        cm_rss_lit(&w->a, ",\"score\":");
        cm_rss_put_score(w, got, sc);
        cm_rss_lit(&w->a, "}");
        w->ids[got] = s->m->item_ext[item];
        got++;
    }
    w->n = got;
}


/* The request log's members of an answer (the nginx module's request log
 * stores them as they are): model_version, is_fallback, fallback_reason
 * and detail {endpoint, ids, scores, rating_user_id}. */
static void
cm_rss_put_log(cm_rs_scratch_t *w, const cm_rs_server_t *s,
               const cm_rs_rec_req_t *q, const char *reason)
{
    cm_rss_buf_t  *l = &w->l;
    size_t         i;

    l->len = 0;
    l->oom = 0;
    cm_rss_lit(l, "\"model_version\":");
    cm_rss_put(l, s->version_json, strlen(s->version_json));
    if (reason != NULL) {
        cm_rss_lit(l, ",\"is_fallback\":true,\"fallback_reason\":\"");
        cm_rss_put(l, reason, strlen(reason));
        cm_rss_lit(l, "\"");
    } else {
        cm_rss_lit(l, ",\"is_fallback\":false,\"fallback_reason\":null");
    }
    cm_rss_lit(l, ",\"detail\":{\"endpoint\":\"recommend\",\"ids\":[");
    for (i = 0; i < w->n; i++) {
        if (i > 0) {
            cm_rss_lit(l, ",");
        }
        cm_rss_put_int(l, w->ids[i]);
    }
    cm_rss_lit(l, "],\"scores\":[");
    for (i = 0; i < w->n; i++) {
        if (i > 0) {
            cm_rss_lit(l, ",");
        }
        cm_rss_put(l, w->sct[i], w->scl[i]);
    }
    cm_rss_lit(l, "],\"rating_user_id\":");
    if (q->user != 0) {
        cm_rss_put_int(l, q->user);
    } else {
        cm_rss_lit(l, "null");
    }
    cm_rss_lit(l, "}");
}


static int
cm_rss_filter_pass(const void *ctx, uint32_t item)
{
    const cm_rss_filter_t *f = ctx;

    return cm_rss_passes(f->s, item, f->q);
}


static char *
cm_rss_recommend_one(const cm_rs_server_t *s, cm_rs_scratch_t *w,
                     const cm_rs_rec_req_t *q, const cm_rss_row_t *row,
                     int64_t dense, const cm_rss_user_t *ov)
{
    const uint32_t  *seen;
    size_t           nseen, i, j, n, nliked;
    uint32_t         liked[CM_RSS_BECAUSE_MAX], best;
    float            sim, best_sim, *dots;
    const char      *reason = NULL;
    cm_rss_buf_t    *a = &w->a;
    cm_rss_filter_t  flt;
    int              filtered;

    nseen = cm_rss_seen(s, dense, ov, &seen);
    if (q->user == 0) {
        reason = "no_user";
    } else if (dense < 0 && ov == NULL) {
        reason = "unknown_user";
    } else if (nseen == 0) {
        reason = "no_ratings";
    } else if (s->m->algo == CM_RS_POP) {
        reason = "popularity_model";
    }

    a->len = 0;
    a->oom = 0;
    w->n = 0;
    cm_rss_lit(a, "{\"user_id\":");
    if (q->user != 0) {
        cm_rss_put_int(a, q->user);
    } else {
        cm_rss_lit(a, "null");
    }
    cm_rss_lit(a, ",\"model_version\":");
    cm_rss_put(a, s->version_json, strlen(s->version_json));

    if (reason != NULL) {
        cm_rss_lit(a, ",\"is_fallback\":true,\"fallback_reason\":\"");
        cm_rss_put(a, reason, strlen(reason));
        cm_rss_lit(a, "\",\"recommendations\":[");
        cm_rss_put_popular(w, s, q);
        cm_rss_lit(a, "]}");
        if (q->log_members) {
            cm_rss_put_log(w, s, q, reason);
        }
        return cm_rss_take(w, q);
    }

    nliked = s->m->factors > 0
             ? cm_rss_liked(row, ov, seen, nseen, liked) : 0;

    /* one scan: biases, exclusions and filters (only for the items that
     * beat the heap's root) */
    filtered = q->genres != 0 || q->year_min != 0 || q->year_max != 0;
    flt.s = s;
    flt.q = q;
    n = cm_rs_topk_fused(row->v, row->base, row->bias, s->m->n_items,
                         q->exclude_seen ? seen : NULL,
                         q->exclude_seen ? nseen : 0,
                         filtered ? cm_rss_filter_pass : NULL, &flt,
                         q->k < CM_RSS_MAX_K ? q->k : CM_RSS_MAX_K,
                         w->tk_idx, w->tk_score);

    /* explanations: every (recommended, liked) dot product in one SGEMM
     * (n x k) . (k x nliked), then divided by the two norms */
    dots = NULL;
    if (nliked > 0 && n > 0) {
        size_t   f = s->m->factors;
        float   *rec = w->why, *lk = w->why + n * f;

        dots = lk + nliked * f;
        for (i = 0; i < n; i++) {
            memcpy(rec + i * f, s->m->V + (size_t) w->tk_idx[i] * f,
                   f * sizeof(float));
        }
        for (j = 0; j < nliked; j++) {
            memcpy(lk + j * f, s->m->V + (size_t) liked[j] * f,
                   f * sizeof(float));
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int) n,
                    (int) nliked, (int) f, 1.0f, rec, (int) f, lk, (int) f,
                    0.0f, dots, (int) nliked);
    }

    cm_rss_lit(a, ",\"is_fallback\":false,\"fallback_reason\":null,"
               "\"recommendations\":[");
    for (i = 0; i < n; i++) {
        if (isinf(w->tk_score[i])) {
            break;   /* fewer than k items pass the filters */
        }
        if (i > 0) {
            cm_rss_lit(a, ",");
        }
        cm_rss_put_item(a, s, w->tk_idx[i], 1);
        cm_rss_lit(a, ",\"score\":");
        cm_rss_put_score(w, i, (double) w->tk_score[i]);
        w->ids[i] = s->m->item_ext[w->tk_idx[i]];
        w->n = i + 1;
        best = UINT32_MAX;
        best_sim = -2.0f;
        for (j = 0; dots != NULL && j < nliked; j++) {
            float den = s->m->v_norm[w->tk_idx[i]] * s->m->v_norm[liked[j]];

            if (liked[j] == w->tk_idx[i]) {
                continue;
            }
            sim = den > 0.0f ? dots[i * nliked + j] / den : 0.0f;
            if (sim > best_sim) {
                best_sim = sim;
                best = liked[j];
            }
        }
        if (best != UINT32_MAX) {
            cm_rss_lit(a, ",\"because\":");
            cm_rss_put_item(a, s, best, 0);
            cm_rss_lit(a, "}");
        }
        cm_rss_lit(a, "}");
    }
    cm_rss_lit(a, "]}");
    if (q->log_members) {
        cm_rss_put_log(w, s, q, NULL);
    }
    return cm_rss_take(w, q);
}


int
cm_rs_server_recommend_with(const cm_rs_server_t *s, cm_rs_scratch_t *w,
                            const cm_rs_rec_req_t *reqs, size_t n,
                            char **out)
{
    size_t               i, nb = 0, ni = s->m->n_items;
    uint32_t            *batch;
    int64_t             *dense;
    const cm_rss_user_t *ov;
    const cm_rs_model_t *m = s->m;
    cm_rss_row_t         row;
    int                  fused, rc;

    batch = malloc((n + 1) * sizeof(uint32_t));
    dense = malloc((n + 1) * sizeof(int64_t));
    if (batch == NULL || dense == NULL
        || cm_rss_scratch_fit(w, s->m, n + 1) != CM_OK)
    {
        free(batch);
        free(dense);
        return CM_ENOMEM;
    }

    /* one row per request; dataset users share one SGEMM */
    for (i = 0; i < n; i++) {
        dense[i] = reqs[i].user > 0
                   ? cm_rs_find_id(s->m->user_ext, s->m->n_users, reqs[i].user)
                   : -1;
        if (dense[i] >= 0 && cm_rss_find_user(s, reqs[i].user) == NULL) {
            batch[nb++] = (uint32_t) dense[i];
        }
    }
    /* rows 0..nb-1 of scratch: the batch's scores; row n: a folded-in
     * user's.  Packed: dot products only, the top-K scan adds the biases
     * (the same sums in the same order), so no pass over the rows and no
     * copy of them */
    fused = s->vpack != NULL;
    if (nb > 0) {
        rc = fused ? cm_rss_packed_rows(s, batch, nb, w->scores, 0)
                   : cm_rs_server_score_users(s, batch, nb, w->scores);
        if (rc != CM_OK) {
            free(batch);
            free(dense);
            return CM_ERR;   /* no scores: every request of the batch fails */
        }
    }

    nb = 0;
    for (i = 0; i < n; i++) {
        float *work = w->scores + n * ni;

        row.v = work;
        row.base = 0.0f;
        row.bias = NULL;
        ov = reqs[i].user > 0 ? cm_rss_find_user(s, reqs[i].user) : NULL;
        if (ov != NULL) {
            if (fused) {
                cm_lmk_linear(work, ov->x, &s->vpm, 1);
                row.base = m->mean + ov->bias;
                row.bias = m->algo != CM_RS_IALS ? m->bi : NULL;
            } else {
                cm_rs_server_score_vector(s, ov->x, ov->bias, work);
            }
        } else if (dense[i] >= 0) {
            row.v = w->scores + nb * ni;
            if (fused && m->algo != CM_RS_IALS) {
                row.base = m->mean + m->bu[dense[i]];
                row.bias = m->bi;
            }
            nb++;
        }
        /* no user: the answer is the popular list, no scores are read */
        out[i] = cm_rss_recommend_one(s, w, &reqs[i], &row, dense[i], ov);
    }
    free(batch);
    free(dense);
    return CM_OK;
}


int
cm_rs_server_recommend_batch(cm_rs_server_t *s, const cm_rs_rec_req_t *reqs,
                             size_t n, char **out)
{
    return cm_rs_server_recommend_with(s, s->w, reqs, n, out);
}


/* ---- the answer cache ---------------------------------------------------- */

int
cm_rs_server_cache_size(cm_rs_server_t *s, size_t entries)
{
    size_t n = 2;

    if (entries == 0) {
        cm_rss_cache_clear(s);
        return CM_OK;
    }
    while (n < entries && n < ((size_t) 1 << 24)) {
        n *= 2;
    }
    if (n == s->ncache) {
        return CM_OK;
    }
    cm_rss_cache_clear(s);
    s->cache = calloc(n, sizeof(cm_rss_entry_t));
    if (s->cache == NULL) {
        return CM_ENOMEM;
    }
    s->ncache = n;
    return CM_OK;
}


static int
cm_rss_same_req(const cm_rs_rec_req_t *a, const cm_rs_rec_req_t *b)
{
    return a->user == b->user && a->k == b->k
           && (a->exclude_seen != 0) == (b->exclude_seen != 0)
           && (a->log_members != 0) == (b->log_members != 0)
           && a->genres == b->genres && a->year_min == b->year_min
           && a->year_max == b->year_max;
}


/* the first of the two entries of the request's set */
static size_t
cm_rss_cache_set(const cm_rs_server_t *s, const cm_rs_rec_req_t *q)
{
    uint64_t h;

    h = (uint64_t) (uint32_t) q->user * 0x9E3779B97F4A7C15ull;
    h ^= (((uint64_t) q->k << 2) | ((uint64_t) (q->log_members != 0) << 1)
          | (q->exclude_seen != 0))
         * 0xC2B2AE3D27D4EB4Full;
    h ^= (((uint64_t) q->genres << 32)
          ^ (uint64_t) (uint32_t) (q->year_min * 4099 + q->year_max))
         * 0x165667B19E3779F9ull;
    h ^= h >> 29;
    h *= 0xBF58476D1CE4E5B9ull;
    h ^= h >> 32;
    return (size_t) (h & (s->ncache / 2 - 1)) * 2;
}


const char *
cm_rs_server_cache_get(cm_rs_server_t *s, const cm_rs_rec_req_t *q,
                       size_t *len)
{
    size_t           set, i;
    cm_rss_entry_t  *e;

    if (s->cache == NULL) {
        return NULL;
    }
    set = cm_rss_cache_set(s, q);
    for (i = set; i < set + 2; i++) {
        e = &s->cache[i];
        if (e->json != NULL && cm_rss_same_req(&e->q, q)) {
            e->used = ++s->tick;
            s->cache_hits++;
            *len = e->len;
            return e->json;
        }
    }
    s->cache_misses++;
    return NULL;
}


void
cm_rs_server_cache_put(cm_rs_server_t *s, const cm_rs_rec_req_t *q,
                       char *json)
{
    size_t           set, i, victim, len;
    cm_rss_entry_t  *e;

    if (s->cache == NULL || json == NULL) {
        free(json);
        return;
    }
    set = cm_rss_cache_set(s, q);
    victim = set;
    for (i = set; i < set + 2; i++) {
        e = &s->cache[i];
        if (e->json == NULL || cm_rss_same_req(&e->q, q)) {
            victim = i;
            break;
        }
        if (e->used < s->cache[victim].used) {
            victim = i;
        }
    }
    e = &s->cache[victim];
    len = strlen(json);
    if (s->cache_bytes - (e->json != NULL ? e->len : 0) + len
        > CM_RSS_CACHE_BYTES)
    {
        free(json);   /* full: answers of k=100 are ~25 KB each */
        return;
    }
    if (e->json != NULL) {
        s->cache_bytes -= e->len;
        free(e->json);
    } else {
        s->cache_used++;
    }
    e->q = *q;
    e->json = json;
    e->len = len;
    e->used = ++s->tick;
    s->cache_bytes += len;
}


void
cm_rs_server_cache_stats(const cm_rs_server_t *s, uint64_t *hits,
                         uint64_t *misses)
{
    *hits = s->cache_hits;
    *misses = s->cache_misses;
}


size_t
cm_rs_server_cache_entries(const cm_rs_server_t *s)
{
    return s->cache_used;
}


/* a fold-in changes every answer of that user */
static void
cm_rss_cache_forget(cm_rs_server_t *s, int32_t user)
{
    size_t i;

    for (i = 0; i < s->ncache; i++) {
        if (s->cache[i].json != NULL && s->cache[i].q.user == user) {
            s->cache_bytes -= s->cache[i].len;
            free(s->cache[i].json);
            s->cache[i].json = NULL;
            s->cache_used--;
        }
    }
}


int
cm_rs_server_similar(cm_rs_server_t *s, int32_t movie, uint32_t k,
                     char **out, char *err, size_t errlen)
{
    int64_t   item;
    size_t    n = 0, i;
    json_t   *o, *arr, *r;
    int       rc;

    *out = NULL;
    item = cm_rs_find_id(s->m->item_ext, s->m->n_items, movie);
    if (item < 0) {
        return cm_seterr(err, errlen, CM_ENOTFOUND, "movie %d is not known"
                         " to model version %s", movie, s->version);
    }
    if (s->m->factors == 0) {
        return cm_seterr(err, errlen, CM_EINVAL, "model version %s has no"
                         " item factors", s->version);
    }
    k = k < 1 ? 1 : (k > CM_RSS_MAX_K ? CM_RSS_MAX_K : k);
    rc = cm_rss_scratch_fit(s->w, s->m, 1);
    if (rc == CM_OK) {
        rc = cm_rs_similar_items(s->m, (uint32_t) item, k, s->w->tk_idx,
                                 s->w->tk_score, &n);
    }
    if (rc != CM_OK) {
        return cm_seterr(err, errlen, rc, "similarity failed");
    }
    arr = json_array();
    for (i = 0; i < n && arr != NULL; i++) {
        r = cm_rss_movie_json(s, s->w->tk_idx[i], 0);
        if (r != NULL) {
            json_object_set_new(r, "score", json_real(s->w->tk_score[i]));
            json_array_append_new(arr, r);
        }
    }
    o = cm_rss_movie_json(s, (uint32_t) item, 0);
    if (o == NULL) {
        json_decref(arr);
        return CM_ENOMEM;
    }
    json_object_set_new(o, "model_version", json_string(s->version));
    json_object_set_new(o, "similar_items", arr != NULL ? arr : json_array());
    *out = cm_rss_dump(o);
    return *out != NULL ? CM_OK : CM_ENOMEM;
}


int
cm_rs_server_predict(cm_rs_server_t *s, int32_t user, const int32_t *movies,
                     size_t n, char **out, char *err, size_t errlen)
{
    int64_t         dense, item;
    size_t          i;
    uint32_t        u;
    float          *row;
    json_t         *o, *arr, *p;
    cm_rss_user_t  *ov;
    int             fallback;

    *out = NULL;
    if (n == 0 || n > CM_RSS_MAX_PREDICT) {
        return cm_seterr(err, errlen, CM_EINVAL, "movie_ids must hold 1..%d"
                         " ids", CM_RSS_MAX_PREDICT);
    }
    if (cm_rss_scratch_fit(s->w, s->m, 1) != CM_OK) {
        return CM_ENOMEM;
    }
    row = s->w->scores;
    ov = cm_rss_find_user(s, user);
    dense = cm_rs_find_id(s->m->user_ext, s->m->n_users, user);
    fallback = ov == NULL && dense < 0;
    if (ov != NULL) {
        cm_rs_server_score_vector(s, ov->x, ov->bias, row);
    } else if (dense >= 0) {
        u = (uint32_t) dense;
        cm_rs_server_score_users(s, &u, 1, row);
    }
    arr = json_array();
    for (i = 0; i < n && arr != NULL; i++) {
        item = cm_rs_find_id(s->m->item_ext, s->m->n_items, movies[i]);
        p = json_object();
        if (p == NULL) {
            continue;
        }
        json_object_set_new(p, "movie_id", json_integer(movies[i]));
        if (item < 0 || s->m->algo == CM_RS_POP || s->m->algo == CM_RS_IALS) {
            json_object_set_new(p, "rating", json_null());
        } else {
            float r = fallback ? s->m->mean + s->m->bi[item] : row[item];

            r = r < 0.5f ? 0.5f : (r > 5.0f ? 5.0f : r);
            json_object_set_new(p, "rating", json_real(r));
        }
        json_array_append_new(arr, p);
    }
    o = json_pack("{s:i, s:s, s:b, s:o}", "user_id", (json_int_t) user,
                  "model_version", s->version, "is_fallback", fallback,
                  "predictions", arr != NULL ? arr : json_array());
    *out = o != NULL ? cm_rss_dump(o) : NULL;
    return *out != NULL ? CM_OK : CM_ENOMEM;
}



static cm_rss_user_t *
cm_rss_add_user(cm_rs_server_t *s, int32_t user)
{
    cm_rss_user_t  *ov, u;
    size_t          pos;

    if (s->nov == s->ovcap) {
        size_t cap = s->ovcap ? s->ovcap * 2 : 16;

        ov = realloc(s->ov, cap * sizeof(cm_rss_user_t));
        if (ov == NULL) {
            return NULL;
        }
        s->ov = ov;
        s->ovcap = cap;
    }
    memset(&u, 0, sizeof(u));
    u.user = user;
    u.x = calloc(s->m->factors + 1, sizeof(float));
    if (u.x == NULL) {
        return NULL;
    }
    for (pos = 0; pos < s->nov && s->ov[pos].user < user; pos++) {
        /* keep the overlay sorted */
    }
    memmove(&s->ov[pos + 1], &s->ov[pos], (s->nov - pos) * sizeof(u));
    s->ov[pos] = u;
    s->nov++;
    return &s->ov[pos];
}


static int
cm_rss_set_rating(cm_rss_user_t *u, uint32_t item, float r)
{
    size_t    lo = 0, hi = u->n, mid;
    uint32_t *ni;
    float    *nr;

    while (lo < hi) {
        mid = (lo + hi) / 2;
        if (u->items[mid] == item) {
            u->ratings[mid] = r;
            return CM_OK;
        }
        if (u->items[mid] < item) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if (u->n >= CM_RSS_MAX_FOLD) {
        return CM_EINVAL;
    }
    if (u->n == u->cap) {
        uint32_t cap = u->cap ? u->cap * 2 : 16;

        ni = realloc(u->items, cap * sizeof(uint32_t));
        if (ni == NULL) {
            return CM_ENOMEM;
        }
        u->items = ni;
        nr = realloc(u->ratings, cap * sizeof(float));
        if (nr == NULL) {
            return CM_ENOMEM;
        }
        u->ratings = nr;
        u->cap = cap;
    }
    memmove(&u->items[lo + 1], &u->items[lo], (u->n - lo) * sizeof(uint32_t));
    memmove(&u->ratings[lo + 1], &u->ratings[lo], (u->n - lo) * sizeof(float));
    u->items[lo] = item;
    u->ratings[lo] = r;
    u->n++;
    return CM_OK;
}


int
cm_rs_server_fold_in(cm_rs_server_t *s, int32_t user, const int32_t *movies,
                     const float *ratings, size_t n, char *err, size_t errlen)
{
    cm_rss_user_t  *u;
    int64_t         dense, item;
    size_t          i, nseen;
    uint32_t        d;
    float          *row;
    int             rc;

    if (user <= 0) {
        return cm_seterr(err, errlen, CM_EINVAL, "user id must be positive");
    }
    if (s->m->factors == 0) {
        return cm_seterr(err, errlen, CM_EINVAL, "model version %s has no"
                         " factors to fold in", s->version);
    }
    for (i = 0; i < n; i++) {
        if (!(ratings[i] >= 0.5f && ratings[i] <= 5.0f)) {
            return cm_seterr(err, errlen, CM_EINVAL, "rating out of range");
        }
    }
    cm_rss_cache_forget(s, user);
    u = cm_rss_find_user(s, user);
    if (u == NULL) {
        u = cm_rss_add_user(s, user);
        if (u == NULL) {
            return cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
        }
        /* a dataset user keeps its training items; the artifact holds no
         * rating values, so the model's reconstruction stands in */
        dense = cm_rs_find_id(s->m->user_ext, s->m->n_users, user);
        if (dense >= 0) {
            row = malloc((size_t) s->m->n_items * sizeof(float) + 1);
            if (row == NULL) {
                return cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
            }
            d = (uint32_t) dense;
            cm_rs_server_score_users(s, &d, 1, row);
            nseen = (size_t) (s->m->seen_ptr[d + 1] - s->m->seen_ptr[d]);
            for (i = 0; i < nseen; i++) {
                uint32_t it = s->m->seen_idx[s->m->seen_ptr[d] + i];
                float    r = row[it] < 0.5f ? 0.5f
                             : (row[it] > 5.0f ? 5.0f : row[it]);

                if (cm_rss_set_rating(u, it, r) != CM_OK) {
                    break;
                }
            }
            free(row);
        }
    }
    for (i = 0; i < n; i++) {
        item = cm_rs_find_id(s->m->item_ext, s->m->n_items, movies[i]);
        if (item < 0) {
            continue;   /* a movie the model never saw carries no signal */
        }
        rc = cm_rss_set_rating(u, (uint32_t) item, ratings[i]);
        if (rc != CM_OK) {
            return cm_seterr(err, errlen, rc, "too many ratings for user %d",
                             user);
        }
    }
    if (u->n == 0) {
        return CM_OK;
    }
    rc = cm_rs_fold_in(s->m, u->items, u->ratings, u->n, 0.0f, u->x,
                       &u->bias);
    return rc == CM_OK ? CM_OK
                       : cm_seterr(err, errlen, rc, "fold-in solve failed");
}

/*
 * movielens.c: MovieLens readers (CSV, ml-100k tab/pipe, ml-1m "::").
 *
 * One pass over the buffer, line by line; fields are (pointer, length)
 * views into the buffer except where unquoting or Latin-1 conversion needs
 * a copy, which goes to a scratch buffer reused across lines.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cinematch/common.h"
#include "cinematch/movielens.h"

#define CM_ML_MAX_FIELDS  32
#define CM_ML_MAX_FILE    ((size_t) 4 << 30)   /* 4 GiB: ml-32m is 0.9 GiB */

typedef struct {
    const char  *p;
    size_t       len;
} cm_ml_field_t;

typedef struct {
    char    *p;
    size_t   len;
    size_t   cap;
} cm_ml_buf_t;

typedef struct {
    const char    *name;
    cm_ml_opts_t  *opts;
    cm_ml_opts_t   dflt;
    size_t         line;
    char          *err;
    size_t         errlen;
} cm_ml_ctx_t;


static const char *cm_ml_genres[CM_ML_N_GENRES] = {
    "(no genres listed)", "Action", "Adventure", "Animation", "Children",
    "Comedy", "Crime", "Documentary", "Drama", "Fantasy", "Film-Noir",
    "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi", "Thriller",
    "War", "Western"
};

/* ml-100k u.item flag order -> our genre bits. */
static const int cm_ml_100k_genres[19] = {
    CM_ML_G_NONE, CM_ML_G_ACTION, CM_ML_G_ADVENTURE, CM_ML_G_ANIMATION,
    CM_ML_G_CHILDREN, CM_ML_G_COMEDY, CM_ML_G_CRIME, CM_ML_G_DOCUMENTARY,
    CM_ML_G_DRAMA, CM_ML_G_FANTASY, CM_ML_G_FILM_NOIR, CM_ML_G_HORROR,
    CM_ML_G_MUSICAL, CM_ML_G_MYSTERY, CM_ML_G_ROMANCE, CM_ML_G_SCI_FI,
    CM_ML_G_THRILLER, CM_ML_G_WAR, CM_ML_G_WESTERN
};


void
cm_ml_report_stderr(void *ctx, const char *file, size_t line,
    const char *reason)
{
    fprintf(stderr, "%s:%zu: %s\n", file, line, reason);
}


const char *
cm_ml_genre_name(int g)
{
    return (g >= 0 && g < CM_ML_N_GENRES) ? cm_ml_genres[g] : NULL;
}


int
cm_ml_genre_parse(const char *s, size_t len)
{
    int i;

    for (i = 0; i < CM_ML_N_GENRES; i++) {
        if (strlen(cm_ml_genres[i]) == len
            && memcmp(cm_ml_genres[i], s, len) == 0)
        {
            return i;
        }
    }
    if (len == 10 && memcmp(s, "Children's", 10) == 0) {
        return CM_ML_G_CHILDREN;                        /* ml-1m */
    }
    return -1;
}


size_t
cm_ml_genres_format(uint32_t mask, char *buf, size_t len)
{
    size_t  n = 0, l;
    int     g;

    if (len == 0) {
        return 0;
    }
    buf[0] = '\0';
    for (g = 0; g < CM_ML_N_GENRES; g++) {
        if (!(mask & (1u << g))) {
            continue;
        }
        l = strlen(cm_ml_genres[g]);
        if (n + (n ? 1 : 0) + l + 1 > len) {
            break;
        }
        if (n) {
            buf[n++] = '|';
        }
        memcpy(buf + n, cm_ml_genres[g], l);
        n += l;
        buf[n] = '\0';
    }
    return n;
}


int32_t
cm_ml_title_year(const char *t, size_t len)
{
    size_t   i;
    int32_t  y;

    while (len > 0 && (t[len - 1] == ' ' || t[len - 1] == '\t')) {
        len--;
    }
    if (len < 6 || t[len - 1] != ')') {
        return 0;
    }
    /* find the '(' that opens the last group */
    for (i = len - 1; i > 0; i--) {
        if (t[i - 1] == '(') {
            break;
        }
    }
    if (i == 0 || len - 1 - i < 4) {
        return 0;
    }
    for (y = 0; y < 4; y++) {
        if (t[i + (size_t) y] < '0' || t[i + (size_t) y] > '9') {
            return 0;
        }
    }
    /* "(1995)", or a range "(2006-2007)" / "(2006–2007)" / "(2006- )" */
    if (len - 1 - i > 4 && t[i + 4] != '-' && (unsigned char) t[i + 4] != 0xe2)
    {
        return 0;
    }
    y = (t[i] - '0') * 1000 + (t[i + 1] - '0') * 100 + (t[i + 2] - '0') * 10
        + (t[i + 3] - '0');
    return (y >= 1800 && y <= 2200) ? y : 0;
}


const char *
cm_ml_format_name(cm_ml_format_t fmt)
{
    switch (fmt) {
    case CM_ML_LATEST: return "ml-latest";
    case CM_ML_100K:   return "ml-100k";
    case CM_ML_1M:     return "ml-1m";
    default:           return "auto";
    }
}


int
cm_ml_format_parse(const char *s, cm_ml_format_t *fmt)
{
    if (strcmp(s, "auto") == 0) {
        *fmt = CM_ML_AUTO;
    } else if (strcmp(s, "ml-latest") == 0 || strcmp(s, "ml-latest-small") == 0
               || strcmp(s, "ml-25m") == 0 || strcmp(s, "ml-32m") == 0
               || strcmp(s, "csv") == 0)
    {
        *fmt = CM_ML_LATEST;
    } else if (strcmp(s, "ml-100k") == 0) {
        *fmt = CM_ML_100K;
    } else if (strcmp(s, "ml-1m") == 0) {
        *fmt = CM_ML_1M;
    } else {
        return CM_EINVAL;
    }
    return CM_OK;
}


const char *
cm_ml_ratings_name(cm_ml_format_t fmt)
{
    switch (fmt) {
    case CM_ML_LATEST: return "ratings.csv";
    case CM_ML_100K:   return "u.data";
    case CM_ML_1M:     return "ratings.dat";
    default:           return NULL;
    }
}


const char *
cm_ml_movies_name(cm_ml_format_t fmt)
{
    switch (fmt) {
    case CM_ML_LATEST: return "movies.csv";
    case CM_ML_100K:   return "u.item";
    case CM_ML_1M:     return "movies.dat";
    default:           return NULL;
    }
}


/* ---- small helpers ---------------------------------------------------- */

static int
cm_ml_buf_reserve(cm_ml_buf_t *b, size_t need)
{
    char   *p;
    size_t  cap;

    if (need <= b->cap && b->p != NULL) {
        return CM_OK;
    }
    cap = b->cap ? b->cap : 256;
    while (cap < need) {
        cap *= 2;
    }
    p = realloc(b->p, cap);
    if (p == NULL) {
        return CM_ENOMEM;
    }
    b->p = p;
    b->cap = cap;
    return CM_OK;
}


/* Report a malformed line; CM_EFORMAT in strict mode, else CM_OK. */
static int
cm_ml_bad(cm_ml_ctx_t *c, const char *reason)
{
    c->opts->n_bad++;
    if (c->opts->on_bad != NULL) {
        c->opts->on_bad(c->opts->ctx, c->name, c->line, reason);
    }
    if (c->opts->strict) {
        return cm_seterr(c->err, c->errlen, CM_EFORMAT, "%s:%zu: %s",
                         c->name, c->line, reason);
    }
    return CM_OK;
}


static int
cm_ml_parse_i64(const char *p, size_t len, int64_t lo, int64_t hi,
    int64_t *out)
{
    size_t   i = 0;
    int      neg = 0;
    int64_t  v = 0;

    if (len > 0 && (p[0] == '-' || p[0] == '+')) {
        neg = p[0] == '-';
        i = 1;
    }
    if (i == len || len - i > 18) {
        return CM_EINVAL;
    }
    for (; i < len; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return CM_EINVAL;
        }
        v = v * 10 + (p[i] - '0');
    }
    if (neg) {
        v = -v;
    }
    if (v < lo || v > hi) {
        return CM_EINVAL;
    }
    *out = v;
    return CM_OK;
}


/* Plain decimal "4", "3.5", "4.0"; no exponent, no sign, no locale. */
static int
cm_ml_parse_rating(const char *p, size_t len, float *out)
{
    size_t  i = 0;
    double  v = 0.0, scale = 1.0;
    int     digits = 0;

    for (; i < len && p[i] >= '0' && p[i] <= '9'; i++) {
        v = v * 10 + (p[i] - '0');
        if (++digits > 3) {
            return CM_EINVAL;
        }
    }
    if (i < len && p[i] == '.') {
        for (i++; i < len && p[i] >= '0' && p[i] <= '9'; i++) {
            scale /= 10;
            v += (p[i] - '0') * scale;
            if (++digits > 9) {
                return CM_EINVAL;
            }
        }
    }
    if (i != len || digits == 0) {
        return CM_EINVAL;
    }
    if (v < 0.5 - 1e-9 || v > 5.0 + 1e-9) {
        return CM_ERR;
    }
    *out = (float) v;
    return CM_OK;
}


static int
cm_ml_utf8_valid(const unsigned char *s, size_t len)
{
    size_t    i = 0, n, k;
    uint32_t  cp;

    while (i < len) {
        unsigned char c = s[i];

        if (c < 0x80) {
            if (c == 0) {
                return 0;
            }
            i++;
            continue;
        }
        if ((c & 0xe0) == 0xc0) {
            n = 1; cp = c & 0x1f;
        } else if ((c & 0xf0) == 0xe0) {
            n = 2; cp = c & 0x0f;
        } else if ((c & 0xf8) == 0xf0) {
            n = 3; cp = c & 0x07;
        } else {
            return 0;
        }
        if (i + n >= len) {
            return 0;                                   /* truncated */
        }
        for (k = 1; k <= n; k++) {
            if (i + k >= len || (s[i + k] & 0xc0) != 0x80) {
                return 0;
            }
            cp = (cp << 6) | (s[i + k] & 0x3f);
        }
        if ((n == 1 && cp < 0x80) || (n == 2 && cp < 0x800)
            || (n == 3 && cp < 0x10000) || cp > 0x10ffff
            || (cp >= 0xd800 && cp <= 0xdfff))
        {
            return 0;
        }
        i += n + 1;
    }
    return 1;
}


/* Latin-1 -> UTF-8 into b (NUL-terminated); NUL bytes are rejected. */
static int
cm_ml_latin1(cm_ml_buf_t *b, const char *p, size_t len)
{
    size_t  i, n = 0;

    if (cm_ml_buf_reserve(b, len * 2 + 1) != CM_OK) {
        return CM_ENOMEM;
    }
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char) p[i];

        if (c == 0) {
            return CM_EINVAL;
        }
        if (c < 0x80) {
            b->p[n++] = (char) c;
        } else {
            b->p[n++] = (char) (0xc0 | (c >> 6));
            b->p[n++] = (char) (0x80 | (c & 0x3f));
        }
    }
    b->p[n] = '\0';
    b->len = n;
    return CM_OK;
}


/*
 * Split a CSV line (no line terminator) into fields.  Quoted fields are
 * unquoted into scratch ("" -> ") and the field points there; scratch is
 * sized up front so the pointers stay valid.  Returns the field count, or
 * -1 with *why set.
 */
static int
cm_ml_split_csv(const char *line, size_t len, cm_ml_field_t *f, int maxf,
    cm_ml_buf_t *scratch, const char **why)
{
    size_t  i = 0, o = 0;
    int     n = 0;

    if (cm_ml_buf_reserve(scratch, len + 1) != CM_OK) {
        *why = "out of memory";
        return -1;
    }
    for ( ;; ) {
        if (n == maxf) {
            *why = "too many fields";
            return -1;
        }
        if (i < len && line[i] == '"') {
            size_t start = o;

            i++;
            for ( ;; ) {
                if (i >= len) {
                    *why = "unterminated quoted field";
                    return -1;
                }
                if (line[i] == '"') {
                    if (i + 1 < len && line[i + 1] == '"') {
                        scratch->p[o++] = '"';
                        i += 2;
                        continue;
                    }
                    i++;
                    break;
                }
                scratch->p[o++] = line[i++];
            }
            f[n].p = scratch->p + start;
            f[n].len = o - start;
            n++;
            if (i == len) {
                return n;
            }
            if (line[i] != ',') {
                *why = "text after closing quote";
                return -1;
            }
            i++;
            continue;
        }
        f[n].p = line + i;
        while (i < len && line[i] != ',') {
            if (line[i] == '"') {
                *why = "quote inside unquoted field";
                return -1;
            }
            i++;
        }
        f[n].len = (size_t) (line + i - f[n].p);
        n++;
        if (i == len) {
            return n;
        }
        i++;                                            /* the comma */
    }
}


/* Split on a one- or two-character separator ("\t", "|", "::"). */
static int
cm_ml_split_sep(const char *line, size_t len, const char *sep,
    cm_ml_field_t *f, int maxf, const char **why)
{
    size_t  i = 0, sl = strlen(sep), start = 0;
    int     n = 0;

    for ( ;; ) {
        if (i + sl <= len && memcmp(line + i, sep, sl) == 0) {
            if (n == maxf) {
                *why = "too many fields";
                return -1;
            }
            f[n].p = line + start;
            f[n].len = i - start;
            n++;
            i += sl;
            start = i;
            continue;
        }
        if (i >= len) {
            break;
        }
        i++;
    }
    if (n == maxf) {
        *why = "too many fields";
        return -1;
    }
    f[n].p = line + start;
    f[n].len = len - start;
    return n + 1;
}


/*
 * Iterate lines: returns 1 with [*lp, *ll) the line without its LF/CRLF,
 * 0 at the end.  Empty buffer tail after the last LF is not a line.
 */
static int
cm_ml_next_line(const char *buf, size_t len, size_t *pos, const char **lp,
    size_t *ll)
{
    const char  *nl;
    size_t       p = *pos, l;

    if (p >= len) {
        return 0;
    }
    nl = memchr(buf + p, '\n', len - p);
    l = nl ? (size_t) (nl - (buf + p)) : len - p;
    *lp = buf + p;
    *pos = p + l + (nl ? 1 : 0);
    if (l > 0 && (*lp)[l - 1] == '\r') {
        l--;
    }
    *ll = l;
    return 1;
}


/* Length of a UTF-8 byte-order mark at the start (editors add one). */
static size_t
cm_ml_bom(const char *buf, size_t len)
{
    return (len >= 3 && memcmp(buf, "\xef\xbb\xbf", 3) == 0) ? 3 : 0;
}


static void
cm_ml_ctx_init(cm_ml_ctx_t *c, const char *name, cm_ml_opts_t *opts,
    char *err, size_t errlen)
{
    memset(c, 0, sizeof(*c));
    c->name = name ? name : "<buffer>";
    c->opts = opts ? opts : &c->dflt;
    c->err = err;
    c->errlen = errlen;
}


int
cm_ratings_push(cm_ratings_t *r, const cm_rating_t *x)
{
    cm_rating_t  *v;
    size_t        cap;

    if (r->n == r->cap) {
        cap = r->cap ? r->cap * 2 : 1024;
        v = realloc(r->v, cap * sizeof(*v));
        if (v == NULL) {
            return CM_ENOMEM;
        }
        r->v = v;
        r->cap = cap;
    }
    r->v[r->n++] = *x;
    return CM_OK;
}


static int
cm_movies_push(cm_movies_t *m, const cm_movie_t *x)
{
    cm_movie_t  *v;
    size_t       cap;

    if (m->n == m->cap) {
        cap = m->cap ? m->cap * 2 : 256;
        v = realloc(m->v, cap * sizeof(*v));
        if (v == NULL) {
            return CM_ENOMEM;
        }
        m->v = v;
        m->cap = cap;
    }
    m->v[m->n++] = *x;
    return CM_OK;
}


void
cm_ratings_free(cm_ratings_t *r)
{
    free(r->v);
    memset(r, 0, sizeof(*r));
}


void
cm_movies_free(cm_movies_t *m)
{
    size_t i;

    for (i = 0; i < m->n; i++) {
        free(m->v[i].title);
    }
    free(m->v);
    memset(m, 0, sizeof(*m));
}


void
cm_ml_dataset_free(cm_ml_dataset_t *ds)
{
    cm_ratings_free(&ds->ratings);
    cm_movies_free(&ds->movies);
}


/* ---- ratings ---------------------------------------------------------- */

int
cm_ml_parse_ratings(const char *buf, size_t len, cm_ml_format_t fmt,
    const char *name, cm_ml_opts_t *opts, cm_ratings_t *out, char *err,
    size_t errlen)
{
    cm_ml_ctx_t     c;
    cm_ml_field_t   f[CM_ML_MAX_FIELDS];
    cm_ml_buf_t     scratch = { NULL, 0, 0 };
    const char     *lp, *why;
    size_t          ll, pos = 0;
    int             n, rc = CM_OK;
    int64_t         v;
    cm_rating_t     r;

    cm_ml_ctx_init(&c, name, opts, err, errlen);
    if (fmt == CM_ML_AUTO) {
        return cm_seterr(err, errlen, CM_EINVAL, "%s: format not given",
                         c.name);
    }
    pos = cm_ml_bom(buf, len);

    while (cm_ml_next_line(buf, len, &pos, &lp, &ll)) {
        c.line++;
        if (ll == 0) {
            continue;                                   /* blank line */
        }
        if (c.line == 1 && fmt == CM_ML_LATEST && ll >= 6
            && memcmp(lp, "userId", 6) == 0)
        {
            continue;                                   /* header */
        }
        c.opts->n_lines++;
        why = NULL;
        switch (fmt) {
        case CM_ML_LATEST:
            n = cm_ml_split_csv(lp, ll, f, CM_ML_MAX_FIELDS, &scratch, &why);
            break;
        case CM_ML_100K:
            n = cm_ml_split_sep(lp, ll, "\t", f, CM_ML_MAX_FIELDS, &why);
            break;
        default:
            n = cm_ml_split_sep(lp, ll, "::", f, CM_ML_MAX_FIELDS, &why);
            break;
        }
        if (n >= 0 && n != 4) {
            why = "expected 4 fields (user, movie, rating, timestamp)";
        } else if (n == 4) {
            if (cm_ml_parse_i64(f[0].p, f[0].len, 1, INT32_MAX, &v) != CM_OK) {
                why = "user id is not an integer in 1..2^31-1";
            } else {
                r.user = (int32_t) v;
                if (cm_ml_parse_i64(f[1].p, f[1].len, 1, INT32_MAX, &v)
                    != CM_OK)
                {
                    why = "movie id is not an integer in 1..2^31-1";
                } else {
                    r.item = (int32_t) v;
                    int prc = cm_ml_parse_rating(f[2].p, f[2].len,
                                                 &r.rating);

                    if (prc == CM_EINVAL) {
                        why = "rating is not a decimal number";
                    } else if (prc != CM_OK) {
                        why = "rating outside 0.5..5";
                    } else if (cm_ml_parse_i64(f[3].p, f[3].len, 0,
                                               (int64_t) 1 << 40, &v)
                               != CM_OK)
                    {
                        why = "timestamp is not a non-negative integer";
                    } else {
                        r.ts = v;
                    }
                }
            }
        }
        if (why != NULL) {
            rc = cm_ml_bad(&c, why);
            if (rc != CM_OK) {
                break;
            }
            continue;
        }
        rc = cm_ratings_push(out, &r);
        if (rc != CM_OK) {
            cm_seterr(err, errlen, rc, "%s: out of memory", c.name);
            break;
        }
    }
    free(scratch.p);
    return rc;
}


/* ---- movies ----------------------------------------------------------- */

static const char *
cm_ml_parse_genre_list(const char *p, size_t len, uint32_t *mask)
{
    size_t  i = 0, start = 0;
    int     g;

    *mask = 0;
    if (len == 0) {
        return "empty genre list";
    }
    for (i = 0; i <= len; i++) {
        if (i == len || p[i] == '|') {
            g = cm_ml_genre_parse(p + start, i - start);
            if (g < 0) {
                return "unknown genre";
            }
            *mask |= 1u << g;
            start = i + 1;
        }
    }
    return NULL;
}


int
cm_ml_parse_movies(const char *buf, size_t len, cm_ml_format_t fmt,
    const char *name, cm_ml_opts_t *opts, cm_movies_t *out, char *err,
    size_t errlen)
{
    cm_ml_ctx_t     c;
    cm_ml_field_t   f[CM_ML_MAX_FIELDS];
    cm_ml_buf_t     scratch = { NULL, 0, 0 }, text = { NULL, 0, 0 };
    const char     *lp, *why;
    size_t          ll, pos = 0, k;
    int             n, rc = CM_OK;
    int64_t         v;
    cm_movie_t      m;

    cm_ml_ctx_init(&c, name, opts, err, errlen);
    if (fmt == CM_ML_AUTO) {
        return cm_seterr(err, errlen, CM_EINVAL, "%s: format not given",
                         c.name);
    }
    pos = cm_ml_bom(buf, len);

    while (cm_ml_next_line(buf, len, &pos, &lp, &ll)) {
        c.line++;
        if (ll == 0) {
            continue;
        }
        if (c.line == 1 && fmt == CM_ML_LATEST && ll >= 7
            && memcmp(lp, "movieId", 7) == 0)
        {
            continue;
        }
        c.opts->n_lines++;
        why = NULL;
        memset(&m, 0, sizeof(m));

        switch (fmt) {
        case CM_ML_LATEST:
            n = cm_ml_split_csv(lp, ll, f, CM_ML_MAX_FIELDS, &scratch, &why);
            if (n >= 0 && n != 3) {
                why = "expected 3 fields (movieId, title, genres)";
            }
            break;
        case CM_ML_100K:
            n = cm_ml_split_sep(lp, ll, "|", f, CM_ML_MAX_FIELDS, &why);
            if (n >= 0 && n != 24) {
                why = "expected 24 '|'-separated fields";
            }
            break;
        default:
            n = cm_ml_split_sep(lp, ll, "::", f, CM_ML_MAX_FIELDS, &why);
            if (n >= 0 && n != 3) {
                why = "expected 3 '::'-separated fields";
            }
            break;
        }

        if (why == NULL
            && cm_ml_parse_i64(f[0].p, f[0].len, 1, INT32_MAX, &v) != CM_OK)
        {
            why = "movie id is not an integer in 1..2^31-1";
        }
        if (why == NULL) {
            m.id = (int32_t) v;
            if (fmt == CM_ML_LATEST) {
                if (!cm_ml_utf8_valid((const unsigned char *) f[1].p,
                                      f[1].len))
                {
                    why = "title is not valid UTF-8";
                } else if (cm_ml_buf_reserve(&text, f[1].len + 1) != CM_OK) {
                    why = "out of memory";
                } else {
                    memcpy(text.p, f[1].p, f[1].len);
                    text.p[f[1].len] = '\0';
                    text.len = f[1].len;
                }
            } else if (cm_ml_latin1(&text, f[1].p, f[1].len) != CM_OK) {
                why = "NUL byte in title";
            }
        }
        if (why == NULL && text.len == 0) {
            why = "empty title";
        }
        if (why == NULL) {
            if (fmt == CM_ML_100K) {
                for (k = 0; k < 19 && why == NULL; k++) {
                    const cm_ml_field_t *g = &f[5 + k];

                    if (g->len != 1 || (g->p[0] != '0' && g->p[0] != '1')) {
                        why = "genre flag is not 0 or 1";
                    } else if (g->p[0] == '1') {
                        m.genres |= 1u << cm_ml_100k_genres[k];
                    }
                }
            } else {
                why = cm_ml_parse_genre_list(f[2].p, f[2].len, &m.genres);
            }
        }
        if (why != NULL) {
            rc = cm_ml_bad(&c, why);
            if (rc != CM_OK) {
                break;
            }
            continue;
        }

        m.year = cm_ml_title_year(text.p, text.len);
        if (m.year == 0 && fmt == CM_ML_100K && f[2].len == 11) {
            /* release date "01-Jan-1995" */
            if (cm_ml_parse_i64(f[2].p + 7, 4, 1800, 2200, &v) == CM_OK) {
                m.year = (int32_t) v;
            }
        }
        m.title = strdup(text.p);
        if (m.title == NULL || cm_movies_push(out, &m) != CM_OK) {
            free(m.title);
            rc = cm_seterr(err, errlen, CM_ENOMEM, "%s: out of memory",
                           c.name);
            break;
        }
    }
    free(scratch.p);
    free(text.p);
    return rc;
}


/* ---- files and directories -------------------------------------------- */

static int
cm_ml_slurp(const char *path, char **buf, size_t *len, char *err,
    size_t errlen)
{
    int          fd;
    struct stat  st;
    char        *p;
    size_t       off = 0;
    ssize_t      n;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return cm_seterr(err, errlen, errno == ENOENT ? CM_ENOTFOUND : CM_EIO,
                         "%s: %s", path, strerror(errno));
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)
        || (uint64_t) st.st_size > CM_ML_MAX_FILE)
    {
        close(fd);
        return cm_seterr(err, errlen, CM_EIO, "%s: not a regular file of at"
                         " most 4 GiB", path);
    }
    p = malloc((size_t) st.st_size + 1);
    if (p == NULL) {
        close(fd);
        return cm_seterr(err, errlen, CM_ENOMEM, "%s: out of memory", path);
    }
    while (off < (size_t) st.st_size) {
        n = read(fd, p + off, (size_t) st.st_size - off);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            free(p);
            close(fd);
            return cm_seterr(err, errlen, CM_EIO, "%s: read failed", path);
        }
        off += (size_t) n;
    }
    close(fd);
    p[off] = '\0';
    *buf = p;
    *len = off;
    return CM_OK;
}


int
cm_ml_read_ratings_file(const char *path, cm_ml_format_t fmt,
    cm_ml_opts_t *opts, cm_ratings_t *out, char *err, size_t errlen)
{
    char    *buf = NULL;
    size_t   len = 0;
    int      rc;

    rc = cm_ml_slurp(path, &buf, &len, err, errlen);
    if (rc != CM_OK) {
        return rc;
    }
    rc = cm_ml_parse_ratings(buf, len, fmt, path, opts, out, err, errlen);
    free(buf);
    return rc;
}


int
cm_ml_read_movies_file(const char *path, cm_ml_format_t fmt,
    cm_ml_opts_t *opts, cm_movies_t *out, char *err, size_t errlen)
{
    char    *buf = NULL;
    size_t   len = 0;
    int      rc;

    rc = cm_ml_slurp(path, &buf, &len, err, errlen);
    if (rc != CM_OK) {
        return rc;
    }
    rc = cm_ml_parse_movies(buf, len, fmt, path, opts, out, err, errlen);
    free(buf);
    return rc;
}


static int
cm_ml_exists(const char *dir, const char *name)
{
    char         path[4096];
    struct stat  st;

    if ((size_t) snprintf(path, sizeof(path), "%s/%s", dir, name)
        >= sizeof(path))
    {
        return 0;
    }
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}


int
cm_ml_detect_dir(const char *dir, cm_ml_format_t *fmt, char *err,
    size_t errlen)
{
    if (cm_ml_exists(dir, "ratings.csv")) {
        *fmt = CM_ML_LATEST;
    } else if (cm_ml_exists(dir, "u.data")) {
        *fmt = CM_ML_100K;
    } else if (cm_ml_exists(dir, "ratings.dat")) {
        *fmt = CM_ML_1M;
    } else {
        return cm_seterr(err, errlen, CM_ENOTFOUND, "%s: no ratings.csv,"
                         " u.data or ratings.dat (not a MovieLens directory)",
                         dir);
    }
    return CM_OK;
}


int
cm_ml_load_dir(const char *dir, cm_ml_format_t fmt, cm_ml_opts_t *opts,
    cm_ml_dataset_t *ds, char *err, size_t errlen)
{
    char  path[4096];
    int   rc;

    memset(ds, 0, sizeof(*ds));
    if (fmt == CM_ML_AUTO) {
        rc = cm_ml_detect_dir(dir, &fmt, err, errlen);
        if (rc != CM_OK) {
            return rc;
        }
    }
    ds->format = fmt;
    snprintf(path, sizeof(path), "%s/%s", dir, cm_ml_ratings_name(fmt));
    rc = cm_ml_read_ratings_file(path, fmt, opts, &ds->ratings, err, errlen);
    if (rc != CM_OK) {
        cm_ml_dataset_free(ds);
        return rc;
    }
    if (cm_ml_exists(dir, cm_ml_movies_name(fmt))) {
        snprintf(path, sizeof(path), "%s/%s", dir, cm_ml_movies_name(fmt));
        rc = cm_ml_read_movies_file(path, fmt, opts, &ds->movies, err,
                                    errlen);
        if (rc != CM_OK) {
            cm_ml_dataset_free(ds);
            return rc;
        }
    }
    return CM_OK;
}

/*
 * ingest.c: line-level accept/reject decisions for `cinematch ingest`.
 * See cinematch/ingest.h.
 */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/common.h"
#include "cinematch/ingest.h"
#include "cinematch/validate.h"


typedef struct {
    uint64_t     line;
    const char  *reason;
} cm_ingest_bad_t;

typedef struct {
    cm_ingest_bad_t  *v;
    size_t            n;
    size_t            cap;
    int               oom;
} cm_ingest_bads_t;

typedef struct {
    size_t  off;
    size_t  len;
} cm_ingest_line_t;


static void cm_ingest_on_bad(void *ctx, const char *file, size_t line,
    const char *reason);
static int cm_ingest_reject(cm_ingest_plan_t *p, size_t *cap, uint64_t line,
    const char *raw, size_t raw_len, int dup, const char *fmt, ...)
    __attribute__((format(printf, 7, 8)));
static int cm_ingest_cmp_pair(const void *a, const void *b);
static int cm_ingest_cmp_time(const void *a, const void *b);
static int cm_ingest_cmp_rej(const void *a, const void *b);

/* qsort has no context argument; the comparators read these */
static const cm_rating_t  *cm_ingest_sort_rows;
static const uint64_t     *cm_ingest_sort_line;


static void
cm_ingest_on_bad(void *ctx, const char *file, size_t line, const char *reason)
{
    cm_ingest_bads_t  *b = ctx;
    cm_ingest_bad_t   *v;
    size_t             cap;

    if (b->n == b->cap) {
        cap = b->cap ? b->cap * 2 : 64;
        v = realloc(b->v, cap * sizeof(*v));
        if (v == NULL) {
            b->oom = 1;
            return;
        }
        b->v = v;
        b->cap = cap;
    }
    b->v[b->n].line = line;
    b->v[b->n].reason = reason;
    b->n++;
}


static int
cm_ingest_reject(cm_ingest_plan_t *p, size_t *cap, uint64_t line,
    const char *raw, size_t raw_len, int dup, const char *fmt, ...)
{
    cm_ingest_reject_t  *v, *r;
    va_list              ap;
    size_t               nc;

    if (p->n_rej == *cap) {
        nc = *cap ? *cap * 2 : 64;
        v = realloc(p->rej, nc * sizeof(*v));
        if (v == NULL) {
            return CM_ENOMEM;
        }
        p->rej = v;
        *cap = nc;
    }
    r = &p->rej[p->n_rej++];
    r->line = line;
    r->raw = raw;
    r->raw_len = raw_len;
    r->duplicate = dup;
    va_start(ap, fmt);
    vsnprintf(r->reason, sizeof(r->reason), fmt, ap);
    va_end(ap);
    if (dup) {
        p->n_dup++;
    }
    return CM_OK;
}


static int
cm_ingest_cmp_pair(const void *a, const void *b)
{
    const cm_rating_t  *x = &cm_ingest_sort_rows[*(const size_t *) a];
    const cm_rating_t  *y = &cm_ingest_sort_rows[*(const size_t *) b];
    uint64_t            lx = cm_ingest_sort_line[*(const size_t *) a];
    uint64_t            ly = cm_ingest_sort_line[*(const size_t *) b];

    if (x->user != y->user) {
        return x->user < y->user ? -1 : 1;
    }
    if (x->item != y->item) {
        return x->item < y->item ? -1 : 1;
    }
    return (lx > ly) - (lx < ly);
}


/* recsys_eval's temporal-user order: (user, timestamp, movie) */
static int
cm_ingest_cmp_time(const void *a, const void *b)
{
    const cm_rating_t  *x = &cm_ingest_sort_rows[*(const size_t *) a];
    const cm_rating_t  *y = &cm_ingest_sort_rows[*(const size_t *) b];

    if (x->user != y->user) {
        return x->user < y->user ? -1 : 1;
    }
    if (x->ts != y->ts) {
        return x->ts < y->ts ? -1 : 1;
    }
    return (x->item > y->item) - (x->item < y->item);
}


static int
cm_ingest_cmp_rej(const void *a, const void *b)
{
    const cm_ingest_reject_t *x = a, *y = b;

    return (x->line > y->line) - (x->line < y->line);
}


static int
cm_ingest_known(const int32_t *v, size_t n, int32_t id)
{
    size_t lo = 0, hi = n, mid;

    while (lo < hi) {
        mid = lo + (hi - lo) / 2;
        if (v[mid] < id) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    return lo < n && v[lo] == id;
}


int
cm_ingest_plan(const char *buf, size_t len, cm_ml_format_t fmt,
    const char *name, const cm_ingest_conf_t *conf, cm_ingest_plan_t *out,
    char *err, size_t errlen)
{
    cm_ingest_bads_t   bads = { NULL, 0, 0, 0 };
    cm_ml_opts_t       o;
    cm_ratings_t       parsed = { NULL, 0, 0 };
    cm_ingest_line_t  *lines = NULL;
    size_t             n_lines = 0, cap_lines = 0, pos = 0, l, i, j, k, bi;
    size_t             next = 0, cap_rej = 0, *idx = NULL, n_keep, n_u, n_t;
    uint8_t           *drop = NULL;
    const char        *nl, *lp;
    cm_rating_t        r;
    double             twice;
    int                rc;

    memset(out, 0, sizeof(*out));
    if (fmt == CM_ML_AUTO) {
        return cm_seterr(err, errlen, CM_EINVAL, "%s: format not given",
                         name);
    }

    /* the physical lines, split exactly as the MovieLens reader does */
    while (pos < len) {
        if (n_lines == cap_lines) {
            cm_ingest_line_t *v;

            cap_lines = cap_lines ? cap_lines * 2 : 1024;
            v = realloc(lines, cap_lines * sizeof(*v));
            if (v == NULL) {
                rc = cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
                goto failed;
            }
            lines = v;
        }
        nl = memchr(buf + pos, '\n', len - pos);
        l = nl ? (size_t) (nl - (buf + pos)) : len - pos;
        lines[n_lines].off = pos;
        lines[n_lines].len = (l > 0 && buf[pos + l - 1] == '\r') ? l - 1 : l;
        n_lines++;
        pos += l + (nl ? 1 : 0);
    }

    memset(&o, 0, sizeof(o));
    o.strict = 0;
    o.on_bad = cm_ingest_on_bad;
    o.ctx = &bads;
    rc = cm_ml_parse_ratings(buf, len, fmt, name, &o, &parsed, err, errlen);
    if (rc != CM_OK) {
        goto failed;
    }
    if (bads.oom) {
        rc = cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
        goto failed;
    }

    /* calloc: clang-analyzer cannot see that [0, n_rows) gets filled */
    out->rows = calloc(parsed.n ? parsed.n : 1, sizeof(cm_rating_t));
    out->line = calloc(parsed.n ? parsed.n : 1, sizeof(uint64_t));
    if (out->rows == NULL || out->line == NULL) {
        rc = cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
        goto failed;
    }

    /* walk the lines: blank and header lines are skipped by the reader,
     * reported ones are rejects, every other line is the next rating */
    bi = 0;
    for (i = 0; i < n_lines; i++) {
        lp = buf + lines[i].off;
        l = lines[i].len;
        if (l == 0) {
            continue;
        }
        if (i == 0 && fmt == CM_ML_LATEST && l >= 6
            && memcmp(lp, "userId", 6) == 0)
        {
            continue;
        }
        out->n_total++;
        if (bi < bads.n && bads.v[bi].line == i + 1) {
            rc = cm_ingest_reject(out, &cap_rej, i + 1, lp, l, 0, "%s",
                                  bads.v[bi].reason);
            bi++;
            if (rc != CM_OK) {
                goto oom;
            }
            continue;
        }
        if (next >= parsed.n) {
            rc = cm_seterr(err, errlen, CM_ERR, "%s:%zu: reader and line"
                           " index disagree", name, i + 1);
            goto failed;
        }
        r = parsed.v[next++];
        twice = (double) r.rating * 2.0;
        if (fabs(twice - nearbyint(twice)) > 1e-6) {
            rc = cm_ingest_reject(out, &cap_rej, i + 1, lp, l, 0,
                                  "rating %g is not a multiple of 0.5",
                                  (double) r.rating);
        } else if (conf != NULL && conf->max_ts > 0 && r.ts > conf->max_ts) {
            rc = cm_ingest_reject(out, &cap_rej, i + 1, lp, l, 0,
                                  "timestamp %lld is in the future",
                                  (long long) r.ts);
        } else if (conf != NULL && conf->movies != NULL
                   && !cm_ingest_known(conf->movies, conf->n_movies, r.item))
        {
            rc = cm_ingest_reject(out, &cap_rej, i + 1, lp, l, 0,
                                  "unknown movie id %d", (int) r.item);
        } else {
            r.rating = (float) (nearbyint(twice) / 2.0);
            out->rows[out->n_rows] = r;
            out->line[out->n_rows] = i + 1;
            out->n_rows++;
            continue;
        }
        if (rc != CM_OK) {
            goto oom;
        }
    }
    if (next != parsed.n || bi != bads.n) {
        rc = cm_seterr(err, errlen, CM_ERR, "%s: reader and line index"
                       " disagree (%zu of %zu ratings, %zu of %zu rejects)",
                       name, next, parsed.n, bi, bads.n);
        goto failed;
    }

    /* duplicates: the first line of a (user, movie) pair wins */
    idx = malloc((out->n_rows ? out->n_rows : 1) * sizeof(size_t));
    drop = calloc(out->n_rows ? out->n_rows : 1, 1);
    if (idx == NULL || drop == NULL) {
        goto oom;
    }
    for (i = 0; i < out->n_rows; i++) {
        idx[i] = i;
    }
    cm_ingest_sort_rows = out->rows;
    cm_ingest_sort_line = out->line;
    qsort(idx, out->n_rows, sizeof(size_t), cm_ingest_cmp_pair);
    j = 0;                                  /* first of the current run */
    for (i = 1; i < out->n_rows; i++) {
        const cm_rating_t *a = &out->rows[idx[j]], *b = &out->rows[idx[i]];

        if (a->user != b->user || a->item != b->item) {
            j = i;
            continue;
        }
        drop[idx[i]] = 1;
        k = idx[i];
        l = (size_t) out->line[k] - 1;
        if (lines == NULL || l >= n_lines) {
            rc = cm_seterr(err, errlen, CM_ERR, "%s: line index lost line"
                           " %zu", name, l + 1);
            goto failed;
        }
        rc = cm_ingest_reject(out, &cap_rej, out->line[k], buf + lines[l].off,
                              lines[l].len, 1,
                              "duplicate (user %d, movie %d) of line %llu",
                              (int) b->user, (int) b->item,
                              (unsigned long long) out->line[idx[j]]);
        if (rc != CM_OK) {
            goto oom;
        }
    }
    n_keep = 0;
    for (i = 0; i < out->n_rows; i++) {
        if (!drop[i]) {
            out->rows[n_keep] = out->rows[i];
            out->line[n_keep] = out->line[i];
            n_keep++;
        }
    }
    out->n_rows = n_keep;
    if (out->n_rej > 0) {
        qsort(out->rej, out->n_rej, sizeof(*out->rej), cm_ingest_cmp_rej);
    }

    /* temporal hold-out per user: the last ceil(frac n_u) by time, users
     * with fewer than 5 ratings stay in train (recsys_eval.h) */
    out->test = calloc(out->n_rows ? out->n_rows : 1, 1);
    if (out->test == NULL) {
        goto oom;
    }
    if (conf != NULL && conf->test_frac > 0.0) {
        for (i = 0; i < out->n_rows; i++) {
            idx[i] = i;
        }
        qsort(idx, out->n_rows, sizeof(size_t), cm_ingest_cmp_time);
        for (i = 0; i < out->n_rows; i = j) {
            for (j = i; j < out->n_rows
                 && out->rows[idx[j]].user == out->rows[idx[i]].user; j++)
            {
                /* the user's run */
            }
            n_u = j - i;
            if (n_u < 5) {
                continue;
            }
            n_t = (size_t) ceil(conf->test_frac * (double) n_u);
            for (k = j - n_t; k < j; k++) {
                out->test[idx[k]] = 1;
                out->n_test++;
            }
        }
    }

    free(idx);
    free(drop);
    free(lines);
    free(bads.v);
    cm_ratings_free(&parsed);
    return CM_OK;

oom:
    rc = cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
failed:
    free(idx);
    free(drop);
    free(lines);
    free(bads.v);
    cm_ratings_free(&parsed);
    cm_ingest_plan_free(out);
    return rc;
}


void
cm_ingest_plan_free(cm_ingest_plan_t *p)
{
    free(p->rows);
    free(p->line);
    free(p->test);
    free(p->rej);
    memset(p, 0, sizeof(*p));
}


cm_ml_format_t
cm_ingest_guess_format(const char *path)
{
    const char  *base = strrchr(path, '/'), *dot;

    base = base != NULL ? base + 1 : path;
    dot = strrchr(base, '.');
    if (strcmp(base, "u.data") == 0
        || (dot != NULL && (strcmp(dot, ".base") == 0
                            || strcmp(dot, ".test") == 0)))
    {
        return CM_ML_100K;
    }
    if (dot != NULL && strcmp(dot, ".dat") == 0) {
        return CM_ML_1M;
    }
    return CM_ML_LATEST;
}


size_t
cm_ingest_title_strip(const char *t, size_t len)
{
    size_t  i;

    while (len > 0 && (t[len - 1] == ' ' || t[len - 1] == '\t')) {
        len--;
    }
    if (cm_ml_title_year(t, len) == 0) {
        return len;
    }
    for (i = len; i > 0; i--) {
        if (t[i - 1] == '(') {
            break;
        }
    }
    if (i <= 1) {
        return len;     /* the title would be empty: keep it whole */
    }
    len = i - 1;
    while (len > 0 && (t[len - 1] == ' ' || t[len - 1] == '\t')) {
        len--;
    }
    return len;
}


size_t
cm_ingest_copy_escape(const char *in, size_t n, size_t max_in, char *out)
{
    size_t          i = 0, o = 0, step;
    unsigned char   c;

    if (n > max_in) {
        n = max_in;
    }
    while (i < n) {
        c = (unsigned char) in[i];
        if (c < 0x80) {
            switch (c) {
            case '\\': out[o++] = '\\'; out[o++] = '\\'; break;
            case '\t': out[o++] = '\\'; out[o++] = 't'; break;
            case '\n': out[o++] = '\\'; out[o++] = 'n'; break;
            case '\r': out[o++] = '\\'; out[o++] = 'r'; break;
            case '\0': out[o++] = '?'; break;
            default: out[o++] = (char) c; break;
            }
            i++;
            continue;
        }
        step = c >= 0xf0 ? 4 : (c >= 0xe0 ? 3 : (c >= 0xc0 ? 2 : 1));
        if (step > 1 && i + step <= n && cm_utf8_valid(in + i, step, NULL)) {
            memcpy(out + o, in + i, step);
            o += step;
            i += step;
        } else {
            out[o++] = '?';
            i++;
        }
    }
    out[o] = '\0';
    return o;
}


static void
cm_be16(unsigned char *p, uint16_t v)
{
    p[0] = (unsigned char) (v >> 8);
    p[1] = (unsigned char) v;
}


static void
cm_be32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char) (v >> 24);
    p[1] = (unsigned char) (v >> 16);
    p[2] = (unsigned char) (v >> 8);
    p[3] = (unsigned char) v;
}


size_t
cm_pgcopy_header(unsigned char *out)
{
    /* "PGCOPY\n\377\r\n\0": bytes, not a string (it ends in NUL) */
    static const unsigned char  sig[11] = { 'P', 'G', 'C', 'O', 'P', 'Y',
                                            '\n', 0xff, '\r', '\n', 0 };

    memcpy(out, sig, sizeof(sig));
    cm_be32(out + 11, 0);       /* flags: no OIDs */
    cm_be32(out + 15, 0);       /* header extension length */
    return CM_PGCOPY_HEADER_LEN;
}


size_t
cm_pgcopy_trailer(unsigned char *out)
{
    cm_be16(out, 0xffff);
    return 2;
}


size_t
cm_pgcopy_tuple(unsigned char *out, int nfields)
{
    cm_be16(out, (uint16_t) nfields);
    return 2;
}


size_t
cm_pgcopy_int4(unsigned char *out, int32_t v)
{
    cm_be32(out, 4);
    cm_be32(out + 4, (uint32_t) v);
    return 8;
}


size_t
cm_pgcopy_int8(unsigned char *out, int64_t v)
{
    cm_be32(out, 8);
    cm_be32(out + 4, (uint32_t) ((uint64_t) v >> 32));
    cm_be32(out + 8, (uint32_t) v);
    return 12;
}


size_t
cm_pgcopy_text(unsigned char *out, const char *s, size_t n)
{
    cm_be32(out, (uint32_t) n);
    memcpy(out + 4, s, n);
    return 4 + n;
}


/* PostgreSQL's epoch, 2000-01-01 00:00:00 UTC, in unix seconds */
#define CM_PG_EPOCH_UNIX  INT64_C(946684800)

size_t
cm_pgcopy_timestamptz(unsigned char *out, int64_t unix_s)
{
    int64_t us = (unix_s - CM_PG_EPOCH_UNIX) * INT64_C(1000000);

    cm_be32(out, 8);
    cm_be32(out + 4, (uint32_t) ((uint64_t) us >> 32));
    cm_be32(out + 8, (uint32_t) us);
    return 12;
}


/*
 * numeric's binary form: int16 ndigits, int16 weight (of the first digit,
 * in base-10000 places), int16 sign (0 positive), int16 dscale (decimal
 * digits after the point), then ndigits base-10000 digits.  x.5 is the
 * digits {x, 5000} with weight 0; 0.5 is {5000} with weight -1; zero has
 * no digits.
 */
size_t
cm_pgcopy_half_stars(unsigned char *out, int half_stars)
{
    int       ip = half_stars / 2, half = half_stars % 2;
    uint16_t  nd, d[2];
    int16_t   weight;
    size_t    i;

    if (ip == 0 && !half) {
        nd = 0;
        weight = 0;
    } else if (ip == 0) {
        nd = 1;
        weight = -1;
        d[0] = 5000;
    } else if (!half) {
        nd = 1;
        weight = 0;
        d[0] = (uint16_t) ip;
    } else {
        nd = 2;
        weight = 0;
        d[0] = (uint16_t) ip;
        d[1] = 5000;
    }
    cm_be32(out, (uint32_t) (8 + 2 * nd));
    cm_be16(out + 4, nd);
    cm_be16(out + 6, (uint16_t) weight);
    cm_be16(out + 8, 0);
    cm_be16(out + 10, 1);
    for (i = 0; i < nd; i++) {
        cm_be16(out + 12 + 2 * i, d[i]);
    }
    return 12 + 2 * (size_t) nd;
}

/*
 * cornell.c: readers for the Cornell Movie-Dialogs Corpus (original form),
 * plain dialogue text and tab-separated pair files; text cleaning; the
 * movie-disjoint validation split.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cinematch/common.h"
#include "cinematch/cornell.h"


#define CM_CORNELL_SEP      " +++$+++ "
#define CM_CORNELL_SEP_LEN  9
#define CM_CORPUS_MAX_LINE  (1u << 20)   /* longer lines are malformed */
#define CM_CORPUS_LOG_MAX   20           /* default warn logs this many */

typedef struct {
    uint32_t  num;       /* L<num> */
    int32_t   movie;
    uint32_t  text;      /* arena offsets */
    uint32_t  speaker;
    uint32_t  fileline;  /* 1-based line in movie_lines.txt */
} cm_cornell_line_t;


static void cm_corpus_bad(cm_corpus_t *c, const char *file, size_t line,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static int64_t cm_arena_add(cm_corpus_t *c, const char *s, size_t n);
static int64_t cm_arena_add_text(cm_corpus_t *c, const char *s, size_t n,
    int cp1252);
static int cm_corpus_add_turn(cm_corpus_t *c, uint32_t text,
    uint32_t speaker);
static int cm_corpus_add_conv(cm_corpus_t *c, int32_t movie, uint32_t first,
    uint32_t n);
static size_t cm_utf8_seq(const unsigned char *s, size_t n);
static unsigned char *cm_put_cp(unsigned char *o, uint32_t cp);
static const char *cm_next_line(const char *p, const char *end,
    const char **eol);
static size_t cm_split_sep(const char *s, const char *end, const char **f,
    size_t *fl, size_t max);
static int cm_parse_id(const char *s, size_t n, char prefix, uint32_t *out);
static int cm_cornell_line_cmp(const void *a, const void *b);
static int cm_cornell_line_cmp_num(const void *a, const void *b);
static int cm_grow(void **p, size_t *cap, size_t need, size_t elem);


/* cp1252 0x80..0x9F; 0 marks the five undefined bytes (kept as Latin-1). */
static const uint16_t cm_cp1252_hi[32] = {
    0x20AC, 0, 0x201A, 0x0192, 0x201E, 0x2026, 0x2020, 0x2021,
    0x02C6, 0x2030, 0x0160, 0x2039, 0x0152, 0, 0x017D, 0,
    0, 0x2018, 0x2019, 0x201C, 0x201D, 0x2022, 0x2013, 0x2014,
    0x02DC, 0x2122, 0x0161, 0x203A, 0x0153, 0, 0x017E, 0x0178
};


void
cm_corpus_init(cm_corpus_t *c)
{
    memset(c, 0, sizeof(*c));
}


void
cm_corpus_free(cm_corpus_t *c)
{
    free(c->arena);
    free(c->turns);
    free(c->convs);
    free(c->movies);
    memset(c, 0, sizeof(*c));
}


static void
cm_corpus_bad(cm_corpus_t *c, const char *file, size_t line,
    const char *fmt, ...)
{
    char     reason[256];
    va_list  ap;

    va_start(ap, fmt);
    vsnprintf(reason, sizeof(reason), fmt, ap);
    va_end(ap);

    c->n_malformed++;
    if (c->warn != NULL) {
        c->warn(c->warn_data, file, line, reason);
    } else if (c->n_malformed <= CM_CORPUS_LOG_MAX) {
        cm_warn("%s:%zu: %s%s", file, line, reason,
                c->n_malformed == CM_CORPUS_LOG_MAX
                ? " (further malformed lines counted, not logged)" : "");
    }
}


static int
cm_grow(void **p, size_t *cap, size_t need, size_t elem)
{
    size_t  ncap;
    void   *np;

    if (need <= *cap) {
        return CM_OK;
    }
    ncap = *cap ? *cap : 64;
    while (ncap < need) {
        ncap *= 2;
    }
    np = realloc(*p, ncap * elem);
    if (np == NULL) {
        return CM_ENOMEM;
    }
    *p = np;
    *cap = ncap;
    return CM_OK;
}


/* Appends s[0..n) + NUL; returns its offset or -1 (no memory, > 4 GiB). */
static int64_t
cm_arena_add(cm_corpus_t *c, const char *s, size_t n)
{
    size_t off;

    if (c->arena_len == 0) {
        /* offset 0 is always "" (unknown speaker) */
        if (cm_grow((void **) &c->arena, &c->arena_cap, 1, 1) != CM_OK) {
            return -1;
        }
        c->arena[0] = '\0';
        c->arena_len = 1;
    }
    if (n == 0) {
        return 0;
    }
    off = c->arena_len;
    if (off + n + 1 > UINT32_MAX
        || cm_grow((void **) &c->arena, &c->arena_cap, off + n + 1, 1)
           != CM_OK)
    {
        return -1;
    }
    memcpy(c->arena + off, s, n);
    c->arena[off + n] = '\0';
    c->arena_len = off + n + 1;
    return (int64_t) off;
}


/* Converts to UTF-8, cleans, appends; 0 (the "" string) when empty. */
static int64_t
cm_arena_add_text(cm_corpus_t *c, const char *s, size_t n, int cp1252)
{
    size_t   off, len;

    if (cm_arena_add(c, "", 0) < 0) {
        return -1;
    }
    off = c->arena_len;
    if (off + 3 * n + 1 > UINT32_MAX
        || cm_grow((void **) &c->arena, &c->arena_cap, off + 3 * n + 1, 1)
           != CM_OK)
    {
        return -1;
    }
    len = cp1252 ? cm_text_cp1252_to_utf8(s, n, c->arena + off)
                 : cm_text_to_utf8(s, n, c->arena + off);
    len = cm_text_clean(c->arena + off, len);
    if (len == 0) {
        return 0;
    }
    c->arena_len = off + len + 1;
    return (int64_t) off;
}


static int
cm_corpus_add_turn(cm_corpus_t *c, uint32_t text, uint32_t speaker)
{
    if (cm_grow((void **) &c->turns, &c->cap_turns, c->n_turns + 1,
                sizeof(cm_turn_t)) != CM_OK)
    {
        return CM_ENOMEM;
    }
    c->turns[c->n_turns].text = text;
    c->turns[c->n_turns].speaker = speaker;
    c->n_turns++;
    return CM_OK;
}


static int
cm_corpus_add_conv(cm_corpus_t *c, int32_t movie, uint32_t first, uint32_t n)
{
    if (n == 0) {
        return CM_OK;
    }
    if (cm_grow((void **) &c->convs, &c->cap_convs, c->n_convs + 1,
                sizeof(cm_conv_t)) != CM_OK)
    {
        return CM_ENOMEM;
    }
    c->convs[c->n_convs].movie = movie;
    c->convs[c->n_convs].first = first;
    c->convs[c->n_convs].n = n;
    c->n_convs++;
    return CM_OK;
}


/* ---- UTF-8 ------------------------------------------------------------ */

/* Length of the valid UTF-8 sequence at s, 0 when invalid. */
static size_t
cm_utf8_seq(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];

    if (c < 0x80) {
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        return (n >= 2 && (s[1] & 0xC0) == 0x80) ? 2 : 0;
    }
    if (c >= 0xE0 && c <= 0xEF) {
        if (n < 3 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80) {
            return 0;
        }
        if ((c == 0xE0 && s[1] < 0xA0) || (c == 0xED && s[1] >= 0xA0)) {
            return 0;   /* overlong, surrogate */
        }
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (n < 4 || (s[1] & 0xC0) != 0x80 || (s[2] & 0xC0) != 0x80
            || (s[3] & 0xC0) != 0x80)
        {
            return 0;
        }
        if ((c == 0xF0 && s[1] < 0x90) || (c == 0xF4 && s[1] >= 0x90)) {
            return 0;   /* overlong, > U+10FFFF */
        }
        return 4;
    }
    return 0;
}




static unsigned char *
cm_put_cp(unsigned char *o, uint32_t cp)
{
    if (cp < 0x80) {
        *o++ = (unsigned char) cp;
    } else if (cp < 0x800) {
        *o++ = (unsigned char) (0xC0 | (cp >> 6));
        *o++ = (unsigned char) (0x80 | (cp & 0x3F));
    } else {
        *o++ = (unsigned char) (0xE0 | (cp >> 12));
        *o++ = (unsigned char) (0x80 | ((cp >> 6) & 0x3F));
        *o++ = (unsigned char) (0x80 | (cp & 0x3F));
    }
    return o;
}


static uint32_t
cm_cp1252(unsigned char b)
{
    if (b >= 0x80 && b < 0xA0 && cm_cp1252_hi[b - 0x80] != 0) {
        return cm_cp1252_hi[b - 0x80];
    }
    return b;
}


size_t
cm_text_cp1252_to_utf8(const char *in, size_t n, char *out)
{
    const unsigned char *p = (const unsigned char *) in;
    unsigned char       *o = (unsigned char *) out;
    size_t               i;

    for (i = 0; i < n; i++) {
        o = cm_put_cp(o, cm_cp1252(p[i]));
    }
    *o = '\0';
    return (size_t) (o - (unsigned char *) out);
}


size_t
cm_text_to_utf8(const char *in, size_t n, char *out)
{
    const unsigned char *p = (const unsigned char *) in;
    unsigned char       *o = (unsigned char *) out;
    size_t               i = 0, k;

    while (i < n) {
        k = cm_utf8_seq(p + i, n - i);
        if (k == 0) {
            o = cm_put_cp(o, cm_cp1252(p[i]));
            i++;
            continue;
        }
        memcpy(o, p + i, k);
        o += k;
        i += k;
    }
    *o = '\0';
    return (size_t) (o - (unsigned char *) out);
}


/* ---- cleaning --------------------------------------------------------- */

/* Markup seen in the corpus; removed, never replaced by anything. */
static const char *cm_clean_tags[] = {
    "<u>", "</u>", "<i>", "</i>", "<b>", "</b>", "<br>", "<br/>", "<br />"
};


size_t
cm_text_clean(char *s, size_t len)
{
    unsigned char  *p = (unsigned char *) s;
    size_t          r = 0, w = 0, i, tl;
    int             space = 0, tag;

    while (r < len) {
        unsigned char ch = p[r];

        if (ch == '<') {
            tag = 0;
            for (i = 0; i < CM_ARRAY_SIZE(cm_clean_tags); i++) {
                tl = strlen(cm_clean_tags[i]);
                if (len - r >= tl && strncasecmp((char *) p + r,
                                                 cm_clean_tags[i], tl) == 0)
                {
                    r += tl;
                    if (cm_clean_tags[i][1] == 'b'
                        && cm_clean_tags[i][2] == 'r')
                    {
                        space = (w > 0);
                    }
                    tag = 1;
                    break;
                }
            }
            if (tag) {
                continue;
            }
        }
        /* C0 controls, space, DEL; C1 controls (U+0080..U+009F) */
        if (ch <= 0x20 || ch == 0x7F) {
            space = (w > 0);
            r++;
            continue;
        }
        if (ch == 0xC2 && r + 1 < len && p[r + 1] >= 0x80 && p[r + 1] < 0xA0)
        {
            space = (w > 0);
            r += 2;
            continue;
        }
        if (space) {
            p[w++] = ' ';
            space = 0;
        }
        p[w++] = ch;
        r++;
    }
    p[w] = '\0';
    return w;
}


/* ---- line and field splitting ---------------------------------------- */

/* Returns the start of the next line; *eol = end of this one (no CR/LF). */
static const char *
cm_next_line(const char *p, const char *end, const char **eol)
{
    const char *nl = memchr(p, '\n', (size_t) (end - p));
    const char *e = nl != NULL ? nl : end;

    if (e > p && e[-1] == '\r') {
        e--;
    }
    *eol = e;
    return nl != NULL ? nl + 1 : end;
}


/* Splits on " +++$+++ "; the last field takes the rest.  Returns count. */
static size_t
cm_split_sep(const char *s, const char *end, const char **f, size_t *fl,
    size_t max)
{
    size_t      n = 0;
    const char *q;

    while (n < max) {
        q = (n + 1 < max)
            ? memmem(s, (size_t) (end - s), CM_CORNELL_SEP, CM_CORNELL_SEP_LEN)
            : NULL;
        f[n] = s;
        if (q == NULL) {
            fl[n++] = (size_t) (end - s);
            break;
        }
        fl[n++] = (size_t) (q - s);
        s = q + CM_CORNELL_SEP_LEN;
    }
    return n;
}


/* "L123" / "m17" -> 123 / 17; surrounding spaces allowed. */
static int
cm_parse_id(const char *s, size_t n, char prefix, uint32_t *out)
{
    uint64_t v = 0;
    size_t   i = 0;

    while (n > 0 && s[n - 1] == ' ') {
        n--;
    }
    while (i < n && s[i] == ' ') {
        i++;
    }
    if (i >= n || s[i] != prefix) {
        return CM_EINVAL;
    }
    i++;
    if (i >= n) {
        return CM_EINVAL;
    }
    for (; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return CM_EINVAL;
        }
        v = v * 10 + (uint64_t) (s[i] - '0');
        if (v > INT32_MAX) {
            return CM_EINVAL;
        }
    }
    *out = (uint32_t) v;
    return CM_OK;
}


static int
cm_cornell_line_cmp(const void *a, const void *b)
{
    const cm_cornell_line_t *x = a, *y = b;

    if (x->num != y->num) {
        return x->num < y->num ? -1 : 1;
    }
    return x->fileline < y->fileline ? -1 : (x->fileline > y->fileline);
}


static int
cm_cornell_line_cmp_num(const void *a, const void *b)
{
    const cm_cornell_line_t *x = a, *y = b;

    return x->num < y->num ? -1 : (x->num > y->num);
}


/* ---- original Cornell ------------------------------------------------- */

static int
cm_cornell_titles(cm_corpus_t *c, const char *buf, size_t len)
{
    const char  *p = buf, *end = buf + len, *eol, *f[6];
    size_t       fl[6], nf, ln = 0, k;
    uint32_t     movie;
    int64_t      off;
    cm_movie_t  *m;

    while (p < end) {
        const char *line = p;

        p = cm_next_line(p, end, &eol);
        ln++;
        if (eol == line) {
            continue;
        }
        nf = cm_split_sep(line, eol, f, fl, 6);
        if (nf < 3) {
            cm_corpus_bad(c, "movie_titles_metadata.txt", ln,
                          "expected >= 3 fields, got %zu", nf);
            continue;
        }
        if (cm_parse_id(f[0], fl[0], 'm', &movie) != CM_OK) {
            cm_corpus_bad(c, "movie_titles_metadata.txt", ln,
                          "bad movie id");
            continue;
        }
        off = cm_arena_add_text(c, f[1], fl[1], 1);
        if (off < 0 || cm_grow((void **) &c->movies, &c->cap_movies,
                               c->n_movies + 1, sizeof(cm_movie_t)) != CM_OK)
        {
            return CM_ENOMEM;
        }
        m = &c->movies[c->n_movies++];
        m->movie = (int32_t) movie;
        m->title = (uint32_t) off;
        /* bounded: the field is not NUL-terminated (found by fuzz_cornell) */
        m->year = 0;
        for (k = 0; k < fl[2] && k < 4 && f[2][k] >= '0' && f[2][k] <= '9';
             k++)
        {
            m->year = m->year * 10 + (f[2][k] - '0');
        }
    }
    return CM_OK;
}


/* Parses "['L1', 'L2']" into ids; returns count or -1 when malformed. */
static ssize_t
cm_cornell_idlist(const char *s, const char *end, uint32_t **ids,
    size_t *cap)
{
    size_t       n = 0;
    const char  *q;
    char         quote;
    uint32_t     id;

    while (s < end && *s == ' ') {
        s++;
    }
    if (s >= end || *s++ != '[') {
        return -1;
    }
    for ( ;; ) {
        while (s < end && *s == ' ') {
            s++;
        }
        if (s < end && *s == ']' && n == 0) {
            s++;
            break;
        }
        if (s >= end || (*s != '\'' && *s != '"')) {
            return -1;
        }
        quote = *s++;
        q = memchr(s, quote, (size_t) (end - s));
        if (q == NULL || cm_parse_id(s, (size_t) (q - s), 'L', &id) != CM_OK)
        {
            return -1;
        }
        if (cm_grow((void **) ids, cap, n + 1, sizeof(uint32_t)) != CM_OK) {
            return -2;
        }
        (*ids)[n++] = id;
        s = q + 1;
        while (s < end && *s == ' ') {
            s++;
        }
        if (s < end && *s == ',') {
            s++;
            continue;
        }
        if (s < end && *s == ']') {
            s++;
            break;
        }
        return -1;
    }
    while (s < end && *s == ' ') {
        s++;
    }
    return s == end ? (ssize_t) n : -1;
}


int
cm_corpus_parse_cornell(cm_corpus_t *c, const char *lines, size_t nlines,
    const char *convs, size_t nconvs, const char *titles, size_t ntitles)
{
    const char         *p, *end, *eol, *f[5];
    size_t              fl[5], nf, ln, nrec = 0, caprec = 0, i, k, capids = 0;
    cm_cornell_line_t  *rec = NULL, *r, key;
    uint32_t           *ids = NULL, movie, num;
    int64_t             toff, soff;
    ssize_t             nids;
    int                 rc = CM_ENOMEM;
    uint32_t            first;

    if (cm_arena_add(c, "", 0) < 0) {
        return CM_ENOMEM;
    }
    if (titles != NULL && cm_cornell_titles(c, titles, ntitles) != CM_OK) {
        return CM_ENOMEM;
    }

    /* movie_lines.txt: L1045 +++$+++ u0 +++$+++ m0 +++$+++ BIANCA +++$+++ text */
    p = lines;
    end = lines + nlines;
    ln = 0;
    while (p < end) {
        const char *line = p;

        p = cm_next_line(p, end, &eol);
        ln++;
        if (eol == line) {
            continue;
        }
        if ((size_t) (eol - line) > CM_CORPUS_MAX_LINE) {
            cm_corpus_bad(c, "movie_lines.txt", ln, "line longer than 1 MiB");
            continue;
        }
        nf = cm_split_sep(line, eol, f, fl, 5);
        if (nf != 5) {
            cm_corpus_bad(c, "movie_lines.txt", ln,
                          "expected 5 fields, got %zu", nf);
            continue;
        }
        if (cm_parse_id(f[0], fl[0], 'L', &num) != CM_OK) {
            cm_corpus_bad(c, "movie_lines.txt", ln, "bad line id");
            continue;
        }
        if (cm_parse_id(f[2], fl[2], 'm', &movie) != CM_OK) {
            cm_corpus_bad(c, "movie_lines.txt", ln, "bad movie id");
            continue;
        }
        soff = cm_arena_add_text(c, f[3], fl[3], 1);
        toff = cm_arena_add_text(c, f[4], fl[4], 1);
        if (soff < 0 || toff < 0
            || cm_grow((void **) &rec, &caprec, nrec + 1, sizeof(*rec))
               != CM_OK)
        {
            goto done;
        }
        r = &rec[nrec++];
        r->num = num;
        r->movie = (int32_t) movie;
        r->text = (uint32_t) toff;
        r->speaker = (uint32_t) soff;
        r->fileline = (uint32_t) ln;
    }
    if (nrec > 0) {
        qsort(rec, nrec, sizeof(*rec), cm_cornell_line_cmp);
    }
    /* duplicates: keep the first in file order (sorted first by fileline) */
    for (i = 1, k = 1; i < nrec; i++) {
        if (rec[i].num == rec[k - 1].num) {
            cm_corpus_bad(c, "movie_lines.txt", rec[i].fileline,
                          "duplicate line id L%u (first on line %u)",
                          rec[i].num, rec[k - 1].fileline);
            continue;
        }
        rec[k++] = rec[i];
    }
    nrec = nrec > 0 ? k : 0;

    /* movie_conversations.txt: u0 +++$+++ u2 +++$+++ m0 +++$+++ ['L1', 'L2'] */
    p = convs;
    end = convs + nconvs;
    ln = 0;
    while (p < end) {
        const char *line = p;

        p = cm_next_line(p, end, &eol);
        ln++;
        if (eol == line) {
            continue;
        }
        nf = cm_split_sep(line, eol, f, fl, 4);
        if (nf != 4) {
            cm_corpus_bad(c, "movie_conversations.txt", ln,
                          "expected 4 fields, got %zu", nf);
            continue;
        }
        if (cm_parse_id(f[2], fl[2], 'm', &movie) != CM_OK) {
            cm_corpus_bad(c, "movie_conversations.txt", ln, "bad movie id");
            continue;
        }
        nids = cm_cornell_idlist(f[3], f[3] + fl[3], &ids, &capids);
        if (nids == -2) {
            goto done;
        }
        if (nids <= 0) {
            cm_corpus_bad(c, "movie_conversations.txt", ln,
                          nids == 0 ? "empty line-id list"
                                    : "bad line-id list");
            continue;
        }
        /* validate every id before adding any turn */
        for (i = 0; i < (size_t) nids; i++) {
            key.num = ids[i];
            r = nrec > 0 ? bsearch(&key, rec, nrec, sizeof(*rec),
                                   cm_cornell_line_cmp_num)
                         : NULL;
            if (r == NULL) {
                cm_corpus_bad(c, "movie_conversations.txt", ln,
                              "unknown line id L%u", ids[i]);
                break;
            }
            if (r->movie != (int32_t) movie) {
                cm_corpus_bad(c, "movie_conversations.txt", ln,
                              "line L%u is from movie m%d, not m%u",
                              ids[i], r->movie, movie);
                break;
            }
        }
        if (i < (size_t) nids) {
            continue;
        }
        first = (uint32_t) c->n_turns;
        for (i = 0; i < (size_t) nids; i++) {
            key.num = ids[i];
            r = bsearch(&key, rec, nrec, sizeof(*rec),
                        cm_cornell_line_cmp_num);
            if (r->text == 0) {
                c->n_empty++;
                continue;
            }
            if (cm_corpus_add_turn(c, r->text, r->speaker) != CM_OK) {
                goto done;
            }
        }
        if (cm_corpus_add_conv(c, (int32_t) movie, first,
                               (uint32_t) c->n_turns - first) != CM_OK)
        {
            goto done;
        }
    }
    rc = CM_OK;

done:
    free(rec);
    free(ids);
    return rc;
}


/* ---- plain dialogue text ---------------------------------------------- */

int
cm_corpus_parse_plain(cm_corpus_t *c, const char *buf, size_t len,
    const char *name)
{
    const char  *p = buf, *end = buf + len, *eol, *q;
    size_t       ln = 0;
    uint32_t     first;
    int64_t      off;
    int          blank;

    if (cm_arena_add(c, "", 0) < 0) {
        return CM_ENOMEM;
    }
    first = (uint32_t) c->n_turns;
    while (p < end) {
        const char *line = p;

        p = cm_next_line(p, end, &eol);
        ln++;
        blank = 1;
        for (q = line; q < eol; q++) {
            if (*q != ' ' && *q != '\t' && *q != '\r' && *q != '\f'
                && *q != '\v')
            {
                blank = 0;
                break;
            }
        }
        if (blank) {
            if (cm_corpus_add_conv(c, -1, first,
                                   (uint32_t) c->n_turns - first) != CM_OK)
            {
                return CM_ENOMEM;
            }
            first = (uint32_t) c->n_turns;
            continue;
        }
        if ((size_t) (eol - line) > CM_CORPUS_MAX_LINE) {
            cm_corpus_bad(c, name, ln, "line longer than 1 MiB");
            continue;
        }
        if (memchr(line, '\0', (size_t) (eol - line)) != NULL) {
            cm_corpus_bad(c, name, ln, "NUL byte in text");
            continue;
        }
        off = cm_arena_add_text(c, line, (size_t) (eol - line), 0);
        if (off < 0) {
            return CM_ENOMEM;
        }
        if (off == 0) {
            c->n_empty++;
            continue;
        }
        if (cm_corpus_add_turn(c, (uint32_t) off, 0) != CM_OK) {
            return CM_ENOMEM;
        }
    }
    return cm_corpus_add_conv(c, -1, first, (uint32_t) c->n_turns - first);
}


/* ---- tab-separated pairs ---------------------------------------------- */

int
cm_corpus_parse_pairs(cm_corpus_t *c, const char *buf, size_t len,
    const char *name)
{
    const char  *p = buf, *end = buf + len, *eol, *tab;
    size_t       ln = 0, tabs;
    int64_t      a, b;
    const char  *q;

    if (cm_arena_add(c, "", 0) < 0) {
        return CM_ENOMEM;
    }
    while (p < end) {
        const char *line = p;

        p = cm_next_line(p, end, &eol);
        ln++;
        if (eol == line) {
            continue;
        }
        if ((size_t) (eol - line) > CM_CORPUS_MAX_LINE) {
            cm_corpus_bad(c, name, ln, "line longer than 1 MiB");
            continue;
        }
        if (memchr(line, '\0', (size_t) (eol - line)) != NULL) {
            cm_corpus_bad(c, name, ln, "NUL byte in text");
            continue;
        }
        tabs = 0;
        for (q = line; q < eol; q++) {
            tabs += (*q == '\t');
        }
        if (tabs != 1) {
            cm_corpus_bad(c, name, ln, "expected 2 tab-separated fields,"
                          " got %zu", tabs + 1);
            continue;
        }
        tab = memchr(line, '\t', (size_t) (eol - line));
        a = cm_arena_add_text(c, line, (size_t) (tab - line), 0);
        b = cm_arena_add_text(c, tab + 1, (size_t) (eol - tab - 1), 0);
        if (a < 0 || b < 0) {
            return CM_ENOMEM;
        }
        if (a == 0 || b == 0) {
            cm_corpus_bad(c, name, ln, "empty %s after cleaning",
                          a == 0 ? "line" : "response");
            continue;
        }
        if (cm_corpus_add_turn(c, (uint32_t) a, 0) != CM_OK
            || cm_corpus_add_turn(c, (uint32_t) b, 0) != CM_OK
            || cm_corpus_add_conv(c, -1, (uint32_t) c->n_turns - 2, 2)
               != CM_OK)
        {
            return CM_ENOMEM;
        }
    }
    return CM_OK;
}


/* ---- files ------------------------------------------------------------ */

int
cm_file_read(const char *path, char **buf, size_t *len, char *err,
    size_t errlen)
{
    int          fd;
    struct stat  st;
    char        *b;
    size_t       got = 0;
    ssize_t      n;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return cm_seterr(err, errlen, errno == ENOENT ? CM_ENOTFOUND : CM_EIO,
                         "%s: %s", path, strerror(errno));
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return cm_seterr(err, errlen, CM_EIO, "%s: not a regular file", path);
    }
    b = malloc((size_t) st.st_size + 1);
    if (b == NULL) {
        close(fd);
        return cm_seterr(err, errlen, CM_ENOMEM, "%s: out of memory", path);
    }
    while (got < (size_t) st.st_size) {
        n = read(fd, b + got, (size_t) st.st_size - got);
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n <= 0) {
            free(b);
            close(fd);
            return cm_seterr(err, errlen, CM_EIO, "%s: read failed", path);
        }
        got += (size_t) n;
    }
    close(fd);
    b[got] = '\0';
    *buf = b;
    *len = got;
    return CM_OK;
}


static int
cm_path_join(char *out, size_t cap, const char *dir, const char *file)
{
    int n = snprintf(out, cap, "%s/%s", dir, file);

    return (n < 0 || (size_t) n >= cap) ? CM_EINVAL : CM_OK;
}


int
cm_corpus_load(cm_corpus_t *c, const char *path, char *err, size_t errlen)
{
    struct stat  st;
    char         p1[4096], p2[4096], p3[4096];
    char        *b1 = NULL, *b2 = NULL, *b3 = NULL;
    size_t       n1 = 0, n2 = 0, n3 = 0, pl;
    int          rc;

    if (stat(path, &st) != 0) {
        return cm_seterr(err, errlen, CM_ENOTFOUND, "%s: %s", path,
                         strerror(errno));
    }
    if (S_ISDIR(st.st_mode)) {
        if (cm_path_join(p1, sizeof(p1), path, "movie_lines.txt") != CM_OK
            || cm_path_join(p2, sizeof(p2), path, "movie_conversations.txt")
               != CM_OK
            || cm_path_join(p3, sizeof(p3), path, "movie_titles_metadata.txt")
               != CM_OK)
        {
            return cm_seterr(err, errlen, CM_EINVAL, "%s: path too long",
                             path);
        }
        if (access(p1, R_OK) == 0) {
            rc = cm_file_read(p1, &b1, &n1, err, errlen);
            if (rc == CM_OK) {
                rc = cm_file_read(p2, &b2, &n2, err, errlen);
            }
            if (rc == CM_OK && access(p3, R_OK) == 0) {
                rc = cm_file_read(p3, &b3, &n3, err, errlen);
            }
            if (rc == CM_OK) {
                rc = cm_corpus_parse_cornell(c, b1, n1, b2, n2, b3, n3);
                if (rc != CM_OK) {
                    cm_seterr(err, errlen, rc, "%s: %s", path,
                              cm_strerror(rc));
                }
            }
            free(b1);
            free(b2);
            free(b3);
            return rc;
        }
        if (cm_path_join(p1, sizeof(p1), path, "dialogues.txt") != CM_OK) {
            return cm_seterr(err, errlen, CM_EINVAL, "%s: path too long",
                             path);
        }
        if (access(p1, R_OK) != 0) {
            return cm_seterr(err, errlen, CM_ENOTFOUND, "%s: no "
                             "movie_lines.txt or dialogues.txt", path);
        }
        path = p1;
    }
    rc = cm_file_read(path, &b1, &n1, err, errlen);
    if (rc != CM_OK) {
        return rc;
    }
    pl = strlen(path);
    if (pl > 4 && strcmp(path + pl - 4, ".tsv") == 0) {
        rc = cm_corpus_parse_pairs(c, b1, n1, path);
    } else {
        rc = cm_corpus_parse_plain(c, b1, n1, path);
    }
    free(b1);
    if (rc != CM_OK) {
        return cm_seterr(err, errlen, rc, "%s: %s", path, cm_strerror(rc));
    }
    return CM_OK;
}


/* ---- split ------------------------------------------------------------ */

static uint64_t
cm_splitmix64(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);

    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}


static int
cm_int32_cmp(const void *a, const void *b)
{
    int32_t x = *(const int32_t *) a, y = *(const int32_t *) b;

    return x < y ? -1 : (x > y);
}


size_t
cm_corpus_split(const cm_corpus_t *c, double frac, uint64_t seed,
    uint8_t *is_val)
{
    int32_t  *mv = NULL, t;
    size_t    i, j, nm = 0, nval_m, nplain = 0, nval = 0, k, seen;
    uint64_t  rng = seed;

    memset(is_val, 0, c->n_convs);
    if (frac <= 0.0 || c->n_convs == 0) {
        return 0;
    }
    if (frac > 1.0) {
        frac = 1.0;
    }

    /* distinct movies, shuffled by seed; the first nval_m go to validation */
    mv = malloc(c->n_convs * sizeof(int32_t));
    if (mv != NULL) {
        for (i = 0; i < c->n_convs; i++) {
            if (c->convs[i].movie >= 0) {
                mv[nm++] = c->convs[i].movie;
            } else {
                nplain++;
            }
        }
        if (nm > 0) {
            qsort(mv, nm, sizeof(int32_t), cm_int32_cmp);
            for (i = 1, j = 1; i < nm; i++) {
                if (mv[i] != mv[j - 1]) {
                    mv[j++] = mv[i];
                }
            }
            nm = j;
            for (i = nm - 1; i > 0; i--) {
                j = (size_t) (cm_splitmix64(&rng) % (i + 1));
                t = mv[i];
                mv[i] = mv[j];
                mv[j] = t;
            }
            nval_m = (size_t) (frac * (double) nm + 0.999999);
            if (nval_m < 1) {
                nval_m = 1;
            }
            if (nval_m >= nm) {
                nval_m = nm > 1 ? nm - 1 : 0;
            }
            qsort(mv, nval_m, sizeof(int32_t), cm_int32_cmp);
            for (i = 0; i < c->n_convs; i++) {
                if (c->convs[i].movie >= 0 && nval_m > 0
                    && bsearch(&c->convs[i].movie, mv, nval_m,
                               sizeof(int32_t), cm_int32_cmp) != NULL)
                {
                    is_val[i] = 1;
                    nval++;
                }
            }
        }
        free(mv);
    }

    /* conversations without movie ids: the last frac, contiguous */
    if (nplain > 0) {
        k = (size_t) (frac * (double) nplain + 0.5);
        if (k < 1 && nplain > 1) {
            k = 1;
        }
        if (k >= nplain) {
            k = nplain > 1 ? nplain - 1 : 0;
        }
        seen = 0;
        for (i = c->n_convs; i > 0 && seen < k; i--) {
            if (c->convs[i - 1].movie < 0) {
                is_val[i - 1] = 1;
                seen++;
                nval++;
            }
        }
    }
    return nval;
}

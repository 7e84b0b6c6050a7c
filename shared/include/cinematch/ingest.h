/*
 * cinematch/ingest.h: what `cinematch ingest` does before it talks to
 * PostgreSQL: parse a ratings file, decide line by line what goes in and
 * what is rejected (with the line number, the raw line and why), mark the
 * held-out split, and escape text for COPY.  No I/O, so unit tests and the
 * fuzz target reach the same code the CLI runs.
 *
 * A data line is rejected when
 *   - the MovieLens reader refuses it (fields, ids, rating, timestamp);
 *   - the rating is not a multiple of 0.5 (the database's rating_value);
 *   - the timestamp lies after conf->max_ts (the future);
 *   - the movie is not in conf->movies (when a catalogue is given);
 *   - the same (user, movie) already appeared on an earlier line of the
 *     file ("duplicate of line N"; counted in n_dup as well).
 * Everything else is accepted, in file order.
 */
#ifndef CINEMATCH_INGEST_H
#define CINEMATCH_INGEST_H

#include <stddef.h>
#include <stdint.h>

#include "cinematch/movielens.h"

#define CM_INGEST_RAW_MAX     4096   /* ingestion_rejects.raw_line */
#define CM_INGEST_REASON_MAX  200

typedef struct {
    uint64_t     line;          /* 1-based physical line */
    const char  *raw;           /* into the parsed buffer (not NUL-ended) */
    size_t       raw_len;
    int          duplicate;
    char         reason[CM_INGEST_REASON_MAX];
} cm_ingest_reject_t;

typedef struct {
    const int32_t  *movies;     /* ascending known movie ids, or NULL */
    size_t          n_movies;
    int64_t         max_ts;     /* unix seconds; <= 0: no limit */
    double          test_frac;  /* per-user temporal hold-out; 0: none */
} cm_ingest_conf_t;

typedef struct {
    cm_rating_t          *rows;     /* (n_rows) accepted, file order */
    uint64_t             *line;     /* (n_rows) their line numbers */
    uint8_t              *test;     /* (n_rows) 1: held out (test split) */
    size_t                n_rows;
    size_t                n_test;
    cm_ingest_reject_t   *rej;      /* (n_rej) ascending line */
    size_t                n_rej;
    size_t                n_dup;    /* of n_rej */
    size_t                n_total;  /* data lines (not blank, not header) */
} cm_ingest_plan_t;

int cm_ingest_plan(const char *buf, size_t len, cm_ml_format_t fmt,
    const char *name, const cm_ingest_conf_t *conf, cm_ingest_plan_t *out,
    char *err, size_t errlen);
void cm_ingest_plan_free(cm_ingest_plan_t *p);

/* Format of a ratings file from its name: u.data, *.base, *.test ->
 * ml-100k; *.dat -> ml-1m; else ml-latest CSV. */
cm_ml_format_t cm_ingest_guess_format(const char *path);

/* The title without MovieLens' trailing " (1995)" / " (2006-2007)";
 * returns the new length (the year itself is cm_ml_title_year's). */
size_t cm_ingest_title_strip(const char *t, size_t len);

/*
 * COPY text-format field: backslash, tab, newline and CR escaped, NUL and
 * invalid UTF-8 bytes replaced by '?', at most max_in input bytes taken.
 * out needs 2 * min(n, max_in) + 1 bytes; returns the length written.
 */
size_t cm_ingest_copy_escape(const char *in, size_t n, size_t max_in,
    char *out);

/*
 * PostgreSQL binary COPY (COPY ... FROM STDIN (FORMAT binary)), the form
 * the ingest sends rows in: no text to format on our side and none to
 * parse on the server's.  Every value is big-endian:
 *   header   "PGCOPY\n\377\r\n\0", int32 flags 0, int32 extension 0
 *   tuple    int16 field count, then per field int32 length + bytes
 *   trailer  int16 -1
 * Each writer stores at out and returns the bytes written.
 */
#define CM_PGCOPY_HEADER_LEN   19
#define CM_PGCOPY_NUMERIC_MAX  16   /* cm_pgcopy_half_stars() at most */

size_t cm_pgcopy_header(unsigned char *out);
size_t cm_pgcopy_trailer(unsigned char *out);
size_t cm_pgcopy_tuple(unsigned char *out, int nfields);
size_t cm_pgcopy_int4(unsigned char *out, int32_t v);
size_t cm_pgcopy_int8(unsigned char *out, int64_t v);
size_t cm_pgcopy_text(unsigned char *out, const char *s, size_t n);
/* timestamptz: unix seconds as microseconds since 2000-01-01 UTC. */
size_t cm_pgcopy_timestamptz(unsigned char *out, int64_t unix_s);
/* numeric with one decimal (numeric(2,1), rating_value) of half_stars / 2;
 * half_stars 0..19999. */
size_t cm_pgcopy_half_stars(unsigned char *out, int half_stars);

#endif /* CINEMATCH_INGEST_H */

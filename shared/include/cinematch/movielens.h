/*
 * cinematch/movielens.h: readers for the MovieLens file formats.
 *
 *   ml-latest / ml-25m / ml-32m   ratings.csv  userId,movieId,rating,timestamp
 *                                 movies.csv   movieId,title,genres (RFC 4180
 *                                 quoting, UTF-8, LF or CRLF)
 *   ml-100k                       u.data, u1.base ... ub.test: tab-separated
 *                                 user item rating timestamp
 *                                 u.item: pipe-separated, Latin-1, 19 genre
 *                                 flags
 *   ml-1m                         ratings.dat, movies.dat: "::"-separated,
 *                                 Latin-1
 *
 * The parsers work on a buffer and never do I/O (the *_file and
 * cm_ml_load_dir wrappers read the whole file first), so the fuzz targets
 * reach exactly the code the daemons run.  Text comes out as UTF-8: Latin-1
 * inputs are converted, UTF-8 inputs are validated.
 *
 * Every malformed line is reported through opts->on_bad with the file name,
 * the 1-based line number and a reason.  In strict mode the first one fails
 * the parse with CM_EFORMAT and "file:line: reason" in err; in lenient mode
 * it is skipped and counted in opts->n_bad.
 */
#ifndef CINEMATCH_MOVIELENS_H
#define CINEMATCH_MOVIELENS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum {
    CM_ML_AUTO = 0,
    CM_ML_LATEST,       /* ml-latest(-small), ml-25m, ml-32m: CSV */
    CM_ML_100K,         /* u.data (tab), u.item (pipe, Latin-1) */
    CM_ML_1M            /* ratings.dat, movies.dat ("::", Latin-1) */
} cm_ml_format_t;

typedef struct {
    int64_t   ts;       /* unix seconds */
    int32_t   user;     /* external MovieLens userId, >= 1 */
    int32_t   item;     /* external movieId, >= 1 */
    float     rating;   /* 0.5 .. 5.0 */
} cm_rating_t;

typedef struct {
    cm_rating_t  *v;
    size_t        n;
    size_t        cap;
} cm_ratings_t;

/*
 * Genres: one bit each, in this order (ml-100k's "Children's" and
 * "unknown" map to CM_ML_G_CHILDREN and CM_ML_G_NONE).
 */
enum {
    CM_ML_G_NONE = 0,   /* "(no genres listed)" */
    CM_ML_G_ACTION, CM_ML_G_ADVENTURE, CM_ML_G_ANIMATION, CM_ML_G_CHILDREN,
    CM_ML_G_COMEDY, CM_ML_G_CRIME, CM_ML_G_DOCUMENTARY, CM_ML_G_DRAMA,
    CM_ML_G_FANTASY, CM_ML_G_FILM_NOIR, CM_ML_G_HORROR, CM_ML_G_IMAX,
    CM_ML_G_MUSICAL, CM_ML_G_MYSTERY, CM_ML_G_ROMANCE, CM_ML_G_SCI_FI,
    CM_ML_G_THRILLER, CM_ML_G_WAR, CM_ML_G_WESTERN,
    CM_ML_N_GENRES
};

typedef struct {
    char      *title;   /* UTF-8, as in the file (year suffix kept) */
    int32_t    id;      /* movieId */
    int32_t    year;    /* parsed from "(YYYY)" at the end of the title (or
                           ml-100k's release date); 0 when absent */
    uint32_t   genres;  /* bit g = genre g; 0 only for an empty list */
} cm_movie_t;

typedef struct {
    cm_movie_t  *v;
    size_t       n;
    size_t       cap;
} cm_movies_t;

typedef void (*cm_ml_bad_line_pt)(void *ctx, const char *file, size_t line,
    const char *reason);

typedef struct {
    int                 strict;     /* 1: the first malformed line fails */
    cm_ml_bad_line_pt   on_bad;     /* NULL: silent */
    void               *ctx;
    size_t              n_lines;    /* out, accumulated: data lines seen */
    size_t              n_bad;      /* out, accumulated: lines skipped */
} cm_ml_opts_t;

typedef struct {
    cm_ml_format_t  format;
    cm_ratings_t    ratings;
    cm_movies_t     movies;
} cm_ml_dataset_t;

/* Reporter that prints "file:line: reason" to stderr (ctx unused). */
void cm_ml_report_stderr(void *ctx, const char *file, size_t line,
    const char *reason);

int cm_ml_parse_ratings(const char *buf, size_t len, cm_ml_format_t fmt,
    const char *name, cm_ml_opts_t *opts, cm_ratings_t *out, char *err,
    size_t errlen);
int cm_ml_parse_movies(const char *buf, size_t len, cm_ml_format_t fmt,
    const char *name, cm_ml_opts_t *opts, cm_movies_t *out, char *err,
    size_t errlen);

int cm_ml_read_ratings_file(const char *path, cm_ml_format_t fmt,
    cm_ml_opts_t *opts, cm_ratings_t *out, char *err, size_t errlen);
int cm_ml_read_movies_file(const char *path, cm_ml_format_t fmt,
    cm_ml_opts_t *opts, cm_movies_t *out, char *err, size_t errlen);

/* Which format a directory holds: ratings.csv, u.data or ratings.dat. */
int cm_ml_detect_dir(const char *dir, cm_ml_format_t *fmt, char *err,
    size_t errlen);
/* Ratings (and movies, when the file exists) of a directory. */
int cm_ml_load_dir(const char *dir, cm_ml_format_t fmt, cm_ml_opts_t *opts,
    cm_ml_dataset_t *ds, char *err, size_t errlen);
/* "ratings.csv", "u.data" or "ratings.dat" (NULL for CM_ML_AUTO). */
const char *cm_ml_ratings_name(cm_ml_format_t fmt);
const char *cm_ml_movies_name(cm_ml_format_t fmt);

int cm_ml_format_parse(const char *s, cm_ml_format_t *fmt);
const char *cm_ml_format_name(cm_ml_format_t fmt);

const char *cm_ml_genre_name(int g);
int cm_ml_genre_parse(const char *s, size_t len);   /* -1: unknown */
/* "Action|Comedy" into buf (always NUL-terminated); returns length. */
size_t cm_ml_genres_format(uint32_t mask, char *buf, size_t len);

/* Year at the end of a title: "Heat (1995)" -> 1995, "(2006–2007)" -> 2006.*/
int32_t cm_ml_title_year(const char *title, size_t len);

int cm_ratings_push(cm_ratings_t *r, const cm_rating_t *x);
void cm_ratings_free(cm_ratings_t *r);
void cm_movies_free(cm_movies_t *m);
void cm_ml_dataset_free(cm_ml_dataset_t *ds);

#endif /* CINEMATCH_MOVIELENS_H */

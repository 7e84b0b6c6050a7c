/*
 * test_movielens.c: MovieLens readers on the committed fixtures in
 * tests/fixtures/movielens/ (one directory per format) and on buffers.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cinematch/common.h"
#include "cinematch/movielens.h"

#define FX "tests/fixtures/movielens/"

#include "cm_test_fixture.h"

/* 100k and 1m fixtures are stored as NAME.fixture (see cm_test_fixture.h) */
static char fx100k[256], fx1m[256], fxlatest[256], fxbad[320];

static const char *fx100k_file(const char *name);

typedef struct {
    size_t  n;
    size_t  lines[16];
    char    reasons[16][96];
    char    file[128];
} bad_log_t;


static void
record_bad(void *ctx, const char *file, size_t line, const char *reason)
{
    bad_log_t *b = ctx;

    if (b->n < 16) {
        b->lines[b->n] = line;
        snprintf(b->reasons[b->n], sizeof(b->reasons[0]), "%s", reason);
        snprintf(b->file, sizeof(b->file), "%s", file);
    }
    b->n++;
}


static const cm_movie_t *
find_movie(const cm_movies_t *m, int32_t id)
{
    size_t i;

    for (i = 0; i < m->n; i++) {
        if (m->v[i].id == id) {
            return &m->v[i];
        }
    }
    return NULL;
}


static void
test_latest_csv_reads_crlf_ratings_and_quoted_titles(void **state)
{
    cm_ml_dataset_t    ds;
    cm_ml_opts_t       o = { 1, NULL, NULL, 0, 0 };
    char               err[256];
    const cm_movie_t  *m;

    assert_int_equal(cm_ml_load_dir(fxlatest, CM_ML_AUTO, &o, &ds, err,
                                    sizeof(err)), CM_OK);
    assert_int_equal(ds.format, CM_ML_LATEST);
    assert_int_equal(ds.ratings.n, 36);
    assert_int_equal(ds.ratings.v[0].user, 1);
    assert_int_equal(ds.ratings.v[0].ts, 964982703);
    assert_int_equal(ds.movies.n, 8);
    assert_int_equal(o.n_bad, 0);

    m = find_movie(&ds.movies, 11);
    assert_non_null(m);
    assert_string_equal(m->title, "American President, The (1995)");
    assert_int_equal(m->year, 1995);
    assert_int_equal(m->genres, (1u << CM_ML_G_COMEDY) | (1u << CM_ML_G_DRAMA)
                                | (1u << CM_ML_G_ROMANCE));
    m = find_movie(&ds.movies, 42);                 /* "" inside quotes */
    assert_string_equal(m->title, "\"Great\" Escape, The (1963)");
    assert_int_equal(m->year, 1963);
    m = find_movie(&ds.movies, 29);                 /* UTF-8 kept as is */
    assert_non_null(strstr(m->title, "Cit\xc3\xa9 des"));
    m = find_movie(&ds.movies, 171749);             /* year range */
    assert_int_equal(m->year, 2006);
    assert_int_equal(m->genres, 1u << CM_ML_G_NONE);
    m = find_movie(&ds.movies, 40697);              /* no year */
    assert_int_equal(m->year, 0);
    cm_ml_dataset_free(&ds);
}


static void
test_ml100k_converts_latin1_titles_and_genre_flags(void **state)
{
    cm_ml_dataset_t    ds;
    char               err[256];
    const cm_movie_t  *m;

    assert_int_equal(cm_ml_load_dir(fx100k, CM_ML_AUTO, NULL, &ds, err,
                                    sizeof(err)), CM_OK);
    assert_int_equal(ds.format, CM_ML_100K);
    assert_int_equal(ds.ratings.n, 18);
    assert_int_equal(ds.movies.n, 5);
    m = find_movie(&ds.movies, 3);
    assert_string_equal(m->title, "Cit\xc3\xa9 des enfants perdus, La (1995)");
    assert_int_equal(m->genres, 1u << CM_ML_G_DRAMA);
    m = find_movie(&ds.movies, 1);                  /* Children's -> bit */
    assert_int_equal(m->genres, (1u << CM_ML_G_ANIMATION)
                     | (1u << CM_ML_G_CHILDREN) | (1u << CM_ML_G_COMEDY));
    m = find_movie(&ds.movies, 4);                  /* year from the date */
    assert_int_equal(m->year, 1987);
    m = find_movie(&ds.movies, 267);
    assert_int_equal(m->year, 0);
    assert_int_equal(m->genres, 1u << CM_ML_G_NONE);
    cm_ml_dataset_free(&ds);
}


static void
test_ml100k_base_and_test_files_partition_u_data(void **state)
{
    cm_ratings_t  a = { 0 }, b = { 0 };
    char          err[256];

    assert_int_equal(cm_ml_read_ratings_file(fx100k_file("u1.base"), CM_ML_100K,
                     NULL, &a, err, sizeof(err)), CM_OK);
    assert_int_equal(cm_ml_read_ratings_file(fx100k_file("u1.test"), CM_ML_100K,
                     NULL, &b, err, sizeof(err)), CM_OK);
    assert_int_equal(a.n + b.n, 18);
    cm_ratings_free(&a);
    cm_ratings_free(&b);
}


static void
test_ml1m_reads_double_colon_latin1(void **state)
{
    cm_ml_dataset_t    ds;
    char               err[256];
    const cm_movie_t  *m;

    assert_int_equal(cm_ml_load_dir(fx1m, CM_ML_AUTO, NULL, &ds, err,
                                    sizeof(err)), CM_OK);
    assert_int_equal(ds.format, CM_ML_1M);
    assert_int_equal(ds.ratings.n, 13);
    m = find_movie(&ds.movies, 3);
    assert_string_equal(m->title, "Mis\xc3\xa9rables, Les (1995)");
    m = find_movie(&ds.movies, 2);
    assert_true(m->genres & (1u << CM_ML_G_CHILDREN));
    assert_int_equal(m->year, 1995);
    cm_ml_dataset_free(&ds);
}


static void
test_lenient_mode_reports_every_malformed_line_and_keeps_good_ones(void **s)
{
    cm_ratings_t  r = { 0 };
    bad_log_t     log;
    cm_ml_opts_t  o = { 0, record_bad, &log, 0, 0 };
    char          err[256];
    size_t        expect[] = { 3, 4, 5, 6, 8, 9, 10 };
    size_t        i;

    memset(&log, 0, sizeof(log));
    assert_int_equal(cm_ml_read_ratings_file(fxbad,
                     CM_ML_LATEST, &o, &r, err, sizeof(err)), CM_OK);
    assert_int_equal(r.n, 2);
    assert_int_equal(r.v[1].item, 8);               /* no final newline */
    assert_int_equal(o.n_bad, CM_ARRAY_SIZE(expect));
    assert_int_equal(log.n, CM_ARRAY_SIZE(expect));
    for (i = 0; i < CM_ARRAY_SIZE(expect); i++) {
        assert_int_equal(log.lines[i], expect[i]);
    }
    assert_string_equal(log.file, fxbad);
    assert_non_null(strstr(log.reasons[0], "expected 4 fields"));
    assert_non_null(strstr(log.reasons[1], "user id"));
    assert_non_null(strstr(log.reasons[2], "outside"));
    assert_non_null(strstr(log.reasons[3], "not a decimal"));
    assert_non_null(strstr(log.reasons[4], "timestamp"));
    assert_non_null(strstr(log.reasons[5], "unterminated"));
    cm_ratings_free(&r);
}


static void
test_strict_mode_fails_on_first_malformed_line_with_location(void **state)
{
    cm_ratings_t  r = { 0 };
    cm_ml_opts_t  o = { 1, NULL, NULL, 0, 0 };
    char          err[256];

    assert_int_equal(cm_ml_read_ratings_file(fxbad,
                     CM_ML_LATEST, &o, &r, err, sizeof(err)), CM_EFORMAT);
    {
        char want[512];

        snprintf(want, sizeof(want), "%s:3: expected 4 fields"
                 " (user, movie, rating, timestamp)", fxbad);
        assert_string_equal(err, want);
    }
    cm_ratings_free(&r);
}


static void
test_movie_lines_with_bad_utf8_or_genres_are_rejected(void **state)
{
    const char    buf[] = "movieId,title,genres\n"
                          "1,Bad \xc3 (1999),Drama\n"
                          "2,Fine (2001),Drama|Bogus\n"
                          "3,Also Fine (2002),Drama|Sci-Fi\n"
                          "4,\"x\"y,Drama\n";
    cm_movies_t   m = { 0 };
    bad_log_t     log;
    cm_ml_opts_t  o = { 0, record_bad, &log, 0, 0 };

    memset(&log, 0, sizeof(log));
    assert_int_equal(cm_ml_parse_movies(buf, sizeof(buf) - 1, CM_ML_LATEST,
                     "m.csv", &o, &m, NULL, 0), CM_OK);
    assert_int_equal(m.n, 1);
    assert_int_equal(m.v[0].id, 3);
    assert_int_equal(log.n, 3);
    assert_non_null(strstr(log.reasons[0], "UTF-8"));
    assert_non_null(strstr(log.reasons[1], "genre"));
    assert_non_null(strstr(log.reasons[2], "quote"));
    cm_movies_free(&m);
}


static void
test_utf8_bom_before_the_header_is_skipped(void **state)
{
    const char    buf[] = "\xef\xbb\xbfuserId,movieId,rating,timestamp\r\n"
                          "1,2,3.5,4\r\n";
    cm_ratings_t  r = { 0 };
    cm_ml_opts_t  o = { 1, NULL, NULL, 0, 0 };

    assert_int_equal(cm_ml_parse_ratings(buf, sizeof(buf) - 1, CM_ML_LATEST,
                     "bom.csv", &o, &r, NULL, 0), CM_OK);
    assert_int_equal(r.n, 1);
    assert_true(r.v[0].rating == 3.5f);
    cm_ratings_free(&r);
}


static void
test_edge_lines_of_every_format_are_judged_correctly(void **state)
{
    /* CSV: quoted numeric fields are fine; these lines are all bad */
    const char    csv[] = "\"1\",\"2\",\"4.5\",\"7\"\n"        /* ok */
                          "1,2,4\"5,7\n"                   /* quote inside */
                          "1,2,,7\n"                        /* empty rating */
                          "1,99999999999,3,7\n"             /* id too big */
                          "1,2,3.1234567890,7\n"            /* too precise */
                          "0,2,3,7\n"                       /* user 0 */
                          ",,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,,\n"; /* fields */
    const char    dat[] = "1::2::5::978300760\n"            /* ok */
                          "1::2::5\n"                       /* 3 fields */
                          "1:2::5::9\n";                    /* ':' is no sep */
    const char    tab[] = "196\t242\t3\t881250949\n"       /* ok */
                          "196 242 3 881250949\n";          /* spaces */
    const char    mov[] = "1::Film (1999)::Drama\n"         /* ok */
                          "2::Film (1999)::\n"              /* no genres */
                          "3::Film (1999)\n";               /* 2 fields */
    const char    item[] = "1|T (1995)|01-Jan-1995||u|0|0|0|0|0|0|0|0|1|0|0"
                           "|0|0|0|0|0|0|0|0\n"             /* ok */
                           "2|T (1995)|01-Jan-1995||u|0|0|0|0|0|0|0|0|2|0|0"
                           "|0|0|0|0|0|0|0|0\n"             /* flag 2 */
                           "3|T\0x|d||u|0|0|0|0|0|0|0|0|1|0|0|0|0|0|0|0|0"
                           "|0|0\n";                        /* NUL */
    const char    utf[] = "1,\"\xf0\x9f\x8e\xac Emoji (2001)\",Drama\n"
                          "2,Overlong \xc0\xaf (2001),Drama\n"
                          "3,Surrogate \xed\xa0\x80 (2001),Drama\n"
                          "4,Cut \xe2\x80,Drama\n";
    cm_ratings_t  r = { 0 };
    cm_movies_t   m = { 0 };
    cm_ml_opts_t  o;

    memset(&o, 0, sizeof(o));
    assert_int_equal(cm_ml_parse_ratings(csv, sizeof(csv) - 1, CM_ML_LATEST,
                     "e.csv", &o, &r, NULL, 0), CM_OK);
    assert_int_equal(r.n, 1);
    assert_true(r.v[0].rating == 4.5f);
    assert_int_equal(o.n_bad, 6);
    r.n = 0;
    memset(&o, 0, sizeof(o));
    assert_int_equal(cm_ml_parse_ratings(dat, sizeof(dat) - 1, CM_ML_1M,
                     "e.dat", &o, &r, NULL, 0), CM_OK);
    assert_int_equal(r.n, 1);
    assert_int_equal(o.n_bad, 2);
    r.n = 0;
    memset(&o, 0, sizeof(o));
    assert_int_equal(cm_ml_parse_ratings(tab, sizeof(tab) - 1, CM_ML_100K,
                     "u.data", &o, &r, NULL, 0), CM_OK);
    assert_int_equal(r.n, 1);
    assert_int_equal(o.n_bad, 1);
    assert_int_equal(cm_ml_parse_ratings(tab, 5, CM_ML_AUTO, "x", NULL, &r,
                                         NULL, 0), CM_EINVAL);
    cm_ratings_free(&r);

    memset(&o, 0, sizeof(o));
    assert_int_equal(cm_ml_parse_movies(mov, sizeof(mov) - 1, CM_ML_1M,
                     "movies.dat", &o, &m, NULL, 0), CM_OK);
    assert_int_equal(m.n, 1);
    assert_int_equal(o.n_bad, 2);
    cm_movies_free(&m);
    memset(&o, 0, sizeof(o));
    assert_int_equal(cm_ml_parse_movies(item, sizeof(item) - 1, CM_ML_100K,
                     "u.item", &o, &m, NULL, 0), CM_OK);
    assert_int_equal(m.n, 1);
    assert_int_equal(m.v[0].genres, 1u << CM_ML_G_DRAMA);
    assert_int_equal(o.n_bad, 2);
    cm_movies_free(&m);
    memset(&o, 0, sizeof(o));
    assert_int_equal(cm_ml_parse_movies(utf, sizeof(utf) - 1, CM_ML_LATEST,
                     "m.csv", &o, &m, NULL, 0), CM_OK);
    assert_int_equal(m.n, 1);                       /* only the emoji */
    assert_int_equal(m.v[0].year, 2001);
    assert_int_equal(o.n_bad, 3);
    assert_int_equal(cm_ml_parse_movies(utf, 5, CM_ML_AUTO, "x", NULL, &m,
                                        NULL, 0), CM_EINVAL);
    cm_movies_free(&m);
}


static void
test_format_names_parse_and_print(void **state)
{
    cm_ml_format_t  f;

    assert_int_equal(cm_ml_format_parse("ml-25m", &f), CM_OK);
    assert_int_equal(f, CM_ML_LATEST);
    assert_string_equal(cm_ml_format_name(f), "ml-latest");
    assert_int_equal(cm_ml_format_parse("ml-100k", &f), CM_OK);
    assert_string_equal(cm_ml_ratings_name(f), "u.data");
    assert_string_equal(cm_ml_movies_name(f), "u.item");
    assert_int_equal(cm_ml_format_parse("ml-1m", &f), CM_OK);
    assert_string_equal(cm_ml_format_name(f), "ml-1m");
    assert_int_equal(cm_ml_format_parse("auto", &f), CM_OK);
    assert_null(cm_ml_ratings_name(f));
    assert_string_equal(cm_ml_format_name(f), "auto");
    assert_int_equal(cm_ml_format_parse("ml-10m", &f), CM_EINVAL);
    assert_string_equal(cm_ml_genre_name(CM_ML_G_FILM_NOIR), "Film-Noir");
    assert_null(cm_ml_genre_name(CM_ML_N_GENRES));
}


static void
test_title_year_handles_suffixes_ranges_and_absence(void **state)
{
    const char *t;

    t = "Heat (1995)";
    assert_int_equal(cm_ml_title_year(t, strlen(t)), 1995);
    t = "Heat (1995)  ";
    assert_int_equal(cm_ml_title_year(t, strlen(t)), 1995);
    t = "Show (2006-2007)";
    assert_int_equal(cm_ml_title_year(t, strlen(t)), 2006);
    t = "Babylon 5";
    assert_int_equal(cm_ml_title_year(t, strlen(t)), 0);
    t = "Film (a.k.a. Other)";
    assert_int_equal(cm_ml_title_year(t, strlen(t)), 0);
    t = "(1995)";
    assert_int_equal(cm_ml_title_year(t, strlen(t)), 1995);
    t = "x (12345)";
    assert_int_equal(cm_ml_title_year(t, strlen(t)), 0);
    t = "()";
    assert_int_equal(cm_ml_title_year(t, strlen(t)), 0);
}


static void
test_genres_format_round_trips_through_parse(void **state)
{
    char      buf[256];
    uint32_t  mask = (1u << CM_ML_G_ACTION) | (1u << CM_ML_G_SCI_FI);

    assert_int_equal(cm_ml_genres_format(mask, buf, sizeof(buf)), 13);
    assert_string_equal(buf, "Action|Sci-Fi");
    assert_int_equal(cm_ml_genre_parse("Sci-Fi", 6), CM_ML_G_SCI_FI);
    assert_int_equal(cm_ml_genre_parse("Children's", 10), CM_ML_G_CHILDREN);
    assert_int_equal(cm_ml_genre_parse("Sci", 3), -1);
    /* a too-small buffer stops at a whole name */
    cm_ml_genres_format(mask, buf, 9);
    assert_string_equal(buf, "Action");
}


static void
test_auto_detection_fails_clearly_on_empty_directory(void **state)
{
    cm_ml_format_t  f;
    char            err[256];

    assert_int_equal(cm_ml_detect_dir("tests/unit", &f, err, sizeof(err)),
                     CM_ENOTFOUND);
    assert_non_null(strstr(err, "not a MovieLens directory"));
}


static void
test_real_ml_latest_small_loads_without_errors(void **state)
{
    cm_ml_dataset_t  ds;
    cm_ml_opts_t     o = { 1, NULL, NULL, 0, 0 };
    char             err[256];
    const char      *dir = "../shared/data/ml-latest-small";
    FILE            *f;

    f = fopen("../shared/data/ml-latest-small/ratings.csv", "r");
    if (f == NULL) {
        fprintf(stderr, "SKIP: %s absent (real MovieLens data not here)\n",
                dir);
        skip();
    }
    fclose(f);
    if (cm_ml_load_dir(dir, CM_ML_AUTO, &o, &ds, err, sizeof(err)) != CM_OK) {
        fail_msg("%s", err);
    }
    assert_int_equal(ds.ratings.n, 100836);
    assert_int_equal(ds.movies.n, 9742);
    cm_ml_dataset_free(&ds);
}


static const char *
fx100k_file(const char *name)
{
    static char path[2][320];
    static int  n;
    char       *p = path[n++ % 2];

    snprintf(p, 320, "%s/%s", fx100k, name);
    return p;
}


static int
fixtures_up(void **state)
{
    const char *a = cm_fixture_dir(FX "100k", "100k");
    const char *b = cm_fixture_dir(FX "1m", "1m");
    const char *c = cm_fixture_dir(FX "latest", "latest");
    const char *d = cm_fixture_dir(FX "bad", "bad");

    if (a == NULL || b == NULL || c == NULL || d == NULL) {
        return -1;
    }
    snprintf(fxlatest, sizeof(fxlatest), "%s", c);
    snprintf(fxbad, sizeof(fxbad), "%s/ratings.csv", d);
    snprintf(fx100k, sizeof(fx100k), "%s", a);
    snprintf(fx1m, sizeof(fx1m), "%s", b);
    return 0;
}


static int
fixtures_down(void **state)
{
    cm_fixture_cleanup();
    return 0;
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_latest_csv_reads_crlf_ratings_and_quoted_titles),
        cmocka_unit_test(test_ml100k_converts_latin1_titles_and_genre_flags),
        cmocka_unit_test(test_ml100k_base_and_test_files_partition_u_data),
        cmocka_unit_test(test_ml1m_reads_double_colon_latin1),
        cmocka_unit_test(
            test_lenient_mode_reports_every_malformed_line_and_keeps_good_ones),
        cmocka_unit_test(
            test_strict_mode_fails_on_first_malformed_line_with_location),
        cmocka_unit_test(test_movie_lines_with_bad_utf8_or_genres_are_rejected),
        cmocka_unit_test(test_utf8_bom_before_the_header_is_skipped),
        cmocka_unit_test(test_edge_lines_of_every_format_are_judged_correctly),
        cmocka_unit_test(test_format_names_parse_and_print),
        cmocka_unit_test(test_title_year_handles_suffixes_ranges_and_absence),
        cmocka_unit_test(test_genres_format_round_trips_through_parse),
        cmocka_unit_test(test_auto_detection_fails_clearly_on_empty_directory),
        cmocka_unit_test(test_real_ml_latest_small_loads_without_errors),
    };

    return cmocka_run_group_tests(tests, fixtures_up, fixtures_down);
}

/*
 * test_ingest.c: accept/reject decisions, duplicates, the temporal
 * hold-out, title stripping and COPY escaping of `cinematch ingest`.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cinematch/common.h"
#include "cinematch/ingest.h"

#define FIX "tests/fixtures/ingest/"


static char *
slurp(const char *path, size_t *len)
{
    FILE  *f = fopen(path, "rb");
    char  *buf;
    long   n;

    assert_non_null(f);
    fseek(f, 0, SEEK_END);
    n = ftell(f);
    fseek(f, 0, SEEK_SET);
    buf = malloc((size_t) n + 1);
    assert_non_null(buf);
    assert_int_equal(fread(buf, 1, (size_t) n, f), (size_t) n);
    fclose(f);
    *len = (size_t) n;
    return buf;
}


static void
test_plan_rejects_each_bad_line_with_its_number_and_reason(void **state)
{
    static const int32_t  movies[] = { 1, 2, 3, 4, 5, 6, 7 };
    cm_ingest_conf_t      conf = { movies, 7, 2000000000, 0.0 };
    cm_ingest_plan_t      p;
    char                  err[256], *buf;
    size_t                len;

    buf = slurp(FIX "ratings_bad.csv", &len);
    assert_int_equal(cm_ingest_plan(buf, len, CM_ML_LATEST, "ratings_bad.csv",
                                    &conf, &p, err, sizeof(err)), CM_OK);
    assert_int_equal(p.n_total, 11);
    assert_int_equal(p.n_rows, 4);
    assert_int_equal(p.n_rej, 7);
    assert_int_equal(p.n_dup, 1);

    assert_int_equal(p.line[0], 2);
    assert_int_equal(p.line[1], 8);
    assert_int_equal(p.line[2], 12);
    assert_int_equal(p.line[3], 13);
    assert_int_equal(p.rows[3].item, 6);

    assert_int_equal(p.rej[0].line, 3);
    assert_non_null(strstr(p.rej[0].reason, "4 fields"));
    assert_int_equal(p.rej[0].raw_len, 7);
    assert_memory_equal(p.rej[0].raw, "1,2,4.0", 7);
    assert_int_equal(p.rej[1].line, 4);
    assert_non_null(strstr(p.rej[1].reason, "user id"));
    assert_int_equal(p.rej[2].line, 5);
    assert_non_null(strstr(p.rej[2].reason, "outside"));
    assert_int_equal(p.rej[3].line, 6);
    assert_non_null(strstr(p.rej[3].reason, "multiple of 0.5"));
    assert_int_equal(p.rej[4].line, 9);
    assert_string_equal(p.rej[4].reason, "unknown movie id 99");
    assert_int_equal(p.rej[5].line, 10);
    assert_true(p.rej[5].duplicate);
    assert_non_null(strstr(p.rej[5].reason, "of line 8"));
    assert_int_equal(p.rej[6].line, 11);
    assert_non_null(strstr(p.rej[6].reason, "future"));

    cm_ingest_plan_free(&p);
    free(buf);
}


static void
test_plan_without_catalogue_accepts_unknown_movies(void **state)
{
    cm_ingest_plan_t  p;
    char              err[256], *buf;
    size_t            len;

    buf = slurp(FIX "ratings_bad.csv", &len);
    assert_int_equal(cm_ingest_plan(buf, len, CM_ML_LATEST, "x", NULL, &p,
                                    err, sizeof(err)), CM_OK);
    /* no movie list, no clock: 99 and the far timestamp go in */
    assert_int_equal(p.n_rows, 6);
    assert_int_equal(p.n_rej, 5);
    cm_ingest_plan_free(&p);
    free(buf);
}


static void
test_plan_holds_out_the_latest_ratings_of_each_user(void **state)
{
    cm_ingest_conf_t  conf = { NULL, 0, 0, 0.2 };
    cm_ingest_plan_t  p;
    char              err[256], *buf;
    size_t            len, i;

    buf = slurp(FIX "ratings_split.csv", &len);
    assert_int_equal(cm_ingest_plan(buf, len, CM_ML_LATEST, "x", &conf, &p,
                                    err, sizeof(err)), CM_OK);
    assert_int_equal(p.n_rows, 18);
    assert_int_equal(p.n_test, 3);
    for (i = 0; i < p.n_rows; i++) {
        int want = (p.rows[i].user == 1 && p.rows[i].item >= 9)
                   || (p.rows[i].user == 3 && p.rows[i].item == 5);

        assert_int_equal(p.test[i], want);
    }
    cm_ingest_plan_free(&p);
    free(buf);
}


static void
test_plan_reads_ml100k_tabs(void **state)
{
    const char        *data = "1\t2\t3\t881250949\n1\t3\t9\t881250949\n";
    cm_ingest_plan_t   p;
    char               err[256];

    assert_int_equal(cm_ingest_plan(data, strlen(data), CM_ML_100K, "u.data",
                                    NULL, &p, err, sizeof(err)), CM_OK);
    assert_int_equal(p.n_rows, 1);
    assert_int_equal(p.n_rej, 1);
    assert_int_equal(p.rej[0].line, 2);
    cm_ingest_plan_free(&p);
    assert_int_equal(cm_ingest_plan(data, strlen(data), CM_ML_AUTO, "u.data",
                                    NULL, &p, err, sizeof(err)), CM_EINVAL);
}


/* Regression: each duplicate used to rescan its run backwards to find the
 * first line, quadratic in the run length (a file of one repeated line
 * would hang the ingest).  Every later copy names the first line. */
static void
test_plan_every_repeat_names_the_first_line_in_linear_time(void **state)
{
    cm_ingest_plan_t   p;
    char               err[256], *buf;
    size_t             i, n = 50000, len = 0;
    const char        *row = "7,3,4.0,1000\n";

    buf = malloc(n * strlen(row) + 1);
    assert_non_null(buf);
    for (i = 0; i < n; i++) {
        memcpy(buf + len, row, strlen(row));
        len += strlen(row);
    }
    assert_int_equal(cm_ingest_plan(buf, len, CM_ML_LATEST, "x", NULL, &p,
                                    err, sizeof(err)), CM_OK);
    assert_int_equal(p.n_rows, 1);
    assert_int_equal(p.n_dup, n - 1);
    assert_int_equal(p.rej[0].line, 2);
    assert_string_equal(p.rej[n - 2].reason,
                        "duplicate (user 7, movie 3) of line 1");
    cm_ingest_plan_free(&p);
    free(buf);
}


static void
test_guess_format_by_file_name(void **state)
{
    assert_int_equal(cm_ingest_guess_format("/x/u.data"), CM_ML_100K);
    assert_int_equal(cm_ingest_guess_format("u1.base"), CM_ML_100K);
    assert_int_equal(cm_ingest_guess_format("ml-1m/ratings.dat"), CM_ML_1M);
    assert_int_equal(cm_ingest_guess_format("week_001.csv"), CM_ML_LATEST);
}


static void
test_title_strip_removes_year_suffix_only(void **state)
{
    const char *a = "Heat (1995)", *b = "Twin Peaks (1990\xe2\x80\x93" "1991)";
    const char *c = "No Year At All", *d = "(1995)", *e = "Ma vie (en rose)";

    assert_int_equal(cm_ingest_title_strip(a, strlen(a)), 4);
    assert_int_equal(cm_ingest_title_strip(b, strlen(b)), 10);
    assert_int_equal(cm_ingest_title_strip(c, strlen(c)), strlen(c));
    assert_int_equal(cm_ingest_title_strip(d, strlen(d)), strlen(d));
    assert_int_equal(cm_ingest_title_strip(e, strlen(e)), strlen(e));
}


static void
test_copy_escape_escapes_specials_and_replaces_bad_bytes(void **state)
{
    const char  in[] = "a\\b\tc\nd\re\xff" "f\xc3\xa9";
    char        out[64];
    size_t      n;

    n = cm_ingest_copy_escape(in, sizeof(in) - 1, 4096, out);
    assert_string_equal(out, "a\\\\b\\tc\\nd\\re?f\xc3\xa9");
    assert_int_equal(n, strlen(out));
    /* cut inside a multi-byte character: the stub becomes '?' */
    n = cm_ingest_copy_escape("\xc3\xa9\xc3\xa9", 4, 3, out);
    assert_string_equal(out, "\xc3\xa9?");
}


static void
test_pgcopy_numeric_encodes_every_half_star(void **state)
{
    /* expected per PostgreSQL's numeric_send: ndigits, weight, sign,
     * dscale, base-10000 digits (all int16 big-endian), after the int32
     * length */
    static const unsigned char r05[] = { 0, 0, 0, 10, 0, 1, 0xff, 0xff,
                                         0, 0, 0, 1, 0x13, 0x88 };
    static const unsigned char r30[] = { 0, 0, 0, 10, 0, 1, 0, 0, 0, 0,
                                         0, 1, 0, 3 };
    static const unsigned char r45[] = { 0, 0, 0, 12, 0, 2, 0, 0, 0, 0,
                                         0, 1, 0, 4, 0x13, 0x88 };
    static const unsigned char r0[] = { 0, 0, 0, 8, 0, 0, 0, 0, 0, 0,
                                        0, 1 };
    unsigned char out[CM_PGCOPY_NUMERIC_MAX];

    (void) state;
    assert_int_equal(cm_pgcopy_half_stars(out, 1), sizeof(r05));
    assert_memory_equal(out, r05, sizeof(r05));
    assert_int_equal(cm_pgcopy_half_stars(out, 6), sizeof(r30));
    assert_memory_equal(out, r30, sizeof(r30));
    assert_int_equal(cm_pgcopy_half_stars(out, 9), sizeof(r45));
    assert_memory_equal(out, r45, sizeof(r45));
    assert_int_equal(cm_pgcopy_half_stars(out, 0), sizeof(r0));
    assert_memory_equal(out, r0, sizeof(r0));
    assert_true(cm_pgcopy_half_stars(out, 19999) <= CM_PGCOPY_NUMERIC_MAX);
}


static void
test_pgcopy_frames_header_tuple_and_trailer_big_endian(void **state)
{
    static const unsigned char hdr[] = { 'P', 'G', 'C', 'O', 'P', 'Y', '\n',
                                         0xff, '\r', '\n', 0, 0, 0, 0, 0,
                                         0, 0, 0, 0 };
    /* 2000-01-01T00:00:01Z is 1,000,000 us after PostgreSQL's epoch */
    static const unsigned char ts[] = { 0, 0, 0, 8, 0, 0, 0, 0, 0, 0x0f,
                                        0x42, 0x40 };
    static const unsigned char i8[] = { 0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0,
                                        2 };
    unsigned char out[64];

    (void) state;
    assert_int_equal(cm_pgcopy_header(out), CM_PGCOPY_HEADER_LEN);
    assert_memory_equal(out, hdr, sizeof(hdr));
    assert_int_equal(cm_pgcopy_tuple(out, 6), 2);
    assert_int_equal(out[0], 0);
    assert_int_equal(out[1], 6);
    assert_int_equal(cm_pgcopy_int4(out, -2), 8);
    assert_int_equal(out[3], 4);
    assert_int_equal(out[4], 0xff);
    assert_int_equal(out[7], 0xfe);
    assert_int_equal(cm_pgcopy_int8(out, (INT64_C(1) << 32) | 2), 12);
    assert_memory_equal(out, i8, sizeof(i8));
    assert_int_equal(cm_pgcopy_timestamptz(out, 946684801), 12);
    assert_memory_equal(out, ts, sizeof(ts));
    /* before 2000: negative microseconds, two's complement */
    cm_pgcopy_timestamptz(out, 946684799);
    assert_int_equal(out[4], 0xff);
    assert_int_equal(out[11], 0xc0);
    assert_int_equal(cm_pgcopy_text(out, "test", 4), 8);
    assert_memory_equal(out, "\0\0\0\4test", 8);
    assert_int_equal(cm_pgcopy_trailer(out), 2);
    assert_int_equal(out[0], 0xff);
    assert_int_equal(out[1], 0xff);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(
            test_plan_rejects_each_bad_line_with_its_number_and_reason),
        cmocka_unit_test(test_plan_without_catalogue_accepts_unknown_movies),
        cmocka_unit_test(test_plan_holds_out_the_latest_ratings_of_each_user),
        cmocka_unit_test(test_plan_reads_ml100k_tabs),
        cmocka_unit_test(
            test_plan_every_repeat_names_the_first_line_in_linear_time),
        cmocka_unit_test(test_guess_format_by_file_name),
        cmocka_unit_test(test_pgcopy_numeric_encodes_every_half_star),
        cmocka_unit_test(
            test_pgcopy_frames_header_tuple_and_trailer_big_endian),
        cmocka_unit_test(test_title_strip_removes_year_suffix_only),
        cmocka_unit_test(
            test_copy_escape_escapes_specials_and_replaces_bad_bytes),
    };

    return cmocka_run_group_tests_name("ingest", tests, NULL, NULL);
}

/*
 * test_cornell.c: corpus readers (original Cornell, plain, pairs), text
 * cleaning, encoding repair and the movie-disjoint split.  Fixtures are in
 * tests/fixtures/dialog/ (written for these tests, not corpus text).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "cinematch/common.h"
#include "cinematch/cornell.h"

#define FIX "tests/fixtures/dialog/"

#include "cm_test_fixture.h"

/* the Cornell fixture is stored as NAME.fixture (see cm_test_fixture.h) */
static char fixcornell[256];

typedef struct {
    size_t  n;
    char    msgs[16][160];
} warns_t;


static void
record_warn(void *data, const char *file, size_t line, const char *reason)
{
    warns_t *w = data;

    if (w->n < 16) {
        snprintf(w->msgs[w->n], sizeof(w->msgs[0]), "%s:%zu: %s", file, line,
                 reason);
    }
    w->n++;
}


static const char *
turn_text(const cm_corpus_t *c, size_t conv, size_t k)
{
    return cm_corpus_str(c, c->turns[c->convs[conv].first + k].text);
}


static void
test_cornell_original_reads_turns_speakers_movies_and_cp1252(void **state)
{
    cm_corpus_t  c;
    warns_t      w = { 0 };
    char         err[256];

    cm_corpus_init(&c);
    c.warn = record_warn;
    c.warn_data = &w;
    assert_int_equal(cm_corpus_load(&c, fixcornell, err, sizeof(err)),
                     CM_OK);
    assert_int_equal(c.n_convs, 3);
    assert_int_equal(c.convs[0].movie, 0);
    /* L13 is whitespace only: dropped from the conversation, counted */
    assert_int_equal(c.convs[0].n, 3);
    assert_int_equal(c.n_empty, 1);
    assert_string_equal(turn_text(&c, 0, 0), "Where did you park the car?");
    assert_string_equal(turn_text(&c, 0, 1), "Behind the old cinema.");
    /* 0xE9 -> U+00E9, 0x92 -> U+2019 (cp1252), double space collapsed */
    assert_string_equal(turn_text(&c, 0, 2),
                        "Caf\xc3\xa9 on the corner? I don\xe2\x80\x99t"
                        " remember it.");
    assert_string_equal(cm_corpus_str(&c, c.turns[c.convs[0].first].speaker),
                        "ANNA");
    /* 0x85 -> U+2026 ellipsis */
    assert_string_equal(turn_text(&c, 2, 1), "Not yet\xe2\x80\xa6 one more scene.");
    assert_int_equal(c.n_movies, 3);
    assert_string_equal(cm_corpus_str(&c, c.movies[1].title), "projection");
    assert_int_equal(c.movies[1].year, 2001);
    cm_corpus_free(&c);
}


static void
test_cornell_original_reports_malformed_lines_with_file_and_line(void **state)
{
    cm_corpus_t  c;
    warns_t      w = { 0 };
    char         err[256];
    size_t       i;
    int          seen_fields = 0, seen_unknown = 0, seen_list = 0,
                 seen_movie = 0, seen_id = 0;

    cm_corpus_init(&c);
    c.warn = record_warn;
    c.warn_data = &w;
    assert_int_equal(cm_corpus_load(&c, fixcornell, err, sizeof(err)),
                     CM_OK);
    assert_int_equal(c.n_malformed, 5);
    assert_int_equal(w.n, 5);
    for (i = 0; i < w.n; i++) {
        seen_fields |= strstr(w.msgs[i], "movie_lines.txt:9: expected 5"
                              " fields, got 4") != NULL;
        seen_id |= strstr(w.msgs[i], "movie_lines.txt:10: bad line id")
                   != NULL;
        seen_unknown |= strstr(w.msgs[i], "movie_conversations.txt:4: "
                               "unknown line id L77") != NULL;
        seen_list |= strstr(w.msgs[i], "movie_conversations.txt:5: bad "
                            "line-id list") != NULL;
        seen_movie |= strstr(w.msgs[i], "movie_conversations.txt:6: line L20"
                             " is from movie m1") != NULL;
    }
    assert_true(seen_fields && seen_id && seen_unknown && seen_list
                && seen_movie);
    cm_corpus_free(&c);
}


static void
test_plain_text_splits_conversations_on_blank_lines(void **state)
{
    cm_corpus_t  c;
    char         err[256];

    cm_corpus_init(&c);
    assert_int_equal(cm_corpus_load(&c, FIX "plain.txt", err, sizeof(err)),
                     CM_OK);
    assert_int_equal(c.n_convs, 3);
    assert_int_equal(c.convs[0].n, 2);
    assert_int_equal(c.convs[1].n, 3);
    assert_int_equal(c.convs[2].n, 2);
    assert_int_equal(c.convs[0].movie, -1);
    assert_string_equal(turn_text(&c, 1, 1), "Nobody knows yet.");
    /* valid UTF-8 kept; a stray Latin-1 byte repaired, not dropped */
    assert_string_equal(turn_text(&c, 2, 0), "Caf\xc3\xa9 scene was best.");
    assert_string_equal(turn_text(&c, 2, 1), "Na\xc3\xafve choice.");
    assert_int_equal(c.n_malformed, 0);
    cm_corpus_free(&c);
}


static void
test_pairs_file_reads_pairs_and_rejects_wrong_field_counts(void **state)
{
    cm_corpus_t  c;
    warns_t      w = { 0 };
    char         err[256];

    cm_corpus_init(&c);
    c.warn = record_warn;
    c.warn_data = &w;
    assert_int_equal(cm_corpus_load(&c, FIX "pairs.tsv", err, sizeof(err)),
                     CM_OK);
    assert_int_equal(c.n_convs, 2);
    assert_string_equal(turn_text(&c, 0, 1), "Seven sharp.");
    assert_string_equal(turn_text(&c, 1, 1), "Always.");
    assert_int_equal(c.n_malformed, 3);
    assert_non_null(strstr(w.msgs[0], "pairs.tsv:2: expected 2 tab-separated"
                           " fields, got 1"));
    assert_non_null(strstr(w.msgs[1], "pairs.tsv:3: expected 2 tab-separated"
                           " fields, got 3"));
    assert_non_null(strstr(w.msgs[2], "pairs.tsv:4: empty line"));
    cm_corpus_free(&c);
}


static void
test_load_missing_path_fails_with_message(void **state)
{
    cm_corpus_t  c;
    char         err[256];

    cm_corpus_init(&c);
    assert_int_equal(cm_corpus_load(&c, FIX "nope", err, sizeof(err)),
                     CM_ENOTFOUND);
    assert_non_null(strstr(err, "nope"));
    cm_corpus_free(&c);
}


static void
test_clean_removes_markup_controls_and_extra_space(void **state)
{
    char s[128];

    strcpy(s, "  <U>Hey</u>,\tyou\r\n  <br>there\x01 <b>!</B> ");
    assert_int_equal(cm_text_clean(s, strlen(s)), strlen("Hey, you there !"));
    assert_string_equal(s, "Hey, you there !");
    /* text that only looks like markup stays */
    strcpy(s, "a <x> b < c");
    cm_text_clean(s, strlen(s));
    assert_string_equal(s, "a <x> b < c");
    strcpy(s, " \t ");
    assert_int_equal(cm_text_clean(s, strlen(s)), 0);
    /* C1 control U+0085 becomes a space */
    strcpy(s, "a\xc2\x85" "b");
    cm_text_clean(s, strlen(s));
    assert_string_equal(s, "a b");
}


static void
test_to_utf8_output_is_always_valid_utf8(void **state)
{
    char      in[512], out[3 * 512 + 1];
    size_t    i, n, r;
    unsigned  seed = 7;

    for (r = 0; r < 200; r++) {
        n = (size_t) (rand_r(&seed) % 512);
        for (i = 0; i < n; i++) {
            in[i] = (char) (rand_r(&seed) & 0xFF);
        }
        assert_true(cm_utf8_valid(out, cm_text_to_utf8(in, n, out), NULL));
        assert_true(cm_utf8_valid(out, cm_text_cp1252_to_utf8(in, n, out), NULL));
    }
    assert_false(cm_utf8_valid("\xed\xa0\x80", 3, NULL));   /* surrogate */
    assert_false(cm_utf8_valid("\xc0\xaf", 2, NULL));       /* overlong */
    assert_true(cm_utf8_valid("\xf0\x9f\x8e\xac", 4, NULL));
}


/* Regression (fuzz_cornell): a titles buffer ending inside the year field
 * was read past its end by atoi(). */
static void
test_titles_year_at_end_of_unterminated_buffer_is_read_in_bounds(void **st)
{
    static const char  t[] = "m4 +++$+++ x +++$+++ 1984";
    cm_corpus_t        c;
    char              *buf = malloc(sizeof(t) - 1);

    assert_non_null(buf);
    memcpy(buf, t, sizeof(t) - 1);      /* no NUL: ASan sees any overread */
    cm_corpus_init(&c);
    assert_int_equal(cm_corpus_parse_cornell(&c, "", 0, "", 0, buf,
                                             sizeof(t) - 1), CM_OK);
    assert_int_equal(c.n_movies, 1);
    assert_int_equal(c.movies[0].year, 1984);
    cm_corpus_free(&c);
    free(buf);
}


static void
test_split_by_movie_never_shares_a_film(void **state)
{
    cm_corpus_t  c;
    uint8_t      is_val[64];
    size_t       i, j, nval;
    char         err[256];
    warns_t      w = { 0 };

    cm_corpus_init(&c);
    c.warn = record_warn;
    c.warn_data = &w;
    assert_int_equal(cm_corpus_load(&c, fixcornell, err, sizeof(err)),
                     CM_OK);
    nval = cm_corpus_split(&c, 0.3, 42, is_val);
    assert_true(nval >= 1 && nval < c.n_convs);
    for (i = 0; i < c.n_convs; i++) {
        for (j = 0; j < c.n_convs; j++) {
            if (c.convs[i].movie == c.convs[j].movie) {
                assert_int_equal(is_val[i], is_val[j]);
            }
        }
    }
    cm_corpus_free(&c);
}


static void
test_split_without_movies_takes_a_contiguous_tail(void **state)
{
    cm_corpus_t  c;
    uint8_t      is_val[64];
    char         err[256];

    cm_corpus_init(&c);
    assert_int_equal(cm_corpus_load(&c, FIX "plain.txt", err, sizeof(err)),
                     CM_OK);
    assert_int_equal(cm_corpus_split(&c, 0.34, 1, is_val), 1);
    assert_int_equal(is_val[0], 0);
    assert_int_equal(is_val[1], 0);
    assert_int_equal(is_val[2], 1);
    cm_corpus_free(&c);
}


static void
test_real_cornell_corpus_loads_when_present(void **state)
{
    cm_corpus_t  c;
    char         err[256];
    const char  *dir = "../shared/data/cornell";

    if (access("/work/shared/data/cornell/movie_lines.txt", R_OK) == 0) {
        dir = "/work/shared/data/cornell";
    } else if (access("../shared/data/cornell/movie_lines.txt", R_OK) != 0) {
        skip();   /* the corpus is never committed: nothing to test here */
    }
    cm_corpus_init(&c);
    assert_int_equal(cm_corpus_load(&c, dir, err, sizeof(err)), CM_OK);
    assert_int_equal(c.n_convs, 3709);
    assert_int_equal(c.n_malformed, 0);
    cm_corpus_free(&c);
}


static int
fixtures_up(void **state)
{
    const char *d = cm_fixture_dir(FIX "cornell", "cornell");

    if (d == NULL) {
        return -1;
    }
    snprintf(fixcornell, sizeof(fixcornell), "%s", d);
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
        cmocka_unit_test(
            test_cornell_original_reads_turns_speakers_movies_and_cp1252),
        cmocka_unit_test(
            test_cornell_original_reports_malformed_lines_with_file_and_line),
        cmocka_unit_test(test_plain_text_splits_conversations_on_blank_lines),
        cmocka_unit_test(
            test_pairs_file_reads_pairs_and_rejects_wrong_field_counts),
        cmocka_unit_test(test_load_missing_path_fails_with_message),
        cmocka_unit_test(test_clean_removes_markup_controls_and_extra_space),
        cmocka_unit_test(test_to_utf8_output_is_always_valid_utf8),
        cmocka_unit_test(
            test_titles_year_at_end_of_unterminated_buffer_is_read_in_bounds),
        cmocka_unit_test(test_split_by_movie_never_shares_a_film),
        cmocka_unit_test(test_split_without_movies_takes_a_contiguous_tail),
        cmocka_unit_test(test_real_cornell_corpus_loads_when_present),
    };

    return cmocka_run_group_tests_name("cornell", tests, fixtures_up,
                                       fixtures_down);
}

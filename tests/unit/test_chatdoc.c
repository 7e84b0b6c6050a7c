/*
 * test_chatdoc.c: UTF-8 hygiene of model text, and the Markdown and PDF
 * exports of a conversation.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include <jansson.h>

#include "cinematch/common.h"
#include "cinematch/chatdoc.h"
#include "cinematch/validate.h"


static size_t
clean(const char *in, size_t len, char *out)
{
    size_t n = cm_utf8_sanitize(out, in, len);

    out[n] = '\0';
    return n;
}

static void
test_utf8_sanitize_keeps_valid_text(void **state)
{
    char        out[64];
    const char *s = "caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x8e\xac ok";

    (void) state;
    assert_int_equal(clean(s, strlen(s), out), strlen(s));
    assert_string_equal(out, s);
}

static void
test_utf8_sanitize_replaces_each_invalid_byte(void **state)
{
    char out[64];

    (void) state;
    /* a lone continuation byte, Latin-1 é, an overlong '/' (C0 AF),
     * a surrogate (ED A0 80), a truncated 3-byte sequence at the end */
    clean("a\x80" "b", 3, out);
    assert_string_equal(out, "a\xef\xbf\xbd" "b");
    clean("caf\xe9", 4, out);
    assert_string_equal(out, "caf\xef\xbf\xbd");
    clean("\xc0\xaf", 2, out);
    assert_string_equal(out, "\xef\xbf\xbd\xef\xbf\xbd");
    clean("\xed\xa0\x80", 3, out);
    assert_string_equal(out, "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    clean("x\xe2\x82", 3, out);
    assert_string_equal(out, "x\xef\xbf\xbd\xef\xbf\xbd");
    assert_true(cm_utf8_valid(out, strlen(out), NULL));
}

static void
test_utf8_sanitize_drops_nul(void **state)
{
    char out[16];

    (void) state;
    assert_int_equal(clean("a\0b\0", 4, out), 2);
    assert_string_equal(out, "ab");
}

static void
docs(json_t **conv, json_t **messages, const char *long_text)
{
    *conv = json_pack("{s:s, s:s, s:s, s:s}", "id",
                      "3f1c2a4e-0000-4000-8000-000000000001", "title",
                      "Été à Paris", "model", "dialog", "created_at",
                      "2026-01-02T03:04:05.000000Z");
    *messages = json_pack("[{s:s, s:s, s:s, s:s}, {s:s, s:s, s:s, s:s}]",
                          "role", "user", "status", "complete",
                          "content", "# not a heading\nsecond line",
                          "created_at", "2026-01-02T03:04:06Z",
                          "role", "assistant", "status", "partial",
                          "content", long_text ? long_text : "Où ça ? 映画",
                          "created_at", "2026-01-02T03:04:07Z");
    assert_non_null(*conv);
    assert_non_null(*messages);
}

static void
test_markdown_has_sections_and_escapes_headings(void **state)
{
    char    *md;
    size_t   len;
    json_t  *conv, *messages;

    (void) state;
    docs(&conv, &messages, NULL);
    assert_int_equal(cm_chatdoc_markdown(conv, messages, &md, &len), CM_OK);
    assert_int_equal(strlen(md), len);
    assert_true(strncmp(md, "# Été à Paris\n", 15) == 0);
    assert_non_null(strstr(md, "\n## You\n"));
    assert_non_null(strstr(md, "\n## Assistant\n"));
    assert_non_null(strstr(md, "\\# not a heading\nsecond line\n"));
    assert_non_null(strstr(md, "2026-01-02T03:04:07Z, partial"));
    assert_non_null(strstr(md, "Où ça ? 映画"));
    free(md);
    json_decref(conv);
    json_decref(messages);
}

static void
test_markdown_of_untitled_and_malformed_members(void **state)
{
    char    *md;
    size_t   len;
    json_t  *conv = json_pack("{s:n, s:i}", "title", "id", 5);
    json_t  *messages = json_pack("[{s:i}, i]", "content", 7, 3);

    (void) state;
    assert_int_equal(cm_chatdoc_markdown(conv, messages, &md, &len), CM_OK);
    assert_true(strncmp(md, "# Untitled conversation\n", 24) == 0);
    free(md);
    assert_int_equal(cm_chatdoc_markdown(messages, conv, &md, &len),
                     CM_EINVAL);
    assert_null(md);
    json_decref(conv);
    json_decref(messages);
}

static size_t
count(const unsigned char *hay, size_t len, const char *needle)
{
    size_t i, n = 0, m = strlen(needle);

    for (i = 0; i + m <= len; i++) {
        if (memcmp(hay + i, needle, m) == 0) {
            n++;
        }
    }
    return n;
}

static void
test_pdf_embeds_the_font_and_breaks_pages(void **state)
{
    unsigned char *pdf;
    size_t         len, i;
    char           err[256];
    char          *text;
    json_t        *conv, *messages;
    int            rc;

    (void) state;
    /* long enough for several pages, with words, UTF-8 and one word longer
     * than a line */
    text = malloc(60000);
    assert_non_null(text);
    text[0] = '\0';
    for (i = 0; i < 400; i++) {
        strcat(text, "Here's looking at you, kid. Ça va, 映画? ");
        if (i % 50 == 0) {
            strcat(text, "\n");
        }
    }
    for (i = 0; i < 300; i++) {
        strcat(text, "x");
    }
    docs(&conv, &messages, text);

    rc = cm_chatdoc_pdf(conv, messages, NULL, &pdf, &len, err, sizeof(err));
#ifndef CM_HAVE_HPDF
    assert_int_equal(rc, CM_CHATDOC_ENOTSUP);
    skip();
#endif
    if (access(CM_CHATDOC_FONT, R_OK) != 0) {
        assert_int_equal(rc, CM_ENOTFOUND);
        print_message("skipped: %s not installed (fonts-dejavu-core)\n",
                      CM_CHATDOC_FONT);
        skip();
    }
    assert_int_equal(rc, CM_OK);
    assert_true(len > 1000);
    assert_memory_equal(pdf, "%PDF-", 5);
    assert_true(count(pdf, len, "%%EOF") >= 1);
    assert_true(count(pdf, len, "/FontFile2") == 1);      /* embedded TTF */
    assert_true(count(pdf, len, "/Type /Page ") + count(pdf, len, "/Type /Page\n")
                + count(pdf, len, "/Type /Page\r") >= 3);
    free(pdf);

    /* a font that is not there */
    rc = cm_chatdoc_pdf(conv, messages, "/nonexistent/font.ttf", &pdf, &len,
                        err, sizeof(err));
    assert_int_equal(rc, CM_ENOTFOUND);
    assert_null(pdf);
    assert_non_null(strstr(err, "font"));

    free(text);
    json_decref(conv);
    json_decref(messages);
}

int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_utf8_sanitize_keeps_valid_text),
        cmocka_unit_test(test_utf8_sanitize_replaces_each_invalid_byte),
        cmocka_unit_test(test_utf8_sanitize_drops_nul),
        cmocka_unit_test(test_markdown_has_sections_and_escapes_headings),
        cmocka_unit_test(test_markdown_of_untitled_and_malformed_members),
        cmocka_unit_test(test_pdf_embeds_the_font_and_breaks_pages),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

/*
 * test_bpe.c: byte-level BPE: training, GPT-2 file format, encode/decode
 * round trip over arbitrary bytes (property test), specials, and the
 * loader's validation.
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
#include "cinematch/bpe.h"
#include "cinematch/cornell.h"

static const char *train_text[] = {
    "Where did you park the car?", "Behind the old cinema.",
    "Did you see the trailer?", "Twice. It gives away the ending.",
    "Who is directing the picture?", "Nobody knows yet, they say.",
    "the the the there then theatre", "I don't think so, I won't.",
    "Caf\xc3\xa9 na\xc3\xafve 123 4567 !!! ...", "    indented   spaces  ",
};


static cm_bpe_t *
train_small(int vocab)
{
    cm_bpe_t  *b = NULL;
    size_t     lens[CM_ARRAY_SIZE(train_text)], i;
    char       err[256];

    for (i = 0; i < CM_ARRAY_SIZE(train_text); i++) {
        lens[i] = strlen(train_text[i]);
    }
    assert_int_equal(cm_bpe_train(&b, train_text, lens,
                                  CM_ARRAY_SIZE(train_text), vocab, err,
                                  sizeof(err)), CM_OK);
    return b;
}


static void
roundtrip(const cm_bpe_t *b, const char *s, size_t n, int flags)
{
    cm_tokens_t  t = { 0 };
    char        *out;
    size_t       len;

    assert_int_equal(cm_bpe_encode(b, s, n, flags, &t), CM_OK);
    assert_int_equal(cm_bpe_decode(b, t.ids, t.n, &out, &len), CM_OK);
    assert_int_equal(len, n);
    assert_memory_equal(out, s, n);
    free(out);
    free(t.ids);
}


static void
test_train_learns_merges_that_shorten_frequent_words(void **state)
{
    cm_bpe_t    *b = train_small(300);
    cm_tokens_t  t = { 0 };

    assert_true(cm_bpe_n_merges(b) > 10);
    assert_int_equal(cm_bpe_vocab_size(b), 256 + cm_bpe_n_merges(b) + 2);
    assert_int_equal(cm_bpe_encode(b, " the", 4, 0, &t), CM_OK);
    assert_int_equal(t.n, 1);   /* " the" is the most frequent word */
    free(t.ids);
    cm_bpe_free(b);
}


static void
test_encode_decode_roundtrips_random_bytes_and_invalid_utf8(void **state)
{
    cm_bpe_t  *b = train_small(400);
    char       buf[2048];
    unsigned   seed = 12345;
    size_t     r, i, n;
    static const char *nasty[] = {
        "\xff\xfe\xfd", "\xc3", "\xed\xa0\x80 surrogate", "\xf4\x90\x80\x80",
        "a\x00" "b", "\xe2\x82", "x\xc0\xaf y", "'s'll'd 'S \xe2\x80\x99s",
    };

    for (i = 0; i < CM_ARRAY_SIZE(nasty); i++) {
        roundtrip(b, nasty[i], strlen(nasty[i]) + (i == 4 ? 2 : 0), 0);
    }
    for (r = 0; r < 300; r++) {
        n = (size_t) (rand_r(&seed) % sizeof(buf));
        for (i = 0; i < n; i++) {
            /* mix text-like bytes, whitespace and raw high bytes */
            unsigned k = (unsigned) rand_r(&seed);

            buf[i] = (char) ((k & 3) == 0 ? ' ' : (k & 3) == 1
                             ? 'a' + (char) ((k >> 3) % 26)
                             : (char) ((k >> 8) & 0xFF));
        }
        roundtrip(b, buf, n, 0);
        roundtrip(b, buf, n, CM_BPE_SPECIAL);
    }
    /* a long piece (more than CM_BPE_MAX_PIECE bytes of one class) */
    memset(buf, ' ', sizeof(buf));
    roundtrip(b, buf, sizeof(buf), 0);
    memset(buf, 'e', sizeof(buf));
    roundtrip(b, buf, sizeof(buf), 0);
    cm_bpe_free(b);
}


static void
test_special_tokens_only_recognised_when_asked(void **state)
{
    cm_bpe_t    *b = train_small(300);
    cm_tokens_t  t = { 0 };
    int32_t      eot = cm_bpe_special(b, CM_BPE_ENDOFTURN);
    int32_t      eos = cm_bpe_special(b, CM_BPE_ENDOFTEXT);
    const char  *s = "Hi.<|eot|>Hello.<|endoftext|>";

    assert_true(eot >= 0 && eos >= 0 && eot != eos);
    assert_int_equal(cm_bpe_encode(b, s, strlen(s), CM_BPE_SPECIAL, &t),
                     CM_OK);
    assert_int_equal(t.ids[t.n - 1], eos);
    {
        size_t i;
        int    seen = 0;

        for (i = 0; i < t.n; i++) {
            seen += t.ids[i] == eot;
        }
        assert_int_equal(seen, 1);
    }
    t.n = 0;
    assert_int_equal(cm_bpe_encode(b, s, strlen(s), 0, &t), CM_OK);
    {
        size_t i;

        for (i = 0; i < t.n; i++) {
            assert_true(t.ids[i] != eot && t.ids[i] != eos);
        }
    }
    roundtrip(b, s, strlen(s), CM_BPE_SPECIAL);
    free(t.ids);
    cm_bpe_free(b);
}


static void
test_save_load_gives_identical_encoding_in_gpt2_format(void **state)
{
    cm_bpe_t    *b = train_small(320), *c = NULL;
    char         dir[] = "/tmp/cm_bpe_XXXXXX", path[256], err[256], *v;
    size_t       vl, i;
    cm_tokens_t  t1 = { 0 }, t2 = { 0 };
    const char  *s = "Where did you park? The theatre, naturally. \xff!";

    assert_non_null(mkdtemp(dir));
    assert_int_equal(cm_bpe_save(b, dir, err, sizeof(err)), CM_OK);
    assert_int_equal(cm_bpe_load(&c, dir, err, sizeof(err)), CM_OK);
    assert_int_equal(cm_bpe_vocab_size(c), cm_bpe_vocab_size(b));
    assert_int_equal(cm_bpe_n_merges(c), cm_bpe_n_merges(b));
    assert_int_equal(cm_bpe_special(c, CM_BPE_ENDOFTURN),
                     cm_bpe_special(b, CM_BPE_ENDOFTURN));
    assert_int_equal(cm_bpe_encode(b, s, strlen(s), 0, &t1), CM_OK);
    assert_int_equal(cm_bpe_encode(c, s, strlen(s), 0, &t2), CM_OK);
    assert_int_equal(t1.n, t2.n);
    for (i = 0; i < t1.n; i++) {
        assert_int_equal(t1.ids[i], t2.ids[i]);
    }
    /* GPT-2 byte alphabet: space is written U+0120 "\xc4\xa0" */
    snprintf(path, sizeof(path), "%s/vocab.json", dir);
    assert_int_equal(cm_file_read(path, &v, &vl, err, sizeof(err)), CM_OK);
    assert_non_null(strstr(v, "\"\xc4\xa0\":32"));
    assert_non_null(strstr(v, "\"<|eot|>\":"));
    free(v);
    snprintf(path, sizeof(path), "%s/merges.txt", dir);
    assert_int_equal(cm_file_read(path, &v, &vl, err, sizeof(err)), CM_OK);
    assert_memory_equal(v, "#version: 0.2\n", 14);
    free(v);
    unlink(path);
    snprintf(path, sizeof(path), "%s/vocab.json", dir);
    unlink(path);
    rmdir(dir);
    free(t1.ids);
    free(t2.ids);
    cm_bpe_free(b);
    cm_bpe_free(c);
}


/* A hand-written vocabulary in GPT-2's own id order (printable bytes
 * first), with a merge and a special, as GPT-2's files are laid out. */
static char *
gpt2_like_vocab(size_t *len, const char *extra)
{
    static const char *order_hint = "!";
    char  *s = malloc(16384), *p = s;
    int    b, id = 0, n = 0;
    unsigned cp;

    (void) order_hint;
    p += sprintf(p, "{");
    for (b = 0; b < 256; b++) {
        int printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC)
                        || (b >= 0xAE && b <= 0xFF);

        cp = printable ? (unsigned) b : (unsigned) (256 + n++);
        if (cp == '"' || cp == '\\') {
            p += sprintf(p, "\"\\%c\":%d,", cp, id++);
        } else if (cp < 0x80) {
            p += sprintf(p, "\"%c\":%d,", cp, id++);
        } else {
            p += sprintf(p, "\"%c%c\":%d,", 0xC0 | (cp >> 6),
                         0x80 | (cp & 0x3F), id++);
        }
    }
    p += sprintf(p, "\"\xc4\xa0t\":%d,\"<|endoftext|>\":%d%s}", id, id + 1,
                 extra);
    *len = (size_t) (p - s);
    return s;
}


static void
test_loader_accepts_gpt2_layout_and_rejects_bad_files(void **state)
{
    cm_bpe_t    *b = NULL;
    char         err[256], *v;
    size_t       vl;
    cm_tokens_t  t = { 0 };
    const char  *m = "#version: 0.2\n\xc4\xa0 t\n";

    v = gpt2_like_vocab(&vl, "");
    assert_int_equal(cm_bpe_load_mem(&b, v, vl, m, strlen(m), err,
                                     sizeof(err)), CM_OK);
    assert_int_equal(cm_bpe_vocab_size(b), 258);
    assert_int_equal(cm_bpe_special(b, CM_BPE_ENDOFTEXT), 257);
    assert_int_equal(cm_bpe_encode(b, " t", 2, 0, &t), CM_OK);
    assert_int_equal(t.n, 1);
    assert_int_equal(t.ids[0], 256);
    free(t.ids);
    cm_bpe_free(b);

    /* merge naming a token the vocab lacks */
    m = "#version: 0.2\nq z\n";
    assert_int_equal(cm_bpe_load_mem(&b, v, vl, m, strlen(m), err,
                                     sizeof(err)), CM_EFORMAT);
    assert_non_null(strstr(err, "merges.txt:2"));
    m = "#version: 0.2\nonlyone\n";
    assert_int_equal(cm_bpe_load_mem(&b, v, vl, m, strlen(m), err,
                                     sizeof(err)), CM_EFORMAT);
    free(v);

    /* id out of range */
    v = gpt2_like_vocab(&vl, ",\"zz\":999");
    assert_int_equal(cm_bpe_load_mem(&b, v, vl, "", 0, err, sizeof(err)),
                     CM_EFORMAT);
    free(v);
    /* not JSON, or a byte missing */
    assert_int_equal(cm_bpe_load_mem(&b, "{\"a\":", 5, "", 0, err,
                                     sizeof(err)), CM_EFORMAT);
    assert_int_equal(cm_bpe_load_mem(&b, "[1,2]", 5, "", 0, err,
                                     sizeof(err)), CM_EFORMAT);
}


static void
test_stream_decode_holds_partial_utf8_and_matches_decode(void **state)
{
    cm_bpe_t        *b = train_small(400);
    cm_tokens_t      t = { 0 };
    cm_bpe_stream_t  st = { { 0 }, 0 };
    char             out[4096], piece[512], *whole;
    size_t           n = 0, k, i, len;
    unsigned         seed = 99;
    const char      *s = "Caf\xc3\xa9 \xe2\x80\x99 \xf0\x9f\x8e\xac end \xff\xc3";
    int              r;

    /* byte-level tokens split multi-byte characters: streamed pieces must
     * end on character boundaries (except raw invalid bytes) */
    assert_int_equal(cm_bpe_encode(b, s, strlen(s), 0, &t), CM_OK);
    for (i = 0; i < t.n; i++) {
        k = cm_bpe_stream_push(b, &st, t.ids[i], piece);
        assert_true(st.n <= 3);
        memcpy(out + n, piece, k);
        n += k;
    }
    n += cm_bpe_stream_flush(&st, out + n);
    assert_int_equal(n, strlen(s));
    assert_memory_equal(out, s, n);
    /* property: for random token sequences, pushes + flush == decode */
    for (r = 0; r < 200; r++) {
        size_t cnt = (size_t) (rand_r(&seed) % 40);

        t.n = 0;
        for (i = 0; i < cnt; i++) {
            assert_int_equal(cm_bpe_encode(b, " ", 1, 0, &t), CM_OK);
            t.ids[t.n - 1] = (int32_t) (rand_r(&seed)
                                        % (unsigned) cm_bpe_vocab_size(b));
        }
        n = 0;
        for (i = 0; i < t.n; i++) {
            n += cm_bpe_stream_push(b, &st, t.ids[i], out + n);
        }
        n += cm_bpe_stream_flush(&st, out + n);
        assert_int_equal(cm_bpe_decode(b, t.ids, t.n, &whole, &len), CM_OK);
        assert_int_equal(n, len);
        assert_memory_equal(out, whole, len);
        free(whole);
    }
    free(t.ids);
    cm_bpe_free(b);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_train_learns_merges_that_shorten_frequent_words),
        cmocka_unit_test(
            test_encode_decode_roundtrips_random_bytes_and_invalid_utf8),
        cmocka_unit_test(test_special_tokens_only_recognised_when_asked),
        cmocka_unit_test(test_save_load_gives_identical_encoding_in_gpt2_format),
        cmocka_unit_test(test_loader_accepts_gpt2_layout_and_rejects_bad_files),
        cmocka_unit_test(
            test_stream_decode_holds_partial_utf8_and_matches_decode),
    };

    return cmocka_run_group_tests_name("bpe", tests, NULL, NULL);
}

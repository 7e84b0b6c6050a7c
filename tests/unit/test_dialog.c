/*
 * test_dialog.c: corpus -> rendered token streams (turns, end-of-turn,
 * end-of-text; split by film), evaluation and n-gram baselines.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cinematch/common.h"
#include "cinematch/bpe.h"
#include "cinematch/cornell.h"
#include "cinematch/dialog.h"
#include "cinematch/gpt.h"
#include "cinematch/lstm.h"

#define FIX "tests/fixtures/dialog/"

#include "cm_test_fixture.h"

/* the Cornell fixture is stored as NAME.fixture (see cm_test_fixture.h) */
static char fixcornell[256];


static void
quiet(void *d, const char *f, size_t l, const char *r)
{
}


static cm_bpe_t *
tokenizer_for(const cm_corpus_t *c)
{
    const char  *texts[64];
    size_t       lens[64], i;
    cm_bpe_t    *b = NULL;
    char         err[128];

    for (i = 0; i < c->n_turns && i < 64; i++) {
        texts[i] = cm_corpus_str(c, c->turns[i].text);
        lens[i] = strlen(texts[i]);
    }
    assert_int_equal(cm_bpe_train(&b, texts, lens, i, 300, err, sizeof(err)),
                     CM_OK);
    return b;
}


static void
test_render_marks_every_turn_and_conversation_and_splits_by_film(void **st)
{
    cm_corpus_t       c;
    cm_bpe_t         *b;
    cm_dialog_data_t  d;
    char              err[256], *text;
    size_t            i, eot = 0, eos = 0;
    int32_t           id_eot, id_eos;

    cm_corpus_init(&c);
    c.warn = quiet;
    assert_int_equal(cm_corpus_load(&c, fixcornell, err, sizeof(err)),
                     CM_OK);
    b = tokenizer_for(&c);
    id_eot = cm_bpe_special(b, CM_BPE_ENDOFTURN);
    id_eos = cm_bpe_special(b, CM_BPE_ENDOFTEXT);
    assert_int_equal(cm_dialog_render(&c, b, 0.3, 42, &d), CM_OK);
    assert_int_equal(d.n_train_convs + d.n_val_convs, c.n_convs);
    assert_true(d.n_val_convs >= 1 && d.n_train_convs >= 1);
    for (i = 0; i < d.train.n; i++) {
        eot += d.train.ids[i] == id_eot;
        eos += d.train.ids[i] == id_eos;
    }
    for (i = 0; i < d.val.n; i++) {
        eot += d.val.ids[i] == id_eot;
        eos += d.val.ids[i] == id_eos;
    }
    assert_int_equal(eot, c.n_turns);
    assert_int_equal(eos, c.n_convs);
    assert_int_equal(d.train.ids[d.train.n - 1], id_eos);
    /* the stream reads back as the turns joined by the markers */
    assert_int_equal(cm_bpe_decode(b, d.train.ids, d.train.n, &text, NULL),
                     CM_OK);
    assert_non_null(strstr(text, "<|eot|>"));
    assert_non_null(strstr(text, "<|eot|><|endoftext|>"));
    free(text);
    cm_dialog_data_free(&d);
    cm_bpe_free(b);
    cm_corpus_free(&c);
}


static void
test_eval_counts_bytes_and_gives_finite_bits_per_byte(void **state)
{
    cm_corpus_t       c;
    cm_bpe_t         *b;
    cm_dialog_data_t  d;
    cm_gpt_config_t   cfg;
    cm_gpt_t          m;
    cm_dialog_eval_t  ev;
    char              err[256];
    double            uni, bi;

    cm_corpus_init(&c);
    assert_int_equal(cm_corpus_load(&c, FIX "plain.txt", err, sizeof(err)),
                     CM_OK);
    b = tokenizer_for(&c);
    assert_int_equal(cm_dialog_render(&c, b, 0.0, 1, &d), CM_OK);
    assert_int_equal(cm_gpt_config_named("dialog-tiny", cm_bpe_vocab_size(b),
                                         &cfg), CM_OK);
    assert_int_equal(cm_gpt_init(&m, &cfg, 1), CM_OK);
    assert_int_equal(cm_dialog_eval(&m, b, d.train.ids, d.train.n, 2, 8, 0,
                                    &ev), CM_OK);
    assert_int_equal(ev.tokens % 16, 0);
    assert_true(ev.tokens > 0 && ev.bytes >= ev.tokens);
    /* untrained: close to uniform over V */
    assert_true(fabs(ev.loss - log((double) cm_bpe_vocab_size(b))) < 0.3);
    assert_float_equal(ev.bpb, ev.loss * (double) ev.tokens
                       / (double) ev.bytes / M_LN2, 1e-9);
    /* the baselines score the same stream; bigram beats unigram on text
     * it has seen */
    assert_int_equal(cm_dialog_ngram_bpb(b, &d.train, &d.train, &uni, &bi),
                     CM_OK);
    assert_true(isfinite(uni) && isfinite(bi) && bi < uni);
    /* greedy replies to the validation conversation (the last one) */
    {
        uint8_t             is_val[8];
        cm_dialog_replies_t q;

        assert_int_equal(cm_corpus_split(&c, 0.34, 1, is_val), 1);
        assert_int_equal(cm_dialog_reply_eval(&m, b, &c, is_val, 10, 8, &q),
                         CM_OK);
        assert_int_equal(q.examples, 1);
        assert_true(q.bleu4 >= 0.0 && q.bleu4 <= 1.0);
        assert_int_equal(cm_dialog_reply_eval(&m, b, &c, is_val, 10, 64,
                                              &q), CM_EINVAL);
    }
    cm_gpt_free(&m);
    cm_dialog_data_free(&d);
    cm_bpe_free(b);
    cm_corpus_free(&c);
}


/* The LSTM baseline goes through the same evaluation: same windows (same
 * token and byte counts as the GPT), the same reply examples. */
static void
test_lstm_eval_uses_the_gpt_windows_and_reply_examples(void **state)
{
    cm_corpus_t          c;
    cm_bpe_t            *b;
    cm_dialog_data_t     d;
    cm_gpt_config_t      gcfg;
    cm_lstm_config_t     lcfg;
    cm_gpt_t             g;
    cm_lstm_t            l;
    cm_dialog_eval_t     eg, el;
    cm_dialog_replies_t  qg, ql;
    uint8_t              is_val[8];
    char                 err[256];

    cm_corpus_init(&c);
    assert_int_equal(cm_corpus_load(&c, FIX "plain.txt", err, sizeof(err)),
                     CM_OK);
    b = tokenizer_for(&c);
    assert_int_equal(cm_dialog_render(&c, b, 0.0, 1, &d), CM_OK);
    assert_int_equal(cm_gpt_config_named("dialog-tiny", cm_bpe_vocab_size(b),
                                         &gcfg), CM_OK);
    assert_int_equal(cm_lstm_config_named("lstm-tiny", cm_bpe_vocab_size(b),
                                          &lcfg), CM_OK);
    assert_int_equal(cm_gpt_init(&g, &gcfg, 1), CM_OK);
    assert_int_equal(cm_lstm_init(&l, &lcfg, 1), CM_OK);
    assert_int_equal(cm_dialog_eval(&g, b, d.train.ids, d.train.n, 2, 8, 0,
                                    &eg), CM_OK);
    assert_int_equal(cm_dialog_eval_lstm(&l, b, d.train.ids, d.train.n, 2, 8,
                                         0, &el), CM_OK);
    assert_int_equal(el.tokens, eg.tokens);
    assert_int_equal(el.bytes, eg.bytes);
    assert_true(fabs(el.loss - log((double) cm_bpe_vocab_size(b))) < 0.3);
    assert_float_equal(el.bpb, el.loss * (double) el.tokens
                       / (double) el.bytes / M_LN2, 1e-9);
    /* a cap on tokens applies alike */
    assert_int_equal(cm_dialog_eval_lstm(&l, b, d.train.ids, d.train.n, 2, 8,
                                         16, &el), CM_OK);
    assert_int_equal(el.tokens, 16);

    assert_int_equal(cm_corpus_split(&c, 0.34, 1, is_val), 1);
    assert_int_equal(cm_dialog_reply_eval(&g, b, &c, is_val, 10, 8, &qg),
                     CM_OK);
    assert_int_equal(cm_dialog_reply_eval_lstm(&l, b, &c, is_val, 10, 8,
                                               &ql), CM_OK);
    assert_int_equal(ql.examples, qg.examples);
    assert_true(ql.bleu4 >= 0.0 && ql.bleu4 <= 1.0);
    assert_true(ql.distinct1 >= 0.0 && ql.distinct1 <= 1.0);
    assert_int_equal(cm_dialog_reply_eval_lstm(&l, b, &c, is_val, 10, 64,
                                               &ql), CM_EINVAL);
    cm_gpt_free(&g);
    cm_lstm_free(&l);
    cm_dialog_data_free(&d);
    cm_bpe_free(b);
    cm_corpus_free(&c);
}


static void
test_bleu_and_distinct_match_hand_computed_values(void **state)
{
    const char *hyp[] = { "The cat sat on the mat", "a b c d e" };
    const char *ref[] = { "the cat is on the mat", "a b c d e" };
    const char *h2[] = { "the the the the" }, *r2[] = { "the cat" };
    cm_dialog_replies_t q;
    double want;

    assert_int_equal(cm_dialog_bleu(hyp, ref, 2, &q), CM_OK);
    assert_float_equal(q.precision[0], 10.0 / 11.0, 1e-12);
    assert_float_equal(q.precision[1], 7.0 / 9.0, 1e-12);
    assert_float_equal(q.precision[2], 4.0 / 7.0, 1e-12);
    assert_float_equal(q.precision[3], 2.0 / 5.0, 1e-12);
    assert_float_equal(q.brevity, 1.0, 1e-12);
    want = exp((log(10.0 / 11) + log(7.0 / 9) + log(4.0 / 7) + log(2.0 / 5))
               / 4.0);
    assert_float_equal(q.bleu4, want, 1e-12);
    assert_float_equal(q.distinct1, 10.0 / 11.0, 1e-12);   /* "the" twice */
    assert_float_equal(q.distinct2, 1.0, 1e-12);
    /* clipping: "the" counts at most as often as the reference has it;
     * no 4-gram match at all gives BLEU 0 (unsmoothed), short ones a
     * brevity penalty */
    assert_int_equal(cm_dialog_bleu(h2, r2, 1, &q), CM_OK);
    assert_float_equal(q.precision[0], 0.25, 1e-12);
    assert_float_equal(q.bleu4, 0.0, 1e-12);
    assert_int_equal(cm_dialog_bleu(r2, h2, 1, &q), CM_OK);
    assert_float_equal(q.brevity, exp(1.0 - 4.0 / 2.0), 1e-12);
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
            test_render_marks_every_turn_and_conversation_and_splits_by_film),
        cmocka_unit_test(test_eval_counts_bytes_and_gives_finite_bits_per_byte),
        cmocka_unit_test(
            test_lstm_eval_uses_the_gpt_windows_and_reply_examples),
        cmocka_unit_test(test_bleu_and_distinct_match_hand_computed_values),
    };

    return cmocka_run_group_tests_name("dialog", tests, fixtures_up,
                                       fixtures_down);
}

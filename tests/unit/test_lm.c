/*
 * test_lm.c: inference engine: KV-cache decode equals a full forward,
 * batched decode equals single decode, chunked prefill, sampling rules,
 * stop/length/context endings, seeded reproducibility.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cinematch/common.h"
#include "cinematch/gpt.h"
#include "cinematch/lm.h"

#define V 53


/* 1: tiny_model has heads of 64 (C = 128, NH = 2), the width at which
 * lm_kernels' attention reads the cache all heads at a time; 0: heads of
 * 8 (its plain loops) */
static int wide_heads;


static void
tiny_model(cm_gpt_t *m)
{
    cm_gpt_config_t cfg = { 24, V, 128, 2, 2, 16 };
    size_t          i;

    if (wide_heads) {
        cfg.channels = 128;
    }

    assert_int_equal(cm_gpt_init(m, &cfg, 11), CM_OK);
    /* larger weights than the 0.02 init, so logits differ visibly */
    for (i = 0; i < m->num_parameters; i++) {
        m->params_memory[i] *= 10.0f;
    }
}


static void
greedy(cm_lm_params_t *p)
{
    cm_lm_params_default(p);
    p->temperature = 0.0f;
    p->repetition_penalty = 1.0f;
    p->max_tokens = 0;
}


static void
test_kv_cache_decode_matches_full_forward(void **state)
{
    cm_gpt_t        m, full;
    cm_lm_engine_t  e;
    cm_lm_seq_t     s, *sp = &s;
    cm_lm_params_t  p;
    int32_t         prompt[5] = { 3, 9, 27, 1, 50 };
    int             toks[24], i, step, T;

    tiny_model(&m);
    tiny_model(&full);
    greedy(&p);
    assert_int_equal(cm_lm_engine_init(&e, &m, 8), CM_OK);
    assert_int_equal(cm_lm_seq_init(&s, &e, &p), CM_OK);
    assert_int_equal(cm_lm_prefill(&e, &s, prompt, 5), CM_OK);
    for (step = 0; step < 10; step++) {
        T = s.pos;
        for (i = 0; i < T; i++) {
            toks[i] = s.history[i];
        }
        assert_int_equal(cm_gpt_forward(&full, toks, NULL, 1, T), CM_OK);
        for (i = 0; i < V; i++) {
            float want = full.acts.logits[(size_t) (T - 1) * 128 + i];

            if (fabsf(s.logits[i] - want) > 1e-3f + 1e-4f * fabsf(want)) {
                fail_msg("step %d logit %d: cached %g full %g", step, i,
                         (double) s.logits[i], (double) want);
            }
        }
        cm_lm_step(&e, &sp, 1);
    }
    cm_lm_seq_free(&s);
    cm_lm_engine_free(&e);
    cm_gpt_free(&m);
    cm_gpt_free(&full);
}


static void
test_batched_decode_equals_single_decode(void **state)
{
    cm_gpt_t        m;
    cm_lm_engine_t  e;
    cm_lm_seq_t     a[3], b[3], *ap[3], *one;
    cm_lm_params_t  p;
    int32_t         prompts[3][6] = { { 1, 2, 3 }, { 7, 7, 8, 9, 10, 11 },
                                      { 40 } };
    int             lens[3] = { 3, 6, 1 }, i, step, k;
    int32_t         out_a[3][12], out_b[3][12];

    tiny_model(&m);
    assert_int_equal(cm_lm_engine_init(&e, &m, 16), CM_OK);
    for (i = 0; i < 3; i++) {
        cm_lm_params_default(&p);
        p.seed = 100 + (uint64_t) i;
        p.max_tokens = 0;
        p.temperature = i == 0 ? 0.0f : 1.0f;
        assert_int_equal(cm_lm_seq_init(&a[i], &e, &p), CM_OK);
        assert_int_equal(cm_lm_seq_init(&b[i], &e, &p), CM_OK);
        ap[i] = &a[i];
    }
    /* batched: all three advance in one step */
    for (i = 0; i < 3; i++) {
        assert_int_equal(cm_lm_prefill(&e, &a[i], prompts[i], lens[i]),
                         CM_OK);
    }
    for (step = 0; step < 12; step++) {
        for (i = 0; i < 3; i++) {
            out_a[i][step] = a[i].next;
        }
        cm_lm_step(&e, ap, 3);
    }
    /* single: each sequence on its own */
    for (i = 0; i < 3; i++) {
        one = &b[i];
        assert_int_equal(cm_lm_prefill(&e, &b[i], prompts[i], lens[i]),
                         CM_OK);
        for (step = 0; step < 12; step++) {
            out_b[i][step] = b[i].next;
            cm_lm_step(&e, &one, 1);
        }
    }
    for (i = 0; i < 3; i++) {
        for (step = 0; step < 12; step++) {
            assert_int_equal(out_a[i][step], out_b[i][step]);
        }
        for (k = 0; k < V; k++) {
            assert_float_equal(a[i].logits[k], b[i].logits[k], 1e-3);
        }
        cm_lm_seq_free(&a[i]);
        cm_lm_seq_free(&b[i]);
    }
    cm_lm_engine_free(&e);
    cm_gpt_free(&m);
}


/* Continuous batching as the daemon will do it: a sequence admitted while
 * another is half-way through decoding, and one retired early, produce the
 * same tokens as each run alone. */
static void
test_sequences_admitted_mid_decode_match_solo_runs(void **state)
{
    cm_gpt_t        m;
    cm_lm_engine_t  e;
    cm_lm_seq_t     a, b, c, *run[3], *one;
    cm_lm_params_t  p;
    int32_t         pa[3] = { 1, 2, 3 }, pb[4] = { 9, 8, 7, 6 };
    int32_t         pc[2] = { 40, 41 };
    int32_t         got[3][10], want[3][10];
    int             i, k, n, na = 0, nb = 0, nc = 0;

    tiny_model(&m);
    greedy(&p);
    assert_int_equal(cm_lm_engine_init(&e, &m, 16), CM_OK);

    /* solo runs */
    for (k = 0; k < 3; k++) {
        cm_lm_params_t q = p;

        q.max_tokens = k == 2 ? 4 : 10;
        assert_int_equal(cm_lm_seq_init(&a, &e, &q), CM_OK);
        assert_int_equal(cm_lm_prefill(&e, &a, k == 0 ? pa : k == 1 ? pb : pc,
                                       k == 0 ? 3 : k == 1 ? 4 : 2), CM_OK);
        one = &a;
        for (i = 0; a.finish == CM_LM_RUNNING; i++) {
            want[k][i] = a.next;
            cm_lm_step(&e, &one, 1);
        }
        cm_lm_seq_free(&a);
    }

    /* a runs alone for 3 steps; b joins; c joins at step 5 and retires
     * after 4 tokens while the others go on */
    assert_int_equal(cm_lm_seq_init(&a, &e, &p), CM_OK);
    p.max_tokens = 10;
    assert_int_equal(cm_lm_seq_init(&b, &e, &p), CM_OK);
    p.max_tokens = 4;
    assert_int_equal(cm_lm_seq_init(&c, &e, &p), CM_OK);
    a.params.max_tokens = 10;
    assert_int_equal(cm_lm_prefill(&e, &a, pa, 3), CM_OK);
    for (i = 0; i < 3; i++) {
        got[0][na++] = a.next;
        run[0] = &a;
        cm_lm_step(&e, run, 1);
    }
    assert_int_equal(cm_lm_prefill(&e, &b, pb, 4), CM_OK);
    for (i = 0; i < 12; i++) {
        if (i == 2) {
            assert_int_equal(cm_lm_prefill(&e, &c, pc, 2), CM_OK);
        }
        n = 0;
        if (a.finish == CM_LM_RUNNING) {
            got[0][na++] = a.next;
            run[n++] = &a;
        }
        if (b.finish == CM_LM_RUNNING) {
            got[1][nb++] = b.next;
            run[n++] = &b;
        }
        if (i >= 2 && c.finish == CM_LM_RUNNING) {
            got[2][nc++] = c.next;
            run[n++] = &c;
        }
        if (n == 0) {
            break;
        }
        cm_lm_step(&e, run, n);
    }
    assert_int_equal(na, 10);
    assert_int_equal(nb, 10);
    assert_int_equal(nc, 4);
    for (i = 0; i < 10; i++) {
        assert_int_equal(got[0][i], want[0][i]);
        assert_int_equal(got[1][i], want[1][i]);
    }
    for (i = 0; i < 4; i++) {
        assert_int_equal(got[2][i], want[2][i]);
    }
    cm_lm_seq_free(&a);
    cm_lm_seq_free(&b);
    cm_lm_seq_free(&c);
    cm_lm_engine_free(&e);
    cm_gpt_free(&m);
}


static void
test_chunked_prefill_equals_one_chunk(void **state)
{
    cm_gpt_t        m;
    cm_lm_engine_t  big, small;
    cm_lm_seq_t     a, b;
    cm_lm_params_t  p;
    int32_t         prompt[11] = { 5, 4, 3, 2, 1, 0, 10, 20, 30, 40, 50 };
    int             k;

    tiny_model(&m);
    greedy(&p);
    assert_int_equal(cm_lm_engine_init(&big, &m, 32), CM_OK);
    assert_int_equal(cm_lm_engine_init(&small, &m, 3), CM_OK);
    assert_int_equal(cm_lm_seq_init(&a, &big, &p), CM_OK);
    assert_int_equal(cm_lm_seq_init(&b, &small, &p), CM_OK);
    assert_int_equal(cm_lm_prefill(&big, &a, prompt, 11), CM_OK);
    assert_int_equal(cm_lm_prefill(&small, &b, prompt, 11), CM_OK);
    assert_int_equal(a.next, b.next);
    assert_int_equal(a.pos, 11);
    for (k = 0; k < V; k++) {
        assert_float_equal(a.logits[k], b.logits[k], 1e-3);
    }
    cm_lm_seq_free(&a);
    cm_lm_seq_free(&b);
    cm_lm_engine_free(&big);
    cm_lm_engine_free(&small);
    cm_gpt_free(&m);
}


/*
 * Prompts fed with cm_lm_feed run inside cm_lm_step in chunks of the
 * step's prefill budget, mixed with the decode rows of running sequences
 * and split across forwards when the rows exceed max_rows: each sequence
 * still yields what it yields alone with cm_lm_prefill, the running one
 * keeps producing a token every step while the others prefill, and a fed
 * sequence has no token until its whole prompt has run.
 */
static void
test_fed_prompts_run_in_chunks_inside_steps(void **state)
{
    cm_gpt_t        m;
    cm_lm_engine_t  e;
    cm_lm_seq_t     a, b, c, *run[3], *one;
    cm_lm_params_t  p;
    int32_t         pa[3] = { 1, 2, 3 };
    int32_t         pb[13] = { 9, 8, 7, 6, 5, 4, 3, 2, 1, 0, 11, 12, 13 };
    int32_t         pc[7] = { 40, 41, 42, 43, 44, 45, 46 };
    int32_t         want[3][8], got[3][8];
    int             k, i, steps, n[3] = { 0, 0, 0 };

    tiny_model(&m);
    greedy(&p);
    p.max_tokens = 8;
    assert_int_equal(cm_lm_engine_init(&e, &m, 4), CM_OK);
    /* solo, one prefill each */
    for (k = 0; k < 3; k++) {
        assert_int_equal(cm_lm_seq_init(&a, &e, &p), CM_OK);
        assert_int_equal(cm_lm_prefill(&e, &a, k == 0 ? pa : k == 1 ? pb : pc,
                                       k == 0 ? 3 : k == 1 ? 13 : 7), CM_OK);
        one = &a;
        for (i = 0; a.finish == CM_LM_RUNNING; i++) {
            want[k][i] = a.next;
            cm_lm_step(&e, &one, 1);
        }
        assert_int_equal(i, 8);
        cm_lm_seq_free(&a);
    }

    /* a decodes; b (13 tokens) and c (7) are fed; budget 5 per step and 4
     * rows per forward force chunks and mid-chunk flushes */
    e.prefill_budget = 5;
    assert_int_equal(cm_lm_seq_init(&a, &e, &p), CM_OK);
    assert_int_equal(cm_lm_seq_init(&b, &e, &p), CM_OK);
    assert_int_equal(cm_lm_seq_init(&c, &e, &p), CM_OK);
    assert_int_equal(cm_lm_prefill(&e, &a, pa, 3), CM_OK);
    assert_int_equal(cm_lm_feed(&e, &b, pb, 13), CM_OK);
    assert_int_equal(cm_lm_feed(&e, &c, pc, 7), CM_OK);
    assert_int_equal(b.next, -1);
    assert_int_equal(cm_lm_feed(&e, &b, pb, 2), CM_EINVAL);   /* pending */
    run[0] = &b;
    run[1] = &a;
    run[2] = &c;
    for (steps = 0; steps < 30; steps++) {
        cm_lm_seq_t *s3[3] = { &a, &b, &c };

        for (k = 0; k < 3; k++) {
            if (s3[k]->finish == CM_LM_RUNNING && s3[k]->next >= 0) {
                got[k][n[k]++] = s3[k]->next;
            }
        }
        if (cm_lm_step(&e, run, 3) == 0) {
            break;
        }
        if (steps == 0) {
            /* 5 of b's 13 prompt tokens ran; c waits for budget */
            assert_int_equal(b.pos, 5);
            assert_int_equal(b.next, -1);
            assert_int_equal(c.pos, 0);
            assert_int_equal(n[0], 1);
        }
    }
    for (k = 0; k < 3; k++) {
        assert_int_equal(n[k], 8);
        for (i = 0; i < 8; i++) {
            assert_int_equal(got[k][i], want[k][i]);
        }
    }
    /* one forward per step when the rows fit in max_rows */
    {
        cm_lm_seq_t     many[6], *mp[6];
        cm_lm_engine_t  wide;
        uint64_t        f0;

        assert_int_equal(cm_lm_engine_init(&wide, &m, 8), CM_OK);
        for (k = 0; k < 6; k++) {
            assert_int_equal(cm_lm_seq_init(&many[k], &wide, &p), CM_OK);
            assert_int_equal(cm_lm_prefill(&wide, &many[k], pc, 2 + k),
                             CM_OK);
            mp[k] = &many[k];
        }
        f0 = wide.forwards;
        cm_lm_step(&wide, mp, 6);
        assert_int_equal(wide.forwards - f0, 1);
        for (k = 0; k < 6; k++) {
            assert_int_equal(many[k].pos, 3 + k);
            cm_lm_seq_free(&many[k]);
        }
        cm_lm_engine_free(&wide);
    }
    /* a never waited: one token per step from the first */
    assert_int_equal(a.n_generated, 8);
    assert_int_equal(b.pos, 13 + 7);
    cm_lm_seq_free(&a);
    cm_lm_seq_free(&b);
    cm_lm_seq_free(&c);
    cm_lm_engine_free(&e);
    cm_gpt_free(&m);
}


/* A step split over threads (panels of each matrix, rows of attention)
 * gives the same bits as one thread; fed prompts and decode rows mixed. */
static void
test_threaded_steps_equal_one_thread(void **state)
{
    cm_gpt_t        m;
    cm_lm_engine_t  e[3];
    cm_lm_seq_t     s[3][5], *sp[3][5];
    cm_lm_params_t  p;
    int32_t         prompt[9] = { 3, 1, 4, 1, 5, 9, 2, 6, 5 };
    int             t, k, i, step, nthreads[3] = { 1, 2, 3 };

    tiny_model(&m);
    cm_lm_params_default(&p);
    p.max_tokens = 10;
    for (t = 0; t < 3; t++) {
        assert_int_equal(cm_lm_engine_init(&e[t], &m, 8), CM_OK);
        assert_int_equal(cm_lm_engine_threads(&e[t], nthreads[t]), CM_OK);
        e[t].prefill_budget = 6;
        for (k = 0; k < 5; k++) {
            p.seed = (uint64_t) k + 5;
            assert_int_equal(cm_lm_seq_init(&s[t][k], &e[t], &p), CM_OK);
            assert_int_equal(cm_lm_feed(&e[t], &s[t][k], prompt, 3 + k),
                             CM_OK);
            sp[t][k] = &s[t][k];
        }
    }
    assert_int_equal(cm_lm_engine_threads(&e[0], 0), CM_EINVAL);
    for (step = 0; step < 20; step++) {
        for (t = 0; t < 3; t++) {
            cm_lm_step(&e[t], sp[t], 5);
        }
        for (k = 0; k < 5; k++) {
            for (t = 1; t < 3; t++) {
                assert_int_equal(s[t][k].next, s[0][k].next);
                assert_int_equal(s[t][k].pos, s[0][k].pos);
                for (i = 0; i < V && s[0][k].next >= 0; i++) {
                    assert_true(s[t][k].logits[i] == s[0][k].logits[i]);
                }
            }
        }
    }
    for (t = 0; t < 3; t++) {
        for (k = 0; k < 5; k++) {
            assert_int_equal(s[t][k].finish, CM_LM_LENGTH);
            cm_lm_seq_free(&s[t][k]);
        }
        cm_lm_engine_free(&e[t]);
    }
    cm_gpt_free(&m);
}


static void
test_sampling_rules(void **state)
{
    cm_gpt_t        m;
    cm_lm_engine_t  e;
    cm_lm_seq_t     s;
    cm_lm_params_t  p;
    float           logits[V];
    int             i, same = 1, n1 = 0;
    int32_t         t1[50], t2[50];

    tiny_model(&m);
    assert_int_equal(cm_lm_engine_init(&e, &m, 4), CM_OK);
    for (i = 0; i < V; i++) {
        logits[i] = (float) (i % 7) * 0.1f;
    }
    logits[17] = 3.0f;
    logits[30] = 2.9f;

    greedy(&p);
    assert_int_equal(cm_lm_seq_init(&s, &e, &p), CM_OK);
    assert_int_equal(cm_lm_sample(&e, &s, logits), 17);
    /* repetition penalty: 17 was already said, so 30 wins */
    s.params.repetition_penalty = 1.5f;
    s.history[0] = 17;
    s.pos = 1;
    assert_int_equal(cm_lm_sample(&e, &s, logits), 30);
    s.pos = 0;
    /* min_tokens: a stop token cannot be the first token emitted */
    s.params.stop[0] = 17;
    s.params.n_stop = 1;
    s.params.min_tokens = 1;
    assert_int_equal(cm_lm_sample(&e, &s, logits), 30);
    s.n_generated = 1;
    assert_int_equal(cm_lm_sample(&e, &s, logits), 17);
    s.n_generated = 0;
    s.params.n_stop = 0;
    s.params.min_tokens = 0;
    /* top-k 1 and a tiny top-p are greedy whatever the temperature */
    s.params.repetition_penalty = 1.0f;
    s.params.temperature = 5.0f;
    s.params.top_k = 1;
    for (i = 0; i < 20; i++) {
        assert_int_equal(cm_lm_sample(&e, &s, logits), 17);
    }
    s.params.top_k = 0;
    s.params.top_p = 1e-4f;
    s.params.temperature = 1.0f;
    for (i = 0; i < 20; i++) {
        assert_int_equal(cm_lm_sample(&e, &s, logits), 17);
    }
    /* top-k 2: only ever the two best */
    s.params.top_k = 2;
    s.params.top_p = 1.0f;
    for (i = 0; i < 200; i++) {
        int32_t t = cm_lm_sample(&e, &s, logits);

        assert_true(t == 17 || t == 30);
        n1 += t == 30;
    }
    assert_true(n1 > 40 && n1 < 160);   /* e^-0.1 odds: about 95 of 200 */
    cm_lm_seq_free(&s);

    /* same seed, same draws; another seed, other draws */
    cm_lm_params_default(&p);
    p.temperature = 1.0f;
    p.top_k = 0;
    p.top_p = 1.0f;
    p.seed = 42;
    for (i = 0; i < V; i++) {
        logits[i] = 0.0f;
    }
    assert_int_equal(cm_lm_seq_init(&s, &e, &p), CM_OK);
    for (i = 0; i < 50; i++) {
        t1[i] = cm_lm_sample(&e, &s, logits);
    }
    cm_lm_seq_free(&s);
    assert_int_equal(cm_lm_seq_init(&s, &e, &p), CM_OK);
    for (i = 0; i < 50; i++) {
        t2[i] = cm_lm_sample(&e, &s, logits);
        assert_int_equal(t1[i], t2[i]);
    }
    cm_lm_seq_free(&s);
    p.seed = 43;
    assert_int_equal(cm_lm_seq_init(&s, &e, &p), CM_OK);
    for (i = 0; i < 50; i++) {
        same &= cm_lm_sample(&e, &s, logits) == t1[i];
    }
    assert_false(same);
    cm_lm_seq_free(&s);
    cm_lm_engine_free(&e);
    cm_gpt_free(&m);
}


static void
test_sequences_end_on_stop_length_and_full_context(void **state)
{
    cm_gpt_t        m;
    cm_lm_engine_t  e;
    cm_lm_seq_t     s, *sp = &s;
    cm_lm_params_t  p;
    int32_t         prompt[20] = { 0 }, first;
    int             emitted = 0;

    tiny_model(&m);
    assert_int_equal(cm_lm_engine_init(&e, &m, 8), CM_OK);

    /* max_tokens: exactly that many emitted */
    greedy(&p);
    p.max_tokens = 4;
    assert_int_equal(cm_lm_seq_init(&s, &e, &p), CM_OK);
    assert_int_equal(cm_lm_prefill(&e, &s, prompt, 3), CM_OK);
    first = s.next;
    while (s.finish == CM_LM_RUNNING) {
        emitted++;
        cm_lm_step(&e, &sp, 1);
    }
    assert_int_equal(s.finish, CM_LM_LENGTH);
    assert_int_equal(emitted, 4);
    cm_lm_seq_free(&s);

    /* the greedy first token declared a stop token: nothing emitted */
    p.max_tokens = 0;
    p.stop[0] = first;
    p.n_stop = 1;
    assert_int_equal(cm_lm_seq_init(&s, &e, &p), CM_OK);
    assert_int_equal(cm_lm_prefill(&e, &s, prompt, 3), CM_OK);
    assert_int_equal(s.finish, CM_LM_STOP);
    assert_int_equal(cm_lm_step(&e, &sp, 1), 0);
    cm_lm_seq_free(&s);

    /* context: 24 positions; a 20-token prompt leaves room for 4 fed */
    p.n_stop = 0;
    assert_int_equal(cm_lm_seq_init(&s, &e, &p), CM_OK);
    assert_int_equal(cm_lm_prefill(&e, &s, prompt, 20), CM_OK);
    emitted = 0;
    while (s.finish == CM_LM_RUNNING) {
        emitted++;
        cm_lm_step(&e, &sp, 1);
    }
    assert_int_equal(s.finish, CM_LM_CONTEXT);
    assert_int_equal(s.pos, 24);
    assert_int_equal(emitted, 5);
    /* prompts past the context or with bad ids are refused */
    cm_lm_seq_free(&s);
    assert_int_equal(cm_lm_seq_init(&s, &e, &p), CM_OK);
    prompt[0] = V;
    assert_int_equal(cm_lm_prefill(&e, &s, prompt, 2), CM_EINVAL);
    prompt[0] = 0;
    assert_int_equal(cm_lm_prefill(&e, &s, prompt, 25), CM_EINVAL);
    cm_lm_seq_free(&s);
    cm_lm_engine_free(&e);
    cm_gpt_free(&m);
}


/* A freed sequence's KV block goes to the next sequence (no fresh pages
 * per request), and what the old one left in it changes nothing: the
 * same prompt and seed give the same tokens again. */
static void
test_freed_cache_is_reused_and_leaves_no_trace(void **state)
{
    cm_gpt_t        m;
    cm_lm_engine_t  e;
    cm_lm_seq_t     s, *sp = &s;
    cm_lm_params_t  p;
    int32_t         a[5] = { 3, 9, 27, 1, 50 }, b[3] = { 8, 8, 2 };
    int32_t         first[10], again[10];
    float          *block;
    int             i;

    wide_heads = 1;
    tiny_model(&m);
    wide_heads = 0;
    cm_lm_params_default(&p);
    p.max_tokens = 0;
    assert_int_equal(cm_lm_engine_init(&e, &m, 8), CM_OK);
    /* prompt b, freed; then prompt a into the same block, twice */
    assert_int_equal(cm_lm_seq_init(&s, &e, &p), CM_OK);
    assert_int_equal(cm_lm_prefill(&e, &s, b, 3), CM_OK);
    for (i = 0; i < 12; i++) {
        cm_lm_step(&e, &sp, 1);
    }
    block = s.k;
    cm_lm_seq_free(&s);
    assert_int_equal(cm_lm_seq_init(&s, &e, &p), CM_OK);
    assert_ptr_equal(s.k, block);
    assert_int_equal(cm_lm_prefill(&e, &s, a, 5), CM_OK);
    for (i = 0; i < 10; i++) {
        first[i] = s.next;
        cm_lm_step(&e, &sp, 1);
    }
    cm_lm_seq_free(&s);
    assert_int_equal(cm_lm_seq_init(&s, &e, &p), CM_OK);
    assert_ptr_equal(s.k, block);
    memset(s.k, 0x7f, s.kv_bytes);     /* garbage where nothing was fed */
    assert_int_equal(cm_lm_prefill(&e, &s, a, 5), CM_OK);
    for (i = 0; i < 10; i++) {
        again[i] = s.next;
        cm_lm_step(&e, &sp, 1);
    }
    for (i = 0; i < 10; i++) {
        assert_int_equal(again[i], first[i]);
    }
    cm_lm_seq_free(&s);
    cm_lm_engine_free(&e);
    cm_gpt_free(&m);
}


/* The same three checks with 64-wide heads. */
static void
test_kv_cache_decode_matches_full_forward_64_wide_heads(void **state)
{
    wide_heads = 1;
    test_kv_cache_decode_matches_full_forward(state);
    wide_heads = 0;
}


static void
test_batched_decode_equals_single_decode_64_wide_heads(void **state)
{
    wide_heads = 1;
    test_batched_decode_equals_single_decode(state);
    wide_heads = 0;
}


static void
test_threaded_steps_equal_one_thread_64_wide_heads(void **state)
{
    wide_heads = 1;
    test_threaded_steps_equal_one_thread(state);
    wide_heads = 0;
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kv_cache_decode_matches_full_forward),
        cmocka_unit_test(test_kv_cache_decode_matches_full_forward_64_wide_heads),
        cmocka_unit_test(test_batched_decode_equals_single_decode_64_wide_heads),
        cmocka_unit_test(test_threaded_steps_equal_one_thread_64_wide_heads),
        cmocka_unit_test(test_freed_cache_is_reused_and_leaves_no_trace),
        cmocka_unit_test(test_batched_decode_equals_single_decode),
        cmocka_unit_test(test_chunked_prefill_equals_one_chunk),
        cmocka_unit_test(test_fed_prompts_run_in_chunks_inside_steps),
        cmocka_unit_test(test_threaded_steps_equal_one_thread),
        cmocka_unit_test(test_sequences_admitted_mid_decode_match_solo_runs),
        cmocka_unit_test(test_sampling_rules),
        cmocka_unit_test(test_sequences_end_on_stop_length_and_full_context),
    };

    return cmocka_run_group_tests_name("lm", tests, NULL, NULL);
}

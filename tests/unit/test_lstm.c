/*
 * test_lstm.c: the baseline LSTM language model: gradient checks by finite
 * differences for one LSTM layer and for the whole model (tied and
 * untied), a model that overfits one batch, step-by-step decoding equal to
 * the full forward, checkpoint round trip (identical logits), header
 * layout and rejection of damaged files.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "cinematch/common.h"
#include "cinematch/lstm.h"

static unsigned  rng_state = 1;


static float
frand(void)
{
    return (float) rand_r(&rng_state) / (float) RAND_MAX * 2.0f - 1.0f;
}


static float *
rvec(size_t n, float scale)
{
    float  *v = malloc(n * sizeof(float));
    size_t  i;

    assert_non_null(v);
    for (i = 0; i < n; i++) {
        v[i] = frand() * scale;
    }
    return v;
}


static float *
zvec(size_t n)
{
    float *v = calloc(n, sizeof(float));

    assert_non_null(v);
    return v;
}


/* Shapes of the single-layer check. */
enum { LB = 2, LT = 4, LIN = 3, LH = 5 };

typedef struct {
    float *gates, *c, *tc, *h, *hprev;
} layer_acts_t;


static void
layer_acts_alloc(layer_acts_t *a)
{
    a->gates = zvec(LB * LT * 4 * LH);
    a->c = zvec(LB * LT * LH);
    a->tc = zvec(LB * LT * LH);
    a->h = zvec(LB * LT * LH);
    a->hprev = zvec(LB * LT * LH);
}


static void
layer_acts_free(layer_acts_t *a)
{
    free(a->gates);
    free(a->c);
    free(a->tc);
    free(a->h);
    free(a->hprev);
}


/* L = sum(h * r) over the whole sequence, in double */
static double
layer_loss(layer_acts_t *a, const float *x, const float *wih,
    const float *whh, const float *bias, const float *r)
{
    double s = 0.0;
    int    i;

    cm_lstm_layer_forward(a->gates, a->c, a->tc, a->h, a->hprev, x, wih, whh,
                          bias, LB, LT, LIN, LH);
    for (i = 0; i < LB * LT * LH; i++) {
        s += (double) a->h[i] * r[i];
    }
    return s;
}


static void
check_numeric(const char *what, float *param, const float *grad, size_t n,
    layer_acts_t *a, const float *x, const float *wih, const float *whh,
    const float *bias, const float *r)
{
    size_t  i;
    float   eps = 1e-2f, keep;
    double  lp, lm, num;

    for (i = 0; i < n; i++) {
        keep = param[i];
        param[i] = keep + eps;
        lp = layer_loss(a, x, wih, whh, bias, r);
        param[i] = keep - eps;
        lm = layer_loss(a, x, wih, whh, bias, r);
        param[i] = keep;
        num = (lp - lm) / (2.0 * eps);
        if (fabs(num - grad[i]) > 2e-3 + 2e-2 * fabs(num)) {
            fail_msg("%s[%zu]: analytic %g numeric %g", what, i,
                     (double) grad[i], num);
        }
    }
}


static void
test_lstm_layer_backward_matches_finite_differences(void **state)
{
    layer_acts_t  a;
    float        *x = rvec(LB * LT * LIN, 1.0f);
    float        *wih = rvec(4 * LH * LIN, 0.5f);
    float        *whh = rvec(4 * LH * LH, 0.5f);
    float        *bias = rvec(4 * LH, 0.5f);
    float        *r = rvec(LB * LT * LH, 1.0f);
    float        *dx = zvec(LB * LT * LIN), *dwih = zvec(4 * LH * LIN);
    float        *dwhh = zvec(4 * LH * LH), *dbias = zvec(4 * LH);
    float        *dgates = zvec(LB * LT * 4 * LH), *dhn = zvec(LB * LH);
    float        *dcn = zvec(LB * LH);

    layer_acts_alloc(&a);
    (void) layer_loss(&a, x, wih, whh, bias, r);
    /* dL/dh = r */
    cm_lstm_layer_backward(dx, dwih, dwhh, dbias, dgates, dhn, dcn, r, x,
                           a.gates, a.c, a.tc, a.hprev, wih, whh, LB, LT,
                           LIN, LH);
    check_numeric("dx", x, dx, LB * LT * LIN, &a, x, wih, whh, bias, r);
    check_numeric("dwih", wih, dwih, 4 * LH * LIN, &a, x, wih, whh, bias, r);
    check_numeric("dwhh", whh, dwhh, 4 * LH * LH, &a, x, wih, whh, bias, r);
    check_numeric("dbias", bias, dbias, 4 * LH, &a, x, wih, whh, bias, r);
    layer_acts_free(&a);
    free(x);
    free(wih);
    free(whh);
    free(bias);
    free(r);
    free(dx);
    free(dwih);
    free(dwhh);
    free(dbias);
    free(dgates);
    free(dhn);
    free(dcn);
}


static void
test_lstm_layer_forward_matches_the_equations_by_hand(void **state)
{
    /* B=1, T=2, In=1, H=1: every weight 0.5, bias 0, x = (1, -1) */
    float   gates[8], c[2], tc[2], h[2], hprev[2];
    float   x[2] = { 1.0f, -1.0f }, wih[4], whh[4], bias[4] = { 0 };
    double  s, tg, cc, hh, a;
    int     i;

    for (i = 0; i < 4; i++) {
        wih[i] = 0.5f;
        whh[i] = 0.5f;
    }
    cm_lstm_layer_forward(gates, c, tc, h, hprev, x, wih, whh, bias, 1, 2, 1,
                          1);
    s = 1.0 / (1.0 + exp(-0.5));
    tg = tanh(0.5);
    cc = s * tg;                     /* f * 0 + i * g */
    hh = s * tanh(cc);
    assert_float_equal(c[0], cc, 1e-6);
    assert_float_equal(h[0], hh, 1e-6);
    assert_float_equal(hprev[0], 0.0f, 0.0);
    assert_float_equal(hprev[1], hh, 0.0);
    a = -0.5 + 0.5 * hh;             /* every gate's pre-activation */
    s = 1.0 / (1.0 + exp(-a));
    cc = s * cc + s * tanh(a);
    assert_float_equal(c[1], cc, 1e-6);
    assert_float_equal(h[1], s * tanh(cc), 1e-6);
}


static void
check_model_gradients(const cm_lstm_config_t *cfg)
{
    cm_lstm_t  m;
    int        inp[10], tgt[10], i, k;
    float     *g, eps = 1e-2f, keep;
    double     lp, lm, num;
    size_t     off = 0, j, idx;

    assert_int_equal(cm_lstm_init(&m, cfg, 3), CM_OK);
    /* larger weights than the init, so every path carries gradient */
    for (j = 0; j < m.num_parameters; j++) {
        m.params_memory[j] += frand() * 0.3f;
    }
    for (i = 0; i < 10; i++) {
        inp[i] = (i * 7) % cfg->vocab_size;
        tgt[i] = (i * 11 + 3) % cfg->vocab_size;
    }
    assert_int_equal(cm_lstm_forward(&m, inp, tgt, 2, 5), CM_OK);
    cm_lstm_zero_grad(&m);
    assert_int_equal(cm_lstm_backward(&m, 1.0f), CM_OK);
    /* in every tensor, the 4 largest-gradient entries */
    for (k = 0; k < CM_LSTM_NPARAMS; k++) {
        size_t n = m.param_sizes[k];

        g = m.grads_memory + off;
        for (i = 0; i < 4 && n > 0; i++) {
            idx = 0;
            for (j = 0; j < n; j++) {
                if (fabsf(g[j]) > fabsf(g[idx])) {
                    idx = j;
                }
            }
            if (g[idx] == 0.0f) {
                break;
            }
            keep = m.params_memory[off + idx];
            m.params_memory[off + idx] = keep + eps;
            cm_lstm_forward(&m, inp, tgt, 2, 5);
            lp = m.mean_loss;
            m.params_memory[off + idx] = keep - eps;
            cm_lstm_forward(&m, inp, tgt, 2, 5);
            lm = m.mean_loss;
            m.params_memory[off + idx] = keep;
            num = (lp - lm) / (2.0 * eps);
            if (fabs(num - g[idx]) > 1e-3 + 5e-2 * fabs(num)) {
                fail_msg("tied %d param tensor %d [%zu]: analytic %g numeric"
                         " %g", cfg->tied, k, idx, (double) g[idx], num);
            }
            g[idx] = 0.0f;   /* next largest */
        }
        off += n;
    }
    cm_lstm_free(&m);
}


static void
test_model_gradients_match_finite_differences_tied_and_untied(void **state)
{
    cm_lstm_config_t tied = { 8, 37, 12, 12, 2, 1 };
    cm_lstm_config_t untied = { 8, 29, 6, 10, 3, 0 };

    check_model_gradients(&tied);
    check_model_gradients(&untied);
}


static void
test_model_overfits_one_batch(void **state)
{
    cm_lstm_t         m;
    cm_lstm_config_t  cfg;
    int               inp[32], tgt[32], i, step;
    float             first = 0.0f;
    cm_adamw_t        o = { 1e-2f, 0.9f, 0.95f, 1e-8f, 0.0f, 0 };

    assert_int_equal(cm_lstm_config_named("lstm-tiny", 64, &cfg), CM_OK);
    assert_int_equal(cm_lstm_init(&m, &cfg, 1), CM_OK);
    for (i = 0; i < 32; i++) {
        inp[i] = (i * 13 + 5) % 64;
        tgt[i] = (i * 29 + 7) % 64;
    }
    for (step = 1; step <= 80; step++) {
        assert_int_equal(cm_lstm_forward(&m, inp, tgt, 2, 16), CM_OK);
        if (step == 1) {
            first = m.mean_loss;
            /* untrained: close to uniform, ln 64 = 4.16 */
            assert_true(fabsf(first - logf(64.0f)) < 0.3f);
        }
        cm_lstm_zero_grad(&m);
        assert_int_equal(cm_lstm_backward(&m, 1.0f), CM_OK);
        cm_lstm_clip_grad(&m, 1.0f);
        o.step = step;
        assert_int_equal(cm_lstm_update(&m, &o), CM_OK);
    }
    assert_true(m.mean_loss < 0.2f * first);
    cm_lstm_free(&m);
}


static void
test_step_decoding_equals_the_full_forward(void **state)
{
    cm_lstm_t         m;
    cm_lstm_state_t   s;
    cm_lstm_config_t  cfg = { 16, 40, 8, 12, 2, 0 };
    int               inp[12], t, v;

    assert_int_equal(cm_lstm_init(&m, &cfg, 5), CM_OK);
    for (t = 0; t < 12; t++) {
        inp[t] = (t * 17 + 2) % 40;
    }
    assert_int_equal(cm_lstm_forward(&m, inp, NULL, 1, 12), CM_OK);
    assert_int_equal(cm_lstm_state_init(&s, &m), CM_OK);
    for (t = 0; t < 12; t++) {
        assert_int_equal(cm_lstm_step(&m, &s, inp[t], 1), CM_OK);
        for (v = 0; v < 40; v++) {
            assert_float_equal(s.logits[v], m.acts.logits[t * 40 + v], 1e-4);
        }
    }
    assert_int_equal(cm_lstm_step(&m, &s, 40, 1), CM_EINVAL);
    assert_int_equal(cm_lstm_step(&m, &s, -1, 1), CM_EINVAL);
    /* a reset state starts the sequence over */
    cm_lstm_state_reset(&s, &m);
    assert_int_equal(cm_lstm_step(&m, &s, inp[0], 1), CM_OK);
    assert_float_equal(s.logits[3], m.acts.logits[3], 1e-4);
    cm_lstm_state_free(&s);
    cm_lstm_free(&m);
}


static void
test_forward_rejects_bad_shapes_and_ids(void **state)
{
    cm_lstm_t         m;
    cm_lstm_config_t  cfg = { 4, 10, 4, 4, 1, 1 };
    int               inp[5] = { 1, 2, 3, 4, 5 }, tgt[5] = { 1, 2, 3, 4, 10 };

    assert_int_equal(cm_lstm_init(&m, &cfg, 1), CM_OK);
    assert_int_equal(cm_lstm_forward(&m, inp, NULL, 1, 5), CM_EINVAL);
    assert_int_equal(cm_lstm_forward(&m, inp + 1, tgt + 1, 1, 4), CM_EINVAL);
    assert_int_equal(cm_lstm_forward(&m, inp, NULL, 0, 2), CM_EINVAL);
    /* no forward with targets yet: nothing to differentiate */
    assert_int_equal(cm_lstm_forward(&m, inp, NULL, 1, 4), CM_OK);
    assert_int_equal(cm_lstm_backward(&m, 1.0f), CM_EINVAL);
    cm_lstm_free(&m);
    /* tied needs E == H */
    cfg.embed_dim = 8;
    assert_int_equal(cm_lstm_init(&m, &cfg, 1), CM_EINVAL);
}


static void
tmp_path(char *buf, size_t n, const char *name)
{
    snprintf(buf, n, "/tmp/cm_test_lstm_%ld_%s", (long) getpid(), name);
}


static void
test_checkpoint_round_trips_with_identical_logits_and_header(void **state)
{
    cm_lstm_t         a, b;
    cm_lstm_config_t  cfg = { 16, 33, 6, 10, 2, 0 };
    int               inp[8] = { 1, 5, 9, 32, 0, 7, 7, 3 }, step = 0;
    int               tgt[8] = { 5, 9, 32, 0, 7, 7, 3, 1 };
    int32_t           h[CM_LSTM_HEADER_INTS];
    char              path[256], spath[256], err[256];
    cm_adamw_t        o = { 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 1 };
    FILE             *f;

    tmp_path(path, sizeof(path), "model.bin");
    tmp_path(spath, sizeof(spath), "state.bin");
    assert_int_equal(cm_lstm_init(&a, &cfg, 11), CM_OK);
    assert_int_equal(cm_lstm_save_state(&a, 1, spath, err, sizeof(err)),
                     CM_EINVAL);        /* no optimizer state yet */
    assert_int_equal(cm_lstm_forward(&a, inp, tgt, 2, 4), CM_OK);
    cm_lstm_zero_grad(&a);
    assert_int_equal(cm_lstm_backward(&a, 1.0f), CM_OK);
    assert_int_equal(cm_lstm_update(&a, &o), CM_OK);
    assert_int_equal(cm_lstm_save(&a, path, err, sizeof(err)), CM_OK);
    assert_int_equal(cm_lstm_save_state(&a, 17, spath, err, sizeof(err)),
                     CM_OK);
    assert_true(cm_lstm_is_checkpoint(path));

    /* header, field by field */
    f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fread(h, 4, CM_LSTM_HEADER_INTS, f),
                     CM_LSTM_HEADER_INTS);
    fclose(f);
    assert_int_equal(h[0], 20251125);
    assert_int_equal(h[1], 1);
    assert_int_equal(h[2], 16);
    assert_int_equal(h[3], 33);
    assert_int_equal(h[4], 6);
    assert_int_equal(h[5], 10);
    assert_int_equal(h[6], 2);
    assert_int_equal(h[7], 0);

    assert_int_equal(cm_lstm_load(&b, path, err, sizeof(err)), CM_OK);
    assert_int_equal(b.num_parameters, a.num_parameters);
    assert_memory_equal(b.params_memory, a.params_memory,
                        a.num_parameters * sizeof(float));
    assert_int_equal(cm_lstm_forward(&a, inp, NULL, 2, 4), CM_OK);
    assert_int_equal(cm_lstm_forward(&b, inp, NULL, 2, 4), CM_OK);
    assert_memory_equal(a.acts.logits, b.acts.logits, 8 * 33 * sizeof(float));
    assert_int_equal(cm_lstm_load_state(&b, &step, spath, err, sizeof(err)),
                     CM_OK);
    assert_int_equal(step, 17);
    assert_memory_equal(b.m_memory, a.m_memory,
                        a.num_parameters * sizeof(float));
    assert_memory_equal(b.v_memory, a.v_memory,
                        a.num_parameters * sizeof(float));
    cm_lstm_free(&b);
    /* the state file of another shape is refused */
    cfg.hidden = 12;
    assert_int_equal(cm_lstm_init(&b, &cfg, 1), CM_OK);
    assert_int_equal(cm_lstm_load_state(&b, &step, spath, err, sizeof(err)),
                     CM_EFORMAT);
    cm_lstm_free(&b);
    cm_lstm_free(&a);
    unlink(path);
    unlink(spath);
}


static void
write_file(const char *path, const void *p, size_t n)
{
    FILE *f = fopen(path, "wb");

    assert_non_null(f);
    assert_int_equal(fwrite(p, 1, n, f), n);
    fclose(f);
}


static void
test_loader_rejects_damaged_checkpoints(void **state)
{
    cm_lstm_t         m, n;
    cm_lstm_config_t  cfg = { 8, 20, 4, 4, 1, 1 };
    char              path[256], bad[256], err[256];
    uint8_t          *buf;
    size_t            size;
    int32_t          *h;
    float             nan = NAN;

    tmp_path(path, sizeof(path), "ok.bin");
    tmp_path(bad, sizeof(bad), "bad.bin");
    assert_int_equal(cm_lstm_init(&m, &cfg, 2), CM_OK);
    assert_int_equal(cm_lstm_save(&m, path, err, sizeof(err)), CM_OK);
    size = 1024 + m.num_parameters * 4;
    buf = malloc(size);
    assert_non_null(buf);
    {
        FILE *f = fopen(path, "rb");

        assert_non_null(f);
        assert_int_equal(fread(buf, 1, size, f), size);
        fclose(f);
    }
    h = (int32_t *) buf;

    write_file(bad, buf, size - 4);                      /* truncated */
    assert_int_equal(cm_lstm_load(&n, bad, err, sizeof(err)), CM_EFORMAT);
    write_file(bad, buf, 100);                           /* no header */
    assert_int_equal(cm_lstm_load(&n, bad, err, sizeof(err)), CM_EFORMAT);
    h[0] = 20240326;                                     /* llm.c magic */
    write_file(bad, buf, size);
    assert_int_equal(cm_lstm_load(&n, bad, err, sizeof(err)), CM_EFORMAT);
    assert_false(cm_lstm_is_checkpoint(bad));
    h[0] = CM_LSTM_MAGIC;
    h[1] = 2;                                            /* version */
    write_file(bad, buf, size);
    assert_int_equal(cm_lstm_load(&n, bad, err, sizeof(err)), CM_EFORMAT);
    h[1] = 1;
    h[7] = 0;                    /* untied: the file lacks wout */
    write_file(bad, buf, size);
    assert_int_equal(cm_lstm_load(&n, bad, err, sizeof(err)), CM_EFORMAT);
    h[7] = 1;
    h[5] = 8;                    /* tied with E != H */
    write_file(bad, buf, size);
    assert_int_equal(cm_lstm_load(&n, bad, err, sizeof(err)), CM_EFORMAT);
    h[5] = 4;
    h[6] = -1;                   /* layers */
    write_file(bad, buf, size);
    assert_int_equal(cm_lstm_load(&n, bad, err, sizeof(err)), CM_EFORMAT);
    h[6] = 1;
    h[100] = 7;                  /* reserved field */
    write_file(bad, buf, size);
    assert_int_equal(cm_lstm_load(&n, bad, err, sizeof(err)), CM_EFORMAT);
    h[100] = 0;
    memcpy(buf + 1024 + 4 * 5, &nan, 4);                 /* NaN weight */
    write_file(bad, buf, size);
    assert_int_equal(cm_lstm_load(&n, bad, err, sizeof(err)), CM_EFORMAT);
    assert_int_equal(cm_lstm_load(&n, "/nonexistent/x.bin", err,
                                  sizeof(err)), CM_ENOTFOUND);
    assert_int_equal(cm_lstm_load(&n, path, err, sizeof(err)), CM_OK);
    cm_lstm_free(&n);
    cm_lstm_free(&m);
    free(buf);
    unlink(path);
    unlink(bad);
}


static void
test_named_configs_have_expected_shapes(void **state)
{
    cm_lstm_config_t  c;
    size_t            s[CM_LSTM_NPARAMS];

    assert_int_equal(cm_lstm_config_named("lstm-tiny", 0, &c), CM_OK);
    assert_int_equal(c.vocab_size, 512);
    assert_int_equal(c.hidden, 64);
    assert_int_equal(c.num_layers, 2);
    assert_int_equal(c.max_seq_len, 64);
    assert_int_equal(cm_lstm_config_named("lstm-small", 1000, &c), CM_OK);
    assert_int_equal(c.vocab_size, 1000);
    assert_int_equal(c.hidden, 512);
    assert_int_equal(c.max_seq_len, 256);
    /* V*E + 4H*E + 4H*H*(L-1) + 4H*H*L + 4H*L + V */
    assert_int_equal(cm_lstm_param_sizes(&c, s),
                     1000 * 512 + 4 * 512 * 512 * 4 + 4 * 512 * 2 + 1000);
    assert_int_equal(cm_lstm_config_named("dialog-small", 0, &c), CM_EINVAL);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_lstm_layer_backward_matches_finite_differences),
        cmocka_unit_test(
            test_lstm_layer_forward_matches_the_equations_by_hand),
        cmocka_unit_test(
            test_model_gradients_match_finite_differences_tied_and_untied),
        cmocka_unit_test(test_model_overfits_one_batch),
        cmocka_unit_test(test_step_decoding_equals_the_full_forward),
        cmocka_unit_test(test_forward_rejects_bad_shapes_and_ids),
        cmocka_unit_test(
            test_checkpoint_round_trips_with_identical_logits_and_header),
        cmocka_unit_test(test_loader_rejects_damaged_checkpoints),
        cmocka_unit_test(test_named_configs_have_expected_shapes),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

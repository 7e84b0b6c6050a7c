/*
 * test_gpt.c: GPT-2 kernels and model: gradient checks by finite
 * differences for every layer, SGEMM kernels against the plain-loop
 * reference, a model that overfits one batch, llm.c checkpoint layout,
 * round trip and rejection of damaged files.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "cinematch/common.h"
#include "cinematch/gpt.h"

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


static double
dotd(const float *a, const float *b, size_t n)
{
    double  s = 0.0;
    size_t  i;

    for (i = 0; i < n; i++) {
        s += (double) a[i] * b[i];
    }
    return s;
}


static void
assert_close(const float *a, const float *b, size_t n, float atol,
    float rtol, const char *what)
{
    size_t i;

    for (i = 0; i < n; i++) {
        float d = fabsf(a[i] - b[i]);

        if (d > atol + rtol * fabsf(b[i])) {
            fail_msg("%s[%zu]: %g vs %g", what, i, (double) a[i],
                     (double) b[i]);
        }
    }
}


/*
 * Finite differences: for each x[i], (f(x + e) - f(x - e)) / 2e against
 * the analytic gradient g[i].  f is the layer's loss sum(out * R).
 */
typedef double (*loss_fn)(void *ctx);

static void
gradcheck(loss_fn f, void *ctx, float *x, const float *g, size_t n,
    const char *what)
{
    size_t  i;
    float   keep, eps = 1e-3f;
    double  lp, lm, num;

    for (i = 0; i < n; i++) {
        keep = x[i];
        x[i] = keep + eps;
        lp = f(ctx);
        x[i] = keep - eps;
        lm = f(ctx);
        x[i] = keep;
        num = (lp - lm) / (2.0 * eps);
        if (fabs(num - g[i]) > 2e-3 + 2e-2 * fabs(num)) {
            fail_msg("%s[%zu]: analytic %g, numeric %g", what, i,
                     (double) g[i], num);
        }
    }
}


/* ---- layernorm ---- */

typedef struct {
    int    N, C;
    float *out, *inp, *w, *b, *R;
} ln_ctx_t;


static double
ln_loss(void *p)
{
    ln_ctx_t *c = p;

    cm_layernorm_forward(c->out, NULL, NULL, c->inp, c->w, c->b, c->N, c->C);
    return dotd(c->out, c->R, (size_t) c->N * c->C);
}


static void
test_layernorm_backward_matches_finite_differences(void **state)
{
    ln_ctx_t  c = { 3, 8, NULL, NULL, NULL, NULL, NULL };
    size_t    n = 24;
    float    *mean = zvec(3), *rstd = zvec(3), *din = zvec(n), *dw = zvec(8),
             *db = zvec(8);

    c.out = zvec(n);
    c.inp = rvec(n, 1.0f);
    c.w = rvec(8, 1.0f);
    c.b = rvec(8, 1.0f);
    c.R = rvec(n, 1.0f);
    cm_layernorm_forward(c.out, mean, rstd, c.inp, c.w, c.b, c.N, c.C);
    cm_layernorm_backward(din, dw, db, c.R, c.inp, c.w, mean, rstd, c.N, c.C);
    gradcheck(ln_loss, &c, c.inp, din, n, "dinp");
    gradcheck(ln_loss, &c, c.w, dw, 8, "dweight");
    gradcheck(ln_loss, &c, c.b, db, 8, "dbias");
    free(mean); free(rstd); free(din); free(dw); free(db);
    free(c.out); free(c.inp); free(c.w); free(c.b); free(c.R);
}


/* ---- matmul ---- */

typedef struct {
    int    N, C, OC, ref;
    float *out, *inp, *w, *b, *R;
} mm_ctx_t;


static double
mm_loss(void *p)
{
    mm_ctx_t *c = p;

    (c->ref ? cm_matmul_forward_ref : cm_matmul_forward)(c->out, c->inp,
        c->w, c->b, c->N, c->C, c->OC);
    return dotd(c->out, c->R, (size_t) c->N * c->OC);
}


static void
test_matmul_backward_matches_finite_differences_and_reference(void **state)
{
    mm_ctx_t  c = { 4, 6, 5, 0, NULL, NULL, NULL, NULL, NULL };
    float    *din = zvec(24), *dw = zvec(30), *db = zvec(5);
    float    *din2 = zvec(24), *dw2 = zvec(30), *db2 = zvec(5), *out2;

    c.out = zvec(20);
    c.inp = rvec(24, 1.0f);
    c.w = rvec(30, 1.0f);
    c.b = rvec(5, 1.0f);
    c.R = rvec(20, 1.0f);
    cm_matmul_backward(din, dw, db, c.R, c.inp, c.w, c.N, c.C, c.OC);
    gradcheck(mm_loss, &c, c.inp, din, 24, "dinp");
    gradcheck(mm_loss, &c, c.w, dw, 30, "dweight");
    gradcheck(mm_loss, &c, c.b, db, 5, "dbias");
    /* SGEMM kernels equal the plain loops */
    out2 = zvec(20);
    cm_matmul_forward(c.out, c.inp, c.w, c.b, c.N, c.C, c.OC);
    cm_matmul_forward_ref(out2, c.inp, c.w, c.b, c.N, c.C, c.OC);
    assert_close(c.out, out2, 20, 1e-5f, 1e-5f, "out");
    cm_matmul_backward_ref(din2, dw2, db2, c.R, c.inp, c.w, c.N, c.C, c.OC);
    assert_close(din, din2, 24, 1e-5f, 1e-5f, "dinp");
    assert_close(dw, dw2, 30, 1e-5f, 1e-5f, "dweight");
    assert_close(db, db2, 5, 1e-5f, 1e-5f, "dbias");
    free(din); free(dw); free(db); free(din2); free(dw2); free(db2);
    free(out2); free(c.out); free(c.inp); free(c.w); free(c.b); free(c.R);
}


/* ---- attention ---- */

typedef struct {
    int    B, T, C, NH, ref;
    float *out, *pre, *att, *inp, *R;
} at_ctx_t;


static double
at_loss(void *p)
{
    at_ctx_t *c = p;

    (c->ref ? cm_attention_forward_ref : cm_attention_forward)(c->out,
        c->pre, c->att, c->inp, c->B, c->T, c->C, c->NH);
    return dotd(c->out, c->R, (size_t) c->B * c->T * c->C);
}


static void
test_attention_backward_matches_finite_differences_and_reference(void **st)
{
    at_ctx_t  c = { 2, 5, 8, 2, 0, NULL, NULL, NULL, NULL, NULL };
    size_t    nin = 2 * 5 * 24, nout = 2 * 5 * 8, natt = 2 * 2 * 25;
    float    *din = zvec(nin), *dpre = zvec(natt), *datt = zvec(natt);
    float    *din2 = zvec(nin), *out2 = zvec(nout), *att2 = zvec(natt);
    float    *pre2 = zvec(natt);
    int       ref;

    c.out = zvec(nout);
    c.pre = zvec(natt);
    c.att = zvec(natt);
    c.inp = rvec(nin, 1.0f);
    c.R = rvec(nout, 1.0f);
    for (ref = 0; ref < 2; ref++) {
        c.ref = ref;
        memset(din, 0, nin * sizeof(float));
        at_loss(&c);
        (ref ? cm_attention_backward_ref : cm_attention_backward)(din, dpre,
            datt, c.R, c.inp, c.att, c.B, c.T, c.C, c.NH);
        gradcheck(at_loss, &c, c.inp, din, nin, ref ? "ref dinp" : "dinp");
    }
    cm_attention_forward(c.out, c.pre, c.att, c.inp, 2, 5, 8, 2);
    cm_attention_forward_ref(out2, pre2, att2, c.inp, 2, 5, 8, 2);
    assert_close(c.out, out2, nout, 1e-5f, 1e-4f, "out");
    assert_close(c.att, att2, natt, 1e-6f, 1e-4f, "att");
    memset(din, 0, nin * sizeof(float));
    cm_attention_backward(din, dpre, datt, c.R, c.inp, c.att, 2, 5, 8, 2);
    cm_attention_backward_ref(din2, dpre, datt, c.R, c.inp, c.att, 2, 5, 8,
                              2);
    assert_close(din, din2, nin, 1e-5f, 1e-4f, "dinp");
    free(din); free(dpre); free(datt); free(din2); free(out2); free(att2);
    free(pre2); free(c.out); free(c.pre); free(c.att); free(c.inp);
    free(c.R);
}


/* ---- gelu, softmax + cross-entropy, encoder ---- */

typedef struct {
    size_t  n;
    float  *out, *inp, *R;
} ge_ctx_t;


static double
ge_loss(void *p)
{
    ge_ctx_t *c = p;

    cm_gelu_forward(c->out, c->inp, c->n);
    return dotd(c->out, c->R, c->n);
}


typedef struct {
    int    N, V, Vp;
    int   *targets;
    float *logits, *probs, *losses;
} ce_ctx_t;


static double
ce_loss(void *p)
{
    ce_ctx_t *c = p;
    double    s = 0.0;
    int       i;

    cm_softmax_forward(c->probs, c->logits, c->N, c->V, c->Vp);
    cm_crossentropy_forward(c->losses, c->probs, c->targets, c->N, c->Vp);
    for (i = 0; i < c->N; i++) {
        s += c->losses[i];
    }
    return s;
}


static void
test_gelu_and_softmax_crossentropy_backward_match_finite_differences(
    void **state)
{
    ge_ctx_t  g = { 40, NULL, NULL, NULL };
    float    *dg = zvec(40), *dl, *ones;
    int       targets[3] = { 0, 4, 6 };
    ce_ctx_t  c = { 3, 7, 8, targets, NULL, NULL, NULL };

    g.out = zvec(40);
    g.inp = rvec(40, 3.0f);
    g.R = rvec(40, 1.0f);
    cm_gelu_backward(dg, g.inp, g.R, 40);
    gradcheck(ge_loss, &g, g.inp, dg, 40, "gelu dinp");

    c.logits = rvec(24, 2.0f);
    c.probs = zvec(24);
    c.losses = zvec(3);
    dl = zvec(24);
    ones = zvec(3);
    ones[0] = ones[1] = ones[2] = 1.0f;
    ce_loss(&c);
    cm_crossentropy_softmax_backward(dl, ones, c.probs, targets, 3, 7, 8);
    gradcheck(ce_loss, &c, c.logits, dl, 24, "dlogits");
    /* the padded column gets neither probability nor gradient */
    assert_true(c.probs[7] == 0.0f && dl[7] == 0.0f);
    free(dg); free(g.out); free(g.inp); free(g.R);
    free(c.logits); free(c.probs); free(c.losses); free(dl); free(ones);
}


static void
test_encoder_backward_accumulates_into_used_rows_only(void **state)
{
    int    inp[4] = { 2, 0, 2, 1 };
    float *wte = rvec(4 * 3, 1.0f), *wpe = rvec(2 * 3, 1.0f);
    float *out = zvec(12), *dwte = zvec(12), *dwpe = zvec(6);
    float  dout[12];
    int    i;

    for (i = 0; i < 12; i++) {
        dout[i] = (float) (i + 1);
    }
    cm_encoder_forward(out, inp, wte, wpe, 2, 2, 3);
    assert_float_equal(out[3], wte[0] + wpe[3], 1e-6);
    cm_encoder_backward(dwte, dwpe, dout, inp, 2, 2, 3);
    /* token 2 at (b0,t0) and (b1,t0): rows 1..3 and 7..9 */
    assert_float_equal(dwte[6], 1.0f + 7.0f, 1e-6);
    assert_float_equal(dwte[9], 0.0f, 1e-6);    /* token 3 unused */
    assert_float_equal(dwpe[0], 1.0f + 7.0f, 1e-6);
    free(wte); free(wpe); free(out); free(dwte); free(dwpe);
}


/* ---- whole model ---- */

static cm_gpt_config_t
tiny_cfg(void)
{
    cm_gpt_config_t c = { 8, 37, 128, 2, 2, 16 };

    return c;
}


static void
test_model_gradients_match_finite_differences(void **state)
{
    cm_gpt_t         m;
    cm_gpt_config_t  cfg = tiny_cfg();
    int              inp[10], tgt[10], i, k;
    float          **pp, *g;
    double           lp, lm, num;
    float            eps = 1e-2f, keep;
    size_t           off = 0, j, idx;

    assert_int_equal(cm_gpt_init(&m, &cfg, 3), CM_OK);
    for (i = 0; i < 10; i++) {
        inp[i] = (i * 7) % 37;
        tgt[i] = (i * 11 + 3) % 37;
    }
    assert_int_equal(cm_gpt_forward(&m, inp, tgt, 2, 5), CM_OK);
    cm_gpt_zero_grad(&m);
    assert_int_equal(cm_gpt_backward(&m, 1.0f), CM_OK);
    (void) pp;
    /* in every tensor, the 3 largest-gradient entries */
    for (k = 0; k < CM_GPT_NPARAMS; k++) {
        size_t n = m.param_sizes[k];

        g = m.grads_memory + off;
        for (i = 0; i < 3; i++) {
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
            cm_gpt_forward(&m, inp, tgt, 2, 5);
            lp = m.mean_loss;
            m.params_memory[off + idx] = keep - eps;
            cm_gpt_forward(&m, inp, tgt, 2, 5);
            lm = m.mean_loss;
            m.params_memory[off + idx] = keep;
            num = (lp - lm) / (2.0 * eps);
            if (fabs(num - g[idx]) > 1e-3 + 5e-2 * fabs(num)) {
                fail_msg("param tensor %d [%zu]: analytic %g numeric %g", k,
                         idx, (double) g[idx], num);
            }
            g[idx] = 0.0f;   /* next largest */
        }
        off += n;
    }
    cm_gpt_free(&m);
}


static void
test_sgemm_model_equals_plain_loop_reference(void **state)
{
    cm_gpt_t         a, b;
    cm_gpt_config_t  cfg = tiny_cfg();
    int              inp[16], tgt[16], i;

    assert_int_equal(cm_gpt_init(&a, &cfg, 9), CM_OK);
    assert_int_equal(cm_gpt_init(&b, &cfg, 9), CM_OK);
    b.use_ref = 1;
    for (i = 0; i < 16; i++) {
        inp[i] = (i * 5) % 37;
        tgt[i] = (i * 3 + 1) % 37;
    }
    assert_int_equal(cm_gpt_forward(&a, inp, tgt, 2, 8), CM_OK);
    assert_int_equal(cm_gpt_forward(&b, inp, tgt, 2, 8), CM_OK);
    assert_float_equal(a.mean_loss, b.mean_loss, 1e-5);
    cm_gpt_zero_grad(&a);
    cm_gpt_zero_grad(&b);
    cm_gpt_backward(&a, 1.0f);
    cm_gpt_backward(&b, 1.0f);
    assert_close(a.grads_memory, b.grads_memory, a.num_parameters, 1e-6f,
                 1e-3f, "grads");
    cm_gpt_free(&a);
    cm_gpt_free(&b);
}


static void
test_model_overfits_one_batch(void **state)
{
    cm_gpt_t         m;
    cm_gpt_config_t  cfg;
    int              inp[32], tgt[32], i, step;
    float            first = 0.0f;
    cm_adamw_t       o = { 3e-3f, 0.9f, 0.95f, 1e-8f, 0.0f, 0 };

    assert_int_equal(cm_gpt_config_named("dialog-tiny", 64, &cfg), CM_OK);
    assert_int_equal(cm_gpt_init(&m, &cfg, 1), CM_OK);
    for (i = 0; i < 32; i++) {
        inp[i] = (i * 13 + 5) % 64;
        tgt[i] = (i * 29 + 7) % 64;
    }
    for (step = 1; step <= 60; step++) {
        assert_int_equal(cm_gpt_forward(&m, inp, tgt, 2, 16), CM_OK);
        if (step == 1) {
            first = m.mean_loss;
            /* untrained: close to uniform, ln 64 = 4.16 */
            assert_true(fabsf(first - logf(64.0f)) < 0.3f);
        }
        cm_gpt_zero_grad(&m);
        assert_int_equal(cm_gpt_backward(&m, 1.0f), CM_OK);
        cm_gpt_clip_grad(&m, 1.0f);
        o.step = step;
        assert_int_equal(cm_gpt_update(&m, &o), CM_OK);
    }
    assert_true(m.mean_loss < 0.2f * first);
    cm_gpt_free(&m);
}


static void
test_checkpoint_header_is_llmc_field_by_field_and_round_trips(void **state)
{
    cm_gpt_t         m, n;
    cm_gpt_config_t  cfg = tiny_cfg();
    char             path[] = "/tmp/cm_gpt_XXXXXX", err[256];
    int32_t          h[256];
    int              fd, inp[4] = { 1, 2, 3, 4 }, i;
    FILE            *f;
    float           *logits;
    size_t           nl;

    fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(cm_gpt_init(&m, &cfg, 5), CM_OK);
    assert_int_equal(cm_gpt_save(&m, path, err, sizeof(err)), CM_OK);
    f = fopen(path, "rb");
    assert_non_null(f);
    assert_int_equal(fread(h, 4, 256, f), 256);
    fseek(f, 0, SEEK_END);
    assert_int_equal(ftell(f), 1024 + 4 * (long) m.num_parameters);
    fclose(f);
    assert_int_equal(h[0], 20240326);
    assert_int_equal(h[1], 3);
    assert_int_equal(h[2], 8);      /* maxT */
    assert_int_equal(h[3], 37);     /* V */
    assert_int_equal(h[4], 2);      /* L */
    assert_int_equal(h[5], 2);      /* NH */
    assert_int_equal(h[6], 16);     /* C */
    assert_int_equal(h[7], 128);    /* Vp */
    for (i = 8; i < 256; i++) {
        assert_int_equal(h[i], 0);
    }
    assert_int_equal(cm_gpt_load(&n, path, err, sizeof(err)), CM_OK);
    assert_int_equal(cm_gpt_forward(&m, inp, NULL, 1, 4), CM_OK);
    assert_int_equal(cm_gpt_forward(&n, inp, NULL, 1, 4), CM_OK);
    nl = 4 * 128;
    logits = m.acts.logits;
    assert_memory_equal(logits, n.acts.logits, nl * sizeof(float));
    unlink(path);
    cm_gpt_free(&m);
    cm_gpt_free(&n);
}


static void
damage(const char *src, const char *dst, long off, const void *bytes,
    size_t n, long truncate_to)
{
    FILE  *f = fopen(src, "rb"), *g;
    char   buf[65536];
    size_t k;
    long   total = 0;

    assert_non_null(f);
    g = fopen(dst, "wb");
    assert_non_null(g);
    while ((k = fread(buf, 1, sizeof(buf), f)) > 0) {
        if (truncate_to >= 0 && total + (long) k > truncate_to) {
            k = (size_t) (truncate_to - total);
        }
        fwrite(buf, 1, k, g);
        total += (long) k;
        if (truncate_to >= 0 && total >= truncate_to) {
            break;
        }
    }
    fclose(f);
    if (bytes != NULL) {
        fseek(g, off, SEEK_SET);
        fwrite(bytes, 1, n, g);
    }
    fclose(g);
}


static void
test_loader_rejects_damaged_checkpoints(void **state)
{
    cm_gpt_t         m, n;
    cm_gpt_config_t  cfg = tiny_cfg();
    char             path[] = "/tmp/cm_gpt_XXXXXX", bad[64], err[256];
    int32_t          v;
    float            nan = NAN;
    int              fd;

    fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    snprintf(bad, sizeof(bad), "%s.bad", path);
    assert_int_equal(cm_gpt_init(&m, &cfg, 5), CM_OK);
    assert_int_equal(cm_gpt_save(&m, path, err, sizeof(err)), CM_OK);

    v = 20240327;
    damage(path, bad, 0, &v, 4, -1);
    assert_int_equal(cm_gpt_load(&n, bad, err, sizeof(err)), CM_EFORMAT);
    assert_non_null(strstr(err, "magic"));
    v = 5;     /* bf16 */
    damage(path, bad, 4, &v, 4, -1);
    assert_int_equal(cm_gpt_load(&n, bad, err, sizeof(err)), CM_EFORMAT);
    assert_non_null(strstr(err, "version 5"));
    damage(path, bad, 0, NULL, 0, 1024 + 100);
    assert_int_equal(cm_gpt_load(&n, bad, err, sizeof(err)), CM_EFORMAT);
    v = 3;     /* C not divisible by NH */
    damage(path, bad, 6 * 4, &v, 4, -1);
    assert_int_equal(cm_gpt_load(&n, bad, err, sizeof(err)), CM_EFORMAT);
    v = 64;    /* Vp < V */
    damage(path, bad, 7 * 4, &v, 4, -1);
    assert_int_equal(cm_gpt_load(&n, bad, err, sizeof(err)), CM_EFORMAT);
    damage(path, bad, 1024 + 40, &nan, 4, -1);
    assert_int_equal(cm_gpt_load(&n, bad, err, sizeof(err)), CM_EFORMAT);
    assert_non_null(strstr(err, "not finite"));
    damage(path, bad, 0, NULL, 0, 10);
    assert_int_equal(cm_gpt_load(&n, bad, err, sizeof(err)), CM_EFORMAT);
    assert_int_equal(cm_gpt_load(&n, "/nonexistent/x.bin", err, sizeof(err)),
                     CM_ENOTFOUND);
    unlink(bad);
    unlink(path);
    cm_gpt_free(&m);
}


static void
test_named_configs_have_expected_shapes(void **state)
{
    cm_gpt_config_t  c;
    size_t           sizes[CM_GPT_NPARAMS];

    assert_int_equal(cm_gpt_config_named("gpt2-124M", 0, &c), CM_OK);
    assert_int_equal(c.padded_vocab_size, 50304);
    /* llm.c prints num_parameters: 124475904 for this shape */
    assert_int_equal(cm_gpt_param_sizes(&c, sizes), 124475904);
    assert_int_equal(cm_gpt_config_named("dialog-small", 0, &c), CM_OK);
    assert_int_equal(c.num_layers, 6);
    assert_int_equal(c.channels, 384);
    assert_int_equal(c.max_seq_len, 256);
    assert_int_equal(c.vocab_size, 8192);
    assert_int_equal(cm_gpt_config_named("dialog-tiny", 300, &c), CM_OK);
    assert_int_equal(c.padded_vocab_size, 384);
    assert_int_equal(cm_gpt_config_named("nope", 0, &c), CM_EINVAL);
}


static void
test_cosine_schedule_warms_up_then_decays_to_min(void **state)
{
    assert_float_equal(cm_lr_cosine(0, 10, 100, 1.0f, 0.1f), 0.1f, 1e-6);
    assert_float_equal(cm_lr_cosine(9, 10, 100, 1.0f, 0.1f), 1.0f, 1e-6);
    assert_float_equal(cm_lr_cosine(10, 10, 100, 1.0f, 0.1f), 1.0f, 1e-6);
    assert_float_equal(cm_lr_cosine(55, 10, 100, 1.0f, 0.1f), 0.55f, 1e-5);
    assert_float_equal(cm_lr_cosine(100, 10, 100, 1.0f, 0.1f), 0.1f, 1e-6);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layernorm_backward_matches_finite_differences),
        cmocka_unit_test(
            test_matmul_backward_matches_finite_differences_and_reference),
        cmocka_unit_test(
            test_attention_backward_matches_finite_differences_and_reference),
        cmocka_unit_test(
            test_gelu_and_softmax_crossentropy_backward_match_finite_differences),
        cmocka_unit_test(test_encoder_backward_accumulates_into_used_rows_only),
        cmocka_unit_test(test_model_gradients_match_finite_differences),
        cmocka_unit_test(test_sgemm_model_equals_plain_loop_reference),
        cmocka_unit_test(test_model_overfits_one_batch),
        cmocka_unit_test(
            test_checkpoint_header_is_llmc_field_by_field_and_round_trips),
        cmocka_unit_test(test_loader_rejects_damaged_checkpoints),
        cmocka_unit_test(test_named_configs_have_expected_shapes),
        cmocka_unit_test(test_cosine_schedule_warms_up_then_decays_to_min),
    };

    return cmocka_run_group_tests_name("gpt", tests, NULL, NULL);
}

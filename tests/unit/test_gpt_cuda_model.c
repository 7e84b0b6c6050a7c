/*
 * test_gpt_cuda_model.c: the resident CUDA GPT (gpt_cuda.h, cm_gpt_cuda_*)
 * against the CPU model (gpt.c) on dialog-tiny shapes from the same random
 * init: loss, logits, every gradient tensor, the parameters and moments
 * after 3 clipped AdamW steps, and KV-cache prefill / batched decode
 * logits against full CPU forwards.
 *
 * Where no GPU answers (or the build has no CUDA: the stubs) the tests
 * check that the backend says so (CM_ENOTFOUND, a message) and report
 * themselves skipped.
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
#include "cinematch/gpt_cuda.h"

#define TB 2                 /* batch rows */
#define TT 16                /* sequence length */

static const char *pnames[CM_GPT_NPARAMS] = {
    "wte", "wpe", "ln1w", "ln1b", "qkvw", "qkvb", "attprojw", "attprojb",
    "ln2w", "ln2b", "fcw", "fcb", "fcprojw", "fcprojb", "lnfw", "lnfb"
};


static int
gpu_or_skip(void)
{
    char            err[256] = "";
    cm_gpt_config_t cfg;
    cm_gpt_cuda_t  *g = NULL;

    if (cm_cuda_device_count(err, sizeof(err)) > 0) {
        return 1;
    }
    /* the no-GPU contract: creating a device model says why, never crashes */
    assert_int_equal(cm_gpt_config_named("dialog-tiny", 0, &cfg), CM_OK);
    err[0] = '\0';
    assert_int_equal(cm_gpt_cuda_create(&g, &cfg, TB, TT, err, sizeof(err)),
                     CM_ENOTFOUND);
    assert_null(g);
    assert_true(err[0] != '\0');
    print_message("SKIPPED: no GPU (%s)\n", err);
    skip();
    return 0;
}


static void
close_enough(const float *gpu, const float *cpu, size_t n, float tol,
    const char *what)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (!(fabsf(gpu[i] - cpu[i]) <= tol * (1.0f + fabsf(cpu[i])))) {
            fail_msg("%s[%zu]: gpu %g cpu %g", what, i, (double) gpu[i],
                     (double) cpu[i]);
        }
    }
}


/* tensor by tensor, the error relative to the tensor's largest magnitude
 * (sums of many terms in another order: atomics, cuBLAS blocking) */
static void
tensors_close(const cm_gpt_t *m, const float *gpu, const float *cpu,
    float tol, const char *what)
{
    size_t k, i, off = 0;

    for (k = 0; k < CM_GPT_NPARAMS; k++) {
        size_t n = m->param_sizes[k];
        float  mx = 0.0f;

        for (i = 0; i < n; i++) {
            mx = fmaxf(mx, fabsf(cpu[off + i]));
        }
        for (i = 0; i < n; i++) {
            float d = fabsf(gpu[off + i] - cpu[off + i]);

            if (!(d <= tol * mx + 1e-7f)) {
                fail_msg("%s %s[%zu]: gpu %g cpu %g (tensor max %g)", what,
                         pnames[k], i, (double) gpu[off + i],
                         (double) cpu[off + i], (double) mx);
            }
        }
        off += n;
    }
}


/* after AdamW: m/sqrt(v) is sign-sensitive where a gradient is ~0, so a
 * few elements may differ by up to 2 lr per step; everything else close */
static void
params_close(const cm_gpt_t *m, const float *gpu, const float *cpu,
    float lr, int steps)
{
    size_t k, i, off = 0, bad;

    for (k = 0; k < CM_GPT_NPARAMS; k++) {
        size_t n = m->param_sizes[k];

        bad = 0;
        for (i = 0; i < n; i++) {
            float d = fabsf(gpu[off + i] - cpu[off + i]);

            if (!(d <= 2.0f * lr * (float) steps + 1e-6f)) {
                fail_msg("params %s[%zu]: gpu %g cpu %g", pnames[k], i,
                         (double) gpu[off + i], (double) cpu[off + i]);
            }
            if (d > 1e-5f + 1e-4f * fabsf(cpu[off + i])) {
                bad++;
            }
        }
        if (bad > 2 + n / 500) {
            fail_msg("params %s: %zu of %zu elements differ", pnames[k], bad,
                     n);
        }
        off += n;
    }
}


static void
fill_batch(int *inp, int *tgt, int n, int V, int salt)
{
    int i;

    for (i = 0; i < n; i++) {
        inp[i] = (i * 37 + salt * 11 + 5) % V;
        tgt[i] = (i * 53 + salt * 7 + 1) % V;
    }
}


static void
test_resident_training_matches_cpu_model(void **state)
{
    cm_gpt_config_t  cfg;
    cm_gpt_t         m;
    cm_gpt_cuda_t   *g = NULL;
    cm_adamw_t       o;
    char             err[256] = "";
    int              inp[TB * TT], tgt[TB * TT], s, V, Vp;
    float           *buf, loss_gpu, norm_gpu, norm_cpu;
    size_t           P, nl;

    if (!gpu_or_skip()) {
        return;
    }
    assert_int_equal(cm_gpt_config_named("dialog-tiny", 0, &cfg), CM_OK);
    assert_int_equal(cm_gpt_init(&m, &cfg, 7), CM_OK);
    V = cfg.vocab_size;
    Vp = cfg.padded_vocab_size;
    P = m.num_parameters;
    nl = (size_t) TB * TT * Vp;
    assert_int_equal(cm_gpt_cuda_create(&g, &cfg, TB, TT, err, sizeof(err)),
                     CM_OK);
    assert_int_equal(cm_gpt_cuda_upload(g, &m), CM_OK);
    buf = malloc((P > nl ? P : nl) * sizeof(float));
    assert_non_null(buf);

    /* the uploaded parameters read back bit for bit */
    assert_int_equal(cm_gpt_cuda_read(g, CM_GPT_CUDA_PARAMS, buf, P), CM_OK);
    assert_memory_equal(buf, m.params_memory, P * sizeof(float));

    /* forward: loss and logits */
    fill_batch(inp, tgt, TB * TT, V, 0);
    assert_int_equal(cm_gpt_forward(&m, inp, tgt, TB, TT), CM_OK);
    assert_int_equal(cm_gpt_cuda_forward(g, inp, tgt, TB, TT, &loss_gpu),
                     CM_OK);
    print_message("loss cpu %.6f gpu %.6f\n", (double) m.mean_loss,
                  (double) loss_gpu);
    assert_true(fabsf(loss_gpu - m.mean_loss) <= 1e-4f * m.mean_loss);
    assert_int_equal(cm_gpt_cuda_read(g, CM_GPT_CUDA_LOGITS, buf, nl), CM_OK);
    close_enough(buf, m.acts.logits, nl, 1e-3f, "logits");
    assert_int_equal(cm_gpt_cuda_read(g, CM_GPT_CUDA_PROBS, buf, nl), CM_OK);
    close_enough(buf, m.acts.probs, nl, 1e-3f, "probs");

    /* backward: every gradient tensor */
    cm_gpt_zero_grad(&m);
    assert_int_equal(cm_gpt_backward(&m, 1.0f), CM_OK);
    assert_int_equal(cm_gpt_cuda_zero_grad(g), CM_OK);
    assert_int_equal(cm_gpt_cuda_backward(g, 1.0f), CM_OK);
    assert_int_equal(cm_gpt_cuda_read(g, CM_GPT_CUDA_GRADS, buf, P), CM_OK);
    tensors_close(&m, buf, m.grads_memory, 2e-3f, "grads");

    /* 3 AdamW steps with clipping (a max norm below the real one, so the
     * scaling runs), new batches each step */
    memset(&o, 0, sizeof(o));
    o.lr = 1e-2f;
    o.beta1 = 0.9f;
    o.beta2 = 0.95f;
    o.eps = 1e-8f;
    o.weight_decay = 0.1f;
    for (s = 0; s < 3; s++) {
        fill_batch(inp, tgt, TB * TT, V, s + 1);
        assert_int_equal(cm_gpt_forward(&m, inp, tgt, TB, TT), CM_OK);
        cm_gpt_zero_grad(&m);
        assert_int_equal(cm_gpt_backward(&m, 1.0f), CM_OK);
        norm_cpu = cm_gpt_clip_grad(&m, 0.05f);
        assert_int_equal(cm_gpt_cuda_forward(g, inp, tgt, TB, TT, &loss_gpu),
                         CM_OK);
        assert_true(fabsf(loss_gpu - m.mean_loss) <= 1e-3f * m.mean_loss);
        assert_int_equal(cm_gpt_cuda_zero_grad(g), CM_OK);
        assert_int_equal(cm_gpt_cuda_backward(g, 1.0f), CM_OK);
        assert_int_equal(cm_gpt_cuda_clip_grad(g, 0.05f, &norm_gpu), CM_OK);
        print_message("step %d: norm cpu %.6f gpu %.6f\n", s + 1,
                      (double) norm_cpu, (double) norm_gpu);
        assert_true(fabsf(norm_gpu - norm_cpu) <= 1e-3f * norm_cpu);
        assert_true(norm_cpu > 0.05f);
        o.step = s + 1;
        assert_int_equal(cm_gpt_update(&m, &o), CM_OK);
        assert_int_equal(cm_gpt_cuda_update(g, &o), CM_OK);
    }
    assert_int_equal(cm_gpt_cuda_read(g, CM_GPT_CUDA_ADAM_M, buf, P), CM_OK);
    tensors_close(&m, buf, m.m_memory, 5e-3f, "adam m");
    assert_int_equal(cm_gpt_cuda_read(g, CM_GPT_CUDA_ADAM_V, buf, P), CM_OK);
    tensors_close(&m, buf, m.v_memory, 5e-3f, "adam v");
    assert_int_equal(cm_gpt_cuda_read(g, CM_GPT_CUDA_PARAMS, buf, P), CM_OK);
    params_close(&m, buf, m.params_memory, o.lr, 3);

    /* download: the CPU model now holds what the GPU trained */
    {
        cm_gpt_t m2;

        assert_int_equal(cm_gpt_init(&m2, &cfg, 99), CM_OK);
        assert_int_equal(cm_gpt_cuda_download(g, &m2), CM_OK);
        assert_memory_equal(m2.params_memory, buf, P * sizeof(float));
        assert_non_null(m2.m_memory);
        cm_gpt_free(&m2);
    }
    /* backward without a forward with targets is refused */
    assert_int_equal(cm_gpt_cuda_forward(g, inp, NULL, TB, TT, &loss_gpu),
                     CM_OK);
    assert_true(loss_gpu < 0.0f);
    assert_int_equal(cm_gpt_cuda_backward(g, 1.0f), CM_EINVAL);
    /* shapes beyond what was allocated are refused */
    assert_int_equal(cm_gpt_cuda_forward(g, inp, tgt, TB + 1, TT, &loss_gpu),
                     CM_EINVAL);

    free(buf);
    cm_gpt_cuda_free(g);
    cm_gpt_free(&m);
}


/* logits of the last row of a full CPU forward over seq[0..n) */
static void
cpu_last_logits(cm_gpt_t *m, const int *seq, int n, float *out)
{
    int Vp = m->config.padded_vocab_size, V = m->config.vocab_size;

    assert_int_equal(cm_gpt_forward(m, seq, NULL, 1, n), CM_OK);
    memcpy(out, m->acts.logits + (size_t) (n - 1) * Vp, V * sizeof(float));
}


static void
test_kv_decode_matches_full_cpu_forward(void **state)
{
    cm_gpt_config_t   cfg;
    cm_gpt_t          m;
    cm_gpt_cuda_t    *g = NULL;
    cm_gpt_cuda_kv_t *kv = NULL;
    char              err[256] = "";
    int               a[24], b[24], i, V, slots[2], toks[2];
    float            *gl, *cl;

    if (!gpu_or_skip()) {
        return;
    }
    assert_int_equal(cm_gpt_config_named("dialog-tiny", 0, &cfg), CM_OK);
    assert_int_equal(cm_gpt_init(&m, &cfg, 11), CM_OK);
    V = cfg.vocab_size;
    for (i = 0; i < 24; i++) {
        a[i] = (i * 29 + 3) % V;
        b[i] = (i * 71 + 100) % V;
    }
    assert_int_equal(cm_gpt_cuda_create(&g, &cfg, 1, 8, err, sizeof(err)),
                     CM_OK);
    assert_int_equal(cm_gpt_cuda_upload(g, &m), CM_OK);
    assert_int_equal(cm_gpt_cuda_kv_create(&kv, g, 2), CM_OK);
    gl = malloc(2 * (size_t) V * sizeof(float));
    cl = malloc((size_t) V * sizeof(float));
    assert_non_null(gl);
    assert_non_null(cl);

    /* prefill two slots with prompts of different lengths */
    assert_int_equal(cm_gpt_cuda_prefill(kv, 0, a, 10, gl), CM_OK);
    cpu_last_logits(&m, a, 10, cl);
    close_enough(gl, cl, (size_t) V, 1e-3f, "prefill slot 0");
    assert_int_equal(cm_gpt_cuda_prefill(kv, 1, b, 7, gl), CM_OK);
    cpu_last_logits(&m, b, 7, cl);
    close_enough(gl, cl, (size_t) V, 1e-3f, "prefill slot 1");
    assert_int_equal(cm_gpt_cuda_kv_pos(kv, 0), 10);
    assert_int_equal(cm_gpt_cuda_kv_pos(kv, 1), 7);

    /* batched decode, slots in the other order, several steps */
    for (i = 0; i < 4; i++) {
        slots[0] = 1;
        slots[1] = 0;
        toks[0] = b[7 + i];
        toks[1] = a[10 + i];
        assert_int_equal(cm_gpt_cuda_decode(kv, slots, toks, 2, gl), CM_OK);
        cpu_last_logits(&m, b, 8 + i, cl);
        close_enough(gl, cl, (size_t) V, 1e-3f, "decode slot 1");
        cpu_last_logits(&m, a, 11 + i, cl);
        close_enough(gl + V, cl, (size_t) V, 1e-3f, "decode slot 0");
    }
    /* one slot alone, then a reset slot prefilled again */
    toks[0] = a[14];
    slots[0] = 0;
    assert_int_equal(cm_gpt_cuda_decode(kv, slots, toks, 1, gl), CM_OK);
    cpu_last_logits(&m, a, 15, cl);
    close_enough(gl, cl, (size_t) V, 1e-3f, "decode alone");
    assert_int_equal(cm_gpt_cuda_kv_reset(kv, 1), CM_OK);
    assert_int_equal(cm_gpt_cuda_prefill(kv, 1, a, 5, gl), CM_OK);
    cpu_last_logits(&m, a, 5, cl);
    close_enough(gl, cl, (size_t) V, 1e-3f, "prefill after reset");

    /* refusals: the same slot twice in a step, past maxT, bad ids */
    slots[0] = slots[1] = 0;
    toks[0] = toks[1] = 1;
    assert_int_equal(cm_gpt_cuda_decode(kv, slots, toks, 2, gl), CM_EINVAL);
    assert_int_equal(cm_gpt_cuda_prefill(kv, 0, a, cfg.max_seq_len, gl),
                     CM_EINVAL);
    toks[0] = V;
    assert_int_equal(cm_gpt_cuda_decode(kv, slots, toks, 1, gl), CM_EINVAL);

    free(gl);
    free(cl);
    cm_gpt_cuda_kv_free(kv);
    cm_gpt_cuda_free(g);
    cm_gpt_free(&m);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_resident_training_matches_cpu_model),
        cmocka_unit_test(test_kv_decode_matches_full_cpu_forward),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

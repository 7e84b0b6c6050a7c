/*
 * test_gpt_cuda.c: every CUDA kernel against its CPU reference (gpt.c).
 * Reports itself skipped when the build has no CUDA or no GPU answers
 * (cudaGetDeviceCount failing counts as "no GPU").
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
#ifdef CM_HAVE_CUDA
#include "cinematch/gpt_cuda.h"
#endif

#ifdef CM_HAVE_CUDA
static unsigned seed = 5;


static float *
rvec(size_t n, float scale)
{
    float  *v = malloc(n * sizeof(float));
    size_t  i;

    assert_non_null(v);
    for (i = 0; i < n; i++) {
        v[i] = ((float) rand_r(&seed) / (float) RAND_MAX * 2.0f - 1.0f)
               * scale;
    }
    return v;
}


static void
close_enough(const float *a, const float *b, size_t n, float tol,
    const char *what)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (fabsf(a[i] - b[i]) > tol * (1.0f + fabsf(b[i]))) {
            fail_msg("%s[%zu]: gpu %g cpu %g", what, i, (double) a[i],
                     (double) b[i]);
        }
    }
}
#endif


static int
gpu_or_skip(void)
{
#ifdef CM_HAVE_CUDA
    char err[256] = "";

    if (cm_cuda_device_count(err, sizeof(err)) > 0) {
        return 1;
    }
    print_message("SKIPPED: no GPU (%s)\n", err);
#else
    print_message("SKIPPED: built without CUDA (no nvcc)\n");
#endif
    skip();
    return 0;
}


static void
test_cuda_kernels_match_cpu_reference(void **state)
{
#ifdef CM_HAVE_CUDA
    int     N = 37, C = 96, OC = 80, V = 500, Vp = 512;
    int     B = 2, T = 33, NH = 3;
    float  *inp, *w, *b, *o1, *o2, *m1, *m2, *r1, *r2, *big, *at1, *at2;
    float  *pre1, *pre2, *d1, *d2, *g, *p1, *p2, *mm1, *mm2, *vv1, *vv2;
    size_t  n, natt = (size_t) B * NH * T * T;

    if (!gpu_or_skip()) {
        return;
    }
    inp = rvec((size_t) N * C, 2.0f);
    w = rvec((size_t) OC * C, 1.0f);
    /* C entries: the layernorm reads C of it, the matmul OC < C (it had OC,
     * a heap overflow no GPU-less run could show; found by running this
     * file against CPU stand-ins under ASan) */
    b = rvec((size_t) C, 1.0f);
    o1 = calloc((size_t) N * Vp, sizeof(float));
    o2 = calloc((size_t) N * Vp, sizeof(float));
    m1 = calloc((size_t) N, sizeof(float));
    m2 = calloc((size_t) N, sizeof(float));
    r1 = calloc((size_t) N, sizeof(float));
    r2 = calloc((size_t) N, sizeof(float));

    assert_int_equal(cm_cuda_layernorm_forward(o1, m1, r1, inp, w, b, N, C),
                     CM_OK);
    cm_layernorm_forward(o2, m2, r2, inp, w, b, N, C);
    close_enough(o1, o2, (size_t) N * C, 1e-4f, "layernorm");
    close_enough(r1, r2, (size_t) N, 1e-4f, "rstd");

    assert_int_equal(cm_cuda_matmul_forward(o1, inp, w, b, N, C, OC), CM_OK);
    cm_matmul_forward_ref(o2, inp, w, b, N, C, OC);
    close_enough(o1, o2, (size_t) N * OC, 1e-4f, "matmul");

    n = (size_t) N * C;
    assert_int_equal(cm_cuda_gelu_forward(o1, inp, n), CM_OK);
    cm_gelu_forward(o2, inp, n);
    close_enough(o1, o2, n, 1e-5f, "gelu");
    d1 = rvec(n, 1.0f);
    d2 = malloc(n * sizeof(float));
    memcpy(d2, d1, n * sizeof(float));
    g = rvec(n, 1.0f);
    assert_int_equal(cm_cuda_gelu_backward(d1, inp, g, n), CM_OK);
    cm_gelu_backward(d2, inp, g, n);
    close_enough(d1, d2, n, 1e-5f, "gelu backward");

    big = rvec((size_t) N * Vp, 8.0f);
    assert_int_equal(cm_cuda_softmax_forward(o1, big, N, V, Vp), CM_OK);
    cm_softmax_forward(o2, big, N, V, Vp);
    close_enough(o1, o2, (size_t) N * Vp, 1e-5f, "softmax");

    free(big);
    big = rvec((size_t) B * T * 3 * C, 1.5f);
    at1 = calloc(natt, sizeof(float));
    at2 = calloc(natt, sizeof(float));
    pre1 = calloc(natt, sizeof(float));
    pre2 = calloc(natt, sizeof(float));
    free(o1);
    free(o2);
    o1 = calloc((size_t) B * T * C, sizeof(float));
    o2 = calloc((size_t) B * T * C, sizeof(float));
    assert_int_equal(cm_cuda_attention_forward(o1, pre1, at1, big, B, T, C,
                                               NH), CM_OK);
    cm_attention_forward_ref(o2, pre2, at2, big, B, T, C, NH);
    close_enough(at1, at2, natt, 1e-4f, "att");
    close_enough(o1, o2, (size_t) B * T * C, 1e-4f, "attention out");

    n = (size_t) OC * C;
    p1 = rvec(n, 1.0f);
    p2 = malloc(n * sizeof(float));
    memcpy(p2, p1, n * sizeof(float));
    mm1 = calloc(n, sizeof(float));
    mm2 = calloc(n, sizeof(float));
    vv1 = calloc(n, sizeof(float));
    vv2 = calloc(n, sizeof(float));
    assert_int_equal(cm_cuda_adamw(p1, w, mm1, vv1, n, 1e-2f, 0.9f, 0.95f,
                                   1e-8f, 0.1f, 3), CM_OK);
    cm_adamw_update(p2, w, mm2, vv2, n, 1e-2f, 0.9f, 0.95f, 1e-8f, 0.1f, 3);
    close_enough(p1, p2, n, 1e-5f, "adamw");

    free(inp); free(w); free(b); free(o1); free(o2); free(m1); free(m2);
    free(r1); free(r2); free(big); free(at1); free(at2); free(pre1);
    free(pre2); free(d1); free(d2); free(g); free(p1); free(p2); free(mm1);
    free(mm2); free(vv1); free(vv2);
#else
    gpu_or_skip();
#endif
}


/* the backward kernels (and cross-entropy): same inputs, same accumulation
 * targets pre-filled with the same random values on both sides */
static void
test_cuda_backward_kernels_match_cpu_reference(void **state)
{
#ifdef CM_HAVE_CUDA
    int     N = 37, C = 96, OC = 80, V = 500, Vp = 512, B = 2, T = 33, NH = 3;
    int     i, *tgt;
    size_t  nx = (size_t) N * C, natt = (size_t) B * NH * T * T;
    size_t  nq = (size_t) B * T * 3 * C;
    float  *inp, *w, *b, *mean, *rstd, *ln, *dout, *dx1, *dx2, *dw1, *dw2;
    float  *db1, *db2, *qkv, *att, *pre, *out, *dp1, *dp2, *da1, *da2;
    float  *dq1, *dq2, *logits, *probs, *l1, *l2, *dl1, *dl2, *dls, *dln;

    if (!gpu_or_skip()) {
        return;
    }
    inp = rvec(nx, 2.0f);
    w = rvec((size_t) OC * C, 1.0f);
    b = rvec((size_t) C, 1.0f);
    mean = calloc((size_t) N, sizeof(float));
    rstd = calloc((size_t) N, sizeof(float));
    ln = calloc(nx, sizeof(float));
    cm_layernorm_forward(ln, mean, rstd, inp, w, b, N, C);

    /* layernorm backward */
    dln = rvec(nx, 1.0f);
    dout = rvec((size_t) N * OC, 1.0f);
    dx1 = rvec(nx, 1.0f);
    dx2 = malloc(nx * sizeof(float));
    memcpy(dx2, dx1, nx * sizeof(float));
    dw1 = rvec((size_t) OC * C, 1.0f);
    dw2 = malloc((size_t) OC * C * sizeof(float));
    memcpy(dw2, dw1, (size_t) OC * C * sizeof(float));
    db1 = rvec((size_t) C, 1.0f);         /* C > OC: layernorm and matmul */
    db2 = malloc((size_t) C * sizeof(float));
    memcpy(db2, db1, (size_t) C * sizeof(float));
    assert_int_equal(cm_cuda_layernorm_backward(dx1, dw1, db1, dln, inp, w,
                                                mean, rstd, N, C), CM_OK);
    cm_layernorm_backward(dx2, dw2, db2, dln, inp, w, mean, rstd, N, C);
    close_enough(dx1, dx2, nx, 1e-4f, "layernorm dinp");
    close_enough(dw1, dw2, (size_t) C, 1e-4f, "layernorm dweight");
    close_enough(db1, db2, (size_t) C, 1e-4f, "layernorm dbias");

    /* matmul backward, accumulating into the same pre-filled buffers */
    memcpy(dx1, dx2, nx * sizeof(float));
    memcpy(dw1, dw2, (size_t) OC * C * sizeof(float));
    memcpy(db1, db2, (size_t) OC * sizeof(float));
    assert_int_equal(cm_cuda_matmul_backward(dx1, dw1, db1, dout, inp, w, N,
                                             C, OC), CM_OK);
    cm_matmul_backward_ref(dx2, dw2, db2, dout, inp, w, N, C, OC);
    close_enough(dx1, dx2, nx, 1e-4f, "matmul dinp");
    close_enough(dw1, dw2, (size_t) OC * C, 1e-4f, "matmul dweight");
    close_enough(db1, db2, (size_t) OC, 1e-4f, "matmul dbias");
    assert_int_equal(cm_cuda_matmul_backward(dx1, dw1, NULL, dout, inp, w, N,
                                             C, OC), CM_OK);

    /* attention backward */
    qkv = rvec(nq, 1.5f);
    att = calloc(natt, sizeof(float));
    pre = calloc(natt, sizeof(float));
    out = calloc((size_t) B * T * C, sizeof(float));
    cm_attention_forward_ref(out, pre, att, qkv, B, T, C, NH);
    free(dout);
    dout = rvec((size_t) B * T * C, 1.0f);
    dq1 = rvec(nq, 1.0f);
    dq2 = malloc(nq * sizeof(float));
    memcpy(dq2, dq1, nq * sizeof(float));
    dp1 = calloc(natt, sizeof(float));
    dp2 = calloc(natt, sizeof(float));
    da1 = calloc(natt, sizeof(float));
    da2 = calloc(natt, sizeof(float));
    assert_int_equal(cm_cuda_attention_backward(dq1, dp1, da1, dout, qkv, att,
                                                B, T, C, NH), CM_OK);
    cm_attention_backward_ref(dq2, dp2, da2, dout, qkv, att, B, T, C, NH);
    close_enough(da1, da2, natt, 1e-4f, "attention datt");
    close_enough(dp1, dp2, natt, 1e-4f, "attention dpreatt");
    close_enough(dq1, dq2, nq, 1e-4f, "attention dinp");

    /* cross-entropy forward and its fused softmax backward */
    logits = rvec((size_t) N * Vp, 6.0f);
    probs = calloc((size_t) N * Vp, sizeof(float));
    cm_softmax_forward(probs, logits, N, V, Vp);
    tgt = malloc((size_t) N * sizeof(int));
    for (i = 0; i < N; i++) {
        tgt[i] = (i * 131 + 7) % V;
    }
    l1 = calloc((size_t) N, sizeof(float));
    l2 = calloc((size_t) N, sizeof(float));
    assert_int_equal(cm_cuda_crossentropy_forward(l1, probs, tgt, N, Vp),
                     CM_OK);
    cm_crossentropy_forward(l2, probs, tgt, N, Vp);
    close_enough(l1, l2, (size_t) N, 1e-5f, "crossentropy");
    dls = rvec((size_t) N, 1.0f);
    dl1 = rvec((size_t) N * Vp, 1.0f);
    dl2 = malloc((size_t) N * Vp * sizeof(float));
    memcpy(dl2, dl1, (size_t) N * Vp * sizeof(float));
    assert_int_equal(cm_cuda_crossentropy_softmax_backward(dl1, dls, probs,
                                                           tgt, N, V, Vp),
                     CM_OK);
    cm_crossentropy_softmax_backward(dl2, dls, probs, tgt, N, V, Vp);
    close_enough(dl1, dl2, (size_t) N * Vp, 1e-5f, "crossentropy dlogits");

    free(inp); free(w); free(b); free(mean); free(rstd); free(ln);
    free(dout); free(dx1); free(dx2); free(dw1); free(dw2); free(db1);
    free(db2); free(qkv); free(att); free(pre); free(out); free(dq1);
    free(dq2); free(dp1); free(dp2); free(da1); free(da2); free(logits);
    free(probs); free(tgt); free(l1); free(l2); free(dls); free(dl1);
    free(dl2); free(dln);
#else
    gpu_or_skip();
#endif
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cuda_kernels_match_cpu_reference),
        cmocka_unit_test(test_cuda_backward_kernels_match_cpu_reference),
    };

    return cmocka_run_group_tests_name("gpt_cuda", tests, NULL, NULL);
}

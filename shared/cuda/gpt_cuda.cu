/*
 * gpt_cuda.cu: the resident CUDA backend of the GPT (see gpt_cuda.h).
 *
 * The device model mirrors cm_gpt_t: one device allocation holds the
 * parameters, gradients and AdamW moments (4 x num_parameters, each carved
 * by cm_gpt_param_sizes in the llm.c order) and the activations and their
 * gradients (2 x num_activations, carved by cm_gpt_act_sizes), so every
 * offset below is the one gpt.c uses on the CPU; cm_gpt_forward and
 * cm_gpt_backward are followed line by line.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

extern "C" {
#include "cinematch/gpt.h"
}
#include "gpt_kernels.cuh"
#include "cinematch/gpt_cuda.h"


struct cm_gpt_cuda_s {
    cm_gpt_config_t   cfg;
    cublasHandle_t    blas;
    size_t            param_sizes[CM_GPT_NPARAMS];
    size_t            num_parameters;
    size_t            act_sizes[CM_GPT_NACTS];
    size_t            num_activations;
    int               Bmax, Tmax;       /* activations sized for these */
    float            *mem;              /* the one float allocation */
    float            *params_memory, *grads_memory, *m_memory, *v_memory;
    float            *acts_memory, *gacts_memory;
    cm_gpt_params_t   params, grads;    /* device pointers */
    cm_gpt_acts_t     acts, gacts;      /* device pointers */
    int              *inputs, *targets; /* device, Bmax * Tmax each */
    double           *partials;         /* CM_NORM_BLOCKS + 1 */
    float            *losses;           /* host, Bmax * Tmax */
    int               last_B, last_T, have_targets;
};


struct cm_gpt_cuda_kv_s {
    cm_gpt_cuda_t    *g;
    int               slots, rows;      /* rows: max rows of one forward */
    float            *mem;
    float            *kc, *vc;          /* (L, slots, maxT, C) each */
    float            *x, *ln, *qkv, *atty, *tmp, *fch, *fchg; /* rows */
    float            *logits;           /* (slots, Vp) */
    int              *dtok, *dslot, *dpos;  /* device, rows each */
    int              *htok, *hslot, *hpos;  /* host, rows each */
    int              *pos;              /* host, per slot */
};


static void
cm_cu_err(char *err, size_t errlen, const char *what, cudaError_t e)
{
    if (err != NULL && errlen > 0) {
        snprintf(err, errlen, "%s: %s", what, cudaGetErrorString(e));
    }
}


/* the queued work finished without error */
static int
cm_cu_check(void)
{
    cudaError_t e = cudaGetLastError();

    if (e == cudaSuccess) {
        e = cudaDeviceSynchronize();
    }
    if (e == cudaErrorMemoryAllocation) {
        return CM_ENOMEM;
    }
    return e == cudaSuccess ? CM_OK : CM_ERR;
}


/* ---- create / free / transfer ----------------------------------------- */

extern "C" int
cm_gpt_cuda_create(cm_gpt_cuda_t **out, const cm_gpt_config_t *cfg, int B,
    int T, char *err, size_t errlen)
{
    cm_gpt_cuda_t *g;
    size_t         P, A, total;
    int            n = 0;
    cudaError_t    e;

    *out = NULL;
    if (cm_gpt_config_check(cfg, err, errlen) != CM_OK) {
        return CM_EINVAL;
    }
    if (B < 1 || T < 1 || T > cfg->max_seq_len) {
        if (err != NULL && errlen > 0) {
            snprintf(err, errlen, "bad batch shape B=%d T=%d", B, T);
        }
        return CM_EINVAL;
    }
    e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess || n < 1) {
        if (e != cudaSuccess) {
            cm_cu_err(err, errlen, "no usable GPU", e);
        } else if (err != NULL && errlen > 0) {
            snprintf(err, errlen, "no CUDA device");
        }
        return CM_ENOTFOUND;
    }
    g = (cm_gpt_cuda_t *) calloc(1, sizeof(*g));
    if (g == NULL) {
        return CM_ENOMEM;
    }
    g->cfg = *cfg;
    g->Bmax = B;
    g->Tmax = T;
    g->num_parameters = cm_gpt_param_sizes(cfg, g->param_sizes);
    cm_gpt_act_sizes(cfg, B, T, g->act_sizes);
    A = 0;
    for (n = 0; n < CM_GPT_NACTS; n++) {
        A += g->act_sizes[n];
    }
    g->num_activations = A;
    P = g->num_parameters;
    total = 4 * P + 2 * A;
    g->losses = (float *) malloc((size_t) B * T * sizeof(float));
    if (P == 0 || g->losses == NULL) {
        cm_gpt_cuda_free(g);
        return P == 0 ? CM_EINVAL : CM_ENOMEM;
    }
    if ((e = cudaMalloc((void **) &g->mem, total * sizeof(float)))
            != cudaSuccess
        || (e = cudaMalloc((void **) &g->inputs,
                           2 * (size_t) B * T * sizeof(int))) != cudaSuccess
        || (e = cudaMalloc((void **) &g->partials,
                           (CM_NORM_BLOCKS + 1) * sizeof(double)))
           != cudaSuccess
        || (e = cudaMemset(g->mem, 0, total * sizeof(float))) != cudaSuccess)
    {
        cm_cu_err(err, errlen, "device allocation", e);
        cm_gpt_cuda_free(g);
        return e == cudaErrorMemoryAllocation ? CM_ENOMEM : CM_ERR;
    }
    g->targets = g->inputs + (size_t) B * T;
    g->params_memory = g->mem;
    g->grads_memory = g->mem + P;
    g->m_memory = g->mem + 2 * P;
    g->v_memory = g->mem + 3 * P;
    g->acts_memory = g->mem + 4 * P;
    g->gacts_memory = g->acts_memory + A;
    cm_gpt_point_params(&g->params, g->params_memory, g->param_sizes);
    cm_gpt_point_params(&g->grads, g->grads_memory, g->param_sizes);
    cm_gpt_point_acts(&g->acts, g->acts_memory, g->act_sizes);
    cm_gpt_point_acts(&g->gacts, g->gacts_memory, g->act_sizes);
    if (cublasCreate(&g->blas) != CUBLAS_STATUS_SUCCESS) {
        g->blas = NULL;
        if (err != NULL && errlen > 0) {
            snprintf(err, errlen, "cublasCreate failed");
        }
        cm_gpt_cuda_free(g);
        return CM_ERR;
    }
    /* plain fp32 SGEMM (no TF32), as the CPU reference computes */
    cublasSetMathMode(g->blas, CUBLAS_DEFAULT_MATH);
    *out = g;
    return CM_OK;
}


extern "C" void
cm_gpt_cuda_free(cm_gpt_cuda_t *g)
{
    if (g == NULL) {
        return;
    }
    if (g->blas != NULL) {
        cublasDestroy(g->blas);
    }
    cudaFree(g->mem);
    cudaFree(g->inputs);
    cudaFree(g->partials);
    free(g->losses);
    free(g);
}


static int
cm_same_config(const cm_gpt_config_t *a, const cm_gpt_config_t *b)
{
    return a->max_seq_len == b->max_seq_len
           && a->vocab_size == b->vocab_size
           && a->padded_vocab_size == b->padded_vocab_size
           && a->num_layers == b->num_layers && a->num_heads == b->num_heads
           && a->channels == b->channels;
}


extern "C" int
cm_gpt_cuda_upload(cm_gpt_cuda_t *g, const cm_gpt_t *m)
{
    size_t bytes = g->num_parameters * sizeof(float);

    if (!cm_same_config(&g->cfg, &m->config) || m->params_memory == NULL
        || m->num_parameters != g->num_parameters)
    {
        return CM_EINVAL;
    }
    if (cudaMemcpy(g->params_memory, m->params_memory, bytes,
                   cudaMemcpyHostToDevice) != cudaSuccess)
    {
        return CM_ERR;
    }
    if (m->m_memory != NULL && m->v_memory != NULL) {
        if (cudaMemcpy(g->m_memory, m->m_memory, bytes,
                       cudaMemcpyHostToDevice) != cudaSuccess
            || cudaMemcpy(g->v_memory, m->v_memory, bytes,
                          cudaMemcpyHostToDevice) != cudaSuccess)
        {
            return CM_ERR;
        }
    } else if (cudaMemset(g->m_memory, 0, 2 * bytes) != cudaSuccess) {
        return CM_ERR;                 /* m and v are adjacent */
    }
    return CM_OK;
}


extern "C" int
cm_gpt_cuda_download(const cm_gpt_cuda_t *g, cm_gpt_t *m)
{
    size_t bytes = g->num_parameters * sizeof(float);

    if (!cm_same_config(&g->cfg, &m->config) || m->params_memory == NULL
        || m->num_parameters != g->num_parameters)
    {
        return CM_EINVAL;
    }
    if (m->m_memory == NULL || m->v_memory == NULL) {
        free(m->m_memory);
        free(m->v_memory);
        m->m_memory = (float *) calloc(g->num_parameters, sizeof(float));
        m->v_memory = (float *) calloc(g->num_parameters, sizeof(float));
        if (m->m_memory == NULL || m->v_memory == NULL) {
            free(m->m_memory);
            free(m->v_memory);
            m->m_memory = m->v_memory = NULL;
            return CM_ENOMEM;
        }
    }
    if (cudaMemcpy(m->params_memory, g->params_memory, bytes,
                   cudaMemcpyDeviceToHost) != cudaSuccess
        || cudaMemcpy(m->m_memory, g->m_memory, bytes,
                      cudaMemcpyDeviceToHost) != cudaSuccess
        || cudaMemcpy(m->v_memory, g->v_memory, bytes,
                      cudaMemcpyDeviceToHost) != cudaSuccess)
    {
        return CM_ERR;
    }
    return CM_OK;
}


extern "C" int
cm_gpt_cuda_read(const cm_gpt_cuda_t *g, cm_gpt_cuda_what_t what,
    float *host, size_t n)
{
    const float *src;
    size_t       have;

    switch (what) {
    case CM_GPT_CUDA_PARAMS:
        src = g->params_memory;
        have = g->num_parameters;
        break;
    case CM_GPT_CUDA_GRADS:
        src = g->grads_memory;
        have = g->num_parameters;
        break;
    case CM_GPT_CUDA_ADAM_M:
        src = g->m_memory;
        have = g->num_parameters;
        break;
    case CM_GPT_CUDA_ADAM_V:
        src = g->v_memory;
        have = g->num_parameters;
        break;
    case CM_GPT_CUDA_LOGITS:
    case CM_GPT_CUDA_PROBS:
        src = what == CM_GPT_CUDA_LOGITS ? g->acts.logits : g->acts.probs;
        have = (size_t) g->last_B * g->last_T
               * (size_t) g->cfg.padded_vocab_size;
        break;
    default:
        return CM_EINVAL;
    }
    if (n > have) {
        return CM_EINVAL;
    }
    return cudaMemcpy(host, src, n * sizeof(float), cudaMemcpyDeviceToHost)
           == cudaSuccess ? CM_OK : CM_ERR;
}


/* ---- training: forward, backward, clip, AdamW -------------------------- */

extern "C" int
cm_gpt_cuda_forward(cm_gpt_cuda_t *g, const int *inputs, const int *targets,
    int B, int T, float *mean_loss)
{
    int              L, NH, C, V, Vp, l, i, N, rc;
    cm_gpt_params_t *p = &g->params;
    cm_gpt_acts_t   *a = &g->acts;
    cublasHandle_t   h = g->blas;
    float           *res;
    size_t           BT;
    int              ok = 1;

    L = g->cfg.num_layers;
    NH = g->cfg.num_heads;
    C = g->cfg.channels;
    V = g->cfg.vocab_size;
    Vp = g->cfg.padded_vocab_size;
    *mean_loss = -1.0f;
    if (B < 1 || T < 1 || B > g->Bmax || T > g->Tmax) {
        return CM_EINVAL;
    }
    for (i = 0; i < B * T; i++) {
        if (inputs[i] < 0 || inputs[i] >= V
            || (targets != NULL && (targets[i] < 0 || targets[i] >= V)))
        {
            return CM_EINVAL;
        }
    }
    BT = (size_t) B * T;
    N = (int) BT;
    if (cudaMemcpy(g->inputs, inputs, BT * sizeof(int),
                   cudaMemcpyHostToDevice) != cudaSuccess
        || (targets != NULL
            && cudaMemcpy(g->targets, targets, BT * sizeof(int),
                          cudaMemcpyHostToDevice) != cudaSuccess))
    {
        return CM_ERR;
    }
    g->last_B = B;
    g->last_T = T;
    g->have_targets = 0;

    cm_gpu_encoder_forward(a->encoded, g->inputs, p->wte, p->wpe, B, T, C);
    for (l = 0; l < L && ok; l++) {
        size_t  lc = (size_t) l * C, lbtc = (size_t) l * BT * C;
        size_t  lbt = (size_t) l * BT;
        size_t  latt = (size_t) l * B * NH * T * T;

        res = l == 0 ? a->encoded : a->residual3 + (lbtc - BT * C);
        cm_gpu_layernorm_forward(a->ln1 + lbtc, a->ln1_mean + lbt,
                                 a->ln1_rstd + lbt, res, p->ln1w + lc,
                                 p->ln1b + lc, N, C);
        ok = cm_gpu_matmul_forward(h, a->qkv + lbtc * 3, a->ln1 + lbtc,
                                   p->qkvw + lc * 3 * C, p->qkvb + lc * 3,
                                   N, C, 3 * C) == CM_OK
             && cm_gpu_attention_forward(h, a->atty + lbtc, a->preatt + latt,
                                         a->att + latt, a->qkv + lbtc * 3, B,
                                         T, C, NH) == CM_OK
             && cm_gpu_matmul_forward(h, a->attproj + lbtc, a->atty + lbtc,
                                      p->attprojw + lc * C, p->attprojb + lc,
                                      N, C, C) == CM_OK;
        if (!ok) {
            break;
        }
        cm_gpu_residual_forward(a->residual2 + lbtc, res, a->attproj + lbtc,
                                BT * C);
        cm_gpu_layernorm_forward(a->ln2 + lbtc, a->ln2_mean + lbt,
                                 a->ln2_rstd + lbt, a->residual2 + lbtc,
                                 p->ln2w + lc, p->ln2b + lc, N, C);
        ok = cm_gpu_matmul_forward(h, a->fch + lbtc * 4, a->ln2 + lbtc,
                                   p->fcw + lc * 4 * C, p->fcb + lc * 4, N,
                                   C, 4 * C) == CM_OK;
        if (!ok) {
            break;
        }
        cm_gpu_gelu_forward(a->fch_gelu + lbtc * 4, a->fch + lbtc * 4,
                            BT * 4 * C);
        ok = cm_gpu_matmul_forward(h, a->fcproj + lbtc, a->fch_gelu + lbtc * 4,
                                   p->fcprojw + lc * 4 * C, p->fcprojb + lc,
                                   N, 4 * C, C) == CM_OK;
        if (!ok) {
            break;
        }
        cm_gpu_residual_forward(a->residual3 + lbtc, a->residual2 + lbtc,
                                a->fcproj + lbtc, BT * C);
    }
    if (!ok) {
        return CM_ERR;
    }
    res = a->residual3 + (size_t) (L - 1) * BT * C;
    cm_gpu_layernorm_forward(a->lnf, a->lnf_mean, a->lnf_rstd, res, p->lnfw,
                             p->lnfb, N, C);
    if (cm_gpu_matmul_forward(h, a->logits, a->lnf, p->wte, NULL, N, C, Vp)
        != CM_OK)
    {
        return CM_ERR;
    }
    cm_gpu_softmax_forward(a->probs, a->logits, N, V, Vp);
    if (targets != NULL) {
        float sum = 0.0f;

        cm_gpu_crossentropy_forward(a->losses, a->probs, g->targets, N, Vp);
        if ((rc = cm_cu_check()) != CM_OK) {
            return rc;
        }
        if (cudaMemcpy(g->losses, a->losses, BT * sizeof(float),
                       cudaMemcpyDeviceToHost) != cudaSuccess)
        {
            return CM_ERR;
        }
        /* the CPU's order: a float sum over rows, then the mean */
        for (i = 0; i < N; i++) {
            sum += g->losses[i];
        }
        *mean_loss = sum / (float) N;
        g->have_targets = 1;
        return CM_OK;
    }
    return cm_cu_check();
}


extern "C" int
cm_gpt_cuda_zero_grad(cm_gpt_cuda_t *g)
{
    return cudaMemset(g->grads_memory, 0, g->num_parameters * sizeof(float))
           == cudaSuccess ? CM_OK : CM_ERR;
}


extern "C" int
cm_gpt_cuda_backward(cm_gpt_cuda_t *g, float grad_scale)
{
    int              L, NH, C, V, Vp, l, B, T, N, ok = 1;
    cm_gpt_params_t *p = &g->params, *gr = &g->grads;
    cm_gpt_acts_t   *a = &g->acts, *ga = &g->gacts;
    cublasHandle_t   h = g->blas;
    float           *res, *dres;
    size_t           BT;

    if (!g->have_targets) {
        return CM_EINVAL;    /* forward had no targets */
    }
    if (cudaMemset(g->gacts_memory, 0, g->num_activations * sizeof(float))
        != cudaSuccess)
    {
        return CM_ERR;
    }
    L = g->cfg.num_layers;
    NH = g->cfg.num_heads;
    C = g->cfg.channels;
    V = g->cfg.vocab_size;
    Vp = g->cfg.padded_vocab_size;
    B = g->last_B;
    T = g->last_T;
    BT = (size_t) B * T;
    N = (int) BT;

    /* d mean_loss / d loss_i */
    cm_fill_kernel<<<cm_blocks(BT, 256), 256>>>(ga->losses,
                                                grad_scale / (float) N, BT);
    cm_gpu_crossentropy_softmax_backward(ga->logits, ga->losses, a->probs,
                                         g->targets, N, V, Vp);
    if (cm_gpu_matmul_backward(h, ga->lnf, gr->wte, NULL, ga->logits, a->lnf,
                               p->wte, N, C, Vp) != CM_OK)
    {
        return CM_ERR;
    }
    res = a->residual3 + (size_t) (L - 1) * BT * C;
    dres = ga->residual3 + (size_t) (L - 1) * BT * C;
    cm_gpu_layernorm_backward(dres, gr->lnfw, gr->lnfb, ga->lnf, res, p->lnfw,
                              a->lnf_mean, a->lnf_rstd, N, C);
    for (l = L - 1; l >= 0 && ok; l--) {
        size_t  lc = (size_t) l * C, lbtc = (size_t) l * BT * C;
        size_t  lbt = (size_t) l * BT;
        size_t  latt = (size_t) l * B * NH * T * T;

        res = l == 0 ? a->encoded : a->residual3 + (lbtc - BT * C);
        dres = l == 0 ? ga->encoded : ga->residual3 + (lbtc - BT * C);

        cm_gpu_residual_backward(ga->residual2 + lbtc, ga->fcproj + lbtc,
                                 ga->residual3 + lbtc, BT * C);
        ok = cm_gpu_matmul_backward(h, ga->fch_gelu + lbtc * 4,
                                    gr->fcprojw + lc * 4 * C,
                                    gr->fcprojb + lc, ga->fcproj + lbtc,
                                    a->fch_gelu + lbtc * 4,
                                    p->fcprojw + lc * 4 * C, N, 4 * C, C)
             == CM_OK;
        if (!ok) {
            break;
        }
        cm_gpu_gelu_backward(ga->fch + lbtc * 4, a->fch + lbtc * 4,
                             ga->fch_gelu + lbtc * 4, BT * 4 * C);
        ok = cm_gpu_matmul_backward(h, ga->ln2 + lbtc, gr->fcw + lc * 4 * C,
                                    gr->fcb + lc * 4, ga->fch + lbtc * 4,
                                    a->ln2 + lbtc, p->fcw + lc * 4 * C, N, C,
                                    4 * C) == CM_OK;
        if (!ok) {
            break;
        }
        cm_gpu_layernorm_backward(ga->residual2 + lbtc, gr->ln2w + lc,
                                  gr->ln2b + lc, ga->ln2 + lbtc,
                                  a->residual2 + lbtc, p->ln2w + lc,
                                  a->ln2_mean + lbt, a->ln2_rstd + lbt, N, C);
        cm_gpu_residual_backward(dres, ga->attproj + lbtc,
                                 ga->residual2 + lbtc, BT * C);
        ok = cm_gpu_matmul_backward(h, ga->atty + lbtc, gr->attprojw + lc * C,
                                    gr->attprojb + lc, ga->attproj + lbtc,
                                    a->atty + lbtc, p->attprojw + lc * C, N,
                                    C, C) == CM_OK
             && cm_gpu_attention_backward(h, ga->qkv + lbtc * 3,
                                          ga->preatt + latt, ga->att + latt,
                                          ga->atty + lbtc, a->qkv + lbtc * 3,
                                          a->att + latt, B, T, C, NH)
                == CM_OK
             && cm_gpu_matmul_backward(h, ga->ln1 + lbtc,
                                       gr->qkvw + lc * 3 * C,
                                       gr->qkvb + lc * 3, ga->qkv + lbtc * 3,
                                       a->ln1 + lbtc, p->qkvw + lc * 3 * C, N,
                                       C, 3 * C) == CM_OK;
        if (!ok) {
            break;
        }
        cm_gpu_layernorm_backward(dres, gr->ln1w + lc, gr->ln1b + lc,
                                  ga->ln1 + lbtc, res, p->ln1w + lc,
                                  a->ln1_mean + lbt, a->ln1_rstd + lbt, N, C);
    }
    if (!ok) {
        return CM_ERR;
    }
    cm_gpu_encoder_backward(gr->wte, gr->wpe, ga->encoded, g->inputs, B, T,
                            C);
    return cm_cu_check();
}


extern "C" int
cm_gpt_cuda_clip_grad(cm_gpt_cuda_t *g, float max_norm, float *norm)
{
    double ss = 0.0;
    float  nm, s;
    size_t n = g->num_parameters;
    int    rc;

    cm_sumsq_kernel<<<CM_NORM_BLOCKS, 256>>>(g->partials, g->grads_memory, n);
    cm_sum_double_kernel<<<1, 256>>>(g->partials + CM_NORM_BLOCKS,
                                     g->partials, CM_NORM_BLOCKS);
    if ((rc = cm_cu_check()) != CM_OK) {
        return rc;
    }
    if (cudaMemcpy(&ss, g->partials + CM_NORM_BLOCKS, sizeof(double),
                   cudaMemcpyDeviceToHost) != cudaSuccess)
    {
        return CM_ERR;
    }
    nm = (float) sqrt(ss);
    if (norm != NULL) {
        *norm = nm;
    }
    if (max_norm > 0.0f && nm > max_norm) {
        s = max_norm / nm;
        cm_scale_kernel<<<cm_blocks(n, 256), 256>>>(g->grads_memory, s, n);
        return cm_cu_check();
    }
    return CM_OK;
}


extern "C" int
cm_gpt_cuda_update(cm_gpt_cuda_t *g, const cm_adamw_t *o)
{
    size_t k, off = 0;

    for (k = 0; k < CM_GPT_NPARAMS; k++) {
        cm_gpu_adamw(g->params_memory + off, g->grads_memory + off,
                     g->m_memory + off, g->v_memory + off, g->param_sizes[k],
                     o->lr, o->beta1, o->beta2, o->eps,
                     (CM_GPT_DECAY_MASK >> k) & 1 ? o->weight_decay : 0.0f,
                     o->step);
        off += g->param_sizes[k];
    }
    return cm_cu_check();
}


/* ---- decode: KV cache on the device ------------------------------------ */

extern "C" int
cm_gpt_cuda_kv_create(cm_gpt_cuda_kv_t **out, cm_gpt_cuda_t *g, int slots)
{
    cm_gpt_cuda_kv_t *kv;
    size_t            C, L, maxT, Vp, R, cache, total;
    float            *p;

    *out = NULL;
    if (slots < 1 || slots > 4096) {
        return CM_EINVAL;
    }
    kv = (cm_gpt_cuda_kv_t *) calloc(1, sizeof(*kv));
    if (kv == NULL) {
        return CM_ENOMEM;
    }
    kv->g = g;
    kv->slots = slots;
    C = (size_t) g->cfg.channels;
    L = (size_t) g->cfg.num_layers;
    maxT = (size_t) g->cfg.max_seq_len;
    Vp = (size_t) g->cfg.padded_vocab_size;
    /* a forward carries a whole prompt (up to maxT rows) or one row per
     * slot */
    kv->rows = slots > (int) maxT ? slots : (int) maxT;
    R = (size_t) kv->rows;
    cache = L * (size_t) slots * maxT * C;
    total = 2 * cache + R * (C + C + 3 * C + C + C + 4 * C + 4 * C)
            + (size_t) slots * Vp;
    kv->htok = (int *) malloc(3 * R * sizeof(int));
    kv->pos = (int *) calloc((size_t) slots, sizeof(int));
    if (kv->htok == NULL || kv->pos == NULL) {
        cm_gpt_cuda_kv_free(kv);
        return CM_ENOMEM;
    }
    kv->hslot = kv->htok + R;
    kv->hpos = kv->hslot + R;
    if (cudaMalloc((void **) &kv->mem, total * sizeof(float)) != cudaSuccess
        || cudaMalloc((void **) &kv->dtok, 3 * R * sizeof(int))
           != cudaSuccess
        || cudaMemset(kv->mem, 0, total * sizeof(float)) != cudaSuccess)
    {
        cm_gpt_cuda_kv_free(kv);
        return CM_ENOMEM;
    }
    kv->dslot = kv->dtok + R;
    kv->dpos = kv->dslot + R;
    p = kv->mem;
    kv->kc = p;            p += cache;
    kv->vc = p;            p += cache;
    kv->x = p;             p += R * C;
    kv->ln = p;            p += R * C;
    kv->qkv = p;           p += R * 3 * C;
    kv->atty = p;          p += R * C;
    kv->tmp = p;           p += R * C;
    kv->fch = p;           p += R * 4 * C;
    kv->fchg = p;          p += R * 4 * C;
    kv->logits = p;
    *out = kv;
    return CM_OK;
}


extern "C" void
cm_gpt_cuda_kv_free(cm_gpt_cuda_kv_t *kv)
{
    if (kv == NULL) {
        return;
    }
    cudaFree(kv->mem);
    cudaFree(kv->dtok);
    free(kv->htok);
    free(kv->pos);
    free(kv);
}


extern "C" int
cm_gpt_cuda_kv_reset(cm_gpt_cuda_kv_t *kv, int slot)
{
    if (slot < 0 || slot >= kv->slots) {
        return CM_EINVAL;
    }
    kv->pos[slot] = 0;
    return CM_OK;
}


extern "C" int
cm_gpt_cuda_kv_pos(const cm_gpt_cuda_kv_t *kv, int slot)
{
    return slot < 0 || slot >= kv->slots ? CM_EINVAL : kv->pos[slot];
}


/*
 * The N rows in htok/hslot/hpos through the model (the CPU engine's
 * per-row forward: each row attends to its slot's cache up to its own
 * position), then the final LayerNorm and the LM head for rows
 * [first, first + nout) only, their V logits copied to host.
 */
static int
cm_kv_forward(cm_gpt_cuda_kv_t *kv, int N, int first, int nout,
    float *logits)
{
    cm_gpt_cuda_t   *g = kv->g;
    cm_gpt_params_t *p = &g->params;
    cublasHandle_t   h = g->blas;
    int              L = g->cfg.num_layers, NH = g->cfg.num_heads;
    int              C = g->cfg.channels, V = g->cfg.vocab_size;
    int              Vp = g->cfg.padded_vocab_size;
    int              maxT = g->cfg.max_seq_len, l, rc;
    size_t           NC = (size_t) N * C;
    size_t           lcache = (size_t) kv->slots * maxT * C;
    float            scale = 1.0f / sqrtf((float) (C / NH));
    size_t           shm = ((size_t) maxT + 32) * sizeof(float);
    dim3             grid((unsigned) N, (unsigned) NH);

    if (cudaMemcpy(kv->dtok, kv->htok, 3 * (size_t) kv->rows * sizeof(int),
                   cudaMemcpyHostToDevice) != cudaSuccess)
    {
        return CM_ERR;
    }
    cm_encoder_pos_kernel<<<cm_blocks(NC, 256), 256>>>(kv->x, kv->dtok,
        kv->dpos, p->wte, p->wpe, N, C);
    for (l = 0; l < L; l++) {
        size_t lc = (size_t) l * C;

        cm_gpu_layernorm_forward(kv->ln, NULL, NULL, kv->x, p->ln1w + lc,
                                 p->ln1b + lc, N, C);
        if (cm_gpu_matmul_forward(h, kv->qkv, kv->ln, p->qkvw + lc * 3 * C,
                                  p->qkvb + lc * 3, N, C, 3 * C) != CM_OK)
        {
            return CM_ERR;
        }
        cm_kv_store_kernel<<<cm_blocks(NC, 256), 256>>>(
            kv->kc + l * lcache, kv->vc + l * lcache, kv->qkv, kv->dslot,
            kv->dpos, N, C, maxT);
        cm_kv_attention_kernel<<<grid, 128, shm>>>(kv->atty, kv->qkv,
            kv->kc + l * lcache, kv->vc + l * lcache, kv->dslot, kv->dpos, C,
            NH, maxT, scale);
        if (cm_gpu_matmul_forward(h, kv->tmp, kv->atty, p->attprojw + lc * C,
                                  p->attprojb + lc, N, C, C) != CM_OK)
        {
            return CM_ERR;
        }
        cm_gpu_residual_forward(kv->x, kv->x, kv->tmp, NC);
        cm_gpu_layernorm_forward(kv->ln, NULL, NULL, kv->x, p->ln2w + lc,
                                 p->ln2b + lc, N, C);
        if (cm_gpu_matmul_forward(h, kv->fch, kv->ln, p->fcw + lc * 4 * C,
                                  p->fcb + lc * 4, N, C, 4 * C) != CM_OK)
        {
            return CM_ERR;
        }
        cm_gpu_gelu_forward(kv->fchg, kv->fch, NC * 4);
        if (cm_gpu_matmul_forward(h, kv->tmp, kv->fchg,
                                  p->fcprojw + lc * 4 * C, p->fcprojb + lc,
                                  N, 4 * C, C) != CM_OK)
        {
            return CM_ERR;
        }
        cm_gpu_residual_forward(kv->x, kv->x, kv->tmp, NC);
    }
    cm_gpu_layernorm_forward(kv->ln, NULL, NULL, kv->x + (size_t) first * C,
                             p->lnfw, p->lnfb, nout, C);
    if (cm_gpu_matmul_forward(h, kv->logits, kv->ln, p->wte, NULL, nout, C,
                              Vp) != CM_OK)
    {
        return CM_ERR;
    }
    if ((rc = cm_cu_check()) != CM_OK) {
        return rc;
    }
    return cudaMemcpy2D(logits, (size_t) V * sizeof(float), kv->logits,
                        (size_t) Vp * sizeof(float), (size_t) V * sizeof(float),
                        (size_t) nout, cudaMemcpyDeviceToHost) == cudaSuccess
           ? CM_OK : CM_ERR;
}


extern "C" int
cm_gpt_cuda_prefill(cm_gpt_cuda_kv_t *kv, int slot, const int *tokens,
    int n, float *logits)
{
    int i, rc, V = kv->g->cfg.vocab_size;

    if (slot < 0 || slot >= kv->slots || n < 1 || n > kv->rows
        || kv->pos[slot] + n > kv->g->cfg.max_seq_len)
    {
        return CM_EINVAL;
    }
    for (i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= V) {
            return CM_EINVAL;
        }
        kv->htok[i] = tokens[i];
        kv->hslot[i] = slot;
        kv->hpos[i] = kv->pos[slot] + i;
    }
    if ((rc = cm_kv_forward(kv, n, n - 1, 1, logits)) != CM_OK) {
        return rc;
    }
    kv->pos[slot] += n;
    return CM_OK;
}


extern "C" int
cm_gpt_cuda_decode(cm_gpt_cuda_kv_t *kv, const int *slots, const int *tokens,
    int nb, float *logits)
{
    int i, j, rc, V = kv->g->cfg.vocab_size;

    if (nb < 1 || nb > kv->slots) {
        return CM_EINVAL;
    }
    for (i = 0; i < nb; i++) {
        int s = slots[i];

        if (s < 0 || s >= kv->slots || tokens[i] < 0 || tokens[i] >= V
            || kv->pos[s] >= kv->g->cfg.max_seq_len)
        {
            return CM_EINVAL;
        }
        for (j = 0; j < i; j++) {
            if (slots[j] == s) {
                return CM_EINVAL;      /* one row per slot and step */
            }
        }
        kv->htok[i] = tokens[i];
        kv->hslot[i] = s;
        kv->hpos[i] = kv->pos[s];
    }
    if ((rc = cm_kv_forward(kv, nb, 0, nb, logits)) != CM_OK) {
        return rc;
    }
    for (i = 0; i < nb; i++) {
        kv->pos[slots[i]]++;
    }
    return CM_OK;
}

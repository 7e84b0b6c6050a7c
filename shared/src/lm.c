/*
 * lm.c: dialog LM inference: KV-cached forward over a set of token rows
 * (prefill chunks and decode steps of many sequences alike), sampling.
 *
 * Every row carries (sequence, token, position).  Per layer, the row
 * projections are one SGEMM over all rows; keys and values are written into
 * each row's own sequence cache first, then each row attends over its
 * sequence's cache up to its position, so a prompt chunk and single decode
 * tokens of other sequences share the same matrix products.
 */
#include <math.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <cblas.h>

#include "cinematch/common.h"
#include "cinematch/gpt.h"
#include "cinematch/lm.h"


void
cm_lm_params_default(cm_lm_params_t *p)
{
    memset(p, 0, sizeof(*p));
    p->temperature = 0.8f;
    p->top_k = 40;
    p->top_p = 0.95f;
    p->repetition_penalty = 1.1f;
    p->max_tokens = 64;
    p->seed = 1;
}


#define CM_LM_HUGE  ((size_t) 2 << 20)   /* huge page size (x86-64) */


/*
 * Memory that a decode step streams through (packed weights, KV caches):
 * from 2 MB on, on a 2 MB boundary and marked for transparent huge pages,
 * so that streaming ~100 MB a step is not also a TLB miss every 4 KB
 * (+8 % tokens/s at batch 32); smaller blocks (tiny models, tests) stay
 * ordinary, a huge page each would waste memory.
 */
static void *
cm_lm_stream_alloc(size_t bytes)
{
    void *p;

    if (bytes < CM_LM_HUGE) {
        return aligned_alloc(CM_LMK_ALIGN, (bytes + CM_LMK_ALIGN - 1)
                                           / CM_LMK_ALIGN * CM_LMK_ALIGN);
    }
    if (posix_memalign(&p, CM_LM_HUGE, bytes) != 0) {
        return NULL;
    }
#ifdef MADV_HUGEPAGE
    (void) madvise(p, bytes / CM_LM_HUGE * CM_LM_HUGE, MADV_HUGEPAGE);
#endif
    return p;
}

/*
 * Freed KV-cache blocks kept for the next sequence of the same size: a
 * daemon starts and ends a sequence per request, and a fresh block is a
 * fresh mapping whose pages the kernel faults in and zeroes (perf: 8 % of
 * the daemon's CPU at 32 concurrent chats, in clear_page).  At most
 * CM_LM_KV_KEEP blocks, of one size (a model of another shape replaces
 * them); process-wide, as engines come and go with model reloads while
 * their sequences may outlive them.
 */
#define CM_LM_KV_KEEP  64

static pthread_mutex_t  cm_lm_kv_mu = PTHREAD_MUTEX_INITIALIZER;
static void            *cm_lm_kv_blk[CM_LM_KV_KEEP];
static int              cm_lm_kv_n;
static size_t           cm_lm_kv_bytes;


static void *
cm_lm_kv_get(size_t bytes)
{
    void *p = NULL;

    pthread_mutex_lock(&cm_lm_kv_mu);
    if (cm_lm_kv_n > 0 && cm_lm_kv_bytes == bytes) {
        p = cm_lm_kv_blk[--cm_lm_kv_n];
    }
    pthread_mutex_unlock(&cm_lm_kv_mu);
    return p != NULL ? p : cm_lm_stream_alloc(bytes);
}


static void
cm_lm_kv_put(void *p, size_t bytes)
{
    void *drop[CM_LM_KV_KEEP];
    int   ndrop = 0, i;

    if (p == NULL) {
        return;
    }
    pthread_mutex_lock(&cm_lm_kv_mu);
    if (cm_lm_kv_bytes != bytes) {
        /* another shape: the kept blocks go */
        for (i = 0; i < cm_lm_kv_n; i++) {
            drop[ndrop++] = cm_lm_kv_blk[i];
        }
        cm_lm_kv_n = 0;
        cm_lm_kv_bytes = bytes;
    }
    if (cm_lm_kv_n < CM_LM_KV_KEEP) {
        cm_lm_kv_blk[cm_lm_kv_n++] = p;
        p = NULL;
    }
    pthread_mutex_unlock(&cm_lm_kv_mu);
    free(p);
    for (i = 0; i < ndrop; i++) {
        free(drop[i]);
    }
}


static void cm_lm_pool_free(cm_lm_engine_t *e);


void
cm_lm_engine_free(cm_lm_engine_t *e)
{
    cm_lm_pool_free(e);
    free(e->x);
    free(e->xn);
    free(e->qkv);
    free(e->atty);
    free(e->tmp);
    free(e->fch);
    free(e->scores);
    free(e->sel);
    free(e->logits);
    free(e->row_tok);
    free(e->row_pos);
    free(e->row_seq);
    free(e->row_kind);
    free(e->cand);
    free(e->seen);
    free(e->packed);
    free(e->packed_bf16);
    free(e->xbf);
    free(e->pk);
    memset(e, 0, sizeof(*e));
}


/* The per-layer matrices and the LM head in lm_kernels' panel layout, one
 * allocation carved by the same sizes in the same order as pk. */
static int
cm_lm_engine_pack(cm_lm_engine_t *e)
{
    const cm_gpt_t         *m = e->model;
    const cm_gpt_params_t  *p = &m->params;
    int     L = m->config.num_layers, C = m->config.channels, l, i;
    int     Vp = m->config.padded_vocab_size, n = 4 * L + 1;
    int     oc[4] = { 3 * C, C, 4 * C, C }, k[4] = { C, C, C, 4 * C };
    size_t  total = 0, at = 0, lc;
    float  *mem;

    for (l = 0; l < L; l++) {
        for (i = 0; i < 4; i++) {
            total += cm_lmk_packed_floats(oc[i], k[i]);
        }
    }
    total += cm_lmk_packed_floats(Vp, C);
    e->pk = calloc((size_t) n, sizeof(cm_lmk_matrix_t));
    e->packed = cm_lm_stream_alloc(total * sizeof(float));
    if (e->pk == NULL || e->packed == NULL) {
        return CM_ENOMEM;
    }
    mem = e->packed;
    for (l = 0; l < L; l++) {
        const float *w[4], *b[4];

        lc = (size_t) l * C;
        w[0] = p->qkvw + lc * 3 * C;     b[0] = p->qkvb + lc * 3;
        w[1] = p->attprojw + lc * C;     b[1] = p->attprojb + lc;
        w[2] = p->fcw + lc * 4 * C;      b[2] = p->fcb + lc * 4;
        w[3] = p->fcprojw + lc * 4 * C;  b[3] = p->fcprojb + lc;
        for (i = 0; i < 4; i++) {
            cm_lmk_pack(&e->pk[4 * l + i], mem + at, w[i], b[i], oc[i],
                        k[i]);
            at += cm_lmk_packed_floats(oc[i], k[i]);
        }
    }
    cm_lmk_pack(&e->pk[4 * L], mem + at, p->wte, NULL, Vp, C);
    e->use_packed = 1;
    return CM_OK;
}


int
cm_lm_engine_bf16(cm_lm_engine_t *e)
{
    const cm_gpt_t         *m = e->model;
    const cm_gpt_params_t  *p = &m->params;
    int       L = m->config.num_layers, C = m->config.channels, l, i;
    int       Vp = m->config.padded_vocab_size;
    int       oc[4] = { 3 * C, C, 4 * C, C }, k[4] = { C, C, C, 4 * C };
    size_t    total = 0, at = 0, lc;
    uint16_t *mem, *xbf;

    if (e->bf16) {
        return CM_OK;
    }
    if (!cm_lmk_bf16() || e->pk == NULL) {
        return CM_EINVAL;
    }
    for (l = 0; l < L; l++) {
        for (i = 0; i < 4; i++) {
            total += cm_lmk_packed_bf16(oc[i], k[i]);
        }
    }
    total += cm_lmk_packed_bf16(Vp, C);
    mem = cm_lm_stream_alloc(total * sizeof(uint16_t));
    xbf = malloc((size_t) e->max_rows * cm_lmk_bf16_kp(4 * C)
                 * sizeof(uint16_t));
    if (mem == NULL || xbf == NULL) {
        free(mem);
        free(xbf);
        return CM_ENOMEM;
    }
    for (l = 0; l < L; l++) {
        const float *w[4], *b[4];

        lc = (size_t) l * C;
        w[0] = p->qkvw + lc * 3 * C;     b[0] = p->qkvb + lc * 3;
        w[1] = p->attprojw + lc * C;     b[1] = p->attprojb + lc;
        w[2] = p->fcw + lc * 4 * C;      b[2] = p->fcb + lc * 4;
        w[3] = p->fcprojw + lc * 4 * C;  b[3] = p->fcprojb + lc;
        for (i = 0; i < 4; i++) {
            cm_lmk_pack_bf16(&e->pk[4 * l + i], mem + at, w[i], b[i], oc[i],
                             k[i]);
            at += cm_lmk_packed_bf16(oc[i], k[i]);
        }
    }
    cm_lmk_pack_bf16(&e->pk[4 * L], mem + at, p->wte, NULL, Vp, C);
    free(e->packed);
    e->packed = NULL;
    e->packed_bf16 = mem;
    e->xbf = xbf;
    e->bf16 = 1;
    return CM_OK;
}


int
cm_lm_engine_kv_bf16(cm_lm_engine_t *e)
{
    if (!cm_lmk_bf16() || e->pk == NULL || e->model->config.channels % 2) {
        return CM_EINVAL;
    }
    e->kv_bf16 = 1;
    return CM_OK;
}


int
cm_lm_engine_init(cm_lm_engine_t *e, const cm_gpt_t *m, int max_rows)
{
    size_t R = (size_t) max_rows, C = (size_t) m->config.channels;
    size_t Vp = (size_t) m->config.padded_vocab_size;
    size_t V = (size_t) m->config.vocab_size;

    memset(e, 0, sizeof(*e));
    if (max_rows < 1) {
        return CM_EINVAL;
    }
    e->model = m;
    e->max_rows = max_rows;
    e->x = malloc(R * C * sizeof(float));
    e->xn = malloc(R * C * sizeof(float));
    e->qkv = malloc(R * 3 * C * sizeof(float));
    e->atty = malloc(R * C * sizeof(float));
    e->tmp = malloc(R * C * sizeof(float));
    e->fch = malloc(R * 4 * C * sizeof(float));
    e->scores = malloc((size_t) m->config.num_heads * m->config.max_seq_len
                       * sizeof(float));
    e->sel = malloc(R * C * sizeof(float));
    e->logits = malloc(R * Vp * sizeof(float));
    e->row_tok = malloc(R * sizeof(int32_t));
    e->row_pos = malloc(R * sizeof(int32_t));
    e->row_seq = malloc(R * sizeof(void *));
    e->row_kind = malloc(R);
    e->prefill_budget = max_rows;
    e->threads = 1;
    e->cand = malloc(V * sizeof(cm_lm_cand_t));
    e->seen = calloc(V, 1);
    if (e->x == NULL || e->xn == NULL || e->qkv == NULL || e->atty == NULL
        || e->tmp == NULL || e->fch == NULL || e->scores == NULL
        || e->sel == NULL || e->logits == NULL || e->row_tok == NULL
        || e->row_pos == NULL || e->row_seq == NULL || e->row_kind == NULL
        || e->cand == NULL
        || e->seen == NULL)
    {
        cm_lm_engine_free(e);
        return CM_ENOMEM;
    }
    if (cm_lmk_simd() && cm_lm_engine_pack(e) != CM_OK) {
        cm_lm_engine_free(e);
        return CM_ENOMEM;
    }
    return CM_OK;
}


int
cm_lm_seq_init(cm_lm_seq_t *s, const cm_lm_engine_t *e,
    const cm_lm_params_t *p)
{
    const cm_gpt_config_t *c = &e->model->config;
    size_t kv = (size_t) c->num_layers * c->max_seq_len * c->channels;

    memset(s, 0, sizeof(*s));
    s->params = *p;
    if (s->params.n_stop < 0 || s->params.n_stop > CM_LM_MAX_STOP) {
        return CM_EINVAL;
    }
    s->next = -1;
    s->rng = p->seed ^ 0x5DEECE66Dull;
    /* keys and values in one block (a batch-32 step streams ~90 MB of
     * caches) */
    if (e->kv_bf16) {
        s->kv_bytes = 2 * kv * sizeof(uint16_t);
        s->kb = cm_lm_kv_get(s->kv_bytes);
        s->vb = s->kb != NULL ? s->kb + kv : NULL;
    } else {
        s->kv_bytes = 2 * kv * sizeof(float);
        s->k = cm_lm_kv_get(s->kv_bytes);
        s->v = s->k != NULL ? s->k + kv : NULL;
    }
    s->history = malloc(((size_t) c->max_seq_len + 1) * sizeof(int32_t));
    s->logits = malloc((size_t) c->padded_vocab_size * sizeof(float));
    if ((s->k == NULL && s->kb == NULL) || s->history == NULL
        || s->logits == NULL)
    {
        cm_lm_seq_free(s);
        return CM_ENOMEM;
    }
    return CM_OK;
}


void
cm_lm_seq_free(cm_lm_seq_t *s)
{
    /* s->v (s->vb) is in the same block */
    cm_lm_kv_put(s->k != NULL ? (void *) s->k : (void *) s->kb, s->kv_bytes);
    free(s->history);
    free(s->logits);
    memset(s, 0, sizeof(*s));
}


/* ---- forward over rows ------------------------------------------------ */

static void
cm_lm_add_bias(float *out, const float *bias, int R, int OC)
{
    int r, o;

    for (r = 0; r < R; r++) {
        float *row = out + (size_t) r * OC;

        for (o = 0; o < OC; o++) {
            row[o] += bias[o];
        }
    }
}


/* out (R, OC) = inp (R, C) @ w (OC, C)^T + b */
static void
cm_lm_linear(float *out, const float *inp, const float *w, const float *b,
    int R, int C, int OC)
{
    if (R == 1) {
        /* one row: GEMV reads the weights once; OpenBLAS 0.3.21's SGEMM
         * would pack (copy) the whole weight matrix first */
        if (b != NULL) {
            memcpy(out, b, (size_t) OC * sizeof(float));
        }
        cblas_sgemv(CblasRowMajor, CblasNoTrans, OC, C, 1.0f, w, C, inp, 1,
                    b != NULL ? 1.0f : 0.0f, out, 1);
        return;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, R, OC, C, 1.0f,
                inp, C, w, C, 0.0f, out, OC);
    if (b != NULL) {
        cm_lm_add_bias(out, b, R, OC);
    }
}


/* ---- threads: a step's linear layers by panels, attention by rows ------ */

typedef struct {
    int                     kind;   /* 0 linear, 1 attention */
    float                  *out;
    const float            *inp;
    const uint16_t         *xb;     /* inp in bf16 (bf16 weights) */
    const cm_lmk_matrix_t  *pm;
    int                     R;
    int                     l;      /* layer (attention) */
} cm_lm_job_t;

typedef struct cm_lm_pool_s  cm_lm_pool_t;

typedef struct {
    cm_lm_pool_t  *pool;
    int            part;
} cm_lm_worker_t;

struct cm_lm_pool_s {
    cm_lm_engine_t     *e;
    pthread_mutex_t     mu;
    pthread_cond_t      go;
    pthread_cond_t      done;
    pthread_t          *tid;
    cm_lm_worker_t     *arg;
    int                 n;          /* parts: workers + the caller */
    int                 nstarted;   /* workers running */
    uint64_t            gen;        /* job generation */
    int                 pending;    /* workers still on this job */
    int                 stop;
    const cm_lm_job_t  *job;
};


static void
cm_lm_job_part(cm_lm_engine_t *e, const cm_lm_job_t *j, int part, int n)
{
    const cm_gpt_config_t *c = &e->model->config;
    int    C = c->channels, NH = c->num_heads, maxT = c->max_seq_len;
    int    a, b, r, hs = C / NH;
    float  scale = 1.0f / sqrtf((float) hs);

    if (j->kind == 0) {
        int P = cm_lmk_panels(j->pm);

        a = (int) ((long) P * part / n);
        b = (int) ((long) P * (part + 1) / n);
        if (a < b && j->pm->wb != NULL) {
            cm_lmk_linear_bf16_part(j->out, j->xb, j->pm, j->R, a, b);
        } else if (a < b) {
            cm_lmk_linear_part(j->out, j->inp, j->pm, j->R, a, b);
        }
        return;
    }
    a = (int) ((long) j->R * part / n);
    b = (int) ((long) j->R * (part + 1) / n);
    for (r = a; r < b; r++) {
        cm_lm_seq_t *s = e->row_seq[r];

        if (s->kb != NULL) {
            cm_lmk_attend_kvb(e->atty + (size_t) r * C,
                              e->qkv + (size_t) r * 3 * C,
                              s->kb + (size_t) j->l * maxT * C,
                              s->vb + (size_t) j->l * maxT * C,
                              e->scores + (size_t) part * NH * maxT,
                              e->row_pos[r] + 1, C, NH, scale);
            continue;
        }
        cm_lmk_attend(e->atty + (size_t) r * C, e->qkv + (size_t) r * 3 * C,
                      s->k + (size_t) j->l * maxT * C,
                      s->v + (size_t) j->l * maxT * C,
                      e->scores + (size_t) part * NH * maxT,
                      e->row_pos[r] + 1, C, NH, scale);
    }
}


static void *
cm_lm_worker(void *arg)
{
    cm_lm_worker_t  *w = arg;
    cm_lm_pool_t    *p = w->pool;
    uint64_t         seen = 0;

    pthread_mutex_lock(&p->mu);
    for ( ;; ) {
        while (p->gen == seen && !p->stop) {
            pthread_cond_wait(&p->go, &p->mu);
        }
        if (p->stop) {
            break;
        }
        seen = p->gen;
        pthread_mutex_unlock(&p->mu);
        cm_lm_job_part(p->e, p->job, w->part, p->n);
        pthread_mutex_lock(&p->mu);
        if (--p->pending == 0) {
            pthread_cond_signal(&p->done);
        }
    }
    pthread_mutex_unlock(&p->mu);
    return NULL;
}


/* Runs the job in all parts: the caller does part 0 and waits for the
 * workers; without a pool, the whole job here. */
static void
cm_lm_run(cm_lm_engine_t *e, const cm_lm_job_t *j)
{
    cm_lm_pool_t *p = e->pool;

    if (p == NULL || p->nstarted == 0) {
        cm_lm_job_part(e, j, 0, 1);
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->job = j;
    p->pending = p->nstarted;
    p->gen++;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    cm_lm_job_part(e, j, 0, p->n);
    pthread_mutex_lock(&p->mu);
    while (p->pending > 0) {
        pthread_cond_wait(&p->done, &p->mu);
    }
    pthread_mutex_unlock(&p->mu);
}


static void
cm_lm_pool_free(cm_lm_engine_t *e)
{
    cm_lm_pool_t *p = e->pool;
    int           i;

    if (p == NULL) {
        return;
    }
    pthread_mutex_lock(&p->mu);
    p->stop = 1;
    pthread_cond_broadcast(&p->go);
    pthread_mutex_unlock(&p->mu);
    for (i = 0; i < p->nstarted; i++) {
        pthread_join(p->tid[i], NULL);
    }
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->go);
    pthread_cond_destroy(&p->done);
    free(p->tid);
    free(p->arg);
    free(p);
    e->pool = NULL;
    e->threads = 1;
}


int
cm_lm_engine_threads(cm_lm_engine_t *e, int n)
{
    const cm_gpt_config_t *c = &e->model->config;
    cm_lm_pool_t          *p;
    float                 *sc;
    int                    i;

    if (n < 1 || n > CM_LM_MAX_THREADS) {
        return CM_EINVAL;
    }
    cm_lm_pool_free(e);
    if (n == 1 || e->pk == NULL) {
        return CM_OK;   /* the OpenBLAS path threads inside OpenBLAS */
    }
    sc = realloc(e->scores, (size_t) n * c->num_heads * c->max_seq_len
                            * sizeof(float));
    p = calloc(1, sizeof(*p));
    if (sc != NULL) {
        e->scores = sc;
    }
    if (sc == NULL || p == NULL) {
        free(p);
        return CM_ENOMEM;
    }
    p->e = e;
    p->n = n;
    p->tid = calloc((size_t) n, sizeof(pthread_t));
    p->arg = calloc((size_t) n, sizeof(cm_lm_worker_t));
    if (p->tid == NULL || p->arg == NULL
        || pthread_mutex_init(&p->mu, NULL) != 0)
    {
        free(p->tid);
        free(p->arg);
        free(p);
        return CM_ENOMEM;
    }
    pthread_cond_init(&p->go, NULL);
    pthread_cond_init(&p->done, NULL);
    e->pool = p;
    for (i = 1; i < n; i++) {
        p->arg[i - 1].pool = p;
        p->arg[i - 1].part = i;
        if (pthread_create(&p->tid[i - 1], NULL, cm_lm_worker,
                           &p->arg[i - 1]) != 0)
        {
            break;
        }
        p->nstarted++;
    }
    /* parts follow the threads that did start */
    p->n = p->nstarted + 1;
    e->threads = p->n;
    return CM_OK;
}


/* A linear layer of the engine: matrix `which` of the packed table when
 * the engine packed its weights, else SGEMM/GEMV on the model's own. */
static void
cm_lm_mm(cm_lm_engine_t *e, int which, float *out, const float *inp,
    const float *w, const float *b, int R, int C, int OC)
{
    cm_lm_job_t j;

    if (e->use_packed && e->pk != NULL) {
        j.kind = 0;
        j.out = out;
        j.inp = inp;
        j.pm = &e->pk[which];
        j.R = R;
        j.l = 0;
        j.xb = NULL;
        if (j.pm->wb != NULL) {
            /* once for every part of the job */
            cm_lmk_to_bf16(e->xbf, inp, R, j.pm->K);
            j.xb = e->xbf;
        }
        cm_lm_run(e, &j);
        return;
    }
    cm_lm_linear(out, inp, w, b, R, C, OC);
}


/* LayerNorm: lm_kernels' vectorised one with the packed kernels, the
 * model's own on the OpenBLAS path. */
static void
cm_lm_layernorm(const cm_lm_engine_t *e, float *out, const float *inp,
    const float *w, const float *b, int N, int C)
{
    if (e->use_packed) {
        cm_lmk_layernorm(out, inp, w, b, N, C);
        return;
    }
    cm_layernorm_forward(out, NULL, NULL, inp, w, b, N, C);
}


/*
 * Runs rows 0..R-1 (row_seq/row_tok/row_pos set) through the model,
 * writing their keys/values into the sequence caches; rows with want[r]
 * get their logits copied to their sequence.
 */
static void
cm_lm_forward_rows(cm_lm_engine_t *e, int R, const uint8_t *want)
{
    const cm_gpt_t         *m = e->model;
    const cm_gpt_params_t  *p = &m->params;
    int    L = m->config.num_layers, NH = m->config.num_heads;
    int    C = m->config.channels, Vp = m->config.padded_vocab_size;
    int    maxT = m->config.max_seq_len, hs = C / NH, l, r, h, t, i, S;
    float  scale = 1.0f / sqrtf((float) hs);

    e->forwards++;

    for (r = 0; r < R; r++) {
        const float *we = p->wte + (size_t) e->row_tok[r] * C;
        const float *pe = p->wpe + (size_t) e->row_pos[r] * C;
        float       *x = e->x + (size_t) r * C;

        for (i = 0; i < C; i++) {
            x[i] = we[i] + pe[i];
        }
    }
    for (l = 0; l < L; l++) {
        size_t lc = (size_t) l * C;

        cm_lm_layernorm(e, e->xn, e->x, p->ln1w + lc, p->ln1b + lc, R, C);
        cm_lm_mm(e, 4 * l, e->qkv, e->xn, p->qkvw + lc * 3 * C,
                 p->qkvb + lc * 3, R, C, 3 * C);
        /* keys and values of every row into its cache, before any row
         * attends (a prompt chunk reads its own earlier rows) */
        for (r = 0; r < R; r++) {
            cm_lm_seq_t *s = e->row_seq[r];
            size_t       at = ((size_t) l * maxT + e->row_pos[r]) * C;

            if (s->kb != NULL) {
                cm_lmk_to_bf16(s->kb + at, e->qkv + (size_t) r * 3 * C
                                           + (size_t) C, 1, C);
                cm_lmk_to_bf16(s->vb + at, e->qkv + (size_t) r * 3 * C
                                           + 2 * (size_t) C, 1, C);
                continue;
            }
            memcpy(s->k + at, e->qkv + (size_t) r * 3 * C + (size_t) C,
                   (size_t) C * sizeof(float));
            memcpy(s->v + at, e->qkv + (size_t) r * 3 * C + 2 * (size_t) C,
                   (size_t) C * sizeof(float));
        }
        if (e->use_packed || e->kv_bf16) {
            cm_lm_job_t j;

            memset(&j, 0, sizeof(j));
            j.kind = 1;
            j.R = R;
            j.l = l;
            cm_lm_run(e, &j);
        }
        for (r = 0; r < R && !e->use_packed && !e->kv_bf16; r++) {
            cm_lm_seq_t *s = e->row_seq[r];
            int          pos = e->row_pos[r];
            const float *kc = s->k + (size_t) l * maxT * C;
            const float *vc = s->v + (size_t) l * maxT * C;

            for (h = 0; h < NH; h++) {
                const float *q = e->qkv + (size_t) r * 3 * C + (size_t) h * hs;
                float       *o = e->atty + (size_t) r * C + (size_t) h * hs;
                float        mx = -INFINITY, sum = 0.0f, inv;

                /* scores (pos+1) = scale * K_h (pos+1, hs; ld C) @ q */
                cblas_sgemv(CblasRowMajor, CblasNoTrans, pos + 1, hs, scale,
                            kc + (size_t) h * hs, C, q, 1, 0.0f, e->scores,
                            1);
                for (t = 0; t <= pos; t++) {
                    mx = e->scores[t] > mx ? e->scores[t] : mx;
                }
                for (t = 0; t <= pos; t++) {
                    e->scores[t] = expf(e->scores[t] - mx);
                    sum += e->scores[t];
                }
                inv = 1.0f / sum;
                /* o (hs) = V_h^T (hs, pos+1) @ scores / sum */
                cblas_sgemv(CblasRowMajor, CblasTrans, pos + 1, hs, inv,
                            vc + (size_t) h * hs, C, e->scores, 1, 0.0f, o,
                            1);
            }
        }
        cm_lm_mm(e, 4 * l + 1, e->tmp, e->atty, p->attprojw + lc * C,
                 p->attprojb + lc, R, C, C);
        cm_residual_forward(e->x, e->x, e->tmp, (size_t) R * C);
        cm_lm_layernorm(e, e->xn, e->x, p->ln2w + lc, p->ln2b + lc, R, C);
        cm_lm_mm(e, 4 * l + 2, e->fch, e->xn, p->fcw + lc * 4 * C,
                 p->fcb + lc * 4, R, C, 4 * C);
        if (e->use_packed) {
            cm_lmk_gelu(e->fch, (size_t) R * 4 * C);
        } else {
            cm_gelu_forward(e->fch, e->fch, (size_t) R * 4 * C);
        }
        cm_lm_mm(e, 4 * l + 3, e->tmp, e->fch, p->fcprojw + lc * 4 * C,
                 p->fcprojb + lc, R, 4 * C, C);
        cm_residual_forward(e->x, e->x, e->tmp, (size_t) R * C);
    }
    /* final layernorm and logits only for the rows that sample */
    for (r = 0, S = 0; r < R; r++) {
        if (want[r]) {
            memcpy(e->sel + (size_t) S * C, e->x + (size_t) r * C,
                   (size_t) C * sizeof(float));
            S++;
        }
    }
    if (S == 0) {
        return;
    }
    cm_lm_layernorm(e, e->sel, e->sel, p->lnfw, p->lnfb, S, C);
    cm_lm_mm(e, 4 * L, e->logits, e->sel, p->wte, NULL, S, C, Vp);
    for (r = 0, S = 0; r < R; r++) {
        if (want[r]) {
            cm_lm_seq_t *s = e->row_seq[r];

            memcpy(s->logits, e->logits + (size_t) S * Vp,
                   (size_t) Vp * sizeof(float));
            S++;
        }
    }
}


/* ---- sampling --------------------------------------------------------- */

static uint64_t
cm_lm_rng(uint64_t *s)
{
    uint64_t z = (*s += 0x9E3779B97F4A7C15ull);

    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}


/* Candidate order: higher p first, then the lower id. */
static int
cm_lm_cand_cmp(const void *a, const void *b)
{
    const cm_lm_cand_t *x = a, *y = b;

    if (x->p != y->p) {
        return x->p > y->p ? -1 : 1;
    }
    return x->id < y->id ? -1 : (x->id > y->id);
}


/* a ranks below b (the min-heap's order; the same ranking as cand_cmp) */
static int
cm_lm_cand_below(const cm_lm_cand_t *a, const cm_lm_cand_t *b)
{
    return a->p < b->p || (a->p == b->p && a->id > b->id);
}


static void
cm_lm_heap_down(cm_lm_cand_t *h, int n, int i)
{
    cm_lm_cand_t  t;
    int           c;

    for ( ;; ) {
        c = 2 * i + 1;
        if (c >= n) {
            return;
        }
        if (c + 1 < n && cm_lm_cand_below(&h[c + 1], &h[c])) {
            c++;
        }
        if (!cm_lm_cand_below(&h[c], &h[i])) {
            return;
        }
        t = h[i];
        h[i] = h[c];
        h[c] = t;
        i = c;
    }
}


/* A logit after the repetition penalty (mark 1) or the stop-token mask
 * (mark 2); e->seen holds the marks of the sequence being sampled. */
static inline float
cm_lm_adjusted(float x, uint8_t mark, float pen)
{
    if (mark == 2) {
        return -INFINITY;
    }
    return x > 0.0f ? x / pen : x * pen;
}


/*
 * The k best candidates into c[0..k), best first, in one pass over the
 * logits with a k-entry min-heap: after the first k, a logit only costs a
 * compare against the heap's smallest (no copy of all V candidates, no
 * selection over them).
 */
static int
cm_lm_top_k(cm_lm_cand_t *c, const float *logits, const uint8_t *marks,
    int V, int k, float pen)
{
    cm_lm_cand_t  x;
    int           n = 0, i, j;

    for (i = 0; i < V && n < k; i++) {
        x.p = marks[i] ? cm_lm_adjusted(logits[i], marks[i], pen)
                       : logits[i];
        x.id = i;
        c[n++] = x;
        if (n == k) {
            for (j = k / 2 - 1; j >= 0; j--) {
                cm_lm_heap_down(c, k, j);
            }
        }
    }
    /* the heap is full: only a logit above its smallest can enter (a tie
     * loses, to the lower id already in), unless a mark changes it */
    for ( ; i < V; i++) {
        i = cm_lmk_next_above(logits, marks, i, V, c[0].p);
        if (i >= V) {
            break;
        }
        x.p = marks[i] ? cm_lm_adjusted(logits[i], marks[i], pen)
                       : logits[i];
        x.id = i;
        if (cm_lm_cand_below(&c[0], &x)) {
            c[0] = x;
            cm_lm_heap_down(c, k, 0);
        }
    }
    qsort(c, (size_t) n, sizeof(*c), cm_lm_cand_cmp);
    return n;
}


int32_t
cm_lm_sample(cm_lm_engine_t *e, cm_lm_seq_t *s, const float *logits)
{
    const cm_lm_params_t *p = &s->params;
    int                   V = e->model->config.vocab_size, n = V, i;
    cm_lm_cand_t         *c = e->cand;
    uint8_t              *mk = e->seen;
    float                 mx = -INFINITY, sum = 0.0f, acc, u, pen, x;
    int32_t               best = 0;

    /* marks: 1 repetition penalty (tokens of prompt and output), 2 a stop
     * token that may not come yet; all cleared again before returning */
    pen = p->repetition_penalty;
    if (pen <= 0.0f) {
        pen = 1.0f;
    }
    if (pen != 1.0f) {
        for (i = 0; i < s->pos; i++) {
            mk[s->history[i]] = 1;
        }
    }
    if (s->n_generated < p->min_tokens) {
        for (i = 0; i < p->n_stop; i++) {
            if (p->stop[i] >= 0 && p->stop[i] < V) {
                mk[p->stop[i]] = 2;
            }
        }
    }
    if (p->temperature <= 0.0f) {
        /* greedy: the first of the best */
        for (i = 0; i < V; i++) {
            x = mk[i] ? cm_lm_adjusted(logits[i], mk[i], pen) : logits[i];
            if (i == 0 || x > mx) {
                mx = x;
                best = i;
            }
        }
        goto done;
    }
    if (p->top_k > 0 && p->top_k < V) {
        n = cm_lm_top_k(c, logits, mk, V, p->top_k, pen);
    } else {
        for (i = 0; i < V; i++) {
            c[i].p = mk[i] ? cm_lm_adjusted(logits[i], mk[i], pen)
                           : logits[i];
            c[i].id = i;
        }
        if (p->top_p > 0.0f && p->top_p < 1.0f) {
            qsort(c, (size_t) n, sizeof(*c), cm_lm_cand_cmp);
        }
    }
    for (i = 0; i < n; i++) {
        c[i].p /= p->temperature;
        mx = c[i].p > mx ? c[i].p : mx;
    }
    for (i = 0; i < n; i++) {
        c[i].p = expf(c[i].p - mx);
        sum += c[i].p;
    }
    if (p->top_p > 0.0f && p->top_p < 1.0f) {
        /* c is sorted best first here */
        acc = 0.0f;
        for (i = 0; i < n; i++) {
            acc += c[i].p;
            if (acc >= p->top_p * sum) {
                n = i + 1;
                break;
            }
        }
        sum = acc;
    }
    u = (float) ((double) (cm_lm_rng(&s->rng) >> 11) / 9007199254740992.0)
        * sum;
    acc = 0.0f;
    best = c[n - 1].id;
    for (i = 0; i < n; i++) {
        acc += c[i].p;
        if (u < acc) {
            best = c[i].id;
            break;
        }
    }

done:
    for (i = 0; i < s->pos; i++) {
        mk[s->history[i]] = 0;
    }
    for (i = 0; i < p->n_stop; i++) {
        if (p->stop[i] >= 0 && p->stop[i] < V) {
            mk[p->stop[i]] = 0;
        }
    }
    return best;
}


static int
cm_lm_is_stop(const cm_lm_seq_t *s, int32_t tok)
{
    int i;

    for (i = 0; i < s->params.n_stop; i++) {
        if (s->params.stop[i] == tok) {
            return 1;
        }
    }
    return 0;
}


static void
cm_lm_take(cm_lm_engine_t *e, cm_lm_seq_t *s)
{
    s->next = cm_lm_sample(e, s, s->logits);
    s->n_generated++;
    if (cm_lm_is_stop(s, s->next)) {
        s->finish = CM_LM_STOP;
    }
}


int
cm_lm_prefill(cm_lm_engine_t *e, cm_lm_seq_t *s, const int32_t *tokens,
    int n)
{
    const cm_gpt_config_t *c = &e->model->config;
    uint8_t               *want;
    int                    i, done = 0, R;

    if (n < 1 || s->pos + n > c->max_seq_len || s->finish != CM_LM_RUNNING) {
        return CM_EINVAL;
    }
    for (i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size) {
            return CM_EINVAL;
        }
    }
    want = calloc((size_t) e->max_rows, 1);
    if (want == NULL) {
        return CM_ENOMEM;
    }
    while (done < n) {
        R = n - done < e->max_rows ? n - done : e->max_rows;
        for (i = 0; i < R; i++) {
            e->row_seq[i] = s;
            e->row_tok[i] = tokens[done + i];
            e->row_pos[i] = s->pos + i;
            s->history[s->pos + i] = tokens[done + i];
            want[i] = 0;
        }
        want[R - 1] = done + R == n;
        cm_lm_forward_rows(e, R, want);
        s->pos += R;
        done += R;
    }
    free(want);
    cm_lm_take(e, s);
    return CM_OK;
}


/* Forward of the R gathered rows, then each row's bookkeeping: a decode
 * row feeds its sequence's token and samples the next; a prompt row feeds
 * one prompt token, and the last one of a prompt samples the first token. */
static void
cm_lm_flush(cm_lm_engine_t *e, int R, const uint8_t *want)
{
    cm_lm_seq_t *s;
    int          r;

    cm_lm_forward_rows(e, R, want);
    for (r = 0; r < R; r++) {
        s = e->row_seq[r];
        s->pos++;
        if (e->row_kind[r] != 0) {
            s->pending--;
        }
        if (s->pending == 0) {
            cm_lm_take(e, s);   /* decoded, or the prompt's last token */
        }
    }
}


int
cm_lm_feed(cm_lm_engine_t *e, cm_lm_seq_t *s, const int32_t *tokens, int n)
{
    const cm_gpt_config_t *c = &e->model->config;
    int                    i;

    if (n < 1 || s->pos + n > c->max_seq_len || s->finish != CM_LM_RUNNING
        || s->pending > 0 || s->next >= 0)
    {
        return CM_EINVAL;
    }
    for (i = 0; i < n; i++) {
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size) {
            return CM_EINVAL;
        }
    }
    memcpy(s->history + s->pos, tokens, (size_t) n * sizeof(int32_t));
    s->pending = n;
    return CM_OK;
}


int
cm_lm_step(cm_lm_engine_t *e, cm_lm_seq_t **seqs, int n)
{
    int           i, j, R = 0, running = 0, maxT, cap, budget, left;
    uint8_t       want[256];
    cm_lm_seq_t  *s;

    maxT = e->model->config.max_seq_len;
    cap = e->max_rows < (int) sizeof(want) ? e->max_rows : (int) sizeof(want);
    budget = e->prefill_budget > 0 ? e->prefill_budget : e->max_rows;
    for (i = 0; i < n; i++) {
        s = seqs[i];
        if (s->finish != CM_LM_RUNNING) {
            continue;
        }
        if (s->pending > 0) {
            /* a chunk of its prompt, as far as this step's budget goes;
             * j: rows of s gathered since the last flush (s->pos and
             * s->pending move at the flush) */
            left = s->pending < budget ? s->pending : budget;
            budget -= left;
            for (j = 0; left > 0; left--, j++) {
                if (R == cap) {
                    cm_lm_flush(e, R, want);
                    R = 0;
                    j = 0;
                }
                e->row_seq[R] = s;
                e->row_tok[R] = s->history[s->pos + j];
                e->row_pos[R] = s->pos + j;
                e->row_kind[R] = 1;
                want[R] = j + 1 == s->pending;
                R++;
            }
            continue;
        }
        if (s->next < 0) {
            continue;
        }
        if (s->params.max_tokens > 0
            && s->n_generated >= s->params.max_tokens)
        {
            s->finish = CM_LM_LENGTH;
            continue;
        }
        if (s->pos >= maxT) {
            s->finish = CM_LM_CONTEXT;
            continue;
        }
        if (R == cap) {
            cm_lm_flush(e, R, want);
            R = 0;
        }
        e->row_seq[R] = s;
        e->row_tok[R] = s->next;
        e->row_pos[R] = s->pos;
        e->row_kind[R] = 0;
        want[R] = 1;
        s->history[s->pos] = s->next;
        R++;
    }
    if (R > 0) {
        cm_lm_flush(e, R, want);
    }
    for (i = 0; i < n; i++) {
        running += seqs[i]->finish == CM_LM_RUNNING;
    }
    return running;
}

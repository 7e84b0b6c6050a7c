/*
 * gpt.c: GPT-2 forward, backward and AdamW on the CPU (OpenBLAS SGEMM for
 * every matrix product, attention included), llm.c checkpoint I/O.
 *
 * The plain-loop kernels (*_ref) are the reference the SGEMM kernels are
 * tested against and the baseline `cinematch bench dialog` reports.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cblas.h>

#include "cinematch/common.h"
#include "cinematch/gpt.h"
#include "cinematch/rng.h"


#define CM_GPT_STATE_MAGIC    20240527
#define CM_GPT_STATE_VERSION  1
#define CM_GELU_SCALE         0.7978845608028654f   /* sqrt(2 / pi) */


/* ---- configs and sizes ------------------------------------------------ */

int
cm_gpt_config_named(const char *name, int vocab_size, cm_gpt_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    if (strcmp(name, "dialog-tiny") == 0) {
        /* seconds to train: tests and CI */
        cfg->max_seq_len = 64;
        cfg->vocab_size = 512;
        cfg->num_layers = 2;
        cfg->num_heads = 2;
        cfg->channels = 64;
    } else if (strcmp(name, "dialog-small") == 0) {
        cfg->max_seq_len = 256;
        cfg->vocab_size = 8192;
        cfg->num_layers = 6;
        cfg->num_heads = 6;
        cfg->channels = 384;
    } else if (strcmp(name, "gpt2-124M") == 0) {
        cfg->max_seq_len = 1024;
        cfg->vocab_size = 50257;
        cfg->num_layers = 12;
        cfg->num_heads = 12;
        cfg->channels = 768;
    } else {
        return CM_EINVAL;
    }
    if (vocab_size > 0) {
        cfg->vocab_size = vocab_size;
    }
    cfg->padded_vocab_size = (cfg->vocab_size + 127) / 128 * 128;
    return CM_OK;
}


int
cm_gpt_config_check(const cm_gpt_config_t *c, char *err, size_t errlen)
{
    size_t sizes[CM_GPT_NPARAMS];

    if (c->max_seq_len < 1 || c->max_seq_len > 65536
        || c->vocab_size < 1 || c->vocab_size > (1 << 24)
        || c->padded_vocab_size < c->vocab_size
        || c->padded_vocab_size > (1 << 24)
        || c->num_layers < 1 || c->num_layers > 1024
        || c->num_heads < 1 || c->channels < 1 || c->channels > 65536
        || c->channels % c->num_heads != 0)
    {
        return cm_seterr(err, errlen, CM_EFORMAT, "bad model shape: maxT %d"
                         " V %d Vp %d L %d NH %d C %d", c->max_seq_len,
                         c->vocab_size, c->padded_vocab_size, c->num_layers,
                         c->num_heads, c->channels);
    }
    if (cm_gpt_param_sizes(c, sizes) == 0) {
        return cm_seterr(err, errlen, CM_EFORMAT, "model too large");
    }
    return CM_OK;
}


size_t
cm_gpt_param_sizes(const cm_gpt_config_t *cfg, size_t s[CM_GPT_NPARAMS])
{
    size_t Vp = (size_t) cfg->padded_vocab_size, C = (size_t) cfg->channels;
    size_t maxT = (size_t) cfg->max_seq_len, L = (size_t) cfg->num_layers;
    size_t i, total = 0;

    s[0] = Vp * C;              /* wte */
    s[1] = maxT * C;            /* wpe */
    s[2] = L * C;               /* ln1w */
    s[3] = L * C;               /* ln1b */
    s[4] = L * (3 * C) * C;     /* qkvw */
    s[5] = L * (3 * C);         /* qkvb */
    s[6] = L * C * C;           /* attprojw */
    s[7] = L * C;               /* attprojb */
    s[8] = L * C;               /* ln2w */
    s[9] = L * C;               /* ln2b */
    s[10] = L * (4 * C) * C;    /* fcw */
    s[11] = L * (4 * C);        /* fcb */
    s[12] = L * C * (4 * C);    /* fcprojw */
    s[13] = L * C;              /* fcprojb */
    s[14] = C;                  /* lnfw */
    s[15] = C;                  /* lnfb */
    for (i = 0; i < CM_GPT_NPARAMS; i++) {
        total += s[i];
    }
    /* all factors are bounded by config_check: 1 GiB floats is the limit */
    return total > ((size_t) 1 << 32) ? 0 : total;
}


static float *
cm_carve(float **ptrs[], const size_t *sizes, size_t n, size_t *total)
{
    size_t  i, t = 0;
    float  *mem, *p;

    for (i = 0; i < n; i++) {
        t += sizes[i];
    }
    mem = calloc(t ? t : 1, sizeof(float));
    if (mem == NULL) {
        return NULL;
    }
    for (i = 0, p = mem; i < n; i++) {
        *ptrs[i] = p;
        p += sizes[i];
    }
    if (total != NULL) {
        *total = t;
    }
    return mem;
}


static void
cm_param_ptrs(cm_gpt_params_t *p, float **out[CM_GPT_NPARAMS])
{
    float **a[CM_GPT_NPARAMS] = {
        &p->wte, &p->wpe, &p->ln1w, &p->ln1b, &p->qkvw, &p->qkvb,
        &p->attprojw, &p->attprojb, &p->ln2w, &p->ln2b, &p->fcw, &p->fcb,
        &p->fcprojw, &p->fcprojb, &p->lnfw, &p->lnfb
    };

    memcpy(out, a, sizeof(a));
}


static void
cm_act_ptrs(cm_gpt_acts_t *a, float **out[CM_GPT_NACTS])
{
    float **p[CM_GPT_NACTS] = {
        &a->encoded, &a->ln1, &a->ln1_mean, &a->ln1_rstd, &a->qkv, &a->atty,
        &a->preatt, &a->att, &a->attproj, &a->residual2, &a->ln2,
        &a->ln2_mean, &a->ln2_rstd, &a->fch, &a->fch_gelu, &a->fcproj,
        &a->residual3, &a->lnf, &a->lnf_mean, &a->lnf_rstd, &a->logits,
        &a->probs, &a->losses
    };

    memcpy(out, p, sizeof(p));
}


static void
cm_act_sizes(const cm_gpt_config_t *cfg, int B, int T,
    size_t s[CM_GPT_NACTS])
{
    size_t L = (size_t) cfg->num_layers, NH = (size_t) cfg->num_heads;
    size_t C = (size_t) cfg->channels, Vp = (size_t) cfg->padded_vocab_size;
    size_t BT = (size_t) B * (size_t) T, TT = (size_t) T * (size_t) T;

    s[0] = BT * C;                  /* encoded */
    s[1] = L * BT * C;              /* ln1 */
    s[2] = L * BT;                  /* ln1_mean */
    s[3] = L * BT;                  /* ln1_rstd */
    s[4] = L * BT * 3 * C;          /* qkv */
    s[5] = L * BT * C;              /* atty */
    s[6] = L * (size_t) B * NH * TT; /* preatt */
    s[7] = L * (size_t) B * NH * TT; /* att */
    s[8] = L * BT * C;              /* attproj */
    s[9] = L * BT * C;              /* residual2 */
    s[10] = L * BT * C;             /* ln2 */
    s[11] = L * BT;                 /* ln2_mean */
    s[12] = L * BT;                 /* ln2_rstd */
    s[13] = L * BT * 4 * C;         /* fch */
    s[14] = L * BT * 4 * C;         /* fch_gelu */
    s[15] = L * BT * C;             /* fcproj */
    s[16] = L * BT * C;             /* residual3 */
    s[17] = BT * C;                 /* lnf */
    s[18] = BT;                     /* lnf_mean */
    s[19] = BT;                     /* lnf_rstd */
    s[20] = BT * Vp;                /* logits */
    s[21] = BT * Vp;                /* probs */
    s[22] = BT;                     /* losses */
}


void
cm_gpt_act_sizes(const cm_gpt_config_t *cfg, int B, int T,
    size_t sizes[CM_GPT_NACTS])
{
    cm_act_sizes(cfg, B, T, sizes);
}


/* Pure pointer arithmetic (no allocation, no access): usable for device
 * memory too (gpt_cuda.cu carves its allocation with these). */
void
cm_gpt_point_params(cm_gpt_params_t *p, float *mem,
    const size_t sizes[CM_GPT_NPARAMS])
{
    float **ptrs[CM_GPT_NPARAMS];
    size_t  i;

    cm_param_ptrs(p, ptrs);
    for (i = 0; i < CM_GPT_NPARAMS; i++) {
        *ptrs[i] = mem;
        mem += sizes[i];
    }
}


void
cm_gpt_point_acts(cm_gpt_acts_t *a, float *mem,
    const size_t sizes[CM_GPT_NACTS])
{
    float **ptrs[CM_GPT_NACTS];
    size_t  i;

    cm_act_ptrs(a, ptrs);
    for (i = 0; i < CM_GPT_NACTS; i++) {
        *ptrs[i] = mem;
        mem += sizes[i];
    }
}


/* ---- init / free ------------------------------------------------------ */

static float
cm_gpt_normal(uint64_t *s)
{
    double u1 = ((double) (cm_splitmix64(s) >> 11) + 1.0)
                / 9007199254740993.0;
    double u2 = (double) (cm_splitmix64(s) >> 11) / 9007199254740992.0;

    return (float) (sqrt(-2.0 * log(u1)) * cos(2.0 * M_PI * u2));
}


static int
cm_gpt_alloc_params(cm_gpt_t *m, const cm_gpt_config_t *cfg)
{
    float **ptrs[CM_GPT_NPARAMS];

    memset(m, 0, sizeof(*m));
    m->config = *cfg;
    m->mean_loss = -1.0f;
    if (cm_gpt_config_check(cfg, NULL, 0) != CM_OK) {
        return CM_EINVAL;
    }
    m->num_parameters = cm_gpt_param_sizes(cfg, m->param_sizes);
    cm_param_ptrs(&m->params, ptrs);
    m->params_memory = cm_carve(ptrs, m->param_sizes, CM_GPT_NPARAMS, NULL);
    return m->params_memory != NULL ? CM_OK : CM_ENOMEM;
}


int
cm_gpt_init(cm_gpt_t *m, const cm_gpt_config_t *cfg, uint64_t seed)
{
    int     rc, i;
    size_t  k, C, L;
    float **ptrs[CM_GPT_NPARAMS], std;
    uint64_t rng = seed;

    if ((rc = cm_gpt_alloc_params(m, cfg)) != CM_OK) {
        return rc;
    }
    C = (size_t) cfg->channels;
    L = (size_t) cfg->num_layers;
    cm_param_ptrs(&m->params, ptrs);
    for (i = 0; i < CM_GPT_NPARAMS; i++) {
        float *p = *ptrs[i];
        size_t n = m->param_sizes[i];

        switch (i) {
        case 2: case 8: case 14:          /* LayerNorm weights */
            for (k = 0; k < n; k++) {
                p[k] = 1.0f;
            }
            break;
        case 0: case 1: case 4: case 6: case 10: case 12:
            std = 0.02f;
            if (i == 6 || i == 12) {      /* residual projections */
                std = 0.02f / sqrtf(2.0f * (float) L);
            }
            if (i == 0) {                 /* padded rows stay zero */
                n = (size_t) cfg->vocab_size * C;
            }
            for (k = 0; k < n; k++) {
                p[k] = std * cm_gpt_normal(&rng);
            }
            break;
        default:                          /* biases */
            break;
        }
    }
    return CM_OK;
}


void
cm_gpt_free(cm_gpt_t *m)
{
    free(m->params_memory);
    free(m->grads_memory);
    free(m->m_memory);
    free(m->v_memory);
    free(m->acts_memory);
    free(m->grads_acts_memory);
    free(m->inputs);
    free(m->targets);
    memset(m, 0, sizeof(*m));
}


/* ---- checkpoints ------------------------------------------------------ */

int
cm_gpt_header_parse(const int32_t *h, size_t file_size, cm_gpt_config_t *cfg,
    char *err, size_t errlen)
{
    size_t sizes[CM_GPT_NPARAMS], n;
    int    rc;

    memset(cfg, 0, sizeof(*cfg));
    if (file_size < CM_GPT_HEADER_INTS * sizeof(int32_t)) {
        return cm_seterr(err, errlen, CM_EFORMAT, "checkpoint shorter than"
                         " its %d-byte header", CM_GPT_HEADER_INTS * 4);
    }
    if (h[0] != CM_GPT_MAGIC) {
        return cm_seterr(err, errlen, CM_EFORMAT, "bad magic %d (want %d)",
                         h[0], CM_GPT_MAGIC);
    }
    if (h[1] != CM_GPT_VERSION_FP32) {
        return cm_seterr(err, errlen, CM_EFORMAT, "version %d not supported"
                         " (3 = fp32 only; 5 = bf16 is not)", h[1]);
    }
    memset(cfg, 0, sizeof(*cfg));
    cfg->max_seq_len = h[2];
    cfg->vocab_size = h[3];
    cfg->num_layers = h[4];
    cfg->num_heads = h[5];
    cfg->channels = h[6];
    cfg->padded_vocab_size = h[7];
    if ((rc = cm_gpt_config_check(cfg, err, errlen)) != CM_OK) {
        return rc;
    }
    n = cm_gpt_param_sizes(cfg, sizes);
    if (file_size != CM_GPT_HEADER_INTS * sizeof(int32_t)
                     + n * sizeof(float))
    {
        return cm_seterr(err, errlen, CM_EFORMAT, "checkpoint is %zu bytes;"
                         " its header says %zu", file_size,
                         CM_GPT_HEADER_INTS * sizeof(int32_t)
                         + n * sizeof(float));
    }
    return CM_OK;
}


int
cm_gpt_load(cm_gpt_t *m, const char *path, char *err, size_t errlen)
{
    FILE            *f;
    int32_t          h[CM_GPT_HEADER_INTS] = { 0 };
    struct stat      st;
    cm_gpt_config_t  cfg;
    size_t           i;
    int              rc;

    f = fopen(path, "rb");
    if (f == NULL) {
        return cm_seterr(err, errlen, errno == ENOENT ? CM_ENOTFOUND : CM_EIO,
                         "%s: %s", path, strerror(errno));
    }
    if (fstat(fileno(f), &st) != 0
        || fread(h, sizeof(int32_t), CM_GPT_HEADER_INTS, f)
           != CM_GPT_HEADER_INTS)
    {
        fclose(f);
        return cm_seterr(err, errlen, CM_EFORMAT, "%s: short header", path);
    }
    rc = cm_gpt_header_parse(h, (size_t) st.st_size, &cfg, err, errlen);
    if (rc != CM_OK) {
        fclose(f);
        return rc;
    }
    if ((rc = cm_gpt_alloc_params(m, &cfg)) != CM_OK) {
        fclose(f);
        return cm_seterr(err, errlen, rc, "%s: out of memory", path);
    }
    if (fread(m->params_memory, sizeof(float), m->num_parameters, f)
        != m->num_parameters)
    {
        fclose(f);
        cm_gpt_free(m);
        return cm_seterr(err, errlen, CM_EIO, "%s: short read", path);
    }
    fclose(f);
    for (i = 0; i < m->num_parameters; i++) {
        if (!isfinite(m->params_memory[i])) {
            cm_gpt_free(m);
            return cm_seterr(err, errlen, CM_EFORMAT, "%s: parameter %zu is"
                             " not finite", path, i);
        }
    }
    return CM_OK;
}


static int
cm_write_all(FILE *f, const void *p, size_t size, size_t n)
{
    return fwrite(p, size, n, f) == n ? CM_OK : CM_EIO;
}


/* Writes path.tmp, then renames: a crash never leaves half a checkpoint. */
int
cm_gpt_save(const cm_gpt_t *m, const char *path, char *err, size_t errlen)
{
    int32_t  h[CM_GPT_HEADER_INTS];
    char     tmp[4096];
    FILE    *f;
    int      rc;

    memset(h, 0, sizeof(h));
    h[0] = CM_GPT_MAGIC;
    h[1] = CM_GPT_VERSION_FP32;
    h[2] = m->config.max_seq_len;
    h[3] = m->config.vocab_size;
    h[4] = m->config.num_layers;
    h[5] = m->config.num_heads;
    h[6] = m->config.channels;
    h[7] = m->config.padded_vocab_size;
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    f = fopen(tmp, "wb");
    if (f == NULL) {
        return cm_seterr(err, errlen, CM_EIO, "%s: %s", tmp, strerror(errno));
    }
    rc = cm_write_all(f, h, sizeof(int32_t), CM_GPT_HEADER_INTS);
    if (rc == CM_OK) {
        rc = cm_write_all(f, m->params_memory, sizeof(float),
                          m->num_parameters);
    }
    if (fclose(f) != 0 || rc != CM_OK || rename(tmp, path) != 0) {
        unlink(tmp);
        return cm_seterr(err, errlen, CM_EIO, "%s: write failed", path);
    }
    return CM_OK;
}


/*
 * State file: int32 header[256] = { 20240527, 1, step, nparams_lo,
 * nparams_hi, 0... } then m (nparams fp32) then v (nparams fp32).
 */
int
cm_gpt_save_state(const cm_gpt_t *m, int step, const char *path, char *err,
    size_t errlen)
{
    int32_t  h[CM_GPT_HEADER_INTS];
    char     tmp[4096];
    FILE    *f;
    int      rc;

    if (m->m_memory == NULL) {
        return cm_seterr(err, errlen, CM_EINVAL, "no optimizer state yet");
    }
    memset(h, 0, sizeof(h));
    h[0] = CM_GPT_STATE_MAGIC;
    h[1] = CM_GPT_STATE_VERSION;
    h[2] = step;
    h[3] = (int32_t) (m->num_parameters & 0x7FFFFFFF);
    h[4] = (int32_t) (m->num_parameters >> 31);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    f = fopen(tmp, "wb");
    if (f == NULL) {
        return cm_seterr(err, errlen, CM_EIO, "%s: %s", tmp, strerror(errno));
    }
    rc = cm_write_all(f, h, sizeof(int32_t), CM_GPT_HEADER_INTS);
    if (rc == CM_OK) {
        rc = cm_write_all(f, m->m_memory, sizeof(float), m->num_parameters);
    }
    if (rc == CM_OK) {
        rc = cm_write_all(f, m->v_memory, sizeof(float), m->num_parameters);
    }
    if (fclose(f) != 0 || rc != CM_OK || rename(tmp, path) != 0) {
        unlink(tmp);
        return cm_seterr(err, errlen, CM_EIO, "%s: write failed", path);
    }
    return CM_OK;
}


int
cm_gpt_load_state(cm_gpt_t *m, int *step, const char *path, char *err,
    size_t errlen)
{
    int32_t      h[CM_GPT_HEADER_INTS];
    FILE        *f;
    struct stat  st;
    size_t       np = m->num_parameters;

    f = fopen(path, "rb");
    if (f == NULL) {
        return cm_seterr(err, errlen, CM_ENOTFOUND, "%s: %s", path,
                         strerror(errno));
    }
    if (fstat(fileno(f), &st) != 0
        || fread(h, sizeof(int32_t), CM_GPT_HEADER_INTS, f)
           != CM_GPT_HEADER_INTS
        || h[0] != CM_GPT_STATE_MAGIC || h[1] != CM_GPT_STATE_VERSION
        || h[2] < 0
        || (size_t) h[3] + ((size_t) h[4] << 31) != np
        || (size_t) st.st_size != sizeof(h) + 2 * np * sizeof(float))
    {
        fclose(f);
        return cm_seterr(err, errlen, CM_EFORMAT, "%s: not an optimizer"
                         " state for this model", path);
    }
    if (m->m_memory == NULL) {
        m->m_memory = calloc(np, sizeof(float));
        m->v_memory = calloc(np, sizeof(float));
        if (m->m_memory == NULL || m->v_memory == NULL) {
            fclose(f);
            return cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
        }
    }
    if (fread(m->m_memory, sizeof(float), np, f) != np
        || fread(m->v_memory, sizeof(float), np, f) != np)
    {
        fclose(f);
        return cm_seterr(err, errlen, CM_EIO, "%s: short read", path);
    }
    fclose(f);
    *step = h[2];
    return CM_OK;
}


/* ---- kernels ---------------------------------------------------------- */

void
cm_encoder_forward(float *out, const int *inp, const float *wte,
    const float *wpe, int B, int T, int C)
{
    int b, t, i;

    for (b = 0; b < B; b++) {
        for (t = 0; t < T; t++) {
            float       *o = out + ((size_t) b * T + t) * C;
            const float *we = wte + (size_t) inp[b * T + t] * C;
            const float *pe = wpe + (size_t) t * C;

            for (i = 0; i < C; i++) {
                o[i] = we[i] + pe[i];
            }
        }
    }
}


void
cm_encoder_backward(float *dwte, float *dwpe, const float *dout,
    const int *inp, int B, int T, int C)
{
    int b, t, i;

    for (b = 0; b < B; b++) {
        for (t = 0; t < T; t++) {
            const float *d = dout + ((size_t) b * T + t) * C;
            float       *dwe = dwte + (size_t) inp[b * T + t] * C;
            float       *dpe = dwpe + (size_t) t * C;

            for (i = 0; i < C; i++) {
                dwe[i] += d[i];
                dpe[i] += d[i];
            }
        }
    }
}


void
cm_layernorm_forward(float *out, float *mean, float *rstd, const float *inp,
    const float *weight, const float *bias, int N, int C)
{
    int n, i;

    for (n = 0; n < N; n++) {
        const float *x = inp + (size_t) n * C;
        float       *o = out + (size_t) n * C;
        float        m = 0.0f, v = 0.0f, s;

        for (i = 0; i < C; i++) {
            m += x[i];
        }
        m /= (float) C;
        for (i = 0; i < C; i++) {
            float d = x[i] - m;

            v += d * d;
        }
        v /= (float) C;
        s = 1.0f / sqrtf(v + 1e-5f);
        for (i = 0; i < C; i++) {
            o[i] = (s * (x[i] - m)) * weight[i] + bias[i];
        }
        if (mean != NULL) {
            mean[n] = m;
            rstd[n] = s;
        }
    }
}


void
cm_layernorm_backward(float *dinp, float *dweight, float *dbias,
    const float *dout, const float *inp, const float *weight,
    const float *mean, const float *rstd, int N, int C)
{
    int n, i;

    for (n = 0; n < N; n++) {
        const float *d = dout + (size_t) n * C, *x = inp + (size_t) n * C;
        float       *dx = dinp + (size_t) n * C;
        float        m = mean[n], s = rstd[n], dnorm_mean = 0.0f;
        float        dnorm_norm_mean = 0.0f;

        for (i = 0; i < C; i++) {
            float norm = (x[i] - m) * s, dnorm = weight[i] * d[i];

            dnorm_mean += dnorm;
            dnorm_norm_mean += dnorm * norm;
        }
        dnorm_mean /= (float) C;
        dnorm_norm_mean /= (float) C;
        for (i = 0; i < C; i++) {
            float norm = (x[i] - m) * s, dnorm = weight[i] * d[i];

            dbias[i] += d[i];
            dweight[i] += norm * d[i];
            dx[i] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * s;
        }
    }
}


void
cm_matmul_forward(float *out, const float *inp, const float *weight,
    const float *bias, int N, int C, int OC)
{
    int n, o;

    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, N, OC, C, 1.0f,
                inp, C, weight, C, 0.0f, out, OC);
    if (bias != NULL) {
        for (n = 0; n < N; n++) {
            float *row = out + (size_t) n * OC;

            for (o = 0; o < OC; o++) {
                row[o] += bias[o];
            }
        }
    }
}


void
cm_matmul_backward(float *dinp, float *dweight, float *dbias,
    const float *dout, const float *inp, const float *weight, int N, int C,
    int OC)
{
    int n, o;

    /* dinp (N, C) += dout (N, OC) @ weight (OC, C) */
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, N, C, OC, 1.0f,
                dout, OC, weight, C, 1.0f, dinp, C);
    /* dweight (OC, C) += dout^T (OC, N) @ inp (N, C) */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, N, 1.0f,
                dout, OC, inp, C, 1.0f, dweight, C);
    if (dbias != NULL) {
        for (n = 0; n < N; n++) {
            const float *row = dout + (size_t) n * OC;

            for (o = 0; o < OC; o++) {
                dbias[o] += row[o];
            }
        }
    }
}


void
cm_matmul_forward_ref(float *out, const float *inp, const float *weight,
    const float *bias, int N, int C, int OC)
{
    int n, o, i;

    for (n = 0; n < N; n++) {
        const float *x = inp + (size_t) n * C;

        for (o = 0; o < OC; o++) {
            const float *w = weight + (size_t) o * C;
            float        v = bias != NULL ? bias[o] : 0.0f;

            for (i = 0; i < C; i++) {
                v += x[i] * w[i];
            }
            out[(size_t) n * OC + o] = v;
        }
    }
}


void
cm_matmul_backward_ref(float *dinp, float *dweight, float *dbias,
    const float *dout, const float *inp, const float *weight, int N, int C,
    int OC)
{
    int n, o, i;

    for (n = 0; n < N; n++) {
        const float *d = dout + (size_t) n * OC, *x = inp + (size_t) n * C;
        float       *dx = dinp + (size_t) n * C;

        for (o = 0; o < OC; o++) {
            const float *w = weight + (size_t) o * C;
            float       *dw = dweight + (size_t) o * C;
            float        g = d[o];

            for (i = 0; i < C; i++) {
                dx[i] += w[i] * g;
                dw[i] += x[i] * g;
            }
            if (dbias != NULL) {
                dbias[o] += g;
            }
        }
    }
}


/* Causal softmax of each row of preatt (T, T) into att; zero above. */
static void
cm_causal_softmax(float *att, const float *preatt, int T)
{
    int t, j;

    for (t = 0; t < T; t++) {
        const float *p = preatt + (size_t) t * T;
        float       *a = att + (size_t) t * T;
        float        mx = -INFINITY, sum = 0.0f, inv;

        for (j = 0; j <= t; j++) {
            mx = p[j] > mx ? p[j] : mx;
        }
        for (j = 0; j <= t; j++) {
            a[j] = expf(p[j] - mx);
            sum += a[j];
        }
        inv = 1.0f / sum;
        for (j = 0; j <= t; j++) {
            a[j] *= inv;
        }
        for (j = t + 1; j < T; j++) {
            a[j] = 0.0f;
        }
    }
}


void
cm_attention_forward(float *out, float *preatt, float *att, const float *inp,
    int B, int T, int C, int NH)
{
    int    b, h, hs = C / NH, C3 = 3 * C;
    float  scale = 1.0f / sqrtf((float) hs);

    for (b = 0; b < B; b++) {
        for (h = 0; h < NH; h++) {
            const float *q = inp + (size_t) b * T * C3 + (size_t) h * hs;
            const float *k = q + C, *v = q + 2 * (size_t) C;
            float       *pre = preatt + ((size_t) b * NH + h) * T * T;
            float       *a = att + ((size_t) b * NH + h) * T * T;
            float       *o = out + (size_t) b * T * C + (size_t) h * hs;

            /* pre (T, T) = scale * q (T, hs) @ k^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs,
                        scale, q, C3, k, C3, 0.0f, pre, T);
            cm_causal_softmax(a, pre, T);
            /* o (T, hs) = a (T, T) @ v (T, hs) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T,
                        1.0f, a, T, v, C3, 0.0f, o, C);
        }
    }
}


void
cm_attention_backward(float *dinp, float *dpreatt, float *datt,
    const float *dout, const float *inp, const float *att, int B, int T,
    int C, int NH)
{
    int    b, h, t, j, hs = C / NH, C3 = 3 * C;
    float  scale = 1.0f / sqrtf((float) hs);

    for (b = 0; b < B; b++) {
        for (h = 0; h < NH; h++) {
            size_t       qo = (size_t) b * T * C3 + (size_t) h * hs;
            const float *q = inp + qo, *k = q + C, *v = q + 2 * (size_t) C;
            float       *dq = dinp + qo, *dk = dq + C;
            float       *dv = dq + 2 * (size_t) C;
            const float *a = att + ((size_t) b * NH + h) * T * T;
            float       *da = datt + ((size_t) b * NH + h) * T * T;
            float       *dp = dpreatt + ((size_t) b * NH + h) * T * T;
            const float *d = dout + (size_t) b * T * C + (size_t) h * hs;

            /* da (T, T) = d (T, hs) @ v^T */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, T, T, hs,
                        1.0f, d, C, v, C3, 0.0f, da, T);
            /* dv (T, hs) += a^T (T, T) @ d (T, hs) */
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T,
                        1.0f, a, T, d, C, 1.0f, dv, C3);
            /* softmax backward, scale folded in; zero above the diagonal */
            for (t = 0; t < T; t++) {
                const float *ar = a + (size_t) t * T;
                const float *dar = da + (size_t) t * T;
                float       *dpr = dp + (size_t) t * T, dot = 0.0f;

                for (j = 0; j <= t; j++) {
                    dot += ar[j] * dar[j];
                }
                for (j = 0; j <= t; j++) {
                    dpr[j] = ar[j] * (dar[j] - dot) * scale;
                }
                for (j = t + 1; j < T; j++) {
                    dpr[j] = 0.0f;
                }
            }
            /* dq (T, hs) += dp (T, T) @ k (T, hs); dk += dp^T @ q */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, T, hs, T,
                        1.0f, dp, T, k, C3, 1.0f, dq, C3);
            cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, T, hs, T,
                        1.0f, dp, T, q, C3, 1.0f, dk, C3);
        }
    }
}


void
cm_attention_forward_ref(float *out, float *preatt, float *att,
    const float *inp, int B, int T, int C, int NH)
{
    int    b, t, h, t2, i, hs = C / NH, C3 = 3 * C;
    float  scale = 1.0f / sqrtf((float) hs);

    for (b = 0; b < B; b++) {
        for (t = 0; t < T; t++) {
            for (h = 0; h < NH; h++) {
                const float *q = inp + ((size_t) b * T + t) * C3
                                 + (size_t) h * hs;
                float *pre = preatt + (((size_t) b * NH + h) * T + t) * T;
                float *a = att + (((size_t) b * NH + h) * T + t) * T;
                float *o = out + ((size_t) b * T + t) * C + (size_t) h * hs;
                float  mx = -INFINITY, sum = 0.0f;

                for (t2 = 0; t2 < T; t2++) {
                    const float *k = inp + ((size_t) b * T + t2) * C3
                                     + (size_t) h * hs + C;
                    float v = 0.0f;

                    for (i = 0; i < hs; i++) {
                        v += q[i] * k[i];
                    }
                    pre[t2] = v * scale;
                    if (t2 <= t && pre[t2] > mx) {
                        mx = pre[t2];
                    }
                }
                for (t2 = 0; t2 < T; t2++) {
                    a[t2] = t2 <= t ? expf(pre[t2] - mx) : 0.0f;
                    sum += a[t2];
                }
                for (t2 = 0; t2 < T; t2++) {
                    a[t2] /= sum;
                }
                for (i = 0; i < hs; i++) {
                    o[i] = 0.0f;
                }
                for (t2 = 0; t2 <= t; t2++) {
                    const float *v = inp + ((size_t) b * T + t2) * C3
                                     + (size_t) h * hs + 2 * (size_t) C;

                    for (i = 0; i < hs; i++) {
                        o[i] += a[t2] * v[i];
                    }
                }
            }
        }
    }
}


void
cm_attention_backward_ref(float *dinp, float *dpreatt, float *datt,
    const float *dout, const float *inp, const float *att, int B, int T,
    int C, int NH)
{
    int    b, t, h, t2, t3, i, hs = C / NH, C3 = 3 * C;
    float  scale = 1.0f / sqrtf((float) hs);

    for (b = 0; b < B; b++) {
        for (t = 0; t < T; t++) {
            for (h = 0; h < NH; h++) {
                size_t       row = (((size_t) b * NH + h) * T + t) * T;
                const float *a = att + row;
                float       *da = datt + row, *dp = dpreatt + row;
                const float *q = inp + ((size_t) b * T + t) * C3
                                 + (size_t) h * hs;
                float       *dq = dinp + ((size_t) b * T + t) * C3
                                  + (size_t) h * hs;
                const float *d = dout + ((size_t) b * T + t) * C
                                 + (size_t) h * hs;

                for (t2 = 0; t2 < T; t2++) {
                    da[t2] = 0.0f;
                    dp[t2] = 0.0f;
                }
                for (t2 = 0; t2 <= t; t2++) {
                    size_t vo = ((size_t) b * T + t2) * C3
                                + (size_t) h * hs + 2 * (size_t) C;

                    for (i = 0; i < hs; i++) {
                        da[t2] += inp[vo + i] * d[i];
                        dinp[vo + i] += a[t2] * d[i];
                    }
                }
                for (t2 = 0; t2 <= t; t2++) {
                    for (t3 = 0; t3 <= t; t3++) {
                        float ind = t2 == t3 ? 1.0f : 0.0f;

                        dp[t3] += a[t2] * (ind - a[t3]) * da[t2];
                    }
                }
                for (t2 = 0; t2 <= t; t2++) {
                    size_t ko = ((size_t) b * T + t2) * C3
                                + (size_t) h * hs + C;

                    for (i = 0; i < hs; i++) {
                        dq[i] += inp[ko + i] * dp[t2] * scale;
                        dinp[ko + i] += q[i] * dp[t2] * scale;
                    }
                }
            }
        }
    }
}


/* tanh through one expf: glibc's tanhf and coshf (expm1f inside) were 15%
 * of a dialog-small training step in perf; this form saturates cleanly
 * (expf overflow gives 1, underflow -1). */
static inline float
cm_tanh(float a)
{
    return 1.0f - 2.0f / (expf(2.0f * a) + 1.0f);
}


void
cm_gelu_forward(float *out, const float *inp, size_t N)
{
    size_t i;

    for (i = 0; i < N; i++) {
        float x = inp[i], cube = 0.044715f * x * x * x;

        out[i] = 0.5f * x * (1.0f + cm_tanh(CM_GELU_SCALE * (x + cube)));
    }
}


void
cm_gelu_backward(float *dinp, const float *inp, const float *dout, size_t N)
{
    size_t i;

    for (i = 0; i < N; i++) {
        float x = inp[i], cube = 0.044715f * x * x * x;
        float ta = CM_GELU_SCALE * (x + cube), th = cm_tanh(ta);
        float sech2 = 1.0f - th * th;
        float g = 0.5f * (1.0f + th) + x * 0.5f * sech2 * CM_GELU_SCALE
                  * (1.0f + 3.0f * 0.044715f * x * x);

        dinp[i] += g * dout[i];
    }
}


void
cm_residual_forward(float *out, const float *inp1, const float *inp2,
    size_t N)
{
    size_t i;

    for (i = 0; i < N; i++) {
        out[i] = inp1[i] + inp2[i];
    }
}


void
cm_residual_backward(float *dinp1, float *dinp2, const float *dout, size_t N)
{
    size_t i;

    for (i = 0; i < N; i++) {
        dinp1[i] += dout[i];
        dinp2[i] += dout[i];
    }
}


void
cm_softmax_forward(float *probs, const float *logits, int N, int V, int Vp)
{
    int n, i;

    for (n = 0; n < N; n++) {
        const float *l = logits + (size_t) n * Vp;
        float       *p = probs + (size_t) n * Vp;
        float        mx = -INFINITY, sum = 0.0f, inv;

        for (i = 0; i < V; i++) {
            mx = l[i] > mx ? l[i] : mx;
        }
        for (i = 0; i < V; i++) {
            p[i] = expf(l[i] - mx);
            sum += p[i];
        }
        inv = 1.0f / sum;
        for (i = 0; i < V; i++) {
            p[i] *= inv;
        }
        for (i = V; i < Vp; i++) {
            p[i] = 0.0f;
        }
    }
}


void
cm_crossentropy_forward(float *losses, const float *probs,
    const int *targets, int N, int Vp)
{
    int n;

    for (n = 0; n < N; n++) {
        float p = probs[(size_t) n * Vp + targets[n]];

        losses[n] = -logf(p > 1e-30f ? p : 1e-30f);
    }
}


void
cm_crossentropy_softmax_backward(float *dlogits, const float *dlosses,
    const float *probs, const int *targets, int N, int V, int Vp)
{
    int n, i;

    for (n = 0; n < N; n++) {
        float       *dl = dlogits + (size_t) n * Vp;
        const float *p = probs + (size_t) n * Vp;
        float        d = dlosses[n];

        for (i = 0; i < V; i++) {
            dl[i] += (p[i] - (i == targets[n] ? 1.0f : 0.0f)) * d;
        }
    }
}


/* ---- model forward / backward ----------------------------------------- */

static int
cm_gpt_ensure_acts(cm_gpt_t *m, int B, int T)
{
    float **ptrs[CM_GPT_NACTS];

    /* per-layer offsets use the current (B, T), so any smaller shape
     * fits in what was allocated for a larger one */
    if (m->acts_memory != NULL && B <= m->batch_size && T <= m->seq_len) {
        return CM_OK;
    }
    if (m->acts_memory != NULL) {
        B = B > m->batch_size ? B : m->batch_size;
        T = T > m->seq_len ? T : m->seq_len;
    }
    free(m->acts_memory);
    free(m->grads_acts_memory);
    free(m->inputs);
    free(m->targets);
    m->grads_acts_memory = NULL;
    cm_act_sizes(&m->config, B, T, m->act_sizes);
    cm_act_ptrs(&m->acts, ptrs);
    m->acts_memory = cm_carve(ptrs, m->act_sizes, CM_GPT_NACTS,
                              &m->num_activations);
    m->inputs = malloc((size_t) B * T * sizeof(int));
    m->targets = malloc((size_t) B * T * sizeof(int));
    if (m->acts_memory == NULL || m->inputs == NULL || m->targets == NULL) {
        free(m->acts_memory);
        m->acts_memory = NULL;
        return CM_ENOMEM;
    }
    m->batch_size = B;
    m->seq_len = T;
    return CM_OK;
}


int
cm_gpt_forward(cm_gpt_t *m, const int *inputs, const int *targets, int B,
    int T)
{
    int              L, NH, C, V, Vp, l, i, rc, N;
    cm_gpt_params_t *p = &m->params;
    cm_gpt_acts_t   *a = &m->acts;
    float           *res;
    size_t           BT;
    void (*mm)(float *, const float *, const float *, const float *, int,
               int, int);
    void (*attn)(float *, float *, float *, const float *, int, int, int,
                 int);

    L = m->config.num_layers;
    NH = m->config.num_heads;
    C = m->config.channels;
    V = m->config.vocab_size;
    Vp = m->config.padded_vocab_size;
    if (B < 1 || T < 1 || T > m->config.max_seq_len) {
        return CM_EINVAL;
    }
    for (i = 0; i < B * T; i++) {
        if (inputs[i] < 0 || inputs[i] >= V
            || (targets != NULL && (targets[i] < 0 || targets[i] >= V)))
        {
            return CM_EINVAL;
        }
    }
    if ((rc = cm_gpt_ensure_acts(m, B, T)) != CM_OK) {
        return rc;
    }
    /* activations are sized for batch_size; use B rows of them */
    memcpy(m->inputs, inputs, (size_t) B * T * sizeof(int));
    if (targets != NULL) {
        memcpy(m->targets, targets, (size_t) B * T * sizeof(int));
    }
    m->last_B = B;
    m->last_T = T;
    mm = m->use_ref ? cm_matmul_forward_ref : cm_matmul_forward;
    attn = m->use_ref ? cm_attention_forward_ref : cm_attention_forward;
    BT = (size_t) B * T;
    N = (int) BT;

    cm_encoder_forward(a->encoded, inputs, p->wte, p->wpe, B, T, C);
    for (l = 0; l < L; l++) {
        size_t  lc = (size_t) l * C, lbtc = (size_t) l * BT * C;
        size_t  lbt = (size_t) l * BT;
        size_t  latt = (size_t) l * B * NH * T * T;

        res = l == 0 ? a->encoded : a->residual3 + (lbtc - BT * C);
        cm_layernorm_forward(a->ln1 + lbtc, a->ln1_mean + lbt,
                             a->ln1_rstd + lbt, res, p->ln1w + lc,
                             p->ln1b + lc, N, C);
        mm(a->qkv + lbtc * 3, a->ln1 + lbtc, p->qkvw + lc * 3 * C,
           p->qkvb + lc * 3, N, C, 3 * C);
        attn(a->atty + lbtc, a->preatt + latt, a->att + latt,
             a->qkv + lbtc * 3, B, T, C, NH);
        mm(a->attproj + lbtc, a->atty + lbtc, p->attprojw + lc * C,
           p->attprojb + lc, N, C, C);
        cm_residual_forward(a->residual2 + lbtc, res, a->attproj + lbtc,
                            BT * C);
        cm_layernorm_forward(a->ln2 + lbtc, a->ln2_mean + lbt,
                             a->ln2_rstd + lbt, a->residual2 + lbtc,
                             p->ln2w + lc, p->ln2b + lc, N, C);
        mm(a->fch + lbtc * 4, a->ln2 + lbtc, p->fcw + lc * 4 * C,
           p->fcb + lc * 4, N, C, 4 * C);
        cm_gelu_forward(a->fch_gelu + lbtc * 4, a->fch + lbtc * 4,
                        BT * 4 * C);
        mm(a->fcproj + lbtc, a->fch_gelu + lbtc * 4, p->fcprojw + lc * 4 * C,
           p->fcprojb + lc, N, 4 * C, C);
        cm_residual_forward(a->residual3 + lbtc, a->residual2 + lbtc,
                            a->fcproj + lbtc, BT * C);
    }
    res = a->residual3 + (size_t) (L - 1) * BT * C;
    cm_layernorm_forward(a->lnf, a->lnf_mean, a->lnf_rstd, res, p->lnfw,
                         p->lnfb, N, C);
    mm(a->logits, a->lnf, p->wte, NULL, N, C, Vp);
    cm_softmax_forward(a->probs, a->logits, N, V, Vp);
    if (targets != NULL) {
        float sum = 0.0f;

        cm_crossentropy_forward(a->losses, a->probs, targets, N, Vp);
        for (i = 0; i < N; i++) {
            sum += a->losses[i];
        }
        m->mean_loss = sum / (float) N;
    } else {
        m->mean_loss = -1.0f;
    }
    return CM_OK;
}


void
cm_gpt_zero_grad(cm_gpt_t *m)
{
    if (m->grads_memory != NULL) {
        memset(m->grads_memory, 0, m->num_parameters * sizeof(float));
    }
}


int
cm_gpt_backward(cm_gpt_t *m, float grad_scale)
{
    int              L, NH, C, V, Vp, l, i, B, T, N;
    cm_gpt_params_t *p = &m->params, *g = &m->grads;
    cm_gpt_acts_t   *a = &m->acts, *ga = &m->grads_acts;
    float          **ptrs[CM_GPT_NACTS], **pp[CM_GPT_NPARAMS];
    float           *res, *dres;
    size_t           BT;
    void (*mmb)(float *, float *, float *, const float *, const float *,
                const float *, int, int, int);
    void (*attnb)(float *, float *, float *, const float *, const float *,
                  const float *, int, int, int, int);

    if (m->mean_loss < 0.0f) {
        return CM_EINVAL;    /* forward had no targets */
    }
    if (m->grads_memory == NULL) {
        cm_param_ptrs(&m->grads, pp);
        m->grads_memory = cm_carve(pp, m->param_sizes, CM_GPT_NPARAMS, NULL);
        if (m->grads_memory == NULL) {
            return CM_ENOMEM;
        }
    }
    if (m->grads_acts_memory == NULL) {
        cm_act_ptrs(&m->grads_acts, ptrs);
        m->grads_acts_memory = cm_carve(ptrs, m->act_sizes, CM_GPT_NACTS,
                                        NULL);
        if (m->grads_acts_memory == NULL) {
            return CM_ENOMEM;
        }
    } else {
        memset(m->grads_acts_memory, 0, m->num_activations * sizeof(float));
    }
    L = m->config.num_layers;
    NH = m->config.num_heads;
    C = m->config.channels;
    V = m->config.vocab_size;
    Vp = m->config.padded_vocab_size;
    B = m->last_B;
    T = m->last_T;
    BT = (size_t) B * T;
    N = (int) BT;
    mmb = m->use_ref ? cm_matmul_backward_ref : cm_matmul_backward;
    attnb = m->use_ref ? cm_attention_backward_ref : cm_attention_backward;

    /* d mean_loss / d loss_i */
    for (i = 0; i < N; i++) {
        ga->losses[i] = grad_scale / (float) N;
    }
    cm_crossentropy_softmax_backward(ga->logits, ga->losses, a->probs,
                                     m->targets, N, V, Vp);
    mmb(ga->lnf, g->wte, NULL, ga->logits, a->lnf, p->wte, N, C, Vp);
    res = a->residual3 + (size_t) (L - 1) * BT * C;
    dres = ga->residual3 + (size_t) (L - 1) * BT * C;
    cm_layernorm_backward(dres, g->lnfw, g->lnfb, ga->lnf, res, p->lnfw,
                          a->lnf_mean, a->lnf_rstd, N, C);
    for (l = L - 1; l >= 0; l--) {
        size_t  lc = (size_t) l * C, lbtc = (size_t) l * BT * C;
        size_t  lbt = (size_t) l * BT;
        size_t  latt = (size_t) l * B * NH * T * T;

        res = l == 0 ? a->encoded : a->residual3 + (lbtc - BT * C);
        dres = l == 0 ? ga->encoded : ga->residual3 + (lbtc - BT * C);

        cm_residual_backward(ga->residual2 + lbtc, ga->fcproj + lbtc,
                             ga->residual3 + lbtc, BT * C);
        mmb(ga->fch_gelu + lbtc * 4, g->fcprojw + lc * 4 * C,
            g->fcprojb + lc, ga->fcproj + lbtc, a->fch_gelu + lbtc * 4,
            p->fcprojw + lc * 4 * C, N, 4 * C, C);
        cm_gelu_backward(ga->fch + lbtc * 4, a->fch + lbtc * 4,
                         ga->fch_gelu + lbtc * 4, BT * 4 * C);
        mmb(ga->ln2 + lbtc, g->fcw + lc * 4 * C, g->fcb + lc * 4,
            ga->fch + lbtc * 4, a->ln2 + lbtc, p->fcw + lc * 4 * C, N, C,
            4 * C);
        cm_layernorm_backward(ga->residual2 + lbtc, g->ln2w + lc,
                              g->ln2b + lc, ga->ln2 + lbtc,
                              a->residual2 + lbtc, p->ln2w + lc,
                              a->ln2_mean + lbt, a->ln2_rstd + lbt, N, C);
        cm_residual_backward(dres, ga->attproj + lbtc, ga->residual2 + lbtc,
                             BT * C);
        mmb(ga->atty + lbtc, g->attprojw + lc * C, g->attprojb + lc,
            ga->attproj + lbtc, a->atty + lbtc, p->attprojw + lc * C, N, C,
            C);
        attnb(ga->qkv + lbtc * 3, ga->preatt + latt, ga->att + latt,
              ga->atty + lbtc, a->qkv + lbtc * 3, a->att + latt, B, T, C,
              NH);
        mmb(ga->ln1 + lbtc, g->qkvw + lc * 3 * C, g->qkvb + lc * 3,
            ga->qkv + lbtc * 3, a->ln1 + lbtc, p->qkvw + lc * 3 * C, N, C,
            3 * C);
        cm_layernorm_backward(dres, g->ln1w + lc, g->ln1b + lc,
                              ga->ln1 + lbtc, res, p->ln1w + lc,
                              a->ln1_mean + lbt, a->ln1_rstd + lbt, N, C);
    }
    cm_encoder_backward(g->wte, g->wpe, ga->encoded, m->inputs, B, T, C);
    return CM_OK;
}


float
cm_gpt_clip_grad(cm_gpt_t *m, float max_norm)
{
    return cm_grad_clip(m->grads_memory, m->num_parameters, max_norm);
}


int
cm_gpt_update(cm_gpt_t *m, const cm_adamw_t *o)
{
    /* matrices decay (wte, wpe, qkvw, attprojw, fcw, fcprojw); biases and
     * LayerNorm parameters do not */
    uint32_t  decay = CM_GPT_DECAY_MASK;

    return cm_adamw_step(m->params_memory, m->grads_memory, &m->m_memory,
                         &m->v_memory, m->num_parameters, m->param_sizes,
                         CM_GPT_NPARAMS, decay, o);
}


float
cm_lr_cosine(int step, int warmup, int total, float lr_max, float lr_min)
{
    float r;

    if (step < warmup) {
        return lr_max * (float) (step + 1) / (float) warmup;
    }
    if (step >= total) {
        return lr_min;
    }
    r = (float) (step - warmup) / (float) (total - warmup > 0
                                           ? total - warmup : 1);
    return lr_min + 0.5f * (lr_max - lr_min) * (1.0f + cosf((float) M_PI
                                                            * r));
}

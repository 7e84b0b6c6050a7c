/*
 * lstm.c: the baseline LSTM language model: forward, backward through time
 * and AdamW on the CPU (OpenBLAS SGEMM for the gate products and the
 * output layer), checkpoint I/O, one-token-at-a-time decoding.
 *
 * Per layer and batch (B, T), with X the layer input (B, T, In):
 *   G = X Wih^T + b                 one SGEMM over all B*T rows
 *   for t: G_t += h_{t-1} Whh^T     one SGEMM over the B rows of step t
 *          i, f, o = sigmoid, g = tanh (in place in G)
 *          c_t = f c_{t-1} + i g,  h_t = o tanh(c_t)
 * The backward pass runs t downwards for the pointwise part and the
 * recurrent dh (one SGEMM per step), then gets dWhh, dWih, db and dX as
 * three SGEMMs over all rows (hprev keeps h_{t-1} beside h_t for that).
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
#include "cinematch/lstm.h"
#include "cinematch/rng.h"


#define CM_LSTM_STATE_MAGIC    20251126
#define CM_LSTM_STATE_VERSION  1


static int cm_lstm_alloc_params(cm_lstm_t *m, const cm_lstm_config_t *cfg);
static void cm_lstm_carve(float **ptrs[], const size_t *sizes, size_t n,
    float *base);
static void cm_lstm_param_ptrs(cm_lstm_params_t *p,
    float **out[CM_LSTM_NPARAMS]);
static int cm_lstm_ensure_acts(cm_lstm_t *m, int B, int T);
static float cm_lstm_uniform(uint64_t *s, float k);
static float cm_sigmoid(float x);
static const float *cm_lstm_wih(const cm_lstm_params_t *p,
    const cm_lstm_config_t *c, int l);
static int cm_write_all(FILE *f, const void *p, size_t size, size_t n);


/* ---- configs and sizes ------------------------------------------------ */

int
cm_lstm_config_named(const char *name, int vocab_size, cm_lstm_config_t *cfg)
{
    memset(cfg, 0, sizeof(*cfg));
    if (strcmp(name, "lstm-tiny") == 0) {
        /* the shape class of dialog-tiny: tests and CI */
        cfg->max_seq_len = 64;
        cfg->vocab_size = 512;
        cfg->embed_dim = 64;
        cfg->hidden = 64;
        cfg->num_layers = 2;
    } else if (strcmp(name, "lstm-small") == 0) {
        /* beside dialog-small: similar FLOPs per token */
        cfg->max_seq_len = 256;
        cfg->vocab_size = 8192;
        cfg->embed_dim = 512;
        cfg->hidden = 512;
        cfg->num_layers = 2;
    } else {
        return CM_EINVAL;
    }
    cfg->tied = 1;
    if (vocab_size > 0) {
        cfg->vocab_size = vocab_size;
    }
    return CM_OK;
}


size_t
cm_lstm_param_sizes(const cm_lstm_config_t *c, size_t s[CM_LSTM_NPARAMS])
{
    size_t V, E, H, L, total = 0, k;

    if (c->vocab_size < 1 || c->embed_dim < 1 || c->hidden < 1
        || c->num_layers < 1 || c->vocab_size > (1 << 24)
        || c->embed_dim > 65536 || c->hidden > 65536
        || c->num_layers > 1024)
    {
        return 0;
    }
    V = (size_t) c->vocab_size;
    E = (size_t) c->embed_dim;
    H = (size_t) c->hidden;
    L = (size_t) c->num_layers;
    s[0] = V * E;                     /* wte */
    s[1] = 4 * H * E;                 /* wih0 */
    s[2] = (L - 1) * 4 * H * H;       /* wihr */
    s[3] = L * 4 * H * H;             /* whh */
    s[4] = L * 4 * H;                 /* bias */
    s[5] = c->tied ? 0 : V * H;       /* wout */
    s[6] = V;                         /* bout */
    for (k = 0; k < CM_LSTM_NPARAMS; k++) {
        total += s[k];
    }
    /* the bounds above keep every product far from size_t overflow, but a
     * model over 2^31 parameters is not one this code is meant for */
    return total > ((size_t) 1 << 31) ? 0 : total;
}


int
cm_lstm_config_check(const cm_lstm_config_t *c, char *err, size_t errlen)
{
    size_t sizes[CM_LSTM_NPARAMS];

    if (c->max_seq_len < 1 || c->max_seq_len > 65536
        || (c->tied != 0 && c->tied != 1)
        || (c->tied && c->embed_dim != c->hidden)
        || cm_lstm_param_sizes(c, sizes) == 0)
    {
        return cm_seterr(err, errlen, CM_EFORMAT, "bad LSTM shape: maxT %d"
                         " V %d E %d H %d L %d tied %d", c->max_seq_len,
                         c->vocab_size, c->embed_dim, c->hidden,
                         c->num_layers, c->tied);
    }
    return CM_OK;
}


static void
cm_lstm_carve(float **ptrs[], const size_t *sizes, size_t n, float *base)
{
    size_t i, off = 0;

    for (i = 0; i < n; i++) {
        *ptrs[i] = base + off;
        off += sizes[i];
    }
}


static void
cm_lstm_param_ptrs(cm_lstm_params_t *p, float **out[CM_LSTM_NPARAMS])
{
    out[0] = &p->wte;
    out[1] = &p->wih0;
    out[2] = &p->wihr;
    out[3] = &p->whh;
    out[4] = &p->bias;
    out[5] = &p->wout;
    out[6] = &p->bout;
}


/* Input weights of layer l: (4H, E) for layer 0, (4H, H) above. */
static const float *
cm_lstm_wih(const cm_lstm_params_t *p, const cm_lstm_config_t *c, int l)
{
    return l == 0 ? p->wih0
                  : p->wihr + (size_t) (l - 1) * 4 * c->hidden * c->hidden;
}


static int
cm_lstm_alloc_params(cm_lstm_t *m, const cm_lstm_config_t *cfg)
{
    float **ptrs[CM_LSTM_NPARAMS];

    memset(m, 0, sizeof(*m));
    m->config = *cfg;
    m->num_parameters = cm_lstm_param_sizes(cfg, m->param_sizes);
    if (m->num_parameters == 0) {
        return CM_EINVAL;
    }
    m->params_memory = calloc(m->num_parameters, sizeof(float));
    if (m->params_memory == NULL) {
        return CM_ENOMEM;
    }
    cm_lstm_param_ptrs(&m->params, ptrs);
    cm_lstm_carve(ptrs, m->param_sizes, CM_LSTM_NPARAMS, m->params_memory);
    m->mean_loss = -1.0f;
    return CM_OK;
}


/* uniform in [-k, k) */
static float
cm_lstm_uniform(uint64_t *s, float k)
{
    return ((float) (cm_splitmix64(s) >> 40) / (float) (1 << 24) * 2.0f
            - 1.0f) * k;
}


/*
 * Init as PyTorch's nn.LSTM (U(-1/sqrt(H), 1/sqrt(H)) for the gate
 * weights) with the forget-gate bias at 1 (Jozefowicz et al. 2015), the
 * embeddings and an untied output U(-0.1, 0.1) (the usual word-LM init,
 * which keeps the first logits small: loss starts near ln V).
 */
int
cm_lstm_init(cm_lstm_t *m, const cm_lstm_config_t *cfg, uint64_t seed)
{
    uint64_t  s = seed * 0x2545F4914F6CDD1Dull + 1;
    size_t    i, n;
    float     k;
    int       l, j, H, rc;

    if (cm_lstm_config_check(cfg, NULL, 0) != CM_OK) {
        return CM_EINVAL;
    }
    if ((rc = cm_lstm_alloc_params(m, cfg)) != CM_OK) {
        return rc;
    }
    H = cfg->hidden;
    k = 1.0f / sqrtf((float) H);
    for (i = 0; i < m->param_sizes[0]; i++) {
        m->params.wte[i] = cm_lstm_uniform(&s, 0.1f);
    }
    n = m->param_sizes[1] + m->param_sizes[2] + m->param_sizes[3];
    for (i = 0; i < n; i++) {
        m->params.wih0[i] = cm_lstm_uniform(&s, k);   /* wih0, wihr, whh */
    }
    for (l = 0; l < cfg->num_layers; l++) {
        for (j = 0; j < H; j++) {
            m->params.bias[(size_t) l * 4 * H + H + j] = 1.0f;
        }
    }
    for (i = 0; i < m->param_sizes[5]; i++) {
        m->params.wout[i] = cm_lstm_uniform(&s, 0.1f);
    }
    return CM_OK;
}


void
cm_lstm_free(cm_lstm_t *m)
{
    free(m->params_memory);
    free(m->grads_memory);
    free(m->m_memory);
    free(m->v_memory);
    free(m->acts_memory);
    free(m->losses);
    free(m->scratch);
    free(m->inputs);
    free(m->targets);
    memset(m, 0, sizeof(*m));
}


/* ---- checkpoints ------------------------------------------------------ */

int
cm_lstm_header_parse(const int32_t *h, size_t file_size,
    cm_lstm_config_t *cfg, char *err, size_t errlen)
{
    size_t  sizes[CM_LSTM_NPARAMS], n;
    int     rc, i;

    memset(cfg, 0, sizeof(*cfg));
    if (file_size < CM_LSTM_HEADER_INTS * sizeof(int32_t)) {
        return cm_seterr(err, errlen, CM_EFORMAT, "checkpoint shorter than"
                         " its %d-byte header", CM_LSTM_HEADER_INTS * 4);
    }
    if (h[0] != CM_LSTM_MAGIC) {
        return cm_seterr(err, errlen, CM_EFORMAT, "bad magic %d (want %d)",
                         h[0], CM_LSTM_MAGIC);
    }
    if (h[1] != CM_LSTM_VERSION) {
        return cm_seterr(err, errlen, CM_EFORMAT, "LSTM checkpoint version"
                         " %d not supported (want %d)", h[1],
                         CM_LSTM_VERSION);
    }
    for (i = 8; i < CM_LSTM_HEADER_INTS; i++) {
        if (h[i] != 0) {
            return cm_seterr(err, errlen, CM_EFORMAT, "header field %d is"
                             " %d, want 0", i, h[i]);
        }
    }
    cfg->max_seq_len = h[2];
    cfg->vocab_size = h[3];
    cfg->embed_dim = h[4];
    cfg->hidden = h[5];
    cfg->num_layers = h[6];
    cfg->tied = h[7];
    if ((rc = cm_lstm_config_check(cfg, err, errlen)) != CM_OK) {
        return rc;
    }
    n = cm_lstm_param_sizes(cfg, sizes);
    if (file_size != CM_LSTM_HEADER_INTS * sizeof(int32_t)
                     + n * sizeof(float))
    {
        return cm_seterr(err, errlen, CM_EFORMAT, "checkpoint is %zu bytes;"
                         " its header says %zu", file_size,
                         CM_LSTM_HEADER_INTS * sizeof(int32_t)
                         + n * sizeof(float));
    }
    return CM_OK;
}


int
cm_lstm_is_checkpoint(const char *path)
{
    FILE    *f = fopen(path, "rb");
    int32_t  magic = 0;
    int      ok;

    if (f == NULL) {
        return 0;
    }
    ok = fread(&magic, sizeof(magic), 1, f) == 1 && magic == CM_LSTM_MAGIC;
    fclose(f);
    return ok;
}


int
cm_lstm_load(cm_lstm_t *m, const char *path, char *err, size_t errlen)
{
    FILE              *f;
    int32_t            h[CM_LSTM_HEADER_INTS] = { 0 };
    struct stat        st;
    cm_lstm_config_t   cfg;
    size_t             i;
    int                rc;

    memset(m, 0, sizeof(*m));
    f = fopen(path, "rb");
    if (f == NULL) {
        return cm_seterr(err, errlen, errno == ENOENT ? CM_ENOTFOUND : CM_EIO,
                         "%s: %s", path, strerror(errno));
    }
    if (fstat(fileno(f), &st) != 0
        || fread(h, sizeof(int32_t), CM_LSTM_HEADER_INTS, f)
           != CM_LSTM_HEADER_INTS)
    {
        fclose(f);
        return cm_seterr(err, errlen, CM_EFORMAT, "%s: no LSTM checkpoint"
                         " header", path);
    }
    rc = cm_lstm_header_parse(h, (size_t) st.st_size, &cfg, err, errlen);
    if (rc != CM_OK) {
        fclose(f);
        return rc;
    }
    if ((rc = cm_lstm_alloc_params(m, &cfg)) != CM_OK) {
        fclose(f);
        return cm_seterr(err, errlen, rc, "%s: out of memory", path);
    }
    if (fread(m->params_memory, sizeof(float), m->num_parameters, f)
        != m->num_parameters)
    {
        fclose(f);
        cm_lstm_free(m);
        return cm_seterr(err, errlen, CM_EIO, "%s: short read", path);
    }
    fclose(f);
    for (i = 0; i < m->num_parameters; i++) {
        if (!isfinite(m->params_memory[i])) {
            cm_lstm_free(m);
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
cm_lstm_save(const cm_lstm_t *m, const char *path, char *err, size_t errlen)
{
    int32_t  h[CM_LSTM_HEADER_INTS];
    char     tmp[4096];
    FILE    *f;
    int      rc;

    memset(h, 0, sizeof(h));
    h[0] = CM_LSTM_MAGIC;
    h[1] = CM_LSTM_VERSION;
    h[2] = m->config.max_seq_len;
    h[3] = m->config.vocab_size;
    h[4] = m->config.embed_dim;
    h[5] = m->config.hidden;
    h[6] = m->config.num_layers;
    h[7] = m->config.tied;
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    f = fopen(tmp, "wb");
    if (f == NULL) {
        return cm_seterr(err, errlen, CM_EIO, "%s: %s", tmp, strerror(errno));
    }
    rc = cm_write_all(f, h, sizeof(int32_t), CM_LSTM_HEADER_INTS);
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


int
cm_lstm_save_state(const cm_lstm_t *m, int step, const char *path,
    char *err, size_t errlen)
{
    int32_t  h[CM_LSTM_HEADER_INTS];
    char     tmp[4096];
    FILE    *f;
    int      rc;

    if (m->m_memory == NULL) {
        return cm_seterr(err, errlen, CM_EINVAL, "no optimizer state yet");
    }
    memset(h, 0, sizeof(h));
    h[0] = CM_LSTM_STATE_MAGIC;
    h[1] = CM_LSTM_STATE_VERSION;
    h[2] = step;
    h[3] = (int32_t) (m->num_parameters & 0x7FFFFFFF);
    h[4] = (int32_t) (m->num_parameters >> 31);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    f = fopen(tmp, "wb");
    if (f == NULL) {
        return cm_seterr(err, errlen, CM_EIO, "%s: %s", tmp, strerror(errno));
    }
    rc = cm_write_all(f, h, sizeof(int32_t), CM_LSTM_HEADER_INTS);
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
cm_lstm_load_state(cm_lstm_t *m, int *step, const char *path, char *err,
    size_t errlen)
{
    int32_t      h[CM_LSTM_HEADER_INTS];
    FILE        *f;
    struct stat  st;
    size_t       np = m->num_parameters;

    f = fopen(path, "rb");
    if (f == NULL) {
        return cm_seterr(err, errlen, CM_ENOTFOUND, "%s: %s", path,
                         strerror(errno));
    }
    if (fstat(fileno(f), &st) != 0
        || fread(h, sizeof(int32_t), CM_LSTM_HEADER_INTS, f)
           != CM_LSTM_HEADER_INTS
        || h[0] != CM_LSTM_STATE_MAGIC || h[1] != CM_LSTM_STATE_VERSION
        || h[2] < 0 || h[3] < 0 || h[4] < 0
        || (size_t) h[3] + ((size_t) h[4] << 31) != np
        || (size_t) st.st_size != sizeof(h) + 2 * np * sizeof(float))
    {
        fclose(f);
        return cm_seterr(err, errlen, CM_EFORMAT, "%s: not an optimizer"
                         " state for this LSTM", path);
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


/* ---- one layer -------------------------------------------------------- */

static float
cm_sigmoid(float x)
{
    return 1.0f / (1.0f + expf(-x));
}


void
cm_lstm_layer_forward(float *gates, float *c, float *tc, float *h,
    float *hprev, const float *x, const float *wih, const float *whh,
    const float *bias, int B, int T, int In, int H)
{
    size_t  G = 4 * (size_t) H;
    int     b, t, j;

    /* gates (B*T, 4H) = x (B*T, In) @ wih^T (In, 4H) + bias */
    cm_matmul_forward(gates, x, wih, bias, B * T, In, 4 * H);
    for (t = 0; t < T; t++) {
        if (t > 0) {
            /* gates[:, t] (B, 4H) += hprev[:, t] (B, H) @ whh^T; rows of
             * one step are T apart */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, B, 4 * H, H,
                        1.0f, hprev + (size_t) t * H, T * H, whh, H, 1.0f,
                        gates + (size_t) t * G, (int) (T * G));
        }
        for (b = 0; b < B; b++) {
            size_t       r = (size_t) b * T + t;
            float       *g = gates + r * G;
            float       *cr = c + r * H, *tr = tc + r * H, *hr = h + r * H;
            const float *cp = t > 0 ? c + (r - 1) * H : NULL;

            for (j = 0; j < H; j++) {
                float ig = cm_sigmoid(g[j]);
                float fg = cm_sigmoid(g[H + j]);
                float gg = tanhf(g[2 * H + j]);
                float og = cm_sigmoid(g[3 * H + j]);
                float cv = ig * gg + (cp != NULL ? fg * cp[j] : 0.0f);

                g[j] = ig;
                g[H + j] = fg;
                g[2 * H + j] = gg;
                g[3 * H + j] = og;
                cr[j] = cv;
                tr[j] = tanhf(cv);
                hr[j] = og * tr[j];
            }
            if (t == 0) {
                memset(hprev + r * H, 0, (size_t) H * sizeof(float));
            }
            if (t + 1 < T) {
                memcpy(hprev + (r + 1) * H, hr, (size_t) H * sizeof(float));
            }
        }
    }
}


void
cm_lstm_layer_backward(float *dx, float *dwih, float *dwhh, float *dbias,
    float *dgates, float *dh_next, float *dc_next, const float *dh,
    const float *x, const float *gates, const float *c, const float *tc,
    const float *hprev, const float *wih, const float *whh, int B, int T,
    int In, int H)
{
    size_t  G = 4 * (size_t) H;
    int     b, t, j;

    memset(dc_next, 0, (size_t) B * H * sizeof(float));
    for (t = T - 1; t >= 0; t--) {
        if (t + 1 < T) {
            /* dh_next (B, H) = dgates[:, t+1] (B, 4H) @ whh (4H, H) */
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, B, H,
                        4 * H, 1.0f, dgates + (size_t) (t + 1) * G,
                        (int) (T * G), whh, H, 0.0f, dh_next, H);
        } else {
            memset(dh_next, 0, (size_t) B * H * sizeof(float));
        }
        for (b = 0; b < B; b++) {
            size_t       r = (size_t) b * T + t;
            const float *g = gates + r * G;
            const float *tr = tc + r * H, *dhr = dh + r * H;
            const float *cp = t > 0 ? c + (r - 1) * H : NULL;
            float       *dg = dgates + r * G;
            float       *dhn = dh_next + (size_t) b * H;
            float       *dcn = dc_next + (size_t) b * H;

            for (j = 0; j < H; j++) {
                float ig = g[j], fg = g[H + j], gg = g[2 * H + j];
                float og = g[3 * H + j], tv = tr[j];
                float d = dhr[j] + dhn[j];
                float dc = dcn[j] + d * og * (1.0f - tv * tv);

                dg[j] = dc * gg * ig * (1.0f - ig);
                dg[H + j] = cp != NULL ? dc * cp[j] * fg * (1.0f - fg)
                                       : 0.0f;
                dg[2 * H + j] = dc * ig * (1.0f - gg * gg);
                dg[3 * H + j] = d * tv * og * (1.0f - og);
                dcn[j] = dc * fg;
            }
        }
    }
    /* dwhh (4H, H) += dgates^T (4H, B*T) @ hprev (B*T, H); hprev is zero
     * at t = 0, so those rows add nothing */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, 4 * H, H, B * T,
                1.0f, dgates, 4 * H, hprev, H, 1.0f, dwhh, H);
    /* dx += dgates @ wih, dwih += dgates^T x, dbias += colsum(dgates) */
    cm_matmul_backward(dx, dwih, dbias, dgates, x, wih, B * T, In, 4 * H);
}


/* ---- model forward / backward ----------------------------------------- */

static int
cm_lstm_ensure_acts(cm_lstm_t *m, int B, int T)
{
    float  **ptrs[CM_LSTM_NACTS];
    size_t   BT = (size_t) B * T, E = (size_t) m->config.embed_dim;
    size_t   H = (size_t) m->config.hidden, L = (size_t) m->config.num_layers;
    size_t   V = (size_t) m->config.vocab_size, n = 0, k;
    size_t   X = E > H ? E : H;

    if (B <= m->batch_size && T <= m->seq_len && m->acts_memory != NULL) {
        return CM_OK;
    }
    free(m->acts_memory);
    free(m->losses);
    free(m->scratch);
    free(m->inputs);
    free(m->targets);
    m->acts_memory = NULL;
    m->scratch = NULL;
    m->act_sizes[0] = BT * E;             /* emb */
    m->act_sizes[1] = L * BT * 4 * H;     /* gates */
    m->act_sizes[2] = L * BT * H;         /* c */
    m->act_sizes[3] = L * BT * H;         /* tc */
    m->act_sizes[4] = L * BT * H;         /* h */
    m->act_sizes[5] = L * BT * H;         /* hprev */
    m->act_sizes[6] = BT * V;             /* logits */
    m->act_sizes[7] = BT * V;             /* probs */
    for (k = 0; k < CM_LSTM_NACTS; k++) {
        n += m->act_sizes[k];
    }
    m->scratch_size = BT * 4 * H + 2 * BT * X + BT * V + 2 * (size_t) B * H;
    m->acts_memory = malloc(n * sizeof(float));
    m->losses = malloc(BT * sizeof(float));
    m->inputs = malloc(BT * sizeof(int));
    m->targets = malloc(BT * sizeof(int));
    if (m->acts_memory == NULL || m->losses == NULL || m->inputs == NULL
        || m->targets == NULL)
    {
        free(m->acts_memory);
        free(m->losses);
        free(m->inputs);
        free(m->targets);
        m->acts_memory = NULL;
        m->losses = NULL;
        m->inputs = m->targets = NULL;
        m->batch_size = m->seq_len = 0;
        return CM_ENOMEM;
    }
    m->num_activations = n;
    ptrs[0] = &m->acts.emb;
    ptrs[1] = &m->acts.gates;
    ptrs[2] = &m->acts.c;
    ptrs[3] = &m->acts.tc;
    ptrs[4] = &m->acts.h;
    ptrs[5] = &m->acts.hprev;
    ptrs[6] = &m->acts.logits;
    ptrs[7] = &m->acts.probs;
    cm_lstm_carve(ptrs, m->act_sizes, CM_LSTM_NACTS, m->acts_memory);
    m->batch_size = B;
    m->seq_len = T;
    return CM_OK;
}


int
cm_lstm_forward(cm_lstm_t *m, const int *inputs, const int *targets, int B,
    int T)
{
    const cm_lstm_config_t *cf = &m->config;
    const cm_lstm_params_t *p = &m->params;
    size_t  BT, E = (size_t) cf->embed_dim, H = (size_t) cf->hidden;
    size_t  V = (size_t) cf->vocab_size, i, lo;
    int     L = cf->num_layers, l, rc;
    double  sum = 0.0;

    if (B < 1 || T < 1 || T > cf->max_seq_len) {
        return CM_EINVAL;
    }
    BT = (size_t) B * T;
    for (i = 0; i < BT; i++) {
        if (inputs[i] < 0 || (size_t) inputs[i] >= V
            || (targets != NULL && (targets[i] < 0
                                    || (size_t) targets[i] >= V)))
        {
            return CM_EINVAL;
        }
    }
    if ((rc = cm_lstm_ensure_acts(m, B, T)) != CM_OK) {
        return rc;
    }
    m->last_B = B;
    m->last_T = T;
    memcpy(m->inputs, inputs, BT * sizeof(int));
    if (targets != NULL) {
        memcpy(m->targets, targets, BT * sizeof(int));
    }
    for (i = 0; i < BT; i++) {
        memcpy(m->acts.emb + i * E, p->wte + (size_t) inputs[i] * E,
               E * sizeof(float));
    }
    for (l = 0; l < L; l++) {
        lo = (size_t) l * BT;
        cm_lstm_layer_forward(m->acts.gates + lo * 4 * H, m->acts.c + lo * H,
                              m->acts.tc + lo * H, m->acts.h + lo * H,
                              m->acts.hprev + lo * H,
                              l == 0 ? m->acts.emb
                                     : m->acts.h + (lo - BT) * H,
                              cm_lstm_wih(p, cf, l),
                              p->whh + (size_t) l * 4 * H * H,
                              p->bias + (size_t) l * 4 * H, B, T,
                              l == 0 ? (int) E : (int) H, (int) H);
    }
    cm_matmul_forward(m->acts.logits, m->acts.h + (size_t) (L - 1) * BT * H,
                      cf->tied ? p->wte : p->wout, p->bout, (int) BT,
                      (int) H, (int) V);
    if (targets == NULL) {
        m->mean_loss = -1.0f;
        return CM_OK;
    }
    cm_softmax_forward(m->acts.probs, m->acts.logits, (int) BT, (int) V,
                       (int) V);
    cm_crossentropy_forward(m->losses, m->acts.probs, targets, (int) BT,
                            (int) V);
    for (i = 0; i < BT; i++) {
        sum += m->losses[i];
    }
    m->mean_loss = (float) (sum / (double) BT);
    return CM_OK;
}


void
cm_lstm_zero_grad(cm_lstm_t *m)
{
    if (m->grads_memory != NULL) {
        memset(m->grads_memory, 0, m->num_parameters * sizeof(float));
    }
}


int
cm_lstm_backward(cm_lstm_t *m, float grad_scale)
{
    const cm_lstm_config_t *cf = &m->config;
    const cm_lstm_params_t *p = &m->params;
    cm_lstm_params_t       *g = &m->grads;
    float                 **ptrs[CM_LSTM_NPARAMS];
    int     B = m->last_B, T = m->last_T, L = cf->num_layers, l;
    size_t  BT = (size_t) B * T, E = (size_t) cf->embed_dim;
    size_t  H = (size_t) cf->hidden, V = (size_t) cf->vocab_size, i, lo;
    size_t  X = E > H ? E : H;
    float  *dgates, *dh, *dx, *dlogits, *dh_next, *dc_next, *tmp, dl;

    if (m->mean_loss < 0.0f || m->acts_memory == NULL) {
        return CM_EINVAL;      /* no forward with targets yet */
    }
    if (m->grads_memory == NULL) {
        m->grads_memory = calloc(m->num_parameters, sizeof(float));
        if (m->grads_memory == NULL) {
            return CM_ENOMEM;
        }
        cm_lstm_param_ptrs(g, ptrs);
        cm_lstm_carve(ptrs, m->param_sizes, CM_LSTM_NPARAMS, m->grads_memory);
    }
    if (m->scratch == NULL) {
        m->scratch = malloc(m->scratch_size * sizeof(float));
        if (m->scratch == NULL) {
            return CM_ENOMEM;
        }
    }
    dgates = m->scratch;
    dh = dgates + BT * 4 * H;
    dx = dh + BT * X;
    dlogits = dx + BT * X;
    dh_next = dlogits + BT * V;
    dc_next = dh_next + (size_t) B * H;

    /* loss -> logits -> top hidden state */
    dl = grad_scale / (float) BT;
    for (i = 0; i < BT; i++) {
        m->losses[i] = dl;          /* dlosses, the losses are spent */
    }
    memset(dlogits, 0, BT * V * sizeof(float));
    cm_crossentropy_softmax_backward(dlogits, m->losses, m->acts.probs,
                                     m->targets, (int) BT, (int) V, (int) V);
    memset(dh, 0, BT * H * sizeof(float));
    cm_matmul_backward(dh, cf->tied ? g->wte : g->wout, g->bout, dlogits,
                       m->acts.h + (size_t) (L - 1) * BT * H,
                       cf->tied ? p->wte : p->wout, (int) BT, (int) H,
                       (int) V);
    /* layers top down; dx of layer l is dh of layer l-1 */
    for (l = L - 1; l >= 0; l--) {
        size_t in = l == 0 ? E : H;

        lo = (size_t) l * BT;
        memset(dx, 0, BT * in * sizeof(float));
        cm_lstm_layer_backward(dx,
                               l == 0 ? g->wih0
                                      : g->wihr + (size_t) (l - 1) * 4 * H
                                                  * H,
                               g->whh + (size_t) l * 4 * H * H,
                               g->bias + (size_t) l * 4 * H, dgates, dh_next,
                               dc_next, dh,
                               l == 0 ? m->acts.emb
                                      : m->acts.h + (lo - BT) * H,
                               m->acts.gates + lo * 4 * H,
                               m->acts.c + lo * H, m->acts.tc + lo * H,
                               m->acts.hprev + lo * H, cm_lstm_wih(p, cf, l),
                               p->whh + (size_t) l * 4 * H * H, B, T,
                               (int) in, (int) H);
        tmp = dh;
        dh = dx;
        dx = tmp;
    }
    /* embedding rows: dh now holds d emb (B*T, E) */
    for (i = 0; i < BT; i++) {
        float       *row = g->wte + (size_t) m->inputs[i] * E;
        const float *d = dh + i * E;
        size_t       j;

        for (j = 0; j < E; j++) {
            row[j] += d[j];
        }
    }
    return CM_OK;
}


float
cm_lstm_clip_grad(cm_lstm_t *m, float max_norm)
{
    return cm_grad_clip(m->grads_memory, m->num_parameters, max_norm);
}


int
cm_lstm_update(cm_lstm_t *m, const cm_adamw_t *o)
{
    /* matrices decay; the biases (bias, bout) do not */
    uint32_t  decay = ((1u << CM_LSTM_NPARAMS) - 1) & ~(1u << 4 | 1u << 6);

    return cm_adamw_step(m->params_memory, m->grads_memory, &m->m_memory,
                         &m->v_memory, m->num_parameters, m->param_sizes,
                         CM_LSTM_NPARAMS, decay, o);
}


/* ---- decoding --------------------------------------------------------- */

int
cm_lstm_state_init(cm_lstm_state_t *s, const cm_lstm_t *m)
{
    size_t L = (size_t) m->config.num_layers, H = (size_t) m->config.hidden;
    size_t E = (size_t) m->config.embed_dim, X = E > H ? E : H;

    memset(s, 0, sizeof(*s));
    s->h = calloc(L * H, sizeof(float));
    s->c = calloc(L * H, sizeof(float));
    s->x = calloc(X, sizeof(float));
    s->g = calloc(4 * H, sizeof(float));
    s->logits = calloc((size_t) m->config.vocab_size, sizeof(float));
    if (s->h == NULL || s->c == NULL || s->x == NULL || s->g == NULL
        || s->logits == NULL)
    {
        cm_lstm_state_free(s);
        return CM_ENOMEM;
    }
    return CM_OK;
}


void
cm_lstm_state_reset(cm_lstm_state_t *s, const cm_lstm_t *m)
{
    size_t n = (size_t) m->config.num_layers * m->config.hidden;

    memset(s->h, 0, n * sizeof(float));
    memset(s->c, 0, n * sizeof(float));
}


void
cm_lstm_state_free(cm_lstm_state_t *s)
{
    free(s->h);
    free(s->c);
    free(s->x);
    free(s->g);
    free(s->logits);
    memset(s, 0, sizeof(*s));
}


int
cm_lstm_step(const cm_lstm_t *m, cm_lstm_state_t *s, int token,
    int want_logits)
{
    const cm_lstm_config_t *cf = &m->config;
    const cm_lstm_params_t *p = &m->params;
    int     H = cf->hidden, E = cf->embed_dim, l, j, in;
    float  *h, *c;

    if (token < 0 || token >= cf->vocab_size) {
        return CM_EINVAL;
    }
    memcpy(s->x, p->wte + (size_t) token * E, (size_t) E * sizeof(float));
    in = E;
    for (l = 0; l < cf->num_layers; l++) {
        h = s->h + (size_t) l * H;
        c = s->c + (size_t) l * H;
        memcpy(s->g, p->bias + (size_t) l * 4 * H,
               4 * (size_t) H * sizeof(float));
        cblas_sgemv(CblasRowMajor, CblasNoTrans, 4 * H, in, 1.0f,
                    cm_lstm_wih(p, cf, l), in, s->x, 1, 1.0f, s->g, 1);
        cblas_sgemv(CblasRowMajor, CblasNoTrans, 4 * H, H, 1.0f,
                    p->whh + (size_t) l * 4 * H * H, H, h, 1, 1.0f, s->g, 1);
        for (j = 0; j < H; j++) {
            float ig = cm_sigmoid(s->g[j]);
            float fg = cm_sigmoid(s->g[H + j]);
            float gg = tanhf(s->g[2 * H + j]);
            float og = cm_sigmoid(s->g[3 * H + j]);

            c[j] = fg * c[j] + ig * gg;
            h[j] = og * tanhf(c[j]);
        }
        memcpy(s->x, h, (size_t) H * sizeof(float));
        in = H;
    }
    if (want_logits) {
        memcpy(s->logits, p->bout, (size_t) cf->vocab_size * sizeof(float));
        cblas_sgemv(CblasRowMajor, CblasNoTrans, cf->vocab_size, H, 1.0f,
                    cf->tied ? p->wte : p->wout, H, s->x, 1, 1.0f,
                    s->logits, 1);
    }
    return CM_OK;
}

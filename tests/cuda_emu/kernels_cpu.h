/*
 * kernels_cpu.h: whole-grid CPU stand-ins for the kernels of
 * gpt_kernels.cuh that need barriers or warp shuffles (see cuda_emu.h).
 * Each does what its kernel's comment promises for the whole launch;
 * gridDim / blockDim hold the launch's configuration.
 */
#ifndef CM_KERNELS_CPU_H
#define CM_KERNELS_CPU_H

template <typename F>
struct cm_launcher1 {
    F    f;
    dim3 g, b;

    template <typename... A>
    void operator()(A... a)
    {
        gridDim = g;
        blockDim = b;
        f(a...);
    }
};

template <typename F>
static cm_launcher1<F>
cm_launch1(F f, dim3 g, dim3 b, size_t shm = 0)
{
    cm_launcher1<F> l;

    l.f = f;
    l.g = g;
    l.b = b;
    return l;
}


static void
cm_layernorm_kernel_whole(float *out, float *mean, float *rstd,
    const float *inp, const float *w, const float *b, int N, int C)
{
    for (int n = 0; n < N; n++) {
        const float *x = inp + (size_t) n * C;
        float        m = 0.0f, v = 0.0f, s;

        for (int i = 0; i < C; i++) {
            m += x[i];
        }
        m /= C;
        for (int i = 0; i < C; i++) {
            v += (x[i] - m) * (x[i] - m);
        }
        v /= C;
        s = 1.0f / sqrtf(v + 1e-5f);
        for (int i = 0; i < C; i++) {
            out[(size_t) n * C + i] = (s * (x[i] - m)) * w[i] + b[i];
        }
        if (mean != NULL) {
            mean[n] = m;
            rstd[n] = s;
        }
    }
}


static void
cm_layernorm_backward_kernel_whole(float *dinp, float *dw, float *db,
    const float *dout, const float *inp, const float *w, const float *mean,
    const float *rstd, int N, int C)
{
    for (int n = 0; n < N; n++) {
        const float *d = dout + (size_t) n * C, *x = inp + (size_t) n * C;
        float       *dx = dinp + (size_t) n * C, m = mean[n], s = rstd[n];
        float        dm = 0.0f, dnm = 0.0f;

        for (int i = 0; i < C; i++) {
            float norm = (x[i] - m) * s, dn = w[i] * d[i];

            dm += dn;
            dnm += dn * norm;
        }
        dm /= C;
        dnm /= C;
        for (int i = 0; i < C; i++) {
            float norm = (x[i] - m) * s, dn = w[i] * d[i];

            db[i] += d[i];
            dw[i] += norm * d[i];
            dx[i] += (dn - dm - norm * dnm) * s;
        }
    }
}


static void
cm_softmax_kernel_whole(float *probs, const float *logits, int N, int V,
    int Vp)
{
    for (int n = 0; n < N; n++) {
        const float *l = logits + (size_t) n * Vp;
        float       *p = probs + (size_t) n * Vp, mx = -INFINITY, sum = 0;

        for (int i = 0; i < V; i++) {
            mx = fmaxf(mx, l[i]);
        }
        for (int i = 0; i < V; i++) {
            sum += expf(l[i] - mx);
        }
        for (int i = 0; i < Vp; i++) {
            p[i] = i < V ? expf(l[i] - mx) / sum : 0.0f;
        }
    }
}


static void
cm_causal_softmax_kernel_whole(float *att, const float *preatt, int rows,
    int T)
{
    for (int r = 0; r < rows; r++) {
        int          t = r % T;
        const float *p = preatt + (size_t) r * T;
        float       *a = att + (size_t) r * T, mx = -INFINITY, sum = 0;

        for (int j = 0; j <= t; j++) {
            mx = fmaxf(mx, p[j]);
        }
        for (int j = 0; j <= t; j++) {
            sum += expf(p[j] - mx);
        }
        for (int j = 0; j < T; j++) {
            a[j] = j <= t ? expf(p[j] - mx) / sum : 0.0f;
        }
    }
}


static void
cm_causal_softmax_backward_kernel_whole(float *dpreatt, float *datt,
    const float *att, int rows, int T)
{
    for (int r = 0; r < rows; r++) {
        int          t = r % T;
        const float *a = att + (size_t) r * T;
        float       *da = datt + (size_t) r * T, *dp = dpreatt + (size_t) r * T;
        float        s = 0.0f;

        for (int j = 0; j <= t; j++) {
            s += a[j] * da[j];
        }
        for (int j = 0; j < T; j++) {
            if (j <= t) {
                dp[j] = a[j] * (da[j] - s);
            } else {
                dp[j] = 0.0f;
                da[j] = 0.0f;
            }
        }
    }
}


/* one partial per block of the launch: the emulation puts it all in the
 * first and zeroes the others */
static void
cm_sumsq_kernel_whole(double *part, const float *x, size_t n)
{
    double s = 0.0;

    for (size_t i = 0; i < n; i++) {
        s += (double) x[i] * x[i];
    }
    for (unsigned b = 0; b < gridDim.x; b++) {
        part[b] = b == 0 ? s : 0.0;
    }
}


static void
cm_sum_double_kernel_whole(double *out, const double *part, int n)
{
    double s = 0.0;

    for (int i = 0; i < n; i++) {
        s += part[i];
    }
    out[0] = s;
}


/* grid (rows, NH) */
static void
cm_kv_attention_kernel_whole(float *out, const float *qkv, const float *kc,
    const float *vc, const int *slot, const int *pos, int C, int NH,
    int maxT, float scale)
{
    int    hs = C / NH;
    float *sc = (float *) malloc((size_t) maxT * sizeof(float));

    for (unsigned r = 0; r < gridDim.x; r++) {
        for (int h = 0; h < NH; h++) {
            const float *q = qkv + (size_t) r * 3 * C + (size_t) h * hs;
            size_t       base = (size_t) slot[r] * maxT * C + (size_t) h * hs;
            int          p = pos[r];
            float        mx = -INFINITY, sum = 0.0f;

            for (int j = 0; j <= p; j++) {
                float s = 0.0f;

                for (int d = 0; d < hs; d++) {
                    s += q[d] * kc[base + (size_t) j * C + d];
                }
                sc[j] = s * scale;
                mx = fmaxf(mx, sc[j]);
            }
            for (int j = 0; j <= p; j++) {
                sc[j] = expf(sc[j] - mx);
                sum += sc[j];
            }
            for (int d = 0; d < hs; d++) {
                float o = 0.0f;

                for (int j = 0; j <= p; j++) {
                    o += sc[j] * vc[base + (size_t) j * C + d];
                }
                out[(size_t) r * C + (size_t) h * hs + d] = o / sum;
            }
        }
    }
    free(sc);
}

#endif /* CM_KERNELS_CPU_H */

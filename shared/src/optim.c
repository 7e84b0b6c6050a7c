/*
 * optim.c: AdamW and gradient clipping for the language models (gpt.c,
 * lstm.c).  See optim.h.
 */
#include <math.h>
#include <stdlib.h>

#include "cinematch/common.h"
#include "cinematch/optim.h"


void
cm_adamw_update(float *params, const float *grads, float *m, float *v,
    size_t n, float lr, float beta1, float beta2, float eps, float wd,
    int step)
{
    size_t  i;
    float   b1c = 1.0f - powf(beta1, (float) step);
    float   b2c = 1.0f - powf(beta2, (float) step);

    for (i = 0; i < n; i++) {
        float g = grads[i];
        float mm = beta1 * m[i] + (1.0f - beta1) * g;
        float vv = beta2 * v[i] + (1.0f - beta2) * g * g;

        m[i] = mm;
        v[i] = vv;
        params[i] -= lr * ((mm / b1c) / (sqrtf(vv / b2c) + eps)
                           + wd * params[i]);
    }
}


int
cm_adamw_step(float *params, const float *grads, float **m, float **v,
    size_t n, const size_t *sizes, size_t nsizes, uint32_t decay,
    const cm_adamw_t *o)
{
    size_t  k, off = 0;

    if (grads == NULL) {
        return CM_EINVAL;
    }
    if (*m == NULL) {
        *m = calloc(n, sizeof(float));
        *v = calloc(n, sizeof(float));
        if (*m == NULL || *v == NULL) {
            return CM_ENOMEM;
        }
    }
    for (k = 0; k < nsizes; k++) {
        cm_adamw_update(params + off, grads + off, *m + off, *v + off,
                        sizes[k], o->lr, o->beta1, o->beta2, o->eps,
                        (decay >> k) & 1 ? o->weight_decay : 0.0f, o->step);
        off += sizes[k];
    }
    return CM_OK;
}


float
cm_grad_clip(float *grads, size_t n, float max_norm)
{
    double  ss = 0.0;
    size_t  i;
    float   norm, s;

    if (grads == NULL) {
        return 0.0f;
    }
    for (i = 0; i < n; i++) {
        ss += (double) grads[i] * grads[i];
    }
    norm = (float) sqrt(ss);
    if (max_norm > 0.0f && norm > max_norm) {
        s = max_norm / norm;
        for (i = 0; i < n; i++) {
            grads[i] *= s;
        }
    }
    return norm;
}

/*
 * cinematch/optim.h: the optimiser steps the GPT and LSTM language models
 * share (AdamW with per-tensor decay, global-norm gradient clipping).  The
 * models keep their parameters, gradients and AdamW moments each in one
 * allocation carved by a size table (see gpt.h); these work on that
 * layout.  Deterministic: the same inputs give the same bits.
 */
#ifndef CINEMATCH_OPTIM_H
#define CINEMATCH_OPTIM_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    float  lr;             /* current learning rate */
    float  beta1, beta2, eps, weight_decay;
    int    step;           /* 1-based step of this update */
} cm_adamw_t;

/* AdamW on one tensor (decoupled decay wd; step is 1-based). */
void cm_adamw_update(float *params, const float *grads, float *m, float *v,
    size_t n, float lr, float beta1, float beta2, float eps, float wd,
    int step);

/*
 * AdamW over all nsizes tensors of one carved allocation (sizes[k] floats
 * each, n in all), with weight decay on tensor k only when bit k of decay
 * is set.  The moments *m and *v (n floats each) are allocated zeroed on
 * the first step.  CM_OK, CM_EINVAL without gradients, CM_ENOMEM.
 */
int cm_adamw_step(float *params, const float *grads, float **m, float **v,
    size_t n, const size_t *sizes, size_t nsizes, uint32_t decay,
    const cm_adamw_t *o);

/* Global L2 norm of grads (n floats); scales them down to max_norm when
 * larger (max_norm <= 0: no clipping).  Returns the norm before clipping,
 * 0 when grads is NULL. */
float cm_grad_clip(float *grads, size_t n, float max_norm);

#endif /* CINEMATCH_OPTIM_H */

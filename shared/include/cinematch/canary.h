/*
 * cinematch/canary.h: which users a canary model version serves.
 *
 * A canary is a staging version served beside production to a share of
 * the users.  Who is in the share is a pure function of (model name, user
 * id): the inference daemon routes each request by it, and nginx picks the
 * response-cache key by it, so both agree without talking to each other,
 * and a user stays on the same side for as long as the share does not
 * shrink below their bucket.  Growing the share only adds users (a user in
 * the 10% is in the 50%); the model name is hashed in so two models'
 * canaries do not land on the same users.
 *
 * Shares are carried as basis points (0..CM_CANARY_BUCKETS): the registry
 * stores a number in [0, 1], the IPC model table an integer.
 */
#ifndef CINEMATCH_CANARY_H
#define CINEMATCH_CANARY_H

#include <stddef.h>
#include <stdint.h>

#define CM_CANARY_BUCKETS  10000u

/* The user's bucket in [0, CM_CANARY_BUCKETS) for model (NUL-terminated). */
uint32_t cm_canary_bucket(const char *model, int64_t user);

/* 1 when the canary of share_bp basis points serves user: users > 0 whose
 * bucket is below share_bp; 0 for anonymous (user <= 0) requests. */
int cm_canary_routed(const char *model, int64_t user, uint32_t share_bp);

/* Parse a share in [0, 1] (decimal text: "0.1", "1", "0.0005") into basis
 * points, rounded to the nearest; CM_EINVAL for anything else, NaN, or a
 * value outside [0, 1]. */
int cm_canary_share_parse(const char *s, size_t len, uint32_t *bp);

#endif /* CINEMATCH_CANARY_H */

/*
 * recsys_eval.c: splits and offline metrics (definitions in recsys_eval.h).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/common.h"
#include "cinematch/recsys_eval.h"
#include "cinematch/rng.h"

#define CM_RS_POSITIVE  4.0f
#define CM_RS_BATCH     64


int
cm_rs_split_parse(const char *s, cm_rs_split_t *out, char *err, size_t errlen)
{
    char  *end;
    const char *comma;

    memset(out, 0, sizeof(*out));
    if (strncmp(s, "random:", 7) == 0) {
        out->kind = CM_SPLIT_RANDOM;
        out->frac = strtod(s + 7, &end);
        if (*end != ':' || end[1] == '\0') {
            goto bad;
        }
        out->seed = strtoull(end + 1, &end, 10);
        if (*end != '\0') {
            goto bad;
        }
    } else if (strncmp(s, "temporal-user:", 14) == 0) {
        out->kind = CM_SPLIT_TEMPORAL_USER;
        out->frac = strtod(s + 14, &end);
        if (*end != '\0' || end == s + 14) {
            goto bad;
        }
    } else if (strncmp(s, "files:", 6) == 0) {
        out->kind = CM_SPLIT_FILES;
        comma = strchr(s + 6, ',');
        if (comma == NULL || comma == s + 6 || comma[1] == '\0'
            || (size_t) (comma - (s + 6)) >= sizeof(out->base)
            || strlen(comma + 1) >= sizeof(out->test))
        {
            goto bad;
        }
        memcpy(out->base, s + 6, (size_t) (comma - (s + 6)));
        snprintf(out->test, sizeof(out->test), "%s", comma + 1);
        return CM_OK;
    } else {
        goto bad;
    }
    if (!(out->frac > 0 && out->frac < 1)) {
        return cm_seterr(err, errlen, CM_EINVAL, "split '%s': FRAC must be in"
                         " (0, 1)", s);
    }
    return CM_OK;

bad:
    return cm_seterr(err, errlen, CM_EINVAL, "split '%s': expected"
                     " random:FRAC:SEED, temporal-user:FRAC or"
                     " files:BASE,TEST", s);
}


void
cm_rs_split_format(const cm_rs_split_t *s, char *buf, size_t len)
{
    switch (s->kind) {
    case CM_SPLIT_RANDOM:
        snprintf(buf, len, "random:%g:%llu", s->frac,
                 (unsigned long long) s->seed);
        break;
    case CM_SPLIT_TEMPORAL_USER:
        snprintf(buf, len, "temporal-user:%g", s->frac);
        break;
    default:
        snprintf(buf, len, "files:%s,%s", s->base, s->test);
        break;
    }
}


int
cm_rs_split_random(const cm_ratings_t *all, double frac, uint64_t seed,
    cm_ratings_t *train, cm_ratings_t *test)
{
    size_t    n = all->n, n_test, i, j, t;
    size_t   *perm;
    uint8_t  *held;
    cm_rng_t  r;
    int       rc = CM_OK;

    perm = malloc((n ? n : 1) * sizeof(size_t));
    held = calloc(n ? n : 1, 1);
    if (perm == NULL || held == NULL) {
        free(perm);
        free(held);
        return CM_ENOMEM;
    }
    n_test = (size_t) llround(frac * (double) n);
    if (n_test > n) {
        n_test = n;
    }
    cm_rng_seed(&r, seed, 0x5011);
    for (i = 0; i < n; i++) {
        perm[i] = i;
    }
    /* partial Fisher-Yates: the first n_test of perm are held out */
    for (i = 0; i < n_test; i++) {
        j = i + (size_t) cm_rng_below(&r, n - i);     /* i <= j < n */
        if (j >= n) {
            j = n - 1;
        }
        t = perm[i]; perm[i] = perm[j]; perm[j] = t;
        held[perm[i]] = 1;
    }
    for (i = 0; i < n && rc == CM_OK; i++) {
        rc = cm_ratings_push(held[i] ? test : train, &all->v[i]);
    }
    free(perm);
    free(held);
    return rc;
}


static int
cm_rs_cmp_user_time(const void *a, const void *b)
{
    const cm_rating_t *x = a, *y = b;

    if (x->user != y->user) {
        return x->user < y->user ? -1 : 1;
    }
    if (x->ts != y->ts) {
        return x->ts < y->ts ? -1 : 1;
    }
    return (x->item > y->item) - (x->item < y->item);
}


int
cm_rs_split_temporal_user(const cm_ratings_t *all, double frac,
    cm_ratings_t *train, cm_ratings_t *test)
{
    cm_rating_t  *v;
    size_t        i, j, n, hold, p;
    int           rc = CM_OK;

    v = malloc((all->n ? all->n : 1) * sizeof(*v));
    if (v == NULL) {
        return CM_ENOMEM;
    }
    memcpy(v, all->v, all->n * sizeof(*v));
    qsort(v, all->n, sizeof(*v), cm_rs_cmp_user_time);
    for (i = 0; i < all->n && rc == CM_OK; i = j) {
        for (j = i; j < all->n && v[j].user == v[i].user; j++) {
            /* the user's run */
        }
        n = j - i;
        hold = n < 5 ? 0 : (size_t) ceil(frac * (double) n - 1e-9);
        for (p = i; p < j && rc == CM_OK; p++) {
            rc = cm_ratings_push(p >= j - hold ? test : train, &v[p]);
        }
    }
    free(v);
    return rc;
}


void
cm_rs_rank_user(const uint32_t *top, size_t n_top, size_t k,
    const uint32_t *pos, size_t n_pos, double out[5])
{
    size_t  r, hits = 0, lo, hi, mid;
    double  dcg = 0, idcg = 0, ap = 0;
    int     hit;

    memset(out, 0, 5 * sizeof(double));
    if (n_pos == 0 || k == 0) {
        return;
    }
    for (r = 0; r < n_top && r < k; r++) {
        lo = 0;
        hi = n_pos;
        while (lo < hi) {
            mid = (lo + hi) / 2;
            if (pos[mid] < top[r]) {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        hit = lo < n_pos && pos[lo] == top[r];
        if (hit) {
            hits++;
            dcg += 1.0 / log2((double) r + 2.0);
            ap += (double) hits / (double) (r + 1);
        }
    }
    for (r = 0; r < n_pos && r < k; r++) {
        idcg += 1.0 / log2((double) r + 2.0);
    }
    out[0] = (double) hits / (double) k;
    out[1] = (double) hits / (double) n_pos;
    out[2] = dcg / idcg;
    out[3] = hits > 0;
    out[4] = ap / (double) (n_pos < k ? n_pos : k);
}


static int
cm_rs_row_has(const cm_rs_data_t *d, uint32_t u, uint32_t i, float *r)
{
    uint64_t lo = d->u_ptr[u], hi = d->u_ptr[u + 1], mid;

    while (lo < hi) {
        mid = lo + (hi - lo) / 2;
        if (d->u_idx[mid] < i) {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if (lo < d->u_ptr[u + 1] && d->u_idx[lo] == i) {
        *r = d->u_val[lo];
        return 1;
    }
    return 0;
}


/* mu + b_u + b_i + U[u].V[i] for known u, i (dense) */
static float
cm_rs_raw(const cm_rs_model_t *m, uint32_t u, uint32_t i)
{
    const float  *x = m->U + (size_t) u * m->factors;
    const float  *y = m->V + (size_t) i * m->factors;
    float         p = m->mean + m->bu[u] + m->bi[i];
    uint32_t      c;

    for (c = 0; c < m->factors; c++) {
        p += x[c] * y[c];
    }
    return p;
}


float
cm_rs_predict(const cm_rs_model_t *m, const cm_rs_data_t *train,
    int32_t user, int32_t item)
{
    int64_t   u, i;
    float     p, r;
    uint32_t  c, j;
    double    num = 0, den = 0;

    if (m->algo == CM_RS_IALS || m->algo == CM_RS_POP) {
        return NAN;
    }
    u = cm_rs_find_id(m->user_ext, m->n_users, user);
    i = cm_rs_find_id(m->item_ext, m->n_items, item);
    if (u >= 0 && i >= 0) {
        p = cm_rs_raw(m, (uint32_t) u, (uint32_t) i);
    } else {
        p = m->mean + (u >= 0 ? m->bu[u] : 0.0f)
            + (i >= 0 ? m->bi[i] : 0.0f);
    }
    /*
     * Item-kNN: the neighbours of i the user rated vote with their
     * residuals (rating minus the model's own prediction: the biases for
     * CM_RS_ITEMKNN, the full factor model for ALS with knn_shrink > 0).
     */
    if (m->nn_idx != NULL && u >= 0 && i >= 0 && train != NULL) {
        for (c = 0; c < m->knn; c++) {
            j = m->nn_idx[(size_t) i * m->knn + c];
            if (j == UINT32_MAX) {
                break;
            }
            if (cm_rs_row_has(train, (uint32_t) u, j, &r)) {
                float s = m->nn_sim[(size_t) i * m->knn + c];

                num += s * (r - cm_rs_raw(m, (uint32_t) u, j));
                den += s;
            }
        }
        if (den > 0) {
            p += (float) (num / (den + m->knn_shrink));
        }
    }
    return p < 0.5f ? 0.5f : (p > 5.0f ? 5.0f : p);
}


static int
cm_rs_cmp_user(const void *a, const void *b)
{
    const cm_rating_t *x = a, *y = b;

    if (x->user != y->user) {
        return x->user < y->user ? -1 : 1;
    }
    return (x->item > y->item) - (x->item < y->item);
}


static int
cm_rs_cmp_u32(const void *a, const void *b)
{
    uint32_t x = *(const uint32_t *) a, y = *(const uint32_t *) b;

    return (x > y) - (x < y);
}


/* the ranking score row of one user (dense u, or -1 for a cold user) */
static int
cm_rs_score_row(const cm_rs_model_t *m, const cm_rs_data_t *train,
    int64_t u, float *s)
{
    uint64_t  p;
    uint32_t  c, j, nb, i;
    float     w;

    if (u < 0 || m->algo == CM_RS_POP) {
        for (i = 0; i < m->n_items; i++) {
            s[i] = (float) m->pop[i];
        }
        return CM_OK;
    }
    if (m->algo == CM_RS_ITEMKNN) {
        memset(s, 0, m->n_items * sizeof(float));
        for (p = m->seen_ptr[u]; p < m->seen_ptr[u + 1]; p++) {
            j = m->seen_idx[p];
            /* the same confidence rule as iALS: low ratings vote less */
            w = train->u_val[p] >= m->conf_thr ? 1.0f : m->conf_below;
            for (c = 0; c < m->knn; c++) {
                nb = m->nn_idx[(size_t) j * m->knn + c];
                if (nb == UINT32_MAX) {
                    break;
                }
                s[nb] += w * m->nn_sim[(size_t) j * m->knn + c];
            }
        }
        return CM_OK;
    }
    i = (uint32_t) u;
    return cm_rs_score_users(m, &i, 1, s);
}


int
cm_rs_evaluate(const cm_rs_model_t *m, const cm_rs_data_t *train,
    const cm_rating_t *test, size_t n_test, size_t k, cm_rs_metrics_t *out,
    char *err, size_t errlen)
{
    cm_rating_t  *t = NULL;
    float        *s = NULL, *tops = NULL, pr;
    uint32_t     *pos = NULL, *top = NULL;
    uint8_t      *covered = NULL;
    size_t        a, b, n_pos, n_top, n_cov = 0, e = 0;
    double        se = 0, ae = 0, acc[5] = { 0 }, one[5];
    int64_t       u, it;
    int           rc = CM_ENOMEM;

    memset(out, 0, sizeof(*out));
    out->k = k;
    if (k == 0 || k > 10000) {
        return cm_seterr(err, errlen, CM_EINVAL, "K must be 1..10000");
    }
    t = malloc((n_test ? n_test : 1) * sizeof(*t));
    s = malloc(m->n_items * sizeof(float));
    pos = malloc((n_test ? n_test : 1) * sizeof(uint32_t));
    top = malloc(k * sizeof(uint32_t));
    tops = malloc(k * sizeof(float));
    covered = calloc(m->n_items, 1);
    if (t == NULL || s == NULL || pos == NULL || top == NULL || tops == NULL
        || covered == NULL)
    {
        cm_seterr(err, errlen, rc, "out of memory");
        goto done;
    }

    /* rating metrics */
    for (a = 0; a < n_test; a++) {
        pr = cm_rs_predict(m, train, test[a].user, test[a].item);
        if (isnan(pr)) {
            break;
        }
        se += (pr - test[a].rating) * (pr - test[a].rating);
        ae += fabsf(pr - test[a].rating);
        out->n_pred++;
    }
    out->rmse = out->n_pred ? sqrt(se / (double) out->n_pred) : NAN;
    out->mae = out->n_pred ? ae / (double) out->n_pred : NAN;

    /* ranking metrics, user by user */
    memcpy(t, test, n_test * sizeof(*t));
    qsort(t, n_test, sizeof(*t), cm_rs_cmp_user);
    for (a = 0; a < n_test; a = b) {
        for (b = a; b < n_test && t[b].user == t[a].user; b++) {
            /* the user's test run */
        }
        n_pos = 0;
        for (e = a; e < b; e++) {
            if (t[e].rating >= CM_RS_POSITIVE) {
                it = cm_rs_find_id(m->item_ext, m->n_items, t[e].item);
                if (it >= 0) {
                    pos[n_pos++] = (uint32_t) it;
                }
            }
        }
        if (n_pos == 0) {
            continue;
        }
        qsort(pos, n_pos, sizeof(uint32_t), cm_rs_cmp_u32);
        u = cm_rs_find_id(m->user_ext, m->n_users, t[a].user);
        rc = cm_rs_score_row(m, train, u, s);
        if (rc != CM_OK) {
            cm_seterr(err, errlen, rc, "scoring failed");
            goto done;
        }
        n_top = cm_rs_topk(s, m->n_items,
                           u >= 0 ? m->seen_idx + m->seen_ptr[u] : NULL,
                           u >= 0 ? m->seen_ptr[u + 1] - m->seen_ptr[u] : 0,
                           k, top, tops);
        cm_rs_rank_user(top, n_top, k, pos, n_pos, one);
        for (e = 0; e < 5; e++) {
            acc[e] += one[e];
        }
        for (e = 0; e < n_top; e++) {
            if (!covered[top[e]]) {
                covered[top[e]] = 1;
                n_cov++;
            }
        }
        out->n_rank_users++;
    }
    if (out->n_rank_users > 0) {
        out->precision = acc[0] / (double) out->n_rank_users;
        out->recall = acc[1] / (double) out->n_rank_users;
        out->ndcg = acc[2] / (double) out->n_rank_users;
        out->hr = acc[3] / (double) out->n_rank_users;
        out->map = acc[4] / (double) out->n_rank_users;
    }
    out->coverage = m->n_items ? (double) n_cov / m->n_items : 0;
    rc = CM_OK;

done:
    free(t); free(s); free(pos); free(top); free(tops); free(covered);
    return rc;
}

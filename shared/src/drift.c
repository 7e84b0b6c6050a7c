/*
 * drift.c: two-sample KS (exact and asymptotic, scipy's choices), PSI and
 * histogram moments.  See cinematch/drift.h for the definitions.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/common.h"
#include "cinematch/drift.h"


static int cm_dbl_cmp(const void *a, const void *b);
static uint64_t cm_gcd(uint64_t a, uint64_t b);
static double cm_clip01(double p);
static double cm_ks_exact_sf(uint64_t m, uint64_t n, uint64_t h,
    int two_sided);
static double cm_kolmogn_dmtw_cdf(uint64_t n, double d);
static double cm_kolmogn_pelzgood_cdf(uint64_t n, double x);
static void cm_mat_mul(const double *a, const double *b, double *c, size_t m);
static void cm_ks_finish(double maxs, double mins, double loc_max,
    double loc_min, uint64_t n1, uint64_t n2, cm_ks_alt_t alt,
    cm_ks_method_t method, cm_ks_result_t *out);


static int
cm_dbl_cmp(const void *a, const void *b)
{
    double x = *(const double *) a, y = *(const double *) b;

    return (x > y) - (x < y);
}


static uint64_t
cm_gcd(uint64_t a, uint64_t b)
{
    while (b != 0) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}


static double
cm_clip01(double p)
{
    if (!(p >= 0.0)) {
        return isnan(p) ? p : 0.0;
    }
    return p > 1.0 ? 1.0 : p;
}


/*
 * Exact two-sample tail: the probability that a uniformly random lattice
 * path from (0,0) to (m,n) touches the region i*ng - j*mg >= h (and, two
 * sided, <= -h).  A random path is a walk that steps right with
 * probability (m-i)/(m-i+n-j), so we push probability mass row by row and
 * add up what first enters the region: every term is positive, so tiny
 * p-values are as precise as large ones.  Mass lives only in a band around
 * the diagonal; each row visits the band it can reach, O(m * band).
 */
static double
cm_ks_exact_sf(uint64_t m, uint64_t n, uint64_t h, int two_sided)
{
    uint64_t   g = cm_gcd(m, n), mg = m / g, ng = n / g;
    uint64_t   i, j, plo = 0, phi = 0, lo, first, last;
    double    *prev, *cur, *t, out = 0.0, up, v;
    int64_t    diff;
    int        any;

    prev = calloc(n + 1, sizeof(double));
    cur = calloc(n + 1, sizeof(double));
    if (prev == NULL || cur == NULL) {
        free(prev);
        free(cur);
        return NAN;
    }

    for (i = 0; i <= m; i++) {
        lo = i == 0 ? 0 : plo;
        up = 0.0;
        any = 0;
        first = last = 0;
        for (j = lo; j <= n; j++) {
            v = up;
            if (i == 0 && j == 0) {
                v = 1.0;
            } else if (i > 0 && j >= plo && j <= phi) {
                v += prev[j] * (double) (m - i + 1)
                     / (double) ((m - i + 1) + (n - j));
            }
            if (v == 0.0 && (i == 0 || j > phi)) {
                break;
            }
            diff = (int64_t) (i * ng) - (int64_t) (j * mg);
            if (diff >= (int64_t) h || (two_sided && diff <= -(int64_t) h)) {
                out += v;
                v = 0.0;
            }
            cur[j] = v;
            if (v != 0.0) {
                if (!any) {
                    first = j;
                    any = 1;
                }
                last = j;
            }
            up = (v != 0.0 && j < n)
                 ? v * (double) (n - j) / (double) ((m - i) + (n - j)) : 0.0;
        }
        if (!any) {
            break;
        }
        plo = first;
        phi = last;
        t = prev;
        prev = cur;
        cur = t;
    }

    free(prev);
    free(cur);
    return cm_clip01(out);
}


static void
cm_mat_mul(const double *a, const double *b, double *c, size_t m)
{
    size_t  i, j, k;
    double  aik;

    memset(c, 0, m * m * sizeof(double));
    for (i = 0; i < m; i++) {
        for (k = 0; k < m; k++) {
            aik = a[i * m + k];
            if (aik == 0.0) {
                continue;
            }
            for (j = 0; j < m; j++) {
                c[i * m + j] += aik * b[k * m + j];
            }
        }
    }
}


/*
 * Durbin's matrix formula as programmed by Marsaglia, Tsang and Wang
 * (2003): P(D_n < d) = n!/n^n * (H^n)[k-1][k-1], H of order 2k-1, with a
 * decimal exponent carried beside the matrix so nothing overflows.
 */
static double
cm_kolmogn_dmtw_cdf(uint64_t n, double d)
{
    double    nd = (double) n * d, h, s, *H, *Q, *T;
    uint64_t  k, bit;
    size_t    m, i, j, g, sz;
    int       eQ = 0, have = 0;

    if (d >= 1.0) {
        return 1.0;
    }
    if (nd <= 0.5) {
        return 0.0;
    }
    k = (uint64_t) ceil(nd);
    h = (double) k - nd;
    m = (size_t) (2 * k - 1);
    sz = m * m;
    H = calloc(sz, sizeof(double));
    Q = calloc(sz, sizeof(double));
    T = calloc(sz, sizeof(double));
    if (H == NULL || Q == NULL || T == NULL) {
        free(H); free(Q); free(T);
        return NAN;
    }
    for (i = 0; i < m; i++) {
        for (j = 0; j < m; j++) {
            H[i * m + j] = (i + 1 >= j) ? 1.0 : 0.0;
        }
    }
    for (i = 0; i < m; i++) {
        H[i * m] -= pow(h, (double) (i + 1));
        H[(m - 1) * m + i] -= pow(h, (double) (m - i));
    }
    if (2.0 * h - 1.0 > 0.0) {
        H[(m - 1) * m] += pow(2.0 * h - 1.0, (double) m);
    }
    for (i = 0; i < m; i++) {
        for (j = 0; j < m; j++) {
            if (i + 1 > j) {
                for (g = 1; g <= i + 1 - j; g++) {
                    H[i * m + j] /= (double) g;
                }
            }
        }
    }

    /* Q = H^n by binary powering from the high bit down (one scratch) */
    for (bit = (uint64_t) 1 << 62; bit != 0; bit >>= 1) {
        if (have) {
            cm_mat_mul(Q, Q, T, m);
            memcpy(Q, T, sz * sizeof(double));
            eQ *= 2;
        }
        if (n & bit) {
            if (have) {
                cm_mat_mul(H, Q, T, m);
                memcpy(Q, T, sz * sizeof(double));
            } else {
                memcpy(Q, H, sz * sizeof(double));
                have = 1;
            }
        }
        if (have && Q[(m / 2) * m + m / 2] > 1e140) {
            for (i = 0; i < sz; i++) {
                Q[i] *= 1e-140;
            }
            eQ += 140;
        }
    }
    s = Q[(k - 1) * m + (k - 1)];
    for (i = 1; i <= n; i++) {
        s = s * (double) i / (double) n;
        if (s < 1e-140) {
            s *= 1e140;
            eQ -= 140;
        }
    }
    s *= pow(10.0, (double) eQ);
    free(H); free(Q); free(T);
    return cm_clip01(s);
}


/*
 * Pelz and Good's (1976) asymptotic series, as scipy's _kolmogn_PelzGood:
 * P(D_n <= x) ~ K0(z) + K1(z)/sqrt(n) + K2(z)/n + K3(z)/n^1.5, z = x sqrt n,
 * each K in its small-z (theta function) form.
 */
static double
cm_kolmogn_pelzgood_cdf(uint64_t n, double x)
{
    const double  pi2 = M_PI * M_PI, pi4 = pi2 * pi2, pi6 = pi4 * pi2;
    const double  sqrt2pi = sqrt(2.0 * M_PI);
    double        z, z2, z3, z4, z6, qlog, q, K[4] = { 0, 0, 0, 0 };
    double        k1a, k1b, k2a, k2b, k2c, k3a, k3b, k3c, k3d, qp, m2, m4, m6;
    double        k2extra = 0.0, k3extra = 0.0, s3z, kpi, ks2, qk, nn;
    long          maxk, kk;
    int           t;

    if (x <= 0.0) {
        return 0.0;
    }
    if (x >= 1.0) {
        return 1.0;
    }
    nn = (double) n;
    z = sqrt(nn) * x;
    z2 = z * z;
    z3 = z2 * z;
    z4 = z2 * z2;
    z6 = z4 * z2;
    qlog = -pi2 / 8.0 / z2;
    if (qlog < -708.0) {
        return 0.0;
    }
    q = exp(qlog);

    k1a = -z2;
    k1b = pi2 / 4.0;
    k2a = 6.0 * z6 + 2.0 * z4;
    k2b = (2.0 * z4 - 5.0 * z2) * pi2 / 4.0;
    k2c = pi4 * (1.0 - 2.0 * z2) / 16.0;
    k3d = pi6 * (5.0 - 30.0 * z2) / 64.0;
    k3c = pi4 * (-60.0 * z2 + 212.0 * z4) / 16.0;
    k3b = pi2 * (135.0 * z4 - 96.0 * z6) / 4.0;
    k3a = -30.0 * z6 - 90.0 * z4 * z4;

    maxk = (long) ceil(16.0 * z / M_PI);
    for (kk = maxk; kk > 0; kk--) {
        double mm = (double) (2 * kk - 1);

        m2 = mm * mm;
        m4 = m2 * m2;
        m6 = m4 * m2;
        qp = pow(q, 8.0 * (double) kk);
        K[0] = K[0] * qp + 1.0;
        K[1] = K[1] * qp + (k1a + k1b * m2);
        K[2] = K[2] * qp + (k2a + k2b * m2 + k2c * m4);
        K[3] = K[3] * qp + (k3a + k3b * m2 + k3c * m4 + k3d * m6);
    }
    for (t = 0; t < 4; t++) {
        K[t] *= q * sqrt2pi;
    }
    K[0] /= z;
    K[1] /= 6.0 * z4;
    K[2] /= 72.0 * z6 * z;
    K[3] /= 6480.0 * z6 * z4;

    q = exp(-pi2 / 2.0 / z2);
    s3z = sqrt(3.0) * z;
    for (kk = maxk; kk > 0; kk--) {
        ks2 = (double) kk * (double) kk;
        kpi = M_PI * (double) kk;
        qk = pow(q, ks2);
        k2extra += ks2 * qk;
        k3extra += (s3z + kpi) * (s3z - kpi) * ks2 * qk;
    }
    K[2] += k2extra * pi2 * sqrt2pi / (-36.0 * z3);
    K[3] += k3extra * pi2 * sqrt2pi / (216.0 * z6);

    return K[0] + K[1] / sqrt(nn) + K[2] / nn + K[3] / (nn * sqrt(nn));
}


/*
 * One-sided P(D_n+ >= d), Birnbaum and Tingey's exact sum
 *   d * sum_{j=0}^{floor(n(1-d))} C(n,j) (1-d-j/n)^(n-j) (d+j/n)^(j-1),
 * every term positive, summed in log space against the largest.
 */
double
cm_smirnov(uint64_t n, double d)
{
    double    nn = (double) n, lmax = -INFINITY, s = 0.0, a, b, l, lg;
    uint64_t  j, J;
    double   *lt;

    if (n == 0 || isnan(d)) {
        return NAN;
    }
    if (d <= 0.0) {
        return 1.0;
    }
    if (d >= 1.0) {
        return 0.0;
    }
    J = (uint64_t) floor(nn * (1.0 - d));
    if (J > n) {
        J = n;
    }
    lt = malloc((J + 1) * sizeof(double));
    if (lt == NULL) {
        return NAN;
    }
    lg = lgamma(nn + 1.0);
    for (j = 0; j <= J; j++) {
        a = ((nn - (double) j) - nn * d) / nn;     /* 1 - d - j/n */
        b = d + (double) j / nn;
        if (a <= 0.0) {
            lt[j] = -INFINITY;
            continue;
        }
        l = lg - lgamma((double) j + 1.0) - lgamma(nn - (double) j + 1.0)
            + (nn - (double) j) * log(a) + ((double) j - 1.0) * log(b);
        lt[j] = l;
        if (l > lmax) {
            lmax = l;
        }
    }
    if (lmax == -INFINITY) {
        free(lt);
        return 0.0;
    }
    for (j = 0; j <= J; j++) {
        if (lt[j] != -INFINITY) {
            s += exp(lt[j] - lmax);
        }
    }
    free(lt);
    return cm_clip01(d * s * exp(lmax));
}


/* scipy.stats.kstwo.sf(d, n): scipy's _kolmogn(n, d, cdf=False). */
double
cm_kstwo_sf(uint64_t n, double x)
{
    double  nn = (double) n, t, p, nx2;

    if (n == 0 || isnan(x)) {
        return NAN;
    }
    if (x >= 1.0) {
        return 0.0;
    }
    if (x <= 0.0) {
        return 1.0;
    }
    t = nn * x;
    if (t <= 1.0) {
        /* Ruben-Gambino: P(D_n <= x) = n!/n^n (2t-1)^n for 1/2n < x <= 1/n */
        if (t <= 0.5) {
            return 1.0;
        }
        p = exp(lgamma(nn + 1.0) - nn * log(nn) + nn * log(2.0 * t - 1.0));
        return cm_clip01(1.0 - p);
    }
    if (t >= nn - 1.0) {
        return cm_clip01(2.0 * pow(1.0 - x, nn));
    }
    if (x >= 0.5) {
        return cm_clip01(2.0 * cm_smirnov(n, x));
    }
    nx2 = t * x;
    if (n <= 140) {
        if (nx2 <= 4.0) {
            /* scipy: Durbin below 0.754693, Pomeranz up to 4; both exact */
            return cm_clip01(1.0 - cm_kolmogn_dmtw_cdf(n, x));
        }
        return cm_clip01(2.0 * cm_smirnov(n, x));
    }
    if (nx2 >= 370.0) {
        return 0.0;
    }
    if (nx2 >= 2.2) {
        return cm_clip01(2.0 * cm_smirnov(n, x));
    }
    if (n <= 100000 && nn * pow(x, 1.5) <= 1.4) {
        p = cm_kolmogn_dmtw_cdf(n, x);
    } else {
        p = cm_kolmogn_pelzgood_cdf(n, x);
    }
    return cm_clip01(1.0 - p);
}


double
cm_ks_pvalue(uint64_t n1, uint64_t n2, double d, cm_ks_alt_t alt,
    cm_ks_method_t method, cm_ks_method_t *used)
{
    uint64_t  g, n1g, n2g, lcm, h;
    double    m, n, en, z, expt, p;

    if (n1 == 0 || n2 == 0 || isnan(d) || d < 0.0 || d > 1.0) {
        return NAN;
    }
    g = cm_gcd(n1, n2);
    n1g = n1 / g;
    n2g = n2 / g;
    if (method == CM_KS_AUTO) {
        method = (n1 > n2 ? n1 : n2) <= CM_KS_MAX_AUTO_N ? CM_KS_EXACT
                                                         : CM_KS_ASYMP;
    } else if (method == CM_KS_EXACT) {
        if ((double) n1g >= (double) INT32_MAX / (double) n2g) {
            method = CM_KS_ASYMP;
        }
    }

    if (method == CM_KS_EXACT && alt != CM_KS_TWO_SIDED && n1 != n2
        && lgamma((double) (n1 + n2) + 1.0) - lgamma((double) n1 + 1.0)
           - lgamma((double) n2 + 1.0) > 709.78)
    {
        /* scipy counts one-sided paths in doubles and divides by
         * binom(n1+n2, n1); past DBL_MAX it falls back to asymptotic.  We
         * could go on exactly, but match its choice. */
        method = CM_KS_ASYMP;
    }

    if (method == CM_KS_EXACT) {
        if (used != NULL) {
            *used = CM_KS_EXACT;
        }
        lcm = n1g * n2;
        h = (uint64_t) nearbyint(d * (double) lcm);
        if (h == 0) {
            return 1.0;
        }
        return cm_ks_exact_sf(n1, n2, h, alt == CM_KS_TWO_SIDED);
    }

    if (used != NULL) {
        *used = CM_KS_ASYMP;
    }
    m = (double) (n1 > n2 ? n1 : n2);
    n = (double) (n1 > n2 ? n2 : n1);
    en = m * n / (m + n);
    if (alt == CM_KS_TWO_SIDED) {
        p = cm_kstwo_sf((uint64_t) nearbyint(en), d);
    } else {
        z = sqrt(en) * d;
        expt = -2.0 * z * z - 2.0 * z * (m + 2.0 * n) / sqrt(m * n * (m + n))
               / 3.0;
        p = exp(expt);
    }
    return cm_clip01(p);
}


static void
cm_ks_finish(double maxs, double mins, double loc_max, double loc_min,
    uint64_t n1, uint64_t n2, cm_ks_alt_t alt, cm_ks_method_t method,
    cm_ks_result_t *out)
{
    mins = mins < 0.0 ? 0.0 : (mins > 1.0 ? 1.0 : mins);
    if (alt == CM_KS_LESS || (alt == CM_KS_TWO_SIDED && mins > maxs)) {
        out->statistic = mins;
        out->location = loc_min;
        out->sign = -1;
    } else {
        out->statistic = maxs;
        out->location = loc_max;
        out->sign = 1;
    }
    out->pvalue = cm_ks_pvalue(n1, n2, out->statistic, alt, method,
                               &out->method);
}


int
cm_ks_2samp(const double *a, size_t na, const double *b, size_t nb,
    cm_ks_alt_t alt, cm_ks_method_t method, cm_ks_result_t *out, char *err,
    size_t errlen)
{
    double  *x, *y, v, diff, maxs = -INFINITY, mins = INFINITY;
    double   loc_max = 0.0, loc_min = 0.0;
    size_t   i = 0, j = 0, k;

    if (na == 0 || nb == 0) {
        return cm_seterr(err, errlen, CM_EINVAL,
                         "both samples must be non-empty");
    }
    x = malloc(na * sizeof(double));
    y = malloc(nb * sizeof(double));
    if (x == NULL || y == NULL) {
        free(x);
        free(y);
        return cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
    }
    memcpy(x, a, na * sizeof(double));
    memcpy(y, b, nb * sizeof(double));
    for (k = 0; k < na; k++) {
        if (isnan(x[k])) {
            free(x);
            free(y);
            return cm_seterr(err, errlen, CM_EINVAL, "NaN in sample 1");
        }
    }
    for (k = 0; k < nb; k++) {
        if (isnan(y[k])) {
            free(x);
            free(y);
            return cm_seterr(err, errlen, CM_EINVAL, "NaN in sample 2");
        }
    }
    qsort(x, na, sizeof(double), cm_dbl_cmp);
    qsort(y, nb, sizeof(double), cm_dbl_cmp);

    /* walk the distinct pooled values in order; both ECDFs right-continuous
     * (scipy: searchsorted(side='right') at every pooled value) */
    while (i < na || j < nb) {
        if (j >= nb || (i < na && x[i] <= y[j])) {
            v = x[i];
        } else {
            v = y[j];
        }
        while (i < na && x[i] <= v) {
            i++;
        }
        while (j < nb && y[j] <= v) {
            j++;
        }
        diff = (double) i / (double) na - (double) j / (double) nb;
        if (diff > maxs) {
            maxs = diff;
            loc_max = v;
        }
        if (diff < mins) {
            mins = diff;
            loc_min = v;
        }
    }
    free(x);
    free(y);
    cm_ks_finish(maxs, -mins, loc_max, loc_min, na, nb, alt, method, out);
    return CM_OK;
}


int
cm_ks_2samp_counts(const uint64_t *ca, const uint64_t *cb, size_t nbins,
    const double *values, cm_ks_alt_t alt, cm_ks_method_t method,
    cm_ks_result_t *out, char *err, size_t errlen)
{
    uint64_t  na = 0, nb = 0, sa = 0, sb = 0;
    double    diff, maxs = -INFINITY, mins = INFINITY;
    double    loc_max = 0.0, loc_min = 0.0;
    size_t    i;

    for (i = 0; i < nbins; i++) {
        na += ca[i];
        nb += cb[i];
    }
    if (na == 0 || nb == 0) {
        return cm_seterr(err, errlen, CM_EINVAL,
                         "both histograms must be non-empty");
    }
    for (i = 0; i < nbins; i++) {
        if (ca[i] == 0 && cb[i] == 0) {
            continue;       /* not a pooled value */
        }
        sa += ca[i];
        sb += cb[i];
        diff = (double) sa / (double) na - (double) sb / (double) nb;
        if (diff > maxs) {
            maxs = diff;
            loc_max = values != NULL ? values[i] : (double) i;
        }
        if (diff < mins) {
            mins = diff;
            loc_min = values != NULL ? values[i] : (double) i;
        }
    }
    cm_ks_finish(maxs, -mins, loc_max, loc_min, na, nb, alt, method, out);
    return CM_OK;
}


int
cm_ks_alt_parse(const char *s, cm_ks_alt_t *out)
{
    if (strcmp(s, "two-sided") == 0) {
        *out = CM_KS_TWO_SIDED;
    } else if (strcmp(s, "less") == 0) {
        *out = CM_KS_LESS;
    } else if (strcmp(s, "greater") == 0) {
        *out = CM_KS_GREATER;
    } else {
        return CM_EINVAL;
    }
    return CM_OK;
}


int
cm_ks_method_parse(const char *s, cm_ks_method_t *out)
{
    if (strcmp(s, "auto") == 0) {
        *out = CM_KS_AUTO;
    } else if (strcmp(s, "exact") == 0) {
        *out = CM_KS_EXACT;
    } else if (strcmp(s, "asymp") == 0 || strcmp(s, "asymptotic") == 0) {
        *out = CM_KS_ASYMP;
    } else {
        return CM_EINVAL;
    }
    return CM_OK;
}


const char *
cm_ks_method_name(cm_ks_method_t m)
{
    return m == CM_KS_EXACT ? "exact"
           : (m == CM_KS_ASYMP ? "asymp" : "auto");
}


double
cm_psi_counts(const uint64_t *base, const uint64_t *cur, size_t nbins)
{
    uint64_t  nb = 0, nc = 0;
    double    e, c, psi = 0.0;
    size_t    i;

    for (i = 0; i < nbins; i++) {
        nb += base[i];
        nc += cur[i];
    }
    if (nb == 0 || nc == 0) {
        return NAN;
    }
    for (i = 0; i < nbins; i++) {
        if (base[i] == 0 && cur[i] == 0) {
            continue;
        }
        e = (double) base[i] / (double) nb;
        c = (double) cur[i] / (double) nc;
        e = e < CM_PSI_EPS ? CM_PSI_EPS : e;
        c = c < CM_PSI_EPS ? CM_PSI_EPS : c;
        psi += (c - e) * log(c / e);
    }
    return psi;
}


int
cm_psi_samples(const double *a, size_t na, const double *b, size_t nb,
    size_t nbins, double *psi, char *err, size_t errlen)
{
    double     lo = INFINITY, hi = -INFINITY, w;
    uint64_t  *ca, *cb;
    size_t     i, k;

    if (na == 0 || nb == 0 || nbins == 0) {
        return cm_seterr(err, errlen, CM_EINVAL,
                         "both samples and the bin count must be non-empty");
    }
    for (i = 0; i < na; i++) {
        if (!isfinite(a[i])) {
            return cm_seterr(err, errlen, CM_EINVAL,
                             "non-finite value in sample 1");
        }
        lo = a[i] < lo ? a[i] : lo;
        hi = a[i] > hi ? a[i] : hi;
    }
    for (i = 0; i < nb; i++) {
        if (!isfinite(b[i])) {
            return cm_seterr(err, errlen, CM_EINVAL,
                             "non-finite value in sample 2");
        }
        lo = b[i] < lo ? b[i] : lo;
        hi = b[i] > hi ? b[i] : hi;
    }
    ca = calloc(nbins, sizeof(uint64_t));
    cb = calloc(nbins, sizeof(uint64_t));
    if (ca == NULL || cb == NULL) {
        free(ca);
        free(cb);
        return cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
    }
    w = (hi - lo) / (double) nbins;
    for (i = 0; i < na; i++) {
        k = w > 0.0 ? (size_t) ((a[i] - lo) / w) : 0;
        ca[k >= nbins ? nbins - 1 : k]++;
    }
    for (i = 0; i < nb; i++) {
        k = w > 0.0 ? (size_t) ((b[i] - lo) / w) : 0;
        cb[k >= nbins ? nbins - 1 : k]++;
    }
    *psi = cm_psi_counts(ca, cb, nbins);
    free(ca);
    free(cb);
    return CM_OK;
}


const char *
cm_psi_band(double psi)
{
    if (psi < CM_PSI_MODERATE) {
        return "stable";
    }
    return psi < CM_PSI_SIGNIFICANT ? "moderate" : "significant";
}


void
cm_hist_moments(const uint64_t *c, const double *values, size_t nbins,
    double *mean, double *std)
{
    double    s = 0.0, ss = 0.0, m;
    uint64_t  n = 0;
    size_t    i;

    for (i = 0; i < nbins; i++) {
        n += c[i];
        s += (double) c[i] * values[i];
    }
    if (n == 0) {
        *mean = NAN;
        *std = NAN;
        return;
    }
    m = s / (double) n;
    for (i = 0; i < nbins; i++) {
        ss += (double) c[i] * (values[i] - m) * (values[i] - m);
    }
    *mean = m;
    *std = sqrt(ss / (double) n);
}

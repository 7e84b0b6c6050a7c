/*
 * cinematch/drift.h: the statistics behind `cinematch drift`: two-sample
 * Kolmogorov-Smirnov, the population stability index and moments, on raw
 * samples or on histograms (ratings take ten values, so the daemon works
 * on counts that PostgreSQL aggregates).
 *
 * KS follows scipy.stats.ks_2samp (scipy >= 1.5) so numbers can be checked
 * against it:
 *   statistic  max |F1(x) - F2(x)| over the pooled sample (D+ for
 *              'greater', D- for 'less'), ties handled by evaluating both
 *              ECDFs right-continuously at every distinct value;
 *   method     auto = exact when max(n1, n2) <= 10000, else asymptotic;
 *              exact falls back to asymptotic when lcm(n1, n2) would pass
 *              INT32_MAX (as scipy does);
 *   exact      h = round(D * lcm), the share of the C(n1+n2, n1) lattice
 *              paths from (0,0) to (n1,n2) that touch |i/n1 - j/n2| >= h/lcm
 *              (one side only for 'less'/'greater'), computed as the sum of
 *              first-passage probabilities so small p-values keep their
 *              relative precision (scipy counts inside paths; the value is
 *              the same);
 *   asymptotic two-sided: kstwo.sf(D, round(n1 n2 / (n1 + n2))), the exact
 *              one-sample distribution of D_n (Simard & L'Ecuyer's choice of
 *              Ruben-Gambino, Smirnov, Durbin matrix and Pelz-Good per
 *              region; the Durbin matrix stands in for Pomeranz where scipy
 *              uses it, both are exact); one-sided: Hodges' approximation
 *              exp(-2z^2 - 2z(m + 2n)/(3 sqrt(mn(m+n)))), m >= n.
 *
 * PSI = sum_b (c_b - e_b) ln(c_b / e_b) over bins with shares e (baseline)
 * and c (current); an empty bin counts as share CM_PSI_EPS so one missing
 * value does not make it infinite.  Bands: < 0.1 stable, < 0.25 moderate,
 * else significant.
 */
#ifndef CINEMATCH_DRIFT_H
#define CINEMATCH_DRIFT_H

#include <stddef.h>
#include <stdint.h>

typedef enum {
    CM_KS_TWO_SIDED = 0,
    CM_KS_LESS,             /* H1: F1 < F2 somewhere; statistic D- */
    CM_KS_GREATER           /* H1: F1 > F2 somewhere; statistic D+ */
} cm_ks_alt_t;

typedef enum {
    CM_KS_AUTO = 0,
    CM_KS_EXACT,
    CM_KS_ASYMP
} cm_ks_method_t;

#define CM_KS_MAX_AUTO_N  10000
#define CM_PSI_EPS        1e-4
#define CM_PSI_MODERATE   0.1
#define CM_PSI_SIGNIFICANT 0.25

typedef struct {
    double          statistic;
    double          pvalue;
    double          location;   /* the value where the statistic is taken */
    int             sign;       /* +1: F1 above F2 there, -1: below */
    cm_ks_method_t  method;     /* the one actually used (exact|asymp) */
} cm_ks_result_t;

/* Raw samples (copied and sorted inside; NaNs rejected). */
int cm_ks_2samp(const double *a, size_t na, const double *b, size_t nb,
    cm_ks_alt_t alt, cm_ks_method_t method, cm_ks_result_t *out, char *err,
    size_t errlen);

/* Histograms over the same ascending bin values (values[i] only reported
 * as location; may be NULL). */
int cm_ks_2samp_counts(const uint64_t *ca, const uint64_t *cb, size_t nbins,
    const double *values, cm_ks_alt_t alt, cm_ks_method_t method,
    cm_ks_result_t *out, char *err, size_t errlen);

/* The p-value of a statistic d for sample sizes n1, n2; *used gets the
 * method that computed it.  Returns NaN on bad arguments. */
double cm_ks_pvalue(uint64_t n1, uint64_t n2, double d, cm_ks_alt_t alt,
    cm_ks_method_t method, cm_ks_method_t *used);

/* Survival function of the one-sample two-sided D_n (scipy kstwo.sf) and
 * of the one-sided D_n+ (scipy.special.smirnov). */
double cm_kstwo_sf(uint64_t n, double d);
double cm_smirnov(uint64_t n, double d);

int cm_ks_alt_parse(const char *s, cm_ks_alt_t *out);
int cm_ks_method_parse(const char *s, cm_ks_method_t *out);
const char *cm_ks_method_name(cm_ks_method_t m);     /* exact|asymp (scipy) */

/* PSI of two histograms (counts; both must have a positive total). */
double cm_psi_counts(const uint64_t *base, const uint64_t *cur,
    size_t nbins);
/* PSI of raw samples over nbins equal-width bins spanning both samples. */
int cm_psi_samples(const double *a, size_t na, const double *b, size_t nb,
    size_t nbins, double *psi, char *err, size_t errlen);
const char *cm_psi_band(double psi);   /* stable|moderate|significant */

/* Mean and population std of a histogram (values[i] weighted by c[i]). */
void cm_hist_moments(const uint64_t *c, const double *values, size_t nbins,
    double *mean, double *std);

#endif /* CINEMATCH_DRIFT_H */

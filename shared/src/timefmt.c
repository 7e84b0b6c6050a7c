/*
 * timefmt.c: RFC 3339 timestamps in and out (see cinematch/timefmt.h).
 *
 * Day counts use the proleptic Gregorian calendar by era arithmetic
 * (days_from_civil / civil_from_days), so no libc time zone state is
 * touched: timegm() is not in C99, and the nginx workers must not depend
 * on TZ.
 */
#include <stdio.h>
#include <string.h>

#include "cinematch/common.h"
#include "cinematch/timefmt.h"


#define CM_TIME_YEAR_MIN  1970
#define CM_TIME_YEAR_MAX  9999
#define CM_US_PER_SEC     1000000LL
#define CM_SEC_PER_DAY    86400LL


static int cm_time_digits(const char *s, size_t n, int *out);
static int64_t cm_days_from_civil(int y, int m, int d);
static void cm_civil_from_days(int64_t z, int *y, int *m, int *d);
static int cm_days_in_month(int y, int m);


static int
cm_time_digits(const char *s, size_t n, int *out)
{
    size_t  i;
    int     v;

    v = 0;
    for (i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return 0;
        }
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return 1;
}


static int
cm_days_in_month(int y, int m)
{
    static const int  days[12] = { 31, 28, 31, 30, 31, 30, 31, 31, 30, 31,
                                   30, 31 };

    if (m == 2 && ((y % 4 == 0 && y % 100 != 0) || y % 400 == 0)) {
        return 29;
    }
    return days[m - 1];
}


/* Days since 1970-01-01 of y-m-d (H. Hinnant's days_from_civil). */
static int64_t
cm_days_from_civil(int y, int m, int d)
{
    int64_t  era, yoe, doy, doe;

    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;                                   /* [0, 399] */
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;  /* [0, 365] */
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;           /* [0, 146096] */
    return era * 146097 + doe - 719468;
}


static void
cm_civil_from_days(int64_t z, int *y, int *m, int *d)
{
    int64_t  era, doe, yoe, doy, mp;

    z += 719468;
    era = (z >= 0 ? z : z - 146096) / 146097;
    doe = z - era * 146097;
    yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    mp = (5 * doy + 2) / 153;
    *d = (int) (doy - (153 * mp + 2) / 5 + 1);
    *m = (int) (mp < 10 ? mp + 3 : mp - 9);
    *y = (int) (yoe + era * 400 + (*m <= 2));
}


int
cm_time_parse(const char *s, size_t len, int64_t *us)
{
    int      y, mo, d, h, mi, sec, oh, om, sign, v;
    size_t   i, nfrac;
    int64_t  frac, t;

    /* YYYY-MM-DD */
    if (len < 10 || s[4] != '-' || s[7] != '-'
        || !cm_time_digits(s, 4, &y) || !cm_time_digits(s + 5, 2, &mo)
        || !cm_time_digits(s + 8, 2, &d))
    {
        return CM_EINVAL;
    }
    if (y < CM_TIME_YEAR_MIN || y > CM_TIME_YEAR_MAX || mo < 1 || mo > 12
        || d < 1 || d > cm_days_in_month(y, mo))
    {
        return CM_EINVAL;
    }
    t = cm_days_from_civil(y, mo, d) * CM_SEC_PER_DAY;
    if (len == 10) {
        *us = t * CM_US_PER_SEC;
        return CM_OK;
    }

    /* [T ]HH:MM:SS */
    if (len < 20 || (s[10] != 'T' && s[10] != 't' && s[10] != ' ')
        || s[13] != ':' || s[16] != ':'
        || !cm_time_digits(s + 11, 2, &h) || !cm_time_digits(s + 14, 2, &mi)
        || !cm_time_digits(s + 17, 2, &sec)
        || h > 23 || mi > 59 || sec > 59)
    {
        return CM_EINVAL;
    }
    t += h * 3600 + mi * 60 + sec;
    i = 19;

    /* .frac: 1..9 digits, microseconds kept */
    frac = 0;
    if (s[i] == '.') {
        i++;
        for (nfrac = 0; i < len && s[i] >= '0' && s[i] <= '9'; i++, nfrac++)
        {
            if (nfrac < 6) {
                frac = frac * 10 + (s[i] - '0');
            }
        }
        if (nfrac == 0 || nfrac > 9) {
            return CM_EINVAL;
        }
        for ( /* void */ ; nfrac < 6; nfrac++) {
            frac *= 10;
        }
    }

    /* Z | +HH:MM | -HH:MM, and nothing after it */
    if (i < len && (s[i] == 'Z' || s[i] == 'z')) {
        if (i + 1 != len) {
            return CM_EINVAL;
        }
    } else if (i < len && (s[i] == '+' || s[i] == '-')) {
        sign = s[i] == '+' ? 1 : -1;
        if (i + 6 != len || s[i + 3] != ':'
            || !cm_time_digits(s + i + 1, 2, &oh)
            || !cm_time_digits(s + i + 4, 2, &om) || oh > 23 || om > 59)
        {
            return CM_EINVAL;
        }
        v = oh * 3600 + om * 60;
        t -= sign * v;      /* 12:00+01:00 is 11:00Z */
    } else {
        return CM_EINVAL;
    }

    /* an offset may carry 9999-12-31 past the last representable day, or
     * 1970-01-01 before the epoch: outside the range either way */
    if (t < 0 || t >= (cm_days_from_civil(CM_TIME_YEAR_MAX + 1, 1, 1)
                        * CM_SEC_PER_DAY))
    {
        return CM_EINVAL;
    }

    *us = t * CM_US_PER_SEC + frac;
    return CM_OK;
}


size_t
cm_time_format(int64_t us, char *buf, size_t len)
{
    int64_t  secs, days, rem;
    int      y, m, d, n;

    if (len < CM_TIME_FORMAT_LEN || us < 0) {
        return 0;
    }
    secs = us / CM_US_PER_SEC;
    days = secs / CM_SEC_PER_DAY;
    rem = secs % CM_SEC_PER_DAY;
    cm_civil_from_days(days, &y, &m, &d);
    if (y > CM_TIME_YEAR_MAX) {
        return 0;
    }
    n = snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", y, m, d,
                 (int) (rem / 3600), (int) (rem / 60 % 60), (int) (rem % 60),
                 (int) (us % CM_US_PER_SEC));
    return n == CM_TIME_FORMAT_LEN - 1 ? (size_t) n : 0;
}

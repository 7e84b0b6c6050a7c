/*
 * common.c: logging, error strings, clocks.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "cinematch/common.h"

cm_log_level_t cm_log_level = CM_LOG_INFO;

static const char *cm_log_names[] = { "debug", "info", "warn", "error" };


void
cm_vlog(cm_log_level_t level, const char *fmt, va_list ap)
{
    char             line[2048];
    int              n;
    struct timespec  ts;
    struct tm        tm;

    if (level < cm_log_level) {
        return;
    }

    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);

    /* One write() per line so lines from several processes never interleave. */
    n = snprintf(line, sizeof(line),
                 "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s [%d] ",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
                 tm.tm_min, tm.tm_sec, ts.tv_nsec / 1000000,
                 cm_log_names[level], (int) getpid());
    if (n < 0 || (size_t) n >= sizeof(line)) {
        return;
    }
    n += vsnprintf(line + n, sizeof(line) - (size_t) n, fmt, ap);
    if ((size_t) n >= sizeof(line) - 1) {
        n = (int) sizeof(line) - 2;
    }
    line[n++] = '\n';
    if (write(STDERR_FILENO, line, (size_t) n) < 0) {
        /* nowhere left to report it */
    }
}


void
cm_log(cm_log_level_t level, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    cm_vlog(level, fmt, ap);
    va_end(ap);
}


int
cm_log_level_parse(const char *s, cm_log_level_t *out)
{
    size_t i;

    for (i = 0; i < CM_ARRAY_SIZE(cm_log_names); i++) {
        if (strcasecmp(s, cm_log_names[i]) == 0) {
            *out = (cm_log_level_t) i;
            return CM_OK;
        }
    }
    return CM_EINVAL;
}


int
cm_seterr(char *err, size_t errlen, int code, const char *fmt, ...)
{
    va_list ap;

    if (err != NULL && errlen > 0) {
        va_start(ap, fmt);
        vsnprintf(err, errlen, fmt, ap);
        va_end(ap);
    }
    return code;
}


const char *
cm_strerror(int code)
{
    switch (code) {
    case CM_OK:         return "ok";
    case CM_ENOMEM:     return "out of memory";
    case CM_EINVAL:     return "invalid argument";
    case CM_EIO:        return "i/o error";
    case CM_ENOTFOUND:  return "not found";
    case CM_EAGAIN:     return "try again";
    case CM_EFORMAT:    return "bad format";
    case CM_ECANCELED:  return "canceled";
    case CM_ECONFLICT:  return "conflict";
    default:            return "error";
    }
}


uint64_t
cm_now_mono_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec;
}


uint64_t
cm_now_real_ns(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t) ts.tv_sec * 1000000000ull + (uint64_t) ts.tv_nsec;
}

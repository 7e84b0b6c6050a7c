/*
 * common.c: logging, error strings, clocks.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "cinematch/common.h"

cm_log_level_t   cm_log_level = CM_LOG_INFO;
cm_log_format_t  cm_log_format = CM_LOG_TEXT;
const char      *cm_log_cmd = "cinematch";

static const char *cm_log_names[] = { "debug", "info", "warn", "error" };


/* Length of the valid UTF-8 sequence at s (n bytes left), 0 if invalid:
 * no overlongs, no surrogates, nothing past U+10FFFF. */
static size_t
cm_utf8_seq(const unsigned char *s, size_t n)
{
    size_t    len, i;
    uint32_t  c;

    if (s[0] < 0x80) {
        return 1;
    }
    if (s[0] >= 0xc2 && s[0] <= 0xdf) {
        len = 2;
        c = s[0] & 0x1f;
    } else if (s[0] >= 0xe0 && s[0] <= 0xef) {
        len = 3;
        c = s[0] & 0x0f;
    } else if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        len = 4;
        c = s[0] & 0x07;
    } else {
        return 0;
    }
    if (n < len) {
        return 0;
    }
    for (i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            return 0;
        }
        c = (c << 6) | (s[i] & 0x3f);
    }
    if ((len == 3 && (c < 0x800 || (c >= 0xd800 && c <= 0xdfff)))
        || (len == 4 && (c < 0x10000 || c > 0x10ffff)))
    {
        return 0;
    }
    return len;
}


size_t
cm_json_escape(char *dst, size_t cap, const char *src, size_t n)
{
    static const char    hex[] = "0123456789abcdef";
    const unsigned char *s = (const unsigned char *) src;
    const char          *put;
    size_t               o = 0, i = 0, k, need;
    char                 tmp[6];

    if (cap == 0) {
        return 0;
    }
    while (i < n) {
        k = cm_utf8_seq(s + i, n - i);
        if (k == 0) {                       /* invalid byte: U+FFFD */
            put = "\\ufffd";
            need = 6;
            k = 1;
        } else if (s[i] == '"' || s[i] == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char) s[i];
            put = tmp;
            need = 2;
        } else if (s[i] == '\n') {
            put = "\\n";
            need = 2;
        } else if (s[i] < 0x20 || s[i] == 0x7f) {
            tmp[0] = '\\';
            tmp[1] = 'u';
            tmp[2] = '0';
            tmp[3] = '0';
            tmp[4] = hex[s[i] >> 4];
            tmp[5] = hex[s[i] & 0xf];
            put = tmp;
            need = 6;
        } else {
            put = (const char *) s + i;
            need = k;
        }
        if (o + need >= cap) {
            break;                          /* whole characters only */
        }
        memcpy(dst + o, put, need);
        o += need;
        i += k;
    }
    dst[o] = '\0';
    return o;
}


int
cm_log_format_parse(const char *s, cm_log_format_t *out)
{
    if (strcasecmp(s, "text") == 0) {
        *out = CM_LOG_TEXT;
        return CM_OK;
    }
    if (strcasecmp(s, "json") == 0) {
        *out = CM_LOG_JSON;
        return CM_OK;
    }
    return CM_EINVAL;
}


/* {"time":...,"level":...,"pid":...,"cmd":...,"msg":...}: the message is
 * formatted first, then escaped, so a caller's text can never break out
 * of its string. */
static void
cm_vlog_json(cm_log_level_t level, const struct timespec *ts,
             const struct tm *tm, const char *fmt, va_list ap)
{
    char  msg[2048], line[8192], cmd[128];
    int   n, m;

    m = vsnprintf(msg, sizeof(msg), fmt, ap);
    if (m < 0) {
        return;
    }
    if ((size_t) m >= sizeof(msg)) {
        m = (int) sizeof(msg) - 1;
    }
    (void) cm_json_escape(cmd, sizeof(cmd), cm_log_cmd, strlen(cm_log_cmd));
    n = snprintf(line, sizeof(line),
                 "{\"time\":\"%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ\","
                 "\"level\":\"%s\",\"pid\":%d,\"cmd\":\"%s\",\"msg\":\"",
                 tm->tm_year + 1900, tm->tm_mon + 1, tm->tm_mday, tm->tm_hour,
                 tm->tm_min, tm->tm_sec, ts->tv_nsec / 1000000,
                 cm_log_names[level], (int) getpid(), cmd);
    if (n < 0 || (size_t) n >= sizeof(line) - 4) {
        return;
    }
    /* room for the closing "}\n: escaping grows a byte to at most 6 */
    n += (int) cm_json_escape(line + n, sizeof(line) - (size_t) n - 3, msg,
                              (size_t) m);
    memcpy(line + n, "\"}\n", 3);
    n += 3;
    if (write(STDERR_FILENO, line, (size_t) n) < 0) {
        /* nowhere left to report it */
    }
}


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

    if (cm_log_format == CM_LOG_JSON) {
        cm_vlog_json(level, &ts, &tm, fmt, ap);
        return;
    }

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

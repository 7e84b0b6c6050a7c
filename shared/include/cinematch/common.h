/*
 * cinematch/common.h: error codes, logging and small helpers shared by
 * every unit of libcinematch and by the daemons.
 *
 * Errors are values: functions return 0 on success or a negative CM_E*
 * code; where the caller needs text they also take a char *err, size_t
 * errlen buffer that receives a one-line reason.  Nothing below main()
 * calls exit().
 */
#ifndef CINEMATCH_COMMON_H
#define CINEMATCH_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdarg.h>

#ifndef CM_VERSION
#define CM_VERSION "0.0.0"
#endif

#define CM_OK          0
#define CM_ERR        -1   /* generic failure, see the message */
#define CM_ENOMEM     -2
#define CM_EINVAL     -3   /* bad argument or malformed input */
#define CM_EIO        -4   /* read/write/syscall failure */
#define CM_ENOTFOUND  -5
#define CM_EAGAIN     -6   /* try again later (full ring, no slot) */
#define CM_EFORMAT    -7   /* bad magic, version or checksum */
#define CM_ECANCELED  -8
#define CM_ECONFLICT  -9

#define CM_ARRAY_SIZE(a)  (sizeof(a) / sizeof((a)[0]))
#define CM_ALIGN_UP(x, a) (((x) + ((a) - 1)) & ~((size_t) (a) - 1))

typedef enum {
    CM_LOG_DEBUG = 0,
    CM_LOG_INFO,
    CM_LOG_WARN,
    CM_LOG_ERROR
} cm_log_level_t;

typedef enum {
    CM_LOG_TEXT = 0,     /* "2026-01-01T00:00:00.000Z info [pid] message" */
    CM_LOG_JSON          /* {"time","level","pid","cmd","msg"}, one a line */
} cm_log_format_t;

/* Process-wide log threshold; set from --log-level or CINEMATCH_LOG. */
extern cm_log_level_t cm_log_level;
/* Line format; set from --log-format (any command) or CINEMATCH_LOG_FORMAT. */
extern cm_log_format_t cm_log_format;
/* The command that logs ("infer", "train dialog"): the JSON "cmd" field. */
extern const char *cm_log_cmd;

void cm_log(cm_log_level_t level, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void cm_vlog(cm_log_level_t level, const char *fmt, va_list ap);
int cm_log_level_parse(const char *s, cm_log_level_t *out);
int cm_log_format_parse(const char *s, cm_log_format_t *out);
/* Escape n bytes as the inside of a JSON string into dst (cap bytes, NUL
 * terminated, truncated on a character boundary); invalid UTF-8 becomes
 * U+FFFD so the line stays valid JSON.  Returns the length written. */
size_t cm_json_escape(char *dst, size_t cap, const char *src, size_t n);

#define cm_debug(...) cm_log(CM_LOG_DEBUG, __VA_ARGS__)
#define cm_info(...)  cm_log(CM_LOG_INFO, __VA_ARGS__)
#define cm_warn(...)  cm_log(CM_LOG_WARN, __VA_ARGS__)
#define cm_error(...) cm_log(CM_LOG_ERROR, __VA_ARGS__)

/* snprintf into err (if not NULL) and return code; for one-line returns. */
int cm_seterr(char *err, size_t errlen, int code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

const char *cm_strerror(int code);

/* Monotonic and wall clocks in nanoseconds. */
uint64_t cm_now_mono_ns(void);
uint64_t cm_now_real_ns(void);

#endif /* CINEMATCH_COMMON_H */

/*
 * logcopy.h: request-log rows as PostgreSQL COPY text (the format
 * "COPY ... FROM STDIN" reads by default: tab between fields, newline after
 * a row, \N for NULL, backslash escapes).
 *
 * The nginx module's request-log writer builds one such row per answer and
 * sends its batch with the COPY protocol: PostgreSQL then reads each field
 * with its type's input function, with no JSON of the whole batch to parse
 * and no INSERT ... SELECT to plan (docs/BENCHMARKS.md "Request log").
 */
#ifndef CINEMATCH_LOGCOPY_H
#define CINEMATCH_LOGCOPY_H

#include <stddef.h>

/* The most bytes cm_copy_escape writes for len input bytes. */
#define CM_COPY_ESCAPED_MAX(len)   (3 * (len))

/* The most bytes cm_copy_log_members writes for len input bytes. */
#define CM_COPY_MEMBERS_MAX(len)   (3 * (len) + 32)

/*
 * Copy len bytes of src to dst as one COPY text field: backslash, tab,
 * newline and carriage return become \\, \t, \n, \r; a NUL byte (which no
 * PostgreSQL text can hold) becomes U+FFFD.  dst holds
 * CM_COPY_ESCAPED_MAX(len) bytes.  Returns the bytes written.
 */
size_t cm_copy_escape(char *dst, const char *src, size_t len);

/*
 * The answer's members of a log entry, JSON object members without the
 * braces, as the module and the daemon write them:
 *   "model_version":"3","is_fallback":false,"fallback_reason":null,
 *   "detail":{...}
 * (any order; other members ignored; absent ones are NULL), as four COPY
 * fields "model_version \t is_fallback \t fallback_reason \t detail":
 * model_version an integer when the string is 1-9 digits, else \N;
 * is_fallback t/f/\N; fallback_reason the unescaped string, COPY-escaped;
 * detail the JSON value's text (null: \N), COPY-escaped.  dst holds
 * CM_COPY_MEMBERS_MAX(len) bytes.  Returns the bytes written, or CM_EINVAL
 * for text that is not such members (nothing useful written then).
 */
long cm_copy_log_members(char *dst, const char *members, size_t len);

#endif

/*
 * cinematch/timefmt.h: timestamps as the API takes and gives them.
 *
 * Query parameters such as GET /api/v1/admin/usage?from=&to= are parsed
 * here, before anything reaches PostgreSQL, so a malformed value is a 422
 * with a reason and PostgreSQL's looser input forms ("now", "epoch",
 * "infinity", "yesterday") never get in.
 *
 * Accepted (RFC 3339 "date-time", plus a bare full-date):
 *   YYYY-MM-DD                         midnight UTC of that day
 *   YYYY-MM-DD[T|t| ]HH:MM:SS[.frac](Z|z|+HH:MM|-HH:MM)
 * Years 1970..9999; calendar days checked (leap years); seconds 00..59
 * (a leap second 60 is refused: PostgreSQL cannot store it either);
 * frac 1..9 digits, truncated to microseconds; offsets up to +-23:59.
 * Times are microseconds since the Unix epoch, UTC.
 */
#ifndef CINEMATCH_TIMEFMT_H
#define CINEMATCH_TIMEFMT_H

#include <stddef.h>
#include <stdint.h>

/* "YYYY-MM-DDTHH:MM:SS.ffffffZ" and its NUL */
#define CM_TIME_FORMAT_LEN  28

/* CM_OK and *us, or CM_EINVAL (bytes + length; a NUL inside is an error). */
int cm_time_parse(const char *s, size_t len, int64_t *us);

/* Write us as "YYYY-MM-DDTHH:MM:SS.ffffffZ" into buf (CM_TIME_FORMAT_LEN
 * bytes at least); returns the length without the NUL, or 0 when us is
 * outside years 1970..9999 or the buffer is short. */
size_t cm_time_format(int64_t us, char *buf, size_t len);

#endif /* CINEMATCH_TIMEFMT_H */

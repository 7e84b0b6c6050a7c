/*
 * cinematch/dbmaint.h: routine database maintenance (`cinematch maintain`).
 *
 * What a daily timer does so the schema of sql/ stays healthy:
 *   - request_logs: make sure the partitions for this month and the next
 *     exist (rows of a month without one land in request_logs_default,
 *     which every query then scans), and drop monthly partitions older
 *     than the retention (DROP TABLE, not DELETE: instant, no bloat);
 *   - refresh_tokens: delete rows expired for more than a day.
 *
 * Partition names are "request_logs_yYYYYmMM" (see 005_serving.sql).  Only
 * tables with exactly that name shape are ever dropped; the default
 * partition never is.  Months are counted in UTC.
 */
#ifndef CINEMATCH_DBMAINT_H
#define CINEMATCH_DBMAINT_H

#include <stddef.h>

#include <libpq-fe.h>

/* pg_advisory_lock key: "cmmaint" + NUL as a big-endian int64, so two
 * maintenance runs never overlap. */
#define CM_DBMAINT_LOCK_KEY  INT64_C(0x636d6d61696e7400)

typedef struct {
    int     keep_months;    /* drop partitions wholly older than this many
                               months before the current one; 0 = never */
    int     dry_run;        /* report, change nothing */
} cm_dbmaint_opts_t;

typedef struct {
    int     partitions_created;
    int     partitions_dropped;
    long    refresh_tokens_deleted;
} cm_dbmaint_report_t;

/* Parse "request_logs_yYYYYmMM" into *year, *month (1..12).  CM_EINVAL for
 * any other name (including the default partition). */
int cm_dbmaint_partition_month(const char *name, int *year, int *month);

/* Month arithmetic: (year, month) + delta months. */
void cm_dbmaint_month_add(int year, int month, int delta, int *oy, int *om);

/* 1 when the partition of (year, month) holds only data older than
 * keep_months before (now_year, now_month), i.e. it ends on or before the
 * first day of month now - keep_months.  0 when keep_months <= 0. */
int cm_dbmaint_expired(int year, int month, int now_year, int now_month,
                       int keep_months);

/* Run everything on conn (autocommit, synchronous libpq).  Each step logs
 * one line via cm_info.  err gets the first failure. */
int cm_dbmaint_run(PGconn *conn, const cm_dbmaint_opts_t *opts,
                   cm_dbmaint_report_t *rep, char *err, size_t errlen);

#endif /* CINEMATCH_DBMAINT_H */

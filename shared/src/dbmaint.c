/*
 * dbmaint.c: routine database maintenance (see cinematch/dbmaint.h).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/common.h"
#include "cinematch/dbmaint.h"


#define CM_DBMAINT_PREFIX      "request_logs_y"
#define CM_DBMAINT_PREFIX_LEN  (sizeof(CM_DBMAINT_PREFIX) - 1)


static int cm_dbmaint_fail(PGresult *res, PGconn *conn, const char *what,
                           char *err, size_t errlen);
static int cm_dbmaint_exec(PGconn *conn, const char *sql, char *err,
                           size_t errlen);
static int cm_dbmaint_partitions(PGconn *conn, const cm_dbmaint_opts_t *opts,
                                 cm_dbmaint_report_t *rep, char *err,
                                 size_t errlen);
static int cm_dbmaint_drop(PGconn *conn, const char *name, char *err,
                           size_t errlen);
static int cm_dbmaint_tokens(PGconn *conn, const cm_dbmaint_opts_t *opts,
                             cm_dbmaint_report_t *rep, char *err,
                             size_t errlen);


int
cm_dbmaint_partition_month(const char *name, int *year, int *month)
{
    const char  *p;
    int          y = 0, m, i;

    if (name == NULL || strlen(name) != CM_DBMAINT_PREFIX_LEN + 7
        || strncmp(name, CM_DBMAINT_PREFIX, CM_DBMAINT_PREFIX_LEN) != 0)
    {
        return CM_EINVAL;
    }
    p = name + CM_DBMAINT_PREFIX_LEN;      /* "YYYYmMM" */
    for (i = 0; i < 4; i++) {
        if (p[i] < '0' || p[i] > '9') {
            return CM_EINVAL;
        }
        y = y * 10 + (p[i] - '0');
    }
    if (p[4] != 'm' || p[5] < '0' || p[5] > '9' || p[6] < '0' || p[6] > '9') {
        return CM_EINVAL;
    }
    m = (p[5] - '0') * 10 + (p[6] - '0');
    if (m < 1 || m > 12 || y < 1) {
        return CM_EINVAL;
    }
    *year = y;
    *month = m;
    return CM_OK;
}


void
cm_dbmaint_month_add(int year, int month, int delta, int *oy, int *om)
{
    /* months since year 0, month index 0..11; floor division for < 0 */
    long  t = (long) year * 12 + (month - 1) + delta;
    long  y = t >= 0 ? t / 12 : -((-t + 11) / 12);

    *oy = (int) y;
    *om = (int) (t - y * 12) + 1;
}


int
cm_dbmaint_expired(int year, int month, int now_year, int now_month,
                   int keep_months)
{
    int  cy, cm;

    if (keep_months <= 0) {
        return 0;
    }
    cm_dbmaint_month_add(now_year, now_month, -keep_months, &cy, &cm);
    return year < cy || (year == cy && month < cm);
}


static int
cm_dbmaint_fail(PGresult *res, PGconn *conn, const char *what, char *err,
                size_t errlen)
{
    const char  *msg = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)
                           : NULL;

    return cm_seterr(err, errlen, CM_ERR, "%s: %s", what,
                     msg ? msg : PQerrorMessage(conn));
}


static int
cm_dbmaint_exec(PGconn *conn, const char *sql, char *err, size_t errlen)
{
    PGresult  *res;
    int        rc = CM_OK;

    res = PQexec(conn, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK
        && PQresultStatus(res) != PGRES_TUPLES_OK)
    {
        rc = cm_dbmaint_fail(res, conn, sql, err, errlen);
    }
    PQclear(res);
    return rc;
}


static int
cm_dbmaint_drop(PGconn *conn, const char *name, char *err, size_t errlen)
{
    char  *id, sql[512];
    int    rc;

    id = PQescapeIdentifier(conn, name, strlen(name));
    if (id == NULL) {
        return cm_seterr(err, errlen, CM_ENOMEM, "escaping %s: %s", name,
                         PQerrorMessage(conn));
    }
    /* detach + drop in one transaction: readers see the month either
     * whole or gone */
    snprintf(sql, sizeof(sql),
             "BEGIN; ALTER TABLE request_logs DETACH PARTITION %s;"
             " DROP TABLE %s; COMMIT", id, id);
    PQfreemem(id);

    rc = cm_dbmaint_exec(conn, sql, err, errlen);
    if (rc != CM_OK && PQtransactionStatus(conn) != PQTRANS_IDLE) {
        (void) cm_dbmaint_exec(conn, "ROLLBACK", NULL, 0);
    }
    return rc;
}


static int
cm_dbmaint_partitions(PGconn *conn, const cm_dbmaint_opts_t *opts,
                      cm_dbmaint_report_t *rep, char *err, size_t errlen)
{
    PGresult    *res;
    char         name[64], day[16];
    const char  *params[1];
    int          now_y, now_m, y, m, i, rows, rc, delta;

    res = PQexec(conn,
                 "SELECT to_regclass('request_logs') IS NOT NULL"
                 " AND to_regproc('request_logs_ensure_partition') IS NOT NULL,"
                 " extract(year FROM now() AT TIME ZONE 'UTC')::int,"
                 " extract(month FROM now() AT TIME ZONE 'UTC')::int");
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        rc = cm_dbmaint_fail(res, conn, "reading the clock", err, errlen);
        PQclear(res);
        return rc;
    }
    if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
        PQclear(res);
        return cm_seterr(err, errlen, CM_ENOTFOUND,
                         "request_logs is missing: run cinematch migrate first");
    }
    now_y = atoi(PQgetvalue(res, 0, 1));
    now_m = atoi(PQgetvalue(res, 0, 2));
    PQclear(res);

    /* this month and the next, so writes never fall into the default */
    for (delta = 0; delta <= 1; delta++) {
        cm_dbmaint_month_add(now_y, now_m, delta, &y, &m);
        snprintf(name, sizeof(name), CM_DBMAINT_PREFIX "%04dm%02d", y, m);
        snprintf(day, sizeof(day), "%04d-%02d-01", y, m);
        params[0] = name;
        res = PQexecParams(conn, "SELECT to_regclass($1) IS NULL", 1, NULL,
                           params, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            rc = cm_dbmaint_fail(res, conn, name, err, errlen);
            PQclear(res);
            return rc;
        }
        if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
            PQclear(res);
            continue;
        }
        PQclear(res);

        if (opts->dry_run) {
            cm_info("maintain: would create partition %s", name);
            rep->partitions_created++;
            continue;
        }
        params[0] = day;
        res = PQexecParams(conn,
                           "SELECT request_logs_ensure_partition($1::date)",
                           1, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            rc = cm_dbmaint_fail(res, conn, name, err, errlen);
            PQclear(res);
            return rc;
        }
        PQclear(res);
        cm_info("maintain: created partition %s", name);
        rep->partitions_created++;
    }

    if (opts->keep_months <= 0) {
        return CM_OK;
    }

    res = PQexec(conn,
                 "SELECT c.relname FROM pg_inherits i"
                 " JOIN pg_class c ON c.oid = i.inhrelid"
                 " WHERE i.inhparent = 'request_logs'::regclass"
                 " ORDER BY c.relname");
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = cm_dbmaint_fail(res, conn, "listing partitions", err, errlen);
        PQclear(res);
        return rc;
    }
    rows = PQntuples(res);
    for (i = 0; i < rows; i++) {
        const char *rel = PQgetvalue(res, i, 0);

        if (cm_dbmaint_partition_month(rel, &y, &m) != CM_OK
            || !cm_dbmaint_expired(y, m, now_y, now_m, opts->keep_months))
        {
            continue;
        }
        if (opts->dry_run) {
            cm_info("maintain: would drop partition %s (older than %d"
                    " months)", rel, opts->keep_months);
        } else {
            rc = cm_dbmaint_drop(conn, rel, err, errlen);
            if (rc != CM_OK) {
                PQclear(res);
                return rc;
            }
            cm_info("maintain: dropped partition %s (older than %d months)",
                    rel, opts->keep_months);
        }
        rep->partitions_dropped++;
    }
    PQclear(res);
    return CM_OK;
}


static int
cm_dbmaint_tokens(PGconn *conn, const cm_dbmaint_opts_t *opts,
                  cm_dbmaint_report_t *rep, char *err, size_t errlen)
{
    PGresult  *res;
    int        rc;

    res = PQexec(conn, opts->dry_run
        ? "SELECT count(*) FROM refresh_tokens"
          " WHERE expires_at < now() - interval '1 day'"
        : "WITH d AS (DELETE FROM refresh_tokens"
          " WHERE expires_at < now() - interval '1 day' RETURNING 1)"
          " SELECT count(*) FROM d");
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = cm_dbmaint_fail(res, conn, "expired refresh tokens", err, errlen);
        PQclear(res);
        return rc;
    }
    rep->refresh_tokens_deleted = atol(PQgetvalue(res, 0, 0));
    PQclear(res);
    cm_info("maintain: %s %ld expired refresh tokens",
            opts->dry_run ? "would delete" : "deleted",
            rep->refresh_tokens_deleted);
    return CM_OK;
}


int
cm_dbmaint_run(PGconn *conn, const cm_dbmaint_opts_t *opts,
               cm_dbmaint_report_t *rep, char *err, size_t errlen)
{
    PGresult    *res;
    char         key[32];
    const char  *params[1];
    int          rc;

    memset(rep, 0, sizeof(*rep));

    rc = cm_dbmaint_exec(conn, "SET client_min_messages = warning", err,
                         errlen);
    if (rc != CM_OK) {
        return rc;
    }

    snprintf(key, sizeof(key), "%" PRId64, CM_DBMAINT_LOCK_KEY);
    params[0] = key;
    res = PQexecParams(conn, "SELECT pg_try_advisory_lock($1::bigint)", 1,
                       NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = cm_dbmaint_fail(res, conn, "pg_try_advisory_lock", err, errlen);
        PQclear(res);
        return rc;
    }
    if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
        PQclear(res);
        return cm_seterr(err, errlen, CM_EAGAIN,
                         "another cinematch maintain is running");
    }
    PQclear(res);

    rc = cm_dbmaint_partitions(conn, opts, rep, err, errlen);
    if (rc == CM_OK) {
        rc = cm_dbmaint_tokens(conn, opts, rep, err, errlen);
    }

    res = PQexecParams(conn, "SELECT pg_advisory_unlock($1::bigint)", 1, NULL,
                       params, NULL, NULL, 0);
    PQclear(res);
    return rc;
}

/*
 * migrate.c: schema migrations (see cinematch/migrate.h for the rules).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <openssl/evp.h>

#include "cinematch/common.h"
#include "cinematch/migrate.h"


static int cm_migrate_cmp(const void *a, const void *b);
static int cm_migrate_pg_error(PGresult *res, const char *what,
                               const char *text, size_t len, char *err,
                               size_t errlen);
static int cm_migrate_exec_ok(PGconn *conn, const char *sql, char *err,
                              size_t errlen);


static const char *cm_mig_state_names[] = {
    "applied", "pending", "CHANGED", "MISSING", "OUT-OF-ORDER"
};


const char *
cm_mig_state_name(cm_mig_state_t s)
{
    if ((size_t) s >= CM_ARRAY_SIZE(cm_mig_state_names)) {
        return "?";
    }
    return cm_mig_state_names[s];
}


int
cm_migrate_name_parse(const char *name, int *version)
{
    size_t  len, i;
    int     v;

    if (name == NULL) {
        return CM_EINVAL;
    }
    len = strlen(name);

    /* "NNN_" + at least one name char + ".sql" */
    if (len < 9 || len >= CM_MIGRATE_NAME_MAX) {
        return CM_EINVAL;
    }
    for (i = 0; i < 3; i++) {
        if (name[i] < '0' || name[i] > '9') {
            return CM_EINVAL;
        }
    }
    if (name[3] != '_' || strcmp(name + len - 4, ".sql") != 0) {
        return CM_EINVAL;
    }
    for (i = 4; i < len - 4; i++) {
        char c = name[i];

        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) {
            return CM_EINVAL;
        }
    }

    v = (name[0] - '0') * 100 + (name[1] - '0') * 10 + (name[2] - '0');
    if (v == 0) {
        return CM_EINVAL;
    }
    if (version != NULL) {
        *version = v;
    }
    return CM_OK;
}




static int
cm_migrate_cmp(const void *a, const void *b)
{
    const cm_migration_t *x = a, *y = b;

    if (x->version != y->version) {
        return x->version < y->version ? -1 : 1;
    }
    return strcmp(x->name, y->name);
}


int
cm_migrate_sort(cm_migration_t *m, size_t n, char *err, size_t errlen)
{
    size_t i;

    if (n > 1) {
        qsort(m, n, sizeof(*m), cm_migrate_cmp);
    }
    for (i = 1; i < n; i++) {
        if (m[i].version == m[i - 1].version) {
            return cm_seterr(err, errlen, CM_ECONFLICT,
                             "two migrations share version %03d: %s and %s",
                             m[i].version, m[i - 1].name, m[i].name);
        }
    }
    return CM_OK;
}


int
cm_migrate_read_file(const char *dir, const char *name, char **buf,
                     size_t *len, char *err, size_t errlen)
{
    char         path[4096];
    struct stat  st;
    char        *p;
    size_t       got = 0;
    ssize_t      r;
    int          fd, n;

    *buf = NULL;
    *len = 0;

    n = snprintf(path, sizeof(path), "%s/%s", dir, name);
    if (n < 0 || (size_t) n >= sizeof(path)) {
        return cm_seterr(err, errlen, CM_EINVAL, "path too long: %s/%s",
                         dir, name);
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        return cm_seterr(err, errlen, errno == ENOENT ? CM_ENOTFOUND : CM_EIO,
                         "open %s: %s", path, strerror(errno));
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return cm_seterr(err, errlen, CM_EIO, "%s: not a regular file", path);
    }
    if ((uint64_t) st.st_size > CM_MIGRATE_FILE_MAX) {
        close(fd);
        return cm_seterr(err, errlen, CM_EINVAL, "%s: larger than %u bytes",
                         path, CM_MIGRATE_FILE_MAX);
    }

    p = malloc((size_t) st.st_size + 1);
    if (p == NULL) {
        close(fd);
        return cm_seterr(err, errlen, CM_ENOMEM, "out of memory reading %s",
                         path);
    }
    while (got < (size_t) st.st_size) {
        r = read(fd, p + got, (size_t) st.st_size - got);
        if (r < 0 && errno == EINTR) {
            continue;
        }
        if (r <= 0) {
            int e = r < 0 ? errno : EIO;

            free(p);
            close(fd);
            return cm_seterr(err, errlen, CM_EIO, "read %s: %s", path,
                             r < 0 ? strerror(e) : "file shrank");
        }
        got += (size_t) r;
    }
    close(fd);
    p[got] = '\0';

    /* libpq takes the SQL as a C string: an embedded NUL would silently
     * cut the migration short while the checksum covers all of it. */
    if (memchr(p, '\0', got) != NULL) {
        free(p);
        return cm_seterr(err, errlen, CM_EINVAL, "%s: contains a NUL byte",
                         path);
    }

    *buf = p;
    *len = got;
    return CM_OK;
}


int
cm_migrate_scan(const char *dir, cm_migration_t **out, size_t *n, char *err,
                size_t errlen)
{
    DIR             *d;
    struct dirent   *de;
    cm_migration_t  *m = NULL, *tmp;
    size_t           count = 0, cap = 0, len, flen;
    char            *buf;
    int              rc, version;

    *out = NULL;
    *n = 0;

    d = opendir(dir);
    if (d == NULL) {
        return cm_seterr(err, errlen, errno == ENOENT ? CM_ENOTFOUND : CM_EIO,
                         "migrations directory %s: %s", dir, strerror(errno));
    }

    while ((de = readdir(d)) != NULL) {
        len = strlen(de->d_name);
        if (len < 4 || strcmp(de->d_name + len - 4, ".sql") != 0) {
            continue;
        }
        if (cm_migrate_name_parse(de->d_name, &version) != CM_OK) {
            rc = cm_seterr(err, errlen, CM_EINVAL,
                           "%s/%s: bad migration name (want NNN_name.sql:"
                           " three digits from 001, then [a-z0-9_]+)",
                           dir, de->d_name);
            goto failed;
        }
        if (count == CM_MIGRATE_MAX_FILES) {
            rc = cm_seterr(err, errlen, CM_EINVAL, "%s: more than %d"
                           " migrations", dir, CM_MIGRATE_MAX_FILES);
            goto failed;
        }
        if (count == cap) {
            cap = cap ? cap * 2 : 16;
            tmp = realloc(m, cap * sizeof(*m));
            if (tmp == NULL) {
                rc = cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
                goto failed;
            }
            m = tmp;
        }

        memset(&m[count], 0, sizeof(m[count]));
        m[count].version = version;
        memcpy(m[count].name, de->d_name, len + 1);

        rc = cm_migrate_read_file(dir, de->d_name, &buf, &flen, err, errlen);
        if (rc != CM_OK) {
            goto failed;
        }
        rc = cm_sha256_hex(buf, flen, m[count].sha256);
        free(buf);
        if (rc != CM_OK) {
            rc = cm_seterr(err, errlen, CM_ERR, "sha256 of %s failed",
                           de->d_name);
            goto failed;
        }
        count++;
    }
    closedir(d);
    d = NULL;

    rc = cm_migrate_sort(m, count, err, errlen);
    if (rc != CM_OK) {
        goto failed;
    }

    *out = m;
    *n = count;
    return CM_OK;

failed:
    if (d != NULL) {
        closedir(d);
    }
    free(m);
    return rc;
}


int
cm_migrate_plan(const cm_migration_t *applied, size_t napplied,
                const cm_migration_t *files, size_t nfiles,
                cm_mig_entry_t *entries, size_t *nentries, char *err,
                size_t errlen)
{
    size_t           i = 0, j = 0, k = 0;
    int              rc = CM_OK, newest;
    cm_mig_entry_t  *e;

    *nentries = 0;
    if (err != NULL && errlen > 0) {
        err[0] = '\0';
    }

    for (i = 1; i < napplied; i++) {
        if (applied[i].version <= applied[i - 1].version) {
            return cm_seterr(err, errlen, CM_EINVAL,
                             "applied history not sorted by version");
        }
    }
    for (j = 1; j < nfiles; j++) {
        if (files[j].version <= files[j - 1].version) {
            return cm_seterr(err, errlen, CM_EINVAL,
                             "migration files not sorted by version");
        }
    }

    newest = napplied ? applied[napplied - 1].version : 0;
    i = 0;
    j = 0;

    /* Merge the two sorted lists by version. */
    while (i < napplied || j < nfiles) {
        e = &entries[k++];

        if (j == nfiles
            || (i < napplied && applied[i].version < files[j].version))
        {
            e->state = CM_MIG_MISSING;
            e->version = applied[i].version;
            e->applied = &applied[i++];
            e->file = NULL;
            if (rc == CM_OK) {
                rc = cm_seterr(err, errlen, CM_ECONFLICT,
                               "migration %s was applied (%s) but its file"
                               " is gone; restore it", e->applied->name,
                               e->applied->applied_at[0]
                               ? e->applied->applied_at : "earlier");
            }

        } else if (i == napplied || files[j].version < applied[i].version) {
            e->version = files[j].version;
            e->file = &files[j++];
            e->applied = NULL;
            if (e->version < newest) {
                e->state = CM_MIG_OUT_OF_ORDER;
                if (rc == CM_OK) {
                    rc = cm_seterr(err, errlen, CM_ECONFLICT,
                                   "%s is numbered below the newest applied"
                                   " migration (%03d); renumber it above",
                                   e->file->name, newest);
                }
            } else {
                e->state = CM_MIG_PENDING;
            }

        } else {
            e->version = files[j].version;
            e->file = &files[j++];
            e->applied = &applied[i++];
            if (strcmp(e->file->sha256, e->applied->sha256) != 0) {
                e->state = CM_MIG_CHANGED;
                if (rc == CM_OK) {
                    rc = cm_seterr(err, errlen, CM_ECONFLICT,
                                   "%s changed after it was applied (sha256"
                                   " %.12s... recorded, %.12s... on disk);"
                                   " applied migrations are immutable: undo"
                                   " the edit and add a new migration",
                                   e->file->name, e->applied->sha256,
                                   e->file->sha256);
                }
            } else if (strcmp(e->file->name, e->applied->name) != 0) {
                e->state = CM_MIG_CHANGED;
                if (rc == CM_OK) {
                    rc = cm_seterr(err, errlen, CM_ECONFLICT,
                                   "version %03d was applied as %s but the"
                                   " file is now %s; rename it back",
                                   e->version, e->applied->name,
                                   e->file->name);
                }
            } else {
                e->state = CM_MIG_APPLIED;
            }
        }
    }

    *nentries = k;
    return rc;
}


int
cm_migrate_line_of(const char *text, size_t len, long pos)
{
    size_t  i;
    long    chars = 0;
    int     line = 1;

    for (i = 0; i < len; i++) {
        /* count characters, not UTF-8 continuation bytes */
        if (((unsigned char) text[i] & 0xc0) != 0x80) {
            if (++chars >= pos) {
                break;
            }
        }
        if (text[i] == '\n') {
            line++;
        }
    }
    return line;
}


/* ---- database ---- */


static int
cm_migrate_pg_error(PGresult *res, const char *what, const char *text,
                    size_t len, char *err, size_t errlen)
{
    const char  *primary, *detail, *hint, *state, *position;
    char         where[160] = "";

    primary = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
    detail = PQresultErrorField(res, PG_DIAG_MESSAGE_DETAIL);
    hint = PQresultErrorField(res, PG_DIAG_MESSAGE_HINT);
    state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
    position = PQresultErrorField(res, PG_DIAG_STATEMENT_POSITION);

    if (text != NULL && position != NULL) {
        snprintf(where, sizeof(where), ":%d",
                 cm_migrate_line_of(text, len, strtol(position, NULL, 10)));
    }
    if (primary == NULL) {
        primary = PQresultErrorMessage(res);
    }

    return cm_seterr(err, errlen, CM_ERR, "%s%s: %s%s%s%s%s (SQLSTATE %s)",
                     what, where, primary,
                     detail ? "; " : "", detail ? detail : "",
                     hint ? "; hint: " : "", hint ? hint : "",
                     state ? state : "?");
}


static int
cm_migrate_exec_ok(PGconn *conn, const char *sql, char *err, size_t errlen)
{
    PGresult        *res;
    ExecStatusType   st;
    int              rc = CM_OK;

    res = PQexec(conn, sql);
    st = PQresultStatus(res);
    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        rc = res ? cm_migrate_pg_error(res, sql, NULL, 0, err, errlen)
                 : cm_seterr(err, errlen, CM_EIO, "%s: %s", sql,
                             PQerrorMessage(conn));
    }
    PQclear(res);
    return rc;
}


int
cm_migrate_db_prepare(PGconn *conn, int lock_timeout_s, char *err,
                      size_t errlen)
{
    PGresult    *res;
    char         sql[128], key[32];
    const char  *params[1];
    const char  *state;
    int          rc;

    rc = cm_migrate_exec_ok(conn, "SET client_min_messages = warning",
                            err, errlen);
    if (rc != CM_OK) {
        return rc;
    }

    /* Advisory locks are heavyweight locks, so lock_timeout bounds the
     * wait; a second migrator queues behind the first and then finds
     * nothing pending. */
    snprintf(sql, sizeof(sql), "SET lock_timeout = '%ds'",
             lock_timeout_s > 0 ? lock_timeout_s : 0);
    rc = cm_migrate_exec_ok(conn, sql, err, errlen);
    if (rc != CM_OK) {
        return rc;
    }

    snprintf(key, sizeof(key), "%" PRId64, CM_MIGRATE_LOCK_KEY);
    params[0] = key;
    res = PQexecParams(conn, "SELECT pg_advisory_lock($1::bigint)", 1, NULL,
                       params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (state != NULL && strcmp(state, "55P03") == 0) {
            rc = cm_seterr(err, errlen, CM_EAGAIN,
                           "another migrator held the migration lock for"
                           " more than %d s (see pg_locks where"
                           " locktype = 'advisory')", lock_timeout_s);
        } else {
            rc = cm_migrate_pg_error(res, "pg_advisory_lock", NULL, 0, err,
                                     errlen);
        }
        PQclear(res);
        return rc;
    }
    PQclear(res);

    rc = cm_migrate_exec_ok(conn, "RESET lock_timeout", err, errlen);
    if (rc != CM_OK) {
        return rc;
    }

    return cm_migrate_exec_ok(conn,
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version    integer PRIMARY KEY CHECK (version BETWEEN 1 AND 999),"
        " name       text NOT NULL UNIQUE,"
        " sha256     char(64) NOT NULL CHECK (sha256 ~ '^[0-9a-f]{64}$'),"
        " applied_at timestamptz NOT NULL DEFAULT now(),"
        " duration_ms double precision NOT NULL DEFAULT 0,"
        " applied_by text NOT NULL DEFAULT current_user)",
        err, errlen);
}


void
cm_migrate_db_unlock(PGconn *conn)
{
    PGresult    *res;
    char         key[32];
    const char  *params[1];

    snprintf(key, sizeof(key), "%" PRId64, CM_MIGRATE_LOCK_KEY);
    params[0] = key;
    res = PQexecParams(conn, "SELECT pg_advisory_unlock($1::bigint)", 1, NULL,
                       params, NULL, NULL, 0);
    PQclear(res);
}


int
cm_migrate_db_applied(PGconn *conn, cm_migration_t **out, size_t *n,
                      char *err, size_t errlen)
{
    PGresult        *res;
    cm_migration_t  *m;
    int              rows, i, rc;
    const char      *name, *sha;

    *out = NULL;
    *n = 0;

    res = PQexec(conn, "SELECT to_regclass('schema_migrations') IS NOT NULL");
    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        rc = cm_migrate_pg_error(res, "schema_migrations lookup", NULL, 0, err,
                                 errlen);
        PQclear(res);
        return rc;
    }
    if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
        PQclear(res);
        return CM_OK;
    }
    PQclear(res);

    res = PQexec(conn,
                 "SELECT version, name, sha256,"
                 " to_char(applied_at AT TIME ZONE 'UTC',"
                 " 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
                 " FROM schema_migrations ORDER BY version");
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = cm_migrate_pg_error(res, "reading schema_migrations", NULL, 0,
                                 err, errlen);
        PQclear(res);
        return rc;
    }

    rows = PQntuples(res);
    if (rows == 0) {
        PQclear(res);
        return CM_OK;
    }
    m = calloc((size_t) rows, sizeof(*m));
    if (m == NULL) {
        PQclear(res);
        return cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
    }
    for (i = 0; i < rows; i++) {
        m[i].version = atoi(PQgetvalue(res, i, 0));
        name = PQgetvalue(res, i, 1);
        sha = PQgetvalue(res, i, 2);
        if (strlen(name) >= sizeof(m[i].name)
            || strlen(sha) != CM_SHA256_HEX_LEN)
        {
            free(m);
            PQclear(res);
            return cm_seterr(err, errlen, CM_EFORMAT,
                             "schema_migrations row %d is malformed", i);
        }
        memcpy(m[i].name, name, strlen(name) + 1);
        memcpy(m[i].sha256, sha, CM_SHA256_HEX_LEN + 1);
        snprintf(m[i].applied_at, sizeof(m[i].applied_at), "%s",
                 PQgetvalue(res, i, 3));
    }
    PQclear(res);

    *out = m;
    *n = (size_t) rows;
    return CM_OK;
}


int
cm_migrate_db_apply(PGconn *conn, const char *dir, const cm_migration_t *m,
                    double *ms, char *err, size_t errlen)
{
    PGresult    *res;
    char        *sql = NULL;
    size_t       len;
    char         sha[CM_SHA256_HEX_LEN + 1], version[16], dur[32];
    const char  *params[4];
    uint64_t     t0;
    int          rc;

    *ms = 0;
    rc = cm_migrate_read_file(dir, m->name, &sql, &len, err, errlen);
    if (rc != CM_OK) {
        return rc;
    }
    if (cm_sha256_hex(sql, len, sha) != CM_OK || strcmp(sha, m->sha256) != 0) {
        free(sql);
        return cm_seterr(err, errlen, CM_ECONFLICT,
                         "%s changed while migrating; run again", m->name);
    }

    t0 = cm_now_mono_ns();
    rc = cm_migrate_exec_ok(conn, "BEGIN", err, errlen);
    if (rc != CM_OK) {
        free(sql);
        return rc;
    }

    /* The simple query protocol runs a multi-statement string; inside our
     * BEGIN it is all-or-nothing. */
    res = PQexec(conn, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK
        && PQresultStatus(res) != PGRES_TUPLES_OK
        && PQresultStatus(res) != PGRES_EMPTY_QUERY)
    {
        rc = res ? cm_migrate_pg_error(res, m->name, sql, len, err, errlen)
                 : cm_seterr(err, errlen, CM_EIO, "%s: %s", m->name,
                             PQerrorMessage(conn));
        PQclear(res);
        free(sql);
        (void) cm_migrate_exec_ok(conn, "ROLLBACK", NULL, 0);
        return rc;
    }
    PQclear(res);
    free(sql);

    if (PQtransactionStatus(conn) != PQTRANS_INTRANS) {
        /* the file ran COMMIT or ROLLBACK itself: the wrapper's guarantee
         * is gone, so do not record it as cleanly applied */
        if (PQtransactionStatus(conn) != PQTRANS_IDLE) {
            (void) cm_migrate_exec_ok(conn, "ROLLBACK", NULL, 0);
        }
        return cm_seterr(err, errlen, CM_EINVAL,
                         "%s ended the transaction itself (COMMIT/ROLLBACK"
                         " inside a migration is not allowed); its effects"
                         " may be partially committed", m->name);
    }

    *ms = (double) (cm_now_mono_ns() - t0) / 1e6;
    snprintf(version, sizeof(version), "%d", m->version);
    snprintf(dur, sizeof(dur), "%.3f", *ms);
    params[0] = version;
    params[1] = m->name;
    params[2] = sha;
    params[3] = dur;
    res = PQexecParams(conn,
                       "INSERT INTO schema_migrations"
                       " (version, name, sha256, duration_ms)"
                       " VALUES ($1, $2, $3, $4)", 4, NULL, params, NULL,
                       NULL, 0);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        rc = cm_migrate_pg_error(res, "recording migration", NULL, 0, err,
                                 errlen);
        PQclear(res);
        (void) cm_migrate_exec_ok(conn, "ROLLBACK", NULL, 0);
        return rc;
    }
    PQclear(res);

    rc = cm_migrate_exec_ok(conn, "COMMIT", err, errlen);
    if (rc != CM_OK) {
        return rc;
    }
    *ms = (double) (cm_now_mono_ns() - t0) / 1e6;
    return CM_OK;
}

/*
 * mlops_util.c: libpq helpers, file helpers, the model store and the
 * registry operations (register, promote, rollback).  See mlops.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>
#include <libpq-fe.h>

#include "cinematch/common.h"
#include "cinematch/digest.h"
#include "cinematch/recsys.h"
#include "mlops.h"


static int cm_copy_file(const char *from, const char *to, char *err,
    size_t errlen);
static int cm_write_text(const char *path, const char *text, char *err,
    size_t errlen);
static int cm_model_name_ok(const char *s);
static void cm_rm_version_dir(const char *dir);
static void cm_run_watch_on_signal(int sig);
static void *cm_run_watcher(void *arg);


static int  cm_run_watch_pipe[2] = { -1, -1 };


PGconn *
cm_pg_connect(const char *dsn, const char *app, char *err, size_t errlen)
{
    const char  *kw[3], *val[3];
    PGconn      *c;

    if (dsn == NULL) {
        dsn = getenv("CINEMATCH_PG_DSN");
    }
    kw[0] = "dbname";
    val[0] = dsn != NULL ? dsn : "";
    kw[1] = "application_name";
    val[1] = app;
    kw[2] = NULL;
    val[2] = NULL;
    c = PQconnectdbParams(kw, val, 1);
    if (c == NULL || PQstatus(c) != CONNECTION_OK) {
        cm_seterr(err, errlen, CM_EIO, "cannot connect to PostgreSQL: %s",
                  c != NULL ? PQerrorMessage(c) : "out of memory");
        err[strcspn(err, "\n")] = '\0';
        PQfinish(c);
        return NULL;
    }
    return c;
}


int
cm_pg_exec(PGconn *c, const char *sql, char *err, size_t errlen)
{
    PGresult        *r = PQexec(c, sql);
    ExecStatusType   st = PQresultStatus(r);

    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        cm_seterr(err, errlen, CM_EIO, "%s", PQresultErrorMessage(r));
        err[strcspn(err, "\n")] = '\0';
        PQclear(r);
        return CM_EIO;
    }
    PQclear(r);
    return CM_OK;
}


PGresult *
cm_pg_query(PGconn *c, const char *sql, int n, const char *const *v,
    char *err, size_t errlen)
{
    PGresult        *r = PQexecParams(c, sql, n, NULL, v, NULL, NULL, 0);
    ExecStatusType   st = PQresultStatus(r);

    if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK) {
        cm_seterr(err, errlen, CM_EIO, "%s", PQresultErrorMessage(r));
        err[strcspn(err, "\n")] = '\0';
        PQclear(r);
        return NULL;
    }
    return r;
}


int
cm_pg_copy_begin(PGconn *c, const char *sql, char *err, size_t errlen)
{
    PGresult *r = PQexec(c, sql);

    if (PQresultStatus(r) != PGRES_COPY_IN) {
        cm_seterr(err, errlen, CM_EIO, "%s", PQresultErrorMessage(r));
        err[strcspn(err, "\n")] = '\0';
        PQclear(r);
        return CM_EIO;
    }
    PQclear(r);
    return CM_OK;
}


int
cm_pg_copy_put(PGconn *c, const char *buf, size_t len, char *err,
    size_t errlen)
{
    if (len > 0 && PQputCopyData(c, buf, (int) len) != 1) {
        cm_seterr(err, errlen, CM_EIO, "COPY: %s", PQerrorMessage(c));
        err[strcspn(err, "\n")] = '\0';
        return CM_EIO;
    }
    return CM_OK;
}


int
cm_pg_copy_end(PGconn *c, char *err, size_t errlen)
{
    PGresult  *r;
    int        rc = CM_OK;

    if (PQputCopyEnd(c, NULL) != 1) {
        cm_seterr(err, errlen, CM_EIO, "COPY: %s", PQerrorMessage(c));
        err[strcspn(err, "\n")] = '\0';
        return CM_EIO;
    }
    while ((r = PQgetResult(c)) != NULL) {
        if (PQresultStatus(r) != PGRES_COMMAND_OK && rc == CM_OK) {
            cm_seterr(err, errlen, CM_EIO, "COPY: %s",
                      PQresultErrorMessage(r));
            err[strcspn(err, "\n")] = '\0';
            rc = CM_EIO;
        }
        PQclear(r);
    }
    return rc;
}


int
cm_read_file(const char *path, char **buf, size_t *len, char *err,
    size_t errlen)
{
    FILE    *f = fopen(path, "rb");
    char    *b = NULL, *nb;
    size_t   n = 0, cap = 0, got;

    if (f == NULL) {
        return cm_seterr(err, errlen, CM_EIO, "%s: %s", path,
                         strerror(errno));
    }
    for (;;) {
        if (cap - n < 65536) {
            cap = cap ? cap * 2 : 1 << 20;
            nb = realloc(b, cap + 1);
            if (nb == NULL) {
                free(b);
                fclose(f);
                return cm_seterr(err, errlen, CM_ENOMEM, "%s: out of memory",
                                 path);
            }
            b = nb;
        }
        got = fread(b + n, 1, cap - n, f);
        n += got;
        if (got == 0) {
            break;
        }
    }
    if (ferror(f)) {
        free(b);
        fclose(f);
        return cm_seterr(err, errlen, CM_EIO, "%s: read error", path);
    }
    fclose(f);
    b[n] = '\0';
    *buf = b;
    *len = n;
    return CM_OK;
}


int
cm_sha256_file(const char *path, char hex[65], uint64_t *bytes, char *err,
    size_t errlen)
{
    char    *buf = NULL;
    size_t   len = 0;
    int      rc;

    rc = cm_read_file(path, &buf, &len, err, errlen);
    if (rc != CM_OK) {
        return rc;
    }
    rc = cm_sha256_hex(buf, len, hex);
    free(buf);
    if (bytes != NULL) {
        *bytes = len;
    }
    return rc == CM_OK ? CM_OK : cm_seterr(err, errlen, CM_ERR, "sha256");
}


void
cm_model_store_root(char *buf, size_t len)
{
    const char  *env = getenv("CINEMATCH_MODEL_STORE");
    char         cwd[PATH_MAX];

    if (env == NULL || env[0] == '\0') {
        env = CM_MODEL_STORE_DEFAULT;
    }
    if (env[0] == '/' || getcwd(cwd, sizeof(cwd)) == NULL) {
        snprintf(buf, len, "%s", env);
    } else {
        snprintf(buf, len, "%s/%s", cwd, env);
    }
}


int
cm_mkdir_p(const char *path, char *err, size_t errlen)
{
    char    tmp[PATH_MAX];
    size_t  i;

    if ((size_t) snprintf(tmp, sizeof(tmp), "%s", path) >= sizeof(tmp)) {
        return cm_seterr(err, errlen, CM_EINVAL, "path too long");
    }
    for (i = 1; tmp[i] != '\0'; i++) {
        if (tmp[i] == '/') {
            tmp[i] = '\0';
            if (mkdir(tmp, 0755) != 0 && errno != EEXIST) {
                return cm_seterr(err, errlen, CM_EIO, "mkdir %s: %s", tmp,
                                 strerror(errno));
            }
            tmp[i] = '/';
        }
    }
    if (mkdir(tmp, 0755) != 0 && errno != EEXIST) {
        return cm_seterr(err, errlen, CM_EIO, "mkdir %s: %s", tmp,
                         strerror(errno));
    }
    return CM_OK;
}


/* Copy through a temporary name, fsync, rename: a crash leaves either no
 * file or the whole one. */
static int
cm_copy_file(const char *from, const char *to, char *err, size_t errlen)
{
    char     tmp[PATH_MAX + 8], buf[1 << 16];
    int      in, out;
    ssize_t  n;

    if ((size_t) snprintf(tmp, sizeof(tmp), "%s.tmp", to) >= sizeof(tmp)) {
        return cm_seterr(err, errlen, CM_EINVAL, "path too long");
    }
    in = open(from, O_RDONLY | O_CLOEXEC);
    if (in < 0) {
        return cm_seterr(err, errlen, CM_EIO, "%s: %s", from,
                         strerror(errno));
    }
    out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0) {
        close(in);
        return cm_seterr(err, errlen, CM_EIO, "%s: %s", tmp, strerror(errno));
    }
    while ((n = read(in, buf, sizeof(buf))) > 0) {
        if (write(out, buf, (size_t) n) != n) {
            n = -1;
            break;
        }
    }
    close(in);
    if (n < 0 || fsync(out) != 0) {
        close(out);
        unlink(tmp);
        return cm_seterr(err, errlen, CM_EIO, "copy %s -> %s: %s", from, tmp,
                         strerror(errno));
    }
    close(out);
    if (rename(tmp, to) != 0) {
        unlink(tmp);
        return cm_seterr(err, errlen, CM_EIO, "rename %s: %s", to,
                         strerror(errno));
    }
    return CM_OK;
}


static int
cm_write_text(const char *path, const char *text, char *err, size_t errlen)
{
    FILE *f = fopen(path, "w");

    if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0) {
        return cm_seterr(err, errlen, CM_EIO, "%s: %s", path,
                         strerror(errno));
    }
    return CM_OK;
}


static int
cm_model_name_ok(const char *s)
{
    size_t i, n = strlen(s);

    if (n == 0 || n > 31 || s[0] < 'a' || s[0] > 'z') {
        return 0;
    }
    for (i = 1; i < n; i++) {
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9')
              || s[i] == '_' || s[i] == '-'))
        {
            return 0;
        }
    }
    return 1;
}


static void
cm_rm_version_dir(const char *dir)
{
    char  p[PATH_MAX + 32];

    if ((size_t) snprintf(p, sizeof(p), "%s/meta.json", dir) < sizeof(p)) {
        unlink(p);
    }
    if ((size_t) snprintf(p, sizeof(p), "%s/SHA256SUMS", dir) < sizeof(p)) {
        unlink(p);
    }
    rmdir(dir);
}


int
cm_model_register(PGconn *c, const char *name, const char *task,
    const char *artifact, const char *metrics_json, int64_t run_id,
    const char *stage, const char *description, int *version, char *err,
    size_t errlen)
{
    char            sha[65], root[PATH_MAX], dir[PATH_MAX + 64];
    char            dst[PATH_MAX + 128], p[PATH_MAX + 160], ver[16];
    char            bytes_s[24], run_s[24], sums[PATH_MAX + 100], *meta;
    const char     *base, *v[9];
    uint64_t        bytes;
    json_t         *metrics = NULL, *m;
    json_error_t    je;
    PGresult       *r;
    cm_rs_model_t  *model;
    int             rc, in_tx = 0, made_dir = 0;

    if (!cm_model_name_ok(name)) {
        return cm_seterr(err, errlen, CM_EINVAL, "model name '%s' must match"
                         " [a-z][a-z0-9_-]{0,30}", name);
    }
    if (metrics_json != NULL) {
        metrics = json_loads(metrics_json, 0, &je);
        if (metrics == NULL || !json_is_object(metrics)) {
            json_decref(metrics);
            return cm_seterr(err, errlen, CM_EINVAL, "metrics must be a JSON"
                             " object: %s", je.text);
        }
    } else {
        metrics = json_object();
    }
    if (strcmp(task, "recsys") == 0) {
        /* refuse what the daemon would refuse, before it is in the store */
        rc = cm_rs_model_open(artifact, &model, err, errlen);
        if (rc != CM_OK) {
            json_decref(metrics);
            return rc;
        }
        cm_rs_model_free(model);
    }
    rc = cm_sha256_file(artifact, sha, &bytes, err, errlen);
    if (rc != CM_OK) {
        json_decref(metrics);
        return rc;
    }

    rc = cm_pg_exec(c, "BEGIN", err, errlen);
    if (rc != CM_OK) {
        goto failed;
    }
    in_tx = 1;
    v[0] = name;
    r = cm_pg_query(c, "SELECT pg_advisory_xact_lock(hashtext('cinematch"
                    ".registry.' || $1))", 1, v, err, errlen);
    if (r == NULL) {
        rc = CM_EIO;
        goto failed;
    }
    PQclear(r);
    r = cm_pg_query(c, "SELECT coalesce(max(version), 0) + 1 FROM"
                    " model_versions WHERE model_name = $1", 1, v, err,
                    errlen);
    if (r == NULL) {
        rc = CM_EIO;
        goto failed;
    }
    *version = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);

    cm_model_store_root(root, sizeof(root));
    snprintf(dir, sizeof(dir), "%s/%s/%d", root, name, *version);
    rc = cm_mkdir_p(dir, err, errlen);
    if (rc != CM_OK) {
        goto failed;
    }
    made_dir = 1;
    base = strrchr(artifact, '/');
    base = base != NULL ? base + 1 : artifact;
    snprintf(dst, sizeof(dst), "%s/%s", dir, base);
    rc = cm_copy_file(artifact, dst, err, errlen);
    if (rc != CM_OK) {
        goto failed;
    }

    m = json_pack("{s:s, s:i, s:s, s:s, s:s, s:I, s:s, s:I, s:O, s:s}",
                  "name", name, "version", *version, "task", task,
                  "artifact", base, "sha256", sha, "bytes", (json_int_t) bytes,
                  "source", artifact, "created", (json_int_t) time(NULL),
                  "metrics", metrics, "code_version", CM_VERSION);
    if (run_id > 0 && m != NULL) {
        json_object_set_new(m, "training_run_id", json_integer(run_id));
    }
    meta = m != NULL ? json_dumps(m, JSON_INDENT(2) | JSON_SORT_KEYS) : NULL;
    json_decref(m);
    if (meta == NULL) {
        rc = cm_seterr(err, errlen, CM_ENOMEM, "meta.json: out of memory");
        goto failed;
    }
    snprintf(p, sizeof(p), "%s/meta.json", dir);
    rc = cm_write_text(p, meta, err, errlen);
    free(meta);
    if (rc != CM_OK) {
        goto failed;
    }
    snprintf(p, sizeof(p), "%s/SHA256SUMS", dir);
    snprintf(sums, sizeof(sums), "%s  %s\n", sha, base);
    rc = cm_write_text(p, sums, err, errlen);
    if (rc != CM_OK) {
        goto failed;
    }

    meta = json_dumps(metrics, JSON_COMPACT);
    snprintf(ver, sizeof(ver), "%d", *version);
    snprintf(bytes_s, sizeof(bytes_s), "%llu", (unsigned long long) bytes);
    snprintf(run_s, sizeof(run_s), "%lld", (long long) run_id);
    v[0] = name;
    v[1] = ver;
    v[2] = task;
    v[3] = stage;
    v[4] = dst;
    v[5] = sha;
    v[6] = bytes_s;
    v[7] = meta != NULL ? meta : "{}";
    v[8] = run_id > 0 ? run_s : NULL;
    /* the model row names the task (sql/006); versions hang below it */
    r = cm_pg_query(c, "INSERT INTO models (name, task) VALUES ($1, $2)"
                    " ON CONFLICT (name) DO NOTHING", 2, (const char *[]) {
                        name, task }, err, errlen);
    if (r == NULL) {
        free(meta);
        rc = CM_EIO;
        goto failed;
    }
    PQclear(r);
    r = cm_pg_query(c, "INSERT INTO model_versions (model_name, version,"
                    " stage, artifact_path, artifact_sha256, artifact_bytes,"
                    " metrics, training_run_id) SELECT name, $2::int, $4::text,"
                    " $5::text, $6::text, $7::bigint, $8::jsonb, $9::bigint"
                    " FROM models WHERE name = $1 AND task = $3::text", 9, v, err, errlen);
    free(meta);
    if (r == NULL) {
        rc = CM_EIO;
        goto failed;
    }
    if (strcmp(PQcmdTuples(r), "1") != 0) {
        PQclear(r);
        rc = cm_seterr(err, errlen, CM_ECONFLICT, "model %s exists with"
                       " another task than %s", name, task);
        goto failed;
    }
    PQclear(r);
    if (description != NULL) {
        const char *dv[3] = { name, ver, description };

        r = cm_pg_query(c, "UPDATE model_versions SET description = $3"
                        " WHERE model_name = $1 AND version = $2", 3, dv, err,
                        errlen);
        if (r == NULL) {
            rc = CM_EIO;
            goto failed;
        }
        PQclear(r);
    }
    rc = cm_pg_exec(c, "COMMIT", err, errlen);
    if (rc != CM_OK) {
        in_tx = 0;
        goto failed;
    }
    json_decref(metrics);
    return CM_OK;

failed:
    if (in_tx) {
        PQclear(PQexec(c, "ROLLBACK"));
    }
    if (made_dir) {
        unlink(dst);
        cm_rm_version_dir(dir);
    }
    json_decref(metrics);
    return rc;
}


int
cm_model_artifact_sha256(const char *path, char hex[65], uint64_t *bytes,
    char *err, size_t errlen)
{
    char         p[PATH_MAX + 16];
    struct stat  st;

    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        if ((size_t) snprintf(p, sizeof(p), "%s/model.bin", path)
            >= sizeof(p))
        {
            return cm_seterr(err, errlen, CM_EINVAL, "path too long");
        }
        return cm_sha256_file(p, hex, bytes, err, errlen);
    }
    return cm_sha256_file(path, hex, bytes, err, errlen);
}


int
cm_model_promote(PGconn *c, const char *name, int version, char *err,
    size_t errlen)
{
    char         ver[16], sha[65];
    const char  *v[2];
    PGresult    *r;
    int          rc;

    snprintf(ver, sizeof(ver), "%d", version);
    v[0] = name;
    v[1] = ver;
    rc = cm_pg_exec(c, "BEGIN", err, errlen);
    if (rc != CM_OK) {
        return rc;
    }
    r = cm_pg_query(c, "SELECT pg_advisory_xact_lock(hashtext('cinematch"
                    ".registry.' || $1))", 1, v, err, errlen);
    if (r == NULL) {
        goto failed;
    }
    PQclear(r);
    r = cm_pg_query(c, "SELECT stage, artifact_path, artifact_sha256 FROM"
                    " model_versions WHERE model_name = $1 AND version = $2"
                    " FOR UPDATE", 2, v, err, errlen);
    if (r == NULL) {
        goto failed;
    }
    if (PQntuples(r) == 0) {
        PQclear(r);
        cm_seterr(err, errlen, CM_ENOTFOUND, "%s version %d is not in the"
                  " registry", name, version);
        PQclear(PQexec(c, "ROLLBACK"));
        return CM_ENOTFOUND;
    }
    if (strcmp(PQgetvalue(r, 0, 0), "production") == 0) {
        PQclear(r);
        PQclear(PQexec(c, "ROLLBACK"));
        return CM_OK;
    }
    /* a promotion the daemons would refuse must not happen */
    rc = cm_model_artifact_sha256(PQgetvalue(r, 0, 1), sha, NULL, err,
                                  errlen);
    if (rc == CM_OK && strcmp(sha, PQgetvalue(r, 0, 2)) != 0) {
        rc = cm_seterr(err, errlen, CM_EFORMAT, "%s: sha256 differs from the"
                       " registry's; refusing to promote",
                       PQgetvalue(r, 0, 1));
    }
    PQclear(r);
    if (rc != CM_OK) {
        PQclear(PQexec(c, "ROLLBACK"));
        return rc;
    }
    /* the transition, the archiving of the old production and the NOTIFY
     * are sql/010's cm_model_set_stage(), which the API's stage endpoint
     * calls too */
    r = cm_pg_query(c, "SELECT changed FROM cm_model_set_stage($1, $2::int,"
                    " 'production')", 2, v, err, errlen);
    if (r == NULL) {
        goto failed;
    }
    PQclear(r);
    return cm_pg_exec(c, "COMMIT", err, errlen);

failed:
    PQclear(PQexec(c, "ROLLBACK"));
    return CM_EIO;
}


int
cm_model_rollback(PGconn *c, const char *name, int *version, char *err,
    size_t errlen)
{
    const char  *v[1] = { name };
    PGresult    *r;

    /* the version promoted before the current production (history from the
     * model_stage_events trigger; sql/010's cm_model_rollback_version(),
     * which GET /api/v1/models reports too); rolling back twice flips back */
    r = cm_pg_query(c, "SELECT cm_model_rollback_version($1)", 1, v, err,
                    errlen);
    if (r == NULL) {
        return CM_EIO;
    }
    if (PQntuples(r) == 0 || PQgetisnull(r, 0, 0)) {
        PQclear(r);
        return cm_seterr(err, errlen, CM_ENOTFOUND, "%s has no earlier"
                         " production version to roll back to", name);
    }
    *version = atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    return cm_model_promote(c, name, *version, err, errlen);
}


int
cm_argv_has(int argc, char **argv, const char *flag)
{
    int i;

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], flag) == 0) {
            return 1;
        }
        if (strcmp(argv[i], "--") == 0) {
            break;
        }
    }
    return 0;
}


long
cm_interval_parse(const char *s)
{
    char  *end;
    long   v = strtol(s, &end, 10);

    if (end == s || v <= 0) {
        return -1;
    }
    if (*end == '\0' || strcmp(end, "s") == 0) {
        return v;
    }
    if (strcmp(end, "m") == 0) {
        return v * 60;
    }
    if (strcmp(end, "h") == 0) {
        return v * 3600;
    }
    if (strcmp(end, "d") == 0) {
        return v * 86400;
    }
    return -1;
}


/* ---- the training-run signal watcher (see mlops.h) --------------------- */

static void
cm_run_watch_on_signal(int sig)
{
    unsigned char  b = (unsigned char) sig;
    ssize_t        n = write(cm_run_watch_pipe[1], &b, 1);

    (void) n;
}


static void *
cm_run_watcher(void *arg)
{
    cm_run_watch_t  *w = arg;
    unsigned char    b;
    char             err[512], why[160];
    const char      *v[3];
    PGconn          *c;

    while (read(cm_run_watch_pipe[0], &b, 1) == 1) {
        if (b == 0) {
            return NULL;                        /* cm_run_watch_stop */
        }
        if (atomic_load(&w->phase) != CM_RUN_CANCELABLE) {
            atomic_store(&w->pending, (int) b);
            continue;
        }
        if (w->run_id[0] != '\0') {
            snprintf(why, sizeof(why), "%s by signal %d during"
                     " training; production untouched", w->verb, (int) b);
            c = cm_pg_connect(w->dsn, "cinematch-train-cancel", err,
                              sizeof(err));
            if (c != NULL) {
                v[0] = w->run_id;
                v[1] = why;
                v[2] = w->status;
                PQclear(PQexecParams(c, "UPDATE training_runs SET status ="
                                     " $3, error = $2, finished_at ="
                                     " now() WHERE id = $1 AND status ="
                                     " 'running'", 3, NULL, v, NULL, NULL,
                                     0));
                PQfinish(c);
            }
            fprintf(stderr, "%s: run %s %s\n", w->me, w->run_id, why);
        }
        _exit(128 + (int) b);
    }
    return NULL;
}


int
cm_run_watch_start(cm_run_watch_t *w, const char *dsn, const char *me,
    const char *status, const char *verb)
{
    struct sigaction  sa;

    memset(w, 0, sizeof(*w));
    w->dsn = dsn;
    w->me = me;
    w->status = status;
    w->verb = verb;
    atomic_store(&w->phase, CM_RUN_CANCELABLE);
    if (pipe2(cm_run_watch_pipe, O_CLOEXEC) != 0) {
        return -1;
    }
    if (pthread_create(&w->thread, NULL, cm_run_watcher, w) != 0) {
        close(cm_run_watch_pipe[0]);
        close(cm_run_watch_pipe[1]);
        return -1;
    }
    w->started = 1;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = cm_run_watch_on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    return 0;
}


void
cm_run_watch_set_run(cm_run_watch_t *w, const char *run_id)
{
    /* the watcher must not read a half-written id: critical while it is
     * copied, cancelable again once it is complete */
    atomic_store(&w->phase, CM_RUN_CRITICAL);
    snprintf(w->run_id, sizeof(w->run_id), "%s", run_id);
    atomic_store(&w->phase, CM_RUN_CANCELABLE);
}


int
cm_run_watch_stop(cm_run_watch_t *w)
{
    unsigned char  zero = 0;
    ssize_t        n;

    atomic_store(&w->phase, CM_RUN_IDLE);
    signal(SIGTERM, SIG_DFL);
    signal(SIGINT, SIG_DFL);
    if (w->started) {
        n = write(cm_run_watch_pipe[1], &zero, 1);
        (void) n;
        pthread_join(w->thread, NULL);
    }
    close(cm_run_watch_pipe[0]);
    close(cm_run_watch_pipe[1]);
    cm_run_watch_pipe[0] = cm_run_watch_pipe[1] = -1;
    return atomic_load(&w->pending);
}


int
cm_cli_num(const char *me, const char *flag, const char *s, double lo,
    double hi, double *out)
{
    char    *end;
    double   v = strtod(s, &end);

    if (*s == '\0' || *end != '\0' || !(v >= lo && v <= hi)) {
        fprintf(stderr, "%s: %s wants a number in %g..%g, got '%s'\n", me,
                flag, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}

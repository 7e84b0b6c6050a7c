/*
 * infer_models.c: loading and reloading the served models.  Synchronous
 * libpq is fine here: it runs at start and on a reload signal, between
 * scheduler ticks, never per request.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/canary.h"
#include "cinematch/common.h"
#include "cinematch/digest.h"
#include "cinematch/movielens.h"
#include "infer_models.h"


int
cm_infer_models_configured(const cm_infer_models_t *mm)
{
    return mm->dsn != NULL || mm->artifact != NULL || mm->dialog != NULL;
}


static int
cm_file_sha256(const char *path, char out[CM_SHA256_HEX_LEN + 1])
{
    FILE    *f;
    char    *buf;
    long     len;
    int      rc = CM_EIO;

    f = fopen(path, "rb");
    if (f == NULL) {
        return CM_EIO;
    }
    if (fseek(f, 0, SEEK_END) == 0 && (len = ftell(f)) >= 0
        && fseek(f, 0, SEEK_SET) == 0)
    {
        buf = malloc((size_t) len + 1);
        if (buf != NULL && fread(buf, 1, (size_t) len, f) == (size_t) len) {
            rc = cm_sha256_hex(buf, (size_t) len, out);
        }
        free(buf);
    }
    fclose(f);
    return rc;
}


static PGconn *
cm_infer_pg(const char *dsn, char *err, size_t errlen)
{
    PGconn *c = PQconnectdb(dsn);

    if (PQstatus(c) != CONNECTION_OK) {
        cm_seterr(err, errlen, CM_EIO, "postgres: %s",
                  PQerrorMessage(c));
        err[strcspn(err, "\n")] = '\0';
        PQfinish(c);
        return NULL;
    }
    return c;
}


/* Catalogue from the movies table (titles are stored without the year). */
static int
cm_infer_pg_movies(PGconn *c, cm_movies_t *mv, char *err, size_t errlen)
{
    PGresult    *res;
    int          i, n;
    cm_movie_t   m;
    const char  *g, *e;
    int          gi;

    res = PQexec(c, "SELECT movie_id, title, coalesce(year, 0),"
                    " array_to_string(genres, '|') FROM movies");
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        cm_seterr(err, errlen, CM_EIO, "movies: %s", PQresultErrorMessage(res));
        PQclear(res);
        return CM_EIO;
    }
    n = PQntuples(res);
    for (i = 0; i < n; i++) {
        memset(&m, 0, sizeof(m));
        m.id = atoi(PQgetvalue(res, i, 0));
        m.title = strdup(PQgetvalue(res, i, 1));
        m.year = atoi(PQgetvalue(res, i, 2));
        for (g = PQgetvalue(res, i, 3); *g != '\0'; g = *e ? e + 1 : e) {
            e = g + strcspn(g, "|");
            gi = cm_ml_genre_parse(g, (size_t) (e - g));
            if (gi > 0) {
                m.genres |= 1u << gi;
            }
        }
        if (m.title == NULL) {
            PQclear(res);
            return CM_ENOMEM;
        }
        if (mv->n == mv->cap) {
            size_t       cap = mv->cap ? mv->cap * 2 : 1024;
            cm_movie_t  *v = realloc(mv->v, cap * sizeof(cm_movie_t));

            if (v == NULL) {
                free(m.title);
                PQclear(res);
                return CM_ENOMEM;
            }
            mv->v = v;
            mv->cap = cap;
        }
        mv->v[mv->n++] = m;
    }
    PQclear(res);
    return CM_OK;
}


/* App ratings survive a restart: fold them in again at load. */
static void
cm_infer_pg_fold_app_ratings(PGconn *c, cm_rs_server_t *rs)
{
    PGresult  *res;
    int        i, n, start;
    int32_t   *movies;
    float     *ratings;
    char       err[128];

    res = PQexec(c, "SELECT user_id, movie_id, rating::float4 FROM ratings"
                    " WHERE source = 'app' ORDER BY user_id, movie_id");
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        cm_warn("infer: app ratings not folded in: %s",
                PQresultErrorMessage(res));
        PQclear(res);
        return;
    }
    n = PQntuples(res);
    movies = malloc(((size_t) n + 1) * sizeof(int32_t));
    ratings = malloc(((size_t) n + 1) * sizeof(float));
    for (i = 0, start = 0; movies != NULL && ratings != NULL && i <= n; i++) {
        if (i < n) {
            movies[i] = atoi(PQgetvalue(res, i, 1));
            ratings[i] = strtof(PQgetvalue(res, i, 2), NULL);
        }
        if (i == n || (i > start && strcmp(PQgetvalue(res, i, 0),
                                           PQgetvalue(res, start, 0)) != 0))
        {
            if (i > start && cm_rs_server_fold_in(rs,
                    atoi(PQgetvalue(res, start, 0)), movies + start,
                    ratings + start, (size_t) (i - start), err,
                    sizeof(err)) != CM_OK)
            {
                cm_warn("infer: fold-in of user %s: %s",
                        PQgetvalue(res, start, 0), err);
            }
            start = i;
        }
    }
    if (n > 0) {
        cm_info("infer: folded in %d app ratings of %zu users", n,
                cm_rs_server_overlay_users(rs));
    }
    free(movies);
    free(ratings);
    PQclear(res);
}


static int
cm_infer_load_recsys(cm_infer_models_t *mm)
{
    char             err[256], sha[CM_SHA256_HEX_LEN + 1], ver[32];
    char             path[1024], want[72];
    cm_movies_t      mv;
    cm_ml_opts_t     opts;
    PGconn          *c = NULL;
    PGresult        *res;
    cm_rs_server_t  *rs = NULL;
    int              rc;
    size_t           i;

    memset(&mv, 0, sizeof(mv));
    memset(&opts, 0, sizeof(opts));
    err[0] = '\0';

    if (mm->dsn != NULL) {
        c = cm_infer_pg(mm->dsn, err, sizeof(err));
        if (c == NULL) {
            rc = CM_EIO;
            goto failed;
        }
        res = PQexec(c, "SELECT version, artifact_path, artifact_sha256"
                        " FROM model_versions WHERE model_name = 'recsys'"
                        " AND stage = 'production'");
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            cm_seterr(err, sizeof(err), CM_EIO, "registry: %s",
                      PQresultErrorMessage(res));
            PQclear(res);
            rc = CM_EIO;
            goto failed;
        }
        if (PQntuples(res) == 0) {
            PQclear(res);
            snprintf(mm->status, sizeof(mm->status),
                     "no production recsys model in the registry");
            PQfinish(c);
            return CM_OK;   /* nothing to serve is not an error */
        }
        snprintf(ver, sizeof(ver), "%s", PQgetvalue(res, 0, 0));
        snprintf(path, sizeof(path), "%s", PQgetvalue(res, 0, 1));
        snprintf(want, sizeof(want), "%s", PQgetvalue(res, 0, 2));
        PQclear(res);
        rc = cm_infer_pg_movies(c, &mv, err, sizeof(err));
        if (rc != CM_OK) {
            goto failed;
        }
    } else if (mm->artifact != NULL) {
        snprintf(ver, sizeof(ver), "%s",
                 mm->version != NULL ? mm->version : "file");
        snprintf(path, sizeof(path), "%s", mm->artifact);
        want[0] = '\0';
        if (mm->movies != NULL) {
            const char      *base = strrchr(mm->movies, '/');
            cm_ml_format_t   fmt = CM_ML_LATEST;

            base = base != NULL ? base + 1 : mm->movies;
            if (strcmp(base, "u.item") == 0) {
                fmt = CM_ML_100K;
            } else if (strcmp(base, "movies.dat") == 0) {
                fmt = CM_ML_1M;
            }
            rc = cm_ml_read_movies_file(mm->movies, fmt, &opts, &mv, err,
                                        sizeof(err));
            if (rc != CM_OK) {
                goto failed;
            }
        }
    } else {
        mm->status[0] = '\0';
        return CM_OK;
    }

    rc = cm_file_sha256(path, sha);
    if (rc != CM_OK) {
        cm_seterr(err, sizeof(err), rc, "%s: %s", path, strerror(errno));
        goto failed;
    }
    if (want[0] != '\0' && strcmp(sha, want) != 0) {
        /* the reason first: the status line is short, paths are long */
        rc = cm_seterr(err, sizeof(err), CM_EFORMAT, "sha256 differs from"
                       " the registry's: %s", path);
        goto failed;
    }
    rc = cm_rs_server_open(&rs, path, ver, mv.v, mv.n, err, sizeof(err));
    if (rc != CM_OK) {
        goto failed;
    }
    if (c != NULL) {
        cm_infer_pg_fold_app_ratings(c, rs);
        PQfinish(c);
        c = NULL;
    }
    /* swap: a single thread serves, so nothing still points at the old */
    cm_rs_server_free(mm->rs);
    mm->rs = rs;
    snprintf(mm->rs_sha256, sizeof(mm->rs_sha256), "%s", sha);
    snprintf(mm->status, sizeof(mm->status), "ok");
    cm_info("infer: serving recsys version %s (%s, %u users, %u items)", ver,
            path, cm_rs_server_model(rs)->n_users,
            cm_rs_server_model(rs)->n_items);
    for (i = 0; i < mv.n; i++) {
        free(mv.v[i].title);
    }
    free(mv.v);
    return CM_OK;

failed:
    if (c != NULL) {
        PQfinish(c);
    }
    for (i = 0; i < mv.n; i++) {
        free(mv.v[i].title);
    }
    free(mv.v);
    snprintf(mm->status, sizeof(mm->status), "recsys load failed: %.100s",
             err);
    cm_error("infer: recsys load failed: %s%s", err,
             mm->rs != NULL ? " (previous version keeps serving)" : "");
    return rc;
}


/* Drop the canary: every user goes to production again. */
static void
cm_infer_canary_drop(cm_infer_models_t *mm)
{
    if (mm->canary != NULL) {
        cm_info("infer: recsys canary %s stopped: production serves every"
                " user", cm_rs_server_version(mm->canary));
    }
    cm_rs_server_free(mm->canary);
    mm->canary = NULL;
    mm->canary_sha256[0] = '\0';
    mm->canary_bp = 0;
}


/*
 * The recsys canary of the registry (stage 'canary', sql/015), loaded
 * beside production.  The same version as loaded only takes the new
 * share; another one is loaded, checked against the registry's sha256
 * and swapped in.  A canary that cannot be loaded is dropped rather than
 * kept: the registry no longer names the old one, and production is the
 * safe answer for everyone.
 */
static int
cm_infer_load_canary(cm_infer_models_t *mm, char *status, size_t statuslen)
{
    char             err[256], sha[CM_SHA256_HEX_LEN + 1], ver[32];
    char             path[1024], want[72];
    const char      *share;
    cm_movies_t      mv;
    PGconn          *c;
    PGresult        *res;
    cm_rs_server_t  *rs = NULL;
    uint32_t         bp;
    int              rc;
    size_t           i;

    status[0] = '\0';
    if (mm->dsn == NULL || mm->artifact != NULL) {
        return CM_OK;       /* files only: no registry, no canary */
    }
    c = cm_infer_pg(mm->dsn, err, sizeof(err));
    if (c == NULL) {
        snprintf(status, statuslen, "canary: %.100s", err);
        return CM_EIO;      /* keep what serves until the next reload */
    }
    res = PQexec(c, "SELECT version, artifact_path, artifact_sha256,"
                    " canary_share FROM model_versions"
                    " WHERE model_name = 'recsys' AND stage = 'canary'");
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        /* a registry before sql/015 has no canary column: none */
        PQclear(res);
        PQfinish(c);
        cm_infer_canary_drop(mm);
        return CM_OK;
    }
    if (PQntuples(res) == 0 || mm->rs == NULL) {
        PQclear(res);
        PQfinish(c);
        cm_infer_canary_drop(mm);
        return CM_OK;
    }
    snprintf(ver, sizeof(ver), "%s", PQgetvalue(res, 0, 0));
    snprintf(path, sizeof(path), "%s", PQgetvalue(res, 0, 1));
    snprintf(want, sizeof(want), "%s", PQgetvalue(res, 0, 2));
    share = PQgetvalue(res, 0, 3);
    if (cm_canary_share_parse(share, strlen(share), &bp) != CM_OK) {
        snprintf(status, statuslen, "canary %s: bad share '%.20s'", ver,
                 share);
        PQclear(res);
        PQfinish(c);
        cm_infer_canary_drop(mm);
        return CM_EFORMAT;
    }
    PQclear(res);

    if (mm->canary != NULL && strcmp(cm_rs_server_version(mm->canary), ver)
                              == 0
        && strcmp(mm->canary_sha256, want) == 0)
    {
        PQfinish(c);
        if (mm->canary_bp != bp) {
            cm_info("infer: recsys canary %s now serves %u.%02u%% of users",
                    ver, bp / 100, bp % 100);
        }
        mm->canary_bp = bp;
        return CM_OK;
    }

    memset(&mv, 0, sizeof(mv));
    /* the reason first: the status text is short, paths are long */
    rc = cm_file_sha256(path, sha);
    if (rc != CM_OK) {
        cm_seterr(err, sizeof(err), rc, "%s (%s)", strerror(errno), path);
    } else if (strcmp(sha, want) != 0) {
        rc = cm_seterr(err, sizeof(err), CM_EFORMAT, "sha256 differs from"
                       " the registry's (%s)", path);
    } else {
        rc = cm_infer_pg_movies(c, &mv, err, sizeof(err));
    }
    if (rc == CM_OK) {
        rc = cm_rs_server_open(&rs, path, ver, mv.v, mv.n, err, sizeof(err));
    }
    if (rc == CM_OK) {
        cm_infer_pg_fold_app_ratings(c, rs);
    }
    PQfinish(c);
    for (i = 0; i < mv.n; i++) {
        free(mv.v[i].title);
    }
    free(mv.v);
    if (rc != CM_OK) {
        snprintf(status, statuslen, "canary %.10s load failed: %.80s", ver,
                 err);
        cm_error("infer: %s (production serves every user)", status);
        cm_infer_canary_drop(mm);
        return rc;
    }
    cm_rs_server_free(mm->canary);
    mm->canary = rs;
    mm->canary_bp = bp;
    snprintf(mm->canary_sha256, sizeof(mm->canary_sha256), "%s", sha);
    cm_info("infer: recsys canary %s beside production %s for %u.%02u%% of"
            " users", ver, cm_rs_server_version(mm->rs), bp / 100, bp % 100);
    return CM_OK;
}


cm_rs_server_t *
cm_infer_models_recsys_for(const cm_infer_models_t *mm, int64_t user)
{
    if (mm->canary != NULL && mm->rs != NULL
        && cm_canary_routed("recsys", user, mm->canary_bp))
    {
        return mm->canary;
    }
    return mm->rs;
}


static int
cm_infer_load_dialog(cm_infer_models_t *mm, int busy, char *status,
                     size_t statuslen)
{
    char              err[256], dir[1024], ver[32], want[72];
    char              sha[CM_SHA256_HEX_LEN + 1], path[1100];
    PGconn           *c;
    PGresult         *res;
    cm_dlg_server_t  *dlg = NULL;
    int               rc;

    status[0] = '\0';
    want[0] = '\0';
    if (mm->dialog != NULL) {
        snprintf(dir, sizeof(dir), "%s", mm->dialog);
        snprintf(ver, sizeof(ver), "%s",
                 mm->dialog_version != NULL ? mm->dialog_version : "file");
    } else if (mm->dsn != NULL) {
        c = cm_infer_pg(mm->dsn, err, sizeof(err));
        if (c == NULL) {
            snprintf(status, statuslen, "dialog: %.100s", err);
            return CM_EIO;
        }
        res = PQexec(c, "SELECT version, artifact_path, artifact_sha256"
                        " FROM model_versions WHERE model_name = 'dialog'"
                        " AND stage = 'production'");
        if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) == 0) {
            PQclear(res);
            PQfinish(c);
            return CM_OK;   /* no dialog model registered */
        }
        snprintf(ver, sizeof(ver), "%s", PQgetvalue(res, 0, 0));
        snprintf(dir, sizeof(dir), "%s", PQgetvalue(res, 0, 1));
        snprintf(want, sizeof(want), "%s", PQgetvalue(res, 0, 2));
        PQclear(res);
        PQfinish(c);
    } else {
        return CM_OK;
    }

    if (mm->dlg != NULL && strcmp(cm_dlg_server_version(mm->dlg), ver) == 0) {
        return CM_OK;   /* already serving this version */
    }
    if (busy) {
        snprintf(status, statuslen, "dialog %s waits for running"
                 " generations to end", ver);
        return CM_EAGAIN;
    }
    snprintf(path, sizeof(path), "%s/model.bin", dir);
    rc = cm_file_sha256(path, sha);
    if (rc != CM_OK) {
        snprintf(status, statuslen, "dialog load failed: %.60s: %s", path,
                 strerror(errno));
        cm_error("infer: %s", status);
        return rc;
    }
    if (want[0] != '\0' && strcmp(want, sha) != 0) {
        snprintf(status, statuslen, "dialog load failed: model.bin sha256"
                 " differs from the registry's");
        cm_error("infer: %s", status);
        return CM_EFORMAT;
    }
    rc = cm_dlg_server_open(&dlg, dir, ver,
                            mm->max_seqs > 0 ? mm->max_seqs : 8, err,
                            sizeof(err));
    if (rc == CM_OK && mm->decode_threads > 1
        && cm_dlg_server_threads(dlg, mm->decode_threads) != CM_OK)
    {
        cm_warn("infer: decode threads: out of memory, one thread");
    }
    if (rc == CM_OK && mm->decode_bf16
        && cm_dlg_server_bf16(dlg) != CM_OK)
    {
        cm_warn("infer: bf16 decode weights: not available, fp32");
    }
    if (rc == CM_OK && mm->decode_kv_bf16
        && cm_dlg_server_kv_bf16(dlg) != CM_OK)
    {
        cm_warn("infer: bf16 KV cache: not available, fp32");
    }
    if (rc != CM_OK) {
        snprintf(status, statuslen, "dialog load failed: %.100s", err);
        cm_error("infer: %s%s", status,
                 mm->dlg != NULL ? " (previous version keeps serving)" : "");
        return rc;
    }
    cm_dlg_server_free(mm->dlg);
    mm->dlg = dlg;
    snprintf(mm->dlg_sha256, sizeof(mm->dlg_sha256), "%s", sha);
    cm_info("infer: serving dialog version %s (%s, context %d)", ver, dir,
            cm_dlg_server_context(dlg));
    return CM_OK;
}


int
cm_infer_models_load(cm_infer_models_t *mm, int dialog_busy)
{
    char  dstatus[128], cstatus[128];
    int   rc, rc2;

    rc = cm_infer_load_recsys(mm);
    (void) cm_infer_load_canary(mm, cstatus, sizeof(cstatus));
    rc2 = cm_infer_load_dialog(mm, dialog_busy, dstatus, sizeof(dstatus));
    if (cstatus[0] != '\0' && dstatus[0] == '\0') {
        snprintf(dstatus, sizeof(dstatus), "%s", cstatus);
    }
    if (dstatus[0] != '\0') {
        if (mm->status[0] == '\0' || strcmp(mm->status, "ok") == 0) {
            snprintf(mm->status, sizeof(mm->status), "%s", dstatus);
        }
    } else if (mm->status[0] == '\0') {
        snprintf(mm->status, sizeof(mm->status), "ok");
    }
    return rc != CM_OK ? rc : rc2;
}


int
cm_infer_models_load_recsys(cm_infer_models_t *mm)
{
    return cm_infer_load_recsys(mm);
}


uint32_t
cm_infer_models_table(const cm_infer_models_t *mm, cm_ipc_model_t *out,
                      uint32_t cap)
{
    uint32_t n = 0;

    if (mm->rs != NULL && n < cap) {
        memset(&out[n], 0, sizeof(out[n]));
        snprintf(out[n].name, sizeof(out[n].name), "recsys");
        snprintf(out[n].version, sizeof(out[n].version), "%s",
                 cm_rs_server_version(mm->rs));
        snprintf(out[n].sha256, sizeof(out[n].sha256), "%.64s",
                 mm->rs_sha256);
        n++;
    }
    if (mm->rs != NULL && mm->canary != NULL && n < cap) {
        memset(&out[n], 0, sizeof(out[n]));
        snprintf(out[n].name, sizeof(out[n].name), "recsys");
        snprintf(out[n].version, sizeof(out[n].version), "%s",
                 cm_rs_server_version(mm->canary));
        snprintf(out[n].sha256, sizeof(out[n].sha256), "%.64s",
                 mm->canary_sha256);
        out[n].role = CM_IPC_ROLE_CANARY;
        out[n].share_bp = (uint16_t) mm->canary_bp;
        n++;
    }
    if (mm->dlg != NULL && n < cap) {
        memset(&out[n], 0, sizeof(out[n]));
        snprintf(out[n].name, sizeof(out[n].name), "dialog");
        snprintf(out[n].version, sizeof(out[n].version), "%s",
                 cm_dlg_server_version(mm->dlg));
        snprintf(out[n].sha256, sizeof(out[n].sha256), "%.64s",
                 mm->dlg_sha256);
        n++;
    }
    return n;
}


int
cm_infer_models_listen_fd(cm_infer_models_t *mm)
{
    PGresult *res;
    char      err[256];

    if (mm->dsn == NULL) {
        return -1;
    }
    if (mm->listen != NULL && PQstatus(mm->listen) == CONNECTION_OK) {
        return PQsocket(mm->listen);
    }
    if (mm->listen != NULL) {
        PQfinish(mm->listen);
    }
    mm->listen = cm_infer_pg(mm->dsn, err, sizeof(err));
    if (mm->listen == NULL) {
        return -1;
    }
    res = PQexec(mm->listen, "LISTEN " CM_INFER_NOTIFY_CHANNEL);
    PQclear(res);
    return PQsocket(mm->listen);
}


int
cm_infer_models_consume(cm_infer_models_t *mm)
{
    PGnotify  *n;
    int        due = 0;

    if (mm->listen == NULL) {
        return 0;
    }
    if (PQconsumeInput(mm->listen) != 1) {
        /* lost: the caller re-listens on its next sweep */
        PQfinish(mm->listen);
        mm->listen = NULL;
        return 0;
    }
    while ((n = PQnotifies(mm->listen)) != NULL) {
        cm_info("infer: NOTIFY %s '%s'", n->relname, n->extra);
        due = 1;
        PQfreemem(n);
    }
    return due;
}


void
cm_infer_models_free(cm_infer_models_t *mm)
{
    cm_rs_server_free(mm->rs);
    mm->rs = NULL;
    cm_rs_server_free(mm->canary);
    mm->canary = NULL;
    cm_dlg_server_free(mm->dlg);
    mm->dlg = NULL;
    if (mm->listen != NULL) {
        PQfinish(mm->listen);
        mm->listen = NULL;
    }
}

/*
 * mlops.h: helpers shared by the MLOps subcommands (ingest, model, drift,
 * train --from-db): synchronous libpq with one-line errors, whole-file
 * reads, the model store and the registry operations that promotion and
 * training both use.
 *
 * Registry invariants (the schema enforces the first): at most one
 * production version per model; a promotion archives the old production,
 * promotes the new one and sends NOTIFY cinematch_models '<name>:<version>'
 * in one transaction, so `cinematch infer` never sees a registry without a
 * production model once one exists, and hears of the change only when it
 * is committed.
 */
#ifndef CINEMATCH_WORKERS_MLOPS_H
#define CINEMATCH_WORKERS_MLOPS_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#define CM_MODEL_STORE_DEFAULT  "var/lib/cinematch/models"
#define CM_MODELS_CHANNEL       "cinematch_models"

/* Connect with dsn (NULL: $CINEMATCH_PG_DSN, else libpq's PG* env). */
PGconn *cm_pg_connect(const char *dsn, const char *app, char *err,
    size_t errlen);
/* Run a command (no parameters); CM_OK or CM_EIO with the message. */
int cm_pg_exec(PGconn *c, const char *sql, char *err, size_t errlen);
/* Parameterised; returns the result (caller clears) or NULL + err when its
 * status is neither COMMAND_OK nor TUPLES_OK. */
PGresult *cm_pg_query(PGconn *c, const char *sql, int n, const char *const *v,
    char *err, size_t errlen);
/* Start COPY ... FROM STDIN (CM_OK when the server is ready for data). */
int cm_pg_copy_begin(PGconn *c, const char *sql, char *err, size_t errlen);
/* COPY ... FROM STDIN already started: send len bytes. */
int cm_pg_copy_put(PGconn *c, const char *buf, size_t len, char *err,
    size_t errlen);
int cm_pg_copy_end(PGconn *c, char *err, size_t errlen);

/* Read a whole file (NUL added past the end). */
int cm_read_file(const char *path, char **buf, size_t *len, char *err,
    size_t errlen);
int cm_sha256_file(const char *path, char hex[65], uint64_t *bytes,
    char *err, size_t errlen);

/* mkdir -p (mode 0755). */
int cm_mkdir_p(const char *path, char *err, size_t errlen);

/* The store root: $CINEMATCH_MODEL_STORE, else CM_MODEL_STORE_DEFAULT,
 * made absolute. */
void cm_model_store_root(char *buf, size_t len);

/*
 * Register: copy artifact into <store>/<name>/<version>/ (artifact file
 * name kept, meta.json and SHA256SUMS beside it) and insert the
 * model_versions row in stage stage ("none" or "staging") with the next
 * version.  metrics_json may be NULL; run_id 0 = none.  *version out.
 */
int cm_model_register(PGconn *c, const char *name, const char *task,
    const char *artifact, const char *metrics_json, int64_t run_id,
    const char *stage, const char *description, int *version, char *err,
    size_t errlen);
/* Promote name:version (archives the current production; NOTIFY). */
int cm_model_promote(PGconn *c, const char *name, int version, char *err,
    size_t errlen);
/* Re-promote the production before the current one. *version out. */
int cm_model_rollback(PGconn *c, const char *name, int *version, char *err,
    size_t errlen);

/* The `train recsys --from-db` entry, called from cmd_recsys.c. */
int cm_train_recsys_db_main(int argc, char **argv);
int cm_argv_has(int argc, char **argv, const char *flag);

/* `train dialog --from-db` (cmd_train_dialog_db.c), reached from
 * cmd_dialog.c; it trains through cm_train_dialog_file(), the file form's
 * argv entry, and hears of its progress by cm_train_dialog_progress
 * (after each logged step and each evaluation; val_loss < 0: none). */
int cm_train_dialog_db_main(int argc, char **argv);
int cm_train_dialog_file(int argc, char **argv);
typedef void (*cm_train_progress_pt)(int step, int steps, double loss,
    double val_loss, double secs);
extern cm_train_progress_pt  cm_train_dialog_progress;

/*
 * SIGTERM/SIGINT while a `train ... --from-db` run is training: a watcher
 * thread marks the run (status `status`, error "<verb> by signal N during
 * training; ...") on its own connection and exits the process with 128+N
 * (the trainer's session, its advisory lock and any open transaction go
 * with it), so `systemctl stop` leaves an honest row.  In the critical
 * phase (registering, promoting) the signal is only remembered, and
 * cm_run_watch_stop() returns it.  The handler only writes to a pipe:
 * OpenBLAS threads exist before main(), so the signal may land on any
 * thread and sigwait() in one thread cannot be relied on.  One watcher per
 * process at a time.
 */
enum { CM_RUN_IDLE = 0, CM_RUN_CANCELABLE, CM_RUN_CRITICAL };

typedef struct {
    const char   *dsn;
    const char   *me;           /* message prefix: "cinematch train ..." */
    const char   *status;       /* the run's status on a cancel */
    const char   *verb;         /* "canceled" or "killed", in its error */
    char          run_id[24];
    atomic_int    phase;        /* CM_RUN_* */
    atomic_int    pending;      /* signal number seen in a critical phase */
    pthread_t     thread;
    int           started;
} cm_run_watch_t;

/* Start watching (phase cancelable, no run yet); -1 when the pipe or the
 * thread cannot be made. */
int cm_run_watch_start(cm_run_watch_t *w, const char *dsn, const char *me,
    const char *status, const char *verb);
/* Publish the run a signal will mark (phase stays cancelable). */
void cm_run_watch_set_run(cm_run_watch_t *w, const char *run_id);
/* Stop watching; returns the signal that arrived in a critical phase, or
 * 0. */
int cm_run_watch_stop(cm_run_watch_t *w);

/* sha256 of a registered artifact: the file itself, or for a directory
 * (a dialog model) its model.bin, which the daemon checks at load. */
int cm_model_artifact_sha256(const char *path, char hex[65], uint64_t *bytes,
    char *err, size_t errlen);

/* A number flag in lo..hi: 0, or -1 after "<me>: <flag> wants a number in
 * lo..hi, got '<s>'" on stderr. */
int cm_cli_num(const char *me, const char *flag, const char *s, double lo,
    double hi, double *out);

/* Sleep for an interval like "30s", "15m", "1h", "1d" (seconds when bare);
 * returns -1 when s is malformed. */
long cm_interval_parse(const char *s);

#endif /* CINEMATCH_WORKERS_MLOPS_H */

/*
 * cinematch/migrate.h: schema migrations, plain SQL files applied in order.
 *
 * A migration is a file "NNN_name.sql" (NNN = three digits, 001..999, name
 * = [a-z0-9_]+) in the migrations directory.  `cinematch migrate` applies
 * the pending ones in numeric order, each in its own transaction, and
 * records version, file name, the sha256 of the file's exact bytes and the
 * time in the table schema_migrations.
 *
 * Invariants this unit enforces:
 *   - versions are unique among the files (two files "003_*" are an error);
 *   - an applied migration never changes: a file whose bytes or name differ
 *     from what was recorded, or a recorded version whose file is gone,
 *     makes the whole run refuse (nothing is applied);
 *   - history is linear: a new file numbered below the newest applied
 *     version is refused (renumber it) rather than applied out of order;
 *   - migrations never interleave: the runner holds a session advisory
 *     lock (CM_MIGRATE_LOCK_KEY) from reading the history to the end.
 *
 * Files must not contain transaction control (BEGIN/COMMIT) nor statements
 * that cannot run inside a transaction (CREATE INDEX CONCURRENTLY,
 * ALTER TYPE ... ADD VALUE before use): the runner wraps each file itself.
 *
 * The pure part (names, ordering, checksums, applied-vs-files comparison)
 * needs no database and is unit-tested; the cm_migrate_db_* functions use a
 * synchronous libpq connection (a CLI tool, never an nginx worker).
 */
#ifndef CINEMATCH_MIGRATE_H
#define CINEMATCH_MIGRATE_H

#include <stddef.h>
#include <stdint.h>

#include "cinematch/digest.h"

#include <libpq-fe.h>

#define CM_MIGRATE_NAME_MAX   128     /* file name incl. ".sql" and NUL */
#define CM_MIGRATE_MAX_FILES  999
#define CM_MIGRATE_FILE_MAX   16777216u            /* 16 MiB per file */

/* pg_advisory_lock key: the bytes "cmmigrat" as a big-endian int64. */
#define CM_MIGRATE_LOCK_KEY   INT64_C(0x636d6d6967726174)

typedef struct {
    int     version;                         /* NNN, 1..999 */
    char    name[CM_MIGRATE_NAME_MAX];       /* "001_users_auth.sql" */
    char    sha256[CM_SHA256_HEX_LEN + 1];   /* lowercase hex of the bytes */
    char    applied_at[40];                  /* DB rows only, "" for files */
} cm_migration_t;

typedef enum {
    CM_MIG_APPLIED = 0,   /* recorded, file present and identical */
    CM_MIG_PENDING,       /* file present, not recorded: will be applied */
    CM_MIG_CHANGED,       /* recorded, but the file's bytes or name differ */
    CM_MIG_MISSING,       /* recorded, no file with that version */
    CM_MIG_OUT_OF_ORDER   /* not recorded, numbered below the newest applied */
} cm_mig_state_t;

typedef struct {
    cm_mig_state_t         state;
    int                    version;
    const cm_migration_t  *file;      /* NULL when MISSING */
    const cm_migration_t  *applied;   /* NULL when PENDING / OUT_OF_ORDER */
} cm_mig_entry_t;

/* ---- pure logic ---- */

/* CM_OK when name matches ^[0-9]{3}_[a-z0-9_]+\.sql$ with NNN >= 1 and
 * fits CM_MIGRATE_NAME_MAX; *version receives NNN.  CM_EINVAL otherwise. */
int cm_migrate_name_parse(const char *name, int *version);

/* Lowercase hex sha256 of data (OpenSSL EVP) into out[65]. */

/* Sort by version (stable for equal versions).  Returns CM_ECONFLICT and
 * names both files in err when two share a version. */
int cm_migrate_sort(cm_migration_t *m, size_t n, char *err, size_t errlen);

/* Read dir/name whole (≤ CM_MIGRATE_FILE_MAX, no NUL bytes) into a
 * malloc'ed NUL-terminated buffer. */
int cm_migrate_read_file(const char *dir, const char *name, char **buf,
                         size_t *len, char *err, size_t errlen);

/* List dir: every regular "*.sql" file must have a valid migration name
 * (a typo such as "7_x.sql" or "001-x.sql" is an error, not silently
 * skipped); other files are ignored.  Each file is read and checksummed.
 * On success *out (free()) holds *n entries sorted by version. */
int cm_migrate_scan(const char *dir, cm_migration_t **out, size_t *n,
                    char *err, size_t errlen);

/* Compare the recorded history with the files; both sorted by version
 * without duplicates.  entries (capacity napplied + nfiles) receives one
 * entry per version in ascending order.  Returns CM_OK when every entry is
 * APPLIED or PENDING, CM_ECONFLICT when any is CHANGED, MISSING or
 * OUT_OF_ORDER (err names the first), CM_EINVAL on unsorted input. */
int cm_migrate_plan(const cm_migration_t *applied, size_t napplied,
                    const cm_migration_t *files, size_t nfiles,
                    cm_mig_entry_t *entries, size_t *nentries,
                    char *err, size_t errlen);

const char *cm_mig_state_name(cm_mig_state_t s);

/* 1-based line of the 1-based *character* position pos in a UTF-8 text
 * (PostgreSQL reports error positions in characters). */
int cm_migrate_line_of(const char *text, size_t len, long pos);

/* ---- database (synchronous libpq) ---- */

/* Take the advisory lock (waiting at most lock_timeout_s seconds, 0 =
 * forever) and create schema_migrations if missing. */
int cm_migrate_db_prepare(PGconn *conn, int lock_timeout_s, char *err,
                          size_t errlen);
void cm_migrate_db_unlock(PGconn *conn);

/* The recorded history, sorted by version (empty when the table does not
 * exist yet).  *out is malloc'ed (free()), may be NULL when *n == 0. */
int cm_migrate_db_applied(PGconn *conn, cm_migration_t **out, size_t *n,
                          char *err, size_t errlen);

/* Apply one pending migration in its own transaction and record it.  The
 * file is re-read and must still hash to m->sha256.  *ms receives the time
 * it took in milliseconds. */
int cm_migrate_db_apply(PGconn *conn, const char *dir,
                        const cm_migration_t *m, double *ms, char *err,
                        size_t errlen);

#endif /* CINEMATCH_MIGRATE_H */

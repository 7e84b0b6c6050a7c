/*
 * cmd_migrate.c: `cinematch migrate`, apply pending sql/NNN_*.sql files.
 *
 *   cinematch migrate [--dsn DSN] [--dir DIR] [--status | --dry-run]
 *                     [--lock-timeout SECONDS]
 *
 * Exit status: 0 done (or nothing to do), 1 refused or failed (changed or
 * missing applied file, SQL error, no database), 2 bad usage.
 */
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cinematch/common.h"
#include "cinematch/migrate.h"
#include "cmd.h"


#define CM_MIGRATE_SYSTEM_DIR  "/usr/share/cinematch/sql"


static int cm_migrate_main(int argc, char **argv);
static void cm_migrate_usage(FILE *out);
static int cm_migrate_default_dir(char *buf, size_t len);
static void cm_migrate_print(const cm_mig_entry_t *e, size_t n);

CM_COMMAND("migrate", "apply pending sql/NNN_*.sql schema migrations",
           cm_migrate_main);


static void
cm_migrate_usage(FILE *out)
{
    fprintf(out,
        "usage: cinematch migrate [--dsn DSN] [--dir DIR] [--status|--dry-run]"
        "\n                         [--lock-timeout SECONDS]\n\n"
        "Applies the pending NNN_name.sql files of DIR in numeric order, each"
        " in its\nown transaction, and records version, name and sha256 in"
        " schema_migrations.\nRefuses to run when an applied file changed or"
        " disappeared.\n\n"
        "  --dsn DSN            libpq connection string or URI (default:"
        " $CINEMATCH_PG_DSN,\n"
        "                       else libpq's PGHOST/PGPORT/PGUSER/...)\n"
        "  --dir DIR            migrations directory (default:"
        " $CINEMATCH_SQL_DIR, else\n"
        "                       sql/ of the repository holding this binary,"
        " else\n"
        "                       " CM_MIGRATE_SYSTEM_DIR ")\n"
        "  --status             list applied and pending migrations, change"
        " nothing\n"
        "                       (exit 1 when an applied file changed or is"
        " missing)\n"
        "  --dry-run            check and print what would be applied\n"
        "  --lock-timeout SECS  wait at most SECS for a concurrent migrator"
        " (default 60,\n"
        "                       0 = forever)\n");
}


/*
 * The binary lives in <repo>/build/ (or build-san/) during development, in
 * /usr/bin when installed; look for <dir of binary>/../sql first.
 */
static int
cm_migrate_default_dir(char *buf, size_t len)
{
    char         exe[PATH_MAX], cand[PATH_MAX + 8], real[PATH_MAX];
    const char  *env;
    ssize_t      n;
    struct stat  st;

    env = getenv("CINEMATCH_SQL_DIR");
    if (env != NULL && env[0] != '\0') {
        snprintf(buf, len, "%s", env);
        return CM_OK;
    }

    n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    if (n > 0) {
        exe[n] = '\0';
        snprintf(cand, sizeof(cand), "%s/../sql", dirname(exe));
        if (stat(cand, &st) == 0 && S_ISDIR(st.st_mode)) {
            snprintf(buf, len, "%s", realpath(cand, real) ? real : cand);
            return CM_OK;
        }
    }

    snprintf(buf, len, "%s", CM_MIGRATE_SYSTEM_DIR);
    return CM_OK;
}


static void
cm_migrate_print(const cm_mig_entry_t *e, size_t n)
{
    size_t i;

    printf("%-7s %-12s %-40s %s\n", "version", "state", "file", "applied at");
    for (i = 0; i < n; i++) {
        const char *name = e[i].file ? e[i].file->name : e[i].applied->name;

        printf("%03d     %-12s %-40s %s\n", e[i].version,
               cm_mig_state_name(e[i].state), name,
               e[i].applied ? e[i].applied->applied_at : "-");
    }
}


static int
cm_migrate_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "dsn",          required_argument, NULL, 'd' },
        { "dir",          required_argument, NULL, 'D' },
        { "status",       no_argument,       NULL, 's' },
        { "dry-run",      no_argument,       NULL, 'n' },
        { "lock-timeout", required_argument, NULL, 'l' },
        { "help",         no_argument,       NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    const char      *dsn = NULL;
    char             dir[PATH_MAX + 8] = "", err[1024] = "", *end;
    int              status_only = 0, dry_run = 0, lock_timeout = 60;
    int              c, rc, ret = 1, locked = 0;
    long             v;
    size_t           nfiles = 0, napplied = 0, nentries = 0, i, applied_now;
    cm_migration_t  *files = NULL, *applied = NULL;
    cm_mig_entry_t  *entries = NULL;
    PGconn          *conn = NULL;
    double           ms;
    const char      *kw[3], *val[3];

    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            dsn = optarg;
            break;
        case 'D':
            snprintf(dir, sizeof(dir), "%s", optarg);
            break;
        case 's':
            status_only = 1;
            break;
        case 'n':
            dry_run = 1;
            break;
        case 'l':
            v = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || v < 0 || v > 86400) {
                fprintf(stderr, "cinematch migrate: --lock-timeout wants"
                        " seconds 0..86400, got '%s'\n", optarg);
                return 2;
            }
            lock_timeout = (int) v;
            break;
        case 'h':
            cm_migrate_usage(stdout);
            return 0;
        default:
            fprintf(stderr, "cinematch migrate: unknown or incomplete option"
                    " '%s' (see --help)\n", argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "cinematch migrate: unexpected argument '%s'"
                " (see --help)\n", argv[optind]);
        return 2;
    }
    if (status_only && dry_run) {
        fprintf(stderr, "cinematch migrate: --status and --dry-run exclude"
                " each other\n");
        return 2;
    }

    if (dir[0] == '\0') {
        (void) cm_migrate_default_dir(dir, sizeof(dir));
    }
    if (dsn == NULL) {
        dsn = getenv("CINEMATCH_PG_DSN");
    }

    rc = cm_migrate_scan(dir, &files, &nfiles, err, sizeof(err));
    if (rc != CM_OK) {
        fprintf(stderr, "cinematch migrate: %s\n", err);
        goto done;
    }

    /* expand_dbname: dsn may be "host=... dbname=..." or a URI; an empty
     * one leaves everything to the PG* environment. */
    kw[0] = "dbname";
    val[0] = dsn != NULL ? dsn : "";
    kw[1] = "application_name";
    val[1] = "cinematch-migrate";
    kw[2] = NULL;
    val[2] = NULL;
    conn = PQconnectdbParams(kw, val, 1);
    if (conn == NULL || PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "cinematch migrate: cannot connect to PostgreSQL: %s",
                conn ? PQerrorMessage(conn) : "out of memory\n");
        goto done;
    }

    if (!status_only && !dry_run) {
        rc = cm_migrate_db_prepare(conn, lock_timeout, err, sizeof(err));
        if (rc != CM_OK) {
            fprintf(stderr, "cinematch migrate: %s\n", err);
            goto done;
        }
        locked = 1;
    }

    rc = cm_migrate_db_applied(conn, &applied, &napplied, err, sizeof(err));
    if (rc != CM_OK) {
        fprintf(stderr, "cinematch migrate: %s\n", err);
        goto done;
    }

    entries = calloc(napplied + nfiles + 1, sizeof(*entries));
    if (entries == NULL) {
        fprintf(stderr, "cinematch migrate: out of memory\n");
        goto done;
    }
    rc = cm_migrate_plan(applied, napplied, files, nfiles, entries, &nentries,
                         err, sizeof(err));

    if (status_only || dry_run) {
        printf("migrations in %s\n", dir);
        cm_migrate_print(entries, nentries);
    }
    if (rc != CM_OK) {
        fprintf(stderr, "cinematch migrate: refusing to run: %s\n", err);
        goto done;
    }
    if (status_only) {
        ret = 0;
        goto done;
    }

    applied_now = 0;
    for (i = 0; i < nentries; i++) {
        if (entries[i].state != CM_MIG_PENDING) {
            continue;
        }
        if (dry_run) {
            printf("would apply %s\n", entries[i].file->name);
            applied_now++;
            continue;
        }
        rc = cm_migrate_db_apply(conn, dir, entries[i].file, &ms, err,
                                 sizeof(err));
        if (rc != CM_OK) {
            fprintf(stderr, "cinematch migrate: %s failed, rolled back: %s\n",
                    entries[i].file->name, err);
            goto done;
        }
        printf("applied %s (%.1f ms)\n", entries[i].file->name, ms);
        applied_now++;
    }

    printf("%s: %zu migration%s %s, schema at version %03d\n",
           dry_run ? "dry run" : "ok", applied_now,
           applied_now == 1 ? "" : "s",
           dry_run ? "pending" : "applied",
           nfiles ? files[nfiles - 1].version : 0);
    ret = 0;

done:
    if (conn != NULL) {
        /* the session lock also goes with the connection; unlock anyway so
         * a pooled connection could never keep it */
        if (locked && PQstatus(conn) == CONNECTION_OK) {
            cm_migrate_db_unlock(conn);
        }
        PQfinish(conn);
    }
    free(entries);
    free(applied);
    free(files);
    return ret;
}

/*
 * cmd_maintain.c: `cinematch maintain`, the daily database chores
 * (request_logs partitions ahead and retention, expired refresh tokens).
 *
 *   cinematch maintain [--dsn DSN] [--keep-months N] [--dry-run]
 *
 * Exit status: 0 done, 1 failed (or another run holds the lock), 2 usage.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/common.h"
#include "cinematch/dbmaint.h"
#include "cmd.h"


static int cm_maintain_main(int argc, char **argv);

CM_COMMAND("maintain", "daily database chores: log partitions, retention,"
           " expired tokens", cm_maintain_main);


static void
cm_maintain_usage(FILE *out)
{
    fprintf(out,
        "usage: cinematch maintain [--dsn DSN] [--keep-months N] [--dry-run]"
        "\n\n"
        "Creates the request_logs partitions for this month and the next,"
        " drops\nmonthly partitions older than --keep-months (DROP TABLE: no"
        " bloat), and\ndeletes refresh tokens expired for more than a day."
        "  Run it daily (a\nsystemd timer); it needs the schema owner's"
        " role.\n\n"
        "  --dsn DSN          libpq connection string (default:"
        " $CINEMATCH_PG_DSN, else PG*)\n"
        "  --keep-months N    request log retention in months (default 6;"
        " 0 = keep all)\n"
        "  --dry-run          report what would change, change nothing\n");
}


static int
cm_maintain_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "dsn",         required_argument, NULL, 'd' },
        { "keep-months", required_argument, NULL, 'k' },
        { "dry-run",     no_argument,       NULL, 'n' },
        { "help",        no_argument,       NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    cm_dbmaint_opts_t    o = { 6, 0 };
    cm_dbmaint_report_t  rep;
    const char          *dsn = NULL, *kw[3], *val[3];
    char                 err[512] = "", *end;
    PGconn              *conn;
    long                 v;
    int                  c, rc;

    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'd':
            dsn = optarg;
            break;
        case 'k':
            v = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || v < 0 || v > 1200) {
                fprintf(stderr, "cinematch maintain: --keep-months wants"
                        " 0..1200, got '%s'\n", optarg);
                return 2;
            }
            o.keep_months = (int) v;
            break;
        case 'n':
            o.dry_run = 1;
            break;
        case 'h':
            cm_maintain_usage(stdout);
            return 0;
        default:
            fprintf(stderr, "cinematch maintain: unknown or incomplete option"
                    " '%s' (see --help)\n", argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "cinematch maintain: unexpected argument '%s'"
                " (see --help)\n", argv[optind]);
        return 2;
    }
    if (dsn == NULL) {
        dsn = getenv("CINEMATCH_PG_DSN");
    }

    kw[0] = "dbname";
    val[0] = dsn != NULL ? dsn : "";
    kw[1] = "application_name";
    val[1] = "cinematch-maintain";
    kw[2] = NULL;
    val[2] = NULL;
    conn = PQconnectdbParams(kw, val, 1);
    if (conn == NULL || PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "cinematch maintain: cannot connect to PostgreSQL: %s",
                conn ? PQerrorMessage(conn) : "out of memory\n");
        PQfinish(conn);
        return 1;
    }

    rc = cm_dbmaint_run(conn, &o, &rep, err, sizeof(err));
    PQfinish(conn);
    if (rc != CM_OK) {
        fprintf(stderr, "cinematch maintain: %s\n", err);
        return 1;
    }
    printf("%s: %d partition%s created, %d dropped, %ld expired refresh"
           " token%s deleted\n", o.dry_run ? "dry run" : "ok",
           rep.partitions_created, rep.partitions_created == 1 ? "" : "s",
           rep.partitions_dropped, rep.refresh_tokens_deleted,
           rep.refresh_tokens_deleted == 1 ? "" : "s");
    return 0;
}

/*
 * cmd_mailer.c: `cinematch mailer`, the sender of the auth layer's mail
 * (email verification, password reset) from the mail_outbox table.
 *
 *   cinematch mailer (--once | --loop) --smtp-url URL --from ADDR
 *                    --link-base URL [--dsn DSN] [...]
 *   cinematch mailer (--once | --loop) --mail-dir DIR --from ADDR
 *                    --link-base URL      (development: .eml files)
 *
 * --loop LISTENs on cm_mail_outbox (a trigger of sql/007 notifies on every
 * insert), so a mail goes out within a round trip of its request; it also
 * polls every --interval for retries that came due.  Exit status: 0 done
 * (or stopped by SIGTERM/SIGINT), 1 failed, 2 usage.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <sodium.h>

#include "cinematch/common.h"
#include "cinematch/mailer.h"
#include "cmd.h"


typedef struct {
    const char        *dsn;
    const char        *creds_file;
    int                loop;
    long               interval_s;
    cm_mailer_conf_t   conf;
    char               user[CM_SMTP_SECRET_MAX];
    char               pass[CM_SMTP_SECRET_MAX];
} cm_mailer_cli_t;


static int cm_mailer_main(int argc, char **argv);
static void cm_mailer_usage(FILE *out);
static int cm_mailer_num(const char *flag, const char *s, long lo, long hi,
    long *out);
static PGconn *cm_mailer_connect(const cm_mailer_cli_t *cli);
static int cm_mailer_pass(PGconn *conn, const cm_mailer_cli_t *cli);
static int cm_mailer_loop(cm_mailer_cli_t *cli);
static void cm_mailer_on_signal(int sig);


static volatile sig_atomic_t  cm_mailer_stop;

/*
 * The handler also writes to this pipe, which every wait of the loop polls:
 * a SIGTERM that lands while a pass runs (the flag alone was checked only
 * before the pass, so the poll after it slept --interval) or on another
 * thread (OpenBLAS starts its own before main()) still ends the wait.
 */
static int  cm_mailer_sigpipe[2] = { -1, -1 };


CM_COMMAND("mailer", "send verification and password-reset mail from the"
           " outbox (SMTP)", cm_mailer_main);


static void
cm_mailer_usage(FILE *out)
{
    fprintf(out,
        "usage: cinematch mailer (--once | --loop) --smtp-url URL --from ADDR"
        "\n                        --link-base URL [options]\n\n"
        "Sends the mail the API queued in mail_outbox (email verification,"
        " password\nreset) over SMTP, then clears each row's one-time token."
        "  Transient SMTP\nfailures are retried with exponential backoff;"
        " a 5xx refusal or --max-attempts\nfailures give the row up.\n\n"
        "  --once                  one pass over the due rows, then exit"
        " (default)\n"
        "  --loop                  run until SIGTERM; wakes on NOTIFY"
        " cm_mail_outbox\n"
        "  --interval SECONDS      --loop: poll for due retries this often"
        " (default 10)\n"
        "  --dsn DSN               libpq connection string (default:"
        " $CINEMATCH_PG_DSN, else PG*)\n"
        "  --smtp-url URL          smtp://host:port or smtps://host:port"
        " ($CINEMATCH_SMTP_URL)\n"
        "  --smtp-tls MODE         require (default), try, off"
        " ($CINEMATCH_SMTP_TLS);\n"
        "                          off only for a relay on loopback\n"
        "  --smtp-credentials-file FILE  one line \"username:password\","
        " mode 0600/0640\n"
        "                          ($CINEMATCH_SMTP_CREDENTIALS_FILE; none:"
        " no AUTH)\n"
        "  --mail-dir DIR          development: write each mail as"
        " DIR/<time>-<id>-<kind>.eml\n"
        "                          (mode 0600) instead of SMTP;"
        " --smtp-* are then unused\n"
        "                          ($CINEMATCH_MAIL_DIR; DIR is created"
        " 0700 when missing)\n"
        "  --from ADDR             sender address ($CINEMATCH_MAIL_FROM)\n"
        "  --link-base URL         where the links point, e.g."
        " https://cinematch.example.com\n"
        "                          ($CINEMATCH_PUBLIC_URL); mails link"
        " URL/verify-email?token=...\n"
        "  --batch N               rows per pass (default 100)\n"
        "  --max-attempts N        give a row up after N failures (default"
        " 8)\n"
        "  --retry-base SECONDS    first retry delay, doubled per failure up"
        " to 1 h (default 30)\n"
        "  --timeout SECONDS       per SMTP transaction (default 30)\n");
}


static int
cm_mailer_num(const char *flag, const char *s, long lo, long hi, long *out)
{
    char  *end;
    long   v;

    errno = 0;
    v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || errno != 0 || v < lo || v > hi) {
        fprintf(stderr, "cinematch mailer: %s wants %ld..%ld, got '%s'\n",
                flag, lo, hi, s);
        return -1;
    }

    *out = v;
    return 0;
}


static void
cm_mailer_on_signal(int sig)
{
    int      saved = errno;
    ssize_t  n;

    (void) sig;
    cm_mailer_stop = 1;
    n = write(cm_mailer_sigpipe[1], "", 1);     /* full: already woken */
    (void) n;
    errno = saved;
}


static PGconn *
cm_mailer_connect(const cm_mailer_cli_t *cli)
{
    const char  *kw[3], *val[3];
    PGconn      *conn;

    kw[0] = "dbname";
    val[0] = cli->dsn != NULL ? cli->dsn : "";
    kw[1] = "application_name";
    val[1] = "cinematch-mailer";
    kw[2] = NULL;
    val[2] = NULL;

    conn = PQconnectdbParams(kw, val, 1);
    if (conn == NULL || PQstatus(conn) != CONNECTION_OK) {
        cm_error("mailer: cannot connect to PostgreSQL: %s",
                 conn ? PQerrorMessage(conn) : "out of memory");
        PQfinish(conn);
        return NULL;
    }

    return conn;
}


static int
cm_mailer_pass(PGconn *conn, const cm_mailer_cli_t *cli)
{
    char                err[512];
    cm_mailer_report_t  rep;

    if (cm_mailer_run_once(conn, &cli->conf, &rep, err, sizeof(err))
        != CM_OK)
    {
        cm_error("mailer: %s", err);
        return -1;
    }

    if (rep.sent || rep.retried || rep.failed || rep.stale || rep.purged) {
        cm_info("mailer: %d sent, %d to retry, %d given up, %d stale,"
                " %ld old tokens purged", rep.sent, rep.retried, rep.failed,
                rep.stale, rep.purged);
    }

    return 0;
}


static int
cm_mailer_loop(cm_mailer_cli_t *cli)
{
    PGconn         *conn;
    PGnotify       *nt;
    PGresult       *res;
    struct pollfd   pfd[2];
    long            backoff;
    int             rc;

    backoff = 1;

    while (!cm_mailer_stop) {

        conn = cm_mailer_connect(cli);
        if (conn != NULL) {
            res = PQexec(conn, "LISTEN cm_mail_outbox");
            if (PQresultStatus(res) != PGRES_COMMAND_OK) {
                cm_error("mailer: LISTEN: %s", PQresultErrorMessage(res));
                PQclear(res);
                PQfinish(conn);
                conn = NULL;
            } else {
                PQclear(res);
            }
        }

        while (conn != NULL && !cm_mailer_stop) {

            if (cm_mailer_pass(conn, cli) != 0) {
                break;
            }
            backoff = 1;

            pfd[0].fd = PQsocket(conn);
            pfd[0].events = POLLIN;
            pfd[0].revents = 0;
            pfd[1].fd = cm_mailer_sigpipe[0];
            pfd[1].events = POLLIN;
            pfd[1].revents = 0;

            rc = poll(pfd, 2, (int) (cli->interval_s * 1000));
            if (rc < 0 && errno != EINTR) {
                cm_error("mailer: poll: %s", strerror(errno));
                break;
            }

            if (rc > 0 && pfd[0].revents != 0) {
                if (!PQconsumeInput(conn)) {
                    cm_error("mailer: connection lost: %s",
                             PQerrorMessage(conn));
                    break;
                }
                while ((nt = PQnotifies(conn)) != NULL) {
                    PQfreemem(nt);
                }
            }
        }

        PQfinish(conn);

        if (!cm_mailer_stop) {
            /* the database went away: try again, at most once a minute */
            pfd[1].fd = cm_mailer_sigpipe[0];
            pfd[1].events = POLLIN;
            (void) poll(&pfd[1], 1, (int) (backoff * 1000));
            backoff = backoff < 60 ? backoff * 2 : 60;
        }
    }

    cm_info("mailer: stopped");
    return 0;
}


static int
cm_mailer_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "once",                  no_argument,       NULL, 'o' },
        { "loop",                  no_argument,       NULL, 'l' },
        { "interval",              required_argument, NULL, 'i' },
        { "dsn",                   required_argument, NULL, 'd' },
        { "smtp-url",              required_argument, NULL, 'u' },
        { "mail-dir",              required_argument, NULL, 'D' },
        { "smtp-tls",              required_argument, NULL, 't' },
        { "smtp-credentials-file", required_argument, NULL, 'c' },
        { "from",                  required_argument, NULL, 'f' },
        { "link-base",             required_argument, NULL, 'b' },
        { "batch",                 required_argument, NULL, 'n' },
        { "max-attempts",          required_argument, NULL, 'm' },
        { "retry-base",            required_argument, NULL, 'r' },
        { "timeout",               required_argument, NULL, 'T' },
        { "help",                  no_argument,       NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    static cm_mailer_cli_t  cli;     /* holds the SMTP password: static,
                                        zeroed before return */
    struct sigaction        sa;
    const char             *tls;
    char                    err[512];
    PGconn                 *conn;
    long                    v;
    int                     c, once, rc;

    memset(&cli, 0, sizeof(cli));
    cli.interval_s = 10;
    once = 0;
    tls = getenv("CINEMATCH_SMTP_TLS");
    cli.dsn = getenv("CINEMATCH_PG_DSN");
    cli.conf.smtp.url = getenv("CINEMATCH_SMTP_URL");
    cli.conf.maildir = getenv("CINEMATCH_MAIL_DIR");
    if (cli.conf.maildir != NULL && cli.conf.maildir[0] == '\0') {
        cli.conf.maildir = NULL;
    }
    cli.conf.smtp.from = getenv("CINEMATCH_MAIL_FROM");
    cli.conf.link_base = getenv("CINEMATCH_PUBLIC_URL");
    cli.creds_file = getenv("CINEMATCH_SMTP_CREDENTIALS_FILE");

    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'o':
            once = 1;
            break;
        case 'l':
            cli.loop = 1;
            break;
        case 'i':
            if (cm_mailer_num("--interval", optarg, 1, 3600, &cli.interval_s)
                != 0)
            {
                return 2;
            }
            break;
        case 'd':
            cli.dsn = optarg;
            break;
        case 'u':
            cli.conf.smtp.url = optarg;
            break;
        case 'D':
            cli.conf.maildir = optarg;
            break;
        case 't':
            tls = optarg;
            break;
        case 'c':
            cli.creds_file = optarg;
            break;
        case 'f':
            cli.conf.smtp.from = optarg;
            break;
        case 'b':
            cli.conf.link_base = optarg;
            break;
        case 'n':
            if (cm_mailer_num("--batch", optarg, 1, 10000, &v) != 0) {
                return 2;
            }
            cli.conf.batch = (int) v;
            break;
        case 'm':
            if (cm_mailer_num("--max-attempts", optarg, 1, 100, &v) != 0) {
                return 2;
            }
            cli.conf.max_attempts = (int) v;
            break;
        case 'r':
            if (cm_mailer_num("--retry-base", optarg, 1, 3600,
                              &cli.conf.backoff_s)
                != 0)
            {
                return 2;
            }
            break;
        case 'T':
            if (cm_mailer_num("--timeout", optarg, 1, 600, &v) != 0) {
                return 2;
            }
            cli.conf.smtp.timeout_ms = v * 1000;
            break;
        case 'h':
            cm_mailer_usage(stdout);
            return 0;
        default:
            fprintf(stderr, "cinematch mailer: unknown or incomplete option"
                    " '%s' (see --help)\n", argv[optind - 1]);
            return 2;
        }
    }

    if (optind < argc) {
        fprintf(stderr, "cinematch mailer: unexpected argument '%s'"
                " (see --help)\n", argv[optind]);
        return 2;
    }

    if (once && cli.loop) {
        fprintf(stderr, "cinematch mailer: --once and --loop exclude each"
                " other\n");
        return 2;
    }

    if ((cli.conf.smtp.url == NULL && cli.conf.maildir == NULL)
        || cli.conf.smtp.from == NULL || cli.conf.link_base == NULL)
    {
        fprintf(stderr, "cinematch mailer: --smtp-url (or --mail-dir),"
                " --from and --link-base are required (or their environment"
                " variables; see --help)\n");
        return 2;
    }

    if (cm_mailer_conf_check(&cli.conf, err, sizeof(err)) != CM_OK) {
        fprintf(stderr, "cinematch mailer: %s (--smtp-url, --mail-dir,"
                " --from, --link-base)\n", err);
        return 2;
    }

    if (cli.conf.maildir != NULL) {
        struct stat  st;

        if (mkdir(cli.conf.maildir, 0700) != 0 && errno != EEXIST) {
            fprintf(stderr, "cinematch mailer: cannot create %s: %s\n",
                    cli.conf.maildir, strerror(errno));
            return 1;
        }
        if (stat(cli.conf.maildir, &st) != 0 || !S_ISDIR(st.st_mode)) {
            fprintf(stderr, "cinematch mailer: %s is not a directory\n",
                    cli.conf.maildir);
            return 1;
        }
        cm_info("mailer: development mode: mail is written to %s, not sent",
                cli.conf.maildir);
    }

    if (tls == NULL || strcmp(tls, "require") == 0) {
        cli.conf.smtp.tls = CM_SMTP_TLS_REQUIRE;
    } else if (strcmp(tls, "try") == 0) {
        cli.conf.smtp.tls = CM_SMTP_TLS_TRY;
    } else if (strcmp(tls, "off") == 0) {
        cli.conf.smtp.tls = CM_SMTP_TLS_OFF;
    } else {
        fprintf(stderr, "cinematch mailer: --smtp-tls wants require, try or"
                " off, got '%s'\n", tls);
        return 2;
    }

    if (cli.creds_file != NULL && cli.creds_file[0] != '\0') {
        if (cm_smtp_credentials_load(cli.creds_file, cli.user, cli.pass, err,
                                     sizeof(err))
            != CM_OK)
        {
            fprintf(stderr, "cinematch mailer: %s\n", err);
            return 1;
        }
        cli.conf.smtp.username = cli.user;
        cli.conf.smtp.password = cli.pass;
    }

    if (cli.loop) {
        if (pipe2(cm_mailer_sigpipe, O_CLOEXEC | O_NONBLOCK) != 0) {
            fprintf(stderr, "cinematch mailer: pipe: %s\n", strerror(errno));
            return 1;
        }

        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = cm_mailer_on_signal;
        sigemptyset(&sa.sa_mask);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);

        rc = cm_mailer_loop(&cli);

    } else {
        conn = cm_mailer_connect(&cli);
        rc = (conn != NULL && cm_mailer_pass(conn, &cli) == 0) ? 0 : 1;
        PQfinish(conn);
    }

    sodium_memzero(cli.pass, sizeof(cli.pass));

    return rc;
}

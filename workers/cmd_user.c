/*
 * cmd_user.c: operator commands for accounts and secrets.
 *
 *   cinematch user create --email E [--password-stdin] [--admin]
 *                         [--display-name NAME] [--dsn DSN]
 *   cinematch jwt-secret generate --out FILE [--force]
 *
 * `user create --admin` is how the first admin exists (the API never
 * grants admin).  A CLI may block, so this uses synchronous libpq; the
 * same validators and hash as the API keep both doors equally strict.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <libpq-fe.h>
#include <sodium.h>

#include "cinematch/common.h"
#include "cinematch/authkeys.h"
#include "cinematch/jwt.h"
#include "cinematch/validate.h"
#include "cmd.h"

static int cm_user_create_main(int argc, char **argv);
static int cm_jwt_secret_generate_main(int argc, char **argv);

CM_COMMAND("user create", "create a user (use --admin for the first admin)",
           cm_user_create_main);
CM_COMMAND("jwt-secret generate", "write a new JWT signing secret file (0600)",
           cm_jwt_secret_generate_main);


static void
cm_user_create_usage(FILE *out)
{
    fprintf(out,
        "usage: cinematch user create --email EMAIL [--password-stdin]"
        " [--admin]\n"
        "                             [--display-name NAME] [--dsn DSN]\n\n"
        "Creates an account in the users table.  The password is read from"
        " the\nterminal (asked twice, not echoed) or, with --password-stdin,"
        " as one line\nfrom standard input (for scripts: printf '%%s' \"$PW\""
        " | cinematch user ...).\n\n"
        "  --email EMAIL         the login; same rules as POST"
        " /api/v1/auth/register\n"
        "  --password-stdin      read the password from stdin\n"
        "  --admin               role admin instead of user\n"
        "  --display-name NAME   optional, 1..100 characters\n"
        "  --dsn DSN             libpq connection string or URI (default:"
        " $CINEMATCH_PG_DSN,\n"
        "                        then the PG* environment)\n\n"
        "exit status: 0 created, 1 failed (exists, database), 2 bad usage\n");
}


/* One line from fp into buf; strips "\n" or "\r\n".  Returns the length,
 * -1 on EOF before anything, -2 when the line is longer than max. */
static ssize_t
cm_read_line(FILE *fp, char *buf, size_t max)
{
    size_t  n = 0;
    int     c;

    while ((c = fgetc(fp)) != EOF && c != '\n') {
        if (n == max) {
            while ((c = fgetc(fp)) != EOF && c != '\n') { /* drain */ }
            return -2;
        }
        buf[n++] = (char) c;
    }
    if (c == EOF && n == 0) {
        return -1;
    }
    if (n > 0 && buf[n - 1] == '\r') {
        n--;
    }
    buf[n] = '\0';
    return (ssize_t) n;
}


static ssize_t
cm_prompt_password(const char *prompt, char *buf, size_t max)
{
    FILE            *tty;
    struct termios   old, noecho;
    ssize_t          n;
    int              restored;

    tty = fopen("/dev/tty", "r+");
    if (tty == NULL) {
        return -1;
    }
    fputs(prompt, tty);
    fflush(tty);
    restored = tcgetattr(fileno(tty), &old) != 0;
    if (!restored) {
        noecho = old;
        noecho.c_lflag &= ~(tcflag_t) ECHO;
        tcsetattr(fileno(tty), TCSAFLUSH, &noecho);
    }
    n = cm_read_line(tty, buf, max);
    if (!restored) {
        tcsetattr(fileno(tty), TCSAFLUSH, &old);
    }
    fputc('\n', tty);
    fclose(tty);
    return n;
}


static int
cm_user_create_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "email",          required_argument, NULL, 'e' },
        { "password-stdin", no_argument,       NULL, 'p' },
        { "admin",          no_argument,       NULL, 'a' },
        { "display-name",   required_argument, NULL, 'n' },
        { "dsn",            required_argument, NULL, 'd' },
        { "help",           no_argument,       NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    const char        *email = NULL, *name = NULL, *dsn = NULL;
    int                from_stdin = 0, admin = 0, c, ret = 1;
    char               pw[CM_PASSWORD_MAX_BYTES + 2];
    char               pw2[CM_PASSWORD_MAX_BYTES + 2];
    char               hash[CM_PWHASH_STRLEN];
    ssize_t            n;
    cm_field_error_t   fe;
    PGconn            *conn = NULL;
    PGresult          *res = NULL;
    const char        *kw[3], *val[3], *params[4];
    const char        *state;
    uint64_t           t0;

    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'e': email = optarg; break;
        case 'p': from_stdin = 1; break;
        case 'a': admin = 1; break;
        case 'n': name = optarg; break;
        case 'd': dsn = optarg; break;
        case 'h':
            cm_user_create_usage(stdout);
            return 0;
        default:
            fprintf(stderr, "cinematch user create: unknown or incomplete"
                    " option '%s' (see --help)\n", argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "cinematch user create: unexpected argument '%s'"
                " (see --help)\n", argv[optind]);
        return 2;
    }
    if (email == NULL) {
        fprintf(stderr, "cinematch user create: --email is required"
                " (see --help)\n");
        return 2;
    }
    if (cm_validate_email(email, strlen(email), &fe) != CM_OK) {
        fprintf(stderr, "cinematch user create: --email %s\n", fe.message);
        return 2;
    }
    if (name != NULL
        && cm_validate_display_name(name, strlen(name), &fe) != CM_OK)
    {
        fprintf(stderr, "cinematch user create: --display-name %s\n",
                fe.message);
        return 2;
    }

    if (from_stdin) {
        n = cm_read_line(stdin, pw, CM_PASSWORD_MAX_BYTES + 1);
    } else if (isatty(STDIN_FILENO)) {
        n = cm_prompt_password("password: ", pw, CM_PASSWORD_MAX_BYTES + 1);
        if (n >= 0) {
            ssize_t n2 = cm_prompt_password("again: ", pw2,
                                            CM_PASSWORD_MAX_BYTES + 1);

            if (n2 != n || sodium_memcmp(pw, pw2, (size_t) n) != 0) {
                sodium_memzero(pw, sizeof(pw));
                sodium_memzero(pw2, sizeof(pw2));
                fprintf(stderr, "cinematch user create: the passwords"
                        " differ\n");
                return 2;
            }
            sodium_memzero(pw2, sizeof(pw2));
        }
    } else {
        fprintf(stderr, "cinematch user create: no terminal to ask for the"
                " password; use --password-stdin\n");
        return 2;
    }
    if (n < 0) {
        fprintf(stderr, "cinematch user create: %s\n",
                n == -2 ? "password: must be at most 1024 bytes"
                        : "no password given");
        sodium_memzero(pw, sizeof(pw));
        return 2;
    }
    if (cm_validate_password(pw, (size_t) n, &fe) != CM_OK) {
        fprintf(stderr, "cinematch user create: password %s\n", fe.message);
        sodium_memzero(pw, sizeof(pw));
        return 2;
    }

    t0 = cm_now_mono_ns();
    if (cm_password_hash(hash, pw, (size_t) n, NULL) != CM_OK) {
        fprintf(stderr, "cinematch user create: hashing failed (out of"
                " memory?)\n");
        sodium_memzero(pw, sizeof(pw));
        return 1;
    }
    sodium_memzero(pw, sizeof(pw));
    cm_debug("argon2id hash took %.1f ms",
             (double) (cm_now_mono_ns() - t0) / 1e6);

    if (dsn == NULL) {
        dsn = getenv("CINEMATCH_PG_DSN");
    }
    kw[0] = "dbname";
    val[0] = dsn != NULL ? dsn : "";
    kw[1] = "application_name";
    val[1] = "cinematch-user";
    kw[2] = NULL;
    val[2] = NULL;
    conn = PQconnectdbParams(kw, val, 1);
    if (conn == NULL || PQstatus(conn) != CONNECTION_OK) {
        fprintf(stderr, "cinematch user create: cannot connect to"
                " PostgreSQL: %s", conn ? PQerrorMessage(conn)
                                        : "out of memory\n");
        goto done;
    }

    params[0] = email;
    params[1] = hash;
    params[2] = admin ? "admin" : "user";
    params[3] = name;                    /* NULL → SQL NULL */
    res = PQexecParams(conn,
                       "INSERT INTO users (email, password_hash, role,"
                       " display_name) VALUES ($1, $2, $3, $4)"
                       " RETURNING id",
                       4, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        state = PQresultErrorField(res, PG_DIAG_SQLSTATE);
        if (state != NULL && strcmp(state, "23505") == 0) {
            fprintf(stderr, "cinematch user create: a user with email %s"
                    " already exists\n", email);
        } else {
            fprintf(stderr, "cinematch user create: %s",
                    PQresultErrorMessage(res));
        }
        goto done;
    }
    printf("created user %s (%s) %s\n", PQgetvalue(res, 0, 0), params[2],
           email);
    ret = 0;

done:
    sodium_memzero(hash, sizeof(hash));
    PQclear(res);
    PQfinish(conn);
    return ret;
}


static void
cm_jwt_secret_usage(FILE *out)
{
    fprintf(out,
        "usage: cinematch jwt-secret generate --out FILE [--force]\n\n"
        "Writes 64 random bytes, base64url-encoded (86 characters and a"
        " newline),\nto FILE with mode 0600, and prints the key id (kid)"
        " tokens signed with it\nwill carry.  Point cinematch_jwt_secret_file"
        " at FILE; to rotate, move the\nold file to"
        " cinematch_jwt_previous_secret_file and generate a new one.\n\n"
        "  --out FILE   where to write (refuses an existing file unless"
        " --force)\n"
        "  --force      replace FILE atomically (write beside it, rename)\n");
}


static int
cm_jwt_secret_generate_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "out",   required_argument, NULL, 'o' },
        { "force", no_argument,       NULL, 'f' },
        { "help",  no_argument,       NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    const char    *out = NULL;
    int            force = 0, c, fd = -1, ret = 1;
    uint8_t        raw[64];
    char           text[sodium_base64_ENCODED_LEN(64,
                        sodium_base64_VARIANT_URLSAFE_NO_PADDING) + 1];
    char           tmp[PATH_MAX], err[256], dir[PATH_MAX];
    const char    *target;
    size_t         len;
    cm_jwt_key_t   key;

    optind = 1;
    opterr = 0;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'o': out = optarg; break;
        case 'f': force = 1; break;
        case 'h':
            cm_jwt_secret_usage(stdout);
            return 0;
        default:
            fprintf(stderr, "cinematch jwt-secret generate: unknown or"
                    " incomplete option '%s' (see --help)\n",
                    argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc || out == NULL || out[0] == '\0') {
        fprintf(stderr, "cinematch jwt-secret generate: --out FILE is"
                " required (see --help)\n");
        return 2;
    }
    if (cm_auth_init() != CM_OK) {
        fprintf(stderr, "cinematch jwt-secret generate: no randomness\n");
        return 1;
    }

    randombytes_buf(raw, sizeof(raw));
    sodium_bin2base64(text, sizeof(text), raw, sizeof(raw),
                      sodium_base64_VARIANT_URLSAFE_NO_PADDING);
    sodium_memzero(raw, sizeof(raw));
    len = strlen(text);
    if (cm_jwt_key_init(&key, text, len, err, sizeof(err)) != CM_OK) {
        fprintf(stderr, "cinematch jwt-secret generate: %s\n", err);
        goto done;
    }
    text[len++] = '\n';

    /* --force writes a sibling and renames it over FILE, so a reader
     * never sees a half-written secret; without it, O_EXCL refuses to
     * clobber anything (a typo must not destroy the live key). */
    if (force) {
        snprintf(dir, sizeof(dir), "%s", out);
        if (snprintf(tmp, sizeof(tmp), "%s/.jwt-secret.XXXXXX", dirname(dir))
            >= (int) sizeof(tmp))
        {
            fprintf(stderr, "cinematch jwt-secret generate: path too long\n");
            goto done;
        }
        fd = mkostemp(tmp, O_CLOEXEC);
        target = tmp;
    } else {
        fd = open(out, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC,
                  0600);
        target = out;
    }
    if (fd == -1) {
        fprintf(stderr, "cinematch jwt-secret generate: %s: %s%s\n",
                force ? tmp : out, strerror(errno),
                errno == EEXIST ? " (use --force to replace it)" : "");
        goto done;
    }
    if (fchmod(fd, 0600) != 0 || write(fd, text, len) != (ssize_t) len
        || fsync(fd) != 0)
    {
        fprintf(stderr, "cinematch jwt-secret generate: %s: %s\n", target,
                strerror(errno));
        close(fd);
        unlink(target);
        goto done;
    }
    close(fd);
    if (force && rename(tmp, out) != 0) {
        fprintf(stderr, "cinematch jwt-secret generate: rename to %s: %s\n",
                out, strerror(errno));
        unlink(tmp);
        goto done;
    }
    printf("wrote %s (mode 0600, kid %s)\n", out, key.kid);
    ret = 0;

done:
    sodium_memzero(text, sizeof(text));
    sodium_memzero(&key, sizeof(key));
    return ret;
}

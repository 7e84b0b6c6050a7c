/*
 * cinematch/mailer.h: the transactional mail of the auth layer (email
 * verification, password reset), sent from the mail_outbox table
 * (sql/007_email_tokens.sql) over SMTP with libcurl.
 *
 * The nginx module never sends mail: it writes a one-time token and an
 * outbox row in one statement; `cinematch mailer` (workers/cmd_mailer.c)
 * drains the outbox with cm_mailer_run_once().
 *
 * Invariants:
 *   - a composed message is plain ASCII text with CRLF line ends; every
 *     header value is checked for CR, LF and other controls before it is
 *     written (no header injection from an address);
 *   - each outbox row is claimed in its own transaction with FOR UPDATE
 *     SKIP LOCKED, so several mailers may run; delivery is at least once
 *     (a crash between the SMTP answer and the COMMIT resends one mail);
 *   - when a row is done (sent, given up, or its token expired or used
 *     before it went out) its plain token is set to NULL in the same
 *     UPDATE: the secret lives in the database only while it is needed.
 */
#ifndef CINEMATCH_MAILER_H
#define CINEMATCH_MAILER_H

#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

#define CM_MAIL_MAX          8192   /* bytes of one composed message */
#define CM_MAIL_ADDR_MAX     254
#define CM_SMTP_SECRET_MAX   256    /* username or password, bytes */

typedef enum {
    CM_MAIL_VERIFY_EMAIL = 0,       /* "verify_email" */
    CM_MAIL_RESET_PASSWORD          /* "reset_password" */
} cm_mail_kind_t;

typedef struct {
    cm_mail_kind_t   kind;
    const char      *from;          /* bare address, e.g. noreply@host */
    const char      *to;            /* bare address */
    const char      *link_base;     /* "https://host" (a trailing / ok) */
    const char      *token;         /* "cmo_..." */
    int64_t          date;          /* unix seconds, for Date: */
    const char      *message_id;    /* "<id@host>" */
} cm_mail_t;

typedef enum {
    CM_SMTP_TLS_REQUIRE = 0,        /* STARTTLS or smtps://, else fail */
    CM_SMTP_TLS_TRY,                /* STARTTLS when offered */
    CM_SMTP_TLS_OFF                 /* plain text (loopback relays) */
} cm_smtp_tls_t;

typedef struct {
    const char      *url;           /* smtp://host:port or smtps://... */
    const char      *from;          /* envelope sender, bare address */
    const char      *username;      /* NULL: no AUTH */
    const char      *password;
    cm_smtp_tls_t    tls;
    long             timeout_ms;    /* whole transaction; 0 = 30 s */
} cm_smtp_t;

typedef struct {
    cm_smtp_t        smtp;          /* url unused when maildir is set */
    const char      *maildir;       /* non-NULL: write each message as a
                                       file into this directory instead of
                                       SMTP (development; see
                                       cm_mail_write_file) */
    const char      *link_base;
    int              batch;         /* rows per run; 0 = 100 */
    int              max_attempts;  /* then the row is given up; 0 = 8 */
    long             backoff_s;     /* first retry delay; 0 = 30 s */
    long             backoff_max_s; /* cap; 0 = 1 h */
} cm_mailer_conf_t;

typedef struct {
    int              sent;
    int              retried;       /* transient failure, rescheduled */
    int              failed;        /* given up (5xx or attempts spent) */
    int              stale;         /* token expired or used unsent */
    long             purged;        /* old token rows deleted */
} cm_mailer_report_t;


/* "verify_email" / "reset_password"; CM_EINVAL otherwise. */
int cm_mail_kind_parse(const char *s, size_t len, cm_mail_kind_t *out);

/*
 * Compose the whole RFC 5322 message (headers and body) into out (NUL
 * terminated, *len without the NUL).  CM_EINVAL with a message in err for
 * a header value with controls, a malformed address or token; CM_ENOMEM
 * when cap is too small.
 */
int cm_mail_compose(const cm_mail_t *m, char *out, size_t cap, size_t *len,
    char *err, size_t errlen);

/*
 * Send one composed message to rcpt.  CM_OK: the server accepted it;
 * CM_EAGAIN: a transient failure (connection, timeout, 4xx, login), retry
 * later; CM_ERR: the server refused this message for good (5xx).
 */
int cm_smtp_send(const cm_smtp_t *s, const char *rcpt, const char *msg,
    size_t len, char *err, size_t errlen);

/*
 * Development instead of SMTP (like Django's file e-mail backend): write
 * the composed message to dir/<UTC time>-<name>.eml, mode 0600 (the mail
 * holds a live one-time token), through a temporary file renamed into
 * place so a reader never sees half a message.  name: [A-Za-z0-9_-], at
 * most 64 bytes (e.g. the outbox row id and kind).  The final path goes to
 * path (may be NULL).  CM_OK; CM_EINVAL for a bad name; CM_EAGAIN when
 * the file cannot be written (a full disk: retried like a transient SMTP
 * failure), err says why.
 */
int cm_mail_write_file(const char *dir, const char *name, const char *msg,
    size_t len, int64_t now, char *path, size_t pathlen, char *err,
    size_t errlen);

/*
 * The SMTP credentials file: one line "username:password" (the password
 * may contain ':'; a trailing newline is ignored; nothing after it).
 * Both parts non-empty, at most CM_SMTP_SECRET_MAX - 1 bytes, no controls.
 */
int cm_smtp_credentials_parse(const char *buf, size_t len,
    char user[CM_SMTP_SECRET_MAX], char pass[CM_SMTP_SECRET_MAX]);

/* Read and parse the file; refused when it is not a regular file or is
 * readable or writable by others, or group-writable (like the JWT key). */
int cm_smtp_credentials_load(const char *path,
    char user[CM_SMTP_SECRET_MAX], char pass[CM_SMTP_SECRET_MAX],
    char *err, size_t errlen);

/* Seconds before the retry after `attempts` failed sends (1, 2, ...):
 * base * 2^(attempts-1), capped at max. */
long cm_mailer_backoff(int attempts, long base, long max);

/* CM_OK when conf can compose a message (sender, link base, and the URL
 * scheme or a mail directory);
 * run_once checks it first, so a bad --from never gives rows up. */
int cm_mailer_conf_check(const cm_mailer_conf_t *conf, char *err,
    size_t errlen);

/*
 * One pass over the outbox: drop rows whose token expired or was used,
 * send every due row (at most conf->batch), reschedule or give up the
 * failures, purge token rows expired for more than 7 days.  CM_OK unless
 * the database failed (err says why); SMTP failures are in rep.
 */
int cm_mailer_run_once(PGconn *conn, const cm_mailer_conf_t *conf,
    cm_mailer_report_t *rep, char *err, size_t errlen);

#endif /* CINEMATCH_MAILER_H */

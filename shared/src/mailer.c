/*
 * mailer.c: compose and send the auth layer's mail; drain mail_outbox
 * (see cinematch/mailer.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <sodium.h>

#include "cinematch/common.h"
#include "cinematch/authkeys.h"
#include "cinematch/mailer.h"


#define CM_MAIL_LINK_MAX   512

/* what libcurl's read callback walks through */
typedef struct {
    const char  *pos;
    size_t       left;
} cm_smtp_reader_t;


static int cm_mail_addr_ok(const char *a);
static int cm_mail_link_ok(const char *s);
static size_t cm_smtp_read(char *buf, size_t size, size_t n, void *data);
static int cm_mailer_fail(PGconn *conn, PGresult *res, const char *what,
    char *err, size_t errlen);
static int cm_mailer_exec(PGconn *conn, const char *sql, char *err,
    size_t errlen);
static int cm_mailer_one(PGconn *conn, const cm_mailer_conf_t *conf,
    cm_mailer_report_t *rep, int *done, char *err, size_t errlen);


static const char  *cm_mail_kinds[] = { "verify_email", "reset_password" };

static const char  *cm_mail_days[] = {
    "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"
};

static const char  *cm_mail_months[] = {
    "Jan", "Feb", "Mar", "Apr", "May", "Jun",
    "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"
};


int
cm_mail_kind_parse(const char *s, size_t len, cm_mail_kind_t *out)
{
    size_t  i;

    for (i = 0; i < CM_ARRAY_SIZE(cm_mail_kinds); i++) {
        if (len == strlen(cm_mail_kinds[i])
            && memcmp(s, cm_mail_kinds[i], len) == 0)
        {
            *out = (cm_mail_kind_t) i;
            return CM_OK;
        }
    }

    return CM_EINVAL;
}


/*
 * An address as it goes into a header and an SMTP command: one '@' with
 * something on both sides, no controls, no space, none of the characters
 * that would end or restructure an address header.  UTF-8 bytes pass
 * (register accepts RFC 6531 addresses).
 */

static int
cm_mail_addr_ok(const char *a)
{
    const unsigned char  *p;
    size_t                len, at;

    if (a == NULL) {
        return 0;
    }

    len = strlen(a);
    if (len < 3 || len > CM_MAIL_ADDR_MAX) {
        return 0;
    }

    at = 0;
    for (p = (const unsigned char *) a; *p; p++) {
        if (*p <= 0x20 || *p == 0x7f || strchr("<>()[],;:\"\\", *p)) {
            return 0;
        }
        if (*p == '@') {
            if (at != 0) {
                return 0;
            }
            at = (size_t) (p - (const unsigned char *) a);
        }
    }

    return at > 0 && at < len - 1;
}


static int
cm_mail_link_ok(const char *s)
{
    const unsigned char  *p;

    if (s == NULL || strlen(s) > CM_MAIL_LINK_MAX
        || (strncmp(s, "https://", 8) != 0 && strncmp(s, "http://", 7) != 0))
    {
        return 0;
    }

    for (p = (const unsigned char *) s; *p; p++) {
        if (*p <= 0x20 || *p >= 0x7f) {
            return 0;
        }
    }

    return 1;
}


int
cm_mail_compose(const cm_mail_t *m, char *out, size_t cap, size_t *len,
    char *err, size_t errlen)
{
    const char  *subject, *path, *intro, *outro;
    struct tm    tm;
    time_t       t;
    size_t       base_len;
    int          n;

    if (!cm_mail_addr_ok(m->from)) {
        return cm_seterr(err, errlen, CM_EINVAL, "bad sender address");
    }
    if (!cm_mail_addr_ok(m->to)) {
        return cm_seterr(err, errlen, CM_EINVAL, "bad recipient address");
    }
    if (!cm_mail_link_ok(m->link_base)) {
        return cm_seterr(err, errlen, CM_EINVAL,
                         "the link base must be an http(s) URL of printable"
                         " ASCII");
    }
    if (m->token == NULL
        || cm_token_parse(m->token, strlen(m->token), CM_TOKEN_ONETIME)
           != CM_OK)
    {
        return cm_seterr(err, errlen, CM_EINVAL, "malformed one-time token");
    }
    if (m->message_id == NULL || strlen(m->message_id) > 200
        || m->message_id[0] != '<')
    {
        return cm_seterr(err, errlen, CM_EINVAL, "bad Message-ID");
    }
    for (n = 0; m->message_id[n]; n++) {
        if ((unsigned char) m->message_id[n] <= 0x20
            || (unsigned char) m->message_id[n] >= 0x7f)
        {
            return cm_seterr(err, errlen, CM_EINVAL, "bad Message-ID");
        }
    }

    switch (m->kind) {
    case CM_MAIL_VERIFY_EMAIL:
        subject = "Confirm your cinematch email address";
        path = "verify-email";
        intro = "Welcome to cinematch. To confirm that this address is yours,"
                "\r\nopen this link:";
        outro = "The link works once and expires. If you did not create a"
                "\r\ncinematch account, ignore this message.";
        break;
    case CM_MAIL_RESET_PASSWORD:
        subject = "Reset your cinematch password";
        path = "reset-password";
        intro = "Someone (hopefully you) asked to reset the password of the"
                "\r\ncinematch account of this address. To choose a new"
                " password,\r\nopen this link:";
        outro = "The link works once and expires soon; resetting signs out"
                "\r\nevery session. If you did not ask, ignore this message:"
                "\r\nyour password stays as it is.";
        break;
    default:
        return cm_seterr(err, errlen, CM_EINVAL, "unknown mail kind");
    }

    base_len = strlen(m->link_base);
    while (base_len > 0 && m->link_base[base_len - 1] == '/') {
        base_len--;
    }

    t = (time_t) m->date;
    if (gmtime_r(&t, &tm) == NULL) {
        return cm_seterr(err, errlen, CM_EINVAL, "bad date");
    }

    n = snprintf(out, cap,
        "Date: %s, %02d %s %04d %02d:%02d:%02d +0000\r\n"
        "From: cinematch <%s>\r\n"
        "To: <%s>\r\n"
        "Subject: %s\r\n"
        "Message-ID: %s\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n"
        "Content-Transfer-Encoding: 7bit\r\n"
        "Auto-Submitted: auto-generated\r\n"
        "\r\n"
        "%s\r\n"
        "\r\n"
        "  %.*s/%s?token=%s\r\n"
        "\r\n"
        "or paste this code where the app asks for it:\r\n"
        "\r\n"
        "  %s\r\n"
        "\r\n"
        "%s\r\n",
        cm_mail_days[tm.tm_wday], tm.tm_mday, cm_mail_months[tm.tm_mon],
        tm.tm_year + 1900, tm.tm_hour, tm.tm_min, tm.tm_sec,
        m->from, m->to, subject, m->message_id,
        intro, (int) base_len, m->link_base, path, m->token,
        m->token, outro);

    if (n < 0 || (size_t) n >= cap) {
        return cm_seterr(err, errlen, CM_ENOMEM, "message larger than %zu"
                         " bytes", cap);
    }

    *len = (size_t) n;
    return CM_OK;
}


static size_t
cm_smtp_read(char *buf, size_t size, size_t n, void *data)
{
    cm_smtp_reader_t  *rd = data;
    size_t             want;

    want = size * n;
    if (want > rd->left) {
        want = rd->left;
    }

    memcpy(buf, rd->pos, want);
    rd->pos += want;
    rd->left -= want;

    return want;
}


int
cm_smtp_send(const cm_smtp_t *s, const char *rcpt, const char *msg,
    size_t len, char *err, size_t errlen)
{
    static int          curl_ready;
    char                from[CM_MAIL_ADDR_MAX + 3], to[CM_MAIL_ADDR_MAX + 3];
    char                cerr[CURL_ERROR_SIZE];
    long                code, timeout;
    CURL               *h;
    CURLcode            rc;
    cm_smtp_reader_t    rd;
    struct curl_slist  *rcpts;

    if (!cm_mail_addr_ok(s->from) || !cm_mail_addr_ok(rcpt)) {
        return cm_seterr(err, errlen, CM_ERR, "bad envelope address");
    }

    if (!curl_ready) {
        /* not thread safe; the mailer is single threaded */
        if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK) {
            return cm_seterr(err, errlen, CM_EAGAIN, "curl_global_init");
        }
        curl_ready = 1;
    }

    h = curl_easy_init();
    if (h == NULL) {
        return cm_seterr(err, errlen, CM_EAGAIN, "curl_easy_init");
    }

    snprintf(from, sizeof(from), "<%s>", s->from);
    snprintf(to, sizeof(to), "<%s>", rcpt);

    rcpts = curl_slist_append(NULL, to);
    if (rcpts == NULL) {
        curl_easy_cleanup(h);
        return cm_seterr(err, errlen, CM_EAGAIN, "out of memory");
    }

    rd.pos = msg;
    rd.left = len;
    cerr[0] = '\0';
    timeout = s->timeout_ms > 0 ? s->timeout_ms : 30000;

    curl_easy_setopt(h, CURLOPT_URL, s->url);
    /* an URL from a config file must not turn into file:// or http:// */
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "smtp,smtps");
    curl_easy_setopt(h, CURLOPT_MAIL_FROM, from);
    curl_easy_setopt(h, CURLOPT_MAIL_RCPT, rcpts);
    curl_easy_setopt(h, CURLOPT_READFUNCTION, cm_smtp_read);
    curl_easy_setopt(h, CURLOPT_READDATA, &rd);
    curl_easy_setopt(h, CURLOPT_UPLOAD, 1L);
    curl_easy_setopt(h, CURLOPT_INFILESIZE_LARGE, (curl_off_t) len);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, timeout);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
                     timeout < 10000 ? timeout : 10000L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, cerr);

    switch (s->tls) {
    case CM_SMTP_TLS_REQUIRE:
        curl_easy_setopt(h, CURLOPT_USE_SSL, (long) CURLUSESSL_ALL);
        break;
    case CM_SMTP_TLS_TRY:
        curl_easy_setopt(h, CURLOPT_USE_SSL, (long) CURLUSESSL_TRY);
        break;
    default:
        curl_easy_setopt(h, CURLOPT_USE_SSL, (long) CURLUSESSL_NONE);
        break;
    }

    if (s->username != NULL) {
        curl_easy_setopt(h, CURLOPT_USERNAME, s->username);
        curl_easy_setopt(h, CURLOPT_PASSWORD, s->password);
    }

    rc = curl_easy_perform(h);

    code = 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);

    curl_slist_free_all(rcpts);
    curl_easy_cleanup(h);

    if (rc == CURLE_OK) {
        return CM_OK;
    }

    /* a 5xx about this message (sender, recipient, content) will not
     * change; a refused login is the operator's to fix: retry it */
    if (code >= 500 && code < 600 && rc != CURLE_LOGIN_DENIED) {
        return cm_seterr(err, errlen, CM_ERR, "SMTP %ld: %s", code,
                         cerr[0] ? cerr : curl_easy_strerror(rc));
    }

    return cm_seterr(err, errlen, CM_EAGAIN, "SMTP %ld: %s", code,
                     cerr[0] ? cerr : curl_easy_strerror(rc));
}


int
cm_smtp_credentials_parse(const char *buf, size_t len,
    char user[CM_SMTP_SECRET_MAX], char pass[CM_SMTP_SECRET_MAX])
{
    const char  *colon, *end;
    size_t       ulen, plen, i;

    /* one line: drop one trailing "\n" or "\r\n", nothing may follow */
    end = buf + len;
    if (end > buf && end[-1] == '\n') {
        end--;
        if (end > buf && end[-1] == '\r') {
            end--;
        }
    }

    for (i = 0; i < (size_t) (end - buf); i++) {
        if ((unsigned char) buf[i] < 0x20 || buf[i] == 0x7f) {
            return CM_EINVAL;
        }
    }

    colon = memchr(buf, ':', (size_t) (end - buf));
    if (colon == NULL) {
        return CM_EINVAL;
    }

    ulen = (size_t) (colon - buf);
    plen = (size_t) (end - colon - 1);

    if (ulen == 0 || plen == 0 || ulen >= CM_SMTP_SECRET_MAX
        || plen >= CM_SMTP_SECRET_MAX)
    {
        return CM_EINVAL;
    }

    memcpy(user, buf, ulen);
    user[ulen] = '\0';
    memcpy(pass, colon + 1, plen);
    pass[plen] = '\0';

    return CM_OK;
}


int
cm_smtp_credentials_load(const char *path,
    char user[CM_SMTP_SECRET_MAX], char pass[CM_SMTP_SECRET_MAX],
    char *err, size_t errlen)
{
    char         buf[2 * CM_SMTP_SECRET_MAX + 4];
    ssize_t      n;
    struct stat  st;
    int          fd, rc;

    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd == -1) {
        return cm_seterr(err, errlen, CM_EIO, "%s: %s", path,
                         strerror(errno));
    }

    if (fstat(fd, &st) == -1 || !S_ISREG(st.st_mode)) {
        close(fd);
        return cm_seterr(err, errlen, CM_EINVAL, "%s: not a regular file",
                         path);
    }

    if (st.st_mode & (S_IROTH | S_IWOTH | S_IWGRP)) {
        close(fd);
        return cm_seterr(err, errlen, CM_EINVAL, "%s: mode %04o is too open"
                         " (chmod 0600 or 0640)", path,
                         (unsigned) (st.st_mode & 07777));
    }

    n = read(fd, buf, sizeof(buf));
    close(fd);

    if (n < 0 || (size_t) n == sizeof(buf)) {
        sodium_memzero(buf, sizeof(buf));
        return cm_seterr(err, errlen, CM_EINVAL, "%s: unreadable or longer"
                         " than %zu bytes", path, sizeof(buf) - 1);
    }

    rc = cm_smtp_credentials_parse(buf, (size_t) n, user, pass);
    sodium_memzero(buf, sizeof(buf));

    if (rc != CM_OK) {
        return cm_seterr(err, errlen, rc, "%s: want one line"
                         " \"username:password\"", path);
    }

    return CM_OK;
}


long
cm_mailer_backoff(int attempts, long base, long max)
{
    long  d;
    int   i;

    if (base <= 0) {
        base = 30;
    }
    if (max <= 0) {
        max = 3600;
    }

    d = base;
    for (i = 1; i < attempts && d < max; i++) {
        d *= 2;
    }

    return d < max ? d : max;
}


static int
cm_mailer_fail(PGconn *conn, PGresult *res, const char *what, char *err,
    size_t errlen)
{
    int  rc;

    rc = cm_seterr(err, errlen, CM_EIO, "%s: %s", what,
                   res != NULL ? PQresultErrorMessage(res)
                               : PQerrorMessage(conn));
    PQclear(res);

    return rc;
}


static int
cm_mailer_exec(PGconn *conn, const char *sql, char *err, size_t errlen)
{
    PGresult  *res;

    res = PQexec(conn, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        return cm_mailer_fail(conn, res, sql, err, errlen);
    }

    PQclear(res);
    return CM_OK;
}


/*
 * Claim one due row (its own transaction), send it, record the outcome.
 * *done = 1 when no row was due.
 */

static int
cm_mailer_one(PGconn *conn, const cm_mailer_conf_t *conf,
    cm_mailer_report_t *rep, int *done, char *err, size_t errlen)
{
    char            msg[CM_MAIL_MAX], serr[512], mid[96], rnd[24];
    char            delay[32], *host;
    const char     *values[3], *id, *sql;
    size_t          len = 0;
    cm_mail_t       m;
    PGresult       *res;
    int             rc, attempts, max_attempts;

    *done = 0;
    max_attempts = conf->max_attempts > 0 ? conf->max_attempts : 8;

    rc = cm_mailer_exec(conn, "BEGIN", err, errlen);
    if (rc != CM_OK) {
        return rc;
    }

    res = PQexec(conn,
        "SELECT o.id, o.kind, o.to_addr, o.token, o.attempts"
        "  FROM mail_outbox o JOIN user_tokens t ON t.id = o.token_id"
        " WHERE o.sent_at IS NULL AND o.failed_at IS NULL"
        "   AND o.next_attempt_at <= now()"
        "   AND t.used_at IS NULL AND t.expires_at > now()"
        " ORDER BY o.next_attempt_at, o.id"
        " LIMIT 1 FOR UPDATE OF o SKIP LOCKED");

    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        rc = cm_mailer_fail(conn, res, "claim", err, errlen);
        PQclear(PQexec(conn, "ROLLBACK"));
        return rc;
    }

    if (PQntuples(res) == 0) {
        PQclear(res);
        *done = 1;
        return cm_mailer_exec(conn, "COMMIT", err, errlen);
    }

    id = PQgetvalue(res, 0, 0);
    attempts = atoi(PQgetvalue(res, 0, 4)) + 1;

    memset(&m, 0, sizeof(m));
    m.from = conf->smtp.from;
    m.to = PQgetvalue(res, 0, 2);
    m.link_base = conf->link_base;
    m.token = PQgetvalue(res, 0, 3);
    m.date = (int64_t) time(NULL);

    host = strchr(conf->smtp.from, '@');
    if (cm_random_base62(rnd, sizeof(rnd) - 1) != CM_OK) {
        memset(rnd, 'x', sizeof(rnd) - 1);
    }
    rnd[sizeof(rnd) - 1] = '\0';
    snprintf(mid, sizeof(mid), "<%s@%.60s>", rnd,
             host != NULL && host[1] ? host + 1 : "cinematch");
    m.message_id = mid;

    rc = cm_mail_kind_parse(PQgetvalue(res, 0, 1),
                            (size_t) PQgetlength(res, 0, 1), &m.kind);
    if (rc == CM_OK) {
        rc = cm_mail_compose(&m, msg, sizeof(msg), &len, serr, sizeof(serr));
        if (rc != CM_OK) {
            rc = CM_ERR;        /* this row can never be sent */
        }
    } else {
        snprintf(serr, sizeof(serr), "unknown kind");
        rc = CM_ERR;
    }

    if (rc == CM_OK && conf->maildir != NULL) {
        char  name[64], path[4096];

        snprintf(name, sizeof(name), "%s-%s", id,
                 cm_mail_kinds[m.kind]);
        rc = cm_mail_write_file(conf->maildir, name, msg, len, m.date, path,
                                sizeof(path), serr, sizeof(serr));
        if (rc == CM_OK) {
            cm_info("mailer: wrote %s (to %s)", path, m.to);
        } else if (rc != CM_EAGAIN) {
            rc = CM_ERR;
        }

    } else if (rc == CM_OK) {
        rc = cm_smtp_send(&conf->smtp, m.to, msg, len, serr, sizeof(serr));
    }

    sodium_memzero(msg, sizeof(msg));

    values[0] = id;
    values[1] = NULL;
    values[2] = NULL;

    if (rc == CM_OK) {
        rep->sent++;
        sql = "UPDATE mail_outbox SET sent_at = now(), token = NULL,"
              " attempts = attempts + 1, last_error = NULL"
              " WHERE id = $1::bigint";
        cm_info("mailer: sent outbox row %s", id);

    } else if (rc == CM_ERR || attempts >= max_attempts) {
        rep->failed++;
        values[1] = serr;
        sql = "UPDATE mail_outbox SET failed_at = now(), token = NULL,"
              " attempts = attempts + 1, last_error = left($2, 512)"
              " WHERE id = $1::bigint";
        cm_warn("mailer: gave up outbox row %s after %d attempt%s: %s", id,
                attempts, attempts == 1 ? "" : "s", serr);

    } else {
        rep->retried++;
        snprintf(delay, sizeof(delay), "%ld",
                 cm_mailer_backoff(attempts, conf->backoff_s,
                                   conf->backoff_max_s));
        values[1] = serr;
        values[2] = delay;
        sql = "UPDATE mail_outbox SET attempts = attempts + 1,"
              " last_error = left($2, 512),"
              " next_attempt_at = now() + make_interval(secs => $3::int)"
              " WHERE id = $1::bigint";
        cm_warn("mailer: outbox row %s failed (attempt %d), retry in %s s:"
                " %s", id, attempts, delay, serr);
    }

    {
        PGresult  *up;

        up = PQexecParams(conn, sql, values[2] ? 3 : (values[1] ? 2 : 1),
                          NULL, values, NULL, NULL, 0);
        PQclear(res);

        if (PQresultStatus(up) != PGRES_COMMAND_OK) {
            rc = cm_mailer_fail(conn, up, "record outcome", err, errlen);
            PQclear(PQexec(conn, "ROLLBACK"));
            return rc;
        }
        PQclear(up);
    }

    return cm_mailer_exec(conn, "COMMIT", err, errlen);
}


int
cm_mail_write_file(const char *dir, const char *name, const char *msg,
    size_t len, int64_t now, char *path, size_t pathlen, char *err,
    size_t errlen)
{
    char        tmp[4096], final[4096], stamp[32];
    size_t      i, nlen, off;
    ssize_t     n;
    time_t      t;
    struct tm   tm;
    int         fd;

    nlen = name != NULL ? strlen(name) : 0;
    if (nlen == 0 || nlen > 64) {
        return cm_seterr(err, errlen, CM_EINVAL, "bad mail file name");
    }
    for (i = 0; i < nlen; i++) {
        if (!((name[i] >= 'a' && name[i] <= 'z')
              || (name[i] >= 'A' && name[i] <= 'Z')
              || (name[i] >= '0' && name[i] <= '9')
              || name[i] == '-' || name[i] == '_'))
        {
            return cm_seterr(err, errlen, CM_EINVAL, "bad mail file name");
        }
    }

    t = (time_t) now;
    if (gmtime_r(&t, &tm) == NULL
        || strftime(stamp, sizeof(stamp), "%Y%m%dT%H%M%SZ", &tm) == 0)
    {
        return cm_seterr(err, errlen, CM_EINVAL, "bad time");
    }

    if ((size_t) snprintf(final, sizeof(final), "%s/%s-%s.eml", dir, stamp,
                          name)
            >= sizeof(final)
        || (size_t) snprintf(tmp, sizeof(tmp), "%s/.%s-%s.eml.tmp", dir,
                             stamp, name)
            >= sizeof(tmp))
    {
        return cm_seterr(err, errlen, CM_EINVAL, "mail directory path is"
                         " too long");
    }

    fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
              0600);
    if (fd < 0) {
        return cm_seterr(err, errlen, CM_EAGAIN, "cannot create %s: %s", tmp,
                         strerror(errno));
    }

    for (off = 0; off < len; off += (size_t) n) {
        n = write(fd, msg + off, len - off);
        if (n < 0 && errno == EINTR) {
            n = 0;
            continue;
        }
        if (n <= 0) {
            cm_seterr(err, errlen, CM_EAGAIN, "cannot write %s: %s", tmp,
                      n < 0 ? strerror(errno) : "short write");
            close(fd);
            unlink(tmp);
            return CM_EAGAIN;
        }
    }

    if (fsync(fd) != 0 || close(fd) != 0) {
        cm_seterr(err, errlen, CM_EAGAIN, "cannot write %s: %s", tmp,
                  strerror(errno));
        unlink(tmp);
        return CM_EAGAIN;
    }

    if (rename(tmp, final) != 0) {
        cm_seterr(err, errlen, CM_EAGAIN, "cannot rename %s: %s", tmp,
                  strerror(errno));
        unlink(tmp);
        return CM_EAGAIN;
    }

    if (path != NULL && pathlen > 0) {
        snprintf(path, pathlen, "%s", final);
    }

    return CM_OK;
}


int
cm_mailer_conf_check(const cm_mailer_conf_t *conf, char *err, size_t errlen)
{
    char       out[CM_MAIL_MAX];
    size_t     len;
    cm_mail_t  m;

    memset(&m, 0, sizeof(m));
    m.kind = CM_MAIL_RESET_PASSWORD;
    m.from = conf->smtp.from;
    m.to = "check@example.com";
    m.link_base = conf->link_base;
    m.token = "cmo_0000000000000000000000000000000000000000000";
    m.message_id = "<check@example.com>";

    if (conf->maildir != NULL) {
        if (conf->maildir[0] == '\0') {
            return cm_seterr(err, errlen, CM_EINVAL, "the mail directory is"
                             " empty");
        }

    } else if (conf->smtp.url == NULL
               || (strncmp(conf->smtp.url, "smtp://", 7) != 0
                   && strncmp(conf->smtp.url, "smtps://", 8) != 0))
    {
        return cm_seterr(err, errlen, CM_EINVAL, "the SMTP URL must start"
                         " with smtp:// or smtps://");
    }

    return cm_mail_compose(&m, out, sizeof(out), &len, err, errlen);
}


int
cm_mailer_run_once(PGconn *conn, const cm_mailer_conf_t *conf,
    cm_mailer_report_t *rep, char *err, size_t errlen)
{
    PGresult  *res;
    int        i, batch, done, rc;

    memset(rep, 0, sizeof(*rep));
    batch = conf->batch > 0 ? conf->batch : 100;

    /* a bad sender or link base would fail every row for good: refuse to
     * touch the outbox instead */
    rc = cm_mailer_conf_check(conf, err, errlen);
    if (rc != CM_OK) {
        return rc;
    }

    /* a token that expired or was used before its mail went out: the
     * mail is pointless now, and its secret goes */
    res = PQexec(conn,
        "UPDATE mail_outbox o SET failed_at = now(), token = NULL,"
        " last_error = 'token expired or used before it was sent'"
        "  FROM user_tokens t"
        " WHERE t.id = o.token_id AND o.sent_at IS NULL"
        "   AND o.failed_at IS NULL"
        "   AND (t.used_at IS NOT NULL OR t.expires_at <= now())");
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        return cm_mailer_fail(conn, res, "expire outbox", err, errlen);
    }
    rep->stale = atoi(PQcmdTuples(res));
    PQclear(res);

    for (i = 0; i < batch; i++) {
        rc = cm_mailer_one(conn, conf, rep, &done, err, errlen);
        if (rc != CM_OK) {
            return rc;
        }
        if (done) {
            break;
        }
    }

    /* the outbox rows go with their tokens (ON DELETE CASCADE) */
    res = PQexec(conn,
        "DELETE FROM user_tokens"
        " WHERE expires_at < now() - interval '7 days'");
    if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        return cm_mailer_fail(conn, res, "purge tokens", err, errlen);
    }
    rep->purged = atol(PQcmdTuples(res));
    PQclear(res);

    return CM_OK;
}

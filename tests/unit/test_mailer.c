/*
 * test_mailer.c: composing the auth mail, the SMTP credentials file, the
 * retry backoff, and cm_smtp_send's answer when nothing listens.  The
 * outbox loop against PostgreSQL and a real SMTP server is covered by
 * tests/integration/test_auth_email.py.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <netinet/in.h>
#include <unistd.h>
#include <cmocka.h>

#include "cinematch/common.h"
#include "cinematch/authkeys.h"
#include "cinematch/mailer.h"


static const char  token[] = "cmo_abcdefghijABCDEFGHIJ0123456789abcdefghijKLM";


static cm_mail_t
mail_fixture(void)
{
    cm_mail_t  m;

    memset(&m, 0, sizeof(m));
    m.kind = CM_MAIL_VERIFY_EMAIL;
    m.from = "noreply@cinematch.test";
    m.to = "ann@example.com";
    m.link_base = "https://cinematch.test/";
    m.token = token;
    m.date = 1700000000;             /* Tue, 14 Nov 2023 22:13:20 UTC */
    m.message_id = "<abc@cinematch.test>";

    return m;
}


static void
test_compose_verify_mail_has_headers_link_and_crlf(void **state)
{
    char       out[CM_MAIL_MAX], err[128];
    size_t     len, i;
    cm_mail_t  m = mail_fixture();

    (void) state;
    assert_int_equal(strlen(token), CM_TOKEN_MAX_LEN);
    assert_int_equal(cm_mail_compose(&m, out, sizeof(out), &len, err,
                                     sizeof(err)), CM_OK);
    assert_int_equal(strlen(out), len);

    assert_non_null(strstr(out, "Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"));
    assert_non_null(strstr(out, "From: cinematch <noreply@cinematch.test>\r\n"));
    assert_non_null(strstr(out, "To: <ann@example.com>\r\n"));
    assert_non_null(strstr(out, "Subject: Confirm your cinematch email"));
    assert_non_null(strstr(out, "Message-ID: <abc@cinematch.test>\r\n"));
    /* the trailing slash of the base is not doubled */
    assert_non_null(strstr(out, "https://cinematch.test/verify-email?token="
                                "cmo_abcdefghijABCDEFGHIJ0123456789abcdefghijKLM"
                                "\r\n"));
    /* headers end once, and every line ends in CRLF */
    assert_non_null(strstr(out, "\r\n\r\n"));
    for (i = 0; i < len; i++) {
        if (out[i] == '\n') {
            assert_true(i > 0 && out[i - 1] == '\r');
        }
        assert_true((unsigned char) out[i] < 0x80);
    }
}


static void
test_compose_reset_mail_links_reset_page(void **state)
{
    char       out[CM_MAIL_MAX], err[128];
    size_t     len;
    cm_mail_t  m = mail_fixture();

    (void) state;
    m.kind = CM_MAIL_RESET_PASSWORD;
    m.link_base = "http://localhost:8080";
    assert_int_equal(cm_mail_compose(&m, out, sizeof(out), &len, err,
                                     sizeof(err)), CM_OK);
    assert_non_null(strstr(out, "Subject: Reset your cinematch password\r\n"));
    assert_non_null(strstr(out, "http://localhost:8080/reset-password?token=cmo_"));
}


static void
test_compose_refuses_header_injection_and_bad_fields(void **state)
{
    static const char *bad_addrs[] = {
        "ann@example.com\r\nBcc: eve@evil.test", "ann@example.com\n",
        "ann example@example.com", "<ann@example.com>", "annexample.com",
        "@example.com", "ann@", "a@b@c", "ann@exa,mple.com", "", "a\x7f@b.c"
    };
    char        out[CM_MAIL_MAX], err[128];
    size_t      len, i;
    cm_mail_t   m;

    (void) state;
    for (i = 0; i < CM_ARRAY_SIZE(bad_addrs); i++) {
        m = mail_fixture();
        m.to = bad_addrs[i];
        assert_int_equal(cm_mail_compose(&m, out, sizeof(out), &len, err,
                                         sizeof(err)), CM_EINVAL);
        m = mail_fixture();
        m.from = bad_addrs[i];
        assert_int_equal(cm_mail_compose(&m, out, sizeof(out), &len, err,
                                         sizeof(err)), CM_EINVAL);
    }

    m = mail_fixture();
    m.link_base = "https://x.test/\r\nBcc: eve@evil.test";
    assert_int_equal(cm_mail_compose(&m, out, sizeof(out), &len, err,
                                     sizeof(err)), CM_EINVAL);
    m.link_base = "javascript:alert(1)";
    assert_int_equal(cm_mail_compose(&m, out, sizeof(out), &len, err,
                                     sizeof(err)), CM_EINVAL);

    m = mail_fixture();
    m.token = "cmr_abcdefghijABCDEFGHIJ0123456789abcdefghijKLM";   /* refresh */
    assert_int_equal(cm_mail_compose(&m, out, sizeof(out), &len, err,
                                     sizeof(err)), CM_EINVAL);
    m.token = "cmo_short";
    assert_int_equal(cm_mail_compose(&m, out, sizeof(out), &len, err,
                                     sizeof(err)), CM_EINVAL);

    m = mail_fixture();
    m.message_id = "<a b@c>";
    assert_int_equal(cm_mail_compose(&m, out, sizeof(out), &len, err,
                                     sizeof(err)), CM_EINVAL);

    m = mail_fixture();
    m.kind = (cm_mail_kind_t) 7;
    assert_int_equal(cm_mail_compose(&m, out, sizeof(out), &len, err,
                                     sizeof(err)), CM_EINVAL);
}


static void
test_compose_reports_a_too_small_buffer(void **state)
{
    char       out[100], err[128];
    size_t     len;
    cm_mail_t  m = mail_fixture();

    (void) state;
    assert_int_equal(cm_mail_compose(&m, out, sizeof(out), &len, err,
                                     sizeof(err)), CM_ENOMEM);
}


static void
test_mail_kind_parse_knows_exactly_two_kinds(void **state)
{
    cm_mail_kind_t  k;

    (void) state;
    assert_int_equal(cm_mail_kind_parse("verify_email", 12, &k), CM_OK);
    assert_int_equal(k, CM_MAIL_VERIFY_EMAIL);
    assert_int_equal(cm_mail_kind_parse("reset_password", 14, &k), CM_OK);
    assert_int_equal(k, CM_MAIL_RESET_PASSWORD);
    assert_int_equal(cm_mail_kind_parse("verify_emai", 11, &k), CM_EINVAL);
    assert_int_equal(cm_mail_kind_parse("verify_email!", 13, &k), CM_EINVAL);
    assert_int_equal(cm_mail_kind_parse("", 0, &k), CM_EINVAL);
}


static void
test_credentials_parse_one_line_user_colon_password(void **state)
{
    char  u[CM_SMTP_SECRET_MAX], p[CM_SMTP_SECRET_MAX];
    char  big[CM_SMTP_SECRET_MAX + 8];

    (void) state;
    assert_int_equal(cm_smtp_credentials_parse("mailer:s3cr:et\n", 15, u, p),
                     CM_OK);
    assert_string_equal(u, "mailer");
    assert_string_equal(p, "s3cr:et");          /* first ':' splits */

    assert_int_equal(cm_smtp_credentials_parse("a:b\r\n", 5, u, p), CM_OK);
    assert_string_equal(p, "b");
    assert_int_equal(cm_smtp_credentials_parse("a:b", 3, u, p), CM_OK);

    assert_int_equal(cm_smtp_credentials_parse("nocolon\n", 8, u, p),
                     CM_EINVAL);
    assert_int_equal(cm_smtp_credentials_parse(":pw", 3, u, p), CM_EINVAL);
    assert_int_equal(cm_smtp_credentials_parse("user:", 5, u, p), CM_EINVAL);
    assert_int_equal(cm_smtp_credentials_parse("a:b\nc:d\n", 8, u, p),
                     CM_EINVAL);               /* one line only */
    assert_int_equal(cm_smtp_credentials_parse("a:b\n\n", 5, u, p),
                     CM_EINVAL);
    assert_int_equal(cm_smtp_credentials_parse("a:b\0c", 5, u, p),
                     CM_EINVAL);
    assert_int_equal(cm_smtp_credentials_parse("", 0, u, p), CM_EINVAL);

    /* the longest part that fits, and one byte more */
    memset(big, 'x', sizeof(big));
    big[0] = 'u';
    big[1] = ':';
    assert_int_equal(cm_smtp_credentials_parse(big, 2 + CM_SMTP_SECRET_MAX - 1,
                                               u, p), CM_OK);
    assert_int_equal(strlen(p), CM_SMTP_SECRET_MAX - 1);
    assert_int_equal(cm_smtp_credentials_parse(big, 2 + CM_SMTP_SECRET_MAX,
                                               u, p), CM_EINVAL);
}


static void
test_credentials_file_must_not_be_readable_by_others(void **state)
{
    char   path[] = "/tmp/cm-smtp-credsXXXXXX", err[256];
    char   u[CM_SMTP_SECRET_MAX], p[CM_SMTP_SECRET_MAX];
    int    fd;

    (void) state;
    fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, "mailer:pw\n", 10), 10);
    close(fd);

    assert_int_equal(chmod(path, 0600), 0);
    assert_int_equal(cm_smtp_credentials_load(path, u, p, err, sizeof(err)),
                     CM_OK);
    assert_string_equal(u, "mailer");
    assert_string_equal(p, "pw");

    assert_int_equal(chmod(path, 0644), 0);
    assert_int_equal(cm_smtp_credentials_load(path, u, p, err, sizeof(err)),
                     CM_EINVAL);
    assert_non_null(strstr(err, "too open"));

    unlink(path);
    assert_int_equal(cm_smtp_credentials_load(path, u, p, err, sizeof(err)),
                     CM_EIO);
}


static void
test_backoff_doubles_from_base_up_to_the_cap(void **state)
{
    (void) state;
    assert_int_equal(cm_mailer_backoff(1, 30, 3600), 30);
    assert_int_equal(cm_mailer_backoff(2, 30, 3600), 60);
    assert_int_equal(cm_mailer_backoff(3, 30, 3600), 120);
    assert_int_equal(cm_mailer_backoff(7, 30, 3600), 1920);
    assert_int_equal(cm_mailer_backoff(8, 30, 3600), 3600);
    assert_int_equal(cm_mailer_backoff(1000, 30, 3600), 3600);
    assert_int_equal(cm_mailer_backoff(1, 0, 0), 30);       /* defaults */
    assert_int_equal(cm_mailer_backoff(0, 5, 10), 5);
}


static void
test_send_to_a_closed_port_is_a_transient_failure(void **state)
{
    struct sockaddr_in  sa;
    socklen_t           sl = sizeof(sa);
    cm_smtp_t           s;
    char                url[64], err[256];
    int                 fd;

    (void) state;
    /* a port that was free a moment ago: bind, read it, close */
    fd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(fd >= 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *) &sa, sizeof(sa)), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *) &sa, &sl), 0);
    close(fd);
    snprintf(url, sizeof(url), "smtp://127.0.0.1:%d", ntohs(sa.sin_port));

    memset(&s, 0, sizeof(s));
    s.url = url;
    s.from = "noreply@cinematch.test";
    s.tls = CM_SMTP_TLS_OFF;
    s.timeout_ms = 2000;

    assert_int_equal(cm_smtp_send(&s, "ann@example.com", "x\r\n", 3, err,
                                  sizeof(err)), CM_EAGAIN);
    assert_true(err[0] != '\0');

    /* a bad envelope address never reaches the network */
    assert_int_equal(cm_smtp_send(&s, "ann@example.com>\r\nRCPT TO:<e@x>",
                                  "x\r\n", 3, err, sizeof(err)), CM_ERR);
}


static void
test_conf_check_refuses_what_would_fail_every_row(void **state)
{
    cm_mailer_conf_t  c;
    char              err[128];

    (void) state;
    memset(&c, 0, sizeof(c));
    c.smtp.url = "smtp://127.0.0.1:25";
    c.smtp.from = "noreply@cinematch.test";
    c.link_base = "https://cinematch.test";
    assert_int_equal(cm_mailer_conf_check(&c, err, sizeof(err)), CM_OK);

    c.smtp.from = "noreply";
    assert_int_equal(cm_mailer_conf_check(&c, err, sizeof(err)), CM_EINVAL);
    c.smtp.from = "noreply@cinematch.test";
    c.link_base = "cinematch.test";
    assert_int_equal(cm_mailer_conf_check(&c, err, sizeof(err)), CM_EINVAL);
    c.link_base = "https://cinematch.test";
    c.smtp.url = "file:///etc/passwd";
    assert_int_equal(cm_mailer_conf_check(&c, err, sizeof(err)), CM_EINVAL);
    c.smtp.url = NULL;
    assert_int_equal(cm_mailer_conf_check(&c, err, sizeof(err)), CM_EINVAL);
}


/* development mode: the message lands whole, 0600, under a name of UTC
 * time + the caller's name; no temporary file is left; bad names and an
 * unwritable directory are refused (the latter as retry-later) */
static void
test_write_file_puts_one_private_eml_per_mail(void **state)
{
    char         dir[] = "/tmp/cm-maildirXXXXXX", path[4096], err[256];
    char         buf[64], tmpname[4200];
    const char  *msg = "To: a@example.com\r\n\r\nhello\r\n";
    struct stat  st;
    FILE        *f;
    size_t       n;

    (void) state;
    assert_non_null(mkdtemp(dir));

    /* 2026-01-01T00:00:00Z */
    assert_int_equal(cm_mail_write_file(dir, "42-reset_password", msg,
                                        strlen(msg), 1767225600, path,
                                        sizeof(path), err, sizeof(err)),
                     CM_OK);
    snprintf(buf, sizeof(buf), "/20260101T000000Z-42-reset_password.eml");
    assert_true(strlen(path) > strlen(buf));
    assert_string_equal(path + strlen(path) - strlen(buf), buf);

    assert_int_equal(stat(path, &st), 0);
    assert_int_equal(st.st_mode & 0777, 0600);
    f = fopen(path, "rb");
    assert_non_null(f);
    n = fread(buf, 1, sizeof(buf), f);
    fclose(f);
    assert_int_equal(n, strlen(msg));
    assert_memory_equal(buf, msg, n);

    snprintf(tmpname, sizeof(tmpname),
             "%s/.20260101T000000Z-42-reset_password.eml.tmp", dir);
    assert_int_not_equal(access(tmpname, F_OK), 0);

    assert_int_equal(cm_mail_write_file(dir, "../x", msg, strlen(msg), 0,
                                        NULL, 0, err, sizeof(err)),
                     CM_EINVAL);
    assert_int_equal(cm_mail_write_file(dir, "", msg, strlen(msg), 0,
                                        NULL, 0, err, sizeof(err)),
                     CM_EINVAL);

    unlink(path);
    assert_int_equal(rmdir(dir), 0);
    assert_int_equal(cm_mail_write_file(dir, "1-verify_email", msg,
                                        strlen(msg), 0, NULL, 0, err,
                                        sizeof(err)),
                     CM_EAGAIN);
    assert_non_null(strstr(err, "cannot create"));
}


/* with a mail directory no SMTP URL is needed, the rest is checked */
static void
test_conf_check_accepts_a_mail_directory_instead_of_smtp(void **state)
{
    cm_mailer_conf_t  c;
    char              err[128];

    (void) state;
    memset(&c, 0, sizeof(c));
    c.maildir = "/tmp";
    c.smtp.from = "noreply@cinematch.test";
    c.link_base = "http://127.0.0.1:8080";
    assert_int_equal(cm_mailer_conf_check(&c, err, sizeof(err)), CM_OK);
    c.maildir = "";
    assert_int_equal(cm_mailer_conf_check(&c, err, sizeof(err)), CM_EINVAL);
    c.maildir = "/tmp";
    c.smtp.from = "noreply";
    assert_int_equal(cm_mailer_conf_check(&c, err, sizeof(err)), CM_EINVAL);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_compose_verify_mail_has_headers_link_and_crlf),
        cmocka_unit_test(test_compose_reset_mail_links_reset_page),
        cmocka_unit_test(test_compose_refuses_header_injection_and_bad_fields),
        cmocka_unit_test(test_compose_reports_a_too_small_buffer),
        cmocka_unit_test(test_mail_kind_parse_knows_exactly_two_kinds),
        cmocka_unit_test(test_credentials_parse_one_line_user_colon_password),
        cmocka_unit_test(test_credentials_file_must_not_be_readable_by_others),
        cmocka_unit_test(test_backoff_doubles_from_base_up_to_the_cap),
        cmocka_unit_test(test_send_to_a_closed_port_is_a_transient_failure),
        cmocka_unit_test(test_conf_check_refuses_what_would_fail_every_row),
        cmocka_unit_test(test_write_file_puts_one_private_eml_per_mail),
        cmocka_unit_test(
            test_conf_check_accepts_a_mail_directory_instead_of_smtp),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

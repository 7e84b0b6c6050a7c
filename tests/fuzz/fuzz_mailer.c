/*
 * fuzz_mailer.c: the SMTP credentials parser and the mail composer.
 *
 * Input: one byte picks the target.  Credentials: the rest is the file's
 * bytes; an accepted pair must be non-empty, NUL-terminated, free of
 * controls, and rejoin to the input line.  Composer: the rest is split at
 * '\n' into recipient, link base and token; an accepted message must keep
 * every header on one line (no CR or LF from the inputs) and be ASCII.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/common.h"
#include "cinematch/mailer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static void
fuzz_credentials(const char *buf, size_t len)
{
    char    u[CM_SMTP_SECRET_MAX], p[CM_SMTP_SECRET_MAX];
    size_t  ul, pl, i;

    if (cm_smtp_credentials_parse(buf, len, u, p) != CM_OK) {
        return;
    }

    ul = strlen(u);
    pl = strlen(p);
    if (ul == 0 || pl == 0 || ul + 1 + pl > len
        || memcmp(buf, u, ul) != 0 || buf[ul] != ':'
        || memcmp(buf + ul + 1, p, pl) != 0 || memchr(u, ':', ul) != NULL)
    {
        abort();
    }
    for (i = 0; i < ul; i++) {
        if ((unsigned char) u[i] < 0x20) {
            abort();
        }
    }
    for (i = 0; i < pl; i++) {
        if ((unsigned char) p[i] < 0x20) {
            abort();
        }
    }
}


static void
fuzz_compose(char *buf, size_t len)
{
    char        out[CM_MAIL_MAX], err[128], *f[3], *nl;
    size_t      n, i, olen;
    cm_mail_t   m;

    f[0] = buf;
    for (n = 1; n < 3; n++) {
        nl = memchr(f[n - 1], '\n', len - (size_t) (f[n - 1] - buf));
        if (nl == NULL) {
            return;
        }
        *nl = '\0';
        f[n] = nl + 1;
    }

    memset(&m, 0, sizeof(m));
    m.kind = (len & 1) ? CM_MAIL_RESET_PASSWORD : CM_MAIL_VERIFY_EMAIL;
    m.from = "noreply@cinematch.test";
    m.to = f[0];
    m.link_base = f[1];
    m.token = f[2];
    m.date = 0;
    m.message_id = "<fuzz@cinematch.test>";

    if (cm_mail_compose(&m, out, sizeof(out), &olen, err, sizeof(err))
        != CM_OK)
    {
        return;
    }

    if (strlen(out) != olen) {
        abort();
    }
    for (i = 0; i < olen; i++) {
        if ((unsigned char) out[i] >= 0x80 && strchr(f[0], out[i]) == NULL) {
            abort();
        }
        if (out[i] == '\n' && (i == 0 || out[i - 1] != '\r')) {
            abort();
        }
        if (out[i] == '\r' && out[i + 1] != '\n') {
            abort();
        }
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char  *buf;

    if (size < 1 || size > 4096) {
        return 0;
    }

    /* a NUL-terminated copy: the composer reads C strings */
    buf = malloc(size);
    if (buf == NULL) {
        return 0;
    }
    memcpy(buf, data + 1, size - 1);
    buf[size - 1] = '\0';

    if (data[0] & 1) {
        fuzz_credentials(buf, size - 1);
    } else {
        fuzz_compose(buf, size - 1);
    }

    free(buf);
    return 0;
}

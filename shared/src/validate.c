/*
 * validate.c: field rules for the auth endpoints and the credential
 * header parser.  Each check is a single pass over bounded input; length
 * caps are tested first so a 1 MB "email" costs one comparison.
 */
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "cinematch/common.h"
#include "cinematch/authkeys.h"
#include "cinematch/validate.h"


static const struct {
    const char  *name;
    uint32_t     bit;
} cm_scopes[] = {
    { "recommend",     CM_SCOPE_RECOMMEND },
    { "chat",          CM_SCOPE_CHAT },
    { "predict",       CM_SCOPE_PREDICT },
    { "models:read",   CM_SCOPE_MODELS_READ },
    { "models:write",  CM_SCOPE_MODELS_WRITE },
    { "admin",         CM_SCOPE_ADMIN },
};


static size_t cm_utf8_next(const uint8_t *s, size_t len, uint32_t *cp);
static int cm_cp_invisible(uint32_t cp);
static int cm_fail(cm_field_error_t *e, const char *code, const char *msg);
static int cm_email_local_ok(const char *s, size_t len);
static int cm_email_domain_ok(const char *s, size_t len);
static int cm_text_field(const char *s, size_t len, size_t minc, size_t maxc,
    cm_field_error_t *e, const char *too_long);


static int
cm_fail(cm_field_error_t *e, const char *code, const char *msg)
{
    if (e != NULL) {
        e->code = code;
        e->message = msg;
    }
    return CM_EINVAL;
}


/*
 * Decode one code point; returns its byte length, 0 when the sequence is
 * ill-formed (RFC 3629: no overlongs, no surrogates, <= U+10FFFF).
 */
static size_t
cm_utf8_next(const uint8_t *s, size_t len, uint32_t *cp)
{
    uint32_t  c = s[0], min;
    size_t    n, i;

    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xc2 && c <= 0xdf) {
        n = 2; c &= 0x1f; min = 0x80;
    } else if (c >= 0xe0 && c <= 0xef) {
        n = 3; c &= 0x0f; min = 0x800;
    } else if (c >= 0xf0 && c <= 0xf4) {
        n = 4; c &= 0x07; min = 0x10000;
    } else {
        return 0;
    }
    if (len < n) {
        return 0;
    }
    for (i = 1; i < n; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            return 0;
        }
        c = (c << 6) | (s[i] & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff)) {
        return 0;
    }
    *cp = c;
    return n;
}


int
cm_utf8_valid(const char *s, size_t len, size_t *chars)
{
    const uint8_t  *p = (const uint8_t *) s;
    size_t          i = 0, n, count = 0;
    uint32_t        cp;

    while (i < len) {
        n = cm_utf8_next(p + i, len - i, &cp);
        if (n == 0) {
            return 0;
        }
        i += n;
        count++;
    }
    if (chars != NULL) {
        *chars = count;
    }
    return 1;
}


/* Controls, spaces other than U+0020, invisible formatting and bidi
 * overrides: what makes two strings look alike or text run backwards.
 * ZWNJ/ZWJ (U+200C/D) stay allowed: scripts and emoji need them. */
static int
cm_cp_invisible(uint32_t cp)
{
    return cp < 0x20 || cp == 0x7f
           || (cp >= 0x80 && cp <= 0xa0)
           || cp == 0xad || cp == 0x61c || cp == 0x1680 || cp == 0x180e
           || (cp >= 0x2000 && cp <= 0x200b)
           || (cp >= 0x200e && cp <= 0x200f)
           || (cp >= 0x2028 && cp <= 0x202f)
           || (cp >= 0x205f && cp <= 0x206f)
           || cp == 0x3000 || cp == 0xfeff
           || (cp >= 0xfff9 && cp <= 0xfffb);
}


/* dot-atom local part (RFC 5322 atext) plus UTF-8 (RFC 6531) */
static int
cm_email_local_ok(const char *s, size_t len)
{
    static const char  special[] = "!#$%&'*+-/=?^_`{|}~";
    const uint8_t     *p = (const uint8_t *) s;
    size_t             i = 0, n;
    uint32_t           cp;

    if (len == 0 || s[0] == '.' || s[len - 1] == '.') {
        return 0;
    }
    while (i < len) {
        n = cm_utf8_next(p + i, len - i, &cp);
        if (n == 0) {
            return 0;
        }
        if (cp < 0x80) {
            if (cp == '.') {
                if (s[i + 1] == '.') {
                    return 0;
                }
            } else if (!((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')
                         || (cp >= '0' && cp <= '9')
                         || (cp != 0 && strchr(special, (int) cp) != NULL)))
            {
                return 0;
            }
        } else if (cm_cp_invisible(cp)) {
            return 0;
        }
        i += n;
    }
    return 1;
}


/* >= 2 labels of 1..63 bytes: letters, digits, '-' (not at either end),
 * or UTF-8 letters for internationalised names; a top label that is all
 * digits would make it an IP address, which we do not accept. */
static int
cm_email_domain_ok(const char *s, size_t len)
{
    const uint8_t  *p = (const uint8_t *) s;
    size_t          i = 0, n, label = 0, labels = 0, start = 0;
    int             digits_only = 1;
    uint32_t        cp;

    if (len == 0 || len > 253) {
        return 0;
    }
    while (i <= len) {
        if (i == len || s[i] == '.') {
            if (label == 0 || label > 63 || s[start] == '-'
                || s[i - 1] == '-')
            {
                return 0;
            }
            labels++;
            if (i == len) {
                break;
            }
            i++;
            start = i;
            label = 0;
            digits_only = 1;
            continue;
        }
        n = cm_utf8_next(p + i, len - i, &cp);
        if (n == 0) {
            return 0;
        }
        if (cp < 0x80) {
            if (!((cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z')
                  || (cp >= '0' && cp <= '9') || cp == '-'))
            {
                return 0;
            }
            if (!(cp >= '0' && cp <= '9')) {
                digits_only = 0;
            }
        } else if (cm_cp_invisible(cp)) {
            return 0;
        } else {
            digits_only = 0;
        }
        label += n;
        i += n;
    }
    return labels >= 2 && !digits_only;
}


int
cm_validate_email(const char *s, size_t len, cm_field_error_t *e)
{
    const char  *at;

    if (s == NULL || len == 0) {
        return cm_fail(e, "required", "is required");
    }
    if (len > CM_EMAIL_MAX) {
        return cm_fail(e, "too_long", "must be at most 254 bytes");
    }
    if (memchr(s, '\0', len) != NULL) {
        return cm_fail(e, "invalid_characters", "must not contain NUL");
    }
    if (!cm_utf8_valid(s, len, NULL)) {
        return cm_fail(e, "invalid_utf8", "must be valid UTF-8");
    }
    at = memchr(s, '@', len);
    if (at == NULL || memchr(at + 1, '@', len - (size_t) (at - s) - 1) != NULL)
    {
        return cm_fail(e, "invalid_format",
                       "must be an email address (name@example.com)");
    }
    if ((size_t) (at - s) > CM_EMAIL_LOCAL_MAX) {
        return cm_fail(e, "too_long",
                       "the part before @ must be at most 64 bytes");
    }
    if (!cm_email_local_ok(s, (size_t) (at - s))
        || !cm_email_domain_ok(at + 1, len - (size_t) (at - s) - 1))
    {
        return cm_fail(e, "invalid_format",
                       "must be an email address (name@example.com)");
    }
    return CM_OK;
}


int
cm_validate_password(const char *s, size_t len, cm_field_error_t *e)
{
    size_t  chars;

    if (s == NULL || len == 0) {
        return cm_fail(e, "required", "is required");
    }
    if (len > CM_PASSWORD_MAX_BYTES) {
        return cm_fail(e, "too_long", "must be at most 1024 bytes");
    }
    if (memchr(s, '\0', len) != NULL) {
        return cm_fail(e, "invalid_characters", "must not contain NUL");
    }
    if (!cm_utf8_valid(s, len, &chars)) {
        return cm_fail(e, "invalid_utf8", "must be valid UTF-8");
    }
    if (chars < CM_PASSWORD_MIN_CHARS) {
        return cm_fail(e, "too_short", "must be at least 8 characters");
    }
    return CM_OK;
}


static int
cm_text_field(const char *s, size_t len, size_t minc, size_t maxc,
    cm_field_error_t *e, const char *too_long)
{
    const uint8_t  *p = (const uint8_t *) s;
    size_t          i = 0, n, chars = 0, visible = 0;
    uint32_t        cp;

    if (len == 0 && minc > 0) {
        return cm_fail(e, "required", "must not be empty");
    }
    /* 4 bytes per character at most: longer can only be too long */
    if (len > 4 * maxc) {
        return cm_fail(e, "too_long", too_long);
    }
    while (i < len) {
        n = cm_utf8_next(p + i, len - i, &cp);
        if (n == 0) {
            return cm_fail(e, "invalid_utf8", "must be valid UTF-8");
        }
        if (cm_cp_invisible(cp)) {
            return cm_fail(e, "invalid_characters",
                           "must not contain control or invisible characters");
        }
        if (cp != ' ') {
            visible++;
        }
        chars++;
        i += n;
    }
    if (chars > maxc) {
        return cm_fail(e, "too_long", too_long);
    }
    if (chars > 0 && visible == 0) {
        return cm_fail(e, "required", "must not be only spaces");
    }
    return CM_OK;
}


int
cm_validate_display_name(const char *s, size_t len, cm_field_error_t *e)
{
    if (s == NULL) {
        return cm_fail(e, "required", "must not be empty");
    }
    return cm_text_field(s, len, 1, CM_DISPLAY_NAME_MAX, e,
                         "must be at most 100 characters");
}


int
cm_validate_key_name(const char *s, size_t len, cm_field_error_t *e)
{
    if (s == NULL) {
        return len == 0 ? CM_OK : CM_EINVAL;
    }
    return cm_text_field(s, len, 0, CM_KEY_NAME_MAX, e,
                         "must be at most 100 characters");
}


uint32_t
cm_scope_from_name(const char *s, size_t len)
{
    size_t  i;

    for (i = 0; i < CM_ARRAY_SIZE(cm_scopes); i++) {
        if (strlen(cm_scopes[i].name) == len
            && memcmp(cm_scopes[i].name, s, len) == 0)
        {
            return cm_scopes[i].bit;
        }
    }
    return 0;
}


int
cm_scopes_to_pg_array(uint32_t mask, char *out, size_t outlen)
{
    size_t  i, n = 0, l;

    if (outlen < 3 || (mask & ~CM_SCOPE_ALL) != 0) {
        return CM_EINVAL;
    }
    out[n++] = '{';
    for (i = 0; i < CM_ARRAY_SIZE(cm_scopes); i++) {
        if (!(mask & cm_scopes[i].bit)) {
            continue;
        }
        l = strlen(cm_scopes[i].name);
        if (n + l + 3 > outlen) {
            return CM_EINVAL;
        }
        if (out[n - 1] != '{') {
            out[n++] = ',';
        }
        memcpy(out + n, cm_scopes[i].name, l);
        n += l;
    }
    out[n++] = '}';
    out[n] = '\0';
    return CM_OK;
}


int
cm_scopes_from_pg_array(const char *s, size_t len, uint32_t *mask)
{
    size_t    i, start;
    uint32_t  bit, m = 0;

    if (len < 2 || s[0] != '{' || s[len - 1] != '}') {
        return CM_EINVAL;
    }
    if (len == 2) {
        *mask = 0;
        return CM_OK;
    }
    start = 1;
    for (i = 1; i < len; i++) {
        if (s[i] == ',' || i == len - 1) {
            bit = cm_scope_from_name(s + start, i - start);
            if (bit == 0) {
                return CM_EINVAL;   /* also "" and quoted names */
            }
            m |= bit;
            start = i + 1;
        }
    }
    *mask = m;
    return CM_OK;
}


int
cm_scopes_from_json(const void *arr, uint32_t *mask, cm_field_error_t *e)
{
    const json_t  *a = arr, *v;
    size_t         i;
    uint32_t       bit, m = 0;

    if (a == NULL) {
        *mask = 0;
        return CM_OK;
    }
    if (!json_is_array(a)) {
        return cm_fail(e, "invalid_type", "must be an array of scope names");
    }
    if (json_array_size(a) > 16) {
        return cm_fail(e, "too_long", "must list at most 16 scopes");
    }
    for (i = 0; i < json_array_size(a); i++) {
        v = json_array_get(a, i);
        if (!json_is_string(v)) {
            return cm_fail(e, "invalid_type",
                           "must be an array of scope names");
        }
        bit = cm_scope_from_name(json_string_value(v), json_string_length(v));
        if (bit == 0) {
            return cm_fail(e, "unknown_scope",
                           "scopes are recommend, chat, predict, models:read,"
                           " models:write, admin");
        }
        if (m & bit) {
            return cm_fail(e, "duplicate", "must not repeat a scope");
        }
        m |= bit;
    }
    *mask = m;
    return CM_OK;
}


int
cm_scope_allows(uint32_t granted, uint32_t required)
{
    if (granted == 0) {
        granted = CM_SCOPE_ALL & ~CM_SCOPE_ADMIN;
    }
    return (granted & required) == required;
}


/*
 * Character classes of a Bearer token, one table lookup per byte (the
 * auth header is parsed on every authenticated request):
 * CM_TOK68 token68 (RFC 9110 11.2), CM_JWSCH base64url or '.' (a compact
 * JWS), CM_DOT the dot itself.  One branch-free pass ANDs the classes and
 * counts the dots (cm_auth_header_parse was ~2 % of a worker serving an
 * authenticated no-op, with two passes).
 */
#define CM_TOK68   1
#define CM_JWSCH   2
#define CM_DOT     4

static const unsigned char  cm_token_class[256] = {
    ['A' ... 'Z'] = CM_TOK68 | CM_JWSCH,
    ['a' ... 'z'] = CM_TOK68 | CM_JWSCH,
    ['0' ... '9'] = CM_TOK68 | CM_JWSCH,
    ['-'] = CM_TOK68 | CM_JWSCH,
    ['_'] = CM_TOK68 | CM_JWSCH,
    ['.'] = CM_TOK68 | CM_JWSCH | CM_DOT,
    ['~'] = CM_TOK68,
    ['+'] = CM_TOK68,
    ['/'] = CM_TOK68,
    ['='] = CM_TOK68,
};


int
cm_auth_header_parse(const char *authz, size_t authz_len,
    const char *apikey, size_t apikey_len, cm_cred_t *cred,
    cm_field_error_t *e)
{
    const char     *p, *end, *tok;
    size_t          i, tlen, dots;
    unsigned char   cls, all;

    memset(cred, 0, sizeof(*cred));

    if (authz != NULL && apikey != NULL) {
        return cm_fail(e, "ambiguous",
                       "send either Authorization or X-API-Key, not both");
    }

    if (apikey != NULL) {
        if (apikey_len > CM_AUTH_HEADER_MAX) {
            return cm_fail(e, "too_long", "X-API-Key is too long");
        }
        p = apikey;
        end = apikey + apikey_len;
        while (p < end && (*p == ' ' || *p == '\t')) {
            p++;
        }
        while (end > p && (end[-1] == ' ' || end[-1] == '\t')) {
            end--;
        }
        if (cm_apikey_parse(p, (size_t) (end - p), NULL) != CM_OK) {
            return cm_fail(e, "malformed", "X-API-Key is not an API key");
        }
        cred->kind = CM_CRED_APIKEY;
        cred->token = p;
        cred->len = (size_t) (end - p);
        return CM_OK;
    }

    if (authz == NULL) {
        return CM_OK;            /* anonymous */
    }
    if (authz_len > CM_AUTH_HEADER_MAX) {
        return cm_fail(e, "too_long", "Authorization is too long");
    }
    p = authz;
    end = authz + authz_len;
    while (p < end && (*p == ' ' || *p == '\t')) {
        p++;
    }
    while (end > p && (end[-1] == ' ' || end[-1] == '\t')) {
        end--;
    }
    if (p == end) {
        return cm_fail(e, "malformed", "Authorization is empty");
    }

    /* auth-scheme is case-insensitive (RFC 9110 11.1), then 1*SP */
    if ((size_t) (end - p) < 7 || strncasecmp(p, "Bearer", 6) != 0
        || (p[6] != ' ' && p[6] != '\t'))
    {
        if ((size_t) (end - p) == 6 && strncasecmp(p, "Bearer", 6) == 0) {
            return cm_fail(e, "malformed", "Bearer needs a token");
        }
        return cm_fail(e, "unsupported_scheme",
                       "Authorization must use the Bearer scheme");
    }
    tok = p + 7;
    while (tok < end && (*tok == ' ' || *tok == '\t')) {
        tok++;
    }
    tlen = (size_t) (end - tok);
    if (tlen == 0) {
        return cm_fail(e, "malformed", "Bearer needs a token");
    }
    all = CM_TOK68 | CM_JWSCH;
    dots = 0;
    for (i = 0; i < tlen; i++) {
        cls = cm_token_class[(unsigned char) tok[i]];
        all &= cls;
        dots += cls >> 2;
    }
    if (!(all & CM_TOK68)) {
        return cm_fail(e, "malformed",
                       "the Bearer token has invalid characters");
    }

    if (tlen >= 3 && memcmp(tok, "cm_", 3) == 0) {
        if (cm_apikey_parse(tok, tlen, NULL) != CM_OK) {
            return cm_fail(e, "malformed", "the Bearer token is not an API"
                                           " key");
        }
        cred->kind = CM_CRED_APIKEY;
    } else if ((all & CM_JWSCH) && dots == 2) {
        /* compact JWS shape only: the JWT unit checks everything else */
        cred->kind = CM_CRED_JWT;
    } else {
        return cm_fail(e, "malformed",
                       "the Bearer token is neither a JWT nor an API key");
    }
    cred->token = tok;
    cred->len = tlen;
    return CM_OK;
}

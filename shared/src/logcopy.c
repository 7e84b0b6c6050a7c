/*
 * logcopy.c: request-log rows as COPY text (see cinematch/logcopy.h).
 *
 * The members come from jansson (the module) or the daemon's own writer:
 * compact JSON.  The scanner below still takes any JSON whitespace and any
 * member order, finds each value's extent (strings with escapes, nested
 * objects and arrays), and refuses what it cannot read to the end.
 */
#include <string.h>

#include "cinematch/common.h"
#include "cinematch/logcopy.h"


static const char *cm_json_ws(const char *p, const char *end);
static const char *cm_json_string_end(const char *p, const char *end);
static const char *cm_json_value_end(const char *p, const char *end);
static int cm_json_hex4(const char *p, unsigned *out);
static size_t cm_json_unescape_copy(char *dst, const char *p,
    const char *end);
static size_t cm_utf8(char *dst, unsigned cp);


/* COPY's NULL marker, \N (two bytes, no terminator: rows are counted) */
static char *
cm_copy_null(char *d)
{
    *d++ = '\\';
    *d++ = 'N';
    return d;
}


size_t
cm_copy_escape(char *dst, const char *src, size_t len)
{
    char        *d = dst;
    const char  *end = src + len;

    for (; src < end; src++) {
        switch (*src) {
        case '\\': *d++ = '\\'; *d++ = '\\'; break;
        case '\t': *d++ = '\\'; *d++ = 't'; break;
        case '\n': *d++ = '\\'; *d++ = 'n'; break;
        case '\r': *d++ = '\\'; *d++ = 'r'; break;
        case '\0': d += cm_utf8(d, 0xFFFD); break;
        default:   *d++ = *src; break;
        }
    }

    return (size_t) (d - dst);
}


static const char *
cm_json_ws(const char *p, const char *end)
{
    while (p < end && (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')) {
        p++;
    }

    return p;
}


/* p at the opening quote; returns past the closing one, NULL if none */
static const char *
cm_json_string_end(const char *p, const char *end)
{
    for (p++; p < end; p++) {
        if (*p == '\\') {
            if (++p == end) {
                return NULL;
            }

        } else if (*p == '"') {
            return p + 1;
        }
    }

    return NULL;
}


/* past a value's last byte; NULL when the value is not complete */
static const char *
cm_json_value_end(const char *p, const char *end)
{
    int  depth = 0;

    if (p >= end) {
        return NULL;
    }

    if (*p == '"') {
        return cm_json_string_end(p, end);
    }

    if (*p != '{' && *p != '[') {
        /* a literal or a number: up to a separator */
        const char  *s = p;

        while (p < end && *p != ',' && *p != '}' && *p != ']'
               && *p != ' ' && *p != '\t' && *p != '\n' && *p != '\r')
        {
            p++;
        }

        return p > s ? p : NULL;
    }

    while (p < end) {
        if (*p == '"') {
            p = cm_json_string_end(p, end);
            if (p == NULL) {
                return NULL;
            }

            continue;
        }

        if (*p == '{' || *p == '[') {
            depth++;

        } else if (*p == '}' || *p == ']') {
            if (--depth == 0) {
                return p + 1;
            }
        }

        p++;
    }

    return NULL;
}


static int
cm_json_hex4(const char *p, unsigned *out)
{
    int       i;
    unsigned  v = 0;

    for (i = 0; i < 4; i++) {
        char  c = p[i];

        v <<= 4;

        if (c >= '0' && c <= '9') {
            v |= (unsigned) (c - '0');
        } else if (c >= 'a' && c <= 'f') {
            v |= (unsigned) (c - 'a' + 10);
        } else if (c >= 'A' && c <= 'F') {
            v |= (unsigned) (c - 'A' + 10);
        } else {
            return CM_EINVAL;
        }
    }

    *out = v;
    return 0;
}


static size_t
cm_utf8(char *dst, unsigned cp)
{
    unsigned char  *d = (unsigned char *) dst;

    if (cp < 0x80) {
        d[0] = (unsigned char) cp;
        return 1;
    }

    if (cp < 0x800) {
        d[0] = (unsigned char) (0xC0 | (cp >> 6));
        d[1] = (unsigned char) (0x80 | (cp & 0x3F));
        return 2;
    }

    if (cp < 0x10000) {
        d[0] = (unsigned char) (0xE0 | (cp >> 12));
        d[1] = (unsigned char) (0x80 | ((cp >> 6) & 0x3F));
        d[2] = (unsigned char) (0x80 | (cp & 0x3F));
        return 3;
    }

    d[0] = (unsigned char) (0xF0 | (cp >> 18));
    d[1] = (unsigned char) (0x80 | ((cp >> 12) & 0x3F));
    d[2] = (unsigned char) (0x80 | ((cp >> 6) & 0x3F));
    d[3] = (unsigned char) (0x80 | (cp & 0x3F));
    return 4;
}


/*
 * The inside of a JSON string (p past the opening quote, end at the closing
 * one) decoded and COPY-escaped into dst.  Bounds: an escape of 2 bytes
 * writes at most 2, one of 6 (\uXXXX) at most 3, a pair of 12 at most 4, a
 * plain byte at most 3 (NUL): within 3 * len.  A lone surrogate or \u0000
 * becomes U+FFFD (PostgreSQL text holds neither).
 */
static size_t
cm_json_unescape_copy(char *dst, const char *p, const char *end)
{
    char      *d = dst;
    char       c;
    unsigned   cp, lo;

    while (p < end) {
        if (*p != '\\') {
            d += cm_copy_escape(d, p, 1);
            p++;
            continue;
        }

        if (p + 1 >= end) {
            break;
        }

        c = p[1];
        p += 2;

        switch (c) {
        case 'b': *d++ = '\b'; break;
        case 'f': *d++ = '\f'; break;
        case 'n': *d++ = '\\'; *d++ = 'n'; break;
        case 'r': *d++ = '\\'; *d++ = 'r'; break;
        case 't': *d++ = '\\'; *d++ = 't'; break;
        case '\\': *d++ = '\\'; *d++ = '\\'; break;
        case 'u':
            if (end - p < 4 || cm_json_hex4(p, &cp) != 0) {
                d += cm_utf8(d, 0xFFFD);
                break;
            }

            p += 4;

            if (cp >= 0xD800 && cp <= 0xDBFF && end - p >= 6
                && p[0] == '\\' && p[1] == 'u'
                && cm_json_hex4(p + 2, &lo) == 0
                && lo >= 0xDC00 && lo <= 0xDFFF)
            {
                p += 6;
                cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);

            } else if (cp == 0 || (cp >= 0xD800 && cp <= 0xDFFF)) {
                cp = 0xFFFD;
            }

            if (cp < 0x80) {
                c = (char) cp;      /* \u0009, \u005c...: escaped too */
                d += cm_copy_escape(d, &c, 1);
            } else {
                d += cm_utf8(d, cp);
            }
            break;
        default:            /* '"', '/' and anything else: itself */
            d += cm_copy_escape(d, &c, 1);
            break;
        }
    }

    return (size_t) (d - dst);
}


long
cm_copy_log_members(char *dst, const char *members, size_t len)
{
    size_t       i;
    const char  *p, *end, *k, *kend, *v, *vend;
    const char  *val[4];
    size_t       vlen[4];
    char        *d;

    static const char  *names[4] = {
        "model_version", "is_fallback", "fallback_reason", "detail"
    };

    memset(val, 0, sizeof(val));
    memset(vlen, 0, sizeof(vlen));

    p = members;
    end = members + len;

    for (;;) {
        p = cm_json_ws(p, end);
        if (p == end) {
            if (p != cm_json_ws(members, end)) {
                return CM_EINVAL;       /* a trailing comma */
            }

            break;
        }

        if (*p != '"') {
            return CM_EINVAL;
        }

        k = p + 1;
        p = cm_json_string_end(p, end);
        if (p == NULL) {
            return CM_EINVAL;
        }

        kend = p - 1;

        p = cm_json_ws(p, end);
        if (p == end || *p != ':') {
            return CM_EINVAL;
        }

        v = cm_json_ws(p + 1, end);
        vend = cm_json_value_end(v, end);
        if (vend == NULL) {
            return CM_EINVAL;
        }

        for (i = 0; i < 4; i++) {
            if ((size_t) (kend - k) == strlen(names[i])
                && memcmp(k, names[i], (size_t) (kend - k)) == 0)
            {
                val[i] = v;
                vlen[i] = (size_t) (vend - v);
            }
        }

        p = cm_json_ws(vend, end);
        if (p == end) {
            break;
        }

        if (*p != ',') {
            return CM_EINVAL;
        }

        p++;
    }

    d = dst;

    /* model_version: "<1-9 digits>" as the integer, else NULL */
    if (val[0] != NULL && vlen[0] >= 3 && vlen[0] <= 11
        && val[0][0] == '"' && val[0][vlen[0] - 1] == '"')
    {
        for (i = 1; i < vlen[0] - 1; i++) {
            if (val[0][i] < '0' || val[0][i] > '9') {
                break;
            }
        }

        if (i == vlen[0] - 1) {
            memcpy(d, val[0] + 1, vlen[0] - 2);
            d += vlen[0] - 2;

        } else {
            d = cm_copy_null(d);
        }

    } else {
        d = cm_copy_null(d);
    }

    *d++ = '\t';

    if (val[1] != NULL && vlen[1] == 4 && memcmp(val[1], "true", 4) == 0) {
        *d++ = 't';
    } else if (val[1] != NULL && vlen[1] == 5
               && memcmp(val[1], "false", 5) == 0)
    {
        *d++ = 'f';
    } else {
        d = cm_copy_null(d);
    }

    *d++ = '\t';

    if (val[2] != NULL && vlen[2] >= 2 && val[2][0] == '"') {
        d += cm_json_unescape_copy(d, val[2] + 1, val[2] + vlen[2] - 1);
    } else {
        d = cm_copy_null(d);
    }

    *d++ = '\t';

    if (val[3] != NULL && !(vlen[3] == 4 && memcmp(val[3], "null", 4) == 0)) {
        d += cm_copy_escape(d, val[3], vlen[3]);
    } else {
        d = cm_copy_null(d);
    }

    return (long) (d - dst);
}

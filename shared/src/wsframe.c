/*
 * wsframe.c: WebSocket frame parser and writer (see cinematch/wsframe.h).
 */
#include <string.h>

#include "cinematch/common.h"
#include "cinematch/validate.h"
#include "cinematch/wsframe.h"


static long cm_ws_fail(cm_ws_parser_t *p, uint16_t code);
static int cm_ws_close_code_valid(unsigned code);
static void cm_ws_unmask(uint8_t *dst, const uint8_t *src, size_t n,
    const uint8_t mask[4]);


void
cm_ws_parser_reset(cm_ws_parser_t *p)
{
    p->msg_len = 0;
    p->msg_opcode = 0;
    p->ctl_len = 0;
    p->ctl_code = 0;
    p->close_code = 0;
}


static long
cm_ws_fail(cm_ws_parser_t *p, uint16_t code)
{
    p->close_code = code;
    return CM_EINVAL;
}


/* RFC 6455 7.4: codes a peer may send (1004-1006, 1015 are reserved for
 * reporting, never on the wire). */
static int
cm_ws_close_code_valid(unsigned code)
{
    if (code >= 1000 && code <= 1003) {
        return 1;
    }
    if (code >= 1007 && code <= 1014) {
        return 1;
    }
    return code >= 3000 && code <= 4999;
}


static void
cm_ws_unmask(uint8_t *dst, const uint8_t *src, size_t n,
    const uint8_t mask[4])
{
    size_t  i;

    for (i = 0; i < n; i++) {
        dst[i] = src[i] ^ mask[i & 3];
    }
}


long
cm_ws_parse(cm_ws_parser_t *p, uint8_t *buf, size_t len, cm_ws_event_t *ev)
{
    int        fin, opcode, masked, i;
    size_t     hlen;
    uint64_t   plen;
    uint8_t    mask[4];
    uint8_t   *payload;

    *ev = CM_WS_EV_NONE;

    if (len < 2) {
        return 0;
    }

    fin = buf[0] >> 7;
    opcode = buf[0] & 0x0f;
    masked = buf[1] >> 7;
    plen = buf[1] & 0x7f;

    /* no extension was negotiated, so the RSV bits must be clear */
    if (buf[0] & 0x70) {
        return cm_ws_fail(p, CM_WS_CLOSE_PROTOCOL);
    }

    switch (opcode) {
    case CM_WS_OP_CONT:
    case CM_WS_OP_TEXT:
    case CM_WS_OP_BINARY:
    case CM_WS_OP_CLOSE:
    case CM_WS_OP_PING:
    case CM_WS_OP_PONG:
        break;
    default:
        return cm_ws_fail(p, CM_WS_CLOSE_PROTOCOL);
    }

    if (p->require_mask && !masked) {
        return cm_ws_fail(p, CM_WS_CLOSE_PROTOCOL);
    }

    if (opcode & 0x8) {
        if (!fin || plen > CM_WS_MAX_CONTROL) {
            return cm_ws_fail(p, CM_WS_CLOSE_PROTOCOL);
        }

    } else if (opcode == CM_WS_OP_CONT) {
        if (p->msg_opcode == 0) {
            return cm_ws_fail(p, CM_WS_CLOSE_PROTOCOL);
        }

    } else if (p->msg_opcode != 0) {
        return cm_ws_fail(p, CM_WS_CLOSE_PROTOCOL);
    }

    hlen = 2;

    if (plen == 126) {
        if (len < 4) {
            return 0;
        }
        plen = ((uint64_t) buf[2] << 8) | buf[3];
        hlen = 4;

    } else if (plen == 127) {
        if (len < 10) {
            return 0;
        }
        if (buf[2] & 0x80) {
            return cm_ws_fail(p, CM_WS_CLOSE_PROTOCOL);
        }
        plen = 0;
        for (i = 2; i < 10; i++) {
            plen = (plen << 8) | buf[i];
        }
        hlen = 10;
    }

    /* too big is known from the header: refuse before buffering any of it */
    if (!(opcode & 0x8)
        && (plen > p->max || plen > p->max - p->msg_len))
    {
        return cm_ws_fail(p, CM_WS_CLOSE_TOO_BIG);
    }

    if (masked) {
        if (len < hlen + 4) {
            return 0;
        }
        memcpy(mask, buf + hlen, 4);
        hlen += 4;

    } else {
        memset(mask, 0, 4);
    }

    if (len - hlen < plen) {
        return 0;
    }

    payload = buf + hlen;

    if (opcode & 0x8) {
        cm_ws_unmask(p->ctl, payload, (size_t) plen, mask);
        p->ctl_len = (size_t) plen;

        if (opcode == CM_WS_OP_PING) {
            *ev = CM_WS_EV_PING;

        } else if (opcode == CM_WS_OP_PONG) {
            *ev = CM_WS_EV_PONG;

        } else {
            if (plen == 1) {
                return cm_ws_fail(p, CM_WS_CLOSE_PROTOCOL);
            }
            if (plen == 0) {
                p->ctl_code = CM_WS_CLOSE_NO_STATUS;

            } else {
                p->ctl_code = (uint16_t) ((p->ctl[0] << 8) | p->ctl[1]);
                if (!cm_ws_close_code_valid(p->ctl_code)) {
                    return cm_ws_fail(p, CM_WS_CLOSE_PROTOCOL);
                }
                if (!cm_utf8_valid((const char *) p->ctl + 2, p->ctl_len - 2,
                                   NULL))
                {
                    return cm_ws_fail(p, CM_WS_CLOSE_BAD_DATA);
                }
            }
            *ev = CM_WS_EV_CLOSE;
        }

        return (long) (hlen + plen);
    }

    if (opcode != CM_WS_OP_CONT) {
        p->msg_opcode = opcode;
        p->msg_len = 0;
    }

    cm_ws_unmask(p->msg + p->msg_len, payload, (size_t) plen, mask);
    p->msg_len += (size_t) plen;

    if (!fin) {
        return (long) (hlen + plen);
    }

    if (p->msg_opcode == CM_WS_OP_TEXT) {
        if (!cm_utf8_valid((const char *) p->msg, p->msg_len, NULL)) {
            return cm_ws_fail(p, CM_WS_CLOSE_BAD_DATA);
        }
        *ev = CM_WS_EV_TEXT;

    } else {
        *ev = CM_WS_EV_BINARY;
    }

    p->msg_opcode = 0;

    return (long) (hlen + plen);
}


size_t
cm_ws_header(uint8_t *out, int opcode, uint64_t len)
{
    int  i;

    out[0] = (uint8_t) (0x80 | (opcode & 0x0f));

    if (len < 126) {
        out[1] = (uint8_t) len;
        return 2;
    }

    if (len <= 0xffff) {
        out[1] = 126;
        out[2] = (uint8_t) (len >> 8);
        out[3] = (uint8_t) len;
        return 4;
    }

    out[1] = 127;
    for (i = 0; i < 8; i++) {
        out[2 + i] = (uint8_t) (len >> (56 - 8 * i));
    }
    return 10;
}


size_t
cm_ws_close_payload(uint8_t *out, uint16_t code, const char *reason)
{
    size_t  n;

    out[0] = (uint8_t) (code >> 8);
    out[1] = (uint8_t) code;

    n = reason ? strlen(reason) : 0;
    if (n > CM_WS_MAX_CONTROL - 2) {
        n = CM_WS_MAX_CONTROL - 2;
        /* back off continuation bytes so the reason stays UTF-8 */
        while (n > 0 && ((uint8_t) reason[n] & 0xc0) == 0x80) {
            n--;
        }
    }

    if (n > 0) {
        memcpy(out + 2, reason, n);
    }
    return n + 2;
}


int
cm_ws_key_valid(const char *key, size_t len)
{
    size_t  i;
    int     c;

    /* 16 bytes in base64: 22 characters and "==" */
    if (len != 24 || key[22] != '=' || key[23] != '=') {
        return 0;
    }

    for (i = 0; i < 22; i++) {
        c = (unsigned char) key[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z')
              || (c >= '0' && c <= '9') || c == '+' || c == '/'))
        {
            return 0;
        }
    }

    /* the last character carries 2 bits of data and 4 zero bits */
    return strchr("AQgw", key[21]) != NULL;
}

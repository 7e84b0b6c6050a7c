/*
 * fuzz_wsframe.c: cm_ws_parse on arbitrary bytes, as a client of
 * /api/v1/ws/chat would send them.  The parser must consume frames until
 * it needs more or fails with a close code it is allowed to send, never
 * consume more than it was given, and keep every message within max.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/common.h"
#include "cinematch/wsframe.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    cm_ws_parser_t  p;
    cm_ws_event_t   ev;
    uint8_t        *buf, *msg;
    size_t          off, max;
    long            rc;

    if (size < 1 || size > 65536) {
        return 0;
    }

    /* the first byte picks the message limit and whether masks are
     * required; exact-size copies so ASan sees any overrun */
    max = (size_t) (data[0] & 0x7f) * 8;
    buf = malloc(size - 1 ? size - 1 : 1);
    msg = malloc(max ? max : 1);
    if (buf == NULL || msg == NULL) {
        free(buf);
        free(msg);
        return 0;
    }
    memcpy(buf, data + 1, size - 1);

    memset(&p, 0, sizeof(p));
    p.msg = msg;
    p.max = max;
    p.require_mask = (data[0] & 0x80) != 0;
    cm_ws_parser_reset(&p);

    for (off = 0; off < size - 1; off += (size_t) rc) {
        rc = cm_ws_parse(&p, buf + off, size - 1 - off, &ev);
        if (rc < 0) {
            if (p.close_code != CM_WS_CLOSE_PROTOCOL
                && p.close_code != CM_WS_CLOSE_BAD_DATA
                && p.close_code != CM_WS_CLOSE_TOO_BIG)
            {
                abort();
            }
            break;
        }
        if (rc == 0) {
            break;
        }
        if ((size_t) rc > size - 1 - off || p.msg_len > max
            || p.ctl_len > CM_WS_MAX_CONTROL)
        {
            abort();
        }
    }

    free(buf);
    free(msg);
    return 0;
}

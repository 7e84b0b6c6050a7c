/*
 * cinematch/wsframe.h: WebSocket framing (RFC 6455 section 5), no I/O.
 *
 * The server side of /api/v1/ws/chat: the nginx glue reads bytes into a
 * buffer and hands them to cm_ws_parse(), which consumes one complete
 * frame at a time.  Data frames are unmasked straight into the caller's
 * message buffer and reassembled (FIN / continuation); control frames
 * (close, ping, pong) may arrive between fragments and are returned on
 * their own.  Any violation sets p->close_code to the status the server
 * must close with:
 *
 *   1002  protocol error: unmasked client frame, RSV bits, unknown opcode,
 *         fragmented or oversized (> 125) control frame, continuation
 *         without a message, a new message inside a fragmented one, a
 *         64-bit length with the top bit set, a bad close payload;
 *   1007  a text message (or a close reason) that is not UTF-8;
 *   1009  a message longer than p->max (checked from the header, before
 *         any payload is buffered).
 *
 * A frame is parsed only once it is entirely in the buffer, so the glue's
 * read buffer needs max + CM_WS_MAX_HEADER bytes at most.
 */
#ifndef CINEMATCH_WSFRAME_H
#define CINEMATCH_WSFRAME_H

#include <stddef.h>
#include <stdint.h>

#define CM_WS_OP_CONT    0x0
#define CM_WS_OP_TEXT    0x1
#define CM_WS_OP_BINARY  0x2
#define CM_WS_OP_CLOSE   0x8
#define CM_WS_OP_PING    0x9
#define CM_WS_OP_PONG    0xa

#define CM_WS_MAX_HEADER   14     /* 2 + 8 (length) + 4 (mask) */
#define CM_WS_MAX_CONTROL  125

#define CM_WS_CLOSE_NORMAL     1000
#define CM_WS_CLOSE_GOING_AWAY 1001
#define CM_WS_CLOSE_PROTOCOL   1002
#define CM_WS_CLOSE_NO_STATUS  1005   /* never sent: a close without code */
#define CM_WS_CLOSE_BAD_DATA   1007
#define CM_WS_CLOSE_TOO_BIG    1009
#define CM_WS_CLOSE_INTERNAL   1011

/* what one cm_ws_parse() call produced */
typedef enum {
    CM_WS_EV_NONE = 0,      /* a non-final fragment was consumed */
    CM_WS_EV_TEXT,          /* p->msg[0..p->msg_len): a complete message */
    CM_WS_EV_BINARY,
    CM_WS_EV_CLOSE,         /* p->ctl_code (1005 when absent), reason in
                               p->ctl + 2 .. p->ctl_len */
    CM_WS_EV_PING,          /* p->ctl[0..p->ctl_len) */
    CM_WS_EV_PONG
} cm_ws_event_t;

typedef struct {
    /* set by the caller */
    uint8_t   *msg;           /* max bytes, the message being assembled */
    size_t     max;
    int        require_mask;  /* 1 on the server side */

    /* state */
    size_t     msg_len;
    int        msg_opcode;    /* CM_WS_OP_TEXT/BINARY while fragmented, 0 */
    uint8_t    ctl[CM_WS_MAX_CONTROL];
    size_t     ctl_len;
    uint16_t   ctl_code;
    uint16_t   close_code;    /* set when cm_ws_parse() fails */
} cm_ws_parser_t;

/* Ready p for a new connection (msg, max, require_mask already set). */
void cm_ws_parser_reset(cm_ws_parser_t *p);

/*
 * Consume one frame from buf[0..len): returns the bytes consumed (> 0)
 * with *ev set, 0 when the frame is not complete yet, or CM_EINVAL with
 * p->close_code set (the connection must then be closed).  buf is
 * modified (unmasked in place).
 */
long cm_ws_parse(cm_ws_parser_t *p, uint8_t *buf, size_t len,
    cm_ws_event_t *ev);

/* A server (unmasked, FIN) frame header for a payload of len bytes into
 * out (CM_WS_MAX_HEADER bytes); returns its length. */
size_t cm_ws_header(uint8_t *out, int opcode, uint64_t len);

/* Close payload: code (big-endian) and a reason cut to fit 125 bytes
 * (on a UTF-8 boundary) into out (CM_WS_MAX_CONTROL); returns its length. */
size_t cm_ws_close_payload(uint8_t *out, uint16_t code, const char *reason);

/* 1 when a Sec-WebSocket-Key is base64 of exactly 16 bytes. */
int cm_ws_key_valid(const char *key, size_t len);

#endif /* CINEMATCH_WSFRAME_H */

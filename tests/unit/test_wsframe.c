/*
 * test_wsframe.c: RFC 6455 framing for /api/v1/ws/chat: lengths at each
 * encoding boundary, fragmentation, control frames, every close code the
 * parser can demand, and frames split at every byte.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "cinematch/common.h"
#include "cinematch/wsframe.h"


#define MAX  70000

static uint8_t  msgbuf[MAX];


static void
parser(cm_ws_parser_t *p, size_t max)
{
    memset(p, 0, sizeof(*p));
    p->msg = msgbuf;
    p->max = max;
    p->require_mask = 1;
    cm_ws_parser_reset(p);
}


/* a client frame: masked unless mask == 0, with first byte b0 */
static size_t
frame(uint8_t *out, uint8_t b0, int mask, const uint8_t *data, uint64_t len)
{
    static const uint8_t  key[4] = { 0x37, 0xfa, 0x21, 0x3d };
    size_t                h;
    uint64_t              i;

    h = cm_ws_header(out, 0, len);
    out[0] = b0;
    if (mask) {
        out[1] |= 0x80;
        memcpy(out + h, key, 4);
        h += 4;
    }
    for (i = 0; i < len; i++) {
        out[h + i] = mask ? data[i] ^ key[i & 3] : data[i];
    }
    return h + len;
}


static void
test_masked_text_frame_yields_message(void **state)
{
    cm_ws_parser_t  p;
    cm_ws_event_t   ev;
    uint8_t         buf[64];
    size_t          n;

    (void) state;
    parser(&p, 1024);
    n = frame(buf, 0x81, 1, (const uint8_t *) "Hello", 5);
    assert_int_equal(cm_ws_parse(&p, buf, n, &ev), (long) n);
    assert_int_equal(ev, CM_WS_EV_TEXT);
    assert_int_equal(p.msg_len, 5);
    assert_memory_equal(p.msg, "Hello", 5);
}


static void
test_rfc_example_masked_hello_parses(void **state)
{
    /* RFC 6455 5.7 */
    uint8_t         buf[] = { 0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                              0x7f, 0x9f, 0x4d, 0x51, 0x58 };
    cm_ws_parser_t  p;
    cm_ws_event_t   ev;

    (void) state;
    parser(&p, 16);
    assert_int_equal(cm_ws_parse(&p, buf, sizeof(buf), &ev), 11);
    assert_int_equal(ev, CM_WS_EV_TEXT);
    assert_memory_equal(p.msg, "Hello", 5);
}


static void
test_lengths_at_7_16_64_bit_boundaries_parse(void **state)
{
    static const uint64_t  lens[] = { 0, 125, 126, 127, 65535, 65536, MAX };
    static uint8_t         data[MAX], buf[MAX + 16];
    cm_ws_parser_t         p;
    cm_ws_event_t          ev;
    size_t                 i, n;

    (void) state;
    for (i = 0; i < MAX; i++) {
        data[i] = (uint8_t) i;
    }
    for (i = 0; i < CM_ARRAY_SIZE(lens); i++) {
        parser(&p, MAX);
        n = frame(buf, 0x82, 1, data, lens[i]);
        assert_int_equal(cm_ws_parse(&p, buf, n, &ev), (long) n);
        assert_int_equal(ev, CM_WS_EV_BINARY);
        assert_int_equal(p.msg_len, lens[i]);
        if (lens[i] > 0) {
            assert_memory_equal(p.msg, data, lens[i]);
        }
    }
}


static void
test_incomplete_frame_at_every_split_needs_more(void **state)
{
    static uint8_t  data[300], buf[400];
    cm_ws_parser_t  p;
    cm_ws_event_t   ev;
    size_t          n, cut;

    (void) state;
    memset(data, 'a', sizeof(data));
    parser(&p, 1024);
    n = frame(buf, 0x81, 1, data, sizeof(data));
    for (cut = 0; cut < n; cut++) {
        assert_int_equal(cm_ws_parse(&p, buf, cut, &ev), 0);
    }
    assert_int_equal(cm_ws_parse(&p, buf, n, &ev), (long) n);
    assert_int_equal(ev, CM_WS_EV_TEXT);
}


static void
test_fragments_reassemble_with_ping_between(void **state)
{
    cm_ws_parser_t  p;
    cm_ws_event_t   ev;
    uint8_t         buf[256];
    size_t          n, off;
    long            rc;

    (void) state;
    parser(&p, 1024);
    n = frame(buf, 0x01, 1, (const uint8_t *) "Hel", 3);
    n += frame(buf + n, 0x89, 1, (const uint8_t *) "hi", 2);
    n += frame(buf + n, 0x80, 1, (const uint8_t *) "lo", 2);

    off = 0;
    rc = cm_ws_parse(&p, buf + off, n - off, &ev);
    assert_true(rc > 0);
    assert_int_equal(ev, CM_WS_EV_NONE);
    off += rc;
    rc = cm_ws_parse(&p, buf + off, n - off, &ev);
    assert_true(rc > 0);
    assert_int_equal(ev, CM_WS_EV_PING);
    assert_int_equal(p.ctl_len, 2);
    assert_memory_equal(p.ctl, "hi", 2);
    off += rc;
    rc = cm_ws_parse(&p, buf + off, n - off, &ev);
    assert_int_equal(off + rc, n);
    assert_int_equal(ev, CM_WS_EV_TEXT);
    assert_int_equal(p.msg_len, 5);
    assert_memory_equal(p.msg, "Hello", 5);
}


static uint16_t
fails_with(const uint8_t *frames, size_t n, size_t max)
{
    static uint8_t  buf[MAX + 64];
    cm_ws_parser_t  p;
    cm_ws_event_t   ev;
    size_t          off;
    long            rc;

    parser(&p, max);
    memcpy(buf, frames, n);
    for (off = 0; off < n; off += (size_t) rc) {
        rc = cm_ws_parse(&p, buf + off, n - off, &ev);
        if (rc < 0) {
            assert_int_equal(rc, CM_EINVAL);
            return p.close_code;
        }
        if (rc == 0) {
            break;
        }
    }
    return 0;
}


static void
test_protocol_errors_close_with_1002(void **state)
{
    uint8_t  b[64];
    size_t   n;

    (void) state;
    /* unmasked client frame */
    n = frame(b, 0x81, 0, (const uint8_t *) "x", 1);
    assert_int_equal(fails_with(b, n, 64), 1002);
    /* RSV1 */
    n = frame(b, 0xc1, 1, (const uint8_t *) "x", 1);
    assert_int_equal(fails_with(b, n, 64), 1002);
    /* reserved opcodes */
    n = frame(b, 0x83, 1, (const uint8_t *) "x", 1);
    assert_int_equal(fails_with(b, n, 64), 1002);
    n = frame(b, 0x8b, 1, (const uint8_t *) "x", 1);
    assert_int_equal(fails_with(b, n, 64), 1002);
    /* fragmented ping */
    n = frame(b, 0x09, 1, (const uint8_t *) "x", 1);
    assert_int_equal(fails_with(b, n, 64), 1002);
    /* continuation with no message */
    n = frame(b, 0x80, 1, (const uint8_t *) "x", 1);
    assert_int_equal(fails_with(b, n, 64), 1002);
    /* a new text frame inside a fragmented message */
    n = frame(b, 0x01, 1, (const uint8_t *) "x", 1);
    n += frame(b + n, 0x81, 1, (const uint8_t *) "y", 1);
    assert_int_equal(fails_with(b, n, 64), 1002);
    /* close with a 1-byte payload, and with a reserved code */
    n = frame(b, 0x88, 1, (const uint8_t *) "\x03", 1);
    assert_int_equal(fails_with(b, n, 64), 1002);
    n = frame(b, 0x88, 1, (const uint8_t *) "\x03\xed", 2);   /* 1005 */
    assert_int_equal(fails_with(b, n, 64), 1002);
    /* 64-bit length with the top bit set */
    memcpy(b, "\x82\xff\x80\x00\x00\x00\x00\x00\x00\x01", 10);
    assert_int_equal(fails_with(b, 10, 64), 1002);
}


static void
test_control_frame_longer_than_125_is_protocol_error(void **state)
{
    uint8_t  data[126], b[200];
    size_t   n;

    (void) state;
    memset(data, 'p', sizeof(data));
    n = frame(b, 0x89, 1, data, 126);
    assert_int_equal(fails_with(b, n, 1024), 1002);
    n = frame(b, 0x89, 1, data, 125);
    assert_int_equal(fails_with(b, n, 1024), 0);
}


static void
test_oversize_message_closes_1009_from_header_alone(void **state)
{
    uint8_t  b[64];
    size_t   n;

    (void) state;
    /* only the header of a 1 MiB frame: refused without its payload */
    memcpy(b, "\x82\xff\x00\x00\x00\x00\x00\x10\x00\x00", 10);
    assert_int_equal(fails_with(b, 10, 1024), 1009);
    /* fragments that add up past max */
    n = frame(b, 0x01, 1, (const uint8_t *) "0123456789", 10);
    n += frame(b + n, 0x80, 1, (const uint8_t *) "0123456789", 10);
    assert_int_equal(fails_with(b, n, 19), 1009);
    assert_int_equal(fails_with(b, n, 20), 0);
}


static void
test_invalid_utf8_text_closes_1007(void **state)
{
    uint8_t  b[64];
    size_t   n;

    (void) state;
    n = frame(b, 0x81, 1, (const uint8_t *) "ab\xc3\x28", 4);
    assert_int_equal(fails_with(b, n, 64), 1007);
    /* a code point split across fragments is fine */
    n = frame(b, 0x01, 1, (const uint8_t *) "\xc3", 1);
    n += frame(b + n, 0x80, 1, (const uint8_t *) "\xa9", 1);
    assert_int_equal(fails_with(b, n, 64), 0);
    /* binary is not checked */
    n = frame(b, 0x82, 1, (const uint8_t *) "\xff", 1);
    assert_int_equal(fails_with(b, n, 64), 0);
    /* close reason */
    n = frame(b, 0x88, 1, (const uint8_t *) "\x03\xe8\xff", 3);
    assert_int_equal(fails_with(b, n, 64), 1007);
}


static void
test_close_frame_reports_code_or_1005(void **state)
{
    cm_ws_parser_t  p;
    cm_ws_event_t   ev;
    uint8_t         b[64];
    size_t          n;

    (void) state;
    parser(&p, 64);
    n = frame(b, 0x88, 1, (const uint8_t *) "\x03\xe9" "bye", 5);
    assert_int_equal(cm_ws_parse(&p, b, n, &ev), (long) n);
    assert_int_equal(ev, CM_WS_EV_CLOSE);
    assert_int_equal(p.ctl_code, 1001);
    assert_int_equal(p.ctl_len, 5);
    assert_memory_equal(p.ctl + 2, "bye", 3);

    n = frame(b, 0x88, 1, NULL, 0);
    assert_int_equal(cm_ws_parse(&p, b, n, &ev), (long) n);
    assert_int_equal(ev, CM_WS_EV_CLOSE);
    assert_int_equal(p.ctl_code, CM_WS_CLOSE_NO_STATUS);
}


static void
test_server_header_uses_minimal_length_encoding(void **state)
{
    uint8_t  h[CM_WS_MAX_HEADER];

    (void) state;
    assert_int_equal(cm_ws_header(h, CM_WS_OP_TEXT, 125), 2);
    assert_int_equal(h[0], 0x81);
    assert_int_equal(h[1], 125);
    assert_int_equal(cm_ws_header(h, CM_WS_OP_TEXT, 126), 4);
    assert_int_equal(h[1], 126);
    assert_int_equal(h[2], 0);
    assert_int_equal(h[3], 126);
    assert_int_equal(cm_ws_header(h, CM_WS_OP_BINARY, 65535), 4);
    assert_int_equal(cm_ws_header(h, CM_WS_OP_BINARY, 65536), 10);
    assert_int_equal(h[1], 127);
    assert_int_equal(h[7], 1);
    assert_int_equal(h[8], 0);
}


static void
test_close_payload_truncates_reason_on_utf8_boundary(void **state)
{
    uint8_t  out[CM_WS_MAX_CONTROL];
    char     reason[200];
    size_t   n, i;

    (void) state;
    n = cm_ws_close_payload(out, 1009, "too big");
    assert_int_equal(n, 9);
    assert_int_equal(out[0], 0x03);
    assert_int_equal(out[1], 0xf1);

    /* "é" is 2 bytes: 61 of them are 122 bytes, one more cannot fit */
    for (i = 0; i < 100; i++) {
        memcpy(reason + 2 * i, "\xc3\xa9", 2);
    }
    reason[200 - 1] = '\0';
    reason[198] = '\0';
    n = cm_ws_close_payload(out, 1000, reason);
    assert_true(n <= CM_WS_MAX_CONTROL);
    assert_int_equal((n - 2) % 2, 0);
    assert_int_equal(cm_ws_close_payload(out, 1000, NULL), 2);
}


static void
test_key_must_be_base64_of_16_bytes(void **state)
{
    (void) state;
    assert_true(cm_ws_key_valid("dGhlIHNhbXBsZSBub25jZQ==", 24));
    assert_false(cm_ws_key_valid("dGhlIHNhbXBsZSBub25jZQ=", 23));
    assert_false(cm_ws_key_valid("dGhlIHNhbXBsZSBub25jZR==", 24));
    assert_false(cm_ws_key_valid("dGhlIHNhbXBsZSBub25j!Q==", 24));
    assert_false(cm_ws_key_valid("", 0));
    assert_false(cm_ws_key_valid("dGhlIHNhbXBsZSBub25jZQ==AAAA", 28));
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_masked_text_frame_yields_message),
        cmocka_unit_test(test_rfc_example_masked_hello_parses),
        cmocka_unit_test(test_lengths_at_7_16_64_bit_boundaries_parse),
        cmocka_unit_test(test_incomplete_frame_at_every_split_needs_more),
        cmocka_unit_test(test_fragments_reassemble_with_ping_between),
        cmocka_unit_test(test_protocol_errors_close_with_1002),
        cmocka_unit_test(test_control_frame_longer_than_125_is_protocol_error),
        cmocka_unit_test(test_oversize_message_closes_1009_from_header_alone),
        cmocka_unit_test(test_invalid_utf8_text_closes_1007),
        cmocka_unit_test(test_close_frame_reports_code_or_1005),
        cmocka_unit_test(test_server_header_uses_minimal_length_encoding),
        cmocka_unit_test(test_close_payload_truncates_reason_on_utf8_boundary),
        cmocka_unit_test(test_key_must_be_base64_of_16_bytes),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

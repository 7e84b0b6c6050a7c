/*
 * test_digest.c: SHA-256 of a buffer and of a file read in pieces agree,
 * across the piece boundary, and an unreadable file is an error.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "cinematch/common.h"
#include "cinematch/digest.h"


static void
write_file(const char *path, const unsigned char *buf, size_t len)
{
    FILE *f = fopen(path, "wb");

    assert_non_null(f);
    assert_int_equal(fwrite(buf, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
}


static void
test_sha256_hex_matches_the_published_abc_vector(void **state)
{
    char  out[CM_SHA256_HEX_LEN + 1];

    (void) state;
    assert_int_equal(cm_sha256_hex("abc", 3, out), CM_OK);
    assert_string_equal(out, "ba7816bf8f01cfea414140de5dae2223"
                             "b00361a396177a9cb410ff61f20015ad");
    assert_int_equal(cm_sha256_hex("", 0, out), CM_OK);
    assert_string_equal(out, "e3b0c44298fc1c149afbf4c8996fb924"
                             "27ae41e4649b934ca495991b7852b855");
}


static void
test_sha256_file_equals_the_buffer_digest_across_pieces(void **state)
{
    static const size_t  sizes[] = { 0, 1, (1 << 20) - 1, 1 << 20,
                                     (1 << 20) + 1, 3 * (1 << 20) + 7 };
    char                 path[256], a[CM_SHA256_HEX_LEN + 1];
    char                 b[CM_SHA256_HEX_LEN + 1];
    unsigned char       *buf;
    uint64_t             bytes;
    size_t               i, k;
    const char          *tmp = getenv("TMPDIR");

    (void) state;
    snprintf(path, sizeof(path), "%s/cm-digest-%d.bin",
             tmp != NULL ? tmp : "/tmp", (int) getpid());
    buf = malloc(3 * (1 << 20) + 7);
    assert_non_null(buf);
    for (k = 0; k < 3 * (1 << 20) + 7; k++) {
        buf[k] = (unsigned char) (k * 2654435761u >> 13);
    }
    for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        write_file(path, buf, sizes[i]);
        bytes = 12345;
        assert_int_equal(cm_sha256_file_hex(path, a, &bytes), CM_OK);
        assert_int_equal(cm_sha256_hex(buf, sizes[i], b), CM_OK);
        assert_string_equal(a, b);
        assert_int_equal(bytes, sizes[i]);
    }
    unlink(path);
    free(buf);
}


static void
test_sha256_file_of_a_missing_file_is_eio(void **state)
{
    char  out[CM_SHA256_HEX_LEN + 1] = "x";

    (void) state;
    assert_int_equal(cm_sha256_file_hex("/nonexistent/cm-digest", out, NULL),
                     CM_EIO);
    assert_string_equal(out, "");
    /* a directory opens but does not read */
    assert_int_equal(cm_sha256_file_hex("/", out, NULL), CM_EIO);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_sha256_hex_matches_the_published_abc_vector),
        cmocka_unit_test(
            test_sha256_file_equals_the_buffer_digest_across_pieces),
        cmocka_unit_test(test_sha256_file_of_a_missing_file_is_eio),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

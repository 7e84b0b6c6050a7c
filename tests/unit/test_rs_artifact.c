/*
 * test_rs_artifact.c: the BLAS-free artifact check that nginx runs on
 * uploads (cinematch/rs_artifact.h) accepts what cm_rs_model_open accepts
 * and refuses what it refuses, mutation by mutation.
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "cinematch/common.h"
#include "cinematch/recsys.h"
#include "cinematch/rs_artifact.h"

typedef struct {
    char      path[64];
    uint8_t  *file;
    size_t    len;
} fx_t;


static int
setup(void **state)
{
    fx_t                *f = calloc(1, sizeof(*f));
    cm_rating_t          r[64];
    cm_rs_train_conf_t   c;
    cm_rs_data_t         d;
    cm_rs_model_t       *m;
    FILE                *fp;
    int                  i, fd;

    for (i = 0; i < 64; i++) {
        r[i].user = 10 + i % 7;
        r[i].item = 100 + (i * 5) % 13;
        r[i].rating = 0.5f + (float) (i % 10) * 0.5f;
        r[i].ts = i;
    }
    assert_int_equal(cm_rs_data_build(r, 64, &d, NULL, 0), CM_OK);
    cm_rs_train_conf_default(&c);
    c.factors = 3;
    c.iters = 2;
    assert_int_equal(cm_rs_train(&d, &c, &m, NULL, 0), CM_OK);
    strcpy(f->path, "/tmp/cm_test_rsa_XXXXXX");
    fd = mkstemp(f->path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(cm_rs_model_write(m, f->path, NULL, 0), CM_OK);
    cm_rs_model_free(m);
    cm_rs_data_free(&d);
    fp = fopen(f->path, "rb");
    fseek(fp, 0, SEEK_END);
    f->len = (size_t) ftell(fp);
    fseek(fp, 0, SEEK_SET);
    assert_int_equal(posix_memalign((void **) &f->file, 64, f->len), 0);
    assert_int_equal(fread(f->file, 1, f->len, fp), f->len);
    fclose(fp);
    *state = f;
    return 0;
}


static int
teardown(void **state)
{
    fx_t *f = *state;

    unlink(f->path);
    free(f->file);
    free(f);
    return 0;
}


/* both checks on buf (a copy, 64-aligned) must agree; returns the rc */
static int
both(const uint8_t *buf, size_t len, unsigned flags)
{
    uint8_t        *copy = NULL;
    cm_rs_model_t  *m = NULL;
    char            e1[256], e2[256];
    int             a, b;

    assert_int_equal(posix_memalign((void **) &copy, 64, len ? len : 1), 0);
    memcpy(copy, buf, len);
    a = cm_rs_artifact_check_mem(copy, len, flags, e1, sizeof(e1));
    b = cm_rs_model_open_mem(copy, len, flags, &m, e2, sizeof(e2));
    cm_rs_model_free(m);
    free(copy);
    assert_int_equal(a, b);
    if (a != CM_OK) {
        assert_string_equal(e1, e2);     /* the same reason, word for word */
    }
    return a;
}


static void
test_rs_artifact_accepts_a_written_model_like_open(void **state)
{
    fx_t  *f = *state;
    char   err[256];

    assert_int_equal(both(f->file, f->len, 0), CM_OK);
    assert_int_equal(cm_rs_artifact_check_file(f->path, err, sizeof(err)),
                     CM_OK);
}


static void
test_rs_artifact_refuses_truncation_magic_version_and_checksum(void **state)
{
    fx_t     *f = *state;
    uint8_t  *b = malloc(f->len + 64);
    size_t    cut;

    for (cut = 0; cut < f->len; cut += f->len / 37 + 1) {
        assert_int_equal(both(f->file, cut, 0), CM_EFORMAT);
    }
    memcpy(b, f->file, f->len);
    b[0] ^= 0x20;                                      /* magic */
    assert_int_equal(both(b, f->len, 0), CM_EFORMAT);
    memcpy(b, f->file, f->len);
    b[8] = 9;                                          /* version */
    assert_int_equal(both(b, f->len, 0), CM_EFORMAT);
    memcpy(b, f->file, f->len);
    b[f->len - 3] ^= 1;                                /* checksum */
    assert_int_equal(both(b, f->len, 0), CM_EFORMAT);
    memcpy(b, f->file, f->len);
    memset(b + f->len, 0, 64);                         /* trailing data */
    assert_int_equal(both(b, f->len + 64, 0), CM_EFORMAT);
    free(b);
}


static void
test_rs_artifact_agrees_with_open_on_every_flipped_byte(void **state)
{
    fx_t     *f = *state;
    uint8_t  *b = malloc(f->len);
    size_t    i;
    int       ok = 0;

    /* without the checksum, so the later checks (sections, floats, ids,
     * CSR) are reached and compared too */
    for (i = 0; i < f->len; i++) {
        memcpy(b, f->file, f->len);
        b[i] ^= (uint8_t) (0x81 + i);
        ok += both(b, f->len, CM_RS_OPEN_SKIP_CHECKSUM) == CM_OK;
    }
    assert_true(ok > 0 && (size_t) ok < f->len);
    free(b);
}


static void
test_rs_artifact_file_errors(void **state)
{
    char  err[256];

    (void) state;
    assert_int_equal(cm_rs_artifact_check_file("/nonexistent/x.cmrs", err,
                                               sizeof(err)), CM_EIO);
    assert_int_equal(cm_rs_artifact_check_file("/", err, sizeof(err)),
                     CM_EIO);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_rs_artifact_accepts_a_written_model_like_open, setup,
            teardown),
        cmocka_unit_test_setup_teardown(
            test_rs_artifact_refuses_truncation_magic_version_and_checksum,
            setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_rs_artifact_agrees_with_open_on_every_flipped_byte, setup,
            teardown),
        cmocka_unit_test(test_rs_artifact_file_errors),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

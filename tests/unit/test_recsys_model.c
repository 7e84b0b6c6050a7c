/*
 * test_recsys_model.c: the recsys artifact: round trip through a file
 * (mmap), and rejection of truncated, corrupt and hostile files.
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

typedef struct {
    char            path[64];
    cm_rs_model_t  *m;
    cm_rs_data_t    d;
    uint8_t        *file;
    size_t          len;
} fx_t;


static int
setup(void **state)
{
    fx_t         *f = calloc(1, sizeof(*f));
    cm_rating_t   r[64];
    cm_rs_train_conf_t c;
    FILE         *fp;
    int           i, fd;

    for (i = 0; i < 64; i++) {
        r[i].user = 10 + i % 7;
        r[i].item = 100 + (i * 5) % 13;
        r[i].rating = 0.5f + (float) (i % 10) * 0.5f;
        r[i].ts = i;
    }
    assert_int_equal(cm_rs_data_build(r, 64, &f->d, NULL, 0), CM_OK);
    cm_rs_train_conf_default(&c);
    c.factors = 3;
    c.iters = 3;
    assert_int_equal(cm_rs_train(&f->d, &c, &f->m, NULL, 0), CM_OK);
    strcpy(f->path, "/tmp/cm_test_model_XXXXXX");
    fd = mkstemp(f->path);
    assert_true(fd >= 0);
    close(fd);
    assert_int_equal(cm_rs_model_write(f->m, f->path, NULL, 0), CM_OK);
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
    cm_rs_model_free(f->m);
    cm_rs_data_free(&f->d);
    free(f->file);
    free(f);
    return 0;
}


static void
test_artifact_round_trips_every_section(void **state)
{
    fx_t           *f = *state;
    cm_rs_model_t  *m;
    char            err[256];
    float           a[13], b[13];
    uint32_t        u = 2;

    assert_int_equal(f->len % 64, 0);
    assert_int_equal(cm_rs_model_open(f->path, &m, err, sizeof(err)), CM_OK);
    assert_int_equal(m->n_users, 7);
    assert_int_equal(m->n_items, 13);
    assert_int_equal(m->factors, 3);
    assert_int_equal(m->nnz, f->m->nnz);
    assert_true(m->mean == f->m->mean);
    assert_memory_equal(m->U, f->m->U, 7 * 3 * sizeof(float));
    assert_memory_equal(m->V, f->m->V, 13 * 3 * sizeof(float));
    assert_memory_equal(m->bi, f->m->bi, 13 * sizeof(float));
    assert_memory_equal(m->item_ext, f->m->item_ext, 13 * sizeof(int32_t));
    assert_memory_equal(m->seen_ptr, f->m->seen_ptr, 8 * sizeof(uint64_t));
    assert_memory_equal(m->data_fp, f->m->data_fp, 32);
    assert_int_equal((uintptr_t) m->V % 64, 0);
    assert_int_equal(cm_rs_score_users(m, &u, 1, a), CM_OK);
    assert_int_equal(cm_rs_score_users(f->m, &u, 1, b), CM_OK);
    assert_memory_equal(a, b, sizeof(a));
    cm_rs_model_free(m);
}


static void
test_every_truncation_is_rejected(void **state)
{
    fx_t           *f = *state;
    cm_rs_model_t  *m;
    size_t          n;
    char            err[256];

    for (n = 0; n < f->len; n += (n < 600 ? 1 : 61)) {
        assert_int_not_equal(cm_rs_model_open_mem(f->file, n, 0, &m, err,
                                                  sizeof(err)), CM_OK);
        assert_null(m);
    }
    assert_int_equal(cm_rs_model_open_mem(f->file, 100, 0, &m, err,
                                          sizeof(err)), CM_EFORMAT);
    assert_non_null(strstr(err, "truncated"));
}


static void
test_any_flipped_byte_is_caught(void **state)
{
    fx_t           *f = *state;
    cm_rs_model_t  *m;
    size_t          i;
    char            err[256];

    for (i = 0; i < f->len; i += 7) {
        f->file[i] ^= 0x20;
        assert_int_not_equal(cm_rs_model_open_mem(f->file, f->len, 0, &m,
                                                  err, sizeof(err)), CM_OK);
        f->file[i] ^= 0x20;
    }
    f->file[f->len - 5] ^= 1;       /* in the body: only the checksum sees */
    assert_int_equal(cm_rs_model_open_mem(f->file, f->len, 0, &m, err,
                                          sizeof(err)), CM_EFORMAT);
    assert_non_null(strstr(err, "checksum"));
    f->file[f->len - 5] ^= 1;
    assert_int_equal(cm_rs_model_open_mem(f->file, f->len, 0, &m, err,
                                          sizeof(err)), CM_OK);
    cm_rs_model_free(m);
}


static void
test_hostile_headers_are_rejected_before_any_section_is_read(void **state)
{
    fx_t            *f = *state;
    cm_rs_model_t   *m;
    cm_rs_header_t   h, save;
    char             err[256];
    unsigned         fl = CM_RS_OPEN_SKIP_CHECKSUM;

    memcpy(&save, f->file, sizeof(h));
#define TRY(mutation, needle)                                              \
    memcpy(&h, &save, sizeof(h)); mutation;                                \
    memcpy(f->file, &h, sizeof(h));                                        \
    assert_int_equal(cm_rs_model_open_mem(f->file, f->len, fl, &m, err,    \
                                          sizeof(err)), CM_EFORMAT);       \
    assert_non_null(strstr(err, needle))

    TRY(h.magic[0] = 'X', "magic");
    TRY(h.version = 2, "version");
    TRY(h.sec[CM_RS_SEC_V].offset += 64, "overlapping");
    TRY(h.sec[CM_RS_SEC_V].offset = 1ull << 62, "section 1");
    TRY(h.sec[CM_RS_SEC_BU].offset -= 64, "section 2");     /* overlap */
    TRY(h.sec[CM_RS_SEC_U].offset += 4, "misaligned");
    TRY(h.n_items = 0xffffffffu, "section");
    TRY(h.factors = 0, "factors");
    TRY(h.nnz += 1, "section");
    TRY(h.file_size += 64, "truncated");
    TRY(h.algo = 9, "algo");
    TRY(h.pad[3] = 1, "reserved");
    memcpy(f->file, &save, sizeof(h));
}


static void
test_hostile_contents_are_rejected_even_without_checksum(void **state)
{
    fx_t            *f = *state;
    cm_rs_model_t   *m;
    cm_rs_header_t   h;
    char             err[256];
    unsigned         fl = CM_RS_OPEN_SKIP_CHECKSUM;
    uint32_t        *idx, save;
    uint64_t        *ptr, psave;
    float           *v, fsave;

    memcpy(&h, f->file, sizeof(h));
    idx = (uint32_t *) (f->file + h.sec[CM_RS_SEC_SEEN_IDX].offset);
    save = idx[0];
    idx[0] = 13;                                    /* item out of range */
    assert_int_equal(cm_rs_model_open_mem(f->file, f->len, fl, &m, err,
                                          sizeof(err)), CM_EFORMAT);
    assert_non_null(strstr(err, "CSR"));
    idx[0] = save;
    ptr = (uint64_t *) (f->file + h.sec[CM_RS_SEC_SEEN_PTR].offset);
    psave = ptr[3];
    ptr[3] = 1000;                                  /* row past nnz */
    assert_int_equal(cm_rs_model_open_mem(f->file, f->len, fl, &m, err,
                                          sizeof(err)), CM_EFORMAT);
    ptr[3] = psave;
    v = (float *) (f->file + h.sec[CM_RS_SEC_V].offset);
    fsave = v[1];
    v[1] = INFINITY;
    assert_int_equal(cm_rs_model_open_mem(f->file, f->len, fl, &m, err,
                                          sizeof(err)), CM_EFORMAT);
    assert_non_null(strstr(err, "finite"));
    v[1] = fsave;
    assert_int_equal(cm_rs_model_open_mem(f->file, f->len, fl, &m, err,
                                          sizeof(err)), CM_OK);
    cm_rs_model_free(m);
    assert_int_equal(cm_rs_model_open_mem(f->file + 4, f->len - 4, 0, &m, err,
                                          sizeof(err)), CM_EINVAL);
}


static void
test_batched_scores_equal_single_user_scores_and_the_formula(void **state)
{
    fx_t           *f = *state;
    const cm_rs_model_t *m = f->m;
    uint32_t        users[3] = { 4, 0, 6 }, a, i, c;
    float           batch[3 * 13], one[13], want;

    assert_int_equal(cm_rs_score_users(m, users, 3, batch), CM_OK);
    for (a = 0; a < 3; a++) {
        assert_int_equal(cm_rs_score_users(m, &users[a], 1, one), CM_OK);
        for (i = 0; i < 13; i++) {
            want = m->mean + m->bu[users[a]] + m->bi[i];
            for (c = 0; c < 3; c++) {
                want += m->U[users[a] * 3 + c] * m->V[i * 3 + c];
            }
            assert_true(fabsf(batch[a * 13 + i] - want) < 1e-5f);
            assert_true(fabsf(one[i] - want) < 1e-5f);
        }
    }
    users[1] = 7;                                   /* out of range */
    assert_int_equal(cm_rs_score_users(m, users, 3, batch), CM_EINVAL);
}


static void
test_open_reports_missing_and_truncated_files_with_their_path(void **state)
{
    fx_t           *f = *state;
    cm_rs_model_t  *m;
    char            err[512], path[80];
    FILE           *fp;

    assert_int_equal(cm_rs_model_open("/nonexistent/model.bin", &m, err,
                                      sizeof(err)), CM_ENOTFOUND);
    snprintf(path, sizeof(path), "%s.cut", f->path);
    fp = fopen(path, "wb");
    assert_int_equal(fwrite(f->file, 1, f->len - 64, fp), f->len - 64);
    fclose(fp);
    assert_int_equal(cm_rs_model_open(path, &m, err, sizeof(err)),
                     CM_EFORMAT);
    assert_non_null(strstr(err, path));
    assert_non_null(strstr(err, "truncated"));
    fp = fopen(path, "wb");
    assert_int_equal(fwrite(f->file, 1, 100, fp), 100);
    fclose(fp);
    assert_int_equal(cm_rs_model_open(path, &m, err, sizeof(err)),
                     CM_EFORMAT);
    unlink(path);
    assert_int_equal(cm_rs_model_open("/tmp", &m, err, sizeof(err)), CM_EIO);
}


static void
test_unsorted_id_maps_are_rejected(void **state)
{
    fx_t            *f = *state;
    cm_rs_model_t   *m;
    cm_rs_header_t   h;
    char             err[256];
    int32_t         *ids, t;

    memcpy(&h, f->file, sizeof(h));
    ids = (int32_t *) (void *) (f->file + h.sec[CM_RS_SEC_ITEM_IDS].offset);
    t = ids[0]; ids[0] = ids[1]; ids[1] = t;
    assert_int_equal(cm_rs_model_open_mem(f->file, f->len,
                     CM_RS_OPEN_SKIP_CHECKSUM, &m, err, sizeof(err)),
                     CM_EFORMAT);
    assert_non_null(strstr(err, "ascending"));
    t = ids[0]; ids[0] = ids[1]; ids[1] = t;
}


static void
test_item_knn_models_have_no_artifact(void **state)
{
    fx_t               *f = *state;
    cm_rs_train_conf_t  c;
    cm_rs_model_t      *m;
    char                err[256];

    cm_rs_train_conf_default(&c);
    c.algo = CM_RS_ITEMKNN;
    c.knn = 4;
    assert_int_equal(cm_rs_train(&f->d, &c, &m, NULL, 0), CM_OK);
    assert_int_equal(cm_rs_model_write(m, "/tmp/never.bin", err, sizeof(err)),
                     CM_EINVAL);
    cm_rs_model_free(m);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(
            test_artifact_round_trips_every_section, setup, teardown),
        cmocka_unit_test_setup_teardown(test_every_truncation_is_rejected,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_any_flipped_byte_is_caught,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_hostile_headers_are_rejected_before_any_section_is_read,
            setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_hostile_contents_are_rejected_even_without_checksum,
            setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_batched_scores_equal_single_user_scores_and_the_formula,
            setup, teardown),
        cmocka_unit_test_setup_teardown(
            test_open_reports_missing_and_truncated_files_with_their_path,
            setup, teardown),
        cmocka_unit_test_setup_teardown(test_unsorted_id_maps_are_rejected,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_item_knn_models_have_no_artifact,
                                        setup, teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}

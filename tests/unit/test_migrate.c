/*
 * test_migrate.c: migration names, ordering, checksums and the
 * applied-vs-files comparison (no database).
 */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "cinematch/common.h"
#include "cinematch/migrate.h"


/* A scratch directory per test, removed afterwards. */
typedef struct {
    char  dir[64];
} scratch_t;


static void
scratch_write(scratch_t *s, const char *name, const char *body)
{
    char   path[256];
    FILE  *f;

    snprintf(path, sizeof(path), "%s/%s", s->dir, name);
    f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(body, 1, strlen(body), f), strlen(body));
    fclose(f);
}


static int
scratch_setup(void **state)
{
    scratch_t *s = calloc(1, sizeof(*s));

    if (s == NULL) {
        return -1;
    }
    snprintf(s->dir, sizeof(s->dir), "/tmp/cm-test-migrate-XXXXXX");
    if (mkdtemp(s->dir) == NULL) {
        free(s);
        return -1;
    }
    *state = s;
    return 0;
}


static int
scratch_teardown(void **state)
{
    scratch_t  *s = *state;
    char        cmd[128];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", s->dir);
    if (system(cmd) != 0) {
        return -1;
    }
    free(s);
    return 0;
}


static cm_migration_t
mig(int version, const char *name, const char *sha_fill)
{
    cm_migration_t m;

    memset(&m, 0, sizeof(m));
    m.version = version;
    snprintf(m.name, sizeof(m.name), "%s", name);
    memset(m.sha256, sha_fill[0], CM_SHA256_HEX_LEN);
    m.sha256[CM_SHA256_HEX_LEN] = '\0';
    return m;
}


static void
test_name_parse_accepts_three_digits_underscore_lowercase(void **state)
{
    int v = -1;

    assert_int_equal(cm_migrate_name_parse("001_users.sql", &v), CM_OK);
    assert_int_equal(v, 1);
    assert_int_equal(cm_migrate_name_parse("042_a_b_9.sql", &v), CM_OK);
    assert_int_equal(v, 42);
    assert_int_equal(cm_migrate_name_parse("999_x.sql", &v), CM_OK);
    assert_int_equal(v, 999);
    /* leading zeros are decimal, not octal */
    assert_int_equal(cm_migrate_name_parse("010_x.sql", &v), CM_OK);
    assert_int_equal(v, 10);
}


static void
test_name_parse_rejects_everything_else(void **state)
{
    static const char *bad[] = {
        "000_zero.sql",         /* versions start at 001 */
        "1_short.sql", "01_short.sql", "0001_long.sql",
        "001-dash.sql", "001_.sql", "001_Upper.sql", "001_sp ace.sql",
        "001_x.SQL", "001_x.sql.bak", "001_x.sq", "001_x", "abc_x.sql",
        "001_x.y.sql", "001__ok_but_then-dash.sql", "", ".sql",
    };
    char   longname[CM_MIGRATE_NAME_MAX + 8];
    size_t i;

    for (i = 0; i < CM_ARRAY_SIZE(bad); i++) {
        if (cm_migrate_name_parse(bad[i], NULL) != CM_EINVAL) {
            fail_msg("accepted bad name '%s'", bad[i]);
        }
    }
    assert_int_equal(cm_migrate_name_parse(NULL, NULL), CM_EINVAL);

    /* exactly at the limit fails (no room for NUL), one below passes */
    memset(longname, 'a', sizeof(longname));
    memcpy(longname, "001_", 4);
    memcpy(longname + CM_MIGRATE_NAME_MAX - 4, ".sql", 5);
    assert_int_equal(strlen(longname), CM_MIGRATE_NAME_MAX);
    assert_int_equal(cm_migrate_name_parse(longname, NULL), CM_EINVAL);
    memcpy(longname + CM_MIGRATE_NAME_MAX - 5, ".sql", 5);
    assert_int_equal(cm_migrate_name_parse(longname, NULL), CM_OK);
}


static void
test_sha256_matches_known_vectors(void **state)
{
    char hex[CM_SHA256_HEX_LEN + 1];

    assert_int_equal(cm_sha256_hex("", 0, hex), CM_OK);
    assert_string_equal(hex, "e3b0c44298fc1c149afbf4c8996fb924"
                             "27ae41e4649b934ca495991b7852b855");
    assert_int_equal(cm_sha256_hex("abc", 3, hex), CM_OK);
    assert_string_equal(hex, "ba7816bf8f01cfea414140de5dae2223"
                             "b00361a396177a9cb410ff61f20015ad");
}


static void
test_sort_orders_by_version_and_rejects_duplicates(void **state)
{
    cm_migration_t  m[3];
    char            err[256];

    m[0] = mig(10, "010_c.sql", "a");
    m[1] = mig(2, "002_b.sql", "a");
    m[2] = mig(1, "001_a.sql", "a");
    assert_int_equal(cm_migrate_sort(m, 3, err, sizeof(err)), CM_OK);
    assert_int_equal(m[0].version, 1);
    assert_int_equal(m[1].version, 2);
    assert_int_equal(m[2].version, 10);

    m[1] = mig(1, "001_other.sql", "a");
    assert_int_equal(cm_migrate_sort(m, 3, err, sizeof(err)), CM_ECONFLICT);
    assert_non_null(strstr(err, "001_a.sql"));
    assert_non_null(strstr(err, "001_other.sql"));
}


static void
test_scan_lists_sql_files_in_numeric_order_with_checksums(void **state)
{
    scratch_t       *s = *state;
    cm_migration_t  *m;
    size_t           n;
    char             err[256], hex[CM_SHA256_HEX_LEN + 1];

    scratch_write(s, "010_ten.sql", "SELECT 10;\n");
    scratch_write(s, "002_two.sql", "SELECT 2;\n");
    scratch_write(s, "001_one.sql", "SELECT 1;\n");
    scratch_write(s, "README.md", "not a migration");
    scratch_write(s, "001_one.sql~", "editor backup, ignored");

    assert_int_equal(cm_migrate_scan(s->dir, &m, &n, err, sizeof(err)), CM_OK);
    assert_int_equal(n, 3);
    assert_string_equal(m[0].name, "001_one.sql");
    assert_string_equal(m[1].name, "002_two.sql");
    assert_string_equal(m[2].name, "010_ten.sql");
    assert_int_equal(m[2].version, 10);
    cm_sha256_hex("SELECT 2;\n", 10, hex);
    assert_string_equal(m[1].sha256, hex);
    assert_string_equal(m[0].applied_at, "");
    free(m);
}


static void
test_scan_rejects_misnamed_sql_file(void **state)
{
    scratch_t       *s = *state;
    cm_migration_t  *m = (cm_migration_t *) 1;
    size_t           n = 7;
    char             err[256];

    scratch_write(s, "001_ok.sql", "SELECT 1;");
    scratch_write(s, "2_typo.sql", "SELECT 2;");
    assert_int_equal(cm_migrate_scan(s->dir, &m, &n, err, sizeof(err)),
                     CM_EINVAL);
    assert_non_null(strstr(err, "2_typo.sql"));
    assert_null(m);
    assert_int_equal(n, 0);
}


static void
test_scan_rejects_duplicate_versions(void **state)
{
    scratch_t       *s = *state;
    cm_migration_t  *m;
    size_t           n;
    char             err[256];

    scratch_write(s, "003_a.sql", "SELECT 1;");
    scratch_write(s, "003_b.sql", "SELECT 2;");
    assert_int_equal(cm_migrate_scan(s->dir, &m, &n, err, sizeof(err)),
                     CM_ECONFLICT);
    assert_non_null(strstr(err, "003"));
}


static void
test_scan_of_missing_dir_is_not_found_and_empty_dir_is_ok(void **state)
{
    scratch_t       *s = *state;
    cm_migration_t  *m;
    size_t           n;
    char             err[256], path[128];

    snprintf(path, sizeof(path), "%s/nope", s->dir);
    assert_int_equal(cm_migrate_scan(path, &m, &n, err, sizeof(err)),
                     CM_ENOTFOUND);
    assert_int_equal(cm_migrate_scan(s->dir, &m, &n, err, sizeof(err)), CM_OK);
    assert_int_equal(n, 0);
    free(m);
}


static void
test_read_file_rejects_embedded_nul(void **state)
{
    scratch_t  *s = *state;
    char        path[128], *buf, err[256];
    size_t      len;
    FILE       *f;

    /* libpq would stop at the NUL while the checksum covers the rest */
    snprintf(path, sizeof(path), "%s/001_nul.sql", s->dir);
    f = fopen(path, "wb");
    assert_non_null(f);
    fwrite("SELECT 1;\0DROP TABLE x;", 1, 23, f);
    fclose(f);
    assert_int_equal(cm_migrate_read_file(s->dir, "001_nul.sql", &buf, &len,
                                          err, sizeof(err)), CM_EINVAL);
    assert_null(buf);
    assert_non_null(strstr(err, "NUL"));

    scratch_write(s, "002_ok.sql", "SELECT 1;");
    assert_int_equal(cm_migrate_read_file(s->dir, "002_ok.sql", &buf, &len,
                                          err, sizeof(err)), CM_OK);
    assert_int_equal(len, 9);
    assert_string_equal(buf, "SELECT 1;");
    free(buf);
}


static void
test_plan_with_no_history_marks_all_pending(void **state)
{
    cm_migration_t  f[2] = { mig(1, "001_a.sql", "a"), mig(2, "002_b.sql", "b") };
    cm_mig_entry_t  e[4];
    size_t          n;
    char            err[256];

    assert_int_equal(cm_migrate_plan(NULL, 0, f, 2, e, &n, err, sizeof(err)),
                     CM_OK);
    assert_int_equal(n, 2);
    assert_int_equal(e[0].state, CM_MIG_PENDING);
    assert_int_equal(e[1].state, CM_MIG_PENDING);
    assert_ptr_equal(e[1].file, &f[1]);
    assert_null(e[1].applied);
}


static void
test_plan_up_to_date_is_all_applied(void **state)
{
    cm_migration_t  a[2] = { mig(1, "001_a.sql", "a"), mig(2, "002_b.sql", "b") };
    cm_migration_t  f[2] = { mig(1, "001_a.sql", "a"), mig(2, "002_b.sql", "b") };
    cm_mig_entry_t  e[4];
    size_t          n;
    char            err[256];

    assert_int_equal(cm_migrate_plan(a, 2, f, 2, e, &n, err, sizeof(err)),
                     CM_OK);
    assert_int_equal(n, 2);
    assert_int_equal(e[0].state, CM_MIG_APPLIED);
    assert_int_equal(e[1].state, CM_MIG_APPLIED);
    assert_string_equal(err, "");
}


static void
test_plan_new_file_after_history_is_pending(void **state)
{
    cm_migration_t  a[1] = { mig(1, "001_a.sql", "a") };
    cm_migration_t  f[2] = { mig(1, "001_a.sql", "a"), mig(5, "005_e.sql", "e") };
    cm_mig_entry_t  e[3];
    size_t          n;
    char            err[256];

    assert_int_equal(cm_migrate_plan(a, 1, f, 2, e, &n, err, sizeof(err)),
                     CM_OK);
    assert_int_equal(n, 2);
    assert_int_equal(e[0].state, CM_MIG_APPLIED);
    assert_int_equal(e[1].state, CM_MIG_PENDING);
    assert_int_equal(e[1].version, 5);
}


static void
test_plan_refuses_changed_applied_file(void **state)
{
    cm_migration_t  a[2] = { mig(1, "001_a.sql", "a"), mig(2, "002_b.sql", "b") };
    cm_migration_t  f[3] = { mig(1, "001_a.sql", "a"), mig(2, "002_b.sql", "c"),
                             mig(3, "003_c.sql", "d") };
    cm_mig_entry_t  e[5];
    size_t          n;
    char            err[256];

    assert_int_equal(cm_migrate_plan(a, 2, f, 3, e, &n, err, sizeof(err)),
                     CM_ECONFLICT);
    assert_int_equal(n, 3);
    assert_int_equal(e[1].state, CM_MIG_CHANGED);
    assert_int_equal(e[2].state, CM_MIG_PENDING);   /* listed, not applied */
    assert_non_null(strstr(err, "002_b.sql changed"));
}


static void
test_plan_refuses_renamed_applied_file(void **state)
{
    cm_migration_t  a[1] = { mig(1, "001_a.sql", "a") };
    cm_migration_t  f[1] = { mig(1, "001_renamed.sql", "a") };
    cm_mig_entry_t  e[2];
    size_t          n;
    char            err[256];

    assert_int_equal(cm_migrate_plan(a, 1, f, 1, e, &n, err, sizeof(err)),
                     CM_ECONFLICT);
    assert_int_equal(e[0].state, CM_MIG_CHANGED);
    assert_non_null(strstr(err, "001_renamed.sql"));
}


static void
test_plan_refuses_missing_applied_file(void **state)
{
    cm_migration_t  a[3] = { mig(1, "001_a.sql", "a"), mig(2, "002_b.sql", "b"),
                             mig(3, "003_c.sql", "c") };
    cm_migration_t  f[2] = { mig(1, "001_a.sql", "a"), mig(3, "003_c.sql", "c") };
    cm_mig_entry_t  e[5];
    size_t          n;
    char            err[256];

    snprintf(a[1].applied_at, sizeof(a[1].applied_at), "2026-01-02T03:04:05Z");
    assert_int_equal(cm_migrate_plan(a, 3, f, 2, e, &n, err, sizeof(err)),
                     CM_ECONFLICT);
    assert_int_equal(n, 3);
    assert_int_equal(e[1].state, CM_MIG_MISSING);
    assert_null(e[1].file);
    assert_int_equal(e[2].state, CM_MIG_APPLIED);
    assert_non_null(strstr(err, "002_b.sql"));
    assert_non_null(strstr(err, "2026-01-02"));

    /* the newest applied file gone: also refused */
    assert_int_equal(cm_migrate_plan(a, 3, f, 1, e, &n, err, sizeof(err)),
                     CM_ECONFLICT);
    assert_int_equal(e[2].state, CM_MIG_MISSING);
}


static void
test_plan_refuses_file_numbered_below_newest_applied(void **state)
{
    cm_migration_t  a[2] = { mig(1, "001_a.sql", "a"), mig(3, "003_c.sql", "c") };
    cm_migration_t  f[3] = { mig(1, "001_a.sql", "a"), mig(2, "002_late.sql", "b"),
                             mig(3, "003_c.sql", "c") };
    cm_mig_entry_t  e[5];
    size_t          n;
    char            err[256];

    assert_int_equal(cm_migrate_plan(a, 2, f, 3, e, &n, err, sizeof(err)),
                     CM_ECONFLICT);
    assert_int_equal(e[1].state, CM_MIG_OUT_OF_ORDER);
    assert_non_null(strstr(err, "002_late.sql"));
}


static void
test_plan_rejects_unsorted_input(void **state)
{
    cm_migration_t  f[2] = { mig(2, "002_b.sql", "b"), mig(1, "001_a.sql", "a") };
    cm_mig_entry_t  e[4];
    size_t          n;

    assert_int_equal(cm_migrate_plan(NULL, 0, f, 2, e, &n, NULL, 0),
                     CM_EINVAL);
    assert_int_equal(cm_migrate_plan(f, 2, NULL, 0, e, &n, NULL, 0),
                     CM_EINVAL);
}


static void
test_plan_of_nothing_is_empty_and_ok(void **state)
{
    cm_mig_entry_t  e[1];
    size_t          n = 9;

    assert_int_equal(cm_migrate_plan(NULL, 0, NULL, 0, e, &n, NULL, 0), CM_OK);
    assert_int_equal(n, 0);
}


static void
test_line_of_counts_characters_not_bytes(void **state)
{
    /* "é" is two bytes; PostgreSQL positions count it once */
    const char *t = "SELECT 'é';\nSELEC 1;\n";

    assert_int_equal(cm_migrate_line_of(t, strlen(t), 1), 1);
    assert_int_equal(cm_migrate_line_of(t, strlen(t), 11), 1);
    assert_int_equal(cm_migrate_line_of(t, strlen(t), 13), 2);
    assert_int_equal(cm_migrate_line_of(t, strlen(t), 1000), 3);
}


static void
test_state_names_cover_every_state(void **state)
{
    assert_string_equal(cm_mig_state_name(CM_MIG_APPLIED), "applied");
    assert_string_equal(cm_mig_state_name(CM_MIG_OUT_OF_ORDER), "OUT-OF-ORDER");
    assert_string_equal(cm_mig_state_name((cm_mig_state_t) 99), "?");
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_name_parse_accepts_three_digits_underscore_lowercase),
        cmocka_unit_test(test_name_parse_rejects_everything_else),
        cmocka_unit_test(test_sha256_matches_known_vectors),
        cmocka_unit_test(test_sort_orders_by_version_and_rejects_duplicates),
        cmocka_unit_test_setup_teardown(
            test_scan_lists_sql_files_in_numeric_order_with_checksums,
            scratch_setup, scratch_teardown),
        cmocka_unit_test_setup_teardown(test_scan_rejects_misnamed_sql_file,
                                        scratch_setup, scratch_teardown),
        cmocka_unit_test_setup_teardown(test_scan_rejects_duplicate_versions,
                                        scratch_setup, scratch_teardown),
        cmocka_unit_test_setup_teardown(
            test_scan_of_missing_dir_is_not_found_and_empty_dir_is_ok,
            scratch_setup, scratch_teardown),
        cmocka_unit_test_setup_teardown(test_read_file_rejects_embedded_nul,
                                        scratch_setup, scratch_teardown),
        cmocka_unit_test(test_plan_with_no_history_marks_all_pending),
        cmocka_unit_test(test_plan_up_to_date_is_all_applied),
        cmocka_unit_test(test_plan_new_file_after_history_is_pending),
        cmocka_unit_test(test_plan_refuses_changed_applied_file),
        cmocka_unit_test(test_plan_refuses_renamed_applied_file),
        cmocka_unit_test(test_plan_refuses_missing_applied_file),
        cmocka_unit_test(test_plan_refuses_file_numbered_below_newest_applied),
        cmocka_unit_test(test_plan_rejects_unsorted_input),
        cmocka_unit_test(test_plan_of_nothing_is_empty_and_ok),
        cmocka_unit_test(test_line_of_counts_characters_not_bytes),
        cmocka_unit_test(test_state_names_cover_every_state),
    };

    return cmocka_run_group_tests_name("migrate", tests, NULL, NULL);
}

/*
 * cm_test_fixture.h: fixtures stored as NAME.fixture are copied into a
 * temporary directory under NAME before a test reads them.
 *
 * Why: the hand-written fixtures in the MovieLens and Cornell formats must
 * carry the datasets' file names (u.data, movie_lines.txt, ...) for the
 * readers' format detection, but a file by that name in the repository
 * looks like a committed dataset.  In git they keep a ".fixture" suffix.
 */
#ifndef CM_TEST_FIXTURE_H
#define CM_TEST_FIXTURE_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* Copies src/ *.fixture into <tmp>/<name>/ without the suffix and returns
 * that directory (static storage), or NULL. */
__attribute__((unused)) static const char *
cm_fixture_dir(const char *src, const char *name)
{
    static char  dir[8][256];
    static int   next;
    char         cmd[1024];
    char        *d = dir[next++ % 8];

    snprintf(d, 256, "/tmp/cm-fixture-%d/%s", (int) getpid(), name);
    snprintf(cmd, sizeof(cmd),
             "rm -rf '%s' && mkdir -p '%s' && for f in '%s'/*.fixture; do"
             " cp \"$f\" '%s'/\"$(basename \"$f\" .fixture)\"; done", d, d,
             src, d);
    return system(cmd) == 0 ? d : NULL;
}


__attribute__((unused)) static void
cm_fixture_cleanup(void)
{
    char cmd[128];

    snprintf(cmd, sizeof(cmd), "rm -rf /tmp/cm-fixture-%d", (int) getpid());
    if (system(cmd) != 0) {
        /* a leftover temp dir is harmless */
    }
}

#endif /* CM_TEST_FIXTURE_H */

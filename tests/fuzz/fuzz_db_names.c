/*
 * fuzz_db_names.c: the database name parsers on arbitrary bytes:
 * migration file names (cm_migrate_name_parse), request_logs partition
 * names (cm_dbmaint_partition_month) and the error-position helper
 * (cm_migrate_line_of).
 *
 * Invariants checked: an accepted migration name re-formats to itself from
 * its version ("%03d_..."), holds only [a-z0-9_] between "NNN_" and
 * ".sql"; an accepted partition name re-formats to itself from its year
 * and month; line_of never reports more lines than the text has plus one.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/dbmaint.h"
#include "cinematch/migrate.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char    name[CM_MIGRATE_NAME_MAX + 16], head[8], part[48];
    size_t  n, i, lines = 1;
    int     version = -1, line, y, m;
    long    pos;

    n = size < sizeof(name) - 1 ? size : sizeof(name) - 1;
    memcpy(name, data, n);
    name[n] = '\0';

    if (cm_migrate_name_parse(name, &version) == 0) {
        if (version < 1 || version > 999) {
            abort();
        }
        snprintf(head, sizeof(head), "%03d_", version);
        if (memcmp(name, head, 4) != 0) {
            abort();
        }
        for (i = 4; i + 4 < strlen(name); i++) {
            char c = name[i];

            if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) {
                abort();
            }
        }
    }

    if (cm_dbmaint_partition_month(name, &y, &m) == 0) {
        if (m < 1 || m > 12 || y < 1 || y > 9999) {
            abort();
        }
        snprintf(part, sizeof(part), "request_logs_y%04dm%02d", y, m);
        if (strcmp(part, name) != 0) {
            abort();
        }
    }

    for (i = 0; i < size; i++) {
        lines += data[i] == '\n';
    }
    pos = size >= 2 ? (long) ((data[0] << 8) | data[1]) - 100 : 1;
    line = cm_migrate_line_of((const char *) data, size, pos);
    if (line < 1 || (size_t) line > lines) {
        abort();
    }
    return 0;
}

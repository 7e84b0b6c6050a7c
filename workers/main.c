/*
 * main.c: the multi-call `cinematch` binary, git style:
 *     cinematch <subcommand> [args]      cinematch --help
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/common.h"
#include "cmd.h"

extern const cm_cmd_t *__start_cm_cmds[];
extern const cm_cmd_t *__stop_cm_cmds[];

/* Make sure the section exists even before any subcommand registers. */
static int cm_version_main(int argc, char **argv);
CM_COMMAND("version", "print the version", cm_version_main);


static int
cm_version_main(int argc, char **argv)
{
    printf("cinematch %s\n", CM_VERSION);
    return 0;
}


int
cm_cmd_wants_help(int argc, char **argv)
{
    int i;

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            return 1;
        }
        if (strcmp(argv[i], "--") == 0) {
            break;
        }
    }
    return 0;
}


/*
 * --log-format json|text is accepted by every command (the daemons log
 * through cm_log, whatever they are): taken out of argv here, before the
 * command's own option parser sees it.  Returns 0, or 2 for a bad value.
 */
static int
cm_take_log_format(int *argc, char **argv)
{
    int          i, j, take;
    const char  *v;

    for (i = 1; i < *argc; i++) {
        if (strcmp(argv[i], "--") == 0) {
            break;
        }
        if (strcmp(argv[i], "--log-format") == 0) {
            if (i + 1 >= *argc) {
                fprintf(stderr, "cinematch: --log-format needs json or"
                        " text\n");
                return 2;
            }
            v = argv[i + 1];
            take = 2;
        } else if (strncmp(argv[i], "--log-format=", 13) == 0) {
            v = argv[i] + 13;
            take = 1;
        } else {
            continue;
        }
        if (cm_log_format_parse(v, &cm_log_format) != CM_OK) {
            fprintf(stderr, "cinematch: --log-format must be json or text,"
                    " not '%s'\n", v);
            return 2;
        }
        for (j = i; j + take <= *argc; j++) {
            argv[j] = argv[j + take];       /* argv[argc] is NULL: kept */
        }
        *argc -= take;
        i--;
    }
    return 0;
}


static int
cm_cmd_cmp(const void *a, const void *b)
{
    const cm_cmd_t *x = *(const cm_cmd_t * const *) a;
    const cm_cmd_t *y = *(const cm_cmd_t * const *) b;

    return strcmp(x->name, y->name);
}


static void
cm_usage(FILE *out)
{
    const cm_cmd_t  **p, *sorted[256];
    size_t            n = 0, i;

    fprintf(out,
            "usage: cinematch <command> [options]\n"
            "       cinematch <command> --help\n\n"
            "cinematch %s: movie recommendations and dialogue chat served by"
            " nginx,\nwith the MLOps loop as small daemons.\n\n"
            "Every command also takes --log-format json|text (default text,"
            " or\n$CINEMATCH_LOG_FORMAT): json writes one object per log line"
            " on stderr.\n\ncommands:\n",
            CM_VERSION);
    /* the linker's section bounds: one array, whatever cppcheck thinks */
    /* cppcheck-suppress comparePointers */
    for (p = __start_cm_cmds; p < __stop_cm_cmds && n < 256; p++) {
        sorted[n++] = *p;
    }
    /* cppcheck-suppress uninitvar ; sorted[0..n) was filled above */
    qsort(sorted, n, sizeof(const cm_cmd_t *), cm_cmd_cmp);
    for (i = 0; i < n; i++) {
        fprintf(out, "  %-18s %s\n", sorted[i]->name, sorted[i]->summary);
    }
}


int
main(int argc, char **argv)
{
    const cm_cmd_t  **p, *best = NULL;
    size_t            best_words = 0;
    const char       *lvl;

    lvl = getenv("CINEMATCH_LOG");
    if (lvl != NULL) {
        (void) cm_log_level_parse(lvl, &cm_log_level);
    }
    lvl = getenv("CINEMATCH_LOG_FORMAT");
    if (lvl != NULL) {
        (void) cm_log_format_parse(lvl, &cm_log_format);
    }
    if (cm_take_log_format(&argc, argv) != 0) {
        return 2;
    }

    if (argc < 2 || strcmp(argv[1], "--help") == 0
        || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "help") == 0)
    {
        cm_usage(stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        return cm_version_main(argc - 1, argv + 1);
    }

    /* cppcheck-suppress comparePointers */
    for (p = __start_cm_cmds; p < __stop_cm_cmds; p++) {
        const char *name = (*p)->name, *sp = strchr(name, ' ');

        if (sp == NULL) {
            if (best_words < 1 && strcmp(argv[1], name) == 0) {
                best = *p;
                best_words = 1;
            }
        } else if (argc >= 3
                   && strncmp(argv[1], name, (size_t) (sp - name)) == 0
                   && argv[1][sp - name] == '\0'
                   && strcmp(argv[2], sp + 1) == 0)
        {
            best = *p;
            best_words = 2;
        }
    }

    if (best == NULL) {
        /* "cinematch train" alone: list its two-word forms. */
        int listed = 0;

        /* cppcheck-suppress comparePointers */
        for (p = __start_cm_cmds; p < __stop_cm_cmds; p++) {
            const char *name = (*p)->name, *sp = strchr(name, ' ');

            if (sp != NULL && strncmp(argv[1], name, (size_t) (sp - name)) == 0
                && argv[1][sp - name] == '\0')
            {
                if (!listed) {
                    fprintf(stderr, "usage: cinematch %s <what> [options]\n",
                            argv[1]);
                    listed = 1;
                }
                fprintf(stderr, "  %-18s %s\n", name, (*p)->summary);
            }
        }
        if (!listed) {
            fprintf(stderr, "cinematch: unknown command '%s'"
                    " (see cinematch --help)\n", argv[1]);
        }
        return 2;
    }

    cm_log_cmd = best->name;

    return best->main(argc - (int) best_words, argv + best_words);
}

/*
 * cmd.h: subcommand registration for the multi-call `cinematch` binary.
 *
 * Each workers/cmd_*.c registers its subcommands with CM_COMMAND(); the
 * linker gathers them in the "cm_cmds" section, so adding a subcommand
 * never touches a central table.  Names may be one word ("infer") or two
 * ("train recsys"); the longest match wins.
 */
#ifndef CINEMATCH_CMD_H
#define CINEMATCH_CMD_H

typedef struct {
    const char  *name;      /* "infer", "train recsys" */
    const char  *summary;   /* one line for `cinematch --help` */
    int        (*main)(int argc, char **argv);  /* argv[0] = name */
} cm_cmd_t;

#define CM_CMD_CONCAT_(a, b) a##b
#define CM_CMD_CONCAT(a, b)  CM_CMD_CONCAT_(a, b)

#define CM_COMMAND(name, summary, fn)                                        \
    static const cm_cmd_t CM_CMD_CONCAT(cm_cmd_, __LINE__) =                 \
        { name, summary, fn };                                               \
    static const cm_cmd_t *CM_CMD_CONCAT(cm_cmd_ptr_, __LINE__)              \
        __attribute__((used, section("cm_cmds"))) =                          \
        &CM_CMD_CONCAT(cm_cmd_, __LINE__)

/* Helpers for subcommands: true when argv holds -h or --help. */
int cm_cmd_wants_help(int argc, char **argv);

#endif /* CINEMATCH_CMD_H */

/*
 * cmd_model.c: the model registry for people:
 *
 *   cinematch model register --name N --artifact FILE [--metrics JSON]
 *                            [--run-id ID] [--task recsys|dialog]
 *                            [--stage none|staging] [--description TEXT]
 *   cinematch model list [--name N] [--json]
 *   cinematch model promote --name N --version V
 *   cinematch model rollback --name N
 *
 * Exit status: 0 done, 1 refused or failed, 2 bad usage.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "cinematch/common.h"
#include "cmd.h"
#include "mlops.h"


static int cm_model_register_main(int argc, char **argv);
static int cm_model_list_main(int argc, char **argv);
static int cm_model_promote_main(int argc, char **argv);
static int cm_model_rollback_main(int argc, char **argv);

CM_COMMAND("model register", "copy an artifact into the model store and"
           " register a new version", cm_model_register_main);
CM_COMMAND("model list", "list registered model versions and stages",
           cm_model_list_main);
CM_COMMAND("model promote", "make a version production (archives the old"
           " one, notifies the daemons)", cm_model_promote_main);
CM_COMMAND("model rollback", "re-promote the previous production version",
           cm_model_rollback_main);


enum {
    OPT_DSN = 256, OPT_NAME, OPT_ARTIFACT, OPT_METRICS, OPT_RUN, OPT_TASK,
    OPT_STAGE, OPT_DESC, OPT_VERSION, OPT_JSON
};

static const struct option cm_model_opts[] = {
    { "dsn", required_argument, NULL, OPT_DSN },
    { "name", required_argument, NULL, OPT_NAME },
    { "artifact", required_argument, NULL, OPT_ARTIFACT },
    { "metrics", required_argument, NULL, OPT_METRICS },
    { "run-id", required_argument, NULL, OPT_RUN },
    { "task", required_argument, NULL, OPT_TASK },
    { "stage", required_argument, NULL, OPT_STAGE },
    { "description", required_argument, NULL, OPT_DESC },
    { "version", required_argument, NULL, OPT_VERSION },
    { "json", no_argument, NULL, OPT_JSON },
    { "help", no_argument, NULL, 'h' },
    { NULL, 0, NULL, 0 }
};

typedef struct {
    const char  *dsn;
    const char  *name;
    const char  *artifact;
    const char  *metrics;
    const char  *task;
    const char  *stage;
    const char  *desc;
    long long    run_id;
    int          version;
    int          json;
} cm_model_cli_t;


/* Returns 0 to go on, 1 after --help, 2 on a usage error. */
static int
cm_model_parse(const char *cmd, int argc, char **argv, const char *allowed,
    cm_model_cli_t *c, void (*usage)(FILE *))
{
    char  *end;
    int    ch;
    long   v;

    memset(c, 0, sizeof(*c));
    c->task = "recsys";
    c->stage = "none";
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "h", cm_model_opts, NULL)) != -1) {
        if (ch != 'h' && ch != '?' && ch != ':'
            && strchr(allowed, (char) (ch - OPT_DSN + 'a')) == NULL)
        {
            fprintf(stderr, "cinematch %s: option '%s' does not apply here"
                    " (see --help)\n", cmd, argv[optind - 1]);
            return 2;
        }
        switch (ch) {
        case OPT_DSN: c->dsn = optarg; break;
        case OPT_NAME: c->name = optarg; break;
        case OPT_ARTIFACT: c->artifact = optarg; break;
        case OPT_METRICS: c->metrics = optarg; break;
        case OPT_DESC: c->desc = optarg; break;
        case OPT_JSON: c->json = 1; break;
        case OPT_TASK:
            if (strcmp(optarg, "recsys") != 0 && strcmp(optarg, "dialog") != 0)
            {
                fprintf(stderr, "cinematch %s: --task wants recsys or dialog,"
                        " got '%s'\n", cmd, optarg);
                return 2;
            }
            c->task = optarg;
            break;
        case OPT_STAGE:
            if (strcmp(optarg, "none") != 0 && strcmp(optarg, "staging") != 0)
            {
                fprintf(stderr, "cinematch %s: --stage wants none or staging"
                        " (production goes through promote), got '%s'\n",
                        cmd, optarg);
                return 2;
            }
            c->stage = optarg;
            break;
        case OPT_RUN:
        case OPT_VERSION:
            v = strtol(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0' || v <= 0 || v > 2000000000) {
                fprintf(stderr, "cinematch %s: %s wants a positive integer,"
                        " got '%s'\n", cmd, argv[optind - 1], optarg);
                return 2;
            }
            if (ch == OPT_RUN) {
                c->run_id = v;
            } else {
                c->version = (int) v;
            }
            break;
        case 'h':
            usage(stdout);
            return 1;
        default:
            fprintf(stderr, "cinematch %s: unknown or incomplete option '%s'"
                    " (see --help)\n", cmd, argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "cinematch %s: unexpected argument '%s' (see"
                " --help)\n", cmd, argv[optind]);
        return 2;
    }
    return 0;
}


/* letters for cm_model_parse's "allowed": a=dsn b=name c=artifact
 * d=metrics e=run-id f=task g=stage h=description i=version j=json */

static void
cm_model_register_usage(FILE *f)
{
    fprintf(f,
        "usage: cinematch model register --name NAME --artifact FILE"
        " [--metrics JSON]\n"
        "                      [--run-id ID] [--task recsys|dialog]"
        " [--stage none|staging]\n"
        "                      [--description TEXT] [--dsn DSN]\n\n"
        "Validates the artifact (recsys: magic, offsets, checksum), copies it"
        " into\n$CINEMATCH_MODEL_STORE (default " CM_MODEL_STORE_DEFAULT ")"
        "/NAME/VERSION/ with\nmeta.json and SHA256SUMS, and inserts the"
        " model_versions row with the next\nversion number.  Prints the"
        " version.\n");
}


static int
cm_model_register_main(int argc, char **argv)
{
    cm_model_cli_t   c;
    PGconn          *conn;
    char             err[1024];
    int              rc, version;

    rc = cm_model_parse("model register", argc, argv, "abcdefgh", &c,
                        cm_model_register_usage);
    if (rc != 0) {
        return rc == 1 ? 0 : 2;
    }
    if (c.name == NULL || c.artifact == NULL) {
        fprintf(stderr, "cinematch model register: --name and --artifact are"
                " required\n");
        return 2;
    }
    conn = cm_pg_connect(c.dsn, "cinematch-model", err, sizeof(err));
    if (conn == NULL) {
        fprintf(stderr, "cinematch model register: %s\n", err);
        return 1;
    }
    rc = cm_model_register(conn, c.name, c.task, c.artifact, c.metrics,
                           c.run_id, c.stage, c.desc, &version, err,
                           sizeof(err));
    PQfinish(conn);
    if (rc != CM_OK) {
        fprintf(stderr, "cinematch model register: %s\n", err);
        return 1;
    }
    printf("registered %s version %d (stage %s)\n", c.name, version, c.stage);
    return 0;
}


static void
cm_model_list_usage(FILE *f)
{
    fprintf(f, "usage: cinematch model list [--name NAME] [--json]"
            " [--dsn DSN]\n\nEvery registered version with its stage (a"
            " canary with its share\nof users), metrics and artifact.\n");
}


static int
cm_model_list_main(int argc, char **argv)
{
    cm_model_cli_t   c;
    PGconn          *conn;
    PGresult        *r;
    char             err[1024];
    const char      *v[1];
    int              rc, i;

    rc = cm_model_parse("model list", argc, argv, "abj", &c,
                        cm_model_list_usage);
    if (rc != 0) {
        return rc == 1 ? 0 : 2;
    }
    conn = cm_pg_connect(c.dsn, "cinematch-model", err, sizeof(err));
    if (conn == NULL) {
        fprintf(stderr, "cinematch model list: %s\n", err);
        return 1;
    }
    v[0] = c.name;
    if (c.json) {
        r = cm_pg_query(conn, "SELECT coalesce(json_agg(json_build_object("
                        "'name', model_name, 'version', version, 'task',"
                        " (SELECT task FROM models WHERE name = model_name),"
                        " 'stage', stage, 'canary_share',"
                        " canary_share::float8, 'artifact_path', artifact_path,"
                        " 'artifact_sha256', artifact_sha256, 'metrics',"
                        " metrics, 'training_run_id', training_run_id,"
                        " 'created_at', created_at, 'stage_changed_at',"
                        " stage_changed_at) ORDER BY model_name, version),"
                        " '[]') FROM model_versions WHERE $1::text IS NULL OR"
                        " model_name = $1", 1, v, err, sizeof(err));
    } else {
        r = cm_pg_query(conn, "SELECT model_name, version, CASE WHEN"
                        " stage = 'canary' THEN 'canary ' || trim_scale("
                        "canary_share * 100)::text || '%' ELSE stage END,"
                        " to_char(created_at AT TIME ZONE 'UTC',"
                        " 'YYYY-MM-DD HH24:MI'), coalesce(to_char((metrics->>"
                        "'ndcg@10')::float8, 'FM0.0000'), '-'),"
                        " coalesce(to_char((metrics->>'rmse')::float8,"
                        " 'FM0.0000'), '-'), coalesce(training_run_id::text,"
                        " '-'), left(artifact_sha256, 12) FROM model_versions"
                        " WHERE $1::text IS NULL OR model_name = $1"
                        " ORDER BY model_name, version", 1, v, err,
                        sizeof(err));
    }
    if (r == NULL) {
        fprintf(stderr, "cinematch model list: %s\n", err);
        PQfinish(conn);
        return 1;
    }
    if (c.json) {
        printf("%s\n", PQgetvalue(r, 0, 0));
    } else {
        printf("%-10s %7s  %-12s  %-16s  %8s  %8s  %5s  %s\n", "model",
               "version", "stage", "created (UTC)", "ndcg@10", "rmse", "run",
               "sha256");
        for (i = 0; i < PQntuples(r); i++) {
            printf("%-10s %7s  %-12s  %-16s  %8s  %8s  %5s  %s\n",
                   PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
                   PQgetvalue(r, i, 2), PQgetvalue(r, i, 3),
                   PQgetvalue(r, i, 4), PQgetvalue(r, i, 5),
                   PQgetvalue(r, i, 6), PQgetvalue(r, i, 7));
        }
    }
    PQclear(r);
    PQfinish(conn);
    return 0;
}


static void
cm_model_promote_usage(FILE *f)
{
    fprintf(f, "usage: cinematch model promote --name NAME --version V"
            " [--dsn DSN]\n\n"
            "In one transaction: checks the artifact's sha256 against the"
            " registry,\narchives the current production version, makes V"
            " production and sends\nNOTIFY " CM_MODELS_CHANNEL
            " 'NAME:V' (cinematch infer reloads on it).\n");
}


static int
cm_model_promote_main(int argc, char **argv)
{
    cm_model_cli_t   c;
    PGconn          *conn;
    char             err[1024];
    int              rc;

    rc = cm_model_parse("model promote", argc, argv, "abi", &c,
                        cm_model_promote_usage);
    if (rc != 0) {
        return rc == 1 ? 0 : 2;
    }
    if (c.name == NULL || c.version == 0) {
        fprintf(stderr, "cinematch model promote: --name and --version are"
                " required\n");
        return 2;
    }
    conn = cm_pg_connect(c.dsn, "cinematch-model", err, sizeof(err));
    if (conn == NULL) {
        fprintf(stderr, "cinematch model promote: %s\n", err);
        return 1;
    }
    rc = cm_model_promote(conn, c.name, c.version, err, sizeof(err));
    PQfinish(conn);
    if (rc != CM_OK) {
        fprintf(stderr, "cinematch model promote: %s\n", err);
        return 1;
    }
    printf("%s version %d is production\n", c.name, c.version);
    return 0;
}


static void
cm_model_rollback_usage(FILE *f)
{
    fprintf(f, "usage: cinematch model rollback --name NAME [--dsn DSN]\n\n"
            "Promotes again the version that was production before the"
            " current one\n(from model_stage_events); a second rollback flips"
            " back.\n");
}


static int
cm_model_rollback_main(int argc, char **argv)
{
    cm_model_cli_t   c;
    PGconn          *conn;
    char             err[1024];
    int              rc, version = 0;

    rc = cm_model_parse("model rollback", argc, argv, "ab", &c,
                        cm_model_rollback_usage);
    if (rc != 0) {
        return rc == 1 ? 0 : 2;
    }
    if (c.name == NULL) {
        fprintf(stderr, "cinematch model rollback: --name is required\n");
        return 2;
    }
    conn = cm_pg_connect(c.dsn, "cinematch-model", err, sizeof(err));
    if (conn == NULL) {
        fprintf(stderr, "cinematch model rollback: %s\n", err);
        return 1;
    }
    rc = cm_model_rollback(conn, c.name, &version, err, sizeof(err));
    PQfinish(conn);
    if (rc != CM_OK) {
        fprintf(stderr, "cinematch model rollback: %s\n", err);
        return 1;
    }
    printf("rolled back: %s version %d is production\n", c.name, version);
    return 0;
}

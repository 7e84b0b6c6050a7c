/*
 * cmd_model_canary.c: a canary version beside production (sql/015):
 *
 *   cinematch model canary --name N --version V --share S
 *   cinematch model canary N V --share S
 *   cinematch model canary --name N --stop
 *
 * Setting one re-hashes the artifact first, as `model promote` does: the
 * registry never names a canary the daemons would refuse to load.  The
 * stage change, the replaced canary and the NOTIFY are sql/015's
 * cm_model_set_canary() / cm_model_stop_canary(), which the API calls too.
 * Promoting the canary is `cinematch model promote` (100% on it); stopping
 * it gives every user back to production.
 *
 * Exit status: 0 done, 1 refused or failed, 2 bad usage.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "cinematch/canary.h"
#include "cinematch/common.h"
#include "cmd.h"
#include "mlops.h"


static int cm_model_canary_main(int argc, char **argv);

CM_COMMAND("model canary", "serve a staging version to a share of users"
           " beside production, or stop that", cm_model_canary_main);


static void
cm_model_canary_usage(FILE *f)
{
    fprintf(f,
        "usage: cinematch model canary --name NAME --version V --share S"
        " [--dsn DSN]\n"
        "       cinematch model canary NAME V --share S [--dsn DSN]\n"
        "       cinematch model canary --name NAME --stop [--dsn DSN]\n\n"
        "Makes staging version V the canary of NAME: `cinematch infer`"
        " loads it\nbeside production and answers with it the users whose"
        " bucket (a hash of\nthe user id and NAME, stable per user) is below"
        " S; every other user and\nanonymous requests keep production."
        "  S is a share from 0 to 1 (\"0.1\":\n10%%; at most 4 decimals)."
        "  Setting the same version again changes the\nshare; another"
        " version replaces the canary (the old one goes back to\nstaging)."
        "  The artifact's sha256 is checked against the registry first.\n\n"
        "  --stop   the canary goes back to staging; production serves"
        " everyone\n\n"
        "`cinematch model promote --name NAME --version V` promotes the"
        " canary.\n");
}


static int
cm_model_canary_set(PGconn *c, const char *name, const char *ver,
    const char *share, char *out, size_t outlen, char *err, size_t errlen)
{
    const char  *v[3];
    char         sha[65];
    PGresult    *r;
    int          rc;

    v[0] = name;
    v[1] = ver;
    v[2] = share;
    rc = cm_pg_exec(c, "BEGIN", err, errlen);
    if (rc != CM_OK) {
        return rc;
    }
    r = cm_pg_query(c, "SELECT pg_advisory_xact_lock(hashtext('cinematch"
                    ".registry.' || $1))", 1, v, err, errlen);
    if (r == NULL) {
        goto failed;
    }
    PQclear(r);
    r = cm_pg_query(c, "SELECT artifact_path, artifact_sha256 FROM"
                    " model_versions WHERE model_name = $1 AND version = $2"
                    " FOR UPDATE", 2, v, err, errlen);
    if (r == NULL) {
        goto failed;
    }
    if (PQntuples(r) == 0) {
        PQclear(r);
        PQclear(PQexec(c, "ROLLBACK"));
        return cm_seterr(err, errlen, CM_ENOTFOUND, "%s version %s is not in"
                         " the registry", name, ver);
    }
    /* a canary the daemons would refuse must not be named */
    rc = cm_sha256_file(PQgetvalue(r, 0, 0), sha, NULL, err, errlen);
    if (rc == CM_OK && strcmp(sha, PQgetvalue(r, 0, 1)) != 0) {
        rc = cm_seterr(err, errlen, CM_EFORMAT, "%s: sha256 differs from the"
                       " registry's; refusing the canary",
                       PQgetvalue(r, 0, 0));
    }
    PQclear(r);
    if (rc != CM_OK) {
        PQclear(PQexec(c, "ROLLBACK"));
        return rc;
    }
    r = cm_pg_query(c, "SELECT previous_stage, coalesce(replaced_version::text,"
                    " ''), changed FROM cm_model_set_canary($1, $2::int,"
                    " $3::numeric)", 3, v, err, errlen);
    if (r == NULL) {
        goto failed;
    }
    snprintf(out, outlen, "%s version %s is the canary for %s of users"
             " (was %s%s%s%s)", name, ver, share, PQgetvalue(r, 0, 0),
             PQgetvalue(r, 0, 1)[0] != '\0' ? "; version " : "",
             PQgetvalue(r, 0, 1),
             PQgetvalue(r, 0, 1)[0] != '\0' ? " back to staging" : "");
    PQclear(r);
    return cm_pg_exec(c, "COMMIT", err, errlen);

failed:
    PQclear(PQexec(c, "ROLLBACK"));
    return CM_EIO;
}


static int
cm_model_canary_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "name", required_argument, NULL, 'n' },
        { "version", required_argument, NULL, 'v' },
        { "share", required_argument, NULL, 's' },
        { "stop", no_argument, NULL, 'x' },
        { "dsn", required_argument, NULL, 'd' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    const char  *name = NULL, *ver = NULL, *share = NULL, *dsn = NULL, *v[1];
    char         err[1024], out[256], *end, vbuf[16];
    int          ch, stop = 0, rc;
    long         n;
    uint32_t     bp;
    PGconn      *c;
    PGresult    *r;

    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'n': name = optarg; break;
        case 'v': ver = optarg; break;
        case 's': share = optarg; break;
        case 'x': stop = 1; break;
        case 'd': dsn = optarg; break;
        case 'h':
            cm_model_canary_usage(stdout);
            return 0;
        default:
            fprintf(stderr, "cinematch model canary: unknown or incomplete"
                    " option '%s' (see --help)\n", argv[optind - 1]);
            return 2;
        }
    }
    /* NAME VERSION may come as words, as in `model canary recsys 7` */
    if (optind < argc && name == NULL) {
        name = argv[optind++];
    }
    if (optind < argc && ver == NULL && !stop) {
        ver = argv[optind++];
    }
    if (optind < argc) {
        fprintf(stderr, "cinematch model canary: unexpected argument '%s'"
                " (see --help)\n", argv[optind]);
        return 2;
    }
    if (name == NULL) {
        fprintf(stderr, "cinematch model canary: --name is required (see"
                " --help)\n");
        return 2;
    }
    if (stop && (ver != NULL || share != NULL)) {
        fprintf(stderr, "cinematch model canary: --stop takes no version or"
                " share\n");
        return 2;
    }
    if (!stop) {
        if (ver == NULL || share == NULL) {
            fprintf(stderr, "cinematch model canary: --version and --share"
                    " are required (or --stop)\n");
            return 2;
        }
        n = strtol(ver, &end, 10);
        if (*ver == '\0' || *end != '\0' || n <= 0 || n > 2000000000) {
            fprintf(stderr, "cinematch model canary: the version must be a"
                    " positive integer, got '%s'\n", ver);
            return 2;
        }
        snprintf(vbuf, sizeof(vbuf), "%ld", n);
        ver = vbuf;
        /* the registry keeps basis points: no fifth decimal */
        if (cm_canary_share_parse(share, strlen(share), &bp) != CM_OK
            || (strchr(share, '.') != NULL
                && strlen(strchr(share, '.') + 1) > 4))
        {
            fprintf(stderr, "cinematch model canary: --share wants a number"
                    " from 0 to 1 with at most 4 decimals, got '%s'\n",
                    share);
            return 2;
        }
    }

    c = cm_pg_connect(dsn, "cinematch-model", err, sizeof(err));
    if (c == NULL) {
        fprintf(stderr, "cinematch model canary: %s\n", err);
        return 1;
    }
    if (stop) {
        v[0] = name;
        r = cm_pg_query(c, "SELECT coalesce(version::text, '') FROM"
                        " cm_model_stop_canary($1)", 1, v, err, sizeof(err));
        rc = r != NULL ? CM_OK : CM_EIO;
        if (r != NULL) {
            if (PQgetvalue(r, 0, 0)[0] != '\0') {
                snprintf(out, sizeof(out), "%s: canary version %s stopped;"
                         " production serves every user", name,
                         PQgetvalue(r, 0, 0));
            } else {
                snprintf(out, sizeof(out), "%s has no canary", name);
            }
            PQclear(r);
        }
    } else {
        rc = cm_model_canary_set(c, name, ver, share, out, sizeof(out), err,
                                 sizeof(err));
    }
    PQfinish(c);
    if (rc != CM_OK) {
        err[strcspn(err, "\n")] = '\0';
        fprintf(stderr, "cinematch model canary: %s\n", err);
        return 1;
    }
    printf("%s\n", out);
    return 0;
}

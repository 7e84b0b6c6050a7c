/*
 * cmd_eval_replay.c: `cinematch eval replay`, logged recommendations
 * scored against the ratings that arrived after them.
 *
 *   cinematch eval replay --since T [--until T] [--dsn DSN] [--json]
 *
 * The request log (request_logs, written by the serving module) keeps
 * each answered POST /api/v1/recommend with its model version and, in
 * `detail`, the rating-space user and the recommended movie ids.  A
 * logged answer is a hit when its user later rated (ratings or
 * ratings_buffer, rating time after the answer) at least one of the
 * movies it recommended.  Answers whose user rated nothing afterwards
 * say nothing about the model, so the hit rate is over "returning"
 * answers; precision is the share of recommended movies of those answers
 * that were rated later.  One set-wise query: every log entry's items are
 * joined once with the later ratings (no per-user lookups).
 *
 * Exit status: 0 printed (also with no logged answers), 1 failure,
 * 2 bad usage.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "cinematch/common.h"
#include "cmd.h"
#include "mlops.h"


static int cm_eval_replay_main(int argc, char **argv);

CM_COMMAND("eval replay", "hit rate of logged recommendations against later"
           " ratings, by model version", cm_eval_replay_main);


static int
cm_buf_cat(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(dst), m = strlen(src);

    if (n + m + 1 > cap) {
        return -1;
    }
    memcpy(dst + n, src, m + 1);
    return 0;
}


static void
cm_eval_replay_usage(FILE *f)
{
    fprintf(f,
        "usage: cinematch eval replay --since T [--until T] [--dsn DSN]"
        " [--json]\n\n"
        "Scores the recommendations the API answered (request_logs, POST\n"
        "/api/v1/recommend with status 200) since T against the ratings"
        " their\nusers made afterwards: a hit when the user later rated one"
        " of the\nrecommended movies.  One line per model version: answers,"
        " users,\nreturning answers (the user rated anything later), hits,"
        " hit rate\n(hits / returning) and precision (recommended movies"
        " rated later /\nrecommended movies, returning answers only).\n\n"
        "  --since T   an interval back from now (30m, 12h, 7d) or a"
        " timestamp\n"
        "              PostgreSQL reads ('2026-11-01', '2026-11-01"
        " 12:00+00')\n"
        "  --until T   the same; default now\n"
        "  --dsn DSN   PostgreSQL (default $CINEMATCH_PG_DSN)\n"
        "  --json      one JSON object {since, until, versions: [...]}\n");
}


/* "7d" -> "7 days ago" as a timestamptz literal PostgreSQL computes; a
 * timestamp is passed through.  out gets the SQL value text. */
static void
cm_eval_replay_time(const char *arg, char *out, size_t len, int *relative)
{
    long secs = cm_interval_parse(arg);

    *relative = secs >= 0;
    if (secs >= 0) {
        snprintf(out, len, "%ld", secs);
    } else {
        snprintf(out, len, "%s", arg);
    }
}


static int
cm_eval_replay_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "since", required_argument, NULL, 's' },
        { "until", required_argument, NULL, 'u' },
        { "dsn", required_argument, NULL, 'd' },
        { "json", no_argument, NULL, 'j' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    const char  *since = NULL, *until = NULL, *dsn = NULL, *v[2];
    char         s_val[128], u_val[128], s_rel[2], u_rel[2], err[512];
    char         sql[4096];
    int          ch, json = 0, rel, i, rc = 0;
    PGconn      *c;
    PGresult    *r;

    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 's': since = optarg; break;
        case 'u': until = optarg; break;
        case 'd': dsn = optarg; break;
        case 'j': json = 1; break;
        case 'h':
            cm_eval_replay_usage(stdout);
            return 0;
        default:
            fprintf(stderr, "cinematch eval replay: unknown or incomplete"
                    " option '%s' (see --help)\n", argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "cinematch eval replay: unexpected argument '%s'"
                " (see --help)\n", argv[optind]);
        return 2;
    }
    if (since == NULL || since[0] == '\0') {
        fprintf(stderr, "cinematch eval replay: --since is required (see"
                " --help)\n");
        return 2;
    }
    cm_eval_replay_time(since, s_val, sizeof(s_val), &rel);
    snprintf(s_rel, sizeof(s_rel), "%d", rel);
    if (until != NULL) {
        cm_eval_replay_time(until, u_val, sizeof(u_val), &rel);
    } else {
        snprintf(u_val, sizeof(u_val), "0");    /* now */
        rel = 1;
    }
    snprintf(u_rel, sizeof(u_rel), "%d", rel);

    c = cm_pg_connect(dsn, "cinematch-eval-replay", err, sizeof(err));
    if (c == NULL) {
        fprintf(stderr, "cinematch eval replay: %s\n", err);
        return 1;
    }
    v[0] = s_val;
    v[1] = u_val;
    /* the window's ends: seconds back from now, or a timestamp */
    snprintf(sql, sizeof(sql), "WITH win AS (SELECT %s AS lo, %s AS hi),",
             s_rel[0] == '1'
             ? "now() - make_interval(secs => $1::text::float8)"
             : "$1::text::timestamptz",
             u_rel[0] == '1'
             ? "now() - make_interval(secs => $2::text::float8)"
             : "$2::text::timestamptz");
    if (cm_buf_cat(sql, sizeof(sql),
        " recs AS ("
        "  SELECT row_number() OVER () AS rid, l.ts,"
        "         coalesce(l.model_version::text, '-') AS version,"
        "         (l.detail->>'rating_user_id')::bigint AS uid,"
        "         l.detail->'ids' AS ids"
        "    FROM request_logs l, win"
        "   WHERE l.ts >= win.lo AND l.ts < win.hi AND l.status = 200"
        "     AND l.detail->>'endpoint' = 'recommend'"
        "     AND jsonb_typeof(l.detail->'rating_user_id') = 'number'"
        "     AND jsonb_typeof(l.detail->'ids') = 'array'),"
        " items AS ("
        "  SELECT r.rid, r.uid, r.ts, e.v::bigint AS movie_id"
        "    FROM recs r, jsonb_array_elements_text(r.ids) AS e(v)"
        "   WHERE e.v ~ '^[0-9]{1,9}$'),"
        " later AS ("
        "  SELECT user_id, movie_id, ts FROM ratings"
        "   WHERE user_id IN (SELECT uid FROM recs)"
        "  UNION ALL"
        "  SELECT user_id, movie_id, ts FROM ratings_buffer"
        "   WHERE user_id IN (SELECT uid FROM recs)),"
        " last AS (SELECT user_id, max(ts) AS ts FROM later GROUP BY 1),"
        " rated AS ("
        "  SELECT i.rid, count(DISTINCT i.movie_id) AS n FROM items i"
        "    JOIN later x ON x.user_id = i.uid AND x.movie_id = i.movie_id"
        "     AND x.ts > i.ts GROUP BY 1),"
        " per AS ("
        "  SELECT r.version, r.uid,"
        "         coalesce(l.ts > r.ts, false) AS back,"
        "         coalesce(x.n, 0) AS n_rated,"
        "         jsonb_array_length(r.ids) AS n_recs"
        "    FROM recs r LEFT JOIN last l ON l.user_id = r.uid"
        "    LEFT JOIN rated x ON x.rid = r.rid)"
        " SELECT version, count(*), count(DISTINCT uid),"
        "        count(*) FILTER (WHERE back),"
        "        count(*) FILTER (WHERE n_rated > 0),"
        "        round(count(*) FILTER (WHERE n_rated > 0)::numeric"
        "              / nullif(count(*) FILTER (WHERE back), 0), 4),"
        "        round(sum(n_rated) FILTER (WHERE back)::numeric"
        "              / nullif(sum(n_recs) FILTER (WHERE back), 0), 4),"
        "        (SELECT lo FROM win)::text, (SELECT hi FROM win)::text"
        "   FROM per GROUP BY version ORDER BY version") != 0)
    {
        fprintf(stderr, "cinematch eval replay: query too long\n");
        PQfinish(c);
        return 1;
    }
    r = cm_pg_query(c, sql, 2, v, err, sizeof(err));
    if (r == NULL) {
        fprintf(stderr, "cinematch eval replay: %s\n", err);
        PQfinish(c);
        return 1;
    }

    if (json) {
        printf("{\"since\": \"%s\", \"versions\": [",
               PQntuples(r) > 0 ? PQgetvalue(r, 0, 7) : since);
        for (i = 0; i < PQntuples(r); i++) {
            printf("%s{\"model_version\": \"%s\", \"answers\": %s,"
                   " \"users\": %s, \"returning\": %s, \"hits\": %s,"
                   " \"hit_rate\": %s, \"precision\": %s}", i ? ", " : "",
                   PQgetvalue(r, i, 0), PQgetvalue(r, i, 1),
                   PQgetvalue(r, i, 2), PQgetvalue(r, i, 3),
                   PQgetvalue(r, i, 4),
                   PQgetisnull(r, i, 5) ? "null" : PQgetvalue(r, i, 5),
                   PQgetisnull(r, i, 6) ? "null" : PQgetvalue(r, i, 6));
        }
        printf("]}\n");
    } else {
        printf("%-8s %9s %7s %9s %7s %8s %9s\n", "version", "answers",
               "users", "returning", "hits", "hit_rate", "precision");
        for (i = 0; i < PQntuples(r); i++) {
            printf("%-8s %9s %7s %9s %7s %8s %9s\n", PQgetvalue(r, i, 0),
                   PQgetvalue(r, i, 1), PQgetvalue(r, i, 2),
                   PQgetvalue(r, i, 3), PQgetvalue(r, i, 4),
                   PQgetisnull(r, i, 5) ? "-" : PQgetvalue(r, i, 5),
                   PQgetisnull(r, i, 6) ? "-" : PQgetvalue(r, i, 6));
        }
        if (PQntuples(r) == 0) {
            printf("no logged recommendations in the window\n");
        }
    }
    PQclear(r);
    PQfinish(c);
    return rc;
}

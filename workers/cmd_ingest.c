/*
 * cmd_ingest.c: `cinematch ingest`, MovieLens files into PostgreSQL.
 *
 *   cinematch ingest --data DIR|FILE [--format F] [--movies FILE]
 *                    [--target ratings|buffer] [--split temporal-user:F]
 *                    [--dsn DSN] [--loop INTERVAL]
 *
 * One transaction per ratings file: the ingestion_batches row, the rows
 * (COPY), the rejects (COPY) and the final counts commit together or not at
 * all; a failure is then recorded as a 'failed' batch row in a transaction
 * of its own (which does not block a retry of the same file).  The file's
 * sha256 makes a second ingest of the same bytes a no-op.
 *
 * Exit status: 0 ingested or nothing to do, 1 failed, 2 bad usage.
 */
#include <dirent.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "cinematch/common.h"
#include "cinematch/digest.h"
#include "cinematch/ingest.h"
#include "cinematch/movielens.h"
#include "cmd.h"
#include "mlops.h"


#define CM_COPY_CHUNK  (1u << 20)

typedef struct {
    char    *p;
    size_t   n;
    size_t   cap;
} cm_cbuf_t;

typedef struct {
    const char      *dsn;
    const char      *data;
    const char      *movies;
    cm_ml_format_t   format;
    int              to_buffer;
    double           test_frac;
    long             loop;
} cm_ingest_cli_t;


static int cm_ingest_main(int argc, char **argv);
static void cm_ingest_usage(FILE *f);
static int cm_ingest_once(cm_ingest_cli_t *cli);
static int cm_ingest_movies(PGconn *c, const char *path, cm_ml_format_t fmt,
    char *err, size_t errlen);
static int cm_ingest_ratings(PGconn *c, cm_ingest_cli_t *cli,
    const char *path, cm_ml_format_t fmt, const char *source, char *err,
    size_t errlen);
static const char *cm_ingest_fmt_db(cm_ml_format_t f);
static PGresult *cm_ingest_defer_indexes(PGconn *c, char *err,
    size_t errlen);
static int cm_ingest_rebuild_indexes(PGconn *c, PGresult *defs, char *err,
    size_t errlen);
static int cm_cbuf_put(PGconn *c, cm_cbuf_t *b, const char *s, size_t n,
    char *err, size_t errlen);
static int cm_cbuf_flush(PGconn *c, cm_cbuf_t *b, char *err, size_t errlen);

CM_COMMAND("ingest", "load MovieLens ratings/movies into PostgreSQL"
           " (idempotent, rejects kept)", cm_ingest_main);


static void
cm_ingest_usage(FILE *f)
{
    fprintf(f,
        "usage: cinematch ingest --data DIR|FILE [--format F] [--movies FILE]"
        "\n                        [--target ratings|buffer]"
        " [--split temporal-user:F]\n"
        "                        [--dsn DSN] [--loop INTERVAL]\n\n"
        "Loads a MovieLens ratings file (or a directory's ratings file and"
        " movies\nfile) into PostgreSQL with COPY, in one transaction per"
        " file.  The file's\nsha256 is recorded in ingestion_batches:"
        " ingesting the same file again does\nnothing.  Lines that cannot"
        " go in (malformed, rating not a half star,\nunknown movie,"
        " duplicate (user, movie), timestamp in the future) are kept in\n"
        "ingestion_rejects with their line number, text and reason.\n\n"
        "  --data DIR|FILE     ratings.csv / u.data / ratings.dat, or the"
        " directory\n"
        "                      holding one (its movies file is loaded too);"
        " a directory\n"
        "                      with --target buffer and no ratings file"
        " ingests every\n"
        "                      *.csv in it, in name order (weekly batches)\n"
        "  --format F          auto|ml-latest|ml-100k|ml-1m (default auto:"
        " by name)\n"
        "  --movies FILE       movies file to upsert into movies first\n"
        "  --target T          ratings (initial load; data_split train/test)"
        " or buffer\n"
        "                      (ratings_buffer, new batches; default)\n"
        "  --split temporal-user:F\n"
        "                      with --target ratings: hold out each user's"
        " latest\n"
        "                      ceil(F n_u) ratings as data_split 'test'"
        " (users with\n"
        "                      fewer than 5 stay in train); default none\n"
        "  --dsn DSN           PostgreSQL (default $CINEMATCH_PG_DSN)\n"
        "  --loop INTERVAL     run again every INTERVAL (30s, 15m, 1h, 1d)"
        " until killed\n\n"
        "Dialogue corpora: `cinematch ingest dialogs --help`.\n");
}


static int
cm_ingest_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "dsn", required_argument, NULL, 'd' },
        { "data", required_argument, NULL, 'D' },
        { "format", required_argument, NULL, 'f' },
        { "movies", required_argument, NULL, 'm' },
        { "target", required_argument, NULL, 't' },
        { "split", required_argument, NULL, 's' },
        { "loop", required_argument, NULL, 'l' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    cm_ingest_cli_t  cli;
    char            *end;
    int              ch, rc;

    memset(&cli, 0, sizeof(cli));
    cli.to_buffer = 1;
    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'd': cli.dsn = optarg; break;
        case 'D': cli.data = optarg; break;
        case 'm': cli.movies = optarg; break;
        case 'f':
            if (cm_ml_format_parse(optarg, &cli.format) != CM_OK) {
                fprintf(stderr, "cinematch ingest: --format wants auto,"
                        " ml-latest, ml-100k or ml-1m, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 't':
            if (strcmp(optarg, "ratings") == 0) {
                cli.to_buffer = 0;
            } else if (strcmp(optarg, "buffer") == 0) {
                cli.to_buffer = 1;
            } else {
                fprintf(stderr, "cinematch ingest: --target wants ratings or"
                        " buffer, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 's':
            if (strncmp(optarg, "temporal-user:", 14) != 0) {
                fprintf(stderr, "cinematch ingest: --split wants"
                        " temporal-user:FRACTION, got '%s'\n", optarg);
                return 2;
            }
            cli.test_frac = strtod(optarg + 14, &end);
            if (end == optarg + 14 || *end != '\0' || !(cli.test_frac > 0.0)
                || !(cli.test_frac < 1.0))
            {
                fprintf(stderr, "cinematch ingest: --split fraction must be"
                        " in (0, 1), got '%s'\n", optarg + 14);
                return 2;
            }
            break;
        case 'l':
            cli.loop = cm_interval_parse(optarg);
            if (cli.loop <= 0) {
                fprintf(stderr, "cinematch ingest: --loop wants an interval"
                        " like 30s, 15m, 1h, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'h':
            cm_ingest_usage(stdout);
            return 0;
        default:
            fprintf(stderr, "cinematch ingest: unknown or incomplete option"
                    " '%s' (see --help)\n", argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "cinematch ingest: unexpected argument '%s'"
                " (see --help)\n", argv[optind]);
        return 2;
    }
    if (cli.data == NULL && cli.movies == NULL) {
        fprintf(stderr, "cinematch ingest: --data or --movies is required"
                " (see --help)\n");
        return 2;
    }
    if (cli.test_frac > 0.0 && cli.to_buffer) {
        fprintf(stderr, "cinematch ingest: --split applies to --target"
                " ratings only\n");
        return 2;
    }

    for (;;) {
        rc = cm_ingest_once(&cli);
        if (cli.loop <= 0) {
            return rc;
        }
        fflush(stdout);
        fflush(stderr);
        sleep((unsigned) cli.loop);
    }
}


static int
cm_is_dir(const char *p)
{
    struct stat st;

    return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}


static int
cm_name_cmp(const void *a, const void *b)
{
    return strcmp(*(char * const *) a, *(char * const *) b);
}


static int
cm_ingest_once(cm_ingest_cli_t *cli)
{
    char             err[1024], rpath[PATH_MAX + 32], mpath[PATH_MAX + 32];
    const char      *movies = cli->movies;
    cm_ml_format_t   fmt = cli->format, mfmt;
    PGconn          *c;
    size_t           i, nf = 0;
    char           **files = NULL;
    int              rc = 0;
    struct stat      st;
    DIR             *d;
    struct dirent   *e;

    rpath[0] = '\0';
    if (cli->data != NULL && cm_is_dir(cli->data)) {
        if (cm_ml_detect_dir(cli->data, &fmt, err, sizeof(err)) == CM_OK
            && (cli->format == CM_ML_AUTO || cli->format == fmt))
        {
            snprintf(rpath, sizeof(rpath), "%s/%s", cli->data,
                     cm_ml_ratings_name(fmt));
            if (movies == NULL) {
                snprintf(mpath, sizeof(mpath), "%s/%s", cli->data,
                         cm_ml_movies_name(fmt));
                if (stat(mpath, &st) == 0) {
                    movies = mpath;
                }
            }
        } else if (cli->to_buffer) {
            /* a directory of weekly batch files */
            d = opendir(cli->data);
            if (d == NULL) {
                fprintf(stderr, "cinematch ingest: %s: cannot open\n",
                        cli->data);
                return 1;
            }
            while ((e = readdir(d)) != NULL) {
                size_t l = strlen(e->d_name);
                char **nfiles;

                if (l < 5 || strcmp(e->d_name + l - 4, ".csv") != 0) {
                    continue;
                }
                nfiles = realloc(files, (nf + 1) * sizeof(char *));
                if (nfiles == NULL) {
                    break;
                }
                files = nfiles;
                files[nf] = malloc(strlen(cli->data) + l + 2);
                if (files[nf] == NULL) {
                    break;
                }
                sprintf(files[nf], "%s/%s", cli->data, e->d_name);
                nf++;
            }
            closedir(d);
            if (nf == 0) {
                printf("ingest: no ratings file and no *.csv in %s; nothing"
                       " to do\n", cli->data);
                free(files);
                return 0;
            }
            qsort(files, nf, sizeof(char *), cm_name_cmp);
        } else {
            fprintf(stderr, "cinematch ingest: %s: no ratings.csv, u.data or"
                    " ratings.dat\n", cli->data);
            return 1;
        }
    } else if (cli->data != NULL) {
        snprintf(rpath, sizeof(rpath), "%s", cli->data);
        if (fmt == CM_ML_AUTO) {
            fmt = cm_ingest_guess_format(rpath);
        }
    }

    c = cm_pg_connect(cli->dsn, "cinematch-ingest", err, sizeof(err));
    if (c == NULL) {
        fprintf(stderr, "cinematch ingest: %s\n", err);
        for (i = 0; i < nf; i++) {
            free(files[i]);
        }
        free(files);
        return 1;
    }

    if (movies != NULL) {
        mfmt = cm_ingest_guess_format(movies);
        if (strstr(movies, "u.item") != NULL) {
            mfmt = CM_ML_100K;
        }
        if (cm_ingest_movies(c, movies, mfmt, err, sizeof(err)) != CM_OK) {
            fprintf(stderr, "cinematch ingest: %s: %s\n", movies, err);
            rc = 1;
            goto done;
        }
    }
    if (rpath[0] != '\0') {
        if (cm_ingest_ratings(c, cli, rpath, fmt,
                              cli->to_buffer ? "cli" : "initial", err,
                              sizeof(err)) != CM_OK)
        {
            fprintf(stderr, "cinematch ingest: %s: %s\n", rpath, err);
            rc = 1;
        }
    }
    for (i = 0; i < nf; i++) {
        if (rc == 0 && cm_ingest_ratings(c, cli, files[i], CM_ML_LATEST,
                                         "watch", err, sizeof(err)) != CM_OK)
        {
            fprintf(stderr, "cinematch ingest: %s: %s\n", files[i], err);
            rc = 1;
        }
    }

done:
    for (i = 0; i < nf; i++) {
        free(files[i]);
    }
    free(files);
    PQfinish(c);
    return rc;
}


static int
cm_cbuf_flush(PGconn *c, cm_cbuf_t *b, char *err, size_t errlen)
{
    int rc = cm_pg_copy_put(c, b->p, b->n, err, errlen);

    b->n = 0;
    return rc;
}


static int
cm_cbuf_put(PGconn *c, cm_cbuf_t *b, const char *s, size_t n, char *err,
    size_t errlen)
{
    if (b->n + n > b->cap) {
        if (cm_cbuf_flush(c, b, err, errlen) != CM_OK) {
            return CM_EIO;
        }
        if (n > b->cap) {
            return cm_pg_copy_put(c, s, n, err, errlen);
        }
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return CM_OK;
}


static int
cm_ingest_movies(PGconn *c, const char *path, cm_ml_format_t fmt,
    char *err, size_t errlen)
{
    cm_ml_opts_t   o;
    cm_movies_t    mv = { NULL, 0, 0 };
    cm_cbuf_t      b = { NULL, 0, CM_COPY_CHUNK };
    char           line[2048 + 600], *esc = NULL, num[16], sha[65];
    char           real[PATH_MAX], id_s[24], n1[24], n2[24], n3[24];
    char           bytes_s[24];
    const char    *v[5];
    size_t         i, tl, n;
    uint64_t       bytes;
    int            g, first, rc;
    PGresult      *r;
    const cm_movie_t  *m;

    memset(&o, 0, sizeof(o));
    o.on_bad = cm_ml_report_stderr;
    rc = cm_ml_read_movies_file(path, fmt, &o, &mv, err, errlen);
    if (rc != CM_OK) {
        return rc;
    }
    if (o.n_bad > 0) {
        fprintf(stderr, "cinematch ingest: %s: skipped %zu malformed movie"
                " lines\n", path, o.n_bad);
    }
    b.p = malloc(b.cap);
    esc = malloc(2 * 1000 + 1);
    if (b.p == NULL || esc == NULL) {
        rc = cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
        goto done;
    }
    rc = cm_sha256_file(path, sha, &bytes, err, errlen);
    if (rc != CM_OK) {
        goto done;
    }
    rc = cm_pg_exec(c, "BEGIN; CREATE TEMP TABLE cm_movies_in (movie_id int,"
                    " title text, year smallint, genres text[]) ON COMMIT"
                    " DROP", err, errlen);
    if (rc != CM_OK) {
        goto done;
    }
    /* the catalogue file is a batch too (kind 'movies'): same sha256 rule */
    snprintf(bytes_s, sizeof(bytes_s), "%llu", (unsigned long long) bytes);
    v[0] = realpath(path, real) != NULL ? real : path;
    v[1] = sha;
    v[2] = bytes_s;
    v[3] = cm_ingest_fmt_db(fmt);
    r = cm_pg_query(c, "INSERT INTO ingestion_batches (file_name, file_sha256,"
                    " file_bytes, format, kind) VALUES ($1, $2, $3, $4,"
                    " 'movies') ON CONFLICT (file_sha256) WHERE status <>"
                    " 'failed' DO NOTHING RETURNING id", 4, v, err, errlen);
    if (r == NULL) {
        rc = CM_EIO;
        goto rollback;
    }
    if (PQntuples(r) == 0) {
        PQclear(r);
        printf("%s: movies already ingested; nothing to do\n", path);
        rc = CM_OK;
        goto rollback;
    }
    snprintf(id_s, sizeof(id_s), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);
    rc = cm_pg_copy_begin(c, "COPY cm_movies_in FROM STDIN", err, errlen);
    if (rc != CM_OK) {
        goto rollback;
    }
    for (i = 0; i < mv.n; i++) {
        m = &mv.v[i];
        tl = cm_ingest_title_strip(m->title, strlen(m->title));
        cm_ingest_copy_escape(m->title, tl, 500, esc);
        n = (size_t) snprintf(line, sizeof(line), "%d\t%s\t", (int) m->id,
                              esc);
        if (m->year >= 1870 && m->year <= 2100) {
            snprintf(num, sizeof(num), "%d", (int) m->year);
        } else {
            snprintf(num, sizeof(num), "\\N");
        }
        n += (size_t) snprintf(line + n, sizeof(line) - n, "%s\t{", num);
        first = 1;
        for (g = 1; g < CM_ML_N_GENRES; g++) {
            if (m->genres & (1u << g)) {
                n += (size_t) snprintf(line + n, sizeof(line) - n,
                                       "%s\"%s\"", first ? "" : ",",
                                       cm_ml_genre_name(g));
                first = 0;
            }
        }
        n += (size_t) snprintf(line + n, sizeof(line) - n, "}\n");
        if (n >= sizeof(line)) {
            continue;
        }
        rc = cm_cbuf_put(c, &b, line, n, err, errlen);
        if (rc != CM_OK) {
            goto rollback;
        }
    }
    rc = cm_cbuf_flush(c, &b, err, errlen);
    if (rc == CM_OK) {
        rc = cm_pg_copy_end(c, err, errlen);
    }
    if (rc != CM_OK) {
        goto rollback;
    }
    rc = cm_pg_exec(c, "INSERT INTO movies (movie_id, title, year, genres)"
                    " SELECT movie_id, title, year, genres FROM cm_movies_in"
                    " WHERE movie_id > 0 AND length(title) BETWEEN 1 AND 500"
                    " ON CONFLICT (movie_id) DO UPDATE SET title ="
                    " EXCLUDED.title, year = EXCLUDED.year, genres ="
                    " EXCLUDED.genres", err, errlen);
    if (rc == CM_OK) {
        snprintf(n1, sizeof(n1), "%zu", mv.n + o.n_bad);
        snprintf(n2, sizeof(n2), "%zu", mv.n);
        snprintf(n3, sizeof(n3), "%zu", o.n_bad);
        v[0] = id_s;
        v[1] = n1;
        v[2] = n2;
        v[3] = n3;
        r = cm_pg_query(c, "UPDATE ingestion_batches SET status = 'complete',"
                        " rows_total = $2, rows_accepted = $3, rows_rejected"
                        " = $4, finished_at = clock_timestamp() WHERE id = $1",
                        4, v, err, errlen);
        rc = r != NULL ? CM_OK : CM_EIO;
        PQclear(r);
    }
    if (rc == CM_OK) {
        rc = cm_pg_exec(c, "COMMIT", err, errlen);
    }
    if (rc == CM_OK) {
        printf("batch %s: movies: %zu upserted from %s (%zu malformed lines"
               " skipped)\n", id_s, mv.n, path, o.n_bad);
        goto done;
    }

rollback:
    PQclear(PQexec(c, "ROLLBACK"));
done:
    free(b.p);
    free(esc);
    cm_movies_free(&mv);
    return rc;
}


static int
cm_ingest_load_movie_ids(PGconn *c, int32_t **ids, size_t *n, char *err,
    size_t errlen)
{
    PGresult  *r;
    int        i, nt;

    r = cm_pg_query(c, "SELECT movie_id FROM movies ORDER BY movie_id", 0,
                    NULL, err, errlen);
    if (r == NULL) {
        return CM_EIO;
    }
    nt = PQntuples(r);
    *ids = malloc(((size_t) nt + 1) * sizeof(int32_t));
    if (*ids == NULL) {
        PQclear(r);
        return cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
    }
    for (i = 0; i < nt; i++) {
        (*ids)[i] = (int32_t) atoi(PQgetvalue(r, i, 0));
    }
    *n = (size_t) nt;
    PQclear(r);
    return CM_OK;
}


/*
 * Loading into an empty `ratings` (the initial load): the table is locked
 * (ACCESS EXCLUSIVE, until the load commits: the app's rating writes wait
 * for an initial load) and, once it is seen empty under that lock, its
 * indexes and its primary key are dropped and built again from their own
 * definitions after the rows are in, the way pg_restore does it: one sort
 * per index instead of a btree insert per row (ratings_movie_idx cost ~2 s
 * of CPU per 1M rows, the primary key ~1 s against ~0.3 s to build it).
 * The rows then go straight into `ratings` by COPY: with nothing to update
 * there is no staging table, UPDATE join or anti-join to pay for.  The
 * file's own duplicates never reach the COPY (cm_ingest_plan), so adding
 * the key back cannot fail on them.
 *
 * Returns the statements that put the indexes back (columns: create, and
 * drop, in that order), zero rows when the table is not empty or cannot
 * be locked or changed by this role (then the load keeps the indexes and
 * pays per row), or NULL on error.
 */
static PGresult *
cm_ingest_defer_indexes(PGconn *c, char *err, size_t errlen)
{
    PGresult  *defs, *r;
    int        i;

    r = cm_pg_query(c, "SELECT 1 WHERE NOT EXISTS (SELECT 1 FROM ratings)",
                    0, NULL, err, errlen);
    if (r == NULL || PQntuples(r) == 0) {
        return r;
    }
    PQclear(r);
    if (cm_pg_exec(c, "SAVEPOINT cm_ingest_idx", err, errlen) != CM_OK) {
        return NULL;
    }
    r = PQexec(c, "LOCK TABLE ratings IN ACCESS EXCLUSIVE MODE");
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        goto keep;
    }
    PQclear(r);
    /* under the lock: empty now stays empty until we commit.  Keys first
     * (built first again), a key another table references is kept */
    defs = cm_pg_query(c, "SELECT 'ALTER TABLE ' || k.conrelid::regclass ||"
                       " ' ADD CONSTRAINT ' || quote_ident(k.conname) || ' '"
                       " || pg_get_constraintdef(k.oid), 'ALTER TABLE ' ||"
                       " k.conrelid::regclass || ' DROP CONSTRAINT ' ||"
                       " quote_ident(k.conname) FROM pg_constraint k WHERE"
                       " k.conrelid = 'ratings'::regclass AND k.contype IN"
                       " ('p', 'u') AND NOT EXISTS (SELECT 1 FROM"
                       " pg_constraint f WHERE f.contype = 'f' AND"
                       " f.conindid = k.conindid) AND NOT EXISTS (SELECT 1"
                       " FROM ratings) UNION ALL SELECT"
                       " pg_get_indexdef(i.indexrelid), 'DROP INDEX ' ||"
                       " i.indexrelid::regclass FROM pg_index i WHERE"
                       " i.indrelid = 'ratings'::regclass AND NOT"
                       " i.indisexclusion AND NOT EXISTS (SELECT 1 FROM"
                       " pg_constraint k WHERE k.conindid = i.indexrelid)"
                       " AND NOT EXISTS (SELECT 1 FROM ratings)", 0, NULL,
                       err, errlen);
    if (defs == NULL) {
        return NULL;
    }
    if (PQntuples(defs) == 0) {
        /* rows came in before the lock: load beside them, not locked */
        if (cm_pg_exec(c, "ROLLBACK TO SAVEPOINT cm_ingest_idx", err, errlen)
            != CM_OK)
        {
            PQclear(defs);
            return NULL;
        }
        return defs;
    }
    for (i = 0; i < PQntuples(defs); i++) {
        r = PQexec(c, PQgetvalue(defs, i, 1));
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            PQclear(defs);
            goto keep;
        }
        PQclear(r);
    }
    /* an empty table truncated in this subtransaction takes COPY FREEZE:
     * rows written frozen and all-visible, so the index builds (and the
     * first readers) do not rewrite every page to set hint bits */
    r = PQexec(c, "TRUNCATE ratings");
    if (PQresultStatus(r) != PGRES_COMMAND_OK) {
        PQclear(defs);
        goto keep;
    }
    PQclear(r);
    return defs;

keep:
    /* not the owner, say: keep the indexes, load row by row */
    cm_warn("ingest: indexes kept during the load (%s)",
            PQresultErrorMessage(r));
    PQclear(r);
    if (cm_pg_exec(c, "ROLLBACK TO SAVEPOINT cm_ingest_idx", err, errlen)
        != CM_OK)
    {
        return NULL;
    }
    return cm_pg_query(c, "SELECT 1 WHERE false", 0, NULL, err, errlen);
}


static int
cm_ingest_rebuild_indexes(PGconn *c, PGresult *defs, char *err,
    size_t errlen)
{
    int i, rc = CM_OK;

    for (i = 0; defs != NULL && i < PQntuples(defs) && rc == CM_OK; i++) {
        rc = cm_pg_exec(c, PQgetvalue(defs, i, 0), err, errlen);
    }
    return rc;
}


static const char *
cm_ingest_fmt_db(cm_ml_format_t f)
{
    return f == CM_ML_100K ? "ml-100k" : (f == CM_ML_1M ? "ml-1m" : "ml-csv");
}


static int
cm_ingest_ratings(PGconn *c, cm_ingest_cli_t *cli, const char *path,
    cm_ml_format_t fmt, const char *source, char *err, size_t errlen)
{
    char               sha[65], real[PATH_MAX], id_s[24], bytes_s[24];
    char               line[256 + 2 * CM_INGEST_RAW_MAX];
    char               n1[24], n2[24], n3[24], n4[24], errbuf[1024];
    char              *buf = NULL, *esc = NULL;
    const char        *v[6], *name;
    size_t             len = 0, i, n;
    int32_t           *ids = NULL;
    size_t             n_ids = 0;
    cm_ingest_conf_t   conf;
    cm_ingest_plan_t   plan;
    cm_cbuf_t          b = { NULL, 0, CM_COPY_CHUNK };
    PGresult          *r, *idx = NULL;
    uint64_t           t0 = cm_now_mono_ns();
    double             secs;
    int64_t            batch;
    int                rc, in_tx = 0, direct = 0;

    memset(&plan, 0, sizeof(plan));
    name = realpath(path, real) != NULL ? real : path;
    rc = cm_read_file(path, &buf, &len, err, errlen);
    if (rc != CM_OK) {
        return rc;
    }
    if (cm_sha256_hex(buf, len, sha) != CM_OK) {
        free(buf);
        return cm_seterr(err, errlen, CM_ERR, "sha256 failed");
    }
    snprintf(bytes_s, sizeof(bytes_s), "%zu", len);

    rc = cm_pg_exec(c, "BEGIN", err, errlen);
    if (rc != CM_OK) {
        goto done;
    }
    in_tx = 1;
    v[0] = name;
    v[1] = sha;
    v[2] = bytes_s;
    v[3] = cm_ingest_fmt_db(fmt);
    v[4] = source;
    /* a concurrent ingest of the same file waits here on the unique index
     * and then finds the row: the second one is the no-op */
    r = cm_pg_query(c, "INSERT INTO ingestion_batches (file_name, file_sha256,"
                    " file_bytes, format, source) VALUES ($1, $2, $3, $4, $5)"
                    " ON CONFLICT (file_sha256) WHERE status <> 'failed'"
                    " DO NOTHING RETURNING id", 5, v, err, errlen);
    if (r == NULL) {
        rc = CM_EIO;
        goto failed;
    }
    if (PQntuples(r) == 0) {
        PQclear(r);
        r = cm_pg_query(c, "SELECT id, status, rows_accepted FROM"
                        " ingestion_batches WHERE file_sha256 = $1 AND status"
                        " <> 'failed'", 1, v + 1, err, errlen);
        if (r != NULL && PQntuples(r) > 0) {
            printf("%s: already ingested as batch %s (%s, %s rows accepted);"
                   " nothing to do\n", path, PQgetvalue(r, 0, 0),
                   PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2));
        }
        PQclear(r);
        PQclear(PQexec(c, "ROLLBACK"));
        rc = CM_OK;
        goto done;
    }
    snprintf(id_s, sizeof(id_s), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);

    rc = cm_ingest_load_movie_ids(c, &ids, &n_ids, err, errlen);
    if (rc != CM_OK) {
        goto failed;
    }
    memset(&conf, 0, sizeof(conf));
    conf.movies = ids;
    conf.n_movies = n_ids;
    conf.max_ts = (int64_t) time(NULL) + 86400;
    conf.test_frac = cli->to_buffer ? 0.0 : cli->test_frac;
    rc = cm_ingest_plan(buf, len, fmt, path, &conf, &plan, err, errlen);
    if (rc != CM_OK) {
        goto failed;
    }

    b.p = malloc(b.cap);
    esc = malloc(2 * CM_INGEST_RAW_MAX + 1);
    if (b.p == NULL || esc == NULL) {
        rc = cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
        goto failed;
    }

    /* binary COPY: nothing to format here or to parse on the server (the
     * text form spent more time in timestamps than in anything else) */
    if (cli->to_buffer) {
        rc = cm_pg_copy_begin(c, "COPY ratings_buffer (user_id, movie_id,"
                              " rating, ts, source, batch_id) FROM STDIN"
                              " (FORMAT binary)", err, errlen);
    } else {
        idx = cm_ingest_defer_indexes(c, err, errlen);
        if (idx == NULL) {
            rc = CM_EIO;
            goto failed;
        }
        direct = PQntuples(idx) > 0;
        if (direct) {
            rc = cm_pg_copy_begin(c, "COPY ratings (user_id, movie_id,"
                                  " rating, ts, data_split, source,"
                                  " batch_id) FROM STDIN (FORMAT binary,"
                                  " FREEZE)", err, errlen);
        } else {
            rc = cm_pg_exec(c, "CREATE TEMP TABLE cm_ratings_in (user_id"
                            " int, movie_id int, rating numeric(2,1), ts"
                            " timestamptz, data_split text) ON COMMIT DROP",
                            err, errlen);
            if (rc == CM_OK) {
                rc = cm_pg_copy_begin(c, "COPY cm_ratings_in FROM STDIN"
                                      " (FORMAT binary)", err, errlen);
            }
        }
    }
    if (rc != CM_OK) {
        goto failed;
    }
    batch = strtoll(id_s, NULL, 10);
    n = cm_pgcopy_header((unsigned char *) line);
    rc = cm_cbuf_put(c, &b, line, n, err, errlen);
    for (i = 0; i < plan.n_rows && rc == CM_OK; i++) {
        const cm_rating_t  *x = &plan.rows[i];
        unsigned char      *p = (unsigned char *) line;

        p += cm_pgcopy_tuple(p, cli->to_buffer ? 6 : (direct ? 7 : 5));
        p += cm_pgcopy_int4(p, (int32_t) x->user);
        p += cm_pgcopy_int4(p, (int32_t) x->item);
        p += cm_pgcopy_half_stars(p, (int) lrintf(x->rating * 2.0f));
        p += cm_pgcopy_timestamptz(p, x->ts);
        if (cli->to_buffer) {
            p += cm_pgcopy_text(p, "dataset", 7);
            p += cm_pgcopy_int8(p, batch);
        } else {
            if (plan.test[i]) {
                p += cm_pgcopy_text(p, "test", 4);
            } else {
                p += cm_pgcopy_text(p, "train", 5);
            }
            if (direct) {
                p += cm_pgcopy_text(p, "dataset", 7);
                p += cm_pgcopy_int8(p, batch);
            }
        }
        rc = cm_cbuf_put(c, &b, line, (size_t) (p - (unsigned char *) line),
                         err, errlen);
    }
    if (rc == CM_OK) {
        n = cm_pgcopy_trailer((unsigned char *) line);
        rc = cm_cbuf_put(c, &b, line, n, err, errlen);
    }
    if (rc == CM_OK) {
        rc = cm_cbuf_flush(c, &b, err, errlen);
    }
    if (rc == CM_OK) {
        rc = cm_pg_copy_end(c, err, errlen);
    }
    if (rc != CM_OK) {
        goto failed;
    }
    if (!cli->to_buffer && !direct) {
        v[0] = id_s;
        /*
         * Two set-wise statements instead of INSERT ... ON CONFLICT: a
         * speculative insertion per row cost a third of the load.  Rows
         * already there take a newer rating (the ON CONFLICT rule of
         * before), the others go in as plain inserts in key order.  A
         * concurrent insert of the same (user, movie) fails the batch
         * (retried as a whole); the app writes only in its own id range
         * (users.rating_user_id >= 10000000), which a dataset file would
         * have to name for that to happen.
         */
        r = cm_pg_query(c, "UPDATE ratings r SET rating = s.rating, ts ="
                        " s.ts, data_split = s.data_split, batch_id = $1"
                        " FROM cm_ratings_in s WHERE"
                        " r.user_id = s.user_id AND r.movie_id = s.movie_id"
                        " AND s.ts >= r.ts", 1, v, err, errlen);
        if (r == NULL) {
            rc = CM_EIO;
            goto failed;
        }
        PQclear(r);
        r = cm_pg_query(c, "INSERT INTO ratings (user_id, movie_id, rating,"
                        " ts, source, data_split, batch_id) SELECT user_id,"
                        " movie_id, rating, ts, 'dataset', data_split, $1"
                        " FROM cm_ratings_in s WHERE NOT EXISTS (SELECT 1"
                        " FROM ratings r WHERE r.user_id = s.user_id AND"
                        " r.movie_id = s.movie_id) ORDER BY user_id,"
                        " movie_id", 1, v, err, errlen);
        if (r == NULL) {
            rc = CM_EIO;
            goto failed;
        }
        PQclear(r);
    }
    if (direct) {
        rc = cm_ingest_rebuild_indexes(c, idx, err, errlen);
        if (rc != CM_OK) {
            goto failed;
        }
    }

    if (plan.n_rej > 0) {
        rc = cm_pg_copy_begin(c, "COPY ingestion_rejects (batch_id,"
                              " line_no, raw_line, reason) FROM STDIN", err,
                              errlen);
        for (i = 0; i < plan.n_rej && rc == CM_OK; i++) {
            const cm_ingest_reject_t *x = &plan.rej[i];
            char rs[2 * CM_INGEST_REASON_MAX + 1];

            cm_ingest_copy_escape(x->raw, x->raw_len, CM_INGEST_RAW_MAX, esc);
            cm_ingest_copy_escape(x->reason, strlen(x->reason), 500, rs);
            n = (size_t) snprintf(line, sizeof(line), "%s\t%llu\t%s\t%s\n",
                                  id_s, (unsigned long long) x->line, esc, rs);
            rc = cm_cbuf_put(c, &b, line, n < sizeof(line) ? n : 0, err,
                             errlen);
        }
        if (rc == CM_OK) {
            rc = cm_cbuf_flush(c, &b, err, errlen);
        }
        if (rc == CM_OK) {
            rc = cm_pg_copy_end(c, err, errlen);
        }
        if (rc != CM_OK) {
            goto failed;
        }
    }

    snprintf(n1, sizeof(n1), "%zu", plan.n_total);
    snprintf(n2, sizeof(n2), "%zu", plan.n_rows);
    snprintf(n3, sizeof(n3), "%zu", plan.n_rej - plan.n_dup);
    snprintf(n4, sizeof(n4), "%zu", plan.n_dup);
    v[0] = id_s;
    v[1] = n1;
    v[2] = n2;
    v[3] = n3;
    v[4] = n4;
    r = cm_pg_query(c, "UPDATE ingestion_batches SET status = 'complete',"
                    " rows_total = $2, rows_accepted = $3, rows_rejected = $4,"
                    " rows_duplicate = $5, finished_at = clock_timestamp()"
                    " WHERE id = $1", 5, v, err, errlen);
    if (r == NULL) {
        rc = CM_EIO;
        goto failed;
    }
    PQclear(r);
    rc = cm_pg_exec(c, "COMMIT", err, errlen);
    in_tx = 0;
    if (rc != CM_OK) {
        goto failed;
    }
    secs = (double) (cm_now_mono_ns() - t0) / 1e9;
    printf("batch %s: %s: %zu rows, %zu accepted (%zu test), %zu rejected,"
           " %zu duplicate -> %s in %.2f s (%.0f rows/s)\n", id_s, path,
           plan.n_total, plan.n_rows, plan.n_test, plan.n_rej - plan.n_dup,
           plan.n_dup, cli->to_buffer ? "ratings_buffer" : "ratings", secs,
           secs > 0 ? (double) plan.n_total / secs : 0.0);
    rc = CM_OK;
    goto done;

failed:
    if (in_tx) {
        PQclear(PQexec(c, "ROLLBACK"));
    }
    /* record the failure on its own; the partial unique index lets the
     * same file be retried */
    snprintf(errbuf, sizeof(errbuf), "%s", err[0] ? err : "failed");
    v[0] = name;
    v[1] = sha;
    v[2] = bytes_s;
    v[3] = cm_ingest_fmt_db(fmt);
    v[4] = errbuf;
    v[5] = source;
    r = PQexecParams(c, "INSERT INTO ingestion_batches (file_name,"
                     " file_sha256, file_bytes, format, status, error,"
                     " finished_at, source) VALUES ($1, $2, $3, $4, 'failed',"
                     " $5, clock_timestamp(), $6)", 6, NULL, v, NULL, NULL, 0);
    PQclear(r);
    if (rc == CM_OK) {
        rc = CM_ERR;
    }

done:
    PQclear(idx);
    free(buf);
    free(esc);
    free(b.p);
    free(ids);
    cm_ingest_plan_free(&plan);
    return rc;
}

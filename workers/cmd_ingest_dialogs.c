/*
 * cmd_ingest_dialogs.c: `cinematch ingest dialogs`, a dialogue corpus into
 * the dialogs / dialog_turns tables the dialog LM trains on (sql/006).
 *
 *   cinematch ingest dialogs --data DIR|FILE [--val-frac F] [--seed S]
 *                            [--dsn DSN]
 *
 * DIR is the Cornell Movie-Dialogs Corpus (movie_lines.txt,
 * movie_conversations.txt, movie_titles_metadata.txt); FILE is a .tsv of
 * "line<TAB>response" pairs or plain dialogue text (cornell.h).  One
 * transaction: the ingestion_batches row (kind 'dialogs'), the dialogues,
 * their turns, the counts.  The batch's sha256 is taken over the input
 * files (a directory: the sha256 of "name sha256\n" per file), so the same
 * corpus twice is a no-op.  Validation dialogues are split by film
 * (cm_corpus_split): no film is on both sides.
 *
 * A separate file from cmd_ingest.c because cornell.h and movielens.h both
 * define cm_movie_t.
 */
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include <libpq-fe.h>

#include "cinematch/common.h"
#include "cinematch/cornell.h"
#include "cinematch/digest.h"
#include "cmd.h"
#include "mlops.h"


#define CM_DLG_TEXT_MAX  10000      /* dialog_turns.text */

typedef struct {
    char    *p;
    size_t   n;
    size_t   cap;
} cm_dbuf_t;


static int cm_ingest_dialogs_main(int argc, char **argv);
static int cm_dlg_sha(const char *path, int is_dir, char hex[65], char *err,
    size_t errlen);
static int cm_dbuf_add(cm_dbuf_t *b, const char *s, size_t n);
static int cm_dbuf_esc(cm_dbuf_t *b, const char *s, size_t max);

CM_COMMAND("ingest dialogs", "load a dialogue corpus (Cornell, pairs,"
           " plain) into dialogs/dialog_turns", cm_ingest_dialogs_main);


static void
cm_ingest_dialogs_usage(FILE *f)
{
    fprintf(f,
        "usage: cinematch ingest dialogs --data DIR|FILE [--val-frac F]"
        " [--seed S] [--dsn DSN]\n\n"
        "Loads the Cornell Movie-Dialogs Corpus (a directory), a .tsv of"
        " line<TAB>response\npairs, or plain dialogue text into dialogs and"
        " dialog_turns, in one\ntransaction recorded in ingestion_batches"
        " (kind 'dialogs'); the same input\ntwice is a no-op (sha256)."
        "  A share of the films (default 0.1) goes to\ndata_split"
        " 'validation', never splitting a film.\n");
}


static int
cm_dbuf_add(cm_dbuf_t *b, const char *s, size_t n)
{
    char    *p;
    size_t   cap;

    if (b->n + n + 1 > b->cap) {
        cap = b->cap ? b->cap : 1 << 16;
        while (cap < b->n + n + 1) {
            cap *= 2;
        }
        p = realloc(b->p, cap);
        if (p == NULL) {
            return CM_ENOMEM;
        }
        b->p = p;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    return CM_OK;
}


/* COPY text escaping; the corpus is valid UTF-8 already (cornell.h) */
static int
cm_dbuf_esc(cm_dbuf_t *b, const char *s, size_t max)
{
    size_t  i, n = strlen(s);
    char    c;
    int     rc = CM_OK;

    if (n > max) {
        n = max;
        while (n > 0 && ((unsigned char) s[n] & 0xc0) == 0x80) {
            n--;                        /* do not cut a character */
        }
    }
    for (i = 0; i < n && rc == CM_OK; i++) {
        c = s[i];
        switch (c) {
        case '\\': rc = cm_dbuf_add(b, "\\\\", 2); break;
        case '\t': rc = cm_dbuf_add(b, "\\t", 2); break;
        case '\n': rc = cm_dbuf_add(b, "\\n", 2); break;
        case '\r': rc = cm_dbuf_add(b, "\\r", 2); break;
        default: rc = cm_dbuf_add(b, &c, 1); break;
        }
    }
    return rc;
}


static int
cm_dlg_sha(const char *path, int is_dir, char hex[65], char *err,
    size_t errlen)
{
    static const char *const names[] = {
        "movie_lines.txt", "movie_conversations.txt",
        "movie_titles_metadata.txt", "dialogues.txt"
    };
    char         p[PATH_MAX + 64], one[65], list[4 * 200];
    size_t       i, n = 0;
    struct stat  st;

    if (!is_dir) {
        return cm_sha256_file(path, hex, NULL, err, errlen);
    }
    list[0] = '\0';
    for (i = 0; i < CM_ARRAY_SIZE(names); i++) {
        if ((size_t) snprintf(p, sizeof(p), "%s/%s", path, names[i])
            >= sizeof(p))
        {
            return cm_seterr(err, errlen, CM_EINVAL, "path too long");
        }
        if (stat(p, &st) != 0) {
            continue;
        }
        if (cm_sha256_file(p, one, NULL, err, errlen) != CM_OK) {
            return CM_EIO;
        }
        n += (size_t) snprintf(list + n, sizeof(list) - n, "%s %s\n",
                               names[i], one);
    }
    if (n == 0) {
        return cm_seterr(err, errlen, CM_ENOTFOUND, "%s: no movie_lines.txt"
                         " or dialogues.txt", path);
    }
    return cm_sha256_hex(list, n, hex) == CM_OK ? CM_OK
           : cm_seterr(err, errlen, CM_ERR, "sha256 failed");
}


static int
cm_ingest_dialogs_main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "dsn", required_argument, NULL, 'd' },
        { "data", required_argument, NULL, 'D' },
        { "val-frac", required_argument, NULL, 'v' },
        { "seed", required_argument, NULL, 's' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 }
    };
    const char   *dsn = NULL, *data = NULL, *fmt, *v[5];
    char          err[1024], sha[65], real[PATH_MAX], id_s[24], num[64];
    char          n1[24], n2[24], n3[24], *end;
    double        frac = 0.1;
    uint64_t      seed = 1;
    cm_corpus_t   corpus;
    uint8_t      *is_val = NULL;
    cm_dbuf_t     b = { NULL, 0, 0 };
    PGconn       *c = NULL;
    PGresult     *r;
    struct stat   st;
    size_t        i, t, n_val;
    int           ch, is_dir, rc = 1, in_tx = 0;
    const cm_conv_t  *cv;

    optind = 1;
    opterr = 0;
    while ((ch = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (ch) {
        case 'd': dsn = optarg; break;
        case 'D': data = optarg; break;
        case 'v':
            frac = strtod(optarg, &end);
            if (*optarg == '\0' || *end != '\0' || !(frac >= 0.0)
                || !(frac < 1.0))
            {
                fprintf(stderr, "cinematch ingest dialogs: --val-frac wants"
                        " a number in [0, 1), got '%s'\n", optarg);
                return 2;
            }
            break;
        case 's':
            seed = strtoull(optarg, &end, 10);
            if (*optarg == '\0' || *end != '\0') {
                fprintf(stderr, "cinematch ingest dialogs: --seed wants an"
                        " integer, got '%s'\n", optarg);
                return 2;
            }
            break;
        case 'h':
            cm_ingest_dialogs_usage(stdout);
            return 0;
        default:
            fprintf(stderr, "cinematch ingest dialogs: unknown or incomplete"
                    " option '%s' (see --help)\n", argv[optind - 1]);
            return 2;
        }
    }
    if (optind < argc || data == NULL) {
        fprintf(stderr, "cinematch ingest dialogs: --data DIR|FILE is"
                " required (see --help)\n");
        return 2;
    }
    if (stat(data, &st) != 0) {
        fprintf(stderr, "cinematch ingest dialogs: %s: not found\n", data);
        return 1;
    }
    is_dir = S_ISDIR(st.st_mode);
    /* the schema knows cornell and dialog-pairs; plain text is read as a
     * sequence of exchanges, recorded as dialog-pairs */
    fmt = is_dir ? "cornell" : "dialog-pairs";

    cm_corpus_init(&corpus);
    if (cm_dlg_sha(data, is_dir, sha, err, sizeof(err)) != CM_OK
        || cm_corpus_load(&corpus, data, err, sizeof(err)) != CM_OK)
    {
        fprintf(stderr, "cinematch ingest dialogs: %s\n", err);
        goto done;
    }
    if (corpus.n_convs == 0) {
        fprintf(stderr, "cinematch ingest dialogs: %s: no dialogues\n", data);
        goto done;
    }
    is_val = calloc(corpus.n_convs, 1);
    if (is_val == NULL) {
        fprintf(stderr, "cinematch ingest dialogs: out of memory\n");
        goto done;
    }
    n_val = frac > 0.0 ? cm_corpus_split(&corpus, frac, seed, is_val) : 0;

    c = cm_pg_connect(dsn, "cinematch-ingest", err, sizeof(err));
    if (c == NULL) {
        fprintf(stderr, "cinematch ingest dialogs: %s\n", err);
        goto done;
    }
    if (cm_pg_exec(c, "BEGIN", err, sizeof(err)) != CM_OK) {
        goto failed;
    }
    in_tx = 1;
    snprintf(num, sizeof(num), "%lld", (long long) st.st_size);
    v[0] = realpath(data, real) != NULL ? real : data;
    v[1] = sha;
    v[2] = num;
    v[3] = fmt;
    r = cm_pg_query(c, "INSERT INTO ingestion_batches (file_name, file_sha256,"
                    " file_bytes, format, kind) VALUES ($1, $2, $3, $4,"
                    " 'dialogs') ON CONFLICT (file_sha256) WHERE status <>"
                    " 'failed' DO NOTHING RETURNING id", 4, v, err,
                    sizeof(err));
    if (r == NULL) {
        goto failed;
    }
    if (PQntuples(r) == 0) {
        PQclear(r);
        PQclear(PQexec(c, "ROLLBACK"));
        printf("%s: already ingested; nothing to do\n", data);
        rc = 0;
        goto done;
    }
    snprintf(id_s, sizeof(id_s), "%s", PQgetvalue(r, 0, 0));
    PQclear(r);

    /* dialogues: source_key "m<movie>:c<index>" (the corpus keeps no
     * Cornell line ids), unique within the batch */
    if (cm_pg_copy_begin(c, "COPY dialogs (batch_id, source_key, movie_title,"
                         " data_split) FROM STDIN", err, sizeof(err))
        != CM_OK)
    {
        goto failed;
    }
    for (i = 0; i < corpus.n_convs; i++) {
        const char *title = NULL;

        cv = &corpus.convs[i];
        for (t = 0; t < corpus.n_movies; t++) {
            if (corpus.movies[t].movie == cv->movie) {
                title = cm_corpus_str(&corpus, corpus.movies[t].title);
                break;
            }
        }
        snprintf(num, sizeof(num), "%s\tm%d:c%zu\t", id_s, (int) cv->movie,
                 i);
        if (cm_dbuf_add(&b, num, strlen(num)) != CM_OK
            || (title != NULL ? cm_dbuf_esc(&b, title, 1000)
                              : cm_dbuf_add(&b, "\\N", 2)) != CM_OK
            || cm_dbuf_add(&b, is_val[i] ? "\tvalidation\n" : "\ttrain\n",
                           is_val[i] ? 12 : 7) != CM_OK)
        {
            snprintf(err, sizeof(err), "out of memory");
            goto failed;
        }
    }
    if (cm_pg_copy_put(c, b.p, b.n, err, sizeof(err)) != CM_OK
        || cm_pg_copy_end(c, err, sizeof(err)) != CM_OK)
    {
        goto failed;
    }
    b.n = 0;

    /* turns: staged by source_key, then joined to the new dialogue ids */
    if (cm_pg_exec(c, "CREATE TEMP TABLE cm_turns_in (source_key text, turn"
                   " int, speaker text, text text) ON COMMIT DROP", err,
                   sizeof(err)) != CM_OK
        || cm_pg_copy_begin(c, "COPY cm_turns_in FROM STDIN", err,
                            sizeof(err)) != CM_OK)
    {
        goto failed;
    }
    for (i = 0; i < corpus.n_convs; i++) {
        cv = &corpus.convs[i];
        for (t = 0; t < cv->n; t++) {
            const cm_turn_t *tu = &corpus.turns[cv->first + t];
            const char      *spk = cm_corpus_str(&corpus, tu->speaker);

            snprintf(num, sizeof(num), "m%d:c%zu\t%zu\t", (int) cv->movie, i,
                     t);
            if (cm_dbuf_add(&b, num, strlen(num)) != CM_OK
                || (spk[0] != '\0' ? cm_dbuf_esc(&b, spk, 200)
                                   : cm_dbuf_add(&b, "\\N", 2)) != CM_OK
                || cm_dbuf_add(&b, "\t", 1) != CM_OK
                || cm_dbuf_esc(&b, cm_corpus_str(&corpus, tu->text),
                               CM_DLG_TEXT_MAX) != CM_OK
                || cm_dbuf_add(&b, "\n", 1) != CM_OK)
            {
                snprintf(err, sizeof(err), "out of memory");
                goto failed;
            }
        }
        if (b.n > (1u << 20)) {
            if (cm_pg_copy_put(c, b.p, b.n, err, sizeof(err)) != CM_OK) {
                goto failed;
            }
            b.n = 0;
        }
    }
    if (cm_pg_copy_put(c, b.p, b.n, err, sizeof(err)) != CM_OK
        || cm_pg_copy_end(c, err, sizeof(err)) != CM_OK)
    {
        goto failed;
    }
    v[0] = id_s;
    r = cm_pg_query(c, "INSERT INTO dialog_turns (dialog_id, turn, speaker,"
                    " text) SELECT d.id, t.turn, t.speaker, t.text FROM"
                    " cm_turns_in t JOIN dialogs d ON d.batch_id = $1 AND"
                    " d.source_key = t.source_key", 1, v, err, sizeof(err));
    if (r == NULL) {
        goto failed;
    }
    PQclear(r);
    snprintf(n1, sizeof(n1), "%zu", corpus.n_convs + corpus.n_malformed);
    snprintf(n2, sizeof(n2), "%zu", corpus.n_convs);
    snprintf(n3, sizeof(n3), "%zu", corpus.n_malformed);
    v[0] = id_s;
    v[1] = n1;
    v[2] = n2;
    v[3] = n3;
    r = cm_pg_query(c, "UPDATE ingestion_batches SET status = 'complete',"
                    " rows_total = $2, rows_accepted = $3, rows_rejected = $4,"
                    " finished_at = clock_timestamp() WHERE id = $1", 4, v,
                    err, sizeof(err));
    if (r == NULL) {
        goto failed;
    }
    PQclear(r);
    if (cm_pg_exec(c, "COMMIT", err, sizeof(err)) != CM_OK) {
        in_tx = 0;
        goto failed;
    }
    printf("batch %s: %s: %zu dialogues (%zu validation), %zu turns, %zu"
           " malformed lines skipped\n", id_s, data, corpus.n_convs, n_val,
           corpus.n_turns, corpus.n_malformed);
    rc = 0;
    goto done;

failed:
    fprintf(stderr, "cinematch ingest dialogs: %s\n", err);
    if (in_tx) {
        PQclear(PQexec(c, "ROLLBACK"));
        v[0] = realpath(data, real) != NULL ? real : data;
        v[1] = sha;
        v[2] = "0";
        v[3] = fmt;
        v[4] = err;
        PQclear(PQexecParams(c, "INSERT INTO ingestion_batches (file_name,"
                             " file_sha256, file_bytes, format, kind, status,"
                             " error, finished_at) VALUES ($1, $2, $3, $4,"
                             " 'dialogs', 'failed', $5, clock_timestamp())",
                             5, NULL, v, NULL, NULL, 0));
    }
done:
    if (c != NULL) {
        PQfinish(c);
    }
    free(b.p);
    free(is_val);
    cm_corpus_free(&corpus);
    return rc;
}

/*
 * cinematch/cornell.h: dialogue corpora -> conversations of speaker turns.
 *
 * Three input forms are read into one cm_corpus_t:
 *   - the Cornell Movie-Dialogs Corpus in its original form (a directory with
 *     movie_lines.txt, movie_conversations.txt and optionally
 *     movie_titles_metadata.txt; fields separated by " +++$+++ ", text in
 *     Windows-1252/Latin-1), which carries speaker names and movie ids;
 *   - plain dialogue text: one utterance per line, a blank line between
 *     conversations (UTF-8; stray non-UTF-8 bytes are read as cp1252);
 *   - tab-separated pair files: "line<TAB>response" per line, each pair one
 *     two-turn conversation.
 *
 * Invariants: every string in the corpus is valid UTF-8, NUL-terminated,
 * cleaned by cm_text_clean() (no control characters, single spaces, no
 * <u>/<i>/<b> markup) and non-empty; every conversation has >= 1 turn;
 * turns of one conversation are contiguous in turns[], in spoken order.
 * Malformed input lines are skipped, counted in n_malformed and reported
 * through the warn callback as file:line: reason; they never fail a load.
 * Strings live in one arena addressed by 32-bit offsets (corpus < 4 GiB).
 */
#ifndef CINEMATCH_CORNELL_H
#define CINEMATCH_CORNELL_H

#include <stddef.h>
#include <stdint.h>

#include "cinematch/validate.h"   /* cm_utf8_valid */

typedef void (*cm_corpus_warn_pt)(void *data, const char *file, size_t line,
    const char *reason);

typedef struct {
    uint32_t   text;       /* arena offset of the utterance */
    uint32_t   speaker;    /* arena offset of the speaker name, "" unknown */
} cm_turn_t;

typedef struct {
    int32_t    movie;      /* movie number (m17 -> 17); -1 form has none */
    uint32_t   first;      /* index of the first turn in turns[] */
    uint32_t   n;          /* number of turns, >= 1 */
} cm_conv_t;

typedef struct {
    int32_t    movie;      /* movie number */
    uint32_t   title;      /* arena offset of the title */
    int32_t    year;       /* 0 when unknown */
} cm_movie_t;

typedef struct {
    char              *arena;       /* all strings, NUL-terminated */
    size_t             arena_len, arena_cap;
    cm_turn_t         *turns;
    size_t             n_turns, cap_turns;
    cm_conv_t         *convs;
    size_t             n_convs, cap_convs;
    cm_movie_t        *movies;      /* from movie_titles_metadata.txt */
    size_t             n_movies, cap_movies;
    size_t             n_malformed; /* input lines skipped as malformed */
    size_t             n_empty;     /* turns dropped as empty after cleaning */
    cm_corpus_warn_pt  warn;        /* NULL: log the first 20 with cm_warn */
    void              *warn_data;
} cm_corpus_t;

void cm_corpus_init(cm_corpus_t *c);
void cm_corpus_free(cm_corpus_t *c);

/* String at an arena offset. */
static inline const char *
cm_corpus_str(const cm_corpus_t *c, uint32_t off)
{
    return c->arena + off;
}

/*
 * Parsers over memory (also the fuzz entry points).  Each appends to c.
 * The name arguments only label warnings.  They return 0, or CM_ENOMEM.
 * Cornell: titles may be NULL.
 */
int cm_corpus_parse_cornell(cm_corpus_t *c, const char *lines, size_t nlines,
    const char *convs, size_t nconvs, const char *titles, size_t ntitles);
int cm_corpus_parse_plain(cm_corpus_t *c, const char *buf, size_t len,
    const char *name);
int cm_corpus_parse_pairs(cm_corpus_t *c, const char *buf, size_t len,
    const char *name);

/*
 * Load from a path: a directory holding movie_lines.txt (original Cornell)
 * or dialogues.txt (plain); a file ending in .tsv (pairs); any other file
 * is plain dialogue text.
 */
int cm_corpus_load(cm_corpus_t *c, const char *path, char *err,
    size_t errlen);

/*
 * Validation split, one flag per conversation in is_val (n_convs bytes).
 * Conversations with movie ids: a seeded shuffle of the distinct movies
 * puts ceil(frac * movies) of them (at least 1, never all) in validation,
 * so no film is on both sides.  Conversations without movie ids (plain,
 * pairs): the last frac of them, one contiguous range, since those files
 * keep corpus (film) order.  Returns the number of validation
 * conversations.
 */
size_t cm_corpus_split(const cm_corpus_t *c, double frac, uint64_t seed,
    uint8_t *is_val);

/*
 * Text helpers.  cm_text_to_utf8 copies in[0..n) to out (capacity >= 3n+1)
 * keeping valid UTF-8 sequences and decoding every other byte as
 * Windows-1252 (Latin-1 for its five undefined bytes); returns the length
 * written; cm_text_cp1252_to_utf8 decodes every byte as Windows-1252 (the
 * original Cornell files).  cm_text_clean cleans s[0..len) in place, NUL-terminates and
 * returns the new length: control characters and whitespace runs become one
 * space, ends are trimmed, <u> <i> <b> <br> tags (and closers) removed.
 */
size_t cm_text_to_utf8(const char *in, size_t n, char *out);
size_t cm_text_cp1252_to_utf8(const char *in, size_t n, char *out);
size_t cm_text_clean(char *s, size_t len);

/* Whole file into a malloc'd, NUL-terminated buffer. */
int cm_file_read(const char *path, char **buf, size_t *len, char *err,
    size_t errlen);


#endif /* CINEMATCH_CORNELL_H */

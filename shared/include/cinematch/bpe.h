/*
 * cinematch/bpe.h: byte-level BPE tokenizer (GPT-2 style): trainer,
 * encoder, decoder, and the GPT-2 vocab.json + merges.txt files.
 *
 * Text is first cut into pieces by the GPT-2 pre-tokenisation regex
 * (PCRE2, UTF + UCP; bytes that are not valid UTF-8 form pieces of their
 * own), then each piece's bytes are merged by rank.  Every byte has a
 * token, so encode -> decode returns any byte string exactly.  Special
 * tokens (<|endoftext|>, <|eot|> = end of turn) come after the merges;
 * encode only turns their text into them when CM_BPE_SPECIAL is passed.
 *
 * Files are those of GPT-2 / Hugging Face: vocab.json maps each token,
 * written through GPT-2's byte-to-unicode alphabet, to its id; merges.txt
 * is "#version: 0.2" then one "A B" pair per line by rank.  The loader
 * accepts any dense id assignment (GPT-2's own files load), and validates
 * every entry: a file that loads can never make encode fail or overrun.
 *
 * A cm_bpe_t is immutable after train/load: encode and decode may run on
 * several threads at once.
 */
#ifndef CINEMATCH_BPE_H
#define CINEMATCH_BPE_H

#include <stddef.h>
#include <stdint.h>

#define CM_BPE_ENDOFTEXT  "<|endoftext|>"
#define CM_BPE_ENDOFTURN  "<|eot|>"

#define CM_BPE_SPECIAL    0x1    /* encode: special token text -> token */

/* Pieces longer than this are encoded in slices of this many bytes (keeps
 * merging linear on pathological input such as a megabyte of spaces). */
#define CM_BPE_MAX_PIECE  256

typedef struct cm_bpe_s cm_bpe_t;

/* A growable token array; zero-initialise, free ids with free(). */
typedef struct {
    int32_t  *ids;
    size_t    n, cap;
} cm_tokens_t;

/*
 * Trains merges on the n texts (each a document: a turn, a line) up to
 * vocab_size tokens in total (256 bytes + merges + 2 specials).  Training
 * stops early when no pair occurs twice; cm_bpe_vocab_size() tells.
 */
int cm_bpe_train(cm_bpe_t **out, const char *const *texts,
    const size_t *lens, size_t n, int vocab_size, char *err, size_t errlen);

int cm_bpe_save(const cm_bpe_t *b, const char *dir, char *err,
    size_t errlen);
int cm_bpe_load(cm_bpe_t **out, const char *dir, char *err, size_t errlen);
int cm_bpe_load_mem(cm_bpe_t **out, const char *vocab, size_t vlen,
    const char *merges, size_t mlen, char *err, size_t errlen);
void cm_bpe_free(cm_bpe_t *b);

/* Appends the tokens of text[0..len) to t.  0 or CM_ENOMEM. */
int cm_bpe_encode(const cm_bpe_t *b, const char *text, size_t len,
    int flags, cm_tokens_t *t);

/* Bytes of one token (not NUL-terminated); NULL for an id out of range. */
const uint8_t *cm_bpe_token(const cm_bpe_t *b, int32_t id, size_t *len);

/* Decodes ids into a malloc'd NUL-terminated string; out-of-range ids are
 * skipped.  0 or CM_ENOMEM. */
int cm_bpe_decode(const cm_bpe_t *b, const int32_t *ids, size_t n,
    char **out, size_t *len);

/*
 * Streaming decode for token-by-token output (SSE): a token may end inside
 * a UTF-8 character, so each push returns only bytes up to the last
 * complete character and holds back (at most 3 bytes of) an incomplete
 * one until the next token; flush returns what is held at the end.  The
 * concatenation of all pushes and the flush equals cm_bpe_decode of the
 * same ids, byte for byte (invalid sequences pass through unchanged).
 * out needs room for the token's bytes + 3.
 */
typedef struct {
    uint8_t  held[4];
    size_t   n;
} cm_bpe_stream_t;

size_t cm_bpe_stream_push(const cm_bpe_t *b, cm_bpe_stream_t *st,
    int32_t id, char *out);
size_t cm_bpe_stream_flush(cm_bpe_stream_t *st, char *out);

int cm_bpe_vocab_size(const cm_bpe_t *b);
int cm_bpe_n_merges(const cm_bpe_t *b);
/* Id of a special token by its text, -1 when the vocab has none. */
int32_t cm_bpe_special(const cm_bpe_t *b, const char *text);

#endif /* CINEMATCH_BPE_H */

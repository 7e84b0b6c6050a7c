/*
 * cinematch/serve_dialog.h: what `cinematch infer` does with a dialog
 * model: the GPT checkpoint, its tokenizer and one decode engine, and the
 * per-request generation streams that continuous batching steps together.
 *
 * A stream turns sampled tokens into text that is safe to send: bytes are
 * held back while they end in an incomplete UTF-8 sequence or in a prefix
 * of a stop string, a stop string is never emitted (also when it spans
 * tokens), and the stream ends at the model's end-of-turn token, at
 * max_tokens, at the context limit, or at a stop string.
 *
 * Prompt: the conversation's turns rendered as in training (each turn's
 * tokens, then <|eot|>); the model writes the next turn.  When the turns do
 * not fit the context with room for max_tokens, the oldest whole turns go
 * first (a turn is never cut in the middle); when the newest turn alone
 * does not fit, only its tail is kept and the stream's `truncated` is set.
 *
 * Not thread-safe; the daemon's loop thread owns the server and streams.
 */
#ifndef CINEMATCH_SERVE_DIALOG_H
#define CINEMATCH_SERVE_DIALOG_H

#include <stddef.h>
#include <stdint.h>

#include "cinematch/bpe.h"
#include "cinematch/gpt.h"
#include "cinematch/lm.h"

#define CM_DLG_MAX_STOPS      4
#define CM_DLG_MAX_STOP_LEN   64
#define CM_DLG_MAX_TURNS      64
#define CM_DLG_MAX_TOKENS     1024
#define CM_DLG_TEXT_CAP       4096   /* held-back + ready text per stream */

typedef struct cm_dlg_server_s cm_dlg_server_t;

typedef enum {
    CM_DLG_FINISH_NONE = 0,
    CM_DLG_FINISH_STOP,       /* end of turn or a stop string */
    CM_DLG_FINISH_LENGTH      /* max_tokens or the context limit */
} cm_dlg_finish_t;

typedef struct {
    cm_lm_seq_t       seq;
    int               started;
    int               prompt_tokens;
    int               context_turns;   /* turns in the prompt */
    int               dropped_turns;   /* oldest turns left out */
    int               truncated;       /* the newest turn lost its head */
    int               completion_tokens;
    cm_dlg_finish_t   finish;
    char              stops[CM_DLG_MAX_STOPS][CM_DLG_MAX_STOP_LEN + 1];
    size_t            stop_len[CM_DLG_MAX_STOPS];
    int               nstops;
    char              text[CM_DLG_TEXT_CAP];  /* generated, not yet taken */
    size_t            len;                    /* bytes in text */
    size_t            ready;                  /* of which safe to emit */
} cm_dlg_stream_t;

/* dir holds model.bin and tokenizer/{vocab.json,merges.txt}. */
int cm_dlg_server_open(cm_dlg_server_t **out, const char *dir,
    const char *version, int max_seqs, char *err, size_t errlen);
void cm_dlg_server_free(cm_dlg_server_t *s);
/* Threads per decode step (cm_lm_engine_threads); 1 after open. */
int cm_dlg_server_threads(cm_dlg_server_t *s, int n);
/* bf16 decode weights (cm_lm_engine_bf16); CM_EINVAL without AVX512_BF16. */
int cm_dlg_server_bf16(cm_dlg_server_t *s);
/* bf16 KV caches (cm_lm_engine_kv_bf16); CM_EINVAL without AVX512_BF16. */
int cm_dlg_server_kv_bf16(cm_dlg_server_t *s);
const char *cm_dlg_server_version(const cm_dlg_server_t *s);
int cm_dlg_server_max_seqs(const cm_dlg_server_t *s);
int cm_dlg_server_context(const cm_dlg_server_t *s);

/* Tokenize, truncate and queue the prompt; cm_dlg_step runs it in chunks
 * (chunked prefill) before the stream's first token.  params: sampling
 * (max_tokens is capped at CM_DLG_MAX_TOKENS); stops: NUL-terminated
 * strings, each 1..64 bytes. */
int cm_dlg_start(cm_dlg_server_t *s, cm_dlg_stream_t *st,
    const char *const *turns, const size_t *turn_lens, size_t nturns,
    const cm_lm_params_t *params, const char *const *stops, int nstops,
    char *err, size_t errlen);

/*
 * Which turns fit budget tokens, turn i being ntok[i] tokens (<|eot|>
 * included): the newest turns whole, as many as fit; *first is the first
 * kept.  Returns the tokens kept.  When the newest turn alone is longer
 * than budget, returns budget (its tail), *first = n - 1 and *cut = 1.
 */
size_t cm_dlg_context_fit(const size_t *ntok, size_t n, size_t budget,
    size_t *first, int *cut);

/* One step over streams[0..n) that are running: all advance in one
 * forward (decoding streams feed their last token, prefilling ones their
 * next prompt chunk), and each token sampled in it goes into its stream's
 * text at once; a stream whose token was its last ends in the same call. */
int cm_dlg_step(cm_dlg_server_t *s, cm_dlg_stream_t **streams, int n);

/* Copy up to cap ready bytes out (they leave the stream); returns the
 * count.  *done is set once the stream has ended and nothing remains. */
size_t cm_dlg_take(cm_dlg_stream_t *st, char *out, size_t cap, int *done);

void cm_dlg_stream_free(cm_dlg_stream_t *st);
const char *cm_dlg_finish_name(cm_dlg_finish_t f);

/* Exposed for tests: append bytes and recompute what is safe to emit. */
void cm_dlg_stream_push(cm_dlg_stream_t *st, const uint8_t *p, size_t n);
void cm_dlg_stream_end(cm_dlg_stream_t *st, cm_dlg_finish_t f);

#endif /* CINEMATCH_SERVE_DIALOG_H */

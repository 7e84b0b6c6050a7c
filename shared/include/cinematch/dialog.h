/*
 * cinematch/dialog.h: from a corpus and a tokenizer to training token
 * streams, and evaluation of a model on a stream.
 *
 * Rendering: each conversation becomes its turns in order, each turn's
 * tokens followed by the end-of-turn token, and the conversation closed by
 * <|endoftext|>:   t1 <|eot|> t2 <|eot|> ... tn <|eot|> <|endoftext|>
 * so a model trained on windows of the stream learns to answer the turn
 * before each <|eot|>.  Train and validation streams follow
 * cm_corpus_split(): no film is in both.
 *
 * Bits per byte count the UTF-8 bytes of the target tokens, each special
 * token as 1 byte (the newline that separates turns in the plain form).
 */
#ifndef CINEMATCH_DIALOG_H
#define CINEMATCH_DIALOG_H

#include <stddef.h>
#include <stdint.h>

#include "cinematch/bpe.h"
#include "cinematch/cornell.h"
#include "cinematch/gpt.h"
#include "cinematch/lstm.h"

typedef struct {
    cm_tokens_t  train;
    cm_tokens_t  val;
    size_t       n_train_convs, n_val_convs;
} cm_dialog_data_t;

/* Renders the corpus into train/val streams (see above). */
int cm_dialog_render(const cm_corpus_t *c, const cm_bpe_t *b, double frac,
    uint64_t seed, cm_dialog_data_t *out);
void cm_dialog_data_free(cm_dialog_data_t *d);

/* Appends one conversation (turns[0..n)) rendered as above. */
int cm_dialog_render_turns(const cm_bpe_t *b, const char *const *turns,
    size_t n, int close, cm_tokens_t *t);

typedef struct {
    double  loss;          /* mean cross-entropy, nats per token */
    double  ppl;           /* exp(loss) */
    double  bpb;           /* bits per byte */
    size_t  tokens;        /* targets evaluated */
    size_t  bytes;
} cm_dialog_eval_t;

/* Mean loss over consecutive non-overlapping (B, T) windows of ids, up to
 * max_tokens targets (0: all). */
int cm_dialog_eval(cm_gpt_t *m, const cm_bpe_t *b, const int32_t *ids,
    size_t n, int B, int T, size_t max_tokens, cm_dialog_eval_t *out);

/* The same for the LSTM baseline (same windows, same byte count). */
int cm_dialog_eval_lstm(cm_lstm_t *m, const cm_bpe_t *b, const int32_t *ids,
    size_t n, int B, int T, size_t max_tokens, cm_dialog_eval_t *out);

/*
 * Reply quality beyond perplexity: for up to max_examples validation
 * conversations (is_val from cm_corpus_split) with >= 2 turns, the model
 * answers the earlier turns greedily (up to max_tokens, stopping at end of
 * turn) and the reply is compared with the real last turn.  Words are
 * whitespace-separated, lower-cased.  BLEU-4 is corpus-level (clipped
 * n-gram precisions, brevity penalty, no smoothing); distinct-n is unique
 * n-grams over all n-grams of the generated replies.
 */
typedef struct {
    double  bleu4;
    double  precision[4];
    double  brevity;
    double  distinct1, distinct2;
    size_t  examples;
} cm_dialog_replies_t;

/* The metric alone, over n (hypothesis, reference) texts. */
int cm_dialog_bleu(const char *const *hyps, const char *const *refs,
    size_t n, cm_dialog_replies_t *out);

int cm_dialog_reply_eval(const cm_gpt_t *m, const cm_bpe_t *b,
    const cm_corpus_t *c, const uint8_t *is_val, size_t max_examples,
    int max_tokens, cm_dialog_replies_t *out);

/* The same examples, contexts and greedy decoding for the LSTM (contexts
 * cut to maxT - max_tokens tokens as for a GPT of the same maxT). */
int cm_dialog_reply_eval_lstm(const cm_lstm_t *m, const cm_bpe_t *b,
    const cm_corpus_t *c, const uint8_t *is_val, size_t max_examples,
    int max_tokens, cm_dialog_replies_t *out);

/* Baselines on the same split, for scale: add-one unigram and a bigram
 * interpolated with it (p = (c(a,b) + 2 p_uni(b)) / (c(a) + 2)), trained on
 * train and scored on val in bits per byte (same byte count as eval). */
int cm_dialog_ngram_bpb(const cm_bpe_t *b, const cm_tokens_t *train,
    const cm_tokens_t *val, double *unigram_bpb, double *bigram_bpb);

#endif /* CINEMATCH_DIALOG_H */

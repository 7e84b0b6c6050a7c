/*
 * fuzz_cornell.c: the corpus readers on arbitrary bytes.  The input is cut
 * at NUL bytes into movie_lines / movie_conversations / titles for the
 * Cornell parser; the whole input also goes through the plain and pairs
 * parsers.  Every string the corpus holds must be valid, cleaned UTF-8.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/common.h"
#include "cinematch/cornell.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static void
quiet(void *d, const char *f, size_t l, const char *r)
{
}


static void
check(const cm_corpus_t *c)
{
    size_t i;

    for (i = 0; i < c->n_turns; i++) {
        const char *t = cm_corpus_str(c, c->turns[i].text);

        if (t[0] == '\0' || !cm_utf8_valid(t, strlen(t), NULL)) {
            abort();
        }
    }
    for (i = 0; i < c->n_convs; i++) {
        if (c->convs[i].n == 0
            || (size_t) c->convs[i].first + c->convs[i].n > c->n_turns)
        {
            abort();
        }
    }
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char  *p = (const char *) data, *a, *b;
    size_t       n1, n2, n3;
    cm_corpus_t  c;
    uint8_t     *val;

    a = memchr(p, '\0', size);
    n1 = a != NULL ? (size_t) (a - p) : size;
    b = a != NULL ? memchr(a + 1, '\0', size - n1 - 1) : NULL;
    n2 = a == NULL ? 0 : (b != NULL ? (size_t) (b - a - 1) : size - n1 - 1);
    n3 = b != NULL ? size - (size_t) (b + 1 - p) : 0;

    cm_corpus_init(&c);
    c.warn = quiet;
    cm_corpus_parse_cornell(&c, p, n1, a != NULL ? a + 1 : "", n2,
                            b != NULL ? b + 1 : NULL, n3);
    cm_corpus_parse_plain(&c, p, size, "fuzz");
    cm_corpus_parse_pairs(&c, p, size, "fuzz");
    check(&c);
    val = malloc(c.n_convs + 1);
    if (val != NULL) {
        cm_corpus_split(&c, 0.1, 1, val);
        free(val);
    }
    cm_corpus_free(&c);
    return 0;
}

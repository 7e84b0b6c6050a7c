/*
 * fuzz_chatdoc.c: model text and conversation documents from anywhere.
 * The UTF-8 sanitizer must always produce valid UTF-8 without NUL, no
 * longer than 3x its input, and leave valid UTF-8 unchanged; the Markdown
 * export must accept any JSON for the conversation and its messages
 * (mistyped members render as empty) and never read past what it got.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "cinematch/chatdoc.h"
#include "cinematch/validate.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char     *out, *md;
    size_t    n, len, i;
    json_t   *doc, *conv, *messages;
    int       valid;

    if (size > 65536) {
        return 0;
    }

    out = malloc(3 * size + 1);
    if (out == NULL) {
        return 0;
    }

    n = cm_utf8_sanitize(out, (const char *) data, size);
    if (n > 3 * size || !cm_utf8_valid(out, n, NULL)
        || memchr(out, 0, n) != NULL)
    {
        abort();
    }

    valid = cm_utf8_valid((const char *) data, size, NULL);
    for (i = 0; valid && i < size; i++) {
        valid = data[i] != 0;
    }
    if (valid && (n != size || memcmp(out, data, size) != 0)) {
        abort();
    }
    free(out);

    /* as a document: {"conversation": ..., "messages": ...} or anything */
    doc = json_loadb((const char *) data, size, 0, NULL);
    if (doc != NULL) {
        conv = json_object_get(doc, "conversation");
        messages = json_object_get(doc, "messages");
        if (cm_chatdoc_markdown(conv ? conv : doc, messages ? messages : doc,
                                &md, &len) == 0)
        {
            if (strlen(md) != len) {
                abort();
            }
            free(md);
        }
        json_decref(doc);
    }

    return 0;
}

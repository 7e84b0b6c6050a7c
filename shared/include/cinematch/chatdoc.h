/*
 * cinematch/chatdoc.h: a conversation outside the database: the export
 * formats (Markdown, PDF) and the text hygiene model output needs before
 * it is stored or sent as JSON.
 *
 * A conversation is what the API returns for it: conv is the object
 * {id, title (string|null), model, created_at, updated_at} and messages an
 * array of {role, content, status, created_at, ...}, oldest first.  Missing
 * or mistyped members are rendered as empty, never trusted.
 *
 * PDF needs libharu (built when its header is found: CM_HAVE_HPDF) and a
 * TrueType font that covers the text; the font is embedded, so UTF-8 text
 * renders in any viewer.  Without libharu cm_chatdoc_pdf() returns
 * CM_CHATDOC_ENOTSUP.
 */
#ifndef CINEMATCH_CHATDOC_H
#define CINEMATCH_CHATDOC_H

#include <stddef.h>

#include <jansson.h>

#define CM_CHATDOC_FONT  "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
#define CM_CHATDOC_ENOTSUP  (-100)   /* built without libharu */

/*
 * Replace what is not UTF-8 in src[0..len) by U+FFFD (one per invalid
 * byte) and drop NUL bytes.  dst has room for 3 * len bytes; returns the
 * bytes written.  dst == src is not allowed.
 */
size_t cm_utf8_sanitize(char *dst, const char *src, size_t len);

/* Markdown: a heading, a line about the conversation, then one section per
 * message.  *out is malloc'ed (NUL-terminated, *len without the NUL). */
int cm_chatdoc_markdown(const json_t *conv, const json_t *messages,
    char **out, size_t *len);

/* PDF (A4, wrapped text, page breaks), font: a .ttf path (NULL: the
 * default above).  *out is malloc'ed. */
int cm_chatdoc_pdf(const json_t *conv, const json_t *messages,
    const char *font, unsigned char **out, size_t *len, char *err,
    size_t errlen);

#endif /* CINEMATCH_CHATDOC_H */

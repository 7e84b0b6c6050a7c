/*
 * chatdoc.c: conversation export (Markdown, PDF) and UTF-8 hygiene.
 *
 * Nothing here does I/O except reading the font file for a PDF; the nginx
 * module fetches the conversation and sends what these functions build.
 */
#include "cinematch/chatdoc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cinematch/common.h"
#include "cinematch/validate.h"

#ifdef CM_HAVE_HPDF
#include <hpdf.h>
#endif

/* ----- UTF-8 ------------------------------------------------------------ */

size_t
cm_utf8_sanitize(char *dst, const char *src, size_t len)
{
    const unsigned char *s = (const unsigned char *) src;
    unsigned char       *d = (unsigned char *) dst;
    size_t               i = 0, n;

    while (i < len) {
        if (s[i] == 0) {
            i++;
            continue;
        }
        if (s[i] < 0x80) {
            *d++ = s[i++];
            continue;
        }
        n = (s[i] >= 0xc2 && s[i] <= 0xdf) ? 2
            : (s[i] >= 0xe0 && s[i] <= 0xef) ? 3
            : (s[i] >= 0xf0 && s[i] <= 0xf4) ? 4 : 0;
        if (n && i + n <= len && cm_utf8_valid((const char *) s + i, n, NULL)) {
            memcpy(d, s + i, n);
            d += n;
            i += n;
            continue;
        }
        /* one replacement character per byte that starts nothing valid */
        *d++ = 0xef;
        *d++ = 0xbf;
        *d++ = 0xbd;
        i++;
    }
    return (size_t) (d - (unsigned char *) dst);
}

/* ----- helpers ---------------------------------------------------------- */

static const char *
str_member(const json_t *obj, const char *key, const char *def)
{
    json_t *v = json_object_get(obj, key);

    return json_is_string(v) ? json_string_value(v) : def;
}

static const char *
role_label(const char *role)
{
    if (strcmp(role, "user") == 0) {
        return "You";
    }
    if (strcmp(role, "assistant") == 0) {
        return "Assistant";
    }
    return "System";
}

/* ----- Markdown --------------------------------------------------------- */

/* Text is dialogue, not markup, and is written as it is; the one escape is
 * a line starting with '#', which would otherwise become a heading. */
int
cm_chatdoc_markdown(const json_t *conv, const json_t *messages, char **out,
    size_t *len)
{
    char        *buf = NULL;
    size_t       cap = 0;
    FILE        *f;
    size_t       i;
    json_t      *m;
    const char  *content, *status, *nl;

    *out = NULL;
    *len = 0;

    if (!json_is_object(conv) || !json_is_array(messages)) {
        return CM_EINVAL;
    }

    f = open_memstream(&buf, &cap);
    if (f == NULL) {
        return CM_ENOMEM;
    }

    fprintf(f, "# %s\n\n_Conversation %s, created %s, model %s._\n",
            str_member(conv, "title", "Untitled conversation"),
            str_member(conv, "id", ""), str_member(conv, "created_at", ""),
            str_member(conv, "model", "dialog"));

    json_array_foreach(messages, i, m) {
        status = str_member(m, "status", "complete");
        fprintf(f, "\n## %s\n\n_%s%s%s_\n\n",
                role_label(str_member(m, "role", "")),
                str_member(m, "created_at", ""),
                strcmp(status, "complete") == 0 ? "" : ", ",
                strcmp(status, "complete") == 0 ? "" : status);

        content = str_member(m, "content", "");
        for (;;) {
            nl = strchr(content, '\n');
            size_t n = nl ? (size_t) (nl - content) : strlen(content);

            if (n > 0 && content[0] == '#') {
                fputc('\\', f);
            }
            fwrite(content, 1, n, f);
            fputc('\n', f);
            if (nl == NULL) {
                break;
            }
            content = nl + 1;
        }
    }

    if (fclose(f) != 0 || buf == NULL) {
        free(buf);
        return CM_ENOMEM;
    }

    *out = buf;
    *len = cap;
    return CM_OK;
}

/* ----- PDF -------------------------------------------------------------- */

#ifndef CM_HAVE_HPDF

int
cm_chatdoc_pdf(const json_t *conv, const json_t *messages, const char *font,
    unsigned char **out, size_t *len, char *err, size_t errlen)
{
    (void) conv;
    (void) messages;
    (void) font;
    *out = NULL;
    *len = 0;
    snprintf(err, errlen, "built without libharu (libhpdf-dev)");
    return CM_CHATDOC_ENOTSUP;
}

#else

#define PDF_W        595.0f     /* A4, points */
#define PDF_H        842.0f
#define PDF_MARGIN    56.0f
#define PDF_SIZE      10.5f     /* body text */
#define PDF_LEAD      14.0f     /* line height */

typedef struct {
    HPDF_Doc      pdf;
    HPDF_Page     page;
    HPDF_Font     font;
    float         y;            /* baseline of the next line */
    HPDF_STATUS   error;        /* first error the handler saw */
    HPDF_STATUS   detail;
} pdf_t;

static void
pdf_error(HPDF_STATUS error, HPDF_STATUS detail, void *data)
{
    pdf_t *p = data;

    if (p->error == HPDF_OK) {
        p->error = error;
        p->detail = detail;
    }
}

static int
pdf_new_page(pdf_t *p)
{
    if (p->page != NULL) {
        HPDF_Page_EndText(p->page);
    }
    p->page = HPDF_AddPage(p->pdf);
    if (p->page == NULL) {
        return CM_ERR;
    }
    HPDF_Page_SetSize(p->page, HPDF_PAGE_SIZE_A4, HPDF_PAGE_PORTRAIT);
    HPDF_Page_BeginText(p->page);
    p->y = PDF_H - PDF_MARGIN;
    return p->error == HPDF_OK ? CM_OK : CM_ERR;
}

/* One paragraph, wrapped at word boundaries (or anywhere in a word longer
 * than a line), starting a new page when the page is full. */
static int
pdf_paragraph(pdf_t *p, const char *text, size_t len, float size)
{
    char        line[4096];
    HPDF_UINT   n;
    HPDF_REAL   w;
    float       width = PDF_W - 2 * PDF_MARGIN;

    HPDF_Page_SetFontAndSize(p->page, p->font, size);

    do {
        /* each line is as high as its own size needs */
        if (p->y - size * (PDF_LEAD / PDF_SIZE) < PDF_MARGIN
            && pdf_new_page(p) != CM_OK)
        {
            return CM_ERR;
        }
        HPDF_Page_SetFontAndSize(p->page, p->font, size);
        p->y -= size * (PDF_LEAD / PDF_SIZE);

        n = 0;
        if (len > 0) {
            n = HPDF_Font_MeasureText(p->font, (const HPDF_BYTE *) text,
                                      (HPDF_UINT) (len < sizeof(line) - 1
                                                   ? len : sizeof(line) - 1),
                                      width, size, 0, 0, HPDF_TRUE, &w);
            if (n == 0) {
                /* a word wider than the line: break it */
                n = HPDF_Font_MeasureText(p->font, (const HPDF_BYTE *) text,
                                          (HPDF_UINT) (len < sizeof(line) - 1
                                                       ? len
                                                       : sizeof(line) - 1),
                                          width, size, 0, 0, HPDF_FALSE, &w);
            }
            if (n == 0) {
                n = 1;
            }
            /* never split a UTF-8 sequence */
            while (n < len && ((unsigned char) text[n] & 0xc0) == 0x80) {
                n++;
            }
        }

        memcpy(line, text, n);
        line[n] = '\0';
        HPDF_Page_TextOut(p->page, PDF_MARGIN, p->y, line);

        text += n;
        len -= n;
        while (len > 0 && *text == ' ') {
            text++;
            len--;
        }
    } while (len > 0 && p->error == HPDF_OK);

    return p->error == HPDF_OK ? CM_OK : CM_ERR;
}

/* text with line breaks: a paragraph per line (an empty one for a blank) */
static int
pdf_text(pdf_t *p, const char *text, float size)
{
    const char *nl;
    size_t      n;

    for (;;) {
        nl = strchr(text, '\n');
        n = nl ? (size_t) (nl - text) : strlen(text);
        if (pdf_paragraph(p, text, n, size) != CM_OK) {
            return CM_ERR;
        }
        if (nl == NULL) {
            return CM_OK;
        }
        text = nl + 1;
    }
}

int
cm_chatdoc_pdf(const json_t *conv, const json_t *messages, const char *font,
    unsigned char **out, size_t *len, char *err, size_t errlen)
{
    pdf_t        p;
    size_t       i;
    json_t      *m;
    char         head[256];
    const char  *name, *status;
    HPDF_UINT32  size;
    int          rc = CM_ERR;

    *out = NULL;
    *len = 0;

    if (!json_is_object(conv) || !json_is_array(messages)) {
        snprintf(err, errlen, "not a conversation");
        return CM_EINVAL;
    }

    memset(&p, 0, sizeof(p));
    p.pdf = HPDF_New(pdf_error, &p);
    if (p.pdf == NULL) {
        snprintf(err, errlen, "out of memory");
        return CM_ENOMEM;
    }

    HPDF_SetCompressionMode(p.pdf, HPDF_COMP_ALL);
    HPDF_UseUTFEncodings(p.pdf);
    name = HPDF_LoadTTFontFromFile(p.pdf, font ? font : CM_CHATDOC_FONT,
                                   HPDF_TRUE);
    if (name == NULL) {
        snprintf(err, errlen, "cannot load the font %s (error 0x%04x)",
                 font ? font : CM_CHATDOC_FONT, (unsigned) p.error);
        rc = CM_ENOTFOUND;
        goto done;
    }
    p.font = HPDF_GetFont(p.pdf, name, "UTF-8");
    if (p.font == NULL) {
        goto failed;
    }

    HPDF_SetInfoAttr(p.pdf, HPDF_INFO_CREATOR, "cinematch");
    HPDF_SetInfoAttr(p.pdf, HPDF_INFO_TITLE,
                     str_member(conv, "title", "Untitled conversation"));

    if (pdf_new_page(&p) != CM_OK
        || pdf_text(&p, str_member(conv, "title", "Untitled conversation"),
                    18) != CM_OK)
    {
        goto failed;
    }

    snprintf(head, sizeof(head), "Conversation %s, created %s, model %s",
             str_member(conv, "id", ""), str_member(conv, "created_at", ""),
             str_member(conv, "model", "dialog"));
    if (pdf_text(&p, head, 8) != CM_OK) {
        goto failed;
    }

    json_array_foreach(messages, i, m) {
        status = str_member(m, "status", "complete");
        snprintf(head, sizeof(head), "%s  ·  %s%s%s",
                 role_label(str_member(m, "role", "")),
                 str_member(m, "created_at", ""),
                 strcmp(status, "complete") == 0 ? "" : "  ·  ",
                 strcmp(status, "complete") == 0 ? "" : status);
        p.y -= 8;   /* between messages */
        if (pdf_text(&p, head, 8) != CM_OK
            || pdf_text(&p, str_member(m, "content", ""), PDF_SIZE) != CM_OK)
        {
            goto failed;
        }
    }

    HPDF_Page_EndText(p.page);

    if (HPDF_SaveToStream(p.pdf) != HPDF_OK) {
        goto failed;
    }
    size = HPDF_GetStreamSize(p.pdf);
    *out = malloc(size ? size : 1);
    if (*out == NULL) {
        snprintf(err, errlen, "out of memory");
        rc = CM_ENOMEM;
        goto done;
    }
    HPDF_ResetStream(p.pdf);
    if (HPDF_ReadFromStream(p.pdf, *out, &size) != HPDF_OK
        && p.error != HPDF_STREAM_EOF)
    {
        free(*out);
        *out = NULL;
        goto failed;
    }
    *len = size;
    rc = CM_OK;
    goto done;

failed:
    snprintf(err, errlen, "PDF generation failed (libharu error 0x%04x, "
             "detail %u)", (unsigned) p.error, (unsigned) p.detail);
    rc = CM_ERR;

done:
    HPDF_Free(p.pdf);
    return rc;
}

#endif /* CM_HAVE_HPDF */

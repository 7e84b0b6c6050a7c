/*
 * bpe.c: byte-level BPE (GPT-2 style) trainer, encoder, decoder, and the
 * vocab.json + merges.txt reader/writer.
 *
 * Training keeps, for every adjacent pair, its weighted count and the list
 * of words it occurs in; a lazy max-heap picks the next merge, and only the
 * words holding that pair are rewritten.  Cost per merge is proportional to
 * the words touched, not to the corpus.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <jansson.h>

#include "cinematch/common.h"
#include "cinematch/bpe.h"
#include "cinematch/cornell.h"


/* GPT-2's pre-tokeniser. */
#define CM_BPE_PATTERN \
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+" \
    "|\\s+(?!\\S)|\\s+"

#define CM_BPE_EMPTY  UINT64_MAX

typedef struct {
    uint64_t  key;        /* (a << 32) | b; CM_BPE_EMPTY when free */
    int32_t   rank;       /* merge rank */
    int32_t   id;         /* token produced */
} cm_bpe_pair_t;

struct cm_bpe_s {
    int32_t         vocab_size;
    int32_t         n_merges;
    int32_t         byte_tok[256];   /* token of each single byte */
    uint32_t       *tok_off;         /* (V+1) offsets into tok_bytes */
    uint8_t        *tok_bytes;
    uint8_t        *special;         /* (V) 1 for special tokens */
    int32_t        *merge_a;         /* (n_merges) left token of merge r */
    int32_t        *merge_b;         /* (n_merges) right token */
    cm_bpe_pair_t  *pairs;           /* open addressing, pair_mask + 1 */
    uint64_t        pair_mask;
    pcre2_code     *re;
};

/* bytes -> int32 map (open addressing, FNV-1a), keys in an owned arena */
typedef struct {
    uint32_t  *slot;       /* index + 1 into ents, 0 empty */
    size_t     mask;
    struct {
        uint32_t  off, len;
        int64_t   val;
    }         *ents;
    size_t     n, cap;
    char      *keys;
    size_t     klen, kcap;
} cm_strmap_t;


static int cm_bpe_compile(cm_bpe_t *b, char *err, size_t errlen);
static int cm_bpe_build_pairs(cm_bpe_t *b);


/* ---- byte <-> unicode (GPT-2 bytes_to_unicode) ------------------------- */

static uint16_t  cm_b2u[256];
static int16_t   cm_u2b[324];     /* code point -> byte, -1 none */
static int       cm_b2u_ready;


static void
cm_b2u_init(void)
{
    int b, n = 0;

    if (cm_b2u_ready) {
        return;
    }
    for (b = 0; b < 324; b++) {
        cm_u2b[b] = -1;
    }
    for (b = 0; b < 256; b++) {
        if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC)
            || (b >= 0xAE && b <= 0xFF))
        {
            cm_b2u[b] = (uint16_t) b;
        } else {
            cm_b2u[b] = (uint16_t) (256 + n++);
        }
        cm_u2b[cm_b2u[b]] = (int16_t) b;
    }
    __atomic_store_n(&cm_b2u_ready, 1, __ATOMIC_RELEASE);
}


/* Token bytes -> UTF-8 through the byte alphabet; out has 2*n+1 bytes. */
static size_t
cm_b2u_str(const uint8_t *s, size_t n, char *out)
{
    size_t i, o = 0;
    unsigned cp;

    for (i = 0; i < n; i++) {
        cp = cm_b2u[s[i]];
        if (cp < 0x80) {
            out[o++] = (char) cp;
        } else {
            out[o++] = (char) (0xC0 | (cp >> 6));
            out[o++] = (char) (0x80 | (cp & 0x3F));
        }
    }
    out[o] = '\0';
    return o;
}


/* Inverse; returns the byte count or -1 when a character is outside the
 * alphabet.  out has n bytes. */
static ssize_t
cm_u2b_str(const char *s, size_t n, uint8_t *out)
{
    const unsigned char *p = (const unsigned char *) s;
    size_t               i = 0, o = 0;
    unsigned             cp;

    while (i < n) {
        if (p[i] < 0x80) {
            cp = p[i++];
        } else if ((p[i] & 0xE0) == 0xC0 && i + 1 < n
                   && (p[i + 1] & 0xC0) == 0x80)
        {
            cp = ((unsigned) (p[i] & 0x1F) << 6) | (p[i + 1] & 0x3F);
            i += 2;
        } else {
            return -1;
        }
        if (cp >= 324 || cm_u2b[cp] < 0) {
            return -1;
        }
        out[o++] = (uint8_t) cm_u2b[cp];
    }
    return (ssize_t) o;
}


/* ---- small hash maps -------------------------------------------------- */

static uint64_t
cm_hash_bytes(const void *p, size_t n)
{
    const unsigned char *s = p;
    uint64_t             h = 1469598103934665603ull;
    size_t               i;

    for (i = 0; i < n; i++) {
        h ^= s[i];
        h *= 1099511628211ull;
    }
    return h ^ (h >> 29);
}


static uint64_t
cm_hash_u64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}


static void
cm_strmap_free(cm_strmap_t *m)
{
    free(m->slot);
    free(m->ents);
    free(m->keys);
    memset(m, 0, sizeof(*m));
}


static int
cm_strmap_rehash(cm_strmap_t *m, size_t nslots)
{
    uint32_t *s = calloc(nslots, sizeof(uint32_t));
    size_t    i, h;

    if (s == NULL) {
        return CM_ENOMEM;
    }
    for (i = 0; i < m->n; i++) {
        h = cm_hash_bytes(m->keys + m->ents[i].off, m->ents[i].len)
            & (nslots - 1);
        while (s[h] != 0) {
            h = (h + 1) & (nslots - 1);
        }
        s[h] = (uint32_t) (i + 1);
    }
    free(m->slot);
    m->slot = s;
    m->mask = nslots - 1;
    return CM_OK;
}


/* Finds key; when absent and insert, adds it with value 0.  Returns the
 * entry index, -1 absent, -2 no memory. */
static ssize_t
cm_strmap_get(cm_strmap_t *m, const void *key, size_t len, int insert)
{
    size_t   h, need;
    uint32_t e;
    void    *np;

    if (m->slot != NULL) {
        h = cm_hash_bytes(key, len) & m->mask;
        while ((e = m->slot[h]) != 0) {
            if (m->ents[e - 1].len == len
                && memcmp(m->keys + m->ents[e - 1].off, key, len) == 0)
            {
                return (ssize_t) (e - 1);
            }
            h = (h + 1) & m->mask;
        }
    }
    if (!insert) {
        return -1;
    }
    if (m->n >= UINT32_MAX - 1 || m->klen + len > UINT32_MAX) {
        return -2;
    }
    if (m->slot == NULL || (m->n + 1) * 2 > m->mask + 1) {
        if (cm_strmap_rehash(m, m->slot == NULL ? 1024 : (m->mask + 1) * 2)
            != CM_OK)
        {
            return -2;
        }
    }
    if (m->n == m->cap) {
        m->cap = m->cap ? m->cap * 2 : 1024;
        np = realloc(m->ents, m->cap * sizeof(m->ents[0]));
        if (np == NULL) {
            return -2;
        }
        m->ents = np;
    }
    need = m->klen + len + 1;
    if (need > m->kcap) {
        m->kcap = m->kcap ? m->kcap : 4096;
        while (m->kcap < need) {
            m->kcap *= 2;
        }
        np = realloc(m->keys, m->kcap);
        if (np == NULL) {
            return -2;
        }
        m->keys = np;
    }
    memcpy(m->keys + m->klen, key, len);
    m->ents[m->n].off = (uint32_t) m->klen;
    m->ents[m->n].len = (uint32_t) len;
    m->ents[m->n].val = 0;
    m->klen += len;
    h = cm_hash_bytes(key, len) & m->mask;
    while (m->slot[h] != 0) {
        h = (h + 1) & m->mask;
    }
    m->slot[h] = (uint32_t) (m->n + 1);
    return (ssize_t) m->n++;
}


/* ---- pre-tokenisation ------------------------------------------------- */

typedef int (*cm_piece_pt)(void *data, const char *s, size_t n);


/* Calls fn for every piece of text[0..len), covering every byte once. */
static int
cm_bpe_pieces(const pcre2_code *re, pcre2_match_data *md, const char *text,
    size_t len, cm_piece_pt fn, void *data)
{
    size_t     start = 0, a, z;
    PCRE2_SIZE *ov;
    int         rc;

    while (start < len) {
        rc = pcre2_match(re, (PCRE2_SPTR) text, len, start, 0, md, NULL);
        if (rc < 0) {
            return fn(data, text + start, len - start);
        }
        ov = pcre2_get_ovector_pointer(md);
        a = ov[0];
        z = ov[1];
        if (a > start && (rc = fn(data, text + start, a - start)) != CM_OK) {
            return rc;
        }
        if (z <= a) {
            z = a + 1;    /* empty match cannot happen with this pattern */
        }
        if ((rc = fn(data, text + a, z - a)) != CM_OK) {
            return rc;
        }
        start = z;
    }
    return CM_OK;
}


static int
cm_bpe_compile(cm_bpe_t *b, char *err, size_t errlen)
{
    int         ec;
    PCRE2_SIZE  eo;
    char        msg[128];

    b->re = pcre2_compile((PCRE2_SPTR) CM_BPE_PATTERN, PCRE2_ZERO_TERMINATED,
                          PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF,
                          &ec, &eo, NULL);
    if (b->re == NULL) {
        pcre2_get_error_message(ec, (PCRE2_UCHAR *) msg, sizeof(msg));
        return cm_seterr(err, errlen, CM_ERR, "bpe regex: %s", msg);
    }
    (void) pcre2_jit_compile(b->re, PCRE2_JIT_COMPLETE);   /* optional */
    return CM_OK;
}


/* ---- model ------------------------------------------------------------ */

void
cm_bpe_free(cm_bpe_t *b)
{
    if (b == NULL) {
        return;
    }
    free(b->tok_off);
    free(b->tok_bytes);
    free(b->special);
    free(b->merge_a);
    free(b->merge_b);
    free(b->pairs);
    if (b->re != NULL) {
        pcre2_code_free(b->re);
    }
    free(b);
}


int
cm_bpe_vocab_size(const cm_bpe_t *b)
{
    return b->vocab_size;
}


int
cm_bpe_n_merges(const cm_bpe_t *b)
{
    return b->n_merges;
}


const uint8_t *
cm_bpe_token(const cm_bpe_t *b, int32_t id, size_t *len)
{
    if (id < 0 || id >= b->vocab_size) {
        return NULL;
    }
    *len = b->tok_off[id + 1] - b->tok_off[id];
    return b->tok_bytes + b->tok_off[id];
}


int32_t
cm_bpe_special(const cm_bpe_t *b, const char *text)
{
    size_t   n = strlen(text), l;
    int32_t  i;

    for (i = 0; i < b->vocab_size; i++) {
        l = b->tok_off[i + 1] - b->tok_off[i];
        if (b->special[i] && l == n
            && memcmp(b->tok_bytes + b->tok_off[i], text, n) == 0)
        {
            return i;
        }
    }
    return -1;
}


static int
cm_bpe_build_pairs(cm_bpe_t *b)
{
    size_t    nslots = 16, h;
    int32_t   r;
    uint64_t  key;

    while (nslots < (size_t) b->n_merges * 2) {
        nslots *= 2;
    }
    b->pairs = malloc(nslots * sizeof(cm_bpe_pair_t));
    if (b->pairs == NULL) {
        return CM_ENOMEM;
    }
    for (h = 0; h < nslots; h++) {
        b->pairs[h].key = CM_BPE_EMPTY;
    }
    b->pair_mask = nslots - 1;
    for (r = 0; r < b->n_merges; r++) {
        key = ((uint64_t) (uint32_t) b->merge_a[r] << 32)
              | (uint32_t) b->merge_b[r];
        h = cm_hash_u64(key) & b->pair_mask;
        while (b->pairs[h].key != CM_BPE_EMPTY && b->pairs[h].key != key) {
            h = (h + 1) & b->pair_mask;
        }
        if (b->pairs[h].key == key) {
            continue;    /* a duplicate merge keeps its first rank */
        }
        b->pairs[h].key = key;
        b->pairs[h].rank = r;
        b->pairs[h].id = 256 + r;    /* rewritten by the loader */
    }
    return CM_OK;
}


static const cm_bpe_pair_t *
cm_bpe_pair(const cm_bpe_t *b, int32_t x, int32_t y)
{
    uint64_t key = ((uint64_t) (uint32_t) x << 32) | (uint32_t) y;
    size_t   h = cm_hash_u64(key) & b->pair_mask;

    while (b->pairs[h].key != CM_BPE_EMPTY) {
        if (b->pairs[h].key == key) {
            return &b->pairs[h];
        }
        h = (h + 1) & b->pair_mask;
    }
    return NULL;
}


/* ---- encode / decode -------------------------------------------------- */

typedef struct {
    const cm_bpe_t  *b;
    cm_tokens_t     *t;
} cm_enc_ctx_t;


static int
cm_tokens_reserve(cm_tokens_t *t, size_t extra)
{
    size_t   cap;
    int32_t *p;

    if (t->n + extra <= t->cap) {
        return CM_OK;
    }
    cap = t->cap ? t->cap : 256;
    while (cap < t->n + extra) {
        cap *= 2;
    }
    p = realloc(t->ids, cap * sizeof(int32_t));
    if (p == NULL) {
        return CM_ENOMEM;
    }
    t->ids = p;
    t->cap = cap;
    return CM_OK;
}


/* Merges one piece (<= CM_BPE_MAX_PIECE bytes) in place at the tail of t. */
static void
cm_bpe_merge_piece(const cm_bpe_t *b, int32_t *s, size_t *pn)
{
    size_t                n = *pn, i, j, best_i;
    int32_t               best_rank, best_id;
    const cm_bpe_pair_t  *p;

    while (n > 1) {
        best_rank = INT32_MAX;
        best_i = 0;
        best_id = -1;
        for (i = 0; i + 1 < n; i++) {
            p = cm_bpe_pair(b, s[i], s[i + 1]);
            if (p != NULL && p->rank < best_rank) {
                best_rank = p->rank;
                best_i = i;
                best_id = p->id;
            }
        }
        if (best_id < 0) {
            break;
        }
        /* merge every occurrence of the best pair, left to right */
        {
            int32_t x = s[best_i], y = s[best_i + 1];

            for (i = best_i, j = best_i; i < n; ) {
                if (i + 1 < n && s[i] == x && s[i + 1] == y) {
                    s[j++] = best_id;
                    i += 2;
                } else {
                    s[j++] = s[i++];
                }
            }
            n = j;
        }
    }
    *pn = n;
}


static int
cm_bpe_encode_piece(void *data, const char *s, size_t n)
{
    cm_enc_ctx_t        *ctx = data;
    const cm_bpe_t      *b = ctx->b;
    cm_tokens_t         *t = ctx->t;
    const unsigned char *u = (const unsigned char *) s;
    size_t               i, k, m;

    while (n > 0) {
        k = n < CM_BPE_MAX_PIECE ? n : CM_BPE_MAX_PIECE;
        if (cm_tokens_reserve(t, k) != CM_OK) {
            return CM_ENOMEM;
        }
        for (i = 0; i < k; i++) {
            t->ids[t->n + i] = b->byte_tok[u[i]];
        }
        m = k;
        cm_bpe_merge_piece(b, t->ids + t->n, &m);
        t->n += m;
        u += k;
        n -= k;
    }
    return CM_OK;
}


static int
cm_bpe_encode_plain(const cm_bpe_t *b, pcre2_match_data *md,
    const char *text, size_t len, cm_tokens_t *t)
{
    cm_enc_ctx_t ctx = { b, t };

    return cm_bpe_pieces(b->re, md, text, len, cm_bpe_encode_piece, &ctx);
}


int
cm_bpe_encode(const cm_bpe_t *b, const char *text, size_t len, int flags,
    cm_tokens_t *t)
{
    pcre2_match_data *md;
    const char       *p = text, *end = text + len, *q, *best;
    int32_t           i, best_id;
    size_t            l, best_l;
    int               rc = CM_OK;

    md = pcre2_match_data_create_from_pattern(b->re, NULL);
    if (md == NULL) {
        return CM_ENOMEM;
    }
    while (p < end && rc == CM_OK) {
        best = end;
        best_id = -1;
        best_l = 0;
        if (flags & CM_BPE_SPECIAL) {
            /* earliest special token text; specials are few */
            for (i = 0; i < b->vocab_size; i++) {
                if (!b->special[i]) {
                    continue;
                }
                l = b->tok_off[i + 1] - b->tok_off[i];
                q = memmem(p, (size_t) (end - p), b->tok_bytes + b->tok_off[i],
                           l);
                if (q != NULL && q < best) {
                    best = q;
                    best_id = i;
                    best_l = l;
                }
            }
        }
        if (best > p) {
            rc = cm_bpe_encode_plain(b, md, p, (size_t) (best - p), t);
        }
        if (rc == CM_OK && best_id >= 0) {
            rc = cm_tokens_reserve(t, 1);
            if (rc == CM_OK) {
                t->ids[t->n++] = best_id;
            }
        }
        p = best + best_l;
    }
    pcre2_match_data_free(md);
    return rc;
}


int
cm_bpe_decode(const cm_bpe_t *b, const int32_t *ids, size_t n, char **out,
    size_t *len)
{
    size_t  i, total = 0, l;
    char   *s;
    const uint8_t *tb;

    for (i = 0; i < n; i++) {
        if (ids[i] >= 0 && ids[i] < b->vocab_size) {
            total += b->tok_off[ids[i] + 1] - b->tok_off[ids[i]];
        }
    }
    s = malloc(total + 1);
    if (s == NULL) {
        return CM_ENOMEM;
    }
    total = 0;
    for (i = 0; i < n; i++) {
        tb = cm_bpe_token(b, ids[i], &l);
        if (tb != NULL) {
            memcpy(s + total, tb, l);
            total += l;
        }
    }
    s[total] = '\0';
    *out = s;
    if (len != NULL) {
        *len = total;
    }
    return CM_OK;
}


/* ---- training --------------------------------------------------------- */

typedef struct {
    int32_t  *s;          /* symbols */
    uint32_t  n;
    int64_t   count;
} cm_word_t;

typedef struct {
    uint64_t   key;
    int64_t    count;
    int32_t   *words;     /* words that held the pair at some point */
    uint32_t   nw, capw;
} cm_tpair_t;

typedef struct {
    int64_t   count;
    uint32_t  pair;       /* index into tpairs */
} cm_heap_ent_t;

typedef struct {
    cm_tpair_t     *p;
    size_t          n, cap;
    uint32_t       *slot;          /* index + 1 */
    size_t          mask;
    cm_heap_ent_t  *heap;
    size_t          nh, caph;
} cm_trainer_t;


static int
cm_heap_less(const cm_trainer_t *t, const cm_heap_ent_t *a,
    const cm_heap_ent_t *b)
{
    /* max-heap on count; ties: smaller pair key first (deterministic) */
    if (a->count != b->count) {
        return a->count < b->count;
    }
    return t->p[a->pair].key > t->p[b->pair].key;
}


static int
cm_heap_push(cm_trainer_t *t, int64_t count, uint32_t pair)
{
    size_t         i, parent;
    cm_heap_ent_t  e = { count, pair }, *np;

    if (t->nh == t->caph) {
        t->caph = t->caph ? t->caph * 2 : 4096;
        np = realloc(t->heap, t->caph * sizeof(*np));
        if (np == NULL) {
            return CM_ENOMEM;
        }
        t->heap = np;
    }
    i = t->nh++;
    while (i > 0) {
        parent = (i - 1) / 2;
        if (!cm_heap_less(t, &t->heap[parent], &e)) {
            break;
        }
        t->heap[i] = t->heap[parent];
        i = parent;
    }
    t->heap[i] = e;
    return CM_OK;
}


static cm_heap_ent_t
cm_heap_pop(cm_trainer_t *t)
{
    cm_heap_ent_t top = t->heap[0], last = t->heap[--t->nh];
    size_t        i = 0, c;

    while ((c = 2 * i + 1) < t->nh) {
        if (c + 1 < t->nh && cm_heap_less(t, &t->heap[c], &t->heap[c + 1])) {
            c++;
        }
        if (!cm_heap_less(t, &last, &t->heap[c])) {
            break;
        }
        t->heap[i] = t->heap[c];
        i = c;
    }
    if (t->nh > 0) {
        t->heap[i] = last;
    }
    return top;
}


/* Index of pair (x, y), created when absent; -1 no memory. */
static int64_t
cm_tpair_get(cm_trainer_t *t, int32_t x, int32_t y)
{
    uint64_t    key = ((uint64_t) (uint32_t) x << 32) | (uint32_t) y;
    size_t      h, i, nslots;
    uint32_t   *ns;
    void       *np;

    if (t->slot != NULL) {
        h = cm_hash_u64(key) & t->mask;
        while (t->slot[h] != 0) {
            if (t->p[t->slot[h] - 1].key == key) {
                return t->slot[h] - 1;
            }
            h = (h + 1) & t->mask;
        }
    }
    if (t->slot == NULL || (t->n + 1) * 2 > t->mask + 1) {
        nslots = t->slot == NULL ? 65536 : (t->mask + 1) * 2;
        ns = calloc(nslots, sizeof(uint32_t));
        if (ns == NULL) {
            return -1;
        }
        for (i = 0; i < t->n; i++) {
            h = cm_hash_u64(t->p[i].key) & (nslots - 1);
            while (ns[h] != 0) {
                h = (h + 1) & (nslots - 1);
            }
            ns[h] = (uint32_t) (i + 1);
        }
        free(t->slot);
        t->slot = ns;
        t->mask = nslots - 1;
    }
    if (t->n == t->cap) {
        t->cap = t->cap ? t->cap * 2 : 65536;
        np = realloc(t->p, t->cap * sizeof(cm_tpair_t));
        if (np == NULL) {
            return -1;
        }
        t->p = np;
    }
    memset(&t->p[t->n], 0, sizeof(cm_tpair_t));
    t->p[t->n].key = key;
    h = cm_hash_u64(key) & t->mask;
    while (t->slot[h] != 0) {
        h = (h + 1) & t->mask;
    }
    t->slot[h] = (uint32_t) (t->n + 1);
    return (int64_t) t->n++;
}


static int
cm_tpair_add_word(cm_tpair_t *p, int32_t w)
{
    void *np;

    if (p->nw > 0 && p->words[p->nw - 1] == w) {
        return CM_OK;
    }
    if (p->nw == p->capw) {
        p->capw = p->capw ? p->capw * 2 : 4;
        np = realloc(p->words, p->capw * sizeof(int32_t));
        if (np == NULL) {
            return CM_ENOMEM;
        }
        p->words = np;
    }
    p->words[p->nw++] = w;
    return CM_OK;
}


/* Adds delta * count for each adjacent pair of word w.  fresh >= 0: also
 * records w in the word list of pairs holding token fresh and pushes their
 * new counts; CM_BPE_ALL records w for every pair; CM_BPE_NONE nothing. */
#define CM_BPE_ALL   (-1)
#define CM_BPE_NONE  (-2)

static int
cm_word_pairs(cm_trainer_t *t, const cm_word_t *wd, int32_t w, int64_t delta,
    int32_t fresh)
{
    uint32_t  i;
    int64_t   k;
    int       rec;

    for (i = 0; i + 1 < wd->n; i++) {
        k = cm_tpair_get(t, wd->s[i], wd->s[i + 1]);
        if (k < 0) {
            return CM_ENOMEM;
        }
        t->p[k].count += delta * wd->count;
        rec = fresh == CM_BPE_ALL
              || (fresh >= 0 && (wd->s[i] == fresh || wd->s[i + 1] == fresh));
        if (!rec) {
            continue;
        }
        if (cm_tpair_add_word(&t->p[k], w) != CM_OK) {
            return CM_ENOMEM;
        }
        if (fresh >= 0
            && cm_heap_push(t, t->p[k].count, (uint32_t) k) != CM_OK)
        {
            return CM_ENOMEM;
        }
    }
    return CM_OK;
}


typedef struct {
    cm_strmap_t  *words;
    int           rc;
} cm_count_ctx_t;


static int
cm_count_piece(void *data, const char *s, size_t n)
{
    cm_count_ctx_t *ctx = data;
    ssize_t         e;

    while (n > 0) {
        size_t k = n < CM_BPE_MAX_PIECE ? n : CM_BPE_MAX_PIECE;

        e = cm_strmap_get(ctx->words, s, k, 1);
        if (e < 0) {
            return CM_ENOMEM;
        }
        ctx->words->ents[e].val++;
        s += k;
        n -= k;
    }
    return CM_OK;
}


int
cm_bpe_train(cm_bpe_t **out, const char *const *texts, const size_t *lens,
    size_t n, int vocab_size, char *err, size_t errlen)
{
    cm_bpe_t          *b;
    cm_strmap_t        wm;
    cm_count_ctx_t     cctx;
    pcre2_match_data  *md = NULL;
    cm_word_t         *words = NULL;
    cm_trainer_t       t;
    cm_heap_ent_t      top;
    size_t             i, nw = 0, total_sym = 0, j, k, bytes_total;
    int32_t           *symbuf = NULL, x, y, id, w;
    int32_t            target, r;
    uint32_t           q;
    int                rc = CM_ENOMEM, found;
    static const char *specials[] = { CM_BPE_ENDOFTEXT, CM_BPE_ENDOFTURN };

    cm_b2u_init();
    memset(&wm, 0, sizeof(wm));
    memset(&t, 0, sizeof(t));
    if (vocab_size < 258 || vocab_size > (1 << 20)) {
        return cm_seterr(err, errlen, CM_EINVAL,
                         "vocab size %d outside 258..1048576", vocab_size);
    }
    b = calloc(1, sizeof(*b));
    if (b == NULL) {
        return cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
    }
    if ((rc = cm_bpe_compile(b, err, errlen)) != CM_OK) {
        free(b);
        return rc;
    }
    rc = CM_ENOMEM;
    target = vocab_size - 258;

    /* 1. word counts */
    md = pcre2_match_data_create_from_pattern(b->re, NULL);
    if (md == NULL) {
        goto fail;
    }
    cctx.words = &wm;
    cctx.rc = CM_OK;
    for (i = 0; i < n; i++) {
        if (cm_bpe_pieces(b->re, md, texts[i], lens[i], cm_count_piece,
                          &cctx) != CM_OK)
        {
            goto fail;
        }
    }
    nw = wm.n;
    for (i = 0; i < nw; i++) {
        total_sym += wm.ents[i].len;
    }
    words = calloc(nw ? nw : 1, sizeof(cm_word_t));
    symbuf = malloc((total_sym ? total_sym : 1) * sizeof(int32_t));
    b->merge_a = malloc(((size_t) target + 1) * sizeof(int32_t));
    b->merge_b = malloc(((size_t) target + 1) * sizeof(int32_t));
    if (words == NULL || symbuf == NULL || b->merge_a == NULL
        || b->merge_b == NULL)
    {
        goto fail;
    }
    for (i = 0, k = 0; i < nw; i++) {
        words[i].s = symbuf + k;
        words[i].n = wm.ents[i].len;
        words[i].count = wm.ents[i].val;
        for (j = 0; j < wm.ents[i].len; j++) {
            words[i].s[j] = (unsigned char) wm.keys[wm.ents[i].off + j];
        }
        k += wm.ents[i].len;
    }

    /* token bytes grow as merges are made: worst case sum of both halves */
    b->tok_off = malloc(((size_t) vocab_size + 1) * sizeof(uint32_t));
    if (b->tok_off == NULL) {
        goto fail;
    }
    bytes_total = 256;
    b->tok_bytes = malloc(256);
    if (b->tok_bytes == NULL) {
        goto fail;
    }
    for (i = 0; i < 256; i++) {
        b->tok_off[i] = (uint32_t) i;
        b->tok_bytes[i] = (uint8_t) i;
        b->byte_tok[i] = (int32_t) i;
    }
    b->tok_off[256] = 256;

    /* 2. pair counts and word lists */
    for (i = 0; i < nw; i++) {
        if (cm_word_pairs(&t, &words[i], (int32_t) i, 1, CM_BPE_ALL) != CM_OK) {
            goto fail;
        }
    }
    for (i = 0; i < t.n; i++) {
        if (cm_heap_push(&t, t.p[i].count, (uint32_t) i) != CM_OK) {
            goto fail;
        }
    }

    /* 3. merges */
    for (r = 0; r < target; r++) {
        found = 0;
        while (t.nh > 0) {
            top = cm_heap_pop(&t);
            if (t.p[top.pair].count == top.count) {
                found = 1;
                break;
            }
            /* stale entry: re-queue the pair at its current count */
            if (t.p[top.pair].count > 0
                && cm_heap_push(&t, t.p[top.pair].count, top.pair) != CM_OK)
            {
                goto fail;
            }
        }
        if (!found || top.count < 2) {
            break;    /* nothing occurs twice: further merges are noise */
        }
        q = top.pair;
        x = (int32_t) (t.p[q].key >> 32);
        y = (int32_t) (t.p[q].key & 0xFFFFFFFF);
        id = 256 + r;
        b->merge_a[r] = x;
        b->merge_b[r] = y;
        {
            size_t   la = b->tok_off[x + 1] - b->tok_off[x];
            size_t   lb = b->tok_off[y + 1] - b->tok_off[y];
            uint8_t *nb = realloc(b->tok_bytes, bytes_total + la + lb);

            if (nb == NULL) {
                goto fail;
            }
            b->tok_bytes = nb;
            memcpy(nb + bytes_total, nb + b->tok_off[x], la);
            memcpy(nb + bytes_total + la, nb + b->tok_off[y], lb);
            bytes_total += la + lb;
            b->tok_off[id + 1] = (uint32_t) bytes_total;
        }
        /* rewrite every word that holds (x, y); the list may hold stale
         * or repeated words, which the scan finds pair-free and skips */
        for (k = 0; k < t.p[q].nw; k++) {
            cm_word_t *wd;
            uint32_t   a, z;
            int        has = 0;

            w = t.p[q].words[k];
            wd = &words[w];
            for (a = 0; a + 1 < wd->n; a++) {
                if (wd->s[a] == x && wd->s[a + 1] == y) {
                    has = 1;
                    break;
                }
            }
            if (!has) {
                continue;
            }
            if (cm_word_pairs(&t, wd, w, -1, CM_BPE_NONE) != CM_OK) {
                goto fail;
            }
            for (a = 0, z = 0; a < wd->n; ) {
                if (a + 1 < wd->n && wd->s[a] == x && wd->s[a + 1] == y) {
                    wd->s[z++] = id;
                    a += 2;
                } else {
                    wd->s[z++] = wd->s[a++];
                }
            }
            wd->n = z;
            if (cm_word_pairs(&t, wd, w, 1, id) != CM_OK) {
                goto fail;
            }
        }
        /* t.p may have moved; the merged pair is gone everywhere */
        t.p[q].count = 0;
    }
    b->n_merges = r;

    /* 4. specials after the merges */
    {
        int32_t base = 256 + b->n_merges;
        size_t  l0 = strlen(specials[0]), l1 = strlen(specials[1]);
        uint8_t *nb = realloc(b->tok_bytes, bytes_total + l0 + l1);

        if (nb == NULL) {
            goto fail;
        }
        b->tok_bytes = nb;
        memcpy(nb + bytes_total, specials[0], l0);
        b->tok_off[base + 1] = (uint32_t) (bytes_total + l0);
        memcpy(nb + bytes_total + l0, specials[1], l1);
        b->tok_off[base + 2] = (uint32_t) (bytes_total + l0 + l1);
        b->vocab_size = base + 2;
        b->special = calloc((size_t) b->vocab_size, 1);
        if (b->special == NULL) {
            goto fail;
        }
        b->special[base] = 1;
        b->special[base + 1] = 1;
    }
    if (cm_bpe_build_pairs(b) != CM_OK) {
        goto fail;
    }
    rc = CM_OK;

fail:
    if (md != NULL) {
        pcre2_match_data_free(md);
    }
    for (i = 0; i < t.n; i++) {
        free(t.p[i].words);
    }
    free(t.p);
    free(t.slot);
    free(t.heap);
    free(words);
    free(symbuf);
    cm_strmap_free(&wm);
    if (rc != CM_OK) {
        cm_bpe_free(b);
        return cm_seterr(err, errlen, rc, "bpe training: out of memory");
    }
    *out = b;
    return CM_OK;
}


/* ---- files ------------------------------------------------------------ */

int
cm_bpe_save(const cm_bpe_t *b, const char *dir, char *err, size_t errlen)
{
    char        path[4096], *key = NULL, *k2;
    json_t     *vocab;
    FILE       *f;
    int32_t     i, r;
    size_t      l, maxl = 0;
    const uint8_t *tb;

    cm_b2u_init();
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        return cm_seterr(err, errlen, CM_EIO, "%s: %s", dir, strerror(errno));
    }
    for (i = 0; i < b->vocab_size; i++) {
        l = b->tok_off[i + 1] - b->tok_off[i];
        maxl = l > maxl ? l : maxl;
    }
    key = malloc(4 * maxl + 2);
    k2 = malloc(4 * maxl + 2);
    vocab = json_object();
    if (key == NULL || k2 == NULL || vocab == NULL) {
        free(key);
        free(k2);
        json_decref(vocab);
        return cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
    }
    for (i = 0; i < b->vocab_size; i++) {
        tb = cm_bpe_token(b, i, &l);
        cm_b2u_str(tb, l, key);
        if (json_object_set_new(vocab, key, json_integer(i)) != 0) {
            goto nomem;
        }
    }
    snprintf(path, sizeof(path), "%s/vocab.json", dir);
    if (json_dump_file(vocab, path, JSON_COMPACT | JSON_PRESERVE_ORDER)
        != 0)
    {
        free(key);
        free(k2);
        json_decref(vocab);
        return cm_seterr(err, errlen, CM_EIO, "%s: write failed", path);
    }
    json_decref(vocab);
    snprintf(path, sizeof(path), "%s/merges.txt", dir);
    f = fopen(path, "w");
    if (f == NULL) {
        free(key);
        free(k2);
        return cm_seterr(err, errlen, CM_EIO, "%s: %s", path,
                         strerror(errno));
    }
    fputs("#version: 0.2\n", f);
    for (r = 0; r < b->n_merges; r++) {
        tb = cm_bpe_token(b, b->merge_a[r], &l);
        cm_b2u_str(tb, l, key);
        tb = cm_bpe_token(b, b->merge_b[r], &l);
        cm_b2u_str(tb, l, k2);
        fprintf(f, "%s %s\n", key, k2);
    }
    free(key);
    free(k2);
    if (fclose(f) != 0) {
        return cm_seterr(err, errlen, CM_EIO, "%s: write failed", path);
    }
    return CM_OK;

nomem:
    free(key);
    free(k2);
    json_decref(vocab);
    return cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
}


int
cm_bpe_load_mem(cm_bpe_t **out, const char *vocab, size_t vlen,
    const char *merges, size_t mlen, char *err, size_t errlen)
{
    json_t        *root;
    json_error_t   je;
    const char    *key, *p, *end, *eol, *sp;
    json_t        *val;
    cm_bpe_t      *b;
    cm_strmap_t    tm;
    size_t         V, i, total = 0, ln = 0, la, lb;
    ssize_t        l, e;
    uint8_t       *buf = NULL, *cat = NULL;
    json_int_t     id;
    int32_t       *ids_of = NULL, r, ida, idb, idc;
    uint8_t       *merged = NULL;
    int            rc = CM_EFORMAT;
    size_t         cap_m = 0;

    cm_b2u_init();
    memset(&tm, 0, sizeof(tm));
    root = json_loadb(vocab, vlen, JSON_REJECT_DUPLICATES, &je);
    if (root == NULL || !json_is_object(root)) {
        json_decref(root);
        return cm_seterr(err, errlen, CM_EFORMAT, "vocab.json:%d: %s",
                         root == NULL ? je.line : 1,
                         root == NULL ? je.text : "not a JSON object");
    }
    V = json_object_size(root);
    if (V < 256 || V > (1u << 24)) {
        json_decref(root);
        return cm_seterr(err, errlen, CM_EFORMAT,
                         "vocab.json: %zu tokens (need 256..16M)", V);
    }
    b = calloc(1, sizeof(*b));
    ids_of = malloc(V * sizeof(int32_t));
    if (b == NULL || ids_of == NULL) {
        free(ids_of);
        free(b);
        json_decref(root);
        return cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
    }
    b->vocab_size = (int32_t) V;
    b->tok_off = calloc(V + 1, sizeof(uint32_t));
    b->special = calloc(V, 1);
    merged = calloc(V, 1);
    if (b->tok_off == NULL || b->special == NULL || merged == NULL) {
        rc = CM_ENOMEM;
        goto fail;
    }
    for (i = 0; i < V; i++) {
        ids_of[i] = -1;
    }
    /* pass 1: ids dense and unique, keys in the byte alphabet */
    json_object_foreach(root, key, val) {
        size_t kl = strlen(key);

        if (!json_is_integer(val)) {
            cm_seterr(err, errlen, CM_EFORMAT, "vocab.json: value of a"
                      " token is not an integer");
            goto fail;
        }
        id = json_integer_value(val);
        if (id < 0 || (size_t) id >= V || ids_of[id] != -1) {
            cm_seterr(err, errlen, CM_EFORMAT, "vocab.json: id %lld out of"
                      " range or repeated", (long long) id);
            goto fail;
        }
        ids_of[id] = 0;
        if (kl == 0) {
            cm_seterr(err, errlen, CM_EFORMAT, "vocab.json: empty token");
            goto fail;
        }
        total += kl;
    }
    buf = malloc(total + 1);
    b->tok_bytes = malloc(total + 1);
    if (buf == NULL || b->tok_bytes == NULL) {
        rc = CM_ENOMEM;
        goto fail;
    }
    /* pass 2: decode each token into its bytes, by id */
    {
        uint32_t *lens = calloc(V, sizeof(uint32_t));
        uint8_t  *tmp = malloc(total + 1);
        size_t    off = 0;

        if (lens == NULL || tmp == NULL) {
            free(lens);
            free(tmp);
            rc = CM_ENOMEM;
            goto fail;
        }
        /* first the lengths, then place by id */
        json_object_foreach(root, key, val) {
            id = json_integer_value(val);
            l = cm_u2b_str(key, strlen(key), buf);
            if (l <= 0) {
                free(lens);
                free(tmp);
                cm_seterr(err, errlen, CM_EFORMAT, "vocab.json: token %lld"
                          " has a character outside the byte alphabet",
                          (long long) id);
                goto fail;
            }
            lens[id] = (uint32_t) l;
        }
        for (i = 0; i < V; i++) {
            b->tok_off[i] = (uint32_t) off;
            off += lens[i];
        }
        b->tok_off[V] = (uint32_t) off;
        json_object_foreach(root, key, val) {
            id = json_integer_value(val);
            (void) cm_u2b_str(key, strlen(key),
                              b->tok_bytes + b->tok_off[id]);
        }
        free(lens);
        free(tmp);
    }
    json_decref(root);
    root = NULL;

    /* bytes -> id map; every single byte needs a token */
    for (i = 0; i < 256; i++) {
        b->byte_tok[i] = -1;
    }
    for (i = 0; i < V; i++) {
        size_t tl = b->tok_off[i + 1] - b->tok_off[i];

        e = cm_strmap_get(&tm, b->tok_bytes + b->tok_off[i], tl, 1);
        if (e < 0) {
            rc = CM_ENOMEM;
            goto fail;
        }
        if ((size_t) e != i) {
            cm_seterr(err, errlen, CM_EFORMAT, "vocab.json: token %zu"
                      " repeats token %zd", i, e);
            goto fail;
        }
        tm.ents[e].val = (int64_t) i;
        if (tl == 1) {
            b->byte_tok[b->tok_bytes[b->tok_off[i]]] = (int32_t) i;
        }
    }
    for (i = 0; i < 256; i++) {
        if (b->byte_tok[i] < 0) {
            cm_seterr(err, errlen, CM_EFORMAT, "vocab.json: no token for"
                      " byte 0x%02zx", i);
            goto fail;
        }
    }

    /* merges.txt */
    p = merges;
    end = merges + mlen;
    r = 0;
    while (p < end) {
        const char *line = p;
        const char *nl = memchr(p, '\n', (size_t) (end - p));

        eol = nl != NULL ? nl : end;
        p = nl != NULL ? nl + 1 : end;
        if (eol > line && eol[-1] == '\r') {
            eol--;
        }
        ln++;
        if (eol == line || (ln == 1 && *line == '#')) {
            continue;
        }
        sp = memchr(line, ' ', (size_t) (eol - line));
        if (sp == NULL || sp == line || sp + 1 >= eol
            || memchr(sp + 1, ' ', (size_t) (eol - sp - 1)) != NULL)
        {
            cm_seterr(err, errlen, CM_EFORMAT, "merges.txt:%zu: expected"
                      " two tokens separated by one space", ln);
            goto fail;
        }
        free(cat);
        cat = malloc((size_t) (eol - line) + 1);
        if (cat == NULL) {
            rc = CM_ENOMEM;
            goto fail;
        }
        l = cm_u2b_str(line, (size_t) (sp - line), cat);
        la = l > 0 ? (size_t) l : 0;
        l = l > 0 ? cm_u2b_str(sp + 1, (size_t) (eol - sp - 1), cat + la)
                  : -1;
        if (l <= 0) {
            cm_seterr(err, errlen, CM_EFORMAT, "merges.txt:%zu: character"
                      " outside the byte alphabet", ln);
            goto fail;
        }
        lb = (size_t) l;
        ida = (int32_t) cm_strmap_get(&tm, cat, la, 0);
        idb = (int32_t) cm_strmap_get(&tm, cat + la, lb, 0);
        idc = (int32_t) cm_strmap_get(&tm, cat, la + lb, 0);
        if (ida < 0 || idb < 0 || idc < 0) {
            cm_seterr(err, errlen, CM_EFORMAT, "merges.txt:%zu: %s not in"
                      " vocab.json", ln, ida < 0 || idb < 0 ? "a token"
                      : "the merged token");
            goto fail;
        }
        if ((size_t) r >= cap_m) {
            int32_t *na, *nb;

            cap_m = cap_m ? cap_m * 2 : 1024;
            na = realloc(b->merge_a, cap_m * sizeof(int32_t));
            if (na == NULL) {
                rc = CM_ENOMEM;
                goto fail;
            }
            b->merge_a = na;
            nb = realloc(b->merge_b, cap_m * sizeof(int32_t));
            if (nb == NULL) {
                rc = CM_ENOMEM;
                goto fail;
            }
            b->merge_b = nb;
        }
        b->merge_a[r] = ida;
        b->merge_b[r] = idb;
        merged[idc] = 1;
        /* remember the result id for the pair table */
        ids_of[idc] = r;
        r++;
    }
    b->n_merges = r;
    if (cm_bpe_build_pairs(b) != CM_OK) {
        rc = CM_ENOMEM;
        goto fail;
    }
    /* pair table ids: the token made by each merge */
    for (i = 0; i <= b->pair_mask; i++) {
        cm_bpe_pair_t *pp = &b->pairs[i];

        if (pp->key != CM_BPE_EMPTY) {
            int32_t xa = (int32_t) (pp->key >> 32);
            int32_t xb = (int32_t) (pp->key & 0xFFFFFFFF);
            size_t  l1 = b->tok_off[xa + 1] - b->tok_off[xa];
            size_t  l2 = b->tok_off[xb + 1] - b->tok_off[xb];
            uint8_t *c2 = malloc(l1 + l2);

            if (c2 == NULL) {
                rc = CM_ENOMEM;
                goto fail;
            }
            memcpy(c2, b->tok_bytes + b->tok_off[xa], l1);
            memcpy(c2 + l1, b->tok_bytes + b->tok_off[xb], l2);
            pp->id = (int32_t) cm_strmap_get(&tm, c2, l1 + l2, 0);
            free(c2);
        }
    }
    /* specials: <|...|> tokens that no merge makes and that are not bytes */
    for (i = 0; i < V; i++) {
        size_t         tl = b->tok_off[i + 1] - b->tok_off[i];
        const uint8_t *s = b->tok_bytes + b->tok_off[i];

        if (!merged[i] && tl > 4 && s[0] == '<' && s[1] == '|'
            && s[tl - 2] == '|' && s[tl - 1] == '>')
        {
            b->special[i] = 1;
        }
    }
    if (cm_bpe_compile(b, err, errlen) != CM_OK) {
        rc = CM_ERR;
        goto fail;
    }
    free(buf);
    free(cat);
    free(ids_of);
    free(merged);
    cm_strmap_free(&tm);
    *out = b;
    return CM_OK;

fail:
    if (rc == CM_ENOMEM) {
        cm_seterr(err, errlen, CM_ENOMEM, "out of memory");
    }
    json_decref(root);
    free(buf);
    free(cat);
    free(ids_of);
    free(merged);
    cm_strmap_free(&tm);
    cm_bpe_free(b);
    return rc;
}


int
cm_bpe_load(cm_bpe_t **out, const char *dir, char *err, size_t errlen)
{
    char    path[4096], *v = NULL, *m = NULL;
    size_t  vl, ml;
    int     rc;

    snprintf(path, sizeof(path), "%s/vocab.json", dir);
    rc = cm_file_read(path, &v, &vl, err, errlen);
    if (rc != CM_OK) {
        return rc;
    }
    snprintf(path, sizeof(path), "%s/merges.txt", dir);
    rc = cm_file_read(path, &m, &ml, err, errlen);
    if (rc != CM_OK) {
        free(v);
        return rc;
    }
    rc = cm_bpe_load_mem(out, v, vl, m, ml, err, errlen);
    free(v);
    free(m);
    return rc;
}


/* ---- streaming decode ------------------------------------------------- */

/* Bytes at the end of s[0..n) that start a UTF-8 character not yet
 * complete (0 when the end is a character boundary or plainly invalid). */
static size_t
cm_utf8_incomplete_tail(const uint8_t *s, size_t n)
{
    size_t  k, need;

    for (k = 1; k <= 3 && k <= n; k++) {
        uint8_t c = s[n - k];

        if ((c & 0xC0) == 0x80) {
            continue;               /* continuation: keep looking back */
        }
        need = (c >= 0xC2 && c <= 0xDF) ? 2
               : (c >= 0xE0 && c <= 0xEF) ? 3
               : (c >= 0xF0 && c <= 0xF4) ? 4 : 0;
        return need > k ? k : 0;
    }
    return 0;
}


size_t
cm_bpe_stream_push(const cm_bpe_t *b, cm_bpe_stream_t *st, int32_t id,
    char *out)
{
    const uint8_t *tb;
    size_t         len = 0, total, keep;
    uint8_t       *o = (uint8_t *) out;

    tb = cm_bpe_token(b, id, &len);
    if (tb == NULL) {
        len = 0;
    }
    memcpy(o, st->held, st->n);
    if (len > 0) {
        memcpy(o + st->n, tb, len);
    }
    total = st->n + len;
    keep = cm_utf8_incomplete_tail(o, total);
    memcpy(st->held, o + total - keep, keep);
    st->n = keep;
    return total - keep;
}


size_t
cm_bpe_stream_flush(cm_bpe_stream_t *st, char *out)
{
    size_t n = st->n;

    memcpy(out, st->held, n);
    st->n = 0;
    return n;
}

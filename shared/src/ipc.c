/*
 * ipc.c: the shared-memory slots, rings and doorbell records of the spine.
 * See cinematch/ipc.h for the layout and the slot state machine.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cinematch/common.h"
#include "cinematch/ipc.h"

_Static_assert(sizeof(cm_ipc_slot_t) == CM_IPC_SLOT_HDR_SIZE,
               "slot header must be 256 bytes");
_Static_assert(offsetof(cm_ipc_slot_t, ring_tail) % 64 == 0,
               "consumer index on its own cache line");
_Static_assert(sizeof(cm_ipc_header_t) <= CM_IPC_HEADER_SIZE,
               "header must fit one page");
_Static_assert(sizeof(cm_ipc_msg_t) == 8, "doorbells are 8 bytes");
_Static_assert(sizeof(cm_ipc_model_t) == 136,
               "the model table keeps its layout (role/share in the pad)");
_Static_assert(offsetof(cm_ipc_header_t, stats) == 2392,
               "the statistics block follows the model table");
_Static_assert(offsetof(cm_ipc_stats_t, itl_buckets) == 88,
               "statistics layout is part of the ABI");

const uint64_t  cm_ipc_itl_bounds_ns[CM_IPC_ITL_NBUCKETS] = {
    1000000ull, 2500000ull, 5000000ull, 10000000ull, 25000000ull,
    50000000ull, 100000000ull, 250000000ull, 500000000ull, 1000000000ull,
    2500000000ull, 10000000000ull
};

const char  *cm_ipc_itl_le[CM_IPC_ITL_NBUCKETS + 1] = {
    "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25",
    "0.5", "1", "2.5", "10", "+Inf"
};

static const char *cm_slot_state_names[] = {
    "free", "claimed", "submitted", "running", "done", "error", "cancelled"
};


static uint32_t
cm_pow2_ceil(uint32_t v)
{
    uint32_t p = 1;

    while (p < v && p < (1u << 30)) {
        p <<= 1;
    }
    return p;
}


static size_t
cm_ipc_slot_size(uint32_t req_cap, uint32_t res_cap, uint32_t ring_cap)
{
    return CM_ALIGN_UP((size_t) CM_IPC_SLOT_HDR_SIZE + req_cap + res_cap
                       + ring_cap, 64);
}


int
cm_ipc_create(cm_ipc_seg_t *seg, const char *name, const cm_ipc_config_t *cfg,
              char *err, size_t errlen)
{
    int               fd;
    size_t            total;
    uint32_t          ring_cap;
    cm_ipc_header_t  *hdr;

    memset(seg, 0, sizeof(*seg));
    if (name[0] != '/' || strlen(name) >= sizeof(seg->name)
        || strchr(name + 1, '/') != NULL)
    {
        return cm_seterr(err, errlen, CM_EINVAL,
                         "shm name must be \"/name\" (< 64 bytes): %s", name);
    }
    if (cfg->slot_count == 0 || cfg->slot_count > CM_IPC_MAX_SLOTS
        || cfg->req_cap < 64 || cfg->req_cap > (16u << 20)
        || cfg->res_cap < 64 || cfg->res_cap > (16u << 20)
        || cfg->ring_cap < 256 || cfg->ring_cap > (16u << 20))
    {
        return cm_seterr(err, errlen, CM_EINVAL, "ipc sizes out of range");
    }
    ring_cap = cm_pow2_ceil(cfg->ring_cap);

    total = CM_IPC_HEADER_SIZE
            + (size_t) cfg->slot_count
              * cm_ipc_slot_size(cfg->req_cap, cfg->res_cap, ring_cap);

    /* A stale segment from a crashed daemon is replaced, never reused: the
     * new generation tells nginx to re-map. */
    (void) shm_unlink(name);
    fd = shm_open(name, O_RDWR | O_CREAT | O_EXCL, 0660);
    if (fd < 0) {
        return cm_seterr(err, errlen, CM_EIO, "shm_open(%s): %s", name,
                         strerror(errno));
    }
    (void) fchmod(fd, 0660);   /* umask must not widen or narrow it */
    if (ftruncate(fd, (off_t) total) != 0) {
        cm_seterr(err, errlen, CM_EIO, "ftruncate(%s, %zu): %s", name, total,
                  strerror(errno));
        close(fd);
        shm_unlink(name);
        return CM_EIO;
    }
    seg->base = mmap(NULL, total, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (seg->base == MAP_FAILED) {
        seg->base = NULL;
        shm_unlink(name);
        return cm_seterr(err, errlen, CM_EIO, "mmap(%s): %s", name,
                         strerror(errno));
    }
    seg->size = total;
    seg->owner = 1;
    snprintf(seg->name, sizeof(seg->name), "%s", name);

    hdr = seg->base;   /* fresh pages are zero: every slot starts FREE */
    hdr->header_size = CM_IPC_HEADER_SIZE;
    hdr->slot_count = cfg->slot_count;
    hdr->req_cap = cfg->req_cap;
    hdr->res_cap = cfg->res_cap;
    hdr->ring_cap = ring_cap;
    hdr->slot_size = (uint32_t) cm_ipc_slot_size(cfg->req_cap, cfg->res_cap,
                                                 ring_cap);
    hdr->daemon_pid = (int32_t) getpid();
    hdr->generation = cm_now_real_ns();
    hdr->total_size = total;
    atomic_store(&hdr->heartbeat_ns, cm_now_mono_ns());
    snprintf(hdr->status, sizeof(hdr->status), "starting");
    hdr->stats.version = CM_IPC_STATS_VERSION;
    hdr->stats.size = (uint32_t) sizeof(cm_ipc_stats_t);
    hdr->stats.itl_nbuckets = CM_IPC_ITL_NBUCKETS;
    hdr->stats.magic = CM_IPC_STATS_MAGIC;
    hdr->abi_version = CM_IPC_ABI_VERSION;
    /* magic last: a reader that sees it sees a complete header */
    atomic_thread_fence(memory_order_release);
    hdr->magic = CM_IPC_MAGIC;
    seg->hdr = hdr;
    return CM_OK;
}


int
cm_ipc_validate_header(const cm_ipc_header_t *hdr, size_t mapped, char *err,
                       size_t errlen)
{
    uint64_t need;

    if (mapped < CM_IPC_HEADER_SIZE) {
        return cm_seterr(err, errlen, CM_EFORMAT, "segment too small (%zu)",
                         mapped);
    }
    if (hdr->magic != CM_IPC_MAGIC) {
        return cm_seterr(err, errlen, CM_EFORMAT, "bad magic 0x%08x",
                         hdr->magic);
    }
    if (hdr->abi_version != CM_IPC_ABI_VERSION) {
        return cm_seterr(err, errlen, CM_EFORMAT,
                         "ABI version %u, expected %u", hdr->abi_version,
                         CM_IPC_ABI_VERSION);
    }
    if (hdr->header_size != CM_IPC_HEADER_SIZE
        || hdr->slot_count == 0 || hdr->slot_count > CM_IPC_MAX_SLOTS
        || hdr->ring_cap < 256 || hdr->ring_cap > (16u << 20)
        || (hdr->ring_cap & (hdr->ring_cap - 1)) != 0
        || hdr->req_cap > (16u << 20) || hdr->res_cap > (16u << 20)
        || hdr->slot_size % 64 != 0
        || (uint64_t) hdr->slot_size < (uint64_t) CM_IPC_SLOT_HDR_SIZE
                                       + hdr->req_cap + hdr->res_cap
                                       + hdr->ring_cap)
    {
        return cm_seterr(err, errlen, CM_EFORMAT, "inconsistent slot sizes");
    }
    need = CM_IPC_HEADER_SIZE + (uint64_t) hdr->slot_count * hdr->slot_size;
    if (need > mapped || hdr->total_size != need) {
        return cm_seterr(err, errlen, CM_EFORMAT,
                         "segment is %zu bytes, header claims %llu", mapped,
                         (unsigned long long) need);
    }
    return CM_OK;
}


int
cm_ipc_attach(cm_ipc_seg_t *seg, const char *name, char *err, size_t errlen)
{
    int          fd, rc;
    struct stat  st;

    memset(seg, 0, sizeof(*seg));
    fd = shm_open(name, O_RDWR, 0);
    if (fd < 0) {
        return cm_seterr(err, errlen, errno == ENOENT ? CM_ENOTFOUND : CM_EIO,
                         "shm_open(%s): %s", name, strerror(errno));
    }
    if (fstat(fd, &st) != 0 || st.st_size < (off_t) CM_IPC_HEADER_SIZE) {
        close(fd);
        return cm_seterr(err, errlen, CM_EFORMAT, "%s: not initialised yet",
                         name);
    }
    seg->base = mmap(NULL, (size_t) st.st_size, PROT_READ | PROT_WRITE,
                     MAP_SHARED, fd, 0);
    close(fd);
    if (seg->base == MAP_FAILED) {
        seg->base = NULL;
        return cm_seterr(err, errlen, CM_EIO, "mmap(%s): %s", name,
                         strerror(errno));
    }
    seg->size = (size_t) st.st_size;
    atomic_thread_fence(memory_order_acquire);
    rc = cm_ipc_validate_header(seg->base, seg->size, err, errlen);
    if (rc != CM_OK) {
        munmap(seg->base, seg->size);
        seg->base = NULL;
        return rc;
    }
    seg->hdr = seg->base;
    snprintf(seg->name, sizeof(seg->name), "%s", name);
    return CM_OK;
}


void
cm_ipc_detach(cm_ipc_seg_t *seg)
{
    if (seg->base != NULL) {
        munmap(seg->base, seg->size);
        if (seg->owner) {
            shm_unlink(seg->name);
        }
    }
    memset(seg, 0, sizeof(*seg));
}


cm_ipc_slot_t *
cm_ipc_slot(const cm_ipc_seg_t *seg, uint32_t i)
{
    if (i >= seg->hdr->slot_count) {
        return NULL;
    }
    return (cm_ipc_slot_t *) ((uint8_t *) seg->base + CM_IPC_HEADER_SIZE
                              + (size_t) i * seg->hdr->slot_size);
}


uint8_t *
cm_ipc_slot_req(const cm_ipc_seg_t *seg, cm_ipc_slot_t *s)
{
    return (uint8_t *) s + CM_IPC_SLOT_HDR_SIZE;
}


uint8_t *
cm_ipc_slot_res(const cm_ipc_seg_t *seg, cm_ipc_slot_t *s)
{
    return (uint8_t *) s + CM_IPC_SLOT_HDR_SIZE + seg->hdr->req_cap;
}


uint8_t *
cm_ipc_slot_ring(const cm_ipc_seg_t *seg, cm_ipc_slot_t *s)
{
    return (uint8_t *) s + CM_IPC_SLOT_HDR_SIZE + seg->hdr->req_cap
           + seg->hdr->res_cap;
}


void
cm_ipc_partition(const cm_ipc_seg_t *seg, uint32_t worker, uint32_t nworkers,
                 uint32_t *first, uint32_t *count)
{
    uint32_t n = seg->hdr->slot_count, per;

    if (nworkers == 0 || nworkers > n) {
        /* more workers than slots: everyone shares the whole table */
        *first = 0;
        *count = n;
        return;
    }
    per = n / nworkers;
    *first = (worker % nworkers) * per;
    *count = (worker % nworkers == nworkers - 1) ? n - *first : per;
}


int
cm_ipc_slot_cas(cm_ipc_slot_t *s, uint32_t from, uint32_t to)
{
    return atomic_compare_exchange_strong_explicit(&s->state, &from, to,
                                                   memory_order_acq_rel,
                                                   memory_order_acquire);
}


uint32_t
cm_ipc_slot_state(const cm_ipc_slot_t *s)
{
    return atomic_load_explicit(&((cm_ipc_slot_t *) s)->state,
                                memory_order_acquire);
}


int64_t
cm_ipc_claim(const cm_ipc_seg_t *seg, uint32_t first, uint32_t count,
             uint32_t *hint, uint32_t owner_pid)
{
    uint32_t        i, idx, start;
    cm_ipc_slot_t  *s;

    if (count == 0 || first >= seg->hdr->slot_count) {
        return -1;
    }
    if (count > seg->hdr->slot_count - first) {
        count = seg->hdr->slot_count - first;
    }
    start = (hint != NULL) ? *hint % count : 0;

    for (i = 0; i < count; i++) {
        idx = first + (start + i) % count;
        s = cm_ipc_slot(seg, idx);
        if (cm_ipc_slot_state(s) != CM_SLOT_FREE
            || !cm_ipc_slot_cas(s, CM_SLOT_FREE, CM_SLOT_CLAIMED))
        {
            continue;
        }
        s->owner_pid = owner_pid;
        s->seq++;
        s->kind = CM_REQ_NONE;
        s->req_len = 0;
        s->res_len = 0;
        s->status = 0;
        atomic_store_explicit(&s->bell, 0, memory_order_relaxed);
        atomic_store_explicit(&s->ring_head, 0, memory_order_relaxed);
        atomic_store_explicit(&s->ring_tail, 0, memory_order_relaxed);
        atomic_store_explicit(&s->ring_closed, 0, memory_order_relaxed);
        if (hint != NULL) {
            *hint = (start + i + 1) % count;
        }
        return idx;
    }
    return -1;
}


int
cm_ipc_submit(const cm_ipc_seg_t *seg, cm_ipc_slot_t *s, uint32_t kind,
              const uint64_t *params, size_t nparams, const void *payload,
              size_t len)
{
    if (cm_ipc_slot_state(s) != CM_SLOT_CLAIMED) {
        return CM_EINVAL;
    }
    if (len > seg->hdr->req_cap || nparams > CM_IPC_NPARAMS
        || kind == CM_REQ_NONE)
    {
        return CM_EINVAL;
    }
    s->kind = kind;
    memset(s->params, 0, sizeof(s->params));
    if (nparams > 0) {
        memcpy(s->params, params, nparams * sizeof(uint64_t));
    }
    if (len > 0) {
        memcpy(cm_ipc_slot_req(seg, s), payload, len);
    }
    s->req_len = (uint32_t) len;
    s->submit_ns = cm_now_mono_ns();
    atomic_store_explicit(&s->prompt_tokens, 0, memory_order_relaxed);
    atomic_store_explicit(&s->completion_tokens, 0, memory_order_relaxed);
    /* release: the request is visible before the state says SUBMITTED */
    return cm_ipc_slot_cas(s, CM_SLOT_CLAIMED, CM_SLOT_SUBMITTED)
           ? CM_OK : CM_ECONFLICT;
}


int
cm_ipc_release(cm_ipc_slot_t *s)
{
    uint32_t st;

    for ( ;; ) {
        st = cm_ipc_slot_state(s);
        switch (st) {
        case CM_SLOT_CLAIMED:
        case CM_SLOT_SUBMITTED:
        case CM_SLOT_DONE:
        case CM_SLOT_ERROR:
            if (cm_ipc_slot_cas(s, st, CM_SLOT_FREE)) {
                /* a SUBMITTED slot may still have a SUBMIT doorbell on the
                 * wire; the daemon's SUBMITTED->RUNNING CAS will fail */
                return 0;
            }
            break;   /* lost a race with the daemon: look again */
        case CM_SLOT_RUNNING:
            if (cm_ipc_slot_cas(s, st, CM_SLOT_CANCELLED)) {
                return 1;
            }
            break;
        default:
            /* FREE or CANCELLED: already given up */
            return 0;
        }
    }
}


int
cm_ipc_finish(cm_ipc_slot_t *s, int status)
{
    s->status = status;
    atomic_store_explicit(&s->ring_closed, 1, memory_order_release);
    if (cm_ipc_slot_cas(s, CM_SLOT_RUNNING,
                        status == 0 ? CM_SLOT_DONE : CM_SLOT_ERROR))
    {
        return CM_OK;
    }
    /* nginx cancelled while we ran: the slot is ours to free */
    if (cm_ipc_slot_cas(s, CM_SLOT_CANCELLED, CM_SLOT_FREE)) {
        return CM_ECANCELED;
    }
    return CM_ECONFLICT;
}


int
cm_ipc_ring_put(const cm_ipc_seg_t *seg, cm_ipc_slot_t *s, const void *data,
                uint32_t len)
{
    uint32_t   cap = seg->hdr->ring_cap, mask = cap - 1, off, first;
    uint64_t   head, tail;
    uint8_t   *ring = cm_ipc_slot_ring(seg, s), lenb[4];

    if ((uint64_t) len + 4 > cap) {
        return CM_EINVAL;
    }
    head = atomic_load_explicit(&s->ring_head, memory_order_relaxed);
    tail = atomic_load_explicit(&s->ring_tail, memory_order_acquire);
    if (head - tail > cap || cap - (head - tail) < (uint64_t) len + 4) {
        return CM_EAGAIN;
    }

    memcpy(lenb, &len, 4);
    off = (uint32_t) (head & mask);
    first = cap - off < 4 ? cap - off : 4;
    memcpy(ring + off, lenb, first);
    memcpy(ring, lenb + first, 4 - first);

    off = (uint32_t) ((head + 4) & mask);
    first = cap - off < len ? cap - off : len;
    memcpy(ring + off, data, first);
    memcpy(ring, (const uint8_t *) data + first, len - first);

    atomic_store_explicit(&s->ring_head, head + 4 + len, memory_order_release);
    return CM_OK;
}


int64_t
cm_ipc_ring_get(const cm_ipc_seg_t *seg, cm_ipc_slot_t *s, void *buf,
                uint32_t cap_out)
{
    uint32_t        cap = seg->hdr->ring_cap, mask = cap - 1, off, first, len;
    uint64_t        head, tail;
    uint8_t         lenb[4];
    const uint8_t  *ring = cm_ipc_slot_ring(seg, s);

    head = atomic_load_explicit(&s->ring_head, memory_order_acquire);
    tail = atomic_load_explicit(&s->ring_tail, memory_order_relaxed);
    if (head == tail) {
        return CM_EAGAIN;
    }
    /* the writer is the other process: distrust every count */
    if (head < tail || head - tail > cap || head - tail < 4) {
        return CM_EFORMAT;
    }
    off = (uint32_t) (tail & mask);
    first = cap - off < 4 ? cap - off : 4;
    memcpy(lenb, ring + off, first);
    memcpy(lenb + first, ring, 4 - first);
    memcpy(&len, lenb, 4);
    if ((uint64_t) len + 4 > head - tail) {
        return CM_EFORMAT;
    }
    if (len > cap_out) {
        return CM_EFORMAT;
    }
    off = (uint32_t) ((tail + 4) & mask);
    first = cap - off < len ? cap - off : len;
    memcpy(buf, ring + off, first);
    memcpy((uint8_t *) buf + first, ring, len - first);

    atomic_store_explicit(&s->ring_tail, tail + 4 + len, memory_order_release);
    return len;
}


uint32_t
cm_ipc_ring_space(const cm_ipc_seg_t *seg, const cm_ipc_slot_t *s)
{
    uint64_t  head, tail, used;
    uint32_t  cap = seg->hdr->ring_cap;

    head = atomic_load_explicit(&((cm_ipc_slot_t *) s)->ring_head,
                                memory_order_relaxed);
    tail = atomic_load_explicit(&((cm_ipc_slot_t *) s)->ring_tail,
                                memory_order_acquire);
    used = head - tail;
    if (used > cap || cap - used <= 4) {
        return 0;
    }
    return (uint32_t) (cap - used - 4);
}


void
cm_ipc_ring_close(cm_ipc_slot_t *s)
{
    atomic_store_explicit(&s->ring_closed, 1, memory_order_release);
}


void
cm_ipc_set_models(cm_ipc_seg_t *seg, const cm_ipc_model_t *models, uint32_t n)
{
    uint32_t i;

    if (n > CM_IPC_MAX_MODELS) {
        n = CM_IPC_MAX_MODELS;
    }
    atomic_fetch_add(&seg->hdr->models_seq, 1);   /* odd: writing */
    for (i = 0; i < n; i++) {
        seg->hdr->models[i] = models[i];
        seg->hdr->models[i].name[sizeof(models[i].name) - 1] = '\0';
        seg->hdr->models[i].version[sizeof(models[i].version) - 1] = '\0';
        seg->hdr->models[i].sha256[sizeof(models[i].sha256) - 1] = '\0';
    }
    atomic_store(&seg->hdr->nmodels, n);
    atomic_fetch_add(&seg->hdr->models_seq, 1);   /* even: stable */
}


uint32_t
cm_ipc_get_models(const cm_ipc_seg_t *seg, cm_ipc_model_t *out, uint32_t cap)
{
    uint32_t  seq0, seq1, n, i, tries;

    for (tries = 0; tries < 100; tries++) {
        seq0 = atomic_load(&seg->hdr->models_seq);
        if (seq0 & 1) {
            continue;
        }
        n = atomic_load(&seg->hdr->nmodels);
        if (n > CM_IPC_MAX_MODELS) {
            n = CM_IPC_MAX_MODELS;
        }
        if (n > cap) {
            n = cap;
        }
        for (i = 0; i < n; i++) {
            out[i] = seg->hdr->models[i];
        }
        atomic_thread_fence(memory_order_acquire);
        seq1 = atomic_load(&seg->hdr->models_seq);
        if (seq0 == seq1) {
            for (i = 0; i < n; i++) {   /* never trust the terminators */
                out[i].name[sizeof(out[i].name) - 1] = '\0';
                out[i].version[sizeof(out[i].version) - 1] = '\0';
                out[i].sha256[sizeof(out[i].sha256) - 1] = '\0';
            }
            return n;
        }
    }
    return 0;
}


void
cm_ipc_stats_observe_itl(cm_ipc_seg_t *seg, uint64_t ns)
{
    uint32_t         b;
    cm_ipc_stats_t  *st = &seg->hdr->stats;

    for (b = 0; b < CM_IPC_ITL_NBUCKETS; b++) {
        if (ns <= cm_ipc_itl_bounds_ns[b]) {
            break;
        }
    }
    atomic_fetch_add_explicit(&st->itl_buckets[b], 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&st->itl_sum_ns, ns, memory_order_relaxed);
}


int
cm_ipc_stats_read(const cm_ipc_seg_t *seg, cm_ipc_stats_snapshot_t *out)
{
    uint32_t         b;
    cm_ipc_stats_t  *st = &seg->hdr->stats;

    memset(out, 0, sizeof(*out));
    if (st->magic != CM_IPC_STATS_MAGIC) {
        return CM_ENOTFOUND;
    }
    /* a later version may only append: accept it when it is larger and
     * keeps our bucket layout; never read past what we know */
    if (st->version < 1
        || st->size < CM_IPC_STATS_V1_SIZE
        || st->size > CM_IPC_HEADER_SIZE - offsetof(cm_ipc_header_t, stats)
        || st->itl_nbuckets != CM_IPC_ITL_NBUCKETS)
    {
        return CM_EFORMAT;
    }
    out->running_seqs = atomic_load_explicit(&st->running_seqs,
                                             memory_order_relaxed);
    out->waiting_seqs = atomic_load_explicit(&st->waiting_seqs,
                                             memory_order_relaxed);
    out->max_seqs = atomic_load_explicit(&st->max_seqs, memory_order_relaxed);
    out->kv_used_tokens = atomic_load_explicit(&st->kv_used_tokens,
                                               memory_order_relaxed);
    out->kv_cap_tokens = atomic_load_explicit(&st->kv_cap_tokens,
                                              memory_order_relaxed);
    if (out->kv_used_tokens > out->kv_cap_tokens) {
        out->kv_used_tokens = out->kv_cap_tokens;   /* torn or hostile */
    }
    out->prompt_tokens = atomic_load_explicit(&st->prompt_tokens,
                                              memory_order_relaxed);
    out->completion_tokens = atomic_load_explicit(&st->completion_tokens,
                                                  memory_order_relaxed);
    out->cancellations = atomic_load_explicit(&st->cancellations,
                                              memory_order_relaxed);
    out->queue_rejections = atomic_load_explicit(&st->queue_rejections,
                                                 memory_order_relaxed);
    out->itl_sum_ns = atomic_load_explicit(&st->itl_sum_ns,
                                           memory_order_relaxed);
    for (b = 0; b <= CM_IPC_ITL_NBUCKETS; b++) {
        out->itl_buckets[b] = atomic_load_explicit(&st->itl_buckets[b],
                                                   memory_order_relaxed);
        out->itl_count += out->itl_buckets[b];
    }
    if (st->version >= 2 && st->size >= sizeof(cm_ipc_stats_t)) {
        out->has_answer_cache = 1;
        out->answer_cache_hits = atomic_load_explicit(&st->answer_cache_hits,
                                                      memory_order_relaxed);
        out->answer_cache_misses =
            atomic_load_explicit(&st->answer_cache_misses,
                                 memory_order_relaxed);
        out->answer_cache_entries =
            atomic_load_explicit(&st->answer_cache_entries,
                                 memory_order_relaxed);
    }
    return CM_OK;
}


const char *
cm_slot_state_name(uint32_t state)
{
    return state < CM_SLOT_NSTATES ? cm_slot_state_names[state] : "invalid";
}


void
cm_ipc_default_names(const char *id, char *shm, size_t shmlen, char *sock,
                     size_t socklen, const char *rundir)
{
    snprintf(shm, shmlen, "/cinematch-infer-%s", id);
    snprintf(sock, socklen, "%s/cinematch-infer-%s.sock",
             rundir != NULL ? rundir : "/run/cinematch", id);
}

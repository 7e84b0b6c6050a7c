/*
 * cinematch/ipc.h: the spine between nginx workers and `cinematch infer`.
 *
 * The daemon owns a named POSIX shm segment ("/cinematch-infer-<id>") and a
 * unix stream socket.  nginx workers map the segment and keep one
 * connection to the socket.  Bulk data lives in the segment; the socket
 * carries only 8-byte doorbells (cm_ipc_msg_t).
 *
 * Segment layout (all fields little-endian, the segment is only ever shared
 * on one host):
 *
 *     offset 0      cm_ipc_header_t   (one 4096-byte page)
 *     offset 4096   slot 0            (slot_size bytes, 64-byte aligned)
 *                   slot 1 ...
 *
 * Each slot: cm_ipc_slot_t (256 bytes) | request payload (req_cap) |
 *            result area (res_cap) | stream ring data (ring_cap, 2^n).
 *
 * Slot state machine (one atomic word, transitions by CAS only):
 *
 *   FREE --nginx claim--> CLAIMED --nginx writes request--> SUBMITTED
 *   SUBMITTED --daemon--> RUNNING --daemon--> DONE | ERROR
 *   DONE | ERROR | SUBMITTED --nginx release--> FREE
 *   RUNNING --nginx cancel--> CANCELLED --daemon stops--> FREE
 *
 * The state says who owns the slot: nginx owns CLAIMED, DONE, ERROR (and
 * may revoke SUBMITTED); the daemon owns RUNNING and CANCELLED.  Because a
 * cancel turns RUNNING into CANCELLED by CAS, the daemon's final
 * RUNNING->DONE CAS fails after a cancel and it frees the slot itself:
 * no slot is ever leaked or freed twice.  Slots are partitioned by nginx
 * worker (cm_ipc_partition) so claims rarely contend, but the CAS keeps
 * them correct even when partitions overlap (e.g. during an nginx reload).
 *
 * Streams: the daemon writes records [u32 len][len bytes] into the slot's
 * single-producer/single-consumer ring; nginx reads them.  A full ring
 * pauses that sequence (nothing dropped).  The daemon rings READY at most
 * once per drain: it sets slot->bell and sends a READY doorbell only when
 * bell was 0; nginx clears bell before reading.
 *
 * Trust: each side validates what the other wrote (kinds, lengths,
 * offsets, slot numbers) before use; cm_ipc_attach() checks the header
 * against the real size of the segment.
 *
 * Serving statistics: the header ends with cm_ipc_stats_t, the daemon's
 * gauges and counters for /metrics (running and waiting generations, KV
 * cache use, tokens, cancellations, inter-token latency).  It carries its
 * own magic, version, size and bucket count, so the ABI version did not
 * change: a daemon that predates it leaves those bytes zero and readers
 * (cm_ipc_stats_read) report "no statistics" instead of misreading them.
 * Only the daemon writes the block; counters restart at zero with each
 * daemon generation (Prometheus treats that as a counter reset).
 */
#ifndef CINEMATCH_IPC_H
#define CINEMATCH_IPC_H

#include <stddef.h>
#include <stdint.h>
#include <stdatomic.h>

#define CM_IPC_MAGIC          0x50494d43u   /* "CMIP" */
#define CM_IPC_ABI_VERSION    1u
#define CM_IPC_HEADER_SIZE    4096u
#define CM_IPC_SLOT_HDR_SIZE  256u
#define CM_IPC_MAX_MODELS     16
#define CM_IPC_MAX_SLOTS      4096
#define CM_IPC_NPARAMS        8

/* Defaults; the daemon may choose others, the header records them. */
#define CM_IPC_DEFAULT_SLOTS     256
#define CM_IPC_DEFAULT_REQ_CAP   (16 * 1024)
#define CM_IPC_DEFAULT_RES_CAP   (64 * 1024)
#define CM_IPC_DEFAULT_RING_CAP  (16 * 1024)

/* A heartbeat older than this means the daemon is hung or gone. */
#define CM_IPC_HEARTBEAT_STALE_NS  (2ull * 1000000000ull)

typedef enum {
    CM_SLOT_FREE = 0,
    CM_SLOT_CLAIMED,
    CM_SLOT_SUBMITTED,
    CM_SLOT_RUNNING,
    CM_SLOT_DONE,
    CM_SLOT_ERROR,
    CM_SLOT_CANCELLED,
    CM_SLOT_NSTATES
} cm_slot_state_t;

/* Request kinds.  Parameters and payload per kind are documented here. */
typedef enum {
    CM_REQ_NONE = 0,
    CM_REQ_ECHO = 1,         /* payload → result (same bytes) */
    CM_REQ_ECHO_STREAM = 2,  /* params[0] = chunks (1..10000),
                                params[1] = delay between chunks in µs
                                (0..10 s); each chunk is one ring record
                                holding the payload */

    /* recsys kinds: whole answers, the result is a JSON object (API.md)
     * and ERROR carries a one-line reason: status CM_ENOTFOUND (unknown
     * movie), CM_EINVAL (bad parameters), CM_EAGAIN (no model loaded or
     * draining).  User ids are rating-space ids, movie ids MovieLens ids. */
    CM_REQ_RECOMMEND = 10,   /* params: [0] user (0 = none), [1] k 1..100,
                                [2] flags (CM_REC_*), [3] year_min (0 =
                                open), [4] year_max (0 = open); payload:
                                genre names, comma-separated (may be empty) */
    CM_REQ_SIMILAR = 11,     /* params: [0] movie, [1] k 1..100 */
    CM_REQ_POPULAR = 12,     /* params: [0] k 1..100; payload: genres */
    CM_REQ_PREDICT = 13,     /* params: [0] user; payload: int32 movie ids
                                (1..1000) */
    CM_REQ_FOLD_IN = 14,     /* params: [0] user; payload: (int32 movie,
                                float rating) pairs, 1..1000; result
                                {"user_id", "folded": n} */

    /* dialog: a stream of text records, then a JSON result
     * {"finish_reason": "stop"|"length", "usage": {"prompt_tokens",
     * "completion_tokens"}, "model_version"}.  ERROR status CM_EAGAIN
     * means no model or no room (retry), CM_EINVAL a bad request. */
    CM_REQ_CHAT = 20,        /* params: [0] max_tokens 1..1024, [1]
                                temperature x1000 (0..2000), [2] top_k
                                (0..1000), [3] top_p x1000 (1..1000), [4]
                                seed, [5] repetition penalty x1000 (0 =
                                default, else 1000..2000); payload: u32
                                nturns (1..64), nturns x (u32 len, bytes),
                                u32 nstops (0..4), nstops x (u32 len,
                                bytes 1..64); lengths little-endian */
    CM_REQ_KIND_MAX
} cm_req_kind_t;

#define CM_REC_EXCLUDE_SEEN  0x1u
/* RECOMMEND: answer "<request log members>\n<JSON answer>" (see
 * cm_rs_rec_req_t.log_members); a daemon without it answers plain JSON */
#define CM_REC_LOG_MEMBERS   0x2u

/* Doorbell operations: 8 bytes on the socket, native endianness. */
typedef enum {
    CM_MSG_SUBMIT = 1,   /* nginx → daemon: slot is SUBMITTED */
    CM_MSG_CANCEL = 2,   /* nginx → daemon: slot was CANCELLED */
    CM_MSG_READY  = 3    /* daemon → nginx: slot has ring data or is final */
} cm_msg_op_t;

typedef struct {
    uint32_t  op;        /* cm_msg_op_t */
    uint32_t  slot;      /* slot index, validated < slot_count */
} cm_ipc_msg_t;

/* A served model, 136 bytes.  A model may be listed twice: its production
 * version (role SERVING) and a canary beside it (role CANARY) that serves
 * the users whose cinematch/canary.h bucket is below share_bp.  Older
 * daemons wrote zeros past the digest: role SERVING, as they meant. */
#define CM_IPC_ROLE_SERVING   0u
#define CM_IPC_ROLE_CANARY    1u

typedef struct {
    char      name[32];      /* 0   "recsys", "dialog", NUL-terminated */
    char      version[32];   /* 32  registry version, NUL-terminated */
    char      sha256[68];    /* 64  hex digest of the artifact, NUL-term. */
    uint16_t  role;          /* 132 CM_IPC_ROLE_* */
    uint16_t  share_bp;      /* 134 canary: basis points of users, 0..10000 */
} cm_ipc_model_t;

#define CM_IPC_STATS_MAGIC    0x54534d43u   /* "CMST" */
#define CM_IPC_STATS_VERSION  2u            /* 2: + the answer cache */
#define CM_IPC_ITL_NBUCKETS   12            /* finite bounds; +Inf extra */

/* Inter-token latency bucket upper bounds, ns, and the same bounds as
 * Prometheus "le" labels (seconds). */
extern const uint64_t  cm_ipc_itl_bounds_ns[CM_IPC_ITL_NBUCKETS];
extern const char     *cm_ipc_itl_le[CM_IPC_ITL_NBUCKETS + 1];

/* The daemon's serving statistics, at the end of the header page.
 * Gauges are stored, counters only grow; all are atomics because nginx
 * reads them while the daemon writes. */
typedef struct {
    uint32_t          magic;          /* 0   CM_IPC_STATS_MAGIC; 0 = none */
    uint32_t          version;        /* 4   CM_IPC_STATS_VERSION */
    uint32_t          size;           /* 8   sizeof(cm_ipc_stats_t) */
    uint32_t          itl_nbuckets;   /* 12  CM_IPC_ITL_NBUCKETS */
    _Atomic uint32_t  running_seqs;   /* 16  generations decoding (gauge) */
    _Atomic uint32_t  waiting_seqs;   /* 20  admitted, waiting for a KV
                                             cache (gauge) */
    _Atomic uint32_t  max_seqs;       /* 24  KV caches in the pool; 0 = no
                                             dialog model (gauge) */
    uint32_t          reserved0;      /* 28 */
    _Atomic uint64_t  kv_used_tokens; /* 32  tokens held in KV caches */
    _Atomic uint64_t  kv_cap_tokens;  /* 40  max_seqs x context */
    _Atomic uint64_t  prompt_tokens;  /* 48  prefilled, total */
    _Atomic uint64_t  completion_tokens; /* 56 generated, total */
    _Atomic uint64_t  cancellations;  /* 64  generations cancelled */
    _Atomic uint64_t  queue_rejections; /* 72 refused: wait queue full */
    _Atomic uint64_t  itl_sum_ns;     /* 80  sum of inter-token gaps */
    _Atomic uint64_t  itl_buckets[CM_IPC_ITL_NBUCKETS + 1];
                                      /* 88  per bucket, not cumulative */
    /* version 2 (a reader checks size before reading these): the recsys
     * answer cache of the production model, per model version */
    _Atomic uint64_t  answer_cache_hits;    /* 192 */
    _Atomic uint64_t  answer_cache_misses;  /* 200 */
    _Atomic uint64_t  answer_cache_entries; /* 208 answers held (gauge) */
} cm_ipc_stats_t;

/* what a version 1 daemon wrote: everything before the answer cache */
#define CM_IPC_STATS_V1_SIZE  offsetof(cm_ipc_stats_t, answer_cache_hits)

/* A consistent-enough copy for rendering (each word read once). */
typedef struct {
    uint32_t  running_seqs;
    uint32_t  waiting_seqs;
    uint32_t  max_seqs;
    uint64_t  kv_used_tokens;         /* clamped to kv_cap_tokens */
    uint64_t  kv_cap_tokens;
    uint64_t  prompt_tokens;
    uint64_t  completion_tokens;
    uint64_t  cancellations;
    uint64_t  queue_rejections;
    uint64_t  itl_sum_ns;
    uint64_t  itl_buckets[CM_IPC_ITL_NBUCKETS + 1];
    uint64_t  itl_count;              /* sum of itl_buckets */
    int       has_answer_cache;       /* the daemon writes the next three */
    uint64_t  answer_cache_hits;
    uint64_t  answer_cache_misses;
    uint64_t  answer_cache_entries;
} cm_ipc_stats_snapshot_t;

/* The first page.  Written by the daemon; read-only for nginx except for
 * nothing: nginx never writes the header. */
typedef struct {
    uint32_t          magic;          /* 0   CM_IPC_MAGIC */
    uint32_t          abi_version;    /* 4   CM_IPC_ABI_VERSION */
    uint32_t          header_size;    /* 8   CM_IPC_HEADER_SIZE */
    uint32_t          slot_count;     /* 12  number of slots */
    uint32_t          slot_size;      /* 16  bytes per slot, multiple of 64 */
    uint32_t          req_cap;        /* 20  request payload bytes per slot */
    uint32_t          res_cap;        /* 24  result bytes per slot */
    uint32_t          ring_cap;       /* 28  ring bytes per slot, power of 2 */
    int32_t           daemon_pid;     /* 32 */
    uint32_t          reserved0;      /* 36 */
    uint64_t          generation;     /* 40  wall-clock ns at daemon start */
    uint64_t          total_size;     /* 48  bytes of the whole segment */
    _Atomic uint64_t  heartbeat_ns;   /* 56  CLOCK_MONOTONIC, ≥ 10 Hz */
    _Atomic uint32_t  ready;          /* 64  1 once models are loaded */
    _Atomic uint32_t  queue_depth;    /* 68  SUBMITTED + RUNNING slots */
    _Atomic uint32_t  nmodels;        /* 72  entries valid in models[] */
    _Atomic uint32_t  models_seq;     /* 76  odd while models[] changes */
    _Atomic uint64_t  requests_total; /* 80  requests finished */
    char              status[128];    /* 88  human text: why not ready */
    cm_ipc_model_t    models[CM_IPC_MAX_MODELS]; /* 216 */
    cm_ipc_stats_t    stats;          /* 2392 serving statistics */
} cm_ipc_header_t;

/* Slot header, 256 bytes, at the start of every slot. */
typedef struct {
    _Atomic uint32_t  state;          /* 0   cm_slot_state_t */
    _Atomic uint32_t  bell;           /* 4   1 = a READY is in flight */
    uint32_t          owner_pid;      /* 8   nginx worker that claimed it */
    uint32_t          seq;            /* 12  claim counter, for logs */
    uint32_t          kind;           /* 16  cm_req_kind_t */
    uint32_t          req_len;        /* 20  bytes of payload, ≤ req_cap */
    int32_t           status;         /* 24  0 or CM_E* (ERROR state) */
    uint32_t          res_len;        /* 28  bytes of result, ≤ res_cap */
    uint64_t          params[CM_IPC_NPARAMS]; /* 32  kind-specific */
    uint64_t          submit_ns;      /* 96  CLOCK_MONOTONIC at submit */
    _Atomic uint64_t  ring_head;      /* 104 bytes ever written (daemon) */
    uint8_t           pad0[64 - (112 % 64)];
    _Atomic uint64_t  ring_tail;      /* 128 bytes ever read (nginx) */
    _Atomic uint32_t  ring_closed;    /* 136 1 = no more records */
    /* CHAT progress, written by the daemon as it goes (0 at submit), so a
     * generation cancelled before its result still has token counts */
    _Atomic uint32_t  prompt_tokens;  /* 140 prefilled */
    _Atomic uint32_t  completion_tokens; /* 144 sampled so far */
    uint8_t           pad1[CM_IPC_SLOT_HDR_SIZE - 148];
} cm_ipc_slot_t;

/* A mapping of a segment, as either side sees it. */
typedef struct {
    void              *base;
    size_t             size;
    cm_ipc_header_t   *hdr;
    int                owner;         /* 1 in the daemon (unlinks on close) */
    char               name[64];
} cm_ipc_seg_t;

typedef struct {
    uint32_t  slot_count;
    uint32_t  req_cap;
    uint32_t  res_cap;
    uint32_t  ring_cap;               /* rounded up to a power of two */
} cm_ipc_config_t;

/* ---- segment lifetime ---- */

/* Daemon: create (replacing any stale segment of the same name) mode 0660. */
int cm_ipc_create(cm_ipc_seg_t *seg, const char *name,
                  const cm_ipc_config_t *cfg, char *err, size_t errlen);
/* nginx: map an existing segment read-write and validate its header. */
int cm_ipc_attach(cm_ipc_seg_t *seg, const char *name, char *err,
                  size_t errlen);
/* Validate a header against the real mapping size (used by attach; exposed
 * for tests and fuzzing). */
int cm_ipc_validate_header(const cm_ipc_header_t *hdr, size_t mapped,
                           char *err, size_t errlen);
void cm_ipc_detach(cm_ipc_seg_t *seg);

/* ---- slots ---- */

cm_ipc_slot_t *cm_ipc_slot(const cm_ipc_seg_t *seg, uint32_t i);
uint8_t *cm_ipc_slot_req(const cm_ipc_seg_t *seg, cm_ipc_slot_t *s);
uint8_t *cm_ipc_slot_res(const cm_ipc_seg_t *seg, cm_ipc_slot_t *s);
uint8_t *cm_ipc_slot_ring(const cm_ipc_seg_t *seg, cm_ipc_slot_t *s);

/* The slot range [*first, *first + *count) that worker `worker` of
 * `nworkers` claims from. */
void cm_ipc_partition(const cm_ipc_seg_t *seg, uint32_t worker,
                      uint32_t nworkers, uint32_t *first, uint32_t *count);

/* Atomic transition from → to; returns 1 on success. */
int cm_ipc_slot_cas(cm_ipc_slot_t *s, uint32_t from, uint32_t to);
uint32_t cm_ipc_slot_state(const cm_ipc_slot_t *s);

/* nginx: claim a FREE slot in [first, first+count), scanning from *hint.
 * Returns the index or -1 (all busy).  The slot is CLAIMED, ring reset. */
int64_t cm_ipc_claim(const cm_ipc_seg_t *seg, uint32_t first, uint32_t count,
                     uint32_t *hint, uint32_t owner_pid);
/* nginx: fill the request of a CLAIMED slot and publish it (SUBMITTED). */
int cm_ipc_submit(const cm_ipc_seg_t *seg, cm_ipc_slot_t *s, uint32_t kind,
                  const uint64_t *params, size_t nparams,
                  const void *payload, size_t len);
/* nginx: give a slot up.  From CLAIMED/SUBMITTED/DONE/ERROR it becomes
 * FREE; from RUNNING it becomes CANCELLED (the daemon frees it).  Returns 1
 * when the caller should send a CANCEL doorbell. */
int cm_ipc_release(cm_ipc_slot_t *s);

/* daemon: finish a RUNNING slot.  status 0 → DONE, else ERROR.  Returns 0,
 * or CM_ECANCELED when nginx had cancelled (the slot is then FREE). */
int cm_ipc_finish(cm_ipc_slot_t *s, int status);

/* ---- stream ring: records of [u32 len][bytes] ---- */

/* daemon: append one record; CM_EAGAIN when it does not fit now,
 * CM_EINVAL when it can never fit (len + 4 > ring_cap). */
int cm_ipc_ring_put(const cm_ipc_seg_t *seg, cm_ipc_slot_t *s,
                    const void *data, uint32_t len);
/* nginx: take the next record into buf (cap bytes).  Returns its length,
 * CM_EAGAIN when none is complete yet, CM_EFORMAT when the ring holds
 * garbage (bad length from a confused writer). */
int64_t cm_ipc_ring_get(const cm_ipc_seg_t *seg, cm_ipc_slot_t *s,
                        void *buf, uint32_t cap);
/* daemon: the largest record payload that fits the ring right now. */
uint32_t cm_ipc_ring_space(const cm_ipc_seg_t *seg, const cm_ipc_slot_t *s);
/* daemon: mark that no more records follow. */
void cm_ipc_ring_close(cm_ipc_slot_t *s);

/* daemon: publish the loaded model table (seqlock on models_seq). */
void cm_ipc_set_models(cm_ipc_seg_t *seg, const cm_ipc_model_t *models,
                       uint32_t n);
/* nginx: copy a consistent model table; returns the count. */
uint32_t cm_ipc_get_models(const cm_ipc_seg_t *seg, cm_ipc_model_t *out,
                           uint32_t cap);

/* ---- serving statistics (see cm_ipc_stats_t) ---- */

/* daemon: one inter-token gap into the histogram. */
void cm_ipc_stats_observe_itl(cm_ipc_seg_t *seg, uint64_t ns);
/* nginx: copy the daemon's statistics.  CM_ENOTFOUND when the daemon
 * publishes none (older daemon), CM_EFORMAT for a version, size or bucket
 * count this reader does not know. */
int cm_ipc_stats_read(const cm_ipc_seg_t *seg, cm_ipc_stats_snapshot_t *out);

const char *cm_slot_state_name(uint32_t state);

/* Default segment and socket names for daemon id `id`. */
void cm_ipc_default_names(const char *id, char *shm, size_t shmlen,
                          char *sock, size_t socklen, const char *rundir);

#endif /* CINEMATCH_IPC_H */

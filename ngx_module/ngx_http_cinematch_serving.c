
/*
 * ngx_http_cinematch_serving.c: response cache, request log and model
 * reload for the recommendation endpoints (see the header).
 *
 *   http {
 *       cinematch_cache_ttl            30s;   # 0: no cache (the default)
 *       cinematch_request_log          on;    # default off
 *       cinematch_request_log_queue    4096;  # entries per worker
 *       cinematch_request_log_flush    1s;
 *   }
 *
 * Cache keys (Redis):
 *
 *   cmc:gen:<user>                                INCRed by a fold-in
 *   cmc2:<version>.<sha12>:<endpoint>:<params>    "<gen>\n<log members>\n
 *                                                  <answer>", EX ttl
 *
 * A lookup is one MGET of the user's generation and the entry (no script:
 * a plain MGET costs Redis a tenth of the EVAL it replaces), and the entry
 * counts only when the generation it was stored under is the current one.
 * The answer of a miss is stored with the generation the lookup saw, and
 * only when the daemon answered with the version the key names: an answer
 * computed before a fold-in carries the old generation and is never
 * served, and an answer of a model swapped in meanwhile is not stored
 * under the old model's key.
 *
 * Counters live in a shared zone of their own ("cinematch_serving"), so
 * that every worker counts into the same numbers.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_cinematch.h"
#include "ngx_http_cinematch_infer.h"
#include "ngx_http_cinematch_serving.h"
#include "cinematch/canary.h"


#define NGX_HTTP_CINEMATCH_SERVING_TAG_LEN  (32 + 1 + 12)
#define NGX_HTTP_CINEMATCH_RELOAD_POLL      50
#define NGX_HTTP_CINEMATCH_RELOAD_WAIT      3000


typedef struct {
    time_t                               cache_ttl;     /* 0: off */
    ngx_flag_t                           request_log;
    ngx_uint_t                           log_queue;
    ngx_msec_t                           log_flush;
    ngx_shm_zone_t                      *zone;
} ngx_http_cinematch_serving_conf_t;


typedef struct {
    ngx_atomic_t                         hits[NGX_HTTP_CINEMATCH_EP_N];
    ngx_atomic_t                         misses[NGX_HTTP_CINEMATCH_EP_N];
    ngx_atomic_t                         cache_errors;
    ngx_atomic_t                         log_written;
    ngx_atomic_t                         log_dropped;
} ngx_http_cinematch_serving_sh_t;


/* a request's cache state (the module's ctx) */
typedef struct {
    ngx_uint_t                           endpoint;
    ngx_str_t                            key;       /* without the gen */
    ngx_str_t                            version;   /* the key's model */
    ngx_str_t                            gen;
    ngx_http_cinematch_serving_next_pt   next;
    void                                *data;
    ngx_str_t                            fragment;  /* for the log */
    const char                          *cache_hit; /* "true", ... */
    unsigned                             looked_up:1;
    unsigned                             missed:1;
    unsigned                             hit:1;
} ngx_http_cinematch_serving_ctx_t;


typedef struct {
    ngx_http_cinematch_serving_next_pt   next;
    void                                *data;
} ngx_http_cinematch_serving_then_t;


typedef enum {
    ngx_http_cinematch_log_down = 0,
    ngx_http_cinematch_log_connecting,
    ngx_http_cinematch_log_idle,
    ngx_http_cinematch_log_busy
} ngx_http_cinematch_log_state_e;


/* per worker: the queue and its own PostgreSQL connection */
typedef struct {
    ngx_http_cinematch_serving_conf_t   *smcf;
    ngx_http_cinematch_main_conf_t      *mcf;
    ngx_log_t                           *log;
    u_char                              *buf;        /* "[" entry,entry... */
    size_t                               len;
    size_t                               cap;
    ngx_uint_t                           count;      /* entries in buf */
    ngx_uint_t                           inflight;   /* entries sent */
    ngx_uint_t                           failed;     /* in this batch */
    PGconn                              *pg;
    ngx_connection_t                    *c;
    ngx_http_cinematch_log_state_e       state;
    ngx_event_t                          flush;      /* the period */
    ngx_event_t                          timeout;    /* connect, query */
} ngx_http_cinematch_log_t;


/* POST /api/v1/admin/reload waiting for the daemons to republish */
typedef struct {
    ngx_http_request_t                  *request;
    ngx_event_t                          poll;
    ngx_msec_t                           deadline;
    uint32_t                             seq[NGX_HTTP_CINEMATCH_MAX_INFER];
    char                                 note[64];
} ngx_http_cinematch_reload_t;


static void *ngx_http_cinematch_serving_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_cinematch_serving_init_main_conf(ngx_conf_t *cf,
    void *conf);
static ngx_int_t ngx_http_cinematch_serving_postconf(ngx_conf_t *cf);
static ngx_int_t ngx_http_cinematch_serving_init_zone(
    ngx_shm_zone_t *shm_zone, void *data);
static ngx_int_t ngx_http_cinematch_serving_init_process(ngx_cycle_t *cycle);
static void ngx_http_cinematch_serving_exit_process(ngx_cycle_t *cycle);

static ngx_http_cinematch_serving_sh_t *ngx_http_cinematch_serving_sh(void);
static ngx_uint_t ngx_http_cinematch_cache_bypass(ngx_http_request_t *r);
static ngx_int_t ngx_http_cinematch_serving_tag(u_char *tag, size_t *len,
    ngx_str_t *version, ngx_pool_t *pool, ngx_uint_t endpoint, int64_t user);
static ngx_int_t ngx_http_cinematch_cache_looked_up(ngx_http_request_t *r,
    void *data, redisReply *reply);
static ngx_int_t ngx_http_cinematch_cache_invalidated(ngx_http_request_t *r,
    void *data, redisReply *reply);
static void ngx_http_cinematch_cache_store(ngx_http_request_t *r,
    ngx_http_cinematch_serving_ctx_t *st, ngx_str_t *fragment, u_char *body,
    size_t len, ngx_str_t *version);

static ngx_http_cinematch_serving_ctx_t *ngx_http_cinematch_serving_ctx(
    ngx_http_request_t *r);
static ngx_int_t ngx_http_cinematch_log_fragment(ngx_http_request_t *r,
    ngx_uint_t endpoint, json_t *doc, ngx_str_t *out);
static ngx_int_t ngx_http_cinematch_serving_log_handler(
    ngx_http_request_t *r);
static void ngx_http_cinematch_log_add(ngx_http_request_t *r,
    ngx_str_t *fragment, const char *cache_hit, ngx_uint_t status);
static void ngx_http_cinematch_log_flush_handler(ngx_event_t *ev);
static void ngx_http_cinematch_log_timeout_handler(ngx_event_t *ev);
static void ngx_http_cinematch_log_connect(ngx_http_cinematch_log_t *w);
static void ngx_http_cinematch_log_connect_poll(ngx_http_cinematch_log_t *w);
static ngx_int_t ngx_http_cinematch_log_attach(ngx_http_cinematch_log_t *w);
static ngx_int_t ngx_http_cinematch_log_want(ngx_http_cinematch_log_t *w,
    ngx_uint_t read, ngx_uint_t write);
static void ngx_http_cinematch_log_send(ngx_http_cinematch_log_t *w);
static void ngx_http_cinematch_log_read_handler(ngx_event_t *ev);
static void ngx_http_cinematch_log_write_handler(ngx_event_t *ev);
static void ngx_http_cinematch_log_done(ngx_http_cinematch_log_t *w);
static void ngx_http_cinematch_log_fail(ngx_http_cinematch_log_t *w,
    const char *why);
static void ngx_http_cinematch_log_close(ngx_http_cinematch_log_t *w);
static void ngx_http_cinematch_log_arm(ngx_http_cinematch_log_t *w);

static ngx_int_t ngx_http_cinematch_reload_notified(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static void ngx_http_cinematch_reload_poll(ngx_event_t *ev);
static void ngx_http_cinematch_reload_cleanup(void *data);
static ngx_int_t ngx_http_cinematch_reload_answer(ngx_http_request_t *r,
    ngx_http_cinematch_reload_t *rl, ngx_uint_t confirmed);


static ngx_command_t  ngx_http_cinematch_serving_commands[] = {

    { ngx_string("cinematch_cache_ttl"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_sec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_cinematch_serving_conf_t, cache_ttl),
      NULL },

    { ngx_string("cinematch_request_log"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_cinematch_serving_conf_t, request_log),
      NULL },

    { ngx_string("cinematch_request_log_queue"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_cinematch_serving_conf_t, log_queue),
      NULL },

    { ngx_string("cinematch_request_log_flush"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_cinematch_serving_conf_t, log_flush),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_cinematch_serving_module_ctx = {
    NULL,                                         /* preconfiguration */
    ngx_http_cinematch_serving_postconf,          /* postconfiguration */

    ngx_http_cinematch_serving_create_main_conf,  /* create main conf */
    ngx_http_cinematch_serving_init_main_conf,    /* init main conf */

    NULL,                                         /* create server conf */
    NULL,                                         /* merge server conf */

    NULL,                                         /* create location conf */
    NULL                                          /* merge location conf */
};


ngx_module_t  ngx_http_cinematch_serving_module = {
    NGX_MODULE_V1,
    &ngx_http_cinematch_serving_module_ctx,  /* module context */
    ngx_http_cinematch_serving_commands,     /* module directives */
    NGX_HTTP_MODULE,                         /* module type */
    NULL,                                    /* init master */
    NULL,                                    /* init module */
    ngx_http_cinematch_serving_init_process, /* init process */
    NULL,                                    /* init thread */
    NULL,                                    /* exit thread */
    ngx_http_cinematch_serving_exit_process, /* exit process */
    NULL,                                    /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_str_t  ngx_http_cinematch_serving_zone_name =
    ngx_string("cinematch_serving");

static ngx_str_t  ngx_http_cinematch_serving_endpoints[] = {
    ngx_string("recommend"),
    ngx_string("similar"),
    ngx_string("popular")
};

static ngx_str_t  ngx_http_cinematch_serving_json =
    ngx_string("application/json");

static ngx_str_t  ngx_http_cinematch_cache_header = ngx_string("X-Cache");
static ngx_str_t  ngx_http_cinematch_cache_hit = ngx_string("HIT");
static ngx_str_t  ngx_http_cinematch_cache_miss = ngx_string("MISS");


/* json, not jsonb: the batch is read once, row by row, so building (and
 * key-sorting) a jsonb tree of all of it first is wasted; only "detail"
 * becomes jsonb (4,000 rows: 9-22 % less time in a psql comparison) */
#define NGX_HTTP_CINEMATCH_LOG_SQL                                           \
    "INSERT INTO request_logs (ts, request_id, method, route, path, status," \
    " duration_ms, user_id, api_key_id, model_name, model_version,"          \
    " cache_hit, is_fallback, fallback_reason, detail, error_code)"          \
    " SELECT to_timestamp(x.ts), x.request_id, x.method, x.route, x.path,"   \
    " x.status, x.duration_ms, x.user_id, x.api_key_id, 'recsys',"           \
    " CASE WHEN x.model_version ~ '^[0-9]{1,9}$'"                            \
    " THEN x.model_version::integer END,"                                    \
    " x.cache_hit, x.is_fallback, x.fallback_reason, x.detail, x.error_code" \
    " FROM json_to_recordset($1::json) AS x(ts float8, request_id text,"     \
    " method text, route text, path text, status smallint,"                  \
    " duration_ms real, user_id bigint, api_key_id bigint,"                  \
    " model_version text, cache_hit boolean, is_fallback boolean,"           \
    " fallback_reason text, detail jsonb, error_code text)"


/* per worker */
static ngx_http_cinematch_log_t  *ngx_http_cinematch_log;


static void *
ngx_http_cinematch_serving_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_cinematch_serving_conf_t  *smcf;

    smcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_cinematch_serving_conf_t));
    if (smcf == NULL) {
        return NULL;
    }

    smcf->cache_ttl = NGX_CONF_UNSET;
    smcf->request_log = NGX_CONF_UNSET;
    smcf->log_queue = NGX_CONF_UNSET_UINT;
    smcf->log_flush = NGX_CONF_UNSET_MSEC;

    return smcf;
}


static char *
ngx_http_cinematch_serving_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_cinematch_serving_conf_t *smcf = conf;

    ngx_conf_init_value(smcf->cache_ttl, 0);
    ngx_conf_init_value(smcf->request_log, 0);
    ngx_conf_init_uint_value(smcf->log_queue, 4096);
    ngx_conf_init_msec_value(smcf->log_flush, 1000);

    if (smcf->log_queue == 0 || smcf->log_queue > 1000000) {
        return "cinematch_request_log_queue must be 1..1000000";
    }

    if (smcf->log_flush == 0) {
        smcf->log_flush = 1;
    }

    return NGX_CONF_OK;
}


static ngx_int_t
ngx_http_cinematch_serving_postconf(ngx_conf_t *cf)
{
    ngx_shm_zone_t                     *zone;
    ngx_http_handler_pt                *h;
    ngx_http_core_main_conf_t          *cmcf;
    ngx_http_cinematch_serving_conf_t  *smcf;

    smcf = ngx_http_conf_get_module_main_conf(cf,
                                        ngx_http_cinematch_serving_module);

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_cinematch_serving_log_handler;

    zone = ngx_shared_memory_add(cf, &ngx_http_cinematch_serving_zone_name,
                                 8 * ngx_pagesize,
                                 &ngx_http_cinematch_serving_module);
    if (zone == NULL) {
        return NGX_ERROR;
    }

    zone->init = ngx_http_cinematch_serving_init_zone;
    zone->data = smcf;
    smcf->zone = zone;

    return NGX_OK;
}


static ngx_int_t
ngx_http_cinematch_serving_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_slab_pool_t                  *shpool;
    ngx_http_cinematch_serving_sh_t  *sh;

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (data) {
        /* a reload keeps the counters */
        shm_zone->data = shpool->data;
        return NGX_OK;
    }

    if (shm_zone->shm.exists) {
        shm_zone->data = shpool->data;
        return NGX_OK;
    }

    sh = ngx_slab_calloc(shpool, sizeof(ngx_http_cinematch_serving_sh_t));
    if (sh == NULL) {
        return NGX_ERROR;
    }

    shpool->data = sh;
    shm_zone->data = sh;

    return NGX_OK;
}


static ngx_http_cinematch_serving_sh_t *
ngx_http_cinematch_serving_sh(void)
{
    ngx_http_cinematch_serving_conf_t  *smcf;

    smcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                        ngx_http_cinematch_serving_module);

    if (smcf == NULL || smcf->zone == NULL) {
        return NULL;
    }

    return smcf->zone->data;
}


static ngx_int_t
ngx_http_cinematch_serving_init_process(ngx_cycle_t *cycle)
{
    ngx_http_cinematch_log_t           *w;
    ngx_http_cinematch_main_conf_t     *mcf;
    ngx_http_cinematch_serving_conf_t  *smcf;

    ngx_http_cinematch_log = NULL;

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    smcf = ngx_http_cycle_get_module_main_conf(cycle,
                                        ngx_http_cinematch_serving_module);
    mcf = ngx_http_cycle_get_module_main_conf(cycle,
                                              ngx_http_cinematch_module);

    if (smcf == NULL || mcf == NULL || !smcf->request_log) {
        return NGX_OK;
    }

    if (mcf->pg_conninfo.len == 0) {
        ngx_log_error(NGX_LOG_WARN, cycle->log, 0,
                      "cinematch_request_log is on but cinematch_postgres "
                      "is not set: nothing is logged");
        return NGX_OK;
    }

    w = ngx_pcalloc(cycle->pool, sizeof(ngx_http_cinematch_log_t));
    if (w == NULL) {
        return NGX_ERROR;
    }

    w->cap = 64 * 1024;
    w->buf = ngx_alloc(w->cap, cycle->log);
    if (w->buf == NULL) {
        return NGX_ERROR;
    }
    w->buf[0] = '[';
    w->len = 1;

    w->smcf = smcf;
    w->mcf = mcf;
    w->log = cycle->log;

    w->flush.handler = ngx_http_cinematch_log_flush_handler;
    w->flush.data = w;
    w->flush.log = cycle->log;
    w->flush.cancelable = 1;

    w->timeout.handler = ngx_http_cinematch_log_timeout_handler;
    w->timeout.data = w;
    w->timeout.log = cycle->log;
    w->timeout.cancelable = 1;

    ngx_http_cinematch_log = w;

    return NGX_OK;
}


static void
ngx_http_cinematch_serving_exit_process(ngx_cycle_t *cycle)
{
    ngx_http_cinematch_log_t  *w;

    w = ngx_http_cinematch_log;
    if (w == NULL) {
        return;
    }

    if (w->flush.timer_set) {
        ngx_del_timer(&w->flush);
    }

    ngx_http_cinematch_log_close(w);

    ngx_free(w->buf);
    w->buf = NULL;

    ngx_http_cinematch_log = NULL;
}


/*
 * "Cache-Control: no-cache" (or no-store) from the client: neither read nor
 * written, as with the cache off (benchmarks of the scoring path).
 */

static ngx_uint_t
ngx_http_cinematch_cache_bypass(ngx_http_request_t *r)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                return 0;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == sizeof("Cache-Control") - 1
            && ngx_strncasecmp(h[i].key.data, (u_char *) "Cache-Control",
                               sizeof("Cache-Control") - 1) == 0
            && (ngx_strlcasestrn(h[i].value.data,
                                 h[i].value.data + h[i].value.len,
                                 (u_char *) "no-cache", 8 - 1) != NULL
                || ngx_strlcasestrn(h[i].value.data,
                                    h[i].value.data + h[i].value.len,
                                    (u_char *) "no-store", 8 - 1) != NULL))
        {
            return 1;
        }
    }
}


/*
 * "<version>.<first 12 hex of the artifact digest>" of the recsys model of
 * the first ready daemon that answers this user; NGX_DECLINED when none
 * serves one.  A recommendation of a user in the canary's share is the
 * canary's (cinematch/canary.h: the daemon routes by the same function),
 * everything else production's: a canary user's key never names the
 * production answer, nor the other way round.  The answer is stored only
 * when the daemon says it came from the key's version, so a daemon that
 * routed otherwise (a share changed between the two reads) stores nothing.
 */

static ngx_int_t
ngx_http_cinematch_serving_tag(u_char *tag, size_t *len, ngx_str_t *version,
    ngx_pool_t *pool, ngx_uint_t endpoint, int64_t user)
{
    u_char                             *p;
    size_t                              vlen;
    ngx_uint_t                          i, m, canary;
    cm_ipc_model_t                     *mo;
    ngx_http_cinematch_infer_status_t   st;

    for (i = 0; i < ngx_http_cinematch_infer_ndaemons(); i++) {
        ngx_http_cinematch_infer_get_status(i, &st);

        if (!st.connected || !st.heartbeat_ok || !st.ready) {
            continue;
        }

        canary = 0;

        for (m = 0; m < st.nmodels; m++) {
            mo = &st.models[m];

            if (endpoint == NGX_HTTP_CINEMATCH_EP_RECOMMEND
                && mo->role == CM_IPC_ROLE_CANARY
                && ngx_strcmp(mo->name, "recsys") == 0
                && cm_canary_routed("recsys", user,
                                    ngx_min(mo->share_bp, CM_CANARY_BUCKETS)))
            {
                canary = 1;
                break;
            }
        }

        for (m = 0; m < st.nmodels; m++) {
            mo = &st.models[m];

            if (ngx_strcmp(mo->name, "recsys") != 0
                || (mo->role == CM_IPC_ROLE_CANARY) != canary)
            {
                continue;
            }

            vlen = ngx_strlen(mo->version);

            if (vlen == 0 || vlen > 32) {
                return NGX_DECLINED;
            }

            version->data = ngx_pnalloc(pool, vlen);
            if (version->data == NULL) {
                return NGX_ERROR;
            }

            version->len = vlen;
            ngx_memcpy(version->data, mo->version, vlen);

            p = ngx_cpymem(tag, mo->version, vlen);
            *p++ = '.';
            p = ngx_cpymem(p, mo->sha256, ngx_min(ngx_strlen(mo->sha256), 12));
            *len = p - tag;

            return NGX_OK;
        }
    }

    return NGX_DECLINED;
}


ngx_int_t
ngx_http_cinematch_cache_fetch(ngx_http_request_t *r, ngx_uint_t endpoint,
    int64_t user, ngx_str_t *params, ngx_http_cinematch_serving_next_pt miss,
    void *data)
{
    u_char                             *p;
    size_t                              tlen;
    ngx_int_t                           rc;
    const char                         *argv[3];
    size_t                              argvlen[3];
    ngx_http_cinematch_serving_ctx_t   *st;
    ngx_http_cinematch_serving_conf_t  *smcf;
    u_char                              tag[NGX_HTTP_CINEMATCH_SERVING_TAG_LEN];
    u_char                              genkey[sizeof("cmc:gen:")
                                               + NGX_INT64_LEN];

    smcf = ngx_http_get_module_main_conf(r, ngx_http_cinematch_serving_module);

    if (smcf->cache_ttl <= 0 || endpoint >= NGX_HTTP_CINEMATCH_EP_N
        || !ngx_http_cinematch_redis_connected()
        || ngx_http_cinematch_cache_bypass(r))
    {
        return NGX_DECLINED;
    }

    st = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_serving_ctx_t));
    if (st == NULL) {
        return NGX_DECLINED;
    }

    if (ngx_http_cinematch_serving_tag(tag, &tlen, &st->version, r->pool,
                                       endpoint, user)
        != NGX_OK)
    {
        return NGX_DECLINED;
    }

    st->key.data = ngx_pnalloc(r->pool, sizeof("cmc2:") + tlen + 1
                                        + ngx_http_cinematch_serving_endpoints[
                                              endpoint].len
                                        + 1 + params->len + 1);
    if (st->key.data == NULL) {
        return NGX_DECLINED;
    }

    p = ngx_sprintf(st->key.data, "cmc2:%*s:%V:%V", tlen, tag,
                    &ngx_http_cinematch_serving_endpoints[endpoint], params);
    st->key.len = p - st->key.data;

    p = ngx_sprintf(genkey, "cmc:gen:%L", user);

    st->endpoint = endpoint;
    st->next = miss;
    st->data = data;

    argv[0] = "MGET";
    argvlen[0] = 4;
    argv[1] = (const char *) genkey;
    argvlen[1] = p - genkey;
    argv[2] = (const char *) st->key.data;
    argvlen[2] = st->key.len;

    rc = ngx_http_cinematch_redis_command(r,
                                          ngx_http_cinematch_cache_looked_up,
                                          st, 3, argv, argvlen);
    if (rc != NGX_OK) {
        return NGX_DECLINED;
    }

    ngx_http_set_ctx(r, st, ngx_http_cinematch_serving_module);

    return NGX_DONE;
}


static ngx_int_t
ngx_http_cinematch_cache_looked_up(ngx_http_request_t *r, void *data,
    redisReply *reply)
{
    ngx_http_cinematch_serving_ctx_t *st = data;

    u_char                           *body, *nl, *value, *value_end;
    size_t                            len;
    ngx_str_t                         fragment;
    redisReply                       *g, *v;
    ngx_http_cinematch_serving_sh_t  *sh;

    sh = ngx_http_cinematch_serving_sh();

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 2
        || (reply->element[0]->type != REDIS_REPLY_STRING
            && reply->element[0]->type != REDIS_REPLY_NIL)
        || (reply->element[0]->type == REDIS_REPLY_STRING
            && (reply->element[0]->len == 0
                || reply->element[0]->len > NGX_INT64_LEN)))
    {
        /* Redis failed us: serve uncached, store nothing */

        if (reply != NULL && reply->type == REDIS_REPLY_ERROR) {
            ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                          "cinematch: cache lookup failed: %*s",
                          (size_t) reply->len, reply->str);
        }

        if (sh != NULL) {
            (void) ngx_atomic_fetch_add(&sh->cache_errors, 1);
        }

        return st->next(r, st->data);
    }

    st->looked_up = 1;

    g = reply->element[0];
    v = reply->element[1];

    if (g->type == REDIS_REPLY_STRING) {
        st->gen.data = ngx_pnalloc(r->pool, g->len);
        if (st->gen.data == NULL) {
            return st->next(r, st->data);
        }

        st->gen.len = g->len;
        ngx_memcpy(st->gen.data, g->str, g->len);

    } else {
        ngx_str_set(&st->gen, "0");   /* never folded in */
    }

    /* an entry is "<gen>\n<log members>\n<answer>": the log needs no
     * parse, and an entry of another generation is a miss */

    nl = NULL;

    if (v->type == REDIS_REPLY_STRING
        && (size_t) v->len > st->gen.len + 1
        && ngx_memcmp(v->str, st->gen.data, st->gen.len) == 0
        && v->str[st->gen.len] == '\n')
    {
        value = (u_char *) v->str + st->gen.len + 1;
        value_end = (u_char *) v->str + v->len;
        nl = ngx_strlchr(value, value_end, '\n');
    }

    if (nl != NULL && nl + 1 < value_end) {
        st->hit = 1;

        if (sh != NULL) {
            (void) ngx_atomic_fetch_add(&sh->hits[st->endpoint], 1);
        }

        fragment.data = value;
        fragment.len = nl - fragment.data;
        len = value_end - (nl + 1);

        body = ngx_pnalloc(r->pool, len);
        if (body == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        ngx_memcpy(body, nl + 1, len);

        st->cache_hit = "true";

        /* the key names the version that produced the answer: the
         * access log's $cinematch_model_version gets it on a hit too */
        ngx_http_cinematch_serving_set_version(r, &st->version);

        if (ngx_http_cinematch_log != NULL) {
            /* the reply goes away when this returns */
            st->fragment.data = ngx_pnalloc(r->pool, fragment.len);
            if (st->fragment.data != NULL) {
                st->fragment.len = fragment.len;
                ngx_memcpy(st->fragment.data, fragment.data, fragment.len);
            }
        }

        if (ngx_http_cinematch_add_header(r, &ngx_http_cinematch_cache_header,
                                          &ngx_http_cinematch_cache_hit)
            != NGX_OK)
        {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        return ngx_http_cinematch_send_buf(r, NGX_HTTP_OK,
                                           &ngx_http_cinematch_serving_json,
                                           body, len);
    }

    st->missed = 1;

    if (sh != NULL) {
        (void) ngx_atomic_fetch_add(&sh->misses[st->endpoint], 1);
    }

    if (ngx_http_cinematch_add_header(r, &ngx_http_cinematch_cache_header,
                                      &ngx_http_cinematch_cache_miss)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return st->next(r, st->data);
}


void
ngx_http_cinematch_serving_answered(ngx_http_request_t *r,
    ngx_uint_t endpoint, int64_t user, u_char *body, size_t len, json_t *doc)
{
    ngx_str_t                          fragment;
    ngx_http_cinematch_serving_ctx_t  *st;

    st = ngx_http_get_module_ctx(r, ngx_http_cinematch_serving_module);

    if ((st == NULL || !st->missed) && ngx_http_cinematch_log == NULL) {
        return;
    }

    /* what the log takes from the answer, kept with it in the cache */

    if (ngx_http_cinematch_log_fragment(r, endpoint, doc, &fragment)
        != NGX_OK)
    {
        return;
    }

    if (st != NULL && st->missed) {
        json_t     *v = json_object_get(doc, "model_version");
        ngx_str_t   version;

        if (json_is_string(v)) {
            version.data = (u_char *) json_string_value(v);
            version.len = json_string_length(v);
            ngx_http_cinematch_cache_store(r, st, &fragment, body, len,
                                           &version);
        }
    }

    if (ngx_http_cinematch_log != NULL) {
        /* logged in the log phase, with the status that was sent */
        st = ngx_http_cinematch_serving_ctx(r);
        if (st != NULL) {
            st->fragment = fragment;
            st->cache_hit = st->looked_up ? "false" : "null";
        }
    }
}


void
ngx_http_cinematch_serving_answered_text(ngx_http_request_t *r,
    ngx_uint_t endpoint, u_char *body, size_t len, ngx_str_t *members,
    ngx_str_t *version)
{
    ngx_http_cinematch_serving_ctx_t  *st;

    st = ngx_http_get_module_ctx(r, ngx_http_cinematch_serving_module);

    if (st != NULL && st->missed) {
        ngx_http_cinematch_cache_store(r, st, members, body, len, version);
    }

    if (ngx_http_cinematch_log != NULL) {
        st = ngx_http_cinematch_serving_ctx(r);
        if (st != NULL) {
            st->fragment = *members;
            st->cache_hit = st->looked_up ? "false" : "null";
        }
    }
}


void
ngx_http_cinematch_serving_set_version(ngx_http_request_t *r,
    ngx_str_t *version)
{
    ngx_http_cinematch_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_cinematch_module);

    if (ctx == NULL || version->len == 0 || version->len > 64) {
        return;
    }

    ctx->model_version.data = ngx_pnalloc(r->pool, version->len);
    if (ctx->model_version.data == NULL) {
        ctx->model_version.len = 0;
        return;
    }

    ngx_memcpy(ctx->model_version.data, version->data, version->len);
    ctx->model_version.len = version->len;
}


static ngx_http_cinematch_serving_ctx_t *
ngx_http_cinematch_serving_ctx(ngx_http_request_t *r)
{
    ngx_http_cinematch_serving_ctx_t  *st;

    st = ngx_http_get_module_ctx(r, ngx_http_cinematch_serving_module);

    if (st == NULL) {
        st = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_serving_ctx_t));
        if (st != NULL) {
            ngx_http_set_ctx(r, st, ngx_http_cinematch_serving_module);
        }
    }

    return st;
}


/*
 * Every answer of recommend, similar and popular is logged here, errors
 * included (no detail then), with its status and its whole duration.
 */

static ngx_int_t
ngx_http_cinematch_serving_log_handler(ngx_http_request_t *r)
{
    ngx_uint_t                         status;
    ngx_str_t                          fragment;
    ngx_http_cinematch_ctx_t          *ctx;
    ngx_http_cinematch_serving_ctx_t  *st;
    ngx_http_cinematch_handler_pt      h;

    static ngx_str_t  none = ngx_string(
        "\"model_version\":null,\"is_fallback\":null,"
        "\"fallback_reason\":null,\"detail\":null");

    if (ngx_http_cinematch_log == NULL || r != r->main) {
        return NGX_OK;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_cinematch_module);
    if (ctx == NULL || ctx->route == NULL) {
        return NGX_OK;
    }

    h = ctx->route->handler;

    if (h != ngx_http_cinematch_recommend_handler
        && h != ngx_http_cinematch_similar_handler
        && h != ngx_http_cinematch_popular_handler)
    {
        return NGX_OK;
    }

    status = r->err_status ? r->err_status : r->headers_out.status;

    if (status < 100 || status > 599) {
        return NGX_OK;
    }

    st = ngx_http_get_module_ctx(r, ngx_http_cinematch_serving_module);

    fragment = (st != NULL && st->fragment.len) ? st->fragment : none;

    ngx_http_cinematch_log_add(r, &fragment,
                               st != NULL && st->cache_hit
                               ? st->cache_hit : "null", status);

    return NGX_OK;
}


static void
ngx_http_cinematch_cache_store(ngx_http_request_t *r,
    ngx_http_cinematch_serving_ctx_t *st, ngx_str_t *fragment, u_char *body,
    size_t len, ngx_str_t *version)
{
    u_char                             *value, *p;
    const char                         *argv[5];
    size_t                              argvlen[5];
    ngx_http_cinematch_serving_conf_t  *smcf;
    u_char                              ttl[NGX_TIME_T_LEN];

    smcf = ngx_http_get_module_main_conf(r, ngx_http_cinematch_serving_module);

    if (version->len != st->version.len
        || ngx_memcmp(version->data, st->version.data, st->version.len) != 0)
    {
        /* another model answered (a swap): not this key's to keep */
        return;
    }

    value = ngx_pnalloc(r->pool, st->gen.len + 1 + fragment->len + 1 + len);
    if (value == NULL) {
        return;
    }

    p = ngx_cpymem(value, st->gen.data, st->gen.len);
    *p++ = '\n';
    p = ngx_cpymem(p, fragment->data, fragment->len);
    *p++ = '\n';
    p = ngx_cpymem(p, body, len);
    argvlen[2] = p - value;

    argv[0] = "SET";
    argvlen[0] = 3;
    argv[1] = (const char *) st->key.data;
    argvlen[1] = st->key.len;
    argv[2] = (const char *) value;
    argv[3] = "EX";
    argvlen[3] = 2;
    argv[4] = (const char *) ttl;
    argvlen[4] = ngx_sprintf(ttl, "%T", smcf->cache_ttl) - ttl;

    /* fire and forget: the answer does not wait for the store */
    (void) ngx_http_cinematch_redis_command(NULL, NULL, NULL, 5, argv,
                                            argvlen);
}


ngx_int_t
ngx_http_cinematch_cache_invalidate(ngx_http_request_t *r, int64_t user,
    ngx_http_cinematch_serving_next_pt next, void *data)
{
    u_char                             *p;
    const char                         *argv[2];
    size_t                              argvlen[2];
    ngx_http_cinematch_serving_then_t  *then;
    u_char                              genkey[sizeof("cmc:gen:")
                                               + NGX_INT64_LEN];

    /* whether or not this nginx caches: another one may share Redis */

    if (!ngx_http_cinematch_redis_connected()) {
        return next(r, data);
    }

    then = ngx_palloc(r->pool, sizeof(ngx_http_cinematch_serving_then_t));
    if (then == NULL) {
        return next(r, data);
    }

    then->next = next;
    then->data = data;

    p = ngx_sprintf(genkey, "cmc:gen:%L", user);

    argv[0] = "INCR";
    argvlen[0] = 4;
    argv[1] = (const char *) genkey;
    argvlen[1] = p - genkey;

    if (ngx_http_cinematch_redis_command(r,
                                         ngx_http_cinematch_cache_invalidated,
                                         then, 2, argv, argvlen)
        != NGX_OK)
    {
        return next(r, data);
    }

    return NGX_DONE;
}


static ngx_int_t
ngx_http_cinematch_cache_invalidated(ngx_http_request_t *r, void *data,
    redisReply *reply)
{
    ngx_http_cinematch_serving_then_t *then = data;

    if (reply == NULL || reply->type != REDIS_REPLY_INTEGER) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "cinematch: cache invalidation failed; cached "
                      "answers of this user age out in the cache TTL");
    }

    return then->next(r, then->data);
}


/* request log */

/*
 * The members of a log entry that come from the answer, as JSON text
 * without the braces: "model_version", "is_fallback", "fallback_reason",
 * "detail" {endpoint, ids, scores, and the user, movie or source}.
 */

static ngx_int_t
ngx_http_cinematch_log_fragment(ngx_http_request_t *r, ngx_uint_t endpoint,
    json_t *doc, ngx_str_t *out)
{
    char    *text;
    size_t   i, n;
    json_t  *o, *items, *item, *ids, *scores, *sc, *detail, *v;

    if (!json_is_object(doc)) {
        return NGX_ERROR;
    }

    items = json_object_get(doc, endpoint == NGX_HTTP_CINEMATCH_EP_SIMILAR
                                 ? "similar_items" : "recommendations");
    ids = json_array();
    scores = json_array();

    json_array_foreach(items, i, item) {
        sc = json_object_get(item, "score");
        if (sc == NULL) {
            sc = json_object_get(item, "popularity_score");
        }

        json_array_append(ids, json_object_get(item, "movie_id"));
        json_array_append(scores, sc != NULL ? sc : json_null());
    }

    detail = json_pack("{s:s, s:o, s:o}",
                       "endpoint", ngx_http_cinematch_serving_endpoints[
                                       endpoint].data,
                       "ids", ids, "scores", scores);

    if (detail != NULL) {
        v = json_object_get(doc, endpoint == NGX_HTTP_CINEMATCH_EP_RECOMMEND
                                 ? "user_id"
                                 : endpoint == NGX_HTTP_CINEMATCH_EP_SIMILAR
                                   ? "movie_id" : "source");
        json_object_set(detail,
                        endpoint == NGX_HTTP_CINEMATCH_EP_RECOMMEND
                        ? "rating_user_id"
                        : endpoint == NGX_HTTP_CINEMATCH_EP_SIMILAR
                          ? "movie_id" : "source",
                        v != NULL ? v : json_null());
    }

    o = json_object();

    if (o == NULL || detail == NULL) {
        json_decref(o);
        json_decref(detail);
        return NGX_ERROR;
    }

    v = json_object_get(doc, "model_version");
    json_object_set(o, "model_version", json_is_string(v) ? v : json_null());
    v = json_object_get(doc, "is_fallback");
    json_object_set(o, "is_fallback", json_is_boolean(v) ? v : json_null());
    v = json_object_get(doc, "fallback_reason");
    json_object_set(o, "fallback_reason", json_is_string(v) ? v : json_null());
    json_object_set_new(o, "detail", detail);

    text = json_dumps(o, JSON_COMPACT);
    json_decref(o);

    if (text == NULL) {
        return NGX_ERROR;
    }

    /* no newline in compact JSON: the cache splits on the first one */

    n = ngx_strlen(text);

    out->data = ngx_pnalloc(r->pool, n);
    if (out->data == NULL || n < 2) {
        free(text);
        return NGX_ERROR;
    }

    out->len = n - 2;
    ngx_memcpy(out->data, text + 1, out->len);
    free(text);

    return NGX_OK;
}


/* the codes ngx_http_cinematch_http.c gives nginx's own error pages, for
 * an error whose body named none */
static const char *
ngx_http_cinematch_log_status_code(ngx_uint_t status)
{
    switch (status) {
    case 400: return "invalid_request";
    case 401: return "unauthenticated";
    case 403: return "forbidden";
    case 404: return "not_found";
    case 409: return "conflict";
    case 413: return "payload_too_large";
    case 415: return "unsupported_media_type";
    case 422: return "validation_failed";
    case 429: return "rate_limited";
    case 501: return "not_implemented";
    case 502: return "bad_gateway";
    case 503: return "unavailable";
    case 504: return "timeout";
    default:  return status >= 500 ? "internal" : "invalid_request";
    }
}


/* One entry appended to the worker's batch, as text: no allocation per
 * request beyond the batch buffer's growth. */

static void
ngx_http_cinematch_log_add(ngx_http_request_t *r, ngx_str_t *fragment,
    const char *cache_hit, ngx_uint_t status)
{
    u_char                           *p, *nbuf;
    size_t                            need, rid_len, path_len, code_len;
    ngx_str_t                         rid, route, code;
    ngx_time_t                       *tp;
    ngx_msec_int_t                    ms;
    ngx_http_cinematch_log_t         *w;
    ngx_http_cinematch_ctx_t         *ctx;
    ngx_http_cinematch_caller_t      *c;
    ngx_http_cinematch_serving_sh_t  *sh;

    w = ngx_http_cinematch_log;

    if (w == NULL || fragment->len == 0) {
        return;
    }

    if (w->count >= w->smcf->log_queue) {
        sh = ngx_http_cinematch_serving_sh();
        if (sh != NULL) {
            (void) ngx_atomic_fetch_add(&sh->log_dropped, 1);
        }

        return;
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_cinematch_module);
    c = ngx_http_cinematch_caller(r);

    ngx_str_null(&rid);
    ngx_str_null(&route);

    if (ctx != NULL) {
        rid = ctx->request_id;

        if (ctx->route != NULL) {
            route = ctx->route->pattern;
        }
    }

    rid_len = rid.len + ngx_escape_json(NULL, rid.data, rid.len);
    path_len = r->uri.len + ngx_escape_json(NULL, r->uri.data, r->uri.len);

    /* the error code of an error answer: the one its body names, else
     * one for the status (nginx's own error pages name none) */
    ngx_str_null(&code);

    if (status >= 400) {
        if (ctx != NULL && ctx->error_code.len > 0) {
            code = ctx->error_code;

        } else {
            code.data = (u_char *) ngx_http_cinematch_log_status_code(status);
            code.len = ngx_strlen(code.data);
        }
    }

    code_len = code.len + ngx_escape_json(NULL, code.data, code.len);

    need = sizeof(",{\"ts\":.000,\"request_id\":\"\",\"method\":\"\","
                  "\"route\":\"\",\"path\":\"\",\"status\":999,"
                  "\"duration_ms\":,\"user_id\":,\"api_key_id\":,"
                  "\"cache_hit\":,\"error_code\":\"\",}]")
           + NGX_TIME_T_LEN + rid_len + r->method_name.len + route.len
           + path_len + 3 * NGX_INT64_LEN + sizeof("false") + fragment->len
           + code_len;

    if (w->len + need > w->cap) {
        nbuf = ngx_alloc(ngx_max(w->cap * 2, w->len + need), w->log);
        if (nbuf == NULL) {
            return;
        }

        ngx_memcpy(nbuf, w->buf, w->len);
        ngx_free(w->buf);
        w->buf = nbuf;
        w->cap = ngx_max(w->cap * 2, w->len + need);
    }

    tp = ngx_timeofday();
    ms = (ngx_msec_int_t)
             ((tp->sec - r->start_sec) * 1000 + (tp->msec - r->start_msec));

    p = w->buf + w->len;

    p = ngx_sprintf(p, "%s{\"ts\":%T.%03M,\"request_id\":\"",
                    w->count ? "," : "", tp->sec, tp->msec);
    p = (u_char *) ngx_escape_json(p, rid.data, rid.len);
    p = ngx_sprintf(p, "\",\"method\":\"%V\",\"route\":\"%V\",\"path\":\"",
                    &r->method_name, &route);
    p = (u_char *) ngx_escape_json(p, r->uri.data, r->uri.len);
    p = ngx_sprintf(p, "\",\"status\":%ui,\"duration_ms\":%M,\"user_id\":",
                    status, (ngx_msec_t) ngx_max(ms, 0));

    if (c != NULL) {
        p = ngx_sprintf(p, "%L", c->user_id);
    } else {
        p = ngx_cpymem(p, "null", 4);
    }

    p = ngx_cpymem(p, ",\"api_key_id\":", sizeof(",\"api_key_id\":") - 1);

    if (c != NULL && c->key_id) {
        p = ngx_sprintf(p, "%L", c->key_id);
    } else {
        p = ngx_cpymem(p, "null", 4);
    }

    p = ngx_sprintf(p, ",\"cache_hit\":%s,", cache_hit);

    if (code.len > 0) {
        p = ngx_cpymem(p, "\"error_code\":\"", sizeof("\"error_code\":\"") - 1);
        p = (u_char *) ngx_escape_json(p, code.data, code.len);
        p = ngx_cpymem(p, "\",", 2);
    }

    p = ngx_sprintf(p, "%V}", fragment);

    w->len = p - w->buf;
    w->count++;

    ngx_http_cinematch_log_arm(w);
}


static void
ngx_http_cinematch_log_arm(ngx_http_cinematch_log_t *w)
{
    if (!w->flush.timer_set && w->count > 0
        && !(ngx_exiting || ngx_terminate || ngx_quit))
    {
        ngx_add_timer(&w->flush, w->smcf->log_flush);
    }
}


static void
ngx_http_cinematch_log_flush_handler(ngx_event_t *ev)
{
    ngx_http_cinematch_log_t *w = ev->data;

    switch (w->state) {

    case ngx_http_cinematch_log_down:
        ngx_http_cinematch_log_connect(w);
        break;

    case ngx_http_cinematch_log_idle:
        ngx_http_cinematch_log_send(w);
        break;

    default:
        /* connecting or a batch in flight: the next period takes it */
        break;
    }

    ngx_http_cinematch_log_arm(w);
}


static void
ngx_http_cinematch_log_timeout_handler(ngx_event_t *ev)
{
    ngx_http_cinematch_log_t *w = ev->data;

    ngx_http_cinematch_log_fail(w, w->state == ngx_http_cinematch_log_busy
                                   ? "insert timed out"
                                   : "connect timed out");
}


static void
ngx_http_cinematch_log_connect(ngx_http_cinematch_log_t *w)
{
    const char  *keywords[4], *values[4];

    keywords[0] = "dbname";
    values[0] = (const char *) w->mcf->pg_conninfo.data;
    keywords[1] = "client_encoding";
    values[1] = "UTF8";
    keywords[2] = "fallback_application_name";
    values[2] = "cinematch-nginx-request-log";
    keywords[3] = NULL;
    values[3] = NULL;

    w->pg = PQconnectStartParams(keywords, values, 1);

    if (w->pg == NULL || PQstatus(w->pg) == CONNECTION_BAD
        || ngx_http_cinematch_log_attach(w) != NGX_OK)
    {
        ngx_http_cinematch_log_fail(w, "cannot connect to PostgreSQL");
        return;
    }

    w->state = ngx_http_cinematch_log_connecting;
    ngx_add_timer(&w->timeout, w->mcf->pg_timeout);

    if (ngx_http_cinematch_log_want(w, 0, 1) != NGX_OK) {
        ngx_http_cinematch_log_fail(w, "cannot watch the socket");
    }
}


static void
ngx_http_cinematch_log_connect_poll(ngx_http_cinematch_log_t *w)
{
    switch (PQconnectPoll(w->pg)) {

    case PGRES_POLLING_READING:
        if (ngx_http_cinematch_log_attach(w) == NGX_OK
            && ngx_http_cinematch_log_want(w, 1, 0) == NGX_OK)
        {
            return;
        }
        break;

    case PGRES_POLLING_WRITING:
        if (ngx_http_cinematch_log_attach(w) == NGX_OK
            && ngx_http_cinematch_log_want(w, 0, 1) == NGX_OK)
        {
            return;
        }
        break;

    case PGRES_POLLING_OK:
        if (PQsetnonblocking(w->pg, 1) != 0
            || ngx_http_cinematch_log_attach(w) != NGX_OK
            || ngx_http_cinematch_log_want(w, 1, 0) != NGX_OK)
        {
            break;
        }

        if (w->timeout.timer_set) {
            ngx_del_timer(&w->timeout);
        }

        w->state = ngx_http_cinematch_log_idle;
        ngx_http_cinematch_log_send(w);
        return;

    default:
        break;
    }

    ngx_http_cinematch_log_fail(w, "cannot connect to PostgreSQL");
}


static ngx_int_t
ngx_http_cinematch_log_attach(ngx_http_cinematch_log_t *w)
{
    ngx_socket_t       fd;
    ngx_connection_t  *c;

    fd = PQsocket(w->pg);

    if (w->c != NULL) {
        if (w->c->fd == fd) {
            return NGX_OK;
        }

        /* libpq replaced the socket (another address): drop the old one */
        ngx_http_cinematch_pg_release(w->c, 1);
        w->c = NULL;
    }

    if (fd == (ngx_socket_t) -1) {
        return NGX_ERROR;
    }

    c = ngx_get_connection(fd, w->log);
    if (c == NULL) {
        return NGX_ERROR;
    }

    c->data = w;
    c->log = w->log;
    c->read->log = w->log;
    c->write->log = w->log;
    c->read->handler = ngx_http_cinematch_log_read_handler;
    c->write->handler = ngx_http_cinematch_log_write_handler;

    w->c = c;

    return NGX_OK;
}


static ngx_int_t
ngx_http_cinematch_log_want(ngx_http_cinematch_log_t *w, ngx_uint_t read,
    ngx_uint_t write)
{
    return ngx_http_cinematch_pg_events(w->c, read, write);
}


/* One INSERT of everything queued: the batch is one JSON parameter. */

static void
ngx_http_cinematch_log_send(ngx_http_cinematch_log_t *w)
{
    int          rc;
    const char  *values[1];

    if (w->count == 0) {
        return;
    }

    /* log_add keeps room for the closing "]" and the terminator */
    w->buf[w->len++] = ']';
    w->buf[w->len] = '\0';

    w->inflight = w->count;
    w->failed = 0;

    values[0] = (const char *) w->buf;

    /* libpq copies the text into its output buffer */
    rc = PQsendQueryParams(w->pg, NGX_HTTP_CINEMATCH_LOG_SQL, 1, NULL,
                           values, NULL, NULL, 0);

    w->len = 1;
    w->count = 0;

    if (rc != 1) {
        ngx_http_cinematch_log_fail(w, PQerrorMessage(w->pg));
        return;
    }

    w->state = ngx_http_cinematch_log_busy;
    ngx_add_timer(&w->timeout, w->mcf->pg_timeout);

    rc = PQflush(w->pg);

    if (rc == -1
        || ngx_http_cinematch_log_want(w, 1, rc == 1) != NGX_OK)
    {
        ngx_http_cinematch_log_fail(w, "cannot send to PostgreSQL");
    }
}


static void
ngx_http_cinematch_log_read_handler(ngx_event_t *ev)
{
    PGresult                  *res;
    PGnotify                  *notify;
    ngx_connection_t          *c = ev->data;
    ngx_http_cinematch_log_t  *w = c->data;

    switch (w->state) {

    case ngx_http_cinematch_log_connecting:
        ngx_http_cinematch_log_connect_poll(w);
        return;

    case ngx_http_cinematch_log_busy:
        if (!PQconsumeInput(w->pg)) {
            ngx_http_cinematch_log_fail(w, PQerrorMessage(w->pg));
            return;
        }

        while (!PQisBusy(w->pg)) {
            res = PQgetResult(w->pg);

            if (res == NULL) {
                ngx_http_cinematch_log_done(w);
                return;
            }

            if (PQresultStatus(res) != PGRES_COMMAND_OK) {
                ngx_log_error(NGX_LOG_ERR, w->log, 0,
                              "cinematch: request log insert failed: %s",
                              PQresultErrorMessage(res));
                w->failed = 1;
            }

            PQclear(res);
        }

        return;

    case ngx_http_cinematch_log_idle:
        if (!PQconsumeInput(w->pg) || PQstatus(w->pg) != CONNECTION_OK) {
            ngx_http_cinematch_log_close(w);
            return;
        }

        while ((notify = PQnotifies(w->pg)) != NULL) {
            PQfreemem(notify);
        }

        return;

    default:
        return;
    }
}


static void
ngx_http_cinematch_log_write_handler(ngx_event_t *ev)
{
    int                        rc;
    ngx_connection_t          *c = ev->data;
    ngx_http_cinematch_log_t  *w = c->data;

    switch (w->state) {

    case ngx_http_cinematch_log_connecting:
        ngx_http_cinematch_log_connect_poll(w);
        return;

    case ngx_http_cinematch_log_busy:
        rc = PQflush(w->pg);

        if (rc == -1) {
            ngx_http_cinematch_log_fail(w, PQerrorMessage(w->pg));
            return;
        }

        if (rc == 0 && ngx_http_cinematch_log_want(w, 1, 0) != NGX_OK) {
            ngx_http_cinematch_log_fail(w, "cannot watch the socket");
        }

        return;

    default:
        (void) ngx_http_cinematch_log_want(w, 1, 0);
        return;
    }
}


static void
ngx_http_cinematch_log_done(ngx_http_cinematch_log_t *w)
{
    ngx_http_cinematch_serving_sh_t  *sh;

    if (w->timeout.timer_set) {
        ngx_del_timer(&w->timeout);
    }

    sh = ngx_http_cinematch_serving_sh();

    if (sh != NULL) {
        (void) ngx_atomic_fetch_add(w->failed ? &sh->log_dropped
                                              : &sh->log_written,
                                    w->inflight);
    }

    w->inflight = 0;
    w->failed = 0;
    w->state = ngx_http_cinematch_log_idle;

    ngx_http_cinematch_log_arm(w);
}


/* The batch in flight is lost (counted); the next period reconnects. */

static void
ngx_http_cinematch_log_fail(ngx_http_cinematch_log_t *w, const char *why)
{
    ngx_http_cinematch_serving_sh_t  *sh;

    ngx_log_error(NGX_LOG_ERR, w->log, 0,
                  "cinematch: request log: %s", why);

    sh = ngx_http_cinematch_serving_sh();

    if (sh != NULL && w->inflight) {
        (void) ngx_atomic_fetch_add(&sh->log_dropped, w->inflight);
    }

    w->inflight = 0;

    ngx_http_cinematch_log_close(w);
    ngx_http_cinematch_log_arm(w);
}


static void
ngx_http_cinematch_log_close(ngx_http_cinematch_log_t *w)
{
    if (w->timeout.timer_set) {
        ngx_del_timer(&w->timeout);
    }

    if (w->c != NULL) {
        ngx_http_cinematch_pg_release(w->c, 1);
        w->c = NULL;
    }

    if (w->pg != NULL) {
        PQfinish(w->pg);
        w->pg = NULL;
    }

    w->state = ngx_http_cinematch_log_down;
}


/* POST /api/v1/admin/reload */

ngx_int_t
ngx_http_cinematch_admin_reload_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    u_char                       *p;
    ngx_uint_t                    i;
    const char                  **values;
    ngx_http_cinematch_caller_t  *c;
    ngx_http_cinematch_reload_t  *rl;
    ngx_pool_cleanup_t           *cln;

    rl = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_reload_t));
    values = ngx_palloc(r->pool, sizeof(char *));
    cln = ngx_pool_cleanup_add(r->pool, 0);

    if (rl == NULL || values == NULL || cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rl->request = r;
    rl->poll.handler = ngx_http_cinematch_reload_poll;
    rl->poll.data = rl;
    rl->poll.log = r->connection->log;

    cln->handler = ngx_http_cinematch_reload_cleanup;
    cln->data = rl;

    /* what each daemon has published so far: a reload republishes */

    for (i = 0; i < ngx_http_cinematch_infer_ndaemons()
                && i < NGX_HTTP_CINEMATCH_MAX_INFER; i++)
    {
        rl->seq[i] = ngx_http_cinematch_infer_models_seq(i);
    }

    c = ngx_http_cinematch_caller(r);
    p = ngx_snprintf((u_char *) rl->note, sizeof(rl->note) - 1,
                     "admin reload by user %L", c ? c->user_id : 0);
    *p = '\0';
    values[0] = rl->note;

    switch (ngx_http_cinematch_pg_query(r,
                "SELECT pg_notify('cinematch_models', $1)", 1, values,
                ngx_http_cinematch_reload_notified, rl))
    {
    case NGX_OK:
        return NGX_DONE;

    case NGX_DECLINED:
    case NGX_BUSY:
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             "database unavailable");

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}


static ngx_int_t
ngx_http_cinematch_reload_notified(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    ngx_http_cinematch_reload_t *rl = data;

    if (err != NULL) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             "database unavailable");
    }

    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cinematch: NOTIFY cinematch_models failed: %s",
                      PQresultErrorMessage(res));
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    rl->deadline = ngx_current_msec + NGX_HTTP_CINEMATCH_RELOAD_WAIT;

    ngx_add_timer(&rl->poll, NGX_HTTP_CINEMATCH_RELOAD_POLL);
    ngx_http_cinematch_wait(r);

    return NGX_DONE;
}


static void
ngx_http_cinematch_reload_poll(ngx_event_t *ev)
{
    ngx_uint_t                    i, pending;
    ngx_http_request_t           *r;
    ngx_http_cinematch_reload_t  *rl = ev->data;

    r = rl->request;
    pending = 0;

    for (i = 0; i < ngx_http_cinematch_infer_ndaemons()
                && i < NGX_HTTP_CINEMATCH_MAX_INFER; i++)
    {
        if (ngx_http_cinematch_infer_models_seq(i) == rl->seq[i]) {
            pending++;
        }
    }

    if (pending == 0) {
        ngx_http_cinematch_finish(r,
                              ngx_http_cinematch_reload_answer(r, rl, 1));
        return;
    }

    if ((ngx_msec_int_t) (rl->deadline - ngx_current_msec) <= 0) {
        ngx_http_cinematch_finish(r,
                              ngx_http_cinematch_reload_answer(r, rl, 0));
        return;
    }

    ngx_add_timer(&rl->poll, NGX_HTTP_CINEMATCH_RELOAD_POLL);
}


static void
ngx_http_cinematch_reload_cleanup(void *data)
{
    ngx_http_cinematch_reload_t *rl = data;

    if (rl->poll.timer_set) {
        ngx_del_timer(&rl->poll);
    }
}


/*
 * 200 once every daemon republished its models (what it loaded now), 202
 * when some did not within the wait: the reload was asked for, and a
 * daemon without a database connection never hears it.
 */

static ngx_int_t
ngx_http_cinematch_reload_answer(ngx_http_request_t *r,
    ngx_http_cinematch_reload_t *rl, ngx_uint_t confirmed)
{
    json_t                             *daemons, *models, *o;
    ngx_uint_t                          i, m;
    ngx_http_cinematch_infer_status_t   st;

    daemons = json_array();
    if (daemons == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    for (i = 0; i < ngx_http_cinematch_infer_ndaemons(); i++) {
        ngx_http_cinematch_infer_get_status(i, &st);

        models = json_array();

        for (m = 0; models != NULL && m < st.nmodels; m++) {
            o = json_pack("{s:s, s:s, s:s}", "name", st.models[m].name,
                          "version", st.models[m].version,
                          "sha256", st.models[m].sha256);

            if (o != NULL && st.models[m].role == CM_IPC_ROLE_CANARY) {
                json_object_set_new(o, "canary_share",
                                    json_real(st.models[m].share_bp
                                              / 10000.0));
            }

            json_array_append_new(models, o);
        }

        o = json_pack("{s:s%, s:b, s:b, s:s, s:o*}",
                      "socket", (char *) st.socket.data, st.socket.len,
                      "reloaded", (int) (i < NGX_HTTP_CINEMATCH_MAX_INFER
                                         && ngx_http_cinematch_infer_models_seq(i)
                                            != rl->seq[i]),
                      "ready", (int) st.ready,
                      "status", st.status,
                      "models", models);
        if (o != NULL) {
            json_array_append_new(daemons, o);
        }
    }

    return ngx_http_cinematch_send_json(r,
               confirmed ? NGX_HTTP_OK : NGX_HTTP_ACCEPTED,
               json_pack("{s:s, s:o}",
                         "status", confirmed ? "reloaded" : "requested",
                         "daemons", daemons));
}


/* /metrics */

#define NGX_HTTP_CINEMATCH_CACHE_HELP                                        \
    "# HELP cinematch_cache_hits_total Answers of recommend, similar and "   \
    "popular served from the Redis cache.\n"                                 \
    "# TYPE cinematch_cache_hits_total counter\n"

#define NGX_HTTP_CINEMATCH_CACHE_MISS_HELP                                   \
    "# HELP cinematch_cache_misses_total Cache lookups that found nothing "  \
    "(the daemon answered).\n"                                               \
    "# TYPE cinematch_cache_misses_total counter\n"

#define NGX_HTTP_CINEMATCH_CACHE_ERR_HELP                                    \
    "# HELP cinematch_cache_errors_total Cache lookups Redis did not "       \
    "answer (served uncached).\n"                                            \
    "# TYPE cinematch_cache_errors_total counter\n"

#define NGX_HTTP_CINEMATCH_LOG_HELP                                          \
    "# HELP cinematch_request_log_written_total Request log entries "        \
    "written to request_logs.\n"                                             \
    "# TYPE cinematch_request_log_written_total counter\n"

#define NGX_HTTP_CINEMATCH_LOG_DROP_HELP                                     \
    "# HELP cinematch_request_log_dropped_total Request log entries "        \
    "dropped (queue full or PostgreSQL failed).\n"                           \
    "# TYPE cinematch_request_log_dropped_total counter\n"


size_t
ngx_http_cinematch_serving_metrics_size(void)
{
    return sizeof(NGX_HTTP_CINEMATCH_CACHE_HELP)
           + sizeof(NGX_HTTP_CINEMATCH_CACHE_MISS_HELP)
           + 2 * NGX_HTTP_CINEMATCH_EP_N
             * (sizeof("cinematch_cache_misses_total{endpoint=\"recommend\"} \n")
                + NGX_ATOMIC_T_LEN)
           + sizeof(NGX_HTTP_CINEMATCH_CACHE_ERR_HELP)
           + sizeof("cinematch_cache_errors_total \n") + NGX_ATOMIC_T_LEN
           + sizeof(NGX_HTTP_CINEMATCH_LOG_HELP)
           + sizeof("cinematch_request_log_written_total \n")
           + NGX_ATOMIC_T_LEN
           + sizeof(NGX_HTTP_CINEMATCH_LOG_DROP_HELP)
           + sizeof("cinematch_request_log_dropped_total \n")
           + NGX_ATOMIC_T_LEN;
}


u_char *
ngx_http_cinematch_serving_metrics(u_char *p)
{
    ngx_uint_t                        i;
    ngx_http_cinematch_serving_sh_t  *sh;

    sh = ngx_http_cinematch_serving_sh();
    if (sh == NULL) {
        return p;
    }

    p = ngx_cpymem(p, NGX_HTTP_CINEMATCH_CACHE_HELP,
                   sizeof(NGX_HTTP_CINEMATCH_CACHE_HELP) - 1);

    for (i = 0; i < NGX_HTTP_CINEMATCH_EP_N; i++) {
        p = ngx_sprintf(p, "cinematch_cache_hits_total{endpoint=\"%V\"} %uA\n",
                        &ngx_http_cinematch_serving_endpoints[i],
                        sh->hits[i]);
    }

    p = ngx_cpymem(p, NGX_HTTP_CINEMATCH_CACHE_MISS_HELP,
                   sizeof(NGX_HTTP_CINEMATCH_CACHE_MISS_HELP) - 1);

    for (i = 0; i < NGX_HTTP_CINEMATCH_EP_N; i++) {
        p = ngx_sprintf(p, "cinematch_cache_misses_total{endpoint=\"%V\"} "
                        "%uA\n", &ngx_http_cinematch_serving_endpoints[i],
                        sh->misses[i]);
    }

    p = ngx_cpymem(p, NGX_HTTP_CINEMATCH_CACHE_ERR_HELP,
                   sizeof(NGX_HTTP_CINEMATCH_CACHE_ERR_HELP) - 1);
    p = ngx_sprintf(p, "cinematch_cache_errors_total %uA\n",
                    sh->cache_errors);

    p = ngx_cpymem(p, NGX_HTTP_CINEMATCH_LOG_HELP,
                   sizeof(NGX_HTTP_CINEMATCH_LOG_HELP) - 1);
    p = ngx_sprintf(p, "cinematch_request_log_written_total %uA\n",
                    sh->log_written);

    p = ngx_cpymem(p, NGX_HTTP_CINEMATCH_LOG_DROP_HELP,
                   sizeof(NGX_HTTP_CINEMATCH_LOG_DROP_HELP) - 1);
    p = ngx_sprintf(p, "cinematch_request_log_dropped_total %uA\n",
                    sh->log_dropped);

    return p;
}


/*
 * ngx_http_cinematch_metrics.c: Prometheus metrics kept in an nginx shared
 * zone, so that every worker counts into the same numbers and /metrics
 * from any worker shows them all.
 *
 * The zone ("cinematch_metrics", created implicitly) holds only atomic
 * words; nothing takes a lock:
 *
 *   requests[]   open-addressed table of (route, method, status) -> count.
 *                A free entry is claimed by a CAS of its key from 0, so
 *                two workers inserting the same key end up sharing one.
 *   hist[]       per route label: request counts per duration bucket
 *                (not cumulative; summed when rendered) and the sum in ms.
 *   upstream_errors[], queue_depth[]
 *   ttft[]       chat time to first token, as the client sees it: from
 *                the first byte of the request to the first token record
 *                taken from the daemon's ring (per bucket, and the sum).
 *
 * The inference daemons' own statistics (running and waiting generations,
 * KV cache use, tokens, cancellations, inter-token latency) and the models
 * they serve are not copied here: /metrics reads them from each daemon's
 * segment header when it is rendered (cm_ipc_stats_t), labelled by daemon.
 *
 * The latest drift report (drift_reports, written by `cinematch drift`, a
 * cron-style job with no endpoint of its own) is one indexed PostgreSQL
 * query per scrape; when PostgreSQL does not answer, the drift families
 * are rendered without samples and everything else is unchanged.
 *
 * Durations are $request_time: from the first byte of the request to the
 * log phase, at the millisecond resolution of nginx's cached clock.
 *
 * The layout depends on the route table, so its size does too: a reload
 * with the same module keeps the counters, a different module gets a
 * fresh zone.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <ctype.h>
#include <math.h>
#include <stdlib.h>

#include "ngx_http_cinematch.h"
#if (NGX_HTTP_CINEMATCH_SERVING)
#include "ngx_http_cinematch_serving.h"
#endif
#if (NGX_HTTP_CINEMATCH_INFER)
#include "ngx_http_cinematch_infer.h"
#endif


#define NGX_HTTP_CINEMATCH_METRICS_NCOUNTERS  1024
#define NGX_HTTP_CINEMATCH_METRICS_NBUCKETS   12
#define NGX_HTTP_CINEMATCH_METRICS_NMETHODS   8


typedef struct {
    ngx_atomic_t                         key;     /* 0: free */
    ngx_atomic_t                         value;
} ngx_http_cinematch_metrics_counter_t;


typedef struct {
    ngx_atomic_t                         buckets[
                                    NGX_HTTP_CINEMATCH_METRICS_NBUCKETS + 1];
    ngx_atomic_t                         sum_ms;
} ngx_http_cinematch_metrics_hist_t;


typedef struct {
    time_t                               start_time;  /* first start, kept
                                                         across reloads */
    ngx_atomic_t                         dropped;
    ngx_atomic_t                         upstream_errors[
                                    NGX_HTTP_CINEMATCH_UPSTREAM_N];
    ngx_atomic_t                         queue_depth[
                                    NGX_HTTP_CINEMATCH_MAX_INFER];
    ngx_atomic_t                         ttft[
                                    NGX_HTTP_CINEMATCH_METRICS_NBUCKETS + 1];
    ngx_atomic_t                         ttft_sum_ms;
    ngx_http_cinematch_metrics_counter_t requests[
                                    NGX_HTTP_CINEMATCH_METRICS_NCOUNTERS];
    ngx_http_cinematch_metrics_hist_t    hist[1];  /* nroutes + 1 */
} ngx_http_cinematch_metrics_sh_t;


static ngx_int_t ngx_http_cinematch_metrics_init_zone(
    ngx_shm_zone_t *shm_zone, void *data);
static ngx_http_cinematch_metrics_sh_t *ngx_http_cinematch_metrics_get(
    ngx_http_cinematch_main_conf_t **mcfp);
static ngx_uint_t ngx_http_cinematch_metrics_method(ngx_http_request_t *r);
static u_char *ngx_http_cinematch_metrics_daemons(u_char *p,
    ngx_http_cinematch_main_conf_t *mcf);
static u_char *ngx_http_cinematch_metrics_label(u_char *p, const char *s);
static u_char *ngx_http_cinematch_metrics_drift(u_char *p, PGresult *res);
static ngx_int_t ngx_http_cinematch_metrics_drift_done(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_metrics_render(ngx_http_request_t *r,
    PGresult *drift);


static ngx_str_t  ngx_http_cinematch_metrics_zone_name =
    ngx_string("cinematch_metrics");

static ngx_str_t  ngx_http_cinematch_text_type =
    ngx_string("text/plain; version=0.0.4; charset=utf-8");


/* bucket upper bounds, ms, and the same as Prometheus "le" labels */

static ngx_msec_t  ngx_http_cinematch_metrics_bounds[] = {
    1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000
};

static char  *ngx_http_cinematch_metrics_le[] = {
    "0.001", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5",
    "1", "2.5", "5", "10", "+Inf"
};

/* time to first token: a tiny CPU model answers in milliseconds, a queued
 * request behind long generations in tens of seconds */

static ngx_msec_t  ngx_http_cinematch_metrics_ttft_bounds[] = {
    5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000
};

static char  *ngx_http_cinematch_metrics_ttft_le[] = {
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5",
    "5", "10", "30", "+Inf"
};

static ngx_str_t  ngx_http_cinematch_metrics_methods[] = {
    ngx_string("GET"),
    ngx_string("HEAD"),
    ngx_string("POST"),
    ngx_string("PUT"),
    ngx_string("PATCH"),
    ngx_string("DELETE"),
    ngx_string("OPTIONS"),
    ngx_string("OTHER")
};

static ngx_str_t  ngx_http_cinematch_metrics_upstreams[] = {
    ngx_string("pg"),
    ngx_string("redis"),
    ngx_string("infer")
};


#define ngx_http_cinematch_metrics_size()                                    \
    (sizeof(ngx_http_cinematch_metrics_sh_t)                                 \
     + ngx_http_cinematch_nroutes                                            \
       * sizeof(ngx_http_cinematch_metrics_hist_t))


ngx_int_t
ngx_http_cinematch_metrics_init_conf(ngx_conf_t *cf,
    ngx_http_cinematch_main_conf_t *mcf)
{
    size_t           size;
    ngx_shm_zone_t  *shm_zone;

    /* the slab pool header and its page bookkeeping come first */

    size = ngx_align(ngx_http_cinematch_metrics_size(), ngx_pagesize)
           + 8 * ngx_pagesize;

    shm_zone = ngx_shared_memory_add(cf, &ngx_http_cinematch_metrics_zone_name,
                                     size, &ngx_http_cinematch_module);
    if (shm_zone == NULL) {
        return NGX_ERROR;
    }

    shm_zone->init = ngx_http_cinematch_metrics_init_zone;
    shm_zone->data = mcf;

    mcf->metrics_zone = shm_zone;

    return NGX_OK;
}


static ngx_int_t
ngx_http_cinematch_metrics_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    ngx_slab_pool_t                  *shpool;
    ngx_http_cinematch_metrics_sh_t  *sh;

    if (data) {

        /* a reload: the previous zone had the same size, hence layout */

        shm_zone->data = data;
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        shm_zone->data = shpool->data;
        return NGX_OK;
    }

    sh = ngx_slab_calloc(shpool, ngx_http_cinematch_metrics_size());
    if (sh == NULL) {
        return NGX_ERROR;
    }

    sh->start_time = ngx_time();

    shpool->data = sh;
    shm_zone->data = sh;

    return NGX_OK;
}


static ngx_http_cinematch_metrics_sh_t *
ngx_http_cinematch_metrics_get(ngx_http_cinematch_main_conf_t **mcfp)
{
    ngx_http_cinematch_main_conf_t  *mcf;

    mcf = ngx_http_cycle_get_module_main_conf(ngx_cycle,
                                              ngx_http_cinematch_module);

    if (mcfp) {
        *mcfp = mcf;
    }

    if (mcf == NULL || mcf->metrics_zone == NULL) {
        return NULL;
    }

    return mcf->metrics_zone->data;
}


static ngx_uint_t
ngx_http_cinematch_metrics_method(ngx_http_request_t *r)
{
    switch (r->method) {
    case NGX_HTTP_GET:
        return 0;
    case NGX_HTTP_HEAD:
        return 1;
    case NGX_HTTP_POST:
        return 2;
    case NGX_HTTP_PUT:
        return 3;
    case NGX_HTTP_PATCH:
        return 4;
    case NGX_HTTP_DELETE:
        return 5;
    case NGX_HTTP_OPTIONS:
        return 6;
    default:
        return 7;
    }
}


ngx_int_t
ngx_http_cinematch_metrics_log_handler(ngx_http_request_t *r)
{
    ngx_msec_int_t                         ms;
    ngx_uint_t                             status, label, b, i, n;
    ngx_time_t                            *tp;
    ngx_atomic_uint_t                      key;
    ngx_http_cinematch_ctx_t              *ctx;
    ngx_http_cinematch_metrics_sh_t       *sh;
    ngx_http_cinematch_metrics_hist_t     *hist;
    ngx_http_cinematch_metrics_counter_t  *c;

    ctx = ngx_http_get_module_ctx(r, ngx_http_cinematch_module);
    if (ctx == NULL) {
        return NGX_OK;
    }

    sh = ngx_http_cinematch_metrics_get(NULL);
    if (sh == NULL) {
        return NGX_OK;
    }

    if (r->err_status) {
        status = r->err_status;

    } else {
        status = r->headers_out.status;
    }

    if (status > 999) {
        status = 999;
    }

    label = ctx->route_label;

    key = ((ngx_atomic_uint_t) (label + 1) << 16)
          | (ngx_http_cinematch_metrics_method(r) << 12)
          | status;

    i = (key * 2654435761u) % NGX_HTTP_CINEMATCH_METRICS_NCOUNTERS;

    for (n = 0; n < NGX_HTTP_CINEMATCH_METRICS_NCOUNTERS; n++) {
        c = &sh->requests[i];

        if (c->key == key
            || (c->key == 0 && ngx_atomic_cmp_set(&c->key, 0, key))
            || c->key == key)
        {
            (void) ngx_atomic_fetch_add(&c->value, 1);
            break;
        }

        i = (i + 1) % NGX_HTTP_CINEMATCH_METRICS_NCOUNTERS;
    }

    if (n == NGX_HTTP_CINEMATCH_METRICS_NCOUNTERS) {
        (void) ngx_atomic_fetch_add(&sh->dropped, 1);
    }

    tp = ngx_timeofday();

    ms = (ngx_msec_int_t)
             ((tp->sec - r->start_sec) * 1000 + (tp->msec - r->start_msec));
    ms = ngx_max(ms, 0);

    for (b = 0; b < NGX_HTTP_CINEMATCH_METRICS_NBUCKETS; b++) {
        if ((ngx_msec_t) ms <= ngx_http_cinematch_metrics_bounds[b]) {
            break;
        }
    }

    hist = &sh->hist[label];

    (void) ngx_atomic_fetch_add(&hist->buckets[b], 1);
    (void) ngx_atomic_fetch_add(&hist->sum_ms, (ngx_atomic_int_t) ms);

    return NGX_OK;
}


/* when nginx started serving cinematch: a reload does not reset it */

time_t
ngx_http_cinematch_metrics_start_time(void)
{
    ngx_http_cinematch_main_conf_t   *mcf;
    ngx_http_cinematch_metrics_sh_t  *sh;

    sh = ngx_http_cinematch_metrics_get(&mcf);

    if (sh != NULL) {
        return sh->start_time;
    }

    return (mcf != NULL) ? mcf->start_time : ngx_time();
}


void
ngx_http_cinematch_metrics_upstream_error(ngx_uint_t upstream)
{
    ngx_http_cinematch_metrics_sh_t  *sh;

    sh = ngx_http_cinematch_metrics_get(NULL);

    if (sh != NULL && upstream < NGX_HTTP_CINEMATCH_UPSTREAM_N) {
        (void) ngx_atomic_fetch_add(&sh->upstream_errors[upstream], 1);
    }
}


void
ngx_http_cinematch_metrics_set_queue_depth(ngx_uint_t daemon,
    ngx_uint_t depth)
{
    ngx_http_cinematch_metrics_sh_t  *sh;

    sh = ngx_http_cinematch_metrics_get(NULL);

    if (sh != NULL && daemon < NGX_HTTP_CINEMATCH_MAX_INFER) {
        sh->queue_depth[daemon] = depth;
    }
}


void
ngx_http_cinematch_metrics_chat_first_token(ngx_http_request_t *r)
{
    ngx_uint_t                        b;
    ngx_msec_int_t                    ms;
    ngx_time_t                       *tp;
    ngx_http_cinematch_metrics_sh_t  *sh;

    sh = ngx_http_cinematch_metrics_get(NULL);
    if (sh == NULL) {
        return;
    }

    /* the cached clock: updated on every event, and a token arrives with
     * a doorbell event, so it is at most that event's age */
    tp = ngx_timeofday();

    ms = (ngx_msec_int_t)
             ((tp->sec - r->start_sec) * 1000 + (tp->msec - r->start_msec));
    ms = ngx_max(ms, 0);

    for (b = 0; b < NGX_HTTP_CINEMATCH_METRICS_NBUCKETS; b++) {
        if ((ngx_msec_t) ms <= ngx_http_cinematch_metrics_ttft_bounds[b]) {
            break;
        }
    }

    (void) ngx_atomic_fetch_add(&sh->ttft[b], 1);
    (void) ngx_atomic_fetch_add(&sh->ttft_sum_ms, (ngx_atomic_int_t) ms);
}


#define NGX_HTTP_CINEMATCH_REQUESTS_HELP                                     \
    "# HELP cinematch_http_requests_total HTTP requests answered by the "    \
    "cinematch module.\n"                                                    \
    "# TYPE cinematch_http_requests_total counter\n"

#define NGX_HTTP_CINEMATCH_DURATION_HELP                                     \
    "# HELP cinematch_http_request_duration_seconds Time from the first "    \
    "byte of a request to its log phase.\n"                                  \
    "# TYPE cinematch_http_request_duration_seconds histogram\n"

#define NGX_HTTP_CINEMATCH_UPSTREAM_HELP                                     \
    "# HELP cinematch_upstream_errors_total Failed calls to PostgreSQL, "    \
    "Redis and the inference daemons.\n"                                     \
    "# TYPE cinematch_upstream_errors_total counter\n"

#define NGX_HTTP_CINEMATCH_QUEUE_HELP                                        \
    "# HELP cinematch_inference_queue_depth Requests submitted to or "       \
    "running in an inference daemon.\n"                                      \
    "# TYPE cinematch_inference_queue_depth gauge\n"

#define NGX_HTTP_CINEMATCH_TTFT_HELP                                         \
    "# HELP cinematch_chat_time_to_first_token_seconds Time from the first " \
    "byte of a chat request to its first generated token reaching nginx.\n" \
    "# TYPE cinematch_chat_time_to_first_token_seconds histogram\n"

/* the daemons' families: name, type, help */

typedef struct {
    char  *name;
    char  *type;
    char  *help;
} ngx_http_cinematch_metrics_family_t;

static ngx_http_cinematch_metrics_family_t  ngx_http_cinematch_daemon_fams[] = {
    { "cinematch_infer_running_sequences", "gauge",
      "Generations decoding in an inference daemon (each holds a KV cache)." },
    { "cinematch_infer_waiting_sequences", "gauge",
      "Generations admitted and waiting for a free KV cache." },
    { "cinematch_infer_max_sequences", "gauge",
      "KV caches in a daemon's pool (0: no dialog model loaded)." },
    { "cinematch_infer_kv_cache_usage_ratio", "gauge",
      "Tokens held in KV caches over the pool's capacity"
      " (max sequences x context)." },
    { "cinematch_chat_tokens_total", "counter",
      "Tokens prefilled (type=prompt) and generated (type=completion)"
      " by the inference daemons." },
    { "cinematch_chat_cancellations_total", "counter",
      "Generations cancelled before they finished (client or worker"
      " went away)." },
    { "cinematch_chat_queue_rejections_total", "counter",
      "Generations refused because the wait queue was full (503)." },
    { "cinematch_chat_inter_token_latency_seconds", "histogram",
      "Time between two consecutive tokens of one generation reaching"
      " its stream." },
    { "cinematch_model_info", "gauge",
      "Models an inference daemon serves now (value 1), by name and"
      " registry version." },
    { "cinematch_infer_answer_cache_requests_total", "counter",
      "Recommendations the daemon's answer cache was asked for, by"
      " result (hit: answered without scoring)." },
    { "cinematch_infer_answer_cache_entries", "gauge",
      "Recommendation answers the daemon's answer cache holds now." }
};

#define NGX_HTTP_CINEMATCH_NDAEMON_FAMS                                      \
    (sizeof(ngx_http_cinematch_daemon_fams)                                  \
     / sizeof(ngx_http_cinematch_metrics_family_t))

/* HELP and TYPE lines of all of them, and everything one daemon adds
 * (13 buckets and a dozen more samples with a 64-byte label, and up to 16
 * model lines of 64 + 32 + 32 bytes of labels), rounded up */
#define NGX_HTTP_CINEMATCH_DAEMON_HELP_TEXT  4096
#define NGX_HTTP_CINEMATCH_DAEMON_TEXT       (6144 + CM_IPC_MAX_MODELS * 256)


/* the latest drift report: SQL column, metric, help (all gauges) */

#define NGX_HTTP_CINEMATCH_DRIFT_SQL                                         \
    "SELECT extract(epoch FROM created_at)::float8, ks_statistic,"           \
    " ks_pvalue, psi, (mean_current - mean_baseline)"                        \
    " / NULLIF(mean_baseline, 0), new_item_share, alert::int,"               \
    " current_rows FROM drift_reports ORDER BY created_at DESC LIMIT 1"

static ngx_http_cinematch_metrics_family_t  ngx_http_cinematch_drift_fams[] = {
    { "cinematch_drift_report_timestamp_seconds", "gauge",
      "When the latest drift report was written (Unix time)." },
    { "cinematch_drift_ks_statistic", "gauge",
      "Kolmogorov-Smirnov statistic of rating values, training vs buffer,"
      " in the latest drift report." },
    { "cinematch_drift_ks_pvalue", "gauge",
      "Kolmogorov-Smirnov p-value in the latest drift report." },
    { "cinematch_drift_psi", "gauge",
      "Population stability index (0.1 moderate, 0.25 significant) in the"
      " latest drift report." },
    { "cinematch_drift_mean_shift_ratio", "gauge",
      "Change of the mean rating over the training mean in the latest"
      " drift report." },
    { "cinematch_drift_new_item_share", "gauge",
      "Share of buffered ratings on items unseen in training in the"
      " latest drift report." },
    { "cinematch_drift_detected", "gauge",
      "1 when the latest drift report found drift." },
    { "cinematch_drift_current_rows", "gauge",
      "Buffered ratings the latest drift report compared." }
};

#define NGX_HTTP_CINEMATCH_NDRIFT_FAMS                                       \
    (sizeof(ngx_http_cinematch_drift_fams)                                   \
     / sizeof(ngx_http_cinematch_metrics_family_t))

/* a number from PostgreSQL's text, kept as it is written */
#define NGX_HTTP_CINEMATCH_DRIFT_NUM  32


#define NGX_HTTP_CINEMATCH_DROPPED_HELP                                      \
    "# HELP cinematch_metrics_dropped_total Requests not counted because "   \
    "the metrics table was full.\n"                                          \
    "# TYPE cinematch_metrics_dropped_total counter\n"

#define NGX_HTTP_CINEMATCH_START_HELP                                        \
    "# HELP cinematch_start_time_seconds When nginx started serving "        \
    "cinematch (Unix time; reloads keep it).\n"                               \
    "# TYPE cinematch_start_time_seconds gauge\n"

#define NGX_HTTP_CINEMATCH_BUILD_HELP                                        \
    "# HELP cinematch_build_info The cinematch module version.\n"            \
    "# TYPE cinematch_build_info gauge\n"


/*
 * A label value from a daemon's model table (NUL-terminated, at most 31
 * bytes): the other process's text, so anything outside what names and
 * versions are made of becomes '_' and can never end the label.
 */
static u_char *
ngx_http_cinematch_metrics_label(u_char *p, const char *s)
{
    ngx_uint_t  i;

    for (i = 0; i < 31 && s[i] != '\0'; i++) {
        *p++ = (isalnum((u_char) s[i]) || ngx_strchr("._:+-", s[i]) != NULL)
               ? (u_char) s[i] : '_';
    }

    return p;
}


/*
 * The latest drift report, one gauge per column.  A value is printed as
 * PostgreSQL wrote it (float8 text such as "1.5e-12" is valid Prometheus
 * text) once strtod accepts all of it as a finite number; NULL columns
 * (a report without a KS test) have no sample.
 */
static u_char *
ngx_http_cinematch_metrics_drift(u_char *p, PGresult *res)
{
    int                                   len;
    char                                 *v, *end;
    double                                d;
    ngx_uint_t                            f;
    ngx_http_cinematch_metrics_family_t  *fam;

    if (res != NULL && (PQntuples(res) != 1
                        || PQnfields(res) != NGX_HTTP_CINEMATCH_NDRIFT_FAMS))
    {
        res = NULL;
    }

    for (f = 0; f < NGX_HTTP_CINEMATCH_NDRIFT_FAMS; f++) {
        fam = &ngx_http_cinematch_drift_fams[f];

        p = ngx_sprintf(p, "# HELP %s %s\n# TYPE %s %s\n",
                        fam->name, fam->help, fam->name, fam->type);

        if (res == NULL || PQgetisnull(res, 0, (int) f)) {
            continue;
        }

        v = PQgetvalue(res, 0, (int) f);
        len = PQgetlength(res, 0, (int) f);

        if (len < 1 || len > NGX_HTTP_CINEMATCH_DRIFT_NUM) {
            continue;
        }

        d = strtod(v, &end);

        if (end != v + len || !isfinite(d)) {
            continue;
        }

        p = ngx_sprintf(p, "%s %*s\n", fam->name, (size_t) len, v);
    }

    return p;
}


/*
 * The daemons' families: HELP and TYPE always (a dashboard can rely on the
 * names), then the samples of each connected daemon that publishes
 * statistics, labelled by its segment name.
 */
static u_char *
ngx_http_cinematch_metrics_daemons(u_char *p,
    ngx_http_cinematch_main_conf_t *mcf)
{
    ngx_uint_t                            f;
    ngx_http_cinematch_metrics_family_t  *fam;
#if (NGX_HTTP_CINEMATCH_INFER)
    uint64_t                              cum;
    ngx_str_t                            *name;
    ngx_uint_t                            i, b, n;
    ngx_uint_t                            ok[NGX_HTTP_CINEMATCH_MAX_INFER];
    cm_ipc_stats_snapshot_t              *st;
    cm_ipc_stats_snapshot_t               snap[NGX_HTTP_CINEMATCH_MAX_INFER];
    ngx_uint_t                            m;
    ngx_http_cinematch_infer_conf_t      *ic;
    ngx_http_cinematch_infer_status_t     status;

    n = 0;
    ic = NULL;

    if (mcf->infer) {
        ic = mcf->infer->elts;
        n = ngx_min(mcf->infer->nelts, NGX_HTTP_CINEMATCH_MAX_INFER);
    }

    /* one snapshot per daemon, so that all families agree */

    for (i = 0; i < n; i++) {
        ok[i] = ngx_http_cinematch_infer_get_stats(i, &snap[i]) == NGX_OK;
    }
#endif

    for (f = 0; f < NGX_HTTP_CINEMATCH_NDAEMON_FAMS; f++) {
        fam = &ngx_http_cinematch_daemon_fams[f];

        p = ngx_sprintf(p, "# HELP %s %s\n# TYPE %s %s\n",
                        fam->name, fam->help, fam->name, fam->type);

#if (NGX_HTTP_CINEMATCH_INFER)

        for (i = 0; i < n; i++) {
            if (!ok[i]) {
                continue;
            }

            st = &snap[i];
            name = &ic[i].shm;

            switch (f) {

            case 0:
                p = ngx_sprintf(p, "%s{daemon=\"%V\"} %uD\n", fam->name,
                                name, st->running_seqs);
                break;

            case 1:
                p = ngx_sprintf(p, "%s{daemon=\"%V\"} %uD\n", fam->name,
                                name, st->waiting_seqs);
                break;

            case 2:
                p = ngx_sprintf(p, "%s{daemon=\"%V\"} %uD\n", fam->name,
                                name, st->max_seqs);
                break;

            case 3:
                p = ngx_sprintf(p, "%s{daemon=\"%V\"} %.6f\n", fam->name,
                                name, st->kv_cap_tokens == 0 ? 0.0
                                : (double) st->kv_used_tokens
                                  / (double) st->kv_cap_tokens);
                break;

            case 4:
                p = ngx_sprintf(p, "%s{daemon=\"%V\",type=\"prompt\"} %uL\n"
                                "%s{daemon=\"%V\",type=\"completion\"} %uL\n",
                                fam->name, name, st->prompt_tokens,
                                fam->name, name, st->completion_tokens);
                break;

            case 5:
                p = ngx_sprintf(p, "%s{daemon=\"%V\"} %uL\n", fam->name,
                                name, st->cancellations);
                break;

            case 6:
                p = ngx_sprintf(p, "%s{daemon=\"%V\"} %uL\n", fam->name,
                                name, st->queue_rejections);
                break;

            case 8:
                ngx_http_cinematch_infer_get_status(i, &status);

                for (m = 0; m < status.nmodels; m++) {
                    p = ngx_sprintf(p, "%s{daemon=\"%V\",model=\"", fam->name,
                                    name);
                    p = ngx_http_cinematch_metrics_label(p,
                                                      status.models[m].name);
                    p = ngx_cpymem(p, "\",version=\"", 11);
                    p = ngx_http_cinematch_metrics_label(p,
                                                   status.models[m].version);
                    p = ngx_cpymem(p, "\"} 1\n", 5);
                }

                break;

            case 9:
                if (st->has_answer_cache) {
                    p = ngx_sprintf(p, "%s{daemon=\"%V\",result=\"hit\"} %uL\n"
                                    "%s{daemon=\"%V\",result=\"miss\"} %uL\n",
                                    fam->name, name, st->answer_cache_hits,
                                    fam->name, name, st->answer_cache_misses);
                }
                break;

            case 10:
                if (st->has_answer_cache) {
                    p = ngx_sprintf(p, "%s{daemon=\"%V\"} %uL\n", fam->name,
                                    name, st->answer_cache_entries);
                }
                break;

            default:    /* 7: the inter-token latency histogram */
                cum = 0;

                for (b = 0; b <= CM_IPC_ITL_NBUCKETS; b++) {
                    cum += st->itl_buckets[b];

                    p = ngx_sprintf(p, "%s_bucket{daemon=\"%V\",le=\"%s\"}"
                                    " %uL\n", fam->name, name,
                                    cm_ipc_itl_le[b], cum);
                }

                p = ngx_sprintf(p, "%s_sum{daemon=\"%V\"} %uL.%09uL\n"
                                "%s_count{daemon=\"%V\"} %uL\n",
                                fam->name, name,
                                st->itl_sum_ns / 1000000000,
                                st->itl_sum_ns % 1000000000,
                                fam->name, name, cum);
                break;
            }
        }

#endif
    }

#if !(NGX_HTTP_CINEMATCH_INFER)
    (void) mcf;
#endif

    return p;
}


ngx_int_t
ngx_http_cinematch_metrics_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    ngx_http_cinematch_main_conf_t  *mcf;

    if (ngx_http_cinematch_metrics_get(&mcf) == NULL
        || mcf->pg_conninfo.len == 0)
    {
        return ngx_http_cinematch_metrics_render(r, NULL);
    }

    switch (ngx_http_cinematch_pg_query(r, NGX_HTTP_CINEMATCH_DRIFT_SQL, 0,
                                        NULL,
                                        ngx_http_cinematch_metrics_drift_done,
                                        NULL))
    {
    case NGX_OK:
        return NGX_DONE;

    case NGX_ERROR:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;

    default:
        /* PostgreSQL down or saturated: the rest is still worth scraping */
        return ngx_http_cinematch_metrics_render(r, NULL);
    }
}


static ngx_int_t
ngx_http_cinematch_metrics_drift_done(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    if (err != NULL || res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "cinematch: /metrics without drift: %s",
                      err != NULL ? err
                      : (res != NULL ? PQresultErrorMessage(res)
                                     : "no result"));
        res = NULL;
    }

    return ngx_http_cinematch_metrics_render(r, res);
}


static ngx_int_t
ngx_http_cinematch_metrics_render(ngx_http_request_t *r, PGresult *drift)
{
    u_char                                *p, *body;
    size_t                                 size, route_max;
    ngx_uint_t                             i, b, label, method, status;
    ngx_str_t                             *route;
    ngx_atomic_uint_t                      key, value, count, cum;
    ngx_http_cinematch_main_conf_t        *mcf;
    ngx_http_cinematch_metrics_sh_t       *sh;
    ngx_http_cinematch_metrics_hist_t     *hist;
    ngx_http_cinematch_infer_conf_t       *ic;
    ngx_http_cinematch_metrics_counter_t  *c;

    sh = ngx_http_cinematch_metrics_get(&mcf);
    if (sh == NULL) {
        return ngx_http_cinematch_send_error(r,
                                     NGX_HTTP_SERVICE_UNAVAILABLE,
                                     "unavailable", "metrics are disabled");
    }

    route_max = sizeof("unmatched") - 1;

    for (i = 0; i < ngx_http_cinematch_nroutes; i++) {
        route_max = ngx_max(route_max,
                            ngx_http_cinematch_routes[i].pattern.len);
    }

    /* an upper bound of the text, so that it is allocated once */

    size = sizeof(NGX_HTTP_CINEMATCH_REQUESTS_HELP)
           + NGX_HTTP_CINEMATCH_METRICS_NCOUNTERS
             * (sizeof("cinematch_http_requests_total"
                       "{route=\"\",method=\"OPTIONS\",status=\"999\"} \n")
                + route_max + NGX_ATOMIC_T_LEN)
           + sizeof(NGX_HTTP_CINEMATCH_DURATION_HELP)
           + (ngx_http_cinematch_nroutes + 1)
             * ((NGX_HTTP_CINEMATCH_METRICS_NBUCKETS + 1)
                * (sizeof("cinematch_http_request_duration_seconds_bucket"
                          "{route=\"\",le=\"0.025\"} \n")
                   + route_max + NGX_ATOMIC_T_LEN)
                + sizeof("cinematch_http_request_duration_seconds_sum"
                         "{route=\"\"} .000\n")
                + route_max + NGX_ATOMIC_T_LEN
                + sizeof("cinematch_http_request_duration_seconds_count"
                         "{route=\"\"} \n")
                + route_max + NGX_ATOMIC_T_LEN)
           + sizeof(NGX_HTTP_CINEMATCH_UPSTREAM_HELP)
           + NGX_HTTP_CINEMATCH_UPSTREAM_N
             * (sizeof("cinematch_upstream_errors_total{upstream=\"redis\"} \n")
                + NGX_ATOMIC_T_LEN)
           + sizeof(NGX_HTTP_CINEMATCH_QUEUE_HELP)
           + NGX_HTTP_CINEMATCH_MAX_INFER
             * (sizeof("cinematch_inference_queue_depth{daemon=\"\"} \n")
                + 64 + NGX_ATOMIC_T_LEN)
           + sizeof(NGX_HTTP_CINEMATCH_TTFT_HELP)
           + (NGX_HTTP_CINEMATCH_METRICS_NBUCKETS + 1)
             * (sizeof("cinematch_chat_time_to_first_token_seconds_bucket"
                       "{le=\"0.025\"} \n") + NGX_ATOMIC_T_LEN)
           + 2 * (sizeof("cinematch_chat_time_to_first_token_seconds_count"
                         " .000\n") + NGX_ATOMIC_T_LEN)
           + NGX_HTTP_CINEMATCH_DAEMON_HELP_TEXT
           + NGX_HTTP_CINEMATCH_MAX_INFER * NGX_HTTP_CINEMATCH_DAEMON_TEXT
           + NGX_HTTP_CINEMATCH_NDRIFT_FAMS
             * (256 + 64 + NGX_HTTP_CINEMATCH_DRIFT_NUM)
           + sizeof(NGX_HTTP_CINEMATCH_DROPPED_HELP)
           + sizeof("cinematch_metrics_dropped_total \n") + NGX_ATOMIC_T_LEN
           + sizeof(NGX_HTTP_CINEMATCH_START_HELP)
           + sizeof("cinematch_start_time_seconds \n") + NGX_TIME_T_LEN
           + sizeof(NGX_HTTP_CINEMATCH_BUILD_HELP)
           + sizeof("cinematch_build_info{version=\"\"} 1\n")
           + sizeof(NGX_HTTP_CINEMATCH_VERSION);

#if (NGX_HTTP_CINEMATCH_SERVING)
    size += ngx_http_cinematch_serving_metrics_size();
#endif

    body = ngx_pnalloc(r->pool, size);
    if (body == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_cpymem(body, NGX_HTTP_CINEMATCH_REQUESTS_HELP,
                   sizeof(NGX_HTTP_CINEMATCH_REQUESTS_HELP) - 1);

    for (i = 0; i < NGX_HTTP_CINEMATCH_METRICS_NCOUNTERS; i++) {
        c = &sh->requests[i];
        key = c->key;
        value = c->value;

        if (key == 0) {
            continue;
        }

        label = (key >> 16) - 1;
        method = (key >> 12) & 0xf;
        status = key & 0xfff;

        if (method >= NGX_HTTP_CINEMATCH_METRICS_NMETHODS) {
            continue;
        }

        p = ngx_sprintf(p, "cinematch_http_requests_total"
                        "{route=\"%V\",method=\"%V\",status=\"%ui\"} %uA\n",
                        ngx_http_cinematch_route_name(label),
                        &ngx_http_cinematch_metrics_methods[method],
                        status, value);
    }

    p = ngx_cpymem(p, NGX_HTTP_CINEMATCH_DURATION_HELP,
                   sizeof(NGX_HTTP_CINEMATCH_DURATION_HELP) - 1);

    for (label = 0; label <= ngx_http_cinematch_nroutes; label++) {
        hist = &sh->hist[label];

        count = 0;
        for (b = 0; b <= NGX_HTTP_CINEMATCH_METRICS_NBUCKETS; b++) {
            count += hist->buckets[b];
        }

        if (count == 0) {
            continue;
        }

        route = ngx_http_cinematch_route_name(label);
        cum = 0;

        for (b = 0; b <= NGX_HTTP_CINEMATCH_METRICS_NBUCKETS; b++) {
            cum += hist->buckets[b];

            p = ngx_sprintf(p, "cinematch_http_request_duration_seconds_bucket"
                            "{route=\"%V\",le=\"%s\"} %uA\n",
                            route, ngx_http_cinematch_metrics_le[b], cum);
        }

        value = hist->sum_ms;

        p = ngx_sprintf(p, "cinematch_http_request_duration_seconds_sum"
                        "{route=\"%V\"} %uA.%03uA\n",
                        route, value / 1000, value % 1000);

        p = ngx_sprintf(p, "cinematch_http_request_duration_seconds_count"
                        "{route=\"%V\"} %uA\n", route, cum);
    }

    p = ngx_cpymem(p, NGX_HTTP_CINEMATCH_UPSTREAM_HELP,
                   sizeof(NGX_HTTP_CINEMATCH_UPSTREAM_HELP) - 1);

    for (i = 0; i < NGX_HTTP_CINEMATCH_UPSTREAM_N; i++) {
        p = ngx_sprintf(p, "cinematch_upstream_errors_total"
                        "{upstream=\"%V\"} %uA\n",
                        &ngx_http_cinematch_metrics_upstreams[i],
                        sh->upstream_errors[i]);
    }

    p = ngx_cpymem(p, NGX_HTTP_CINEMATCH_QUEUE_HELP,
                   sizeof(NGX_HTTP_CINEMATCH_QUEUE_HELP) - 1);

    if (mcf->infer) {
        ic = mcf->infer->elts;

        for (i = 0; i < mcf->infer->nelts; i++) {

            /* shm names are "/name" of at most 63 bytes (see the parser) */

            p = ngx_sprintf(p, "cinematch_inference_queue_depth"
                            "{daemon=\"%V\"} %uA\n",
                            &ic[i].shm, sh->queue_depth[i]);
        }
    }

    p = ngx_cpymem(p, NGX_HTTP_CINEMATCH_TTFT_HELP,
                   sizeof(NGX_HTTP_CINEMATCH_TTFT_HELP) - 1);

    cum = 0;

    for (b = 0; b <= NGX_HTTP_CINEMATCH_METRICS_NBUCKETS; b++) {
        cum += sh->ttft[b];

        p = ngx_sprintf(p, "cinematch_chat_time_to_first_token_seconds_bucket"
                        "{le=\"%s\"} %uA\n",
                        ngx_http_cinematch_metrics_ttft_le[b], cum);
    }

    value = sh->ttft_sum_ms;

    p = ngx_sprintf(p, "cinematch_chat_time_to_first_token_seconds_sum"
                    " %uA.%03uA\n", value / 1000, value % 1000);
    p = ngx_sprintf(p, "cinematch_chat_time_to_first_token_seconds_count"
                    " %uA\n", cum);

    p = ngx_http_cinematch_metrics_daemons(p, mcf);

    p = ngx_http_cinematch_metrics_drift(p, drift);

    p = ngx_cpymem(p, NGX_HTTP_CINEMATCH_DROPPED_HELP,
                   sizeof(NGX_HTTP_CINEMATCH_DROPPED_HELP) - 1);

    p = ngx_sprintf(p, "cinematch_metrics_dropped_total %uA\n", sh->dropped);

    p = ngx_cpymem(p, NGX_HTTP_CINEMATCH_START_HELP,
                   sizeof(NGX_HTTP_CINEMATCH_START_HELP) - 1);

    p = ngx_sprintf(p, "cinematch_start_time_seconds %T\n", sh->start_time);

    p = ngx_cpymem(p, NGX_HTTP_CINEMATCH_BUILD_HELP,
                   sizeof(NGX_HTTP_CINEMATCH_BUILD_HELP) - 1);

    p = ngx_sprintf(p, "cinematch_build_info{version=\"%s\"} 1\n",
                    NGX_HTTP_CINEMATCH_VERSION);

#if (NGX_HTTP_CINEMATCH_SERVING)
    p = ngx_http_cinematch_serving_metrics(p);
#endif

    return ngx_http_cinematch_send_buf(r, NGX_HTTP_OK,
                                       &ngx_http_cinematch_text_type,
                                       body, p - body);
}


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

#include "ngx_http_cinematch.h"
#if (NGX_HTTP_CINEMATCH_SERVING)
#include "ngx_http_cinematch_serving.h"
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
    ngx_http_cinematch_metrics_counter_t requests[
                                    NGX_HTTP_CINEMATCH_METRICS_NCOUNTERS];
    ngx_http_cinematch_metrics_hist_t    hist[1];  /* nroutes + 1 */
} ngx_http_cinematch_metrics_sh_t;


static ngx_int_t ngx_http_cinematch_metrics_init_zone(
    ngx_shm_zone_t *shm_zone, void *data);
static ngx_http_cinematch_metrics_sh_t *ngx_http_cinematch_metrics_get(
    ngx_http_cinematch_main_conf_t **mcfp);
static ngx_uint_t ngx_http_cinematch_metrics_method(ngx_http_request_t *r);


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


ngx_int_t
ngx_http_cinematch_metrics_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
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

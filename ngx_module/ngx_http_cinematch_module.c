
/*
 * ngx_http_cinematch_module.c: directives, configuration and the process
 * hooks that start the per-worker PostgreSQL pool, the Redis connection
 * and the inference daemon client.
 *
 *   http {
 *       cinematch_postgres       "host=127.0.0.1 dbname=cinematch";
 *       cinematch_postgres_pool  4;
 *       cinematch_query_timeout  5s;
 *       cinematch_redis          127.0.0.1:6379;      # or unix:/path
 *       cinematch_redis_timeout  1s;
 *       cinematch_infer          unix:/run/cinematch/infer-0.sock
 *                                shm=/cinematch-infer-0;
 *       server {
 *           location / {
 *               cinematch;
 *               cinematch_max_body_size  1m;
 *               cinematch_echo           off;
 *           }
 *       }
 *   }
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_cinematch.h"


static ngx_int_t ngx_http_cinematch_add_variables(ngx_conf_t *cf);
static ngx_int_t ngx_http_cinematch_init(ngx_conf_t *cf);
static void *ngx_http_cinematch_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_cinematch_init_main_conf(ngx_conf_t *cf, void *conf);
static void *ngx_http_cinematch_create_loc_conf(ngx_conf_t *cf);
static char *ngx_http_cinematch_merge_loc_conf(ngx_conf_t *cf, void *parent,
    void *child);
static char *ngx_http_cinematch(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_cinematch_postgres(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_cinematch_redis(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static char *ngx_http_cinematch_infer(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf);
static ngx_int_t ngx_http_cinematch_request_id_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data);
static ngx_int_t ngx_http_cinematch_init_process(ngx_cycle_t *cycle);
static void ngx_http_cinematch_exit_process(ngx_cycle_t *cycle);


static ngx_conf_num_bounds_t  ngx_http_cinematch_pool_bounds = {
    ngx_conf_check_num_bounds, 1, 64
};


static ngx_command_t  ngx_http_cinematch_commands[] = {

    { ngx_string("cinematch"),
      NGX_HTTP_LOC_CONF|NGX_CONF_NOARGS,
      ngx_http_cinematch,
      NGX_HTTP_LOC_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("cinematch_max_body_size"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_size_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_cinematch_loc_conf_t, max_body_size),
      NULL },

    { ngx_string("cinematch_echo"),
      NGX_HTTP_MAIN_CONF|NGX_HTTP_SRV_CONF|NGX_HTTP_LOC_CONF|NGX_CONF_FLAG,
      ngx_conf_set_flag_slot,
      NGX_HTTP_LOC_CONF_OFFSET,
      offsetof(ngx_http_cinematch_loc_conf_t, echo),
      NULL },

    { ngx_string("cinematch_postgres"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_cinematch_postgres,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("cinematch_postgres_pool"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_num_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_cinematch_main_conf_t, pg_pool_size),
      &ngx_http_cinematch_pool_bounds },

    { ngx_string("cinematch_query_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_cinematch_main_conf_t, pg_timeout),
      NULL },

    { ngx_string("cinematch_redis"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_http_cinematch_redis,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

    { ngx_string("cinematch_redis_timeout"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_msec_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_cinematch_main_conf_t, redis_timeout),
      NULL },

    { ngx_string("cinematch_infer"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE2,
      ngx_http_cinematch_infer,
      NGX_HTTP_MAIN_CONF_OFFSET,
      0,
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_cinematch_module_ctx = {
    ngx_http_cinematch_add_variables,      /* preconfiguration */
    ngx_http_cinematch_init,               /* postconfiguration */

    ngx_http_cinematch_create_main_conf,   /* create main configuration */
    ngx_http_cinematch_init_main_conf,     /* init main configuration */

    NULL,                                  /* create server configuration */
    NULL,                                  /* merge server configuration */

    ngx_http_cinematch_create_loc_conf,    /* create location configuration */
    ngx_http_cinematch_merge_loc_conf      /* merge location configuration */
};


ngx_module_t  ngx_http_cinematch_module = {
    NGX_MODULE_V1,
    &ngx_http_cinematch_module_ctx,        /* module context */
    ngx_http_cinematch_commands,           /* module directives */
    NGX_HTTP_MODULE,                       /* module type */
    NULL,                                  /* init master */
    NULL,                                  /* init module */
    ngx_http_cinematch_init_process,       /* init process */
    NULL,                                  /* init thread */
    NULL,                                  /* exit thread */
    ngx_http_cinematch_exit_process,       /* exit process */
    NULL,                                  /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_str_t  ngx_http_cinematch_request_id_name =
    ngx_string("cinematch_request_id");


static ngx_int_t
ngx_http_cinematch_add_variables(ngx_conf_t *cf)
{
    ngx_http_variable_t  *var;

    var = ngx_http_add_variable(cf, &ngx_http_cinematch_request_id_name,
                                NGX_HTTP_VAR_NOCACHEABLE);
    if (var == NULL) {
        return NGX_ERROR;
    }

    var->get_handler = ngx_http_cinematch_request_id_variable;

    return ngx_http_cinematch_logvars_add(cf);
}


static ngx_int_t
ngx_http_cinematch_request_id_variable(ngx_http_request_t *r,
    ngx_http_variable_value_t *v, uintptr_t data)
{
    ngx_http_cinematch_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r->main, ngx_http_cinematch_module);

    if (ctx == NULL || ctx->request_id.len == 0) {
        v->not_found = 1;
        return NGX_OK;
    }

    v->len = ctx->request_id.len;
    v->valid = 1;
    v->no_cacheable = 1;
    v->not_found = 0;
    v->data = ctx->request_id.data;

    return NGX_OK;
}


static ngx_int_t
ngx_http_cinematch_init(ngx_conf_t *cf)
{
    ngx_str_t                        name = ngx_string("request_id");
    ngx_http_handler_pt             *h;
    ngx_http_core_main_conf_t       *cmcf;
    ngx_http_cinematch_main_conf_t  *mcf;

    mcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_cinematch_module);

    /* the stock $request_id gives 32 hex digits from a strong source */

    mcf->request_id_index = ngx_http_get_variable_index(cf, &name);
    if (mcf->request_id_index == NGX_ERROR) {
        return NGX_ERROR;
    }

    if (ngx_http_cinematch_router_init(cf) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_cinematch_metrics_init_conf(cf, mcf) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_cinematch_body_filter_init(cf) != NGX_OK) {
        return NGX_ERROR;
    }

    cmcf = ngx_http_conf_get_module_main_conf(cf, ngx_http_core_module);

    h = ngx_array_push(&cmcf->phases[NGX_HTTP_LOG_PHASE].handlers);
    if (h == NULL) {
        return NGX_ERROR;
    }

    *h = ngx_http_cinematch_metrics_log_handler;

    return NGX_OK;
}


static void *
ngx_http_cinematch_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_cinematch_main_conf_t  *mcf;

    mcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_cinematch_main_conf_t));
    if (mcf == NULL) {
        return NULL;
    }

    /*
     * set by ngx_pcalloc():
     *
     *     mcf->pg_conninfo = { 0, NULL };
     *     mcf->redis_host = { 0, NULL };
     *     mcf->redis_port = 0;
     *     mcf->metrics_zone = NULL;
     */

    mcf->pg_pool_size = NGX_CONF_UNSET_UINT;
    mcf->pg_timeout = NGX_CONF_UNSET_MSEC;
    mcf->redis_timeout = NGX_CONF_UNSET_MSEC;
    mcf->infer = NGX_CONF_UNSET_PTR;
    mcf->request_id_index = NGX_ERROR;

    return mcf;
}


static char *
ngx_http_cinematch_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_cinematch_main_conf_t *mcf = conf;

    ngx_conf_init_uint_value(mcf->pg_pool_size, 4);
    ngx_conf_init_msec_value(mcf->pg_timeout, 5000);
    ngx_conf_init_msec_value(mcf->redis_timeout, 1000);
    ngx_conf_init_ptr_value(mcf->infer, NULL);

    mcf->start_time = ngx_time();

    return NGX_CONF_OK;
}


static void *
ngx_http_cinematch_create_loc_conf(ngx_conf_t *cf)
{
    ngx_http_cinematch_loc_conf_t  *conf;

    conf = ngx_pcalloc(cf->pool, sizeof(ngx_http_cinematch_loc_conf_t));
    if (conf == NULL) {
        return NULL;
    }

    conf->enable = NGX_CONF_UNSET;
    conf->echo = NGX_CONF_UNSET;
    conf->max_body_size = NGX_CONF_UNSET_SIZE;

    return conf;
}


static char *
ngx_http_cinematch_merge_loc_conf(ngx_conf_t *cf, void *parent, void *child)
{
    ngx_http_cinematch_loc_conf_t *prev = parent;
    ngx_http_cinematch_loc_conf_t *conf = child;

    ngx_http_core_loc_conf_t  *clcf;

    ngx_conf_merge_value(conf->enable, prev->enable, 0);
    ngx_conf_merge_value(conf->echo, prev->echo, 0);
    ngx_conf_merge_size_value(conf->max_body_size, prev->max_body_size,
                              1024 * 1024);

    if (conf->enable) {

        /*
         * The core checks client_max_body_size against Content-Length
         * before the content handler runs and answers with an HTML page.
         * In a cinematch location cinematch_max_body_size is the limit,
         * enforced by the module with the JSON 413 of the API, so the
         * core's check is switched off here (the core's configuration of
         * this location is already merged: the core module comes first).
         */

        clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
        clcf->client_max_body_size = 0;
    }

    return NGX_CONF_OK;
}


static char *
ngx_http_cinematch(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_cinematch_loc_conf_t *lcf = conf;

    ngx_http_core_loc_conf_t  *clcf;

    if (lcf->enable != NGX_CONF_UNSET) {
        return "is duplicate";
    }

    lcf->enable = 1;

    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    clcf->handler = ngx_http_cinematch_handler;

    return NGX_CONF_OK;
}


static char *
ngx_http_cinematch_postgres(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_cinematch_main_conf_t *mcf = conf;

    char               *errmsg, *host, *hostaddr;
    u_char             *p;
    ngx_str_t          *value;
    PQconninfoOption   *opts, *opt;
#if (NGX_HAVE_INET6)
    u_char              addr6[16];
#endif

    if (mcf->pg_conninfo.data != NULL) {
        return "is duplicate";
    }

    value = cf->args->elts;

    p = ngx_pnalloc(cf->pool, value[1].len + 1);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(p, value[1].data, value[1].len);
    p[value[1].len] = '\0';

    errmsg = NULL;
    host = NULL;
    hostaddr = NULL;
    opts = PQconninfoParse((char *) p, &errmsg);

    if (opts == NULL) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid PostgreSQL connection string \"%V\": %s",
                           &value[1], errmsg ? errmsg : "out of memory");
        if (errmsg) {
            PQfreemem(errmsg);
        }
        return NGX_CONF_ERROR;
    }

    /*
     * libpq resolves a host name inside PQconnectStart()/PQconnectPoll()
     * with a blocking getaddrinfo(): fine for a path or an address, a
     * stall of the worker for a name without hostaddr.
     */

    for (opt = opts; opt->keyword; opt++) {
        if (ngx_strcmp(opt->keyword, "host") == 0) {
            host = opt->val;

        } else if (ngx_strcmp(opt->keyword, "hostaddr") == 0) {
            hostaddr = opt->val;
        }
    }

    if (host != NULL && host[0] != '\0' && host[0] != '/'
        && (hostaddr == NULL || hostaddr[0] == '\0')
        && ngx_inet_addr((u_char *) host, ngx_strlen(host)) == INADDR_NONE
#if (NGX_HAVE_INET6)
        && ngx_inet6_addr((u_char *) host, ngx_strlen(host), addr6) != NGX_OK
#endif
        )
    {
        ngx_conf_log_error(NGX_LOG_WARN, cf, 0,
                           "PostgreSQL host \"%s\" is a name: libpq resolves "
                           "it with a blocking lookup in the worker on every "
                           "connect; add hostaddr=", host);
    }

    PQconninfoFree(opts);

    mcf->pg_conninfo.data = p;
    mcf->pg_conninfo.len = value[1].len;

    return NGX_CONF_OK;
}


static char *
ngx_http_cinematch_redis(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_cinematch_main_conf_t *mcf = conf;

    u_char     *p, *colon;
    ngx_int_t   port;
    ngx_str_t  *value, host;
#if (NGX_HAVE_INET6)
    u_char      addr6[16];
#endif

    if (mcf->redis_host.data != NULL) {
        return "is duplicate";
    }

    value = cf->args->elts;
    port = 0;

    if (value[1].len > 5 && ngx_strncmp(value[1].data, "unix:", 5) == 0) {
        host.data = value[1].data + 5;
        host.len = value[1].len - 5;

    } else {
        colon = NULL;

        for (p = value[1].data; p < value[1].data + value[1].len; p++) {
            if (*p == ':') {
                colon = p;
            }
        }

        if (colon == NULL || colon == value[1].data) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid Redis address \"%V\", "
                               "expected host:port or unix:path", &value[1]);
            return NGX_CONF_ERROR;
        }

        port = ngx_atoi(colon + 1, value[1].data + value[1].len - colon - 1);

        if (port < 1 || port > 65535) {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "invalid port in Redis address \"%V\"",
                               &value[1]);
            return NGX_CONF_ERROR;
        }

        host.data = value[1].data;
        host.len = colon - value[1].data;

        if (host.len > 2
            && host.data[0] == '[' && host.data[host.len - 1] == ']')
        {
            host.data++;
            host.len -= 2;
        }

        /*
         * hiredis resolves names with a blocking getaddrinfo() on every
         * connect, in the worker: only addresses are accepted.
         */

        if (host.len == 9 && ngx_strncmp(host.data, "localhost", 9) == 0) {
            ngx_str_set(&host, "127.0.0.1");

        } else if (ngx_inet_addr(host.data, host.len) == INADDR_NONE
#if (NGX_HAVE_INET6)
                   && ngx_inet6_addr(host.data, host.len, addr6) != NGX_OK
#endif
                  )
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "Redis host in \"%V\" must be an IP address "
                               "(host names would be resolved with a "
                               "blocking lookup in the worker)", &value[1]);
            return NGX_CONF_ERROR;
        }
    }

    p = ngx_pnalloc(cf->pool, host.len + 1);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memcpy(p, host.data, host.len);
    p[host.len] = '\0';

    mcf->redis_host.data = p;
    mcf->redis_host.len = host.len;
    mcf->redis_port = port;

    return NGX_CONF_OK;
}


/*
 * cinematch_infer <unix socket> shm=<name>;
 *
 * Parsed here so that the inference client only has to connect; each
 * occurrence adds one daemon.
 */

static char *
ngx_http_cinematch_infer(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_cinematch_main_conf_t *mcf = conf;

    u_char                           *p;
    ngx_str_t                        *value, sock, shm;
    ngx_http_cinematch_infer_conf_t  *ic;

    value = cf->args->elts;

    sock = value[1];

    if (sock.len > 5 && ngx_strncmp(sock.data, "unix:", 5) == 0) {
        sock.data += 5;
        sock.len -= 5;
    }

    if (sock.len == 0 || sock.data[0] != '/') {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "\"%V\" must be an absolute unix socket path",
                           &value[1]);
        return NGX_CONF_ERROR;
    }

    if (value[2].len <= 4 || ngx_strncmp(value[2].data, "shm=", 4) != 0) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "invalid parameter \"%V\", expected shm=<name>",
                           &value[2]);
        return NGX_CONF_ERROR;
    }

    shm.data = value[2].data + 4;
    shm.len = value[2].len - 4;

    /* the name also becomes a Prometheus label value: keep it plain */

    if (shm.data[0] != '/' || shm.len < 2 || shm.len > 63) {
        goto invalid_shm;
    }

    for (p = shm.data + 1; p < shm.data + shm.len; p++) {
        if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z')
            || (*p >= '0' && *p <= '9')
            || *p == '-' || *p == '_' || *p == '.')
        {
            continue;
        }

        goto invalid_shm;
    }

    if (mcf->infer == NGX_CONF_UNSET_PTR) {
        mcf->infer = ngx_array_create(cf->pool, 2,
                                    sizeof(ngx_http_cinematch_infer_conf_t));
        if (mcf->infer == NULL) {
            return NGX_CONF_ERROR;
        }
    }

    if (mcf->infer->nelts == NGX_HTTP_CINEMATCH_MAX_INFER) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "too many inference daemons, at most %d",
                           NGX_HTTP_CINEMATCH_MAX_INFER);
        return NGX_CONF_ERROR;
    }

    ic = ngx_array_push(mcf->infer);
    if (ic == NULL) {
        return NGX_CONF_ERROR;
    }

    ngx_memzero(ic, sizeof(ngx_http_cinematch_infer_conf_t));

    p = ngx_pnalloc(cf->pool, sock.len + 1 + shm.len + 1);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    ic->socket.data = p;
    ic->socket.len = sock.len;
    p = ngx_cpymem(p, sock.data, sock.len);
    *p++ = '\0';

    ic->shm.data = p;
    ic->shm.len = shm.len;
    p = ngx_cpymem(p, shm.data, shm.len);
    *p = '\0';

    ic->index = mcf->infer->nelts - 1;

    return NGX_CONF_OK;

invalid_shm:

    ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                       "invalid shared memory name \"%V\"", &shm);
    return NGX_CONF_ERROR;
}


static ngx_int_t
ngx_http_cinematch_init_process(ngx_cycle_t *cycle)
{
    ngx_http_cinematch_main_conf_t  *mcf;

    if (ngx_process != NGX_PROCESS_WORKER
        && ngx_process != NGX_PROCESS_SINGLE)
    {
        return NGX_OK;
    }

    mcf = ngx_http_cycle_get_module_main_conf(cycle,
                                              ngx_http_cinematch_module);
    if (mcf == NULL) {
        return NGX_OK;
    }

    if (ngx_http_cinematch_pg_init_process(cycle, mcf) != NGX_OK) {
        return NGX_ERROR;
    }

    if (ngx_http_cinematch_redis_init_process(cycle, mcf) != NGX_OK) {
        return NGX_ERROR;
    }

#if (NGX_HTTP_CINEMATCH_INFER)
    if (ngx_http_cinematch_infer_init_process(cycle, mcf) != NGX_OK) {
        return NGX_ERROR;
    }
#endif

    return NGX_OK;
}


static void
ngx_http_cinematch_exit_process(ngx_cycle_t *cycle)
{
#if (NGX_HTTP_CINEMATCH_INFER)
    ngx_http_cinematch_infer_exit_process(cycle);
#endif

    ngx_http_cinematch_redis_exit_process(cycle);
    ngx_http_cinematch_pg_exit_process(cycle);
}

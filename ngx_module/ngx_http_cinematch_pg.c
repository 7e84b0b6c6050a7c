
/*
 * ngx_http_cinematch_pg.c: per-worker non-blocking PostgreSQL pool
 * (placeholder: not connected yet).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_cinematch.h"


ngx_int_t
ngx_http_cinematch_pg_init_process(ngx_cycle_t *cycle,
    ngx_http_cinematch_main_conf_t *mcf)
{
    return NGX_OK;
}


void
ngx_http_cinematch_pg_exit_process(ngx_cycle_t *cycle)
{
}


ngx_int_t
ngx_http_cinematch_pg_query(ngx_http_request_t *r, const char *sql,
    int nparams, const char *const *values,
    ngx_http_cinematch_pg_handler_pt handler, void *data)
{
    return NGX_DECLINED;
}


ngx_uint_t
ngx_http_cinematch_pg_connected(void)
{
    return 0;
}

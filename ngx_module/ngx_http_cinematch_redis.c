
/*
 * ngx_http_cinematch_redis.c: hiredis async context on nginx events
 * (placeholder: not connected yet).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_cinematch.h"


ngx_int_t
ngx_http_cinematch_redis_init_process(ngx_cycle_t *cycle,
    ngx_http_cinematch_main_conf_t *mcf)
{
    return NGX_OK;
}


void
ngx_http_cinematch_redis_exit_process(ngx_cycle_t *cycle)
{
}


ngx_int_t
ngx_http_cinematch_redis_command(ngx_http_request_t *r,
    ngx_http_cinematch_redis_handler_pt handler, void *data, int argc,
    const char **argv, const size_t *argvlen)
{
    return NGX_DECLINED;
}


ngx_uint_t
ngx_http_cinematch_redis_connected(void)
{
    return 0;
}

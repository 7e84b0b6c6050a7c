
/*
 * ngx_http_cinematch_api_models.c: registry changes that look at the
 * model store first (API.md "Models, prediction, jobs").
 *
 *   POST   /api/v1/models/{name}/canary  {version, share}  admin
 *   DELETE /api/v1/models/{name}/canary                    admin
 *   POST   /api/v1/models/{name}/versions  <artifact>      admin
 *
 *   http {
 *       cinematch_model_store            /var/lib/cinematch/models;
 *       cinematch_model_upload_max_size  512m;
 *   }
 *
 * Upload: the body is streamed to a temporary file (client_body_temp_path)
 * after the auth step, never held in memory; a Content-Length over the
 * limit is a 413 before a byte is read, a chunked body over it is dropped
 * as it arrives (the module's body filter) and answered 413.  On the
 * thread pool: the artifact is opened and validated as the daemon would
 * (cm_rs_artifact_check_file: cm_rs_model_open's checks without BLAS:
 * magic, version, every offset and shape, the BLAKE2b checksum, finite
 * floats, id order, the seen CSR), hashed (sha256; a `sha256` query parameter, if
 * given, must match), and copied into <store>/<name>/.incoming-*.  Then one
 * statement (sql/015 cm_model_register_upload) takes the next version in
 * stage staging, and the copy is renamed to <store>/<name>/<version>/.  A
 * rejected upload leaves nothing: not in the store, not in the registry.
 *
 * and ngx_http_cinematch_artifact_check(), which runs before a canary is
 * set and before a promotion (api_admin.c's stage change): the artifact's
 * sha256 is computed again and compared with the registry's, so the API,
 * like `cinematch model promote|canary`, never makes the registry name a
 * version the daemons would refuse at load.  The digest is computed on
 * the auth module's thread pool (cinematch_password_thread_pool, the one
 * argon2id uses): a file of hundreds of MB must not stop the event loop.
 * The model store must therefore be readable on the nginx node; when it
 * is not, the change is refused (409 artifact_unreadable) rather than made
 * blind.
 *
 * The transitions themselves are sql/015's cm_model_set_canary() and
 * cm_model_stop_canary() (and sql/010's cm_model_set_stage()), the same
 * functions the CLI calls.  Their SQLSTATEs map to 404 (P0002), 409
 * (55000) and 422 (22023).
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include "ngx_http_cinematch.h"
#include "ngx_http_cinematch_auth.h"
#include "cinematch/canary.h"
#include "cinematch/digest.h"
#include "cinematch/rs_artifact.h"


#define NGX_HTTP_CINEMATCH_UPLOAD_FILE  "model.cmrs"


typedef struct {
    ngx_str_t                             store;     /* NUL-terminated;
                                                        empty: no uploads */
    off_t                                 upload_max;
} ngx_http_cinematch_models_conf_t;


/* one upload: validated and copied in a thread, registered, moved */
typedef struct {
    ngx_http_request_t                   *request;
    char                                 *name;
    char                                 *temp;      /* the body's file */
    char                                 *incoming;  /* <store>/<name>/
                                                        .incoming-... */
    char                                 *final;     /* <store>/<name>/<v> */
    const char                           *values[6];
    char                                  want[CM_SHA256_HEX_LEN + 1];
    char                                  sha[CM_SHA256_HEX_LEN + 1];
    uint64_t                              bytes;
    ngx_int_t                             rc;        /* CM_OK, CM_E* */
    ngx_uint_t                            invalid;   /* 1: the artifact's
                                                        fault (422) */
    char                                  err[256];
    u_char                               *doc;
    size_t                                doc_len;
} ngx_http_cinematch_upload_t;


/* one artifact check: the registry row, then the digest in a thread */
typedef struct {
    ngx_http_request_t                   *request;
    const char                           *values[2];
    char                                 *path;      /* NUL-terminated */
    char                                  want[CM_SHA256_HEX_LEN + 1];
    char                                  got[CM_SHA256_HEX_LEN + 1];
    ngx_int_t                             rc;        /* CM_OK, CM_E* */
    ngx_err_t                             err;
    ngx_http_cinematch_artifact_next_pt   next;
    void                                 *data;
} ngx_http_cinematch_artifact_t;


/* a canary change: the query's parameters */
typedef struct {
    const char                           *values[4];
} ngx_http_cinematch_canary_t;


static void *ngx_http_cinematch_models_create_main_conf(ngx_conf_t *cf);
static char *ngx_http_cinematch_models_init_main_conf(ngx_conf_t *cf,
    void *conf);
static void ngx_http_cinematch_upload_body(ngx_http_request_t *r);
static ngx_int_t ngx_http_cinematch_upload_received(ngx_http_request_t *r,
    ngx_http_cinematch_upload_t *up);
#if (NGX_THREADS)
static void ngx_http_cinematch_upload_run(void *data, ngx_log_t *log);
static void ngx_http_cinematch_upload_done(ngx_event_t *ev);
#endif
static ngx_int_t ngx_http_cinematch_upload_checked(ngx_http_request_t *r,
    ngx_http_cinematch_upload_t *up);
static ngx_int_t ngx_http_cinematch_upload_registered(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_upload_undone(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static void ngx_http_cinematch_upload_discard(const char *dir);
static ngx_int_t ngx_http_cinematch_artifact_found(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
#if (NGX_THREADS)
static void ngx_http_cinematch_artifact_run(void *data, ngx_log_t *log);
static void ngx_http_cinematch_artifact_done(ngx_event_t *ev);
#endif
static ngx_int_t ngx_http_cinematch_artifact_verdict(ngx_http_request_t *r,
    ngx_http_cinematch_artifact_t *ac);
static ngx_int_t ngx_http_cinematch_canary_run(ngx_http_request_t *r,
    void *data);
static ngx_int_t ngx_http_cinematch_models_query(ngx_http_request_t *r,
    const char *sql, int n, const char *const *values);
static ngx_int_t ngx_http_cinematch_models_done(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static char *ngx_http_cinematch_models_name(ngx_http_request_t *r,
    ngx_str_t *name);
static const char *ngx_http_cinematch_models_num(ngx_http_request_t *r,
    int64_t v);


static ngx_command_t  ngx_http_cinematch_models_commands[] = {

    { ngx_string("cinematch_model_store"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_str_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_cinematch_models_conf_t, store),
      NULL },

    { ngx_string("cinematch_model_upload_max_size"),
      NGX_HTTP_MAIN_CONF|NGX_CONF_TAKE1,
      ngx_conf_set_off_slot,
      NGX_HTTP_MAIN_CONF_OFFSET,
      offsetof(ngx_http_cinematch_models_conf_t, upload_max),
      NULL },

      ngx_null_command
};


static ngx_http_module_t  ngx_http_cinematch_models_module_ctx = {
    NULL,                                         /* preconfiguration */
    NULL,                                         /* postconfiguration */

    ngx_http_cinematch_models_create_main_conf,   /* create main conf */
    ngx_http_cinematch_models_init_main_conf,     /* init main conf */

    NULL,                                         /* create server conf */
    NULL,                                         /* merge server conf */

    NULL,                                         /* create location conf */
    NULL                                          /* merge location conf */
};


ngx_module_t  ngx_http_cinematch_models_module = {
    NGX_MODULE_V1,
    &ngx_http_cinematch_models_module_ctx,   /* module context */
    ngx_http_cinematch_models_commands,      /* module directives */
    NGX_HTTP_MODULE,                         /* module type */
    NULL,                                    /* init master */
    NULL,                                    /* init module */
    NULL,                                    /* init process */
    NULL,                                    /* init thread */
    NULL,                                    /* exit thread */
    NULL,                                    /* exit process */
    NULL,                                    /* exit master */
    NGX_MODULE_V1_PADDING
};


static ngx_str_t  ngx_http_cinematch_models_type =
    ngx_string("application/json");

static ngx_uint_t  ngx_http_cinematch_upload_seq;

/* $1 name, $2 sha256, $3 bytes, $4 store, $5 file name, $6 admin */
static const char  ngx_http_cinematch_upload_sql[] =
    "SELECT version, artifact_path, doc FROM cm_model_register_upload("
    "$1::text, $2::text, $3::bigint, $4::text, $5::text, $6::bigint)";

/* a row whose artifact could not be moved into place */
static const char  ngx_http_cinematch_upload_undo_sql[] =
    "DELETE FROM model_versions WHERE model_name = $1::text"
    " AND artifact_path = $2::text AND stage = 'staging'";

static const char  ngx_http_cinematch_artifact_sql[] =
    "SELECT artifact_path, artifact_sha256 FROM model_versions"
    " WHERE model_name = $1::text AND version = $2::int";

/* $1 name, $2 version, $3 share, $4 the admin's users.id */
static const char  ngx_http_cinematch_canary_sql[] =
    "SELECT json_build_object('model_name', s.model_name,"
    "  'version', s.version, 'stage', s.stage,"
    "  'canary_share', s.canary_share::float8,"
    "  'previous_stage', s.previous_stage,"
    "  'replaced_version', s.replaced_version, 'changed', s.changed)::text"
    " FROM cm_model_set_canary($1::text, $2::int, $3::numeric, $4::bigint) s";

/* $1 name, $2 the admin's users.id */
static const char  ngx_http_cinematch_canary_stop_sql[] =
    "SELECT json_build_object('model_name', s.model_name,"
    "  'version', s.version, 'changed', s.changed)::text"
    " FROM cm_model_stop_canary($1::text, $2::bigint) s";


/* ---- configuration ---- */

static void *
ngx_http_cinematch_models_create_main_conf(ngx_conf_t *cf)
{
    ngx_http_cinematch_models_conf_t  *mcf;

    mcf = ngx_pcalloc(cf->pool, sizeof(ngx_http_cinematch_models_conf_t));
    if (mcf == NULL) {
        return NULL;
    }

    mcf->upload_max = NGX_CONF_UNSET;

    return mcf;
}


static char *
ngx_http_cinematch_models_init_main_conf(ngx_conf_t *cf, void *conf)
{
    ngx_http_cinematch_models_conf_t *mcf = conf;

    u_char  *p;

    if (mcf->upload_max == NGX_CONF_UNSET) {
        mcf->upload_max = 512 * 1024 * 1024;
    }

    if (mcf->upload_max < 512) {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cinematch_model_upload_max_size must be at least "
                           "512 (an artifact header)");
        return NGX_CONF_ERROR;
    }

    if (mcf->store.len == 0) {
        return NGX_CONF_OK;
    }

    if (mcf->store.data[0] != '/') {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                           "cinematch_model_store must be an absolute path");
        return NGX_CONF_ERROR;
    }

    /* NUL-terminated, without a trailing slash: paths are built from it */

    while (mcf->store.len > 1 && mcf->store.data[mcf->store.len - 1] == '/') {
        mcf->store.len--;
    }

    p = ngx_pnalloc(cf->pool, mcf->store.len + 1);
    if (p == NULL) {
        return NGX_CONF_ERROR;
    }

    *ngx_cpymem(p, mcf->store.data, mcf->store.len) = '\0';
    mcf->store.data = p;

    return NGX_CONF_OK;
}


off_t
ngx_http_cinematch_models_upload_max(ngx_http_request_t *r)
{
    ngx_http_cinematch_models_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(r, ngx_http_cinematch_models_module);

    return mcf->upload_max;
}


/* ---- POST /api/v1/models/{name}/versions ---- */

ngx_int_t
ngx_http_cinematch_models_upload_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    char                              *name;
    ngx_int_t                          rc;
    ngx_str_t                          sha;
    ngx_uint_t                         i;
    ngx_http_cinematch_caller_t       *c;
    ngx_http_cinematch_upload_t       *up;
    ngx_http_cinematch_models_conf_t  *mcf;

    mcf = ngx_http_get_module_main_conf(r, ngx_http_cinematch_models_module);
    c = ngx_http_cinematch_caller(r);
    name = ngx_http_cinematch_models_name(r, &ctx->params[0]);
    up = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_upload_t));

    /* every refusal before reading drops the body unread */

    if (c == NULL || up == NULL) {
        rc = ngx_http_discard_request_body(r);

        return rc != NGX_OK ? rc : NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (name == NULL) {
        return ngx_http_cinematch_refuse_body(r, NGX_HTTP_NOT_FOUND,
                                              "not_found", "no such model");
    }

    if (mcf->store.len == 0) {
        return ngx_http_cinematch_refuse_body(r,
                   NGX_HTTP_SERVICE_UNAVAILABLE, "unavailable",
                   "uploads are off: no cinematch_model_store");
    }

    if (r->headers_in.content_length_n > mcf->upload_max) {
        return ngx_http_cinematch_refuse_body(r,
                                     NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                     "payload_too_large",
                                     "the artifact is over the upload limit");
    }

    /* an optional sha256 the client computed: checked after the upload */

    up->request = r;
    up->name = name;

    rc = ngx_http_cinematch_arg(r, "sha256", &sha);

    if (rc == NGX_OK) {
        if (sha.len != CM_SHA256_HEX_LEN) {
            goto bad_sha;
        }

        for (i = 0; i < sha.len; i++) {
            if (!((sha.data[i] >= '0' && sha.data[i] <= '9')
                  || (sha.data[i] >= 'a' && sha.data[i] <= 'f')))
            {
                goto bad_sha;
            }
        }

        ngx_memcpy(up->want, sha.data, CM_SHA256_HEX_LEN);
    }

    ctx->data = up;

    /* a named file (the thread opens it by name), removed with the
     * request; an upload going to a file is the plan, not news */
    r->request_body_in_file_only = 1;
    r->request_body_in_persistent_file = 1;
    r->request_body_in_clean_file = 1;
    r->request_body_file_log_level = 0;

    return ngx_http_cinematch_read_body_then(r,
                                             ngx_http_cinematch_upload_body);

bad_sha:

    rc = ngx_http_discard_request_body(r);

    if (rc != NGX_OK) {
        return rc;
    }

    return ngx_http_cinematch_send_invalid(r, "sha256",
                                           "64 lowercase hex digits");
}


static void
ngx_http_cinematch_upload_body(ngx_http_request_t *r)
{
    ngx_http_cinematch_ctx_t  *ctx;

    ctx = ngx_http_get_module_ctx(r, ngx_http_cinematch_module);

    ngx_http_finalize_request(r, ngx_http_cinematch_status(r,
                    ngx_http_cinematch_upload_received(r, ctx->data)));
}


static ngx_int_t
ngx_http_cinematch_upload_received(ngx_http_request_t *r,
    ngx_http_cinematch_upload_t *up)
{
    u_char                               *p;
    ngx_http_cinematch_ctx_t             *ctx;
    ngx_http_cinematch_models_conf_t     *mcf;
#if (NGX_THREADS)
    ngx_thread_task_t                    *task;
    ngx_http_cinematch_upload_t         **slot;
    ngx_http_cinematch_auth_main_conf_t  *amcf;
#endif

    ctx = ngx_http_get_module_ctx(r, ngx_http_cinematch_module);
    mcf = ngx_http_get_module_main_conf(r, ngx_http_cinematch_models_module);

    if (ctx->body_too_large) {
        return ngx_http_cinematch_send_error(r,
                                     NGX_HTTP_REQUEST_ENTITY_TOO_LARGE,
                                     "payload_too_large",
                                     "the artifact is over the upload limit");
    }

    if (r->request_body == NULL || r->request_body->temp_file == NULL) {
        return ngx_http_cinematch_send_invalid(r, "artifact",
                                               "the body is empty");
    }

    up->temp = (char *) r->request_body->temp_file->file.name.data;

    /* <store>/<name>/.incoming-<pid>-<ms>-<seq>: hidden, and unique among
     * the workers of this and other nginx nodes sharing the store */

    up->incoming = ngx_pnalloc(r->pool, mcf->store.len + 1
                                        + ngx_strlen(up->name)
                                        + sizeof("/.incoming----")
                                        + 3 * NGX_INT64_LEN
                                        + ngx_cycle->hostname.len);
    if (up->incoming == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    p = ngx_sprintf((u_char *) up->incoming, "%V/%s/.incoming-%V-%P-%M-%ui",
                    &mcf->store, up->name, &ngx_cycle->hostname, ngx_pid,
                    ngx_current_msec, ngx_http_cinematch_upload_seq++);
    *p = '\0';

#if (NGX_THREADS)

    amcf = ngx_http_get_module_main_conf(r, ngx_http_cinematch_auth_module);

    task = ngx_thread_task_alloc(r->pool, sizeof(*slot));
    if (task == NULL || amcf == NULL || amcf->pool == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    slot = task->ctx;
    *slot = up;

    task->handler = ngx_http_cinematch_upload_run;
    task->event.handler = ngx_http_cinematch_upload_done;
    task->event.data = up;

    if (ngx_thread_task_post(amcf->pool, task) != NGX_OK) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             "the thread pool is full, retry");
    }

    r->main->blocked++;
    ngx_http_cinematch_wait(r);

    return NGX_DONE;

#else

    return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                         "unavailable",
                                         "nginx was built without threads");

#endif
}


#if (NGX_THREADS)

/*
 * In a pool thread: validate, hash and copy into the incoming directory.
 * No nginx calls, only the job's own memory and plain system calls.
 */

static void
ngx_http_cinematch_upload_run(void *data, ngx_log_t *log)
{
    ngx_http_cinematch_upload_t *up = *(ngx_http_cinematch_upload_t **) data;

    int              in = -1, out = -1, rc;
    char             path[4096], *buf = NULL;
    ssize_t          n, w, off;

    /* what the daemon would refuse is refused here, before it is stored */

    rc = cm_rs_artifact_check_file(up->temp, up->err, sizeof(up->err));

    if (rc != CM_OK) {
        up->rc = rc;
        up->invalid = (rc == CM_EFORMAT || rc == CM_EINVAL);
        return;
    }

    up->rc = cm_sha256_file_hex(up->temp, up->sha, &up->bytes);

    if (up->rc != CM_OK) {
        snprintf(up->err, sizeof(up->err), "cannot hash the upload: %s",
                 strerror(errno));
        return;
    }

    if (up->want[0] != '\0' && strcmp(up->want, up->sha) != 0) {
        snprintf(up->err, sizeof(up->err), "the upload's sha256 is %s, not"
                 " the one given", up->sha);
        up->rc = CM_EFORMAT;
        up->invalid = 2;
        return;
    }

    /* <store>/<name>/ may not exist yet (a new model); a refused upload
     * of the same new model may remove it between the two calls (its
     * discard rmdirs an empty model directory), hence the second try */

    snprintf(path, sizeof(path), "%s", up->incoming);
    *strrchr(path, '/') = '\0';

    for (rc = 0; /* void */; rc++) {
        if (mkdir(path, 0755) != 0 && errno != EEXIST) {
            snprintf(up->err, sizeof(up->err), "mkdir %.200s: %s", path,
                     strerror(errno));
            up->rc = CM_EIO;
            return;
        }

        if (mkdir(up->incoming, 0755) == 0) {
            break;
        }

        if (errno != ENOENT || rc == 1) {
            snprintf(up->err, sizeof(up->err), "mkdir %.200s: %s",
                     up->incoming, strerror(errno));
            up->rc = CM_EIO;
            return;
        }
    }

    snprintf(path, sizeof(path), "%s/" NGX_HTTP_CINEMATCH_UPLOAD_FILE,
             up->incoming);

    buf = malloc(1 << 20);
    in = open(up->temp, O_RDONLY | O_CLOEXEC);
    out = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    up->rc = (buf == NULL || in < 0 || out < 0) ? CM_EIO : CM_OK;

    while (up->rc == CM_OK) {
        n = read(in, buf, 1 << 20);

        if (n < 0 && errno == EINTR) {
            continue;
        }

        if (n <= 0) {
            up->rc = n == 0 ? CM_OK : CM_EIO;
            break;
        }

        for (off = 0; off < n; off += w) {
            w = write(out, buf + off, n - off);

            if (w < 0 && errno == EINTR) {
                w = 0;
                continue;
            }

            if (w <= 0) {
                up->rc = CM_EIO;
                break;
            }
        }
    }

    if (up->rc == CM_OK && fsync(out) != 0) {
        up->rc = CM_EIO;
    }

    if (up->rc != CM_OK) {
        snprintf(up->err, sizeof(up->err), "copy into the store: %s",
                 strerror(errno));
    }

    free(buf);

    if (in >= 0) {
        close(in);
    }

    if (out >= 0 && close(out) != 0 && up->rc == CM_OK) {
        up->rc = CM_EIO;
        snprintf(up->err, sizeof(up->err), "copy into the store: %s",
                 strerror(errno));
    }

    if (up->rc == CM_OK) {
        /* the store's SHA256SUMS, as `cinematch model register` writes */
        snprintf(path, sizeof(path), "%s/SHA256SUMS", up->incoming);
        out = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        n = out >= 0 ? dprintf(out, "%s  " NGX_HTTP_CINEMATCH_UPLOAD_FILE
                               "\n", up->sha) : -1;
        if (out < 0 || n <= 0 || close(out) != 0) {
            up->rc = CM_EIO;
            snprintf(up->err, sizeof(up->err), "SHA256SUMS: %s",
                     strerror(errno));
        }
    }

    if (up->rc != CM_OK) {
        ngx_http_cinematch_upload_discard(up->incoming);
    }
}


static void
ngx_http_cinematch_upload_done(ngx_event_t *ev)
{
    ngx_http_cinematch_upload_t *up = ev->data;

    ngx_http_request_t  *r;

    r = up->request;
    r->main->blocked--;

    if (r->connection->error) {
        if (up->rc == CM_OK) {
            ngx_http_cinematch_upload_discard(up->incoming);
        }

        ngx_http_cinematch_finish(r, NGX_HTTP_CLIENT_CLOSED_REQUEST);
        return;
    }

    ngx_http_cinematch_finish(r, ngx_http_cinematch_upload_checked(r, up));
}

#endif


static ngx_int_t
ngx_http_cinematch_upload_checked(ngx_http_request_t *r,
    ngx_http_cinematch_upload_t *up)
{
    u_char                            *p;
    ngx_http_cinematch_caller_t       *c;
    ngx_http_cinematch_models_conf_t  *mcf;

    if (up->rc != CM_OK) {
        if (up->invalid) {
            ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                          "cinematch: upload of %s refused: %s", up->name,
                          up->err);

            return ngx_http_cinematch_send_invalid(r,
                       up->invalid == 2 ? "sha256" : "artifact", up->err);
        }

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cinematch: upload of %s failed: %s", up->name,
                      up->err);

        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    mcf = ngx_http_get_module_main_conf(r, ngx_http_cinematch_models_module);
    c = ngx_http_cinematch_caller(r);

    p = ngx_pnalloc(r->pool, NGX_INT64_LEN + 1);
    if (p == NULL) {
        ngx_http_cinematch_upload_discard(up->incoming);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *ngx_sprintf(p, "%uL", up->bytes) = '\0';

    up->values[0] = up->name;
    up->values[1] = up->sha;
    up->values[2] = (const char *) p;
    up->values[3] = (const char *) mcf->store.data;
    up->values[4] = NGX_HTTP_CINEMATCH_UPLOAD_FILE;
    up->values[5] = ngx_http_cinematch_models_num(r, c->user_id);

    if (up->values[5] == NULL) {
        ngx_http_cinematch_upload_discard(up->incoming);
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    switch (ngx_http_cinematch_pg_query(r, ngx_http_cinematch_upload_sql, 6,
                                        up->values,
                                        ngx_http_cinematch_upload_registered,
                                        up))
    {
    case NGX_OK:
        return NGX_DONE;

    default:
        ngx_http_cinematch_upload_discard(up->incoming);

        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             "database unavailable");
    }
}


static ngx_int_t
ngx_http_cinematch_upload_registered(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    ngx_http_cinematch_upload_t *up = data;

    size_t       len;
    const char  *state, *path;

    if (err != NULL || res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK
        || PQntuples(res) != 1)
    {
        /* not registered (or not known to be: a lost connection after
         * COMMIT would leave a row naming a file that never arrives, which
         * a promotion's artifact check refuses) */

        ngx_http_cinematch_upload_discard(up->incoming);

        if (err != NULL || res == NULL) {
            return ngx_http_cinematch_send_error(r,
                                                 NGX_HTTP_SERVICE_UNAVAILABLE,
                                                 "unavailable",
                                                 "database unavailable");
        }

        state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

        if (state != NULL && ngx_strcmp(state, "22023") == 0) {
            return ngx_http_cinematch_send_error(r, NGX_HTTP_CONFLICT,
                                                 "conflict",
                                                 "not a recsys model: uploads "
                                                 "take recsys artifacts");
        }

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cinematch: upload registration failed (%s): %s",
                      state != NULL ? state : "", PQresultErrorMessage(res));

        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    /* <store>/<name>/<version>/model.cmrs: the directory is the path's */

    path = PQgetvalue(res, 0, 1);
    len = ngx_strlen(path) - sizeof("/" NGX_HTTP_CINEMATCH_UPLOAD_FILE) + 1;

    up->final = ngx_pnalloc(r->pool, len + 1);
    up->doc_len = PQgetlength(res, 0, 2);
    up->doc = ngx_pnalloc(r->pool, up->doc_len);

    if (up->final == NULL || up->doc == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *ngx_cpymem(up->final, path, len) = '\0';
    ngx_memcpy(up->doc, PQgetvalue(res, 0, 2), up->doc_len);

    /* a rename within the store: one metadata update, no data copied */

    if (rename(up->incoming, up->final) != 0) {
        ngx_log_error(NGX_LOG_ALERT, r->connection->log, ngx_errno,
                      "cinematch: rename(\"%s\", \"%s\") failed; "
                      "unregistering the upload", up->incoming, up->final);

        ngx_http_cinematch_upload_discard(up->incoming);

        /* the result is cleared when this returns: the path is copied */

        len = ngx_strlen(path);
        up->values[1] = ngx_pnalloc(r->pool, len + 1);

        if (up->values[1] == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        *ngx_cpymem((u_char *) up->values[1], path, len) = '\0';

        if (ngx_http_cinematch_pg_query(r, ngx_http_cinematch_upload_undo_sql,
                                        2, up->values,
                                        ngx_http_cinematch_upload_undone, up)
            == NGX_OK)
        {
            return NGX_DONE;
        }

        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_send_buf(r, NGX_HTTP_CREATED,
                                       &ngx_http_cinematch_models_type,
                                       up->doc, up->doc_len);
}


static ngx_int_t
ngx_http_cinematch_upload_undone(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    return NGX_HTTP_INTERNAL_SERVER_ERROR;
}


/* remove an incoming directory and what the upload put in it, and the
 * model's directory when the upload made it (rmdir leaves a non-empty one) */

static void
ngx_http_cinematch_upload_discard(const char *dir)
{
    char  path[4096], *slash;

    snprintf(path, sizeof(path), "%s/" NGX_HTTP_CINEMATCH_UPLOAD_FILE, dir);
    (void) unlink(path);
    snprintf(path, sizeof(path), "%s/SHA256SUMS", dir);
    (void) unlink(path);
    (void) rmdir(dir);

    snprintf(path, sizeof(path), "%s", dir);
    slash = strrchr(path, '/');

    if (slash != NULL) {
        *slash = '\0';
        (void) rmdir(path);
    }
}


/* ---- the artifact check ---- */

/*
 * Looks name:version up, hashes its artifact on the thread pool and calls
 * next(r, data) when the digest is the registry's; answers 404 (unknown
 * version), 409 (artifact unreadable or changed) or 503 itself otherwise.
 * Returns like a handler (NGX_DONE while it runs).  name and version must
 * live in the request pool.
 */

ngx_int_t
ngx_http_cinematch_artifact_check(ngx_http_request_t *r, const char *name,
    const char *version, ngx_http_cinematch_artifact_next_pt next,
    void *data)
{
    ngx_http_cinematch_artifact_t  *ac;

    ac = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_artifact_t));
    if (ac == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ac->request = r;
    ac->values[0] = name;
    ac->values[1] = version;
    ac->next = next;
    ac->data = data;

    switch (ngx_http_cinematch_pg_query(r, ngx_http_cinematch_artifact_sql, 2,
                                        ac->values,
                                        ngx_http_cinematch_artifact_found,
                                        ac))
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
ngx_http_cinematch_artifact_found(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    ngx_http_cinematch_artifact_t *ac = data;

    size_t                                len;
#if (NGX_THREADS)
    ngx_thread_task_t                    *task;
    ngx_http_cinematch_artifact_t       **slot;
    ngx_http_cinematch_auth_main_conf_t  *amcf;
#endif

    if (err != NULL || res == NULL) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             "database unavailable");
    }

    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cinematch: artifact lookup failed: %s",
                      PQresultErrorMessage(res));
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)
        || PQgetlength(res, 0, 1) != CM_SHA256_HEX_LEN)
    {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                                             "not_found", "no such version");
    }

    len = PQgetlength(res, 0, 0);

    ac->path = ngx_pnalloc(r->pool, len + 1);
    if (ac->path == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *ngx_cpymem(ac->path, PQgetvalue(res, 0, 0), len) = '\0';
    ngx_memcpy(ac->want, PQgetvalue(res, 0, 1), CM_SHA256_HEX_LEN + 1);

#if (NGX_THREADS)

    amcf = ngx_http_get_module_main_conf(r, ngx_http_cinematch_auth_module);

    task = ngx_thread_task_alloc(r->pool, sizeof(*slot));
    if (task == NULL || amcf == NULL || amcf->pool == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    slot = task->ctx;
    *slot = ac;

    task->handler = ngx_http_cinematch_artifact_run;
    task->event.handler = ngx_http_cinematch_artifact_done;
    task->event.data = ac;

    if (ngx_thread_task_post(amcf->pool, task) != NGX_OK) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             "the thread pool is full, retry");
    }

    /* the request pool (the job, the path) outlives the client */
    r->main->blocked++;
    ngx_http_cinematch_wait(r);

    return NGX_DONE;

#else

    /* no threads: hash here; registry changes are rare admin actions */
    ac->rc = cm_sha256_file_hex(ac->path, ac->got, NULL);
    ac->err = ngx_errno;

    return ngx_http_cinematch_artifact_verdict(r, ac);

#endif
}


#if (NGX_THREADS)

/* In a pool thread: no nginx calls, only the job's own memory. */

static void
ngx_http_cinematch_artifact_run(void *data, ngx_log_t *log)
{
    ngx_http_cinematch_artifact_t *ac = *(ngx_http_cinematch_artifact_t **)
                                        data;

    ac->rc = cm_sha256_file_hex(ac->path, ac->got, NULL);
    ac->err = ngx_errno;
}


static void
ngx_http_cinematch_artifact_done(ngx_event_t *ev)
{
    ngx_http_cinematch_artifact_t *ac = ev->data;

    ngx_http_request_t  *r;

    r = ac->request;
    r->main->blocked--;

    if (r->connection->error) {
        ngx_http_cinematch_finish(r, NGX_HTTP_CLIENT_CLOSED_REQUEST);
        return;
    }

    ngx_http_cinematch_finish(r, ngx_http_cinematch_artifact_verdict(r, ac));
}

#endif


static ngx_int_t
ngx_http_cinematch_artifact_verdict(ngx_http_request_t *r,
    ngx_http_cinematch_artifact_t *ac)
{
    if (ac->rc != CM_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log,
                      ac->rc == CM_EIO ? ac->err : 0,
                      "cinematch: artifact \"%s\" of %s version %s cannot be"
                      " read", ac->path, ac->values[0], ac->values[1]);

        return ngx_http_cinematch_send_error(r, NGX_HTTP_CONFLICT,
                   "artifact_unreadable",
                   "the version's artifact cannot be read from the model "
                   "store; refusing the change");
    }

    if (ngx_strcmp(ac->got, ac->want) != 0) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cinematch: artifact \"%s\" of %s version %s has sha256"
                      " %s, the registry says %s", ac->path, ac->values[0],
                      ac->values[1], ac->got, ac->want);

        return ngx_http_cinematch_send_error(r, NGX_HTTP_CONFLICT,
                   "artifact_mismatch",
                   "the version's artifact differs from its registered "
                   "sha256; refusing the change");
    }

    return ac->next(r, ac->data);
}


/* ---- POST /api/v1/models/{name}/canary ---- */

ngx_int_t
ngx_http_cinematch_models_canary_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    char                          *name;
    json_t                        *val, *version, *share;
    double                         s;
    u_char                        *p;
    uint32_t                       bp;
    const char                    *key;
    json_int_t                     v;
    ngx_http_cinematch_caller_t   *c;
    ngx_http_cinematch_canary_t   *cq;

    c = ngx_http_cinematch_caller(r);
    name = ngx_http_cinematch_models_name(r, &ctx->params[0]);

    if (c == NULL || name == NULL) {
        return c == NULL ? NGX_HTTP_INTERNAL_SERVER_ERROR
                         : ngx_http_cinematch_send_error(r,
                               NGX_HTTP_NOT_FOUND, "not_found",
                               "no such model");
    }

    json_object_foreach(ctx->json, key, val) {
        if (ngx_strcmp(key, "version") != 0 && ngx_strcmp(key, "share") != 0)
        {
            return ngx_http_cinematch_send_invalid(r, key, "unknown field");
        }
    }

    version = json_object_get(ctx->json, "version");

    if (!json_is_integer(version) || json_integer_value(version) < 1
        || json_integer_value(version) > NGX_MAX_INT32_VALUE)
    {
        return ngx_http_cinematch_send_invalid(r, "version",
                                               "required: a version number");
    }

    v = json_integer_value(version);

    /* a number in [0, 1] with at most 4 decimals: basis points, as the
     * daemons and nginx route by (cinematch/canary.h) */

    share = json_object_get(ctx->json, "share");
    s = json_is_number(share) ? json_number_value(share) : -1.0;
    bp = (s >= 0.0 && s <= 1.0) ? (uint32_t) (s * CM_CANARY_BUCKETS + 0.5)
                                : 0;

    if (!(s >= 0.0 && s <= 1.0)
        || ngx_abs(s * CM_CANARY_BUCKETS - (double) bp) > 1e-6)
    {
        return ngx_http_cinematch_send_invalid(r, "share",
                   "required: a number from 0 to 1 with at most 4 decimals");
    }

    cq = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_canary_t));
    p = ngx_pnalloc(r->pool, sizeof("0.0000"));

    if (cq == NULL || p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    *ngx_sprintf(p, "%uD.%04uD", bp / CM_CANARY_BUCKETS,
                 bp % CM_CANARY_BUCKETS) = '\0';

    cq->values[0] = name;
    cq->values[1] = ngx_http_cinematch_models_num(r, v);
    cq->values[2] = (const char *) p;
    cq->values[3] = ngx_http_cinematch_models_num(r, c->user_id);

    if (cq->values[1] == NULL || cq->values[3] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_artifact_check(r, name, cq->values[1],
                                             ngx_http_cinematch_canary_run,
                                             cq);
}


static ngx_int_t
ngx_http_cinematch_canary_run(ngx_http_request_t *r, void *data)
{
    ngx_http_cinematch_canary_t *cq = data;

    return ngx_http_cinematch_models_query(r, ngx_http_cinematch_canary_sql,
                                           4, cq->values);
}


/* ---- DELETE /api/v1/models/{name}/canary ---- */

ngx_int_t
ngx_http_cinematch_models_canary_stop_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    char                          *name;
    ngx_http_cinematch_caller_t   *c;
    ngx_http_cinematch_canary_t   *cq;

    c = ngx_http_cinematch_caller(r);
    name = ngx_http_cinematch_models_name(r, &ctx->params[0]);

    if (c == NULL || name == NULL) {
        return c == NULL ? NGX_HTTP_INTERNAL_SERVER_ERROR
                         : ngx_http_cinematch_send_error(r,
                               NGX_HTTP_NOT_FOUND, "not_found",
                               "no such model");
    }

    cq = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_canary_t));
    if (cq == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    cq->values[0] = name;
    cq->values[1] = ngx_http_cinematch_models_num(r, c->user_id);

    if (cq->values[1] == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_models_query(r,
                                           ngx_http_cinematch_canary_stop_sql,
                                           2, cq->values);
}


/* ---- helpers ---- */

static ngx_int_t
ngx_http_cinematch_models_query(ngx_http_request_t *r, const char *sql,
    int n, const char *const *values)
{
    switch (ngx_http_cinematch_pg_query(r, sql, n, values,
                                        ngx_http_cinematch_models_done,
                                        NULL))
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
ngx_http_cinematch_models_done(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    u_char      *p;
    size_t       len;
    const char  *state;

    if (err != NULL || res == NULL) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             "database unavailable");
    }

    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        state = PQresultErrorField(res, PG_DIAG_SQLSTATE);

        if (state == NULL) {
            state = "";
        }

        /* the registry's own refusals (sql/015): their text is ours */

        if (ngx_strcmp(state, "P0002") == 0) {
            return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                                                 "not_found",
                                                 "no such version");
        }

        if (ngx_strcmp(state, "55000") == 0) {
            return ngx_http_cinematch_send_error(r, NGX_HTTP_CONFLICT,
                       "conflict",
                       "only a staging version (or the canary itself) can "
                       "be the canary");
        }

        if (ngx_strcmp(state, "22023") == 0) {
            return ngx_http_cinematch_send_invalid(r, "share",
                       "required: a number from 0 to 1 with at most 4 "
                       "decimals");
        }

        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cinematch: registry change failed (%s): %s", state,
                      PQresultErrorMessage(res));

        if (ngx_strncmp(state, "08", 2) == 0
            || ngx_strncmp(state, "57", 2) == 0
            || ngx_strncmp(state, "53", 2) == 0)
        {
            return ngx_http_cinematch_send_error(r,
                                                 NGX_HTTP_SERVICE_UNAVAILABLE,
                                                 "unavailable",
                                                 "database unavailable");
        }

        return ngx_http_cinematch_send_error(r, NGX_HTTP_INTERNAL_SERVER_ERROR,
                                             "internal", "the query failed");
    }

    if (PQntuples(res) != 1 || PQgetisnull(res, 0, 0)) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_NOT_FOUND,
                                             "not_found", "no such model");
    }

    len = PQgetlength(res, 0, 0);

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_memcpy(p, PQgetvalue(res, 0, 0), len);

    return ngx_http_cinematch_send_buf(r, NGX_HTTP_OK,
                                       &ngx_http_cinematch_models_type, p,
                                       len);
}


/* the {name} of the path as a C string when it is a model name
 * ([a-z][a-z0-9_-]{0,30}, the registry's domain), else NULL */

static char *
ngx_http_cinematch_models_name(ngx_http_request_t *r, ngx_str_t *name)
{
    u_char  *p, *s;

    if (name->len == 0 || name->len > 31
        || name->data[0] < 'a' || name->data[0] > 'z')
    {
        return NULL;
    }

    for (p = name->data + 1; p < name->data + name->len; p++) {
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9')
              || *p == '_' || *p == '-'))
        {
            return NULL;
        }
    }

    s = ngx_pnalloc(r->pool, name->len + 1);
    if (s == NULL) {
        return NULL;
    }

    *ngx_cpymem(s, name->data, name->len) = '\0';

    return (char *) s;
}


static const char *
ngx_http_cinematch_models_num(ngx_http_request_t *r, int64_t v)
{
    u_char  *p;

    p = ngx_pnalloc(r->pool, NGX_INT64_LEN + 1);
    if (p == NULL) {
        return NULL;
    }

    *ngx_sprintf(p, "%L", v) = '\0';

    return (const char *) p;
}

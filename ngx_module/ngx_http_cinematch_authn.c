
/*
 * ngx_http_cinematch_authn.c: the step between routing and a route's
 * handler (docs/SECURITY.md §3): who is calling, may they, and how fast.
 *
 *   credentials   Authorization: Bearer <JWT> | Bearer cm_... | X-API-Key
 *   JWT           cm_jwt_verify (no database), then EXISTS cm:deny:<jti>
 *                 in Redis (logout) -- inside the rate-limit script when
 *                 the location has a limit, so one round trip does both;
 *                 Redis down: the denylist fails open
 *   API key       sha256 → GET cm:key:<sha> in Redis (60 s, negative 10 s)
 *                 → on a miss PostgreSQL, and the answer is cached;
 *                 last_used_at is written at most once per interval per
 *                 worker, by a query the response does not wait for
 *   authorization ROUTE_ADMIN needs role admin (keys: the admin scope);
 *                 a route scope is checked against a key's scopes
 *   rate limit    cinematch_rate_limit of the location: a token bucket per
 *                 identity (u<user>, k<key>, ip<addr>) kept by a Lua script
 *                 in Redis (EVALSHA, EVAL on NOSCRIPT), the checks of one
 *                 event-loop turn batched into one call; Redis down: the
 *                 same bucket math in a shared-memory table of this node
 *
 * Each step either answers (401, 403, 429) or calls the next; the Redis
 * and PostgreSQL callbacks return what the next step returns, so the
 * request is finalized once, by whoever answered.
 */


#include <ngx_config.h>
#include <ngx_core.h>
#include <ngx_http.h>

#include <openssl/crypto.h>
#include <openssl/sha.h>

#include "ngx_http_cinematch.h"
#include "ngx_http_cinematch_auth.h"

#include "cinematch/authkeys.h"
#include "cinematch/digest.h"
#include "cinematch/jwt.h"
#include "cinematch/ratelimit.h"
#include "cinematch/validate.h"


#define NGX_HTTP_CINEMATCH_KEY_CACHE_MS     60000
#define NGX_HTTP_CINEMATCH_KEY_NEG_MS       10000
#define NGX_HTTP_CINEMATCH_KEY_TOUCH_SLOTS  64
#define NGX_HTTP_CINEMATCH_RL_ZONE_SIZE     (1024 * 1024)
#define NGX_HTTP_CINEMATCH_JWT_CACHE_SLOTS  256     /* power of two */
#define NGX_HTTP_CINEMATCH_JWT_CACHE_LEN    640     /* longest cached token */


typedef struct {
    ngx_http_cinematch_auth_main_conf_t  *amcf;
    ngx_http_cinematch_auth_loc_conf_t   *alcf;
    ngx_http_cinematch_caller_t           caller;
    char                                  sha[CM_SHA256_HEX_LEN + 1];
    char                                  key_id[NGX_INT64_LEN + 1];
    const char                           *values[1];
    ngx_str_t                             rl_key;    /* cm:rl:{id}:loc */
    u_char                                rl_deny[sizeof("cm:deny:") + 40];
    size_t                                rl_deny_len;
    ngx_uint_t                            deny;      /* check cm:deny:<jti>
                                                        in the script */
    /* ngx_http_cinematch_authn_take(): a bucket of another identity */
    ngx_str_t                             ident;
    ngx_http_cinematch_caller_next_pt     next;
    ngx_uint_t                            quiet;     /* no X-RateLimit-* */
} ngx_http_cinematch_authn_t;


typedef struct {
    uint64_t                              key;
    cm_tbucket_t                          bucket;
} ngx_http_cinematch_rl_slot_t;


/*
 * A per-worker cache of access tokens that passed cm_jwt_verify: a token
 * that is byte for byte one that verified, under the same keyring, verifies
 * again until exp + leeway (nbf and iat only become more valid with time),
 * so a hit skips the base64, HMAC and JSON work (about a third of the
 * worker's time per authenticated request, measured with perf) and gives
 * the same answer.  The logout denylist and the rate limit still go to
 * Redis on every request: revocation and exact counts are unchanged.
 * Direct-mapped by the signature's last characters (random); a collision
 * just replaces the slot.  256 x ~0.8 KiB per worker.
 */
typedef struct {
    cm_jwt_keyring_t                     *ring;
    time_t                                until;   /* exp + leeway */
    size_t                                len;
    ngx_http_cinematch_caller_t           caller;
    u_char                                token[
                                            NGX_HTTP_CINEMATCH_JWT_CACHE_LEN];
} ngx_http_cinematch_jwt_slot_t;


typedef struct {
    ngx_uint_t                            nslots;
    ngx_http_cinematch_rl_slot_t          slots[1];
} ngx_http_cinematch_rl_table_t;


typedef struct {
    int64_t                               key_id;
    ngx_msec_t                            at;
} ngx_http_cinematch_key_touch_t;


/*
 * Rate-limit checks are batched per event-loop turn: each request joins
 * the worker's open batch (and waits), and a posted event, run once this
 * turn's I/O events are handled, sends the whole batch as ONE EVALSHA of
 * cm_ratelimit_batch_lua.  Redis runs the script atomically and takes the
 * entries in arrival order, so the counts are the ones N single calls in
 * that order would give, across nodes too; what is saved is the per-call
 * cost (command dispatch, Lua entry, reply parsing, a syscall or two on
 * each side).  Each request is resumed with its own 4 integers; a failed
 * batch (no reply, an error, Redis down) sends each to the local bucket.
 * A request that goes away while it waits is detached by its pool cleanup.
 * In Redis Cluster all keys of a batch would need one hash slot: not
 * supported (the denylist key beside the bucket was not either).
 */
#define NGX_HTTP_CINEMATCH_RL_BATCH  64

typedef struct {
    ngx_http_request_t                   *request;   /* NULL: gone */
    ngx_http_cinematch_authn_t           *st;
    ngx_pool_cleanup_t                   *cln;
    ngx_uint_t                            sent;      /* in the last send */
} ngx_http_cinematch_rl_entry_t;


typedef struct ngx_http_cinematch_rl_batch_s  ngx_http_cinematch_rl_batch_t;

struct ngx_http_cinematch_rl_batch_s {
    ngx_http_cinematch_rl_batch_t        *next;      /* this turn's next */
    ngx_uint_t                            n;
    ngx_uint_t                            sent;      /* entries sent */
    ngx_uint_t                            eval;      /* EVAL after NOSCRIPT */
    ngx_http_cinematch_rl_entry_t         entries[
                                            NGX_HTTP_CINEMATCH_RL_BATCH];
};


static ngx_int_t ngx_http_cinematch_authn_fail(ngx_http_request_t *r,
    ngx_uint_t status, const char *code, const char *message,
    const char *www);
static ngx_int_t ngx_http_cinematch_authn_header(ngx_http_request_t *r,
    ngx_str_t *out);
static ngx_int_t ngx_http_cinematch_authn_jwt(ngx_http_request_t *r,
    ngx_http_cinematch_authn_t *st, cm_cred_t *cred);
static ngx_http_cinematch_jwt_slot_t *ngx_http_cinematch_jwt_slot(
    cm_cred_t *cred);
static ngx_int_t ngx_http_cinematch_authn_deny_done(ngx_http_request_t *r,
    void *data, redisReply *reply);
static ngx_int_t ngx_http_cinematch_authn_key(ngx_http_request_t *r,
    ngx_http_cinematch_authn_t *st, cm_cred_t *cred);
static ngx_int_t ngx_http_cinematch_authn_key_cached(ngx_http_request_t *r,
    void *data, redisReply *reply);
static ngx_int_t ngx_http_cinematch_authn_key_lookup(ngx_http_request_t *r,
    ngx_http_cinematch_authn_t *st);
static ngx_int_t ngx_http_cinematch_authn_key_found(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_authn_key_parse(
    ngx_http_cinematch_caller_t *c, const char *s, size_t len);
static void ngx_http_cinematch_authn_key_touch(ngx_http_request_t *r,
    ngx_http_cinematch_authn_t *st);
static ngx_int_t ngx_http_cinematch_authn_key_touched(ngx_http_request_t *r,
    void *data, PGresult *res, const char *err);
static ngx_int_t ngx_http_cinematch_authn_authorize(ngx_http_request_t *r,
    ngx_http_cinematch_authn_t *st);
static ngx_int_t ngx_http_cinematch_authn_limit(ngx_http_request_t *r,
    ngx_http_cinematch_authn_t *st);
static ngx_int_t ngx_http_cinematch_authn_limit_verdict(
    ngx_http_request_t *r, ngx_http_cinematch_authn_t *st,
    redisReply **el);
static void ngx_http_cinematch_rl_batch_flush_handler(ngx_event_t *ev);
static void ngx_http_cinematch_rl_batch_send(
    ngx_http_cinematch_rl_batch_t *b);
static ngx_int_t ngx_http_cinematch_rl_batch_done(ngx_http_request_t *r,
    void *data, redisReply *reply);
static void ngx_http_cinematch_rl_batch_local(
    ngx_http_cinematch_rl_batch_t *b, const char *why);
static void ngx_http_cinematch_rl_entry_cleanup(void *data);
static ngx_int_t ngx_http_cinematch_authn_limit_local(ngx_http_request_t *r,
    ngx_http_cinematch_authn_t *st);
static ngx_int_t ngx_http_cinematch_authn_limit_apply(ngx_http_request_t *r,
    ngx_http_cinematch_authn_t *st, cm_ratelimit_result_t *res);
static ngx_int_t ngx_http_cinematch_authn_run(ngx_http_request_t *r,
    ngx_http_cinematch_authn_t *st);
static ngx_int_t ngx_http_cinematch_authn_script(ngx_log_t *log);
static ngx_int_t ngx_http_cinematch_cors_headers(ngx_http_request_t *r,
    ngx_http_cinematch_auth_loc_conf_t *alcf, ngx_uint_t allow);
static ngx_int_t ngx_http_cinematch_rl_init_zone(ngx_shm_zone_t *shm_zone,
    void *data);
static ngx_int_t ngx_http_cinematch_int64(const char *s, size_t len,
    int64_t *out);


static char                            ngx_http_cinematch_rl_sha[41];
static char                           *ngx_http_cinematch_rl_script;

static ngx_http_cinematch_key_touch_t  ngx_http_cinematch_key_touched[
                                       NGX_HTTP_CINEMATCH_KEY_TOUCH_SLOTS];

static ngx_http_cinematch_jwt_slot_t   ngx_http_cinematch_jwt_cache[
                                       NGX_HTTP_CINEMATCH_JWT_CACHE_SLOTS];

/* per worker: the batches filled this turn (more than one only past
 * NGX_HTTP_CINEMATCH_RL_BATCH checks), and their flush event */
static ngx_http_cinematch_rl_batch_t  *ngx_http_cinematch_rl_open;
static ngx_http_cinematch_rl_batch_t  *ngx_http_cinematch_rl_last;
static ngx_event_t                     ngx_http_cinematch_rl_flush;

static ngx_str_t  ngx_http_cinematch_x_api_key = ngx_string("X-API-Key");


ngx_int_t
ngx_http_cinematch_authn(ngx_http_request_t *r, ngx_http_cinematch_ctx_t *ctx)
{
    ngx_int_t                     rc;
    ngx_str_t                     apikey, bearer;
    ngx_uint_t                    flags;
    cm_cred_t                     cred;
    cm_field_error_t              fe;
    ngx_table_elt_t              *authz;
    ngx_http_cinematch_authn_t   *st;
    ngx_http_cinematch_auth_loc_conf_t  *alcf;

    flags = ctx->route->flags;
    alcf = ngx_http_get_module_loc_conf(r, ngx_http_cinematch_auth_module);

    if (alcf->cors != NULL
        && ngx_http_cinematch_cors_headers(r, alcf, 0) == NGX_ERROR)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (!(flags & (NGX_HTTP_CINEMATCH_ROUTE_AUTH
                   |NGX_HTTP_CINEMATCH_ROUTE_OPTAUTH))
        && alcf->rl == NULL)
    {
        return ctx->route->handler(r, ctx);
    }

    st = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_authn_t));
    if (st == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    st->amcf = ngx_http_get_module_main_conf(r,
                                             ngx_http_cinematch_auth_module);
    st->alcf = alcf;
    ctx->authn = st;

    if (!(flags & (NGX_HTTP_CINEMATCH_ROUTE_AUTH
                   |NGX_HTTP_CINEMATCH_ROUTE_OPTAUTH)))
    {
        return ngx_http_cinematch_authn_limit(r, st);
    }

    rc = ngx_http_cinematch_authn_header(r, &apikey);
    if (rc == NGX_DECLINED) {
        return ngx_http_cinematch_authn_fail(r, NGX_HTTP_UNAUTHORIZED,
                                             "unauthenticated",
                                             "send one X-API-Key header",
                                             "Bearer error=\"invalid_request\"");
    }

    authz = r->headers_in.authorization;
    ngx_str_null(&bearer);

    if (authz != NULL) {
        bearer = authz->value;
    }

#if (NGX_HTTP_CINEMATCH_WS)
    if (authz == NULL && (flags & NGX_HTTP_CINEMATCH_ROUTE_WS)
        && ngx_http_cinematch_ws_bearer(r, &bearer) == NGX_ERROR)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
#endif

    if (cm_auth_header_parse(bearer.len ? (char *) bearer.data : NULL,
                             bearer.len,
                             (char *) apikey.data, apikey.len, &cred, &fe)
        != CM_OK)
    {
        return ngx_http_cinematch_authn_fail(r, NGX_HTTP_UNAUTHORIZED,
                                             "unauthenticated", fe.message,
                                             "Bearer error=\"invalid_request\"");
    }

    switch (cred.kind) {

    case CM_CRED_JWT:
        return ngx_http_cinematch_authn_jwt(r, st, &cred);

    case CM_CRED_APIKEY:
        return ngx_http_cinematch_authn_key(r, st, &cred);

    default:
        if (flags & NGX_HTTP_CINEMATCH_ROUTE_AUTH) {
            return ngx_http_cinematch_authn_fail(r, NGX_HTTP_UNAUTHORIZED,
                                                 "unauthenticated",
                                                 "credentials required",
                                                 "Bearer");
        }

        return ngx_http_cinematch_authn_limit(r, st);
    }
}


/* X-API-Key: absent (out empty), one (out), or several (NGX_DECLINED) */

static ngx_int_t
ngx_http_cinematch_authn_header(ngx_http_request_t *r, ngx_str_t *out)
{
    ngx_uint_t        i;
    ngx_list_part_t  *part;
    ngx_table_elt_t  *h;

    ngx_str_null(out);

    part = &r->headers_in.headers.part;
    h = part->elts;

    for (i = 0; /* void */ ; i++) {

        if (i >= part->nelts) {
            if (part->next == NULL) {
                break;
            }

            part = part->next;
            h = part->elts;
            i = 0;
        }

        if (h[i].key.len == ngx_http_cinematch_x_api_key.len
            && ngx_strncasecmp(h[i].key.data,
                               ngx_http_cinematch_x_api_key.data,
                               h[i].key.len)
               == 0)
        {
            if (out->data != NULL) {
                return NGX_DECLINED;
            }

            *out = h[i].value;
        }
    }

    return NGX_OK;
}


static ngx_int_t
ngx_http_cinematch_authn_fail(ngx_http_request_t *r, ngx_uint_t status,
    const char *code, const char *message, const char *www)
{
    ngx_str_t  key, value;

    if (www != NULL) {
        ngx_str_set(&key, "WWW-Authenticate");
        value.data = (u_char *) www;
        value.len = ngx_strlen(www);

        if (ngx_http_cinematch_add_header(r, &key, &value) != NGX_OK) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }
    }

    return ngx_http_cinematch_send_error(r, status, code, message);
}


/* ---- JWT ---- */

static ngx_int_t
ngx_http_cinematch_authn_jwt(ngx_http_request_t *r,
    ngx_http_cinematch_authn_t *st, cm_cred_t *cred)
{
    int                             rc;
    cm_jwt_claims_t                 claims;
    ngx_http_cinematch_caller_t    *c;
    ngx_http_cinematch_jwt_slot_t  *slot;

    if (st->amcf->ring == NULL) {
        return ngx_http_cinematch_authn_fail(r, NGX_HTTP_UNAUTHORIZED,
                                             "unauthenticated",
                                             "access tokens are not "
                                             "configured",
                                             "Bearer error=\"invalid_token\"");
    }

    c = &st->caller;
    slot = ngx_http_cinematch_jwt_slot(cred);

    if (slot != NULL
        && slot->len == cred->len
        && slot->ring == st->amcf->ring
        && ngx_time() < slot->until
        && CRYPTO_memcmp(slot->token, cred->token, cred->len) == 0)
    {
        *c = slot->caller;
        goto deny;
    }

    rc = cm_jwt_verify(st->amcf->ring, cred->token, cred->len, ngx_time(),
                       &claims);
    if (rc != CM_OK) {
        ngx_log_error(NGX_LOG_INFO, r->connection->log, 0,
                      "cinematch: access token refused: %s",
                      cm_jwt_strerror(rc));
        return ngx_http_cinematch_authn_fail(r, NGX_HTTP_UNAUTHORIZED,
                                             "unauthenticated",
                                             cm_jwt_strerror(rc),
                                             "Bearer error=\"invalid_token\"");
    }

    if (ngx_http_cinematch_int64(claims.sub, ngx_strlen(claims.sub),
                                 &c->user_id)
        != NGX_OK
        || c->user_id == 0
        || ngx_strlen(claims.jti) >= sizeof(c->jti)
        || ngx_strlen(claims.sid) >= sizeof(c->sid))
    {
        return ngx_http_cinematch_authn_fail(r, NGX_HTTP_UNAUTHORIZED,
                                             "unauthenticated",
                                             "access token has bad claims",
                                             "Bearer error=\"invalid_token\"");
    }

    c->admin = (ngx_strcmp(claims.role, "admin") == 0);
    c->scopes = c->admin ? CM_SCOPE_ALL : (CM_SCOPE_ALL & ~CM_SCOPE_ADMIN);
    c->exp = (time_t) claims.exp;
    ngx_cpystrn((u_char *) c->jti, (u_char *) claims.jti, sizeof(c->jti));
    ngx_cpystrn((u_char *) c->sid, (u_char *) claims.sid, sizeof(c->sid));

    if (slot != NULL) {
        slot->ring = st->amcf->ring;
        slot->until = (time_t) claims.exp + st->amcf->leeway;
        slot->len = cred->len;
        slot->caller = *c;
        ngx_memcpy(slot->token, cred->token, cred->len);
    }

    ngx_explicit_memzero(&claims, sizeof(cm_jwt_claims_t));

deny:

    /* logout denylist; when Redis is down it fails open (documented);
     * with a rate limit the script checks it in the same round trip */
    if (st->alcf->rl != NULL && ngx_http_cinematch_redis_connected()) {
        st->deny = 1;
        return ngx_http_cinematch_authn_authorize(r, st);
    }

    switch (ngx_http_cinematch_redis_commandf(r,
                                        ngx_http_cinematch_authn_deny_done,
                                        st, "EXISTS cm:deny:%s", c->jti))
    {
    case NGX_OK:
        return NGX_DONE;

    case NGX_DECLINED:
        return ngx_http_cinematch_authn_authorize(r, st);

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}


/* The cache slot of a token; NULL when the token is too long to cache. */

static ngx_http_cinematch_jwt_slot_t *
ngx_http_cinematch_jwt_slot(cm_cred_t *cred)
{
    ngx_uint_t  h;

    if (cred->len > NGX_HTTP_CINEMATCH_JWT_CACHE_LEN || cred->len < 16) {
        return NULL;
    }

    /* the last characters are the signature's: uniform, and never
     * equal for two different tokens of one key in practice */
    h = ngx_hash_key((u_char *) cred->token + cred->len - 16, 16);

    return &ngx_http_cinematch_jwt_cache[
               h & (NGX_HTTP_CINEMATCH_JWT_CACHE_SLOTS - 1)];
}


static ngx_int_t
ngx_http_cinematch_authn_deny_done(ngx_http_request_t *r, void *data,
    redisReply *reply)
{
    ngx_http_cinematch_authn_t *st = data;

    if (reply != NULL && reply->type == REDIS_REPLY_INTEGER
        && reply->integer != 0)
    {
        return ngx_http_cinematch_authn_fail(r, NGX_HTTP_UNAUTHORIZED,
                                             "unauthenticated",
                                             "access token was revoked",
                                             "Bearer error=\"invalid_token\"");
    }

    if (reply == NULL || reply->type == REDIS_REPLY_ERROR) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "cinematch: token denylist unavailable, not checked");
    }

    return ngx_http_cinematch_authn_authorize(r, st);
}


/* ---- API keys ---- */

static ngx_int_t
ngx_http_cinematch_authn_key(ngx_http_request_t *r,
    ngx_http_cinematch_authn_t *st, cm_cred_t *cred)
{
    if (cm_apikey_parse(cred->token, cred->len, NULL) != CM_OK
        || cm_sha256_hex(cred->token, cred->len, st->sha) != CM_OK)
    {
        return ngx_http_cinematch_authn_fail(r, NGX_HTTP_UNAUTHORIZED,
                                             "unauthenticated",
                                             "invalid API key",
                                             "Bearer error=\"invalid_token\"");
    }

    switch (ngx_http_cinematch_redis_commandf(r,
                                        ngx_http_cinematch_authn_key_cached,
                                        st, "GET cm:key:%s", st->sha))
    {
    case NGX_OK:
        return NGX_DONE;

    case NGX_DECLINED:
        return ngx_http_cinematch_authn_key_lookup(r, st);

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}


static ngx_int_t
ngx_http_cinematch_authn_key_cached(ngx_http_request_t *r, void *data,
    redisReply *reply)
{
    ngx_http_cinematch_authn_t *st = data;

    if (reply != NULL && reply->type == REDIS_REPLY_STRING) {

        if (reply->len == 1 && reply->str[0] == '-') {
            return ngx_http_cinematch_authn_fail(r, NGX_HTTP_UNAUTHORIZED,
                                                 "unauthenticated",
                                                 "invalid API key",
                                                 "Bearer error=\"invalid_token\"");
        }

        if (ngx_http_cinematch_authn_key_parse(&st->caller, reply->str,
                                               reply->len)
            == NGX_OK)
        {
            return ngx_http_cinematch_authn_authorize(r, st);
        }

        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "cinematch: bad API key cache entry, ignored");
    }

    return ngx_http_cinematch_authn_key_lookup(r, st);
}


static ngx_int_t
ngx_http_cinematch_authn_key_lookup(ngx_http_request_t *r,
    ngx_http_cinematch_authn_t *st)
{
    st->values[0] = st->sha;

    switch (ngx_http_cinematch_pg_query(r,
                "SELECT k.id, k.user_id, u.role, k.scopes, u.rating_user_id"
                " FROM api_keys k JOIN users u ON u.id = k.user_id"
                " WHERE k.key_sha256 = $1 AND k.revoked_at IS NULL"
                " AND (k.expires_at IS NULL OR k.expires_at > now())"
                " AND u.disabled_at IS NULL",
                1, st->values, ngx_http_cinematch_authn_key_found, st))
    {
    case NGX_OK:
        return NGX_DONE;

    case NGX_DECLINED:
    case NGX_BUSY:
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             "cannot check the API key now");

    default:
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }
}


static ngx_int_t
ngx_http_cinematch_authn_key_found(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    ngx_http_cinematch_authn_t *st = data;

    u_char                       *p;
    uint32_t                      mask;
    u_char                        entry[4 * NGX_INT64_LEN + 16];
    ngx_http_cinematch_caller_t  *c;

    if (err != NULL) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             "cannot check the API key now");
    }

    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cinematch: API key lookup failed: %s",
                      PQresultErrorMessage(res));
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (PQntuples(res) != 1) {
        /* a short negative entry keeps a flood of bad keys off PostgreSQL */
        (void) ngx_http_cinematch_redis_commandf(NULL, NULL, NULL,
                                         "SET cm:key:%s - PX %d", st->sha,
                                         NGX_HTTP_CINEMATCH_KEY_NEG_MS);

        return ngx_http_cinematch_authn_fail(r, NGX_HTTP_UNAUTHORIZED,
                                             "unauthenticated",
                                             "invalid API key",
                                             "Bearer error=\"invalid_token\"");
    }

    if (cm_scopes_from_pg_array(PQgetvalue(res, 0, 3),
                                PQgetlength(res, 0, 3), &mask)
        != CM_OK)
    {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cinematch: API key %s has unknown scopes",
                      PQgetvalue(res, 0, 0));
        return ngx_http_cinematch_authn_fail(r, NGX_HTTP_UNAUTHORIZED,
                                             "unauthenticated",
                                             "invalid API key", NULL);
    }

    p = ngx_snprintf(entry, sizeof(entry) - 1, "%s %s %c %uD %s",
                     PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1),
                     ngx_strcmp(PQgetvalue(res, 0, 2), "admin") == 0
                     ? 'a' : 'u',
                     mask, PQgetvalue(res, 0, 4));
    *p = '\0';

    c = &st->caller;

    if (ngx_http_cinematch_authn_key_parse(c, (char *) entry, p - entry)
        != NGX_OK)
    {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    (void) ngx_http_cinematch_redis_commandf(NULL, NULL, NULL,
                                     "SET cm:key:%s %b PX %d", st->sha,
                                     entry, (size_t) (p - entry),
                                     NGX_HTTP_CINEMATCH_KEY_CACHE_MS);

    return ngx_http_cinematch_authn_authorize(r, st);
}


/* "<key id> <user id> <a|u> <scope mask> <rating user id>" */

static ngx_int_t
ngx_http_cinematch_authn_key_parse(ngx_http_cinematch_caller_t *c,
    const char *s, size_t len)
{
    size_t       i, n, start;
    int64_t      v[5];
    ngx_uint_t   admin;

    n = 0;
    start = 0;
    admin = 0;

    for (i = 0; i <= len; i++) {

        if (i < len && s[i] != ' ') {
            continue;
        }

        if (n == 5) {
            return NGX_ERROR;
        }

        if (n == 2) {
            if (i - start != 1 || (s[start] != 'a' && s[start] != 'u')) {
                return NGX_ERROR;
            }

            admin = (s[start] == 'a');
            v[n++] = 0;

        } else if (ngx_http_cinematch_int64(s + start, i - start, &v[n++])
                   != NGX_OK)
        {
            return NGX_ERROR;
        }

        start = i + 1;
    }

    if (n != 5 || v[0] == 0 || v[1] == 0 || v[3] > CM_SCOPE_ALL) {
        return NGX_ERROR;
    }

    c->key_id = v[0];
    c->user_id = v[1];
    c->admin = admin;
    c->apikey = 1;
    c->rating_user_id = v[4];

    /* an empty grant is the user's authority without admin */
    c->scopes = v[3] ? (uint32_t) v[3] : (CM_SCOPE_ALL & ~CM_SCOPE_ADMIN);

    if (!admin) {
        c->scopes &= ~CM_SCOPE_ADMIN;
    }

    return NGX_OK;
}


/*
 * last_used_at, off the request path: at most once per interval per key
 * and worker, by a query attached to this request that nothing waits for
 * (the handler's answer goes out without it).
 */

static void
ngx_http_cinematch_authn_key_touch(ngx_http_request_t *r,
    ngx_http_cinematch_authn_t *st)
{
    u_char                          *p;
    ngx_uint_t                       i, oldest;
    ngx_http_cinematch_key_touch_t  *t;

    t = ngx_http_cinematch_key_touched;
    oldest = 0;

    for (i = 0; i < NGX_HTTP_CINEMATCH_KEY_TOUCH_SLOTS; i++) {
        if (t[i].key_id == st->caller.key_id) {
            break;
        }

        if (t[i].at < t[oldest].at) {
            oldest = i;
        }
    }

    if (i < NGX_HTTP_CINEMATCH_KEY_TOUCH_SLOTS) {
        if (ngx_current_msec - t[i].at < st->amcf->key_touch) {
            return;
        }

    } else {
        i = oldest;
    }

    t[i].key_id = st->caller.key_id;
    t[i].at = ngx_current_msec;

    p = ngx_sprintf((u_char *) st->key_id, "%L", st->caller.key_id);
    *p = '\0';
    st->values[0] = st->key_id;

    if (ngx_http_cinematch_pg_query(r,
            "UPDATE api_keys SET last_used_at = now() WHERE id = $1::bigint",
            1, st->values, ngx_http_cinematch_authn_key_touched, NULL)
        != NGX_OK)
    {
        t[i].at = 0;     /* try again with the next request */
    }
}


static ngx_int_t
ngx_http_cinematch_authn_key_touched(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    if (err != NULL || PQresultStatus(res) != PGRES_COMMAND_OK) {
        ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                      "cinematch: API key last_used_at not updated: %s",
                      err ? err : PQresultErrorMessage(res));
    }

    return NGX_DONE;
}


/* ---- authorization ---- */

static ngx_int_t
ngx_http_cinematch_authn_authorize(ngx_http_request_t *r,
    ngx_http_cinematch_authn_t *st)
{
    uint32_t                       need;
    ngx_uint_t                     flags;
    ngx_http_cinematch_ctx_t      *ctx;
    ngx_http_cinematch_caller_t   *c;

    ctx = ngx_http_get_module_ctx(r, ngx_http_cinematch_module);
    flags = ctx->route->flags;
    c = &st->caller;

    if ((flags & NGX_HTTP_CINEMATCH_ROUTE_ADMIN)
        == NGX_HTTP_CINEMATCH_ROUTE_ADMIN
        && (!c->admin || !(c->scopes & CM_SCOPE_ADMIN)))
    {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_FORBIDDEN,
                                             "forbidden",
                                             "this needs an administrator");
    }

    need = NGX_HTTP_CINEMATCH_ROUTE_SCOPES(flags);

    if (need && c->apikey && !cm_scope_allows(c->scopes, need)) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_FORBIDDEN,
                                             "forbidden",
                                             "the API key lacks the scope "
                                             "this needs");
    }

    ctx->caller = c;

    if (c->apikey) {
        ngx_http_cinematch_authn_key_touch(r, st);
    }

    return ngx_http_cinematch_authn_limit(r, st);
}


/* ---- rate limit ---- */

static ngx_int_t
ngx_http_cinematch_authn_limit(ngx_http_request_t *r,
    ngx_http_cinematch_authn_t *st)
{
    u_char                          *p;
    size_t                           len;
    ngx_event_t                     *ev;
    ngx_http_cinematch_caller_t     *c;
    ngx_http_cinematch_rl_entry_t   *e;
    ngx_http_cinematch_rl_batch_t   *b;

    if (st->alcf->rl == NULL) {
        return ngx_http_cinematch_authn_run(r, st);
    }

    c = (st->caller.user_id != 0) ? &st->caller : NULL;

    len = sizeof("cm:rl:{ip}:") + NGX_SOCKADDR_STRLEN + NGX_INT64_LEN
          + st->ident.len + st->alcf->rl_name.len;

    p = ngx_pnalloc(r->pool, len);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    st->rl_key.data = p;

    /* the identity in a hash tag: one slot per caller in Redis Cluster */
    if (st->ident.len) {
        p = ngx_sprintf(p, "cm:rl:{%V}:", &st->ident);

    } else if (c != NULL && c->apikey) {
        p = ngx_sprintf(p, "cm:rl:{k%L}:", c->key_id);

    } else if (c != NULL) {
        p = ngx_sprintf(p, "cm:rl:{u%L}:", c->user_id);

    } else {
        p = ngx_sprintf(p, "cm:rl:{ip%V}:", &r->connection->addr_text);
    }

    p = ngx_cpymem(p, st->alcf->rl_name.data, st->alcf->rl_name.len);
    st->rl_key.len = p - st->rl_key.data;

    if (st->deny) {
        st->rl_deny_len = ngx_sprintf(st->rl_deny, "cm:deny:%s",
                                      st->caller.jti)
                          - st->rl_deny;
    }

    if (ngx_http_cinematch_rl_script == NULL
        && ngx_http_cinematch_authn_script(r->connection->log) != NGX_OK)
    {
        return ngx_http_cinematch_authn_limit_local(r, st);
    }

    if (!ngx_http_cinematch_redis_configured()) {
        return ngx_http_cinematch_authn_limit_local(r, st);
    }

    b = ngx_http_cinematch_rl_last;

    if (b == NULL || b->n == NGX_HTTP_CINEMATCH_RL_BATCH) {
        b = ngx_calloc(sizeof(ngx_http_cinematch_rl_batch_t),
                       r->connection->log);
        if (b == NULL) {
            return NGX_HTTP_INTERNAL_SERVER_ERROR;
        }

        if (ngx_http_cinematch_rl_last != NULL) {
            ngx_http_cinematch_rl_last->next = b;

        } else {
            ngx_http_cinematch_rl_open = b;
        }

        ngx_http_cinematch_rl_last = b;
    }

    e = &b->entries[b->n];

    e->cln = ngx_pool_cleanup_add(r->pool, 0);
    if (e->cln == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    e->cln->handler = ngx_http_cinematch_rl_entry_cleanup;
    e->cln->data = e;
    e->request = r;
    e->st = st;
    b->n++;

    ngx_http_cinematch_wait(r);

    /* sent from the posted event, never from here: a failed send resumes
     * its requests at once, and this one must first return NGX_DONE */

    if (!ngx_http_cinematch_rl_flush.posted) {
        ev = &ngx_http_cinematch_rl_flush;
        ev->handler = ngx_http_cinematch_rl_batch_flush_handler;
        ev->log = ngx_cycle->log;
        ngx_post_event(ev, &ngx_posted_events);
    }

    return NGX_DONE;
}


/* the end of this turn's events: send what arrived in it */

static void
ngx_http_cinematch_rl_batch_flush_handler(ngx_event_t *ev)
{
    ngx_http_cinematch_rl_batch_t  *b, *next;

    b = ngx_http_cinematch_rl_open;
    ngx_http_cinematch_rl_open = NULL;
    ngx_http_cinematch_rl_last = NULL;

    while (b != NULL) {
        next = b->next;
        b->next = NULL;
        ngx_http_cinematch_rl_batch_send(b);
        b = next;
    }
}


/*
 * One EVALSHA (EVAL after NOSCRIPT) for the batch's live entries.  Never
 * called from inside a request's handler with that request's answer
 * pending: the entries are resumed by ngx_http_cinematch_finish().
 */

static void
ngx_http_cinematch_rl_batch_send(ngx_http_cinematch_rl_batch_t *b)
{
    int                              argc;
    ngx_int_t                        rc;
    ngx_uint_t                       i, j, live;
    const char                     **argv;
    size_t                          *argvlen;
    char                             numkeys[NGX_INT_T_LEN + 1];
    ngx_http_cinematch_authn_t      *st;
    ngx_http_cinematch_rl_entry_t   *e;
    const char                      *av[3 + 5 * NGX_HTTP_CINEMATCH_RL_BATCH];
    size_t                           al[3 + 5 * NGX_HTTP_CINEMATCH_RL_BATCH];

    argv = av;
    argvlen = al;

    if (b->eval) {
        argv[0] = "EVAL";
        argvlen[0] = 4;
        argv[1] = ngx_http_cinematch_rl_script;
        argvlen[1] = ngx_strlen(ngx_http_cinematch_rl_script);

    } else {
        argv[0] = "EVALSHA";
        argvlen[0] = 7;
        argv[1] = ngx_http_cinematch_rl_sha;
        argvlen[1] = 40;
    }

    live = 0;
    argc = 3;

    for (i = 0; i < b->n; i++) {
        e = &b->entries[i];
        e->sent = (e->request != NULL);
        if (!e->sent) {
            continue;
        }

        st = e->st;
        argv[argc] = (char *) st->rl_key.data;
        argvlen[argc++] = st->rl_key.len;
        argv[argc] = (char *) st->rl_deny;
        argvlen[argc++] = st->rl_deny_len;
        live++;
    }

    b->sent = live;

    if (live == 0) {
        ngx_free(b);
        return;
    }

    for (i = 0; i < b->n; i++) {
        e = &b->entries[i];
        if (e->request == NULL) {
            continue;
        }

        for (j = 0; j < 3; j++) {
            argv[argc] = e->st->alcf->rl->argv[j];
            argvlen[argc++] = ngx_strlen(e->st->alcf->rl->argv[j]);
        }
    }

    argv[2] = numkeys;
    argvlen[2] = ngx_sprintf((u_char *) numkeys, "%ui", 2 * live)
                 - (u_char *) numkeys;

    rc = ngx_http_cinematch_redis_command(NULL,
                                          ngx_http_cinematch_rl_batch_done,
                                          b, argc, argv, argvlen);
    if (rc != NGX_OK) {
        ngx_http_cinematch_rl_batch_local(b, rc == NGX_DECLINED
                                             ? "Redis not connected"
                                             : "cannot queue the command");
    }
}


static ngx_int_t
ngx_http_cinematch_rl_batch_done(ngx_http_request_t *unused, void *data,
    redisReply *reply)
{
    ngx_http_cinematch_rl_batch_t *b = data;

    ngx_int_t                        rc;
    ngx_uint_t                       i, k;
    ngx_http_request_t              *r;
    ngx_http_cinematch_rl_entry_t   *e;

    if (reply != NULL && reply->type == REDIS_REPLY_ERROR
        && reply->len >= 8 && ngx_strncmp(reply->str, "NOSCRIPT", 8) == 0
        && !b->eval)
    {
        b->eval = 1;
        ngx_http_cinematch_rl_batch_send(b);
        return NGX_OK;
    }

    /* the reply is positional: one quadruple per entry sent, including
     * those whose request has gone since */

    if (reply == NULL || reply->type != REDIS_REPLY_ARRAY
        || reply->elements != 4 * b->sent)
    {
        ngx_http_cinematch_rl_batch_local(b,
                                   reply && reply->type == REDIS_REPLY_ERROR
                                   ? reply->str : "no reply");
        return NGX_OK;
    }

    k = 0;

    for (i = 0; i < b->n; i++) {
        e = &b->entries[i];

        if (!e->sent) {
            continue;
        }

        r = e->request;
        k += 4;

        if (r == NULL) {
            continue;
        }

        e->cln->handler = NULL;
        e->request = NULL;

        rc = ngx_http_cinematch_authn_limit_verdict(r, e->st,
                                                    &reply->element[k - 4]);
        ngx_http_cinematch_finish(r, rc);
    }

    ngx_free(b);

    return NGX_OK;
}


/* every live entry of b to the local bucket, and b freed */

static void
ngx_http_cinematch_rl_batch_local(ngx_http_cinematch_rl_batch_t *b,
    const char *why)
{
    ngx_int_t                        rc;
    ngx_uint_t                       i;
    ngx_http_request_t              *r;
    ngx_http_cinematch_rl_entry_t   *e;

    ngx_log_error(NGX_LOG_WARN, ngx_cycle->log, 0,
                  "cinematch: rate limit script failed (%s), "
                  "using the local bucket", why);

    for (i = 0; i < b->n; i++) {
        e = &b->entries[i];
        r = e->request;

        if (r == NULL) {
            continue;
        }

        e->cln->handler = NULL;
        e->request = NULL;

        if (e->st->deny) {
            ngx_log_error(NGX_LOG_WARN, r->connection->log, 0,
                          "cinematch: token denylist unavailable, "
                          "not checked");
        }

        rc = ngx_http_cinematch_authn_limit_local(r, e->st);
        ngx_http_cinematch_finish(r, rc);
    }

    ngx_free(b);
}


/* the request is going away while it waits in a batch */

static void
ngx_http_cinematch_rl_entry_cleanup(void *data)
{
    ngx_http_cinematch_rl_entry_t *e = data;

    e->request = NULL;
}


/* one entry's 4 integers from the batch reply */

static ngx_int_t
ngx_http_cinematch_authn_limit_verdict(ngx_http_request_t *r,
    ngx_http_cinematch_authn_t *st, redisReply **el)
{
    ngx_uint_t              i;
    cm_ratelimit_result_t   res;

    if (el[0]->type == REDIS_REPLY_INTEGER && el[0]->integer == -1) {
        return ngx_http_cinematch_authn_fail(r, NGX_HTTP_UNAUTHORIZED,
                                             "unauthenticated",
                                             "access token was revoked",
                                             "Bearer error=\"invalid_token\"");
    }

    for (i = 0; i < 4; i++) {
        if (el[i]->type != REDIS_REPLY_INTEGER || el[i]->integer < 0) {
            return ngx_http_cinematch_authn_limit_local(r, st);
        }
    }

    res.allowed = el[0]->integer == 1;
    res.remaining = (uint64_t) el[1]->integer;
    res.retry_ms = (uint64_t) el[2]->integer;
    res.reset_ms = (uint64_t) el[3]->integer;
    res.limit = st->alcf->rl->burst;

    return ngx_http_cinematch_authn_limit_apply(r, st, &res);
}


/*
 * Redis down: the same bucket in this node's shared memory.  The table is
 * direct-mapped by a 64-bit hash of the Redis key; a collision replaces
 * the older identity's bucket (it starts full again), which can only
 * loosen the limit, and only under heavy identity churn.
 */

static ngx_int_t
ngx_http_cinematch_authn_limit_local(ngx_http_request_t *r,
    ngx_http_cinematch_authn_t *st)
{
    uint64_t                        key;
    ngx_slab_pool_t                *shpool;
    cm_ratelimit_result_t           res;
    ngx_http_cinematch_rl_slot_t   *slot;
    ngx_http_cinematch_rl_table_t  *t;

    if (st->amcf->rl_zone == NULL || st->amcf->rl_zone->data == NULL) {
        return ngx_http_cinematch_authn_run(r, st);
    }

    shpool = (ngx_slab_pool_t *) st->amcf->rl_zone->shm.addr;
    t = st->amcf->rl_zone->data;

    key = ((uint64_t) ngx_crc32_long(st->rl_key.data, st->rl_key.len) << 32)
          | ngx_murmur_hash2(st->rl_key.data, st->rl_key.len);

    ngx_shmtx_lock(&shpool->mutex);

    slot = &t->slots[key % t->nslots];

    if (slot->key != key) {
        slot->key = key;
        ngx_memzero(&slot->bucket, sizeof(cm_tbucket_t));
    }

    cm_tbucket_take(st->alcf->rl, &slot->bucket, (uint64_t) ngx_current_msec,
                    &res);

    ngx_shmtx_unlock(&shpool->mutex);

    return ngx_http_cinematch_authn_limit_apply(r, st, &res);
}


static ngx_int_t
ngx_http_cinematch_authn_limit_apply(ngx_http_request_t *r,
    ngx_http_cinematch_authn_t *st, cm_ratelimit_result_t *res)
{
    u_char     *p;
    ngx_str_t   key, value;

    p = ngx_pnalloc(r->pool, 4 * NGX_INT64_LEN);
    if (p == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (st->quiet) {
        if (res->allowed) {
            return ngx_http_cinematch_authn_run(r, st);
        }

        goto denied;
    }

    ngx_str_set(&key, "X-RateLimit-Limit");
    value.data = p;
    p = ngx_sprintf(p, "%uL", res->limit);
    value.len = p - value.data;

    if (ngx_http_cinematch_add_header(r, &key, &value) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_str_set(&key, "X-RateLimit-Remaining");
    value.data = p;
    p = ngx_sprintf(p, "%uL", res->remaining);
    value.len = p - value.data;

    if (ngx_http_cinematch_add_header(r, &key, &value) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    ngx_str_set(&key, "X-RateLimit-Reset");
    value.data = p;
    p = ngx_sprintf(p, "%uL", (res->reset_ms + 999) / 1000);
    value.len = p - value.data;

    if (ngx_http_cinematch_add_header(r, &key, &value) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (res->allowed) {
        return ngx_http_cinematch_authn_run(r, st);
    }

denied:

    ngx_str_set(&key, "Retry-After");
    value.data = p;
    p = ngx_sprintf(p, "%uL", ngx_max((res->retry_ms + 999) / 1000, 1));
    value.len = p - value.data;

    if (ngx_http_cinematch_add_header(r, &key, &value) != NGX_OK) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    return ngx_http_cinematch_send_error(r, NGX_HTTP_TOO_MANY_REQUESTS,
                                         "rate_limited",
                                         "too many requests, retry later");
}


static ngx_int_t
ngx_http_cinematch_authn_run(ngx_http_request_t *r,
    ngx_http_cinematch_authn_t *st)
{
    ngx_http_cinematch_ctx_t  *ctx;

    if (st->next != NULL) {
        return st->next(r);
    }

    ctx = ngx_http_get_module_ctx(r, ngx_http_cinematch_module);

    return ctx->route->handler(r, ctx);
}


/*
 * Take one request from the bucket "cm:rl:{<ident>}:<name>" (Redis, or
 * the local zone when Redis is down), then return next(r); a 429 with
 * Retry-After when it is empty.  No X-RateLimit-* headers: the bucket is
 * not the caller's (e.g. login attempts per account).
 */

ngx_int_t
ngx_http_cinematch_authn_take(ngx_http_request_t *r, cm_ratelimit_t *rl,
    ngx_str_t *name, ngx_str_t *ident, ngx_http_cinematch_caller_next_pt next)
{
    ngx_http_cinematch_authn_t          *st;
    ngx_http_cinematch_auth_loc_conf_t  *alcf;

    st = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_authn_t));
    alcf = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_auth_loc_conf_t));

    if (st == NULL || alcf == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    alcf->rl = rl;
    alcf->rl_name = *name;

    st->amcf = ngx_http_get_module_main_conf(r,
                                             ngx_http_cinematch_auth_module);
    st->alcf = alcf;
    st->ident = *ident;
    st->next = next;
    st->quiet = 1;

    return ngx_http_cinematch_authn_limit(r, st);
}


/* the batch script (cm_ratelimit_batch_lua) and its SHA1, once per process */

static ngx_int_t
ngx_http_cinematch_authn_script(ngx_log_t *log)
{
    u_char   *p;
    size_t    len;
    SHA_CTX   sha;
    u_char    md[SHA_DIGEST_LENGTH];

    len = ngx_strlen(cm_ratelimit_batch_lua);

    p = ngx_alloc(len + 1, log);
    if (p == NULL) {
        return NGX_ERROR;
    }

    *ngx_cpymem(p, cm_ratelimit_batch_lua, len) = '\0';

    SHA1_Init(&sha);
    SHA1_Update(&sha, p, len);
    SHA1_Final(md, &sha);
    ngx_hex_dump((u_char *) ngx_http_cinematch_rl_sha, md, SHA_DIGEST_LENGTH);

    ngx_http_cinematch_rl_script = (char *) p;

    return NGX_OK;
}


/* ---- configuration ---- */

/* cinematch_rate_limit 100r/m burst=20; | cinematch_rate_limit off; */

char *
ngx_http_cinematch_rate_limit(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_cinematch_auth_loc_conf_t *alcf = conf;

    char                                  err[256];
    u_char                               *p;
    size_t                                len;
    ngx_str_t                            *value;
    ngx_uint_t                            i;
    ngx_http_core_loc_conf_t             *clcf;
    ngx_http_cinematch_auth_main_conf_t  *amcf;

    if (alcf->rl != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (cf->args->nelts == 2 && ngx_strcmp(value[1].data, "off") == 0) {
        alcf->rl = NULL;
        return NGX_CONF_OK;
    }

    len = 0;
    for (i = 1; i < cf->args->nelts; i++) {
        len += value[i].len + 1;
    }

    p = ngx_pnalloc(cf->pool, len);
    alcf->rl = ngx_pcalloc(cf->pool, sizeof(cm_ratelimit_t));

    if (p == NULL || alcf->rl == NULL) {
        return NGX_CONF_ERROR;
    }

    len = 0;
    for (i = 1; i < cf->args->nelts; i++) {
        if (i > 1) {
            p[len++] = ' ';
        }

        ngx_memcpy(p + len, value[i].data, value[i].len);
        len += value[i].len;
    }

    if (cm_ratelimit_parse(alcf->rl, (char *) p, len, err, sizeof(err))
        != CM_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%s", err);
        return NGX_CONF_ERROR;
    }

    /* the bucket's name in Redis: the location that set the limit, so
     * nodes with one configuration share it */
    clcf = ngx_http_conf_get_module_loc_conf(cf, ngx_http_core_module);
    alcf->rl_name = clcf->name;

    amcf = ngx_http_conf_get_module_main_conf(cf,
                                              ngx_http_cinematch_auth_module);

    if (amcf->rl_zone == NULL) {
        return ngx_http_cinematch_authn_init_zone(cf, amcf,
                                          NGX_HTTP_CINEMATCH_RL_ZONE_SIZE)
               == NGX_OK ? NGX_CONF_OK : NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


/* cinematch_login_account_limit 10r/m burst=5; (http) */

char *
ngx_http_cinematch_login_account_limit(ngx_conf_t *cf, ngx_command_t *cmd,
    void *conf)
{
    ngx_http_cinematch_auth_main_conf_t *amcf = conf;

    char        err[256];
    u_char     *p;
    size_t      len;
    ngx_str_t  *value;
    ngx_uint_t  i;

    if (amcf->login_rl != NULL) {
        return "is duplicate";
    }

    value = cf->args->elts;

    len = 0;
    for (i = 1; i < cf->args->nelts; i++) {
        len += value[i].len + 1;
    }

    p = ngx_pnalloc(cf->pool, len);
    amcf->login_rl = ngx_pcalloc(cf->pool, sizeof(cm_ratelimit_t));

    if (p == NULL || amcf->login_rl == NULL) {
        return NGX_CONF_ERROR;
    }

    len = 0;
    for (i = 1; i < cf->args->nelts; i++) {
        if (i > 1) {
            p[len++] = ' ';
        }

        ngx_memcpy(p + len, value[i].data, value[i].len);
        len += value[i].len;
    }

    if (cm_ratelimit_parse(amcf->login_rl, (char *) p, len, err,
                           sizeof(err))
        != CM_OK)
    {
        ngx_conf_log_error(NGX_LOG_EMERG, cf, 0, "%s", err);
        return NGX_CONF_ERROR;
    }

    if (amcf->rl_zone == NULL
        && ngx_http_cinematch_authn_init_zone(cf, amcf,
                                          NGX_HTTP_CINEMATCH_RL_ZONE_SIZE)
           != NGX_OK)
    {
        return NGX_CONF_ERROR;
    }

    return NGX_CONF_OK;
}


ngx_int_t
ngx_http_cinematch_authn_init_zone(ngx_conf_t *cf,
    ngx_http_cinematch_auth_main_conf_t *amcf, size_t size)
{
    ngx_str_t  name;

    ngx_str_set(&name, "cinematch_rate_limit");

    amcf->rl_zone = ngx_shared_memory_add(cf, &name, size,
                                          &ngx_http_cinematch_auth_module);
    if (amcf->rl_zone == NULL) {
        return NGX_ERROR;
    }

    amcf->rl_zone->init = ngx_http_cinematch_rl_init_zone;

    return NGX_OK;
}


static ngx_int_t
ngx_http_cinematch_rl_init_zone(ngx_shm_zone_t *shm_zone, void *data)
{
    size_t                          size;
    ngx_slab_pool_t                *shpool;
    ngx_http_cinematch_rl_table_t  *t;

    if (data) {
        shm_zone->data = data;        /* reload: keep the buckets */
        return NGX_OK;
    }

    shpool = (ngx_slab_pool_t *) shm_zone->shm.addr;

    if (shm_zone->shm.exists) {
        shm_zone->data = shpool->data;
        return NGX_OK;
    }

    /* half the zone: the slab allocator keeps its own pages in the rest */
    size = shm_zone->shm.size / 2;

    t = ngx_slab_alloc(shpool, size);
    if (t == NULL) {
        return NGX_ERROR;
    }

    ngx_memzero(t, size);
    t->nslots = (size - sizeof(ngx_http_cinematch_rl_table_t))
                / sizeof(ngx_http_cinematch_rl_slot_t) + 1;

    shpool->data = t;
    shm_zone->data = t;

    return NGX_OK;
}


/* a decimal int64 of 1..18 digits, no leading zeros ("0" itself is 0) */

static ngx_int_t
ngx_http_cinematch_int64(const char *s, size_t len, int64_t *out)
{
    size_t   i;
    int64_t  v;

    if (len == 0 || len > 18 || (s[0] == '0' && len > 1)) {
        return NGX_ERROR;
    }

    v = 0;

    for (i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return NGX_ERROR;
        }

        v = v * 10 + (s[i] - '0');
    }

    *out = v;

    return NGX_OK;
}


/*
 * GET /internal/auth/... (cinematch_echo on): the caller as the identity
 * step saw it; for tests, and the no-op endpoint of the auth benchmark.
 */

ngx_int_t
ngx_http_cinematch_whoami_handler(ngx_http_request_t *r,
    ngx_http_cinematch_ctx_t *ctx)
{
    ngx_http_cinematch_caller_t  *c;

    c = ngx_http_cinematch_caller(r);

    if (c == NULL) {
        return ngx_http_cinematch_send_json(r, NGX_HTTP_OK,
                                            json_pack("{s:n}", "user_id"));
    }

    return ngx_http_cinematch_send_json(r, NGX_HTTP_OK,
               json_pack("{s:I, s:s, s:I, s:I, s:I, s:b}",
                         "user_id", (json_int_t) c->user_id,
                         "role", c->admin ? "admin" : "user",
                         "key_id", (json_int_t) c->key_id,
                         "rating_user_id", (json_int_t) c->rating_user_id,
                         "scopes", (json_int_t) c->scopes,
                         "apikey", (int) c->apikey));
}


/* ---- the caller's id in the rating user space ---- */

typedef struct {
    ngx_http_cinematch_caller_next_pt   next;
    char                                user_id[NGX_INT64_LEN + 1];
    const char                         *values[1];
} ngx_http_cinematch_rating_id_t;


/*
 * Per worker, the answers of that lookup, for a short while: a user's
 * rating id never changes (a sequence default, never updated), so only
 * "still active" can go stale, and it does for at most this long, the
 * same as the access token that carries the caller to every other
 * endpoint without a lookup.  Direct-mapped; a collision just looks up.
 */

#define NGX_HTTP_CINEMATCH_RATING_ID_CACHE  4096
#define NGX_HTTP_CINEMATCH_RATING_ID_TTL    30000   /* ms */

typedef struct {
    int64_t      user_id;
    int64_t      rating_user_id;
    ngx_msec_t   expires;
} ngx_http_cinematch_rating_id_entry_t;

static ngx_http_cinematch_rating_id_entry_t
    ngx_http_cinematch_rating_ids[NGX_HTTP_CINEMATCH_RATING_ID_CACHE];


static ngx_int_t
ngx_http_cinematch_caller_rating_id_done(ngx_http_request_t *r, void *data,
    PGresult *res, const char *err)
{
    ngx_http_cinematch_rating_id_t *q = data;

    int64_t                                rid;
    ngx_http_cinematch_caller_t           *c;
    ngx_http_cinematch_rating_id_entry_t  *e;

    if (err != NULL) {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_SERVICE_UNAVAILABLE,
                                             "unavailable",
                                             "database unavailable");
    }

    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        ngx_log_error(NGX_LOG_ERR, r->connection->log, 0,
                      "cinematch: rating_user_id lookup failed: %s",
                      PQresultErrorMessage(res));
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (PQntuples(res) != 1
        || ngx_http_cinematch_int64(PQgetvalue(res, 0, 0),
                                    PQgetlength(res, 0, 0), &rid)
           != NGX_OK
        || rid == 0)
    {
        return ngx_http_cinematch_send_error(r, NGX_HTTP_UNAUTHORIZED,
                                             "unauthenticated",
                                             "the account is not active");
    }

    c = ngx_http_cinematch_caller(r);
    c->rating_user_id = rid;

    e = &ngx_http_cinematch_rating_ids[(uint64_t) c->user_id
                                       % NGX_HTTP_CINEMATCH_RATING_ID_CACHE];
    e->user_id = c->user_id;
    e->rating_user_id = rid;
    e->expires = ngx_current_msec + NGX_HTTP_CINEMATCH_RATING_ID_TTL;

    return q->next(r);
}


ngx_int_t
ngx_http_cinematch_caller_rating_id(ngx_http_request_t *r,
    ngx_http_cinematch_caller_next_pt next)
{
    u_char                                *p;
    ngx_http_cinematch_caller_t           *c;
    ngx_http_cinematch_rating_id_t        *q;
    ngx_http_cinematch_rating_id_entry_t  *e;

    c = ngx_http_cinematch_caller(r);

    if (c == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (c->rating_user_id != 0) {
        return next(r);
    }

    e = &ngx_http_cinematch_rating_ids[(uint64_t) c->user_id
                                       % NGX_HTTP_CINEMATCH_RATING_ID_CACHE];

    if (e->user_id == c->user_id && e->rating_user_id != 0
        && (ngx_msec_int_t) (e->expires - ngx_current_msec) > 0)
    {
        c->rating_user_id = e->rating_user_id;
        return next(r);
    }

    q = ngx_pcalloc(r->pool, sizeof(ngx_http_cinematch_rating_id_t));
    if (q == NULL) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    q->next = next;
    p = ngx_sprintf((u_char *) q->user_id, "%L", c->user_id);
    *p = '\0';
    q->values[0] = q->user_id;

    switch (ngx_http_cinematch_pg_query(r,
                "SELECT rating_user_id FROM users"
                " WHERE id = $1::bigint AND disabled_at IS NULL",
                1, q->values, ngx_http_cinematch_caller_rating_id_done, q))
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


/*
 * CORS, off unless a location says "cinematch_cors <origin> ...;" (or "*").
 * Credentials travel in Authorization / X-API-Key, never in cookies, so
 * Access-Control-Allow-Credentials is never sent.  Answers made before a
 * route is found (404, 405, a malformed body) carry no CORS headers.
 */

char *
ngx_http_cinematch_cors(ngx_conf_t *cf, ngx_command_t *cmd, void *conf)
{
    ngx_http_cinematch_auth_loc_conf_t *alcf = conf;

    ngx_str_t   *value, *origin;
    ngx_uint_t   i;

    if (alcf->cors != NGX_CONF_UNSET_PTR) {
        return "is duplicate";
    }

    value = cf->args->elts;

    if (cf->args->nelts == 2 && ngx_strcmp(value[1].data, "off") == 0) {
        alcf->cors = NULL;
        return NGX_CONF_OK;
    }

    alcf->cors = ngx_array_create(cf->pool, cf->args->nelts - 1,
                                  sizeof(ngx_str_t));
    if (alcf->cors == NULL) {
        return NGX_CONF_ERROR;
    }

    for (i = 1; i < cf->args->nelts; i++) {

        if (!(value[i].len == 1 && value[i].data[0] == '*')
            && ngx_strncmp(value[i].data, "https://", 8) != 0
            && ngx_strncmp(value[i].data, "http://", 7) != 0)
        {
            ngx_conf_log_error(NGX_LOG_EMERG, cf, 0,
                               "cinematch_cors: \"%V\" is not an origin "
                               "(scheme://host[:port]) or \"*\"",
                               &value[i]);
            return NGX_CONF_ERROR;
        }

        origin = ngx_array_push(alcf->cors);
        if (origin == NULL) {
            return NGX_CONF_ERROR;
        }

        *origin = value[i];
    }

    return NGX_CONF_OK;
}


/* NGX_OK: headers added; NGX_DECLINED: no Origin, or not allowed */

static ngx_int_t
ngx_http_cinematch_cors_headers(ngx_http_request_t *r,
    ngx_http_cinematch_auth_loc_conf_t *alcf, ngx_uint_t allow)
{
    u_char           *p;
    ngx_str_t         key, value, *o;
    ngx_uint_t        i, any, ok;
    ngx_table_elt_t  *origin;

    static ngx_str_t  methods[] = {
        ngx_string("GET"), ngx_string("HEAD"), ngx_string("POST"),
        ngx_string("PUT"), ngx_string("PATCH"), ngx_string("DELETE")
    };
    static ngx_uint_t  bits[] = {
        NGX_HTTP_GET, NGX_HTTP_HEAD, NGX_HTTP_POST, NGX_HTTP_PUT,
        NGX_HTTP_PATCH, NGX_HTTP_DELETE
    };

    origin = NULL;

    {
        ngx_list_part_t  *part;
        ngx_table_elt_t  *h;

        part = &r->headers_in.headers.part;
        h = part->elts;

        for (i = 0; /* void */ ; i++) {
            if (i >= part->nelts) {
                if (part->next == NULL) {
                    break;
                }

                part = part->next;
                h = part->elts;
                i = 0;
            }

            if (h[i].key.len == 6
                && ngx_strncasecmp(h[i].key.data, (u_char *) "Origin", 6)
                   == 0)
            {
                origin = &h[i];
                break;
            }
        }
    }

    if (origin == NULL || alcf->cors == NULL) {
        return NGX_DECLINED;
    }

    any = 0;
    ok = 0;
    o = alcf->cors->elts;

    for (i = 0; i < alcf->cors->nelts; i++) {
        if (o[i].len == 1 && o[i].data[0] == '*') {
            any = 1;
            break;
        }

        if (o[i].len == origin->value.len
            && ngx_strncasecmp(o[i].data, origin->value.data, o[i].len) == 0)
        {
            ok = 1;
            break;
        }
    }

    if (!any && !ok) {
        return NGX_DECLINED;
    }

    ngx_str_set(&key, "Access-Control-Allow-Origin");

    if (any) {
        ngx_str_set(&value, "*");

    } else {
        value = origin->value;
    }

    if (ngx_http_cinematch_add_header(r, &key, &value) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_str_set(&key, "Vary");
    ngx_str_set(&value, "Origin");

    if (ngx_http_cinematch_add_header(r, &key, &value) != NGX_OK) {
        return NGX_ERROR;
    }

    if (!allow) {
        ngx_str_set(&key, "Access-Control-Expose-Headers");
        ngx_str_set(&value, "X-Request-ID, X-RateLimit-Limit, "
                    "X-RateLimit-Remaining, X-RateLimit-Reset, Retry-After");

        return ngx_http_cinematch_add_header(r, &key, &value);
    }

    /* a preflight: what the path allows */

    if (allow & NGX_HTTP_GET) {
        allow |= NGX_HTTP_HEAD;
    }

    p = ngx_pnalloc(r->pool, sizeof("GET, HEAD, POST, PUT, PATCH, DELETE"));
    if (p == NULL) {
        return NGX_ERROR;
    }

    value.data = p;

    for (i = 0; i < sizeof(bits) / sizeof(bits[0]); i++) {
        if (allow & bits[i]) {
            if (p != value.data) {
                *p++ = ','; *p++ = ' ';
            }

            p = ngx_cpymem(p, methods[i].data, methods[i].len);
        }
    }

    value.len = p - value.data;
    ngx_str_set(&key, "Access-Control-Allow-Methods");

    if (ngx_http_cinematch_add_header(r, &key, &value) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_str_set(&key, "Access-Control-Allow-Headers");
    ngx_str_set(&value, "Authorization, Content-Type, X-API-Key, "
                "X-Request-ID");

    if (ngx_http_cinematch_add_header(r, &key, &value) != NGX_OK) {
        return NGX_ERROR;
    }

    ngx_str_set(&key, "Access-Control-Max-Age");
    ngx_str_set(&value, "600");

    return ngx_http_cinematch_add_header(r, &key, &value);
}


/* OPTIONS on a known path: 204 with the CORS answer, or NGX_DECLINED (the
 * router's 405) when CORS is off or the origin is not allowed */

ngx_int_t
ngx_http_cinematch_cors_preflight(ngx_http_request_t *r, ngx_uint_t allow)
{
    ngx_int_t                            rc;
    ngx_http_cinematch_auth_loc_conf_t  *alcf;

    static ngx_str_t  type = ngx_string("application/json");

    alcf = ngx_http_get_module_loc_conf(r, ngx_http_cinematch_auth_module);

    rc = ngx_http_cinematch_cors_headers(r, alcf, allow);

    if (rc == NGX_ERROR) {
        return NGX_HTTP_INTERNAL_SERVER_ERROR;
    }

    if (rc == NGX_DECLINED) {
        return NGX_DECLINED;
    }

    return ngx_http_cinematch_send_buf(r, NGX_HTTP_NO_CONTENT, &type,
                                       NULL, 0);
}

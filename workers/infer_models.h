/*
 * infer_models.h: the models `cinematch infer` serves and where they come
 * from: the registry in PostgreSQL (production version of "recsys", the
 * movies catalogue, and the app ratings folded in at load), or files given
 * on the command line.  A reload loads beside the running model and swaps
 * only on success: a corrupt or missing artifact leaves the old one
 * serving and the reason in the segment's status.
 *
 * Canary (sql/015): a recsys version in stage 'canary' is loaded beside
 * production and answers the users that cinematch/canary.h routes to it
 * (canary_bp basis points); everyone else, and every request without a
 * user, gets production.  No canary in the registry: 100% production.
 */
#ifndef CINEMATCH_INFER_MODELS_H
#define CINEMATCH_INFER_MODELS_H

#include <libpq-fe.h>

#include "cinematch/ipc.h"
#include "cinematch/serve_dialog.h"
#include "cinematch/serve_recsys.h"

#define CM_INFER_NOTIFY_CHANNEL  "cinematch_models"

typedef struct {
    const char       *dsn;            /* registry; NULL: files only */
    const char       *artifact;       /* --recsys FILE */
    const char       *movies;         /* --movies FILE (movies.csv) */
    const char       *version;        /* --recsys-version, default "file" */
    const char       *dialog;         /* --dialog DIR */
    const char       *dialog_version;
    int               max_seqs;       /* concurrent generations */
    int               decode_threads; /* threads per decode step (1) */
    int               decode_bf16;    /* 1: bf16 decode weights */
    int               decode_kv_bf16; /* 1: bf16 KV caches */
    cm_rs_server_t   *rs;             /* serving now, or NULL */
    cm_dlg_server_t  *dlg;            /* serving now, or NULL */
    char              dlg_sha256[72];
    char              rs_sha256[72];
    cm_rs_server_t   *canary;         /* recsys canary beside rs, or NULL */
    char              canary_sha256[72];
    uint32_t          canary_bp;      /* its share of users, basis points */
    PGconn           *listen;         /* LISTEN connection, or NULL */
    char              status[128];
} cm_infer_models_t;

/* 1 when some model source is configured. */
int cm_infer_models_configured(const cm_infer_models_t *mm);
/* (Re)load; on failure the serving model stays and status says why.
 * The dialog model is only swapped when no generation is running
 * (*dialog_busy == 0); otherwise it is loaded on a later reload. */
int cm_infer_models_load(cm_infer_models_t *mm, int dialog_busy);
/* (Re)load the recsys model only (`cinematch batch` predicts with it). */
int cm_infer_models_load_recsys(cm_infer_models_t *mm);
/* The recsys model that answers user: the canary for the users of its
 * share, else production (NULL when none is loaded). */
cm_rs_server_t *cm_infer_models_recsys_for(const cm_infer_models_t *mm,
    int64_t user);
/* The table published in the segment header. */
uint32_t cm_infer_models_table(const cm_infer_models_t *mm,
    cm_ipc_model_t *out, uint32_t cap);
/* LISTEN socket to poll, or -1; consume returns 1 when a reload is due. */
int cm_infer_models_listen_fd(cm_infer_models_t *mm);
int cm_infer_models_consume(cm_infer_models_t *mm);
void cm_infer_models_free(cm_infer_models_t *mm);

#endif /* CINEMATCH_INFER_MODELS_H */

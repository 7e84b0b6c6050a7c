#!/usr/bin/env bash
# conf/stack.sh: the local cinematch stack, as background processes under one
# directory (./var, or $CINEMATCH_VAR).  `./build.sh run|stop|status` call it.
#
#   conf/stack.sh start    PostgreSQL, Redis, cinematch migrate, cinematch infer,
#                          cinematch mailer, nginx (+ the module); returns once
#                          /ready is 200
#   conf/stack.sh stop     stops what start started, by pid file, nothing else
#   conf/stack.sh status   one line per component
#
# Environment (defaults in brackets):
#   CINEMATCH_VAR [./var]            everything the stack writes
#   CINEMATCH_HTTP_PORT [8080]       CINEMATCH_HTTPS_PORT [8443]
#   CINEMATCH_PG_PORT [55432]        CINEMATCH_REDIS_PORT [56379]
#   CINEMATCH_LISTEN [127.0.0.1]     nginx listen address (0.0.0.0 to expose)
#   CINEMATCH_USER [cinematch]       when run as root, the unprivileged account
#                                    the servers run as (created if missing)
#   CINEMATCH_READY_TIMEOUT [60]     seconds to wait for /ready
#   CINEMATCH_DATA [../shared/data/ml-latest-small]  MovieLens directory to
#                                    serve; when absent, `cinematch synth` data
#   CINEMATCH_DIALOG_CORPUS          dialogue corpus for chat (default: the
#                                    Cornell files in $CINEMATCH_DATA, its
#                                    cornell/ or ../cornell, ../shared/data/cornell);
#                                    ingested and trained in the background
#   CINEMATCH_DIALOG_STEPS [600]     dialog-tiny steps (the first model)
#   CINEMATCH_DIALOG_CONFIG [dialog-tiny]  the first model's config
#   CINEMATCH_DIALOG_ARGS            more `train dialog --from-db` options for
#                                    the first model (e.g. "--lr 1e-7 --batch 1")
#   CINEMATCH_DIALOG_MINUTES [10]    then dialog-small minutes (0: skip)
#   CINEMATCH_ANSWER_CACHE           `cinematch infer --answer-cache N` (0: off;
#                                    unset: the daemon's default)
#   CINEMATCH_BIN [build/cinematch]  PG_BIN [/usr/lib/postgresql/15/bin]
#   CINEMATCH_SMTP_URL               when set, `cinematch mailer` sends the
#                                    verification/reset mail over SMTP (also
#                                    CINEMATCH_SMTP_TLS, CINEMATCH_MAIL_FROM,
#                                    CINEMATCH_SMTP_CREDENTIALS_FILE; see
#                                    `cinematch mailer --help`); unset: each
#                                    mail is an .eml file in var/mail/
#   CINEMATCH_PUBLIC_URL [http://<listen>:<http port>]  where mail links point
#
# Ports in use by something else are reported, never taken over.  The ports a
# running stack uses are remembered in var/stack.env, so stop/status/a second
# start need no environment.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VAR=${CINEMATCH_VAR:-$ROOT/var}
mkdir -p "$VAR"
VAR=$(cd "$VAR" && pwd)
BIN=${CINEMATCH_BIN:-$ROOT/build/cinematch}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
MODULE_SO=${CINEMATCH_MODULE_SO:-$ROOT/build/ngx_http_cinematch_module.so}
NGINX=${NGINX:-/usr/sbin/nginx}
SVC_USER=${CINEMATCH_USER:-cinematch}
READY_TIMEOUT=${CINEMATCH_READY_TIMEOUT:-60}

RUN=$VAR/run
LOG=$VAR/log
PGDATA_DIR=$VAR/pg/data
STACK_ENV=$VAR/stack.env

HTTP_PORT=${CINEMATCH_HTTP_PORT:-8080}
HTTPS_PORT=${CINEMATCH_HTTPS_PORT:-8443}
PG_PORT=${CINEMATCH_PG_PORT:-55432}
REDIS_PORT=${CINEMATCH_REDIS_PORT:-56379}
LISTEN=${CINEMATCH_LISTEN:-127.0.0.1}
# Named shm segments are machine-wide: make ours unique per var directory so
# two stacks (two checkouts) never share one.
INFER_SHM=/cinematch-$(printf '%s' "$VAR" | cksum | cut -d' ' -f1)-infer-0
INFER_SOCKET=$RUN/infer-0.sock

say()  { printf '%s\n' "$*"; }
step() { printf '\033[1m--> %s\033[0m\n' "$*"; }
warn() { printf '\033[33mstack: %s\033[0m\n' "$*" >&2; }
die()  { printf '\033[31mstack: %s\033[0m\n' "$*" >&2; exit 1; }

# ---- privileges --------------------------------------------------------------
# PostgreSQL refuses to run as root, and the servers have no business being
# root anyway: as root, every server runs as $SVC_USER (a system account) and
# owns $VAR.  As anyone else, everything runs as that user.

IS_ROOT=0
[ "$(id -u)" -eq 0 ] && IS_ROOT=1

ensure_svc_user() {
    [ $IS_ROOT = 1 ] || return 0
    if ! id -u "$SVC_USER" >/dev/null 2>&1; then
        step "creating system user $SVC_USER (runs the servers)"
        local group=--user-group
        # a package (or an earlier install) may have made the group already
        getent group "$SVC_USER" >/dev/null && group="--gid=$SVC_USER"
        useradd --system "$group" --home-dir /nonexistent --no-create-home \
            --shell /usr/sbin/nologin "$SVC_USER"
    fi
}

# Run a command as the service user.  setpriv execs (no extra process), so
# "${AS_SVC[@]}" cmd & leaves the command's own pid in $!.
AS_SVC=()
[ $IS_ROOT = 1 ] && AS_SVC=(setpriv "--reuid=$SVC_USER" "--regid=$SVC_USER" --clear-groups --)
as_svc() { "${AS_SVC[@]}" "$@"; }

own_var() {
    [ $IS_ROOT = 1 ] || return 0
    chown -R "$SVC_USER:$SVC_USER" "$VAR"
    as_svc test -w "$VAR" -a -x "$VAR" \
        || die "$SVC_USER cannot reach $VAR (a parent directory is not" \
               "world-searchable?); set CINEMATCH_VAR to a directory it can use"
    as_svc test -r "$BIN" || die "$SVC_USER cannot read $BIN"
}

# ---- pid files ---------------------------------------------------------------

# alive PID: the process exists and is not a zombie.  (A daemon whose
# parent is gone is reaped by PID 1; where PID 1 does not reap, as in some
# containers, a finished daemon stays a zombie and must count as stopped.)
alive() {
    local st
    [ -r "/proc/$1/stat" ] || return 1
    st=$(sed 's/^.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1)
    [ -n "$st" ] && [ "$st" != Z ] && [ "$st" != X ]
}

# pid_of FILE COMM: the pid in FILE when that process is alive and its
# command name is COMM (a recycled pid is someone else's process).
pid_of() {
    local file=$1 comm=$2 pid
    [ -f "$file" ] || return 1
    pid=$(head -n1 "$file" 2>/dev/null | tr -dc '0-9')
    [ -n "$pid" ] || return 1
    alive "$pid" || return 1
    [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ] || return 1
    printf '%s\n' "$pid"
}

# stop_pid NAME FILE COMM SIGNAL: signal, wait up to 15 s, then SIGKILL.
stop_pid() {
    local name=$1 file=$2 comm=$3 sig=$4 pid _
    if ! pid=$(pid_of "$file" "$comm"); then
        if [ -f "$file" ]; then
            rm -f "$file"
            say "$name: not running (removed stale $file)"
        else
            say "$name: not running"
        fi
        return 0
    fi
    kill "-$sig" "$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do
        alive "$pid" || break
        sleep 0.1
    done
    if alive "$pid"; then
        warn "$name (pid $pid) ignored SIG$sig for 15 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        sleep 0.2
    fi
    rm -f "$file"
    say "$name: stopped (pid $pid)"
}

port_busy() {
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

need_port() {
    port_busy "$1" && die "port $1 ($2) is already in use by another process;" \
        "set $3 to a free port"
    return 0
}

wait_for() {   # wait_for SECONDS CMD...: poll every 0.1 s
    local n=$(( $1 * 10 )); shift
    while [ "$n" -gt 0 ]; do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.1; n=$((n - 1))
    done
    return 1
}

# ---- PostgreSQL ----------------------------------------------------------------

pg_pid() { pid_of "$PGDATA_DIR/postmaster.pid" postgres; }
pg_dsn() { cat "$VAR/secrets/pg_dsn"; }

pg_start() {
    local pw
    if pg_pid >/dev/null; then
        say "postgres: already running (pid $(pg_pid), port $PG_PORT)"; return 0
    fi
    [ -x "$PG_BIN/initdb" ] || die "PostgreSQL 15 not found in $PG_BIN (./build.sh deps)"
    need_port "$PG_PORT" postgres CINEMATCH_PG_PORT

    if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
        step "postgres: initdb $PGDATA_DIR (first run)"
        rm -rf "$PGDATA_DIR"
        mkdir -p "$PGDATA_DIR" "$VAR/secrets"
        chmod 700 "$PGDATA_DIR" "$VAR/secrets"
        # A random password: even on loopback, other local users must not
        # get in without it.
        pw=$(openssl rand -hex 18)
        (umask 077; printf '%s\n' "$pw" >"$VAR/secrets/pg_password")
        own_var
        as_svc "$PG_BIN/initdb" -D "$PGDATA_DIR" -U cinematch \
            --pwfile="$VAR/secrets/pg_password" --auth=scram-sha-256 \
            --encoding=UTF8 --locale=C.UTF-8 >"$LOG/initdb.log" 2>&1 \
            || { tail -20 "$LOG/initdb.log"; die "initdb failed (log: $LOG/initdb.log)"; }
        printf "\ninclude_if_exists = 'cinematch.conf'\n" >>"$PGDATA_DIR/postgresql.conf"
    fi
    pw=$(cat "$VAR/secrets/pg_password")
    (umask 077; printf 'host=127.0.0.1 port=%s dbname=cinematch user=cinematch password=%s\n' \
        "$PG_PORT" "$pw" >"$VAR/secrets/pg_dsn")

    # Rewritten on every start, so changing CINEMATCH_PG_PORT just works.
    cat >"$PGDATA_DIR/cinematch.conf" <<EOF
# written by conf/stack.sh on every start
port = $PG_PORT
listen_addresses = '127.0.0.1'
unix_socket_directories = '$RUN/pg'
max_connections = 100
shared_buffers = 128MB
log_min_duration_statement = 1000
log_line_prefix = '%m [%p] %q%u@%d '
EOF
    mkdir -p "$RUN/pg"
    own_var
    step "postgres: starting on 127.0.0.1:$PG_PORT"
    as_svc "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -l "$LOG/postgresql.log" -w -t 60 start \
        >/dev/null 2>&1 \
        || { tail -20 "$LOG/postgresql.log"; die "postgres did not start (log: $LOG/postgresql.log)"; }

    if [ "$(PGPASSWORD=$pw "$PG_BIN/psql" -X -At -h 127.0.0.1 -p "$PG_PORT" -U cinematch \
            -d postgres -c "SELECT 1 FROM pg_database WHERE datname = 'cinematch'")" != 1 ]; then
        PGPASSWORD=$pw "$PG_BIN/createdb" -h 127.0.0.1 -p "$PG_PORT" -U cinematch cinematch \
            || die "createdb cinematch failed"
    fi
}

# Two roles, as in production: `cinematch` owns the schema and runs the
# migrations; `cinematch_app` (what nginx connects as) may only read and
# write rows.  Default privileges give it every table the owner creates
# later; the GRANT ... ON ALL covers a database made before this existed.
# Idempotent, run on every start after the migrations.
pg_app_role() {
    local apw
    if [ ! -s "$VAR/secrets/pg_app_password" ]; then
        (umask 077; openssl rand -hex 18 >"$VAR/secrets/pg_app_password")
    fi
    apw=$(cat "$VAR/secrets/pg_app_password")
    (umask 077; printf 'host=127.0.0.1 port=%s dbname=cinematch user=cinematch_app password=%s\n' \
        "$PG_PORT" "$apw" >"$VAR/secrets/pg_app_dsn")
    PGPASSWORD=$(cat "$VAR/secrets/pg_password") "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 \
        -h 127.0.0.1 -p "$PG_PORT" -U cinematch -d cinematch -v apw="$apw" \
        >>"$LOG/initdb.log" 2>&1 <<'SQL' || die "creating role cinematch_app failed (log: $LOG/initdb.log)"
SELECT format('CREATE ROLE cinematch_app LOGIN PASSWORD %L', :'apw')
    WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'cinematch_app') \gexec
SELECT format('ALTER ROLE cinematch_app PASSWORD %L', :'apw') \gexec
GRANT CONNECT ON DATABASE cinematch TO cinematch_app;
GRANT USAGE ON SCHEMA public TO cinematch_app;
ALTER DEFAULT PRIVILEGES FOR ROLE cinematch IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO cinematch_app;
ALTER DEFAULT PRIVILEGES FOR ROLE cinematch IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO cinematch_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO cinematch_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO cinematch_app;
-- the history is the migrator's: the app may read the schema version only
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON schema_migrations FROM cinematch_app;
SQL
}

pg_stop() {
    local pid
    if ! pid=$(pg_pid); then
        say "postgres: not running"; return 0
    fi
    as_svc "$PG_BIN/pg_ctl" -D "$PGDATA_DIR" -m fast -w -t 60 stop >/dev/null 2>&1 \
        || { warn "pg_ctl stop failed; SIGQUIT to $pid"; kill -QUIT "$pid" 2>/dev/null || true; }
    # pg_ctl returns once postmaster.pid is gone; the process exits just after
    wait_for 10 eval "! alive $pid" \
        || warn "postgres (pid $pid) is still exiting"
    say "postgres: stopped (pid $pid)"
}

# ---- Redis ---------------------------------------------------------------------

redis_pid() { pid_of "$RUN/redis.pid" redis-server; }

redis_start() {
    if redis_pid >/dev/null; then
        say "redis: already running (pid $(redis_pid), port $REDIS_PORT)"; return 0
    fi
    command -v redis-server >/dev/null || die "redis-server not installed (./build.sh deps)"
    need_port "$REDIS_PORT" redis CINEMATCH_REDIS_PORT
    rm -f "$RUN/redis.pid"
    mkdir -p "$VAR/redis"
    own_var
    step "redis: starting on 127.0.0.1:$REDIS_PORT"
    # Redis holds only what may be lost (DESIGN.md 4): no persistence.
    as_svc redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --daemonize yes \
        --pidfile "$RUN/redis.pid" --logfile "$LOG/redis.log" --dir "$VAR/redis" \
        --save '' --appendonly no \
        || die "redis-server failed (log: $LOG/redis.log)"
    wait_for 10 redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping \
        || { tail -20 "$LOG/redis.log"; die "redis did not answer PING (log: $LOG/redis.log)"; }
    wait_for 5 redis_pid || die "redis wrote no pid file $RUN/redis.pid"
}

redis_stop() { stop_pid redis "$RUN/redis.pid" redis-server TERM; }

# ---- migrations and data -------------------------------------------------------

migrate() {
    step "migrate: applying sql/ to the cinematch database"
    "$BIN" migrate --dsn "$(pg_dsn)" --dir "$ROOT/sql" >>"$LOG/migrate.log" 2>&1 \
        || { tail -20 "$LOG/migrate.log"; die "cinematch migrate failed (log: $LOG/migrate.log)"; }
    tail -n1 "$LOG/migrate.log"
    # what the daily timer does in production: a stack that lives for
    # months keeps getting its request_logs partitions
    "$BIN" maintain --dsn "$(pg_dsn)" >>"$LOG/maintain.log" 2>&1 \
        || warn "cinematch maintain failed (log: $LOG/maintain.log); continuing"
}

# Hook: the data the stack serves.  The real MovieLens ml-latest-small is used
# when ../shared/data has it (its licence forbids shipping it); otherwise
# `cinematch synth` (the synthetic-data issue) generates a MovieLens-shaped
# set into var/data/synth, so the stack runs offline end to end.  Loading it
# into PostgreSQL (`cinematch ingest`) and training the first models belong
# to their issues and will be called from here.
seed_data() {
    local real=${CINEMATCH_DATA:-$ROOT/../shared/data/ml-latest-small}
    if [ -f "$real/ratings.csv" ]; then
        DATA_DIR=$(cd "$real" && pwd)
        say "data: MovieLens ml-latest-small at $DATA_DIR"
    elif "$BIN" synth --help >/dev/null 2>&1; then
        DATA_DIR=$VAR/data/synth
        if [ ! -f "$DATA_DIR/ratings.csv" ]; then
            step "data: no MovieLens at hand, generating a synthetic set (cinematch synth)"
            mkdir -p "$DATA_DIR"
            # four drifting weekly batches feed the ingest -> drift -> retrain loop
            "$BIN" synth --out "$DATA_DIR" --drift-batches 4 >>"$LOG/synth.log" 2>&1 \
                || { warn "cinematch synth failed (log: $LOG/synth.log): no data"; DATA_DIR=""; }
        else
            say "data: synthetic set at $DATA_DIR"
        fi
    else
        DATA_DIR=""
        say "data: skipped (no $real and no 'cinematch synth' subcommand yet)"
    fi
}

# A demo account with a few ratings, so a newcomer can log in and get
# personal recommendations at once: its ratings are app ratings (as PUT
# /api/v1/ratings stores them), which the daemon folds in when it loads.
# Made once; the credentials stay in $VAR/secrets/demo_user.
DEMO_EMAIL=demo@cinematch.local

demo_user() {
    local pw rid sql
    [ -f "$VAR/secrets/demo_user" ] && return 0
    "$BIN" user create --help >/dev/null 2>&1 || return 0
    pw=$(head -c 12 /dev/urandom | base64 | tr -d '/+=')
    if ! printf '%s' "$pw" | "$BIN" user create --email "$DEMO_EMAIL" \
            --password-stdin --display-name "Demo" --dsn "$(pg_dsn)" \
            >>"$LOG/demo-user.log" 2>&1; then
        warn "demo user not created (log: $LOG/demo-user.log)"
        return 0
    fi
    rid=$(as_svc "$PG_BIN/psql" "$(pg_dsn)" -tAc "SELECT rating_user_id FROM users
            WHERE email = '$DEMO_EMAIL'" 2>>"$LOG/demo-user.log")
    # the most rated films: loves the top three, dislikes two others
    sql="WITH top AS (SELECT movie_id, row_number() OVER (ORDER BY count(*) DESC,
             movie_id) AS n FROM ratings GROUP BY movie_id ORDER BY 2 LIMIT 8),
         r AS (SELECT $rid AS user_id, movie_id, (CASE n WHEN 1 THEN 5 WHEN 2
             THEN 5 WHEN 3 THEN 4.5 WHEN 7 THEN 1.5 ELSE 1 END)::numeric AS rating
             FROM top WHERE n IN (1, 2, 3, 7, 8)),
         b AS (INSERT INTO ratings_buffer (user_id, movie_id, rating, ts, source)
             SELECT user_id, movie_id, rating, now(), 'app' FROM r)
         INSERT INTO ratings (user_id, movie_id, rating, ts, source)
             SELECT user_id, movie_id, rating, now(), 'app' FROM r
             ON CONFLICT (user_id, movie_id) DO NOTHING"
    if [ -n "$rid" ] && as_svc "$PG_BIN/psql" "$(pg_dsn)" -v ON_ERROR_STOP=1 -qc "$sql" \
            >>"$LOG/demo-user.log" 2>&1; then
        (umask 077; printf '%s %s\n' "$DEMO_EMAIL" "$pw" >"$VAR/secrets/demo_user")
        step "demo user: $DEMO_EMAIL with 5 ratings"
    else
        warn "demo user's ratings not stored (log: $LOG/demo-user.log)"
    fi
}

# ---- cinematch infer -------------------------------------------------------------

infer_pid() { pid_of "$RUN/infer-0.pid" cinematch; }

infer_start() {
    local pid
    INFER=0
    if infer_pid >/dev/null; then
        say "infer: already running (pid $(infer_pid))"; INFER=1; return 0
    fi
    if ! "$BIN" infer --help >/dev/null 2>&1; then
        say "infer: skipped ('cinematch infer' is not built yet)"
        return 0
    fi
    rm -f "$RUN/infer-0.pid" "$INFER_SOCKET"
    # The MLOps loop's first turn: the stack's data goes into PostgreSQL
    # (cinematch ingest; a re-run is a no-op, by file sha256), and when the
    # registry has no production recommender yet, one is trained from the
    # database and promoted (the first model always passes the gate).  The
    # daemon then serves the registry's production versions (--dsn) and
    # reloads on promotion (NOTIFY).
    local model=()
    if [ -n "${DATA_DIR:-}" ] && "$BIN" ingest --help >/dev/null 2>&1; then
        step "data: loading $DATA_DIR into PostgreSQL (cinematch ingest)"
        "$BIN" ingest --data "$DATA_DIR" --target ratings --split temporal-user:0.2 \
            --dsn "$(pg_dsn)" >>"$LOG/ingest.log" 2>&1 \
            || warn "ingest failed (log: $LOG/ingest.log)"
        if [ "$(as_svc "$PG_BIN/psql" "$(pg_dsn)" -tAc "SELECT count(*) FROM model_versions
                WHERE model_name = 'recsys' AND stage = 'production'" 2>/dev/null)" = 0 ]; then
            step "model: training a first recommender from the database"
            CINEMATCH_MODEL_STORE=$VAR/lib/cinematch/models \
                "$BIN" train recsys --from-db --promote-if-better --threads 2 \
                --dsn "$(pg_dsn)" >>"$LOG/train.log" 2>&1 \
                || warn "training failed (log: $LOG/train.log)"
        fi
        model=(--dsn "$(cat "$VAR/secrets/pg_app_dsn")")
    fi
    # Chat: the daemon serves the registry's production dialog model too
    # (--dsn) and reloads when one is promoted (NOTIFY).  dialog_train_start
    # (after /ready) makes one from a dialogue corpus in the background;
    # until then chat answers 503 saying how to add a corpus.
    if [ ${#model[@]} -eq 0 ] && [ -s "$VAR/secrets/pg_app_dsn" ]; then
        model=(--dsn "$(cat "$VAR/secrets/pg_app_dsn")")
    fi
    [ -n "${DATA_DIR:-}" ] && demo_user
    own_var
    step "infer: starting daemon 0 (socket $INFER_SOCKET, shm $INFER_SHM)"
    # setsid: its own session, so a terminal hangup does not reach it.
    "${AS_SVC[@]}" setsid "$BIN" infer --id 0 --socket "$INFER_SOCKET" --shm "$INFER_SHM" \
        --pidfile "$RUN/infer-0.pid" "${model[@]}" \
        ${CINEMATCH_ANSWER_CACHE:+--answer-cache "$CINEMATCH_ANSWER_CACHE"} >>"$LOG/infer-0.log" 2>&1 </dev/null &
    pid=$!
    if ! wait_for 30 test -S "$INFER_SOCKET"; then
        kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null
        tail -20 "$LOG/infer-0.log"
        die "cinematch infer did not open $INFER_SOCKET (log: $LOG/infer-0.log)"
    fi
    # the daemon writes its pid file; keep ours if it does not (yet)
    wait_for 2 infer_pid || echo "$pid" >"$RUN/infer-0.pid"
    INFER=1
}

infer_stop() {
    stop_pid infer "$RUN/infer-0.pid" cinematch TERM
    rm -f "$INFER_SOCKET"
    # a daemon killed hard leaves its segment behind; it is ours by name
    rm -f "/dev/shm/${INFER_SHM#/}"
}

# ---- cinematch mailer --------------------------------------------------------------
# The auth layer's mail (email verification, password reset) from the outbox.
# With CINEMATCH_SMTP_URL: over SMTP.  Without: development mode, every mail
# an .eml file (0600) in var/mail/, so a newcomer still gets the links.  The
# DSN goes in the environment, not argv (argv is world-readable in /proc).

MAIL_DIR=$VAR/mail

mailer_pid() { pid_of "$RUN/mailer.pid" cinematch; }

mail_link_base() { printf '%s\n' "${CINEMATCH_PUBLIC_URL:-http://$(probe_host):$HTTP_PORT}"; }

mailer_start() {
    local pid args
    if mailer_pid >/dev/null; then
        say "mailer: already running (pid $(mailer_pid))"; return 0
    fi
    if ! "$BIN" mailer --help >/dev/null 2>&1; then
        say "mailer: skipped ('cinematch mailer' is not built)"; return 0
    fi
    args=(--loop --link-base "$(mail_link_base)"
          --from "${CINEMATCH_MAIL_FROM:-noreply@cinematch.localhost}")
    if [ -n "${CINEMATCH_SMTP_URL:-}" ]; then
        args+=(--smtp-url "$CINEMATCH_SMTP_URL")
        step "mailer: sending over SMTP ($CINEMATCH_SMTP_URL)"
    else
        mkdir -p "$MAIL_DIR"
        chmod 700 "$MAIL_DIR"
        args+=(--mail-dir "$MAIL_DIR")
        step "mailer: development mode, mail goes to $MAIL_DIR/*.eml"
    fi
    rm -f "$RUN/mailer.pid"
    own_var
    # setsid: its own session, so a terminal hangup does not reach it
    CINEMATCH_PG_DSN=$(cat "$VAR/secrets/pg_app_dsn") CINEMATCH_MAIL_DIR= \
        "${AS_SVC[@]}" setsid "$BIN" mailer "${args[@]}" >>"$LOG/mailer.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$RUN/mailer.pid"
    sleep 0.3
    if ! mailer_pid >/dev/null; then
        tail -5 "$LOG/mailer.log" >&2
        warn "cinematch mailer did not stay up (log: $LOG/mailer.log); mail stays queued"
        rm -f "$RUN/mailer.pid"
    fi
    return 0
}

mailer_stop() { stop_pid mailer "$RUN/mailer.pid" cinematch TERM; }

# ---- the dialog model: ingest a corpus, train in the background -------------------

# The dialogue corpus chat learns from: $CINEMATCH_DIALOG_CORPUS (a Cornell
# directory, a plain dialogue file or a .tsv of pairs), else the Cornell
# Movie-Dialogs files in $CINEMATCH_DATA itself, its cornell/ or a cornell/
# beside it, else ../shared/data/cornell (development).  Prints the path.
dialog_corpus() {
    local d cands=()
    if [ -n "${CINEMATCH_DIALOG_CORPUS:-}" ]; then
        [ -e "$CINEMATCH_DIALOG_CORPUS" ] || return 1
        printf '%s\n' "$CINEMATCH_DIALOG_CORPUS"; return 0
    fi
    [ -n "${CINEMATCH_DATA:-}" ] && cands+=("$CINEMATCH_DATA" "$CINEMATCH_DATA/cornell" \
                                           "$CINEMATCH_DATA/../cornell")
    cands+=("$ROOT/../shared/data/cornell")
    for d in "${cands[@]}"; do
        if [ -f "$d/movie_lines.txt" ] && [ -f "$d/movie_conversations.txt" ]; then
            (cd "$d" && pwd); return 0
        fi
    done
    return 1
}

dialog_train_pid() { pid_of "$RUN/train-dialog.pid" bash; }

# One background job (its own session and process group, pid file
# $RUN/train-dialog.pid), logging to $LOG/train-dialog.log:
#   1. cinematch ingest dialogs (the same corpus again is a no-op, by sha256);
#   2. cinematch train dialog --from-db --if-new-data with dialog-tiny: a
#      minute or two, promoted (the first model always passes the gate), so
#      chat works soon after the first start; nothing to do on later starts;
#   3. unless a dialog-small run succeeded before: dialog-small for
#      $CINEMATCH_DIALOG_MINUTES minutes, promoted only when the gate finds
#      it better on the same validation text (0 skips this stage).
# The daemon hears of each promotion by NOTIFY; /ready lists the running
# training with its progress.  `stop` ends the job (the run is marked failed,
# production untouched).  Start-up never waits for it.
dialog_train_start() {
    local corpus store=$VAR/lib/cinematch/models mins=${CINEMATCH_DIALOG_MINUTES:-10}
    local steps=${CINEMATCH_DIALOG_STEPS:-600}
    DIALOG=
    if ! "$BIN" train dialog --help >/dev/null 2>&1 || [ "${INFER:-0}" != 1 ]; then
        return 0
    fi
    if ! corpus=$(dialog_corpus); then
        DIALOG=none
        say "dialog: no dialogue corpus found: chat answers 503 until one is added" \
            "(put the Cornell Movie-Dialogs files in \$CINEMATCH_DATA/cornell and start again;" \
            "see docs/OPERATIONS.md)"
        return 0
    fi
    if dialog_train_pid >/dev/null; then
        say "dialog: training already running (pid $(dialog_train_pid))"; DIALOG=training
        return 0
    fi
    DIALOG=training
    step "dialog: ingesting $corpus and training in the background (log: $LOG/train-dialog.log)"
    # setsid: its own process group, which stop signals as a whole
    "${AS_SVC[@]}" setsid bash -c '
        echo $$ >"$1"
        bin=$2 corpus=$3 dsn=$4 psql=$5 mins=$6 steps=$8 config=$9 args=${10}
        export CINEMATCH_MODEL_STORE=$7
        echo "== $(date -u +%FT%TZ) ingest dialogs $corpus"
        "$bin" ingest dialogs --data "$corpus" --dsn "$dsn" || exit 1
        echo "== $(date -u +%FT%TZ) train $config (if the corpus is new)"
        # $args unquoted on purpose: a list of options
        # shellcheck disable=SC2086
        "$bin" train dialog --from-db --if-new-data --config "$config" --steps "$steps" \
            --minutes 2 $args --dsn "$dsn" || exit 1
        [ "$mins" = 0 ] && exit 0
        done=$("$psql" "$dsn" -tAc "SELECT count(*) FROM training_runs WHERE model_name = '"'dialog'"'
            AND status = '"'succeeded'"' AND params->>'"'config'"' = '"'dialog-small'"'")
        [ "$done" = 0 ] || exit 0
        echo "== $(date -u +%FT%TZ) train dialog-small for $mins minutes"
        # about 5 s a step on two busy cores: the cosine schedule (and its
        # warm-up, steps/20) must fit the minutes, which only cap it
        "$bin" train dialog --from-db --config dialog-small --steps $((mins * 12)) \
            --minutes "$mins" --val-every 60 --dsn "$dsn"
    ' train-dialog "$RUN/train-dialog.pid" "$BIN" "$corpus" "$(pg_dsn)" "$PG_BIN/psql" \
        "$mins" "$store" "$steps" "${CINEMATCH_DIALOG_CONFIG:-dialog-tiny}" \
        "${CINEMATCH_DIALOG_ARGS:-}" >>"$LOG/train-dialog.log" 2>&1 </dev/null &
}

dialog_train_stop() {
    local pid _
    if ! pid=$(dialog_train_pid); then
        rm -f "$RUN/train-dialog.pid"; return 0
    fi
    # the job's process group: the shell and the cinematch it runs; SIGTERM
    # marks a running training failed and leaves production as it was
    kill -TERM -- "-$pid" 2>/dev/null || true
    for _ in $(seq 1 150); do
        kill -0 -- "-$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -KILL -- "-$pid" 2>/dev/null || true
    rm -f "$RUN/train-dialog.pid"
    say "dialog training: stopped"
}

# ---- nginx -----------------------------------------------------------------------

nginx_pid() { pid_of "$RUN/nginx.pid" nginx; }

tls_cert() {
    [ -f "$VAR/tls/cert.pem" ] && [ -f "$VAR/tls/key.pem" ] && return 0
    step "tls: generating a self-signed certificate for localhost (first run)"
    mkdir -p "$VAR/tls"
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -days 825 -subj "/CN=localhost/O=cinematch dev" \
        -addext "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" \
        -keyout "$VAR/tls/key.pem" -out "$VAR/tls/cert.pem" >/dev/null 2>&1 \
        || die "openssl could not create the certificate"
    chmod 600 "$VAR/tls/key.pem"
}

# Render conf/nginx.dev.conf: keep "#@module " lines when the module exists,
# "#@nomodule " lines otherwise, "#@infer " lines when infer runs.
nginx_conf() {
    local out=$VAR/nginx/nginx.conf keep drop sedx=()
    if [ "$MODULE" = 1 ]; then keep=module; drop=nomodule; else keep=nomodule; drop=module; fi
    sedx+=(-e "/^[[:space:]]*#@$drop /d" -e "s/^\([[:space:]]*\)#@$keep /\1/")
    if [ "$MODULE" = 1 ] && [ "$INFER" = 1 ]; then
        sedx+=(-e "s/^\([[:space:]]*\)#@infer /\1/")
    else
        sedx+=(-e "/^[[:space:]]*#@infer /d")
    fi
    # '|' delimits: paths contain '/'; the DSN holds only [a-z0-9=. ] and hex
    sedx+=(-e "s|@VAR@|$VAR|g" -e "s|@MODULE_SO@|$MODULE_SO|g"
           -e "s|@HTTP_PORT@|$HTTP_PORT|g" -e "s|@HTTPS_PORT@|$HTTPS_PORT|g"
           -e "s|@REDIS_PORT@|$REDIS_PORT|g" -e "s|@LISTEN@|$LISTEN|g"
           -e "s|@WEB_ROOT@|$ROOT/web/dist|g"
           -e "s|@INFER_SOCKET@|$INFER_SOCKET|g" -e "s|@INFER_SHM@|$INFER_SHM|g"
           -e "s|@PG_CONNINFO@|$(cat "$VAR/secrets/pg_app_dsn")|g")
    mkdir -p "$VAR/nginx/tmp"
    (umask 077; sed "${sedx[@]}" "$ROOT/conf/nginx.dev.conf" >"$out")
    grep -v '^[[:space:]]*#' "$out" | grep -q '@[A-Z_]\+@' \
        && die "unsubstituted placeholder in $out"
    return 0
}

nginx_start() {
    MODULE=0
    if [ -f "$MODULE_SO" ]; then
        MODULE=1
    else
        warn "nginx: $MODULE_SO is missing: starting nginx without the module" \
             "(only /health answers; /ready is not available)"
    fi
    if nginx_pid >/dev/null; then
        say "nginx: already running (pid $(nginx_pid))"; return 0
    fi
    need_port "$HTTP_PORT" "nginx http" CINEMATCH_HTTP_PORT
    need_port "$HTTPS_PORT" "nginx https" CINEMATCH_HTTPS_PORT
    tls_cert
    # the module signs access tokens with this key (auth endpoints)
    if [ "$MODULE" = 1 ] && [ ! -s "$VAR/secrets/jwt.key" ]; then
        mkdir -p "$VAR/secrets"
        "$BIN" jwt-secret generate --out "$VAR/secrets/jwt.key" >/dev/null \
            || die "could not create $VAR/secrets/jwt.key"
    fi
    nginx_conf
    rm -f "$RUN/nginx.pid"
    own_var
    [ $IS_ROOT = 0 ] || [ $MODULE = 0 ] || as_svc test -r "$MODULE_SO" \
        || die "$SVC_USER cannot read $MODULE_SO"
    as_svc "$NGINX" -t -q -p "$VAR/nginx" -c "$VAR/nginx/nginx.conf" -e "$LOG/nginx-error.log" \
        >"$LOG/nginx-t.log" 2>&1 \
        || { cat "$LOG/nginx-t.log"; die "nginx rejected $VAR/nginx/nginx.conf"; }
    step "nginx: starting on http://$LISTEN:$HTTP_PORT and https://$LISTEN:$HTTPS_PORT"
    as_svc "$NGINX" -p "$VAR/nginx" -c "$VAR/nginx/nginx.conf" -e "$LOG/nginx-error.log" \
        || { tail -20 "$LOG/nginx-error.log"; die "nginx failed to start (log: $LOG/nginx-error.log)"; }
    wait_for 10 nginx_pid || die "nginx wrote no pid file (log: $LOG/nginx-error.log)"
}

nginx_stop() { stop_pid nginx "$RUN/nginx.pid" nginx QUIT; }

# ---- readiness -------------------------------------------------------------------

probe_host() {
    case $LISTEN in 0.0.0.0|127.0.0.1|'*') echo 127.0.0.1 ;; *) echo "$LISTEN" ;; esac
}

http_code() {   # http_code PATH -> status code (000 when no answer)
    curl -sk -o "$VAR/run/last-probe.body" -w '%{http_code}' --max-time 2 \
        "https://$(probe_host):$HTTPS_PORT$1" 2>/dev/null || true
}

wait_ready() {
    local path=/ready code=000 deadline
    [ "$MODULE" = 1 ] || path=/health
    deadline=$(( $(date +%s) + READY_TIMEOUT ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        code=$(http_code "$path")
        [ "$code" = 200 ] && { say "ready: GET $path -> 200"; return 0; }
        sleep 0.25
    done
    warn "GET https://$(probe_host):$HTTPS_PORT$path did not answer 200 within ${READY_TIMEOUT}s" \
         "(last: $code $(head -c 300 "$VAR/run/last-probe.body" 2>/dev/null))"
    warn "logs: $LOG/ (nginx-error.log, infer-0.log, postgresql.log, redis.log)"
    exit 1
}

# ---- commands ----------------------------------------------------------------------

save_env() {
    cat >"$STACK_ENV" <<EOF
# ports of the running stack (written by conf/stack.sh start)
HTTP_PORT=$HTTP_PORT
HTTPS_PORT=$HTTPS_PORT
PG_PORT=$PG_PORT
REDIS_PORT=$REDIS_PORT
LISTEN=$LISTEN
DATA_DIR=${DATA_DIR:-}
EOF
}

load_env() {
    # shellcheck disable=SC1090
    [ -f "$STACK_ENV" ] && . "$STACK_ENV"
    return 0
}

all_running() {
    pg_pid >/dev/null && redis_pid >/dev/null && nginx_pid >/dev/null \
        && { ! "$BIN" infer --help >/dev/null 2>&1 || infer_pid >/dev/null; } \
        && { ! "$BIN" mailer --help >/dev/null 2>&1 || mailer_pid >/dev/null; }
}

summary() {
    local host=localhost
    [ "$LISTEN" = 127.0.0.1 ] || [ "$LISTEN" = 0.0.0.0 ] || host=$LISTEN
    cat <<EOF

cinematch is up.
  API        https://$host:$HTTPS_PORT/   (self-signed: curl -k, or trust $VAR/tls/cert.pem)
             http://$host:$HTTP_PORT/
  health     https://$host:$HTTPS_PORT/health   ready: /ready   metrics: /metrics (from this host)
  postgres   $PG_BIN/psql "\$(cat $VAR/secrets/pg_dsn)"   (owner; nginx uses pg_app_dsn)
  redis      redis-cli -p $REDIS_PORT
  logs       $LOG/  (nginx-error.log nginx-access.log infer-0.log mailer.log postgresql.log redis.log migrate.log)
  stop       ./build.sh stop   (or conf/stack.sh stop)
EOF
    if [ -n "${CINEMATCH_SMTP_URL:-}" ]; then
        say "  mail       sent over SMTP ($CINEMATCH_SMTP_URL), links to $(mail_link_base)"
    else
        say "  mail       development mode: each verification/reset mail is a file in"
        say "             $MAIL_DIR/ (links to $(mail_link_base)); set CINEMATCH_SMTP_URL to send"
    fi
    case "${DIALOG:-}" in
        training) say "  chat       a dialog model is training in the background; chat answers once it" \
                      "is promoted" "(progress: /ready, $LOG/train-dialog.log)" ;;
        none)     say "  chat       no dialogue corpus: chat answers 503 until one is added" \
                      "(docs/OPERATIONS.md, \"Chat\")" ;;
    esac
    if [ -r "$VAR/secrets/demo_user" ]; then
        local email pw
        read -r email pw <"$VAR/secrets/demo_user"
        cat <<EOF
  demo user  $email  password $pw   (5 ratings: personal recommendations at once)
             TOKEN=\$(curl -s -XPOST http://$host:$HTTP_PORT/api/v1/auth/login \\
               -H 'Content-Type: application/json' \\
               -d '{"email": "$email", "password": "$pw"}' | sed 's/.*"access_token":"\([^"]*\)".*/\1/')
             curl -s -XPOST http://$host:$HTTP_PORT/api/v1/recommend -H "Authorization: Bearer \$TOKEN" \\
               -H 'Content-Type: application/json' -d '{"k": 5}'
EOF
    fi
}

on_start_exit() {
    local rc=$?
    if [ $rc -ne 0 ] && { pg_pid || redis_pid || nginx_pid; } >/dev/null 2>&1; then
        warn "start failed; what did start is still running (conf/stack.sh status);" \
             "stop it with ./build.sh stop"
    fi
}

cmd_start() {
    if all_running; then
        load_env
        say "the stack in $VAR is already running:"
        cmd_status || true
        MODULE=0; [ -f "$MODULE_SO" ] && MODULE=1
        summary
        return 0
    fi
    # Something may still run from before (a partial stack): keep its ports.
    if pg_pid >/dev/null || redis_pid >/dev/null || nginx_pid >/dev/null; then
        load_env
        say "part of the stack is running; starting the rest"
    fi
    [ -x "$BIN" ] || die "$BIN not built (run ./build.sh)"
    # A failure half-way leaves what did start running, for inspection: say so.
    trap on_start_exit EXIT
    # Check every port first: failing half-way would leave half a stack.
    pg_pid >/dev/null || need_port "$PG_PORT" postgres CINEMATCH_PG_PORT
    redis_pid >/dev/null || need_port "$REDIS_PORT" redis CINEMATCH_REDIS_PORT
    if ! nginx_pid >/dev/null; then
        need_port "$HTTP_PORT" "nginx http" CINEMATCH_HTTP_PORT
        need_port "$HTTPS_PORT" "nginx https" CINEMATCH_HTTPS_PORT
    fi
    mkdir -p "$RUN" "$LOG" "$VAR/lib/cinematch/models"
    ensure_svc_user
    own_var
    save_env

    pg_start
    redis_start
    migrate
    pg_app_role
    seed_data
    save_env
    infer_start
    mailer_start
    nginx_start
    wait_ready
    dialog_train_start
    trap - EXIT
    summary
}

cmd_stop() {
    # Reverse order; each by its own pid file, verified against the process
    # name, so nothing this script did not start is touched.
    dialog_train_stop
    nginx_stop
    mailer_stop
    infer_stop
    redis_stop
    pg_stop
    rm -f "$RUN/last-probe.body"
}

# Exit status 0 when every component that exists runs, 3 otherwise (the LSB
# "not running" code), so scripts can test it.
cmd_status() {
    local pid down=0
    load_env
    if pid=$(pg_pid); then say "postgres  running  pid $pid  127.0.0.1:$PG_PORT"
    else say "postgres  stopped"; down=1; fi
    if pid=$(redis_pid); then say "redis     running  pid $pid  127.0.0.1:$REDIS_PORT"
    else say "redis     stopped"; down=1; fi
    if pid=$(infer_pid); then say "infer     running  pid $pid  $INFER_SOCKET"
    elif "$BIN" infer --help >/dev/null 2>&1; then say "infer     stopped"; down=1
    else say "infer     not built"; fi
    if pid=$(mailer_pid); then
        if [ -n "${CINEMATCH_SMTP_URL:-}" ]; then say "mailer    running  pid $pid  SMTP"
        else say "mailer    running  pid $pid  files in $MAIL_DIR"; fi
    elif "$BIN" mailer --help >/dev/null 2>&1; then say "mailer    stopped"; down=1
    else say "mailer    not built"; fi
    if pid=$(dialog_train_pid); then say "dialog    training pid $pid  (log: $LOG/train-dialog.log)"; fi
    if pid=$(nginx_pid); then
        say "nginx     running  pid $pid  https://$(probe_host):$HTTPS_PORT" \
            " /health=$(http_code /health) /ready=$(http_code /ready)"
    else
        say "nginx     stopped"; down=1
    fi
    return $(( down ? 3 : 0 ))
}

case "${1:-}" in
    start)  cmd_start ;;
    stop)   cmd_stop ;;
    status) cmd_status ;;
    *)      sed -n '2,38p' "$0"; exit 2 ;;
esac

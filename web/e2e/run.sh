#!/usr/bin/env bash
# web/e2e/run.sh: the browser end-to-end flow (web/e2e/smoke.mjs) against a
# stack of its own: conf/stack.sh start in a temporary var directory on free
# loopback ports, the flow, then conf/stack.sh stop and the directory removed.
# `./build.sh test` runs it after building (web/dist and the module must be
# built; npm ci must have run).
#
# Installs Debian's chromium when it is missing (root or passwordless sudo);
# when it cannot, says so and exits 77 (skipped).  Exit 0: passed, 1: failed.
#
#   E2E_KEEP=1       keep the var directory (logs, screenshots stay in build/e2e)
#   CHROMIUM         [/usr/bin/chromium]
#   CINEMATCH_DATA   as for conf/stack.sh (MovieLens when ../shared/data has
#                    it, else `cinematch synth` data)
#
# The chat steps want a model that takes visible time per token: the stack's
# first dialog model (dialog-tiny) writes a whole reply in about a
# millisecond and an untrained dialog-small in a fifth of a second, too fast
# to press Stop in; so the stack is asked to make its first model an
# untrained GPT-2 124M shape on the committed Cornell-format fixture (one
# step at lr 1e-7: gibberish, about 60 tokens/s on two cores, 340 MB), and
# the flow starts once the registry has promoted it.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
BIN=${CINEMATCH_BIN:-$ROOT/build/cinematch}
CHROMIUM=${CHROMIUM:-/usr/bin/chromium}

say()  { printf 'e2e: %s\n' "$*"; }
skip() { say "SKIPPED: $*"; exit 77; }

# ---- the browser ---------------------------------------------------------------
if [ ! -x "$CHROMIUM" ]; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then
        sudo -n true 2>/dev/null || skip "$CHROMIUM is missing and apt-get needs root (apt-get install chromium)"
        SUDO="sudo -n"
    fi
    say "installing Debian's chromium (apt-get install chromium)"
    if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq \
            --no-install-recommends chromium; } >/tmp/cinematch-e2e-apt.log 2>&1; then
        tail -5 /tmp/cinematch-e2e-apt.log
        skip "chromium could not be installed (log: /tmp/cinematch-e2e-apt.log)"
    fi
    [ -x "$CHROMIUM" ] || skip "chromium installed, but $CHROMIUM is not there; set CHROMIUM"
fi
[ -f web/dist/index.html ] || { say "web/dist is not built (./build.sh build)"; exit 1; }
[ -d web/node_modules/playwright-core ] || { say "web/node_modules is missing (npm ci in web/)"; exit 1; }
[ -x "$BIN" ] || { say "$BIN is not built"; exit 1; }

# ---- free loopback ports -------------------------------------------------------
busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
pick_ports() {
    local base p i
    for _ in $(seq 1 50); do
        # below the kernel's ephemeral range (32768+ on Debian), where a
        # port that nothing listens on may still be some connection's
        base=$(( 20000 + (RANDOM % 1200) * 10 ))
        for i in 0 1 2 3; do
            p=$((base + i))
            busy "$p" && continue 2
        done
        echo "$base"; return 0
    done
    return 1
}
BASE=$(pick_ports) || { say "no four free loopback ports found"; exit 1; }

# ---- the stack -------------------------------------------------------------------
VAR=$(mktemp -d "${TMPDIR:-/tmp}/cinematch-e2e.XXXXXX")
chmod 755 "$VAR"
export CINEMATCH_VAR=$VAR CINEMATCH_HTTP_PORT=$BASE CINEMATCH_HTTPS_PORT=$((BASE + 1)) \
       CINEMATCH_PG_PORT=$((BASE + 2)) CINEMATCH_REDIS_PORT=$((BASE + 3)) CINEMATCH_LISTEN=127.0.0.1
# one BLAS thread per process: on a small busy machine, BLAS threads fighting
# over the cores stall the daemon loop past its 2 s heartbeat
export OPENBLAS_NUM_THREADS=1

cleanup() {
    local rc=$?
    conf/stack.sh stop >"$VAR/stack-stop.log" 2>&1 || { say "stack stop failed:"; cat "$VAR/stack-stop.log"; }
    if [ "${E2E_KEEP:-0}" = 1 ] || [ $rc -ne 0 ]; then
        say "kept $VAR (logs in $VAR/log)"
    else
        rm -rf "$VAR"
    fi
    exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t0=$(date +%s)
# the committed Cornell-format fixture, under the real file names
mkdir -p "$VAR/dialog-corpus"
for f in tests/fixtures/dialog/cornell-small/*.fixture; do
    cp "$f" "$VAR/dialog-corpus/$(basename "$f" .fixture)"
done
export CINEMATCH_DIALOG_CORPUS=$VAR/dialog-corpus \
       CINEMATCH_DIALOG_CONFIG=gpt2-124M CINEMATCH_DIALOG_STEPS=1 CINEMATCH_DIALOG_MINUTES=0 \
       CINEMATCH_DIALOG_ARGS="--lr 1e-7 --batch 1 --seq 16 --val-bytes 4096"
say "starting a stack in $VAR (http 127.0.0.1:$BASE)"
if ! conf/stack.sh start >"$VAR/stack-start.log" 2>&1; then
    tail -30 "$VAR/stack-start.log"
    say "the stack did not start"
    exit 1
fi
# the dialog model trains in the background; chat needs it promoted
dsn=$(cat "$VAR/secrets/pg_dsn")
promoted() {
    [ "$("${PG_BIN:-/usr/lib/postgresql/15/bin}/psql" "$dsn" -tAc \
        "SELECT count(*) FROM model_versions WHERE model_name = 'dialog' AND stage = 'production'" \
        2>/dev/null)" = 1 ]
}
trainer_running() {
    local pid
    pid=$(cat "$VAR/run/train-dialog.pid" 2>/dev/null) && kill -0 "$pid" 2>/dev/null
}
ok=0
for i in $(seq 1 240); do
    promoted && { ok=1; break; }
    # the background trainer ended without a promotion: no use waiting
    if [ "$i" -gt 3 ] && ! trainer_running; then
        promoted && ok=1
        break
    fi
    sleep 1
done
[ "$ok" = 1 ] || { tail -20 "$VAR/log/train-dialog.log" 2>/dev/null; say "no dialog model was promoted"; exit 1; }
sleep 2   # the daemon reloads on the promotion's NOTIFY
t1=$(date +%s)
say "stack up in $((t1 - t0)) s; running the flow"
rc=0
E2E_STRICT=1 CINEMATCH_URL=http://127.0.0.1:$BASE CHROMIUM=$CHROMIUM node web/e2e/smoke.mjs || rc=$?
say "flow took $(( $(date +%s) - t1 )) s; screenshots in build/e2e/"
exit $rc

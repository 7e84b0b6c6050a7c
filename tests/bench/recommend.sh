#!/usr/bin/env bash
# Recommendation serving throughput: POST /api/v1/recommend through the
# running local stack (./build.sh run) vs nginx serving a static 1.1 KB
# JSON file, measured in the same run with the same wrk settings.
#
#   tests/bench/recommend.sh [connections] [seconds]
#
# Authenticated as an admin (created with `cinematch user create --admin`
# in the stack's database), so user_id may rotate over the dataset's first
# 600 user ids.  Two runs: with `Cache-Control: no-cache`, which makes the
# module bypass its Redis response cache (every request is scored by the
# daemon), and without it, after a warm-up that fills the cache (the stack
# runs with cinematch_cache_ttl 30s; with the cache off both runs are the
# same path).  Any non-2xx answer fails the run: a benchmark of 401s
# measures nothing.  Prints requests/s, p50/p99 and the ratios to the
# static baseline, and the load average before and after (other jobs on
# the machine move every number; only the ratios of one run compare).
# Numbers go to docs/BENCHMARKS.md by hand.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
CONN=${1:-64}
SECS=${2:-10}
PORT=${CINEMATCH_HTTP_PORT:-8080}
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)"; exit 2; }
curl -sf "http://127.0.0.1:$PORT/ready" >/dev/null \
    || { echo "no ready stack on :$PORT (./build.sh run first)"; exit 2; }

VAR=${CINEMATCH_VAR:-$ROOT/var}
EMAIL=bench-admin@example.com PW="bench admin passphrase"
printf '%s' "$PW" | "$ROOT/build/cinematch" user create --email "$EMAIL" --admin \
    --password-stdin --dsn "$(cat "$VAR/secrets/pg_dsn")" >/dev/null 2>&1 || true
TOKEN=$(curl -s -XPOST "http://127.0.0.1:$PORT/api/v1/auth/login" \
    -H 'Content-Type: application/json' \
    -d "{\"email\": \"$EMAIL\", \"password\": \"$PW\"}" \
    | sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p')
[ -n "$TOKEN" ] || { echo "could not log in as $EMAIL"; exit 1; }

T=$(mktemp -d)
chmod 755 "$T"   # nginx workers (nobody when started as root) read the file
trap 'nginx -p "$T" -c "$T/nginx.conf" -s stop 2>/dev/null || true; rm -rf "$T"' EXIT

# the static baseline: the same shape of answer, served from a file
curl -sf -XPOST "http://127.0.0.1:$PORT/api/v1/recommend" -H 'Content-Type: application/json' \
    -H "Authorization: Bearer $TOKEN" -d '{"user_id": 1, "k": 10}' >"$T/static.json"
chmod 644 "$T/static.json"
SPORT=$((PORT + 111))
mkdir -p "$T/logs"
cat >"$T/nginx.conf" <<CONF
worker_processes 2;
pid $T/nginx.pid;
error_log $T/logs/error.log;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $T/body; proxy_temp_path $T/proxy;
    fastcgi_temp_path $T/fcgi; uwsgi_temp_path $T/uwsgi; scgi_temp_path $T/scgi;
    server {
        listen 127.0.0.1:$SPORT;
        location / { root $T; default_type application/json; try_files /static.json =404; }
    }
}
CONF
nginx -p "$T" -c "$T/nginx.conf"

for mode in nocache cache; do
    if [ $mode = nocache ]; then extra='["Cache-Control"] = "no-cache",'; else extra=; fi
    cat >"$T/rec-$mode.lua" <<LUA
local n = 0
request = function()
    n = n + 1
    local body = string.format('{"user_id": %d, "k": 10}', (n % 600) + 1)
    return wrk.format("POST", "/api/v1/recommend",
                      {["Content-Type"] = "application/json", $extra
                       ["Authorization"] = "Bearer $TOKEN"}, body)
end
LUA
done

# CPU accounting: the stack's processes (nginx workers, the daemon, Redis,
# PostgreSQL) by pid file, their utime + stime from /proc in clock ticks;
# per request it is robust to other jobs on the machine, the wall numbers are not
stack_pids() {
    local f p
    for f in nginx infer-0 redis; do
        p=$(cat "$VAR/run/$f.pid" 2>/dev/null) || continue
        echo "$p"; pgrep -P "$p" || true
    done
    p=$(head -1 "$VAR/pg/data/postmaster.pid" 2>/dev/null) && { echo "$p"; pgrep -P "$p" || true; }
}
cpu_ticks() {   # pid... -> "nginx daemon redis postgres" ticks
    local p
    for p in "$@"; do
        [ -r "/proc/$p/stat" ] || continue
        printf '%s ' "$(readlink "/proc/$p/exe" 2>/dev/null | sed 's,.*/,,')"
        sed 's/^.*) //' "/proc/$p/stat" | cut -d' ' -f12,13
    done | awk '{t = $2 + $3}
        $1 ~ /nginx/ {n += t} $1 ~ /cinematch/ {d += t} $1 ~ /redis/ {r += t}
        $1 ~ /postgres/ {g += t} END {print n + 0, d + 0, r + 0, g + 0}'
}
HZ=$(getconf CLK_TCK)

run() {   # url [script] -> "req/s p50_ms p99_ms cpu_us/request(nginx daemon redis pg wrk)"
    local out pids c0 c1 reqs wrk_t
    if [ -n "${2:-}" ]; then
        pids=$(stack_pids)
    else   # the static file: the baseline's own nginx
        pids="$(cat "$T/nginx.pid") $(pgrep -P "$(cat "$T/nginx.pid")")"
    fi
    # shellcheck disable=SC2086
    c0=$(cpu_ticks $pids)
    if [ -n "${2:-}" ]; then
        out=$(wrk -t2 -c"$CONN" -d"${SECS}s" --latency -s "$2" "$1")
    else
        out=$(wrk -t2 -c"$CONN" -d"${SECS}s" --latency "$1")
    fi
    # shellcheck disable=SC2086
    c1=$(cpu_ticks $pids)
    times >"$T/times"   # this subshell's children: wrk (cumulative)
    wrk_t=$(tail -1 "$T/times" | awk '{gsub(/[ms]/, " "); print ($1 * 60 + $2) + ($3 * 60 + $4)}')
    echo "$out" >&2
    if grep -q "Non-2xx" <<<"$out"; then
        echo "non-2xx answers in the run: not a valid measurement" >&2
        exit 1
    fi
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    awk -v c0="$c0" -v c1="$c1" -v n="$reqs" -v hz="$HZ" -v w="$wrk_t" '
        /Requests\/sec/ {r=$2} /^ +50%/ {p50=$2} /^ +99%/ {p99=$2}
        END {split(c0, a, " "); split(c1, b, " "); s = ""
             for (i = 1; i <= 4; i++) s = s sprintf("%.1f,", (b[i] - a[i]) * 1e6 / hz / n)
             print r, p50, p99, s sprintf("%.1f", w * 1e6 / n)}' <<<"$out"
}

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== static file ($(wc -c <"$T/static.json") bytes), c=$CONN, ${SECS}s" >&2
read -r s_rps s_p50 s_p99 s_cpu < <(run "http://127.0.0.1:$SPORT/static.json")
echo "== POST /api/v1/recommend, k=10, rotating users, cache bypassed, c=$CONN, ${SECS}s" >&2
read -r r_rps r_p50 r_p99 r_cpu < <(run "http://127.0.0.1:$PORT/api/v1/recommend" "$T/rec-nocache.lua")
cached=$(curl -s -o /dev/null -D - -XPOST "http://127.0.0.1:$PORT/api/v1/recommend" \
    -H 'Content-Type: application/json' -H "Authorization: Bearer $TOKEN" \
    -d '{"user_id": 1, "k": 10}' | tr -d '\r' | sed -n 's/^[Xx]-[Cc]ache: //p')
echo "== warm-up (fills the cache), then the same with the cache (X-Cache: ${cached:-none})" >&2
SECS_SAVED=$SECS; SECS=2; run "http://127.0.0.1:$PORT/api/v1/recommend" "$T/rec-cache.lua" >/dev/null
SECS=$SECS_SAVED
read -r c_rps c_p50 c_p99 c_cpu < <(run "http://127.0.0.1:$PORT/api/v1/recommend" "$T/rec-cache.lua")

printf '\n%-40s %12s %10s %10s %8s  %s\n' path "req/s" p50 p99 ratio \
    "CPU us/request: nginx,daemon,redis,postgres,wrk"
printf '%-40s %12s %10s %10s %8s  %s\n' "nginx static JSON (baseline)" "$s_rps" "$s_p50" "$s_p99" 1 \
    "$s_cpu"
printf '%-40s %12s %10s %10s %8s  %s\n' "POST /api/v1/recommend (cache bypassed)" "$r_rps" "$r_p50" "$r_p99" \
    "$(awk -v a="$r_rps" -v b="$s_rps" 'BEGIN {printf "%.3f", a / b}')" "$r_cpu"
printf '%-40s %12s %10s %10s %8s  %s\n' "POST /api/v1/recommend (Redis cache)" "$c_rps" "$c_p50" "$c_p99" \
    "$(awk -v a="$c_rps" -v b="$s_rps" 'BEGIN {printf "%.3f", a / b}')" "$c_cpu"
[ -n "$cached" ] || echo "(the stack's nginx has no response cache: both runs scored every request)"
echo "load average before: $LOAD0, after: $(cut -d' ' -f1-3 /proc/loadavg) ($(nproc) CPUs)"

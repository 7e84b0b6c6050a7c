#!/usr/bin/env bash
# tests/image/build_and_check.sh: build the Dockerfile with podman and smoke-
# test the image without a container runtime (`podman run` does not work on
# these machines: rlimits).  `./build.sh image` runs it.
#
#  1. base images: when debian:bookworm-slim is not in podman's store, make
#     one with debootstrap --variant=minbase (also tagged debian:bookworm)
#  2. podman build --pull=never --isolation=chroot --network host; the web
#     stage uses web/dist from the context (WEB_SOURCE=prebuilt) unless
#     node:20-bookworm-slim is in the store
#  3. podman create + export into a folder, then chroot into it: the binary
#     runs, the module and the binary find all their libraries, nginx loads
#     the module, the web app and the docs page are there
#     and conf/nginx.conf passes nginx -t there with throwaway secrets
# Prints "N passed, N failed" last.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT"
TAG=${CINEMATCH_IMAGE:-localhost/cinematch:dev}
WORK=${IMAGE_WORK:-/var/tmp/cinematch-image}
log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

command -v podman >/dev/null && command -v debootstrap >/dev/null || {
    log "installing podman and debootstrap"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        podman debootstrap >/dev/null; }
[ -f web/dist/index.html ] || { echo "web/dist missing: run ./build.sh build first" >&2; exit 1; }

if ! podman image exists debian:bookworm-slim; then
    log "making debian:bookworm-slim with debootstrap (minbase)"
    rm -rf "$WORK/rootfs"; mkdir -p "$WORK"
    debootstrap --variant=minbase bookworm "$WORK/rootfs" >"$WORK/debootstrap.log" 2>&1 \
        || { tail -20 "$WORK/debootstrap.log"; exit 1; }
    rm -rf "$WORK/rootfs/var/cache/apt/archives/"*.deb "$WORK/rootfs/var/lib/apt/lists/"*
    tar -C "$WORK/rootfs" -c . | podman import - debian:bookworm-slim >/dev/null
    rm -rf "$WORK/rootfs"
fi
podman image exists debian:bookworm || podman tag debian:bookworm-slim debian:bookworm

web=prebuilt
podman image exists node:20-bookworm-slim && web=npm
log "podman build ($TAG, web from $web)"
start=$(date +%s)
podman build --format docker --pull=never --isolation=chroot --network host --build-arg WEB_SOURCE=$web \
    -t "$TAG" . >"$WORK/build.log" 2>&1 || { tail -40 "$WORK/build.log"; exit 1; }
log "built in $(( $(date +%s) - start )) s; size $(podman image inspect "$TAG" --format '{{.Size}}') bytes"

rm -rf "$WORK/export"; mkdir -p "$WORK/export"
cid=$(podman create "$TAG")
podman export "$cid" | tar -C "$WORK/export" -x
podman rm "$cid" >/dev/null
R=$WORK/export
pass=0 fail=0
check() {
    local name=$1; shift
    if out=$("$@" 2>&1); then pass=$((pass+1)); echo "ok   $name";
    else fail=$((fail+1)); echo "FAIL $name: $(echo "$out" | tail -3)"; fi
}
check "cinematch runs"            chroot "$R" /usr/bin/cinematch version
check "cinematch finds its libs"  bash -c "! chroot '$R' ldd /usr/bin/cinematch | grep 'not found'"
check "module finds its libs"     bash -c "! chroot '$R' ldd /usr/lib/nginx/modules/ngx_http_cinematch_module.so | grep 'not found'"
cat >"$R/tmp/t.conf" <<'CONF'
load_module /usr/lib/nginx/modules/ngx_http_cinematch_module.so;
error_log /tmp/e.log;
pid /tmp/n.pid;
events {}
http { server { listen 127.0.0.1:18999; location / { cinematch; } } }
CONF
check "nginx loads the module"    chroot "$R" nginx -t -q -c /tmp/t.conf
# the production nginx.conf as installed, with the files an operator mounts
mkdir -p "$R/etc/cinematch" "$R/etc/letsencrypt/live/cinematch.example.com" "$R/var/www/letsencrypt"
echo 'cinematch_postgres "host=127.0.0.1 dbname=cinematch user=cinematch_app";' >"$R/etc/cinematch/nginx-dsn.conf"
chroot "$R" cinematch jwt-secret generate --force --out /etc/cinematch/jwt.secret >/dev/null
chroot "$R" cinematch jwt-secret generate --force --out /etc/cinematch/jwt.secret.prev >/dev/null
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=cinematch.example.com \
    -keyout "$R/etc/letsencrypt/live/cinematch.example.com/privkey.pem" \
    -out "$R/etc/letsencrypt/live/cinematch.example.com/fullchain.pem" >/dev/null 2>&1
check "production nginx.conf passes nginx -t" chroot "$R" nginx -t -q
check "web app is installed"      test -f "$R/usr/share/cinematch/web/index.html"
check "API docs are installed"    test -f "$R/usr/share/cinematch/web/api-docs/openapi.yaml"
check "PDF export font is installed" test -f "$R/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"
check "migrations are installed"  bash -c "ls '$R'/usr/share/cinematch/sql/*.sql >/dev/null"
check "no compilers in runtime"   bash -c "! test -e '$R/usr/bin/gcc'"
echo "$pass passed, $fail failed"
[ "$fail" = 0 ]

#!/usr/bin/env bash
# conf/check-nginx-conf.sh: `nginx -t` on conf/nginx.conf (production) without
# installing it: the paths it names under /etc, /usr, /var and /run are
# pointed into a temporary prefix, with a throwaway self-signed certificate.
# Needs the module (build/ngx_http_cinematch_module.so; ./build.sh builds it).
# Used by `./build.sh test`; prints "nginx.conf: ok" on success.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SO=${CINEMATCH_MODULE_SO:-$ROOT/build/ngx_http_cinematch_module.so}
[ -f "$SO" ] || { echo "nginx.conf: skipped (no $SO)"; exit 0; }
T=$(mktemp -d); trap 'rm -rf "$T"' EXIT
mkdir -p "$T"/{tls,snippets,log,web,acme}
openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost \
    -keyout "$T/tls/key.pem" -out "$T/tls/cert.pem" >/dev/null 2>&1
cp "$ROOT/conf/snippets/cinematch-security-headers.conf" "$T/snippets/"
echo 'cinematch_postgres "host=127.0.0.1 dbname=cinematch user=cinematch_app";' >"$T/dsn.conf"
"$ROOT/build/cinematch" jwt-secret generate --out "$T/jwt.secret" >/dev/null
"$ROOT/build/cinematch" jwt-secret generate --out "$T/jwt.secret.prev" >/dev/null
user=$(id -un)
sed -e "s|/usr/lib/nginx/modules/ngx_http_cinematch_module.so|$SO|" \
    -e "s|^user .*|user $user;|" \
    -e "s|/run/nginx.pid|$T/nginx.pid|; s|/var/log/nginx/|$T/log/|g" \
    -e "s|/etc/cinematch/nginx-dsn.conf|$T/dsn.conf|" \
    -e "s|/etc/cinematch/jwt.secret|$T/jwt.secret|g" \
    -e "s|/etc/nginx/snippets/|$T/snippets/|g" \
    -e "s|/etc/letsencrypt/live/[^/]*/fullchain.pem|$T/tls/cert.pem|" \
    -e "s|/etc/letsencrypt/live/[^/]*/privkey.pem|$T/tls/key.pem|" \
    -e "s|/usr/share/cinematch/web|$T/web|g; s|/var/www/letsencrypt|$T/acme|" \
    "$ROOT/conf/nginx.conf" >"$T/nginx.conf"
if out=$(nginx -t -q -p "$T" -c "$T/nginx.conf" -e "$T/log/error.log" 2>&1); then
    echo "nginx.conf: ok"
else
    echo "$out" >&2; echo "nginx.conf: FAILED" >&2; exit 1
fi

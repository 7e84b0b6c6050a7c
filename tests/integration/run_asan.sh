#!/usr/bin/env bash
# Integration suite against the nginx module built with ASan+UBSan.
#
# The stock nginx binary is not instrumented; libasan is preloaded into it,
# so every malloc/free (request pools included) is checked and the module's
# own code is fully instrumented.  Leak checking is off: nginx does not free
# its cycle at exit by design.  Any sanitizer report fails the run.
#
#   tests/integration/run_asan.sh [pytest args] [test files or node ids]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
NGX_SRC=${NGX_SRC:-/usr/share/nginx/src}
B=$ROOT/build-san/ngx
SAN="-fsanitize=address,undefined -fno-omit-frame-pointer"

cd "$ROOT"
make -s -j2 SAN=1 lib

srcs=$(echo ngx_module/*.c)
if [ ! -f "$B/.configured" ] || [ ngx_module/config -nt "$B/.configured" ] \
    || [ "$(cat "$B/.configured")" != "$srcs" ]; then
    rm -rf "$B"; mkdir -p "$B"
    cp -a "$NGX_SRC"/. "$B"/
    (cd "$B" && source ./conf_flags \
        && CM_ROOT="$ROOT" CM_LIBDIR="$ROOT/build-san" ./configure \
            "${NGX_CONF_FLAGS[@]}" --with-cc-opt="$SAN -O1" --with-ld-opt="$SAN" \
            --add-dynamic-module="$ROOT/ngx_module" >configure.log 2>&1) \
        || { tail -20 "$B/configure.log"; exit 1; }
    echo "$srcs" >"$B/.configured"
fi
rm -f "$B/objs/ngx_http_cinematch_module.so"
make -s -C "$B" -f objs/Makefile modules -j2 >"$B/make.log" 2>&1 \
    || { grep -E 'error|warning' "$B/make.log" | head -40; exit 1; }

rm -rf "$B/reports"; mkdir -p "$B/reports"
export CINEMATCH_NGX_MODULE=$B/objs/ngx_http_cinematch_module.so
export CINEMATCH_NGX_PRELOAD=$(gcc -print-file-name=libasan.so)
export ASAN_OPTIONS=detect_leaks=0:log_path=$B/reports/asan
export UBSAN_OPTIONS=print_stacktrace=1:log_path=$B/reports/ubsan

# Test files or node ids given on the command line replace the whole suite.
targets=(tests/integration)
for a in "$@"; do
    case $a in *.py|*.py::*|*/*) targets=(); break ;; esac
done

rc=0
/usr/bin/python3 -m pytest -q -p no:cacheprovider "${targets[@]}" "$@" || rc=$?

if ls "$B"/reports/* >/dev/null 2>&1; then
    echo "run_asan.sh: sanitizer reports:" >&2
    head -60 "$B"/reports/* >&2
    rc=1
fi
exit $rc

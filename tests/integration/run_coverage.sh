#!/usr/bin/env bash
# Integration suite against the nginx module built with gcov
# instrumentation; prints the module's line and branch coverage.
#
# The module's .gcda files are written when nginx's processes exit, under
# build-cov/ngx/objs.  `./build.sh coverage` runs this before it captures,
# so its report covers libcinematch (unit tests) and the module
# (integration tests) together.
#
#   tests/integration/run_coverage.sh [pytest args]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
NGX_SRC=${NGX_SRC:-/usr/share/nginx/src}
B=$ROOT/build-cov/ngx

cd "$ROOT"
make -s -j2 COV=1 lib

srcs=$(echo ngx_module/*.c)
if [ ! -f "$B/.configured" ] || [ ngx_module/config -nt "$B/.configured" ] \
    || [ "$(cat "$B/.configured")" != "$srcs" ]; then
    rm -rf "$B"; mkdir -p "$B"
    cp -a "$NGX_SRC"/. "$B"/
    (cd "$B" && source ./conf_flags \
        && CM_ROOT="$ROOT" CM_LIBDIR="$ROOT/build-cov" ./configure \
            "${NGX_CONF_FLAGS[@]}" --with-cc-opt="-O0 --coverage" \
            --with-ld-opt="--coverage" \
            --add-dynamic-module="$ROOT/ngx_module" >configure.log 2>&1) \
        || { tail -20 "$B/configure.log"; exit 1; }
    echo "$srcs" >"$B/.configured"
fi
rm -f "$B/objs/ngx_http_cinematch_module.so"
make -s -C "$B" -f objs/Makefile modules -j2 >"$B/make.log" 2>&1 \
    || { grep -E 'error|warning' "$B/make.log" | head -40; exit 1; }
find "$B/objs" -name '*.gcda' -delete

rc=0
CINEMATCH_NGX_MODULE=$B/objs/ngx_http_cinematch_module.so \
    /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/integration "$@" || rc=$?

lcov -q --capture --directory "$B/objs" --rc lcov_branch_coverage=1 \
    --output-file "$B/module.info" 2>/dev/null
lcov -q --extract "$B/module.info" "$ROOT/ngx_module/*" --rc lcov_branch_coverage=1 \
    --output-file "$B/module.info"
echo "nginx module coverage (integration suite):"
lcov --list "$B/module.info" --rc lcov_branch_coverage=1 | sed 's|^.*/ngx_module/||'
exit $rc

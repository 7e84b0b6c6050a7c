#!/usr/bin/env bash
# cinematch build driver.
#
#   ./build.sh deps       install the Debian packages the project needs (idempotent)
#   ./build.sh [build]    build libcinematch, the cinematch binary, the nginx module,
#                         the web app (web/dist, when npm is there; WEB=0 skips it)
#   ./build.sh test       deps + build + unit tests + sanitizer tests + integration tests
#                         + web unit tests + the browser flow on a stack of its own
#                         (web/e2e/run.sh; E2E=0 leaves it out)
#   ./build.sh run        deps + build + start the local stack under ./var (see README)
#   ./build.sh stop       stop what `run` started (by pid files), nothing else
#   ./build.sh image      build the Dockerfile with podman and smoke-test the image
#   ./build.sh e2e        browser smoke test of the web app against the running
#                         stack (Debian chromium + playwright-core; build/e2e/*.png)
#   ./build.sh lint       warnings as errors, cppcheck, clang-tidy
#   ./build.sh coverage   gcov/lcov coverage: unit suite, and the nginx module under integration
#   ./build.sh fuzz       build the libFuzzer targets and run each briefly
#   ./build.sh clean      remove build outputs (keeps ./var)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cd "$ROOT"
JOBS=${JOBS:-$(nproc 2>/dev/null || echo 2)}
NGX_SRC=${NGX_SRC:-/usr/share/nginx/src}
NGX_BUILD=$ROOT/build-ngx

# Everything the project needs to build, test and run, from Debian 12.
DEPS=(
    build-essential pkg-config git ca-certificates curl openssl
    nginx nginx-dev libssl-dev zlib1g-dev libpcre3-dev
    postgresql libpq-dev redis-server libhiredis-dev
    libjansson-dev libopenblas-dev liblapacke-dev libcmocka-dev
    libjwt-dev libsodium-dev libpcre2-dev libcurl4-openssl-dev libsystemd-dev
    libhpdf-dev fonts-dejavu-core
    prometheus wrk python3 python3-pytest python3-aiosmtpd
    clang lcov cppcheck clang-tidy
)

log() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
die() { printf 'build.sh: %s\n' "$*" >&2; exit 1; }

cmd_deps() {
    local missing=() p
    for p in "${DEPS[@]}"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" \
            || missing+=("$p")
    done
    # Node.js for web/: the machine's own when it has one (Debian 12's is
    # older than what Vite needs, see build_web), Debian's only when none.
    if ! command -v npm >/dev/null 2>&1; then
        command -v node >/dev/null 2>&1 || missing+=(nodejs)
        missing+=(npm)
    fi
    [ ${#missing[@]} -eq 0 ] && return 0
    local SUDO=""""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    log "installing ${#missing[@]} packages: ${missing[*]}"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

build_module() {
    [ -f ngx_module/config ] || { log "ngx_module/config missing: module skipped"; return 0; }
    [ -d "$NGX_SRC" ] || die "nginx sources not found in $NGX_SRC (package nginx-dev)"
    local stamp=$NGX_BUILD/.configured srcs
    # configure again when config changes or a source file comes or goes
    srcs=$(echo ngx_module/*.c)
    if [ ! -f "$stamp" ] || [ ngx_module/config -nt "$stamp" ] \
        || [ "$(cat "$stamp")" != "$srcs" ]; then
        log "configuring nginx module build (nginx $(nginx -v 2>&1 | sed 's/.*\///'))"
        rm -rf "$NGX_BUILD"; mkdir -p "$NGX_BUILD"
        cp -a "$NGX_SRC"/. "$NGX_BUILD"/
        (cd "$NGX_BUILD" && source ./conf_flags \
            && CM_ROOT="$ROOT" ./configure "${NGX_CONF_FLAGS[@]}" \
                --add-dynamic-module="$ROOT/ngx_module" >configure.log 2>&1) \
            || { tail -20 "$NGX_BUILD/configure.log"; die "nginx configure failed"; }
        echo "$srcs" >"$stamp"
    fi
    # The module links libcinematch.a; relink when it changes.
    [ build/libcinematch.a -nt "$NGX_BUILD/objs/ngx_http_cinematch_module.so" ] \
        && rm -f "$NGX_BUILD/objs/ngx_http_cinematch_module.so"
    make -s -C "$NGX_BUILD" -f objs/Makefile modules -j"$JOBS" >"$NGX_BUILD/make.log" 2>&1 \
        || { grep -E 'error|warning' "$NGX_BUILD/make.log" | head -40; die "module build failed"; }
    if grep -q 'warning:' "$NGX_BUILD/make.log"; then
        grep 'warning:' "$NGX_BUILD/make.log" | head -20
        [ "${WERROR:-0}" = 1 ] && die "module build has warnings"
    fi
    # A new file renamed into place: rewriting the old one would change the
    # pages a running nginx has mapped (its workers would crash).
    cp "$NGX_BUILD/objs/ngx_http_cinematch_module.so" build/.ngx_http_cinematch_module.so.new
    mv -f build/.ngx_http_cinematch_module.so.new build/ngx_http_cinematch_module.so
}

# web/ → web/dist (the SPA and /api/docs), from the committed lockfile.
# Skipped, with a line saying why, without npm or with a Node.js that Vite
# cannot run on (it needs 20.19+ or 22.12+).
web_ok() {
    [ "${WEB:-1}" = 1 ] && [ -f web/package-lock.json ] || return 1
    if ! command -v npm >/dev/null 2>&1; then
        log "npm not found: web app skipped"; return 1
    fi
    local v; v=$(node -p 'process.versions.node' 2>/dev/null || echo 0)
    node -e 'const [a,b]=process.versions.node.split(".").map(Number);
             process.exit(a>22||(a===22&&b>=12)||(a===20&&b>=19)?0:1)' 2>/dev/null \
        || { log "Node.js $v is too old for Vite (20.19+ or 22.12+): web app skipped"; return 1; }
}

build_web() {
    web_ok || return 0
    # npm ci again only when the lockfile changed since the last install
    if [ ! -f web/node_modules/.package-lock.json ] \
        || [ web/package-lock.json -nt web/node_modules/.package-lock.json ]; then
        log "installing web dependencies (npm ci)"
        (cd web && npm ci --no-audit --no-fund --loglevel=error) || die "npm ci failed"
        touch web/node_modules/.package-lock.json
    fi
    log "building the web app"
    (cd web && npm run -s build >../build/web-build.log 2>&1) \
        || { tail -30 build/web-build.log; die "web build failed"; }
}

cmd_build() {
    log "building libcinematch and cinematch"
    make -s -j"$JOBS" all WERROR="${WERROR:-0}"
    build_module
    build_web
}

cmd_test() {
    cmd_deps
    export WERROR=1
    cmd_build
    local rc=0 summary=()
    log "unit tests"
    if make -s test; then summary+=("unit: ok"); else summary+=("unit: FAILED"); rc=1; fi
    log "unit tests under ASan+UBSan"
    export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
    if make -s -j"$JOBS" SAN=1 tests bin && make -s SAN=1 test; then
        summary+=("sanitizer: ok"); else summary+=("sanitizer: FAILED"); rc=1; fi
    unset ASAN_OPTIONS UBSAN_OPTIONS
    log "production nginx.conf (nginx -t)"
    if conf/check-nginx-conf.sh; then summary+=("nginx.conf: ok"); else summary+=("nginx.conf: FAILED"); rc=1; fi
    if web_ok && [ -d web/node_modules ]; then
        log "web unit tests (vitest)"
        if (cd web && npx vitest run --reporter=dot); then
            summary+=("web: ok"); else summary+=("web: FAILED"); rc=1; fi
        if [ "${E2E:-1}" = 1 ]; then
            log "browser end-to-end flow (web/e2e/run.sh: a stack of its own on loopback, Debian chromium)"
            local erc=0
            web/e2e/run.sh || erc=$?
            case $erc in
                0)  summary+=("e2e: ok") ;;
                77) summary+=("e2e: skipped") ;;
                *)  summary+=("e2e: FAILED"); rc=1 ;;
            esac
        fi
    fi
    if ls tests/integration/test_*.py >/dev/null 2>&1; then
        log "integration tests (real PostgreSQL, Redis, nginx, cinematch infer on loopback)"
        if /usr/bin/python3 -m pytest -q -p no:cacheprovider tests/integration; then
            summary+=("integration: ok"); else summary+=("integration: FAILED"); rc=1; fi
        log "integration tests, nginx module under ASan+UBSan"
        if tests/integration/run_asan.sh; then
            summary+=("integration-asan: ok"); else summary+=("integration-asan: FAILED"); rc=1; fi
    fi
    log "summary: ${summary[*]}"
    return $rc
}

cmd_lint() {
    cmd_deps
    log "compiler warnings as errors"
    make -s clean >/dev/null; WERROR=1 cmd_build
    log "cppcheck"
    cppcheck --quiet --error-exitcode=1 --enable=warning,portability,performance \
        --inline-suppr --std=c11 -D__GNUC__ -Ishared/include \
        --suppress=missingIncludeSystem \
        --suppress=invalidPointerCast `# mmap artifacts are read as float arrays on purpose` \
        shared/src workers
    log "clang-tidy"
    local f
    for f in shared/src/*.c workers/*.c; do
        clang-tidy --quiet --warnings-as-errors='*' \
            --checks='-*,clang-analyzer-*,bugprone-*,-bugprone-easily-swappable-parameters,-bugprone-reserved-identifier,-bugprone-narrowing-conversions,-bugprone-assignment-in-if-condition,-bugprone-implicit-widening-of-multiplication-result,-clang-analyzer-security.insecureAPI.DeprecatedOrUnsafeBufferHandling' \
            "$f" -- -std=gnu11 -D_GNU_SOURCE -Ishared/include -Iworkers \
            $(pkg-config --cflags libpq hiredis jansson openblas) 2>/dev/null
    done
    log "lint ok"
}

cmd_coverage() {
    cmd_deps
    make -s -j"$JOBS" COV=1 tests bin
    make -s COV=1 test
    log "integration tests against a gcov build of the nginx module"
    local irc=0
    tests/integration/run_coverage.sh || irc=$?
    lcov -q --capture --directory build-cov --rc lcov_branch_coverage=1 \
        --output-file build-cov/coverage.info
    lcov -q --remove build-cov/coverage.info '/usr/*' '*/build-cov/ngx/src/*' \
        --rc lcov_branch_coverage=1 --output-file build-cov/coverage.info
    lcov --summary build-cov/coverage.info --rc lcov_branch_coverage=1
    genhtml -q --branch-coverage build-cov/coverage.info -o build-cov/html
    log "HTML report: build-cov/html/index.html"
    return $irc
}

cmd_fuzz() {
    cmd_deps
    make -s fuzz
    local f
    for f in build/fuzz/fuzz_*; do
        [ -x "$f" ] || continue
        log "fuzzing $(basename "$f") for ${FUZZ_SECONDS:-30}s"
        mkdir -p "build/fuzz/corpus-$(basename "$f")"
        "$f" -max_total_time="${FUZZ_SECONDS:-30}" -max_len=65536 "build/fuzz/corpus-$(basename "$f")" \
            tests/fuzz/corpus/"$(basename "$f" | sed 's/^fuzz_//')" 2>&1 | tail -3
    done
}

cmd_e2e() {
    local var=${CINEMATCH_VAR:-$ROOT/var} port
    [ -f "$var/stack.env" ] || die "no running stack in $var: ./build.sh run first"
    port=$(sed -n 's/^HTTP_PORT=//p' "$var/stack.env")
    web_ok || die "the web app cannot be built here (see above)"
    if [ ! -x /usr/bin/chromium ]; then
        log "installing Debian's chromium"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null
    fi
    build_web
    CINEMATCH_VAR=$var CINEMATCH_URL=http://127.0.0.1:$port node web/e2e/smoke.mjs
}

cmd_clean() {
    make -s clean
    rm -rf "$NGX_BUILD" web/dist
}

case "${1:-build}" in
    deps)     cmd_deps ;;
    build)    cmd_deps; cmd_build ;;
    test)     cmd_test ;;
    run)      cmd_deps; cmd_build; exec "$ROOT/conf/stack.sh" start ;;
    stop)     exec "$ROOT/conf/stack.sh" stop ;;
    e2e)      cmd_e2e ;;
    image)    cmd_deps; cmd_build; exec tests/image/build_and_check.sh ;;
    status)   exec "$ROOT/conf/stack.sh" status ;;
    lint)     cmd_lint ;;
    coverage) cmd_coverage ;;
    fuzz)     cmd_fuzz ;;
    clean)    cmd_clean ;;
    *)        sed -n '2,18p' "$0"; exit 2 ;;
esac

#!/usr/bin/env bash
# Runs every cmocka unit test binary in <builddir>/tests and prints one
# closing line "N passed, N failed" (cmocka's own per-binary lines come first).
set -u
B=${1:-build}
export CM_BUILD_DIR="$B"   # tests that spawn the daemon find build/cinematch here
pass=0; fail=0; failed=()
for t in "$B"/tests/test_*; do
    [ -x "$t" ] || continue
    if (cd "$(dirname "$0")/.." && "$t"); then
        pass=$((pass + 1))
    else
        fail=$((fail + 1)); failed+=("$(basename "$t")")
    fi
done
echo
echo "unit test binaries ($B): $pass passed, $fail failed"
[ "$fail" -eq 0 ] || { echo "failed: ${failed[*]}"; exit 1; }

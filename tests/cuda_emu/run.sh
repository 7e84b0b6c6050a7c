#!/usr/bin/env bash
# Runs test_gpt_cuda and test_gpt_cuda_model against shared/cuda's host
# code on the CPU (cuda_emu.h: CUDA runtime and cuBLAS emulated, see there
# for what this does and does not check).  For machines without a GPU;
# not part of `make test`.  Usage: tests/cuda_emu/run.sh [OUTDIR]
set -eu
cd "$(dirname "$0")/../.."
OUT=${1:-${TMPDIR:-/tmp}/cuda-emu}
mkdir -p "$OUT"
python3 tests/cuda_emu/gen.py "${CM_CUDA_SRC:-shared/cuda}" "$OUT"
PKG=$(pkg-config --cflags openblas)
CF="-O1 -g -fsanitize=address,undefined -fno-omit-frame-pointer -Ishared/include $PKG -D_GNU_SOURCE -DCM_HAVE_CUDA=1"
objs=()
for f in emu_gpt_kernels emu_gpt_cuda; do
    g++ -std=c++20 $CF -Wno-unused-function -Wno-unused-parameter \
        -Itests/cuda_emu -I"$OUT" -c "$OUT/$f.cpp" -o "$OUT/$f.o"
    objs+=("$OUT/$f.o")
done
for f in gpt optim common rng gpt_cuda_stub; do
    [ -f shared/src/$f.c ] || continue
    gcc -std=gnu11 $CF -c shared/src/$f.c -o "$OUT/$f.o"
    objs+=("$OUT/$f.o")
done
rc=0
if [ "${CM_EMU_CLI:-0}" = 1 ]; then
    # the cinematch binary of the CUDA build (make: build/) relinked with the
    # emulated backend, for end-to-end runs of --device cuda
    [ -f build/cinematch ] || { echo "run.sh: make the CUDA build first" >&2; exit 1; }
    for f in emu_gpt_kernels emu_gpt_cuda; do
        g++ -std=c++20 -O1 -g -Ishared/include $PKG -D_GNU_SOURCE -DCM_HAVE_CUDA=1 \
            -Wno-unused-function -Itests/cuda_emu -I"$OUT" -c "$OUT/$f.cpp" -o "$OUT/$f.cli.o"
    done
    g++ -o "$OUT/cinematch" build/workers/*.o build/lib/*.o "$OUT"/emu_gpt_kernels.cli.o \
        "$OUT"/emu_gpt_cuda.cli.o $(pkg-config --libs libpq hiredis jansson libsodium \
        libpcre2-8 libjwt openblas libcurl) -llapacke -lcrypto -lm -lpthread -lrt \
        $( [ -f /usr/include/hpdf.h ] && echo -lhpdf )
    echo "run.sh: $OUT/cinematch (emulated GPU)"
    exit 0
fi
for t in test_gpt_cuda test_gpt_cuda_model; do
    gcc -std=gnu11 $CF -c tests/unit/$t.c -o "$OUT/$t.o"
    g++ -fsanitize=address,undefined -o "$OUT/$t" "$OUT/$t.o" "${objs[@]}" \
        $(pkg-config --libs openblas) -lcmocka -lm -lpthread
    "$OUT/$t" || rc=1
done
exit $rc

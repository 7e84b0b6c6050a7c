#!/usr/bin/env python3
"""gen.py SRCDIR OUTDIR: shared/cuda's sources rewritten for cuda_emu.h.

Kernel launches K<<<cfg>>>(args) become cm_launch(K, cfg)(args) (every
thread runs the real body in turn, serially), or, for the kernels with
barriers / warp shuffles, cm_launch_threads(K, cfg)(args) (one std::thread
per CUDA thread); extern __shared__ arrays point at the launch's dynamic
shared memory."""
import os
import re
import sys

THREADED = {"cm_layernorm_kernel", "cm_layernorm_backward_kernel", "cm_softmax_kernel",
         "cm_causal_softmax_kernel", "cm_causal_softmax_backward_kernel",
         "cm_sumsq_kernel", "cm_sum_double_kernel", "cm_kv_attention_kernel"}


def shared(text):
    return re.sub(r"extern __shared__ (\w+) (\w+)\[\];",
                  r"\1 *\2 = (\1 *) cm_emu_dyn_shared;", text)


def launches(text):
    def rep(m):
        name, cfg = m.group(1), m.group(2)
        if name in THREADED:
            return "cm_launch_threads(%s, %s)" % (name, cfg)
        return "cm_launch(%s, %s)" % (name, cfg)
    return re.sub(r"(\w+)<<<(.*?)>>>", rep, text, flags=re.S)


def main():
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(src, "gpt_kernels.cuh")) as f:
        k = f.read()
    k = k.replace("#include <cuda_runtime.h>\n#include <cublas_v2.h>\n",
                  '#include "cuda_emu.h"\n')
    if "cuda_emu.h" not in k:
        sys.exit("gen.py: gpt_kernels.cuh includes changed")
    with open(os.path.join(out, "emu_kernels.cuh"), "w") as f:
        f.write(launches(shared(k)))
    for name in ("gpt_kernels.cu", "gpt_cuda.cu"):
        with open(os.path.join(src, name)) as f:
            t = f.read()
        t = t.replace('#include "gpt_kernels.cuh"', '#include "emu_kernels.cuh"')
        with open(os.path.join(out, "emu_" + name.replace(".cu", ".cpp")), "w") as f:
            f.write(launches(t))


main()

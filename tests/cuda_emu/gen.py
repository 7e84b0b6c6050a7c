#!/usr/bin/env python3
"""gen.py SRCDIR OUTDIR: shared/cuda's sources rewritten for cuda_emu.h.

Kernel launches K<<<cfg>>>(args) become cm_launch(K, cfg)(args) (every
thread runs the real body in turn), or cm_launch1(K_whole, cfg)(args) for
the kernels with barriers / warp shuffles, whose definitions are dropped
in favour of kernels_cpu.h's whole-grid versions."""
import os
import re
import sys

WHOLE = {"cm_layernorm_kernel", "cm_layernorm_backward_kernel", "cm_softmax_kernel",
         "cm_causal_softmax_kernel", "cm_causal_softmax_backward_kernel",
         "cm_sumsq_kernel", "cm_sum_double_kernel", "cm_kv_attention_kernel"}
DROP = WHOLE | {"cm_warp_sum", "cm_warp_max", "cm_block_reduce"}


def drop_defs(text):
    for name in DROP:
        m = re.search(r"\n(__global__|__device__) static \w+\n%s\(" % name, text)
        if not m:
            sys.exit("gen.py: no definition of %s" % name)
        end = text.index("\n}\n", m.start()) + 3
        text = text[:m.start()] + "\n" + text[end:]
    return text


def launches(text):
    def rep(m):
        name, cfg = m.group(1), m.group(2)
        if name in WHOLE:
            return "cm_launch1(%s_whole, %s)" % (name, cfg)
        return "cm_launch(%s, %s)" % (name, cfg)
    return re.sub(r"(\w+)<<<(.*?)>>>", rep, text, flags=re.S)


def main():
    src, out = sys.argv[1], sys.argv[2]
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(src, "gpt_kernels.cuh")) as f:
        k = f.read()
    k = k.replace("#include <cuda_runtime.h>\n#include <cublas_v2.h>\n",
                  '#include "cuda_emu.h"\n#include "kernels_cpu.h"\n')
    if "cuda_emu.h" not in k:
        sys.exit("gen.py: gpt_kernels.cuh includes changed")
    with open(os.path.join(out, "emu_kernels.cuh"), "w") as f:
        f.write(launches(drop_defs(k)))
    for name in ("gpt_kernels.cu", "gpt_cuda.cu"):
        with open(os.path.join(src, name)) as f:
            t = f.read()
        t = t.replace('#include "gpt_kernels.cuh"', '#include "emu_kernels.cuh"')
        with open(os.path.join(out, "emu_" + name.replace(".cu", ".cpp")), "w") as f:
            f.write(launches(t))


main()

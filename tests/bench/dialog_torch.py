#!/usr/bin/env python3
"""PyTorch baseline for `cinematch bench dialog`, same shape and protocol:
GPT-2 (pre-LN, GELU-tanh, learned positions, tied embeddings), fp32, random
weights; training tok/s at B x T with AdamW; decode tok/s with a KV cache at
batch 1/8/32 after a --prompt-len prompt; time to first token (prefill).

Debian: apt-get install --no-install-recommends python3-torch (1.13.1).
Run:  /usr/bin/python3 tests/bench/dialog_torch.py --threads 2
"""
import argparse
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

CONFIGS = {
    "dialog-tiny": dict(L=2, NH=2, C=64, maxT=64, V=512),
    "dialog-small": dict(L=6, NH=6, C=384, maxT=256, V=8192),
}


class Block(nn.Module):
    def __init__(self, C, NH):
        super().__init__()
        self.NH = NH
        self.ln1, self.ln2 = nn.LayerNorm(C), nn.LayerNorm(C)
        self.qkv, self.proj = nn.Linear(C, 3 * C), nn.Linear(C, C)
        self.fc, self.fcproj = nn.Linear(C, 4 * C), nn.Linear(4 * C, C)

    def attn(self, x, cache=None, pos=0):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        hs = C // self.NH
        q, k, v = (t.view(B, T, self.NH, hs).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            cache[0][:, :, pos:pos + T] = k
            cache[1][:, :, pos:pos + T] = v
            k, v = cache[0][:, :, :pos + T], cache[1][:, :, :pos + T]
        att = (q @ k.transpose(-2, -1)) / math.sqrt(hs)
        if T > 1:
            mask = torch.ones(T, pos + T, dtype=torch.bool).tril(pos)
            att = att.masked_fill(~mask, float("-inf"))
        y = F.softmax(att, dim=-1) @ v
        return self.proj(y.transpose(1, 2).reshape(B, T, C))

    def forward(self, x, cache=None, pos=0):
        x = x + self.attn(self.ln1(x), cache, pos)
        return x + self.fcproj(F.gelu(self.fc(self.ln2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, L, NH, C, maxT, V):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(maxT, C)
        self.blocks = nn.ModuleList(Block(C, NH) for _ in range(L))
        self.lnf = nn.LayerNorm(C)

    def forward(self, idx, caches=None, pos=0):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(pos, pos + T))
        for i, b in enumerate(self.blocks):
            x = b(x, None if caches is None else caches[i], pos)
        return self.lnf(x) @ self.wte.weight.T


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="dialog-small")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--decode", type=int, default=64)
    ap.add_argument("--decode-batches", default="1,8,32",
                    help="comma-separated decode batch sizes")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(1)
    c = CONFIGS[a.config]
    m = GPT(**c)
    print(f"torch {torch.__version__}, {a.threads} threads, {a.config} {c}")

    opt = torch.optim.AdamW(m.parameters(), lr=1e-4, weight_decay=0.1)
    x = torch.randint(c["V"], (a.batch, a.seq))
    y = torch.randint(c["V"], (a.batch, a.seq))

    def step():
        loss = F.cross_entropy(m(x).view(-1, c["V"]), y.view(-1))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
        opt.step()

    if a.steps > 0:     # --steps 0: decode and time to first token only
        step()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            step()
        dt = time.perf_counter() - t0
        print(f"train B={a.batch} T={a.seq} AdamW: {a.batch * a.seq * a.steps / dt:.0f} tok/s")

    P, D, hs = a.prompt_len, a.decode, c["C"] // c["NH"]
    rates, cpu = [], []
    batches = [int(x) for x in a.decode_batches.split(",")]
    with torch.inference_mode():
        prompt = torch.randint(c["V"], (max(batches), P))
        for nb in batches:
            caches = [(torch.zeros(nb, c["NH"], c["maxT"], hs),
                       torch.zeros(nb, c["NH"], c["maxT"], hs)) for _ in range(c["L"])]
            logits = m(prompt[:nb], caches, 0)
            tok = logits[:, -1].argmax(-1, keepdim=True)
            t0, c0 = time.perf_counter(), time.process_time()
            for i in range(D):
                logits = m(tok, caches, P + i)
                tok = logits[:, -1].argmax(-1, keepdim=True)
            rates.append(nb * D / (time.perf_counter() - t0))
            cpu.append(nb * D / (time.process_time() - c0))
        best = 1e9
        for _ in range(5):
            caches = [(torch.zeros(1, c["NH"], c["maxT"], hs),
                       torch.zeros(1, c["NH"], c["maxT"], hs)) for _ in range(c["L"])]
            t0 = time.perf_counter()
            m(prompt[:1], caches, 0)[:, -1].argmax(-1)
            best = min(best, time.perf_counter() - t0)
    print(f"decode (KV cache, prompt {P}, {D} steps): "
          + ", ".join(f"batch {b} {r:.0f} [{c:.0f}]" for b, r, c in zip(batches, rates, cpu))
          + " tok/s  [per CPU-second of the process]")
    print(f"time to first token ({P}-token prompt, best of 5): {best * 1e3:.1f} ms")


if __name__ == "__main__":
    main()

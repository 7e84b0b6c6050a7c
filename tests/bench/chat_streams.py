#!/usr/bin/python3
"""Chat serving throughput: N concurrent streaming chats through nginx.

    tests/bench/chat_streams.py [--streams 1,8,32] [--max-tokens 128]
                                [--rounds 1] [--torch-threads 1,2] [--no-torch]
                                [--client c|python]

Starts its own PostgreSQL, Redis, `cinematch infer` and nginx (2 workers) in
a temp prefix, with a dialog-small model of random weights (`cinematch lm
init`; 8192-token tokenizer trained on a synthetic corpus made here, so the
script needs no data).  For each stream count it opens that many SSE
streams at once to POST /v1/chat/completions (JWT user token; stream=true,
stream_options.include_usage) and prints aggregate tokens/s (all tokens of
all streams over the wall time from the first request to the last [DONE]),
time to first token p50/p99 and inter-token gaps p50/p99 over all streams,
and the ratio of aggregate tokens/s at the largest count to 1 stream.

Every stream generates exactly --max-tokens tokens: the random checkpoint
is edited so that end-of-turn and end-of-text can never be sampled (their
embedding rows point against a constant final-LayerNorm bias, so their
logits are about -19 while every other logit is about N(0, 0.55)); the
script checks usage.completion_tokens == max_tokens and finish_reason
"length" for every stream.  No stop strings.

In the same run, PyTorch (tests/bench/dialog_torch.py, same shape, KV cache,
batch = stream count, prompt length = the chat prompt's token count, decode
steps = --max-tokens) for the ratio ours-through-nginx / PyTorch alone.
The client (--client c, the default) is tests/bench/chat_load.c, compiled
here: one epoll thread, raw HTTP/1.1, chunked SSE scanned for content
chunks, usage and finish_reason without a JSON parser; --client python is
this script's asyncio client, which parses every chunk as JSON and costs
several times the CPU.  Each line says the client's CPU seconds.  Prints
the load average.
"""

import argparse
import asyncio
import json
import os
import random
import re
import resource
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import harness  # noqa: E402
from inferfixture import BIN, Infer  # noqa: E402
from tokens import access_token, new_secret  # noqa: E402

HERE = Path(__file__).resolve().parent
PROMPT = ("I have been thinking about that film all week, the one with the "
          "long train scene at night. Tell me what you remember about it.")


def synthetic_corpus(path, words=400_000, seed=5):
    """Plain dialogue text (one utterance per line, blank line between
    conversations) from made-up words: enough distinct frequent pairs for a
    BPE of 8192 tokens."""
    rng = random.Random(seed)
    cons, vows = "bcdfghjklmnprstvwz", "aeiou"
    syl = [c + v + e for c in cons for v in vows for e in ("", "n", "r", "s")]
    lex = ["".join(rng.choice(syl) for _ in range(rng.randint(1, 3)))
           for _ in range(12000)]
    weights = [1.0 / (i + 1) for i in range(len(lex))]   # Zipf-like
    with open(path, "w") as f:
        n = 0
        while n < words:
            for _ in range(rng.randint(2, 6)):
                k = rng.randint(3, 14)
                line = " ".join(rng.choices(lex, weights, k=k))
                f.write(line.capitalize() + rng.choice([".", "?", "!"]) + "\n")
                n += k
            f.write("\n")


def make_model(work, log):
    """dialog-small, random weights, whose end-of-turn/text cannot be
    sampled; returns the model dir (model.bin + tokenizer/)."""
    model = work / "dialog-small"
    tok = model / "tokenizer"
    model.mkdir(parents=True)
    corpus = work / "synthetic.txt"
    synthetic_corpus(corpus)
    subprocess.run([str(BIN), "train", "tokenizer", "--corpus", str(corpus),
                    "--out", str(tok), "--vocab-size", "8192"],
                   check=True, capture_output=True)
    subprocess.run([str(BIN), "lm", "init", "--config", "dialog-small", "--seed",
                    "1", "--out", str(model / "model.bin")],
                   check=True, capture_output=True)
    vocab = json.loads((tok / "vocab.json").read_text())
    specials = {t: i for t, i in vocab.items() if re.fullmatch(r"<\|[a-z]+\|>", t)}
    ckpt = model / "model.bin"
    with open(ckpt, "r+b") as f:
        hdr = struct.unpack("<256i", f.read(1024))
        maxT, V, L, NH, C, Vp = hdr[2], hdr[3], hdr[4], hdr[5], hdr[6], hdr[7]
        # wte row of each special: -a per channel; lnfb (the file's last C
        # floats): b per channel.  LayerNorm output sums to 0 over channels,
        # so those logits are -a*b*C whatever the input.
        a, b = 0.05, 1.0
        for i in specials.values():
            f.seek(1024 + i * C * 4)
            f.write(struct.pack(f"<{C}f", *([-a] * C)))
        f.seek(0, os.SEEK_END)
        f.seek(f.tell() - C * 4)
        f.write(struct.pack(f"<{C}f", *([b] * C)))
    log(f"# model: dialog-small L={L} NH={NH} C={C} maxT={maxT} V={V} random "
        f"weights; tokenizer {len(vocab)} tokens (synthetic corpus); "
        f"{', '.join(specials)} unreachable (logit {-a * b * C:.1f})")
    return model


async def one_stream(port, token, body, t_start):
    """One SSE chat; returns (ttft, [gaps], completion_tokens, prompt_tokens,
    finish_reason, t_end)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = json.dumps(body).encode()
    writer.write((f"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\n"
                  f"Authorization: Bearer {token}\r\n"
                  f"Content-Type: application/json\r\nAccept: text/event-stream\r\n"
                  f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
                  ).encode() + data)
    t0 = time.perf_counter()
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    chunked = b"chunked" in head.lower()
    if status != 200:
        rest = await reader.read(4096)
        raise RuntimeError(f"status {status}: {head!r} {rest[:300]!r}")
    first = None
    arrivals = []
    usage = finish = None
    buf = b""

    async def body_bytes():
        if not chunked:
            while True:
                b = await reader.read(65536)
                if not b:
                    return
                yield b
        while True:
            line = await reader.readuntil(b"\r\n")
            n = int(line.split(b";")[0], 16)
            if n == 0:
                return
            b = await reader.readexactly(n + 2)
            yield b[:-2]

    done = False
    async for b in body_bytes():
        now = time.perf_counter()
        buf += b
        while b"\n\n" in buf:
            ev, buf = buf.split(b"\n\n", 1)
            for line in ev.split(b"\n"):
                if not line.startswith(b"data: "):
                    continue
                payload = line[6:]
                if payload == b"[DONE]":
                    done = True
                    continue
                doc = json.loads(payload)
                if doc.get("usage"):
                    usage = doc["usage"]
                for ch in doc.get("choices", []):
                    if ch.get("delta", {}).get("content"):
                        if first is None:
                            first = now
                        arrivals.append(now)
                    if ch.get("finish_reason"):
                        finish = ch["finish_reason"]
        if done:
            break
    t_end = time.perf_counter()
    writer.close()
    if not done:
        raise RuntimeError("stream ended without [DONE]")
    gaps = [b - a for a, b in zip(arrivals, arrivals[1:])]
    return ((first or t_end) - t0, gaps, usage["completion_tokens"],
            usage["prompt_tokens"], finish, t_end)


def cpu_seconds(pids):
    """utime + stime of the processes, in seconds."""
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(f[11]) + int(f[12])
    return total / tck


def runqueue_wait(pid):
    """Seconds the process waited for a CPU while runnable (schedstat)."""
    try:
        return int(open(f"/proc/{pid}/schedstat").read().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return float("nan")


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] if xs else float("nan")


async def run_streams(port, token, n, max_tokens):
    body = {"model": "dialog", "stream": True, "max_tokens": max_tokens,
            "temperature": 1.0, "top_p": 1.0,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": PROMPT}]}
    t0 = time.perf_counter()
    res = await asyncio.gather(*[one_stream(port, token, dict(body, seed=i + 1), t0)
                                 for i in range(n)])
    wall = max(r[5] for r in res) - t0
    toks = sum(r[2] for r in res)
    bad = [r for r in res if r[2] != max_tokens or r[4] != "length"]
    if bad:
        raise SystemExit(f"{len(bad)} of {n} streams did not generate {max_tokens} "
                         f"tokens: {[(r[2], r[4]) for r in bad][:5]}")
    ttft = [r[0] for r in res]
    gaps = [g for r in res for g in r[1]]
    return dict(n=n, tps=toks / wall, wall=wall, ttft50=pct(ttft, 0.5),
                ttft99=pct(ttft, 0.99), itl50=pct(gaps, 0.5), itl99=pct(gaps, 0.99),
                prompt=res[0][3])


def build_c_client(work):
    """tests/bench/chat_load.c compiled into the work dir."""
    exe = work / "chat_load"
    subprocess.run(["cc", "-O2", "-o", str(exe), str(HERE / "chat_load.c")],
                   check=True)
    return exe


def run_streams_c(exe, port, token, n, max_tokens):
    """The same run as run_streams with the C client (chat_load.c)."""
    body = {"model": "dialog", "stream": True, "max_tokens": max_tokens,
            "temperature": 1.0, "top_p": 1.0,
            "stream_options": {"include_usage": True},
            "messages": [{"role": "user", "content": PROMPT}]}
    r = subprocess.run([str(exe), str(port), token, str(n), json.dumps(body)],
                       capture_output=True, text=True)
    res, cpu = [], 0.0
    for line in r.stdout.splitlines():
        f = line.split()
        if f[0] == "cpu":
            cpu = float(f[1]) + float(f[2])
        elif f[0] == "stream":
            if f[2] != "200":
                raise RuntimeError(f"status {f[2]}: {r.stderr[-300:]}")
            res.append((float(f[3]), [float(x) for x in f[9:]], int(f[5]),
                        int(f[6]), f[7], float(f[4])))
    if r.returncode != 0 or len(res) != n:
        raise RuntimeError(f"chat_load failed ({r.returncode}): {r.stderr[-300:]}")
    wall = max(x[5] for x in res)
    bad = [x for x in res if x[2] != max_tokens or x[4] != "length"]
    if bad:
        raise SystemExit(f"{len(bad)} of {n} streams did not generate {max_tokens} "
                         f"tokens: {[(x[2], x[4]) for x in bad][:5]}")
    ttft = [x[0] for x in res]
    gaps = [g for x in res for g in x[1]]
    return dict(n=n, tps=sum(x[2] for x in res) / wall, wall=wall,
                ttft50=pct(ttft, 0.5), ttft99=pct(ttft, 0.99),
                itl50=pct(gaps, 0.5), itl99=pct(gaps, 0.99), prompt=res[0][3],
                client_cpu=cpu)


def torch_decode(batches, prompt_len, steps, threads):
    """PyTorch's decode tok/s at each batch, or (None, why) without torch."""
    r = subprocess.run(["/usr/bin/python3", str(HERE / "dialog_torch.py"),
                        "--threads", str(threads), "--steps", "0",
                        "--prompt-len", str(prompt_len), "--decode", str(steps),
                        "--decode-batches", ",".join(str(b) for b in batches)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        return None, (r.stderr.strip().splitlines() or ["?"])[-1]
    out = {}
    for b in batches:
        m = re.search(r"batch %d ([0-9.]+) \[([0-9.]+)\]" % b, r.stdout)
        out[b] = (float(m.group(1)), float(m.group(2)))
    return out, None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", default="1,8,32")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=1,
                    help="runs per stream count; the best is reported")
    ap.add_argument("--torch-threads", default="1,2")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--infer-arg", action="append", default=[],
                    help="extra argument for cinematch infer (repeatable)")
    ap.add_argument("--client", choices=("c", "python"), default="c",
                    help="load client: tests/bench/chat_load.c (default) or "
                    "this script's asyncio one")
    args = ap.parse_args()
    counts = [int(x) for x in args.streams.split(",")]

    def log(s):
        print(s, flush=True)

    work = harness.make_workdir("cinematch-bench-streams-")
    backends = harness.Backends(work)
    backends.start()
    infer = ngx = None
    try:
        model = make_model(work, log)
        infer = Infer(work, name="infer-streams", slots=max(64, 2 * max(counts)),
                      extra=["--dialog", str(model), "--dialog-version", "1",
                             "--max-seqs", str(max(counts)), *args.infer_arg])
        infer.start()
        secret = work / "jwt.secret"
        token = access_token(new_secret(BIN, secret), sub="42")
        ngx = harness.Nginx(work, pg=backends.pg, redis=backends.redis, workers=2,
                            http_extra=infer.directive
                            + f"\ncinematch_jwt_secret_file {secret};",
                            name="nginx-streams")
        ngx.start()
        harness.wait_for(lambda: ngx.json("GET", "/ready")[0] == 200, timeout=20,
                         what="ready with the dialog model")
        exe = build_c_client(work) if args.client == "c" else None

        def one_run(n, max_tokens):
            if exe is not None:
                return run_streams_c(exe, ngx.port, token, n, max_tokens)
            u0 = resource.getrusage(resource.RUSAGE_SELF)
            r = asyncio.run(run_streams(ngx.port, token, n, max_tokens))
            u1 = resource.getrusage(resource.RUSAGE_SELF)
            r["client_cpu"] = (u1.ru_utime - u0.ru_utime
                               + u1.ru_stime - u0.ru_stime)
            return r

        one_run(1, 8)                                               # warm up
        log(f"# {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} "
            f"{os.getloadavg()[1]:.1f} {os.getloadavg()[2]:.1f}; nginx 2 workers, "
            f"infer --max-seqs {max(counts)}, max_tokens {args.max_tokens}, "
            f"temperature 1, top_k 40 (default), rounds {args.rounds}; client "
            + ("tests/bench/chat_load.c" if exe else "asyncio (this script)"))
        results = {}
        for n in counts:
            best = None
            for _ in range(args.rounds):
                workers = ngx.worker_pids()
                c0 = cpu_seconds([infer.proc.pid])
                w0 = cpu_seconds(workers)
                q0 = runqueue_wait(infer.proc.pid)
                r = one_run(n, args.max_tokens)
                r["infer_cpu"] = cpu_seconds([infer.proc.pid]) - c0
                r["nginx_cpu"] = cpu_seconds(workers) - w0
                r["infer_wait"] = runqueue_wait(infer.proc.pid) - q0
                if best is None or r["tps"] > best["tps"]:
                    best = r
            results[n] = best
            log(f"streams {n:3d}: {best['tps']:7.0f} tok/s aggregate  "
                f"TTFT p50 {best['ttft50'] * 1e3:7.1f} ms p99 "
                f"{best['ttft99'] * 1e3:7.1f} ms  inter-token p50 "
                f"{best['itl50'] * 1e3:6.1f} ms p99 {best['itl99'] * 1e3:6.1f} ms  "
                f"(prompt {best['prompt']} tokens, {best['wall']:.2f} s; CPU s: "
                f"infer {best['infer_cpu']:.2f} (+{best['infer_wait']:.2f} waiting "
                f"for a CPU), nginx {best['nginx_cpu']:.2f}, client "
                f"{best['client_cpu']:.2f}; "
                f"[{n * args.max_tokens / max(best['infer_cpu'], 1e-9):.0f} tok per "
                f"infer CPU-s])")
        lo, hi = min(counts), max(counts)
        if lo != hi:
            log(f"aggregate tok/s {hi} streams / {lo} stream: "
                f"{results[hi]['tps'] / results[lo]['tps']:.1f}x")
        if not args.no_torch:
            prompt = results[lo]["prompt"]
            for th in [int(x) for x in args.torch_threads.split(",")]:
                tr, err = torch_decode(counts, prompt, args.max_tokens, th)
                if tr is None:
                    log(f"# PyTorch not run: {err}")
                    break
                log(f"PyTorch {th} thread(s), decode only (prompt {prompt}, "
                    f"{args.max_tokens} steps): " + ", ".join(
                        f"batch {b} {tr[b][0]:.0f} [{tr[b][1]:.0f}]" for b in counts)
                    + " tok/s [per CPU-s]")
                log(f"ours through nginx / PyTorch {th} thread(s), wall: " + ", ".join(
                    f"{b} streams {results[b]['tps'] / tr[b][0]:.2f}x" for b in counts)
                    + "; per CPU-s (infer vs torch process): " + ", ".join(
                    f"{b} {b * args.max_tokens / max(results[b]['infer_cpu'], 1e-9) / tr[b][1]:.2f}x"
                    for b in counts))
        log(f"# load average at the end {os.getloadavg()[0]:.1f}")
    finally:
        if ngx is not None:
            ngx.stop()
        if infer is not None:
            infer.stop()
        backends.stop()
        if not os.environ.get("CINEMATCH_KEEP_TMP"):
            shutil.rmtree(work, ignore_errors=True)    # ~100 MB of model


if __name__ == "__main__":
    main()

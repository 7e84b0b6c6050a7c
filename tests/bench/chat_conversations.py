#!/usr/bin/python3
"""What persistence costs a chat message: the same generation through
POST /v1/chat/completions (nothing stored) and through
POST /api/v1/conversations/{id}/messages (user message stored first,
context from Redis or PostgreSQL, reply stored, events), JSON answers,
same prompt, same seed, same tiny model, on the same nginx in the same run.

    tests/bench/chat_conversations.py [--requests 200] [--concurrency 1,8] [--rounds 2]

Each request of the conversation case goes to a fresh conversation (made
beforehand, not timed), so both prompts are the one user turn.  Prints
requests/s and latency p50/p99 of each case and the ratio conversation /
openai; rounds alternate so that drift on a shared machine hits both, and
the best round of each is reported.  Starts its own PostgreSQL, Redis,
cinematch infer (dialog-tiny, trained for 20 steps) and nginx (1 worker).
"""

import argparse
import concurrent.futures
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import harness  # noqa: E402
from inferfixture import BIN, Infer  # noqa: E402
from tokens import access_token, new_secret  # noqa: E402

DB = "cm_bench_chat"


def post(ngx, token, path, body):
    t0 = time.perf_counter()
    status, _, raw = ngx.request("POST", path, body,
                                 {"Authorization": f"Bearer {token}"}, timeout=60)
    dt = time.perf_counter() - t0
    if status not in (200, 201):
        raise SystemExit(f"{path}: {status} {raw[:200]!r}")
    return dt


def run_case(ngx, token, paths, body, concurrency):
    t0 = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(max_workers=concurrency) as pool:
        lat = sorted(pool.map(lambda p: post(ngx, token, p, body), paths))
    wall = time.perf_counter() - t0
    return len(paths) / wall, lat[len(lat) // 2] * 1e3, lat[int(len(lat) * 0.99)] * 1e3


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--concurrency", default="1,8")
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    work = harness.make_workdir("cinematch-bench-chat-")
    backends = harness.Backends(work)
    backends.start()
    infer = ngx = None
    try:
        pg = backends.pg
        pg.psql(f"DROP DATABASE IF EXISTS {DB}", dbname="postgres")
        pg.psql(f"CREATE DATABASE {DB}", dbname="postgres")
        conninfo = (f"host=127.0.0.1 port={pg.port} user={pg.user} dbname={DB} "
                    "sslmode=disable connect_timeout=5")
        subprocess.run([str(BIN), "migrate", "--dsn", conninfo, "--dir",
                        str(harness.ROOT / "sql")], check=True, capture_output=True)
        uid = pg.psql("INSERT INTO users (email, password_hash) VALUES "
                      "('bench@example.com', 'x') RETURNING id", dbname=DB).strip()

        class Db:
            pass
        db = Db()
        db.conninfo = conninfo

        model = work / "dialog-tiny"
        subprocess.run([str(BIN), "train", "dialog", "--corpus",
                        str(harness.ROOT / "tests/fixtures/dialog/plain.txt"),
                        "--out", str(model), "--steps", "20", "--config",
                        "dialog-tiny"], check=True, capture_output=True)
        infer = Infer(work, name="infer-bench", extra=[
            "--dialog", str(model), "--dialog-version", "1", "--max-seqs", "16"])
        infer.start()
        secret = work / "jwt.secret"
        token = access_token(new_secret(BIN, secret), sub=uid)
        ngx = harness.Nginx(work, pg=db, redis=backends.redis, workers=1,
                            http_extra=infer.directive
                            + f"\ncinematch_jwt_secret_file {secret};",
                            name="nginx-bench", pg_pool=4)
        ngx.start()
        harness.wait_for(lambda: ngx.json("GET", "/ready")[0] == 200, timeout=15,
                         what="ready")

        body = {"max_tokens": 16, "seed": 7, "temperature": 0.8}
        oa = dict(body, model="dialog",
                  messages=[{"role": "user", "content": "Where are you going?"}])
        cv = dict(body, content="Where are you going?", stream=False)

        def conversations(n):
            out = []
            for _ in range(n):
                _, _, doc = ngx.json("POST", "/api/v1/conversations", {},
                                     {"Authorization": f"Bearer {token}"})
                out.append(f"/api/v1/conversations/{doc['conversation']['id']}/messages")
            return out

        post(ngx, token, "/v1/chat/completions", oa)          # warm up
        print(f"# {args.requests} requests per case, rounds {args.rounds}, "
              f"nginx 1 worker, dialog-tiny, max_tokens 16")
        for c in [int(x) for x in args.concurrency.split(",")]:
            best = {}
            for _ in range(args.rounds):
                for name in ("openai", "conversation"):
                    paths = (["/v1/chat/completions"] * args.requests
                             if name == "openai" else conversations(args.requests))
                    r = run_case(ngx, token, paths, oa if name == "openai" else cv, c)
                    if name not in best or r[0] > best[name][0]:
                        best[name] = r
            for name, (rps, p50, p99) in best.items():
                print(f"concurrency {c:3d}  {name:13s} {rps:8.1f} req/s  "
                      f"p50 {p50:7.2f} ms  p99 {p99:7.2f} ms")
            o, v = best["openai"], best["conversation"]
            print(f"concurrency {c:3d}  ratio conversation/openai: req/s "
                  f"{v[0] / o[0]:.2f}, p50 latency {v[1] / o[1]:.2f}")
    finally:
        if ngx is not None:
            ngx.stop()
        if infer is not None:
            infer.stop()
        backends.stop()


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""wrk against GET /health through the cinematch module vs the same nginx
answering a static `return 200` of the same size, in the same run.  The
baseline also sends X-Request-ID ($request_id), as the module does.

    tests/bench/ngx_health.py [--seconds 4] [--connections 32] [--rounds 2]

Prints requests/s for each and their ratio (module / baseline).  Rounds
alternate baseline and module so that drift on a shared machine hits both;
the best round of each is reported.  Needs wrk and the built module; starts
its own PostgreSQL, Redis and nginx (1 worker) in a temp dir.
"""

import argparse
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import harness  # noqa: E402


def wrk(port, path, seconds, connections):
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
                          "--latency", f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)
    if re.search(r"Non-2xx", out):
        raise SystemExit(f"non-2xx answers from {path}:\n{out}")
    return rps, p50, p99


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    reason = harness.missing_prerequisites()
    if reason or shutil.which("wrk") is None:
        raise SystemExit(f"cannot run: {reason or 'wrk not installed'}")

    with harness.Stack(workers=1, log_level="warn") as s:
        health = s.nginx.request("GET", "/health")[2]
        body = json.dumps(json.loads(health), separators=(",", ":"))
        s.nginx.server_extra = (
            "location = /baseline {\n"
            "    default_type application/json;\n"
            "    add_header X-Request-ID $request_id;\n"
            f"    return 200 '{body}';\n"
            "}")
        s.nginx.stop()
        s.nginx.start()
        assert s.nginx.request("GET", "/baseline")[0] == 200

        best = {"/baseline": None, "/health": None}
        for _ in range(args.rounds):
            for path in best:
                r = wrk(s.nginx.port, path, args.seconds, args.connections)
                if best[path] is None or r[0] > best[path][0]:
                    best[path] = r

    print(f"wrk -t1 -c{args.connections} -d{args.seconds}s, nginx 1 worker, "
          f"best of {args.rounds} alternating rounds")
    print(f"{'path':<28} {'req/s':>10} {'p50':>9} {'p99':>9}")
    for path, label in (("/baseline", "return 200 (baseline)"),
                        ("/health", "cinematch /health")):
        rps, p50, p99 = best[path]
        print(f"{label:<28} {rps:>10.0f} {p50:>9} {p99:>9}")
    print(f"ratio module/baseline: {best['/health'][0] / best['/baseline'][0]:.2f}")


if __name__ == "__main__":
    main()

#!/usr/bin/python3
"""wrk against the auth step: one no-op endpoint (/internal/auth/*, which
answers the caller as JSON) anonymous, with a JWT, and with a JWT plus a
rate limit, on the same nginx in the same run.

    tests/bench/ngx_auth.py [--seconds 4] [--connections 32] [--rounds 2]

  anonymous        GET /internal/auth/whoami, no credentials, no limit
  jwt              the same with Authorization: Bearer <JWT>: verify + the
                   logout denylist (one Redis EXISTS)
  anonymous+limit  the same path on a server whose location has
                   cinematch_rate_limit (high enough never to refuse): the
                   per-IP bucket (one EVALSHA)
  jwt+limit        ... with the JWT: verify, then one EVALSHA that checks
                   the denylist and takes from the user's bucket

Prints requests/s and latency of each and the ratios to anonymous.  Rounds
alternate so that drift on a shared machine hits all three; the best round
of each is reported.  Also the CPU time the nginx worker and redis-server
spent per request (utime + stime from /proc over the run, median of the
rounds): on a loaded machine throughput swings with everyone else's work,
CPU per request much less.  Starts its own PostgreSQL, Redis and nginx (1 worker).
"""

import argparse
import base64
import hashlib
import hmac
import json
import os
import re
import statistics
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import harness  # noqa: E402

BIN = harness.ROOT / "build" / "cinematch"


def cpu_s(pid):
    """utime + stime of a process in seconds (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(port, path, seconds, connections, extra):
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
                          "--latency", *extra,
                          f"http://127.0.0.1:{port}{path}"],
                         capture_output=True, text=True, check=True).stdout
    if re.search(r"Non-2xx", out):
        raise SystemExit(f"non-2xx answers from {path}:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)
    n = int(re.search(r"(\d+) requests in", out).group(1))
    return rps, p50, p99, n


def profile(s, cases, path, args, workdir):
    """One wrk of args.perf with perf sampling the nginx worker."""
    port, extra = cases[args.perf]
    worker = next(iter(s.nginx.worker_pids()))
    data = Path(tempfile.gettempdir()) / f"ngx_auth-perf-{args.perf}.data"
    rec = subprocess.Popen(["perf", "record", "-g", "-o", str(data),
                            "-p", str(worker)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.3)
    wrk(port, path, args.seconds, args.connections, extra)
    rec.send_signal(2)
    rec.wait()
    report = [f"({data}; `perf report -i` it for more)"]
    for sort, limit in (("dso", "1"), ("dso,symbol", "0.5")):
        out = subprocess.run(["perf", "report", "-i", str(data),
                              "--no-children", "--percent-limit", limit,
                              "--stdio", "--sort", sort, "-g", "none"],
                             capture_output=True, text=True).stdout
        report += [ln.rstrip(" -") for ln in out.splitlines()
                   if ln.strip() and not ln.startswith("#")]
    return "\n".join(report)


def token(secret):
    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    now = int(time.time())
    h = {"alg": "HS256", "typ": "JWT",
         "kid": hashlib.sha256(secret).hexdigest()[:16]}
    c = {"iss": "cinematch", "aud": "cinematch-api", "sub": "42",
         "role": "user", "jti": str(uuid.uuid4()), "iat": now,
         "exp": now + 3600, "sid": str(uuid.uuid4())}
    s = f"{b64(json.dumps(h).encode())}.{b64(json.dumps(c).encode())}"
    return s + "." + b64(hmac.new(secret, s.encode(), hashlib.sha256).digest())


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=4)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--perf", metavar="CASE",
                    help="after the rounds, one more wrk of CASE under "
                         "`perf record -g -p <worker>`; prints the top of "
                         "the report by DSO and symbol (needs perf)")
    args = ap.parse_args()

    reason = harness.missing_prerequisites()
    if reason or shutil.which("wrk") is None:
        raise SystemExit(f"cannot run: {reason or 'wrk not installed'}")

    workdir = harness.make_workdir("cinematch-bench-auth-")
    secret_file = workdir / "jwt.secret"
    subprocess.run([str(BIN), "jwt-secret", "generate", "--out",
                    str(secret_file)], check=True, capture_output=True)
    tok = token(secret_file.read_bytes().strip())
    auth = ["-H", f"Authorization: Bearer {tok}"]

    limited = harness.free_port()
    with harness.Stack(workdir=workdir, workers=1, log_level="warn",
                       http_extra=(
                           f"cinematch_jwt_secret_file {secret_file};\n"
                           f"server {{ listen 127.0.0.1:{limited};\n"
                           "  location / { cinematch; cinematch_echo on;\n"
                           "    cinematch_rate_limit 1000000r/s burst=100000; }\n"
                           "}"),
                       location_extra="cinematch_echo on;") as s:
        path = "/internal/auth/whoami"
        cases = {
            "anonymous": (s.nginx.port, []),
            "jwt": (s.nginx.port, auth),
            "anonymous+limit": (limited, []),
            "jwt+limit": (limited, auth),
        }
        for name, (port, extra) in cases.items():
            cmd = ["curl", "-sf", "-o", "/dev/null", "-D", "-"]
            if extra:
                cmd += extra
            out = subprocess.run(cmd + [f"http://127.0.0.1:{port}{path}"],
                                 capture_output=True, text=True).stdout
            assert " 200" in out.splitlines()[0], (name, out)
            assert ("x-ratelimit-limit" in out.lower()) == ("limit" in name), out

        worker = next(iter(s.nginx.worker_pids()))
        redis = s.redis.proc.pid
        best = {name: None for name in cases}
        cpu = {name: ([], []) for name in cases}
        for _ in range(args.rounds):
            for name, (port, extra) in cases.items():
                w0, r0 = cpu_s(worker), cpu_s(redis)
                r = wrk(port, path, args.seconds, args.connections, extra)
                cpu[name][0].append((cpu_s(worker) - w0) / r[3] * 1e6)
                cpu[name][1].append((cpu_s(redis) - r0) / r[3] * 1e6)
                if best[name] is None or r[0] > best[name][0]:
                    best[name] = r
        report = profile(s, cases, path, args, workdir) if args.perf else None


    print(f"wrk -t1 -c{args.connections} -d{args.seconds}s, nginx 1 worker, "
          f"best of {args.rounds} alternating rounds")
    print(f"{'case':<16} {'req/s':>10} {'p50':>9} {'p99':>9} "
          f"{'vs anonymous':>13} {'nginx us/req':>13} {'redis us/req':>13}")
    for name in best:
        rps, p50, p99, _ = best[name]
        base = best["anonymous+limit" if name == "jwt+limit"
                    else "anonymous"][0]
        print(f"{name:<16} {rps:>10.0f} {p50:>9} {p99:>9} {rps / base:>13.2f}"
              f" {statistics.median(cpu[name][0]):>13.1f}"
              f" {statistics.median(cpu[name][1]):>13.1f}")
    print("ratios: jwt+limit against anonymous+limit (same location), "
          "others against anonymous")
    print(f"jwt+limit / anonymous (no limit): "
          f"{best['jwt+limit'][0] / best['anonymous'][0]:.2f}")
    if report is not None:
        print(f"perf record -g -p <worker> during {args.perf}:\n{report}")


if __name__ == "__main__":
    main()

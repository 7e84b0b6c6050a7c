#!/usr/bin/python3
"""What a Prometheus scrape costs: wrk against GET /metrics (shared-zone
counters, an inference daemon's statistics block and model table, and one
PostgreSQL query for the latest drift report) vs GET /health on the same
nginx, in the same run.

    tests/bench/ngx_metrics.py [--seconds 4] [--connections 4] [--rounds 2]

Prints requests/s and latency for each, their ratio, and the size of the
/metrics text.  Rounds alternate the two paths so that drift on a shared
machine hits both; the best round of each is reported.  Needs wrk and the
built module and binary; starts its own PostgreSQL (migrated, with one
drift report), Redis, `cinematch infer` (no models) and nginx (1 worker).
"""

import argparse
import re
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import harness  # noqa: E402
from inferfixture import BIN, Infer  # noqa: E402


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
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    reason = harness.missing_prerequisites()
    if reason or shutil.which("wrk") is None:
        raise SystemExit(f"cannot run: {reason or 'wrk not installed'}")

    workdir = harness.make_workdir("cinematch-bench-metrics-")
    backends = harness.Backends(workdir)
    infer = Infer(workdir, name="infer-bench", slots=16)
    nginx = None
    try:
        backends.start()
        subprocess.run([str(BIN), "migrate", "--dsn", backends.pg.conninfo, "--dir",
                        str(harness.ROOT / "sql")], check=True, capture_output=True)
        backends.pg.psql("INSERT INTO drift_reports (baseline_rows, current_rows,"
                         " ks_statistic, ks_pvalue, ks_method, psi, alert)"
                         " VALUES (1000, 100, 0.1, 0.2, 'exact', 0.05, false)")
        infer.start()
        nginx = harness.Nginx(workdir, pg=backends.pg, redis=backends.redis, workers=1,
                              log_level="warn", http_extra=infer.directive)
        nginx.start()
        harness.wait_for(lambda: nginx.json("GET", "/ready")[0] == 200, timeout=10,
                         what="ready")
        text = nginx.request("GET", "/metrics")[2].decode()
        assert "cinematch_drift_psi 0.05" in text, "drift gauges missing"
        assert "cinematch_infer_running_sequences{" in text, "daemon gauges missing"

        best = {"/health": None, "/metrics": None}
        for _ in range(args.rounds):
            for path in best:
                r = wrk(nginx.port, path, args.seconds, args.connections)
                if best[path] is None or r[0] > best[path][0]:
                    best[path] = r
    finally:
        if nginx is not None:
            nginx.stop()
        infer.stop()
        backends.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    print(f"wrk -t1 -c{args.connections} -d{args.seconds}s, nginx 1 worker, "
          f"best of {args.rounds} alternating rounds; /metrics is "
          f"{len(text)} bytes, {sum(1 for ln in text.splitlines() if not ln.startswith('#'))}"
          " samples")
    print(f"{'path':<10} {'req/s':>10} {'p50':>9} {'p99':>9}")
    for path in best:
        rps, p50, p99 = best[path]
        print(f"{path:<10} {rps:>10.0f} {p50:>9} {p99:>9}")
    print(f"ratio /metrics / /health: {best['/metrics'][0] / best['/health'][0]:.2f}")


if __name__ == "__main__":
    main()

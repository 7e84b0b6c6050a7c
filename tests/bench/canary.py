#!/usr/bin/python3
"""What a canary costs /recommend: wrk against POST /api/v1/recommend
(Cache-Control: no-cache, so the daemon scores every request; user_id
rotating over the synthetic dataset's users) with a canary loaded but
serving nobody (share 0: the baseline, one SGEMM per batch) against the
same canary serving half the users (share 0.5: each batch split in two,
one SGEMM per version), in the same run.

    tests/bench/canary.py [--seconds 5] [--connections 32] [--rounds 2]

Rounds alternate the two shares so that drift on a shared machine hits
both; the best round of each is reported with the ratio.  Any non-2xx
answer fails the run.  Starts its own PostgreSQL, Redis, `cinematch
infer` and nginx (2 workers) in a temp dir; needs wrk and the build.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import harness  # noqa: E402
from inferfixture import BIN, Infer  # noqa: E402
from tokens import access_token, new_secret  # noqa: E402

DB = "cm_bench_canary"
USERS = 600

LUA = """
local n = 0
request = function()
    n = n + 1
    local body = string.format('{"user_id": %d, "k": 10}', 1 + n % %USERS%)
    return wrk.format("POST", "/api/v1/recommend", {
        ["Content-Type"] = "application/json",
        ["Cache-Control"] = "no-cache",
        ["Authorization"] = "Bearer %TOKEN%"}, body)
end
"""


class _Db:
    def __init__(self, pg):
        self.pg = pg

    @property
    def conninfo(self):
        return (f"host=127.0.0.1 port={self.pg.port} user={self.pg.user} "
                f"dbname={DB} sslmode=disable connect_timeout=5")


def wrk(port, script, seconds, connections):
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s",
                          "--latency", "-s", script,
                          f"http://127.0.0.1:{port}/"],
                         capture_output=True, text=True, check=True).stdout
    if re.search(r"Non-2xx", out):
        raise SystemExit(f"non-2xx answers:\n{out}")
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M).group(1)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M).group(1)
    return rps, p50, p99


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=int, default=5)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()

    reason = harness.missing_prerequisites()
    if reason or shutil.which("wrk") is None:
        raise SystemExit(f"cannot run: {reason or 'wrk not installed'}")

    work = harness.make_workdir()
    backends = harness.Backends(work)
    backends.start()
    inf = ngx = None
    try:
        db = _Db(backends.pg)
        env = dict(os.environ, CINEMATCH_PG_DSN=db.conninfo,
                   CINEMATCH_MODEL_STORE=str(work / "models"))

        def run(*a):
            return subprocess.run([str(BIN), *a], check=True, text=True,
                                  capture_output=True, env=env).stdout

        backends.pg.psql(f"CREATE DATABASE {DB}", dbname="postgres")
        run("synth", "--out", str(work / "data"), "--users", str(USERS),
            "--items", "3000", "--ratings", "60000", "--seed", "7")
        run("migrate")
        run("ingest", "--data", str(work / "data"), "--target", "ratings")
        versions = []
        for i, stage in ((1, "none"), (2, "staging")):
            art = work / f"v{i}.cmrs"
            run("train", "recsys", "--data", str(work / "data"), "--out",
                str(art), "--factors", "32", "--iters", "3")
            out = run("model", "register", "--name", "recsys", "--artifact",
                      str(art), "--stage", stage)
            versions.append(re.findall(r"\d+", out)[-1])
        run("model", "promote", "--name", "recsys", "--version", versions[0])
        run("model", "canary", "recsys", versions[1], "--share", "0")

        secret = new_secret(BIN, work / "jwt.secret")
        inf = Infer(work, name="infer-bench", extra=["--dsn", db.conninfo])
        inf.start()
        ngx = harness.Nginx(work, pg=db, redis=backends.redis,
                            name="nginx-bench", workers=2, http_extra=(
                                inf.directive + "\ncinematch_jwt_secret_file"
                                f" {work / 'jwt.secret'};"))
        ngx.start()
        token = access_token(secret, role="admin", sub="1")
        script = work / "recommend.lua"
        script.write_text(LUA.replace("%USERS%", str(USERS))
                          .replace("%TOKEN%", token))

        def served():
            _, _, ready = ngx.json("GET", "/ready")
            return {m["version"]: m.get("canary_share")
                    for m in ready["checks"]["inference"]["models"]}

        def share(s):
            run("model", "canary", "recsys", versions[1], "--share", s)
            harness.wait_for(lambda: served().get(versions[1]) == float(s),
                             timeout=20, what=f"share {s} served")
            time.sleep(0.5)

        best = {}
        for r in range(args.rounds):
            for s in ("0", "0.5"):
                share(s)
                rps, p50, p99 = wrk(ngx.port, str(script), args.seconds,
                                    args.connections)
                print(f"round {r + 1} share {s}: {rps:,.0f} req/s"
                      f" p50 {p50} p99 {p99}", flush=True)
                if rps > best.get(s, (0,))[0]:
                    best[s] = (rps, p50, p99)
        load = os.getloadavg()[0]
        print(json.dumps({"share_0": best["0"], "share_0.5": best["0.5"],
                          "ratio": round(best["0.5"][0] / best["0"][0], 3),
                          "load_avg_1m": load}))
    finally:
        if ngx is not None:
            ngx.stop()
        if inf is not None:
            inf.stop()
        backends.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

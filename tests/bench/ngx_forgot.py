#!/usr/bin/python3
"""Does POST /api/v1/auth/forgot-password take the same time whether or not
the address has an account?  Latency of the two, interleaved, through nginx
against its own PostgreSQL (sql/001 + sql/007) and Redis.

    tests/bench/ngx_forgot.py [--requests 200]

Each request uses a fresh address of the account (the known case) or a
never-registered one, so the per-account minute throttle never hides the
insert path: known requests pay the token and outbox inserts.  Prints the
median and p90 of each and their ratio; no mail is sent (no mailer runs).
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import harness  # noqa: E402

ROOT = harness.ROOT
BIN = ROOT / "build" / "cinematch"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200)
    args = ap.parse_args()

    reason = harness.missing_prerequisites()
    if reason:
        raise SystemExit(f"cannot run: {reason}")

    workdir = harness.make_workdir("cinematch-bench-forgot-")
    secret = workdir / "jwt.secret"
    subprocess.run([str(BIN), "jwt-secret", "generate", "--out", str(secret)],
                   check=True, capture_output=True)
    with harness.Stack(workdir=workdir, workers=1, log_level="warn",
                       http_extra=f"cinematch_jwt_secret_file {secret};") as s:
        for f in ("001_users_auth.sql", "007_email_tokens.sql"):
            s.pg.psql((ROOT / "sql" / f).read_text())
        n = args.requests
        # accounts made in SQL: register would spend argon2id per account
        s.pg.psql("INSERT INTO users (email, password_hash) SELECT "
                  f"'k' || i || '@example.com', '!' FROM generate_series(1, {n}) i")
        times = {"known": [], "unknown": []}
        for i in range(1, n + 1):
            for name, email in (("known", f"k{i}@example.com"),
                                ("unknown", f"u{i}@example.com")):
                body = json.dumps({"email": email}).encode()
                t0 = time.perf_counter()
                status, _, _ = s.nginx.request(
                    "POST", "/api/v1/auth/forgot-password", body=body,
                    headers={"Content-Type": "application/json"})
                times[name].append((time.perf_counter() - t0) * 1e3)
                assert status == 202, status
        queued = s.pg.psql("SELECT count(*) FROM mail_outbox").strip()

    print(f"{n} requests each, interleaved, nginx 1 worker; "
          f"{queued} reset mails queued")
    med = {}
    for name, t in times.items():
        t.sort()
        med[name] = statistics.median(t)
        print(f"{name:<8} median {med[name]:6.2f} ms   p90 "
              f"{t[int(len(t) * 0.9)]:6.2f} ms")
    print(f"known / unknown median: {med['known'] / med['unknown']:.2f}")


if __name__ == "__main__":
    main()

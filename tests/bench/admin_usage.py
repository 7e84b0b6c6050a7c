#!/usr/bin/python3
"""Latency of the admin views over a request log of realistic size, through
nginx and the module, against a baseline measured in the same run.

    tests/bench/admin_usage.py [--rows 1000000] [--messages 100000] [--reps 5]

Fills a fresh database with --rows request_logs rows spread over the last
30 days (200 users, 50 API keys on a third of the requests, 3 models, 3 %
errors) and --messages assistant messages with token counts, then times
GET requests one at a time (median of --reps, after one warm-up):

  health            GET /health: no database (the floor of the HTTP path)
  runs              GET /api/v1/admin/runs: one small query (the floor of a
                    PostgreSQL round trip through the module)
  usage ...         GET /api/v1/admin/usage with the groupings and ranges
                    the dashboard asks for

Prints milliseconds and the ratio to `runs`.  Starts its own PostgreSQL,
Redis and nginx (1 worker, a 60 s query timeout so that slow shapes are
measured rather than cut off).
"""

import argparse
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import harness  # noqa: E402
import tokens  # noqa: E402

BIN = harness.ROOT / "build" / "cinematch"


class Db:
    def __init__(self, pg, name):
        self.pg, self.dbname = pg, name

    @property
    def conninfo(self):
        return (f"host=127.0.0.1 port={self.pg.port} user={self.pg.user} "
                f"dbname={self.dbname} sslmode=disable connect_timeout=5")

    def sql(self, text):
        return self.pg.psql(text, dbname=self.dbname).strip()


def fill(db, rows, messages):
    db.sql("""INSERT INTO users (email, password_hash)
              SELECT 'u' || i || '@example.com', 'x'
              FROM generate_series(1, 200) i""")
    db.sql("""INSERT INTO api_keys (user_id, name, prefix, key_sha256)
              SELECT u.id, 'key' || u.id, 'pfx' || lpad(u.id::text, 6, '0'),
                     encode(sha256(u.id::text::bytea), 'hex')
              FROM users u ORDER BY u.id LIMIT 50""")
    db.sql("SELECT request_logs_ensure_partition((now() - interval '1 month')::date)")
    db.sql(f"""
        INSERT INTO request_logs (ts, request_id, method, route, path, status,
                                  duration_ms, user_id, api_key_id, model_name)
        SELECT now() - (i % 2592000) * interval '1 second', 'r' || i, 'POST',
               '/api/v1/recommend', '/api/v1/recommend',
               CASE WHEN i % 33 = 0 THEN 500 WHEN i % 37 = 0 THEN 429
                    ELSE 200 END,
               3, (SELECT min(id) FROM users) + i % 200,
               CASE WHEN i % 3 = 0 THEN (SELECT min(id) FROM api_keys) + i % 50
               END,
               (ARRAY['recsys', 'dialog', 'recsys-canary'])[1 + i % 3]
        FROM generate_series(1, {rows}) i""")
    db.sql("""INSERT INTO conversations (user_id, model_name)
              SELECT id, 'dialog' FROM users""")
    db.sql(f"""
        INSERT INTO messages (conversation_id, role, content, status, error,
                              prompt_tokens, completion_tokens, request_id,
                              created_at)
        SELECT c.id, 'assistant', 'x', 'complete', NULL, 20 + i % 50,
               10 + i % 90, 'r' || (i * 3),
               now() - (i % 2592000) * interval '1 second'
        FROM generate_series(1, {messages}) i
        JOIN LATERAL (SELECT id FROM conversations
                      ORDER BY id OFFSET i % 200 LIMIT 1) c ON true""")
    db.sql("ANALYZE")


def timed(ngx, path, headers, reps):
    status, _, body = ngx.request("GET", path, headers=headers, timeout=120)
    if status != 200:
        raise SystemExit(f"{path}: {status} {body[:300]!r}")
    ms = []
    for _ in range(reps):
        t = time.perf_counter()
        status, _, _ = ngx.request("GET", path, headers=headers, timeout=120)
        ms.append((time.perf_counter() - t) * 1000)
        assert status == 200, path
    return statistics.median(ms)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1000000)
    ap.add_argument("--messages", type=int, default=100000)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()

    work = harness.make_workdir("cinematch-bench-admin-")
    backends = harness.Backends(work)
    ngx = None
    try:
        backends.start()
        db = Db(backends.pg, "bench_admin")
        backends.pg.psql("CREATE DATABASE bench_admin", dbname="postgres")
        subprocess.run([str(BIN), "migrate", "--dsn", db.conninfo, "--dir",
                        str(harness.ROOT / "sql")], check=True,
                       capture_output=True)
        t = time.perf_counter()
        fill(db, a.rows, a.messages)
        print(f"filled {a.rows} request_logs rows, {a.messages} messages in"
              f" {time.perf_counter() - t:.1f} s")
        secret_path = work / "jwt.secret"
        secret = tokens.new_secret(BIN, secret_path)
        admin = db.sql("INSERT INTO users (email, password_hash, role) VALUES"
                       " ('admin@example.com', 'x', 'admin') RETURNING id")
        admin = admin.split()[0]
        ngx = harness.Nginx(work, pg=db, redis=backends.redis, workers=1,
                            pg_timeout="60s", name="nginx-bench-admin",
                            http_extra=f"cinematch_jwt_secret_file {secret_path};")
        ngx.start()
        h = {"Authorization": "Bearer "
             + tokens.access_token(secret, role="admin", sub=admin)}
        cases = [
            ("health", "/health"),
            ("runs", "/api/v1/admin/runs"),
            ("usage user, 7 days", "/api/v1/admin/usage?group_by=user"),
            ("usage api_key, 7 days", "/api/v1/admin/usage?group_by=api_key"),
            ("usage model, 7 days by hour",
             "/api/v1/admin/usage?group_by=model&interval=hour"),
            ("usage user, 30 days by day",
             "/api/v1/admin/usage?group_by=user&interval=day&from="
             + time.strftime("%Y-%m-%d", time.gmtime(time.time() - 31 * 86400))),
        ]
        res = {name: timed(ngx, path, h, a.reps) for name, path in cases}
        base = res["runs"]
        print(f"{'case':32s} {'ms':>9s} {'x runs':>8s}")
        for name, ms in res.items():
            print(f"{name:32s} {ms:9.1f} {ms / base:8.1f}")
    finally:
        if ngx is not None:
            ngx.stop()
        backends.stop()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()

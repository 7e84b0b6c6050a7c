#!/usr/bin/env python3
"""request_log_insert.py: what one batch of the request log costs PostgreSQL.

    tests/bench/request_log_insert.py --dsn "host=... dbname=..." \
        [--rows 4000] [--batches 10] [--rounds 3]

The database must hold the migrated schema (`cinematch migrate`); the
script TRUNCATEs request_logs and drops/recreates its indexes, so give it a
scratch database, never a real one.  It writes --batches batches of --rows
log entries shaped like the module's (recommend answers: a 32-hex request
id, 10 ids and scores in detail, a JWT user, no API key) and measures the
CPU of the PostgreSQL backend that runs them (utime + stime of
/proc/<pg_backend_pid()>/stat, read with pg_read_file: superuser), divided
by the rows: CPU us per logged row, which a loaded machine disturbs far
less than wall time.  Variants, alternated round by round:

  main-json     main's five btree indexes, INSERT ... json_to_recordset
  018-json      the indexes after sql/018 (BRIN on ts; no (user_id, ts),
                no (model_name, ts)), the same INSERT
  main-copy     main's indexes, COPY ... FROM STDIN (text format)
  018-copy      the indexes after sql/018, COPY
  none-copy     no index at all, COPY: the floor

Prints one line per run and the median per variant.
"""
import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time

COLS = ("ts, request_id, method, route, path, status, duration_ms, user_id,"
        " api_key_id, model_name, model_version, cache_hit, is_fallback,"
        " fallback_reason, detail, error_code")

# the module's statement on main (ngx_http_cinematch_serving.c)
JSON_SQL = (
    "INSERT INTO request_logs (" + COLS + ")"
    " SELECT to_timestamp(x.ts), x.request_id, x.method, x.route, x.path,"
    " x.status, x.duration_ms, x.user_id, x.api_key_id, 'recsys',"
    " CASE WHEN x.model_version ~ '^[0-9]{1,9}$'"
    " THEN x.model_version::integer END,"
    " x.cache_hit, x.is_fallback, x.fallback_reason, x.detail, x.error_code"
    " FROM json_to_recordset((SELECT b FROM rl_batch WHERE k = :k)::json) AS x(ts float8, request_id text,"
    " method text, route text, path text, status smallint,"
    " duration_ms real, user_id bigint, api_key_id bigint,"
    " model_version text, cache_hit boolean, is_fallback boolean,"
    " fallback_reason text, detail jsonb, error_code text)")

MAIN_IDX = [
    "CREATE INDEX request_logs_ts_idx ON request_logs (ts)",
    "CREATE INDEX request_logs_user_ts_idx ON request_logs (user_id, ts)"
    " WHERE user_id IS NOT NULL",
    "CREATE INDEX request_logs_request_id_idx ON request_logs (request_id)",
    "CREATE INDEX request_logs_api_key_ts_idx ON request_logs (api_key_id, ts)"
    " WHERE api_key_id IS NOT NULL",
    "CREATE INDEX request_logs_model_ts_idx ON request_logs (model_name, ts)"
    " WHERE model_name IS NOT NULL",
]
NEW_IDX = [
    "CREATE INDEX request_logs_ts_brin ON request_logs USING brin (ts)"
    " WITH (pages_per_range = 32)",
    "CREATE INDEX request_logs_request_id_idx ON request_logs (request_id)",
    "CREATE INDEX request_logs_api_key_ts_idx ON request_logs (api_key_id, ts)"
    " WHERE api_key_id IS NOT NULL",
]
VARIANTS = {
    "main-json": (MAIN_IDX, "json"),
    "018-json": (NEW_IDX, "json"),
    "main-copy": (MAIN_IDX, "copy"),
    "018-copy": (NEW_IDX, "copy"),
    "none-copy": ([], "copy"),
}


def make_batch(rows, t0):
    js, cp = [], []
    for i in range(rows):
        ts = t0 + i * 0.0002
        rid = "%032x" % random.getrandbits(128)
        uid = random.randint(1, 600)
        ids = [random.randint(1, 190000) for _ in range(10)]
        scores = [round(random.uniform(3, 5), 6) for _ in range(10)]
        detail = {"endpoint": "recommend", "ids": ids, "scores": scores,
                  "rating_user_id": uid}
        js.append({"ts": round(ts, 3), "request_id": rid, "method": "POST",
                   "route": "/api/v1/recommend", "path": "/api/v1/recommend",
                   "status": 200, "duration_ms": random.randint(0, 4),
                   "user_id": uid, "api_key_id": None, "cache_hit": False,
                   "model_version": "3", "is_fallback": False,
                   "fallback_reason": None, "detail": detail})
        iso = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts)) \
            + ".%03d+00" % (int(ts * 1000) % 1000)
        d = json.dumps(detail, separators=(",", ":")).replace("\\", "\\\\")
        cp.append("\t".join([iso, rid, "POST", "/api/v1/recommend",
                             "/api/v1/recommend", "200",
                             str(js[-1]["duration_ms"]), str(uid), "\\N",
                             "recsys", "3", "f", "f", "\\N", d, "\\N"]))
    return json.dumps(js, separators=(",", ":")), "\n".join(cp) + "\n"


def psql(dsn, script):
    r = subprocess.run(["psql", "-X", "-q", "-At", "-v", "ON_ERROR_STOP=1",
                        "-d", dsn], input=script, text=True,
                       capture_output=True)
    if r.returncode != 0:
        sys.exit("psql failed: " + r.stderr)
    return r.stdout


def run(dsn, name, batches, files, rows):
    idx, how = VARIANTS[name]
    setup = ["TRUNCATE request_logs;"]
    for n in ("ts_idx", "ts_brin", "user_ts_idx", "request_id_idx",
              "api_key_ts_idx", "model_ts_idx"):
        setup.append("DROP INDEX IF EXISTS request_logs_%s;" % n)
    setup += [s + ";" for s in idx]
    psql(dsn, "\n".join(setup))
    cpu = ("SELECT (split_part(s, ' ', 14)::bigint"
           " + split_part(s, ' ', 15)::bigint) AS cpu FROM (SELECT pg_read_file("
           "'/proc/' || pg_backend_pid() || '/stat') AS s) x")
    # the batches are read into a temp table first (not measured): the
    # module sends its batch as a bind parameter, not as a literal to lex
    sc = ["CREATE TEMP TABLE rl_batch (k int, b text);"]
    if how == "json":
        for k, (jf, cf) in enumerate(files):
            sc.append("\\set batch `cat %s`" % jf)
            sc.append("INSERT INTO rl_batch VALUES (%d, :'batch');" % k)
    sc += [cpu + " \\gset a_"]
    for b in range(batches):
        jf, cf = files[b % len(files)]
        if how == "json":
            sc.append("\\set k %d" % (b % len(files)))
            sc.append(JSON_SQL + ";")
        else:
            sc.append("\\copy request_logs (%s) FROM '%s'" % (COLS, cf))
    sc += [cpu + " \\gset b_",
           "SELECT :b_cpu - :a_cpu, count(*) FROM request_logs;"]
    out = psql(dsn, "\n".join(sc)).split("\n")
    last = [x for x in out if "|" in x][-1].split("|")
    ticks, n = int(last[0]), int(last[1])
    assert n == batches * rows, (n, batches * rows)
    hz = os.sysconf("SC_CLK_TCK")
    return ticks / hz * 1e6 / n


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dsn", required=True)
    ap.add_argument("--rows", type=int, default=4000)
    ap.add_argument("--batches", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default=",".join(VARIANTS))
    a = ap.parse_args()
    random.seed(5)
    tmp = tempfile.mkdtemp(prefix="rlbench-")
    os.chmod(tmp, 0o755)
    files = []
    t0 = time.time()
    for k in range(3):
        j, c = make_batch(a.rows, t0 + k * a.rows * 0.0002)
        jf, cf = os.path.join(tmp, "b%d.json" % k), os.path.join(tmp, "b%d.tsv" % k)
        open(jf, "w").write(j)
        open(cf, "w").write(c)
        files.append((jf, cf))
    names = a.variants.split(",")
    res = {n: [] for n in names}
    print("load average before: %s" % open("/proc/loadavg").read().strip())
    for r in range(a.rounds):
        for n in (names if r % 2 == 0 else names[::-1]):
            us = run(a.dsn, n, a.batches, files, a.rows)
            res[n].append(us)
            print("round %d %-10s %6.2f CPU us per row" % (r + 1, n, us),
                  flush=True)
    print("load average after: %s" % open("/proc/loadavg").read().strip())
    for n in names:
        print("median %-10s %6.2f CPU us per row  (%s)" % (
            n, statistics.median(res[n]),
            " ".join("%.2f" % x for x in res[n])))


if __name__ == "__main__":
    main()

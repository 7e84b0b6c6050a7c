"""Recommendation serving around the daemon, against a registry stack: a
migrated database with a synthetic catalogue, a model registered and
promoted with the CLI, `cinematch infer --dsn` serving production, nginx
with the response cache and the request log on.

  - the Redis response cache (X-Cache HIT/MISS, counters in /metrics, a
    fold-in invalidates the user's entries, Redis down → uncached 200)
  - the request log (rows in request_logs, off the request path; a full
    queue drops and counts)
  - POST /api/v1/admin/reload (admin only; the daemon republishes)
  - a promotion under load drops nothing; a killed daemon is a 503 and a
    restarted one serves again
"""

import json
import os
import re
import subprocess
import threading
import time

import pytest

import harness
from inferfixture import BIN, Infer
from tokens import access_token, new_secret

DB = "cm_serving_api"


class _Db:
    def __init__(self, pg, dbname):
        self.pg = pg
        self.dbname = dbname

    @property
    def conninfo(self):
        return (f"host=127.0.0.1 port={self.pg.port} user={self.pg.user} "
                f"dbname={self.dbname} sslmode=disable connect_timeout=5")

    def sql(self, text):
        return self.pg.psql(text, dbname=self.dbname).strip()


class _Stack:
    """The database, the model store and the CLI that works on them."""

    def __init__(self, workdir, db):
        self.workdir = workdir
        self.db = db
        self.store = str(workdir / "serving-models")
        self.artifacts = {}

    def env(self):
        return dict(os.environ, CINEMATCH_PG_DSN=self.db.conninfo,
                    CINEMATCH_MODEL_STORE=self.store)

    def run(self, *args):
        r = subprocess.run([str(BIN), *args], capture_output=True, text=True,
                           env=self.env(), timeout=300, cwd=str(self.workdir))
        assert r.returncode == 0, f"{args}: {r.stdout}\n{r.stderr}"
        return r.stdout

    def train_and_register(self, data, name, factors):
        artifact = self.workdir / name
        self.run("train", "recsys", "--data", str(data), "--out", str(artifact),
                 "--factors", str(factors), "--iters", "4")
        out = self.run("model", "register", "--name", "recsys", "--artifact",
                       str(artifact))
        version = int(re.findall(r"\d+", out)[-1])
        self.artifacts[str(version)] = artifact
        return version


@pytest.fixture(scope="module")
def stack(workdir, backends):
    data = workdir / "serving-data"
    subprocess.run([str(BIN), "synth", "--out", str(data), "--users", "120",
                    "--items", "400", "--ratings", "6000", "--seed", "11"],
                   check=True, capture_output=True)
    backends.pg.psql(f"DROP DATABASE IF EXISTS {DB}", dbname="postgres")
    backends.pg.psql(f"CREATE DATABASE {DB}", dbname="postgres")
    st = _Stack(workdir, _Db(backends.pg, DB))
    st.data = data
    st.run("migrate")
    st.run("ingest", "--data", str(data), "--target", "ratings")
    v = st.train_and_register(data, "serving-v1.cmrs", 8)
    st.run("model", "promote", "--name", "recsys", "--version", str(v))
    return st


def _infer(workdir, stack, name="infer-serving"):
    inf = Infer(workdir, name=name, extra=["--dsn", stack.db.conninfo])
    inf.start()
    return inf


@pytest.fixture(scope="module")
def infer(workdir, stack):
    inf = _infer(workdir, stack)
    try:
        yield inf
    finally:
        inf.stop()


@pytest.fixture(scope="module")
def secret(workdir):
    return new_secret(BIN, workdir / "serving-jwt.secret")


def _nginx(workdir, backends, stack, infer, name, extra="", **kw):
    kw.setdefault("workers", 2)
    ngx = harness.Nginx(
        workdir, pg=stack.db, redis=backends.redis, name=name,
        http_extra=infer.directive
        + f"\ncinematch_jwt_secret_file {workdir / 'serving-jwt.secret'};"
        + "\n" + extra, **kw)
    ngx.start()
    # /ready also wants Redis: wait for the daemon's part only
    harness.wait_for(lambda: ngx.json("GET", "/ready")[2]["checks"]
                     ["inference"]["status"] == "ok", timeout=15,
                     what="the daemon ready with the model")
    return ngx


@pytest.fixture(scope="module")
def api(workdir, backends, stack, infer, secret):
    ngx = _nginx(workdir, backends, stack, infer, "nginx-serving", """
cinematch_cache_ttl 60s;
cinematch_request_log on;
cinematch_request_log_flush 100ms;""")
    try:
        yield ngx
    finally:
        ngx.stop()
    problems = ngx.log_problems()
    assert not problems, "nginx logged alerts:\n" + "\n".join(problems)


@pytest.fixture(scope="module")
def admin(secret):
    return access_token(secret, role="admin", sub="1")


def call(api, method, path, doc=None, token=None, timeout=30):
    h = {}
    body = None
    if doc is not None:
        body = json.dumps(doc).encode()
        h["Content-Type"] = "application/json"
    if token:
        h["Authorization"] = f"Bearer {token}"
    status, hdrs, data = api.request(method, path, body=body, headers=h,
                                     timeout=timeout)
    return status, hdrs, (json.loads(data) if data else None), data


def metric(api, name, **labels):
    _, _, text = api.request("GET", "/metrics")
    sel = ",".join(f'{k}="{v}"' for k, v in labels.items())
    want = f"{name}{{{sel}}}" if sel else name
    for line in text.decode().splitlines():
        if line.startswith(want + " "):
            return float(line.split()[-1])
    return None


_seq = [0]


def new_user(api, db):
    _seq[0] += 1
    email = f"s{_seq[0]}-{os.getpid()}@example.com"
    status, _, doc, _ = call(api, "POST", "/api/v1/auth/register",
                             {"email": email, "password": "long enough pw"})
    assert status == 201, doc
    uid = doc["user"]["id"]
    status, _, tok, _ = call(api, "POST", "/api/v1/auth/login",
                             {"email": email, "password": "long enough pw"})
    assert status == 200, tok
    rid = int(db.sql(f"SELECT rating_user_id FROM users WHERE id = {uid}"))
    return {"id": uid, "rid": rid, "token": tok["access_token"]}


# --- the response cache --------------------------------------------------


def test_second_identical_recommend_is_a_cache_hit(api, admin):
    hits = metric(api, "cinematch_cache_hits_total", endpoint="recommend")
    body = {"user_id": 7, "k": 6, "filters": {"genres": ["Drama"]}}
    s1, h1, d1, raw1 = call(api, "POST", "/api/v1/recommend", body, admin)
    second = []

    def again():   # the entry is written after the first answer went out
        second[:] = call(api, "POST", "/api/v1/recommend", body, admin)
        return second[1]["x-cache"]

    assert cached_next(again) == "HIT"
    s2, h2, d2, raw2 = second
    assert s1 == 200 and s2 == 200, (d1, d2)
    assert h1["x-cache"] == "MISS" and h2["x-cache"] == "HIT"
    assert raw1 == raw2 and d2["model_version"] == d1["model_version"]
    assert metric(api, "cinematch_cache_hits_total",
                  endpoint="recommend") == hits + 1
    assert metric(api, "cinematch_cache_misses_total", endpoint="recommend") >= 1
    # other parameters are another entry
    s3, h3, d3, _ = call(api, "POST", "/api/v1/recommend",
                         {"user_id": 7, "k": 5, "filters": {"genres": ["Drama"]}},
                         admin)
    assert s3 == 200 and h3["x-cache"] == "MISS" and len(d3["recommendations"]) == 5


def test_a_cache_hit_logs_the_model_version_that_produced_it(
        workdir, backends, stack, infer, admin):
    from test_observability import production_log_format
    log = workdir / "serving-access.json"
    ngx = _nginx(workdir, backends, stack, infer, "nginx-serving-log",
                 "cinematch_cache_ttl 60s;\n" + production_log_format()
                 + f"\naccess_log {log} cinematch_json;")
    try:
        body = {"user_id": 9, "k": 4, "filters": {"year_min": 1901}}  # a key of its own
        seen = {}
        for rid in ("srv-log-miss", "srv-log-hit"):
            status, hdrs, data = ngx.request(
                "POST", "/api/v1/recommend", body=json.dumps(body).encode(),
                headers={"Content-Type": "application/json",
                         "Authorization": f"Bearer {admin}", "X-Request-ID": rid})
            assert status == 200, data
            seen[rid] = (hdrs["x-cache"], json.loads(data)["model_version"])
        assert seen["srv-log-miss"][0] == "MISS" and seen["srv-log-hit"][0] == "HIT"

        def lines():
            return {e["request_id"]: e for e in
                    (json.loads(x) for x in log.read_text().splitlines())}
        harness.wait_for(lambda: {"srv-log-miss", "srv-log-hit"} <= set(lines()),
                         timeout=5, what="both requests in the JSON log")
        got = lines()
        for rid, (_, version) in seen.items():
            assert got[rid]["model_version"] == version, got[rid]
    finally:
        ngx.stop()


def test_cache_control_no_cache_bypasses_the_cache(api, admin):
    body = json.dumps({"user_id": 8, "k": 3}).encode()
    h = {"Content-Type": "application/json", "Authorization": f"Bearer {admin}"}
    for _ in range(2):
        s, hdrs, _ = api.request("POST", "/api/v1/recommend", body=body,
                                 headers={**h, "Cache-Control": "no-cache"})
        assert s == 200 and "x-cache" not in hdrs
    # nothing was stored either
    s, hdrs, _ = api.request("POST", "/api/v1/recommend", body=body, headers=h)
    assert s == 200 and hdrs["x-cache"] == "MISS"


def cached_next(do, timeout=5):
    """The X-Cache of the first answer after the entry was stored: the
    module writes an entry after it has answered (off the request path),
    so a repeat may come before the write lands."""
    deadline = time.monotonic() + timeout
    while True:
        h = do()
        if h == "HIT" or time.monotonic() > deadline:
            return h
        time.sleep(0.05)


def test_similar_and_popular_are_cached(api, stack):
    movie = int(stack.db.sql("SELECT min(movie_id) FROM movies"))
    def similar():
        return call(api, "POST", "/api/v1/similar",
                    {"movie_id": movie, "k": 4})[1]["x-cache"]

    def popular():
        return call(api, "GET", "/api/v1/popular?k=3&genre=Comedy")[1]["x-cache"]

    assert [similar(), cached_next(similar)] == ["MISS", "HIT"]
    assert [popular(), cached_next(popular)] == ["MISS", "HIT"]
    assert metric(api, "cinematch_cache_hits_total", endpoint="similar") >= 1
    assert metric(api, "cinematch_cache_hits_total", endpoint="popular") >= 1
    # errors are not cached
    for _ in range(2):
        s, h, _, _ = call(api, "POST", "/api/v1/similar", {"movie_id": 987654})
        assert s == 404 and h.get("x-cache") == "MISS"


def test_a_fold_in_invalidates_the_users_cached_recommendations(api, stack):
    u = new_user(api, stack.db)
    movies = [int(x) for x in stack.db.sql(
        "SELECT movie_id FROM movies ORDER BY movie_id LIMIT 3").split()]
    s, h, before, _ = call(api, "POST", "/api/v1/recommend", {"k": 10}, u["token"])
    assert s == 200 and h["x-cache"] == "MISS" and before["is_fallback"] is True
    def recommend():
        return call(api, "POST", "/api/v1/recommend", {"k": 10},
                    u["token"])[1]["x-cache"]

    assert cached_next(recommend) == "HIT"
    for movie, rating in zip(movies, (5, 5, 0.5)):
        s, _, doc, _ = call(api, "PUT", f"/api/v1/ratings/{movie}",
                            {"rating": rating}, u["token"])
        assert s == 200 and doc["folded_in"] is True, doc
    s, h, after, _ = call(api, "POST", "/api/v1/recommend", {"k": 10}, u["token"])
    assert s == 200 and h["x-cache"] == "MISS"
    assert after["is_fallback"] is False
    assert not set(movies) & {r["movie_id"] for r in after["recommendations"]}
    # and the fresh answer is cached again
    assert cached_next(recommend) == "HIT"


def test_scoring_threads_and_the_answer_cache_answer_as_one_thread(
        workdir, backends, stack, infer, api, admin):
    """A daemon with three scoring threads and a small answer cache gives
    concurrent requests the answers of the default daemon, and a fold-in
    still changes the very next answer of a user it had cached."""
    inf = Infer(workdir, name="infer-serving-threads",
                extra=["--dsn", stack.db.conninfo, "--score-threads", "3",
                       "--answer-cache", "16"])
    inf.start()
    ngx = _nginx(workdir, backends, stack, inf, "nginx-serving-threads")
    try:
        users = list(range(1, 41))
        got = {}

        def ask(u):
            got[u] = call(ngx, "POST", "/api/v1/recommend",
                          {"user_id": u, "k": 6}, admin)

        for _ in range(2):          # the second round: from the answer cache
            threads = [threading.Thread(target=ask, args=(u,)) for u in users]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            for u in users:
                s, _, doc, _ = got[u]
                assert s == 200, doc
                st, _, raw = api.request(
                    "POST", "/api/v1/recommend",
                    body=json.dumps({"user_id": u, "k": 6}).encode(),
                    headers={"Content-Type": "application/json",
                             "Authorization": f"Bearer {admin}",
                             "Cache-Control": "no-cache"})
                assert st == 200
                want = json.loads(raw)
                assert [r["movie_id"] for r in doc["recommendations"]] == \
                    [r["movie_id"] for r in want["recommendations"]]
                assert [r["score"] for r in doc["recommendations"]] == \
                    pytest.approx([r["score"] for r in want["recommendations"]],
                                  rel=1e-4)

        # the daemon's answer cache in /metrics: every lookup counted, at
        # most its 16 answers held
        st, _, body = ngx.request("GET", "/metrics")
        assert st == 200
        text = body.decode()
        got_m = {r: int(v) for r, v in re.findall(
            r'^cinematch_infer_answer_cache_requests_total\{[^}]*'
            r'result="(hit|miss)"\} (\d+)$', text, re.M)}
        assert got_m.get("hit", 0) + got_m.get("miss", 0) >= 2 * len(users), \
            got_m
        assert got_m.get("miss", 0) >= 16, got_m
        held = re.search(r'^cinematch_infer_answer_cache_entries\{[^}]*\} '
                         r'(\d+)$', text, re.M)
        assert held and 1 <= int(held.group(1)) <= 16, text[-2000:]

        u = new_user(ngx, stack.db)
        movie = int(stack.db.sql(
            "SELECT movie_id FROM movies ORDER BY movie_id LIMIT 1"))
        for _ in range(2):
            s, _, before, _ = call(ngx, "POST", "/api/v1/recommend", {"k": 5},
                                   u["token"])
            assert s == 200 and before["is_fallback"] is True
        s, _, doc, _ = call(ngx, "PUT", f"/api/v1/ratings/{movie}",
                            {"rating": 5}, u["token"])
        assert s == 200 and doc["folded_in"] is True, doc
        s, _, after, _ = call(ngx, "POST", "/api/v1/recommend", {"k": 5},
                              u["token"])
        assert s == 200 and after["is_fallback"] is False
    finally:
        ngx.stop()
        inf.stop()


def test_redis_down_serves_uncached(workdir, backends, stack, infer, admin):
    dead = f"127.0.0.1:{harness.free_port()}"
    ngx = _nginx(workdir, backends, stack, infer, "nginx-serving-noredis",
                 "cinematch_cache_ttl 60s;", redis_address=dead)
    try:
        for _ in range(3):
            s, h, doc, _ = call(ngx, "POST", "/api/v1/recommend",
                                {"user_id": 3, "k": 4}, admin)
            assert s == 200 and len(doc["recommendations"]) == 4
            assert "x-cache" not in h
    finally:
        ngx.stop()


def test_cache_off_by_default(workdir, backends, stack, infer, admin):
    ngx = _nginx(workdir, backends, stack, infer, "nginx-serving-nocache")
    try:
        for _ in range(2):
            s, h, _, _ = call(ngx, "POST", "/api/v1/recommend",
                              {"user_id": 3, "k": 4}, admin)
            assert s == 200 and "x-cache" not in h
    finally:
        ngx.stop()


# --- the request log -----------------------------------------------------


def _log_rows(db, request_id):
    out = db.sql("SELECT route, status, user_id, model_version, cache_hit,"
                 " is_fallback, coalesce(fallback_reason, '-'), detail"
                 f" FROM request_logs WHERE request_id = '{request_id}'")
    return [line.split("|", 7) for line in out.splitlines()]


def test_answers_are_written_to_request_logs(api, stack, admin):
    s, h, doc, _ = call(api, "POST", "/api/v1/recommend",
                        {"user_id": 9, "k": 4}, admin)
    assert s == 200
    rid_miss = h["x-request-id"]
    s, h, _, _ = call(api, "POST", "/api/v1/recommend",
                      {"user_id": 9, "k": 4}, admin)
    rid_hit = h["x-request-id"]
    s, h, fb, _ = call(api, "POST", "/api/v1/recommend",
                       {"user_id": 999999, "k": 3}, admin)
    rid_fb = h["x-request-id"]
    s, h, sim, _ = call(api, "POST", "/api/v1/similar",
                        {"movie_id": doc["recommendations"][0]["movie_id"], "k": 2})
    rid_sim = h["x-request-id"]

    s, h, _, _ = call(api, "POST", "/api/v1/recommend", {"k": 0}, admin)
    assert s == 422
    rid_422 = h["x-request-id"]
    s, h, _, _ = call(api, "POST", "/api/v1/similar", {"movie_id": 987654})
    assert s == 404
    rid_404 = h["x-request-id"]

    harness.wait_for(lambda: all(_log_rows(stack.db, r) for r in
                                 (rid_miss, rid_hit, rid_fb, rid_sim, rid_422,
                                  rid_404)),
                     timeout=10, what="request_logs rows")
    # errors are answers too: their status, no model output
    assert _log_rows(stack.db, rid_422)[0][:2] == ["/api/v1/recommend", "422"]
    assert _log_rows(stack.db, rid_422)[0][7] == ""
    assert _log_rows(stack.db, rid_404)[0][:2] == ["/api/v1/similar", "404"]

    [row] = _log_rows(stack.db, rid_miss)
    assert row[:7] == ["/api/v1/recommend", "200", "1", doc["model_version"],
                       "f", "f", "-"]
    detail = json.loads(row[7])
    assert detail["endpoint"] == "recommend" and detail["rating_user_id"] == 9
    assert detail["ids"] == [r["movie_id"] for r in doc["recommendations"]]
    assert detail["scores"] == pytest.approx(
        [r["score"] for r in doc["recommendations"]])
    assert _log_rows(stack.db, rid_hit)[0][4] == "t"
    assert _log_rows(stack.db, rid_fb)[0][5:7] == ["t", "unknown_user"]
    row = _log_rows(stack.db, rid_sim)[0]
    assert row[0] == "/api/v1/similar" and row[2] == ""     # anonymous
    assert json.loads(row[7])["ids"] == [x["movie_id"] for x in sim["similar_items"]]
    assert stack.db.sql(f"SELECT duration_ms >= 0 FROM request_logs"
                        f" WHERE request_id = '{rid_sim}'") == "t"
    assert metric(api, "cinematch_request_log_written_total") >= 4


def test_logged_error_rows_carry_the_error_code_of_their_body(
        api, stack, admin):
    want = {}
    s, h, doc, _ = call(api, "POST", "/api/v1/recommend", {"k": 0}, admin)
    assert s == 422
    want[h["x-request-id"]] = doc["error"]["code"]
    s, h, doc, _ = call(api, "POST", "/api/v1/similar", {"movie_id": 987654})
    assert s == 404
    want[h["x-request-id"]] = doc["error"]["code"]
    s, h, _, _ = call(api, "POST", "/api/v1/recommend", {"user_id": 4, "k": 2},
                      admin)
    assert s == 200
    want[h["x-request-id"]] = ""

    def code(rid):
        return stack.db.sql("SELECT coalesce(error_code, '') FROM request_logs"
                            f" WHERE request_id = '{rid}'")

    harness.wait_for(lambda: all(_log_rows(stack.db, r) for r in want),
                     timeout=10, what="request_logs rows")
    assert {rid: code(rid) for rid in want} == want
    assert sorted(want.values()) == ["", "not_found", "validation_failed"]


def test_a_full_request_log_queue_drops_and_counts(workdir, backends, stack,
                                                   infer):
    ngx = _nginx(workdir, backends, stack, infer, "nginx-serving-logfull", """
cinematch_request_log on;
cinematch_request_log_queue 1;
cinematch_request_log_flush 60s;""", workers=1)
    try:
        for _ in range(5):
            assert call(ngx, "GET", "/api/v1/popular?k=2")[0] == 200
        assert metric(ngx, "cinematch_request_log_dropped_total") == 4
    finally:
        ngx.stop()


# --- consistency with the offline scorer --------------------------------


def test_daemon_top_k_equals_the_offline_top_k(api, stack, admin):
    """For a sample of users, /recommend (batched SGEMM in the daemon, over
    shm, through nginx) returns what `cinematch eval recsys --dump-topk`
    computes offline for the same artifact (one user at a time)."""
    _, _, ready, _ = call(api, "GET", "/ready")
    [served] = [m["version"] for m in ready["checks"]["inference"]["models"]
                if m["name"] == "recsys"]
    out = stack.workdir / "serving-topk.jsonl"
    stack.run("eval", "recsys", "--artifact", str(stack.artifacts[served]),
              "--dump-topk", str(out), "--k", "10")
    offline = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(offline) > 100
    for want in offline[::7]:
        s, _, got, _ = call(api, "POST", "/api/v1/recommend",
                            {"user_id": want["user_id"], "k": 10}, admin)
        assert s == 200 and got["model_version"] == served
        assert got["is_fallback"] is False
        ids = [r["movie_id"] for r in got["recommendations"]]
        scores = [r["score"] for r in got["recommendations"]]
        assert scores == pytest.approx(want["scores"], rel=1e-4, abs=1e-4)
        # the same films in the same order, up to ties within float noise
        for i, (a, b) in enumerate(zip(ids, want["movie_ids"])):
            assert a == b or abs(scores[i] - want["scores"][i]) < 1e-4, \
                (want["user_id"], ids, want["movie_ids"])
        assert set(ids) == set(want["movie_ids"]) or \
            abs(scores[-1] - want["scores"][-1]) < 1e-4


ML_SMALL = harness.ROOT.parent / "shared" / "data" / "ml-latest-small"


@pytest.mark.skipif(not (ML_SMALL / "ratings.csv").exists(),
                    reason=f"MovieLens ml-latest-small not found at {ML_SMALL}")
def test_daemon_top_k_equals_the_offline_top_k_on_ml_latest_small(
        workdir, backends, secret, admin):
    """The same check on the real catalogue (9.7k films): a small ALS
    served from the file (no registry), every 20th user compared."""
    artifact = workdir / "serving-mls.cmrs"
    subprocess.run([str(BIN), "train", "recsys", "--data", str(ML_SMALL),
                    "--out", str(artifact), "--factors", "8", "--iters", "3"],
                   check=True, capture_output=True, timeout=300)
    out = workdir / "serving-mls-topk.jsonl"
    subprocess.run([str(BIN), "eval", "recsys", "--artifact", str(artifact),
                    "--dump-topk", str(out), "--k", "10"],
                   check=True, capture_output=True, timeout=300)
    offline = [json.loads(line) for line in out.read_text().splitlines()]
    inf = Infer(workdir, name="infer-serving-mls", extra=[
        "--recsys", str(artifact), "--movies", str(ML_SMALL / "movies.csv"),
        "--recsys-version", "mls"])
    inf.start()
    ngx = harness.Nginx(workdir, pg=backends.pg, redis=backends.redis,
                        name="nginx-serving-mls", http_extra=inf.directive
                        + f"\ncinematch_jwt_secret_file {workdir / 'serving-jwt.secret'};")
    try:
        ngx.start()
        harness.wait_for(lambda: ngx.json("GET", "/ready")[2]["checks"]
                         ["inference"]["status"] == "ok", timeout=30,
                         what="the daemon ready with the ml-latest-small model")
        for want in offline[::20]:
            s, _, got, _ = call(ngx, "POST", "/api/v1/recommend",
                                {"user_id": want["user_id"], "k": 10}, admin)
            assert s == 200 and got["model_version"] == "mls", got
            ids = [r["movie_id"] for r in got["recommendations"]]
            scores = [r["score"] for r in got["recommendations"]]
            assert scores == pytest.approx(want["scores"], rel=1e-4, abs=1e-4)
            for i, (a, b) in enumerate(zip(ids, want["movie_ids"])):
                assert a == b or abs(scores[i] - want["scores"][i]) < 1e-4, \
                    (want["user_id"], ids, want["movie_ids"])
    finally:
        ngx.stop()
        inf.stop()


# --- reload, promotion, a daemon that dies ------------------------------


def test_admin_reload_needs_an_admin(api, stack):
    u = new_user(api, stack.db)
    assert call(api, "POST", "/api/v1/admin/reload")[0] == 401
    s, _, doc, _ = call(api, "POST", "/api/v1/admin/reload", token=u["token"])
    assert s == 403, doc


def test_admin_reload_loads_the_production_version(api, stack, admin):
    body = {"user_id": 4, "k": 4}
    call(api, "POST", "/api/v1/recommend", body, admin)
    _, h, old, _ = call(api, "POST", "/api/v1/recommend", body, admin)
    assert h["x-cache"] == "HIT"
    v = stack.train_and_register(stack.data, "serving-v2.cmrs", 6)
    # production changes behind the daemons' back (no NOTIFY)
    stack.db.sql("UPDATE model_versions SET stage = 'archived'"
                 " WHERE model_name = 'recsys' AND stage = 'production';"
                 f" UPDATE model_versions SET stage = 'production'"
                 f" WHERE model_name = 'recsys' AND version = {v}")
    s, _, doc, _ = call(api, "POST", "/api/v1/admin/reload", token=admin)
    assert s == 200, doc
    assert doc["status"] == "reloaded"
    [d] = doc["daemons"]
    assert d["reloaded"] is True and d["ready"] is True
    assert {"name": "recsys", "version": str(v)} in [
        {"name": m["name"], "version": m["version"]} for m in d["models"]]
    s, _, rec, _ = call(api, "POST", "/api/v1/recommend", {"user_id": 4}, admin)
    assert s == 200 and rec["model_version"] == str(v)
    # the old model's cached answers are not the new model's
    s, h, rec, _ = call(api, "POST", "/api/v1/recommend", body, admin)
    assert h["x-cache"] == "MISS" and rec["model_version"] == str(v) != old["model_version"]


def test_promotion_under_load_drops_nothing(api, stack, admin):
    v = stack.train_and_register(stack.data, "serving-v3.cmrs", 10)
    results, stop = [], threading.Event()

    def load(n):
        i = 0
        while not stop.is_set():
            i += 1
            s, _, doc, _ = call(api, "POST", "/api/v1/recommend",
                                {"user_id": 1 + (n * 37 + i) % 100, "k": 5},
                                admin)
            results.append((s, doc.get("model_version") if s == 200 else doc))

    threads = [threading.Thread(target=load, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        stack.run("model", "promote", "--name", "recsys", "--version", str(v))
        harness.wait_for(lambda: any(r[1] == str(v) for r in results[-20:]),
                         timeout=15, what="answers from the promoted version")
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join()
    errors = [r for r in results if r[0] != 200]
    assert not errors, errors[:5]
    versions = [r[1] for r in results]
    assert versions[-1] == str(v) and len(set(versions)) >= 2, set(versions)


def test_a_corrupt_production_artifact_is_refused_and_the_old_one_serves(
        api, stack, admin):
    _, _, before, _ = call(api, "POST", "/api/v1/recommend", {"user_id": 6}, admin)
    old = before["model_version"]
    v = stack.train_and_register(stack.data, "serving-corrupt.cmrs", 4)
    path = stack.db.sql("SELECT artifact_path FROM model_versions"
                        f" WHERE model_name = 'recsys' AND version = {v}")
    with open(path, "r+b") as f:            # one flipped byte in the factors
        f.seek(4096)
        b = f.read(1)
        f.seek(4096)
        f.write(bytes([b[0] ^ 0xFF]))
    stack.db.sql("UPDATE model_versions SET stage = 'archived'"
                 " WHERE model_name = 'recsys' AND stage = 'production';"
                 f" UPDATE model_versions SET stage = 'production'"
                 f" WHERE model_name = 'recsys' AND version = {v}")
    try:
        s, _, doc, _ = call(api, "POST", "/api/v1/admin/reload", token=admin)
        assert s == 200, doc
        [d] = doc["daemons"]
        assert "sha256 differs" in d["status"], d
        assert [m["version"] for m in d["models"] if m["name"] == "recsys"] == [old]
        _, _, ready, _ = call(api, "GET", "/ready")
        assert "sha256 differs" in ready["checks"]["inference"]["daemons"][0]["status"]
        s, _, after, _ = call(api, "POST", "/api/v1/recommend", {"user_id": 6},
                              admin)
        assert s == 200 and after["model_version"] == old
    finally:
        stack.db.sql("UPDATE model_versions SET stage = 'archived'"
                     f" WHERE model_name = 'recsys' AND version = {v};"
                     " UPDATE model_versions SET stage = 'production'"
                     f" WHERE model_name = 'recsys' AND version = {old}")
        call(api, "POST", "/api/v1/admin/reload", token=admin)


def test_killed_daemon_is_503_then_recovers_after_restart(workdir, backends,
                                                          stack, admin):
    inf = _infer(workdir, stack, name="infer-serving-kill")
    ngx = _nginx(workdir, backends, stack, inf, "nginx-serving-kill")
    try:
        assert call(ngx, "POST", "/api/v1/recommend", {"user_id": 2},
                    admin)[0] == 200
        inf.kill9()
        harness.wait_for(lambda: call(ngx, "POST", "/api/v1/recommend",
                                      {"user_id": 2}, admin)[0] == 503,
                         timeout=5, what="503 without the daemon")
        s, _, doc, _ = call(ngx, "POST", "/api/v1/recommend", {"user_id": 2},
                            admin)
        assert s == 503 and doc["error"]["code"] == "unavailable"
        inf.start()
        harness.wait_for(lambda: call(ngx, "POST", "/api/v1/recommend",
                                      {"user_id": 2}, admin)[0] == 200,
                         timeout=15, what="served again after the restart")
    finally:
        ngx.stop()
        inf.stop()

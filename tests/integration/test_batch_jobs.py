"""Batch prediction: POST /api/v1/predict/recsys/batch → batch_jobs row + a
Redis stream entry → `cinematch batch` (consumer group) → GET
/api/v1/jobs/{id}, against real PostgreSQL (every migration), Redis, nginx
and a `cinematch infer` serving the registry's production model, so that
a job's predictions can be compared with POST /api/v1/predict/recsys.
"""

import json
import os
import signal
import subprocess
import time

import pytest

import harness
from inferfixture import BIN, Infer
from tokens import access_token, authenticate, new_secret

ROOT = harness.ROOT
DB = "cm_batch_jobs"


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


def run(*args, env=None, check=True, timeout=120):
    r = subprocess.run([str(BIN), *args], capture_output=True, text=True,
                       env=env, timeout=timeout)
    if check:
        assert r.returncode == 0, f"{args}: {r.stdout}\n{r.stderr}"
    return r


@pytest.fixture(scope="module")
def stack(workdir, backends):
    backends.pg.psql(f"DROP DATABASE IF EXISTS {DB}", dbname="postgres")
    backends.pg.psql(f"CREATE DATABASE {DB}", dbname="postgres")
    db = _Db(backends.pg, DB)
    env = dict(os.environ, CINEMATCH_PG_DSN=db.conninfo,
               CINEMATCH_MODEL_STORE=str(workdir / "batch-models"),
               CINEMATCH_REDIS=backends.redis.address)
    run("migrate", "--dir", str(ROOT / "sql"), env=env)
    data = workdir / "batch-data"
    run("synth", "--out", str(data), "--users", "80", "--items", "300",
        "--ratings", "4000", "--seed", "11", env=env)
    run("ingest", "--movies", str(data / "movies.csv"), env=env)
    artifact = workdir / "batch-model.cmrs"
    run("train", "recsys", "--data", str(data), "--out", str(artifact),
        "--factors", "8", "--iters", "5", env=env)
    run("model", "register", "--name", "recsys", "--artifact", str(artifact),
        "--stage", "staging", env=env)
    run("model", "promote", "--name", "recsys", "--version", "1", env=env)
    for uid in (1, 2, 3):
        db.sql("INSERT INTO users (id, email, password_hash, role)"
               f" OVERRIDING SYSTEM VALUE VALUES ({uid}, 'u{uid}@x.test', 'x',"
               f" '{'admin' if uid == 3 else 'user'}')")

    infer = Infer(workdir, name="infer-batch", extra=["--dsn", db.conninfo])
    infer.start()
    secret = new_secret(BIN, workdir / "batch-jwt.secret")
    ngx = harness.Nginx(workdir, pg=db, redis=backends.redis,
                        http_extra=infer.directive
                        + f"\ncinematch_jwt_secret_file {workdir / 'batch-jwt.secret'};",
                        name="nginx-batch", workers=2)
    ngx.start()
    harness.wait_for(lambda: ngx.json("GET", "/ready")[0] == 200, timeout=20,
                     what="ready with the registry's model")
    tokens = {u: access_token(secret, role="admin" if u == 3 else "user",
                              sub=str(u)) for u in (1, 2, 3)}

    class S:
        pass
    s = S()
    s.db, s.env, s.ngx, s.tokens, s.redis = db, env, ngx, tokens, backends.redis
    s.call = lambda method, path, body=None, user=1: ngx.json(
        method, path, body, headers={"Authorization": f"Bearer {tokens[user]}"})
    try:
        yield s
    finally:
        ngx.stop()
        infer.stop()
    problems = ngx.log_problems()
    assert not problems, "nginx logged alerts:\n" + "\n".join(problems)


def items(n, ids_per=5, start_user=1):
    return [{"user_id": start_user + i,
             "movie_ids": [1 + ((i * 7 + k * 13) % 250) for k in range(ids_per)]}
            for i in range(n)]


def submit(stack, body, user=1):
    status, headers, doc = stack.call("POST", "/api/v1/predict/recsys/batch",
                                      body, user=user)
    assert status == 202, doc
    assert doc["status"] == "queued" and len(doc["job_id"]) == 36
    assert headers.get("location", headers.get("Location")) == \
        f"/api/v1/jobs/{doc['job_id']}"
    return doc["job_id"]


def consumer(stack, *extra):
    return run("batch", "--redis", stack.redis.address, *extra, env=stack.env)


def rating_id(stack, user):
    return int(stack.db.sql(f"SELECT rating_user_id FROM users WHERE id = {user}"))


def test_job_runs_and_matches_single_predictions(stack):
    # dataset users are other users' ids: an admin's batch (user 3)
    body = {"items": items(6) + [{"user_id": 999999, "movie_ids": [1, 2, 424242]}]}
    job = submit(stack, body, user=3)
    status, _, doc = stack.call("GET", f"/api/v1/jobs/{job}", user=3)
    assert status == 200 and doc["status"] == "queued"
    assert doc["progress"] == {"total": 7, "done": 0, "failed": 0, "fraction": 0}
    assert doc["result"] is None

    consumer(stack, "--once")
    status, _, doc = stack.call("GET", f"/api/v1/jobs/{job}", user=3)
    assert status == 200, doc
    assert doc["status"] == "succeeded" and doc["model"] == "recsys"
    assert doc["progress"]["done"] == 7 and doc["progress"]["fraction"] == 1
    assert doc["finished_at"] and doc["started_at"]
    assert len(doc["result"]) == 7
    for item, got in zip(body["items"], doc["result"]):
        st, _, want = stack.call("POST", "/api/v1/predict/recsys", item,
                                 user=3)
        assert st == 200, want
        assert got["user_id"] == want["user_id"]
        assert got["model_version"] == want["model_version"] == "1"
        assert got["is_fallback"] == want["is_fallback"]
        assert [p["movie_id"] for p in got["predictions"]] == item["movie_ids"]
        for a, b in zip(got["predictions"], want["predictions"]):
            assert (a["rating"] is None) == (b["rating"] is None)
            if a["rating"] is not None:
                assert abs(a["rating"] - b["rating"]) < 1e-5
    assert doc["result"][-1]["is_fallback"] is True
    # the entry was acknowledged: nothing pending in the group
    assert stack.db.sql(f"SELECT count(*) FROM batch_job_results WHERE job_id = '{job}'") \
        == "7"
    # a second run finds nothing to do and writes nothing
    consumer(stack, "--once")
    assert stack.db.sql(f"SELECT count(*) FROM batch_job_results WHERE job_id = '{job}'") \
        == "7"


def test_killed_consumer_is_taken_over_and_results_written_once(stack):
    body = {"items": items(30, ids_per=3)}
    job = submit(stack, body, user=3)
    a = subprocess.Popen([str(BIN), "batch", "--loop", "--consumer", "victim",
                          "--redis", stack.redis.address, "--throttle-ms", "150",
                          "--block", "200"],
                         env=stack.env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    try:
        harness.wait_for(lambda: int(stack.db.sql(
            f"SELECT items_done FROM batch_jobs WHERE id = '{job}'")) >= 3,
            timeout=30, what="the first consumer to be midway")
    finally:
        a.send_signal(signal.SIGKILL)
        a.wait()
    done = int(stack.db.sql(f"SELECT items_done FROM batch_jobs WHERE id = '{job}'"))
    assert 3 <= done < 30
    assert stack.db.sql(f"SELECT status FROM batch_jobs WHERE id = '{job}'") == "running"
    # idle past --claim-idle: another consumer claims the entry and finishes
    time.sleep(0.6)
    r = consumer(stack, "--once", "--consumer", "rescuer", "--claim-idle", "500")
    assert "claimed" in r.stderr + r.stdout
    status, _, doc = stack.call("GET", f"/api/v1/jobs/{job}", user=3)
    assert doc["status"] == "succeeded", doc
    assert doc["progress"]["done"] == 30
    assert [x["user_id"] for x in doc["result"]] == [i["user_id"] for i in body["items"]]
    assert stack.db.sql("SELECT count(*), count(DISTINCT item_index) FROM"
                        f" batch_job_results WHERE job_id = '{job}'") == "30|30"


def test_job_that_never_reached_the_stream_is_queued_again(stack):
    # nginx died between the INSERT and the XADD: a row, no stream entry
    job = stack.db.sql("INSERT INTO batch_jobs (user_id, model_name, input,"
                       " items_total, created_at) VALUES (1, 'recsys',"
                       " '{\"items\": [{\"user_id\": 4, \"movie_ids\": [1, 2]}]}',"
                       " 1, now() - interval '2 minutes') RETURNING id").splitlines()[0]
    r = consumer(stack, "--once")
    assert "never been queued" in r.stderr + r.stdout
    status, _, doc = stack.call("GET", f"/api/v1/jobs/{job}")
    assert doc["status"] == "succeeded", doc
    assert doc["result"][0]["user_id"] == 4
    assert stack.db.sql(f"SELECT stream_id IS NOT NULL FROM batch_jobs WHERE id = '{job}'") \
        == "t"


def test_jobs_are_visible_to_their_owner_and_admins_only(stack):
    job = submit(stack, {"items": [{"user_id": rating_id(stack, 1),
                                    "movie_ids": [1, 2]}]}, user=1)
    assert stack.call("GET", f"/api/v1/jobs/{job}", user=1)[0] == 200
    assert stack.call("GET", f"/api/v1/jobs/{job}", user=3)[0] == 200
    status, _, doc = stack.call("GET", f"/api/v1/jobs/{job}", user=2)
    assert status == 404 and doc["error"]["code"] == "not_found"
    assert stack.call("GET", "/api/v1/jobs/00000000-0000-4000-8000-000000000000")[0] == 404
    assert stack.call("GET", "/api/v1/jobs/not-a-uuid")[0] == 404
    assert stack.ngx.json("GET", f"/api/v1/jobs/{job}")[0] == 401
    assert stack.ngx.json("POST", "/api/v1/predict/recsys/batch",
                          {"items": items(1)})[0] == 401
    consumer(stack, "--once")


def redis_cli(stack, *args):
    return subprocess.run(["redis-cli", "-p", str(stack.redis.port), *args],
                          capture_output=True, text=True, check=True).stdout.strip()


def forbidden(status, doc):
    assert status == 403, doc
    assert doc["error"]["code"] == "forbidden"
    assert doc["error"]["message"] == \
        "predictions for another user need an administrator"
    assert doc["error"]["request_id"]


def test_predict_for_another_user_needs_an_admin(stack):
    # regression: /predict answered a plain user about anyone's ids while
    # /recommend refused that with 403; now both follow the same rule
    own, other = rating_id(stack, 1), rating_id(stack, 2)
    status, _, doc = stack.call("POST", "/api/v1/predict/recsys",
                                {"user_id": own, "movie_ids": [1, 2]})
    assert status == 200, doc
    assert doc["user_id"] == own and len(doc["predictions"]) == 2
    for uid in (other, 5):
        forbidden(*stack.call("POST", "/api/v1/predict/recsys",
                              {"user_id": uid, "movie_ids": [1, 2]})[::2])
    for uid in (own, other, 5):
        status, _, doc = stack.call("POST", "/api/v1/predict/recsys",
                                    {"user_id": uid, "movie_ids": [1, 2]},
                                    user=3)
        assert status == 200 and doc["user_id"] == uid, doc
    # validation still comes first (422, not 403)
    status, _, doc = stack.call("POST", "/api/v1/predict/recsys",
                                {"user_id": 5, "movie_ids": []})
    assert status == 422, doc


def test_batch_for_another_user_is_refused_whole_before_queueing(stack):
    own, other = rating_id(stack, 1), rating_id(stack, 2)
    jobs = stack.db.sql("SELECT count(*) FROM batch_jobs")
    stream = redis_cli(stack, "XLEN", "cinematch:jobs")
    for bad in ([{"user_id": other, "movie_ids": [1]}],
                [{"user_id": own, "movie_ids": [1]},
                 {"user_id": 5, "movie_ids": [2]}]):
        forbidden(*stack.call("POST", "/api/v1/predict/recsys/batch",
                              {"items": bad})[::2])
    assert stack.db.sql("SELECT count(*) FROM batch_jobs") == jobs
    assert redis_cli(stack, "XLEN", "cinematch:jobs") == stream
    mine = submit(stack, {"items": [{"user_id": own, "movie_ids": [1]}] * 2})
    admins = submit(stack, {"items": [{"user_id": own, "movie_ids": [1]},
                                      {"user_id": 5, "movie_ids": [2]}]},
                    user=3)
    consumer(stack, "--once")
    for job, user in ((mine, 1), (admins, 3)):
        status, _, doc = stack.call("GET", f"/api/v1/jobs/{job}", user=user)
        assert status == 200 and doc["status"] == "succeeded", doc


@pytest.mark.parametrize("body,field", [
    ({}, "items"),
    ({"items": []}, "items"),
    ({"items": "x"}, "items"),
    ({"items": [{"user_id": 1, "movie_ids": [1]}] * 1001}, "items"),
    ({"items": [{"user_id": 0, "movie_ids": [1]}]}, "items.user_id"),
    ({"items": [{"user_id": 1, "movie_ids": []}]}, "items.movie_ids"),
    ({"items": [{"user_id": 1, "movie_ids": [-3]}]}, "items.movie_ids"),
    ({"items": [{"user_id": 1, "movie_ids": list(range(1, 1002))}]}, "items.movie_ids"),
    ({"items": [{"user_id": 1, "movie_ids": [1], "k": 3}]}, "items"),
    ({"items": [7]}, "items"),
    ({"items": [{"user_id": 1, "movie_ids": [1]}], "priority": 1}, "priority"),
])
def test_bad_batches_are_422_and_make_no_job(stack, body, field):
    # regression: the validator's 422 came back as NGX_OK from sending it,
    # and the handler went on to create the job anyway
    before = stack.db.sql("SELECT count(*) FROM batch_jobs")
    status, _, doc = stack.call("POST", "/api/v1/predict/recsys/batch", body)
    assert status == 422, doc
    assert field in doc["error"]["fields"]
    assert stack.db.sql("SELECT count(*) FROM batch_jobs") == before


def test_unknown_model_is_404(stack):
    status, _, doc = stack.call("POST", "/api/v1/predict/nope/batch",
                                {"items": items(1)})
    assert status == 404


def test_batch_usage_errors_exit_2(stack):
    for args in (["--bogus"], ["--claim-idle", "x"], ["--consumer", ""], ["extra"]):
        r = run("batch", *args, env=stack.env, check=False)
        assert r.returncode == 2, args
        assert "cinematch batch" in r.stderr
    assert run("batch", "--help", env=stack.env).stdout.startswith("usage:")

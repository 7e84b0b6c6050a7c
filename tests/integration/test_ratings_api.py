"""PUT /api/v1/ratings/{movie_id} and GET /api/v1/ratings through nginx, with
real PostgreSQL (001 + 002 schema, a synthetic catalogue) and a `cinematch
infer` daemon serving a freshly trained model: a rating lands in `ratings`
and `ratings_buffer` in the caller's rating user space, is folded into the
daemon, and the caller's next /recommend reflects it.  /recommend takes the
caller's identity: user_id defaults to the caller, another needs admin.
"""

import csv
import json
import os
import subprocess

import pytest

import harness
from inferfixture import BIN, Infer

ROOT = harness.ROOT
SCHEMA = [ROOT / "sql" / "001_users_auth.sql",
          ROOT / "sql" / "002_catalog_ratings.sql",
          ROOT / "sql" / "007_email_tokens.sql"]     # register's token + mail
DB = "cm_ratings_api"


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


@pytest.fixture(scope="module")
def data(workdir):
    d = workdir / "ratings-data"
    subprocess.run([str(BIN), "synth", "--out", str(d), "--users", "120",
                    "--items", "400", "--ratings", "6000", "--seed", "5"],
                   check=True, capture_output=True)
    return d


@pytest.fixture(scope="module")
def db(backends, data):
    backends.pg.psql(f"DROP DATABASE IF EXISTS {DB}", dbname="postgres")
    backends.pg.psql(f"CREATE DATABASE {DB}", dbname="postgres")
    d = _Db(backends.pg, DB)
    for f in SCHEMA:
        d.sql(f.read_text())
    rows = []
    with open(data / "movies.csv", newline="") as f:
        for rec in csv.DictReader(f):
            title = rec["title"].replace("'", "''")
            rows.append(f"({int(rec['movieId'])}, '{title}')")
    d.sql("INSERT INTO movies (movie_id, title) VALUES " + ",".join(rows))
    return d


@pytest.fixture(scope="module")
def api(workdir, backends, db, data):
    secret = os.path.join(workdir, "ratings-jwt.secret")
    if os.path.exists(secret):
        os.unlink(secret)
    subprocess.run([str(BIN), "jwt-secret", "generate", "--out", secret],
                   check=True, capture_output=True)
    artifact = workdir / "ratings-model.cmrs"
    subprocess.run([str(BIN), "train", "recsys", "--data", str(data), "--out",
                    str(artifact), "--factors", "8", "--iters", "5"],
                   check=True, capture_output=True)
    infer = Infer(workdir, name="infer-ratings", extra=[
        "--recsys", str(artifact), "--movies", str(data / "movies.csv"),
        "--recsys-version", "1"])
    infer.start()
    ngx = harness.Nginx(workdir, pg=db, redis=backends.redis,
                        http_extra=infer.directive
                        + f"\ncinematch_jwt_secret_file {secret};",
                        name="nginx-ratings", workers=2)
    try:
        ngx.start()
        harness.wait_for(lambda: ngx.json("GET", "/ready")[0] == 200,
                         timeout=10, what="ready with the model")
        yield ngx
    finally:
        ngx.stop()
        infer.stop()
    problems = ngx.log_problems()
    assert not problems, "nginx logged alerts:\n" + "\n".join(problems)


@pytest.fixture(scope="module")
def m(db):
    """Movie ids of the catalogue (synth ids are not contiguous)."""
    return [int(x) for x in db.sql("SELECT movie_id FROM movies "
                                   "ORDER BY movie_id LIMIT 40").split()]


def call(api, method, path, doc=None, raw=None, token=None):
    h = {}
    body = None
    if doc is not None or raw is not None:
        body = raw if raw is not None else json.dumps(doc).encode()
        h["Content-Type"] = "application/json"
    if token:
        h["Authorization"] = f"Bearer {token}"
    status, hdrs, data = api.request(method, path, body=body, headers=h,
                                     timeout=30)
    return status, hdrs, json.loads(data) if data else None


_seq = [0]


def new_user(api, db, admin=False):
    _seq[0] += 1
    email = f"r{_seq[0]}-{os.getpid()}@example.com"
    status, _, doc = call(api, "POST", "/api/v1/auth/register",
                          {"email": email, "password": "long enough pw"})
    assert status == 201, doc
    uid = doc["user"]["id"]
    if admin:
        db.sql(f"UPDATE users SET role = 'admin' WHERE id = {uid}")
    status, _, tok = call(api, "POST", "/api/v1/auth/login",
                          {"email": email, "password": "long enough pw"})
    assert status == 200, tok
    rid = int(db.sql(f"SELECT rating_user_id FROM users WHERE id = {uid}"))
    return {"id": uid, "rid": rid, "token": tok["access_token"]}


def test_rating_is_stored_in_both_tables_and_folded_in(api, db, m):
    u = new_user(api, db)
    status, hdrs, doc = call(api, "PUT", f"/api/v1/ratings/{m[6]}",
                             {"rating": 4.5}, token=u["token"])
    assert status == 200, doc
    assert doc["movie_id"] == m[6] and doc["rating"] == 4.5
    assert doc["folded_in"] is True and doc["rated_at"].endswith("Z")
    assert db.sql(f"SELECT rating, source FROM ratings WHERE user_id = {u['rid']}") \
        == "4.5|app"
    assert db.sql(f"SELECT movie_id, rating, source FROM ratings_buffer "
                  f"WHERE user_id = {u['rid']}") == f"{m[6]}|4.5|app"

    # a second rating of the same movie replaces it, and is buffered again
    status, _, doc = call(api, "PUT", f"/api/v1/ratings/{m[6]}",
                          {"rating": 1}, token=u["token"])
    assert status == 200 and doc["rating"] == 1.0
    assert db.sql(f"SELECT rating FROM ratings WHERE user_id = {u['rid']}") == "1.0"
    assert db.sql(f"SELECT count(*) FROM ratings_buffer WHERE user_id = {u['rid']}") == "2"


def test_rating_changes_the_callers_recommendations(api, db, m):
    u = new_user(api, db)
    status, _, before = call(api, "POST", "/api/v1/recommend", {"k": 10},
                             token=u["token"])
    assert status == 200, before
    assert before["user_id"] == u["rid"]
    assert before["is_fallback"] is True        # nothing known yet

    rated = {m[10], m[11], m[12]}
    for movie, rating in ((m[10], 5), (m[11], 5), (m[12], 0.5)):
        status, _, doc = call(api, "PUT", f"/api/v1/ratings/{movie}",
                              {"rating": rating}, token=u["token"])
        assert status == 200 and doc["folded_in"] is True, doc

    status, _, after = call(api, "POST", "/api/v1/recommend", {"k": 10},
                            token=u["token"])
    assert status == 200, after
    assert after["user_id"] == u["rid"] and after["is_fallback"] is False
    assert [r["movie_id"] for r in after["recommendations"]] \
        != [r["movie_id"] for r in before["recommendations"]]
    # rated movies are excluded as seen
    assert not rated & {r["movie_id"] for r in after["recommendations"]}


def test_recommend_for_another_user_needs_admin(api, db):
    u = new_user(api, db)
    other = new_user(api, db)
    a = new_user(api, db, admin=True)
    status, _, doc = call(api, "POST", "/api/v1/recommend",
                          {"user_id": other["rid"]}, token=u["token"])
    assert status == 403 and doc["error"]["code"] == "forbidden"
    # naming oneself is fine
    status, _, doc = call(api, "POST", "/api/v1/recommend",
                          {"user_id": u["rid"]}, token=u["token"])
    assert status == 200 and doc["user_id"] == u["rid"]
    # an admin may name anyone, dataset users included
    status, _, doc = call(api, "POST", "/api/v1/recommend", {"user_id": 5},
                          token=a["token"])
    assert status == 200 and doc["user_id"] == 5
    status, _, doc = call(api, "POST", "/api/v1/recommend", {"user_id": 5})
    assert status == 401


def test_ratings_list_is_the_callers_own(api, db, m):
    a = new_user(api, db)
    b = new_user(api, db)
    for movie, rating in ((m[20], 3), (m[21], 3.5)):
        assert call(api, "PUT", f"/api/v1/ratings/{movie}", {"rating": rating},
                    token=a["token"])[0] == 200
    status, _, doc = call(api, "GET", "/api/v1/ratings", token=a["token"])
    assert status == 200
    assert doc["total"] == 2
    assert [(r["movie_id"], r["rating"]) for r in doc["ratings"]] == [(m[21], 3.5), (m[20], 3.0)]
    assert all(r["title"] for r in doc["ratings"])
    status, _, doc = call(api, "GET", "/api/v1/ratings?limit=1&offset=1",
                          token=a["token"])
    assert [r["movie_id"] for r in doc["ratings"]] == [m[20]] and doc["total"] == 2
    assert call(api, "GET", "/api/v1/ratings", token=b["token"])[2] \
        == {"ratings": [], "total": 0}
    assert call(api, "GET", "/api/v1/ratings")[0] == 401
    assert call(api, "GET", "/api/v1/ratings?limit=0", token=a["token"])[0] == 422
    assert call(api, "GET", "/api/v1/ratings?limit=abc", token=a["token"])[0] == 422


@pytest.mark.parametrize("movie", ["999999", "0", "-1", "007", "abc",
                                   "2147483648", "99999999999", "1%27%20OR%201=1",
                                   "%2500"])
def test_rating_an_unknown_or_malformed_movie_is_404(api, db, movie):
    u = new_user(api, db)
    status, _, doc = call(api, "PUT", f"/api/v1/ratings/{movie}",
                          {"rating": 3}, token=u["token"])
    assert status == 404, doc
    assert db.sql(f"SELECT count(*) FROM ratings WHERE user_id = {u['rid']}") == "0"


@pytest.mark.parametrize("doc", [
    {}, {"rating": 0}, {"rating": 0.25}, {"rating": 5.5}, {"rating": 4.75},
    {"rating": -1}, {"rating": "4"}, {"rating": None}, {"rating": True},
    {"rating": [4]}, {"rating": 1e308}, {"rating": 4, "movie_id": 8},
    {"rating": 4, "user_id": 1},
])
def test_rating_with_bad_fields_is_422_and_writes_nothing(api, db, doc):
    u = new_user(api, db)
    status, _, body = call(api, "PUT", "/api/v1/ratings/7", doc,
                           token=u["token"])
    assert status == 422, body
    assert db.sql(f"SELECT count(*) FROM ratings_buffer WHERE user_id = {u['rid']}") == "0"


@pytest.mark.parametrize("raw", [
    b'{"rating": 4, "rating": 5}', b'{"rating": 4', b'{"rating": "\xff"}',
    b'{"r\\u0000": 4}', b'[4]', b'NaN',
])
def test_rating_with_malformed_json_is_400(api, db, raw):
    u = new_user(api, db)
    status, _, body = call(api, "PUT", "/api/v1/ratings/7", raw=raw,
                           token=u["token"])
    assert status == 400, body

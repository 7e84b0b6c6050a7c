"""POST /api/v1/models/{name}/versions: an artifact uploaded through the
API (ngx_http_cinematch_api_models.c, sql/015 cm_model_register_upload).

The body goes to a temporary file, is validated on the thread pool as the
daemon would (magic, version, shapes, checksum), hashed, stored under
<store>/<name>/<version>/ with SHA256SUMS and registered in staging.  A
rejected upload (truncated, wrong magic, bad checksum, over the size
limit, a sha256 that does not match) writes nothing: not in the store, not
in the registry.
"""

import hashlib
import http.client
import json
import os
import subprocess

import pytest

import harness
from inferfixture import BIN
from tokens import access_token, new_secret

DB = "cm_model_upload"
LIMIT = 1024 * 1024


class _Db:
    def __init__(self, pg):
        self.pg = pg

    @property
    def conninfo(self):
        return (f"host=127.0.0.1 port={self.pg.port} user={self.pg.user} "
                f"dbname={DB} sslmode=disable connect_timeout=5")

    def sql(self, text):
        return self.pg.psql(text, dbname=DB).strip()


@pytest.fixture(scope="module")
def env(workdir, backends):
    data = workdir / "upload-data"
    subprocess.run([str(BIN), "synth", "--out", str(data), "--users", "60",
                    "--items", "200", "--ratings", "3000", "--seed", "3"],
                   check=True, capture_output=True)
    artifact = workdir / "upload.cmrs"
    subprocess.run([str(BIN), "train", "recsys", "--data", str(data), "--out",
                    str(artifact), "--factors", "6", "--iters", "3"],
                   check=True, capture_output=True)
    backends.pg.psql(f"DROP DATABASE IF EXISTS {DB}", dbname="postgres")
    backends.pg.psql(f"CREATE DATABASE {DB}", dbname="postgres")
    db = _Db(backends.pg)
    subprocess.run([str(BIN), "migrate"], check=True, capture_output=True,
                   env=dict(os.environ, CINEMATCH_PG_DSN=db.conninfo))
    store = workdir / "upload-store"
    store.mkdir(exist_ok=True)
    secret = new_secret(BIN, workdir / "upload-jwt.secret")
    ngx = harness.Nginx(
        workdir, pg=db, redis=backends.redis, name="nginx-upload", workers=2,
        http_extra=f"cinematch_jwt_secret_file {workdir / 'upload-jwt.secret'};"
        f"\ncinematch_model_store {store};"
        f"\ncinematch_model_upload_max_size {LIMIT};")
    ngx.start()
    status, _, doc = ngx.json("POST", "/api/v1/auth/register",
                              {"email": f"upload-{os.getpid()}@example.com",
                               "password": "long enough pw"})
    assert status == 201, doc
    uid = doc["user"]["id"]
    db.sql(f"UPDATE users SET role = 'admin' WHERE id = {uid}")
    ngx.admin = access_token(secret, role="admin", sub=str(uid))
    ngx.user = access_token(secret, role="user", sub=str(uid + 1000))
    ngx.db = db
    ngx.store = store
    ngx.artifact = artifact.read_bytes()
    try:
        yield ngx
    finally:
        ngx.stop()
    problems = ngx.log_problems()
    assert not problems, "nginx logged alerts:\n" + "\n".join(problems)


def upload(env, body, name="recsys", token=None, query="", chunked=False):
    h = {"Content-Type": "application/octet-stream"}
    tok = env.admin if token is None else token
    if tok:
        h["Authorization"] = f"Bearer {tok}"
    status, _, data = env.request("POST", f"/api/v1/models/{name}/versions"
                                  + query, body=body, headers=h, timeout=30,
                                  chunked=chunked)
    return status, (json.loads(data) if data else None)


def snapshot(env):
    files = sorted(str(p.relative_to(env.store)) for p in env.store.rglob("*"))
    return files, env.db.sql("SELECT count(*) FROM model_versions")


def test_a_valid_artifact_is_stored_hashed_and_registered_in_staging(env):
    body = env.artifact
    sha = hashlib.sha256(body).hexdigest()
    status, doc = upload(env, body, query=f"?sha256={sha}")
    assert status == 201, doc
    assert doc["stage"] == "staging" and doc["artifact_sha256"] == sha
    assert doc["artifact_bytes"] == len(body) and doc["model_name"] == "recsys"
    v = doc["version"]
    d = env.store / "recsys" / str(v)
    assert (d / "model.cmrs").read_bytes() == body
    assert (d / "SHA256SUMS").read_text() == f"{sha}  model.cmrs\n"
    assert env.db.sql("SELECT stage || ' ' || artifact_path FROM model_versions"
                      f" WHERE model_name = 'recsys' AND version = {v}") == \
        f"staging {d / 'model.cmrs'}"
    assert not list((env.store / "recsys").glob(".incoming*"))
    # the registry names an artifact the daemons accept: it promotes
    status, _, doc = env.json(
        "POST", f"/api/v1/models/recsys/versions/{v}/stage",
        {"stage": "production"}, {"Authorization": f"Bearer {env.admin}"})
    assert status == 200 and doc["stage"] == "production", doc
    # the next upload is the next version, also chunked
    status, doc = upload(env, body, chunked=True)
    assert status == 201 and doc["version"] == v + 1, doc


def test_a_new_model_name_becomes_a_recsys_model(env):
    status, doc = upload(env, env.artifact, name="recsys-exp")
    assert status == 201 and doc["version"] == 1, doc
    assert env.db.sql("SELECT task FROM models WHERE name = 'recsys-exp'") == \
        "recsys"


def corrupt(body, at, xor=0xFF):
    b = bytearray(body)
    b[at] ^= xor
    return bytes(b)


@pytest.mark.parametrize("what", ["truncated", "wrong_magic", "bad_checksum",
                                  "header_only", "not_an_artifact"])
def test_a_bad_artifact_is_refused_and_nothing_is_written(env, what):
    body = {"truncated": env.artifact[:len(env.artifact) // 2],
            "wrong_magic": corrupt(env.artifact, 0),
            "bad_checksum": corrupt(env.artifact, len(env.artifact) - 5),
            "header_only": env.artifact[:512],
            "not_an_artifact": b"hello, this is not a model\n" * 40}[what]
    before = snapshot(env)
    status, doc = upload(env, body)
    assert status == 422 and "artifact" in doc["error"]["fields"], doc
    assert snapshot(env) == before


def test_a_sha256_that_does_not_match_is_refused(env):
    before = snapshot(env)
    status, doc = upload(env, env.artifact, query="?sha256=" + "0" * 64)
    assert status == 422 and "sha256" in doc["error"]["fields"], doc
    status, doc = upload(env, env.artifact, query="?sha256=XYZ")
    assert status == 422 and "sha256" in doc["error"]["fields"], doc
    assert snapshot(env) == before


def test_an_artifact_over_the_limit_is_413_unread(env):
    before = snapshot(env)
    big = env.artifact + b"\0" * LIMIT
    status, doc = upload(env, big)
    assert status == 413 and doc["error"]["code"] == "payload_too_large", doc
    status, doc = upload(env, big, chunked=True)
    assert status == 413 and doc["error"]["code"] == "payload_too_large", doc
    assert snapshot(env) == before


def test_uploads_need_an_administrator_and_a_recsys_model(env):
    before = snapshot(env)
    assert upload(env, env.artifact, token="")[0] == 401
    assert upload(env, env.artifact, token=env.user)[0] == 403
    assert upload(env, env.artifact, name="Bad!")[0] == 404
    status, doc = upload(env, b"")
    assert status == 422 and "artifact" in doc["error"]["fields"], doc
    status, doc = upload(env, env.artifact, name="dialog")
    assert status == 409, doc
    assert snapshot(env) == before


def test_parallel_uploads_get_distinct_versions(env):
    from concurrent.futures import ThreadPoolExecutor
    bad = env.artifact[:100]
    with ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda i: upload(env, env.artifact if i % 3 else bad,
                                             name="recsys-par"), range(9)))
    ok = sorted(doc["version"] for status, doc in got if status == 201)
    assert ok == list(range(1, 7)), got
    assert sorted(s for s, _ in got) == [201] * 6 + [422] * 3
    for v in ok:
        assert (env.store / "recsys-par" / str(v) / "model.cmrs").read_bytes() \
            == env.artifact
    assert not list((env.store / "recsys-par").glob(".incoming*"))


def test_a_refusal_before_the_body_is_read_closes_the_connection(env):
    # the unread artifact must not be parsed as the next request
    conn = http.client.HTTPConnection("127.0.0.1", env.port, timeout=10)
    try:
        conn.request("POST", "/api/v1/models/recsys/versions",
                     body=env.artifact,
                     headers={"Content-Type": "application/octet-stream",
                              "Authorization": f"Bearer {env.user}"})
        resp = conn.getresponse()
        resp.read()
        assert resp.status == 403
        assert resp.getheader("Connection", "").lower() == "close"
    finally:
        conn.close()

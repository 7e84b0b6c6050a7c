"""Canary serving (issue 8 "Canary", sql/015): a staging recsys version
served beside production to a share of the users, stable per user.

Against a registry stack (migrated database, synthetic catalogue, version 1
production, version 2 staging), `cinematch infer --dsn`, nginx with the
response cache and the request log:

  - `cinematch model canary` and POST/DELETE /api/v1/models/{name}/canary
    set, change and stop it; the daemon reloads on the NOTIFY
  - share 0 / 0.5 / 1: each user's answers come from the version its
    bucket (cinematch/canary.h, recomputed here) names, on every request
  - a canary user never gets production's cached answer nor the reverse
  - `cinematch eval replay` reports both versions' outcomes
  - promoting the canary serves it to everyone; stopping it reverts
  - the API (canary and promotion) re-hashes the artifact first: a changed
    or missing artifact is a 409 and the registry is untouched
"""

import json
import time
import os
import re
import subprocess

import pytest

import harness
from inferfixture import BIN, Infer
from tokens import access_token, new_secret

DB = "cm_canary"
USERS = range(1, 81)


def bucket(model, user):
    """cm_canary_bucket() of shared/src/canary.c, for checking the split."""
    mask, prime = (1 << 64) - 1, 0x100000001b3
    h = 0xcbf29ce484222325
    for b in model.encode() + b"\xff":
        h = ((h ^ b) * prime) & mask
    for i in range(8):
        h = ((h ^ ((user >> (8 * i)) & 0xff)) * prime) & mask
    h ^= h >> 30
    h = (h * 0xbf58476d1ce4e5b9) & mask
    h ^= h >> 27
    h = (h * 0x94d049bb133111eb) & mask
    h ^= h >> 31
    return h % 10000


def test_the_python_bucket_is_the_c_one():
    # the values pinned in tests/unit/test_canary.c
    assert [bucket("recsys", 1), bucket("recsys", 2),
            bucket("recsys", 1000000), bucket("dialog", 1)] == \
        [192, 6983, 6363, 9104]


class _Stack:
    def __init__(self, workdir, pg):
        self.workdir = workdir
        self.pg = pg
        self.store = str(workdir / "canary-models")

    @property
    def conninfo(self):
        return (f"host=127.0.0.1 port={self.pg.port} user={self.pg.user} "
                f"dbname={DB} sslmode=disable connect_timeout=5")

    def sql(self, text):
        return self.pg.psql(text, dbname=DB).strip()

    def cli(self, *args):
        return subprocess.run(
            [str(BIN), *args], capture_output=True, text=True, timeout=300,
            cwd=str(self.workdir),
            env=dict(os.environ, CINEMATCH_PG_DSN=self.conninfo,
                     CINEMATCH_MODEL_STORE=self.store))

    def run(self, *args):
        r = self.cli(*args)
        assert r.returncode == 0, f"{args}: {r.stdout}\n{r.stderr}"
        return r.stdout

    def register(self, name, factors, stage="staging"):
        artifact = self.workdir / name
        self.run("train", "recsys", "--data", str(self.data), "--out",
                 str(artifact), "--factors", str(factors), "--iters", "3")
        out = self.run("model", "register", "--name", "recsys", "--artifact",
                       str(artifact), "--stage", stage)
        return int(re.findall(r"\d+", out)[-1])

    def stage_of(self, v):
        return self.sql("SELECT stage || ':' || coalesce(canary_share::text,"
                        f" '-') FROM model_versions WHERE model_name = 'recsys'"
                        f" AND version = {v}")

    def artifact(self, v):
        return self.sql("SELECT artifact_path FROM model_versions"
                        f" WHERE model_name = 'recsys' AND version = {v}")


@pytest.fixture(scope="module")
def stack(workdir, backends):
    data = workdir / "canary-data"
    subprocess.run([str(BIN), "synth", "--out", str(data), "--users", "100",
                    "--items", "300", "--ratings", "5000", "--seed", "5"],
                   check=True, capture_output=True)
    backends.pg.psql(f"DROP DATABASE IF EXISTS {DB}", dbname="postgres")
    backends.pg.psql(f"CREATE DATABASE {DB}", dbname="postgres")
    st = _Stack(workdir, backends.pg)
    st.data = data
    st.run("migrate")
    st.run("ingest", "--data", str(data), "--target", "ratings")
    st.v1 = st.register("canary-v1.cmrs", 8, stage="none")
    st.run("model", "promote", "--name", "recsys", "--version", str(st.v1))
    st.v2 = st.register("canary-v2.cmrs", 5)
    return st


@pytest.fixture(scope="module")
def api(workdir, backends, stack):
    secret = new_secret(BIN, workdir / "canary-jwt.secret")
    inf = Infer(workdir, name="infer-canary", extra=["--dsn", stack.conninfo])
    inf.start()
    ngx = harness.Nginx(
        workdir, pg=stack, redis=backends.redis, name="nginx-canary",
        workers=2,
        http_extra=inf.directive
        + f"\ncinematch_jwt_secret_file {workdir / 'canary-jwt.secret'};"
        + "\ncinematch_cache_ttl 60s;\ncinematch_request_log on;"
        + "\ncinematch_request_log_flush 100ms;")
    ngx.start()
    # a real account: the registry records who changed a stage
    status, _, doc = ngx.json("POST", "/api/v1/auth/register",
                              {"email": f"canary-{os.getpid()}@example.com",
                               "password": "long enough pw"})
    assert status == 201, doc
    uid = doc["user"]["id"]
    stack.sql(f"UPDATE users SET role = 'admin' WHERE id = {uid}")
    ngx.admin = access_token(secret, role="admin", sub=str(uid))
    ngx.user = access_token(secret, role="user", sub=str(uid + 1000))
    ngx.infer = inf
    harness.wait_for(lambda: ngx.json("GET", "/ready")[2]["checks"]
                     ["inference"]["status"] == "ok", timeout=15,
                     what="the daemon ready with the model")
    try:
        yield ngx
    finally:
        ngx.stop()
        inf.stop()
    problems = ngx.log_problems()
    assert not problems, "nginx logged alerts:\n" + "\n".join(problems)


def call(api, method, path, doc=None, token=None, headers=None):
    h = dict(headers or {})
    body = None
    if doc is not None:
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        h["Content-Type"] = "application/json"
    if token:
        h["Authorization"] = f"Bearer {token}"
    status, hdrs, data = api.request(method, path, body=body, headers=h,
                                     timeout=30)
    return status, hdrs, (json.loads(data) if data else None)


def recommend(api, user, cached=False, k=5):
    status, hdrs, doc = call(
        api, "POST", "/api/v1/recommend", {"user_id": user, "k": k},
        api.admin, headers=None if cached else {"Cache-Control": "no-cache"})
    assert status == 200, doc
    return doc["model_version"], hdrs.get("x-cache"), doc


def served(api):
    """recsys entries the daemon publishes: {version: canary_share|None}"""
    _, _, ready = api.json("GET", "/ready")
    return {m["version"]: m.get("canary_share")
            for m in ready["checks"]["inference"]["models"]
            if m["name"] == "recsys"}


def wait_served(api, want):
    harness.wait_for(lambda: served(api) == want, timeout=15,
                     what=f"the daemon serving {want}")


def expected(stack, share):
    return {u: str(stack.v2) if bucket("recsys", u) < share * 10000
            else str(stack.v1) for u in USERS}


# --- setting it -------------------------------------------------------------


def test_canary_cli_checks_its_arguments(stack):
    for args in ((), ("recsys",), ("recsys", str(stack.v2)),
                 ("recsys", str(stack.v2), "--share", "1.5"),
                 ("recsys", str(stack.v2), "--share", "-0.1"),
                 ("recsys", str(stack.v2), "--share", "0.12345"),
                 ("recsys", "two", "--share", "0.1"),
                 ("--name", "recsys", "--stop", "--share", "0.1"),
                 ("recsys", str(stack.v2), "--share", "0.1", "--bogus")):
        r = stack.cli("model", "canary", *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
    assert "usage" in stack.run("model", "canary", "--help")
    r = stack.cli("model", "canary", "recsys", "99", "--share", "0.1")
    assert r.returncode == 1 and "not in the registry" in r.stderr
    # production is not a canary; nothing changed
    r = stack.cli("model", "canary", "recsys", str(stack.v1), "--share", "0.1")
    assert r.returncode == 1 and "only a staging version" in r.stderr, r.stderr
    assert stack.stage_of(stack.v1) == "production:-"
    assert stack.stage_of(stack.v2) == "staging:-"


def test_share_zero_keeps_every_user_on_production(api, stack):
    out = stack.run("model", "canary", "recsys", str(stack.v2), "--share", "0")
    assert "canary" in out
    assert stack.stage_of(stack.v2) == "canary:0.0000"
    wait_served(api, {str(stack.v1): None, str(stack.v2): 0.0})
    got = {u: recommend(api, u)[0] for u in USERS}
    assert set(got.values()) == {str(stack.v1)}


def test_share_half_routes_each_user_by_its_bucket_every_time(api, stack):
    status, _, doc = call(api, "POST", "/api/v1/models/recsys/canary",
                          {"version": stack.v2, "share": 0.5}, api.admin)
    assert status == 200, doc
    assert doc == {"model_name": "recsys", "version": stack.v2,
                   "stage": "canary", "canary_share": 0.5,
                   "previous_stage": "canary", "replaced_version": None,
                   "changed": True}
    wait_served(api, {str(stack.v1): None, str(stack.v2): 0.5})
    listed = {l.split()[1]: l for l in stack.run("model", "list").splitlines()[1:]}
    assert "canary 50%" in listed[str(stack.v2)]
    assert {v["version"]: v["canary_share"] for v in
            json.loads(stack.run("model", "list", "--json"))} == \
        {stack.v1: None, stack.v2: 0.5}
    want = expected(stack, 0.5)
    assert 20 < sum(v == str(stack.v2) for v in want.values()) < 60
    for _ in range(2):          # the same user, the same version, each time
        assert {u: recommend(api, u)[0] for u in USERS} == want
    # the answers differ by model, not only by label
    a = next(u for u in USERS if want[u] == str(stack.v2))
    assert recommend(api, a)[2]["recommendations"]


def test_share_one_serves_every_user_the_canary(api, stack):
    stack.run("model", "canary", "--name", "recsys", "--version",
              str(stack.v2), "--share", "1")
    wait_served(api, {str(stack.v1): None, str(stack.v2): 1.0})
    assert {recommend(api, u)[0] for u in USERS} == {str(stack.v2)}
    # requests without a user stay on production
    status, _, doc = call(api, "GET", "/api/v1/popular?k=3")
    assert status == 200 and doc["model_version"] == str(stack.v1), doc


def test_a_canary_user_never_gets_the_other_versions_cached_answer(api, stack):
    status, _, _ = call(api, "POST", "/api/v1/models/recsys/canary",
                        {"version": stack.v2, "share": 0.5}, api.admin)
    assert status == 200
    wait_served(api, {str(stack.v1): None, str(stack.v2): 0.5})
    want = expected(stack, 0.5)
    uc = next(u for u in USERS if want[u] == str(stack.v2))
    up = next(u for u in USERS if want[u] == str(stack.v1))
    for u in (uc, up):
        v, c1, _ = recommend(api, u, cached=True, k=7)
        assert c1 == "MISS" and v == want[u]
        v, c2, _ = recommend(api, u, cached=True, k=7)
        assert c2 == "HIT" and v == want[u]
    # the canary user goes back to production: production's key, not the
    # canary's cached answer
    call(api, "POST", "/api/v1/models/recsys/canary",
         {"version": stack.v2, "share": 0}, api.admin)
    wait_served(api, {str(stack.v1): None, str(stack.v2): 0.0})
    v, c, _ = recommend(api, uc, cached=True, k=7)
    assert (v, c) == (str(stack.v1), "MISS")
    v, c, _ = recommend(api, up, cached=True, k=7)
    assert (v, c) == (str(stack.v1), "HIT")
    # and everyone to the canary: no production answer from the cache
    call(api, "POST", "/api/v1/models/recsys/canary",
         {"version": stack.v2, "share": 1}, api.admin)
    wait_served(api, {str(stack.v1): None, str(stack.v2): 1.0})
    for u in (uc, up):
        v, c, _ = recommend(api, u, cached=True, k=7)
        assert v == str(stack.v2) and (c == "HIT") == (u == uc), (u, v, c)


def settle_request_logs(stack, timeout=15):
    """Wait until no more request-log rows arrive (two counts 2.5 s apart,
    longer than the 1 s flush interval, agree)."""
    deadline = time.monotonic() + timeout
    last = stack.sql("SELECT count(*) FROM request_logs")
    while time.monotonic() < deadline:
        time.sleep(2.5)
        now = stack.sql("SELECT count(*) FROM request_logs")
        if now == last:
            return
        last = now
    raise AssertionError("request_logs kept growing for %d s" % timeout)


def test_replay_reports_the_outcomes_of_each_version(api, stack):
    call(api, "POST", "/api/v1/models/recsys/canary",
         {"version": stack.v2, "share": 0.5}, api.admin)
    wait_served(api, {str(stack.v1): None, str(stack.v2): 0.5})
    want = expected(stack, 0.5)
    # the earlier tests' answers reach request_logs in batches (flushed
    # every second per worker): let them land before starting afresh
    settle_request_logs(stack)
    stack.sql("TRUNCATE request_logs")
    answers = {u: recommend(api, u, k=4)[2] for u in range(1, 21)}
    harness.wait_for(lambda: int(stack.sql(
        "SELECT count(*) FROM request_logs WHERE status = 200")) >= 20,
        timeout=10, what="the answers in request_logs")
    logged = dict(tuple(line.split("|")) for line in stack.sql(
        "SELECT detail->>'rating_user_id', model_version FROM request_logs"
        " WHERE status = 200").splitlines())
    assert logged == {str(u): want[u] for u in range(1, 21)}
    # every third user later rates the first movie recommended to them
    hits = [u for u in range(1, 21) if u % 3 == 0]
    for u in hits:
        m = answers[u]["recommendations"][0]["movie_id"]
        stack.sql("INSERT INTO ratings_buffer (user_id, movie_id, rating, ts,"
                  f" source) VALUES ({u}, {m}, 4, now() + interval '1 second',"
                  " 'app')")
    doc = json.loads(stack.run("eval", "replay", "--since", "1h", "--json"))
    got = {v["model_version"]: v for v in doc["versions"]}
    for ver in (str(stack.v1), str(stack.v2)):
        users = [u for u in range(1, 21) if want[u] == ver]
        assert got[ver]["answers"] == len(users)
        assert got[ver]["hits"] == len([u for u in users if u in hits])


# --- stopping and promoting ----------------------------------------------------


def test_stopping_the_canary_reverts_to_production(api, stack):
    assert call(api, "DELETE", "/api/v1/models/recsys/canary",
                token=api.user)[0] == 403
    status, _, doc = call(api, "DELETE", "/api/v1/models/recsys/canary",
                          token=api.admin)
    assert status == 200 and doc == {"model_name": "recsys",
                                     "version": stack.v2, "changed": True}
    assert stack.stage_of(stack.v2) == "staging:-"
    wait_served(api, {str(stack.v1): None})
    assert {recommend(api, u)[0] for u in USERS} == {str(stack.v1)}
    status, _, doc = call(api, "DELETE", "/api/v1/models/recsys/canary",
                          token=api.admin)
    assert status == 200 and doc["version"] is None and not doc["changed"]
    assert stack.run("model", "canary", "--name", "recsys", "--stop") \
        .startswith("recsys has no canary")


def test_the_canary_endpoint_validates_and_refuses(api, stack):
    path = "/api/v1/models/recsys/canary"
    for body, field in (({"share": 0.1}, "version"),
                        ({"version": str(stack.v2), "share": 0.1}, "version"),
                        ({"version": stack.v2}, "share"),
                        ({"version": stack.v2, "share": 1.5}, "share"),
                        ({"version": stack.v2, "share": -0.1}, "share"),
                        ({"version": stack.v2, "share": 0.12345}, "share"),
                        ({"version": stack.v2, "share": "0.1"}, "share"),
                        ({"version": stack.v2, "share": 0.1, "x": 1}, "x")):
        status, _, doc = call(api, "POST", path, body, api.admin)
        assert status == 422 and field in doc["error"]["fields"], (body, doc)
    assert call(api, "POST", path, {"version": stack.v2, "share": 0.1},
                api.user)[0] == 403
    assert call(api, "POST", "/api/v1/models/Bad!/canary",
                {"version": 1, "share": 0.1}, api.admin)[0] == 404
    assert call(api, "POST", path, {"version": 99, "share": 0.1},
                api.admin)[0] == 404
    status, _, doc = call(api, "POST", path, {"version": stack.v1,
                                              "share": 0.1}, api.admin)
    assert status == 409 and doc["error"]["code"] == "conflict", doc
    assert stack.stage_of(stack.v1) == "production:-"


def test_a_changed_or_missing_artifact_is_refused_by_the_api(api, stack):
    v3 = stack.register("canary-v3.cmrs", 4)
    path = stack.artifact(v3)
    with open(path, "r+b") as f:            # one flipped byte
        f.seek(2048)
        b = f.read(1)
        f.seek(2048)
        f.write(bytes([b[0] ^ 0xFF]))
    try:
        status, _, doc = call(api, "POST", "/api/v1/models/recsys/canary",
                              {"version": v3, "share": 0.2}, api.admin)
        assert status == 409 and doc["error"]["code"] == "artifact_mismatch"
        status, _, doc = call(api, "POST",
                              f"/api/v1/models/recsys/versions/{v3}/stage",
                              {"stage": "production"}, api.admin)
        assert status == 409 and doc["error"]["code"] == "artifact_mismatch"
        r = stack.cli("model", "canary", "recsys", str(v3), "--share", "0.2")
        assert r.returncode == 1 and "sha256 differs" in r.stderr
        assert stack.stage_of(v3) == "staging:-"
        assert stack.stage_of(stack.v1) == "production:-"
        os.rename(path, path + ".gone")
        status, _, doc = call(api, "POST",
                              f"/api/v1/models/recsys/versions/{v3}/stage",
                              {"stage": "production"}, api.admin)
        assert status == 409 and doc["error"]["code"] == "artifact_unreadable"
        assert stack.stage_of(v3) == "staging:-"
    finally:
        if os.path.exists(path + ".gone"):
            os.rename(path + ".gone", path)
    # moving away from production needs no artifact check
    status, _, doc = call(api, "POST",
                          f"/api/v1/models/recsys/versions/{v3}/stage",
                          {"stage": "archived"}, api.admin)
    assert status == 200 and doc["stage"] == "archived", doc


def test_a_canary_the_daemon_cannot_load_leaves_production_to_everyone(
        api, stack):
    # named behind the CLI's and the API's backs: the daemon's own check
    v = stack.register("canary-bad.cmrs", 4)
    path = stack.artifact(v)
    with open(path, "r+b") as f:
        f.seek(1024)
        b = f.read(1)
        f.seek(1024)
        f.write(bytes([b[0] ^ 0xFF]))
    stack.sql("SELECT changed FROM cm_model_set_canary('recsys', %d, 1)" % v)
    try:
        harness.wait_for(lambda: "canary" in api.json("GET", "/ready")[2]
                         ["checks"]["inference"]["daemons"][0]["status"],
                         timeout=15, what="the canary's failure in /ready")
        status = api.json("GET", "/ready")[2]["checks"]["inference"] \
            ["daemons"][0]["status"]
        assert "sha256 differs" in status, status
        assert served(api) == {str(stack.v1): None}
        assert {recommend(api, u)[0] for u in USERS} == {str(stack.v1)}
    finally:
        stack.sql("SELECT changed FROM cm_model_stop_canary('recsys')")
        stack.sql("SELECT changed FROM cm_model_set_stage('recsys', %d,"
                  " 'archived')" % v)
    wait_served(api, {str(stack.v1): None})


def test_promoting_the_canary_serves_it_to_everyone(api, stack):
    stack.run("model", "canary", "recsys", str(stack.v2), "--share", "0.3")
    wait_served(api, {str(stack.v1): None, str(stack.v2): 0.3})
    status, _, doc = call(api, "POST",
                          f"/api/v1/models/recsys/versions/{stack.v2}/stage",
                          {"stage": "production"}, api.admin)
    assert status == 200, doc
    assert doc["previous_stage"] == "canary" and doc["archived_version"] == stack.v1
    assert stack.stage_of(stack.v2) == "production:-"
    assert stack.stage_of(stack.v1) == "archived:-"
    wait_served(api, {str(stack.v2): None})
    assert {recommend(api, u)[0] for u in USERS} == {str(stack.v2)}
    # the history has every step
    assert "staging>canary" in stack.sql(
        "SELECT string_agg(coalesce(from_stage, '') || '>' || to_stage, ' '"
        " ORDER BY id) FROM model_stage_events WHERE model_name = 'recsys'"
        f" AND version = {stack.v2}")


def test_the_registry_keeps_one_canary_with_a_share(stack):
    def refused(sql, what):
        # the constraint that refused it, caught in the same session
        got = stack.sql(f"""DO $t$ DECLARE c text; BEGIN {sql};
            PERFORM set_config('cm.refused', 'nothing', false);
            EXCEPTION WHEN check_violation OR unique_violation THEN
                GET STACKED DIAGNOSTICS c = CONSTRAINT_NAME;
                PERFORM set_config('cm.refused', c, false);
            END $t$; SELECT current_setting('cm.refused')""")
        assert got == what, sql

    refused("UPDATE model_versions SET stage = 'canary'"
            f" WHERE model_name = 'recsys' AND version = {stack.v1}",
            "model_versions_canary_share_check")
    refused("UPDATE model_versions SET canary_share = 0.5"
            f" WHERE model_name = 'recsys' AND version = {stack.v1}",
            "model_versions_canary_share_check")
    refused("UPDATE model_versions SET stage = 'canary', canary_share = 0.1"
            " WHERE model_name = 'recsys' AND stage = 'archived'",
            "model_versions_one_canary_key")

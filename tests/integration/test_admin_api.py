"""The model registry and the admin views through nginx, against a real
PostgreSQL migrated with every sql/ file and Redis:

    GET  /api/v1/models, /api/v1/models/{name}/versions   any caller
    POST /api/v1/models/{name}/versions/{v}/stage         admin
    GET  /api/v1/admin/drift|runs|ingestions[/{id}]|usage admin

Rows are written with SQL (the CLI tests in test_mlops.py cover how the
daemons write them); the stage endpoint is checked against the CLI
(`cinematch model rollback` after an API promotion: one shared function).
"""

import hashlib
import json
import os
import subprocess
import time

import pytest

import harness
from inferfixture import BIN

ROOT = harness.ROOT
DB = "cm_admin_api"


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
def db(backends):
    backends.pg.psql(f"DROP DATABASE IF EXISTS {DB}", dbname="postgres")
    backends.pg.psql(f"CREATE DATABASE {DB}", dbname="postgres")
    d = _Db(backends.pg, DB)
    r = subprocess.run([str(BIN), "migrate", "--dsn", d.conninfo, "--dir",
                        str(ROOT / "sql")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return d


@pytest.fixture(scope="module")
def api(workdir, backends, db):
    secret = os.path.join(workdir, "admin-jwt.secret")
    if os.path.exists(secret):
        os.unlink(secret)
    subprocess.run([str(BIN), "jwt-secret", "generate", "--out", secret],
                   check=True, capture_output=True)
    ngx = harness.Nginx(workdir, pg=db, redis=backends.redis,
                        http_extra=f"cinematch_jwt_secret_file {secret};",
                        name="nginx-admin", workers=2)
    try:
        ngx.start()
        yield ngx
    finally:
        ngx.stop()
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
    return status, json.loads(data) if data else None


_seq = [0]


def new_user(api, db, admin=False):
    _seq[0] += 1
    email = f"a{_seq[0]}-{os.getpid()}@example.com"
    status, doc = call(api, "POST", "/api/v1/auth/register",
                       {"email": email, "password": "long enough pw"})
    assert status == 201, doc
    uid = doc["user"]["id"]
    if admin:
        db.sql(f"UPDATE users SET role = 'admin' WHERE id = {uid}")
    status, tok = call(api, "POST", "/api/v1/auth/login",
                       {"email": email, "password": "long enough pw"})
    assert status == 200, tok
    return {"id": uid, "email": email, "token": tok["access_token"]}


@pytest.fixture(scope="module")
def admin(api, db):
    return new_user(api, db, admin=True)


@pytest.fixture(scope="module")
def user(api, db):
    return new_user(api, db)


ADMIN_GETS = ["/api/v1/admin/drift", "/api/v1/admin/runs",
              "/api/v1/admin/ingestions", "/api/v1/admin/ingestions/1",
              "/api/v1/admin/usage"]


def test_admin_views_need_an_administrator(api, user):
    for path in ADMIN_GETS:
        status, doc = call(api, "GET", path)
        assert status == 401, (path, doc)
        status, doc = call(api, "GET", path, token=user["token"])
        assert status == 403 and doc["error"]["code"] == "forbidden", path
    status, doc = call(api, "POST", "/api/v1/models/recsys/versions/1/stage",
                       {"stage": "production"}, token=user["token"])
    assert status == 403, doc
    # the registry itself is readable by any caller, not by nobody
    assert call(api, "GET", "/api/v1/models")[0] == 401
    assert call(api, "GET", "/api/v1/models", token=user["token"])[0] == 200


# ---- the registry ------------------------------------------------------------

def artifact(workdir, name, content):
    p = workdir / f"admin-{name}.bin"
    p.write_bytes(content)
    return str(p), hashlib.sha256(content).hexdigest()


@pytest.fixture(scope="module")
def registry(db, workdir):
    """recsys: v1 production, v2 staging, v3 none (with a run); a private
    model of another user; a model with no versions."""
    db.sql("""
        INSERT INTO training_runs (model_name, status, params, metrics,
                                   train_rows, test_rows, duration_ms,
                                   code_version, finished_at, gate_decision,
                                   gate_reason)
        VALUES ('recsys', 'succeeded', '{"factors": 8}',
                '{"rmse": 0.91, "ndcg@10": 0.30}', 900, 100, 1200, 't1', now(),
                'promoted', 'first model'),
               ('recsys', 'succeeded', '{"factors": 16}',
                '{"rmse": 0.90, "ndcg@10": 0.32}', 950, 100, 1500, 't1', now(),
                'rejected', 'ndcg@10 +0.5% < 1%')""")
    runs = db.sql("SELECT id FROM training_runs ORDER BY id").split()
    for v, stage, content, run in ((1, "none", b"one", runs[0]),
                                   (2, "staging", b"two", runs[1]),
                                   (3, "none", b"three", "NULL")):
        path, sha = artifact(workdir, f"recsys-{v}", content)
        db.sql(f"""INSERT INTO model_versions (model_name, version, stage,
                   artifact_path, artifact_sha256, artifact_bytes, metrics,
                   training_run_id)
                   VALUES ('recsys', {v}, '{stage}', '{path}', '{sha}',
                           {len(content)}, '{{"rmse": 0.9{v}}}', {run})""")
    db.sql("SELECT changed FROM cm_model_set_stage('recsys', 1, 'production')")
    return {"runs": [int(r) for r in runs]}


def versions(doc):
    return {v["version"]: v["stage"] for v in doc["versions"]}


def test_models_list_versions_stages_and_rollback_target(api, user, registry):
    status, doc = call(api, "GET", "/api/v1/models", token=user["token"])
    assert status == 200, doc
    models = {m["name"]: m for m in doc["models"]}
    assert {"recsys", "dialog"} <= set(models)
    rec = models["recsys"]
    assert rec["task"] == "recsys" and rec["production_version"] == 1
    assert rec["rollback_version"] is None
    assert [v["version"] for v in rec["versions"]] == [3, 2, 1]
    assert versions(rec) == {1: "production", 2: "staging", 3: "none"}
    v1 = rec["versions"][2]
    assert v1["metrics"] == {"rmse": 0.91}
    assert len(v1["artifact_sha256"]) == 64 and v1["created_at"].endswith("Z")
    assert "artifact_path" not in v1     # a server path is not the API's
    assert models["dialog"]["versions"] == []


def test_versions_carry_their_training_run(api, user, registry):
    status, doc = call(api, "GET", "/api/v1/models/recsys/versions",
                       token=user["token"])
    assert status == 200, doc
    assert doc["model"]["name"] == "recsys"
    by = {v["version"]: v for v in doc["versions"]}
    run = by[2]["run"]
    assert run["id"] == registry["runs"][1] and run["status"] == "succeeded"
    assert run["params"] == {"factors": 16}
    assert run["metrics"]["ndcg@10"] == 0.32
    assert run["gate_decision"] == "rejected" and "1%" in run["gate_reason"]
    assert by[3]["run"] is None
    for bad in ("nosuch", "Recsys", "x" * 40, "9abc", "re%2Fcsys"):
        status, doc = call(api, "GET", f"/api/v1/models/{bad}/versions",
                           token=user["token"])
        assert status == 404 and doc["error"]["code"] == "not_found", bad


def test_private_model_is_seen_by_its_owner_and_admins_only(api, db, admin):
    owner = new_user(api, db)
    other = new_user(api, db)
    db.sql(f"INSERT INTO models (name, task, owner_id, private)"
           f" VALUES ('mine-{owner['id']}', 'recsys', {owner['id']}, true)")
    name = f"mine-{owner['id']}"
    for who, seen in ((owner, True), (admin, True), (other, False)):
        status, doc = call(api, "GET", "/api/v1/models", token=who["token"])
        assert status == 200
        assert (name in {m["name"] for m in doc["models"]}) == seen
        status, doc = call(api, "GET", f"/api/v1/models/{name}/versions",
                           token=who["token"])
        assert status == (200 if seen else 404), doc


def stage(api, token, name, v, body):
    return call(api, "POST", f"/api/v1/models/{name}/versions/{v}/stage",
                body, token=token)


def listen(db, channel, seconds):
    """psql LISTENing for `seconds`: it prints each notification it got."""
    return subprocess.Popen(
        [str(harness.PG_BIN / "psql"), "-h", "127.0.0.1", "-p",
         str(db.pg.port), "-U", db.pg.user, "-d", db.dbname, "-c",
         f"LISTEN {channel}", "-c", f"SELECT pg_sleep({seconds})"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_promotion_archives_old_production_notifies_and_is_recorded(
        api, db, admin, registry):
    sub = listen(db, "cinematch_models", 2)
    time.sleep(0.5)
    status, doc = stage(api, admin["token"], "recsys", 2,
                        {"stage": "production"})
    assert status == 200, doc
    assert doc == {"model_name": "recsys", "version": 2, "stage": "production",
                   "previous_stage": "staging", "archived_version": 1,
                   "changed": True}
    out, _ = sub.communicate(timeout=20)
    assert 'payload "recsys:2"' in out, out
    assert db.sql("SELECT version || ':' || stage FROM model_versions"
                  " WHERE model_name = 'recsys' ORDER BY version") \
        == "1:archived\n2:production\n3:none"
    # the history names the admin who did it
    assert db.sql("SELECT changed_by FROM model_stage_events WHERE"
                  " model_name = 'recsys' AND version = 2"
                  " AND to_stage = 'production'") == str(admin["id"])
    status, doc = call(api, "GET", "/api/v1/models/recsys/versions",
                       token=admin["token"])
    assert doc["model"]["production_version"] == 2
    assert doc["model"]["rollback_version"] == 1

    # the same stage again changes nothing and notifies nobody
    status, doc = stage(api, admin["token"], "recsys", 2,
                        {"stage": "production"})
    assert status == 200 and doc["changed"] is False

    # the CLI's rollback runs the same SQL: back to 1, and 2 is archived
    r = subprocess.run([str(BIN), "model", "rollback", "--name", "recsys",
                        "--dsn", db.conninfo], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "version 1 is production" in r.stdout
    status, doc = call(api, "GET", "/api/v1/models", token=admin["token"])
    rec = {m["name"]: m for m in doc["models"]}["recsys"]
    assert versions(rec) == {1: "production", 2: "archived", 3: "none"}
    assert rec["rollback_version"] == 2


def test_stage_transitions_that_are_refused(api, db, admin, registry):
    prod = db.sql("SELECT version FROM model_versions WHERE"
                  " model_name = 'recsys' AND stage = 'production'")
    # production is left only by promoting another version
    status, doc = stage(api, admin["token"], "recsys", prod,
                        {"stage": "archived"})
    assert status == 409 and doc["error"]["code"] == "conflict", doc
    status, doc = stage(api, admin["token"], "recsys", 3, {"stage": "staging"})
    assert status == 200 and doc["previous_stage"] == "none", doc
    status, doc = stage(api, admin["token"], "recsys", 3,
                        {"stage": "archived"})
    assert status == 200 and doc["stage"] == "archived", doc
    # nothing in the registry
    for name, v in (("recsys", 99), ("nosuch", 1), ("recsys", "0"),
                    ("recsys", "01"), ("recsys", "-1"), ("recsys", "x"),
                    ("recsys", "99999999999"), ("BAD", 1)):
        status, doc = stage(api, admin["token"], name, v,
                            {"stage": "staging"})
        assert status == 404 and doc["error"]["code"] == "not_found", (name, v)
    # bodies
    for body, field in (({}, "stage"), ({"stage": "none"}, "stage"),
                        ({"stage": "Production"}, "stage"),
                        ({"stage": 1}, "stage"), ({"stage": None}, "stage"),
                        ({"stage": "staging", "force": True}, "force")):
        status, doc = stage(api, admin["token"], "recsys", 3, body)
        assert status == 422, (body, doc)
        assert field in doc["error"]["fields"], (body, doc)
    status, doc = stage(api, admin["token"], "recsys", 3, b"[1]")
    assert status == 400, doc
    assert db.sql("SELECT count(*) FROM model_versions WHERE"
                  " model_name = 'recsys' AND stage = 'production'") == "1"


# ---- drift, runs, ingestions -------------------------------------------------

@pytest.fixture(scope="module")
def drift(db):
    for i in range(5):
        alert = "true" if i in (1, 4) else "false"
        reasons = "'{psi}'" if alert == "true" else "'{}'"
        db.sql(f"""INSERT INTO drift_reports (baseline_rows, current_rows,
                   ks_statistic, ks_pvalue, ks_method, psi, psi_band,
                   mean_baseline, mean_current, alert, reasons, thresholds)
                   VALUES (1000, {100 + i}, 0.0{i}, 0.5, 'asymp', 0.{i}{i},
                           'stable', 3.5, 3.{i}, {alert}, {reasons},
                           '{{"psi": 0.25}}')""")
    return [int(x) for x in
            db.sql("SELECT id FROM drift_reports ORDER BY id").split()]


def test_drift_reports_newest_first_in_cursor_pages(api, admin, drift):
    seen = []
    path = "/api/v1/admin/drift?limit=2"
    while True:
        status, doc = call(api, "GET", path, token=admin["token"])
        assert status == 200, doc
        assert doc["limit"] == 2 and len(doc["reports"]) <= 2
        seen += [r["id"] for r in doc["reports"]]
        if doc["next_cursor"] is None:
            break
        path = f"/api/v1/admin/drift?limit=2&cursor={doc['next_cursor']}"
    assert seen == sorted(drift, reverse=True)
    status, doc = call(api, "GET", "/api/v1/admin/drift", token=admin["token"])
    r = doc["reports"][0]
    assert r["alert"] is True and r["reasons"] == ["psi"]
    assert r["thresholds"] == {"psi": 0.25} and r["psi"] == 0.44
    assert r["created_at"].endswith("Z") and r["notified_at"] is None
    assert doc["next_cursor"] is None
    status, doc = call(api, "GET", "/api/v1/admin/drift?alert=true",
                       token=admin["token"])
    assert [r["id"] for r in doc["reports"]] == [drift[4], drift[1]]


@pytest.mark.parametrize("query,field", [
    ("limit=0", "limit"), ("limit=201", "limit"), ("limit=abc", "limit"),
    ("limit=", "limit"), ("cursor=0", "cursor"), ("cursor=-3", "cursor"),
    ("cursor=01", "cursor"), ("cursor=1e3", "cursor"), ("cursor=", "cursor"),
    ("cursor=99999999999999999999", "cursor"), ("alert=yes", "alert"),
    ("alert=", "alert"), ("limt=5", "limt"), ("Limit=5", "Limit"),
])
def test_drift_rejects_bad_parameters(api, admin, query, field):
    status, doc = call(api, "GET", f"/api/v1/admin/drift?{query}",
                       token=admin["token"])
    assert status == 422, (query, doc)
    assert doc["error"]["code"] == "validation_failed"
    assert field in doc["error"]["fields"], (query, doc)


def test_runs_with_params_metrics_and_the_version_they_made(
        api, db, admin, registry):
    db.sql("INSERT INTO training_runs (model_name, status, code_version, error,"
           " finished_at) VALUES ('dialog', 'failed', 't1', 'killed', now())")
    status, doc = call(api, "GET", "/api/v1/admin/runs", token=admin["token"])
    assert status == 200, doc
    runs = doc["runs"]
    assert [r["id"] for r in runs] == sorted((r["id"] for r in runs),
                                             reverse=True)
    first = {r["id"]: r for r in runs}[registry["runs"][0]]
    assert first["params"] == {"factors": 8}
    assert first["metrics"] == {"rmse": 0.91, "ndcg@10": 0.30}
    assert first["model_version"]["version"] == 1
    assert first["started_at"].endswith("Z")
    status, doc = call(api, "GET", "/api/v1/admin/runs?model=dialog"
                       "&status=failed", token=admin["token"])
    assert [(r["model_name"], r["error"]) for r in doc["runs"]] \
        == [("dialog", "killed")]
    assert doc["runs"][0]["model_version"] is None
    status, doc = call(api, "GET", "/api/v1/admin/runs?model=recsys&limit=1",
                       token=admin["token"])
    assert len(doc["runs"]) == 1 and doc["next_cursor"] is not None
    for q, field in (("model=Recsys", "model"), ("model=", "model"),
                     ("model=a%27b", "model"), ("status=done", "status"),
                     ("sort=id", "sort")):
        status, doc = call(api, "GET", f"/api/v1/admin/runs?{q}",
                           token=admin["token"])
        assert status == 422 and field in doc["error"]["fields"], (q, doc)


@pytest.fixture(scope="module")
def batches(db):
    db.sql("""INSERT INTO ingestion_batches (file_name, file_sha256, file_bytes,
              status, rows_total, rows_accepted, rows_rejected, started_at,
              finished_at)
              VALUES ('week1.csv', repeat('1', 64), 100, 'complete', 10, 7, 3,
                      now() - interval '1.5 seconds', now())""")
    db.sql("""INSERT INTO ingestion_batches (kind, file_name, file_sha256,
              file_bytes, status, error, finished_at)
              VALUES ('movies', 'movies.csv', repeat('2', 64), 5, 'failed',
                      'bad header', now())""")
    ids = [int(x) for x in
           db.sql("SELECT id FROM ingestion_batches ORDER BY id").split()]
    db.sql(f"""INSERT INTO ingestion_rejects (batch_id, line_no, raw_line, reason)
               VALUES ({ids[0]}, 4, '1,2,x,3', 'rating is not a number'),
                      ({ids[0]}, 9, '1,2,7,3', 'rating out of range'),
                      ({ids[0]}, 2, 'é,"', 'too few fields')""")
    return ids


def test_ingestion_batches_with_counts_and_one_batchs_rejects(
        api, admin, batches):
    status, doc = call(api, "GET", "/api/v1/admin/ingestions",
                       token=admin["token"])
    assert status == 200, doc
    assert [b["id"] for b in doc["batches"]] == batches[::-1]
    b = doc["batches"][1]
    assert (b["file_name"], b["rows_total"], b["rows_accepted"],
            b["rows_rejected"]) == ("week1.csv", 10, 7, 3)
    assert b["duration_ms"] == 1500 and b["kind"] == "ratings"
    status, doc = call(api, "GET", "/api/v1/admin/ingestions?kind=movies"
                       "&status=failed", token=admin["token"])
    assert [b["error"] for b in doc["batches"]] == ["bad header"]

    status, doc = call(api, "GET", f"/api/v1/admin/ingestions/{batches[0]}"
                       "?limit=2", token=admin["token"])
    assert status == 200, doc
    assert doc["batch"]["id"] == batches[0]
    assert [(r["line_no"], r["raw_line"]) for r in doc["rejects"]] \
        == [(2, 'é,"'), (4, "1,2,x,3")]
    assert doc["next_cursor"] == "4"
    status, doc = call(api, "GET", f"/api/v1/admin/ingestions/{batches[0]}"
                       "?limit=2&cursor=4", token=admin["token"])
    assert [r["reason"] for r in doc["rejects"]] == ["rating out of range"]
    assert doc["next_cursor"] is None
    status, doc = call(api, "GET", f"/api/v1/admin/ingestions/{batches[1]}",
                       token=admin["token"])
    assert status == 200 and doc["rejects"] == []

    for path in ("/api/v1/admin/ingestions/999999", "/api/v1/admin/ingestions/x",
                 "/api/v1/admin/ingestions/0", "/api/v1/admin/ingestions/-1"):
        status, doc = call(api, "GET", path, token=admin["token"])
        assert status == 404 and doc["error"]["code"] == "not_found", path
    for q, field in (("kind=users", "kind"), ("status=ok", "status"),
                     ("limit=1001", "limit")):
        path = "/api/v1/admin/ingestions" + ("?" if field != "limit" else
                                              f"/{batches[0]}?") + q
        status, doc = call(api, "GET", path, token=admin["token"])
        assert status == 422 and field in doc["error"]["fields"], (q, doc)


# ---- usage -------------------------------------------------------------------

@pytest.fixture(scope="module")
def usage(api, db, admin):
    """Two users (one with an API key) with logged requests yesterday and
    today, and chat generations with token counts."""
    a = new_user(api, db)
    b = new_user(api, db)
    status, key = call(api, "POST", "/api/v1/keys", {"name": "ci"},
                       token=a["token"])
    assert status == 201, key
    db.sql(f"""
        INSERT INTO request_logs (ts, request_id, method, route, path, status,
                                  duration_ms, user_id, api_key_id, model_name)
        SELECT ts, 'u' || n, 'POST', '/api/v1/recommend', '/api/v1/recommend',
               st, 3, uid, kid, 'recsys'
        FROM (VALUES
            (now() - interval '1 day', 1, 200, {a['id']}, {key['id']}),
            (now() - interval '1 day', 2, 500, {a['id']}, {key['id']}),
            (now() - interval '10 minutes', 3, 200, {a['id']}, NULL),
            (now() - interval '10 minutes', 4, 429, {b['id']}, NULL),
            (now() - interval '10 minutes', 5, 200, {b['id']}, NULL),
            (now() - interval '10 minutes', 6, 200, {b['id']}, NULL),
            (now() - interval '40 days', 7, 200, {b['id']}, NULL))
            AS v(ts, n, st, uid, kid)""")
    db.sql(f"""
        INSERT INTO request_logs (ts, request_id, method, route, path, status,
                                  duration_ms, user_id, api_key_id, model_name)
        VALUES (now() - interval '5 minutes', 'chat-1', 'POST',
                '/v1/chat/completions', '/v1/chat/completions', 200, 90,
                {a['id']}, {key['id']}, 'dialog')""")
    conv = db.sql(f"INSERT INTO conversations (user_id, model_name)"
                  f" VALUES ({a['id']}, 'dialog') RETURNING id").split()[0]
    db.sql(f"""
        INSERT INTO messages (conversation_id, role, content, status, error,
                              prompt_tokens, completion_tokens, request_id,
                              created_at)
        VALUES ('{conv}', 'user', 'hi', 'complete', NULL, NULL, NULL, 'chat-1',
                now() - interval '5 minutes'),
               ('{conv}', 'assistant', 'hello', 'complete', NULL, 12, 30,
                'chat-1', now() - interval '5 minutes'),
               ('{conv}', 'assistant', 'hel', 'error', 'daemon died', 10, 3,
                'chat-2', now() - interval '4 minutes')""")
    return {"a": a, "b": b, "key": key}


def rows_by_key(doc):
    return {r["key"]: r for r in doc["rows"]}


def test_usage_per_user_counts_requests_errors_and_tokens(api, admin, usage):
    a, b = usage["a"], usage["b"]
    status, doc = call(api, "GET", "/api/v1/admin/usage?group_by=user",
                       token=admin["token"])
    assert status == 200, doc
    assert doc["group_by"] == "user" and doc["interval"] is None
    rows = rows_by_key(doc)
    ra, rb = rows[str(a["id"])], rows[str(b["id"])]
    assert ra["label"] == a["email"]
    # a: 3 recommend + 1 chat request (one 500); 2 generations, 55 tokens
    assert (ra["requests"], ra["errors"], ra["server_errors"]) == (4, 1, 1)
    assert (ra["generations"], ra["generation_errors"]) == (2, 1)
    assert (ra["prompt_tokens"], ra["completion_tokens"], ra["tokens"]) \
        == (22, 33, 55)
    # b: the 40-day-old request is outside the default week; 429 is an error
    assert (rb["requests"], rb["errors"], rb["server_errors"]) == (3, 1, 0)
    assert rb["tokens"] == 0 and rb["bucket"] is None
    assert doc["totals"]["requests"] == 7 and doc["totals"]["tokens"] == 55
    assert doc["from"] < doc["to"] and doc["to"].endswith("Z")


def test_usage_per_api_key_and_per_model(api, admin, usage):
    key = usage["key"]
    status, doc = call(api, "GET", "/api/v1/admin/usage?group_by=api_key",
                       token=admin["token"])
    assert status == 200, doc
    rows = rows_by_key(doc)
    k = rows[str(key["id"])]
    assert k["label"] == f"ci ({key['prefix']})"
    # 2 recommend + the chat request; the generation of that request
    assert (k["requests"], k["errors"], k["tokens"]) == (3, 1, 42)
    assert rows[None]["requests"] == 4      # sessions, not keys
    status, doc = call(api, "GET", "/api/v1/admin/usage?group_by=model",
                       token=admin["token"])
    rows = rows_by_key(doc)
    assert rows["recsys"]["requests"] == 6 and rows["recsys"]["tokens"] == 0
    assert rows["dialog"]["requests"] == 1 and rows["dialog"]["tokens"] == 55


def test_usage_over_time_in_day_buckets_and_a_window(api, admin, usage):
    a = usage["a"]
    status, doc = call(api, "GET", "/api/v1/admin/usage?group_by=user"
                       "&interval=day", token=admin["token"])
    assert status == 200, doc
    mine = [r for r in doc["rows"] if r["key"] == str(a["id"])]
    assert len(mine) == 2
    assert [r["requests"] for r in mine] == [2, 2]
    assert all(r["bucket"].endswith("T00:00:00.000000Z") for r in mine)
    assert mine[0]["bucket"] < mine[1]["bucket"]
    # a window that holds only the 40-day-old request
    old = time.gmtime(time.time() - 40 * 86400)
    day = time.strftime("%Y-%m-%d", old)
    nxt = time.strftime("%Y-%m-%d", time.gmtime(time.time() - 39 * 86400))
    status, doc = call(api, "GET", f"/api/v1/admin/usage?from={day}&to={nxt}",
                       token=admin["token"])
    assert status == 200, doc
    assert doc["totals"]["requests"] == 1 and len(doc["rows"]) == 1
    assert doc["from"] == f"{day}T00:00:00.000000Z"
    # limit keeps the busiest groups; totals still count all of them
    status, doc = call(api, "GET", "/api/v1/admin/usage?limit=1",
                       token=admin["token"])
    assert len(doc["rows"]) == 1 and doc["groups"] >= 2
    assert doc["totals"]["requests"] == 7


@pytest.mark.parametrize("query,field", [
    ("from=yesterday", "from"), ("from=2026-02-30", "from"),
    ("to=now", "to"), ("from=2026-01-01T00:00:00", "from"),
    ("from=2026-01-02&to=2026-01-01", "from"),
    ("from=2026-01-01&to=2026-01-01", "from"),
    ("from=2024-01-01&to=2026-01-01", "from"),
    ("from=2026-01-01&to=2026-03-01&interval=hour", "interval"),
    ("group_by=ip", "group_by"), ("group_by=", "group_by"),
    ("interval=week", "interval"), ("limit=0", "limit"),
    ("limit=1001", "limit"), ("user=1", "user"),
    ("from=1969-12-31", "from"), ("from=2026-01-01%00", "from"),
])
def test_usage_rejects_bad_parameters(api, admin, query, field):
    status, doc = call(api, "GET", f"/api/v1/admin/usage?{query}",
                       token=admin["token"])
    assert status == 422, (query, doc)
    assert field in doc["error"]["fields"], (query, doc)


def test_usage_accepts_rfc3339_offsets_and_hourly_buckets(api, admin, usage):
    status, doc = call(api, "GET", "/api/v1/admin/usage?"
                       "from=2026-01-01T01:00:00%2B01:00"
                       "&to=2026-01-02T00:00:00Z&interval=hour",
                       token=admin["token"])
    assert status == 200, doc
    assert doc["from"] == "2026-01-01T00:00:00.000000Z"
    assert doc["interval"] == "hour"


def test_api_key_scopes_gate_the_registry(api, db, admin):
    status, key = call(api, "POST", "/api/v1/keys",
                       {"name": "reader", "scopes": ["recommend"]},
                       token=admin["token"])
    assert status == 201, key
    h = {"X-API-Key": key["key"]}
    status, doc = call(api, "GET", "/api/v1/models", headers=h)
    assert status == 403, doc
    status, key = call(api, "POST", "/api/v1/keys",
                       {"name": "models", "scopes": ["models:read"]},
                       token=admin["token"])
    h = {"X-API-Key": key["key"]}
    assert call(api, "GET", "/api/v1/models", headers=h)[0] == 200
    # an admin's key without the admin scope is not an administrator
    assert call(api, "GET", "/api/v1/admin/runs", headers=h)[0] == 403


def test_concurrent_promotions_leave_exactly_one_production(api, db, admin,
                                                            workdir):
    """Eight admins' clicks at once: the per-model advisory lock serialises
    them, every one answers 200, and one version ends in production with
    each of the others archived by the promotion that followed it."""
    from concurrent.futures import ThreadPoolExecutor

    db.sql("INSERT INTO models (name, task) VALUES ('race', 'recsys')")
    for v in range(1, 9):
        path, sha = artifact(workdir, f"race-{v}", b"race %d" % v)
        db.sql(f"INSERT INTO model_versions (model_name, version, stage,"
               f" artifact_path, artifact_sha256) VALUES ('race', {v},"
               f" 'staging', '{path}', '{sha}')")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(
            lambda v: stage(api, admin["token"], "race", v,
                            {"stage": "production"}), range(1, 9)))
    assert all(status == 200 for status, _ in answers), answers
    stages = db.sql("SELECT stage, count(*) FROM model_versions"
                    " WHERE model_name = 'race' GROUP BY 1 ORDER BY 1")
    assert stages == "archived|7\nproduction|1"
    # each promotion but the first archived exactly the one before it
    archived = sorted(doc["archived_version"] for _, doc in answers
                      if doc["archived_version"] is not None)
    assert len(archived) == 7 and len(set(archived)) == 7
    assert db.sql("SELECT count(*) FROM model_stage_events WHERE"
                  " model_name = 'race' AND to_stage = 'production'") == "8"

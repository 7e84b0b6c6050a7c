"""POST /api/v1/auth/register and /login through nginx, against real
PostgreSQL (the sql/001 schema in a database of its own) and Redis.

Covers the contract in API.md (201 {user}, 409, 422 with fields, the token
pair), what lands in the database (argon2id hash, refresh token stored only
as its SHA-256, the family id carried in the JWT's sid), hostile input
(SQL metacharacters, wrong types, unknown fields, duplicate keys: documented
4xx and nothing written) and that argon2id runs off the event loop (/health
keeps answering while logins hash).
"""

import base64
import concurrent.futures
import hashlib
import hmac
import json
import os
import subprocess
import time

import pytest

import harness

ROOT = harness.ROOT
BIN = ROOT / "build" / "cinematch"
USERS_SQL = ROOT / "sql" / "001_users_auth.sql"
# register writes a verification token and its mail (sql/007)
EMAIL_SQL = ROOT / "sql" / "007_email_tokens.sql"
DB = "cm_auth_api"


class _Db:
    """What harness.Nginx needs from a Postgres: a conninfo."""

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
    d.sql(USERS_SQL.read_text())
    d.sql(EMAIL_SQL.read_text())
    return d


@pytest.fixture(scope="module")
def secret(workdir):
    path = os.path.join(workdir, "auth-jwt.secret")
    if os.path.exists(path):
        os.unlink(path)
    subprocess.run([str(BIN), "jwt-secret", "generate", "--out", path],
                   check=True, capture_output=True)
    with open(path, "rb") as f:
        return path, f.read().strip()


@pytest.fixture(scope="module")
def api(workdir, backends, db, secret):
    ngx = harness.Nginx(workdir, pg=db, redis=backends.redis,
                        http_extra=f"cinematch_jwt_secret_file {secret[0]};",
                        name="nginx-auth-api", workers=2, pg_pool=2,
                        pg_timeout="3s")
    try:
        ngx.start()
        yield ngx
    finally:
        ngx.stop()
    problems = ngx.log_problems()
    assert not problems, "nginx logged alerts:\n" + "\n".join(problems)


def post(api, path, doc=None, raw=None, headers=None):
    body = raw if raw is not None else json.dumps(doc).encode()
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    status, hdrs, data = api.request("POST", path, body=body, headers=h,
                                     timeout=30)
    return status, hdrs, json.loads(data) if data else None


def count_users(db):
    return int(db.sql("SELECT count(*) FROM users"))


def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


# ---- register ----

def test_register_creates_user_with_argon2id_hash(api, db):
    status, hdrs, doc = post(api, "/api/v1/auth/register",
                             {"email": "ada@example.com", "password": "analytical engine",
                              "display_name": "Ada Lovelace"})
    assert status == 201, doc
    u = doc["user"]
    assert set(u) == {"id", "email", "role", "display_name", "created_at"}
    assert isinstance(u["id"], int)
    assert u["email"] == "ada@example.com"
    assert u["role"] == "user"
    assert u["display_name"] == "Ada Lovelace"
    assert u["created_at"].endswith("Z") and "T" in u["created_at"]
    assert hdrs["cache-control"] == "no-store"
    h = db.sql(f"SELECT password_hash FROM users WHERE id = {u['id']}")
    assert h.startswith("$argon2id$v=19$m=65536,t=2,p=1$")
    assert "analytical" not in h


def test_register_same_email_in_other_case_is_409(api, db):
    status, _, doc = post(api, "/api/v1/auth/register",
                          {"email": "dup@example.com", "password": "password one"})
    assert status == 201, doc
    status, hdrs, doc = post(api, "/api/v1/auth/register",
                             {"email": "DUP@Example.COM", "password": "password two"})
    assert status == 409
    assert doc["error"]["code"] == "conflict"
    assert doc["error"]["request_id"] == hdrs["x-request-id"]
    assert db.sql("SELECT count(*) FROM users WHERE lower(email) = 'dup@example.com'") == "1"


def test_register_reports_every_bad_field_and_writes_nothing(api, db):
    before = count_users(db)
    status, hdrs, doc = post(api, "/api/v1/auth/register",
                             {"email": "not-an-email", "password": "short",
                              "display_name": "bell\u0007"})
    assert status == 422
    err = doc["error"]
    assert err["code"] == "validation_failed"
    assert err["request_id"] == hdrs["x-request-id"]
    assert set(err["fields"]) == {"email", "password", "display_name"}
    assert "email address" in err["fields"]["email"]
    assert "8 characters" in err["fields"]["password"]
    assert count_users(db) == before


@pytest.mark.parametrize("doc,fields", [
    ({"email": 5, "password": "long enough"}, {"email"}),
    ({"email": "a@example.com", "password": ["x"]}, {"password"}),
    ({"email": "a@example.com"}, {"password"}),
    ({"email": "a@example.com", "pasword": "long enough"}, {"password", "pasword"}),
    ({"email": "a@example.com", "password": "long enough", "role": "admin"}, {"role"}),
    ({"email": "a@example.com", "password": "long enough", "display_name": 7},
     {"display_name"}),
    ({"email": "a" * 65 + "@example.com", "password": "long enough"}, {"email"}),
    ({"email": "x@example.com", "password": "p" * 1025}, {"password"}),
])
def test_register_wrong_types_unknown_and_oversized_fields_are_422(api, db, doc, fields):
    before = count_users(db)
    status, _, body = post(api, "/api/v1/auth/register", doc)
    assert status == 422, body
    assert set(body["error"]["fields"]) == fields
    assert count_users(db) == before


@pytest.mark.parametrize("raw", [
    b'{"email": "a@example.com", "password": "long enough"',
    b'{"email": "a@example.com", "email": "b@example.com", "password": "long enough"}',
    b'["a@example.com", "long enough"]',
    b'{"email": "a\\u0000@example.com", "password": "long enough"}',
    b'{"email": "a\xff@example.com", "password": "long enough"}',
])
def test_register_malformed_json_is_400_and_writes_nothing(api, db, raw):
    before = count_users(db)
    status, _, body = post(api, "/api/v1/auth/register", raw=raw)
    assert status == 400, body
    assert body["error"]["code"] == "invalid_request"
    assert count_users(db) == before


def test_register_stores_sql_metacharacters_verbatim(api, db):
    name = "Robert'); DROP TABLE users; --"
    status, _, doc = post(api, "/api/v1/auth/register",
                          {"email": "o'neil+x@example.com",
                           "password": "' OR '1'='1",  # 11 characters
                           "display_name": name})
    assert status == 201, doc
    assert doc["user"]["display_name"] == name
    assert db.sql("SELECT display_name FROM users WHERE email = 'o''neil+x@example.com'") == name


# ---- login ----

def register(api, email, password):
    status, _, doc = post(api, "/api/v1/auth/register",
                          {"email": email, "password": password})
    assert status == 201, doc
    return doc["user"]


def test_login_returns_a_verifiable_token_pair(api, db, secret):
    user = register(api, "grace@example.com", "cobol forever")
    status, hdrs, doc = post(api, "/api/v1/auth/login",
                             {"email": "Grace@Example.com", "password": "cobol forever"},
                             headers={"User-Agent": "pytest-auth/1"})
    assert status == 200, doc
    assert set(doc) == {"access_token", "refresh_token", "token_type", "expires_in"}
    assert doc["token_type"] == "Bearer" and doc["expires_in"] == 900
    assert hdrs["cache-control"] == "no-store"

    # the access token: HS256 with our kid, signed with the secret file
    h64, p64, s64 = doc["access_token"].split(".")
    header = json.loads(b64d(h64))
    assert header == {"alg": "HS256", "typ": "JWT",
                      "kid": hashlib.sha256(secret[1]).hexdigest()[:16]}
    mac = hmac.new(secret[1], f"{h64}.{p64}".encode(), hashlib.sha256).digest()
    assert hmac.compare_digest(mac, b64d(s64))
    claims = json.loads(b64d(p64))
    assert claims["iss"] == "cinematch" and claims["aud"] == "cinematch-api"
    assert claims["sub"] == str(user["id"]) and claims["role"] == "user"
    assert claims["exp"] - claims["iat"] == 900
    assert abs(claims["iat"] - time.time()) < 60
    assert len(claims["jti"]) == 36

    # the refresh token: only its hash is stored, in the family named by sid
    rt = doc["refresh_token"]
    assert rt.startswith("cmr_") and len(rt) == 47
    row = db.sql("SELECT user_id, family_id, user_agent, client_ip, "
                 "expires_at > now() + interval '29 days' FROM refresh_tokens "
                 f"WHERE token_sha256 = '{hashlib.sha256(rt.encode()).hexdigest()}'")
    assert row == f"{user['id']}|{claims['sid']}|pytest-auth/1|127.0.0.1|t"
    assert db.sql(f"SELECT count(*) FROM refresh_tokens WHERE token_sha256 LIKE '%{rt[4:12]}%'") == "0"
    assert db.sql(f"SELECT last_login_at IS NOT NULL FROM users WHERE id = {user['id']}") == "t"


def test_login_failures_are_indistinguishable(api, db):
    register(api, "linus@example.com", "kernel hacker")
    before = db.sql("SELECT count(*) FROM refresh_tokens")
    answers = []
    for email, pw in [("linus@example.com", "kernel hackers"),
                      ("nobody@example.com", "kernel hacker"),
                      ("linus@example.com", "x" * 1025),
                      ("linus@example.com", "")]:
        status, _, doc = post(api, "/api/v1/auth/login", {"email": email, "password": pw})
        assert status == 401, doc
        answers.append((doc["error"]["code"], doc["error"]["message"]))
    assert len(set(answers)) == 1
    assert answers[0] == ("unauthenticated", "invalid email or password")
    assert db.sql("SELECT count(*) FROM refresh_tokens") == before


@pytest.mark.parametrize("doc,fields", [
    ({"email": "a@example.com"}, {"password"}),
    ({"password": "x"}, {"email"}),
    ({"email": 1, "password": 2}, {"email", "password"}),
    ({"email": "a@example.com", "password": "x", "remember": True}, {"remember"}),
])
def test_login_with_the_wrong_shape_is_422(api, doc, fields):
    status, _, body = post(api, "/api/v1/auth/login", doc)
    assert status == 422, body
    assert set(body["error"]["fields"]) == fields


def test_each_login_starts_a_new_refresh_family(api, db):
    register(api, "twice@example.com", "two sessions")
    sids = set()
    for _ in range(2):
        status, _, doc = post(api, "/api/v1/auth/login",
                              {"email": "twice@example.com", "password": "two sessions"})
        assert status == 200
        sids.add(json.loads(b64d(doc["access_token"].split(".")[1]))["sid"])
    assert len(sids) == 2
    assert db.sql("SELECT count(DISTINCT family_id) FROM refresh_tokens r JOIN users u "
                  "ON u.id = r.user_id WHERE u.email = 'twice@example.com'") == "2"


# ---- hostile input on every auth endpoint ----
#
# The list: SQL metacharacters in every field, invalid UTF-8, NUL
# bytes, a 1 MB email, wrong types, extra fields, deep nesting, duplicate
# keys.  Each is a documented 4xx (forgot-password: its usual 202, which
# never says whether the address exists), nothing is written, no worker
# dies.

AUTH_ENDPOINTS = {
    # path: a well-shaped body, each string field filled by the test
    "/api/v1/auth/register": {"email": "e", "password": "p"},
    "/api/v1/auth/login": {"email": "e", "password": "p"},
    "/api/v1/auth/refresh": {"refresh_token": "t"},
    "/api/v1/auth/verify-email": {"token": "t"},
    "/api/v1/auth/forgot-password": {"email": "e"},
    "/api/v1/auth/reset-password": {"token": "t", "new_password": "p"},
}

SQL_META = ["' OR '1'='1", "x'; DROP TABLE users; --", "\\'; SELECT pg_sleep(5); --",
            "$1::text", "%' AND 1=1 --"]


def table_counts(db):
    return db.sql("SELECT (SELECT count(*) FROM users), "
                  "(SELECT count(*) FROM refresh_tokens), "
                  "(SELECT count(*) FROM user_tokens), "
                  "(SELECT count(*) FROM mail_outbox), "
                  "(SELECT max(password_hash) FROM users)")


def hostile_bodies():
    nested = b"[" * 5000 + b"]" * 5000
    for path, shape in AUTH_ENDPOINTS.items():
        fields = list(shape)
        for f in fields:
            # register stores metacharacters verbatim (a password may hold
            # anything): test_register_stores_sql_metacharacters_verbatim
            for i, meta in enumerate(SQL_META if "register" not in path else []):
                doc = {k: ("someone@example.com" if k == "email" else
                           "long enough password") for k in fields}
                doc[f] = (meta.replace(" ", "") + "@example.com"
                          if f == "email" and i % 2 else meta)
                yield path, f"sql-{f}-{i}", json.dumps(doc).encode(), None
            base = {k: "x" for k in fields}
            raw = json.dumps(base).encode()
            yield path, f"nul-{f}", raw.replace(
                f'"{f}": "x"'.encode(), f'"{f}": "a\\u0000b"'.encode()), 400
            yield path, f"utf8-{f}", raw.replace(
                f'"{f}": "x"'.encode(), f'"{f}": "a'.encode() + b"\xff\xfe" + b'b"'), 400
            yield path, f"type-{f}", json.dumps({**base, f: {"$ne": ""}}).encode(), 422
            yield path, f"deep-{f}", raw.replace(
                f'"{f}": "x"'.encode(), f'"{f}": '.encode() + nested), None
            yield path, f"dup-{f}", raw[:-1] + f', "{f}": "y"}}'.encode(), 400
        yield path, "extra-field", json.dumps({**{k: "x" for k in fields},
                                               "role": "admin"}).encode(), 422
        yield path, "not-an-object", b'["x"]', 400
        yield path, "1mb-email-or-token", json.dumps(
            {**{k: "x" for k in fields},
             fields[0]: "a" * (1 << 20) + "@example.com"}).encode(), 413
        yield path, "900kb-email-or-token", json.dumps(
            {**{k: "x" for k in fields},
             fields[0]: "a" * 900_000 + "@example.com"}).encode(), None


def test_hostile_input_on_every_auth_endpoint_is_4xx_and_writes_nothing(api, db):
    before = table_counts(db)
    pids = api.worker_pids()
    seen = {}
    for path, name, raw, want in hostile_bodies():
        status, hdrs, doc = post(api, path, raw=raw)
        if want is not None:
            assert status == want, (path, name, status, doc)
        elif path.endswith("forgot-password"):
            assert status in (202, 400, 413, 422), (path, name, status, doc)
        else:
            assert 400 <= status < 500, (path, name, status, doc)
        if status != 202:
            assert doc["error"]["request_id"] == hdrs["x-request-id"], (path, name)
        seen[status] = seen.get(status, 0) + 1
    assert table_counts(db) == before
    assert api.worker_pids() == pids
    assert set(seen) <= {202, 400, 401, 413, 422}, seen


def test_argon2id_runs_off_the_event_loop(api):
    """Logins hash on the thread pool: /health on the same workers keeps
    answering while several logins are in flight (latencies are printed,
    not asserted)."""
    register(api, "busy@example.com", "many logins")

    def pct(xs):
        xs = sorted(xs)
        return (f"n={len(xs)} p50={xs[len(xs) // 2] * 1e3:.1f} ms "
                f"p99={xs[int(len(xs) * 0.99)] * 1e3:.1f} ms max={xs[-1] * 1e3:.1f} ms")

    base = []
    t_end = time.monotonic() + 0.5
    while time.monotonic() < t_end:
        t0 = time.monotonic()
        assert api.request("GET", "/health")[0] == 200
        base.append(time.monotonic() - t0)
    lat = []

    def login():
        return post(api, "/api/v1/auth/login",
                    {"email": "busy@example.com", "password": "many logins"})[0]

    with concurrent.futures.ThreadPoolExecutor(max_workers=8) as ex:
        futs = [ex.submit(login) for _ in range(8)]
        t_end = time.monotonic() + 0.5
        while time.monotonic() < t_end or not all(f.done() for f in futs):
            t0 = time.monotonic()
            status, _, _ = api.request("GET", "/health")
            lat.append(time.monotonic() - t0)
            assert status == 200
        assert [f.result() for f in futs] == [200] * 8
    print(f"\n/health alone:                      {pct(base)}"
          f"\n/health during 8 concurrent logins: {pct(lat)}")


def test_login_without_a_secret_file_is_503(workdir, backends, db):
    ngx = harness.Nginx(workdir, pg=db, redis=backends.redis,
                        name="nginx-auth-nosecret", workers=1)
    ngx.start()
    try:
        status, _, data = ngx.request("POST", "/api/v1/auth/login",
                                      body=b'{"email":"a@example.com","password":"x"}',
                                      headers={"Content-Type": "application/json"})
        assert status == 503
        assert json.loads(data)["error"]["code"] == "unavailable"
    finally:
        ngx.stop()


def test_bad_secret_file_mode_stops_nginx_at_startup(workdir, backends, db, secret):
    bad = os.path.join(workdir, "world-readable.secret")
    with open(bad, "w") as f:
        f.write("x" * 64 + "\n")
    os.chmod(bad, 0o644)
    ngx = harness.Nginx(workdir, pg=db, redis=backends.redis,
                        http_extra=f"cinematch_jwt_secret_file {bad};",
                        name="nginx-auth-badsecret", workers=1)
    with pytest.raises(harness.HarnessError) as exc:
        ngx.start()
    assert "0644" in str(exc.value) and "chmod 0600" in str(exc.value)


def test_client_leaving_mid_hash_frees_the_request_cleanly(api, db):
    """The thread job lives in the request pool; r->main->blocked keeps the
    pool until the hash is done even when the client has gone (under
    tests/integration/run_asan.sh a use-after-free here is a report)."""
    import socket

    register(api, "leaver@example.com", "gone before done")
    access = api.prefix / "logs" / "access.log"
    logged = len(access.read_text().splitlines())
    for path, doc in [("/api/v1/auth/register",
                       {"email": "left@example.com", "password": "never mind me"}),
                      ("/api/v1/auth/login",
                       {"email": "leaver@example.com", "password": "gone before done"})] * 3:
        body = json.dumps(doc).encode()
        s = socket.create_connection(("127.0.0.1", api.port))
        s.sendall(b"POST %s HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n%s" % (path.encode(), len(body), body))
        s.close()
    # let the pool finish the hashes: each abandoned request is logged when
    # its job completes.  A fixed sleep was too short on a loaded machine,
    # and a worker stopped with a job still running logs "open socket ...
    # left in connection" at teardown (a flake seen in full-suite runs).
    deadline = time.time() + 60
    while (len(access.read_text().splitlines()) < logged + 6
           and time.time() < deadline):
        time.sleep(0.05)
    log = (api.prefix / "logs" / "access.log").read_text()
    print("\nthe abandoned requests, as logged:",
          [line.split('"')[1].split()[1].rsplit("/", 1)[1] + " "
           + line.split('"')[2].split()[0] for line in log.splitlines()[-6:]])
    status, _, doc = post(api, "/api/v1/auth/login",
                          {"email": "leaver@example.com", "password": "gone before done"})
    assert status == 200, doc
    assert api.request("GET", "/health")[0] == 200
    assert not api.log_problems()

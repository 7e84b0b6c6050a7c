"""The identity step and the endpoints behind it, through nginx against real
PostgreSQL and Redis: GET /auth/me, POST /auth/refresh (rotation, reuse
revokes the family), POST /auth/logout (Redis denylist), /api/v1/keys
(create, list, use, revoke), RBAC (admin routes, key scopes, 404 on other
users' keys), hostile tokens and hostile bodies.

The /internal/auth/* routes (cinematch_echo on) answer the caller as the
identity step saw it: whoami (credentials optional), admin (role admin),
recommend (an API key needs the recommend scope).
"""

import base64
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
DB = "cm_auth_session"


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
    d.sql(USERS_SQL.read_text())
    d.sql(EMAIL_SQL.read_text())
    return d


@pytest.fixture(scope="module")
def secret(workdir):
    path = os.path.join(workdir, "session-jwt.secret")
    if os.path.exists(path):
        os.unlink(path)
    subprocess.run([str(BIN), "jwt-secret", "generate", "--out", path],
                   check=True, capture_output=True)
    with open(path, "rb") as f:
        return path, f.read().strip()


@pytest.fixture(scope="module")
def api(workdir, backends, db, secret):
    ngx = harness.Nginx(workdir, pg=db, redis=backends.redis,
                        http_extra=f"cinematch_jwt_secret_file {secret[0]};\n"
                                   "cinematch_api_key_touch_interval 1s;\n"
                                   "cinematch_login_account_limit 6r/m burst=3;",
                        location_extra="cinematch_echo on;",
                        name="nginx-auth-session", workers=2, pg_pool=2,
                        pg_timeout="3s")
    try:
        ngx.start()
        yield ngx
    finally:
        ngx.stop()
    problems = ngx.log_problems()
    assert not problems, "nginx logged alerts:\n" + "\n".join(problems)


def call(api, method, path, doc=None, raw=None, token=None, headers=None):
    h = {}
    body = None
    if doc is not None or raw is not None:
        body = raw if raw is not None else json.dumps(doc).encode()
        h["Content-Type"] = "application/json"
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    h.update(headers or {})
    status, hdrs, data = api.request(method, path, body=body, headers=h,
                                     timeout=30)
    return status, hdrs, json.loads(data) if data else None


_seq = [0]


def new_user(api, db, admin=False, password="correct horse battery"):
    """Register (and, for admin, promote in SQL) a user; log in."""
    _seq[0] += 1
    email = f"u{_seq[0]}-{os.getpid()}@example.com"
    status, _, doc = call(api, "POST", "/api/v1/auth/register",
                          {"email": email, "password": password})
    assert status == 201, doc
    uid = doc["user"]["id"]
    if admin:
        db.sql(f"UPDATE users SET role = 'admin' WHERE id = {uid}")
    status, _, tokens = call(api, "POST", "/api/v1/auth/login",
                             {"email": email, "password": password})
    assert status == 200, tokens
    return {"id": uid, "email": email, **tokens}


def b64e(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def b64d(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def forge(secret, header=None, claims=None, key=None):
    """A token signed with our secret (or key) over any header and claims."""
    now = int(time.time())
    h = {"alg": "HS256", "typ": "JWT",
         "kid": hashlib.sha256(secret).hexdigest()[:16]}
    c = {"iss": "cinematch", "aud": "cinematch-api", "sub": "1",
         "role": "user", "jti": "00000000-0000-4000-8000-000000000000",
         "iat": now, "exp": now + 600}
    h.update(header or {})
    c.update(claims or {})
    h = {k: v for k, v in h.items() if v is not None}
    c = {k: v for k, v in c.items() if v is not None}
    signing = f"{b64e(json.dumps(h).encode())}.{b64e(json.dumps(c).encode())}"
    mac = hmac.new(key or secret, signing.encode(), hashlib.sha256).digest()
    return f"{signing}.{b64e(mac)}"


# ---- me, refresh, logout ----

def test_full_session_flow_register_login_me_refresh_logout(api, db):
    u = new_user(api, db)

    status, hdrs, doc = call(api, "GET", "/api/v1/auth/me",
                             token=u["access_token"])
    assert status == 200, doc
    assert doc["user"]["id"] == u["id"] and doc["user"]["email"] == u["email"]
    assert set(doc["user"]) == {"id", "email", "role", "display_name",
                                "created_at", "email_verified"}
    assert doc["user"]["email_verified"] is False
    assert hdrs["cache-control"] == "no-store"
    assert hdrs["x-content-type-options"] == "nosniff"

    status, hdrs, pair = call(api, "POST", "/api/v1/auth/refresh",
                              {"refresh_token": u["refresh_token"]})
    assert status == 200, pair
    assert set(pair) == {"access_token", "refresh_token", "token_type",
                         "expires_in"}
    assert pair["refresh_token"] != u["refresh_token"]
    assert hdrs["cache-control"] == "no-store"
    old_sid = json.loads(b64d(u["access_token"].split(".")[1]))["sid"]
    new_claims = json.loads(b64d(pair["access_token"].split(".")[1]))
    assert new_claims["sid"] == old_sid and new_claims["sub"] == str(u["id"])

    # the child is in the same family, spent parent recorded
    rows = db.sql("SELECT count(*), count(spent_at), count(parent_id) "
                  f"FROM refresh_tokens WHERE family_id = '{old_sid}'")
    assert rows == "2|1|1"

    status, _, doc = call(api, "GET", "/api/v1/auth/me",
                          token=pair["access_token"])
    assert status == 200, doc

    status, hdrs, doc = call(api, "POST", "/api/v1/auth/logout",
                             token=pair["access_token"])
    assert status == 204, doc
    assert hdrs["cache-control"] == "no-store"

    # the access token is denylisted, the family revoked
    status, hdrs, doc = call(api, "GET", "/api/v1/auth/me",
                             token=pair["access_token"])
    assert status == 401 and doc["error"]["code"] == "unauthenticated"
    assert "invalid_token" in hdrs["www-authenticate"]
    status, _, doc = call(api, "POST", "/api/v1/auth/refresh",
                          {"refresh_token": pair["refresh_token"]})
    assert status == 401, doc
    assert db.sql("SELECT count(*) FROM refresh_tokens "
                  f"WHERE family_id = '{old_sid}' AND revoked_at IS NULL") == "0"
    jti = new_claims["jti"]
    ttl = int(harness_redis_cmd(api, f"TTL cm:deny:{jti}"))
    assert 800 < ttl <= 931

    # another session of the same user is untouched
    status, _, _ = call(api, "GET", "/api/v1/auth/me", token=u["access_token"])
    assert status == 200


def harness_redis_cmd(api, cmd):
    """One inline Redis command on the api's Redis; the reply's first line."""
    import socket
    with socket.create_connection(("127.0.0.1", api.redis.port), timeout=2) as s:
        s.sendall(cmd.encode() + b"\r\n")
        lines = s.recv(4096).split(b"\r\n")
    first = lines[0].decode()
    if first.startswith("$") and first != "$-1":
        return lines[1].decode()            # a bulk string
    return first.lstrip(":+")


def test_reusing_a_spent_refresh_token_revokes_the_whole_family(api, db):
    u = new_user(api, db)
    status, _, child = call(api, "POST", "/api/v1/auth/refresh",
                            {"refresh_token": u["refresh_token"]})
    assert status == 200

    # the thief (or the victim) replays the spent parent
    status, _, doc = call(api, "POST", "/api/v1/auth/refresh",
                          {"refresh_token": u["refresh_token"]})
    assert status == 401 and doc["error"]["code"] == "unauthenticated"

    # ... and the legitimate child is dead too
    status, _, doc = call(api, "POST", "/api/v1/auth/refresh",
                          {"refresh_token": child["refresh_token"]})
    assert status == 401
    sid = json.loads(b64d(u["access_token"].split(".")[1]))["sid"]
    assert db.sql("SELECT count(*) FROM refresh_tokens WHERE family_id = "
                  f"'{sid}' AND revoked_at IS NULL") == "0"
    assert "spent refresh token reused" in api.error_log.read_text()


@pytest.mark.parametrize("doc,status", [
    ({}, 422),
    ({"refresh_token": 42}, 422),
    ({"refresh_token": ["cmr_x"]}, 422),
    ({"refresh_token": "cmr_x", "extra": 1}, 422),
    ({"refresh_token": ""}, 401),
    ({"refresh_token": "cmr_" + "A" * 43}, 401),
    ({"refresh_token": "' OR 1=1 --"}, 401),
    ({"refresh_token": "cmr_" + "a" * 100000}, 401),
])
def test_refresh_with_bad_input_is_4xx_and_writes_nothing(api, db, doc, status):
    before = db.sql("SELECT count(*), count(spent_at), count(revoked_at) "
                    "FROM refresh_tokens")
    got, _, body = call(api, "POST", "/api/v1/auth/refresh", doc)
    assert got == status, body
    assert db.sql("SELECT count(*), count(spent_at), count(revoked_at) "
                  "FROM refresh_tokens") == before


@pytest.mark.parametrize("raw", [
    b'{"refresh_token": "a", "refresh_token": "b"}',
    b'{"refresh_token": "\xff\xfe"}',
    b'{"refresh_token": "cmr_\\u0000"}',
    b'[1, 2]',
    b'{' * 5000,
])
def test_refresh_with_malformed_json_is_400(api, raw):
    status, _, doc = call(api, "POST", "/api/v1/auth/refresh", raw=raw)
    assert status == 400 and doc["error"]["code"] == "invalid_request"


def test_logout_with_an_api_key_is_400(api, db):
    u = new_user(api, db)
    _, _, key = call(api, "POST", "/api/v1/keys", {"name": "k"},
                     token=u["access_token"])
    status, _, doc = call(api, "POST", "/api/v1/auth/logout", token=key["key"])
    assert status == 400, doc


# ---- credentials and hostile tokens ----

def test_protected_route_without_credentials_is_401_with_challenge(api):
    status, hdrs, doc = call(api, "GET", "/api/v1/auth/me")
    assert status == 401
    assert doc["error"]["code"] == "unauthenticated"
    assert hdrs["www-authenticate"] == "Bearer"
    assert hdrs["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize("headers", [
    {"Authorization": "Basic dXNlcjpwYXNz"},
    {"Authorization": "Bearer"},
    {"Authorization": "Bearer "},
    {"Authorization": "Bearer a.b"},
    {"Authorization": "Bearer " + "a" * 5000},
    {"Authorization": "Bearer cm_short"},
    {"X-API-Key": "not-a-key"},
    {"X-API-Key": "cm_" + "A" * 43, "Authorization": "Bearer cm_" + "B" * 43},
    {"X-API-Key": "cm_'; DROP TABLE api_keys; --"},
])
def test_malformed_credentials_are_401(api, headers):
    status, hdrs, doc = call(api, "GET", "/api/v1/auth/me", headers=headers)
    assert status == 401, doc
    assert doc["error"]["code"] == "unauthenticated"
    assert "www-authenticate" in hdrs


def test_two_x_api_key_headers_are_401(api):
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
    conn.putrequest("GET", "/api/v1/auth/me")
    conn.putheader("X-API-Key", "cm_" + "A" * 43)
    conn.putheader("X-API-Key", "cm_" + "B" * 43)
    conn.endheaders()
    resp = conn.getresponse()
    resp.read()
    conn.close()
    assert resp.status == 401


def hostile_tokens(secret, uid):
    now = int(time.time())
    sub = {"sub": str(uid)}
    rs_header = b64e(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    body = b64e(json.dumps({"sub": str(uid), "exp": now + 600}).encode())
    return {
        "alg_none": f"{b64e(json.dumps({'alg': 'none'}).encode())}.{body}.",
        "alg_none_signed": forge(secret, {"alg": "none"}, sub),
        "rs256_hs_confusion": forge(secret, {"alg": "RS256"}, sub),
        "rs256_header": f"{rs_header}.{body}.{b64e(b'x' * 256)}",
        "wrong_signature": forge(secret, None, sub, key=b"k" * 64),
        "expired": forge(secret, None, {**sub, "iat": now - 4000,
                                        "exp": now - 3000}),
        "not_yet_valid": forge(secret, None, {**sub, "nbf": now + 3000}),
        "wrong_audience": forge(secret, None, {**sub, "aud": "someone-else"}),
        "wrong_issuer": forge(secret, None, {**sub, "iss": "evil"}),
        "no_kid": forge(secret, {"kid": None}, sub),
        "unknown_kid": forge(secret, {"kid": "0123456789abcdef"}, sub),
        "admin_claim_bad_role": forge(secret, None, {**sub, "role": "root"}),
        "sub_not_a_number": forge(secret, None, {"sub": "1 OR 1=1"}),
        "sub_zero": forge(secret, None, {"sub": "0"}),
        "truncated": forge(secret, None, sub)[:-5],
        "oversized_header": forge(secret, {"x": "a" * 3000}, sub),
        "garbage_base64": "@@@.###.$$$",
        "three_dots": "a.b.c.d",
    }


def test_hostile_tokens_are_all_401_and_nothing_crashes(api, db, secret):
    u = new_user(api, db)
    pids = api.worker_pids()
    for name, tok in hostile_tokens(secret[1], u["id"]).items():
        status, _, doc = call(api, "GET", "/api/v1/auth/me", token=tok)
        assert status == 401, (name, doc)
        assert doc["error"]["code"] == "unauthenticated", name
    assert api.worker_pids() == pids


def test_a_forged_token_with_our_secret_is_accepted(api, db, secret):
    """Control for the hostile list: the forge itself is right."""
    u = new_user(api, db)
    tok = forge(secret[1], None, {"sub": str(u["id"])})
    status, _, doc = call(api, "GET", "/api/v1/auth/me", token=tok)
    assert status == 200 and doc["user"]["id"] == u["id"]


def test_optional_auth_route_is_anonymous_without_credentials(api, db):
    status, _, doc = call(api, "GET", "/internal/auth/whoami")
    assert status == 200 and doc == {"user_id": None}
    u = new_user(api, db)
    status, _, doc = call(api, "GET", "/internal/auth/whoami",
                          token=u["access_token"])
    assert status == 200 and doc["user_id"] == u["id"]
    assert doc["role"] == "user" and doc["apikey"] is False


# ---- RBAC ----

def test_admin_route_is_403_for_users_and_200_for_admins(api, db):
    u = new_user(api, db)
    a = new_user(api, db, admin=True)
    status, _, doc = call(api, "GET", "/internal/auth/admin",
                          token=u["access_token"])
    assert status == 403 and doc["error"]["code"] == "forbidden"
    status, _, doc = call(api, "GET", "/internal/auth/admin",
                          token=a["access_token"])
    assert status == 200 and doc["role"] == "admin"
    status, _, _ = call(api, "GET", "/internal/auth/admin")
    assert status == 401


def test_admin_api_key_needs_the_admin_scope(api, db):
    a = new_user(api, db, admin=True)
    _, _, plain = call(api, "POST", "/api/v1/keys", {"name": "plain"},
                       token=a["access_token"])
    _, _, adm = call(api, "POST", "/api/v1/keys",
                     {"name": "adm", "scopes": ["admin"]},
                     token=a["access_token"])
    assert call(api, "GET", "/internal/auth/admin",
                token=plain["key"])[0] == 403
    assert call(api, "GET", "/internal/auth/admin", token=adm["key"])[0] == 200


def test_user_cannot_create_an_admin_scoped_key(api, db):
    u = new_user(api, db)
    status, _, doc = call(api, "POST", "/api/v1/keys",
                          {"name": "x", "scopes": ["admin"]},
                          token=u["access_token"])
    assert status == 422 and "scopes" in doc["error"]["fields"]


def test_key_scopes_are_enforced_per_route(api, db):
    u = new_user(api, db)
    _, _, chat = call(api, "POST", "/api/v1/keys",
                      {"name": "chat only", "scopes": ["chat"]},
                      token=u["access_token"])
    _, _, rec = call(api, "POST", "/api/v1/keys",
                     {"name": "rec", "scopes": ["recommend", "chat"]},
                     token=u["access_token"])
    _, _, anyk = call(api, "POST", "/api/v1/keys", {"name": "all"},
                      token=u["access_token"])
    assert call(api, "GET", "/internal/auth/recommend",
                token=chat["key"])[0] == 403
    assert call(api, "GET", "/internal/auth/recommend",
                token=rec["key"])[0] == 200
    assert call(api, "GET", "/internal/auth/recommend",
                token=anyk["key"])[0] == 200
    # a login session has every non-admin scope
    assert call(api, "GET", "/internal/auth/recommend",
                token=u["access_token"])[0] == 200


# ---- API keys ----

def test_key_create_use_list_revoke_fails(api, db):
    u = new_user(api, db)
    status, hdrs, key = call(api, "POST", "/api/v1/keys",
                             {"name": "laptop", "scopes": ["recommend"]},
                             token=u["access_token"])
    assert status == 201, key
    assert set(key) == {"id", "name", "prefix", "key"}
    assert key["key"].startswith("cm_") and len(key["key"]) == 46
    assert key["prefix"] == key["key"][3:11]
    assert hdrs["cache-control"] == "no-store"

    # only the hash is stored
    sha = hashlib.sha256(key["key"].encode()).hexdigest()
    assert db.sql(f"SELECT key_sha256, scopes FROM api_keys WHERE id = {key['id']}") \
        == f"{sha}|{{recommend}}"
    assert db.sql("SELECT count(*) FROM api_keys WHERE key_sha256 LIKE "
                  f"'%{key['key'][11:30]}%'") == "0"

    # used both ways; the second use comes from the Redis cache
    for headers in ({"Authorization": f"Bearer {key['key']}"},
                    {"X-API-Key": key["key"]}):
        status, _, doc = call(api, "GET", "/internal/auth/whoami",
                              headers=headers)
        assert status == 200, doc
        assert doc["user_id"] == u["id"] and doc["key_id"] == key["id"]
        assert doc["apikey"] is True
        assert doc["rating_user_id"] >= 10000000
    assert harness_redis_cmd(api, f"EXISTS cm:key:{sha}") == "1"

    # last_used_at is written off the request path
    harness.wait_for(lambda: db.sql("SELECT last_used_at IS NOT NULL FROM "
                                    f"api_keys WHERE id = {key['id']}") == "t",
                     timeout=5, what="last_used_at")

    status, _, listing = call(api, "GET", "/api/v1/keys",
                              token=u["access_token"])
    assert status == 200
    assert [k["id"] for k in listing["keys"]] == [key["id"]]
    entry = listing["keys"][0]
    assert set(entry) == {"id", "name", "prefix", "scopes", "created_at",
                          "last_used_at"}
    assert entry["scopes"] == ["recommend"] and "key" not in entry
    assert entry["last_used_at"] is not None

    status, _, doc = call(api, "DELETE", f"/api/v1/keys/{key['id']}",
                          token=u["access_token"])
    assert status == 204, doc
    # revoked at once, although it was cached
    status, _, doc = call(api, "GET", "/internal/auth/whoami",
                          headers={"X-API-Key": key["key"]})
    assert status == 401, doc
    assert call(api, "GET", "/api/v1/keys",
                token=u["access_token"])[2] == {"keys": []}
    assert call(api, "DELETE", f"/api/v1/keys/{key['id']}",
                token=u["access_token"])[0] == 404


def test_unknown_key_is_401_and_cached_negative(api):
    k = "cm_" + "Z" * 43
    for _ in range(2):
        status, _, doc = call(api, "GET", "/api/v1/auth/me",
                              headers={"X-API-Key": k})
        assert status == 401, doc
    sha = hashlib.sha256(k.encode()).hexdigest()
    assert harness_redis_cmd(api, f"GET cm:key:{sha}") == "-"


def test_keys_are_managed_with_a_session_not_a_key(api, db):
    u = new_user(api, db)
    _, _, key = call(api, "POST", "/api/v1/keys", {"name": "k"},
                     token=u["access_token"])
    assert call(api, "POST", "/api/v1/keys", {"name": "k2"},
                token=key["key"])[0] == 403
    assert call(api, "GET", "/api/v1/keys", token=key["key"])[0] == 403
    assert call(api, "DELETE", f"/api/v1/keys/{key['id']}",
                token=key["key"])[0] == 403


def test_user_b_cannot_see_or_revoke_user_a_keys(api, db):
    a = new_user(api, db)
    b = new_user(api, db)
    _, _, key = call(api, "POST", "/api/v1/keys", {"name": "a's"},
                     token=a["access_token"])
    assert call(api, "GET", "/api/v1/keys",
                token=b["access_token"])[2] == {"keys": []}
    status, _, doc = call(api, "DELETE", f"/api/v1/keys/{key['id']}",
                          token=b["access_token"])
    assert status == 404 and doc["error"]["code"] == "not_found"
    assert db.sql(f"SELECT revoked_at IS NULL FROM api_keys WHERE id = {key['id']}") == "t"
    # a's key still works
    assert call(api, "GET", "/api/v1/auth/me", token=key["key"])[0] == 200


@pytest.mark.parametrize("kid", ["abc", "0", "01", "1e3", "-1", "1;DROP",
                                 "99999999999999999999", "%2500", "1%20OR%201", "1%2F2"])
def test_delete_key_with_a_non_id_is_404(api, db, kid):
    u = new_user(api, db)
    status, _, doc = call(api, "DELETE", f"/api/v1/keys/{kid}",
                          token=u["access_token"])
    assert status == 404, doc


@pytest.mark.parametrize("doc,field", [
    ({}, "name"),
    ({"name": 5}, "name"),
    ({"name": None}, "name"),
    ({"name": "x" * 101}, "name"),
    ({"name": "bad\u202ename"}, "name"),
    ({"name": "tab\there"}, "name"),
    ({"name": "k", "scopes": "recommend"}, "scopes"),
    ({"name": "k", "scopes": ["recommend", "recommend"]}, "scopes"),
    ({"name": "k", "scopes": ["root"]}, "scopes"),
    ({"name": "k", "scopes": [1]}, "scopes"),
    ({"name": "k", "scopes": [{"a": 1}]}, "scopes"),
    ({"name": "k", "user_id": 1}, "user_id"),
])
def test_key_create_with_bad_fields_is_422_and_writes_nothing(api, db, doc, field):
    u = new_user(api, db)
    status, _, body = call(api, "POST", "/api/v1/keys", doc,
                           token=u["access_token"])
    assert status == 422, body
    assert field in body["error"]["fields"]
    assert db.sql(f"SELECT count(*) FROM api_keys WHERE user_id = {u['id']}") == "0"


@pytest.mark.parametrize("raw", [
    b'{"name": "a", "name": "b"}',
    b'{"name": "\xc3\x28"}',
    b'{"name": "a\\u0000b"}',
    b'"just a string"',
    b'{"name": ' + b'[' * 3000 + b']' * 3000 + b'}',
])
def test_key_create_with_malformed_json_is_400(api, db, raw):
    u = new_user(api, db)
    status, _, body = call(api, "POST", "/api/v1/keys", raw=raw,
                           token=u["access_token"])
    assert status in (400, 413), body
    assert db.sql(f"SELECT count(*) FROM api_keys WHERE user_id = {u['id']}") == "0"


def test_key_name_with_sql_metacharacters_is_stored_verbatim(api, db):
    u = new_user(api, db)
    name = "k'); DELETE FROM api_keys; -- \" \\ %_ $1"
    status, _, key = call(api, "POST", "/api/v1/keys", {"name": name},
                          token=u["access_token"])
    assert status == 201, key
    assert key["name"] == name
    _, _, listing = call(api, "GET", "/api/v1/keys", token=u["access_token"])
    assert listing["keys"][0]["name"] == name


def test_key_cap_per_user_is_409(api, db):
    u = new_user(api, db)
    db.sql("INSERT INTO api_keys (user_id, name, prefix, key_sha256) "
           f"SELECT {u['id']}, 'bulk', 'bulk' || lpad(g::text, 6, '0') || '{u['id']}', "
           "encode(sha256(('k' || g || ':' || " + str(u['id']) + ")::bytea), 'hex') "
           "FROM generate_series(1, 100) g")
    status, _, doc = call(api, "POST", "/api/v1/keys", {"name": "one more"},
                          token=u["access_token"])
    assert status == 409, doc


def test_login_attempts_are_limited_per_account(api, db):
    email = f"target-{os.getpid()}@example.com"
    status, _, _ = call(api, "POST", "/api/v1/auth/register",
                        {"email": email, "password": "the real password"})
    assert status == 201
    got = [call(api, "POST", "/api/v1/auth/login",
                {"email": email.upper() if i % 2 else email,
                 "password": f"guess {i}"})[0] for i in range(3)]
    assert got == [401, 401, 401]
    # the bucket is empty: even the right password waits, and no argon2id
    status, hdrs, doc = call(api, "POST", "/api/v1/auth/login",
                             {"email": email, "password": "the real password"})
    assert status == 429 and doc["error"]["code"] == "rate_limited"
    assert 1 <= int(hdrs["retry-after"]) <= 10
    assert "x-ratelimit-limit" not in hdrs
    # other accounts are not affected
    u = new_user(api, db)
    assert u["access_token"]


# ---- CORS (off unless configured) ----

@pytest.fixture(scope="module")
def cors_api(workdir, backends, db, secret):
    ngx = harness.Nginx(workdir, pg=db, redis=backends.redis,
                        http_extra=f"cinematch_jwt_secret_file {secret[0]};",
                        location_extra="cinematch_echo on;\n"
                                       "cinematch_cors https://app.example.com;",
                        server_extra="location /open/ { cinematch; "
                                     "cinematch_cors off; }",
                        name="nginx-auth-cors", workers=1)
    try:
        ngx.start()
        yield ngx
    finally:
        ngx.stop()
    assert not ngx.log_problems()


def test_cors_is_off_by_default(api):
    status, hdrs, _ = call(api, "GET", "/internal/auth/whoami",
                           headers={"Origin": "https://app.example.com"})
    assert status == 200 and "access-control-allow-origin" not in hdrs
    status, _, _ = call(api, "OPTIONS", "/api/v1/auth/me",
                        headers={"Origin": "https://app.example.com",
                                 "Access-Control-Request-Method": "GET"})
    assert status == 405


def test_cors_allows_the_configured_origin_only(cors_api, db):
    ok = {"Origin": "https://app.example.com"}
    status, hdrs, _ = call(cors_api, "GET", "/internal/auth/whoami", headers=ok)
    assert status == 200
    assert hdrs["access-control-allow-origin"] == "https://app.example.com"
    assert hdrs["vary"] == "Origin"
    assert "X-RateLimit-Remaining" in hdrs["access-control-expose-headers"]
    # a 401 is readable by the page too
    status, hdrs, _ = call(cors_api, "GET", "/api/v1/auth/me", headers=ok)
    assert status == 401 and "access-control-allow-origin" in hdrs

    status, hdrs, _ = call(cors_api, "GET", "/internal/auth/whoami",
                           headers={"Origin": "https://evil.example.com"})
    assert status == 200 and "access-control-allow-origin" not in hdrs

    status, hdrs, data = call(cors_api, "OPTIONS", "/api/v1/keys",
                              headers={**ok, "Access-Control-Request-Method": "POST"})
    assert status == 204 and data is None
    assert hdrs["access-control-allow-methods"] == "GET, HEAD, POST"
    assert "Authorization" in hdrs["access-control-allow-headers"]
    assert "access-control-allow-credentials" not in hdrs
    status, _, _ = call(cors_api, "OPTIONS", "/api/v1/keys",
                        headers={"Origin": "https://evil.example.com",
                                 "Access-Control-Request-Method": "POST"})
    assert status == 405

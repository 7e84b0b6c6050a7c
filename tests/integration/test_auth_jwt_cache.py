"""The per-worker cache of verified access tokens (ngx_http_cinematch_authn.c)
must answer exactly as verifying again would: a cached token stops working
at exp (+ leeway), a token that differs in one byte is verified (and
refused) on its own, and the logout denylist still applies to a cached
token.  One worker, so the second request of a token always finds it
cached; leeway 0 so expiry is to the second.
"""

import base64
import hashlib
import hmac
import json
import os
import socket
import subprocess
import time
import uuid

import pytest

import harness

BIN = harness.ROOT / "build" / "cinematch"
PATH = "/internal/auth/whoami"


@pytest.fixture(scope="module")
def secret(workdir):
    path = os.path.join(workdir, "cache-jwt.secret")
    if os.path.exists(path):
        os.unlink(path)
    subprocess.run([str(BIN), "jwt-secret", "generate", "--out", path],
                   check=True, capture_output=True)
    with open(path, "rb") as f:
        return path, f.read().strip()


@pytest.fixture(scope="module")
def api(workdir, backends, secret):
    ngx = harness.Nginx(workdir, redis=backends.redis,
                        http_extra=f"cinematch_jwt_secret_file {secret[0]};\n"
                                   "cinematch_jwt_leeway 0s;",
                        location_extra="cinematch_echo on;",
                        name="nginx-jwt-cache", workers=1)
    try:
        ngx.start()
        yield ngx
    finally:
        ngx.stop()
    problems = ngx.log_problems()
    assert not problems, "nginx logged alerts:\n" + "\n".join(problems)


def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def token(key, sub="7", exp_in=3600, jti=None):
    now = int(time.time())
    h = {"alg": "HS256", "typ": "JWT",
         "kid": hashlib.sha256(key).hexdigest()[:16]}
    c = {"iss": "cinematch", "aud": "cinematch-api", "sub": sub,
         "role": "user", "jti": jti or str(uuid.uuid4()), "iat": now,
         "exp": now + exp_in}
    s = f"{b64(json.dumps(h).encode())}.{b64(json.dumps(c).encode())}"
    return s + "." + b64(hmac.new(key, s.encode(), hashlib.sha256).digest())


def whoami(api, tok):
    status, _, data = api.request("GET", PATH,
                                  headers={"Authorization": f"Bearer {tok}"})
    return status, json.loads(data)


def redis_cmd(redis, *args):
    cmd = f"*{len(args)}\r\n" + "".join(f"${len(a)}\r\n{a}\r\n" for a in args)
    with socket.create_connection(("127.0.0.1", redis.port), timeout=2) as s:
        s.sendall(cmd.encode())
        return s.recv(256)


def test_a_cached_token_expires_at_its_exp(api, secret):
    tok = token(secret[1], exp_in=2)
    exp = json.loads(base64.urlsafe_b64decode(tok.split(".")[1] + "=="))["exp"]
    for _ in range(3):                      # verified, then cache hits
        status, doc = whoami(api, tok)
        assert status == 200 and doc["user_id"] == 7, doc
    while time.time() < exp + 0.2:
        time.sleep(0.1)
    status, doc = whoami(api, tok)
    assert status == 401, doc
    assert "expired" in doc["error"]["message"]


def test_a_token_one_byte_off_a_cached_one_is_refused(api, secret):
    tok = token(secret[1], sub="8")
    assert whoami(api, tok)[0] == 200       # now cached
    head, payload, sig = tok.split(".")
    # same length and the same last characters (the cache slot): only the
    # full comparison tells them apart
    other = payload[:-2] + ("A" if payload[-2] != "A" else "B") + payload[-1]
    status, doc = whoami(api, f"{head}.{other}.{sig}")
    assert status == 401, doc
    assert whoami(api, tok)[0] == 200


def test_the_denylist_applies_to_a_cached_token(api, backends, secret):
    jti = str(uuid.uuid4())
    tok = token(secret[1], sub="9", jti=jti)
    assert whoami(api, tok)[0] == 200
    assert whoami(api, tok)[0] == 200       # a cache hit
    # logout on another node: only the Redis key
    assert redis_cmd(backends.redis, "SET", f"cm:deny:{jti}", "1", "EX",
                     "60").startswith(b"+OK")
    status, doc = whoami(api, tok)
    assert status == 401 and "revoked" in doc["error"]["message"], doc

"""Access tokens for tests: HS256 JWTs signed with the secret nginx reads
(cinematch_jwt_secret_file), verified by the module without a database."""

import base64
import hashlib
import hmac
import json
import subprocess
import time


def access_token(secret, role="user", sub="1"):
    def b64(b):
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
    now = int(time.time())
    h = {"alg": "HS256", "typ": "JWT",
         "kid": hashlib.sha256(secret).hexdigest()[:16]}
    c = {"iss": "cinematch", "aud": "cinematch-api", "sub": sub,
         "role": role, "jti": "00000000-0000-4000-8000-%012d" % int(sub),
         "iat": now, "exp": now + 3600}
    s = f"{b64(json.dumps(h).encode())}.{b64(json.dumps(c).encode())}"
    return s + "." + b64(hmac.new(secret, s.encode(), hashlib.sha256).digest())


def new_secret(bin_path, path):
    """Generate a secret file with `cinematch jwt-secret generate`."""
    if path.exists():
        path.unlink()
    subprocess.run([str(bin_path), "jwt-secret", "generate", "--out", str(path)],
                   check=True, capture_output=True)
    return path.read_bytes().strip()


def authenticate(ngx, token):
    """Make every request of this harness.Nginx carry the token."""
    request = ngx.request
    ngx.unauthenticated = request
    ngx.request = lambda method, path, body=None, headers=None, **kw: request(
        method, path, body, {"Authorization": f"Bearer {token}", **(headers or {})},
        **kw)

"""Email verification and password reset, end to end: nginx with the module
against real PostgreSQL (sql/001 + sql/007) and Redis, `cinematch mailer`
sending over SMTP to a real SMTP server on loopback (aiosmtpd, Debian's
python3-aiosmtpd), whose received messages the tests read for the token.

Also the security headers every API answer carries, and Cache-Control:
no-store on every answer of the auth routes, errors included.
"""

import hashlib
import http.client
import json
import os
import re
import signal
import subprocess
import threading
import time

import pytest

import harness

aiosmtpd = pytest.importorskip(
    "aiosmtpd", reason="python3-aiosmtpd not installed (./build.sh deps)")
from aiosmtpd.controller import Controller  # noqa: E402

ROOT = harness.ROOT
BIN = ROOT / "build" / "cinematch"
SCHEMA = [ROOT / "sql" / "001_users_auth.sql",
          ROOT / "sql" / "007_email_tokens.sql"]
DB = "cm_auth_email"
FROM = "noreply@cinematch.test"
LINK = "https://cinematch.test"
TOKEN_RE = re.compile(r"(?:verify-email|reset-password)\?token=(cmo_[A-Za-z0-9]{43})\r?\n")


class _Inbox:
    """aiosmtpd handler: keeps every message; refuses rcpt 'bounce-*'."""

    def __init__(self):
        self.messages = []
        self.lock = threading.Lock()

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.startswith("bounce-"):
            return "550 5.1.1 no such mailbox"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.messages.append({"from": envelope.mail_from,
                                  "to": list(envelope.rcpt_tos),
                                  "data": envelope.content.decode("utf-8")})
        return "250 Message accepted"

    def for_address(self, addr):
        with self.lock:
            return [m for m in self.messages if addr in m["to"]]


@pytest.fixture(scope="module")
def smtp():
    inbox = _Inbox()
    port = harness.free_port()
    ctl = Controller(inbox, hostname="127.0.0.1", port=port)
    ctl.start()
    inbox.port = port
    try:
        yield inbox
    finally:
        ctl.stop()


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
    for f in SCHEMA:
        d.sql(f.read_text())
    return d


@pytest.fixture(scope="module")
def api(workdir, backends, db):
    secret = os.path.join(workdir, "email-jwt.secret")
    if os.path.exists(secret):
        os.unlink(secret)
    subprocess.run([str(BIN), "jwt-secret", "generate", "--out", secret],
                   check=True, capture_output=True)
    # a second server whose location has a rate limit: there the denylist
    # and "tokens not before" are checked inside the rate-limit script
    limited = harness.free_port()
    ngx = harness.Nginx(workdir, pg=db, redis=backends.redis,
                        http_extra=f"cinematch_jwt_secret_file {secret};\n"
                                   "cinematch_reset_token_ttl 10m;\n"
                                   "cinematch_verify_token_ttl 1h;\n"
                                   f"server {{ listen 127.0.0.1:{limited};\n"
                                   "  location / { cinematch;\n"
                                   "    cinematch_rate_limit 1000r/s "
                                   "burst=1000; }\n"
                                   "}",
                        name="nginx-auth-email", workers=2, pg_pool=2,
                        pg_timeout="3s")
    ngx.limited_port = limited
    try:
        ngx.start()
        yield ngx
    finally:
        ngx.stop()
    problems = ngx.log_problems()
    assert not problems, "nginx logged alerts:\n" + "\n".join(problems)


def call(api, method, path, doc=None, token=None):
    h = {}
    body = None
    if doc is not None:
        body = json.dumps(doc).encode()
        h["Content-Type"] = "application/json"
    if token is not None:
        h["Authorization"] = f"Bearer {token}"
    status, hdrs, data = api.request(method, path, body=body, headers=h,
                                     timeout=30)
    return status, hdrs, json.loads(data) if data else None


def mailer(db, smtp_port, *args, check=True):
    r = subprocess.run(
        [str(BIN), "mailer", "--once", "--dsn", db.conninfo,
         "--smtp-url", f"smtp://127.0.0.1:{smtp_port}", "--smtp-tls", "off",
         "--from", FROM, "--link-base", LINK, "--timeout", "5", *args],
        capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, r.stderr
    return r


_seq = [0]


def new_email(prefix="u"):
    _seq[0] += 1
    return f"{prefix}{_seq[0]}-{os.getpid()}@example.com"


def register(api, email, password="correct horse battery"):
    status, _, doc = call(api, "POST", "/api/v1/auth/register",
                          {"email": email, "password": password})
    assert status == 201, doc
    return doc["user"]["id"]


def login(api, email, password="correct horse battery"):
    return call(api, "POST", "/api/v1/auth/login",
                {"email": email, "password": password})


def token_from(smtp, email, n=1):
    msgs = smtp.for_address(email)
    assert len(msgs) == n, msgs
    m = TOKEN_RE.search(msgs[-1]["data"])
    assert m, msgs[-1]["data"]
    return m.group(1)


# ---- email verification ----

def test_register_queues_a_verification_mail_that_verifies_the_address(api, db, smtp):
    email = new_email()
    uid = register(api, email)
    # the outbox row holds the token until it is sent; the token table
    # only its hash
    row = db.sql(f"SELECT kind, to_addr, token IS NOT NULL, sent_at IS NULL "
                 f"FROM mail_outbox o JOIN user_tokens t ON t.id = o.token_id "
                 f"WHERE t.user_id = {uid}")
    assert row == f"verify_email|{email}|t|t"

    status, _, tokens = login(api, email)
    assert status == 200          # verification is not needed to log in
    status, _, me = call(api, "GET", "/api/v1/auth/me",
                         token=tokens["access_token"])
    assert status == 200 and me["user"]["email_verified"] is False

    mailer(db, smtp.port)
    tok = token_from(smtp, email)
    msg = smtp.for_address(email)[0]
    assert msg["from"] == FROM
    assert "Subject: Confirm your cinematch email address" in msg["data"]
    assert f"{LINK}/verify-email?token={tok}" in msg["data"]

    # sent: the secret left the outbox; stored: the SHA-256, never the token
    assert db.sql(f"SELECT count(*) FROM mail_outbox o JOIN user_tokens t "
                  f"ON t.id = o.token_id WHERE t.user_id = {uid} "
                  f"AND o.token IS NULL AND o.sent_at IS NOT NULL") == "1"
    assert db.sql(f"SELECT token_sha256 FROM user_tokens WHERE user_id = {uid}") \
        == hashlib.sha256(tok.encode()).hexdigest()

    status, hdrs, doc = call(api, "POST", "/api/v1/auth/verify-email", {"token": tok})
    assert status == 204, doc
    assert hdrs["cache-control"] == "no-store"
    status, _, me = call(api, "GET", "/api/v1/auth/me",
                         token=tokens["access_token"])
    assert me["user"]["email_verified"] is True

    # single use
    status, _, doc = call(api, "POST", "/api/v1/auth/verify-email", {"token": tok})
    assert status == 400 and doc["error"]["code"] == "invalid_request"

    # a second pass sends nothing more
    mailer(db, smtp.port)
    assert len(smtp.for_address(email)) == 1


def test_verify_email_refuses_bad_expired_and_foreign_tokens(api, db, smtp):
    email = new_email()
    uid = register(api, email)
    mailer(db, smtp.port)
    tok = token_from(smtp, email)

    # shape errors are 422 (field), unknown/malformed tokens one 400
    for body, code in [({}, 422), ({"token": 5}, 422),
                       ({"token": tok, "extra": 1}, 422),
                       ({"token": "cmo_short"}, 400),
                       ({"token": "cmr_" + tok[4:]}, 400),
                       ({"token": "cmo_" + "A" * 43}, 400),
                       ({"token": "' OR 1=1 --"}, 400)]:
        status, hdrs, doc = call(api, "POST", "/api/v1/auth/verify-email", body)
        assert status == code, (body, doc)
        assert hdrs["cache-control"] == "no-store"

    # expired: refused, and the account stays unverified
    db.sql(f"UPDATE user_tokens SET created_at = now() - interval '2 days', "
           f"expires_at = now() - interval '1 second' WHERE user_id = {uid}")
    status, _, doc = call(api, "POST", "/api/v1/auth/verify-email", {"token": tok})
    assert status == 400, doc
    assert db.sql(f"SELECT email_verified_at IS NULL FROM users WHERE id = {uid}") == "t"

    # a reset token does not verify (purposes are separate)
    call(api, "POST", "/api/v1/auth/forgot-password", {"email": email})
    mailer(db, smtp.port)
    reset = token_from(smtp, email, n=2)
    status, _, doc = call(api, "POST", "/api/v1/auth/verify-email", {"token": reset})
    assert status == 400, doc


# ---- password reset ----

def test_password_reset_changes_password_and_ends_every_session(api, db, smtp):
    email = new_email()
    register(api, email, password="old password 1")
    status, _, s1 = login(api, email, "old password 1")
    assert status == 200
    status, _, s2 = login(api, email, "old password 1")
    assert status == 200

    status, hdrs, doc = call(api, "POST", "/api/v1/auth/forgot-password",
                             {"email": email.upper()})     # case-insensitive
    assert status == 202, doc
    assert hdrs["cache-control"] == "no-store"
    mailer(db, smtp.port)
    tok = token_from(smtp, email, n=2)      # verification + reset
    msg = smtp.for_address(email)[-1]["data"]
    assert "Subject: Reset your cinematch password" in msg
    assert f"{LINK}/reset-password?token={tok}" in msg

    # a bad new password is a 422, and does not spend the token
    status, _, doc = call(api, "POST", "/api/v1/auth/reset-password",
                          {"token": tok, "new_password": "short"})
    assert status == 422 and "new_password" in doc["error"]["fields"]

    status, hdrs, doc = call(api, "POST", "/api/v1/auth/reset-password",
                             {"token": tok, "new_password": "new password 2"})
    assert status == 204, doc
    assert hdrs["cache-control"] == "no-store"

    assert login(api, email, "old password 1")[0] == 401
    status, _, s3 = login(api, email, "new password 2")
    assert status == 200

    # every refresh family that existed before the reset is dead
    for s in (s1, s2):
        status, _, doc = call(api, "POST", "/api/v1/auth/refresh",
                              {"refresh_token": s["refresh_token"]})
        assert status == 401, doc
    status, _, doc = call(api, "POST", "/api/v1/auth/refresh",
                          {"refresh_token": s3["refresh_token"]})
    assert status == 200, doc

    # the token worked once
    status, _, doc = call(api, "POST", "/api/v1/auth/reset-password",
                          {"token": tok, "new_password": "third password 3"})
    assert status == 400 and doc["error"]["code"] == "invalid_request"
    assert login(api, email, "third password 3")[0] == 401

    # following the reset link proved the address
    assert db.sql(f"SELECT email_verified_at IS NOT NULL FROM users "
                  f"WHERE lower(email) = lower('{email}')") == "t"


def me(api, token, port=None):
    """GET /api/v1/auth/me on the plain server or on the rate-limited one."""
    conn = http.client.HTTPConnection("127.0.0.1", port or api.port, timeout=10)
    try:
        conn.request("GET", "/api/v1/auth/me",
                     headers={"Authorization": f"Bearer {token}"})
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read() or b"null")
    finally:
        conn.close()


def test_password_reset_refuses_access_tokens_issued_before_it(api, db, smtp,
                                                               backends):
    """Access tokens issued before a reset are refused at once, with and
    without a rate limit on the location (MGET, or inside the script), also
    by a worker that has the token in its verified-token cache; tokens
    issued after the reset work."""
    email = new_email()
    uid = register(api, email, password="old password 1")
    status, _, old = login(api, email, "old password 1")
    assert status == 200
    for port in (api.port, api.limited_port) * 3:   # both workers cache it
        assert me(api, old["access_token"], port)[0] == 200

    # "not before" has one-second resolution (iat): reset in a later second
    time.sleep(1.1)
    call(api, "POST", "/api/v1/auth/forgot-password", {"email": email})
    mailer(db, smtp.port)
    tok = token_from(smtp, email, n=2)
    status, _, doc = call(api, "POST", "/api/v1/auth/reset-password",
                          {"token": tok, "new_password": "new password 2"})
    assert status == 204, doc

    for port in (api.port, api.limited_port) * 3:
        status, doc = me(api, old["access_token"], port)
        assert status == 401, doc
        assert doc["error"]["message"] == "access token was revoked"

    status, _, new = login(api, email, "new password 2")
    assert status == 200
    for port in (api.port, api.limited_port) * 2:
        status, doc = me(api, new["access_token"], port)
        assert status == 200, doc
        assert doc["user"]["id"] == uid

    # kept as long as an older token can live (access TTL + leeway + 1 s)
    r = subprocess.run(["redis-cli", "-p", str(backends.redis.port),
                        "TTL", f"cm:nbf:u{uid}"],
                       capture_output=True, text=True, check=True)
    assert 800 < int(r.stdout) <= 15 * 60 + 61, r.stdout


def test_expired_reset_token_is_refused(api, db, smtp):
    email = new_email()
    uid = register(api, email)
    call(api, "POST", "/api/v1/auth/forgot-password", {"email": email})
    mailer(db, smtp.port)
    tok = token_from(smtp, email, n=2)
    db.sql(f"UPDATE user_tokens SET created_at = now() - interval '2 hours', "
           f"expires_at = now() - interval '1 second' "
           f"WHERE user_id = {uid} AND purpose = 'reset_password'")
    status, _, doc = call(api, "POST", "/api/v1/auth/reset-password",
                          {"token": tok, "new_password": "new password 2"})
    assert status == 400, doc
    assert login(api, email)[0] == 200         # the old password stays


def test_concurrent_resets_with_one_token_succeed_once(api, db, smtp):
    email = new_email()
    register(api, email)
    call(api, "POST", "/api/v1/auth/forgot-password", {"email": email})
    mailer(db, smtp.port)
    tok = token_from(smtp, email, n=2)
    results = []

    def go(i):
        results.append(call(api, "POST", "/api/v1/auth/reset-password",
                            {"token": tok, "new_password": f"racing password {i}"})[0])

    threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == [204, 400, 400, 400], results


def test_forgot_password_answers_the_same_for_unknown_addresses(api, db, smtp):
    known = new_email()
    register(api, known)
    unknown = new_email("nobody")
    answers = []
    for email in (known, unknown, "not-an-address"):
        status, hdrs, doc = call(api, "POST", "/api/v1/auth/forgot-password",
                                 {"email": email})
        hdrs = {k: v for k, v in hdrs.items()
                if k not in ("x-request-id", "date")}
        answers.append((status, hdrs, doc))
    assert answers[0][0] == 202
    assert answers[0] == answers[1] == answers[2]

    before = len(smtp.messages)
    mailer(db, smtp.port)
    assert len(smtp.for_address(known)) == 2
    assert smtp.for_address(unknown) == []
    assert len(smtp.messages) == before + 2     # known's verify + reset


def test_forgot_password_queues_one_mail_per_account_per_minute(api, db, smtp):
    email = new_email()
    uid = register(api, email)
    for _ in range(3):
        status, _, _ = call(api, "POST", "/api/v1/auth/forgot-password",
                            {"email": email})
        assert status == 202
    assert db.sql(f"SELECT count(*) FROM user_tokens WHERE user_id = {uid} "
                  f"AND purpose = 'reset_password'") == "1"


def test_forgot_password_rejects_malformed_bodies(api):
    for body in ({}, {"email": 5}, {"email": "a@b.c", "x": 1},
                 {"email": "a" * 300 + "@example.com"}):
        status, hdrs, doc = call(api, "POST", "/api/v1/auth/forgot-password", body)
        assert status == 422, (body, doc)
        assert hdrs["cache-control"] == "no-store"


# ---- the mailer ----

def test_mailer_retries_while_smtp_is_down_then_sends(api, db, smtp):
    email = new_email()
    uid = register(api, email)
    dead = harness.free_port()
    r = mailer(db, dead, "--retry-base", "60")
    assert r.returncode == 0        # SMTP trouble is not a mailer failure
    row = db.sql(f"SELECT o.attempts, o.token IS NOT NULL, o.sent_at IS NULL, "
                 f"o.next_attempt_at > now() + interval '50 seconds', "
                 f"o.last_error <> '' FROM mail_outbox o JOIN user_tokens t "
                 f"ON t.id = o.token_id WHERE t.user_id = {uid}")
    assert row == "1|t|t|t|t"

    # not due yet: a pass with the server up sends nothing
    mailer(db, smtp.port)
    assert smtp.for_address(email) == []

    db.sql(f"UPDATE mail_outbox SET next_attempt_at = now() WHERE token_id IN "
           f"(SELECT id FROM user_tokens WHERE user_id = {uid})")
    mailer(db, smtp.port)
    token_from(smtp, email)
    assert db.sql(f"SELECT attempts, token IS NULL FROM mail_outbox WHERE token_id IN "
                  f"(SELECT id FROM user_tokens WHERE user_id = {uid})") == "2|t"


def test_mailer_gives_up_on_a_permanent_refusal(api, db, smtp):
    email = new_email("bounce-")
    uid = register(api, email)
    mailer(db, smtp.port)
    row = db.sql(f"SELECT attempts, failed_at IS NOT NULL, token IS NULL, "
                 f"last_error FROM mail_outbox WHERE token_id IN "
                 f"(SELECT id FROM user_tokens WHERE user_id = {uid})")
    attempts, failed, cleared, error = row.split("|")
    assert (attempts, failed, cleared) == ("1", "t", "t")
    assert "550" in error


def test_mailer_drops_mail_whose_token_expired_unsent(api, db, smtp):
    email = new_email()
    uid = register(api, email)
    db.sql(f"UPDATE user_tokens SET created_at = now() - interval '2 days', "
           f"expires_at = now() - interval '1 second' WHERE user_id = {uid}")
    mailer(db, smtp.port)
    assert smtp.for_address(email) == []
    assert db.sql(f"SELECT failed_at IS NOT NULL, token IS NULL FROM mail_outbox "
                  f"WHERE token_id IN (SELECT id FROM user_tokens "
                  f"WHERE user_id = {uid})") == "t|t"


def test_mailer_mail_dir_writes_eml_files_whose_links_work(api, db, workdir):
    """Development mode (conf/stack.sh without SMTP): no SMTP server, each
    mail is an .eml file (0600) in --mail-dir, and its link's token works."""
    maildir = os.path.join(workdir, "mail-dev")
    email = new_email("dev")
    uid = register(api, email)
    r = subprocess.run(
        [str(BIN), "mailer", "--once", "--dsn", db.conninfo,
         "--mail-dir", maildir, "--from", FROM,
         "--link-base", "http://127.0.0.1:8080"],
        capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "development mode" in r.stderr
    files = [f for f in os.listdir(maildir)
             if open(os.path.join(maildir, f)).read().count(email)]
    assert len(files) == 1, os.listdir(maildir)
    assert re.fullmatch(r"\d{8}T\d{6}Z-\d+-verify_email\.eml", files[0])
    path = os.path.join(maildir, files[0])
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(maildir).st_mode & 0o777 == 0o700
    msg = open(path).read()
    assert f"To: <{email}>" in msg
    m = re.search(r"http://127\.0\.0\.1:8080/verify-email\?token=(cmo_\w{43})",
                  msg)
    assert m, msg
    assert db.sql(f"SELECT sent_at IS NOT NULL, token IS NULL FROM mail_outbox "
                  f"WHERE token_id IN (SELECT id FROM user_tokens "
                  f"WHERE user_id = {uid})") == "t|t"
    status, _, doc = call(api, "POST", "/api/v1/auth/verify-email",
                          {"token": m.group(1)})
    assert status == 204, doc


MAILER_APP = "cinematch-mailer"     # its application_name (cmd_mailer.c)


def test_mailer_loop_sends_on_notify_and_stops_on_sigterm(api, db, smtp):
    p = subprocess.Popen(
        [str(BIN), "mailer", "--loop", "--interval", "600", "--dsn", db.conninfo,
         "--smtp-url", f"smtp://127.0.0.1:{smtp.port}", "--smtp-tls", "off",
         "--from", FROM, "--link-base", LINK],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # listening, and its first pass done: its session has run something
        # after LISTEN and waits (it was a fixed 0.5 s sleep, too short when
        # the machine was loaded)
        harness.wait_for(lambda: db.sql(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            f" AND application_name = '{MAILER_APP}'"
            " AND state = 'idle' AND query <> ''"
            " AND query NOT LIKE 'LISTEN%'") == "1",
            timeout=120, what="mailer --loop listening after its first pass")
        email = new_email()
        register(api, email)
        # --interval 600: only the NOTIFY can make this mail go out
        harness.wait_for(lambda: smtp.for_address(email), timeout=120,
                         what="mail sent by mailer --loop")
    finally:
        # regression: a SIGTERM that landed while a pass was still running
        # (right after the mail arrived) was seen only after --interval
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err


def test_mailer_loop_stops_on_a_sigterm_that_lands_during_a_pass(api, db, smtp):
    # regression: the stop flag was checked only before a pass, so a
    # SIGTERM during one was seen only when the next poll ended, after
    # --interval (here 600 s); a pass held on a table lock pins the signal
    # inside it
    p = subprocess.Popen(
        [str(BIN), "mailer", "--loop", "--interval", "600", "--dsn", db.conninfo,
         "--smtp-url", f"smtp://127.0.0.1:{smtp.port}", "--smtp-tls", "off",
         "--from", FROM, "--link-base", LINK],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    mailer_is = (lambda cond: db.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
        f" AND application_name = '{MAILER_APP}' AND {cond}") == "1")
    locker = None
    try:
        harness.wait_for(lambda: mailer_is(
            "state = 'idle' AND query <> '' AND query NOT LIKE 'LISTEN%'"),
            timeout=120, what="mailer --loop listening after its first pass")
        locker = subprocess.Popen(
            ["psql", "-X", "-q", "-h", "127.0.0.1", "-p", str(db.pg.port),
             "-U", db.pg.user, "-d", db.dbname],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, text=True)
        locker.stdin.write("BEGIN; LOCK TABLE mail_outbox IN ACCESS EXCLUSIVE MODE;\n")
        locker.stdin.flush()
        harness.wait_for(lambda: db.sql(
            "SELECT count(*) FROM pg_locks WHERE granted AND mode ="
            " 'AccessExclusiveLock' AND relation = 'mail_outbox'::regclass") == "1",
            timeout=120, what="the lock on mail_outbox")
        db.sql("NOTIFY cm_mail_outbox")
        harness.wait_for(lambda: mailer_is("wait_event_type = 'Lock'"),
                         timeout=120, what="the mailer's pass waiting on the lock")
        p.send_signal(signal.SIGTERM)
    finally:
        if locker is not None:
            locker.communicate("COMMIT;\n", timeout=120)
        try:
            out, err = p.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            out, err = p.communicate()
            raise AssertionError("mailer --loop ignored a SIGTERM sent during a pass")
    assert p.returncode == 0, err


def test_mailer_usage_errors_exit_2(db):
    for args in (["--once", "--loop"], ["--bogus"],
                 ["--once", "--smtp-url", "http://x", "--from", FROM,
                  "--link-base", LINK],
                 ["--once", "--smtp-url", "smtp://x", "--from", FROM],
                 ["--once", "--smtp-url", "smtp://x", "--from", "noreply",
                  "--link-base", LINK],
                 ["--once", "--smtp-url", "smtp://x", "--from", FROM,
                  "--link-base", LINK, "--smtp-tls", "maybe"],
                 ["--batch", "0"]):
        r = subprocess.run([str(BIN), "mailer", *args], capture_output=True,
                           text=True, timeout=10,
                           env={k: v for k, v in os.environ.items()
                                if not k.startswith("CINEMATCH_")})
        assert r.returncode == 2, (args, r.stderr)
        assert "cinematch mailer:" in r.stderr
    r = subprocess.run([str(BIN), "mailer", "--help"], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 0 and "--smtp-url" in r.stdout


# ---- security headers ----

SECURITY_HEADERS = {"x-content-type-options": "nosniff",
                    "x-frame-options": "DENY",
                    "referrer-policy": "no-referrer"}


def test_every_api_answer_carries_the_security_headers(api):
    for method, path, body in [("GET", "/health", None),
                               ("GET", "/api/v1/nope", None),
                               ("POST", "/api/v1/auth/login",
                                {"email": "x@example.com", "password": "wrong pass"}),
                               ("GET", "/api/v1/auth/me", None),
                               ("POST", "/api/v1/auth/register", b"{not json")]:
        raw = body if isinstance(body, bytes) else (
            json.dumps(body).encode() if body is not None else None)
        status, hdrs, _ = api.request(method, path, body=raw,
                                      headers={"Content-Type": "application/json"}
                                      if raw else {})
        for k, v in SECURITY_HEADERS.items():
            assert hdrs.get(k) == v, (path, status, k, hdrs)


def test_auth_answers_are_never_cached_errors_included(api):
    email = new_email()
    register(api, email)
    cases = [("POST", "/api/v1/auth/login", {"email": email, "password": "bad password"}, 401),
             ("POST", "/api/v1/auth/login", {"email": email}, 422),
             ("POST", "/api/v1/auth/refresh", {"refresh_token": "nope"}, 401),
             ("POST", "/api/v1/auth/register", {"email": email, "password": "x" * 12}, 409),
             ("GET", "/api/v1/auth/me", None, 401),
             ("GET", "/api/v1/keys", None, 401),
             ("POST", "/api/v1/auth/reset-password", {"token": "x", "new_password": "y" * 9}, 400)]
    for method, path, body, want in cases:
        status, hdrs, doc = call(api, method, path, body)
        assert status == want, (path, doc)
        assert hdrs.get("cache-control") == "no-store", (path, hdrs)
    status, _, tokens = login(api, email)
    status, hdrs, _ = call(api, "GET", "/api/v1/auth/me", token=tokens["access_token"])
    assert status == 200 and hdrs["cache-control"] == "no-store"
    # not an auth route: no Cache-Control from the module
    status, hdrs, _ = call(api, "GET", "/health")
    assert status == 200 and "cache-control" not in hdrs

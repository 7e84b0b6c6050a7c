"""`cinematch maintain` against a throwaway PostgreSQL with the real schema."""

import os
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from pgfixture import CINEMATCH_BIN as BIN, PgServer, have_postgres  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not have_postgres(), reason="PostgreSQL 15 not installed"),
    pytest.mark.skipif(not os.access(BIN, os.X_OK), reason=f"{BIN} not built"),
]


@pytest.fixture(scope="module")
def pg():
    with PgServer() as server:
        yield server


_n = [0]


@pytest.fixture
def db(pg):
    _n[0] += 1
    name = pg.create_database(f"m{_n[0]}", migrate=True)
    pg.psql("""
        SELECT request_logs_ensure_partition('2020-01-15');
        INSERT INTO request_logs (ts, request_id, method, route, path, status, duration_ms)
        VALUES ('2020-01-02Z', 'old', 'GET', '/h', '/h', 200, 1),
               ('2019-06-02Z', 'in-default', 'GET', '/h', '/h', 200, 1),
               (now(), 'new', 'GET', '/h', '/h', 200, 1);
        INSERT INTO users (email, password_hash) VALUES ('t@example.com', 'h');
        INSERT INTO refresh_tokens (user_id, token_sha256, issued_at, expires_at)
        SELECT id, repeat('1', 64), now() - interval '10 days', now() - interval '5 days'
          FROM users;
        INSERT INTO refresh_tokens (user_id, token_sha256, expires_at)
        SELECT id, repeat('2', 64), now() + interval '5 days' FROM users;
    """, db=name)
    return name


def maintain(pg, db, *args):
    return subprocess.run([BIN, "maintain", "--dsn", pg.dsn(db), *args],
                          capture_output=True, text=True, timeout=60)


def partitions(pg, db):
    return pg.psql("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
                   " WHERE i.inhparent = 'request_logs'::regclass ORDER BY 1", db=db).split()


def test_dry_run_reports_and_changes_nothing(pg, db):
    before = partitions(pg, db)
    r = maintain(pg, db, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert "would drop partition request_logs_y2020m01" in r.stderr
    assert "dry run: 0 partitions created, 1 dropped, 1 expired refresh token deleted" in r.stdout
    assert partitions(pg, db) == before
    assert pg.psql("SELECT count(*) FROM refresh_tokens", db=db) == "2"


def test_retention_drops_old_months_keeps_default_and_recent(pg, db):
    r = maintain(pg, db, "--keep-months", "6")
    assert r.returncode == 0, r.stderr
    parts = partitions(pg, db)
    assert "request_logs_y2020m01" not in parts
    assert "request_logs_default" in parts
    now = pg.psql("SELECT to_char(now() AT TIME ZONE 'UTC', '\"request_logs_y\"YYYY\"m\"MM')",
                  db=db)
    nxt = pg.psql("SELECT to_char((now() AT TIME ZONE 'UTC') + interval '1 month',"
                  " '\"request_logs_y\"YYYY\"m\"MM')", db=db)
    assert now in parts and nxt in parts
    ids = pg.psql("SELECT request_id FROM request_logs ORDER BY 1", db=db).split()
    assert ids == ["in-default", "new"]
    # only the expired refresh token went
    assert pg.psql("SELECT token_sha256 FROM refresh_tokens", db=db) == "2" * 64

    r = maintain(pg, db)                        # idempotent
    assert r.returncode == 0, r.stderr
    assert "0 partitions created, 0 dropped, 0 expired refresh tokens" in r.stdout


def test_keep_months_zero_never_drops(pg, db):
    r = maintain(pg, db, "--keep-months", "0")
    assert r.returncode == 0, r.stderr
    assert "request_logs_y2020m01" in partitions(pg, db)


def test_missing_partitions_are_created(pg, db):
    part = pg.psql("SELECT to_char((now() AT TIME ZONE 'UTC') + interval '1 month',"
                   " '\"request_logs_y\"YYYY\"m\"MM')", db=db)
    pg.psql(f"ALTER TABLE request_logs DETACH PARTITION {part}; DROP TABLE {part};", db=db)
    r = maintain(pg, db)
    assert r.returncode == 0, r.stderr
    assert "1 partition created" in r.stdout
    assert part in partitions(pg, db)


def test_a_second_concurrent_run_is_refused(pg, db):
    key = int.from_bytes(b"cmmaint\0", "big")
    holder = subprocess.Popen(
        [os.path.join(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"), "psql"), "-X",
         "-q", pg.dsn(db), "-c", f"SELECT pg_advisory_lock({key})", "-c", "SELECT pg_sleep(4)"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 5
        while time.time() < deadline and pg.psql(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory'", db=db) == "0":
            time.sleep(0.05)
        r = maintain(pg, db)
        assert r.returncode == 1
        assert "another cinematch maintain is running" in r.stderr
    finally:
        holder.kill()
        holder.wait()


def test_unmigrated_database_is_a_clear_error(pg):
    name = pg.create_database("bare")
    r = maintain(pg, name)
    assert r.returncode == 1 and "run cinematch migrate first" in r.stderr
    r = subprocess.run([BIN, "maintain", "--keep-months", "-1"], capture_output=True, text=True)
    assert r.returncode == 2

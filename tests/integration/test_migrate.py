"""`cinematch migrate` and the schema against a real, throwaway PostgreSQL.

Each test gets its own database on one server started for the module
(pgfixture.PgServer).  Run: /usr/bin/python3 -m pytest -q tests/integration
"""

import hashlib
import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from pgfixture import PgError, PgServer, have_postgres  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SQL_DIR = os.path.join(ROOT, "sql")
BIN = os.environ.get("CINEMATCH_BIN", os.path.join(ROOT, "build", "cinematch"))

pytestmark = [
    pytest.mark.skipif(not have_postgres(),
                       reason="PostgreSQL 15 server binaries not installed (./build.sh deps)"),
    pytest.mark.skipif(not os.access(BIN, os.X_OK),
                       reason=f"{BIN} not built (./build.sh build)"),
]


@pytest.fixture(scope="module")
def pg():
    with PgServer() as server:
        yield server


_db_counter = [0]


@pytest.fixture
def db(pg):
    """A fresh, empty database name on the module's server."""
    _db_counter[0] += 1
    return pg.create_database(f"t{_db_counter[0]}")


def migrate(pg, db, *args, sql_dir=SQL_DIR):
    env = dict(os.environ)
    env.pop("CINEMATCH_PG_DSN", None)
    return subprocess.run([BIN, "migrate", "--dsn", pg.dsn(db), "--dir", sql_dir, *args],
                          capture_output=True, text=True, env=env, timeout=120)


def sql_files(d=SQL_DIR):
    return sorted(f for f in os.listdir(d) if f.endswith(".sql"))


def sha256_file(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture
def sql_copy(tmp_path):
    """A private copy of sql/ that a test may edit."""
    d = tmp_path / "sql"
    shutil.copytree(SQL_DIR, d)
    return str(d)


def applied_rows(pg, db):
    out = pg.psql("SELECT version, name, sha256 FROM schema_migrations ORDER BY version", db=db)
    return [tuple(line.split("|")) for line in out.splitlines()]


# --- the runner ---------------------------------------------------------------


def test_migrate_applies_every_file_in_order_and_records_checksums(pg, db):
    r = migrate(pg, db)
    assert r.returncode == 0, r.stderr
    files = sql_files()
    assert len(files) >= 5
    rows = applied_rows(pg, db)
    assert [name for _, name, _ in rows] == files
    assert [int(v) for v, _, _ in rows] == [int(f[:3]) for f in files]
    for _, name, sha in rows:
        assert sha == sha256_file(os.path.join(SQL_DIR, name))
    # the order in the output is the numeric order
    applied = [line.split()[1] for line in r.stdout.splitlines() if line.startswith("applied ")]
    assert applied == files


def test_status_lists_pending_then_applied_and_changes_nothing(pg, db):
    r = migrate(pg, db, "--status")
    assert r.returncode == 0, r.stderr
    for f in sql_files():
        assert any(f in line and "pending" in line for line in r.stdout.splitlines()), r.stdout
    # --status must not create the history table
    assert pg.psql("SELECT to_regclass('schema_migrations') IS NULL", db=db) == "t"

    assert migrate(pg, db).returncode == 0
    r = migrate(pg, db, "--status")
    assert r.returncode == 0, r.stderr
    for f in sql_files():
        assert any(f in line and "applied" in line for line in r.stdout.splitlines()), r.stdout
    assert "pending" not in r.stdout


def test_dry_run_lists_what_would_apply_and_changes_nothing(pg, db):
    r = migrate(pg, db, "--dry-run")
    assert r.returncode == 0, r.stderr
    assert [line.split()[-1] for line in r.stdout.splitlines()
            if line.startswith("would apply ")] == sql_files()
    assert pg.psql("SELECT to_regclass('schema_migrations') IS NULL", db=db) == "t"
    assert pg.psql("SELECT to_regclass('users') IS NULL", db=db) == "t"


def test_second_run_is_a_no_op(pg, db):
    assert migrate(pg, db).returncode == 0
    before = pg.psql("SELECT version, applied_at FROM schema_migrations ORDER BY 1", db=db)
    r = migrate(pg, db)
    assert r.returncode == 0, r.stderr
    assert "0 migrations applied" in r.stdout
    assert pg.psql("SELECT version, applied_at FROM schema_migrations ORDER BY 1", db=db) == before


def test_new_file_is_applied_on_the_next_run(pg, db, sql_copy):
    assert migrate(pg, db, sql_dir=sql_copy).returncode == 0
    with open(os.path.join(sql_copy, "900_extra.sql"), "w") as f:
        f.write("CREATE TABLE extra_thing (id int);\n")
    r = migrate(pg, db, sql_dir=sql_copy)
    assert r.returncode == 0, r.stderr
    assert "1 migration applied" in r.stdout
    assert applied_rows(pg, db)[-1][1] == "900_extra.sql"


def test_modified_applied_file_makes_migrate_refuse(pg, db, sql_copy):
    assert migrate(pg, db, sql_dir=sql_copy).returncode == 0
    victim = os.path.join(sql_copy, sql_files(sql_copy)[1])
    with open(victim, "a") as f:
        f.write("\n-- an innocent-looking edit\n")
    # a new pending file must not be applied while history is inconsistent
    with open(os.path.join(sql_copy, "900_extra.sql"), "w") as f:
        f.write("CREATE TABLE extra_thing (id int);\n")

    r = migrate(pg, db, sql_dir=sql_copy)
    assert r.returncode == 1
    assert "changed after it was applied" in r.stderr
    assert os.path.basename(victim) in r.stderr
    assert pg.psql("SELECT to_regclass('extra_thing') IS NULL", db=db) == "t"

    r = migrate(pg, db, "--status", sql_dir=sql_copy)
    assert r.returncode == 1
    assert "CHANGED" in r.stdout


def test_missing_applied_file_makes_migrate_refuse(pg, db, sql_copy):
    assert migrate(pg, db, sql_dir=sql_copy).returncode == 0
    gone = sql_files(sql_copy)[0]
    os.remove(os.path.join(sql_copy, gone))
    r = migrate(pg, db, sql_dir=sql_copy)
    assert r.returncode == 1
    assert gone in r.stderr and "gone" in r.stderr
    assert "MISSING" in migrate(pg, db, "--status", sql_dir=sql_copy).stdout


def test_failing_migration_rolls_back_entirely(pg, db, sql_copy):
    with open(os.path.join(sql_copy, "900_bad.sql"), "w") as f:
        f.write("CREATE TABLE half_done (id int);\n\nSELECT no_such_column FROM half_done;\n")
    r = migrate(pg, db, sql_dir=sql_copy)
    assert r.returncode == 1
    assert "900_bad.sql:3" in r.stderr          # file and line of the error
    assert "SQLSTATE 42703" in r.stderr
    assert pg.psql("SELECT to_regclass('half_done') IS NULL", db=db) == "t"
    names = [n for _, n, _ in applied_rows(pg, db)]
    assert "900_bad.sql" not in names
    assert names == sql_files()                 # the good ones before it stay


def test_006_upgrades_a_database_holding_rows_of_the_005_shape(pg, db, sql_copy):
    later = [f for f in sql_files(sql_copy) if int(f[:3]) >= 6]
    held = {f: open(os.path.join(sql_copy, f)).read() for f in later}
    for f in later:
        os.remove(os.path.join(sql_copy, f))
    assert migrate(pg, db, sql_dir=sql_copy).returncode == 0
    pg.psql("""
        INSERT INTO users (email, password_hash) VALUES ('u@example.com', 'h');
        INSERT INTO model_versions (model_name, version, task, stage, artifact_path, artifact_sha256)
            VALUES ('als', 1, 'recsys', 'production', '/m/1', repeat('a', 64));
        INSERT INTO drift_reports (baseline_rows, current_rows, drift_detected, ks_method)
            VALUES (10, 5, true, 'asymptotic');
        INSERT INTO batch_jobs (user_id, kind, model_version_id, input)
            SELECT u.id, 'recommend', v.id, '{}' FROM users u, model_versions v;
        INSERT INTO batch_jobs (user_id, kind, input) SELECT id, 'similar', '{}' FROM users;
    """, db=db)
    for f, text in held.items():
        with open(os.path.join(sql_copy, f), "w") as fh:
            fh.write(text)
    r = migrate(pg, db, sql_dir=sql_copy)
    assert r.returncode == 0, r.stderr
    assert pg.psql("SELECT name, task FROM models ORDER BY name", db=db).splitlines() == [
        "als|recsys", "dialog|dialog", "recsys|recsys"]
    assert pg.psql("SELECT alert, ks_method, reasons FROM drift_reports", db=db) \
        == "t|asymp|{unrecorded}"
    assert pg.psql("SELECT kind, coalesce(model_name, '-') FROM batch_jobs ORDER BY kind",
                   db=db).splitlines() == ["recommend|als", "similar|-"]
    # the grandfathered job is allowed, a new one must name its model
    rejects(pg, db, "INSERT INTO batch_jobs (user_id, input) SELECT id, '{}' FROM users",
            "batch_jobs_model_name_check")


def test_misnamed_sql_file_is_an_error_not_skipped(pg, db, sql_copy):
    with open(os.path.join(sql_copy, "7_typo.sql"), "w") as f:
        f.write("SELECT 1;\n")
    r = migrate(pg, db, sql_dir=sql_copy)
    assert r.returncode == 1
    assert "7_typo.sql" in r.stderr


def test_concurrent_migrators_apply_each_file_once(pg, db):
    env = dict(os.environ)
    procs = [subprocess.Popen([BIN, "migrate", "--dsn", pg.dsn(db), "--dir", SQL_DIR],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=env) for _ in range(3)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    applied = sum(out.count("\napplied ") + out.startswith("applied ") for out, _ in outs)
    assert applied == len(sql_files())
    assert len(applied_rows(pg, db)) == len(sql_files())


def test_bad_usage_exits_2_and_no_database_exits_1(pg, db):
    r = subprocess.run([BIN, "migrate", "--no-such-flag"], capture_output=True, text=True)
    assert r.returncode == 2 and "no-such-flag" in r.stderr
    r = subprocess.run([BIN, "migrate", "--help"], capture_output=True, text=True)
    assert r.returncode == 0 and "--status" in r.stdout
    r = subprocess.run([BIN, "migrate", "--dir", SQL_DIR, "--dsn",
                        "host=127.0.0.1 port=1 connect_timeout=2"],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "cannot connect" in r.stderr


# --- the schema -----------------------------------------------------------------


@pytest.fixture
def schema(pg, db):
    pg.migrate(db)
    pg.psql("INSERT INTO movies (movie_id, title, year, genres)"
            " VALUES (1, 'Toy Story', 1995, '{Animation,Children}')", db=db)
    return db


def rejects(pg, db, sql, constraint=None):
    with pytest.raises(PgError) as e:
        pg.psql(sql, db=db)
    if constraint:
        assert constraint in e.value.stderr, e.value.stderr
    return e.value.stderr


@pytest.mark.parametrize("bad", ["5.5", "0.3", "0", "-1", "4.75", "0.25", "'NaN'"])
def test_rating_outside_half_stars_is_rejected(pg, schema, bad):
    rejects(pg, schema, f"INSERT INTO ratings (user_id, movie_id, rating, ts)"
                        f" VALUES (1, 1, {bad}, now())", "rating_value_check")


def test_half_star_ratings_are_accepted_everywhere(pg, schema):
    for i, good in enumerate(["0.5", "1.0", "3.5", "5.0", "5"], start=1):
        pg.psql(f"INSERT INTO ratings (user_id, movie_id, rating, ts)"
                f" VALUES ({i}, 1, {good}, now())", db=schema)
    assert pg.psql("SELECT count(*) FROM ratings", db=schema) == "5"
    rejects(pg, schema, "INSERT INTO ratings_buffer (user_id, movie_id, rating, ts, source)"
                        " VALUES (1, 1, 5.5, now(), 'app')", "rating_value_check")
    rejects(pg, schema, "INSERT INTO ratings (user_id, movie_id, rating, ts, data_split)"
                        " VALUES (99, 1, 4, now(), 'holdout')", "ratings_data_split_check")
    rejects(pg, schema, "INSERT INTO ratings (user_id, movie_id, rating, ts)"
                        " VALUES (99, 424242, 4, now())", "foreign key")


def test_only_one_production_version_per_model(pg, schema):
    pg.psql("INSERT INTO models (name, task) VALUES ('als', 'recsys'), ('other', 'recsys')",
            db=schema)
    ins = ("INSERT INTO model_versions (model_name, version, stage, artifact_path,"
           " artifact_sha256) VALUES ('{m}', {v}, '{s}', '/m/{v}', repeat('a', 64))")
    pg.psql(ins.format(m="als", v=1, s="production"), db=schema)
    pg.psql(ins.format(m="als", v=2, s="staging"), db=schema)
    pg.psql(ins.format(m="other", v=1, s="production"), db=schema)   # another model: fine
    rejects(pg, schema, ins.format(m="als", v=3, s="production"),
            "model_versions_one_production_key")
    rejects(pg, schema, "UPDATE model_versions SET stage = 'production'"
                        " WHERE model_name = 'als' AND version = 2",
            "model_versions_one_production_key")
    # promotion = archive the old one and promote the new one in one transaction
    pg.psql("BEGIN;"
            " UPDATE model_versions SET stage = 'archived' WHERE model_name = 'als' AND version = 1;"
            " UPDATE model_versions SET stage = 'production' WHERE model_name = 'als' AND version = 2;"
            " COMMIT;", db=schema)
    assert pg.psql("SELECT version FROM model_versions WHERE model_name = 'als'"
                   " AND stage = 'production'", db=schema) == "2"
    # every stage change is in the history, in order, failed attempts excluded
    assert pg.psql("SELECT version, coalesce(from_stage, '-'), to_stage FROM model_stage_events"
                   " WHERE model_name = 'als' ORDER BY id", db=schema).splitlines() == [
        "1|-|production", "2|-|staging", "1|production|archived", "2|staging|production"]
    rejects(pg, schema, ins.format(m="als", v=2, s="none"), "model_versions_name_version_key")
    rejects(pg, schema, ins.format(m="Bad Name", v=1, s="none"), "model_name_check")
    rejects(pg, schema, ins.format(m="unregistered", v=1, s="none"), "foreign key")
    # a private model needs an owner
    rejects(pg, schema, "INSERT INTO models (name, task, private) VALUES ('mine', 'recsys', true)",
            "models_private_check")


def test_drift_alert_needs_reasons_and_batch_results_are_idempotent(pg, schema):
    rejects(pg, schema, "INSERT INTO drift_reports (baseline_rows, current_rows, alert)"
                        " VALUES (10, 5, true)", "drift_reports_reasons_check")
    pg.psql("INSERT INTO drift_reports (baseline_rows, current_rows, alert, reasons, ks_method)"
            " VALUES (10, 5, true, '{psi>0.25}', 'asymp')", db=schema)
    pg.psql("""
        INSERT INTO users (email, password_hash) VALUES ('j@example.com', 'h');
        INSERT INTO batch_jobs (user_id, model_name, input, items_total)
            SELECT id, 'als', '{"items": [1, 2]}', 2 FROM users;
    """, db=schema)
    put = ("INSERT INTO batch_job_results (job_id, item_index, ok, result)"
           " SELECT id, 0, true, '{\"rating\": 4.1}' FROM batch_jobs"
           " ON CONFLICT (job_id, item_index) DO NOTHING")
    pg.psql(put, db=schema)
    pg.psql(put, db=schema)                      # the redelivered entry
    assert pg.psql("SELECT count(*) FROM batch_job_results", db=schema) == "1"


def test_title_search_uses_the_trigram_index(pg, schema):
    pg.psql("INSERT INTO movies (movie_id, title, year) SELECT g, 'Movie ' || g, 2000"
            " FROM generate_series(2, 3000) g; ANALYZE movies;", db=schema)
    # on a table this small a seq scan is cheaper; forbid it to prove the index applies
    plan = pg.psql("SET enable_seqscan = off;"
                   " EXPLAIN SELECT movie_id FROM movies WHERE lower(title) LIKE '%toy st%'",
                   db=schema)
    assert "movies_title_trgm_idx" in plan, plan
    assert pg.psql("SELECT movie_id FROM movies WHERE lower(title) LIKE '%toy st%'",
                   db=schema) == "1"


def test_user_email_is_unique_case_insensitively_and_gets_a_rating_user_id(pg, schema):
    out = pg.psql("INSERT INTO users (email, password_hash) VALUES ('Ann@Example.com', 'h')"
                  " RETURNING rating_user_id, role", db=schema)
    rid, role = out.split("|")
    assert int(rid) >= 10_000_000 and role == "user"
    rejects(pg, schema, "INSERT INTO users (email, password_hash)"
                        " VALUES ('ann@example.COM', 'h')", "users_email_lower_key")
    rejects(pg, schema, "INSERT INTO users (email, password_hash, role)"
                        " VALUES ('b@example.com', 'h', 'root')", "users_role_check")
    rejects(pg, schema, "INSERT INTO users (email, password_hash)"
                        " VALUES ('not-an-email', 'h')", "users_email_check")


def test_deleting_a_user_removes_their_credentials_and_conversations(pg, schema):
    pg.psql("""
        INSERT INTO users (email, password_hash) VALUES ('c@example.com', 'h');
        INSERT INTO api_keys (user_id, prefix, key_sha256, scopes)
            SELECT id, 'abcdef12', repeat('b', 64), '{recs:read}' FROM users;
        INSERT INTO refresh_tokens (user_id, token_sha256, expires_at)
            SELECT id, repeat('c', 64), now() + interval '1 day' FROM users;
        INSERT INTO conversations (user_id, title) SELECT id, 'hi' FROM users;
        INSERT INTO messages (conversation_id, role, content) SELECT id, 'user', 'hello'
            FROM conversations;
        INSERT INTO message_feedback (message_id, user_id, rating)
            SELECT m.id, u.id, 1 FROM messages m, users u;
    """, db=schema)
    pg.psql("DELETE FROM users", db=schema)
    for t in ("api_keys", "refresh_tokens", "conversations", "messages", "message_feedback"):
        assert pg.psql(f"SELECT count(*) FROM {t}", db=schema) == "0", t


def test_message_status_and_feedback_score_are_constrained(pg, schema):
    pg.psql("INSERT INTO users (email, password_hash) VALUES ('d@example.com', 'h');"
            "INSERT INTO conversations (user_id) SELECT id FROM users;", db=schema)
    rejects(pg, schema, "INSERT INTO messages (conversation_id, role, content, status)"
                        " SELECT id, 'assistant', 'x', 'done' FROM conversations",
            "messages_status_check")
    rejects(pg, schema, "INSERT INTO messages (conversation_id, role, content, status)"
                        " SELECT id, 'assistant', 'x', 'error' FROM conversations",
            "messages_error_check")
    pg.psql("INSERT INTO messages (conversation_id, role, content, status)"
            " SELECT id, 'assistant', 'partial answ', 'partial' FROM conversations", db=schema)
    rejects(pg, schema, "INSERT INTO message_feedback (message_id, user_id, rating)"
                        " SELECT m.id, u.id, 5 FROM messages m, users u",
            "message_feedback_rating_check")


def test_reingesting_the_same_file_is_refused_unless_the_first_attempt_failed(pg, schema):
    ins = ("INSERT INTO ingestion_batches (file_name, file_sha256, file_bytes, status,"
           " error, finished_at) VALUES ('w1.csv', repeat('d', 64), 10, '{s}', {e}, {f})")
    pg.psql(ins.format(s="failed", e="'disk full'", f="now()"), db=schema)
    pg.psql(ins.format(s="complete", e="NULL", f="now()"), db=schema)   # retry after failure
    rejects(pg, schema, ins.format(s="running", e="NULL", f="NULL"),
            "ingestion_batches_file_sha256_key")
    pg.psql("INSERT INTO ingestion_rejects (batch_id, line_no, raw_line, reason)"
            " SELECT id, 7, '1,2,x,3', 'rating is not a number' FROM ingestion_batches"
            " WHERE status = 'complete'", db=schema)
    rejects(pg, schema, "INSERT INTO ingestion_rejects (batch_id, line_no, raw_line, reason)"
                        " SELECT id, 0, '', 'x' FROM ingestion_batches WHERE status = 'complete'",
            "ingestion_rejects_line_no_check")


def test_request_logs_route_rows_to_monthly_partitions(pg, schema):
    ins = ("INSERT INTO request_logs (ts, request_id, method, route, path, status, duration_ms)"
           " VALUES ('{ts}', 'r', 'GET', '/health', '/health', {status}, 0.1)")
    pg.psql(ins.format(ts="2020-01-01T00:00:00Z", status=200), db=schema)
    pg.psql("INSERT INTO request_logs (request_id, method, route, path, status, duration_ms)"
            " VALUES ('r2', 'GET', '/health', '/health', 200, 0.1)", db=schema)
    rows = pg.psql("SELECT request_id, tableoid::regclass FROM request_logs ORDER BY 1",
                   db=schema).splitlines()
    assert rows[0] == "r|request_logs_default"          # no partition for 2020
    assert rows[1].startswith("r2|request_logs_y")       # this month exists
    # creating the month moves its rows out of the default partition
    assert pg.psql("SELECT request_logs_ensure_partition('2020-01-10')", db=schema) \
        == "request_logs_y2020m01"
    assert pg.psql("SELECT tableoid::regclass FROM request_logs WHERE request_id = 'r'",
                   db=schema) == "request_logs_y2020m01"
    assert pg.psql("SELECT request_logs_ensure_partition('2020-01-31')", db=schema) \
        == "request_logs_y2020m01"                       # idempotent
    rejects(pg, schema, ins.format(ts="2020-01-02T00:00:00Z", status=700),
            "request_logs_status_check")

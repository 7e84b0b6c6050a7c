"""The MLOps loop against a real, throwaway PostgreSQL: `cinematch ingest`,
`model register|list|promote|rollback`, `drift`, `train recsys --from-db`,
and the whole loop with `cinematch infer` reloading on NOTIFY.

Each test gets its own database (migrated) and its own model store.
Run: /usr/bin/python3 -m pytest -q tests/integration/test_mlops.py
"""

import json
import os
import signal
import struct
import subprocess
import sys
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from pgfixture import PgServer, have_postgres  # noqa: E402
from fixturedir import fixture_dir  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SQL_DIR = os.path.join(ROOT, "sql")
BIN = os.environ.get("CINEMATCH_BIN", os.path.join(ROOT, "build", "cinematch"))
FIX = os.path.join(ROOT, "tests", "fixtures")

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


_n = [0]


class Env:
    """One database + one model store; run() calls the binary."""

    def __init__(self, pg, tmp_path):
        _n[0] += 1
        self.pg = pg
        self.db = pg.create_database(f"ml{_n[0]}")
        self.dsn = pg.dsn(self.db)
        self.store = str(tmp_path / "models")
        self.tmp = tmp_path
        r = self.run("migrate", "--dir", SQL_DIR)
        assert r.returncode == 0, r.stderr

    def env(self):
        e = dict(os.environ, CINEMATCH_PG_DSN=self.dsn,
                 CINEMATCH_MODEL_STORE=self.store)
        return e

    def run(self, *args, check=False, timeout=300):
        r = subprocess.run([BIN, *args], capture_output=True, text=True,
                           env=self.env(), timeout=timeout, cwd=str(self.tmp))
        if check:
            assert r.returncode == 0, f"{args}: {r.stdout}\n{r.stderr}"
        return r

    def sql(self, q):
        return self.pg.psql(q, db=self.db)


@pytest.fixture
def env(pg, tmp_path):
    return Env(pg, tmp_path)


def small_artifact(env, name="m.cmrs", factors=4):
    out = str(env.tmp / name)
    env.run("train", "recsys", "--data", fixture_dir(os.path.join(FIX, "movielens", "latest")),
            "--out", out, "--factors", str(factors), "--iters", "2", check=True)
    return out


# --- ingest -------------------------------------------------------------------


def test_ingest_keeps_good_rows_and_records_each_reject(env):
    r = env.run("ingest", "--movies", os.path.join(FIX, "ingest", "movies.csv"),
                "--data", os.path.join(FIX, "ingest", "ratings_bad.csv"), check=True)
    assert "4 accepted" in r.stdout
    assert env.sql("SELECT count(*) FROM movies") == "7"
    assert env.sql("SELECT title || '|' || coalesce(year::text, '-') FROM movies"
                   " WHERE movie_id = 3") == "American President, The|1995"
    assert env.sql("SELECT genres FROM movies WHERE movie_id = 7") == "{}"
    assert env.sql("SELECT status, rows_total, rows_accepted, rows_rejected,"
                   " rows_duplicate, source FROM ingestion_batches WHERE kind ="
                   " 'ratings'") == "complete|11|4|6|1|cli"
    assert env.sql("SELECT status, rows_accepted FROM ingestion_batches WHERE"
                   " kind = 'movies'") == "complete|7"
    rej = env.sql("SELECT line_no, raw_line, reason FROM ingestion_rejects"
                  " ORDER BY line_no").splitlines()
    assert [int(x.split("|")[0]) for x in rej] == [3, 4, 5, 6, 9, 10, 11]
    assert rej[4] == "9|2,99,3.0,964982705|unknown movie id 99"
    assert "duplicate" in rej[5] and "of line 8" in rej[5]
    assert env.sql("SELECT string_agg(user_id || ':' || movie_id || ':' || rating,"
                   " ' ' ORDER BY id) FROM ratings_buffer") == \
        "1:1:4.0 2:1:3.5 3:5:2.5 3:6:1.0"


def test_ingest_same_file_twice_is_a_noop(env):
    args = ("ingest", "--movies", os.path.join(FIX, "ingest", "movies.csv"),
            "--data", os.path.join(FIX, "ingest", "ratings_bad.csv"))
    env.run(*args, check=True)
    r = env.run(*args, check=True)
    assert "movies already ingested" in r.stdout
    assert "already ingested as batch 2" in r.stdout
    assert env.sql("SELECT count(*) FROM ingestion_batches") == "2"
    assert env.sql("SELECT count(*) FROM ratings_buffer") == "4"
    assert env.sql("SELECT count(*) FROM ingestion_rejects") == "7"


def test_ingest_failure_leaves_no_partial_batch_and_allows_retry(env):
    env.run("ingest", "--movies", os.path.join(FIX, "ingest", "movies.csv"), check=True)
    # a trigger that fails on the last accepted row: the COPY has already
    # sent the others when it fires
    env.sql("""CREATE FUNCTION t_fail() RETURNS trigger LANGUAGE plpgsql AS $$
               BEGIN IF NEW.movie_id = 6 THEN RAISE EXCEPTION 'injected';
               END IF; RETURN NEW; END $$;
               CREATE TRIGGER t_fail BEFORE INSERT ON ratings_buffer
               FOR EACH ROW EXECUTE FUNCTION t_fail();""")
    data = os.path.join(FIX, "ingest", "ratings_bad.csv")
    r = env.run("ingest", "--data", data)
    assert r.returncode == 1
    assert "injected" in r.stderr
    assert env.sql("SELECT count(*) FROM ratings_buffer") == "0"
    assert env.sql("SELECT count(*) FROM ingestion_rejects") == "0"
    assert env.sql("SELECT status || ':' || (error LIKE '%injected%')::text FROM"
                   " ingestion_batches WHERE kind = 'ratings'") == "failed:true"
    env.sql("DROP TRIGGER t_fail ON ratings_buffer")
    r = env.run("ingest", "--data", data, check=True)
    assert env.sql("SELECT count(*) FROM ratings_buffer") == "4"
    assert env.sql("SELECT string_agg(status, ',' ORDER BY id) FROM"
                   " ingestion_batches WHERE kind = 'ratings'") == "failed,complete"


def test_initial_load_holds_out_latest_ratings_per_user(env):
    env.sql("INSERT INTO movies (movie_id, title) SELECT g, 'm' || g FROM"
            " generate_series(1, 10) g")
    env.run("ingest", "--target", "ratings", "--split", "temporal-user:0.2",
            "--data", os.path.join(FIX, "ingest", "ratings_split.csv"), check=True)
    assert env.sql("SELECT count(*) FROM ratings") == "18"
    assert env.sql("SELECT source FROM ingestion_batches") == "initial"
    assert env.sql("SELECT string_agg(user_id || ':' || movie_id, ' ' ORDER BY"
                   " user_id, movie_id) FROM ratings WHERE data_split = 'test'") \
        == "1:9 1:10 3:5"


def test_ingest_binary_copy_keeps_exact_ratings_and_timestamps(env):
    env.run("ingest", "--movies", os.path.join(FIX, "ingest", "movies.csv"),
            "--data", os.path.join(FIX, "ingest", "ratings_bad.csv"), check=True)
    assert env.sql("SELECT string_agg(rating::text || '@' || extract(epoch FROM ts)"
                   "::bigint, ' ' ORDER BY id) FROM ratings_buffer") == \
        "4.0@964982703 3.5@964982704 2.5@964982711 1.0@964982712"
    env.sql("INSERT INTO movies (movie_id, title) SELECT g, 'm' || g FROM"
            " generate_series(1, 10) g ON CONFLICT DO NOTHING")
    env.run("ingest", "--target", "ratings", "--data",
            os.path.join(FIX, "ingest", "ratings_split.csv"), check=True)
    # the load into the empty table dropped and rebuilt its secondary
    # indexes: all of them are back
    assert env.sql("SELECT string_agg(indexname, ',' ORDER BY indexname) FROM"
                   " pg_indexes WHERE tablename = 'ratings'") == \
        "ratings_movie_idx,ratings_pkey,ratings_split_idx"
    # 1970: before PostgreSQL's epoch, negative microseconds on the wire
    assert env.sql("SELECT string_agg(rating::text || '@' || extract(epoch FROM ts)"
                   "::bigint, ' ' ORDER BY movie_id) FROM ratings WHERE user_id = 1"
                   " AND movie_id <= 3") == "4.0@1000 4.5@1001 3.0@1002"


def test_initial_load_into_empty_ratings_copies_straight_in_and_restores_the_key(env):
    # the empty table is truncated and loaded by COPY FREEZE straight into
    # ratings: rows carry the batch and source, and the primary key comes
    # back as a constraint (a duplicate is refused)
    env.sql("INSERT INTO movies (movie_id, title) SELECT g, 'm' || g FROM"
            " generate_series(1, 3) g")
    f = env.tmp / "init.csv"
    f.write_text("userId,movieId,rating,timestamp\n1,1,4.0,1000\n1,2,3.0,1001\n"
                 "2,1,5.0,1002\n")
    env.run("ingest", "--target", "ratings", "--data", str(f), check=True)
    assert env.sql("SELECT string_agg(user_id || ':' || movie_id || ':' ||"
                   " rating || ':' || r.source || ':' || (r.batch_id = b.id)::text,"
                   " ' ' ORDER BY user_id, movie_id) FROM ratings r,"
                   " ingestion_batches b WHERE b.file_name LIKE '%init.csv'") == \
        "1:1:4.0:dataset:true 1:2:3.0:dataset:true 2:1:5.0:dataset:true"
    assert env.sql("SELECT contype FROM pg_constraint WHERE conname ="
                   " 'ratings_pkey'") == "p"
    r = env.pg.psql("INSERT INTO ratings (user_id, movie_id, rating, ts)"
                    " VALUES (1, 1, 1.0, now())", db=env.db, check=False)
    assert r.returncode != 0 and "ratings_pkey" in r.stderr


def test_loading_ratings_again_keeps_the_newer_rating(env):
    # the initial load upserts with an UPDATE join and an anti-join INSERT
    # (no ON CONFLICT): the rule stays "a newer rating replaces the older"
    env.sql("INSERT INTO movies (movie_id, title) SELECT g, 'm' || g FROM"
            " generate_series(1, 3) g")
    first = env.tmp / "r1.csv"
    first.write_text("userId,movieId,rating,timestamp\n1,1,4.0,1000\n1,2,3.0,1000\n")
    second = env.tmp / "r2.csv"
    second.write_text("userId,movieId,rating,timestamp\n1,1,2.0,2000\n"
                      "1,2,5.0,500\n1,3,1.5,1500\n")
    env.run("ingest", "--target", "ratings", "--data", str(first), check=True)
    env.run("ingest", "--target", "ratings", "--data", str(second), check=True)
    assert env.sql("SELECT string_agg(movie_id || ':' || rating || ':' ||"
                   " extract(epoch FROM ts)::bigint || ':' || (b.file_name LIKE"
                   " '%r2.csv')::text, ' ' ORDER BY movie_id) FROM ratings r JOIN"
                   " ingestion_batches b ON b.id = r.batch_id") == \
        "1:2.0:2000:true 2:3.0:1000:false 3:1.5:1500:true"


def test_eval_replay_scores_logged_recommendations_by_version(env):
    env.sql("INSERT INTO movies (movie_id, title) SELECT g, 'm' || g FROM"
            " generate_series(1, 5) g")
    log = ("INSERT INTO request_logs (ts, request_id, method, route, path,"
           " status, duration_ms, model_name, model_version, detail) VALUES"
           " (now() - interval '{age}', 'r', 'POST', 'recommend',"
           " '/api/v1/recommend', {status}, 1, 'recsys', {ver},"
           " '{{\"endpoint\": \"recommend\", \"rating_user_id\": {uid},"
           " \"ids\": {ids}}}')")
    for age, status, ver, uid, ids in (
            ("2 hours", 200, 1, 7, "[1, 2, 3]"),   # 7 rates 2 later: hit
            ("2 hours", 200, 1, 8, "[1, 2]"),      # 8 rates 4 later: no hit
            ("2 hours", 200, 2, 9, "[3, 4]"),      # 9 rated 3 before: not back
            ("2 hours", 200, 2, 10, "[5]"),        # 10 rates 5 later: hit
            ("2 hours", 503, 2, 10, "[1]"),        # not an answer
            ("3 days", 200, 1, 7, "[4]")):         # outside --since 1d
        env.sql(log.format(age=age, status=status, ver=ver, uid=uid, ids=ids))
    env.sql("""INSERT INTO ratings_buffer (user_id, movie_id, rating, ts, source)
               VALUES (7, 2, 4, now() - interval '1 hour', 'app'),
                      (8, 4, 3, now() - interval '1 hour', 'app');
               INSERT INTO ratings (user_id, movie_id, rating, ts) VALUES
               (9, 3, 5, now() - interval '3 hours'),
               (10, 5, 4, now() - interval '30 minutes'),
               (7, 4, 2, now() - interval '1 hour')""")
    r = env.run("eval", "replay", "--since", "1d", "--json", check=True)
    doc = json.loads(r.stdout)
    got = {v["model_version"]: v for v in doc["versions"]}
    assert got["1"] == {"model_version": "1", "answers": 2, "users": 2,
                        "returning": 2, "hits": 1, "hit_rate": 0.5,
                        "precision": 0.2}
    assert got["2"] == {"model_version": "2", "answers": 2, "users": 2,
                        "returning": 1, "hits": 1, "hit_rate": 1.0,
                        "precision": 1.0}
    r = env.run("eval", "replay", "--since", "2026-01-01 00:00+00", check=True)
    assert r.stdout.splitlines()[0].split()[:3] == ["version", "answers", "users"]
    assert env.run("eval", "replay").returncode == 2
    assert env.run("eval", "replay", "--since", "1d", "--bogus").returncode == 2


def rejects_fk(env, sql):
    with pytest.raises(Exception) as e:
        env.sql(sql)
    assert "foreign key" in getattr(e.value, "stderr", str(e.value))


# migration 011 replaced the per-row foreign keys of ratings and
# ratings_buffer with statement-level checks: the same guarantees, once
def test_rating_references_are_checked_once_per_statement(env):
    env.sql("INSERT INTO movies (movie_id, title) VALUES (1, 'a'), (2, 'b')")
    for table, extra in (("ratings", ""), ("ratings_buffer", ", 'app'")):
        cols = "user_id, movie_id, rating, ts" + (", source" if extra else "")
        rejects_fk(env, f"INSERT INTO {table} ({cols}) VALUES"
                        f" (1, 1, 4, now(){extra}), (1, 77, 4, now(){extra})")
        assert env.sql(f"SELECT count(*) FROM {table}") == "0"
        env.sql(f"INSERT INTO {table} ({cols}) VALUES (1, 1, 4, now(){extra}),"
                f" (2, 2, 3, now(){extra})")
        rejects_fk(env, f"UPDATE {table} SET movie_id = 88 WHERE user_id = 2")
    rejects_fk(env, "INSERT INTO ratings (user_id, movie_id, rating, ts, batch_id)"
                    " VALUES (5, 1, 4, now(), 4242)")
    rejects_fk(env, "INSERT INTO ratings_buffer (user_id, movie_id, rating, ts,"
                    " source, batch_id) VALUES (5, 1, 4, now(), 'dataset', 4242)")
    rejects_fk(env, "UPDATE movies SET movie_id = 9 WHERE movie_id = 1")


def test_reference_checks_need_no_rights_on_the_referenced_tables(env):
    # as with a foreign key, a role that may only insert ratings can insert
    # them: the check (and its FOR KEY SHARE lock) runs as the owner
    role = f"cm_only_insert_{env.db}"
    env.sql(f"""INSERT INTO movies (movie_id, title) VALUES (1, 'a');
                DROP ROLE IF EXISTS {role}; CREATE ROLE {role};
                GRANT INSERT ON ratings_buffer TO {role};
                SET ROLE {role};
                INSERT INTO ratings_buffer (user_id, movie_id, rating, ts, source)
                VALUES (1, 1, 4, now(), 'app');
                RESET ROLE;""")
    assert env.sql("SELECT count(*) FROM ratings_buffer") == "1"
    with pytest.raises(Exception) as e:
        env.sql(f"SET ROLE {role}; INSERT INTO ratings_buffer (user_id, movie_id,"
                " rating, ts, source) VALUES (1, 5, 4, now(), 'app')")
    assert "foreign key" in getattr(e.value, "stderr", str(e.value))
    env.sql(f"REVOKE ALL ON ratings_buffer FROM {role}; DROP ROLE {role}")


def test_deleting_a_movie_or_batch_acts_like_the_old_foreign_keys(env):
    env.sql("INSERT INTO movies (movie_id, title) VALUES (1, 'a'), (2, 'b')")
    bid = env.sql("INSERT INTO ingestion_batches (file_name, file_sha256,"
                  " file_bytes, format) VALUES ('f', repeat('b', 64), 1,"
                  " 'ml-csv') RETURNING id").splitlines()[0]
    env.sql(f"""INSERT INTO ratings (user_id, movie_id, rating, ts, batch_id)
                VALUES (1, 1, 4, now(), {bid}), (1, 2, 3, now(), {bid});
                INSERT INTO ratings_buffer (user_id, movie_id, rating, ts,
                source, batch_id) VALUES (1, 1, 4, now(), 'dataset', {bid}),
                (1, 2, 3, now(), 'dataset', {bid}), (2, 2, 5, now(), 'app', NULL)""")
    env.sql("DELETE FROM movies WHERE movie_id = 1")     # ON DELETE CASCADE
    assert env.sql("SELECT count(*) FROM ratings WHERE movie_id = 1") == "0"
    assert env.sql("SELECT count(*) FROM ratings_buffer WHERE movie_id = 1") == "0"
    env.sql(f"DELETE FROM ingestion_batches WHERE id = {bid}")
    # ratings: SET NULL; ratings_buffer: CASCADE
    assert env.sql("SELECT movie_id || ':' || coalesce(batch_id::text, 'null')"
                   " FROM ratings") == "2:null"
    assert env.sql("SELECT user_id || ':' || source FROM ratings_buffer") == "2:app"


def test_ingest_usage_errors_exit_2(env):
    assert env.run("ingest").returncode == 2
    assert env.run("ingest", "--data", "x", "--target", "nowhere").returncode == 2
    assert env.run("ingest", "--data", "x", "--split", "temporal-user:0.2").returncode == 2
    assert env.run("ingest", "--bogus").returncode == 2
    assert env.run("ingest", "--help").returncode == 0


# --- registry -----------------------------------------------------------------


def test_register_promote_rollback_keep_one_production(env):
    a1 = small_artifact(env, "a1.cmrs", 4)
    a2 = small_artifact(env, "a2.cmrs", 6)
    r = env.run("model", "register", "--name", "recsys", "--artifact", a1,
                "--metrics", '{"ndcg@10": 0.1, "rmse": 0.9}', check=True)
    assert "version 1" in r.stdout
    env.run("model", "register", "--name", "recsys", "--artifact", a2, check=True)
    meta = json.load(open(os.path.join(env.store, "recsys", "1", "meta.json")))
    assert meta["version"] == 1 and meta["metrics"]["rmse"] == 0.9
    path, sha = env.sql("SELECT artifact_path, artifact_sha256 FROM model_versions"
                        " WHERE version = 1").split("|")
    assert path.startswith(env.store) and os.path.exists(path)
    assert open(os.path.join(env.store, "recsys", "1", "SHA256SUMS")).read().startswith(sha)

    env.run("model", "promote", "--name", "recsys", "--version", "1", check=True)
    env.run("model", "promote", "--name", "recsys", "--version", "2", check=True)
    assert env.sql("SELECT string_agg(version || stage, ' ' ORDER BY version) FROM"
                   " model_versions") == "1archived 2production"
    r = env.run("model", "rollback", "--name", "recsys", check=True)
    assert "version 1" in r.stdout
    assert env.sql("SELECT version FROM model_versions WHERE stage = 'production'") == "1"
    assert env.sql("SELECT count(*) FROM model_stage_events WHERE to_stage ="
                   " 'production'") == "3"
    listing = env.run("model", "list", check=True).stdout
    assert "production" in listing and "0.1000" in listing
    js = json.loads(env.run("model", "list", "--json", check=True).stdout)
    assert [m["stage"] for m in js] == ["production", "archived"]


def test_register_refuses_corrupt_artifact_and_promote_refuses_changed_one(env):
    a1 = small_artifact(env)
    bad = str(env.tmp / "bad.cmrs")
    data = bytearray(open(a1, "rb").read())
    data[-1] ^= 0xFF
    open(bad, "wb").write(data)
    r = env.run("model", "register", "--name", "recsys", "--artifact", bad)
    assert r.returncode == 1
    assert env.sql("SELECT count(*) FROM model_versions") == "0"

    env.run("model", "register", "--name", "recsys", "--artifact", a1, check=True)
    path = env.sql("SELECT artifact_path FROM model_versions")
    with open(path, "r+b") as f:
        f.seek(0, 2)
        f.write(b"x")
    r = env.run("model", "promote", "--name", "recsys", "--version", "1")
    assert r.returncode == 1 and "sha256" in r.stderr
    assert env.sql("SELECT stage FROM model_versions") == "none"


def test_model_usage_errors_exit_2(env):
    assert env.run("model", "promote", "--name", "recsys").returncode == 2
    assert env.run("model", "promote", "--name", "recsys", "--version", "x").returncode == 2
    assert env.run("model", "list", "--artifact", "x").returncode == 2
    assert env.run("model", "register", "--name", "recsys").returncode == 2
    r = env.run("model", "promote", "--name", "recsys", "--version", "9")
    assert r.returncode == 1 and "not in the registry" in r.stderr


# --- drift statistics CLI -----------------------------------------------------


def test_drift_ks_cli_matches_scipy_reference(env):
    a = [0.61, 0.29, 0.06, 0.59, -1.73, -0.74, 0.51, -0.56, 0.39, 1.64, 0.05, -0.06,
         0.64, -0.82, 0.37, 1.77, 1.09, -1.28, 2.36, 1.31, 1.05, -0.32, -0.4, 1.06, -2.47]
    b = [2.2, 1.66, 1.38, 0.2, 0.36, 0.0, 0.96, 1.56, 0.44, 1.5, -0.3, 0.66, 2.31,
         3.29, -0.27, -0.37, 0.38, 0.7, 0.19, 0.51]
    fa, fb = env.tmp / "a.txt", env.tmp / "b.txt"
    fa.write_text("# sample a\n" + "\n".join(map(str, a)) + "\n")
    fb.write_text("\n".join(map(str, b)))
    # scipy 1.10.1: ks_2samp(a, b) and ks_2samp(a, b, 'greater', 'asymp')
    out = json.loads(env.run("drift", "ks", str(fa), str(fb), "--json", check=True).stdout)
    assert out["statistic"] == pytest.approx(0.28)
    assert out["pvalue"] == pytest.approx(0.2933789985549772, rel=1e-9)
    assert out["method"] == "exact"
    out = json.loads(env.run("drift", "ks", str(fa), str(fb), "--alternative", "greater",
                             "--method", "asymp", "--json", check=True).stdout)
    assert out["pvalue"] == pytest.approx(0.1337407770991231, rel=1e-9)
    out = json.loads(env.run("drift", "psi", str(fa), str(fa), "--json", check=True).stdout)
    assert out["psi"] == 0 and out["band"] == "stable"
    assert env.run("drift", "ks", str(fa)).returncode == 2
    assert env.run("drift", "ks", str(fa), str(fb), "--method", "fast").returncode == 2


# --- the loop -----------------------------------------------------------------


def shm_models(shm):
    """The model table of an inference daemon's segment header (ipc.h)."""
    with open("/dev/shm" + shm, "rb") as f:
        head = f.read(216 + 8 * 136)
    n = struct.unpack_from("<I", head, 72)[0]
    out = {}
    for i in range(min(n, 8)):
        rec = head[216 + i * 136: 216 + (i + 1) * 136]
        name = rec[:32].split(b"\0")[0].decode()
        out[name] = rec[32:64].split(b"\0")[0].decode()
    return out


def wait_until(pred, timeout=20, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def synth(tmp_path):
    d = tmp_path / "synth"
    r = subprocess.run([BIN, "synth", "--out", str(d), "--users", "610", "--items",
                        "3000", "--ratings", "100000", "--drift-batches", "3"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return d


def test_loop_ingest_drift_train_promote_and_infer_reloads(env, synth):
    env.run("ingest", "--data", str(synth), "--target", "ratings", "--split",
            "temporal-user:0.2", check=True)
    # a deliberately small first model, so the retrained one must beat it
    r = env.run("train", "recsys", "--from-db", "--promote-if-better", "--factors",
                "8", "--iters", "10", check=True)
    assert "promoted recsys version 1" in r.stdout
    assert env.sql("SELECT status, triggered_by FROM training_runs") == "succeeded|manual"

    shm = f"/cm-mlops-{os.getpid()}"
    sock = str(env.tmp / "infer.sock")
    log = open(env.tmp / "infer.log", "wb")
    infer = subprocess.Popen([BIN, "infer", "--dsn", env.dsn, "--socket", sock,
                              "--shm", shm, "--slots", "16"], stdout=log,
                             stderr=subprocess.STDOUT, env=env.env(), cwd=str(env.tmp))
    try:
        wait_until(lambda: os.path.exists("/dev/shm" + shm)
                   and shm_models(shm).get("recsys") == "1", what="infer serving v1")

        drifted = []
        for week in (1, 2, 3):
            f = synth / "batches" / f"week_{week:03d}.csv"
            env.run("ingest", "--data", str(f), check=True)
            out = json.loads(env.run("drift", "--json", check=True).stdout)
            drifted.append(out["drift"])
            r = env.run("train", "recsys", "--from-db", "--if-drift",
                        "--promote-if-better", "--factors", "32", "--iters", "10",
                        check=True)
            if not out["drift"]:
                assert "nothing to do" in r.stdout
        assert drifted == [False, False, True]
        assert "promoted recsys version 2" in r.stdout, r.stdout
        assert env.sql("SELECT string_agg(version || stage, ' ' ORDER BY version)"
                       " FROM model_versions") == "1archived 2production"
        assert env.sql("SELECT triggered_by || ':' || status || ':' ||"
                       " (drift_report_id IS NOT NULL)::text || ':' ||"
                       " gate_decision FROM training_runs WHERE id = 2") == \
            "drift:succeeded:true:promoted"
        assert env.sql("SELECT string_agg(alert::text || ':' || ks_method || ':' ||"
                       " (popularity_shift > 0 AND user_activity_shift > 0)::text"
                       " || ':' || array_to_string(reasons, '+'), ' ' ORDER BY id)"
                       " FROM drift_reports") == \
            "false:asymp:true: false:asymp:true: true:asymp:true:ks+mean_shift+new_items"
        assert env.sql("SELECT count(*) FROM ratings_buffer WHERE merged_at IS"
                       " NULL") == "0"
        # the daemon heard the NOTIFY and swapped without a restart
        wait_until(lambda: shm_models(shm).get("recsys") == "2", what="infer reload v2")
        assert infer.poll() is None
        # re-ingesting a batch changes nothing
        env.run("ingest", "--data", str(synth / "batches" / "week_003.csv"), check=True)
        assert env.sql("SELECT count(*) FROM ratings_buffer WHERE merged_at IS"
                       " NULL") == "0"
    finally:
        infer.send_signal(signal.SIGTERM)
        try:
            infer.wait(timeout=10)
        except subprocess.TimeoutExpired:
            infer.kill()
        log.close()


def test_killed_training_leaves_production_and_is_marked_failed(env, synth):
    env.run("ingest", "--data", str(synth), "--target", "ratings", "--split",
            "temporal-user:0.2", check=True)
    env.run("train", "recsys", "--from-db", "--promote-if-better", "--factors", "4",
            "--iters", "2", check=True)
    p = subprocess.Popen([BIN, "train", "recsys", "--from-db", "--promote-if-better",
                          "--factors", "128", "--iters", "1000"], env=env.env(),
                         cwd=str(env.tmp), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)
    wait_until(lambda: env.sql("SELECT count(*) FROM training_runs WHERE status ="
                               " 'running'") == "1", what="run row")
    time.sleep(0.5)
    p.kill()
    p.wait()
    assert env.sql("SELECT version FROM model_versions WHERE stage = 'production'") == "1"
    assert env.sql("SELECT count(*) FROM model_versions") == "1"
    # the next trainer finds the lock free and the dead run still 'running'
    env.run("train", "recsys", "--from-db", "--factors", "4", "--iters", "1", check=True)
    assert env.sql("SELECT status || ':' || (error LIKE 'interrupted%')::text FROM"
                   " training_runs WHERE id = 2") == "failed:true"
    assert env.sql("SELECT version FROM model_versions WHERE stage = 'production'") == "1"


def test_gate_keeps_production_when_candidate_is_worse(env, synth):
    env.run("ingest", "--data", str(synth), "--target", "ratings", "--split",
            "temporal-user:0.2", check=True)
    env.run("train", "recsys", "--from-db", "--promote-if-better", check=True)
    r = env.run("train", "recsys", "--from-db", "--promote-if-better", "--algo", "pop",
                check=True)
    assert "rmse worse" in r.stdout
    assert env.sql("SELECT string_agg(version || stage, ' ' ORDER BY version) FROM"
                   " model_versions") == "1production 2staging"
    assert env.sql("SELECT gate_decision FROM training_runs WHERE id = 2") == "rejected"
    gate = json.loads(env.sql("SELECT metrics->'gate' FROM training_runs WHERE id = 2"))
    assert gate["passed"] is False and gate["production"]["version"] == 1


def test_ingest_directory_of_batches_takes_each_file_once(env, tmp_path):
    env.run("ingest", "--movies", os.path.join(FIX, "ingest", "movies.csv"), check=True)
    inc = tmp_path / "incoming"
    inc.mkdir()
    (inc / "week_001.csv").write_text("userId,movieId,rating,timestamp\n1,1,4.0,1000\n")
    (inc / "week_002.csv").write_text("userId,movieId,rating,timestamp\n1,2,3.0,2000\n"
                                      "1,77,3.0,2000\n")
    (inc / "notes.txt").write_text("not a batch\n")
    r = env.run("ingest", "--data", str(inc), check=True)
    assert r.stdout.count("batch ") == 2
    (inc / "week_003.csv").write_text("userId,movieId,rating,timestamp\n2,3,5.0,3000\n")
    r = env.run("ingest", "--data", str(inc), check=True)
    assert r.stdout.count("already ingested") == 2
    assert env.sql("SELECT string_agg(file_name, ',' ORDER BY id) FROM"
                   " ingestion_batches").count("week_") == 3
    assert env.sql("SELECT count(*) FROM ratings_buffer") == "3"
    assert env.sql("SELECT reason FROM ingestion_rejects") == "unknown movie id 77"


def test_sigterm_during_training_marks_the_run_canceled_at_once(env, synth):
    env.run("ingest", "--data", str(synth), "--target", "ratings", "--split",
            "temporal-user:0.2", check=True)
    env.run("train", "recsys", "--from-db", "--promote-if-better", "--factors", "4",
            "--iters", "2", check=True)
    p = subprocess.Popen([BIN, "train", "recsys", "--from-db", "--promote-if-better",
                          "--factors", "128", "--iters", "1000"], env=env.env(),
                         cwd=str(env.tmp), stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, text=True)
    wait_until(lambda: env.sql("SELECT count(*) FROM training_runs WHERE status ="
                               " 'running'") == "1", what="run row")
    time.sleep(0.5)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert env.sql("SELECT status || ':' || error FROM training_runs WHERE id = 2") == \
        "canceled:canceled by signal 15 during training; production untouched"
    assert env.sql("SELECT string_agg(version || stage, ' ') FROM model_versions") == \
        "1production"


def test_ingest_dialogs_cornell_split_by_film_and_idempotent(env):
    corpus = fixture_dir(os.path.join(FIX, "dialog", "cornell"))
    r = env.run("ingest", "dialogs", "--data", corpus, "--val-frac", "0.3", check=True)
    assert "dialogues" in r.stdout
    n_convs = int(env.sql("SELECT count(*) FROM dialogs"))
    assert n_convs >= 3
    assert env.sql("SELECT kind || ':' || format || ':' || status || ':' ||"
                   " rows_accepted FROM ingestion_batches") == \
        f"dialogs:cornell:complete:{n_convs}"
    # every dialogue has its turns, in order from 0
    assert env.sql("SELECT count(*) FROM dialogs d WHERE NOT EXISTS (SELECT 1 FROM"
                   " dialog_turns t WHERE t.dialog_id = d.id AND t.turn = 0)") == "0"
    assert env.sql("SELECT count(*) FROM dialog_turns") == \
        env.sql("SELECT count(*) FROM dialog_turns t JOIN dialogs d ON d.id ="
                " t.dialog_id")
    # no film on both sides of the split
    assert env.sql("SELECT count(*) FROM (SELECT split_part(source_key, ':', 1) FROM"
                   " dialogs GROUP BY 1 HAVING count(DISTINCT data_split) > 1) x") == "0"
    assert env.sql("SELECT count(*) FROM dialogs WHERE data_split = 'validation'") != "0"
    r = env.run("ingest", "dialogs", "--data", corpus, check=True)
    assert "already ingested" in r.stdout
    assert int(env.sql("SELECT count(*) FROM dialogs")) == n_convs
    r = env.run("ingest", "dialogs", "--data", os.path.join(FIX, "dialog", "pairs.tsv"),
                check=True)
    assert env.sql("SELECT count(*) FROM ingestion_batches WHERE format ="
                   " 'dialog-pairs'") == "1"
    assert env.run("ingest", "dialogs").returncode == 2

"""The dialog model's turn of the MLOps loop: `cinematch ingest dialogs` of a
fixture corpus, `cinematch train dialog --from-db` (dialog-tiny, seconds)
registering into the model store, the promotion gate on validation bits per
byte measured on the same validation text for candidate and production,
`cinematch model list|promote|rollback` on dialog versions, a killed
training, and `cinematch infer` hot-reloading the promoted version behind
nginx (the model version that answers changes without a restart).

Run: /usr/bin/python3 -m pytest -q tests/integration/test_mlops_dialog.py
"""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
import types

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from pgfixture import PgServer, have_postgres  # noqa: E402
from fixturedir import fixture_dir  # noqa: E402

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SQL_DIR = os.path.join(ROOT, "sql")
BIN = os.environ.get("CINEMATCH_BIN", os.path.join(ROOT, "build", "cinematch"))
CORPUS = os.path.join(ROOT, "tests", "fixtures", "dialog", "cornell-small")

pytestmark = [
    pytest.mark.skipif(not have_postgres(),
                       reason="PostgreSQL 15 server binaries not installed (./build.sh deps)"),
    pytest.mark.skipif(not os.access(BIN, os.X_OK),
                       reason=f"{BIN} not built (./build.sh build)"),
]

# dialog-tiny for a handful of steps: seconds on one core
FAST = ["--config", "dialog-tiny", "--steps", "30", "--val-every", "15"]


@pytest.fixture(scope="module")
def pg():
    with PgServer() as server:
        yield server


_n = [0]


class Env:
    """One migrated database + one model store; run() calls the binary."""

    def __init__(self, pg, tmp_path):
        _n[0] += 1
        self.pg = pg
        self.db = pg.create_database(f"dlg{_n[0]}")
        self.dsn = pg.dsn(self.db)
        self.store = str(tmp_path / "models")
        self.tmp = tmp_path
        r = self.run("migrate", "--dir", SQL_DIR)
        assert r.returncode == 0, r.stderr

    def env(self):
        return dict(os.environ, CINEMATCH_PG_DSN=self.dsn,
                    CINEMATCH_MODEL_STORE=self.store)

    def run(self, *args, check=False, timeout=300):
        r = subprocess.run([BIN, *args], capture_output=True, text=True,
                           env=self.env(), timeout=timeout, cwd=str(self.tmp))
        if check:
            assert r.returncode == 0, f"{args}: {r.stdout}\n{r.stderr}"
        return r

    def popen(self, *args):
        return subprocess.Popen([BIN, *args], env=self.env(), cwd=str(self.tmp),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True)

    def sql(self, q):
        return self.pg.psql(q, db=self.db)

    def stages(self):
        return self.sql("SELECT string_agg(version || stage, ' ' ORDER BY version)"
                        " FROM model_versions WHERE model_name = 'dialog'")

    def ingest(self):
        self.run("ingest", "dialogs", "--data", fixture_dir(CORPUS), "--val-frac",
                 "0.25", check=True)


@pytest.fixture
def env(pg, tmp_path):
    return Env(pg, tmp_path)


def wait_until(pred, timeout=30, what="condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def sha256(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_first_dialog_model_is_registered_in_the_store_and_promoted(env):
    env.ingest()
    r = env.run("train", "dialog", "--from-db", *FAST, check=True)
    assert "promoted dialog version 1 to production" in r.stdout, r.stdout
    assert env.stages() == "1production"
    path, sha, run = env.sql("SELECT artifact_path || '|' || artifact_sha256 || '|' ||"
                             " training_run_id FROM model_versions").split("|")
    assert path == os.path.join(env.store, "dialog", "1")
    # the daemon's layout, and a checksum for every file
    for f in ("model.bin", "tokenizer/vocab.json", "tokenizer/merges.txt",
              "training.json", "meta.json", "SHA256SUMS"):
        assert os.path.isfile(os.path.join(path, f)), f
    assert sha == sha256(os.path.join(path, "model.bin"))
    sums = dict(reversed(line.split("  ")) for line in
                open(os.path.join(path, "SHA256SUMS")).read().splitlines())
    for name, digest in sums.items():
        assert sha256(os.path.join(path, name)) == digest, name
    meta = json.load(open(os.path.join(path, "meta.json")))
    assert meta["task"] == "dialog" and meta["training_run_id"] == int(run)
    # the run row: what it trained on, how it scored, why it was promoted
    row = json.loads(env.sql("SELECT row_to_json(t) FROM training_runs t"))
    assert row["status"] == "succeeded" and row["gate_decision"] == "promoted"
    assert row["gate_reason"].startswith("first dialog model")
    assert row["train_rows"] > 0 and row["test_rows"] > 0
    m = row["metrics"]
    assert 0 < m["val_bpb"] < 20 and m["val_loss"] > 0
    assert len(m["val_set_sha256"]) == 64 and m["val_dialogs"] == row["test_rows"]
    assert m["progress"]["step"] == 30 and m["progress"]["steps"] == 30
    assert m["training"]["steps"] == 30
    assert row["params"]["config"] == "dialog-tiny"
    assert row["params"]["max_batch_id"] == int(env.sql(
        "SELECT max(id) FROM ingestion_batches"))
    # the temporaries are gone
    assert os.listdir(os.path.join(env.store, ".tmp")) == []


def test_gate_compares_on_the_same_validation_text_and_keeps_production(env):
    env.ingest()
    env.run("train", "dialog", "--from-db", *FAST, check=True)
    # two steps of training cannot beat thirty on the same text
    r = env.run("train", "dialog", "--from-db", "--config", "dialog-tiny", "--steps",
                "2", "--seed", "5", check=True)
    assert "not better enough" in r.stdout, r.stdout
    assert env.stages() == "1production 2staging"
    m1, m2 = [json.loads(x) for x in env.sql(
        "SELECT metrics FROM training_runs ORDER BY id").splitlines()]
    assert m1["val_set_sha256"] == m2["val_set_sha256"]
    gate = m2["gate"]
    assert gate["passed"] is False and gate["production"]["version"] == 1
    # production was measured again now, on this run's validation text
    assert gate["production"]["measured"] == "now"
    assert abs(gate["production"]["val_bpb"] - m1["val_bpb"]) < 1e-6
    assert m2["val_bpb"] > gate["production"]["val_bpb"]
    assert env.sql("SELECT gate_decision FROM training_runs WHERE id = 2") == "rejected"
    # a gate that lets anything through promotes; the old one is archived
    r = env.run("train", "dialog", "--from-db", "--config", "dialog-tiny", "--steps",
                "2", "--gate-loss", "-1000", check=True)
    assert "promoted dialog version 3" in r.stdout
    assert env.stages() == "1archived 2staging 3production"
    # --no-promote registers in staging whatever the gate says
    r = env.run("train", "dialog", "--from-db", *FAST, "--no-promote", check=True)
    assert env.stages() == "1archived 2staging 3production 4staging"
    assert env.sql("SELECT gate_decision FROM training_runs WHERE id = 4") == "skipped"


def test_if_new_data_trains_only_after_a_new_dialogue_batch(env):
    r = env.run("train", "dialog", "--from-db", "--if-new-data", *FAST, check=True)
    assert "no dialogues ingested" in r.stdout
    assert env.sql("SELECT count(*) FROM training_runs") == "0"
    # without --if-new-data the empty database is a failed run with the reason
    r = env.run("train", "dialog", "--from-db", *FAST)
    assert r.returncode == 1
    assert env.sql("SELECT status || ':' || error FROM training_runs") == \
        "failed:no dialogues ingested (run cinematch ingest dialogs --data DIR first)"
    env.ingest()
    env.run("train", "dialog", "--from-db", "--if-new-data", *FAST, check=True)
    assert env.sql("SELECT triggered_by || ':' || status FROM training_runs"
                   " WHERE id = 2") == "schedule:succeeded"
    r = env.run("train", "dialog", "--from-db", "--if-new-data", *FAST, check=True)
    assert "nothing to do" in r.stdout
    assert env.sql("SELECT count(*) FROM training_runs") == "2"
    # a new batch (another corpus) is new data
    env.run("ingest", "dialogs", "--data", os.path.join(ROOT, "tests", "fixtures",
            "dialog", "plain.txt"), check=True)
    r = env.run("train", "dialog", "--from-db", "--if-new-data", *FAST, check=True)
    assert env.sql("SELECT count(*) FROM training_runs") == "3"


def test_model_list_promote_rollback_work_for_dialog(env):
    env.ingest()
    env.run("train", "dialog", "--from-db", *FAST, check=True)
    env.run("train", "dialog", "--from-db", *FAST, "--no-promote", check=True)
    listed = json.loads(env.run("model", "list", "--json", check=True).stdout)
    rows = listed if isinstance(listed, list) else listed.get("versions", listed)
    assert {(v["name"], v["version"], v["stage"]) for v in rows} >= \
        {("dialog", 1, "production"), ("dialog", 2, "staging")}
    # promote checks model.bin's sha256 in the version directory
    env.run("model", "promote", "--name", "dialog", "--version", "2", check=True)
    assert env.stages() == "1archived 2production"
    env.run("model", "rollback", "--name", "dialog", check=True)
    assert env.stages() == "1production 2archived"
    with open(os.path.join(env.store, "dialog", "2", "model.bin"), "r+b") as f:
        f.seek(2000)
        f.write(b"\x7f\x7f\x7f\x7f")
    r = env.run("model", "promote", "--name", "dialog", "--version", "2")
    assert r.returncode != 0 and "sha256" in r.stderr
    assert env.stages() == "1production 2archived"


def test_sigterm_during_training_marks_the_run_failed_production_untouched(env):
    env.ingest()
    env.run("train", "dialog", "--from-db", *FAST, check=True)
    p = env.popen("train", "dialog", "--from-db", "--config", "dialog-tiny",
                  "--steps", "1000000", "--val-every", "0")
    wait_until(lambda: env.sql("SELECT coalesce(metrics->'progress'->>'step', '0')"
                               " FROM training_runs WHERE id = 2") not in ("", "0"),
               what="training progress in the run row")
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 128 + signal.SIGTERM, err
    assert env.sql("SELECT status || ':' || error FROM training_runs WHERE id = 2") == \
        "failed:killed by signal 15 during training; production untouched"
    assert env.stages() == "1production"


def test_sigkill_during_training_is_marked_failed_by_the_next_trainer(env):
    env.ingest()
    env.run("train", "dialog", "--from-db", *FAST, check=True)
    p = env.popen("train", "dialog", "--from-db", "--config", "dialog-tiny",
                  "--steps", "1000000", "--val-every", "0")
    wait_until(lambda: env.sql("SELECT count(*) FROM training_runs WHERE status ="
                               " 'running'") == "1", what="run row")
    time.sleep(0.5)
    p.kill()
    p.wait()
    assert env.stages() == "1production"
    assert os.listdir(os.path.join(env.store, ".tmp")) == ["dialog-run2"]
    env.run("train", "dialog", "--from-db", "--if-new-data", *FAST, check=True)
    assert env.sql("SELECT status || ':' || (error LIKE 'interrupted%')::text FROM"
                   " training_runs WHERE id = 2") == "failed:true"
    assert env.stages() == "1production"
    # the dead run's work directory went with it
    assert os.listdir(os.path.join(env.store, ".tmp")) == []


def test_val_corpus_trains_on_all_of_the_corpus_and_validates_on_the_other(tmp_path):
    """The file trainer's --val-corpus, which --from-db trains through: every
    conversation of --corpus trains (the tokenizer too), PATH validates."""
    fix = os.path.join(ROOT, "tests", "fixtures", "dialog")
    args = [BIN, "train", "dialog", "--corpus", os.path.join(fix, "plain.txt"),
            "--steps", "3", "--batch", "2", "--seq", "8"]
    r = subprocess.run(args + ["--out", str(tmp_path / "a"), "--val-corpus",
                               os.path.join(fix, "pairs.tsv")],
                       capture_output=True, text=True, errors="replace", timeout=120)
    assert r.returncode == 0, r.stderr
    assert "on 7 training turns" in r.stderr
    assert "train 114 tokens (3 conversations), val 52 tokens (2 conversations)" in r.stderr
    # without it, a share of the same file validates
    r = subprocess.run(args + ["--out", str(tmp_path / "b"), "--val-frac", "0.34"],
                       capture_output=True, text=True, errors="replace", timeout=120)
    assert r.returncode == 0 and "(2 conversations), val" in r.stderr, r.stderr


def test_usage_errors_exit_2(env):
    assert env.run("train", "dialog", "--from-db", "--bogus").returncode == 2
    assert env.run("train", "dialog", "--from-db", "--config", "lstm-tiny").returncode == 2
    assert env.run("train", "dialog", "--from-db", "--gate-loss", "x").returncode == 2
    r = env.run("train", "dialog", "--from-db", "--help")
    assert r.returncode == 0 and "--if-new-data" in r.stdout


# --- the daemon behind nginx reloads the promoted version -------------------------


def test_infer_hot_reloads_the_promoted_dialog_version(env, workdir, backends):
    import harness
    from inferfixture import Infer
    from tokens import access_token, authenticate, new_secret

    env.ingest()
    env.run("train", "dialog", "--from-db", *FAST, check=True)
    infer = Infer(workdir, name="infer-mlops-dialog",
                  extra=["--dsn", env.dsn, "--max-seqs", "4"])
    infer.start()
    secret = workdir / "mlops-dialog-jwt.secret"
    token = access_token(new_secret(BIN, secret), role="user", sub="42")
    ngx = harness.Nginx(workdir, pg=backends.pg, redis=backends.redis,
                        http_extra=infer.directive
                        + f"\ncinematch_jwt_secret_file {secret};",
                        name="nginx-mlops-dialog", workers=2)
    authenticate(ngx, token)
    ngx.start()
    body = {"model": "dialog", "max_tokens": 8, "seed": 3,
            "messages": [{"role": "user", "content": "Where are you going tonight?"}]}

    def served():
        status, _, doc = ngx.json("GET", "/v1/models")
        return status == 200 and [(m["id"], m["version"]) for m in doc["data"]]

    try:
        wait_until(lambda: served() == [("dialog", "1")], what="dialog v1 served")
        status, _, doc = ngx.json("POST", "/v1/chat/completions", body)
        assert status == 200, doc
        # the next version is promoted by the registry: NOTIFY, no restart
        r = env.run("train", "dialog", "--from-db", *FAST, "--seed", "9",
                    "--gate-loss", "-1000", check=True)
        assert "promoted dialog version 2" in r.stdout
        wait_until(lambda: served() == [("dialog", "2")], what="dialog v2 served")
        status, _, doc = ngx.json("POST", "/v1/chat/completions", body)
        assert status == 200, doc
        assert infer.proc.poll() is None
        # a rollback is a promotion too
        env.run("model", "rollback", "--name", "dialog", check=True)
        wait_until(lambda: served() == [("dialog", "1")], what="dialog v1 again")
    finally:
        ngx.stop()
        infer.stop()


def test_chat_without_a_dialog_model_is_503_saying_how_to_add_one(env, workdir, backends):
    import harness
    from inferfixture import Infer
    from tokens import access_token, authenticate, new_secret

    infer = Infer(workdir, name="infer-no-dialog", extra=["--dsn", env.dsn])
    infer.start()
    secret = workdir / "no-dialog-jwt.secret"
    token = access_token(new_secret(BIN, secret), role="user", sub="43")
    # nginx on this test's database, so /ready sees its training runs
    ngx = harness.Nginx(workdir, pg=types.SimpleNamespace(conninfo=env.dsn),
                        redis=backends.redis,
                        http_extra=infer.directive
                        + f"\ncinematch_jwt_secret_file {secret};",
                        name="nginx-no-dialog", workers=2)
    authenticate(ngx, token)
    ngx.start()
    body = {"model": "dialog", "max_tokens": 8,
            "messages": [{"role": "user", "content": "Hello?"}]}
    try:
        # JSON and event-stream requests alike: a 503 before any event
        for stream in (False, True):
            status, hdrs, raw = ngx.request("POST", "/v1/chat/completions",
                                            dict(body, stream=stream))
            assert status == 503, raw
            assert hdrs["content-type"] == "application/json"
            err = json.loads(raw)["error"]
            assert err["code"] == "unavailable"
            assert "cinematch ingest dialogs" in err["message"]
            assert "CINEMATCH_DATA" in err["message"]
        # everything else answers: the daemon is up and ready
        status, _, doc = ngx.json("GET", "/ready")
        assert status == 200 and doc["checks"]["inference"]["models"] == []
        assert doc["training"] == []
        assert ngx.json("GET", "/v1/models")[2]["data"] == []
        # a training in progress shows in /ready with its progress
        env.ingest()
        p = env.popen("train", "dialog", "--from-db", "--config", "dialog-tiny",
                      "--steps", "1000000", "--val-every", "0")
        try:
            def progress():
                runs = ngx.json("GET", "/ready")[2].get("training") or [{}]
                return (runs[0].get("progress") or {}).get("step", 0) > 0 and runs[0]
            wait_until(progress, what="training progress in /ready")
            run = progress()
            assert run["model"] == "dialog" and run["status"] == "running"
            assert run["progress"]["steps"] == 1000000 and run["progress"]["loss"] > 0
        finally:
            p.send_signal(signal.SIGTERM)
            p.communicate(timeout=30)
        assert ngx.json("GET", "/ready")[2]["training"] == []
    finally:
        ngx.stop()
        infer.stop()

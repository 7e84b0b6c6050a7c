"""The dialog LM commands end to end on the committed fixtures (no servers):
train tokenizer, train dialog (with --stop-at/--resume giving the same bytes
as an uninterrupted run), lm init/logits/generate/eval, and flag errors.

Run: /usr/bin/python3 -m pytest -q tests/integration/test_dialog_cli.py
"""

import json
import os
import struct
import subprocess

import pytest

from fixturedir import fixture_dir

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
BIN = os.environ.get("CINEMATCH_BIN", os.path.join(ROOT, "build", "cinematch"))
FIX = os.path.join(ROOT, "tests", "fixtures", "dialog")

pytestmark = pytest.mark.skipif(not os.access(BIN, os.X_OK), reason=f"{BIN} not built")


def run(*args, ok=True):
    # bytes: an untrained model may emit bytes that are not UTF-8
    r = subprocess.run([BIN, *args], capture_output=True, timeout=120)
    r.stdout = r.stdout.decode("utf-8", "surrogateescape")
    r.stderr = r.stderr.decode("utf-8", "surrogateescape")
    if ok:
        assert r.returncode == 0, r.stderr
    return r


TRAIN = ["--corpus", os.path.join(FIX, "plain.txt"), "--steps", "10", "--batch", "2",
         "--seq", "8", "--val-frac", "0.34", "--log-every", "100"]


def test_train_tokenizer_writes_gpt2_files(tmp_path):
    out = tmp_path / "tok"
    run("train", "tokenizer", "--corpus", fixture_dir(os.path.join(FIX, "cornell")),
        "--vocab-size", "300", "--out", str(out))
    vocab = json.loads((out / "vocab.json").read_text())
    assert vocab["\u0120"] == 32 and "<|eot|>" in vocab and "<|endoftext|>" in vocab
    assert (out / "merges.txt").read_text().startswith("#version: 0.2\n")


def test_resume_from_stop_at_equals_an_uninterrupted_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run("train", "dialog", *TRAIN, "--out", str(a))
    run("train", "dialog", *TRAIN, "--out", str(b), "--stop-at", "5")
    assert json.loads((b / "metrics.json").read_text())["steps"] == 5
    run("train", "dialog", *TRAIN, "--out", str(b), "--resume")
    assert (a / "model.bin").read_bytes() == (b / "model.bin").read_bytes()
    assert (a / "state.bin").read_bytes() == (b / "state.bin").read_bytes()
    m = json.loads((a / "metrics.json").read_text())
    assert m["steps"] == 10 and m["val_loss"] > 0 and m["val_bpb"] > 0


def test_generate_logits_eval_on_a_trained_run(tmp_path):
    d = tmp_path / "run"
    run("train", "dialog", *TRAIN, "--out", str(d))
    ckpt, tok = str(d / "model.bin"), str(d / "tokenizer")
    r = run("lm", "generate", "--ckpt", ckpt, "--tokenizer", tok, "--prompt",
            "Who is directing?", "--max-tokens", "5", "--seed", "7")
    r2 = run("lm", "generate", "--checkpoint", ckpt, "--tokenizer", tok, "--prompt",
             "Who is directing?", "--max-tokens", "5", "--seed", "7")
    assert r.stdout == r2.stdout          # same seed, same reply
    out = tmp_path / "logits.bin"
    run("lm", "logits", "--ckpt", ckpt, "--tokens", "1,2,3", "--out", str(out))
    header = struct.unpack("<8i", (d / "model.bin").read_bytes()[:32])
    assert header[:2] == (20240326, 3)
    assert out.stat().st_size == 3 * header[3] * 4      # T x V float32
    r = run("lm", "eval", "--ckpt", ckpt, "--tokenizer", tok, "--corpus",
            os.path.join(FIX, "plain.txt"), "--val-frac", "0.34", "--batch", "1",
            "--seq", "8")
    assert "bits/byte" in r.stdout


def test_lm_init_and_bad_flags(tmp_path):
    run("lm", "init", "--config", "dialog-tiny", "--seed", "3", "--out",
        str(tmp_path / "init.bin"))
    assert (tmp_path / "init.bin").stat().st_size > 1024
    assert run("train", "dialog", "--bogus", ok=False).returncode == 2
    assert run("train", "dialog", "--corpus", "x", "--out", "y", "--steps", "abc",
               ok=False).returncode == 2
    assert run("lm", "init", "--config", "nope", "--out", "x", ok=False).returncode == 2
    assert run("lm", "logits", "--ckpt", "x", "--tokens", "1,a", "--out", "y",
               ok=False).returncode == 2
    r = run("lm", "generate", "--ckpt", str(tmp_path / "missing.bin"), "--tokenizer",
            str(tmp_path), "--prompt", "hi", ok=False)
    assert r.returncode == 1 and "missing.bin" in r.stderr

"""The LSTM baseline through the dialog commands on the committed fixtures
(no servers): train dialog --arch lstm / --config lstm-tiny, --stop-at and
--resume giving the same bytes as an uninterrupted run, lm logits and lm eval
on its checkpoint, and the flag errors.

Run: /usr/bin/python3 -m pytest -q tests/integration/test_dialog_lstm_cli.py
"""

import json
import os
import struct
import subprocess

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.abspath(os.path.join(HERE, "..", ".."))
BIN = os.environ.get("CINEMATCH_BIN", os.path.join(ROOT, "build", "cinematch"))
FIX = os.path.join(ROOT, "tests", "fixtures", "dialog")

pytestmark = pytest.mark.skipif(not os.access(BIN, os.X_OK), reason=f"{BIN} not built")


def run(*args, ok=True):
    r = subprocess.run([BIN, *args], capture_output=True, timeout=120)
    r.stdout = r.stdout.decode("utf-8", "surrogateescape")
    r.stderr = r.stderr.decode("utf-8", "surrogateescape")
    if ok:
        assert r.returncode == 0, r.stderr
    return r


TRAIN = ["--corpus", os.path.join(FIX, "plain.txt"), "--steps", "10", "--batch", "2",
         "--seq", "8", "--val-frac", "0.34", "--log-every", "100"]


def test_arch_lstm_picks_the_lstm_of_the_same_size_class(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run("train", "dialog", *TRAIN, "--arch", "lstm", "--out", str(a))
    run("train", "dialog", *TRAIN, "--config", "lstm-tiny", "--out", str(b))
    m = json.loads((a / "metrics.json").read_text())
    assert m["arch"] == "lstm" and m["config"] == "lstm-tiny"
    assert m["H"] == 64 and m["L"] == 2 and m["tied"] is True
    assert m["val_loss"] > 0 and m["val_bpb"] > 0 and m["bigram_val_bpb"] > 0
    assert (a / "model.bin").read_bytes() == (b / "model.bin").read_bytes()
    header = struct.unpack("<8i", (a / "model.bin").read_bytes()[:32])
    assert header == (20251125, 1, 64, m["V"], 64, 64, 2, 1)


def test_resume_from_stop_at_equals_an_uninterrupted_run(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    run("train", "dialog", *TRAIN, "--arch", "lstm", "--out", str(a))
    run("train", "dialog", *TRAIN, "--arch", "lstm", "--out", str(b), "--stop-at", "5")
    assert json.loads((b / "metrics.json").read_text())["steps"] == 5
    run("train", "dialog", *TRAIN, "--arch", "lstm", "--out", str(b), "--resume")
    assert (a / "model.bin").read_bytes() == (b / "model.bin").read_bytes()
    assert (a / "state.bin").read_bytes() == (b / "state.bin").read_bytes()
    # a GPT run directory does not resume as an LSTM
    g = tmp_path / "g"
    run("train", "dialog", *TRAIN, "--out", str(g))
    r = run("train", "dialog", *TRAIN, "--arch", "lstm", "--out", str(g), "--resume",
            ok=False)
    assert r.returncode == 1 and "GPT" in r.stderr


def test_logits_and_eval_read_the_lstm_checkpoint(tmp_path):
    d = tmp_path / "run"
    run("train", "dialog", *TRAIN, "--config", "lstm-tiny", "--out", str(d))
    ckpt, tok = str(d / "model.bin"), str(d / "tokenizer")
    out = tmp_path / "logits.bin"
    run("lm", "logits", "--ckpt", ckpt, "--tokens", "1,2,3", "--out", str(out))
    V = json.loads((d / "metrics.json").read_text())["V"]
    assert out.stat().st_size == 3 * V * 4
    r = run("lm", "eval", "--ckpt", ckpt, "--tokenizer", tok, "--corpus",
            os.path.join(FIX, "plain.txt"), "--val-frac", "0.34", "--batch", "1",
            "--seq", "8")
    assert "model: LSTM" in r.stdout and "bits/byte" in r.stdout
    assert "BLEU-4" in r.stdout
    # the same numbers as the trainer's last validation (same windows)
    val = json.loads((d / "metrics.json").read_text())["val_loss"]
    loss = float(r.stdout.split("loss ")[1].split()[0])
    assert abs(loss - val) < 1e-3
    r = run("lm", "generate", "--ckpt", ckpt, "--tokenizer", tok, "--prompt", "hi",
            ok=False)
    assert r.returncode == 1 and "LSTM" in r.stderr


def test_bad_arch_flags_exit_2(tmp_path):
    out = str(tmp_path / "x")
    r = run("train", "dialog", *TRAIN, "--arch", "rnn", "--out", out, ok=False)
    assert r.returncode == 2 and "--arch" in r.stderr
    r = run("train", "dialog", *TRAIN, "--arch", "gpt", "--config", "lstm-tiny",
            "--out", out, ok=False)
    assert r.returncode == 2
    r = run("train", "dialog", *TRAIN, "--arch", "lstm", "--config", "gpt2-124M",
            "--out", out, ok=False)
    assert r.returncode == 2
    assert run("train", "dialog", *TRAIN, "--config", "lstm-huge", "--out", out,
               ok=False).returncode == 2


def test_device_choice_is_explicit(tmp_path):
    out = str(tmp_path / "d")
    r = run("train", "dialog", *TRAIN, "--device", "gpu", "--out", out, ok=False)
    assert r.returncode == 2 and "--device" in r.stderr
    # cuda trains the GPT on the GPU, or exits 2 saying there is none; it
    # never falls back to the CPU silently
    r = run("train", "dialog", *TRAIN, "--device", "cuda", "--out", out, ok=False)
    if r.returncode == 2:
        assert "--device cuda: no usable GPU" in r.stderr
    else:
        assert r.returncode == 0, r.stderr
        with open(os.path.join(out, "metrics.json")) as f:
            assert json.load(f)["device"] == "cuda"
    # the LSTM has no CUDA backend: cuda refuses it, auto says CPU
    r = run("train", "dialog", *TRAIN, "--device", "cuda", "--arch", "lstm", "--out", out,
            ok=False)
    assert r.returncode == 2 and "--device cuda" in r.stderr
    r = run("train", "dialog", *TRAIN, "--device", "auto", "--arch", "lstm", "--out", out)
    assert "--device auto: CPU" in r.stderr
    r = run("lm", "eval", "--ckpt", out + "/model.bin", "--tokenizer", out + "/tokenizer",
            "--corpus", os.path.join(FIX, "plain.txt"), "--device", "cuda", ok=False)
    assert r.returncode in (0, 2)
    # the registry form checks the flag before touching the database
    r = run("train", "dialog", "--from-db", "--device", "gpu", ok=False)
    assert r.returncode == 2 and "--device" in r.stderr

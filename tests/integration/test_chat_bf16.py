"""Chat through nginx from a daemon started with --decode-weights bf16
--decode-kv bf16 (the opt-in bf16 decode weights and KV caches): it serves,
answers are reproducible by seed, and the flags' bad values are refused.  Skipped on CPUs without
AVX512_BF16 (the daemon refuses the flag there, also tested)."""

import json
import subprocess

import pytest

import harness
from inferfixture import BIN, Infer
from tokens import access_token, authenticate, new_secret


def cpu_has_bf16():
    try:
        with open("/proc/cpuinfo") as f:
            return " avx512_bf16" in f.read()
    except OSError:
        return False


needs_bf16 = pytest.mark.skipif(not cpu_has_bf16(),
                                reason="this CPU has no AVX512_BF16")


@pytest.fixture(scope="module")
def api(workdir, backends):
    if not cpu_has_bf16():
        pytest.skip("this CPU has no AVX512_BF16")
    model = workdir / "dialog-tiny-bf16"
    subprocess.run([str(BIN), "train", "dialog", "--corpus",
                    str(harness.ROOT / "tests/fixtures/dialog/plain.txt"),
                    "--out", str(model), "--steps", "20", "--config", "dialog-tiny"],
                   check=True, capture_output=True)
    infer = Infer(workdir, name="infer-bf16", extra=[
        "--dialog", str(model), "--dialog-version", "1", "--max-seqs", "4",
        "--decode-weights", "bf16", "--decode-kv", "bf16", "--decode-threads", "2"])
    infer.start()
    secret = workdir / "bf16-jwt.secret"
    token = access_token(new_secret(BIN, secret), role="user", sub="42")
    ngx = harness.Nginx(workdir, pg=backends.pg, redis=backends.redis,
                        http_extra=infer.directive
                        + f"\ncinematch_jwt_secret_file {secret};",
                        name="nginx-bf16", workers=1)
    authenticate(ngx, token)
    ngx.token = token
    ngx.start()
    harness.wait_for(lambda: ngx.json("GET", "/ready")[0] == 200, timeout=10,
                     what="ready with the dialog model")
    try:
        yield ngx, infer
    finally:
        ngx.stop()
        infer.stop()
    problems = ngx.log_problems()
    assert not problems, "nginx logged alerts:\n" + "\n".join(problems)


def body(**kw):
    b = {"model": "dialog", "messages": [{"role": "user", "content": "Where are you going?"}],
         "max_tokens": 16, "seed": 7}
    b.update(kw)
    return b


@needs_bf16
def test_bf16_daemon_answers_and_keeps_bf16(api):
    ngx, infer = api
    status, _, doc = ngx.json("POST", "/v1/chat/completions", body())
    assert status == 200, doc
    u = doc["usage"]
    assert u["prompt_tokens"] > 0 and 0 < u["completion_tokens"] <= 16
    # the engine took the bf16 weights (no fall back to fp32)
    assert "bf16 decode weights: not available" not in infer.log()
    assert "bf16 KV cache: not available" not in infer.log()


@needs_bf16
def test_bf16_same_seed_same_answer_streamed_or_not(api):
    ngx, _ = api
    a = ngx.json("POST", "/v1/chat/completions", body(seed=11, temperature=1.0))[2]
    b = ngx.json("POST", "/v1/chat/completions", body(seed=11, temperature=1.0))[2]
    assert a["choices"][0]["message"] == b["choices"][0]["message"]
    status, _, raw = ngx.request("POST", "/v1/chat/completions",
                                 body(seed=11, temperature=1.0, stream=True))
    assert status == 200
    text = "".join(json.loads(line[6:])["choices"][0]["delta"].get("content", "")
                   for line in raw.decode().split("\n")
                   if line.startswith("data: ") and line != "data: [DONE]"
                   and json.loads(line[6:])["choices"])
    assert text == a["choices"][0]["message"]["content"]


def test_decode_weights_flag_refuses_bad_values():
    r = subprocess.run([str(BIN), "infer", "--decode-weights", "fp16"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "fp32 or bf16" in r.stderr
    r = subprocess.run([str(BIN), "infer", "--decode-kv", "int8"],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "--decode-kv: fp32 or bf16" in r.stderr
    if not cpu_has_bf16():
        r = subprocess.run([str(BIN), "infer", "--decode-weights", "bf16"],
                           capture_output=True, text=True)
        assert r.returncode == 2 and "AVX512_BF16" in r.stderr

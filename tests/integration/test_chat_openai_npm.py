"""The official `openai` npm package, pointed at cinematch's /v1 base URL,
completes a non-streaming and a streaming chat (and sees a 422 as an API
error): any OpenAI client library works by changing its base URL.

The package is installed from the npm registry into a temporary directory
in the test setup; without npm (or without the registry) the test reports
itself skipped and says why."""

import json
import shutil
import subprocess

import pytest

import harness
from inferfixture import BIN, Infer
from tokens import access_token, new_secret

HERE = harness.ROOT / "tests" / "integration"


@pytest.fixture(scope="module")
def openai_dir(workdir):
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("npm/node not installed: cannot install the openai npm package")
    d = workdir / "openai-npm"
    d.mkdir(exist_ok=True)
    r = subprocess.run(["npm", "install", "--no-audit", "--no-fund", "--loglevel=error",
                        "--prefix", str(d), "openai@6"],
                       capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        pytest.skip("could not install the openai npm package from the registry: "
                    + (r.stderr.strip().splitlines() or ["?"])[-1])
    shutil.copy(HERE / "openai_client.mjs", d / "openai_client.mjs")
    return d


@pytest.fixture(scope="module")
def api(workdir, backends):
    model = workdir / "dialog-tiny-npm"
    subprocess.run([str(BIN), "train", "dialog", "--corpus",
                    str(harness.ROOT / "tests/fixtures/dialog/plain.txt"),
                    "--out", str(model), "--steps", "20", "--config", "dialog-tiny"],
                   check=True, capture_output=True)
    infer = Infer(workdir, name="infer-npm", extra=[
        "--dialog", str(model), "--dialog-version", "3", "--max-seqs", "4"])
    infer.start()
    secret = workdir / "npm-jwt.secret"
    token = access_token(new_secret(BIN, secret), role="user", sub="43")
    ngx = harness.Nginx(workdir, pg=backends.pg, redis=backends.redis,
                        http_extra=infer.directive
                        + f"\ncinematch_jwt_secret_file {secret};",
                        name="nginx-npm", workers=2)
    ngx.token = token
    ngx.start()
    harness.wait_for(lambda: ngx.json("GET", "/ready")[0] == 200, timeout=10,
                     what="ready with the dialog model")
    try:
        yield ngx
    finally:
        ngx.stop()
        infer.stop()
    problems = ngx.log_problems()
    assert not problems, "nginx logged alerts:\n" + "\n".join(problems)


def test_official_openai_client_streams_and_completes(api, openai_dir):
    r = subprocess.run(["node", "openai_client.mjs", f"http://127.0.0.1:{api.port}/v1",
                        api.token], cwd=openai_dir, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["models"] == ["dialog"]
    plain = out["plain"]
    assert plain["object"] == "chat.completion" and plain["id"].startswith("chatcmpl-")
    assert plain["finish"] in ("stop", "length")
    assert 0 < plain["usage"]["completion_tokens"] <= 16
    stream = out["stream"]
    assert stream["chunks"] >= 2 and stream["finish"] in ("stop", "length")
    assert stream["usage"]["completion_tokens"] == plain["usage"]["completion_tokens"]
    # same seed: the streamed text is the JSON answer's
    assert stream["text"] == plain["content"]
    assert out["error"] == {"status": 422, "name": "UnprocessableEntityError"}

"""OpenAI-compatible chat through nginx → shm → cinematch infer with a
tiny dialog model trained for the test: JSON and streamed answers, usage,
seeds, stop strings, cancellation, validation."""

import json
import socket
import subprocess
import time

import pytest

import harness
from inferfixture import BIN, Infer
from tokens import access_token, authenticate, new_secret


@pytest.fixture(scope="module")
def api(workdir, backends):
    model = workdir / "dialog-tiny"
    subprocess.run([str(BIN), "train", "dialog", "--corpus",
                    str(harness.ROOT / "tests/fixtures/dialog/plain.txt"),
                    "--out", str(model), "--steps", "20", "--config", "dialog-tiny"],
                   check=True, capture_output=True)
    infer = Infer(workdir, name="infer-chat", extra=[
        "--dialog", str(model), "--dialog-version", "3", "--max-seqs", "4"])
    infer.start()
    # chat costs compute: it needs a caller (a session or a "chat" key)
    secret = workdir / "chat-jwt.secret"
    token = access_token(new_secret(BIN, secret), role="user", sub="42")
    ngx = harness.Nginx(workdir, pg=backends.pg, redis=backends.redis,
                        http_extra=infer.directive
                        + f"\ncinematch_jwt_secret_file {secret};",
                        name="nginx-chat", workers=2)
    authenticate(ngx, token)
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


def body(**kw):
    b = {"model": "dialog", "messages": [{"role": "user", "content": "Where are you going?"}],
         "max_tokens": 16, "seed": 7}
    b.update(kw)
    return b


def sse_data(raw):
    return [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]


def test_chat_without_credentials_is_401(api):
    status, _, raw = api.unauthenticated("POST", "/v1/chat/completions",
                                         json.dumps(body()).encode(),
                                         {"Content-Type": "application/json"})
    assert status == 401 and json.loads(raw)["error"]["code"] == "unauthenticated"
    assert api.unauthenticated("GET", "/v1/models")[0] == 401


def test_models_lists_the_dialog_model(api):
    status, _, doc = api.json("GET", "/v1/models")
    assert status == 200 and doc["object"] == "list"
    assert [(m["id"], m["version"]) for m in doc["data"]] == [("dialog", "3")]


def test_non_streaming_completion(api):
    status, _, doc = api.json("POST", "/v1/chat/completions", body())
    assert status == 200, doc
    assert doc["object"] == "chat.completion" and doc["id"].startswith("chatcmpl-")
    choice = doc["choices"][0]
    assert choice["message"]["role"] == "assistant"
    assert isinstance(choice["message"]["content"], str)
    assert choice["finish_reason"] in ("stop", "length")
    u = doc["usage"]
    assert u["prompt_tokens"] > 0 and 0 < u["completion_tokens"] <= 16
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"]


def test_same_seed_same_answer(api):
    a = api.json("POST", "/v1/chat/completions", body(seed=11, temperature=1.0))[2]
    b = api.json("POST", "/v1/chat/completions", body(seed=11, temperature=1.0))[2]
    assert a["choices"][0]["message"] == b["choices"][0]["message"]


def test_streaming_chunks_then_done_with_usage(api):
    status, hdrs, raw = api.request("POST", "/v1/chat/completions",
                                    body(stream=True, stream_options={"include_usage": True}))
    assert status == 200 and hdrs["content-type"] == "text/event-stream"
    data = sse_data(raw)
    assert data[-1] == "[DONE]"
    chunks = [json.loads(d) for d in data[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] > 0
    assert chunks[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-1])
    # the streamed text is the same reply the JSON endpoint gives
    doc = api.json("POST", "/v1/chat/completions", body())[2]
    assert text == doc["choices"][0]["message"]["content"]


def test_stop_strings_are_never_emitted(api):
    for stop in ("e", ["a", "o"]):
        doc = api.json("POST", "/v1/chat/completions",
                       body(stop=stop, temperature=0, max_tokens=40))[2]
        content = doc["choices"][0]["message"]["content"]
        for s in ([stop] if isinstance(stop, str) else stop):
            assert s not in content


def test_client_disconnect_cancels_generation(api):
    s = socket.create_connection(("127.0.0.1", api.port), timeout=10)
    payload = json.dumps(body(stream=True, max_tokens=1024)).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
              b"Authorization: Bearer %s\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
              % (api.token.encode(), len(payload), payload))
    s.recv(1024)
    s.close()
    harness.wait_for(
        lambda: api.json("GET", "/ready")[2]["checks"]["inference"]["daemons"][0]["queue_depth"] == 0,
        timeout=5, what="generation cancelled")


@pytest.mark.parametrize("patch,field", [
    ({"temperature": 3}, "temperature"), ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"), ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 5000}, "max_tokens"), ({"n": 2}, "n"),
    ({"messages": []}, "messages"), ({"messages": [{"role": "robot", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user", "content": 5}]}, "messages"),
    ({"messages": [{"role": "user", "content": "x", "extra": 1}]}, "messages"),
    ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"stop": ""}, "stop"),
    ({"stop": "x" * 65}, "stop"), ({"seed": -1}, "seed"), ({"stream": "yes"}, "stream"),
    ({"bogus": True}, "bogus"), ({"model": 5}, "model"),
])
def test_bad_requests_are_422(api, patch, field):
    status, _, doc = api.json("POST", "/v1/chat/completions", body(**patch))
    assert status == 422, doc
    assert field in doc["error"]["fields"]


def test_non_utf8_and_100k_bodies_are_refused(api):
    raw = (b'{"model": "dialog", "messages": [{"role": "user", '
           b'"content": "caf\xe9"}]}')
    status, _, data = api.request("POST", "/v1/chat/completions", body=raw,
                                  headers={"Content-Type": "application/json"})
    assert status == 400, data
    big = json.dumps(body(messages=[{"role": "user", "content": "x" * 100_000}]))
    status, _, data = api.request("POST", "/v1/chat/completions", body=big.encode(),
                                  headers={"Content-Type": "application/json"})
    assert status in (413, 422), data


def test_unknown_model_is_404(api):
    status, _, doc = api.json("POST", "/v1/chat/completions", body(model="gpt-4"))
    assert status == 404 and doc["error"]["code"] == "model_not_found"


def test_long_history_still_answers(api):
    msgs = [{"role": "user" if i % 2 == 0 else "assistant", "content": "word " * 300}
            for i in range(63)]
    status, _, doc = api.json("POST", "/v1/chat/completions", body(messages=msgs))
    assert status == 200 and doc["usage"]["prompt_tokens"] > 0

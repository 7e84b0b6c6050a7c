"""Observability of chat serving: the daemon's statistics (running and
waiting generations, KV cache use, tokens, cancellations, inter-token
latency) carried through the shm header into /metrics, and the module's
own time-to-first-token histogram; all of it valid for promtool."""

import json
import re
import shutil
import socket
import subprocess
import time

import pytest

import harness
from inferfixture import BIN, Infer
from tokens import access_token, authenticate, new_secret


def production_log_format():
    """The request-id map and the JSON log_format of conf/nginx.conf, as
    they are there: the test checks the real configuration."""
    conf = (harness.ROOT / "conf" / "nginx.conf").read_text()
    start = conf.index("map $cinematch_request_id")
    end = conf.index("}';", conf.index("log_format  cinematch_json")) + 3
    return conf[start:end]


@pytest.fixture(scope="module")
def api(workdir, backends):
    # the drift gauges read drift_reports
    subprocess.run([str(BIN), "migrate", "--dsn", backends.pg.conninfo,
                    "--dir", str(harness.ROOT / "sql")],
                   check=True, capture_output=True)
    # untrained dialog-small weights: generations run to max_tokens (128,
    # half the context) and take long enough to watch them in /metrics
    model = workdir / "dialog-small-obs"
    model.mkdir()
    subprocess.run([str(BIN), "train", "tokenizer", "--corpus",
                    str(harness.ROOT / "tests/fixtures/dialog/plain.txt"),
                    "--out", str(model / "tokenizer"), "--vocab-size", "300"],
                   check=True, capture_output=True)
    subprocess.run([str(BIN), "lm", "init", "--config", "dialog-small", "--out",
                    str(model / "model.bin"), "--vocab-size", "300"],
                   check=True, capture_output=True)
    infer = Infer(workdir, name="infer-obs", extra=[
        "--dialog", str(model), "--dialog-version", "5", "--max-seqs", "2"])
    infer.start()
    secret = workdir / "obs-jwt.secret"
    token = access_token(new_secret(BIN, secret), role="user", sub="77")
    ngx = harness.Nginx(workdir, pg=backends.pg, redis=backends.redis,
                        http_extra=infer.directive
                        + f"\ncinematch_jwt_secret_file {secret};\n"
                        + production_log_format()
                        + f"\naccess_log {workdir}/obs-access.json cinematch_json;",
                        name="nginx-obs", workers=2)
    ngx.json_log = workdir / "obs-access.json"
    ngx.pg = backends.pg
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


def samples(text):
    """{(name, frozenset(labels)): value} from Prometheus text."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-z_]+)(?:\{(.*)\})? (\S+)$', line)
        assert m, f"unparsable metrics line: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def scrape(api):
    status, _, body = api.request("GET", "/metrics")
    assert status == 200
    return body.decode()


def one(s, name, **labels):
    """The value of the only series of `name` whose labels include these."""
    want = set(labels.items())
    found = [v for (n, ls), v in s.items() if n == name and want <= set(ls)]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def chat(**kw):
    b = {"model": "dialog", "messages": [{"role": "user", "content": "Where are you going?"}],
         "max_tokens": 12, "seed": 3, "temperature": 1.0}
    b.update(kw)
    return b


def test_chat_moves_token_ttft_and_inter_token_metrics(api):
    before = samples(scrape(api))
    status, _, doc = api.json("POST", "/v1/chat/completions", chat())
    assert status == 200, doc
    u1 = doc["usage"]
    status, _, raw = api.request("POST", "/v1/chat/completions",
                                 chat(stream=True, seed=4, stream_options={"include_usage": True}))
    assert status == 200
    last = json.loads([ln[6:] for ln in raw.decode(errors="replace").split("\n")
                       if ln.startswith("data: {")][-1])
    u2 = last["usage"]

    text = scrape(api)
    after = samples(text)

    def delta(name, **labels):
        return one(after, name, **labels) - (one(before, name, **labels)
                                             if any(n == name for n, _ in before) else 0)

    # tokens are counted where they are produced, exactly
    assert delta("cinematch_chat_tokens_total", type="prompt") == \
        u1["prompt_tokens"] + u2["prompt_tokens"]
    assert delta("cinematch_chat_tokens_total", type="completion") == \
        u1["completion_tokens"] + u2["completion_tokens"]

    # one TTFT observation per reply that produced text, seen by nginx
    replies = sum(1 for u in (u1, u2) if u["completion_tokens"] > 0)
    assert delta("cinematch_chat_time_to_first_token_seconds_count") == replies
    assert one(after, "cinematch_chat_time_to_first_token_seconds_bucket", le="+Inf") == \
        one(after, "cinematch_chat_time_to_first_token_seconds_count")

    # a generation of n tokens has n - 1 gaps between them
    gaps = sum(max(u["completion_tokens"] - 1, 0) for u in (u1, u2))
    assert delta("cinematch_chat_inter_token_latency_seconds_count") == gaps
    assert one(after, "cinematch_chat_inter_token_latency_seconds_bucket", le="+Inf") == \
        one(after, "cinematch_chat_inter_token_latency_seconds_count")
    assert one(after, "cinematch_chat_inter_token_latency_seconds_sum") > 0

    # gauges: the pool is as configured and, a moment after the last
    # reply (the daemon rings READY before it retires the sequence), idle
    assert one(after, "cinematch_infer_max_sequences") == 2

    def idle():
        s = samples(scrape(api))
        return (one(s, "cinematch_infer_running_sequences") == 0
                and one(s, "cinematch_infer_waiting_sequences") == 0
                and one(s, "cinematch_infer_kv_cache_usage_ratio") == 0)
    harness.wait_for(idle, timeout=5, what="no generation running")

    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (package prometheus)")
    check = subprocess.run(["promtool", "check", "metrics"], input=text,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def open_stream(api, max_tokens=1024):
    s = socket.create_connection(("127.0.0.1", api.port), timeout=10)
    payload = json.dumps(chat(stream=True, max_tokens=max_tokens)).encode()
    s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
              b"Authorization: Bearer %s\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
              % (api.token.encode(), len(payload), payload))
    assert s.recv(1024).startswith(b"HTTP/1.1 200")
    return s


def test_running_sequences_and_kv_use_show_live_generations_then_cancellations(api):
    before = samples(scrape(api))
    cancelled0 = one(before, "cinematch_chat_cancellations_total")
    # three long streams against a pool of two: two run, one waits; the
    # clients do not read, so the streams pause on full rings and stay live
    socks = [open_stream(api) for _ in range(3)]
    try:
        def live():
            s = samples(scrape(api))
            return (one(s, "cinematch_infer_running_sequences") == 2
                    and one(s, "cinematch_infer_waiting_sequences") == 1
                    and one(s, "cinematch_infer_kv_cache_usage_ratio") > 0)
        harness.wait_for(live, timeout=10, what="2 running, 1 waiting, KV in use")
    finally:
        for s in socks:
            s.close()

    def freed():
        s = samples(scrape(api))
        return (one(s, "cinematch_infer_running_sequences") == 0
                and one(s, "cinematch_infer_waiting_sequences") == 0
                and one(s, "cinematch_chat_cancellations_total") - cancelled0 == 3)
    harness.wait_for(freed, timeout=10, what="three cancellations, pool free")
    assert one(samples(scrape(api)), "cinematch_infer_kv_cache_usage_ratio") == 0


def log_lines(api):
    return [json.loads(line) for line in api.json_log.read_text().splitlines()]


def test_access_log_is_one_json_object_per_request_with_who_what_and_model(api):
    rid = "obs-log-chat-1"
    status, _, doc = api.json("POST", "/v1/chat/completions", chat(max_tokens=4),
                              headers={"X-Request-ID": rid})
    assert status == 200, doc
    status, _, _ = api.unauthenticated("GET", "/api/v1/no-such-thing", None,
                                       {"X-Request-ID": "obs-log-404-1"})
    assert status == 404

    def logged():
        return {e["request_id"] for e in log_lines(api)} >= {rid, "obs-log-404-1"}
    harness.wait_for(logged, timeout=5, what="both requests in the JSON log")

    lines = log_lines(api)        # every line parses: no half-escaped bytes
    mine = [e for e in lines if e["request_id"] == rid]
    assert len(mine) == 1, mine
    e = mine[0]
    assert e["route"] == "/v1/chat/completions" and e["method"] == "POST"
    assert e["status"] == 200 and isinstance(e["status"], int)
    assert e["user_id"] == "77"
    assert e["model_version"] == "5"
    assert isinstance(e["request_time"], float) and e["request_time"] >= 0
    assert e["uri"] == "/v1/chat/completions"

    anon = [e for e in lines if e["request_id"] == "obs-log-404-1"][0]
    assert anon["route"] == "unmatched" and anon["status"] == 404
    assert anon["user_id"] == "" and anon["model_version"] == ""


def test_access_log_escapes_hostile_client_text(api):
    agent = 'evil" \\ {"status":0} \x01 end'
    api.unauthenticated("GET", "/health", None,
                        {"User-Agent": agent, "X-Request-ID": "obs-log-evil-1"})
    harness.wait_for(lambda: any(e["request_id"] == "obs-log-evil-1" for e in log_lines(api)),
                     timeout=5, what="the request in the JSON log")
    e = [e for e in log_lines(api) if e["request_id"] == "obs-log-evil-1"][0]
    assert e["status"] == 200 and e["route"] == "/health"
    assert e["user_agent"] == agent


def test_daemon_logs_one_json_object_per_line_with_log_format_json(workdir):
    infer = Infer(workdir, name="infer-jsonlog", slots=4, extra=["--log-format", "json"])
    infer.start()
    infer.stop()
    lines = (infer.dir / "infer.log").read_text().splitlines()
    assert lines
    events = [json.loads(line) for line in lines]      # every line parses
    assert all(e["cmd"] == "infer" and e["level"] in ("debug", "info", "warn", "error")
               and isinstance(e["pid"], int) and e["time"].endswith("Z") for e in events)
    assert any("ready" in e["msg"] for e in events)
    assert any("draining" in e["msg"] or "drained" in e["msg"] for e in events)


def test_bad_log_format_is_a_usage_error():
    r = subprocess.run([str(BIN), "infer", "--log-format", "xml"], capture_output=True,
                       text=True)
    assert r.returncode == 2 and "json or text" in r.stderr


def test_latest_drift_report_and_served_models_are_gauges(api):
    api.pg.psql("""
        INSERT INTO drift_reports (baseline_rows, current_rows, ks_statistic, ks_pvalue,
                                   ks_method, psi, psi_band, mean_baseline, mean_current,
                                   new_item_share, alert, reasons, created_at)
        VALUES (1000, 250, 0.125, 1.5e-12, 'asymp', 0.3, 'significant', 3.5, 3.85,
                0.2, true, '{psi}', now() + interval '1 day')""")
    try:
        text = scrape(api)
        s = samples(text)
        assert one(s, "cinematch_drift_ks_statistic") == 0.125
        assert one(s, "cinematch_drift_ks_pvalue") == 1.5e-12
        assert one(s, "cinematch_drift_psi") == 0.3
        assert abs(one(s, "cinematch_drift_mean_shift_ratio") - 0.1) < 1e-9
        assert one(s, "cinematch_drift_new_item_share") == 0.2
        assert one(s, "cinematch_drift_detected") == 1
        assert one(s, "cinematch_drift_current_rows") == 250
        assert one(s, "cinematch_drift_report_timestamp_seconds") > time.time()
        assert one(s, "cinematch_model_info", model="dialog") == 1
        assert one(s, "cinematch_model_info", version="5") == 1
        if shutil.which("promtool"):
            check = subprocess.run(["promtool", "check", "metrics"], input=text,
                                   capture_output=True, text=True)
            assert check.returncode == 0, check.stdout + check.stderr
    finally:
        api.pg.psql("DELETE FROM drift_reports WHERE current_rows = 250 AND baseline_rows = 1000"
                    " AND created_at > now()")

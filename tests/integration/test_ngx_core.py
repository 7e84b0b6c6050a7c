"""The nginx module core against real PostgreSQL, Redis and nginx:
/health, /ready, /metrics, the uniform JSON errors, X-Request-ID, and the
recovery of the PostgreSQL pool and the Redis connection."""

import re
import socket
import shutil
import subprocess
import threading
import time

import pytest

from harness import wait_for

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def assert_error(status, headers, doc, want_status, want_code):
    assert status == want_status, doc
    assert headers["content-type"] == "application/json"
    assert set(doc) == {"error"}
    err = doc["error"]
    assert set(err) == {"code", "message", "request_id"}
    assert err["code"] == want_code
    assert err["message"]
    assert err["request_id"] == headers["x-request-id"]


def metric_samples(text):
    """{(name, frozenset(labels)): value} from Prometheus text."""
    samples = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-z_]+)(?:\{(.*)\})? (\S+)$', line)
        assert m, f"unparsable metrics line: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(2) or ""))
        samples[(m.group(1), labels)] = float(m.group(3))
    return samples


# ---- liveness and readiness ----

def test_health_reports_status_version_and_uptime(nginx):
    status, headers, doc = nginx.json("GET", "/health")
    assert status == 200
    assert headers["content-type"] == "application/json"
    assert doc["status"] == "ok"
    assert re.match(r"^\d+\.\d+\.\d+", doc["version"])
    assert isinstance(doc["uptime_seconds"], int) and doc["uptime_seconds"] >= 0


def test_head_is_answered_on_get_routes_without_a_body(nginx):
    status, headers, body = nginx.request("HEAD", "/health")
    assert status == 200
    assert body == b""
    assert HEX32.match(headers["x-request-id"])


def test_ready_is_200_when_postgres_and_redis_answer(nginx):
    status, _, doc = wait_for(lambda: (r := nginx.json("GET", "/ready"))[0] == 200 and r,
                              timeout=10, what="/ready 200")
    assert doc["status"] == "ok"
    assert doc["checks"]["postgres"]["status"] == "ok"
    assert doc["checks"]["redis"]["status"] == "ok"
    assert "inference" in doc["checks"]


def test_ready_survives_more_concurrent_checks_than_pool_connections(nginx):
    # 2 connections per worker: the rest of the queries wait in the queue
    results = []

    def one():
        results.append(nginx.json("GET", "/ready")[0])

    threads = [threading.Thread(target=one) for _ in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [200] * 40


def _ready_failing(nginx, check):
    status, headers, doc = nginx.json("GET", "/ready")
    if status == 503 and check in doc.get("failed", []):
        return status, headers, doc
    return None


def test_ready_names_postgres_while_it_is_down_and_recovers(nginx, backends):
    wait_for(lambda: nginx.json("GET", "/ready")[0] == 200, timeout=10,
             what="/ready 200 before the test")
    backends.pg.stop()
    try:
        status, headers, doc = wait_for(lambda: _ready_failing(nginx, "postgres"),
                                        timeout=10, what="/ready naming postgres")
        assert doc["status"] == "unavailable"
        assert doc["checks"]["postgres"]["status"] == "error"
        assert doc["checks"]["redis"]["status"] == "ok"
        assert headers.get("retry-after")
        assert nginx.json("GET", "/health")[0] == 200
    finally:
        backends.pg.start()
    # the pool re-opens its connections by itself (backoff at most 2 s)
    wait_for(lambda: nginx.json("GET", "/ready")[0] == 200, timeout=15,
             what="/ready 200 after PostgreSQL restarted")


def test_ready_names_redis_while_it_is_down_and_health_stays_up(nginx, backends):
    wait_for(lambda: nginx.json("GET", "/ready")[0] == 200, timeout=10,
             what="/ready 200 before the test")
    backends.redis.stop()
    try:
        _, _, doc = wait_for(lambda: _ready_failing(nginx, "redis"),
                             timeout=10, what="/ready naming redis")
        assert doc["checks"]["redis"]["status"] == "error"
        assert doc["checks"]["postgres"]["status"] == "ok"
        for _ in range(5):
            status, _, health = nginx.json("GET", "/health")
            assert status == 200 and health["status"] == "ok"
    finally:
        backends.redis.start()
    wait_for(lambda: nginx.json("GET", "/ready")[0] == 200, timeout=15,
             what="/ready 200 after Redis restarted")


# ---- uniform errors ----

def test_unknown_path_is_a_404_json_error(nginx):
    assert_error(*nginx.json("GET", "/no/such/thing"), 404, "not_found")


def test_wrong_method_is_a_405_json_error_with_allow(nginx):
    status, headers, doc = nginx.json("DELETE", "/health")
    assert_error(status, headers, doc, 405, "method_not_allowed")
    assert headers["allow"] == "GET, HEAD"


def test_body_over_the_limit_is_a_413_json_error(nginx):
    # cinematch_max_body_size 1k in the test configuration
    body = b'{"a":"' + b"x" * 2000 + b'"}'
    status, headers, doc = nginx.json("POST", "/internal/json", body,
                                      {"Content-Type": "application/json"})
    assert_error(status, headers, doc, 413, "payload_too_large")


def test_chunked_body_over_the_limit_is_a_413_json_error(nginx):
    body = b'{"a":"' + b"x" * 5000 + b'"}'
    status, headers, doc = nginx.json("POST", "/internal/json", body,
                                      {"Content-Type": "application/json"},
                                      chunked=True)
    assert_error(status, headers, doc, 413, "payload_too_large")


def test_body_at_the_limit_is_accepted(nginx):
    body = b'{"a":"' + b"x" * (1024 - 8) + b'"}'
    assert len(body) == 1024
    status, _, doc = nginx.json("POST", "/internal/json", body,
                                {"Content-Type": "application/json"})
    assert status == 200
    assert len(doc["json"]["a"]) == 1024 - 8


@pytest.mark.parametrize("body", [b'{"a":', b"not json", b'{"a":1} trailing',
                                  b'{"a":1,"a":2}'])
def test_malformed_json_is_a_400_json_error(nginx, body):
    status, headers, doc = nginx.json("POST", "/internal/json", body,
                                      {"Content-Type": "application/json"})
    assert_error(status, headers, doc, 400, "invalid_request")


def test_json_that_is_not_an_object_is_a_400_json_error(nginx):
    status, headers, doc = nginx.json("POST", "/internal/json", b"[1,2]",
                                      {"Content-Type": "application/json"})
    assert_error(status, headers, doc, 400, "invalid_request")


def test_empty_json_body_is_a_400_json_error(nginx):
    status, headers, doc = nginx.json("POST", "/internal/json", b"",
                                      {"Content-Type": "application/json"})
    assert_error(status, headers, doc, 400, "invalid_request")


def test_non_json_content_type_is_a_415_json_error(nginx):
    status, headers, doc = nginx.json("POST", "/internal/json", b"a=1",
                                      {"Content-Type": "application/x-www-form-urlencoded"})
    assert_error(status, headers, doc, 415, "unsupported_media_type")


def test_json_body_is_parsed_and_reaches_the_handler(nginx):
    status, _, doc = nginx.json("POST", "/internal/json",
                                {"k": [1, 2.5, "é"], "n": None},
                                {"Content-Type": "application/json; charset=utf-8"})
    assert status == 200
    assert doc == {"json": {"k": [1, 2.5, "é"], "n": None}}


# ---- X-Request-ID ----

def test_client_request_id_is_echoed_in_header_and_error(nginx):
    status, headers, doc = nginx.json("GET", "/nope", headers={"X-Request-ID": "abc-123.x:y_z"})
    assert headers["x-request-id"] == "abc-123.x:y_z"
    assert doc["error"]["request_id"] == "abc-123.x:y_z"


@pytest.mark.parametrize("bad", ["has space", "quote\"d", "x" * 129, "semi;colon"])
def test_unsafe_client_request_id_is_replaced(nginx, bad):
    _, headers, doc = nginx.json("GET", "/nope", headers={"X-Request-ID": bad})
    assert HEX32.match(headers["x-request-id"])
    assert doc["error"]["request_id"] == headers["x-request-id"]


def test_generated_request_ids_are_unique(nginx):
    ids = {nginx.request("GET", "/health")[1]["x-request-id"] for _ in range(20)}
    assert len(ids) == 20
    assert all(HEX32.match(i) for i in ids)


# ---- metrics ----

def test_metrics_pass_promtool_and_count_requests(nginx):
    def count(samples):
        return samples.get(("cinematch_http_requests_total",
                            frozenset({("route", "/health"), ("method", "GET"),
                                       ("status", "200")})), 0)

    before = metric_samples(nginx.request("GET", "/metrics")[2].decode())
    for _ in range(7):
        assert nginx.request("GET", "/health")[0] == 200
    nginx.request("GET", "/does-not-exist")
    nginx.request("DELETE", "/health")

    status, headers, body = nginx.request("GET", "/metrics")
    assert status == 200
    assert headers["content-type"].startswith("text/plain; version=0.0.4")
    text = body.decode()
    after = metric_samples(text)

    assert count(after) - count(before) == 7
    assert after[("cinematch_http_requests_total",
                  frozenset({("route", "unmatched"), ("method", "GET"),
                             ("status", "404")}))] >= 1
    assert after[("cinematch_http_requests_total",
                  frozenset({("route", "/health"), ("method", "DELETE"),
                             ("status", "405")}))] >= 1
    inf = after[("cinematch_http_request_duration_seconds_bucket",
                 frozenset({("route", "/health"), ("le", "+Inf")}))]
    assert inf == after[("cinematch_http_request_duration_seconds_count",
                         frozenset({("route", "/health")}))]
    assert inf >= 7
    for upstream in ("pg", "redis", "infer"):
        assert ("cinematch_upstream_errors_total",
                frozenset({("upstream", upstream)})) in after

    if shutil.which("promtool") is None:
        pytest.skip("promtool not installed (package prometheus)")
    check = subprocess.run(["promtool", "check", "metrics"], input=text,
                           capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


def test_upstream_errors_are_counted_when_postgres_is_down(nginx, backends):
    key = ("cinematch_upstream_errors_total", frozenset({("upstream", "pg")}))
    before = metric_samples(nginx.request("GET", "/metrics")[2].decode())[key]
    backends.pg.stop()
    try:
        wait_for(lambda: _ready_failing(nginx, "postgres"), timeout=10,
                 what="/ready naming postgres")
    finally:
        backends.pg.start()
    after = metric_samples(nginx.request("GET", "/metrics")[2].decode())[key]
    assert after > before
    wait_for(lambda: nginx.json("GET", "/ready")[0] == 200, timeout=15,
             what="/ready 200 after PostgreSQL restarted")


# ---- the PostgreSQL pool (GET /internal/pg/sleep/{ms}, cinematch_echo on) ----

def test_pool_queues_queries_beyond_its_connections(nginx):
    # 2 workers x 2 connections; 12 concurrent 100 ms queries must queue
    results = []

    def one():
        results.append(nginx.json("GET", "/internal/pg/sleep/100"))

    threads = [threading.Thread(target=one) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r[0] for r in results] == [200] * 12
    assert all(r[2] == {"slept_ms": 100} for r in results)


def test_query_over_the_timeout_is_a_503_and_the_pool_recovers(nginx):
    # cinematch_query_timeout 1s: the connection is closed and re-opened
    t0 = time.monotonic()
    status, headers, doc = nginx.json("GET", "/internal/pg/sleep/3000")
    elapsed = time.monotonic() - t0
    assert_error(status, headers, doc, 503, "unavailable")
    assert doc["error"]["message"] == "database timeout"
    assert headers.get("retry-after")
    assert elapsed < 2.5
    wait_for(lambda: nginx.json("GET", "/internal/pg/sleep/0")[0] == 200,
             timeout=5, what="a query to succeed after a timeout")


def test_bad_path_parameter_is_a_400_json_error(nginx):
    assert_error(*nginx.json("GET", "/internal/pg/sleep/abc"), 400, "invalid_request")


def test_clients_that_go_away_release_their_queued_queries(nginx):
    # 4 connections in all; 24 clients each ask for 600 ms and leave.  The
    # running queries finish in the background, the waiting ones must be
    # dropped from the queue, so a new query gets a connection in ~600 ms
    # instead of after the 20 abandoned ones (~3 s, beyond the 1 s timeout).
    socks = []
    for _ in range(24):
        s = socket.create_connection(("127.0.0.1", nginx.port))
        s.sendall(b"GET /internal/pg/sleep/600 HTTP/1.1\r\nHost: t\r\n\r\n")
        socks.append(s)
    time.sleep(0.2)
    for s in socks:
        s.close()
    time.sleep(0.1)

    status, _, doc = nginx.json("GET", "/internal/pg/sleep/0")
    assert status == 200, doc
    wait_for(lambda: "client prematurely closed connection"
             in nginx.error_log.read_text(), timeout=5,
             what="nginx to notice the clients left")
    # every client's request was counted with the 499 nginx gives them
    samples = metric_samples(nginx.request("GET", "/metrics")[2].decode())
    key = ("cinematch_http_requests_total",
           frozenset({("route", "/internal/pg/sleep/{ms}"), ("method", "GET"),
                      ("status", "499")}))
    assert samples.get(key, 0) >= 20

"""The nginx module core against real PostgreSQL, Redis and nginx:
/health, /ready, /metrics, the uniform JSON errors, X-Request-ID, and the
recovery of the PostgreSQL pool and the Redis connection."""

import json
import re
import socket
import shutil
import signal
import subprocess
import threading
import time

import pytest

import harness
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


def test_large_chunked_body_is_dropped_as_it_arrives(nginx):
    # 256 KB over a 1 KB limit: more than the read buffer, so nginx would
    # write it to a temporary file if the module kept it
    body = b'{"a":"' + b"x" * 256 * 1024 + b'"}'
    mark = len(nginx.error_log.read_text())
    status, headers, doc = nginx.json("POST", "/internal/json", body,
                                      {"Content-Type": "application/json"},
                                      chunked=True)
    assert_error(status, headers, doc, 413, "payload_too_large")
    log = nginx.error_log.read_text()[mark:]
    assert "buffered to a temporary file" not in log
    # the connection stays usable for the next request
    assert nginx.json("GET", "/health")[0] == 200


def test_broken_chunked_encoding_is_a_400_json_error(nginx):
    # nginx's own body reader fails; the answer is still the API's error
    with socket.create_connection(("127.0.0.1", nginx.port), timeout=5) as s:
        s.sendall(b"POST /internal/json HTTP/1.1\r\nHost: t\r\n"
                  b"Content-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\nZZZ\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"Content-Type: application/json" in head
    assert b"Connection: close" in head
    assert json.loads(body)["error"]["code"] == "invalid_request"


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


# ---- query arguments (GET /internal/args) ----

@pytest.mark.parametrize("query, expected", [
    ("", {"limit": 20, "offset": 0, "q": None}),
    ("?limit=5&offset=10", {"limit": 5, "offset": 10, "q": None}),
    ("?q=star+wars%20%C3%A9&limit=100", {"limit": 100, "offset": 0, "q": "star wars é"}),
    ("?q=", {"limit": 20, "offset": 0, "q": ""}),
])
def test_query_arguments_are_parsed_with_defaults(nginx, query, expected):
    status, _, doc = nginx.json("GET", "/internal/args" + query)
    assert status == 200, doc
    assert doc == expected


@pytest.mark.parametrize("query", ["?limit=0", "?limit=101", "?limit=abc",
                                   "?limit=", "?offset=-1", "?limit=5x",
                                   "?limit=99999999999999999999999", "?q=%FF"])
def test_bad_query_arguments_are_a_400_json_error(nginx, query):
    assert_error(*nginx.json("GET", "/internal/args" + query), 400, "invalid_request")


def test_validation_errors_carry_their_fields(nginx):
    fields = {"email": "not an email address", "password": "under 8 characters"}
    status, headers, doc = nginx.json("POST", "/internal/json",
                                      {"invalid_fields": fields})
    assert status == 422
    assert doc == {"error": {"code": "validation_failed",
                             "message": "some fields are invalid",
                             "request_id": headers["x-request-id"],
                             "fields": fields}}


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
    # 600: past two refills of a worker's 256-id random buffer
    ids = {nginx.request("GET", "/health")[1]["x-request-id"] for _ in range(600)}
    assert len(ids) == 600
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
    # 2 workers x 2 connections; 8 concurrent 50 ms queries must queue.
    # Short sleeps keep the worst queue (all 8 on one worker: 200 ms) far
    # inside the fixture's 1 s query timeout on a loaded machine (the run
    # with 12 x 100 ms timed out under the ASan build).
    results = []

    def one():
        results.append(nginx.json("GET", "/internal/pg/sleep/50"))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r[0] for r in results] == [200] * 8
    assert all(r[2] == {"slept_ms": 50} for r in results)


def test_query_over_the_timeout_is_a_503_and_the_pool_recovers(nginx):
    # cinematch_query_timeout 1s: the connection is closed and re-opened
    status, headers, doc = nginx.json("GET", "/internal/pg/sleep/3000")
    assert_error(status, headers, doc, 503, "unavailable")
    assert doc["error"]["message"] == "database timeout"
    assert headers["retry-after"] == "1"   # one header, not a list
    wait_for(lambda: nginx.json("GET", "/internal/pg/sleep/0")[0] == 200,
             timeout=5, what="a query to succeed after a timeout")


def test_query_results_become_typed_json(nginx):
    status, _, doc = nginx.json("GET", "/internal/pg/types/%C3%A9t%C3%A9'%3B%20DROP")
    assert status == 200, doc
    assert doc == {"rows": [{
        "param": "été'; DROP",          # a parameter, never part of the SQL
        "one": 1, "i4": 42, "i8": 9007199254740993, "f8": 2.5, "num": 3.25,
        "nan": "NaN", "yes": True, "nothing": None, "doc": {"k": [1, 2]},
        "arr": "{a,b}"}]}


def test_failing_query_is_a_500_without_the_server_message(nginx):
    status, headers, doc = nginx.json("GET", "/internal/pg/types/fail")
    assert_error(status, headers, doc, 500, "internal")
    assert "division" not in doc["error"]["message"]
    assert "division by zero" in nginx.error_log.read_text()   # logged instead
    assert nginx.json("GET", "/internal/pg/sleep/0")[0] == 200


def test_queries_waiting_for_a_connection_time_out_too(nginx):
    # 4 connections in all, 10 clients each asking for 1.5 s against a 1 s
    # timeout: the running ones and the waiting ones all end in 503 near 1 s
    results = []

    def one():
        status, _, doc = nginx.json("GET", "/internal/pg/sleep/1500")
        results.append((status, doc["error"]["message"] if status != 200 else ""))

    threads = [threading.Thread(target=one) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r[0] for r in results] == [503] * 10, results
    assert all(r[1] == "database timeout" for r in results), results
    wait_for(lambda: nginx.json("GET", "/internal/pg/sleep/0")[0] == 200,
             timeout=5, what="the pool to recover")


def test_queries_in_flight_when_postgres_stops_end_in_503(nginx, backends):
    wait_for(lambda: nginx.json("GET", "/internal/pg/sleep/0")[0] == 200,
             timeout=10, what="the pool to be up")
    results = []

    def one():
        status, _, doc = nginx.json("GET", "/internal/pg/sleep/900")
        results.append((status, doc))

    threads = [threading.Thread(target=one) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    backends.pg.stop()          # fast shutdown: running queries are killed
    try:
        for t in threads:
            t.join(timeout=10)
        assert len(results) == 8
        assert all(s == 503 for s, _ in results), results
        assert {d["error"]["message"] for _, d in results} <= {
            "database unavailable", "database timeout"}
    finally:
        backends.pg.start()
    wait_for(lambda: nginx.json("GET", "/ready")[0] == 200, timeout=15,
             what="/ready 200 after PostgreSQL restarted")


def test_first_query_after_postgres_returns_does_not_wait_out_the_backoff(
        nginx, backends):
    # while PostgreSQL is down the reconnect backoff grows to 2 s; a query
    # arriving when every connection is down tries one at once instead
    backends.pg.stop()
    try:
        for _ in range(10):
            assert nginx.json("GET", "/internal/pg/sleep/0")[0] == 503
            time.sleep(0.2)
    finally:
        backends.pg.start()
    time.sleep(0.15)
    statuses = [nginx.json("GET", "/internal/pg/sleep/0")[0] for _ in range(10)]
    assert statuses == [200] * 10


def test_bad_path_parameter_is_a_400_json_error(nginx):
    assert_error(*nginx.json("GET", "/internal/pg/sleep/abc"), 400, "invalid_request")


def test_clients_that_go_away_release_their_queued_queries(nginx, backends):
    # 4 connections in all; 24 clients each ask for a 601 ms query and leave
    # at once.  The running queries finish in the background; the waiting
    # ones must leave the queue with their requests, so PostgreSQL runs at
    # most the 4 that had a connection (it logs every statement).
    pglog = backends.pg.logfile
    mark = len(pglog.read_text())
    socks = []
    for _ in range(24):
        s = socket.create_connection(("127.0.0.1", nginx.port))
        s.sendall(b"GET /internal/pg/sleep/601 HTTP/1.1\r\nHost: t\r\n\r\n")
        socks.append(s)
    time.sleep(0.2)
    for s in socks:
        s.close()

    wait_for(lambda: nginx.error_log.read_text().count(
                 "client prematurely closed connection") >= 20,
             timeout=10, what="nginx to notice the clients left")
    # once the abandoned ones are done, the pool serves new queries
    wait_for(lambda: nginx.json("GET", "/internal/pg/sleep/0")[0] == 200,
             timeout=10, what="a query after the abandoned ones")
    ran = pglog.read_text()[mark:].count("$1 = '0.601'")
    assert 1 <= ran <= 4, f"{ran} abandoned queries ran"
    samples = metric_samples(nginx.request("GET", "/metrics")[2].decode())
    key = ("cinematch_http_requests_total",
           frozenset({("route", "/internal/pg/sleep/{ms}"), ("method", "GET"),
                      ("status", "499")}))
    assert samples.get(key, 0) >= 20


# ---- Redis commands (GET /internal/redis/echo/{value}) ----

@pytest.mark.parametrize("value, expected", [
    ("hello", "hello"), ("a%20b", "a b"), ("%C3%A9t%C3%A9", "été"),
    ("x" * 1000, "x" * 1000)])
def test_redis_command_arguments_pass_as_they_are(nginx, value, expected):
    # nginx decodes the path; the module passes the segment with its length
    status, _, doc = nginx.json("GET", "/internal/redis/echo/" + value)
    assert status == 200, doc
    assert doc == {"echo": expected}


def test_redis_over_a_unix_socket(workdir, backends):
    ngx = harness.Nginx(workdir, redis=backends.redis,
                        redis_address=backends.redis.unix_address,
                        location_extra="cinematch_echo on;", name="nginx-redis-unix")
    ngx.start()
    try:
        wait_for(lambda: ngx.json("GET", "/internal/redis/echo/via-unix")[0] == 200,
                 timeout=10, what="Redis over its unix socket")
        assert ngx.json("GET", "/internal/redis/echo/via-unix")[2] == {"echo": "via-unix"}
        # no cinematch_postgres here: reported, not failing
        status, _, doc = ngx.json("GET", "/ready")
        assert status == 200, doc
        assert doc["checks"]["postgres"] == {"status": "disabled"}
        assert doc["checks"]["redis"]["status"] == "ok"
    finally:
        ngx.stop()
    assert not ngx.log_problems()


def test_large_bodies_buffered_to_a_temporary_file_are_read_back(workdir):
    # past client_body_buffer_size nginx keeps the body in a file; the
    # handler still gets it whole, plain or chunked
    ngx = harness.Nginx(workdir, location_extra="cinematch_echo on;\n"
                        "cinematch_max_body_size 1m;\n"
                        "client_body_buffer_size 8k;", name="nginx-bigbody")
    ngx.start()
    try:
        value = "".join(chr(0x41 + i % 26) for i in range(300 * 1024))
        for chunked in (False, True):
            status, _, doc = ngx.json("POST", "/internal/json", {"v": value},
                                      chunked=chunked)
            assert status == 200, doc
            assert doc["json"]["v"] == value
        assert "buffered to a temporary file" in ngx.error_log.read_text()
    finally:
        ngx.stop()
    assert not ngx.log_problems()


def test_first_command_after_redis_returns_does_not_wait_out_the_backoff(
        nginx, backends):
    backends.redis.stop()
    try:
        for _ in range(10):
            assert nginx.json("GET", "/internal/redis/echo/x")[0] == 503
            time.sleep(0.2)
    finally:
        backends.redis.start()
    time.sleep(0.15)
    statuses = [nginx.json("GET", "/internal/redis/echo/x")[0] for _ in range(10)]
    assert statuses == [200] * 10


# ---- reload ----

def test_reload_keeps_metrics_and_new_workers_reconnect(nginx):
    key = ("cinematch_http_requests_total",
           frozenset({("route", "/health"), ("method", "GET"), ("status", "200")}))
    nginx.request("GET", "/health")
    samples = metric_samples(nginx.request("GET", "/metrics")[2].decode())
    before = samples[key]
    start = samples[("cinematch_start_time_seconds", frozenset())]
    uptime = nginx.json("GET", "/health")[2]["uptime_seconds"]
    old = nginx.worker_pids()
    nginx.reload()
    # old workers exit although they hold PostgreSQL and Redis connections
    wait_for(lambda: len(nginx.worker_pids() - old) == 2
             and not (nginx.worker_pids() & old),
             timeout=10, what="new workers and the old ones gone")
    samples = metric_samples(nginx.request("GET", "/metrics")[2].decode())
    assert samples[key] >= before
    assert samples[("cinematch_start_time_seconds", frozenset())] == start
    assert nginx.json("GET", "/health")[2]["uptime_seconds"] >= uptime
    wait_for(lambda: nginx.json("GET", "/ready")[0] == 200, timeout=10,
             what="/ready 200 from the new workers")


def test_hung_redis_times_out_and_the_connection_is_remade(nginx, backends):
    # SIGSTOP: the socket stays open but nothing answers.  The PING times out
    # (cinematch_redis_timeout 1s), the connection is dropped and re-made
    # once Redis answers again.
    wait_for(lambda: nginx.json("GET", "/ready")[0] == 200, timeout=10,
             what="/ready 200 before the test")
    backends.redis.proc.send_signal(signal.SIGSTOP)
    try:
        status, _, doc = nginx.json("GET", "/ready")
        assert status == 503 and doc["failed"] == ["redis"], doc
        assert doc["checks"]["redis"]["error"] == "no reply"   # timed out
        assert nginx.json("GET", "/health")[0] == 200
    finally:
        backends.redis.proc.send_signal(signal.SIGCONT)
    wait_for(lambda: nginx.json("GET", "/ready")[0] == 200, timeout=15,
             what="/ready 200 after Redis resumed")


# ---- configuration errors are caught by nginx -t ----

@pytest.mark.parametrize("http_extra, message", [
    ('cinematch_redis redis.example:6379;', "must be an IP address"),
    ('cinematch_redis 127.0.0.1:0;', "invalid port"),
    ('cinematch_redis 127.0.0.1;', "expected host:port or unix:path"),
    ('cinematch_postgres "host=127.0.0.1 nosuchkey=1";', "invalid PostgreSQL connection string"),
    ('cinematch_postgres_pool 0;', "must be between 1 and 64"),
    ('cinematch_infer /run/x.sock shm=/bad"name;', "invalid shared memory name"),
    ('cinematch_infer relative.sock shm=/cm-x;', "absolute unix socket path"),
    ('cinematch_infer /run/x.sock /cm-x;', "expected shm=<name>"),
])
def test_invalid_directives_fail_the_configuration_test(workdir, http_extra, message):
    ngx = harness.Nginx(workdir, http_extra=http_extra, name="nginx-badconf")
    with pytest.raises(harness.HarnessError) as exc:
        ngx.start()
    assert message in str(exc.value)
    assert ngx.proc is None


# ---- random requests: every answer is the API's (run under ASan too) ----

def test_random_requests_always_get_a_json_answer_with_a_request_id(nginx):
    import random
    rng = random.Random(20261125)
    paths = ["/health", "/ready", "/metrics", "/internal/json",
             "/internal/pg/sleep/{}", "/internal/redis/echo/{}", "/api/v1/x",
             "/", "/health/", "//health", "/internal", "/internal/pg/sleep/"]
    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
    seg_chars = "abcxyz0123456789._~-"
    bodies = [b"", b"{}", b'{"a":[1,2,{"b":null}]}', b"[", b"\xff\xfe",
              b'{"a":"' + b"y" * 1500 + b'"}', b"null", b'{"a":1}' * 3]
    for i in range(300):
        path = rng.choice(paths)
        if "{}" in path:
            seg = "".join(rng.choice(seg_chars) for _ in range(rng.randint(0, 12)))
            path = path.format(rng.choice([seg, str(rng.randint(0, 50))]))
        method = rng.choice(methods)
        headers = {}
        if rng.random() < 0.5:
            headers["Content-Type"] = rng.choice(
                ["application/json", "text/plain", "application/json; charset=utf-8"])
        if rng.random() < 0.3:
            headers["X-Request-ID"] = "".join(
                rng.choice(seg_chars + " ;\"") for _ in range(rng.randint(0, 140)))
        body = rng.choice(bodies) if method in ("POST", "PUT", "PATCH") else None
        chunked = body is not None and rng.random() < 0.3
        status, hdrs, data = nginx.request(method, path, body, headers,
                                           chunked=chunked)
        what = f"#{i} {method} {path} {headers} {body[:40] if body else body}"
        assert status in (200, 400, 404, 405, 413, 415, 503), what
        assert re.match(r"^[A-Za-z0-9._:-]{1,128}$", hdrs["x-request-id"]), what
        if method == "HEAD":
            assert data == b"", what
            continue
        if path == "/metrics" and status == 200:
            assert hdrs["content-type"].startswith("text/plain"), what
            continue
        assert hdrs["content-type"] == "application/json", what
        doc = json.loads(data)
        if status >= 400:
            assert doc["error"]["request_id"] == hdrs["x-request-id"], what
        if status == 405:
            assert hdrs["allow"], what

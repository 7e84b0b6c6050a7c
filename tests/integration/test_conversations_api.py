"""Conversations (API.md "Chat") through nginx → PostgreSQL/Redis → shm →
cinematch infer with a tiny dialog model trained for the test: CRUD and
ownership, messages streamed as SSE or answered as JSON, persistence of
complete / partial / error replies, context from Redis rebuilt from
PostgreSQL, feedback, export, chat events, bad input."""

import concurrent.futures
import http.client
import json
import os
import re
import select
import shutil
import signal
import socket
import subprocess
import time

import pytest

import harness
from inferfixture import BIN, Infer
from tokens import access_token, new_secret

DB = "cm_conversations_api"


class _Db:
    def __init__(self, pg, dbname):
        self.pg = pg
        self.dbname = dbname

    @property
    def conninfo(self):
        return (f"host=127.0.0.1 port={self.pg.port} user={self.pg.user} "
                f"dbname={self.dbname} sslmode=disable connect_timeout=5")

    def sql(self, text):
        return self.pg.psql(text, dbname=self.dbname).strip()


@pytest.fixture(scope="module")
def db(backends):
    backends.pg.psql(f"DROP DATABASE IF EXISTS {DB}", dbname="postgres")
    backends.pg.psql(f"CREATE DATABASE {DB}", dbname="postgres")
    d = _Db(backends.pg, DB)
    subprocess.run([str(BIN), "migrate", "--dsn", d.conninfo, "--dir",
                    str(harness.ROOT / "sql")], check=True, capture_output=True)
    ids = d.sql("INSERT INTO users (email, password_hash) VALUES "
                "('alice@example.com', 'x'), ('bob@example.com', 'x') "
                "RETURNING id").split()
    d.alice, d.bob = ids
    # the registry row of the version the daemon reports (--dialog-version 3)
    d.dialog_v3 = d.sql("INSERT INTO model_versions (model_name, version, "
                        "artifact_path, artifact_sha256) VALUES ('dialog', 3, "
                        "'/models/dialog/3', repeat('0', 64)) RETURNING id")
    return d


@pytest.fixture(scope="module")
def model(workdir):
    out = workdir / "dialog-tiny-conv"
    if not out.exists():
        subprocess.run([str(BIN), "train", "dialog", "--corpus",
                        str(harness.ROOT / "tests/fixtures/dialog/plain.txt"),
                        "--out", str(out), "--steps", "20", "--config",
                        "dialog-tiny"], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def api(workdir, backends, db, model):
    # 128 slots: 64 per nginx worker, so 50 concurrent streams fit even
    # when one worker takes them all (no free slot is a 503 by design)
    infer = Infer(workdir, name="infer-conv", slots=128, extra=[
        "--dialog", str(model), "--dialog-version", "3", "--max-seqs", "16"])
    infer.start()
    secret = new_secret(BIN, workdir / "conv-jwt.secret")
    h2_port = harness.free_port()       # HTTP/2 with prior knowledge (h2c)
    ngx = harness.Nginx(workdir, pg=db, redis=backends.redis,
                        http_extra=infer.directive
                        + f"\ncinematch_jwt_secret_file {workdir / 'conv-jwt.secret'};",
                        server_extra=f"listen 127.0.0.1:{h2_port} http2;",
                        # which worker answered: the cancel tests send the
                        # cancel through the worker that does not stream
                        location_extra="add_header X-Worker-Pid $pid always;",
                        name="nginx-conv", workers=2)
    ngx.h2_port = h2_port
    ngx.alice = access_token(secret, sub=db.alice)
    ngx.bob = access_token(secret, sub=db.bob)
    ngx.infer = infer
    ngx.db = db
    ngx.redis = backends.redis
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


def call(api, method, path, doc=None, token=None, raw=None, who="alice"):
    h = {"Authorization": f"Bearer {token or getattr(api, who)}"}
    body = None
    if doc is not None or raw is not None:
        body = raw if raw is not None else json.dumps(doc).encode()
        h["Content-Type"] = "application/json"
    status, hdrs, data = api.request(method, path, body=body, headers=h,
                                     timeout=30)
    return status, hdrs, data


def jcall(api, method, path, doc=None, **kw):
    status, hdrs, data = call(api, method, path, doc, **kw)
    return status, (json.loads(data) if data and
                    hdrs.get("content-type", "").startswith("application/json")
                    else data)


def new_conv(api, title="Casablanca", who="alice"):
    status, doc = jcall(api, "POST", "/api/v1/conversations",
                        {"title": title} if title is not None else {}, who=who)
    assert status == 201, doc
    return doc["conversation"]["id"]


def sse_events(raw):
    """[(event, data-dict)] of an event stream; comments are skipped."""
    out = []
    for block in raw.decode().split("\n\n"):
        ev, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event: "):
                ev = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        if data:
            out.append((ev, json.loads("\n".join(data))))
    return out


def msg(content="Where are you going?", **kw):
    b = {"content": content, "max_tokens": 16, "seed": 7}
    b.update(kw)
    return b


def redis(api, *args):
    return subprocess.run(["redis-cli", "-p", str(api.redis.port), *args],
                          capture_output=True, text=True, check=True).stdout


# --- conversations CRUD and ownership -------------------------------------

def test_create_get_patch_delete(api):
    status, doc = jcall(api, "POST", "/api/v1/conversations", {"title": "Été à Paris"})
    assert status == 201, doc
    c = doc["conversation"]
    assert c["title"] == "Été à Paris" and c["model"] == "dialog"
    assert c["created_at"].endswith("Z") and len(c["id"]) == 36

    status, doc = jcall(api, "GET", f"/api/v1/conversations/{c['id']}")
    assert status == 200 and doc["conversation"] == c and doc["messages"] == []

    status, doc = jcall(api, "PATCH", f"/api/v1/conversations/{c['id']}",
                        {"title": "Renamed"})
    assert status == 200 and doc["conversation"]["title"] == "Renamed"
    assert doc["conversation"]["updated_at"] >= c["updated_at"]

    status, doc = jcall(api, "PATCH", f"/api/v1/conversations/{c['id']}",
                        {"title": None})
    assert status == 200 and doc["conversation"]["title"] is None

    status, _, data = call(api, "DELETE", f"/api/v1/conversations/{c['id']}")
    assert status == 204 and data == b""
    assert jcall(api, "GET", f"/api/v1/conversations/{c['id']}")[0] == 404
    assert call(api, "DELETE", f"/api/v1/conversations/{c['id']}")[0] == 404


def test_create_without_title(api):
    status, doc = jcall(api, "POST", "/api/v1/conversations", {})
    assert status == 201 and doc["conversation"]["title"] is None


def test_another_users_conversation_is_404(api):
    cid = new_conv(api, "alice's")
    for method, path, body in [
            ("GET", f"/api/v1/conversations/{cid}", None),
            ("PATCH", f"/api/v1/conversations/{cid}", {"title": "mine"}),
            ("DELETE", f"/api/v1/conversations/{cid}", None),
            ("GET", f"/api/v1/conversations/{cid}/export?format=md", None),
            ("POST", f"/api/v1/conversations/{cid}/messages", msg(stream=False))]:
        status, doc = jcall(api, method, path, body, who="bob")
        assert status == 404, (method, path, doc)
        assert doc["error"]["code"] == "not_found"
    # nothing was changed or stored on bob's behalf
    assert jcall(api, "GET", f"/api/v1/conversations/{cid}")[1]["conversation"]["title"] \
        == "alice's"
    assert api.db.sql(f"SELECT count(*) FROM messages WHERE conversation_id = '{cid}'") == "0"
    listed = jcall(api, "GET", "/api/v1/conversations?limit=100", who="bob")[1]
    assert cid not in [c["id"] for c in listed["conversations"]]


@pytest.mark.parametrize("cid", ["nope", "00000000-0000-0000-0000-000000000000",
                                 "0000000000000000000000000000000000zz"])
def test_unknown_or_malformed_id_is_404(api, cid):
    assert jcall(api, "GET", f"/api/v1/conversations/{cid}")[0] == 404
    assert jcall(api, "POST", f"/api/v1/conversations/{cid}/messages", msg())[0] == 404


def test_list_is_newest_first_with_cursor_pages(api):
    status, hdrs, _ = call(api, "GET", "/api/v1/conversations", who="bob")
    ids = [new_conv(api, f"page {i}", who="bob") for i in range(5)]
    seen, cursor = [], None
    for _ in range(5):
        q = "/api/v1/conversations?limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, doc = jcall(api, "GET", q, who="bob")
        assert status == 200, doc
        assert len(doc["conversations"]) <= 2
        seen += [c["id"] for c in doc["conversations"]]
        cursor = doc["next_cursor"]
        if cursor is None:
            break
    mine = [i for i in seen if i in ids]
    assert mine == list(reversed(ids))          # newest first, no repeats
    assert len(seen) == len(set(seen))


def test_a_message_moves_the_conversation_to_the_front(api):
    a = new_conv(api, "older")
    new_conv(api, "newer")
    assert jcall(api, "POST", f"/api/v1/conversations/{a}/messages",
                 msg(stream=False))[0] == 200
    first = jcall(api, "GET", "/api/v1/conversations?limit=1")[1]["conversations"][0]
    assert first["id"] == a


@pytest.mark.parametrize("q,field", [("limit=0", "limit"), ("limit=101", "limit"),
                                     ("cursor=abc", "cursor"),
                                     ("cursor=12_not-a-uuid", "cursor")])
def test_bad_list_parameters_are_422(api, q, field):
    status, doc = jcall(api, "GET", f"/api/v1/conversations?{q}")
    assert status == 422 and field in doc["error"]["fields"]


@pytest.mark.parametrize("body,field", [({"title": "x" * 201}, "title"),
                                        ({"title": 5}, "title"),
                                        ({"name": "x"}, "name")])
def test_bad_conversation_bodies_are_422(api, body, field):
    status, doc = jcall(api, "POST", "/api/v1/conversations", body)
    assert status == 422 and field in doc["error"]["fields"]


def test_conversations_need_credentials(api):
    status, _, raw = api.request("GET", "/api/v1/conversations")
    assert status == 401


# --- messages ---------------------------------------------------------------

def test_streamed_message_framing_order_and_persistence(api):
    cid = new_conv(api)
    status, hdrs, raw = call(api, "POST", f"/api/v1/conversations/{cid}/messages",
                             msg(stream=True))
    assert status == 200 and hdrs["content-type"] == "text/event-stream"
    assert hdrs.get("x-accel-buffering") == "no"
    events = sse_events(raw)
    names = [e for e, _ in events]
    assert names[-1] == "done" and set(names[:-1]) <= {"token"}, names
    text = "".join(d["text"] for e, d in events if e == "token")
    done = events[-1][1]
    assert done["finish_reason"] in ("stop", "length")
    assert done["usage"]["prompt_tokens"] > 0
    assert 0 < done["usage"]["completion_tokens"] <= 16

    doc = jcall(api, "GET", f"/api/v1/conversations/{cid}")[1]
    user, reply = doc["messages"]
    assert user["role"] == "user" and user["content"] == "Where are you going?"
    assert user["id"] == done["user_message_id"]
    assert reply["id"] == done["message_id"] and reply["role"] == "assistant"
    assert reply["content"] == text and reply["status"] == "complete"
    assert reply["finish_reason"] == done["finish_reason"]
    assert reply["completion_tokens"] == done["usage"]["completion_tokens"]
    assert reply["latency_ms"] is not None and reply["latency_ms"] >= 0
    assert api.db.sql(f"SELECT model_version_id FROM messages WHERE id = {reply['id']}") \
        == api.db.dialog_v3


def test_non_streamed_message_is_json_and_matches_the_stream(api):
    cid = new_conv(api)
    status, doc = jcall(api, "POST", f"/api/v1/conversations/{cid}/messages",
                        msg(stream=False))
    assert status == 200, doc
    m = doc
    assert m["role"] == "assistant" and m["status"] == "complete"
    assert m["conversation_id"] == cid and m["usage"]["completion_tokens"] > 0
    # same seed, same context: the streamed reply is the same text
    cid2 = new_conv(api)
    raw = call(api, "POST", f"/api/v1/conversations/{cid2}/messages", msg())[2]
    text = "".join(d["text"] for e, d in sse_events(raw) if e == "token")
    assert text == m["content"]


def test_context_comes_from_redis_and_is_rebuilt_from_postgres(api):
    cid = new_conv(api)
    key = f"cinematch:conv:{cid}:turns"
    status, reply = jcall(api, "POST", f"/api/v1/conversations/{cid}/messages",
                          msg("first line", stream=False))
    assert status == 200
    # the reply's turn is appended by the worker that answered, on its own
    # Redis connection, after the answer: the next message could be read
    # by another worker before it lands (a flaky failure, seen once)
    n = 1 + (reply["content"] != "")
    harness.wait_for(lambda: int(redis(api, "LLEN", key)) == n, timeout=5,
                     what="context cached")
    turns = redis(api, "LRANGE", key, "0", "-1").splitlines()
    assert turns[0] == "first line"
    first = jcall(api, "POST", f"/api/v1/conversations/{cid}/messages",
                  msg("second line", stream=False))[1]
    # the same request with the cache dropped: rebuilt from PostgreSQL, the
    # prompt is the same length
    redis(api, "DEL", key)
    api.db.sql(f"DELETE FROM messages WHERE conversation_id = '{cid}' AND id > "
               f"(SELECT min(id) FROM messages WHERE conversation_id = '{cid}' "
               f"AND role = 'assistant')")
    second = jcall(api, "POST", f"/api/v1/conversations/{cid}/messages",
                   msg("second line", stream=False))[1]
    assert second["usage"]["prompt_tokens"] == first["usage"]["prompt_tokens"]
    harness.wait_for(lambda: int(redis(api, "LLEN", key)) >= 3, timeout=5,
                     what="context rebuilt")
    assert redis(api, "TTL", key).strip() != "-1"


def test_deleting_a_conversation_drops_its_context(api):
    cid = new_conv(api)
    jcall(api, "POST", f"/api/v1/conversations/{cid}/messages", msg(stream=False))
    key = f"cinematch:conv:{cid}:turns"
    harness.wait_for(lambda: int(redis(api, "LLEN", key)) >= 1, timeout=5,
                     what="context cached")
    assert call(api, "DELETE", f"/api/v1/conversations/{cid}")[0] == 204
    harness.wait_for(lambda: int(redis(api, "EXISTS", key)) == 0, timeout=5,
                     what="context dropped")


@pytest.mark.parametrize("patch,field", [
    ({"content": ""}, "content"), ({"content": "  \n "}, "content"),
    ({"content": "x" * 8193}, "content"), ({"content": 5}, "content"),
    ({"temperature": 3}, "temperature"), ({"temperature": -0.1}, "temperature"),
    ({"top_p": 0}, "top_p"), ({"top_p": 1.5}, "top_p"),
    ({"max_tokens": 0}, "max_tokens"), ({"max_tokens": 5000}, "max_tokens"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop"), ({"seed": -1}, "seed"),
    ({"stream": "yes"}, "stream"), ({"bogus": 1}, "bogus"),
])
def test_bad_messages_are_422_and_store_nothing(api, patch, field):
    cid = new_conv(api)
    b = msg()
    b.update(patch)
    status, doc = jcall(api, "POST", f"/api/v1/conversations/{cid}/messages", b)
    assert status == 422, doc
    assert doc["error"]["code"] == "validation_failed" and field in doc["error"]["fields"]
    assert api.db.sql(f"SELECT count(*) FROM messages WHERE conversation_id = '{cid}'") == "0"


def test_non_utf8_and_100k_bodies_are_refused(api):
    cid = new_conv(api)
    raw = b'{"content": "caf\xe9", "stream": false}'
    status, doc = jcall(api, "POST", f"/api/v1/conversations/{cid}/messages", raw=raw)
    assert status == 400 and doc["error"]["code"] == "invalid_request"
    big = json.dumps(msg("x" * 100_000)).encode()
    status, doc = jcall(api, "POST", f"/api/v1/conversations/{cid}/messages", raw=big)
    assert status in (413, 422), doc
    assert api.db.sql(f"SELECT count(*) FROM messages WHERE conversation_id = '{cid}'") == "0"


def _open_stream(api, cid, wait=True, **kw):
    s = socket.create_connection(("127.0.0.1", api.port), timeout=20)
    payload = json.dumps(msg(**kw)).encode()
    s.sendall(b"POST /api/v1/conversations/%s/messages HTTP/1.1\r\nHost: x\r\n"
              b"Authorization: Bearer %s\r\n"
              b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"
              % (cid.encode(), api.alice.encode(), len(payload), payload))
    buf = b""
    while wait and b"event: token" not in buf:
        chunk = s.recv(4096)
        assert chunk, buf
        buf += chunk
    return s, buf


def _long():
    """Sampling that keeps the tiny model talking until its context is full
    (64 tokens): it rarely ends its turn early."""
    return dict(max_tokens=1024, temperature=2.0, top_k=0, top_p=1.0,
                repetition_penalty=1.0)


def _queue_empty(api):
    return api.json("GET", "/ready")[2]["checks"]["inference"]["daemons"][0]["queue_depth"] == 0


def _step_daemon(api, s, buf, marker, window=0.0005, tries=2000):
    """Run the stopped daemon in short slices (SIGCONT, a moment, SIGSTOP)
    until marker is in what the socket gave; the daemon is stopped when
    this returns.  A machine under load then cannot let a fast model finish
    the whole reply while the test reacts to its first token."""
    pid = api.infer.proc.pid
    s.settimeout(0.002)
    for _ in range(tries):
        if marker in buf:
            break
        os.kill(pid, signal.SIGCONT)
        time.sleep(window)
        os.kill(pid, signal.SIGSTOP)
        try:
            while True:
                chunk = s.recv(65536)
                if not chunk:
                    return buf
                buf += chunk
        except socket.timeout:
            pass
    return buf


def _paused_mid_stream(api, seeds=range(1, 40)):
    """A stream whose first token arrived and whose daemon was then paused
    (SIGSTOP) before the generation ended: (socket, bytes so far, cid).
    The daemon runs in short slices until the first token comes (see
    _step_daemon); a seed whose reply still ended first is skipped.  The
    caller sends SIGCONT or kills."""
    for seed in seeds:
        cid = new_conv(api)
        api.infer.proc.send_signal(signal.SIGSTOP)
        s, buf = _open_stream(api, cid, wait=False, seed=seed, **_long())
        buf = _step_daemon(api, s, buf, b"event: token")
        s.settimeout(0.2)
        try:
            while b"event: done" not in buf:
                chunk = s.recv(4096)
                if not chunk:
                    break
                buf += chunk
        except socket.timeout:
            pass
        if b"event: done" not in buf:
            return s, buf, cid
        api.infer.proc.send_signal(signal.SIGCONT)
        s.close()
    pytest.fail("every generation ended before the daemon could be paused")


def test_client_disconnect_saves_a_partial_reply_and_frees_the_sequence(api):
    s, buf, cid = _paused_mid_stream(api)
    try:
        s.close()
        harness.wait_for(lambda: api.db.sql(
            f"SELECT count(*) FROM messages WHERE conversation_id = '{cid}' "
            "AND role = 'assistant'") == "1", timeout=1.5, what="reply stored")
    finally:
        api.infer.proc.send_signal(signal.SIGCONT)
    where = f"conversation_id = '{cid}' AND role = 'assistant'"
    row = api.db.sql(f"SELECT status, finish_reason, latency_ms IS NOT NULL "
                     f"FROM messages WHERE {where}")
    assert row == "partial|cancel|t", row
    _assert_partial_counts(api, where)
    content = bytes.fromhex(api.db.sql(
        f"SELECT encode(convert_to(content, 'UTF8'), 'hex') FROM messages "
        f"WHERE {where}")).decode()
    # what the client saw is a prefix of what was kept
    seen = "".join(d["text"] for e, d in sse_events(_sse_body(buf)) if e == "token")
    assert seen and content.startswith(seen), (seen, content)
    harness.wait_for(lambda: _queue_empty(api), timeout=5,
                     what="daemon sequence freed")
    # the user message was stored before generation
    assert api.db.sql(f"SELECT count(*) FROM messages WHERE conversation_id = '{cid}' "
                      "AND role = 'user'") == "1"


def _assert_partial_counts(api, where):
    """A partial reply records what the daemon had done when it was
    cancelled: the prompt, the tokens sampled so far (at least those the
    client saw), the time to the first token and the latency."""
    pt, ct, ttft, lat = api.db.sql(
        f"SELECT prompt_tokens, completion_tokens, first_token_ms, latency_ms "
        f"FROM messages WHERE {where}").split("|")
    assert int(pt) > 0 and int(ct) >= 1, (pt, ct)
    assert float(ttft) >= 0 and float(lat) >= float(ttft), (ttft, lat)


def _sse_body(raw):
    """The event stream of a raw chunked HTTP/1.1 response."""
    body = raw.split(b"\r\n\r\n", 1)[1]
    out = b""
    while body:
        line, _, rest = body.partition(b"\r\n")
        try:
            n = int(line, 16)
        except ValueError:
            break
        if n == 0:
            break
        out += rest[:n]
        body = rest[n + 2:]
    return out


def test_50_concurrent_streams_all_complete_and_are_stored(api):
    cids = [new_conv(api, f"crowd {i}") for i in range(50)]

    def one(cid):
        status, _, raw = call(api, "POST", f"/api/v1/conversations/{cid}/messages",
                              msg(max_tokens=24, seed=None))
        return status, sse_events(raw)

    with concurrent.futures.ThreadPoolExecutor(max_workers=50) as pool:
        results = list(pool.map(one, cids))
    for status, events in results:
        assert status == 200
        assert events and events[-1][0] == "done", events[-3:]
    stored = api.db.sql("SELECT count(*) FROM messages WHERE role = 'assistant' AND "
                        "status = 'complete' AND conversation_id IN ("
                        + ",".join(f"'{c}'" for c in cids) + ")")
    assert stored == "50"
    harness.wait_for(lambda: _queue_empty(api), timeout=5, what="queue drained")


def test_feedback_on_own_assistant_messages(api):
    cid = new_conv(api)
    m = jcall(api, "POST", f"/api/v1/conversations/{cid}/messages",
              msg(stream=False))[1]
    status, doc = jcall(api, "POST", f"/api/v1/messages/{m['id']}/feedback",
                        {"rating": 1, "comment": "très bien"})
    assert status == 200, doc
    assert doc["feedback"]["rating"] == 1 and doc["feedback"]["comment"] == "très bien"
    # voting again updates the vote
    status, doc = jcall(api, "POST", f"/api/v1/messages/{m['id']}/feedback",
                        {"rating": -1})
    assert status == 200 and doc["feedback"]["rating"] == -1
    assert doc["feedback"]["comment"] is None
    msgs = jcall(api, "GET", f"/api/v1/conversations/{cid}")[1]["messages"]
    assert msgs[1]["feedback"] == -1
    # another user's message, the user's own prompt, an unknown id: 404
    assert jcall(api, "POST", f"/api/v1/messages/{m['id']}/feedback", {"rating": 1},
                 who="bob")[0] == 404
    assert jcall(api, "POST", f"/api/v1/messages/{msgs[0]['id']}/feedback",
                 {"rating": 1})[0] == 404
    assert jcall(api, "POST", "/api/v1/messages/999999999/feedback", {"rating": 1})[0] == 404
    assert jcall(api, "POST", "/api/v1/messages/abc/feedback", {"rating": 1})[0] == 404
    for bad in ({"rating": 0}, {"rating": "up"}, {"rating": 1, "comment": "x" * 2001},
                {"rating": 1, "extra": True}):
        assert jcall(api, "POST", f"/api/v1/messages/{m['id']}/feedback", bad)[0] == 422


def test_chat_events_reach_the_stream(api):
    cid = new_conv(api)
    m = jcall(api, "POST", f"/api/v1/conversations/{cid}/messages",
              msg(stream=False))[1]
    jcall(api, "POST", f"/api/v1/messages/{m['id']}/feedback", {"rating": 1})

    def events():
        out = redis(api, "--no-raw", "XRANGE", "cinematch:chat.events", "-", "+")
        return out

    harness.wait_for(lambda: f'"{m["id"]}"' in events() and "feedback" in events(),
                     timeout=5, what="events")
    raw = redis(api, "XRANGE", "cinematch:chat.events", "-", "+")
    assert "message.created" in raw and "generation.finished" in raw
    assert "feedback" in raw and cid in raw


def test_export_json_and_markdown(api):
    cid = new_conv(api, "Export me")
    jcall(api, "POST", f"/api/v1/conversations/{cid}/messages",
          msg("# Hello, wörld", stream=False))
    status, hdrs, raw = call(api, "GET", f"/api/v1/conversations/{cid}/export?format=json")
    assert status == 200 and hdrs["content-type"].startswith("application/json")
    assert f'filename="conversation-{cid}.json"' in hdrs["content-disposition"]
    doc = json.loads(raw)
    assert doc["conversation"]["title"] == "Export me" and len(doc["messages"]) == 2
    status, hdrs, raw = call(api, "GET", f"/api/v1/conversations/{cid}/export?format=md")
    assert status == 200 and hdrs["content-type"].startswith("text/markdown")
    md = raw.decode("utf-8")
    assert md.startswith("# Export me\n") and "## You" in md and "## Assistant" in md
    assert "\\# Hello, wörld" in md
    status, doc = jcall(api, "GET", f"/api/v1/conversations/{cid}/export?format=docx")
    assert status == 422 and "format" in doc["error"]["fields"]


def test_export_pdf_renders_utf8(api, workdir):
    cid = new_conv(api, "Été à Paris")
    jcall(api, "POST", f"/api/v1/conversations/{cid}/messages",
          msg("Ça va? Ελληνικά, русский", stream=False))
    status, hdrs, raw = call(api, "GET", f"/api/v1/conversations/{cid}/export?format=pdf")
    if status == 422:
        pytest.skip("module built without libharu (libhpdf-dev): "
                    + json.loads(raw)["error"]["fields"]["format"])
    assert status == 200, raw[:300]
    assert hdrs["content-type"] == "application/pdf"
    assert f'filename="conversation-{cid}.pdf"' in hdrs["content-disposition"]
    assert raw.startswith(b"%PDF-") and b"%%EOF" in raw[-64:]
    assert b"/FontFile2" in raw          # the TrueType font is embedded
    if shutil.which("pdftotext") is None:
        return                           # text check needs poppler-utils
    f = workdir / f"{cid}.pdf"
    f.write_bytes(raw)
    text = subprocess.run(["pdftotext", str(f), "-"], capture_output=True,
                          text=True).stdout
    assert "Été à Paris" in text and "Ça va? Ελληνικά, русский" in text


def _conns_on_one_worker(api, n=2, tries=400):
    """n keep-alive connections served by the same nginx worker."""
    by_pid = {}
    for _ in range(tries):
        conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=60)
        conn.request("GET", "/health")
        r = conn.getresponse()
        r.read()
        group = by_pid.setdefault(int(r.getheader("X-Worker-Pid")), [])
        group.append(conn)
        if len(group) == n:
            for other in by_pid.values():
                for c in other:
                    if c not in group:
                        c.close()
            return group
    pytest.fail("no two connections reached the same worker")


def test_a_long_pdf_export_leaves_the_worker_serving_others(api, workdir):
    """The PDF is rendered on the thread pool: while a long conversation
    renders, the same worker answers /health (regression: it was rendered
    on the event loop, every other client of the worker waited for it)."""
    cid = new_conv(api, "The long one")
    api.db.sql(f"INSERT INTO messages (conversation_id, role, content) "
               f"SELECT '{cid}', CASE WHEN i % 2 = 0 THEN 'user' ELSE 'assistant' END, "
               f"'Message ' || i || ': ' || repeat('Été à Paris, Ελληνικά, русский. ', 16) "
               f"FROM generate_series(1, 5000) i")
    export, health = _conns_on_one_worker(api)
    auth = {"Authorization": f"Bearer {api.alice}"}
    export.request("GET", f"/api/v1/conversations/{cid}/export?format=pdf", headers=auth)
    # /health answers while the export is rendering (the worker logs it
    # handed the render to the thread pool): not a byte of the PDF has
    # come yet.  A worker rendering on its event loop would answer
    # /health only after sending the whole PDF.
    t0 = time.monotonic()
    harness.wait_for(lambda: f"PDF export of conversation {cid}: 5000 messages"
                     in api.error_log.read_text(errors="replace"),
                     interval=0.005, what="the render handed to the thread pool")
    for _ in range(3):
        health.request("GET", "/health")
        r = health.getresponse()
        assert r.status == 200 and json.loads(r.read())["status"] == "ok"
        pending = not select.select([export.sock], [], [], 0)[0]
        assert pending, "the export answered before /health"
    t1 = time.monotonic()
    export.sock.settimeout(60)
    r = export.getresponse()
    raw = r.read()
    if r.status == 422:
        pytest.skip("module built without libharu (libhpdf-dev)")
    assert r.status == 200, raw[:300]
    assert r.getheader("Content-Type") == "application/pdf"
    assert raw.startswith(b"%PDF-") and b"%%EOF" in raw[-64:]
    assert raw.count(b"/Type /Page") > 100   # pages: the whole conversation
    print(f"3 /health in {t1 - t0:.3f}s, the PDF ({len(raw)} bytes) in "
          f"{time.monotonic() - t0:.3f}s")
    export.close()
    health.close()
    if shutil.which("pdftotext") is None:
        return
    f = workdir / f"{cid}.pdf"
    f.write_bytes(raw)
    text = subprocess.run(["pdftotext", str(f), "-"], capture_output=True,
                          text=True).stdout
    assert "Message 1: Été à Paris" in text and "Message 5000:" in text


def test_messages_work_while_redis_is_down(api):
    """Redis holds only what may be lost: without it the context comes from
    PostgreSQL and the reply is stored all the same."""
    cid = new_conv(api)
    first = jcall(api, "POST", f"/api/v1/conversations/{cid}/messages",
                  msg("first line", stream=False))[1]
    api.redis.stop()
    try:
        status, doc = jcall(api, "POST", f"/api/v1/conversations/{cid}/messages",
                            msg("second line", stream=False))
        assert status == 200, doc
        assert doc["status"] == "complete"
        # the prompt holds both turns and the first reply: longer than before
        assert doc["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"]
    finally:
        api.redis.start()
        harness.wait_for(lambda: all(api.json("GET", "/ready")[0] == 200
                                     for _ in range(6)),
                         timeout=15, what="Redis back in every worker")
    assert api.db.sql(f"SELECT count(*) FROM messages WHERE conversation_id = "
                      f"'{cid}'") == "4"


# --- HTTP/2: a client that cancels the stream or drops the connection ---------

def _h2_frame(ftype, flags, sid, payload=b""):
    return (len(payload).to_bytes(3, "big") + bytes([ftype, flags])
            + sid.to_bytes(4, "big") + payload)


def _hpack_literal(name, value):
    """A header as an HPACK literal without indexing, new name, no Huffman
    (RFC 7541 6.2.2); both strings shorter than 127 bytes."""
    def s(b):
        assert len(b) < 127
        return bytes([len(b)]) + b
    return b"\x00" + s(name.encode()) + s(value.encode())


class _H2:
    """Just enough HTTP/2 (RFC 9113) for one POST with an event-stream reply:
    the preface, SETTINGS acked, HEADERS + DATA out, DATA of stream 1 in."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.s.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + _h2_frame(4, 0, 0))
        self.buf = b""
        self.data = b""
        self.ended = False

    def post(self, path, token, body):
        hdrs = b"".join(_hpack_literal(k, v) for k, v in [
            (":method", "POST"), (":scheme", "http"), (":path", path),
            (":authority", "127.0.0.1"), ("content-type", "application/json"),
            ("content-length", str(len(body)))])
        # the token is longer than 126 bytes: its length as an HPACK integer
        auth = f"Bearer {token}".encode()
        n, rest = len(auth), b""
        if n < 127:
            rest = bytes([n])
        else:
            rest, n = bytes([127]), n - 127
            while n >= 128:
                rest, n = rest + bytes([(n % 128) + 128]), n // 128
            rest += bytes([n])
        hdrs += b"\x00" + bytes([len("authorization")]) + b"authorization" + rest + auth
        self.s.sendall(_h2_frame(1, 0x4, 1, hdrs) + _h2_frame(0, 0x1, 1, body))

    def read(self):
        """One frame (DATA of stream 1 is kept); False when the peer closed."""
        while len(self.buf) < 9 or len(self.buf) < 9 + int.from_bytes(self.buf[:3], "big"):
            chunk = self.s.recv(65536)
            if not chunk:
                return False
            self.buf += chunk
        n = int.from_bytes(self.buf[:3], "big")
        ftype, flags = self.buf[3], self.buf[4]
        sid = int.from_bytes(self.buf[5:9], "big") & 0x7fffffff
        payload, self.buf = self.buf[9:9 + n], self.buf[9 + n:]
        if ftype == 4 and not flags & 0x1:
            self.s.sendall(_h2_frame(4, 0x1, 0))             # SETTINGS ack
        elif ftype == 0 and sid == 1:
            self.data += payload
            self.ended = self.ended or bool(flags & 0x1)
        elif ftype == 3 and sid == 1:
            self.ended = True
        return True

    def reset(self):
        self.s.sendall(_h2_frame(3, 0, 1, (8).to_bytes(4, "big")))  # CANCEL


def _h2_paused_mid_stream(api, seeds=range(1, 40)):
    """Like _paused_mid_stream, over HTTP/2: (client, cid)."""
    pid = api.infer.proc.pid
    for seed in seeds:
        cid = new_conv(api)
        h = _H2(api.h2_port)
        # the daemon runs in slices until the first token (_step_daemon)
        api.infer.proc.send_signal(signal.SIGSTOP)
        h.post(f"/api/v1/conversations/{cid}/messages", api.alice,
               json.dumps(msg(seed=seed, **_long())).encode())
        h.s.settimeout(0.002)
        for _ in range(2000):
            if b"event: token" in h.data or h.ended:
                break
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.0005)
            os.kill(pid, signal.SIGSTOP)
            try:
                while b"event: token" not in h.data and not h.ended:
                    assert h.read(), h.data
            except socket.timeout:
                pass
        h.s.settimeout(0.2)
        try:
            while b"event: done" not in h.data and not h.ended:
                if not h.read():
                    break
        except socket.timeout:
            pass
        if b"event: done" not in h.data and not h.ended:
            h.s.settimeout(20)
            return h, cid
        api.infer.proc.send_signal(signal.SIGCONT)
        h.s.close()
    pytest.fail("every generation ended before the daemon could be paused")


@pytest.mark.parametrize("how", ["rst_stream", "close"])
def test_http2_client_abort_saves_a_partial_reply(api, how):
    """HTTP/2: the client cancels the stream (RST_STREAM, what a browser's
    AbortController does) or closes the connection mid-reply; the text so
    far is stored `partial` with its counts, as over HTTP/1.1."""
    h, cid = _h2_paused_mid_stream(api)
    where = f"conversation_id = '{cid}' AND role = 'assistant'"
    cancelled = _metric(api, "cinematch_chat_cancellations_total")
    # the daemon was paused after nginx saw a token: a fast model may have
    # finished the whole reply by then (nginx still streams it), and then
    # there is no sequence left to cancel
    running = _metric(api, "cinematch_infer_running_sequences")
    try:
        if how == "rst_stream":
            h.reset()
        else:
            h.s.close()
        harness.wait_for(lambda: api.db.sql(
            f"SELECT count(*) FROM messages WHERE {where}") == "1",
            timeout=1.5, what="reply stored")
    finally:
        api.infer.proc.send_signal(signal.SIGCONT)
    assert api.db.sql(f"SELECT status, finish_reason FROM messages WHERE {where}") \
        == "partial|cancel"
    _assert_partial_counts(api, where)
    seen = "".join(d["text"] for e, d in sse_events(h.data) if e == "token")
    content = bytes.fromhex(api.db.sql(
        f"SELECT encode(convert_to(content, 'UTF8'), 'hex') FROM messages "
        f"WHERE {where}")).decode()
    assert seen and content.startswith(seen), (seen, content)
    harness.wait_for(lambda: _queue_empty(api), timeout=5,
                     what="daemon sequence freed")
    # the daemon counted the cancellation (when it was still generating)
    # and holds no sequence for it
    harness.wait_for(lambda: _metric(api, "cinematch_chat_cancellations_total")
                     == cancelled + (1 if running else 0), timeout=5,
                     what="cancellation counted")
    harness.wait_for(lambda: _metric(api, "cinematch_infer_running_sequences")
                     == 0, timeout=5, what="no running sequence")
    if how == "rst_stream":
        h.s.close()


def _metric(api, name):
    """The sum of a metric's series in /metrics (0 when absent)."""
    status, _, body = api.request("GET", "/metrics")
    assert status == 200
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.decode().splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


# --- stop strings across tokens, seeds ------------------------------------------

def _streamed(api, content, **kw):
    """(token texts, done) of a message in a fresh conversation."""
    cid = new_conv(api)
    raw = call(api, "POST", f"/api/v1/conversations/{cid}/messages",
               msg(content, **kw))[2]
    events = sse_events(raw)
    assert events[-1][0] == "done", events[-3:]
    return [d["text"] for e, d in events if e == "token"], events[-1][1]


def test_a_stop_string_spanning_tokens_is_not_emitted(api):
    """A stop string made of the end of one token and the start of the next
    (each `token` event here is one token: ASCII, nothing held back): the
    same seeded reply ends right before it, with finish_reason stop."""
    sampling = dict(max_tokens=32, temperature=1.0, top_k=0, top_p=1.0)
    for seed in range(1, 30):
        pieces, _ = _streamed(api, "Tell me a story.", seed=seed, **sampling)
        text = "".join(pieces)
        for a, b in zip(pieces, pieces[1:]):
            stop = a[-2:] + b[:2]
            if (len(a) >= 1 and len(b) >= 1 and len(stop) >= 2
                    and stop.isascii() and stop.isprintable()
                    and text.find(stop) > 0):
                break
        else:
            continue
        got, done = _streamed(api, "Tell me a story.", seed=seed, stop=[stop],
                              **sampling)
        assert "".join(got) == text[:text.find(stop)], (stop, text, got)
        assert done["finish_reason"] == "stop"
        return
    pytest.fail("no seed gave a reply of two ASCII tokens")


def test_same_seed_same_reply_through_conversations(api):
    """A seed makes the reply reproducible: the same context and seed give
    the same text in another conversation; other seeds give other text."""
    sampling = dict(max_tokens=24, temperature=1.5, top_k=0, top_p=1.0)
    first = "".join(_streamed(api, "Who are you?", seed=42, **sampling)[0])
    again = "".join(_streamed(api, "Who are you?", seed=42, **sampling)[0])
    assert first == again
    others = {"".join(_streamed(api, "Who are you?", seed=s, **sampling)[0])
              for s in (1, 2, 3, 4)}
    assert len(others | {first}) >= 2, others


# --- context truncation by whole turns (dialog-tiny: 64-token context) -------

def _prompt_tokens(api, turns):
    """prompt_tokens of these turns through /v1/chat/completions with
    max_tokens 1: exact while they fit 63 tokens (the tiny tokenizer is
    about one token per byte); beyond, whole oldest turns are left out."""
    msgs = [{"role": "user" if i % 2 == (len(turns) - 1) % 2 else "assistant",
             "content": t} for i, t in enumerate(turns)]
    status, doc = jcall(api, "POST", "/v1/chat/completions",
                        {"model": "dialog", "messages": msgs, "max_tokens": 1,
                         "seed": 1})
    assert status == 200, doc
    return doc["usage"]["prompt_tokens"]


def test_context_drops_the_oldest_whole_turns(api):
    """The last turns that fit beside max_tokens go whole into the prompt; the
    older ones are left out as whole turns, never cut in the middle."""
    cid = new_conv(api)
    lines = ["Who are you?", "Not now.", "Play it, Sam.", "Here's looking.",
             "Round up the usual suspects."]
    done = None
    for i, line in enumerate(lines):
        raw = call(api, "POST", f"/api/v1/conversations/{cid}/messages",
                   msg(line, max_tokens=16 if i == len(lines) - 1 else 3))[2]
        events = sse_events(raw)
        assert events[-1][0] == "done", events[-3:]
        done = events[-1][1]
    cx = done["context"]
    budget = 64 - 16
    turns = [m["content"] for m in
             jcall(api, "GET", f"/api/v1/conversations/{cid}")[1]["messages"]
             if m["content"]][:-1]                # without the reply just made
    assert cx["truncated"] is False
    assert cx["dropped_turns"] > 0 and cx["turns"] >= 2, cx
    assert cx["turns"] + cx["dropped_turns"] == len(turns)
    # the prompt is exactly the last cx["turns"] turns, whole
    kept = _prompt_tokens(api, turns[-cx["turns"]:])
    assert kept == done["usage"]["prompt_tokens"] <= budget
    # and one more whole turn would not have fit (when that call has to
    # leave it out itself, it is longer than 63 tokens)
    more = _prompt_tokens(api, turns[-cx["turns"] - 1:])
    assert more > budget or more == kept, (more, kept)


def _finished_event(api, message_id):
    """The fields of the generation.finished event of a message, or None."""
    lines = redis(api, "XREVRANGE", "cinematch:chat.events", "+", "-",
                  "COUNT", "100").splitlines()
    for i in range(len(lines) - 1):
        if lines[i] == "message_id" and lines[i + 1] == str(message_id):
            start = i
            while start > 0 and lines[start] != "type":
                start -= 2
            fields = lines[start:start + 32]
            ev = dict(zip(fields[0::2], fields[1::2]))
            if ev.get("type") == "generation.finished":
                return ev
    return None


def test_a_newest_turn_longer_than_the_context_keeps_its_tail(api):
    cid = new_conv(api)
    status, doc = jcall(api, "POST", f"/api/v1/conversations/{cid}/messages",
                        msg("short first line", stream=False))
    assert status == 200 and doc["context"] == {"turns": 1, "dropped_turns": 0,
                                                "truncated": False}
    status, doc = jcall(api, "POST", f"/api/v1/conversations/{cid}/messages",
                        msg("Louis, I think this is the beginning. " * 100,
                            stream=False, max_tokens=16))
    assert status == 200 and doc["status"] == "complete", doc
    assert doc["context"] == {"turns": 1, "dropped_turns": 2, "truncated": True}
    assert doc["usage"]["prompt_tokens"] == 64 - 16
    # the chat event says so too
    ev = harness.wait_for(lambda: _finished_event(api, doc["id"]), timeout=5,
                          what="generation.finished event")
    assert (ev["context_turns"], ev["dropped_turns"], ev["truncated"]) == \
        ("1", "2", "true"), ev
    # the whole message is stored, whatever the model saw
    msgs = jcall(api, "GET", f"/api/v1/conversations/{cid}")[1]["messages"]
    assert msgs[2]["content"] == "Louis, I think this is the beginning. " * 100


# --- an explicit cancel: POST /api/v1/conversations/{id}/cancel ------------------

def test_cancel_is_404_for_other_users_and_409_when_nothing_runs(api):
    cid = new_conv(api)
    for path_cid, who in [(cid, "bob"),
                          ("00000000-0000-0000-0000-000000000000", "alice"),
                          ("nope", "alice")]:
        status, doc = jcall(api, "POST", f"/api/v1/conversations/{path_cid}/cancel",
                            who=who)
        assert status == 404 and doc["error"]["code"] == "not_found", (who, doc)
    status, doc = jcall(api, "POST", f"/api/v1/conversations/{cid}/cancel")
    assert status == 409, doc
    assert doc["error"]["code"] == "conflict" and doc["error"]["message"]
    # a finished reply leaves nothing to cancel either
    jcall(api, "POST", f"/api/v1/conversations/{cid}/messages", msg(stream=False))
    assert jcall(api, "POST", f"/api/v1/conversations/{cid}/cancel")[0] == 409
    status, _, _ = api.request("POST", f"/api/v1/conversations/{cid}/cancel")
    assert status == 401


def _ascii(text):
    """The printable ASCII of a text: what cleaning a piece of it at a time
    or all at once leaves alike (a character split between two pieces, a
    CR before the piece that holds its LF, may differ)."""
    return re.sub(r"[^\x21-\x7e]", "", text)


def _conn_per_worker(api, tries=400):
    """{worker pid: keep-alive connection} for both workers: nginx serves a
    connection in one worker for its whole life."""
    conns = {}
    for _ in range(tries):
        conn = http.client.HTTPConnection("127.0.0.1", api.port, timeout=10)
        conn.request("GET", "/health")
        r = conn.getresponse()
        r.read()
        pid = int(r.getheader("X-Worker-Pid"))
        if pid in conns:
            conn.close()
        else:
            conns[pid] = conn
        if len(conns) == 2:
            return conns
    pytest.fail("every connection went to the same nginx worker")


def _cancel_on(conn, api, cid):
    conn.request("POST", f"/api/v1/conversations/{cid}/cancel",
                 headers={"Authorization": f"Bearer {api.alice}"})
    r = conn.getresponse()
    return r.status, json.loads(r.read())


def _read_to_end(s, buf):
    s.settimeout(20)
    while not buf.endswith(b"\r\n0\r\n\r\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    s.close()
    return buf


@pytest.mark.parametrize("worker", ["other", "same"])
def test_cancel_ends_the_stream_with_done_cancelled_and_stores_a_partial_reply(
        api, worker):
    conns = _conn_per_worker(api)
    for _ in range(5):
        before = _metric(api, "cinematch_chat_cancellations_total")
        s, buf, cid = _paused_mid_stream(api)
        try:
            pid = int(re.search(rb"x-worker-pid: (\d+)", buf, re.I).group(1))
            conn = next(c for p, c in conns.items()
                        if (p != pid) == (worker == "other"))
            status, doc = _cancel_on(conn, api, cid)
            assert status in (202, 409), doc
            assert status == 409 or doc == {"conversation_id": cid,
                                            "cancelled": 1}, doc
        finally:
            api.infer.proc.send_signal(signal.SIGCONT)
        events = sse_events(_sse_body(_read_to_end(s, buf)))
        names = [e for e, _ in events]
        assert names[-1] == "done" and set(names[:-1]) == {"token"}, names
        done = events[-1][1]
        # the reply may have ended by itself before the daemon was paused
        # (409: nginx was still storing it) or in the step it was paused
        # in: the stop came too late, the reply is complete; try again
        if status == 202 and done["finish_reason"] == "cancelled":
            break
    for c in conns.values():
        c.close()
    assert done["finish_reason"] == "cancelled", done
    where = f"conversation_id = '{cid}' AND role = 'assistant'"
    row = api.db.sql(f"SELECT id, status, finish_reason, completion_tokens "
                     f"FROM messages WHERE {where}").split("|")
    assert row[1:3] == ["partial", "cancel"], row
    assert int(row[0]) == done["message_id"]
    assert int(row[3]) == done["usage"]["completion_tokens"]
    _assert_partial_counts(api, where)
    content = bytes.fromhex(api.db.sql(
        f"SELECT encode(convert_to(content, 'UTF8'), 'hex') FROM messages "
        f"WHERE {where}")).decode()
    seen = "".join(d["text"] for e, d in events if e == "token")
    # the same text; the stream cleans each piece of UTF-8 on its own, the
    # stored reply as a whole, so only a character split between two
    # pieces may differ (U+FFFD on the stream)
    assert _ascii(content) == _ascii(seen), (seen, content)
    # the daemon freed the sequence at once and counted the cancellation
    assert _queue_empty(api)
    assert _metric(api, "cinematch_chat_cancellations_total") >= before + 1
    # the kept reply is part of the context of the next message
    last = subprocess.run(["redis-cli", "-p", str(api.redis.port), "--raw", "LINDEX",
                           f"cinematch:conv:{cid}:turns", "-1"],
                          capture_output=True, check=True).stdout   # bytes: CRs kept
    assert last.decode()[:-1] == content, (last, content)
    assert jcall(api, "POST", f"/api/v1/conversations/{cid}/cancel")[0] == 409


def test_back_to_back_messages_on_both_workers_see_every_reply(api):
    """A reply is in the conversation's Redis context before `done` (or the
    JSON answer) goes out, so a message sent the moment it arrives, on the
    other worker, has it in its prompt (regression: the append was fire
    and forget and could reach Redis after the next message read the
    list)."""
    conns = list(_conn_per_worker(api).values())
    cid = new_conv(api)
    h = {"Authorization": f"Bearer {api.alice}", "Content-Type": "application/json"}
    given = 0          # turns so far: the messages and the non-empty replies
    for k in range(8):
        stream = k % 4 < 2
        conn = conns[k % 2]
        conn.request("POST", f"/api/v1/conversations/{cid}/messages",
                     body=json.dumps(msg(f"line {k}", max_tokens=4, stream=stream)),
                     headers=h)
        r = conn.getresponse()
        raw = r.read()
        assert r.status == 200, raw
        if stream:
            events = sse_events(raw)
            ev, done = events[-1]
            assert ev == "done", raw[-300:]
            text = "".join(d["text"] for e, d in events if e == "token")
        else:
            done = json.loads(raw)
            text = done["content"]
        given += 1
        cx = done["context"]
        # every earlier turn, the replies included, was given to the daemon
        assert cx["turns"] + cx["dropped_turns"] == given, (k, done)
        given += 1 if text else 0   # an empty reply is no turn
    for c in conns:
        c.close()
    turns = redis(api, "LLEN", f"cinematch:conv:{cid}:turns").strip()
    assert turns == str(given), turns


def test_cancel_before_the_daemon_starts_ends_a_json_answer_as_cancelled(api):
    """A cancel that reaches the slot before the daemon took the request:
    the generation ends before it begins, with no tokens."""
    cid = new_conv(api)
    api.infer.proc.send_signal(signal.SIGSTOP)
    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=1) as pool:
            fut = pool.submit(jcall, api, "POST",
                              f"/api/v1/conversations/{cid}/messages",
                              msg(stream=False, **_long()))
            harness.wait_for(lambda: jcall(api, "POST",
                                           f"/api/v1/conversations/{cid}/cancel")[0]
                             == 202, timeout=1.5, what="the cancel accepted")
            api.infer.proc.send_signal(signal.SIGCONT)
            status, doc = fut.result(timeout=30)
    finally:
        api.infer.proc.send_signal(signal.SIGCONT)
    assert status == 200, doc
    assert doc["status"] == "partial" and doc["finish_reason"] == "cancelled", doc
    assert doc["usage"]["completion_tokens"] == 0 and doc["content"] == ""
    assert api.db.sql(f"SELECT status, finish_reason FROM messages WHERE "
                      f"id = {doc['id']}") == "partial|cancel"
    harness.wait_for(lambda: _queue_empty(api), timeout=5, what="queue drained")


def test_a_daemon_late_past_its_heartbeat_is_not_taken_for_dead(api):
    """A step that holds the daemon's loop past the 2 s heartbeat (a large
    batch at high load; here SIGSTOP) is not a dead daemon: the stream goes
    on when the daemon does (regression: nginx failed every in-flight
    stream with "the inference daemon went away").  /ready says the
    heartbeat is late meanwhile; a killed daemon is still noticed at once
    (the last test)."""
    s, buf, cid = _paused_mid_stream(api)
    try:
        harness.wait_for(lambda: api.json("GET", "/ready")[2]["checks"]["inference"]
                         ["daemons"][0]["heartbeat_ok"] is False,
                         timeout=10, what="the heartbeat late")
        time.sleep(0.6)    # both workers' 250 ms watches see it late
        assert api.json("GET", "/ready")[2]["checks"]["inference"]["daemons"][0] \
            ["connected"] is True
    finally:
        api.infer.proc.send_signal(signal.SIGCONT)
    events = sse_events(_sse_body(_read_to_end(s, buf)))
    names = [e for e, _ in events]
    assert names[-1] == "done" and set(names[:-1]) == {"token"}, names
    assert api.db.sql(f"SELECT status FROM messages WHERE conversation_id = '{cid}' "
                      f"AND role = 'assistant'") == "complete"
    harness.wait_for(lambda: api.json("GET", "/ready")[0] == 200, timeout=5,
                     what="ready again")


# --- last: kills the daemon ---------------------------------------------------

def test_daemon_killed_mid_stream_gives_an_error_event_and_keeps_the_user_message(api):
    s, buf, cid = _paused_mid_stream(api)
    api.infer.kill9()
    s.settimeout(20)
    while not buf.endswith(b"\r\n0\r\n\r\n"):
        chunk = s.recv(4096)
        if not chunk:
            break
        buf += chunk
    s.close()
    events = sse_events(_sse_body(buf))
    names = [e for e, _ in events]
    assert names[0] == "token" and names[-1] == "error", names
    assert set(names[:-1]) == {"token"}
    err = events[-1][1]
    assert err["error"]["code"] == "unavailable"
    rows = api.db.sql(f"SELECT role, status, finish_reason, error IS NOT NULL "
                      f"FROM messages WHERE conversation_id = '{cid}' "
                      f"ORDER BY id").splitlines()
    assert rows == ["user|complete||f", "assistant|error|error|t"], rows
    # an error reply records its counts like a partial one (regression: they
    # were NULL): the prompt, the tokens sampled by then, the latencies
    where = f"conversation_id = '{cid}' AND role = 'assistant'"
    _assert_partial_counts(api, where)
    ct = int(api.db.sql(f"SELECT completion_tokens FROM messages WHERE {where}"))
    assert ct >= len([e for e in names if e == "token"]), (ct, names)
    assert err["message_id"] > err["user_message_id"] > 0
    # with no daemon a new message is 503, and the user message is kept
    status, doc = jcall(api, "POST", f"/api/v1/conversations/{cid}/messages",
                        msg(stream=False))
    assert status == 503 and doc["error"]["user_message_id"] > 0
    assert api.db.sql(f"SELECT count(*) FROM messages WHERE conversation_id = "
                      f"'{cid}' AND role = 'user'") == "2"

"""GET /api/v1/ws/chat (API.md "Chat"): the conversation chat over a
WebSocket, with a small RFC 6455 client written here on a raw socket:
handshake and its refusals, a streamed reply stored like the SSE one,
ping/pong, close codes for oversize (1009) and unmasked (1002) frames,
ownership, one generation at a time, and a client that disconnects
mid-stream leaving a `partial` reply."""

import base64
import hashlib
import json
import os
import signal
import socket
import struct
import subprocess
import time

import pytest

import harness
from inferfixture import BIN, Infer
from tokens import access_token, new_secret

DB = "cm_ws_chat"
FAST_PING_MS = 500
FAST_IDLE_MS = 3000
GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


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
    d.alice, d.bob = d.sql("INSERT INTO users (email, password_hash) VALUES "
                           "('alice@example.com', 'x'), ('bob@example.com', 'x') "
                           "RETURNING id").split()
    return d


@pytest.fixture(scope="module")
def model(workdir):
    out = workdir / "dialog-tiny-ws"
    if not out.exists():
        subprocess.run([str(BIN), "train", "dialog", "--corpus",
                        str(harness.ROOT / "tests/fixtures/dialog/plain.txt"),
                        "--out", str(out), "--steps", "20", "--config",
                        "dialog-tiny"], check=True, capture_output=True)
    return out


@pytest.fixture(scope="module")
def api(workdir, backends, db, model):
    infer = Infer(workdir, name="infer-ws", slots=16, extra=[
        "--dialog", str(model), "--dialog-version", "3", "--max-seqs", "8"])
    infer.start()
    secret = new_secret(BIN, workdir / "ws-jwt.secret")
    # a second server with short keep-alive timers (pings, idle timeout)
    fast_port = harness.free_port()
    fast = (f"server {{\n    listen 127.0.0.1:{fast_port};\n"
            f"    location / {{\n        cinematch;\n"
            f"        cinematch_ws_ping_interval {FAST_PING_MS}ms;\n"
            f"        cinematch_ws_idle_timeout {FAST_IDLE_MS}ms;\n    }}\n}}")
    ngx = harness.Nginx(workdir, pg=db, redis=backends.redis,
                        http_extra=infer.directive
                        + f"\ncinematch_jwt_secret_file {workdir / 'ws-jwt.secret'};\n"
                        + fast,
                        name="nginx-ws")
    ngx.fast_port = fast_port
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


def new_conv(api, who="alice"):
    status, hdrs, data = api.request(
        "POST", "/api/v1/conversations", body=b'{"title":"ws"}',
        headers={"Authorization": f"Bearer {getattr(api, who)}",
                 "Content-Type": "application/json"}, timeout=10)
    assert status == 201, data
    return json.loads(data)["conversation"]["id"]


# --- a minimal RFC 6455 client --------------------------------------------

class Ws:
    def __init__(self, sock, rest):
        self.s = sock
        self.buf = rest

    def send_frame(self, opcode, payload=b"", fin=True, mask=True):
        b0 = (0x80 if fin else 0) | opcode
        n = len(payload)
        if n < 126:
            head = struct.pack("!BB", b0, (0x80 if mask else 0) | n)
        elif n < 65536:
            head = struct.pack("!BBH", b0, (0x80 if mask else 0) | 126, n)
        else:
            head = struct.pack("!BBQ", b0, (0x80 if mask else 0) | 127, n)
        if mask:
            key = os.urandom(4)
            payload = bytes(c ^ key[i & 3] for i, c in enumerate(payload))
            head += key
        self.s.sendall(head + payload)

    def send_json(self, doc):
        self.send_frame(0x1, json.dumps(doc).encode())

    def _need(self, n):
        while len(self.buf) < n:
            chunk = self.s.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk

    def recv_frame(self):
        """(opcode, payload) of the next server frame (never masked)."""
        self._need(2)
        b0, b1 = self.buf[0], self.buf[1]
        assert b0 & 0x80 and not b1 & 0x80, (b0, b1)   # FIN, unmasked
        n, off = b1 & 0x7f, 2
        if n == 126:
            self._need(4)
            n, off = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            self._need(10)
            n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
        self._need(off + n)
        payload = self.buf[off:off + n]
        self.buf = self.buf[off + n:]
        return b0 & 0x0f, payload

    def recv_event(self):
        op, payload = self.recv_frame()
        assert op == 0x1, (op, payload)
        return json.loads(payload)

    def recv_close(self):
        op, payload = self.recv_frame()
        assert op == 0x8, (op, payload)
        return struct.unpack("!H", payload[:2])[0]

    def close(self):
        self.s.close()


def handshake(api, token=None, key=None, version=b"13", upgrade=True,
              protocols=None, port=None):
    """(status line, headers dict, socket, bytes after the headers)"""
    s = socket.create_connection(("127.0.0.1", port or api.port), timeout=20)
    key = key if key is not None else base64.b64encode(os.urandom(16))
    req = (b"GET /api/v1/ws/chat HTTP/1.1\r\nHost: x\r\n"
           + (b"Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
              if upgrade else b"")
           + b"Sec-WebSocket-Version: " + version + b"\r\n"
           + b"Sec-WebSocket-Key: " + key + b"\r\n"
           + (b"Sec-WebSocket-Protocol: " + protocols.encode() + b"\r\n"
              if protocols is not None else
              b"Authorization: Bearer " + (token or api.alice).encode()
              + b"\r\n")
           + b"\r\n")
    s.sendall(req)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        assert chunk, buf
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode().split("\r\n")
    hdrs = {}
    for line in lines[1:]:
        k, v = line.split(":", 1)
        hdrs[k.strip().lower()] = v.strip()
    return lines[0], hdrs, s, rest, key


def connect(api, **kw):
    status, hdrs, s, rest, key = handshake(api, **kw)
    assert status.startswith("HTTP/1.1 101"), (status, hdrs, rest)
    want = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
    assert hdrs["sec-websocket-accept"] == want
    assert hdrs["upgrade"].lower() == "websocket"
    assert hdrs["connection"].lower() == "upgrade"
    return Ws(s, rest)


def chat(cid, content="Where are you going?", **kw):
    doc = {"conversation_id": cid, "content": content, "max_tokens": 16,
           "seed": 7}
    doc.update(kw)
    return doc


# --- tests ------------------------------------------------------------------

def test_handshake_answers_101_with_the_accept_key(api):
    ws = connect(api)
    ws.send_frame(0x8, struct.pack("!H", 1000))
    assert ws.recv_close() == 1000
    ws.close()


@pytest.mark.parametrize("kw, status", [
    (dict(key=b"not-a-key"), "400"),
    (dict(key=b"dGhlIHNhbXBsZSBub25jZQ="), "400"),
    (dict(version=b"8"), "426"),
    (dict(upgrade=False), "400"),
    (dict(token="nope"), "401"),
])
def test_bad_handshakes_are_refused(api, kw, status):
    line, hdrs, s, rest, _ = handshake(api, **kw)
    s.close()
    assert line.split()[1] == status, (line, rest)
    if status == "426":
        assert hdrs["sec-websocket-version"] == "13"


def test_browser_token_comes_as_a_subprotocol(api):
    ws = connect(api, protocols=f"cinematch.v1, cinematch.bearer.{api.alice}")
    ws.send_frame(0x9, b"p")
    assert ws.recv_frame() == (0xa, b"p")
    ws.close()
    status, hdrs, s, _, _ = handshake(api, protocols=f"cinematch.v1, "
                                      f"cinematch.bearer.{api.alice}")
    s.close()
    assert hdrs["sec-websocket-protocol"] == "cinematch.v1"
    line, _, s, _, _ = handshake(api, protocols="cinematch.v1, cinematch.bearer.x")
    s.close()
    assert line.split()[1] == "401", line
    line, _, s, _, _ = handshake(api, protocols="cinematch.v1")
    s.close()
    assert line.split()[1] == "401", line


def test_chat_streams_tokens_then_done_and_stores_both_messages(api):
    cid = new_conv(api)
    ws = connect(api)
    ws.send_json(chat(cid))
    events = []
    while True:
        ev = ws.recv_event()
        events.append(ev)
        if ev["type"] != "token":
            break
    assert events[-1]["type"] == "done", events[-1]
    assert len(events) > 1
    text = "".join(e["text"] for e in events[:-1])
    done = events[-1]
    assert done["finish_reason"] in ("stop", "length")
    assert 0 < done["usage"]["completion_tokens"] <= 16

    rows = api.db.sql(f"SELECT id, role, status FROM messages WHERE "
                      f"conversation_id = '{cid}' ORDER BY id").split("\n")
    assert rows == [f"{done['user_message_id']}|user|complete",
                    f"{done['message_id']}|assistant|complete"], rows
    content = bytes.fromhex(api.db.sql(
        f"SELECT encode(convert_to(content, 'UTF8'), 'hex') FROM messages "
        f"WHERE id = {done['message_id']}")).decode()
    assert content == text

    # the same events as the SSE path
    raw = subprocess.run(["redis-cli", "-p", str(api.redis.port), "XRANGE",
                          "cinematch:chat.events", "-", "+"],
                         capture_output=True, text=True, check=True).stdout
    assert cid in raw and "message.created" in raw
    assert "generation.finished" in raw and str(done["message_id"]) in raw

    # the socket takes a second message, with the first as context
    ws.send_json(chat(cid, "And then?"))
    while (ev := ws.recv_event())["type"] == "token":
        pass
    assert ev["type"] == "done", ev
    assert api.db.sql(f"SELECT count(*) FROM messages "
                      f"WHERE conversation_id = '{cid}'") == "4"
    ws.close()


def _redis(api, *args):
    return subprocess.run(["redis-cli", "-p", str(api.redis.port), *args],
                          capture_output=True, text=True, check=True).stdout


def _sse_message(api, cid, content="Hello"):
    status, _, data = api.request(
        "POST", f"/api/v1/conversations/{cid}/messages",
        body=json.dumps({"content": content, "max_tokens": 8, "seed": 1,
                         "stream": False}).encode(),
        headers={"Authorization": f"Bearer {api.alice}",
                 "Content-Type": "application/json"}, timeout=20)
    assert status == 200, data
    return json.loads(data)


def done_text(api, done):
    return bytes.fromhex(api.db.sql(
        f"SELECT encode(convert_to(content, 'UTF8'), 'hex') FROM messages "
        f"WHERE id = {done['message_id']}")).decode()


def _ws_reply(api, cid, content="Where are you going?"):
    ws = connect(api)
    ws.send_json(chat(cid, content, max_tokens=4))
    while (ev := ws.recv_event())["type"] == "token":
        pass
    assert ev["type"] == "done", ev
    ws.close()
    return ev


def test_websocket_reads_and_extends_the_sse_context(api):
    """The WebSocket takes its context from the conversation's Redis list,
    as SSE does, and appends its turns to it: the list is never dropped."""
    a, b = new_conv(api), new_conv(api)
    ka, kb = (f"cinematch:conv:{c}:turns" for c in (a, b))
    reply = _sse_message(api, a)["content"]
    assert _sse_message(api, b)["content"] == reply        # same seed
    n = 1 + (reply != "")                 # an empty reply is not a turn
    harness.wait_for(lambda: _redis(api, "LLEN", ka).strip() == str(n)
                     and _redis(api, "LLEN", kb).strip() == str(n),
                     timeout=5, what="cached turns")
    # a's cached first turn is changed: only a reader of the list sees it
    _redis(api, "LSET", ka, "0", "Hello there, Louis")
    pa = _ws_reply(api, a)["usage"]["prompt_tokens"]
    done = _ws_reply(api, b)
    assert pa > done["usage"]["prompt_tokens"], (pa, done)
    assert done["context"]["dropped_turns"] == 0
    # b's list holds both exchanges, the WebSocket's appended
    n += 1 + (done_text(api, done) != "")
    harness.wait_for(lambda: _redis(api, "LLEN", kb).strip() == str(n),
                     timeout=5, what="WebSocket turns appended")
    turns = _redis(api, "LRANGE", kb, "0", "-1").splitlines()
    assert turns[0] == "Hello" and "Where are you going?" in turns, turns


def test_websocket_context_is_rebuilt_from_postgres_on_a_miss(api):
    cid = new_conv(api)
    key = f"cinematch:conv:{cid}:turns"
    _sse_message(api, cid)
    harness.wait_for(lambda: _redis(api, "EXISTS", key).strip() == "1",
                     timeout=5, what="cached turns")
    _redis(api, "DEL", key)
    done = _ws_reply(api, cid)
    want = api.db.sql(f"SELECT count(*) FROM messages WHERE conversation_id"
                      f" = '{cid}' AND content <> ''")
    harness.wait_for(lambda: _redis(api, "LLEN", key).strip() == want,
                     timeout=5, what="context rebuilt and extended")
    assert done["context"]["turns"] + done["context"]["dropped_turns"] \
        == int(want) - (done_text(api, done) != "")
    assert _redis(api, "TTL", key).strip() != "-1"


def test_websocket_works_while_redis_is_down(api):
    """Redis holds only what may be lost: without it the WebSocket takes its
    context from PostgreSQL and stores the reply all the same."""
    cid = new_conv(api)
    first = _ws_reply(api, cid, "first line")
    api.redis.stop()
    try:
        done = _ws_reply(api, cid, "second line")
        # the prompt holds the first exchange too
        assert done["usage"]["prompt_tokens"] > first["usage"]["prompt_tokens"]
        assert done["context"]["turns"] + done["context"]["dropped_turns"] >= 2
    finally:
        api.redis.start()
        harness.wait_for(lambda: all(api.json("GET", "/ready")[0] == 200
                                     for _ in range(4)),
                         timeout=15, what="Redis back in every worker")
    assert api.db.sql(f"SELECT count(*) FROM messages WHERE conversation_id = "
                      f"'{cid}' AND status = 'complete'") == "4"


# --- keep-alive: server pings and the idle timeout (the "fast" server) ------

def _close_payload(payload):
    return struct.unpack("!H", payload[:2])[0], payload[2:].decode()


def test_server_pings_and_a_client_that_answers_stays(api):
    ws = connect(api, port=api.fast_port)
    ws.s.settimeout(10)
    for _ in range(3):
        op, payload = ws.recv_frame()
        assert (op, payload) == (0x9, b"cinematch")
        ws.send_frame(0xa, payload)
    # still open and serving
    cid = new_conv(api)
    ws.send_json(chat(cid, max_tokens=4))
    while True:
        op, payload = ws.recv_frame()
        if op == 0x9:
            ws.send_frame(0xa, payload)
            continue
        ev = json.loads(payload)
        if ev["type"] != "token":
            break
    assert ev["type"] == "done", ev
    ws.close()


def test_a_client_that_does_not_answer_pings_is_dropped(api):
    ws = connect(api, port=api.fast_port)
    ws.s.settimeout(10)
    t0 = time.monotonic()
    assert ws.recv_frame() == (0x9, b"cinematch")
    op, payload = ws.recv_frame()          # no pong: the next ping is a close
    assert op == 0x8 and _close_payload(payload) == (1001, "ping timeout")
    assert time.monotonic() - t0 >= (FAST_PING_MS / 1000) * 0.9
    with pytest.raises((EOFError, ConnectionResetError)):
        ws.recv_frame()                    # and the connection is gone
    ws.close()


def test_an_idle_socket_is_closed_1000_with_a_reason(api):
    ws = connect(api, port=api.fast_port)
    ws.s.settimeout(10)
    t0 = time.monotonic()
    while True:
        op, payload = ws.recv_frame()
        if op == 0x9:
            ws.send_frame(0xa, payload)    # answering pings is not activity
            continue
        break
    assert op == 0x8 and _close_payload(payload) == (1000, "idle timeout")
    assert time.monotonic() - t0 >= (FAST_IDLE_MS / 1000) * 0.9
    with pytest.raises((EOFError, ConnectionResetError)):
        ws.recv_frame()
    ws.close()


def test_one_socket_answers_many_messages(api):
    # each message's memory is a pool of its own (ASan run: no reuse bugs)
    cid = new_conv(api)
    ws = connect(api)
    for i in range(25):
        ws.send_json(chat(cid, f"line {i}", max_tokens=4, seed=i))
        while (ev := ws.recv_event())["type"] == "token":
            pass
        assert ev["type"] == "done", (i, ev)
    ws.close()
    assert api.db.sql(f"SELECT count(*) FROM messages "
                      f"WHERE conversation_id = '{cid}'") == "50"


def test_reload_closes_idle_sockets_and_lets_a_reply_finish(api):
    idle = connect(api)
    ws, seen, cid = _paused_mid_stream(api)
    old = api.worker_pids()
    try:
        api.reload()
        # the idle socket is closed by the old worker at once
        idle.s.settimeout(5)
        with pytest.raises((EOFError, ConnectionResetError)):
            idle.recv_frame()
    finally:
        api.infer.proc.send_signal(signal.SIGCONT)
    # the busy one finishes its reply, then is closed with 1001
    ws.s.settimeout(10)
    while (ev := ws.recv_event())["type"] == "token":
        pass
    assert ev["type"] == "done", ev
    assert ws.recv_close() == 1001
    ws.close()
    idle.close()
    # the next tests must not reach an old worker on its way out (one
    # that accepted just before it saw the reload closes the socket as
    # idle: a reset in the middle of the next test)
    api.wait_gone(old)
    fresh = connect(api)
    fresh.send_frame(0x9, b"")
    assert fresh.recv_frame() == (0xa, b"")
    fresh.close()


def test_ping_is_answered_with_pong(api):
    ws = connect(api)
    ws.send_frame(0x9, b"hello")
    assert ws.recv_frame() == (0xa, b"hello")
    ws.close()


def test_oversize_message_closes_1009(api):
    ws = connect(api)
    ws.send_frame(0x1, b"x" * 70000)
    assert ws.recv_close() == 1009
    ws.close()


def test_unmasked_frame_closes_1002(api):
    ws = connect(api)
    ws.send_frame(0x1, b'{"content":"hi"}', mask=False)
    assert ws.recv_close() == 1002
    ws.close()


def test_invalid_utf8_closes_1007(api):
    ws = connect(api)
    ws.send_frame(0x1, b"\xc3\x28")
    assert ws.recv_close() == 1007
    ws.close()


def test_another_users_conversation_is_not_found(api):
    cid = new_conv(api, who="bob")
    ws = connect(api)
    ws.send_json(chat(cid))
    ev = ws.recv_event()
    assert ev["type"] == "error" and ev["error"]["code"] == "not_found", ev
    assert api.db.sql(f"SELECT count(*) FROM messages "
                      f"WHERE conversation_id = '{cid}'") == "0"
    # the socket stays usable
    ws.send_frame(0x9, b"")
    assert ws.recv_frame() == (0xa, b"")
    ws.close()


def test_bad_messages_get_validation_errors(api):
    cid = new_conv(api)
    ws = connect(api)
    for doc, field in [(chat(cid, "   "), "content"),
                       (chat(cid, temperature=9), "temperature"),
                       (dict(chat(cid), stream=True), "stream"),
                       ({"content": "hi"}, "conversation_id")]:
        ws.send_json(doc)
        ev = ws.recv_event()
        assert ev["type"] == "error", ev
        assert ev["error"]["code"] == "validation_failed", ev
        assert field in ev["error"]["fields"], ev
    ws.send_frame(0x1, b"not json")
    assert ws.recv_event()["error"]["code"] == "invalid_request"
    ws.close()


def _long():
    return dict(max_tokens=1024, temperature=2.0, top_k=0, top_p=1.0,
                repetition_penalty=1.0)


def _paused_mid_stream(api, seeds=range(1, 40)):
    """A socket whose first token arrived and whose daemon was then paused
    (SIGSTOP) before the generation ended; the caller sends SIGCONT."""
    pid = api.infer.proc.pid
    for seed in seeds:
        cid = new_conv(api)
        ws = connect(api)
        # the daemon runs in short slices until the first token comes, so
        # that a machine under load cannot let the tiny model finish the
        # reply while the test reacts to its first token
        api.infer.proc.send_signal(signal.SIGSTOP)
        ws.send_json(chat(cid, seed=seed, **_long()))
        ws.s.settimeout(0.002)
        first = None
        for _ in range(2000):
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.0005)
            os.kill(pid, signal.SIGSTOP)
            try:
                first = ws.recv_event()
                break
            except socket.timeout:
                pass
        assert first is not None and first["type"] == "token", first
        ws.s.settimeout(0.2)
        seen, done = [first], False
        try:
            while True:
                ev = ws.recv_event()
                if ev["type"] != "token":
                    done = True
                    break
                seen.append(ev)
        except socket.timeout:
            pass
        if not done:
            return ws, seen, cid
        api.infer.proc.send_signal(signal.SIGCONT)
        ws.close()
    pytest.fail("every generation ended before the daemon could be paused")


def test_second_message_while_generating_is_a_busy_error(api):
    ws, seen, cid = _paused_mid_stream(api)
    try:
        ws.s.settimeout(5)
        ws.send_json(chat(cid, "again"))
        ev = ws.recv_event()
        assert ev["type"] == "error" and ev["error"]["code"] == "busy", ev
    finally:
        api.infer.proc.send_signal(signal.SIGCONT)
    while (ev := ws.recv_event())["type"] == "token":
        pass
    assert ev["type"] == "done", ev
    ws.close()


def test_disconnect_mid_stream_stores_a_partial_reply(api):
    ws, seen, cid = _paused_mid_stream(api)
    try:
        ws.close()
        harness.wait_for(lambda: api.db.sql(
            f"SELECT count(*) FROM messages WHERE conversation_id = '{cid}' "
            "AND role = 'assistant'") == "1", timeout=2, what="reply stored")
    finally:
        api.infer.proc.send_signal(signal.SIGCONT)
    where = f"conversation_id = '{cid}' AND role = 'assistant'"
    assert api.db.sql(f"SELECT status, finish_reason FROM messages "
                      f"WHERE {where}") == "partial|cancel"
    content = bytes.fromhex(api.db.sql(
        f"SELECT encode(convert_to(content, 'UTF8'), 'hex') FROM messages "
        f"WHERE {where}")).decode()
    text = "".join(e["text"] for e in seen)
    assert text and content.startswith(text), (text, content)
    # the counts of a partial reply: the prompt and the tokens so far
    pt, ct, lat = api.db.sql(f"SELECT prompt_tokens, completion_tokens, "
                             f"latency_ms FROM messages WHERE {where}").split("|")
    assert int(pt) > 0 and int(ct) >= len(seen) and float(lat) >= 0, (pt, ct, lat)


def test_close_frame_mid_stream_is_answered_and_stores_a_partial_reply(api):
    ws, seen, cid = _paused_mid_stream(api)
    try:
        ws.s.settimeout(5)
        ws.send_frame(0x8, struct.pack("!H", 1001))
        assert ws.recv_close() == 1001
        harness.wait_for(lambda: api.db.sql(
            f"SELECT status FROM messages WHERE conversation_id = '{cid}' "
            "AND role = 'assistant'") == "partial", timeout=2,
            what="partial reply stored")
    finally:
        api.infer.proc.send_signal(signal.SIGCONT)
    ws.close()


def test_cancel_request_ends_the_reply_with_done_cancelled(api):
    """POST /api/v1/conversations/{id}/cancel (on any worker) stops the
    generation streamed over the socket: `done` with finish_reason
    "cancelled", the text so far stored as a partial reply with its
    counts, and the socket takes the next message."""
    for _ in range(5):
        ws, seen, cid = _paused_mid_stream(api)
        try:
            status, _, data = api.request(
                "POST", f"/api/v1/conversations/{cid}/cancel",
                headers={"Authorization": f"Bearer {api.alice}"})
            assert status in (202, 409), data
        finally:
            api.infer.proc.send_signal(signal.SIGCONT)
        ws.s.settimeout(20)
        while (ev := ws.recv_event())["type"] == "token":
            seen.append(ev)
        # the reply may have ended by itself before the pause (409) or in
        # the step the daemon was paused in: the stop came too late; again
        if status == 202 and ev.get("finish_reason") == "cancelled":
            break
        ws.close()
    assert ev["type"] == "done" and ev["finish_reason"] == "cancelled", ev
    where = f"conversation_id = '{cid}' AND role = 'assistant'"
    row = api.db.sql(f"SELECT id, status, finish_reason, prompt_tokens, "
                     f"completion_tokens, latency_ms FROM messages "
                     f"WHERE {where}").split("|")
    assert int(row[0]) == ev["message_id"] and row[1:3] == ["partial", "cancel"], row
    assert int(row[3]) > 0 and int(row[4]) == ev["usage"]["completion_tokens"] >= len(seen)
    assert float(row[5]) >= 0
    content = bytes.fromhex(api.db.sql(
        f"SELECT encode(convert_to(content, 'UTF8'), 'hex') FROM messages "
        f"WHERE {where}")).decode()
    # the same text (the stream cleans each piece of UTF-8 on its own, the
    # stored reply as a whole: a character split between pieces differs)
    ascii_only = lambda t: "".join(c for c in t if 32 < ord(c) < 127)  # noqa: E731
    assert ascii_only(content) == ascii_only("".join(e["text"] for e in seen))
    ws.send_json(chat(cid, "and now?"))
    while (ev := ws.recv_event())["type"] == "token":
        pass
    assert ev["type"] == "done" and ev["finish_reason"] in ("stop", "length"), ev
    ws.close()


def test_the_reply_is_in_the_context_when_done_arrives(api):
    """The WebSocket appends its reply to the conversation's Redis list
    before `done` goes out (regression: fire and forget, it could land
    after a message sent at once read the list): the next message, sent
    the moment `done` arrives, over SSE on any worker, has it in its
    prompt, and the list already holds it."""
    cid = new_conv(api)
    given = 0
    ws = connect(api)
    for k in range(3):
        ws.send_json(chat(cid, f"line {k}", max_tokens=4))
        while (ev := ws.recv_event())["type"] == "token":
            pass
        assert ev["type"] == "done", ev
        given += 1
        assert ev["context"]["turns"] + ev["context"]["dropped_turns"] == given, ev
        given += 1 if done_text(api, ev) else 0
        assert _redis(api, "LLEN", f"cinematch:conv:{cid}:turns").strip() == str(given)
        doc = _sse_message(api, cid, f"and {k}")
        given += 1
        assert doc["context"]["turns"] + doc["context"]["dropped_turns"] == given, doc
        given += 1 if doc["content"] else 0
    ws.close()


# --- last: kills the daemon ---------------------------------------------------

def test_daemon_killed_mid_stream_gives_an_error_event_and_stores_the_counts(api):
    """The reply of a daemon that died mid-stream is stored `error` with
    the counts it had published (the prompt, the tokens sampled so far)
    and its latency, as SSE stores it."""
    ws, seen, cid = _paused_mid_stream(api)
    api.infer.kill9()
    ws.s.settimeout(20)
    while (ev := ws.recv_event())["type"] == "token":
        seen.append(ev)
    assert ev["type"] == "error" and ev["error"]["code"] == "unavailable", ev
    assert ev["message_id"] > ev["user_message_id"] > 0
    where = f"conversation_id = '{cid}' AND role = 'assistant'"
    row = api.db.sql(f"SELECT status, finish_reason, error IS NOT NULL, prompt_tokens, "
                     f"completion_tokens, first_token_ms, latency_ms "
                     f"FROM messages WHERE {where}").split("|")
    assert row[:3] == ["error", "error", "t"], row
    assert int(row[3]) > 0 and int(row[4]) >= len(seen), row
    assert float(row[5]) >= 0 and float(row[6]) >= float(row[5]), row
    ws.close()

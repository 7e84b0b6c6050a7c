"""The request log's COPY rows (shared/src/logcopy.c) read back by PostgreSQL.

The nginx module writes each logged answer as a COPY text row: the text
fields through cm_copy_escape, the answer's JSON members through
cm_copy_log_members.  Here rows built by those same functions (through
tests/fixtures/logcopy/logcopy_filter.c, compiled with shared/src/logcopy.c)
holding odd characters in every text field go through `COPY request_logs
... FROM STDIN` into the migrated schema, and every field must come back
exactly: backslashes, tabs, newlines, CR, a literal "\\N", quotes, control
characters, UTF-8 and JSON escapes (\\u, surrogate pairs) in fallback_reason
and in detail.  The served path (the module, its batches and the counters)
is covered by test_serving_api.py.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))
from pgfixture import CINEMATCH_BIN as BIN, ROOT, PgServer, have_postgres  # noqa: E402

pytestmark = [
    pytest.mark.skipif(not have_postgres(), reason="PostgreSQL 15 not installed"),
    pytest.mark.skipif(not os.access(BIN, os.X_OK), reason=f"{BIN} not built"),
    pytest.mark.skipif(shutil.which("cc") is None, reason="no C compiler"),
]

# the module's statement (ngx_http_cinematch_serving.c), columns in order
COLS = ("ts, request_id, method, route, path, status, duration_ms, user_id,"
        " api_key_id, cache_hit, error_code, model_name, model_version,"
        " is_fallback, fallback_reason, detail")

ODD = ["plain", "back\\slash", "tab\there", "new\nline", "cr\rhere",
       "\\N", "\\\\N\\t", "quote\"s 'and' `ticks`", "ctl\x01\x07\x1b\x7f",
       "caf\u00e9 \u2603 \U0001f3ac", "{\"json\": [1]}", "end\\"]


@pytest.fixture(scope="module")
def filt(tmp_path_factory):
    exe = str(tmp_path_factory.mktemp("logcopy") / "logcopy_filter")
    subprocess.run(["cc", "-O1", "-g", "-fsanitize=address,undefined",
                    "-I", os.path.join(ROOT, "shared/include"),
                    os.path.join(ROOT, "tests/fixtures/logcopy/logcopy_filter.c"),
                    os.path.join(ROOT, "shared/src/logcopy.c"), "-o", exe],
                   check=True)

    def run(mode, data):
        r = subprocess.run([exe, mode], input=data.encode(), capture_output=True,
                           env=dict(os.environ, ASAN_OPTIONS="detect_leaks=1"))
        assert r.returncode in (0, 3), r.stderr.decode(errors="replace")
        return None if r.returncode == 3 else r.stdout.decode()
    return run


@pytest.fixture(scope="module")
def db():
    with PgServer() as server:
        yield server, server.create_database("logcopy", migrate=True)


def _row(filt, i, s, members):
    esc = lambda v: filt("escape", v)  # noqa: E731
    m = filt("members", members)
    assert m is not None
    return "\t".join([
        "2026-11-25 19:50:0%d.123+00" % (i % 10), esc("rid-%d" % i), esc("POST"),
        esc("/api/v1/" + s), esc("/api/v1/" + s + "/path"), "200", "3",
        str(i + 1), "\\N", "f", esc("code " + s), "recsys", m]) + "\n"


def _hex(v):
    return v.encode().hex()


def test_odd_characters_in_every_text_field_survive_copy_exactly(filt, db, tmp_path):
    pg, name = db
    rows, want = [], {}
    for i, s in enumerate(ODD):
        detail = {"endpoint": "recommend", "ids": [i, 2], "scores": [4.5, None],
                  "note": s, s: [s]}
        # both JSON spellings: escaped non-ASCII (the daemon may) and raw
        members = ('"model_version":"%d","is_fallback":true,'
                   '"fallback_reason":%s,"detail":%s'
                   % (i + 1, json.dumps(s, ensure_ascii=(i % 2 == 0)),
                      json.dumps(detail, ensure_ascii=(i % 2 == 1))))
        rows.append(_row(filt, i, s, members))
        want["rid-%d" % i] = (s, detail)
    f = tmp_path / "rows.copy"
    f.write_text("".join(rows))
    pg.psql(f"\\copy request_logs ({COLS}) FROM '{f}'", db=name)

    out = pg.psql("SELECT request_id, encode(convert_to(route, 'UTF8'), 'hex'),"
                  " encode(convert_to(path, 'UTF8'), 'hex'),"
                  " encode(convert_to(error_code, 'UTF8'), 'hex'),"
                  " encode(convert_to(fallback_reason, 'UTF8'), 'hex'),"
                  " encode(convert_to(detail::text, 'UTF8'), 'hex'),"
                  " model_version, is_fallback, cache_hit, api_key_id IS NULL,"
                  " model_name FROM request_logs ORDER BY user_id", db=name)
    got = [line.split("|") for line in out.splitlines()]
    assert len(got) == len(ODD)
    for i, g in enumerate(got):
        s, detail = want[g[0]]
        assert g[0] == "rid-%d" % i
        assert bytes.fromhex(g[1]).decode() == "/api/v1/" + s
        assert bytes.fromhex(g[2]).decode() == "/api/v1/" + s + "/path"
        assert bytes.fromhex(g[3]).decode() == "code " + s
        assert bytes.fromhex(g[4]).decode() == s
        assert json.loads(bytes.fromhex(g[5]).decode()) == detail
        assert g[6:] == [str(i + 1), "t", "f", "t", "recsys"]


def test_null_members_and_a_nul_byte_become_null_and_u_fffd(filt, db, tmp_path):
    pg, name = db
    row = _row(filt, 50, "nul\x00byte",
               '"model_version":null,"is_fallback":null,'
               '"fallback_reason":"a\\u0000b","detail":null')
    f = tmp_path / "rows.copy"
    f.write_text(row)
    pg.psql(f"\\copy request_logs ({COLS}) FROM '{f}'", db=name)
    out = pg.psql("SELECT path, fallback_reason, model_version IS NULL,"
                  " is_fallback IS NULL, detail IS NULL FROM request_logs"
                  " WHERE request_id = 'rid-50'", db=name)
    assert out == "/api/v1/nul\ufffdbyte/path|a\ufffdb|t|t|t"


def test_members_that_are_not_json_members_are_refused(filt):
    assert filt("members", '"detail":{"a":') is None
    assert filt("members", '"a":1,') is None

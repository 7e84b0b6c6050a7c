"""pytest fixtures over harness.py.

    backends  PostgreSQL + Redis, once per session (tests that stop one must
              start it again; see test_ngx_core.py)
    nginx     nginx with the cinematch module against backends, once per test
              module: 2 workers, 2 PostgreSQL connections each, 1 s query
              timeout; "cinematch_echo on" and a 1k body limit in location /
    workdir   the session's temporary directory (kept when CINEMATCH_KEEP_TMP
              is set, for its logs)

A test module that needs other directives builds its own harness.Nginx from
backends and workdir (see harness.py).
"""

import os
import shutil

import pytest

import harness


@pytest.fixture(scope="session")
def workdir():
    reason = harness.missing_prerequisites()
    if reason:
        pytest.skip(f"integration stack unavailable: {reason}")
    d = harness.make_workdir()
    yield d
    if os.environ.get("CINEMATCH_KEEP_TMP"):
        print(f"\nintegration work directory kept: {d}")
    else:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def backends(workdir):
    b = harness.Backends(workdir)
    try:
        b.start()
        yield b
    finally:
        b.stop()


@pytest.fixture(scope="module")
def nginx(request, workdir, backends):
    name = "nginx-" + request.module.__name__.rsplit(".", 1)[-1]
    ngx = harness.Nginx(workdir, pg=backends.pg, redis=backends.redis,
                        location_extra="cinematch_echo on;\n"
                                       "cinematch_max_body_size 1k;",
                        name=name, workers=2, pg_pool=2, pg_timeout="1s")
    try:
        ngx.start()
        yield ngx
    finally:
        ngx.stop()
    assert ngx.graceful, "nginx did not stop on SIGQUIT within 15 s"
    problems = ngx.log_problems()
    assert not problems, "nginx logged alerts:\n" + "\n".join(problems)

"""Integration harness: real PostgreSQL, Redis and nginx (with the cinematch
module) on free loopback ports inside one temporary directory.

Everything started here is stopped by stop()/close() and by the pytest
fixtures in conftest.py, also when a test fails.  Standard library only.

    with Stack() as s:                      # PostgreSQL + Redis + nginx
        status, headers, body = s.nginx.request("GET", "/health")

Pieces can be used alone, e.g. another nginx with extra directives against
running backends:

    ngx = Nginx(workdir, pg=backends.pg, redis=backends.redis,
                http_extra="cinematch_infer unix:/x.sock shm=/cm-x;",
                location_extra="cinematch_echo on;")
    ngx.start(); ...; ngx.stop()
"""

import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# CINEMATCH_NGX_MODULE picks another build of the module (e.g. one built
# with -fsanitize=address); CINEMATCH_NGX_PRELOAD is then put in nginx's
# LD_PRELOAD (libasan must come first in an uninstrumented nginx).
MODULE = Path(os.environ.get("CINEMATCH_NGX_MODULE",
                             ROOT / "build" / "ngx_http_cinematch_module.so"))
NGX_PRELOAD = os.environ.get("CINEMATCH_NGX_PRELOAD", "")
PG_BIN = Path(os.environ.get("CINEMATCH_PG_BIN", "/usr/lib/postgresql/15/bin"))


class HarnessError(RuntimeError):
    pass


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(predicate, timeout=10.0, interval=0.05, what="condition"):
    """Poll predicate() until it returns a true value; return that value."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
            if value:
                return value
        except Exception as exc:  # noqa: BLE001 - reported on timeout
            last_exc = exc
        time.sleep(interval)
    raise HarnessError(f"timed out after {timeout}s waiting for {what}"
                       + (f" (last error: {last_exc!r})" if last_exc else ""))


def missing_prerequisites():
    """A reason the stack cannot run here, or None."""
    if not MODULE.exists():
        return f"{MODULE} not built (run ./build.sh build)"
    for tool in ("nginx", "redis-server"):
        if shutil.which(tool) is None:
            return f"{tool} not installed (run ./build.sh deps)"
    if not (PG_BIN / "initdb").exists():
        return f"PostgreSQL binaries not found in {PG_BIN}"
    return None


def _unprivileged_user():
    """PostgreSQL refuses to run as root: pick a system user to run it."""
    for name in ("postgres", "nobody"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise HarnessError("no unprivileged user (postgres or nobody) to run PostgreSQL")


class Postgres:
    """A throw-away PostgreSQL cluster (trust auth, fsync off)."""

    def __init__(self, workdir, port=None, user="cinematch", dbname="cinematch"):
        self.dir = Path(workdir) / "pg"
        self.data = self.dir / "data"
        self.sockdir = self.dir / "sock"
        self.logfile = self.dir / "postgres.log"
        self.port = port or free_port()
        self.user = user
        self.dbname = dbname
        self._as = None
        if os.geteuid() == 0:
            self._as = _unprivileged_user()

    @property
    def conninfo(self):
        return (f"host=127.0.0.1 port={self.port} user={self.user} "
                f"dbname={self.dbname} sslmode=disable connect_timeout=5")

    def _run(self, args, **kw):
        cmd = [str(a) for a in args]
        if self._as is not None:
            cmd = ["runuser", "-u", self._as.pw_name, "--"] + cmd
        return subprocess.run(cmd, check=True, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, **kw)

    def _prepare(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        self.sockdir.mkdir(exist_ok=True)
        if self._as is not None:
            for p in (self.dir, self.sockdir):
                os.chown(p, self._as.pw_uid, self._as.pw_gid)

    def start(self):
        if not self.data.exists():
            self._prepare()
            try:
                self._run([PG_BIN / "initdb", "-D", self.data, "-U", self.user,
                           "-A", "trust", "-E", "UTF8", "--no-sync"])
            except subprocess.CalledProcessError as exc:
                raise HarnessError(f"initdb failed:\n{exc.stdout}") from exc
            created = True
        else:
            created = False
        opts = (f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1 "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
                "-c log_statement=all")
        try:
            self._run([PG_BIN / "pg_ctl", "-D", self.data, "-l", self.logfile,
                       "-o", opts, "-w", "-t", "30", "start"])
        except subprocess.CalledProcessError as exc:
            log = self.logfile.read_text() if self.logfile.exists() else ""
            raise HarnessError(f"pg_ctl start failed:\n{exc.stdout}\n{log}") from exc
        if created:
            self.psql(f"CREATE DATABASE {self.dbname}", dbname="postgres")

    def psql(self, sql, dbname=None):
        """Run SQL through psql (as the cluster's superuser); return stdout."""
        return self._run([PG_BIN / "psql", "-h", "127.0.0.1", "-p", self.port,
                          "-U", self.user, "-d", dbname or self.dbname,
                          "-v", "ON_ERROR_STOP=1", "-qAt", "-c", sql]).stdout

    def running(self):
        return (self.data / "postmaster.pid").exists()

    def stop(self, mode="fast"):
        if not self.running():
            return
        try:
            self._run([PG_BIN / "pg_ctl", "-D", self.data, "-m", mode, "-w",
                       "-t", "30", "stop"])
        except subprocess.CalledProcessError:
            pass


class Redis:
    """redis-server in the foreground, no persistence."""

    def __init__(self, workdir, port=None):
        self.dir = Path(workdir) / "redis"
        self.port = port or free_port()
        self.proc = None

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    @property
    def unix_address(self):
        """The same server on its unix socket (cinematch_redis unix:...)."""
        return f"unix:{self.dir / 'redis.sock'}"

    def start(self):
        self.dir.mkdir(parents=True, exist_ok=True)
        log = open(self.dir / "redis.log", "ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--daemonize", "no",
             "--unixsocket", str(self.dir / "redis.sock"),
             "--unixsocketperm", "700", "--dir", str(self.dir)],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for(self.ping, timeout=10, what=f"redis on {self.port}")

    def ping(self):
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")

    def stop(self):
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None


def _is_zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


NGINX_CONF = """\
load_module {module};
daemon off;
master_process on;
worker_processes {workers};
{user}
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log {log_level};

events {{
    worker_connections 1024;
}}

http {{
    access_log {prefix}/logs/access.log;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;

{backends}
{http_extra}

    server {{
        listen 127.0.0.1:{port};

        location / {{
            cinematch;
{location_extra}
        }}
{server_extra}
    }}
}}
"""


class Nginx:
    """nginx -p <prefix> with the cinematch module in the foreground."""

    def __init__(self, workdir, pg=None, redis=None, port=None, workers=2,
                 http_extra="", location_extra="", server_extra="", user=None,
                 log_level="info", name="nginx", pg_pool=2, pg_timeout="3s",
                 redis_address=None):
        self.prefix = Path(workdir) / name
        self.port = port or free_port()
        self.pg = pg
        self.redis = redis
        self.workers = workers
        self.http_extra = http_extra
        self.location_extra = location_extra
        self.server_extra = server_extra
        self.log_level = log_level
        self.pg_pool = pg_pool
        self.pg_timeout = pg_timeout
        self.redis_address = redis_address
        # As root, workers run as root too by default, so that they can map
        # the segments the test's inference daemons create (mode 0660).
        if user is None and os.geteuid() == 0:
            user = "root root"
        self.user = user
        self.proc = None
        self.graceful = None

    @property
    def conf_path(self):
        return self.prefix / "nginx.conf"

    @property
    def error_log(self):
        return self.prefix / "logs" / "error.log"

    def write_conf(self):
        backends = []
        if self.pg is not None:
            backends.append(f'    cinematch_postgres "{self.pg.conninfo}";')
            backends.append(f"    cinematch_postgres_pool {self.pg_pool};")
            backends.append(f"    cinematch_query_timeout {self.pg_timeout};")
        if self.redis is not None:
            backends.append("    cinematch_redis "
                            f"{self.redis_address or self.redis.address};")
            backends.append("    cinematch_redis_timeout 1s;")
        conf = NGINX_CONF.format(
            module=MODULE, workers=self.workers, prefix=self.prefix,
            user=f"user {self.user};" if self.user else "",
            log_level=self.log_level, port=self.port,
            backends="\n".join(backends),
            http_extra=_indent(self.http_extra, 4),
            location_extra=_indent(self.location_extra, 12),
            server_extra=_indent(self.server_extra, 8))
        self.conf_path.write_text(conf)

    def start(self):
        for d in ("logs", "tmp"):
            (self.prefix / d).mkdir(parents=True, exist_ok=True)
        self.write_conf()
        env = dict(os.environ)
        if NGX_PRELOAD:
            env["LD_PRELOAD"] = NGX_PRELOAD
        check = subprocess.run(["nginx", "-t", "-p", str(self.prefix), "-c",
                                str(self.conf_path)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)
        if check.returncode != 0:
            raise HarnessError(f"nginx -t failed:\n{check.stdout}")
        out = open(self.prefix / "logs" / "stderr.log", "ab")
        self.proc = subprocess.Popen(
            ["nginx", "-p", str(self.prefix), "-c", str(self.conf_path)],
            stdout=out, stderr=subprocess.STDOUT, env=env)
        out.close()
        wait_for(lambda: self._alive() and self.request("GET", "/health")[0] == 200,
                 timeout=15, what=f"nginx on {self.port}")

    def _alive(self):
        if self.proc.poll() is not None:
            raise HarnessError(f"nginx exited with {self.proc.returncode}:\n"
                               + self.log_tail())
        return True

    def worker_pids(self):
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)],
                             capture_output=True, text=True).stdout
        return {int(p) for p in out.split()}

    def stop(self):
        """Graceful stop (SIGQUIT); self.graceful says whether it was enough."""
        if self.proc is None:
            return
        self.graceful = True
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.graceful = False
                self.proc.terminate()
                try:
                    self.proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self.proc = None

    def reload(self):
        self.write_conf()
        self.proc.send_signal(signal.SIGHUP)

    def worker_pids(self):
        """The master's children now (worker and helper process ids)."""
        pid = self.proc.pid
        try:
            with open(f"/proc/{pid}/task/{pid}/children") as f:
                return {int(x) for x in f.read().split()}
        except OSError:
            return set()

    def wait_gone(self, pids, timeout=30):
        """Wait until the processes `pids` (old workers after a reload) have
        exited, so later connections cannot reach a worker that is
        shutting down."""
        def gone():
            return not any(os.path.exists(f"/proc/{p}") and
                           not _is_zombie(p) for p in pids)
        wait_for(gone, timeout=timeout, what="the old nginx workers to exit")

    def log_tail(self, lines=40):
        if not self.error_log.exists():
            return ""
        return "\n".join(self.error_log.read_text(errors="replace").splitlines()[-lines:])

    def log_problems(self):
        """Lines at alert/crit/emerg level: never expected in a test run."""
        if not self.error_log.exists():
            return []
        return [line for line in self.error_log.read_text(errors="replace").splitlines()
                if "[alert]" in line or "[crit]" in line or "[emerg]" in line]

    def request(self, method, path, body=None, headers=None, timeout=10,
                chunked=False):
        """One request on a new connection: (status, headers, body bytes).
        Header names in the returned dict are lower-case; repeated headers
        are joined with ", "."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            if isinstance(body, (dict, list)):
                body = json.dumps(body).encode()
                headers = {"Content-Type": "application/json", **(headers or {})}
            if chunked:
                conn.putrequest(method, path)
                for k, v in (headers or {}).items():
                    conn.putheader(k, v)
                conn.putheader("Transfer-Encoding", "chunked")
                conn.endheaders()
                step = 4096
                for i in range(0, len(body or b""), step):
                    part = body[i:i + step]
                    conn.send(b"%x\r\n%s\r\n" % (len(part), part))
                conn.send(b"0\r\n\r\n")
            else:
                conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            data = resp.read()
            headers = {}
            for k, v in resp.getheaders():
                k = k.lower()
                headers[k] = f"{headers[k]}, {v}" if k in headers else v
            return resp.status, headers, data
        finally:
            conn.close()

    def json(self, method, path, body=None, headers=None, **kw):
        """Like request(), with the body decoded as JSON."""
        status, hdrs, data = self.request(method, path, body, headers, **kw)
        try:
            doc = json.loads(data) if data else None
        except ValueError as exc:
            raise AssertionError(f"{method} {path}: not JSON ({exc}): {data[:200]!r}")
        return status, hdrs, doc


def _indent(text, n):
    return "\n".join(" " * n + line if line.strip() else line
                     for line in (text or "").splitlines())


class Backends:
    """PostgreSQL and Redis, started together."""

    def __init__(self, workdir):
        self.workdir = Path(workdir)
        self.pg = Postgres(self.workdir)
        self.redis = Redis(self.workdir)

    def start(self):
        self.pg.start()
        self.redis.start()

    def stop(self):
        errors = []
        for piece in (self.redis, self.pg):
            try:
                piece.stop()
            except Exception as exc:  # noqa: BLE001 - stop everything first
                errors.append(exc)
        if errors:
            raise errors[0]


def make_workdir(prefix="cinematch-it-"):
    """A temp dir that an unprivileged PostgreSQL can traverse."""
    d = Path(tempfile.mkdtemp(prefix=prefix))
    d.chmod(0o755)
    return d


class Stack:
    """PostgreSQL + Redis + nginx in one temp dir; a context manager."""

    def __init__(self, workdir=None, keep=False, **nginx_kw):
        self.workdir = Path(workdir) if workdir else make_workdir()
        self.keep = keep or bool(os.environ.get("CINEMATCH_KEEP_TMP"))
        self.backends = Backends(self.workdir)
        self.pg = self.backends.pg
        self.redis = self.backends.redis
        self.nginx = Nginx(self.workdir, pg=self.pg, redis=self.redis, **nginx_kw)

    def start(self):
        try:
            self.backends.start()
            self.nginx.start()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self):
        try:
            self.nginx.stop()
        finally:
            self.backends.stop()
            if not self.keep:
                shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

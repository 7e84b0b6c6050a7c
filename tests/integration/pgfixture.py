"""pgfixture: a throwaway PostgreSQL 15 server for integration tests.

    from pgfixture import PgServer
    with PgServer() as pg:              # initdb + start on a free loopback port
        pg.create_database("t1")
        pg.psql("SELECT 1", db="t1")    # -> "1"
        dsn = pg.dsn("t1")              # libpq conninfo for the C code
        pg.create_database("t2", migrate=True)   # + every sql/NNN_*.sql applied

Everything lives in a temporary directory that is removed on stop().  When
the tests run as root the server runs as an unprivileged account (PostgreSQL
refuses root): `nobody` unless PGFIXTURE_USER names another.  Authentication
is `trust` on 127.0.0.1 and the private unix socket only: a test server, not
a deployment.  Standard library only (Debian's /usr/bin/python3).

Also usable from a shell for manual checks:
    python3 tests/integration/pgfixture.py      # prints a DSN, Ctrl-C stops
"""

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time

PG_BIN = os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin")
ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
CINEMATCH_BIN = os.environ.get("CINEMATCH_BIN", os.path.join(ROOT, "build", "cinematch"))
SUPERUSER = "postgres"


def free_port():
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def have_postgres():
    return os.access(os.path.join(PG_BIN, "initdb"), os.X_OK)


class PgError(RuntimeError):
    """psql failed; .stderr holds PostgreSQL's message."""

    def __init__(self, msg, stderr=""):
        super().__init__(msg)
        self.stderr = stderr


class PgServer:
    def __init__(self, port=None, keep=False):
        self.port = port or free_port()
        self.keep = keep or os.environ.get("PGFIXTURE_KEEP") == "1"
        self.tmp = None
        self.data = None
        self.sockdir = None
        self.log = None
        self.running = False
        self._user = None
        if os.geteuid() == 0:
            self._user = pwd.getpwnam(os.environ.get("PGFIXTURE_USER", "nobody"))

    # --- lifecycle ---------------------------------------------------------

    def _run_as_server(self, argv, **kw):
        """Run a server-side binary (initdb, pg_ctl) as the unprivileged user."""
        if self._user is not None:
            kw.setdefault("user", self._user.pw_uid)
            kw.setdefault("group", self._user.pw_gid)
            kw.setdefault("extra_groups", [])
        env = dict(os.environ, LC_ALL="C.UTF-8", TZ="UTC")
        env.pop("PGDATA", None)
        return subprocess.run(argv, env=env, capture_output=True, text=True,
                              cwd=self.tmp, **kw)

    def start(self):
        if not have_postgres():
            raise RuntimeError(f"PostgreSQL not found in {PG_BIN} (package postgresql-15)")
        self.tmp = tempfile.mkdtemp(prefix="cm-pg-")
        self.data = os.path.join(self.tmp, "data")
        self.sockdir = os.path.join(self.tmp, "sock")
        self.log = os.path.join(self.tmp, "postgresql.log")
        os.mkdir(self.data, 0o700)
        os.mkdir(self.sockdir, 0o755)
        if self._user is not None:
            # the server user must traverse tmp and own what it writes
            os.chmod(self.tmp, 0o755)
            for p in (self.data, self.sockdir):
                os.chown(p, self._user.pw_uid, self._user.pw_gid)
            with open(self.log, "w"):
                pass
            os.chown(self.log, self._user.pw_uid, self._user.pw_gid)

        r = self._run_as_server([
            os.path.join(PG_BIN, "initdb"), "-D", self.data, "-U", SUPERUSER,
            "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"])
        if r.returncode != 0:
            self._cleanup()
            raise RuntimeError(f"initdb failed:\n{r.stdout}\n{r.stderr}")

        r = self._pg_ctl_start()
        if r.returncode != 0:
            log = self.read_log()
            self._cleanup()
            raise RuntimeError(f"pg_ctl start failed:\n{r.stdout}\n{r.stderr}\n{log}")
        self.running = True
        return self

    def _pg_ctl_start(self):
        # fsync off: a test server's data is thrown away anyway
        opts = (f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1"
                " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
                " -c max_connections=50 -c shared_buffers=32MB")
        return self._run_as_server([
            os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-l", self.log,
            "-o", opts, "-w", "-t", "60", "start"])

    def stop(self):
        if self.running:
            self._run_as_server([os.path.join(PG_BIN, "pg_ctl"), "-D", self.data,
                                 "-m", "fast", "-w", "-t", "60", "stop"])
            self.running = False
        self._cleanup()

    def kill(self):
        """Stop abruptly (immediate shutdown), keeping the data dir."""
        if self.running:
            self._run_as_server([os.path.join(PG_BIN, "pg_ctl"), "-D", self.data,
                                 "-m", "immediate", "-w", "stop"])
            self.running = False

    def restart(self):
        """Start again after kill(), on the same port and data."""
        r = self._pg_ctl_start()
        if r.returncode != 0:
            raise RuntimeError(f"pg_ctl restart failed:\n{r.stderr}\n{self.read_log()}")
        self.running = True

    def _cleanup(self):
        if self.tmp and not self.keep:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # --- clients -----------------------------------------------------------

    def dsn(self, db="postgres"):
        return (f"host=127.0.0.1 port={self.port} dbname={db} user={SUPERUSER}"
                " connect_timeout=5")

    def env(self, db="postgres"):
        """libpq environment for child processes (PGHOST, PGPORT, ...)."""
        return dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(self.port),
                    PGUSER=SUPERUSER, PGDATABASE=db, PGCONNECT_TIMEOUT="5")

    def psql(self, sql, db="postgres", check=True):
        """Run SQL with psql (ON_ERROR_STOP); return unaligned tuples-only
        stdout stripped.  Raises PgError when check and psql fails."""
        r = subprocess.run(
            [os.path.join(PG_BIN, "psql"), "-X", "-q", "-A", "-t",
             "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1", "-p", str(self.port),
             "-U", SUPERUSER, "-d", db],
            input=sql, capture_output=True, text=True,
            env=dict(os.environ, PGCONNECT_TIMEOUT="5"))
        if check and r.returncode != 0:
            raise PgError(f"psql failed: {r.stderr.strip()}", r.stderr)
        return r.stdout.strip() if check else r

    def create_database(self, name, migrate=False):
        """CREATE DATABASE; with migrate=True also apply sql/ with
        `cinematch migrate` (the schema every component expects)."""
        self.psql(f'CREATE DATABASE "{name}"')
        if migrate:
            self.migrate(name)
        return name

    def migrate(self, db, sql_dir=None):
        r = subprocess.run([CINEMATCH_BIN, "migrate", "--dsn", self.dsn(db), "--dir",
                            sql_dir or os.path.join(ROOT, "sql")],
                           capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise PgError(f"cinematch migrate failed: {r.stderr.strip()}", r.stderr)
        return r.stdout

    def read_log(self):
        try:
            with open(self.log, encoding="utf-8", errors="replace") as f:
                return f.read()[-4000:]
        except OSError:
            return ""


if __name__ == "__main__":
    with PgServer() as pg:
        print(pg.dsn(), flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass

"""`cinematch infer` started for a test: its own shm name and socket in the
test's work dir, stopped (SIGTERM, then SIGKILL) at the end."""

import os
import signal
import subprocess
import time
from pathlib import Path

from harness import ROOT, HarnessError, wait_for

BIN = ROOT / os.environ.get("CM_BUILD_DIR", "build") / "cinematch"


class Infer:
    def __init__(self, workdir, name="infer", slots=64, extra=()):
        self.dir = Path(workdir) / name
        self.dir.mkdir(parents=True, exist_ok=True)
        self.socket = str(self.dir / "infer.sock")
        self.shm = f"/cm-it-{os.getpid()}-{name}"
        self.slots = slots
        self.extra = list(extra)
        self.proc = None

    @property
    def directive(self):
        return f"cinematch_infer unix:{self.socket} shm={self.shm};"

    def start(self):
        log = open(self.dir / "infer.log", "ab")
        self.proc = subprocess.Popen(
            [str(BIN), "infer", "--socket", self.socket, "--shm", self.shm,
             "--slots", str(self.slots), "--drain-timeout", "5", *self.extra],
            stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_for(lambda: self._alive() and os.path.exists(self.socket),
                 timeout=10, what="cinematch infer socket")

    def _alive(self):
        if self.proc.poll() is not None:
            raise HarnessError(f"cinematch infer exited with {self.proc.returncode}:\n"
                               + self.log())
        return True

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self, timeout=10):
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise HarnessError("cinematch infer did not drain in time")

    def log(self):
        p = self.dir / "infer.log"
        return p.read_text(errors="replace") if p.exists() else ""

"""A real PostgreSQL server for the tests: Debian's postgresql package, a cluster made by initdb in a temp dir,
listening on loopback only (a free port, and a Unix socket in the data dir), started with pg_ctl and stopped by
its postmaster's PID. As root (CI), it runs as the package's ``postgres`` user: initdb refuses root."""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path


def _bin_dir() -> Path | None:
    found = shutil.which("initdb")
    if found:
        return Path(os.path.realpath(found)).parent
    dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda d: int(Path(d).parent.name))
    return Path(dirs[-1]) if dirs else None


def unavailable_reason() -> str | None:
    b = _bin_dir()
    if b is None or not (b / "pg_ctl").exists():
        return "PostgreSQL is not installed (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            import pwd

            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a postgres user to run the server as"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalPostgres:
    def __init__(self):
        self.bin = _bin_dir()
        # not under pytest's basetemp: that is private to root (0700), and the server runs as postgres
        self.root = Path(tempfile.mkdtemp(prefix="loraforge-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.as_root = os.geteuid() == 0
        self.pid: int | None = None

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        full = (["runuser", "-u", "postgres", "--"] if self.as_root else []) + list(cmd)
        proc = subprocess.run(full, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd[:2])} failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
        return proc

    def start(self) -> LocalPostgres:
        os.chmod(self.root, 0o755)
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-U", "loraforge", "--auth=trust", "-E", "UTF8")
        opts = f"-p {self.port} -k {self.data} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run(
            str(self.bin / "pg_ctl"), "-D", str(self.data), "-o", opts, "-l", str(self.data / "log"), "-w", "start"
        )
        self.pid = int((self.data / "postmaster.pid").read_text().splitlines()[0])
        return self

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://loraforge@127.0.0.1:{self.port}/{db}"

    def new_database(self) -> str:
        """A fresh empty database; its URL."""
        import psycopg

        name = f"t{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return self.url(name)

    def stop(self) -> None:
        if self.pid is None:
            return
        try:
            os.kill(self.pid, signal.SIGINT)  # the postmaster's "fast" shutdown
            deadline = time.time() + 30
            while time.time() < deadline:
                os.kill(self.pid, 0)
                time.sleep(0.1)
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.pid = None
        shutil.rmtree(self.root, ignore_errors=True)

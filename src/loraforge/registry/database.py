"""The registry's database: one SQLite file in WAL mode, its schema migrations, and write transactions.

Safe under concurrent writers: every write is one ``BEGIN IMMEDIATE`` transaction, so versions are numbered
under SQLite's write lock and a killed writer leaves no trace. A file that is not a loraforge registry is refused
and left as it was.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import os
import random
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

from .errors import DiskFull, NoRegistry, NotARegistry, NotFound, RegistryError
from .schema import create_schema, migrate

log = logging.getLogger(__name__)

DEFAULT_PATH = "registry.sqlite"
ENV_VAR = "LORAFORGE_REGISTRY"
_SQLITE_MAGIC = b"SQLite format 3\x00"


# filesystems shared between hosts (/proc/mounts' type), where SQLite's file locking is not to be trusted
NETWORK_FS = ("nfs", "nfs4", "lustre", "gpfs", "cifs", "smb3", "smbfs", "beegfs", "ceph", "glusterfs", "fuse.sshfs")


def network_filesystem(path: Path, mounts: str | None = None) -> str | None:
    """The network filesystem type ``path`` (or the directory it would be created in) lives on, else None."""
    if mounts is None:
        try:
            mounts = Path("/proc/mounts").read_text()
        except OSError:
            return None
    target = Path(os.path.abspath(path))
    best, kind = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == Path(point) or Path(point) in target.parents
        if inside and len(point) > len(best):
            best, kind = point, fields[2]
    return kind if kind in NETWORK_FS else None


def now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


def _full(e: sqlite3.Error) -> bool:
    return getattr(e, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def _busy(e: sqlite3.Error) -> bool:
    return getattr(e, "sqlite_errorcode", None) in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)


class Database:
    """The connection to one registry file. ``create=False`` (what read-only commands use) refuses a path with no
    registry instead of creating an empty one, so a mistyped $LORAFORGE_REGISTRY says so."""

    def __init__(self, path: str | os.PathLike | None = None, create: bool = True):
        self.path = Path(path or os.environ.get(ENV_VAR) or DEFAULT_PATH)
        fs = network_filesystem(self.path)
        if fs:
            raise RegistryError(
                f"{self.path}: on a {fs} network filesystem, where SQLite's locks and its WAL (shared memory on "
                "one host) do not hold; keep the SQLite registry on a local disk of the host that runs the "
                "workflow (Snakemake runs the registry rules there)"
            )
        if create and not self.path.exists():
            self._create()
        self._check_file(create)
        self.conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        try:
            self.conn.execute("PRAGMA busy_timeout = 60000")
            self._use_wal()
            self.conn.execute("PRAGMA foreign_keys = ON")
            self.migrated_from = self._migrate()
        except sqlite3.DatabaseError as e:
            self.conn.close()
            if _full(e):
                raise DiskFull(f"{self.path}: no space left on device ({e})") from None
            raise NotARegistry(f"{self.path}: not a usable loraforge registry ({e}); left untouched") from None
        except RegistryError:
            self.conn.close()
            raise

    def _create(self) -> None:
        """A new registry, whole before it has its name: built under a private name, then hard-linked into place
        (which fails if another writer got there first; theirs is used). Nobody sees a half-made registry, and an
        empty file at the path is never one of ours."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise RegistryError(f"{self.path}: cannot create the registry's directory ({e.strerror})") from None
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.new")
        try:
            conn = sqlite3.connect(str(tmp), isolation_level=None)
            try:
                conn.row_factory = sqlite3.Row
                self.conn = conn
                conn.execute("PRAGMA journal_mode = WAL")
                self._migrate()
            finally:
                conn.close()
            try:
                os.link(tmp, self.path)
                log.info("%s: no registry there; created a new one", self.path)
            except FileExistsError:
                pass
        except sqlite3.Error as e:
            if _full(e):
                raise DiskFull(f"{self.path}: no space left on device creating the registry") from None
            raise
        finally:
            for f in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()

    def _use_wal(self, timeout: float = 60) -> None:
        """Switch to WAL (persistent in the file). Switching needs the database to itself and SQLite's busy
        handler does not wait for that, so writers creating a registry at the same moment retry here."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                    self.conn.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError as e:
                if not _busy(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02 + random.random() * 0.05)

    def _check_file(self, create: bool) -> None:
        if not self.path.exists():
            if not create:
                where = f"${ENV_VAR}" if os.environ.get(ENV_VAR) == str(self.path) else "the registry path"
                raise NoRegistry(f"{self.path}: no registry there ({where}); nothing has been registered to it")
            return
        if self.path.is_dir():
            raise NotARegistry(f"{self.path}: registry path is a directory")
        with open(self.path, "rb") as f:
            head = f.read(16)
        if not head:
            raise NotARegistry(f"{self.path}: an empty file, not a loraforge registry; refusing to use or overwrite it")
        if head != _SQLITE_MAGIC:
            raise NotARegistry(f"{self.path}: not a SQLite database; refusing to use or overwrite it")
        # another program's SQLite database: found out read-only, before anything (WAL mode, a transaction) would
        # change a byte of it
        try:
            ro = sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=60)
            try:
                tables = {r[0] for r in ro.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            finally:
                ro.close()
        except sqlite3.DatabaseError as e:
            raise NotARegistry(f"{self.path}: not a usable loraforge registry ({e}); left untouched") from None
        if tables and "meta" not in tables:
            raise NotARegistry(f"{self.path}: a SQLite database that is not a loraforge registry; left untouched")

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding SQLite's write lock from its start (no lost updates)."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            if _full(e):
                raise DiskFull(f"{self.path}: no space left on device ({e})") from None
            raise
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        try:
            self.conn.execute("COMMIT")
        except sqlite3.OperationalError as e:
            self.conn.execute("ROLLBACK")
            if _full(e):
                raise DiskFull(f"{self.path}: no space left on device; nothing was registered") from None
            raise

    def _migrate(self) -> int:
        """Create the schema in a new registry, or bring an older one to the current version; returns the version it
        had (0: a new registry)."""
        with self.write() as c:
            tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "meta" not in tables:
                raise NotARegistry(f"{self.path}: a SQLite database that is not a loraforge registry; left untouched")
            if not tables:
                create_schema(c, "sqlite")
                return 0
            row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            current = int(row[0]) if row else 0
            migrate(c, current, self.path)
        return current

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def schema_version(self) -> int:
        return int(self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])

    def close(self) -> None:
        self.conn.close()

    def require_name(self, name: str) -> None:
        if not self.conn.execute("SELECT 1 FROM versions WHERE name = ?", (name,)).fetchone():
            raise NotFound(f"{self.path}: no versions of {name!r}")

    def default_store(self) -> Path:
        """``<file>.store/`` beside the registry file."""
        return Path(self.path).resolve().with_name(Path(self.path).name + ".store")

    def after_copy(self, c, tables) -> None:
        """Nothing: SQLite numbers new rows after the largest id."""

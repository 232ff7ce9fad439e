"""The registry's store on SQLite: versions with lineage and measured metrics, MLflow-style aliases, rollback.

One database file (WAL mode), safe under concurrent writers: every write is one ``BEGIN IMMEDIATE``
transaction, so versions are allocated under SQLite's write lock and a killed writer leaves no trace.
A version is one registered artifact (a GGUF) of a name (the adapter); registering identical content again
returns the existing version. Aliases (``production``, ``staging``...) point at versions; every move is
appended to a history, and ``rollback`` moves an alias back to where it pointed before.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import random
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ..errors import PipelineError
from ..io.hashing import sha256_file

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
DEFAULT_PATH = "registry.sqlite"
ENV_VAR = "LORAFORGE_REGISTRY"
_SQLITE_MAGIC = b"SQLite format 3\x00"

# Each entry migrates the schema from version i to i + 1.
MIGRATIONS = [
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE versions (
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        version INTEGER NOT NULL,
        quant_type TEXT NOT NULL,
        content_sha256 TEXT NOT NULL,
        lineage TEXT NOT NULL,
        metrics TEXT NOT NULL,
        created_at TEXT NOT NULL,
        UNIQUE (name, version),
        UNIQUE (name, content_sha256)
    );
    CREATE TABLE files (
        version_id INTEGER NOT NULL REFERENCES versions(id),
        role TEXT NOT NULL,
        path TEXT NOT NULL,
        sha256 TEXT NOT NULL,
        size INTEGER NOT NULL,
        PRIMARY KEY (version_id, role)
    );
    CREATE TABLE aliases (
        name TEXT NOT NULL,
        alias TEXT NOT NULL,
        version INTEGER NOT NULL,
        updated_at TEXT NOT NULL,
        PRIMARY KEY (name, alias),
        FOREIGN KEY (name, version) REFERENCES versions(name, version)
    );
    CREATE TABLE alias_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL,
        alias TEXT NOT NULL,
        action TEXT NOT NULL,
        version INTEGER NOT NULL,
        previous_version INTEGER,
        at TEXT NOT NULL
    );
    """,
]


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    quant_type: str
    content_sha256: str
    files: dict[str, dict]
    lineage: dict
    metrics: dict
    created_at: str
    aliases: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        return self.files["model"]["path"]

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "quant_type": self.quant_type,
            "content_sha256": self.content_sha256,
            "files": self.files,
            "lineage": self.lineage,
            "metrics": self.metrics,
            "created_at": self.created_at,
            "aliases": list(self.aliases),
        }


class Registry:
    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path or os.environ.get(ENV_VAR) or DEFAULT_PATH)
        self._check_file()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        try:
            self.conn.execute("PRAGMA busy_timeout = 60000")
            self._use_wal()
            self.conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as e:
            self.conn.close()
            raise PipelineError(f"{self.path}: not a usable loraforge registry ({e}); left untouched") from None

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
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(0.02 + random.random() * 0.05)

    def _check_file(self) -> None:
        if not self.path.exists():
            return
        if self.path.is_dir():
            raise PipelineError(f"{self.path}: registry path is a directory")
        with open(self.path, "rb") as f:
            head = f.read(16)
        if head and head != _SQLITE_MAGIC:
            raise PipelineError(f"{self.path}: not a SQLite database; refusing to use or overwrite it")

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, holding SQLite's write lock from its start (no lost updates)."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def _migrate(self) -> None:
        with self._write() as c:
            tables = {r[0] for r in c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if tables and "meta" not in tables:
                raise PipelineError(f"{self.path}: a SQLite database that is not a loraforge registry; left untouched")
            current = 0
            if "meta" in tables:
                row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                current = int(row[0]) if row else 0
            if current > SCHEMA_VERSION:
                raise PipelineError(
                    f"{self.path}: registry schema {current} is newer than this loraforge supports ({SCHEMA_VERSION})"
                )
            for i in range(current, SCHEMA_VERSION):
                for stmt in MIGRATIONS[i].split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(i + 1),))
                log.info("%s: registry schema migrated to version %d", self.path, i + 1)

    def schema_version(self) -> int:
        return int(self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])

    def close(self) -> None:
        self.conn.close()

    # ------------------------------------------------------------------ versions

    def register(
        self,
        name: str,
        files: dict[str, str | os.PathLike],
        quant_type: str,
        lineage: dict | None = None,
        metrics: dict | None = None,
    ) -> tuple[ModelVersion, bool]:
        """Register artifact files (``files["model"]`` is the GGUF); returns (version, created).

        Identical content under the same name returns the existing version and creates nothing.
        """
        if "model" not in files:
            raise PipelineError("register: files must include the 'model' artifact")
        recs = {}
        for role, p in files.items():
            p = Path(p)
            if not p.is_file():
                raise PipelineError(f"{p}: artifact to register does not exist")
            recs[role] = {"path": str(p.resolve()), "sha256": sha256_file(p), "size": p.stat().st_size}
        content = hashlib.sha256(
            json.dumps({"quant_type": quant_type, "model": recs["model"]["sha256"]}, sort_keys=True).encode()
        ).hexdigest()
        with self._write() as c:
            row = c.execute(
                "SELECT version FROM versions WHERE name = ? AND content_sha256 = ?", (name, content)
            ).fetchone()
            if row:
                created, version = False, row[0]
            else:
                version = c.execute(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE name = ?", (name,)
                ).fetchone()[0]
                cur = c.execute(
                    "INSERT INTO versions (name, version, quant_type, content_sha256, lineage, metrics, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (
                        name,
                        version,
                        quant_type,
                        content,
                        json.dumps(lineage or {}, sort_keys=True),
                        json.dumps(metrics or {}, sort_keys=True),
                        _now(),
                    ),
                )
                for role, r in recs.items():
                    c.execute(
                        "INSERT INTO files (version_id, role, path, sha256, size) VALUES (?, ?, ?, ?, ?)",
                        (cur.lastrowid, role, r["path"], r["sha256"], r["size"]),
                    )
                created = True
        return self.get(name, version), created

    def _row_to_version(self, row) -> ModelVersion:
        files = {
            f["role"]: {"path": f["path"], "sha256": f["sha256"], "size": f["size"]}
            for f in self.conn.execute("SELECT * FROM files WHERE version_id = ? ORDER BY role", (row["id"],))
        }
        aliases = tuple(
            a[0]
            for a in self.conn.execute(
                "SELECT alias FROM aliases WHERE name = ? AND version = ? ORDER BY alias", (row["name"], row["version"])
            )
        )
        return ModelVersion(
            row["name"],
            row["version"],
            row["quant_type"],
            row["content_sha256"],
            files,
            json.loads(row["lineage"]),
            json.loads(row["metrics"]),
            row["created_at"],
            aliases,
        )

    def get(self, name: str, version: int) -> ModelVersion:
        q = "SELECT * FROM versions WHERE name = ? AND version = ?"
        row = self.conn.execute(q, (name, int(version))).fetchone()
        if not row:
            raise PipelineError(f"{self.path}: no version {version} of {name!r}")
        return self._row_to_version(row)

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        if name:
            rows = self.conn.execute("SELECT * FROM versions WHERE name = ? ORDER BY version", (name,))
        else:
            rows = self.conn.execute("SELECT * FROM versions ORDER BY name, version")
        return [self._row_to_version(r) for r in rows.fetchall()]

    def get_latest(self, name: str, alias: str | None = None, quant_type: str | None = None) -> ModelVersion:
        """The version an alias points at, else the newest version (optionally of one quant type)."""
        if alias:
            q = "SELECT version FROM aliases WHERE name = ? AND alias = ?"
            row = self.conn.execute(q, (name, alias)).fetchone()
            if not row:
                raise PipelineError(f"{self.path}: {name!r} has no alias {alias!r}")
            return self.get(name, row[0])
        q = "SELECT * FROM versions WHERE name = ?" + (" AND quant_type = ?" if quant_type else "")
        args = (name, quant_type) if quant_type else (name,)
        row = self.conn.execute(q + " ORDER BY version DESC LIMIT 1", args).fetchone()
        if not row:
            raise PipelineError(
                f"{self.path}: no registered version of {name!r}"
                + (f" with quant type {quant_type}" if quant_type else "")
            )
        return self._row_to_version(row)

    # ------------------------------------------------------------------ aliases

    def promote(self, name: str, version: int, alias: str) -> ModelVersion:
        """Point ``alias`` at ``version`` (recorded in the alias history)."""
        with self._write() as c:
            if not c.execute("SELECT 1 FROM versions WHERE name = ? AND version = ?", (name, version)).fetchone():
                raise PipelineError(f"{self.path}: no version {version} of {name!r} to promote")
            prev = c.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
            prev_v = prev[0] if prev else None
            c.execute(
                "INSERT OR REPLACE INTO aliases (name, alias, version, updated_at) VALUES (?, ?, ?, ?)",
                (name, alias, version, _now()),
            )
            c.execute(
                "INSERT INTO alias_history (name, alias, action, version, previous_version, at)"
                " VALUES (?, ?, 'promote', ?, ?, ?)",
                (name, alias, version, prev_v, _now()),
            )
        return self.get(name, version)

    def rollback(self, name: str, alias: str) -> ModelVersion:
        """Move ``alias`` back to the version it pointed at before its current one."""
        with self._write() as c:
            cur = c.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
            if not cur:
                raise PipelineError(f"{self.path}: {name!r} has no alias {alias!r} to roll back")
            events = c.execute(
                "SELECT action, version FROM alias_history WHERE name = ? AND alias = ? ORDER BY id", (name, alias)
            ).fetchall()
            target = _previous_position(events)
            if target is None:
                raise PipelineError(
                    f"{self.path}: cannot roll back {name!r} alias {alias!r}: no earlier version (it points at "
                    f"v{cur[0]} and has never pointed elsewhere)"
                )
            c.execute(
                "UPDATE aliases SET version = ?, updated_at = ? WHERE name = ? AND alias = ?",
                (target, _now(), name, alias),
            )
            c.execute(
                "INSERT INTO alias_history (name, alias, action, version, previous_version, at)"
                " VALUES (?, ?, 'rollback', ?, ?, ?)",
                (name, alias, target, cur[0], _now()),
            )
        return self.get(name, target)

    def history(self, name: str, alias: str | None = None) -> list[dict]:
        q = "SELECT * FROM alias_history WHERE name = ?" + (" AND alias = ?" if alias else "") + " ORDER BY id"
        rows = self.conn.execute(q, (name, alias) if alias else (name,)).fetchall()
        return [dict(r) for r in rows]

    def verify(self, name: str | None = None) -> list[dict]:
        """Re-hash every registered file; report each as ok, missing or changed."""
        out = []
        for v in self.versions(name):
            for role, f in v.files.items():
                p = Path(f["path"])
                if not p.exists():
                    status = "missing"
                elif p.stat().st_size != f["size"] or sha256_file(p) != f["sha256"]:
                    status = "changed"
                else:
                    status = "ok"
                out.append({"name": v.name, "version": v.version, "role": role, "path": f["path"], "status": status})
        return out


def _previous_position(events) -> int | None:
    """Where a rollback goes, from the alias's events oldest first [(action, version)].

    Positions form an undo stack: a promote pushes its version (unless it is already current), a rollback
    pops. So rolling back twice steps back twice, and a rollback never lands on a version the alias was
    rolled back from.
    """
    stack: list[int] = []
    for action, version in events:
        if action == "promote":
            if not stack or stack[-1] != version:
                stack.append(version)
        elif stack:
            stack.pop()
    return stack[-2] if len(stack) >= 2 else None

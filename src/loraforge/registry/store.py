"""The registry's store on SQLite: versions of a model name, their artifacts, tags, aliases, A/B comparisons.

A version is one adapter revision (the base's and each adapter's content and weight: its lineage); its
artifacts (each GGUF, the merged model, adapter GGUFs, importance matrices) hang under it with their own hash,
size and measured metrics. Registering an artifact of a revision seen before adds it to that version;
registering the same bytes again changes nothing. Registered files live in a content-addressed store
(:mod:`.files`) and are verified whenever they are handed out. Aliases (``production``, ``staging``) point at
versions in the manner of MLflow; every move is appended to a history with its reason and evidence, and
``rollback`` moves an alias back to where it pointed before (an undo stack).

One database file in WAL mode, safe under concurrent writers: every write is one ``BEGIN IMMEDIATE``
transaction, so versions are numbered under SQLite's write lock and a killed writer leaves no trace.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import random
import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PipelineError
from ..io.hashing import sha256_file
from .files import ArtifactStore
from .schema import MIGRATIONS, SCHEMA_VERSION, revision_key

log = logging.getLogger(__name__)

DEFAULT_PATH = "registry.sqlite"
ENV_VAR = "LORAFORGE_REGISTRY"
_SQLITE_MAGIC = b"SQLite format 3\x00"
ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Artifact:
    kind: str  # gguf, merged, lora_gguf, imatrix
    variant: str  # Q4_K_M, BF16, ...
    sha256: str
    size: int
    store_path: str | None  # the registry's own copy (None: recorded, not stored, e.g. a merged directory)
    source_path: str  # where the pipeline built it
    metrics: dict
    created_at: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ModelVersion:
    name: str
    version: int
    revision: str
    lineage: dict
    created_at: str
    artifacts: tuple[Artifact, ...] = ()
    aliases: tuple[str, ...] = ()
    tags: dict = field(default_factory=dict)

    def artifact(self, variant: str, kind: str | None = None) -> Artifact:
        for a in self.artifacts:
            if a.variant == variant and (kind is None or a.kind == kind):
                return a
        have = ", ".join(f"{a.kind} {a.variant}" for a in self.artifacts) or "none"
        raise PipelineError(f"{self.name} v{self.version} has no {kind or 'artifact'} {variant} (it has: {have})")

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "version": self.version,
            "revision": self.revision,
            "lineage": self.lineage,
            "created_at": self.created_at,
            "aliases": list(self.aliases),
            "tags": self.tags,
            "artifacts": [a.to_dict() for a in self.artifacts],
        }


class Registry:
    """A registry file. ``create=False`` (what read-only commands use) refuses a path with no registry instead
    of creating an empty one, so a mistyped $LORAFORGE_REGISTRY says so."""

    def __init__(self, path: str | os.PathLike | None = None, create: bool = True, store_mode: str = "copy"):
        self.path = Path(path or os.environ.get(ENV_VAR) or DEFAULT_PATH)
        self._check_file(create)
        self.store = ArtifactStore(self.path.resolve().with_name(self.path.name + ".store"), store_mode)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise PipelineError(f"{self.path}: cannot create the registry's directory ({e.strerror})") from None
        self.conn = sqlite3.connect(str(self.path), timeout=60, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        try:
            self.conn.execute("PRAGMA busy_timeout = 60000")
            self._use_wal()
            self.conn.execute("PRAGMA foreign_keys = ON")
            self._migrate()
        except sqlite3.DatabaseError as e:
            self.conn.close()
            if "full" in str(e):
                raise PipelineError(f"{self.path}: no space left on device ({e})") from None
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

    def _check_file(self, create: bool) -> None:
        if not self.path.exists():
            if not create:
                where = f"${ENV_VAR}" if os.environ.get(ENV_VAR) == str(self.path) else "the registry path"
                raise PipelineError(f"{self.path}: no registry there ({where}); nothing has been registered to it")
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
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as e:
            if "full" in str(e):
                raise PipelineError(f"{self.path}: no space left on device ({e})") from None
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
            if "full" in str(e):
                raise PipelineError(f"{self.path}: no space left on device; nothing was registered") from None
            raise

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
                MIGRATIONS[i](c)
                c.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('schema_version', ?)", (str(i + 1),))
                log.info("%s: registry schema migrated to version %d", self.path, i + 1)
        if current and current < SCHEMA_VERSION:
            self._store_unstored()

    def _store_unstored(self) -> None:
        """Artifacts registered by path only (schema 1): into the store where the file still has the registered
        content; otherwise left without a stored copy and reported by verify."""
        rows = self.conn.execute(
            "SELECT id, sha256, source_path FROM artifacts WHERE store_path IS NULL AND kind != 'merged'"
        ).fetchall()
        for r in rows:
            src = Path(r["source_path"])
            if src.is_file() and sha256_file(src) == r["sha256"]:
                stored = self.store.put(src, r["sha256"])
                with self._write() as c:
                    c.execute("UPDATE artifacts SET store_path = ? WHERE id = ?", (str(stored), r["id"]))
            else:
                log.warning("%s: changed or gone since it was registered; its registered bytes are lost", src)

    def schema_version(self) -> int:
        return int(self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])

    def close(self) -> None:
        self.conn.close()

    # ------------------------------------------------------------------ versions and artifacts

    def register(
        self,
        name: str,
        lineage: dict,
        kind: str,
        variant: str,
        path: str | os.PathLike,
        metrics: dict | None = None,
        sha256: str | None = None,
        store: bool = True,
    ) -> tuple[ModelVersion, bool, bool]:
        """Register one artifact of the revision ``lineage`` describes; returns (version, version created,
        artifact created). ``store=False`` records a (large) directory by its fingerprint without copying it."""
        p = Path(path)
        if not p.exists():
            raise PipelineError(f"{p}: artifact to register does not exist")
        if sha256 is None:
            sha256 = sha256_file(p)
        size = p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        stored = str(self.store.put(p, sha256)) if store else None
        rev = revision_key(lineage)
        with self._write() as c:
            row = c.execute("SELECT id, version FROM versions WHERE name = ? AND revision = ?", (name, rev)).fetchone()
            created_version = row is None
            if created_version:
                number = c.execute(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE name = ?", (name,)
                ).fetchone()[0]
                vid = c.execute(
                    "INSERT INTO versions (name, version, revision, lineage, created_at) VALUES (?, ?, ?, ?, ?)",
                    (name, number, rev, json.dumps(lineage, sort_keys=True), _now()),
                ).lastrowid
            else:
                vid, number = row["id"], row["version"]
            old = c.execute(
                "SELECT sha256 FROM artifacts WHERE version_id = ? AND kind = ? AND variant = ?", (vid, kind, variant)
            ).fetchone()
            if old is not None and old["sha256"] != sha256:
                raise PipelineError(
                    f"{p}: {name} v{number} already has a {kind} {variant} with other content ({old['sha256'][:12]}); "
                    "a revision's artifacts are immutable (rebuilding it must give the same bytes)"
                )
            created_artifact = old is None
            if created_artifact:
                c.execute(
                    "INSERT INTO artifacts (version_id, kind, variant, sha256, size, store_path, source_path,"
                    " metrics, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        vid,
                        kind,
                        variant,
                        sha256,
                        size,
                        stored,
                        str(p.resolve()),
                        json.dumps(metrics or {}, sort_keys=True),
                        _now(),
                    ),
                )
        return self.get(name, number), created_version, created_artifact

    def _version(self, row) -> ModelVersion:
        arts = tuple(
            Artifact(
                a["kind"],
                a["variant"],
                a["sha256"],
                a["size"],
                a["store_path"],
                a["source_path"],
                json.loads(a["metrics"]),
                a["created_at"],
            )
            for a in self.conn.execute(
                "SELECT * FROM artifacts WHERE version_id = ? ORDER BY kind, variant", (row["id"],)
            )
        )
        aliases = tuple(
            a[0]
            for a in self.conn.execute(
                "SELECT alias FROM aliases WHERE name = ? AND version = ? ORDER BY alias", (row["name"], row["version"])
            )
        )
        tags = {
            t["key"]: t["value"]
            for t in self.conn.execute("SELECT key, value FROM tags WHERE version_id = ?", (row["id"],))
        }
        return ModelVersion(
            row["name"],
            row["version"],
            row["revision"],
            json.loads(row["lineage"]),
            row["created_at"],
            arts,
            aliases,
            tags,
        )

    def names(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT name FROM versions ORDER BY name")]

    def _require_name(self, name: str) -> None:
        if not self.conn.execute("SELECT 1 FROM versions WHERE name = ?", (name,)).fetchone():
            raise PipelineError(f"{self.path}: no versions of {name!r}")

    def get(self, name: str, version: int) -> ModelVersion:
        row = self.conn.execute(
            "SELECT * FROM versions WHERE name = ? AND version = ?", (name, int(version))
        ).fetchone()
        if not row:
            self._require_name(name)
            raise PipelineError(f"{self.path}: no version {version} of {name!r}")
        return self._version(row)

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        if name:
            self._require_name(name)
            rows = self.conn.execute("SELECT * FROM versions WHERE name = ? ORDER BY version", (name,))
        else:
            rows = self.conn.execute("SELECT * FROM versions ORDER BY name, version")
        return [self._version(r) for r in rows.fetchall()]

    def resolve(
        self, name: str, version: int | None = None, alias: str | None = None, variant: str | None = None
    ) -> ModelVersion:
        """A version by number, by alias, else the newest (the newest with ``variant``, when given)."""
        if version is not None:
            return self.get(name, version)
        if alias:
            row = self.conn.execute(
                "SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)
            ).fetchone()
            if not row:
                self._require_name(name)
                raise PipelineError(f"{self.path}: {name!r} has no alias {alias!r}")
            return self.get(name, row[0])
        self._require_name(name)
        q = (
            "SELECT v.* FROM versions v WHERE v.name = ?"
            + (" AND EXISTS (SELECT 1 FROM artifacts a WHERE a.version_id = v.id AND a.variant = ?)" if variant else "")
            + " ORDER BY v.version DESC LIMIT 1"
        )
        row = self.conn.execute(q, (name, variant) if variant else (name,)).fetchone()
        if not row:
            raise PipelineError(f"{self.path}: no version of {name!r} has a {variant}")
        return self._version(row)

    def artifact_file(
        self, name: str, variant: str, version: int | None = None, alias: str | None = None, kind: str | None = None
    ) -> tuple[ModelVersion, Path]:
        """The registered file of one artifact, verified to hold the registered bytes."""
        mv = self.resolve(name, version, alias, variant)
        art = mv.artifact(variant, kind)
        if art.store_path is None:
            raise PipelineError(
                f"{name} v{mv.version} {variant}: recorded at {art.source_path} but not stored "
                "in the registry (nothing verified to hand out)"
            )
        self.store.verify(Path(art.store_path), art.sha256)
        return mv, Path(art.store_path)

    # ------------------------------------------------------------------ tags

    def tag(self, name: str, version: int, key: str, value: str) -> ModelVersion:
        mv = self.get(name, version)
        with self._write() as c:
            vid = c.execute("SELECT id FROM versions WHERE name = ? AND version = ?", (name, version)).fetchone()[0]
            c.execute("INSERT OR REPLACE INTO tags (version_id, key, value) VALUES (?, ?, ?)", (vid, key, str(value)))
        return self.get(mv.name, mv.version)

    # ------------------------------------------------------------------ aliases

    def promote(
        self, name: str, version: int, alias: str, reason: str | None = None, evidence: dict | None = None
    ) -> ModelVersion:
        """Point ``alias`` at ``version``; the move, its reason and evidence go to the alias history."""
        if not ALIAS_RE.match(alias or ""):
            raise PipelineError(f"alias {alias!r}: a name of letters, digits, '.', '_' or '-', starting with a letter")
        self.get(name, version)
        with self._write() as c:
            prev = c.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
            c.execute(
                "INSERT OR REPLACE INTO aliases (name, alias, version, updated_at) VALUES (?, ?, ?, ?)",
                (name, alias, version, _now()),
            )
            c.execute(
                "INSERT INTO alias_history (name, alias, action, version, previous_version, at, reason, evidence)"
                " VALUES (?, ?, 'promote', ?, ?, ?, ?, ?)",
                (
                    name,
                    alias,
                    version,
                    prev[0] if prev else None,
                    _now(),
                    reason,
                    json.dumps(evidence) if evidence else None,
                ),
            )
        return self.get(name, version)

    def record_decision(self, name: str, alias: str, version: int, reason: str, evidence: dict | None = None) -> None:
        """A promotion that was refused: in the history, without moving the alias."""
        cur = self.conn.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
        with self._write() as c:
            c.execute(
                "INSERT INTO alias_history (name, alias, action, version, previous_version, at, reason, evidence)"
                " VALUES (?, ?, 'refused', ?, ?, ?, ?, ?)",
                (
                    name,
                    alias,
                    version,
                    cur[0] if cur else None,
                    _now(),
                    reason,
                    json.dumps(evidence) if evidence else None,
                ),
            )

    def rollback(self, name: str, alias: str) -> ModelVersion:
        """Move ``alias`` back to the version it pointed at before its current one."""
        with self._write() as c:
            cur = c.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
            if not cur:
                raise PipelineError(f"{self.path}: {name!r} has no alias {alias!r} to roll back")
            events = c.execute(
                "SELECT action, version FROM alias_history WHERE name = ? AND alias = ?"
                " AND action != 'refused' ORDER BY id",
                (name, alias),
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
                "INSERT INTO alias_history (name, alias, action, version, previous_version, at, reason)"
                " VALUES (?, ?, 'rollback', ?, ?, ?, 'rollback')",
                (name, alias, target, cur[0], _now()),
            )
        return self.get(name, target)

    def history(self, name: str, alias: str | None = None) -> list[dict]:
        self._require_name(name)
        q = "SELECT * FROM alias_history WHERE name = ?" + (" AND alias = ?" if alias else "") + " ORDER BY id"
        rows = self.conn.execute(q, (name, alias) if alias else (name,)).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["evidence"] = json.loads(d["evidence"]) if d.get("evidence") else None
            out.append(d)
        return out

    def aliases(self, name: str | None = None) -> list[dict]:
        q = "SELECT * FROM aliases" + (" WHERE name = ?" if name else "") + " ORDER BY name, alias"
        return [dict(r) for r in self.conn.execute(q, (name,) if name else ())]

    # ------------------------------------------------------------------ comparisons

    def add_comparison(self, name: str, version_a: int, version_b: int, variant: str, result: dict) -> int:
        self.get(name, version_a), self.get(name, version_b)
        with self._write() as c:
            return c.execute(
                "INSERT INTO comparisons (name, version_a, version_b, variant, result, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (name, version_a, version_b, variant, json.dumps(result, sort_keys=True), _now()),
            ).lastrowid

    def comparisons(self, name: str | None = None) -> list[dict]:
        q = "SELECT * FROM comparisons" + (" WHERE name = ?" if name else "") + " ORDER BY id"
        return [{**dict(r), "result": json.loads(r["result"])} for r in self.conn.execute(q, (name,) if name else ())]

    # ------------------------------------------------------------------ verification

    def verify(self, name: str | None = None) -> list[dict]:
        """Every stored artifact re-hashed: ok, missing or changed; recorded-only artifacts are 'not stored'."""
        out = []
        for v in self.versions(name):
            for a in v.artifacts:
                if a.store_path is None:
                    status = "not stored"
                else:
                    try:
                        self.store.verify(Path(a.store_path), a.sha256)
                        status = "ok"
                    except PipelineError as e:
                        status = "missing" if "missing" in str(e) else "changed"
                out.append(
                    {
                        "name": v.name,
                        "version": v.version,
                        "kind": a.kind,
                        "variant": a.variant,
                        "status": status,
                        "path": a.store_path or a.source_path,
                    }
                )
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

"""Aliases (``production``, ``staging``) point at versions in the manner of MLflow; every move is appended to a
history with its reason and evidence, ``rollback`` moves an alias back to where it pointed before (an undo
stack), and A/B comparisons between versions are kept with the decisions they support."""

from __future__ import annotations

import json
import re
from pathlib import Path

from .backend import Backend
from .database import now
from .errors import NotFound, RegistryError
from .filestore import ArtifactStore
from .versions import ModelVersion

ALIAS_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,63}$")


class Aliases:
    """Aliases, their history and A/B comparisons (a part of :class:`Registry`, which gives ``get``)."""

    db: Backend
    store: ArtifactStore

    def promote(
        self, name: str, version: int, alias: str, reason: str | None = None, evidence: dict | None = None
    ) -> ModelVersion:
        """Point ``alias`` at ``version``; the move, its reason and evidence go to the alias history."""
        if not ALIAS_RE.match(alias or ""):
            raise RegistryError(f"alias {alias!r}: a name of letters, digits, '.', '_' or '-', starting with a letter")
        for a in self.get(name, version).artifacts:  # an alias hands out files: they must be the registered bytes
            if a.store_path is not None:
                try:
                    self.store.verify(Path(a.store_path), a.sha256)
                except RegistryError as e:
                    raise RegistryError(f"{name} v{version} not promoted to {alias}: {e}") from None
        with self.db.write() as c:
            prev = c.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
            c.execute(
                "INSERT INTO aliases (name, alias, version, updated_at) VALUES (?, ?, ?, ?) ON CONFLICT (name, alias)"
                " DO UPDATE SET version = excluded.version, updated_at = excluded.updated_at",
                (name, alias, version, now()),
            )
            _history(c, name, alias, "promote", version, prev[0] if prev else None, reason, evidence)
        return self.get(name, version)

    def record_decision(self, name: str, alias: str, version: int, reason: str, evidence: dict | None = None) -> None:
        """A promotion that was refused: in the history, without moving the alias."""
        cur = self.db.conn.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
        with self.db.write() as c:
            _history(c, name, alias, "refused", version, cur[0] if cur else None, reason, evidence)

    def rollback(self, name: str, alias: str) -> ModelVersion:
        """Move ``alias`` back to the version it pointed at before its current one."""
        with self.db.write() as c:
            cur = c.execute("SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)).fetchone()
            if not cur:
                raise NotFound(f"{self.db.path}: {name!r} has no alias {alias!r} to roll back")
            events = c.execute(
                "SELECT action, version FROM alias_history WHERE name = ? AND alias = ?"
                " AND action != 'refused' ORDER BY id",
                (name, alias),
            ).fetchall()
            target = _previous_position(events)
            if target is None:
                raise RegistryError(
                    f"{self.db.path}: cannot roll back {name!r} alias {alias!r}: no earlier version (it points at "
                    f"v{cur[0]} and has never pointed elsewhere)"
                )
            c.execute(
                "UPDATE aliases SET version = ?, updated_at = ? WHERE name = ? AND alias = ?",
                (target, now(), name, alias),
            )
            _history(c, name, alias, "rollback", target, cur[0], "rollback", None)
        return self.get(name, target)

    def history(self, name: str, alias: str | None = None) -> list[dict]:
        self.db.require_name(name)
        q = "SELECT * FROM alias_history WHERE name = ?" + (" AND alias = ?" if alias else "") + " ORDER BY id"
        rows = self.db.conn.execute(q, (name, alias) if alias else (name,)).fetchall()
        out = []
        for r in rows:
            d = dict(r)
            d["evidence"] = json.loads(d["evidence"]) if d.get("evidence") else None
            out.append(d)
        return out

    def aliases(self, name: str | None = None) -> list[dict]:
        q = "SELECT * FROM aliases" + (" WHERE name = ?" if name else "") + " ORDER BY name, alias"
        return [dict(r) for r in self.db.conn.execute(q, (name,) if name else ())]

    def add_comparison(self, name: str, version_a: int, version_b: int, variant: str, result: dict) -> int:
        self.get(name, version_a), self.get(name, version_b)
        with self.db.write() as c:
            return c.execute(
                "INSERT INTO comparisons (name, version_a, version_b, variant, result, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
                (name, version_a, version_b, variant, json.dumps(result, sort_keys=True), now()),
            ).fetchone()[0]

    def comparisons(self, name: str | None = None) -> list[dict]:
        q = "SELECT * FROM comparisons" + (" WHERE name = ?" if name else "") + " ORDER BY id"
        return [
            {**dict(r), "result": json.loads(r["result"])} for r in self.db.conn.execute(q, (name,) if name else ())
        ]


def _history(c, name: str, alias: str, action: str, version: int, previous, reason, evidence) -> None:
    """One entry of an alias's history: a move (promote, rollback) or a refused promotion."""
    c.execute(
        "INSERT INTO alias_history (name, alias, action, version, previous_version, at, reason, evidence)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (name, alias, action, version, previous, now(), reason, json.dumps(evidence) if evidence else None),
    )


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

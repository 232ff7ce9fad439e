"""Versions and their artifacts: a version is one model (the base's and each adapter's content and weight, and the
settings that define the merged model: its lineage); its artifacts (each GGUF, the merged model, LoRA GGUFs,
GPU-serving checkpoints) hang under it with their own hash, size, build settings and measured metrics.
Registering an artifact of a model seen before adds it to that version, whichever forms the config builds;
registering the same bytes again changes nothing; other bytes for the same artifact replace it when its settings
changed (a re-calibration: the old one stays in the version's history) and are refused when they did not."""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..io.hashing import sha256_file
from .backend import Backend
from .database import now
from .errors import ImmutableArtifact, NotFound, RegistryError
from .filestore import ArtifactStore
from .schema import revision_key

log = logging.getLogger(__name__)
# the columns an artifact keeps in its version's history when a rebuild with other settings replaces it
HISTORY_COLUMNS = (
    "version_id",
    "kind",
    "variant",
    "sha256",
    "size",
    "store_path",
    "source_path",
    "metrics",
    "settings",
    "created_at",
)


@dataclass(frozen=True)
class Artifact:
    kind: str  # gguf, merged, hf-quant, vllm-lora
    variant: str  # Q4_K_M, BF16, lora-F16, GPTQ-W4A16, ...
    sha256: str
    size: int
    store_path: str | None  # the registry's own copy, where the store is now (None: recorded, not stored)
    source_path: str  # where the pipeline built it
    metrics: dict
    created_at: str
    settings: dict = field(default_factory=dict)  # the build settings of this artifact (quantization, calibration)
    superseded_at: str | None = None  # set on an entry of a version's history: replaced then

    def measured(self) -> list[tuple[str, dict]]:
        """(label, evaluation) for each evaluation of this artifact: one, or for a LoRA GGUF one per base GGUF type
        it was measured on (``lora-F16 on Q8_0``)."""
        per_base = self.metrics.get("evaluations")
        if per_base:
            return [(f"{self.variant} on {base}", ev) for base, ev in per_base.items()]
        ev = self.metrics.get("evaluation")
        return [(self.variant, ev)] if ev else []

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
    history: tuple[Artifact, ...] = ()  # artifacts replaced by a rebuild with other settings, oldest first

    def artifact(self, variant: str, kind: str | None = None) -> Artifact:
        for a in self.artifacts:
            if a.variant == variant and (kind is None or a.kind == kind):
                return a
        have = ", ".join(f"{a.kind} {a.variant}" for a in self.artifacts) or "none"
        raise NotFound(f"{self.name} v{self.version} has no {kind or 'artifact'} {variant} (it has: {have})")

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
            "history": [a.to_dict() for a in self.history],
        }


class Versions:
    """Reading and writing versions and artifacts (a part of :class:`Registry`)."""

    db: Backend
    store: ArtifactStore

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
        settings: dict | None = None,
        hashes=None,
    ) -> tuple[ModelVersion, bool, bool]:
        """Register one artifact of the revision ``lineage`` describes; returns (version, version created,
        artifact created or replaced). ``store=False`` records a (large) directory by its fingerprint without
        copying it. ``settings``: the artifact's own build settings. Other bytes for an artifact the version has
        replace it when they were built with other settings (the old one goes to the version's history) and are
        refused when built with the same ones (a rebuild must give the same bytes). ``hashes``: the HashCache
        ``sha256`` came from, which lets a hard-linking store keep its link unread (ArtifactStore.put)."""
        p = Path(path)
        if not p.exists():
            raise RegistryError(f"{p}: artifact to register does not exist")
        if sha256 is None:
            sha256 = sha256_file(p)
        size = p.stat().st_size if p.is_file() else sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
        stored = self.store.relative(self.store.put(p, sha256, hashes)) if store else None
        rev = revision_key(lineage)
        with self.db.write() as c:
            row = c.execute("SELECT id, version FROM versions WHERE name = ? AND revision = ?", (name, rev)).fetchone()
            created_version = row is None
            if created_version:
                number = c.execute(
                    "SELECT COALESCE(MAX(version), 0) + 1 FROM versions WHERE name = ?", (name,)
                ).fetchone()[0]
                vid = c.execute(
                    "INSERT INTO versions (name, version, revision, lineage, created_at) VALUES (?, ?, ?, ?, ?)"
                    " RETURNING id",
                    (name, number, rev, json.dumps(lineage, sort_keys=True), now()),
                ).fetchone()[0]
            else:
                vid, number = row["id"], row["version"]
            old = c.execute(
                "SELECT * FROM artifacts WHERE version_id = ? AND kind = ? AND variant = ?", (vid, kind, variant)
            ).fetchone()
            settings_json = json.dumps(settings or {}, sort_keys=True)
            if old is not None and old["sha256"] != sha256:
                if json.loads(old["settings"]) == (settings or {}):
                    raise ImmutableArtifact(
                        f"{p}: {name} v{number} already has a {kind} {variant} with other content "
                        f"({old['sha256'][:12]}) built with the same settings; a version's artifacts are immutable "
                        "(rebuilding one must give the same bytes)"
                    )
                c.execute(
                    "INSERT INTO artifact_history (version_id, kind, variant, sha256, size, store_path, source_path,"
                    " metrics, settings, created_at, superseded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    tuple(old[k] for k in HISTORY_COLUMNS) + (now(),),
                )
                c.execute("DELETE FROM artifacts WHERE id = ?", (old["id"],))
                log.info(
                    "%s v%d: %s %s rebuilt with other settings replaces %s",
                    name,
                    number,
                    kind,
                    variant,
                    old["sha256"][:12],
                )
            created_artifact = old is None or old["sha256"] != sha256
            if not created_artifact and metrics and json.loads(old["metrics"]) != metrics:
                # the same bytes measured again or further (a LoRA GGUF on a base type added to the config)
                c.execute(
                    "UPDATE artifacts SET metrics = ?, settings = ? WHERE id = ?",
                    (json.dumps(metrics or {}, sort_keys=True), settings_json, old["id"]),
                )
                log.info("%s v%d: %s %s: its measured numbers updated", name, number, kind, variant)
            if created_artifact:
                c.execute(
                    "INSERT INTO artifacts (version_id, kind, variant, sha256, size, store_path, source_path,"
                    " metrics, settings, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        vid,
                        kind,
                        variant,
                        sha256,
                        size,
                        stored,
                        str(p.resolve()),
                        json.dumps(metrics or {}, sort_keys=True),
                        settings_json,
                        now(),
                    ),
                )
        return self.get(name, number), created_version, created_artifact

    def _artifact(self, a, superseded_at=None) -> Artifact:
        return Artifact(
            a["kind"],
            a["variant"],
            a["sha256"],
            a["size"],
            self.store.absolute(a["store_path"]),
            a["source_path"],
            json.loads(a["metrics"]),
            a["created_at"],
            json.loads(a["settings"]),
            superseded_at,
        )

    def _version(self, row) -> ModelVersion:
        arts = tuple(
            self._artifact(a)
            for a in self.db.conn.execute(
                "SELECT * FROM artifacts WHERE version_id = ? ORDER BY kind, variant", (row["id"],)
            ).fetchall()
        )
        history = tuple(
            self._artifact(a, a["superseded_at"])
            for a in self.db.conn.execute(
                "SELECT * FROM artifact_history WHERE version_id = ? ORDER BY superseded_at, kind, variant",
                (row["id"],),
            ).fetchall()
        )
        aliases = tuple(
            a[0]
            for a in self.db.conn.execute(
                "SELECT alias FROM aliases WHERE name = ? AND version = ? ORDER BY alias", (row["name"], row["version"])
            )
        )
        tags = {
            t["key"]: t["value"]
            for t in self.db.conn.execute("SELECT key, value FROM tags WHERE version_id = ?", (row["id"],))
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
            history,
        )

    def names(self) -> list[str]:
        return [r[0] for r in self.db.conn.execute("SELECT DISTINCT name FROM versions ORDER BY name")]

    def get(self, name: str, version: int) -> ModelVersion:
        row = self.db.conn.execute(
            "SELECT * FROM versions WHERE name = ? AND version = ?", (name, int(version))
        ).fetchone()
        if not row:
            self.db.require_name(name)
            raise NotFound(f"{self.db.path}: no version {version} of {name!r}")
        return self._version(row)

    def versions(self, name: str | None = None) -> list[ModelVersion]:
        if name:
            self.db.require_name(name)
            rows = self.db.conn.execute("SELECT * FROM versions WHERE name = ? ORDER BY version", (name,))
        else:
            rows = self.db.conn.execute("SELECT * FROM versions ORDER BY name, version")
        return [self._version(r) for r in rows.fetchall()]

    def resolve(
        self, name: str, version: int | None = None, alias: str | None = None, variant: str | None = None
    ) -> ModelVersion:
        """A version by number, by alias, else the newest (the newest with ``variant``, when given)."""
        if version is not None:
            return self.get(name, version)
        if alias:
            row = self.db.conn.execute(
                "SELECT version FROM aliases WHERE name = ? AND alias = ?", (name, alias)
            ).fetchone()
            if not row:
                self.db.require_name(name)
                raise NotFound(f"{self.db.path}: {name!r} has no alias {alias!r}")
            return self.get(name, row[0])
        self.db.require_name(name)
        q = (
            "SELECT v.* FROM versions v WHERE v.name = ?"
            + (" AND EXISTS (SELECT 1 FROM artifacts a WHERE a.version_id = v.id AND a.variant = ?)" if variant else "")
            + " ORDER BY v.version DESC LIMIT 1"
        )
        row = self.db.conn.execute(q, (name, variant) if variant else (name,)).fetchone()
        if not row:
            raise NotFound(f"{self.db.path}: no version of {name!r} has a {variant}")
        return self._version(row)

    def artifact_file(
        self, name: str, variant: str, version: int | None = None, alias: str | None = None, kind: str | None = None
    ) -> tuple[ModelVersion, Path]:
        """The registered file of one artifact, verified to hold the registered bytes."""
        mv = self.resolve(name, version, alias, variant)
        art = mv.artifact(variant, kind)
        if art.store_path is None:
            raise NotFound(
                f"{name} v{mv.version} {variant}: recorded at {art.source_path} but not stored "
                "in the registry (nothing verified to hand out)"
            )
        self.store.verify(Path(art.store_path), art.sha256)
        return mv, Path(art.store_path)

    def tag(self, name: str, version: int, key: str, value: str) -> ModelVersion:
        mv = self.get(name, version)
        with self.db.write() as c:
            vid = c.execute("SELECT id FROM versions WHERE name = ? AND version = ?", (name, version)).fetchone()[0]
            c.execute(
                "INSERT INTO tags (version_id, key, value) VALUES (?, ?, ?)"
                " ON CONFLICT (version_id, key) DO UPDATE SET value = excluded.value",
                (vid, key, str(value)),
            )
        return self.get(mv.name, mv.version)

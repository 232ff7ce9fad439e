"""The registry's schema and its migrations, oldest first: entry i migrates a database from version i to i + 1.

Version 1 (loraforge <= 0.1 as first released) numbered a version per GGUF file. Version 2 numbers a version per
adapter revision (base and adapter contents and weights) with its artifacts beneath it, keeps registered files
in a content-addressed store, and adds tags, A/B comparisons and the reason and evidence of every alias move.
Version 3 records stored paths relative to the store. Version 4 keys a version by the model alone and gives
artifacts their own settings and a history.

A new registry is created at the current version from CURRENT_SCHEMA, on either backend; older ones migrate.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
from collections.abc import Callable
from pathlib import Path

from .errors import RegistryError

log = logging.getLogger(__name__)

V1 = """
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
"""

V2_TABLES = """
ALTER TABLE versions RENAME TO v1_versions;
ALTER TABLE files RENAME TO v1_files;
ALTER TABLE aliases RENAME TO v1_aliases;
CREATE TABLE versions (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    revision TEXT NOT NULL,
    lineage TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (name, version),
    UNIQUE (name, revision)
);
CREATE TABLE artifacts (
    id INTEGER PRIMARY KEY,
    version_id INTEGER NOT NULL REFERENCES versions(id),
    kind TEXT NOT NULL,
    variant TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    store_path TEXT,
    source_path TEXT NOT NULL,
    metrics TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (version_id, kind, variant)
);
CREATE TABLE tags (
    version_id INTEGER NOT NULL REFERENCES versions(id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (version_id, key)
);
CREATE TABLE aliases (
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (name, alias),
    FOREIGN KEY (name, version) REFERENCES versions(name, version)
);
ALTER TABLE alias_history ADD COLUMN reason TEXT;
ALTER TABLE alias_history ADD COLUMN evidence TEXT;
CREATE TABLE comparisons (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    version_a INTEGER NOT NULL,
    version_b INTEGER NOT NULL,
    variant TEXT NOT NULL,
    result TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""


# The current schema, written once: a new registry on either backend is created from it directly, at
# SCHEMA_VERSION; a registry of an older schema takes the steps of MIGRATIONS from its version on. {id} is each
# backend's auto-numbered key, {bigint} its 64-bit integer.
CURRENT_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE versions (
    id {id},
    name TEXT NOT NULL,
    version INTEGER NOT NULL,
    revision TEXT NOT NULL,
    lineage TEXT NOT NULL,
    created_at TEXT NOT NULL,
    UNIQUE (name, version),
    UNIQUE (name, revision)
);
CREATE TABLE artifacts (
    id {id},
    version_id {bigint} NOT NULL REFERENCES versions(id),
    kind TEXT NOT NULL,
    variant TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size {bigint} NOT NULL,
    store_path TEXT,
    source_path TEXT NOT NULL,
    metrics TEXT NOT NULL,
    created_at TEXT NOT NULL,
    settings TEXT NOT NULL DEFAULT '{{}}',
    UNIQUE (version_id, kind, variant)
);
CREATE TABLE artifact_history (
    version_id {bigint} NOT NULL REFERENCES versions(id),
    kind TEXT NOT NULL,
    variant TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size {bigint} NOT NULL,
    store_path TEXT,
    source_path TEXT NOT NULL,
    metrics TEXT NOT NULL,
    settings TEXT NOT NULL,
    created_at TEXT NOT NULL,
    superseded_at TEXT NOT NULL
);
CREATE TABLE tags (
    version_id {bigint} NOT NULL REFERENCES versions(id),
    key TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (version_id, key)
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
    id {id},
    name TEXT NOT NULL,
    alias TEXT NOT NULL,
    action TEXT NOT NULL,
    version INTEGER NOT NULL,
    previous_version INTEGER,
    at TEXT NOT NULL,
    reason TEXT,
    evidence TEXT
);
CREATE TABLE comparisons (
    id {id},
    name TEXT NOT NULL,
    version_a INTEGER NOT NULL,
    version_b INTEGER NOT NULL,
    variant TEXT NOT NULL,
    result TEXT NOT NULL,
    created_at TEXT NOT NULL
)
"""
DIALECTS = {
    "sqlite": {"id": "INTEGER PRIMARY KEY", "bigint": "INTEGER"},
    "postgresql": {"id": "BIGSERIAL PRIMARY KEY", "bigint": "BIGINT"},
}


def set_meta(c, key: str, value: str) -> None:
    """A registry-wide setting (schema version, store root), in SQL both backends speak."""
    c.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


def identity_settings(settings: dict | None) -> dict:
    """The settings that define the model a version is: the merge's semantics (``merge.method``) and, for a
    compressed model, its compression spec. What only chooses or tunes derived artifacts (quant types, float type,
    GGUF naming, imatrix, hf_quant calibration, shard and split sizes) is an artifact's setting, not the version's."""
    settings = settings or {}
    out: dict = {}
    if isinstance(settings.get("merge"), dict) and "method" in settings["merge"]:
        out["merge"] = {"method": settings["merge"]["method"]}
    if settings.get("compress"):
        out["compress"] = settings["compress"]
    return out


def revision_key(lineage: dict) -> str:
    """What makes a version: the base's and each adapter's content, the adapters' weights in order, and the
    settings that define the model (:func:`identity_settings`). Adding a quant type or a GPU-serving checkpoint,
    or re-calibrating one, adds or replaces artifacts within the version instead."""
    key = {
        "base": lineage.get("base_model", {}).get("sha256"),
        "adapters": [[a.get("sha256"), float(a.get("weight", 1.0))] for a in lineage.get("adapters", [])],
    }
    settings = identity_settings(lineage.get("settings"))
    if settings:  # (none: the key of registries written before settings were recorded)
        key["settings"] = settings
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


def _script(c: sqlite3.Connection, sql: str) -> None:
    for stmt in sql.split(";"):
        if stmt.strip():
            c.execute(stmt)


def _v1_to_v2(c: sqlite3.Connection) -> None:
    """One version per adapter revision, numbered in the order revisions first appeared; each v1 version (one
    GGUF) becomes an artifact of it; aliases and their history follow their GGUF's revision. v1 stored paths,
    not files: the files are put into the store afterwards, where their content still matches (see store.py)."""
    _script(c, V2_TABLES)
    new_version: dict[tuple[str, int], int] = {}
    next_number: dict[str, int] = {}
    revision_ids: dict[tuple[str, str], int] = {}
    for row in c.execute("SELECT * FROM v1_versions ORDER BY name, version").fetchall():
        lineage = json.loads(row["lineage"])
        for per_artifact in ("quant_type", "evaluation"):  # v1 kept these per GGUF: not what makes a revision
            lineage.get("settings", {}).pop(per_artifact, None)
        rev = revision_key(lineage)
        if (row["name"], rev) not in revision_ids:
            next_number[row["name"]] = next_number.get(row["name"], 0) + 1
            cur = c.execute(
                "INSERT INTO versions (name, version, revision, lineage, created_at) VALUES (?, ?, ?, ?, ?)",
                (row["name"], next_number[row["name"]], rev, json.dumps(lineage, sort_keys=True), row["created_at"]),
            )
            revision_ids[(row["name"], rev)] = cur.lastrowid
        vid = revision_ids[(row["name"], rev)]
        new_version[(row["name"], row["version"])] = c.execute(
            "SELECT version FROM versions WHERE id = ?", (vid,)
        ).fetchone()[0]
        f = c.execute("SELECT * FROM v1_files WHERE version_id = ? AND role = 'model'", (row["id"],)).fetchone()
        metrics = {"legacy_v1": json.loads(row["metrics"])}
        c.execute(
            "INSERT OR IGNORE INTO artifacts (version_id, kind, variant, sha256, size, store_path, source_path,"
            " metrics, created_at) VALUES (?, 'gguf', ?, ?, ?, NULL, ?, ?, ?)",
            (vid, row["quant_type"], f["sha256"], f["size"], f["path"], json.dumps(metrics), row["created_at"]),
        )
    for a in c.execute("SELECT * FROM v1_aliases").fetchall():
        c.execute(
            "INSERT INTO aliases (name, alias, version, updated_at) VALUES (?, ?, ?, ?)",
            (a["name"], a["alias"], new_version[(a["name"], a["version"])], a["updated_at"]),
        )
    for h in c.execute("SELECT * FROM alias_history").fetchall():
        prev = h["previous_version"]
        c.execute(
            "UPDATE alias_history SET version = ?, previous_version = ?, reason = ? WHERE id = ?",
            (
                new_version[(h["name"], h["version"])],
                None if prev is None else new_version[(h["name"], prev)],
                f"migrated from registry schema 1 (was v{h['version']}, one GGUF)",
                h["id"],
            ),
        )
    c.execute("DROP TABLE v1_aliases")
    c.execute("DROP TABLE v1_files")
    c.execute("DROP TABLE v1_versions")
    log.info("registry migrated to schema 2: %d GGUF versions became %d revisions", len(new_version), len(revision_ids))


def store_relative(path: str) -> str:
    """A stored file's path relative to its store (``sha256/ab/<hash><suffix>``), from an absolute one."""
    parts = Path(path).parts
    return "/".join(parts[len(parts) - 1 - parts[::-1].index("sha256") :]) if "sha256" in parts else path


def _v2_to_v3(c: sqlite3.Connection) -> None:
    """Store paths relative to the store, so that a registry copied or moved with its store serves and verifies
    its own files (schema 2 recorded absolute paths, which kept pointing at the old place)."""
    rows = c.execute("SELECT id, store_path FROM artifacts WHERE store_path IS NOT NULL").fetchall()
    for r in rows:
        c.execute("UPDATE artifacts SET store_path = ? WHERE id = ?", (store_relative(r["store_path"]), r["id"]))
    log.info("registry migrated to schema 3: %d store paths made relative to the store", len(rows))


V4_TABLES = """
ALTER TABLE artifacts ADD COLUMN settings TEXT NOT NULL DEFAULT '{}';
CREATE TABLE artifact_history (
    version_id BIGINT NOT NULL REFERENCES versions(id),
    kind TEXT NOT NULL,
    variant TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    store_path TEXT,
    source_path TEXT NOT NULL,
    metrics TEXT NOT NULL,
    settings TEXT NOT NULL,
    created_at TEXT NOT NULL,
    superseded_at TEXT NOT NULL
)
"""
DUPLICATE_TAG = "duplicate_of"


def _v3_to_v4(c) -> None:
    """A version is the model, not the list of forms built from it (see :func:`revision_key`). Artifacts record
    their own settings, and an artifact rebuilt with other settings replaces its predecessor, which is kept in
    ``artifact_history``. Existing versions get the new key; where several versions of a name now have the same
    one (an unchanged adapter registered again because a form was added), the first keeps it and takes the new
    artifacts from now on, and each later one stays as it is, tagged ``duplicate_of`` the first: nothing is lost
    and no alias moves."""
    _script(c, V4_TABLES)
    firsts: dict[tuple[str, str], int] = {}
    duplicates = 0
    for row in c.execute("SELECT id, name, version, revision, lineage FROM versions ORDER BY name, version").fetchall():
        lineage = json.loads(row["lineage"])
        extra = {k: v for k, v in (lineage.get("settings") or {}).items() if k not in identity_settings({k: v})}
        if extra:  # what the version's settings said of its artifacts, now recorded with each of them
            c.execute(
                "UPDATE artifacts SET settings = ? WHERE version_id = ?", (json.dumps(extra, sort_keys=True), row["id"])
            )
        key = revision_key(lineage)
        first = firsts.setdefault((row["name"], key), row["version"])
        if first == row["version"]:
            if key != row["revision"]:
                c.execute("UPDATE versions SET revision = ? WHERE id = ?", (key, row["id"]))
        else:
            duplicates += 1
            c.execute(
                "INSERT INTO tags (version_id, key, value) VALUES (?, ?, ?)"
                " ON CONFLICT (version_id, key) DO UPDATE SET value = excluded.value",
                (row["id"], DUPLICATE_TAG, str(first)),
            )
    log.info("registry migrated to schema 4: versions keyed by the model; %d duplicate versions tagged", duplicates)


# entry i takes a registry of schema i to i + 1 (schema 0: an empty database, before schema 1 existed)
MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    lambda c: _script(c, V1),
    _v1_to_v2,
    _v2_to_v3,
    _v3_to_v4,
]
SCHEMA_VERSION = len(MIGRATIONS)


def create_schema(c, dialect: str) -> None:
    """A new, empty registry at SCHEMA_VERSION: the current schema in ``dialect`` (sqlite or postgresql)."""
    _script(c, CURRENT_SCHEMA.format(**DIALECTS[dialect]))
    set_meta(c, "schema_version", str(SCHEMA_VERSION))


def migrate(c, current: int, where) -> None:
    """Bring a registry of schema ``current`` to SCHEMA_VERSION, one step of MIGRATIONS after another, on either
    backend, in the caller's write transaction."""
    if current > SCHEMA_VERSION:
        raise RegistryError(
            f"{where}: registry schema {current} is newer than this loraforge supports ({SCHEMA_VERSION})"
        )
    for i in range(current, SCHEMA_VERSION):
        MIGRATIONS[i](c)
        set_meta(c, "schema_version", str(i + 1))
        log.info("%s: registry schema migrated to version %d", where, i + 1)

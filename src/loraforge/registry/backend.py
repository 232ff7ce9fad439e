"""The registry's database behind one interface: a SQLite file (:mod:`.database`) or a PostgreSQL server
(:mod:`.postgres`). Both speak the same SQL (``?`` parameters, rows read by position or column name), create a
new registry from the one schema definition (``schema.create_schema``) and upgrade an old one through the same
steps (``schema.migrate``); what differs between them is behind :class:`Backend`, so the registry's code never
asks which one it has."""

from __future__ import annotations

import os
from collections.abc import Iterable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol


class Backend(Protocol):
    """A registry's database."""

    path: Any  # what messages name: the SQLite file's Path, or the URL without its password
    conn: Any  # execute(sql, params) with ``?`` parameters; its rows are read by position or by column name
    migrated_from: int  # the schema version the registry had when opened (0: created now)

    def write(self) -> AbstractContextManager[Any]:
        """One write transaction under the registry's write lock; yields the connection."""

    def meta(self, key: str) -> str | None:
        """A registry-wide setting (``schema_version``, ``store_root``)."""

    def schema_version(self) -> int: ...

    def require_name(self, name: str) -> None:
        """Raise NotFound unless a version of ``name`` is registered."""

    def default_store(self) -> Path:
        """Where the store is when none was given or recorded; raises where there is no such place."""

    def after_copy(self, c, tables: Iterable[str]) -> None:
        """After rows were copied in with their ids (``copy_registry``): what the backend needs to go on."""

    def close(self) -> None: ...


def open_backend(location: str | os.PathLike, create: bool, store_root: str | None) -> Backend:
    """The database at ``location``: a ``postgresql://`` URL or a SQLite file."""
    from .postgres import PostgresDatabase, is_url

    if is_url(str(location)):
        return PostgresDatabase(str(location), create, store_root)
    from .database import Database

    return Database(location, create)

"""The registry's database on a PostgreSQL server: the same schema, API, CLI and rules as the embedded SQLite file,
for a team and a cluster whose nodes all write it (``registry.path`` or ``$LORAFORGE_REGISTRY`` a
``postgresql://`` URL; the store is a shared directory, ``registry.store_dir``).

One SQL for both backends: the registry's statements are standard (``ON CONFLICT``, ``RETURNING``) and written
with ``?`` parameters, which this connection hands psycopg as ``%s``. Every write transaction takes one advisory
lock first, as SQLite's ``BEGIN IMMEDIATE`` takes its write lock: versions are numbered and aliases moved one
writer at a time, whichever host the writer runs on.

Schema: one definition for both backends (``schema.CURRENT_SCHEMA``, a new registry is created from it) and one
path for older registries (``schema.migrate``: the steps of ``schema.MIGRATIONS``, in SQL both speak).
``loraforge-registry migrate`` copies a SQLite registry into PostgreSQL (``copying.copy_registry``).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator
from pathlib import Path

from .errors import NoRegistry, NotARegistry, NotFound, RegistryError
from .schema import create_schema, migrate, set_meta

log = logging.getLogger(__name__)

URL_SCHEMES = ("postgresql://", "postgres://")
# pg_advisory_xact_lock's key for the registry's writers ("loraforge" in ASCII, as a 64-bit number)
WRITE_LOCK = int.from_bytes(b"lorafrge", "big") >> 1


def is_url(location) -> bool:
    return isinstance(location, str) and location.startswith(URL_SCHEMES)


def redacted(url: str) -> str:
    """The URL for messages and logs: without its password."""
    return re.sub(r"(://[^:/@]+):[^@]*@", r"\1:***@", url)


class Row:
    """A result row read by position (``row[0]``) or by column (``row["id"]``), and ``dict(row)``, as sqlite3.Row."""

    __slots__ = ("_names", "_values")

    def __init__(self, names: tuple[str, ...], values):
        self._names, self._values = names, tuple(values)

    def __getitem__(self, key):
        return self._values[key] if isinstance(key, int) else self._values[self._names.index(key)]

    def keys(self) -> list[str]:
        return list(self._names)

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)


def _rows(cursor):
    names = tuple(c.name for c in cursor.description or ())
    return lambda values: Row(names, values)


class Connection:
    """psycopg's connection speaking the registry's SQL (``?`` parameters)."""

    def __init__(self, raw):
        self.raw = raw

    def execute(self, sql: str, params=()):
        return self.raw.execute(sql.replace("?", "%s"), tuple(params))

    def close(self) -> None:
        self.raw.close()


class PostgresDatabase:
    """The connection to one registry database. ``create=False`` (what the CLI uses) refuses a database with no
    registry in it instead of creating one; a database with other tables and no registry is refused, untouched."""

    def __init__(self, url: str, create: bool = True, store_root: str | None = None):
        try:
            import psycopg
        except ImportError:
            raise RegistryError(
                f"{redacted(url)}: a PostgreSQL registry needs psycopg (pip install 'psycopg[binary]')"
            ) from None
        self.url, self.path = url, redacted(url)
        self._errors = psycopg.Error
        try:
            raw = psycopg.connect(url, autocommit=True, row_factory=_rows, connect_timeout=30)
        except psycopg.Error as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RegistryError(f"{self.path}: cannot connect to the registry's PostgreSQL server ({first})") from None
        self.conn = Connection(raw)
        self.store_root = store_root  # recorded when this creates the registry
        try:
            self.migrated_from = self._migrate(create)
        except BaseException:
            self.conn.close()
            raise

    def _tables(self) -> set[str]:
        rows = self.conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()"
        ).fetchall()
        return {r[0] for r in rows}

    @contextlib.contextmanager
    def write(self) -> Iterator[Connection]:
        """One write transaction, holding the registry's write lock from its start (no lost updates)."""
        try:
            with self.conn.raw.transaction():
                self.conn.execute("SELECT pg_advisory_xact_lock(?)", (WRITE_LOCK,))
                yield self.conn
        except self._errors as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RegistryError(f"{self.path}: {first}") from None

    def _migrate(self, create: bool) -> int:
        """Create the schema in a new registry, or bring an older one to the current version; returns the version it
        had (0: a new registry)."""
        with self.write() as c:
            tables = self._tables()
            if tables and "meta" not in tables:
                raise NotARegistry(f"{self.path}: a database that is not a loraforge registry; left untouched")
            if not tables:
                if not create:
                    raise NoRegistry(f"{self.path}: no registry there; nothing has been registered to it")
                if not self.store_root:
                    raise RegistryError(
                        f"{self.path}: a PostgreSQL registry needs a store directory that every host sees: set "
                        "registry.store_dir (or $LORAFORGE_REGISTRY_STORE)"
                    )
                create_schema(c, "postgresql")
                set_meta(c, "store_root", self.store_root)
                log.info("%s: no registry there; created a new one", self.path)
                return 0
            row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
            current = int(row[0]) if row else 0
            migrate(c, current, self.path)
        return current

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def schema_version(self) -> int:
        return int(self.meta("schema_version"))

    def close(self) -> None:
        self.conn.close()

    def require_name(self, name: str) -> None:
        if not self.conn.execute("SELECT 1 FROM versions WHERE name = ?", (name,)).fetchone():
            raise NotFound(f"{self.path}: no versions of {name!r}")

    def default_store(self) -> Path:
        """None: the store must be a directory every host sees, given when the registry is created."""
        raise RegistryError(
            f"{self.path}: a PostgreSQL registry needs a store directory that every host sees: set "
            "registry.store_dir (or $LORAFORGE_REGISTRY_STORE)"
        )

    def after_copy(self, c, tables) -> None:
        """Rows came with their ids: each id sequence continues after the largest."""
        for t in tables:
            c.execute(f"SELECT setval(pg_get_serial_sequence('{t}', 'id'), COALESCE(MAX(id), 0) + 1, false) FROM {t}")

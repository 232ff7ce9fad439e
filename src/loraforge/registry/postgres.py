"""The registry's database on a PostgreSQL server: the same schema, API, CLI and rules as the embedded SQLite file,
for a team and a cluster whose nodes all write it (``registry.path`` or ``$LORAFORGE_REGISTRY`` a
``postgresql://`` URL; the store is a shared directory, ``registry.store_dir``).

One SQL for both backends: the registry's statements are standard (``ON CONFLICT``, ``RETURNING``) and written
with ``?`` parameters, which this connection hands psycopg as ``%s``. Every write transaction takes one advisory
lock first, as SQLite's ``BEGIN IMMEDIATE`` takes its write lock: versions are numbered and aliases moved one
writer at a time, whichever host the writer runs on.

Schema: a new PostgreSQL registry is created at schema 3 (``schema.PG_SCHEMA``), then takes the steps after it
(``schema.MIGRATIONS`` from ``PG_SCHEMA_VERSION`` on), which are shared SQL: both backends follow one path from
there. ``loraforge-registry migrate`` copies a SQLite registry into PostgreSQL (:func:`copy_registry`).
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import Iterator

from .errors import NoRegistry, NotARegistry, NotFound, RegistryError
from .schema import MIGRATIONS, PG_SCHEMA, PG_SCHEMA_VERSION, SCHEMA_VERSION, set_meta

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
        """Bring the schema to SCHEMA_VERSION; returns the version it had (0: a new registry)."""
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
                for stmt in PG_SCHEMA.split(";"):
                    if stmt.strip():
                        c.execute(stmt)
                set_meta(c, "store_root", self.store_root)
                log.info("%s: no registry there; created a new one", self.path)
                current, created = PG_SCHEMA_VERSION, True
            else:
                row = c.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
                current, created = (int(row[0]) if row else 0), False
            if current > SCHEMA_VERSION:
                raise RegistryError(
                    f"{self.path}: registry schema {current} is newer than this loraforge supports ({SCHEMA_VERSION})"
                )
            for i in range(current, SCHEMA_VERSION):  # the shared steps after PG_SCHEMA's version
                MIGRATIONS[i](c)
                set_meta(c, "schema_version", str(i + 1))
                if not created:
                    log.info("%s: registry schema migrated to version %d", self.path, i + 1)
        return 0 if created else current

    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def schema_version(self) -> int:
        return int(self.meta("schema_version"))

    def close(self) -> None:
        self.conn.close()

    def _require_name(self, name: str) -> None:
        if not self.conn.execute("SELECT 1 FROM versions WHERE name = ?", (name,)).fetchone():
            raise NotFound(f"{self.path}: no versions of {name!r}")


# the registry's tables in the order their rows can be inserted (foreign keys), and their id sequences
TABLES = ("versions", "artifacts", "artifact_history", "tags", "aliases", "alias_history", "comparisons")
SERIAL = ("versions", "artifacts", "alias_history", "comparisons")


def copy_registry(src, dst) -> dict[str, int]:
    """Every row of the registry ``src`` (a SQLite file or a URL) into the empty registry ``dst`` (created there),
    ids kept, so stored paths, aliases, history and comparisons mean what they meant. The store is not copied: its
    paths are relative, so the destination names the same store directory (or a copy of it). Returns rows per
    table."""
    from .core import Registry

    a = Registry(src, create=False)
    b = Registry(dst, create=True, store_dir=a.store.root)
    try:
        if any(b.conn.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone() for t in TABLES):
            raise RegistryError(f"{b.path}: not empty; copy a registry only into a new one")
        counts = {}
        with b.db.write() as c:
            for t in TABLES:
                rows = a.conn.execute(f"SELECT * FROM {t} ORDER BY 1").fetchall()
                for r in rows:
                    cols = list(r.keys())
                    c.execute(
                        f"INSERT INTO {t} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                        tuple(r[k] for k in cols),
                    )
                counts[t] = len(rows)
            if isinstance(b.db, PostgresDatabase):  # ids were given: the sequences continue after them
                for t in SERIAL:
                    c.execute(
                        f"SELECT setval(pg_get_serial_sequence('{t}', 'id'), COALESCE(MAX(id), 0) + 1, false) FROM {t}"
                    )
        log.info("copied %s into %s: %s", a.path, b.path, counts)
        return counts
    finally:
        a.close()
        b.close()

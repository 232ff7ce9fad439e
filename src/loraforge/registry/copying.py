"""Copying a whole registry into a new one, on either backend (``loraforge-registry migrate``): every row with its
id, so stored paths, aliases, history and comparisons mean what they meant."""

from __future__ import annotations

import logging

from .core import Registry
from .errors import RegistryError

log = logging.getLogger(__name__)

# the registry's tables in the order their rows can be inserted (foreign keys), and their id sequences
TABLES = ("versions", "artifacts", "artifact_history", "tags", "aliases", "alias_history", "comparisons")
SERIAL = ("versions", "artifacts", "alias_history", "comparisons")


def copy_registry(src, dst) -> dict[str, int]:
    """Every row of the registry ``src`` (a SQLite file or a URL) into the empty registry ``dst`` (created there),
    ids kept, so stored paths, aliases, history and comparisons mean what they meant. The store is not copied: its
    paths are relative, so the destination names the same store directory (or a copy of it). Returns rows per
    table."""
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
            b.db.after_copy(c, SERIAL)  # rows came with their ids
        log.info("copied %s into %s: %s", a.path, b.path, counts)
        return counts
    finally:
        a.close()
        b.close()

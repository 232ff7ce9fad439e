"""The registry: one database (:mod:`.database`), versions and artifacts (:mod:`.versions`), aliases and A/B
comparisons (:mod:`.aliases`), verification (:mod:`.verification`), and a content-addressed file store
(:mod:`.filestore`): registered files are verified whenever they are handed out."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..io.hashing import sha256_file
from .aliases import Aliases
from .database import Database
from .filestore import ArtifactStore
from .schema import SCHEMA_VERSION
from .verification import Verification
from .versions import Versions

log = logging.getLogger(__name__)


class Registry(Versions, Aliases, Verification):
    """A registry file and its store beside it (``<file>.store/``). ``create=False`` (what read-only commands
    use) refuses a path with no registry instead of creating an empty one."""

    def __init__(self, path: str | os.PathLike | None = None, create: bool = True, store_mode: str = "copy"):
        self.db = Database(path, create)
        self.path = self.db.path
        self.conn = self.db.conn
        self.store = ArtifactStore(self.path.resolve().with_name(self.path.name + ".store"), store_mode)
        if 0 < self.db.migrated_from < SCHEMA_VERSION:  # registered by path only before: store them now
            self._store_unstored()

    def _store_unstored(self) -> None:
        """Artifacts registered by path only (schema 1): into the store where the file still has the registered
        content; otherwise left without a stored copy and reported by verify."""
        rows = self.db.conn.execute(
            "SELECT id, sha256, source_path FROM artifacts WHERE store_path IS NULL AND kind != 'merged'"
        ).fetchall()
        for r in rows:
            src = Path(r["source_path"])
            if src.is_file() and sha256_file(src) == r["sha256"]:
                stored = self.store.put(src, r["sha256"])
                with self.db.write() as c:
                    c.execute(
                        "UPDATE artifacts SET store_path = ? WHERE id = ?", (self.store.relative(stored), r["id"])
                    )
            else:
                log.warning("%s: changed or gone since it was registered; its registered bytes are lost", src)

    def schema_version(self) -> int:
        return self.db.schema_version()

    def close(self) -> None:
        self.db.close()

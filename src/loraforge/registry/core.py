"""The registry: one database (:mod:`.database`), versions and artifacts (:mod:`.versions`), aliases and A/B
comparisons (:mod:`.aliases`), verification (:mod:`.verification`), and a content-addressed file store
(:mod:`.filestore`): registered files are verified whenever they are handed out."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from ..io.hashing import sha256_file
from .aliases import Aliases
from .backend import open_backend
from .database import DEFAULT_PATH, ENV_VAR
from .filestore import ArtifactStore
from .schema import SCHEMA_VERSION, set_meta
from .verification import Verification
from .versions import Versions

log = logging.getLogger(__name__)


STORE_ENV = "LORAFORGE_REGISTRY_STORE"


class Registry(Versions, Aliases, Verification):
    """A registry: a SQLite file, or a PostgreSQL database (a ``postgresql://`` URL), and its file store.
    ``create=False`` (what the CLI uses) refuses a location with no registry instead of creating one.

    The store is ``store_dir`` when given (else ``$LORAFORGE_REGISTRY_STORE``), else where the registry recorded
    it, else, for a SQLite file, ``<file>.store/`` beside it. A PostgreSQL registry records its store (a directory
    every writer and reader sees) when it is created."""

    def __init__(
        self,
        path: str | os.PathLike | None = None,
        create: bool = True,
        store_mode: str = "copy",
        store_dir: str | os.PathLike | None = None,
    ):
        location = path or os.environ.get(ENV_VAR) or DEFAULT_PATH
        given = store_dir or os.environ.get(STORE_ENV)
        self.db = open_backend(location, create, str(Path(given).resolve()) if given else None)
        self.path = self.db.path
        self.conn = self.db.conn
        try:
            root = self._store_root(given)
        except BaseException:
            self.db.close()
            raise
        self.store = ArtifactStore(root, store_mode)
        if 0 < self.db.migrated_from < SCHEMA_VERSION:
            self._store_unstored()  # registered by path only before (schema 1): store them now

    def _store_root(self, given) -> Path:
        recorded = self.db.meta("store_root")
        if given:
            root = Path(given).resolve()
            if recorded != str(root):
                with self.db.write() as c:
                    set_meta(c, "store_root", str(root))
                if recorded:
                    log.info("%s: its store is now %s (was %s)", self.path, root, recorded)
            return root
        if recorded:
            return Path(recorded)
        return self.db.default_store()

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

"""Verification: every stored artifact re-hashed against what was registered."""

from __future__ import annotations

from pathlib import Path

from .errors import StoredFileChanged, StoredFileMissing


class Verification:
    """``verify`` (a part of :class:`Registry`)."""

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
                    except StoredFileMissing:
                        status = "missing"
                    except StoredFileChanged:
                        status = "changed"
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

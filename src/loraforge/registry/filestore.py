"""The registry's content-addressed file store: what it hands out are the bytes it registered.

A build path is overwritten by the next build (and a file can be edited in place), so a registry that records
paths hands out whatever is there now. Each registered file is copied into ``<registry>.store/`` under its
sha256 (a reflink where the filesystem can, through copy_file_range), made read-only, and verified against its
hash whenever it is handed out. ``mode="link"`` hard-links instead (no extra disk; an in-place edit of the build
output then changes the registered bytes too, which the verification on hand-out detects).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
from pathlib import Path

from ..errors import PipelineError
from ..io.hashing import HashCache, sha256_file, tree_fingerprint
from .errors import DiskFull, StoredFileChanged, StoredFileMissing

log = logging.getLogger(__name__)

MODES = ("copy", "link")


class ArtifactStore:
    def __init__(self, root: Path, mode: str = "copy"):
        if mode not in MODES:
            raise PipelineError(f"registry store mode {mode!r} is not one of {', '.join(MODES)}")
        self.root, self.mode = Path(root), mode
        self.hashes = HashCache(self.root / "hashes.json")

    def relative(self, stored: Path) -> str:
        """How the registry records a stored file: relative to the store, which may be copied or moved."""
        return Path(stored).relative_to(self.root).as_posix()

    def absolute(self, recorded: str | None) -> str | None:
        return None if recorded is None else str(self.root / recorded)

    def path_for(self, sha256: str, suffix: str) -> Path:
        return self.root / "sha256" / sha256[:2] / f"{sha256}{suffix}"

    def put(self, src: Path, sha256: str, hashes: HashCache | None = None) -> Path:
        """The store's copy of ``src`` (whose content hashes to ``sha256``; a directory's is its tree fingerprint);
        idempotent. A copy is hashed again before it is kept. A hard link is the same bytes as ``src``: with
        ``hashes``, the cache ``sha256`` came from, that says it was hashed from ``src`` as it is (same size,
        mtime, inode and ctime), the link is kept without reading them again (16 GB at 8B), and both caches learn
        the digest under the file's new ctime (a link changes it)."""
        if Path(src).is_dir():
            return self._put_tree(Path(src), sha256)
        dst = self.path_for(sha256, "".join(Path(src).suffixes[-1:]))
        if dst.exists():
            self.verify(dst, sha256)
            return dst
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        linked = False
        try:
            if self.mode == "link":
                before = os.stat(src)
                try:
                    os.link(src, tmp)
                    after = os.stat(tmp)
                    same = (after.st_ino, after.st_size, after.st_mtime_ns)
                    linked = same == (before.st_ino, before.st_size, before.st_mtime_ns)
                    linked = linked and hashes is not None and hashes.current(src, before) == sha256
                except OSError as e:
                    if e.errno != errno.EXDEV:
                        raise
                    shutil.copyfile(src, tmp)  # another filesystem: a copy after all
            else:
                shutil.copyfile(src, tmp)  # copy_file_range inside: a reflink where the filesystem supports it
            if not linked and sha256_file(tmp) != sha256:
                raise PipelineError(f"{src}: changed while it was being registered; nothing registered")
            os.chmod(tmp, 0o444)
            os.replace(tmp, dst)
            self.hashes.remember(dst, sha256)
            self.hashes.save()
            if linked:
                hashes.remember(src, sha256)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise DiskFull(f"{self.root}: no space left on device storing {src}") from None
            raise
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        log.info("stored %s as %s (%s)", src, dst, self.mode)
        return dst

    def _put_tree(self, src: Path, sha256: str) -> Path:
        """A directory artifact (a GPU-serving checkpoint, a PEFT adapter): copied (or hard-linked) file by file
        into a temporary directory, verified, made read-only, then renamed into place."""
        dst = self.path_for(sha256, ".d")
        if dst.exists():
            self.verify(dst, sha256)
            return dst
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)

        def copy(a, b):
            if self.mode == "link":
                try:
                    return os.link(a, b)
                except OSError as e:
                    if e.errno != errno.EXDEV:
                        raise
            return shutil.copyfile(a, b)

        try:
            shutil.copytree(src, tmp, copy_function=copy)
            if tree_fingerprint(tmp) != sha256:
                raise PipelineError(f"{src}: changed while it was being registered; nothing registered")
            for f in tmp.rglob("*"):
                if f.is_file():
                    os.chmod(f, 0o444)
            os.replace(tmp, dst)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise DiskFull(f"{self.root}: no space left on device storing {src}") from None
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST) and dst.is_dir():
                # another job stored the same content first (two forms of one adapter registered at once share
                # its PEFT directory): the store is content-addressed, so that copy is this one, once verified
                self.verify(dst, sha256)
                return dst
            raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("stored %s as %s (%s)", src, dst, self.mode)
        return dst

    def verify(self, path: Path, sha256: str) -> None:
        """The stored file is there with its registered content; else one line, and nothing handed out."""
        if path.is_dir():
            got = tree_fingerprint(path, self.hashes)
            self.hashes.save()
            if got != sha256:
                raise StoredFileChanged(
                    f"{path}: registered directory changed since registration (fingerprint {got}, registered "
                    f"{sha256}); refusing to hand it out"
                )
            return
        if not path.is_file():
            raise StoredFileMissing(f"{path}: registered file is missing from the registry store")
        got = self.hashes.sha256(path)
        self.hashes.save()
        if got != sha256:
            raise StoredFileChanged(
                f"{path}: registered file changed since registration (sha256 {got}, registered "
                f"{sha256}); refusing to hand it out"
            )

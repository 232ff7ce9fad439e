"""Outputs appear whole or not at all: write under a temporary name beside the target, rename at the end.

Before the rename the data is on disk (fsync of the files, then of the directory after it), and the output
has the permissions a plain ``open()`` / ``mkdir`` would give under the process's umask (0644 / 0755 with the
usual 022): temporary files are created 0600, which would leave an Ollama service user or a teammate on a
shared directory unable to read the published artifact."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.[^.]+\.tmp$")


def published_name(path: str | os.PathLike) -> Path:
    """The output a temporary of ``atomic_file``/``atomic_dir`` becomes (``path`` itself if it is none): what a
    message should name."""
    p = Path(path)
    m = _TEMP_RE.match(p.name)
    return p.with_name(m["name"]) if m else p


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def finish(path: Path) -> None:
    """Permissions as the umask says and data on disk, for a file or a directory tree about to be published."""
    mask = _umask()
    if path.is_dir():
        for sub in [path, *path.rglob("*")]:
            if sub.is_symlink():
                continue
            if sub.is_dir():
                os.chmod(sub, 0o777 & ~mask)
            else:
                os.chmod(sub, 0o666 & ~mask)
                _fsync(sub)
        for sub in [*(d for d in path.rglob("*") if d.is_dir() and not d.is_symlink()), path]:
            _fsync(sub)
    else:
        os.chmod(path, 0o666 & ~mask)
        _fsync(path)


def _remove_stale(target: Path) -> None:
    """Temporaries of ``target`` left by a writer that was killed (SIGKILL, OOM, scancel) before cleanup.

    Only for targets with one writer at a time (a Snakemake output: one job per output); with several, these
    would be the other writers' live temporaries."""
    for old in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                old.unlink()


@contextlib.contextmanager
def atomic_file(target: str | os.PathLike, single_writer: bool = True) -> Iterator[Path]:
    """Yield a temporary path in the target's directory; rename it onto ``target`` only on success.

    ``single_writer=False`` for a file several processes may write at once (the last rename wins); then
    temporaries of killed writers are not cleaned up, since they cannot be told from live ones."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if single_writer:
        _remove_stale(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        finish(tmp_path)
        os.replace(tmp_path, target)
        _fsync(target.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(target: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary directory beside ``target``; it becomes ``target`` only on success.

    An existing ``target`` is replaced only after the new one is complete.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        finish(tmp)
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        _fsync(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(target: str | os.PathLike, text: str, single_writer: bool = True) -> None:
    with atomic_file(target, single_writer) as tmp:
        tmp.write_text(text)

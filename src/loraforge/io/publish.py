"""Outputs appear whole or not at all: write under a temporary name beside the target, rename at the end."""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


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
        os.replace(tmp_path, target)
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
        if target.exists():
            old = target.with_name(f".{target.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(target: str | os.PathLike, text: str, single_writer: bool = True) -> None:
    with atomic_file(target, single_writer) as tmp:
        tmp.write_text(text)

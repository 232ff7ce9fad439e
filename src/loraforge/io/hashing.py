"""Content hashes of files and model directories, with a stat-keyed cache.

Snakemake compares checksums only for inputs under ``--max-checksum-file-size`` (1 MB by default), so a
touched multi-hundred-MB adapter would rebuild everything. The workflow instead passes a content
fingerprint as a rule parameter; this module computes it and remembers it per (path, size, mtime, inode, ctime),
so an unchanged file is hashed once, a touched one is re-hashed once, and the base model is never
re-hashed on an ordinary run.

Snakemake touches every output after its job, so the next job finds each new GGUF under another stat and must read
it again to know it is still the bytes that were built. Each entry therefore keeps the file's BLAKE3 beside its
sha256 (both from one read): a file whose size is unchanged is re-verified by its BLAKE3, about five times faster
than sha256 on one core (5.9 against 1.2 GB/s on a Sapphire Rapids Xeon), and keeps its sha256. That matters where
the re-read runs beside a model being scored on a 2-core machine: an 8B BF16 GGUF is 16 GB. The sha256 stays what
is recorded, registered and shown; BLAKE3 is a cryptographic hash too, so a file whose BLAKE3 matches is the same
bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import blake3

from .publish import write_text_atomic

log = logging.getLogger(__name__)

_CHUNK = 8 * 1024 * 1024
# the workflow's cache of input hashes, shared by the DAG building (rules/common.smk) and its jobs
WORKFLOW_HASH_CACHE = ".snakemake/loraforge/hashes.json"


def _digests(path, hashers, stop: threading.Event | None) -> list[str]:
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            if stop is not None and stop.is_set():
                return [""] * len(hashers)
            for h in hashers:
                h.update(chunk)
    return [h.hexdigest() for h in hashers]


def sha256_file(path: str | os.PathLike, stop: threading.Event | None = None) -> str:
    """``path``'s sha256 (``stop``: a reason to give up between chunks, and return "")."""
    return _digests(path, [hashlib.sha256()], stop)[0]


def blake3_file(path: str | os.PathLike, stop: threading.Event | None = None) -> str:
    """``path``'s BLAKE3, on one thread (it runs beside a model being scored)."""
    return _digests(path, [blake3.blake3()], stop)[0]


def file_digests(path: str | os.PathLike, stop: threading.Event | None = None) -> tuple[str, str]:
    """``path``'s (sha256, BLAKE3), from one read."""
    sha, fast = _digests(path, [hashlib.sha256(), blake3.blake3()], stop)
    return sha, fast


class Meanwhile:
    """The digests of a file being hashed in the background (:func:`hashed_meanwhile`): calling it waits for the
    sha256; :meth:`blake3` for the BLAKE3 (None where the file was verified by an earlier BLAKE3)."""

    def __init__(self, future):
        self._future = future

    def __call__(self) -> str:
        return self._future.result()[0]

    def blake3(self) -> str | None:
        return self._future.result()[1]


@contextlib.contextmanager
def hashed_meanwhile(path: str | os.PathLike, known: HashCache | None = None) -> Iterator[Meanwhile]:
    """Hash ``path`` in a background thread while the block runs (a new GGUF's checks, which only read it: the
    hash reads it from the page cache on the other core); yields a :class:`Meanwhile` that waits for the digests.
    With ``known``, a cache that hashed the file under another stat (Snakemake touched it), only its BLAKE3 is
    computed where the cache has one (:meth:`HashCache.reverified`). A block that fails stops the hashing."""
    from concurrent.futures import ThreadPoolExecutor

    stop = threading.Event()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loraforge-hash")
    if known is not None:
        digests = pool.submit(known.reverified, path, stop)
    else:
        digests = pool.submit(file_digests, path, stop)
    try:
        yield Meanwhile(digests)
    finally:
        stop.set()
        pool.shutdown(wait=True)


class Writing(Meanwhile):
    """:func:`hashed_as_written`'s digests: call :meth:`written` once the writer has finished."""

    def __init__(self, future, finished: threading.Event):
        super().__init__(future)
        self._finished = finished

    def written(self) -> None:
        self._finished.set()


def _digests_as_written(path, finished: threading.Event, stop: threading.Event) -> tuple[str, str]:
    sha, fast = hashlib.sha256(), blake3.blake3()
    with open(path, "rb") as f:
        while not stop.is_set():
            done = finished.is_set()  # asked before the read: what the writer wrote before it finished is read
            chunk = f.read(_CHUNK)
            if chunk:
                sha.update(chunk)
                fast.update(chunk)
            elif done:
                break
            else:
                finished.wait(0.05)
        else:
            return "", ""
    if blake3_file(path, stop) != fast.hexdigest():  # the finished file, read again at a fifth of sha256's cost
        if stop.is_set():
            return "", ""
        log.warning("%s changed behind the bytes hashed as it was written: hashing it again", path)
        return file_digests(path, stop)
    return sha.hexdigest(), fast.hexdigest()


@contextlib.contextmanager
def hashed_as_written(path: str | os.PathLike) -> Iterator[Writing]:
    """Hash ``path`` in a background thread while another process writes it, front to back, on the core that
    writer leaves idle: llama.cpp's converter, one Python thread, whose gguf-py writes a GGUF in order (at 8B,
    16 GB that the checks after it then need not share their cores with). Call :meth:`Writing.written` once the
    writer has exited; the digests are then of the file as it is: its BLAKE3 is read again and must match the one
    read as it was written, else the whole file is hashed again. A block that fails stops the hashing."""
    from concurrent.futures import ThreadPoolExecutor

    stop, finished = threading.Event(), threading.Event()
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="loraforge-hash")
    digests = pool.submit(_digests_as_written, path, finished, stop)
    try:
        yield Writing(digests, finished)
    finally:
        stop.set()
        pool.shutdown(wait=True)


class HashCache:
    """sha256 per file, cached on disk keyed by the file's stat; safe to share between processes."""

    def __init__(self, cache_file: str | os.PathLike | None):
        self.cache_file = Path(cache_file) if cache_file else None
        self._entries: dict[str, dict] = {}
        self._new: dict[str, dict] = {}  # hashed by this process since the last save
        self._dirty = False
        if self.cache_file and self.cache_file.exists():
            try:
                self._entries = json.loads(self.cache_file.read_text())
            except (OSError, ValueError):
                log.warning("ignoring unreadable hash cache %s", self.cache_file)
                self._entries = {}

    def sha256(self, path: str | os.PathLike) -> str:
        p = Path(path).resolve()
        st = p.stat()
        key = str(p)
        # ctime too: an in-place edit that puts the old mtime back still changes it
        stamp = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
        entry = self._entries.get(key)
        if entry and entry.get("stat") == stamp:
            return entry["sha256"]
        if entry and entry.get("blake3"):  # a file written by a job, touched since (by Snakemake)
            digest, fast = self.reverified(p)
            fast = fast or entry["blake3"]
        else:  # an input: sha256 only (16 GB of a base at 1.2 GB/s a core; BLAKE3 would add a sixth)
            digest, fast = sha256_file(p), None
        self._entries[key] = self._new[key] = {"stat": stamp, "sha256": digest}
        if fast:
            self._entries[key]["blake3"] = fast
        self._dirty = True
        return digest

    def reverified(self, path: str | os.PathLike, stop: threading.Event | None = None) -> tuple[str, str | None]:
        """``path``'s (sha256, BLAKE3) read again, whatever its stat: where the cache has its BLAKE3 from an earlier
        read and the size is the same, only the BLAKE3 is computed, and if it matches the cached sha256 is the
        file's (BLAKE3 then given as None: the cached one). Reads the cache, never changes it (it runs in a
        background thread beside the job's own use of the cache)."""
        p = Path(path).resolve()
        entry = self._entries.get(str(p))
        if entry and entry.get("blake3") and entry["stat"][0] == p.stat().st_size:
            if blake3_file(p, stop) == entry["blake3"]:
                return entry["sha256"], None
        return file_digests(p, stop)

    def current(self, path: str | os.PathLike, st: os.stat_result | None = None) -> str | None:
        """The digest hashed from ``path`` as it is now (or as ``st``, a stat of it, says it is), else None."""
        p = Path(path).resolve()
        st = st or p.stat()
        entry = self._entries.get(str(p))
        if entry and entry.get("stat") == [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]:
            return entry["sha256"]
        return None

    def remember(self, path: str | os.PathLike, digest: str, fast: str | None = None) -> None:
        """Record ``digest`` (and ``fast``, its BLAKE3) for ``path`` as it is now: for a file this process has just
        written and hashed (the temporary it published by renaming, whose ctime the rename changed: so stat it
        here, after), or verified. Without ``fast`` the BLAKE3 already cached for the same sha256 is kept."""
        p = Path(path).resolve()
        st = p.stat()
        old = self._entries.get(str(p)) or {}
        if fast is None and old.get("sha256") == digest:
            fast = old.get("blake3")
        entry = {"stat": [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns], "sha256": digest}
        if fast:
            entry["blake3"] = fast
        self._entries[str(p)] = self._new[str(p)] = entry
        self._dirty = True

    def save(self) -> None:
        """Add this process's new hashes to the file. Concurrent jobs and workflow runs share it: under an
        exclusive lock, what is on disk now is read again and merged, so no writer loses another's entries."""
        if not (self.cache_file and self._dirty):
            return
        import fcntl

        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        with open(self.cache_file.with_name(self.cache_file.name + ".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                on_disk = json.loads(self.cache_file.read_text()) if self.cache_file.exists() else {}
            except (OSError, ValueError):
                on_disk = {}
            on_disk.update(self._new)
            write_text_atomic(self.cache_file, json.dumps(on_disk, indent=0, sort_keys=True), single_writer=False)
        self._entries.update(on_disk)
        self._new.clear()
        self._dirty = False


def remember_hash(
    path: str | os.PathLike, digest: str, cache_file: str | os.PathLike | None, fast: str | None = None
) -> None:
    """Seed ``cache_file`` with the hash of a file just published (a rule's GGUF, whose sidecar records the same
    hash; ``fast`` its BLAKE3): the jobs after it, evaluation and registration, then need not read its gigabytes
    again, or only for its BLAKE3 once Snakemake has touched it."""
    if cache_file:
        cache = HashCache(cache_file)
        cache.remember(path, digest, fast)
        cache.save()


def tree_files(root: str | os.PathLike) -> list[Path]:
    """Regular files below ``root`` (hidden ones excluded), sorted, for stable fingerprints."""
    root = Path(root)
    files = (p for p in root.rglob("*") if p.is_file())
    return sorted(p for p in files if not any(part.startswith(".") for part in p.relative_to(root).parts))


def tree_fingerprint(root: str | os.PathLike, cache: HashCache | None = None) -> str:
    """sha256 over (relative path, file sha256) of every file in a directory: its content identity. Files not in
    ``cache`` are hashed on every core at once (a model's shards: 16 GB of an 8B base in half the time on two)."""
    from concurrent.futures import ThreadPoolExecutor

    root = Path(root)
    cache = cache or HashCache(None)
    files = tree_files(root)
    digests = [cache.current(f) for f in files]
    todo = [f for f, d in zip(files, digests, strict=True) if d is None]
    if len(todo) > 1:  # a pool only for files to read: a thousand cached adapters plan without a thread each
        with ThreadPoolExecutor(max_workers=min(len(todo), os.cpu_count() or 1)) as pool:
            hashed = dict(zip(todo, pool.map(cache.sha256, todo), strict=True))  # reads and hashlib release the GIL
    else:
        hashed = {f: cache.sha256(f) for f in todo}
    digests = [d or hashed[f] for f, d in zip(files, digests, strict=True)]
    h = hashlib.sha256()
    for f, digest in zip(files, digests, strict=True):
        h.update(f.relative_to(root).as_posix().encode())
        h.update(b"\0")
        h.update(digest.encode())
        h.update(b"\n")
    return h.hexdigest()

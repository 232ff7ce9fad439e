"""loraforge.io.hashing: content fingerprints with a stat-keyed cache shared by concurrent jobs."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from loraforge.io.hashing import HashCache, sha256_file, tree_files, tree_fingerprint


def test_hash_cache_rehashes_only_changed_stat(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    f = d / "w.bin"
    f.write_bytes(b"a" * 1000)
    cache = HashCache(tmp_path / "cache.json")
    fp1 = tree_fingerprint(d, cache)
    cache.save()
    entries = json.loads((tmp_path / "cache.json").read_text())
    assert list(entries) == [str(f.resolve())]
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same content, same fingerprint
    assert tree_fingerprint(d, HashCache(tmp_path / "cache.json")) == fp1
    f.write_bytes(b"b" * 1000)
    assert tree_fingerprint(d, HashCache(tmp_path / "cache.json")) != fp1


def test_tree_fingerprint_covers_names_and_skips_hidden_files(tmp_path):
    d = tmp_path / "m"
    d.mkdir()
    (d / "a").write_bytes(b"x")
    fp = tree_fingerprint(d)
    (d / ".cache").write_bytes(b"y")
    assert tree_fingerprint(d) == fp and [p.name for p in tree_files(d)] == ["a"]
    (d / "a").rename(d / "b")
    assert tree_fingerprint(d) != fp
    assert sha256_file(d / "b") == "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"


def test_concurrent_hash_cache_writers_do_not_break_each_other(tmp_path):
    """Concurrent jobs save the shared hash cache; stale-temporary cleanup must not delete a live writer's file."""
    code = (
        "import sys, pathlib\n"
        "from loraforge.io.hashing import HashCache\n"
        "d, i = pathlib.Path(sys.argv[1]), sys.argv[2]\n"
        "for k in range(40):\n"
        "    f = d / f'f{i}-{k}'\n"
        "    f.write_bytes(b'x' * 10)\n"
        "    c = HashCache(d / 'cache.json')\n"
        "    c.sha256(f)\n"
        "    c.save()\n"
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(i)], stderr=subprocess.PIPE, text=True)
        for i in range(8)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, next(e for e in errors if e)
    cached = json.loads((tmp_path / "cache.json").read_text())  # a whole, valid file
    # and every writer's entries are in it: none lost to a concurrent writer (the last one used to win)
    assert len([k for k in cached if Path(k).name.startswith("f")]) == 8 * 40


def test_a_file_hashed_meanwhile_gives_its_sha256_and_a_failing_block_stops_the_hashing(tmp_path):
    """A new GGUF is hashed by a background thread while its checks read it: the same digest as reading it
    afterwards; a check that fails stops the hashing and its error is the one raised."""
    from loraforge.io.hashing import hashed_meanwhile

    f = tmp_path / "model.gguf"
    f.write_bytes(os.urandom(3 << 20) * 8)  # 24 MB: several chunks
    with hashed_meanwhile(f) as digest:
        assert digest() == sha256_file(f) == hashlib.sha256(f.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="the check failed"), hashed_meanwhile(f):
        raise ValueError("the check failed")


def test_a_touched_output_is_reverified_by_its_blake3_and_an_edit_in_place_is_still_caught(tmp_path):
    """Snakemake touches each output after its job: the next job re-reads a GGUF only for its BLAKE3 (recorded
    beside the sha256 by the job that wrote it) and keeps the sha256; the same size with other bytes is re-hashed
    and gives their sha256, through the cache and through a background hash alike."""
    import blake3

    from loraforge.io.hashing import file_digests, hashed_meanwhile, remember_hash

    f, cache_file = tmp_path / "model.gguf", tmp_path / "hashes.json"
    data = os.urandom(3 << 20) * 4
    f.write_bytes(data)
    sha, fast = file_digests(f)
    assert (sha, fast) == (hashlib.sha256(data).hexdigest(), blake3.blake3(data).hexdigest())
    remember_hash(f, sha, cache_file, fast)
    assert json.loads(cache_file.read_text())[str(f.resolve())]["blake3"] == fast
    st = f.stat()
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # Snakemake's touch
    cache = HashCache(cache_file)
    assert cache.current(f) is None
    assert cache.reverified(f) == (sha, None)  # the BLAKE3 matched: the cached sha256, no sha256 computed
    with hashed_meanwhile(f, cache) as digests:
        assert digests() == sha and digests.blake3() is None
    assert cache.sha256(f) == sha
    cache.save()
    assert json.loads(cache_file.read_text())[str(f.resolve())]["blake3"] == fast  # kept for the next touch

    edited = bytearray(data)
    edited[len(data) // 2] ^= 1  # one bit, same size
    f.write_bytes(bytes(edited))
    cache = HashCache(cache_file)
    new_sha = hashlib.sha256(bytes(edited)).hexdigest()
    with hashed_meanwhile(f, cache) as digests:
        assert digests() == new_sha != sha and digests.blake3() == blake3.blake3(bytes(edited)).hexdigest()
    assert cache.sha256(f) == new_sha


def test_an_input_hashed_by_the_cache_gets_no_blake3(tmp_path):
    """What the cache hashes on its own (a base, an adapter) is an input, which Snakemake never touches: sha256
    only, since BLAKE3 would add a sixth to the base's 16 GB."""
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    cache = HashCache(tmp_path / "cache.json")
    assert cache.sha256(f) == hashlib.sha256(b"a" * 1000).hexdigest()
    cache.save()
    assert set(json.loads((tmp_path / "cache.json").read_text())[str(f.resolve())]) == {"stat", "sha256"}


_WRITER = """
import sys, time
path, seek_back = sys.argv[1], sys.argv[2] == "1"
with open(path, "wb") as f:
    f.write(b"H" * 64)
    for i in range(40):
        f.write(bytes([i]) * (1 << 20))
        f.flush()
        time.sleep(0.01)
    if seek_back:  # as llama-quantize does: its header written again at the end
        f.seek(0)
        f.write(b"h" * 64)
"""


@pytest.mark.parametrize("seek_back", [False, True], ids=["front-to-back", "header-rewritten"])
def test_a_file_hashed_as_another_process_writes_it_gets_the_finished_files_digests(tmp_path, seek_back, caplog):
    """The converter's GGUF is hashed while the converter writes it; the digests are the finished file's, also where
    the writer went back and rewrote its start (then it is hashed again, with a warning); a failing block stops the
    hashing."""
    import blake3

    from loraforge.io.hashing import hashed_as_written

    f = tmp_path / "model.gguf"
    f.write_bytes(b"")  # atomic_file's temporary exists before the writer opens it
    with hashed_as_written(f) as digests:
        subprocess.run([sys.executable, "-c", _WRITER, str(f), str(int(seek_back))], check=True)
        digests.written()
        data = f.read_bytes()
        assert (digests(), digests.blake3()) == (hashlib.sha256(data).hexdigest(), blake3.blake3(data).hexdigest())
    assert len(data) == 64 + 40 * (1 << 20)
    assert ("changed behind the bytes hashed as it was written" in caplog.text) == seek_back
    with pytest.raises(ValueError, match="the converter failed"), hashed_as_written(f):
        raise ValueError("the converter failed")

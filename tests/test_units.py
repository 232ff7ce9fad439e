"""Unit tests of package pieces that need no workflow run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from loraforge.atomic import atomic_dir, atomic_file
from loraforge.hashing import HashCache, tree_fingerprint
from loraforge.llamacpp import IMATRIX_REQUIRED, file_types

REPO = Path(__file__).resolve().parents[1]


def test_schema_quant_types_are_llama_cpp_types():
    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    offered = set(schema["$defs"]["quant_type"]["enum"])
    available = set(file_types())
    assert offered <= available, offered - available
    # everything llama.cpp can make without an importance matrix is offered, except plain float types
    assert available - offered - IMATRIX_REQUIRED == {"F16", "BF16", "F32"}


def test_atomic_file_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.bin"
    with pytest.raises(RuntimeError), atomic_file(target) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_only_when_complete(tmp_path):
    target = tmp_path / "model"
    target.mkdir()
    (target / "old").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "new").write_text("new")
        raise RuntimeError("boom")
    assert [p.name for p in target.iterdir()] == ["old"]
    assert [p.name for p in tmp_path.iterdir()] == ["model"]
    with atomic_dir(target) as tmp:
        (tmp / "new").write_text("new")
    assert [p.name for p in target.iterdir()] == ["new"]


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


@pytest.mark.slow
def test_merge_benchmark_command_measures_all_three(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "merge.json"
    proc = subprocess.run([sys.executable, "-m", "loraforge.bench", "merge", "--size-gb", "0.3", "--out", str(out),
                           "--cache", str(tmp_path / "cache")], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    r = json.loads(out.read_text())
    for key in ("model_bytes", "copy_s", "peft_s", "streaming_s", "peft_peak_rss_mb", "streaming_peak_rss_mb"):
        assert r[key] > 0, key
    assert r["model_bytes"] > 250e6
    assert "x faster than PEFT" in proc.stdout
    # the bound that matters (memory, not time: timings are for the benchmark to report, not to assert)
    assert r["streaming_peak_rss_mb"] < r["peft_peak_rss_mb"]


def test_stale_temporaries_of_a_killed_writer_are_removed(tmp_path):
    target = tmp_path / "model"
    stale = tmp_path / ".model.abc123.tmp"
    stale.mkdir()
    (stale / "half.safetensors").write_bytes(b"x")
    other = tmp_path / ".modelx.abc.tmp"
    other.mkdir()
    with atomic_dir(target) as tmp:
        (tmp / "w").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == [".modelx.abc.tmp", "model"]


def test_example_config_is_valid():
    from snakemake.utils import validate

    example = yaml.safe_load((REPO / "config.example.yaml").read_text())
    validate(example, str(REPO / "schemas" / "config.schema.yaml"))
    assert example["merge"]["method"] == "streaming" and example["registry"]["path"] == "registry.sqlite"


def test_concurrent_hash_cache_writers_do_not_break_each_other(tmp_path):
    """Concurrent jobs save the shared hash cache; stale-temporary cleanup must not delete a live writer's file."""
    import subprocess
    import sys

    code = (
        "import sys, pathlib\n"
        "from loraforge.hashing import HashCache\n"
        "d, i = pathlib.Path(sys.argv[1]), sys.argv[2]\n"
        "for k in range(40):\n"
        "    f = d / f'f{i}-{k}'\n"
        "    f.write_bytes(b'x' * 10)\n"
        "    c = HashCache(d / 'cache.json')\n"
        "    c.sha256(f)\n"
        "    c.save()\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path), str(i)], stderr=subprocess.PIPE, text=True)
             for i in range(8)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * 8, next(e for e in errors if e)
    assert json.loads((tmp_path / "cache.json").read_text())  # a whole, valid file

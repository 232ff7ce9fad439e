"""loraforge.io.publish: outputs appear whole or not at all."""

from __future__ import annotations

import pytest

from loraforge.io.publish import atomic_dir, atomic_file, write_text_atomic


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


def test_write_text_atomic(tmp_path):
    write_text_atomic(tmp_path / "a" / "b.txt", "hello")
    assert (tmp_path / "a" / "b.txt").read_text() == "hello"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["b.txt"]

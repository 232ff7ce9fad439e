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


def test_published_outputs_are_readable_as_the_umask_says(tmp_path):
    """Not 0600/0700 as temporary files are made: an Ollama service user or a teammate must read them."""
    import os
    import stat

    old = os.umask(0o022)
    try:
        with atomic_file(tmp_path / "model.gguf") as tmp:
            tmp.write_bytes(b"GGUF")
        with atomic_dir(tmp_path / "merged") as tmp:
            (tmp / "model.safetensors").write_bytes(b"x")
            (tmp / "sub").mkdir()
            (tmp / "sub" / "f").write_bytes(b"y")
        os.umask(0o077)  # a private umask is honoured too
        write_text_atomic(tmp_path / "private.json", "{}")
    finally:
        os.umask(old)

    def mode(p):
        return stat.S_IMODE((tmp_path / p).stat().st_mode)

    assert mode("model.gguf") == 0o644 and mode("merged") == 0o755 and mode("merged/sub") == 0o755
    assert mode("merged/model.safetensors") == 0o644 and mode("merged/sub/f") == 0o644
    assert mode("private.json") == 0o600

"""loraforge.quantization.split: a GGUF over the size limit becomes llama.cpp's split set, which llama.cpp loads
from its first file with the whole file's logits; one that fits is kept whole; bad sizes and changed files are
one line."""

from __future__ import annotations

import json
import shutil

import pytest

from loraforge.errors import PipelineError
from loraforge.llamacpp.library import GGUFModel
from loraforge.quantization.split import size_bytes, split_gguf


def test_a_gguf_over_the_limit_is_split_and_loads_from_its_first_file(f16_gguf, tmp_path):
    out = tmp_path / "split"
    s = split_gguf(f16_gguf, out, tmp_path / "split.json", "20M")
    names = sorted(p.name for p in out.iterdir())
    assert len(names) == 2 and names == [f["name"] for f in s["files"]]  # 35 MB, two 16 MB embedding tensors
    assert names == ["base-F16-00001-of-00002.gguf", "base-F16-00002-of-00002.gguf"] and s["load_with"] == names[0]
    assert all(f["bytes"] <= 20e6 for f in s["files"])
    assert s["check"] == {"tokens_compared": 128, "logits": "identical to the whole file's"}
    assert json.loads((tmp_path / "split.json").read_text()) == s
    with GGUFModel(out / names[0], n_ctx=32) as g:
        assert g.n_vocab == 32000


def test_a_gguf_that_fits_is_kept_whole(f16_gguf, tmp_path):
    s = split_gguf(f16_gguf, tmp_path / "split", tmp_path / "split.json", "50G")
    assert [f["name"] for f in s["files"]] == [f16_gguf.name]
    assert (tmp_path / "split" / f16_gguf.name).read_bytes() == f16_gguf.read_bytes()


def test_a_tensor_over_the_limit_is_one_line_with_the_tools_reason(f16_gguf, tmp_path):
    with pytest.raises(PipelineError, match=r"llama-gguf-split on .*base-F16.gguf failed .*size or tensors limit"):
        split_gguf(f16_gguf, tmp_path / "split", tmp_path / "split.json", "10M")
    assert not (tmp_path / "split").exists() and not (tmp_path / "split.json").exists()


def test_bad_size_and_changed_file_are_one_line(f16_gguf, tmp_path):
    with pytest.raises(PipelineError, match="split size '50GB': expected a whole number of M or G"):
        size_bytes("50GB")
    g = tmp_path / "m.gguf"
    shutil.copy(f16_gguf, g)
    (tmp_path / "m.gguf.json").write_text(json.dumps({"sha256": "0" * 64}))
    with pytest.raises(PipelineError, match="content changed since it was built"):
        split_gguf(g, tmp_path / "split", tmp_path / "split.json", "20M")
    assert not (tmp_path / "split").exists() and not (tmp_path / "split.json").exists()

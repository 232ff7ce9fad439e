"""loraforge.io.safetensors: headers, byte ranges and storage dtypes without torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from loraforge.errors import PipelineError
from loraforge.io.safetensors import TensorReader, decode, encode, read_header, write_header


def test_header_and_rows_match_what_torch_saved(tmp_path):
    t = {"a": torch.arange(24, dtype=torch.float32).reshape(4, 6), "b": torch.randn(3, 2, 5).to(torch.bfloat16)}
    save_file(t, tmp_path / "x.safetensors")
    h = read_header(tmp_path / "x.safetensors")
    assert h["a"].shape == (4, 6) and h["b"].dtype == "BF16" and h["a"].nbytes == 96
    with TensorReader() as r:
        assert np.array_equal(r.rows(h["a"], 1, 3), t["a"][1:3].numpy())
        assert np.array_equal(r.float32(h["b"]), t["b"].float().numpy())


def test_bf16_encode_rounds_to_nearest_even_like_torch():
    x = np.random.default_rng(0).standard_normal(10_000).astype(np.float32) * 3
    x[:3] = [1.0 + 2**-8, 1.0 + 3 * 2**-8, -(1.0 + 2**-8)]  # exact ties
    ours = encode(x.copy(), "BF16")
    ref = torch.from_numpy(x).to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
    assert np.array_equal(ours, ref)
    assert np.array_equal(decode(ours, "BF16"), torch.from_numpy(x).to(torch.bfloat16).float().numpy())


def test_truncated_file_is_refused_from_its_header(tmp_path):
    save_file({"w": torch.zeros(64, 64)}, tmp_path / "x.safetensors")
    raw = (tmp_path / "x.safetensors").read_bytes()
    (tmp_path / "x.safetensors").write_bytes(raw[:-100])
    with pytest.raises(PipelineError, match=r"x.safetensors: truncated: tensor w ends at byte \d+, the file has"):
        read_header(tmp_path / "x.safetensors")


def test_not_a_safetensors_file(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(PipelineError, match="not a safetensors file"):
        read_header(tmp_path / "x.safetensors")


def test_written_header_is_read_back(tmp_path):
    tensors = {"a": ("F16", (2, 3)), "b": ("BF16", (5,))}
    with open(tmp_path / "y.safetensors", "wb") as f:
        write_header(f, ["a", "b"], tensors)
        f.write(b"\0" * (12 + 10))
    h = read_header(tmp_path / "y.safetensors")
    assert {k: (v.dtype, v.shape) for k, v in h.items()} == tensors

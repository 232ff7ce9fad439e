"""loraforge.quantization: every offered type is one llama.cpp makes; quantized files load and are checked."""

from __future__ import annotations

import json

import pytest
import yaml
from conftest import REPO

from loraforge import quantize
from loraforge.errors import PipelineError
from loraforge.llamacpp.library import file_types
from loraforge.quantization import IMATRIX_REQUIRED, quantize_artifact


def test_schema_quant_types_are_llama_cpp_types():
    schema = yaml.safe_load((REPO / "schemas" / "config.schema.yaml").read_text())
    offered = set(schema["$defs"]["quant_type"]["enum"])
    available = set(file_types())
    assert offered <= available, offered - available
    # everything llama.cpp can make without an importance matrix is offered, except plain float types
    assert available - offered - IMATRIX_REQUIRED == {"F16", "BF16", "F32"}


def test_quantize_and_check(f16_gguf, tmp_path):
    out = tmp_path / "m-Q8_0.gguf"
    summary = quantize_artifact(f16_gguf, out, tmp_path / "m-Q8_0.gguf.json", "Q8_0")
    assert out.read_bytes()[:4] == b"GGUF" and 8.0 < summary["bits_per_weight"] < 9.0
    check = json.loads((tmp_path / "m-Q8_0.gguf.json").read_text())["check"]
    assert check["finite_logits"] and check["top1_agreement"] > 0.9


def test_imatrix_types_and_unknown_types_are_refused(f16_gguf, tmp_path):
    with pytest.raises(PipelineError, match="needs an importance matrix"):
        quantize(f16_gguf, tmp_path / "x.gguf", "IQ2_XS")
    with pytest.raises(PipelineError, match="unknown llama.cpp quantization type 'Q4_K_X'"):
        quantize(f16_gguf, tmp_path / "x.gguf", "Q4_K_X")
    assert list(tmp_path.iterdir()) == []

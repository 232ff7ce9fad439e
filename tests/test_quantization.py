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
    # everything llama.cpp lists is offered, except the float types (convert's outtype) and NVFP4, which this
    # revision's llama-quantize lists but refuses as an invalid ftype
    assert available - offered == {"F16", "BF16", "F32", "NVFP4"}
    assert IMATRIX_REQUIRED <= offered


def test_quantize_and_check(f16_gguf, tmp_path):
    out = tmp_path / "m-Q8_0.gguf"
    summary = quantize_artifact(f16_gguf, out, tmp_path / "m-Q8_0.gguf.json", "Q8_0")
    assert out.read_bytes()[:4] == b"GGUF" and 8.0 < summary["bits_per_weight"] < 9.0
    assert summary["fallback_tensors"] == 0  # rows of 256: whole Q8_0 blocks
    check = json.loads((tmp_path / "m-Q8_0.gguf.json").read_text())["check"]
    assert check["finite_logits"] and check["top1_agreement"] > 0.9


def test_imatrix_types_and_unknown_types_are_refused(f16_gguf, tmp_path):
    with pytest.raises(PipelineError, match="needs an importance matrix"):
        quantize(f16_gguf, tmp_path / "x.gguf", "IQ2_XS")
    with pytest.raises(PipelineError, match="unknown llama.cpp quantization type 'Q4_K_X'"):
        quantize(f16_gguf, tmp_path / "x.gguf", "Q4_K_X")
    assert list(tmp_path.iterdir()) == []


def test_imatrix_quants_build_only_with_a_matrix(f16_gguf, models, tmp_path):
    from loraforge.quantization.imatrix import compute_imatrix

    text = tmp_path / "calibration.txt"
    text.write_text(models["text"].read_text() * 4)
    info = compute_imatrix(f16_gguf, text, tmp_path / "m.imatrix.gguf", n_ctx=64, chunks=8)
    assert info["chunks"] == 8 and (tmp_path / "m.imatrix.gguf").read_bytes()[:4] == b"GGUF"
    out = tmp_path / "m-IQ2_XS.gguf"
    summary = quantize_artifact(
        f16_gguf, out, tmp_path / "m-IQ2_XS.json", "IQ2_XS", imatrix=tmp_path / "m.imatrix.gguf"
    )
    assert summary["imatrix"] and summary["bits_per_weight"] < 4 and summary["check"]["finite_logits"]


def test_calibration_text_overlapping_evaluation_text_is_found(tmp_path):
    from loraforge.quantization.imatrix import overlap

    (tmp_path / "eval.txt").write_text("def f():\n    return 1\n")
    (tmp_path / "cal.txt").write_text("other text\n" + "def f():\n    return 1\n" + "more\n")
    (tmp_path / "clean.txt").write_text("something else entirely\n")
    texts = {"code": str(tmp_path / "eval.txt")}
    assert overlap(tmp_path / "cal.txt", texts) == "code"
    assert overlap(tmp_path / "clean.txt", texts) is None


def test_a_users_own_llama_cpp_build_is_used_where_named(f16_gguf, tmp_path, monkeypatch):
    """$LLAMA_CPP_DIR naming a user's build (tools in bin/, as a make install or release archive lays them out),
    here one assembled from the tools `make setup` built: the quantizer that runs is that build's."""
    from loraforge.llamacpp.toolchain import TOOLS, locate

    built = locate()
    own = tmp_path / "my-llama.cpp"
    (own / "bin").mkdir(parents=True)
    for tool in TOOLS:
        (own / "bin" / tool).symlink_to(built.bin / tool)
    monkeypatch.setenv("LLAMA_CPP_DIR", str(own))
    summary = quantize(f16_gguf, tmp_path / "m-Q4_0.gguf", "Q4_0")
    assert summary["tool"].startswith(str(own / "bin" / "llama-quantize")) and "external llama.cpp" in summary["tool"]
    monkeypatch.setenv("LLAMA_CPP_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(PipelineError, match="LLAMA_CPP_DIR=.*nowhere: no llama.cpp directory there"):
        quantize(f16_gguf, tmp_path / "m-Q4_1.gguf", "Q4_1")

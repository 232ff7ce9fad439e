"""loraforge.conversion: llama.cpp's converter, and the check of its output against the HF model."""

from __future__ import annotations

import json
import os

import pytest

from loraforge import convert
from loraforge.conversion import check_conversion, convert_artifact
from loraforge.errors import PipelineError


def test_convert_writes_a_float_gguf_that_matches_hf(models, f16_gguf):
    assert f16_gguf.read_bytes()[:4] == b"GGUF"
    res, info = check_conversion(models["base"], f16_gguf)
    assert res["top1_agreement"] >= 0.98 and res["max_abs_logit_diff"] < 0.05
    assert 15.9 < info["bits_per_weight"] < 16.1


def test_convert_artifact_refuses_an_impossible_check_and_leaves_nothing(models, tmp_path):
    out = tmp_path / "m-F16.gguf"
    with pytest.raises(PipelineError, match="llama.cpp logits disagree with the HF model"):
        convert_artifact(models["base"], out, tmp_path / "m-F16.gguf.json", max_abs_logit_diff=1e-9)
    assert list(tmp_path.iterdir()) == []


def test_convert_artifact_records_the_check(models, tmp_path):
    summary = convert_artifact(models["base"], tmp_path / "m.gguf", tmp_path / "m.gguf.json", outtype="f32")
    side = json.loads((tmp_path / "m.gguf.json").read_text())
    assert side == json.loads(json.dumps(summary)) and side["outtype"] == "F32" and side["source_dtype"] == "F32"
    assert side["check"]["max_abs_logit_diff"] < 0.05  # llama.cpp keeps its KV cache in F16


def test_unknown_outtype(models, tmp_path):
    with pytest.raises(PipelineError, match="unsupported outtype 'q4'"):
        convert(models["base"], tmp_path / "x.gguf", outtype="q4")
    assert list(tmp_path.iterdir()) == []


def test_scratch_left_by_a_killed_conversion_is_removed_on_the_next(tmp_path):
    import subprocess
    import sys

    from loraforge.conversion import SCRATCH_PREFIX, remove_stale_scratch

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = tmp_path / f"{SCRATCH_PREFIX}{gone.stdout.strip()}-abc"  # its process has exited: as after a SIGKILL
    live = tmp_path / f"{SCRATCH_PREFIX}{os.getpid()}-def"  # a conversion running now
    other = tmp_path / "loraforge-convert-notapid"
    for d in (dead, live, other):
        d.mkdir()
        (d / "metadata.json").write_text("{}")
    remove_stale_scratch(tmp_path)
    assert not dead.exists() and live.exists() and other.exists()

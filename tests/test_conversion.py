"""loraforge.conversion: llama.cpp's converter, and the check of its output against the HF model."""

from __future__ import annotations

import json
import os
import shutil

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


def test_check_against_the_stored_reference(models, tmp_path):
    """With the model's float32 reference (the evaluation's, already computed) the check runs no HF model: the GGUF
    agrees with it on its first window; an impossible bound fails it with the usual line, leaving nothing; a
    reference of another model is refused by name."""
    from loraforge import compute_reference
    from loraforge.io.hashing import HashCache, blake3_file

    ref = tmp_path / "reference.safetensors"
    compute_reference(models["base"], {"t": models["text"]}, ref, n_ctx=64, max_tokens=256)
    out, side, cache = tmp_path / "m.gguf", tmp_path / "m.gguf.json", tmp_path / "hashes.json"
    s = convert_artifact(models["base"], out, side, reference=ref, hash_cache=cache)
    check = s["check"]
    assert check["reference_file"] == str(ref) and check["tokens"] == 64 and check["top1_agreement"] >= 0.98
    assert 0 <= check["mean_kld"] < 1e-3 and check["max_abs_logprob_diff"] < 0.05, check
    # the GGUF's hash is in the workflow's cache as the file is now: its evaluation and registration read it there
    st = out.stat()
    seeded = json.loads(cache.read_text())[str(out.resolve())]
    stamp = [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]
    assert seeded == {"stat": stamp, "sha256": s["sha256"], "blake3": blake3_file(out)}
    assert HashCache(cache).sha256(out) == s["sha256"]
    # its quantization is checked against the same reference, without running the float GGUF again
    from loraforge.quantization import quantize_artifact

    q8 = tmp_path / "m-Q8_0.gguf"
    q = quantize_artifact(out, q8, tmp_path / "m-Q8_0.gguf.json", "Q8_0", reference=ref, hash_cache=cache)
    assert q["check"]["finite_logits"] and q["check"]["reference_file"] == str(ref), q["check"]
    # a tiny random model's next-token distributions are flat: near-ties flip top-1; KLD is the measure
    assert check["mean_kld"] < q["check"]["mean_kld"] < 0.05 and q["check"]["top1_agreement"] > 0.75, q["check"]
    assert HashCache(cache).sha256(q8) == q["sha256"] == json.loads(cache.read_text())[str(q8.resolve())]["sha256"]

    bad = tmp_path / "bad"
    bad.mkdir()
    with pytest.raises(PipelineError, match="llama.cpp logits disagree with the HF model .* max abs log-prob diff"):
        convert_artifact(models["base"], bad / "m.gguf", bad / "m.gguf.json", reference=ref, max_abs_logit_diff=1e-9)
    assert list(bad.iterdir()) == []
    other = tmp_path / "other-model"
    shutil.copytree(models["base"], other)
    with pytest.raises(PipelineError, match=f"{ref}: not the float32 reference of {other}"):
        convert_artifact(other, bad / "a.gguf", bad / "a.gguf.json", reference=ref)
    assert list(bad.iterdir()) == []
